//! The [`Config`] struct: every key a gilmsg process reads, its default, and
//! the values derived from several keys (certificate name, CA and CRL paths,
//! topics, endpoints to subscribe to), plus the cross-key checks.
//!
//! Reading files lives in [`load`](crate::load) and [`parse`](crate::parse);
//! this module knows nothing about syntax, so that a test or a demo can build
//! a `Config` in code with the same meaning as one read from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gilmsg_proto::TopicScheme;

use crate::amqp::AmqpConfig;
use crate::check;
use crate::error::{join, ConfigError};
use crate::keys::UnknownKey;
use crate::schemas::Schemas;

/// The longest `ack_timeout` or re-send delay accepted (365 days), from a
/// file or from the library API. Far beyond any useful wait; it exists so
/// that a deadline `now + timeout` can never overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where a long-running process serves its monitoring endpoint
/// (`[monitoring]`, as in fedora-messaging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitoring {
    /// The address to listen on: an IP address or a host name; `""` (the
    /// default, as in fedora-messaging) means every interface.
    pub address: String,
    /// The TCP port; required when the section is there. `0` picks a free
    /// port (the process prints the one it bound).
    pub port: u16,
}

impl Monitoring {
    /// `address:port` as a socket address text to bind (`""` becomes
    /// `0.0.0.0`; an IPv6 address gets its brackets).
    pub fn bind_text(&self) -> String {
        let host = match self.address.as_str() {
            "" => "0.0.0.0",
            a => a,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Reads `ADDRESS:PORT` as a command-line flag gives it (`:9100` and
    /// `[::1]:9100` too), by the rules the `[monitoring]` keys follow.
    pub fn parse_flag(text: &str) -> Result<Monitoring, String> {
        let refuse = || {
            format!("{text:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9100, :9100 for every interface, [::1]:9100)")
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(refuse)?;
        let port: u16 = port.parse().map_err(|_| refuse())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        check::monitoring_address(host)?;
        Ok(Monitoring {
            address: host.to_owned(),
            port,
        })
    }
}

/// The configuration of one gilmsg bus process.
///
/// Field names are the configuration keys; where fedmsg has the key, the
/// meaning is fedmsg's. Build one with [`Config::default`] and assign
/// fields, or read one with [`Config::load`] / [`Config::from_path`].
///
/// Durations: in files, a duration is a humantime string (`"250ms"`,
/// `"3s"`) or a bare number whose unit is the key's fedmsg unit, given on
/// each field below (seconds unless stated).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// First part of every topic. Default `"org.fedoraproject"`.
    pub topic_prefix: String,
    /// Second part of every topic: `dev`, `stg` or `prod` in fedmsg; any
    /// non-empty string without dots is accepted. Default `"dev"`.
    pub environment: String,
    /// This process's key in [`endpoints`](Self::endpoints): where it binds
    /// its publisher when not [`active`](Self::active). fedmsg spells these
    /// `"<modname>.<hostname>"` (e.g. `bodhi.app01`), or `relay_outbound`.
    pub name: Option<String>,
    /// Overrides the machine's short hostname (see [`Config::hostname`]).
    pub hostname: Option<String>,
    /// fedmsg's "service key" -> ZeroMQ endpoints. Subscribing to the bus
    /// means connecting to all of them. In files a value may be one string
    /// or a list, as in fedmsg.
    pub endpoints: BTreeMap<String, Vec<String>>,
    /// Where the relay listens for `active` publishers. A string or a list
    /// in files.
    pub relay_inbound: Vec<String>,
    /// Publish by connecting to [`relay_inbound`](Self::relay_inbound)
    /// instead of binding `endpoints[name]` (what `fedmsg-logger` does).
    /// Default `false`.
    pub active: bool,
    /// Sign outgoing messages. Default `true` in TOML; when reading fedmsg
    /// JSON, fedmsg's default (`false`) applies if the file leaves it out.
    pub sign_messages: bool,
    /// Reject incoming messages whose signature or routing policy fails.
    /// Default `true` in TOML; fedmsg JSON: `false` if left out, as in
    /// fedmsg's `load_config`.
    pub validate_signatures: bool,
    /// Directory of certificates and keys. Default `/etc/pki/fedmsg`.
    pub ssldir: PathBuf,
    /// The CA certificate; `None` means `ssldir/ca.crt`. Local paths only.
    ///
    /// fedmsg differs when the key is absent: it fetches
    /// `https://fedoraproject.org/fedmsg/ca.crt`. gilmsg never fetches
    /// anything, so a fedmsg JSON dump without this key (or with `null`) uses
    /// `ssldir/ca.crt`, which is where fedmsg deployments keep the CA anyway;
    /// a URL given explicitly is refused, naming the key.
    pub ca_cert_location: Option<PathBuf>,
    /// The certificate revocation list; `None` means `ssldir/crl.pem` if that
    /// file exists, else no CRL (unless [`crl_disabled`](Self::crl_disabled)).
    /// Local paths only.
    ///
    /// fedmsg fetches `https://fedoraproject.org/fedmsg/crl.pem` when the key
    /// is absent; gilmsg looks for `ssldir/crl.pem` instead (see
    /// `ca_cert_location`).
    pub crl_location: Option<PathBuf>,
    /// No revocation checking at all, even if `ssldir/crl.pem` exists.
    ///
    /// This is fedmsg's `crl_location: None` (JSON `null`) or `""`: fedmsg then
    /// skips the CRL, so a fedmsg JSON dump with `"crl_location": null` sets
    /// this. In TOML, write `crl_location = ""`. Wins over `crl_location`.
    /// Default `false`.
    pub crl_disabled: bool,
    /// fedmsg's map from `"<modname>.<hostname>"` to a certificate name
    /// (the file stem of `<name>.crt` / `<name>.key` in `ssldir`).
    pub certnames: BTreeMap<String, String>,
    /// Certificate name stem used when `certnames` has no entry. Default
    /// `"shell"`, fedmsg's prefix for command-line tools.
    pub cert_prefix: String,
    /// Explicit certificate name; wins over everything (gilmsg key).
    pub certname: Option<String>,
    /// Fully-qualified topic -> certificate names allowed to send it.
    pub routing_policy: BTreeMap<String, Vec<String>>,
    /// Refuse topics that have no `routing_policy` entry. Default `false`.
    pub routing_nitpicky: bool,
    /// How long a publisher waits for every expected ACK. Default 5 s.
    /// Bare numbers are seconds.
    pub ack_timeout: Duration,
    /// First re-send delay for an un-ACKed message. Default 50 ms; seconds.
    pub resend_initial: Duration,
    /// Lower bound of the adaptive re-send delay. Default 25 ms; seconds.
    pub resend_min: Duration,
    /// Upper bound of the re-send delay (exponential back-off stops here).
    /// Default 1 s; seconds.
    pub resend_max: Duration,
    /// Largest message accepted off the wire, in bytes. Default 1 MiB.
    pub max_message_size: usize,
    /// The most messages a consumer remembers to drop re-sends and replays
    /// (a memory bound; see [`max_message_age`](Self::max_message_age)).
    /// Default 32768.
    pub dedupe_capacity: usize,
    /// Most distinct subscription prefixes peers may hold on one of our
    /// publishing (XPUB) sockets. Past it the socket drops every peer (they
    /// reconnect and subscribe again), which is the only way to make libzmq
    /// forget subscriptions. Default 4096; gilmsg key.
    pub max_subscriptions: usize,
    /// Longest subscription prefix a peer may send to one of our publishing
    /// sockets, in bytes; libzmq cuts off a peer that sends a longer one.
    /// Default 256; gilmsg key.
    pub max_subscription_length: usize,
    /// How old a message's signed `timestamp` may be for a consumer to
    /// accept it (plus [`clock_skew`](Self::clock_skew)); consumers remember
    /// what they accepted at least that long, so a captured message replayed
    /// later is refused. Must be at least `ack_timeout` (re-sends keep their
    /// timestamp). Default 10 min; seconds.
    pub max_message_age: Duration,
    /// How far a publisher's clock may differ from a consumer's, either way.
    /// Default 60 s; seconds.
    pub clock_skew: Duration,
    /// A publisher counts only ACKs that carry a body digest (Python gilmsg
    /// recipients send none, so they can never complete such a publish).
    /// Default `false`.
    pub require_ack_digest: bool,
    /// ZeroMQ high-water mark for our sockets, in messages; 0 = unlimited.
    /// Default 10000, so a flood cannot grow a process without bound
    /// (acknowledged publishes are re-sent after a drop at a full queue);
    /// fedmsg's own default, 0, applies to configs read from fedmsg JSON.
    pub high_water_mark: i32,
    /// ZeroMQ linger on close. Default 1 s. Bare numbers are
    /// **milliseconds**, as in fedmsg (`zmq_linger: 1000`).
    pub zmq_linger: Duration,
    /// ZeroMQ reconnect interval. Default 100 ms. Bare numbers are
    /// **milliseconds**, as in fedmsg.
    pub zmq_reconnect_ivl: Duration,
    /// ZeroMQ maximum reconnect interval. Default 2 s. Bare numbers are
    /// **milliseconds**, as in fedmsg.
    pub zmq_reconnect_ivl_max: Duration,
    /// Turn on TCP keepalive on our sockets. Default `false`. fedmsg writes
    /// it as an integer (0/1); both forms are accepted.
    pub zmq_tcp_keepalive: bool,
    /// fedmsg's `post_init_sleep` (seconds). Accepted so fedmsg configs load,
    /// but **unused**: gilmsg waits for subscriptions to be ready instead of
    /// sleeping and hoping.
    pub post_init_sleep: Option<Duration>,
    /// The monitoring HTTP endpoint (`/live`, `/ready`, `/metrics`) of
    /// long-running processes: fedora-messaging's `[monitoring]` section,
    /// with its keys `address` and `port`. `None` (no section, or an empty
    /// one) turns it off, the default.
    pub monitoring: Option<Monitoring>,
    /// How often long-running processes (relay, consumer, `gilmsg-logger
    /// --stream`) publish a signed heartbeat on
    /// `<topic_prefix>.<environment>.gilmsg.heartbeat`; `None` (the
    /// default) turns heartbeats off. Bare numbers are seconds (gilmsg key).
    pub heartbeat_interval: Option<Duration>,
    /// Top-level keys the file had that gilmsg does not use, sorted; for a
    /// CLI to warn about (a typo looks exactly like an unused fedmsg key).
    pub ignored_keys: Vec<String>,
    /// The [`ignored_keys`](Self::ignored_keys) worth a warning, each with
    /// the closest key gilmsg knows: every one in TOML, in fedmsg JSON only
    /// those close to a gilmsg key (fedmsg's own keys are never listed).
    pub unknown_keys: Vec<UnknownKey>,
    /// Refuse a file with [`unknown_keys`](Self::unknown_keys) instead of
    /// warning about them (gilmsg key). Default `false`.
    pub strict_config: bool,
    /// The AMQP transport's settings: `Some` when the file has `amqp_url`
    /// (fedora-messaging's keys; see [`AmqpConfig`]), which selects AMQP
    /// instead of ZeroMQ for every handle built from this configuration.
    pub amqp: Option<AmqpConfig>,
    /// Message schemas: topic pattern -> JSON Schema file and name
    /// (`[schemas]`, gilmsg key). Publishers refuse a payload that fails
    /// its topic's schema and name the schema in `fedora_messaging_schema`;
    /// consumers refuse (never ACK) one that fails. Empty by default. Add
    /// entries in code with [`Config::add_schema`].
    pub schemas: Schemas,
    /// The file this came from; relative paths were resolved against its
    /// directory.
    pub(crate) source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topic_prefix: "org.fedoraproject".into(),
            environment: "dev".into(),
            name: None,
            hostname: None,
            endpoints: BTreeMap::new(),
            relay_inbound: Vec::new(),
            active: false,
            sign_messages: true,
            validate_signatures: true,
            ssldir: PathBuf::from("/etc/pki/fedmsg"),
            ca_cert_location: None,
            crl_location: None,
            crl_disabled: false,
            certnames: BTreeMap::new(),
            cert_prefix: "shell".into(),
            certname: None,
            routing_policy: BTreeMap::new(),
            routing_nitpicky: false,
            ack_timeout: Duration::from_secs(5),
            resend_initial: Duration::from_millis(50),
            resend_min: Duration::from_millis(25),
            resend_max: Duration::from_secs(1),
            max_message_size: 1 << 20,
            dedupe_capacity: 32768,
            max_subscriptions: 4096,
            max_subscription_length: 256,
            max_message_age: Duration::from_secs(600),
            clock_skew: Duration::from_secs(60),
            require_ack_digest: false,
            high_water_mark: 10_000,
            zmq_linger: Duration::from_secs(1),
            zmq_reconnect_ivl: Duration::from_millis(100),
            zmq_reconnect_ivl_max: Duration::from_secs(2),
            zmq_tcp_keepalive: false,
            post_init_sleep: None,
            monitoring: None,
            heartbeat_interval: None,
            ignored_keys: Vec::new(),
            unknown_keys: Vec::new(),
            strict_config: false,
            amqp: None,
            schemas: Schemas::default(),
            source: None,
        }
    }
}

impl Config {
    /// The file this configuration was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Maps topics matching `pattern` to the JSON Schema in `file`
    /// (relative to the configuration file's directory, or to the working
    /// directory for a configuration built in code), named `name` (default:
    /// the file name without its last extension): what a `[schemas]` entry
    /// does. The schema is read and compiled now; an error names the key
    /// (`schemas."<pattern>"`), the schema file and, for a schema that is
    /// not valid, the JSON pointer of the bad part. See [`Schemas`].
    pub fn add_schema(
        &mut self,
        pattern: &str,
        file: impl AsRef<Path>,
        name: Option<&str>,
    ) -> Result<(), ConfigError> {
        let file = file.as_ref();
        let key = join("schemas", pattern);
        let invalid = |reason: String| ConfigError::invalid(self.source.as_deref(), &key, reason);
        check::local_path(file).map_err(invalid)?;
        let file = if file.is_relative() {
            let base = match self.source.as_deref() {
                Some(source) => crate::parse::base_dir(source),
                None => std::env::current_dir().unwrap_or_default(),
            };
            base.join(file)
        } else {
            file.to_path_buf()
        };
        let mut schemas = self.schemas.clone();
        schemas.insert(pattern, &file, name).map_err(invalid)?;
        self.schemas = schemas;
        Ok(())
    }

