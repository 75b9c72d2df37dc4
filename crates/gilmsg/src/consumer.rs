//! The ACK-sending consumer's handles: [`ConsumerBuilder`], [`Consumer`],
//! [`Delivery`] and [`Readiness`].
//!
//! A consumer drops (and counts) anything malformed, unsigned where
//! signatures are required, badly signed or refused by the routing policy;
//! it hands each new `msg_id` to the application exactly once as a
//! [`Delivery`]; and it sends the signed ACK only when the application says
//! the message was handled ([`Delivery::ack`]). A delivery that is dropped or
//! failed is never acked, so the producer's timeout tells the truth. (Python
//! gilmsg acks before the handler runs.)
//!
//! Re-sends of a handled message are re-acked without reaching the handler
//! again, and only if their body is the one that was handled. ACKs are
//! signed after each burst of work: when several messages were handled
//! since the last burst, one signed ACK covers them all (see
//! `gilmsg_proto::ack`), which is what keeps a busy consumer's signing cost
//! per message low. Only messages from gilmsg-rs publishers are batched; a
//! Python gilmsg publisher reads a single `ack_msg_id`, so its messages are
//! acked one by one. Messages that do not ask for an ACK (no
//! `gilmsg_version`), and ACKs themselves, are delivered but never acked.
//!
//! Every one of those decisions is made by
//! [`ConsumerState`] in
//! `gilmsg-proto`; the transport's loop drives it through the
//! `ConsumerDriver` (`transport/consumer.rs`); ZeroMQ's is in
//! `zeromq/consumer.rs`. This file is what the application holds.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_config::Config;
use gilmsg_proto::consumer::{ConsumerSettings, ConsumerState, Ticket};
use gilmsg_proto::dedupe::{ReackPolicy, Retention};
use gilmsg_proto::Envelope;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::setup;
use crate::stats::{ConsumerCounters, Record, Stats};
use crate::transport::consumer::Acker;
use crate::transport::{ConsumerLink, ConsumerParts, Settle};
use crate::{amqp, zeromq};
use gilmsg_config::{AmqpConfig, BindingConfig, QueueConfig};
use gilmsg_proto::redelivery::Redeliveries;

/// How long a consumer waits for endpoints that give no verdict (a host
/// that drops packets gives none for minutes) before calling itself ready
/// without them. Endpoints that refuse the connection are settled at once.
pub(crate) const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// How far the consumer's sockets have come up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Readiness {
    /// Endpoints the SUB has completed a handshake with.
    pub connected: usize,
    /// Endpoints it connects to.
    pub expected: usize,
    /// Whether ACKs have somewhere to go (the relay has subscribed to our
    /// ACK socket, or we bind our own endpoint, or ACKs are off).
    pub ack_path: bool,
    /// Endpoints not connected now: refused, unreachable, disconnected, or
    /// still connecting. libzmq keeps retrying them in the background. The
    /// subscribed endpoints come first, then `relay_inbound` endpoints that
    /// ACKs cannot reach.
    pub down: Vec<String>,
    /// Whether waiting is over: every endpoint is connected or known to be
    /// down (refused, unreachable), or the grace period (2 s) has passed.
    pub settled: bool,
}

impl Readiness {
    /// Every endpoint connected and the ACK path up.
    pub fn is_complete(&self) -> bool {
        self.connected >= self.expected && self.ack_path
    }

    /// Complete, or settled with what is up: what [`Consumer::ready`] waits for.
    pub fn is_ready(&self) -> bool {
        self.is_complete() || self.settled
    }
}

/// Builds a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    config: Config,
    topics: Vec<String>,
    certname: Option<String>,
    active: Option<bool>,
    send_acks: bool,
    deliver_acks: bool,
    deliver_heartbeats: bool,
    private_queue: bool,
    private_exchanges: Vec<String>,
    queue: usize,
}

impl ConsumerBuilder {
    /// Also deliver ACK messages (other consumers' ACKs) to the application.
    /// Off by default: on a busy bus every consumer would otherwise receive,
    /// verify and hand over every other consumer's ACKs.
    pub fn deliver_acks(mut self, deliver: bool) -> Self {
        self.deliver_acks = deliver;
        self
    }

    /// Also deliver heartbeats (`<topic_prefix>.<environment>.gilmsg.heartbeat`,
    /// see [`crate::health::heartbeat_topic`]). Off by default: they are the
    /// processes' business, not the handlers'; a skipped heartbeat is
    /// counted (`message.heartbeat_skipped`), never acked.
    pub fn deliver_heartbeats(mut self, deliver: bool) -> Self {
        self.deliver_heartbeats = deliver;
        self
    }

