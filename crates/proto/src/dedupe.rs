//! Bounded memory of which `msg_id`s a consumer has seen, and with what result.
//!
//! Publishers re-send until acked, so a consumer sees most ids more than once
//! when anything is lost. The cache answers "handle it, or just ACK again?"
//! and forgets the oldest ids first once full: memory stays at `capacity`
//! entries however long the process runs. An id evicted and then re-sent is
//! handled a second time; size the cache to cover the ids seen within the
//! longest `ack_timeout` in use.
//!
//! Ids are remembered as a 128-bit SipHash under two random per-process
//! keys, not as strings: about 80 bytes an entry instead of about 140,
//! which is what keeps a consumer's memory flat and small. Nobody can aim
//! for a collision without the keys, and an accidental one is
//! astronomically unlikely; even then it could only make a new message
//! look like a re-send (so it is not handled, and not acked: a timeout, the
//! safe side), never make a publisher count an ACK it should not.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

/// What happened to a message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Given to the handler, no verdict yet.
    InProgress,
    /// The handler succeeded. Holds the SHA-256 of the handled body's signed
    /// part when an ACK was sent, so a re-send is re-acked only if it is the
    /// same body.
    Done(Option<[u8; 32]>),
    /// The handler failed or the delivery was dropped: never ACKed.
    Failed,
}

/// A bounded first-in-first-out map from `msg_id` to [`Seen`].
#[derive(Debug)]
pub struct DedupeCache {
    capacity: usize,
    keys: (RandomState, RandomState),
    states: HashMap<u128, Seen>,
    order: VecDeque<u128>,
    evicted: u64,
}

impl DedupeCache {
    /// A cache holding at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DedupeCache {
            capacity,
            keys: (RandomState::new(), RandomState::new()),
            states: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
            evicted: 0,
        }
    }

    fn key(&self, msg_id: &str) -> u128 {
        (u128::from(self.keys.0.hash_one(msg_id)) << 64) | u128::from(self.keys.1.hash_one(msg_id))
    }

    /// The state of `msg_id`, if remembered.
    pub fn get(&self, msg_id: &str) -> Option<Seen> {
        self.states.get(&self.key(msg_id)).copied()
    }

    /// Records a first sighting as [`Seen::InProgress`]. Returns the earlier
    /// state instead if the id is already known.
    pub fn first_sight(&mut self, msg_id: &str) -> Result<(), Seen> {
        let key = self.key(msg_id);
        if let Some(state) = self.states.get(&key) {
            return Err(*state);
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.states.remove(&oldest);
                self.evicted += 1;
            }
        }
        self.order.push_back(key);
        self.states.insert(key, Seen::InProgress);
        Ok(())
    }

    /// Sets the verdict for a known id; unknown (evicted) ids are ignored.
    pub fn set(&mut self, msg_id: &str, state: Seen) {
        let key = self.key(msg_id);
        if let Some(slot) = self.states.get_mut(&key) {
            *slot = state;
        }
    }

    /// Forgets `msg_id`, so a re-send is handled as new (used when a message
    /// could not even be queued for the handler).
    pub fn forget(&mut self, msg_id: &str) {
        let key = self.key(msg_id);
        if self.states.remove(&key).is_some() {
            // Linear, but only on rare paths (a message that could not be
            // queued after all); a full queue never inserts in the first place.
            self.order.retain(|k| *k != key);
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many ids were forgotten to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_evicts_oldest() {
        let mut cache = DedupeCache::new(3);
        for id in ["a", "b", "c"] {
            cache.first_sight(id).unwrap();
        }
        cache.set("a", Seen::Done(None));
        assert_eq!(cache.first_sight("a"), Err(Seen::Done(None)));
        cache.first_sight("d").unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.evicted(), 1);
        assert_eq!(cache.get("b"), Some(Seen::InProgress));
        cache.forget("b");
        assert_eq!(cache.get("b"), None);
        assert!(cache.first_sight("b").is_ok());
    }

    #[test]
    fn bounded_over_many_ids() {
        let mut cache = DedupeCache::new(1000);
        for i in 0..100_000 {
            cache.first_sight(&format!("id-{i}")).unwrap();
        }
        assert_eq!(cache.len(), 1000);
        assert_eq!(cache.evicted(), 99_000);
    }
}
