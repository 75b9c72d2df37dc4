//! Opening a connection to the broker and declaring what the configuration
//! lists: the URL (password never logged), TLS through rustls on ring with
//! the `[tls]` CA bundle and client certificate, fedora-messaging's
//! `[client_properties]`, the `[exchanges]`, the back-off between
//! reconnection attempts, the [`Supervised`] connection every AMQP task
//! keeps (lost, retried, counted and logged the same way everywhere), the
//! thread each connection's task runs on and the steps every such task's
//! loop takes alike (its pulse, a burst of commands, the next delivery, the
//! last confirms).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};

use gilmsg_config::amqp::redact_url;
use gilmsg_config::{AmqpConfig, ExchangeConfig};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::health::Pulse;
use crate::stats::LinkCounters;
use crate::transport::Flow;

/// The first wait before reconnecting; it doubles up to `reconnect_max`.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// A client certificate chain and key, PEM.
type ClientIdentity = (Vec<u8>, Vec<u8>);

/// How to reach the broker: everything read from files is read once, when
/// the handle is built, so a missing key file is a build error.
#[derive(Clone)]
pub(crate) struct Broker {
    pub(crate) config: AmqpConfig,
    /// With TLS: the CA (PEM text) and the client identity, if any.
    tls: Option<(Option<String>, Option<ClientIdentity>)>,
    /// What this process is, for the broker's connection list.
    app: String,
}

impl Broker {
    /// Reads the TLS files of `config`.
    pub(crate) fn new(config: &AmqpConfig, app: &str) -> Result<Broker> {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Broker {
                context: format!("tls.{key} {}", path.display()),
                reason: format!("cannot read: {e}"),
            })
        };
        let tls = if config.uses_tls() {
            let ca = match &config.tls.ca_cert {
                Some(p) => Some(String::from_utf8_lossy(&read("ca_cert", p)?).into_owned()),
                None => None,
            };
            let identity = match (&config.tls.certfile, &config.tls.keyfile) {
                (Some(cert), Some(key)) => Some((read("certfile", cert)?, read("keyfile", key)?)),
                _ => None,
            };
            Some((ca, identity))
        } else {
            None
        };
        Ok(Broker {
            config: config.clone(),
            tls,
            app: app.to_owned(),
        })
    }

    /// The URL without its password.
    pub(crate) fn shown(&self) -> String {
        redact_url(&self.config.url)
    }

    /// One attempt to connect.
    pub(crate) async fn connect(&self) -> Result<Connection> {
        let mut properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("gilmsg {}", self.app)));
        let mut client: BTreeMap<String, String> = BTreeMap::new();
        client.insert("app".into(), self.app.clone());
        client.insert("product".into(), "gilmsg".into());
        client.insert(
            "version".into(),
            gilmsg_proto::envelope::GILMSG_VERSION.into(),
        );
        client.extend(self.config.client_properties.clone());
        for (k, v) in client {
            properties = properties.with_client_property(k.into(), LongString::from(v));
        }
        let refused = |e: lapin::Error| Error::Broker {
            context: format!("cannot connect to the broker at {}", self.shown()),
            reason: e.to_string(),
        };
        match &self.tls {
            None => Connection::connect(&self.config.url, properties)
                .await
                .map_err(refused),
            Some((ca, identity)) => {
                let tls = OwnedTLSConfig {
                    identity: identity.as_ref().map(|(pem, key)| OwnedIdentity::PKCS8 {
                        pem: pem.clone(),
                        key: key.clone(),
                    }),
                    cert_chain: ca.clone(),
                };
                let runtime = lapin::runtime::default_runtime().map_err(refused)?;
                Connection::connect_with_config(&self.config.url, properties, tls, runtime)
                    .await
                    .map_err(refused)
            }
        }
    }

    /// A channel with publisher confirms on, and every configured exchange
    /// declared (`passive_declares`: checked only; `amq.*`, which the
    /// broker reserves, always checked only).
    pub(crate) async fn channel(&self, connection: &Connection) -> Result<Channel> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.failed("cannot open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.failed("cannot turn publisher confirms on", e))?;
        for (name, exchange) in &self.config.exchanges {
            self.declare_exchange(&channel, name, exchange).await?;
        }
        Ok(channel)
    }

    async fn declare_exchange(
        &self,
        channel: &Channel,
        name: &str,
        exchange: &ExchangeConfig,
    ) -> Result<()> {
        let kind = match exchange.kind.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Topic,
        };
        let options = ExchangeDeclareOptions {
            passive: self.config.passive_declares || name.starts_with("amq."),
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(name.into(), kind, options, field_table(&exchange.arguments))
            .await
            .map_err(|e| self.failed(&format!("exchanges.{name:?}: cannot declare"), e))
    }

    /// A broker error, naming what was being done and where.
    pub(crate) fn failed(&self, context: &str, e: lapin::Error) -> Error {
        Error::Broker {
            context: format!("{context} on {}", self.shown()),
            reason: e.to_string(),
        }
    }
}

