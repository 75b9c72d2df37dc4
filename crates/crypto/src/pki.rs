//! The bus's certificate authority on disk: creating it, issuing and revoking
//! identities, listing them.
//!
//! Layout of the PKI directory (fedmsg's `ssldir`):
//!
//! | file          | what                                           | mode |
//! |---------------|------------------------------------------------|------|
//! | `ca.crt`      | self-signed CA certificate (Ed25519)           | 0644 |
//! | `ca.key`      | CA private key, PKCS#8 PEM                     | 0600 |
//! | `crl.pem`     | CRL signed by the CA                           | 0644 |
//! | `<name>.crt`  | identity certificate, CN = name                | 0644 |
//! | `<name>.key`  | identity private key, PKCS#8 PEM               | 0600 |
//!
//! Certificates and CRLs are produced by `rcgen`; the CA is rebuilt from
//! `ca.crt` + `ca.key` for every operation, so its subject and key identifier
//! (and hence issued certificates' issuer name and AKI) come from the file.
//!
//! The CRL is short-lived on purpose: its `nextUpdate` is [`CrlOptions`]'
//! `validity` from now (default [`DEFAULT_CRL_VALIDITY`], 7 days), not the
//! CA's lifetime, so that a host that stops receiving CRL updates starts
//! refusing (a stale CRL makes verifiers refuse every certificate of the CA)
//! instead of trusting a revoked identity forever. [`refresh_crl`] re-signs
//! the same list with a new number and `nextUpdate`; run it from a timer
//! well within the validity (see `docs/running-a-bus.md`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, PKCS_ED25519,
};
use ring::rand::SecureRandom as _;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::files;

/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA private key inside the PKI directory.
pub const CA_KEY: &str = "ca.key";
/// File name of the CRL inside the PKI directory.
pub const CRL: &str = "crl.pem";

const DAY: Duration = Duration::from_secs(86_400);

/// How long a CRL written by this module is valid (its `nextUpdate`) unless
/// [`CrlOptions`] says otherwise.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// How to sign a CRL.
#[derive(Debug, Clone)]
pub struct CrlOptions {
    /// From now until its `nextUpdate`: verifiers refuse every certificate
    /// of the CA once it has passed, so re-issue (`refresh_crl`) well before.
    pub validity: Duration,
}

impl Default for CrlOptions {
    fn default() -> Self {
        CrlOptions {
            validity: DEFAULT_CRL_VALIDITY,
        }
    }
}

/// How to create a CA.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The CA certificate's CN.
    pub ca_name: String,
    /// How long the CA certificate lasts from now. (The first CRL's
    /// `nextUpdate` comes from [`CrlOptions`], see [`init_with_crl`].)
    pub validity: Duration,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            ca_name: "gilmsg CA".to_owned(),
            validity: 10 * 365 * DAY,
        }
    }
}

/// How to issue an identity certificate.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Overwrite an existing `<name>.key`/`<name>.crt` (the old certificate is
    /// not revoked; do that first if it may have leaked).
    pub replace: bool,
}

impl IssueOptions {
    /// Valid from a few minutes ago (to absorb clock skew between hosts) for
    /// `validity` from now.
    pub fn valid_for(validity: Duration) -> Self {
        let now = SystemTime::now();
        IssueOptions {
            not_before: now - Duration::from_secs(300),
            not_after: now + validity,
            replace: false,
        }
    }
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions::valid_for(365 * DAY)
    }
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// `ca.crt`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `crl.pem`.
    pub crl: PathBuf,
    /// The CRL's `nextUpdate`.
    pub crl_next_update: SystemTime,
}

