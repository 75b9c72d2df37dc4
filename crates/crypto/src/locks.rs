//! Taking the trust store's locks without panicking on poison.
//!
//! Every lock in this crate guards a value that is only ever changed by
//! whole operations that leave it consistent (a map insert, a value
//! replaced at once), so a panic elsewhere cannot leave it half-updated:
//! poisoning is safe to ignore, and ignoring it keeps one panicking thread
//! from making every later verification panic too.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A read guard, poisoned or not.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// A write guard, poisoned or not.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A mutex guard, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
