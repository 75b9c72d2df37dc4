//! Turning a parsed document into a [`Config`], one known key at a time.
//!
//! Both syntaxes are first brought to a `serde_json::Value` tree (TOML has
//! nothing JSON cannot hold, except datetimes, which no key of ours takes),
//! so there is one code path for the keys and both formats give the same
//! errors. Each key is taken out of the top-level map and deserialized on
//! its own through `serde_path_to_error`, which yields the path inside the
//! value (`[1]`, `.bodhi`); whatever is left in the map afterwards is an
//! unknown key and goes to [`Config::ignored_keys`]. The reader records
//! every key it asks for: that record *is* the list of known keys against
//! which unknown ones are matched for typos ([`crate::keys`]).
//!
//! We deliberately avoid `#[serde(flatten)]` / `untagged` here: with
//! serde_json's `arbitrary_precision` (on in this workspace) numbers inside
//! buffered content arrive as maps and such derives fail on them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::amqp::{AmqpConfig, BindingConfig, ExchangeConfig, QueueConfig};
use crate::check::{self, BareUnit, WholeNumber};
use crate::config::Config;
use crate::error::{join, segment, ConfigError};
use crate::keys::{self, Report};

/// Which defaults apply to keys the file leaves out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// gilmsg TOML: secure defaults.
    Gilmsg,
    /// `fedmsg-config` JSON: fedmsg's defaults where they differ.
    Fedmsg,
}

impl Config {
    /// Reads gilmsg TOML. `origin` is the file the text came from: it names
    /// the file in errors and is the base for relative paths.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError::Syntax {
                path: origin.to_path_buf(),
                line,
                column,
                // toml's messages can span lines; errors here are one line.
                message: e.message().trim().lines().collect::<Vec<_>>().join("; "),
            }
        })?;
        let map = table
            .into_iter()
            .map(|(k, v)| (k, toml_to_json(v)))
            .collect();
        from_map(map, origin, Dialect::Gilmsg)
    }

    /// Reads the JSON that fedmsg's `fedmsg-config` prints. Keys the file
    /// leaves out take fedmsg's defaults where they differ from gilmsg's
    /// (`sign_messages` and `validate_signatures` are then `false`), and a
    /// `null` value counts as left out, as fedmsg's `None` does, except:
    ///
    /// - `crl_location: null` (or `""`) turns revocation checking off, as it
    ///   does in fedmsg ([`Config::crl_disabled`]);
    /// - `ca_cert_location` and `crl_location` left out mean Fedora's HTTPS
    ///   URLs in fedmsg; gilmsg fetches nothing and uses `<ssldir>/ca.crt`
    ///   and, if it exists, `<ssldir>/crl.pem` instead;
    /// - `certname` is ignored (listed in `ignored_keys`): `fedmsg.publish`
    ///   overwrites it with the `certnames` lookup, which
    ///   [`Config::certname`] follows.
    pub fn from_fedmsg_json_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            // serde_json appends " at line L column C"; we report those as fields.
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
            ConfigError::Syntax {
                path: origin.to_path_buf(),
                line: (e.line() > 0).then_some(e.line()),
                column: (e.column() > 0).then_some(e.column()),
                message,
            }
        })?;
        let Value::Object(map) = value else {
            return Err(ConfigError::Syntax {
                path: origin.to_path_buf(),
                line: None,
                column: None,
                message: "expected a JSON object of configuration keys at the top level".into(),
            });
        };
        from_map(map, origin, Dialect::Fedmsg)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        // Non-finite floats have no JSON form; as text they still fail with
        // a readable "invalid type" if given to a key we use.
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The top-level map being consumed, and where it came from.
struct Reader<'a> {
    map: Map<String, Value>,
    origin: &'a Path,
    /// The directory relative paths and `ipc://` endpoints resolve against:
    /// the file's own, made absolute.
    base: PathBuf,
    /// Every key asked for, present or not: the keys gilmsg knows.
    known: BTreeSet<String>,
}

