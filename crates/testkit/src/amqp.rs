//! [`AmqpBus`]: one throwaway AMQP bus: a vhost of its own on the RabbitMQ
//! node shared by the test binary ([`shared`]), a PKI and a config file
//! with `amqp_url`, so that the real binaries (`gilmsg-consumer`,
//! `gilmsg-logger`) and the library run on it unchanged.
//!
//! ```ignore
//! let Some(bus) = gilmsg_testkit::amqp::AmqpBus::start(bins!(), "three", &["a", "b"]) else {
//!     return; // rabbitmq-server is not installed (and not required)
//! };
//! let a = bus.consumer("a", &[]);
//! let receipt = bus.publisher().publish("x", json!({}), &["a"], timeout).await?;
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gilmsg_crypto::Identity;
use tempfile::TempDir;

use crate::child::{run_tool, ToolOutput};
use crate::fixture::{self, ed25519_pki, Consumer};
use crate::guard::{self, Registry};
use crate::rabbit::{self, Rabbit, Tls};
use crate::{Bins, Running, PUBLISHER, TOPIC_PREFIX};

/// The client names the shared node's TLS material has certificates for.
pub const TLS_CLIENTS: &[&str] = &["publisher", "ledger"];

/// The node (with a TLS listener) shared by every test of this process,
/// started on first use and stopped by its watchdog when the process
/// ends; `None` when `rabbitmq-server` is not installed and
/// `GILMSG_REQUIRE_RABBITMQ` is not set (then the tests skip).
///
/// # Panics
/// When it is installed (or required) and does not start.
pub fn shared() -> Option<&'static Rabbit> {
    static NODE: OnceLock<Option<Rabbit>> = OnceLock::new();
    NODE.get_or_init(|| {
        if !available() {
            return None;
        }
        let tls = Tls::make(&shared_tls_dir(), TLS_CLIENTS).unwrap_or_else(|e| panic!("{e}"));
        Some(
            Rabbit::start(Some(&tls.listener()), Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    })
    .as_ref()
}

/// Whether the AMQP tests can run (`rabbitmq-server` installed); when it
/// is not, says SKIP, or panics if `GILMSG_REQUIRE_RABBITMQ` is set.
pub fn available() -> bool {
    if rabbit::installed() {
        return true;
    }
    if std::env::var_os("GILMSG_REQUIRE_RABBITMQ").is_some() {
        panic!("{}", rabbit::NOT_INSTALLED);
    }
    eprintln!("SKIP: {}", rabbit::NOT_INSTALLED);
    false
}

/// Where the shared node's TLS material is (`ca.crt`, `server.*`,
/// `<client>.crt`, `<client>.key`).
pub fn shared_tls_dir() -> PathBuf {
    std::env::temp_dir().join(format!("gilmsg-amqp-tls-{}", std::process::id()))
}

/// A vhost, a PKI, a config file.
pub struct AmqpBus {
    dir: TempDir,
    /// The PKI directory.
    pub ssldir: PathBuf,
    /// The config file every process of this bus uses.
    pub config_path: PathBuf,
    /// `amqp://guest:guest@127.0.0.1:<port>/<vhost>`.
    pub url: String,
    /// The vhost.
    pub vhost: String,
    /// The node it lives on.
    pub node: &'static Rabbit,
    registry: Registry,
    bins: Bins,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("dir", &self.dir.path())
            .field("url", &self.url)
            .finish()
    }
}

impl AmqpBus {
    /// A bus in vhost `vhost` (unique per test) of the [`shared`] node,
    /// with identities for [`PUBLISHER`] and `names`; `None` when the
    /// node is skipped.
    pub fn start(bins: Bins, vhost: &str, names: &[&str]) -> Option<AmqpBus> {
        AmqpBus::start_with(bins, vhost, names, "")
    }

    /// Like [`AmqpBus::start`], with extra top-level TOML lines.
    pub fn start_with(
        bins: Bins,
        vhost: &str,
        names: &[&str],
        extra_toml: &str,
    ) -> Option<AmqpBus> {
        let node = shared()?;
        Some(AmqpBus::on(node, bins, vhost, names, extra_toml))
    }

