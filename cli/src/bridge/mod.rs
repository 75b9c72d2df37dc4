//! `gilmsg-bridge`: the ZeroMQ <-> AMQP migration bridges, as a service.
//!
//! `zmq_to_amqp` subscribes to ZeroMQ endpoints (`--zmq-endpoint`,
//! repeatable, as fedmsg-migration-tools' demo; default: every
//! `endpoints` entry of the config but the bridge's own) and publishes to
//! the `zmq.topic` exchange; `amqp_to_zmq` consumes a durable queue bound
//! to `amq.topic` and publishes on a ZeroMQ socket it binds
//! (`--publish-endpoint`, or the config's `endpoints.amqp_to_zmq`); `both`
//! runs the two in one process, which is what lets an ACK from ZeroMQ reach
//! the AMQP publisher that asked for it (the process remembers the
//! publisher's `reply_to`). The broker, TLS and qos come from the config
//! (fedora-messaging's TOML or gilmsg's). The work is [`gilmsg::bridge`];
//! this module is the command: flags, the ready line, signals, counters and
//! the service conventions of the other tools (`docs/bridge.md`).

use clap::{Parser, Subcommand};

use crate::common::{self, CommonArgs, Failure};
use crate::service::{Service, ServiceArgs};
use crate::signals::{SignalEvent, Signals};

/// The start of the line printed on stderr once every direction holds its
/// socket and connection: `gilmsg-bridge: ready zmq_to_amqp=<endpoints>
/// amqp_to_zmq=<bound endpoints>` (`off` for a direction not run).
pub const READY_LINE: &str = "gilmsg-bridge: ready";

/// The `endpoints` key naming where `amqp_to_zmq` binds, so ZeroMQ
/// consumers that list every endpoint find the bridge by name.
pub const PUBLISH_ENDPOINT_KEY: &str = "amqp_to_zmq";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-bridge",
    version,
    about = "Bridge fedmsg's ZeroMQ bus and an AMQP broker both ways: signatures carried, no loops.",
    after_help = "Signals: SIGUSR1 prints the counters on stderr; SIGTERM or SIGINT stops the bridge \
                  (the counters are printed at exit too).\n\n\
                  Exit status: 0 after a clean stop; 2 usage or configuration error; 3 socket or broker error."
)]
pub struct Args {
    /// Which directions.
    #[command(subcommand)]
    pub command: Command,
}

/// The directions a bridge process runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// ZeroMQ -> AMQP: publish what the ZeroMQ endpoints carry to the
    /// zmq.topic exchange.
    #[command(name = "zmq_to_amqp", alias = "zmq-to-amqp")]
    ZmqToAmqp(RunArgs),
    /// AMQP -> ZeroMQ: publish what amq.topic carries on a ZeroMQ socket.
    #[command(name = "amqp_to_zmq", alias = "amqp-to-zmq")]
    AmqpToZmq(RunArgs),
    /// Both directions in one process (ACKs from ZeroMQ then reach AMQP
    /// publishers).
    Both(RunArgs),
    /// Compare the messages on both sides: report those seen on one side
    /// only and those changed across the bridge (`--check` for nagios).
    Verify(crate::bridge_verify::VerifyArgs),
}

/// The flags of a running bridge.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// zmq_to_amqp: a ZeroMQ endpoint to subscribe to (repeatable; default:
    /// the config's endpoints but endpoints.amqp_to_zmq).
    #[arg(long, value_name = "ENDPOINT", value_parser = common::parse_endpoint)]
    pub zmq_endpoint: Vec<String>,
    /// zmq_to_amqp: a topic prefix to subscribe to (repeatable; default:
    /// everything).
    #[arg(long, value_name = "PREFIX")]
    pub topic: Vec<String>,
    /// zmq_to_amqp: the exchange to publish to (declared: topic, durable).
    #[arg(long, value_name = "NAME", default_value = gilmsg::bridge::DEFAULT_ZMQ_EXCHANGE)]
    pub zmq_exchange: String,
    /// The exchange AMQP publishers use: amqp_to_zmq's queue is bound to
    /// it, and ACKs for AMQP publishers go there (default: the config's
    /// publish_exchange, amq.topic).
    #[arg(long, value_name = "NAME")]
    pub amqp_exchange: Option<String>,
    /// amqp_to_zmq: bind this ZeroMQ endpoint (repeatable; default: the
    /// config's endpoints.amqp_to_zmq).
    #[arg(long, value_name = "ENDPOINT", value_parser = common::parse_endpoint)]
    pub publish_endpoint: Vec<String>,
    /// amqp_to_zmq: the durable queue to consume.
    #[arg(long, value_name = "NAME", default_value = gilmsg::bridge::DEFAULT_QUEUE)]
    pub queue: String,
    /// amqp_to_zmq: a binding key of that queue (repeatable; default `#`).
    #[arg(long, value_name = "KEY")]
    pub binding_key: Vec<String>,
    /// amqp_to_zmq: the identity that signs unsigned AMQP messages
    /// (default: the config's certname rules for module `bridge`).
    #[arg(long, value_name = "NAME")]
    pub certname: Option<String>,
    /// amqp_to_zmq: consume only once this many subscriptions reached the
    /// ZeroMQ socket (until then the queue holds the messages).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub await_subscriptions: u64,
    /// zmq_to_amqp: ZeroMQ messages held while the broker is slow; past it
    /// they are dropped and counted (zmq_to_amqp.dropped.backlog).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub backlog: usize,
    /// Monitoring endpoint and heartbeats.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `gilmsg-bridge ARGS` (program name first): parses, sets up logging by
