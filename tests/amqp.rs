//! Acknowledged publishing over AMQP, with our real binaries
//! (`gilmsg-consumer` recipients, the library publishing) on a real
//! RabbitMQ node the test binary starts once and shares; each test has its
//! own vhost (`gilmsg_testkit::amqp`).
//!
//! The acknowledged-publish tests of the ZeroMQ side, on AMQP: 3 recipients,
//! one offline named exactly and served later by its durable queue (the
//! late ACK counted), every forged ACK class refused, a failing handler
//! never acked and given up after its redeliveries, a redelivery reaching
//! the handler once. Plus what only a broker has: an unroutable message
//! fails at once, a broker restart during a publish (no false positive), a
//! consumer killed between its handler and `basic.ack`, TLS with client
//! certificates.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use gilmsg_proto::ack::AckBody;
use gilmsg_proto::Envelope;
use gilmsg_testkit::amqp::{self, AmqpBus, RawPeer};
use gilmsg_testkit::rabbit::Rabbit;
use gilmsg_testkit::{bins, forge, within_async, PUBLISHER};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(20);

/// Polls `done` every 20 ms for at most `limit` (a readiness condition,
/// not a sleep standing in for one).
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn msg_id_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["msg_id"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn three_recipients_acknowledge_a_publish() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "three", &["a", "b", "c"]) else {
            return;
        };
        let consumers: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| bus.consumer(n, &[]))
            .collect();
        let publisher = bus.publisher();
        let receipt = publisher
            .publish(
                "greeting",
                json!({"hello": "world", "n": 1.5}),
                &["a", "b", "c"],
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(receipt.acks.len(), 3);
        assert!(receipt.acks.iter().all(|a| a.digest_checked));
        assert_eq!(receipt.topic, bus.topic("greeting"));
        for c in &consumers {
            let line = c.wait_stdout(&receipt.msg_id, WAIT);
            assert!(line.contains("\"hello\":\"world\""), "{line}");
        }
        assert_eq!(publisher.stats().get("publish.acked"), 1);
        // The broker's confirm may come after the ACKs (it confirms a
        // persistent message once it is on disk).
        until("the broker's confirm", WAIT, || {
            publisher.stats().get("publish.confirmed") >= 1
        })
        .await;
        assert_eq!(
            publisher.stats().get("ack.received"),
            3,
            "{}",
            publisher.stats()
        );
        // ACKs are routed to their publisher alone: a second publisher's
        // message (every consumer of the topic ACKs it, named or not)
        // brings its three ACKs to it and none to the first.
        let other = bus.publisher();
        let r2 = other
            .publish("greeting", json!({"k": 2}), &["a"], WAIT)
            .await
            .unwrap();
        assert_eq!(r2.acks.len(), 1);
        until("the other ACKs", WAIT, || {
            other.stats().get("ack.received") == 3
        })
        .await;
        assert_eq!(
            publisher.stats().get("ack.received"),
            3,
            "{}",
            publisher.stats()
        );
        for c in consumers {
            let stats = c.wait_stats("two ACKs confirmed", WAIT, |s| s.get("ack.confirmed") >= 2);
            assert_eq!(stats.get("handler.ok"), 2, "{stats}");
            c.stop();
        }
    });
}

#[test]
fn an_offline_recipient_is_named_and_its_durable_queue_delivers_later() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "offline", &["up", "down"]) else {
            return;
        };
        // `down` runs once so that its durable queue exists, then stops.
        bus.consumer("down", &[]).stop();
        let up = bus.consumer("up", &[]);
        let publisher = bus.publisher();
        let err = publisher
            .publish(
                "work",
                json!({"job": 7}),
                &["up", "down"],
                Duration::from_secs(2),
            )
            .await
            .expect_err("down is offline");
        let t = err.as_timeout().expect("a timeout");
        assert_eq!(t.missing, ["down"]);
        assert_eq!(t.acked_names(), ["up"]);
        assert_eq!(
            t.broker,
            Some(gilmsg::BrokerVerdict::ConfirmedRouted),
            "{t}"
        );
        assert!(err.to_string().contains("routed it to a queue"), "{err}");
        // `down` comes back: its queue kept the message; the late ACK
        // reaches the publisher (its ACK queue lives as long as it) and is
        // counted as an ACK for a message no longer in flight.
        let down = bus.consumer("down", &[]);
        let line = down.wait_stdout("\"job\":7", WAIT);
        assert_eq!(msg_id_of(&line), t.msg_id);
        until("the late ACK", WAIT, || {
            publisher.stats().get("ack.unknown_msg_id") >= 1
        })
        .await;
        let stats = publisher.stats();
        assert_eq!(stats.get("ack.received"), 2, "{stats}");
        assert_eq!(stats.get("publish.acked"), 0, "{stats}");
        up.stop();
        down.stop();
    });
}

/// What a forged ACK must leave: a timeout naming the recipient, the ACK
/// seen and refused under `counter`, nothing counted.
fn assert_refused(
    what: &str,
    result: gilmsg::Result<gilmsg::Receipt>,
    stats: &gilmsg::Stats,
    recipient: &str,
    counter: &str,
) {
    let err = match result {
        Ok(receipt) => panic!("{what}: a forged ACK was counted: {receipt:?}; stats {stats}"),
        Err(e) => e,
    };
    let timeout = err
        .as_timeout()
        .unwrap_or_else(|| panic!("{what}: expected a timeout, got {err}"));
    assert_eq!(timeout.missing, [recipient], "{what}: {err}");
    assert!(timeout.acked.is_empty(), "{what}: {err}");
    assert!(
        stats.get("ack.received") >= 1,
        "{what}: the ACK never arrived: {stats}"
    );
    assert!(
        stats.get(counter) >= 1,
        "{what}: {counter} not counted: {stats}"
    );
    assert_eq!(stats.get("ack.counted"), 0, "{what}: {stats}");
}

type Forgery = Box<dyn Fn(&AmqpBus, &Envelope) -> Vec<Vec<u8>>>;

fn ack_by(bus: &AmqpBus, body: AckBody, signer: &str) -> Vec<Vec<u8>> {
    forge::frames(&forge::ack(
        &bus.ack_topic(),
        body,
        Some(&bus.identity(signer)),
    ))
}

/// The honest ACK of the message, signed by `signer` (honest or not, its
/// certificate valid or not).
fn honest_by(signer: &'static str) -> Forgery {
    Box::new(move |bus, m| {
        forge::frames(&forge::honest_ack(
            &bus.ack_topic(),
            m,
            &bus.identity(signer),
        ))
    })
}

