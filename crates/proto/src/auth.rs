//! The seam between the protocol and the cryptography.
//!
//! The protocol core decides *what* is signed (the canonical JSON of a body
//! without `signature` and `certificate`) and what a verified signer may do; it
//! does not know how keys or certificates work. Those live behind [`Signer`]
//! and [`Verifier`], implemented by `gilmsg-crypto` (Ed25519, and
//! fedmsg's RSA/X.509 scheme). Keeping the traits here lets this crate be
//! tested and fuzzed with no key material at all.

use std::fmt;

/// Something that can sign outgoing messages as one identity.
pub trait Signer: Send + Sync {
    /// The identity's name, as it appears on its certificate (the CN).
    fn name(&self) -> &str;
    /// The value of the body's `crypto` field, e.g. `"ed25519"` or `"x509"`.
    fn scheme(&self) -> &str;
    /// The value of the body's `certificate` field.
    fn certificate(&self) -> &str;
    /// Signs the canonical bytes and returns the value of the `signature` field.
    fn sign(&self, canonical: &[u8]) -> Result<String, SignError>;
}

/// Checks a signature and the certificate that carries the signer's name.
pub trait Verifier: Send + Sync {
    /// Verifies `signature` over `canonical` with the key in `certificate`,
    /// which must chain to the trusted CA, be within its validity and not be
    /// revoked. Returns the name on the certificate.
    fn verify(
        &self,
        scheme: &str,
        certificate: &str,
        signature: &str,
        canonical: &[u8],
    ) -> Result<VerifiedSigner, VerifyError>;

    /// [`Verifier::verify`] for several signatures at once, one result per
    /// item, in order, each what `verify` would have said of it. A verifier
    /// that can check many signatures for less than one each (Ed25519 batch
    /// verification) overrides this; the default checks them in turn.
    fn verify_many(&self, items: &[SignedItem<'_>]) -> Vec<Result<VerifiedSigner, VerifyError>> {
        items
            .iter()
            .map(|item| {
                self.verify(
                    item.scheme,
                    item.certificate,
                    item.signature,
                    item.canonical,
                )
            })
            .collect()
    }
}

/// One signature to check with [`Verifier::verify_many`]: the arguments of
/// [`Verifier::verify`].
#[derive(Debug, Clone, Copy)]
pub struct SignedItem<'a> {
    /// The value of the body's `crypto` field.
    pub scheme: &'a str,
    /// The value of the body's `certificate` field.
    pub certificate: &'a str,
    /// The value of the body's `signature` field.
    pub signature: &'a str,
    /// The bytes that were signed.
    pub canonical: &'a [u8],
}

/// A signer whose signature and certificate checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    /// The name on the certificate (its CN).
    pub name: String,
}

/// A signing failure (the key could not be used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(pub String);

/// Why a signature was not accepted. Each variant is counted separately by
/// consumers and publishers, so operators can tell forgeries from expired
/// certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The `crypto` field names a scheme this process does not implement.
    #[error("unknown signature scheme {0:?}")]
    UnknownScheme(String),
    /// The `signature` or `certificate` field could not be decoded.
    #[error("malformed {field}: {detail}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The certificate was not issued by the configured CA.
    #[error("certificate not issued by the trusted CA: {0}")]
    Untrusted(String),
    /// The certificate's validity period has ended.
    #[error("certificate of {0:?} has expired")]
    Expired(String),
    /// The certificate's validity period has not started.
    #[error("certificate of {0:?} is not yet valid")]
    NotYetValid(String),
    /// The certificate is on the CA's revocation list.
    #[error("certificate of {0:?} is revoked")]
    Revoked(String),
    /// The signature does not match the body and the certificate's key.
    #[error("bad signature by {0:?}")]
    BadSignature(String),
    /// Revocation is checked (a CRL is configured) but the CRL file holds no
    /// CRL from the certificate's CA, so whether it is revoked is unknown
    /// (OpenSSL's `CRL_CHECK_ALL` refuses it too).
    #[error("no CRL for the certificate's CA: {0}")]
    CrlMissing(String),
    /// The CRL of the certificate's CA is past its `nextUpdate`: revocations
    /// since then would be unknown.
    #[error("CRL expired: {0}")]
    CrlExpired(String),
}

impl VerifyError {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::UnknownScheme(_) => "unknown_scheme",
            VerifyError::Malformed { .. } => "malformed_signature",
            VerifyError::Untrusted(_) => "untrusted_certificate",
            VerifyError::Expired(_) => "expired_certificate",
            VerifyError::NotYetValid(_) => "not_yet_valid_certificate",
            VerifyError::Revoked(_) => "revoked_certificate",
            VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::CrlMissing(_) => "crl_missing",
            VerifyError::CrlExpired(_) => "crl_expired",
        }
    }
}

/// Debug output for signers never shows key material, only who and how.
pub struct SignerDebug<'a>(pub &'a dyn Signer);

impl fmt::Debug for SignerDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.0.name())
            .field("scheme", &self.0.scheme())
            .finish_non_exhaustive()
    }
}
