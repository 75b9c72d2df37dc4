//! The AMQP publisher: one tokio task on a thread of its own, owning the
//! connection, driving the same [`PublisherDriver`] as ZeroMQ's socket
//! thread.
//!
//! Before the first publish it declares and binds the handle's ACK queue
//! (server-named, exclusive, auto-delete) to `<ack topic>.<publisher id>`
//! on the publish exchange; messages that want ACKs carry that key in
//! `reply_to`, so consumers route their ACKs to this publisher alone.
//! Publisher confirms are on and those messages are `mandatory`: a
//! `basic.return` (no queue bound for the topic) fails the publish at once
//! ([`Error::Unroutable`]). A confirmed message is marked held by the
//! broker: its re-send timer then sends nothing (it would only add a copy
//! to the queues) until the connection is lost; after a reconnect (with
//! back-off, the ACK queue declared again) every message still in flight
//! is re-sent once its timer fires, since the ACKs that were in the old
//! exclusive queue are gone. A timeout names, besides the missing
//! recipients, whether the broker confirmed and routed the message.

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};

use super::connect::{
    linger, next_delivery, pulse_ticker, sleep_until, take_burst, Broker, Supervised,
};
use super::{Amqp, AmqpMessage};
use crate::error::{Error, Result};
use crate::health::{Health, Pulse};
use crate::stats::PublisherCounters;
use crate::transport::{Flow, Outgoing, PublisherCommand, PublisherDriver, PublisherLink};

type Command = PublisherCommand<Arc<AmqpMessage>>;

/// A started publisher task.
pub(crate) struct Running {
    pub(crate) link: Box<dyn PublisherLink>,
    pub(crate) done: oneshot::Receiver<()>,
    /// Whether the task's loop turns.
    pub(crate) health: Health,
}

/// What a handle's commands go through.
struct Link {
    commands: mpsc::UnboundedSender<Command>,
    /// `reply_to` of messages that want ACKs.
    reply_key: String,
    priority: Option<u8>,
}

impl PublisherLink for Link {
    fn publish(&self, outgoing: Outgoing) -> Result<()> {
        let wants_acks = outgoing.collector.is_some();
        let mut queued = outgoing.encode::<Amqp>();
        if let Some(message) = Arc::get_mut(&mut queued.message) {
            if wants_acks {
                message.properties = message
                    .properties
                    .clone()
                    .with_reply_to(self.reply_key.as_str().into());
            }
            if let Some(p) = self.priority {
                message.properties = message.properties.clone().with_priority(p);
            }
        }
        self.commands
            .send(PublisherCommand::Publish(Box::new(queued)))
            .map_err(|_| Error::Closed)
    }

    fn cancel(&self, msg_id: String) {
        let _ = self.commands.send(PublisherCommand::Cancel(msg_id));
    }

    fn shutdown(&self) {
        let _ = self.commands.send(PublisherCommand::Shutdown);
    }
}

/// Starts the task; returns once the first connection is up and the ACK
/// queue bound (or with why it could not be).
pub(crate) fn start(
    broker: Broker,
    driver: PublisherDriver<Amqp>,
    counters: Arc<PublisherCounters>,
    ack_topic: String,
) -> Result<Running> {
    let reply_key = format!("{ack_topic}.{}", uuid::Uuid::new_v4().simple());
    let (commands, inbox) = mpsc::unbounded_channel();
    let priority = broker.config.publish_priority;
    let task = Task {
        broker,
        driver,
        counters,
        reply_key: reply_key.clone(),
        generation: 0,
    };
    let (done, health) =
        super::connect::spawn_task("gilmsg-amqp-publisher", move |started, pulse| async move {
            task.run(inbox, started, &pulse).await
        })?;
    Ok(Running {
        link: Box::new(Link {
            commands,
            reply_key,
            priority,
        }),
        done,
        health,
    })
}

/// The live connection.
struct Live {
    connection: Connection,
    channel: Channel,
    acks: lapin::Consumer,
}

type Confirming = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Arc<AmqpMessage>, u64, lapin::Result<Confirmation>)>
            + Send,
    >,
>;

struct Task {
    broker: Broker,
    driver: PublisherDriver<Amqp>,
    counters: Arc<PublisherCounters>,
    reply_key: String,
    /// Bumped at every (re)connection: what a message was confirmed on.
    generation: u64,
}

/// Why a re-send was not sent: the broker holds the message already.
fn held() -> Error {
    Error::InvalidArgument("held by the broker".into())
}