    /// Refuses a configuration whose file had keys gilmsg does not know
    /// ([`unknown_keys`](Self::unknown_keys)): what `strict_config = true`
    /// does when the file is read, and what a CLI's `--strict-config` flag
    /// calls. The error names the file, the first such key and the closest
    /// known key.
    pub fn check_strict(&self) -> Result<(), ConfigError> {
        match self.unknown_keys.first() {
            None => Ok(()),
            Some(unknown) => Err(ConfigError::invalid(
                unknown.file.as_deref(),
                unknown.key.clone(),
                match &unknown.closest {
                    Some(c) => format!("not a gilmsg key (did you mean {c}?); strict configuration refuses unknown keys"),
                    None => "not a gilmsg key; strict configuration refuses unknown keys".to_owned(),
                },
            )),
        }
    }

    /// The hostname used in certificate names: [`hostname`](Self::hostname)
    /// if set, else the machine's short hostname (text before the first
    /// `.`), as fedmsg's `socket.gethostname().split('.')[0]`.
    ///
    /// The machine's name is read from `/proc/sys/kernel/hostname`, then
    /// `$HOSTNAME`, then `"localhost"`: no `unsafe` `gethostname(2)` call.
    pub fn hostname(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => machine_hostname(),
        }
    }

    /// The certificate name a module signs with, publishing as
    /// [`active`](Self::active) says: see [`Config::certname_for`].
    pub fn certname(&self, modname: &str) -> String {
        self.certname_for(modname, self.active)
    }

