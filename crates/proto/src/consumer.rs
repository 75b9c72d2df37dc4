//! [`ConsumerState`]: every decision an ACK-sending consumer makes, with no
//! I/O, in the manner of rumqttc's `state.rs`.
//!
//! A transport hands it each received message as the topic it routes on
//! and a way to decode the rest ([`ConsumerState::on_received`]; ZeroMQ's
//! two frames have [`ConsumerState::on_frames`]), with the time as an
//! [`Instant`] and as wall-clock seconds, whether the application can take
//! one more delivery, and a closure that verifies a signature. It answers
//! with an [`Outcome`]: skip, deliver, settle as a duplicate, or refuse with
//! a typed reason. The transport reports what the handler made of each
//! delivery ([`ConsumerState::settle`]), and after each burst of at most
//! [`ACK_BURST`] messages takes the ACKs to sign and send
//! ([`ConsumerState::take_ack_batches`]). Which wire form a message came in
//! (ZeroMQ frames, an AMQP routing key with headers) makes no difference to
//! any rule.
//!
//! The rules, in the order they apply to one message:
//!
//! 1. ACK-topic traffic is skipped before parsing unless asked for (on a
//!    gilmsg bus it is the most common message, and nobody ACKs an ACK).
//! 2. The message is decoded (by the transport's decoder; ZeroMQ's is
//!    [`Envelope::decode`]); its canonical signed part is computed once
//!    ([`SignedPart`](crate::SignedPart)), which also refuses number text the signature does
//!    not cover as written.
//! 3. A copy of a message already remembered (same digest of the signed part
//!    *and* the same certificate text, whitespace aside) is settled before
//!    any signature check: re-acked if it was handled and acked (spaced out
//!    by [`ReackPolicy`]), otherwise ignored. Nothing is trusted from the
//!    copy: the re-ACK names the digest and the signer that were handled.
//!    The digest alone would not do: `signature` and `certificate` are
//!    outside the signed part, so another identity can re-sign a victim's
//!    exact body; such a copy carries another certificate, so it is
//!    verified like a new message (step 6).
//! 4. A new body is checked against the time window (signed `timestamp`).
//! 5. If the application cannot take one more delivery, the message is
//!    dropped *before* it is remembered: remembering it would push out an
//!    older id only to forget the new one at once, so a flood faster than
//!    the handler would empty the memory and let re-sends of handled
//!    messages reach the handler again.
//! 6. The signature is verified (the caller's closure), *then* the message
//!    is remembered under `(signer, msg_id)`: a forged copy can never claim
//!    an id ahead of the real message, and another identity that reuses a
//!    victim's id, or re-signs the victim's whole body, sends a message of
//!    its own, handled (and acked, naming that signer) as its own: it can
//!    neither take the victim's id nor settle the victim's message. A body
//!    already handled for the same signer but carried with another
//!    certificate is a duplicate that is never acked
//!    ([`Duplicate::OtherCertificate`]). See [`crate::dedupe`] for the time
//!    and memory bounds.
//! 7. If the consumer checks schemas ([`ConsumerState::with_schemas`]),
//!    a message that is not an ACK is checked against the consumer's schema
//!    for its topic ([`crate::schema`]). A body that fails is refused
//!    ([`Refusal::Schema`]) and remembered as failed, like a body its
//!    handler failed: never acked, and its re-sends are settled as
//!    duplicates without being verified or checked again (the verdict on a
//!    signed body cannot change). A schema name the consumer does not know
//!    for the topic is noted ([`SchemaNote::unknown_name`]), not refused.
//! 8. It is delivered. An ACK is prepared only when the sender asked for
//!    one (`gilmsg_version`) and the message is not itself an ACK; it goes
//!    out when the handler says the message was handled, and names the
//!    verified signer (`ack_signer`) so that a publisher never counts an ACK
//!    for its body handled as someone else's. ACKs for gilmsg-rs
//!    publishers whose `gilmsg_version` was *signed* are batched (one
//!    signature for up to [`MAX_ACK_BATCH`] entries); Python gilmsg reads a
//!    single `ack_msg_id`, so its messages are acked one by one.

use std::sync::Arc;
use std::time::Instant;

use crate::ack::MAX_ACK_BATCH;
use crate::dedupe::{CopyKey, DedupeCache, ReackPolicy, Refused, Retention, Seen, Stale};
use crate::digest::Digest;
use crate::envelope::{DecodeError, Envelope, SignedPart, GILMSG_VERSION_FIELD};
use crate::schema::{self, SchemaCheck, SchemaNote, SchemaViolation};
use crate::validate::{Rejection, Verify};

/// Messages received per burst before the burst's ACKs are signed and sent:
/// a backlog of thousands must not hold every ACK back until it is all
/// verified (the publisher would take the silence for loss).
pub const ACK_BURST: usize = 64;

/// `gilmsg_version` prefix of publishers that read batched ACKs.
pub const BATCHING_PEER: &str = "gilmsg-rs/";

/// When and how a message arrived, as the transport saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The monotonic clock (re-ACK spacing).
    pub now: Instant,
    /// The wall clock in seconds since the epoch (the time window).
    pub wall_now: i64,
    /// Whether the application can take one more delivery.
    pub room: bool,
}

/// What a consumer is configured to do.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The bus's ACK topic.
    pub ack_topic: String,
    /// Deliver other consumers' ACKs to the application too.
    pub deliver_acks: bool,
    /// Send ACKs at all (off: a validating tail).
    pub send_acks: bool,
    /// Largest body accepted (`max_message_size`).
    pub max_message_size: usize,
    /// Time window and memory bound.
    pub retention: Retention,
    /// Spacing of re-ACKs.
    pub reack: ReackPolicy,
}

/// An ACK waiting to be signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAck {
    /// The acknowledged message.
    pub msg_id: String,
    /// Its signed part's digest.
    pub digest: Digest,
    /// The signer it was verified as and handled for (`None` when
    /// signatures are not checked): the ACK's `ack_signer`.
    pub signer: Option<String>,
    /// Its publisher reads batched ACKs.
    pub batchable: bool,
    /// The copy it acknowledges: a transport that must settle each
    /// delivery with its broker (AMQP's `basic.ack` once the ACK is
    /// confirmed) finds its deliveries by it.
    pub key: CopyKey,
}

/// What the consumer's application must report back for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    key: CopyKey,
    asked: bool,
    ack: Option<PendingAck>,
}

