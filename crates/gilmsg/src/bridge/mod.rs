//! The ZeroMQ <-> AMQP bridges (`gilmsg-bridge`): carrying fedmsg's bus
//! to a RabbitMQ broker and back, signatures untouched, without loops.
//!
//! [`Bridge::start`] runs one or both directions, each as owners of one
//! socket or connection talking through bounded channels:
//!
//! ```text
//! ZeroMQ -> AMQP:  [zmq-in thread: SUB]  --bounded-->  [amqp-out task: confirms]  -> zmq.topic
//! AMQP -> ZeroMQ:  amq.topic -> durable queue -> [amqp-in task]  --bounded-->  [zmq-out thread: XPUB]
//!                                                      ^---------- sent(tag) ----------'
//! ```
//!
//! A ZeroMQ message is decoded ([`Envelope::decode`]) and written in the AMQP
//! adapter's own form (`amqp::encode_envelope`: body = `msg`, the signed
//! fields in `gilmsg_envelope`), plus the unsigned loop mark
//! [`BRIDGED_FROM_HEADER`]. An AMQP message is read by the adapter's own
//! decoder; with a `gilmsg_envelope` it goes out as the same canonical
//! envelope, without one (fedora-messaging's, unsigned) it is wrapped and
//! signed by the bridge ([`gilmsg_proto::bridge::wrap_unsigned`]). It is
//! `basic.ack`ed only once the ZeroMQ socket took it. The loop rules and
//! the memories behind them are in [`gilmsg_proto::bridge`];
//! `docs/bridge.md` says what each guarantees.

mod amqp_side;
mod zmq_side;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gilmsg_config::Config;
use gilmsg_proto::bridge::{IdMemory, ReplyRoutes};
use gilmsg_proto::Signer;

use crate::amqp::connect::Broker;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::monitoring::ComponentMetrics;
use crate::stats::{BridgeCounters, Record, Stats};

pub use gilmsg_proto::bridge::{BRIDGED_FROM_HEADER, BRIDGE_MARK_FIELD, BRIDGE_USERNAME};

/// The exchange the ZeroMQ -> AMQP direction publishes to by default.
pub const DEFAULT_ZMQ_EXCHANGE: &str = "zmq.topic";
/// The durable queue the AMQP -> ZeroMQ direction consumes by default.
pub const DEFAULT_QUEUE: &str = "gilmsg-bridge.amqp_to_zmq";

/// How long the loop memories keep an id, and how many ids at most.
const MEMORY_TTL: Duration = Duration::from_secs(600);
const MEMORY_CAPACITY: usize = 65_536;

/// Which directions to run and where.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BridgeOptions {
    /// Run ZeroMQ -> AMQP: subscribe to these endpoints (empty: off).
    pub zmq_endpoints: Vec<String>,
    /// The topic prefixes to subscribe to (empty: everything).
    pub zmq_topics: Vec<String>,
    /// Run AMQP -> ZeroMQ: bind these endpoints (empty: off).
    pub publish_endpoints: Vec<String>,
    /// Where ZeroMQ messages go (default `zmq.topic`; declared, topic,
    /// durable).
    pub zmq_exchange: String,
    /// Where AMQP publishers publish, which the queue is bound to (default:
    /// the config's `publish_exchange`, `amq.topic`).
    pub amqp_exchange: String,
    /// The AMQP -> ZeroMQ direction's durable queue.
    pub queue: String,
    /// The binding keys of that queue (default `#`).
    pub binding_keys: Vec<String>,
    /// The identity that signs unsigned AMQP messages sent to ZeroMQ
    /// (default: the config's certname rules for module `bridge`).
    pub certname: Option<String>,
    /// ZeroMQ messages held while the broker is slow; past it they are
    /// dropped and counted (`zmq_to_amqp.dropped.backlog`).
    pub backlog: usize,
    /// Publishes awaiting the broker's confirm at once.
    pub in_flight: usize,
    /// AMQP -> ZeroMQ waits for this many subscriptions on its socket
    /// before it consumes (what it sends earlier reaches nobody).
    pub await_subscriptions: u64,
}