    /// A bus on `node` (e.g. a node of the test's own, to restart).
    pub fn on(
        node: &'static Rabbit,
        bins: Bins,
        vhost: &str,
        names: &[&str],
        extra_toml: &str,
    ) -> AmqpBus {
        let url = node.vhost(vhost).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("gilmsg-amqp-test-")
            .tempdir()
            .expect("tempdir");
        let ssldir = dir.path().join("pki");
        let identities = [&[PUBLISHER], names].concat();
        ed25519_pki(&ssldir, "gilmsg-amqp-test-ca", &identities).unwrap_or_else(|e| panic!("{e}"));
        let bus = AmqpBus {
            config_path: dir.path().join("bus.toml"),
            ssldir,
            url,
            vhost: vhost.to_owned(),
            node,
            registry: guard::current(),
            bins,
            dir,
        };
        bus.write_config(&bus.config_path, extra_toml);
        bus
    }

    /// Writes a config for this bus at `path` with `extra_toml` lines
    /// (top-level keys; tables may follow).
    pub fn write_config(&self, path: &Path, extra_toml: &str) {
        let text = format!(
            r#"# Written by the gilmsg AMQP integration tests.
amqp_url = {url:?}
topic_prefix = "{TOPIC_PREFIX}.{env}"
ssldir = {ssldir:?}
sign_messages = true
validate_signatures = true
ack_timeout = "5s"
resend_initial = "200ms"
resend_max = "1s"
reconnect_max = "500ms"
{extra_toml}
"#,
            url = self.url,
            env = crate::ENVIRONMENT,
            ssldir = self.ssldir.display().to_string(),
        );
        std::fs::write(path, text).expect("write config");
    }

    /// Writes a config with `extra_toml` next to the bus's and returns its
    /// path.
    pub fn config_file(&self, name: &str, extra_toml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        self.write_config(&path, extra_toml);
        path
    }

    /// The bus's configuration, as the library reads it.
    pub fn config(&self) -> gilmsg::Config {
        gilmsg::Config::from_path(&self.config_path).expect("fixture config loads")
    }

    /// The temporary directory holding everything of this bus.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Revokes an identity (rewrites `crl.pem`).
    pub fn revoke(&self, name: &str) {
        gilmsg_crypto::pki::revoke(&self.ssldir, name)
            .unwrap_or_else(|e| panic!("revoke {name}: {e}"));
    }

    /// Issues (again) an identity that expired yesterday.
    pub fn issue_expired(&self, name: &str) {
        const DAY: Duration = Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        gilmsg_crypto::pki::issue(
            &self.ssldir,
            name,
            &gilmsg_crypto::pki::IssueOptions {
                not_before: now - 3 * DAY,
                not_after: now - DAY,
                replace: true,
            },
        )
        .unwrap_or_else(|e| panic!("issue {name}: {e}"));
    }

    /// Loads an identity of this bus's PKI, to sign with.
    pub fn identity(&self, name: &str) -> Identity {
        Identity::load(&self.ssldir, name).unwrap_or_else(|e| panic!("load {name}: {e}"))
    }

    /// `<prefix>.<env>.<MODNAME>.<sub>`: the topic `publisher().publish(sub, ..)` uses.
    pub fn topic(&self, sub: &str) -> String {
        fixture::publisher_topic(sub)
    }

    /// The ACK topic.
    pub fn ack_topic(&self) -> String {
        fixture::ack_topic()
    }

    /// An in-process publisher signing as [`PUBLISHER`].
    pub fn publisher(&self) -> gilmsg::Bus {
        self.publisher_from(&self.config())
    }

    /// An in-process publisher built from a (modified) config.
    pub fn publisher_from(&self, config: &gilmsg::Config) -> gilmsg::Bus {
        fixture::build_publisher(config)
    }

    /// Starts `gilmsg-consumer --config <bus> --certname <name> --json
    /// <args>` and waits for its ready line.
    pub fn consumer(&self, name: &str, args: &[&str]) -> Consumer {
        self.consumer_with(name, &self.config_path, "warn", args)
    }

    /// Like [`AmqpBus::consumer`] with another config file and log filter.
    pub fn consumer_with(&self, name: &str, config: &Path, log: &str, args: &[&str]) -> Consumer {
        let consumer = Consumer::spawn(&self.registry, self.bins, name, config, log, args);
        consumer.wait_ready();
        consumer
    }

    /// Runs `gilmsg-logger <args>` with `stdin`, bounded by `limit`.
    pub fn logger(&self, args: &[&str], stdin: &str, limit: Duration) -> ToolOutput {
        run_tool(self.bins.logger, args, stdin, limit, &self.registry)
    }

    /// Starts any command as a child of this bus's test.
    pub fn spawn(&self, name: &str, command: std::process::Command) -> Running {
        Running::spawn_in(&self.registry, name, command)
    }

