//! [`ConsumerDriver`]: a consumer's rules ([`ConsumerState`]) with what
//! every transport adds around them: signature checks, the application's
//! deliveries, signed ACKs, counters and logs.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gilmsg_proto::ack::AckBody;
use gilmsg_proto::consumer::{
    Accepted, Arrival, ConsumerState, Duplicate, Outcome, PendingAck, Refusal, Ticket,
};
use gilmsg_proto::dedupe::CopyKey;
use gilmsg_proto::redelivery::{AfterFailure, Redeliveries};
use gilmsg_proto::{Draft, Envelope, Rejection, SignedPart, Signer, Validated, Validator};
use tokio::sync::{mpsc, watch};

use super::verify_ahead::{Ahead, VerifyAhead};
use super::{ConsumerCommand, ConsumerLink, Flow, Settle, WireFormat};
use crate::consumer::{Delivery, InlineHandler, Readiness};
use crate::error::Result;
use crate::setup;
use crate::stats::{ConsumerCounters, LinkCounters};

/// Signs ACKs.
pub(crate) struct Acker {
    pub(crate) signer: Arc<dyn Signer>,
    pub(crate) ack_topic: String,
    pub(crate) sequence: AtomicU64,
    pub(crate) username: String,
}

impl Acker {
    /// One signed ACK for every entry of `batch` (at most `MAX_ACK_BATCH`).
    fn seal(&self, batch: &[PendingAck]) -> Result<gilmsg_proto::Sealed> {
        self.seal_bodies(
            batch
                .iter()
                .map(|p| AckBody {
                    ack_msg_id: p.msg_id.clone(),
                    ack_digest: Some(p.digest),
                    ack_signer: p.signer.clone(),
                })
                .collect(),
        )
    }

    /// One signed ACK message carrying `bodies` (the consumer's batches,
    /// or the single ACK of `amqp::external`).
    pub(crate) fn seal_bodies(&self, bodies: Vec<AckBody>) -> Result<gilmsg_proto::Sealed> {
        let (timestamp, year) = setup::now_secs_and_year();
        let Some((first, rest)) = bodies.split_first() else {
            return Err(crate::Error::InvalidArgument("empty ACK batch".into()));
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
        Ok(draft.seal(Some(self.signer.as_ref()))?)
    }
}

/// What a consumer's builder prepares for its driver, on the caller's
/// thread (so that configuration errors surface from `build`).
pub(crate) struct ConsumerParts {
    pub(crate) state: ConsumerState,
    pub(crate) validator: Option<Arc<Validator>>,
    pub(crate) acker: Option<Arc<Acker>>,
    pub(crate) deliveries: mpsc::Sender<Delivery>,
    pub(crate) inline: Option<InlineHandler>,
    /// Accepted messages on this topic are not handed over (heartbeats).
    pub(crate) skip_topic: Option<String>,
    pub(crate) counters: Arc<ConsumerCounters>,
    pub(crate) readiness: watch::Sender<Readiness>,
    /// How often a failed message is requeued, for a transport whose
    /// broker redelivers (AMQP); `None` (ZeroMQ): a failed message is
    /// never handled nor acked again.
    pub(crate) redeliveries: Option<Redeliveries>,
}

/// What a transport with a broker does with one delivery, once the rules
/// have decided (ZeroMQ has nothing to settle and ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Nothing more will come of it: tell the broker it is consumed.
    Consumed,
    /// Refused, or given up after its redeliveries: tell the broker to
    /// dead-letter or drop it.
    Reject,
    /// Not now (the application has no room, or its handler failed and it
    /// may be retried): back to its queue.
    Requeue,
    /// With the application, whose verdict settles it (`settle_with`).
    Waiting(CopyKey),
    /// An ACK for it is queued: consumed once that ACK is published and
    /// confirmed.
    AwaitAck(CopyKey),
}

/// A consumer's rules and bookkeeping, for one transport's loop to drive.
pub(crate) struct ConsumerDriver<W: WireFormat> {
    parts: ConsumerParts,
    /// Schema names already warned about.
    unknown_schemas: UnknownSchemas,
    /// Where deliveries send their verdicts back.
    link: Arc<dyn ConsumerLink>,
    wire: PhantomData<W>,
}

impl<W: WireFormat> ConsumerDriver<W> {
    /// A driver whose deliveries report back through `link`.
    pub(crate) fn new(parts: ConsumerParts, link: Arc<dyn ConsumerLink>) -> Self {
        ConsumerDriver {
            parts,
            unknown_schemas: UnknownSchemas::default(),
            link,
            wire: PhantomData,
        }
    }

