//! fedmsg's `"x509"` scheme against vectors made by Python fedmsg 1.1.7 and an
//! openssl-command-line CA (`tests/data/fedmsg/README.md`): our RSA signer
//! reproduces Python's signature bytes, and our `TrustStore` accepts what
//! Python signs and refuses what Python's validator refuses.

// Signing with RSA identities needs the `x509-sign` feature (OpenSSL);
// `scripts/test` builds with --all-features.
#![cfg(feature = "x509-sign")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gilmsg_crypto::{Error, Identity, Signer as _, TrustStore};
use gilmsg_proto::canonical;
use gilmsg_proto::VerifyError;
use serde_json::{Map, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fedmsg")
        .join(name)
}

/// An ssldir holding copies of the named identities, keys at mode 0600 (git
/// does not keep file modes).
fn ssldir(names: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in names {
        for ext in ["key", "crt"] {
            let dst = tmp.path().join(format!("{name}.{ext}"));
            fs::copy(data(&format!("{name}.{ext}")), &dst).unwrap();
        }
        let key = tmp.path().join(format!("{name}.key"));
        fs::set_permissions(key, fs::Permissions::from_mode(0o600)).unwrap();
    }
    tmp
}

/// The body (frame 1) of line `line` of a capture file.
fn captured_body(file: &str, line: usize) -> Map<String, Value> {
    let text = fs::read_to_string(data(file)).unwrap();
    let cap: Value = serde_json::from_str(text.lines().nth(line).unwrap()).unwrap();
    let body = cap["frames"][1].as_str().unwrap();
    match serde_json::from_str(body).unwrap() {
        Value::Object(map) => map,
        other => panic!("body is not an object: {other}"),
    }
}

fn field<'a>(body: &'a Map<String, Value>, key: &str) -> &'a str {
    body[key].as_str().unwrap()
}

fn at(body: &Map<String, Value>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(body["timestamp"].as_u64().unwrap())
}

fn store(crl: Option<&str>) -> TrustStore {
    let crl = crl.map(data);
    TrustStore::load(&data("ca.crt"), crl.as_deref())
        .unwrap()
        .with_crl_check_interval(Duration::ZERO)
}

/// Verifies a captured body the way fedmsg does: canonical JSON of the body
/// without `signature` and `certificate`, less any keys in `also_skip`.
fn verify_body(
    t: &TrustStore,
    body: &Map<String, Value>,
    also_skip: &[&str],
    now: SystemTime,
) -> Result<String, VerifyError> {
    let mut skip = vec!["signature", "certificate"];
    skip.extend_from_slice(also_skip);
    let canonical = canonical::object_to_string_without(body, &skip).unwrap();
    t.verify_at(
        field(body, "crypto"),
        field(body, "certificate"),
        field(body, "signature"),
        canonical.as_bytes(),
        now,
    )
    .map(|s| s.name)
}

/// Capture 9.1: `fedmsg-logger` signed this canonical string as shell-vm. Our
/// signer, given the same key, produces the same `signature` and
/// `certificate` fields byte for byte (RSA PKCS#1 v1.5 is deterministic).
#[test]
fn capture_9_1_signature_is_reproduced_byte_for_byte() {
    let body = captured_body("A.cap", 0);
    let canonical = fs::read(data("msgA.canonical.txt")).unwrap();
    assert_eq!(
        canonical::object_to_string_without(&body, &["signature", "certificate"]).unwrap(),
        String::from_utf8(canonical.clone()).unwrap(),
        "our canonical form of the captured body is what Python signed"
    );

    let dir = ssldir(&["shell-vm"]);
    let id = Identity::load(dir.path(), "shell-vm").unwrap();
    assert_eq!(id.scheme(), "x509");
    assert_eq!(id.name(), "shell-vm");
    let signature = id.sign(&canonical).unwrap();
    assert_eq!(signature, field(&body, "signature"));
    assert_eq!(id.certificate(), field(&body, "certificate"));

    // The shape fedmsg writes: 76-column lines, each ending in '\n'.
    for f in [signature.as_str(), id.certificate()] {
        assert!(f.ends_with('\n'));
        let lines: Vec<&str> = f.trim_end_matches('\n').split('\n').collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 76));
        assert!(!lines.last().unwrap().is_empty() && lines.last().unwrap().len() <= 76);
    }
}

/// Capture 9.2: a stock ACK signed by alice.
#[test]
fn capture_9_2_ack_signature_is_reproduced() {
    let body = captured_body("D.cap", 1);
    let canonical = fs::read(data("ackD.canonical.txt")).unwrap();
    let dir = ssldir(&["alice"]);
    let id = Identity::load(dir.path(), "alice").unwrap();
    assert_eq!(id.sign(&canonical).unwrap(), field(&body, "signature"));
    assert_eq!(id.certificate(), field(&body, "certificate"));
}

