//! `gilmsg-bridge verify`, the real process, between a real ZeroMQ
//! publisher (the test's XPUB, which verify connects to as it would to a
//! fedmsg endpoint) and a real RabbitMQ (a vhost of the node the test
//! binary shares, `gilmsg_testkit::amqp`).
//!
//! The test plays a perfect bridge: every signed message goes out on both
//! sides, the very same bytes (raw ZeroMQ frames, and their AMQP form
//! `amqp_form` on `zmq.topic` for messages "from ZeroMQ" or on `amq.topic`
//! for messages "from AMQP"). Then it breaks it on purpose: some AMQP
//! copies are dropped and one carries another body. verify must report
//! exactly those. Synchronised on verify's ready line and on its ZeroMQ
//! subscription reaching the XPUB, never on a sleep.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gilmsg_proto::Envelope;
use gilmsg_testkit::amqp::{amqp_form, AmqpBus, RawPeer};
use gilmsg_testkit::{bins, forge, raw, within, within_async, Running, PUBLISHER};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(20);
const READY: &str = "gilmsg-bridge verify: ready";
const STATS: &str = "gilmsg-bridge verify: stats";

fn bridge() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gilmsg-bridge"))
}

/// A ZeroMQ endpoint the test publishes on, an AMQP vhost, and `gilmsg-bridge
/// verify` watching both.
struct Setup {
    bus: AmqpBus,
    _context: zmq::Context,
    xpub: zmq::Socket,
    peer: RawPeer,
    verify: Running,
}

