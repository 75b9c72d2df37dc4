//! Signature validation (`Validator::validate` -> `TrustStore::verify`) on
//! tampered, validly signed messages.
//!
//! At start-up a throw-away PKI is made in a temporary directory with
//! `gilmsg_crypto::pki`: a CA, `alice` (good) and `mallory` (revoked on the
//! CRL). Four base messages are signed with them:
//!
//! | base | signer | body |
//! |---|---|---|
//! | 0 | alice | wants ACK: `gilmsg_version` signed |
//! | 1 | alice | no ACK |
//! | 2 | alice | Python gilmsg style: signed, then `gilmsg_version` added |
//! | 3 | mallory (revoked) | wants ACK |
//!
//! Input: byte 0 picks the base; the rest is a list of edit operations
//! (see [`apply`]) that flip bytes of the `signature`/`certificate` fields
//! as text, as decoded bytes or inside the certificate's DER, replace or
//! remove any field, transplant fields between bases, and so on. The edited
//! body is serialised, parsed with `Envelope::parse_body` and validated.
//!
//! Checked, besides "never panics":
//!
//! - accepted => the signer is `alice` (`mallory` is revoked);
//! - accepted => the canonical signed part (or, when flagged
//!   `unsigned_gilmsg_version`, the signed part without `gilmsg_version`)
//!   is one alice really signed: the bytes are authentic even when the
//!   unsigned `signature`/`certificate` text has been re-encoded.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use gilmsg_crypto::{pki, Identity, TrustStore};
use gilmsg_proto::policy::RoutingPolicy;
use gilmsg_proto::{Draft, Envelope, Signer, Validator};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const FIELDS: [&str; 11] = [
    "topic",
    "msg",
    "msg_id",
    "i",
    "timestamp",
    "username",
    "crypto",
    "signature",
    "certificate",
    "gilmsg_version",
    "extra",
];
const SCHEMES: [&str; 4] = ["ed25519", "x509", "rsa", ""];
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct World {
    _dir: tempfile::TempDir,
    validator: Validator,
    bases: Vec<Map<String, Value>>,
    /// Every canonical signed part alice has signed.
    authentic: Vec<String>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let ssl: PathBuf = dir.path().join("pki");
        pki::init(&ssl, &pki::InitOptions::default()).expect("pki init");
        for name in ["alice", "mallory"] {
            pki::issue(&ssl, name, &pki::IssueOptions::default()).expect("pki issue");
        }
        pki::revoke(&ssl, "mallory").expect("pki revoke");
        let alice = Identity::load(&ssl, "alice").expect("load alice");
        let mallory = Identity::load(&ssl, "mallory").expect("load mallory");
        let trust = TrustStore::load(&ssl.join(pki::CA_CERT), Some(&ssl.join(pki::CRL)))
            .expect("trust store");
        let validator = Validator::new(Arc::new(trust), RoutingPolicy::default());

        let draft = |wants_ack: bool, i: u64| Draft {
            topic: "org.fedoraproject.dev.fuzz.signed".into(),
            msg: json!({"text": "h\u{e9}llo \u{1F600}", "n": 1.5, "list": [1, null, true]}),
            msg_id: format!("2026-00000000-0000-4000-8000-00000000000{i}"),
            i,
            timestamp: 1_767_225_600,
            username: "fuzz".into(),
            wants_ack,
        };
        let base0 = draft(true, 1)
            .build(Some(&alice as &dyn Signer))
            .expect("sign");
        let base1 = draft(false, 2)
            .build(Some(&alice as &dyn Signer))
            .expect("sign");
        let mut base2 = draft(false, 3)
            .build(Some(&alice as &dyn Signer))
            .expect("sign")
            .to_value();
        base2["gilmsg_version"] = json!("0.1.2");
        let base3 = draft(true, 4)
            .build(Some(&mallory as &dyn Signer))
            .expect("sign");
        let bases: Vec<Map<String, Value>> =
            [base0.to_value(), base1.to_value(), base2, base3.to_value()]
                .into_iter()
                .map(|v| match v {
                    Value::Object(m) => m,
                    _ => unreachable!(),
                })
                .collect();
        let authentic = vec![
            base0.signed_part().unwrap().as_str().to_owned(),
            base1.signed_part().unwrap().as_str().to_owned(),
            envelope(&bases[2])
                .unwrap()
                .signed_part_without_gilmsg_version()
                .unwrap(),
        ];

        // The harness is only meaningful if the untouched bases behave.
        for (i, expect_ok) in [true, true, true, false].into_iter().enumerate() {
            let r = validator.validate(&envelope(&bases[i]).unwrap());
            assert_eq!(r.is_ok(), expect_ok, "base {i}: {r:?}");
        }
        World {
            _dir: dir,
            validator,
            bases,
            authentic,
        }
    })
}

fn envelope(body: &Map<String, Value>) -> Option<Envelope> {
    let bytes = serde_json::to_vec(body).ok()?;
    Envelope::parse_body(&bytes, usize::MAX).ok()
}

/// A little reader over the fuzz input; every read may run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = usize::from(self.u8()?).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn field(sel: u8) -> &'static str {
    FIELDS[usize::from(sel) % FIELDS.len()]
}

