//! Checking the signatures of a burst of received messages together, ahead
//! of the rules that will ask for them, one burst at a time.
//!
//! A transport that takes several messages off its socket at once (a
//! consumer's messages, a publisher's ACKs) hands the whole burst to its
//! driver. The driver asks the pure state machine which of them the rules
//! will check the signature of (read-only: `ConsumerState::would_verify`,
//! `PublisherState::would_verify_ack`), and this checks those together
//! with [`Validator::validate_many`]: a batch of Ed25519 signatures checks
//! for about half the cost of checking each alone. The rules then run in
//! order, as for single messages, and take each verdict as if they had
//! asked for it then; each message's signed part is computed once.
//!
//! What is done ahead never changes a decision. A message the rules do not
//! ask about after all (an earlier one of the burst settled it) wastes one
//! verification; one they ask about that was not checked ahead is checked
//! then, alone. Each distinct copy (same signed part, same certificate,
//! however its base64 is wrapped: what the dedupe cache calls a copy) is
//! checked once, so a burst of replays costs one verification.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hasher};

use gilmsg_proto::dedupe::certificate_chunks;
use gilmsg_proto::{DecodeError, Envelope, Rejection, SignedPart, Validated, Validator};

use super::WireFormat;
use crate::stats::Counter;

/// A burst's messages decoded, with their signed parts, and the
/// signatures the rules will ask for checked (see the module doc).
pub(crate) struct VerifyAhead {
    done: Vec<Ahead>,
}

/// What was done ahead for one message of a burst.
pub(crate) enum Ahead {
    /// Nothing: the rules decode it and check it themselves.
    Nothing,
    /// Decoded, with no signed part to go on: it did not decode, or has no
    /// canonical form (the rules find out again and refuse it).
    Decoded(Result<Envelope, DecodeError>),
    /// Decoded, its signed part computed, and its signature checked if the
    /// rules will ask for it.
    Signed(Envelope, SignedPart, Option<Result<Validated, Rejection>>),
}

/// A message of a burst as the rules take it: decoded with its signed
/// part, or only decoded (`Err`), or not yet decoded (`None`); and its
/// signature's verdict if it was checked ahead.
pub(crate) type Split = (
    Option<Result<(Envelope, SignedPart), Result<Envelope, DecodeError>>>,
    Option<Result<Validated, Rejection>>,
);

impl Ahead {
    /// What was done, taken apart for the rules (see [`Split`]).
    pub(crate) fn split(self) -> Split {
        match self {
            Ahead::Signed(message, signed, verdict) => (Some(Ok((message, signed))), verdict),
            Ahead::Decoded(decoded) => (Some(Err(decoded)), None),
            Ahead::Nothing => (None, None),
        }
    }
}

impl VerifyAhead {
    /// Fewer checks than this in a burst are left to the rules: a batch of
    /// one is a single verification.
    const MIN_CHECKS: usize = 2;

