//! `Bus`, `Receipt` and `Ack`: [`gilmsg::Bus`] for Python. A `Bus` is one
//! handle shared by every thread of the process (the Rust handle is
//! `Clone + Send + Sync`); `publish` and `send` wait with the GIL released,
//! `publish_async` returns an `asyncio.Future`.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::prelude::*;

use crate::{aio, build_detached, convert, errors, guard, runtime};

/// One recipient's ACK, as counted by the publisher.
#[pyclass(module = "gilmsg_rs._native", frozen, get_all, from_py_object)]
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    /// Who acked (its certificate name).
    recipient: String,
    /// Seconds from the first send to the ACK.
    after: f64,
    /// Whether the ACK named this body's digest (Python gilmsg's carry none).
    digest_checked: bool,
}

impl From<&gilmsg::AckRecord> for Ack {
    fn from(r: &gilmsg::AckRecord) -> Self {
        Ack {
            recipient: r.recipient.clone(),
            after: r.after.as_secs_f64(),
            digest_checked: r.digest_checked,
        }
    }
}

#[pymethods]
impl Ack {
    fn __repr__(&self) -> String {
        format!(
            "Ack(recipient={:?}, after={:.6}, digest_checked={})",
            self.recipient,
            self.after,
            if self.digest_checked { "True" } else { "False" }
        )
    }
}

/// Proof that every named recipient acked one message.
#[pyclass(module = "gilmsg_rs._native", frozen, get_all)]
#[derive(Debug, Clone)]
pub(crate) struct Receipt {
    /// The message's id.
    msg_id: String,
    /// Its full topic.
    topic: String,
    /// One `Ack` per recipient, in the order they were named.
    acks: Vec<Ack>,
    /// How many times the message was sent (1 unless something was lost).
    sends: u32,
    /// Seconds from the publish to the last ACK.
    elapsed: f64,
}

impl From<gilmsg::Receipt> for Receipt {
    fn from(r: gilmsg::Receipt) -> Self {
        Receipt {
            msg_id: r.msg_id,
            topic: r.topic,
            acks: r.acks.iter().map(Ack::from).collect(),
            sends: r.sends,
            elapsed: r.elapsed.as_secs_f64(),
        }
    }
}

#[pymethods]
impl Receipt {
    /// The names of the recipients that acked.
    #[getter]
    fn acked(&self) -> Vec<String> {
        self.acks.iter().map(|a| a.recipient.clone()).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Receipt(msg_id={:?}, topic={:?}, acked={:?}, sends={}, elapsed={:.6})",
            self.msg_id,
            self.topic,
            self.acked(),
            self.sends,
            self.elapsed
        )
    }
}

/// A publisher handle (see `gilmsg_rs.Bus`'s docstring in `_native.pyi`).
#[pyclass(module = "gilmsg_rs._native", frozen)]
pub(crate) struct Bus {
    inner: gilmsg::Bus,
    default_timeout: Duration,
}

/// The arguments of one publish, converted while the GIL is held.
struct Publish {
    topic: String,
    msg: serde_json::Value,
    recipients: Vec<String>,
    timeout: Duration,
}

impl Publish {
    /// Publishes these arguments on `bus` (what `publish` blocks on and
    /// `publish_async` spawns).
    async fn on(self, bus: &gilmsg::Bus) -> gilmsg::Result<gilmsg::Receipt> {
        bus.publish(&self.topic, self.msg, &self.recipients, self.timeout)
            .await
    }
}

impl Bus {
    /// The arguments of `publish` and `publish_async` (the same Python
    /// signature), converted once for both.
    fn convert(
        &self,
        py: Python<'_>,
        topic: String,
        msg: &Bound<'_, PyAny>,
        recipients: Option<Vec<String>>,
        ack_timeout: Option<f64>,
    ) -> PyResult<Publish> {
        Ok(Publish {
            topic,
            msg: convert::msg_to_value(py, msg)?,
            recipients: recipients.unwrap_or_default(),
            timeout: match ack_timeout {
                Some(secs) => convert::seconds("ack_timeout", secs)?,
                None => self.default_timeout,
            },
        })
    }
}

#[pymethods]
impl Bus {
    #[new]
    #[pyo3(signature = (config=None, certname=None, modname=None, *, active=None, require_ack_digest=None))]
    fn new(
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        certname: Option<String>,
        modname: Option<String>,
        active: Option<bool>,
        require_ack_digest: Option<bool>,
    ) -> PyResult<Self> {
        guard::no_panic(|| {
            let config = convert::config(py, config)?;
            let default_timeout = config.ack_timeout;
            let mut builder = gilmsg::Bus::builder(&config);
            if let Some(certname) = certname {
                builder = builder.certname(certname);
            }
            if let Some(modname) = modname {
                builder = builder.modname(modname);
            }
            if let Some(active) = active {
                builder = builder.active(active);
            }
            if let Some(required) = require_ack_digest {
                builder = builder.require_ack_digest(required);
            }
            let inner = build_detached(py, || builder.build())?;
            Ok(Bus {
                inner,
                default_timeout,
            })
        })
    }

    #[pyo3(signature = (topic, msg, recipients=None, ack_timeout=None))]
    fn publish(
        &self,
        py: Python<'_>,
        topic: String,
        msg: &Bound<'_, PyAny>,
        recipients: Option<Vec<String>>,
        ack_timeout: Option<f64>,
    ) -> PyResult<Receipt> {
        guard::no_panic(|| {
            let p = self.convert(py, topic, msg, recipients, ack_timeout)?;
            let rt = runtime()?;
            let bus = &self.inner;
            let result = py.detach(|| rt.block_on(p.on(bus)));
            result.map(Receipt::from).map_err(|e| errors::to_py(py, e))
        })
    }

    fn send(&self, py: Python<'_>, topic: String, msg: &Bound<'_, PyAny>) -> PyResult<Receipt> {
        self.publish(py, topic, msg, None, None)
    }

    #[pyo3(signature = (topic, msg, recipients=None, ack_timeout=None))]
    fn publish_async(
        &self,
        py: Python<'_>,
        topic: String,
        msg: &Bound<'_, PyAny>,
        recipients: Option<Vec<String>>,
        ack_timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        guard::no_panic(|| {
            let p = self.convert(py, topic, msg, recipients, ack_timeout)?;
            let bus = self.inner.clone();
            aio::spawn(
                py,
                async move { p.on(&bus).await },
                |py, result| match result {
                    Ok(receipt) => Ok(Py::new(py, Receipt::from(receipt))?.into_any()),
                    Err(e) => Err(errors::to_py(py, e)),
                },
            )
        })
    }

    /// The identity this handle signs as, if it signs.
    #[getter]
    fn signer_name(&self) -> Option<String> {
        self.inner.signer_name().map(str::to_owned)
    }

    /// The endpoints it bound (bind mode), wildcard ports resolved.
    #[getter]
    fn bound_endpoints(&self) -> Vec<String> {
        self.inner.bound_endpoints().to_vec()
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        self.inner.stats().counters
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guard::no_panic(|| {
            let rt = runtime()?;
            let bus = self.inner.clone();
            py.detach(|| rt.block_on(bus.close()));
            Ok(())
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
