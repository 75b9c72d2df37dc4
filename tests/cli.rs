//! The command-line tools as an operator meets them (issue 16 and the
//! "found by running the tools" items of issue 9): the direct topology,
//! config keys vs. flags, stdin failures, exit statuses, logging, relative
//! `ipc://` paths, stats lines, signals and the consumer's stop sequence,
//! misspelt keys, flag validation, and fedmsg's flags. Every test runs the
//! real binaries.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gilmsg_testkit::bins;
use gilmsg_testkit::field;
use gilmsg_testkit::{parse_stats, within, Bus, READY_TIMEOUT};
use nix::sys::signal::Signal;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);
const RUN: Duration = Duration::from_secs(30);

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Waits (bounded) until `path` holds a line, and returns it: the handler
/// scripts below write their pid there as their first act.
fn wait_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        // Paces a bounded poll of a file another process writes.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if is_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    is_gone(pid)
}

/// A config for the direct topology: no relay; the publisher `billing`
/// and the consumer `ledger` each bind an ipc socket named relative to the
/// config file.
fn write_direct_config(bus: &Bus) -> std::path::PathBuf {
    let path = bus.dir().join("direct.toml");
    let text = format!(
        r#"topic_prefix = "{prefix}"
environment = "{env}"
ssldir = {ssldir:?}
ack_timeout = "10s"

[endpoints]
billing = "ipc://billing.sock"
ledger = "ipc://ledger.sock"
"#,
        prefix = gilmsg_testkit::TOPIC_PREFIX,
        env = gilmsg_testkit::ENVIRONMENT,
        ssldir = utf8(&bus.ssldir),
    );
    std::fs::write(&path, text).expect("write direct config");
    path
}

/// Issue 16 item 1: the direct topology from the CLI. A long-lived
/// `gilmsg-logger --stream --name billing` binds its endpoint, a consumer
/// with `--name ledger` binds its ACK endpoint, and every stdin line is
/// published through the one publisher and acked.
#[test]
fn direct_topology_with_a_long_lived_logger() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["billing", "ledger"]);
        let config = write_direct_config(&bus);
        let mut logger = Command::new(bins!().logger);
        logger
            .args([
                "--config",
                utf8(&config),
                "--name",
                "billing",
                "--certname",
                "billing",
            ])
            .args([
                "--modname",
                "billing",
                "--topic",
                "invoice.paid",
                "--json-input",
                "--stream",
            ])
            .args(["--recipients", "ledger", "--print-receipt"])
            .env("GILMSG_LOG", "info")
            .stdin(Stdio::piped());
        let mut logger = bus.spawn("logger", logger);
        logger.expect_stderr("publishing on ipc://", READY_TIMEOUT);
        let consumer = bins!().consumer_command(&config, "ledger", &["--name", "ledger", "--json"]);
        let consumer = bus.spawn("ledger", consumer);
        let ready = consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        assert_eq!(field(&ready, "endpoints"), Some("1/1"), "{ready}");
        assert!(bus.dir().join("billing.sock").exists());
        assert!(bus.dir().join("ledger.sock").exists());

        let mut stdin = logger.take_stdin().expect("logger stdin");
        for n in [42, 43] {
            writeln!(stdin, "{{\"invoice\": {n}}}").expect("write a line");
            stdin.flush().expect("flush");
            let receipt = logger
                .wait_stdout("\"acks\"", RUN)
                .unwrap_or_else(|e| panic!("{e}"));
            let receipt: Value = serde_json::from_str(&receipt).expect("receipt JSON");
            assert_eq!(receipt["acks"][0]["recipient"], "ledger", "{receipt}");
            let shown = consumer
                .wait_stdout(&format!("\"invoice\":{n}"), RUN)
                .unwrap_or_else(|e| panic!("{e}"));
            let shown: Value = serde_json::from_str(&shown).expect("--json line");
            assert_eq!(shown["signer"], "billing", "{shown}");
        }
        drop(stdin);
        let status = logger.wait_timeout(RUN).expect("logger exits at EOF");
        assert_eq!(status.code(), Some(0), "{:?}", logger.stderr_so_far());
    })
}

