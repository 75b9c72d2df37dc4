//! Counters an actor keeps about what it did and what it refused.
//!
//! Every dropped or refused frame is counted under a stable name
//! (`invalid.not_json`, `ack.rejected.bad_signature`, ...), so "nothing lost
//! silently" can be checked by tests and operators alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, cheap-to-bump counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    inner: Arc<Mutex<BTreeMap<(&'static str, &'static str), u64>>>,
}

impl Counters {
    pub(crate) fn bump(&self, group: &'static str, name: &'static str) {
        self.add(group, name, 1);
    }

    pub(crate) fn add(&self, group: &'static str, name: &'static str, n: u64) {
        if let Ok(mut map) = self.inner.lock() {
            *map.entry((group, name)).or_default() += n;
        }
    }

    pub(crate) fn set(&self, group: &'static str, name: &'static str, value: u64) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert((group, name), value);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let counters = match self.inner.lock() {
            Ok(map) => map
                .iter()
                .map(|((g, n), v)| (format!("{g}.{n}"), *v))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        Stats { counters }
    }
}

/// A snapshot of an actor's counters, keyed `group.name`.
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
