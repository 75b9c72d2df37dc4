//! [`PublisherState`]: every decision a publisher makes about the messages
//! it sends, with no I/O, in the manner of rumqtt's `MqttState`.
//!
//! A transport tells it what happened (a publish was accepted, an ACK
//! message arrived, time passed, the transport became ready to send) and it
//! answers with what to do: send these messages, re-send that one, report
//! this one as acknowledged, timed out or unsent. It holds no socket and no
//! clock (instants are passed in), so every rule is unit-tested with made-up
//! instants, and a second transport drives the same rules from its own loop.
//!
//! ## Sending
//!
//! A message waits until the transport says it may go
//! ([`PublisherState::take_sendable`]: a subscriber for its topic, and for
//! an acknowledged one a path for the ACKs to come back), then is sent; a
//! plain message (no recipients) is then done, an acknowledged one waits
//! for its ACKs. The same bytes are re-sent until every recipient has acked
//! or the deadline passes.
//!
//! ## Re-send timing
//!
//! RFC 6298's timer ([`RttEstimator`]), with one difference: Karn's rule
//! (sample only messages sent once) is not applied. Under load, ACK delay
//! is mostly queueing; the messages that were re-sent are precisely the
//! slow ones, so leaving them out biases the estimate low, which triggers
//! more spurious re-sends, which add load: a collapse the benchmark showed
//! (more re-sends than messages). Every ACK is sampled from the message's
//! *first* send instead. That can only overestimate the round trip, the
//! safe direction: a slightly later re-send after a real loss, never a
//! storm of needless ones.
//!
//! When a re-send falls due, the state also asks whether the missing
//! recipients are merely *behind*: ZeroMQ over TCP keeps order on each
//! connection, so a recipient that is still acking messages sent before
//! this one, and has acked nothing sent after it, is working through a
//! backlog, and a re-send would only lengthen it. Such a re-send is
//! deferred by one timeout. It goes out when there is evidence of loss (the
//! recipient acked a message sent later) or when the recipient has gone
//! quiet (no ACK from it for a whole timeout: lost, slow-joined, or down).
//! Like TCP's fast retransmit, but keyed on what the ACKs say. "Sent
//! before" is the order of first sends, counted, not their instants: a
//! wake-up sends many messages with one `now`, and comparing instants made
//! an ACK for the first of them look like evidence that the rest were lost
//! (thousands of needless re-sends per 20,000 messages at 10 recipients).
//!
//! ## Cost of a wake-up
//!
//! Every message has at most one live timer (its next re-send or its
//! deadline) in a min-heap; a timer that was re-armed or whose message left
//! is deleted lazily, and the heap is rebuilt when stale items outnumber
//! the live ones, so its size stays proportional to what is in flight.
//! Messages waiting to be sent for the first time sit in their own queue.
//! A wake-up therefore looks at the timers that are due and the messages
//! that are waiting, never at the whole table: with 10,000 messages in
//! flight and one due, one entry is touched
//! ([`PublisherState::entries_examined`] counts them).
//!
//! ## ACKs
//!
//! An ACK message is taken apart in this order, each refusal typed
//! ([`AckRefusal`]): decoded by the transport; its topic is the ACK topic;
//! its `msg` is an ACK ([`AckEntry::all_from_msg`]); at least one entry
//! names a message in flight (a cheap test before any signature work: most
//! ACKs on a shared bus are for other publishers); its signature verifies
//! (the transport's closure); then each entry goes to its message's
//! [`AckCollector`], which checks the signer is a declared recipient and
//! the digest matches. In a batch, entries for messages not in flight are
//! other publishers' business and are ignored.

// The events below carry a finished message by value and are handed
// straight to the caller: boxing it would allocate once per message for
// nothing.
#![allow(clippy::large_enum_variant)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::ack::{AckCollector, AckEntry, AckOutcome};
use crate::envelope::{DecodeError, Envelope, SignedPart};
use crate::retransmit::{RetransmitPolicy, RttEstimator};
use crate::validate::{Rejection, Validated, Verify};

/// A message id as the state keeps it: shared between the table, the
/// timer heap and the waiting queue without copying the text.
pub type MsgId = Arc<str>;

/// What a publisher is configured to do.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// The bus's ACK topic.
    pub ack_topic: String,
    /// Re-send timing.
    pub retransmit: RetransmitPolicy,
}

/// A message that left the table: acknowledged, sent (plain), timed out,
/// cancelled or drained.
#[derive(Debug)]
pub struct Finished<T> {
    /// Its id.
    pub msg_id: MsgId,
    /// Its full topic.
    pub topic: String,
    /// Its ACK state at the end; `None` for a plain message.
    pub collector: Option<AckCollector>,
    /// The caller's data for it.
    pub payload: T,
    /// How many times it was sent.
    pub sends: u32,
}

/// A timer that fired.
#[derive(Debug)]
pub enum TimerEvent<T> {
    /// Send this message again (same bytes, same `msg_id`); the re-send is
    /// already recorded, the next timer armed.
    Resend(MsgId),
    /// A re-send was due but every missing recipient is still working
    /// through earlier messages: re-armed for one more timeout instead.
    Deferred(MsgId),
    /// The deadline passed; the message has left the table. A plain
    /// message that expires was never sent (no subscriber); an acknowledged
    /// one names who did not ACK.
    Expired(Finished<T>),
}

/// A message [`PublisherState::take_sendable`] let go.
#[derive(Debug)]
pub enum Sendable<T> {
    /// An acknowledged message: send its bytes (see
    /// [`PublisherState::payload`]); it stays in the table for its ACKs.
    Acked(MsgId),
    /// A plain message: send its bytes; it has left the table, nothing
    /// comes back for it.
    Plain(Finished<T>),
}