    /// The certificate name a module signs with when it publishes actively
    /// (through the relay, like `fedmsg-logger`) or not (binding
    /// `endpoints[name]`). The first that applies:
    ///
    /// 1. [`certname`](Self::certname) (gilmsg's explicit choice);
    /// 2. `certnames["<modname>.<hostname>"]`: fedmsg's guessed `name` for a
    ///    module that binds;
    /// 3. `certnames[name]` when not `active` and `name` is set: fedmsg's
    ///    rule for `fedmsg.init(name=...)`;
    /// 4. `certnames["<cert_prefix>.<hostname>"]`: fedmsg's rule when a
    ///    `cert_prefix` is given, as `fedmsg-logger` and `gilmsg-logger`
    ///    always do (`--cert-prefix`, default `shell`), and for active
    ///    publishers, whose fedmsg name `relay_inbound` maps to
    ///    `shell.<hostname>`;
    /// 5. `"<cert_prefix>.<hostname>"` itself, as a file stem in `ssldir`.
    ///    fedmsg raises `KeyError` here; gilmsg's own PKI names files after
    ///    the identity, so this finds them without a `certnames` table.
    ///
    /// The hostname is [`Config::hostname`] (fedmsg's short hostname).
    pub fn certname_for(&self, modname: &str, active: bool) -> String {
        if let Some(explicit) = &self.certname {
            return explicit.clone();
        }
        let host = self.hostname();
        let by_module = format!("{modname}.{host}");
        let by_name = self
            .name
            .as_deref()
            .filter(|n| !active && *n != "relay_inbound");
        let by_prefix = format!("{}.{host}", self.cert_prefix);
        self.certnames
            .get(&by_module)
            .or_else(|| by_name.and_then(|n| self.certnames.get(n)))
            .or_else(|| self.certnames.get(&by_prefix))
            .cloned()
            .unwrap_or(by_prefix)
    }

