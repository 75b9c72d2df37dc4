//! Interoperability with the real Python peers: fedmsg 1.1.7 and gilmsg 0.1.2
//! (the venv made by `scripts/python-peers.sh`, named by
//! `GILMSG_PYTHON_PEERS`; without it every test here prints SKIP and passes).
//!
//! Everything runs on 127.0.0.1 with a throwaway RSA PKI made by the openssl
//! CLI. Python processes run from a temp dir holding `fedmsg.d/test.py`
//! (fedmsg reads its config from the working directory), Rust processes read
//! the matching `gilmsg.toml`, or in the config test the JSON the real
//! `fedmsg-config` printed. Readiness comes from printed lines (`peers: ready
//! ...`, `gilmsg-consumer: ready ...`, `gilmsg-relay: ready ...`), and where
//! a Python publisher sends exactly once, from a probe message that went all
//! the way through first. See docs/interop.md.

#![forbid(unsafe_code)]

#[path = "interop/support.rs"]
mod support;

use std::time::Duration;

use gilmsg_testkit::bins;
use gilmsg_testkit::guard::within;
use serde_json::{json, Value};
use support::*;

/// Hard limit of one test body; its processes are killed on overrun.
const LIMIT: Duration = Duration::from_secs(240);
/// How long a one-shot Python tool may run (python + fedmsg start-up is ~1 s).
const TOOL: Duration = Duration::from_secs(30);
/// How long a probe may be re-sent before the path counts as broken.
const PROBING: Duration = Duration::from_secs(90);

/// Publishes probes with `fedmsg-logger` until `consumer` (a gilmsg-consumer
/// with `--json`) prints one: proves the relay path is up and the consumer
/// subscribed before a Python publisher that sends only once is used.
/// Returns the consumer's JSON line for the probe that arrived.
fn probe_rust_consumer(world: &World, consumer: &gilmsg_testkit::Proc) -> Value {
    // Bounded by time, not by a count of tries: on a loaded machine (CI
    // runs these tests side by side) a one-shot Python publisher can lose
    // several probes to ZeroMQ's slow joiner before one arrives.
    let give_up = std::time::Instant::now() + PROBING;
    let mut attempt = 0;
    while std::time::Instant::now() < give_up {
        attempt += 1;
        let text = format!("probe-{attempt}");
        let out = world.python_tool("fedmsg-logger", &["--message", &text], TOOL);
        assert_eq!(out.code, Some(0), "fedmsg-logger failed: {out}");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while let Some(line) =
            consumer.next_stdout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("consumer printed non-JSON {line:?}: {e}"));
            if v.pointer("/body/msg/log").and_then(Value::as_str) == Some(text.as_str()) {
                return v;
            }
        }
    }
    panic!(
        "no fedmsg-logger probe reached {} after {attempt} attempts in {PROBING:?}; stderr {:#?}",
        consumer.name(),
        consumer.stderr_so_far()
    );
}

/// Publishes probes with gilmsg-logger (no recipients) until the Python
/// `tail` prints one; fedmsg.tail_messages connects asynchronously.
fn probe_python_tail(world: &World, tail: &gilmsg_testkit::Proc) {
    for attempt in 1..=20 {
        let text = format!("probe-{attempt}");
        let out = world.rust_logger(&["--certname", "rust-pub", "--message", &text], None, None);
        assert_eq!(out.code, Some(0), "gilmsg-logger probe failed: {out}");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while let Some(line) =
            tail.next_stdout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if line.starts_with("peers: got ") && line.contains(&format!("\"{text}\"")) {
                return;
            }
        }
    }
    panic!(
        "no probe reached the Python tail after 20 attempts; its stderr: {:#?}",
        tail.stderr_so_far()
    );
}

// ---------------------------------------------------------------------------
// 1. Python gilmsg-logger --recipients <rust consumer> succeeds because the
//    Rust consumer (RSA identity, validating) acked.

