//! ZeroMQ sockets: their options, and receiving and sending on them.
//!
//! [`SocketTuning`] gives every socket its options and its caps on what a
//! peer may make it hold; the bookkeeping of endpoints and peers (readiness,
//! re-connects, subscriptions) is in [`super::monitor`], the thread that
//! owns a socket in [`super::actor`].

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
    /// [`Monitor`](super::monitor::Monitor) sees that and re-connects, so one
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

/// Takes up to `limit` queued messages off `socket` into `burst` (cleared
/// first), without waiting, each as [`try_recv_bounded`] keeps it with three
/// frames: enough to count a message with too many without copying the
/// rest. Stops early when nothing more is queued, or at a receive error,
/// logged with `what` (the next wake-up tries again).
pub(crate) fn recv_burst(
    socket: &zmq::Socket,
    limit: usize,
    burst: &mut Vec<Vec<Vec<u8>>>,
    what: &str,
) {
    burst.clear();
    while burst.len() < limit {
        match try_recv_bounded(socket, 3) {
            Ok(Some(frames)) => burst.push(frames),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{what} receive failed: {e}");
                break;
            }
        }
    }
}

/// Sends a message's frames (`[topic, body]`). On a PUB/XPUB this never
/// blocks: with no matching subscriber or a full queue, libzmq drops the
/// message (that is what re-sends are for).
pub(crate) fn send_frames(socket: &zmq::Socket, frames: &[Vec<u8>]) -> Result<()> {
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.iter().enumerate() {
        let flags = if i < last {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        socket
            .send(&frame[..], flags)
            .map_err(|e| Error::socket("send", e))?;
    }
    Ok(())
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
