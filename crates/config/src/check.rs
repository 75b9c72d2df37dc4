//! Rules for single values: what counts as a ZeroMQ endpoint, a local path,
//! a topic prefix, an environment name, a whole number in range, a duration.
//!
//! They are shared by the parser (which knows the exact key path of each
//! value), by [`Config::validate`](crate::Config::validate) (which also
//! covers configurations built in code) and by the command-line tools for
//! values given as flags (`--inbound`, `--high-water-mark`, `--ack-timeout`),
//! so that all of them apply the same rules and refuse a value with the same
//! words. Each returns the reason a value is refused, for the caller to wrap
//! with the file and key, or the flag.

use std::path::Path;
use std::time::Duration;

/// Checks that `endpoint` looks like a ZeroMQ endpoint gilmsg can use:
/// `tcp://host:port` (port a number or `*`, host may be `*` or `[v6]`),
/// `ipc://path` or `inproc://name`.
///
/// This is a shape check to catch typos at start-up rather than at the
/// first `bind`/`connect`; ZeroMQ remains the judge of the rest (whether the
/// host resolves, whether the port is free).
pub fn endpoint(endpoint: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("not a ZeroMQ endpoint: {endpoint:?} ({why})"));
    if endpoint.chars().any(char::is_whitespace) {
        return refuse("contains whitespace");
    }
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return refuse("expected tcp://host:port, ipc://path or inproc://name");
    };
    match scheme {
        "tcp" => {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return refuse("tcp endpoints need a port: tcp://host:port");
            };
            if host.is_empty() {
                return refuse("empty host");
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return refuse("port must be a number up to 65535 or *");
            }
            Ok(())
        }
        "ipc" | "inproc" if rest.is_empty() => refuse("empty path"),
        "ipc" | "inproc" => Ok(()),
        _ => refuse("gilmsg speaks tcp, ipc and inproc"),
    }
}

/// Refuses URLs where gilmsg needs a local file.
///
/// fedmsg lets `ca_cert_location` and `crl_location` be http(s) URLs that it
/// downloads and caches; gilmsg does no network I/O at configuration time
/// (a start-up that depends on a web server is a start-up that can hang), so
/// the operator downloads the file once and points the key at it.
pub fn local_path(value: &Path) -> Result<(), String> {
    let text = value.to_string_lossy();
    let looks_like_url = text
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(is_scheme_char));
    if looks_like_url {
        return Err(format!(
            "{text:?} is a URL; gilmsg only reads local files: download it \
             (e.g. `curl -o /etc/pki/fedmsg/ca.crt {text}`) and give its path"
        ));
    }
    if text.is_empty() {
        return Err("empty path".into());
    }
    Ok(())
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// `topic_prefix` is the dotted head of every topic: non-empty, and no
/// empty segment (which would produce `org..dev.x`).
pub fn topic_prefix(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.split('.').any(str::is_empty) {
        return Err(format!("{value:?} has an empty segment"));
    }
    Ok(())
}

/// `environment` is one topic segment. fedmsg only knows dev/stg/prod, but
/// any single segment keeps topics well formed, so test buses may use
/// their own names.
pub fn environment(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.contains('.') {
        return Err(format!(
            "{value:?} contains a dot; the environment is one topic segment (dev, stg, prod, ...)"
        ));
    }
    Ok(())
}

/// A relative `ipc://` path resolved against `base` (the configuration
/// file's directory), so that every process reading the file finds the same
/// socket whatever its working directory. Absolute paths, Linux abstract
/// sockets (`ipc://@name`), the wildcard `ipc://*` and other schemes are
/// returned unchanged.
pub fn resolve_ipc(endpoint: &str, base: &Path) -> String {
    match endpoint.strip_prefix("ipc://") {
        Some(path) if !(path.starts_with('/') || path.starts_with('@') || path == "*") => {
            format!("ipc://{}", base.join(path).display())
        }
        _ => endpoint.to_owned(),
    }
}

/// `[monitoring] address`: an IP address or host name to listen on, or
/// `""` for every interface. Only its shape is checked here; whether it
/// can be bound is the operating system's answer at start-up.
pub fn monitoring_address(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!(
            "{value:?} is not an address to listen on (an IP address, a host name, or \"\" for every interface)"
        ));
    }
    Ok(())
}

/// `heartbeat_interval`: more than 0 and at most a day (a heartbeat a day
/// apart tells nobody anything in time; the bound keeps `now + interval`
/// far from overflowing).
pub fn heartbeat_interval(value: Duration) -> Result<(), String> {
    const DAY: Duration = Duration::from_secs(86_400);
    if value.is_zero() {
        return Err("must be greater than 0 (leave the key out to turn heartbeats off)".into());
    }
    if value > DAY {
        return Err(format!(
            "{} is longer than the maximum, 1day",
            humantime::format_duration(value)
        ));
    }
    Ok(())
}