/// Awaits `work` (a reconnection) while beating `pulse`: a loop waiting
/// on the network for a broker is not stuck, and `/live` and the systemd
/// watchdog must not say it is (a connect to an unreachable host can take
/// the TCP timeout, minutes).
pub(crate) async fn beating<F: std::future::Future>(
    work: F,
    pulse: &crate::health::Pulse,
) -> F::Output {
    tokio::pin!(work);
    let mut every = pulse_ticker();
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = every.tick() => pulse.beat(),
        }
    }
}

/// Ticks every [`PULSE_EVERY`](crate::health::PULSE_EVERY), a late tick
/// delaying the next rather than bursting: a task's loop turns at least
/// this often, idle or not, to beat.
pub(crate) fn pulse_ticker() -> tokio::time::Interval {
    let mut every = tokio::time::interval(crate::health::PULSE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Handles `first`, then every command already waiting in `inbox` (the
/// burst is taken before the loop sends anything), until one says stop.
pub(crate) async fn take_burst<C>(
    first: C,
    inbox: &mut tokio::sync::mpsc::UnboundedReceiver<C>,
    mut handle: impl AsyncFnMut(C) -> Flow,
) -> Flow {
    if handle(first).await == Flow::Stop {
        return Flow::Stop;
    }
    while let Ok(command) = inbox.try_recv() {
        if handle(command).await == Flow::Stop {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// The next delivery of `consumer` (never, without one), or why there is
/// none: the consumer failed, or ended (`ended` says what that means).
pub(crate) async fn next_delivery<S>(
    consumer: Option<&mut S>,
    ended: &str,
) -> std::result::Result<lapin::message::Delivery, String>
where
    S: Stream<Item = lapin::Result<lapin::message::Delivery>> + Unpin,
{
    let Some(consumer) = consumer else {
        return std::future::pending().await;
    };
    match consumer.next().await {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(ended.to_owned()),
    }
}

/// Lets the confirms still awaited come in, each handed to `each`, for a
/// second at most: as ZeroMQ's linger lets queued messages leave, bounded.
pub(crate) async fn linger<F: Future>(
    confirms: &mut FuturesUnordered<F>,
    mut each: impl AsyncFnMut(F::Output),
) {
    let deadline = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(deadline);
    while !confirms.is_empty() {
        tokio::select! {
            Some(confirmed) = confirms.next() => each(confirmed).await,
            () = &mut deadline => break,
        }
    }
}

/// The wait before reconnection attempt `attempt` (0-based): 100 ms
/// doubling, at most `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    RECONNECT_MIN.saturating_mul(factor).min(max)
}

/// When a task that lost its connection tries again: [`backoff`]`(0)`
/// after the loss, the wait doubling after each failed attempt (up to
/// `reconnect_max`), nothing scheduled while connected. Pure: the caller
/// passes the instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetrySchedule {
    at: Option<Instant>,
    /// Failed attempts since the loss, the loss itself counting as one:
    /// the exponent of the next wait.
    attempt: u32,
    max: Duration,
}

impl RetrySchedule {
    /// Nothing scheduled; waits of at most `max`.
    pub(crate) fn new(max: Duration) -> RetrySchedule {
        RetrySchedule {
            at: None,
            attempt: 0,
            max,
        }
    }

    /// The connection was lost at `now`: the first attempt after
    /// `backoff(0)`.
    pub(crate) fn lost(&mut self, now: Instant) {
        self.attempt = 0;
        self.failed(now);
    }

    /// An attempt failed at `now`: the next one after the following wait,
    /// which it returns.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        let wait = backoff(self.attempt, self.max);
        self.attempt = self.attempt.saturating_add(1);
        // `wait` is at most `reconnect_max`, which the configuration bounds.
        self.at = Some(now + wait);
        wait
    }

    /// Connected again: nothing to retry, and the next loss starts over.
    pub(crate) fn connected(&mut self) {
        self.at = None;
        self.attempt = 0;
    }

    /// When the next attempt is due.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at
    }
}

/// A task's connection to the broker (`L`: what the task opened on it)
/// and what happens when it has none: the next attempt by
/// [`RetrySchedule`], `connection.lost` / `connection.reconnected` counted,
/// each loss logged at warn, each reconnection at info, each failed
/// attempt at debug, all under the task's label. The task keeps it as a
/// local beside itself and passes it (or [`live`](Self::live)) to what
/// uses the connection.
pub(crate) struct Supervised<L> {
    live: Option<L>,
    retry: RetrySchedule,
    counters: Arc<LinkCounters>,
    /// Which task, in the logs.
    label: &'static str,
    /// The broker's URL without its password, in the logs.
    broker: String,
}

impl<L> Supervised<L> {
    /// Not connected yet (see [`first`](Self::first)), nothing scheduled.
    pub(crate) fn new(
        label: &'static str,
        broker: &Broker,
        counters: Arc<LinkCounters>,
    ) -> Supervised<L> {
        Supervised {
            live: None,
            retry: RetrySchedule::new(broker.config.reconnect_max),
            counters,
            label,
            broker: broker.shown(),
        }
    }

    /// Makes the first connection and tells the task's starter how that
    /// went; `false` when it failed (the task then ends: a first
    /// connection is not retried, the caller hears why instead).
    pub(crate) async fn first<F>(
        &mut self,
        open: F,
        started: &std::sync::mpsc::Sender<Result<()>>,
    ) -> bool
    where
        F: std::future::Future<Output = Result<L>>,
    {
        match open.await {
            Ok(live) => {
                self.live = Some(live);
                let _ = started.send(Ok(()));
                true
            }
            Err(e) => {
                let _ = started.send(Err(e));
                false
            }
        }
    }

    /// The connection, while there is one.
    pub(crate) fn live(&self) -> Option<&L> {
        self.live.as_ref()
    }

    /// The connection, while there is one.
    pub(crate) fn live_mut(&mut self) -> Option<&mut L> {
        self.live.as_mut()
    }

    /// Whether there is a connection.
    pub(crate) fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// The connection, at the end of the task (to close it).
    pub(crate) fn into_live(self) -> Option<L> {
        self.live
    }

    /// The connection failed (`why`): dropped, counted, logged, and the
    /// first attempt scheduled. Nothing when there was none already.
    pub(crate) fn lost(&mut self, why: &str) {
        if self.live.take().is_some() {
            self.counters.lost.bump();
            self.retry.lost(Instant::now());
            tracing::warn!(
                broker = %self.broker,
                "{}: connection to the broker lost: {why}; reconnecting",
                self.label
            );
        }
    }

    /// When to call [`reconnect`](Self::reconnect): `None` while connected.
    /// For the task's `select!`, with [`sleep_until`].
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        if self.live.is_some() {
            None
        } else {
            self.retry.at()
        }
    }

    /// One attempt, `open`, beating `pulse` meanwhile: on success the
    /// connection is the new live one, counted and logged; on failure the
    /// next attempt is scheduled.
    pub(crate) async fn reconnect<F>(&mut self, open: F, pulse: &Pulse)
    where
        F: std::future::Future<Output = Result<L>>,
    {
        match beating(open, pulse).await {
            Ok(live) => {
                self.live = Some(live);
                self.retry.connected();
                self.counters.reconnected.bump();
                tracing::info!(broker = %self.broker, "{}: reconnected to the broker", self.label);
            }
            Err(e) => {
                let wait = self.retry.failed(Instant::now());
                tracing::debug!(
                    broker = %self.broker,
                    "{}: reconnecting failed, again in {wait:?}: {e}",
                    self.label
                );
            }
        }
    }
}

/// Sleeps until `at`; never when `None` (a `select!` arm that is off).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queue, exchange and binding arguments from the configuration.
pub(crate) fn field_table(arguments: &BTreeMap<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in arguments {
        table.insert(k.as_str().into(), amqp_value(v));
    }
    table
}

fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => {
            let mut t = FieldTable::default();
            for (k, v) in o {
                t.insert(k.as_str().into(), amqp_value(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}

/// Runs a connection's task on a thread of its own (named `name`, with a
/// current-thread runtime: the task owns its connection, the handles talk
/// to it through channels) and returns once the task reported its start
/// on the sender it is given: then its loop's [`Health`](crate::health::Health)
/// and a receiver that fires after the loop ended. The task owns its
/// [`Pulse`](crate::health::Pulse), so the loop reads as ended (the pulse
/// dropped with the task's future) before `done` fires.
pub(crate) fn spawn_task<T, F>(
    name: &str,
    task: F,
) -> Result<(tokio::sync::oneshot::Receiver<()>, crate::health::Health)>
where
    F: FnOnce(std::sync::mpsc::Sender<Result<()>>, crate::health::Pulse) -> T + Send + 'static,
    T: std::future::Future<Output = ()>,
{
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (pulse, health) = crate::health::Health::new();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = started_tx.send(Err(Error::os("cannot start the AMQP runtime", e)));
                    return;
                }
            };
            runtime.block_on(task(started_tx, pulse));
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::os(format!("cannot start the thread {name}"), e))?;
    started_rx.recv().map_err(|_| Error::Closed)??;
    Ok((done, health))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Record;
    use futures_util::FutureExt;

    #[test]
    fn backoff_doubles_to_its_bound() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(0, max), Duration::from_millis(100));
        assert_eq!(backoff(3, max), Duration::from_millis(800));
        assert_eq!(backoff(40, max), max);
    }

    #[test]
    fn a_loss_retries_after_the_first_backoff_then_doubles() {
        let max = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut retry = RetrySchedule::new(max);
        assert_eq!(retry.at(), None);
        retry.lost(t0);
        assert_eq!(retry.at(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(retry.failed(t1), Duration::from_millis(200));
        assert_eq!(retry.at(), Some(t1 + Duration::from_millis(200)));
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(retry.failed(t2), Duration::from_millis(400));
        assert_eq!(retry.failed(t2), Duration::from_millis(800));
        // Bounded by `reconnect_max` from then on.
        assert_eq!(retry.failed(t2), max);
        assert_eq!(retry.failed(t2), max);
        assert_eq!(retry.at(), Some(t2 + max));
    }

    #[test]
    fn a_reconnection_clears_the_schedule_and_the_next_loss_starts_over() {
        let max = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut retry = RetrySchedule::new(max);
        retry.lost(t0);
        retry.failed(t0);
        retry.failed(t0);
        retry.connected();
        assert_eq!(retry, RetrySchedule::new(max));
        let t1 = t0 + Duration::from_secs(60);
        retry.lost(t1);
        assert_eq!(retry.at(), Some(t1 + Duration::from_millis(100)));
        assert_eq!(retry.failed(t1), Duration::from_millis(200));
    }

    fn supervised() -> (Supervised<u32>, Arc<LinkCounters>) {
        let broker = Broker::new(
            &gilmsg_config::AmqpConfig::new("amqp://user:secret@127.0.0.1/"),
            "test",
        )
        .unwrap();
        let counters = Arc::new(LinkCounters::default());
        (Supervised::new("test", &broker, counters.clone()), counters)
    }

    #[tokio::test]
    async fn the_supervisor_counts_losses_and_reconnections_once_each() {
        let (pulse, _health) = crate::health::Health::new();
        let (mut conn, counters) = supervised();
        let (started, told) = std::sync::mpsc::channel();
        assert!(conn.first(async { Ok(1) }, &started).await);
        assert!(matches!(told.try_recv(), Ok(Ok(()))));
        assert_eq!(conn.live(), Some(&1));
        assert_eq!(conn.retry_at(), None);

        let before = Instant::now();
        conn.lost("the broker went away");
        conn.lost("again: nothing left to lose");
        assert_eq!(counters.snapshot().get("connection.lost"), 1);
        assert!(!conn.is_live());
        let first = conn.retry_at().unwrap();
        assert!(first >= before + Duration::from_millis(100));
        assert!(first <= Instant::now() + Duration::from_millis(100));

        conn.reconnect(async { Err(Error::Closed) }, &pulse).await;
        assert!(!conn.is_live());
        assert!(conn.retry_at().unwrap() >= first + Duration::from_millis(100));
        assert_eq!(counters.snapshot().get("connection.reconnected"), 0);

        conn.reconnect(async { Ok(2) }, &pulse).await;
        assert_eq!(conn.live(), Some(&2));
        assert_eq!(conn.retry_at(), None);
        assert_eq!(counters.snapshot().get("connection.reconnected"), 1);
        assert_eq!(conn.into_live(), Some(2));
    }

    #[tokio::test]
    async fn a_failed_first_connection_is_reported_not_retried() {
        let (mut conn, _counters) = supervised();
        let (started, told) = std::sync::mpsc::channel();
        assert!(!conn.first(async { Err(Error::Closed) }, &started).await);
        assert!(matches!(told.try_recv(), Ok(Err(Error::Closed))));
        assert!(!conn.is_live());
        assert_eq!(conn.retry_at(), None);
    }

    #[tokio::test]
    async fn a_burst_is_taken_until_a_command_says_stop() {
        let (tx, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        for command in [2, 3, 0, 4] {
            tx.send(command).unwrap();
        }
        let mut seen = Vec::new();
        let handle = async |command: u32| {
            seen.push(command);
            if command == 0 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        };
        assert_eq!(take_burst(1, &mut inbox, handle).await, Flow::Stop);
        assert_eq!(seen, [1, 2, 3, 0]);
        // What came after the stop is left in the inbox.
        assert_eq!(inbox.try_recv().ok(), Some(4));
        let mut seen = Vec::new();
        let handle = async |command: u32| {
            seen.push(command);
            Flow::Continue
        };
        assert_eq!(take_burst(5, &mut inbox, handle).await, Flow::Continue);
        assert_eq!(seen, [5]);
    }

    #[tokio::test]
    async fn linger_takes_what_comes_and_gives_up_after_a_second() {
        let mut confirms = FuturesUnordered::new();
        confirms.push(std::future::ready(1).boxed());
        confirms.push(std::future::pending().boxed());
        confirms.push(std::future::ready(2).boxed());
        let mut seen = Vec::new();
        let began = Instant::now();
        linger(&mut confirms, async |n| seen.push(n)).await;
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
        assert!(began.elapsed() >= Duration::from_secs(1));
        assert_eq!(confirms.len(), 1);
    }

    #[test]
    fn arguments_keep_their_types() {
        let mut args = BTreeMap::new();
        args.insert("x-max-priority".to_owned(), serde_json::json!(10));
        args.insert(
            "x-dead-letter-exchange".to_owned(),
            serde_json::json!("dlx"),
        );
        let t = field_table(&args);
        assert_eq!(t.inner().len(), 2);
        assert!(matches!(
            t.inner().get("x-max-priority"),
            Some(AMQPValue::LongLongInt(10))
        ));
    }
}
