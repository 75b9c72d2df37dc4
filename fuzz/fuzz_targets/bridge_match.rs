//! The bridge checker's matcher on arbitrary sequences of sightings.
//!
//! Input: byte 0 picks the settings (capacity 1..=8 from its low 3 bits,
//! grace 0/10/1000 ms or "never" (`Duration::MAX`) from bits 3-4, memory
//! 0/50/5000 ms or "never" from bits 5-6); then 4 bytes per step:
//!
//! - byte 0: the operation (mod 8): 0 start judging, 1 stop accepting,
//!   2 expire, otherwise observe; bit 7: the side (ZeroMQ or AMQP);
//! - byte 1: the id (mod 16, so ids collide), bit 7: an id of 300
//!   characters instead;
//! - byte 2: the body (mod 4) and topic (bit 7);
//! - byte 3: the time step, signed: the clock goes back as well as forward.
//!
//! Checked, besides "never panics": the memory stays within the capacity
//! (waiting and settled ids), the counters add up (every missing finding
//! returned by `expire` is counted once, pending is the number waiting).
#![no_main]

use std::time::{Duration, Instant};

use gilmsg_proto::bridge_match::{
    body_digest, BridgeMatcher, Finding, MatchSettings, Observation, Side,
};
use libfuzzer_sys::fuzz_target;

fn span(bits: u8, spans: [Duration; 4]) -> Duration {
    spans[usize::from(bits & 3)]
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, steps)) = data.split_first() else {
        return;
    };
    let settings = MatchSettings {
        capacity: usize::from(first & 7) + 1,
        grace: span(
            first >> 3,
            [
                Duration::ZERO,
                Duration::from_millis(10),
                Duration::from_secs(1),
                Duration::MAX,
            ],
        ),
        remember: span(
            first >> 5,
            [
                Duration::ZERO,
                Duration::from_millis(50),
                Duration::from_secs(5),
                Duration::MAX,
            ],
        ),
    };
    let mut matcher = BridgeMatcher::new(settings);
    let bodies: Vec<_> = (0..4)
        .map(|n| body_digest(&serde_json::json!({ "n": n })).expect("canonical"))
        .collect();
    let base = Instant::now() + Duration::from_secs(3600);
    let mut now = base;
    let mut reported = 0u64;
    let long_id = "x".repeat(300);
    for step in steps.chunks_exact(4) {
        let delta = i8::from_ne_bytes([step[3]]);
        let millis = Duration::from_millis(u64::from(delta.unsigned_abs()) * 7);
        now = if delta >= 0 {
            now + millis
        } else {
            now.checked_sub(millis).unwrap_or(now)
        };
        let side = if step[0] & 0x80 == 0 { Side::Zmq } else { Side::Amqp };
        match step[0] % 8 {
            0 => matcher.start_judging(),
            1 => matcher.stop_accepting(),
            2 => {
                for finding in matcher.expire(now) {
                    assert!(matches!(finding, Finding::Missing { .. }));
                    reported += 1;
                }
            }
            _ => {
                let short = (step[1] % 16).to_string();
                let id = if step[1] & 0x80 == 0 { short.as_str() } else { long_id.as_str() };
                let topic = if step[2] & 0x80 == 0 { "org.x.a" } else { "org.x.b" };
                matcher.observe(Observation {
                    side,
                    id,
                    topic,
                    body: bodies[usize::from(step[2] % 4)],
                    at: now,
                });
            }
        }
        let counters = matcher.counters();
        assert!(counters.pending <= settings.capacity as u64);
        assert_eq!(counters.missing_zmq + counters.missing_amqp, reported);
    }
    let _ = matcher.next_deadline();
});