/// What `issue` wrote.
#[derive(Debug, Clone)]
pub struct IssueReport {
    /// `<name>.crt`.
    pub cert: PathBuf,
    /// `<name>.key`.
    pub key: PathBuf,
    /// The new certificate's serial, lowercase hex.
    pub serial: String,
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub struct RevokeReport {
    /// The rewritten `crl.pem`.
    pub crl: PathBuf,
    /// The revoked certificate's serial, lowercase hex.
    pub serial: String,
    /// The new CRL's number.
    pub crl_number: u64,
    /// False if the serial was already on the CRL (the CRL is re-signed anyway).
    pub newly_revoked: bool,
    /// The new CRL's `nextUpdate`.
    pub next_update: SystemTime,
}

/// What `refresh_crl` wrote.
#[derive(Debug, Clone)]
pub struct CrlReport {
    /// The rewritten `crl.pem`.
    pub crl: PathBuf,
    /// The new CRL's number (the previous one plus one).
    pub crl_number: u64,
    /// The new CRL's `nextUpdate`.
    pub next_update: SystemTime,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// The CRL as `crl_status` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlStatus {
    /// Its CRL number (0 if it has none).
    pub crl_number: u64,
    /// Its `thisUpdate`.
    pub this_update: SystemTime,
    /// Its `nextUpdate`, if any; past it, verifiers refuse every certificate
    /// of the CA.
    pub next_update: Option<SystemTime>,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// One issued identity, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The identity name (the file stem, which is also the CN).
    pub name: String,
    /// The certificate's serial, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether the serial is on the CRL.
    pub revoked: bool,
}

/// Checks that `name` can safely be a file name and a CN: letters, digits,
/// `.`, `-`, `_`, at most 64 characters (the X.520 limit for a CN), not
/// starting with `.` or `-` (hidden files, option-like arguments), and not a
/// name the CA's own files use.
pub fn validate_name(dir: &Path, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !name.starts_with(['.', '-'])
        && name != "ca"
        && name != "crl";
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        })
    }
}

fn to_offset(path: &Path, t: SystemTime) -> Result<OffsetDateTime> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| Error::generate(path, "time out of range"))
}

pub(crate) fn to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// 128 random bits, high bit clear so the DER INTEGER stays positive and
/// within RFC 5280's 20 octets.
fn random_serial(path: &Path) -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::generate(path, "system random number generator failed"))?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be stripped in DER; keep the length fixed.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn new_key(path: &Path) -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ED25519).map_err(|e| Error::generate(path, e))
}

fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| Error::io(dir, e))
}

/// Creates the PKI directory (mode 0700) with a new Ed25519 CA and an empty
/// CRL valid for [`DEFAULT_CRL_VALIDITY`]. Refuses if `ca.key` already
/// exists.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<InitReport> {
    init_with_crl(dir, opts, &CrlOptions::default())
}

/// [`init`] with the first CRL signed as `crl` says.
pub fn init_with_crl(dir: &Path, opts: &InitOptions, crl: &CrlOptions) -> Result<InitReport> {
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    let crl_path = dir.join(CRL);
    create_dir(dir)?;
    if key_path.exists() {
        return Err(Error::AlreadyExists { path: key_path });
    }
    let now = SystemTime::now();
    let key = new_key(&key_path)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, opts.ca_name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(&cert_path, now - Duration::from_secs(300))?;
    params.not_after = to_offset(&cert_path, now + opts.validity)?;
    params.serial_number = Some(random_serial(&cert_path)?);
    params.key_identifier_method = KeyIdMethod::Sha256;
    let ca = params
        .self_signed(&key)
        .map_err(|e| Error::generate(&cert_path, e))?;

    // The key goes first, with create_new: it is the lock against a
    // concurrent init.
    files::write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    files::write_replace(&cert_path, ca.pem().as_bytes(), 0o644)?;
    let (pem, crl_next_update) = sign_crl(&crl_path, &ca, &key, 1, Vec::new(), crl)?;
    files::write_replace(&crl_path, pem.as_bytes(), 0o644)?;
    Ok(InitReport {
        ca_cert: cert_path,
        ca_key: key_path,
        crl: crl_path,
        crl_next_update,
    })
}

/// The CA as an rcgen issuer, rebuilt from its files.
struct Ca {
    cert: Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
    /// `ca.crt` as it is on disk, to check the existing CRL's signature.
    der: Vec<u8>,
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    files::check_private(&key_path)?;
    let key_pem = files::read_string(&key_path)?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| Error::malformed(&key_path, format!("not a usable private key: {e}")))?;
    let der = files::read_cert_der(&cert_path)?;
    let parsed = files::parse_cert(&cert_path, &der)?;
    if parsed.public_key().raw != key.public_key_der().as_slice() {
        return Err(Error::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    let not_after = parsed.validity().not_after.to_datetime();
    let params = CertificateParams::from_ca_cert_der(&der.as_slice().into())
        .map_err(|e| Error::malformed(&cert_path, format!("not a usable CA certificate: {e}")))?;
    // Re-signing only rebuilds an issuer handle: rcgen takes the issuer's DN
    // and key identifier from `params`, which came from ca.crt.
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::generate(&cert_path, e))?;
    Ok(Ca {
        cert,
        key,
        not_after,
        der,
    })
}