    /// Decodes `wires` (within `limit`; not those whose routing topic
    /// `skips`), and checks together the signatures of those the rules
    /// `will_verify`, with `validator` (none: signatures are not checked,
    /// and nothing is done ahead). Counts the signatures checked in a
    /// batch in `batched`.
    pub(crate) fn prepare<W: WireFormat>(
        validator: Option<&Validator>,
        wires: &[W::Wire],
        limit: usize,
        skips: impl Fn(&[u8]) -> bool,
        will_verify: impl Fn(&Envelope, &SignedPart) -> bool,
        batched: &Counter,
    ) -> VerifyAhead {
        let mut ahead = VerifyAhead { done: Vec::new() };
        let Some(validator) = validator else {
            return ahead;
        };
        if wires.len() < Self::MIN_CHECKS {
            return ahead;
        }
        ahead.done = wires
            .iter()
            .map(|wire| {
                if skips(W::topic(wire)) {
                    return Ahead::Nothing;
                }
                match W::decode(wire, limit) {
                    Ok(message) => match message.signed_part() {
                        Ok(signed) => Ahead::Signed(message, signed, None),
                        Err(_) => Ahead::Decoded(Ok(message)),
                    },
                    Err(e) => Ahead::Decoded(Err(e)),
                }
            })
            .collect();
        let mut seen = HashSet::new();
        let jobs: Vec<_> = ahead
            .done
            .iter()
            .enumerate()
            .filter_map(|(i, done)| match done {
                Ahead::Signed(message, signed, _) => {
                    // A copy as the dedupe cache knows one: the same
                    // certificate however its base64 is wrapped. Hashed: two
                    // certificates that collide only lose the second its
                    // check ahead (the rules then check it alone).
                    let certificate = message.str_field("certificate").map(|text| {
                        let mut hasher = DefaultHasher::new();
                        certificate_chunks(text).for_each(|chunk| hasher.write(chunk));
                        hasher.finish()
                    });
                    let copy = (signed.digest(), certificate);
                    (will_verify(message, signed) && seen.insert(copy))
                        .then_some((i, (message, signed)))
                }
                _ => None,
            })
            .collect();
        if jobs.len() < Self::MIN_CHECKS {
            return ahead;
        }
        let pairs: Vec<_> = jobs.iter().map(|(_, pair)| *pair).collect();
        let verdicts = validator.validate_many(&pairs);
        batched.add(pairs.len() as u64);
        let indices: Vec<_> = jobs.iter().map(|(i, _)| *i).collect();
        for (i, verdict) in indices.into_iter().zip(verdicts) {
            if let Some(Ahead::Signed(_, _, slot)) = ahead.done.get_mut(i) {
                *slot = Some(verdict);
            }
        }
        ahead
    }

    /// What was done ahead for the burst's `i`-th message.
    pub(crate) fn take(&mut self, i: usize) -> Ahead {
        self.done.get_mut(i).map_or(Ahead::Nothing, |done| {
            std::mem::replace(done, Ahead::Nothing)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zeromq::Frames;
    use gilmsg_proto::auth::{SignError, Signer, VerifiedSigner, Verifier, VerifyError};
    use gilmsg_proto::policy::RoutingPolicy;
    use gilmsg_proto::Draft;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Signs as "a" with its certificate text written as given.
    struct Wrapped(&'static str);

    impl Signer for Wrapped {
        fn name(&self) -> &str {
            "a"
        }
        fn scheme(&self) -> &str {
            "toy"
        }
        fn certificate(&self) -> &str {
            self.0
        }
        fn sign(&self, _: &[u8]) -> Result<String, SignError> {
            Ok("by a".into())
        }
    }

    /// Accepts every signature, counting the ones it is asked about.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Verifier for Counting {
        fn verify(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &[u8],
        ) -> Result<VerifiedSigner, VerifyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(VerifiedSigner { name: "a".into() })
        }
    }

    fn message(msg_id: &str, signer: &Wrapped) -> Vec<Vec<u8>> {
        let draft = Draft {
            topic: "a.b.c".into(),
            msg: serde_json::json!({"n": 1}),
            msg_id: msg_id.into(),
            i: 1,
            timestamp: 1_700_000_000,
            username: "u".into(),
            wants_ack: true,
        };
        Frames::encode(draft.seal(Some(signer as &dyn Signer)).expect("seal"))
    }

    #[test]
    fn a_replay_with_its_certificate_wrapped_otherwise_is_checked_once() {
        // Three copies of one message, the certificate's base64 wrapped three
        // ways (one copy to the dedupe cache), and one other message.
        let burst = [
            message("m1", &Wrapped("QUJD\nREVG")),
            message("m1", &Wrapped("QUJDREVG")),
            message("m1", &Wrapped("QU JD\r\nRE VG\n")),
            message("m2", &Wrapped("QUJDREVG")),
        ];
        let verifier = Arc::new(Counting::default());
        let validator = Validator::new(
            verifier.clone(),
            RoutingPolicy::new(Default::default(), false),
        );
        let batched = Counter::default();
        let mut ahead = VerifyAhead::prepare::<Frames>(
            Some(&validator),
            &burst,
            1 << 20,
            |_| false,
            |_, _| true,
            &batched,
        );
        assert_eq!(verifier.0.load(Ordering::SeqCst), 2, "one check per copy");
        let checked: Vec<bool> = (0..burst.len())
            .map(|i| matches!(ahead.take(i), Ahead::Signed(_, _, Some(Ok(_)))))
            .collect();
        assert_eq!(checked, [true, false, false, true]);
    }
}
