//! The consumer's memory of the messages it has accepted: which bodies it
//! has handled (so a re-send is re-acked, not handled again), for how long,
//! and how it keeps a replayed message from being handled twice once it has
//! been forgotten.
//!
//! ## Keys
//!
//! Every accepted message is remembered under two keys:
//!
//! - its [`CopyKey`]: the [`Digest`] of its signed part *and* a hash of the
//!   certificate it came with, looked up **before** verification. The signed
//!   part leaves out `signature` and `certificate`, so any identity can
//!   re-sign a victim's exact body and get the same digest; only a copy that
//!   also carries the certificate that was verified is the very message that
//!   was verified and handled, and is settled (re-acked or ignored) without
//!   verifying it again. Nothing else is trusted from the copy: a re-ACK
//!   names the digest and the signer that were handled. A copy with another
//!   certificate is verified like a new message;
//! - `(signer, msg_id)`, checked **after** verification: one signer's
//!   `msg_id` is handled once, whatever body it comes with later, and a
//!   message signed by another identity that reuses a victim's `msg_id`, or
//!   re-signs the victim's whole body, is a message of its own, remembered
//!   under its own signer: it can neither take the id away from the victim
//!   nor settle the victim's message. A verified copy of a remembered body
//!   that comes with another certificate of the same signer is a duplicate
//!   ([`Refused::OtherCertificate`]) and is never acked. Without signature
//!   checks the signer is unknown and the key is the `msg_id` alone (anyone
//!   can then forge anything anyway).
//!
//! `(signer, msg_id)` pairs and certificate texts (whitespace left out, as
//! the base64 may be wrapped) are remembered as 64-bit SipHashes under a
//! random per-process key; nobody can aim for a collision without it. An
//! accidental identity collision (about 1 in 10^10 at 32 768 entries) could
//! only make a new message look like one already handled with another body:
//! refused, never acked, a timeout (the safe side); an accidental
//! certificate collision needs the same digest as well. The names of the
//! signers of remembered messages are kept once per signer. About 100 bytes
//! an entry in all (one 72-byte slot, two 4-byte table buckets at most half
//! full, a 4-byte slot number in the order queue).
//!
//! ## Time, capacity and the replay floor
//!
//! A message is accepted only if its signed `timestamp` (whole seconds)
//! lies within `max_age` + `clock_skew` in the past and `clock_skew` in the
//! future ([`Retention`]); an entry is kept at least until its timestamp has
//! left that window, after which a replay is refused by the window itself.
//! So in a quiet consumer memory follows the traffic of the last
//! `max_age`, not the capacity.
//!
//! `capacity` bounds memory. When it is reached by entries still inside the
//! window, the oldest one that is not being handled is forgotten anyway, and
//! its signer's **replay floor** rises to its timestamp: from then on that
//! signer's messages stamped at or before the floor are refused
//! ([`Refused::BelowFloor`]). A forgotten message can therefore never be
//! handled twice; the price, under a load beyond `capacity` messages per
//! window, is that late first copies (and re-sends) older than the floor are
//! refused, and their publishers time out, which is the safe side. Floors are
//! kept per signer so that one busy signer with a fast clock cannot push out
//! another whose clock lags; their number is bounded too (past
//! [`MAX_SIGNER_FLOORS`], the lowest is folded into one floor for all).
//! Leaving the window raises the floor as well, so a wall clock stepped back
//! cannot bring a forgotten message back.
//!
//! An entry whose handler is still running is never forgotten: if nothing
//! else can go, the new message is refused ([`Refused::Full`]).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};

use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// How long messages stay acceptable and remembered, and how many may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most entries kept (a memory bound; at least 1).
    pub capacity: usize,
    /// How old a message's `timestamp` may be (`max_message_age`).
    pub max_age: Duration,
    /// Tolerated clock difference between publisher and consumer, both ways
    /// (`clock_skew`).
    pub clock_skew: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            capacity: 32_768,
            max_age: Duration::from_secs(600),
            clock_skew: Duration::from_secs(60),
        }
    }
}

/// How often a message already acked may be acked again: the n-th re-ACK
/// needs `first * 2^(n-1)` (at most `max`) since the previous ACK of that
/// message. A publisher re-sends with the same doubling, so its re-sends
/// are always answered, while a replay of one message at any rate costs a
/// signature only a few times a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReackPolicy {
    /// Spacing before the first re-ACK.
    pub first: Duration,
    /// Largest spacing.
    pub max: Duration,
}

impl Default for ReackPolicy {
    fn default() -> Self {
        ReackPolicy {
            first: Duration::from_millis(10),
            max: Duration::from_millis(500),
        }
    }
}

/// What happened to a remembered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Given to the handler, no verdict yet.
    InProgress,
    /// The handler succeeded; `acked` when an ACK was sent for it.
    Done {
        /// An ACK was sent (so re-sends are re-acked).
        acked: bool,
    },
    /// The handler failed or the delivery was dropped: never acked.
    Failed,
}