#[test]
fn every_forged_ack_class_is_refused() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "forged", &["rcpt", "intruder", "gone", "old"])
        else {
            return;
        };
        bus.revoke("gone");
        bus.issue_expired("old");
        let other_ca = tempfile::tempdir().unwrap();
        gilmsg_testkit::fixture::ed25519_pki(other_ca.path(), "impostor-ca", &["rcpt"]).unwrap();
        let impostor = gilmsg_crypto::Identity::load(other_ca.path(), "rcpt").unwrap();
        // The test is the recipient: a raw queue bound to the topic.
        let peer = RawPeer::connect(&bus.url).await;
        let mut inbox = peer.listen("fake-recipient", &bus.topic("forged")).await;
        let honest = honest_by("rcpt");
        let classes: Vec<(&str, &str, bool, Forgery, &str)> = vec![
            (
                "signed by the wrong signer's view",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    let body = AckBody {
                        ack_signer: Some("intruder".into()),
                        ..AckBody::for_message(m).unwrap()
                    };
                    ack_by(bus, body, "rcpt")
                }),
                "ack.signer_mismatch",
            ),
            (
                "no digest to a strict publisher",
                "rcpt",
                true,
                Box::new(|bus, m| {
                    let body = AckBody {
                        ack_msg_id: m.msg_id().into(),
                        ack_digest: None,
                        ack_signer: None,
                    };
                    ack_by(bus, body, "rcpt")
                }),
                "ack.digest_missing",
            ),
            (
                "by a valid identity that is not a recipient",
                "rcpt",
                false,
                honest_by("intruder"),
                "ack.not_a_recipient",
            ),
            (
                "by a revoked identity",
                "gone",
                false,
                honest_by("gone"),
                "ack.rejected.revoked_certificate",
            ),
            (
                "by a certificate of another CA",
                "rcpt",
                false,
                Box::new(move |bus, m| {
                    forge::frames(&forge::honest_ack(&bus.ack_topic(), m, &impostor))
                }),
                "ack.rejected.untrusted_certificate",
            ),
            (
                "by an expired certificate",
                "old",
                false,
                honest_by("old"),
                "ack.rejected.expired_certificate",
            ),
            (
                "altered after signing",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    let ack = forge::honest_ack(&bus.ack_topic(), m, &bus.identity("rcpt"));
                    forge::tampered(&ack, |body| {
                        body.insert("username".into(), json!("mallory"));
                    })
                }),
                "ack.rejected.bad_signature",
            ),
            (
                "its digest altered after signing",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    let ack = forge::honest_ack(&bus.ack_topic(), m, &bus.identity("rcpt"));
                    forge::tampered(&ack, |body| {
                        body["msg"]["ack_digest"] = json!("00".repeat(32));
                    })
                }),
                "ack.rejected.bad_signature",
            ),
            (
                "for another msg_id",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    let body = AckBody {
                        ack_msg_id: "2026-not-this-one".into(),
                        ..AckBody::for_message(m).unwrap()
                    };
                    ack_by(bus, body, "rcpt")
                }),
                "ack.unknown_msg_id",
            ),
            (
                "for another body",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    let other = forge::message(m.topic(), json!({"pay": 1_000_000}), true, None);
                    let body = AckBody {
                        ack_msg_id: m.msg_id().into(),
                        ..AckBody::for_message(&other).unwrap()
                    };
                    ack_by(bus, body, "rcpt")
                }),
                "ack.digest_mismatch",
            ),
            (
                "unsigned",
                "rcpt",
                false,
                Box::new(|bus, m| {
                    forge::frames(&forge::ack(
                        &bus.ack_topic(),
                        AckBody::for_message(m).unwrap(),
                        None,
                    ))
                }),
                "ack.rejected.unsigned",
            ),
        ];
        // The positive control first: the same harness, the honest ACK.
        let all = std::iter::once(("honest (control)", "rcpt", false, honest, "ack.counted"))
            .chain(classes);
        for (what, recipient, strict, reply, counter) in all {
            let mut config = bus.config();
            config.require_ack_digest = strict;
            let publisher = bus.publisher_from(&config);
            let handle = publisher.clone();
            let recipient_owned = recipient.to_owned();
            let task = tokio::spawn(async move {
                handle
                    .publish(
                        "forged",
                        json!({"pay": 100}),
                        &[recipient_owned.as_str()],
                        Duration::from_secs(1),
                    )
                    .await
            });
            let delivery = amqp::next_delivery(&mut inbox, WAIT).await;
            let message = amqp::envelope_of(&delivery);
            assert!(message.wants_ack(), "{what}");
            let reply_to = delivery
                .properties
                .reply_to()
                .as_ref()
                .expect("reply_to")
                .to_string();
            let (body, properties) = amqp::amqp_form(&reply(&bus, &message));
            peer.publish(&reply_to, &body, properties).await;
            let result = task.await.unwrap();
            let stats = publisher.stats();
            if what.starts_with("honest") {
                let receipt = result.unwrap_or_else(|e| panic!("the control: {e}"));
                assert!(receipt.acks[0].digest_checked);
            } else {
                assert_refused(what, result, &stats, recipient, counter);
            }
            publisher.close().await;
        }
    });
}

#[test]
fn a_failing_handler_is_never_acked_and_given_up_after_its_redeliveries() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start_with(bins!(), "failing", &["flaky"], "max_redeliveries = 2")
        else {
            return;
        };
        let flaky = bus.consumer("flaky", &["--exec", "exit 1"]);
        let publisher = bus.publisher();
        let err = publisher
            .publish("task", json!({"x": 1}), &["flaky"], Duration::from_secs(3))
            .await
            .expect_err("never acked");
        assert_eq!(err.as_timeout().expect("timeout").missing, ["flaky"]);
        let stats = flaky.wait_stats("the give-up", WAIT, |s| s.get("handler.gave_up") >= 1);
        // One delivery and two redeliveries, then dead-lettered or dropped.
        assert_eq!(stats.get("handler.failed"), 3, "{stats}");
        assert_eq!(stats.get("handler.requeued"), 2, "{stats}");
        assert_eq!(stats.get("handler.ok"), 0, "{stats}");
        assert_eq!(stats.get("ack.sent"), 0, "{stats}");
        assert_eq!(
            publisher.stats().get("ack.received"),
            0,
            "{}",
            publisher.stats()
        );
        flaky.stop();
    });
}

#[test]
fn a_redelivered_copy_reaches_the_handler_once_and_is_acked_again() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "redelivery", &["once"]) else {
            return;
        };
        let once = bus.consumer("once", &[]);
        // A spy queue keeps a copy of what the publisher sends.
        let spy = RawPeer::connect(&bus.url).await;
        let mut copies = spy.listen("spy", &bus.topic("job")).await;
        let publisher = bus.publisher();
        let receipt = publisher
            .publish("job", json!({"n": 1}), &["once"], WAIT)
            .await
            .unwrap();
        once.wait_stdout(&receipt.msg_id, WAIT);
        let copy = amqp::next_delivery(&mut copies, WAIT).await;
        once.wait_stats("its ACK confirmed", WAIT, |s| s.get("ack.confirmed") >= 1);
        // A consumer re-ACKs a copy at most every 10 ms, 20, 40... 500 ms
        // (`duplicate.reack_throttled` otherwise, as for a burst of
        // re-sends): the copy comes after the longest of those intervals.
        // A deliberate age, not a wait for readiness.
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The very same message comes again (as a broker redelivers after a
        // lost channel): re-acked, not handled again.
        spy.publish(
            &copy.routing_key.to_string(),
            &copy.data,
            copy.properties.clone(),
        )
        .await;
        let deadline = Instant::now() + WAIT;
        while publisher.stats().get("ack.unknown_msg_id") < 1 {
            assert!(
                Instant::now() < deadline,
                "no re-ACK; publisher {}; consumer {}",
                publisher.stats(),
                once.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = once.wait_stats("the duplicate", WAIT, |s| s.get("duplicate.reacked") >= 1);
        assert_eq!(stats.get("handler.ok"), 1, "{stats}");
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
        assert_eq!(once.next_stdout(Duration::from_millis(300)), None);
        once.stop();
    });
}