/// What one verified ACK entry did to the message it names.
#[derive(Debug)]
pub enum AckEffect<T> {
    /// No message with that id is in flight (late, replayed or foreign).
    Unknown,
    /// The message's collector judged the entry; not complete yet.
    Judged(AckOutcome),
    /// The entry completed the message, which has left the table.
    Completed(Finished<T>),
}

/// Why an ACK message was refused as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum AckRefusal {
    /// It did not decode, or its `msg` is not an ACK (`ack.invalid.<kind>`).
    Invalid(DecodeError),
    /// Its topic is not the ACK topic, only starts with it
    /// (`ack.other_topic`).
    OtherTopic,
    /// None of its entries names a message in flight
    /// (`ack.unknown_msg_id`); its signature was not checked.
    UnknownMsgId,
    /// Its signature or certificate failed (`ack.rejected.<kind>`).
    Rejected(Rejection),
    /// It is not signed, and an ACK must be (`ack.rejected.unsigned`).
    Unsigned,
}

impl AckRefusal {
    /// The counter: group and kind.
    pub fn counter(&self) -> (&'static str, &'static str) {
        match self {
            AckRefusal::Invalid(e) => ("ack.invalid", e.kind()),
            AckRefusal::OtherTopic => ("ack", "other_topic"),
            AckRefusal::UnknownMsgId => ("ack", "unknown_msg_id"),
            AckRefusal::Rejected(r) => ("ack.rejected", r.kind()),
            AckRefusal::Unsigned => ("ack.rejected", "unsigned"),
        }
    }
}

impl std::fmt::Display for AckRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckRefusal::Invalid(e) => write!(f, "{e}"),
            AckRefusal::OtherTopic => f.write_str("not on the ACK topic"),
            AckRefusal::UnknownMsgId => f.write_str("names no message in flight"),
            AckRefusal::Rejected(r) => write!(f, "{r}"),
            AckRefusal::Unsigned => f.write_str("not signed"),
        }
    }
}

/// What one received ACK message came to.
#[derive(Debug)]
pub enum AckVerdict<T> {
    /// Refused as a whole.
    Refused(AckRefusal),
    /// Verified; each entry applied.
    Applied {
        /// Who signed it.
        signer: String,
        /// Whether it carried more than one entry (`ack.batches`).
        batch: bool,
        /// Each entry's id and effect. In a batch, entries for messages not
        /// in flight are left out; a single ACK reports them as
        /// [`AckEffect::Unknown`].
        effects: Vec<(String, AckEffect<T>)>,
    },
}

/// What the ACKs of one recipient say about its progress.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The latest first-send position ([`Entry::first_send_order`]) of a
    /// message it acked.
    latest_acked_send: u64,
    /// When its last counted ACK arrived.
    last_ack_at: Instant,
}

/// Recipients tracked for progress; past this the map is cleared (it only
/// ever holds verified, declared recipients, so this is a safety net).
const MAX_TRACKED_RECIPIENTS: usize = 4096;

#[derive(Debug)]
struct Entry<T> {
    topic: String,
    /// `None` for a plain message.
    collector: Option<AckCollector>,
    payload: T,
    deadline: Instant,
    next_resend: Option<Instant>,
    first_sent: Option<Instant>,
    /// The position of its first send among all first sends of this
    /// publisher (0, 1, 2, ...). Progress is judged on this order, not on
    /// `first_sent`: messages sent in one wake-up share an instant, and a
    /// recipient that acked one of them has not skipped the others.
    first_send_order: Option<u64>,
    sends: u32,
    /// Generation of the entry's one live timer.
    timer_gen: u64,
    /// In the waiting queue (not sent yet).
    waiting: bool,
}

impl<T> Entry<T> {
    /// When its live timer fires: the next re-send, or the deadline.
    fn wakeup(&self) -> Instant {
        match self.next_resend {
            Some(t) if self.sends > 0 && t < self.deadline => t,
            _ => self.deadline,
        }
    }

    fn finish(self, msg_id: MsgId) -> Finished<T> {
        Finished {
            msg_id,
            topic: self.topic,
            collector: self.collector,
            payload: self.payload,
            sends: self.sends,
        }
    }
}

/// Every message a publisher has not finished with, keyed by `msg_id`,
/// with its timers, the queue of those not sent yet, and the round-trip
/// estimate. See the module doc.
#[derive(Debug)]
pub struct PublisherState<T> {
    settings: PublisherSettings,
    entries: HashMap<MsgId, Entry<T>>,
    /// Min-heap of (wake-up, generation, msg_id); stale items are skipped.
    timers: BinaryHeap<Reverse<(Instant, u64, MsgId)>>,
    generation: u64,
    /// Messages not sent yet, in arrival order (stale ids skipped).
    waiting: VecDeque<MsgId>,
    rtt: RttEstimator,
    progress: HashMap<String, Progress>,
    /// First sends recorded so far: the next [`Entry::first_send_order`].
    first_sends: u64,
    examined: u64,
}

impl<T> PublisherState<T> {
    /// An empty table.
    pub fn new(settings: PublisherSettings) -> Self {
        PublisherState {
            rtt: RttEstimator::new(settings.retransmit),
            settings,
            entries: HashMap::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            waiting: VecDeque::new(),
            progress: HashMap::new(),
            first_sends: 0,
            examined: 0,
        }
    }

    /// How many messages are in the table (waiting or in flight).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the timer heap, stale items included (for memory accounting).
    pub fn timer_backlog(&self) -> usize {
        self.timers.len()
    }

