//! asyncio without a second event loop: [`spawn`] runs a Rust future on the
//! shared tokio runtime and settles an `asyncio.Future` of the caller's
//! running loop with its outcome through `loop.call_soon_threadsafe` (the
//! one thread-safe way into a loop). Cancelling the asyncio future aborts
//! the Rust task ([`Canceller`]); for a publish that drops its wait, which
//! tells the transport to forget the message.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use pyo3::prelude::*;

use crate::{errors, guard, runtime};

/// Runs `work` on the runtime; its output is turned into the future's
/// result (or exception) by `finish`, with the GIL held. Returns the
/// `asyncio.Future`, created on the running loop (a `RuntimeError` when
/// there is none, as asyncio's own calls raise).
pub(crate) fn spawn<W, T, F>(py: Python<'_>, work: W, finish: F) -> PyResult<Py<PyAny>>
where
    W: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    F: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let resolve = py.import("gilmsg_rs._aio")?.getattr("resolve")?.unbind();
    let (loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    let task = runtime()?.spawn(async move {
        let outcome = AssertUnwindSafe(work).catch_unwind().await;
        Python::attach(|py| {
            let settled = match outcome {
                Ok(output) => guard::no_panic(|| finish(py, output)),
                Err(payload) => Err(errors::bus_error(guard::panic_text(payload.as_ref()))),
            };
            let (ok, value) = match settled {
                Ok(value) => (true, value),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // A closed loop cannot be told; its caller is gone.
            let _ =
                loop_ref.call_method1(py, "call_soon_threadsafe", (resolve, future_ref, ok, value));
        });
    });
    future.call_method1(
        "add_done_callback",
        (Canceller {
            abort: task.abort_handle(),
        },),
    )?;
    Ok(future.unbind())
}

/// A done-callback that aborts the Rust task of a cancelled future.
#[pyclass(module = "gilmsg_rs._native", frozen)]
pub(crate) struct Canceller {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.abort.abort();
        }
        Ok(())
    }
}
