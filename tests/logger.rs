//! `gilmsg-logger`: exit statuses and what stderr says, as scripts see them.

#![forbid(unsafe_code)]

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::{within, Bus};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const RUN: Duration = Duration::from_secs(20);

fn base(bus: &Bus) -> Vec<&str> {
    vec![
        "--config",
        bus.config_path.to_str().expect("utf-8 path"),
        "--certname",
        "publisher",
    ]
}

#[test]
fn success_exits_0_with_empty_stderr() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &[]);
        let mut args = base(&bus);
        args.extend(["--recipients", "a", "--message", "hello", "--print-receipt"]);
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        assert_eq!(out.stderr, "", "{out:?}");
        let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON receipt");
        assert_eq!(receipt["acks"][0]["recipient"], json!("a"));
        assert_eq!(receipt["acks"][0]["digest_checked"], json!(true));
        assert_eq!(receipt["topic"], json!("org.gilmsg.test.dev.logger.log"));
        let msg_id = receipt["msg_id"].as_str().expect("msg_id");
        let line = a.wait_stdout(msg_id, Duration::from_secs(5));
        let shown: Value = serde_json::from_str(&line).expect("--json line");
        assert_eq!(shown["body"]["msg"], json!({"log": "hello"}));
    })
}

#[test]
fn timeout_exits_1_with_one_line_naming_the_missing_recipient() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a", "b", "offline"]);
        let _consumers = bus.consumers(&["a", "b"], &[]);
        let mut args = base(&bus);
        args.extend([
            "--recipients",
            "a,offline",
            "b",
            "--ack-timeout",
            "500ms",
            "--message",
            "hello",
        ]);
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(1), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(
            lines[0].starts_with(
                "gilmsg-logger: timeout: no ACK within 500ms from offline (acked: a, b) for "
            ),
            "{out:?}"
        );
        assert!(
            lines[0].ends_with(" on org.gilmsg.test.dev.logger.log"),
            "{out:?}"
        );
    })
}

#[test]
fn ack_timeout_accepts_humantime_and_bare_seconds() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["offline"]);
        for form in ["250ms", "0.25"] {
            let mut args = base(&bus);
            args.extend([
                "--recipients",
                "offline",
                "--ack-timeout",
                form,
                "--message",
                "x",
            ]);
            let out = bus.logger(&args, "", RUN);
            assert_eq!(out.status, Some(1), "{form}: {out:?}");
            assert!(
                out.stderr
                    .contains("no ACK within 250ms from offline (acked: none)"),
                "{form}: {out:?}"
            );
        }
        let mut args = base(&bus);
        args.extend([
            "--recipients",
            "offline",
            "--ack-timeout",
            "soon",
            "--message",
            "x",
        ]);
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(out.stderr.contains("--ack-timeout"), "{out:?}");
    })
}

#[test]
fn bad_config_exits_2_naming_the_file_and_the_key() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &[]);
        let path = bus.dir().join("bad.toml");
        bus.write_config(&path, "", "\"not-an-endpoint\"");
        let path_text = path.to_str().expect("utf-8 path");
        let out = bus.logger(&["--config", path_text, "--message", "x"], "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(lines[0].starts_with("gilmsg-logger: error: "), "{out:?}");
        assert!(lines[0].contains(path_text), "{out:?}");
        assert!(lines[0].contains("endpoints.relay_outbound"), "{out:?}");
        assert!(lines[0].contains("not-an-endpoint"), "{out:?}");

        let missing = bus.dir().join("missing.toml");
        let missing_text = missing.to_str().expect("utf-8 path");
        let out = bus.logger(&["--config", missing_text, "--message", "x"], "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(out.stderr.contains(missing_text), "{out:?}");
    })
}

#[test]
fn missing_key_file_exits_2_naming_the_file() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &[]);
        let config = bus.config_path.to_str().expect("utf-8 path");
        let out = bus.logger(
            &["--config", config, "--certname", "nosuch", "--message", "x"],
            "",
            RUN,
        );
        assert_eq!(out.status, Some(2), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        let key = bus.ssldir.join("nosuch.key");
        assert!(
            lines[0].contains(key.to_str().expect("utf-8 path")),
            "{out:?}"
        );
    })
}

#[test]
fn bad_json_input_exits_2_naming_the_line_and_publishes_nothing() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &[]);
        let mut args = base(&bus);
        args.extend(["--json-input", "--recipients", "a"]);
        let out = bus.logger(&args, "{\"n\": 1}\n{not json\n{\"n\": 3}\n", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(lines[0].contains("line 2"), "{out:?}");
        // The whole input is parsed before anything is published. Had line 1
        // gone out, the logger would have waited for a's ACK before exiting,
        // so a would have handled it by now.
        let stats = a.stats();
        assert_eq!(stats.get("handler.ok"), 0, "{stats}");
        assert_eq!(stats.get("message.received"), 0, "{stats}");

        // The same lines, all valid: each is published and acked in turn.
        let out = bus.logger(&args, "{\"n\": 1}\n\n{\"n\": 3}\n", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        a.wait_stdout("\"msg\":{\"n\":1}", Duration::from_secs(5));
        a.wait_stdout("\"msg\":{\"n\":3}", Duration::from_secs(5));
    })
}

