//! Hostile input on the bus: consumers and the publisher drop and count
//! every malformed, unsigned or badly signed frame, and keep working.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::fixture::wait_publisher;
use gilmsg_testkit::raw::RawPub;
use gilmsg_testkit::{forge, within_async, Bus};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const MAX: usize = 4096;
const NAMES: [&str; 2] = ["c1", "c2"];

async fn publish_to_all(bus: &Bus, publisher: &gilmsg::Bus, n: u64) -> gilmsg::Receipt {
    let receipt = publisher
        .publish("ok", json!({"n": n}), &NAMES, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("acknowledged publish {n} failed: {e}"));
    assert_eq!(receipt.topic, bus.topic("ok"));
    assert_eq!(
        receipt
            .acks
            .iter()
            .map(|a| a.recipient.as_str())
            .collect::<Vec<_>>(),
        NAMES
    );
    receipt
}

#[test]
fn garbage_on_the_bus_is_counted_and_everyone_keeps_working() {
    within_async(LIMIT, || async {
        let bus = Bus::start_with(bins!(), &NAMES, &format!("max_message_size = {MAX}"));
        let consumers = bus.consumers(&NAMES, &[]);
        let publisher = bus.publisher();
        publish_to_all(&bus, &publisher, 1).await;

        let raw = RawPub::connect(&bus.inbound);
        let topic = bus.topic("hostile");
        let t = topic.as_bytes();
        let signer = bus.identity("c1");
        let good = |msg| forge::message(&topic, msg, true, Some(&signer));

        // Messages for consumers.
        raw.send(&[b"not-our-prefix".as_slice(), b"\x00\xff"]); // filtered by SUB, harmless
        raw.send(&[t, b"x", b"y"]); // relay.dropped.too_many_frames (never forwarded)
        raw.send(&[t]); // invalid.bad_frame_count
        let mut bad_topic = bus.prefix().into_bytes();
        bad_topic.extend_from_slice(b"\xff\xfe");
        raw.send(&[bad_topic.as_slice(), b"{}"]); // invalid.topic_not_utf8
        raw.send(&[t, b"not json at all"]); // invalid.not_json
        raw.send(&[t, b"[1, 2, 3]"]); // invalid.wrong_shape
        let no_msg_id = json!({"topic": topic, "msg": 1}).to_string();
        raw.send(&[t, no_msg_id.as_bytes()]); // invalid.wrong_shape
        let int_msg_id = json!({"topic": topic, "msg": 1, "msg_id": 7}).to_string();
        raw.send(&[t, int_msg_id.as_bytes()]); // invalid.wrong_shape
        let mismatched = forge::frames(&good(json!({"x": 1})));
        raw.send(&[bus.topic("elsewhere").as_bytes(), &mismatched[1]]); // invalid.topic_mismatch
        raw.send(&forge::frames(&forge::message(
            &topic,
            json!({"x": 2}),
            true,
            None,
        ))); // rejected.unsigned
        raw.send(&forge::frames(&good(json!({"pad": "z".repeat(2 * MAX)})))); // invalid.oversize
        raw.send(&forge::tampered(&good(json!({"amount": 1})), |b| {
            b["msg"] = json!({"amount": 1000});
        })); // rejected.bad_signature

        // ACK-topic frames for the publisher (consumers skip the ACK topic).
        let ack_topic = bus.ack_topic();
        let a = ack_topic.as_bytes();
        raw.send(&[a, b"garbage"]); // ack.invalid.not_json
        raw.send(&[a]); // ack.invalid.bad_frame_count
        raw.send(&[a, b"[]"]); // ack.invalid.wrong_shape
        let not_an_ack = forge::message(&ack_topic, json!("hello"), false, Some(&signer));
        raw.send(&forge::frames(&not_an_ack)); // ack.invalid.wrong_shape
        let big_ack = forge::message(
            &ack_topic,
            json!({"ack_msg_id": "x", "pad": "z".repeat(2 * MAX)}),
            false,
            Some(&signer),
        );
        raw.send(&forge::frames(&big_ack)); // ack.invalid.oversize
        let wrong_body_topic = json!({"topic": topic, "msg": {"ack_msg_id": "x"}, "msg_id": "m"});
        raw.send(&[a, wrong_body_topic.to_string().as_bytes()]); // ack.invalid.topic_mismatch
                                                                 // A longer topic that the ACK subscription's prefix match lets through;
                                                                 // consumers see it as an ordinary (unsigned) message.
        let longer = format!("{ack_topic}x");
        raw.send(&forge::frames(&forge::message(
            &longer,
            json!({"ack_msg_id": "x"}),
            false,
            None,
        ))); // publisher: ack.other_topic; consumers: rejected.unsigned

        for c in &consumers {
            let stats = c.wait_stats("the hostile frames", Duration::from_secs(10), |s| {
                s.sum("invalid.") + s.sum("rejected.") >= 11
            });
            let expect = [
                ("invalid.bad_frame_count", 1),
                ("invalid.topic_not_utf8", 1),
                ("invalid.not_json", 1),
                ("invalid.wrong_shape", 3),
                ("invalid.topic_mismatch", 1),
                ("invalid.oversize", 1),
                ("rejected.unsigned", 2),
                ("rejected.bad_signature", 1),
            ];
            for (name, n) in expect {
                assert_eq!(stats.get(name), n, "{}: {name} in {stats}", c.name);
            }
            assert_eq!(stats.get("message.delivered"), 1, "{}: {stats}", c.name);
            assert_eq!(stats.get("handler.ok"), 1, "{}: {stats}", c.name);
        }
        let stats = wait_publisher(
            &publisher,
            "the hostile ACK frames",
            Duration::from_secs(10),
            |s| s.sum("ack.invalid.") >= 6 && s.get("ack.other_topic") >= 1,
        )
        .await;
        let expect = [
            ("ack.invalid.not_json", 1),
            ("ack.invalid.bad_frame_count", 1),
            ("ack.invalid.wrong_shape", 2),
            ("ack.invalid.oversize", 1),
            ("ack.invalid.topic_mismatch", 1),
            ("ack.other_topic", 1),
        ];
        for (name, n) in expect {
            assert_eq!(stats.get(name), n, "publisher: {name} in {stats}");
        }

        let relay = bus.relay_stats();
        assert_eq!(relay.get("relay.dropped.too_many_frames"), 1, "{relay}");

        // Everyone still works.
        let receipt = publish_to_all(&bus, &publisher, 2).await;
        for c in &consumers {
            c.wait_stdout(&receipt.msg_id, Duration::from_secs(5));
        }
    })
}

