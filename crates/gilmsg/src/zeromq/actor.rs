//! One way to run a socket thread (an "actor"): start-up, mailbox, poll loop.
//!
//! libzmq sockets are not thread-safe, so every socket is created, used and
//! closed by exactly one thread. Handles talk to that thread through a
//! [`Mailbox`]: a std channel for the commands plus a socketpair whose read
//! end sits in the thread's `zmq::poll` set, so a command wakes the thread
//! at once without it ever spinning or sleeping.
//!
//! [`start`] spawns the thread, builds the actor *on* it (its sockets are
//! created there), hands back what the set-up produced (the bound
//! endpoints) or its error before returning, and gives a `done` signal that
//! fires when the thread has finished (its sockets closed and flushed).
//! [`run`] is the loop every actor shares: poll its sockets and the mailbox
//! (its slots named by a [`PollSlot`] enum, not indices), hand the commands
//! over, then let the actor do what the wake-up brought.
//!
//! [`start_on_runtime`] runs the same actor as a task on the caller's tokio
//! runtime instead (the publisher, when asked): its sockets' `ZMQ_FD`s sit
//! on the runtime's reactor ([`gilmsg_zmq_readiness`]), a command wakes the
//! task directly (no socketpair), and [`run_on_runtime`] reads `ZMQ_EVENTS`
//! before every wait. Each turn is the same [`turn`] as on a thread; only
//! the waiting differs. What that saves, on a current-thread runtime: the
//! two thread hand-offs of an acknowledged publish (docs/benchmarks.md).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use gilmsg_zmq_readiness::{any_readable, Readiness};
use tokio::sync::oneshot;

use super::socket::poll_timeout;
use crate::error::{Error, Result};
use crate::health::{Health, Pulse, PULSE_EVERY};
use crate::transport::Flow;

/// A named place in an actor's poll set (an enum of its sockets).
pub(crate) trait PollSlot: Copy {
    /// A distinct number below 32 for each slot.
    fn bit(self) -> u32;
}

/// The sockets one wake-up found readable, by slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    slots: u32,
    inbox: bool,
}

impl Ready {
    /// Whether `slot` is readable.
    pub(crate) fn has<S: PollSlot>(&self, slot: S) -> bool {
        self.slots & (1 << slot.bit()) != 0
    }
}

/// An actor's poll set being built: its sockets, each under its slot.
pub(crate) struct PollSet<'a, S> {
    sockets: Vec<(&'a zmq::Socket, S)>,
}

impl<'a, S: PollSlot> PollSet<'a, S> {
    /// `actor`'s sockets.
    fn of<A: Actor<Slot = S>>(actor: &'a A) -> Self {
        let mut set = PollSet {
            sockets: Vec::new(),
        };
        actor.poll_items(&mut set);
        set
    }

    /// Polls `socket` for input under `slot`.
    pub(crate) fn add(&mut self, slot: S, socket: &'a zmq::Socket) {
        self.sockets.push((socket, slot));
    }

    /// Waits up to `timeout` ms (-1: forever) for a socket or the `inbox`.
    fn poll<C>(self, inbox: &Inbox<C>, timeout: i64) -> zmq::Result<Ready> {
        let mut items = Vec::with_capacity(self.sockets.len() + 1);
        items.push(zmq::PollItem::from_fd(inbox.fd(), zmq::POLLIN));
        items.extend(
            self.sockets
                .iter()
                .map(|(s, _)| s.as_poll_item(zmq::POLLIN)),
        );
        zmq::poll(&mut items, timeout)?;
        let mut ready = Ready {
            slots: 0,
            inbox: items[0].is_readable(),
        };
        for (item, (_, slot)) in items[1..].iter().zip(&self.sockets) {
            if item.is_readable() {
                ready.slots |= 1 << slot.bit();
            }
        }
        Ok(ready)
    }

    /// What is readable now, without waiting: each socket's `ZMQ_EVENTS`
    /// (which also re-arms its edge-triggered `ZMQ_FD`), and whether a
    /// command is queued.
    fn ready_now<C>(&self, inbox: &Inbox<C>) -> zmq::Result<Ready> {
        let mut ready = Ready {
            slots: 0,
            inbox: inbox.pending(),
        };
        for (socket, slot) in &self.sockets {
            if socket.get_events()?.contains(zmq::POLLIN) {
                ready.slots |= 1 << slot.bit();
            }
        }
        Ok(ready)
    }

