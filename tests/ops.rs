//! Running gilmsg as a service (issue 14): the monitoring endpoint
//! (`/live`, `/ready`, `/metrics`), systemd's notify protocol and units,
//! heartbeats with `gilmsg-status`, and `gilmsg-tail`.
//!
//! Every process is real and on 127.0.0.1; the systemd side is a Unix
//! datagram socket the test binds and hands over as `NOTIFY_SOCKET`, as
//! systemd does.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gilmsg_testkit::monitoring::{get, monitoring_address, sample, samples};
use gilmsg_testkit::raw::RawPub;
use gilmsg_testkit::{bins, forge, within, within_async, Bus, READY_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);

/// A NOTIFY_SOCKET, as systemd binds one for a `Type=notify` service.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next datagram within `limit`, if any.
    fn next(&self, limit: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(limit))
            .expect("read timeout");
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    /// Waits for a datagram containing `line` (e.g. `READY=1`).
    fn expect(&self, line: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left.max(Duration::from_millis(1))) {
                Some(d) if d.lines().any(|l| l == line) => return,
                Some(d) => seen.push(d),
                None => break,
            }
        }
        panic!("no {line} within {limit:?}; got {seen:?}");
    }
}

#[test]
fn metrics_count_exactly_what_was_sent_and_ready_follows_the_ready_line() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        // With the relay paused, the consumer cannot finish its handshakes:
        // it is up (its endpoint answers) and not ready.
        bus.relay()
            .proc()
            .signal(Signal::SIGSTOP)
            .expect("pause the relay");
        let command = bus.bins().consumer_command(
            &bus.config_path,
            "consumer-a",
            &["--json", "--monitoring", "127.0.0.1:0"],
        );
        let consumer = bus.spawn("consumer-a", command);
        let line = consumer.expect_stderr("gilmsg-consumer: monitoring on http://", READY_TIMEOUT);
        let address = monitoring_address(&line);
        let (status, body) = get(&address, "/ready");
        let ready_line_so_far = consumer
            .proc()
            .stderr_so_far()
            .iter()
            .any(|l| l.starts_with("gilmsg-consumer: ready"));
        assert!(
            !ready_line_so_far,
            "the consumer got ready with its relay paused"
        );
        assert_eq!(status, 503, "/ready before the ready line: {body}");
        assert_eq!(get(&address, "/live").0, 200);
        bus.relay()
            .proc()
            .signal(Signal::SIGCONT)
            .expect("resume the relay");
        consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        let (status, body) = get(&address, "/ready");
        assert_eq!(status, 200, "/ready after the ready line: {body}");

        // Five acknowledged messages, then one of each refusal.
        let publisher = bus.publisher();
        for n in 0..5 {
            publisher
                .publish(
                    "counted",
                    json!({"n": n}),
                    &["consumer-a"],
                    Duration::from_secs(10),
                )
                .await
                .expect("consumer-a acks");
        }
        let raw = RawPub::connect(&bus.inbound);
        let signer = bus.identity("publisher");
        let topic = bus.topic("refused");
        let good = forge::message(&topic, json!({"x": 1}), true, Some(&signer));
        raw.send(&forge::tampered(&good, |b| {
            b.insert("msg".into(), json!({"x": 2}));
        })); // rejected.bad_signature
        raw.send(&[topic.as_bytes(), b"{not json".as_slice()]); // invalid.not_json

        // The counters settle (the refusals travel through the relay).
        let deadline = Instant::now() + Duration::from_secs(20);
        let all = loop {
            let (status, text) = get(&address, "/metrics");
            assert_eq!(status, 200);
            let all = samples(&text);
            let refused = all
                .get("gilmsg_consumer_rejected_total{reason=\"bad_signature\"}")
                .copied()
                .unwrap_or(0.0)
                + all
                    .get("gilmsg_consumer_invalid_total{reason=\"not_json\"}")
                    .copied()
                    .unwrap_or(0.0);
            if refused >= 2.0 {
                break all;
            }
            assert!(Instant::now() < deadline, "refusals never counted: {text}");
        };
        assert_eq!(sample(&all, "gilmsg_consumer_message_delivered_total"), 5);
        assert_eq!(sample(&all, "gilmsg_consumer_handler_ok_total"), 5);
        assert_eq!(sample(&all, "gilmsg_consumer_handler_failed_total"), 0);
        // One ACK entry per message handled, and one per re-sent copy
        // that came while its ACK was on the way (re-ACKed duplicates).
        let duplicates: u64 = all
            .iter()
            .filter(|(k, _)| k.starts_with("gilmsg_consumer_duplicate_total{"))
            .map(|(_, v)| *v as u64)
            .sum();
        let entries = sample(&all, "gilmsg_consumer_ack_entries_total");
        assert!((5..=5 + duplicates).contains(&entries), "{all:#?}");
        assert_eq!(
            sample(
                &all,
                "gilmsg_consumer_rejected_total{reason=\"bad_signature\"}"
            ),
            1
        );
        assert_eq!(
            sample(&all, "gilmsg_consumer_invalid_total{reason=\"not_json\"}"),
            1
        );
        // Every ACK latency is in the histogram, and nowhere else.
        assert_eq!(sample(&all, "gilmsg_consumer_ack_latency_seconds_count"), 5);
        assert_eq!(
            sample(
                &all,
                "gilmsg_consumer_ack_latency_seconds_bucket{le=\"+Inf\"}"
            ),
            5
        );
        assert!(all["gilmsg_consumer_ack_latency_seconds_sum"] > 0.0);
        assert_eq!(sample(&all, "gilmsg_consumer_queue_deliveries"), 0);
        assert_eq!(sample(&all, "gilmsg_consumer_dedupe_entries"), 5);
        assert_eq!(sample(&all, "gilmsg_ready"), 1);
        assert_eq!(sample(&all, "gilmsg_live"), 1);
        // Received = everything accounted for: delivered, own ACKs seen
        // coming back (skipped), refused.
        let received = sample(&all, "gilmsg_consumer_message_received_total");
        let skipped = sample(&all, "gilmsg_consumer_message_ack_skipped_total");
        assert_eq!(received, 5 + duplicates + skipped + 2, "{all:#?}");

        // The same numbers as the stats line: one set of counters.
        let stats = consumer.stats("gilmsg-consumer: stats");
        let (_, text) = get(&address, "/metrics");
        let again = samples(&text);
        assert_eq!(
            stats.get("message.received"),
            sample(&again, "gilmsg_consumer_message_received_total")
        );
        assert_eq!(
            stats.get("ack.sent"),
            sample(&again, "gilmsg_consumer_ack_sent_total")
        );
        assert_eq!(stats.get("handler.ok"), 5);
    })
}

