//! `Consumer` and `Delivery`: [`gilmsg::Consumer`] for Python, iterated
//! with `for` (blocking, GIL released, Ctrl-C honoured) or `async for`.
//! A `Delivery` sends its signed ACK only on `ack()`; one dropped, garbage
//! collected or `fail()`ed is never acknowledged (the Rust `Delivery`'s
//! `Drop` settles it as not handled).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::{aio, build_detached, convert, errors, guard, runtime};

/// How often a blocking wait comes back for Python's signal handlers.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

type Shared = Arc<tokio::sync::Mutex<Option<gilmsg::Consumer>>>;

/// An ACK-sending consumer (see `_native.pyi`).
#[pyclass(module = "gilmsg_rs._native", frozen)]
pub(crate) struct Consumer {
    inner: Shared,
    signer_name: Option<String>,
    /// Set by `close`: a waiting `__anext__` (which holds the lock) gives
    /// up at once instead of holding `close` back.
    closing: tokio::sync::watch::Sender<bool>,
}

/// The next delivery, or None once the consumer stopped or `close` began.
async fn next_or_closed(
    consumer: &mut gilmsg::Consumer,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Option<gilmsg::Delivery> {
    tokio::select! {
        next = consumer.next() => next,
        _ = closing.wait_for(|c| *c) => None,
    }
}

/// One message, handed over once.
#[pyclass(module = "gilmsg_rs._native", frozen)]
pub(crate) struct Delivery {
    inner: Mutex<Option<gilmsg::Delivery>>,
    topic: String,
    msg_id: String,
    signer: Option<String>,
    wants_ack: bool,
    msg: Py<PyAny>,
    message: Py<PyAny>,
}

impl Delivery {
    fn wrap(py: Python<'_>, d: gilmsg::Delivery) -> PyResult<Delivery> {
        Ok(Delivery {
            topic: d.topic().to_owned(),
            msg_id: d.msg_id().to_owned(),
            signer: d.signer().map(str::to_owned),
            wants_ack: d.wants_ack(),
            msg: convert::value_to_py(py, d.msg())?,
            message: convert::value_to_py(py, &d.message().to_value())?,
            inner: Mutex::new(Some(d)),
        })
    }

    fn take(&self) -> Option<gilmsg::Delivery> {
        self.inner.lock().ok().and_then(|mut g| g.take())
    }
}

/// The next delivery as a Python object (`None`: the consumer stopped).
fn deliver(py: Python<'_>, next: Option<gilmsg::Delivery>) -> PyResult<Option<Py<Delivery>>> {
    next.map(|d| Py::new(py, Delivery::wrap(py, d)?))
        .transpose()
}

#[pymethods]
impl Consumer {
    #[new]
    #[pyo3(signature = (config=None, certname=None, topics=None, *, send_acks=true, queue=1024))]
    fn new(
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        certname: Option<String>,
        topics: Option<Vec<String>>,
        send_acks: bool,
        queue: usize,
    ) -> PyResult<Self> {
        guard::no_panic(|| {
            let config = convert::config(py, config)?;
            if queue == 0 {
                return Err(errors::message_error("queue must be at least 1"));
            }
            let mut builder = gilmsg::Consumer::builder(&config)
                .send_acks(send_acks)
                .queue(queue);
            if let Some(certname) = certname {
                builder = builder.certname(certname);
            }
            if let Some(topics) = topics {
                builder = builder.topics(topics);
            }
            let consumer = build_detached(py, || builder.build())?;
            Ok(Consumer {
                signer_name: consumer.signer_name().map(str::to_owned),
                inner: Arc::new(tokio::sync::Mutex::new(Some(consumer))),
                closing: tokio::sync::watch::channel(false).0,
            })
        })
    }

    /// Waits up to `timeout` seconds (None: for ever) until the consumer's
    /// sockets are connected (ZeroMQ) or its queue is consuming (AMQP);
    /// whether it got there.
    #[pyo3(signature = (timeout=None))]
    fn wait_ready(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        guard::no_panic(|| {
            let limit = timeout
                .map(|t| convert::seconds("timeout", t))
                .transpose()?;
            let rt = runtime()?;
            let inner = self.inner.clone();
            let ready = py.detach(|| {
                rt.block_on(async move {
                    let mut guard = inner.lock().await;
                    let Some(consumer) = guard.as_mut() else {
                        return false;
                    };
                    match limit {
                        Some(limit) => tokio::time::timeout(limit, consumer.ready())
                            .await
                            .is_ok_and(|r| r.is_ready()),
                        None => consumer.ready().await.is_ready(),
                    }
                })
            });
            Ok(ready)
        })
    }

    /// The next delivery, waiting up to `timeout` seconds (None: until one
    /// comes or the consumer is closed); None when none came.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<Delivery>>> {
        guard::no_panic(|| {
            let limit = timeout
                .map(|t| convert::seconds("timeout", t))
                .transpose()?;
            let deadline = limit.map(|l| tokio::time::Instant::now() + l);
            let rt = runtime()?;
            loop {
                let step = match deadline {
                    Some(d) => d
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(SIGNAL_CHECK),
                    None => SIGNAL_CHECK,
                };
                let inner = self.inner.clone();
                let closing = self.closing.subscribe();
                let got = py.detach(|| {
                    rt.block_on(async move {
                        let mut guard = inner.lock().await;
                        let Some(consumer) = guard.as_mut() else {
                            return Ok(None);
                        };
                        tokio::time::timeout(step, next_or_closed(consumer, closing))
                            .await
                            .map_err(|_| ())
                    })
                });
                match got {
                    Ok(next) => return deliver(py, next),
                    Err(()) => {
                        py.check_signals()?;
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            return Ok(None);
                        }
                    }
                }
            }
        })
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<Delivery>>> {
        // None ends the iteration (pyo3 raises StopIteration for it).
        self.next(py, None)
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        guard::no_panic(|| {
            let inner = self.inner.clone();
            let closing = self.closing.subscribe();
            aio::spawn(
                py,
                async move {
                    let mut guard = inner.lock().await;
                    match guard.as_mut() {
                        Some(consumer) => next_or_closed(consumer, closing).await,
                        None => None,
                    }
                },
                |py, next| match deliver(py, next)? {
                    Some(d) => Ok(d.into_any()),
                    None => Err(pyo3::exceptions::PyStopAsyncIteration::new_err(())),
                },
            )
        })
    }

    /// The identity ACKs are signed as.
    #[getter]
    fn signer_name(&self) -> Option<String> {
        self.signer_name.clone()
    }

    fn stats(&self, py: Python<'_>) -> PyResult<BTreeMap<String, u64>> {
        let rt = runtime()?;
        let inner = self.inner.clone();
        Ok(py.detach(|| {
            rt.block_on(async move {
                inner
                    .lock()
                    .await
                    .as_ref()
                    .map(|c| c.stats().counters)
                    .unwrap_or_default()
            })
        }))
    }

    /// Stops the consumer (ACKs already queued are flushed); its final
    /// counters. Iteration then ends.
    fn close(&self, py: Python<'_>) -> PyResult<BTreeMap<String, u64>> {
        guard::no_panic(|| {
            let rt = runtime()?;
            let inner = self.inner.clone();
            self.closing.send_replace(true);
            Ok(py.detach(|| {
                rt.block_on(async move {
                    let taken = inner.lock().await.take();
                    match taken {
                        Some(c) => c.close().await.counters,
                        None => BTreeMap::new(),
                    }
                })
            }))
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
}

#[pymethods]
impl Delivery {
    /// Its full topic.
    #[getter]
    fn topic(&self) -> String {
        self.topic.clone()
    }

    /// Its id.
    #[getter]
    fn msg_id(&self) -> String {
        self.msg_id.clone()
    }

    /// The verified signer (None when signatures are not validated).
    #[getter]
    fn signer(&self) -> Option<String> {
        self.signer.clone()
    }

    /// Whether the sender asked for an ACK.
    #[getter]
    fn wants_ack(&self) -> bool {
        self.wants_ack
    }

    /// The payload.
    #[getter]
    fn msg(&self, py: Python<'_>) -> Py<PyAny> {
        self.msg.clone_ref(py)
    }

    /// The whole fedmsg envelope (`topic`, `msg`, `msg_id`, `timestamp`, ...).
    #[getter]
    fn message(&self, py: Python<'_>) -> Py<PyAny> {
        self.message.clone_ref(py)
    }

    /// Marks it handled and sends the signed ACK if the sender asked for
    /// one. A second call does nothing.
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        guard::no_panic(|| match self.take() {
            Some(d) => d.ack().map_err(|e| errors::to_py(py, e)),
            None => Ok(()),
        })
    }

    /// Marks it not handled: it is never acknowledged.
    fn fail(&self) {
        if let Some(d) = self.take() {
            d.fail();
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Delivery(topic={:?}, msg_id={:?}, signer={:?})",
            self.topic, self.msg_id, self.signer
        )
    }
}