impl Reader<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::invalid(Some(self.origin), key, reason)
    }

    /// Looks at `key` without taking it (and records it as known).
    fn peek(&mut self, key: &str) -> Option<&Value> {
        self.known.insert(key.to_owned());
        self.map.get(key)
    }

    /// Removes `key` and deserializes it; `None` when absent or `null`.
    fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ConfigError> {
        self.known.insert(key.to_owned());
        let value = match self.map.remove(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        serde_path_to_error::deserialize(value)
            .map(Some)
            .map_err(|e| {
                let mut path = segment(key);
                for seg in e.path() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            path.push_str(&format!("[{index}]"))
                        }
                        serde_path_to_error::Segment::Map { key } => path = join(&path, key),
                        serde_path_to_error::Segment::Enum { variant } => {
                            path = join(&path, variant)
                        }
                        serde_path_to_error::Segment::Unknown => path.push_str(".?"),
                    }
                }
                self.invalid(path, e.into_inner().to_string())
            })
    }

    /// A local path, refused if it is a URL, resolved against the config
    /// file's directory if relative (so test and demo configs can be moved
    /// around with their certificates).
    fn take_path(&mut self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        let Some(raw) = self.take::<String>(key)? else {
            return Ok(None);
        };
        let path = PathBuf::from(&raw);
        check::local_path(&path).map_err(|r| self.invalid(key, r))?;
        Ok(Some(if path.is_relative() {
            self.base.join(path)
        } else {
            path
        }))
    }

    /// A whole number within `rule`, refused in `rule`'s one wording.
    fn take_count(&mut self, key: &str, rule: WholeNumber) -> Result<Option<u64>, ConfigError> {
        match self.take::<Count>(key)? {
            None => Ok(None),
            Some(Count(text)) => rule
                .parse(&text)
                .map(Some)
                .map_err(|r| self.invalid(key, r)),
        }
    }

    fn check_endpoints(&self, key: &str, list: &OneOrMany) -> Result<(), ConfigError> {
        match list {
            OneOrMany::One(e) => check::endpoint(e).map_err(|r| self.invalid(key, r)),
            OneOrMany::Many(v) => v.iter().enumerate().try_for_each(|(i, e)| {
                check::endpoint(e).map_err(|r| self.invalid(format!("{key}[{i}]"), r))
            }),
        }
    }

    /// Checked endpoints, with relative `ipc://` paths resolved against the
    /// file's directory, as the operator's guide promises for every path.
    fn endpoints(&self, key: &str, list: OneOrMany) -> Result<Vec<String>, ConfigError> {
        self.check_endpoints(key, &list)?;
        let list: Vec<String> = list.into();
        Ok(list
            .iter()
            .map(|e| check::resolve_ipc(e, &self.base))
            .collect())
    }
}

/// The directory of `origin`, absolute: a relative one is taken against the
/// working directory now, once, rather than wherever a process happens to
/// be when it opens a file or socket later.
pub(crate) fn base_dir(origin: &Path) -> PathBuf {
    let dir = origin.parent().unwrap_or(Path::new(""));
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    }
}

