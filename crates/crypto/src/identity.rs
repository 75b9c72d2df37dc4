//! A signing identity: a private key plus the CA-issued certificate that names
//! it, implementing `gilmsg_proto::Signer`.
//!
//! Key kinds sit behind the private [`SigningKey`] enum, one scheme each:
//!
//! - Ed25519 keys sign the native `"ed25519"` scheme (ring).
//! - RSA keys sign fedmsg's `"x509"` scheme: RSA PKCS#1 v1.5 over SHA-1 of the
//!   canonical JSON, exactly as fedmsg 1.1.7's `x509_ng.sign` does
//!   (`rsa_private.sign(data, PKCS1v15(), SHA1())`). ring cannot *sign* with
//!   SHA-1, so this one operation goes through the system OpenSSL (`openssl`
//!   crate). PKCS#1 v1.5 is deterministic: the same key and bytes give the
//!   same signature as Python, byte for byte.
//!
//! For `"x509"` both fields are written as fedmsg writes them: `signature` is
//! base64 of the raw signature and `certificate` is base64 of the
//! certificate's canonical PEM text, each wrapped at 76 columns with `\n`
//! and a trailing `\n` (Python's `base64.encodebytes`).
//!
//! RSA keys below 2048 bits still sign (fedmsg accepts them, and so do
//! Python validators), but gilmsg's own [`TrustStore`](crate::TrustStore)
//! verifies RSA with ring, which only takes 2048 to 8192-bit keys: Rust peers
//! would reject every message. Loading such a key logs a warning.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use gilmsg_proto::{SignError, Signer};
#[cfg(feature = "x509-sign")]
use openssl::hash::MessageDigest;
#[cfg(feature = "x509-sign")]
use openssl::pkey::{PKey, Private};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};

use crate::error::{Error, Result};
use crate::files;

/// The `crypto` field value of the native scheme.
pub const SCHEME_ED25519: &str = "ed25519";
/// The `crypto` field value of fedmsg's RSA/X.509 scheme.
pub const SCHEME_X509: &str = "x509";

/// The smallest RSA modulus gilmsg's verifier (ring) accepts.
#[cfg(feature = "x509-sign")]
const RSA_MIN_VERIFIABLE_BITS: u32 = 2048;

/// The private half, by kind. Each variant knows its scheme name and how to
/// produce the `signature` field.
enum SigningKey {
    Ed25519(Ed25519KeyPair),
    /// An RSA key, scheme `"x509"`.
    #[cfg(feature = "x509-sign")]
    Rsa(PKey<Private>),
}

/// A private key as found in a PEM file, before we know what it is for.
#[cfg_attr(not(feature = "x509-sign"), allow(dead_code))]
enum KeyDer {
    /// `BEGIN PRIVATE KEY`: PKCS#8, any algorithm.
    Pkcs8(Vec<u8>),
    /// `BEGIN RSA PRIVATE KEY`: PKCS#1, as older `openssl genrsa` writes it.
    Pkcs1Rsa(Vec<u8>),
}

impl SigningKey {
    /// Loads the key in `key` for a certificate whose public key is `spki`
    /// (the certificate decides which kind to expect).
    fn load(
        key_path: &Path,
        cert_path: &Path,
        key: &KeyDer,
        spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<Self> {
        let mismatch = || Error::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        };
        if spki.algorithm.algorithm == OID_SIG_ED25519 {
            let KeyDer::Pkcs8(der) = key else {
                return Err(mismatch());
            };
            // maybe_unchecked: accepts PKCS#8 v1 too (as openssl writes it);
            // the public key is compared with the certificate's right after.
            let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| Error::malformed(key_path, "not an Ed25519 PKCS#8 private key"))?;
            if kp.public_key().as_ref() != &*spki.subject_public_key.data {
                return Err(mismatch());
            }
            Ok(SigningKey::Ed25519(kp))
        } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            Self::load_rsa(key_path, key, &spki.subject_public_key.data, mismatch)
        } else {
            Err(Error::UnsupportedKey {
                path: cert_path.to_path_buf(),
                detail: format!("public key algorithm {}", spki.algorithm.algorithm),
            })
        }
    }

    /// Without the `x509-sign` feature there is no RSA-SHA1 signer (ring
    /// cannot sign SHA-1, and OpenSSL is then not linked): say so plainly.
    #[cfg(not(feature = "x509-sign"))]
    fn load_rsa(
        key_path: &Path,
        _key: &KeyDer,
        _cert_public: &[u8],
        _mismatch: impl Fn() -> Error,
    ) -> Result<Self> {
        Err(Error::UnsupportedKey {
            path: key_path.to_path_buf(),
            detail: "an RSA identity signs fedmsg's \"x509\" scheme, which needs gilmsg built with \
                     the `fedmsg-x509` cargo feature (it links the system OpenSSL: install libssl-dev)"
                .into(),
        })
    }

    #[cfg(feature = "x509-sign")]
    fn load_rsa(
        key_path: &Path,
        key: &KeyDer,
        cert_public: &[u8],
        mismatch: impl Fn() -> Error,
    ) -> Result<Self> {
        {
            let bad = |e: openssl::error::ErrorStack| {
                Error::malformed(key_path, format!("not a usable RSA private key: {e}"))
            };
            let pkey = match key {
                KeyDer::Pkcs8(der) => PKey::private_key_from_pkcs8(der).map_err(bad)?,
                KeyDer::Pkcs1Rsa(der) => openssl::rsa::Rsa::private_key_from_der(der)
                    .and_then(PKey::from_rsa)
                    .map_err(bad)?,
            };
            // An Ed25519 or EC key next to an RSA certificate is a mismatch,
            // not a different scheme.
            let rsa = pkey.rsa().map_err(|_| mismatch())?;
            let public = rsa.public_key_to_der_pkcs1().map_err(bad)?;
            if public != cert_public {
                return Err(mismatch());
            }
            if rsa.size() * 8 < RSA_MIN_VERIFIABLE_BITS {
                tracing::warn!(
                    key = %key_path.display(),
                    bits = rsa.size() * 8,
                    "RSA key is smaller than 2048 bits: Python fedmsg peers accept its \
                     signatures, but gilmsg peers will reject them"
                );
            }
            Ok(SigningKey::Rsa(pkey))
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            SigningKey::Ed25519(_) => SCHEME_ED25519,
            #[cfg(feature = "x509-sign")]
            SigningKey::Rsa(_) => SCHEME_X509,
        }
    }

    /// The `certificate` field for a certificate with this DER encoding.
    fn certificate_field(&self, cert_der: &[u8]) -> String {
        let pem = files::certificate_pem(cert_der);
        match self {
            SigningKey::Ed25519(_) => base64::engine::general_purpose::STANDARD.encode(pem),
            #[cfg(feature = "x509-sign")]
            SigningKey::Rsa(_) => files::base64_wrapped(pem.as_bytes()),
        }
    }

    fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
        match self {
            SigningKey::Ed25519(kp) => {
                Ok(base64::engine::general_purpose::STANDARD.encode(kp.sign(canonical).as_ref()))
            }
            #[cfg(feature = "x509-sign")]
            SigningKey::Rsa(pkey) => {
                // openssl's default padding for an RSA key is PKCS#1 v1.5.
                let signature = openssl::sign::Signer::new(MessageDigest::sha1(), pkey)
                    .and_then(|mut s| {
                        s.update(canonical)?;
                        s.sign_to_vec()
                    })
                    .map_err(|e| SignError(format!("RSA-SHA1 signing failed: {e}")))?;
                Ok(files::base64_wrapped(&signature))
            }
        }
    }
}

