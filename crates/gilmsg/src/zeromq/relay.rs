//! `gilmsg-relay`: the fedmsg-relay-compatible forwarder.
//!
//! Short-lived publishers (the CLI, cron jobs) cannot bind an endpoint that
//! everyone knows, so they connect to the relay's inbound SUB socket
//! (`relay_inbound`); the relay republishes every message, frames untouched,
//! on its outbound socket (`endpoints.relay_outbound`), which consumers
//! subscribe to.
//!
//! The outbound socket is an XPUB rather than fedmsg-relay's PUB, and the
//! relay reads its subscription messages as they arrive: that makes libzmq
//! register a new subscriber at once, instead of on the relay's next send,
//! so the first message after a consumer connects is not dropped.
//!
//! The relay is where the bus keeps malformed *shapes* out: it forwards a
//! message only if it has at most two frames (fedmsg's topic and body) and
//! at most the hard size cap in total, and counts the rest as dropped with
//! the reason (`relay.dropped.too_many_frames`, `relay.dropped.oversize`).
//! libzmq buffers a multipart message whole before the relay sees its first
//! frame, so this bounds what reaches the consumers behind the relay, not
//! what the relay itself holds (see docs/security.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_config::Config;
use tokio::sync::oneshot;

use super::actor::{self, Actor, Mailbox, PollSet, PollSlot, Ready};
use super::monitor::{Monitor, Role, Subscriptions};
use super::socket::SocketTuning;
use crate::error::{Error, Result};
use crate::stats::{Record, RelayCounters, Stats};
use crate::transport::Flow;

/// Frames in a fedmsg message: topic and body.
const FRAMES: usize = 2;

/// The key in `endpoints` where the relay publishes, as in fedmsg.
pub const RELAY_OUTBOUND: &str = "relay_outbound";

/// What a relay's handle tells its thread.
enum Command {
    Shutdown,
}

/// A running relay; it stops when dropped or closed.
pub struct Relay {
    mailbox: Mailbox<Command>,
    inbound: Vec<String>,
    outbound: Vec<String>,
    counters: Arc<RelayCounters>,
    done: Option<oneshot::Receiver<()>>,
    health: crate::health::Health,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .finish()
    }
}

impl Relay {
    /// Binds `relay_inbound` and `endpoints.relay_outbound` from the config.
    pub fn start(config: &Config) -> Result<Relay> {
        let outbound = config
            .endpoints
            .get(RELAY_OUTBOUND)
            .cloned()
            .unwrap_or_default();
        if config.relay_inbound.is_empty() || outbound.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "a relay needs `relay_inbound` and `endpoints.{RELAY_OUTBOUND}` in the config"
            )));
        }
        Relay::bind(config, &config.relay_inbound, &outbound)
    }

    /// Binds the given endpoints instead of the config's (a
    /// `tcp://127.0.0.1:*` port is resolved); socket options come from `config`.
    pub fn bind(config: &Config, inbound: &[String], outbound: &[String]) -> Result<Relay> {
        let tuning = SocketTuning::from_config(config);
        let counters = Arc::new(RelayCounters::default());
        let thread_counters = counters.clone();
        let (inbound, outbound) = (inbound.to_vec(), outbound.to_vec());
        let started = actor::start("relay", move |_own: Mailbox<Command>| {
            Forwarder::new(&tuning, &inbound, &outbound, thread_counters)
        })?;
        let (inbound, outbound) = started.bound;
        Ok(Relay {
            mailbox: started.mailbox,
            inbound,
            outbound,
            counters,
            done: Some(started.done),
            health: started.health,
        })
    }

    /// Where publishers connect.
    pub fn inbound_endpoints(&self) -> &[String] {
        &self.inbound
    }

    /// Where consumers connect.
    pub fn outbound_endpoints(&self) -> &[String] {
        &self.outbound
    }

    /// `relay.forwarded`, `relay.frames`, `relay.dropped.<reason>`,
    /// `relay.subscriptions` (distinct prefixes consumers subscribed to),
    /// `relay.subscribers` (consumers connected), `relay.publishers`
    /// (publishers connected), `subscriptions.*` and `connection.*`.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Whether the relay's socket thread is turning.
    pub fn health(&self) -> crate::health::Health {
        self.health.clone()
    }

    /// The relay's counters for `/metrics`.
    pub fn metrics(&self) -> crate::monitoring::ComponentMetrics {
        crate::monitoring::ComponentMetrics {
            component: "relay",
            source: self.counters.clone(),
        }
    }

    /// Stops forwarding and waits for the thread.
    pub async fn close(mut self) {
        let _ = self.mailbox.send(Command::Shutdown);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.mailbox.send(Command::Shutdown);
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Inbound,
    /// Subscriptions arriving on the outbound XPUB.
    Outbound,
    InboundMonitor,
    OutboundMonitor,
}

impl PollSlot for Slot {
    fn bit(self) -> u32 {
        self as u32
    }
}

struct Forwarder {
    inbound: zmq::Socket,
    outbound: zmq::Socket,
    inbound_monitor: Monitor,
    outbound_monitor: Monitor,
    subscriptions: Subscriptions,
    /// Largest message forwarded, all frames together.
    max_message: usize,
    counters: Arc<RelayCounters>,
    /// Held by every socket too; terminated when the last is dropped.
    _context: zmq::Context,
}