    /// One command from a handle.
    pub(crate) fn on_command(&mut self, command: ConsumerCommand) -> Flow {
        match command {
            ConsumerCommand::Settle(settle) => {
                self.settle(settle);
                Flow::Continue
            }
            ConsumerCommand::Shutdown => Flow::Stop,
        }
    }

    /// A burst of received messages, in the order they came: the state
    /// machine decides on each, this counts, logs and hands over, except
    /// that when two or more will need their signature checked, those
    /// are checked first, together (see [`VerifyAhead`]). The rules then
    /// run in order as always and take each verdict as if they had checked
    /// it then; deliveries keep their order.
    ///
    /// Why: checking signatures is most of a consumer's work, and a batch
    /// of Ed25519 signatures checks for about half the cost of checking
    /// each alone (`docs/benchmarks.md`). A busy consumer gets bursts.
    pub(crate) fn on_burst(&mut self, wires: &[W::Wire]) {
        let parts = &self.parts;
        let at = Arrival {
            now: Instant::now(),
            wall_now: setup::unix_now(),
            room: has_room(parts),
        };
        let state = &parts.state;
        let mut ahead = VerifyAhead::prepare::<W>(
            parts.validator.as_deref(),
            wires,
            state.max_message_size(),
            |topic| state.skips(topic),
            |message, signed| state.would_verify(message, signed, &at),
            &parts.counters.signature_batched,
        );
        for (i, wire) in wires.iter().enumerate() {
            let done = ahead.take(i);
            self.on_wire_checked(wire, done, Instant::now(), None);
        }
    }

    /// One received message: the state machine decides, this counts, logs
    /// and hands over, and says what the transport must do with its
    /// broker's delivery; `broker_deliveries` is how often the broker
    /// says it delivered it before, if it says.
    pub(crate) fn on_wire_with(
        &mut self,
        wire: &W::Wire,
        now: Instant,
        broker_deliveries: Option<u32>,
    ) -> Disposition {
        self.on_wire_checked(wire, Ahead::Nothing, now, broker_deliveries)
    }

    /// [`ConsumerDriver::on_wire_with`] with what [`VerifyAhead`] already
    /// did: the message decoded, its signed part computed, its signature
    /// checked. The rules ask for each only as they would have without it.
    fn on_wire_checked(
        &mut self,
        wire: &W::Wire,
        done: Ahead,
        now: Instant,
        broker_deliveries: Option<u32>,
    ) -> Disposition {
        let parts = &mut self.parts;
        parts.counters.received.bump();
        let room = has_room(parts);
        let validator = parts.validator.as_deref();
        let at = Arrival {
            now,
            wall_now: setup::unix_now(),
            room,
        };
        let (decoded, verdict) = done.split();
        let verify = |message: &Envelope, signed: &SignedPart| match verdict {
            Some(verdict) => verdict,
            None => check_signature(validator, message, signed),
        };
        let state = &mut parts.state;
        let outcome = match decoded {
            Some(Ok((message, signed))) => state.on_signed_message(message, signed, at, verify),
            Some(Err(decoded)) => state.on_received(W::topic(wire), |_| decoded, at, verify),
            None => state.on_received(W::topic(wire), |limit| W::decode(wire, limit), at, verify),
        };
        match outcome {
            Outcome::Skipped => {
                parts.counters.ack_skipped.bump();
                Disposition::Consumed
            }
            Outcome::Duplicate { kind, msg_id, key } => {
                parts.counters.duplicate.bump(kind.kind());
                tracing::trace!(msg_id = ?msg_id, kind = kind.kind(), "duplicate");
                match kind {
                    Duplicate::Reacked => Disposition::AwaitAck(key),
                    // Its ACK went out moments ago, or none is wanted.
                    Duplicate::ReackThrottled | Duplicate::Done => Disposition::Consumed,
                    // Settled with the copy being handled.
                    Duplicate::InProgress => Disposition::Waiting(key),
                    Duplicate::Failed | Duplicate::DifferentBody | Duplicate::OtherCertificate => {
                        Disposition::Reject
                    }
                }
            }
            Outcome::Refused {
                refusal,
                msg_id,
                signer,
            } => {
                let (group, kind) = refusal.counter();
                let family = match refusal {
                    Refusal::Invalid(_) | Refusal::Schema(_) => &parts.counters.invalid,
                    Refusal::Rejected(_) | Refusal::Stale(_) | Refusal::BelowReplayFloor { .. } => {
                        &parts.counters.rejected
                    }
                    Refusal::QueueFull | Refusal::DedupeFull => &parts.counters.dropped,
                };
                family.bump(kind);
                // Unverified text is logged with `?` (escaped), never raw.
                tracing::debug!(
                    reason = %format_args!("{group}.{kind}"),
                    msg_id = ?msg_id,
                    signer = ?signer,
                    "refused message: {refusal}"
                );
                match refusal {
                    // Room later, or memory freed later.
                    Refusal::QueueFull | Refusal::DedupeFull => Disposition::Requeue,
                    _ => Disposition::Reject,
                }
            }
            Outcome::Deliver(accepted) => self.deliver(*accepted, broker_deliveries),
        }
    }

