//! # gilmsg-proto: the protocol, with no I/O
//!
//! Everything gilmsg puts on the wire and every rule it applies to what comes
//! off it, as plain data and pure functions. Sockets, threads and clocks live
//! in the `gilmsg` crate; keys and certificates in `gilmsg-crypto`. Keeping
//! this crate free of both makes it unit-testable and fuzzable on its own,
//! the way rustls keeps its state machines apart from sockets.
//!
//! ## Layout
//! - [`canonical`]: Python-identical canonical JSON, the bytes that are signed.
//! - [`envelope`]: the fedmsg body (`topic`, `msg`, `msg_id`, ...), frame
//!   decoding with size and shape checks, topic naming.
//! - [`auth`]: the [`Signer`] / [`Verifier`]
//!   traits the crypto crate implements.
//! - [`validate`]: signature + routing policy, including the one Python
//!   compatibility rule.
//! - [`policy`]: fedmsg's `routing_policy` / `routing_nitpicky`.
//! - [`ack`]: ACK payloads and the per-message [`AckCollector`].
//! - [`publisher`]: [`PublisherState`], every
//!   decision of a publisher (readiness, ACK matching, re-sends, deadlines)
//!   as a pure state machine whose wake-ups cost what is due.
//! - [`receipts`]: [`ReceiptWatch`](receipts::ReceiptWatch), receipts as a
//!   watcher (the firehose) sees them, bounded in memory.
//! - [`retransmit`]: RFC 6298 re-send timing.
//! - [`dedupe`]: the consumer's bounded, time-windowed memory of the
//!   messages it accepted, with per-signer replay floors.
//! - [`consumer`]: [`ConsumerState`], every
//!   decision of an ACK-sending consumer as a pure state machine.
//! - [`redelivery`]: how often a failed message is requeued (AMQP).
//! - [`digest`]: [`Digest`], the SHA-256 of a signed part that ACKs name.
//! - [`bridge_match`]: pairing the sightings of one message on the two sides
//!   of a ZeroMQ <-> AMQP bridge (`gilmsg-bridge verify`): missing, changed,
//!   late and duplicate copies, in bounded memory.
//! - [`schema`]: the message-schema rule and the [`SchemaCheck`] trait a
//!   JSON Schema implementation provides (no JSON Schema library here).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ack;
pub mod auth;
pub mod bridge;
pub mod bridge_match;
pub mod canonical;
pub mod consumer;
pub mod dedupe;
pub mod digest;
pub mod envelope;
pub mod policy;
pub mod publisher;
pub mod receipts;
pub mod redelivery;
pub mod retransmit;
pub mod schema;
#[cfg(test)]
mod testing;
pub mod validate;

pub use ack::{AckBody, AckCollector, AckEntry, AckOutcome, AckRecord, DigestClaim};
pub use auth::{SignError, SignedItem, Signer, VerifiedSigner, Verifier, VerifyError};
pub use consumer::{Arrival, ConsumerSettings, ConsumerState, Outcome};
pub use digest::Digest;
pub use envelope::{DecodeError, Draft, Envelope, Sealed, SignedPart, TopicScheme};
pub use publisher::{PublisherSettings, PublisherState};
pub use schema::{SchemaCheck, SchemaNote, SchemaVerdict, SchemaViolation, SCHEMA_FIELD};
pub use validate::{Rejection, Validated, Validator, Verify};
