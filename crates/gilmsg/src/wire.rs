//! ZeroMQ plumbing shared by the socket-owning threads.
//!
//! libzmq sockets are not thread-safe, so every socket in this crate is
//! created, used and closed by exactly one thread (an "actor"). Other threads
//! and async tasks talk to an actor through a [`Mailbox`]: a std channel for
//! the commands plus a socketpair whose read end sits in the actor's
//! `zmq::poll` set, so a command wakes the actor at once without the actor
//! ever spinning or sleeping.
//!
//! [`SocketTuning`] gives every socket its options and its caps on what a
//! peer may make it hold; the bookkeeping of endpoints and peers (readiness,
//! re-connects, subscriptions) is in [`crate::monitor`].

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilmsg_config::Config;

use crate::error::{Error, Result};

/// Socket tuning that every socket gets, from the config's fedmsg keys, and
/// the caps on what peers may send.
#[derive(Debug, Clone)]
pub(crate) struct SocketTuning {
    pub high_water_mark: i32,
    pub linger: Duration,
    pub reconnect_ivl: Duration,
    pub reconnect_ivl_max: Duration,
    pub tcp_keepalive: bool,
    /// Hard cap on one incoming frame of a message, enforced by libzmq
    /// (`ZMQ_MAXMSGSIZE`) on every socket that receives messages. Set well
    /// above the soft `max_message_size` that receivers check and count
    /// themselves, so that a body slightly over the soft limit is counted
    /// rather than cutting its sender off. The relay also drops whole
    /// messages bigger than this.
    pub hard_max_message: i64,
    /// Distinct subscription prefixes allowed on one XPUB.
    pub max_subscriptions: usize,
    /// Longest subscription prefix a peer may send to an XPUB.
    pub max_subscription_length: usize,
}

/// The smallest frame cap an XPUB gets whatever `max_subscription_length`
/// says: libzmq decodes the handshake's READY command (socket type,
/// routing id of up to 255 bytes) under the same cap.
const MIN_XPUB_FRAME_CAP: i64 = 512;

/// What a ZMTP 3.1 SUBSCRIBE command adds to a prefix: flags, size and
/// the command name (`\x09SUBSCRIBE`), with room to spare.
const SUBSCRIBE_OVERHEAD: i64 = 16;

impl SocketTuning {
    pub(crate) fn from_config(config: &Config) -> Self {
        SocketTuning {
            high_water_mark: config.high_water_mark,
            linger: config.zmq_linger,
            reconnect_ivl: config.zmq_reconnect_ivl,
            reconnect_ivl_max: config.zmq_reconnect_ivl_max,
            tcp_keepalive: config.zmq_tcp_keepalive,
            // max_message_size is at most 1 GiB (the config rule); the
            // conversion saturates anyway, never wraps.
            hard_max_message: i64::try_from(config.max_message_size)
                .unwrap_or(i64::MAX)
                .saturating_mul(4)
                .max(1 << 16),
            max_subscriptions: config.max_subscriptions,
            max_subscription_length: config.max_subscription_length,
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

    /// A SUB whose incoming frames are capped at `hard_max_message`.
    ///
    /// libzmq cuts off a peer that sends a bigger frame, before allocating
    /// it. On a socket that connects, libzmq then never reconnects (a
    /// protocol error ends the session): the socket's
    /// [`Monitor`](crate::monitor::Monitor) sees that and re-connects, so one
    /// oversize message cannot cut a consumer off the bus for good.
    ///
    /// Linger is 0: a SUB only ever sends its subscriptions, and a
    /// subscription queued for a peer that never connected used to hold the
    /// process at exit for the whole `zmq_linger`.
    pub(crate) fn subscriber(&self, context: &zmq::Context, what: &str) -> Result<zmq::Socket> {
        let socket = self.socket(context, zmq::SUB, what)?;
        socket
            .set_maxmsgsize(self.hard_max_message)
            .map_err(|e| Error::socket(format!("set maxmsgsize on {what} socket"), e))?;
        socket
            .set_linger(0)
            .map_err(|e| Error::socket(format!("set linger on {what} socket"), e))?;
        Ok(socket)
    }

    /// An XPUB whose incoming frames (subscriptions; nothing else belongs
    /// there) are capped at `max_subscription_length` plus the command
    /// overhead, so a peer cannot make libzmq store long prefixes.
    pub(crate) fn publisher(&self, context: &zmq::Context, what: &str) -> Result<zmq::Socket> {
        let socket = self.socket(context, zmq::XPUB, what)?;
        socket
            .set_maxmsgsize(self.subscription_frame_cap())
            .map_err(|e| Error::socket(format!("set maxmsgsize on {what} socket"), e))?;
        Ok(socket)
    }

    fn subscription_frame_cap(&self) -> i64 {
        i64::try_from(self.max_subscription_length)
            .unwrap_or(i64::MAX)
            .saturating_add(SUBSCRIBE_OVERHEAD)
            .max(MIN_XPUB_FRAME_CAP)
    }
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// Receives the rest of a multipart message, or `None` if nothing is queued.
pub(crate) fn try_recv_multipart(socket: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(frames) => Ok(Some(frames)),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(Error::socket("receive", e)),
    }
}

/// Receives one message, keeping (copying) at most `keep` frames and
/// discarding the rest uncopied; `None` if nothing is queued. A gilmsg
/// message has two frames, so a caller keeps three to see (and count) that
/// there were too many, without copying hundreds of frames.
pub(crate) fn try_recv_bounded(socket: &zmq::Socket, keep: usize) -> Result<Option<Vec<Vec<u8>>>> {
    let mut message = zmq::Message::new();
    match socket.recv(&mut message, zmq::DONTWAIT) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(Error::socket("receive", e)),
    }
    let mut frames = Vec::with_capacity(keep.min(3));
    loop {
        if frames.len() < keep {
            frames.push(message.to_vec());
        }
        if !message.get_more() {
            return Ok(Some(frames));
        }
        // The rest of a multipart message is already queued: no wait.
        socket
            .recv(&mut message, 0)
            .map_err(|e| Error::socket("receive", e))?;
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
