//! Counters each component keeps about what it did and what it refused, and
//! [`Stats`], the snapshot a handle reads.
//!
//! Every dropped or refused message is counted under a stable name
//! (`invalid.not_json`, `ack.rejected.bad_signature`, ...), so "nothing lost
//! silently" can be checked by tests and operators alike.
//!
//! The counters are plain atomic fields, one struct per component (as
//! async-nats keeps its `Statistics`), bumped with relaxed atomics: no lock
//! on the path of a message. Per-reason families (`rejected.<kind>`) are a
//! small array of slots, each claimed by the first reason counted in it
//! (the reasons are the `kind()` names of the protocol's typed refusals).
//! [`Stats`] turns them into the dotted names, leaving out counters that
//! are still zero and gauges never set, as the string-keyed map before
//! them did, so the command-line stats lines read the same.
//!
//! The same fields are what `/metrics` shows ([`Export`]): each counter
//! struct writes its fields into a `prometheus-client` encoder at scrape
//! time, so nothing is counted twice. A few fields exist for `/metrics`
//! only and stay out of [`Stats`]: the ACK latency histograms
//! ([`Latency`]), timeouts by recipient and topic ([`Timeouts`]). Queue
//! depths that only the reader of a queue can see are read when asked
//! ([`Probe`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// A count that only grows.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn bump(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn record(&self, name: &str, into: &mut BTreeMap<String, u64>) {
        let value = self.0.load(Ordering::Relaxed);
        if value > 0 {
            into.insert(name.to_owned(), value);
        }
    }
}

/// A value that is set, not added to (how many entries a memory holds now).
#[derive(Debug)]
pub(crate) struct Gauge(AtomicU64);

/// A gauge's value before it is first set: it is then left out of [`Stats`].
const NOT_SET: u64 = u64::MAX;

impl Default for Gauge {
    fn default() -> Self {
        Gauge(AtomicU64::new(NOT_SET))
    }
}

impl Gauge {
    /// Sets the value.
    pub(crate) fn set(&self, value: u64) {
        self.0.store(value.min(NOT_SET - 1), Ordering::Relaxed);
    }

    fn record(&self, name: &str, into: &mut BTreeMap<String, u64>) {
        let value = self.0.load(Ordering::Relaxed);
        if value != NOT_SET {
            into.insert(name.to_owned(), value);
        }
    }
}

/// Slots in one [`Family`]: more than any refusal enum has kinds.
const FAMILY_SLOTS: usize = 32;

/// Counts by reason, `<family>.<kind>`. A slot is claimed by the first
/// reason counted in it; `kind` names are the protocol's `&'static str`
/// kinds, compared by text. Lock-free: claiming a slot is a `OnceLock`.
#[derive(Debug, Default)]
pub(crate) struct Family {
    kinds: [OnceLock<&'static str>; FAMILY_SLOTS],
    counts: [AtomicU64; FAMILY_SLOTS],
    /// Reasons past the last slot (never, with today's enums).
    other: AtomicU64,
}

impl Family {
    /// Adds one under `kind`.
    pub(crate) fn bump(&self, kind: &'static str) {
        for (slot, count) in self.kinds.iter().zip(&self.counts) {
            let claimed = *slot.get_or_init(|| kind);
            if claimed == kind {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.other.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, name: &str, into: &mut BTreeMap<String, u64>) {
        for (slot, count) in self.kinds.iter().zip(&self.counts) {
            let Some(kind) = slot.get() else { break };
            let value = count.load(Ordering::Relaxed);
            if value > 0 {
                *into.entry(format!("{name}.{kind}")).or_default() += value;
            }
        }
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            into.insert(format!("{name}.other"), other);
        }
    }
}

/// Writes one field into a Prometheus encoder, under `name` (the dotted
/// stats name with `_` for `.`; the registry adds `gilmsg_<component>_`).
pub(crate) trait Export {
    /// Encodes the field's descriptor and samples.
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result;
}

impl Export for Counter {
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let metric = ConstCounter::new(self.0.load(Ordering::Relaxed));
        metric.encode(out.encode_descriptor(name, help, None, MetricType::Counter)?)
    }
}

impl Export for Gauge {
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let value = self.0.load(Ordering::Relaxed);
        let encoder = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
        if value == NOT_SET {
            return Ok(());
        }
        ConstGauge::new(value).encode(encoder)
    }
}