fn from_map(
    map: Map<String, Value>,
    origin: &Path,
    dialect: Dialect,
) -> Result<Config, ConfigError> {
    let mut r = Reader {
        map,
        origin,
        base: base_dir(origin),
        known: BTreeSet::new(),
    };
    let mut c = Config::default();
    if dialect == Dialect::Fedmsg {
        // fedmsg.load_config() has no default for these, and fedmsg reads
        // them with .get(), so a fedmsg deployment that never mentions them
        // runs unsigned. Keep that when migrating; TOML stays secure.
        c.sign_messages = false;
        c.validate_signatures = false;
        // fedmsg leaves the high-water mark unset (unlimited) by default.
        c.high_water_mark = 0;
    }

    // fedora-messaging's meaning of topic_prefix (the whole prefix, empty
    // by default) applies to AMQP files: see `amqp.rs`.
    let is_amqp = r.peek("amqp_url").is_some_and(|v| !v.is_null());
    let file_sets_environment = r.peek("environment").is_some_and(|v| !v.is_null());
    if is_amqp {
        c.topic_prefix = String::new();
    }

    // Keys whose file type is the field type.
    macro_rules! plain {
        ($($field:ident),* $(,)?) => {$(
            if let Some(v) = r.take(stringify!($field))? {
                c.$field = v;
            }
        )*};
    }
    // Keys read through a wrapper type that converts into the field type.
    macro_rules! via {
        ($($field:ident: $wrapper:ty),* $(,)?) => {$(
            if let Some(v) = r.take::<$wrapper>(stringify!($field))? {
                c.$field = v.into();
            }
        )*};
    }
    plain!(
        topic_prefix,
        environment,
        active,
        sign_messages,
        validate_signatures,
        certnames,
        cert_prefix,
        routing_policy,
        routing_nitpicky,
        strict_config,
        require_ack_digest,
    );
    via!(
        ack_timeout: Secs,
        max_message_age: Secs,
        clock_skew: Secs,
        resend_initial: Secs,
        resend_min: Secs,
        resend_max: Secs,
        zmq_linger: Millis,
        zmq_reconnect_ivl: Millis,
        zmq_reconnect_ivl_max: Millis,
        zmq_tcp_keepalive: Flag,
    );
    // The rules' ranges fit the field types, so the conversions below
    // cannot fail; they keep their error path rather than a panic.
    if let Some(n) = r.take_count("max_message_size", check::MAX_MESSAGE_SIZE)? {
        c.max_message_size = usize::try_from(n).map_err(|_| {
            r.invalid(
                "max_message_size",
                check::MAX_MESSAGE_SIZE.refusal(&n.to_string()),
            )
        })?;
    }
    if let Some(n) = r.take_count("dedupe_capacity", check::DEDUPE_CAPACITY)? {
        c.dedupe_capacity = usize::try_from(n).map_err(|_| {
            r.invalid(
                "dedupe_capacity",
                check::DEDUPE_CAPACITY.refusal(&n.to_string()),
            )
        })?;
    }
    for (key, field, rule) in [
        (
            "max_subscriptions",
            &mut c.max_subscriptions,
            check::MAX_SUBSCRIPTIONS,
        ),
        (
            "max_subscription_length",
            &mut c.max_subscription_length,
            check::MAX_SUBSCRIPTION_LENGTH,
        ),
    ] {
        if let Some(n) = r.take_count(key, rule)? {
            *field =
                usize::try_from(n).map_err(|_| r.invalid(key, rule.refusal(&n.to_string())))?;
        }
    }
    if let Some(n) = r.take_count("high_water_mark", check::HIGH_WATER_MARK)? {
        c.high_water_mark = i32::try_from(n).map_err(|_| {
            r.invalid(
                "high_water_mark",
                check::HIGH_WATER_MARK.refusal(&n.to_string()),
            )
        })?;
    }
    c.name = r.take("name")?;
    c.hostname = r.take("hostname")?;
    if dialect == Dialect::Gilmsg {
        // fedmsg.publish overwrites any `certname` in its config with the
        // certnames lookup, so in a fedmsg dump the key decides nothing and
        // is left to ignored_keys; honouring it would sign differently from
        // the fedmsg processes reading the same file.
        c.certname = r.take("certname")?;
    }
    c.post_init_sleep = r.take::<Secs>("post_init_sleep")?.map(Into::into);
    c.heartbeat_interval = r.take::<Secs>("heartbeat_interval")?.map(Into::into);
    if let Some(section) = r.take::<Map<String, Value>>("monitoring")? {
        c.monitoring = monitoring(&r, section)?;
    }

    if let Some(map) = r.take::<BTreeMap<String, OneOrMany>>("endpoints")? {
        for (service, list) in map {
            let list = r.endpoints(&join("endpoints", &service), list)?;
            c.endpoints.insert(service, list);
        }
    }
    if let Some(list) = r.take::<OneOrMany>("relay_inbound")? {
        c.relay_inbound = r.endpoints("relay_inbound", list)?;
    }
    if let Some(p) = r.take_path("ssldir")? {
        c.ssldir = p;
    }
    if r.peek("ca_cert_location") == Some(&Value::String(String::new())) {
        return Err(r.invalid(
            "ca_cert_location",
            "is empty; give the CA certificate's path, or leave the key out to use \
             <ssldir>/ca.crt",
        ));
    }
    c.ca_cert_location = r.take_path("ca_cert_location")?;
    // fedmsg skips the CRL check when crl_location is None or "", which is
    // not the same as leaving the key out (see Config::crl_disabled).
    let no_crl = match r.peek("crl_location") {
        Some(Value::Null) => dialect == Dialect::Fedmsg,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if no_crl {
        r.map.remove("crl_location");
        c.crl_disabled = true;
    } else {
        c.crl_location = r.take_path("crl_location")?;
    }

    if let Some(map) = r.take::<BTreeMap<String, SchemaSpec>>("schemas")? {
        for (pattern, spec) in map {
            let key = join("schemas", &pattern);
            let file = PathBuf::from(&spec.file);
            check::local_path(&file).map_err(|e| r.invalid(format!("{key}.file"), e))?;
            let file = if file.is_relative() {
                r.base.join(file)
            } else {
                file
            };
            c.schemas
                .insert(&pattern, &file, spec.name.as_deref())
                .map_err(|e| r.invalid(&key, e))?;
        }
    }

    // Known in both dialects, even where one of them ignores it.
    r.known.insert("certname".to_owned());

    if is_amqp {
        c.amqp = Some(read_amqp(&mut r, file_sets_environment)?);
    }

    c.ignored_keys = r.map.keys().cloned().collect();
    c.ignored_keys.sort();
    let report = match dialect {
        Dialect::Gilmsg => Report::All,
        Dialect::Fedmsg => Report::LikelyTypos,
    };
    c.unknown_keys = keys::unknown_keys(&c.ignored_keys, &r.known, origin, report);
    c.source = Some(origin.to_path_buf());
    c.validate()?;
    if c.strict_config {
        c.check_strict()?;
    }
    Ok(c)
}

/// fedora-messaging's keys, for a file with `amqp_url`.
fn read_amqp(r: &mut Reader, environment_in_topics: bool) -> Result<AmqpConfig, ConfigError> {
    let url: String = r.take("amqp_url")?.unwrap_or_default();
    crate::amqp::check_url(&url).map_err(|why| r.invalid("amqp_url", why))?;
    let mut a = AmqpConfig::new(url);
    a.environment_in_topics = environment_in_topics;
    if let Some(v) = r.take("publish_exchange")? {
        a.publish_exchange = v;
    }
    if let Some(v) = r.take("passive_declares")? {
        a.passive_declares = v;
    }
    if let Some(n) = r.take_count("publish_priority", check::PUBLISH_PRIORITY)? {
        a.publish_priority = u8::try_from(n).ok();
    }
    if let Some(n) = r.take_count("max_redeliveries", check::MAX_REDELIVERIES)? {
        a.max_redeliveries = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(v) = r.take::<Secs>("reconnect_max")? {
        a.reconnect_max = v.into();
    }
    if let Some(tls) = r.take::<TlsToml>("tls")? {
        for (key, value, field) in [
            ("ca_cert", tls.ca_cert, &mut a.tls.ca_cert),
            ("keyfile", tls.keyfile, &mut a.tls.keyfile),
            ("certfile", tls.certfile, &mut a.tls.certfile),
        ] {
            let Some(raw) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            let path = PathBuf::from(&raw);
            check::local_path(&path).map_err(|why| r.invalid(join("tls", key), why))?;
            *field = Some(if path.is_relative() {
                r.base.join(path)
            } else {
                path
            });
        }
    }
    if let Some(props) = r.take::<BTreeMap<String, Value>>("client_properties")? {
        for (key, value) in props {
            let text = match value {
                Value::String(s) => s,
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => {
                    return Err(r.invalid(
                        join("client_properties", &key),
                        "must be a string, number or boolean",
                    ))
                }
            };
            a.client_properties.insert(key, text);
        }
    }
    if let Some(exchanges) = r.take::<BTreeMap<String, ExchangeToml>>("exchanges")? {
        a.exchanges = exchanges
            .into_iter()
            .map(|(name, e)| {
                let x = ExchangeConfig {
                    kind: e.kind,
                    durable: e.durable,
                    auto_delete: e.auto_delete,
                    arguments: e.arguments,
                };
                (name, x)
            })
            .collect();
        for (name, x) in &a.exchanges {
            if !["topic", "direct", "fanout", "headers"].contains(&x.kind.as_str()) {
                return Err(r.invalid(
                    format!("{}.type", join("exchanges", name)),
                    format!(
                        "{:?} is not an exchange type (topic, direct, fanout, headers)",
                        x.kind
                    ),
                ));
            }
        }
    }
    if let Some(queues) = r.take::<BTreeMap<String, QueueToml>>("queues")? {
        // fedora-messaging's default queue is server-named (""): gilmsg's
        // consumer uses its identity queue for it (see `AmqpConfig::queues`).
        a.queues = queues
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, q)| {
                let x = QueueConfig {
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    exclusive: q.exclusive,
                    arguments: q.arguments,
                };
                (name, x)
            })
            .collect();
    }
    if let Some(bindings) = r.take::<Vec<BindingToml>>("bindings")? {
        for (i, b) in bindings.into_iter().enumerate() {
            if b.routing_keys.is_empty() {
                return Err(r.invalid(
                    format!("bindings[{i}].routing_keys"),
                    "lists no routing key",
                ));
            }
            if !b.queue.is_empty() && !a.queues.contains_key(&b.queue) {
                return Err(r.invalid(
                    format!("bindings[{i}].queue"),
                    format!("{:?} is not a key of [queues]", b.queue),
                ));
            }
            let mut x = BindingConfig::new(b.queue, b.exchange, b.routing_keys);
            x.arguments = b.arguments;
            a.bindings.push(x);
        }
    }
    if let Some(qos) = r.take::<BTreeMap<String, Value>>("qos")? {
        for (key, value) in qos {
            let text = match &value {
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            let at = join("qos", &key);
            match key.as_str() {
                "prefetch_count" => {
                    let n = check::PREFETCH_COUNT
                        .parse(&text)
                        .map_err(|why| r.invalid(&at, why))?;
                    a.prefetch_count = u16::try_from(n).unwrap_or(u16::MAX);
                }
                "prefetch_size" => {
                    let n = check::PREFETCH_SIZE
                        .parse(&text)
                        .map_err(|why| r.invalid(&at, why))?;
                    a.prefetch_size = u32::try_from(n).unwrap_or(u32::MAX);
                }
                _ => return Err(r.invalid(at, "not a qos key (prefetch_count, prefetch_size)")),
            }
        }
    }
    for key in crate::amqp::FEDORA_MESSAGING_ONLY {
        r.map.remove(*key);
        r.known.insert((*key).to_owned());
    }
    Ok(a)
}

fn yes() -> bool {
    true
}

fn topic_kind() -> String {
    "topic".into()
}

/// `[tls]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsToml {
    ca_cert: Option<String>,
    keyfile: Option<String>,
    certfile: Option<String>,
}

