//! # gilmsg: acknowledged publishing on a fedmsg-compatible ZeroMQ bus
//!
//! A critical producer names the recipients that must get a message;
//! [`Bus::publish`] returns a [`Receipt`] only when each of them has sent
//! back a valid signed ACK for that very message, and otherwise fails with
//! [`Error::Timeout`] naming who did not reply.
//!
//! ```no_run
//! # async fn demo(config: gilmsg::Config) -> Result<(), gilmsg::Error> {
//! use std::time::Duration;
//! let bus = gilmsg::Bus::builder(&config).modname("billing").build()?;
//! let receipt = bus
//!     .publish("invoice.paid", serde_json::json!({"id": 42}), &["ledger", "mailer"], Duration::from_secs(3))
//!     .await?;
//! println!("acked by {} recipients in {:?}", receipt.acks.len(), receipt.elapsed);
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`bus`]: [`Bus`], the async, cloneable publisher handle, and [`Receipt`].
//! - [`blocking`]: the same for non-async producers.
//! - [`consumer`]: [`Consumer`] and [`Delivery`], the ACK-sending consumer.
//! - [`relay`]: [`Relay`], the fedmsg-relay-compatible forwarder.
//! - [`bridge`]: [`bridge::Bridge`], the ZeroMQ <-> AMQP bridges.
//! - [`ExternalAcker`]: the signed ACK for a message another AMQP client
//!   (fedora-messaging) consumed.
//! - [`error`]: the crate's [`Error`].
//! - `transport`: the seam between the rules and the transports: the
//!   drivers around `gilmsg-proto`'s state machines (verification,
//!   counters, logs, answers to callers, deliveries) and what a transport
//!   implements (its wire form, sends, readiness).
//! - `zeromq`: the ZeroMQ transport, fedmsg's bus: one socket thread per
//!   handle (`actor`), socket options and caps, libzmq's monitor
//!   (readiness, re-connects after protocol errors, peers, subscriptions).
//! - `stats`: typed counters and their [`Stats`] snapshot, and their
//!   Prometheus form.
//! - [`health`]: whether each transport loop turns, whether the process
//!   is ready; [`monitoring`]: `/live`, `/ready` and `/metrics`.
//!
//! Examples: `examples/publish.rs` (an acknowledged publish) and
//! `examples/ack_consumer.rs` (a consumer that acks only what it handled).
//!
//! The protocol itself (envelope, canonical JSON, ACK bookkeeping, the
//! publisher's and consumer's state machines) is in `gilmsg-proto`, without
//! any I/O; keys and certificates in `gilmsg-crypto`; the configuration in
//! `gilmsg-config`. `docs/architecture.md` draws the rooms and the seam.
//!
//! Every socket is owned by one thread (libzmq sockets are not thread-safe);
//! handles talk to that thread through a channel and a wake-up socketpair.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod amqp;
pub mod blocking;
pub mod bridge;
pub mod bus;
pub mod consumer;
pub mod error;
pub mod health;
pub mod monitoring;
mod setup;
mod stats;
mod transport;
mod zeromq;

pub use amqp::external::{AckOutcome, ExternalAcker, Received};
pub use amqp::BrokerVerdict;

pub use zeromq::relay;

pub use bus::{Bus, BusBuilder, Receipt};
pub use consumer::{Consumer, ConsumerBuilder, Delivery, Readiness};
pub use error::{Error, Result, TimeoutError, Unsendable};
pub use relay::Relay;
pub use stats::Stats;

pub use gilmsg_config::{Config, ConfigError, MAX_TIMEOUT};
pub use gilmsg_crypto as crypto;
pub use gilmsg_proto as proto;
pub use gilmsg_proto::AckRecord;