#[test]
fn ready_and_live_turn_503_when_the_socket_thread_ends() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        let config = bus.config();
        let mut consumer = gilmsg::Consumer::builder(&config)
            .certname("consumer-a")
            .build()
            .expect("consumer");
        let health = gilmsg::health::ProcessHealth::new();
        health.watch("consumer", consumer.health());
        let mut metrics = gilmsg::monitoring::Metrics::new(&health);
        metrics.add(consumer.metrics());
        let server =
            gilmsg::monitoring::MonitoringServer::start("127.0.0.1:0", health.clone(), metrics)
                .expect("monitoring");
        let address = server.local_addr().to_string();
        assert_eq!(get(&address, "/ready").0, 503, "not ready yet");
        consumer.ready().await;
        health.mark_ready();
        assert_eq!(get(&address, "/ready").0, 200);
        assert_eq!(get(&address, "/live").0, 200);
        // The socket thread ends (the handle closes it); the endpoint,
        // still up, says so.
        consumer.close().await;
        let (status, body) = get(&address, "/ready");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"consumer\":\"ended\""), "{body}");
        assert_eq!(get(&address, "/live").0, 503);
        let (_, text) = get(&address, "/metrics");
        assert_eq!(sample(&samples(&text), "gilmsg_ready"), 0);
    })
}

