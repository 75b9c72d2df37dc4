//! The rules of the ZeroMQ <-> AMQP bridges (`gilmsg-bridge`), without
//! I/O: which messages a bridge refuses so that nothing loops between the
//! two buses, the bounded memories that back those refusals and route ACKs
//! back to AMQP publishers, and the envelope a bridge signs for an unsigned
//! fedora-messaging message.
//!
//! Three marks keep a message from crossing twice (`docs/bridge.md`, "No
//! loops"):
//!
//! - the AMQP header [`BRIDGED_FROM_HEADER`] (`"zmq"`), outside the
//!   signature, on everything the ZeroMQ -> AMQP direction publishes: the
//!   AMQP -> ZeroMQ direction refuses it, whichever exchange it was bound to
//!   ([`Refusal::FromZmq`]);
//! - the signed field [`BRIDGE_MARK_FIELD`] (and fedmsg-migration-tools'
//!   `username` [`BRIDGE_USERNAME`]) of an envelope a bridge wrapped and
//!   signed: the ZeroMQ -> AMQP direction refuses it, whichever endpoint it
//!   subscribed to ([`Refusal::WrappedByBridge`]);
//! - [`IdMemory`]: the `msg_id`s one bridge process sent each way lately;
//!   a message coming back the other way with one of them is refused
//!   ([`Refusal::SentTheOtherWay`]). It covers what the two marks cannot: a
//!   signed AMQP message carries no mark on ZeroMQ (any field added would
//!   break its signature, and a third frame would break fedmsg's readers).
//!
//! Times are passed in (`Instant`s), so everything here is deterministic.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::envelope::{DecodeError, Envelope};
use crate::SCHEMA_FIELD;

/// The AMQP header a ZeroMQ -> AMQP bridge adds (value [`FROM_ZMQ`]); not
/// signed (AMQP headers never are), so it is a loop guard, not a claim
/// anyone should trust.
pub const BRIDGED_FROM_HEADER: &str = "gilmsg_bridged_from";
/// The value of [`BRIDGED_FROM_HEADER`].
pub const FROM_ZMQ: &str = "zmq";
/// The signed field of an envelope a bridge wrapped: `{"from": "amqp",
/// "by": <bridge identity>}`.
pub const BRIDGE_MARK_FIELD: &str = "gilmsg_bridged";
/// The `username` of an envelope a bridge wrapped, as fedmsg-migration-tools
/// writes it (its ZeroMQ -> AMQP bridge drops messages with it too).
pub const BRIDGE_USERNAME: &str = "amqp-bridge";

/// Why a bridge did not carry a message across (counted under
/// [`Refusal::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// AMQP -> ZeroMQ: it carries [`BRIDGED_FROM_HEADER`]: it came from
    /// ZeroMQ through a bridge (this queue is bound where it should not
    /// be, e.g. to `zmq.topic`).
    FromZmq,
    /// ZeroMQ -> AMQP: a bridge wrapped it from an unsigned AMQP message
    /// (this bridge subscribed to an AMQP -> ZeroMQ bridge's endpoint).
    WrappedByBridge,
    /// Its `msg_id` was sent the other way by this bridge lately.
    SentTheOtherWay,
}

impl Refusal {
    /// The counter's name for it.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::FromZmq => "bridged_from_zmq",
            Refusal::WrappedByBridge => "wrapped_by_bridge",
            Refusal::SentTheOtherWay => "sent_the_other_way",
        }
    }
}

/// Whether the ZeroMQ -> AMQP direction may carry `envelope`, given the ids
/// the AMQP -> ZeroMQ direction sent lately.
pub fn check_from_zmq(
    envelope: &Envelope,
    sent_to_zmq: &mut IdMemory,
    now: Instant,
) -> Result<(), Refusal> {
    if envelope.body().contains_key(BRIDGE_MARK_FIELD)
        || envelope.str_field("username") == Some(BRIDGE_USERNAME)
    {
        return Err(Refusal::WrappedByBridge);
    }
    if sent_to_zmq.contains(envelope.msg_id(), now) {
        return Err(Refusal::SentTheOtherWay);
    }
    Ok(())
}