#[test]
fn python_signed_messages_verify_with_the_openssl_cli_ca_and_crl() {
    let t = store(Some("crl.pem"));
    let a = captured_body("A.cap", 0);
    assert_eq!(verify_body(&t, &a, &[], at(&a)).unwrap(), "shell-vm");
    let ack = captured_body("D.cap", 1);
    assert_eq!(verify_body(&t, &ack, &[], at(&ack)).unwrap(), "alice");
    // Patched publisher: gilmsg_version is covered, so the plain rule works.
    let patched = captured_body("D.cap", 0);
    assert_eq!(
        verify_body(&t, &patched, &[], at(&patched)).unwrap(),
        "shell-vm"
    );
    // After fedmsg-relay (re-spaced JSON): same values, still valid.
    let relayed_ack = captured_body("G2.cap", 1);
    assert_eq!(
        verify_body(&t, &relayed_ack, &[], at(&relayed_ack)).unwrap(),
        "alice"
    );
    // No CRL at all (fedmsg's crl_location = None).
    let t = store(None);
    assert_eq!(verify_body(&t, &a, &[], at(&a)).unwrap(), "shell-vm");
    // A CRL that revokes someone else.
    let t = store(Some("crl-revoked.pem"));
    assert_eq!(verify_body(&t, &a, &[], at(&a)).unwrap(), "shell-vm");
}

/// Capture 9.4: stock gilmsg adds `gilmsg_version` after signing. The plain
/// fedmsg rule fails (as in Python); without that key it verifies.
#[test]
fn stock_gilmsg_message_verifies_only_without_gilmsg_version() {
    let t = store(Some("crl.pem"));
    for (file, line) in [("E.cap", 0), ("G2.cap", 0)] {
        let body = captured_body(file, line);
        assert_eq!(
            verify_body(&t, &body, &[], at(&body)),
            Err(VerifyError::BadSignature("shell-vm".into())),
            "{file}"
        );
        assert_eq!(
            verify_body(&t, &body, &["gilmsg_version"], at(&body)).unwrap(),
            "shell-vm",
            "{file}"
        );
    }
    let e = captured_body("E.cap", 0);
    assert_eq!(
        canonical::object_to_string_without(&e, &["signature", "certificate", "gilmsg_version"])
            .unwrap()
            .as_bytes(),
        fs::read(data("gmsgE.actually-signed.txt")).unwrap()
    );
}

#[test]
fn tampered_python_message_is_a_bad_signature() {
    let t = store(Some("crl.pem"));
    let mut a = captured_body("A.cap", 0);
    a.insert("msg".into(), serde_json::json!({"log": "hello world!"}));
    assert_eq!(
        verify_body(&t, &a, &[], at(&a)),
        Err(VerifyError::BadSignature("shell-vm".into()))
    );
    // timestamp int -> float changes the canonical bytes, as in Python.
    let mut a = captured_body("A.cap", 0);
    let ts = a["timestamp"].as_u64().unwrap() as f64;
    a.insert("timestamp".into(), serde_json::json!(ts));
    assert!(matches!(
        verify_body(&t, &a, &[], UNIX_EPOCH + Duration::from_secs(ts as u64)),
        Err(VerifyError::BadSignature(_))
    ));
}

/// Sign with RSA identities issued by the openssl command line, verify with
/// our TrustStore, including revocation through an `openssl ca -gencrl` CRL.
#[test]
fn rust_x509_signatures_verify_and_revocation_applies() {
    let dir = ssldir(&["alice", "bob"]);
    let alice = Identity::load(dir.path(), "alice").unwrap();
    let bob = Identity::load(dir.path(), "bob").unwrap();
    let msg = br#"{"crypto":"x509","i":1,"msg":{"x":"\u00e9"},"topic":"org.example.dev.t"}"#;
    let now = SystemTime::now();
    let check = |t: &TrustStore, id: &Identity| {
        let sig = id.sign(msg).unwrap();
        t.verify_at(id.scheme(), id.certificate(), &sig, msg, now)
            .map(|s| s.name)
    };

    let t = store(Some("crl.pem"));
    assert_eq!(check(&t, &alice).unwrap(), "alice");
    assert_eq!(check(&t, &bob).unwrap(), "bob");

    let t = store(Some("crl-revoked.pem"));
    assert_eq!(check(&t, &alice).unwrap(), "alice");
    assert_eq!(check(&t, &bob), Err(VerifyError::Revoked("bob".into())));

    // The scheme must match the key: an RSA signature is no Ed25519 one.
    let sig = alice.sign(msg).unwrap();
    assert!(t
        .verify_at("ed25519", alice.certificate(), &sig, msg, now)
        .is_err());
}