/// A consumer whose stdout is a socket nobody reads: once its buffer is
/// full, printing blocks, and so does the socket thread that prints.
struct Stalled {
    child: Child,
    _stdout: UnixStream,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Stalled {
    fn start(bus: &Bus, notify: &Path, watchdog: Duration) -> Stalled {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut command = bus.bins().consumer_command(
            &bus.config_path,
            "consumer-a",
            &["--monitoring", "127.0.0.1:0"],
        );
        command
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the consumer");
        gilmsg_testkit::guard::current().add(child.id());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        Stalled {
            child,
            _stdout: ours,
            stderr,
        }
    }

    fn expect_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|l| l.contains(needle)).cloned())
            {
                return line;
            }
            assert!(Instant::now() < deadline, "no {needle:?} on stderr");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sd_notify_ready_then_watchdog_pings_that_stop_when_the_socket_thread_is_stuck() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        let notify = NotifySocket::bind();
        let consumer = Stalled::start(&bus, &notify.path, Duration::from_millis(400));
        let address = monitoring_address(&consumer.expect_stderr("gilmsg-consumer: monitoring on"));
        notify.expect("READY=1", READY_TIMEOUT);
        consumer.expect_stderr("gilmsg-consumer: ready");
        notify.expect("WATCHDOG=1", Duration::from_secs(5));
        notify.expect("WATCHDOG=1", Duration::from_secs(5));
        assert_eq!(get(&address, "/live").0, 200);

        // Messages big enough to fill the unread stdout: the socket thread
        // blocks in the middle of printing one.
        let raw = RawPub::flooder(&bus.inbound);
        let signer = bus.identity("publisher");
        let pad = "x".repeat(20_000);
        for n in 0..200 {
            let m = forge::message(
                &bus.topic("big"),
                json!({"n": n, "pad": pad}),
                false,
                Some(&signer),
            );
            raw.send(&forge::frames(&m));
        }
        // Stuck: /live says so once the thread missed its beats ...
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = get(&address, "/live");
            if status == 503 {
                assert!(body.contains("\"consumer\":\"stuck\""), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "the consumer never looked stuck");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(get(&address, "/ready").0, 503);
        // ... and the pings have stopped: none in many periods (drain
        // those sent before the check saw the stall first).
        while notify.next(Duration::from_millis(50)).is_some() {}
        let quiet = Instant::now();
        while let Some(datagram) = notify.next(Duration::from_millis(2000)) {
            assert!(
                !datagram.contains("WATCHDOG=1"),
                "a watchdog ping {:?} after the socket thread got stuck",
                quiet.elapsed()
            );
        }
    })
}

#[test]
fn sigterm_finishes_the_message_in_hand_acks_it_and_tells_systemd() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        let notify = NotifySocket::bind();
        let started = bus.dir().join("handler-started");
        let handler = format!("cat >/dev/null; touch {}; sleep 1", started.display());
        let mut command = bus.bins().consumer_command(
            &bus.config_path,
            "consumer-a",
            &["--exec", &handler, "--stop-grace", "20s"],
        );
        command.env("NOTIFY_SOCKET", &notify.path);
        let consumer = bus.spawn("consumer-a", command);
        consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        notify.expect("READY=1", READY_TIMEOUT);
        let publisher = bus.publisher();
        let publish = tokio::spawn(async move {
            publisher
                .publish(
                    "in-hand",
                    json!({"n": 1}),
                    &["consumer-a"],
                    Duration::from_secs(30),
                )
                .await
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the handler never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        consumer
            .proc()
            .signal(Signal::SIGTERM)
            .expect("SIGTERM the consumer");
        notify.expect("STOPPING=1", Duration::from_secs(10));
        let receipt = publish
            .await
            .expect("publish task")
            .expect("the message in hand is acked during the stop");
        assert_eq!(receipt.acks.len(), 1);
        let mut consumer = consumer;
        let status = consumer
            .proc_mut()
            .wait_timeout(Duration::from_secs(20))
            .expect("the consumer exits");
        assert!(status.success(), "{status:?}");
    })
}