#[test]
fn an_unroutable_message_fails_at_once() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "unroutable", &["nobody"]) else {
            return;
        };
        let publisher = bus.publisher();
        let started = Instant::now();
        let err = publisher
            .publish("nowhere", json!({}), &["nobody"], Duration::from_secs(30))
            .await
            .expect_err("no queue is bound");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, gilmsg::Error::Unroutable { .. }), "{err:?}");
        assert!(err.to_string().contains("no queue would receive"), "{err}");
        assert_eq!(publisher.stats().get("publish.unroutable"), 1);
        // The same from the command line.
        let config = bus.config_path.display().to_string();
        let started = Instant::now();
        let out = bus.logger(
            &[
                "--config",
                &config,
                "--certname",
                PUBLISHER,
                "--message",
                "x",
                "--recipients",
                "nobody",
                "--ack-timeout",
                "30s",
            ],
            "",
            WAIT,
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_ne!(out.status, Some(0), "{out:?}");
        assert!(out.stderr.contains("no queue would receive"), "{out:?}");
    });
}

#[test]
fn a_broker_restart_during_a_publish_gives_no_false_positive() {
    within_async(LIMIT, || async {
        // Its own node: restarting the shared one would disturb the others.
        if !amqp::available() {
            return;
        }
        let own: &'static Rabbit = Box::leak(Box::new(
            Rabbit::start(None, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}")),
        ));
        let bus = AmqpBus::on(
            own,
            bins!(),
            "restart",
            &["r", "s"],
            "max_message_age = \"10m\"",
        );
        let r = bus.consumer("r", &[]);
        // `s` stays up through the restart: it must reconnect and neither
        // lose nor double-count a message.
        let s = bus.consumer("s", &[]);
        let publisher = bus.publisher();
        publisher
            .publish("w", json!({"warm": true}), &["r"], WAIT)
            .await
            .unwrap();
        // The recipient stops; a publish waits for it; the broker is killed
        // and comes back meanwhile.
        r.stop();
        let handle = publisher.clone();
        let publish = tokio::spawn(async move {
            handle
                .publish(
                    "w",
                    json!({"during": "restart"}),
                    &["r"],
                    Duration::from_secs(60),
                )
                .await
        });
        until("the broker's confirm", WAIT, || {
            publisher.stats().get("publish.confirmed") >= 2
        })
        .await;
        own.restart(Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
        // Nobody has handled it: it must not have succeeded.
        assert!(
            !publish.is_finished(),
            "a publish completed with its recipient down"
        );
        until(
            "the publisher's reconnection",
            Duration::from_secs(60),
            || publisher.stats().get("connection.reconnected") >= 1,
        )
        .await;
        assert!(
            !publish.is_finished(),
            "a publish completed with its recipient down"
        );
        let again = bus.consumer("r", &[]);
        let receipt = publish
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("after reconnect: {e}"));
        assert_eq!(receipt.acks.len(), 1);
        again.wait_stdout(&receipt.msg_id, WAIT);
        let after = publisher
            .publish("w", json!({"after": "restart"}), &["s"], WAIT)
            .await
            .unwrap_or_else(|e| panic!("s after the restart: {e}"));
        s.wait_stdout(&after.msg_id, WAIT);
        let stats = s.wait_stats("s's three messages", WAIT, |st| st.get("handler.ok") >= 3);
        assert!(stats.get("connection.reconnected") >= 1, "{stats}");
        assert_eq!(stats.get("handler.ok"), 3, "{stats}");
        assert_eq!(stats.get("message.delivered"), 3, "{stats}");
        s.stop();
        again.stop();
        publisher.close().await;
        own.stop_node();
    });
}

#[test]
fn a_consumer_killed_between_its_handler_and_basic_ack_is_redelivered() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "killed", &["worker"]) else {
            return;
        };
        let runs = bus.dir().join("runs");
        // The handler records its run, then freezes the consumer (its
        // parent) before exiting 0: the consumer has a successful handler
        // and has neither published the ACK nor sent basic.ack when the
        // test kills it.
        let freeze = format!(
            "echo run >> {:?}; kill -STOP $PPID; exit 0",
            runs.display().to_string()
        );
        let worker = bus.consumer("worker", &["--exec", &freeze]);
        let publisher = bus.publisher();
        let handle = publisher.clone();
        let publish = tokio::spawn(async move {
            handle
                .publish(
                    "job",
                    json!({"once": true}),
                    &["worker"],
                    Duration::from_secs(60),
                )
                .await
        });
        let count = || {
            std::fs::read_to_string(&runs)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        until("the first handler run", WAIT, || count() == 1).await;
        let pid = nix::unistd::Pid::from_raw(worker.pid() as i32);
        until("the consumer frozen", WAIT, || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('T'))
            })
        })
        .await;
        worker.kill();
        assert!(
            !publish.is_finished(),
            "acked by a consumer that never sent its ACK"
        );
        // The broker requeues the unacked delivery; a new consumer handles
        // it (at least once: a crash before basic.ack repeats the handler)
        // and its ACK completes the publish.
        let again = bus.consumer(
            "worker",
            &[
                "--exec",
                &format!("echo run >> {:?}", runs.display().to_string()),
            ],
        );
        let receipt = publish
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("after the crash: {e}"));
        assert_eq!(receipt.acks.len(), 1);
        assert_eq!(count(), 2);
        let stats = again.wait_stats("the ACK confirmed", WAIT, |s| s.get("ack.confirmed") >= 1);
        assert_eq!(stats.get("handler.ok"), 1, "{stats}");
        again.stop();
    });
}

#[test]
fn tls_with_client_certificates() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "tls", &["ledger"]) else {
            return;
        };
        let url = bus
            .node
            .tls_url(&bus.vhost)
            .expect("the shared node listens with TLS");
        let tls = amqp::shared_tls_dir();
        let write = |name: &str, client: Option<&str>| {
            let client = client.map_or(String::new(), |c| {
                format!(
                    "keyfile = {:?}\ncertfile = {:?}\n",
                    tls.join(format!("{c}.key")).display().to_string(),
                    tls.join(format!("{c}.crt")).display().to_string()
                )
            });
            let path = bus.config_file(name, "");
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace(&bus.url, &url);
            std::fs::write(
                &path,
                format!(
                    "{text}\n[tls]\nca_cert = {:?}\n{client}",
                    tls.join("ca.crt").display().to_string()
                ),
            )
            .unwrap();
            path
        };
        let ledger = bus.consumer_with(
            "ledger",
            &write("tls-ledger.toml", Some("ledger")),
            "warn",
            &[],
        );
        let publisher_config =
            gilmsg::Config::from_path(&write("tls-pub.toml", Some("publisher"))).unwrap();
        let publisher = bus.publisher_from(&publisher_config);
        let receipt = publisher
            .publish("secure", json!({"tls": true}), &["ledger"], WAIT)
            .await
            .unwrap();
        assert_eq!(receipt.acks.len(), 1);
        ledger.wait_stdout(&receipt.msg_id, WAIT);
        // Without a client certificate the broker refuses the handshake.
        let no_cert = gilmsg::Config::from_path(&write("no-cert.toml", None)).unwrap();
        let err = gilmsg::Bus::builder(&no_cert)
            .certname(PUBLISHER)
            .build()
            .expect_err("no client certificate");
        assert!(
            err.to_string().contains("cannot connect to the broker"),
            "{err}"
        );
        ledger.stop();
    });
}

