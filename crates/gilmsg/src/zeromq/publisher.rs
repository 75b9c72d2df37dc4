//! The publisher's socket thread: one XPUB out, one SUB for ACKs.
//!
//! This thread is the only owner of both sockets. It receives encoded
//! publishes from [`crate::Bus`] handles through its mailbox and drives the
//! [`PublisherDriver`]: ACKs in, and out what the rules say to send once
//! the sockets are ready, re-sends and expiries when their timers fire.
//!
//! "Ready" means two signals from libzmq, neither of them a sleep: the XPUB
//! has seen a subscription that matches the topic (the relay's SUB, or a
//! consumer's), and the ACK socket has completed its handshake with the ACK
//! endpoints, after which libzmq has sent our subscription upstream. ACK
//! endpoints known to be down (refused, unreachable) are not waited for,
//! and endpoints with no verdict only for a short grace period. Whatever
//! still goes missing (a subscriber that joins late, a lost ACK) is
//! recovered by re-sending the same bytes until every recipient has acked.
//!
//! Where the loop runs is the caller's choice ([`SocketOwner`]): a thread of
//! its own (the default), or a task on the caller's tokio runtime, which on
//! a current-thread runtime saves the two thread hand-offs of every
//! acknowledged publish (`BusBuilder::run_on_current_runtime`). Either way
//! it is the sockets' only owner, and the handles reach it through its
//! mailbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::actor::{self, Actor, Mailbox, PollSet, PollSlot, Ready};
use super::monitor::{Monitor, Role, Subscriptions};
use super::socket::{self, SocketTuning};
use super::Frames;
use crate::error::Result;
use crate::stats::LinkCounters;
use crate::transport::{Flow, Outgoing, PublisherCommand, PublisherDriver, PublisherLink};

/// ACK messages taken off the socket at once and handed to the driver as
/// one burst (their signatures checked together).
const ACKS_PER_BURST: usize = 64;

/// Bursts per turn on a thread of its own: at most 1024 ACKs, to keep the
/// mailbox and timers responsive under a flood.
const ACK_BURSTS_PER_TURN_ON_THREAD: usize = 1024 / ACKS_PER_BURST;

/// Bursts per turn as a task on the caller's runtime: one (64 ACKs, about a
/// millisecond of verification here); the loop then yields its worker
/// before the next turn reads on (`Actor::backlogged`).
const ACK_BURSTS_PER_TURN_ON_RUNTIME: usize = 1;

/// Bursts read before deadlines are judged, whatever the bursts per turn:
/// ACKs that wait on the socket when a deadline comes (on a runtime that
/// was not driven for a while, say) are counted first, up to 1024 of them,
/// as on the thread; beyond that a flood cannot hold the timers back.
const ACK_BURSTS_BEFORE_TIMERS: usize = 1024 / ACKS_PER_BURST;

/// How long to wait for every ACK endpoint's handshake before settling for
/// some of them. Only matters when an endpoint gives no verdict at start-up
/// (a refused one is settled at once); the re-send timer covers recipients
/// behind endpoints that connect later.
const CONNECT_GRACE: Duration = Duration::from_millis(200);

/// Where a publisher's sockets go.
pub(crate) struct Sockets {
    pub(crate) tuning: SocketTuning,
    /// Where the XPUB binds (publishing as a named endpoint) ...
    pub(crate) bind: Vec<String>,
    /// ... or connects (active mode, through a relay).
    pub(crate) connect: Vec<String>,
    /// Where ACKs come from.
    pub(crate) ack_endpoints: Vec<String>,
    /// The ACK topic, to subscribe to.
    pub(crate) ack_topic: String,
}

/// Who runs the publisher's socket loop.
#[derive(Debug, Clone)]
pub(crate) enum SocketOwner {
    /// A thread of its own, `gilmsg-publisher`.
    Thread,
    /// A task on this runtime.
    Runtime(tokio::runtime::Handle),
}

/// A started publisher thread (or task).
pub(crate) struct Running {
    pub(crate) link: Box<dyn PublisherLink>,
    pub(crate) bound: Vec<String>,
    pub(crate) done: tokio::sync::oneshot::Receiver<()>,
    pub(crate) health: crate::health::Health,
}

type Command = PublisherCommand<Vec<Vec<u8>>>;

