//! A hard time limit for test bodies.
//!
//! [`within`] runs the body on its own thread and waits for it at most
//! `limit`. On overrun it kills (SIGKILL) every child process the body
//! registered, then panics, so the test fails with a message and nothing is
//! left running. Processes started through [`crate::Bus`] register
//! themselves with the guard of the thread that created the fixture.

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The PIDs a guarded test body has started and not yet reaped.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<HashSet<u32>>>);

impl Registry {
    /// Records a child.
    pub fn add(&self, pid: u32) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(pid);
        }
    }

    /// Forgets a child (it has been reaped).
    pub fn remove(&self, pid: u32) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&pid);
        }
    }

    fn kill_all(&self) {
        if let Ok(set) = self.0.lock() {
            for &pid in set.iter() {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// The registry of the guard this thread runs under, if any.
pub fn current() -> Registry {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_default()
}

/// Runs `body` with a hard limit of `limit`; panics (after killing the
/// body's child processes) if it has not finished by then.
pub fn within<R, F>(limit: Duration, body: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let registry = Registry::default();
    let inner = registry.clone();
    let (tx, rx) = mpsc::channel();
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    std::thread::Builder::new()
        .name(format!("{name}-body"))
        .spawn(move || {
            CURRENT.with(|c| *c.borrow_mut() = Some(inner));
            let result = std::panic::catch_unwind(AssertUnwindSafe(body));
            let _ = tx.send(result);
        })
        .expect("spawn test body thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => {
            registry.kill_all();
            panic!("test {name} exceeded its hard limit of {limit:?}; its processes were killed");
        }
    }
}

/// [`within`] for an async body, run on a two-worker tokio runtime.
pub fn within_async<R, F, Fut>(limit: Duration, body: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
{
    within(limit, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(body())
    })
}