/// Why a message's timestamp is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// No `timestamp` field, so no age can be checked.
    NoTimestamp,
    /// Older than `max_age + clock_skew`.
    TooOld {
        /// Seconds beyond the window.
        by_secs: i64,
    },
    /// Further than `clock_skew` in the future.
    FromFuture {
        /// Seconds beyond the skew.
        by_secs: i64,
    },
}

impl Stale {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Stale::NoTimestamp => "no_timestamp",
            Stale::TooOld { .. } => "too_old",
            Stale::FromFuture { .. } => "from_future",
        }
    }
}

/// What identifies a `certificate` field's text: its bytes between runs of
/// ASCII whitespace, which base64 may carry anywhere without changing the
/// certificate. Every check that two copies carry the same certificate
/// (the dedupe cache's [`DedupeCache::copy_key`], a consumer's burst
/// checked ahead) goes through this.
///
/// By byte, not by char: the same chunks (ASCII whitespace never occurs
/// inside a multi-byte UTF-8 character) without decoding UTF-8, which cost
/// more than the hashing.
pub fn certificate_chunks(text: &str) -> impl Iterator<Item = &[u8]> {
    text.as_bytes()
        .split(u8::is_ascii_whitespace)
        .filter(|chunk| !chunk.is_empty())
}

/// What a copy of a remembered message is recognised by before it is
/// verified: the digest of its signed part and a keyed hash of the
/// certificate text it carries ([`DedupeCache::copy_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyKey {
    digest: Digest,
    certificate: u64,
}

impl CopyKey {
    /// The digest of the signed part.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// Why a verified message was not remembered (and so must not be handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its signer already had this `msg_id`, with another body.
    SameIdOtherBody(Seen),
    /// Its signer already had this very body, carried with another
    /// certificate: a copy, but not the one that was verified, so it is
    /// never acked.
    OtherCertificate(Seen),
    /// Stamped at or before its signer's replay floor: an id that old may
    /// have been forgotten.
    BelowFloor {
        /// The floor (seconds since the epoch).
        floor: i64,
    },
    /// Full of entries whose handlers are still running.
    Full,
}

/// Signers whose replay floors are tracked one by one.
pub const MAX_SIGNER_FLOORS: usize = 4096;

/// Up to this capacity the tables are sized for it from the start.
const PRESIZED: usize = 1 << 20;

#[derive(Debug, Clone)]
struct Entry {
    identity: u64,
    signer: u64,
    timestamp: i64,
    handling: Handling,
}

/// How a remembered message has been handled and acked, in one word: the
/// milliseconds since the cache's `epoch` of its last ACK (48 bits, enough
/// for 8,900 years; all ones before any ACK), how many times it was
/// re-acked (8 bits, saturating: the spacing stops doubling at 16), its
/// [`Seen`] state (2 bits) and whether its ACKs may be batched (1 bit).
///
/// Packed because the cache holds one per entry: as four separate fields
/// they padded a slot from 72 bytes to 80, 256 KiB of the consumer's
/// steady-state RSS at the default 32,768 entries (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handling(u64);

impl Handling {
    const MILLIS_BITS: u32 = 48;
    /// The last-ACK field before any ACK was sent.
    const NEVER: u64 = (1 << Self::MILLIS_BITS) - 1;
    /// The latest instant the last-ACK field can hold.
    const LATEST: u64 = Self::NEVER - 1;
    const REACKS_SHIFT: u32 = Self::MILLIS_BITS;
    const STATE_SHIFT: u32 = Self::REACKS_SHIFT + 8;
    const BATCHABLE_BIT: u64 = 1 << (Self::STATE_SHIFT + 2);

    /// A message just admitted: being handled, never acked.
    fn admitted(batchable: bool) -> Self {
        let word = Self::NEVER | Self::state_bits(Seen::InProgress);
        Handling(if batchable {
            word | Self::BATCHABLE_BIT
        } else {
            word
        })
    }

    fn state_bits(state: Seen) -> u64 {
        let code: u64 = match state {
            Seen::InProgress => 0,
            Seen::Done { acked: false } => 1,
            Seen::Done { acked: true } => 2,
            Seen::Failed => 3,
        };
        code << Self::STATE_SHIFT
    }

    fn state(self) -> Seen {
        match (self.0 >> Self::STATE_SHIFT) & 3 {
            0 => Seen::InProgress,
            1 => Seen::Done { acked: false },
            2 => Seen::Done { acked: true },
            _ => Seen::Failed,
        }
    }

    fn set_state(&mut self, state: Seen) {
        self.0 = (self.0 & !(3 << Self::STATE_SHIFT)) | Self::state_bits(state);
    }

    fn batchable(self) -> bool {
        self.0 & Self::BATCHABLE_BIT != 0
    }

    fn reacks(self) -> u32 {
        ((self.0 >> Self::REACKS_SHIFT) & 0xff) as u32
    }

    /// Milliseconds since `epoch` of the last ACK; `None` before one.
    fn last_ack_ms(self) -> Option<u64> {
        let millis = self.0 & Self::NEVER;
        (millis != Self::NEVER).then_some(millis)
    }

    /// Records an ACK sent at `millis` (clamped to what the field holds).
    fn set_last_ack(&mut self, millis: u64) {
        self.0 = (self.0 & !Self::NEVER) | millis.min(Self::LATEST);
    }

