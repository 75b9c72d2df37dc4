//! The fedmsg message envelope: building, signing, encoding and decoding.
//!
//! On the wire a message is a two-frame ZeroMQ message `[topic, body]`, the
//! body a JSON object:
//!
//! | field | type | notes |
//! |---|---|---|
//! | `topic` | string | `<topic_prefix>.<environment>.<modname>.<topic>`, equal to frame 0 |
//! | `msg` | any JSON | the payload |
//! | `msg_id` | string | `<year>-<uuid4>`, unique per message, kept across re-sends |
//! | `i` | integer | per-sender sequence number, from 1 |
//! | `timestamp` | number | seconds since the epoch |
//! | `username` | string | the OS user of the sender |
//! | `crypto` | string | signature scheme, signed |
//! | `gilmsg_version` | string | present when the sender wants ACKs; signed by us |
//! | `signature`, `certificate` | string | not covered by the signature |
//!
//! The signature covers [`crate::canonical`] JSON of the body minus
//! `signature` and `certificate`. Relays may re-serialise bodies, so nothing
//! here ever trusts the raw bytes: verification and digests always parse and
//! re-canonicalise.

use serde_json::{Map, Value};

use crate::auth::{SignError, Signer};
use crate::canonical::{self, CanonicalError};

/// Fields left out of the signed bytes.
pub const UNSIGNED_FIELDS: [&str; 2] = ["signature", "certificate"];
/// The field whose presence asks consumers for an ACK.
pub const GILMSG_VERSION_FIELD: &str = "gilmsg_version";
/// The `gilmsg_version` value this implementation writes.
pub const GILMSG_VERSION: &str = concat!("gilmsg-rs/", env!("CARGO_PKG_VERSION"));

/// Why a received message was not accepted as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not exactly two frames.
    #[error("expected 2 frames [topic, body], got {0}")]
    FrameCount(usize),
    /// The topic frame is not UTF-8.
    #[error("topic frame is not UTF-8")]
    TopicNotUtf8,
    /// The body is larger than the configured limit.
    #[error("body of {size} bytes exceeds the {limit}-byte limit")]
    Oversize {
        /// Body size in bytes.
        size: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but has the wrong shape.
    #[error("body has the wrong shape: {0}")]
    Shape(String),
    /// The frame topic and the (signed) body topic differ.
    #[error("frame topic {frame:?} differs from body topic {body:?}")]
    TopicMismatch {
        /// Topic from frame 0.
        frame: String,
        /// Topic from the body.
        body: String,
    },
    /// The body holds a value that has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

impl DecodeError {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::FrameCount(_) => "bad_frame_count",
            DecodeError::TopicNotUtf8 => "topic_not_utf8",
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::Shape(_) => "wrong_shape",
            DecodeError::TopicMismatch { .. } => "topic_mismatch",
            DecodeError::Canonical(_) => "not_canonicalisable",
        }
    }
}

/// Topic naming for one bus: `<topic_prefix>.<environment>.<modname>.<topic>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicScheme {
    prefix: String,
}

impl TopicScheme {
    /// A scheme for `topic_prefix` and `environment`.
    pub fn new(topic_prefix: &str, environment: &str) -> Self {
        TopicScheme {
            prefix: format!("{topic_prefix}.{environment}"),
        }
    }

    /// `<topic_prefix>.<environment>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full topic for a module's sub-topic.
    pub fn topic(&self, modname: &str, topic: &str) -> String {
        format!("{}.{modname}.{topic}", self.prefix)
    }

    /// The topic every ACK is published on.
    pub fn ack_topic(&self) -> String {
        self.topic("gilmsg", "ack")
    }
}

/// A new message id, `<year>-<uuid4>`, as fedmsg makes them.
pub fn new_msg_id(year: i32) -> String {
    format!("{year}-{}", uuid::Uuid::new_v4())
}

/// Everything needed to build one outgoing message.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Full topic.
    pub topic: String,
    /// Payload.
    pub msg: Value,
    /// Message id.
    pub msg_id: String,
    /// Sender sequence number.
    pub i: u64,
    /// Seconds since the epoch.
    pub timestamp: i64,
    /// OS user name.
    pub username: String,
    /// Whether to ask for ACKs (adds a signed `gilmsg_version`).
    pub wants_ack: bool,
}