/// `systemd-analyze verify` on the shipped units, with `ExecStart` pointed
/// at the binaries of this build (verify checks that they exist). It
/// reports unknown keys and bad values on stderr with exit status 0, so a
/// clean unit is one with nothing on stderr.
fn verify_units(units: &Path, names: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|n| units.join(n)))
        .current_dir(units)
        .output()
        .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {stderr}", output.status))
    }
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    within(LIMIT, || {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
        let consumer = std::fs::read_to_string(shipped.join("gilmsg-consumer@.service"))
            .expect("contrib/systemd/gilmsg-consumer@.service");
        let relay = std::fs::read_to_string(shipped.join("gilmsg-relay.service"))
            .expect("contrib/systemd/gilmsg-relay.service");
        for (name, text) in [("consumer", &consumer), ("relay", &relay)] {
            for line in ["Type=notify", "WatchdogSec=", "NotifyAccess=main"] {
                assert!(text.contains(line), "the {name} unit lacks {line}");
            }
        }
        assert!(consumer.contains("--config /etc/gilmsg/%i.toml"));
        assert!(
            consumer.contains("KillMode=mixed"),
            "SIGTERM must reach the consumer alone, so it can finish its handler"
        );
        if std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("skipped systemd-analyze verify: systemd-analyze is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let built = bins!().dir().display().to_string();
        let local = |text: &str| text.replace("/usr/bin/", &format!("{built}/"));
        std::fs::write(
            dir.path().join("gilmsg-consumer@.service"),
            local(&consumer),
        )
        .expect("write");
        std::fs::write(dir.path().join("gilmsg-relay.service"), local(&relay)).expect("write");
        verify_units(
            dir.path(),
            &["gilmsg-relay.service", "gilmsg-consumer@ledger.service"],
        )
        .expect("the shipped units verify");
        // The check can fail: a misspelt key is caught.
        std::fs::write(
            dir.path().join("gilmsg-relay.service"),
            local(&relay).replace("TimeoutStopSec", "TimeoutStopSecs"),
        )
        .expect("write");
        assert!(verify_units(dir.path(), &["gilmsg-relay.service"]).is_err());
    })
}

/// A consumer publishing heartbeats every second as `name`, not acking.
fn producer(bus: &Bus, name: &str) -> gilmsg_testkit::Running {
    let command = bus.bins().consumer_command(
        &bus.config_path,
        name,
        &["--no-ack", "--heartbeat-interval", "1s"],
    );
    let running = bus.spawn(name, command);
    running.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
    running
}

/// `gilmsg-status` listening `listen` with a 1s interval, expecting `names`.
fn status_command(bus: &Bus, names: &[&str], listen: &str, json: bool) -> std::process::Command {
    status_command_with(bus, &bus.config_path, names, listen, json)
}

fn status_command_with(
    bus: &Bus,
    config: &Path,
    names: &[&str],
    listen: &str,
    json: bool,
) -> std::process::Command {
    let mut command = std::process::Command::new(bus.bins().status);
    command
        .arg("--config")
        .arg(config)
        .args(["--interval", "1s", "--listen", listen]);
    for name in names {
        command.args(["--expect", name]);
    }
    if json {
        command.arg("--json");
    }
    command.stdin(Stdio::null());
    command
}

/// Runs a status check to its end: exit status and stdout.
fn run_status(bus: &Bus, names: &[&str], listen: &str, json: bool) -> (i32, String) {
    let mut running = bus.spawn("gilmsg-status", status_command(bus, names, listen, json));
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

fn state_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["state"].as_str())
        .unwrap_or_else(|| panic!("{name} not in {report}"))
}

const HEARTBEAT_NAMES: [&str; 3] = ["p-a", "p-b", "p-c"];

#[test]
fn status_is_critical_and_names_the_producer_that_was_killed() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &HEARTBEAT_NAMES);
        let _a = producer(&bus, "p-a");
        let _b = producer(&bus, "p-b");
        let mut c = producer(&bus, "p-c");
        // All three up: OK.
        let (code, text) = run_status(&bus, &HEARTBEAT_NAMES, "3s", false);
        assert_eq!(code, 0, "{text}");
        assert!(
            text.starts_with("GILMSG STATUS OK - 0 silent, 0 late, 3 alive"),
            "{text}"
        );
        c.proc_mut().kill();
        let (code, text) = run_status(&bus, &HEARTBEAT_NAMES, "3s", false);
        assert_eq!(code, 2, "{text}");
        assert!(
            text.starts_with("GILMSG STATUS CRITICAL - 1 silent (p-c), 0 late, 2 alive"),
            "{text}"
        );
        assert!(text.contains("\np-c silent last_seen=never"), "{text}");
        assert!(text.contains("\np-a alive last_seen="), "{text}");
        let (code, text) = run_status(&bus, &HEARTBEAT_NAMES, "3s", true);
        assert_eq!(code, 2, "{text}");
        let report: serde_json::Value = serde_json::from_str(&text).expect("--json");
        assert_eq!(report["status"], "CRITICAL");
        assert_eq!(state_of(&report, "p-a"), "alive");
        assert_eq!(state_of(&report, "p-b"), "alive");
        assert_eq!(state_of(&report, "p-c"), "silent");
        // The producers (consumers themselves) saw each other's heartbeats
        // and handed none to their handlers.
        let stats = _a.stats("gilmsg-consumer: stats");
        assert!(stats.get("message.heartbeat_skipped") > 0, "{stats}");
        assert_eq!(stats.get("message.delivered"), 0, "{stats}");
    })
}

