//! Arguments in and results out: JSON bodies (through Python's own `json`,
//! so a body encodes exactly as fedmsg's `json.dumps` would, big integers
//! and float `repr`s included), timeouts in seconds, and the three forms a
//! configuration comes in (a path, a `fedmsg.config.load_config()` dict,
//! `None` for `$GILMSG_CONFIG` or `/etc/gilmsg/gilmsg.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;

/// `msg` as a JSON value: `json.dumps(msg, allow_nan=False)` (NaN and
/// infinities are not JSON, and fedmsg peers would choke on them), parsed
/// back by serde_json. Anything `json` refuses, or nesting deeper than the
/// parser goes, is a `MessageError` naming why.
pub(crate) fn msg_to_value(py: Python<'_>, msg: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("allow_nan", false)?;
    kwargs.set_item("ensure_ascii", false)?;
    let text = py
        .import("json")?
        .getattr("dumps")?
        .call((msg,), Some(&kwargs))
        .map_err(|e| {
            errors::message_error(format!("msg is not JSON-serialisable: {}", e.value(py)))
        })?;
    let text: String = text.extract()?;
    serde_json::from_str(&text).map_err(|e| errors::message_error(format!("msg: {e}")))
}

/// A JSON value as a Python object (`json.loads` of its text).
pub(crate) fn value_to_py(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| errors::bus_error(format!("cannot encode a received body: {e}")))?;
    Ok(py
        .import("json")?
        .getattr("loads")?
        .call1((text,))?
        .unbind())
}

/// Seconds as a [`Duration`]: negative, NaN, infinite or too large for a
/// `Duration` is a `MessageError` (the library then bounds it by
/// `MAX_TIMEOUT` and `max_message_age`).
pub(crate) fn seconds(name: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        errors::message_error(format!(
            "{name} must be a finite, non-negative number of seconds, not {secs}"
        ))
    })
}

/// The configuration named by `config`: a path (`str` or `os.PathLike`;
/// TOML, fedmsg JSON or fedora-messaging TOML), a dict as
/// `fedmsg.config.load_config()` returns it, or `None` for
/// `$GILMSG_CONFIG`, else `/etc/gilmsg/gilmsg.toml`.
pub(crate) fn config(
    py: Python<'_>,
    config: Option<&Bound<'_, PyAny>>,
) -> PyResult<gilmsg::Config> {
    let loaded = match config {
        None => gilmsg::Config::load(None),
        Some(obj) if obj.is_instance_of::<PyDict>() => {
            // fedmsg's dict holds values JSON has no form for (its logging
            // config may hold classes); they are keys gilmsg does not read,
            // so their text stands in for them.
            let kwargs = PyDict::new(py);
            kwargs.set_item("default", py.import("builtins")?.getattr("repr")?)?;
            let text: String = py
                .import("json")?
                .getattr("dumps")?
                .call((obj,), Some(&kwargs))
                .map_err(|e| {
                    errors::config_error(
                        py,
                        format!("config dict cannot be read as fedmsg JSON: {}", e.value(py)),
                        None,
                        None,
                    )
                })?
                .extract()?;
            gilmsg::Config::from_fedmsg_json_str(&text, Path::new("<fedmsg config dict>"))
        }
        Some(obj) => {
            let path: PathBuf = obj.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "config must be a path (str or os.PathLike), a fedmsg config dict or None, not {}",
                    obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            gilmsg::Config::from_path(&path)
        }
    };
    loaded.map_err(|e| errors::config(py, &e))
}
