//! Revocation as OpenSSL's `CRL_CHECK | CRL_CHECK_ALL` does it (what fedmsg's
//! `x509` validator sets), on PKIs that `gilmsg-pki` would never make but
//! other tools do: a CA subject encoded as a PrintableString with leaves
//! whose issuer field is a UTF8String, CA bundles with a CRL for only some
//! CAs, two CAs with the same name, CRLs past `nextUpdate`, and an older
//! CRL put back in place. Fixtures are built with rcgen; the first ones are
//! also given to `openssl verify -crl_check_all` to show that we agree.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use gilmsg_crypto::{Error, Identity, Signer as _, TrustStore, Verifier as _};
use gilmsg_proto::VerifyError;
use gilmsg_testkit::child::run_bounded;
use gilmsg_testkit::guard::Registry;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PrintableString, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

const MSG: &[u8] = br#"{"i":1,"msg":{"a":1},"topic":"t"}"#;
const HOUR: time::Duration = time::Duration::hours(1);
const DAY: time::Duration = time::Duration::days(1);
/// How long one `openssl verify` may take (milliseconds in practice).
const OPENSSL_LIMIT: Duration = Duration::from_secs(30);

/// How a CN is encoded.
#[derive(Clone, Copy)]
enum Enc {
    Printable,
    Utf8,
}

fn dn(cn: &str, enc: Enc) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    let value = match enc {
        Enc::Printable => DnValue::PrintableString(PrintableString::try_from(cn).unwrap()),
        Enc::Utf8 => DnValue::Utf8String(cn.to_owned()),
    };
    dn.push(DnType::CommonName, value);
    dn
}

/// A CA: its certificate as written to the CA file (subject in one
/// encoding) and the handle its leaves are signed with (same key, the name
/// possibly in another encoding, so the leaves' issuer field differs
/// byte-wise from the CA's subject).
struct TestCa {
    key: KeyPair,
    cert: Certificate,
    leaf_issuer: Certificate,
}

fn ca_params(name: DistinguishedName) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.not_before = OffsetDateTime::now_utc() - DAY;
    p.not_after = OffsetDateTime::now_utc() + 3650 * DAY;
    p
}

fn new_ca(cn: &str, subject: Enc, leaf_issuer: Enc) -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = ca_params(dn(cn, subject)).self_signed(&key).unwrap();
    let leaf_issuer = ca_params(dn(cn, leaf_issuer)).self_signed(&key).unwrap();
    TestCa {
        key,
        cert,
        leaf_issuer,
    }
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        Dir { _tmp: tmp, path }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes the CA file with these CAs, in order.
    fn write_cas(&self, cas: &[&TestCa]) -> PathBuf {
        let text: String = cas.iter().map(|c| c.cert.pem()).collect();
        let path = self.file("ca.crt");
        fs::write(&path, text).unwrap();
        path
    }

    /// Writes the CRL file with these CRLs, in order.
    fn write_crls(&self, crls: &[String]) -> PathBuf {
        let path = self.file("crl.pem");
        // Atomic, as gilmsg-pki writes it: a store re-reading the file
        // never sees half of it.
        let tmp = self.file("crl.pem.tmp");
        fs::write(&tmp, crls.concat()).unwrap();
        fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Issues `name` (CN = name) with `serial` from `ca`; returns the identity.
    fn leaf(&self, ca: &TestCa, name: &str, serial: u64) -> Identity {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(name, Enc::Utf8);
        p.serial_number = Some(SerialNumber::from(serial));
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.not_before = OffsetDateTime::now_utc() - DAY;
        p.not_after = OffsetDateTime::now_utc() + 365 * DAY;
        let cert = p.signed_by(&key, &ca.leaf_issuer, &ca.key).unwrap();
        let (crt, keyf) = (
            self.file(&format!("{name}.crt")),
            self.file(&format!("{name}.key")),
        );
        fs::write(&crt, cert.pem()).unwrap();
        fs::write(&keyf, key.serialize_pem()).unwrap();
        fs::set_permissions(&keyf, fs::Permissions::from_mode(0o600)).unwrap();
        Identity::load_files(&keyf, &crt).unwrap()
    }
}

