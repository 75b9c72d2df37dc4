//! Message schemas: the rule that a message's payload (`msg`) has the shape
//! its topic's schema describes, and the envelope field that names the
//! schema (fedora-messaging's `fedora_messaging_schema`).
//!
//! Which topics have a schema and what passing one means (JSON Schema) is
//! up to a [`SchemaCheck`] (`gilmsg-config`'s `Schemas` is the one gilmsg
//! uses); this module holds what is the same on every transport, with no
//! JSON Schema library in it:
//!
//! - The schema that applies is the *receiver's* for the message's signed
//!   topic. The name a message carries is a claim, and a claim cannot
//!   switch a check off or pick a laxer schema.
//! - A body that fails is refused with the failing place (a JSON pointer
//!   into `msg`) and the keyword that failed ([`SchemaViolation`]).
//! - The name a message carries ([`SCHEMA_FIELD`]) is compared with the
//!   name of the schema applied. A name the receiver does not know for the
//!   topic, whether it has another schema there or none, does not refuse
//!   the message: it is reported ([`SchemaNote::unknown_name`]) and the
//!   message is delivered if its body passed whatever schema applied, as
//!   fedora-messaging falls back to its base schema. A message naming no
//!   schema (a fedmsg peer, a publisher without a `[schemas]` table) is
//!   checked all the same.
//! - The ACK topic is never checked: ACKs have their own rules
//!   ([`crate::ack`]); callers leave them out.
//!
//! Schemas are not security: the check runs only after the signature has
//! been verified, on what a trusted sender signed (`docs/security.md`).

use std::fmt;

use serde_json::Value;

use crate::envelope::{is_unsafe_char, Envelope};

/// The envelope field naming the schema a message's `msg` was checked
/// against by its publisher. Signed like every field but `signature` and
/// `certificate`; on AMQP it is fedora-messaging's header of the same name.
pub const SCHEMA_FIELD: &str = "fedora_messaging_schema";

/// The longest schema name or reason kept in a [`SchemaNote`] or
/// [`SchemaViolation`], in characters: they end up in logs and errors, and
/// a message or schema can make them as long as it likes.
pub const MAX_SHOWN: usize = 300;

/// Which topics have a schema and whether a payload passes it: what the
/// rule asks of a schema implementation. Pure: no I/O after it is built.
pub trait SchemaCheck: Send + Sync + fmt::Debug {
    /// The name of the schema that `topic`'s payloads must pass, if any
    /// (what a publisher puts in [`SCHEMA_FIELD`]).
    fn schema_for(&self, topic: &str) -> Option<&str>;

    /// Checks `msg`, a payload on `topic`, against that schema.
    fn check(&self, topic: &str, msg: &Value) -> SchemaVerdict<'_>;
}

/// What a [`SchemaCheck`] says about one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaVerdict<'a> {
    /// The topic has no schema.
    Unchecked,
    /// The payload passed the schema of this name.
    Passed {
        /// The schema's name.
        schema: &'a str,
    },
    /// The payload failed.
    Failed(SchemaViolation),
}

/// Why a payload failed its topic's schema: where, and which keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// The schema's name.
    pub schema: String,
    /// The failing place in `msg`, as a JSON pointer (`""` is `msg`
    /// itself, `/amount`, `/items/0/sku`).
    pub instance_path: String,
    /// The schema keyword that failed (`type`, `required`, `minimum`, ...).
    pub keyword: String,
    /// What is wrong, without the offending value (which may be large or
    /// private), e.g. `value is not of type "integer"`.
    pub reason: String,
}

impl SchemaViolation {
    /// A violation, with every text cut to [`MAX_SHOWN`] characters.
    pub fn new(schema: &str, instance_path: &str, keyword: &str, reason: &str) -> Self {
        SchemaViolation {
            schema: shorten(schema),
            instance_path: shorten(instance_path),
            keyword: shorten(keyword),
            reason: shorten(reason),
        }
    }
}

impl fmt::Display for SchemaViolation {
    /// `msg fails schema invoice.v1 at "/amount": keyword type: value is
    /// not of type "integer"`; unsafe characters (control, bidi) are escaped, since
    /// paths come from the message's keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "msg fails schema {} at \"{}\"",
            printable(&self.schema),
            printable(&self.instance_path)
        )?;
        if self.instance_path.is_empty() {
            f.write_str(" (msg itself)")?;
        }
        write!(
            f,
            ": keyword {}: {}",
            printable(&self.keyword),
            printable(&self.reason)
        )
    }
}

impl std::error::Error for SchemaViolation {}

/// What the schema rule found about a message it let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaNote {
    /// Its payload passed its topic's schema (`false`: the topic has none,
    /// or the receiver checks no schemas).
    pub checked: bool,
    /// The schema name it carries, when that is not the name of the schema
    /// applied (the receiver knows the topic under another name, or has no
    /// schema for it); cut to [`MAX_SHOWN`] characters.
    pub unknown_name: Option<String>,
}

/// The rule for one received message that is not an ACK: its payload
/// against the receiver's schema for its topic, then the name it carries
/// against the name of the schema applied (see the module doc).
pub fn judge(schemas: &dyn SchemaCheck, message: &Envelope) -> Result<SchemaNote, SchemaViolation> {
    let (checked, applied) = match schemas.check(message.topic(), message.msg()) {
        SchemaVerdict::Unchecked => (false, None),
        SchemaVerdict::Passed { schema } => (true, Some(schema)),
        SchemaVerdict::Failed(violation) => return Err(violation),
    };
    // The envelope decoder has checked that the field, if present, is a string.
    let unknown_name = message
        .schema_name()
        .filter(|claimed| Some(*claimed) != applied)
        .map(shorten);
    Ok(SchemaNote {
        checked,
        unknown_name,
    })
}