    /// Records a re-ACK sent at `millis`.
    fn reacked(&mut self, millis: u64) {
        let reacks = (self.reacks() + 1).min(0xff) as u64;
        self.0 = (self.0 & !(0xff << Self::REACKS_SHIFT)) | (reacks << Self::REACKS_SHIFT);
        self.set_last_ack(millis);
    }
}

/// A remembered message, as [`DedupeCache::get`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// Its state.
    pub state: Seen,
    /// Whether its ACKs may be batched.
    pub batchable: bool,
    /// Its verified signer (`None` when signatures are not checked).
    pub signer: Option<Arc<str>>,
}

/// One remembered message: its copy key and what is known about it.
#[derive(Debug, Clone)]
struct Slot {
    key: CopyKey,
    entry: Entry,
}

/// The bounded memory described in the module doc.
///
/// The entries live once, in `slots`, and two tables of slot numbers find
/// them by copy key and by identity: 72 bytes an entry plus 4 a bucket in
/// each table and 4 in the order queue, about 3.0 MiB at the default 32 768 entries. (Two
/// `HashMap`s holding the keys themselves took 9 MiB there, with more
/// left behind by each doubling: the consumer's steady-state RSS was 19.5
/// MiB in `gilmsg-bench --soak`, 13-14 MiB with this layout.)
#[derive(Debug)]
pub struct DedupeCache {
    retention: Retention,
    keys: RandomState,
    /// Every remembered message; the free ones are listed in `free`.
    slots: Vec<Slot>,
    /// Slots that held a forgotten message, to reuse.
    free: Vec<u32>,
    /// Slot of each remembered message by its copy key.
    by_copy: HashTable<u32>,
    /// Slot of each remembered message by its identity.
    by_identity: HashTable<u32>,
    /// The name of each signer with remembered messages, and how many.
    names: HashMap<u64, (Arc<str>, usize)>,
    /// Slot numbers in insertion order, oldest first. A slot number, not
    /// the identity: 4 bytes an entry, not 8 (128 KiB at the default
    /// capacity). It never names a reused slot: a slot is freed only by
    /// `take`, and every `take` drops its number from here too (`expire`
    /// and `evict_one` pop it first, `forget` filters it out).
    order: VecDeque<u32>,
    floors: HashMap<u64, i64>,
    /// Applies to every signer (floors folded in past `MAX_SIGNER_FLOORS`).
    common_floor: i64,
    epoch: Instant,
    evicted: u64,
    expired: u64,
}

impl DedupeCache {
    /// An empty cache; `epoch` is any instant before the ones passed later.
    pub fn new(retention: Retention, epoch: Instant) -> Self {
        // Slot numbers are `u32`s (4 billion entries would be 300 GiB).
        let capacity = retention.capacity.clamp(1, u32::MAX as usize);
        DedupeCache {
            retention: Retention {
                capacity,
                ..retention
            },
            keys: RandomState::new(),
            // Sized for the capacity at once (up to a bound), so the tables
            // and the order queue never double on the way there: each
            // doubling left the old buffer's memory behind in the
            // allocator. Pages of `slots` are touched only as it fills;
            // the tables' and the order queue's (a ring: its front walks
            // the whole buffer) all in time, even in a quiet consumer:
            // about 0.75 MiB at the default capacity.
            slots: Vec::with_capacity(capacity.min(PRESIZED)),
            free: Vec::new(),
            by_copy: HashTable::with_capacity(capacity.min(PRESIZED)),
            by_identity: HashTable::with_capacity(capacity.min(PRESIZED)),
            order: VecDeque::with_capacity(capacity.min(PRESIZED)),
            names: HashMap::new(),
            floors: HashMap::new(),
            common_floor: i64::MIN,
            epoch,
            evicted: 0,
            expired: 0,
        }
    }

