//! [`AmqpConfig`]: the AMQP (RabbitMQ) side of a configuration, in
//! fedora-messaging's own keys, so that a fedora-messaging `config.toml`
//! loads as it is.
//!
//! A file with `amqp_url` selects the AMQP transport. Its other
//! fedora-messaging keys (`publish_exchange`, `topic_prefix`, `[tls]`,
//! `[client_properties]`, `[exchanges]`, `[queues]`, `[[bindings]]`,
//! `[qos]`, `publish_priority`, `passive_declares`, `[monitoring]`) keep
//! their fedora-messaging meaning and defaults (`fedora_messaging/config.py`);
//! the keys fedora-messaging reads and gilmsg has no use for (`callback`,
//! `consumer_config`, `log_config`) are accepted and ignored.
//! gilmsg's own keys (`ssldir`, `certnames`, `routing_policy`,
//! `ack_timeout`, ...) sit beside them, plus two for AMQP alone:
//! `max_redeliveries` and `reconnect_max`.
//!
//! Topics follow fedora-messaging: `topic_prefix` is the whole prefix
//! (default empty) and `environment` is appended to it only when the file
//! sets it, so `topic_prefix = "org.fedoraproject.prod"` names the same
//! topics as fedmsg's `org.fedoraproject` + `prod`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// fedora-messaging's keys that gilmsg accepts and does not use.
pub const FEDORA_MESSAGING_ONLY: &[&str] = &["callback", "consumer_config", "log_config"];

/// The exchange fedora-messaging publishes to by default.
pub const DEFAULT_EXCHANGE: &str = "amq.topic";

/// The AMQP transport's settings.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The broker, `amqp://` or `amqps://` (fedora-messaging's `amqp_url`).
    /// Query parameters pika knows and lapin does not
    /// (`connection_attempts`, `retry_delay`) are ignored.
    pub url: String,
    /// Where messages (and ACKs) are published. Default `amq.topic`.
    pub publish_exchange: String,
    /// The AMQP priority of published messages (`publish_priority`).
    pub publish_priority: Option<u8>,
    /// Declare exchanges and queues passively (check only). Default false.
    pub passive_declares: bool,
    /// TLS files (`[tls]`).
    pub tls: AmqpTls,
    /// Properties reported to the broker (`[client_properties]`).
    pub client_properties: BTreeMap<String, String>,
    /// Exchanges to declare (`[exchanges]`). Default: `amq.topic`, topic,
    /// durable.
    pub exchanges: BTreeMap<String, ExchangeConfig>,
    /// Queues a consumer declares and consumes (`[queues]`). Empty (the
    /// default): a consumer uses its identity's durable queue,
    /// `<certname>.gilmsg`.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Bindings (`[[bindings]]`). A binding with no queue, or the empty
    /// queue name (fedora-messaging's server-named queue), binds the
    /// consumer's identity queue.
    pub bindings: Vec<BindingConfig>,
    /// Unacknowledged deliveries a consumer holds at most (`[qos]`
    /// `prefetch_count`, default 10; 0 is refused: it means unbounded).
    pub prefetch_count: u16,
    /// `[qos]` `prefetch_size` in bytes, 0 = no limit (the default).
    pub prefetch_size: u32,
    /// Whether `environment` is part of topics (only when the file sets it).
    pub environment_in_topics: bool,
    /// How many times a message whose handler failed is requeued before it
    /// is dead-lettered (if its queue has a dead-letter exchange) or
    /// dropped. Default 3; gilmsg key.
    pub max_redeliveries: u32,
    /// The longest wait between two attempts to reconnect to the broker
    /// (the first is 100 ms, doubling). Default 5 s; gilmsg key.
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("publish_exchange", &self.publish_exchange)
            .field("queues", &self.queues.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

impl AmqpConfig {
    /// fedora-messaging's defaults for a broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        let mut exchanges = BTreeMap::new();
        exchanges.insert(DEFAULT_EXCHANGE.to_owned(), ExchangeConfig::default());
        AmqpConfig {
            url: url.into(),
            publish_exchange: DEFAULT_EXCHANGE.to_owned(),
            publish_priority: None,
            passive_declares: false,
            tls: AmqpTls::default(),
            client_properties: BTreeMap::new(),
            exchanges,
            queues: BTreeMap::new(),
            bindings: Vec::new(),
            prefetch_count: 10,
            prefetch_size: 0,
            environment_in_topics: false,
            max_redeliveries: 3,
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Whether the broker is reached over TLS (`amqps://`).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("amqps://")
    }
}

/// `[tls]`: the CA bundle that checks the broker, and the client
/// certificate and key it may require.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpTls {
    /// CA certificates (PEM) that sign the broker's certificate; `None`:
    /// the system's.
    pub ca_cert: Option<PathBuf>,
    /// The client's private key (PEM, PKCS#8).
    pub keyfile: Option<PathBuf>,
    /// The client's certificate (PEM).
    pub certfile: Option<PathBuf>,
}

