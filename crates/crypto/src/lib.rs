//! Identities, certificates and signature schemes for gilmsg.
//!
//! gilmsg signs the canonical JSON of each message as fedmsg does; the
//! protocol crate (`gilmsg-proto`) only sees the [`Signer`] and [`Verifier`]
//! traits. This crate implements them with `ring` (signing, RSA
//! verification, digests), `ed25519-dalek` (Ed25519 verification, one
//! signature or a batch), `openssl` (RSA-SHA1 signing for fedmsg's `"x509"`
//! scheme only), `rcgen`
//! (certificate and CRL generation) and `x509-parser` (parsing and chain
//! signature checks). No cryptography is implemented here.
//!
//! # Layout
//!
//! - [`pki`]: the CA directory on disk (`ca.crt`, `ca.key`, `crl.pem`,
//!   `<name>.crt`, `<name>.key`): `init`, `issue`, `revoke`, `refresh_crl`,
//!   `list`, `crl_status`. CRLs are short-lived (7 days by default). Used by
//!   the `gilmsg-pki` binary.
//! - [`Identity`] (`identity.rs`): a private key plus its certificate;
//!   implements [`Signer`]. An Ed25519 key signs the native `"ed25519"`
//!   scheme; an RSA key signs fedmsg's `"x509"` scheme (RSA PKCS#1 v1.5 over
//!   SHA-1, byte-identical to Python fedmsg), through the system OpenSSL
//!   because ring cannot sign SHA-1.
//! - [`TrustStore`] (`trust.rs`): trusted CA(s) plus CRL; implements
//!   [`Verifier`] with a cache of proven certificates and a CRL that is
//!   re-read when the file changes (an older CRL number is refused).
//!   Verifies both `"ed25519"` and `"x509"`. Revocation follows OpenSSL's
//!   `CRL_CHECK_ALL`, by the CA that matched. [`TrustStore::check_identity`]
//!   checks a process's own certificate at start.
//! - `name.rs`: distinguished names compared as OpenSSL does (its canonical
//!   encoding: UTF-8, case- and white-space-folded), so that re-encoded
//!   issuer names find their CA and its CRL.
//! - `cert_cache.rs`: the bounded, two-generation cache behind the trust
//!   store.
//! - [`Error`] (`error.rs`): the one error type, naming the file involved.
//!   Verification failures use `gilmsg_proto::VerifyError` instead.
//! - `files.rs`: reading/writing with permissions, PEM helpers.
//!
//! # Example
//!
//! ```
//! use gilmsg_crypto::{pki, Identity, TrustStore};
//! use gilmsg_proto::{Signer as _, Verifier as _};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let ssldir = dir.path().join("pki");
//! pki::init(&ssldir, &pki::InitOptions::default())?;
//! pki::issue(&ssldir, "web01", &pki::IssueOptions::default())?;
//!
//! let me = Identity::load(&ssldir, "web01")?;
//! let sig = me.sign(b"{\"msg\":1}")?;
//!
//! let trust = TrustStore::load(&ssldir.join("ca.crt"), Some(&ssldir.join("crl.pem")))?;
//! let who = trust.verify(me.scheme(), me.certificate(), &sig, b"{\"msg\":1}")?;
//! assert_eq!(who.name, "web01");
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cert_cache;
mod error;
mod files;
mod identity;
mod locks;
mod name;
pub mod pki;
mod trust;

pub use error::{Error, Result};
pub use gilmsg_proto::{Signer, Verifier};
pub use identity::{Identity, SCHEME_ED25519, SCHEME_X509};
pub use trust::{
    CrlReloadStats, IdentityStanding, TrustStore, BATCHES_PAUSED_AFTER_A_FAILURE, CACHE_CAPACITY,
    DEFAULT_CRL_CHECK_INTERVAL,
};