impl Draft {
    /// Builds the body, signed with `signer` when one is given.
    pub fn build(self, signer: Option<&dyn Signer>) -> Result<Envelope, BuildError> {
        let mut body = Map::new();
        body.insert("topic".into(), Value::String(self.topic));
        body.insert("msg".into(), self.msg);
        body.insert("msg_id".into(), Value::String(self.msg_id));
        body.insert("i".into(), Value::from(self.i));
        body.insert("timestamp".into(), Value::from(self.timestamp));
        body.insert("username".into(), Value::String(self.username));
        if self.wants_ack {
            body.insert(
                GILMSG_VERSION_FIELD.into(),
                Value::String(GILMSG_VERSION.into()),
            );
        }
        let mut envelope = Envelope::from_map(body);
        if let Some(signer) = signer {
            envelope.sign(signer)?;
        } else {
            // Even unsigned bodies must be canonicalisable: the digest in an ACK
            // is computed from the same bytes.
            envelope.signed_part()?;
        }
        Ok(envelope)
    }
}

/// Why an outgoing message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The payload has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// A message body, parsed and checked for shape. Accessors for the required
/// fields never fail: [`Envelope::decode`] has checked their types.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    body: Map<String, Value>,
}

impl Envelope {
    fn from_map(body: Map<String, Value>) -> Self {
        Envelope { body }
    }

    /// Decodes a ZeroMQ message `[topic, body]`, checking frame count, size,
    /// JSON syntax, required fields and that the frame topic matches the body.
    pub fn decode<F: AsRef<[u8]>>(frames: &[F], max_size: usize) -> Result<Self, DecodeError> {
        if frames.len() != 2 {
            return Err(DecodeError::FrameCount(frames.len()));
        }
        let topic =
            std::str::from_utf8(frames[0].as_ref()).map_err(|_| DecodeError::TopicNotUtf8)?;
        let envelope = Self::parse_body(frames[1].as_ref(), max_size)?;
        if envelope.topic() != topic {
            return Err(DecodeError::TopicMismatch {
                frame: topic.to_owned(),
                body: envelope.topic().to_owned(),
            });
        }
        Ok(envelope)
    }

