//! Revocation through the real bus and the real tools.
//!
//! - A publisher refuses the ACK of an identity revoked by a CA whose subject
//!   is a PrintableString while the identity's issuer field is a UTF8String
//!   (the same name, encoded differently): the revocation must be found
//!   by the CA that matched, as OpenSSL finds it, not by the issuer bytes.
//! - `gilmsg-logger` and `gilmsg-consumer` refuse to start as a revoked or
//!   expired identity, with one error line naming the certificate file,
//!   instead of running while every peer drops what they sign.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gilmsg_crypto::pki;
use gilmsg_proto::Envelope;
use gilmsg_testkit::raw::FakeRecipient;
use gilmsg_testkit::run_tool;
use gilmsg_testkit::{bins, guard, within, within_async, Bus};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PrintableString,
    RevokedCertParams, SerialNumber,
};
use serde_json::json;
use time::OffsetDateTime;

const LIMIT: Duration = Duration::from_secs(60);
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// A tool that refuses to start exits at once; this only bounds a hang.
const RUN: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);

/// Adds to `bus` a second CA, "Bus CA" as a PrintableString, and issues
/// `name` from it with the issuer written as a UTF8String; the CA goes into
/// the bus's `ca.crt` and its CRL, revoking `name`, into `crl.pem` next to
/// the bus CA's own CRL.
fn add_mixed_encoding_ca_revoking(bus: &Bus, name: &str) {
    let ca_params = |value: DnValue| {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, value);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.key_identifier_method = KeyIdMethod::Sha256;
        p
    };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("CA key");
    let printable = PrintableString::try_from("Bus CA").expect("printable");
    let ca = ca_params(DnValue::PrintableString(printable))
        .self_signed(&ca_key)
        .expect("CA");
    // The same CA (same key), its name re-encoded: what the leaf's issuer
    // field will say.
    let utf8_issuer = ca_params(DnValue::Utf8String("Bus CA".into()))
        .self_signed(&ca_key)
        .expect("CA handle");

    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("leaf key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.serial_number = Some(SerialNumber::from(4242u64));
    let cert = leaf.signed_by(&key, &utf8_issuer, &ca_key).expect("leaf");
    let key_path = bus.ssldir.join(format!("{name}.key"));
    fs::write(bus.ssldir.join(format!("{name}.crt")), cert.pem()).expect("write crt");
    fs::write(&key_path, key.serialize_pem()).expect("write key");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");

    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::HOUR,
        next_update: now + time::Duration::DAY,
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(4242u64),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .expect("CRL");

    let append = |file: &str, text: &str| {
        let path = bus.ssldir.join(file);
        let old = fs::read_to_string(&path).expect("read");
        fs::write(&path, old + text).expect("append");
    };
    append(pki::CA_CERT, &ca.pem());
    append(pki::CRL, &crl.pem().expect("CRL PEM"));
}

/// Publishes to `recipient` and answers with `recipient`'s honest ACK, as
/// often as the publisher re-sends; returns the result and the counters.
async fn publish_and_ack(
    bus: &Bus,
    recipient: &'static str,
) -> (gilmsg::Result<gilmsg::Receipt>, gilmsg::Stats) {
    let topic = bus.topic("revocation");
    let fake = FakeRecipient::connect(bus, &topic);
    let publisher = bus.publisher();
    let handle = publisher.clone();
    let task = tokio::spawn(async move {
        handle
            .publish("revocation", json!({"pay": 1}), &[recipient], ACK_TIMEOUT)
            .await
    });
    let message: Envelope = fake.receive(&topic, Duration::from_secs(10));
    let frames = bus.honest_ack(&message, recipient);
    fake.send(&frames);
    while !task.is_finished() {
        if let Some(copy) = fake.sub.recv(Duration::from_millis(50)) {
            if copy.first().map(Vec::as_slice) == Some(topic.as_bytes()) {
                fake.send(&frames);
            }
        }
    }
    (task.await.expect("publish task"), publisher.stats())
}

