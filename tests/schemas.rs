//! Message schemas (`[schemas]`) on a real bus: the relay, `gilmsg-logger`
//! and `gilmsg-consumer` processes, the library as publisher.
//!
//! The configuration is the one `docs/running-a-bus.md` §6 shows (its
//! `bus.toml` and schema files, taken from the guide's text, with the
//! guide's placeholder addresses replaced by this bus's relay), so the
//! guide's example is what these tests run.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gilmsg_testkit::{bins, guard, run_tool, within, within_async, Bus, ToolOutput, PUBLISHER};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(90);
const RUN: Duration = Duration::from_secs(20);
const GUIDE: &str = include_str!("../docs/running-a-bus.md");
/// The topic the guide gives `invoice.v1`.
const INVOICE_TOPIC: &str = "org.example.prod.billing.invoice.paid";

/// The text of the guide's fenced block marked `<!-- doc-test: file PATH -->`
/// (the last such block: §6's `bus.toml` comes after §2's).
fn guide_file(path: &str) -> String {
    let marker = format!("<!-- doc-test: file {path} -->");
    let (_, after) = GUIDE
        .rsplit_once(&marker)
        .unwrap_or_else(|| panic!("docs/running-a-bus.md has no {marker}"));
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "{marker} is not followed by a block"
    );
    let mut text = String::new();
    for line in lines.take_while(|l| !l.starts_with("```")) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Writes the guide's §6 `bus.toml` (as `name`, with the relay's real
/// addresses) and its schema files into the bus's directory, where the
/// fixture's PKI is `pki/` as the guide's `ssldir = "pki"` says. Returns
/// the config path and the text written.
fn guide_config(bus: &Bus, name: &str) -> (PathBuf, String) {
    let text = guide_file("bus.toml");
    assert!(text.contains("[schemas]"), "§6's bus.toml:\n{text}");
    let text = text
        .replace("tcp://10.0.0.5:9941", &bus.inbound)
        .replace("tcp://10.0.0.5:9940", &bus.outbound);
    assert!(!text.contains("10.0.0.5"), "unreplaced address:\n{text}");
    std::fs::create_dir_all(bus.dir().join("schemas")).expect("mkdir schemas");
    for file in ["schemas/invoice.v1.json", "schemas/billing.json"] {
        std::fs::write(bus.dir().join(file), guide_file(file)).expect("write schema");
    }
    let path = bus.dir().join(name);
    std::fs::write(&path, &text).expect("write config");
    (path, text)
}

/// The guide's bus without its `[schemas]` table: a process that checks no
/// schema.
fn plain_config(bus: &Bus, name: &str) -> PathBuf {
    let (_, text) = guide_config(bus, "unused.toml");
    let (plain, _) = text.split_once("[schemas]").expect("[schemas]");
    let path = bus.dir().join(name);
    std::fs::write(&path, plain).expect("write config");
    path
}

/// An in-process publisher signing as [`PUBLISHER`], modname `billing`.
fn publisher(config: &gilmsg::Config) -> gilmsg::Bus {
    gilmsg::Bus::builder(config)
        .modname("billing")
        .certname(PUBLISHER)
        .active(true)
        .build()
        .expect("build publisher")
}

fn logger(bus: &Bus, config: &Path, topic: &str, recipients: &[&str], input: &str) -> ToolOutput {
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec![
        "--config",
        config,
        "--certname",
        "billing",
        "--modname",
        "billing",
        "--topic",
        topic,
        "--json-input",
        "--ack-timeout",
        "10s",
    ];
    if !recipients.is_empty() {
        args.push("--recipients");
        args.extend(recipients);
    }
    bus.logger(&args, input, RUN)
}

fn body_of(line: &str) -> Value {
    let shown: Value = serde_json::from_str(line).expect("--json line");
    shown["body"].clone()
}

