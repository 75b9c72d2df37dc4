//! [`Redeliveries`]: how often a message whose handler failed goes back to
//! its queue before it is given up (dead-lettered or dropped), for a
//! transport whose broker redelivers what it was not told was handled
//! (AMQP's `basic.nack` with `requeue`).
//!
//! A broker's classic queue says only *whether* a delivery is a
//! redelivery, not how many times it was delivered; quorum queues add the
//! count (`x-delivery-count`). The count here is the larger of the two:
//! the consumer's own count of failures of that copy, and the broker's
//! when it gives one. The consumer's count lives in its memory, bounded
//! ([`Redeliveries::new`]'s capacity, oldest forgotten first), so a
//! consumer restart starts it again: a poison message then gets
//! `max_redeliveries` more tries, never an unbounded number per process.

use std::collections::{HashMap, VecDeque};

use crate::dedupe::CopyKey;

/// What to do with a delivery whose handler failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Put it back in its queue; this was failure number `failures`.
    Requeue {
        /// Failures so far, this one included.
        failures: u32,
    },
    /// Give it up: dead-letter it (if its queue has a dead-letter
    /// exchange) or drop it.
    GiveUp {
        /// Failures so far, this one included.
        failures: u32,
    },
}

/// The failure counts of messages being retried.
#[derive(Debug)]
pub struct Redeliveries {
    max_redeliveries: u32,
    capacity: usize,
    failures: HashMap<CopyKey, u32>,
    order: VecDeque<CopyKey>,
}

impl Redeliveries {
    /// A message is requeued at most `max_redeliveries` times; at most
    /// `capacity` (at least 1) counts are kept.
    pub fn new(max_redeliveries: u32, capacity: usize) -> Self {
        Redeliveries {
            max_redeliveries,
            capacity: capacity.max(1),
            failures: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The handler failed on `key`; `broker_deliveries` is how many times
    /// the broker says it delivered it before (`x-delivery-count`), if it
    /// says.
    pub fn on_failure(&mut self, key: CopyKey, broker_deliveries: Option<u32>) -> AfterFailure {
        let own = self.failures.get(&key).copied().unwrap_or(0);
        let failures = own
            .saturating_add(1)
            .max(broker_deliveries.unwrap_or(0).saturating_add(1));
        if failures > self.max_redeliveries {
            self.forget(&key);
            return AfterFailure::GiveUp { failures };
        }
        if self.failures.insert(key, failures).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.failures.remove(&old);
                }
            }
        }
        AfterFailure::Requeue { failures }
    }

    /// `key` was handled, or given up: its count goes.
    pub fn forget(&mut self, key: &CopyKey) {
        if self.failures.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    /// Counts kept.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether no count is kept.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedupe::{DedupeCache, Retention};
    use crate::digest::Digest;
    use std::time::Instant;

    fn key(n: u8) -> CopyKey {
        let cache = DedupeCache::new(Retention::default(), Instant::now());
        cache.copy_key(Digest::of_signed_part(&n.to_string()), None)
    }

    #[test]
    fn requeued_max_times_then_given_up() {
        let mut r = Redeliveries::new(2, 16);
        let k = key(1);
        assert_eq!(r.on_failure(k, None), AfterFailure::Requeue { failures: 1 });
        assert_eq!(r.on_failure(k, None), AfterFailure::Requeue { failures: 2 });
        assert_eq!(r.on_failure(k, None), AfterFailure::GiveUp { failures: 3 });
        assert!(r.is_empty());
        // Zero: never requeued.
        let mut never = Redeliveries::new(0, 16);
        assert_eq!(
            never.on_failure(k, None),
            AfterFailure::GiveUp { failures: 1 }
        );
    }

    #[test]
    fn the_brokers_count_wins_when_higher() {
        let mut r = Redeliveries::new(3, 16);
        let k = key(2);
        // A restarted consumer: the broker has delivered it 3 times before.
        assert_eq!(
            r.on_failure(k, Some(3)),
            AfterFailure::GiveUp { failures: 4 }
        );
        assert_eq!(
            r.on_failure(k, Some(1)),
            AfterFailure::Requeue { failures: 2 }
        );
    }

    #[test]
    fn success_forgets_and_memory_is_bounded() {
        let mut r = Redeliveries::new(5, 2);
        let (a, b, c) = (key(1), key(2), key(3));
        r.on_failure(a, None);
        r.forget(&a);
        assert_eq!(r.on_failure(a, None), AfterFailure::Requeue { failures: 1 });
        r.on_failure(b, None);
        r.on_failure(c, None);
        assert_eq!(r.len(), 2);
        // `a` was forgotten first.
        assert_eq!(r.on_failure(a, None), AfterFailure::Requeue { failures: 1 });
    }
}