impl Export for Family {
    /// One counter with a `reason` label per kind counted.
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let mut encoder = out.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (slot, count) in self.kinds.iter().zip(&self.counts) {
            let Some(kind) = slot.get() else { break };
            let labels = [("reason", *kind)];
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(encoder.encode_family(&labels)?)?;
        }
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            let labels = [("reason", "other")];
            ConstCounter::new(other).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The upper bounds, in seconds, of the ACK latency histograms' buckets:
/// from a loopback round trip to the longest `ack_timeout` people use.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations in [`LATENCY_BUCKETS`] (and one past the
/// last), with their sum in microseconds. For `/metrics` only.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Latency {
    /// Records one duration.
    pub(crate) fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn record(&self, _name: &str, _into: &mut BTreeMap<String, u64>) {}
}

impl Export for Latency {
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let encoder = out.encode_descriptor(name, help, None, MetricType::Histogram)?;
        // The encoder takes each bucket's own count and sums them itself.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let mut encoder = encoder;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// At most this many (recipient, topic) pairs are counted apart; the rest
/// go under `other` (topics and names come from callers and configs, and a
/// scrape must stay small).
pub(crate) const MAX_TIMEOUT_PAIRS: usize = 1000;

/// Recipients that did not ACK in time, by recipient and topic. For
/// `/metrics` only; `publish.timed_out` counts the messages.
#[derive(Debug, Default)]
pub(crate) struct Timeouts {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl Timeouts {
    /// One recipient did not ACK a message on `topic` in time.
    pub(crate) fn bump(&self, recipient: &str, topic: &str) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let key = (recipient.to_owned(), topic.to_owned());
        if counts.len() >= MAX_TIMEOUT_PAIRS && !counts.contains_key(&key) {
            *counts.entry(("other".into(), "other".into())).or_default() += 1;
        } else {
            *counts.entry(key).or_default() += 1;
        }
    }

