//! Receipts as a watcher sees them: for each acknowledged message seen on
//! the bus, which of its named recipients have acked it, and whether it
//! became complete within a window. The firehose's receipt events
//! (`docs/firehose.md`) come from here.
//!
//! A watcher is not the publisher, but it judges the ACKs exactly as the
//! publisher does: each message gets an [`AckCollector`] for its signed
//! `gilmsg_recipients` list ([`Envelope::recipients`](crate::Envelope::recipients))
//! and its digest, `signed_as` its verified signer, so an ACK counts only if
//! its verified signer is a named recipient, its digest names that body and
//! its `ack_signer` (if any) names the publisher. The caller has verified
//! the message's and the ACK's signatures.
//!
//! Pure state: no clock (instants are passed in), and bounded memory: at
//! most `capacity` messages are watched at once (the oldest is given up,
//! reported as [`ReceiptEvent::Incomplete`] with `forgotten`), and each one
//! for `window` at most.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ack::{AckCollector, AckEntry, AckOutcome};
use crate::digest::Digest;

/// One change a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptEvent {
    /// An acknowledged message was seen; every recipient is waited for.
    Waiting {
        /// The message.
        msg_id: String,
        /// Its topic.
        topic: String,
        /// Its verified signer.
        publisher: Option<String>,
        /// The recipients it names, in order (each name once).
        recipients: Vec<String>,
    },
    /// A recipient's valid ACK arrived.
    Acked {
        /// The message.
        msg_id: String,
        /// Its topic.
        topic: String,
        /// Who acked (the ACK's verified signer).
        recipient: String,
        /// Time since the watcher saw the message.
        after: Duration,
        /// Whether the ACK named the body's digest (Python gilmsg's do not).
        digest_checked: bool,
        /// Recipients still missing after this one.
        missing: Vec<String>,
    },
    /// Every recipient acked: the publish succeeded.
    Complete {
        /// The message.
        msg_id: String,
        /// Its topic.
        topic: String,
        /// Time from the message to the last ACK.
        after: Duration,
    },
    /// The window passed (or the watcher had to forget the message) with
    /// recipients missing.
    Incomplete {
        /// The message.
        msg_id: String,
        /// Its topic.
        topic: String,
        /// Who acked.
        acked: Vec<String>,
        /// Who did not.
        missing: Vec<String>,
        /// Given up early because `capacity` messages were watched, not
        /// because its window passed.
        forgotten: bool,
    },
}

/// Why [`ReceiptWatch::on_message`] did not start watching a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotWatched {
    /// A message with this `msg_id` is already watched (a re-send, or
    /// another signer reusing the id: the first one seen keeps it).
    AlreadyWatched,
    /// It names no recipient.
    NoRecipients,
}

/// What [`ReceiptWatch::on_ack`] made of one ACK entry, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckVerdict {
    /// Counted for a watched message.
    Counted,
    /// For no watched message (not acknowledged, not seen, or over).
    Unknown,
    /// Refused by the message's collector (not a recipient, wrong digest,
    /// other signer, or a duplicate): [`AckOutcome::kind`] says which.
    Refused(&'static str),
}

#[derive(Debug)]
struct Watched {
    topic: String,
    seen: Instant,
    deadline: Instant,
    collector: AckCollector,
}

/// The watcher's bookkeeping.
#[derive(Debug)]
pub struct ReceiptWatch {
    window: Duration,
    capacity: usize,
    watched: HashMap<String, Watched>,
    /// `(deadline, msg_id)` in the order messages were seen, which is the
    /// order of their deadlines (one window for all). Entries of messages
    /// already complete are skipped when they come up, and dropped
    /// whenever the queue grows past twice the capacity.
    deadlines: VecDeque<(Instant, String)>,
}