/// Whether the AMQP -> ZeroMQ direction may carry a message with
/// `msg_id` (its `message_id`), given whether it has
/// [`BRIDGED_FROM_HEADER`] and the ids the ZeroMQ -> AMQP direction sent
/// lately.
pub fn check_from_amqp(
    msg_id: Option<&str>,
    bridged_from_zmq: bool,
    sent_to_amqp: &mut IdMemory,
    now: Instant,
) -> Result<(), Refusal> {
    if bridged_from_zmq {
        return Err(Refusal::FromZmq);
    }
    if msg_id.is_some_and(|id| sent_to_amqp.contains(id, now)) {
        return Err(Refusal::SentTheOtherWay);
    }
    Ok(())
}

/// A bounded memory of the `msg_id`s sent one way: each kept for `ttl`
/// (and at most `capacity` of them; past that the oldest is forgotten).
///
/// Ids are kept as 64-bit SipHashes under a random per-process key (no
/// allocation per message on the bridge's hot path); a collision, about 1
/// in 10^14 at full capacity, would refuse one message (counted, and an
/// acknowledged publish re-sends it), never carry one twice.
#[derive(Debug)]
pub struct IdMemory {
    capacity: usize,
    ttl: Duration,
    hasher: RandomState,
    order: VecDeque<(u64, Instant)>,
    /// How many entries of `order` hold each hash.
    ids: HashMap<u64, u32>,
}

impl IdMemory {
    /// An empty memory (`capacity` at least 1).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        IdMemory {
            capacity: capacity.max(1),
            ttl,
            hasher: RandomState::new(),
            order: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    /// Remembers `id` as sent at `now`.
    pub fn remember(&mut self, id: &str, now: Instant) {
        self.expire(now);
        let key = self.hasher.hash_one(id);
        while self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        *self.ids.entry(key).or_default() += 1;
        self.order.push_back((key, now));
    }

    /// Whether `id` was sent within `ttl` before `now`.
    pub fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.ids.contains_key(&self.hasher.hash_one(id))
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            if let Some(count) = self.ids.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.ids.remove(&key);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }
}

/// Where the ACKs for a message an AMQP publisher sent across go back:
/// its `reply_to`, remembered by `msg_id` when the AMQP -> ZeroMQ direction
/// carried it, looked up when an ACK for it comes back from ZeroMQ (which
/// has no `reply_to`). Bounded like [`IdMemory`].
#[derive(Debug)]
pub struct ReplyRoutes {
    capacity: usize,
    ttl: Duration,
    order: VecDeque<(String, Instant)>,
    routes: HashMap<String, String>,
}

impl ReplyRoutes {
    /// An empty table (`capacity` at least 1).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ReplyRoutes {
            capacity: capacity.max(1),
            ttl,
            order: VecDeque::new(),
            routes: HashMap::new(),
        }
    }

    /// Remembers that ACKs for `msg_id` go to `reply_to`.
    pub fn remember(&mut self, msg_id: &str, reply_to: &str, now: Instant) {
        self.expire(now);
        if let Some(route) = self.routes.get_mut(msg_id) {
            reply_to.clone_into(route);
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.routes.remove(&old);
            }
        }
        self.routes.insert(msg_id.to_owned(), reply_to.to_owned());
        self.order.push_back((msg_id.to_owned(), now));
    }

    /// The `reply_to` of the message `msg_id`, if remembered.
    pub fn route(&mut self, msg_id: &str, now: Instant) -> Option<&str> {
        self.expire(now);
        self.routes.get(msg_id).map(String::as_str)
    }

    /// How many routes it holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.routes.remove(id);
            self.order.pop_front();
        }
    }
}