/// Issue 16 item 4: `cert_prefix` from the config is used when
/// `--cert-prefix` is not given; the flag, when given, wins.
#[test]
fn cert_prefix_comes_from_the_config_unless_the_flag_is_given() {
    within(LIMIT, || {
        let bus = Bus::start_with(
            bins!(),
            &["a", "billing.box", "other.box"],
            "cert_prefix = \"billing\"\nhostname = \"box\"",
        );
        let a = bus.consumer("a", &[]);
        let config = utf8(&bus.config_path);
        let out = bus.logger(&["--config", config, "--print-config"], "", RUN);
        assert!(out.stdout.contains("cert_prefix = \"billing\""), "{out:?}");
        let out = bus.logger(
            &[
                "--config",
                config,
                "--recipients",
                "a",
                "--message",
                "from-config",
            ],
            "",
            RUN,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let line = a.wait_stdout("from-config", RUN);
        let shown: Value = serde_json::from_str(&line).expect("--json line");
        assert_eq!(shown["signer"], "billing.box", "{shown}");
        let out = bus.logger(
            &[
                "--config",
                config,
                "--cert-prefix",
                "other",
                "--recipients",
                "a",
                "--message",
                "from-flag",
            ],
            "",
            RUN,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let line = a.wait_stdout("from-flag", RUN);
        let shown: Value = serde_json::from_str(&line).expect("--json line");
        assert_eq!(shown["signer"], "other.box", "{shown}");
    })
}

/// Issue 16 item 5: stdin stops at the first failure by default (and
/// `--help` says so); `--keep-going` publishes every line, reports each
/// failure and exits with the highest status.
#[test]
fn keep_going_publishes_every_line_and_exits_with_the_worst_status() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a", "offline"]);
        let a = bus.consumer("a", &["--no-ack"]);
        let config = utf8(&bus.config_path);
        let args = [
            "--config",
            config,
            "--certname",
            "publisher",
            "--recipients",
            "offline",
            "--ack-timeout",
            "200ms",
        ];

        let out = bus.logger(&args, "one\ntwo\nthree\n", RUN);
        assert_eq!(out.status, Some(1), "{out:?}");
        assert_eq!(out.stderr_lines().len(), 1, "{out:?}");
        a.wait_stdout("\"log\":\"one\"", RUN);
        // The logger has exited: whatever it sent has reached a by now or
        // was never sent. Only "one" was.
        let stats = a.stats();
        assert_eq!(stats.get("message.delivered"), 1, "{stats}");

        let mut keep = args.to_vec();
        keep.push("--keep-going");
        let out = bus.logger(&keep, "four\nfive\nsix\n", RUN);
        assert_eq!(out.status, Some(1), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 4, "{out:?}");
        for line in &lines[..3] {
            assert!(
                line.starts_with("gilmsg-logger: timeout: no ACK within 200ms from offline"),
                "{out:?}"
            );
        }
        assert!(lines[3].contains("3 of 3 messages failed"), "{out:?}");
        for word in ["four", "five", "six"] {
            a.wait_stdout(&format!("\"log\":\"{word}\""), RUN);
        }

        // Bad JSON lines in the long-lived mode: reported, skipped, status 2.
        let out = bus.logger(
            &[
                "--config",
                config,
                "--certname",
                "publisher",
                "--json-input",
                "--stream",
                "--recipients",
                "a",
            ],
            "{\"n\": 1}\n{oops\n{\"n\": 3}\n",
            RUN,
        );
        // a runs with --no-ack: every message times out (1), the bad line is 2.
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            out.stderr.contains("stdin line 2: not valid JSON"),
            "{out:?}"
        );
        a.wait_stdout("\"msg\":{\"n\":3}", RUN);

        let help = bus.logger(&["--help"], "", RUN);
        assert!(
            help.stdout.contains("remaining input is NOT published"),
            "{help:?}"
        );
        assert!(help.stdout.contains("--keep-going"), "{help:?}");
    })
}