#[test]
fn the_tools_work_unchanged_on_amqp() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "tools", &["j", "x", "p"]) else {
            return;
        };
        let config = bus.config_path.display().to_string();
        // --json, --exec (the whole signed message on stdin), and the plain
        // print, each a real gilmsg-consumer.
        let j = bus.consumer("j", &[]);
        let handled = bus.dir().join("handled");
        let exec = format!("cat >> {0:?}; echo >> {0:?}", handled.display().to_string());
        let x = bus.consumer("x", &["--exec", &exec]);
        let mut command = bus.bins().consumer_command(&bus.config_path, "p", &[]);
        command.env("GILMSG_LOG", "warn");
        let p = bus.spawn("p", command);
        p.expect_stderr("gilmsg-consumer: ready", gilmsg_testkit::READY_TIMEOUT);
        // gilmsg-logger publishes and prints the receipt.
        let out = bus.logger(
            &[
                "--config",
                &config,
                "--certname",
                PUBLISHER,
                "--message",
                "hello amqp",
                "--recipients",
                "j,x,p",
                "--print-receipt",
            ],
            "",
            WAIT,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let receipt: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(
            receipt["acks"].as_array().map(Vec::len),
            Some(3),
            "{receipt}"
        );
        let msg_id = receipt["msg_id"].as_str().expect("msg_id").to_owned();
        let line = j.wait_stdout(&msg_id, WAIT);
        let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(printed["body"]["msg"]["log"], "hello amqp", "{line}");
        assert_eq!(printed["signer"], PUBLISHER, "{line}");
        let plain = p
            .wait_stdout(&msg_id, WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            plain.contains("signer=publisher") && plain.contains("hello amqp"),
            "{plain}"
        );
        let text = std::fs::read_to_string(&handled).unwrap();
        let whole: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(whole["msg_id"], msg_id.as_str());
        assert_eq!(whole["msg"]["log"], "hello amqp");
        assert!(
            whole["signature"].is_string() && whole["certificate"].is_string(),
            "{whole}"
        );
        // --json-input, several messages from stdin, each acknowledged.
        let out = bus.logger(
            &[
                "--config",
                &config,
                "--certname",
                PUBLISHER,
                "--json-input",
                "--topic",
                "batch",
                "--recipients",
                "j",
                "--print-receipt",
            ],
            "{\"n\": 1}\n{\"n\": 2}\n",
            WAIT,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
        j.wait_stdout("\"n\":2", WAIT);
        let stats = x.wait_stats("its ACKs confirmed", WAIT, |s| s.get("ack.confirmed") >= 3);
        assert_eq!(stats.get("handler.ok"), 3, "{stats}");
        j.stop();
        x.stop();
    });
}

#[test]
fn the_blocking_library_works_on_amqp() {
    gilmsg_testkit::within(LIMIT, || {
        let Some(bus) = AmqpBus::start(bins!(), "blocking", &["c1", "offline"]) else {
            return;
        };
        let c1 = bus.consumer("c1", &[]);
        let publisher = gilmsg::blocking::Bus::from_async(bus.publisher()).expect("blocking bus");
        let receipt = publisher
            .publish("blocking", json!({"n": 1}), &["c1"], WAIT)
            .expect("c1 acks");
        assert_eq!(receipt.acks[0].recipient, "c1");
        let err = publisher
            .publish(
                "blocking",
                json!({"n": 2}),
                &["c1", "offline"],
                Duration::from_millis(800),
            )
            .expect_err("offline never acks");
        gilmsg_testkit::timed_out(&err, &["offline"], &["c1"]);
        assert_eq!(publisher.stats().get("publish.acked"), 1);
        publisher.close();
        c1.stop();
    })
}

#[test]
fn the_demo_runs_on_a_rabbitmq_it_starts_itself() {
    gilmsg_testkit::within(LIMIT, || {
        if !amqp::available() {
            return;
        }
        let demo = std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-demo"));
        let out = gilmsg_testkit::run_tool(
            demo,
            &["--transport", "amqp"],
            "",
            Duration::from_secs(150),
            &gilmsg_testkit::guard::current(),
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        for needle in [
            "A RabbitMQ node on 127.0.0.1",
            "acked by consumer-c",
            "missing: [\"consumer-d\"]",
            "routed it to a queue",
            "demo finished",
        ] {
            assert!(
                out.stdout.contains(needle),
                "{needle:?} not in {}",
                out.stdout
            );
        }
        // The node it started is gone: its name is in the output.
        let node = out
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("node "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the node's name")
            .to_owned();
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&ps.stdout).contains(&node),
            "{node} still runs"
        );
    })
}

