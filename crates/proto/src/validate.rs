//! Deciding whether a decoded message is trustworthy: signature, certificate
//! and routing policy, in that order.
//!
//! One rule exists only for interoperability: Python gilmsg adds
//! `gilmsg_version` *after* signing, so its signature covers the body without
//! that field. When the strict check fails and `gilmsg_version` is present,
//! the signature is tried once more over the body without it; if that
//! verifies, the message is accepted and flagged
//! [`Validated::unsigned_gilmsg_version`]. `gilmsg_version` is then the only
//! unauthenticated field, and all it can do is ask for an ACK.

use std::sync::Arc;

use crate::auth::{SignedItem, VerifiedSigner, Verifier, VerifyError};
use crate::canonical::CanonicalError;
use crate::envelope::{Envelope, SignedPart};
use crate::policy::{PolicyError, RoutingPolicy};

/// A message that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The verified signer, or `None` when signatures are not checked.
    pub signer: Option<String>,
    /// The signature covered everything but `gilmsg_version` (Python gilmsg).
    pub unsigned_gilmsg_version: bool,
}

/// How a transport has a message's signature (and, for messages, the
/// routing policy) checked over its signed part: the closure the state
/// machines call, only once a message has passed every cheaper test.
/// [`Validator::validate_signed`] is the usual one.
pub trait Verify: FnOnce(&Envelope, &SignedPart) -> Result<Validated, Rejection> {}

impl<F: FnOnce(&Envelope, &SignedPart) -> Result<Validated, Rejection>> Verify for F {}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No `crypto`/`signature`/`certificate` where a signature is required.
    #[error("message is not signed")]
    Unsigned,
    /// The signature or certificate did not check out.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// The signer may not publish on this topic.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The body has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

impl Rejection {
    /// A short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::Signature(e) => e.kind(),
            Rejection::Policy(PolicyError::NotAllowed { .. }) => "policy_not_allowed",
            Rejection::Policy(_) => "policy_unlisted",
            Rejection::Canonical(e) => e.kind(),
        }
    }
}

/// Signature and policy checks for one bus.
#[derive(Clone)]
pub struct Validator {
    verifier: Arc<dyn Verifier>,
    policy: RoutingPolicy,
    accept_unsigned_gilmsg_version: bool,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator trusting `verifier` and applying `policy`.
    pub fn new(verifier: Arc<dyn Verifier>, policy: RoutingPolicy) -> Self {
        Validator {
            verifier,
            policy,
            accept_unsigned_gilmsg_version: true,
        }
    }

    /// Whether to accept Python gilmsg's unsigned `gilmsg_version` (default on).
    pub fn accept_unsigned_gilmsg_version(mut self, accept: bool) -> Self {
        self.accept_unsigned_gilmsg_version = accept;
        self
    }

    /// Verifies the signature and applies the routing policy.
    pub fn validate(&self, message: &Envelope) -> Result<Validated, Rejection> {
        let signed = message.signed_part()?;
        self.validate_signed(message, &signed)
    }

    /// Like [`Validator::validate`], with the message's
    /// [`Envelope::signed_part`] already computed (a consumer needs it for
    /// the ACK digest anyway: canonical JSON once per message; the text
    /// Python gilmsg signed is derived from it, not serialised again).
    pub fn validate_signed(
        &self,
        message: &Envelope,
        signed: &SignedPart,
    ) -> Result<Validated, Rejection> {
        let item = signed_item(message, signed)?;
        let verdict = self.verify_item(&item, item.canonical);
        self.settle(message, signed, &item, verdict)
    }

    /// [`Validator::validate_signed`] for several messages at once, one
    /// verdict per message, in order, each what `validate_signed` would
    /// have said of it. The signatures go to the verifier together
    /// ([`Verifier::verify_many`]), which checks a batch of Ed25519
    /// signatures for about half the cost of checking them one by one.
    pub fn validate_many(
        &self,
        messages: &[(&Envelope, &SignedPart)],
    ) -> Vec<Result<Validated, Rejection>> {
        let items: Vec<_> = messages
            .iter()
            .map(|(message, signed)| signed_item(message, signed))
            .collect();
        let signed_items: Vec<SignedItem<'_>> = items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .copied()
            .collect();
        let mut verdicts = self.verifier.verify_many(&signed_items).into_iter();
        messages
            .iter()
            .zip(items)
            .map(|((message, signed), item)| {
                let item = item?;
                // A verifier that answered fewer items than asked is
                // asked again, one at a time, for the rest.
                let verdict = verdicts
                    .next()
                    .unwrap_or_else(|| self.verify_item(&item, item.canonical));
                self.settle(message, signed, &item, verdict)
            })
            .collect()
    }

