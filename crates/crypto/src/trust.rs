//! Deciding whether a message's `certificate` and `signature` fields are
//! acceptable: the trusted CA(s), the CRL, and a cache of certificates that
//! already passed chain validation. Implements `gilmsg_proto::Verifier`.
//!
//! Cost model: a consumer sees the same few certificates thousands of times a
//! second. Chain validation (base64, PEM, X.509 parse, CA signature check) is
//! done once per distinct `certificate` field and remembered, with the parsed
//! public key; what can change between messages (the clock, the CRL) is
//! checked on every call. The CRL file is re-read when its mtime or size
//! changes, looked at no more than once per [`DEFAULT_CRL_CHECK_INTERVAL`].
//!
//! Compatibility with fedmsg's `x509` validator (pyOpenSSL's `X509Store` with
//! `CRL_CHECK | CRL_CHECK_ALL`), and where we differ:
//!
//! - Signatures and certificates may be base64 wrapped at 76 columns (as
//!   fedmsg writes them) or not; whitespace is ignored.
//! - The leaf must be issued directly by a trusted CA: no intermediates, as
//!   in fedmsg. fedmsg uses only the *first* certificate of
//!   `ca_cert_location`; we trust every certificate in the file, which is
//!   the same for the usual one-CA file.
//! - A CRL whose `nextUpdate` has passed makes every certificate of its
//!   issuer untrusted until the file is refreshed, as OpenSSL's "CRL has
//!   expired" does in fedmsg.
//! - RSA is verified with ring, which takes 2048 to 8192-bit keys only: an
//!   RSA-1024 certificate that Python fedmsg accepts is refused here (as a
//!   malformed certificate naming the key size).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use gilmsg_proto::{VerifiedSigner, Verifier, VerifyError};
use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY};
use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Version};

use crate::error::{Error, Result};
use crate::files;
use crate::identity::{SCHEME_ED25519, SCHEME_X509};

/// How many validated certificates are remembered. A bus has far fewer
/// identities than this; the bound only stops a flood of distinct (valid)
/// certificates from growing memory without limit.
pub const CACHE_CAPACITY: usize = 4096;

/// How often, at most, `verify` looks at the CRL file's mtime.
pub const DEFAULT_CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// RSA modulus sizes ring's PKCS#1 verifier accepts.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// One trust anchor.
struct TrustedCa {
    subject_raw: Vec<u8>,
    subject_text: String,
    spki_raw: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

/// The public key of a validated certificate, ready for ring.
enum PublicKey {
    Ed25519(Vec<u8>),
    /// DER `RSAPublicKey`, as ring's RSA verifiers take it.
    Rsa(Vec<u8>),
    Unsupported(String),
}

/// What chain validation established about one `certificate` field.
struct Validated {
    name: String,
    issuer_raw: Vec<u8>,
    serial: Vec<u8>,
    /// Intersection of the certificate's and its CA's validity, in Unix
    /// seconds: an expired CA makes its certificates unusable too.
    not_before: i64,
    not_after: i64,
    key: PublicKey,
}

/// Revoked serials per issuer (raw DER name), from every CRL in the file,
/// and when each issuer's CRL stops being valid.
#[derive(Default)]
struct Revocations {
    by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// Earliest `nextUpdate` (Unix seconds) among the issuer's CRLs; absent
    /// when none of them has one.
    next_update: HashMap<Vec<u8>, i64>,
}

impl Revocations {
    fn contains(&self, issuer_raw: &[u8], serial: &[u8]) -> bool {
        self.by_issuer
            .get(issuer_raw)
            .is_some_and(|s| s.contains(serial))
    }

    fn expired_at(&self, issuer_raw: &[u8], now: i64) -> Option<i64> {
        self.next_update
            .get(issuer_raw)
            .copied()
            .filter(|&next| now > next)
    }
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

struct CrlSource {
    path: PathBuf,
    state: RwLock<CrlState>,
    last_check: Mutex<Instant>,
}

/// The CA certificate(s) and CRL that decide which certificates are trusted.
///
/// Cheap to share (`Arc<TrustStore>`); all methods take `&self`.
pub struct TrustStore {
    ca_path: PathBuf,
    cas: Vec<TrustedCa>,
    crl: Option<CrlSource>,
    crl_check_interval: Duration,
    cache: RwLock<HashMap<[u8; 32], Arc<Validated>>>,
}

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

// Locks only ever guard whole values that are replaced at once, so a panic
// elsewhere cannot leave them half-updated: poisoning is safe to ignore.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
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
            subject_raw: cert.subject().as_raw().to_vec(),
            subject_text: cert.subject().to_string(),
            spki_raw: cert.public_key().raw.to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    Ok(cas)
}

/// The trusted CAs that may have issued something whose issuer is `issuer`.
/// Exact DER match first; then by text, because some tools re-encode names
/// (PrintableString vs UTF8String) and the signature check decides anyway.
fn candidate_cas<'a>(
    cas: &'a [TrustedCa],
    issuer: &x509_parser::x509::X509Name<'_>,
) -> Vec<&'a TrustedCa> {
    let exact: Vec<_> = cas
        .iter()
        .filter(|c| c.subject_raw == issuer.as_raw())
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    let text = issuer.to_string();
    cas.iter().filter(|c| c.subject_text == text).collect()
}

