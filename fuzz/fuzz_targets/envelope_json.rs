//! Message bodies and canonical JSON on arbitrary bytes.
//!
//! The input is one body (a JSON document, or not). Checked, besides "never
//! panics":
//!
//! - `Envelope::parse_body` and, on its `msg`, `AckEntry::from_msg`; an ACK
//!   entry that parses (with a readable digest) survives `AckBody::to_msg`
//!   -> `AckEntry::from_msg` unchanged;
//! - canonical JSON, for any JSON value the bytes parse to:
//!   - the output is printable ASCII (Python's `ensure_ascii`);
//!   - it parses back, and canonicalising that gives the identical string
//!     (idempotence);
//!   - it denotes the same value: same keys, strings and booleans; integers
//!     equal after dropping leading zeros and the sign of zero; floats equal
//!     as IEEE doubles, bit for bit (so `-0.0` stays `-0.0`).
#![no_main]

use gilmsg_proto::canonical;
use gilmsg_proto::{AckBody, AckEntry, DigestClaim, Envelope};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// An ACK entry read from `msg` reads back the same once written again.
fn ack_roundtrip(msg: &Value) {
    let Ok(entry) = AckEntry::from_msg(msg) else {
        return;
    };
    let ack_digest = match entry.digest {
        DigestClaim::Absent => None,
        DigestClaim::Names(digest) => Some(digest),
        // Text that names no digest is never written by us.
        DigestClaim::Unreadable => return,
    };
    let body = AckBody {
        ack_msg_id: entry.ack_msg_id.clone(),
        ack_digest,
        ack_signer: entry.signer.clone(),
    };
    assert_eq!(AckEntry::from_msg(&body.to_msg()).as_ref(), Ok(&entry));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::parse_body(data, 1 << 20) {
        let _ = envelope.signed_part();
        ack_roundtrip(envelope.msg());
    }

    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    ack_roundtrip(&value);
    let Ok(text) = canonical::to_string(&value) else {
        return;
    };
    assert!(
        text.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "canonical output is not printable ASCII: {text:?}"
    );
    let reparsed: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("canonical output is not JSON ({e}): {text:?}"));
    let again = canonical::to_string(&reparsed)
        .unwrap_or_else(|e| panic!("canonical output has no canonical form ({e}): {text:?}"));
    assert_eq!(again, text, "canonical JSON is not idempotent");
    same_value(&value, &reparsed, &mut String::from("$"));
});

/// Panics, naming the path, where `a` and `b` denote different JSON values.
fn same_value(a: &Value, b: &Value, path: &mut String) {
    match (a, b) {
        (Value::Null, Value::Null) => {}
        (Value::Bool(x), Value::Bool(y)) => assert_eq!(x, y, "at {path}"),
        (Value::String(x), Value::String(y)) => assert_eq!(x, y, "at {path}"),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_str(), y.as_str());
            let is_int = |t: &str| !t.contains(['.', 'e', 'E']);
            if is_int(x) {
                assert!(is_int(y), "at {path}: integer {x} became {y}");
                assert_eq!(int_norm(x), int_norm(y), "at {path}");
            } else {
                let (fx, fy): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert_eq!(
                    fx.to_bits(),
                    fy.to_bits(),
                    "at {path}: float {x} became {y}"
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "at {path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                same_value(p, q, path);
                path.truncate(len);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert!(x.keys().eq(y.keys()), "at {path}: keys differ");
            for (k, p) in x {
                let len = path.len();
                path.push_str(&format!(".{k:?}"));
                same_value(p, &y[k], path);
                path.truncate(len);
            }
        }
        _ => panic!("at {path}: {a} became {b}"),
    }
}

/// An integer's text without leading zeros, `-0` as `0`.
fn int_norm(t: &str) -> String {
    let (neg, digits) = t.strip_prefix('-').map_or((false, t), |d| (true, d));
    let digits = digits.trim_start_matches('0');
    match (neg, digits.is_empty()) {
        (_, true) => "0".to_owned(),
        (true, false) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    }
}
