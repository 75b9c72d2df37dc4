//! End-to-end tests of the PKI directory, `Identity` and `TrustStore`: every
//! check the verifier makes has a test here that fails if the check goes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use gilmsg_crypto::pki::{self, InitOptions, IssueOptions};
use gilmsg_crypto::{Error, Identity, Signer as _, TrustStore, Verifier as _};
use gilmsg_proto::VerifyError;

const DAY: Duration = Duration::from_secs(86_400);
const MSG: &[u8] = br#"{"i":1,"msg":{"a":1},"topic":"t"}"#;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Pki {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn new_pki(ca_name: &str) -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    pki::init(
        &dir,
        &InitOptions {
            ca_name: ca_name.to_owned(),
            validity: 3650 * DAY,
        },
    )
    .unwrap();
    Pki { _tmp: tmp, dir }
}

fn issue(p: &Pki, name: &str) -> Identity {
    pki::issue(&p.dir, name, &IssueOptions::default()).unwrap();
    Identity::load(&p.dir, name).unwrap()
}

/// A store that looks at the CRL file on every call, so tests need not sleep.
fn trust(p: &Pki) -> TrustStore {
    TrustStore::load(&p.dir.join("ca.crt"), Some(&p.dir.join("crl.pem")))
        .unwrap()
        .with_crl_check_interval(Duration::ZERO)
}

fn verify(t: &TrustStore, id: &Identity, msg: &[u8]) -> Result<String, VerifyError> {
    let sig = id.sign(msg).unwrap();
    t.verify(id.scheme(), id.certificate(), &sig, msg)
        .map(|s| s.name)
}

fn cert_der(field: &str) -> Vec<u8> {
    let pem = B64.decode(field).unwrap();
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .next()
        .unwrap()
        .unwrap();
    block.contents
}

fn der_to_field(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    );
    B64.encode(pem)
}