#[test]
fn status_warns_about_a_producer_paused_while_it_listened() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &HEARTBEAT_NAMES);
        let _a = producer(&bus, "p-a");
        let b = producer(&bus, "p-b");
        let topic = format!("{}gilmsg.heartbeat", bus.prefix());
        let mut status = bus.spawn(
            "gilmsg-status",
            status_command(&bus, &["p-a", "p-b"], "6s", true),
        );
        status.expect_stderr("gilmsg-status: listening", READY_TIMEOUT);
        // Subscribed after the check: whatever this sees, the check got
        // too. The next heartbeat of p-b is heard; then p-b stops.
        let watch = gilmsg_testkit::raw::RawSub::connect(&bus.outbound, &[&topic]);
        loop {
            let heartbeat = watch.recv_envelope(&topic, Duration::from_secs(10));
            if heartbeat.msg()["name"] == "p-b" {
                break;
            }
        }
        b.proc().signal(Signal::SIGSTOP).expect("pause p-b");
        let code = status
            .proc_mut()
            .wait_timeout(Duration::from_secs(30))
            .expect("gilmsg-status ends")
            .code();
        let text = status
            .proc()
            .next_stdout(Duration::from_secs(5))
            .expect("a report");
        b.proc().signal(Signal::SIGCONT).expect("resume p-b");
        assert_eq!(code, Some(1), "{text}");
        let report: serde_json::Value = serde_json::from_str(&text).expect("--json");
        assert_eq!(report["status"], "WARNING");
        assert_eq!(state_of(&report, "p-a"), "alive");
        assert_eq!(state_of(&report, "p-b"), "late");
    })
}

#[test]
fn forged_and_replayed_heartbeats_never_count_as_alive() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["p-a", "p-c", "mallory"]);
        let _a = producer(&bus, "p-a");
        let topic = format!("{}gilmsg.heartbeat", bus.prefix());
        let mut status = bus.spawn(
            "gilmsg-status",
            status_command(&bus, &["p-a", "p-c"], "3s", true),
        );
        status.expect_stderr("gilmsg-status: listening", READY_TIMEOUT);
        let raw = RawPub::connect(&bus.inbound);
        let body = json!({"name": "p-c", "program": "gilmsg-consumer", "interval": 1.0});
        // Signed by someone else, claiming to be p-c.
        let mallory = bus.identity("mallory");
        raw.send(&forge::frames(&forge::message(
            &topic,
            body.clone(),
            false,
            Some(&mallory),
        )));
        // p-c's own heartbeat, signed long ago, replayed now.
        let p_c = bus.identity("p-c");
        let old = forge::message_at(
            &topic,
            body.clone(),
            false,
            Some(&p_c),
            forge::unix_now() - 3600,
        );
        raw.send(&forge::frames(&old));
        // p-c's real heartbeat with its timestamp moved to now.
        let recent = forge::message_at(
            &topic,
            body.clone(),
            false,
            Some(&p_c),
            forge::unix_now() - 300,
        );
        raw.send(&forge::tampered(&recent, |b| {
            b.insert("timestamp".into(), json!(forge::unix_now()));
        }));
        // Unsigned.
        raw.send(&forge::frames(&forge::message(&topic, body, false, None)));
        let code = status
            .proc_mut()
            .wait_timeout(Duration::from_secs(30))
            .expect("gilmsg-status ends")
            .code();
        let text = status
            .proc()
            .next_stdout(Duration::from_secs(5))
            .expect("a report");
        let report: serde_json::Value = serde_json::from_str(&text).expect("--json");
        assert_eq!(state_of(&report, "p-a"), "alive", "{text}");
        assert_eq!(state_of(&report, "p-c"), "silent", "{text}");
        assert_eq!(code, Some(2), "{text}");
        // Mallory was heard, as herself.
        assert_eq!(report["unexpected"], json!(["mallory"]), "{text}");
    })
}