impl BridgeOptions {
    /// Both directions off, default names, from `config`'s publish exchange.
    pub fn new(config: &Config) -> Self {
        let amqp_exchange = config
            .amqp
            .as_ref()
            .map(|a| a.publish_exchange.clone())
            .unwrap_or_else(|| gilmsg_config::amqp::DEFAULT_EXCHANGE.to_owned());
        BridgeOptions {
            zmq_endpoints: Vec::new(),
            zmq_topics: Vec::new(),
            publish_endpoints: Vec::new(),
            zmq_exchange: DEFAULT_ZMQ_EXCHANGE.to_owned(),
            amqp_exchange,
            queue: DEFAULT_QUEUE.to_owned(),
            binding_keys: vec!["#".to_owned()],
            certname: None,
            backlog: 10_000,
            in_flight: 1_024,
            await_subscriptions: 1,
        }
    }
}

/// What both directions of one bridge process share: the `msg_id`s each
/// sent lately (so neither carries back what the other carried) and the
/// `reply_to` of messages that want ACKs (so an ACK from ZeroMQ reaches its
/// AMQP publisher).
#[derive(Debug)]
pub(crate) struct Memories {
    pub(crate) sent_to_zmq: IdMemory,
    pub(crate) sent_to_amqp: IdMemory,
    pub(crate) reply_routes: ReplyRoutes,
}

pub(crate) type Shared = Arc<Mutex<Memories>>;

/// Locks the memories (a panicked holder cannot leave them half-written:
/// each operation is one call).
pub(crate) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Memories> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running bridge; it stops when closed or dropped.
pub struct Bridge {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<BridgeCounters>,
    healths: Vec<(&'static str, Health)>,
    publish_endpoints: Vec<String>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("publish_endpoints", &self.publish_endpoints)
            .finish()
    }
}

