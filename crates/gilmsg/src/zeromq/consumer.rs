//! The consumer's socket thread: one SUB for messages, one XPUB for ACKs.
//!
//! The thread owns both sockets. It receives frames in bursts of at most
//! [`ACK_BURST`], hands each burst to the [`ConsumerDriver`] (which checks
//! its signatures together, applies every rule in order
//! and hands deliveries over), sends the signed ACKs the driver yields
//! after each burst, and reports readiness from the sockets' monitors.

use std::sync::Arc;
use std::time::Instant;

use gilmsg_proto::consumer::ACK_BURST;

use super::actor::{self, Actor, Mailbox, PollSet, PollSlot, Ready};
use super::monitor::{Monitor, Role, Subscriptions};
use super::socket::{self, SocketTuning};
use super::Frames;
use crate::consumer::{Readiness, CONNECT_GRACE};
use crate::error::Result;
use crate::stats::LinkCounters;
use crate::transport::{
    ConsumerCommand, ConsumerDriver, ConsumerLink, ConsumerParts, Flow, Settle,
};

/// Where a consumer's sockets go.
pub(crate) struct Sockets {
    pub(crate) tuning: SocketTuning,
    /// What the SUB connects to ...
    pub(crate) endpoints: Vec<String>,
    /// ... and subscribes to.
    pub(crate) topics: Vec<String>,
    /// Where the ACK XPUB binds (`endpoints[name]`) ...
    pub(crate) ack_bind: Vec<String>,
    /// ... or connects (`relay_inbound`); neither when ACKs are off.
    pub(crate) ack_connect: Vec<String>,
}

/// A started consumer thread.
pub(crate) struct Running {
    pub(crate) link: Arc<dyn ConsumerLink>,
    pub(crate) bound: Vec<String>,
    pub(crate) done: tokio::sync::oneshot::Receiver<()>,
    pub(crate) health: crate::health::Health,
}

/// Starts the thread; returns once its sockets are bound and connected.
pub(crate) fn start(sockets: Sockets, parts: ConsumerParts) -> Result<Running> {
    let started = actor::start("consumer", move |mailbox: Mailbox<ConsumerCommand>| {
        let link: Arc<dyn ConsumerLink> = Arc::new(mailbox);
        ConsumerThread::new(sockets, ConsumerDriver::new(parts, link))
    })?;
    Ok(Running {
        link: Arc::new(started.mailbox),
        bound: started.bound,
        done: started.done,
        health: started.health,
    })
}

impl ConsumerLink for Mailbox<ConsumerCommand> {
    fn settle(&self, settle: Settle) -> Result<()> {
        self.send(ConsumerCommand::Settle(settle))
    }

    fn shutdown(&self) {
        let _ = self.send(ConsumerCommand::Shutdown);
    }
}

/// The ACK socket and its monitor.
struct AckSocket {
    socket: zmq::Socket,
    monitor: Monitor,
    /// It connects to a relay, whose subscription is the sign ACKs reach
    /// someone; a bound one is ready as soon as it is bound.
    needs_subscriber: bool,
}

#[derive(Clone, Copy)]
enum Slot {
    Messages,
    Monitor,
    AckSubscriptions,
    AckMonitor,
}

impl PollSlot for Slot {
    fn bit(self) -> u32 {
        self as u32
    }
}

struct ConsumerThread {
    sub: zmq::Socket,
    monitor: Monitor,
    ack: Option<AckSocket>,
    subscriptions: Subscriptions,
    driver: ConsumerDriver<Frames>,
    link_counters: Arc<LinkCounters>,
    /// Each socket holds the context too: libzmq terminates it, waiting up
    /// to `zmq_linger` for queued ACKs to leave, once the last is dropped.
    _context: zmq::Context,
}

