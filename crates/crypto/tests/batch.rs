//! `TrustStore::verify_many`: the Ed25519 signatures of a batch are checked
//! together, and each item still gets the verdict `verify` gives it alone,
//! whatever its neighbours; and the Ed25519 keys no signature should be
//! accepted from (small order) are refused at the certificate.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use gilmsg_crypto::pki::{self, InitOptions, IssueOptions};
use gilmsg_crypto::{Identity, Signer as _, TrustStore, Verifier as _};
use gilmsg_proto::{SignedItem, VerifyError};

const DAY: Duration = Duration::from_secs(86_400);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Pki {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn new_pki(ca_name: &str) -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let options = InitOptions {
        ca_name: ca_name.to_owned(),
        validity: 3650 * DAY,
    };
    pki::init(&dir, &options).unwrap();
    Pki { _tmp: tmp, dir }
}

fn issue(p: &Pki, name: &str) -> Identity {
    pki::issue(&p.dir, name, &IssueOptions::default()).unwrap();
    Identity::load(&p.dir, name).unwrap()
}

/// One signature to check, owned (a `SignedItem` borrows from it).
struct Case {
    scheme: String,
    certificate: String,
    signature: String,
    canonical: Vec<u8>,
}

impl Case {
    fn signed(id: &Identity, canonical: &str) -> Case {
        Case {
            scheme: id.scheme().to_owned(),
            certificate: id.certificate().to_owned(),
            signature: id.sign(canonical.as_bytes()).unwrap(),
            canonical: canonical.as_bytes().to_vec(),
        }
    }

    fn item(&self) -> SignedItem<'_> {
        SignedItem {
            scheme: &self.scheme,
            certificate: &self.certificate,
            signature: &self.signature,
            canonical: &self.canonical,
        }
    }
}

/// The signer named, or why not, for each case.
type Verdicts = Vec<Result<String, VerifyError>>;

/// What `verify_many` says of `cases` on a store that has not seen them,
/// and what `verify` says of each on another such store.
fn both_ways(p: &Pki, cases: &[Case]) -> (Verdicts, Verdicts) {
    let load = || TrustStore::load(&p.dir.join("ca.crt"), Some(&p.dir.join("crl.pem"))).unwrap();
    let items: Vec<_> = cases.iter().map(Case::item).collect();
    let many = load()
        .verify_many(&items)
        .into_iter()
        .map(|r| r.map(|s| s.name))
        .collect();
    let alone = load();
    let one = items
        .iter()
        .map(|i| {
            alone
                .verify(i.scheme, i.certificate, i.signature, i.canonical)
                .map(|s| s.name)
        })
        .collect();
    (many, one)
}

