//! [`Bus`]: the long-lived, cloneable publisher handle.
//!
//! A handle builds and signs on the caller's task (so many publishes sign
//! in parallel), computing the canonical JSON once ([`gilmsg_proto::Sealed`]),
//! and hands the message to its transport, which owns every socket (ZeroMQ:
//! `zeromq/publisher.rs`). Each publish gets its own ACK state in the
//! transport's [`PublisherState`](gilmsg_proto::PublisherState), so any
//! number can be in flight at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gilmsg_config::{Config, Schemas};
use gilmsg_proto::publisher::PublisherSettings;
use gilmsg_proto::schema::{SchemaCheck, SchemaVerdict};
use gilmsg_proto::{AckCollector, AckRecord, Draft, Signer, TopicScheme};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::{Error, Result, Unsendable};
use crate::setup;
use crate::stats::{PublisherCounters, Record, Stats};
use crate::transport::{Outgoing, PublisherDriver, PublisherLink};
use crate::{amqp, zeromq};

/// Proof that every recipient acked one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub msg_id: String,
    /// Its full topic.
    pub topic: String,
    /// One record per recipient, in the order they were named; each says
    /// whether its ACK named this body's digest
    /// ([`AckRecord::digest_checked`], always true with
    /// [`BusBuilder::require_ack_digest`]).
    pub acks: Vec<AckRecord>,
    /// How many times the message was sent (1 unless something was lost).
    pub sends: u32,
    /// From accepting the publish to the last ACK.
    pub elapsed: Duration,
}

/// Builds a [`Bus`] with non-default settings.
#[derive(Debug, Clone)]
pub struct BusBuilder {
    config: Config,
    modname: String,
    certname: Option<String>,
    active: Option<bool>,
    require_ack_digest: Option<bool>,
    run_on_current_runtime: bool,
}

impl BusBuilder {
    /// Run the ZeroMQ publisher's socket loop as a task on the current
    /// tokio runtime instead of on a thread of its own (the default).
    ///
    /// What it buys, on a current-thread runtime: the publish, the loop and
    /// the ACK's arrival all happen on the caller's thread, so an
    /// acknowledged publish no longer crosses to another thread and back.
    /// Measured on a 2-core machine (docs/benchmarks.md, stop 26): 1-recipient
    /// p50 199 µs against 242 in the same run, throughput on one handle
    /// +10-23 %. On a multi-thread runtime it works the same but measured no
    /// faster: the loop and the caller run on different workers. With many
    /// recipients at a high rate the thread is the better choice: on a
    /// current-thread runtime one thread signs and checks every ACK
    /// (10-recipient throughput 0.63-0.73 of the floor against 0.75).
    ///
    /// What it costs: the loop runs only while the runtime runs. On a
    /// current-thread runtime that is while its owner is in `block_on` (or
    /// `#[tokio::main]`'s task awaits). In between, ACKs and subscriptions
    /// wait in libzmq's queues (ACKs beyond the high-water mark are dropped
    /// and recovered by re-sends; up to 1,024 waiting ACKs are counted
    /// before any deadline is judged), the health pulse goes stale, and a
    /// publish awaited from another runtime does not time out until this one
    /// runs again (its deadlines are the loop's). ACK signatures are checked
    /// on the runtime's thread, 64 a turn (about a millisecond), yielding
    /// between turns while more wait.
    ///
    /// [`build`](Self::build) must be called inside the runtime, which must
    /// outlive the handle (publishes fail with [`Error::Closed`] once it is
    /// gone; dropping the runtime first drops the loop inside it, and
    /// libzmq then waits up to `zmq_linger` there for queued messages).
    /// Refused with no runtime, a runtime without its I/O driver or timer
    /// (tokio would panic; its message still reaches the panic hook, and a
    /// `panic = "abort"` build aborts), and an AMQP config, whose publisher
    /// always has a runtime of its own. Nothing changes on the wire.
    pub fn run_on_current_runtime(mut self, on_runtime: bool) -> Self {
        self.run_on_current_runtime = on_runtime;
        self
    }

    /// Count only ACKs that carry the body's digest (overrides the config's
    /// `require_ack_digest`). Python gilmsg recipients send none, so their
    /// ACKs are then refused (`ack.digest_missing`) and such a publish times
    /// out naming them.
    pub fn require_ack_digest(mut self, required: bool) -> Self {
        self.require_ack_digest = Some(required);
        self
    }

    /// The module name in topics `<prefix>.<env>.<modname>.<topic>`
    /// (default: the executable's name).
    pub fn modname(mut self, modname: impl Into<String>) -> Self {
        self.modname = modname.into();
        self
    }