/// `--log-format`, runs, and returns the exit status.
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    let (directions, args) = match Args::parse_from(argv).command {
        Command::ZmqToAmqp(a) => (Directions::ZMQ_TO_AMQP, a),
        Command::AmqpToZmq(a) => (Directions::AMQP_TO_ZMQ, a),
        Command::Both(a) => (Directions::BOTH, a),
        // The checker sets up its own logging and exit statuses.
        Command::Verify(a) => return crate::bridge_verify::run(a),
    };
    common::init_logging_as(args.common.log_format);
    common::report("gilmsg-bridge", run(directions, args))
}

/// Which directions a bridge process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directions {
    /// ZeroMQ -> AMQP.
    pub zmq_to_amqp: bool,
    /// AMQP -> ZeroMQ.
    pub amqp_to_zmq: bool,
}

impl Directions {
    /// `zmq_to_amqp` alone.
    pub const ZMQ_TO_AMQP: Directions = Directions {
        zmq_to_amqp: true,
        amqp_to_zmq: false,
    };
    /// `amqp_to_zmq` alone.
    pub const AMQP_TO_ZMQ: Directions = Directions {
        zmq_to_amqp: false,
        amqp_to_zmq: true,
    };
    /// `both`.
    pub const BOTH: Directions = Directions {
        zmq_to_amqp: true,
        amqp_to_zmq: true,
    };
}

/// Runs the bridge's `directions` until a signal.
pub fn run(directions: Directions, args: RunArgs) -> Result<(), Failure> {
    let Directions {
        zmq_to_amqp,
        amqp_to_zmq,
    } = directions;
    let runtime = common::runtime()?;
    runtime.block_on(async {
        let mut signals = Signals::install()?;
        let mut config = args.common.load()?;
        args.service.apply(&mut config);
        config.validate()?;
        if args.common.printed_config(&config) {
            return Ok(());
        }
        if config.amqp.is_none() {
            return Err(Failure::usage(
                "error: the bridge needs the broker: amqp_url in the config",
            ));
        }
        let mut options = gilmsg::bridge::BridgeOptions::new(&config);
        if zmq_to_amqp {
            options.zmq_endpoints = if args.zmq_endpoint.is_empty() {
                config
                    .endpoints
                    .iter()
                    .filter(|(name, _)| name.as_str() != PUBLISH_ENDPOINT_KEY)
                    .flat_map(|(_, list)| list.iter().cloned())
                    .collect()
            } else {
                args.zmq_endpoint.clone()
            };
            if options.zmq_endpoints.is_empty() {
                return Err(Failure::usage(
                    "error: zmq_to_amqp needs ZeroMQ endpoints: --zmq-endpoint, or endpoints in the config",
                ));
            }
            options.zmq_topics = args.topic.clone();
        } else if !args.zmq_endpoint.is_empty() || !args.topic.is_empty() {
            return Err(Failure::usage(
                "error: --zmq-endpoint and --topic are for zmq_to_amqp (or both)",
            ));
        }
        if amqp_to_zmq {
            options.publish_endpoints = if args.publish_endpoint.is_empty() {
                config
                    .endpoints
                    .get(PUBLISH_ENDPOINT_KEY)
                    .cloned()
                    .unwrap_or_default()
            } else {
                args.publish_endpoint.clone()
            };
            if options.publish_endpoints.is_empty() {
                return Err(Failure::usage(format!(
                    "error: amqp_to_zmq needs an endpoint to bind: --publish-endpoint, or endpoints.{PUBLISH_ENDPOINT_KEY} in the config"
                )));
            }
        } else if !args.publish_endpoint.is_empty() {
            return Err(Failure::usage(
                "error: --publish-endpoint is for amqp_to_zmq (or both)",
            ));
        }
        options.zmq_exchange = args.zmq_exchange.clone();
        if let Some(exchange) = &args.amqp_exchange {
            options.amqp_exchange = exchange.clone();
        }
        if options.zmq_exchange == options.amqp_exchange {
            return Err(Failure::usage(format!(
                "error: --zmq-exchange and the AMQP exchange are both {:?}: the bridges would loop",
                options.zmq_exchange
            )));
        }
        options.queue = args.queue.clone();
        if !args.binding_key.is_empty() {
            options.binding_keys = args.binding_key.clone();
        }
        options.certname = args.certname.clone();
        options.await_subscriptions = args.await_subscriptions;
        options.backlog = args.backlog.max(1);
        tracing::info!(?options, "starting the bridge");
        let mut service = Service::new("gilmsg-bridge", &config);
        let bridge = gilmsg::bridge::Bridge::start(&config, options.clone())?;
        service.add_metrics(bridge.metrics());
        for (name, health) in bridge.healths() {
            service.watch_loop(name, health);
        }
        service.start_heartbeat(&config, args.certname.as_deref())?;
        service.start()?;
        let shown = |on: bool, list: &[String]| {
            if on {
                list.join(",")
            } else {
                "off".to_owned()
            }
        };
        service.ready_and_say(format_args!(
            "{READY_LINE} zmq_to_amqp={} amqp_to_zmq={}",
            shown(zmq_to_amqp, &options.zmq_endpoints),
            shown(amqp_to_zmq, bridge.publish_endpoints())
        ));
        while signals.next().await == SignalEvent::Stats {
            eprintln!("{}", common::stats_line("gilmsg-bridge", &bridge.stats()));
        }
        service.stopping();
        tracing::info!("stopping the bridge");
        let stats = bridge.stats();
        bridge.close().await;
        eprintln!("{}", common::stats_line("gilmsg-bridge", &stats));
        Ok(())
    })
}