    /// Puts every socket's `ZMQ_FD` on the current runtime's reactor.
    fn readiness(&self) -> std::io::Result<Vec<Readiness>> {
        self.sockets
            .iter()
            .map(|(socket, _)| Readiness::of_socket(socket))
            .collect()
    }
}

/// What a socket thread does; [`run`] drives it.
pub(crate) trait Actor: Send + 'static {
    /// What handles send it.
    type Command: Send + 'static;
    /// Its poll slots.
    type Slot: PollSlot;
    /// Adds its sockets to the poll set: the same sockets every time (on a
    /// runtime they are put on the reactor once, at start).
    fn poll_items<'a>(&'a self, set: &mut PollSet<'a, Self::Slot>);
    /// When it next needs to run without any socket being readable.
    fn next_deadline(&mut self, now: Instant) -> Option<Instant>;
    /// One command from a handle.
    fn on_command(&mut self, command: Self::Command) -> Flow;
    /// After every wake-up (readable sockets, commands handled, or a
    /// deadline): do what is due.
    fn on_wakeup(&mut self, ready: Ready, now: Instant);
    /// Whether the last wake-up stopped at a bound with work left (on a
    /// runtime the loop then yields its worker before going on).
    fn backlogged(&self) -> bool {
        false
    }
    /// Once, after the loop ends.
    fn on_stop(&mut self) {}
}

/// The loop every socket thread runs, until a command says stop or every
/// handle is gone.
fn run<A: Actor>(mut actor: A, mut inbox: Inbox<A::Command>, name: &str, pulse: &Pulse) {
    let mut commands = Vec::new();
    let pulse_ms = i64::try_from(PULSE_EVERY.as_millis()).unwrap_or(i64::MAX);
    loop {
        pulse.beat();
        let now = Instant::now();
        let timeout = match poll_timeout(actor.next_deadline(now), now) {
            t if t < 0 || t > pulse_ms => pulse_ms,
            t => t,
        };
        let ready = match PollSet::of(&actor).poll(&inbox, timeout) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("{name} poll failed: {e}");
                break;
            }
        };
        if turn(&mut actor, &mut inbox, ready, &mut commands) == Flow::Stop {
            break;
        }
    }
    actor.on_stop();
}

/// One turn of an actor, however it waited: the queued commands (if the
/// inbox was ready), then what the wake-up brought.
fn turn<A: Actor>(
    actor: &mut A,
    inbox: &mut Inbox<A::Command>,
    ready: Ready,
    commands: &mut Vec<A::Command>,
) -> Flow {
    if ready.inbox {
        let mut flow = match inbox.drain(commands) {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Stop,
        };
        for command in commands.drain(..) {
            if actor.on_command(command) == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        if flow == Flow::Stop {
            return Flow::Stop;
        }
    }
    actor.on_wakeup(ready, Instant::now());
    Flow::Continue
}

/// [`run`] as a task: the same turns, waiting on the runtime's reactor
/// (`watched`: every socket's `ZMQ_FD`), a command, or the next deadline
/// instead of in `zmq_poll`.
///
/// libzmq's `ZMQ_FD` is edge-triggered and says only that something *may*
/// have changed, so every wait is preceded by reading `ZMQ_EVENTS` of every
/// socket (after the previous turn's sends and receives), and a signal
/// only sends the loop back to read them again. After a turn that stopped
/// at its bound with work left ([`Actor::backlogged`]: a flood of ACKs) the
/// task yields its worker; after any other it spends the runtime's
/// cooperative budget.
async fn run_on_runtime<A: Actor>(
    mut actor: A,
    mut inbox: Inbox<A::Command>,
    watched: Vec<Readiness>,
    name: String,
    pulse: Pulse,
    longest_wait: Duration,
) -> A {
    let mut queued = Vec::new();
    let commands = inbox.waker();
    loop {
        pulse.beat();
        let ready = match PollSet::of(&actor).ready_now(&inbox) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("{name} cannot read its sockets' events: {e}");
                break;
            }
        };
        let ready = if ready.slots == 0 && !ready.inbox {
            let now = Instant::now();
            let wake_by = actor
                .next_deadline(now)
                .map_or(now + longest_wait, |d| d.min(now + longest_wait));
            tokio::select! {
                signalled = any_readable(&watched) => {
                    if let Err(e) = signalled {
                        tracing::error!("{name} cannot wait on its sockets: {e}");
                        break;
                    }
                    // Read the events again: a signal is not an event.
                    continue;
                }
                () = commands.commands_queued() => continue,
                () = tokio::time::sleep_until(wake_by.into()) => ready,
            }
        } else {
            ready
        };
        if turn(&mut actor, &mut inbox, ready, &mut queued) == Flow::Stop {
            break;
        }
        if actor.backlogged() {
            tokio::task::yield_now().await;
        } else {
            tokio::task::coop::consume_budget().await;
        }
    }
    actor.on_stop();
    drop(watched);
    actor
}

