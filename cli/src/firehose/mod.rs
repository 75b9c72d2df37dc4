//! `gilmsg-firehose`: the bus on MQTT for anyone outside, and a live web
//! view of messages, receipts and heartbeats (`docs/firehose.md`).
//!
//! A sibling of `gilmsg-tail`: a subscriber that never ACKs (on ZeroMQ or
//! AMQP, as the configuration says) and judges every message's signature
//! itself with the consumer's [`Validator`]. What it does with each one:
//!
//! - republishes it to MQTT (if its topic passes the allow and deny lists)
//!   as `<mqtt prefix>/<bus topic with . as />`, with a JSON payload holding
//!   the body, the verdict, the signer and the signed text with its
//!   signature and certificate, so a subscriber can verify it again;
//! - feeds acknowledged messages (their signed `gilmsg_recipients`) and
//!   ACKs to a [`ReceiptWatch`], whose events go to
//!   `<receipt prefix>/<bus topic>`: waiting, acked (one per recipient),
//!   complete, or incomplete after `--receipt-window`;
//! - keeps the newest verified heartbeat of each identity and judges it as
//!   `gilmsg-status` does ([`crate::status::State::judge`]);
//! - with `--web`, serves the page and its event stream ([`web`]).
//!
//! The bus side never waits for the broker: [`mqtt::MqttSink`] takes
//! messages through a bounded buffer and counts what it drops.

pub mod mqtt;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gilmsg::crypto::TrustStore;
use gilmsg::monitoring::CounterSource;
use gilmsg::proto::ack::AckEntry;
use gilmsg::proto::policy::RoutingPolicy;
use gilmsg::proto::receipts::{AckVerdict, ReceiptEvent, ReceiptWatch};
use gilmsg::proto::{Envelope, Validator};
use serde_json::{json, Value};

use crate::common::{self, CommonArgs, Failure};
use crate::service::{Service, ServiceArgs, HEARTBEAT_MODNAME, HEARTBEAT_TOPIC};
use crate::signals::{SignalEvent, Signals};
use crate::status::State;
use crate::tail::{Filter, Verdict};
use mqtt::{MqttSettings, MqttSink, Outbound};
use web::{Hub, WebServer};

/// The start of the line printed on stderr once the bus side is subscribed.
pub const READY_LINE: &str = "gilmsg-firehose: ready";

const AFTER_HELP: &str = "\
MQTT topics: <--mqtt-prefix>/<bus topic, . as />  for each message
             <--receipt-prefix>/<bus topic, . as />  for each receipt event
('+', '#' and '/' in a bus topic become '_'.)