#[test]
fn status_help_lists_the_nagios_exit_statuses() {
    let output = std::process::Command::new(bins!().status)
        .arg("--help")
        .output()
        .expect("gilmsg-status --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for line in ["0 OK", "1 WARNING", "2 CRITICAL", "3 UNKNOWN"] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    // A usage error is UNKNOWN, not clap's 2 (CRITICAL to nagios).
    let output = std::process::Command::new(bins!().status)
        .arg("--no-such-flag")
        .output()
        .expect("gilmsg-status");
    assert_eq!(output.status.code(), Some(3));
}

#[test]
fn tail_shows_every_message_with_its_verdict_and_never_acks() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["mallory"]);
        let pattern = format!("{}*.tail.*", bus.prefix());
        let tail = |args: &[&str]| {
            let mut command = std::process::Command::new(bus.bins().tail);
            command
                .arg("--config")
                .arg(&bus.config_path)
                .args(["--topic", &pattern, "--count", "3"])
                .args(args)
                .stdin(Stdio::null());
            let running = bus.spawn("gilmsg-tail", command);
            running.expect_stderr("gilmsg-tail: ready", READY_TIMEOUT);
            running
        };
        let json_tail = tail(&["--json"]);
        let line_tail = tail(&[]);
        let raw = RawPub::connect(&bus.inbound);
        let publisher = bus.identity("publisher");
        let topic = |what: &str| format!("{}test.tail.{what}", bus.prefix());
        raw.send(&forge::frames(&forge::message(
            &topic("other-filter").replace(".tail.", ".nottail."),
            json!({"hidden": true}),
            false,
            Some(&publisher),
        )));
        raw.send(&forge::frames(&forge::message(
            &topic("valid"),
            json!({"n": 1}),
            true,
            Some(&publisher),
        )));
        let signed = forge::message(
            &topic("forged"),
            json!({"amount": 1}),
            true,
            Some(&publisher),
        );
        raw.send(&forge::tampered(&signed, |b| {
            b.insert("msg".into(), json!({"amount": 1000}));
        }));
        raw.send(&forge::frames(&forge::message(
            &topic("unsigned"),
            json!({"n": 3}),
            false,
            None,
        )));

        let mut lines = Vec::new();
        for _ in 0..3 {
            lines.push(
                json_tail
                    .proc()
                    .next_stdout(Duration::from_secs(20))
                    .expect("a line"),
            );
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
        assert_eq!(by_topic("valid")["signer"], "publisher");
        assert_eq!(by_topic("forged")["verdict"], "invalid");
        assert_eq!(by_topic("forged")["reason"], "bad_signature");
        assert_eq!(by_topic("forged")["claimed_signer"], "publisher");
        assert_eq!(by_topic("forged")["signer"], serde_json::Value::Null);
        assert_eq!(by_topic("forged")["msg"], json!({"amount": 1000}));
        assert_eq!(by_topic("unsigned")["verdict"], "unsigned");
        assert!(!lines.iter().any(|l| l.contains("hidden")), "{lines:?}");

        let mut text = Vec::new();
        for _ in 0..3 {
            text.push(
                line_tail
                    .proc()
                    .next_stdout(Duration::from_secs(20))
                    .expect("a line"),
            );
        }
        let line_for = |what: &str| {
            text.iter()
                .find(|l| l.contains(&topic(what)))
                .unwrap_or_else(|| panic!("{what} not shown: {text:?}"))
        };
        assert!(
            line_for("valid").contains(" valid signer=publisher "),
            "{text:?}"
        );
        assert!(
            line_for("forged").contains(" invalid(bad_signature) claimed=publisher (unverified) "),
            "{text:?}"
        );
        assert!(
            line_for("unsigned").contains(" unsigned signer=- "),
            "{text:?}"
        );
        // Not a terminal: no colour.
        assert!(!text.iter().any(|l| l.contains('\u{1b}')), "{text:?}");
        // Nothing was acked: the relay saw no ACK.
        assert_eq!(bus.relay_stats().get("relay.forwarded"), 4);
    })
}