/// A socket thread that has started: where to send it commands, what its
/// set-up produced, and a signal that fires when it has finished.
pub(crate) struct Started<C, B> {
    pub(crate) mailbox: Mailbox<C>,
    pub(crate) bound: B,
    pub(crate) done: oneshot::Receiver<()>,
    /// Whether the thread is turning.
    pub(crate) health: Health,
}

/// Spawns the thread `name` (`gilmsg-<what>`), builds the actor on it with
/// `build` (given a mailbox of its own, for actors that hand it out), and
/// returns once `build` has succeeded or failed.
pub(crate) fn start<A, B, F>(what: &str, build: F) -> Result<Started<A::Command, B>>
where
    A: Actor,
    B: Send + 'static,
    F: FnOnce(Mailbox<A::Command>) -> Result<(A, B)> + Send + 'static,
{
    let (mailbox, inbox) = mailbox(Wake::Socketpair)?;
    let own = mailbox.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done) = oneshot::channel();
    let name = format!("gilmsg-{what}");
    let thread_name = name.clone();
    let (pulse, health) = Health::new();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Moved in: dropped when the thread ends, even by unwinding.
            let pulse = pulse;
            match build(own) {
                Ok((actor, bound)) => {
                    let _ = ready_tx.send(Ok(bound));
                    run(actor, inbox, &thread_name, &pulse);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            // Ended before `done` says so: whoever waited for `done` sees it.
            drop(pulse);
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::os(format!("cannot start {what} thread"), e))?;
    let bound = ready_rx.recv().map_err(|_| Error::Closed)??;
    Ok(Started {
        mailbox,
        bound,
        done,
        health,
    })
}

/// [`start`], the actor running as a task on the runtime `on` instead of
/// on a thread of its own. The actor is built here, on the caller's thread
/// (libzmq lets a socket move to another thread between uses; the spawn is
/// the memory barrier it asks for), and its sockets are put on `on`'s
/// reactor before this returns, so a failure to do so is this call's error.
/// The task runs only while `on` runs (on a current-thread runtime: while
/// its owner drives it); its health pulse says so.
pub(crate) fn start_on_runtime<A, B, F>(
    what: &str,
    on: &tokio::runtime::Handle,
    build: F,
) -> Result<Started<A::Command, B>>
where
    A: Actor,
    F: FnOnce(Mailbox<A::Command>) -> Result<(A, B)>,
{
    start_on_runtime_waiting(what, on, build, PULSE_EVERY)
}