fn python_logger_acked_by_rust_consumer(use_fedmsg_relay: bool) {
    let Some(peers) = peers(if use_fedmsg_relay {
        "python_gilmsg_logger_acked_by_rust_consumer_via_fedmsg_relay"
    } else {
        "python_gilmsg_logger_acked_by_rust_consumer_via_gilmsg_relay"
    }) else {
        return;
    };
    within(LIMIT, move || {
        let mut world = World::new(&peers);
        let _relay = if use_fedmsg_relay {
            world.fedmsg_relay()
        } else {
            world.gilmsg_relay()
        };
        let consumer = world.rust_consumer("rust-consumer", None, &[]);
        let probe = probe_rust_consumer(&world, &consumer);
        assert_eq!(probe["signer"], "py-shell", "{probe}");

        let out = world.python_tool(
            "gilmsg-logger",
            &[
                "--recipients",
                "rust-consumer",
                "--ack-timeout",
                "10",
                // gilmsg's head start for its ACK listener is
                // 2 x post_init_sleep, of which the listener's own context
                // set-up sleeps one: 1 s of margin for its subscription.
                "--post-init-sleep",
                "1.0",
                "--message",
                "hello from python gilmsg",
            ],
            TOOL,
        );
        assert_eq!(
            out.code,
            Some(0),
            "Python gilmsg-logger did not get the ACK: {out}"
        );
        assert!(out.stdout_text().contains("peers: exit rc=0"), "{out}");

        let got = wait_json(&consumer, "", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/log") == Some(&json!("hello from python gilmsg"))
        });
        assert_eq!(got["signer"], "py-shell");
        assert_eq!(got["body"]["gilmsg_version"], "0.1.2", "{got}");
        let stats = consumer.stats("gilmsg-consumer: stats");
        assert!(
            stats.get("message.legacy_unsigned_gilmsg_version") >= 1,
            "the compat rule should have been used: {stats:?}"
        );
        assert!(stats.get("ack.sent") >= 1, "{stats:?}");
        assert_eq!(stats.get("rejected.bad_signature"), 0, "{stats:?}");
    });
}

#[test]
fn python_gilmsg_logger_acked_by_rust_consumer_via_fedmsg_relay() {
    python_logger_acked_by_rust_consumer(true);
}

#[test]
fn python_gilmsg_logger_acked_by_rust_consumer_via_gilmsg_relay() {
    python_logger_acked_by_rust_consumer(false);
}

// ---------------------------------------------------------------------------
// 2. Rust gilmsg-logger --recipients py-a py-b: success with both Python
//    consumers (validating) up; exit 1 naming py-b once it is down.

