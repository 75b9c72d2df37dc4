//! Deciding whether a message's `certificate` and `signature` fields are
//! acceptable: the trusted CA(s), the CRL, and a cache of certificates that
//! already proved themselves. Implements `gilmsg_proto::Verifier`.
//!
//! Cost model: a consumer sees the same few certificates thousands of times a
//! second. Chain validation (X.509 parse, issuer match, CA signature check) is
//! done once per distinct certificate and remembered with the parsed public
//! key, keyed by the SHA-256 of the part of the certificate the CA signed
//! (the `TBSCertificate`: so neither the free whitespace of the base64
//! `certificate` field nor another encoding of the CA's signature makes new
//! entries; bytes after the certificate are refused), and only after a
//! message signature verified with that key (so forged
//! messages carrying a real certificate cannot fill or churn the cache; see
//! `cert_cache.rs`). What can change between messages (the clock, the CRL) is
//! checked on every call. The CRL file is re-read when its mtime or size
//! changes, looked at no more than once per [`DEFAULT_CRL_CHECK_INTERVAL`].
//!
//! Revocation follows OpenSSL's `X509_V_FLAG_CRL_CHECK | CRL_CHECK_ALL`,
//! which is what fedmsg's `x509` validator (pyOpenSSL's `X509Store`) sets:
//!
//! - A certificate's issuer is the trusted CA whose subject is the same
//!   *name* (compared canonically, as OpenSSL does: see `name.rs`) and whose
//!   key verifies the certificate's signature. A CRL belongs to the trusted
//!   CA whose name matches its issuer and whose key verifies the CRL's
//!   signature. When several do (an expired CA certificate and its renewal,
//!   same name and key), the leaf is valid through whichever is valid at the
//!   time of the call, whatever the bundle order. Revocation state is then
//!   looked up by that CA, never by the
//!   bytes of the certificate's issuer field, so a `UTF8String` issuer under
//!   a `PrintableString` CA subject finds its CRL as OpenSSL finds it.
//! - When a CRL is configured, a certificate whose CA has no CRL in the file
//!   is refused (`VerifyError::CrlMissing`), as OpenSSL's "unable to get
//!   certificate CRL".
//! - A CRL whose `nextUpdate` has passed makes every certificate of its CA
//!   untrusted until the file is refreshed (`VerifyError::CrlExpired`), as
//!   OpenSSL's "CRL has expired".
//! - A changed CRL file is refused, and the loaded one kept, when it is
//!   unreadable, not signed by a trusted CA, or when the CRL number of one of
//!   the CAs goes backwards (a replayed older CRL could un-revoke someone).
//!   Each refused file version is logged once and counted
//!   ([`TrustStore::crl_reload_stats`]).
//!
//! Other compatibility notes:
//!
//! - Signatures and certificates may be base64 wrapped at 76 columns (as
//!   fedmsg writes them) or not; whitespace is ignored.
//! - The leaf must be issued directly by a trusted CA: no intermediates, as
//!   in fedmsg. fedmsg uses only the *first* certificate of
//!   `ca_cert_location`; we trust every certificate in the file, which is
//!   the same for the usual one-CA file.
//! - RSA is verified with ring, which takes 2048 to 8192-bit keys only: an
//!   RSA-1024 certificate that Python fedmsg accepts is refused here (as a
//!   malformed certificate naming the key size).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use gilmsg_proto::{Digest, SignedItem, VerifiedSigner, Verifier, VerifyError};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY};
use x509_parser::num_bigint::BigUint;
use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name, X509Version};

use crate::cert_cache::GenerationalCache;
use crate::error::{Error, Result};
use crate::files;
use crate::identity::{Identity, SCHEME_ED25519, SCHEME_X509};
use crate::locks::{lock, read, write};
use crate::name::StoredName;

/// How many proven certificates are remembered. A bus has far fewer
/// identities than this; the bound only stops a flood of distinct (valid)
/// certificates from growing memory without limit. Eviction drops the
/// least recently used half at most (see `cert_cache.rs`).
pub const CACHE_CAPACITY: usize = 4096;

/// How many certificate texts the fast path remembers (a bus has a few
/// identities; about 1 KiB each).
const TEXT_CACHE_CAPACITY: usize = 256;