#[test]
fn the_logger_refuses_a_failing_body_before_sending_and_names_the_schema_of_a_passing_one() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["ledger", "billing"]);
        let (config, _) = guide_config(&bus, "bus.toml");
        let ledger = bus.consumer_with("ledger", &config, "warn", &[]);

        // The guide's failing example: the path, the schema, the keyword.
        let out = logger(
            &bus,
            &config,
            "invoice.paid",
            &["ledger"],
            "{\"invoice\": 45, \"amount\": \"12.50\"}\n",
        );
        assert_eq!(out.status, Some(2), "{out:?}");
        let line = out.stderr_lines().concat();
        assert!(
            line.starts_with("gilmsg-logger: error: not sent: msg fails schema invoice.v1 at \"/amount\": keyword type:"),
            "{out:?}"
        );
        assert!(!line.contains("12.50"), "the value is not shown: {line}");
        // A missing property: the place is msg itself.
        let out = logger(&bus, &config, "invoice.paid", &[], "{\"invoice\": 46}\n");
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(
            out.stderr.contains(
                "msg fails schema invoice.v1 at \"\" (msg itself): keyword required: \"amount\""
            ),
            "{out:?}"
        );
        // Nothing of either reached the bus.
        assert_eq!(bus.relay_stats().get("relay.forwarded"), 0);

        // A passing body is sent, acked, and names its schema (signed).
        let out = logger(
            &bus,
            &config,
            "invoice.paid",
            &["ledger"],
            "{\"invoice\": 47, \"amount\": 1250}\n",
        );
        assert_eq!(out.status, Some(0), "{out:?}");
        assert!(bus.relay_stats().get("relay.forwarded") >= 1);
        let body = body_of(&ledger.wait_stdout("\"invoice\":47", RUN));
        assert_eq!(body["fedora_messaging_schema"], json!("invoice.v1"));
        assert_eq!(body["topic"], json!(INVOICE_TOPIC));
        // Another billing topic: the `#` pattern's schema, by its given name.
        let out = logger(&bus, &config, "note", &["ledger"], "{\"text\": \"hi\"}\n");
        assert_eq!(out.status, Some(0), "{out:?}");
        let body = body_of(&ledger.wait_stdout("\"text\":\"hi\"", RUN));
        assert_eq!(body["fedora_messaging_schema"], json!("billing.message.v1"));
        let stats = ledger.stats();
        assert_eq!(stats.get("schema.checked"), 2, "{stats}");
        assert_eq!(stats.get("invalid.schema"), 0, "{stats}");
        assert_eq!(stats.get("schema.unknown_name"), 0, "{stats}");
    })
}