/// As OpenSSL does in fedmsg ("CRL has expired"): a CRL past its nextUpdate
/// makes its CA's certificates untrusted.
#[test]
fn expired_crl_is_refused_like_openssl() {
    let t = store(Some("crl-short.pem"));
    let a = captured_body("A.cap", 0);
    // crl-short.pem: nextUpdate 2026-11-24T02:24:07Z = 1795487047.
    let before = UNIX_EPOCH + Duration::from_secs(1_795_487_040);
    let after = UNIX_EPOCH + Duration::from_secs(1_795_487_100);
    assert_eq!(verify_body(&t, &a, &[], before).unwrap(), "shell-vm");
    match verify_body(&t, &a, &[], after) {
        Err(VerifyError::CrlExpired(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expired_leaf_and_foreign_self_signed_cert_are_refused() {
    let dir = ssldir(&["old", "mallory"]);
    let t = store(Some("crl.pem"));
    let msg = b"{}";
    let now = SystemTime::now();
    let old = Identity::load(dir.path(), "old").unwrap();
    let sig = old.sign(msg).unwrap();
    assert_eq!(
        t.verify_at("x509", old.certificate(), &sig, msg, now),
        Err(VerifyError::Expired("old".into()))
    );
    let mallory = Identity::load(dir.path(), "mallory").unwrap();
    assert_eq!(mallory.name(), "shell-vm");
    let sig = mallory.sign(msg).unwrap();
    assert!(matches!(
        t.verify_at("x509", mallory.certificate(), &sig, msg, now),
        Err(VerifyError::Untrusted(_))
    ));
}

/// RSA-1024 signs (Python peers accept it) but ring cannot verify it, and
/// the refusal says why rather than claiming a bad signature.
#[test]
fn rsa_1024_signs_but_is_refused_by_our_verifier_with_a_reason() {
    let dir = ssldir(&["small"]);
    let small = Identity::load(dir.path(), "small").unwrap();
    let msg = b"{}";
    let sig = small.sign(msg).unwrap();
    let t = store(Some("crl.pem"));
    match t.verify_at("x509", small.certificate(), &sig, msg, SystemTime::now()) {
        Err(VerifyError::Malformed { field, detail }) => {
            assert_eq!(field, "certificate");
            assert!(detail.contains("1024-bit RSA"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

/// `openssl genrsa` (OpenSSL 1.x) and `openssl rsa -traditional` write PKCS#1
/// (`BEGIN RSA PRIVATE KEY`); fedmsg loads those too.
#[test]
fn pkcs1_rsa_key_loads_and_signs_identically() {
    let dir = ssldir(&["alice"]);
    let pkcs8 = Identity::load(dir.path(), "alice").unwrap();
    let key =
        openssl::pkey::PKey::private_key_from_pem(&fs::read(data("alice.key")).unwrap()).unwrap();
    let pkcs1 = key.rsa().unwrap().private_key_to_pem().unwrap();
    assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    let keyfile = dir.path().join("alice.key");
    fs::write(&keyfile, &pkcs1).unwrap();
    let id = Identity::load(dir.path(), "alice").unwrap();
    assert_eq!(id.sign(b"x").unwrap(), pkcs8.sign(b"x").unwrap());
}

#[test]
fn key_files_are_checked() {
    let dir = ssldir(&["alice", "bob"]);
    let key = dir.path().join("alice.key");

    // The openssl CLI recipe may leave keys 0644: refused, saying how to fix.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let e = Identity::load(dir.path(), "alice").unwrap_err();
    assert!(matches!(e, Error::InsecurePermissions { .. }), "{e:?}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // Someone else's key next to alice's certificate.
    fs::copy(data("bob.key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        Identity::load(dir.path(), "alice"),
        Err(Error::KeyMismatch { .. })
    ));

    // Encrypted keys are refused with a hint, never prompted for.
    let pkey =
        openssl::pkey::PKey::private_key_from_pem(&fs::read(data("alice.key")).unwrap()).unwrap();
    let encrypted = pkey
        .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"secret")
        .unwrap();
    fs::write(&key, encrypted).unwrap();
    let e = Identity::load(dir.path(), "alice").unwrap_err();
    assert!(matches!(e, Error::UnsupportedKey { .. }), "{e:?}");
    assert!(e.to_string().contains("encrypted"), "{e}");
}
