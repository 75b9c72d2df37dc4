//! Matching the two sides of a ZeroMQ <-> AMQP bridge: the rules of
//! `gilmsg-bridge verify`, with no I/O and no clock.
//!
//! During a migration every message should appear once on the ZeroMQ bus
//! and once on the AMQP broker, whichever side it was published on and
//! whichever bridge carried it. A watcher subscribed to both feeds each
//! message it sees here as an [`Observation`] (side, id, topic, digest of
//! the body, when), and [`BridgeMatcher`] pairs the two sightings of one id:
//!
//! - seen on both sides with the same topic and the same `msg` body (as
//!   canonical JSON, [`body_digest`]): **matched**;
//! - seen on both sides with another topic or body: **changed**
//!   ([`Finding::Changed`], at once);
//! - seen on one side only for longer than the grace window:
//!   **missing** on the other side ([`Finding::Missing`], from
//!   [`BridgeMatcher::expire`]). ZeroMQ PUB/SUB and a bridge can be slow
//!   as well as lossy, so the grace window is the line between the two;
//! - a counterpart arriving after it was reported missing is **late**
//!   ([`Finding::Late`]), and a further copy of an id already seen on that
//!   side is a **duplicate** ([`Finding::Duplicate`]: a loop, or a bridge
//!   that re-publishes).
//!
//! ## Memory
//!
//! Bounded by [`MatchSettings::capacity`]: at most that many ids waiting for
//! their counterpart, and at most that many settled ids remembered (for
//! [`MatchSettings::remember`]) to recognise late and duplicate copies.
//! When the waiting ids are full the oldest is given up without a verdict
//! (`evicted`): over capacity the watcher says it could not judge, never
//! that something was lost. When the settled memory is full its oldest
//! entry is forgotten (`forgotten`); a later copy of that id then starts
//! over as a new id.
//!
//! ## Time
//!
//! Instants are passed in. Deadlines are kept in arrival order, so with
//! instants that go backwards (a fuzzer, a test) an entry may expire later
//! than its deadline, never earlier, and nothing panics; a grace or memory
//! span too long for an `Instant` means "never".
//!
//! ## Warm-up and the end of a check
//!
//! Ids first seen before [`BridgeMatcher::start_judging`] (while the
//! watcher was still subscribing on the other side) are matched but never
//! reported missing (`unjudged`). After [`BridgeMatcher::stop_accepting`]
//! (a `--check` run's window is over, its grace running) only ids already
//! waiting are matched; new ones are `ignored`, as their counterparts may
//! come after the watcher stops.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::canonical::{self, CanonicalError};
use crate::digest::Digest;
use crate::envelope::Envelope;

/// One side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The ZeroMQ (fedmsg) bus.
    Zmq,
    /// The AMQP broker.
    Amqp,
}

impl Side {
    /// `zmq` or `amqp`, as in counter names and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Zmq => "zmq",
            Side::Amqp => "amqp",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Zmq => Side::Amqp,
            Side::Amqp => Side::Zmq,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digest two sightings of a message compare: SHA-256 of its `msg` as
/// canonical JSON ([`canonical::to_string`]), so that spacing and key order
/// (which a relay or a bridge may change) do not count as a change and
/// everything else does.
pub fn body_digest(msg: &Value) -> Result<Digest, CanonicalError> {
    canonical::to_string(msg).map(|text| Digest::of_bytes(text.as_bytes()))
}

/// The id a sighting is matched by: its `msg_id` (on AMQP the
/// `message_id` property, which gilmsg's AMQP adapter and fedora-messaging
/// set to it).
///
/// An unsigned fedora-messaging message that the AMQP -> ZeroMQ bridge
/// wraps in an envelope of its own (signed by the bridge and marked as
/// bridged, so that nobody takes it for the original sender's) keeps the
/// original `msg_id` and `msg` (`bridge::wrap_unsigned` in the bridge's
/// branch, issue 12), so it matches by the same id and compares by the
/// same body. This is the one place to adapt should a bridge ever give
/// the wrapped envelope an id of its own.
pub fn match_id(envelope: &Envelope) -> &str {
    envelope.msg_id()
}

/// One message seen on one side.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Where it was seen.
    pub side: Side,
    /// Its id ([`match_id`]).
    pub id: &'a str,
    /// Its topic (the AMQP routing key).
    pub topic: &'a str,
    /// [`body_digest`] of its `msg`.
    pub body: Digest,
    /// When it arrived.
    pub at: Instant,
}

