//! Opening a connection to the broker and declaring what the configuration
//! lists: the URL (password never logged), TLS through rustls on ring with
//! the `[tls]` CA bundle and client certificate, fedora-messaging's
//! `[client_properties]`, the `[exchanges]`, the back-off between
//! reconnection attempts, and the thread each connection's task runs on.

use std::collections::BTreeMap;
use std::time::Duration;

use gilmsg_config::amqp::redact_url;
use gilmsg_config::{AmqpConfig, ExchangeConfig};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::error::{Error, Result};

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
    let mut every = tokio::time::interval(crate::health::PULSE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = every.tick() => pulse.beat(),
        }
    }
}

/// The wait before reconnection attempt `attempt` (0-based): 100 ms
/// doubling, at most `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    RECONNECT_MIN.saturating_mul(factor).min(max)
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

    #[test]
    fn backoff_doubles_to_its_bound() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(0, max), Duration::from_millis(100));
        assert_eq!(backoff(3, max), Duration::from_millis(800));
        assert_eq!(backoff(40, max), max);
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
