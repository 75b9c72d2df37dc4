//! `gilmsg-relay`: run the fedmsg-relay-compatible forwarder.
//!
//! Prints one readiness line on stderr once both sockets are bound, with
//! the endpoints actually bound (so `tcp://127.0.0.1:*` works in tests),
//! prints its counters on SIGUSR1 and on exit, and stops on SIGINT/SIGTERM.
//!
//! Endpoints and numbers given as flags are checked by the same rules (and
//! refused with the same words, exit status 2) as the configuration file's
//! keys: the flags are applied to the configuration, which is then
//! validated as a whole.

use clap::Parser;

use crate::common::{self, CommonArgs, Failure};
use crate::service::{Service, ServiceArgs};
use crate::signals::{SignalEvent, Signals};

/// The start of the line the relay prints on stderr once both sockets are
/// bound (`... inbound=<endpoints> outbound=<endpoints>`).
pub const READY_LINE: &str = "gilmsg-relay: ready";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-relay",
    version,
    about = "Forward every message from relay_inbound to endpoints.relay_outbound.",
    after_help = "Signals: SIGUSR1 prints the counters on stderr; SIGTERM or SIGINT stops the relay \
                  (the counters are printed at exit too).\n\n\
                  Exit status: 0 after a clean stop; 2 usage or configuration error; 3 socket error."
)]
pub struct Args {
    /// Bind inbound here instead of the config's relay_inbound (repeatable).
    #[arg(long, value_name = "ENDPOINT", value_parser = common::parse_endpoint)]
    pub inbound: Vec<String>,
    /// Bind outbound here instead of endpoints.relay_outbound (repeatable).
    #[arg(long, value_name = "ENDPOINT", value_parser = common::parse_endpoint)]
    pub outbound: Vec<String>,
    /// Monitoring endpoint and heartbeats.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the relay until a signal.
pub fn run(args: Args) -> Result<(), Failure> {
    let runtime = common::runtime()?;
    runtime.block_on(async {
        // First, so that a SIGTERM or SIGUSR1 during start-up is handled,
        // not fatal.
        let mut signals = Signals::install()?;
        let mut config = if args.inbound.is_empty() || args.outbound.is_empty() {
            args.common.load()?
        } else {
            args.common.load_or_default()?
        };
        if !args.inbound.is_empty() {
            config.relay_inbound = args.inbound.clone();
        }
        if !args.outbound.is_empty() {
            config.endpoints.insert(
                gilmsg::relay::RELAY_OUTBOUND.to_owned(),
                args.outbound.clone(),
            );
        }
        args.service.apply(&mut config);
        config.validate()?;
        if args.common.printed_config(&config) {
            return Ok(());
        }
        let inbound = config.relay_inbound.clone();
        let outbound = config
            .endpoints
            .get(gilmsg::relay::RELAY_OUTBOUND)
            .cloned()
            .unwrap_or_default();
        if inbound.is_empty() || outbound.is_empty() {
            return Err(Failure::usage(
                "error: need relay_inbound and endpoints.relay_outbound (or --inbound/--outbound)",
            ));
        }
        tracing::info!(
            "binding inbound {} and outbound {} (high-water mark {})",
            inbound.join(","),
            outbound.join(","),
            config.high_water_mark
        );
        let relay = gilmsg::Relay::bind(&config, &inbound, &outbound)?;
        let mut service = Service::new("gilmsg-relay", &config);
        service.watch("relay", relay.health(), relay.metrics());
        // The relay's heartbeats go in through its own sockets, as bound
        // (a `*` port resolved).
        let mut own = config.clone();
        own.relay_inbound = relay.inbound_endpoints().to_vec();
        own.endpoints.insert(
            gilmsg::relay::RELAY_OUTBOUND.to_owned(),
            relay.outbound_endpoints().to_vec(),
        );
        service.start_heartbeat(&own, None)?;
        service.start()?;
        service.ready_and_say(format_args!(
            "{READY_LINE} inbound={} outbound={}",
            relay.inbound_endpoints().join(","),
            relay.outbound_endpoints().join(",")
        ));
        while signals.next().await == SignalEvent::Stats {
            eprintln!("{}", common::stats_line("gilmsg-relay", &relay.stats()));
        }
        service.stopping();
        tracing::info!("stopping: closing the relay's sockets");
        eprintln!("{}", common::stats_line("gilmsg-relay", &relay.stats()));
        relay.close().await;
        tracing::info!("stopped");
        Ok(())
    })
}