fn load_crl(path: &Path, cas: &[TrustedCa]) -> Result<CrlState> {
    let stamp = stamp(path)?;
    let text = files::read(path)?;
    let ders = files::pem_blocks(path, &text, "X509 CRL")?;
    if ders.is_empty() {
        return Err(Error::malformed(path, "no X509 CRL PEM block"));
    }
    let mut revocations = Revocations::default();
    for der in &ders {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| Error::malformed(path, format!("not a CRL: {e}")))?;
        let candidates = candidate_cas(cas, crl.issuer());
        if candidates.is_empty() {
            return Err(Error::UntrustedCrl {
                path: path.to_path_buf(),
                detail: format!("issuer {} is not a trusted CA", crl.issuer()),
            });
        }
        let signed = candidates.iter().any(|ca| {
            SubjectPublicKeyInfo::from_der(&ca.spki_raw)
                .is_ok_and(|(_, spki)| crl.verify_signature(&spki).is_ok())
        });
        if !signed {
            return Err(Error::UntrustedCrl {
                path: path.to_path_buf(),
                detail: format!("signature does not verify with the key of {}", crl.issuer()),
            });
        }
        if let Some(next) = crl.next_update() {
            let next = next.timestamp();
            revocations
                .next_update
                .entry(crl.issuer().as_raw().to_vec())
                .and_modify(|t| *t = (*t).min(next))
                .or_insert(next);
        }
        let serials = revocations
            .by_issuer
            .entry(crl.issuer().as_raw().to_vec())
            .or_default();
        serials.extend(
            crl.iter_revoked_certificates()
                .map(|r| r.serial().to_bytes_be()),
        );
    }
    Ok(CrlState { stamp, revocations })
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

/// Chain validation of one `certificate` field: everything that does not
/// depend on the clock or the CRL.
fn validate(cas: &[TrustedCa], field: &str) -> std::result::Result<Validated, VerifyError> {
    let pem = decode_b64(field).map_err(|e| malformed_cert(format!("bad base64: {e}")))?;
    let der = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(|b| b.ok())
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| malformed_cert("no CERTIFICATE PEM block"))?
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| malformed_cert(format!("not an X.509 certificate: {e}")))?;
    let name = files::common_name(cert.subject())
        .ok_or_else(|| malformed_cert("certificate subject has no CN"))?;

    let candidates = candidate_cas(cas, cert.issuer());
    if candidates.is_empty() {
        return Err(VerifyError::Untrusted(format!(
            "{name:?} was issued by {}, which is not a trusted CA",
            cert.issuer()
        )));
    }
    let ca = candidates
        .into_iter()
        .find(|ca| {
            SubjectPublicKeyInfo::from_der(&ca.spki_raw)
                .is_ok_and(|(_, spki)| cert.verify_signature(Some(&spki)).is_ok())
        })
        .ok_or_else(|| {
            VerifyError::Untrusted(format!(
                "{name:?}: signature does not verify with the key of {}",
                cert.issuer()
            ))
        })?;

    let spki = cert.public_key();
    let key_bytes = spki.subject_public_key.data.to_vec();
    let key = if spki.algorithm.algorithm == OID_SIG_ED25519 {
        PublicKey::Ed25519(key_bytes)
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
    let validity = cert.validity();
    Ok(Validated {
        name,
        issuer_raw: cert.issuer().as_raw().to_vec(),
        serial: cert.serial.to_bytes_be(),
        not_before: validity.not_before.timestamp().max(ca.not_before),
        not_after: validity.not_after.timestamp().min(ca.not_after),
        key,
    })
}

