//! `gilmsg_rs._native`: the gilmsg library ([`gilmsg::Bus`],
//! [`gilmsg::Consumer`]) as a Python extension module.
//!
//! This crate is glue only: it converts arguments (Python objects to JSON
//! values and durations, Python configs to [`gilmsg::Config`]), results
//! (receipts, deliveries) and errors (every [`gilmsg::Error`] to an
//! exception of `gilmsg_rs.errors`). The protocol lives in `gilmsg-proto`
//! and `gilmsg`. The pure-Python half of the package (`python/gilmsg_rs/`)
//! holds the exception classes, the compat API, the fedora-messaging wrapper
//! and publish-on-commit.
//!
//! Threads: one tokio runtime per process ([`runtime`]) drives every
//! publish and receive; a blocking call releases the GIL
//! ([`Python::detach`]) while it waits, and an asyncio call resolves its
//! future from that runtime through `loop.call_soon_threadsafe`. No Rust
//! panic reaches Python: every entry point runs under [`guard::no_panic`]
//! (and the async ones under `catch_unwind` on the runtime), which turns a
//! panic into `gilmsg_rs.BusError`.

#![forbid(unsafe_code)]

mod acker;
mod aio;
mod bus;
mod consumer;
mod convert;
mod errors;
mod guard;

use pyo3::prelude::*;

/// The runtime every handle of this process shares: two worker threads are
/// plenty, the work per message is signing and a channel send.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("gilmsg-rs")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the gilmsg runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| errors::bus_error(e.clone()))
}

/// Runs `build` (a `gilmsg` Bus or Consumer builder's `build`) with the GIL
/// released, inside the shared [`runtime`] (building starts socket threads
/// and, for AMQP, connects to the broker, which needs a tokio context but
/// not the GIL); a failure becomes the matching `gilmsg_rs.errors`
/// exception.
pub(crate) fn build_detached<T, F>(py: Python<'_>, build: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> gilmsg::Result<T> + Send,
{
    let rt = runtime()?;
    let built = py.detach(|| {
        let _entered = rt.enter();
        build()
    });
    built.map_err(|e| errors::to_py(py, e))
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bus::Bus>()?;
    m.add_class::<bus::Receipt>()?;
    m.add_class::<bus::Ack>()?;
    m.add_class::<consumer::Consumer>()?;
    m.add_class::<consumer::Delivery>()?;
    m.add_class::<aio::Canceller>()?;
    m.add_class::<acker::ExternalAcker>()?;
    m.add("MAX_TIMEOUT", gilmsg::MAX_TIMEOUT.as_secs_f64())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