impl ConsumerThread {
    fn new(setup: Sockets, driver: ConsumerDriver<Frames>) -> Result<(Self, Vec<String>)> {
        let context = zmq::Context::new();
        let tuning = &setup.tuning;
        let counters = driver.link_counters();
        let link_counters = counters.clone();
        let (ack, bound) = if setup.ack_bind.is_empty() && setup.ack_connect.is_empty() {
            (None, Vec::new())
        } else {
            let (socket, mut monitor) = Monitor::open(
                &context,
                tuning,
                Role::Publisher,
                "ACK publisher",
                CONNECT_GRACE,
                &counters,
            )?;
            let bound = monitor.bind(&socket, &setup.ack_bind)?;
            monitor.connect(&socket, &setup.ack_connect)?;
            let ack = AckSocket {
                socket,
                monitor,
                needs_subscriber: !setup.ack_connect.is_empty(),
            };
            (Some(ack), bound)
        };
        let (sub, mut monitor) = Monitor::open(
            &context,
            tuning,
            Role::Subscriber(&setup.topics),
            "subscriber",
            CONNECT_GRACE,
            &counters,
        )?;
        monitor.connect(&sub, &setup.endpoints)?;
        let thread = ConsumerThread {
            sub,
            monitor,
            ack,
            subscriptions: Subscriptions::new(tuning),
            driver,
            link_counters,
            _context: context,
        };
        thread
            .driver
            .report_readiness(thread.readiness(Instant::now()));
        Ok((thread, bound))
    }

    /// How far the sockets have come up.
    fn readiness(&self, now: Instant) -> Readiness {
        let ack_path = self
            .ack
            .as_ref()
            .is_none_or(|a| !a.needs_subscriber || self.subscriptions.any());
        let mut down = self.monitor.missing();
        let mut settled = self.monitor.settled(now);
        if let Some(ack) = &self.ack {
            if !ack_path {
                down.extend(ack.monitor.missing());
                settled &= ack.monitor.settled(now);
            }
        }
        Readiness {
            connected: self.monitor.connected(),
            expected: self.monitor.expected(),
            ack_path,
            down,
            settled,
        }
    }

    /// Signs and sends the ACKs the driver gathered.
    fn flush_acks(&mut self) {
        let ack = self.ack.as_ref();
        self.driver.flush_acks(|frames, _| match ack {
            Some(ack) => socket::send_frames(&ack.socket, &frames),
            None => Ok(()),
        });
    }
}

impl Actor for ConsumerThread {
    type Command = ConsumerCommand;
    type Slot = Slot;

    fn poll_items<'a>(&'a self, set: &mut PollSet<'a, Slot>) {
        set.add(Slot::Messages, &self.sub);
        set.add(Slot::Monitor, self.monitor.socket());
        if let Some(ack) = &self.ack {
            set.add(Slot::AckSubscriptions, &ack.socket);
            set.add(Slot::AckMonitor, ack.monitor.socket());
        }
    }

    /// When the monitors next need the thread (re-connects, grace end).
    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let ack = self.ack.as_ref().and_then(|a| a.monitor.next_deadline(now));
        [self.monitor.next_deadline(now), ack]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_command(&mut self, command: ConsumerCommand) -> Flow {
        self.driver.on_command(command)
    }

    fn on_wakeup(&mut self, ready: Ready, now: Instant) {
        let mut readiness_changed = false;
        if ready.has(Slot::Monitor) {
            readiness_changed |= self.monitor.process(now);
        }
        if let Some(ack) = &mut self.ack {
            if ready.has(Slot::AckMonitor) {
                readiness_changed |= ack.monitor.process(now);
            }
            if ready.has(Slot::AckSubscriptions) {
                let drained = self
                    .subscriptions
                    .drain_from(&ack.socket, &self.link_counters);
                readiness_changed |= drained.changed;
                ack.monitor.enforce(&ack.socket, drained, now);
            }
            ack.monitor.tick(&ack.socket, now);
        }
        self.monitor.tick(&self.sub, now);
        // Also every pass while not ready: the grace period ends by the
        // clock, not by an event.
        if readiness_changed || !self.driver.is_ready() {
            self.driver.report_readiness(self.readiness(now));
        }
        if ready.has(Slot::Messages) {
            // A bounded burst, taken off the socket first so that the
            // driver can check its signatures in one batch, then the ACKs
            // for it go out (ACK_BURST).
            let mut burst = Vec::new();
            socket::recv_burst(&self.sub, ACK_BURST, &mut burst, "message");
            self.driver.on_burst(&burst);
        }
        self.flush_acks();
    }

    fn on_stop(&mut self) {
        self.flush_acks();
    }
}