/// A directory for a fedora-messaging process: its config (`fm.toml`,
/// fedora-messaging's own format) and the callback module `fm_record`,
/// which validates each message and appends what it saw as a JSON line to
/// `$GILMSG_FM_OUT`.
fn fedora_messaging_dir(bus: &AmqpBus, binding_key: &str) -> std::path::PathBuf {
    let dir = bus.dir().join("fedora-messaging");
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::fs::write(
        dir.join("fm.toml"),
        format!(
            r#"amqp_url = "{url}"
publish_exchange = "amq.topic"
topic_prefix = ""
callback = "fm_record:record"

[client_properties]
app = "gilmsg interop test"

[queues.fm_interop]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "fm_interop"
exchange = "amq.topic"
routing_keys = ["{binding_key}"]

[qos]
prefetch_size = 0
prefetch_count = 25
"#,
            url = bus.url
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("fm_record.py"),
        r#"import json, os

def record(message):
    message.validate()  # fedora-messaging's schema check (get_message ran it too)
    with open(os.environ["GILMSG_FM_OUT"], "a") as out:
        out.write(json.dumps({
            "topic": message.topic,
            "id": message.id,
            "body": message.body,
            "class": type(message).__module__ + "." + type(message).__name__,
            "schema_header": message._headers.get("fedora_messaging_schema"),
            "severity": message.severity,
            "sent_at": message._headers.get("sent-at"),
            "gilmsg_envelope": "gilmsg_envelope" in message._headers,
        }) + "\n")
"#,
    )
    .unwrap();
    dir
}

#[test]
fn fedora_messaging_consume_receives_our_messages() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "fm-consume", &["ledger"]) else {
            return;
        };
        let Some(venv) = gilmsg_testkit::python::fedora_messaging_venv() else {
            return;
        };
        let topic = bus.topic("interop");
        let dir = fedora_messaging_dir(&bus, &topic);
        // The queue fedora-messaging's config declares, declared first so
        // that our message waits in it whatever the peer's start-up time.
        RawPeer::connect(&bus.url)
            .await
            .durable_queue("fm_interop", &topic)
            .await;
        let ledger = bus.consumer("ledger", &[]);
        let config = bus.config_path.display().to_string();
        let out = bus.logger(
            &[
                "--config",
                &config,
                "--certname",
                PUBLISHER,
                "--json-input",
                "--modname",
                "test",
                "--topic",
                "interop",
                "--recipients",
                "ledger",
                "--print-receipt",
            ],
            "{\"package\": \"gilmsg\", \"version\": [0, 1], \"note\": \"h\u{e9}llo\"}\n",
            WAIT,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let receipt: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let msg_id = receipt["msg_id"].as_str().unwrap().to_owned();
        let recorded = dir.join("recorded.jsonl");
        // Its log goes to fm.log (quoted if the callback never runs).
        let mut command = gilmsg_testkit::python::command(Path::new("sh"), &dir);
        command
            .arg("-c")
            .arg("exec \"$0\" --conf fm.toml consume > fm.log 2>&1")
            .arg(venv.join("bin/fedora-messaging"))
            .env("PYTHONPATH", &dir)
            .env("GILMSG_FM_OUT", &recorded)
            .stdin(std::process::Stdio::null());
        let consumer = bus.spawn("fedora-messaging consume", command);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&recorded).is_ok_and(|t| t.ends_with('\n')) {
            assert!(
                Instant::now() < deadline,
                "fedora-messaging's callback never ran; its log:\n{}",
                std::fs::read_to_string(dir.join("fm.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(consumer);
        let text = std::fs::read_to_string(&recorded).unwrap();
        let seen: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(seen["topic"], topic.as_str(), "{seen}");
        assert_eq!(seen["id"], msg_id.as_str(), "{seen}");
        assert_eq!(
            seen["body"],
            json!({"package": "gilmsg", "version": [0, 1], "note": "h\u{e9}llo"}),
            "{seen}"
        );
        assert_eq!(seen["class"], "fedora_messaging.message.Message", "{seen}");
        assert_eq!(seen["schema_header"], "base.message", "{seen}");
        assert_eq!(seen["severity"], 20, "{seen}");
        assert!(
            seen["sent_at"]
                .as_str()
                .is_some_and(|t| t.ends_with("+00:00")),
            "{seen}"
        );
        assert_eq!(seen["gilmsg_envelope"], true, "{seen}");
        ledger.stop();
    });
}

#[test]
fn fedora_messaging_publish_reaches_our_consumer_as_unsigned() {
    within_async(LIMIT, || async {
        let Some(bus) = AmqpBus::start(bins!(), "fm-publish", &["open", "strict"]) else {
            return;
        };
        let Some(venv) = gilmsg_testkit::python::fedora_messaging_venv() else {
            return;
        };
        let topic = bus.topic("from-python");
        let dir = fedora_messaging_dir(&bus, &topic);
        let open_config = bus.dir().join("open.toml");
        let text = std::fs::read_to_string(&bus.config_path).unwrap();
        std::fs::write(
            &open_config,
            text.replace("validate_signatures = true", "validate_signatures = false"),
        )
        .unwrap();
        let open = bus.consumer_with("open", &open_config, "warn", &[]);
        let strict = bus.consumer_with("strict", &bus.config_path, "debug", &[]);
        // fedora-messaging writes the message file itself (`dumps`), then
        // publishes it with its CLI (broker confirm, no mandatory).
        let mut dump = gilmsg_testkit::python::command(&venv.join("bin/python"), &dir);
        dump.args([
            "-c",
            "import sys; from fedora_messaging import message as m; \
             sys.stdout.write(m.dumps(m.Message(topic=sys.argv[1], body={'from': 'fedora-messaging', 'n': 1})))",
            &topic,
        ]);
        let line = gilmsg_testkit::child::run_ok(dump, "fedora-messaging dumps", "", WAIT);
        std::fs::write(dir.join("messages.jsonl"), &line).unwrap();
        let sent: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let mut publish = gilmsg_testkit::python::command(&venv.join("bin/fedora-messaging"), &dir);
        publish.args([
            "--conf",
            "fm.toml",
            "publish",
            "--exchange",
            "amq.topic",
            "messages.jsonl",
        ]);
        gilmsg_testkit::child::run_ok(
            publish,
            "fedora-messaging publish",
            "",
            Duration::from_secs(60),
        );
        // validate_signatures = false: delivered, marked unsigned (no
        // signer), and never acknowledged (it asked for nothing).
        let printed = open.wait_stdout("fedora-messaging", WAIT);
        let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(printed["signer"], serde_json::Value::Null, "{printed}");
        assert_eq!(printed["topic"], topic.as_str(), "{printed}");
        assert_eq!(printed["msg_id"], sent["id"], "{printed}");
        assert_eq!(
            printed["body"]["msg"],
            json!({"from": "fedora-messaging", "n": 1}),
            "{printed}"
        );
        let stats = open.wait_stats("delivered", WAIT, |s| s.get("message.delivered") == 1);
        assert_eq!(stats.get("ack.sent"), 0, "{stats}");
        // validate_signatures = true: refused as unsigned, counted, not
        // delivered.
        let stats = strict.wait_stats("the refusal", WAIT, |s| s.get("rejected.unsigned") == 1);
        assert_eq!(stats.get("message.delivered"), 0, "{stats}");
        assert_eq!(strict.next_stdout(Duration::from_millis(200)), None);
        open.stop();
        strict.stop();
    });
}

/// The TOML block of `docs/amqp.md` after `<!-- amqp-example: NAME -->`.
fn guide_example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/amqp.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = format!("<!-- amqp-example: {name} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{marker} not in docs/amqp.md"))
        .1;
    let block = after.split_once("```toml\n").expect("a toml block").1;
    block.split_once("```").expect("its end").0.to_owned()
}

