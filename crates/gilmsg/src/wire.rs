//! ZeroMQ plumbing shared by the socket-owning threads.
//!
//! libzmq sockets are not thread-safe, so every socket in this crate is
//! created, used and closed by exactly one thread (an "actor"). Other threads
//! and async tasks talk to an actor through a [`Mailbox`]: a std channel for
//! the commands plus a socketpair whose read end sits in the actor's
//! `zmq::poll` set, so a command wakes the actor at once without the actor
//! ever spinning or sleeping.
//!
//! Readiness comes from libzmq itself: [`Monitor`] reads the socket monitor's
//! handshake events (a SUB's subscriptions go out right after its handshake),
//! and [`Subscriptions`] tracks what peers subscribed to on an XPUB, so a
//! publisher knows a message will not be dropped for lack of a subscriber.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_config::Config;

use crate::error::{Error, Result};

/// Socket tuning that every socket gets, from the config's fedmsg keys.
#[derive(Debug, Clone)]
pub(crate) struct SocketTuning {
    pub high_water_mark: i32,
    pub linger: Duration,
    pub reconnect_ivl: Duration,
    pub reconnect_ivl_max: Duration,
    pub tcp_keepalive: bool,
    /// Hard cap on an incoming message, enforced by libzmq, for sockets that
    /// *bind* (see [`SocketTuning::cap_incoming`]). Set well above the soft
    /// `max_message_size` that receivers check and count themselves.
    pub hard_max_message: i64,
}

impl SocketTuning {
    pub(crate) fn from_config(config: &Config) -> Self {
        SocketTuning {
            high_water_mark: config.high_water_mark,
            linger: config.zmq_linger,
            reconnect_ivl: config.zmq_reconnect_ivl,
            reconnect_ivl_max: config.zmq_reconnect_ivl_max,
            tcp_keepalive: config.zmq_tcp_keepalive,
            hard_max_message: (config.max_message_size as i64)
                .saturating_mul(4)
                .max(1 << 16),
        }
    }

    /// A socket in `context` with these options. Each actor owns its own
    /// context, so dropping it at shutdown waits (up to `linger`) for queued
    /// messages to leave: a one-shot logger must not exit with its message
    /// still in a queue.
    pub(crate) fn socket(
        &self,
        context: &zmq::Context,
        kind: zmq::SocketType,
        what: &str,
    ) -> Result<zmq::Socket> {
        let socket = context
            .socket(kind)
            .map_err(|e| Error::socket(format!("create {what} socket"), e))?;
        let apply = |r: zmq::Result<()>, opt: &str| {
            r.map_err(|e| Error::socket(format!("set {opt} on {what} socket"), e))
        };
        apply(socket.set_sndhwm(self.high_water_mark), "sndhwm")?;
        apply(socket.set_rcvhwm(self.high_water_mark), "rcvhwm")?;
        apply(socket.set_linger(ms(self.linger)), "linger")?;
        apply(
            socket.set_reconnect_ivl(ms(self.reconnect_ivl)),
            "reconnect_ivl",
        )?;
        apply(
            socket.set_reconnect_ivl_max(ms(self.reconnect_ivl_max)),
            "reconnect_ivl_max",
        )?;
        if self.tcp_keepalive {
            apply(socket.set_tcp_keepalive(1), "tcp_keepalive")?;
        }
        Ok(socket)
    }
}

impl SocketTuning {
    /// Caps incoming messages at `hard_max_message` on a socket that binds.
    ///
    /// libzmq treats an oversize message as a protocol error and closes the
    /// connection. On the *accepting* side that is what we want: the sender
    /// is cut off and, being the connecting side, reconnects. On a socket
    /// that *connects* it would be a disaster: libzmq does not reconnect
    /// after a protocol error, so one oversize message relayed by an honest
    /// relay would cut a consumer off the bus for good. Connecting sockets
    /// therefore get no cap; they rely on the soft `max_message_size` check,
    /// and the relay, which binds, keeps oversize messages off the bus.
    pub(crate) fn cap_incoming(&self, socket: &zmq::Socket, what: &str) -> Result<()> {
        socket
            .set_maxmsgsize(self.hard_max_message)
            .map_err(|e| Error::socket(format!("set maxmsgsize on {what} socket"), e))
    }
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// Binds `socket` to each endpoint and returns the endpoints actually bound
/// (a `tcp://127.0.0.1:*` wildcard comes back with its port).
pub(crate) fn bind_all(
    socket: &zmq::Socket,
    endpoints: &[String],
    what: &str,
) -> Result<Vec<String>> {
    let mut bound = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        socket
            .bind(endpoint)
            .map_err(|e| Error::socket(format!("bind {what} to {endpoint}"), e))?;
        let last = socket
            .get_last_endpoint()
            .map_err(|e| Error::socket(format!("read bound endpoint of {what}"), e))?
            .unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned());
        bound.push(last);
    }
    Ok(bound)
}