/// One `[exchanges]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeToml {
    #[serde(rename = "type", default = "topic_kind")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

/// One `[queues]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueToml {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

/// One `[[bindings]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingToml {
    #[serde(default)]
    queue: String,
    exchange: String,
    routing_keys: Vec<String>,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

/// fedora-messaging's `[monitoring]` section: `address` (default `""`,
/// every interface) and `port` (required); an empty section turns
/// monitoring off, as there. Any other key is refused, naming it: a
/// misspelt `prot` would otherwise leave monitoring silently off.
fn monitoring(
    r: &Reader<'_>,
    mut section: Map<String, Value>,
) -> Result<Option<crate::Monitoring>, ConfigError> {
    if section.is_empty() {
        return Ok(None);
    }
    let address = match section.remove("address") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(r.invalid(
                "monitoring.address",
                format!("must be a string (an address, or \"\" for every interface), not {other}"),
            ))
        }
    };
    check::monitoring_address(&address).map_err(|why| r.invalid("monitoring.address", why))?;
    let port =
        match section.remove("port") {
            None | Some(Value::Null) => return Err(r.invalid(
                "monitoring.port",
                "must be set to turn monitoring on (an empty [monitoring] section turns it off)",
            )),
            Some(value) => {
                let text = match &value {
                    Value::Number(n) => n.to_string(),
                    other => other.to_string(),
                };
                check::MONITORING_PORT
                    .parse(&text)
                    .map_err(|why| r.invalid("monitoring.port", why))?
            }
        };
    if let Some(key) = section.keys().next() {
        return Err(r.invalid(
            join("monitoring", key),
            "not a key of [monitoring] (address, port)",
        ));
    }
    Ok(Some(crate::Monitoring {
        address,
        // The rule's range is that of a port.
        port: u16::try_from(port).unwrap_or(u16::MAX),
    }))
}

