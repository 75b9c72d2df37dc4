//! ACKs that must never be counted.
//!
//! The test plays the recipient with raw sockets: it receives the published
//! message from the relay and answers with an ACK it built itself. Each
//! forgery must leave the publish timing out, naming the recipient, and the
//! publisher's counters must show the ACK was seen and refused for the
//! right reason. A positive control (the honest ACK through the same
//! harness) proves the harness can make a publish succeed.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_crypto::{pki, Identity};
use gilmsg_proto::ack::AckBody;
use gilmsg_proto::Digest;
use gilmsg_proto::Envelope;
use gilmsg_testkit::bins;
use gilmsg_testkit::raw::FakeRecipient;
use gilmsg_testkit::{forge, within_async, Bus};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

/// What the publisher ended with, and its counters.
struct Outcome {
    result: gilmsg::Result<gilmsg::Receipt>,
    stats: gilmsg::Stats,
}

/// Publishes to `recipient` on a fresh bus (after `setup`), answers the
/// message with the frames `reply` builds, and returns the outcome.
async fn answer_with(
    recipient: &'static str,
    setup: impl FnOnce(&Bus),
    reply: impl FnOnce(&Bus, &Envelope) -> Vec<Vec<u8>>,
) -> Outcome {
    answer_publisher_with(recipient, setup, Bus::publisher, reply).await
}

/// [`answer_with`], the publisher built by `publisher`.
async fn answer_publisher_with(
    recipient: &'static str,
    setup: impl FnOnce(&Bus),
    publisher: impl FnOnce(&Bus) -> gilmsg::Bus,
    reply: impl FnOnce(&Bus, &Envelope) -> Vec<Vec<u8>>,
) -> Outcome {
    let bus = Bus::start(bins!(), &["rcpt", "intruder"]);
    setup(&bus);
    let topic = bus.topic("forged");
    let fake = FakeRecipient::connect(&bus, &topic);
    // Built after `setup`, so its trust store has the CRL as setup left it.
    let publisher = publisher(&bus);
    let handle = publisher.clone();
    let task = tokio::spawn(async move {
        handle
            .publish("forged", json!({"pay": 100}), &[recipient], ACK_TIMEOUT)
            .await
    });
    let message = fake.receive(&topic, Duration::from_secs(10));
    assert!(message.wants_ack(), "the publish asks for ACKs");
    let frames = reply(&bus, &message);
    fake.send(&frames);
    // Answer every re-send too, as a real recipient does: a first ACK can
    // race the publisher's ACK subscription through the relay and be lost.
    while !task.is_finished() {
        if let Some(copy) = fake.sub.recv(Duration::from_millis(50)) {
            if copy.first().map(Vec::as_slice) == Some(topic.as_bytes()) {
                fake.send(&frames);
            }
        }
    }
    let result = task.await.expect("publish task");
    Outcome {
        result,
        stats: publisher.stats(),
    }
}

/// Asserts the publish timed out naming `recipient` and `counter` rose.
fn assert_refused(outcome: Outcome, recipient: &str, counter: &str) {
    let stats = outcome.stats;
    let err = match outcome.result {
        Ok(receipt) => panic!("a forged ACK was counted: {receipt:?}; stats {stats}"),
        Err(e) => e,
    };
    let timeout = err
        .as_timeout()
        .unwrap_or_else(|| panic!("expected a timeout, got {err}"));
    assert_eq!(timeout.missing, [recipient], "{err}");
    assert!(timeout.acked.is_empty(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("from {recipient} (acked: none)")),
        "{err}"
    );
    assert!(
        stats.get("ack.received") >= 1,
        "the ACK never arrived: {stats}"
    );
    assert!(stats.get(counter) >= 1, "{counter} not counted: {stats}");
    assert_eq!(stats.get("ack.counted"), 0, "{stats}");
}

#[test]
fn positive_control_the_honest_ack_completes_the_publish() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| bus.honest_ack(message, "rcpt"),
        )
        .await;
        let receipt = outcome.result.expect("the honest ACK counts");
        assert_eq!(receipt.acks.len(), 1);
        assert_eq!(receipt.acks[0].recipient, "rcpt");
        assert!(receipt.acks[0].digest_checked);
        assert_eq!(outcome.stats.get("ack.counted"), 1, "{}", outcome.stats);
    })
}

#[test]
fn on_the_callers_runtime_the_honest_ack_completes_the_publish_and_a_forged_one_does_not() {
    within_async(LIMIT, || async {
        let honest = answer_publisher_with(
            "rcpt",
            |_| {},
            Bus::publisher_on_runtime,
            |bus, message| bus.honest_ack(message, "rcpt"),
        )
        .await;
        let receipt = honest.result.expect("the honest ACK counts");
        assert_eq!(receipt.acks[0].recipient, "rcpt");
        assert!(receipt.acks[0].digest_checked);
        let forged = answer_publisher_with(
            "rcpt",
            |_| {},
            Bus::publisher_on_runtime,
            ack_naming("intruder"),
        )
        .await;
        assert_refused(forged, "rcpt", "ack.signer_mismatch");
    })
}

