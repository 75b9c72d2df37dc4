//! The bridge's AMQP connections, each owned by one task on a thread of its
//! own (`connect::spawn_task`), reconnecting with back-off after a lost
//! connection (`connect::Supervised`):
//!
//! - **out** (ZeroMQ -> AMQP): takes frames from the SUB thread, applies
//!   the loop rules, writes the AMQP form and publishes it to the ZeroMQ
//!   exchange (or, for an ACK whose message this bridge carried to ZeroMQ,
//!   to the AMQP publisher's own `reply_to` key), with publisher confirms,
//!   at most `in_flight` unconfirmed at once (then it stops reading, and
//!   the bounded backlog in front of it fills);
//! - **in** (AMQP -> ZeroMQ): consumes the durable queue bound to the AMQP
//!   exchange, applies the loop rules, hands each message to the XPUB
//!   thread and `basic.ack`s it only once that thread says it was sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use gilmsg_proto::ack::AckEntry;
use gilmsg_proto::bridge::{check_from_amqp, check_from_zmq, wrap_unsigned, FROM_ZMQ};
use gilmsg_proto::{Envelope, Signer};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection, ExchangeKind};

use super::zmq_side::{Delivered, Outgoing};
use super::{lock, Settings, Shared, BRIDGED_FROM_HEADER};
use crate::amqp::connect::{
    linger, next_delivery, pulse_ticker, sleep_until, spawn_task, Broker, Supervised,
};
use crate::amqp::{decode, encode_envelope, AmqpMessage, ENVELOPE_HEADER};
use crate::error::Result;
use crate::health::{Health, Pulse};
use crate::stats::BridgeCounters;

/// The ZeroMQ -> AMQP task's parts.
pub(crate) struct OutSetup {
    pub(crate) broker: Broker,
    pub(crate) settings: Settings,
    pub(crate) zmq_exchange: String,
    pub(crate) amqp_exchange: String,
    pub(crate) in_flight: usize,
    pub(crate) inbox: tokio::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    pub(crate) shared: Shared,
    pub(crate) counters: Arc<BridgeCounters>,
}

/// The AMQP -> ZeroMQ task's parts.
pub(crate) struct InSetup {
    pub(crate) broker: Broker,
    pub(crate) settings: Settings,
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) binding_keys: Vec<String>,
    /// Signs what it wraps, and its name.
    pub(crate) signer: (Arc<dyn Signer>, String),
    pub(crate) out: std::sync::mpsc::SyncSender<Outgoing>,
    pub(crate) sent: tokio::sync::mpsc::UnboundedReceiver<Delivered>,
    pub(crate) subscribed: tokio::sync::watch::Receiver<u64>,
    pub(crate) await_subscriptions: u64,
    pub(crate) shared: Shared,
    pub(crate) counters: Arc<BridgeCounters>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

type Started = (tokio::sync::oneshot::Receiver<()>, Health);

// ---------------------------------------------------------------- out

/// Starts the ZeroMQ -> AMQP task; returns once connected (and the
/// ZeroMQ exchange declared).
pub(crate) fn start_out(setup: OutSetup) -> Result<Started> {
    spawn_task("gilmsg-bridge-amqp-out", move |started, pulse| async move {
        let mut conn = Supervised::new("zmq_to_amqp", &setup.broker, setup.counters.link.clone());
        let mut task = Out {
            setup,
            generation: 0,
        };
        if conn.first(task.open(), &started).await {
            task.run(conn, &pulse).await;
        }
    })
}

type Confirming =
    std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Result<Confirmation>> + Send>>;

struct Out {
    setup: OutSetup,
    generation: u64,
}

struct OutLive {
    connection: Connection,
    channel: Channel,
}

impl Out {
    async fn open(&mut self) -> Result<OutLive> {
        let broker = &self.setup.broker;
        let connection = broker.connect().await?;
        let channel = broker.channel(&connection).await?;
        declare_topic_exchange(broker, &channel, &self.setup.zmq_exchange).await?;
        self.generation += 1;
        Ok(OutLive {
            connection,
            channel,
        })
    }

