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
//! | `fedora_messaging_schema` | string | the schema `msg` was checked against, when its topic has one ([`crate::schema`]) |
//! | `signature`, `certificate` | string | not covered by the signature |
//!
//! The signature covers [`crate::canonical`] JSON of the body minus
//! `signature` and `certificate`. Relays may re-serialise bodies, so nothing
//! here ever trusts the raw bytes: verification and digests always parse and
//! re-canonicalise, and a received number written otherwise than the
//! signature covers it is refused (see [`crate::canonical`]).
//!
//! Decoding also refuses what no honest peer sends and what would be unsafe
//! to print or pass on: bodies nested deeper than
//! [`canonical::MAX_DEPTH`], and a `topic` or
//! `msg_id` holding control characters (NUL, ESC, line breaks) or the
//! Unicode line separators and bidirectional overrides.

use serde_json::{Map, Value};

use crate::auth::{SignError, Signer};
use crate::canonical::{self, CanonicalError, Place};
use crate::digest::Digest;
/// The signed field naming the message's schema (see [`crate::schema`]);
/// the AMQP transport also writes it as fedora-messaging's header of that
/// name and reads an unsigned fedora-messaging message's header into it.
pub use crate::schema::SCHEMA_FIELD;

/// Fields left out of the signed bytes.
pub const UNSIGNED_FIELDS: [&str; 2] = ["signature", "certificate"];
/// The field whose presence asks consumers for an ACK.
pub const GILMSG_VERSION_FIELD: &str = "gilmsg_version";
/// The `gilmsg_version` value this implementation writes.
pub const GILMSG_VERSION: &str = concat!("gilmsg-rs/", env!("CARGO_PKG_VERSION"));
/// Signed field naming the recipients an acknowledged message must be
/// acked by (a list of certificate names), written by gilmsg-rs beside
/// `gilmsg_version`: what lets a watcher that is not the publisher (the
/// firehose's receipt events, `docs/firehose.md`) know whom to wait for.
/// Optional: Python gilmsg does not write it, and no consumer needs it.
pub const RECIPIENTS_FIELD: &str = "gilmsg_recipients";
/// The most names [`Envelope::recipients`] reads from one message; a
/// longer list is read as absent (a watcher's memory per message is bounded).
pub const MAX_RECIPIENTS: usize = 1024;

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
    /// The body is not UTF-8.
    #[error("body is not UTF-8: {0}")]
    NotUtf8(String),
    /// The body escapes half of a UTF-16 surrogate pair (`"\ud800"`), which
    /// Python accepts and no Rust string can hold.
    #[error("body holds a lone UTF-16 surrogate: {0}")]
    LoneSurrogate(String),
    /// Arrays and objects nest deeper than
    /// [`MAX_DEPTH`](crate::canonical::MAX_DEPTH) (checked before parsing).
    #[error("body nests more than {limit} levels deep")]
    TooDeep {
        /// The bound.
        limit: usize,
    },
    /// `topic` or `msg_id` holds a character that is unsafe to print or to
    /// pass to a command (see [`is_unsafe_char`]).
    #[error("field {field:?} holds a control character")]
    ControlCharacter {
        /// `"topic"` or `"msg_id"`.
        field: &'static str,
    },
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
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::LoneSurrogate(_) => "lone_surrogate",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::ControlCharacter { field: "topic" } => "control_char_in_topic",
            DecodeError::ControlCharacter { .. } => "control_char_in_msg_id",
            DecodeError::Shape(_) => "wrong_shape",
            DecodeError::TopicMismatch { .. } => "topic_mismatch",
            DecodeError::Canonical(e) => e.kind(),
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

    /// A scheme whose topics are `<prefix>.<modname>.<topic>`, or
    /// `<modname>.<topic>` for an empty prefix: fedora-messaging's
    /// `topic_prefix`, which is the whole prefix and empty by default.
    pub fn from_prefix(prefix: &str) -> Self {
        TopicScheme {
            prefix: prefix.trim_end_matches('.').to_owned(),
        }
    }

    /// `<topic_prefix>.<environment>` (possibly empty, see
    /// [`TopicScheme::from_prefix`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full topic for a module's sub-topic.
    pub fn topic(&self, modname: &str, topic: &str) -> String {
        if self.prefix.is_empty() {
            format!("{modname}.{topic}")
        } else {
            format!("{}.{modname}.{topic}", self.prefix)
        }
    }

    /// What every topic of this bus starts with: `<prefix>.`, or nothing
    /// for an empty prefix.
    pub fn topic_root(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", self.prefix)
        }
    }

    /// The topic every ACK is published on.
    pub fn ack_topic(&self) -> String {
        self.topic("gilmsg", "ack")
    }
}