type Bound = (Vec<String>, Vec<String>);

impl Forwarder {
    fn new(
        tuning: &SocketTuning,
        inbound: &[String],
        outbound: &[String],
        counters: Arc<RelayCounters>,
    ) -> Result<(Self, Bound)> {
        let context = zmq::Context::new();
        let everything = [String::new()];
        let (sub, mut inbound_monitor) = Monitor::open(
            &context,
            tuning,
            Role::Subscriber(&everything),
            "relay inbound",
            Duration::ZERO,
            &counters.link,
        )?;
        let bound_in = inbound_monitor.bind(&sub, inbound)?;
        let (xpub, mut outbound_monitor) = Monitor::open(
            &context,
            tuning,
            Role::Publisher,
            "relay outbound",
            Duration::ZERO,
            &counters.link,
        )?;
        // Verbose: every subscription is seen at once, so a new consumer is
        // registered before the next message is forwarded.
        xpub.set_xpub_verbose(true)
            .map_err(|e| Error::socket("set xpub_verbose", e))?;
        let bound_out = outbound_monitor.bind(&xpub, outbound)?;
        let forwarder = Forwarder {
            inbound: sub,
            outbound: xpub,
            inbound_monitor,
            outbound_monitor,
            subscriptions: Subscriptions::new(tuning),
            max_message: usize::try_from(tuning.hard_max_message).unwrap_or(usize::MAX),
            counters,
            _context: context,
        };
        Ok((forwarder, (bound_in, bound_out)))
    }
}

impl Actor for Forwarder {
    type Command = Command;
    type Slot = Slot;

    fn poll_items<'a>(&'a self, set: &mut PollSet<'a, Slot>) {
        set.add(Slot::Inbound, &self.inbound);
        set.add(Slot::Outbound, &self.outbound);
        set.add(Slot::InboundMonitor, self.inbound_monitor.socket());
        set.add(Slot::OutboundMonitor, self.outbound_monitor.socket());
    }

    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        [
            self.inbound_monitor.next_deadline(now),
            self.outbound_monitor.next_deadline(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_command(&mut self, Command::Shutdown: Command) -> Flow {
        Flow::Stop
    }

    fn on_wakeup(&mut self, ready: Ready, now: Instant) {
        if ready.has(Slot::InboundMonitor) && self.inbound_monitor.process(now) {
            let peers = self.inbound_monitor.peers() as u64;
            self.counters.publishers.set(peers);
        }
        if ready.has(Slot::OutboundMonitor) && self.outbound_monitor.process(now) {
            let peers = self.outbound_monitor.peers() as u64;
            self.counters.subscribers.set(peers);
        }
        if ready.has(Slot::Outbound) {
            let drained = self
                .subscriptions
                .drain_from(&self.outbound, &self.counters.link);
            if drained.changed {
                let prefixes = self.subscriptions.len() as u64;
                self.counters.subscriptions.set(prefixes);
            }
            self.outbound_monitor.enforce(&self.outbound, drained, now);
        }
        if ready.has(Slot::Inbound) {
            self.forward_batch();
        }
        self.inbound_monitor.tick(&self.inbound, now);
        self.outbound_monitor.tick(&self.outbound, now);
    }
}

impl Forwarder {
    /// Forwards queued messages, without copying them, and drops those of
    /// more than two frames or over the size cap.
    fn forward_batch(&mut self) {
        let mut forwarded = 0u64;
        let mut frames = 0u64;
        let mut parts: Vec<zmq::Message> = Vec::with_capacity(FRAMES);
        let mut spare = zmq::Message::new();
        for _ in 0..4096 {
            match self.inbound.recv(&mut spare, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!("relay receive failed: {e}");
                    break;
                }
            }
            // libzmq delivers a multipart message only once all of it has
            // arrived, so the rest is read without waiting.
            let mut count = 1usize;
            let mut size = spare.len();
            let mut more = spare.get_more();
            parts.push(std::mem::replace(&mut spare, zmq::Message::new()));
            while more {
                if let Err(e) = self.inbound.recv(&mut spare, 0) {
                    tracing::warn!("relay receive failed: {e}");
                    break;
                }
                count += 1;
                size = size.saturating_add(spare.len());
                more = spare.get_more();
                if parts.len() < FRAMES {
                    parts.push(std::mem::replace(&mut spare, zmq::Message::new()));
                }
            }
            frames += count as u64;
            let refusal = if count > FRAMES {
                Some("too_many_frames")
            } else if size > self.max_message {
                Some("oversize")
            } else {
                None
            };
            if let Some(reason) = refusal {
                parts.clear();
                self.counters.dropped.bump(reason);
                tracing::debug!(
                    frames = count,
                    bytes = size,
                    reason,
                    "relay dropped a message"
                );
                continue;
            }
            let last = parts.len().saturating_sub(1);
            for (i, part) in parts.drain(..).enumerate() {
                let flags = if i < last {
                    zmq::SNDMORE | zmq::DONTWAIT
                } else {
                    zmq::DONTWAIT
                };
                if let Err(e) = self.outbound.send(part, flags) {
                    tracing::warn!("relay send failed: {e}");
                }
            }
            forwarded += 1;
        }
        self.counters.forwarded.add(forwarded);
        self.counters.frames.add(frames);
    }
}
