//! What every gilmsg command shares: exit statuses, configuration lookup,
//! `--ack-timeout` parsing, logging set-up and the one-line error format.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gilmsg::Config;

/// Every recipient acked (or, without recipients, the message was sent).
pub const EXIT_OK: u8 = 0;
/// At least one recipient did not ACK in time.
pub const EXIT_TIMEOUT: u8 = 1;
/// Bad usage, configuration, key files or input.
pub const EXIT_USAGE: u8 = 2;
/// The bus failed: sockets, no subscriber, closed handle.
pub const EXIT_BUS: u8 = 3;

/// The exit-status table for `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success: every recipient acked (without --recipients: the message was sent)
  1  timeout: some recipient did not ACK in time (stderr names them)
  2  usage, configuration, key file or input error
  3  bus error: socket failure, or no subscriber appeared";

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit status.
    pub status: u8,
    /// The one-line message for stderr.
    pub message: String,
}

impl Failure {
    /// A usage/config/input failure.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            status: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<gilmsg::Error> for Failure {
    fn from(e: gilmsg::Error) -> Self {
        let status = match &e {
            gilmsg::Error::Timeout(_) => EXIT_TIMEOUT,
            gilmsg::Error::Config(_)
            | gilmsg::Error::Crypto(_)
            | gilmsg::Error::Message(_)
            | gilmsg::Error::Unsendable(_)
            | gilmsg::Error::InvalidArgument(_)
            | gilmsg::Error::NoAckEndpoints => EXIT_USAGE,
            _ => EXIT_BUS,
        };
        let kind = if status == EXIT_TIMEOUT {
            "timeout"
        } else {
            "error"
        };
        Failure {
            status,
            message: format!("{kind}: {e}"),
        }
    }
}

impl From<gilmsg::ConfigError> for Failure {
    fn from(e: gilmsg::ConfigError) -> Self {
        Failure::usage(format!("error: {e}"))
    }
}

/// Prints `<prog>: <message>` on one line of stderr and returns the status.
pub fn report(program: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::from(EXIT_OK),
        Err(f) => {
            let one_line = f.message.replace('\n', " ");
            eprintln!("{program}: {one_line}");
            std::process::ExitCode::from(f.status)
        }
    }
}

/// Loads the config: `--config`, then `GILMSG_CONFIG`, then the default path.
pub fn load_config(explicit: Option<&Path>) -> Result<Config, Failure> {
    Ok(Config::load(explicit)?)
}

/// Parses `250ms`, `3s`, `1m 30s` (humantime) or bare seconds `0.25`, as
/// gilmsg's `--ack-timeout` takes them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err(format!("{text:?} is not a non-negative number of seconds"));
    }
    humantime::parse_duration(trimmed).map_err(|e| format!("{text:?}: {e} (try 250ms, 3s or 0.25)"))
}

/// Logs to stderr, filtered by `GILMSG_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GILMSG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A current-thread runtime for a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            status: EXIT_BUS,
            message: format!("error: cannot start runtime: {e}"),
        })
}

/// Path of a sibling executable (the demo starts its roles this way).
pub fn sibling_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join(name);
    candidate.exists().then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_both_forms() {
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("nan").is_err());
    }
}