/// Whether `c` may not appear in a `topic` or `msg_id`: control characters
/// (C0, DEL, C1: NUL, ESC, newlines), the Unicode line and paragraph
/// separators, and the bidirectional embedding, override and isolate marks,
/// which can make printed text read differently from what it is.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
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
    ///
    /// Numbers in `msg` are first brought to their canonical text
    /// ([`canonical::normalise_numbers`]): one that would be signed as
    /// another value is refused ([`CanonicalError::InexactNumber`]), and so
    /// is a `msg` nested too deep ([`CanonicalError::TooDeep`]) or a `topic`
    /// or `msg_id` that receivers would refuse ([`BuildError::UnsafeField`]).
    pub fn build(self, signer: Option<&dyn Signer>) -> Result<Envelope, BuildError> {
        self.seal(signer).map(Sealed::into_envelope)
    }

    /// [`Draft::build`], keeping the canonical signed part it computed:
    /// what a sender needs to put the message on the wire
    /// ([`Sealed::body_text`]) and to know the digest ACKs will name,
    /// without serialising the body again.
    pub fn seal(self, signer: Option<&dyn Signer>) -> Result<Sealed, BuildError> {
        self.seal_with_schema(None, signer)
    }

    /// [`Draft::seal`], naming the schema `msg` was checked against in the
    /// signed field [`SCHEMA_FIELD`] (fedora-messaging's
    /// `fedora_messaging_schema`) when `schema` is given. The field is
    /// optional, so it is an argument here rather than a field of every
    /// `Draft`; checking `msg` is the caller's (see [`crate::schema`]).
    pub fn seal_with_schema(
        self,
        schema: Option<&str>,
        signer: Option<&dyn Signer>,
    ) -> Result<Sealed, BuildError> {
        self.seal_with(schema, &[], signer)
    }

    /// [`Draft::seal_with_schema`], also naming `recipients` in the signed
    /// field [`RECIPIENTS_FIELD`] when the message asks for ACKs and the
    /// list is not empty (what `Bus::publish` sends).
    pub fn seal_with(
        mut self,
        schema: Option<&str>,
        recipients: &[String],
        signer: Option<&dyn Signer>,
    ) -> Result<Sealed, BuildError> {
        for (field, value) in [
            ("topic", self.topic.as_str()),
            ("msg_id", &self.msg_id),
            (SCHEMA_FIELD, schema.unwrap_or_default()),
        ] {
            if value.chars().any(is_unsafe_char) {
                return Err(BuildError::UnsafeField(field));
            }
        }
        canonical::normalise_numbers(&mut self.msg, 1)?;
        let mut body = Map::new();
        body.insert("topic".into(), Value::String(self.topic));
        body.insert("msg".into(), self.msg);
        body.insert("msg_id".into(), Value::String(self.msg_id));
        body.insert("i".into(), Value::from(self.i));
        body.insert("timestamp".into(), Value::from(self.timestamp));
        body.insert("username".into(), Value::String(self.username));
        if let Some(schema) = schema {
            body.insert(SCHEMA_FIELD.into(), Value::String(schema.to_owned()));
        }
        if self.wants_ack {
            body.insert(
                GILMSG_VERSION_FIELD.into(),
                Value::String(GILMSG_VERSION.into()),
            );
            if !recipients.is_empty() {
                body.insert(RECIPIENTS_FIELD.into(), Value::from(recipients.to_vec()));
            }
        }
        let signed = match signer {
            Some(signer) => sign_in_place(&mut body, signer)?,
            // Even unsigned bodies must be canonicalisable: the digest in an
            // ACK is computed from the same bytes.
            None => SignedPart::of(&body)?,
        };
        let envelope = Envelope::from_map(body);
        let body = match (
            envelope.str_field(UNSIGNED_FIELDS[0]),
            envelope.str_field(UNSIGNED_FIELDS[1]),
        ) {
            (Some(signature), Some(certificate)) => {
                signed.with_unsigned_fields(signature, certificate)
            }
            // Unsigned: the signed part is the whole body.
            _ => signed.text.clone(),
        };
        Ok(Sealed {
            envelope,
            signed,
            body,
        })
    }
}