    fn deliver(&mut self, accepted: Accepted, broker_deliveries: Option<u32>) -> Disposition {
        let Accepted {
            message,
            signer,
            ticket,
            legacy_unsigned_gilmsg_version,
            schema,
        } = accepted;
        let counters = &self.parts.counters;
        if self.parts.skip_topic.as_deref() == Some(message.topic()) {
            counters.heartbeat_skipped.bump();
            // Not handled: never acked (a heartbeat asks for none), not
            // remembered; consumed from a broker's queue.
            self.settle_ticket(ticket, false);
            return Disposition::Consumed;
        }
        if legacy_unsigned_gilmsg_version {
            counters.legacy_unsigned_gilmsg_version.bump();
        }
        if schema.checked {
            counters.schema_checked.bump();
        }
        if let Some(name) = schema.unknown_name {
            counters.schema_unknown_name.bump();
            self.unknown_schemas
                .note(name, message.topic(), schema.checked);
        }
        tracing::debug!(
            msg_id = message.msg_id(),
            topic = message.topic(),
            signer = signer.as_deref().unwrap_or("-"),
            "delivering"
        );
        if let Some(handler) = &mut self.parts.inline {
            counters.delivered.bump();
            let received = Instant::now();
            let verdict = handler(&message, signer.as_deref());
            if let Err(why) = &verdict {
                tracing::warn!(
                    msg_id = message.msg_id(),
                    "handler failed, not acking: {why}"
                );
            }
            return self.settle_with(
                Settle {
                    msg_id: message.msg_id().to_owned(),
                    ticket,
                    handled: verdict.is_ok(),
                    received,
                },
                broker_deliveries,
            );
        }
        let key = ticket.key();
        let delivery = Delivery::new(message, signer, ticket, self.link.clone());
        let (mut undelivered, kind) = match self.parts.deliveries.try_send(delivery) {
            Ok(()) => {
                counters.delivered.bump();
                return Disposition::Waiting(key);
            }
            // Only if the room checked above was taken meanwhile, which it
            // cannot be: this thread is the only sender.
            Err(mpsc::error::TrySendError::Full(d)) => (d, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(d)) => (d, "consumer_closed"),
        };
        // Not handled, so not remembered: a re-send gets another chance.
        if let Some(ticket) = undelivered.take_ticket() {
            self.parts.state.abandon(&ticket);
        }
        counters.dropped.bump(kind);
        tracing::debug!(msg_id = undelivered.msg_id(), reason = kind, "dropped");
        Disposition::Requeue
    }

    /// The application's verdict on a delivery.
    fn settle(&mut self, settle: Settle) {
        self.settle_with(settle, None);
    }

    /// The application's verdict on a delivery, and what the transport's
    /// broker must be told: with [`ConsumerParts::redeliveries`], a failed
    /// message is forgotten and requeued (so that its redelivery reaches
    /// the handler again) until its budget is spent, then rejected and
    /// remembered as failed (never acked).
    pub(crate) fn settle_with(
        &mut self,
        settle: Settle,
        broker_deliveries: Option<u32>,
    ) -> Disposition {
        let Settle {
            msg_id,
            ticket,
            handled,
            received,
        } = settle;
        let key = ticket.key();
        if handled && ticket.wants_ack() {
            self.parts.counters.ack_latency.observe(received.elapsed());
        }
        if handled {
            self.parts.counters.handler_ok.bump();
            tracing::debug!(msg_id, "handled");
            if let Some(r) = &mut self.parts.redeliveries {
                r.forget(&key);
            }
            let wants_ack = ticket.wants_ack();
            self.settle_ticket(ticket, true);
            return if wants_ack {
                Disposition::AwaitAck(key)
            } else {
                Disposition::Consumed
            };
        }
        self.parts.counters.handler_failed.bump();
        let after = self
            .parts
            .redeliveries
            .as_mut()
            .map(|r| r.on_failure(key, broker_deliveries));
        match after {
            Some(AfterFailure::Requeue { failures }) => {
                self.parts.counters.handler_requeued.bump();
                tracing::debug!(msg_id, failures, "not handled: requeued for another try");
                self.parts.state.abandon(&ticket);
                Disposition::Requeue
            }
            Some(AfterFailure::GiveUp { failures }) => {
                self.parts.counters.handler_gave_up.bump();
                tracing::warn!(
                    msg_id,
                    failures,
                    "not handled after every redelivery: dead-lettered or dropped, never acked"
                );
                self.settle_ticket(ticket, false);
                Disposition::Reject
            }
            None => {
                tracing::debug!(msg_id, "not handled: never acked");
                self.settle_ticket(ticket, false);
                Disposition::Reject
            }
        }
    }

