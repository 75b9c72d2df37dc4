//! A signing identity: a private key plus the CA-issued certificate that names
//! it, implementing `gilmsg_proto::Signer`.
//!
//! Key kinds sit behind the private [`SigningKey`] enum. Today only Ed25519
//! (the native `"ed25519"` scheme); fedmsg's `"x509"` scheme (RSA PKCS#1 v1.5
//! over SHA-1, base64 wrapped at 76 columns with a trailing newline) is to be
//! added as a second variant backed by the `openssl` crate, without changing
//! `Identity`'s API: only `SigningKey::{from_pem, scheme, sign}` grow a case.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use gilmsg_proto::{SignError, Signer};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519};

use crate::error::{Error, Result};
use crate::files;

/// The `crypto` field value of the native scheme.
pub const SCHEME_ED25519: &str = "ed25519";
/// The `crypto` field value of fedmsg's RSA/X.509 scheme.
pub const SCHEME_X509: &str = "x509";

/// The private half, by kind. Each variant knows its scheme name and how to
/// produce the `signature` field.
enum SigningKey {
    Ed25519(Ed25519KeyPair),
    // Rsa(openssl::pkey::PKey<openssl::pkey::Private>) -- scheme "x509".
}

impl SigningKey {
    /// Loads the PKCS#8 key in `key_der` for a certificate whose public key is
    /// `spki` (the certificate decides which kind to expect).
    fn load(
        key_path: &Path,
        cert_path: &Path,
        key_der: &[u8],
        spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<Self> {
        if spki.algorithm.algorithm == OID_SIG_ED25519 {
            // maybe_unchecked: accepts PKCS#8 v1 too (as openssl writes it);
            // the public key is compared with the certificate's right after.
            let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_der)
                .map_err(|_| Error::malformed(key_path, "not an Ed25519 PKCS#8 private key"))?;
            if kp.public_key().as_ref() != &*spki.subject_public_key.data {
                return Err(Error::KeyMismatch {
                    key: key_path.to_path_buf(),
                    cert: cert_path.to_path_buf(),
                });
            }
            Ok(SigningKey::Ed25519(kp))
        } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            Err(Error::UnsupportedKey {
                path: cert_path.to_path_buf(),
                detail:
                    "RSA (fedmsg's \"x509\" scheme) can be verified but not yet used for signing"
                        .to_owned(),
            })
        } else {
            Err(Error::UnsupportedKey {
                path: cert_path.to_path_buf(),
                detail: format!("public key algorithm {}", spki.algorithm.algorithm),
            })
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            SigningKey::Ed25519(_) => SCHEME_ED25519,
        }
    }

    fn sign(&self, canonical: &[u8]) -> Result<String, SignError> {
        match self {
            SigningKey::Ed25519(kp) => {
                Ok(base64::engine::general_purpose::STANDARD.encode(kp.sign(canonical).as_ref()))
            }
        }
    }
}

/// A name on a certificate plus the private key to sign as it.
///
/// `Debug` shows the name and scheme only.
pub struct Identity {
    name: String,
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

    /// Loads a PKCS#8 PEM private key and the PEM certificate for it.
    ///
    /// Refuses a key file that group or others can access, and a key that
    /// does not match the certificate. The certificate is not checked against
    /// a CA here; receivers do that.
    pub fn load_files(key_path: &Path, cert_path: &Path) -> Result<Self> {
        files::check_private(key_path)?;
        let key_pem = files::read(key_path)?;
        let key_der = pem_private_key(key_path, &key_pem)?;
        let cert_der = files::read_cert_der(cert_path)?;
        let cert = files::parse_cert(cert_path, &cert_der)?;
        let name = files::common_name(cert.subject())
            .ok_or_else(|| Error::malformed(cert_path, "certificate subject has no CN"))?;
        let key = SigningKey::load(key_path, cert_path, &key_der, cert.public_key())?;
        let certificate_field =
            base64::engine::general_purpose::STANDARD.encode(files::certificate_pem(&cert_der));
        Ok(Identity {
            name,
            certificate_field,
            key,
        })
    }
}

fn pem_private_key(path: &Path, text: &[u8]) -> Result<Vec<u8>> {
    if let Some(der) = files::pem_blocks(path, text, "PRIVATE KEY")?
        .into_iter()
        .next()
    {
        return Ok(der);
    }
    let other = PathBuf::from(path);
    if !files::pem_blocks(path, text, "RSA PRIVATE KEY")?.is_empty() {
        return Err(Error::UnsupportedKey {
            path: other,
            detail: "PKCS#1 RSA key; signing with RSA is not supported yet".to_owned(),
        });
    }
    Err(Error::malformed(
        other,
        "no PKCS#8 \"PRIVATE KEY\" PEM block",
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