/// Signs a CRL valid from now for `opts.validity`; returns its PEM and its
/// `nextUpdate`.
fn sign_crl(
    path: &Path,
    ca: &Certificate,
    ca_key: &KeyPair,
    number: u64,
    revoked: Vec<RevokedCertParams>,
    opts: &CrlOptions,
) -> Result<(String, SystemTime)> {
    let now = OffsetDateTime::now_utc();
    let next = time::Duration::try_from(opts.validity)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|next| *next > now)
        .ok_or_else(|| {
            Error::generate(
                path,
                format!("CRL validity {:?} is out of range", opts.validity),
            )
        })?;
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: next,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: ca.params().key_identifier_method.clone(),
    };
    let pem = params
        .signed_by(ca, ca_key)
        .and_then(|crl| crl.pem())
        .map_err(|e| Error::generate(path, e))?;
    Ok((pem, to_system_time(next.unix_timestamp())))
}

fn cert_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    )
}

/// Issues `<name>.key` + `<name>.crt`, signed by the CA in `dir`.
pub fn issue(dir: &Path, name: &str, opts: &IssueOptions) -> Result<IssueReport> {
    validate_name(dir, name)?;
    let ca = load_ca(dir)?;
    let (key_path, cert_path) = cert_paths(dir, name);
    if !opts.replace {
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return Err(Error::AlreadyExists { path: p.clone() });
            }
        }
    }
    let key = new_key(&key_path)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = to_offset(&cert_path, opts.not_before)?;
    params.not_after = to_offset(&cert_path, opts.not_after)?;
    let serial = random_serial(&cert_path)?;
    let serial_hex = files::serial_hex(serial.as_ref());
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    if params.not_after > ca.not_after {
        tracing::warn!(
            name,
            "certificate outlives the CA; it stops verifying when the CA expires"
        );
    }
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(|e| Error::generate(&cert_path, e))?;

    if opts.replace {
        files::write_replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    } else {
        files::write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    }
    files::write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(IssueReport {
        cert: cert_path,
        key: key_path,
        serial: serial_hex,
    })
}

struct CrlContents {
    number: u64,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    revoked: Vec<RevokedCertParams>,
}

/// Reads the CRL in `path`, which must be signed by the CA whose
/// certificate is `ca_der`: its entries are about to be re-signed, and a
/// list edited by someone else must not be blessed.
fn read_crl(path: &Path, ca_der: &[u8]) -> Result<CrlContents> {
    let text = files::read(path)?;
    let ders = files::pem_blocks(path, &text, "X509 CRL")?;
    let der = ders
        .first()
        .ok_or_else(|| Error::malformed(path, "no X509 CRL PEM block"))?;
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| Error::malformed(path, format!("not a CRL: {e}")))?;
    let ca = files::parse_cert(path, ca_der)?;
    if crl.verify_signature(ca.public_key()).is_err() {
        return Err(Error::UntrustedCrl {
            path: path.to_path_buf(),
            detail: format!("signature does not verify with the key of {}", ca.subject()),
        });
    }
    let number = match crl.crl_number() {
        Some(n) => u64::try_from(n)
            .map_err(|_| Error::malformed(path, "CRL number does not fit in 64 bits"))?,
        None => 0,
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&r.serial().to_bytes_be()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok(CrlContents {
        number,
        this_update: to_system_time(crl.last_update().timestamp()),
        next_update: crl.next_update().map(|t| to_system_time(t.timestamp())),
        revoked,
    })
}

fn revoked_serials(path: &Path, ca_der: &[u8]) -> Result<HashSet<String>> {
    let crl = read_crl(path, ca_der)?;
    Ok(crl
        .revoked
        .iter()
        .map(|r| files::serial_hex(r.serial_number.as_ref()))
        .collect())
}

