//! The crate's one error type.
//!
//! Every variant that involves a file names it, so an operator reading a log
//! line knows which file to fix without a debugger. Message-verification
//! failures are not here: they use `gilmsg_proto::VerifyError`, which
//! consumers count per kind.

use std::io;
use std::path::PathBuf;

/// What went wrong loading, creating or changing key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the file failed for a reason other than those below.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not exist (for `<name>.crt`, the name was never issued).
    #[error("{path}: not found")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// Refused to overwrite an existing CA or identity.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// The file that would have been overwritten.
        path: PathBuf,
    },
    /// A private key file is readable or writable by group or others; like
    /// ssh, we refuse to use it. Fix with `chmod 600`.
    #[error("{path}: private key is accessible by group or others (mode {mode:04o}); run chmod 600 on it")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's contents are not a usable key, certificate or CRL.
    #[error("{path}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The key is of a kind this build cannot use (e.g. RSA for signing).
    #[error("{path}: unsupported key: {detail}")]
    UnsupportedKey {
        /// The key or certificate file.
        path: PathBuf,
        /// Which kind, and why not.
        detail: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{key} does not match the public key in {cert}")]
    KeyMismatch {
        /// The private key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A CRL is not signed by any trusted CA, so its contents cannot be used.
    #[error("{path}: CRL is not signed by a trusted CA: {detail}")]
    UntrustedCrl {
        /// The CRL file.
        path: PathBuf,
        /// Which check failed.
        detail: String,
    },
    /// A changed CRL file was refused because the CRL number of one of its
    /// CAs went backwards (or disappeared): an older CRL, replayed, could
    /// un-revoke an identity. The CRL already loaded stays in force.
    #[error("{path}: refusing an older CRL: {detail}")]
    CrlRollback {
        /// The CRL file.
        path: PathBuf,
        /// Which CA and which numbers.
        detail: String,
    },
    /// This process's own certificate would be refused by its peers
    /// (revoked, expired, not issued by a trusted CA, no CRL from its CA):
    /// everything it signs would be dropped.
    #[error("{path}: cannot sign as this identity: {reason} (its peers would refuse everything it signs)")]
    OwnCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why peers would refuse it.
        reason: gilmsg_proto::VerifyError,
    },
    /// An identity name outside the allowed set; names become file names.
    #[error("{dir}: invalid identity name {name:?} (use letters, digits, '.', '-', '_'; not starting with '.' or '-')")]
    InvalidName {
        /// The PKI directory the name was meant for.
        dir: PathBuf,
        /// The rejected name.
        name: String,
    },
    /// Certificate or CRL generation failed.
    #[error("{path}: could not generate: {detail}")]
    Generate {
        /// The file that was being produced.
        path: PathBuf,
        /// The generator's message.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path },
            io::ErrorKind::AlreadyExists => Error::AlreadyExists { path },
            _ => Error::Io { path, source },
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        Error::Malformed {
            path: path.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn generate(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        Error::Generate {
            path: path.into(),
            detail: detail.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