impl ReceiptWatch {
    /// Watches each message for `window`, at most `capacity` (at least 1)
    /// at once.
    pub fn new(window: Duration, capacity: usize) -> ReceiptWatch {
        ReceiptWatch {
            window,
            capacity: capacity.max(1),
            watched: HashMap::new(),
            deadlines: VecDeque::new(),
        }
    }

    /// How many messages are watched now.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether no message is watched.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Starts watching an acknowledged message with a verified signature:
    /// `publisher` its signer, `digest` its signed part's, `recipients` its
    /// signed list. Returns the [`ReceiptEvent::Waiting`] event, preceded by
    /// the [`ReceiptEvent::Incomplete`] of a message forgotten to make room.
    pub fn on_message(
        &mut self,
        msg_id: &str,
        topic: &str,
        publisher: Option<&str>,
        digest: Digest,
        recipients: &[&str],
        at: Instant,
    ) -> Result<Vec<ReceiptEvent>, NotWatched> {
        if recipients.is_empty() {
            return Err(NotWatched::NoRecipients);
        }
        if self.watched.contains_key(msg_id) {
            return Err(NotWatched::AlreadyWatched);
        }
        let mut events = Vec::new();
        while self.watched.len() >= self.capacity {
            let Some((_, oldest)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(gone) = self.watched.remove(&oldest) {
                events.push(incomplete(oldest, gone, true));
            }
        }
        let mut collector =
            AckCollector::new(msg_id, digest, recipients.iter().copied()).signed_as(publisher);
        collector.mark_sent(at);
        let names: Vec<String> = collector.recipients().map(str::to_owned).collect();
        // A window past what an Instant can hold is a century.
        let deadline = at
            .checked_add(self.window)
            .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(at);
        self.watched.insert(
            msg_id.to_owned(),
            Watched {
                topic: topic.to_owned(),
                seen: at,
                deadline,
                collector,
            },
        );
        self.deadlines.push_back((deadline, msg_id.to_owned()));
        if self.deadlines.len() > self.capacity.saturating_mul(2) {
            let watched = &self.watched;
            self.deadlines.retain(|(_, id)| watched.contains_key(id));
        }
        events.push(ReceiptEvent::Waiting {
            msg_id: msg_id.to_owned(),
            topic: topic.to_owned(),
            publisher: publisher.map(str::to_owned),
            recipients: names,
        });
        Ok(events)
    }

    /// Considers one entry of an ACK whose verified signer is `signer`.
    /// Returns its verdict and the events it caused: [`ReceiptEvent::Acked`],
    /// then [`ReceiptEvent::Complete`] if it was the last one (the message
    /// is then no longer watched).
    pub fn on_ack(
        &mut self,
        signer: &str,
        entry: &AckEntry,
        at: Instant,
    ) -> (AckVerdict, Vec<ReceiptEvent>) {
        let Some(watched) = self.watched.get_mut(&entry.ack_msg_id) else {
            return (AckVerdict::Unknown, Vec::new());
        };
        let complete = match watched.collector.on_ack(signer, entry, at) {
            AckOutcome::Counted { complete } => complete,
            refused => return (AckVerdict::Refused(refused.kind()), Vec::new()),
        };
        let after = at.saturating_duration_since(watched.seen);
        let digest_checked = watched
            .collector
            .acked()
            .iter()
            .find(|r| r.recipient == signer)
            .is_some_and(|r| r.digest_checked);
        let mut events = vec![ReceiptEvent::Acked {
            msg_id: entry.ack_msg_id.clone(),
            topic: watched.topic.clone(),
            recipient: signer.to_owned(),
            after,
            digest_checked,
            missing: watched.collector.missing(),
        }];
        if complete {
            events.push(ReceiptEvent::Complete {
                msg_id: entry.ack_msg_id.clone(),
                topic: watched.topic.clone(),
                after,
            });
            self.watched.remove(&entry.ack_msg_id);
        }
        (AckVerdict::Counted, events)
    }

    /// Gives up the messages whose window has passed at `now`, each as
    /// [`ReceiptEvent::Incomplete`].
    pub fn expire(&mut self, now: Instant) -> Vec<ReceiptEvent> {
        let mut events = Vec::new();
        while let Some((deadline, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, msg_id)) = self.deadlines.pop_front() else {
                break;
            };
            // A message that completed is no longer in the table; one
            // whose id was reused after completion has a later deadline.
            let due = self.watched.get(&msg_id).is_some_and(|w| w.deadline <= now);
            if due {
                if let Some(gone) = self.watched.remove(&msg_id) {
                    events.push(incomplete(msg_id, gone, false));
                }
            }
        }
        events
    }

