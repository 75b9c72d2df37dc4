//! Keeping Rust panics out of Python: [`no_panic`] runs an entry point and
//! turns a panic (a bug, never input: the library refuses bad input with
//! errors) into `gilmsg_rs.BusError` instead of pyo3's `PanicException`,
//! which derives from `BaseException` and would slip past `except
//! Exception`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::PyResult;

use crate::errors;

/// Runs `f`, mapping a panic to `BusError("internal error: ...")`.
pub(crate) fn no_panic<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(errors::bus_error(panic_text(payload.as_ref()))),
    }
}

/// The text of a panic payload, for the exception's message.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    format!("internal error in gilmsg_rs (please report): {what}")
}