    /// On AMQP, read through a queue of this consumer's own: server-named,
    /// exclusive and auto-delete, bound to [`ConsumerBuilder::topics`]
    /// alone, whatever the config's `[queues]` and `[[bindings]]` say. For
    /// watchers (`gilmsg-tail`, `gilmsg-status`): they see a copy of the
    /// traffic and never take a message off another consumer's queue.
    /// Off by default; no effect on ZeroMQ, where every subscriber gets
    /// its own copy anyway.
    pub fn private_queue(mut self, private: bool) -> Self {
        self.private_queue = private;
        self
    }

    /// The exchanges a [`ConsumerBuilder::private_queue`] is bound to,
    /// each for every topic (default: the config's `publish_exchange`
    /// alone). For a watcher of both sides of a bridged bus
    /// (`gilmsg-bridge verify`: `amq.topic` and `zmq.topic`). An exchange
    /// that may not exist yet belongs in the config's `[exchanges]`, so
    /// that it is declared before the queue is bound to it.
    pub fn private_queue_exchanges<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        exchanges: I,
    ) -> Self {
        self.private_exchanges = exchanges.into_iter().map(Into::into).collect();
        self
    }

    /// Topic prefixes to subscribe to (full topics; `""` for everything).
    /// Default: everything under `<topic_prefix>.<environment>.`.
    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// The identity to sign ACKs as (default: the config's rules, modname `gilmsg`).
    pub fn certname(mut self, certname: impl Into<String>) -> Self {
        self.certname = Some(certname.into());
        self
    }

    /// Send ACKs through the relay instead of binding `endpoints[name]`.
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Whether to send ACKs at all (off: a plain validating tail).
    pub fn send_acks(mut self, send: bool) -> Self {
        self.send_acks = send;
        self
    }

    /// How many deliveries may wait for the application before new messages
    /// are dropped (and counted, and left unacked, so the producer re-sends).
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = capacity.max(1);
        self
    }

    /// Starts the socket thread.
    pub fn build(self) -> Result<Consumer> {
        self.start(None)
    }

    /// Starts the socket thread with `handler` running *on* it: each new
    /// message is handed to `handler` right where it was verified, and ACKed
    /// when it returns `Ok`. That saves two thread hand-offs per message
    /// (the socket thread to the application and back), which on a busy or
    /// virtualised machine is a good part of the ACK latency. Only for quick
    /// handlers that never block (count, record in memory, forward to a
    /// channel): while it runs, the consumer receives nothing.
    /// [`Consumer::next`] yields nothing for such a consumer.
    pub fn build_inline<F>(self, handler: F) -> Result<Consumer>
    where
        F: FnMut(&Envelope, Option<&str>) -> std::result::Result<(), String> + Send + 'static,
    {
        self.start(Some(Box::new(handler)))
    }

    fn start(self, inline: Option<InlineHandler>) -> Result<Consumer> {
        let ConsumerBuilder {
            config,
            mut topics,
            certname,
            active,
            send_acks,
            deliver_acks,
            deliver_heartbeats,
            private_queue,
            private_exchanges,
            queue,
        } = self;
        config.validate()?;
        let scheme = config.topic_scheme();
        let explicit_topics = !topics.is_empty();
        if topics.is_empty() {
            topics.push(scheme.topic_root());
        }
        let active = active.unwrap_or(config.active || config.own_endpoints().is_none());
        let trust = if config.validate_signatures {
            Some(setup::load_trust(&config)?)
        } else if send_acks {
            setup::load_trust_if_any(&config)?
        } else {
            None
        };
        let validator = trust
            .as_ref()
            .filter(|_| config.validate_signatures)
            .map(|t| setup::validator(&config, Arc::clone(t)));
        let signer = if send_acks {
            let certname = certname.unwrap_or_else(|| config.certname_for("gilmsg", active));
            Some(setup::load_signer(&config, &certname, trust.as_deref())?)
        } else {
            None
        };
        let acker = signer.map(|signer| {
            Arc::new(Acker {
                signer,
                ack_topic: scheme.ack_topic(),
                sequence: AtomicU64::new(0),
                username: setup::username(),
            })
        });
        let counters = Arc::new(ConsumerCounters::default());
        let (deliveries_tx, deliveries) = mpsc::channel(queue);
        // Read at scrape time: only the application's side sees a delivery
        // leave the queue. Weak, so the queue still closes with the thread.
        let weak = deliveries_tx.downgrade();
        counters.queue_deliveries.set(move || {
            weak.upgrade()
                .map(|tx| (tx.max_capacity() - tx.capacity()) as u64)
        });
        let (readiness_tx, readiness) = watch::channel(Readiness::default());
        let settings = ConsumerSettings {
            ack_topic: scheme.ack_topic(),
            deliver_acks,
            send_acks: acker.is_some(),
            max_message_size: config.max_message_size,
            retention: Retention {
                capacity: config.dedupe_capacity,
                max_age: config.max_message_age,
                clock_skew: config.clock_skew,
            },
            reack: ReackPolicy::default(),
        };
        let mut state = ConsumerState::new(settings, Instant::now());
        // `[schemas]`: messages that are not ACKs must pass this consumer's
        // own schema for their topic (proto's rule 7). Without the table
        // nothing is checked or noted, as before schemas existed.
        if !config.schemas.is_empty() {
            state = state.with_schemas(Arc::new(config.schemas.clone()));
        }
        let parts = ConsumerParts {
            state,
            validator,
            acker: acker.clone(),
            deliveries: deliveries_tx,
            inline,
            skip_topic: (!deliver_heartbeats).then(|| crate::health::heartbeat_topic(&config)),
            counters: counters.clone(),
            readiness: readiness_tx,
            redeliveries: None,
        };
        let (link, bound, done, health) = match &config.amqp {
            Some(amqp_config) => {
                let identity = acker.as_ref().map(|a| a.signer.name().to_owned());
                let queues = if private_queue {
                    private_amqp_queue(amqp_config, &private_exchanges, &topics, scheme.ack_topic())
                } else {
                    amqp_queues(
                        amqp_config,
                        identity.as_deref(),
                        &topics,
                        explicit_topics,
                        scheme.ack_topic(),
                    )
                };
                let mut parts = parts;
                parts.redeliveries = Some(Redeliveries::new(
                    amqp_config.max_redeliveries,
                    config.dedupe_capacity,
                ));
                let app = identity.unwrap_or_else(|| "gilmsg-consumer".to_owned());
                let broker = amqp::connect::Broker::new(amqp_config, &app)?;
                let running = amqp::consumer::start(broker, queues, parts)?;
                (running.link, Vec::new(), running.done, running.health)
            }
            None => {
                let own: Vec<String> = config
                    .own_endpoints()
                    .map(<[String]>::to_vec)
                    .unwrap_or_default();
                let (ack_bind, ack_connect) = match (send_acks, active) {
                (false, _) => (Vec::new(), Vec::new()),
                (true, true) if config.relay_inbound.is_empty() => return Err(Error::InvalidArgument(
                    "nowhere to send ACKs: set `relay_inbound`, or `name` with an entry in `endpoints`"
                        .into(),
                )),
                (true, true) => (Vec::new(), config.relay_inbound.clone()),
                (true, false) => (own.clone(), Vec::new()),
            };
                let endpoints: Vec<String> = config
                    .subscribe_endpoints()
                    .into_iter()
                    .filter(|e| !ack_bind.contains(e))
                    .collect();
                if endpoints.is_empty() {
                    return Err(Error::InvalidArgument(
                        "`endpoints` lists nothing to subscribe to".into(),
                    ));
                }
                let sockets = zeromq::consumer::Sockets {
                    tuning: zeromq::SocketTuning::from_config(&config),
                    endpoints,
                    topics,
                    ack_bind,
                    ack_connect,
                };
                let running = zeromq::consumer::start(sockets, parts)?;
                (running.link, running.bound, running.done, running.health)
            }
        };
        Ok(Consumer {
            deliveries,
            readiness,
            shared: Arc::new(Shared {
                link,
                counters,
                done: std::sync::Mutex::new(Some(done)),
                health,
            }),
            bound,
            signer_name: acker.as_ref().map(|a| a.signer.name().to_owned()),
        })
    }
}