impl Ticket {
    /// Whether handling it leads to an ACK (the sender asked, and this
    /// consumer sends ACKs).
    pub fn wants_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Whether the sender asked for an ACK (`gilmsg_version`) and the
    /// message is not itself an ACK, whether or not this consumer sends any.
    pub fn sender_asked_for_ack(&self) -> bool {
        self.asked
    }

    /// The digest of the delivered body's signed part.
    pub fn digest(&self) -> Digest {
        self.key.digest()
    }

    /// The delivered copy (digest and certificate), as
    /// [`Outcome::Duplicate`] and [`PendingAck`] name it.
    pub fn key(&self) -> CopyKey {
        self.key
    }
}

/// A new message for the handler.
#[derive(Debug)]
pub struct Accepted {
    /// The message, exactly as verified (numbers in their signed text).
    pub message: Envelope,
    /// The verified signer, `None` when signatures are not checked.
    pub signer: Option<String>,
    /// To settle once handled.
    pub ticket: Ticket,
    /// Verified by Python gilmsg's rule (`gilmsg_version` not signed).
    pub legacy_unsigned_gilmsg_version: bool,
    /// What the schema rule found (nothing when no schemas are checked).
    pub schema: SchemaNote,
}

/// A copy of a message already remembered; the handler does not see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// Handled and acked: acked again (queued).
    Reacked,
    /// Handled and acked, but acked again too recently.
    ReackThrottled,
    /// Handled, no ACK wanted.
    Done,
    /// Its handler is still running.
    InProgress,
    /// Its handler failed: never acked.
    Failed,
    /// Its signer's `msg_id` was already handled with another body.
    DifferentBody,
    /// Its signer's body already handled, but carried with another
    /// certificate than the one verified then: never acked.
    OtherCertificate,
}

impl Duplicate {
    /// A short stable name for counters (`duplicate.<kind>`).
    pub fn kind(&self) -> &'static str {
        match self {
            Duplicate::Reacked => "reacked",
            Duplicate::ReackThrottled => "reack_throttled",
            Duplicate::Done => "done",
            Duplicate::InProgress => "in_progress",
            Duplicate::Failed => "failed",
            Duplicate::DifferentBody => "different_body",
            Duplicate::OtherCertificate => "other_certificate",
        }
    }
}

/// Why a message was refused. Nothing about it is remembered.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// It did not decode (`invalid.<kind>`).
    Invalid(DecodeError),
    /// Its signature, certificate or routing policy failed (`rejected.<kind>`).
    Rejected(Rejection),
    /// Its timestamp is outside the window (`rejected.<kind>`).
    Stale(Stale),
    /// It is stamped at or before its signer's replay floor
    /// (`rejected.replay_floor`).
    BelowReplayFloor {
        /// The signer's floor.
        floor: i64,
        /// The message's timestamp.
        timestamp: i64,
    },
    /// The application's queue is full (`dropped.queue_full`).
    QueueFull,
    /// The memory is full of messages being handled (`dropped.dedupe_full`).
    DedupeFull,
    /// Its payload fails the consumer's schema for its topic
    /// (`invalid.schema`). Unlike the others, this one is
    /// remembered: as a body that can never be handled.
    Schema(SchemaViolation),
}

impl Refusal {
    /// The counter: group and kind.
    pub fn counter(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::Invalid(e) => ("invalid", e.kind()),
            Refusal::Rejected(r) => ("rejected", r.kind()),
            Refusal::Stale(s) => ("rejected", s.kind()),
            Refusal::BelowReplayFloor { .. } => ("rejected", "replay_floor"),
            Refusal::QueueFull => ("dropped", "queue_full"),
            Refusal::DedupeFull => ("dropped", "dedupe_full"),
            Refusal::Schema(_) => ("invalid", "schema"),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(e) => write!(f, "{e}"),
            Refusal::Rejected(r) => write!(f, "{r}"),
            Refusal::Stale(Stale::NoTimestamp) => f.write_str("no timestamp"),
            Refusal::Stale(Stale::TooOld { by_secs }) => {
                write!(f, "timestamp {by_secs}s older than the window")
            }
            Refusal::Stale(Stale::FromFuture { by_secs }) => {
                write!(
                    f,
                    "timestamp {by_secs}s beyond the clock skew in the future"
                )
            }
            Refusal::BelowReplayFloor { floor, timestamp } => write!(
                f,
                "timestamp {timestamp} at or before the signer's replay floor {floor} \
                 (messages that old may have been forgotten)"
            ),
            Refusal::QueueFull => f.write_str("the delivery queue is full"),
            Refusal::DedupeFull => f.write_str("every remembered message is being handled"),
            Refusal::Schema(v) => write!(f, "{v}"),
        }
    }
}

/// What to do with one received message.
#[derive(Debug)]
pub enum Outcome {
    /// ACK-topic traffic, skipped before parsing (`message.ack_skipped`).
    Skipped,
    /// A new message: hand it to the handler, then
    /// [`settle`](ConsumerState::settle) its ticket.
    Deliver(Box<Accepted>),
    /// A copy of a message already remembered (`duplicate.<kind>`).
    Duplicate {
        /// What it was a copy of, and what was done.
        kind: Duplicate,
        /// Its id (a copy's, unverified).
        msg_id: String,
        /// The copy (what a re-ACK's [`PendingAck::key`] names).
        key: CopyKey,
    },
    /// Refused, with why; `msg_id` when it decoded (unverified).
    Refused {
        /// Why.
        refusal: Refusal,
        /// Its id, if it decoded.
        msg_id: Option<String>,
        /// Its verified signer, when the refusal came after verification.
        signer: Option<String>,
    },
}

/// The consumer's protocol state: its memory of messages and the ACKs
/// waiting for the end of the burst.
#[derive(Debug)]
pub struct ConsumerState {
    settings: ConsumerSettings,
    cache: DedupeCache,
    pending: Vec<PendingAck>,
    /// The consumer's schemas, if it checks any (rule 7).
    schemas: Option<Arc<dyn SchemaCheck>>,
}

impl ConsumerState {
    /// A consumer that has seen nothing; `epoch` is any instant before the
    /// ones passed later.
    pub fn new(settings: ConsumerSettings, epoch: Instant) -> Self {
        ConsumerState {
            cache: DedupeCache::new(settings.retention, epoch),
            settings,
            pending: Vec::new(),
            schemas: None,
        }
    }