/// `text` cut to [`MAX_SHOWN`] characters (an ellipsis marks a cut).
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}...", &text[..at]),
    }
}

/// `text` with the characters unsafe to print ([`is_unsafe_char`]) escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Draft;
    use serde_json::json;

    /// Topic `t.invoice` has schema `invoice.v1`: an object with an integer
    /// `amount`.
    #[derive(Debug)]
    struct Invoices;
    impl SchemaCheck for Invoices {
        fn schema_for(&self, topic: &str) -> Option<&str> {
            (topic == "t.invoice").then_some("invoice.v1")
        }
        fn check(&self, topic: &str, msg: &Value) -> SchemaVerdict<'_> {
            let Some(schema) = self.schema_for(topic) else {
                return SchemaVerdict::Unchecked;
            };
            match msg.get("amount") {
                Some(a) if a.is_i64() => SchemaVerdict::Passed { schema },
                Some(_) => SchemaVerdict::Failed(SchemaViolation::new(
                    schema,
                    "/amount",
                    "type",
                    "value is not of type \"integer\"",
                )),
                None => SchemaVerdict::Failed(SchemaViolation::new(
                    schema,
                    "",
                    "required",
                    "\"amount\" is a required property",
                )),
            }
        }
    }

    fn message(topic: &str, msg: Value, schema: Option<&str>) -> Envelope {
        Draft {
            topic: topic.into(),
            msg,
            msg_id: "2026-x".into(),
            i: 1,
            timestamp: 0,
            username: "u".into(),
            wants_ack: true,
        }
        .seal_with_schema(schema, None)
        .unwrap()
        .into_envelope()
    }

    #[test]
    fn the_receivers_schema_for_the_topic_decides_whatever_the_message_claims() {
        let ok = judge(
            &Invoices,
            &message("t.invoice", json!({"amount": 5}), Some("invoice.v1")),
        )
        .unwrap();
        assert_eq!(
            ok,
            SchemaNote {
                checked: true,
                unknown_name: None
            }
        );
        // No name (a fedmsg peer): checked all the same.
        let err = judge(
            &Invoices,
            &message("t.invoice", json!({"amount": "5"}), None),
        )
        .unwrap_err();
        assert_eq!(err.instance_path, "/amount");
        assert_eq!(err.keyword, "type");
        // Another name cannot pick a laxer schema.
        let err = judge(
            &Invoices,
            &message("t.invoice", json!({}), Some("base.message")),
        )
        .unwrap_err();
        assert_eq!(err.keyword, "required");
        assert_eq!(
            err.to_string(),
            "msg fails schema invoice.v1 at \"\" (msg itself): keyword required: \
             \"amount\" is a required property"
        );
    }

    #[test]
    fn a_name_the_receiver_does_not_know_is_noted_not_refused() {
        let note = judge(
            &Invoices,
            &message("t.invoice", json!({"amount": 1}), Some("invoice.v2")),
        )
        .unwrap();
        assert_eq!(
            note,
            SchemaNote {
                checked: true,
                unknown_name: Some("invoice.v2".into())
            }
        );
        let note = judge(
            &Invoices,
            &message(
                "t.other",
                json!("anything"),
                Some("bodhi.update.comment.v1"),
            ),
        )
        .unwrap();
        assert!(!note.checked);
        assert_eq!(
            note.unknown_name.as_deref(),
            Some("bodhi.update.comment.v1")
        );
        let note = judge(&Invoices, &message("t.other", json!(1), None)).unwrap();
        assert_eq!(note, SchemaNote::default());
    }

    #[test]
    fn texts_are_bounded_and_printed_safely() {
        let long = "x".repeat(10 * MAX_SHOWN);
        let v = SchemaViolation::new(&long, "/a\u{1b}[31m/b\u{202e}", "type", &long);
        assert_eq!(v.schema.chars().count(), MAX_SHOWN + 3);
        let shown = v.to_string();
        assert!(!shown.chars().any(is_unsafe_char), "{shown:?}");
        assert!(shown.contains(r#"at "/a\u{1b}[31m/b\u{202e}""#), "{shown}");
        let note = judge(
            &Invoices,
            &message("t.other", json!(1), Some(&"é".repeat(2 * MAX_SHOWN))),
        )
        .unwrap();
        assert_eq!(
            note.unknown_name.map(|n| n.chars().count()),
            Some(MAX_SHOWN + 3)
        );
    }

    #[test]
    fn the_name_is_signed_and_must_be_a_safe_string() {
        // Without a schema, the body is what it always was: no field.
        let plain = message("t.invoice", json!({"amount": 1}), None);
        assert_eq!(plain.schema_name(), None);
        assert!(!plain.body().contains_key(SCHEMA_FIELD));
        let m = message("t.invoice", json!({"amount": 1}), Some("invoice.v1"));
        assert_eq!(m.schema_name(), Some("invoice.v1"));
        assert!(m
            .signed_part()
            .unwrap()
            .as_str()
            .contains(r#""fedora_messaging_schema":"invoice.v1""#));
        let mut body = m.body().clone();
        body.insert(SCHEMA_FIELD.into(), json!(5));
        let err = Envelope::parse_body(&serde_json::to_vec(&body).unwrap(), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), "wrong_shape");
        let unsafe_name = Draft {
            topic: "t".into(),
            msg: json!({}),
            msg_id: "2026-x".into(),
            i: 1,
            timestamp: 0,
            username: "u".into(),
            wants_ack: false,
        }
        .seal_with_schema(Some("a\nb"), None)
        .unwrap_err();
        assert_eq!(
            unsafe_name,
            crate::envelope::BuildError::UnsafeField(SCHEMA_FIELD)
        );
    }
}
