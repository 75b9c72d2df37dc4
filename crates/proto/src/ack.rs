//! ACK messages and the per-publish [`AckCollector`].
//!
//! An ACK is an ordinary signed bus message on `<prefix>.<env>.gilmsg.ack`
//! whose `msg` is `{"ack_msg_id": ..., "ack_digest": "sha256:<hex>"}`. The
//! signer is the name on the ACK's certificate; there is no sender field to
//! forge. `ack_digest` is our addition: the SHA-256 of the canonical signed
//! part of the acknowledged body, so an ACK proves the recipient saw *that*
//! body and not merely a message carrying the same id. Python gilmsg sends no
//! digest; an ACK without one is accepted (unless the publisher asked for
//! [`AckCollector::require_digest`]), one with a wrong digest never is.
//!
//! `ack_signer`, also ours and optional, names the identity the consumer
//! verified the acknowledged message as (and handed to its handler). The
//! digest cannot say it: `signature` and `certificate` are outside the signed
//! part, so anyone can re-sign a victim's exact body, and a consumer handles
//! that copy as the re-signer's. A publisher refuses an ACK whose
//! `ack_signer` is not its own name ([`AckOutcome::SignerMismatch`]); an ACK
//! without one (Python gilmsg, a consumer that does not check signatures) is
//! accepted as before.
//!
//! Under load a consumer acknowledges many messages with one signature: the
//! first entry stays in `ack_msg_id`/`ack_digest`, so a reader that knows
//! only those (Python gilmsg) still sees a valid ACK for it, and the others
//! follow in `ack_more: [{"ack_msg_id": .., "ack_digest": ..}, ..]`. Each
//! entry is exactly as strong as a single ACK: the signature covers them all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::canonical::CanonicalError;
use crate::digest::Digest;
use crate::envelope::{DecodeError, Envelope};

/// `msg` field of an ACK naming the acknowledged message.
pub const ACK_MSG_ID_FIELD: &str = "ack_msg_id";
/// `msg` field of an ACK carrying the body digest.
pub const ACK_DIGEST_FIELD: &str = "ack_digest";
/// `msg` field of an ACK naming the verified signer of the acknowledged
/// message.
pub const ACK_SIGNER_FIELD: &str = "ack_signer";
/// `msg` field of a batched ACK carrying the entries after the first.
pub const ACK_MORE_FIELD: &str = "ack_more";
/// The most entries one batched ACK carries (keeps it far below any
/// reasonable `max_message_size`: about 150 bytes an entry plus the signer's
/// name).
pub const MAX_ACK_BATCH: usize = 256;

/// The payload of an ACK we send: which message, and the digest of the
/// body that was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBody {
    /// The acknowledged message's id.
    pub ack_msg_id: String,
    /// The digest of the acknowledged body's signed part, if sent (Python
    /// gilmsg sends none).
    pub ack_digest: Option<Digest>,
    /// The name the acknowledged message was verified as, if sent.
    pub ack_signer: Option<String>,
}

impl AckBody {
    /// The ACK for a received message, naming its digest (computes its
    /// signed part) but no signer.
    pub fn for_message(message: &Envelope) -> Result<Self, CanonicalError> {
        Ok(AckBody {
            ack_msg_id: message.msg_id().to_owned(),
            ack_digest: Some(message.signed_part()?.digest()),
            ack_signer: None,
        })
    }

    /// The `msg` value to publish.
    pub fn to_msg(&self) -> Value {
        let mut msg = serde_json::Map::new();
        msg.insert(ACK_MSG_ID_FIELD.into(), json!(self.ack_msg_id));
        if let Some(d) = &self.ack_digest {
            msg.insert(ACK_DIGEST_FIELD.into(), json!(d));
        }
        if let Some(s) = &self.ack_signer {
            msg.insert(ACK_SIGNER_FIELD.into(), json!(s));
        }
        Value::Object(msg)
    }

    /// The `msg` value of a batched ACK: `first` in the classic fields, the
    /// rest in `ack_more`. With no `rest` this is exactly [`AckBody::to_msg`].
    pub fn batch_to_msg(first: &AckBody, rest: &[AckBody]) -> Value {
        let mut msg = first.to_msg();
        if !rest.is_empty() {
            if let Value::Object(map) = &mut msg {
                map.insert(
                    ACK_MORE_FIELD.into(),
                    Value::Array(rest.iter().map(AckBody::to_msg).collect()),
                );
            }
        }
        msg
    }
}