    /// The executables this bus runs.
    pub fn bins(&self) -> Bins {
        self.bins
    }
}

/// A raw AMQP peer of the bus (the test playing a recipient, a spy or a
/// foreign publisher): its own connection and channel, with publisher
/// confirms on.
pub struct RawPeer {
    /// The connection (closed when dropped).
    pub connection: lapin::Connection,
    /// Its channel.
    pub channel: lapin::Channel,
}

impl RawPeer {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> RawPeer {
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        RawPeer {
            connection,
            channel,
        }
    }

    /// Declares the queue `name` (non-durable) bound to `binding_key` on
    /// `amq.topic`, and consumes it (no_ack).
    pub async fn listen(&self, name: &str, binding_key: &str) -> lapin::Consumer {
        use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
        self.bound_queue(name, binding_key, QueueDeclareOptions::default())
            .await;
        self.channel
            .basic_consume(
                name.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                Default::default(),
            )
            .await
            .expect("consume")
    }

    /// Declares the durable queue `name` (as fedora-messaging's config
    /// declares its queues) bound to `binding_key` on `amq.topic`, so that
    /// messages wait in it before its consumer starts.
    pub async fn durable_queue(&self, name: &str, binding_key: &str) {
        use lapin::options::QueueDeclareOptions;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.bound_queue(name, binding_key, durable).await;
    }

    /// Declares the queue `name` with `options` and binds it to
    /// `binding_key` on `amq.topic`.
    async fn bound_queue(
        &self,
        name: &str,
        binding_key: &str,
        options: lapin::options::QueueDeclareOptions,
    ) {
        self.channel
            .queue_declare(name.into(), options, Default::default())
            .await
            .expect("declare");
        self.channel
            .queue_bind(
                name.into(),
                "amq.topic".into(),
                binding_key.into(),
                lapin::options::QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .expect("bind");
    }

    /// Publishes `body` with `properties` to `routing_key` on `amq.topic`
    /// and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) {
        self.channel
            .basic_publish(
                "amq.topic".into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

/// The next delivery of `consumer` within `limit`.
///
/// # Panics
/// When none comes.
pub async fn next_delivery(
    consumer: &mut lapin::Consumer,
    limit: Duration,
) -> lapin::message::Delivery {
    use futures_util::StreamExt;
    match tokio::time::timeout(limit, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no delivery within {limit:?}: {other:?}"),
    }
}

/// The fedmsg envelope a gilmsg AMQP message carries (routing key = topic,
/// body = `msg`, the other fields in the `gilmsg_envelope` header).
///
/// # Panics
/// On a message that is not one.
pub fn envelope_of(delivery: &lapin::message::Delivery) -> gilmsg_proto::Envelope {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = match headers.inner().get("gilmsg_envelope") {
        Some(lapin::types::AMQPValue::LongString(s)) => s.as_bytes().to_vec(),
        other => panic!("no gilmsg_envelope header: {other:?}"),
    };
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).expect("gilmsg_envelope is a JSON object");
    body.insert("topic".into(), delivery.routing_key.as_str().into());
    body.insert(
        "msg".into(),
        serde_json::from_slice(&delivery.data).expect("the body is JSON"),
    );
    gilmsg_proto::Envelope::from_body(body).expect("an envelope")
}

/// The AMQP form (body, properties) of the two ZeroMQ frames of a message
/// (`forge::frames` and friends): the same fedmsg body, split as gilmsg's
/// AMQP wire format splits it, so every forgery of the ZeroMQ tests can be
/// sent on AMQP too. The routing key is the caller's (an ACK's is the
/// `reply_to` of the message it answers).
///
/// # Panics
/// On frames that are not a topic and a JSON object.
pub fn amqp_form(frames: &[Vec<u8>]) -> (Vec<u8>, lapin::BasicProperties) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(frames.get(1).expect("a body frame")).expect("a JSON object");
    body.remove("topic");
    let msg = body.remove("msg").unwrap_or_default();
    let msg_id = body
        .get("msg_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut headers = FieldTable::default();
    headers.insert(
        "gilmsg_envelope".into(),
        AMQPValue::LongString(LongString::from(
            serde_json::to_string(&body).expect("serialise"),
        )),
    );
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_message_id(msg_id.as_str().into())
        .with_headers(headers);
    (serde_json::to_vec(&msg).expect("serialise"), properties)
}
