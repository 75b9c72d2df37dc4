//! The ACK-sending consumer: subscribe, validate, dedupe, deliver, then ACK.
//!
//! A socket thread owns the SUB that receives messages and the XPUB that
//! sends ACKs. It drops (and counts) anything malformed, unsigned where
//! signatures are required, badly signed or refused by the routing policy;
//! it hands each new `msg_id` to the application exactly once as a
//! [`Delivery`]; and it sends the signed ACK only when the application says
//! the message was handled ([`Delivery::ack`]). A delivery that is dropped or
//! failed is never acked, so the producer's timeout tells the truth. (Python
//! gilmsg acks before the handler runs.)
//!
//! Re-sends of a handled message are re-acked without reaching the handler
//! again, and only if their body is the one that was handled.
//!
//! ACKs are signed on the socket thread, after each burst of work: when
//! several messages were handled since the last burst, one signed ACK covers
//! them all (see `gilmsg_proto::ack`), which is what keeps a busy consumer's
//! signing cost per message low. Only messages from gilmsg-rs publishers are
//! batched; a Python gilmsg publisher reads a single `ack_msg_id`, so its
//! messages are acked one by one. Messages that
//! do not ask for an ACK (no `gilmsg_version`), and ACKs themselves, are
//! delivered but never acked.
//!
//! Every one of those decisions is made by
//! [`ConsumerState`](gilmsg_proto::consumer::ConsumerState) in
//! `gilmsg-proto`, which holds no socket and no clock; this file is the
//! ZeroMQ adapter around it: it receives frames, passes them in with the
//! time, counts and logs the outcome, hands deliveries over, and signs and
//! sends the ACK batches the state machine yields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_config::Config;
use gilmsg_proto::ack::AckBody;
use gilmsg_proto::consumer::{
    Accepted, ConsumerSettings, ConsumerState, Outcome, PendingAck, Ticket, ACK_BURST,
};
use gilmsg_proto::dedupe::{ReackPolicy, Retention};
use gilmsg_proto::{Draft, Envelope, Signer, TopicScheme, Validated, Validator};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::monitor::{Monitor, Subscriptions};
use crate::setup;
use crate::stats::{Counters, Stats};
use crate::wire::{self, Inbox, Mailbox, SocketTuning};

