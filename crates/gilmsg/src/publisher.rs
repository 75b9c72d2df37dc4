//! The publisher's socket thread: one XPUB out, one SUB for ACKs.
//!
//! This thread is the only owner of both sockets. It receives ready-signed
//! frames from [`crate::Bus`] handles through its mailbox, waits until the
//! message cannot be lost to a missing subscription, sends it, and then runs
//! the sans-IO [`InFlight`] table: ACKs in, re-sends and expiries out.
//!
//! "Cannot be lost" means two readiness signals, neither of them a sleep:
//! the XPUB has seen a subscription that matches the topic (the relay's SUB,
//! or a consumer's), and the ACK socket has completed its handshake with the
//! ACK endpoints, after which libzmq has sent our subscription upstream. ACK
//! endpoints known to be down (refused, unreachable) are not waited for, and
//! endpoints with no verdict only for a short grace period.
//! Whatever still goes missing (a subscriber that joins late, a lost ACK) is
//! recovered by re-sending the same bytes until every recipient has acked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_proto::ack::AckBody;
use gilmsg_proto::inflight::{AckEffect, InFlight, RetransmitPolicy, TimerEvent};
use gilmsg_proto::{AckCollector, AckOutcome, Envelope, Validator};
use tokio::sync::oneshot;

use crate::error::{Error, Result, TimeoutError};
use crate::monitor::{Monitor, Subscriptions};
use crate::stats::Counters;
use crate::wire::{self, Inbox, SocketTuning};
use crate::Receipt;

/// How long to wait for every ACK endpoint's handshake before settling for
/// some of them. Only matters when an endpoint gives no verdict at start-up
/// (a refused one is settled at once); the re-send timer covers recipients
/// behind endpoints that connect later.
const CONNECT_GRACE: Duration = Duration::from_millis(200);

/// A message handed to the socket thread.
pub(crate) struct Outgoing {
    pub msg_id: String,
    pub topic: String,
    pub frames: [Vec<u8>; 2],
    /// `None` for a plain fedmsg publish.
    pub collector: Option<AckCollector>,
    pub timeout: Duration,
    pub reply: oneshot::Sender<Result<Receipt>>,
}

pub(crate) enum Command {
    Publish(Box<Outgoing>),
    Cancel(String),
    Shutdown,
}

struct Pending {
    topic: String,
    frames: [Vec<u8>; 2],
    timeout: Duration,
    started: Instant,
    reply: oneshot::Sender<Result<Receipt>>,
}

/// Everything the thread needs, built on the caller's thread so that
/// configuration errors surface from `Bus::new` rather than from the thread.
pub(crate) struct Setup {
    pub tuning: SocketTuning,
    /// Where the XPUB binds (publishing as a named endpoint) ...
    pub bind: Vec<String>,
    /// ... or connects (active mode, through a relay).
    pub connect: Vec<String>,
    pub ack_endpoints: Vec<String>,
    pub ack_topic: String,
    pub max_message_size: usize,
    pub validator: Option<Arc<Validator>>,
    pub retransmit: RetransmitPolicy,
    pub counters: Counters,
}

pub(crate) struct Actor {
    _context: zmq::Context,
    out: zmq::Socket,
    out_monitor: Monitor,
    acks: zmq::Socket,
    monitor: Monitor,
    inbox: Inbox<Command>,
    subscriptions: Subscriptions,
    inflight: InFlight<Pending>,
    /// Plain publishes waiting for a subscriber.
    plain: Vec<(Box<Outgoing>, Instant)>,
    ack_topic: String,
    max_message_size: usize,
    validator: Option<Arc<Validator>>,
    counters: Counters,
}

impl Actor {
    /// Creates, binds and connects the sockets; returns the bound endpoints.
    pub(crate) fn new(setup: Setup, inbox: Inbox<Command>) -> Result<(Self, Vec<String>)> {
        let context = zmq::Context::new();
        let tuning = &setup.tuning;
        let out = tuning.publisher(&context, "publisher")?;
        let mut out_monitor = Monitor::attach(
            &context,
            &out,
            "publisher",
            tuning,
            Duration::ZERO,
            setup.counters.clone(),
        )?;
        let bound = out_monitor.bind(&out, &setup.bind)?;
        out_monitor.connect(&out, &setup.connect)?;

        let acks = tuning.subscriber(&context, "ACK listener")?;
        acks.set_subscribe(setup.ack_topic.as_bytes())
            .map_err(|e| Error::socket("subscribe ACK listener", e))?;
        let mut monitor = Monitor::attach(
            &context,
            &acks,
            "ACK listener",
            tuning,
            CONNECT_GRACE,
            setup.counters.clone(),
        )?;
        monitor.connect(&acks, &setup.ack_endpoints)?;

        let actor = Actor {
            _context: context,
            out,
            out_monitor,
            acks,
            monitor,
            inbox,
            subscriptions: Subscriptions::new(tuning),
            inflight: InFlight::new(setup.retransmit),
            plain: Vec::new(),
            ack_topic: setup.ack_topic,
            max_message_size: setup.max_message_size,
            validator: setup.validator,
            counters: setup.counters,
        };
        Ok((actor, bound))
    }

