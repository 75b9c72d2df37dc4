//! The bridge's ZeroMQ sockets, each owned by a thread of its own: the SUB
//! that reads the bus for the ZeroMQ -> AMQP direction, and the XPUB the
//! AMQP -> ZeroMQ direction sends on. They only move frames; the rules are
//! in the AMQP tasks (`amqp_side.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

use super::Settings;
use crate::error::{Error, Result};
use crate::health::{Health, Pulse};
use crate::stats::BridgeCounters;

/// How often an idle socket thread turns (beats, checks for a stop).
const TURN: Duration = Duration::from_millis(100);

/// A started socket thread.
pub(crate) struct Started {
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) health: Health,
    /// The endpoints bound (the XPUB).
    pub(crate) bound: Vec<String>,
}

/// One message for the XPUB: the frames and the delivery to acknowledge
/// once sent.
pub(crate) struct Outgoing {
    pub(crate) frames: [Vec<u8>; 2],
    pub(crate) delivery: Delivered,
}

/// An AMQP delivery, on the connection it came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivered {
    pub(crate) generation: u64,
    pub(crate) tag: u64,
}

fn spawn(
    name: &str,
    body: impl FnOnce(Pulse) + Send + 'static,
) -> Result<(std::thread::JoinHandle<()>, Health)> {
    let (pulse, health) = Health::new();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(pulse))
        .map_err(|e| Error::os(format!("cannot start the thread {name}"), e))?;
    Ok((thread, health))
}

/// Subscribes to `endpoints` (`topics`, or everything) and hands each
/// message's frames to the AMQP publisher through `frames` (bounded: when
/// it is full, the message is dropped and counted).
pub(crate) fn start_in(
    settings: &Settings,
    endpoints: &[String],
    topics: &[String],
    frames: tokio::sync::mpsc::Sender<Vec<Vec<u8>>>,
    counters: Arc<BridgeCounters>,
    stop: Arc<AtomicBool>,
) -> Result<Started> {
    let context = zmq::Context::new();
    let sub = context
        .socket(zmq::SUB)
        .map_err(|e| Error::socket("create the bridge's SUB socket", e))?;
    sub.set_rcvhwm(settings.high_water_mark)
        .map_err(|e| Error::socket("set rcvhwm", e))?;
    // Larger messages would be refused by every consumer anyway.
    sub.set_maxmsgsize(i64::try_from(settings.max_message.saturating_mul(2)).unwrap_or(i64::MAX))
        .map_err(|e| Error::socket("set maxmsgsize", e))?;
    for endpoint in endpoints {
        sub.connect(endpoint)
            .map_err(|e| Error::socket(format!("connect to {endpoint}"), e))?;
    }
    if topics.is_empty() {
        sub.set_subscribe(b"")
            .map_err(|e| Error::socket("subscribe", e))?;
    }
    for topic in topics {
        sub.set_subscribe(topic.as_bytes())
            .map_err(|e| Error::socket("subscribe", e))?;
    }
    let (thread, health) = spawn("gilmsg-bridge-zmq-in", move |pulse| {
        let _context = context;
        while !stop.load(Ordering::Acquire) {
            pulse.beat();
            match sub.poll(zmq::POLLIN, TURN.as_millis() as i64) {
                Ok(n) if n > 0 => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!("the bridge's SUB socket failed: {e}");
                    return;
                }
            }
            // A burst at a time, then beat again.
            for _ in 0..1024 {
                let Ok(message) = sub.recv_multipart(zmq::DONTWAIT) else {
                    break;
                };
                counters.zmq_received.bump();
                match frames.try_send(message) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        counters.zmq_dropped.bump("backlog");
                        tracing::debug!("backlog full: a ZeroMQ message dropped");
                    }
                    Err(TrySendError::Closed(_)) => return,
                }
            }
        }
    })?;
    Ok(Started {
        thread,
        health,
        bound: Vec::new(),
    })
}

/// Binds an XPUB on `endpoints` and sends what `outgoing` brings, telling
/// `sent` after each send; counts the subscriptions it sees in
/// `subscribed`.
pub(crate) fn start_out(
    settings: &Settings,
    endpoints: &[String],
    outgoing: Receiver<Outgoing>,
    sent: tokio::sync::mpsc::UnboundedSender<Delivered>,
    subscribed: Arc<tokio::sync::watch::Sender<u64>>,
    counters: Arc<BridgeCounters>,
    stop: Arc<AtomicBool>,
) -> Result<Started> {
    let context = zmq::Context::new();
    let xpub = context
        .socket(zmq::XPUB)
        .map_err(|e| Error::socket("create the bridge's XPUB socket", e))?;
    // Every subscription is seen at once (see the relay).
    xpub.set_xpub_verbose(true)
        .map_err(|e| Error::socket("set xpub_verbose", e))?;
    xpub.set_sndhwm(settings.high_water_mark)
        .map_err(|e| Error::socket("set sndhwm", e))?;
    xpub.set_linger(1000)
        .map_err(|e| Error::socket("set linger", e))?;
    let mut bound = Vec::new();
    for endpoint in endpoints {
        xpub.bind(endpoint)
            .map_err(|e| Error::socket(format!("bind {endpoint}"), e))?;
        let actual = xpub
            .get_last_endpoint()
            .map_err(|e| Error::socket("read the bound endpoint", e))?
            .unwrap_or_else(|_| endpoint.clone());
        bound.push(actual);
    }
    let (thread, health) = spawn("gilmsg-bridge-zmq-out", move |pulse| {
        let _context = context;
        let mut subscriptions = 0u64;
        while !stop.load(Ordering::Acquire) {
            pulse.beat();
            // Subscriptions first: a subscriber seen is one that gets what
            // follows.
            while let Ok(frame) = xpub.recv_bytes(zmq::DONTWAIT) {
                if frame.first() == Some(&1) {
                    subscriptions += 1;
                    counters.zmq_subscriptions.set(subscriptions);
                    subscribed.send_replace(subscriptions);
                }
            }
            let first = match outgoing.recv_timeout(TURN) {
                Ok(o) => o,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut next = Some(first);
            while let Some(out) = next.take() {
                if let Err(e) = xpub.send_multipart(out.frames, 0) {
                    tracing::error!("the bridge's XPUB socket failed: {e}");
                    return;
                }
                counters.amqp_sent.bump();
                if sent.send(out.delivery).is_err() {
                    return;
                }
                next = outgoing.try_recv().ok();
            }
        }
    })?;
    Ok(Started {
        thread,
        health,
        bound,
    })
}
