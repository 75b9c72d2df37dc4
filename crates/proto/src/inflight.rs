//! The publisher's table of messages awaiting ACKs, with re-send timers.
//!
//! Sans-IO in the manner of rumqtt's `MqttState`: the I/O layer tells this
//! table what happened (a message was sent, an ACK arrived, time passed) and
//! it answers with what to do (re-send this id, report that one as done or
//! timed out). It never touches a socket or a clock of its own, so every path
//! is unit-testable with made-up instants.
//!
//! Re-send timing follows TCP's retransmission timer (RFC 6298): a smoothed
//! round-trip estimate, a timeout of `srtt + 4 * rttvar` clamped to
//! `[min_rto, max_rto]`, doubled for every further re-send of the same
//! message. That keeps re-sends rare when the bus is healthy but slow (they
//! would only add load) and fast when a message is lost to ZeroMQ's
//! slow-joiner drop.
//!
//! Unlike TCP we do not apply Karn's rule (sample only messages sent once).
//! Under load, ACK delay is mostly queueing; the messages that were re-sent
//! are precisely the slow ones, so leaving them out biases the estimate low,
//! which triggers more spurious re-sends, which add load: a collapse the
//! benchmark showed (more re-sends than messages). Every ACK is sampled from
//! the message's *first* send instead. That can only overestimate the round
//! trip, the safe direction: a slightly later re-send after a real loss,
//! never a storm of needless ones.
//!
//! When a re-send timer fires, the table also asks whether the missing
//! recipients are merely *behind*: ZeroMQ over TCP keeps order on each
//! connection, so a recipient that is still acking messages sent before
//! this one, and has acked nothing sent after it, is working through a
//! backlog, and a re-send would only lengthen it. Such a re-send is deferred
//! by one timeout. It goes out when there is evidence of loss (the
//! recipient acked a message sent later) or when the recipient has gone
//! quiet (no ACK from it for a whole timeout: lost, slow-joined, or down).
//! Like TCP's fast retransmit, but keyed on what the ACKs say.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::ack::{AckBody, AckCollector, AckOutcome};

/// Bounds for the re-send timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitPolicy {
    /// Timeout before the first round-trip sample.
    pub initial_rto: Duration,
    /// Lower bound of the timeout.
    pub min_rto: Duration,
    /// Upper bound of the timeout (also caps the backoff).
    pub max_rto: Duration,
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        RetransmitPolicy {
            initial_rto: Duration::from_millis(50),
            min_rto: Duration::from_millis(25),
            max_rto: Duration::from_millis(1000),
        }
    }
}

/// Smoothed round-trip time estimator (RFC 6298 section 2).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    policy: RetransmitPolicy,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// An estimator with no samples yet.
    pub fn new(policy: RetransmitPolicy) -> Self {
        RttEstimator {
            policy,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// Feeds one round-trip sample.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = if srtt > rtt { srtt - rtt } else { rtt - srtt };
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed round-trip time, once sampled.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The current re-send timeout.
    pub fn rto(&self) -> Duration {
        let raw = match self.srtt {
            None => self.policy.initial_rto,
            Some(srtt) => srtt + self.rttvar * 4,
        };
        raw.clamp(self.policy.min_rto, self.policy.max_rto)
    }

    /// The timeout for the n-th re-send (n = 1 for the first), doubling.
    pub fn backoff(&self, resend: u32) -> Duration {
        let factor = 1u32 << resend.saturating_sub(1).min(16);
        self.rto().saturating_mul(factor).min(self.policy.max_rto)
    }
}

/// A message that left the table: completed, timed out or cancelled.
#[derive(Debug)]
pub struct Finished<T> {
    /// The ACK state at the end.
    pub collector: AckCollector,
    /// The caller's data for this message.
    pub payload: T,
    /// How many times it was sent.
    pub sends: u32,
}

/// What [`InFlight::on_ack`] made of a verified ACK.
#[derive(Debug)]
pub enum AckEffect<T> {
    /// No message with that id is in flight (stale, replayed or foreign).
    Unknown,
    /// The message's collector judged the ACK; not complete yet.
    Judged(AckOutcome),
    /// The ACK completed the message, which has left the table.
    Completed(Finished<T>),
}

/// A timer that fired.
#[derive(Debug)]
pub enum TimerEvent<T> {
    /// Send this message again (same bytes, same `msg_id`).
    Resend(String),
    /// The deadline passed; the message has left the table.
    Expired(Finished<T>),
    /// A re-send was due but every missing recipient is still working
    /// through earlier messages: re-armed for one more timeout instead.
    Deferred(String),
}

/// What the ACKs of one recipient say about its progress.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The latest first-send time of a message it acked.
    latest_acked_send: Instant,
    /// When its last counted ACK arrived.
    last_ack_at: Instant,
}