    /// Parses and shape-checks a body on its own.
    pub fn parse_body(bytes: &[u8], max_size: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_size {
            return Err(DecodeError::Oversize {
                size: bytes.len(),
                limit: max_size,
            });
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Value::Object(body) = value else {
            return Err(DecodeError::Shape("body is not a JSON object".into()));
        };
        require(&body, "topic", Value::is_string, "a string")?;
        require(&body, "msg", |_| true, "present")?;
        require(&body, "msg_id", Value::is_string, "a string")?;
        for (field, check, expected) in [
            ("i", Value::is_number as fn(&Value) -> bool, "a number"),
            ("timestamp", Value::is_number, "a number"),
            (
                "username",
                |v: &Value| v.is_string() || v.is_null(),
                "a string",
            ),
            ("crypto", Value::is_string, "a string"),
            ("signature", Value::is_string, "a string"),
            ("certificate", Value::is_string, "a string"),
            (
                GILMSG_VERSION_FIELD,
                |v: &Value| v.is_string() || v.is_number(),
                "a string",
            ),
        ] {
            if let Some(v) = body.get(field) {
                if !check(v) {
                    return Err(DecodeError::Shape(format!(
                        "field {field:?} is not {expected}"
                    )));
                }
            }
        }
        Ok(Envelope { body })
    }

    /// Signs in place: sets `crypto`, then `signature` and `certificate`.
    pub fn sign(&mut self, signer: &dyn Signer) -> Result<(), BuildError> {
        self.body
            .insert("crypto".into(), Value::String(signer.scheme().to_owned()));
        let canonical = self.signed_part()?;
        let signature = signer.sign(canonical.as_bytes())?;
        self.body
            .insert("signature".into(), Value::String(signature));
        self.body.insert(
            "certificate".into(),
            Value::String(signer.certificate().to_owned()),
        );
        Ok(())
    }

    /// The canonical bytes a signature covers.
    pub fn signed_part(&self) -> Result<String, CanonicalError> {
        canonical::object_to_string_without(&self.body, &UNSIGNED_FIELDS)
    }

    /// The canonical bytes with `gilmsg_version` also left out: what Python
    /// gilmsg signed, since it adds that field after signing.
    pub fn signed_part_without_gilmsg_version(&self) -> Result<String, CanonicalError> {
        canonical::object_to_string_without(
            &self.body,
            &["signature", "certificate", GILMSG_VERSION_FIELD],
        )
    }

    /// The two frames to send: topic and canonical body.
    pub fn encode(&self) -> Result<[Vec<u8>; 2], CanonicalError> {
        let body = canonical::object_to_string_without(&self.body, &[])?;
        Ok([self.topic().as_bytes().to_vec(), body.into_bytes()])
    }

    /// The full topic (from the signed body).
    pub fn topic(&self) -> &str {
        self.str_field("topic").unwrap_or_default()
    }

    /// The payload.
    pub fn msg(&self) -> &Value {
        self.body.get("msg").unwrap_or(&Value::Null)
    }

    /// The message id.
    pub fn msg_id(&self) -> &str {
        self.str_field("msg_id").unwrap_or_default()
    }

    /// A string field, if present and a string.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }

    /// The signature scheme, if signed.
    pub fn crypto(&self) -> Option<&str> {
        self.str_field("crypto")
    }

    /// Whether the sender asked for ACKs.
    pub fn wants_ack(&self) -> bool {
        self.body.contains_key(GILMSG_VERSION_FIELD)
    }

    /// The whole body.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The body as a JSON value (clones).
    pub fn to_value(&self) -> Value {
        Value::Object(self.body.clone())
    }
}

fn require(
    body: &Map<String, Value>,
    field: &str,
    check: impl Fn(&Value) -> bool,
    expected: &str,
) -> Result<(), DecodeError> {
    match body.get(field) {
        None => Err(DecodeError::Shape(format!("missing field {field:?}"))),
        Some(v) if !check(v) => Err(DecodeError::Shape(format!(
            "field {field:?} is not {expected}"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct FakeSigner;
    impl Signer for FakeSigner {
        fn name(&self) -> &str {
            "fake"
        }
        fn scheme(&self) -> &str {
            "test"
        }
        fn certificate(&self) -> &str {
            "CERT"
        }
        fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
            Ok(format!("len={}", canonical.len()))
        }
    }

    fn draft() -> Draft {
        Draft {
            topic: "org.test.dev.logger.log".into(),
            msg: json!({"text": "héllo", "n": 1.5}),
            msg_id: new_msg_id(2026),
            i: 1,
            timestamp: 1_700_000_000,
            username: "alice".into(),
            wants_ack: true,
        }
    }

    #[test]
    fn build_sign_encode_decode_roundtrip() {
        let envelope = draft().build(Some(&FakeSigner)).unwrap();
        assert_eq!(envelope.crypto(), Some("test"));
        assert!(envelope.wants_ack());
        let signed = envelope.signed_part().unwrap();
        assert!(signed.contains("\"crypto\":\"test\""));
        assert!(signed.contains("gilmsg_version"));
        assert!(!signed.contains("CERT"));
        let frames = envelope.encode().unwrap();
        let decoded = Envelope::decode(&frames, 1 << 20).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.signed_part().unwrap(), signed);
    }

    #[test]
    fn decode_rejects_bad_input() {
        let topic = b"org.test.dev.logger.log".to_vec();
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (vec![b"garbage".to_vec()], "bad_frame_count"),
            (
                vec![topic.clone(), b"{}".to_vec(), b"x".to_vec()],
                "bad_frame_count",
            ),
            (vec![vec![0xff, 0xfe], b"{}".to_vec()], "topic_not_utf8"),
            (vec![topic.clone(), b"not json".to_vec()], "not_json"),
            (vec![topic.clone(), b"[1,2]".to_vec()], "wrong_shape"),
            (
                vec![
                    topic.clone(),
                    br#"{"topic":"org.test.dev.logger.log","msg":1}"#.to_vec(),
                ],
                "wrong_shape",
            ),
            (
                vec![
                    topic.clone(),
                    br#"{"topic":"org.test.dev.logger.log","msg":1,"msg_id":7}"#.to_vec(),
                ],
                "wrong_shape",
            ),
            (
                vec![
                    b"other".to_vec(),
                    br#"{"topic":"org.test.dev.logger.log","msg":1,"msg_id":"x"}"#.to_vec(),
                ],
                "topic_mismatch",
            ),
            (vec![topic.clone(), vec![b' '; 100]], "oversize"),
        ];
        for (frames, kind) in cases {
            let err = Envelope::decode(&frames, 64).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn topics() {
        let scheme = TopicScheme::new("org.fedoraproject", "dev");
        assert_eq!(
            scheme.topic("logger", "log"),
            "org.fedoraproject.dev.logger.log"
        );
        assert_eq!(scheme.ack_topic(), "org.fedoraproject.dev.gilmsg.ack");
        let id = new_msg_id(2026);
        assert!(id.starts_with("2026-") && id.len() == 41);
    }
}
