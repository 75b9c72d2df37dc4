//! The AMQP consumer: one tokio task on a thread of its own, owning the
//! connection, driving the same [`ConsumerDriver`] as ZeroMQ's socket
//! thread.
//!
//! It consumes a durable queue per identity (`<certname>.gilmsg`, bound
//! by the configuration's `[[bindings]]` and the consumer's topics), or the
//! `[queues]` the configuration lists, with `prefetch_count` bounding the
//! deliveries it holds. What the broker is told about each delivery
//! follows the rules' [`Disposition`]:
//!
//! - handled and an ACK wanted: the signed ACK is published (to each
//!   `reply_to` of the messages it acknowledges, else on the ACK topic) and
//!   **confirmed by the broker before** the delivery gets its `basic.ack`;
//!   if the ACK is not confirmed, the delivery is requeued, and its
//!   redelivery is re-acked without reaching the handler again;
//! - handler failed: `basic.nack` with requeue, at most
//!   `max_redeliveries` times ([`gilmsg_proto::redelivery`]), then without
//!   (dead-lettered if the queue has a dead-letter exchange, else dropped),
//!   counted `handler.gave_up`; never acked;
//! - refused (malformed, badly signed, too old...): `basic.nack` without
//!   requeue, counted by reason; no room: requeued;
//! - duplicates settle with the copy they duplicate.
//!
//! A lost connection (broker restart, network) is retried with back-off;
//! the queues, bindings and consumers are declared again, and the broker
//! redelivers what was not acked: the consumer's memory makes those
//! redeliveries re-acks, not second deliveries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, SelectAll};
use futures_util::StreamExt;
use gilmsg_config::{BindingConfig, QueueConfig};
use gilmsg_proto::consumer::{PendingAck, ACK_BURST};
use gilmsg_proto::dedupe::CopyKey;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};

use super::connect::{
    field_table, linger, next_delivery, pulse_ticker, sleep_until, take_burst, Broker, Supervised,
};
use super::{Amqp, AmqpMessage};
use crate::consumer::Readiness;
use crate::error::{Error, Result};
use crate::health::{Health, Pulse};
use crate::transport::consumer::Disposition;
use crate::transport::{
    ConsumerCommand, ConsumerDriver, ConsumerLink, ConsumerParts, Flow, Settle,
};

/// The queues a consumer declares, binds and consumes.
pub(crate) struct Queues {
    /// Name (empty: server-named, exclusive) and declaration.
    pub(crate) queues: Vec<(String, QueueConfig)>,
    /// Bindings, each naming one of `queues`.
    pub(crate) bindings: Vec<BindingConfig>,
    pub(crate) ack_topic: String,
}

/// A started consumer task.
pub(crate) struct Running {
    pub(crate) link: Arc<dyn ConsumerLink>,
    pub(crate) done: oneshot::Receiver<()>,
    /// Whether the task's loop turns.
    pub(crate) health: Health,
}

struct Link(mpsc::UnboundedSender<ConsumerCommand>);

impl ConsumerLink for Link {
    fn settle(&self, settle: Settle) -> Result<()> {
        self.0
            .send(ConsumerCommand::Settle(settle))
            .map_err(|_| Error::Closed)
    }

    fn shutdown(&self) {
        let _ = self.0.send(ConsumerCommand::Shutdown);
    }
}

/// Starts the task; returns once the queues are declared and consumed (or
/// with why they could not be).
pub(crate) fn start(broker: Broker, queues: Queues, parts: ConsumerParts) -> Result<Running> {
    let (commands, inbox) = mpsc::unbounded_channel();
    let link: Arc<dyn ConsumerLink> = Arc::new(Link(commands));
    let driver = ConsumerDriver::<Amqp>::new(parts, link.clone());
    let task = Task {
        broker,
        queues,
        driver,
        held: HashMap::new(),
        generation: 0,
    };
    let (done, health) =
        super::connect::spawn_task("gilmsg-amqp-consumer", move |started, pulse| async move {
            task.run(inbox, started, &pulse).await
        })?;
    Ok(Running { link, done, health })
}

/// The deliveries waiting for one copy's verdict or its ACK's confirm.
#[derive(Default)]
struct Held {
    /// `(connection generation, delivery tag)`.
    tags: Vec<(u64, u64)>,
    /// Where the ACK goes: the messages' `reply_to`.
    reply_to: BTreeSet<String>,
    broker_deliveries: Option<u32>,
}

struct Live {
    connection: Connection,
    channel: Channel,
    deliveries: SelectAll<lapin::Consumer>,
}

/// An ACK being confirmed: the copies it settles once every routed copy
/// of it is confirmed.
type Confirming =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Vec<CopyKey>, u64, bool)> + Send>>;

struct Task {
    broker: Broker,
    queues: Queues,
    driver: ConsumerDriver<Amqp>,
    held: HashMap<CopyKey, Held>,
    generation: u64,
}