/// [`start_on_runtime`], the loop waking by itself at least every
/// `longest_wait` (the health pulse's period; the tests make it long, so
/// that only a signal can wake the loop).
fn start_on_runtime_waiting<A, B, F>(
    what: &str,
    on: &tokio::runtime::Handle,
    build: F,
    longest_wait: Duration,
) -> Result<Started<A::Command, B>>
where
    A: Actor,
    F: FnOnce(Mailbox<A::Command>) -> Result<(A, B)>,
{
    let (mailbox, inbox) = mailbox(Wake::Task)?;
    // Can `on` run the loop? Asked before any socket is bound. tokio
    // panics, rather than failing, in a runtime without the I/O driver or
    // the timer, and offers no way to ask first: `Readiness::of_fd` and
    // this probe catch the panic (its message still reaches the panic hook,
    // and a `panic = "abort"` build would abort).
    {
        let _inside = on.enter();
        Readiness::of_fd(std::os::fd::AsFd::as_fd(&inbox.reader))
            .map_err(|e| Error::os(format!("the {what} cannot run on this runtime"), e))?;
        if std::panic::catch_unwind(|| tokio::time::sleep(Duration::ZERO)).is_err() {
            return Err(Error::InvalidArgument(format!(
                "the {what} cannot run on a tokio runtime without a timer (build it with `enable_all`)"
            )));
        }
    }
    let (actor, bound) = build(mailbox.clone())?;
    let watched = {
        let _inside = on.enter();
        PollSet::of(&actor)
            .readiness()
            .map_err(|e| Error::os(format!("cannot watch the {what} sockets"), e))?
    };
    let (done_tx, done) = oneshot::channel();
    let name = format!("gilmsg-{what}");
    let (pulse, health) = Health::new();
    on.spawn(async move {
        let actor = run_on_runtime(actor, inbox, watched, name, pulse, longest_wait).await;
        // Closing the sockets' context waits up to `linger` for queued
        // messages to leave: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(actor)).await;
        let _ = done_tx.send(());
    });
    Ok(Started {
        mailbox,
        bound,
        done,
        health,
    })
}

/// The sending half of an actor's mailbox. Cloneable and thread-safe.
pub(crate) struct Mailbox<C> {
    commands: mpsc::Sender<C>,
    waker: Arc<Waker>,
}

impl<C> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Mailbox {
            commands: self.commands.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<C> Mailbox<C> {
    /// Queues a command and wakes the actor. Fails once the actor is gone.
    pub(crate) fn send(&self, command: C) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::Closed)?;
        self.waker.wake();
        Ok(())
    }
}

/// How a command wakes the actor.
#[derive(Clone, Copy)]
enum Wake {
    /// A byte on the socketpair in its thread's poll set.
    Socketpair,
    /// Its task's waker: the runtime schedules it directly (from one of its
    /// own workers: on that worker, with no other thread involved).
    Task,
}

struct Waker {
    writer: UnixStream,
    pending: AtomicBool,
    /// The actor's task, when it runs as one.
    task: Option<AtomicWaker>,
}