    /// When [`ReceiptWatch::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|(_, id)| self.watched.contains_key(id))
            .map(|(d, _)| *d)
    }
}

fn incomplete(msg_id: String, gone: Watched, forgotten: bool) -> ReceiptEvent {
    ReceiptEvent::Incomplete {
        msg_id,
        topic: gone.topic,
        acked: gone
            .collector
            .acked()
            .into_iter()
            .map(|r| r.recipient)
            .collect(),
        missing: gone.collector.missing(),
        forgotten,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckBody, DigestClaim};

    fn digest(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    fn ack(id: &str, d: Option<Digest>, signer: Option<&str>) -> AckEntry {
        AckEntry::from(&AckBody {
            ack_msg_id: id.into(),
            ack_digest: d,
            ack_signer: signer.map(str::to_owned),
        })
    }

    #[test]
    fn a_message_turns_complete_as_each_recipient_acks() {
        let t0 = Instant::now();
        let mut watch = ReceiptWatch::new(Duration::from_secs(5), 16);
        let events = watch
            .on_message(
                "m1",
                "t.a",
                Some("billing"),
                digest(1),
                &["ledger", "mailer", "ledger"],
                t0,
            )
            .unwrap();
        assert_eq!(
            events,
            vec![ReceiptEvent::Waiting {
                msg_id: "m1".into(),
                topic: "t.a".into(),
                publisher: Some("billing".into()),
                recipients: vec!["ledger".into(), "mailer".into()],
            }]
        );
        let (verdict, events) = watch.on_ack(
            "ledger",
            &ack("m1", Some(digest(1)), Some("billing")),
            t0 + Duration::from_millis(3),
        );
        assert_eq!(verdict, AckVerdict::Counted);
        assert_eq!(
            events,
            vec![ReceiptEvent::Acked {
                msg_id: "m1".into(),
                topic: "t.a".into(),
                recipient: "ledger".into(),
                after: Duration::from_millis(3),
                digest_checked: true,
                missing: vec!["mailer".into()],
            }]
        );
        // Python gilmsg's ACK: no digest, still counted, marked unchecked.
        let (_, events) = watch.on_ack(
            "mailer",
            &ack("m1", None, None),
            t0 + Duration::from_millis(7),
        );
        assert!(matches!(
            &events[0],
            ReceiptEvent::Acked {
                digest_checked: false,
                ..
            }
        ));
        assert_eq!(
            events[1],
            ReceiptEvent::Complete {
                msg_id: "m1".into(),
                topic: "t.a".into(),
                after: Duration::from_millis(7),
            }
        );
        assert!(watch.is_empty());
        assert_eq!(watch.expire(t0 + Duration::from_secs(60)), vec![]);
    }

    #[test]
    fn acks_are_judged_as_the_publisher_judges_them() {
        let t0 = Instant::now();
        let mut watch = ReceiptWatch::new(Duration::from_secs(5), 16);
        watch
            .on_message("m1", "t.a", Some("billing"), digest(1), &["ledger"], t0)
            .unwrap();
        let refused = |watch: &mut ReceiptWatch, signer: &str, entry: AckEntry| {
            watch.on_ack(signer, &entry, t0).0
        };
        assert_eq!(
            refused(&mut watch, "mallory", ack("m1", Some(digest(1)), None)),
            AckVerdict::Refused("not_a_recipient")
        );
        assert_eq!(
            refused(&mut watch, "ledger", ack("m1", Some(digest(2)), None)),
            AckVerdict::Refused("digest_mismatch")
        );
        let mut unreadable = ack("m1", None, None);
        unreadable.digest = DigestClaim::Unreadable;
        assert_eq!(
            refused(&mut watch, "ledger", unreadable),
            AckVerdict::Refused("digest_mismatch")
        );
        assert_eq!(
            refused(
                &mut watch,
                "ledger",
                ack("m1", Some(digest(1)), Some("mallory"))
            ),
            AckVerdict::Refused("signer_mismatch")
        );
        assert_eq!(
            refused(&mut watch, "ledger", ack("m2", Some(digest(1)), None)),
            AckVerdict::Unknown
        );
        assert_eq!(watch.len(), 1, "nothing above counted");
    }

    #[test]
    fn the_window_ends_a_message_incomplete_naming_who_is_missing() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut watch = ReceiptWatch::new(window, 16);
        watch
            .on_message("m1", "t.a", None, digest(1), &["ledger", "offline"], t0)
            .unwrap();
        watch.on_ack("ledger", &ack("m1", Some(digest(1)), None), t0);
        assert_eq!(watch.next_deadline(), Some(t0 + window));
        assert_eq!(watch.expire(t0 + window - Duration::from_millis(1)), vec![]);
        assert_eq!(
            watch.expire(t0 + window),
            vec![ReceiptEvent::Incomplete {
                msg_id: "m1".into(),
                topic: "t.a".into(),
                acked: vec!["ledger".into()],
                missing: vec!["offline".into()],
                forgotten: false,
            }]
        );
        assert_eq!(watch.next_deadline(), None);
        // A late ACK after the window is for nothing watched.
        assert_eq!(
            watch
                .on_ack("offline", &ack("m1", Some(digest(1)), None), t0 + window)
                .0,
            AckVerdict::Unknown
        );
    }

    #[test]
    fn memory_is_bounded_by_the_capacity_and_the_oldest_is_forgotten() {
        let t0 = Instant::now();
        let mut watch = ReceiptWatch::new(Duration::from_secs(5), 2);
        for (i, id) in ["a", "b"].iter().enumerate() {
            watch
                .on_message(id, "t", None, digest(i as u8), &["x"], t0)
                .unwrap();
        }
        let events = watch
            .on_message("c", "t", None, digest(3), &["x"], t0)
            .unwrap();
        assert!(matches!(
            &events[0],
            ReceiptEvent::Incomplete { msg_id, forgotten: true, .. } if msg_id == "a"
        ));
        assert_eq!(watch.len(), 2);
        assert_eq!(
            watch.on_message("b", "t", None, digest(9), &["x"], t0),
            Err(NotWatched::AlreadyWatched)
        );
        assert_eq!(
            watch.on_message("d", "t", None, digest(9), &[], t0),
            Err(NotWatched::NoRecipients)
        );
        // Many quick completions never grow the deadline queue past 2 x capacity.
        for i in 0..1000u32 {
            let id = format!("q{i}");
            watch
                .on_message(&id, "t", None, digest(7), &["x"], t0)
                .unwrap();
            watch.on_ack("x", &ack(&id, Some(digest(7)), None), t0);
        }
        assert!(watch.deadlines.len() <= 4, "{}", watch.deadlines.len());
    }

    #[test]
    fn a_huge_window_does_not_panic() {
        let t0 = Instant::now();
        let mut watch = ReceiptWatch::new(Duration::MAX, 4);
        watch
            .on_message("m", "t", None, digest(1), &["x"], t0)
            .unwrap();
        assert_eq!(watch.expire(t0 + Duration::from_secs(1)), vec![]);
    }
}