#[test]
fn a_batch_of_good_signatures_verifies_and_names_each_signer() {
    let p = new_pki("Test CA");
    let ids = [issue(&p, "alice"), issue(&p, "bob"), issue(&p, "carol")];
    let cases: Vec<_> = (0..16)
        .map(|n| Case::signed(&ids[n % 3], &format!(r#"{{"i":{n},"topic":"t"}}"#)))
        .collect();
    let (many, one) = both_ways(&p, &cases);
    assert_eq!(many, one);
    let names: Vec<_> = many.into_iter().map(Result::unwrap).collect();
    assert_eq!(names[..4], ["alice", "bob", "carol", "alice"]);
}

#[test]
fn each_bad_item_of_a_batch_fails_alone_and_its_good_neighbours_pass() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let bob = issue(&p, "bob");
    let stranger = issue(&new_pki("Other CA"), "alice");
    let mut cases = vec![
        Case::signed(&alice, r#"{"i":1}"#),
        Case::signed(&bob, r#"{"i":2}"#),
    ];
    // Signed over other bytes.
    let mut tampered = Case::signed(&alice, r#"{"i":3}"#);
    tampered.canonical = br#"{"i":4}"#.to_vec();
    cases.push(tampered);
    // Bob's signature under Alice's certificate.
    let mut swapped = Case::signed(&bob, r#"{"i":5}"#);
    swapped.certificate = alice.certificate().to_owned();
    cases.push(swapped);
    // Not base64; too short; an unknown scheme; another CA's certificate.
    let mut garbage = Case::signed(&alice, r#"{"i":6}"#);
    garbage.signature = "not base64!".to_owned();
    cases.push(garbage);
    let mut short = Case::signed(&alice, r#"{"i":7}"#);
    short.signature = B64.encode([0u8; 10]);
    cases.push(short);
    let mut unknown = Case::signed(&alice, r#"{"i":8}"#);
    unknown.scheme = "rot13".to_owned();
    cases.push(unknown);
    cases.push(Case::signed(&stranger, r#"{"i":9}"#));
    // And good ones after them.
    cases.push(Case::signed(&bob, r#"{"i":10}"#));
    cases.push(Case::signed(&alice, r#"{"i":11}"#));

    let (many, one) = both_ways(&p, &cases);
    assert_eq!(many, one);
    let kinds: Vec<_> = many
        .iter()
        .map(|r| r.as_ref().map_or_else(|e| e.kind(), |name| name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            "alice",
            "bob",
            "bad_signature",
            "bad_signature",
            "malformed_signature",
            "malformed_signature",
            "unknown_scheme",
            "untrusted_certificate",
            "bob",
            "alice",
        ]
    );
}

#[test]
fn after_a_failed_batch_the_next_few_are_checked_one_at_a_time_with_the_same_verdicts() {
    use gilmsg_crypto::BATCHES_PAUSED_AFTER_A_FAILURE;
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let store = TrustStore::load(&p.dir.join("ca.crt"), None).unwrap();
    let good = [
        Case::signed(&alice, r#"{"i":1}"#),
        Case::signed(&alice, r#"{"i":2}"#),
    ];
    let mut bad = Case::signed(&alice, r#"{"i":3}"#);
    bad.canonical = br#"{"i":4}"#.to_vec();
    let with_bad = [Case::signed(&alice, r#"{"i":1}"#), bad];
    let names = |cases: &[Case]| -> Vec<String> {
        let items: Vec<_> = cases.iter().map(Case::item).collect();
        store
            .verify_many(&items)
            .into_iter()
            .map(|r| r.map_or_else(|e| e.kind().to_owned(), |s| s.name))
            .collect()
    };
    assert_eq!(names(&good), ["alice", "alice"]);
    assert_eq!(store.batches_paused(), 0, "a good batch pauses nothing");
    assert_eq!(names(&with_bad), ["alice", "bad_signature"]);
    assert_eq!(store.batches_paused(), BATCHES_PAUSED_AFTER_A_FAILURE);
    for left in (0..BATCHES_PAUSED_AFTER_A_FAILURE).rev() {
        assert_eq!(names(&good), ["alice", "alice"]);
        assert_eq!(store.batches_paused(), left);
    }
    // The pause over: batched again, and a failure pauses again.
    assert_eq!(names(&good), ["alice", "alice"]);
    assert_eq!(store.batches_paused(), 0);
    assert_eq!(names(&with_bad), ["alice", "bad_signature"]);
    assert_eq!(store.batches_paused(), BATCHES_PAUSED_AFTER_A_FAILURE);
}

#[test]
fn a_revoked_signer_in_a_batch_is_refused_and_the_rest_verify() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let bob = issue(&p, "bob");
    pki::revoke(&p.dir, "bob").unwrap();
    let cases: Vec<_> = (0..6)
        .map(|n| {
            Case::signed(
                if n % 2 == 0 { &alice } else { &bob },
                &format!("{{\"i\":{n}}}"),
            )
        })
        .collect();
    let (many, one) = both_ways(&p, &cases);
    assert_eq!(many, one);
    for (n, verdict) in many.iter().enumerate() {
        match n % 2 {
            0 => assert_eq!(verdict.as_deref(), Ok("alice")),
            _ => assert_eq!(verdict, &Err(VerifyError::Revoked("bob".into()))),
        }
    }
}

/// The identity point (small order): with it as the public key, the
/// signature (R = identity, s = 0) satisfies the verification equation for
/// every message, so anyone could sign as the certificate's holder.
const IDENTITY_POINT: [u8; 32] = {
    let mut point = [0u8; 32];
    point[0] = 1;
    point
};

struct RawEd25519Key([u8; 32]);

impl rcgen::PublicKeyData for RawEd25519Key {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

#[test]
fn a_certificate_with_a_small_order_ed25519_key_verifies_nothing() {
    let mut forged = IDENTITY_POINT.to_vec();
    forged.extend([0u8; 32]);
    refused_at_the_certificate(IDENTITY_POINT, &forged, "small order");
}

/// A key with a small-order component: a proper public key (a scalar times
/// the base point) plus a point of order 8. Its holder's signatures verify
/// alone 1 time in 8 and in a batch another 1 time in 8, so it is refused.
#[test]
fn a_certificate_with_a_mixed_order_ed25519_key_is_refused() {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::{EdwardsPoint, Scalar};
    let proper = EdwardsPoint::mul_base(&Scalar::from(0x1234_5678_u64));
    let mixed = (proper + EIGHT_TORSION[1]).compress().to_bytes();
    assert!(ed25519_dalek::VerifyingKey::from_bytes(&mixed).is_ok_and(|k| !k.is_weak()));
    refused_at_the_certificate(mixed, &[7u8; 64], "small-order component");
}

/// Issues a certificate for the raw Ed25519 `key` from a CA that checks
/// nothing, and asserts that the trust store refuses it before looking at
/// `signature`, alone and in a batch, with `reason` in the detail.
fn refused_at_the_certificate(key: [u8; 32], signature: &[u8], reason: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Careless CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut leaf_params = CertificateParams::default();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "weak");
    let leaf = leaf_params
        .signed_by(&RawEd25519Key(key), &ca, &ca_key)
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let ca_path = tmp.path().join("ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let store = TrustStore::load(&ca_path, None).unwrap();
    let certificate = B64.encode(leaf.pem());
    let forged = B64.encode(signature);
    let refused = |r: Result<_, VerifyError>| match r {
        Err(VerifyError::Malformed { field, detail }) => {
            assert_eq!(field, "certificate");
            assert!(detail.contains(reason), "{detail}");
        }
        other => panic!("accepted or wrongly refused: {other:?}"),
    };
    refused(store.verify("ed25519", &certificate, &forged, b"{\"anything\":1}"));
    let item = SignedItem {
        scheme: "ed25519",
        certificate: &certificate,
        signature: &forged,
        canonical: b"{\"anything\":2}",
    };
    for verdict in store.verify_many(&[item, item]) {
        refused(verdict);
    }
}