impl Setup {
    /// Starts verify with `args` on both sides and waits for its ready
    /// line and its ZeroMQ subscription; `None` when RabbitMQ is skipped.
    async fn start(vhost: &str, args: &[&str]) -> Option<Setup> {
        let bus = AmqpBus::start(bins!(), vhost, &["bridge"])?;
        let context = zmq::Context::new();
        let (xpub, endpoint) = raw::bind_xpub(&context);
        let mut command = Command::new(bridge());
        command
            .arg("verify")
            .arg("--config")
            .arg(&bus.config_path)
            .args(["--zmq-endpoint", &endpoint])
            .args(args)
            .env("GILMSG_LOG", "warn")
            .env_remove("GILMSG_CONFIG");
        let verify = bus.spawn("gilmsg-bridge verify", command);
        let line = verify.expect_stderr(READY, WAIT);
        assert!(
            line.contains("amqp_exchanges=amq.topic,zmq.topic"),
            "{line}"
        );
        assert!(line.contains("zmq_endpoints=1/1"), "{line}");
        // Its subscription (everything: an empty prefix) at our XPUB.
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no subscription from verify");
            if xpub
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .expect("poll")
                > 0
            {
                let frame = xpub.recv_bytes(0).expect("subscription");
                if frame == [1] {
                    break;
                }
            }
        }
        let peer = RawPeer::connect(&bus.url).await;
        Some(Setup {
            bus,
            _context: context,
            xpub,
            peer,
            verify,
        })
    }

    /// A signed message on `sub`, as a publisher on either side sends it.
    fn message(&self, sub: &str, n: u64) -> Envelope {
        let signer = self.bus.identity(PUBLISHER);
        forge::message(
            &self.bus.topic(sub),
            json!({"n": n, "what": sub}),
            false,
            Some(&signer),
        )
    }

    /// Sends `frames` on the ZeroMQ side.
    fn on_zmq(&self, frames: &[Vec<u8>]) {
        let last = frames.len() - 1;
        for (i, frame) in frames.iter().enumerate() {
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            self.xpub.send(frame.as_slice(), flags).expect("send");
        }
    }

    /// Publishes the AMQP form of `frames` on `exchange` (confirmed).
    async fn on_amqp(&self, exchange: &str, frames: &[Vec<u8>]) {
        let (body, properties) = amqp_form(frames);
        let topic = String::from_utf8(frames[0].clone()).expect("topic");
        self.peer
            .channel
            .basic_publish(
                exchange.into(),
                topic.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// The scenario: 6 messages from ZeroMQ (bridged to `zmq.topic`: 2
    /// dropped, 1 with another body), 3 from AMQP (`amq.topic`, all
    /// bridged to ZeroMQ). Returns the ids (lost, changed, intact).
    async fn broken_bridge(&self) -> (Vec<String>, String, Vec<String>) {
        let mut lost = Vec::new();
        let mut changed = String::new();
        let mut intact = Vec::new();
        for n in 0..6 {
            let message = self.message("from-zmq", n);
            let frames = forge::frames(&message);
            self.on_zmq(&frames);
            match n {
                0..=2 => {
                    self.on_amqp("zmq.topic", &frames).await;
                    intact.push(message.msg_id().to_owned());
                }
                3 => {
                    let other = forge::tampered(&message, |body| {
                        body.insert("msg".into(), json!({"n": 3, "what": "changed on the way"}));
                    });
                    self.on_amqp("zmq.topic", &other).await;
                    changed = message.msg_id().to_owned();
                }
                _ => lost.push(message.msg_id().to_owned()),
            }
        }
        for n in 0..3 {
            let message = self.message("from-amqp", n);
            let frames = forge::frames(&message);
            self.on_amqp("amq.topic", &frames).await;
            self.on_zmq(&frames);
            intact.push(message.msg_id().to_owned());
        }
        (lost, changed, intact)
    }

    /// A perfect bridge: `count` messages each way.
    async fn perfect_bridge(&self, count: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..count {
            let message = self.message("from-zmq", n);
            let frames = forge::frames(&message);
            self.on_zmq(&frames);
            self.on_amqp("zmq.topic", &frames).await;
            ids.push(message.msg_id().to_owned());
            let message = self.message("from-amqp", n);
            let frames = forge::frames(&message);
            self.on_amqp("amq.topic", &frames).await;
            self.on_zmq(&frames);
            ids.push(message.msg_id().to_owned());
        }
        ids
    }

    /// An unsigned fedora-messaging message on `amq.topic`, and on ZeroMQ
    /// the envelope the AMQP -> ZeroMQ bridge wraps it in: the same
    /// `msg_id` and `msg`, signed by the bridge and marked as bridged
    /// (`gilmsg_proto::bridge::wrap_unsigned` on the bridge's branch).
    async fn wrapped_unsigned(&self) -> String {
        let msg_id = gilmsg_proto::envelope::new_msg_id(2026);
        let topic = self.bus.topic("fedora-messaging");
        let msg = json!({"package": "gilmsg", "version": "1.0"});
        let now = forge::unix_now();
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(msg_id.as_str().into())
            .with_timestamp(u64::try_from(now).expect("after 1970"));
        self.peer
            .channel
            .basic_publish(
                "amq.topic".into(),
                topic.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                msg.to_string().as_bytes(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let mut body = serde_json::Map::new();
        body.insert("topic".into(), json!(topic));
        body.insert("msg".into(), msg);
        body.insert("msg_id".into(), json!(msg_id));
        body.insert("i".into(), json!(1));
        body.insert("timestamp".into(), json!(now));
        body.insert("username".into(), json!("amqp-bridge"));
        body.insert(
            "gilmsg_bridged".into(),
            json!({"from": "amqp", "by": "bridge"}),
        );
        let mut wrapped = Envelope::from_body(body).expect("envelope");
        wrapped
            .sign(&self.bus.identity("bridge"))
            .expect("signed by the bridge");
        self.on_zmq(&forge::frames(&wrapped));
        msg_id
    }

    /// Waits for verify to exit by itself; returns its status and stdout.
    fn exit(&mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let status = self
            .verify
            .wait_timeout(limit)
            .unwrap_or_else(|| panic!("verify did not exit within {limit:?}"));
        let mut lines = Vec::new();
        while let Some(line) = self.verify.next_stdout(Duration::from_secs(5)) {
            lines.push(line);
        }
        (status.code(), lines)
    }
}

#[test]
fn verify_reports_exactly_the_lost_and_the_changed_messages() {
    within_async(LIMIT, || async {
        let Some(setup) = Setup::start("verify-run", &["--grace", "1s", "--json"]).await else {
            return;
        };
        let (lost, changed, intact) = setup.broken_bridge().await;
        // Three findings: the changed body at once, the two lost ones
        // after the grace window.
        let mut findings: Vec<Value> = Vec::new();
        let deadline = Instant::now() + WAIT;
        while findings.len() < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = setup
                .verify
                .next_stdout(left)
                .unwrap_or_else(|| panic!("only these findings: {findings:?}"));
            findings.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
        let stats = setup.verify.wait_stats(STATS, "the counts", WAIT, |s| {
            s.get("matched") + s.get("changed") + s.get("missing.amqp") + s.get("missing.zmq") >= 9
        });
        eprintln!("{STATS} {stats}");
        for (counter, expected) in [
            ("seen.zmq", 9),
            ("seen.amqp", 7),
            ("matched", 6),
            ("changed", 1),
            ("missing.amqp", 2),
            ("missing.zmq", 0),
            ("duplicate.zmq", 0),
            ("duplicate.amqp", 0),
            ("late.amqp", 0),
            ("evicted", 0),
            ("pending", 0),
        ] {
            assert_eq!(stats.get(counter), expected, "{counter}: {stats}");
        }
        let mut missing: Vec<&str> = findings
            .iter()
            .filter(|f| f["event"] == "missing")
            .map(|f| {
                assert_eq!(f["missing_on"], "amqp", "{f}");
                assert_eq!(f["seen_on"], "zmq", "{f}");
                assert_eq!(f["topic"], setup.bus.topic("from-zmq"), "{f}");
                f["msg_id"].as_str().unwrap_or_default()
            })
            .collect();
        missing.sort_unstable();
        let mut expected_lost: Vec<&str> = lost.iter().map(String::as_str).collect();
        expected_lost.sort_unstable();
        assert_eq!(missing, expected_lost);
        let changes: Vec<&Value> = findings
            .iter()
            .filter(|f| f["event"] == "changed")
            .collect();
        assert_eq!(changes.len(), 1, "{findings:?}");
        assert_eq!(changes[0]["msg_id"], changed.as_str());
        assert_eq!(changes[0]["body_changed"], true);
        assert_eq!(changes[0]["topic_changed"], false);
        for f in &findings {
            let id = f["msg_id"].as_str().unwrap_or_default();
            assert!(
                !intact.iter().any(|i| i == id),
                "an intact message reported: {f}"
            );
        }
        // Stopped by a signal: exit 0, with the counters.
        let mut verify = setup.verify;
        let stats_lines = |lines: &[String]| lines.iter().filter(|l| l.starts_with(STATS)).count();
        let before = stats_lines(&verify.stderr_so_far());
        let status = verify.terminate(Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        let after = verify.stderr_until_closed(Duration::from_secs(5));
        assert_eq!(stats_lines(&after), before + 1, "{after:?}");
        assert!(
            after
                .iter()
                .any(|l| l.starts_with(STATS) && l.contains(" missing.amqp=2 ")),
            "{after:?}"
        );
    });
}

#[test]
fn check_exits_2_naming_the_lost_and_the_changed_messages() {
    within_async(LIMIT, || async {
        let Some(mut setup) =
            Setup::start("verify-check-bad", &["--grace", "1s", "--check", "4s"]).await
        else {
            return;
        };
        let (lost, changed, intact) = setup.broken_bridge().await;
        let (status, lines) = setup.exit(WAIT);
        eprintln!("{}", lines.join("\n"));
        assert_eq!(status, Some(2), "{lines:?}");
        let summary = &lines[0];
        assert!(
            summary.starts_with("GILMSG BRIDGE CRITICAL - 2 missing on amqp ("),
            "{summary}"
        );
        for id in &lost {
            assert!(summary.contains(id.as_str()), "{id} not named: {summary}");
        }
        assert!(
            summary.contains(&format!("1 changed ({changed}")),
            "{summary}"
        );
        for id in &intact {
            assert!(!summary.contains(id.as_str()), "{id} named: {summary}");
        }
        assert!(
            summary.contains(
                "| seen_zmq=9 seen_amqp=7 matched=6 changed=1 missing_zmq=0 missing_amqp=2 "
            ),
            "{summary}"
        );
        // Then one line per finding.
        assert_eq!(lines.len(), 4, "{lines:?}");
    });
}

#[test]
fn check_exits_0_when_nothing_was_lost_or_changed() {
    within_async(LIMIT, || async {
        let Some(mut setup) = Setup::start(
            "verify-check-ok",
            &["--grace", "1s", "--check", "3s", "--json"],
        )
        .await
        else {
            return;
        };
        let mut ids = setup.perfect_bridge(5).await;
        ids.push(setup.wrapped_unsigned().await);
        // A copy that came round again (a loop): counted, not critical.
        let again = setup.message("again", 0);
        let frames = forge::frames(&again);
        setup.on_zmq(&frames);
        setup.on_amqp("zmq.topic", &frames).await;
        setup.on_amqp("zmq.topic", &frames).await;
        ids.push(again.msg_id().to_owned());
        let (status, lines) = setup.exit(WAIT);
        assert_eq!(status, Some(0), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let summary: Value = serde_json::from_str(&lines[0]).expect("one JSON object");
        assert_eq!(summary["status"], "OK", "{summary}");
        assert_eq!(
            summary["counters"]["matched"],
            ids.len() as u64,
            "{summary}"
        );
        assert_eq!(summary["counters"]["seen.zmq"], 12, "{summary}");
        assert_eq!(summary["counters"]["seen.amqp"], 12, "{summary}");
        assert_eq!(summary["counters"]["copies"], 1, "{summary}");
        assert_eq!(summary["findings"], json!([]), "{summary}");
    });
}

#[test]
fn check_exits_3_on_a_bad_config_or_an_unreachable_broker() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = gilmsg_testkit::guard::current();
        let run = |config: &Path| {
            gilmsg_testkit::run_tool(
                bridge(),
                &[
                    "verify",
                    "--config",
                    config.to_str().expect("utf-8 path"),
                    "--zmq-endpoint",
                    "tcp://127.0.0.1:1",
                    "--check",
                    "1s",
                ],
                "",
                WAIT,
                &registry,
            )
        };
        // A bad value: the file and the key are named.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "amqp_url = \"amqp://guest:guest@127.0.0.1:1/%2F\"\nack_timeout = \"soon\"\n",
        )
        .expect("write");
        let out = run(&bad);
        assert_eq!(out.status, Some(3), "{out:?}");
        let line = out.stdout.lines().next().unwrap_or_default();
        assert!(line.starts_with("GILMSG BRIDGE UNKNOWN - "), "{line}");
        assert!(line.contains(&bad.display().to_string()), "{line}");
        assert!(line.contains("key ack_timeout"), "{line}");
        // No broker in the file.
        let zeromq_only = dir.path().join("zeromq.toml");
        std::fs::write(&zeromq_only, "topic_prefix = \"org.x\"\n").expect("write");
        let out = run(&zeromq_only);
        assert_eq!(out.status, Some(3), "{out:?}");
        let line = out.stdout.lines().next().unwrap_or_default();
        assert!(line.contains(&zeromq_only.display().to_string()), "{line}");
        assert!(line.contains("key amqp_url"), "{line}");
        // A broker nobody answers for.
        let nobody = dir.path().join("nobody.toml");
        std::fs::write(
            &nobody,
            "amqp_url = \"amqp://guest:guest@127.0.0.1:1/%2F\"\n",
        )
        .expect("write");
        let out = run(&nobody);
        assert_eq!(out.status, Some(3), "{out:?}");
        let line = out.stdout.lines().next().unwrap_or_default();
        assert!(
            line.starts_with("GILMSG BRIDGE UNKNOWN - error: AMQP side: "),
            "{line}"
        );
    });
}
