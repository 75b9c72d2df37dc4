//! Every [`gilmsg::Error`] as an exception of `gilmsg_rs.errors` (the
//! classes are Python's, in `python/gilmsg_rs/errors.py`, so they carry
//! docstrings and attributes a caller can read):
//!
//! | gilmsg | Python |
//! |---|---|
//! | `Timeout` | `Timeout` (`missing`, `acked`, `acks`, `msg_id`, `topic`, `sends`, `waited`, `broker`) |
//! | `Config`, `Crypto`, `NoAckEndpoints` | `ConfigError` (`path`, `key`) |
//! | `Message`, `Unsendable`, `InvalidArgument` | `MessageError` (a `ValueError` and `TypeError` too) |
//! | the rest (sockets, broker, closed, no subscriber, unroutable, signing) | `BusError` |

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bus::Ack;

const MODULE: &str = "gilmsg_rs.errors";

/// An instance of `gilmsg_rs.errors.<class>(message, **kwargs)` as a PyErr.
fn make(py: Python<'_>, class: &str, message: String, kwargs: Option<&Bound<'_, PyDict>>) -> PyErr {
    let built = py
        .import(MODULE)
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call((message,), kwargs));
    match built {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// `BusError(message)`.
pub(crate) fn bus_error(message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| make(py, "BusError", message, None))
}

/// `MessageError(message)`: the caller's argument cannot be used.
pub(crate) fn message_error(message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| make(py, "MessageError", message, None))
}

/// `ConfigError(message, path=, key=)`.
pub(crate) fn config_error(
    py: Python<'_>,
    message: String,
    path: Option<String>,
    key: Option<String>,
) -> PyErr {
    let kwargs = PyDict::new(py);
    let filled = kwargs
        .set_item("path", path)
        .and_then(|()| kwargs.set_item("key", key));
    match filled {
        Ok(()) => make(py, "ConfigError", message, Some(&kwargs)),
        Err(e) => e,
    }
}

/// The exception for a library error.
pub(crate) fn to_py(py: Python<'_>, error: gilmsg::Error) -> PyErr {
    use gilmsg::Error as E;
    let message = error.to_string();
    match error {
        E::Timeout(t) => timeout(py, message, &t),
        E::Config(c) => config(py, &c),
        E::Crypto(_) => config_error(py, message, None, None),
        E::NoAckEndpoints => config_error(py, message, None, Some("endpoints".into())),
        E::Message(_) | E::Unsendable(_) | E::InvalidArgument(_) => {
            make(py, "MessageError", message, None)
        }
        _ => make(py, "BusError", message, None),
    }
}

/// `ConfigError` naming the file and the key the config crate named.
pub(crate) fn config(py: Python<'_>, error: &gilmsg::ConfigError) -> PyErr {
    config_error(
        py,
        error.to_string(),
        error.path().map(|p| p.display().to_string()),
        error.key().map(str::to_owned),
    )
}

fn timeout(py: Python<'_>, message: String, t: &gilmsg::TimeoutError) -> PyErr {
    let kwargs = PyDict::new(py);
    let acks: Vec<Ack> = t.acked.iter().map(Ack::from).collect();
    let filled = (|| -> PyResult<()> {
        kwargs.set_item("msg_id", &t.msg_id)?;
        kwargs.set_item("topic", &t.topic)?;
        kwargs.set_item("missing", &t.missing)?;
        kwargs.set_item("acks", acks)?;
        kwargs.set_item("sends", t.sends)?;
        kwargs.set_item("waited", t.waited.as_secs_f64())?;
        kwargs.set_item("broker", t.broker.map(|b| b.to_string()))?;
        Ok(())
    })();
    match filled {
        Ok(()) => make(py, "Timeout", message, Some(&kwargs)),
        Err(e) => e,
    }
}
