//! What every gilmsg command shares: exit statuses, the flags every bus
//! command takes ([`CommonArgs`]: config file, fedmsg's common flags, log
//! format) and how they apply to the configuration, duration and number
//! parsing (by the config's own rules), logging set-up (text or JSON,
//! colour only on a terminal), the stats line, and the one-line error
//! format. Signals are in [`crate::signals`].

use std::path::PathBuf;
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
  1  timeout: the message was sent and some recipient did not ACK in time (stderr names them)
  2  usage, configuration, key file or input error
  3  bus error: socket or OS failure, signing failed, or no subscriber appeared so
     nothing was sent (with or without --recipients)
With --keep-going or --stream: the highest status of any message.";

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
            // The OS refused a thread, a socketpair or a runtime, or the
            // signer failed at publish time: not a usage error.
            gilmsg::Error::Os { .. } | gilmsg::Error::Socket { .. } | gilmsg::Error::Sign(_) => {
                EXIT_BUS
            }
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

/// One warning per key of the file that gilmsg does not read, naming the
/// file, the key and the closest key it knows.
fn warn_unknown_keys(config: &Config) {
    for unknown in &config.unknown_keys {
        tracing::warn!(
            "{unknown}; ignored (strict_config = true or --strict-config makes this an error)"
        );
    }
}

/// Options every gilmsg bus command takes, including the ones fedmsg's
/// commands share (`--config-filename`, `--topic-prefix`,
/// `--high-water-mark`, `--linger`, `--print-config`, `--timeout`,
/// `--io-threads`, `--post-init-sleep`), so scripts written for
/// `fedmsg-logger`, `gilmsg-logger` or `fedmsg-relay` keep working.
///
/// Every value here is an override: a flag that is not given leaves the
/// configuration file's value alone (no flag has a default that would
/// silently replace a key of the file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Config file (default: $GILMSG_CONFIG, then /etc/gilmsg/gilmsg.toml).
    #[arg(long, alias = "config-filename", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Refuse config keys gilmsg does not know instead of warning about them
    /// (the config key `strict_config = true` does the same).
    #[arg(long)]
    pub strict_config: bool,
    /// Print the effective configuration (the file with every flag applied)
    /// as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log format on stderr: `text`, or `json` (one object per line, for log
    /// shippers). Default: $GILMSG_LOG_FORMAT, else text. The level comes
    /// from $GILMSG_LOG (e.g. info, debug; default warn).
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Override the config's topic_prefix.
    #[arg(long, value_name = "PREFIX", value_parser = parse_topic_prefix)]
    pub topic_prefix: Option<String>,
    /// Override the config's high_water_mark: queue limit per socket and
    /// peer, in messages; 0 = unlimited.
    #[arg(long, value_name = "N", value_parser = parse_high_water_mark, allow_hyphen_values = true)]
    pub high_water_mark: Option<i32>,
    /// Override the config's zmq_linger: how long closing waits to flush
    /// queued messages; bare numbers are milliseconds, as fedmsg's --linger.
    #[arg(long, value_name = "MS", value_parser = parse_millis, allow_hyphen_values = true)]
    pub linger: Option<Duration>,
    /// fedmsg's timeout for blocking operations, in seconds (or 250ms, 3s).
    /// gilmsg-logger waits this long for a subscriber when publishing
    /// without --recipients (default: ack_timeout); the relay and the
    /// consumer accept it and do not use it.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,
    /// Accepted for fedmsg compatibility and not used: each gilmsg socket
    /// thread has its own ZeroMQ context with one I/O thread.
    #[arg(long, value_name = "N", value_parser = parse_io_threads, allow_hyphen_values = true)]
    pub io_threads: Option<u64>,
    /// Accepted for fedmsg compatibility and not used: gilmsg waits for
    /// subscriptions and handshakes instead of sleeping after start-up.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_hyphen_values = true)]
    pub post_init_sleep: Option<Duration>,
}

impl CommonArgs {
    /// Reads the configuration file and applies the flags given. Warns
    /// about unknown keys, or refuses them under `--strict-config`.
    pub fn load(&self) -> Result<Config, Failure> {
        let config = Config::load(self.config.as_deref())?;
        self.finish(config)
    }