/// Sets `crypto` to `signer`'s scheme, signs the signed part, and sets
/// `signature` and `certificate`; returns the signed part.
fn sign_in_place(
    body: &mut Map<String, Value>,
    signer: &dyn Signer,
) -> Result<SignedPart, BuildError> {
    body.insert("crypto".into(), Value::String(signer.scheme().to_owned()));
    let signed = SignedPart::of(body)?;
    let signature = signer.sign(signed.as_str().as_bytes())?;
    body.insert(UNSIGNED_FIELDS[0].into(), Value::String(signature));
    body.insert(
        UNSIGNED_FIELDS[1].into(),
        Value::String(signer.certificate().to_owned()),
    );
    Ok(signed)
}

/// The keys whose place in the signed part is recorded: the two unsigned
/// fields (added to make the body on the wire) and `gilmsg_version` (taken
/// out for Python gilmsg's signature).
const MARKED_FIELDS: [&str; 3] = [UNSIGNED_FIELDS[0], UNSIGNED_FIELDS[1], GILMSG_VERSION_FIELD];

/// The canonical bytes a message's signature covers, computed once per
/// message and carried along: they are what is signed or verified, their
/// SHA-256 is the [`Digest`] ACKs name, the body a sender puts on the wire
/// is built from them by adding `signature` and `certificate`, and the text
/// Python gilmsg signs is them without `gilmsg_version`. None of those
/// serialises the body again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPart {
    text: String,
    /// Where each of [`MARKED_FIELDS`] stands in `text`.
    places: Vec<Place>,
}

impl SignedPart {
    /// The signed part of `body`: its canonical JSON without `signature`
    /// and `certificate`, refusing number text that is not canonical
    /// ([`canonical::signed_bytes`]).
    fn of(body: &Map<String, Value>) -> Result<Self, CanonicalError> {
        let (text, places) =
            canonical::signed_bytes_marked(body, &UNSIGNED_FIELDS, &MARKED_FIELDS)?;
        Ok(SignedPart { text, places })
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its SHA-256, what an ACK's `ack_digest` names.
    pub fn digest(&self) -> Digest {
        Digest::of_signed_part(&self.text)
    }

    /// The text with `gilmsg_version` also left out: what Python gilmsg
    /// signed, since it adds that field after signing.
    pub fn without_gilmsg_version(&self) -> String {
        match &self.places[2] {
            Place::Member(range) => canonical::remove_member(&self.text, range.clone()),
            Place::Gap(_) => self.text.clone(),
        }
    }

    /// The canonical text of the whole body: this signed part with
    /// `signature` and `certificate` added.
    fn with_unsigned_fields(&self, signature: &str, certificate: &str) -> String {
        let gap = |place: &Place| match place {
            Place::Gap(at) => *at,
            // Never: both are left out of the signed part.
            Place::Member(range) => range.start,
        };
        canonical::insert_members(
            &self.text,
            &[
                (gap(&self.places[0]), UNSIGNED_FIELDS[0], signature),
                (gap(&self.places[1]), UNSIGNED_FIELDS[1], certificate),
            ],
        )
    }
}

impl AsRef<str> for SignedPart {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// A message built by [`Draft::seal`]: the envelope, its signed part and
/// the canonical text of its whole body, from one serialisation.
#[derive(Debug, Clone)]
pub struct Sealed {
    envelope: Envelope,
    signed: SignedPart,
    body: String,
}

impl Sealed {
    /// The message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message, without its canonical texts.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }

    /// What its signature covers.
    pub fn signed_part(&self) -> &SignedPart {
        &self.signed
    }

    /// The canonical JSON of the whole body, exactly as
    /// [`Envelope::encode`] writes it (fedmsg's wire form of the body),
    /// made from the signed part by adding `signature` and `certificate`.
    pub fn body_text(&self) -> &str {
        &self.body
    }