    fn record(&self, _name: &str, _into: &mut BTreeMap<String, u64>) {}
}

impl Export for Timeouts {
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let counts = match self.counts.lock() {
            Ok(counts) => counts.clone(),
            Err(_) => BTreeMap::new(),
        };
        let mut encoder = out.encode_descriptor(name, help, None, MetricType::Counter)?;
        for ((recipient, topic), value) in &counts {
            let labels = [("recipient", recipient.as_str()), ("topic", topic.as_str())];
            ConstCounter::new(*value).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A gauge read when asked, from whoever can see it (how many deliveries
/// wait in a queue the application drains). Unset until a reader is given.
#[derive(Default)]
pub(crate) struct Probe {
    read: OnceLock<Box<dyn Fn() -> Option<u64> + Send + Sync>>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Probe")
    }
}

impl Probe {
    /// Where to read the value from (`None`: nothing to read any more).
    pub(crate) fn set(&self, read: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        let _ = self.read.set(Box::new(read));
    }

    fn value(&self) -> Option<u64> {
        self.read.get().and_then(|read| read())
    }

    fn record(&self, name: &str, into: &mut BTreeMap<String, u64>) {
        if let Some(value) = self.value() {
            into.insert(name.to_owned(), value);
        }
    }
}

impl Export for Probe {
    fn export(&self, name: &str, help: &str, out: &mut DescriptorEncoder) -> fmt::Result {
        let encoder = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
        match self.value() {
            Some(value) => ConstGauge::new(value).encode(encoder),
            None => Ok(()),
        }
    }
}

/// Every field of one counter struct, for `/metrics`.
pub(crate) trait ExportAll: Send + Sync + fmt::Debug {
    /// Encodes every field, names without the component's prefix.
    fn export_all(&self, out: &mut DescriptorEncoder) -> fmt::Result;
}

/// The metric name of the stats name `key` under `component`:
/// `relay.forwarded` in the relay is `forwarded` (the registry puts
/// `gilmsg_relay_` before it), `message.received` is `message_received`.
fn metric_name(component: &str, key: &str) -> String {
    let key = key
        .strip_prefix(component)
        .and_then(|k| k.strip_prefix('.'))
        .unwrap_or(key);
    key.replace('.', "_")
}

/// Writes one counter struct's values under their dotted names.
pub(crate) trait Record {
    /// Inserts every counter that has a value.
    fn record(&self, into: &mut BTreeMap<String, u64>);

    /// A snapshot of them.
    fn snapshot(&self) -> Stats {
        let mut counters = BTreeMap::new();
        self.record(&mut counters);
        Stats { counters }
    }
}

/// Declares a struct of counters with the dotted name of each.
macro_rules! counters {
    (
        $(#[$doc:meta])*
        $name:ident in $component:literal {
            $($(#[$field_doc:meta])* $field:ident: $kind:ident = $key:literal,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub(crate) struct $name {
            $($(#[$field_doc])* pub(crate) $field: $kind,)*
            /// What the component's sockets count.
            pub(crate) link: Arc<LinkCounters>,
        }

        impl Record for $name {
            fn record(&self, into: &mut BTreeMap<String, u64>) {
                $(self.$field.record($key, into);)*
                self.link.record(into);
            }
        }

        impl ExportAll for $name {
            fn export_all(&self, out: &mut DescriptorEncoder) -> fmt::Result {
                $(
                    self.$field.export(
                        &metric_name($component, $key),
                        concat!("gilmsg stats name: ", $key),
                        out,
                    )?;
                )*
                self.link.export_all(out)
            }
        }
    };
}

/// What every socket-owning component counts about its connections
/// (`connection.*`) and its peers' subscriptions (`subscriptions.*`).
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    /// libzmq dropped a connection we made without reconnecting; we did.
    pub(crate) protocol_error: Counter,
    /// AMQP: connections lost (the broker restarted, the network broke).
    pub(crate) lost: Counter,
    /// AMQP: connections made again after one was lost.
    pub(crate) reconnected: Counter,
    /// Why every peer of an XPUB was dropped, and data sent upstream.
    pub(crate) subscriptions: Family,
}

impl Record for LinkCounters {
    fn record(&self, into: &mut BTreeMap<String, u64>) {
        self.protocol_error
            .record("connection.protocol_error", into);
        self.lost.record("connection.lost", into);
        self.reconnected.record("connection.reconnected", into);
        self.subscriptions.record("subscriptions", into);
    }
}

impl ExportAll for LinkCounters {
    fn export_all(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        self.protocol_error.export(
            "connection_protocol_error",
            "gilmsg stats name: connection.protocol_error",
            out,
        )?;
        self.lost
            .export("connection_lost", "gilmsg stats name: connection.lost", out)?;
        self.reconnected.export(
            "connection_reconnected",
            "gilmsg stats name: connection.reconnected",
            out,
        )?;
        self.subscriptions
            .export("subscriptions", "gilmsg stats name: subscriptions", out)
    }
}

counters! {
    /// What a publisher counts (`publish.*`, `ack.*`).
    PublisherCounters in "publisher" {
        sent: Counter = "publish.sent",
        sent_plain: Counter = "publish.sent_plain",
        resent: Counter = "publish.resent",
        resend_deferred: Counter = "publish.resend_deferred",
        acked: Counter = "publish.acked",
        timed_out: Counter = "publish.timed_out",
        no_subscriber: Counter = "publish.no_subscriber",
        /// AMQP: returned by the broker: no queue bound for the topic.
        unroutable: Counter = "publish.unroutable",
        /// AMQP: confirmed by the broker and routed to a queue.
        confirmed: Counter = "publish.confirmed",
        cancelled: Counter = "publish.cancelled",
        ack_received: Counter = "ack.received",
        /// ACK signatures checked together with others of their burst, in
        /// one batch (the rest were checked one at a time).
        signature_batched: Counter = "signature.batched",
        ack_batches: Counter = "ack.batches",
        ack_counted: Counter = "ack.counted",
        /// Entries judged and not counted (`ack.not_a_recipient`, ...) and
        /// whole ACKs for nothing in flight or on another topic.
        ack: Family = "ack",
        ack_invalid: Family = "ack.invalid",
        ack_rejected: Family = "ack.rejected",
        /// Acknowledged publishes in flight (sent or waiting to be).
        in_flight: Gauge = "publish.in_flight",
        /// From a publish to its last ACK (its receipt's `elapsed`).
        ack_latency: Latency = "ack_latency_seconds",
        /// Each recipient that did not ACK in time, with the topic.
        timeouts: Timeouts = "timeouts_by_recipient",
    }
}

counters! {
    /// What a consumer counts (`message.*`, `invalid.*`, `rejected.*`,
    /// `duplicate.*`, `dropped.*`, `handler.*`, `ack.*`, `dedupe.*`).
    ConsumerCounters in "consumer" {
        received: Counter = "message.received",
        delivered: Counter = "message.delivered",
        ack_skipped: Counter = "message.ack_skipped",
        /// Heartbeats not handed to the application.
        heartbeat_skipped: Counter = "message.heartbeat_skipped",
        legacy_unsigned_gilmsg_version: Counter = "message.legacy_unsigned_gilmsg_version",
        /// Signatures checked together with others of their burst, in
        /// one batch (the rest were checked one at a time).
        signature_batched: Counter = "signature.batched",
        /// Delivered messages whose `msg` passed their topic's schema.
        schema_checked: Counter = "schema.checked",
        /// Delivered messages naming (`fedora_messaging_schema`) a schema
        /// other than this consumer's for their topic, or on a topic it has
        /// no schema for.
        schema_unknown_name: Counter = "schema.unknown_name",
        invalid: Family = "invalid",
        rejected: Family = "rejected",
        duplicate: Family = "duplicate",
        dropped: Family = "dropped",
        handler_ok: Counter = "handler.ok",
        handler_failed: Counter = "handler.failed",
        /// AMQP: failed, back to the queue for another try.
        handler_requeued: Counter = "handler.requeued",
        /// AMQP: failed after every redelivery; dead-lettered or dropped.
        handler_gave_up: Counter = "handler.gave_up",
        /// AMQP: ACK messages the broker confirmed (then the deliveries
        /// they acknowledge were consumed).
        ack_confirmed: Counter = "ack.confirmed",
        acks_sent: Counter = "ack.sent",
        ack_entries: Counter = "ack.entries",
        ack_send_failed: Counter = "ack.send_failed",
        ack_sign_failed: Counter = "ack.sign_failed",
        dedupe_entries: Gauge = "dedupe.entries",
        dedupe_evicted: Gauge = "dedupe.evicted",
        dedupe_expired: Gauge = "dedupe.expired",
        /// Deliveries waiting for the application.
        queue_deliveries: Probe = "queue.deliveries",
        /// From a message's arrival to its ACK being queued.
        ack_latency: Latency = "ack_latency_seconds",
    }
}

counters! {
    /// What a relay counts (`relay.*`).
    RelayCounters in "relay" {
        forwarded: Counter = "relay.forwarded",
        frames: Counter = "relay.frames",
        dropped: Family = "relay.dropped",
        subscriptions: Gauge = "relay.subscriptions",
        subscribers: Gauge = "relay.subscribers",
        publishers: Gauge = "relay.publishers",
    }
}

counters! {
    /// What a bridge counts (`zmq_to_amqp.*`, `amqp_to_zmq.*`).
    BridgeCounters in "bridge" {
        /// ZeroMQ messages read.
        zmq_received: Counter = "zmq_to_amqp.received",
        /// Published to AMQP and confirmed by the broker.
        zmq_confirmed: Counter = "zmq_to_amqp.confirmed",
        /// ACKs published to the AMQP publisher that asked (its `reply_to`).
        zmq_acks_routed: Counter = "zmq_to_amqp.acks_routed",
        /// Not carried: loop marks and malformed messages, by reason.
        zmq_refused: Family = "zmq_to_amqp.refused",
        /// Lost: backlog full, no broker, not confirmed, by reason.
        zmq_dropped: Family = "zmq_to_amqp.dropped",
        /// AMQP deliveries read.
        amqp_received: Counter = "amqp_to_zmq.received",
        /// Sent on the ZeroMQ socket (then acknowledged to the broker).
        amqp_sent: Counter = "amqp_to_zmq.sent",
        /// Unsigned messages wrapped and signed by the bridge.
        amqp_wrapped: Counter = "amqp_to_zmq.wrapped",
        /// Not carried: loop marks and malformed messages, by reason.
        amqp_refused: Family = "amqp_to_zmq.refused",
        /// Not carried on purpose (ACKs routed to an AMQP publisher).
        amqp_skipped: Family = "amqp_to_zmq.skipped",
        /// Given back to the broker (requeued), by reason.
        amqp_requeued: Family = "amqp_to_zmq.requeued",
        /// Subscriptions seen on the ZeroMQ socket.
        zmq_subscriptions: Gauge = "amqp_to_zmq.subscriptions",
    }
}

/// A snapshot of a component's counters, keyed `group.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Counter values by name.
    pub counters: BTreeMap<String, u64>,
}

impl Stats {
    /// One counter, 0 if never bumped.
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The sum of every counter whose name starts with `prefix`.
    pub fn sum(&self, prefix: &str) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_carry_the_dotted_names_of_what_was_counted() {
        let c = ConsumerCounters::default();
        assert_eq!(c.snapshot(), Stats::default());
        c.received.bump();
        c.received.add(2);
        c.rejected.bump("bad_signature");
        c.rejected.bump("too_old");
        c.rejected.bump("bad_signature");
        c.dedupe_entries.set(0);
        c.link.protocol_error.bump();
        c.link.subscriptions.bump("over_limit");
        let s = c.snapshot();
        assert_eq!(
            s.to_string(),
            "connection.protocol_error=1 dedupe.entries=0 message.received=3 \
             rejected.bad_signature=2 rejected.too_old=1 subscriptions.over_limit=1"
        );
        assert_eq!(s.sum("rejected."), 3);
        assert_eq!(s.get("dedupe.evicted"), 0);
    }

    #[test]
    fn a_family_counts_every_reason_even_past_its_slots() {
        let f = Family::default();
        let kinds: Vec<&'static str> = (0..FAMILY_SLOTS + 3)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        for kind in &kinds {
            f.bump(kind);
        }
        let mut into = BTreeMap::new();
        f.record("x", &mut into);
        assert_eq!(into.values().sum::<u64>(), kinds.len() as u64);
        assert_eq!(into.get("x.other"), Some(&3));
    }
}