    /// Runs until shutdown or until every handle is gone.
    pub(crate) fn run(mut self) {
        let mut commands = Vec::new();
        loop {
            let now = Instant::now();
            let timeout = wire::poll_timeout(self.next_wakeup(), now);
            let mut items = [
                self.inbox_item(),
                self.out.as_poll_item(zmq::POLLIN),
                self.acks.as_poll_item(zmq::POLLIN),
                self.monitor.socket().as_poll_item(zmq::POLLIN),
                self.out_monitor.socket().as_poll_item(zmq::POLLIN),
            ];
            if let Err(e) = zmq::poll(&mut items, timeout) {
                tracing::error!("publisher poll failed: {e}");
                break;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            let mut readiness_changed = false;
            if ready[0] {
                let alive = self.inbox.drain(&mut commands).is_ok();
                let mut shutdown = !alive;
                for command in commands.drain(..) {
                    match command {
                        Command::Publish(out) => self.accept(out),
                        Command::Cancel(msg_id) => self.cancel(&msg_id),
                        Command::Shutdown => shutdown = true,
                    }
                }
                if shutdown {
                    break;
                }
            }
            let now = Instant::now();
            if ready[1] {
                let drained = self.subscriptions.drain_from(&self.out, &self.counters);
                readiness_changed |= drained.changed;
                self.out_monitor.enforce(&self.out, drained, now);
            }
            if ready[3] {
                readiness_changed |= self.monitor.process(now);
            }
            if ready[4] {
                self.out_monitor.process(now);
            }
            if ready[2] {
                self.read_acks();
            }
            self.monitor.tick(&self.acks, now);
            self.out_monitor.tick(&self.out, now);
            let now = Instant::now();
            if readiness_changed
                || !self.plain.is_empty()
                || self.inflight.unsent().next().is_some()
            {
                self.send_ready(now);
            }
            self.fire_timers(now);
        }
        self.fail_all();
    }

    fn inbox_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.inbox.fd(), zmq::POLLIN)
    }

    fn next_wakeup(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next = self.inflight.next_wakeup();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (_, deadline) in &self.plain {
            consider(*deadline);
        }
        for t in [
            self.monitor.next_deadline(now),
            self.out_monitor.next_deadline(now),
        ]
        .into_iter()
        .flatten()
        {
            consider(t);
        }
        next
    }

    /// Whether ACKs can come back: every ACK endpoint connected, or some
    /// connected and the others known to be down or past the grace period.
    fn acks_ready(&self, now: Instant) -> bool {
        let connected = self.monitor.connected();
        connected >= self.monitor.expected() || (connected > 0 && self.monitor.settled(now))
    }

    /// Forgets a publish whose caller stopped waiting, acknowledged or plain.
    fn cancel(&mut self, msg_id: &str) {
        let cancelled = self.inflight.remove(msg_id).is_some() || {
            let before = self.plain.len();
            self.plain.retain(|(out, _)| out.msg_id != msg_id);
            self.plain.len() < before
        };
        if cancelled {
            self.counters.bump("publish", "cancelled");
            tracing::debug!(msg_id, "publish cancelled by its caller");
        }
    }

    fn accept(&mut self, out: Box<Outgoing>) {
        let now = Instant::now();
        // `Bus::publish` refuses timeouts past MAX_TIMEOUT; this is the
        // belt to those braces: never panic on the socket thread.
        let Some(deadline) = now.checked_add(out.timeout) else {
            let _ = out.reply.send(Err(Error::InvalidArgument(format!(
                "ack_timeout {:?} is too long",
                out.timeout
            ))));
            return;
        };
        match out.collector {
            None => self.plain.push((out, deadline)),
            Some(_) => {
                let Outgoing {
                    msg_id,
                    topic,
                    frames,
                    collector,
                    timeout,
                    reply,
                } = *out;
                let Some(collector) = collector else { return };
                let pending = Pending {
                    topic,
                    frames,
                    timeout,
                    started: now,
                    reply,
                };
                tracing::debug!(
                    msg_id = %msg_id,
                    topic = %pending.topic,
                    subscriber = self.subscriptions.matches(pending.topic.as_bytes()),
                    ack_endpoints_connected = self.monitor.connected(),
                    ack_endpoints = self.monitor.expected(),
                    ack_endpoints_not_up = ?self.monitor.missing(),
                    "publish accepted; sent once a subscriber and the ACK endpoints are there"
                );
                if let Err(pending) = self.inflight.insert(collector, deadline, pending) {
                    let _ = pending.reply.send(Err(Error::InvalidArgument(format!(
                        "message id {msg_id} is already in flight"
                    ))));
                }
            }
        }
    }

    /// Sends whatever was waiting for readiness and is now ready.
    fn send_ready(&mut self, now: Instant) {
        let acks_ready = self.acks_ready(now);
        let unsent: Vec<String> = self.inflight.unsent().map(str::to_owned).collect();
        for msg_id in unsent {
            let Some(pending) = self.inflight.payload(&msg_id) else {
                continue;
            };
            if !(acks_ready && self.subscriptions.matches(pending.topic.as_bytes())) {
                continue;
            }
            match wire::send_frames(&self.out, &pending.frames) {
                Ok(()) => {
                    tracing::debug!(msg_id = %msg_id, topic = %pending.topic, "sent");
                    self.counters.bump("publish", "sent");
                    self.inflight.mark_sent(&msg_id, now);
                }
                Err(e) => tracing::warn!("send of {msg_id} failed: {e}"),
            }
        }
        let mut i = 0;
        while i < self.plain.len() {
            if self.subscriptions.matches(self.plain[i].0.topic.as_bytes()) {
                let (out, _) = self.plain.swap_remove(i);
                let result = wire::send_frames(&self.out, &out.frames).map(|()| {
                    tracing::debug!(msg_id = %out.msg_id, topic = %out.topic, "sent (plain)");
                    self.counters.bump("publish", "sent_plain");
                    Receipt {
                        msg_id: out.msg_id.clone(),
                        topic: out.topic.clone(),
                        acks: Vec::new(),
                        sends: 1,
                        elapsed: Duration::ZERO,
                    }
                });
                let _ = out.reply.send(result);
            } else {
                i += 1;
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for event in self.inflight.poll_timers(now) {
            match event {
                TimerEvent::Resend(msg_id) => {
                    let Some(pending) = self.inflight.payload(&msg_id) else {
                        continue;
                    };
                    if wire::send_frames(&self.out, &pending.frames).is_ok() {
                        tracing::debug!(msg_id = %msg_id, topic = %pending.topic, "re-sent");
                        self.counters.bump("publish", "resent");
                    }
                    self.inflight.mark_sent(&msg_id, now);
                }
                TimerEvent::Deferred(_) => self.counters.bump("publish", "resend_deferred"),
                TimerEvent::Expired(done) => {
                    self.counters.bump("publish", "timed_out");
                    tracing::info!(
                        msg_id = %done.collector.msg_id(),
                        topic = %done.payload.topic,
                        missing = ?done.collector.missing(),
                        acked = ?done.collector.acked().iter().map(|a| a.recipient.clone()).collect::<Vec<_>>(),
                        sends = done.sends,
                        ack_endpoints_down = ?self.monitor.missing(),
                        "publish timed out"
                    );
                    let error = TimeoutError {
                        msg_id: done.collector.msg_id().to_owned(),
                        topic: done.payload.topic,
                        missing: done.collector.missing(),
                        acked: done.collector.acked(),
                        sends: done.sends,
                        waited: done.payload.timeout,
                    };
                    let _ = done
                        .payload
                        .reply
                        .send(Err(Error::Timeout(Box::new(error))));
                }
            }
        }
        let mut i = 0;
        while i < self.plain.len() {
            if self.plain[i].1 <= now {
                let (out, _) = self.plain.swap_remove(i);
                self.counters.bump("publish", "no_subscriber");
                tracing::info!(msg_id = %out.msg_id, topic = %out.topic, "no subscriber before the deadline; not sent");
                let _ = out.reply.send(Err(Error::NoSubscribers {
                    topic: out.topic,
                    waited: out.timeout,
                }));
            } else {
                i += 1;
            }
        }
    }

    fn read_acks(&mut self) {
        // Bounded batch: keep the mailbox and timers responsive under a flood.
        for _ in 0..1024 {
            // Three frames kept: enough to count a message with too many.
            match wire::try_recv_bounded(&self.acks, 3) {
                Ok(Some(frames)) => self.on_ack_frames(&frames),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("ACK receive failed: {e}");
                    break;
                }
            }
        }
    }

    fn on_ack_frames(&mut self, frames: &[Vec<u8>]) {
        self.counters.bump("ack", "received");
        let envelope = match Envelope::decode(frames, self.max_message_size) {
            Ok(e) => e,
            Err(e) => return self.refuse_ack("ack.invalid", e.kind(), None, &e),
        };
        if envelope.topic() != self.ack_topic {
            // Prefix match of the subscription let a longer topic through.
            return self.counters.bump("ack", "other_topic");
        }
        let entries = match AckBody::entries_from_msg(envelope.msg()) {
            Ok(a) => a,
            Err(e) => return self.refuse_ack("ack.invalid", e.kind(), None, &e),
        };
        // Cheap test first: most ACKs on a shared bus are for other
        // publishers, and the signature is the expensive part.
        if !entries
            .iter()
            .any(|e| self.inflight.contains(&e.ack_msg_id))
        {
            return self.counters.bump("ack", "unknown_msg_id");
        }
        let Some(validator) = &self.validator else {
            return self.counters.bump("ack.rejected", "no_trust_store");
        };
        // Signature and certificate only: see `setup::ack_validator`
        // for why the routing policy does not apply to ACKs.
        let signer = match validator.validate(&envelope) {
            Ok(v) => match v.signer {
                Some(s) => s,
                None => return self.counters.bump("ack.rejected", "unsigned"),
            },
            Err(r) => return self.refuse_ack("ack.rejected", r.kind(), None, &r),
        };
        if entries.len() > 1 {
            self.counters.bump("ack", "batches");
        }
        let now = Instant::now();
        let single = entries.len() == 1;
        for entry in &entries {
            self.apply_ack(&signer, entry, now, single);
        }
    }

    /// Counts a refused ACK under `group.kind` and says why at debug level.
    fn refuse_ack(
        &self,
        group: &'static str,
        kind: &'static str,
        signer: Option<&str>,
        why: &dyn std::fmt::Display,
    ) {
        self.counters.bump(group, kind);
        tracing::debug!(
            reason = %format_args!("{group}.{kind}"),
            signer = signer.unwrap_or("-"),
            "refused ACK: {why}"
        );
    }

    /// One verified ACK entry. In a batch, entries for messages this handle
    /// does not have in flight are other publishers' business: not counted.
    fn apply_ack(&mut self, signer: &str, entry: &AckBody, now: Instant, single: bool) {
        match self.inflight.on_ack(signer, entry, now) {
            AckEffect::Completed(done) => {
                self.counters.bump("ack", "counted");
                self.counters.bump("publish", "acked");
                tracing::debug!(msg_id = %entry.ack_msg_id, signer, "ACK counted; every recipient has acked");
                let receipt = Receipt {
                    msg_id: done.collector.msg_id().to_owned(),
                    topic: done.payload.topic,
                    acks: done.collector.acked(),
                    sends: done.sends,
                    elapsed: now.saturating_duration_since(done.payload.started),
                };
                let _ = done.payload.reply.send(Ok(receipt));
            }
            AckEffect::Judged(AckOutcome::Counted { .. }) => {
                self.counters.bump("ack", "counted");
                tracing::debug!(msg_id = %entry.ack_msg_id, signer, "ACK counted");
            }
            AckEffect::Judged(outcome) => self.refuse_ack(
                "ack",
                outcome.kind(),
                Some(signer),
                &format_args!("{} for {:?}", outcome.kind(), entry.ack_msg_id),
            ),
            AckEffect::Unknown if single => self.counters.bump("ack", "unknown_msg_id"),
            AckEffect::Unknown => {}
        }
    }

    fn fail_all(&mut self) {
        for (out, _) in self.plain.drain(..) {
            let _ = out.reply.send(Err(Error::Closed));
        }
        let ids: Vec<String> = self.inflight.unsent().map(str::to_owned).collect();
        for id in ids {
            if let Some(done) = self.inflight.remove(&id) {
                let _ = done.payload.reply.send(Err(Error::Closed));
            }
        }
        // Sent-but-unacked messages: dropping their reply senders makes the
        // waiting futures report Closed.
    }
}