#[test]
fn sign_verify_roundtrip() {
    let p = new_pki("Test CA");
    let id = issue(&p, "web01.example");
    assert_eq!(id.name(), "web01.example");
    assert_eq!(id.scheme(), "ed25519");
    let sig = id.sign(MSG).unwrap();
    assert_eq!(B64.decode(&sig).unwrap().len(), 64);
    let pem = String::from_utf8(B64.decode(id.certificate()).unwrap()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");

    let t = trust(&p);
    assert_eq!(verify(&t, &id, MSG).unwrap(), "web01.example");
    // Second time through the cache.
    assert_eq!(t.cached_certificates(), 1);
    assert_eq!(verify(&t, &id, MSG).unwrap(), "web01.example");
}

#[test]
fn debug_shows_no_key_material() {
    let p = new_pki("Test CA");
    let id = issue(&p, "alice");
    let dbg = format!("{id:?}");
    assert!(dbg.contains("alice") && dbg.contains("ed25519"), "{dbg}");
    assert!(!dbg.contains(id.certificate()), "{dbg}");
    let key = fs::read_to_string(p.dir.join("alice.key")).unwrap();
    let key_b64 = key.lines().nth(1).unwrap();
    assert!(!dbg.contains(key_b64), "{dbg}");
    assert!(dbg.len() < 100, "{dbg}");
}

#[test]
fn wrapped_base64_fields_are_accepted() {
    let p = new_pki("Test CA");
    let id = issue(&p, "alice");
    let t = trust(&p);
    let wrap = |s: &str| {
        s.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let sig = wrap(&id.sign(MSG).unwrap());
    let cert = wrap(id.certificate());
    assert_eq!(t.verify("ed25519", &cert, &sig, MSG).unwrap().name, "alice");
}

#[test]
fn signature_over_other_bytes_is_bad() {
    let p = new_pki("Test CA");
    let id = issue(&p, "alice");
    let t = trust(&p);
    let sig = id.sign(b"{\"a\":1}").unwrap();
    assert_eq!(
        t.verify("ed25519", id.certificate(), &sig, b"{\"a\":2}"),
        Err(VerifyError::BadSignature("alice".into()))
    );
}

#[test]
fn signature_by_another_key_with_same_name_is_bad() {
    // Same CA, two certificates for two different keys: the signature must be
    // checked against the key in *this* certificate.
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let bob = issue(&p, "bob");
    let t = trust(&p);
    let sig = bob.sign(MSG).unwrap();
    assert_eq!(
        t.verify("ed25519", alice.certificate(), &sig, MSG),
        Err(VerifyError::BadSignature("alice".into()))
    );
}

#[test]
fn garbage_signature_is_malformed() {
    let p = new_pki("Test CA");
    let id = issue(&p, "alice");
    let t = trust(&p);
    assert!(matches!(
        t.verify("ed25519", id.certificate(), "not base64!", MSG),
        Err(VerifyError::Malformed {
            field: "signature",
            ..
        })
    ));
    assert!(matches!(
        t.verify("ed25519", id.certificate(), &B64.encode([0u8; 10]), MSG),
        Err(VerifyError::Malformed {
            field: "signature",
            ..
        })
    ));
}

#[test]
fn certificate_from_another_ca_is_untrusted() {
    let ours = new_pki("Test CA");
    // Same CA name: only the signature check can tell them apart.
    let theirs_same_name = new_pki("Test CA");
    let theirs_other_name = new_pki("Other CA");
    let t = trust(&ours);
    for other in [&theirs_same_name, &theirs_other_name] {
        let mallory = issue(other, "mallory");
        assert!(
            matches!(verify(&t, &mallory, MSG), Err(VerifyError::Untrusted(_))),
            "{:?}",
            verify(&t, &mallory, MSG)
        );
    }
    assert_eq!(t.cached_certificates(), 0);
}

#[test]
fn ca_bundle_trusts_each_ca() {
    let a = new_pki("CA A");
    let b = new_pki("CA B");
    let alice = issue(&a, "alice");
    let bob = issue(&b, "bob");
    let bundle = a.dir.join("bundle.crt");
    let text = fs::read_to_string(a.dir.join("ca.crt")).unwrap()
        + &fs::read_to_string(b.dir.join("ca.crt")).unwrap();
    fs::write(&bundle, text).unwrap();
    let t = TrustStore::load(&bundle, None).unwrap();
    assert_eq!(verify(&t, &alice, MSG).unwrap(), "alice");
    assert_eq!(verify(&t, &bob, MSG).unwrap(), "bob");
}

#[test]
fn expired_and_not_yet_valid() {
    let p = new_pki("Test CA");
    let now = SystemTime::now();
    pki::issue(
        &p.dir,
        "old",
        &IssueOptions {
            not_before: now - 10 * DAY,
            not_after: now - DAY,
            replace: false,
        },
    )
    .unwrap();
    pki::issue(
        &p.dir,
        "future",
        &IssueOptions {
            not_before: now + DAY,
            not_after: now + 10 * DAY,
            replace: false,
        },
    )
    .unwrap();
    let t = trust(&p);
    let old = Identity::load(&p.dir, "old").unwrap();
    let future = Identity::load(&p.dir, "future").unwrap();
    assert_eq!(
        verify(&t, &old, MSG),
        Err(VerifyError::Expired("old".into()))
    );
    assert_eq!(
        verify(&t, &future, MSG),
        Err(VerifyError::NotYetValid("future".into()))
    );

    // The window is checked on every call, not only when first validated.
    let id = issue(&p, "alice");
    let sig = id.sign(MSG).unwrap();
    assert!(t.verify("ed25519", id.certificate(), &sig, MSG).is_ok());
    assert_eq!(
        t.verify_at("ed25519", id.certificate(), &sig, MSG, now + 400 * DAY),
        Err(VerifyError::Expired("alice".into()))
    );
    assert_eq!(
        t.verify_at("ed25519", id.certificate(), &sig, MSG, now - DAY),
        Err(VerifyError::NotYetValid("alice".into()))
    );
}

#[test]
fn expired_ca_makes_its_certificates_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    pki::init(
        &dir,
        &InitOptions {
            ca_name: "Short CA".into(),
            validity: 2 * DAY,
        },
    )
    .unwrap();
    pki::issue(&dir, "alice", &IssueOptions::valid_for(30 * DAY)).unwrap();
    let id = Identity::load(&dir, "alice").unwrap();
    let t = TrustStore::load(&dir.join("ca.crt"), None).unwrap();
    let sig = id.sign(MSG).unwrap();
    assert!(t.verify("ed25519", id.certificate(), &sig, MSG).is_ok());
    assert_eq!(
        t.verify_at(
            "ed25519",
            id.certificate(),
            &sig,
            MSG,
            SystemTime::now() + 5 * DAY
        ),
        Err(VerifyError::Expired("alice".into()))
    );
}

#[test]
fn a_renewed_ca_keeps_its_certificates_valid_whatever_the_bundle_order() {
    // An expired CA certificate and its renewal (same name, same key) in
    // one bundle: the leaf is valid through the renewal, whichever comes
    // first. It used to be cut to the first CA whose key verified it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    pki::init(
        &dir,
        &InitOptions {
            ca_name: "Renewed CA".into(),
            validity: 2 * DAY,
        },
    )
    .unwrap();
    pki::issue(&dir, "alice", &IssueOptions::valid_for(30 * DAY)).unwrap();
    let id = Identity::load(&dir, "alice").unwrap();
    let original = fs::read_to_string(dir.join("ca.crt")).unwrap();
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::from_ca_cert_pem(&original).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::HOUR;
    params.not_after = now + time::Duration::days(3650);
    let renewal = params.self_signed(&key).unwrap().pem();
    let later = SystemTime::now() + 5 * DAY;
    let sig = id.sign(MSG).unwrap();
    for (order, text) in [
        ("expired first", original.clone() + &renewal),
        ("renewal first", renewal.clone() + &original),
    ] {
        let bundle = dir.join("bundle.crt");
        fs::write(&bundle, text).unwrap();
        let t = TrustStore::load(&bundle, None).unwrap();
        // Now both are valid; in five days only the renewal is.
        assert!(
            t.verify("ed25519", id.certificate(), &sig, MSG).is_ok(),
            "{order}"
        );
        assert_eq!(
            t.verify_at("ed25519", id.certificate(), &sig, MSG, later)
                .map(|s| s.name),
            Ok("alice".into()),
            "{order}"
        );
        // Past the leaf's own validity, expired through both.
        assert_eq!(
            t.verify_at(
                "ed25519",
                id.certificate(),
                &sig,
                MSG,
                SystemTime::now() + 40 * DAY
            ),
            Err(VerifyError::Expired("alice".into())),
            "{order}"
        );
    }
}