/// What a received ACK entry says about the body it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestClaim {
    /// No `ack_digest` (Python gilmsg): the ACK names the `msg_id` only.
    Absent,
    /// An `ack_digest` that reads as a [`Digest`].
    Names(Digest),
    /// An `ack_digest` string that is not `sha256:<64 lowercase hex>`: it
    /// names no body anyone could have sent, so it never matches (counted
    /// as a mismatch, like a wrong digest).
    Unreadable,
}

/// One entry of a received ACK, as its signer wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEntry {
    /// The message it acknowledges.
    pub ack_msg_id: String,
    /// The body it says was handled.
    pub digest: DigestClaim,
    /// Whom it says that body was handled as (`ack_signer`), if it says.
    pub signer: Option<String>,
}

impl From<&AckBody> for AckEntry {
    fn from(body: &AckBody) -> Self {
        AckEntry {
            ack_msg_id: body.ack_msg_id.clone(),
            digest: body
                .ack_digest
                .map_or(DigestClaim::Absent, DigestClaim::Names),
            signer: body.ack_signer.clone(),
        }
    }
}

impl AckEntry {
    /// Reads the classic entry of an ACK's `msg` (`ack_msg_id`,
    /// `ack_digest`), which is all a Python gilmsg reader sees.
    pub fn from_msg(msg: &Value) -> Result<Self, DecodeError> {
        let ack_msg_id = msg
            .get(ACK_MSG_ID_FIELD)
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::Shape("ACK without a string ack_msg_id".into()))?;
        let optional = |field: &str| match msg.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(DecodeError::Shape(format!("{field} is not a string"))),
        };
        let digest = match optional(ACK_DIGEST_FIELD)? {
            None => DigestClaim::Absent,
            Some(text) => Digest::parse(text).map_or(DigestClaim::Unreadable, DigestClaim::Names),
        };
        Ok(AckEntry {
            ack_msg_id: ack_msg_id.to_owned(),
            digest,
            signer: optional(ACK_SIGNER_FIELD)?.map(str::to_owned),
        })
    }

    /// Every entry of an ACK's `msg`: the classic one first, then `ack_more`.
    /// A malformed `ack_more` makes the whole ACK malformed (it is signed as
    /// one unit, so there is no partial trust to salvage), and so does one
    /// with more than [`MAX_ACK_BATCH`] entries.
    pub fn all_from_msg(msg: &Value) -> Result<Vec<Self>, DecodeError> {
        let first = AckEntry::from_msg(msg)?;
        let more = match msg.get(ACK_MORE_FIELD) {
            None | Some(Value::Null) => return Ok(vec![first]),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(DecodeError::Shape("ack_more is not a list".into())),
        };
        if more.len() >= MAX_ACK_BATCH {
            return Err(DecodeError::Shape(format!(
                "ack_more has {} entries, more than {}",
                more.len(),
                MAX_ACK_BATCH - 1
            )));
        }
        let mut entries = Vec::with_capacity(more.len() + 1);
        entries.push(first);
        for item in more {
            if item.get(ACK_MORE_FIELD).is_some() {
                return Err(DecodeError::Shape("nested ack_more".into()));
            }
            entries.push(AckEntry::from_msg(item)?);
        }
        Ok(entries)
    }
}

/// One recipient's ACK, as recorded in a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// Who acked (the certificate name).
    pub recipient: String,
    /// Time from the first send to the ACK's arrival.
    pub after: Duration,
    /// Whether the ACK carried a digest that matched (Python ACKs carry none;
    /// with [`AckCollector::require_digest`] every counted ACK has one).
    pub digest_checked: bool,
}

/// What [`AckCollector::on_ack`] made of an ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Counted; `complete` says whether every recipient has now acked.
    Counted {
        /// All recipients have acked.
        complete: bool,
    },
    /// Already counted for this signer.
    Duplicate,
    /// The signer is not a declared recipient of this message.
    NotARecipient,
    /// The ACK is for another message.
    WrongMessage,
    /// The ACK's digest does not match the body we sent.
    DigestMismatch,
    /// The ACK carries no digest and the publisher requires one.
    DigestMissing,
    /// The ACK names another signer than this publisher: the recipient
    /// handled this body as someone else's message (re-signed by them).
    SignerMismatch,
}