    /// The slot of the message remembered under `key`.
    fn find_copy(&self, key: &CopyKey) -> Option<usize> {
        let slots = &self.slots;
        self.by_copy
            .find(self.keys.hash_one(key), |&i| slots[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    /// The slot of the message remembered under `identity`.
    fn find_identity(&self, identity: u64) -> Option<usize> {
        let slots = &self.slots;
        // An identity is a keyed hash already: it is its own table hash.
        self.by_identity
            .find(identity, |&i| slots[i as usize].entry.identity == identity)
            .map(|&i| i as usize)
    }

    /// Remembers `entry` under `key` and its identity; returns its slot.
    fn insert(&mut self, key: CopyKey, entry: Entry) -> u32 {
        let identity = entry.identity;
        let slot = Slot { key, entry };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                // `admit` evicts before the capacity is passed, and the
                // capacity is at most `u32::MAX` (see `new`), so a new
                // slot's number always fits.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(slot);
                i
            }
        };
        let Self {
            keys,
            slots,
            by_copy,
            by_identity,
            ..
        } = self;
        by_copy.insert_unique(keys.hash_one(key), index, |&i| {
            keys.hash_one(slots[i as usize].key)
        });
        by_identity.insert_unique(identity, index, |&i| slots[i as usize].entry.identity);
        index
    }

    /// Forgets the message in slot `index` from both tables; returns it.
    fn take(&mut self, index: usize) -> Entry {
        let Self {
            keys,
            slots,
            by_copy,
            by_identity,
            free,
            ..
        } = self;
        let slot = &slots[index];
        if let Ok(found) = by_copy.find_entry(keys.hash_one(slot.key), |&i| i as usize == index) {
            found.remove();
        }
        if let Ok(found) = by_identity.find_entry(slot.entry.identity, |&i| i as usize == index) {
            found.remove();
        }
        free.push(index as u32);
        slot.entry.clone()
    }

    fn identity(&self, signer: Option<&str>, msg_id: &str) -> u64 {
        self.keys.hash_one((signer, msg_id))
    }

    fn signer_key(&self, signer: Option<&str>) -> u64 {
        self.keys.hash_one(signer)
    }

    /// The key a message is looked up by before verification: `digest` of
    /// its signed part and its `certificate` field (whitespace left out: the
    /// base64 may be wrapped anywhere without changing the certificate).
    pub fn copy_key(&self, digest: Digest, certificate: Option<&str>) -> CopyKey {
        let mut hasher = self.keys.build_hasher();
        match certificate {
            None => hasher.write_u8(0),
            Some(text) => {
                hasher.write_u8(1);
                for chunk in certificate_chunks(text) {
                    hasher.write(chunk);
                }
            }
        }
        CopyKey {
            digest,
            certificate: hasher.finish(),
        }
    }

    fn window_secs(&self) -> (i64, i64) {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let skew = secs(self.retention.clock_skew);
        (secs(self.retention.max_age).saturating_add(skew), skew)
    }

    /// Whether a message stamped `timestamp` may be accepted at wall-clock
    /// second `now`.
    pub fn check_age(&self, timestamp: Option<i64>, now: i64) -> Result<(), Stale> {
        let Some(timestamp) = timestamp else {
            return Err(Stale::NoTimestamp);
        };
        let (past, future) = self.window_secs();
        let oldest = now.saturating_sub(past);
        let newest = now.saturating_add(future);
        if timestamp < oldest {
            return Err(Stale::TooOld {
                by_secs: oldest.saturating_sub(timestamp),
            });
        }
        if timestamp > newest {
            return Err(Stale::FromFuture {
                by_secs: timestamp.saturating_sub(newest),
            });
        }
        Ok(())
    }

    /// The message remembered under `key`, if any.
    pub fn get(&self, key: &CopyKey) -> Option<Remembered> {
        let e = &self.slots[self.find_copy(key)?].entry;
        Some(Remembered {
            state: e.handling.state(),
            batchable: e.handling.batchable(),
            signer: self.names.get(&e.signer).map(|(name, _)| Arc::clone(name)),
        })
    }

    /// The replay floor of `signer`: its messages stamped at or before it
    /// are refused.
    pub fn floor(&self, signer: Option<&str>) -> i64 {
        let own = self
            .floors
            .get(&self.signer_key(signer))
            .copied()
            .unwrap_or(i64::MIN);
        own.max(self.common_floor)
    }

    /// Remembers a verified message under `key` as [`Seen::InProgress`],
    /// unless its signer already had this `msg_id` or it is below the
    /// signer's floor. Forgets what has left the window first, and the
    /// oldest entry when full (raising that signer's floor).
    pub fn admit(
        &mut self,
        signer: Option<&str>,
        msg_id: &str,
        key: CopyKey,
        timestamp: i64,
        now: i64,
        batchable: bool,
    ) -> Result<(), Refused> {
        self.expire(now);
        let identity = self.identity(signer, msg_id);
        if let Some(earlier) = self.find_identity(identity) {
            let Slot {
                key: earlier,
                entry,
            } = &self.slots[earlier];
            let state = entry.handling.state();
            return Err(if earlier.digest == key.digest {
                Refused::OtherCertificate(state)
            } else {
                Refused::SameIdOtherBody(state)
            });
        }
        if let Some(entry) = self.find_copy(&key).map(|i| &self.slots[i].entry) {
            // Not reached when the caller looked `key` up first (the same
            // certificate verifies as the same signer); never overwrite.
            return Err(Refused::OtherCertificate(entry.handling.state()));
        }
        let floor = self.floor(signer);
        if timestamp <= floor {
            return Err(Refused::BelowFloor { floor });
        }
        if self.len() >= self.retention.capacity && !self.evict_one() {
            return Err(Refused::Full);
        }
        let name = signer;
        let signer = self.signer_key(signer);
        if let Some(name) = name {
            self.names
                .entry(signer)
                .or_insert_with(|| (Arc::from(name), 0))
                .1 += 1;
        }
        let index = self.insert(
            key,
            Entry {
                identity,
                signer,
                timestamp,
                handling: Handling::admitted(batchable),
            },
        );
        self.order.push_back(index);
        Ok(())
    }

    /// Records the handler's verdict; `now` is when an ACK (if `state` says
    /// one was sent) went out, the start of the re-ACK spacing.
    pub fn settle(&mut self, key: &CopyKey, state: Seen, now: Instant) {
        let at = self.millis(now);
        if let Some(index) = self.find_copy(key) {
            let entry = &mut self.slots[index].entry;
            entry.handling.set_state(state);
            if state == (Seen::Done { acked: true }) {
                entry.handling.set_last_ack(at);
            }
        }
    }

    /// Whether a copy of the acked message `key` may be acked again at
    /// `now` under `policy`; if so, the re-ACK is recorded.
    pub fn may_reack(&mut self, key: &CopyKey, now: Instant, policy: &ReackPolicy) -> bool {
        let at = self.millis(now);
        let Some(index) = self.find_copy(key) else {
            return false;
        };
        let entry = &mut self.slots[index].entry;
        let Some(last) = entry.handling.last_ack_ms() else {
            return false;
        };
        let doublings = entry.handling.reacks().min(16);
        let spacing = policy
            .first
            .saturating_mul(1u32 << doublings)
            .min(policy.max);
        let spacing_ms = u64::try_from(spacing.as_millis()).unwrap_or(u64::MAX);
        if at.saturating_sub(last) < spacing_ms {
            return false;
        }
        entry.handling.reacked(at);
        true
    }

    /// Forgets `key` without raising any floor: for a message that was
    /// admitted but could not be handed over after all (never handled, so a
    /// re-send must get another chance).
    pub fn forget(&mut self, key: &CopyKey) {
        if let Some(index) = self.find_copy(key) {
            let entry = self.take(index);
            self.release_name(entry.signer);
            // Linear, but only on a rare path (the consumer closing).
            self.order.retain(|&slot| slot as usize != index);
        }
    }

    /// Messages remembered now.
    pub fn len(&self) -> usize {
        self.by_copy.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.by_copy.is_empty()
    }

    /// The memory bound.
    pub fn capacity(&self) -> usize {
        self.retention.capacity
    }

    /// Entries forgotten while still inside the window (each raised a floor).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Entries forgotten because their timestamp left the window.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(Handling::LATEST)
            .min(Handling::LATEST)
    }

