//! The AMQP 0.9.1 transport (RabbitMQ), in fedora-messaging's wire format.
//!
//! One message is one AMQP message ([`AmqpMessage`], the [`WireFormat`]
//! [`Amqp`]):
//!
//! | fedmsg envelope | AMQP |
//! |---|---|
//! | `topic` | the routing key |
//! | `msg` | the body, canonical JSON (`content_type` `application/json`, `content_encoding` `utf-8`) |
//! | `msg_id` | the `message_id` property (and in `gilmsg_envelope`) |
//! | every other field the signature covers, `signature`, `certificate` | the `gilmsg_envelope` header: a JSON object (canonical) |
//! | `timestamp` | also the `sent-at` header (ISO 8601, `+00:00`) and the `timestamp` property |
//! | `fedora_messaging_schema` (if any) | also that header; `base.message` otherwise |
//!
//! so that one signed envelope verifies on both transports: a receiver
//! rebuilds exactly the fedmsg body (`topic` from the routing key, `msg` from
//! the body, the rest from the header) and verifies the same canonical
//! bytes. A message with no `gilmsg_envelope` header is fedora-messaging's
//! own, unsigned: its envelope is `topic`, `msg`, `msg_id` (`message_id`),
//! `timestamp` (`sent-at`) and `fedora_messaging_schema`.
//!
//! ACKs are ordinary signed messages on the bus's ACK topic, routed to the
//! one publisher that asked: a publisher's messages carry `reply_to =
//! <ack topic>.<publisher id>`, its exclusive ACK queue is bound to that key
//! on the publish exchange, and consumers publish the ACK with it. The
//! routing key is not signed; a receiver reads a routing key under the ACK
//! topic as the ACK topic ([`AmqpMessage::received`]). The publisher
//! (`publisher.rs`) and the consumer (`consumer.rs`) each run one tokio task
//! on a thread of their own, driving the same drivers as ZeroMQ's socket
//! threads; `connect.rs` opens the connection (TLS with rustls on ring,
//! client certificates) and declares what the configuration lists.
//! `docs/wire-format.md` (AMQP) is the reference.

pub(crate) mod connect;
pub(crate) mod consumer;
pub(crate) mod external;
pub(crate) mod publisher;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use gilmsg_proto::envelope::{parse_json, SCHEMA_FIELD};
use gilmsg_proto::{DecodeError, Envelope, Sealed};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{Map, Value};

use crate::transport::WireFormat;

/// The header holding the signed envelope fields (all but `topic` and
/// `msg`) with `signature` and `certificate`, as a JSON object.
pub const ENVELOPE_HEADER: &str = "gilmsg_envelope";
/// fedora-messaging's schema header.
pub const SCHEMA_HEADER: &str = "fedora_messaging_schema";
/// fedora-messaging's severity header (20: INFO).
pub const SEVERITY_HEADER: &str = "fedora_messaging_severity";
/// fedora-messaging's send time header.
pub const SENT_AT_HEADER: &str = "sent-at";
/// The schema fedora-messaging consumers use for a message without one.
pub const BASE_SCHEMA: &str = "base.message";
/// RabbitMQ's delivery count (quorum queues).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What the broker said about one sent message, for the timeout's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerVerdict {
    /// The broker never confirmed it (it may be lost).
    NotConfirmed,
    /// The broker confirmed it and routed it to at least one queue: it
    /// waits there for the recipients that did not ACK.
    ConfirmedRouted,
}

impl std::fmt::Display for BrokerVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerVerdict::NotConfirmed => f.write_str("the broker never confirmed it"),
            BrokerVerdict::ConfirmedRouted => f.write_str(
                "the broker confirmed it and routed it to a queue, where it waits for them",
            ),
        }
    }
}

/// One message as AMQP carries it.
#[derive(Debug)]
pub(crate) struct AmqpMessage {
    /// What it is published with, or arrived with.
    pub(crate) routing_key: String,
    /// The topic the rules see: the routing key, except for an ACK routed
    /// to one publisher (`<ack topic>.<id>`), which is the ACK topic.
    pub(crate) topic: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// A received message's broker delivery count (`x-delivery-count`).
    pub(crate) delivery_count: Option<u32>,
    /// A sent message's broker confirms: the connection generation it was
    /// last confirmed (and routed) on, 0 for none ...
    pub(crate) confirmed_on: AtomicU64,
    /// ... and whether it ever was.
    pub(crate) ever_confirmed: AtomicBool,
}

