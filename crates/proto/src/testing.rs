//! A toy signature scheme for the state machines' unit tests: the
//! "signature" is `by <name>` and the "certificate" the name, so a test can
//! forge, tamper and verify without keys.

use crate::auth::{SignError, Signer, VerifyError};
use crate::envelope::Envelope;
use crate::validate::{Rejection, Validated};

/// Signs as `self.0`.
pub(crate) struct Named(pub(crate) &'static str);

impl Signer for Named {
    fn name(&self) -> &str {
        self.0
    }
    fn scheme(&self) -> &str {
        "toy"
    }
    fn certificate(&self) -> &str {
        self.0
    }
    fn sign(&self, _: &[u8]) -> Result<String, SignError> {
        Ok(format!("by {}", self.0))
    }
}

/// Verifies a [`Named`] signature: the signer is the certificate's name if
/// the signature is `by <that name>`; an unsigned message has no signer.
pub(crate) fn check_named(m: &Envelope) -> Result<Validated, Rejection> {
    match (m.str_field("signature"), m.str_field("certificate")) {
        (Some(sig), Some(cert)) if sig.strip_prefix("by ") == Some(cert) => Ok(Validated {
            signer: Some(cert.to_owned()),
            unsigned_gilmsg_version: false,
        }),
        (None, None) => Ok(Validated {
            signer: None,
            unsigned_gilmsg_version: false,
        }),
        _ => Err(Rejection::Signature(VerifyError::BadSignature("?".into()))),
    }
}