Allow and deny lists (--allow, --deny; repeatable; a prefix, or a glob with * ? [..]):
a topic is published when it matches an --allow (or none is given) and no --deny.
They apply to messages, ACKs, heartbeats and receipt events alike (a receipt event
is filtered by the acknowledged message's topic).

The broker being down never blocks the bus side: at most --buffer messages wait,
the rest are dropped and counted (dropped.buffer_full, on SIGUSR1 and /metrics).

Exit status: 0 after a stop (SIGINT/SIGTERM); 2 usage or configuration error;
3 bus error.";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-firehose",
    version,
    about = "Republish the bus to MQTT with signature verdicts and receipt events; serve a live web view. Never ACKs.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// The MQTT broker, HOST:PORT (without it: no MQTT, the web view only).
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// MQTT topic prefix of the messages.
    #[arg(long, value_name = "PREFIX", default_value = "gilmsg")]
    pub mqtt_prefix: String,
    /// MQTT topic prefix of the receipt events.
    #[arg(long, value_name = "PREFIX", default_value = "gilmsg-receipts")]
    pub receipt_prefix: String,
    /// MQTT QoS of every publish: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Ask the broker to retain the last message of each topic.
    #[arg(long)]
    pub retain: bool,
    /// MQTT client id.
    #[arg(long, value_name = "ID", default_value = "gilmsg-firehose")]
    pub client_id: String,
    /// MQTT user name.
    #[arg(long, value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// A file whose first line is the MQTT password (needs --mqtt-username).
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    pub mqtt_password_file: Option<std::path::PathBuf>,
    /// Messages waiting for the broker at most; more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub buffer: usize,
    /// Messages received and not yet handled at most; more are dropped by
    /// the firehose's own subscription (`dropped.queue_full`), never
    /// slowing the bus.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub queue: usize,
    /// Publish only topics matching one of these (repeatable).
    #[arg(long = "allow", value_name = "PATTERN")]
    pub allow: Vec<String>,
    /// Never publish topics matching one of these (repeatable).
    #[arg(long = "deny", value_name = "PATTERN")]
    pub deny: Vec<String>,
    /// Publish only messages whose signature is valid.
    #[arg(long)]
    pub only_valid: bool,
    /// How long an acknowledged message may wait for its ACKs before it is
    /// reported incomplete (default: the config's ack_timeout).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub receipt_window: Option<Duration>,
    /// Acknowledged messages watched at once at most (the oldest is given up).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub receipt_capacity: usize,
    /// An identity whose heartbeats the web view judges (repeatable;
    /// default: every name under [endpoints] but relay_outbound).
    #[arg(long = "expect", value_name = "NAME")]
    pub expect: Vec<String>,
    /// A newest heartbeat older than this is late (default: 2 x heartbeat_interval + 1s, or 61s).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub late_after: Option<Duration>,
    /// Serve the live web view on ADDRESS:PORT (port 0 picks one).
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub web: Option<String>,
    /// Monitoring endpoint and heartbeats.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The firehose's own counters (the stats line and `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    denied: AtomicU64,
    not_valid: AtomicU64,
    forwarded: AtomicU64,
    /// Dropped because the buffer to the MQTT owner was full.
    pub dropped_buffer_full: AtomicU64,
    /// Dropped because rumqttc's own queue was full.
    pub dropped_client_full: AtomicU64,
    /// Dropped because the payload is over the MQTT packet size.
    pub dropped_too_large: AtomicU64,
    /// Publishes written to the broker.
    pub mqtt_sent: AtomicU64,
    /// Connections made (the first and every reconnection).
    pub mqtt_connects: AtomicU64,
    /// Connections lost.
    pub mqtt_connection_lost: AtomicU64,
    receipt_waiting: AtomicU64,
    receipt_acked: AtomicU64,
    receipt_complete: AtomicU64,
    receipt_incomplete: AtomicU64,
    receipt_ack_unknown: AtomicU64,
    receipt_ack_refused: AtomicU64,
    /// Web events a slow client did not get.
    pub web_dropped: AtomicU64,
}

impl Counters {
    fn all(&self) -> [(&'static str, &'static str, &AtomicU64); 17] {
        [
            (
                "message.received",
                "messages received from the bus",
                &self.received,
            ),
            (
                "message.denied",
                "messages not published: topic denied",
                &self.denied,
            ),
            (
                "message.not_valid",
                "messages not published: --only-valid",
                &self.not_valid,
            ),
            (
                "message.forwarded",
                "messages and receipt events handed to the MQTT owner",
                &self.forwarded,
            ),
            (
                "dropped.buffer_full",
                "dropped: the buffer to the MQTT owner was full",
                &self.dropped_buffer_full,
            ),
            (
                "dropped.client_full",
                "dropped: the MQTT client's queue was full",
                &self.dropped_client_full,
            ),
            (
                "dropped.too_large",
                "dropped: over the MQTT packet size",
                &self.dropped_too_large,
            ),
            (
                "mqtt.sent",
                "publishes written to the broker",
                &self.mqtt_sent,
            ),
            (
                "mqtt.connects",
                "connections to the broker made",
                &self.mqtt_connects,
            ),
            (
                "mqtt.connection_lost",
                "connections to the broker lost",
                &self.mqtt_connection_lost,
            ),
            (
                "receipt.waiting",
                "acknowledged messages watched",
                &self.receipt_waiting,
            ),
            (
                "receipt.acked",
                "valid ACKs counted for a watched message",
                &self.receipt_acked,
            ),
            (
                "receipt.complete",
                "acknowledged messages that completed",
                &self.receipt_complete,
            ),
            (
                "receipt.incomplete",
                "acknowledged messages still incomplete after the window",
                &self.receipt_incomplete,
            ),
            (
                "receipt.ack_unknown",
                "ACK entries for no watched message",
                &self.receipt_ack_unknown,
            ),
            (
                "receipt.ack_refused",
                "ACK entries refused (not a recipient, digest, signer, duplicate)",
                &self.receipt_ack_refused,
            ),
            (
                "web.dropped",
                "web events a slow client did not get",
                &self.web_dropped,
            ),
        ]
    }