#[test]
fn positive_control_an_ack_without_digest_counts_unchecked() {
    // Python gilmsg sends no ack_digest; such an ACK is accepted, flagged.
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let body = AckBody {
                    ack_msg_id: message.msg_id().to_owned(),
                    ack_digest: None,
                    ack_signer: None,
                };
                let ack = forge::ack(&bus.ack_topic(), body, Some(&bus.identity("rcpt")));
                forge::frames(&ack)
            },
        )
        .await;
        let receipt = outcome.result.expect("a digest-less ACK counts");
        assert!(!receipt.acks[0].digest_checked);
    })
}

/// An ACK that names the signer the recipient handled the message as.
fn ack_naming(signer: &'static str) -> impl FnOnce(&Bus, &Envelope) -> Vec<Vec<u8>> {
    move |bus, message| {
        let body = AckBody {
            ack_signer: Some(signer.into()),
            ..AckBody::for_message(message).expect("digest")
        };
        forge::frames(&forge::ack(
            &bus.ack_topic(),
            body,
            Some(&bus.identity("rcpt")),
        ))
    }
}

#[test]
fn an_ack_for_the_body_handled_as_another_signers_is_refused() {
    // The recipient handled a copy of our exact body re-signed by the
    // intruder: its ACK names the intruder, and must not count for us.
    within_async(LIMIT, || async {
        let outcome = answer_with("rcpt", |_| {}, ack_naming("intruder")).await;
        assert_refused(outcome, "rcpt", "ack.signer_mismatch");
    })
}

#[test]
fn positive_control_an_ack_naming_the_publisher_counts() {
    within_async(LIMIT, || async {
        let outcome = answer_with("rcpt", |_| {}, ack_naming(gilmsg_testkit::PUBLISHER)).await;
        let receipt = outcome.result.expect("an ACK naming us counts");
        assert!(receipt.acks[0].digest_checked);
    })
}

/// A publisher that counts only ACKs carrying the body's digest, set by
/// the config key or by the builder.
fn strict_publisher(by_config: bool) -> impl FnOnce(&Bus) -> gilmsg::Bus {
    move |bus| {
        let mut config = bus.config();
        config.require_ack_digest = by_config;
        gilmsg::Bus::builder(&config)
            .modname(gilmsg_testkit::MODNAME)
            .certname(gilmsg_testkit::PUBLISHER)
            .active(true)
            .require_ack_digest(true)
            .build()
            .expect("strict publisher")
    }
}

fn digestless_ack(bus: &Bus, message: &Envelope) -> Vec<Vec<u8>> {
    let body = AckBody {
        ack_msg_id: message.msg_id().to_owned(),
        ack_digest: None,
        ack_signer: None,
    };
    forge::frames(&forge::ack(
        &bus.ack_topic(),
        body,
        Some(&bus.identity("rcpt")),
    ))
}

#[test]
fn a_strict_publisher_refuses_an_ack_without_digest() {
    within_async(LIMIT, || async {
        let outcome =
            answer_publisher_with("rcpt", |_| {}, strict_publisher(false), digestless_ack).await;
        assert_refused(outcome, "rcpt", "ack.digest_missing");
    })
}

#[test]
fn require_ack_digest_in_the_config_makes_the_publisher_strict() {
    within_async(LIMIT, || async {
        let from_config = |bus: &Bus| {
            let mut config = bus.config();
            config.require_ack_digest = true;
            bus.publisher_from(&config)
        };
        let outcome = answer_publisher_with("rcpt", |_| {}, from_config, digestless_ack).await;
        assert_refused(outcome, "rcpt", "ack.digest_missing");
    })
}

#[test]
fn positive_control_a_strict_publisher_counts_the_honest_ack_as_digest_checked() {
    within_async(LIMIT, || async {
        let outcome = answer_publisher_with(
            "rcpt",
            |_| {},
            strict_publisher(true),
            |bus, message| bus.honest_ack(message, "rcpt"),
        )
        .await;
        let receipt = outcome.result.expect("the honest ACK counts");
        assert!(receipt.acks.iter().all(|a| a.digest_checked), "{receipt:?}");
    })
}

#[test]
fn ack_signed_by_a_valid_identity_that_is_not_a_recipient() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| bus.honest_ack(message, "intruder"),
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.not_a_recipient");
    })
}

#[test]
fn ack_signed_by_a_revoked_identity() {
    // The revoked identity is the declared recipient: only the CRL stops it.
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "gone",
            |bus| {
                bus.issue("gone");
                bus.revoke("gone");
            },
            |bus, message| bus.honest_ack(message, "gone"),
        )
        .await;
        assert_refused(outcome, "gone", "ack.rejected.revoked_certificate");
    })
}

