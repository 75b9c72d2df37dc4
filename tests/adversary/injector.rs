//! The adversary: a thread with its own SUB on the relay's outbound and its
//! own XPUB into the relay's inbound, forging ACKs for what it sees.
//!
//! It holds only what a real attacker on the bus could hold: everything that
//! crosses the relay (messages, honest ACKs, certificates), valid identities
//! of the bus CA that are *not* declared recipients (`intruder`, `mallory`),
//! the public certificate of the offline recipient `ghost`, and identities
//! from a CA the bus does not trust whose names are the recipients' names.
//! It never holds a declared recipient's private key.
//!
//! Every forged frame is remembered until it comes back through the relay,
//! so the test knows how many forgeries reached the bus (and therefore the
//! publisher, which reads the same relay with an unlimited high-water mark).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gilmsg_crypto::Identity;
use gilmsg_proto::ack::AckBody;
use gilmsg_proto::envelope::new_msg_id;
use gilmsg_proto::{Envelope, Signer};
use gilmsg_testkit::forge;
use gilmsg_testkit::raw::FakeRecipient;
use serde_json::{json, Value};

/// One kind of forgery, with the publisher counter(s) that should refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The honest-looking ACK of a message, signed by a valid identity of
    /// the bus CA that is not a declared recipient (`intruder`).
    NonRecipient,
    /// The same, signed by `ghost` from another CA (same name, untrusted).
    OtherCaGhost,
    /// Signed by a declared recipient's name from another CA (`r1`/`r2`).
    OtherCaRecipient,
    /// Signed by `intruder`, but carrying `ghost`'s real certificate.
    GhostCertSwap,
    /// No signature at all, for the current message.
    Unsigned,
    /// An ACK for a msg_id guessed before it exists (a fresh uuid4).
    Predicted,
    /// `ack_msg_id` of the previous message, digest of this one, re-signed
    /// by `mallory`.
    SwapResigned,
    /// An honest ACK whose `ack_msg_id` was replaced by another message's id
    /// (recently seen, maybe in flight), signature left as it was.
    SwapEdited,
    /// An honest ACK with one bit of its body frame flipped.
    BitFlip,
    /// An honest ACK captured earlier, sent again byte for byte.
    Replay,
    /// On seeing a re-send (the message was not acked by everyone yet):
    /// an `intruder` ACK and an other-CA `ghost` ACK for it.
    ResendPreAck,
    /// A batched ACK (`ack_more`) signed by `intruder` naming the current
    /// and recent messages.
    ForgedBatch,
    /// An honest (possibly batched) ACK with one more `ack_more` entry
    /// appended for the current message, signature left as it was.
    BatchSmuggle,
    /// A batch over the 256-entry limit, signed by the other-CA `ghost`.
    OversizeBatch,
    /// An honest ACK with one bit of its decoded signature flipped.
    SigFlip,
    /// An honest ACK with one hex digit of its `ack_digest` changed.
    DigestFlip,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 16] = [
        Kind::NonRecipient,
        Kind::OtherCaGhost,
        Kind::OtherCaRecipient,
        Kind::GhostCertSwap,
        Kind::Unsigned,
        Kind::Predicted,
        Kind::SwapResigned,
        Kind::SwapEdited,
        Kind::BitFlip,
        Kind::Replay,
        Kind::ResendPreAck,
        Kind::ForgedBatch,
        Kind::BatchSmuggle,
        Kind::OversizeBatch,
        Kind::SigFlip,
        Kind::DigestFlip,
    ];

    /// Where the publisher should count it (when the ACK's msg_id is not in
    /// flight any more, `ack.unknown_msg_id` instead, for every kind).
    pub fn expected(self) -> &'static str {
        match self {
            Kind::NonRecipient | Kind::SwapResigned => "ack.not_a_recipient",
            Kind::OtherCaGhost | Kind::OtherCaRecipient => "ack.rejected.untrusted_certificate",
            Kind::GhostCertSwap | Kind::SwapEdited => "ack.rejected.bad_signature",
            Kind::Unsigned => "ack.rejected.unsigned",
            Kind::Predicted | Kind::Replay => "ack.unknown_msg_id",
            Kind::BitFlip => "ack.rejected.* / ack.invalid.* / unknown",
            Kind::ResendPreAck => "not_a_recipient + untrusted_certificate",
            Kind::ForgedBatch => "ack.not_a_recipient (per entry)",
            Kind::BatchSmuggle | Kind::SigFlip | Kind::DigestFlip => "ack.rejected.bad_signature",
            Kind::OversizeBatch => "ack.invalid.wrong_shape",
        }
    }
}