/// How long a consumer waits for endpoints that give no verdict (a host
/// that drops packets gives none for minutes) before calling itself ready
/// without them. Endpoints that refuse the connection are settled at once.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

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
            queue,
        } = self;
        config.validate()?;
        let scheme = TopicScheme::new(&config.topic_prefix, &config.environment);
        if topics.is_empty() {
            topics.push(format!("{}.", scheme.prefix()));
        }
        let active = active.unwrap_or(config.active || config.own_endpoints().is_none());
        let trust = if config.validate_signatures || send_acks {
            setup::load_trust(&config, config.validate_signatures)?
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
        let acker = signer.map(|signer| {
            Arc::new(Acker {
                signer,
                ack_topic: scheme.ack_topic(),
                sequence: AtomicU64::new(0),
                username: setup::username(),
            })
        });
        let counters = Counters::default();
        let (deliveries_tx, deliveries) = mpsc::channel(queue);
        let (mailbox, inbox) = wire::mailbox()?;
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
        let setup = ActorSetup {
            tuning: SocketTuning::from_config(&config),
            endpoints,
            topics,
            ack_bind,
            ack_connect,
            settings,
            validator,
            acker: acker.clone(),
            counters: counters.clone(),
            readiness: readiness_tx,
            inline,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let deliver_mailbox = mailbox.clone();
        std::thread::Builder::new()
            .name("gilmsg-consumer".into())
            .spawn(move || {
                match Actor::new(setup, inbox, deliveries_tx, deliver_mailbox) {
                    Ok((actor, bound)) => {
                        let _ = ready_tx.send(Ok(bound));
                        actor.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::os("cannot start consumer thread", e))?;
        let bound = ready_rx.recv().map_err(|_| Error::Closed)??;
        Ok(Consumer {
            deliveries,
            readiness,
            shared: Arc::new(Shared {
                mailbox,
                counters,
                done: std::sync::Mutex::new(Some(done_rx)),
            }),
            bound,
            signer_name: acker.as_ref().map(|a| a.signer.name().to_owned()),
        })
    }
}

/// Signs ACKs for the socket thread.
struct Acker {
    signer: Arc<dyn Signer>,
    ack_topic: String,
    sequence: AtomicU64,
    username: String,
}

impl Acker {
    /// One signed ACK for every entry of `batch` (at most `MAX_ACK_BATCH`).
    fn frames(&self, batch: &[PendingAck]) -> Result<[Vec<u8>; 2]> {
        let (timestamp, year) = setup::now_secs_and_year();
        let bodies: Vec<AckBody> = batch
            .iter()
            .map(|p| AckBody {
                ack_msg_id: p.msg_id.clone(),
                ack_digest: Some(p.digest.to_string()),
                ack_signer: p.signer.clone(),
            })
            .collect();
        let Some((first, rest)) = bodies.split_first() else {
            return Err(Error::InvalidArgument("empty ACK batch".into()));
        };
        let draft = Draft {
            topic: self.ack_topic.clone(),
            msg: AckBody::batch_to_msg(first, rest),
            msg_id: gilmsg_proto::envelope::new_msg_id(year),
            i: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp,
            username: self.username.clone(),
            wants_ack: false,
        };
        let envelope = draft.build(Some(self.signer.as_ref()))?;
        Ok(envelope
            .encode()
            .map_err(gilmsg_proto::envelope::BuildError::from)?)
    }
}

struct Shared {
    mailbox: Mailbox<Command>,
    counters: Counters,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.mailbox.send(Command::Shutdown);
    }
}

enum Command {
    /// The application's verdict on a delivery.
    Settle {
        msg_id: String,
        ticket: Ticket,
        handled: bool,
    },
    Shutdown,
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
        let _ = self.shared.mailbox.send(Command::Shutdown);
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
    /// What the socket thread needs back to settle it (and ACK it if asked).
    ticket: Option<Ticket>,
    mailbox: Mailbox<Command>,
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
        self.mailbox.send(Command::Settle {
            msg_id: self.msg_id().to_owned(),
            ticket,
            handled,
        })
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let _ = self.settle(false);
    }
}

/// A handler run on the socket thread (see [`ConsumerBuilder::build_inline`]).
type InlineHandler =
    Box<dyn FnMut(&Envelope, Option<&str>) -> std::result::Result<(), String> + Send>;

struct ActorSetup {
    tuning: SocketTuning,
    endpoints: Vec<String>,
    topics: Vec<String>,
    ack_bind: Vec<String>,
    ack_connect: Vec<String>,
    settings: ConsumerSettings,
    validator: Option<Arc<Validator>>,
    acker: Option<Arc<Acker>>,
    counters: Counters,
    readiness: watch::Sender<Readiness>,
    inline: Option<InlineHandler>,
}

struct Actor {
    _context: zmq::Context,
    sub: zmq::Socket,
    ackout: Option<zmq::Socket>,
    /// Where ACKs go, for an ACK socket that connects (to `relay_inbound`)
    /// or binds (`endpoints[name]`).
    ack_monitor: Option<Monitor>,
    ack_path_needs_subscriber: bool,
    monitor: Monitor,
    subscriptions: Subscriptions,
    inbox: Inbox<Command>,
    deliveries: mpsc::Sender<Delivery>,
    mailbox: Mailbox<Command>,
    /// Every protocol decision (see `gilmsg_proto::consumer`).
    state: ConsumerState,
    validator: Option<Arc<Validator>>,
    acker: Option<Arc<Acker>>,
    inline: Option<InlineHandler>,
    counters: Counters,
    readiness: watch::Sender<Readiness>,
}

impl Actor {
    fn new(
        setup: ActorSetup,
        inbox: Inbox<Command>,
        deliveries: mpsc::Sender<Delivery>,
        mailbox: Mailbox<Command>,
    ) -> Result<(Self, Vec<String>)> {
        let context = zmq::Context::new();
        let tuning = &setup.tuning;
        let (ackout, ack_monitor, bound) =
            if setup.ack_bind.is_empty() && setup.ack_connect.is_empty() {
                (None, None, Vec::new())
            } else {
                let socket = tuning.publisher(&context, "ACK publisher")?;
                let mut monitor = Monitor::attach(
                    &context,
                    &socket,
                    "ACK publisher",
                    tuning,
                    CONNECT_GRACE,
                    setup.counters.clone(),
                )?;
                let bound = monitor.bind(&socket, &setup.ack_bind)?;
                monitor.connect(&socket, &setup.ack_connect)?;
                (Some(socket), Some(monitor), bound)
            };
        let sub = tuning.subscriber(&context, "subscriber")?;
        for topic in &setup.topics {
            sub.set_subscribe(topic.as_bytes())
                .map_err(|e| Error::socket(format!("subscribe to {topic:?}"), e))?;
        }
        let mut monitor = Monitor::attach(
            &context,
            &sub,
            "subscriber",
            tuning,
            CONNECT_GRACE,
            setup.counters.clone(),
        )?;
        monitor.connect(&sub, &setup.endpoints)?;
        let actor = Actor {
            _context: context,
            sub,
            ack_path_needs_subscriber: !setup.ack_connect.is_empty(),
            ackout,
            ack_monitor,
            monitor,
            subscriptions: Subscriptions::new(tuning),
            inbox,
            deliveries,
            mailbox,
            state: ConsumerState::new(setup.settings, Instant::now()),
            validator: setup.validator,
            acker: setup.acker,
            inline: setup.inline,
            counters: setup.counters,
            readiness: setup.readiness,
        };
        actor.publish_readiness(Instant::now());
        Ok((actor, bound))
    }

    /// Recomputes the readiness (cheap; watchers are woken only on change)
    /// and logs the moment the consumer becomes ready, with what is down.
    fn publish_readiness(&self, now: Instant) {
        let ack_path = !self.ack_path_needs_subscriber || self.subscriptions.any();
        let mut down = self.monitor.missing();
        let mut settled = self.monitor.settled(now);
        if let Some(ack_monitor) = &self.ack_monitor {
            if !ack_path {
                down.extend(ack_monitor.missing());
                settled &= ack_monitor.settled(now);
            }
        }
        let readiness = Readiness {
            connected: self.monitor.connected(),
            expected: self.monitor.expected(),
            ack_path,
            down,
            settled,
        };
        self.readiness.send_if_modified(|r| {
            if *r == readiness {
                return false;
            }
            if readiness.is_ready() && !r.is_ready() {
                if readiness.down.is_empty() {
                    tracing::info!(
                        connected = readiness.connected,
                        expected = readiness.expected,
                        "consumer ready: every endpoint connected"
                    );
                } else {
                    tracing::warn!(
                        connected = readiness.connected,
                        expected = readiness.expected,
                        ack_path = readiness.ack_path,
                        down = ?readiness.down,
                        "consumer ready without some endpoints; libzmq keeps retrying them"
                    );
                }
            } else if !readiness.is_ready() {
                tracing::debug!(
                    connected = readiness.connected,
                    expected = readiness.expected,
                    ack_path = readiness.ack_path,
                    waiting_for = ?readiness.down,
                    "consumer waiting for endpoints"
                );
            }
            *r = readiness;
            true
        });
    }

    /// When the monitors next need the thread (re-connects, grace end).
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let ack = self.ack_monitor.as_ref().and_then(|m| m.next_deadline(now));
        [self.monitor.next_deadline(now), ack]
            .into_iter()
            .flatten()
            .min()
    }

    fn run(mut self) {
        let mut commands = Vec::new();
        loop {
            let inbox_fd = self.inbox.fd();
            let now = Instant::now();
            let timeout = wire::poll_timeout(self.next_deadline(now), now);
            let mut items = vec![
                zmq::PollItem::from_fd(inbox_fd, zmq::POLLIN),
                self.sub.as_poll_item(zmq::POLLIN),
                self.monitor.socket().as_poll_item(zmq::POLLIN),
            ];
            if let (Some(ackout), Some(ack_monitor)) = (&self.ackout, &self.ack_monitor) {
                items.push(ackout.as_poll_item(zmq::POLLIN));
                items.push(ack_monitor.socket().as_poll_item(zmq::POLLIN));
            }
            if let Err(e) = zmq::poll(&mut items, timeout) {
                tracing::error!("consumer poll failed: {e}");
                break;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            drop(items);
            if ready[0] {
                let alive = self.inbox.drain(&mut commands).is_ok();
                let mut shutdown = !alive;
                for command in commands.drain(..) {
                    match command {
                        Command::Settle {
                            msg_id,
                            ticket,
                            handled,
                        } => self.settle(&msg_id, ticket, handled),
                        Command::Shutdown => shutdown = true,
                    }
                }
                if shutdown {
                    break;
                }
            }
            let now = Instant::now();
            let mut readiness_changed = false;
            if ready[2] {
                readiness_changed |= self.monitor.process(now);
            }
            if ready.get(4).copied().unwrap_or(false) {
                if let Some(ack_monitor) = &mut self.ack_monitor {
                    readiness_changed |= ack_monitor.process(now);
                }
            }
            if ready.get(3).copied().unwrap_or(false) {
                if let (Some(ackout), Some(ack_monitor)) = (&self.ackout, &mut self.ack_monitor) {
                    let drained = self.subscriptions.drain_from(ackout, &self.counters);
                    readiness_changed |= drained.changed;
                    ack_monitor.enforce(ackout, drained, now);
                }
            }
            self.monitor.tick(&self.sub, now);
            if let (Some(ackout), Some(ack_monitor)) = (&self.ackout, &mut self.ack_monitor) {
                ack_monitor.tick(ackout, now);
            }
            // Also every pass while not ready: the grace period ends by the
            // clock, not by an event.
            if readiness_changed || !self.readiness.borrow().is_ready() {
                self.publish_readiness(now);
            }
            if ready[1] {
                // A bounded burst, then the ACKs for it go out (ACK_BURST).
                for _ in 0..ACK_BURST {
                    // Three frames kept: enough for on_message to count a
                    // message with too many, without copying the rest.
                    match wire::try_recv_bounded(&self.sub, 3) {
                        Ok(Some(frames)) => self.on_message(frames),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("receive failed: {e}");
                            break;
                        }
                    }
                }
            }
            self.flush_acks();
        }
        self.flush_acks();
    }

    /// Signs and sends the ACKs the state machine gathered during this
    /// burst, one signed message per batch it yields.
    fn flush_acks(&mut self) {
        if !self.state.has_pending_acks() {
            return;
        }
        let batches = self.state.take_ack_batches();
        self.publish_memory_counters();
        let Some(acker) = self.acker.clone() else {
            return;
        };
        for batch in batches {
            match acker.frames(&batch) {
                Ok(frames) => {
                    self.send_ack(&frames);
                    self.counters.add("ack", "entries", batch.len() as u64);
                }
                Err(e) => {
                    self.counters.bump("ack", "sign_failed");
                    tracing::warn!("cannot sign ACK: {e}");
                }
            }
        }
    }

    /// Exposed so soak tests and operators can see the bounds hold.
    fn publish_memory_counters(&self) {
        let cache = self.state.cache();
        self.counters.set("dedupe", "entries", cache.len() as u64);
        self.counters.set("dedupe", "evicted", cache.evicted());
        self.counters.set("dedupe", "expired", cache.expired());
    }

    fn settle(&mut self, msg_id: &str, ticket: Ticket, handled: bool) {
        if handled {
            self.counters.bump("handler", "ok");
            tracing::debug!(msg_id, "handled");
        } else {
            self.counters.bump("handler", "failed");
            tracing::debug!(msg_id, "not handled: never acked");
        }
        self.state.settle(ticket, handled, Instant::now());
        self.publish_memory_counters();
    }

    fn send_ack(&self, frames: &[Vec<u8>; 2]) {
        let Some(ackout) = &self.ackout else { return };
        match wire::send_frames(ackout, frames) {
            Ok(()) => self.counters.bump("ack", "sent"),
            Err(e) => {
                self.counters.bump("ack", "send_failed");
                tracing::warn!("ACK send failed: {e}");
            }
        }
    }

    /// One received message: the state machine decides, this counts, logs
    /// and hands over.
    fn on_message(&mut self, frames: Vec<Vec<u8>>) {
        self.counters.bump("message", "received");
        let room = self.inline.is_some() || self.deliveries.capacity() > 0;
        let validator = self.validator.as_deref();
        let verify = |message: &Envelope, signed: &str| match validator {
            Some(v) => v.validate_signed(message, signed),
            None => Ok(Validated {
                signer: None,
                unsigned_gilmsg_version: false,
            }),
        };
        let outcome =
            self.state
                .on_frames(&frames, Instant::now(), setup::unix_now(), room, verify);
        match outcome {
            Outcome::Skipped => self.counters.bump("message", "ack_skipped"),
            Outcome::Duplicate { kind, msg_id } => {
                self.counters.bump("duplicate", kind.kind());
                tracing::trace!(msg_id = ?msg_id, kind = kind.kind(), "duplicate");
            }
            Outcome::Refused {
                refusal,
                msg_id,
                signer,
            } => {
                let (group, kind) = refusal.counter();
                self.counters.bump(group, kind);
                // Unverified text is logged with `?` (escaped), never raw.
                tracing::debug!(
                    reason = %format_args!("{group}.{kind}"),
                    msg_id = ?msg_id,
                    signer = ?signer,
                    "refused message: {refusal}"
                );
            }
            Outcome::Deliver(accepted) => self.deliver(*accepted),
        }
    }

    fn deliver(&mut self, accepted: Accepted) {
        let Accepted {
            message,
            signer,
            ticket,
            legacy_unsigned_gilmsg_version,
        } = accepted;
        if legacy_unsigned_gilmsg_version {
            self.counters
                .bump("message", "legacy_unsigned_gilmsg_version");
        }
        tracing::debug!(
            msg_id = message.msg_id(),
            topic = message.topic(),
            signer = signer.as_deref().unwrap_or("-"),
            "delivering"
        );
        if let Some(handler) = &mut self.inline {
            self.counters.bump("message", "delivered");
            let verdict = handler(&message, signer.as_deref());
            if let Err(why) = &verdict {
                tracing::warn!(
                    msg_id = message.msg_id(),
                    "handler failed, not acking: {why}"
                );
            }
            return self.settle(message.msg_id(), ticket, verdict.is_ok());
        }
        let delivery = Delivery {
            message,
            signer,
            received: Instant::now(),
            ticket: Some(ticket),
            mailbox: self.mailbox.clone(),
        };
        let (mut undelivered, kind) = match self.deliveries.try_send(delivery) {
            Ok(()) => return self.counters.bump("message", "delivered"),
            // Only if the room checked above was taken meanwhile, which it
            // cannot be: this thread is the only sender.
            Err(mpsc::error::TrySendError::Full(d)) => (d, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(d)) => (d, "consumer_closed"),
        };
        // Not handled, so not remembered: a re-send gets another chance.
        if let Some(ticket) = undelivered.ticket.take() {
            self.state.abandon(&ticket);
        }
        self.counters.bump("dropped", kind);
        tracing::debug!(msg_id = undelivered.msg_id(), reason = kind, "dropped");
    }
}