/// Starts the loop on `owner`; returns once its sockets are bound and
/// connected.
pub(crate) fn start(
    sockets: Sockets,
    driver: PublisherDriver<Frames>,
    link_counters: Arc<LinkCounters>,
    owner: SocketOwner,
) -> Result<Running> {
    let started = match owner {
        SocketOwner::Thread => actor::start("publisher", move |_own: Mailbox<Command>| {
            PublisherThread::new(
                sockets,
                driver,
                link_counters,
                ACK_BURSTS_PER_TURN_ON_THREAD,
            )
        })?,
        SocketOwner::Runtime(runtime) => {
            actor::start_on_runtime("publisher", &runtime, move |_own: Mailbox<Command>| {
                PublisherThread::new(
                    sockets,
                    driver,
                    link_counters,
                    ACK_BURSTS_PER_TURN_ON_RUNTIME,
                )
            })?
        }
    };
    Ok(Running {
        link: Box::new(started.mailbox),
        bound: started.bound,
        done: started.done,
        health: started.health,
    })
}

impl PublisherLink for Mailbox<Command> {
    fn publish(&self, outgoing: Outgoing) -> Result<()> {
        self.send(PublisherCommand::Publish(Box::new(
            outgoing.encode::<Frames>(),
        )))
    }

    fn cancel(&self, msg_id: String) {
        let _ = self.send(PublisherCommand::Cancel(msg_id));
    }

    fn shutdown(&self) {
        let _ = self.send(PublisherCommand::Shutdown);
    }
}

#[derive(Clone, Copy)]
enum Slot {
    /// Subscriptions arriving on the XPUB.
    Subscriptions,
    Acks,
    AckMonitor,
    OutMonitor,
}

impl PollSlot for Slot {
    fn bit(self) -> u32 {
        self as u32
    }
}

struct PublisherThread {
    out: zmq::Socket,
    out_monitor: Monitor,
    acks: zmq::Socket,
    ack_monitor: Monitor,
    subscriptions: Subscriptions,
    driver: PublisherDriver<Frames>,
    link_counters: Arc<LinkCounters>,
    /// How many bursts of ACKs one turn reads at most.
    ack_bursts_per_turn: usize,
    /// Full bursts read in a row, turn after turn, since the timers last
    /// ran (0: the ACK socket was emptied).
    ack_backlog: usize,
    /// Whether the last turn stopped reading ACKs at its bound with more
    /// waiting.
    acks_left: bool,
    /// Each socket holds the context too: libzmq terminates it, waiting up
    /// to `zmq_linger` for queued messages to leave, once the last is
    /// dropped (a one-shot logger must not exit with its message queued).
    _context: zmq::Context,
}

impl PublisherThread {
    /// Creates, binds and connects the sockets; returns the bound endpoints.
    fn new(
        setup: Sockets,
        driver: PublisherDriver<Frames>,
        link_counters: Arc<LinkCounters>,
        ack_bursts_per_turn: usize,
    ) -> Result<(Self, Vec<String>)> {
        let context = zmq::Context::new();
        let tuning = &setup.tuning;
        let (out, mut out_monitor) = Monitor::open(
            &context,
            tuning,
            Role::Publisher,
            "publisher",
            Duration::ZERO,
            &link_counters,
        )?;
        let bound = out_monitor.bind(&out, &setup.bind)?;
        out_monitor.connect(&out, &setup.connect)?;

        let (acks, mut ack_monitor) = Monitor::open(
            &context,
            tuning,
            Role::Subscriber(std::slice::from_ref(&setup.ack_topic)),
            "ACK listener",
            CONNECT_GRACE,
            &link_counters,
        )?;
        ack_monitor.connect(&acks, &setup.ack_endpoints)?;

        let thread = PublisherThread {
            out,
            out_monitor,
            acks,
            ack_monitor,
            subscriptions: Subscriptions::new(tuning),
            driver,
            link_counters,
            ack_bursts_per_turn,
            ack_backlog: 0,
            acks_left: false,
            _context: context,
        };
        Ok((thread, bound))
    }