    /// How many timer and queue items wake-ups have looked at so far, stale
    /// ones included: the work the wake-ups did, which the module doc
    /// promises is proportional to what was due, not to what is in flight.
    pub fn entries_examined(&self) -> u64 {
        self.examined
    }

    /// The round-trip estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Whether `msg_id` is in the table.
    pub fn contains(&self, msg_id: &str) -> bool {
        self.entries.contains_key(msg_id)
    }

    /// The caller's data for `msg_id`.
    pub fn payload(&self, msg_id: &str) -> Option<&T> {
        self.entries.get(msg_id).map(|e| &e.payload)
    }

    /// Messages waiting to be sent for the first time (stale queue items
    /// aside).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Adds a message that has not been sent yet: acknowledged when
    /// `collector` is given (its `msg_id` is the collector's), plain
    /// otherwise. It expires at `deadline`. Returns the payload back if the
    /// id is already in the table.
    pub fn insert(
        &mut self,
        msg_id: &str,
        topic: String,
        collector: Option<AckCollector>,
        deadline: Instant,
        payload: T,
    ) -> Result<(), T> {
        if self.entries.contains_key(msg_id) {
            return Err(payload);
        }
        let id: MsgId = Arc::from(msg_id);
        let entry = Entry {
            topic,
            collector,
            payload,
            deadline,
            next_resend: None,
            first_sent: None,
            first_send_order: None,
            sends: 0,
            timer_gen: 0,
            waiting: true,
        };
        self.entries.insert(id.clone(), entry);
        self.waiting.push_back(id.clone());
        self.schedule(&id);
        Ok(())
    }

    /// Takes the waiting messages that may go out now, in arrival order, and
    /// records them as sent at `now` (arming their re-send timers): the
    /// caller sends each one's bytes. `ready(topic, wants_acks)` is the
    /// transport's readiness: whether a message on `topic` would reach a
    /// subscriber, and for an acknowledged one whether ACKs can come back.
    /// Those not ready keep waiting, in order. A message whose send then
    /// fails is recovered by its re-send timer, like a lost one.
    pub fn take_sendable(
        &mut self,
        now: Instant,
        mut ready: impl FnMut(&str, bool) -> bool,
    ) -> Vec<Sendable<T>> {
        let mut out = Vec::new();
        let mut still = VecDeque::new();
        while let Some(id) = self.waiting.pop_front() {
            self.examined += 1;
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if !entry.waiting {
                // A stale copy: the id left and came back meanwhile.
                continue;
            }
            if !ready(&entry.topic, entry.collector.is_some()) {
                still.push_back(id);
                continue;
            }
            entry.waiting = false;
            if entry.collector.is_none() {
                if let Some(mut entry) = self.entries.remove(&id) {
                    entry.sends = 1;
                    out.push(Sendable::Plain(entry.finish(id)));
                }
                continue;
            }
            self.record_send(&id, now);
            out.push(Sendable::Acked(id));
        }
        self.waiting = still;
        self.compact_timers();
        out
    }

    /// Counts one send of `msg_id` at `now` and arms its next re-send.
    fn record_send(&mut self, msg_id: &MsgId, now: Instant) {
        let Some(entry) = self.entries.get_mut(msg_id) else {
            return;
        };
        entry.sends += 1;
        entry.first_sent.get_or_insert(now);
        if entry.first_send_order.is_none() {
            entry.first_send_order = Some(self.first_sends);
            self.first_sends += 1;
        }
        if let Some(collector) = &mut entry.collector {
            collector.mark_sent(now);
        }
        entry.next_resend = now.checked_add(self.rtt.backoff(entry.sends));
        self.schedule(msg_id);
    }

    /// Removes a message (its caller gave up): it is never sent again.
    pub fn remove(&mut self, msg_id: &str) -> Option<Finished<T>> {
        let (id, entry) = self.entries.remove_entry(msg_id)?;
        self.compact_timers();
        Some(entry.finish(id))
    }

    /// Empties the table (the transport is shutting down).
    pub fn drain(&mut self) -> Vec<Finished<T>> {
        self.timers.clear();
        self.waiting.clear();
        self.entries
            .drain()
            .map(|(id, entry)| entry.finish(id))
            .collect()
    }

    /// Takes one received ACK message apart (see the module doc):
    /// `decoded` is what the transport's decoder made of it, `verify`
    /// checks its signature over the given signed part (called only if an
    /// entry names a message in flight).
    pub fn on_ack_message<V: Verify>(
        &mut self,
        decoded: Result<Envelope, DecodeError>,
        now: Instant,
        verify: V,
    ) -> AckVerdict<T> {
        self.ack_decided(decoded, None, now, verify)
    }

    /// [`PublisherState::on_ack_message`] for an ACK the transport decoded
    /// and whose [`Envelope::signed_part`] it computed already (to check a
    /// burst of ACKs' signatures together), so that canonical JSON is
    /// computed once per ACK.
    pub fn on_signed_ack_message<V: Verify>(
        &mut self,
        envelope: Envelope,
        signed: SignedPart,
        now: Instant,
        verify: V,
    ) -> AckVerdict<T> {
        self.ack_decided(Ok(envelope), Some(signed), now, verify)
    }

    /// Whether [`PublisherState::on_ack_message`] would check the
    /// signature of `envelope` if it came now: it is on the ACK topic, its
    /// entries are well formed, and one of them names a message in flight.
    /// Read-only. A transport that checks a burst of ACKs' signatures
    /// together asks this first, so that ACKs for nothing in flight (other
    /// publishers' ACKs, on a shared bus) are never verified.
    pub fn would_verify_ack(&self, envelope: &Envelope) -> bool {
        envelope.topic() == self.settings.ack_topic
            && AckEntry::all_from_msg(envelope.msg())
                .is_ok_and(|entries| entries.iter().any(|e| self.contains(&e.ack_msg_id)))
    }