impl Bridge {
    /// Starts the directions `options` names, on the broker of `config`
    /// (which must have `amqp_url`); returns once each holds its socket or
    /// connection.
    pub fn start(config: &Config, options: BridgeOptions) -> Result<Bridge> {
        let Some(amqp) = &config.amqp else {
            return Err(Error::InvalidArgument(
                "a bridge needs the broker: amqp_url in the config".into(),
            ));
        };
        if options.zmq_endpoints.is_empty() && options.publish_endpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "a bridge needs ZeroMQ endpoints to subscribe to or to bind".into(),
            ));
        }
        let broker = Broker::new(amqp, "gilmsg-bridge")?;
        let ack_topic = config.topic_scheme().ack_topic();
        let shared: Shared = Arc::new(Mutex::new(Memories {
            sent_to_zmq: IdMemory::new(MEMORY_CAPACITY, MEMORY_TTL),
            sent_to_amqp: IdMemory::new(MEMORY_CAPACITY, MEMORY_TTL),
            reply_routes: ReplyRoutes::new(MEMORY_CAPACITY, MEMORY_TTL),
        }));
        let mut bridge = Bridge {
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
            counters: Arc::new(BridgeCounters::default()),
            healths: Vec::new(),
            publish_endpoints: Vec::new(),
            threads: Vec::new(),
            tasks: Vec::new(),
        };
        let settings = Settings {
            max_message: config.max_message_size,
            high_water_mark: config.high_water_mark,
            ack_topic,
        };
        if !options.publish_endpoints.is_empty() {
            let signer = bridge_signer(config, &options)?;
            let (out_tx, out_rx) = std::sync::mpsc::sync_channel(
                usize::from(amqp.prefetch_count.max(1)).saturating_add(16),
            );
            let (sent_tx, sent_rx) = tokio::sync::mpsc::unbounded_channel();
            let subscribed = Arc::new(tokio::sync::watch::channel(0u64).0);
            let out = zmq_side::start_out(
                &settings,
                &options.publish_endpoints,
                out_rx,
                sent_tx,
                subscribed.clone(),
                bridge.counters.clone(),
                bridge.stop.clone(),
            )?;
            bridge.publish_endpoints = out.bound;
            bridge.healths.push(("amqp_to_zmq.socket", out.health));
            bridge.threads.push(out.thread);
            let (done, health) = amqp_side::start_in(amqp_side::InSetup {
                broker: broker.clone(),
                settings: settings.clone(),
                exchange: options.amqp_exchange.clone(),
                queue: options.queue.clone(),
                binding_keys: options.binding_keys.clone(),
                signer,
                out: out_tx,
                sent: sent_rx,
                subscribed: subscribed.subscribe(),
                await_subscriptions: options.await_subscriptions,
                shared: shared.clone(),
                counters: bridge.counters.clone(),
                stop: bridge.stop.clone(),
                wake: bridge.wake.clone(),
            })?;
            bridge.healths.push(("amqp_to_zmq.broker", health));
            bridge.tasks.push(done);
        }
        if !options.zmq_endpoints.is_empty() {
            let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(options.backlog.max(1));
            let (done, health) = amqp_side::start_out(amqp_side::OutSetup {
                broker,
                settings: settings.clone(),
                zmq_exchange: options.zmq_exchange.clone(),
                amqp_exchange: options.amqp_exchange.clone(),
                in_flight: options.in_flight.max(1),
                inbox: frames_rx,
                shared,
                counters: bridge.counters.clone(),
            })?;
            bridge.healths.push(("zmq_to_amqp.broker", health));
            bridge.tasks.push(done);
            let input = zmq_side::start_in(
                &settings,
                &options.zmq_endpoints,
                &options.zmq_topics,
                frames_tx,
                bridge.counters.clone(),
                bridge.stop.clone(),
            )?;
            bridge.healths.push(("zmq_to_amqp.socket", input.health));
            bridge.threads.push(input.thread);
        }
        Ok(bridge)
    }

    /// The endpoints the AMQP -> ZeroMQ direction bound (a `*` port
    /// resolved); empty if it does not run.
    pub fn publish_endpoints(&self) -> &[String] {
        &self.publish_endpoints
    }

    /// `zmq_to_amqp.*` and `amqp_to_zmq.*` counters (`docs/bridge.md`).
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Each socket thread's and connection task's loop, by name.
    pub fn healths(&self) -> Vec<(&'static str, Health)> {
        self.healths.clone()
    }

    /// The counters for `/metrics` (`gilmsg_bridge_*`).
    pub fn metrics(&self) -> ComponentMetrics {
        ComponentMetrics {
            component: "bridge",
            source: self.counters.clone(),
        }
    }

    /// Stops both directions and waits for their threads and tasks (what
    /// was taken from the queue and not yet sent is requeued by the broker
    /// when the connection closes).
    pub async fn close(mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_waiters();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }
}

/// What every part needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_message: usize,
    pub(crate) high_water_mark: i32,
    pub(crate) ack_topic: String,
}

/// The identity that signs what the bridge wraps: refused at start if its
/// peers would refuse it (as every publisher's is).
fn bridge_signer(config: &Config, options: &BridgeOptions) -> Result<(Arc<dyn Signer>, String)> {
    let certname = options
        .certname
        .clone()
        .unwrap_or_else(|| config.certname_for("bridge", false));
    let trust = crate::setup::load_trust_if_any(config)?;
    let signer = crate::setup::load_signer(config, &certname, trust.as_deref()).map_err(|e| {
        Error::InvalidArgument(format!(
            "the AMQP -> ZeroMQ bridge signs the unsigned messages it carries, as {certname:?}: {e}"
        ))
    })?;
    let name = signer.name().to_owned();
    Ok((signer, name))
}