    /// One fewer remembered message of `signer`: its name goes with its last.
    fn release_name(&mut self, signer: u64) {
        if let Some((_, count)) = self.names.get_mut(&signer) {
            *count -= 1;
            if *count == 0 {
                self.names.remove(&signer);
            }
        }
    }

    /// The slot number, key and entry at the front of the order; `None`
    /// when the order is empty or (which the invariant on `order` rules
    /// out) its front names a slot no table leads to.
    fn front(&self) -> Option<(u32, CopyKey, &Entry)> {
        let index = *self.order.front()?;
        let Slot { key, entry } = self.slots.get(index as usize)?;
        // By identity: its own hash, so the check costs no hashing.
        (self.find_identity(entry.identity) == Some(index as usize)).then_some((index, *key, entry))
    }

    /// Forgets entries from the front whose timestamp has left the window.
    /// Stops at the first one that has not (or whose handler is running):
    /// entries arrive roughly in timestamp order, and the rest wait their
    /// turn, still within the capacity bound.
    fn expire(&mut self, now: i64) {
        let (past, _) = self.window_secs();
        let oldest = now.saturating_sub(past);
        while !self.order.is_empty() {
            let Some((_, key, entry)) = self.front() else {
                // Cannot happen (order and maps change together); skip it.
                self.order.pop_front();
                continue;
            };
            if entry.timestamp >= oldest || entry.handling.state() == Seen::InProgress {
                break;
            }
            self.order.pop_front();
            self.remove(&key);
            self.expired += 1;
        }
    }

    /// Forgets the oldest entry whose handler is not running, raising its
    /// signer's floor. Entries being handled are moved to the back.
    fn evict_one(&mut self) -> bool {
        for _ in 0..self.order.len() {
            let front = self
                .front()
                .map(|(index, key, e)| (index, key, e.handling.state()));
            self.order.pop_front();
            match front {
                None => continue,
                Some((index, _, Seen::InProgress)) => self.order.push_back(index),
                Some((_, key, _)) => {
                    self.remove(&key);
                    self.evicted += 1;
                    return true;
                }
            }
        }
        false
    }