    /// The same consumer, checking each message that is not an ACK against
    /// `schemas` (rule 7).
    pub fn with_schemas(mut self, schemas: Arc<dyn SchemaCheck>) -> Self {
        self.schemas = Some(schemas);
        self
    }

    /// Whether a message on `topic` is skipped before it is decoded
    /// (rule 1): ACK-topic traffic, unless ACKs are delivered too. `topic`
    /// is the one the transport routes on (ZeroMQ's frame 0, an AMQP
    /// routing key), so a transport can ask before it parses anything.
    pub fn skips(&self, topic: &[u8]) -> bool {
        !self.settings.deliver_acks && topic == self.settings.ack_topic.as_bytes()
    }

    /// Decides what to do with one received message (see the module doc):
    /// the transport-neutral entry. `topic` is the one the transport routes
    /// on; `decode` turns the transport's wire form into an [`Envelope`]
    /// within the size limit it is given, and is called only if the topic
    /// is not skipped; `verify` checks a signature over the given signed
    /// part (called for new bodies only).
    pub fn on_received<D, V>(&mut self, topic: &[u8], decode: D, at: Arrival, verify: V) -> Outcome
    where
        D: FnOnce(usize) -> Result<Envelope, DecodeError>,
        V: Verify,
    {
        if self.skips(topic) {
            return Outcome::Skipped;
        }
        self.decided(decode(self.settings.max_message_size), None, at, verify)
    }

    /// [`ConsumerState::on_received`] for a message the transport decoded
    /// and whose [`Envelope::signed_part`] it computed already (to ask
    /// [`ConsumerState::would_verify`]), so that canonical JSON is computed
    /// once per message. The transport has asked
    /// [`ConsumerState::skips`] first.
    pub fn on_signed_message<V: Verify>(
        &mut self,
        message: Envelope,
        signed: SignedPart,
        at: Arrival,
        verify: V,
    ) -> Outcome {
        self.decided(Ok(message), Some(signed), at, verify)
    }

    /// The largest body [`ConsumerState::on_received`] lets a transport
    /// decode (`max_message_size`), for a transport that decodes first.
    pub fn max_message_size(&self) -> usize {
        self.settings.max_message_size
    }

    /// Whether [`ConsumerState::on_received`] would check the signature
    /// of `message` (whose signed part is `signed`) if it came now: the
    /// rules before verification pass (not a copy already remembered, not
    /// stale, room for it). Read-only. A transport that checks a burst's
    /// signatures ahead of the rules, on more than one thread, asks this
    /// first, so that work done ahead keeps rule 2's promise: a copy
    /// already remembered is never verified again.
    pub fn would_verify(&self, message: &Envelope, signed: &SignedPart, at: &Arrival) -> bool {
        let key = self
            .cache
            .copy_key(signed.digest(), message.str_field("certificate"));
        self.cache.get(&key).is_none()
            && self
                .cache
                .check_age(message.timestamp(), at.wall_now)
                .is_ok()
            && at.room
    }

    /// [`ConsumerState::on_received`] for a message the transport has
    /// already decoded (or failed to decode: the error is counted).
    pub fn on_message<V: Verify>(
        &mut self,
        topic: &[u8],
        decoded: Result<Envelope, DecodeError>,
        at: Arrival,
        verify: V,
    ) -> Outcome {
        self.on_received(topic, |_| decoded, at, verify)
    }

    /// [`ConsumerState::on_received`] for fedmsg's two-frame form
    /// `[topic, body]` (ZeroMQ).
    pub fn on_frames<F: AsRef<[u8]>, V: Verify>(
        &mut self,
        frames: &[F],
        at: Arrival,
        verify: V,
    ) -> Outcome {
        let topic = frames.first().map_or(&[][..], AsRef::as_ref);
        self.on_received(topic, |limit| Envelope::decode(frames, limit), at, verify)
    }

    /// Rules 2 to 7 for a message that was not skipped.
    fn decided<V: Verify>(
        &mut self,
        decoded: Result<Envelope, DecodeError>,
        signed: Option<SignedPart>,
        at: Arrival,
        verify: V,
    ) -> Outcome {
        let Arrival {
            now,
            wall_now,
            room,
        } = at;
        let message = match decoded {
            Ok(message) => message,
            Err(e) => {
                return Outcome::Refused {
                    refusal: Refusal::Invalid(e),
                    msg_id: None,
                    signer: None,
                }
            }
        };
        let refuse = |refusal, message: &Envelope| Outcome::Refused {
            refusal,
            msg_id: Some(message.msg_id().to_owned()),
            signer: None,
        };
        let signed = match signed.map_or_else(|| message.signed_part(), Ok) {
            Ok(s) => s,
            Err(e) => return refuse(Refusal::Invalid(DecodeError::Canonical(e)), &message),
        };
        let digest = signed.digest();
        let key = self
            .cache
            .copy_key(digest, message.str_field("certificate"));
        let is_ack = message.topic() == self.settings.ack_topic;
        let wants_ack = message.wants_ack() && !is_ack;
        if let Some(seen) = self.cache.get(&key) {
            let kind = match seen.state {
                Seen::Done { acked: true } if wants_ack => {
                    if self.cache.may_reack(&key, now, &self.settings.reack) {
                        self.pending.push(PendingAck {
                            msg_id: message.msg_id().to_owned(),
                            digest,
                            signer: seen.signer.as_deref().map(str::to_owned),
                            batchable: seen.batchable,
                            key,
                        });
                        Duplicate::Reacked
                    } else {
                        Duplicate::ReackThrottled
                    }
                }
                Seen::Done { .. } => Duplicate::Done,
                Seen::InProgress => Duplicate::InProgress,
                Seen::Failed => Duplicate::Failed,
            };
            return Outcome::Duplicate {
                kind,
                msg_id: message.msg_id().to_owned(),
                key,
            };
        }
        let timestamp = match self.cache.check_age(message.timestamp(), wall_now) {
            Ok(()) => message.timestamp().unwrap_or_default(),
            Err(stale) => return refuse(Refusal::Stale(stale), &message),
        };
        if !room {
            return refuse(Refusal::QueueFull, &message);
        }
        let valid = match verify(&message, &signed) {
            Ok(v) => v,
            Err(r) => return refuse(Refusal::Rejected(r), &message),
        };
        // A gilmsg_version the signature does not cover cannot be trusted
        // to say the publisher reads batched ACKs.
        let batchable = !valid.unsigned_gilmsg_version
            && message
                .str_field(GILMSG_VERSION_FIELD)
                .is_some_and(|v| v.starts_with(BATCHING_PEER));
        let admitted = self.cache.admit(
            valid.signer.as_deref(),
            message.msg_id(),
            key,
            timestamp,
            wall_now,
            batchable,
        );
        match admitted {
            Ok(()) => {}
            Err(Refused::SameIdOtherBody(_)) => {
                return Outcome::Duplicate {
                    kind: Duplicate::DifferentBody,
                    msg_id: message.msg_id().to_owned(),
                    key,
                }
            }
            Err(Refused::OtherCertificate(_)) => {
                return Outcome::Duplicate {
                    kind: Duplicate::OtherCertificate,
                    msg_id: message.msg_id().to_owned(),
                    key,
                }
            }
            Err(Refused::BelowFloor { floor }) => {
                return Outcome::Refused {
                    refusal: Refusal::BelowReplayFloor { floor, timestamp },
                    msg_id: Some(message.msg_id().to_owned()),
                    signer: valid.signer,
                }
            }
            Err(Refused::Full) => {
                return Outcome::Refused {
                    refusal: Refusal::DedupeFull,
                    msg_id: Some(message.msg_id().to_owned()),
                    signer: valid.signer,
                }
            }
        }
        let schema = match self.schemas.as_deref().filter(|_| !is_ack) {
            None => SchemaNote::default(),
            Some(schemas) => match schema::judge(schemas, &message) {
                Ok(note) => note,
                Err(violation) => {
                    self.cache.settle(&key, Seen::Failed, now);
                    return Outcome::Refused {
                        refusal: Refusal::Schema(violation),
                        msg_id: Some(message.msg_id().to_owned()),
                        signer: valid.signer,
                    };
                }
            },
        };
        let ack = (self.settings.send_acks && wants_ack).then(|| PendingAck {
            msg_id: message.msg_id().to_owned(),
            digest,
            signer: valid.signer.clone(),
            batchable,
            key,
        });
        Outcome::Deliver(Box::new(Accepted {
            message,
            signer: valid.signer,
            ticket: Ticket {
                key,
                asked: wants_ack,
                ack,
            },
            legacy_unsigned_gilmsg_version: valid.unsigned_gilmsg_version,
            schema,
        }))
    }

