//! The library API against real consumer processes: many publishes in
//! flight on one handle (with the socket loop on its own thread and on the
//! caller's runtime), the blocking facade, and plain (un-ACKed) publish.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::{within, within_async, Bus};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);
const NAMES: [&str; 2] = ["c1", "c2"];
const IN_FLIGHT: u64 = 200;

#[test]
fn many_publishes_in_flight_on_one_handle_each_get_their_own_receipt() {
    within_async(LIMIT, || many_in_flight(Bus::publisher))
}

#[test]
fn on_the_callers_runtime_many_publishes_in_flight_each_get_their_own_receipt() {
    within_async(LIMIT, || many_in_flight(Bus::publisher_on_runtime))
}

/// `IN_FLIGHT` publishes at once on one handle built by `publisher`, each
/// to both consumers: every receipt is for its own message.
async fn many_in_flight(publisher: fn(&Bus) -> gilmsg::Bus) {
    {
        let bus = Bus::start(bins!(), &NAMES);
        let consumers = bus.consumers(&NAMES, &[]);
        let publisher = publisher(&bus);
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..IN_FLIGHT {
            let handle = publisher.clone();
            tasks.spawn(async move {
                let receipt = handle
                    .publish("burst", json!({"k": k}), &NAMES, Duration::from_secs(30))
                    .await;
                (k, receipt)
            });
        }
        let mut receipts = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (k, receipt) = joined.expect("task");
            let receipt = receipt.unwrap_or_else(|e| panic!("publish {k}: {e}"));
            let acked: Vec<&str> = receipt.acks.iter().map(|a| a.recipient.as_str()).collect();
            assert_eq!(acked, NAMES, "publish {k}");
            receipts.insert(k, receipt);
        }
        assert_eq!(receipts.len() as u64, IN_FLIGHT);
        let ids: HashSet<&str> = receipts.values().map(|r| r.msg_id.as_str()).collect();
        assert_eq!(
            ids.len() as u64,
            IN_FLIGHT,
            "every publish has its own msg_id"
        );

        // Each receipt is for the message that carried its own payload.
        for c in &consumers {
            let mut seen = HashMap::new();
            while (seen.len() as u64) < IN_FLIGHT {
                let line = c
                    .next_stdout(Duration::from_secs(10))
                    .unwrap_or_else(|| panic!("{}: only {} lines", c.name, seen.len()));
                let shown: Value = serde_json::from_str(&line).expect("--json line");
                let id = shown["msg_id"].as_str().expect("msg_id").to_owned();
                let k = shown["body"]["msg"]["k"].as_u64().expect("k");
                assert!(seen.insert(id, k).is_none(), "{}: delivered twice", c.name);
            }
            for (k, receipt) in &receipts {
                assert_eq!(seen.get(&receipt.msg_id), Some(k), "{}", c.name);
            }
        }
        let stats = publisher.stats();
        assert_eq!(stats.get("publish.acked"), IN_FLIGHT, "{stats}");
        assert_eq!(stats.get("ack.counted"), 2 * IN_FLIGHT, "{stats}");
        assert_eq!(stats.get("publish.timed_out"), 0, "{stats}");
    }
}

#[test]
fn blocking_facade_publishes_and_times_out() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["c1", "offline"]);
        let _c1 = bus.consumer("c1", &[]);
        let publisher = gilmsg::blocking::Bus::from_async(bus.publisher()).expect("blocking bus");
        let receipt = publisher
            .publish(
                "blocking",
                json!({"n": 1}),
                &["c1"],
                Duration::from_secs(10),
            )
            .expect("c1 acks");
        assert_eq!(receipt.acks[0].recipient, "c1");
        let err = publisher
            .publish(
                "blocking",
                json!({"n": 2}),
                &["c1", "offline"],
                Duration::from_millis(500),
            )
            .expect_err("offline never acks");
        gilmsg_testkit::timed_out(&err, &["offline"], &["c1"]);
        assert_eq!(publisher.stats().get("publish.acked"), 1);
        publisher.close();
    })
}