/// What a consumer's handles share: the way to its transport, and its
/// counters.
struct Shared {
    link: Arc<dyn ConsumerLink>,
    counters: Arc<ConsumerCounters>,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    health: crate::health::Health,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.link.shutdown();
    }
}

/// A subscription that yields each new message once, as a [`Delivery`].
pub struct Consumer {
    deliveries: mpsc::Receiver<Delivery>,
    readiness: watch::Receiver<Readiness>,
    shared: Arc<Shared>,
    bound: Vec<String>,
    signer_name: Option<String>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("signer", &self.signer_name)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A builder with defaults from `config`.
    pub fn builder(config: &Config) -> ConsumerBuilder {
        ConsumerBuilder {
            config: config.clone(),
            topics: Vec::new(),
            certname: None,
            active: None,
            send_acks: true,
            deliver_acks: false,
            deliver_heartbeats: false,
            private_queue: false,
            private_exchanges: Vec::new(),
            queue: 1024,
        }
    }

    /// The next new message, or `None` once the consumer has stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// Waits until every endpoint is connected and ACKs have a path out, or
    /// until the endpoints still missing are known to be down (refused,
    /// unreachable) or have given no verdict for 2 s; [`Readiness::down`]
    /// names them, and they are logged. One dead peer never holds a consumer
    /// back: it handles messages from the endpoints that are up, and libzmq
    /// keeps trying the others. In a direct topology a consumer is thus
    /// ready as soon as the publishers that are up are connected, whether or
    /// not the other consumers' ACK endpoints (which it also connects to)
    /// are up yet.
    pub async fn ready(&mut self) -> Readiness {
        let reached = self
            .readiness
            .wait_for(Readiness::is_ready)
            .await
            .map(|r| r.clone())
            .ok();
        reached.unwrap_or_else(|| self.readiness.borrow().clone())
    }