#[test]
fn publisher_metrics_have_ack_latencies_resends_and_timeouts_by_recipient_and_topic() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["consumer-a", "ghost"]);
        let _consumer = bus.consumer("consumer-a", &[]);
        let publisher = bus.publisher();
        let health = gilmsg::health::ProcessHealth::new();
        health.watch("publisher", publisher.health());
        let mut metrics = gilmsg::monitoring::Metrics::new(&health);
        metrics.add(publisher.metrics());
        let server =
            gilmsg::monitoring::MonitoringServer::start("127.0.0.1:0", health.clone(), metrics)
                .expect("monitoring");
        let address = server.local_addr().to_string();
        for n in 0..3 {
            publisher
                .publish(
                    "latency",
                    json!({"n": n}),
                    &["consumer-a"],
                    Duration::from_secs(10),
                )
                .await
                .expect("acked");
        }
        let err = publisher
            .publish(
                "lost",
                json!({"n": 4}),
                &["consumer-a", "ghost"],
                Duration::from_secs(1),
            )
            .await
            .expect_err("ghost never acks");
        assert!(matches!(err, gilmsg::Error::Timeout(_)), "{err}");
        let (status, text) = get(&address, "/metrics");
        assert_eq!(status, 200);
        let all = samples(&text);
        let stats = publisher.stats();
        assert_eq!(sample(&all, "gilmsg_publisher_publish_acked_total"), 3);
        assert_eq!(sample(&all, "gilmsg_publisher_publish_timed_out_total"), 1);
        assert_eq!(
            sample(&all, "gilmsg_publisher_ack_latency_seconds_count"),
            3
        );
        assert_eq!(
            sample(
                &all,
                "gilmsg_publisher_ack_latency_seconds_bucket{le=\"+Inf\"}"
            ),
            3
        );
        let lost = bus.topic("lost");
        assert_eq!(
            sample(
                &all,
                &format!(
                    "gilmsg_publisher_timeouts_by_recipient_total{{recipient=\"ghost\",topic=\"{lost}\"}}"
                )
            ),
            1,
            "{text}"
        );
        assert!(!text.contains("recipient=\"consumer-a\""), "{text}");
        // Re-sent while ghost did not answer; the same count as the stats.
        let resent = sample(&all, "gilmsg_publisher_publish_resent_total");
        assert!(resent >= 1, "{text}");
        assert_eq!(resent, stats.get("publish.resent"));
        assert_eq!(sample(&all, "gilmsg_publisher_publish_in_flight"), 0);
        assert_eq!(sample(&all, "gilmsg_live"), 1);
    })
}

#[test]
fn the_streaming_logger_serves_metrics_and_sends_heartbeats() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["consumer-a", "billing"]);
        let _consumer = bus.consumer("consumer-a", &[]);
        let notify = NotifySocket::bind();
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
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::piped());
        let mut logger = bus.spawn("gilmsg-logger", command);
        let address = monitoring_address(
            &logger.expect_stderr("gilmsg-logger: monitoring on", READY_TIMEOUT),
        );
        notify.expect("READY=1", READY_TIMEOUT);
        // Its heartbeat, signed as billing, on the heartbeat topic.
        let topic = format!("{}gilmsg.heartbeat", bus.prefix());
        let watch = gilmsg_testkit::raw::RawSub::connect(&bus.outbound, &[&topic]);
        let heartbeat = watch.recv_envelope(&topic, Duration::from_secs(10));
        assert_eq!(heartbeat.msg()["name"], "billing");
        assert_eq!(heartbeat.msg()["program"], "gilmsg-logger");
        let mut stdin = logger.proc_mut().take_stdin().expect("stdin");
        writeln!(stdin, "one").expect("write");
        writeln!(stdin, "two").expect("write");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, text) = get(&address, "/metrics");
            let all = samples(&text);
            if all.get("gilmsg_publisher_publish_acked_total") == Some(&2.0) {
                assert_eq!(
                    sample(&all, "gilmsg_publisher_ack_latency_seconds_count"),
                    2
                );
                assert_eq!(sample(&all, "gilmsg_ready"), 1);
                break;
            }
            assert!(Instant::now() < deadline, "never acked: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(stdin);
        notify.expect("STOPPING=1", Duration::from_secs(10));
        let status = logger
            .proc_mut()
            .wait_timeout(Duration::from_secs(20))
            .expect("the logger exits at the end of its input");
        assert!(status.success(), "{status:?}");
    })
}