#[test]
fn plain_publish_without_recipients_reaches_consumers_and_asks_no_ack() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &NAMES);
        let acking = bus.consumer("c1", &[]);
        let tail = bus.consumer("c2", &["--no-ack"]);
        let publisher = bus.publisher();
        let receipt = publisher
            .send("plain", json!({"hello": "world"}))
            .await
            .expect("plain send");
        assert!(receipt.acks.is_empty());
        assert_eq!(receipt.topic, bus.topic("plain"));
        for c in [&acking, &tail] {
            let line = c.wait_stdout(&receipt.msg_id, Duration::from_secs(5));
            let shown: Value = serde_json::from_str(&line).expect("--json line");
            assert_eq!(shown["body"]["msg"], json!({"hello": "world"}));
            assert_eq!(shown["signer"], json!("publisher"));
            assert!(
                shown["body"].get("gilmsg_version").is_none(),
                "a plain publish does not ask for ACKs: {line}"
            );
        }
        // The stdout line comes before the handler's verdict is counted.
        let stats = acking.wait_stats("the handler's verdict", Duration::from_secs(5), |s| {
            s.get("handler.ok") >= 1
        });
        assert_eq!(stats.get("handler.ok"), 1, "{stats}");
        assert_eq!(stats.get("ack.sent"), 0, "nothing to ACK: {stats}");
        assert_eq!(publisher.stats().get("publish.sent_plain"), 1);

        // A --no-ack consumer receives acknowledged publishes but never acks.
        let err = publisher
            .publish(
                "plain",
                json!({"n": 2}),
                &["c1", "c2"],
                Duration::from_millis(500),
            )
            .await
            .expect_err("c2 does not ack");
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(timeout.missing, ["c2"]);
        assert_eq!(timeout.acked_names(), ["c1"]);
        tail.wait_stdout(&timeout.msg_id, Duration::from_secs(5));
    })
}

#[test]
fn a_body_receivers_would_refuse_is_refused_at_publish_at_once() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["c1"]);
        let publisher = bus.publisher();
        // Deeper than any consumer parses (512 levels, the envelope being
        // one), built in code so that no parser limit stops it first.
        let mut deep = json!(1);
        for _ in 0..600 {
            deep = Value::Array(vec![deep]);
        }
        let started = std::time::Instant::now();
        let err = publisher
            .publish("deep", deep, &["c1"], Duration::from_secs(10))
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                gilmsg::Error::Unsendable(gilmsg::Unsendable::TooDeep { limit: 512 })
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{err}");
        let err = publisher
            .publish_full(
                format!("{}\u{1b}[2J", bus.topic("x")),
                json!(1),
                &["c1"],
                Duration::from_secs(10),
            )
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                gilmsg::Error::Unsendable(gilmsg::Unsendable::UnsafeTopic)
            ),
            "{err}"
        );
        // The handle still works.
        let _c1 = bus.consumer("c1", &[]);
        publisher
            .publish(
                "fine",
                json!({"depth": 1}),
                &["c1"],
                Duration::from_secs(10),
            )
            .await
            .expect("a normal publish after the refusals");
    })
}