impl Task {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<ConsumerCommand>,
        started: std::sync::mpsc::Sender<Result<()>>,
        pulse: &Pulse,
    ) {
        let mut conn = Supervised::new("consumer", &self.broker, self.driver.link_counters());
        if !conn.first(self.open(), &started).await {
            return;
        }
        let mut confirms: FuturesUnordered<Confirming> = FuturesUnordered::new();
        let mut pulse_every = pulse_ticker();
        loop {
            pulse.beat();
            pulse.connected(conn.is_live());
            let retry_at = conn.retry_at();
            tokio::select! {
                _ = pulse_every.tick() => {}
                command = inbox.recv() => {
                    let Some(command) = command else { break };
                    let handle = async |command| self.command(command, conn.live()).await;
                    if take_burst(command, &mut inbox, handle).await == Flow::Stop {
                        break;
                    }
                }
                delivery = next_delivery(
                    conn.live_mut().map(|l| &mut l.deliveries),
                    "the broker cancelled the consumer",
                ) => match delivery {
                    Ok(d) => {
                        self.delivered(d, conn.live()).await;
                        // The rest of the burst, then its ACKs.
                        for _ in 1..ACK_BURST {
                            let Some(l) = conn.live_mut() else { break };
                            match futures_util::FutureExt::now_or_never(l.deliveries.next()) {
                                Some(Some(Ok(d))) => self.delivered(d, conn.live()).await,
                                _ => break,
                            }
                        }
                    }
                    Err(why) => conn.lost(&why),
                },
                Some((keys, generation, confirmed)) = confirms.next(), if !confirms.is_empty() => {
                    self.ack_confirmed(&keys, generation, confirmed, conn.live()).await;
                }
                () = sleep_until(retry_at) => conn.reconnect(self.open(), pulse).await,
            }
            self.flush(&mut conn, &mut confirms).await;
        }
        // ACKs already queued go out, and their deliveries are settled
        // when confirmed (bounded): what is not is redelivered later.
        self.flush(&mut conn, &mut confirms).await;
        linger(&mut confirms, async |(keys, generation, confirmed)| {
            self.ack_confirmed(&keys, generation, confirmed, conn.live())
                .await;
        })
        .await;
        if let Some(l) = conn.into_live() {
            let _ = l.connection.close(200, "bye".into()).await;
        }
    }

    /// Connects, declares and binds the queues, consumes them.
    async fn open(&mut self) -> Result<Live> {
        let connection = self.broker.connect().await?;
        let channel = self.broker.channel(&connection).await?;
        channel
            .basic_qos(
                self.broker.config.prefetch_count,
                BasicQosOptions::default(),
            )
            .await
            .map_err(|e| self.broker.failed("qos.prefetch_count: cannot set", e))?;
        let mut deliveries = SelectAll::new();
        let passive = self.broker.config.passive_declares;
        let mut names = Vec::new();
        for (name, q) in &self.queues.queues {
            let declared = channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive,
                        durable: q.durable,
                        exclusive: q.exclusive || name.is_empty(),
                        auto_delete: q.auto_delete || name.is_empty(),
                        ..QueueDeclareOptions::default()
                    },
                    field_table(&q.arguments),
                )
                .await
                .map_err(|e| {
                    self.broker
                        .failed(&format!("queues.{name:?}: cannot declare"), e)
                })?;
            names.push((name.clone(), declared.name().to_string()));
        }
        for b in &self.queues.bindings {
            let queue = names
                .iter()
                .find(|(n, _)| *n == b.queue)
                .map_or(b.queue.clone(), |(_, actual)| actual.clone());
            for key in &b.routing_keys {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        b.exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        field_table(&b.arguments),
                    )
                    .await
                    .map_err(|e| {
                        self.broker.failed(
                            &format!(
                                "bindings: cannot bind {queue:?} to {:?} with {key:?}",
                                b.exchange
                            ),
                            e,
                        )
                    })?;
            }
        }
        for (_, actual) in &names {
            let consumer = channel
                .basic_consume(
                    actual.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.broker.failed(&format!("cannot consume {actual:?}"), e))?;
            deliveries.push(consumer);
        }
        self.generation += 1;
        // Deliveries of the last connection are the broker's again.
        for held in self.held.values_mut() {
            held.tags.clear();
        }
        self.driver.report_readiness(Readiness {
            connected: 1,
            expected: 1,
            ack_path: true,
            down: Vec::new(),
            settled: true,
        });
        tracing::debug!(queues = ?names.iter().map(|(_, a)| a).collect::<Vec<_>>(), "consuming");
        Ok(Live {
            connection,
            channel,
            deliveries,
        })
    }

    async fn command(&mut self, command: ConsumerCommand, live: Option<&Live>) -> Flow {
        match command {
            ConsumerCommand::Settle(settle) => {
                let key = settle.ticket.key();
                let deliveries = self.held.get(&key).and_then(|h| h.broker_deliveries);
                let disposition = self.driver.settle_with(settle, deliveries);
                self.apply(key, disposition, live).await;
                Flow::Continue
            }
            ConsumerCommand::Shutdown => Flow::Stop,
        }
    }

    /// One delivery from the broker.
    async fn delivered(&mut self, d: lapin::message::Delivery, live: Option<&Live>) {
        let tag = d.delivery_tag;
        let wire = AmqpMessage::received(
            d.routing_key.to_string(),
            d.data,
            d.properties,
            &self.queues.ack_topic,
        );
        let reply_to = wire.reply_to().map(str::to_owned);
        let deliveries = wire.delivery_count;
        let disposition = self
            .driver
            .on_wire_with(&Arc::new(wire), Instant::now(), deliveries);
        let key = match disposition {
            Disposition::Waiting(key) | Disposition::AwaitAck(key) => Some(key),
            _ => None,
        };
        match key {
            Some(key) => {
                let held = self.held.entry(key).or_default();
                held.tags.push((self.generation, tag));
                held.reply_to.extend(reply_to);
                held.broker_deliveries = deliveries;
            }
            None => {
                self.settle_tags(&[(self.generation, tag)], disposition, live)
                    .await
            }
        }
    }

    /// What the rules decided for one copy, applied to its deliveries.
    async fn apply(&mut self, key: CopyKey, disposition: Disposition, live: Option<&Live>) {
        match disposition {
            Disposition::Waiting(_) | Disposition::AwaitAck(_) => {}
            other => {
                if let Some(held) = self.held.remove(&key) {
                    self.settle_tags(&held.tags, other, live).await;
                }
            }
        }
    }

    /// Tells the broker what became of these deliveries (those of the
    /// current connection: the others went back to their queue with it).
    async fn settle_tags(
        &self,
        tags: &[(u64, u64)],
        disposition: Disposition,
        live: Option<&Live>,
    ) {
        let Some(l) = live else { return };
        for &(generation, tag) in tags {
            if generation != self.generation {
                continue;
            }
            let result = match disposition {
                Disposition::Consumed => l.channel.basic_ack(tag, BasicAckOptions::default()).await,
                Disposition::Reject => {
                    l.channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: false,
                            },
                        )
                        .await
                }
                Disposition::Requeue => {
                    l.channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            },
                        )
                        .await
                }
                Disposition::Waiting(_) | Disposition::AwaitAck(_) => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(tag, "settling a delivery failed: {e}");
            }
        }
    }

    /// Signs the ACKs gathered, publishes each to the publishers that asked,
    /// and queues their confirms.
    async fn flush(
        &mut self,
        conn: &mut Supervised<Live>,
        confirms: &mut FuturesUnordered<Confirming>,
    ) {
        let mut signed: Vec<(Arc<AmqpMessage>, Vec<CopyKey>)> = Vec::new();
        self.driver.flush_acks(|wire, entries: &[PendingAck]| {
            signed.push((wire, entries.iter().map(|e| e.key).collect()));
            Ok(())
        });
        if signed.is_empty() {
            return;
        }
        let Some(l) = conn.live() else {
            // Not published: their deliveries go back to the queue with the
            // lost connection, and are re-acked when redelivered.
            return;
        };
        let exchange = self.broker.config.publish_exchange.as_str();
        let mut failed = None;
        for (wire, keys) in signed {
            let routes: BTreeSet<String> = keys
                .iter()
                .filter_map(|k| self.held.get(k))
                .flat_map(|h| h.reply_to.iter().cloned())
                .collect();
            let routes: Vec<String> = if routes.is_empty() {
                vec![self.queues.ack_topic.clone()]
            } else {
                routes.into_iter().collect()
            };
            let mut pending = Vec::with_capacity(routes.len());
            for route in &routes {
                match l
                    .channel
                    .basic_publish(
                        exchange.into(),
                        route.as_str().into(),
                        BasicPublishOptions::default(),
                        &wire.body,
                        wire.properties.clone(),
                    )
                    .await
                {
                    Ok(confirm) => pending.push(confirm),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if failed.is_some() {
                break;
            }
            let generation = self.generation;
            confirms.push(Box::pin(async move {
                let mut confirmed = true;
                for confirm in pending {
                    confirmed &= matches!(confirm.await, Ok(Confirmation::Ack(_)));
                }
                (keys, generation, confirmed)
            }));
        }
        if let Some(why) = failed {
            conn.lost(&why);
        }
    }

    /// An ACK's confirm: its deliveries are consumed, or requeued when it
    /// was not confirmed (their redelivery is re-acked).
    async fn ack_confirmed(
        &mut self,
        keys: &[CopyKey],
        generation: u64,
        confirmed: bool,
        live: Option<&Live>,
    ) {
        if confirmed {
            self.driver_counters_ack_confirmed();
        }
        let disposition = if confirmed && generation == self.generation {
            Disposition::Consumed
        } else {
            Disposition::Requeue
        };
        for key in keys {
            if let Some(held) = self.held.remove(key) {
                self.settle_tags(&held.tags, disposition, live).await;
            }
        }
    }

    fn driver_counters_ack_confirmed(&self) {
        self.driver.counters().ack_confirmed.bump();
    }
}