/// Recipients tracked for progress; past this the map is cleared (it only
/// ever holds verified, declared recipients, so this is a safety net).
const MAX_TRACKED_RECIPIENTS: usize = 4096;

#[derive(Debug)]
struct Entry<T> {
    collector: AckCollector,
    payload: T,
    deadline: Instant,
    next_resend: Option<Instant>,
    first_sent: Option<Instant>,
    sends: u32,
    timer_gen: u64,
}

impl<T> Entry<T> {
    fn wakeup(&self) -> Instant {
        match self.next_resend {
            Some(t) if t < self.deadline => t,
            _ => self.deadline,
        }
    }
}

/// Messages awaiting ACKs, keyed by `msg_id`.
#[derive(Debug)]
pub struct InFlight<T> {
    entries: HashMap<String, Entry<T>>,
    /// Min-heap of (wake-up, generation, msg_id); stale items are skipped.
    timers: BinaryHeap<Reverse<(Instant, u64, String)>>,
    generation: u64,
    rtt: RttEstimator,
    progress: HashMap<String, Progress>,
}

impl<T> InFlight<T> {
    /// An empty table.
    pub fn new(policy: RetransmitPolicy) -> Self {
        InFlight {
            entries: HashMap::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            rtt: RttEstimator::new(policy),
            progress: HashMap::new(),
        }
    }

    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the timer heap, stale items included (for memory accounting).
    pub fn timer_backlog(&self) -> usize {
        self.timers.len()
    }

    /// The round-trip estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Whether `msg_id` is in flight.
    pub fn contains(&self, msg_id: &str) -> bool {
        self.entries.contains_key(msg_id)
    }

    /// The caller's data for `msg_id`.
    pub fn payload(&self, msg_id: &str) -> Option<&T> {
        self.entries.get(msg_id).map(|e| &e.payload)
    }

    /// Adds a message that has not been sent yet; it expires at `deadline`.
    /// Returns the payload back if the id is already in flight.
    pub fn insert(
        &mut self,
        collector: AckCollector,
        deadline: Instant,
        payload: T,
    ) -> Result<(), T> {
        let msg_id = collector.msg_id().to_owned();
        if self.entries.contains_key(&msg_id) {
            return Err(payload);
        }
        let entry = Entry {
            collector,
            payload,
            deadline,
            next_resend: None,
            first_sent: None,
            sends: 0,
            timer_gen: 0,
        };
        self.entries.insert(msg_id.clone(), entry);
        self.schedule(&msg_id);
        Ok(())
    }

    /// Records that `msg_id` was (re-)sent at `now` and arms its re-send timer.
    pub fn mark_sent(&mut self, msg_id: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(msg_id) else {
            return;
        };
        entry.sends += 1;
        entry.first_sent.get_or_insert(now);
        entry.collector.mark_sent(now);
        entry.next_resend = Some(now + self.rtt.backoff(entry.sends));
        self.schedule(msg_id);
    }