    /// Sign as this identity instead of the one the config's rules pick.
    pub fn certname(mut self, certname: impl Into<String>) -> Self {
        self.certname = Some(certname.into());
        self
    }

    /// Publish through the relay (`relay_inbound`) instead of binding
    /// `endpoints[name]`; overrides the config's `active`.
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Loads keys, binds or connects the sockets and starts the socket thread.
    pub fn build(self) -> Result<Bus> {
        let BusBuilder {
            config,
            modname,
            certname,
            active,
            require_ack_digest,
            run_on_current_runtime,
        } = self;
        config.validate()?;
        let owner = socket_owner(run_on_current_runtime, config.amqp.is_some())?;
        let active = active.unwrap_or(config.active);
        let certname = certname.unwrap_or_else(|| config.certname_for(&modname, active));
        // ACKs are always verified, whatever `validate_signatures` says:
        // counting an unverified ACK would be a false positive waiting to
        // happen. The routing policy does not apply to them: an ACK is
        // authorised by the publish's recipient list (a `routing_nitpicky`
        // policy that does not list the ACK topic must not veto them all).
        let trust = setup::load_trust(&config)?;
        let signer = if config.sign_messages {
            Some(setup::load_signer(&config, &certname, Some(&trust))?)
        } else {
            None
        };
        let validator = setup::ack_validator(trust);
        let scheme = config.topic_scheme();
        let counters = Arc::new(PublisherCounters::default());
        let driver_for = |counters: &Arc<PublisherCounters>| {
            (
                PublisherSettings {
                    ack_topic: scheme.ack_topic(),
                    retransmit: setup::retransmit_policy(&config),
                },
                validator.clone(),
                config.max_message_size,
                counters.clone(),
            )
        };
        let (link, bound, done, has_ack_endpoints, health) = match &config.amqp {
            Some(amqp_config) => {
                // AMQP: the broker routes; no endpoints, no relay.
                let (settings, validator, max, c) = driver_for(&counters);
                let driver = PublisherDriver::new(settings, validator, max, c);
                let broker = amqp::connect::Broker::new(amqp_config, &modname)?;
                let running =
                    amqp::publisher::start(broker, driver, counters.clone(), scheme.ack_topic())?;
                (running.link, Vec::new(), running.done, true, running.health)
            }
            None => {
                let own = if active {
                    Vec::new()
                } else {
                    config
                        .own_endpoints()
                        .map(<[String]>::to_vec)
                        .unwrap_or_default()
                };
                if !active && own.is_empty() {
                    return Err(Error::InvalidArgument(
                        "nowhere to publish: set `active = true` with `relay_inbound`, or `name` with an entry in `endpoints`"
                            .into(),
                    ));
                }
                let ack_endpoints: Vec<String> = config
                    .subscribe_endpoints()
                    .into_iter()
                    .filter(|e| !own.contains(e))
                    .collect();
                let (settings, validator, max, c) = driver_for(&counters);
                let driver = PublisherDriver::new(settings, validator, max, c);
                let sockets = zeromq::publisher::Sockets {
                    tuning: zeromq::SocketTuning::from_config(&config),
                    bind: own,
                    connect: if active {
                        config.relay_inbound.clone()
                    } else {
                        Vec::new()
                    },
                    ack_endpoints: ack_endpoints.clone(),
                    ack_topic: scheme.ack_topic(),
                };
                // Sockets are created on the thread that will own them; the
                // result of that set-up comes back before `build` returns.
                let running =
                    zeromq::publisher::start(sockets, driver, counters.link.clone(), owner)?;
                (
                    running.link,
                    running.bound,
                    running.done,
                    !ack_endpoints.is_empty(),
                    running.health,
                )
            }
        };
        Ok(Bus {
            inner: Arc::new(Inner {
                link,
                signer,
                scheme,
                modname,
                default_timeout: config.ack_timeout,
                max_message_age: config.max_message_age,
                max_message_size: config.max_message_size,
                require_ack_digest: require_ack_digest.unwrap_or(config.require_ack_digest),
                schemas: config.schemas.clone(),
                sequence: AtomicU64::new(0),
                username: setup::username(),
                counters,
                bound,
                has_ack_endpoints,
                done: std::sync::Mutex::new(Some(done)),
                health,
            }),
        })
    }
}

