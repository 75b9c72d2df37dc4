//! The ZeroMQ transport: fedmsg's bus.
//!
//! A message is a two-frame ZeroMQ message `[topic, body]` ([`Frames`]).
//! Each process's sockets are owned by socket threads ([`actor`]): the
//! publisher's (`publisher.rs`: an XPUB out, a SUB for ACKs), the
//! consumer's (`consumer.rs`: a SUB in, an XPUB for ACKs) and the relay's
//! (`relay.rs`). Readiness comes from libzmq's socket monitor and the
//! XPUBs' subscription messages (`monitor.rs`), socket options and caps
//! from [`SocketTuning`] (`socket.rs`). Every rule is in the drivers of
//! [`crate::transport`]; this module only moves bytes and reports what the
//! sockets see.

pub(crate) mod actor;
pub(crate) mod consumer;
mod monitor;
pub(crate) mod publisher;
pub mod relay;
mod socket;

use gilmsg_proto::{DecodeError, Envelope, Sealed};

pub(crate) use socket::SocketTuning;

use crate::transport::WireFormat;

/// fedmsg's wire form: frame 0 the topic, frame 1 the canonical JSON body.
/// Received messages keep at most three frames (enough to count one with
/// too many).
pub(crate) struct Frames;

impl WireFormat for Frames {
    type Wire = Vec<Vec<u8>>;

    fn encode(message: Sealed) -> Vec<Vec<u8>> {
        let (topic, body) = message.into_topic_and_body();
        vec![topic.into_bytes(), body.into_bytes()]
    }

    fn topic(wire: &Vec<Vec<u8>>) -> &[u8] {
        wire.first().map_or(&[][..], Vec::as_slice)
    }

    fn decode(wire: &Vec<Vec<u8>>, max_size: usize) -> Result<Envelope, DecodeError> {
        Envelope::decode(wire, max_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gilmsg_proto::Draft;

    #[test]
    fn frames_are_what_envelope_encode_writes() {
        let draft = Draft {
            topic: "a.b.c".into(),
            msg: serde_json::json!({"k": [1, "\u{e9}"]}),
            msg_id: "2026-x".into(),
            i: 3,
            timestamp: 1_700_000_000,
            username: "u".into(),
            wants_ack: true,
        };
        let sealed = draft.seal(None).unwrap();
        let expected = sealed.envelope().encode().unwrap().to_vec();
        let frames = Frames::encode(sealed);
        assert_eq!(frames, expected);
        assert_eq!(Frames::topic(&frames), b"a.b.c");
        assert!(Frames::decode(&frames, 1 << 20).is_ok());
        assert_eq!(Frames::topic(&Vec::new()), b"");
    }
}