/// One entry of `[exchanges]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangeConfig {
    /// `type`: `topic`, `direct`, `fanout` or `headers`. Default `topic`.
    pub kind: String,
    /// Survives a broker restart. Default true.
    pub durable: bool,
    /// Deleted when its last binding goes. Default false.
    pub auto_delete: bool,
    /// Broker-specific arguments.
    pub arguments: BTreeMap<String, Value>,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            kind: "topic".into(),
            durable: true,
            auto_delete: false,
            arguments: BTreeMap::new(),
        }
    }
}

/// One entry of `[queues]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Survives a broker restart (default true: a recipient that is down
    /// gets its messages later).
    pub durable: bool,
    /// Deleted when its last consumer goes. Default false.
    pub auto_delete: bool,
    /// Only this connection may use it. Default false.
    pub exclusive: bool,
    /// Broker-specific arguments (`x-dead-letter-exchange`, `x-queue-type`, ...).
    pub arguments: BTreeMap<String, Value>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments: BTreeMap::new(),
        }
    }
}

/// One `[[bindings]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindingConfig {
    /// The queue; empty: the consumer's identity queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// Routing keys (AMQP topic patterns: `*` one word, `#` any).
    pub routing_keys: Vec<String>,
    /// Binding arguments.
    pub arguments: BTreeMap<String, Value>,
}

impl BindingConfig {
    /// A binding of `queue` to `exchange` for `routing_keys`.
    pub fn new(
        queue: impl Into<String>,
        exchange: impl Into<String>,
        routing_keys: Vec<String>,
    ) -> Self {
        BindingConfig {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_keys,
            arguments: BTreeMap::new(),
        }
    }
}

/// The rules involving several AMQP keys, for a `Config` built in code.
pub(crate) fn validate(
    a: &AmqpConfig,
    file: Option<&std::path::Path>,
) -> Result<(), crate::ConfigError> {
    let bad = |key: &str, reason: String| Err(crate::ConfigError::invalid(file, key, reason));
    if let Err(why) = check_url(&a.url) {
        return bad("amqp_url", why);
    }
    if a.publish_exchange.is_empty() {
        return bad(
            "publish_exchange",
            "is empty: ACKs are routed through a topic exchange (default amq.topic)".into(),
        );
    }
    if a.prefetch_count == 0 {
        return bad(
            "qos.prefetch_count",
            crate::check::PREFETCH_COUNT.refusal("0"),
        );
    }
    if a.tls.keyfile.is_some() != a.tls.certfile.is_some() {
        return bad(
            "tls.certfile",
            "a client certificate needs both tls.keyfile and tls.certfile".into(),
        );
    }
    if a.reconnect_max.is_zero() || a.reconnect_max > crate::MAX_TIMEOUT {
        return bad(
            "reconnect_max",
            "must be greater than 0 and at most 365 days".into(),
        );
    }
    Ok(())
}

/// Whether `url` names an AMQP broker.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an AMQP URL (amqp://... or amqps://...)",
            redact_url(url)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqps://user:secret@host:5671/%2f"),
            "amqps://user:***@host:5671/%2f"
        );
        assert_eq!(redact_url("amqp://host/"), "amqp://host/");
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        let c = AmqpConfig::new("amqp://u:pw@h/");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("amqp://").is_ok());
        assert!(check_url("amqps://h:5671/").is_ok());
        assert!(check_url("tcp://h:1").is_err());
    }
}
