//! The trust store's cache of proven certificates: keyed by the
//! certificate's signed part (not the text of the `certificate` field, and
//! no bytes after the DER), filled only after a signature verified, and
//! never flushed whole; and the fast path in front of it (by the exact
//! text of the field) answers only what the long way answered, with the
//! signature and revocation still checked on every message.

use std::fs;
use std::time::Duration;

use base64::Engine as _;
use gilmsg_crypto::{TrustStore, Verifier as _};
use gilmsg_proto::VerifyError;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use ring::signature::Ed25519KeyPair;

const MSG: &[u8] = br#"{"i":1,"msg":{"a":1},"topic":"t"}"#;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// A small cache, so that filling it takes few (slow, debug-build)
/// certificate generations; the code path is the one of the default 4096.
const CAPACITY: usize = 64;

/// A CA and its trust store (with an empty CRL).
struct Bus {
    _tmp: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    trust: TrustStore,
}

/// An identity held in memory: its `certificate` field and its key.
struct Peer {
    name: String,
    der: Vec<u8>,
    key: Ed25519KeyPair,
}

impl Peer {
    fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).as_ref())
    }
}

fn bus() -> Bus {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "Cache CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let ca_path = tmp.path().join("ca.crt");
    fs::write(&ca_path, ca.pem()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::HOUR,
        next_update: now + time::Duration::DAY,
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap();
    let crl_path = tmp.path().join("crl.pem");
    fs::write(&crl_path, crl.pem().unwrap()).unwrap();
    let trust = TrustStore::load(&ca_path, Some(&crl_path))
        .unwrap()
        .with_crl_check_interval(Duration::from_secs(3600))
        .with_cache_capacity(CAPACITY);
    Bus {
        _tmp: tmp,
        ca,
        ca_key,
        trust,
    }
}

fn peer(bus: &Bus, name: &str) -> Peer {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.signed_by(&key, &bus.ca, &bus.ca_key).unwrap();
    Peer {
        name: name.to_owned(),
        der: cert.der().to_vec(),
        key: Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.serialize_der()).unwrap(),
    }
}

/// The `certificate` field: base64 of PEM with `pem_width` columns, the
/// base64 itself wrapped at `field_width` columns with `eol` (0: unwrapped).
fn field(der: &[u8], pem_width: usize, field_width: usize, eol: &str) -> String {
    let body = B64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(pem_width)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    );
    let b64 = B64.encode(pem);
    if field_width == 0 {
        return b64;
    }
    b64.as_bytes()
        .chunks(field_width)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(eol)
        + eol
}

fn verify(bus: &Bus, cert: &str, sig: &str) -> Result<String, VerifyError> {
    bus.trust.verify("ed25519", cert, sig, MSG).map(|s| s.name)
}

#[test]
fn whitespace_variants_of_one_certificate_share_one_entry() {
    let bus = bus();
    let alice = peer(&bus, "alice");
    let sig = alice.sign(MSG);
    for (pem_width, field_width, eol) in [
        (64, 0, ""),
        (64, 76, "\n"),
        (64, 76, "\r\n"),
        (64, 60, "  \n\t"),
        (76, 0, ""),
        (76, 76, "\n"),
        (40, 13, " "),
    ] {
        let cert = field(&alice.der, pem_width, field_width, eol);
        assert_eq!(verify(&bus, &cert, &sig).unwrap(), "alice");
    }
    assert_eq!(bus.trust.cached_certificates(), 1);
}