    /// The rules of [`PublisherState::on_ack_message`], with the signed
    /// part when the transport computed it.
    fn ack_decided<V: Verify>(
        &mut self,
        decoded: Result<Envelope, DecodeError>,
        signed: Option<SignedPart>,
        now: Instant,
        verify: V,
    ) -> AckVerdict<T> {
        let refuse = AckVerdict::Refused;
        let envelope = match decoded {
            Ok(e) => e,
            Err(e) => return refuse(AckRefusal::Invalid(e)),
        };
        if envelope.topic() != self.settings.ack_topic {
            // A subscription is a prefix: a longer topic got through.
            return refuse(AckRefusal::OtherTopic);
        }
        let entries = match AckEntry::all_from_msg(envelope.msg()) {
            Ok(entries) => entries,
            Err(e) => return refuse(AckRefusal::Invalid(e)),
        };
        if !entries.iter().any(|e| self.contains(&e.ack_msg_id)) {
            return refuse(AckRefusal::UnknownMsgId);
        }
        let signed = match signed.map_or_else(|| envelope.signed_part(), Ok) {
            Ok(s) => s,
            Err(e) => return refuse(AckRefusal::Rejected(Rejection::Canonical(e))),
        };
        let signer = match verify(&envelope, &signed) {
            Ok(Validated {
                signer: Some(signer),
                ..
            }) => signer,
            Ok(_) => return refuse(AckRefusal::Unsigned),
            Err(r) => return refuse(AckRefusal::Rejected(r)),
        };
        let batch = entries.len() > 1;
        let mut effects = Vec::with_capacity(entries.len());
        for entry in entries {
            let effect = self.on_ack(&signer, &entry, now);
            if batch && matches!(effect, AckEffect::Unknown) {
                continue;
            }
            effects.push((entry.ack_msg_id, effect));
        }
        AckVerdict::Applied {
            signer,
            batch,
            effects,
        }
    }

    /// Applies one entry of an ACK whose signature has been verified to be
    /// by `signer`.
    pub fn on_ack(&mut self, signer: &str, ack: &AckEntry, now: Instant) -> AckEffect<T> {
        let Some(entry) = self.entries.get_mut(ack.ack_msg_id.as_str()) else {
            return AckEffect::Unknown;
        };
        let Some(collector) = &mut entry.collector else {
            // A plain message is never in the table once sent, and nobody
            // can ACK what was not sent.
            return AckEffect::Unknown;
        };
        let outcome = collector.on_ack(signer, ack, now);
        if let AckOutcome::Counted { complete } = outcome {
            // From the first send, whichever copy was acked: see the module doc.
            if let (Some(first), Some(order)) = (entry.first_sent, entry.first_send_order) {
                self.rtt.sample(now.saturating_duration_since(first));
                if self.progress.len() >= MAX_TRACKED_RECIPIENTS
                    && !self.progress.contains_key(signer)
                {
                    self.progress.clear();
                }
                let p = self.progress.entry(signer.to_owned()).or_insert(Progress {
                    latest_acked_send: order,
                    last_ack_at: now,
                });
                p.latest_acked_send = p.latest_acked_send.max(order);
                p.last_ack_at = now;
            }
            if complete {
                if let Some(done) = self.remove(&ack.ack_msg_id) {
                    return AckEffect::Completed(done);
                }
            }
        }
        AckEffect::Judged(outcome)
    }