    /// Applies an ACK whose signature has been verified to be by `signer`.
    pub fn on_ack(&mut self, signer: &str, ack: &AckBody, now: Instant) -> AckEffect<T> {
        let Some(entry) = self.entries.get_mut(&ack.ack_msg_id) else {
            return AckEffect::Unknown;
        };
        let outcome = entry.collector.on_ack(signer, ack, now);
        if let AckOutcome::Counted { complete } = outcome {
            // From the first send, whichever copy was acked: see the module doc.
            if let Some(first) = entry.first_sent {
                self.rtt.sample(now.saturating_duration_since(first));
                if self.progress.len() >= MAX_TRACKED_RECIPIENTS
                    && !self.progress.contains_key(signer)
                {
                    self.progress.clear();
                }
                let p = self.progress.entry(signer.to_owned()).or_insert(Progress {
                    latest_acked_send: first,
                    last_ack_at: now,
                });
                p.latest_acked_send = p.latest_acked_send.max(first);
                p.last_ack_at = now;
            }
            if complete {
                return match self.remove(&ack.ack_msg_id) {
                    Some(done) => AckEffect::Completed(done),
                    None => AckEffect::Judged(outcome),
                };
            }
        }
        AckEffect::Judged(outcome)
    }

    /// Removes a message (e.g. its caller gave up).
    pub fn remove(&mut self, msg_id: &str) -> Option<Finished<T>> {
        let entry = self.entries.remove(msg_id)?;
        self.compact_timers();
        Some(Finished {
            collector: entry.collector,
            payload: entry.payload,
            sends: entry.sends,
        })
    }

    /// When the next timer fires, if any message is in flight.
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

    /// Fires every timer due at `now`: re-sends (call [`InFlight::mark_sent`]
    /// after sending) and expiries.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<TimerEvent<T>> {
        let mut events = Vec::new();
        while let Some(Reverse((at, generation, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let generation = *generation;
            let Some(Reverse((_, _, msg_id))) = self.timers.pop() else {
                break;
            };
            let Some(entry) = self.entries.get(&msg_id) else {
                continue;
            };
            if entry.timer_gen != generation {
                continue;
            }
            if entry.deadline <= now {
                if let Some(done) = self.remove(&msg_id) {
                    events.push(TimerEvent::Expired(done));
                }
            } else if entry.sends > 0 {
                if self.is_just_behind(entry, now) {
                    if let Some(entry) = self.entries.get_mut(&msg_id) {
                        entry.next_resend = Some(now + self.rtt.rto());
                    }
                    self.schedule(&msg_id);
                    events.push(TimerEvent::Deferred(msg_id));
                } else {
                    events.push(TimerEvent::Resend(msg_id));
                }
            } else {
                // Not sent yet (waiting for a subscriber): nothing to re-send;
                // re-arm for the deadline.
                self.schedule(&msg_id);
            }
        }
        events
    }

    /// Whether every recipient still missing from `entry` is busy acking
    /// messages sent before it (see the module doc): then a re-send would
    /// only add to its backlog.
    fn is_just_behind(&self, entry: &Entry<T>, now: Instant) -> bool {
        let Some(first) = entry.first_sent else {
            return false;
        };
        let quiet_after = self.rtt.rto();
        entry
            .collector
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

    /// Messages never sent yet, e.g. waiting for the first subscriber.
    pub fn unsent(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.sends == 0)
            .map(|(k, _)| k.as_str())
    }

    fn schedule(&mut self, msg_id: &str) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(entry) = self.entries.get_mut(msg_id) {
            entry.timer_gen = generation;
            let wake = if entry.sends == 0 {
                entry.deadline
            } else {
                entry.wakeup()
            };
            self.timers
                .push(Reverse((wake, generation, msg_id.to_owned())));
        }
        self.compact_timers();
    }