/// Adds `<name>.crt`'s serial to the CRL and rewrites `crl.pem`, signed by
/// the CA, with the CRL number increased and a `nextUpdate`
/// [`DEFAULT_CRL_VALIDITY`] from now.
pub fn revoke(dir: &Path, name: &str) -> Result<RevokeReport> {
    revoke_with(dir, name, &CrlOptions::default())
}

/// [`revoke`], with the new CRL signed as `opts` says.
pub fn revoke_with(dir: &Path, name: &str, opts: &CrlOptions) -> Result<RevokeReport> {
    validate_name(dir, name)?;
    let ca = load_ca(dir)?;
    let (_, cert_path) = cert_paths(dir, name);
    let der = files::read_cert_der(&cert_path)?;
    let cert = files::parse_cert(&cert_path, &der)?;
    let serial_bytes = cert.serial.to_bytes_be();
    let serial = files::serial_hex(&serial_bytes);

    let crl_path = dir.join(CRL);
    let existing = match read_crl(&crl_path, &ca.der) {
        Ok(c) => c,
        // A lost CRL is recreated rather than blocking an urgent revocation.
        Err(Error::NotFound { .. }) => CrlContents {
            number: 0,
            this_update: SystemTime::UNIX_EPOCH,
            next_update: None,
            revoked: Vec::new(),
        },
        Err(e) => return Err(e),
    };
    let mut revoked = existing.revoked;
    let newly_revoked = !revoked
        .iter()
        .any(|r| files::serial_hex(r.serial_number.as_ref()) == serial);
    if newly_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial_bytes),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl_number = existing.number.saturating_add(1);
    let (pem, next_update) = sign_crl(&crl_path, &ca.cert, &ca.key, crl_number, revoked, opts)?;
    files::write_replace(&crl_path, pem.as_bytes(), 0o644)?;
    Ok(RevokeReport {
        crl: crl_path,
        serial,
        crl_number,
        newly_revoked,
        next_update,
    })
}

/// Re-signs `crl.pem` with the same revoked certificates, the CRL number
/// increased and a `nextUpdate` `opts.validity` from now. Run it on a timer
/// well within the validity: verifiers refuse every certificate of a CA
/// whose CRL has passed its `nextUpdate`. The existing CRL must be there and
/// signed by the CA (a missing one is an error here, not silently an empty
/// list).
pub fn refresh_crl(dir: &Path, opts: &CrlOptions) -> Result<CrlReport> {
    let ca = load_ca(dir)?;
    let crl_path = dir.join(CRL);
    let existing = read_crl(&crl_path, &ca.der)?;
    let revoked = existing.revoked.len();
    let crl_number = existing.number.saturating_add(1);
    let (pem, next_update) = sign_crl(
        &crl_path,
        &ca.cert,
        &ca.key,
        crl_number,
        existing.revoked,
        opts,
    )?;
    files::write_replace(&crl_path, pem.as_bytes(), 0o644)?;
    Ok(CrlReport {
        crl: crl_path,
        crl_number,
        next_update,
        revoked,
    })
}

/// The CRL's number, dates and size, checked against `ca.crt` (only the
/// CA certificate is needed, not its key).
pub fn crl_status(dir: &Path) -> Result<CrlStatus> {
    let ca_der = files::read_cert_der(&dir.join(CA_CERT))?;
    let crl = read_crl(&dir.join(CRL), &ca_der)?;
    Ok(CrlStatus {
        crl_number: crl.number,
        this_update: crl.this_update,
        next_update: crl.next_update,
        revoked: crl.revoked.len(),
    })
}

/// Every issued identity in `dir`, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<CertInfo>> {
    let crl_path = dir.join(CRL);
    let ca_der = files::read_cert_der(&dir.join(CA_CERT))?;
    let revoked = match revoked_serials(&crl_path, &ca_der) {
        Ok(s) => s,
        Err(Error::NotFound { .. }) => HashSet::new(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".crt"))
        else {
            continue;
        };
        if name == "ca" {
            continue;
        }
        let der = files::read_cert_der(&path)?;
        let cert = files::parse_cert(&path, &der)?;
        let serial = files::serial_hex(&cert.serial.to_bytes_be());
        out.push(CertInfo {
            name: name.to_owned(),
            revoked: revoked.contains(&serial),
            serial,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