impl AckOutcome {
    /// A short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            AckOutcome::Counted { .. } => "counted",
            AckOutcome::Duplicate => "duplicate",
            AckOutcome::NotARecipient => "not_a_recipient",
            AckOutcome::WrongMessage => "wrong_msg_id",
            AckOutcome::DigestMismatch => "digest_mismatch",
            AckOutcome::DigestMissing => "digest_missing",
            AckOutcome::SignerMismatch => "signer_mismatch",
        }
    }
}

/// ACK bookkeeping for one published message: which declared recipients have
/// sent a valid ACK for this `msg_id` and digest, and when. Pure state; the
/// caller has already verified the ACK's signature and passes the signer name.
#[derive(Debug, Clone)]
pub struct AckCollector {
    msg_id: String,
    digest: Digest,
    /// Our signing name: what an `ack_signer` must say.
    publisher: Option<String>,
    require_digest: bool,
    first_sent: Option<Instant>,
    /// Declared recipients in declaration order, with their ACK once seen.
    slots: Vec<(String, Option<AckRecord>)>,
    index: HashMap<String, usize>,
    remaining: usize,
}

impl AckCollector {
    /// Expects ACKs for `msg_id` (whose signed part has `digest`) from each of
    /// `recipients`. Duplicate names count once.
    pub fn new<I, S>(msg_id: &str, digest: Digest, recipients: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut slots = Vec::new();
        let mut index = HashMap::new();
        for name in recipients {
            let name = name.into();
            if !index.contains_key(&name) {
                index.insert(name.clone(), slots.len());
                slots.push((name, None));
            }
        }
        let remaining = slots.len();
        AckCollector {
            msg_id: msg_id.to_owned(),
            digest,
            publisher: None,
            require_digest: false,
            first_sent: None,
            slots,
            index,
            remaining,
        }
    }

    /// Refuse ACKs that carry no `ack_digest` ([`AckOutcome::DigestMissing`]):
    /// a strict publisher then counts only ACKs that prove the recipient saw
    /// this very body. Python gilmsg recipients send no digest, so they can
    /// never complete such a publish.
    pub fn require_digest(mut self, required: bool) -> Self {
        self.require_digest = required;
        self
    }

    /// The name this publisher signed the message as (`None`: unsigned).
    /// An ACK whose `ack_signer` differs is refused
    /// ([`AckOutcome::SignerMismatch`]): that recipient handled the body as
    /// another identity's message. Until this is called, `ack_signer` must
    /// be absent.
    pub fn signed_as(mut self, name: Option<&str>) -> Self {
        self.publisher = name.map(str::to_owned);
        self
    }

    /// The message this collector waits for.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Records the time of the first send; ACK delays are measured from it.
    pub fn mark_sent(&mut self, at: Instant) {
        self.first_sent.get_or_insert(at);
    }

    /// Whether the message has been sent at least once.
    pub fn was_sent(&self) -> bool {
        self.first_sent.is_some()
    }

    /// Considers a verified ACK entry from `signer`.
    pub fn on_ack(&mut self, signer: &str, ack: &AckEntry, at: Instant) -> AckOutcome {
        if ack.ack_msg_id != self.msg_id {
            return AckOutcome::WrongMessage;
        }
        let Some(&slot) = self.index.get(signer) else {
            return AckOutcome::NotARecipient;
        };
        let digest_checked = match ack.digest {
            DigestClaim::Names(d) if d == self.digest => true,
            DigestClaim::Names(_) | DigestClaim::Unreadable => return AckOutcome::DigestMismatch,
            DigestClaim::Absent if self.require_digest => return AckOutcome::DigestMissing,
            DigestClaim::Absent => false,
        };
        if ack.signer.is_some() && ack.signer != self.publisher {
            return AckOutcome::SignerMismatch;
        }
        if self.slots[slot].1.is_some() {
            return AckOutcome::Duplicate;
        }
        let after = self
            .first_sent
            .map(|t| at.saturating_duration_since(t))
            .unwrap_or_default();
        self.slots[slot].1 = Some(AckRecord {
            recipient: signer.to_owned(),
            after,
            digest_checked,
        });
        self.remaining -= 1;
        AckOutcome::Counted {
            complete: self.remaining == 0,
        }
    }