#[test]
fn ack_signed_by_a_certificate_from_another_ca() {
    // Same name as the recipient, but issued by a CA the bus does not trust.
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let other = bus.dir().join("other-pki");
                pki::init(
                    &other,
                    &pki::InitOptions {
                        ca_name: "gilmsg-test-ca".into(),
                        validity: DAY,
                    },
                )
                .expect("second CA");
                pki::issue(&other, "rcpt", &pki::IssueOptions::default()).expect("issue");
                let impostor = Identity::load(&other, "rcpt").expect("load impostor");
                forge::frames(&forge::honest_ack(&bus.ack_topic(), message, &impostor))
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.rejected.untrusted_certificate");
    })
}

#[test]
fn ack_signed_by_an_expired_certificate() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "old",
            |bus| {
                bus.issue_expired("old");
            },
            |bus, message| bus.honest_ack(message, "old"),
        )
        .await;
        assert_refused(outcome, "old", "ack.rejected.expired_certificate");
    })
}

#[test]
fn ack_altered_after_signing_has_a_bad_signature() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let ack = forge::honest_ack(&bus.ack_topic(), message, &bus.identity("rcpt"));
                forge::tampered(&ack, |body| {
                    body.insert("i".into(), json!(4242));
                })
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.rejected.bad_signature");
    })
}

#[test]
fn ack_with_its_digest_altered_after_signing_has_a_bad_signature() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let ack = forge::honest_ack(&bus.ack_topic(), message, &bus.identity("rcpt"));
                forge::tampered(&ack, |body| {
                    body["msg"]["ack_digest"] =
                        json!(Digest::of_signed_part("something else").to_string());
                })
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.rejected.bad_signature");
    })
}

#[test]
fn ack_from_the_recipient_for_another_msg_id() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let body = AckBody {
                    ack_msg_id: gilmsg_proto::envelope::new_msg_id(2026),
                    ack_digest: Some(message.signed_part().expect("signed part").digest()),
                    ack_signer: None,
                };
                forge::frames(&forge::ack(
                    &bus.ack_topic(),
                    body,
                    Some(&bus.identity("rcpt")),
                ))
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.unknown_msg_id");
    })
}

#[test]
fn ack_from_the_recipient_for_another_body() {
    // Right msg_id, right signer, but the digest is of a different body:
    // the recipient did not see what we sent.
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let body = AckBody {
                    ack_msg_id: message.msg_id().to_owned(),
                    ack_digest: Some(Digest::of_signed_part("{\"msg\":\"other\"}")),
                    ack_signer: None,
                };
                forge::frames(&forge::ack(
                    &bus.ack_topic(),
                    body,
                    Some(&bus.identity("rcpt")),
                ))
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.digest_mismatch");
    })
}

#[test]
fn unsigned_ack() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let body = AckBody::for_message(message).expect("digest");
                forge::frames(&forge::ack(&bus.ack_topic(), body, None))
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.rejected.unsigned");
    })
}

/// A batched ACK (our extension: one signature, the first entry in
/// `ack_msg_id`, the rest in `ack_more`) whose entry for this publish is
/// not the first one.
fn batched_ack(bus: &Bus, message: &Envelope, signer: &str) -> Vec<Vec<u8>> {
    let other = AckBody {
        ack_msg_id: "2026-00000000-0000-4000-8000-000000000000".into(),
        ack_digest: None,
        ack_signer: None,
    };
    let ours = AckBody::for_message(message).expect("digest");
    let msg = AckBody::batch_to_msg(&other, &[ours]);
    forge::frames(&forge::message(
        &bus.ack_topic(),
        msg,
        false,
        Some(&bus.identity(signer)),
    ))
}

#[test]
fn positive_control_a_batched_ack_counts_every_entry() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| batched_ack(bus, message, "rcpt"),
        )
        .await;
        let receipt = outcome.result.expect("the entry in ack_more counts");
        assert!(receipt.acks[0].digest_checked);
        assert!(outcome.stats.get("ack.batches") >= 1, "{}", outcome.stats);
    })
}

#[test]
fn batched_ack_signed_by_a_non_recipient() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| batched_ack(bus, message, "intruder"),
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.not_a_recipient");
    })
}

#[test]
fn batched_ack_with_an_entry_altered_after_signing() {
    within_async(LIMIT, || async {
        let outcome = answer_with(
            "rcpt",
            |_| {},
            |bus, message| {
                let frames = batched_ack(bus, message, "rcpt");
                let envelope = Envelope::decode(&frames, 1 << 20).expect("decode");
                forge::tampered(&envelope, |body| {
                    body["msg"]["ack_more"][0]["ack_digest"] = json!("sha256:00");
                })
            },
        )
        .await;
        assert_refused(outcome, "rcpt", "ack.rejected.bad_signature");
    })
}
