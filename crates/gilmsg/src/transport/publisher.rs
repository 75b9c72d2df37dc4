//! [`PublisherDriver`]: a publisher's rules ([`PublisherState`]) with what
//! every transport adds around them: signature checks on ACKs, counters,
//! logs, and the answer to each waiting caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_proto::publisher::{
    AckEffect, AckRefusal, AckVerdict, Finished, PublisherSettings, PublisherState, Sendable,
    TimerEvent,
};
use gilmsg_proto::{AckOutcome, Envelope, SignedPart, Validator};
use tokio::sync::oneshot;

use super::verify_ahead::{Ahead, VerifyAhead};
use super::{Flow, PublisherCommand, Queued, WireFormat};
use crate::error::{Error, Result, TimeoutError};
use crate::stats::PublisherCounters;
use crate::Receipt;

/// What the driver keeps about each message besides the rules' state.
struct Pending<Wire> {
    /// The same bytes on every send.
    wire: Wire,
    timeout: Duration,
    started: Instant,
    reply: oneshot::Sender<Result<Receipt>>,
}

/// A publisher's rules and bookkeeping, for one transport's loop to drive.
pub(crate) struct PublisherDriver<W: WireFormat> {
    state: PublisherState<Pending<W::Wire>>,
    /// ACKs are always verified: counting an unverified one would be a
    /// false positive waiting to happen (see `setup::ack_validator`).
    validator: Arc<Validator>,
    max_message_size: usize,
    counters: Arc<PublisherCounters>,
}

impl<W: WireFormat> PublisherDriver<W> {
    /// A driver with nothing in flight.
    pub(crate) fn new(
        settings: PublisherSettings,
        validator: Arc<Validator>,
        max_message_size: usize,
        counters: Arc<PublisherCounters>,
    ) -> Self {
        PublisherDriver {
            state: PublisherState::new(settings),
            validator,
            max_message_size,
            counters,
        }
    }

    /// One command from a handle.
    pub(crate) fn on_command(&mut self, command: PublisherCommand<W::Wire>, now: Instant) -> Flow {
        match command {
            PublisherCommand::Publish(queued) => self.accept(*queued, now),
            PublisherCommand::Cancel(msg_id) => self.cancel(&msg_id),
            PublisherCommand::Shutdown => return Flow::Stop,
        }
        self.publish_depth();
        Flow::Continue
    }

    /// `publish.in_flight`, after every change.
    fn publish_depth(&self) {
        self.counters.in_flight.set(self.state.len() as u64);
    }

    /// Takes a publish in; it waits for [`PublisherDriver::send_ready`].
    fn accept(&mut self, queued: Queued<W::Wire>, now: Instant) {
        let Queued {
            msg_id,
            topic,
            message: wire,
            collector,
            timeout,
            reply,
        } = queued;
        // `Bus::publish` refuses timeouts past MAX_TIMEOUT; this is the
        // belt to those braces: never panic on the transport's thread.
        let Some(deadline) = now.checked_add(timeout) else {
            let _ = reply.send(Err(Error::InvalidArgument(format!(
                "ack_timeout {timeout:?} is too long"
            ))));
            return;
        };
        let pending = Pending {
            wire,
            timeout,
            started: now,
            reply,
        };
        if let Err(pending) = self
            .state
            .insert(&msg_id, topic, collector, deadline, pending)
        {
            let _ = pending.reply.send(Err(Error::InvalidArgument(format!(
                "message id {msg_id} is already in flight"
            ))));
        }
    }

    /// Forgets a publish whose caller stopped waiting, acknowledged or plain.
    fn cancel(&mut self, msg_id: &str) {
        if self.state.remove(msg_id).is_some() {
            self.counters.cancelled.bump();
            tracing::debug!(msg_id, "publish cancelled by its caller");
        }
    }

    /// Whether messages wait for the transport to be ready.
    pub(crate) fn has_waiting(&self) -> bool {
        self.state.waiting() > 0
    }