/// Who runs the ZeroMQ publisher's loop, as [`BusBuilder::run_on_current_runtime`]
/// asks; its refusals are errors, not panics.
fn socket_owner(on_runtime: bool, amqp: bool) -> Result<zeromq::publisher::SocketOwner> {
    if !on_runtime {
        return Ok(zeromq::publisher::SocketOwner::Thread);
    }
    let refused = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "run_on_current_runtime: {why}"
        )))
    };
    if amqp {
        return refused(
            "the AMQP publisher always runs on a runtime of its own; this is for ZeroMQ",
        );
    }
    match tokio::runtime::Handle::try_current() {
        Err(_) => refused("build the Bus inside a tokio runtime (there is none here)"),
        Ok(handle) => Ok(zeromq::publisher::SocketOwner::Runtime(handle)),
    }
}

/// A long-lived publisher handle: cheap to clone, safe to share across
/// tasks; the socket thread stops when the last clone is dropped or
/// [`Bus::close`] is called.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The transport the messages go out through.
    link: Box<dyn PublisherLink>,
    signer: Option<Arc<dyn Signer>>,
    scheme: TopicScheme,
    modname: String,
    default_timeout: Duration,
    /// `ack_timeout` may not exceed it (see `publish_full`).
    max_message_age: Duration,
    max_message_size: usize,
    require_ack_digest: bool,
    /// `[schemas]`: what each topic's `msg` must pass before it is sent.
    schemas: Schemas,
    sequence: AtomicU64,
    username: String,
    counters: Arc<PublisherCounters>,
    bound: Vec<String>,
    has_ack_endpoints: bool,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    health: crate::health::Health,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.link.shutdown();
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("prefix", &self.inner.scheme.prefix())
            .field("modname", &self.inner.modname)
            .field(
                "signer",
                &self
                    .inner
                    .signer
                    .as_deref()
                    .map(gilmsg_proto::auth::SignerDebug),
            )
            .finish_non_exhaustive()
    }
}

fn default_modname() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.replace(
                |c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "_",
            )
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "app".to_owned())
}

impl Bus {
    /// A handle from `config` with default settings.
    pub fn new(config: &Config) -> Result<Bus> {
        Bus::builder(config).build()
    }

    /// A builder for non-default settings.
    pub fn builder(config: &Config) -> BusBuilder {
        BusBuilder {
            config: config.clone(),
            modname: default_modname(),
            certname: None,
            active: None,
            require_ack_digest: None,
            run_on_current_runtime: false,
        }
    }

    /// Endpoints the publisher bound (with wildcard ports resolved).
    pub fn bound_endpoints(&self) -> &[String] {
        &self.inner.bound
    }

    /// The identity this handle signs as, if signing.
    pub fn signer_name(&self) -> Option<&str> {
        self.inner.signer.as_deref().map(Signer::name)
    }

    /// Publishes `msg` on `<prefix>.<env>.<modname>.<topic>` and waits until
    /// every one of `recipients` has acked it, re-sending as needed. With no
    /// recipients this is a plain fedmsg publish (see [`Bus::send`]).
    ///
    /// When the configuration's `[schemas]` gives the topic a JSON Schema,
    /// `msg` must pass it: one that fails is refused before anything is sent
    /// with [`Error::Unsendable`] ([`Unsendable::Schema`], naming the schema,
    /// the failing place as a JSON pointer into `msg`, and the keyword); one
    /// that passes carries the schema's name in its signed
    /// `fedora_messaging_schema` field.
    pub async fn publish<S: AsRef<str>>(
        &self,
        topic: &str,
        msg: Value,
        recipients: &[S],
        ack_timeout: Duration,
    ) -> Result<Receipt> {
        let full = self.inner.scheme.topic(&self.inner.modname, topic);
        self.publish_full(full, msg, recipients, ack_timeout).await
    }

    /// Like [`Bus::publish`] with the handle's default timeout (`ack_timeout`).
    pub async fn publish_default<S: AsRef<str>>(
        &self,
        topic: &str,
        msg: Value,
        recipients: &[S],
    ) -> Result<Receipt> {
        self.publish(topic, msg, recipients, self.inner.default_timeout)
            .await
    }