/// Issue 16 item 6 (and `--timeout`): "no subscriber appeared" is exit 3
/// with or without `--recipients`, and the line gives the real time spent.
#[test]
fn no_subscriber_is_exit_3_either_way_with_the_real_elapsed_time() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let path = bus.dir().join("nobody.toml");
        std::fs::write(
            &path,
            format!(
                "ssldir = {:?}\nrelay_inbound = \"ipc://nobody-listens.sock\"\nack_timeout = \"5s\"\n[endpoints]\nrelay_outbound = \"ipc://nobody-publishes.sock\"\n",
                utf8(&bus.ssldir)
            ),
        )
        .expect("write config");
        let config = utf8(&path);
        for extra in [
            &["--timeout", "0.3"][..],
            &["--recipients", "a", "--ack-timeout", "300ms"][..],
        ] {
            let mut args = vec![
                "--config",
                config,
                "--certname",
                "publisher",
                "--message",
                "x",
            ];
            args.extend_from_slice(extra);
            let started = Instant::now();
            let out = bus.logger(&args, "", RUN);
            let took = started.elapsed();
            assert_eq!(out.status, Some(3), "{extra:?}: {out:?}");
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{out:?}");
            assert!(lines[0].contains("no subscriber appeared for "), "{out:?}");
            let after = lines[0].rsplit_once("gave up after ").expect("elapsed").1;
            let seconds = match after.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().expect("ms") / 1000.0,
                None => after
                    .strip_suffix('s')
                    .expect("s")
                    .parse::<f64>()
                    .expect("s"),
            };
            assert!(
                seconds >= 0.3 && seconds <= took.as_secs_f64(),
                "{seconds} vs {took:?}: {out:?}"
            );
        }
    })
}

fn log_lines(stderr: &str) -> impl Iterator<Item = &str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("gilmsg-"))
}

/// Issue 16 item 7: `GILMSG_LOG=info` says what the tools do; no colour
/// codes when stderr is not a terminal; JSON lines with
/// `GILMSG_LOG_FORMAT=json` or `--log-format json`.
#[test]
fn logs_say_what_happens_in_text_or_json() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let mut consumer =
            bins!().consumer_command(&bus.config_path, "a", &["--exec", "cat > /dev/null"]);
        consumer
            .env("GILMSG_LOG", "info")
            .env("GILMSG_LOG_FORMAT", "json");
        let mut consumer = bus.spawn("a", consumer);
        consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        let config = utf8(&bus.config_path);
        let args = [
            "--config",
            config,
            "--certname",
            "publisher",
            "--recipients",
            "a",
            "--message",
            "hi",
        ];
        let out = bus.run_with_env("gilmsg-logger", &args, "", &[("GILMSG_LOG", "info")], RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        assert!(
            !out.stderr.contains('\u{1b}'),
            "colour codes in a pipe: {out:?}"
        );
        assert!(
            out.stderr.contains("publishing through relay_inbound"),
            "{out:?}"
        );
        assert!(out.stderr.contains("acked by a"), "{out:?}");

        let mut json_args = args.to_vec();
        json_args.extend(["--log-format", "json"]);
        let out = bus.run_with_env(
            "gilmsg-logger",
            &json_args,
            "",
            &[("GILMSG_LOG", "info")],
            RUN,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let mut messages = Vec::new();
        for line in log_lines(&out.stderr) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
            messages.push(v["message"].as_str().unwrap_or_default().to_owned());
        }
        assert!(
            messages.iter().any(|m| m.contains("acked by a")),
            "{messages:?}"
        );

        consumer.expect_stderr("exited 0", RUN);
        consumer
            .signal(Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = consumer.wait_timeout(RUN).expect("consumer stops");
        assert_eq!(status.code(), Some(0));
        let stderr = consumer.stderr_until_closed(RUN);
        let mut said = Vec::new();
        for line in stderr.iter().filter(|l| !l.starts_with("gilmsg-consumer:")) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            said.push(v["message"].as_str().unwrap_or_default().to_owned());
        }
        for needle in [
            "consumer up",
            "waiting for readiness",
            "handler for",
            "stopping",
            "stopped",
        ] {
            assert!(
                said.iter().any(|m| m.contains(needle)),
                "{needle}: {said:?}"
            );
        }
    })
}