    /// The topic and the body text, for a transport to put on its wire
    /// without copying them.
    pub fn into_topic_and_body(self) -> (String, String) {
        let Sealed {
            mut envelope, body, ..
        } = self;
        let topic = match envelope.body.remove("topic") {
            Some(Value::String(topic)) => topic,
            _ => String::new(),
        };
        (topic, body)
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
    /// `topic` or `msg_id` holds a character receivers refuse
    /// ([`is_unsafe_char`]).
    #[error("{0} holds a control character, which every receiver refuses")]
    UnsafeField(&'static str),
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
        let value = parse_json(bytes)?;
        let Value::Object(body) = value else {
            return Err(DecodeError::Shape("body is not a JSON object".into()));
        };
        Self::from_body(body)
    }

    /// Shape-checks a body a transport assembled itself (AMQP carries
    /// `msg` as the message body and the other fields in a header): the
    /// same checks as [`Envelope::parse_body`] after parsing.
    pub fn from_body(body: Map<String, Value>) -> Result<Self, DecodeError> {
        require(&body, "topic", Value::is_string, "a string")?;
        require(&body, "msg", |_| true, "present")?;
        require(&body, "msg_id", Value::is_string, "a string")?;
        for field in ["topic", "msg_id"] {
            let text = body.get(field).and_then(Value::as_str).unwrap_or_default();
            if text.chars().any(is_unsafe_char) {
                return Err(DecodeError::ControlCharacter { field });
            }
        }
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
            (SCHEMA_FIELD, Value::is_string, "a string"),
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

    /// Signs in place, as `signer`: sets `crypto`, then `signature` and
    /// `certificate` (replacing any). For re-signing a body; a message being
    /// built is signed by [`Draft::seal`].
    pub fn sign(&mut self, signer: &dyn Signer) -> Result<(), BuildError> {
        sign_in_place(&mut self.body, signer).map(drop)
    }

    /// The canonical bytes a signature covers (computed: see
    /// [`SignedPart`]). Refuses a body with a number not written
    /// canonically ([`CanonicalError::NotCanonicalNumber`]): its signature
    /// would cover another text than the one a reader of [`Envelope::msg`]
    /// sees.
    pub fn signed_part(&self) -> Result<SignedPart, CanonicalError> {
        SignedPart::of(&self.body)
    }

    /// The canonical bytes with `gilmsg_version` also left out (what Python
    /// gilmsg signed), serialised from scratch. The validator derives the
    /// same text from the [`SignedPart`] it already has
    /// ([`SignedPart::without_gilmsg_version`]); this is the independent
    /// computation tests and fuzzers compare it with.
    pub fn signed_part_without_gilmsg_version(&self) -> Result<String, CanonicalError> {
        canonical::signed_bytes(
            &self.body,
            &[UNSIGNED_FIELDS[0], UNSIGNED_FIELDS[1], GILMSG_VERSION_FIELD],
        )
    }

    /// The two frames to send: topic and canonical body.
    pub fn encode(&self) -> Result<[Vec<u8>; 2], CanonicalError> {
        let body = canonical::signed_bytes(&self.body, &[])?;
        Ok([self.topic().as_bytes().to_vec(), body.into_bytes()])
    }

    /// The signed `timestamp` in whole seconds since the epoch, if present
    /// (fedmsg writes an integer; a float is rounded down, and values
    /// beyond `i64` saturate).
    pub fn timestamp(&self) -> Option<i64> {
        let n = self.body.get("timestamp")?.as_number()?;
        n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64))
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

    /// The schema its sender named for `msg` ([`SCHEMA_FIELD`], signed), if
    /// any: what an AMQP sender also puts in the `fedora_messaging_schema`
    /// header. A claim only: receivers check `msg` against their own schema
    /// for the topic ([`crate::schema`]).
    pub fn schema_name(&self) -> Option<&str> {
        self.str_field(SCHEMA_FIELD)
    }

    /// The recipients the sender named in the signed [`RECIPIENTS_FIELD`]:
    /// `None` when absent (Python gilmsg, a plain message) or not a list of
    /// at most [`MAX_RECIPIENTS`] non-empty strings.
    pub fn recipients(&self) -> Option<Vec<&str>> {
        let list = self.body.get(RECIPIENTS_FIELD)?.as_array()?;
        if list.is_empty() || list.len() > MAX_RECIPIENTS {
            return None;
        }
        list.iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()))
            .collect()
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

/// Parses JSON as receivers do: the nesting is first bounded by
/// [`MAX_DEPTH`](crate::canonical::MAX_DEPTH) (so no input can overflow the
/// stack), then parsed without serde_json's fixed limit of 128, which is
/// lower than what Python peers produce; serde_json's errors are classified
/// into the kinds that are counted apart. Tools reading a message from a
/// user use it too, so that they accept exactly what consumers accept.
pub fn parse_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    use serde::Deserialize;
    // Fast path: serde_json's own recursion limit (a fixed 128, below
    // MAX_DEPTH) bounds the stack on its own, so the bracket pre-scan (an
    // eighth of a consumer's decoding, per byte of a body mostly made of a
    // certificate) is only needed for a body nested deeper. A body parsed
    // here is the value the unbounded parse below gives, and nests within
    // MAX_DEPTH; any error goes the whole way below, so what is refused,
    // and as which kind, is unchanged.
    const _: () = assert!(SERDE_JSON_DEPTH <= canonical::MAX_DEPTH);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = Value::deserialize(&mut deserializer).and_then(|v| {
        deserializer.end()?;
        Ok(v)
    }) {
        return Ok(value);
    }
    let limit = canonical::MAX_DEPTH;
    if !nesting_within(bytes, limit) {
        return Err(DecodeError::TooDeep { limit });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // Safe: the nesting is bounded above (serde_json's own limit is a fixed
    // 128, lower than what Python peers produce).
    deserializer.disable_recursion_limit();
    let value = Value::deserialize(&mut deserializer).and_then(|v| {
        deserializer.end()?;
        Ok(v)
    });
    value.map_err(|e| {
        // serde_json has no public error codes; its messages are stable and
        // pinned by `decode_error_kinds` below. It reports a leading
        // surrogate with no trailing one as "unexpected end of hex escape"
        // (that code has no other use) and a trailing one alone as a "lone
        // leading surrogate".
        let text = e.to_string();
        if text.contains("surrogate") || text.contains("end of hex escape") {
            DecodeError::LoneSurrogate(text)
        } else if text.contains("invalid unicode code point") {
            DecodeError::NotUtf8(text)
        } else {
            DecodeError::NotJson(text)
        }
    })
}

/// serde_json's fixed recursion limit (arrays and objects), which
/// [`parse_json`]'s fast path relies on.
const SERDE_JSON_DEPTH: usize = 128;

/// Whether arrays and objects in `bytes` nest at most `limit` deep: a
/// single pass that counts brackets outside strings. It does not validate
/// JSON (the parser does, next); it only bounds the parser's recursion, so
/// that no body can overflow the stack.
fn nesting_within(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
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
        assert!(signed.as_str().contains("\"crypto\":\"test\""));
        assert!(signed.as_str().contains("gilmsg_version"));
        assert!(!signed.as_str().contains("CERT"));
        let frames = envelope.encode().unwrap();
        let decoded = Envelope::decode(&frames, 1 << 20).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.signed_part().unwrap(), signed);
    }