fn get_str(body: &Map<String, Value>, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn xor_at(bytes: &mut [u8], idx: u16, mask: u8) {
    if !bytes.is_empty() {
        let i = usize::from(idx) % bytes.len();
        bytes[i] ^= mask;
    }
}

/// The DER inside a `certificate` field (base64 of a PEM certificate).
fn cert_der(field: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = field.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let pem = B64.decode(compact).ok()?;
    let pem = String::from_utf8(pem).ok()?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(body).ok()
}

/// A `certificate` field for `der`, laid out as `Identity` writes it.
fn cert_field(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    B64.encode(pem)
}

/// Applies one edit operation read from `input`; `None` when input ran out.
fn apply(
    body: &mut Map<String, Value>,
    bases: &[Map<String, Value>],
    input: &mut Input,
) -> Option<()> {
    let set = |body: &mut Map<String, Value>, key: &str, v: String| {
        body.insert(key.to_owned(), Value::String(v));
    };
    match input.u8()? % 14 {
        // Flip a byte of the signature / certificate text.
        op @ (0 | 1) => {
            let key = if op == 0 { "signature" } else { "certificate" };
            let (idx, mask) = (input.u16()?, input.u8()?);
            let mut bytes = get_str(body, key).into_bytes();
            xor_at(&mut bytes, idx, mask);
            set(body, key, String::from_utf8_lossy(&bytes).into_owned());
        }
        // Flip a byte of the decoded signature.
        2 => {
            let (idx, mask) = (input.u16()?, input.u8()?);
            if let Ok(mut sig) = B64.decode(get_str(body, "signature")) {
                xor_at(&mut sig, idx, mask);
                set(body, "signature", B64.encode(sig));
            }
        }
        // Flip a byte of the certificate's DER.
        3 => {
            let (idx, mask) = (input.u16()?, input.u8()?);
            if let Some(mut der) = cert_der(&get_str(body, "certificate")) {
                xor_at(&mut der, idx, mask);
                set(body, "certificate", cert_field(&der));
            }
        }
        // Truncate the certificate's DER.
        4 => {
            let len = usize::from(input.u16()?);
            if let Some(mut der) = cert_der(&get_str(body, "certificate")) {
                der.truncate(len % (der.len() + 1));
                set(body, "certificate", cert_field(&der));
            }
        }
        // Replace the certificate's DER with fuzz bytes.
        5 => {
            let der = input.bytes()?.to_vec();
            set(body, "certificate", cert_field(&der));
        }
        // Set any field to a fuzz string.
        6 => {
            let key = field(input.u8()?);
            let v = String::from_utf8_lossy(input.bytes()?).into_owned();
            set(body, key, v);
        }
        // Set any field to a fuzz JSON value.
        7 => {
            let key = field(input.u8()?);
            if let Ok(v) = serde_json::from_slice::<Value>(input.bytes()?) {
                body.insert(key.to_owned(), v);
            }
        }
        // Remove a field.
        8 => {
            body.remove(field(input.u8()?));
        }
        // Copy a field from another base (transplants).
        9 => {
            let key = field(input.u8()?);
            let from = &bases[usize::from(input.u8()?) % bases.len()];
            match from.get(key) {
                Some(v) => body.insert(key.to_owned(), v.clone()),
                None => body.remove(key),
            };
        }
        // Choose the scheme.
        10 => {
            let scheme = SCHEMES[usize::from(input.u8()?) % SCHEMES.len()];
            set(body, "crypto", scheme.to_owned());
        }
        // Insert whitespace into signature or certificate (base64 decoders
        // skip it: the same bytes, a different string).
        11 => {
            let which = input.u8()?;
            let key = if which & 1 == 0 {
                "signature"
            } else {
                "certificate"
            };
            let at = usize::from(input.u16()?);
            let mut s = get_str(body, key);
            let at = at % (s.len() + 1);
            if s.is_char_boundary(at) {
                s.insert(at, if which & 2 == 0 { '\n' } else { ' ' });
                set(body, key, s);
            }
        }
        // Append fuzz bytes, base64-encoded, to the decoded signature.
        12 => {
            let extra = input.bytes()?.to_vec();
            let mut sig = B64.decode(get_str(body, "signature")).unwrap_or_default();
            sig.extend_from_slice(&extra);
            set(body, "signature", B64.encode(sig));
        }
        // Tweak msg in place: add a key (changes the signed part).
        _ => {
            let v = String::from_utf8_lossy(input.bytes()?).into_owned();
            if let Some(Value::Object(m)) = body.get_mut("msg") {
                m.insert(v.clone(), Value::String(v));
            }
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let mut input = Input(data);
    let Some(base) = input.u8() else { return };
    let mut body = world.bases[usize::from(base) % world.bases.len()].clone();
    for _ in 0..16 {
        if apply(&mut body, &world.bases, &mut input).is_none() {
            break;
        }
    }
    let Some(message) = envelope(&body) else {
        return;
    };
    let Ok(ok) = world.validator.validate(&message) else {
        return;
    };
    assert_eq!(
        ok.signer.as_deref(),
        Some("alice"),
        "accepted a non-alice signer"
    );
    let signed = if ok.unsigned_gilmsg_version {
        assert!(
            message.wants_ack(),
            "legacy rule used without gilmsg_version"
        );
        message.signed_part_without_gilmsg_version()
    } else {
        message.signed_part().map(|s| s.as_str().to_owned())
    }
    .expect("an accepted message has a canonical form");
    assert!(
        world.authentic.contains(&signed),
        "accepted a signed part alice never signed: {signed}"
    );
});