#[test]
fn forged_messages_with_valid_certificates_neither_fill_nor_flush_the_cache() {
    let bus = bus();
    let alice = peer(&bus, "alice");
    let alice_cert = field(&alice.der, 64, 0, "");
    assert_eq!(
        verify(&bus, &alice_cert, &alice.sign(MSG)).unwrap(),
        "alice"
    );
    assert_eq!(bus.trust.cached_certificates(), 1);

    // Other identities' certificates are public: anyone can attach them to
    // a message. Signatures made by someone else's key must not get them
    // cached, in any whitespace variant.
    let others: Vec<Peer> = (0..40).map(|i| peer(&bus, &format!("peer{i}"))).collect();
    let forger = peer(&bus, "forger");
    for round in 0..CAPACITY / others.len() + 2 {
        for other in &others {
            let cert = field(&other.der, 64, 1 + round % 90, "\n");
            assert_eq!(
                verify(&bus, &cert, &forger.sign(MSG)),
                Err(VerifyError::BadSignature(other.name.clone()))
            );
        }
    }
    assert_eq!(
        bus.trust.cached_certificates(),
        1,
        "only alice, who proved her certificate, is cached"
    );
    // Alice's entry survived: the count would be 0 after a flush, since
    // nothing since then verified.
    assert_eq!(
        verify(&bus, &alice_cert, &alice.sign(MSG)).unwrap(),
        "alice"
    );
    assert_eq!(bus.trust.cached_certificates(), 1);
}

#[test]
fn more_proven_certificates_than_the_capacity_evict_part_not_all() {
    let bus = bus();
    let total = CAPACITY + 10;
    for i in 0..total {
        let p = peer(&bus, &format!("p{i}"));
        let cert = field(&p.der, 64, 0, "");
        verify(&bus, &cert, &p.sign(MSG)).unwrap();
        assert!(bus.trust.cached_certificates() <= CAPACITY);
    }
    let kept = bus.trust.cached_certificates();
    assert!(
        kept >= CAPACITY / 2,
        "{kept} of {total} kept: a full clear, not an eviction"
    );
}

#[test]
fn review_trailing_bytes_after_the_der_do_not_make_new_cache_entries() {
    let bus = bus();
    let alice = peer(&bus, "alice");
    let sig = alice.sign(MSG);
    assert_eq!(
        verify(&bus, &field(&alice.der, 64, 0, ""), &sig).unwrap(),
        "alice"
    );
    for i in 0..CAPACITY as u32 {
        let mut der = alice.der.clone();
        der.extend_from_slice(&i.to_be_bytes());
        match verify(&bus, &field(&der, 64, 0, ""), &sig) {
            Err(VerifyError::Malformed {
                field: "certificate",
                detail,
            }) => assert!(detail.contains("4 bytes after the certificate"), "{detail}"),
            other => panic!("a certificate with trailing bytes: {other:?}"),
        }
    }
    assert_eq!(
        bus.trust.cached_certificates(),
        1,
        "one certificate, one entry"
    );
    // The genuine certificate still verifies, from the cache.
    assert_eq!(
        verify(&bus, &field(&alice.der, 76, 76, "\n"), &sig).unwrap(),
        "alice"
    );
}

#[test]
fn a_certificate_text_seen_before_still_needs_a_good_signature_and_no_revocation() {
    let bus = bus();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "alice");
    p.serial_number = Some(rcgen::SerialNumber::from(77u64));
    let alice = Peer {
        name: "alice".into(),
        der: p
            .signed_by(&key, &bus.ca, &bus.ca_key)
            .unwrap()
            .der()
            .to_vec(),
        key: Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.serialize_der()).unwrap(),
    };
    let cert = field(&alice.der, 64, 0, "");
    // The first verification takes the long way and remembers the text;
    // the later ones take the fast path, and each still checks its own
    // signature.
    for _ in 0..3 {
        assert_eq!(verify(&bus, &cert, &alice.sign(MSG)).unwrap(), "alice");
    }
    let forger = peer(&bus, "forger");
    assert_eq!(
        verify(&bus, &cert, &forger.sign(MSG)),
        Err(VerifyError::BadSignature(alice.name.clone()))
    );
    // Revoked after it was remembered: refused on the fast path too.
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::HOUR,
        next_update: now + time::Duration::DAY,
        crl_number: rcgen::SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(77u64),
            revocation_time: now - time::Duration::HOUR,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&bus.ca, &bus.ca_key)
    .unwrap();
    fs::write(bus._tmp.path().join("crl.pem"), crl.pem().unwrap()).unwrap();
    bus.trust.reload().unwrap();
    assert!(
        matches!(
            verify(&bus, &cert, &alice.sign(MSG)),
            Err(VerifyError::Revoked(_))
        ),
        "{:?}",
        verify(&bus, &cert, &alice.sign(MSG))
    );
}