#[test]
fn the_relay_tells_systemd_and_serves_its_counters() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        let notify = NotifySocket::bind();
        let mut command = std::process::Command::new(bus.bins().relay);
        command
            .args([
                "--inbound",
                "tcp://127.0.0.1:*",
                "--outbound",
                "tcp://127.0.0.1:*",
                "--monitoring",
                "127.0.0.1:0",
            ])
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "400000")
            .stdin(Stdio::null());
        let relay = bus.spawn("relay-2", command);
        let address =
            monitoring_address(&relay.expect_stderr("gilmsg-relay: monitoring on", READY_TIMEOUT));
        let ready = relay.expect_stderr("gilmsg-relay: ready", READY_TIMEOUT);
        notify.expect("READY=1", READY_TIMEOUT);
        notify.expect("WATCHDOG=1", Duration::from_secs(5));
        assert_eq!(get(&address, "/ready").0, 200);
        let inbound = gilmsg_testkit::field(&ready, "inbound").expect("inbound=");
        let outbound = gilmsg_testkit::field(&ready, "outbound").expect("outbound=");
        let topic = bus.topic("relayed");
        let sub = gilmsg_testkit::raw::RawSub::connect(outbound, &[&topic]);
        let raw = RawPub::connect(inbound);
        let signer = bus.identity("publisher");
        // Sent until the subscription has reached the relay (a SUB gives
        // no sign of that), then counted exactly from there.
        let mut sent = 0;
        loop {
            raw.send(&forge::frames(&forge::message(
                &topic,
                json!({"n": sent}),
                false,
                Some(&signer),
            )));
            sent += 1;
            if sub.recv(Duration::from_millis(200)).is_some() {
                break;
            }
            assert!(sent < 100, "the subscriber never got a message");
        }
        let (_, text) = get(&address, "/metrics");
        assert_eq!(
            sample(&samples(&text), "gilmsg_relay_forwarded_total"),
            sent
        );
        relay
            .proc()
            .signal(Signal::SIGTERM)
            .expect("stop the relay");
        notify.expect("STOPPING=1", Duration::from_secs(10));
    })
}

#[test]
fn a_monitoring_port_in_use_is_a_clear_error() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["consumer-a"]);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("address").to_string();
        let out = bus.run_with_env(
            "gilmsg-consumer",
            &[
                "--config",
                bus.config_path.to_str().expect("utf-8 path"),
                "--certname",
                "consumer-a",
                "--monitoring",
                &address,
            ],
            "",
            &[],
            Duration::from_secs(30),
        );
        assert_eq!(out.status, Some(3), "{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("cannot listen on {address} for monitoring")),
            "{}",
            out.stderr
        );
    })
}

#[test]
fn the_relay_sends_heartbeats_as_its_configured_identity() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["hub"]);
        let config = bus.dir().join("hub.toml");
        bus.write_config(
            &config,
            "certname = \"hub\"\nheartbeat_interval = \"1s\"",
            &format!("[{:?}]", bus.outbound),
        );
        let mut command = std::process::Command::new(bus.bins().relay);
        command
            .arg("--config")
            .arg(&config)
            .args([
                "--inbound",
                "tcp://127.0.0.1:*",
                "--outbound",
                "tcp://127.0.0.1:*",
            ])
            .stdin(Stdio::null());
        let relay = bus.spawn("hub", command);
        let ready = relay.expect_stderr("gilmsg-relay: ready", READY_TIMEOUT);
        // Heard on the hub's own outbound socket.
        let outbound = gilmsg_testkit::field(&ready, "outbound").expect("outbound=");
        let listen = bus.dir().join("listen.toml");
        bus.write_config(&listen, "", &format!("[{outbound:?}]"));
        let mut status = bus.spawn(
            "gilmsg-status",
            status_command_with(&bus, &listen, &["hub"], "3s", false),
        );
        let code = status
            .proc_mut()
            .wait_timeout(Duration::from_secs(60))
            .expect("gilmsg-status ends")
            .code();
        let mut lines = Vec::new();
        while let Some(line) = status.proc().next_stdout(Duration::from_secs(1)) {
            lines.push(line);
        }
        let text = lines.join("\n");
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("\nhub alive "), "{text}");
    })
}