    fn settle_ticket(&mut self, ticket: Ticket, handled: bool) {
        self.parts.state.settle(ticket, handled, Instant::now());
        self.publish_memory_counters();
    }

    /// Signs the ACKs the state machine gathered since the last call, one
    /// signed message per batch it yields, and sends each through `send`.
    /// `send` gets the entries each message acknowledges too (AMQP routes
    /// it to their publishers and settles their deliveries by them).
    pub(crate) fn flush_acks(
        &mut self,
        mut send: impl FnMut(W::Wire, &[PendingAck]) -> Result<()>,
    ) {
        if !self.parts.state.has_pending_acks() {
            return;
        }
        let batches = self.parts.state.take_ack_batches();
        self.publish_memory_counters();
        let Some(acker) = self.parts.acker.clone() else {
            return;
        };
        let counters = &self.parts.counters;
        for batch in batches {
            match acker.seal(&batch) {
                Ok(sealed) => {
                    match send(W::encode(sealed), &batch) {
                        Ok(()) => counters.acks_sent.bump(),
                        Err(e) => {
                            counters.ack_send_failed.bump();
                            tracing::warn!("ACK send failed: {e}");
                        }
                    }
                    counters.ack_entries.add(batch.len() as u64);
                }
                Err(e) => {
                    counters.ack_sign_failed.bump();
                    tracing::warn!("cannot sign ACK: {e}");
                }
            }
        }
    }

    /// Exposed so soak tests and operators can see the bounds hold.
    fn publish_memory_counters(&self) {
        let cache = self.parts.state.cache();
        let counters = &self.parts.counters;
        counters.dedupe_entries.set(cache.len() as u64);
        counters.dedupe_evicted.set(cache.evicted());
        counters.dedupe_expired.set(cache.expired());
    }

    /// The consumer's counters.
    pub(crate) fn counters(&self) -> &Arc<ConsumerCounters> {
        &self.parts.counters
    }

    /// What the transport's sockets count, reported with the consumer's.
    pub(crate) fn link_counters(&self) -> Arc<LinkCounters> {
        self.parts.counters.link.clone()
    }

    /// Whether the consumer has said it is ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.parts.readiness.borrow().is_ready()
    }

    /// Publishes the transport's readiness (watchers are woken only on
    /// change) and logs the moment the consumer becomes ready, with what is
    /// down.
    pub(crate) fn report_readiness(&self, readiness: Readiness) {
        self.parts.readiness.send_if_modified(|r| {
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
}

/// Schema names a consumer has warned about. A message naming a schema
/// other than the one this consumer checks its topic against (publisher and
/// consumer disagree: a new version, a stale config) gets one warning per
/// name (and at most [`UnknownSchemas::MAX`] names), then debug lines; a
/// name on a topic this consumer has no schema for is none of its business
/// and only gets debug lines. Both are counted (`schema.unknown_name`).
/// fedora-messaging warns on every such message, which makes it the most
/// common line in its users' logs.
#[derive(Debug, Default)]
struct UnknownSchemas {
    warned: std::collections::HashSet<String>,
}

impl UnknownSchemas {
    const MAX: usize = 64;

    /// `checked`: the message passed this consumer's own schema for `topic`.
    fn note(&mut self, name: String, topic: &str, checked: bool) {
        let shown = gilmsg_proto::schema::printable(&name).into_owned();
        if checked && self.warned.len() < Self::MAX && !self.warned.contains(&name) {
            tracing::warn!(
                schema = %shown,
                topic,
                "messages name a schema other than the one this consumer checks their topic \
                 against; they passed this consumer's and are delivered (each counted as \
                 schema.unknown_name, further ones logged at debug)"
            );
            self.warned.insert(name);
        } else {
            tracing::debug!(schema = %shown, topic, "unknown schema name");
        }
    }
}

/// Whether the application can take one more delivery now.
fn has_room(parts: &ConsumerParts) -> bool {
    parts.inline.is_some() || parts.deliveries.capacity() > 0
}

/// A message's signature checked by `validator` (none: signatures are not
/// checked, and every message passes unsigned).
fn check_signature(
    validator: Option<&Validator>,
    message: &Envelope,
    signed: &SignedPart,
) -> std::result::Result<Validated, Rejection> {
    match validator {
        Some(v) => v.validate_signed(message, signed),
        None => Ok(Validated {
            signer: None,
            unsigned_gilmsg_version: false,
        }),
    }
}