    /// The CA certificate: `ca_cert_location`, or `ssldir/ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        match &self.ca_cert_location {
            Some(p) => p.clone(),
            None => self.ssldir.join("ca.crt"),
        }
    }

    /// The CRL: `None` (no revocation checking) when
    /// [`crl_disabled`](Self::crl_disabled); else `crl_location`; else
    /// `ssldir/crl.pem` when that file exists, else `None`. A `crl_location`
    /// that is set is returned even if missing, so that the crypto layer
    /// reports it instead of silently skipping revocation (fedmsg, too,
    /// fails every message then).
    pub fn crl_path(&self) -> Option<PathBuf> {
        if self.crl_disabled {
            return None;
        }
        match &self.crl_location {
            Some(p) => Some(p.clone()),
            None => {
                let default = self.ssldir.join("crl.pem");
                default.is_file().then_some(default)
            }
        }
    }

    /// Every endpoint in `endpoints`, once each, ordered by service key and
    /// then by position in its list (stable across runs, so logs compare).
    pub fn subscribe_endpoints(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.endpoints
            .values()
            .flatten()
            .filter(|e| seen.insert(e.as_str()))
            .cloned()
            .collect()
    }

    /// The endpoints this process binds its publisher to: `endpoints[name]`.
    pub fn own_endpoints(&self) -> Option<&[String]> {
        let name = self.name.as_ref()?;
        self.endpoints.get(name).map(Vec::as_slice)
    }

    /// This bus's topic naming, `<topic_prefix>.<environment>.<modname>.<topic>`,
    /// with its ACK topic (the protocol's one [`TopicScheme`]).
    pub fn topic_scheme(&self) -> TopicScheme {
        match &self.amqp {
            // fedora-messaging: `topic_prefix` is the whole prefix, maybe
            // empty; `environment` only when the file sets it.
            Some(amqp) if !amqp.environment_in_topics => {
                TopicScheme::from_prefix(&self.topic_prefix)
            }
            _ => TopicScheme::new(&self.topic_prefix, &self.environment),
        }
    }

    /// Checks every value and the rules that involve several keys:
    /// `active` needs `relay_inbound`; a `name` must be a key of
    /// `endpoints` unless `active`; `max_message_size`, `dedupe_capacity`
    /// and `ack_timeout` are positive; `resend_min <= resend_initial <=
    /// resend_max`; endpoints look like endpoints; CA/CRL are not URLs.
    ///
    /// Reading a file runs this already; call it on a `Config` built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = self.source.as_deref();
        let bad = |key: &str, reason: String| Err(ConfigError::invalid(file, key, reason));

        // fedora-messaging's topic_prefix may be empty (its default).
        let empty_prefix_ok = self.amqp.as_ref().is_some_and(|a| !a.environment_in_topics);
        if !(empty_prefix_ok && self.topic_prefix.is_empty()) {
            if let Err(r) = check::topic_prefix(&self.topic_prefix) {
                return bad("topic_prefix", r);
            }
        }
        if let Some(amqp) = &self.amqp {
            crate::amqp::validate(amqp, file)?;
        }
        if let Err(r) = check::environment(&self.environment) {
            return bad("environment", r);
        }
        for (service, list) in &self.endpoints {
            if list.is_empty() {
                return bad(&join("endpoints", service), "no endpoints listed".into());
            }
            for (i, e) in list.iter().enumerate() {
                if let Err(r) = check::endpoint(e) {
                    return bad(&format!("{}[{i}]", join("endpoints", service)), r);
                }
            }
        }
        for (i, e) in self.relay_inbound.iter().enumerate() {
            if let Err(r) = check::endpoint(e) {
                return bad(&format!("relay_inbound[{i}]"), r);
            }
        }
        let paths = [
            ("ssldir", Some(&self.ssldir)),
            ("ca_cert_location", self.ca_cert_location.as_ref()),
            ("crl_location", self.crl_location.as_ref()),
        ];
        for (key, path) in paths {
            if let Some(Err(r)) = path.map(|p| check::local_path(p)) {
                return bad(key, r);
            }
        }
        if let Err(r) = check::HIGH_WATER_MARK.parse(&self.high_water_mark.to_string()) {
            return bad("high_water_mark", r);
        }

        // How to publish on ZeroMQ (through the relay or by binding); an
        // AMQP bus publishes to its broker either way.
        let zeromq = self.amqp.is_none();
        if zeromq && self.active && self.relay_inbound.is_empty() {
            return bad(
                "relay_inbound",
                "active = true publishes by connecting to relay_inbound, which is empty".into(),
            );
        }
        if let (Some(name), false, true) = (&self.name, self.active, zeromq) {
            if !self.endpoints.contains_key(name) {
                return bad(
                    "name",
                    format!(
                        "{name:?} is not a key of endpoints, so there is nowhere to bind \
                         (add endpoints.{} or set active = true)",
                        crate::error::segment(name)
                    ),
                );
            }
        }
        for (key, value, rule) in [
            (
                "max_message_size",
                self.max_message_size,
                check::MAX_MESSAGE_SIZE,
            ),
            (
                "dedupe_capacity",
                self.dedupe_capacity,
                check::DEDUPE_CAPACITY,
            ),
            (
                "max_subscriptions",
                self.max_subscriptions,
                check::MAX_SUBSCRIPTIONS,
            ),
            (
                "max_subscription_length",
                self.max_subscription_length,
                check::MAX_SUBSCRIPTION_LENGTH,
            ),
        ] {
            // usize -> u64 cannot fail on the platforms gilmsg builds for.
            let value = u64::try_from(value).unwrap_or(u64::MAX);
            if let Err(r) = rule.check(value) {
                return bad(key, r);
            }
        }
        if self.ack_timeout.is_zero() {
            return bad(
                "ack_timeout",
                check::duration_refusal("0 (it must be greater than 0)", check::BareUnit::Seconds),
            );
        }
        // Deadlines are `now + duration`: bounding the durations is what
        // keeps that sum from overflowing (and the thread from panicking).
        for (key, value) in [
            ("ack_timeout", self.ack_timeout),
            ("resend_initial", self.resend_initial),
            ("resend_min", self.resend_min),
            ("resend_max", self.resend_max),
            ("max_message_age", self.max_message_age),
            ("clock_skew", self.clock_skew),
        ] {
            if value > MAX_TIMEOUT {
                return bad(
                    key,
                    format!(
                        "{} is longer than the maximum, {}",
                        show(value),
                        show(MAX_TIMEOUT)
                    ),
                );
            }
        }
        if self.max_message_age.is_zero() {
            return bad("max_message_age", "must be greater than 0".into());
        }
        if let Some(interval) = self.heartbeat_interval {
            if let Err(r) = check::heartbeat_interval(interval) {
                return bad("heartbeat_interval", r);
            }
        }
        if let Some(monitoring) = &self.monitoring {
            if let Err(r) = check::monitoring_address(&monitoring.address) {
                return bad("monitoring.address", r);
            }
        }
        if self.max_message_age < self.ack_timeout {
            return bad(
                "max_message_age",
                format!(
                    "{} is below ack_timeout ({}): consumers would refuse the re-sends of a \
                     message before its publisher gives up",
                    show(self.max_message_age),
                    show(self.ack_timeout)
                ),
            );
        }
        if self.resend_min > self.resend_initial {
            return bad(
                "resend_min",
                format!(
                    "{} is above resend_initial ({}); need resend_min <= resend_initial <= resend_max",
                    show(self.resend_min),
                    show(self.resend_initial)
                ),
            );
        }
        if self.resend_initial > self.resend_max {
            return bad(
                "resend_initial",
                format!(
                    "{} is above resend_max ({}); need resend_min <= resend_initial <= resend_max",
                    show(self.resend_initial),
                    show(self.resend_max)
                ),
            );
        }
        Ok(())
    }

    /// This configuration as gilmsg TOML, which [`Config::from_toml_str`]
    /// reads back to an equal `Config` (except `ignored_keys`, `unknown_keys` and the
    /// source). For demos and tests that write throwaway configs.
    ///
    /// Durations are written as humantime strings. Relative paths are
    /// written as they are and will be resolved against the directory of
    /// wherever the text is saved. Paths that are not UTF-8 are written
    /// lossily (TOML strings are UTF-8).
    pub fn to_toml_string(&self) -> String {
        use toml::{Table, Value};
        let s = |v: &str| Value::String(v.to_owned());
        let d = |v: Duration| Value::String(show(v));
        let p = |v: &Path| Value::String(v.to_string_lossy().into_owned());
        let list = |v: &[String]| Value::Array(v.iter().map(|x| s(x)).collect());

        let mut t = Table::new();
        t.insert("topic_prefix".into(), s(&self.topic_prefix));
        t.insert("environment".into(), s(&self.environment));
        if let Some(v) = &self.name {
            t.insert("name".into(), s(v));
        }
        if let Some(v) = &self.hostname {
            t.insert("hostname".into(), s(v));
        }
        t.insert("active".into(), Value::Boolean(self.active));
        t.insert("relay_inbound".into(), list(&self.relay_inbound));
        t.insert("sign_messages".into(), Value::Boolean(self.sign_messages));
        t.insert(
            "validate_signatures".into(),
            Value::Boolean(self.validate_signatures),
        );
        t.insert("ssldir".into(), p(&self.ssldir));
        if let Some(v) = &self.ca_cert_location {
            t.insert("ca_cert_location".into(), p(v));
        }
        if self.crl_disabled {
            t.insert("crl_location".into(), s(""));
        } else if let Some(v) = &self.crl_location {
            t.insert("crl_location".into(), p(v));
        }
        t.insert("cert_prefix".into(), s(&self.cert_prefix));
        if let Some(v) = &self.certname {
            t.insert("certname".into(), s(v));
        }
        t.insert(
            "routing_nitpicky".into(),
            Value::Boolean(self.routing_nitpicky),
        );
        if self.strict_config {
            t.insert("strict_config".into(), Value::Boolean(true));
        }
        t.insert("ack_timeout".into(), d(self.ack_timeout));
        t.insert("resend_initial".into(), d(self.resend_initial));
        t.insert("resend_min".into(), d(self.resend_min));
        t.insert("resend_max".into(), d(self.resend_max));
        // usize -> i64 only fails above 2^63 bytes, which no machine has.
        let int = |v: usize| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        t.insert("max_message_size".into(), int(self.max_message_size));
        t.insert("dedupe_capacity".into(), int(self.dedupe_capacity));
        t.insert("max_subscriptions".into(), int(self.max_subscriptions));
        t.insert(
            "max_subscription_length".into(),
            int(self.max_subscription_length),
        );
        t.insert("max_message_age".into(), d(self.max_message_age));
        t.insert("clock_skew".into(), d(self.clock_skew));
        t.insert(
            "require_ack_digest".into(),
            Value::Boolean(self.require_ack_digest),
        );
        t.insert(
            "high_water_mark".into(),
            Value::Integer(self.high_water_mark.into()),
        );
        t.insert("zmq_linger".into(), d(self.zmq_linger));
        t.insert("zmq_reconnect_ivl".into(), d(self.zmq_reconnect_ivl));
        t.insert(
            "zmq_reconnect_ivl_max".into(),
            d(self.zmq_reconnect_ivl_max),
        );
        t.insert(
            "zmq_tcp_keepalive".into(),
            Value::Boolean(self.zmq_tcp_keepalive),
        );
        if let Some(v) = self.post_init_sleep {
            t.insert("post_init_sleep".into(), d(v));
        }
        if let Some(v) = self.heartbeat_interval {
            t.insert("heartbeat_interval".into(), d(v));
        }
        if let Some(m) = &self.monitoring {
            let mut section = Table::new();
            section.insert("address".into(), s(&m.address));
            section.insert("port".into(), Value::Integer(m.port.into()));
            t.insert("monitoring".into(), Value::Table(section));
        }
        let table_of_lists = |m: &BTreeMap<String, Vec<String>>| {
            Value::Table(m.iter().map(|(k, v)| (k.clone(), list(v))).collect())
        };
        t.insert("endpoints".into(), table_of_lists(&self.endpoints));
        t.insert(
            "certnames".into(),
            Value::Table(
                self.certnames
                    .iter()
                    .map(|(k, v)| (k.clone(), s(v)))
                    .collect(),
            ),
        );
        t.insert(
            "routing_policy".into(),
            table_of_lists(&self.routing_policy),
        );
        if let Some(amqp) = &self.amqp {
            write_amqp(&mut t, amqp, self);
        }
        if !self.schemas.is_empty() {
            let entry = |e: crate::SchemaEntry<'_>| {
                let mut t = Table::new();
                t.insert("file".into(), p(e.file));
                t.insert("name".into(), s(e.name));
                (e.pattern.to_owned(), Value::Table(t))
            };
            t.insert(
                "schemas".into(),
                Value::Table(self.schemas.entries().map(entry).collect()),
            );
        }
        format!("# gilmsg configuration\n{t}")
    }
}