/// A CRL signed by `ca` under its own subject (as `openssl ca -gencrl`
/// writes it), valid from `this_update` to `next_update`.
fn crl(
    ca: &TestCa,
    number: u64,
    revoked: &[u64],
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> String {
    CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&s| RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap()
    .pem()
    .unwrap()
}

/// A CRL valid from an hour ago for a week.
fn fresh_crl(ca: &TestCa, number: u64, revoked: &[u64]) -> String {
    let now = OffsetDateTime::now_utc();
    crl(ca, number, revoked, now - HOUR, now + 7 * DAY)
}

fn store(ca: &Path, crl: &Path) -> TrustStore {
    TrustStore::load(ca, Some(crl))
        .unwrap()
        .with_crl_check_interval(Duration::ZERO)
}

fn verify(t: &TrustStore, id: &Identity) -> Result<String, VerifyError> {
    let sig = id.sign(MSG).unwrap();
    t.verify(id.scheme(), id.certificate(), &sig, MSG)
        .map(|s| s.name)
}

/// `openssl verify -crl_check_all`: Ok(()) or the error it printed.
fn openssl_verify(ca: &Path, crl: &Path, leaf: &Path) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .arg("-crl_check_all")
        .arg("-CAfile")
        .arg(ca)
        .arg("-CRLfile")
        .arg(crl)
        .arg(leaf);
    let out = run_bounded(
        command,
        "openssl verify",
        "",
        OPENSSL_LIMIT,
        &Registry::default(),
    );
    if out.status == Some(0) {
        Ok(())
    } else {
        Err(out.stdout + &out.stderr)
    }
}

/// The DER tag of the CN value in the first RDN of a name.
fn cn_tag(name: &x509_parser::x509::X509Name<'_>) -> u32 {
    name.iter_common_name().next().unwrap().attr_value().tag().0
}

/// Asserts the fixture really has a UTF8String issuer under a
/// PrintableString CA subject (12 and 19 are their tags).
fn assert_mixed_encoding(ca: &Path, leaf: &Path) {
    let ca_pem = fs::read(ca).unwrap();
    let leaf_pem = fs::read(leaf).unwrap();
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let (_, leaf_block) = x509_parser::pem::parse_x509_pem(&leaf_pem).unwrap();
    let ca_cert = ca_block.parse_x509().unwrap();
    let leaf_cert = leaf_block.parse_x509().unwrap();
    assert_eq!(
        cn_tag(ca_cert.subject()),
        19,
        "CA subject is a PrintableString"
    );
    assert_eq!(
        cn_tag(leaf_cert.issuer()),
        12,
        "leaf issuer is a UTF8String"
    );
    assert_ne!(ca_cert.subject().as_raw(), leaf_cert.issuer().as_raw());
    assert_eq!(
        ca_cert.subject().to_string(),
        leaf_cert.issuer().to_string()
    );
}

#[test]
fn revoked_leaf_whose_issuer_is_encoded_differently_from_its_ca_is_refused() {
    let dir = Dir::new();
    let ca = new_ca("Bus CA", Enc::Printable, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ca]);
    let alice = dir.leaf(&ca, "alice", 100);
    let bob = dir.leaf(&ca, "bob", 101);
    let crl_path = dir.write_crls(&[fresh_crl(&ca, 1, &[100])]);
    assert_mixed_encoding(&ca_path, &dir.file("alice.crt"));

    let t = store(&ca_path, &crl_path);
    assert_eq!(
        verify(&t, &alice),
        Err(VerifyError::Revoked("alice".into()))
    );
    assert_eq!(verify(&t, &bob).unwrap(), "bob");

    // OpenSSL agrees on both.
    let refused = openssl_verify(&ca_path, &crl_path, &dir.file("alice.crt")).unwrap_err();
    assert!(refused.contains("certificate revoked"), "{refused}");
    openssl_verify(&ca_path, &crl_path, &dir.file("bob.crt")).unwrap();
}

#[test]
fn stale_crl_under_a_differently_encoded_issuer_is_noticed() {
    let dir = Dir::new();
    let ca = new_ca("Bus CA", Enc::Printable, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ca]);
    let alice = dir.leaf(&ca, "alice", 100);
    let now = OffsetDateTime::now_utc();
    let crl_path = dir.write_crls(&[crl(&ca, 1, &[], now - 10 * DAY, now - DAY)]);

    let t = store(&ca_path, &crl_path);
    let err = verify(&t, &alice).unwrap_err();
    assert!(matches!(err, VerifyError::CrlExpired(_)), "{err:?}");
    assert_eq!(err.kind(), "crl_expired");
    assert!(err.to_string().contains("crl.pem"), "{err}");

    let refused = openssl_verify(&ca_path, &crl_path, &dir.file("alice.crt")).unwrap_err();
    assert!(refused.contains("CRL has expired"), "{refused}");
}