    /// When the next timer fires, if any message is in the table.
    pub fn next_wakeup(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, generation, msg_id))) = self.timers.peek() {
            match self.entries.get(msg_id) {
                Some(entry) if entry.timer_gen == *generation => return Some(*at),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Fires every timer due at `now`, earliest first: re-sends (already
    /// recorded; the caller sends the bytes), deferrals and expiries. Only
    /// the timers that are due are looked at.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<TimerEvent<T>> {
        let mut events = Vec::new();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, generation, msg_id))) = self.timers.pop() else {
                break;
            };
            self.examined += 1;
            let Some(entry) = self.entries.get(&msg_id) else {
                continue;
            };
            if entry.timer_gen != generation {
                continue;
            }
            if entry.deadline <= now {
                // The deadline wins over a re-send due at the same time.
                if let Some(done) = self.remove(&msg_id) {
                    events.push(TimerEvent::Expired(done));
                }
            } else if entry.sends > 0 {
                if self.is_just_behind(entry, now) {
                    let rto = self.rtt.rto();
                    if let Some(entry) = self.entries.get_mut(&msg_id) {
                        entry.next_resend = now.checked_add(rto);
                    }
                    self.schedule(&msg_id);
                    events.push(TimerEvent::Deferred(msg_id));
                } else {
                    self.record_send(&msg_id, now);
                    events.push(TimerEvent::Resend(msg_id));
                }
            } else {
                // Not sent yet (waiting for readiness): only the deadline.
                self.schedule(&msg_id);
            }
        }
        events
    }

    /// Whether every recipient still missing from `entry` is busy acking
    /// messages sent before it (see the module doc): then a re-send would
    /// only add to its backlog.
    fn is_just_behind(&self, entry: &Entry<T>, now: Instant) -> bool {
        let (Some(first), Some(collector)) = (entry.first_send_order, &entry.collector) else {
            return false;
        };
        let quiet_after = self.rtt.rto();
        collector
            .missing()
            .iter()
            .all(|r| match self.progress.get(r) {
                Some(p) => {
                    p.latest_acked_send < first
                        && now.saturating_duration_since(p.last_ack_at) < quiet_after
                }
                None => false,
            })
    }

    /// Arms the one live timer of `msg_id` (older ones become stale).
    fn schedule(&mut self, msg_id: &MsgId) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(entry) = self.entries.get_mut(msg_id) {
            entry.timer_gen = generation;
            self.timers
                .push(Reverse((entry.wakeup(), generation, msg_id.clone())));
        }
        self.compact_timers();
    }

    /// Rebuilds the heap when stale items dominate, keeping memory bounded
    /// by the number of messages actually in the table.
    fn compact_timers(&mut self) {
        if self.timers.len() > 4 * self.entries.len() + 1024 {
            let live: Vec<_> = self
                .timers
                .drain()
                .filter(|Reverse((_, g, id))| {
                    self.entries.get(id).is_some_and(|e| e.timer_gen == *g)
                })
                .collect();
            self.timers = live.into();
        }
        if self.waiting.len() > 4 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.waiting
                .retain(|id| entries.get(id).is_some_and(|e| e.waiting));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckBody, DigestClaim};
    use crate::auth::Signer;
    use crate::envelope::Draft;
    use crate::envelope::SignedPart;
    use crate::testing::{check_named, Named};
    use crate::Digest;
    use std::time::Duration;

    const ACK_TOPIC: &str = "t.dev.gilmsg.ack";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ack(id: &str) -> AckEntry {
        AckEntry {
            ack_msg_id: id.into(),
            digest: DigestClaim::Absent,
            signer: None,
        }
    }

    fn d() -> Digest {
        Digest::of_signed_part("body")
    }

    fn state() -> PublisherState<&'static str> {
        PublisherState::new(PublisherSettings {
            ack_topic: ACK_TOPIC.into(),
            retransmit: RetransmitPolicy {
                initial_rto: ms(100),
                min_rto: ms(10),
                max_rto: ms(400),
            },
        })
    }

    /// Inserts an acknowledged message for `recipients`.
    fn insert(
        s: &mut PublisherState<&'static str>,
        id: &str,
        recipients: &[&str],
        deadline: Instant,
    ) {
        let collector = AckCollector::new(id, d(), recipients.iter().copied());
        s.insert(id, "t.dev.app.x".into(), Some(collector), deadline, "p")
            .unwrap();
    }

    /// Sends every waiting message at `now`, the transport being ready.
    fn send_all(s: &mut PublisherState<&'static str>, now: Instant) -> Vec<String> {
        s.take_sendable(now, |_, _| true)
            .into_iter()
            .map(|x| match x {
                Sendable::Acked(id) => id.to_string(),
                Sendable::Plain(done) => format!("plain:{}", done.msg_id),
            })
            .collect()
    }

    #[test]
    fn completes_on_last_ack() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m", &["a", "b"], t0 + Duration::from_secs(1));
        assert_eq!(send_all(&mut t, t0), ["m"]);
        assert!(matches!(
            t.on_ack("a", &ack("m"), t0),
            AckEffect::Judged(AckOutcome::Counted { complete: false })
        ));
        assert!(matches!(
            t.on_ack("z", &ack("m"), t0),
            AckEffect::Judged(AckOutcome::NotARecipient)
        ));
        assert!(matches!(
            t.on_ack("a", &ack("other"), t0),
            AckEffect::Unknown
        ));
        match t.on_ack("b", &ack("m"), t0 + ms(3)) {
            AckEffect::Completed(done) => {
                assert_eq!(done.payload, "p");
                assert_eq!(done.sends, 1);
                assert!(done.collector.unwrap().is_complete());
            }
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
        assert!(t.next_wakeup().is_none());
        assert!(matches!(t.on_ack("b", &ack("m"), t0), AckEffect::Unknown));
    }

    #[test]
    fn resends_with_backoff_then_expires() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m", &["a"], t0 + ms(1000));
        send_all(&mut t, t0);
        // initial rto 100ms, then 200, 400, capped at 400
        let mut now;
        let mut resend_times = Vec::new();
        loop {
            now = t.next_wakeup().expect("timer armed");
            match t.poll_timers(now).into_iter().next() {
                Some(TimerEvent::Resend(_)) => resend_times.push(now - t0),
                Some(TimerEvent::Expired(done)) => {
                    assert_eq!(done.collector.unwrap().missing(), vec!["a"]);
                    assert_eq!(done.sends, 4);
                    break;
                }
                Some(TimerEvent::Deferred(id)) => {
                    panic!("{id} deferred with no ACK traffic at all")
                }
                None => panic!("timer fired without event"),
            }
        }
        assert_eq!(now - t0, ms(1000));
        let ms: Vec<u128> = resend_times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 300, 700]);
    }

    #[test]
    fn a_message_waits_for_readiness_and_an_unsent_one_only_expires() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m", &["a"], t0 + ms(50));
        t.insert("plain", "t.dev.other.x".into(), None, t0 + ms(60), "q")
            .unwrap();
        // No subscriber for either topic: nothing goes, nothing is lost.
        assert!(t.take_sendable(t0, |_, _| false).is_empty());
        assert_eq!(t.waiting(), 2);
        // A subscriber for the plain one's topic, but no ACK path: only the
        // plain message goes (it needs no ACK path), and it is done.
        let sent = t.take_sendable(t0, |topic, acked| !acked && topic == "t.dev.other.x");
        assert!(
            matches!(&sent[..], [Sendable::Plain(done)] if &*done.msg_id == "plain" && done.sends == 1)
        );
        assert_eq!(t.len(), 1);
        assert!(t.poll_timers(t0 + ms(49)).is_empty());
        let events = t.poll_timers(t0 + ms(50));
        assert!(matches!(&events[..], [TimerEvent::Expired(d)] if d.sends == 0));
        // Nothing left to send: the expired one left the queue too.
        assert!(t.take_sendable(t0 + ms(51), |_, _| true).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn duplicate_insert_is_refused() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m", &["a"], t0);
        assert_eq!(t.insert("m", "t".into(), None, t0, "q"), Err("q"));
    }

    #[test]
    fn rtt_adapts_and_samples_resent_messages_from_their_first_send() {
        let t0 = Instant::now();
        let mut t = state();
        for i in 0..20 {
            let id = format!("m{i}");
            insert(&mut t, &id, &["a"], t0 + Duration::from_secs(5));
            send_all(&mut t, t0);
            t.on_ack("a", &ack(&id), t0 + ms(2));
        }
        let srtt = t.rtt().srtt().unwrap();
        assert!(srtt >= ms(1) && srtt <= ms(3), "{srtt:?}");
        assert_eq!(t.rtt().rto(), ms(10));
        insert(&mut t, "r", &["a"], t0 + Duration::from_secs(5));
        // A message re-sent and acked late raises the estimate (measured
        // from its first send): re-sends back off instead of piling up.
        send_all(&mut t, t0);
        // Polled once "a" has been quiet for a timeout (its last ACK at
        // 2 ms), so the re-send is not deferred as "just behind".
        let events = t.poll_timers(t0 + ms(12));
        assert!(matches!(&events[..], [TimerEvent::Resend(id)] if &**id == "r"));
        t.on_ack("a", &ack("r"), t0 + ms(200));
        let raised = t.rtt().srtt().unwrap();
        assert!(raised > srtt + ms(20), "{raised:?}");
        assert!(t.rtt().rto() > ms(100), "{:?}", t.rtt().rto());
    }

    #[test]
    fn resends_wait_for_a_recipient_that_is_only_behind_and_go_on_evidence_of_loss() {
        let t0 = Instant::now();
        let mut t = state();
        let deadline = t0 + Duration::from_secs(10);
        // m0 sent first, then m1 and m2; the recipient is busy with older work.
        for (i, id) in ["m0", "m1", "m2"].iter().enumerate() {
            insert(&mut t, id, &["a"], deadline);
            send_all(&mut t, t0 + ms(i as u64));
        }
        // An ACK for m0 at 99 ms: "a" is alive and acking messages sent
        // before m1 and m2.
        t.on_ack("a", &ack("m0"), t0 + ms(99));
        // m1's timer fires (rto is 100 ms before the sample; now larger):
        // deferred, not re-sent.
        let first = t.next_wakeup().unwrap();
        let events = t.poll_timers(first);
        assert!(
            matches!(&events[..], [TimerEvent::Deferred(id), ..] if &**id == "m1"),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(e, TimerEvent::Resend(_))),
            "{events:?}"
        );
        // A deferral is one timeout: the re-send is armed again, not dropped.
        let again = t.next_wakeup().unwrap();
        assert!(again > first && again <= first + t.rtt().rto(), "{again:?}");
        // Evidence of loss: m2 (sent after m1) is acked, m1 is not.
        t.on_ack("a", &ack("m2"), first + ms(1));
        let next = t.next_wakeup().unwrap();
        let events = t.poll_timers(next);
        assert!(
            matches!(&events[..], [TimerEvent::Resend(id)] if &**id == "m1"),
            "{events:?}"
        );
    }

    #[test]
    fn messages_sent_at_one_instant_are_ordered_for_the_behind_rule() {
        // One wake-up sends a window at one `now`; the recipient works
        // through it in order. An ACK for the first is no evidence that the
        // second was lost.
        let t0 = Instant::now();
        let mut t = state();
        let deadline = t0 + Duration::from_secs(10);
        insert(&mut t, "m0", &["a"], deadline);
        insert(&mut t, "m1", &["a"], deadline);
        assert_eq!(send_all(&mut t, t0), ["m0", "m1"]);
        t.on_ack("a", &ack("m0"), t0 + ms(99));
        let due = t.next_wakeup().unwrap();
        let events = t.poll_timers(due);
        assert!(
            matches!(&events[..], [TimerEvent::Deferred(id)] if &**id == "m1"),
            "{events:?}"
        );
    }

    #[test]
    fn a_quiet_recipient_gets_its_resend() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "old", &["a"], t0 + Duration::from_secs(10));
        send_all(&mut t, t0);
        t.on_ack("a", &ack("old"), t0 + ms(1));
        insert(&mut t, "m", &["a"], t0 + Duration::from_secs(10));
        send_all(&mut t, t0 + ms(2));
        // Long after the last ACK from "a": it has gone quiet, so re-send.
        let events = t.poll_timers(t0 + Duration::from_secs(2));
        assert!(
            matches!(&events[..], [TimerEvent::Resend(id)] if &**id == "m"),
            "{events:?}"
        );
    }

    #[test]
    fn a_wakeup_with_one_message_due_among_ten_thousand_touches_one_entry() {
        let t0 = Instant::now();
        let mut t = state();
        let deadline = t0 + Duration::from_secs(60);
        insert(&mut t, "early", &["a"], deadline);
        send_all(&mut t, t0);
        for i in 0..10_000 {
            insert(&mut t, &format!("m{i}"), &["a"], deadline);
        }
        send_all(&mut t, t0 + ms(50));
        assert_eq!(t.len(), 10_001);
        let before = t.entries_examined();
        // "early" is due at 100 ms; the others at 150 ms.
        let events = t.poll_timers(t0 + ms(120));
        assert!(matches!(&events[..], [TimerEvent::Resend(id)] if &**id == "early"));
        assert_eq!(t.entries_examined() - before, 1);
        // Nothing waits to be sent: a pass over the queue costs nothing.
        let before = t.entries_examined();
        assert!(t.take_sendable(t0 + ms(120), |_, _| true).is_empty());
        assert_eq!(t.entries_examined(), before);
        assert_eq!(t.next_wakeup(), Some(t0 + ms(150)));
    }

    #[test]
    fn cancelled_and_acked_messages_never_fire() {
        let t0 = Instant::now();
        let mut t = state();
        for i in 0..6 {
            insert(
                &mut t,
                &format!("m{i}"),
                &["a"],
                t0 + Duration::from_secs(1),
            );
        }
        t.insert(
            "plain",
            "t.dev.app.x".into(),
            None,
            t0 + Duration::from_secs(1),
            "q",
        )
        .unwrap();
        send_all(&mut t, t0);
        // Plain ones leave once sent; m0..m2 are acked, m3..m4 cancelled.
        for i in 0..3 {
            assert!(matches!(
                t.on_ack("a", &ack(&format!("m{i}")), t0 + ms(1)),
                AckEffect::Completed(_)
            ));
        }
        for i in 3..5 {
            assert!(t.remove(&format!("m{i}")).is_some());
        }
        // A cancelled message that never went out is not sent either.
        insert(&mut t, "unsent", &["a"], t0 + Duration::from_secs(1));
        assert!(t.remove("unsent").is_some());
        assert!(t.take_sendable(t0, |_, _| true).is_empty());
        // From here to past every deadline, only m5 ever fires.
        let mut fired = Vec::new();
        while let Some(at) = t.next_wakeup() {
            for event in t.poll_timers(at) {
                fired.push(match event {
                    TimerEvent::Resend(id) | TimerEvent::Deferred(id) => id.to_string(),
                    TimerEvent::Expired(done) => format!("expired:{}", done.msg_id),
                });
            }
        }
        assert!(fired.iter().all(|f| f.ends_with("m5")), "{fired:?}");
        assert_eq!(fired.last().map(String::as_str), Some("expired:m5"));
    }

    #[test]
    fn the_deadline_wins_over_a_resend_due_at_the_same_time_and_events_come_in_time_order() {
        let t0 = Instant::now();
        let mut t = state();
        // "a" would be re-sent at 100 ms, which is also its deadline.
        insert(&mut t, "a", &["r"], t0 + ms(100));
        // "b" is re-sent at 100 ms (deadline later), "c" expires at 90 ms.
        insert(&mut t, "b", &["r"], t0 + ms(500));
        insert(&mut t, "c", &["r"], t0 + ms(90));
        send_all(&mut t, t0);
        let events: Vec<String> = t
            .poll_timers(t0 + ms(100))
            .into_iter()
            .map(|e| match e {
                TimerEvent::Resend(id) => format!("resend:{id}"),
                TimerEvent::Deferred(id) => format!("deferred:{id}"),
                TimerEvent::Expired(done) => format!("expired:{}", done.msg_id),
            })
            .collect();
        assert_eq!(events[0], "expired:c");
        assert!(events.contains(&"expired:a".to_owned()), "{events:?}");
        assert!(events.contains(&"resend:b".to_owned()), "{events:?}");
        assert_eq!(events.len(), 3);
        // A re-send scheduled past the deadline is never emitted: the
        // deadline comes first.
        let mut t = state();
        insert(&mut t, "d", &["r"], t0 + ms(150));
        send_all(&mut t, t0);
        let events = t.poll_timers(t0 + ms(100));
        assert!(matches!(&events[..], [TimerEvent::Resend(_)]));
        // Next re-send would be at 300 ms; the deadline at 150 ms fires.
        assert_eq!(t.next_wakeup(), Some(t0 + ms(150)));
        let events = t.poll_timers(t0 + ms(400));
        assert!(matches!(&events[..], [TimerEvent::Expired(done)] if done.sends == 2));
    }

    #[test]
    fn timer_heap_stays_bounded() {
        let t0 = Instant::now();
        let mut t = state();
        for i in 0..10_000 {
            let id = format!("m{i}");
            insert(&mut t, &id, &["a"], t0 + Duration::from_secs(60));
            send_all(&mut t, t0);
            t.on_ack("a", &ack(&id), t0);
        }
        assert!(t.is_empty());
        assert!(t.timer_backlog() <= 1024 + 1, "{}", t.timer_backlog());
    }

    fn verify(m: &Envelope, _: &SignedPart) -> Result<Validated, Rejection> {
        check_named(m)
    }

    fn ack_message(topic: &str, bodies: &[AckBody], signer: Option<&'static str>) -> Envelope {
        let named = signer.map(Named);
        Draft {
            topic: topic.into(),
            msg: AckBody::batch_to_msg(&bodies[0], &bodies[1..]),
            msg_id: "ack".into(),
            i: 1,
            timestamp: 0,
            username: "u".into(),
            wants_ack: false,
        }
        .build(named.as_ref().map(|n| n as &dyn Signer))
        .unwrap()
    }

    fn body(id: &str) -> AckBody {
        AckBody {
            ack_msg_id: id.into(),
            ack_digest: Some(d()),
            ack_signer: None,
        }
    }

    fn refusal<T: std::fmt::Debug>(verdict: AckVerdict<T>) -> (&'static str, &'static str) {
        match verdict {
            AckVerdict::Refused(r) => r.counter(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// `would_verify_ack` (asked by transports that check a burst of ACKs
    /// together) says yes exactly when `on_ack_message` then calls the
    /// verifier, and `on_signed_ack_message` decides as `on_ack_message`.
    #[test]
    fn would_verify_ack_answers_as_the_rules_then_decide() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m1", &["rcpt"], t0 + Duration::from_secs(5));
        insert(&mut t, "m2", &["rcpt"], t0 + Duration::from_secs(5));
        send_all(&mut t, t0);
        let acks = [
            ack_message("t.dev.gilmsg.ack.more", &[body("m1")], Some("rcpt")),
            ack_message(ACK_TOPIC, &[body("elsewhere")], Some("rcpt")),
            ack_message(ACK_TOPIC, &[body("elsewhere"), body("m1")], Some("rcpt")),
            ack_message(ACK_TOPIC, &[body("m1")], Some("rcpt")),
            ack_message(ACK_TOPIC, &[body("m2")], None),
        ];
        let mut said = Vec::new();
        for (n, ack) in acks.into_iter().enumerate() {
            let asked = t.would_verify_ack(&ack);
            let calls = std::cell::Cell::new(0);
            let counted = |m: &Envelope, s: &SignedPart| {
                calls.set(calls.get() + 1);
                verify(m, s)
            };
            let signed = ack.signed_part().unwrap();
            let outcome = if n % 2 == 0 {
                t.on_signed_ack_message(ack, signed, t0, counted)
            } else {
                t.on_ack_message(Ok(ack), t0, counted)
            };
            assert_eq!(asked, calls.get() == 1, "ACK {n}: {outcome:?}");
            said.push(asked);
        }
        // The third completes m1: the fourth then names nothing in flight.
        assert_eq!(said, [false, false, true, false, true]);
        assert!(!t.is_empty(), "m2 waits: its ACK was unsigned");
    }

    #[test]
    fn ack_messages_are_checked_cheap_first_and_batches_ignore_foreign_entries() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "m1", &["rcpt"], t0 + Duration::from_secs(5));
        insert(&mut t, "m2", &["rcpt"], t0 + Duration::from_secs(5));
        send_all(&mut t, t0);
        let never = |_: &Envelope, _: &SignedPart| -> Result<Validated, Rejection> {
            panic!("verified an ACK that names nothing in flight")
        };
        assert_eq!(
            refusal(t.on_ack_message(Err(DecodeError::NotJson("x".into())), t0, never)),
            ("ack.invalid", "not_json")
        );
        let longer = ack_message("t.dev.gilmsg.ack.more", &[body("m1")], Some("rcpt"));
        assert_eq!(
            refusal(t.on_ack_message(Ok(longer), t0, never)),
            ("ack", "other_topic")
        );
        let foreign = ack_message(ACK_TOPIC, &[body("elsewhere")], Some("rcpt"));
        assert_eq!(
            refusal(t.on_ack_message(Ok(foreign), t0, never)),
            ("ack", "unknown_msg_id")
        );
        let unsigned = ack_message(ACK_TOPIC, &[body("m1")], None);
        assert_eq!(
            refusal(t.on_ack_message(Ok(unsigned), t0, verify)),
            ("ack.rejected", "unsigned")
        );
        let mut forged = ack_message(ACK_TOPIC, &[body("m1")], Some("rcpt"))
            .body()
            .clone();
        forged.insert("signature".into(), serde_json::json!("by nobody"));
        let forged = Envelope::parse_body(&serde_json::to_vec(&forged).unwrap(), 1 << 20).unwrap();
        assert_eq!(
            refusal(t.on_ack_message(Ok(forged), t0, verify)),
            ("ack.rejected", "bad_signature")
        );
        // A batch: one entry ours, one another publisher's (ignored), one
        // for m2 from the right signer.
        let batch = ack_message(
            ACK_TOPIC,
            &[body("m1"), body("elsewhere"), body("m2")],
            Some("rcpt"),
        );
        match t.on_ack_message(Ok(batch), t0 + ms(1), verify) {
            AckVerdict::Applied {
                signer,
                batch,
                effects,
            } => {
                assert_eq!(signer, "rcpt");
                assert!(batch);
                let ids: Vec<&str> = effects.iter().map(|(id, _)| id.as_str()).collect();
                assert_eq!(ids, ["m1", "m2"]);
                assert!(effects
                    .iter()
                    .all(|(_, e)| matches!(e, AckEffect::Completed(_))));
            }
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
        // A single ACK for something no longer in flight is reported.
        insert(&mut t, "m3", &["rcpt"], t0 + Duration::from_secs(5));
        let late = ack_message(ACK_TOPIC, &[body("m3")], Some("intruder"));
        match t.on_ack_message(Ok(late), t0, verify) {
            AckVerdict::Applied {
                effects,
                batch: false,
                ..
            } => {
                assert!(matches!(
                    &effects[..],
                    [(_, AckEffect::Judged(AckOutcome::NotARecipient))]
                ));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drain_returns_everything_once() {
        let t0 = Instant::now();
        let mut t = state();
        insert(&mut t, "sent", &["a"], t0 + Duration::from_secs(1));
        send_all(&mut t, t0);
        insert(&mut t, "waiting", &["a"], t0 + Duration::from_secs(1));
        t.insert("plain", "t".into(), None, t0 + Duration::from_secs(1), "q")
            .unwrap();
        let mut ids: Vec<String> = t
            .drain()
            .into_iter()
            .map(|f| f.msg_id.to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["plain", "sent", "waiting"]);
        assert!(t.is_empty() && t.next_wakeup().is_none());
        assert!(t.take_sendable(t0, |_, _| true).is_empty());
    }
}