#[test]
fn the_amqp_guide_example_loads_and_runs() {
    within_async(LIMIT, || async {
        let example = guide_example("ledger.toml");
        // As written.
        let origin = Path::new("/etc/fedora-messaging/ledger.toml");
        let config =
            gilmsg::Config::from_toml_str(&example, origin).unwrap_or_else(|e| panic!("{e}"));
        let amqp = config.amqp.as_ref().expect("amqp_url selects AMQP");
        assert!(amqp.uses_tls());
        assert!(amqp.queues.contains_key("ledger.gilmsg"));
        assert_eq!(
            config.topic_scheme().topic("bodhi", "update"),
            "org.fedoraproject.prod.bodhi.update"
        );
        // On a throwaway node: the same text, its URL and paths replaced.
        let Some(bus) = AmqpBus::start(bins!(), "guide", &["ledger"]) else {
            return;
        };
        let tls = amqp::shared_tls_dir();
        let url = bus.node.tls_url(&bus.vhost).expect("TLS listener");
        let local = example
            .replace("amqps://ledger@rabbitmq.example.org/%2Fpubsub", &url)
            .replace(
                "/etc/fedora-messaging/cacert.pem",
                &tls.join("ca.crt").display().to_string(),
            )
            .replace(
                "/etc/fedora-messaging/ledger-key.pem",
                &tls.join("ledger.key").display().to_string(),
            )
            .replace(
                "/etc/fedora-messaging/ledger-cert.pem",
                &tls.join("ledger.crt").display().to_string(),
            )
            .replace("/etc/gilmsg/pki", &bus.ssldir.display().to_string());
        assert!(
            !local
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("/etc/")),
            "{local}"
        );
        let path = bus.dir().join("ledger.toml");
        std::fs::write(&path, &local).unwrap();
        let ledger = bus.consumer_with("ledger", &path, "warn", &[]);
        let publisher = gilmsg::Bus::builder(&gilmsg::Config::from_path(&path).unwrap())
            .modname("bodhi")
            .certname(PUBLISHER)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let receipt = publisher
            .publish(
                "update",
                json!({"alias": "FEDORA-2026-1"}),
                &["ledger"],
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(receipt.topic, "org.fedoraproject.prod.bodhi.update");
        ledger.wait_stdout("FEDORA-2026-1", WAIT);
        ledger.stop();
    });
}

const INVOICE_SCHEMA: &str = r#"{
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["invoice", "amount"],
    "properties": {"invoice": {"type": "integer"}, "amount": {"type": "integer", "minimum": 0}}
}"#;

