//! The seam between gilmsg's rules and the transports that carry messages.
//!
//! Every decision about a message is made by the pure state machines in
//! `gilmsg-proto` ([`ConsumerState`](gilmsg_proto::consumer::ConsumerState),
//! [`PublisherState`](gilmsg_proto::publisher::PublisherState)). The
//! drivers here wrap each of them with what is the same on every
//! transport: verifying signatures, signing ACKs, counting and logging each
//! outcome, answering the publishing caller, handing deliveries to the
//! application. A transport is an adapter around a driver:
//!
//! | a transport... | through |
//! |---|---|
//! | writes a message on its wire and reads one back | [`WireFormat`] |
//! | delivers what it receives into the rules | [`ConsumerDriver::on_burst`], [`PublisherDriver::on_acks`] (a burst: signatures checked together, see [`verify_ahead`]); [`ConsumerDriver::on_wire_with`], [`PublisherDriver::on_ack`] (one message) |
//! | sends the bytes the rules say to send | the `send` closures it passes to [`PublisherDriver::send_ready`], [`PublisherDriver::fire_timers`], [`ConsumerDriver::flush_acks`] |
//! | reports its readiness signals | the `ready` closure of [`PublisherDriver::send_ready`], [`ConsumerDriver::report_readiness`] |
//! | wakes up when the rules need it | [`PublisherDriver::next_wakeup`] |
//! | shows that its loop turns | a [`Pulse`](crate::health) beaten every turn, at least every [`PULSE_EVERY`](crate::health::PULSE_EVERY) (dropped when the loop ends) |
//! | shows its counters on `/metrics` | nothing: the drivers count, [`monitoring`](crate::monitoring) reads the counters |
//! | takes commands from the handles | [`PublisherLink`], [`ConsumerLink`] |
//!
//! A transport never decides what is a duplicate, which ACK counts, when to
//! re-send, what to batch, or how long a message may be in flight: those
//! rules live in the state machines, and every transport drives the same
//! ones. Nor does the seam impose an event loop: the drivers are plain
//! `&mut self` methods, with the time passed in. ZeroMQ (`crate::zeromq`)
//! drives them from a poll thread per socket owner; an async transport
//! drives them from a task, its `send` closures queueing to its own client.
//! `docs/architecture.md` draws the seam.

pub(crate) mod consumer;
pub(crate) mod publisher;
pub(crate) mod verify_ahead;

use std::time::Duration;

use gilmsg_proto::consumer::Ticket;
use gilmsg_proto::{AckCollector, DecodeError, Envelope, Sealed};
use tokio::sync::oneshot;

use crate::error::Result;
use crate::Receipt;

pub(crate) use consumer::{ConsumerDriver, ConsumerParts};
pub(crate) use publisher::PublisherDriver;

/// How one transport writes messages on its wire and reads them back.
pub(crate) trait WireFormat: Send + 'static {
    /// One message as the transport carries it (ZeroMQ: the frames).
    type Wire: Send + 'static;

    /// The wire form of a message built here. The body text is already
    /// canonical in `message` ([`Sealed::body_text`]): nothing is
    /// serialised again.
    fn encode(message: Sealed) -> Self::Wire;

    /// The topic the transport routes `wire` on, read without decoding the
    /// rest: rules that look only at the topic (skipping ACK-topic traffic)
    /// apply before any parsing.
    fn topic(wire: &Self::Wire) -> &[u8];

    /// Decodes `wire`, refusing a body over `max_size` bytes. Errors are
    /// counted by their kind, the same on every transport.
    fn decode(wire: &Self::Wire, max_size: usize) -> std::result::Result<Envelope, DecodeError>;

    /// What a broker said about a sent message, for a timeout's report
    /// (`None`: the transport has no broker, as ZeroMQ).
    fn broker_verdict(_wire: &Self::Wire) -> Option<crate::amqp::BrokerVerdict> {
        None
    }
}

/// Whether a transport's loop goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep running.
    Continue,
    /// Stop after this batch of commands.
    Stop,
}

/// A publish on its way from a [`Bus`](crate::Bus) to its transport's
/// loop: the message `M` as built ([`Outgoing`]), then in the transport's
/// wire form.
pub(crate) struct Queued<M> {
    pub(crate) msg_id: String,
    pub(crate) topic: String,
    pub(crate) message: M,
    /// `None` for a plain fedmsg publish.
    pub(crate) collector: Option<AckCollector>,
    pub(crate) timeout: Duration,
    pub(crate) reply: oneshot::Sender<Result<Receipt>>,
}

/// A publish as the [`Bus`](crate::Bus) built it: signed, canonical.
pub(crate) type Outgoing = Queued<Sealed>;

impl Outgoing {
    /// The same publish with its message in `W`'s wire form (done on the
    /// caller's task, so that many publishes encode in parallel).
    pub(crate) fn encode<W: WireFormat>(self) -> Queued<W::Wire> {
        Queued {
            msg_id: self.msg_id,
            topic: self.topic,
            message: W::encode(self.message),
            collector: self.collector,
            timeout: self.timeout,
            reply: self.reply,
        }
    }
}

/// What a publisher's transport loop is told by its handles.
pub(crate) enum PublisherCommand<Wire> {
    /// Send this, and wait for its ACKs if it has recipients.
    Publish(Box<Queued<Wire>>),
    /// Its caller stopped waiting: forget it.
    Cancel(String),
    /// Stop (after flushing what is queued).
    Shutdown,
}

/// What a [`Bus`](crate::Bus) needs from the transport it publishes through.
pub(crate) trait PublisherLink: Send + Sync {
    /// Hands a publish over (encoding it on the caller's task).
    fn publish(&self, outgoing: Outgoing) -> Result<()>;
    /// Forgets a publish whose caller stopped waiting.
    fn cancel(&self, msg_id: String);
    /// Stops the transport.
    fn shutdown(&self);
}

/// The application's verdict on one delivery.
pub(crate) struct Settle {
    pub(crate) msg_id: String,
    pub(crate) ticket: Ticket,
    pub(crate) handled: bool,
    /// When the message arrived (for the ACK latency histogram).
    pub(crate) received: std::time::Instant,
}

/// What a consumer's transport loop is told by its handles.
// Settle is the per-message command and Shutdown comes once: boxing Settle
// to shrink the enum would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ConsumerCommand {
    /// A delivery was handled (ACK it if asked) or not (never ACK it).
    Settle(Settle),
    /// Stop, flushing the ACKs already queued.
    Shutdown,
}

/// What a [`Consumer`](crate::Consumer) and its deliveries need from their
/// transport.
pub(crate) trait ConsumerLink: Send + Sync {
    /// Reports a delivery's verdict.
    fn settle(&self, settle: Settle) -> Result<()>;
    /// Stops the transport.
    fn shutdown(&self);
}