impl AmqpMessage {
    /// A received message; `ack_topic` is the bus's, under which ACKs are
    /// routed to their publisher.
    pub(crate) fn received(
        routing_key: String,
        body: Vec<u8>,
        properties: BasicProperties,
        ack_topic: &str,
    ) -> Self {
        let topic = match routing_key.strip_prefix(ack_topic) {
            Some(rest) if rest.starts_with('.') => ack_topic.to_owned(),
            _ => routing_key.clone(),
        };
        let delivery_count = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER))
            .and_then(amqp_u32);
        AmqpMessage {
            routing_key,
            topic,
            body,
            properties,
            delivery_count,
            confirmed_on: AtomicU64::new(0),
            ever_confirmed: AtomicBool::new(false),
        }
    }

    /// The `message_id` property.
    pub(crate) fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The `reply_to` property.
    pub(crate) fn reply_to(&self) -> Option<&str> {
        self.properties.reply_to().as_ref().map(ShortString::as_str)
    }

    /// Marks it confirmed and routed on connection `generation`.
    pub(crate) fn confirm(&self, generation: u64) {
        self.confirmed_on.store(generation, Ordering::Relaxed);
        self.ever_confirmed.store(true, Ordering::Relaxed);
    }

    /// Whether the broker holds it on connection `generation` (so a
    /// re-send would only add a copy to the queues).
    pub(crate) fn held_on(&self, generation: u64) -> bool {
        self.confirmed_on.load(Ordering::Relaxed) == generation
    }
}