/// Issue 16 item 8: relative `ipc://` paths are relative to the config
/// file, not to the working directory of whoever reads it.
#[test]
fn relative_ipc_paths_resolve_against_the_config_file() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let confdir = bus.dir().join("etc");
        let elsewhere = bus.dir().join("elsewhere");
        std::fs::create_dir_all(&confdir).expect("mkdir");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        let path = confdir.join("bus.toml");
        std::fs::write(
            &path,
            format!(
                "topic_prefix = \"{}\"\nenvironment = \"{}\"\nssldir = {:?}\nactive = true\nrelay_inbound = \"ipc://in.sock\"\n[endpoints]\nrelay_outbound = \"ipc://out.sock\"\n",
                gilmsg_testkit::TOPIC_PREFIX,
                gilmsg_testkit::ENVIRONMENT,
                utf8(&bus.ssldir)
            ),
        )
        .expect("write config");
        let mut relay = Command::new(bins!().relay);
        relay
            .args(["--config", utf8(&path)])
            .current_dir(&elsewhere);
        let relay = bus.spawn("ipc-relay", relay);
        let line = relay.expect_stderr("gilmsg-relay: ready", READY_TIMEOUT);
        let expected = format!("ipc://{}", utf8(&confdir.join("in.sock")));
        assert_eq!(field(&line, "inbound"), Some(expected.as_str()), "{line}");
        assert!(confdir.join("in.sock").exists() && confdir.join("out.sock").exists());
        assert!(!elsewhere.join("in.sock").exists());

        let mut consumer = bins!().consumer_command(&path, "a", &["--json"]);
        consumer.current_dir(bus.dir());
        let consumer = bus.spawn("a", consumer);
        consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        let mut logger = Command::new(bins!().logger);
        logger
            .args([
                "--config",
                utf8(&path),
                "--certname",
                "publisher",
                "--recipients",
                "a",
                "--message",
                "over ipc",
            ])
            .current_dir(&elsewhere)
            .stdin(Stdio::null());
        let mut logger = bus.spawn("logger", logger);
        let status = logger.wait_timeout(RUN).expect("logger exits");
        assert_eq!(status.code(), Some(0), "{:?}", logger.stderr_so_far());
        consumer
            .wait_stdout("over ipc", RUN)
            .unwrap_or_else(|e| panic!("{e}"));
    })
}

/// Issue 16 item 10: no trailing space on an empty stats line; the stats
/// after `--count 1` include the ACK that was sent; one wording for a bad
/// number whatever the value.
#[test]
fn stats_lines_and_number_wording() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a", "b"]);
        let idle = bus.consumer("b", &["--topic", "org.nothing."]);
        let stats_line = idle
            .stop_and_stderr()
            .into_iter()
            .rfind(|l| l.starts_with("gilmsg-consumer: stats"))
            .expect("a final stats line");
        assert!(!stats_line.ends_with(' '), "{stats_line:?}");

        let counted = bins!().consumer_command(&bus.config_path, "a", &["--json", "--count", "1"]);
        let mut counted = bus.spawn("a", counted);
        counted.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        let config = utf8(&bus.config_path);
        let out = bus.logger(
            &[
                "--config",
                config,
                "--certname",
                "publisher",
                "--recipients",
                "a",
                "--message",
                "once",
            ],
            "",
            RUN,
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        let status = counted.wait_timeout(RUN).expect("exits after --count 1");
        assert_eq!(status.code(), Some(0));
        let last = counted
            .stderr_until_closed(RUN)
            .into_iter()
            .rfind(|l| l.starts_with("gilmsg-consumer: stats"))
            .expect("final stats");
        assert!(parse_stats(&last).get("ack.sent") >= 1, "{last}");

        let mut reasons = Vec::new();
        for value in ["0", "-1"] {
            let path = bus.dir().join(format!("size{value}.toml"));
            bus.write_config(
                &path,
                &format!("max_message_size = {value}"),
                &format!("[{:?}]", bus.outbound),
            );
            let out = bus.logger(&["--config", utf8(&path), "--message", "x"], "", RUN);
            assert_eq!(out.status, Some(2), "{out:?}");
            let reason = out
                .stderr
                .split("key max_message_size: ")
                .nth(1)
                .expect("key named")
                .trim()
                .to_owned();
            assert!(
                reason.starts_with("must be a whole number from 1 to "),
                "{reason}"
            );
            reasons.push(
                reason
                    .rsplit_once(", not ")
                    .expect("value shown")
                    .0
                    .to_owned(),
            );
        }
        assert_eq!(reasons[0], reasons[1]);
    })
}

