//! Replays of captured messages: after the consumer's memory has been
//! flushed by other traffic, outside the time window, and as a flood of
//! copies. The bus is cleartext, so anyone can record signed messages and
//! send them again; none of that may run a handler twice or make a consumer
//! sign an ACK per copy.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::raw::RawPub;
use gilmsg_testkit::{forge, within, Bus, Consumer};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(10);

/// Sends a fresh message of `signer` and waits for the consumer to print
/// it; returns every stdout line printed before it (which must include
/// anything the replays before it made the handler run).
fn lines_before_sentinel(
    bus: &Bus,
    raw: &RawPub,
    consumer: &Consumer,
    signer: &str,
) -> Vec<String> {
    let sentinel = forge::message(
        &bus.topic("sentinel"),
        json!({"sentinel": true}),
        false,
        Some(&bus.identity(signer)),
    );
    raw.send(&forge::frames(&sentinel));
    let mut before = Vec::new();
    loop {
        let line = consumer
            .next_stdout(WAIT)
            .unwrap_or_else(|| panic!("the sentinel never came out; before it: {before:?}"));
        if line.contains(sentinel.msg_id()) {
            return before;
        }
        before.push(line);
    }
}

#[test]
fn a_message_replayed_after_more_than_the_dedupe_capacity_of_others_is_not_handled_again() {
    within(LIMIT, || {
        const CAPACITY: usize = 32;
        let bus = Bus::start_with(
            bins!(),
            &["c1", "filler"],
            &format!("dedupe_capacity = {CAPACITY}"),
        );
        let consumer = bus.consumer("c1", &[]);
        let raw = RawPub::connect(&bus.inbound);

        // The target: a signed message asking for an ACK, as recorded off
        // the bus (the test holds the publisher's key, so it builds it).
        let target = forge::message(
            &bus.topic("payment"),
            json!({"pay": 100}),
            true,
            Some(&bus.identity("publisher")),
        );
        let target_frames = forge::frames(&target);
        raw.send(&target_frames);
        consumer.wait_stdout(target.msg_id(), WAIT);

        // More distinct signed messages than the consumer remembers, by
        // another identity, stamped one second apart (a signer sending more
        // than the capacity within one second would have the rest of that
        // second refused once the first is forgotten: see docs/security.md).
        let filler = bus.identity("filler");
        let start = forge::unix_now() - 300;
        for i in 0..(3 * CAPACITY) {
            let m = forge::message_at(
                &bus.topic("filler"),
                json!({"i": i}),
                false,
                Some(&filler),
                start + i as i64,
            );
            raw.send(&forge::frames(&m));
        }
        let handled = 1 + 3 * CAPACITY as u64;
        consumer.wait_stats("the fillers", WAIT, |s| s.get("handler.ok") >= handled);

        // The replay.
        raw.send(&target_frames);
        let stats = consumer.wait_stats("the replay's refusal", WAIT, |s| {
            s.get("rejected.replay_floor") >= 1
        });
        assert_eq!(stats.get("handler.ok"), handled, "{stats}");
        assert!(stats.get("dedupe.entries") <= CAPACITY as u64, "{stats}");
        let printed = lines_before_sentinel(&bus, &raw, &consumer, "filler");
        assert!(
            printed.iter().all(|l| !l.contains(target.msg_id())),
            "the handler ran again for the replayed target: {printed:?}"
        );
    })
}

#[test]
fn messages_outside_the_time_window_are_refused_and_counted() {
    within(LIMIT, || {
        let bus = Bus::start_with(
            bins!(),
            &["c1"],
            "max_message_age = \"10m\"\nclock_skew = \"1m\"",
        );
        let consumer = bus.consumer("c1", &[]);
        let raw = RawPub::connect(&bus.inbound);
        let signer = bus.identity("publisher");
        let now = forge::unix_now();
        let old = forge::message_at(&bus.topic("old"), json!(1), true, Some(&signer), now - 3600);
        let future = forge::message_at(
            &bus.topic("future"),
            json!(2),
            true,
            Some(&signer),
            now + 3600,
        );
        // Just inside the window: accepted.
        let edge = forge::message_at(&bus.topic("edge"), json!(3), true, Some(&signer), now - 600);
        for m in [&old, &future, &edge] {
            raw.send(&forge::frames(m));
        }
        consumer.wait_stdout(edge.msg_id(), WAIT);
        let stats = consumer.wait_stats("the refusals and the ACK", WAIT, |s| {
            s.get("rejected.too_old") + s.get("rejected.from_future") >= 2
                && s.get("ack.entries") >= 1
        });
        assert_eq!(stats.get("rejected.too_old"), 1, "{stats}");
        assert_eq!(stats.get("rejected.from_future"), 1, "{stats}");
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
        assert_eq!(
            stats.get("ack.entries"),
            1,
            "only the message in the window is acked: {stats}"
        );
    })
}

#[test]
fn a_flood_of_copies_of_one_message_is_reacked_only_a_few_times() {
    within(LIMIT, || {
        // Below the raw publisher's send high-water mark (1000), so that
        // none is dropped before it reaches the relay.
        const COPIES: u64 = 900;
        let bus = Bus::start(bins!(), &["c1"]);
        let consumer = bus.consumer("c1", &[]);
        let raw = RawPub::connect(&bus.inbound);
        let m = forge::message(
            &bus.topic("captured"),
            json!({"x": 1}),
            true,
            Some(&bus.identity("publisher")),
        );
        let frames = forge::frames(&m);
        raw.send(&frames);
        consumer.wait_stdout(m.msg_id(), WAIT);
        for _ in 0..COPIES {
            raw.send(&frames);
        }
        let stats = consumer.wait_stats("every copy", WAIT, |s| {
            s.get("duplicate.reacked") + s.get("duplicate.reack_throttled") >= COPIES
        });
        let reacked = stats.get("duplicate.reacked");
        // At full speed the copies arrive within some tens of milliseconds;
        // re-ACKs are spaced 10 ms, 20 ms, 40 ms ... apart. Before, every
        // copy was re-acked.
        assert!(
            reacked <= 20,
            "{reacked} re-ACKs for {COPIES} copies: {stats}"
        );
        assert!(stats.get("ack.entries") <= 21, "{stats}");
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
    })
}

#[test]
fn review_a_body_resigned_by_another_identity_does_not_settle_the_victims_message() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["c1", "mallory"]);
        let consumer = bus.consumer("c1", &[]);
        let raw = RawPub::connect(&bus.inbound);
        let real = forge::message(
            &bus.topic("payment"),
            json!({"pay": 100}),
            true,
            Some(&bus.identity("publisher")),
        );
        let mut copy = real.clone();
        copy.sign(&bus.identity("mallory")).expect("re-sign");
        assert_eq!(copy.signed_part(), real.signed_part());
        raw.send(&forge::frames(&copy));
        let line = consumer.wait_stdout(real.msg_id(), WAIT);
        assert!(line.contains("\"signer\":\"mallory\""), "{line}");
        consumer.wait_stats("mallory's copy acked", WAIT, |s| s.get("ack.entries") >= 1);
        raw.send(&forge::frames(&real));
        let stats = consumer.wait_stats("the real message settled", WAIT, |s| {
            s.get("duplicate.reacked")
                + s.get("duplicate.reack_throttled")
                + s.get("message.delivered")
                >= 2
        });
        assert_eq!(
            stats.get("message.delivered"),
            2,
            "settled as a copy of mallory's: {stats}"
        );
    })
}