    async fn run(mut self, mut conn: Supervised<OutLive>, pulse: &Pulse) {
        let mut confirms: FuturesUnordered<Confirming> = FuturesUnordered::new();
        let mut every = pulse_ticker();
        loop {
            pulse.beat();
            if conn
                .live()
                .is_some_and(|l| !l.connection.status().connected())
            {
                conn.lost("the connection closed");
            }
            pulse.connected(conn.is_live());
            let room = confirms.len() < self.setup.in_flight;
            let retry_at = conn.retry_at();
            tokio::select! {
                _ = every.tick() => {}
                frames = self.setup.inbox.recv(), if room => {
                    let Some(frames) = frames else { break };
                    let mut batch = vec![frames];
                    while batch.len() < 256 {
                        match self.setup.inbox.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    for frames in batch {
                        if let Err(why) = self.forward(&frames, conn.live(), &mut confirms).await {
                            conn.lost(&why);
                        }
                    }
                }
                Some(result) = confirms.next(), if !confirms.is_empty() => {
                    match result {
                        Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                            self.setup.counters.zmq_confirmed.bump();
                        }
                        Ok(Confirmation::Nack(_)) => self.setup.counters.zmq_dropped.bump("nacked"),
                        Err(_) => self.setup.counters.zmq_dropped.bump("unconfirmed"),
                    }
                }
                () = sleep_until(retry_at) => conn.reconnect(self.open(), pulse).await,
            }
        }
        // Let the last confirms come in (bounded), then close.
        let counters = &self.setup.counters;
        linger(&mut confirms, async |_| counters.zmq_confirmed.bump()).await;
        if let Some(l) = conn.into_live() {
            let _ = l.connection.close(200, "bridge stopping".into()).await;
        }
    }

    /// Carries one ZeroMQ message across (or counts why not); `Err` only
    /// when the connection failed.
    async fn forward(
        &mut self,
        frames: &[Vec<u8>],
        live: Option<&OutLive>,
        confirms: &mut FuturesUnordered<Confirming>,
    ) -> std::result::Result<(), String> {
        let counters = &self.setup.counters;
        let envelope = match Envelope::decode(frames, self.setup.settings.max_message) {
            Ok(e) => e,
            Err(e) => {
                counters.zmq_refused.bump(e.kind());
                tracing::debug!("zmq_to_amqp: refused a malformed message: {e}");
                return Ok(());
            }
        };
        // The AMQP form is built from the canonical text: a body that has
        // none could not be verified on the other side either.
        if let Err(e) = envelope.signed_part() {
            counters.zmq_refused.bump("not_canonical");
            tracing::debug!(msg_id = envelope.msg_id(), "zmq_to_amqp: refused: {e}");
            return Ok(());
        }
        let now = Instant::now();
        {
            let mut memories = lock(&self.setup.shared);
            if let Err(refusal) = check_from_zmq(&envelope, &mut memories.sent_to_zmq, now) {
                drop(memories);
                counters.zmq_refused.bump(refusal.kind());
                tracing::debug!(
                    msg_id = envelope.msg_id(),
                    reason = refusal.kind(),
                    "zmq_to_amqp: refused (loop guard)"
                );
                return Ok(());
            }
        }
        let Some(live) = live else {
            counters.zmq_dropped.bump("no_broker");
            return Ok(());
        };
        let routes = {
            let mut memories = lock(&self.setup.shared);
            memories.sent_to_amqp.remember(envelope.msg_id(), now);
            ack_routes(
                &envelope,
                &self.setup.settings.ack_topic,
                &mut memories,
                now,
            )
        };
        let wire = encode_envelope(&envelope, Some((BRIDGED_FROM_HEADER, FROM_ZMQ)));
        let targets: Vec<(&str, &str)> = if routes.is_empty() {
            vec![(self.setup.zmq_exchange.as_str(), wire.routing_key.as_str())]
        } else {
            counters.zmq_acks_routed.add(routes.len() as u64);
            routes
                .iter()
                .map(|r| (self.setup.amqp_exchange.as_str(), r.as_str()))
                .collect()
        };
        for (exchange, key) in targets {
            let confirm = live
                .channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &wire.body,
                    wire.properties.clone(),
                )
                .await
                .map_err(|e| {
                    counters.zmq_dropped.bump("no_broker");
                    e.to_string()
                })?;
            confirms.push(Box::pin(confirm));
        }
        Ok(())
    }
}

/// The `reply_to` keys of the AMQP publishers an ACK answers, when this
/// bridge carried their messages to ZeroMQ (empty: not an ACK, or none
/// known: it goes to the ZeroMQ exchange like any message).
fn ack_routes(
    envelope: &Envelope,
    ack_topic: &str,
    memories: &mut super::Memories,
    now: Instant,
) -> Vec<String> {
    if envelope.topic() != ack_topic {
        return Vec::new();
    }
    let Ok(entries) = AckEntry::all_from_msg(envelope.msg()) else {
        return Vec::new();
    };
    let mut routes: Vec<String> = Vec::new();
    for entry in entries {
        if let Some(route) = memories.reply_routes.route(&entry.ack_msg_id, now) {
            if !routes.iter().any(|r| r == route) {
                routes.push(route.to_owned());
            }
        }
    }
    routes
}

