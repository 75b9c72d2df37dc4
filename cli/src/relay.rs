//! `gilmsg-relay`: run the fedmsg-relay-compatible forwarder.
//!
//! Prints one readiness line on stderr once both sockets are bound, with
//! the endpoints actually bound (so `tcp://127.0.0.1:*` works in tests),
//! prints its counters on SIGUSR1 and on exit, and stops on SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::common::{self, Failure};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-relay",
    version,
    about = "Forward every message from relay_inbound to endpoints.relay_outbound."
)]
pub struct Args {
    /// Config file (default: $GILMSG_CONFIG, then /etc/gilmsg/gilmsg.toml).
    #[arg(long, alias = "config-filename", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bind inbound here instead of the config's relay_inbound (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    pub inbound: Vec<String>,
    /// Bind outbound here instead of endpoints.relay_outbound (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    pub outbound: Vec<String>,
    /// Queue limit per socket and peer, in messages (0 = unlimited), as
    /// fedmsg's --high-water-mark; overrides the config's high_water_mark.
    #[arg(long, value_name = "N")]
    pub high_water_mark: Option<i32>,
}

/// Runs the relay until a signal.
pub fn run(args: Args) -> Result<(), Failure> {
    let mut config = if args.inbound.is_empty() || args.outbound.is_empty() {
        common::load_config(args.config.as_deref())?
    } else {
        match &args.config {
            Some(path) => common::load_config(Some(path))?,
            None => gilmsg::Config::default(),
        }
    };
    if let Some(hwm) = args.high_water_mark {
        config.high_water_mark = hwm;
    }
    let inbound = if args.inbound.is_empty() {
        config.relay_inbound.clone()
    } else {
        args.inbound.clone()
    };
    let outbound = if args.outbound.is_empty() {
        config
            .endpoints
            .get(gilmsg::relay::RELAY_OUTBOUND)
            .cloned()
            .unwrap_or_default()
    } else {
        args.outbound.clone()
    };
    if inbound.is_empty() || outbound.is_empty() {
        return Err(Failure::usage(
            "error: need relay_inbound and endpoints.relay_outbound (or --inbound/--outbound)",
        ));
    }
    let runtime = common::runtime()?;
    runtime.block_on(async {
        let relay = gilmsg::Relay::bind(&config, &inbound, &outbound)?;
        let mut signals = Signals::install()?;
        eprintln!(
            "gilmsg-relay: ready inbound={} outbound={}",
            relay.inbound_endpoints().join(","),
            relay.outbound_endpoints().join(",")
        );
        while signals.next().await == SignalEvent::Stats {
            eprintln!("gilmsg-relay: stats {}", relay.stats());
        }
        eprintln!("gilmsg-relay: stats {}", relay.stats());
        relay.close().await;
        Ok(())
    })
}

/// What a signal asks a long-running command to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT or SIGTERM: stop cleanly.
    Exit,
    /// SIGUSR1: print the counters.
    Stats,
}

/// The signals a long-running command reacts to, installed eagerly: a
/// SIGUSR1 that arrives before the handler exists would kill the process
/// (its default action), so install this *before* printing a ready line.
pub struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs the handlers now.
    pub fn install() -> Result<Signals, Failure> {
        let sig = |kind| {
            signal(kind).map_err(|e| Failure::usage(format!("error: cannot watch signals: {e}")))
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