/// A header value as a count, if it is a whole number.
fn amqp_u32(value: &AMQPValue) -> Option<u32> {
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn header_text(headers: &FieldTable, name: &str) -> Option<Vec<u8>> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

/// `2026-11-30T09:00:00+00:00` for `secs`, as fedora-messaging writes
/// `sent-at`.
pub(crate) fn sent_at(secs: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    at.format(&format).ok()
}

/// Seconds since the epoch of an ISO 8601 `sent-at` (with offset; fractions
/// of a second dropped).
pub(crate) fn parse_sent_at(text: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(
        text.trim(),
        &time::format_description::well_known::Iso8601::DEFAULT,
    )
    .ok()?;
    Some(at.unix_timestamp())
}

/// The AMQP wire form.
pub(crate) struct Amqp;

impl WireFormat for Amqp {
    type Wire = Arc<AmqpMessage>;

    fn encode(message: Sealed) -> Arc<AmqpMessage> {
        Arc::new(encode(&message))
    }

    fn topic(wire: &Arc<AmqpMessage>) -> &[u8] {
        wire.topic.as_bytes()
    }

    fn decode(wire: &Arc<AmqpMessage>, max_size: usize) -> Result<Envelope, DecodeError> {
        decode(wire, max_size)
    }

    fn broker_verdict(wire: &Arc<AmqpMessage>) -> Option<BrokerVerdict> {
        Some(if wire.ever_confirmed.load(Ordering::Relaxed) {
            BrokerVerdict::ConfirmedRouted
        } else {
            BrokerVerdict::NotConfirmed
        })
    }
}

/// The AMQP form of a built message (see the module doc). The body and the
/// header are each canonical JSON: the signed part is the canonical JSON of
/// their union with the topic, which every receiver recomputes.
fn encode(message: &Sealed) -> AmqpMessage {
    encode_envelope(message.envelope(), None)
}

/// [`encode`] for any envelope (a received one too: the bridge carries
/// ZeroMQ messages to AMQP with it, signed fields untouched), with one more
/// (unsigned) header if `extra` names one.
pub(crate) fn encode_envelope(
    envelope: &gilmsg_proto::Envelope,
    extra: Option<(&str, &str)>,
) -> AmqpMessage {
    let body = envelope.body();
    let msg_text = gilmsg_proto::canonical::to_string(envelope.msg())
        // Sealed messages are canonical already, and the bridge checks a
        // received one first (its signed part); never here.
        .unwrap_or_else(|_| "null".to_owned());
    let header = gilmsg_proto::canonical::object_to_string_without(body, &["topic", "msg"])
        .unwrap_or_else(|_| "{}".to_owned());
    let mut headers = FieldTable::default();
    headers.insert(
        ENVELOPE_HEADER.into(),
        AMQPValue::LongString(LongString::from(header)),
    );
    let schema = envelope.str_field(SCHEMA_FIELD).unwrap_or(BASE_SCHEMA);
    headers.insert(
        SCHEMA_HEADER.into(),
        AMQPValue::LongString(LongString::from(schema)),
    );
    headers.insert(SEVERITY_HEADER.into(), AMQPValue::LongInt(20));
    if let Some((name, value)) = extra {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    let timestamp = envelope.timestamp();
    if let Some(text) = timestamp.and_then(sent_at) {
        headers.insert(
            SENT_AT_HEADER.into(),
            AMQPValue::LongString(LongString::from(text)),
        );
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_message_id(envelope.msg_id().into())
        .with_headers(headers);
    if let Some(ts) = timestamp.and_then(|t| u64::try_from(t).ok()) {
        properties = properties.with_timestamp(ts);
    }
    AmqpMessage {
        routing_key: envelope.topic().to_owned(),
        topic: envelope.topic().to_owned(),
        body: msg_text.into_bytes(),
        properties,
        delivery_count: None,
        confirmed_on: AtomicU64::new(0),
        ever_confirmed: AtomicBool::new(false),
    }
}

/// Rebuilds the fedmsg envelope of a received message (see the module doc).
pub(crate) fn decode(wire: &AmqpMessage, max_size: usize) -> Result<Envelope, DecodeError> {
    let headers = wire.properties.headers().clone().unwrap_or_default();
    let envelope_text = header_text(&headers, ENVELOPE_HEADER);
    let size = wire.body.len() + envelope_text.as_ref().map_or(0, Vec::len);
    if size > max_size {
        return Err(DecodeError::Oversize {
            size,
            limit: max_size,
        });
    }
    let msg = parse_json(&wire.body)?;
    let mut body = match &envelope_text {
        Some(text) => match parse_json(text)? {
            Value::Object(fields) => fields,
            _ => {
                return Err(DecodeError::Shape(format!(
                    "header {ENVELOPE_HEADER} is not a JSON object"
                )))
            }
        },
        None => foreign_fields(wire, &headers)?,
    };
    for field in ["topic", "msg"] {
        if body.contains_key(field) {
            return Err(DecodeError::Shape(format!(
                "header {ENVELOPE_HEADER} holds {field:?}, which the routing key and body carry"
            )));
        }
    }
    body.insert("topic".into(), Value::String(wire.topic.clone()));
    body.insert("msg".into(), msg);
    let envelope = Envelope::from_body(body)?;
    if let Some(id) = wire.message_id() {
        if envelope_text.is_some() && id != envelope.msg_id() {
            return Err(DecodeError::Shape(format!(
                "message_id property {id:?} differs from the signed msg_id"
            )));
        }
    }
    Ok(envelope)
}

/// The envelope fields of a fedora-messaging message (no
/// `gilmsg_envelope`): unsigned, from its properties and headers.
fn foreign_fields(
    wire: &AmqpMessage,
    headers: &FieldTable,
) -> Result<Map<String, Value>, DecodeError> {
    let mut body = Map::new();
    let Some(id) = wire.message_id() else {
        return Err(DecodeError::Shape("no message_id property".into()));
    };
    body.insert("msg_id".into(), Value::String(id.to_owned()));
    let sent = header_text(headers, SENT_AT_HEADER)
        .and_then(|t| String::from_utf8(t).ok())
        .and_then(|t| parse_sent_at(&t))
        .or_else(|| {
            wire.properties
                .timestamp()
                .and_then(|t| i64::try_from(t).ok())
        });
    if let Some(ts) = sent {
        body.insert("timestamp".into(), Value::from(ts));
    }
    if let Some(schema) =
        header_text(headers, SCHEMA_HEADER).and_then(|t| String::from_utf8(t).ok())
    {
        body.insert(SCHEMA_FIELD.into(), Value::String(schema));
    }
    Ok(body)
}

/// The AMQP binding keys that receive what a ZeroMQ subscription to the
/// topic prefix `prefix` receives, as near as a topic exchange can: `""`
/// is everything (`#`); `a.b.` is everything under `a.b`; `a.b` is `a.b`
/// itself and everything under it (a ZeroMQ prefix would also match
/// `a.bc`, which no binding key can).
pub(crate) fn binding_keys(prefix: &str) -> Vec<String> {
    let trimmed = prefix.trim_end_matches('.');
    if trimmed.is_empty() {
        return vec!["#".to_owned()];
    }
    if prefix.ends_with('.') {
        vec![format!("{trimmed}.#")]
    } else {
        vec![trimmed.to_owned(), format!("{trimmed}.#")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zeromq::Frames;
    use gilmsg_proto::{Draft, SignError, Signer};
    use serde_json::json;

    struct ToySigner;
    impl Signer for ToySigner {
        fn name(&self) -> &str {
            "toy"
        }
        fn scheme(&self) -> &str {
            "ed25519"
        }
        fn certificate(&self) -> &str {
            "Q0VSVA=="
        }
        fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
            Ok(format!("sig-of-{}", canonical.len()))
        }
    }

    fn sealed() -> Sealed {
        Draft {
            topic: "org.test.dev.demo.greeting".into(),
            msg: json!({"text": "h\u{e9}llo", "n": [1.5, 12345678901234567890u64, null], "deep": {"b": 1, "a": "x"}}),
            msg_id: "2026-7b8c".into(),
            i: 7,
            timestamp: 1_700_000_000,
            username: "alice".into(),
            wants_ack: true,
        }
        .seal(Some(&ToySigner))
        .unwrap()
    }

    #[test]
    fn one_signed_envelope_decodes_to_the_same_signed_parts_on_both_transports() {
        let message = sealed();
        let expected = message.signed_part().clone();
        let frames = Frames::encode(message.clone());
        let over_zmq = Frames::decode(&frames, 1 << 20).unwrap();
        let wire = Amqp::encode(message.clone());
        // What a receiver gets: the routing key, body and properties.
        let received = AmqpMessage::received(
            wire.routing_key.clone(),
            wire.body.clone(),
            wire.properties.clone(),
            "org.test.dev.gilmsg.ack",
        );
        let over_amqp = Amqp::decode(&Arc::new(received), 1 << 20).unwrap();
        assert_eq!(over_amqp, over_zmq);
        assert_eq!(over_amqp.signed_part().unwrap(), expected);
        assert_eq!(over_zmq.signed_part().unwrap(), expected);
        assert_eq!(
            over_amqp.str_field("signature"),
            message.envelope().str_field("signature")
        );
        assert_eq!(over_amqp.str_field("certificate"), Some("Q0VSVA=="));
    }

    #[test]
    fn the_wire_is_what_fedora_messaging_reads() {
        let wire = Amqp::encode(sealed());
        assert_eq!(wire.routing_key, "org.test.dev.demo.greeting");
        let body: Value = serde_json::from_slice(&wire.body).unwrap();
        assert_eq!(body["text"], "h\u{e9}llo");
        let p = &wire.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "utf-8");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(wire.message_id(), Some("2026-7b8c"));
        let headers = p.headers().clone().unwrap();
        let text = |h| String::from_utf8(header_text(&headers, h).unwrap()).unwrap();
        assert_eq!(text(SCHEMA_HEADER), "base.message");
        assert_eq!(text(SENT_AT_HEADER), "2023-11-14T22:13:20+00:00");
        assert_eq!(parse_sent_at(&text(SENT_AT_HEADER)), Some(1_700_000_000));
        let env: Value = serde_json::from_str(&text(ENVELOPE_HEADER)).unwrap();
        assert_eq!(env["msg_id"], "2026-7b8c");
        assert!(env.get("topic").is_none() && env.get("msg").is_none());
    }

    fn foreign(headers: FieldTable, id: Option<&str>) -> Arc<AmqpMessage> {
        let mut p = BasicProperties::default().with_headers(headers);
        if let Some(id) = id {
            p = p.with_message_id(id.into());
        }
        Arc::new(AmqpMessage::received(
            "bodhi.update".into(),
            br#"{"a": 1, "b": [true, null]}"#.to_vec(),
            p,
            "gilmsg.ack",
        ))
    }

    #[test]
    fn a_fedora_messaging_message_decodes_unsigned() {
        let mut h = FieldTable::default();
        h.insert(
            SENT_AT_HEADER.into(),
            AMQPValue::LongString("2026-11-30T09:00:00+00:00".into()),
        );
        h.insert(
            SCHEMA_HEADER.into(),
            AMQPValue::LongString("bodhi.update.v1".into()),
        );
        let e = Amqp::decode(&foreign(h.clone(), Some("m-1")), 1 << 20).unwrap();
        assert_eq!(e.topic(), "bodhi.update");
        assert_eq!(e.msg_id(), "m-1");
        assert_eq!(e.msg()["a"], 1);
        assert_eq!(e.timestamp(), parse_sent_at("2026-11-30T09:00:00Z"));
        assert_eq!(e.str_field(SCHEMA_FIELD), Some("bodhi.update.v1"));
        assert!(e.crypto().is_none() && !e.wants_ack());
        let err = Amqp::decode(&foreign(h, None), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), "wrong_shape");
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut h = FieldTable::default();
        h.insert(
            ENVELOPE_HEADER.into(),
            AMQPValue::LongString(r#"{"msg_id":"x","topic":"other"}"#.into()),
        );
        assert_eq!(
            Amqp::decode(&foreign(h, Some("x")), 1 << 20)
                .unwrap_err()
                .kind(),
            "wrong_shape"
        );
        let mut h = FieldTable::default();
        h.insert(ENVELOPE_HEADER.into(), AMQPValue::LongString("[1]".into()));
        assert_eq!(
            Amqp::decode(&foreign(h, Some("x")), 1 << 20)
                .unwrap_err()
                .kind(),
            "wrong_shape"
        );
        let mut h = FieldTable::default();
        h.insert(
            ENVELOPE_HEADER.into(),
            AMQPValue::LongString(r#"{"msg_id":"y"}"#.into()),
        );
        assert_eq!(
            Amqp::decode(&foreign(h, Some("x")), 1 << 20)
                .unwrap_err()
                .kind(),
            "wrong_shape"
        );
        let mut h = FieldTable::default();
        h.insert(
            ENVELOPE_HEADER.into(),
            AMQPValue::LongString("{".repeat(100).into()),
        );
        assert_eq!(
            Amqp::decode(&foreign(h, Some("x")), 1 << 20)
                .unwrap_err()
                .kind(),
            "not_json"
        );
        let h = FieldTable::default();
        assert_eq!(
            Amqp::decode(&foreign(h, Some("x")), 8).unwrap_err().kind(),
            "oversize"
        );
    }

    #[test]
    fn acks_routed_to_one_publisher_read_as_the_ack_topic() {
        let p = BasicProperties::default();
        let m = AmqpMessage::received("a.gilmsg.ack.f00".into(), vec![], p.clone(), "a.gilmsg.ack");
        assert_eq!(m.topic, "a.gilmsg.ack");
        let m = AmqpMessage::received("a.gilmsg.ackx".into(), vec![], p, "a.gilmsg.ack");
        assert_eq!(m.topic, "a.gilmsg.ackx");
    }

    #[test]
    fn zeromq_prefixes_become_binding_keys() {
        assert_eq!(binding_keys(""), ["#"]);
        assert_eq!(binding_keys("org.x.dev."), ["org.x.dev.#"]);
        assert_eq!(
            binding_keys("org.x.dev.demo"),
            ["org.x.dev.demo", "org.x.dev.demo.#"]
        );
    }
}