    /// Removes an entry and raises its signer's floor to its timestamp.
    fn remove(&mut self, key: &CopyKey) {
        let Some(index) = self.find_copy(key) else {
            return;
        };
        let entry = self.take(index);
        self.release_name(entry.signer);
        if !self.floors.contains_key(&entry.signer) && self.floors.len() >= MAX_SIGNER_FLOORS {
            // Fold the lowest floor into the common one: that refuses no
            // more than needed, and never less.
            if let Some((&key, &lowest)) = self.floors.iter().min_by_key(|(_, f)| **f) {
                self.floors.remove(&key);
                self.common_floor = self.common_floor.max(lowest);
            }
        }
        let floor = self.floors.entry(entry.signer).or_insert(i64::MIN);
        *floor = (*floor).max(entry.timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NOW: i64 = 1_800_000_000;

    fn retention(capacity: usize) -> Retention {
        Retention {
            capacity,
            max_age: Duration::from_secs(600),
            clock_skew: Duration::from_secs(60),
        }
    }

    fn d(n: u32) -> CopyKey {
        CopyKey {
            digest: Digest::of_signed_part(&n.to_string()),
            certificate: 0,
        }
    }

    fn admit(c: &mut DedupeCache, signer: &str, id: u32, ts: i64) -> Result<(), Refused> {
        c.admit(Some(signer), &format!("id-{id}"), d(id), ts, NOW, true)
    }

    #[test]
    fn an_entry_stays_small() {
        // Copy key (40) + entry (32) in one slot; a slot number in each of
        // two tables; the order queue: about 100 bytes an entry with the
        // tables' slack.
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 72);
    }

    #[test]
    fn a_handling_word_keeps_each_field_apart() {
        let states = [
            Seen::InProgress,
            Seen::Done { acked: false },
            Seen::Done { acked: true },
            Seen::Failed,
        ];
        for batchable in [false, true] {
            let mut h = Handling::admitted(batchable);
            assert_eq!(
                (h.state(), h.batchable(), h.reacks(), h.last_ack_ms()),
                (Seen::InProgress, batchable, 0, None)
            );
            h.reacked(7);
            h.reacked(8);
            for (i, state) in states.into_iter().enumerate() {
                h.set_state(state);
                h.set_last_ack(i as u64 * 1_000);
                assert_eq!(h.state(), state);
                assert_eq!(h.batchable(), batchable);
                assert_eq!(h.reacks(), 2);
                assert_eq!(h.last_ack_ms(), Some(i as u64 * 1_000));
            }
            for n in 3..=300u32 {
                h.reacked(u64::MAX);
                assert_eq!(h.reacks(), n.min(255));
                // A time past the field's range is held as its latest, never
                // as "no ACK yet".
                assert_eq!(h.last_ack_ms(), Some(Handling::LATEST));
                assert_eq!((h.state(), h.batchable()), (Seen::Failed, batchable));
            }
        }
    }

    #[test]
    fn the_age_window_includes_the_skew_both_ways() {
        let c = DedupeCache::new(retention(8), Instant::now());
        assert_eq!(c.check_age(None, NOW), Err(Stale::NoTimestamp));
        assert_eq!(c.check_age(Some(NOW - 660), NOW), Ok(()));
        assert_eq!(
            c.check_age(Some(NOW - 661), NOW),
            Err(Stale::TooOld { by_secs: 1 })
        );
        assert_eq!(c.check_age(Some(NOW + 60), NOW), Ok(()));
        assert_eq!(
            c.check_age(Some(NOW + 62), NOW),
            Err(Stale::FromFuture { by_secs: 2 })
        );
        // Extreme values saturate instead of overflowing.
        assert!(c.check_age(Some(i64::MIN), NOW).is_err());
        assert!(c.check_age(Some(i64::MAX), NOW).is_err());
        assert!(c.check_age(Some(0), i64::MAX).is_err());
    }

    #[test]
    fn remembered_by_digest_and_by_signer_and_msg_id() {
        let mut c = DedupeCache::new(retention(8), Instant::now());
        admit(&mut c, "alice", 1, NOW).unwrap();
        assert_eq!(c.get(&d(1)).map(|r| r.state), Some(Seen::InProgress));
        // Same signer, same msg_id, another body: refused.
        assert_eq!(
            c.admit(Some("alice"), "id-1", d(99), NOW, NOW, true),
            Err(Refused::SameIdOtherBody(Seen::InProgress))
        );
        // Another signer reusing alice's msg_id does not take it from her,
        // and is not blocked by her either.
        c.admit(Some("mallory"), "id-2", d(2), NOW, NOW, true)
            .unwrap();
        c.admit(Some("alice"), "id-2", d(3), NOW, NOW, true)
            .unwrap();
        // Unsigned: the msg_id alone.
        c.admit(None, "id-4", d(4), NOW, NOW, true).unwrap();
        assert!(matches!(
            c.admit(None, "id-4", d(5), NOW, NOW, true),
            Err(Refused::SameIdOtherBody(_))
        ));
        c.forget(&d(4));
        assert_eq!(c.get(&d(4)), None);
        c.admit(None, "id-4", d(5), NOW, NOW, true).unwrap();
    }

    #[test]
    fn copies_are_keyed_by_certificate_too_and_remember_their_signer() {
        let mut c = DedupeCache::new(retention(8), Instant::now());
        let body = Digest::of_signed_part("body");
        let alice = c.copy_key(body, Some("QUxJ\nQ0U=\n"));
        assert_eq!(alice, c.copy_key(body, Some("QUxJQ0U=")), "wrapping aside");
        let mallory = c.copy_key(body, Some("TUFMTE9SWQ=="));
        assert_ne!(alice, mallory);
        assert_ne!(c.copy_key(body, None), c.copy_key(body, Some("")));
        // Only ASCII whitespace is left out, also around multi-byte text
        // (U+00A0, a no-break space, is not).
        let odd = c.copy_key(body, Some("é\u{a0}x y"));
        assert_eq!(odd, c.copy_key(body, Some("é\u{a0}x\r\ny\t")));
        assert_ne!(odd, c.copy_key(body, Some("é x y")));
        // Mallory's re-signed copy first, then alice's: two messages.
        c.admit(Some("mallory"), "m1", mallory, NOW, NOW, true)
            .unwrap();
        assert_eq!(c.get(&alice), None);
        c.admit(Some("alice"), "m1", alice, NOW, NOW, true).unwrap();
        assert_eq!(
            c.get(&mallory).and_then(|r| r.signer).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            c.get(&alice).and_then(|r| r.signer).as_deref(),
            Some("alice")
        );
        // Alice's body again with another certificate text of hers.
        let other = c.copy_key(body, Some("another text"));
        assert_eq!(
            c.admit(Some("alice"), "m1", other, NOW, NOW, true),
            Err(Refused::OtherCertificate(Seen::InProgress))
        );
        // Names are kept while a message of theirs is remembered.
        c.admit(Some("alice"), "m2", d(2), NOW, NOW, true).unwrap();
        c.forget(&alice);
        assert_eq!(
            c.get(&d(2)).and_then(|r| r.signer).as_deref(),
            Some("alice")
        );
        c.forget(&d(2));
        c.forget(&mallory);
        assert!(c.names.is_empty());
    }

    #[test]
    fn a_full_cache_forgets_the_oldest_and_raises_its_signers_floor() {
        let mut c = DedupeCache::new(retention(3), Instant::now());
        let t0 = Instant::now();
        admit(&mut c, "alice", 1, NOW - 10).unwrap();
        c.settle(&d(1), Seen::Done { acked: true }, t0);
        admit(&mut c, "bob", 2, NOW - 5).unwrap();
        c.settle(&d(2), Seen::Done { acked: true }, t0);
        admit(&mut c, "bob", 3, NOW - 5).unwrap();
        c.settle(&d(3), Seen::Done { acked: true }, t0);
        // Full: alice's message goes, and her floor rises to its timestamp.
        admit(&mut c, "bob", 4, NOW).unwrap();
        assert_eq!(c.get(&d(1)), None);
        assert_eq!(c.evicted(), 1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.floor(Some("alice")), NOW - 10);
        // A replay of it is refused, not handled again...
        assert_eq!(
            admit(&mut c, "alice", 1, NOW - 10),
            Err(Refused::BelowFloor { floor: NOW - 10 })
        );
        // ... while alice's newer messages and other signers' older ones
        // are still accepted.
        admit(&mut c, "alice", 5, NOW - 9).unwrap();
        assert_eq!(c.floor(Some("carol")), i64::MIN);
        c.settle(&d(5), Seen::Done { acked: true }, t0);
        admit(&mut c, "carol", 6, NOW - 600).unwrap();
    }

    #[test]
    fn entries_being_handled_are_never_evicted() {
        let mut c = DedupeCache::new(retention(2), Instant::now());
        admit(&mut c, "a", 1, NOW).unwrap();
        admit(&mut c, "a", 2, NOW).unwrap();
        assert_eq!(admit(&mut c, "a", 3, NOW), Err(Refused::Full));
        c.settle(&d(2), Seen::Failed, Instant::now());
        admit(&mut c, "a", 3, NOW).unwrap();
        // The running one stayed; the settled one went.
        assert_eq!(c.get(&d(1)).map(|r| r.state), Some(Seen::InProgress));
        assert_eq!(c.get(&d(2)), None);
    }

    #[test]
    fn a_rotated_entry_forgotten_leaves_the_order_with_its_slot() {
        // 1 is being handled when the cache is full: the eviction skips it
        // (to the back of the order) and takes 2. Forgetting 1 then frees
        // its slot, which 4 reuses: the order must name 3 and 4 once each.
        // (One second apart, so an eviction's floor never refuses the next.)
        let mut c = DedupeCache::new(retention(2), Instant::now());
        let t0 = Instant::now();
        admit(&mut c, "a", 1, NOW + 1).unwrap();
        admit(&mut c, "a", 2, NOW + 2).unwrap();
        c.settle(&d(2), Seen::Done { acked: true }, t0);
        admit(&mut c, "a", 3, NOW + 3).unwrap();
        assert_eq!(c.get(&d(2)), None);
        c.forget(&d(1));
        c.settle(&d(3), Seen::Done { acked: true }, t0);
        admit(&mut c, "a", 4, NOW + 4).unwrap();
        assert_eq!(c.order.len(), 2);
        let named: Vec<CopyKey> = c.order.iter().map(|&i| c.slots[i as usize].key).collect();
        assert_eq!(named, [d(3), d(4)]);
        // The next eviction takes the oldest, 3, and never the reused slot.
        c.settle(&d(4), Seen::Done { acked: true }, t0);
        admit(&mut c, "a", 5, NOW + 5).unwrap();
        assert_eq!(c.get(&d(3)), None);
        assert!(c.get(&d(4)).is_some() && c.get(&d(5)).is_some());
    }

    #[test]
    fn entries_leave_once_out_of_the_window_and_memory_follows_traffic() {
        let mut c = DedupeCache::new(retention(1000), Instant::now());
        let t0 = Instant::now();
        for i in 0..100 {
            c.admit(Some("a"), &format!("id-{i}"), d(i), NOW, NOW, true)
                .unwrap();
            c.settle(&d(i), Seen::Done { acked: false }, t0);
        }
        assert_eq!(c.len(), 100);
        // 661 s later all have left the window: one new admit sweeps them.
        let later = NOW + 661;
        c.admit(Some("a"), "new", d(1000), later, later, true)
            .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.expired(), 100);
        assert_eq!(c.evicted(), 0);
        // A wall clock stepped back cannot bring them back: the floor rose.
        assert_eq!(
            c.admit(Some("a"), "id-5", d(5), NOW, NOW, true),
            Err(Refused::BelowFloor { floor: NOW })
        );
    }

