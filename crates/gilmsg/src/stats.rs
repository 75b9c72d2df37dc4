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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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
        $name:ident {
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

counters! {
    /// What a publisher counts (`publish.*`, `ack.*`).
    PublisherCounters {
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
        ack_batches: Counter = "ack.batches",
        ack_counted: Counter = "ack.counted",
        /// Entries judged and not counted (`ack.not_a_recipient`, ...) and
        /// whole ACKs for nothing in flight or on another topic.
        ack: Family = "ack",
        ack_invalid: Family = "ack.invalid",
        ack_rejected: Family = "ack.rejected",
    }
}

counters! {
    /// What a consumer counts (`message.*`, `invalid.*`, `rejected.*`,
    /// `duplicate.*`, `dropped.*`, `handler.*`, `ack.*`, `dedupe.*`).
    ConsumerCounters {
        received: Counter = "message.received",
        delivered: Counter = "message.delivered",
        ack_skipped: Counter = "message.ack_skipped",
        legacy_unsigned_gilmsg_version: Counter = "message.legacy_unsigned_gilmsg_version",
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
    }
}

counters! {
    /// What a relay counts (`relay.*`).
    RelayCounters {
        forwarded: Counter = "relay.forwarded",
        frames: Counter = "relay.frames",
        dropped: Family = "relay.dropped",
        subscriptions: Gauge = "relay.subscriptions",
        subscribers: Gauge = "relay.subscribers",
        publishers: Gauge = "relay.publishers",
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
