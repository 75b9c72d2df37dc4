//! The signals every long-running gilmsg command (relay, consumer, logger
//! reading stdin) reacts to, in one place: SIGINT and SIGTERM stop it
//! cleanly, SIGUSR1 prints its counters. Installed first thing, so a signal
//! that arrives during start-up is handled rather than fatal.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::common::{Failure, EXIT_BUS};

/// What a signal asks a long-running command to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT or SIGTERM: stop cleanly.
    Exit,
    /// SIGUSR1: print the counters.
    Stats,
}

/// The signals a long-running command reacts to, installed eagerly: a
/// SIGUSR1 or SIGTERM that arrives before the handler exists would kill
/// the process with its default action, so commands install this first,
/// before they read the configuration or wait for readiness.
pub struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs the handlers now (inside a tokio runtime).
    pub fn install() -> Result<Signals, Failure> {
        let sig = |kind| {
            signal(kind).map_err(|e| Failure {
                status: EXIT_BUS,
                message: format!("error: cannot watch signals: {e}"),
            })
        };
        Ok(Signals {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            usr1: sig(SignalKind::user_defined1())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Exit,
            _ = self.int.recv() => SignalEvent::Exit,
            _ = self.usr1.recv() => SignalEvent::Stats,
        }
    }
}