#[test]
fn a_ca_without_a_crl_in_the_file_has_its_certificates_refused() {
    let dir = Dir::new();
    let a = new_ca("Bus CA A", Enc::Utf8, Enc::Utf8);
    let b = new_ca("Bus CA B", Enc::Printable, Enc::Printable);
    let ca_path = dir.write_cas(&[&a, &b]);
    let alice = dir.leaf(&a, "alice", 100);
    let bob = dir.leaf(&b, "bob", 200);
    let crl_path = dir.write_crls(&[fresh_crl(&a, 1, &[])]);

    let t = store(&ca_path, &crl_path);
    assert_eq!(verify(&t, &alice).unwrap(), "alice");
    let err = verify(&t, &bob).unwrap_err();
    assert!(matches!(err, VerifyError::CrlMissing(_)), "{err:?}");
    assert_eq!(err.kind(), "crl_missing");
    assert!(err.to_string().contains("Bus CA B"), "{err}");

    openssl_verify(&ca_path, &crl_path, &dir.file("alice.crt")).unwrap();
    let refused = openssl_verify(&ca_path, &crl_path, &dir.file("bob.crt")).unwrap_err();
    assert!(
        refused.contains("unable to get certificate CRL"),
        "{refused}"
    );

    // With both CRLs in the file, both are accepted.
    let crl_path = dir.write_crls(&[fresh_crl(&a, 2, &[]), fresh_crl(&b, 1, &[])]);
    let t = store(&ca_path, &crl_path);
    assert_eq!(verify(&t, &bob).unwrap(), "bob");
}

#[test]
fn a_crl_counts_only_for_the_ca_whose_key_signed_it() {
    // Two CAs with the same name and different keys: the CRL of one says
    // nothing about the certificates of the other, whatever the names say.
    let dir = Dir::new();
    let a = new_ca("Bus CA", Enc::Utf8, Enc::Utf8);
    let b = new_ca("Bus CA", Enc::Printable, Enc::Utf8);
    let ca_path = dir.write_cas(&[&a, &b]);
    let alice = dir.leaf(&a, "alice", 100);
    let bob = dir.leaf(&b, "bob", 100);

    // Only B's CRL, revoking serial 100: bob is revoked, alice (same serial,
    // other CA) is not revoked but has no CRL.
    let crl_path = dir.write_crls(&[fresh_crl(&b, 1, &[100])]);
    let t = store(&ca_path, &crl_path);
    assert_eq!(verify(&t, &bob), Err(VerifyError::Revoked("bob".into())));
    assert!(matches!(
        verify(&t, &alice),
        Err(VerifyError::CrlMissing(_))
    ));

    // A's CRL revoking nothing does not un-revoke bob.
    let crl_path = dir.write_crls(&[fresh_crl(&a, 1, &[]), fresh_crl(&b, 1, &[100])]);
    let t = store(&ca_path, &crl_path);
    assert_eq!(verify(&t, &alice).unwrap(), "alice");
    assert_eq!(verify(&t, &bob), Err(VerifyError::Revoked("bob".into())));
}

#[test]
fn an_older_crl_put_back_on_reload_is_refused_and_counted() {
    let dir = Dir::new();
    let ca = new_ca("Bus CA", Enc::Utf8, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ca]);
    let alice = dir.leaf(&ca, "alice", 100);
    let older = fresh_crl(&ca, 4, &[]);
    let crl_path = dir.write_crls(&[fresh_crl(&ca, 5, &[100])]);
    let t = store(&ca_path, &crl_path);
    assert_eq!(
        verify(&t, &alice),
        Err(VerifyError::Revoked("alice".into()))
    );

    // CRL 4, from before alice was revoked, replayed into place: it is
    // validly signed, but taking it would un-revoke alice.
    dir.write_crls(&[older]);
    for _ in 0..3 {
        assert_eq!(
            verify(&t, &alice),
            Err(VerifyError::Revoked("alice".into()))
        );
    }
    let stats = t.crl_reload_stats();
    assert_eq!(
        stats.refused_rollback, 1,
        "counted once per file version: {stats:?}"
    );
    assert_eq!(stats.reloaded, 0, "{stats:?}");

    let err = t.reload().unwrap_err();
    assert!(matches!(err, Error::CrlRollback { .. }), "{err}");
    assert!(err.to_string().contains("crl.pem"), "{err}");
    assert!(err.to_string().contains("CRL number 4"), "{err}");
    assert_eq!(t.crl_reload_stats().refused_rollback, 2);
    assert_eq!(
        verify(&t, &alice),
        Err(VerifyError::Revoked("alice".into()))
    );

    // The same number again is not backwards (the same CRL, re-written).
    dir.write_crls(&[fresh_crl(&ca, 5, &[])]);
    t.reload().unwrap();
    assert_eq!(verify(&t, &alice).unwrap(), "alice");

    // A newer CRL is taken as usual.
    dir.write_crls(&[fresh_crl(&ca, 6, &[100])]);
    t.reload().unwrap();
    assert_eq!(
        verify(&t, &alice),
        Err(VerifyError::Revoked("alice".into()))
    );
    let stats = t.crl_reload_stats();
    assert_eq!(
        (stats.reloaded, stats.refused_rollback),
        (2, 2),
        "{stats:?}"
    );
}