impl TrustStore {
    /// Loads the CA certificate(s) from `ca_cert_location` (one or more PEM
    /// certificates) and, if given, the CRL, which must exist and be signed by
    /// one of those CAs.
    pub fn load(ca_cert_location: &Path, crl_location: Option<&Path>) -> Result<Self> {
        let cas = load_cas(ca_cert_location)?;
        let crl = match crl_location {
            Some(path) => Some(CrlSource {
                state: RwLock::new(load_crl(path, &cas)?),
                path: path.to_path_buf(),
                last_check: Mutex::new(Instant::now()),
            }),
            None => None,
        };
        Ok(TrustStore {
            ca_path: ca_cert_location.to_path_buf(),
            cas,
            crl,
            crl_check_interval: DEFAULT_CRL_CHECK_INTERVAL,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Sets how often, at most, `verify` looks for a changed CRL file
    /// (default [`DEFAULT_CRL_CHECK_INTERVAL`]; zero checks on every call).
    pub fn with_crl_check_interval(mut self, interval: Duration) -> Self {
        self.crl_check_interval = interval;
        self
    }

    /// Re-reads the CRL now, whether or not it changed, and forgets cached
    /// validations. On error the previous CRL stays in force. The CA
    /// certificates are fixed for the store's life: load a new store to
    /// change them.
    pub fn reload(&self) -> Result<()> {
        if let Some(src) = &self.crl {
            let state = load_crl(&src.path, &self.cas)?;
            *write(&src.state) = state;
        }
        write(&self.cache).clear();
        Ok(())
    }

    /// Number of certificates currently remembered as validated.
    pub fn cached_certificates(&self) -> usize {
        read(&self.cache).len()
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
        if read(&src.state).stamp == current {
            return;
        }
        match load_crl(&src.path, &self.cas) {
            Ok(state) => {
                tracing::info!(path = %src.path.display(), "CRL changed; reloaded");
                *write(&src.state) = state;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload changed CRL; keeping the revocations already loaded");
            }
        }
    }

    fn validated(&self, certificate: &str) -> std::result::Result<Arc<Validated>, VerifyError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(v) = read(&self.cache).get(&key) {
            return Ok(Arc::clone(v));
        }
        // Failures are not cached: they are cheap to recompute and caching
        // them would let junk evict good entries.
        let v = Arc::new(validate(&self.cas, certificate)?);
        let mut cache = write(&self.cache);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&v));
        Ok(v)
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
        if scheme != SCHEME_ED25519 && scheme != SCHEME_X509 {
            return Err(VerifyError::UnknownScheme(scheme.to_owned()));
        }
        self.refresh_crl_if_due();
        let v = self.validated(certificate)?;

        let now = unix_secs(now);
        if now < v.not_before {
            return Err(VerifyError::NotYetValid(v.name.clone()));
        }
        if now > v.not_after {
            return Err(VerifyError::Expired(v.name.clone()));
        }
        if let Some(src) = &self.crl {
            let state = read(&src.state);
            if state.revocations.contains(&v.issuer_raw, &v.serial) {
                return Err(VerifyError::Revoked(v.name.clone()));
            }
            if let Some(next) = state.revocations.expired_at(&v.issuer_raw, now) {
                let when = time::OffsetDateTime::from_unix_timestamp(next)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| next.to_string());
                return Err(VerifyError::Untrusted(format!(
                    "{:?}: the CRL {} expired at {when} (nextUpdate); publish a fresh one",
                    v.name,
                    src.path.display()
                )));
            }
        }

        let sig = decode_b64(signature).map_err(|e| malformed_sig(format!("bad base64: {e}")))?;
        let ok = match (scheme, &v.key) {
            (SCHEME_ED25519, PublicKey::Ed25519(pk)) => {
                if sig.len() != 64 {
                    return Err(malformed_sig(format!(
                        "Ed25519 signature is {} bytes, not 64",
                        sig.len()
                    )));
                }
                UnparsedPublicKey::new(&ED25519, pk)
                    .verify(canonical, &sig)
                    .is_ok()
            }
            (SCHEME_X509, PublicKey::Rsa(pk)) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, pk)
                    .verify(canonical, &sig)
                    .is_ok()
            }
            (_, PublicKey::Unsupported(what)) => {
                return Err(malformed_cert(format!("unsupported public key: {what}")))
            }
            // The scheme and the certificate's key kind disagree: no
            // signature can be valid.
            _ => false,
        };
        if ok {
            Ok(VerifiedSigner {
                name: v.name.clone(),
            })
        } else {
            Err(VerifyError::BadSignature(v.name.clone()))
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
}