/// Issue 9 item 8: SIGUSR1 and SIGTERM before the ready line are handled
/// (stats printed, clean exit 0), not the default action.
#[test]
fn signals_before_ready_are_handled() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let path = bus.dir().join("never-ready.toml");
        // An endpoint nobody binds: the consumer waits for it.
        bus.write_config(&path, "", "\"ipc://nobody-binds-this.sock\"");
        let mut consumer = bins!().consumer_command(&path, "a", &["--json"]);
        consumer.env("GILMSG_LOG", "info");
        let mut consumer = bus.spawn("a", consumer);
        consumer.expect_stderr("waiting for readiness", READY_TIMEOUT);
        consumer
            .signal(Signal::SIGUSR1)
            .unwrap_or_else(|e| panic!("{e}"));
        consumer.expect_stderr("gilmsg-consumer: stats", RUN);
        consumer
            .signal(Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = consumer.wait_timeout(RUN).expect("stops");
        assert_eq!(
            status.code(),
            Some(0),
            "{:?}",
            consumer.stderr_until_closed(RUN)
        );
        let stats = consumer
            .stderr_until_closed(RUN)
            .iter()
            .filter(|l| l.starts_with("gilmsg-consumer: stats"))
            .count();
        assert_eq!(stats, 2, "{:?}", consumer.stderr_until_closed(RUN));
    })
}

/// Starts a consumer whose handler records its pid and then sleeps 30 s,
/// sends it one message, and returns it with the handler's pid.
fn consumer_with_a_sleeping_handler(bus: &Bus, extra: &[&str]) -> (gilmsg_testkit::Running, i32) {
    let pidfile = bus.dir().join(format!("handler-{}.pid", extra.len()));
    let _ = std::fs::remove_file(&pidfile);
    let handler = format!("echo $$ > {}; exec sleep 30", utf8(&pidfile));
    let mut consumer = bins!().consumer_command(
        &bus.config_path,
        "a",
        &[&["--exec", handler.as_str()], extra].concat(),
    );
    consumer.env("GILMSG_LOG", "info");
    let consumer = bus.spawn("a", consumer);
    consumer.expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
    let config = utf8(&bus.config_path);
    // A plain publish: the consumer gets it whether or not it ever acks.
    let out = bus.logger(
        &[
            "--config",
            config,
            "--certname",
            "publisher",
            "--message",
            "slow",
        ],
        "",
        RUN,
    );
    assert_eq!(out.status, Some(0), "{out:?}");
    let pid: i32 = wait_file(&pidfile, RUN).parse().expect("a pid");
    assert!(!is_gone(pid));
    (consumer, pid)
}

/// Issue 9 item 8: SIGTERM while an `--exec` handler runs: the handler
/// gets the grace period, then SIGTERM; the consumer stops in bounded time.
/// A second SIGTERM skips the rest of the grace.
#[test]
fn sigterm_during_a_handler_follows_the_stop_sequence() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let (mut consumer, pid) =
            consumer_with_a_sleeping_handler(&bus, &["--stop-grace", "300ms"]);
        let started = Instant::now();
        consumer
            .signal(Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = consumer
            .wait_timeout(Duration::from_secs(10))
            .expect("stops within the grace and the kill delay");
        assert_eq!(status.code(), Some(0));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "handler {pid} survived the stop"
        );
        let stderr = consumer.stderr_until_closed(RUN);
        assert!(
            stderr
                .iter()
                .any(|l| l.contains("ended by the stop; not acking")),
            "{stderr:?}"
        );
        assert!(
            stderr
                .iter()
                .any(|l| l.starts_with("gilmsg-consumer: stats")),
            "{stderr:?}"
        );

        let (mut consumer, pid) =
            consumer_with_a_sleeping_handler(&bus, &["--stop-grace", "60s", "--json"]);
        consumer
            .signal(Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        consumer.expect_stderr("taking no new messages", RUN);
        consumer
            .signal(Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = consumer
            .wait_timeout(Duration::from_secs(10))
            .expect("a second SIGTERM ends the grace");
        assert_eq!(status.code(), Some(0));
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "handler {pid} survived"
        );
    })
}

/// Issue 9 item 8: a SIGKILLed consumer takes its handler with it.
#[test]
fn handler_dies_with_a_killed_consumer() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let (mut consumer, pid) = consumer_with_a_sleeping_handler(&bus, &[]);
        consumer.kill();
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "handler {pid} orphaned"
        );
    })
}