#[test]
fn a_crl_signed_by_no_trusted_key_is_refused_even_under_a_trusted_name() {
    let dir = Dir::new();
    let ours = new_ca("Bus CA", Enc::Printable, Enc::Utf8);
    let theirs = new_ca("Bus CA", Enc::Utf8, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ours]);
    let crl_path = dir.write_crls(&[fresh_crl(&theirs, 9, &[])]);
    let err = TrustStore::load(&ca_path, Some(&crl_path)).unwrap_err();
    assert!(matches!(err, Error::UntrustedCrl { .. }), "{err}");
}

#[test]
fn own_identity_check_names_the_certificate_file() {
    let dir = Dir::new();
    let ca = new_ca("Bus CA", Enc::Printable, Enc::Utf8);
    let other = new_ca("Other CA", Enc::Utf8, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ca]);
    let alice = dir.leaf(&ca, "alice", 100);
    let bob = dir.leaf(&ca, "bob", 101);
    let mallory = dir.leaf(&other, "mallory", 102);
    let crl_path = dir.write_crls(&[fresh_crl(&ca, 1, &[100])]);
    let t = store(&ca_path, &crl_path);

    let standing = t.check_identity(&bob).unwrap();
    assert_eq!(standing.name, "bob");
    assert!(standing.warnings.is_empty(), "{:?}", standing.warnings);

    for (id, file, reason) in [
        (&alice, "alice.crt", "revoked_certificate"),
        (&mallory, "mallory.crt", "untrusted_certificate"),
    ] {
        let err = t.check_identity(id).unwrap_err();
        match &err {
            Error::OwnCertificate { path, reason: r } => {
                assert!(path.ends_with(file), "{err}");
                assert_eq!(r.kind(), reason, "{err}");
            }
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains(file), "{err}");
    }
    let err = t
        .check_identity_at(&bob, SystemTime::now() + Duration::from_secs(400 * 86_400))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::OwnCertificate {
                reason: VerifyError::Expired(_),
                ..
            }
        ),
        "{err}"
    );

    // A stale CRL is a warning (a fresh file is picked up without restart).
    let now = OffsetDateTime::now_utc();
    let crl_path = dir.write_crls(&[crl(&ca, 2, &[100], now - 10 * DAY, now - DAY)]);
    let t = store(&ca_path, &crl_path);
    let standing = t.check_identity(&bob).unwrap();
    assert_eq!(standing.warnings.len(), 1, "{:?}", standing.warnings);
    assert!(
        standing.warnings[0].contains("expired"),
        "{:?}",
        standing.warnings
    );
    // Revoked stays an error under a stale CRL.
    assert!(t.check_identity(&alice).is_err());

    // No CRL for the identity's CA.
    let b = new_ca("Second CA", Enc::Utf8, Enc::Utf8);
    let ca_path = dir.write_cas(&[&ca, &b]);
    let carol = dir.leaf(&b, "carol", 103);
    let crl_path = dir.write_crls(&[fresh_crl(&ca, 3, &[])]);
    let err = store(&ca_path, &crl_path)
        .check_identity(&carol)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::OwnCertificate {
                reason: VerifyError::CrlMissing(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn names_differing_in_case_and_spacing_match_as_in_openssl() {
    // The CA says "Bus CA"; the leaf's issuer says " bus   ca " (UTF8).
    // OpenSSL's canonical comparison calls them the same name.
    let dir = Dir::new();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ca = TestCa {
        cert: ca_params(dn("Bus CA", Enc::Printable))
            .self_signed(&key)
            .unwrap(),
        leaf_issuer: ca_params(dn(" bus   ca ", Enc::Utf8))
            .self_signed(&key)
            .unwrap(),
        key,
    };
    let ca_path = dir.write_cas(&[&ca]);
    let alice = dir.leaf(&ca, "alice", 100);
    let crl_path = dir.write_crls(&[fresh_crl(&ca, 1, &[100])]);
    let t = store(&ca_path, &crl_path);
    assert_eq!(
        verify(&t, &alice),
        Err(VerifyError::Revoked("alice".into()))
    );
    let refused = openssl_verify(&ca_path, &crl_path, &dir.file("alice.crt")).unwrap_err();
    assert!(refused.contains("certificate revoked"), "{refused}");

    // A different name is not the CA, whatever the key.
    let other = TestCa {
        leaf_issuer: ca_params(dn("Bus CA2", Enc::Utf8))
            .self_signed(&ca.key)
            .unwrap(),
        cert: ca_params(dn("Bus CA", Enc::Printable))
            .self_signed(&ca.key)
            .unwrap(),
        key: KeyPair::from_pem(&ca.key.serialize_pem()).unwrap(),
    };
    let mallory = dir.leaf(&other, "mallory", 101);
    assert!(matches!(
        verify(&t, &mallory),
        Err(VerifyError::Untrusted(_))
    ));
}
