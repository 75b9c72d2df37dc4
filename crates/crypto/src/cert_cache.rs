//! The bounded cache of certificates that passed chain validation *and*
//! verified a signature, keyed by the SHA-256 of the certificate's signed
//! part (the `TBSCertificate`, see `trust.rs`).
//!
//! Two properties matter more than the hit rate:
//!
//! - **Only proven entries go in.** The trust store inserts a certificate
//!   after a message signed with its key verified, so forged messages that
//!   carry someone's (valid, public) certificate with a bad signature cannot
//!   add entries, and cannot evict the ones in use.
//! - **Eviction is not a flush.** The cache has two generations of at most
//!   `capacity / 2` entries each. Inserts go into the young one; when it is
//!   full it becomes the old one and the previous old one is dropped. A hit
//!   in the old generation is moved back into the young one. So the
//!   certificates in steady use survive any number of evictions, and at
//!   most half of the entries go at once: an approximate LRU with O(1)
//!   operations and, unlike a list-based LRU, no write lock on a young hit
//!   (the common case: a bus's few identities, seen thousands of times a
//!   second).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

use crate::locks::{read, write};

/// A bounded map from `K` to shared values; see the module docs.
pub(crate) struct GenerationalCache<K, V> {
    half: usize,
    inner: RwLock<Generations<K, V>>,
}

struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Eq + Hash + Clone, V: Clone> GenerationalCache<K, V> {
    /// A cache holding at most `capacity` entries (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        GenerationalCache {
            half: (capacity / 2).max(1),
            inner: RwLock::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// The value for `key`, if cached; refreshes an old entry.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        {
            let g = read(&self.inner);
            if let Some(v) = g.young.get(key) {
                return Some(v.clone());
            }
            if !g.old.contains_key(key) {
                return None;
            }
        }
        let mut g = write(&self.inner);
        let v = g.old.remove(key).or_else(|| g.young.get(key).cloned())?;
        self.put(&mut g, key.to_owned(), v.clone());
        Some(v)
    }

    /// Remembers `value` for `key`.
    pub(crate) fn insert(&self, key: K, value: V) {
        let mut g = write(&self.inner);
        g.old.remove(&key);
        self.put(&mut g, key, value);
    }

    fn put(&self, g: &mut Generations<K, V>, key: K, value: V) {
        if g.young.len() >= self.half && !g.young.contains_key(&key) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key, value);
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        let g = read(&self.inner);
        g.young.len() + g.old.len()
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        let mut g = write(&self.inner);
        g.young.clear();
        g.old.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_what_is_in_use() {
        let cache = GenerationalCache::new(8);
        cache.insert(0u32, "hot");
        for i in 1..1000u32 {
            cache.insert(i, "cold");
            // The hot entry is used between every insert.
            assert_eq!(cache.get(&0), Some("hot"), "evicted at insert {i}");
            assert!(cache.len() <= 8, "{} entries", cache.len());
        }
    }

    #[test]
    fn eviction_drops_at_most_half() {
        let cache = GenerationalCache::new(8);
        for i in 0..8u32 {
            cache.insert(i, i);
        }
        assert_eq!(cache.len(), 8);
        cache.insert(100, 100);
        assert_eq!(cache.len(), 5, "one generation of 4 dropped, not all");
        // The generation before the newest four is still there.
        assert_eq!(cache.get(&7), Some(7));
        assert_eq!(cache.get(&0), None);
    }

    #[test]
    fn reinserting_a_key_does_not_grow_or_rotate() {
        let cache = GenerationalCache::new(4);
        cache.insert(1u8, 1);
        cache.insert(2u8, 2);
        for _ in 0..10 {
            cache.insert(2u8, 2);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1), Some(1));
    }
}