/// Issue 9 item 8: misspelt keys are named with the closest known key;
/// an error under `--strict-config` or `strict_config = true`.
#[test]
fn misspelt_config_keys_are_named() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let path = bus.dir().join("typos.toml");
        bus.write_config(
            &path,
            "topic_prefx = \"org.x\"\nack_timout = 3",
            &format!("[{:?}]", bus.outbound),
        );
        let file = utf8(&path);
        let out = bus.logger(&["--config", file, "--print-config"], "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        for (typo, key) in [
            ("topic_prefx", "topic_prefix"),
            ("ack_timout", "ack_timeout"),
        ] {
            assert!(
                out.stderr.lines().any(|l| l.contains(file)
                    && l.contains(&format!(
                        "key {typo}: not a gilmsg key (did you mean {key}?)"
                    ))),
                "{typo}: {out:?}"
            );
        }
        for tool in ["gilmsg-logger", "gilmsg-consumer", "gilmsg-relay"] {
            let out = bus.run_with_env(
                tool,
                &["--config", file, "--strict-config", "--print-config"],
                "",
                &[],
                RUN,
            );
            assert_eq!(out.status, Some(2), "{tool}: {out:?}");
            assert!(
                out.stderr.contains("did you mean ack_timeout?"),
                "{tool}: {out:?}"
            );
        }
        let strict = bus.dir().join("strict.toml");
        bus.write_config(
            &strict,
            "strict_config = true\nrelay_inbond = \"tcp://127.0.0.1:1\"",
            &format!("[{:?}]", bus.outbound),
        );
        let out = bus.logger(&["--config", utf8(&strict), "--message", "x"], "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains("key relay_inbond: not a gilmsg key (did you mean relay_inbound?)"),
            "{out:?}"
        );
    })
}

/// Issue 9 item 8: the relay's flags are checked by the config's rules,
/// with the config's words, and exit 2.
#[test]
fn relay_flags_are_checked_like_the_config() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &[]);
        let run = |args: &[&str]| bus.run_with_env("gilmsg-relay", args, "", &[], RUN);
        let out = run(&[
            "--inbound",
            "tcp://127.0.0.1:99999",
            "--outbound",
            "tcp://127.0.0.1:*",
        ]);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            out.stderr.contains("port must be a number up to 65535"),
            "{out:?}"
        );
        let out = run(&[
            "--inbound",
            "tcp://127.0.0.1:*",
            "--outbound",
            "tcp://127.0.0.1:*",
            "--high-water-mark=-1",
        ]);
        assert_eq!(out.status, Some(2), "{out:?}");
        let flag_reason = "must be a whole number from 0 (unlimited) to 2147483647, not -1";
        assert!(out.stderr.contains(flag_reason), "{out:?}");
        let path = bus.dir().join("hwm.toml");
        bus.write_config(
            &path,
            "high_water_mark = -1",
            &format!("[{:?}]", bus.outbound),
        );
        let out = run(&["--config", utf8(&path)]);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("key high_water_mark: {flag_reason}")),
            "{out:?}"
        );
    })
}

/// Issue 9 item 8: every flag of Python's gilmsg-logger is accepted; those
/// that mean something here are honoured.
#[test]
fn python_logger_flags_are_accepted_and_honoured() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &["--topic-prefix", "org.other"]);
        let config = utf8(&bus.config_path);
        let fedmsg_flags = [
            "--config-filename",
            config,
            "--topic-prefix",
            "org.other",
            "--post-init-sleep",
            "0.5",
            "--io-threads",
            "1",
            "--timeout",
            "2",
            "--high-water-mark",
            "100",
            "--linger",
            "500",
        ];
        let mut print = fedmsg_flags.to_vec();
        print.push("--print-config");
        let out = bus.logger(&print, "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        for line in [
            "topic_prefix = \"org.other\"",
            "high_water_mark = 100",
            "zmq_linger = \"500ms\"",
        ] {
            assert!(out.stdout.contains(line), "{line}: {out:?}");
        }
        let mut publish = fedmsg_flags.to_vec();
        publish.extend([
            "--certname",
            "publisher",
            "--recipients",
            "a",
            "--message",
            "compatible",
        ]);
        let out = bus.logger(&publish, "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        let line = a.wait_stdout("compatible", RUN);
        let shown: Value = serde_json::from_str(&line).expect("--json line");
        assert_eq!(shown["topic"], "org.other.dev.logger.log", "{shown}");
    })
}