/// The envelope a bridge signs for an unsigned AMQP message (a
/// fedora-messaging publish): its topic, payload and `msg_id`, the
/// bridge's own sequence number `i` and time `now_secs` as `timestamp`,
/// `username` [`BRIDGE_USERNAME`], the schema it named, and the signed mark
/// [`BRIDGE_MARK_FIELD`]: `{"from": "amqp", "by": <bridge>, "sent_at":
/// <the sender's sent-at, if any>}`. Unsigned here: the caller signs it as `by`
/// ([`Envelope::sign`]). Numbers in `msg` are brought to their canonical
/// text first, as for any message about to be signed.
pub fn wrap_unsigned(
    unsigned: &Envelope,
    i: u64,
    now_secs: i64,
    by: &str,
) -> Result<Envelope, DecodeError> {
    let mut msg = unsigned.msg().clone();
    crate::canonical::normalise_numbers(&mut msg, 1)
        .map_err(|e| DecodeError::Shape(format!("msg cannot be signed: {e}")))?;
    let mut body = Map::new();
    body.insert("topic".into(), Value::String(unsigned.topic().to_owned()));
    body.insert("msg".into(), msg);
    body.insert("msg_id".into(), Value::String(unsigned.msg_id().to_owned()));
    body.insert("i".into(), Value::from(i));
    // The bridge's time: it signs that it wrapped the message then (a
    // message that waited in the queue is not refused as too old for
    // that); the sender's `sent-at` stays in the mark.
    body.insert("timestamp".into(), Value::from(now_secs));
    body.insert("username".into(), Value::String(BRIDGE_USERNAME.into()));
    if let Some(schema) = unsigned.schema_name() {
        body.insert(SCHEMA_FIELD.into(), Value::String(schema.to_owned()));
    }
    let mut mark = Map::new();
    mark.insert("from".into(), Value::String("amqp".into()));
    mark.insert("by".into(), Value::String(by.to_owned()));
    if let Some(sent) = unsigned.timestamp() {
        mark.insert("sent_at".into(), Value::from(sent));
    }
    body.insert(BRIDGE_MARK_FIELD.into(), Value::Object(mark));
    Envelope::from_body(body)
}