/// How long to wait and how much to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchSettings {
    /// How long an id seen on one side waits for the other before it is
    /// reported missing there.
    pub grace: Duration,
    /// The most ids waiting, and the most settled ids remembered (each; at
    /// least 1).
    pub capacity: usize,
    /// How long a settled id is remembered to recognise late and duplicate
    /// copies.
    pub remember: Duration,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            grace: Duration::from_secs(5),
            capacity: 100_000,
            remember: Duration::from_secs(60),
        }
    }
}

/// Something worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Seen on one side only, for longer than the grace window.
    Missing {
        /// The side it never reached.
        missing_on: Side,
        /// Its id.
        id: String,
        /// Its topic where it was seen.
        topic: String,
        /// When it was seen.
        seen_at: Instant,
    },
    /// Seen on both sides, with another topic or body.
    Changed {
        /// Its id.
        id: String,
        /// The topic on ZeroMQ.
        zmq_topic: String,
        /// The topic on AMQP.
        amqp_topic: String,
        /// [`body_digest`] on ZeroMQ.
        zmq_body: Digest,
        /// [`body_digest`] on AMQP.
        amqp_body: Digest,
    },
    /// The counterpart of an id already reported missing on this side.
    Late {
        /// The side it arrived on, late.
        side: Side,
        /// Its id.
        id: String,
        /// Its topic.
        topic: String,
        /// How long after the first sighting.
        after: Duration,
    },
    /// Another copy of an id already seen on this side.
    Duplicate {
        /// Where the copy arrived.
        side: Side,
        /// Its id.
        id: String,
        /// Its topic.
        topic: String,
    },
}

impl Finding {
    /// `missing`, `changed`, `late` or `duplicate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Missing { .. } => "missing",
            Finding::Changed { .. } => "changed",
            Finding::Late { .. } => "late",
            Finding::Duplicate { .. } => "duplicate",
        }
    }

    /// The id it is about.
    pub fn id(&self) -> &str {
        match self {
            Finding::Missing { id, .. }
            | Finding::Changed { id, .. }
            | Finding::Late { id, .. }
            | Finding::Duplicate { id, .. } => id,
        }
    }
}

/// What one observation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The first sighting of the id: it now waits for the other side.
    Waiting,
    /// The counterpart, identical.
    Matched,
    /// Something to report (changed, late, duplicate).
    Found(Finding),
    /// A new id after [`BridgeMatcher::stop_accepting`]: not tracked.
    Ignored,
}

/// The counts a watcher prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchCounters {
    /// Sightings on ZeroMQ.
    pub seen_zmq: u64,
    /// Sightings on AMQP.
    pub seen_amqp: u64,
    /// Ids seen on both sides, identical.
    pub matched: u64,
    /// Ids seen on both sides with another topic or body.
    pub changed: u64,
    /// Ids reported missing on ZeroMQ (seen on AMQP only).
    pub missing_zmq: u64,
    /// Ids reported missing on AMQP (seen on ZeroMQ only).
    pub missing_amqp: u64,
    /// Counterparts that arrived on ZeroMQ after being reported missing.
    pub late_zmq: u64,
    /// Counterparts that arrived on AMQP after being reported missing.
    pub late_amqp: u64,
    /// Further copies on ZeroMQ.
    pub duplicate_zmq: u64,
    /// Further copies on AMQP.
    pub duplicate_amqp: u64,
    /// Waiting ids given up without a verdict because the memory was full.
    pub evicted: u64,
    /// Settled ids forgotten early because the memory was full.
    pub forgotten: u64,
    /// Ids first seen before judging started that found no counterpart.
    pub unjudged: u64,
    /// New ids after accepting stopped.
    pub ignored: u64,
    /// Ids waiting now (a gauge).
    pub pending: u64,
}