    #[test]
    fn recipients_are_signed_beside_gilmsg_version_and_read_back() {
        let names = vec!["ledger".to_owned(), "mailer".to_owned()];
        let sealed = draft().seal_with(None, &names, Some(&FakeSigner)).unwrap();
        assert!(sealed
            .signed_part()
            .as_str()
            .contains(r#""gilmsg_recipients":["ledger","mailer"]"#));
        let frames = sealed.envelope().encode().unwrap();
        let decoded = Envelope::decode(&frames, 1 << 20).unwrap();
        assert_eq!(decoded.recipients(), Some(vec!["ledger", "mailer"]));
        // Not written for a plain message, nor read from a malformed list.
        let mut plain = draft();
        plain.wants_ack = false;
        let plain = plain.seal_with(None, &names, None).unwrap();
        assert_eq!(plain.envelope().recipients(), None);
        for odd in [
            json!("ledger"),
            json!([]),
            json!(["a", 1]),
            json!(["a", ""]),
        ] {
            let mut body = decoded.body().clone();
            body.insert(RECIPIENTS_FIELD.into(), odd);
            assert_eq!(Envelope::from_body(body).unwrap().recipients(), None);
        }
    }

    #[test]
    fn a_sealed_message_carries_the_text_a_fresh_serialisation_gives() {
        let mut odd = draft();
        odd.msg = json!({"\u{e9}": ["\n", 1e300, -0.0], "z": {}});
        odd.topic = "a.b\u{2603}".into();
        for (d, signer) in [
            (draft(), Some(&FakeSigner as &dyn Signer)),
            (draft(), None),
            (odd.clone(), Some(&FakeSigner as &dyn Signer)),
            (odd, None),
        ] {
            let sealed = d.seal(signer).unwrap();
            let envelope = sealed.envelope();
            let frames = envelope.encode().unwrap();
            assert_eq!(sealed.body_text().as_bytes(), &frames[1][..]);
            assert_eq!(sealed.signed_part(), &envelope.signed_part().unwrap());
            let decoded = Envelope::decode(&frames, 1 << 20).unwrap();
            assert_eq!(
                decoded.signed_part().unwrap().digest(),
                sealed.signed_part().digest()
            );
        }
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
        let bare = TopicScheme::from_prefix("");
        assert_eq!(bare.ack_topic(), "gilmsg.ack");
        assert_eq!(bare.topic_root(), "");
        let full = TopicScheme::from_prefix("org.fedoraproject.prod");
        assert_eq!(
            full.topic("bodhi", "update"),
            "org.fedoraproject.prod.bodhi.update"
        );
        assert_eq!(full.topic_root(), "org.fedoraproject.prod.");
        let id = new_msg_id(2026);
        assert!(id.starts_with("2026-") && id.len() == 41);
    }

    fn body_frames(body: &str) -> [Vec<u8>; 2] {
        [b"a.b".to_vec(), body.as_bytes().to_vec()]
    }

    #[test]
    fn decode_error_kinds() {
        let ok = r#"{"topic":"a.b","msg":1,"msg_id":"m"}"#;
        assert!(Envelope::decode(&body_frames(ok), 1 << 20).is_ok());
        let cases = [
            (
                r#"{"topic":"a.b","msg":"\ud800","msg_id":"m"}"#,
                "lone_surrogate",
            ),
            (
                r#"{"topic":"a.b","msg":"\udc00","msg_id":"m"}"#,
                "lone_surrogate",
            ),
            (
                r#"{"topic":"a.b","msg":1,"msg_id":"m\u0000"}"#,
                "control_char_in_msg_id",
            ),
            (
                r#"{"topic":"a.b","msg":1,"msg_id":"m\u001b[2J"}"#,
                "control_char_in_msg_id",
            ),
            (
                r#"{"topic":"a.b","msg":1,"msg_id":"m\u202e"}"#,
                "control_char_in_msg_id",
            ),
            (
                r#"{"topic":"a.b\n","msg":1,"msg_id":"m"}"#,
                "control_char_in_topic",
            ),
            (
                r#"{"topic":"a.b\u0085","msg":1,"msg_id":"m"}"#,
                "control_char_in_topic",
            ),
        ];
        for (body, kind) in cases {
            // The body is checked before the frame-0 comparison.
            let err = Envelope::parse_body(body.as_bytes(), 1 << 20).unwrap_err();
            assert_eq!(err.kind(), kind, "{body}: {err}");
        }
        let not_utf8 = [
            b"a.b".to_vec(),
            b"{\"topic\":\"a.b\",\"msg\":\"\xff\"}".to_vec(),
        ];
        assert_eq!(
            Envelope::decode(&not_utf8, 1 << 20).unwrap_err().kind(),
            "not_utf8"
        );
        // Not inside strings: brackets in text do not count as nesting.
        let brackets = format!(
            r#"{{"topic":"a.b","msg":"{}","msg_id":"m"}}"#,
            "[{\\\"".repeat(2000)
        );
        assert!(Envelope::decode(&body_frames(&brackets), 1 << 20).is_ok());
    }

    fn deep_body(msg_depth: usize) -> String {
        format!(
            r#"{{"topic":"a.b","msg_id":"m","msg":{}1{}}}"#,
            "[".repeat(msg_depth),
            "]".repeat(msg_depth)
        )
    }

    #[test]
    fn bodies_around_serde_jsons_own_limit_decode_the_same_and_deep_broken_ones_are_too_deep() {
        // parse_json's fast path stops at serde_json's limit; the body
        // nesting just past it takes the unbounded path and decodes too.
        for depth in SERDE_JSON_DEPTH - 3..SERDE_JSON_DEPTH + 3 {
            let text = deep_body(depth);
            let parsed = parse_json(text.as_bytes()).unwrap_or_else(|e| panic!("{depth}: {e}"));
            let expected = json!({"topic": "a.b", "msg_id": "m", "msg": nested(depth)});
            assert_eq!(parsed, expected, "depth {depth}");
        }
        // Too deep and broken: refused as too deep, as before the fast path
        // (which fails on the syntax first).
        let broken = format!(r#"{{"topic":x,"msg":{}}}"#, "[".repeat(600));
        assert_eq!(
            parse_json(broken.as_bytes()).unwrap_err().kind(),
            "too_deep"
        );
        let broken = format!(r#"{{"topic":x,"msg":{}}}"#, "[".repeat(200));
        assert_eq!(
            parse_json(broken.as_bytes()).unwrap_err().kind(),
            "not_json"
        );
    }

    /// `1` inside `depth` arrays.
    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn deep_bodies_up_to_the_bound_decode_on_a_small_stack_and_deeper_ones_are_refused() {
        // The default stack of a spawned thread (2 MiB), in whatever build
        // profile the tests run: the bound must hold there.
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                // What Python peers and serde_json's old limit disagreed on:
                // a msg 127 deep makes a body 128 deep.
                for depth in [127, canonical::MAX_DEPTH - 1] {
                    let frames = body_frames(&deep_body(depth));
                    let envelope = Envelope::decode(&frames, 1 << 20)
                        .unwrap_or_else(|e| panic!("depth {depth}: {e}"));
                    assert!(envelope.signed_part().is_ok(), "depth {depth}");
                    assert!(envelope.encode().is_ok(), "depth {depth}");
                }
                for depth in [canonical::MAX_DEPTH, 400_000] {
                    let body = deep_body(depth);
                    let frames = [b"a.b".to_vec(), body.into_bytes()];
                    let err = Envelope::decode(&frames, 1 << 20).unwrap_err();
                    assert_eq!(err.kind(), "too_deep", "depth {depth}");
                }
            })
            .unwrap();
        worker.join().expect("no stack overflow");
    }

    #[test]
    fn building_refuses_what_receivers_would_refuse() {
        let mut d = draft();
        d.msg = serde_json::from_str(r#"{"n": 9007199254740993.0}"#).unwrap();
        let err = d.build(Some(&FakeSigner)).unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::Canonical(CanonicalError::InexactNumber { .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("9007199254740992.0"), "{err}");
        // Exact but not canonical: normalised, and then what is signed, sent
        // and read back is the same text.
        let mut d = draft();
        d.msg = serde_json::from_str(r#"{"n": 1.10, "big": 9007199254740993}"#).unwrap();
        let envelope = d.build(Some(&FakeSigner)).unwrap();
        let frames = envelope.encode().unwrap();
        let decoded = Envelope::decode(&frames, 1 << 20).unwrap();
        assert_eq!(decoded.msg()["n"].to_string(), "1.1");
        assert_eq!(decoded.msg()["big"].to_string(), "9007199254740993");
        assert_eq!(decoded.signed_part(), envelope.signed_part());
        // Too deep for receivers.
        let mut d = draft();
        let mut msg = json!(1);
        for _ in 0..canonical::MAX_DEPTH {
            msg = Value::Array(vec![msg]);
        }
        d.msg = msg;
        assert!(matches!(
            d.build(None),
            Err(BuildError::Canonical(CanonicalError::TooDeep { .. }))
        ));
        let mut d = draft();
        d.topic = "a.b\u{0}".into();
        assert!(matches!(
            d.build(None),
            Err(BuildError::UnsafeField("topic"))
        ));
    }

    #[test]
    fn timestamps_read_as_whole_seconds() {
        let read = |ts: &str| {
            let body = format!(r#"{{"topic":"a","msg":1,"msg_id":"m","timestamp":{ts}}}"#);
            Envelope::parse_body(body.as_bytes(), 1 << 20)
                .unwrap()
                .timestamp()
        };
        assert_eq!(read("1700000000"), Some(1_700_000_000));
        assert_eq!(read("1700000000.9"), Some(1_700_000_000));
        assert_eq!(read("1e300"), Some(i64::MAX));
        assert_eq!(read("-1e300"), Some(i64::MIN));
        let none = Envelope::parse_body(br#"{"topic":"a","msg":1,"msg_id":"m"}"#, 1 << 20).unwrap();
        assert_eq!(none.timestamp(), None);
    }
}