/// A publish that must succeed within 3 s (the hard-limit tests).
async fn publish_quickly(publisher: &gilmsg::Bus, recipients: &[&str]) -> gilmsg::Receipt {
    publisher
        .publish(
            "ok",
            json!({"after": "huge"}),
            recipients,
            Duration::from_secs(3),
        )
        .await
        .unwrap_or_else(|e| panic!("the bus did not recover from one huge message: {e}"))
}

// Regression: libzmq treats a message over ZMQ_MAXMSGSIZE as a protocol
// error and closes the connection *without reconnecting*. The cap used to be
// set on every socket, including the consumer's SUB and the publisher's ACK
// SUB, which connect to the relay; one such message relayed by a relay with a
// larger cap cut the receiver off the bus for good. Now only sockets that
// bind (the relay's inbound) carry the hard cap; receivers drop oversize
// messages themselves and count them.
#[test]
fn a_message_above_the_socket_hard_limit_does_not_cut_off_consumers() {
    within_async(LIMIT, || async {
        let bus = Bus::start_with(bins!(), &NAMES, &format!("max_message_size = {MAX}"));
        let consumers = bus.consumers(&NAMES, &[]);
        let publisher = bus.publisher();
        publish_to_all(&bus, &publisher, 1).await;
        let raw = RawPub::connect(&bus.inbound);
        // Over the consumers' 64 KiB hard cap, under the relay's.
        raw.send(&[bus.topic("huge").as_bytes(), &vec![b' '; 200_000]]);
        let receipt = publish_quickly(&publisher, &NAMES).await;
        for c in &consumers {
            c.wait_stdout(&receipt.msg_id, Duration::from_secs(5));
        }
    })
}

#[test]
fn a_message_above_the_socket_hard_limit_on_the_ack_topic_does_not_deafen_the_publisher() {
    within_async(LIMIT, || async {
        let bus = Bus::start_with(bins!(), &NAMES, &format!("max_message_size = {MAX}"));
        let _consumers = bus.consumers(&NAMES, &[]);
        let publisher = bus.publisher();
        publish_to_all(&bus, &publisher, 1).await;
        let raw = RawPub::connect(&bus.inbound);
        raw.send(&[bus.ack_topic().as_bytes(), &vec![b' '; 200_000]]);
        publish_quickly(&publisher, &NAMES).await;
    })
}