#[test]
fn rust_logger_needs_both_python_consumers() {
    let Some(peers) = peers("rust_logger_needs_both_python_consumers") else {
        return;
    };
    within(LIMIT, move || {
        let mut world = World::new(&peers);
        let _relay = world.gilmsg_relay();
        let a = world.python_consumer("py-a");
        let mut b = world.python_consumer("py-b");

        let out = world.rust_logger(
            &[
                "--certname",
                "rust-pub",
                "--recipients",
                "py-a",
                "py-b",
                "--ack-timeout",
                "20",
                "--print-receipt",
                "--message",
                "to both python consumers",
            ],
            None,
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        let receipt: Value =
            serde_json::from_str(out.stdout.last().expect("receipt line")).unwrap();
        let mut acked: Vec<&str> = receipt["acks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["recipient"].as_str().unwrap())
            .collect();
        acked.sort_unstable();
        assert_eq!(acked, ["py-a", "py-b"], "{receipt}");
        for consumer in [&a, &b] {
            let got = wait_json(consumer, "peers: got ", Duration::from_secs(10), |v| {
                v.pointer("/body/msg/log") == Some(&json!("to both python consumers"))
            });
            assert_eq!(got["body"]["crypto"], "x509", "{got}");
            assert_eq!(got["body"]["msg_id"], receipt["msg_id"]);
        }

        b.kill();
        let out = world.rust_logger(
            &[
                "--certname",
                "rust-pub",
                "--recipients",
                "py-a",
                "py-b",
                "--ack-timeout",
                "3",
                "--message",
                "py-b is down",
            ],
            None,
            None,
        );
        assert_eq!(out.code, Some(1), "{out}");
        let err = out.stderr_text();
        assert!(
            err.contains("from py-b (acked: py-a)"),
            "stderr must name py-b and list py-a: {out}"
        );
        wait_json(&a, "peers: got ", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/log") == Some(&json!("py-b is down"))
        });
    });
}

// ---------------------------------------------------------------------------
// 3. Python fedmsg.tail_messages (validate_signatures=True) accepts
//    Rust-signed messages, and decodes the same payload, byte for byte in
//    fedmsg's canonical form.

fn payloads() -> Vec<Value> {
    let text = r#"{"text": "caf\u00e9 é 😀 \ud83d\ude00", "ctrl": "tab\t nl\n cr\r del\u007f unit\u001f quote\" backslash\\ slash/", "floats": [0.1, 1e-05, 1e+16, -0.0, 1.5, 100.0, 1e300, 5e-324, 123456789.123], "ints": [0, -1, 9007199254740993, 12345678901234567890, 123456789012345678901234567890, -9223372036854775809], "nested": {"z": true, "a": [{"b": {"c": [1, 2, {"d": null}]}}], "é": "non-ASCII key", "": "empty key"}}
["a list as the whole msg", 1, 2.5]
"just a string"
{"empty": {}, "none": null, "list": []}"#;
    text.lines()
        .map(|l| serde_json::from_str(l).expect("test payload parses"))
        .collect()
}

#[test]
fn python_tail_validates_rust_signed_messages() {
    let Some(peers) = peers("python_tail_validates_rust_signed_messages") else {
        return;
    };
    within(LIMIT, move || {
        let mut world = World::new(&peers);
        let _relay = world.gilmsg_relay();
        let tail = world.python(
            "fedmsg.tail_messages",
            "tail",
            Duration::from_secs(120),
            &[],
        );
        tail.wait_stdout("peers: ready tail", READY)
            .unwrap_or_else(|e| panic!("{e}"));
        probe_python_tail(&world, &tail);

        let payloads = payloads();
        let input: Vec<String> = payloads.iter().map(Value::to_string).collect();
        let out = world.rust_logger(
            &[
                "--certname",
                "rust-pub",
                "--json-input",
                "--topic",
                "payload",
            ],
            None,
            Some(&(input.join("\n") + "\n")),
        );
        assert_eq!(out.code, Some(0), "{out}");
        for expected in &payloads {
            let got = wait_json(&tail, "peers: got ", Duration::from_secs(10), |v| {
                v["topic"] == "org.example.dev.logger.payload"
            });
            let body = &got["body"];
            assert_eq!(body["crypto"], "x509", "{got}");
            assert_eq!(&body["msg"], expected, "payload changed on the way: {got}");
            let ours = gilmsg_proto::canonical::to_string(expected).unwrap();
            assert_eq!(
                got["canonical_msg"].as_str().unwrap(),
                ours,
                "fedmsg's canonical JSON of the payload differs from ours"
            );
        }
        let err = tail.stderr_so_far().join("\n");
        assert!(
            !err.contains("invalid message received") && !err.contains("invalid signature"),
            "the Python tail rejected something: {err}"
        );
    });
}

// ---------------------------------------------------------------------------
// 4. The Rust consumer accepts Python-signed messages and rejects one signed
//    with a revoked certificate and one altered after signing.

#[test]
fn rust_consumer_checks_python_signatures() {
    let Some(peers) = peers("rust_consumer_checks_python_signatures") else {
        return;
    };
    within(LIMIT, move || {
        let world = World::new(&peers);
        world.pki.revoke("py-revoked");
        let _relay = world.fedmsg_relay();
        // --no-ack: fedmsg messages ask for none, and this test is about
        // validation only.
        let consumer = world.rust_consumer("rust-consumer", None, &["--no-ack"]);
        let probe = probe_rust_consumer(&world, &consumer);
        assert_eq!(probe["signer"], "py-shell", "{probe}");
        assert_eq!(probe["body"]["crypto"], "x509");

        // Signed in Python with fedmsg.crypto.sign, published raw to the
        // relay's inbound: as signed (accepted), altered after signing, signed
        // by the revoked identity, then a marker that tells us the three
        // before it were processed (one connection, so order is kept).
        let out = world.python_once(
            "forge",
            &["good", "tampered", "good:py-revoked", "marker"],
            TOOL,
        );
        assert_eq!(out.code, Some(0), "forge failed: {out}");
        let mut accepted = Vec::new();
        let marker = wait_json(&consumer, "", Duration::from_secs(15), |v| {
            if v.pointer("/body/msg/kind").is_some() {
                accepted.push(v.clone());
            }
            v.pointer("/body/msg/marker") == Some(&json!(true))
        });
        assert_eq!(marker["signer"], "py-shell");
        assert_eq!(
            accepted.len(),
            1,
            "only the untouched message may pass: {accepted:#?}"
        );
        assert_eq!(accepted[0]["body"]["msg"], json!({"kind": "good", "n": 1}));
        let stats = consumer.stats("gilmsg-consumer: stats");
        assert_eq!(stats.get("rejected.revoked_certificate"), 1, "{stats:?}");
        assert_eq!(stats.get("rejected.bad_signature"), 1, "{stats:?}");
    });
}

// ---------------------------------------------------------------------------
// 5. Mixed recipients: a Python and a Rust consumer both ack one Rust
//    publish (through fedmsg-relay, so both directions cross its
//    re-serialisation).

#[test]
fn python_and_rust_consumers_ack_one_rust_publish() {
    let Some(peers) = peers("python_and_rust_consumers_ack_one_rust_publish") else {
        return;
    };
    within(LIMIT, move || {
        let world = World::new(&peers);
        let _relay = world.fedmsg_relay();
        let py = world.python_consumer("py-a");
        let rust = world.rust_consumer("rust-consumer", None, &[]);
        let out = world.rust_logger(
            &[
                "--certname",
                "rust-pub",
                "--recipients",
                "py-a,rust-consumer",
                "--ack-timeout",
                "20",
                "--print-receipt",
                "--json-input",
                "--message",
                r#"{"mixed": "é", "n": 1}"#,
            ],
            None,
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        let receipt: Value = serde_json::from_str(out.stdout.last().expect("receipt")).unwrap();
        let acks = receipt["acks"].as_array().unwrap();
        let names: Vec<&str> = acks
            .iter()
            .map(|a| a["recipient"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["py-a", "rust-consumer"], "{receipt}");
        // Only our consumer sends ack_digest, so only its ACK is digest-checked.
        assert_eq!(acks[0]["digest_checked"], false, "{receipt}");
        assert_eq!(acks[1]["digest_checked"], true, "{receipt}");
        let got = wait_json(&py, "peers: got ", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/mixed").is_some()
        });
        assert_eq!(got["body"]["msg"], json!({"mixed": "é", "n": 1}));
        let got = wait_json(&rust, "", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/mixed").is_some()
        });
        assert_eq!(got["signer"], "rust-pub");
    });
}

/// A message naming its schema (`fedora_messaging_schema`, signed): Python
/// fedmsg/gilmsg consumers validate its signature, field and all, and ack
/// it like any other; our consumer, with a schema of its own for the topic,
/// checks it too.
#[test]
fn python_consumer_acks_a_message_naming_its_schema() {
    let Some(peers) = peers("python_consumer_acks_a_message_naming_its_schema") else {
        return;
    };
    within(LIMIT, move || {
        let world = World::new(&peers);
        let _relay = world.fedmsg_relay();
        let schema = world.dir.join("any-object.v1.json");
        std::fs::write(&schema, r#"{"type": "object", "required": ["n"]}"#).unwrap();
        let mut config = gilmsg_config::Config::from_path(&world.toml).unwrap();
        config
            .add_schema(&format!("{PREFIX}.#"), &schema, None)
            .unwrap();
        let with_schema = world.dir.join("schemas.toml");
        std::fs::write(&with_schema, config.to_toml_string()).unwrap();
        let py = world.python_consumer("py-a");
        let rust = world.rust_consumer("rust-consumer", Some(&with_schema), &[]);
        let out = world.rust_logger(
            &[
                "--certname",
                "rust-pub",
                "--recipients",
                "py-a,rust-consumer",
                "--ack-timeout",
                "20",
                "--json-input",
                "--message",
                r#"{"schema": "named", "n": 1}"#,
            ],
            Some(&with_schema),
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        for (consumer, prefix) in [(&py, "peers: got "), (&rust, "")] {
            let got = wait_json(consumer, prefix, Duration::from_secs(10), |v| {
                v.pointer("/body/msg/schema").is_some()
            });
            assert_eq!(
                got["body"]["fedora_messaging_schema"], "any-object.v1",
                "{got}"
            );
        }
    });
}

// ---------------------------------------------------------------------------
// 6. Config carry-over: the JSON printed by the real fedmsg-config for the
//    test's fedmsg.d drives the Rust relay, consumer and logger.

#[test]
fn fedmsg_config_json_drives_the_rust_side() {
    let Some(peers) = peers("fedmsg_config_json_drives_the_rust_side") else {
        return;
    };
    within(LIMIT, move || {
        let world = World::new(&peers);
        let out = world.python_tool("fedmsg-config", &[], TOOL);
        assert_eq!(out.code, Some(0), "{out}");
        let json_text: Vec<&str> = out
            .stdout
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("peers: "))
            .collect();
        let json_path = world.dir.join("fedmsg-config.json");
        std::fs::write(&json_path, json_text.join("\n")).unwrap();

        let config = gilmsg_config::Config::from_path(&json_path).unwrap_or_else(|e| {
            panic!(
                "fedmsg-config output rejected: {e}\n{}",
                json_text.join("\n")
            )
        });
        assert_eq!(config.topic_prefix, PREFIX);
        assert_eq!(config.relay_inbound, std::slice::from_ref(&world.inbound));
        assert_eq!(
            config.endpoints["relay_outbound"],
            std::slice::from_ref(&world.outbound)
        );
        assert!(config.validate_signatures && config.sign_messages);
        assert_eq!(
            config.ca_cert_location.as_deref(),
            Some(world.pki.ca().as_path())
        );
        assert_eq!(
            config.crl_location.as_deref(),
            Some(world.pki.crl().as_path())
        );
        // fedmsg's cert-name rule over the same certnames: the Rust logger
        // (cert_prefix "shell") signs as the Python loggers do.
        assert_eq!(config.certname("logger"), "py-shell");

        let mut relay_cmd = std::process::Command::new(bins!().relay);
        relay_cmd.arg("--config").arg(&json_path);
        let relay = spawn("gilmsg-relay", relay_cmd);
        let line = relay.expect_stderr("gilmsg-relay: ready", READY);
        assert_eq!(
            field(&line, "inbound").as_deref(),
            Some(world.inbound.as_str())
        );
        assert_eq!(
            field(&line, "outbound").as_deref(),
            Some(world.outbound.as_str())
        );

        let rust = world.rust_consumer("rust-consumer", Some(&json_path), &[]);
        let py = world.python_consumer("py-a");
        let out = world.rust_logger(
            &[
                "--recipients",
                "rust-consumer",
                "py-a",
                "--ack-timeout",
                "20",
                "--print-receipt",
                "--message",
                "configured by fedmsg-config",
            ],
            Some(&json_path),
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        let got = wait_json(&rust, "", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/log") == Some(&json!("configured by fedmsg-config"))
        });
        assert_eq!(got["signer"], "py-shell", "certnames rule: {got}");
        wait_json(&py, "peers: got ", Duration::from_secs(10), |v| {
            v.pointer("/body/msg/log") == Some(&json!("configured by fedmsg-config"))
        });
    });
}

// ---------------------------------------------------------------------------
// 7. A documented difference: messages signed with gilmsg's native Ed25519
//    scheme (crypto "ed25519") are invalid to validating Python consumers,
//    which drop them and carry on; mixed buses need x509 identities.

#[test]
fn python_tail_drops_ed25519_messages() {
    let Some(peers) = peers("python_tail_drops_ed25519_messages") else {
        return;
    };
    within(LIMIT, move || {
        let mut world = World::new(&peers);
        let _relay = world.gilmsg_relay();
        let tail = world.python(
            "fedmsg.tail_messages",
            "tail",
            Duration::from_secs(120),
            &[],
        );
        tail.wait_stdout("peers: ready tail", READY)
            .unwrap_or_else(|e| panic!("{e}"));
        probe_python_tail(&world, &tail);

        // A gilmsg-native PKI (Ed25519) and a config that signs with it.
        let ed_dir = world.dir.join("ed25519-pki");
        let day = Duration::from_secs(86_400);
        gilmsg_crypto::pki::init(
            &ed_dir,
            &gilmsg_crypto::pki::InitOptions {
                ca_name: "interop-ed25519-ca".into(),
                validity: day,
            },
        )
        .unwrap();
        gilmsg_crypto::pki::issue(
            &ed_dir,
            "rust-ed",
            &gilmsg_crypto::pki::IssueOptions::valid_for(day),
        )
        .unwrap();
        let mut config = gilmsg_config::Config::from_path(&world.toml).unwrap();
        config.ssldir = ed_dir.clone();
        config.ca_cert_location = None;
        config.crl_location = None;
        let ed_toml = world.dir.join("ed25519.toml");
        std::fs::write(&ed_toml, config.to_toml_string()).unwrap();

        let out = world.rust_logger(
            &["--certname", "rust-ed", "--message", "signed with ed25519"],
            Some(&ed_toml),
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        let out = world.rust_logger(
            &["--certname", "rust-pub", "--message", "signed with x509"],
            None,
            None,
        );
        assert_eq!(out.code, Some(0), "{out}");
        // Same publisher path, sent after: once the x509 one is printed the
        // ed25519 one has been handled (and must not have been printed).
        let mut printed = Vec::new();
        wait_json(&tail, "peers: got ", Duration::from_secs(10), |v| {
            printed.push(v.clone());
            v.pointer("/body/msg/log") == Some(&json!("signed with x509"))
        });
        assert!(
            printed
                .iter()
                .all(|v| v.pointer("/body/msg/log") != Some(&json!("signed with ed25519"))),
            "a validating Python consumer accepted an ed25519 message: {printed:#?}"
        );
        // fedmsg warns on stderr (a separate pipe, so wait for it).
        let warning = tail
            .wait_stderr("'crypto': 'ed25519'", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("expected fedmsg's invalid-message warning: {e}"));
        assert!(warning.contains("invalid message received"), "{warning}");
    });
}