    /// Reads up to `ack_bursts_per_turn` bursts of ACKs; notes in
    /// `ack_backlog` whether it stopped at that bound with more to read.
    fn read_acks(&mut self) {
        // Bounded bursts, each taken off the socket first so that the
        // driver can check its signatures together; bounded in all to keep
        // the mailbox and timers (and, on a runtime, other tasks)
        // responsive under a flood. What is left is read next turn: the
        // socket stays readable.
        let mut burst = Vec::new();
        self.acks_left = false;
        for _ in 0..self.ack_bursts_per_turn {
            socket::recv_burst(&self.acks, ACKS_PER_BURST, &mut burst, "ACK");
            if burst.is_empty() {
                self.ack_backlog = 0;
                return;
            }
            self.driver.on_acks(&burst);
            if burst.len() < ACKS_PER_BURST {
                self.ack_backlog = 0;
                return;
            }
            self.ack_backlog += 1;
        }
        self.acks_left = true;
    }
}

/// Whether ACKs can come back: every ACK endpoint connected, or some
/// connected and the others known to be down or past the grace period.
fn acks_ready(ack_monitor: &Monitor, now: Instant) -> bool {
    let connected = ack_monitor.connected();
    connected >= ack_monitor.expected() || (connected > 0 && ack_monitor.settled(now))
}

impl Actor for PublisherThread {
    type Command = Command;
    type Slot = Slot;

    fn poll_items<'a>(&'a self, set: &mut PollSet<'a, Slot>) {
        set.add(Slot::Subscriptions, &self.out);
        set.add(Slot::Acks, &self.acks);
        set.add(Slot::AckMonitor, self.ack_monitor.socket());
        set.add(Slot::OutMonitor, self.out_monitor.socket());
    }

    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        [
            self.driver.next_wakeup(),
            self.ack_monitor.next_deadline(now),
            self.out_monitor.next_deadline(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_command(&mut self, command: Command) -> Flow {
        if let PublisherCommand::Publish(queued) = &command {
            tracing::debug!(
                msg_id = %queued.msg_id,
                topic = %queued.topic,
                subscriber = self.subscriptions.matches(queued.topic.as_bytes()),
                ack_endpoints_connected = self.ack_monitor.connected(),
                ack_endpoints = self.ack_monitor.expected(),
                ack_endpoints_not_up = ?self.ack_monitor.missing(),
                "publish accepted; sent once a subscriber and the ACK endpoints are there"
            );
        }
        self.driver.on_command(command, Instant::now())
    }

    fn on_wakeup(&mut self, ready: Ready, now: Instant) {
        let mut readiness_changed = false;
        if ready.has(Slot::Subscriptions) {
            let drained = self
                .subscriptions
                .drain_from(&self.out, &self.link_counters);
            readiness_changed |= drained.changed;
            self.out_monitor.enforce(&self.out, drained, now);
        }
        if ready.has(Slot::AckMonitor) {
            readiness_changed |= self.ack_monitor.process(now);
        }
        if ready.has(Slot::OutMonitor) {
            self.out_monitor.process(now);
        }
        if ready.has(Slot::Acks) {
            self.read_acks();
        } else {
            self.ack_backlog = 0;
            self.acks_left = false;
        }
        self.ack_monitor.tick(&self.acks, now);
        self.out_monitor.tick(&self.out, now);
        let now = Instant::now();
        let out = &self.out;
        let send = |frames: &Vec<Vec<u8>>| socket::send_frames(out, frames);
        if readiness_changed || self.driver.has_waiting() {
            let acks_ready = acks_ready(&self.ack_monitor, now);
            let subscriptions = &self.subscriptions;
            self.driver.send_ready(
                now,
                |topic, wants_acks| {
                    subscriptions.matches(topic.as_bytes()) && (acks_ready || !wants_acks)
                },
                send,
            );
        }
        // With ACKs still waiting (a full burst read, fewer than
        // ACK_BURSTS_BEFORE_TIMERS in a row), the next turn reads them
        // before any deadline is judged.
        if self.ack_backlog == 0 || self.ack_backlog >= ACK_BURSTS_BEFORE_TIMERS {
            self.ack_backlog = 0;
            let ack_monitor = &self.ack_monitor;
            self.driver.fire_timers(now, send, || ack_monitor.missing());
        }
    }

    fn backlogged(&self) -> bool {
        self.acks_left
    }

    fn on_stop(&mut self) {
        self.driver.close();
    }
}