    /// Sends, through `send`, every waiting message the transport's
    /// readiness lets go: `ready(topic, wants_acks)` says whether a message
    /// on `topic` reaches a subscriber and, for an acknowledged one, whether
    /// ACKs can come back.
    pub(crate) fn send_ready(
        &mut self,
        now: Instant,
        ready: impl FnMut(&str, bool) -> bool,
        mut send: impl FnMut(&W::Wire) -> Result<()>,
    ) {
        for sendable in self.state.take_sendable(now, ready) {
            match sendable {
                Sendable::Acked(msg_id) => {
                    let Some(pending) = self.state.payload(&msg_id) else {
                        continue;
                    };
                    match send(&pending.wire) {
                        Ok(()) => {
                            tracing::debug!(msg_id = %msg_id, "sent");
                            self.counters.sent.bump();
                        }
                        // Its re-send timer recovers it, like a lost message.
                        Err(e) => tracing::warn!("send of {msg_id} failed: {e}"),
                    }
                }
                Sendable::Plain(done) => {
                    let Finished {
                        msg_id,
                        topic,
                        payload,
                        ..
                    } = done;
                    let result = send(&payload.wire).map(|()| {
                        tracing::debug!(msg_id = %msg_id, topic = %topic, "sent (plain)");
                        self.counters.sent_plain.bump();
                        Receipt {
                            msg_id: msg_id.to_string(),
                            topic,
                            acks: Vec::new(),
                            sends: 1,
                            elapsed: Duration::ZERO,
                        }
                    });
                    let _ = payload.reply.send(result);
                }
            }
        }
    }

    /// When the next timer is due.
    pub(crate) fn next_wakeup(&mut self) -> Option<Instant> {
        self.state.next_wakeup()
    }