    /// The counters with a value, as a stats line shows them.
    pub fn stats(&self) -> gilmsg::Stats {
        gilmsg::Stats {
            counters: self
                .all()
                .iter()
                .map(|(name, _, v)| (format!("firehose.{name}"), v.load(Ordering::Relaxed)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl CounterSource for Counters {
    fn counters(&self) -> Vec<(String, &'static str, u64)> {
        self.all()
            .iter()
            .map(|(name, help, v)| ((*name).to_owned(), *help, v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The allow and deny lists.
#[derive(Debug, Default)]
struct TopicPolicy {
    allow: Vec<Filter>,
    deny: Vec<Filter>,
}

impl TopicPolicy {
    fn parse(allow: &[String], deny: &[String]) -> Result<TopicPolicy, Failure> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|t| Filter::parse(t))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TopicPolicy {
            allow: parse(allow)?,
            deny: parse(deny)?,
        })
    }

    fn allows(&self, topic: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(topic)))
            && !self.deny.iter().any(|f| f.matches(topic))
    }
}

/// The MQTT topic of a bus topic under `prefix`: `.` becomes `/`; MQTT's
/// wildcards and separator (`+`, `#`, `/`) and NUL become `_`, so one bus
/// topic is always exactly one MQTT topic level path.
pub fn mqtt_topic(prefix: &str, bus_topic: &str) -> String {
    let path: String = bus_topic
        .chars()
        .map(|c| match c {
            '.' => '/',
            '+' | '#' | '/' | '\0' => '_',
            c => c,
        })
        .collect();
    if prefix.is_empty() {
        path
    } else {
        format!("{}/{path}", prefix.trim_end_matches('/'))
    }
}

/// The MQTT (and web) payload of one message.
pub fn message_payload(message: &Envelope, verdict: &Verdict) -> Value {
    let (word, reason, signer, claimed) = match verdict {
        Verdict::Valid { signer } => ("valid", None, Some(signer.as_str()), None),
        Verdict::Unsigned => ("unsigned", None, None, None),
        Verdict::Invalid { reason, claimed } => {
            ("invalid", Some(*reason), None, claimed.as_deref())
        }
    };
    // The exact bytes the signature covers (canonical JSON of the body
    // without `signature` and `certificate`): a subscriber verifies the
    // signature over them with the certificate, and reads every field it
    // trusts from them, not from the convenience fields beside them.
    let signed = message.signed_part().ok().map(|p| p.as_str().to_owned());
    json!({
        "topic": message.topic(),
        "msg_id": message.msg_id(),
        "timestamp": message.timestamp(),
        "msg": message.msg(),
        "verdict": word,
        "valid": matches!(verdict, Verdict::Valid { .. }),
        "reason": reason,
        "signer": signer,
        "claimed_signer": claimed,
        "recipients": message.recipients(),
        "signed": signed,
        "crypto": message.crypto(),
        "signature": message.str_field("signature"),
        "certificate": message.str_field("certificate"),
    })
}

/// The JSON of one receipt event.
pub fn receipt_payload(event: &ReceiptEvent) -> Value {
    match event {
        ReceiptEvent::Waiting {
            msg_id,
            topic,
            publisher,
            recipients,
        } => json!({
            "event": "waiting", "msg_id": msg_id, "topic": topic,
            "publisher": publisher, "recipients": recipients,
        }),
        ReceiptEvent::Acked {
            msg_id,
            topic,
            recipient,
            after,
            digest_checked,
            missing,
        } => json!({
            "event": "acked", "msg_id": msg_id, "topic": topic, "recipient": recipient,
            "after_seconds": after.as_secs_f64(), "digest_checked": digest_checked, "missing": missing,
        }),
        ReceiptEvent::Complete {
            msg_id,
            topic,
            after,
        } => json!({
            "event": "complete", "msg_id": msg_id, "topic": topic, "after_seconds": after.as_secs_f64(),
        }),
        ReceiptEvent::Incomplete {
            msg_id,
            topic,
            acked,
            missing,
            forgotten,
        } => json!({
            "event": "incomplete", "msg_id": msg_id, "topic": topic, "acked": acked,
            "missing": missing, "forgotten": forgotten,
        }),
    }
}

fn event_topic(event: &ReceiptEvent) -> &str {
    match event {
        ReceiptEvent::Waiting { topic, .. }
        | ReceiptEvent::Acked { topic, .. }
        | ReceiptEvent::Complete { topic, .. }
        | ReceiptEvent::Incomplete { topic, .. } => topic,
    }
}

/// Where everything the firehose produces goes.
struct Outlets {
    policy: TopicPolicy,
    mqtt: Option<MqttSink>,
    hub: Option<Arc<Hub>>,
    mqtt_prefix: String,
    receipt_prefix: String,
    counters: Arc<Counters>,
}

impl Outlets {
    fn message(&self, message: &Envelope, verdict: &Verdict, only_valid: bool) {
        if !self.policy.allows(message.topic()) {
            Counters::bump(&self.counters.denied);
            return;
        }
        if only_valid && !matches!(verdict, Verdict::Valid { .. }) {
            Counters::bump(&self.counters.not_valid);
            return;
        }
        let payload = message_payload(message, verdict);
        if let Some(hub) = &self.hub {
            hub.broadcast("message", &payload);
        }
        self.publish(mqtt_topic(&self.mqtt_prefix, message.topic()), &payload);
    }

    fn receipt(&self, event: &ReceiptEvent) {
        let counter = match event {
            ReceiptEvent::Waiting { .. } => &self.counters.receipt_waiting,
            ReceiptEvent::Acked { .. } => &self.counters.receipt_acked,
            ReceiptEvent::Complete { .. } => &self.counters.receipt_complete,
            ReceiptEvent::Incomplete { .. } => &self.counters.receipt_incomplete,
        };
        Counters::bump(counter);
        if !self.policy.allows(event_topic(event)) {
            return;
        }
        let payload = receipt_payload(event);
        if let Some(hub) = &self.hub {
            hub.broadcast("receipt", &payload);
        }
        self.publish(
            mqtt_topic(&self.receipt_prefix, event_topic(event)),
            &payload,
        );
    }

    fn publish(&self, topic: String, payload: &Value) {
        if let Some(mqtt) = &self.mqtt {
            let sent = mqtt.offer(Outbound {
                topic,
                payload: payload.to_string().into_bytes(),
            });
            if sent {
                Counters::bump(&self.counters.forwarded);
            }
        }
    }
}

/// What the firehose heard from each identity's heartbeats.
struct Heartbeats {
    topic: String,
    expected: Vec<String>,
    newest: BTreeMap<String, i64>,
    late_after: Duration,
}

impl Heartbeats {
    fn status(&self) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut names: Vec<&String> = self.expected.iter().collect();
        names.extend(self.newest.keys().filter(|k| !self.expected.contains(k)));
        let identities: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let newest = self.newest.get(name).copied();
                json!({
                    "name": name,
                    "expected": self.expected.contains(name),
                    "state": State::judge(newest, now, self.late_after).as_str(),
                    "last_seen": newest.map(|t| humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))).to_string()),
                    "age_seconds": newest.map(|t| (now - t as f64).max(0.0)),
                })
            })
            .collect();
        json!({"identities": identities, "late_after_seconds": self.late_after.as_secs_f64()})
    }
}