    /// Whether every recipient has acked.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// The ACKs received, in declaration order.
    pub fn acked(&self) -> Vec<AckRecord> {
        self.slots.iter().filter_map(|(_, r)| r.clone()).collect()
    }

    /// The recipients that have not acked, in declaration order.
    pub fn missing(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The declared recipients.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as read from the wire, the digest given as text.
    fn ack(id: &str, digest: Option<&str>) -> AckEntry {
        let msg = match digest {
            Some(text) => json!({ ACK_MSG_ID_FIELD: id, ACK_DIGEST_FIELD: text }),
            None => json!({ ACK_MSG_ID_FIELD: id }),
        };
        AckEntry::from_msg(&msg).unwrap()
    }

    fn body(id: &str, digest: Option<Digest>) -> AckBody {
        AckBody {
            ack_msg_id: id.into(),
            ack_digest: digest,
            ack_signer: None,
        }
    }

    fn d(text: &str) -> Digest {
        Digest::of_signed_part(text)
    }

    #[test]
    fn counts_each_recipient_once_and_reports_missing() {
        let t0 = Instant::now();
        let aa = d("aa").to_string();
        let bb = d("bb").to_string();
        let mut c = AckCollector::new("m1", d("aa"), ["a", "b", "c", "a"]);
        c.mark_sent(t0);
        assert_eq!(c.missing(), vec!["a", "b", "c"]);
        assert_eq!(
            c.on_ack("b", &ack("m1", Some(&aa)), t0),
            AckOutcome::Counted { complete: false }
        );
        assert_eq!(c.on_ack("b", &ack("m1", None), t0), AckOutcome::Duplicate);
        assert_eq!(
            c.on_ack("x", &ack("m1", None), t0),
            AckOutcome::NotARecipient
        );
        assert_eq!(
            c.on_ack("a", &ack("m2", None), t0),
            AckOutcome::WrongMessage
        );
        assert_eq!(
            c.on_ack("a", &ack("m1", Some(&bb)), t0),
            AckOutcome::DigestMismatch
        );
        assert_eq!(
            c.on_ack("a", &ack("m1", Some(&aa.to_uppercase())), t0),
            AckOutcome::DigestMismatch
        );
        assert_eq!(c.missing(), vec!["a", "c"]);
        assert_eq!(
            c.on_ack("a", &ack("m1", None), t0),
            AckOutcome::Counted { complete: false }
        );
        assert_eq!(
            c.on_ack("c", &ack("m1", None), t0),
            AckOutcome::Counted { complete: true }
        );
        assert!(c.is_complete());
        let acked = c.acked();
        assert_eq!(
            acked
                .iter()
                .map(|r| r.recipient.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(acked[1].digest_checked && !acked[0].digest_checked);
    }

    #[test]
    fn a_strict_collector_refuses_acks_without_digest_and_says_which_were_checked() {
        let t0 = Instant::now();
        let digest = d("body").to_string();
        let mut c = AckCollector::new("m1", d("body"), ["py", "rs"]).require_digest(true);
        assert_eq!(
            c.on_ack("py", &ack("m1", None), t0),
            AckOutcome::DigestMissing
        );
        assert_eq!(AckOutcome::DigestMissing.kind(), "digest_missing");
        assert_eq!(
            c.on_ack("rs", &ack("m1", Some(&digest)), t0),
            AckOutcome::Counted { complete: false }
        );
        assert_eq!(c.missing(), ["py"]);
        assert!(c.acked().iter().all(|r| r.digest_checked));
        // Not strict: the same ACK counts, flagged unchecked.
        let mut lax = AckCollector::new("m1", d("body"), ["py"]);
        assert_eq!(
            lax.on_ack("py", &ack("m1", None), t0),
            AckOutcome::Counted { complete: true }
        );
        assert!(!lax.acked()[0].digest_checked);
    }

    #[test]
    fn an_ack_naming_another_signer_is_refused() {
        let t0 = Instant::now();
        let named = |signer: Option<&str>| AckBody {
            ack_signer: signer.map(Into::into),
            ..body("m1", Some(d("body")))
        };
        let entry = |signer: Option<&str>| AckEntry::from(&named(signer));
        let mut c = AckCollector::new("m1", d("body"), ["r", "py"]).signed_as(Some("alice"));
        assert_eq!(
            c.on_ack("r", &entry(Some("mallory")), t0),
            AckOutcome::SignerMismatch
        );
        assert_eq!(AckOutcome::SignerMismatch.kind(), "signer_mismatch");
        assert_eq!(
            c.on_ack("r", &entry(Some("alice")), t0),
            AckOutcome::Counted { complete: false }
        );
        // No ack_signer (Python gilmsg): accepted as before.
        assert_eq!(
            c.on_ack("py", &entry(None), t0),
            AckOutcome::Counted { complete: true }
        );
        // An unsigned publish: any named signer handled someone's copy.
        let mut unsigned = AckCollector::new("m1", d("body"), ["r"]);
        assert_eq!(
            unsigned.on_ack("r", &entry(Some("alice")), t0),
            AckOutcome::SignerMismatch
        );
        // The field round-trips, in batches too.
        let bodies = [named(Some("alice")), named(None)];
        let msg = AckBody::batch_to_msg(&bodies[0], &bodies[1..]);
        assert_eq!(msg["ack_signer"], "alice");
        let entries: Vec<AckEntry> = bodies.iter().map(AckEntry::from).collect();
        assert_eq!(AckEntry::all_from_msg(&msg).unwrap(), entries);
        assert!(AckEntry::from_msg(&json!({"ack_msg_id": "m", "ack_signer": 1})).is_err());
    }

    #[test]
    fn batched_entries_roundtrip_and_stay_readable_as_one_ack() {
        let bodies: Vec<AckBody> = (0..5)
            .map(|i| body(&format!("m{i}"), Some(d(&i.to_string()))))
            .collect();
        let entries: Vec<AckEntry> = bodies.iter().map(AckEntry::from).collect();
        let msg = AckBody::batch_to_msg(&bodies[0], &bodies[1..]);
        // A classic reader sees the first entry.
        assert_eq!(AckEntry::from_msg(&msg).unwrap(), entries[0]);
        assert_eq!(AckEntry::all_from_msg(&msg).unwrap(), entries);
        assert_eq!(AckBody::batch_to_msg(&bodies[0], &[]), bodies[0].to_msg());
        assert_eq!(
            AckEntry::all_from_msg(&bodies[0].to_msg()).unwrap(),
            vec![entries[0].clone()]
        );
        for bad in [
            json!({"ack_msg_id": "a", "ack_more": "x"}),
            json!({"ack_msg_id": "a", "ack_more": [{"ack_digest": "d"}]}),
            json!({"ack_msg_id": "a", "ack_more": [{"ack_msg_id": "b", "ack_more": []}]}),
        ] {
            assert!(AckEntry::all_from_msg(&bad).is_err(), "{bad}");
        }
        let too_many: Vec<AckBody> = (0..MAX_ACK_BATCH + 1)
            .map(|i| body(&format!("m{i}"), None))
            .collect();
        assert!(
            AckEntry::all_from_msg(&AckBody::batch_to_msg(&too_many[0], &too_many[1..])).is_err()
        );
    }

    #[test]
    fn ack_body_roundtrip_and_shape_errors() {
        let sent = body("m1", Some(d("x")));
        assert_eq!(
            AckEntry::from_msg(&sent.to_msg()).unwrap(),
            AckEntry::from(&sent)
        );
        assert!(AckEntry::from_msg(&json!({"ack_msg_id": 5})).is_err());
        assert!(AckEntry::from_msg(&json!("x")).is_err());
        assert!(AckEntry::from_msg(&json!({"ack_msg_id": "m", "ack_digest": 1})).is_err());
        assert_eq!(
            AckEntry::from_msg(&json!({"ack_msg_id": "m"}))
                .unwrap()
                .digest,
            DigestClaim::Absent
        );
        // Text that is no digest is read, and never matches.
        assert_eq!(
            AckEntry::from_msg(&json!({"ack_msg_id": "m", "ack_digest": "sha256:00"}))
                .unwrap()
                .digest,
            DigestClaim::Unreadable
        );
    }
}