/// The allowed range of one whole-number setting. The parser, `validate`
/// and the command-line flags all refuse out-of-range values through
/// [`WholeNumber::check`], so `-1`, `0` and `1.5` get one wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WholeNumber {
    /// Smallest allowed value.
    pub min: u64,
    /// Largest allowed value.
    pub max: u64,
    /// What 0 means, when it is allowed and special (`unlimited`).
    pub zero_means: Option<&'static str>,
}

/// `high_water_mark` / `--high-water-mark`: ZeroMQ takes an `int`; 0 is unlimited.
pub const HIGH_WATER_MARK: WholeNumber = WholeNumber {
    min: 0,
    max: i32::MAX as u64,
    zero_means: Some("unlimited"),
};

/// `max_message_size`, in bytes: at most 1 GiB. Sockets cap a frame at four
/// times it (libzmq's `ZMQ_MAXMSGSIZE`, an `int64`), and a body is parsed
/// and signed whole in memory; a larger bound is no bound at all.
pub const MAX_MESSAGE_SIZE: WholeNumber = WholeNumber {
    min: 1,
    max: 1 << 30,
    zero_means: None,
};

/// A count or size that must not be zero, up to what `usize` holds.
const POSITIVE: WholeNumber = WholeNumber {
    min: 1,
    max: usize::MAX as u64,
    zero_means: None,
};

/// `dedupe_capacity`, in message ids.
pub const DEDUPE_CAPACITY: WholeNumber = POSITIVE;

/// `max_subscriptions`, distinct prefixes per publishing socket.
pub const MAX_SUBSCRIPTIONS: WholeNumber = POSITIVE;

/// `max_subscription_length`, in bytes.
pub const MAX_SUBSCRIPTION_LENGTH: WholeNumber = POSITIVE;

/// `[qos] prefetch_count`: AMQP's is 16 bits; 0 would mean unbounded,
/// which gilmsg refuses (a consumer's memory and delivery queue are bounded).
pub const PREFETCH_COUNT: WholeNumber = WholeNumber {
    min: 1,
    max: u16::MAX as u64,
    zero_means: None,
};

/// `[qos] prefetch_size`, in bytes (AMQP's is 32 bits).
pub const PREFETCH_SIZE: WholeNumber = WholeNumber {
    min: 0,
    max: u32::MAX as u64,
    zero_means: Some("no limit"),
};

/// `max_redeliveries`: requeues of a message whose handler failed.
pub const MAX_REDELIVERIES: WholeNumber = WholeNumber {
    min: 0,
    max: 1000,
    zero_means: Some("never requeued"),
};

/// `publish_priority`: AMQP priorities are 0 to 255.
pub const PUBLISH_PRIORITY: WholeNumber = WholeNumber {
    min: 0,
    max: u8::MAX as u64,
    zero_means: None,
};

/// `[monitoring] port`: a TCP port; 0 picks a free one.
pub const MONITORING_PORT: WholeNumber = WholeNumber {
    min: 0,
    max: u16::MAX as u64,
    zero_means: Some("a free port"),
};

/// `--io-threads` (fedmsg's flag; accepted, not used).
pub const IO_THREADS: WholeNumber = WholeNumber {
    min: 0,
    max: i32::MAX as u64,
    zero_means: None,
};

impl WholeNumber {
    /// Checks a number already parsed.
    pub fn check(&self, value: u64) -> Result<u64, String> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(self.refusal(&value.to_string()))
        }
    }

    /// Parses and checks a number written as text (a flag's value, or a
    /// number literal from a file): `-1`, `1.5`, `lots` are all refused
    /// with the same words as an out-of-range value.
    pub fn parse(&self, text: &str) -> Result<u64, String> {
        match text.trim().parse::<u64>() {
            Ok(v) => self.check(v),
            Err(_) => Err(self.refusal(text)),
        }
    }

    /// The one wording: `must be a whole number from 0 (unlimited) to 2147483647, not -1`.
    pub fn refusal(&self, shown: &str) -> String {
        let zero = match (self.min, self.zero_means) {
            (0, Some(meaning)) => format!(" ({meaning})"),
            _ => String::new(),
        };
        format!(
            "must be a whole number from {}{zero} to {}, not {shown}",
            self.min, self.max
        )
    }
}

/// The unit of a bare number given as a duration: fedmsg counts most keys
/// in seconds and the `zmq_*` keys (and `--linger`) in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareUnit {
    /// `0.25` means 250 ms.
    Seconds,
    /// `250` means 250 ms.
    Milliseconds,
}