/// The AMQP keys of [`Config::to_toml_string`].
fn write_amqp(t: &mut toml::Table, a: &AmqpConfig, c: &Config) {
    use toml::{Table, Value};
    let s = |v: &str| Value::String(v.to_owned());
    let p = |v: &Path| Value::String(v.to_string_lossy().into_owned());
    let args = |m: &BTreeMap<String, serde_json::Value>| {
        Value::Table(
            m.iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k.clone(), v)))
                .collect(),
        )
    };
    t.insert("amqp_url".into(), s(&a.url));
    if !a.environment_in_topics {
        // The environment is not part of this file's topics.
        t.remove("environment");
    } else {
        t.insert("environment".into(), s(&c.environment));
    }
    t.insert("publish_exchange".into(), s(&a.publish_exchange));
    t.insert(
        "passive_declares".into(),
        Value::Boolean(a.passive_declares),
    );
    if let Some(v) = a.publish_priority {
        t.insert("publish_priority".into(), Value::Integer(v.into()));
    }
    t.insert(
        "max_redeliveries".into(),
        Value::Integer(a.max_redeliveries.into()),
    );
    t.insert("reconnect_max".into(), s(&show(a.reconnect_max)));
    let mut tls = Table::new();
    for (k, v) in [
        ("ca_cert", &a.tls.ca_cert),
        ("keyfile", &a.tls.keyfile),
        ("certfile", &a.tls.certfile),
    ] {
        if let Some(v) = v {
            tls.insert(k.into(), p(v));
        }
    }
    t.insert("tls".into(), Value::Table(tls));
    t.insert(
        "client_properties".into(),
        Value::Table(
            a.client_properties
                .iter()
                .map(|(k, v)| (k.clone(), s(v)))
                .collect(),
        ),
    );
    let mut exchanges = Table::new();
    for (name, x) in &a.exchanges {
        let mut e = Table::new();
        e.insert("type".into(), s(&x.kind));
        e.insert("durable".into(), Value::Boolean(x.durable));
        e.insert("auto_delete".into(), Value::Boolean(x.auto_delete));
        e.insert("arguments".into(), args(&x.arguments));
        exchanges.insert(name.clone(), Value::Table(e));
    }
    t.insert("exchanges".into(), Value::Table(exchanges));
    let mut queues = Table::new();
    for (name, q) in &a.queues {
        let mut e = Table::new();
        e.insert("durable".into(), Value::Boolean(q.durable));
        e.insert("auto_delete".into(), Value::Boolean(q.auto_delete));
        e.insert("exclusive".into(), Value::Boolean(q.exclusive));
        e.insert("arguments".into(), args(&q.arguments));
        queues.insert(name.clone(), Value::Table(e));
    }
    t.insert("queues".into(), Value::Table(queues));
    let bindings = a
        .bindings
        .iter()
        .map(|b| {
            let mut e = Table::new();
            e.insert("queue".into(), s(&b.queue));
            e.insert("exchange".into(), s(&b.exchange));
            e.insert(
                "routing_keys".into(),
                Value::Array(b.routing_keys.iter().map(|k| s(k)).collect()),
            );
            e.insert("arguments".into(), args(&b.arguments));
            Value::Table(e)
        })
        .collect();
    t.insert("bindings".into(), Value::Array(bindings));
    let mut qos = Table::new();
    qos.insert(
        "prefetch_count".into(),
        Value::Integer(a.prefetch_count.into()),
    );
    qos.insert(
        "prefetch_size".into(),
        Value::Integer(a.prefetch_size.into()),
    );
    t.insert("qos".into(), Value::Table(qos));
}