/// Runs the firehose until a signal.
pub fn run(args: Args) -> Result<(), Failure> {
    let runtime = common::runtime()?;
    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        let mut config = args.common.load()?;
        args.service.apply(&mut config);
        config.validate()?;
        if args.common.printed_config(&config) {
            return Ok(());
        }
        let policy = TopicPolicy::parse(&args.allow, &args.deny)?;
        let trust = TrustStore::load(&config.ca_cert_path(), config.crl_path().as_deref())
            .map_err(|e| Failure::usage(format!("error: cannot load the trust store: {e}")))?;
        let rules: HashMap<String, Vec<String>> = config
            .routing_policy
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let validator = Validator::new(Arc::new(trust), RoutingPolicy::new(rules, config.routing_nitpicky));
        let counters = Arc::new(Counters::default());
        let mqtt = match &args.mqtt {
            None => None,
            Some(address) => {
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| Failure::usage(format!("error: --mqtt {address:?}: expected HOST:PORT")))?;
                let credentials = match (&args.mqtt_username, &args.mqtt_password_file) {
                    (Some(user), Some(file)) => {
                        let text = std::fs::read_to_string(file).map_err(|e| {
                            Failure::usage(format!("error: --mqtt-password-file {}: {e}", file.display()))
                        })?;
                        Some((user.clone(), text.lines().next().unwrap_or_default().to_owned()))
                    }
                    (Some(user), None) => Some((user.clone(), String::new())),
                    _ => None,
                };
                let qos = match args.qos {
                    0 => rumqttc::QoS::AtMostOnce,
                    1 => rumqttc::QoS::AtLeastOnce,
                    _ => rumqttc::QoS::ExactlyOnce,
                };
                let settings = MqttSettings {
                    host,
                    port,
                    client_id: args.client_id.clone(),
                    credentials,
                    qos,
                    retain: args.retain,
                    // The payload holds the body (at most max_message_size)
                    // escaped once more inside `signed`, and the certificate.
                    max_packet: config.max_message_size.saturating_mul(3).saturating_add(64 * 1024),
                };
                Some(MqttSink::start(settings, args.buffer, counters.clone()).map_err(|e| Failure {
                    status: common::EXIT_BUS,
                    message: format!("error: cannot start the MQTT thread: {e}"),
                })?)
            }
        };
        let hub = args.web.as_ref().map(|_| Hub::new(counters.clone()));
        let _web = match (&args.web, &hub) {
            (Some(bind), Some(hub)) => {
                let server = WebServer::start(bind, hub.clone()).map_err(|message| Failure {
                    status: common::EXIT_BUS,
                    message: format!("error: {message}"),
                })?;
                eprintln!("gilmsg-firehose: web view on http://{}/", server.local_addr());
                Some(server)
            }
            _ => None,
        };
        let outlets = Outlets {
            policy,
            mqtt,
            hub,
            mqtt_prefix: args.mqtt_prefix.clone(),
            receipt_prefix: args.receipt_prefix.clone(),
            counters: counters.clone(),
        };
        let scheme = config.topic_scheme();
        let ack_topic = scheme.ack_topic();
        let interval = config.heartbeat_interval;
        let mut heartbeats = Heartbeats {
            topic: scheme.topic(HEARTBEAT_MODNAME, HEARTBEAT_TOPIC),
            expected: crate::status::expected_identities(&args.expect, &config),
            newest: BTreeMap::new(),
            late_after: args
                .late_after
                .unwrap_or_else(|| interval.map_or(Duration::from_secs(61), |i| i * 2 + Duration::from_secs(1))),
        };
        let mut receipts = ReceiptWatch::new(
            args.receipt_window.unwrap_or(config.ack_timeout),
            args.receipt_capacity,
        );
        // Every decodable message reaches us; the verdict is ours to give.
        let mut service = Service::new("gilmsg-firehose", &config);
        config.validate_signatures = false;
        let mut consumer = gilmsg::Consumer::builder(&config)
            .send_acks(false)
            .private_queue(true)
            .deliver_acks(true)
            .deliver_heartbeats(true)
            .queue(args.queue)
            .build()?;
        service.watch("consumer", consumer.health(), consumer.metrics());
        service.add_metrics(gilmsg::monitoring::ComponentMetrics::from_source(
            "firehose",
            counters.clone(),
        ));
        service.start()?;
        tokio::select! {
            _ = consumer.ready() => {}
            event = signals.next() => if event == SignalEvent::Exit {
                consumer.close().await;
                return Ok(());
            },
        }
        service.ready_and_say(format_args!("{READY_LINE}"));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status: Option<Instant> = None;
        loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(delivery) = delivery else { break };
                    let now = Instant::now();
                    let message = delivery.message();
                    Counters::bump(&counters.received);
                    let verdict = Verdict::of(message, &validator);
                    outlets.message(message, &verdict, args.only_valid);
                    if let Verdict::Valid { signer } = &verdict {
                        if message.topic() == ack_topic {
                            on_ack(&mut receipts, &outlets, signer, message, now);
                        } else if message.topic() == heartbeats.topic {
                            if let Some(t) = message.timestamp() {
                                let newest = heartbeats.newest.entry(signer.clone()).or_insert(t);
                                *newest = (*newest).max(t);
                            }
                        } else if let Some(recipients) = message.recipients().filter(|_| message.wants_ack()) {
                            if let Ok(part) = message.signed_part() {
                                if let Ok(events) = receipts.on_message(
                                    message.msg_id(), message.topic(), Some(signer), part.digest(), &recipients, now,
                                ) {
                                    for event in &events {
                                        outlets.receipt(event);
                                    }
                                }
                            }
                        }
                    }
                    // Settled as handled; with ACKs off nothing is sent.
                    let _ = delivery.ack();
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for event in receipts.expire(now) {
                        outlets.receipt(&event);
                    }
                    if let Some(hub) = &outlets.hub {
                        if last_status.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                            last_status = Some(now);
                            hub.broadcast("status", &heartbeats.status());
                        }
                    }
                }
                event = signals.next() => match event {
                    SignalEvent::Stats => {
                        let mut stats = consumer.stats();
                        stats.counters.extend(counters.stats().counters);
                        eprintln!("{}", common::stats_line("gilmsg-firehose", &stats));
                    }
                    SignalEvent::Exit => break,
                },
            }
        }
        service.stopping();
        let mut stats = consumer.stats();
        stats.counters.extend(counters.stats().counters);
        eprintln!("{}", common::stats_line("gilmsg-firehose", &stats));
        consumer.close().await;
        drop(outlets);
        Ok(())
    })
}