    /// The readiness now, and a receiver to watch it change.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.clone()
    }

    /// Endpoints the ACK socket bound (with wildcard ports resolved).
    pub fn bound_endpoints(&self) -> &[String] {
        &self.bound
    }

    /// The identity ACKs are signed as.
    pub fn signer_name(&self) -> Option<&str> {
        self.signer_name.as_deref()
    }

    /// Counters: received, delivered, duplicates, ACKs sent, and every
    /// dropped message by reason.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Whether the consumer's socket thread is turning.
    pub fn health(&self) -> crate::health::Health {
        self.shared.health.clone()
    }

    /// The consumer's counters for `/metrics`.
    pub fn metrics(&self) -> crate::monitoring::ComponentMetrics {
        crate::monitoring::ComponentMetrics {
            component: "consumer",
            source: self.shared.counters.clone(),
        }
    }

    /// Runs `handler` on each new message; ACKs when it returns `Ok`.
    pub async fn run<F, Fut, E>(mut self, mut handler: F) -> Result<()>
    where
        F: FnMut(&Delivery) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
        E: std::fmt::Display,
    {
        while let Some(delivery) = self.next().await {
            match handler(&delivery).await {
                Ok(()) => delivery.ack()?,
                Err(e) => {
                    tracing::warn!(
                        msg_id = delivery.msg_id(),
                        "handler failed, not acking: {e}"
                    );
                    delivery.fail();
                }
            }
        }
        Ok(())
    }

    /// Stops the socket thread, flushing ACKs already queued, and returns
    /// the final counters (which include those last ACKs, unlike a
    /// [`Consumer::stats`] taken just before).
    pub async fn close(self) -> Stats {
        let done = self.shared.done.lock().ok().and_then(|mut d| d.take());
        self.shared.link.shutdown();
        drop(self.deliveries);
        if let Some(done) = done {
            let _ = done.await;
        }
        self.shared.counters.snapshot()
    }
}

/// One message, delivered once. Call [`Delivery::ack`] after handling it;
/// dropping it (or [`Delivery::fail`]) means it was not handled, and no ACK
/// is ever sent for it.
pub struct Delivery {
    message: Envelope,
    signer: Option<String>,
    received: Instant,
    /// What the transport needs back to settle it (and ACK it if asked).
    ticket: Option<Ticket>,
    link: Arc<dyn ConsumerLink>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("msg_id", &self.msg_id())
            .field("topic", &self.topic())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery of `message`, received now, to be settled through `link`.
    pub(crate) fn new(
        message: Envelope,
        signer: Option<String>,
        ticket: Ticket,
        link: Arc<dyn ConsumerLink>,
    ) -> Self {
        Delivery {
            message,
            signer,
            received: Instant::now(),
            ticket: Some(ticket),
            link,
        }
    }