/// Keys and certificates the adversary holds.
pub struct Arsenal {
    /// Valid, not a declared recipient.
    pub intruder: Identity,
    /// Valid, not a declared recipient.
    pub mallory: Identity,
    /// `ghost` issued by a CA the bus does not trust.
    pub impostor_ghost: Identity,
    /// `r1` and `r2` issued by a CA the bus does not trust.
    pub impostor_recipients: Vec<Identity>,
    /// The `certificate` field of the real `ghost` (public information).
    pub ghost_certificate: String,
}

/// Counters shared with the test thread.
#[derive(Default)]
pub struct Tally {
    /// Forged frames sent, by kind.
    pub sent: Mutex<HashMap<Kind, u64>>,
    /// Forged frames seen coming back through the relay, by kind.
    pub echoed: Mutex<HashMap<Kind, u64>>,
    /// Honest ACK frames seen on the bus (from the real consumers).
    pub honest_acks: AtomicU64,
    /// Distinct messages (asking for ACKs) seen.
    pub messages: AtomicU64,
    /// Re-sends of messages seen.
    pub resends: AtomicU64,
    /// New messages seen while the adversary was behind, left unforged.
    pub skipped: AtomicU64,
    /// ACK entries in the forged frames (a batch has several).
    pub entries: AtomicU64,
}