impl MatchCounters {
    /// Every counter under its dotted name (`seen.zmq`, `missing.amqp`,
    /// ...), in a fixed order, for stats lines and JSON.
    pub fn named(&self) -> [(&'static str, u64); 15] {
        [
            ("seen.zmq", self.seen_zmq),
            ("seen.amqp", self.seen_amqp),
            ("matched", self.matched),
            ("changed", self.changed),
            ("missing.zmq", self.missing_zmq),
            ("missing.amqp", self.missing_amqp),
            ("late.zmq", self.late_zmq),
            ("late.amqp", self.late_amqp),
            ("duplicate.zmq", self.duplicate_zmq),
            ("duplicate.amqp", self.duplicate_amqp),
            ("evicted", self.evicted),
            ("forgotten", self.forgotten),
            ("unjudged", self.unjudged),
            ("ignored", self.ignored),
            ("pending", self.pending),
        ]
    }

    fn seen(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::Zmq => &mut self.seen_zmq,
            Side::Amqp => &mut self.seen_amqp,
        }
    }

    fn missing(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::Zmq => &mut self.missing_zmq,
            Side::Amqp => &mut self.missing_amqp,
        }
    }

    fn late(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::Zmq => &mut self.late_zmq,
            Side::Amqp => &mut self.late_amqp,
        }
    }

    fn duplicate(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::Zmq => &mut self.duplicate_zmq,
            Side::Amqp => &mut self.duplicate_amqp,
        }
    }
}

/// An id seen on one side, waiting for the other.
#[derive(Debug)]
struct Waiting {
    seq: u64,
    side: Side,
    topic: String,
    body: Digest,
    seen_at: Instant,
    judged: bool,
}

/// What became of a settled id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Seen on both sides.
    Paired,
    /// Seen on `seen_on` only; `reported` if it was reported missing (not
    /// unjudged or evicted).
    OneSided { seen_on: Side, reported: bool },
}

/// A settled id, remembered for late and duplicate copies.
#[derive(Debug)]
struct Settled {
    seq: u64,
    verdict: Verdict,
    topic: String,
    body: Digest,
    seen_at: Instant,
}

/// A deadline in arrival order: `None` is never.
#[derive(Debug)]
struct Due {
    at: Option<Instant>,
    seq: u64,
    id: String,
}

/// The bridge checker's state: feed it [`Observation`]s, ask it what
/// expired. See the module documentation for the rules.
#[derive(Debug)]
pub struct BridgeMatcher {
    settings: MatchSettings,
    judging: bool,
    accepting: bool,
    waiting: HashMap<String, Waiting>,
    waiting_due: VecDeque<Due>,
    settled: HashMap<String, Settled>,
    settled_due: VecDeque<Due>,
    next_seq: u64,
    counters: MatchCounters,
}

impl BridgeMatcher {
    /// An empty matcher; it accepts new ids, and does not judge them until
    /// [`BridgeMatcher::start_judging`].
    pub fn new(settings: MatchSettings) -> Self {
        let settings = MatchSettings {
            capacity: settings.capacity.max(1),
            ..settings
        };
        BridgeMatcher {
            settings,
            judging: false,
            accepting: true,
            waiting: HashMap::new(),
            waiting_due: VecDeque::new(),
            settled: HashMap::new(),
            settled_due: VecDeque::new(),
            next_seq: 0,
            counters: MatchCounters::default(),
        }
    }

    /// The settings in force (capacity at least 1).
    pub fn settings(&self) -> MatchSettings {
        self.settings
    }

    /// From now on, a new id that finds no counterpart is reported missing.
    pub fn start_judging(&mut self) {
        self.judging = true;
    }

    /// From now on, new ids are ignored; waiting ones are still matched.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// The counters now.
    pub fn counters(&self) -> MatchCounters {
        MatchCounters {
            pending: self.waiting.len() as u64,
            ..self.counters
        }
    }