/// fedmsg's `iterate()`: a value that may be one string or a list of them.
/// Remembers which, so an error on a single string is reported at the key
/// itself rather than at a `[0]` the file does not contain.
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Vec<String> {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint string or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(s.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[schemas]` entry: a file path, or `{ file = "...", name = "..." }`.
struct SchemaSpec {
    file: String,
    name: Option<String>,
}

impl<'de> Deserialize<'de> for SchemaSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SchemaSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a schema file's path, or a table { file = \"...\", name = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SchemaSpec, E> {
                Ok(SchemaSpec {
                    file: s.to_owned(),
                    name: None,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<SchemaSpec, A::Error> {
                let (mut file, mut name) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "file" => file = Some(map.next_value::<String>()?),
                        "name" => name = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key {other:?}: an entry takes `file` and `name`; \
                                 a topic pattern must be quoted, or its dots make nested \
                                 tables (\"org.example.#\" = ...)"
                            )))
                        }
                    }
                }
                let file = file.ok_or_else(|| de::Error::missing_field("file"))?;
                Ok(SchemaSpec { file, name })
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration whose bare numbers are seconds (gilmsg's keys, fedmsg's
/// `post_init_sleep`).
struct Secs(Duration);
/// A duration whose bare numbers are milliseconds (fedmsg's `zmq_*` keys,
/// passed straight to ZeroMQ, which counts in ms).
struct Millis(Duration);

impl From<Secs> for Duration {
    fn from(v: Secs) -> Duration {
        v.0
    }
}
impl From<Millis> for Duration {
    fn from(v: Millis) -> Duration {
        v.0
    }
}

struct DurationVisitor {
    unit: BareUnit,
}

impl DurationVisitor {
    fn refuse<E: de::Error>(&self, shown: &str) -> E {
        E::custom(check::duration_refusal(shown, self.unit))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&check::duration_refusal("this", self.unit))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Ok(match self.unit {
            BareUnit::Seconds => Duration::from_secs(n),
            BareUnit::Milliseconds => Duration::from_millis(n),
        })
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(self.refuse(&n.to_string())),
        }
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Duration, E> {
        check::duration_from_number(x, self.unit).ok_or_else(|| self.refuse(&x.to_string()))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Duration, E> {
        Err(self.refuse(&b.to_string()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        // A quoted bare number ("5") is refused: in a file a number is
        // written as a number, and a quoted one is more likely a unit left out.
        if s.trim().parse::<f64>().is_ok() {
            return Err(self.refuse(&format!("{s:?}")));
        }
        check::duration(s, self.unit).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit: BareUnit::Seconds,
        })
        .map(Secs)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit: BareUnit::Milliseconds,
        })
        .map(Millis)
    }
}

/// A number for a whole-number key (sizes, capacities, the high-water
/// mark), kept as the text it was written as: the range check and its one
/// wording are [`WholeNumber`]'s, whatever was written (`-1`, `1.5`,
/// `"lots"`, `true`).
struct Count(String);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<String, E> {
                Ok(x.to_string())
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
                Ok(b.to_string())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
                Ok(format!("{s:?}"))
            }
        }
        d.deserialize_any(V).map(Count)
    }
}

/// fedmsg's `zmq_tcp_keepalive` is an int "interpreted as a boolean"; ours
/// is a bool. Take both.
struct Flag(bool);

impl From<Flag> for bool {
    fn from(v: Flag) -> bool {
        v.0
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean, or 0 / 1 as fedmsg writes it")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<bool, E> {
                Ok(b)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<bool, E> {
                Ok(n != 0)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<bool, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
                }
            }
        }
        d.deserialize_any(V).map(Flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/cfg/bus.toml"))
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn durations_in_both_units() {
        let c = toml(
            r#"
            ack_timeout = 0.25
            resend_max = 3
            resend_initial = "250ms"
            zmq_linger = 1000
            zmq_reconnect_ivl = 100.5
            zmq_reconnect_ivl_max = "3s"
            post_init_sleep = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(c.ack_timeout, Duration::from_millis(250));
        assert_eq!(c.resend_max, Duration::from_secs(3));
        assert_eq!(c.resend_initial, Duration::from_millis(250));
        // zmq_* bare numbers are milliseconds.
        assert_eq!(c.zmq_linger, Duration::from_secs(1));
        assert_eq!(c.zmq_reconnect_ivl, Duration::from_micros(100_500));
        assert_eq!(c.zmq_reconnect_ivl_max, Duration::from_secs(3));
        assert_eq!(c.post_init_sleep, Some(Duration::from_millis(500)));
    }

    #[test]
    fn bad_durations_name_the_key() {
        for (text, key) in [
            ("ack_timeout = -1", "ack_timeout"),
            ("ack_timeout = \"soon\"", "ack_timeout"),
            ("ack_timeout = \"5\"", "ack_timeout"),
            ("zmq_linger = true", "zmq_linger"),
            ("resend_max = nan", "resend_max"),
        ] {
            let e = toml(text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
        }
    }

    #[test]
    fn huge_durations_are_refused_naming_the_key() {
        // Each of these once overflowed `Instant + Duration` in the socket
        // thread (issue 9, item 6).
        for (text, key) in [
            ("resend_max = 9223372036854775807", "resend_max"),
            ("ack_timeout = \"1000000y\"", "ack_timeout"),
            ("ack_timeout = 1e30", "ack_timeout"),
            (
                "resend_max = \"400days\"\nresend_initial = \"399days\"\nresend_min = \"1s\"",
                "resend_initial",
            ),
        ] {
            let e = toml(text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains("/cfg/bus.toml"), "{e}");
        }
        let c = toml("ack_timeout = \"365days\"\nmax_message_age = \"365days\"").unwrap();
        assert_eq!(c.ack_timeout, crate::MAX_TIMEOUT);
    }

    #[test]
    fn subscription_bounds_are_read_and_checked() {
        let c = toml("max_subscriptions = 10\nmax_subscription_length = 64").unwrap();
        assert_eq!((c.max_subscriptions, c.max_subscription_length), (10, 64));
        assert_eq!(
            toml("max_subscriptions = 0").unwrap_err().key(),
            Some("max_subscriptions")
        );
        assert_eq!(
            toml("max_subscription_length = -1").unwrap_err().key(),
            Some("max_subscription_length")
        );
    }

    #[test]
    fn keepalive_takes_bool_or_int() {
        assert!(toml("zmq_tcp_keepalive = 1").unwrap().zmq_tcp_keepalive);
        assert!(!toml("zmq_tcp_keepalive = 0").unwrap().zmq_tcp_keepalive);
        assert!(toml("zmq_tcp_keepalive = true").unwrap().zmq_tcp_keepalive);
        assert!(toml("zmq_tcp_keepalive = -1").is_err());
    }

    #[test]
    fn type_errors_carry_the_inner_path() {
        let e = toml("[routing_policy]\n\"org.x.dev.a.b\" = [\"ok\", 5]").unwrap_err();
        assert_eq!(e.key(), Some("routing_policy.\"org.x.dev.a.b\"[1]"));
        let e = toml("[endpoints]\nrelay_outbound = [\"tcp://a:1\", 2]").unwrap_err();
        assert_eq!(e.key(), Some("endpoints.relay_outbound[1]"));
        let e = toml("high_water_mark = \"lots\"").unwrap_err();
        assert_eq!(e.key(), Some("high_water_mark"));
    }

    #[test]
    fn monitoring_and_heartbeats_are_read_and_checked() {
        let c = toml("heartbeat_interval = 30\n[monitoring]\naddress = \"127.0.0.1\"\nport = 9100")
            .unwrap();
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(30)));
        let m = c.monitoring.clone().expect("monitoring on");
        assert_eq!((m.address.as_str(), m.port), ("127.0.0.1", 9100));
        assert_eq!(m.bind_text(), "127.0.0.1:9100");
        // The round trip keeps both.
        let back = Config::from_toml_str(&c.to_toml_string(), Path::new("/cfg/bus.toml")).unwrap();
        assert_eq!(back.monitoring, c.monitoring);
        assert_eq!(back.heartbeat_interval, c.heartbeat_interval);
        // fedora-messaging: the address defaults to every interface; an
        // empty section (or none) turns monitoring off.
        let c = toml("[monitoring]\nport = 0").unwrap();
        assert_eq!(c.monitoring.unwrap().bind_text(), "0.0.0.0:0");
        assert_eq!(toml("[monitoring]").unwrap().monitoring, None);
        assert_eq!(toml("").unwrap().monitoring, None);
        assert_eq!(toml("").unwrap().heartbeat_interval, None);
        for (text, key) in [
            ("[monitoring]\naddress = \"::1\"", "monitoring.port"),
            ("[monitoring]\nport = 70000", "monitoring.port"),
            ("[monitoring]\nport = -1", "monitoring.port"),
            ("[monitoring]\nport = \"9100\"", "monitoring.port"),
            ("[monitoring]\nport = 1\nprot = 2", "monitoring.prot"),
            (
                "[monitoring]\nport = 1\naddress = \"a b\"",
                "monitoring.address",
            ),
            ("[monitoring]\nport = 1\naddress = 5", "monitoring.address"),
            ("heartbeat_interval = 0", "heartbeat_interval"),
            ("heartbeat_interval = \"2days\"", "heartbeat_interval"),
            ("heartbeat_interval = \"soon\"", "heartbeat_interval"),
        ] {
            let e = toml(text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains("/cfg/bus.toml"), "{e}");
        }
    }

    #[test]
    fn monitoring_flags_read_like_the_section() {
        use crate::Monitoring;
        let m = Monitoring::parse_flag("127.0.0.1:0").unwrap();
        assert_eq!((m.address.as_str(), m.port), ("127.0.0.1", 0));
        assert_eq!(
            Monitoring::parse_flag(":9100").unwrap().bind_text(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            Monitoring::parse_flag("[::1]:9100").unwrap().bind_text(),
            "[::1]:9100"
        );
        for bad in ["9100", "host:", "host:99999", "a b:1", ""] {
            assert!(Monitoring::parse_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_are_whole_and_in_range() {
        for (text, key) in [
            ("max_message_size = -1", "max_message_size"),
            ("max_message_size = 1073741825", "max_message_size"),
            ("max_message_size = 9223372036854775807", "max_message_size"),
            ("dedupe_capacity = 1.5", "dedupe_capacity"),
            ("high_water_mark = -1", "high_water_mark"),
            ("high_water_mark = 3000000000", "high_water_mark"),
        ] {
            let e = toml(text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
        }
        let c = toml("max_message_size = 10\nhigh_water_mark = 7").unwrap();
        assert_eq!((c.max_message_size, c.high_water_mark), (10, 7));
        let c = toml("max_message_size = 1073741824").unwrap();
        assert_eq!(c.max_message_size, 1 << 30);
    }
}