impl Tally {
    fn bump(map: &Mutex<HashMap<Kind, u64>>, kind: Kind) {
        if let Ok(mut m) = map.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    /// A copy of a per-kind map.
    pub fn snapshot(map: &Mutex<HashMap<Kind, u64>>) -> HashMap<Kind, u64> {
        map.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// ACK entries in all forged frames.
    pub fn forged_entries(&self) -> u64 {
        self.entries.load(Ordering::SeqCst)
    }

    /// Total over kinds.
    pub fn total(map: &Mutex<HashMap<Kind, u64>>) -> u64 {
        Self::snapshot(map).values().sum()
    }
}

/// A running adversary thread.
pub struct Injector {
    /// Shared counters.
    pub tally: Arc<Tally>,
    forging: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Injector {
    /// Starts the adversary on an already connected raw peer (its SUB must
    /// be subscribed to the bus prefix, which covers the ACK topic).
    pub fn start(peer: FakeRecipient, arsenal: Arsenal, ack_topic: String, seed: u64) -> Self {
        let tally = Arc::new(Tally::default());
        let forging = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let state = State {
            peer,
            arsenal,
            ack_topic,
            tally: tally.clone(),
            forging: forging.clone(),
            rng: Rng(seed | 1),
            pending: HashMap::new(),
            seen_ids: HashMap::new(),
            recent_ids: VecDeque::new(),
            captured: VecDeque::new(),
        };
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("adversary".into())
            .spawn(move || state.run(&stop_flag))
            .expect("spawn adversary");
        Injector {
            tally,
            forging,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops forging (the thread keeps counting echoes).
    pub fn stop_forging(&self) {
        self.forging.store(false, Ordering::SeqCst);
    }

    /// Stops the thread.
    pub fn stop(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("adversary thread");
        }
        self.tally.clone()
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// xorshift64: deterministic per seed, enough to pick bits and victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How many honest ACKs to keep for replays and bit flips.
const CAPTURE: usize = 4096;
/// Replays use ACKs at least this many honest ACK frames old (consumers batch
/// ACKs, so frames are fewer than messages). Even a replay of an ACK whose
/// message is still in flight is only a duplicate: the relay delivered the
/// original to the publisher first.
const REPLAY_AGE: usize = 32;
/// How many recent msg_ids to keep for swaps.
const RECENT: usize = 64;
/// How many messages (re-sends first, then the newest) get forgeries per
/// burst of traffic; older ones are skipped so the adversary stays current.
const MESSAGE_BUDGET: usize = 24;
/// How many of a burst's newest honest ACKs are tampered with.
const HONEST_BUDGET: usize = 8;
/// How many msg_ids to remember to recognise re-sends.
const SEEN: usize = 65_536;

struct State {
    peer: FakeRecipient,
    arsenal: Arsenal,
    ack_topic: String,
    tally: Arc<Tally>,
    forging: Arc<AtomicBool>,
    rng: Rng,
    /// Forged body frames not yet seen back through the relay.
    pending: HashMap<Vec<u8>, (Kind, u32)>,
    /// msg_id -> sightings (bounded by clearing, see `on_message`).
    seen_ids: HashMap<String, u32>,
    recent_ids: VecDeque<String>,
    captured: VecDeque<Vec<Vec<u8>>>,
}

impl State {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            // The timeout only bounds how long a stop request waits.
            let Some(first) = self.peer.sub.recv(Duration::from_millis(20)) else {
                continue;
            };
            // Take everything queued: an attacker that falls behind forges
            // for the freshest traffic, where forgeries can still matter.
            let mut burst = vec![first];
            while burst.len() < 100_000 {
                match self.peer.sub.recv(Duration::ZERO) {
                    Some(frames) => burst.push(frames),
                    None => break,
                }
            }
            self.on_burst(burst);
        }
    }

    fn on_burst(&mut self, burst: Vec<Vec<Vec<u8>>>) {
        let mut honest = Vec::new();
        let mut fresh = Vec::new();
        let mut resent = Vec::new();
        for frames in burst {
            if frames.len() != 2 {
                continue;
            }
            if frames[0] == self.ack_topic.as_bytes() {
                if let Some(frames) = self.on_ack(frames) {
                    honest.push(frames);
                }
            } else if let Some((message, first)) = self.on_message(&frames) {
                if first {
                    fresh.push(message);
                } else {
                    resent.push(message);
                }
            }
        }
        if !self.forging() {
            return;
        }
        // Re-sends first: those messages are known to be still in flight.
        let mut budget = MESSAGE_BUDGET;
        for message in resent.iter().rev() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            self.forge_for_resend(message);
        }
        let skip = fresh.len().saturating_sub(budget.max(MESSAGE_BUDGET / 2));
        self.tally.skipped.fetch_add(skip as u64, Ordering::Relaxed);
        for message in &fresh[skip..] {
            self.forge_for_new(message);
            self.note_recent(message.msg_id());
        }
        for frames in honest.iter().rev().take(HONEST_BUDGET) {
            self.forge_from_honest(frames);
        }
        for message in &fresh[..skip] {
            self.note_recent(message.msg_id());
        }
    }

    fn forging(&self) -> bool {
        self.forging.load(Ordering::SeqCst)
    }

    fn send(&mut self, kind: Kind, frames: Vec<Vec<u8>>) {
        self.peer.send(&frames);
        Tally::bump(&self.tally.sent, kind);
        let entries = serde_json::from_slice::<Value>(&frames[1])
            .ok()
            .and_then(|b| b["msg"]["ack_more"].as_array().map(|a| a.len() as u64 + 1))
            .unwrap_or(1);
        self.tally.entries.fetch_add(entries, Ordering::Relaxed);
        let entry = self.pending.entry(frames[1].clone()).or_insert((kind, 0));
        entry.1 += 1;
    }

    /// Counts an ACK frame; returns it if it is honest (not our echo).
    fn on_ack(&mut self, frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        if let Some((kind, left)) = self.pending.get_mut(&frames[1]) {
            let kind = *kind;
            *left -= 1;
            if *left == 0 {
                self.pending.remove(&frames[1]);
            }
            Tally::bump(&self.tally.echoed, kind);
            return None;
        }
        self.tally.honest_acks.fetch_add(1, Ordering::Relaxed);
        self.captured.push_back(frames.clone());
        if self.captured.len() > CAPTURE {
            self.captured.pop_front();
        }
        Some(frames)
    }

    /// Records a sighting; returns the message and whether it is new.
    fn on_message(&mut self, frames: &[Vec<u8>]) -> Option<(Envelope, bool)> {
        let message = Envelope::decode(frames, 1 << 20).ok()?;
        if !message.wants_ack() {
            return None;
        }
        if self.seen_ids.len() >= SEEN {
            // Crude bound; forgetting only turns later re-sends into "new".
            self.seen_ids.clear();
        }
        let sightings = self
            .seen_ids
            .entry(message.msg_id().to_owned())
            .or_insert(0);
        *sightings += 1;
        let first = *sightings == 1;
        if first {
            self.tally.messages.fetch_add(1, Ordering::Relaxed);
        } else {
            self.tally.resends.fetch_add(1, Ordering::Relaxed);
        }
        Some((message, first))
    }

    fn note_recent(&mut self, msg_id: &str) {
        self.recent_ids.push_back(msg_id.to_owned());
        if self.recent_ids.len() > RECENT {
            self.recent_ids.pop_front();
        }
    }

    fn ack_frames(&self, body: AckBody, signer: Option<&dyn Signer>) -> Vec<Vec<u8>> {
        forge::frames(&forge::ack(&self.ack_topic, body, signer))
    }

    fn forge_for_new(&mut self, message: &Envelope) {
        let topic = self.ack_topic.clone();
        let honest_body = AckBody::for_message(message).expect("digest");
        let a = &self.arsenal;

        let f = forge::frames(&forge::honest_ack(&topic, message, &a.intruder));
        self.send(Kind::NonRecipient, f);

        let f = forge::frames(&forge::honest_ack(
            &topic,
            message,
            &self.arsenal.impostor_ghost,
        ));
        self.send(Kind::OtherCaGhost, f);

        let pick = self.rng.below(self.arsenal.impostor_recipients.len());
        let f = forge::frames(&forge::honest_ack(
            &topic,
            message,
            &self.arsenal.impostor_recipients[pick],
        ));
        self.send(Kind::OtherCaRecipient, f);

        // Sign as intruder, then claim to be ghost by swapping certificates.
        let signed = forge::honest_ack(&topic, message, &self.arsenal.intruder);
        let ghost_cert = self.arsenal.ghost_certificate.clone();
        let f = forge::tampered(&signed, |b| {
            b.insert("certificate".into(), Value::String(ghost_cert));
        });
        self.send(Kind::GhostCertSwap, f);

        let f = self.ack_frames(honest_body.clone(), None);
        self.send(Kind::Unsigned, f);

        let predicted = AckBody {
            ack_msg_id: new_msg_id(2026),
            ack_digest: honest_body.ack_digest,
            ack_signer: None,
        };
        let f = self.ack_frames(predicted, Some(&self.arsenal.impostor_ghost));
        self.send(Kind::Predicted, f);

        if let Some(previous) = self.recent_ids.back().cloned() {
            let swapped = AckBody {
                ack_msg_id: previous,
                ack_digest: honest_body.ack_digest,
                ack_signer: None,
            };
            let f = self.ack_frames(swapped, Some(&self.arsenal.mallory));
            self.send(Kind::SwapResigned, f);
        }

        let rest: Vec<AckBody> = self
            .recent_ids
            .iter()
            .rev()
            .take(8)
            .map(|id| AckBody {
                ack_msg_id: id.clone(),
                ack_digest: honest_body.ack_digest,
                ack_signer: None,
            })
            .collect();
        let batch = AckBody::batch_to_msg(&honest_body, &rest);
        let f = forge::frames(&forge::message(
            &topic,
            batch,
            false,
            Some(&self.arsenal.intruder),
        ));
        self.send(Kind::ForgedBatch, f);

        if self.rng.below(16) == 0 {
            let many: Vec<AckBody> = (0..300).map(|_| honest_body.clone()).collect();
            let batch = AckBody::batch_to_msg(&honest_body, &many);
            let f = forge::frames(&forge::message(
                &topic,
                batch,
                false,
                Some(&self.arsenal.impostor_ghost),
            ));
            self.send(Kind::OversizeBatch, f);
        }

        // Smuggle this message into the latest honest ACK.
        if let Some(honest) = self.captured.back() {
            if let Ok(envelope) = Envelope::decode(honest, 1 << 20) {
                let entry = honest_body.to_msg();
                let f = forge::tampered(&envelope, |b| {
                    let msg = &mut b["msg"];
                    match msg.get_mut("ack_more").and_then(Value::as_array_mut) {
                        Some(more) => more.push(entry),
                        None => msg["ack_more"] = json!([entry]),
                    }
                });
                self.send(Kind::BatchSmuggle, f);
            }
        }
    }

    fn forge_for_resend(&mut self, message: &Envelope) {
        let topic = self.ack_topic.clone();
        let f = forge::frames(&forge::honest_ack(&topic, message, &self.arsenal.intruder));
        self.send(Kind::ResendPreAck, f);
        let f = forge::frames(&forge::honest_ack(
            &topic,
            message,
            &self.arsenal.impostor_ghost,
        ));
        self.send(Kind::ResendPreAck, f);
    }

    fn forge_from_honest(&mut self, frames: &[Vec<u8>]) {
        // One bit of the body frame flipped.
        let mut flipped = frames.to_vec();
        let body = &mut flipped[1];
        if !body.is_empty() {
            let at = self.rng.below(body.len());
            let bit = self.rng.below(8);
            body[at] ^= 1 << bit;
            self.send(Kind::BitFlip, flipped);
        }

        if let Ok(envelope) = Envelope::decode(frames, 1 << 20) {
            // One character of the signature's base64, away from the end
            // (so it changes decoded bits, not padding).
            if let Some(sig) = envelope.str_field("signature").map(str::to_owned) {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let mut bytes = sig.into_bytes();
                if bytes.len() > 8 {
                    let at = self.rng.below(bytes.len() - 8);
                    if let Some(pos) = ALPHABET.iter().position(|&c| c == bytes[at]) {
                        bytes[at] = ALPHABET[(pos + 1 + self.rng.below(63)) % 64];
                        let flipped = String::from_utf8(bytes).expect("ascii");
                        let f = forge::tampered(&envelope, |b| {
                            b.insert("signature".into(), Value::String(flipped));
                        });
                        self.send(Kind::SigFlip, f);
                    }
                }
            }
            // One hex digit of the digest.
            if let Some(digest) = envelope.msg().get("ack_digest").and_then(Value::as_str) {
                let mut chars: Vec<char> = digest.chars().collect();
                let at = chars.len() - 1 - self.rng.below(64.min(chars.len()));
                chars[at] = if chars[at] == '0' { '1' } else { '0' };
                let flipped: String = chars.into_iter().collect();
                let f = forge::tampered(&envelope, |b| {
                    b["msg"]["ack_digest"] = json!(flipped);
                });
                self.send(Kind::DigestFlip, f);
            }
        }

        // The honest ACK pointed at another (recent, maybe in flight) message.
        if let (Ok(envelope), Some(other)) = (
            Envelope::decode(frames, 1 << 20),
            self.recent_ids
                .get(self.rng.below(self.recent_ids.len()))
                .cloned(),
        ) {
            let own = envelope
                .msg()
                .get("ack_msg_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if own != other {
                let f = forge::tampered(&envelope, |b| {
                    b["msg"]["ack_msg_id"] = json!(other);
                });
                self.send(Kind::SwapEdited, f);
            }
        }

        // An old honest ACK, again.
        if self.captured.len() > REPLAY_AGE {
            let oldest_allowed = self.captured.len() - REPLAY_AGE;
            let at = self.rng.below(oldest_allowed);
            let old = self.captured[at].clone();
            self.send(Kind::Replay, old);
        }
    }
}