/// Feeds every entry of a verified ACK to the receipts.
fn on_ack(
    receipts: &mut ReceiptWatch,
    outlets: &Outlets,
    signer: &str,
    message: &Envelope,
    now: Instant,
) {
    let Ok(entries) = AckEntry::all_from_msg(message.msg()) else {
        Counters::bump(&outlets.counters.receipt_ack_refused);
        return;
    };
    for entry in &entries {
        let (verdict, events) = receipts.on_ack(signer, entry, now);
        match verdict {
            AckVerdict::Counted => {}
            AckVerdict::Unknown => Counters::bump(&outlets.counters.receipt_ack_unknown),
            AckVerdict::Refused(kind) => {
                tracing::debug!(
                    signer,
                    msg_id = entry.ack_msg_id,
                    kind,
                    "receipt: ACK refused"
                );
                Counters::bump(&outlets.counters.receipt_ack_refused);
            }
        }
        for event in &events {
            outlets.receipt(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_topics_become_one_mqtt_path_each() {
        assert_eq!(
            mqtt_topic("gilmsg", "org.x.prod.billing.paid"),
            "gilmsg/org/x/prod/billing/paid"
        );
        assert_eq!(mqtt_topic("a/b/", "t.+.#/x"), "a/b/t/_/__x");
        assert_eq!(mqtt_topic("", "a.b"), "a/b");
    }

    #[test]
    fn allow_then_deny() {
        let policy =
            TopicPolicy::parse(&["org.x.".into()], &["org.x.prod.secret.*".into()]).unwrap();
        assert!(policy.allows("org.x.prod.billing.paid"));
        assert!(!policy.allows("org.x.prod.secret.key"));
        assert!(!policy.allows("org.y.prod.billing.paid"));
        assert!(TopicPolicy::default().allows("anything"));
    }
}
