//! Handler semantics of `gilmsg-consumer --exec`: no ACK unless the handler
//! succeeded, and a re-sent message reaches the handler exactly once.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::{within_async, Bus};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_failing_handler_produces_no_ack() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["failer"]);
        let failer = bus.consumer("failer", &["--exec", "exit 1"]);
        let publisher = bus.publisher();
        let err = publisher
            .publish("job", json!({"n": 1}), &["failer"], Duration::from_secs(1))
            .await
            .expect_err("the handler failed, so there is no ACK");
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(timeout.missing, ["failer"]);
        assert!(timeout.acked.is_empty());
        assert!(timeout.sends >= 2, "{timeout:?}");
        let stats = failer.wait_stats("the re-sends", Duration::from_secs(10), |s| {
            s.get("handler.failed") + s.sum("duplicate.") >= u64::from(timeout.sends)
        });
        // Ran once, failed, never acked, and the re-sends did not run it again.
        assert_eq!(stats.get("handler.failed"), 1, "{stats}");
        assert_eq!(stats.get("handler.ok"), 0, "{stats}");
        assert_eq!(stats.get("ack.sent"), 0, "{stats}");
        assert!(stats.get("duplicate.failed") >= 1, "{stats}");
        assert!(
            failer
                .stderr()
                .iter()
                .any(|l| l.contains("handler failed for") && l.contains(&timeout.msg_id)),
            "{:?}",
            failer.stderr()
        );
    })
}

#[test]
fn a_message_resent_many_times_reaches_the_handler_once() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["writer", "offline"]);
        let log = bus.dir().join("handled.log");
        let exec = format!("echo \"$GILMSG_MSG_ID\" >> '{}'", log.display());
        let writer = bus.consumer("writer", &["--exec", &exec]);
        let publisher = bus.publisher();
        // "offline" never acks, so the publisher re-sends for the whole timeout.
        let err = publisher
            .publish(
                "job",
                json!({"n": 2}),
                &["writer", "offline"],
                Duration::from_millis(1200),
            )
            .await
            .expect_err("offline is not running");
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(timeout.missing, ["offline"]);
        assert_eq!(timeout.acked_names(), ["writer"]);
        assert!(timeout.sends >= 3, "expected several re-sends: {timeout:?}");
        let sends = u64::from(timeout.sends);
        let stats = writer.wait_stats("every re-send", Duration::from_secs(10), |s| {
            // ack.sent is bumped after the duplicate.* counter and signing.
            s.get("message.delivered") + s.sum("duplicate.") >= sends && s.get("ack.sent") >= sends
        });
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");
        assert_eq!(stats.get("handler.ok"), 1, "{stats}");
        assert_eq!(stats.get("duplicate.reacked"), sends - 1, "{stats}");
        // Re-sends are re-acked (the first ACK might have been lost).
        assert_eq!(stats.get("ack.sent"), sends, "{stats}");
        let handled = std::fs::read_to_string(&log).expect("the handler ran");
        let lines: Vec<&str> = handled.lines().collect();
        assert_eq!(lines, [timeout.msg_id.as_str()]);
        let publisher_stats = publisher.stats();
        assert!(
            publisher_stats.get("ack.duplicate") >= 1,
            "re-ACKs are recognised as duplicates: {publisher_stats}"
        );
    })
}