impl Task {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        started: std::sync::mpsc::Sender<Result<()>>,
        pulse: &Pulse,
    ) {
        let mut conn = Supervised::new("publisher", &self.broker, self.counters.link.clone());
        if !conn.first(self.open(), &started).await {
            return;
        }
        let mut confirms: FuturesUnordered<Confirming> = FuturesUnordered::new();
        let mut pulse_every = pulse_ticker();
        loop {
            pulse.beat();
            pulse.connected(conn.is_live());
            self.pump(&mut conn, &mut confirms).await;
            let wake = self
                .driver
                .next_wakeup()
                .map(tokio::time::Instant::from_std);
            let retry_at = conn.retry_at();
            tokio::select! {
                _ = pulse_every.tick() => {}
                command = inbox.recv() => {
                    let Some(command) = command else { break };
                    let handle = async |command| self.driver.on_command(command, Instant::now());
                    if take_burst(command, &mut inbox, handle).await == Flow::Stop {
                        break;
                    }
                }
                delivery = next_delivery(
                    conn.live_mut().map(|l| &mut l.acks),
                    "the ACK consumer was cancelled",
                ) => match delivery {
                    Ok(d) => {
                        let wire = AmqpMessage::received(
                            d.routing_key.to_string(),
                            d.data,
                            d.properties,
                            self.driver_ack_topic(),
                        );
                        self.driver.on_ack(&Arc::new(wire), Instant::now());
                    }
                    Err(why) => conn.lost(&why),
                },
                Some((wire, generation, result)) = confirms.next(), if !confirms.is_empty() => {
                    self.on_confirm(&wire, generation, result);
                }
                () = sleep_until(wake) => {}
                () = sleep_until(retry_at) => conn.reconnect(self.open(), pulse).await,
            }
        }
        // Plain messages were answered when sent: let their confirms come
        // in (bounded), as ZeroMQ's linger lets queued messages leave.
        self.pump(&mut conn, &mut confirms).await;
        linger(&mut confirms, async |(wire, generation, result)| {
            self.on_confirm(&wire, generation, result)
        })
        .await;
        self.driver.close();
        if let Some(live) = conn.into_live() {
            let _ = live.connection.close(200, "bye".into()).await;
        }
    }

    fn driver_ack_topic(&self) -> &str {
        self.reply_key
            .rsplit_once('.')
            .map_or(self.reply_key.as_str(), |(topic, _)| topic)
    }

    /// Connects, declares the exchanges and the ACK queue, binds it and
    /// starts consuming it.
    async fn open(&mut self) -> Result<Live> {
        let connection = self.broker.connect().await?;
        let channel = self.broker.channel(&connection).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.broker.failed("cannot declare the ACK queue", e))?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.broker.config.publish_exchange.as_str().into(),
                self.reply_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.broker.failed("cannot bind the ACK queue", e))?;
        let acks = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.broker.failed("cannot consume the ACK queue", e))?;
        self.generation += 1;
        tracing::debug!(
            queue = %queue.name(),
            reply_to = %self.reply_key,
            "ACK queue bound; publishing"
        );
        Ok(Live {
            connection,
            channel,
            acks,
        })
    }

    /// Sends what the rules say (new messages once connected, re-sends of
    /// messages the broker does not hold), then publishes it.
    async fn pump(
        &mut self,
        conn: &mut Supervised<Live>,
        confirms: &mut FuturesUnordered<Confirming>,
    ) {
        let mut outbox: Vec<Arc<AmqpMessage>> = Vec::new();
        let now = Instant::now();
        let connected = conn.is_live();
        let generation = self.generation;
        if self.driver.has_waiting() && connected {
            self.driver.send_ready(
                now,
                |_, _| true,
                |wire| {
                    outbox.push(wire.clone());
                    Ok(())
                },
            );
        }
        self.driver.fire_timers(
            now,
            |wire| {
                if !connected || wire.held_on(generation) {
                    return Err(held());
                }
                outbox.push(wire.clone());
                Ok(())
            },
            Vec::new,
        );
        let Some(l) = conn.live() else {
            return;
        };
        let exchange = self.broker.config.publish_exchange.as_str();
        let mut failed = None;
        for wire in outbox {
            let options = BasicPublishOptions {
                // Only messages that want ACKs: a plain one was answered
                // when sent, as in fedora-messaging (which never sets it).
                mandatory: wire.reply_to().is_some(),
                ..BasicPublishOptions::default()
            };
            match l
                .channel
                .basic_publish(
                    exchange.into(),
                    wire.routing_key.as_str().into(),
                    options,
                    &wire.body,
                    wire.properties.clone(),
                )
                .await
            {
                Ok(confirm) => {
                    confirms.push(Box::pin(async move {
                        let result = confirm.await;
                        (wire, generation, result)
                    }));
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = failed {
            conn.lost(&why);
        }
    }

    fn on_confirm(
        &mut self,
        wire: &Arc<AmqpMessage>,
        generation: u64,
        result: lapin::Result<Confirmation>,
    ) {
        let msg_id = wire.message_id().unwrap_or_default().to_owned();
        match result {
            Ok(Confirmation::Ack(None)) => {
                wire.confirm(generation);
                self.counters.confirmed.bump();
            }
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                self.counters.unroutable.bump();
                let error = Error::Unroutable {
                    topic: wire.routing_key.clone(),
                    exchange: self.broker.config.publish_exchange.clone(),
                    reply: returned.reply_text.to_string(),
                };
                tracing::info!(msg_id, "{error}");
                self.driver.fail(&msg_id, error);
            }
            Ok(Confirmation::Nack(None)) => {
                tracing::debug!(
                    msg_id,
                    "the broker refused the message (nack); re-sent on its timer"
                );
            }
            Ok(Confirmation::NotRequested) => {}
            Err(e) => tracing::debug!(msg_id, "no confirm: {e}"),
        }
    }
}