    /// Takes the ticket back from a delivery that could not be handed over.
    pub(crate) fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }

    /// The whole message.
    pub fn message(&self) -> &Envelope {
        &self.message
    }

    /// Its full topic.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// Its payload.
    pub fn msg(&self) -> &Value {
        self.message.msg()
    }

    /// Its id.
    pub fn msg_id(&self) -> &str {
        self.message.msg_id()
    }

    /// The verified signer (`None` when signatures are not validated).
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }

    /// Whether the sender asked for an ACK (and this is not itself an ACK).
    pub fn wants_ack(&self) -> bool {
        self.ticket
            .as_ref()
            .is_some_and(Ticket::sender_asked_for_ack)
    }

    /// When the socket thread received it.
    pub fn received_at(&self) -> Instant {
        self.received
    }

    /// Marks the message handled and, if the sender asked, sends the ACK
    /// (signed by the socket thread, possibly together with others).
    pub fn ack(mut self) -> Result<()> {
        self.settle(true)
    }

    /// Marks the message as not handled: it will never be acked.
    pub fn fail(mut self) {
        let _ = self.settle(false);
    }

    fn settle(&mut self, handled: bool) -> Result<()> {
        let Some(ticket) = self.ticket.take() else {
            return Ok(());
        };
        self.link.settle(Settle {
            msg_id: self.msg_id().to_owned(),
            ticket,
            handled,
            received: self.received,
        })
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let _ = self.settle(false);
    }
}

/// A watcher's queue (see [`ConsumerBuilder::private_queue`]): one
/// server-named, exclusive, auto-delete queue bound to `topics` alone, on
/// each of `exchanges` (none given: the publish exchange).
fn private_amqp_queue(
    amqp_config: &AmqpConfig,
    exchanges: &[String],
    topics: &[String],
    ack_topic: String,
) -> amqp::consumer::Queues {
    let mut declaration = QueueConfig::default();
    declaration.durable = false;
    declaration.exclusive = true;
    declaration.auto_delete = true;
    let keys: Vec<String> = topics.iter().flat_map(|t| amqp::binding_keys(t)).collect();
    let bindings = if exchanges.is_empty() {
        vec![BindingConfig::new(
            String::new(),
            amqp_config.publish_exchange.clone(),
            keys,
        )]
    } else {
        exchanges
            .iter()
            .map(|exchange| BindingConfig::new(String::new(), exchange.clone(), keys.clone()))
            .collect()
    };
    amqp::consumer::Queues {
        queues: vec![(String::new(), declaration)],
        bindings,
        ack_topic,
    }
}

/// The queues an AMQP consumer declares and the bindings it makes: the
/// configuration's `[queues]`, or else its identity's durable queue
/// `<identity>.gilmsg` (a server-named exclusive one for a consumer that
/// sends no ACKs and so has no identity), bound by the `[[bindings]]` that
/// name no queue and, when the caller chose topics or the configuration
/// binds nothing, to the publish exchange for `topics`.
fn amqp_queues(
    amqp_config: &AmqpConfig,
    identity: Option<&str>,
    topics: &[String],
    explicit_topics: bool,
    ack_topic: String,
) -> amqp::consumer::Queues {
    if !amqp_config.queues.is_empty() {
        return amqp::consumer::Queues {
            queues: amqp_config
                .queues
                .iter()
                .map(|(n, q)| (n.clone(), q.clone()))
                .collect(),
            bindings: amqp_config
                .bindings
                .iter()
                .filter(|b| !b.queue.is_empty())
                .cloned()
                .collect(),
            ack_topic,
        };
    }
    let (name, declaration) = match identity {
        Some(id) => (format!("{id}.gilmsg"), QueueConfig::default()),
        None => {
            let mut q = QueueConfig::default();
            q.durable = false;
            q.exclusive = true;
            q.auto_delete = true;
            (String::new(), q)
        }
    };
    let mut bindings: Vec<BindingConfig> = amqp_config
        .bindings
        .iter()
        .filter(|b| b.queue.is_empty())
        .map(|b| {
            let mut b = b.clone();
            b.queue = name.clone();
            b
        })
        .collect();
    if explicit_topics || bindings.is_empty() {
        let keys: Vec<String> = topics.iter().flat_map(|t| amqp::binding_keys(t)).collect();
        bindings.push(BindingConfig::new(
            name.clone(),
            amqp_config.publish_exchange.clone(),
            keys,
        ));
    }
    amqp::consumer::Queues {
        queues: vec![(name, declaration)],
        bindings,
        ack_topic,
    }
}

/// A handler run on the transport's thread (see
/// [`ConsumerBuilder::build_inline`]).
pub(crate) type InlineHandler =
    Box<dyn FnMut(&Envelope, Option<&str>) -> std::result::Result<(), String> + Send>;
