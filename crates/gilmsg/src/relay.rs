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

use gilmsg_config::Config;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::stats::{Counters, Stats};
use crate::wire::{self, Inbox, Mailbox, SocketTuning, Subscriptions};

/// The key in `endpoints` where the relay publishes, as in fedmsg.
pub const RELAY_OUTBOUND: &str = "relay_outbound";

enum Command {
    Shutdown,
}

/// A running relay; it stops when dropped or closed.
pub struct Relay {
    mailbox: Mailbox<Command>,
    inbound: Vec<String>,
    outbound: Vec<String>,
    counters: Counters,
    done: Option<oneshot::Receiver<()>>,
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
        let (mailbox, inbox) = wire::mailbox()?;
        let counters = Counters::default();
        let thread_counters = counters.clone();
        let (inbound, outbound) = (inbound.to_vec(), outbound.to_vec());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("gilmsg-relay".into())
            .spawn(move || {
                match Forwarder::new(&tuning, &inbound, &outbound, inbox, thread_counters) {
                    Ok((forwarder, bound)) => {
                        let _ = ready_tx.send(Ok(bound));
                        forwarder.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::InvalidArgument(format!("cannot start relay thread: {e}")))?;
        let (inbound, outbound) = ready_rx.recv().map_err(|_| Error::Closed)??;
        Ok(Relay {
            mailbox,
            inbound,
            outbound,
            counters,
            done: Some(done_rx),
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

    /// `relay.forwarded`, `relay.frames`, `relay.subscribers`.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
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

struct Forwarder {
    _context: zmq::Context,
    inbound: zmq::Socket,
    outbound: zmq::Socket,
    inbox: Inbox<Command>,
    subscriptions: Subscriptions,
    counters: Counters,
}

type Bound = (Vec<String>, Vec<String>);

impl Forwarder {
    fn new(
        tuning: &SocketTuning,
        inbound: &[String],
        outbound: &[String],
        inbox: Inbox<Command>,
        counters: Counters,
    ) -> Result<(Self, Bound)> {
        let context = zmq::Context::new();
        let sub = tuning.socket(&context, zmq::SUB, "relay inbound")?;
        sub.set_subscribe(b"")
            .map_err(|e| Error::socket("subscribe relay inbound", e))?;
        tuning.cap_incoming(&sub, "relay inbound")?;
        let bound_in = wire::bind_all(&sub, inbound, "relay inbound")?;
        let xpub = tuning.socket(&context, zmq::XPUB, "relay outbound")?;
        // Verbose: see every subscription, so `subscribers` counts peers.
        xpub.set_xpub_verbose(true)
            .map_err(|e| Error::socket("set xpub_verbose", e))?;
        let bound_out = wire::bind_all(&xpub, outbound, "relay outbound")?;
        let forwarder = Forwarder {
            _context: context,
            inbound: sub,
            outbound: xpub,
            inbox,
            subscriptions: Subscriptions::default(),
            counters,
        };
        Ok((forwarder, (bound_in, bound_out)))
    }

    fn run(mut self) {
        let mut commands = Vec::new();
        loop {
            let mut items = [
                zmq::PollItem::from_fd(self.inbox.fd(), zmq::POLLIN),
                self.inbound.as_poll_item(zmq::POLLIN),
                self.outbound.as_poll_item(zmq::POLLIN),
            ];
            if let Err(e) = zmq::poll(&mut items, -1) {
                tracing::error!("relay poll failed: {e}");
                return;
            }
            let ready = [
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            ];
            if ready[0] {
                let alive = self.inbox.drain(&mut commands).is_ok();
                if !alive || commands.drain(..).any(|Command::Shutdown| true) {
                    return;
                }
            }
            if ready[2] && self.subscriptions.drain_from(&self.outbound) {
                self.counters
                    .set("relay", "subscriptions", self.subscriptions_count());
            }
            if ready[1] {
                self.forward_batch();
            }
        }
    }

    fn subscriptions_count(&self) -> u64 {
        u64::from(self.subscriptions.any())
    }

    /// Forwards queued messages frame by frame, without copying them.
    fn forward_batch(&mut self) {
        let mut forwarded = 0u64;
        let mut frames = 0u64;
        let mut message = zmq::Message::new();
        'messages: for _ in 0..4096 {
            loop {
                match self.inbound.recv(&mut message, zmq::DONTWAIT) {
                    Ok(()) => {}
                    Err(zmq::Error::EAGAIN) => break 'messages,
                    Err(e) => {
                        tracing::warn!("relay receive failed: {e}");
                        break 'messages;
                    }
                }
                frames += 1;
                let more = message.get_more();
                let flags = if more {
                    zmq::SNDMORE | zmq::DONTWAIT
                } else {
                    zmq::DONTWAIT
                };
                let outgoing = std::mem::replace(&mut message, zmq::Message::new());
                if let Err(e) = self.outbound.send(outgoing, flags) {
                    tracing::warn!("relay send failed: {e}");
                }
                if !more {
                    forwarded += 1;
                    break;
                }
            }
        }
        self.counters.add("relay", "forwarded", forwarded);
        self.counters.add("relay", "frames", frames);
    }
}
