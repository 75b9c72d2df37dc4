//! `ExternalAcker`: [`gilmsg::ExternalAcker`] for Python, the signed ACK
//! for a message fedora-messaging consumed (`gilmsg_rs.fedora_messaging`
//! calls it after the wrapped callback returned). Blocking, GIL released.

use pyo3::prelude::*;

use crate::{convert, errors, guard, runtime};

/// Sends the signed ACKs of messages another AMQP client consumed.
#[pyclass(module = "gilmsg_rs._native", frozen)]
pub(crate) struct ExternalAcker {
    inner: gilmsg::ExternalAcker,
}

#[pymethods]
impl ExternalAcker {
    #[new]
    #[pyo3(signature = (config, certname))]
    fn new(py: Python<'_>, config: Option<&Bound<'_, PyAny>>, certname: String) -> PyResult<Self> {
        guard::no_panic(|| {
            let config = convert::config(py, config)?;
            let inner =
                gilmsg::ExternalAcker::new(&config, &certname).map_err(|e| errors::to_py(py, e))?;
            Ok(ExternalAcker { inner })
        })
    }

    /// ACKs one received message; the acked msg_id, or None when the
    /// message asked for no ACK.
    #[pyo3(signature = (routing_key, body, envelope_header=None, message_id=None, reply_to=None))]
    fn ack(
        &self,
        py: Python<'_>,
        routing_key: String,
        body: Vec<u8>,
        envelope_header: Option<String>,
        message_id: Option<String>,
        reply_to: Option<String>,
    ) -> PyResult<Option<String>> {
        guard::no_panic(|| {
            let rt = runtime()?;
            let acker = &self.inner;
            let outcome = py.detach(|| {
                rt.block_on(acker.ack(gilmsg::Received {
                    routing_key: &routing_key,
                    body: &body,
                    envelope_header: envelope_header.as_deref(),
                    message_id: message_id.as_deref(),
                    reply_to: reply_to.as_deref(),
                }))
            });
            match outcome {
                Ok(gilmsg::AckOutcome::Sent { msg_id, .. }) => Ok(Some(msg_id)),
                Ok(_) => Ok(None),
                Err(e) => Err(errors::to_py(py, e)),
            }
        })
    }
}
