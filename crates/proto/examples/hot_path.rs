//! The per-message work of this crate on both sides of an acknowledged
//! publish, without the Ed25519 maths, timed in a loop: for profiling
//! (`valgrind --tool=callgrind target/release/examples/hot_path`) and for
//! comparing two versions of the crate in nanoseconds per message.
//!
//! The message has the bench's shape (`seq`, a 64-byte payload, wants
//! ACKs) and a certificate field of the size an Ed25519 identity's has
//! (base64 of PEM, wrapped at 76 columns); the signer returns a fixed
//! signature, so what is timed is everything around signing and verifying.
//!
//! `cargo run --release -p gilmsg-proto --example hot_path [ITERATIONS]`

use std::time::{Duration, Instant};

use gilmsg_proto::dedupe::{DedupeCache, Retention};
use gilmsg_proto::{Draft, Envelope, SignError, Signer};
use serde_json::json;

/// Signs nothing: a fixed 64-byte signature in base64.
struct FixedSigner {
    certificate: String,
}

impl Signer for FixedSigner {
    fn name(&self) -> &str {
        "bench-pub"
    }
    fn scheme(&self) -> &str {
        "ed25519"
    }
    fn certificate(&self) -> &str {
        &self.certificate
    }
    fn sign(&self, _canonical: &[u8]) -> Result<String, SignError> {
        Ok(format!("{}==", "A".repeat(86)))
    }
}

fn draft(seq: usize) -> Draft {
    Draft {
        topic: "org.gilmsg.bench.dev.bench.throughput".into(),
        msg: json!({"seq": seq, "payload": "x".repeat(64)}),
        msg_id: format!("2026-{seq:036}"),
        i: seq as u64,
        timestamp: 1_800_000_000,
        username: "bench".into(),
        wants_ack: true,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 20_000,
    };
    // ~950 characters, as the base64 of an Ed25519 certificate's PEM.
    let base64 = "TUlJQ2xqQ0NBWDZnQXdJQkFnSVVmYWtl".repeat(30);
    let certificate = base64
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
        .collect();
    let signer = FixedSigner { certificate };

    // Publisher: Draft -> seal -> the two frames, and the digest ACKs name.
    let start = Instant::now();
    let mut wire = Vec::with_capacity(iterations);
    for seq in 0..iterations {
        let sealed = draft(seq).seal(Some(&signer))?;
        let digest = sealed.signed_part().digest();
        let (topic, body) = sealed.into_topic_and_body();
        wire.push((digest, [topic.into_bytes(), body.into_bytes()]));
    }
    let publish = per_message(start.elapsed(), iterations);

    // Consumer: decode, signed part, digest, copy key (what runs before
    // the signature is verified).
    let cache = DedupeCache::new(Retention::default(), Instant::now());
    let start = Instant::now();
    for (digest, frames) in &wire {
        let envelope = Envelope::decode(frames, 1 << 20)?;
        let signed = envelope.signed_part()?;
        let got = signed.digest();
        let key = cache.copy_key(got, envelope.str_field("certificate"));
        if got != *digest || key.digest() != got {
            return Err("digest mismatch".into());
        }
    }
    let consume = per_message(start.elapsed(), iterations);
    println!(
        "{iterations} messages of {} bytes: publisher {publish:.0} ns/msg, consumer {consume:.0} ns/msg (signature maths excluded)",
        wire.first().map_or(0, |(_, f)| f[1].len())
    );
    Ok(())
}

fn per_message(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n.max(1) as f64
}
