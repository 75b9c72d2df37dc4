//! `gilmsg-relay`: run the fedmsg-relay-compatible forwarder.
//!
//! Prints one readiness line on stderr once both sockets are bound, with
//! the endpoints actually bound (so `tcp://127.0.0.1:*` works in tests),
//! prints its counters on SIGUSR1 and on exit, and stops on SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

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
}

/// Runs the relay until a signal.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = if args.inbound.is_empty() || args.outbound.is_empty() {
        common::load_config(args.config.as_deref())?
    } else {
        match &args.config {
            Some(path) => common::load_config(Some(path))?,
            None => gilmsg::Config::default(),
        }
    };
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
        eprintln!(
            "gilmsg-relay: ready inbound={} outbound={}",
            relay.inbound_endpoints().join(","),
            relay.outbound_endpoints().join(",")
        );
        wait_for_exit(|| eprintln!("gilmsg-relay: stats {}", relay.stats())).await?;
        eprintln!("gilmsg-relay: stats {}", relay.stats());
        relay.close().await;
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM, calling `on_usr1` on each SIGUSR1.
pub async fn wait_for_exit(mut on_usr1: impl FnMut()) -> Result<(), Failure> {
    let sig = |kind| {
        signal(kind).map_err(|e| Failure::usage(format!("error: cannot watch signals: {e}")))
    };
    let (mut term, mut int, mut usr1) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::user_defined1())?,
    );
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = usr1.recv() => on_usr1(),
        }
    }
}