    /// Like [`CommonArgs::load`], but a missing file is fine when
    /// `--config` was not given and `GILMSG_CONFIG` is unset: the defaults
    /// are used (the relay runs from its flags alone).
    pub fn load_or_default(&self) -> Result<Config, Failure> {
        let env_set = std::env::var_os(gilmsg_config::ENV_VAR).is_some_and(|v| !v.is_empty());
        match Config::load(self.config.as_deref()) {
            Ok(config) => self.finish(config),
            Err(gilmsg::ConfigError::NotFound { .. }) if self.config.is_none() && !env_set => {
                self.finish(Config::default())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn finish(&self, mut config: Config) -> Result<Config, Failure> {
        if self.strict_config {
            config.check_strict()?;
        }
        warn_unknown_keys(&config);
        if let Some(prefix) = &self.topic_prefix {
            config.topic_prefix = prefix.clone();
        }
        if let Some(hwm) = self.high_water_mark {
            config.high_water_mark = hwm;
        }
        if let Some(linger) = self.linger {
            config.zmq_linger = linger;
        }
        if let Some(sleep) = self.post_init_sleep {
            config.post_init_sleep = Some(sleep);
            tracing::debug!(
                "--post-init-sleep {sleep:?} accepted and not used: gilmsg waits for readiness instead"
            );
        }
        if let Some(n) = self.io_threads {
            tracing::debug!("--io-threads {n} accepted and not used");
        }
        Ok(config)
    }

    /// With `--print-config`: prints `config` as TOML and says so, so the
    /// caller returns at once.
    pub fn printed_config(&self, config: &Config) -> bool {
        if self.print_config {
            print!("{}", config.to_toml_string());
        }
        self.print_config
    }
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    LogFormat::parse(text)
}

fn parse_topic_prefix(text: &str) -> Result<String, String> {
    gilmsg_config::check::topic_prefix(text).map(|()| text.to_owned())
}

fn parse_high_water_mark(text: &str) -> Result<i32, String> {
    let n = gilmsg_config::check::HIGH_WATER_MARK.parse(text)?;
    i32::try_from(n).map_err(|_| gilmsg_config::check::HIGH_WATER_MARK.refusal(text))
}

fn parse_io_threads(text: &str) -> Result<u64, String> {
    gilmsg_config::check::IO_THREADS.parse(text)
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    gilmsg_config::check::duration(text, gilmsg_config::check::BareUnit::Milliseconds)
}

/// A ZeroMQ endpoint given as a flag, checked by the rule the config file's
/// endpoints follow.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    gilmsg_config::check::endpoint(text).map(|()| text.to_owned())
}

/// Parses `250ms`, `3s`, `1m 30s` (humantime) or bare seconds `0.25`, as
/// gilmsg's `--ack-timeout` takes them, by the rule (and with the words)
/// the config file's durations use.
///
/// Longer than [`gilmsg::MAX_TIMEOUT`] is refused too (clap then exits 2):
/// a deadline that far out cannot be computed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = gilmsg_config::check::duration(text, gilmsg_config::check::BareUnit::Seconds)?;
    if duration > gilmsg::MAX_TIMEOUT {
        return Err(format!(
            "{text:?} is longer than the maximum, {} days",
            gilmsg::MAX_TIMEOUT.as_secs() / 86_400
        ));
    }
    Ok(duration)
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{text:?} is not a log format: use text or json")),
        }
    }
}

/// Logs to stderr, filtered by `GILMSG_LOG` (default: warnings), in the
/// format of `$GILMSG_LOG_FORMAT` (text or json; default text).
pub fn init_logging() {
    init_logging_as(None);
}

/// [`init_logging`] with the format chosen by a `--log-format` flag, which
/// wins over `$GILMSG_LOG_FORMAT`. Colour codes are written only when
/// stderr is a terminal, so log files and journald get plain text.
pub fn init_logging_as(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GILMSG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let from_env = std::env::var("GILMSG_LOG_FORMAT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| LogFormat::parse(&v));
    let (format, env_problem) = match (format, from_env) {
        (Some(f), _) => (f, None),
        (None, Some(Ok(f))) => (f, None),
        (None, Some(Err(why))) => (LogFormat::Text, Some(why)),
        (None, None) => (LogFormat::Text, None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if let Some(why) = env_problem {
        tracing::warn!("GILMSG_LOG_FORMAT: {why}; logging as text");
    }
}

/// A duration as people read it in a log or error line: `850ms`, `3.02s`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{}ms", ms.round())
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// `<program>: stats k=v k=v`, without a trailing space when there is
/// nothing to count yet.
pub fn stats_line(program: &str, stats: &gilmsg::Stats) -> String {
    let counters = stats.to_string();
    if counters.is_empty() {
        format!("{program}: stats")
    } else {
        format!("{program}: stats {counters}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_failure_at_publish_exits_3() {
        let sign = gilmsg::Error::Sign(gilmsg_proto::SignError("HSM gone".into()));
        assert_eq!(Failure::from(sign).status, EXIT_BUS);
        let refused = gilmsg::Error::InvalidArgument("x".into());
        assert_eq!(Failure::from(refused).status, EXIT_USAGE);
    }

    #[test]
    fn durations_in_both_forms() {
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("nan").is_err());
        // Once a panic (Duration::from_secs_f64), now a refusal.
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("1000000y").is_err());
        assert!(parse_duration("366days").is_err());
        assert_eq!(parse_duration("365days").unwrap(), gilmsg::MAX_TIMEOUT);
    }

    #[test]
    fn empty_stats_have_no_trailing_space() {
        assert_eq!(stats_line("x", &gilmsg::Stats::default()), "x: stats");
    }
}