#[test]
fn revocation_reaches_a_live_store_through_the_cache() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let bob = issue(&p, "bob");
    let t = trust(&p);
    assert_eq!(verify(&t, &alice, MSG).unwrap(), "alice");
    assert_eq!(t.cached_certificates(), 1, "alice is now a cache hit");

    // The new CRL must differ in mtime or size; size always grows here.
    let r = pki::revoke(&p.dir, "alice").unwrap();
    assert!(r.newly_revoked);
    assert_eq!(r.crl_number, 2);

    assert_eq!(
        verify(&t, &alice, MSG),
        Err(VerifyError::Revoked("alice".into()))
    );
    assert_eq!(verify(&t, &bob, MSG).unwrap(), "bob");
    // A fresh store agrees.
    assert_eq!(
        verify(&trust(&p), &alice, MSG),
        Err(VerifyError::Revoked("alice".into()))
    );
}

#[test]
fn reload_applies_a_new_crl_before_the_check_interval() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let t = TrustStore::load(&p.dir.join("ca.crt"), Some(&p.dir.join("crl.pem")))
        .unwrap()
        .with_crl_check_interval(Duration::from_secs(3600));
    assert!(verify(&t, &alice, MSG).is_ok());
    pki::revoke(&p.dir, "alice").unwrap();
    // Not looked at yet: the interval has not passed.
    assert!(verify(&t, &alice, MSG).is_ok());
    t.reload().unwrap();
    assert_eq!(
        verify(&t, &alice, MSG),
        Err(VerifyError::Revoked("alice".into()))
    );
}

#[test]
fn revoke_keeps_earlier_entries_and_bumps_number() {
    let p = new_pki("Test CA");
    issue(&p, "alice");
    issue(&p, "bob");
    issue(&p, "carol");
    assert_eq!(pki::revoke(&p.dir, "alice").unwrap().crl_number, 2);
    let r = pki::revoke(&p.dir, "bob").unwrap();
    assert_eq!(r.crl_number, 3);
    let again = pki::revoke(&p.dir, "bob").unwrap();
    assert!(!again.newly_revoked);
    assert_eq!(again.crl_number, 4);

    let list = pki::list(&p.dir).unwrap();
    let names: Vec<_> = list.iter().map(|c| (c.name.as_str(), c.revoked)).collect();
    assert_eq!(
        names,
        vec![("alice", true), ("bob", true), ("carol", false)]
    );
    assert_eq!(list[1].serial, r.serial);
    assert!(list[2].not_after > SystemTime::now() + 300 * DAY);

    assert!(matches!(
        pki::revoke(&p.dir, "nobody"),
        Err(Error::NotFound { path }) if path.ends_with("nobody.crt")
    ));
}