    /// Rebuilds the heap when stale items dominate, keeping memory bounded
    /// by the number of messages actually in flight.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.entries.len() + 1024 {
            return;
        }
        let live: Vec<_> = self
            .timers
            .drain()
            .filter(|Reverse((_, g, id))| self.entries.get(id).is_some_and(|e| e.timer_gen == *g))
            .collect();
        self.timers = live.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: &str) -> AckBody {
        AckBody {
            ack_msg_id: id.into(),
            ack_digest: None,
            ack_signer: None,
        }
    }

    fn d() -> crate::Digest {
        crate::Digest::of_signed_part("body")
    }

    fn table() -> InFlight<&'static str> {
        InFlight::new(RetransmitPolicy {
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_millis(400),
        })
    }

    #[test]
    fn completes_on_last_ack() {
        let t0 = Instant::now();
        let mut t = table();
        t.insert(
            AckCollector::new("m", d(), ["a", "b"]),
            t0 + Duration::from_secs(1),
            "p",
        )
        .unwrap();
        t.mark_sent("m", t0);
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
        match t.on_ack("b", &ack("m"), t0 + Duration::from_millis(3)) {
            AckEffect::Completed(done) => {
                assert_eq!(done.payload, "p");
                assert_eq!(done.sends, 1);
                assert!(done.collector.is_complete());
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
        let mut t = table();
        t.insert(
            AckCollector::new("m", d(), ["a"]),
            t0 + Duration::from_millis(1000),
            "p",
        )
        .unwrap();
        t.mark_sent("m", t0);
        // initial rto 100ms, then 200, 400, capped at 400
        let mut now;
        let mut resend_times = Vec::new();
        loop {
            let next = t.next_wakeup().expect("timer armed");
            now = next;
            let events = t.poll_timers(now);
            match events.into_iter().next() {
                Some(TimerEvent::Resend(id)) => {
                    resend_times.push(now - t0);
                    t.mark_sent(&id, now);
                }
                Some(TimerEvent::Expired(done)) => {
                    assert_eq!(done.collector.missing(), vec!["a"]);
                    assert_eq!(done.sends, 4);
                    break;
                }
                Some(TimerEvent::Deferred(id)) => {
                    panic!("{id} deferred with no ACK traffic at all")
                }
                None => panic!("timer fired without event"),
            }
        }
        assert_eq!(now - t0, Duration::from_millis(1000));
        let ms: Vec<u128> = resend_times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 300, 700]);
    }

    #[test]
    fn unsent_message_only_expires() {
        let t0 = Instant::now();
        let mut t = table();
        t.insert(
            AckCollector::new("m", d(), ["a"]),
            t0 + Duration::from_millis(50),
            "p",
        )
        .unwrap();
        assert_eq!(t.unsent().collect::<Vec<_>>(), vec!["m"]);
        assert!(t.poll_timers(t0 + Duration::from_millis(49)).is_empty());
        let events = t.poll_timers(t0 + Duration::from_millis(50));
        assert!(matches!(&events[..], [TimerEvent::Expired(d)] if d.sends == 0));
    }

    #[test]
    fn duplicate_insert_is_refused() {
        let t0 = Instant::now();
        let mut t = table();
        t.insert(AckCollector::new("m", d(), ["a"]), t0, "p")
            .unwrap();
        assert_eq!(
            t.insert(AckCollector::new("m", d(), ["a"]), t0, "q"),
            Err("q")
        );
    }

    #[test]
    fn rtt_adapts_and_samples_resent_messages_from_their_first_send() {
        let t0 = Instant::now();
        let mut t = table();
        for i in 0..20 {
            let id = format!("m{i}");
            t.insert(
                AckCollector::new(&id, d(), ["a"]),
                t0 + Duration::from_secs(5),
                "p",
            )
            .unwrap();
            t.mark_sent(&id, t0);
            t.on_ack("a", &ack(&id), t0 + Duration::from_millis(2));
        }
        let srtt = t.rtt().srtt().unwrap();
        assert!(
            srtt >= Duration::from_millis(1) && srtt <= Duration::from_millis(3),
            "{srtt:?}"
        );
        assert_eq!(t.rtt().rto(), Duration::from_millis(10));
        t.insert(
            AckCollector::new("r", d(), ["a"]),
            t0 + Duration::from_secs(5),
            "p",
        )
        .unwrap();
        // A message re-sent and acked late raises the estimate (measured
        // from its first send): re-sends back off instead of piling up.
        t.mark_sent("r", t0);
        t.mark_sent("r", t0 + Duration::from_millis(10));
        t.on_ack("a", &ack("r"), t0 + Duration::from_millis(200));
        let raised = t.rtt().srtt().unwrap();
        assert!(raised > srtt + Duration::from_millis(20), "{raised:?}");
        assert!(
            t.rtt().rto() > Duration::from_millis(100),
            "{:?}",
            t.rtt().rto()
        );
    }

    #[test]
    fn resends_wait_for_a_busy_recipient_and_go_on_evidence_of_loss() {
        let t0 = Instant::now();
        let mut t = table();
        let ms = Duration::from_millis;
        let deadline = t0 + Duration::from_secs(10);
        // m0 sent first, then m1 and m2; the recipient is busy with older work.
        for (i, id) in ["m0", "m1", "m2"].iter().enumerate() {
            t.insert(AckCollector::new(id, d(), ["a"]), deadline, "p")
                .unwrap();
            t.mark_sent(id, t0 + ms(i as u64));
        }
        // An ACK for m0 at 99 ms: "a" is alive and acking messages sent
        // before m1 and m2.
        t.on_ack("a", &ack("m0"), t0 + ms(99));
        // m1's timer fires (rto is 100 ms before the sample; now larger):
        // deferred, not re-sent.
        let first = t.next_wakeup().unwrap();
        let events = t.poll_timers(first);
        assert!(
            matches!(&events[..], [TimerEvent::Deferred(id), ..] if id == "m1"),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(e, TimerEvent::Resend(_))),
            "{events:?}"
        );
        // Evidence of loss: m2 (sent after m1) is acked, m1 is not.
        let now = first + ms(1);
        t.on_ack("a", &ack("m2"), now);
        let next = t.next_wakeup().unwrap();
        let events = t.poll_timers(next);
        assert!(
            matches!(&events[..], [TimerEvent::Resend(id)] if id == "m1"),
            "{events:?}"
        );
    }

    #[test]
    fn a_quiet_recipient_gets_its_resend() {
        let t0 = Instant::now();
        let mut t = table();
        t.insert(
            AckCollector::new("old", d(), ["a"]),
            t0 + Duration::from_secs(10),
            "p",
        )
        .unwrap();
        t.mark_sent("old", t0);
        t.on_ack("a", &ack("old"), t0 + Duration::from_millis(1));
        t.insert(
            AckCollector::new("m", d(), ["a"]),
            t0 + Duration::from_secs(10),
            "p",
        )
        .unwrap();
        t.mark_sent("m", t0 + Duration::from_millis(2));
        // Long after the last ACK from "a": it has gone quiet, so re-send.
        let events = t.poll_timers(t0 + Duration::from_secs(2));
        assert!(
            matches!(&events[..], [TimerEvent::Resend(id)] if id == "m"),
            "{events:?}"
        );
    }

    #[test]
    fn timer_heap_stays_bounded() {
        let t0 = Instant::now();
        let mut t = table();
        for i in 0..10_000 {
            let id = format!("m{i}");
            t.insert(
                AckCollector::new(&id, d(), ["a"]),
                t0 + Duration::from_secs(60),
                "p",
            )
            .unwrap();
            t.mark_sent(&id, t0);
            t.on_ack("a", &ack(&id), t0);
        }
        assert!(t.is_empty());
        assert!(t.timer_backlog() <= 1024 + 1, "{}", t.timer_backlog());
    }
}