    /// The handler's verdict on a delivery: handled (ACK it if asked) or
    /// not (never ACK it; re-sends are ignored).
    pub fn settle(&mut self, ticket: Ticket, handled: bool, now: Instant) {
        if !handled {
            self.cache.settle(&ticket.key, Seen::Failed, now);
            return;
        }
        let acked = ticket.ack.is_some();
        self.cache.settle(&ticket.key, Seen::Done { acked }, now);
        if let Some(ack) = ticket.ack {
            self.pending.push(ack);
        }
    }

    /// A delivery that could not be handed over after all (the application
    /// is gone): forgotten, so that a re-send gets another chance.
    pub fn abandon(&mut self, ticket: &Ticket) {
        self.cache.forget(&ticket.key);
    }

    /// Whether ACKs are waiting for the end of the burst.
    pub fn has_pending_acks(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The ACKs gathered since the last call, grouped for signing: batchable
    /// ones together (at most [`MAX_ACK_BATCH`] per group), then the others
    /// one per group. Each group becomes one signed ACK message.
    pub fn take_ack_batches(&mut self) -> Vec<Vec<PendingAck>> {
        let pending = std::mem::take(&mut self.pending);
        let (batchable, single): (Vec<PendingAck>, Vec<PendingAck>) =
            pending.into_iter().partition(|p| p.batchable);
        batchable
            .chunks(MAX_ACK_BATCH)
            .map(<[PendingAck]>::to_vec)
            .chain(single.into_iter().map(|p| vec![p]))
            .collect()
    }

    /// The memory of messages (for its counters).
    pub fn cache(&self) -> &DedupeCache {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Draft;
    use crate::testing::{check_named, Named};
    use crate::validate::Validated;
    use serde_json::json;
    use std::cell::Cell;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;
    const ACK_TOPIC: &str = "t.dev.gilmsg.ack";

    fn settings(capacity: usize) -> ConsumerSettings {
        ConsumerSettings {
            ack_topic: ACK_TOPIC.into(),
            deliver_acks: false,
            send_acks: true,
            max_message_size: 1 << 20,
            retention: Retention {
                capacity,
                max_age: Duration::from_secs(600),
                clock_skew: Duration::from_secs(60),
            },
            reack: ReackPolicy {
                first: Duration::from_millis(10),
                max: Duration::from_millis(500),
            },
        }
    }

    fn message(signer: &'static str, id: &str, msg: serde_json::Value, ts: i64) -> Envelope {
        Draft {
            topic: "t.dev.app.x".into(),
            msg,
            msg_id: id.into(),
            i: 1,
            timestamp: ts,
            username: "u".into(),
            wants_ack: true,
        }
        .build(Some(&Named(signer)))
        .unwrap()
    }

    fn frames(e: &Envelope) -> [Vec<u8>; 2] {
        e.encode().unwrap()
    }

    /// A verifier that accepts "by <name>" and counts its calls.
    fn verifier(
        calls: &Cell<u32>,
    ) -> impl Fn(&Envelope, &SignedPart) -> Result<Validated, Rejection> + '_ {
        move |m, _signed| {
            calls.set(calls.get() + 1);
            check_named(m)
        }
    }

    fn arrival(now: Instant, wall_now: i64, room: bool) -> Arrival {
        Arrival {
            now,
            wall_now,
            room,
        }
    }

    fn deliver(outcome: Outcome) -> Accepted {
        match outcome {
            Outcome::Deliver(a) => *a,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    fn duplicate(outcome: &Outcome) -> Duplicate {
        match outcome {
            Outcome::Duplicate { kind, .. } => *kind,
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    fn refusal(outcome: Outcome) -> (&'static str, &'static str) {
        match outcome {
            Outcome::Refused { refusal, .. } => refusal.counter(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// `would_verify` (asked by transports that verify a burst ahead)
    /// says yes exactly when `on_frames` then calls the verifier: a new
    /// body, a copy already remembered (handled, in progress, failed), a
    /// stale one, one without room.
    #[test]
    fn would_verify_answers_as_the_rules_then_decide() {
        let t0 = Instant::now();
        let mut state = ConsumerState::new(settings(8), t0);
        let fresh = message("alice", "m-1", json!({"n": 1}), NOW);
        let stale = message("alice", "m-2", json!({"n": 2}), NOW - 3600);
        let failed = message("alice", "m-3", json!({"n": 3}), NOW);
        let check = |state: &mut ConsumerState, e: &Envelope, room: bool| {
            let at = arrival(t0, NOW, room);
            let said = state.would_verify(e, &e.signed_part().unwrap(), &at);
            let calls = Cell::new(0);
            let outcome = state.on_frames(&frames(e), at, verifier(&calls));
            assert_eq!(said, calls.get() == 1, "{:?}: {outcome:?}", e.msg_id());
            (said, outcome)
        };
        // New: verified, then remembered in progress, then handled.
        let (said, outcome) = check(&mut state, &fresh, true);
        assert!(said);
        let ticket = deliver(outcome).ticket;
        assert!(!check(&mut state, &fresh, true).0, "in progress");
        state.settle(ticket, true, t0);
        assert!(!check(&mut state, &fresh, true).0, "handled");
        // Stale, and no room: refused before any verification.
        assert!(!check(&mut state, &stale, true).0);
        assert!(!check(&mut state, &failed, false).0);
        // Failed: never verified again.
        let ticket = deliver(check(&mut state, &failed, true).1).ticket;
        state.settle(ticket, false, t0);
        assert!(!check(&mut state, &failed, true).0, "failed");
        assert_eq!(state.max_message_size(), 1 << 20);
    }

    #[test]
    fn ack_topic_traffic_is_skipped_before_parsing_unless_asked() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let garbage = [ACK_TOPIC.as_bytes(), b"not even json"];
        assert!(matches!(
            state.on_frames(&garbage, arrival(t0, NOW, true), verifier(&calls)),
            Outcome::Skipped
        ));
        let mut asked = settings(8);
        asked.deliver_acks = true;
        let mut state = ConsumerState::new(asked, t0);
        assert_eq!(
            refusal(state.on_frames(&garbage, arrival(t0, NOW, true), verifier(&calls))),
            ("invalid", "not_json")
        );
        // An ACK delivered on request is never acked itself.
        let mut ack = message("bob", "ack-1", json!({"ack_msg_id": "m"}), NOW);
        let mut body = ack.body().clone();
        body.insert("topic".into(), json!(ACK_TOPIC));
        ack = Envelope::parse_body(&serde_json::to_vec(&body).unwrap(), 1 << 20).unwrap();
        let accepted = deliver(state.on_message(
            ACK_TOPIC.as_bytes(),
            Ok(ack),
            arrival(t0, NOW, true),
            |_, _| {
                Ok(Validated {
                    signer: Some("bob".into()),
                    unsigned_gilmsg_version: false,
                })
            },
        ));
        assert!(!accepted.ticket.wants_ack());
        assert_eq!(calls.get(), 0);
    }

    #[test]
    fn any_wire_form_goes_through_the_same_rules_and_skipped_topics_are_never_decoded() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        assert!(state.skips(ACK_TOPIC.as_bytes()) && !state.skips(b"t.dev.app.x"));
        let never =
            |_: usize| -> Result<Envelope, DecodeError> { panic!("decoded a skipped message") };
        let outcome = state.on_received(
            ACK_TOPIC.as_bytes(),
            never,
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert!(matches!(outcome, Outcome::Skipped));
        // A transport whose wire form is not ZeroMQ's two frames (a routing
        // key, and the body elsewhere): its decoder is given the size limit.
        let m = message("alice", "m1", json!(1), NOW);
        let body = frames(&m)[1].clone();
        let decode = |limit| Envelope::parse_body(&body, limit);
        let accepted = deliver(state.on_received(
            b"t.dev.app.x",
            decode,
            arrival(t0, NOW, true),
            verifier(&calls),
        ));
        assert_eq!(accepted.message, m);
        assert_eq!(calls.get(), 1);
        // Its decode errors are counted like ZeroMQ's.
        let bad = |_| Err(DecodeError::NotJson("x".into()));
        let outcome = state.on_received(
            b"t.dev.app.x",
            bad,
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert_eq!(refusal(outcome), ("invalid", "not_json"));
        let outcome = state.on_message(
            b"t.dev.app.x",
            Err(DecodeError::FrameCount(3)),
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert_eq!(refusal(outcome), ("invalid", "bad_frame_count"));
    }

    #[test]
    fn a_new_message_is_verified_then_delivered_once_and_acked_when_handled() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let m = message("alice", "m1", json!({"x": 1}), NOW);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(calls.get(), 1);
        assert_eq!(accepted.signer.as_deref(), Some("alice"));
        assert!(accepted.ticket.wants_ack());
        // Before the verdict: a re-send is "in progress", and not verified.
        let again = state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls));
        assert_eq!(duplicate(&again), Duplicate::InProgress);
        assert_eq!(calls.get(), 1);
        assert!(state.take_ack_batches().is_empty());
        state.settle(accepted.ticket, true, t0);
        let batches = state.take_ack_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0][0].msg_id, "m1");
        assert_eq!(batches[0][0].digest, m.signed_part().unwrap().digest());
    }

    #[test]
    fn re_sends_are_reacked_only_for_the_identical_body_and_without_verifying() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let m = message("alice", "m1", json!({"x": 1}), NOW);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, true, t0);
        state.take_ack_batches();
        let later = t0 + Duration::from_millis(50);
        let copy = state.on_frames(&frames(&m), arrival(later, NOW, true), verifier(&calls));
        assert_eq!(duplicate(&copy), Duplicate::Reacked);
        assert_eq!(calls.get(), 1, "a copy is not verified again");
        let batches = state.take_ack_batches();
        assert_eq!(batches.len(), 1);
        // A body with the same msg_id but different content, same signer:
        // verified (it is not a copy), then refused as a different body,
        // never re-acked.
        let other = message("alice", "m1", json!({"x": 2}), NOW);
        let outcome = state.on_frames(&frames(&other), arrival(later, NOW, true), verifier(&calls));
        assert_eq!(duplicate(&outcome), Duplicate::DifferentBody);
        assert_eq!(calls.get(), 2);
        assert!(state.take_ack_batches().is_empty());
    }

    #[test]
    fn a_forged_copy_cannot_claim_an_id_and_another_signer_cannot_preempt_it() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let real = message("alice", "m1", json!({"pay": 1}), NOW);
        // A forgery with alice's id arrives first: refused, not remembered.
        let mut forged = real.body().clone();
        forged.insert("signature".into(), json!("by nobody"));
        let forged = Envelope::parse_body(&serde_json::to_vec(&forged).unwrap(), 1 << 20).unwrap();
        let outcome = state.on_message(
            b"t.dev.app.x",
            Ok(forged),
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert_eq!(refusal(outcome), ("rejected", "bad_signature"));
        // Mallory signs her own message with alice's id: accepted as hers.
        let mallory = message("mallory", "m1", json!({"pay": 1000}), NOW);
        deliver(state.on_frames(&frames(&mallory), arrival(t0, NOW, true), verifier(&calls)));
        // Alice's real message is still handled.
        let accepted =
            deliver(state.on_frames(&frames(&real), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(accepted.signer.as_deref(), Some("alice"));
    }

    #[test]
    fn review_another_signer_cannot_settle_a_victims_message_by_resigning_its_body() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let real = message("alice", "m1", json!({"pay": 1}), NOW);
        let mut copy = real.body().clone();
        copy.insert("signature".into(), json!("by mallory"));
        copy.insert("certificate".into(), json!("mallory"));
        let copy = Envelope::parse_body(&serde_json::to_vec(&copy).unwrap(), 1 << 20).unwrap();
        assert_eq!(copy.signed_part(), real.signed_part(), "same signed part");
        let first = deliver(state.on_message(
            b"t.dev.app.x",
            Ok(copy),
            arrival(t0, NOW, true),
            verifier(&calls),
        ));
        assert_eq!(first.signer.as_deref(), Some("mallory"));
        state.settle(first.ticket, true, t0);
        state.take_ack_batches();
        let later = t0 + Duration::from_secs(1);
        match state.on_frames(&frames(&real), arrival(later, NOW, true), verifier(&calls)) {
            Outcome::Deliver(a) => assert_eq!(a.signer.as_deref(), Some("alice")),
            other => panic!(
                "alice's message settled without being verified or handled as hers: {other:?}; ACKs queued: {:?}",
                state.take_ack_batches()
            ),
        }
    }

    #[test]
    fn acks_and_reacks_name_the_signer_handled_and_other_certificates_are_never_reacked() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let real = message("alice", "m1", json!({"pay": 1}), NOW);
        let digest = accepted_digest(&real);
        let resigned = |signer: &str, certificate: &str| {
            let mut body = real.body().clone();
            body.insert("signature".into(), json!(format!("by {signer}")));
            body.insert("certificate".into(), json!(certificate));
            Envelope::parse_body(&serde_json::to_vec(&body).unwrap(), 1 << 20).unwrap()
        };
        // Mallory's re-signed copy first: handled as hers, acked naming her.
        let mallory = deliver(state.on_message(
            b"t.dev.app.x",
            Ok(resigned("mallory", "mallory")),
            arrival(t0, NOW, true),
            verifier(&calls),
        ));
        state.settle(mallory.ticket, true, t0);
        let acks = state.take_ack_batches();
        assert_eq!(acks[0][0].signer.as_deref(), Some("mallory"));
        assert_eq!(acks[0][0].digest, digest);
        // Alice's real one: handled as hers, acked naming her.
        let alice =
            deliver(state.on_frames(&frames(&real), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(alice.ticket, true, t0);
        let acks = state.take_ack_batches();
        assert_eq!(acks[0][0].signer.as_deref(), Some("alice"));
        assert_eq!(calls.get(), 2);
        // Copies of each, with their own certificate (whitespace aside),
        // are re-acked without verification, naming their own signer.
        let later = t0 + Duration::from_secs(1);
        let wrapped = resigned("alice", "ali\nce");
        assert_eq!(
            duplicate(&state.on_message(
                b"t.dev.app.x",
                Ok(wrapped),
                arrival(later, NOW, true),
                verifier(&calls)
            )),
            Duplicate::Reacked
        );
        let copy = state.on_message(
            b"t.dev.app.x",
            Ok(resigned("mallory", "mallory")),
            arrival(later, NOW, true),
            verifier(&calls),
        );
        assert_eq!(duplicate(&copy), Duplicate::Reacked);
        assert_eq!(calls.get(), 2);
        let signers: Vec<Option<String>> = state
            .take_ack_batches()
            .concat()
            .into_iter()
            .map(|a| a.signer)
            .collect();
        assert_eq!(signers, [Some("alice".into()), Some("mallory".into())]);
        // Alice's body with a certificate text that is not the one verified
        // (still alice's, say): verified, and a duplicate never acked.
        let even_later = later + Duration::from_secs(1);
        let odd = |m: &Envelope, _: &SignedPart| {
            assert_eq!(m.str_field("certificate"), Some("alice, another text"));
            Ok(Validated {
                signer: Some("alice".into()),
                unsigned_gilmsg_version: false,
            })
        };
        let mut body = real.body().clone();
        body.insert("certificate".into(), json!("alice, another text"));
        let other = Envelope::parse_body(&serde_json::to_vec(&body).unwrap(), 1 << 20).unwrap();
        assert_eq!(
            duplicate(&state.on_message(
                b"t.dev.app.x",
                Ok(other),
                arrival(even_later, NOW, true),
                odd
            )),
            Duplicate::OtherCertificate
        );
        assert!(state.take_ack_batches().is_empty());
    }

    #[test]
    fn a_full_queue_refuses_without_touching_the_memory() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(2), t0);
        let old = message("alice", "old", json!(1), NOW);
        let accepted =
            deliver(state.on_frames(&frames(&old), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, true, t0);
        // A flood while the queue is full: nothing verified, nothing
        // remembered, so the handled id is not pushed out.
        for i in 0..10 {
            let m = message("alice", &format!("flood-{i}"), json!(i), NOW);
            let outcome = state.on_frames(&frames(&m), arrival(t0, NOW, false), verifier(&calls));
            assert_eq!(refusal(outcome), ("dropped", "queue_full"));
        }
        assert_eq!(calls.get(), 1);
        assert_eq!(state.cache().len(), 1);
        let copy = state.on_frames(
            &frames(&old),
            arrival(t0 + Duration::from_secs(1), NOW, false),
            verifier(&calls),
        );
        assert_eq!(duplicate(&copy), Duplicate::Reacked);
    }

    #[test]
    fn an_abandoned_delivery_is_forgotten_and_a_failed_one_never_acked() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let m = message("alice", "m1", json!(1), NOW);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        state.abandon(&accepted.ticket);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, false, t0);
        assert!(state.take_ack_batches().is_empty());
        let copy = state.on_frames(
            &frames(&m),
            arrival(t0 + Duration::from_secs(1), NOW, true),
            verifier(&calls),
        );
        assert_eq!(duplicate(&copy), Duplicate::Failed);
        assert!(state.take_ack_batches().is_empty());
    }

    #[test]
    fn messages_outside_the_time_window_are_refused_with_their_reason() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let cases = [(NOW - 3600, "too_old"), (NOW + 3600, "from_future")];
        for (ts, kind) in cases {
            let m = message("alice", &format!("m{ts}"), json!(1), ts);
            let outcome = state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls));
            assert_eq!(refusal(outcome), ("rejected", kind));
        }
        let mut body = message("alice", "m", json!(1), NOW).body().clone();
        body.remove("timestamp");
        let m = Envelope::parse_body(&serde_json::to_vec(&body).unwrap(), 1 << 20).unwrap();
        let outcome = state.on_message(
            b"t.dev.app.x",
            Ok(m),
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert_eq!(refusal(outcome), ("rejected", "no_timestamp"));
        assert_eq!(calls.get(), 0, "the window is checked before the signature");
    }

    #[test]
    fn replaying_more_than_the_capacity_then_the_target_does_not_run_the_handler_again() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(16), t0);
        let target = message("alice", "target", json!({"pay": 1}), NOW - 30);
        let accepted =
            deliver(state.on_frames(&frames(&target), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, true, t0);
        // Captured messages of another signer push the target out.
        // Each second of bob's stays under the capacity: a signer sending
        // more than `capacity` messages stamped within one second has the
        // rest of that second refused once the first is pushed out.
        for i in 0..40 {
            let m = message("bob", &format!("filler-{i}"), json!(i), NOW - 29 + i / 2);
            let accepted =
                deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
            state.settle(accepted.ticket, true, t0);
        }
        let key = state
            .cache()
            .copy_key(accepted_digest(&target), target.str_field("certificate"));
        assert!(state.cache().get(&key).is_none());
        let outcome = state.on_frames(&frames(&target), arrival(t0, NOW, true), verifier(&calls));
        assert_eq!(refusal(outcome), ("rejected", "replay_floor"));
        // Alice's new messages still go through.
        let fresh = message("alice", "fresh", json!(2), NOW);
        deliver(state.on_frames(&frames(&fresh), arrival(t0, NOW, true), verifier(&calls)));
    }

    fn accepted_digest(m: &Envelope) -> Digest {
        m.signed_part().unwrap().digest()
    }

    #[test]
    fn a_replay_flood_of_one_message_is_reacked_a_few_times_a_second() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(8), t0);
        let m = message("alice", "m1", json!(1), NOW);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, true, t0);
        state.take_ack_batches();
        // 1,000 copies a second for 8 seconds.
        let mut reacked = 0;
        for i in 1..=8000u64 {
            let at = t0 + Duration::from_millis(i);
            if duplicate(&state.on_frames(&frames(&m), arrival(at, NOW, true), verifier(&calls)))
                == Duplicate::Reacked
            {
                reacked += 1;
            }
        }
        assert!((15..=25).contains(&reacked), "{reacked} re-ACKs");
        let queued: usize = state.take_ack_batches().iter().map(Vec::len).sum();
        assert_eq!(queued, reacked);
        // A publisher's own re-sends (25 ms, then doubling) are all answered.
        let mut state = ConsumerState::new(settings(8), t0);
        let accepted =
            deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        state.settle(accepted.ticket, true, t0);
        let mut at = Duration::ZERO;
        let mut rto = Duration::from_millis(25);
        for _ in 0..6 {
            at += rto;
            rto *= 2;
            let copy = state.on_frames(&frames(&m), arrival(t0 + at, NOW, true), verifier(&calls));
            assert_eq!(duplicate(&copy), Duplicate::Reacked, "re-send at {at:?}");
        }
    }

    #[test]
    fn acks_are_batched_only_for_signed_gilmsg_rs_versions() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut state = ConsumerState::new(settings(1024), t0);
        for i in 0..300 {
            let m = message("alice", &format!("rs-{i}"), json!(i), NOW);
            let a = deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
            state.settle(a.ticket, true, t0);
        }
        // Python gilmsg: its version is unsigned (legacy rule) or not ours.
        let legacy = message("alice", "py-1", json!(1), NOW);
        let a = deliver(
            state.on_frames(&frames(&legacy), arrival(t0, NOW, true), |_, _| {
                Ok(Validated {
                    signer: Some("alice".into()),
                    unsigned_gilmsg_version: true,
                })
            }),
        );
        assert!(a.legacy_unsigned_gilmsg_version);
        state.settle(a.ticket, true, t0);
        let mut python = message("alice", "py-2", json!(2), NOW).body().clone();
        python.insert(GILMSG_VERSION_FIELD.into(), json!("0.1.2"));
        let python = Envelope::parse_body(&serde_json::to_vec(&python).unwrap(), 1 << 20).unwrap();
        let a = deliver(state.on_message(
            b"t.dev.app.x",
            Ok(python),
            arrival(t0, NOW, true),
            |_, _| {
                Ok(Validated {
                    signer: Some("alice".into()),
                    unsigned_gilmsg_version: false,
                })
            },
        ));
        state.settle(a.ticket, true, t0);
        let sizes: Vec<usize> = state.take_ack_batches().iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_ACK_BATCH, 300 - MAX_ACK_BATCH, 1, 1]);
    }

    #[test]
    fn no_acks_when_not_sending_them_and_bad_input_is_typed() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let mut tail = settings(8);
        tail.send_acks = false;
        let mut state = ConsumerState::new(tail, t0);
        let m = message("alice", "m1", json!(1), NOW);
        let a = deliver(state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls)));
        assert!(!a.ticket.wants_ack());
        state.settle(a.ticket, true, t0);
        let copy = state.on_frames(&frames(&m), arrival(t0, NOW, true), verifier(&calls));
        assert_eq!(duplicate(&copy), Duplicate::Done);
        assert!(state.take_ack_batches().is_empty());

        let topic = b"t.dev.app.x".as_slice();
        let body = |m: &Envelope, edit: &dyn Fn(&str) -> String| {
            edit(&String::from_utf8(frames(m)[1].clone()).unwrap()).into_bytes()
        };
        let number = message("alice", "n", json!({"x": 0.1}), NOW);
        let rewritten = body(&number, &|b| {
            b.replace(":0.1}", ":0.1000000000000000000000001}")
        });
        assert_eq!(
            refusal(state.on_frames(
                &[topic, &rewritten],
                arrival(t0, NOW, true),
                verifier(&calls)
            )),
            ("invalid", "non_canonical_number")
        );
        let nul = body(&number, &|b| b.replace("\"n\"", "\"n\\u0000\""));
        assert_eq!(
            refusal(state.on_frames(&[topic, &nul], arrival(t0, NOW, true), verifier(&calls))),
            ("invalid", "control_char_in_msg_id")
        );
        assert_eq!(calls.get(), 1);
    }

    /// Every topic's payload must be an object with a number `n`, schema
    /// `n.v1`; counts its calls.
    #[derive(Debug, Default)]
    struct NeedsN {
        calls: std::sync::atomic::AtomicU32,
    }
    impl SchemaCheck for NeedsN {
        fn schema_for(&self, _topic: &str) -> Option<&str> {
            Some("n.v1")
        }
        fn check(&self, _topic: &str, msg: &serde_json::Value) -> schema::SchemaVerdict<'_> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if msg.get("n").is_some_and(serde_json::Value::is_number) {
                schema::SchemaVerdict::Passed { schema: "n.v1" }
            } else {
                schema::SchemaVerdict::Failed(SchemaViolation::new(
                    "n.v1",
                    "",
                    "required",
                    "\"n\" is a required property",
                ))
            }
        }
    }

    fn schema_calls(schemas: &NeedsN) -> u32 {
        schemas.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn named_message(id: &str, msg: serde_json::Value, schema: Option<&str>) -> Envelope {
        Draft {
            topic: "t.dev.app.x".into(),
            msg,
            msg_id: id.into(),
            i: 1,
            timestamp: NOW,
            username: "u".into(),
            wants_ack: true,
        }
        .seal_with_schema(schema, Some(&Named("alice")))
        .unwrap()
        .into_envelope()
    }

    #[test]
    fn a_body_failing_its_schema_is_refused_after_the_signature_and_never_acked() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let schemas = Arc::new(NeedsN::default());
        let mut state = ConsumerState::new(settings(8), t0).with_schemas(schemas.clone());
        // A bad signature is refused before the schema is looked at.
        let mut forged = named_message("m0", json!({}), None).body().clone();
        forged.insert("signature".into(), json!("by mallory"));
        let forged = Envelope::parse_body(&serde_json::to_vec(&forged).unwrap(), 1 << 20).unwrap();
        let outcome = state.on_message(
            b"t.dev.app.x",
            Ok(forged),
            arrival(t0, NOW, true),
            verifier(&calls),
        );
        assert_eq!(refusal(outcome), ("rejected", "bad_signature"));
        assert_eq!(schema_calls(&schemas), 0);

        let bad = named_message("m1", json!({"x": 1}), Some("n.v1"));
        match state.on_frames(&frames(&bad), arrival(t0, NOW, true), verifier(&calls)) {
            Outcome::Refused {
                refusal: refusal @ Refusal::Schema(_),
                msg_id,
                signer,
            } => {
                assert_eq!(refusal.counter(), ("invalid", "schema"));
                assert_eq!(msg_id.as_deref(), Some("m1"));
                assert_eq!(signer.as_deref(), Some("alice"));
                assert!(refusal.to_string().contains("schema n.v1"), "{refusal}");
            }
            other => panic!("expected a schema refusal, got {other:?}"),
        }
        assert!(state.take_ack_batches().is_empty());
        // Its re-sends: settled as a failed duplicate, never verified,
        // checked or acked again.
        let later = t0 + std::time::Duration::from_secs(1);
        let copy = state.on_frames(&frames(&bad), arrival(later, NOW, true), verifier(&calls));
        assert_eq!(duplicate(&copy), Duplicate::Failed);
        assert_eq!((calls.get(), schema_calls(&schemas)), (2, 1));
        assert!(state.take_ack_batches().is_empty());

        // A conforming body is delivered and acked.
        let good = named_message("m2", json!({"n": 1}), Some("n.v1"));
        let accepted =
            deliver(state.on_frames(&frames(&good), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(
            accepted.schema,
            SchemaNote {
                checked: true,
                unknown_name: None
            }
        );
        state.settle(accepted.ticket, true, t0);
        assert_eq!(state.take_ack_batches().concat()[0].msg_id, "m2");
    }

    #[test]
    fn unknown_schema_names_are_noted_and_acks_and_schemaless_consumers_are_not_checked() {
        let t0 = Instant::now();
        let calls = Cell::new(0);
        let schemas = Arc::new(NeedsN::default());
        let mut with_acks = settings(8);
        with_acks.deliver_acks = true;
        let mut state = ConsumerState::new(with_acks, t0).with_schemas(schemas.clone());
        let other = named_message("m1", json!({"n": 2}), Some("n.v2"));
        let accepted =
            deliver(state.on_frames(&frames(&other), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(accepted.schema.unknown_name.as_deref(), Some("n.v2"));
        assert!(accepted.schema.checked);
        // An ACK (delivered on request) is never checked.
        let ack = Draft {
            topic: ACK_TOPIC.into(),
            msg: json!({"ack_msg_id": "m1"}),
            msg_id: "a1".into(),
            i: 1,
            timestamp: NOW,
            username: "u".into(),
            wants_ack: false,
        }
        .build(Some(&Named("bob")))
        .unwrap();
        let accepted =
            deliver(state.on_frames(&frames(&ack), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(accepted.schema, SchemaNote::default());
        assert_eq!(schema_calls(&schemas), 1);
        // Without schemas, nothing is checked or noted.
        let mut plain = ConsumerState::new(settings(8), t0);
        let bad = named_message("m3", json!("no n"), Some("n.v1"));
        let accepted =
            deliver(plain.on_frames(&frames(&bad), arrival(t0, NOW, true), verifier(&calls)));
        assert_eq!(accepted.schema, SchemaNote::default());
    }
}