#[test]
fn crl_from_another_ca_is_refused() {
    let ours = new_pki("Test CA");
    let theirs = new_pki("Test CA");
    let other_name = new_pki("Other CA");
    for other in [&theirs, &other_name] {
        let err = TrustStore::load(&ours.dir.join("ca.crt"), Some(&other.dir.join("crl.pem")))
            .unwrap_err();
        assert!(matches!(err, Error::UntrustedCrl { .. }), "{err}");
        assert!(err.to_string().contains("crl.pem"), "{err}");
    }
}

#[test]
fn forged_crl_on_disk_keeps_previous_revocations() {
    let p = new_pki("Test CA");
    let other = new_pki("Test CA");
    let alice = issue(&p, "alice");
    pki::revoke(&p.dir, "alice").unwrap();
    let t = trust(&p);
    assert!(matches!(
        verify(&t, &alice, MSG),
        Err(VerifyError::Revoked(_))
    ));
    // An (empty) CRL signed by someone else must not un-revoke alice.
    fs::copy(other.dir.join("crl.pem"), p.dir.join("crl.pem")).unwrap();
    assert!(matches!(
        verify(&t, &alice, MSG),
        Err(VerifyError::Revoked(_))
    ));
    assert!(matches!(t.reload(), Err(Error::UntrustedCrl { .. })));
    assert!(matches!(
        verify(&t, &alice, MSG),
        Err(VerifyError::Revoked(_))
    ));
}

#[test]
fn missing_crl_is_an_error_at_load() {
    let p = new_pki("Test CA");
    let err = TrustStore::load(&p.dir.join("ca.crt"), Some(&p.dir.join("nope.pem"))).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { path } if path.ends_with("nope.pem")),
        "{err}"
    );
}