    /// The verifier's verdict on `item`'s signature over `canonical`.
    fn verify_item(
        &self,
        item: &SignedItem<'_>,
        canonical: &[u8],
    ) -> Result<VerifiedSigner, VerifyError> {
        self.verifier
            .verify(item.scheme, item.certificate, item.signature, canonical)
    }

    /// A verifier's verdict on `message` made final: the one retry Python
    /// gilmsg's unsigned `gilmsg_version` needs, then the routing policy.
    fn settle(
        &self,
        message: &Envelope,
        signed: &SignedPart,
        item: &SignedItem<'_>,
        verdict: Result<VerifiedSigner, VerifyError>,
    ) -> Result<Validated, Rejection> {
        let (signer, unsigned_gilmsg_version) = match verdict {
            Ok(signer) => (signer, false),
            Err(VerifyError::BadSignature(who))
                if self.accept_unsigned_gilmsg_version && message.wants_ack() =>
            {
                let legacy = signed.without_gilmsg_version();
                match self.verify_item(item, legacy.as_bytes()) {
                    Ok(signer) => (signer, true),
                    Err(_) => return Err(VerifyError::BadSignature(who).into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.policy.check(message.topic(), &signer.name)?;
        Ok(Validated {
            signer: Some(signer.name),
            unsigned_gilmsg_version,
        })
    }
}

/// What a verifier needs of a message: its `crypto`, `signature` and
/// `certificate` fields and its signed text, or [`Rejection::Unsigned`].
fn signed_item<'a>(
    message: &'a Envelope,
    signed: &'a SignedPart,
) -> Result<SignedItem<'a>, Rejection> {
    match (
        message.crypto(),
        message.str_field("signature"),
        message.str_field("certificate"),
    ) {
        (Some(scheme), Some(signature), Some(certificate)) => Ok(SignedItem {
            scheme,
            certificate,
            signature,
            canonical: signed.as_str().as_bytes(),
        }),
        _ => Err(Rejection::Unsigned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{SignError, Signer, VerifiedSigner};
    use crate::envelope::Draft;
    use serde_json::json;
    use std::collections::HashMap;

    /// A toy scheme: the "signature" is the canonical text's length, the
    /// "certificate" the signer's name. Enough to exercise the rules.
    struct Toy(&'static str);
    impl Signer for Toy {
        fn name(&self) -> &str {
            self.0
        }
        fn scheme(&self) -> &str {
            "toy"
        }
        fn certificate(&self) -> &str {
            self.0
        }
        fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
            Ok(canonical.len().to_string())
        }
    }
    struct ToyVerifier;
    impl Verifier for ToyVerifier {
        fn verify(
            &self,
            scheme: &str,
            cert: &str,
            sig: &str,
            canonical: &[u8],
        ) -> Result<VerifiedSigner, VerifyError> {
            if scheme != "toy" {
                return Err(VerifyError::UnknownScheme(scheme.into()));
            }
            if sig != canonical.len().to_string() {
                return Err(VerifyError::BadSignature(cert.into()));
            }
            Ok(VerifiedSigner { name: cert.into() })
        }
    }

    fn message(wants_ack: bool, signer: Option<&dyn Signer>) -> Envelope {
        Draft {
            topic: "t.a".into(),
            msg: json!({"x": 1}),
            msg_id: "2026-x".into(),
            i: 1,
            timestamp: 0,
            username: "u".into(),
            wants_ack,
        }
        .build(signer)
        .unwrap()
    }

    fn validator(nitpicky: bool) -> Validator {
        let rules = HashMap::from([("t.a".to_string(), vec!["alice".to_string()])]);
        Validator::new(Arc::new(ToyVerifier), RoutingPolicy::new(rules, nitpicky))
    }

    #[test]
    fn accepts_signed_and_applies_policy() {
        let ok = validator(false)
            .validate(&message(true, Some(&Toy("alice"))))
            .unwrap();
        assert_eq!(ok.signer.as_deref(), Some("alice"));
        assert!(!ok.unsigned_gilmsg_version);
        let err = validator(false)
            .validate(&message(true, Some(&Toy("bob"))))
            .unwrap_err();
        assert_eq!(err.kind(), "policy_not_allowed");
        let err = validator(false).validate(&message(true, None)).unwrap_err();
        assert_eq!(err, Rejection::Unsigned);
    }

    #[test]
    fn python_style_unsigned_gilmsg_version_is_accepted_only_as_the_sole_difference() {
        // Sign without gilmsg_version, then add it, as Python gilmsg does.
        let mut body = message(false, Some(&Toy("alice"))).to_value();
        body["gilmsg_version"] = json!("0.1.2");
        let frames = [b"t.a".to_vec(), serde_json::to_vec(&body).unwrap()];
        let legacy = Envelope::decode(&frames, 1 << 20).unwrap();
        let ok = validator(false).validate(&legacy).unwrap();
        assert!(ok.unsigned_gilmsg_version);
        assert!(validator(false)
            .accept_unsigned_gilmsg_version(false)
            .validate(&legacy)
            .is_err());

        // Any other change still fails.
        body["msg"] = json!({"x": 22});
        let frames = [b"t.a".to_vec(), serde_json::to_vec(&body).unwrap()];
        let tampered = Envelope::decode(&frames, 1 << 20).unwrap();
        assert_eq!(
            validator(false).validate(&tampered).unwrap_err().kind(),
            "bad_signature"
        );
    }

    /// `validate_many` says of each message what `validate_signed` says
    /// of it alone, in order, whatever its neighbours: good, refused by
    /// policy, unsigned, Python gilmsg's unsigned `gilmsg_version`,
    /// tampered. Also with a verifier that answers fewer items than asked.
    #[test]
    fn validate_many_answers_each_as_validate_signed_does() {
        let legacy = {
            let mut body = message(false, Some(&Toy("alice"))).to_value();
            body["gilmsg_version"] = json!("0.1.2");
            let frames = [b"t.a".to_vec(), serde_json::to_vec(&body).unwrap()];
            Envelope::decode(&frames, 1 << 20).unwrap()
        };
        let tampered = {
            let mut body = message(true, Some(&Toy("alice"))).to_value();
            body["msg"] = json!({"x": 22});
            let frames = [b"t.a".to_vec(), serde_json::to_vec(&body).unwrap()];
            Envelope::decode(&frames, 1 << 20).unwrap()
        };
        let messages = [
            message(true, Some(&Toy("alice"))),
            message(true, Some(&Toy("bob"))),
            message(true, None),
            legacy,
            tampered,
            message(false, Some(&Toy("alice"))),
        ];
        let signed: Vec<_> = messages.iter().map(|m| m.signed_part().unwrap()).collect();
        let pairs: Vec<_> = messages.iter().zip(&signed).collect();

        /// Answers only the first item of a batch.
        struct Terse;
        impl Verifier for Terse {
            fn verify(
                &self,
                scheme: &str,
                cert: &str,
                sig: &str,
                canonical: &[u8],
            ) -> Result<VerifiedSigner, VerifyError> {
                ToyVerifier.verify(scheme, cert, sig, canonical)
            }
            fn verify_many(
                &self,
                items: &[SignedItem<'_>],
            ) -> Vec<Result<VerifiedSigner, VerifyError>> {
                let first = items
                    .first()
                    .map(|i| self.verify(i.scheme, i.certificate, i.signature, i.canonical));
                first.into_iter().collect()
            }
        }
        let rules = HashMap::from([("t.a".to_string(), vec!["alice".to_string()])]);
        let terse = Validator::new(Arc::new(Terse), RoutingPolicy::new(rules, false));
        for v in [validator(false), terse] {
            let many = v.validate_many(&pairs);
            let one: Vec<_> = pairs.iter().map(|(m, s)| v.validate_signed(m, s)).collect();
            assert_eq!(many, one);
            let kinds: Vec<_> = many
                .iter()
                .map(|r| {
                    r.as_ref().map_or_else(Rejection::kind, |ok| {
                        if ok.unsigned_gilmsg_version {
                            "legacy"
                        } else {
                            "ok"
                        }
                    })
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "ok",
                    "policy_not_allowed",
                    "unsigned",
                    "legacy",
                    "bad_signature",
                    "ok"
                ]
            );
        }
    }
}