#[test]
fn help_lists_the_exit_statuses() {
    within(LIMIT, || {
        let out = gilmsg_testkit::run_tool(
            bins!().logger,
            &["--help"],
            "",
            RUN,
            &gilmsg_testkit::guard::current(),
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        assert!(out.stdout.contains("Exit status:"), "{out:?}");
        for status in ["0  success", "1  timeout", "2  usage", "3  bus error"] {
            assert!(out.stdout.contains(status), "{status}: {out:?}");
        }
    })
}

/// `{"d": [[[...1...]]]}` with `depth` levels of nesting in all.
fn nested_json(depth: usize) -> String {
    format!(
        "{{\"d\":{}1{}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

#[test]
fn a_msg_nested_127_deep_is_delivered_and_acked() {
    // The envelope makes the body 128 deep: past serde_json's default
    // limit, which used to drop it at every consumer while Python peers
    // accept it, and the logger waited out the whole timeout.
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &[]);
        let mut args = base(&bus);
        let message = nested_json(127);
        args.extend([
            "--recipients",
            "a",
            "--json-input",
            "--print-receipt",
            "--ack-timeout",
            "5s",
            "--message",
            &message,
        ]);
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("receipt");
        a.wait_stdout(
            receipt["msg_id"].as_str().expect("msg_id"),
            Duration::from_secs(5),
        );
    })
}

#[test]
fn a_body_over_max_message_size_is_refused_at_once_with_exit_2() {
    within(LIMIT, || {
        let bus = Bus::start_with(bins!(), &["a"], "max_message_size = 4096");
        let a = bus.consumer("a", &[]);
        let mut args = base(&bus);
        let big = "x".repeat(8000);
        args.extend(["--recipients", "a", "--message", &big]);
        let started = std::time::Instant::now();
        let out = bus.logger(&args, "", RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not refused at once: {:?}",
            started.elapsed()
        );
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(lines[0].contains("not sent"), "{out:?}");
        assert!(
            lines[0].contains("max_message_size (4096 bytes)"),
            "{out:?}"
        );
        // Never sent, so nobody had to drop it.
        let stats = a.stats();
        assert_eq!(stats.get("message.received"), 0, "{stats}");
    })
}

#[test]
fn stdin_json_nested_200_deep_is_acked_and_600_deep_exits_2_at_once() {
    // The logger used serde_json's default limit (128) while consumers
    // accept up to MAX_DEPTH (512): it refused bodies every receiver takes.
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["a"]);
        let a = bus.consumer("a", &[]);
        let deep = |depth: usize| format!("{}1{}\n", "[".repeat(depth), "]".repeat(depth));
        let mut args = base(&bus);
        args.extend([
            "--recipients",
            "a",
            "--json-input",
            "--print-receipt",
            "--ack-timeout",
            "5s",
        ]);
        let out = bus.logger(&args, &deep(200), RUN);
        assert_eq!(out.status, Some(0), "{out:?}");
        let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("receipt");
        assert_eq!(receipt["acks"][0]["recipient"], json!("a"), "{out:?}");
        a.wait_stdout(
            receipt["msg_id"].as_str().expect("msg_id"),
            Duration::from_secs(5),
        );

        let started = std::time::Instant::now();
        let out = bus.logger(&args, &deep(600), RUN);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not refused at once: {:?}",
            started.elapsed()
        );
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out:?}");
        assert!(
            lines[0].contains("stdin line 1: nests more than 512 levels deep"),
            "{out:?}"
        );
    })
}

#[test]
fn a_timeout_longer_than_max_message_age_exits_2_naming_it() {
    within(LIMIT, || {
        let bus = Bus::start_with(bins!(), &["a"], "max_message_age = \"30s\"");
        for (flag, recipients) in [("--ack-timeout", true), ("--timeout", false)] {
            let mut args = base(&bus);
            if recipients {
                args.extend(["--recipients", "a"]);
            }
            args.extend([flag, "31s", "--message", "x"]);
            let started = std::time::Instant::now();
            let out = bus.logger(&args, "", RUN);
            assert_eq!(out.status, Some(2), "{flag}: {out:?}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{flag}: not at once"
            );
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{out:?}");
            assert!(
                lines[0].contains(&format!(
                    "{flag} 31.00s is longer than max_message_age (30.00s)"
                )),
                "{out:?}"
            );
        }
    })
}