/// A JSON value as TOML, where TOML can hold it (not `null`).
fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    })
}

/// A duration as humantime writes it (`50ms`, `1s 500ms`), which is also
/// what the parser reads.
fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn machine_hostname() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_env = || std::env::var("HOSTNAME").ok();
    let full = from_proc
        .filter(|h| !h.trim().is_empty())
        .or_else(|| from_env().filter(|h| !h.trim().is_empty()))
        .unwrap_or_else(|| "localhost".into());
    short_hostname(full.trim()).to_owned()
}

/// fedmsg keys certificates by the host's short name.
fn short_hostname(full: &str) -> &str {
    full.split('.').next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            hostname: Some("app01".into()),
            ..Config::default()
        }
    }

    #[test]
    fn short_hostname_cuts_at_first_dot() {
        assert_eq!(short_hostname("app01.phx2.fedoraproject.org"), "app01");
        assert_eq!(short_hostname("box"), "box");
    }

    #[test]
    fn certname_rule() {
        let mut c = cfg();
        // Nothing configured: fedmsg's "<cert_prefix>.<hostname>".
        assert_eq!(c.certname("bodhi"), "shell.app01");
        c.cert_prefix = "relay".into();
        assert_eq!(c.certname("bodhi"), "relay.app01");
        // certnames entry for the prefix wins over the bare fallback.
        c.certnames
            .insert("relay.app01".into(), "relay-app01.example.org".into());
        assert_eq!(c.certname("bodhi"), "relay-app01.example.org");
        // certnames entry for "<modname>.<hostname>" wins over both.
        c.certnames
            .insert("bodhi.app01".into(), "bodhi-app01.example.org".into());
        assert_eq!(c.certname("bodhi"), "bodhi-app01.example.org");
        assert_eq!(c.certname("other"), "relay-app01.example.org");
        // Explicit certname wins over everything.
        c.certname = Some("explicit".into());
        assert_eq!(c.certname("bodhi"), "explicit");
    }

    #[test]
    fn hostname_override_is_used() {
        assert_eq!(cfg().hostname(), "app01");
        assert!(!Config::default().hostname().is_empty());
    }

    #[test]
    fn ca_and_crl_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.ssldir = dir.path().to_path_buf();
        assert_eq!(c.ca_cert_path(), dir.path().join("ca.crt"));
        // No crl.pem in ssldir: no CRL.
        assert_eq!(c.crl_path(), None);
        std::fs::write(dir.path().join("crl.pem"), "x").unwrap();
        assert_eq!(c.crl_path(), Some(dir.path().join("crl.pem")));
        c.ca_cert_location = Some("/x/ca.pem".into());
        c.crl_location = Some("/x/missing.pem".into());
        assert_eq!(c.ca_cert_path(), PathBuf::from("/x/ca.pem"));
        assert_eq!(c.crl_path(), Some(PathBuf::from("/x/missing.pem")));
        // Disabled wins over both the explicit path and ssldir/crl.pem.
        c.crl_disabled = true;
        assert_eq!(c.crl_path(), None);
        c.crl_location = None;
        assert_eq!(c.crl_path(), None);
    }

    #[test]
    fn certname_by_fedmsg_name_only_when_binding() {
        let mut c = cfg();
        c.certnames.insert("pub.box".into(), "pub-cert".into());
        c.certnames
            .insert("shell.app01".into(), "shell-cert".into());
        c.name = Some("pub.box".into());
        // fedmsg.init(name="pub.box") binds and signs as certnames["pub.box"].
        assert_eq!(c.certname_for("svc", false), "pub-cert");
        assert_eq!(c.certname("svc"), "pub-cert");
        // Active publishers (loggers) use the cert_prefix rule.
        assert_eq!(c.certname_for("logger", true), "shell-cert");
        c.active = true;
        assert_eq!(c.certname("logger"), "shell-cert");
        // fedmsg's name for active publishers is relay_inbound: never a key.
        c.active = false;
        c.name = Some("relay_inbound".into());
        c.certnames.insert("relay_inbound".into(), "nope".into());
        assert_eq!(c.certname("logger"), "shell-cert");
    }

    #[test]
    fn endpoints_and_topics() {
        let mut c = cfg();
        c.endpoints.insert(
            "relay_outbound".into(),
            vec!["tcp://a:1".into(), "tcp://b:2".into()],
        );
        c.endpoints.insert(
            "bodhi.app01".into(),
            vec!["tcp://b:2".into(), "tcp://c:3".into()],
        );
        assert_eq!(
            c.subscribe_endpoints(),
            ["tcp://b:2", "tcp://c:3", "tcp://a:1"]
        );
        assert_eq!(c.own_endpoints(), None);
        c.name = Some("bodhi.app01".into());
        assert_eq!(
            c.own_endpoints(),
            Some(&["tcp://b:2".to_string(), "tcp://c:3".to_string()][..])
        );
        c.environment = "prod".into();
        let scheme = c.topic_scheme();
        assert_eq!(scheme.ack_topic(), "org.fedoraproject.prod.gilmsg.ack");
        assert_eq!(
            scheme.topic("bodhi", "update.comment"),
            "org.fedoraproject.prod.bodhi.update.comment"
        );
    }

    fn key_of(c: &Config) -> String {
        c.validate().unwrap_err().key().unwrap().to_owned()
    }

    #[test]
    fn validate_cross_checks() {
        let mut ok = cfg();
        ok.endpoints
            .insert("svc.app01".into(), vec!["tcp://127.0.0.1:3000".into()]);
        ok.name = Some("svc.app01".into());
        ok.validate().unwrap();

        let mut c = ok.clone();
        c.active = true;
        assert_eq!(key_of(&c), "relay_inbound");
        c.relay_inbound = vec!["tcp://127.0.0.1:2001".into()];
        c.name = Some("not-there".into());
        // Active processes connect, so their name need not be bound.
        c.validate().unwrap();
        c.active = false;
        assert_eq!(key_of(&c), "name");

        let mut c = ok.clone();
        c.max_message_size = 0;
        assert_eq!(key_of(&c), "max_message_size");
        // Four times it is the sockets' frame cap (an int64): a huge value
        // used to wrap that cap down to 64 KiB. At most 1 GiB.
        for huge in [(1 << 30) + 1, usize::MAX / 4 + 1, usize::MAX] {
            c.max_message_size = huge;
            assert_eq!(key_of(&c), "max_message_size", "{huge}");
        }
        c.max_message_size = 1 << 30;
        c.validate().unwrap();

        let mut c = ok.clone();
        c.max_message_age = Duration::from_secs(4);
        assert_eq!(key_of(&c), "max_message_age");
        c.max_message_age = Duration::ZERO;
        assert_eq!(key_of(&c), "max_message_age");

        let mut c = ok.clone();
        c.resend_min = Duration::from_millis(60);
        assert_eq!(key_of(&c), "resend_min");
        let mut c = ok.clone();
        c.resend_max = Duration::from_millis(40);
        assert_eq!(key_of(&c), "resend_initial");
        let mut c = ok.clone();
        c.resend_min = c.resend_initial;
        c.resend_max = c.resend_initial;
        c.validate().unwrap();

        let mut c = ok.clone();
        c.environment = "a.b".into();
        assert_eq!(key_of(&c), "environment");
        let mut c = ok.clone();
        c.endpoints.insert("x.y".into(), vec!["nope".into()]);
        assert_eq!(key_of(&c), "endpoints.\"x.y\"[0]");
        let mut c = ok.clone();
        c.ca_cert_location = Some("https://example.org/ca.crt".into());
        assert_eq!(key_of(&c), "ca_cert_location");
        let mut c = ok;
        c.high_water_mark = -1;
        assert_eq!(key_of(&c), "high_water_mark");
    }
}