#[test]
fn an_ack_timeout_longer_than_max_message_age_is_refused_at_once() {
    // Re-sends keep the first send's timestamp: consumers would refuse
    // them before the publish gave up. The config refuses such an
    // ack_timeout; a timeout given per call must be refused the same way.
    within_async(LIMIT, || async {
        let bus = Bus::start_with(bins!(), &["c1"], "max_message_age = \"30s\"");
        let _c1 = bus.consumer("c1", &[]);
        let publisher = bus.publisher();
        for recipients in [&["c1"][..], &[]] {
            let err = publisher
                .publish("late", json!({"n": 0}), recipients, Duration::from_secs(31))
                .await
                .expect_err("refused");
            assert!(matches!(err, gilmsg::Error::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains("max_message_age"), "{err}");
        }
        let receipt = publisher
            .publish("in-time", json!({"n": 1}), &["c1"], Duration::from_secs(30))
            .await
            .expect("up to max_message_age is fine");
        assert_eq!(receipt.acks[0].recipient, "c1");
    })
}

#[test]
fn on_the_callers_runtime_is_refused_where_no_runtime_can_drive_it() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &NAMES);
        let refused = |built: gilmsg::Result<gilmsg::Bus>, why: &str| match built {
            Ok(_) => panic!("built where it must be refused ({why})"),
            Err(e) => assert!(
                e.to_string().contains(why),
                "refused for another reason: {e}"
            ),
        };
        let config = bus.config();
        let on_runtime = |config: &gilmsg::Config| {
            gilmsg_testkit::publisher_builder(config).run_on_current_runtime(true)
        };
        // No runtime at all.
        refused(
            on_runtime(&config).build(),
            "run_on_current_runtime: build the Bus inside a tokio runtime",
        );
        let built_inside = |runtime: std::io::Result<tokio::runtime::Runtime>,
                            config: &gilmsg::Config| {
            let runtime = runtime.expect("runtime");
            runtime.block_on(async { on_runtime(config).build() })
        };
        let current = tokio::runtime::Builder::new_current_thread;
        // Runtimes without the reactor or the timer the loop waits on: an
        // error, not tokio's panic.
        refused(
            built_inside(current().enable_time().build(), &config),
            "no I/O driver",
        );
        refused(
            built_inside(current().enable_io().build(), &config),
            "without a timer",
        );
        // An AMQP config (refused before any broker is asked).
        let mut amqp = bus.config();
        amqp.amqp = Some(gilmsg_config::AmqpConfig::new("amqp://127.0.0.1:1/%2F"));
        refused(
            built_inside(current().enable_all().build(), &amqp),
            "run_on_current_runtime: the AMQP publisher",
        );
    })
}

#[test]
fn on_the_blocking_facades_own_runtime_driven_only_during_calls_publishes_still_complete() {
    // The runtime runs only inside each call; between calls the loop does
    // not turn, and what arrives meanwhile (a consumer joining, its
    // subscription) waits in libzmq.
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["c1", "c2", "offline"]);
        let _c1 = bus.consumer("c1", &[]);
        let publisher =
            gilmsg::blocking::Bus::on_own_runtime(gilmsg_testkit::publisher_builder(&bus.config()))
                .expect("blocking bus on its own runtime");
        let publish = |n: u32, to: &[&str], wait: Duration| {
            publisher.publish("driven", json!({"n": n}), to, wait)
        };
        let receipt = publish(1, &["c1"], Duration::from_secs(10)).expect("c1 acks");
        assert_eq!(receipt.acks[0].recipient, "c1");
        // c2 starts while nobody drives the runtime.
        let _c2 = bus.consumer("c2", &[]);
        let receipt = publish(2, &["c1", "c2"], Duration::from_secs(10)).expect("both ack");
        assert_eq!(receipt.acks.len(), 2);
        let err = publish(3, &["c1", "offline"], Duration::from_millis(500))
            .expect_err("offline never acks");
        gilmsg_testkit::timed_out(&err, &["offline"], &["c1"]);
        let stats = publisher.stats();
        assert_eq!(stats.get("publish.acked"), 2, "{stats}");
        publisher.close();
        // Dropped without `close`, a second handle's loop ends and the drop
        // returns.
        let dropped =
            gilmsg::blocking::Bus::on_own_runtime(gilmsg_testkit::publisher_builder(&bus.config()))
                .expect("another blocking bus");
        dropped
            .publish("driven", json!({"n": 4}), &["c1"], Duration::from_secs(10))
            .expect("c1 acks");
        let health = dropped.health();
        drop(dropped);
        assert_eq!(
            health.state(),
            gilmsg::health::LoopState::Ended,
            "the loop ended with the handle"
        );
    })
}

#[test]
fn on_the_callers_runtime_a_handle_outliving_its_runtime_fails_instead_of_hanging() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["c1"]);
        let _c1 = bus.consumer("c1", &[]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let publisher = runtime.block_on(async { bus.publisher_on_runtime() });
        let publish = |on: &tokio::runtime::Runtime, n: u32| {
            on.block_on(publisher.publish(
                "outlived",
                json!({ "n": n }),
                &["c1"],
                Duration::from_secs(10),
            ))
        };
        let receipt = publish(&runtime, 1).expect("c1 acks while the runtime runs");
        assert_eq!(receipt.acks[0].recipient, "c1");
        drop(runtime);
        // The loop went with its runtime: a publish is refused at once.
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = publish(&other, 2).expect_err("nobody runs the loop any more");
        assert!(matches!(err, gilmsg::Error::Closed), "{err}");
    })
}
