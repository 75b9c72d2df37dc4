//! [`ConfigError`]: every way reading or checking a configuration can fail.
//!
//! Each variant carries the file it concerns (when there is one) and, for
//! problems with a value, the full key path (`endpoints.relay_outbound[1]`),
//! because the person reading the message has to find the line to fix.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a configuration could not be read or is not usable.
///
/// `Display` is one line, lowercase after the `config` prefix, e.g.
/// `config /etc/gilmsg/bus.toml: key endpoints.relay_outbound[1]: not a ZeroMQ endpoint: "foo"`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// No configuration file exists at any of the places searched.
    NotFound {
        /// Every path tried, in search order.
        looked_in: Vec<PathBuf>,
    },
    /// The file exists but could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid TOML / JSON.
    Syntax {
        /// The file (or the origin given to a `from_*_str` constructor).
        path: PathBuf,
        /// 1-based line of the error, when the parser reports one.
        line: Option<usize>,
        /// 1-based column of the error, when the parser reports one.
        column: Option<usize>,
        /// The parser's message, without position.
        message: String,
    },
    /// A key has a value of the wrong type or an unacceptable value, or two
    /// keys contradict each other.
    InvalidKey {
        /// The file, or `None` for a [`Config`](crate::Config) built in code.
        path: Option<PathBuf>,
        /// Key path, e.g. `endpoints.relay_outbound[1]` or `certnames."shell.app01"`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigError::NotFound { .. } => None,
            ConfigError::Io { path, .. } | ConfigError::Syntax { path, .. } => Some(path),
            ConfigError::InvalidKey { path, .. } => path.as_deref(),
        }
    }

    /// The key path this error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidKey { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn invalid(
        path: Option<&Path>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::InvalidKey {
            path: path.map(Path::to_path_buf),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotFound { looked_in } => {
                f.write_str("config: no configuration file found; looked in ")?;
                for (i, p) in looked_in.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", p.display())?;
                }
                Ok(())
            }
            ConfigError::Io { path, source } => {
                write!(f, "config {}: cannot read: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                column,
                message,
            } => {
                write!(f, "config {}: syntax error", path.display())?;
                match (line, column) {
                    (Some(l), Some(c)) => write!(f, " at line {l}, column {c}")?,
                    (Some(l), None) => write!(f, " at line {l}")?,
                    _ => {}
                }
                write!(f, ": {message}")
            }
            ConfigError::InvalidKey { path, key, reason } => {
                match path {
                    Some(p) => write!(f, "config {}: ", p.display())?,
                    None => f.write_str("config: ")?,
                }
                write!(f, "key {key}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One key path segment as it should be shown: bare when it is a plain
/// identifier, quoted TOML-style otherwise, so that `certnames."shell.app01"`
/// cannot be misread as three nested keys.
pub(crate) fn segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// `parent.child`, with `child` quoted when needed.
pub(crate) fn join(parent: &str, child: &str) -> String {
    format!("{parent}.{}", segment(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_key() {
        let e = ConfigError::invalid(
            Some(Path::new("/path/bus.toml")),
            "endpoints.relay_outbound[1]",
            "not a ZeroMQ endpoint: \"foo\"",
        );
        assert_eq!(
            e.to_string(),
            "config /path/bus.toml: key endpoints.relay_outbound[1]: not a ZeroMQ endpoint: \"foo\""
        );
    }

    #[test]
    fn dotted_segments_are_quoted() {
        assert_eq!(
            join("certnames", "shell.app01"),
            "certnames.\"shell.app01\""
        );
        assert_eq!(
            join("endpoints", "relay_outbound"),
            "endpoints.relay_outbound"
        );
    }
}