    /// Like [`Bus::publish`] with a full topic given as is.
    pub async fn publish_full<S: AsRef<str>>(
        &self,
        full_topic: String,
        msg: Value,
        recipients: &[S],
        ack_timeout: Duration,
    ) -> Result<Receipt> {
        let ack_topic = self.inner.scheme.ack_topic();
        // Under the ACK topic too: AMQP routes ACKs on `<ack topic>.<id>`.
        if full_topic == ack_topic
            || full_topic
                .strip_prefix(ack_topic.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        {
            return Err(Error::InvalidArgument(
                "the ACK topic is reserved for ACKs".into(),
            ));
        }
        let recipients: Vec<String> = recipients
            .iter()
            .map(|r| r.as_ref().trim().to_owned())
            .collect();
        if recipients.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument("empty recipient name".into()));
        }
        if ack_timeout > gilmsg_config::MAX_TIMEOUT {
            // Checked here, not in the socket thread: `now + Duration::MAX`
            // once panicked there and took every later publish with it.
            return Err(Error::InvalidArgument(format!(
                "ack_timeout {ack_timeout:?} is longer than the maximum, {} days",
                gilmsg_config::MAX_TIMEOUT.as_secs() / 86_400
            )));
        }
        if ack_timeout > self.inner.max_message_age {
            // The config rule, for a timeout given per call: every send
            // keeps the timestamp taken here, so consumers would refuse the
            // re-sends (or a send waiting for subscribers) before we gave up.
            return Err(Error::InvalidArgument(format!(
                "ack_timeout {ack_timeout:?} is longer than max_message_age ({:?}): consumers \
                 would refuse the re-sends of the message before the publish gives up",
                self.inner.max_message_age
            )));
        }
        if !recipients.is_empty() && !self.inner.has_ack_endpoints {
            return Err(Error::NoAckEndpoints);
        }
        let (timestamp, year) = setup::now_secs_and_year();
        let msg_id = gilmsg_proto::envelope::new_msg_id(year);
        let draft = Draft {
            topic: full_topic.clone(),
            msg,
            msg_id: msg_id.clone(),
            i: self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp,
            username: self.inner.username.clone(),
            wants_ack: !recipients.is_empty(),
        };
        // Refuses, at once, what receivers would refuse: numbers a double
        // cannot hold exactly, nesting past the decoder's bound, control
        // characters in the topic (see `Draft::build`). The canonical JSON
        // is computed here, once: the signature, the ACK digest and the
        // body on the wire all come from it. The topic's schema, if it has
        // one, is named in the signed body.
        let schema = self.inner.schemas.schema_for(&full_topic);
        let sealed = draft.seal_with(schema, &recipients, self.inner.signer.as_deref())?;
        // Checked on the sealed `msg` (numbers in their canonical text):
        // exactly what consumers will check.
        if let SchemaVerdict::Failed(violation) = self
            .inner
            .schemas
            .check(&full_topic, sealed.envelope().msg())
        {
            return Err(Error::Unsendable(Unsendable::Schema(violation)));
        }
        let size = sealed.body_text().len();
        if size > self.inner.max_message_size {
            return Err(Error::Unsendable(Unsendable::TooLarge {
                size,
                limit: self.inner.max_message_size,
            }));
        }
        let collector = if recipients.is_empty() {
            None
        } else {
            Some(
                AckCollector::new(&msg_id, sealed.signed_part().digest(), recipients)
                    .require_digest(self.inner.require_ack_digest)
                    .signed_as(self.inner.signer.as_deref().map(|s| s.name())),
            )
        };
        let (reply, response) = oneshot::channel();
        self.inner.link.publish(Outgoing {
            msg_id: msg_id.clone(),
            topic: full_topic,
            message: sealed,
            collector,
            timeout: ack_timeout,
            reply,
        })?;
        let mut guard = CancelOnDrop {
            link: self.inner.link.as_ref(),
            msg_id: Some(msg_id),
        };
        let result = response.await.map_err(|_| Error::Closed)?;
        guard.msg_id = None;
        result
    }

    /// A plain fedmsg publish: no ACKs. Waits (up to the default
    /// `ack_timeout`) for at least one subscriber so the message is not
    /// dropped by ZeroMQ, then hands it over.
    pub async fn send(&self, topic: &str, msg: Value) -> Result<Receipt> {
        self.publish::<&str>(topic, msg, &[], self.inner.default_timeout)
            .await
    }

    /// Counters: sent, re-sent, acked, timed out, and every refused ACK by reason.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Whether the publisher's socket thread is turning.
    pub fn health(&self) -> crate::health::Health {
        self.inner.health.clone()
    }

    /// The publisher's counters for `/metrics`.
    pub fn metrics(&self) -> crate::monitoring::ComponentMetrics {
        crate::monitoring::ComponentMetrics {
            component: "publisher",
            source: self.inner.counters.clone(),
        }
    }

    /// Stops the socket thread after flushing queued messages (up to
    /// `zmq_linger`), failing publishes still waiting with [`Error::Closed`].
    pub async fn close(self) {
        let done = self.inner.done.lock().ok().and_then(|mut d| d.take());
        self.inner.link.shutdown();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

/// Tells the transport to forget a publish whose caller stopped waiting.
struct CancelOnDrop<'a> {
    link: &'a dyn PublisherLink,
    msg_id: Option<String>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(msg_id) = self.msg_id.take() {
            self.link.cancel(msg_id);
        }
    }
}