#[test]
fn a_consumer_drops_counts_and_never_acks_a_body_failing_its_own_schema() {
    within_async(LIMIT, || async {
        let bus = Bus::start(bins!(), &["ledger", "lax"]);
        let (strict, _) = guide_config(&bus, "bus.toml");
        let plain = plain_config(&bus, "plain.toml");
        let ledger = bus.consumer_with("ledger", &strict, "info,gilmsg=debug", &[]);
        let lax = bus.consumer_with("lax", &plain, "warn", &[]);
        // A publisher without `[schemas]`: it checks nothing and names no
        // schema; ledger checks all the same.
        let unchecked = publisher(&gilmsg::Config::from_path(&plain).expect("plain config"));

        let err = unchecked
            .publish(
                "invoice.paid",
                json!({"invoice": 48, "amount": "12.50"}),
                &["ledger", "lax"],
                Duration::from_secs(1),
            )
            .await
            .expect_err("ledger refuses the body");
        let timeout = err
            .as_timeout()
            .unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(timeout.missing, ["ledger"]);
        assert_eq!(timeout.acked_names(), ["lax"]);
        assert!(timeout.sends >= 2, "re-sent while waiting: {timeout:?}");
        // Judged once; its re-sends settled as duplicates of a failure.
        let stats = ledger.wait_stats("a re-send", RUN, |s| s.get("duplicate.failed") >= 1);
        assert_eq!(stats.get("invalid.schema"), 1, "{stats}");
        assert!(
            stats.get("duplicate.failed") < u64::from(timeout.sends),
            "{stats}"
        );
        assert_eq!(stats.get("message.delivered"), 0, "{stats}");
        assert_eq!(stats.get("ack.entries"), 0, "{stats}");
        assert_eq!(lax.stats().get("message.delivered"), 1);

        // A valid message on the same bus: delivered and acked by both.
        let receipt = unchecked
            .publish(
                "invoice.paid",
                json!({"invoice": 49, "amount": 1250}),
                &["ledger", "lax"],
                Duration::from_secs(10),
            )
            .await
            .expect("both ack a valid body");
        let acked: Vec<&str> = receipt.acks.iter().map(|a| a.recipient.as_str()).collect();
        assert_eq!(acked, ["ledger", "lax"]);
        let body = body_of(&ledger.wait_stdout("\"invoice\":49", RUN));
        assert_eq!(
            body.get("fedora_messaging_schema"),
            None,
            "no schema, no field"
        );

        // A publisher whose own mapping names another, laxer schema: the
        // consumer's own schema decides, the other name is counted.
        let lax_schema = bus.dir().join("any-object.json");
        std::fs::write(&lax_schema, r#"{"type": "object"}"#).expect("write schema");
        let mut other = gilmsg::Config::from_path(&plain).expect("plain config");
        other
            .add_schema(INVOICE_TOPIC, &lax_schema, Some("invoice.v2"))
            .expect("add_schema");
        let other = publisher(&other);
        let receipt = other
            .publish(
                "invoice.paid",
                json!({"invoice": 50, "amount": 5}),
                &["ledger"],
                Duration::from_secs(10),
            )
            .await
            .expect("the body passes ledger's invoice.v1");
        assert_eq!(receipt.acks.len(), 1);
        let body = body_of(&ledger.wait_stdout("\"invoice\":50", RUN));
        assert_eq!(body["fedora_messaging_schema"], json!("invoice.v2"));
        let err = other
            .publish(
                "invoice.paid",
                json!({"invoice": 51}),
                &["ledger", "lax"],
                Duration::from_secs(1),
            )
            .await
            .expect_err("invoice.v2 passes it, ledger's invoice.v1 does not");
        assert_eq!(
            err.as_timeout().map(|t| t.missing.clone()),
            Some(vec!["ledger".to_owned()])
        );

        let stats = ledger.stats();
        assert_eq!(stats.get("invalid.schema"), 2, "{stats}");
        assert_eq!(stats.get("schema.checked"), 2, "{stats}");
        assert_eq!(stats.get("schema.unknown_name"), 1, "{stats}");
        assert_eq!(stats.get("message.delivered"), 2, "{stats}");
        // lax checks nothing, so it counts no names either.
        let stats = lax.stats();
        assert_eq!(stats.get("message.delivered"), 4, "{stats}");
        assert_eq!(
            stats.get("schema.unknown_name") + stats.get("schema.checked"),
            0
        );

        let log = ledger.stop_and_stderr().join("\n");
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reason=invalid.schema"))
            .collect();
        assert_eq!(refusals.len(), 2, "{log}");
        assert!(
            refusals[0].contains(r#"msg fails schema invoice.v1 at \"/amount\": keyword type"#)
                || refusals[0]
                    .contains(r#"msg fails schema invoice.v1 at "/amount": keyword type"#),
            "{log}"
        );
        assert!(refusals[1].contains("keyword required"), "{log}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("invoice.v2"))
            .collect();
        assert_eq!(warnings.len(), 1, "{log}");
    })
}

#[test]
fn the_library_refuses_a_failing_body_async_and_blocking() {
    within(LIMIT, || {
        let bus = Bus::start(bins!(), &["ledger"]);
        let (config, _) = guide_config(&bus, "bus.toml");
        let config = gilmsg::Config::from_path(&config).expect("guide config");
        let blocking = gilmsg::blocking::Bus::from_async(publisher(&config)).expect("blocking");
        let err = blocking
            .publish(
                "invoice.paid",
                json!({"invoice": 1, "amount": -1}),
                &["ledger"],
                Duration::from_secs(1),
            )
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
        assert_eq!(blocking.stats().get("publish.sent"), 0);
        blocking.close();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let bus = publisher(&config);
            let err = bus
                .send("invoice.paid", json!([1, 2]))
                .await
                .expect_err("not an object");
            assert_eq!(
                err.to_string(),
                "not sent: msg fails schema invoice.v1 at \"\" (msg itself): keyword type: \
                 value is not of type \"object\""
            );
            bus.close().await;
        });
    })
}

/// Runs `program --config <file>` (plus `args`) and returns its one stderr
/// line, asserting exit status 2.
fn refused(program: &Path, config: &Path, args: &[&str]) -> String {
    let config = config.to_str().expect("utf-8 path");
    let out = run_tool(
        program,
        &[&["--config", config], args].concat(),
        "",
        RUN,
        &guard::current(),
    );
    assert_eq!(out.status, Some(2), "{out:?}");
    out.stderr_lines().concat()
}

#[test]
fn bad_schema_files_and_entries_stop_the_tools_naming_file_key_and_place() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        write(
            "bad-type.json",
            r#"{"type": "object", "properties": {"amount": {"type": "integr"}}}"#,
        );
        write("not-json.json", "{\"type\": ");
        write(
            "remote.json",
            r#"{"$ref": "https://example.invalid/s.json"}"#,
        );
        write("ok.json", "{}");
        let bins = bins!();
        let cases: [(&str, &str, &[&str]); 7] = [
            (
                r#""a.b.c" = "bad-type.json""#,
                r#"key schemas."a.b.c": schema file "#,
                &["bad-type.json is not a valid JSON Schema: at \"/properties/amount/type\""],
            ),
            (
                r#""a.b.c" = "missing.json""#,
                r#"key schemas."a.b.c": cannot read schema file "#,
                &["missing.json"],
            ),
            (
                r#""a.#" = { file = "not-json.json" }"#,
                r##"key schemas."a.#": schema file "##,
                &["not-json.json is not JSON"],
            ),
            (
                r#""a.#" = "remote.json""#,
                r##"key schemas."a.#": schema file "##,
                &["remote.json is not a valid JSON Schema"],
            ),
            (
                r#""a..b" = "ok.json""#,
                r#"key schemas."a..b": "#,
                &["empty word"],
            ),
            (
                r#""a.#" = { file = "ok.json", nmae = "x" }"#,
                "key schemas",
                &["unknown key \"nmae\""],
            ),
            (
                r#"a.b.c = "ok.json""#,
                "key schemas",
                &["a topic pattern must be quoted"],
            ),
        ];
        for (i, (entry, key, reasons)) in cases.into_iter().enumerate() {
            let config = write(
                &format!("bad-{i}.toml"),
                &format!("topic_prefix = \"org.example\"\n\n[schemas]\n{entry}\n"),
            );
            let shown = config.display().to_string();
            for (program, args) in [
                (bins.logger, &["--message", "hi"][..]),
                (bins.consumer, &["--no-ack"][..]),
            ] {
                let line = refused(program, &config, args);
                assert!(
                    line.contains(&format!("config {shown}: {key}")),
                    "{entry}: {line}"
                );
                for reason in reasons {
                    assert!(line.contains(reason), "{entry}: {reason}: {line}");
                }
                // The schema file is named by its full path.
                if key.ends_with("file ") {
                    assert!(line.contains(&dir.path().display().to_string()), "{line}");
                }
            }
        }
    })
}