/// Connects `socket` to each endpoint.
pub(crate) fn connect_all(socket: &zmq::Socket, endpoints: &[String], what: &str) -> Result<()> {
    for endpoint in endpoints {
        socket
            .connect(endpoint)
            .map_err(|e| Error::socket(format!("connect {what} to {endpoint}"), e))?;
    }
    Ok(())
}

/// Receives the rest of a multipart message, or `None` if nothing is queued.
pub(crate) fn try_recv_multipart(socket: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(frames) => Ok(Some(frames)),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(Error::socket("receive", e)),
    }
}

/// Sends `[topic, body]`. On a PUB/XPUB this never blocks: with no matching
/// subscriber or a full queue, libzmq drops the message (that is what
/// re-sends are for).
pub(crate) fn send_frames(socket: &zmq::Socket, frames: &[Vec<u8>; 2]) -> Result<()> {
    socket
        .send(&frames[0][..], zmq::SNDMORE | zmq::DONTWAIT)
        .and_then(|()| socket.send(&frames[1][..], zmq::DONTWAIT))
        .map_err(|e| Error::socket("send", e))
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

struct Waker {
    writer: UnixStream,
    pending: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        // One byte per burst of commands (see `Inbox::drain` for why this
        // cannot lose a wake-up).
        if !self.pending.swap(true, Ordering::SeqCst) {
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// The actor's half of the mailbox.
pub(crate) struct Inbox<C> {
    commands: mpsc::Receiver<C>,
    reader: UnixStream,
    waker: Arc<Waker>,
}

impl<C> Inbox<C> {
    /// The fd to put in the poll set.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.reader.as_raw_fd()
    }

    /// Takes every queued command. Returns `Err` when every sender is gone.
    pub(crate) fn drain(&mut self, into: &mut Vec<C>) -> std::result::Result<(), ()> {
        // Order matters: empty the pipe, *then* clear `pending`, then read the
        // channel. A sender that saw `pending` set has queued its command
        // before we clear it, so the channel read below finds it; a sender
        // that finds it clear writes a fresh byte that this drain has not
        // consumed, so the next poll wakes us. (Clearing first lost wake-ups:
        // the byte of a sender racing the clear was swallowed here while
        // `pending` stayed set, and later commands never woke the actor.)
        let mut sink = [0u8; 64];
        while let Ok(n) = (&self.reader).read(&mut sink) {
            if n < sink.len() {
                break;
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

/// A connected mailbox pair.
pub(crate) fn mailbox<C>() -> Result<(Mailbox<C>, Inbox<C>)> {
    let (reader, writer) = UnixStream::pair()
        .map_err(|e| Error::InvalidArgument(format!("cannot create wake-up socketpair: {e}")))?;
    reader
        .set_nonblocking(true)
        .and_then(|()| writer.set_nonblocking(true))
        .map_err(|e| Error::InvalidArgument(format!("cannot configure wake-up socketpair: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let waker = Arc::new(Waker {
        writer,
        pending: AtomicBool::new(false),
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

/// Handshake tracking for one socket through libzmq's socket monitor.
pub(crate) struct Monitor {
    socket: zmq::Socket,
    connected: BTreeSet<String>,
    /// How many endpoints the monitored socket connects to.
    pub expected: usize,
}

impl Monitor {
    /// Starts monitoring `socket`; call before connecting it.
    pub(crate) fn attach(context: &zmq::Context, socket: &zmq::Socket, what: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let address = format!(
            "inproc://gilmsg-monitor-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let events =
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        socket
            .monitor(&address, events)
            .map_err(|e| Error::socket(format!("monitor {what} socket"), e))?;
        let reader = context
            .socket(zmq::PAIR)
            .map_err(|e| Error::socket("create monitor socket", e))?;
        reader
            .connect(&address)
            .map_err(|e| Error::socket(format!("connect monitor of {what}"), e))?;
        Ok(Monitor {
            socket: reader,
            connected: BTreeSet::new(),
            expected: 0,
        })
    }

    pub(crate) fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// Applies every queued event; returns whether anything changed.
    pub(crate) fn process(&mut self) -> bool {
        let mut changed = false;
        while let Ok(Some(frames)) = try_recv_multipart(&self.socket) {
            if frames.len() != 2 || frames[0].len() < 6 {
                continue;
            }
            let event = u16::from_le_bytes([frames[0][0], frames[0][1]]);
            let endpoint = String::from_utf8_lossy(&frames[1]).into_owned();
            if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                changed |= self.connected.insert(endpoint);
            } else if event == zmq::SocketEvent::DISCONNECTED as u16 {
                changed |= self.connected.remove(&endpoint);
            }
        }
        changed
    }

    /// Endpoints with a completed handshake now.
    pub(crate) fn connected(&self) -> usize {
        self.connected.len()
    }
}

/// What peers of an XPUB have subscribed to (prefixes, as ZeroMQ matches).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    prefixes: HashMap<Vec<u8>, usize>,
}

impl Subscriptions {
    /// Applies one subscription message (`\x01prefix` or `\x00prefix`).
    pub(crate) fn apply(&mut self, message: &[u8]) {
        match message.split_first() {
            Some((1, prefix)) => *self.prefixes.entry(prefix.to_vec()).or_default() += 1,
            Some((0, prefix)) => {
                if let Some(count) = self.prefixes.get_mut(prefix) {
                    *count -= 1;
                    if *count == 0 {
                        self.prefixes.remove(prefix);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether some peer would receive a message on `topic`.
    pub(crate) fn matches(&self, topic: &[u8]) -> bool {
        self.prefixes.keys().any(|p| topic.starts_with(p))
    }

    /// Whether any peer subscribed to anything.
    pub(crate) fn any(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// Reads every queued subscription message from an XPUB.
    pub(crate) fn drain_from(&mut self, xpub: &zmq::Socket) -> bool {
        let mut changed = false;
        while let Ok(Some(frames)) = try_recv_multipart(xpub) {
            if let Some(first) = frames.first() {
                self.apply(first);
                changed = true;
            }
        }
        changed
    }
}

/// Milliseconds until `deadline` for `zmq::poll`, rounded up so the actor
/// never wakes a hair early and spins; -1 (forever) without a deadline.
pub(crate) fn poll_timeout(deadline: Option<Instant>, now: Instant) -> i64 {
    match deadline {
        None => -1,
        Some(d) if d <= now => 0,
        Some(d) => {
            let micros = (d - now).as_micros();
            micros.div_ceil(1000).min(i64::MAX as u128) as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_track_prefixes() {
        let mut s = Subscriptions::default();
        assert!(!s.matches(b"a.b"));
        s.apply(b"\x01a.");
        s.apply(b"\x01a.");
        assert!(s.matches(b"a.b") && !s.matches(b"b"));
        s.apply(b"\x00a.");
        assert!(s.matches(b"a.b"));
        s.apply(b"\x00a.");
        assert!(!s.any());
        s.apply(b"\x01");
        assert!(s.matches(b"anything"));
    }

    #[test]
    fn mailbox_wakes_and_drains() {
        let (tx, mut rx) = mailbox::<u32>().unwrap();
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
    fn poll_timeout_rounds_up() {
        let now = Instant::now();
        assert_eq!(poll_timeout(None, now), -1);
        assert_eq!(poll_timeout(Some(now), now), 0);
        assert_eq!(
            poll_timeout(Some(now + Duration::from_micros(1500)), now),
            2
        );
    }
}