/// How often, at most, `verify` looks at the CRL file's mtime.
pub const DEFAULT_CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// RSA modulus sizes ring's PKCS#1 verifier accepts.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// One trust anchor.
struct TrustedCa {
    subject: StoredName,
    subject_text: String,
    spki_raw: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl TrustedCa {
    /// Whether this CA's key verifies something, per `check`.
    fn key_verifies(&self, check: impl Fn(&SubjectPublicKeyInfo<'_>) -> bool) -> bool {
        SubjectPublicKeyInfo::from_der(&self.spki_raw).is_ok_and(|(_, spki)| check(&spki))
    }
}

/// The public key of a validated certificate, ready to verify with.
enum PublicKey {
    /// Decompressed once, when the chain is validated (about 5 us a time).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// DER `RSAPublicKey`, as ring's RSA verifiers take it.
    Rsa(Vec<u8>),
    Unsupported(String),
}

/// What chain validation established about one certificate.
struct Validated {
    name: String,
    /// Every trusted CA whose name and key issued the certificate (more
    /// than one when a bundle holds a CA certificate and its renewal, with
    /// the same name and key), in bundle order; never empty.
    issuers: Vec<Issuer>,
    serial: Vec<u8>,
    key: PublicKey,
}

/// One trusted CA that issued a certificate, and when the pair is usable.
#[derive(Clone, Copy)]
struct Issuer {
    /// Index into [`TrustStore::cas`]: revocation is looked up by this CA.
    ca: usize,
    /// Intersection of the certificate's and this CA's validity, in Unix
    /// seconds: an expired CA makes its certificates unusable too.
    not_before: i64,
    not_after: i64,
}

impl Validated {
    /// The earliest time the certificate is usable through any issuer.
    fn not_before(&self) -> i64 {
        self.issuers
            .iter()
            .map(|i| i.not_before)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The latest time the certificate is usable through any issuer.
    fn not_after(&self) -> i64 {
        self.issuers
            .iter()
            .map(|i| i.not_after)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// What the CRL file says about one trusted CA, all of its CRLs merged.
#[derive(Default)]
struct CaRevocations {
    serials: HashSet<Vec<u8>>,
    /// Earliest `nextUpdate` (Unix seconds) among the CA's CRLs; `None` when
    /// none of them has one.
    next_update: Option<i64>,
    /// Highest CRL number among them; `None` when none has one.
    number: Option<BigUint>,
}

/// Revocation state per trusted CA, indexed like [`TrustStore::cas`];
/// `None`: the file holds no CRL from that CA.
struct Revocations {
    per_ca: Vec<Option<CaRevocations>>,
}

/// What identifies a version of the CRL file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    mtime: Option<SystemTime>,
    len: u64,
}

struct CrlState {
    stamp: FileStamp,
    revocations: Revocations,
}

/// Counts of what happened to changed CRL files.
#[derive(Default)]
struct CrlCounters {
    reloaded: AtomicU64,
    refused_rollback: AtomicU64,
    refused_invalid: AtomicU64,
}

struct CrlSource {
    path: PathBuf,
    state: RwLock<CrlState>,
    last_check: Mutex<Instant>,
    /// The last file version refused, so that it is logged and counted once
    /// rather than at every check.
    refused: Mutex<Option<FileStamp>>,
    counters: CrlCounters,
}

/// What happened to changed CRL files since the store was loaded
/// ([`TrustStore::crl_reload_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrlReloadStats {
    /// New CRL files taken into use.
    pub reloaded: u64,
    /// Files refused because a CA's CRL number went backwards (or
    /// disappeared): an older CRL could un-revoke an identity.
    pub refused_rollback: u64,
    /// Files refused as unreadable, malformed, or not signed by a trusted CA.
    pub refused_invalid: u64,
}

/// How this process's own identity stands with the trust store, from
/// [`TrustStore::check_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityStanding {
    /// The name on the certificate (its CN).
    pub name: String,
    /// When the certificate (or its CA, if sooner) stops being valid.
    pub not_after: SystemTime,
    /// Problems that do not stop the identity from signing but that peers
    /// will notice (a CRL past its `nextUpdate`, a certificate not valid yet
    /// by this host's clock, a key size gilmsg peers cannot verify). Log
    /// them.
    pub warnings: Vec<String>,
}

/// The CA certificate(s) and CRL that decide which certificates are trusted.
///
/// Cheap to share (`Arc<TrustStore>`); all methods take `&self`.
pub struct TrustStore {
    ca_path: PathBuf,
    cas: Vec<TrustedCa>,
    crl: Option<CrlSource>,
    crl_check_interval: Duration,
    cache: GenerationalCache<Digest, Arc<Validated>>,
    /// The same proven certificates by the exact text of the message's
    /// `certificate` field: a hit skips decoding the base64 and PEM and
    /// hashing the DER (about 8 % of a consumer's CPU per message, measured
    /// with callgrind in `gilmsg-bench`). Filled only after a full lookup
    /// (with `cache`) verified a signature for that exact text, so it
    /// answers only what that lookup answered; each check that can change
    /// (validity period, revocation) still runs on every message.
    by_text: GenerationalCache<String, Arc<Validated>>,
    /// How many more [`Verifier::verify_many`] calls check their signatures
    /// one at a time because a batch failed (see
    /// [`BATCHES_PAUSED_AFTER_A_FAILURE`]).
    batches_paused: AtomicU32,
}

/// After a batch of Ed25519 signatures fails, the next this many
/// [`Verifier::verify_many`] calls check theirs one at a time. A failed
/// batch costs its own check (about 22 us a signature) on top of checking
/// each alone (about 40): a sender that slips one bad signature into every
/// burst would otherwise make each signature cost half as much again as
/// with no batches at all. With the pause it costs about 6 % more
/// (one failed batch in nine), and a burst with no bad signature after the
/// pause is batched again.
pub const BATCHES_PAUSED_AFTER_A_FAILURE: u32 = 8;

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("ca", &self.ca_path)
            .field(
                "ca_subjects",
                &self.cas.iter().map(|c| &c.subject_text).collect::<Vec<_>>(),
            )
            .field("crl", &self.crl.as_ref().map(|c| &c.path))
            .finish_non_exhaustive()
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn show_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn stamp(path: &Path) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(FileStamp {
        mtime: meta.modified().ok(),
        len: meta.len(),
    })
}

fn load_cas(path: &Path) -> Result<Vec<TrustedCa>> {
    let text = files::read(path)?;
    let ders = files::pem_blocks(path, &text, "CERTIFICATE")?;
    if ders.is_empty() {
        return Err(Error::malformed(path, "no CERTIFICATE PEM block"));
    }
    let mut cas = Vec::with_capacity(ders.len());
    for der in &ders {
        let cert = files::parse_cert(path, der)?;
        // As OpenSSL does: a v3 certificate must say it is a CA to issue;
        // v1 certificates (old easy-rsa CAs) have no way to say so.
        if cert.version() == X509Version::V3 && !cert.is_ca() {
            return Err(Error::malformed(
                path,
                format!("{} is not a CA certificate", cert.subject()),
            ));
        }
        cas.push(TrustedCa {
            subject: StoredName::of(cert.subject()),
            subject_text: cert.subject().to_string(),
            spki_raw: cert.public_key().raw.to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    Ok(cas)
}

/// The trusted CAs (with their index) whose subject is the same name as
/// `issuer`, by OpenSSL's canonical comparison. Which of them actually
/// issued the thing is for the signature check to say.
fn same_name<'a>(
    cas: &'a [TrustedCa],
    issuer: &'a X509Name<'_>,
) -> impl Iterator<Item = (usize, &'a TrustedCa)> + 'a {
    cas.iter()
        .enumerate()
        .filter(move |(_, ca)| ca.subject.matches(issuer))
}

fn load_crl(path: &Path, cas: &[TrustedCa]) -> Result<CrlState> {
    let stamp = stamp(path)?;
    let text = files::read(path)?;
    let ders = files::pem_blocks(path, &text, "X509 CRL")?;
    if ders.is_empty() {
        return Err(Error::malformed(path, "no X509 CRL PEM block"));
    }
    let mut per_ca: Vec<Option<CaRevocations>> = cas.iter().map(|_| None).collect();
    for der in &ders {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| Error::malformed(path, format!("not a CRL: {e}")))?;
        let named: Vec<(usize, &TrustedCa)> = same_name(cas, crl.issuer()).collect();
        if named.is_empty() {
            return Err(Error::UntrustedCrl {
                path: path.to_path_buf(),
                detail: format!("issuer {} is not a trusted CA", crl.issuer()),
            });
        }
        // The CRL belongs to the CA whose key signed it, whatever its
        // issuer bytes look like.
        let issuers: Vec<usize> = named
            .into_iter()
            .filter(|(_, ca)| ca.key_verifies(|spki| crl.verify_signature(spki).is_ok()))
            .map(|(i, _)| i)
            .collect();
        if issuers.is_empty() {
            return Err(Error::UntrustedCrl {
                path: path.to_path_buf(),
                detail: format!("signature does not verify with the key of {}", crl.issuer()),
            });
        }
        for i in issuers {
            let entry = per_ca[i].get_or_insert_with(CaRevocations::default);
            entry.serials.extend(
                crl.iter_revoked_certificates()
                    .map(|r| r.serial().to_bytes_be()),
            );
            if let Some(next) = crl.next_update() {
                let next = next.timestamp();
                entry.next_update = Some(entry.next_update.map_or(next, |t| t.min(next)));
            }
            if let Some(n) = crl.crl_number() {
                if entry.number.as_ref().is_none_or(|old| n > old) {
                    entry.number = Some(n.clone());
                }
            }
        }
    }
    Ok(CrlState {
        stamp,
        revocations: Revocations { per_ca },
    })
}

/// Why `new` must not replace `old`: a CA's CRL number went backwards, or
/// lost its number (then it cannot be shown to be newer).
fn rollback(cas: &[TrustedCa], old: &Revocations, new: &Revocations) -> Option<String> {
    for (i, (old, new)) in old.per_ca.iter().zip(&new.per_ca).enumerate() {
        let (Some(old), Some(new)) = (old, new) else {
            continue;
        };
        let ca = cas.get(i).map_or("?", |c| c.subject_text.as_str());
        match (&old.number, &new.number) {
            (Some(was), Some(now)) if now < was => {
                return Some(format!(
                    "CRL number {now} of {ca} is lower than the loaded CRL's {was}"
                ))
            }
            (Some(was), None) => {
                return Some(format!(
                    "the CRL of {ca} has no CRL number; the loaded one had {was}"
                ))
            }
            _ => {}
        }
    }
    None
}

impl CrlSource {
    /// Reads the file and takes it into use unless it is refused; counts and
    /// logs the outcome.
    fn reload(&self, cas: &[TrustedCa]) -> Result<()> {
        let outcome = load_crl(&self.path, cas).and_then(|new| {
            let mut state = write(&self.state);
            if let Some(detail) = rollback(cas, &state.revocations, &new.revocations) {
                return Err(Error::CrlRollback {
                    path: self.path.clone(),
                    detail,
                });
            }
            *state = new;
            Ok(())
        });
        match &outcome {
            Ok(()) => {
                self.counters.reloaded.fetch_add(1, Ordering::Relaxed);
                *lock(&self.refused) = None;
                tracing::info!(path = %self.path.display(), "CRL changed; reloaded");
            }
            Err(e) => {
                *lock(&self.refused) = stamp(&self.path).ok();
                if matches!(e, Error::CrlRollback { .. }) {
                    self.counters
                        .refused_rollback
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "refusing a CRL older than the one in use; keeping the loaded revocations");
                } else {
                    self.counters
                        .refused_invalid
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot reload changed CRL; keeping the revocations already loaded");
                }
            }
        }
        outcome
    }
}

fn malformed_cert(detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed {
        field: "certificate",
        detail: detail.into(),
    }
}

fn malformed_sig(detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed {
        field: "signature",
        detail: detail.into(),
    }
}

/// Base64 that may be wrapped (Python's `encodestring` wraps at 76 columns).
fn decode_b64(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// The DER of the certificate in a `certificate` field (base64 of PEM).
fn certificate_der(field: &str) -> std::result::Result<Vec<u8>, VerifyError> {
    let pem = decode_b64(field).map_err(|e| malformed_cert(format!("bad base64: {e}")))?;
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(|b| b.ok())
        .find(|b| b.label == "CERTIFICATE")
        .map(|b| b.contents)
        .ok_or_else(|| malformed_cert("no CERTIFICATE PEM block"))
}

/// The DER of the `TBSCertificate` in a certificate's DER: what the CA
/// signed, so what names the certificate in the cache. A cheap outer parse,
/// done before the cache lookup. Bytes after the certificate are refused:
/// x509-parser would ignore them, so each such variant of a genuine
/// certificate would verify and could be cached as a new one.
fn signed_portion(der: &[u8]) -> std::result::Result<&[u8], VerifyError> {
    use x509_parser::der_parser::asn1_rs::Any;
    let not_x509 = |e| malformed_cert(format!("not an X.509 certificate: {e}"));
    let (rest, certificate) = Any::from_der(der).map_err(not_x509)?;
    refuse_trailing_bytes(rest)?;
    let content = certificate.data;
    let (after, _tbs) = Any::from_der(content).map_err(not_x509)?;
    Ok(&content[..content.len() - after.len()])
}

fn refuse_trailing_bytes(rest: &[u8]) -> std::result::Result<(), VerifyError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(malformed_cert(format!(
            "{} bytes after the certificate",
            rest.len()
        )))
    }
}

/// Chain validation of one certificate: everything that does not depend on
/// the clock or the CRL.
fn validate(cas: &[TrustedCa], der: &[u8]) -> std::result::Result<Validated, VerifyError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| malformed_cert(format!("not an X.509 certificate: {e}")))?;
    refuse_trailing_bytes(rest)?;
    let name = files::common_name(cert.subject())
        .ok_or_else(|| malformed_cert("certificate subject has no CN"))?;

    let named: Vec<(usize, &TrustedCa)> = same_name(cas, cert.issuer()).collect();
    if named.is_empty() {
        return Err(VerifyError::Untrusted(format!(
            "{name:?} was issued by {}, which is not a trusted CA",
            cert.issuer()
        )));
    }
    // Every candidate whose key verifies, not the first: a bundle may hold
    // an expired CA certificate before its renewal (same name and key), and
    // which one the leaf is usable through depends on the time of each call.
    let validity = cert.validity();
    let issuers: Vec<Issuer> = named
        .into_iter()
        .filter(|(_, ca)| ca.key_verifies(|spki| cert.verify_signature(Some(spki)).is_ok()))
        .map(|(index, ca)| Issuer {
            ca: index,
            not_before: validity.not_before.timestamp().max(ca.not_before),
            not_after: validity.not_after.timestamp().min(ca.not_after),
        })
        .collect();
    if issuers.is_empty() {
        return Err(VerifyError::Untrusted(format!(
            "{name:?}: signature does not verify with the key of {}",
            cert.issuer()
        )));
    }

    let spki = cert.public_key();
    let key_bytes = spki.subject_public_key.data.to_vec();
    let key = if spki.algorithm.algorithm == OID_SIG_ED25519 {
        ed25519_key(&key_bytes)
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa))
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&rsa.key_size()) =>
            {
                PublicKey::Unsupported(format!(
                    "{}-bit RSA key (gilmsg verifies {RSA_MIN_BITS} to {RSA_MAX_BITS} bits)",
                    rsa.key_size()
                ))
            }
            _ => PublicKey::Rsa(key_bytes),
        }
    } else {
        PublicKey::Unsupported(format!(
            "algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        ))
    };
    Ok(Validated {
        name,
        issuers,
        serial: cert.serial.to_bytes_be(),
        key,
    })
}

/// A certificate's Ed25519 key, or why no signature by it is accepted: not
/// a point on the curve, or a point of small order (with such a key, one
/// signature verifies for every message, so anyone could forge one).
fn ed25519_key(bytes: &[u8]) -> PublicKey {
    match ed25519_dalek::VerifyingKey::try_from(bytes) {
        Ok(key) if key.is_weak() => {
            PublicKey::Unsupported("an Ed25519 key of small order (weak)".to_owned())
        }
        // A key made the usual way (the secret times the base point) lies in
        // the prime-order subgroup. Under one with a small-order component,
        // the single check refuses most of its holder's own signatures and
        // a batch accepts about 1 in 8 of those: verdicts that depend on
        // which messages arrive together. Refused; checked once per
        // certificate (what a batch still differs on: `verify_many_at`).
        Ok(key) if !key.to_edwards().is_torsion_free() => PublicKey::Unsupported(
            "an Ed25519 key with a small-order component (not in the prime-order subgroup)"
                .to_owned(),
        ),
        Ok(key) => PublicKey::Ed25519(key),
        Err(_) => PublicKey::Unsupported("an Ed25519 key that is not a curve point".to_owned()),
    }
}

/// The issuer through which the certificate is valid at `now` (the first
/// in bundle order), or why there is none: not yet valid if some issuer's
/// window is still ahead, else expired.
fn check_validity(v: &Validated, now: i64) -> std::result::Result<Issuer, VerifyError> {
    if let Some(issuer) = v
        .issuers
        .iter()
        .find(|i| i.not_before <= now && now <= i.not_after)
    {
        return Ok(*issuer);
    }
    if v.issuers.iter().any(|i| now < i.not_before) {
        Err(VerifyError::NotYetValid(v.name.clone()))
    } else {
        Err(VerifyError::Expired(v.name.clone()))
    }
}

impl TrustStore {
    /// Loads the CA certificate(s) from `ca_cert_location` (one or more PEM
    /// certificates) and, if given, the CRL file, which must exist and hold
    /// only CRLs signed by those CAs. With a CRL file, a certificate whose CA
    /// has no CRL in it is refused (OpenSSL's `CRL_CHECK_ALL`): a CA bundle
    /// needs one CRL per CA, concatenated in one file.
    pub fn load(ca_cert_location: &Path, crl_location: Option<&Path>) -> Result<Self> {
        let cas = load_cas(ca_cert_location)?;
        let crl = match crl_location {
            Some(path) => Some(CrlSource {
                state: RwLock::new(load_crl(path, &cas)?),
                path: path.to_path_buf(),
                last_check: Mutex::new(Instant::now()),
                refused: Mutex::new(None),
                counters: CrlCounters::default(),
            }),
            None => None,
        };
        Ok(TrustStore {
            ca_path: ca_cert_location.to_path_buf(),
            cas,
            crl,
            crl_check_interval: DEFAULT_CRL_CHECK_INTERVAL,
            cache: GenerationalCache::new(CACHE_CAPACITY),
            by_text: GenerationalCache::new(TEXT_CACHE_CAPACITY),
            batches_paused: AtomicU32::new(0),
        })
    }

    /// Sets how often, at most, `verify` looks for a changed CRL file
    /// (default [`DEFAULT_CRL_CHECK_INTERVAL`]; zero checks on every call).
    pub fn with_crl_check_interval(mut self, interval: Duration) -> Self {
        self.crl_check_interval = interval;
        self
    }

    /// Sets how many proven certificates are remembered (default
    /// [`CACHE_CAPACITY`]; at least 2). Forgets those already cached.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = GenerationalCache::new(capacity);
        self.by_text = GenerationalCache::new(capacity.min(TEXT_CACHE_CAPACITY));
        self
    }

    /// Re-reads the CRL now, whether or not it changed, and forgets cached
    /// validations. On error (including [`Error::CrlRollback`]: a CA's CRL
    /// number went backwards) the previous CRL stays in force. The CA
    /// certificates are fixed for the store's life: load a new store to
    /// change them.
    pub fn reload(&self) -> Result<()> {
        if let Some(src) = &self.crl {
            src.reload(&self.cas)?;
        }
        self.cache.clear();
        self.by_text.clear();
        Ok(())
    }

    /// Number of certificates currently remembered as proven.
    pub fn cached_certificates(&self) -> usize {
        self.cache.len()
    }

    /// What happened to changed CRL files so far (all zero without a CRL).
    pub fn crl_reload_stats(&self) -> CrlReloadStats {
        self.crl
            .as_ref()
            .map(|src| CrlReloadStats {
                reloaded: src.counters.reloaded.load(Ordering::Relaxed),
                refused_rollback: src.counters.refused_rollback.load(Ordering::Relaxed),
                refused_invalid: src.counters.refused_invalid.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    fn refresh_crl_if_due(&self) {
        let Some(src) = &self.crl else { return };
        match src.last_check.try_lock() {
            Ok(mut last) => {
                if last.elapsed() < self.crl_check_interval {
                    return;
                }
                *last = Instant::now();
            }
            // Someone else is checking right now; their result will do.
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Poisoned(e)) => *e.into_inner() = Instant::now(),
        }
        let current = match stamp(&src.path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot stat CRL; keeping the revocations already loaded");
                return;
            }
        };
        if read(&src.state).stamp == current || *lock(&src.refused) == Some(current) {
            return;
        }
        // Errors are logged and counted by `reload`.
        let _ = src.reload(&self.cas);
    }

    /// Revocation checks of a certificate that passed chain validation, by
    /// the CA that issued it.
    fn check_revocation(
        &self,
        v: &Validated,
        issuer: usize,
        now: i64,
    ) -> std::result::Result<(), VerifyError> {
        let Some(src) = &self.crl else { return Ok(()) };
        let state = read(&src.state);
        let ca = self
            .cas
            .get(issuer)
            .map_or("?", |c| c.subject_text.as_str());
        let Some(crl) = state
            .revocations
            .per_ca
            .get(issuer)
            .and_then(Option::as_ref)
        else {
            return Err(VerifyError::CrlMissing(format!(
                "{:?} was issued by {ca}, and {} has no CRL from it",
                v.name,
                src.path.display()
            )));
        };
        if crl.serials.contains(&v.serial) {
            return Err(VerifyError::Revoked(v.name.clone()));
        }
        if let Some(next) = crl.next_update.filter(|&next| now > next) {
            return Err(VerifyError::CrlExpired(format!(
                "{:?}: the CRL of {ca} in {} expired at {} (nextUpdate); publish a fresh one",
                v.name,
                src.path.display(),
                show_time(next)
            )));
        }
        Ok(())
    }

    /// Checks this process's own identity as its peers will check it: issued
    /// by a trusted CA, within its validity, not revoked, and (with a CRL)
    /// covered by a CRL from its CA. Call it where the identity is loaded, so
    /// that a revoked or expired identity is an error at start rather than a
    /// process whose every message and ACK is refused.
    ///
    /// Errors with [`Error::OwnCertificate`] naming the certificate file;
    /// problems that peers may not share (a stale CRL, which a refreshed
    /// file fixes without a restart; a certificate not yet valid by this
    /// host's clock) are returned as warnings instead.
    pub fn check_identity(&self, identity: &Identity) -> Result<IdentityStanding> {
        self.check_identity_at(identity, SystemTime::now())
    }

    /// [`TrustStore::check_identity`] as of `now`.
    pub fn check_identity_at(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<IdentityStanding> {
        let fail = |reason: VerifyError| Error::OwnCertificate {
            path: identity.certificate_path().to_path_buf(),
            reason,
        };
        self.refresh_crl_if_due();
        let der = certificate_der(gilmsg_proto::Signer::certificate(identity)).map_err(fail)?;
        let v = validate(&self.cas, &der).map_err(fail)?;
        let now = unix_secs(now);
        let mut warnings = Vec::new();
        let issuer = match check_validity(&v, now) {
            Ok(issuer) => issuer.ca,
            Err(VerifyError::NotYetValid(_)) => {
                warnings.push(format!(
                    "{}: certificate of {:?} is not valid before {} (is this host's clock right?)",
                    identity.certificate_path().display(),
                    v.name,
                    show_time(v.not_before())
                ));
                // Not yet valid through any issuer: the first one's CRL
                // still says whether it is revoked.
                v.issuers.first().map_or(usize::MAX, |i| i.ca)
            }
            Err(e) => return Err(fail(e)),
        };
        match self.check_revocation(&v, issuer, now) {
            Ok(()) => {}
            Err(e @ VerifyError::CrlExpired(_)) => warnings.push(e.to_string()),
            Err(e) => return Err(fail(e)),
        }
        if let PublicKey::Unsupported(what) = &v.key {
            warnings.push(format!(
                "{}: gilmsg peers cannot verify this certificate's key: {what}",
                identity.certificate_path().display()
            ));
        }
        Ok(IdentityStanding {
            name: v.name.clone(),
            not_after: crate::pki::to_system_time(v.not_after()),
            warnings,
        })
    }

    /// [`Verifier::verify`] as of `now` rather than the system clock: for
    /// tests, and for auditing archived messages at the time they were sent.
    pub fn verify_at(
        &self,
        scheme: &str,
        certificate: &str,
        signature: &str,
        canonical: &[u8],
        now: SystemTime,
    ) -> std::result::Result<VerifiedSigner, VerifyError> {
        self.refresh_crl_if_due();
        let pending = self.prepare(scheme, certificate, signature, now)?;
        if pending.verifies(canonical) {
            Ok(self.accept(pending, certificate))
        } else {
            Err(VerifyError::BadSignature(pending.v.name.clone()))
        }
    }

    /// [`Verifier::verify_many`] as of `now` rather than the system clock.
    ///
    /// Every certificate is checked as [`TrustStore::verify_at`] checks it;
    /// the Ed25519 signatures among them are then checked together, with
    /// one batch verification (ed25519-dalek's `verify_batch`: about 22 us
    /// a signature for 8 or more, against 40 one at a time). When the batch
    /// fails, each is checked alone, so one bad signature costs the batch,
    /// never a good neighbour's verdict, and the next few calls check one
    /// at a time ([`BATCHES_PAUSED_AFTER_A_FAILURE`]). A batch accepts what a single
    /// check accepts, and one more kind of signature: one whose `R` the
    /// key's holder built with a small-order component or wrote in a
    /// non-canonical encoding (the single check compares `R`'s bytes, the
    /// batch equation only the points' prime-order parts). Only the holder
    /// of the key can build one, so nothing is forged through it; it makes
    /// the verdict on such a signature depend on whether it came in a
    /// burst. Refusing it exactly would cost a scalar multiplication per
    /// signature (about what the batch saves). Keys with a small-order
    /// component, which would make this happen to honest signatures, are
    /// refused at the certificate.
    pub fn verify_many_at(
        &self,
        items: &[SignedItem<'_>],
        now: SystemTime,
    ) -> Vec<std::result::Result<VerifiedSigner, VerifyError>> {
        self.refresh_crl_if_due();
        let pending: Vec<_> = items
            .iter()
            .map(|i| self.prepare(i.scheme, i.certificate, i.signature, now))
            .collect();
        let mut messages = Vec::new();
        let mut signatures = Vec::new();
        let mut keys = Vec::new();
        for (item, pending) in items.iter().zip(&pending) {
            if let Ok(Pending {
                v,
                check: Check::Ed25519(signature),
                ..
            }) = pending
            {
                if let PublicKey::Ed25519(key) = &v.key {
                    messages.push(item.canonical);
                    signatures.push(*signature);
                    keys.push(*key);
                }
            }
        }
        let batch_verified = keys.len() >= 2 && !self.pause_one_batch() && {
            let verified = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
            if !verified {
                self.batches_paused
                    .store(BATCHES_PAUSED_AFTER_A_FAILURE, Ordering::Relaxed);
            }
            verified
        };
        items
            .iter()
            .zip(pending)
            .map(|(item, pending)| {
                let pending = pending?;
                let batched = batch_verified && matches!(pending.check, Check::Ed25519(..));
                if batched || pending.verifies(item.canonical) {
                    Ok(self.accept(pending, item.certificate))
                } else {
                    Err(VerifyError::BadSignature(pending.v.name.clone()))
                }
            })
            .collect()
    }

    /// Whether batches are paused after a failed one (see
    /// [`BATCHES_PAUSED_AFTER_A_FAILURE`]); if so, counts this call as one
    /// of the pause.
    fn pause_one_batch(&self) -> bool {
        self.batches_paused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    /// How many more [`Verifier::verify_many`] calls will check their
    /// signatures one at a time because a batch failed.
    pub fn batches_paused(&self) -> u32 {
        self.batches_paused.load(Ordering::Relaxed)
    }

    /// Everything about a signature but the signature itself: the scheme,
    /// the certificate (its chain, from the caches when it proved itself
    /// before), its validity now and its revocation, and the signature's
    /// encoding.
    fn prepare(
        &self,
        scheme: &str,
        certificate: &str,
        signature: &str,
        now: SystemTime,
    ) -> std::result::Result<Pending, VerifyError> {
        if scheme != SCHEME_ED25519 && scheme != SCHEME_X509 {
            return Err(VerifyError::UnknownScheme(scheme.to_owned()));
        }
        // `Some(key)` when the certificate came the long way and its text
        // is to be remembered once the signature verifies; `fresh` when its
        // chain was validated just now.
        let (v, long_way, fresh) = match self.by_text.get(certificate) {
            Some(v) => (v, None, false),
            None => {
                let der = certificate_der(certificate)?;
                let key = Digest::of_bytes(signed_portion(&der)?);
                match self.cache.get(&key) {
                    Some(v) => (v, Some(key), false),
                    // Failures are not cached: they are cheap to recompute
                    // and caching them would let junk evict good entries.
                    None => (Arc::new(validate(&self.cas, &der)?), Some(key), true),
                }
            }
        };

        let now = unix_secs(now);
        let issuer = check_validity(&v, now)?;
        self.check_revocation(&v, issuer.ca, now)?;

        let sig = decode_b64(signature).map_err(|e| malformed_sig(format!("bad base64: {e}")))?;
        let check = match (scheme, &v.key) {
            (SCHEME_ED25519, PublicKey::Ed25519(_)) => {
                let sig = <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| {
                    malformed_sig(format!("Ed25519 signature is {} bytes, not 64", sig.len()))
                })?;
                Check::Ed25519(ed25519_dalek::Signature::from_bytes(&sig))
            }
            (SCHEME_X509, PublicKey::Rsa(_)) => Check::Rsa(sig),
            (_, PublicKey::Unsupported(what)) => {
                return Err(malformed_cert(format!("unsupported public key: {what}")))
            }
            // The scheme and the certificate's key kind disagree: no
            // signature can be valid.
            _ => Check::Mismatch,
        };
        Ok(Pending {
            v,
            long_way,
            fresh,
            check,
        })
    }

    /// A signature that verified: its certificate is remembered (only now
    /// has it proved itself: a forged message carrying someone's
    /// certificate never gets it cached), and its signer named.
    fn accept(&self, pending: Pending, certificate: &str) -> VerifiedSigner {
        if let Some(key) = pending.long_way {
            if pending.fresh {
                self.cache.insert(key, Arc::clone(&pending.v));
            }
            self.by_text
                .insert(certificate.to_owned(), Arc::clone(&pending.v));
        }
        VerifiedSigner {
            name: pending.v.name.clone(),
        }
    }
}

/// A signature whose certificate checked out, not yet checked itself.
struct Pending {
    v: Arc<Validated>,
    /// The certificate's cache key, when it came the long way.
    long_way: Option<Digest>,
    /// Whether its chain was validated just now.
    fresh: bool,
    check: Check,
}

/// The one check left: the signature, by the certificate's key.
enum Check {
    /// Ed25519 (the certificate's key is Ed25519).
    Ed25519(ed25519_dalek::Signature),
    /// RSA-SHA1, fedmsg's `x509` (the certificate's key is RSA).
    Rsa(Vec<u8>),
    /// The scheme and the key's kind disagree: nothing verifies.
    Mismatch,
}

impl Pending {
    /// Whether the signature is good over `canonical`, checked alone.
    fn verifies(&self, canonical: &[u8]) -> bool {
        match (&self.check, &self.v.key) {
            (Check::Ed25519(signature), PublicKey::Ed25519(key)) => {
                ed25519_dalek::Verifier::verify(key, canonical, signature).is_ok()
            }
            (Check::Rsa(signature), PublicKey::Rsa(key)) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, key)
                    .verify(canonical, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

impl Verifier for TrustStore {
    fn verify(
        &self,
        scheme: &str,
        certificate: &str,
        signature: &str,
        canonical: &[u8],
    ) -> std::result::Result<VerifiedSigner, VerifyError> {
        self.verify_at(scheme, certificate, signature, canonical, SystemTime::now())
    }

    fn verify_many(
        &self,
        items: &[SignedItem<'_>],
    ) -> Vec<std::result::Result<VerifiedSigner, VerifyError>> {
        self.verify_many_at(items, SystemTime::now())
    }
}