/// The bridge that wrapped `envelope` (the `by` of its signed
/// [`BRIDGE_MARK_FIELD`]), if a bridge did: what a consumer may show
/// instead of an original sender, which a wrapped message does not name.
pub fn wrapped_by(envelope: &Envelope) -> Option<&str> {
    envelope.body().get(BRIDGE_MARK_FIELD)?.get("by")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Draft;
    use serde_json::json;

    fn envelope(msg_id: &str, username: &str) -> Envelope {
        Draft {
            topic: "org.x.dev.a.b".into(),
            msg: json!({"n": 1}),
            msg_id: msg_id.into(),
            i: 1,
            timestamp: 1_700_000_000,
            username: username.into(),
            wants_ack: false,
        }
        .build(None)
        .unwrap()
    }

    #[test]
    fn ids_are_remembered_for_their_ttl_and_within_capacity() {
        let t0 = Instant::now();
        let mut m = IdMemory::new(2, Duration::from_secs(10));
        m.remember("a", t0);
        m.remember("b", t0);
        assert!(m.contains("a", t0) && m.contains("b", t0));
        m.remember("c", t0 + Duration::from_secs(1));
        assert!(
            !m.contains("a", t0 + Duration::from_secs(1)),
            "oldest forgotten"
        );
        assert_eq!(m.len(), 2);
        assert!(!m.contains("b", t0 + Duration::from_secs(10)), "expired");
        assert!(m.contains("c", t0 + Duration::from_secs(10)));
        assert!(m.is_empty() || m.len() == 1);
        let mut zero = IdMemory::new(0, Duration::from_secs(1));
        zero.remember("x", t0);
        assert!(zero.contains("x", t0));
    }

    #[test]
    fn reply_routes_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut r = ReplyRoutes::new(1, Duration::from_secs(5));
        r.remember("m1", "ack.p1", t0);
        assert_eq!(r.route("m1", t0), Some("ack.p1"));
        r.remember("m1", "ack.p2", t0);
        assert_eq!(r.route("m1", t0), Some("ack.p2"));
        r.remember("m2", "ack.p3", t0);
        assert_eq!(r.route("m1", t0), None);
        assert_eq!(r.route("m2", t0 + Duration::from_secs(4)), Some("ack.p3"));
        assert_eq!(r.route("m2", t0 + Duration::from_secs(5)), None);
        assert!(r.is_empty());
    }

    #[test]
    fn from_zmq_refuses_what_a_bridge_wrapped_or_sent_to_zmq() {
        let t0 = Instant::now();
        let mut sent = IdMemory::new(8, Duration::from_secs(60));
        assert_eq!(
            check_from_zmq(&envelope("m1", "alice"), &mut sent, t0),
            Ok(())
        );
        assert_eq!(
            check_from_zmq(&envelope("m2", BRIDGE_USERNAME), &mut sent, t0),
            Err(Refusal::WrappedByBridge)
        );
        sent.remember("m3", t0);
        assert_eq!(
            check_from_zmq(&envelope("m3", "alice"), &mut sent, t0),
            Err(Refusal::SentTheOtherWay)
        );
        let wrapped = wrap_unsigned(&envelope("m4", "x"), 9, 0, "bridge").unwrap();
        assert_eq!(
            check_from_zmq(&wrapped, &mut sent, t0),
            Err(Refusal::WrappedByBridge)
        );
    }

    #[test]
    fn from_amqp_refuses_the_zmq_mark_and_what_went_to_amqp() {
        let t0 = Instant::now();
        let mut sent = IdMemory::new(8, Duration::from_secs(60));
        assert_eq!(check_from_amqp(Some("m1"), false, &mut sent, t0), Ok(()));
        assert_eq!(check_from_amqp(None, false, &mut sent, t0), Ok(()));
        assert_eq!(
            check_from_amqp(Some("m1"), true, &mut sent, t0),
            Err(Refusal::FromZmq)
        );
        sent.remember("m1", t0);
        assert_eq!(
            check_from_amqp(Some("m1"), false, &mut sent, t0),
            Err(Refusal::SentTheOtherWay)
        );
        assert_eq!(Refusal::FromZmq.kind(), "bridged_from_zmq");
    }

    #[test]
    fn a_wrapped_message_keeps_the_payload_and_id_and_names_the_bridge() {
        let mut unsigned = envelope("2026-abc", "ignored").body().clone();
        unsigned.remove("i");
        unsigned.remove("username");
        unsigned.insert(SCHEMA_FIELD.into(), json!("bodhi.update.v1"));
        unsigned.insert("msg".into(), json!({"f": 1.0, "deep": [1, {"x": null}]}));
        let unsigned = Envelope::from_body(unsigned).unwrap();
        let w = wrap_unsigned(&unsigned, 42, 1_800_000_000, "amqp-bridge.host").unwrap();
        assert_eq!(w.msg_id(), "2026-abc");
        assert_eq!(w.topic(), "org.x.dev.a.b");
        assert_eq!(w.msg()["deep"], json!([1, {"x": null}]));
        assert_eq!(w.timestamp(), Some(1_800_000_000), "the bridge's time");
        assert_eq!(w.body()[BRIDGE_MARK_FIELD]["sent_at"], 1_700_000_000);
        assert_eq!(w.str_field("username"), Some(BRIDGE_USERNAME));
        assert_eq!(w.schema_name(), Some("bodhi.update.v1"));
        assert_eq!(w.body()["i"], 42);
        assert_eq!(wrapped_by(&w), Some("amqp-bridge.host"));
        assert_eq!(wrapped_by(&unsigned), None);
        assert!(!w.wants_ack() && w.crypto().is_none());
        assert!(w.signed_part().is_ok(), "canonical, so signable");
    }
}