impl BareUnit {
    fn word(self) -> &'static str {
        match self {
            BareUnit::Seconds => "seconds",
            BareUnit::Milliseconds => "milliseconds",
        }
    }

    fn seconds(self) -> f64 {
        match self {
            BareUnit::Seconds => 1.0,
            BareUnit::Milliseconds => 0.001,
        }
    }
}

/// The one wording for a refused duration.
pub fn duration_refusal(shown: &str, unit: BareUnit) -> String {
    format!(
        "must be a duration such as \"250ms\", \"3s\" or a number of {}, not {shown}",
        unit.word()
    )
}

/// A duration written as text: humantime (`250ms`, `3s`, `1m 30s`) or a
/// bare non-negative number in `unit`. Values too large for a `Duration`
/// are refused, never a panic.
pub fn duration(text: &str, unit: BareUnit) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<f64>() {
        return duration_from_number(number, unit).ok_or_else(|| duration_refusal(text, unit));
    }
    humantime::parse_duration(trimmed).map_err(|_| duration_refusal(&format!("{text:?}"), unit))
}

/// A bare number in `unit` as a duration; `None` if negative, not finite
/// or too large.
pub fn duration_from_number(number: f64, unit: BareUnit) -> Option<Duration> {
    if !(number.is_finite() && number >= 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(number * unit.seconds()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_one_wording() {
        assert_eq!(HIGH_WATER_MARK.parse("0"), Ok(0));
        assert_eq!(
            HIGH_WATER_MARK.parse("-1").unwrap_err(),
            "must be a whole number from 0 (unlimited) to 2147483647, not -1"
        );
        assert!(HIGH_WATER_MARK.parse("3000000000").is_err());
        assert_eq!(
            MAX_MESSAGE_SIZE.check(0).unwrap_err(),
            "must be a whole number from 1 to 1073741824, not 0"
        );
        assert!(MAX_MESSAGE_SIZE.parse("1.5").is_err());
    }

    #[test]
    fn durations_and_their_refusal() {
        let s = BareUnit::Seconds;
        assert_eq!(duration("0.25", s), Ok(Duration::from_millis(250)));
        assert_eq!(duration("3s", s), Ok(Duration::from_secs(3)));
        assert_eq!(
            duration("250", BareUnit::Milliseconds),
            Ok(Duration::from_millis(250))
        );
        for bad in ["-1", "nan", "soon", "1e30", "inf"] {
            let e = duration(bad, s).unwrap_err();
            assert!(e.starts_with("must be a duration such as"), "{bad}: {e}");
        }
    }

    #[test]
    fn relative_ipc_paths_resolve() {
        let base = Path::new("/etc/gilmsg");
        assert_eq!(
            resolve_ipc("ipc://relay.sock", base),
            "ipc:///etc/gilmsg/relay.sock"
        );
        assert_eq!(
            resolve_ipc("ipc://run/a.sock", base),
            "ipc:///etc/gilmsg/run/a.sock"
        );
        for same in [
            "ipc:///run/a.sock",
            "ipc://@abstract",
            "ipc://*",
            "tcp://a:1",
            "inproc://x",
        ] {
            assert_eq!(resolve_ipc(same, base), same);
        }
    }

    #[test]
    fn endpoints() {
        for good in [
            "tcp://127.0.0.1:4001",
            "tcp://*:4001",
            "tcp://127.0.0.1:*",
            "tcp://[::1]:4001",
            "tcp://app01.phx2.fedoraproject.org:3000",
            "ipc:///var/run/fedmsg/relay.sock",
            "inproc://bus",
        ] {
            assert_eq!(endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "foo",
            "tcp://127.0.0.1",
            "tcp://:4001",
            "tcp://host:70000",
            "tcp://host:port",
            "udp://host:1",
            "ipc://",
            "inproc://",
            "tcp://host :1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_not_paths() {
        assert!(local_path(Path::new("https://example.org/ca.crt")).is_err());
        assert!(local_path(Path::new("http://example.org/crl.pem")).is_err());
        assert!(local_path(Path::new("/etc/pki/fedmsg/ca.crt")).is_ok());
        assert!(local_path(Path::new("pki/ca.crt")).is_ok());
    }

    #[test]
    fn topic_segments() {
        assert!(environment("prod").is_ok());
        assert!(environment("my-test").is_ok());
        assert!(environment("").is_err());
        assert!(environment("a.b").is_err());
        assert!(topic_prefix("org.fedoraproject").is_ok());
        assert!(topic_prefix("org..x").is_err());
        assert!(topic_prefix("").is_err());
    }
}