    #[test]
    fn reused_slots_find_exactly_what_is_remembered() {
        // Evictions, forgets and re-admissions reuse slots: after each
        // step, what the cache finds by copy key and by identity is exactly
        // the set a plain model says it remembers.
        let capacity = 64;
        let mut c = DedupeCache::new(retention(capacity), Instant::now());
        let t0 = Instant::now();
        let mut model: VecDeque<u32> = VecDeque::new();
        // One second apart, so an eviction's floor never refuses the next.
        let at = |i: u32| NOW + i64::from(i);
        for i in 0..2_000u32 {
            c.admit(Some("a"), &format!("id-{i}"), d(i), at(i), at(i), true)
                .unwrap();
            c.settle(&d(i), Seen::Done { acked: true }, t0);
            model.push_back(i);
            if model.len() > capacity {
                model.pop_front();
            }
            if i % 7 == 0 {
                // Forget a middle one (a delivery that could not be made).
                let gone = model.remove(model.len() / 2).unwrap();
                c.forget(&d(gone));
            }
            assert_eq!(c.len(), model.len(), "after {i}");
            // The order names each remembered slot once, and nothing else.
            assert_eq!(c.order.len(), c.len(), "after {i}");
            let named: HashSet<u32> = c.order.iter().copied().collect();
            assert_eq!(named.len(), c.order.len(), "a slot named twice after {i}");
            if i % 97 == 0 {
                for j in 0..=i {
                    assert_eq!(c.get(&d(j)).is_some(), model.contains(&j), "{j} after {i}");
                }
            }
        }
        // The identities too: each remembered id is refused as a repeat,
        // and an evicted one by the floor, never let in twice.
        let now = at(2_000);
        for &j in &model {
            assert!(matches!(
                c.admit(
                    Some("a"),
                    &format!("id-{j}"),
                    d(j + 100_000),
                    at(j),
                    now,
                    true
                ),
                Err(Refused::SameIdOtherBody(_))
            ));
        }
        assert!(matches!(
            c.admit(Some("a"), "id-1500", d(1500), at(1500), now, true),
            Err(Refused::BelowFloor { .. })
        ));
    }