    /// Does what the timers say at `now`: re-sends through `send`,
    /// deadlines answered. `down` names what the transport knows to be
    /// down, for the timeout's log line.
    pub(crate) fn fire_timers(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&W::Wire) -> Result<()>,
        down: impl Fn() -> Vec<String>,
    ) {
        for event in self.state.poll_timers(now) {
            match event {
                TimerEvent::Resend(msg_id) => {
                    let Some(pending) = self.state.payload(&msg_id) else {
                        continue;
                    };
                    if send(&pending.wire).is_ok() {
                        tracing::debug!(msg_id = %msg_id, "re-sent");
                        self.counters.resent.bump();
                    }
                }
                TimerEvent::Deferred(_) => self.counters.resend_deferred.bump(),
                TimerEvent::Expired(done) => self.expired(done, &down),
            }
        }
        self.publish_depth();
    }

    /// A deadline passed: a timeout naming who did not ACK, or, for a
    /// plain message, no subscriber.
    fn expired(&self, done: Finished<Pending<W::Wire>>, down: &dyn Fn() -> Vec<String>) {
        let Finished {
            msg_id,
            topic,
            collector,
            payload,
            sends,
        } = done;
        let Some(collector) = collector else {
            self.counters.no_subscriber.bump();
            tracing::info!(msg_id = %msg_id, topic = %topic, "no subscriber before the deadline; not sent");
            let _ = payload.reply.send(Err(Error::NoSubscribers {
                topic,
                waited: payload.timeout,
            }));
            return;
        };
        self.counters.timed_out.bump();
        for recipient in collector.missing() {
            self.counters.timeouts.bump(&recipient, &topic);
        }
        let acked = collector.acked();
        tracing::info!(
            msg_id = %msg_id,
            topic = %topic,
            missing = ?collector.missing(),
            acked = ?acked.iter().map(|a| a.recipient.as_str()).collect::<Vec<_>>(),
            sends,
            ack_endpoints_down = ?down(),
            "publish timed out"
        );
        let error = TimeoutError {
            msg_id: msg_id.to_string(),
            topic,
            missing: collector.missing(),
            acked,
            sends,
            waited: payload.timeout,
            broker: W::broker_verdict(&payload.wire),
        };
        let _ = payload.reply.send(Err(Error::Timeout(Box::new(error))));
    }

    /// One message received on the ACK topic.
    pub(crate) fn on_ack(&mut self, wire: &W::Wire, now: Instant) {
        self.judge_ack(wire, Ahead::Nothing, now);
        self.publish_depth();
    }

    /// A burst of messages received on the ACK topic, in the order they
    /// came: as [`PublisherDriver::on_ack`] on each, except that the
    /// signatures the rules will check are checked first, together
    /// ([`VerifyAhead`]: with ten recipients, ten ACKs often come at once).
    pub(crate) fn on_acks(&mut self, wires: &[W::Wire]) {
        let state = &self.state;
        let mut ahead = VerifyAhead::prepare::<W>(
            Some(&self.validator),
            wires,
            self.max_message_size,
            |_| false,
            |envelope, _| state.would_verify_ack(envelope),
            &self.counters.signature_batched,
        );
        for (i, wire) in wires.iter().enumerate() {
            let done = ahead.take(i);
            self.judge_ack(wire, done, Instant::now());
        }
        self.publish_depth();
    }

    /// The rules' verdict on one ACK message, with what [`VerifyAhead`]
    /// did for it, counted, logged and applied.
    fn judge_ack(&mut self, wire: &W::Wire, done: Ahead, now: Instant) {
        self.counters.ack_received.bump();
        let validator = &self.validator;
        let (decoded, verdict) = done.split();
        let decoded = decoded.unwrap_or_else(|| Err(W::decode(wire, self.max_message_size)));
        // Signature and certificate only: see `setup::ack_validator`
        // for why the routing policy does not apply to ACKs.
        let verify = |envelope: &Envelope, signed: &SignedPart| match verdict {
            Some(verdict) => verdict,
            None => validator.validate_signed(envelope, signed),
        };
        let verdict = match decoded {
            Ok((envelope, signed)) => self
                .state
                .on_signed_ack_message(envelope, signed, now, verify),
            Err(decoded) => self.state.on_ack_message(decoded, now, verify),
        };
        let (signer, batch, effects) = match verdict {
            AckVerdict::Refused(refusal) => {
                let (group, kind) = refusal.counter();
                match &refusal {
                    AckRefusal::Invalid(_) => self.counters.ack_invalid.bump(kind),
                    AckRefusal::Rejected(_) | AckRefusal::Unsigned => {
                        self.counters.ack_rejected.bump(kind)
                    }
                    // Other publishers' ACKs, the most common message on a
                    // shared bus: counted, not logged.
                    AckRefusal::OtherTopic | AckRefusal::UnknownMsgId => {
                        return self.counters.ack.bump(kind)
                    }
                }
                tracing::debug!(
                    reason = %format_args!("{group}.{kind}"),
                    signer = "-",
                    "refused ACK: {refusal}"
                );
                return;
            }
            AckVerdict::Applied {
                signer,
                batch,
                effects,
            } => (signer, batch, effects),
        };
        if batch {
            self.counters.ack_batches.bump();
        }
        for (msg_id, effect) in effects {
            self.apply(&signer, &msg_id, effect, now);
        }
    }

    /// One verified ACK entry's effect.
    fn apply(&self, signer: &str, msg_id: &str, effect: AckEffect<Pending<W::Wire>>, now: Instant) {
        match effect {
            AckEffect::Completed(done) => {
                self.counters.ack_counted.bump();
                self.counters.acked.bump();
                tracing::debug!(msg_id, signer, "ACK counted; every recipient has acked");
                let receipt = Receipt {
                    msg_id: done.msg_id.to_string(),
                    topic: done.topic,
                    acks: done.collector.map(|c| c.acked()).unwrap_or_default(),
                    sends: done.sends,
                    elapsed: now.saturating_duration_since(done.payload.started),
                };
                self.counters.ack_latency.observe(receipt.elapsed);
                let _ = done.payload.reply.send(Ok(receipt));
            }
            AckEffect::Judged(AckOutcome::Counted { .. }) => {
                self.counters.ack_counted.bump();
                tracing::debug!(msg_id, signer, "ACK counted");
            }
            AckEffect::Judged(outcome) => {
                self.counters.ack.bump(outcome.kind());
                tracing::debug!(
                    reason = %format_args!("ack.{}", outcome.kind()),
                    signer,
                    "refused ACK: {} for {msg_id:?}",
                    outcome.kind()
                );
            }
            AckEffect::Unknown => self.counters.ack.bump("unknown_msg_id"),
        }
    }

    /// Fails one publish at once with `error` (AMQP: the broker returned
    /// it, no queue would receive it); `false` if it is not in flight.
    pub(crate) fn fail(&mut self, msg_id: &str, error: Error) -> bool {
        match self.state.remove(msg_id) {
            Some(done) => {
                let _ = done.payload.reply.send(Err(error));
                true
            }
            None => false,
        }
    }

    /// Answers every caller still waiting with [`Error::Closed`].
    pub(crate) fn close(&mut self) {
        for done in self.state.drain() {
            let _ = done.payload.reply.send(Err(Error::Closed));
        }
    }
}
