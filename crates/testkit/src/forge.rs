//! Building messages and ACKs by hand, the way a peer (honest or not) would.

use gilmsg_proto::ack::AckBody;
use gilmsg_proto::envelope::new_msg_id;
use gilmsg_proto::{Draft, Envelope, Signer};
use serde_json::{Map, Value};

/// A message on `topic`, signed by `signer` if given.
pub fn message(topic: &str, msg: Value, wants_ack: bool, signer: Option<&dyn Signer>) -> Envelope {
    message_at(topic, msg, wants_ack, signer, unix_now())
}

/// Like [`message`], stamped `timestamp` (seconds since the epoch).
pub fn message_at(
    topic: &str,
    msg: Value,
    wants_ack: bool,
    signer: Option<&dyn Signer>,
    timestamp: i64,
) -> Envelope {
    Draft {
        topic: topic.to_owned(),
        msg,
        msg_id: new_msg_id(2026),
        i: 1,
        timestamp,
        username: "gilmsg-tests".into(),
        wants_ack,
    }
    .build(signer)
    .expect("build message")
}

/// An ACK carrying `body` on `ack_topic`, signed by `signer` if given.
pub fn ack(ack_topic: &str, body: AckBody, signer: Option<&dyn Signer>) -> Envelope {
    message(ack_topic, body.to_msg(), false, signer)
}

/// The honest ACK of `message` (right msg_id and digest) by `signer`.
pub fn honest_ack(ack_topic: &str, message: &Envelope, signer: &dyn Signer) -> Envelope {
    let body = AckBody::for_message(message).expect("digest");
    ack(ack_topic, body, Some(signer))
}

/// The two frames of `envelope`, as a peer sends them.
pub fn frames(envelope: &Envelope) -> Vec<Vec<u8>> {
    envelope.encode().expect("encode").to_vec()
}

/// The frames of `envelope` after `edit` changed its body (after signing).
pub fn tampered(envelope: &Envelope, edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<Vec<u8>> {
    let mut body = envelope.body().clone();
    edit(&mut body);
    body_frames(body)
}

/// The frames of `envelope` after `edit` changed its body, then signed
/// again by `signer`: a validly signed body that the library itself would
/// refuse to build (control characters in `msg_id`, say).
pub fn resigned(
    envelope: &Envelope,
    signer: &dyn Signer,
    edit: impl FnOnce(&mut Map<String, Value>),
) -> Vec<Vec<u8>> {
    let mut body = envelope.body().clone();
    edit(&mut body);
    body.insert("crypto".into(), Value::String(signer.scheme().to_owned()));
    let signed =
        gilmsg_proto::canonical::object_to_string_without(&body, &["signature", "certificate"])
            .expect("canonical body");
    let signature = signer.sign(signed.as_bytes()).expect("sign");
    body.insert("signature".into(), Value::String(signature));
    body.insert(
        "certificate".into(),
        Value::String(signer.certificate().to_owned()),
    );
    body_frames(body)
}

/// The two frames a peer sends for `body`: its `topic`, then the JSON.
fn body_frames(body: Map<String, Value>) -> Vec<Vec<u8>> {
    let topic = body
        .get("topic")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    vec![
        topic.into_bytes(),
        serde_json::to_vec(&Value::Object(body)).expect("serialise"),
    ]
}

/// The wall clock in seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