    #[test]
    fn bounded_over_many_ids() {
        let mut c = DedupeCache::new(retention(1000), Instant::now());
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let ts = NOW + i64::from(i / 1000);
            c.admit(Some("a"), &format!("id-{i}"), d(i), ts, ts, true)
                .unwrap();
            c.settle(&d(i), Seen::Done { acked: true }, t0);
        }
        assert_eq!(c.len(), 1000);
        assert_eq!(c.evicted(), 19_000);
        // The floor trails the newest second by the capacity.
        assert_eq!(c.floor(Some("a")), NOW + 18);
    }

    #[test]
    fn floors_stay_bounded_and_fold_safely() {
        let mut c = DedupeCache::new(retention(1), Instant::now());
        let t0 = Instant::now();
        for i in 0..(MAX_SIGNER_FLOORS as u32 + 10) {
            let signer = format!("s{i}");
            let ts = NOW - 200 + i64::from(i / 100);
            c.admit(Some(&signer), "m", d(i), ts, NOW, true).unwrap();
            c.settle(&d(i), Seen::Done { acked: false }, t0);
        }
        assert!(c.floors.len() <= MAX_SIGNER_FLOORS);
        // A folded signer is still refused at its own floor.
        assert!(c.floor(Some("s0")) >= NOW - 200);
        assert!(c.floor(Some("s4100")) >= NOW - 200 + 41);
    }

    #[test]
    fn reacks_are_spaced_out_doubling() {
        let mut c = DedupeCache::new(retention(8), Instant::now());
        let t0 = Instant::now();
        let policy = ReackPolicy {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
        };
        admit(&mut c, "a", 1, NOW).unwrap();
        // Not acked yet: never re-acked.
        assert!(!c.may_reack(&d(1), t0, &policy));
        c.settle(&d(1), Seen::Done { acked: true }, t0);
        let ms = Duration::from_millis;
        let allowed: Vec<u64> = (0..=200)
            .filter(|t| c.may_reack(&d(1), t0 + ms(*t), &policy))
            .collect();
        // 10 ms, then 20, then 40, 40, ...
        assert_eq!(allowed, [10, 30, 70, 110, 150, 190]);
        assert!(!c.may_reack(&d(2), t0, &policy));
    }
}
