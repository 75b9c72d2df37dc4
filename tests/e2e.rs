//! End to end: real relay and consumer processes, the library as publisher.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::{within_async, Bus};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["consumer-a", "consumer-b", "consumer-c"];

#[test]
fn publish_to_three_consumers_returns_a_receipt_naming_all_three() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &NAMES);
        let consumers = bus.consumers(&NAMES, &[]);
        let publisher = bus.publisher();
        let receipt = publisher
            .publish("greeting", json!({"n": 1}), &NAMES, Duration::from_secs(10))
            .await
            .expect("every consumer acks");
        let acked: Vec<&str> = receipt.acks.iter().map(|a| a.recipient.as_str()).collect();
        assert_eq!(acked, NAMES);
        assert!(receipt.acks.iter().all(|a| a.digest_checked), "{receipt:?}");
        assert_eq!(receipt.topic, bus.topic("greeting"));
        assert!(receipt.sends >= 1);
        // Each consumer handled (printed) that very message before acking.
        for c in &consumers {
            let line = c.wait_stdout(&receipt.msg_id, Duration::from_secs(5));
            let shown: Value = serde_json::from_str(&line).expect("--json line");
            assert_eq!(shown["msg_id"], json!(receipt.msg_id));
            assert_eq!(shown["signer"], json!("publisher"));
            assert_eq!(shown["body"]["msg"], json!({"n": 1}));
        }
        let stats = publisher.stats();
        assert_eq!(stats.get("ack.counted"), 3, "{stats}");
        assert_eq!(stats.sum("ack.rejected"), 0, "{stats}");
    })
}

#[test]
fn timeout_names_exactly_the_recipient_that_is_not_running() {
    within_async(LIMIT, || timeout_names_the_one_not_running(Bus::publisher))
}

#[test]
fn on_the_callers_runtime_timeout_names_exactly_the_recipient_that_is_not_running() {
    within_async(LIMIT, || {
        timeout_names_the_one_not_running(Bus::publisher_on_runtime)
    })
}

/// Three of four recipients running: the publish (from the handle
/// `publisher` builds) is re-sent while it waits, then times out naming the
/// fourth.
async fn timeout_names_the_one_not_running(publisher: fn(&Bus) -> gilmsg::Bus) {
    {
        let bus = Bus::start(
            bins!(),
            &["consumer-a", "consumer-b", "consumer-c", "consumer-d"],
        );
        let _consumers = bus.consumers(&NAMES, &[]);
        let publisher = publisher(&bus);
        let everyone = ["consumer-a", "consumer-b", "consumer-c", "consumer-d"];
        let err = publisher
            .publish(
                "greeting",
                json!({"n": 2}),
                &everyone,
                Duration::from_secs(1),
            )
            .await
            .expect_err("consumer-d is not running");
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(timeout.missing, ["consumer-d"]);
        assert_eq!(timeout.acked_names(), NAMES);
        assert_eq!(timeout.topic, bus.topic("greeting"));
        assert_eq!(timeout.waited, Duration::from_secs(1));
        assert!(timeout.sends >= 2, "re-sent while waiting: {timeout:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no ACK within 1s from consumer-d (acked: consumer-a, consumer-b, consumer-c) for {} on {}",
                timeout.msg_id, timeout.topic
            )
        );
        let stats = publisher.stats();
        assert_eq!(stats.get("publish.timed_out"), 1, "{stats}");
    }
}

// Regression: the consumer and the relay used to print their ready line
// before installing their SIGUSR1 handler; SIGUSR1's default action kills the
// process, so a script asking for stats right after `ready` killed it.
#[test]
fn stats_can_be_asked_for_as_soon_as_a_process_is_ready() {
    gilmsg_testkit::within(LIMIT, || {
        for _ in 0..10 {
            let bus = Bus::start(bins!(), &["a"]);
            let _ = bus.relay_stats();
            let consumer = bus.consumer("a", &[]);
            let _ = consumer.stats();
        }
    })
}

#[test]
fn routing_nitpicky_does_not_veto_acks() {
    // The ACK topic is not in the routing policy; ACKs are authorised by
    // the publish's recipient list, so they must still count. Messages on
    // unlisted topics are still refused by consumers.
    within_async(LIMIT, || async {
        let bus = Bus::start_with(
            bins!(),
            &["c1"],
            &format!(
                "routing_nitpicky = true\n\n[routing_policy]\n{:?} = [\"publisher\"]\n",
                format!(
                    "{}.{}.{}.listed",
                    gilmsg_testkit::TOPIC_PREFIX,
                    gilmsg_testkit::ENVIRONMENT,
                    gilmsg_testkit::MODNAME
                )
            ),
        );
        let c1 = bus.consumer("c1", &[]);
        let publisher = bus.publisher();
        let receipt = publisher
            .publish("listed", json!({"n": 1}), &["c1"], Duration::from_secs(10))
            .await
            .expect("acked despite routing_nitpicky");
        assert_eq!(receipt.acks[0].recipient, "c1");
        c1.wait_stdout(&receipt.msg_id, Duration::from_secs(5));
        let stats = publisher.stats();
        assert_eq!(stats.sum("ack.rejected"), 0, "{stats}");

        let err = publisher
            .publish(
                "unlisted",
                json!({"n": 2}),
                &["c1"],
                Duration::from_millis(500),
            )
            .await
            .expect_err("the policy still applies to messages");
        assert_eq!(
            err.as_timeout().map(|t| t.missing.clone()),
            Some(vec!["c1".to_owned()])
        );
        let stats = c1.wait_stats("the refusal", Duration::from_secs(5), |s| {
            s.get("rejected.policy_unlisted") >= 1
        });
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
    })
}