impl Waker {
    /// Resolves once a command is queued (at once if one is); never for a
    /// mailbox woken by its socketpair. Registering before looking at
    /// `pending` is what makes a sender's wake-up impossible to miss: it
    /// sets `pending` and then wakes whatever was registered.
    async fn commands_queued(&self) {
        let Some(task) = &self.task else {
            return std::future::pending().await;
        };
        std::future::poll_fn(|cx| {
            task.register(cx.waker());
            if self.pending.load(Ordering::SeqCst) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    fn wake(&self) {
        // One wake-up per burst of commands (see `Inbox::drain` for why
        // this cannot lose one).
        if !self.pending.swap(true, Ordering::SeqCst) {
            match &self.task {
                Some(task) => task.wake(),
                None => {
                    let _ = (&self.writer).write(&[1]);
                }
            }
        }
    }
}

/// The actor's half of the mailbox.
struct Inbox<C> {
    commands: mpsc::Receiver<C>,
    reader: UnixStream,
    waker: Arc<Waker>,
}

impl<C> Inbox<C> {
    /// The fd to put in the poll set.
    fn fd(&self) -> std::os::fd::RawFd {
        self.reader.as_raw_fd()
    }

    /// Whether a sender has queued a command since the last drain (its
    /// wake-up byte may still be on its way).
    fn pending(&self) -> bool {
        self.waker.pending.load(Ordering::SeqCst)
    }

    /// What a command's wake-up sets and wakes (shareable across threads,
    /// unlike the inbox, whose channel end is not).
    fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Takes every queued command. Returns `Err` when every sender is gone.
    fn drain(&mut self, into: &mut Vec<C>) -> std::result::Result<(), ()> {
        // Order matters: empty the pipe, *then* clear `pending`, then read the
        // channel. A sender that saw `pending` set has queued its command
        // before we clear it, so the channel read below finds it; a sender
        // that finds it clear writes a fresh byte that this drain has not
        // consumed, so the next poll wakes us. (Clearing first lost wake-ups:
        // the byte of a sender racing the clear was swallowed here while
        // `pending` stayed set, and later commands never woke the actor.)
        let mut sink = [0u8; 64];
        while self.waker.task.is_none() {
            match (&self.reader).read(&mut sink) {
                Ok(n) if n == sink.len() => {}
                _ => break,
            }
        }
        self.waker.pending.store(false, Ordering::SeqCst);
        loop {
            match self.commands.try_recv() {
                Ok(c) => into.push(c),
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(()),
            }
        }
    }
}

/// A connected mailbox pair, woken as `wake` says.
fn mailbox<C>(wake: Wake) -> Result<(Mailbox<C>, Inbox<C>)> {
    let (reader, writer) =
        UnixStream::pair().map_err(|e| Error::os("cannot create wake-up socketpair", e))?;
    reader
        .set_nonblocking(true)
        .and_then(|()| writer.set_nonblocking(true))
        .map_err(|e| Error::os("cannot configure wake-up socketpair", e))?;
    let (tx, rx) = mpsc::channel();
    let waker = Arc::new(Waker {
        writer,
        pending: AtomicBool::new(false),
        task: match wake {
            Wake::Socketpair => None,
            Wake::Task => Some(AtomicWaker::new()),
        },
    });
    Ok((
        Mailbox {
            commands: tx,
            waker: waker.clone(),
        },
        Inbox {
            commands: rx,
            reader,
            waker,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_wakes_and_drains() {
        let (tx, mut rx) = mailbox::<u32>(Wake::Socketpair).unwrap();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let mut items = [zmq::PollItem::from_fd(rx.fd(), zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 1000).unwrap(), 1);
        let mut got = Vec::new();
        rx.drain(&mut got).unwrap();
        assert_eq!(got, vec![1, 2]);
        let mut items = [zmq::PollItem::from_fd(rx.fd(), zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0);
        drop(tx);
        assert!(rx.drain(&mut got).is_err());
    }

    #[test]
    fn a_task_mailbox_wakes_its_task_without_the_socketpair() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mailbox::<u32>(Wake::Task).unwrap();
        let queued = |rx: &Inbox<u32>| {
            let waker = rx.waker();
            runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), waker.commands_queued())
                    .await
                    .expect("woken within 5 s");
            });
        };
        for round in 0..50u32 {
            let sender = tx.clone();
            // Sent from another thread while the task waits (even rounds)
            // or before it starts waiting (odd ones).
            let sending = std::thread::spawn(move || sender.send(round).unwrap());
            if round % 2 == 1 {
                sending.join().unwrap();
                queued(&rx);
            } else {
                queued(&rx);
                sending.join().unwrap();
            }
            let mut got = Vec::new();
            rx.drain(&mut got).unwrap();
            assert_eq!(got, vec![round]);
        }
        // No byte went through the socketpair.
        let mut items = [zmq::PollItem::from_fd(rx.fd(), zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 0).unwrap(), 0);
    }

    #[derive(Clone, Copy)]
    enum Slot {
        Pair,
    }

    impl PollSlot for Slot {
        fn bit(self) -> u32 {
            self as u32
        }
    }

    /// Reports what reaches it and stops on command 0.
    struct Echo {
        pair: zmq::Socket,
        _peer: zmq::Socket,
        seen: std::sync::mpsc::Sender<String>,
    }

    impl Actor for Echo {
        type Command = u32;
        type Slot = Slot;
        fn poll_items<'a>(&'a self, set: &mut PollSet<'a, Slot>) {
            set.add(Slot::Pair, &self.pair);
        }
        fn next_deadline(&mut self, _: Instant) -> Option<Instant> {
            None
        }
        fn on_command(&mut self, command: u32) -> Flow {
            let _ = self.seen.send(format!("command {command}"));
            if command == 0 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }
        fn on_wakeup(&mut self, ready: Ready, _: Instant) {
            if ready.has(Slot::Pair) {
                while let Ok(bytes) = self.pair.recv_bytes(zmq::DONTWAIT) {
                    let _ = self.seen.send(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
        fn on_stop(&mut self) {
            let _ = self.seen.send("stopped".into());
        }
    }

    #[test]
    fn an_actor_starts_on_its_thread_reads_its_slots_and_stops() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let address = format!("inproc://actor-test-{}", std::process::id());
        let started = start("test", move |_own| {
            let context = zmq::Context::new();
            let pair = context
                .socket(zmq::PAIR)
                .map_err(|e| Error::socket("pair", e))?;
            pair.bind(&address).map_err(|e| Error::socket("bind", e))?;
            let peer = context
                .socket(zmq::PAIR)
                .map_err(|e| Error::socket("pair", e))?;
            peer.connect(&address)
                .map_err(|e| Error::socket("connect", e))?;
            peer.send("hello", 0)
                .map_err(|e| Error::socket("send", e))?;
            let echo = Echo {
                pair,
                _peer: peer,
                seen: seen_tx,
            };
            Ok((echo, "bound"))
        })
        .unwrap();
        assert_eq!(started.bound, "bound");
        let wait = std::time::Duration::from_secs(5);
        assert_eq!(seen.recv_timeout(wait).unwrap(), "hello");
        started.mailbox.send(7).unwrap();
        assert_eq!(seen.recv_timeout(wait).unwrap(), "command 7");
        started.mailbox.send(0).unwrap();
        assert_eq!(seen.recv_timeout(wait).unwrap(), "command 0");
        assert_eq!(seen.recv_timeout(wait).unwrap(), "stopped");
        started.done.blocking_recv().expect("the thread finished");
        // A set-up that fails is reported, and nothing runs.
        let failed = start::<Echo, (), _>("test", |_| Err(Error::Closed));
        assert!(matches!(failed, Err(Error::Closed)));
    }

    #[test]
    fn on_a_runtime_an_actor_is_woken_by_its_socket_and_its_mailbox_not_by_a_timer() {
        // The loop's own wake-up is an hour away and the actor has no
        // deadline: only a signal can wake it within the 5 s each step
        // waits. (With the pulse's 500 ms, a lost wake-up would pass as
        // latency.)
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let context = zmq::Context::new();
        let address = format!("inproc://actor-runtime-test-{}", std::process::id());
        let pair = context.socket(zmq::PAIR).unwrap();
        pair.bind(&address).unwrap();
        let peer = context.socket(zmq::PAIR).unwrap();
        peer.connect(&address).unwrap();
        let unused = context.socket(zmq::PAIR).unwrap();
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let started = start_on_runtime_waiting(
            "test",
            runtime.handle(),
            move |_own| {
                let echo = Echo {
                    pair,
                    _peer: unused,
                    seen: seen_tx,
                };
                Ok((echo, "bound"))
            },
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(started.bound, "bound");
        let wait = Duration::from_secs(5);
        for round in 1..=20u32 {
            peer.send(format!("message {round}").as_bytes(), 0).unwrap();
            assert_eq!(
                seen.recv_timeout(wait).expect("woken by the socket"),
                format!("message {round}")
            );
            started.mailbox.send(round).unwrap();
            assert_eq!(
                seen.recv_timeout(wait).expect("woken by the mailbox"),
                format!("command {round}")
            );
        }
        started.mailbox.send(0).unwrap();
        assert_eq!(seen.recv_timeout(wait).unwrap(), "command 0");
        assert_eq!(seen.recv_timeout(wait).unwrap(), "stopped");
        runtime
            .block_on(async { tokio::time::timeout(wait, started.done).await })
            .expect("the task finished")
            .expect("done sent");
    }

    #[test]
    fn on_a_runtime_without_a_timer_nothing_is_built() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let failed = start_on_runtime::<Echo, (), _>("test", runtime.handle(), |_| {
            panic!("built although the runtime cannot run the loop")
        });
        assert!(
            matches!(&failed, Err(Error::InvalidArgument(why)) if why.contains("without a timer")),
            "{:?}",
            failed.err()
        );
    }
}