#[test]
fn control_characters_surrogates_and_deep_bodies_are_refused_each_with_its_reason() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["c1"]);
        let consumer = bus.consumer_with("c1", &bus.config_path, "debug", &[]);
        let raw = RawPub::connect(&bus.inbound);
        let signer = bus.identity("publisher");
        let topic = bus.topic("hostile");
        // Validly signed, so that nothing but the characters is wrong.
        let signed = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let m = forge::message(&topic, json!({"x": 1}), true, Some(&signer));
            forge::resigned(&m, &signer, edit)
        };
        // Control characters in msg_id (NUL, ESC) and in the topic (ESC):
        // nothing of them may reach stdout or an --exec command line. (The
        // library refuses to build such messages; a hostile peer signs them
        // by hand.)
        raw.send(&signed(&|b| {
            b.insert("msg_id".into(), json!("2026-evil\u{0}id"));
        }));
        raw.send(&signed(&|b| {
            b.insert("msg_id".into(), json!("2026-\u{1b}[31mred"));
        }));
        let escape_topic = format!("{topic}.\u{1b}[2J");
        raw.send(&signed(&|b| {
            b.insert("topic".into(), json!(escape_topic));
        }));
        // A lone surrogate (Python accepts it) and a body deeper than the
        // decoder's bound (Python's json goes to about 990 levels).
        let lone =
            format!(r#"{{"topic":"{topic}","msg":"\ud800","msg_id":"2026-x","timestamp":0}}"#);
        raw.send(&[topic.as_bytes(), lone.as_bytes()]);
        let deep = format!(
            r#"{{"topic":"{topic}","msg_id":"2026-y","msg":{}1{}}}"#,
            "[".repeat(600),
            "]".repeat(600)
        );
        raw.send(&[topic.as_bytes(), deep.as_bytes()]);

        let stats = consumer.wait_stats("the refusals", Duration::from_secs(10), |s| {
            s.sum("invalid.") >= 5
        });
        let expect = [
            ("invalid.control_char_in_msg_id", 2),
            ("invalid.control_char_in_topic", 1),
            ("invalid.lone_surrogate", 1),
            ("invalid.too_deep", 1),
            ("invalid.not_json", 0),
            ("message.delivered", 0),
        ];
        for (name, n) in expect {
            assert_eq!(stats.get(name), n, "{name} in {stats}");
        }
        // Each refusal said why at debug level, escaped, never raw.
        let stderr = consumer.stderr().join("\n");
        for reason in [
            "invalid.control_char_in_msg_id",
            "invalid.control_char_in_topic",
            "invalid.lone_surrogate",
            "invalid.too_deep",
        ] {
            assert!(
                stderr.contains(reason),
                "no log line for {reason}: {stderr}"
            );
        }
        assert!(!stderr.contains('\u{0}'), "{stderr}");
        assert!(!stderr.contains("\u{1b}[31m"), "{stderr}");
        assert!(!stderr.contains("\u{1b}[2J"), "{stderr}");
        assert_eq!(
            stats.sum("rejected."),
            0,
            "only the characters were wrong: {stats}"
        );
        assert_eq!(consumer.next_stdout(Duration::from_millis(200)), None);
    })
}

/// A consumer that takes a burst of messages off its socket at once checks
/// their signatures in one batch; each message still gets the verdict it
/// would get alone, however the burst is split: forged messages among good
/// ones are refused alone, the good ones around them delivered, a copy
/// sent twice delivered once. (Pausing the consumers to force one burst
/// lost the burst now and then; batch verdicts are pinned in
/// `crates/crypto/tests/batch.rs`.)
#[test]
fn forged_messages_in_a_burst_are_refused_alone_and_their_neighbours_delivered() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &NAMES);
        let consumers = bus.consumers(&NAMES, &[]);
        let publisher = bus.publisher();
        publish_to_all(&bus, &publisher, 1).await;
        let raw = RawPub::connect(&bus.inbound);
        let topic = bus.topic("burst");
        let signer = bus.identity("c1");
        let good: Vec<_> = (0..8)
            .map(|n| forge::message(&topic, json!({"n": n}), true, Some(&signer)))
            .collect();
        let forged = |n: usize| {
            forge::tampered(&good[n], |b| {
                b["msg"] = json!({"n": 100 + n});
            })
        };
        let unsigned = forge::message(&topic, json!({"n": -1}), true, None);
        let burst = [
            forge::frames(&good[0]),
            forge::frames(&good[1]),
            forged(1),
            forge::frames(&good[2]),
            forge::frames(&unsigned),
            forge::frames(&good[3]),
            forge::frames(&good[0]),
            forged(4),
            forge::frames(&good[4]),
            forge::frames(&good[5]),
            forge::frames(&good[6]),
            forge::frames(&good[7]),
        ];
        for frames in &burst {
            raw.send(frames);
        }
        let sent = burst.len() as u64;

        for c in &consumers {
            // Every message of the burst decided (ACKs of the other
            // consumer count as received too).
            let stats = c.wait_stats("the burst", Duration::from_secs(10), |s| {
                s.get("message.delivered") + s.sum("rejected.") + s.sum("duplicate.") > sent
            });
            assert_eq!(
                stats.get("rejected.bad_signature"),
                2,
                "{}: {stats}",
                c.name
            );
            assert_eq!(stats.get("rejected.unsigned"), 1, "{}: {stats}", c.name);
            assert_eq!(stats.sum("duplicate."), 1, "{}: {stats}", c.name);
            // The first publish and the eight good ones.
            assert_eq!(stats.get("message.delivered"), 9, "{}: {stats}", c.name);
            for message in &good {
                c.wait_stdout(message.msg_id(), Duration::from_secs(5));
            }
        }
    })
}
