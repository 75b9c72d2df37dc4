//! `Envelope::decode` on arbitrary ZeroMQ multipart messages.
//!
//! Input layout (so that seeds can be written by hand):
//!
//! - byte 0, low 3 bits mod 5: the number of frames, 0..=4;
//! - byte 0, bits 4-5: the size limit, one of [`LIMITS`];
//! - the rest: the frames, separated by NUL bytes. The last frame takes
//!   whatever is left (NULs included); missing frames are empty.
//!
//! A seed `"\x02org.x.dev.a.b\0{...json...}"` is a two-frame message with
//! the 1 MiB limit.
//!
//! Checked, besides "never panics":
//!
//! - `signed_part()` and `encode()` succeed or fail together (they differ
//!   only by two string fields, which always have a canonical form);
//! - the legacy signed text (without `gilmsg_version`) cut out of the signed
//!   part equals the one serialised from scratch;
//! - round trip: `decode(encode(e))` succeeds, and encoding that again gives
//!   the same bytes (canonical encoding is a fixed point) and the same
//!   signed part;
//! - if the received body already was canonical, the re-decoded envelope is
//!   equal to the original one.
#![no_main]

use gilmsg_proto::Envelope;
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 4] = [1 << 20, 64, 0, 4096];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(head & 0x07) % 5;
    let limit = LIMITS[usize::from((head >> 4) & 0x03)];

    let mut frames: Vec<&[u8]> = Vec::with_capacity(count);
    let mut remaining = rest;
    for i in 0..count {
        if i + 1 == count {
            frames.push(remaining);
            remaining = &[];
        } else {
            match remaining.iter().position(|&b| b == 0) {
                Some(at) => {
                    frames.push(&remaining[..at]);
                    remaining = &remaining[at + 1..];
                }
                None => {
                    frames.push(remaining);
                    remaining = &[];
                }
            }
        }
    }

    let Ok(envelope) = Envelope::decode(&frames, limit) else {
        return;
    };
    // Accessors never panic on a decoded envelope.
    let _ = (
        envelope.topic(),
        envelope.msg(),
        envelope.msg_id(),
        envelope.crypto(),
        envelope.wants_ack(),
    );
    let signed = envelope.signed_part();
    let legacy = envelope.signed_part_without_gilmsg_version();
    let encoded = envelope.encode();
    assert_eq!(
        signed.is_ok(),
        encoded.is_ok(),
        "signed_part and encode disagree on canonicalisability"
    );
    assert_eq!(signed.is_ok(), legacy.is_ok());
    let (Ok(signed), Ok(encoded), Ok(legacy)) = (signed, encoded, legacy) else {
        return;
    };
    // The text Python gilmsg signed, cut out of the signed part, is the one
    // serialised from scratch.
    assert_eq!(signed.without_gilmsg_version(), legacy, "legacy text differs");
    assert_eq!(encoded[0], frames[0], "topic frame changed by encode");

    // Canonical output may be longer than the input (\u escapes), so the
    // re-decode gets no size limit.
    let again = Envelope::decode(&encoded, usize::MAX)
        .unwrap_or_else(|e| panic!("re-decoding our own encoding failed: {e}"));
    let reencoded = again
        .encode()
        .expect("re-decoded envelope is canonicalisable");
    assert_eq!(
        reencoded, encoded,
        "canonical encoding is not a fixed point"
    );
    assert_eq!(again.signed_part().unwrap(), signed, "signed part changed");
    if frames[1] == encoded[1].as_slice() {
        assert_eq!(again, envelope, "canonical body decoded differently");
    }
});