    /// The earliest deadline that may be due: when to call
    /// [`BridgeMatcher::expire`] next (`None`: nothing waits, or nothing
    /// ever expires).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting_due.front().and_then(|d| d.at)
    }

    /// Feeds one sighting.
    pub fn observe(&mut self, seen: Observation<'_>) -> Observed {
        *self.counters.seen(seen.side) += 1;
        if let Some(waiting) = self.waiting.get(seen.id) {
            if waiting.side == seen.side {
                *self.counters.duplicate(seen.side) += 1;
                return Observed::Found(Finding::Duplicate {
                    side: seen.side,
                    id: seen.id.to_owned(),
                    topic: seen.topic.to_owned(),
                });
            }
            let Some(waiting) = self.waiting.remove(seen.id) else {
                return Observed::Waiting;
            };
            let outcome = self.pair(seen.id, (waiting.side, &waiting.topic, waiting.body), &seen);
            self.settle(
                seen.id.to_owned(),
                Settled {
                    seq: 0,
                    verdict: Verdict::Paired,
                    topic: waiting.topic,
                    body: waiting.body,
                    seen_at: waiting.seen_at,
                },
                seen.at,
            );
            return outcome;
        }
        if let Some(settled) = self.settled.get(seen.id) {
            let (verdict, topic, body, seen_at) = (
                settled.verdict,
                settled.topic.clone(),
                settled.body,
                settled.seen_at,
            );
            return match verdict {
                Verdict::OneSided { seen_on, reported } if seen_on != seen.side => {
                    if let Some(s) = self.settled.get_mut(seen.id) {
                        s.verdict = Verdict::Paired;
                    }
                    if reported {
                        *self.counters.late(seen.side) += 1;
                        Observed::Found(Finding::Late {
                            side: seen.side,
                            id: seen.id.to_owned(),
                            topic: seen.topic.to_owned(),
                            after: seen.at.saturating_duration_since(seen_at),
                        })
                    } else {
                        // Never judged (warm-up, eviction): a pairing
                        // like any other.
                        self.pair(seen.id, (seen_on, &topic, body), &seen)
                    }
                }
                _ => {
                    *self.counters.duplicate(seen.side) += 1;
                    Observed::Found(Finding::Duplicate {
                        side: seen.side,
                        id: seen.id.to_owned(),
                        topic: seen.topic.to_owned(),
                    })
                }
            };
        }
        if !self.accepting {
            self.counters.ignored += 1;
            return Observed::Ignored;
        }
        if self.waiting.len() >= self.settings.capacity {
            self.evict_oldest_waiting();
        }
        let seq = self.seq();
        self.waiting.insert(
            seen.id.to_owned(),
            Waiting {
                seq,
                side: seen.side,
                topic: seen.topic.to_owned(),
                body: seen.body,
                seen_at: seen.at,
                judged: self.judging,
            },
        );
        self.waiting_due.push_back(Due {
            at: seen.at.checked_add(self.settings.grace),
            seq,
            id: seen.id.to_owned(),
        });
        self.compact();
        Observed::Waiting
    }

    /// Settles every waiting id whose grace window is over at `now`: the
    /// judged ones come back as [`Finding::Missing`].
    pub fn expire(&mut self, now: Instant) -> Vec<Finding> {
        let mut found = Vec::new();
        while let Some(due) = self.waiting_due.front() {
            if due.at.is_none_or(|at| at > now) {
                break;
            }
            let Some(due) = self.waiting_due.pop_front() else {
                break;
            };
            let live = self.waiting.get(&due.id).is_some_and(|w| w.seq == due.seq);
            if !live {
                continue;
            }
            let Some(waiting) = self.waiting.remove(&due.id) else {
                continue;
            };
            let missing_on = waiting.side.other();
            if waiting.judged {
                *self.counters.missing(missing_on) += 1;
                found.push(Finding::Missing {
                    missing_on,
                    id: due.id.clone(),
                    topic: waiting.topic.clone(),
                    seen_at: waiting.seen_at,
                });
            } else {
                self.counters.unjudged += 1;
            }
            self.settle(
                due.id,
                Settled {
                    seq: 0,
                    verdict: Verdict::OneSided {
                        seen_on: waiting.side,
                        reported: waiting.judged,
                    },
                    topic: waiting.topic,
                    body: waiting.body,
                    seen_at: waiting.seen_at,
                },
                now,
            );
        }
        while let Some(due) = self.settled_due.front() {
            if due.at.is_none_or(|at| at > now) {
                break;
            }
            if let Some(due) = self.settled_due.pop_front() {
                if self.settled.get(&due.id).is_some_and(|s| s.seq == due.seq) {
                    self.settled.remove(&due.id);
                }
            }
        }
        found
    }

    /// Compares the two sightings of `id` and counts the pairing.
    fn pair(
        &mut self,
        id: &str,
        first: (Side, &str, Digest),
        second: &Observation<'_>,
    ) -> Observed {
        let (first_side, first_topic, first_body) = first;
        if first_topic == second.topic && first_body == second.body {
            self.counters.matched += 1;
            return Observed::Matched;
        }
        self.counters.changed += 1;
        let ((zmq_topic, zmq_body), (amqp_topic, amqp_body)) = match first_side {
            Side::Zmq => ((first_topic, first_body), (second.topic, second.body)),
            Side::Amqp => ((second.topic, second.body), (first_topic, first_body)),
        };
        Observed::Found(Finding::Changed {
            id: id.to_owned(),
            zmq_topic: zmq_topic.to_owned(),
            amqp_topic: amqp_topic.to_owned(),
            zmq_body,
            amqp_body,
        })
    }

    /// Remembers a settled id until `now` + `remember`, making room first.
    fn settle(&mut self, id: String, mut settled: Settled, now: Instant) {
        while self.settled.len() >= self.settings.capacity {
            let Some(due) = self.settled_due.pop_front() else {
                break;
            };
            if self.settled.get(&due.id).is_some_and(|s| s.seq == due.seq) {
                self.settled.remove(&due.id);
                self.counters.forgotten += 1;
            }
        }
        if self.settled.len() >= self.settings.capacity {
            // The order queue lost track (cannot happen: every entry has
            // one); never grow past the bound.
            self.settled.clear();
        }
        let seq = self.seq();
        settled.seq = seq;
        self.settled_due.push_back(Due {
            at: now.checked_add(self.settings.remember),
            seq,
            id: id.clone(),
        });
        self.settled.insert(id, settled);
        self.compact();
    }

    /// Gives up the oldest waiting id, without a verdict.
    fn evict_oldest_waiting(&mut self) {
        while let Some(due) = self.waiting_due.pop_front() {
            if self.waiting.get(&due.id).is_some_and(|w| w.seq == due.seq) {
                if let Some(waiting) = self.waiting.remove(&due.id) {
                    self.counters.evicted += 1;
                    self.settle(
                        due.id,
                        Settled {
                            seq: 0,
                            verdict: Verdict::OneSided {
                                seen_on: waiting.side,
                                reported: false,
                            },
                            topic: waiting.topic,
                            body: waiting.body,
                            seen_at: waiting.seen_at,
                        },
                        waiting.seen_at,
                    );
                }
                return;
            }
        }
    }

    /// Drops the order entries of ids that left (matched early), so the
    /// queues stay within a small multiple of the capacity.
    fn compact(&mut self) {
        let bound = self.settings.capacity.saturating_mul(2).saturating_add(16);
        if self.waiting_due.len() > bound {
            let waiting = &self.waiting;
            self.waiting_due
                .retain(|d| waiting.get(&d.id).is_some_and(|w| w.seq == d.seq));
        }
        if self.settled_due.len() > bound {
            let settled = &self.settled;
            self.settled_due
                .retain(|d| settled.get(&d.id).is_some_and(|s| s.seq == d.seq));
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRACE: Duration = Duration::from_secs(5);

    fn matcher() -> (BridgeMatcher, Instant) {
        let mut m = BridgeMatcher::new(MatchSettings {
            grace: GRACE,
            capacity: 100,
            remember: Duration::from_secs(60),
        });
        m.start_judging();
        (m, Instant::now())
    }

    fn digest(v: Value) -> Digest {
        body_digest(&v).expect("canonical")
    }

    fn seen<'a>(
        side: Side,
        id: &'a str,
        topic: &'a str,
        body: Digest,
        at: Instant,
    ) -> Observation<'a> {
        Observation {
            side,
            id,
            topic,
            body,
            at,
        }
    }

    const T: &str = "org.x.prod.a.b";

    #[test]
    fn the_same_message_on_both_sides_matches() {
        let (mut m, t0) = matcher();
        let b = digest(json!({"n": 1}));
        assert_eq!(m.observe(seen(Side::Zmq, "1", T, b, t0)), Observed::Waiting);
        assert_eq!(
            m.observe(seen(Side::Amqp, "1", T, b, t0 + Duration::from_secs(1))),
            Observed::Matched
        );
        assert!(m.expire(t0 + Duration::from_secs(100)).is_empty());
        let c = m.counters();
        assert_eq!(
            (c.seen_zmq, c.seen_amqp, c.matched, c.pending),
            (1, 1, 1, 0)
        );
        assert_eq!(c.missing_zmq + c.missing_amqp + c.changed, 0);
    }

    #[test]
    fn key_order_and_spacing_are_not_a_change() {
        let a = body_digest(&serde_json::from_str(r#"{"a": 1, "b": [1, 2]}"#).unwrap()).unwrap();
        let b = body_digest(&serde_json::from_str(r#"{"b":[1,2],"a":1}"#).unwrap()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, digest(json!({"a": 2, "b": [1, 2]})));
    }

    #[test]
    fn one_sided_ids_expire_as_missing_on_the_other_side_after_the_grace() {
        let (mut m, t0) = matcher();
        let b = digest(json!({}));
        m.observe(seen(Side::Zmq, "z", T, b, t0));
        m.observe(seen(Side::Amqp, "a", T, b, t0 + Duration::from_secs(1)));
        assert_eq!(m.next_deadline(), Some(t0 + GRACE));
        // Not a moment early.
        assert!(m.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        let found = m.expire(t0 + GRACE);
        assert_eq!(
            found,
            vec![Finding::Missing {
                missing_on: Side::Amqp,
                id: "z".into(),
                topic: T.into(),
                seen_at: t0
            }]
        );
        let found = m.expire(t0 + GRACE + Duration::from_secs(1));
        assert_eq!(found.len(), 1);
        assert!(
            matches!(&found[0], Finding::Missing { missing_on: Side::Zmq, id, .. } if id == "a")
        );
        let c = m.counters();
        assert_eq!((c.missing_amqp, c.missing_zmq, c.pending), (1, 1, 0));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn a_changed_body_or_topic_is_reported_at_once_with_both_sides() {
        let (mut m, t0) = matcher();
        let (b1, b2) = (digest(json!({"n": 1})), digest(json!({"n": 2})));
        m.observe(seen(Side::Amqp, "1", T, b1, t0));
        let out = m.observe(seen(Side::Zmq, "1", T, b2, t0));
        assert_eq!(
            out,
            Observed::Found(Finding::Changed {
                id: "1".into(),
                zmq_topic: T.into(),
                amqp_topic: T.into(),
                zmq_body: b2,
                amqp_body: b1
            })
        );
        m.observe(seen(Side::Zmq, "2", T, b1, t0));
        let out = m.observe(seen(Side::Amqp, "2", "org.x.prod.other", b1, t0));
        assert!(
            matches!(out, Observed::Found(Finding::Changed { ref amqp_topic, .. }) if amqp_topic == "org.x.prod.other")
        );
        assert!(m.expire(t0 + GRACE * 10).is_empty());
        assert_eq!((m.counters().changed, m.counters().matched), (2, 0));
    }

    #[test]
    fn a_counterpart_after_the_report_is_late_and_further_copies_are_duplicates() {
        let (mut m, t0) = matcher();
        let b = digest(json!(1));
        m.observe(seen(Side::Zmq, "1", T, b, t0));
        assert_eq!(m.expire(t0 + GRACE).len(), 1);
        let out = m.observe(seen(Side::Amqp, "1", T, b, t0 + Duration::from_secs(7)));
        assert_eq!(
            out,
            Observed::Found(Finding::Late {
                side: Side::Amqp,
                id: "1".into(),
                topic: T.into(),
                after: Duration::from_secs(7)
            })
        );
        // A loop: the message comes round again, on either side.
        for side in [Side::Amqp, Side::Zmq] {
            let out = m.observe(seen(side, "1", T, b, t0 + Duration::from_secs(8)));
            assert!(
                matches!(out, Observed::Found(Finding::Duplicate { side: s, .. }) if s == side)
            );
        }
        // While waiting, too.
        m.observe(seen(Side::Zmq, "2", T, b, t0 + Duration::from_secs(8)));
        let out = m.observe(seen(Side::Zmq, "2", T, b, t0 + Duration::from_secs(8)));
        assert!(matches!(
            out,
            Observed::Found(Finding::Duplicate {
                side: Side::Zmq,
                ..
            })
        ));
        let c = m.counters();
        assert_eq!(
            (
                c.late_amqp,
                c.duplicate_amqp,
                c.duplicate_zmq,
                c.missing_amqp
            ),
            (1, 1, 2, 1)
        );
        // Once forgotten, the id starts over.
        m.expire(t0 + Duration::from_secs(8) + GRACE + Duration::from_secs(60));
        assert_eq!(
            m.observe(seen(Side::Zmq, "1", T, b, t0 + Duration::from_secs(100))),
            Observed::Waiting
        );
    }

    #[test]
    fn ids_seen_before_judging_are_matched_but_never_reported_missing() {
        let mut m = BridgeMatcher::new(MatchSettings {
            grace: GRACE,
            capacity: 10,
            remember: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let b = digest(json!(null));
        m.observe(seen(Side::Zmq, "early", T, b, t0));
        m.observe(seen(Side::Zmq, "early-matched", T, b, t0));
        m.start_judging();
        assert_eq!(
            m.observe(seen(Side::Amqp, "early-matched", T, b, t0)),
            Observed::Matched
        );
        assert!(m.expire(t0 + GRACE).is_empty());
        assert_eq!(m.counters().unjudged, 1);
        // Its late counterpart is a plain pairing, not a late finding.
        assert_eq!(
            m.observe(seen(Side::Amqp, "early", T, b, t0 + GRACE * 2)),
            Observed::Matched
        );
    }

    #[test]
    fn after_accepting_stops_only_waiting_ids_are_matched() {
        let (mut m, t0) = matcher();
        let b = digest(json!("x"));
        m.observe(seen(Side::Zmq, "in-window", T, b, t0));
        m.stop_accepting();
        assert_eq!(
            m.observe(seen(Side::Zmq, "after", T, b, t0)),
            Observed::Ignored
        );
        assert_eq!(
            m.observe(seen(Side::Amqp, "in-window", T, b, t0)),
            Observed::Matched
        );
        assert!(m.expire(t0 + GRACE * 2).is_empty());
        assert_eq!((m.counters().ignored, m.counters().matched), (1, 1));
    }

    #[test]
    fn memory_is_bounded_and_evictions_are_counted_not_reported() {
        let mut m = BridgeMatcher::new(MatchSettings {
            grace: GRACE,
            capacity: 3,
            remember: Duration::from_secs(60),
        });
        m.start_judging();
        let t0 = Instant::now();
        let b = digest(json!(0));
        for i in 0..10 {
            m.observe(seen(Side::Zmq, &i.to_string(), T, b, t0));
        }
        let c = m.counters();
        assert_eq!((c.pending, c.evicted), (3, 7));
        // Only the 3 kept are judged.
        let found = m.expire(t0 + GRACE);
        let ids: Vec<&str> = found.iter().map(Finding::id).collect();
        assert_eq!(ids, ["7", "8", "9"]);
        assert!(m.settled.len() <= 3);
        // An evicted id's counterpart is a pairing, not a new waiting id.
        let c = m.counters();
        assert_eq!((c.forgotten, c.missing_amqp), (7, 3));
        // Many matched ids do not grow the order queues past the bound.
        for i in 0..1000 {
            let id = format!("m{i}");
            m.observe(seen(Side::Zmq, &id, T, b, t0));
            m.observe(seen(Side::Amqp, &id, T, b, t0));
        }
        assert!(m.waiting_due.len() <= 3 * 2 + 16, "{}", m.waiting_due.len());
        assert!(m.settled_due.len() <= 3 * 2 + 16, "{}", m.settled_due.len());
        assert!(m.settled.len() <= 3);
    }

    #[test]
    fn a_grace_too_long_for_an_instant_never_expires_and_never_panics() {
        let mut m = BridgeMatcher::new(MatchSettings {
            grace: Duration::MAX,
            capacity: 2,
            remember: Duration::MAX,
        });
        m.start_judging();
        let t0 = Instant::now();
        let b = digest(json!(0));
        m.observe(seen(Side::Zmq, "1", T, b, t0));
        assert_eq!(m.next_deadline(), None);
        assert!(m.expire(t0 + Duration::from_secs(1_000_000)).is_empty());
        m.observe(seen(Side::Amqp, "1", T, b, t0));
        m.observe(seen(Side::Amqp, "2", T, b, t0));
        m.observe(seen(Side::Amqp, "3", T, b, t0));
        m.observe(seen(Side::Amqp, "4", T, b, t0));
        assert!(m.counters().pending <= 2);
    }

    /// A tiny deterministic generator (xorshift), so the property test
    /// needs no dependency and replays exactly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Any sequence of sightings (few ids so they collide, both sides,
    /// instants going back and forth, odd settings) keeps the bounds and
    /// never panics; and the counters add up.
    #[test]
    fn any_sequence_keeps_the_bounds() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let capacity = (rng.next() % 5) as usize; // 0 means 1
            let grace = Duration::from_millis(rng.next() % 50);
            let remember = Duration::from_millis(rng.next() % 100);
            let mut m = BridgeMatcher::new(MatchSettings {
                grace,
                capacity,
                remember,
            });
            let t0 = Instant::now() + Duration::from_secs(1);
            let mut reported = 0u64;
            for step in 0..300 {
                let r = rng.next();
                let at = t0 + Duration::from_millis(r % 400) - Duration::from_millis(200);
                match r % 11 {
                    0 => m.start_judging(),
                    1 if step > 250 => m.stop_accepting(),
                    2 | 3 => reported += m.expire(at).len() as u64,
                    _ => {
                        let side = if r & 1 == 0 { Side::Zmq } else { Side::Amqp };
                        let id = ((r >> 8) % 7).to_string();
                        let body = digest(json!((r >> 16) % 2));
                        let topic = if (r >> 20).is_multiple_of(5) {
                            "t2"
                        } else {
                            "t1"
                        };
                        m.observe(seen(side, &id, topic, body, at));
                    }
                }
                let cap = m.settings().capacity;
                assert!(
                    m.waiting.len() <= cap && m.settled.len() <= cap,
                    "seed {seed}"
                );
                assert!(m.waiting_due.len() <= cap * 2 + 17, "seed {seed}");
                assert!(m.settled_due.len() <= cap * 2 + 17, "seed {seed}");
            }
            let c = m.counters();
            assert_eq!(c.missing_zmq + c.missing_amqp, reported, "seed {seed}");
        }
    }

    #[test]
    fn a_wrapped_envelope_matches_its_original_by_id_and_body() {
        // As the AMQP -> ZeroMQ bridge wraps an unsigned fedora-messaging
        // message: same msg_id and msg (numbers brought to canonical text),
        // a new username, i and a signed mark.
        let original = crate::Draft {
            topic: T.into(),
            msg: serde_json::from_str(r#"{"version": 1.10, "name": "x"}"#).unwrap(),
            msg_id: "2026-original".into(),
            i: 0,
            timestamp: 1,
            username: "fedora-messaging".into(),
            wants_ack: false,
        }
        .build(None)
        .expect("message");
        let mut body = original.body().clone();
        body.insert("username".into(), json!("amqp-bridge"));
        body.insert("i".into(), json!(7));
        body.insert(
            "gilmsg_bridged".into(),
            json!({"from": "amqp", "by": "bridge"}),
        );
        body.insert("msg".into(), json!({"name": "x", "version": 1.1}));
        let wrapped = Envelope::from_body(body).expect("envelope");
        assert_eq!(match_id(&wrapped), match_id(&original));
        assert_eq!(
            body_digest(wrapped.msg()).unwrap(),
            body_digest(original.msg()).unwrap()
        );
    }
}