#[test]
fn schemas_pass_and_fail_on_both_sides_over_amqp() {
    within_async(LIMIT, || async {
        let schemas = format!(
            "[schemas]\n\"{}\" = {{ file = \"schemas/invoice.json\", name = \"invoice.v1\" }}\n",
            "org.gilmsg.test.dev.test.invoice"
        );
        let Some(bus) = AmqpBus::start_with(bins!(), "schemas", &["ledger"], &schemas) else {
            return;
        };
        std::fs::create_dir_all(bus.dir().join("schemas")).unwrap();
        std::fs::write(bus.dir().join("schemas/invoice.json"), INVOICE_SCHEMA).unwrap();
        let config = bus.config();
        let ledger = bus.consumer("ledger", &[]);
        let spy = RawPeer::connect(&bus.url).await;
        let mut copies = spy.listen("spy", &bus.topic("invoice")).await;
        // Publisher side: a failing body is refused before anything is
        // sent, naming the schema and the failing place.
        let publisher = bus.publisher_from(&config);
        let err = publisher
            .publish(
                "invoice",
                json!({"invoice": 1, "amount": -5}),
                &["ledger"],
                WAIT,
            )
            .await
            .expect_err("amount below its minimum");
        let gilmsg::Error::Unsendable(gilmsg::Unsendable::Schema(violation)) = &err else {
            panic!("not a schema refusal: {err:?}");
        };
        assert_eq!(
            (
                violation.schema.as_str(),
                violation.instance_path.as_str(),
                violation.keyword.as_str()
            ),
            ("invoice.v1", "/amount", "minimum")
        );
        assert_eq!(publisher.stats().get("publish.sent"), 0);
        // A passing body goes out naming its schema in the signed field and
        // in fedora-messaging's header; the consumer checks it and ACKs.
        let receipt = publisher
            .publish(
                "invoice",
                json!({"invoice": 1, "amount": 5}),
                &["ledger"],
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let copy = amqp::next_delivery(&mut copies, WAIT).await;
        let headers = copy.properties.headers().clone().unwrap_or_default();
        match headers.inner().get("fedora_messaging_schema") {
            Some(lapin::types::AMQPValue::LongString(s)) => assert_eq!(s.to_string(), "invoice.v1"),
            other => panic!("fedora_messaging_schema header: {other:?}"),
        }
        assert_eq!(
            amqp::envelope_of(&copy).str_field("fedora_messaging_schema"),
            Some("invoice.v1")
        );
        ledger.wait_stdout(&receipt.msg_id, WAIT);
        // Consumer side: a publisher without the schema sends a failing
        // body; the consumer drops it, counts it, and never ACKs.
        let plain = bus.config_file("plain.toml", "");
        let unchecked = bus.publisher_from(&gilmsg::Config::from_path(&plain).unwrap());
        let err = unchecked
            .publish(
                "invoice",
                json!({"invoice": "two", "amount": 5}),
                &["ledger"],
                Duration::from_secs(2),
            )
            .await
            .expect_err("the consumer refuses it");
        assert_eq!(
            err.as_timeout().expect("a timeout").missing,
            ["ledger"],
            "{err}"
        );
        let stats = ledger.wait_stats("the refusal", WAIT, |s| s.get("invalid.schema") == 1);
        assert_eq!(stats.get("schema.checked"), 1, "{stats}");
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
        assert_eq!(
            unchecked.stats().get("ack.received"),
            0,
            "{}",
            unchecked.stats()
        );
        ledger.stop();
    });
}

// ---------------------------------------------------------------------
// Running as a service on AMQP (issue 14 item 5): the monitoring endpoint,
// systemd readiness, heartbeats with gilmsg-status, gilmsg-tail. The same
// code as on ZeroMQ (tests/ops.rs); here on the shared RabbitMQ node.

mod ops {
    use std::io::Write;
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use gilmsg_testkit::amqp::{self, AmqpBus, RawPeer};
    use gilmsg_testkit::monitoring::{get, sample, samples};
    use gilmsg_testkit::{bins, forge, within, within_async, READY_TIMEOUT};
    use serde_json::json;

    use super::{LIMIT, WAIT};

    /// Waits on a NOTIFY_SOCKET (as systemd binds one) for a datagram
    /// with `line`.
    fn expect_notify(socket: &UnixDatagram, line: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            let Ok(n) = socket.recv(&mut buffer) else {
                break;
            };
            let datagram = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if datagram.lines().any(|l| l == line) {
                return;
            }
            seen.push(datagram);
        }
        panic!("no {line} within {limit:?}; got {seen:?}");
    }

    /// Ready means able to ACK: while the broker is gone the consumer is
    /// live (its loop turns, reconnecting) but not ready, and ready again
    /// once it has reconnected. Its own node: stopping the shared one
    /// would disturb the other tests.
    #[test]
    fn ready_is_503_while_the_broker_is_gone_and_200_after_the_reconnect() {
        within_async(LIMIT, || async {
            if !amqp::available() {
                return;
            }
            let own: &'static super::Rabbit = Box::leak(Box::new(
                super::Rabbit::start(None, Duration::from_secs(90))
                    .unwrap_or_else(|e| panic!("{e}")),
            ));
            let bus = AmqpBus::on(own, bins!(), "readiness", &["watched"], "");
            let command = bus.bins().consumer_command(
                &bus.config_path,
                "watched",
                &["--json", "--monitoring", "127.0.0.1:0"],
            );
            let consumer = bus.spawn("watched", command);
            let line =
                consumer.expect_stderr("gilmsg-consumer: monitoring on http://", READY_TIMEOUT);
            let address = line
                .rsplit("http://")
                .next()
                .expect("an address")
                .trim()
                .to_owned();
            consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
            assert_eq!(get(&address, "/ready").0, 200);

            own.stop_node();
            super::until("/ready 503 without the broker", WAIT, || {
                get(&address, "/ready").0 == 503
            })
            .await;
            let (live, body) = get(&address, "/live");
            assert_eq!(live, 200, "reconnecting is live: {body}");
            let (_, body) = get(&address, "/ready");
            assert!(body.contains("reconnecting"), "{body}");

            own.start_again(Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("{e}"));
            super::until(
                "/ready 200 after the reconnect",
                Duration::from_secs(60),
                || get(&address, "/ready").0 == 200,
            )
            .await;
            // Ready again means able to ACK again.
            let publisher = bus.publisher();
            publisher
                .publish("after", json!({"back": true}), &["watched"], WAIT)
                .await
                .unwrap_or_else(|e| panic!("watched after the reconnect: {e}"));
            publisher.close().await;
            drop(consumer);
            own.stop_node();
        });
    }

    #[test]
    fn an_amqp_consumer_serves_exact_metrics_and_tells_systemd() {
        within_async(LIMIT, || async {
            let Some(bus) = AmqpBus::start(bins!(), "ops-metrics", &["watched"]) else {
                return;
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let notify_path = dir.path().join("notify");
            let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
            let mut command = bus.bins().consumer_command(
                &bus.config_path,
                "watched",
                &["--json", "--monitoring", "127.0.0.1:0"],
            );
            command.env("NOTIFY_SOCKET", &notify_path);
            let consumer = bus.spawn("watched", command);
            let line =
                consumer.expect_stderr("gilmsg-consumer: monitoring on http://", READY_TIMEOUT);
            let address = line
                .rsplit("http://")
                .next()
                .expect("an address")
                .trim()
                .to_owned();
            consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
            expect_notify(&notify, "READY=1", READY_TIMEOUT);
            let (status, body) = get(&address, "/ready");
            assert_eq!(status, 200, "/ready after the ready line: {body}");
            assert_eq!(get(&address, "/live").0, 200);

            // Five acknowledged messages, then one forged.
            let publisher = bus.publisher();
            for n in 0..5 {
                publisher
                    .publish("counted", json!({"n": n}), &["watched"], WAIT)
                    .await
                    .expect("watched acks");
            }
            let spy = RawPeer::connect(&bus.url).await;
            let topic = bus.topic("refused");
            let signer = bus.identity(gilmsg_testkit::PUBLISHER);
            let good = forge::message(&topic, json!({"x": 1}), true, Some(&signer));
            let (body, properties) = amqp::amqp_form(&forge::tampered(&good, |b| {
                b.insert("msg".into(), json!({"x": 2}));
            }));
            spy.publish(&topic, &body, properties).await;

            let deadline = Instant::now() + WAIT;
            let all = loop {
                let (status, text) = get(&address, "/metrics");
                assert_eq!(status, 200);
                let all = samples(&text);
                if all
                    .get("gilmsg_consumer_rejected_total{reason=\"bad_signature\"}")
                    .is_some_and(|v| *v >= 1.0)
                {
                    break all;
                }
                assert!(Instant::now() < deadline, "refusal never counted: {text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(sample(&all, "gilmsg_consumer_message_delivered_total"), 5);
            assert_eq!(sample(&all, "gilmsg_consumer_handler_ok_total"), 5);
            assert_eq!(sample(&all, "gilmsg_consumer_handler_failed_total"), 0);
            assert_eq!(
                sample(
                    &all,
                    "gilmsg_consumer_rejected_total{reason=\"bad_signature\"}"
                ),
                1
            );
            assert_eq!(sample(&all, "gilmsg_consumer_ack_latency_seconds_count"), 5);
            assert_eq!(
                sample(
                    &all,
                    "gilmsg_consumer_ack_latency_seconds_bucket{le=\"+Inf\"}"
                ),
                5
            );
            assert!(all["gilmsg_consumer_ack_latency_seconds_sum"] > 0.0);
            assert_eq!(sample(&all, "gilmsg_consumer_ack_confirmed_total"), 5);
            assert_eq!(sample(&all, "gilmsg_consumer_connection_lost_total"), 0);
            assert_eq!(
                sample(&all, "gilmsg_consumer_connection_reconnected_total"),
                0
            );
            assert_eq!(sample(&all, "gilmsg_ready"), 1);
            assert_eq!(sample(&all, "gilmsg_live"), 1);
            // The same numbers as the stats line: one set of counters.
            let stats = consumer.stats("gilmsg-consumer: stats");
            assert_eq!(stats.get("handler.ok"), 5);
            assert_eq!(stats.get("ack.confirmed"), 5);
        })
    }

    fn producer(bus: &AmqpBus, name: &str) -> gilmsg_testkit::Running {
        let command = bus.bins().consumer_command(
            &bus.config_path,
            name,
            &["--no-ack", "--heartbeat-interval", "1s"],
        );
        let running = bus.spawn(name, command);
        running.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        running
    }

    /// Runs `gilmsg-status` (1s interval, listening `listen`) to its end:
    /// exit status and stdout.
    fn run_status(bus: &AmqpBus, names: &[&str], listen: &str) -> (i32, String) {
        let mut command = std::process::Command::new(bus.bins().status);
        command.arg("--config").arg(&bus.config_path).args([
            "--interval",
            "1s",
            "--listen",
            listen,
        ]);
        for name in names {
            command.args(["--expect", name]);
        }
        command.stdin(Stdio::null());
        let mut running = bus.spawn("gilmsg-status", command);
        let status = running
            .proc_mut()
            .wait_timeout(Duration::from_secs(60))
            .expect("gilmsg-status ends");
        let mut stdout = Vec::new();
        while let Some(line) = running.proc().next_stdout(Duration::from_secs(1)) {
            stdout.push(line);
        }
        (status.code().expect("an exit code"), stdout.join("\n"))
    }

    #[test]
    fn status_on_amqp_is_critical_and_names_the_producer_that_was_killed() {
        within(LIMIT, || {
            let names = ["p-a", "p-b", "p-c"];
            let Some(bus) = AmqpBus::start(bins!(), "ops-status", &names) else {
                return;
            };
            let a = producer(&bus, "p-a");
            let _b = producer(&bus, "p-b");
            let mut c = producer(&bus, "p-c");
            let (code, text) = run_status(&bus, &names, "3s");
            assert_eq!(code, 0, "{text}");
            assert!(
                text.starts_with("GILMSG STATUS OK - 0 silent, 0 late, 3 alive"),
                "{text}"
            );
            c.proc_mut().kill();
            let (code, text) = run_status(&bus, &names, "3s");
            assert_eq!(code, 2, "{text}");
            assert!(
                text.starts_with("GILMSG STATUS CRITICAL - 1 silent (p-c), 0 late, 2 alive"),
                "{text}"
            );
            assert!(text.contains("\np-c silent last_seen=never"), "{text}");
            // The producers' own queues got each other's heartbeats and
            // handed none to a handler.
            let stats = a.stats("gilmsg-consumer: stats");
            assert!(stats.get("message.heartbeat_skipped") > 0, "{stats}");
            assert_eq!(stats.get("message.delivered"), 0, "{stats}");
        })
    }

    #[test]
    fn tail_on_amqp_shows_verdicts_and_takes_nothing_from_other_queues() {
        within_async(LIMIT, || async {
            let Some(bus) = AmqpBus::start(bins!(), "ops-tail", &[]) else {
                return;
            };
            // A service's durable queue, named in the config the tail reads:
            // the tail must leave its messages where they are.
            let spy = RawPeer::connect(&bus.url).await;
            let everything = format!("{}.#", gilmsg_testkit::TOPIC_PREFIX);
            spy.durable_queue("svc.q", &everything).await;
            let config = bus.config_file(
                "tail.toml",
                &format!(
                    "[queues.\"svc.q\"]\ndurable = true\n\n[[bindings]]\nqueue = \"svc.q\"\nexchange = \"amq.topic\"\nrouting_keys = [{everything:?}]\n"
                ),
            );
            let topic = |what: &str| bus.topic(&format!("tail.{what}"));
            // A glob: its literal start is what the private queue binds.
            let pattern = format!(
                "{}.{}.*.tail.*",
                gilmsg_testkit::TOPIC_PREFIX,
                gilmsg_testkit::ENVIRONMENT
            );
            let mut command = std::process::Command::new(bus.bins().tail);
            command
                .arg("--config")
                .arg(&config)
                .args(["--topic", &pattern, "--count", "3", "--json"])
                .stdin(Stdio::null());
            let tail = bus.spawn("gilmsg-tail", command);
            tail.expect_stderr("gilmsg-tail: ready", READY_TIMEOUT);

            let publisher = bus.identity(gilmsg_testkit::PUBLISHER);
            let send = |frames: Vec<Vec<u8>>, key: String| {
                let spy = &spy;
                async move {
                    let (body, properties) = amqp::amqp_form(&frames);
                    spy.publish(&key, &body, properties).await;
                }
            };
            let hidden = topic("hidden").replace(".tail.", ".nottail.");
            send(
                forge::frames(&forge::message(
                    &hidden,
                    json!({"hidden": true}),
                    false,
                    Some(&publisher),
                )),
                hidden.clone(),
            )
            .await;
            send(
                forge::frames(&forge::message(
                    &topic("valid"),
                    json!({"n": 1}),
                    true,
                    Some(&publisher),
                )),
                topic("valid"),
            )
            .await;
            let signed = forge::message(
                &topic("forged"),
                json!({"amount": 1}),
                true,
                Some(&publisher),
            );
            send(
                forge::tampered(&signed, |b| {
                    b.insert("msg".into(), json!({"amount": 1000}));
                }),
                topic("forged"),
            )
            .await;
            send(
                forge::frames(&forge::message(
                    &topic("unsigned"),
                    json!({"n": 3}),
                    false,
                    None,
                )),
                topic("unsigned"),
            )
            .await;

            let mut lines = Vec::new();
            for _ in 0..3 {
                lines.push(tail.proc().next_stdout(WAIT).expect("a line"));
            }
            let shown: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("--json line"))
                .collect();
            let by_topic = |what: &str| {
                shown
                    .iter()
                    .find(|m| m["topic"] == topic(what))
                    .unwrap_or_else(|| panic!("{what} not shown: {lines:?}"))
            };
            assert_eq!(by_topic("valid")["verdict"], "valid");
            assert_eq!(by_topic("valid")["signer"], gilmsg_testkit::PUBLISHER);
            assert_eq!(by_topic("forged")["verdict"], "invalid");
            assert_eq!(by_topic("forged")["reason"], "bad_signature");
            assert_eq!(by_topic("forged")["signer"], serde_json::Value::Null);
            assert_eq!(by_topic("unsigned")["verdict"], "unsigned");
            assert!(!lines.iter().any(|l| l.contains("hidden")), "{lines:?}");
            // Every message is still in the service's queue, and nobody
            // sent an ACK (none was routed anywhere: the queue holds only
            // the four messages).
            let queue = spy
                .channel
                .queue_declare(
                    "svc.q".into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .expect("svc.q exists");
            assert_eq!(queue.message_count(), 4);
        })
    }

    #[test]
    fn the_streaming_logger_on_amqp_serves_metrics_and_sends_heartbeats() {
        within_async(LIMIT, || async {
            let Some(bus) = AmqpBus::start(bins!(), "ops-logger", &["consumer-a", "billing"])
            else {
                return;
            };
            let _consumer = bus.consumer("consumer-a", &[]);
            // Bound before the logger starts: every heartbeat reaches it.
            let spy = RawPeer::connect(&bus.url).await;
            let topic = format!(
                "{}.{}.gilmsg.heartbeat",
                gilmsg_testkit::TOPIC_PREFIX,
                gilmsg_testkit::ENVIRONMENT
            );
            let mut heartbeats = spy.listen("heartbeats", &topic).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let notify_path = dir.path().join("notify");
            let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
            let mut command = std::process::Command::new(bus.bins().logger);
            command
                .arg("--config")
                .arg(&bus.config_path)
                .args([
                    "--certname",
                    "billing",
                    "--stream",
                    "--recipients",
                    "consumer-a",
                    "--monitoring",
                    "127.0.0.1:0",
                    "--heartbeat-interval",
                    "1s",
                ])
                .env("NOTIFY_SOCKET", &notify_path)
                .stdin(Stdio::piped());
            let mut logger = bus.spawn("gilmsg-logger", command);
            let line = logger.expect_stderr("gilmsg-logger: monitoring on", READY_TIMEOUT);
            let address = line
                .rsplit("http://")
                .next()
                .expect("an address")
                .trim()
                .to_owned();
            expect_notify(&notify, "READY=1", READY_TIMEOUT);
            // Its heartbeat, signed as billing, on the heartbeat topic.
            let delivery = amqp::next_delivery(&mut heartbeats, WAIT).await;
            assert_eq!(delivery.routing_key.as_str(), topic);
            let heartbeat = amqp::envelope_of(&delivery);
            assert_eq!(heartbeat.msg()["name"], "billing");
            assert_eq!(heartbeat.msg()["program"], "gilmsg-logger");
            assert!(heartbeat.str_field("certificate").is_some());
            let mut stdin = logger.proc_mut().take_stdin().expect("stdin");
            writeln!(stdin, "one").expect("write");
            writeln!(stdin, "two").expect("write");
            let deadline = Instant::now() + WAIT;
            loop {
                let (_, text) = get(&address, "/metrics");
                let all = samples(&text);
                if all.get("gilmsg_publisher_publish_acked_total") == Some(&2.0) {
                    assert_eq!(
                        sample(&all, "gilmsg_publisher_ack_latency_seconds_count"),
                        2
                    );
                    assert_eq!(sample(&all, "gilmsg_ready"), 1);
                    assert_eq!(sample(&all, "gilmsg_live"), 1);
                    break;
                }
                assert!(Instant::now() < deadline, "never acked: {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(stdin);
            expect_notify(&notify, "STOPPING=1", WAIT);
            let status = logger
                .proc_mut()
                .wait_timeout(WAIT)
                .expect("the logger exits at the end of its input");
            assert!(status.success(), "{status:?}");
        })
    }
}