/// A name on a certificate plus the private key to sign as it.
///
/// `Debug` shows the name and scheme only.
pub struct Identity {
    name: String,
    cert_path: PathBuf,
    certificate_field: String,
    key: SigningKey,
}

impl Identity {
    /// Loads `<certname>.key` and `<certname>.crt` from `ssldir`, fedmsg's
    /// layout.
    pub fn load(ssldir: &Path, certname: &str) -> Result<Self> {
        crate::pki::validate_name(ssldir, certname)?;
        Self::load_files(
            &ssldir.join(format!("{certname}.key")),
            &ssldir.join(format!("{certname}.crt")),
        )
    }

    /// Loads a PEM private key and the PEM certificate for it.
    ///
    /// The key may be PKCS#8 (`BEGIN PRIVATE KEY`, Ed25519 or RSA) or, for
    /// RSA, PKCS#1 (`BEGIN RSA PRIVATE KEY`); it must not be encrypted. An
    /// RSA key signs with fedmsg's `"x509"` scheme, an Ed25519 key with
    /// `"ed25519"`.
    ///
    /// Refuses a key file that group or others can access (keys made with
    /// `openssl req -nodes` are often mode 0644: `chmod 600` them), and a key
    /// that does not match the certificate. The certificate is not checked
    /// against a CA here; receivers do that.
    pub fn load_files(key_path: &Path, cert_path: &Path) -> Result<Self> {
        files::check_private(key_path)?;
        let key_pem = files::read(key_path)?;
        let key_der = pem_private_key(key_path, &key_pem)?;
        let cert_der = files::read_cert_der(cert_path)?;
        let cert = files::parse_cert(cert_path, &cert_der)?;
        let name = files::common_name(cert.subject())
            .ok_or_else(|| Error::malformed(cert_path, "certificate subject has no CN"))?;
        let key = SigningKey::load(key_path, cert_path, &key_der, cert.public_key())?;
        let certificate_field = key.certificate_field(&cert_der);
        Ok(Identity {
            name,
            cert_path: cert_path.to_path_buf(),
            certificate_field,
            key,
        })
    }

    /// The certificate file this identity was loaded from.
    pub fn certificate_path(&self) -> &Path {
        &self.cert_path
    }
}

fn pem_private_key(path: &Path, text: &[u8]) -> Result<KeyDer> {
    let encrypted = |detail: &str| Error::UnsupportedKey {
        path: path.to_path_buf(),
        detail: format!("{detail}; decrypt it first (e.g. `openssl pkey -in KEY -out KEY.plain`)"),
    };
    // Legacy encrypted PEM (`Proc-Type: 4,ENCRYPTED` headers) would otherwise
    // surface as a confusing DER error.
    if text.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(encrypted("the private key is encrypted"));
    }
    if let Some(der) = files::pem_blocks(path, text, "PRIVATE KEY")?
        .into_iter()
        .next()
    {
        return Ok(KeyDer::Pkcs8(der));
    }
    if let Some(der) = files::pem_blocks(path, text, "RSA PRIVATE KEY")?
        .into_iter()
        .next()
    {
        return Ok(KeyDer::Pkcs1Rsa(der));
    }
    Err(Error::malformed(
        path,
        "no \"PRIVATE KEY\" (PKCS#8) or \"RSA PRIVATE KEY\" (PKCS#1) PEM block",
    ))
}

impl Signer for Identity {
    fn name(&self) -> &str {
        &self.name
    }

    fn scheme(&self) -> &str {
        self.key.scheme()
    }

    fn certificate(&self) -> &str {
        &self.certificate_field
    }

    fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
        self.key.sign(canonical)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("scheme", &self.key.scheme())
            .finish_non_exhaustive()
    }
}