#[test]
fn group_or_world_readable_key_is_refused() {
    let p = new_pki("Test CA");
    issue(&p, "alice");
    let key = p.dir.join("alice.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for mode in [0o640, 0o604, 0o660] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let err = Identity::load(&p.dir, "alice").unwrap_err();
        match &err {
            Error::InsecurePermissions { path, mode: m } => {
                assert_eq!(path, &key);
                assert_eq!(*m, mode);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("alice.key"), "{err}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Identity::load(&p.dir, "alice").is_ok());
}

#[test]
fn tampered_certificate_is_rejected() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let t = trust(&p);
    let sig = alice.sign(MSG).unwrap();

    // Rename the subject inside the signed part: parses fine, CA signature fails.
    let mut der = cert_der(alice.certificate());
    let at = der.windows(5).position(|w| w == b"alice").unwrap();
    der[at..at + 5].copy_from_slice(b"admin");
    let forged = der_to_field(&der);
    assert!(
        matches!(
            t.verify("ed25519", &forged, &sig, MSG),
            Err(VerifyError::Untrusted(_))
        ),
        "{:?}",
        t.verify("ed25519", &forged, &sig, MSG)
    );

    // Broken encodings.
    let mut chars: Vec<char> = alice.certificate().chars().collect();
    chars[40] = if chars[40] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    let r = t.verify("ed25519", &flipped, &sig, MSG);
    assert!(
        matches!(
            r,
            Err(VerifyError::Malformed { .. } | VerifyError::Untrusted(_))
        ),
        "{r:?}"
    );
    for junk in [
        "",
        "%%%",
        &B64.encode("no pem here"),
        &der_to_field(b"\x30\x03abc"),
    ] {
        assert!(
            matches!(
                t.verify("ed25519", junk, &sig, MSG),
                Err(VerifyError::Malformed {
                    field: "certificate",
                    ..
                })
            ),
            "{junk:?}"
        );
    }
}

#[test]
fn key_and_certificate_mismatch_is_refused() {
    let p = new_pki("Test CA");
    issue(&p, "alice");
    issue(&p, "bob");
    let err = Identity::load_files(&p.dir.join("alice.key"), &p.dir.join("bob.crt")).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("alice.key") && err.to_string().contains("bob.crt"));
}

#[test]
fn unknown_scheme() {
    let p = new_pki("Test CA");
    let alice = issue(&p, "alice");
    let t = trust(&p);
    let sig = alice.sign(MSG).unwrap();
    assert_eq!(
        t.verify("rot13", alice.certificate(), &sig, MSG),
        Err(VerifyError::UnknownScheme("rot13".into()))
    );
    // A known scheme that does not match the certificate's key cannot pass.
    assert_eq!(
        t.verify("x509", alice.certificate(), &sig, MSG),
        Err(VerifyError::BadSignature("alice".into()))
    );
}

#[test]
fn pki_refuses_overwrites_and_bad_names() {
    let p = new_pki("Test CA");
    assert!(matches!(
        pki::init(&p.dir, &InitOptions::default()),
        Err(Error::AlreadyExists { path }) if path.ends_with("ca.key")
    ));
    issue(&p, "alice");
    let first = fs::read(p.dir.join("alice.crt")).unwrap();
    assert!(matches!(
        pki::issue(&p.dir, "alice", &IssueOptions::default()),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(fs::read(p.dir.join("alice.crt")).unwrap(), first);
    let forced = IssueOptions {
        replace: true,
        ..IssueOptions::default()
    };
    pki::issue(&p.dir, "alice", &forced).unwrap();
    assert_ne!(fs::read(p.dir.join("alice.crt")).unwrap(), first);
    assert!(Identity::load(&p.dir, "alice").is_ok());

    for bad in [
        "", "../x", "a/b", ".hidden", "-rf", "ca", "crl", "sp ace", "é",
    ] {
        assert!(
            matches!(
                pki::issue(&p.dir, bad, &IssueOptions::default()),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        fs::metadata(&p.dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(p.dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

// fedmsg's "x509" scheme, with a signature made by the openssl command line
// (see tests/data/README.md) and certificates made here around the same keys.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn rsa_x509_signature_from_openssl_verifies() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::from_pem(&fs::read_to_string(data("rsa-ca.key")).unwrap()).unwrap();
    let leaf_key = KeyPair::from_pem(&fs::read_to_string(data("rsa-leaf.key")).unwrap()).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "RSA CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut leaf_params = CertificateParams::default();
    leaf_params.distinguished_name = rcgen::DistinguishedName::new();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "fedmsg-host");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let ca_path = tmp.path().join("ca.crt");
    fs::write(&ca_path, ca.pem()).unwrap();
    let t = TrustStore::load(&ca_path, None).unwrap();
    let cert_field = B64.encode(leaf.pem());
    let canonical = fs::read(data("x509-canonical.json")).unwrap();
    let sig = fs::read_to_string(data("x509-signature.txt")).unwrap();
    assert!(sig.contains('\n'), "fixture is wrapped like fedmsg's");

    assert_eq!(
        t.verify("x509", &cert_field, &sig, &canonical)
            .unwrap()
            .name,
        "fedmsg-host"
    );
    let mut other = canonical.clone();
    other[2] ^= 1;
    assert_eq!(
        t.verify("x509", &cert_field, &sig, &other),
        Err(VerifyError::BadSignature("fedmsg-host".into()))
    );
    assert_eq!(
        t.verify("ed25519", &cert_field, &sig, &canonical),
        Err(VerifyError::BadSignature("fedmsg-host".into()))
    );

    // Our RSA signer reproduces the openssl command line's signature exactly
    // (PKCS#1 v1.5 is deterministic), wrapped the same way. Without the
    // `x509-sign` feature, loading the identity says what is missing.
    let leaf_crt = tmp.path().join("leaf.crt");
    let leaf_keyf = tmp.path().join("leaf.key");
    fs::write(&leaf_crt, leaf.pem()).unwrap();
    fs::write(&leaf_keyf, fs::read(data("rsa-leaf.key")).unwrap()).unwrap();
    fs::set_permissions(&leaf_keyf, fs::Permissions::from_mode(0o600)).unwrap();
    #[cfg(feature = "x509-sign")]
    {
        let id = Identity::load_files(&leaf_keyf, &leaf_crt).unwrap();
        assert_eq!(id.scheme(), "x509");
        assert_eq!(id.sign(&canonical).unwrap(), sig);
    }
    #[cfg(not(feature = "x509-sign"))]
    {
        let err = Identity::load_files(&leaf_keyf, &leaf_crt)
            .err()
            .expect("RSA needs x509-sign");
        assert!(err.to_string().contains("fedmsg-x509"), "{err}");
    }
}