async fn declare_topic_exchange(broker: &Broker, channel: &Channel, name: &str) -> Result<()> {
    let options = ExchangeDeclareOptions {
        passive: broker.config.passive_declares || name.starts_with("amq."),
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker.failed(&format!("exchange {name:?}: cannot declare"), e))
}

// ---------------------------------------------------------------- in

/// Starts the AMQP -> ZeroMQ task; returns once its queue is declared and
/// bound (it consumes once the XPUB has seen its subscribers).
pub(crate) fn start_in(setup: InSetup) -> Result<Started> {
    spawn_task("gilmsg-bridge-amqp-in", move |started, pulse| async move {
        let mut conn = Supervised::new("amqp_to_zmq", &setup.broker, setup.counters.link.clone());
        let mut task = In {
            setup,
            generation: 0,
            sequence: 0,
        };
        if conn.first(task.open(false), &started).await {
            task.run(conn, &pulse).await;
        }
    })
}

struct In {
    setup: InSetup,
    generation: u64,
    /// `i` of the envelopes it wraps.
    sequence: u64,
}

struct InLive {
    connection: Connection,
    channel: Channel,
    deliveries: Option<lapin::Consumer>,
}

impl In {
    /// Connects, declares the queue and binds it; consumes too when
    /// `consume`.
    async fn open(&mut self, consume: bool) -> Result<InLive> {
        let broker = &self.setup.broker;
        let connection = broker.connect().await?;
        let channel = broker.channel(&connection).await?;
        channel
            .basic_qos(
                broker.config.prefetch_count.max(1),
                BasicQosOptions::default(),
            )
            .await
            .map_err(|e| broker.failed("qos.prefetch_count: cannot set", e))?;
        let passive = broker.config.passive_declares;
        channel
            .queue_declare(
                self.setup.queue.as_str().into(),
                QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                broker.failed(&format!("queue {:?}: cannot declare", self.setup.queue), e)
            })?;
        for key in &self.setup.binding_keys {
            channel
                .queue_bind(
                    self.setup.queue.as_str().into(),
                    self.setup.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    broker.failed(
                        &format!(
                            "cannot bind {:?} to {:?} with {key:?}",
                            self.setup.queue, self.setup.exchange
                        ),
                        e,
                    )
                })?;
        }
        self.generation += 1;
        let mut live = InLive {
            connection,
            channel,
            deliveries: None,
        };
        if consume {
            self.consume(&mut live).await?;
        }
        Ok(live)
    }

    async fn consume(&self, live: &mut InLive) -> Result<()> {
        let consumer = live
            .channel
            .basic_consume(
                self.setup.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                self.setup
                    .broker
                    .failed(&format!("cannot consume {:?}", self.setup.queue), e)
            })?;
        live.deliveries = Some(consumer);
        Ok(())
    }

    async fn run(mut self, mut conn: Supervised<InLive>, pulse: &Pulse) {
        let mut every = pulse_ticker();
        let wake = self.setup.wake.clone();
        loop {
            pulse.beat();
            if self.setup.stop.load(Ordering::Acquire) {
                break;
            }
            if conn
                .live()
                .is_some_and(|l| !l.connection.status().connected())
            {
                conn.lost("the connection closed");
            }
            pulse.connected(conn.is_live());
            // Consume once the ZeroMQ side has its subscribers: what is sent
            // before reaches nobody, and the queue keeps it meanwhile.
            if let Some(l) = conn.live_mut() {
                if l.deliveries.is_none()
                    && *self.setup.subscribed.borrow() >= self.setup.await_subscriptions
                {
                    if let Err(e) = self.consume(l).await {
                        conn.lost(&e.to_string());
                    }
                }
            }
            let retry_at = conn.retry_at();
            tokio::select! {
                _ = every.tick() => {}
                () = wake.notified() => {}
                _ = self.setup.subscribed.changed() => {}
                delivery = next_delivery(
                    conn.live_mut().and_then(|l| l.deliveries.as_mut()),
                    "the consumer was cancelled",
                ) => match delivery {
                    Ok(d) => {
                        if let Err(why) = self.carry(d, conn.live()).await {
                            conn.lost(&why);
                        }
                    }
                    Err(why) => conn.lost(&why),
                },
                Some(done) = self.setup.sent.recv() => {
                    if let Some(l) = conn.live() {
                        // A delivery of a lost connection is redelivered by
                        // the broker; its tag means nothing on this one.
                        if done.generation == self.generation {
                            if let Err(e) = l.channel.basic_ack(done.tag, BasicAckOptions::default()).await {
                                conn.lost(&e.to_string());
                            }
                        }
                    }
                }
                () = sleep_until(retry_at) => conn.reconnect(self.open(false), pulse).await,
            }
        }
        if let Some(l) = conn.into_live() {
            // Deliveries not yet acknowledged go back to the queue.
            let _ = l.connection.close(200, "bridge stopping".into()).await;
        }
    }

    /// Carries one delivery to the XPUB thread, or refuses it; `Err` only
    /// when the connection failed.
    async fn carry(
        &mut self,
        delivery: lapin::message::Delivery,
        live: Option<&InLive>,
    ) -> std::result::Result<(), String> {
        let Some(live) = live else { return Ok(()) };
        let counters = self.setup.counters.clone();
        counters.amqp_received.bump();
        let tag = delivery.delivery_tag;
        let routing_key = delivery.routing_key.to_string();
        let has_header = |name: &str| {
            delivery
                .properties
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(name))
        };
        let bridged = has_header(BRIDGED_FROM_HEADER);
        let has_envelope = has_header(ENVELOPE_HEADER);
        let ack_topic = &self.setup.settings.ack_topic;
        // An ACK routed to one AMQP publisher (`<ack topic>.<id>`): nobody
        // on ZeroMQ waits for it.
        if routing_key
            .strip_prefix(ack_topic.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
        {
            counters.amqp_skipped.bump("ack_for_amqp_publisher");
            return settle(&live.channel, tag, Settle::Done).await;
        }
        let wire =
            AmqpMessage::received(routing_key, delivery.data, delivery.properties, ack_topic);
        let now = Instant::now();
        let checked = {
            let mut memories = lock(&self.setup.shared);
            check_from_amqp(wire.message_id(), bridged, &mut memories.sent_to_amqp, now)
        };
        if let Err(refusal) = checked {
            counters.amqp_refused.bump(refusal.kind());
            tracing::debug!(
                msg_id = wire.message_id(),
                reason = refusal.kind(),
                "amqp_to_zmq: refused (loop guard)"
            );
            return settle(&live.channel, tag, Settle::Refuse).await;
        }
        let envelope = match decode(&wire, self.setup.settings.max_message) {
            Ok(e) => e,
            Err(e) => {
                counters.amqp_refused.bump(e.kind());
                tracing::debug!("amqp_to_zmq: refused a malformed message: {e}");
                return settle(&live.channel, tag, Settle::Refuse).await;
            }
        };
        // With the gilmsg envelope: the same envelope, signature and all.
        // Without (fedora-messaging's own): wrapped and signed as the bridge.
        let envelope = if has_envelope {
            envelope
        } else {
            self.sequence += 1;
            let (signer, name) = &self.setup.signer;
            let wrapped = wrap_unsigned(&envelope, self.sequence, unix_now(), name)
                .map_err(|e| e.to_string())
                .and_then(|mut w| {
                    w.sign(signer.as_ref())
                        .map(|()| w)
                        .map_err(|e| e.to_string())
                });
            match wrapped {
                Ok(w) => {
                    counters.amqp_wrapped.bump();
                    w
                }
                Err(e) => {
                    counters.amqp_refused.bump("cannot_wrap");
                    tracing::debug!("amqp_to_zmq: cannot wrap and sign: {e}");
                    return settle(&live.channel, tag, Settle::Refuse).await;
                }
            }
        };
        let frames = match envelope.encode() {
            Ok(f) => f,
            Err(e) => {
                counters.amqp_refused.bump(e.kind());
                tracing::debug!("amqp_to_zmq: no canonical form: {e}");
                return settle(&live.channel, tag, Settle::Refuse).await;
            }
        };
        {
            let mut memories = lock(&self.setup.shared);
            memories.sent_to_zmq.remember(envelope.msg_id(), now);
            if let (Some(reply_to), true) = (wire.reply_to(), envelope.wants_ack()) {
                memories
                    .reply_routes
                    .remember(envelope.msg_id(), reply_to, now);
            }
        }
        let out = Outgoing {
            frames,
            delivery: Delivered {
                generation: self.generation,
                tag,
            },
        };
        match self.setup.out.try_send(out) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                // Never while the channel holds prefetch_count: a safe
                // answer all the same.
                counters.amqp_requeued.bump("backlog");
                settle(&live.channel, tag, Settle::Requeue).await
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                counters.amqp_requeued.bump("socket_gone");
                settle(&live.channel, tag, Settle::Requeue).await
            }
        }
    }
}

enum Settle {
    /// Taken (skipped on purpose).
    Done,
    /// Refused: not requeued (dead-lettered if the queue says so).
    Refuse,
    /// Given back.
    Requeue,
}

async fn settle(channel: &Channel, tag: u64, how: Settle) -> std::result::Result<(), String> {
    let result = match how {
        Settle::Done => channel.basic_ack(tag, BasicAckOptions::default()).await,
        Settle::Refuse => {
            channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .await
        }
        Settle::Requeue => {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
        }
    };
    result.map_err(|e| e.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