#[test]
fn ack_of_an_identity_revoked_under_a_differently_encoded_ca_name_is_refused() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["rcpt"]);
        add_mixed_encoding_ca_revoking(&bus, "gone");
        let (result, stats) = publish_and_ack(&bus, "gone").await;
        let err = match result {
            Ok(receipt) => panic!("a revoked identity's ACK was counted: {receipt:?}; {stats}"),
            Err(e) => e,
        };
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("expected a timeout, got {err}"));
        assert_eq!(timeout.missing, ["gone"], "{err}");
        assert!(stats.get("ack.received") >= 1, "{stats}");
        assert!(
            stats.get("ack.rejected.revoked_certificate") >= 1,
            "{stats}"
        );
        assert_eq!(stats.get("ack.counted"), 0, "{stats}");

        // Positive control on the same bus: the other CA's identities are
        // still accepted (both CAs have a CRL in the file).
        let (result, stats) = publish_and_ack(&bus, "rcpt").await;
        let receipt = result.unwrap_or_else(|e| panic!("{e}; {stats}"));
        assert_eq!(receipt.acks[0].recipient, "rcpt");
    })
}

fn logger_as(bus: &Bus, certname: &str) -> gilmsg_testkit::ToolOutput {
    let config = bus.config_path.to_str().expect("utf-8 path");
    bus.logger(
        &[
            "--config",
            config,
            "--certname",
            certname,
            "--message",
            "hi",
        ],
        "",
        RUN,
    )
}

fn consumer_as(bus: &Bus, certname: &str) -> gilmsg_testkit::ToolOutput {
    let config = bus.config_path.to_str().expect("utf-8 path");
    run_tool(
        bins!().consumer,
        &["--config", config, "--certname", certname, "--json"],
        "",
        RUN,
        &guard::current(),
    )
}

/// One `<tool>: error: ...` line naming `file` and saying `why`; exit 2.
fn assert_refused_at_start(out: &gilmsg_testkit::ToolOutput, tool: &str, file: &str, why: &str) {
    assert_eq!(out.status, Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].starts_with(&format!("{tool}: error: ")), "{out:?}");
    assert!(lines[0].contains(file), "{out:?}");
    assert!(lines[0].contains(why), "{out:?}");
    assert!(!out.stdout.contains("ready"), "{out:?}");
}

#[test]
fn a_revoked_identity_cannot_start_a_logger_or_a_consumer() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["ledger", "billing"]);
        bus.revoke("ledger");
        let out = logger_as(&bus, "ledger");
        assert_refused_at_start(&out, "gilmsg-logger", "ledger.crt", "revoked");
        let out = consumer_as(&bus, "ledger");
        assert_refused_at_start(&out, "gilmsg-consumer", "ledger.crt", "revoked");
    })
}

#[test]
fn an_expired_identity_cannot_start_a_logger_or_a_consumer() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &[]);
        bus.issue_expired("old");
        let out = logger_as(&bus, "old");
        assert_refused_at_start(&out, "gilmsg-logger", "old.crt", "expired");
        let out = consumer_as(&bus, "old");
        assert_refused_at_start(&out, "gilmsg-consumer", "old.crt", "expired");
    })
}

#[test]
fn an_identity_from_a_ca_without_a_crl_cannot_start_a_logger() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &[]);
        // A second CA in the CA file, and an identity from it, but the CRL
        // file has only the bus CA's CRL.
        let other = bus.dir().join("other-pki");
        pki::init(
            &other,
            &pki::InitOptions {
                ca_name: "Other CA".into(),
                validity: DAY,
            },
        )
        .expect("second CA");
        pki::issue(&other, "stranger", &pki::IssueOptions::default()).expect("issue");
        for ext in ["crt", "key"] {
            let to = bus.ssldir.join(format!("stranger.{ext}"));
            fs::copy(other.join(format!("stranger.{ext}")), &to).expect("copy");
        }
        let ca = bus.ssldir.join(pki::CA_CERT);
        let text = fs::read_to_string(&ca).expect("read")
            + &fs::read_to_string(other.join(pki::CA_CERT)).expect("read");
        fs::write(&ca, text).expect("write");
        let out = logger_as(&bus, "stranger");
        assert_refused_at_start(&out, "gilmsg-logger", "stranger.crt", "no CRL");
    })
}
