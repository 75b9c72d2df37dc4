//! `gilmsg-logger`: publish from a shell, optionally requiring ACKs.
//!
//! Flag-compatible with fedmsg-logger and gilmsg-logger (`--message`,
//! `--json-input`, `--topic`, `--modname`, `--cert-prefix`, `--recipients`,
//! `--ack-timeout`), publishing through the relay as those do. Messages are
//! published one at a time; the first that fails stops the run, so a script
//! never carries on past a recipient that did not get its message.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};

use crate::common::{self, Failure, EXIT_STATUS_HELP};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-logger",
    version,
    about = "Publish messages on a gilmsg/fedmsg bus, optionally requiring signed ACKs from named recipients.",
    after_help = EXIT_STATUS_HELP
)]
pub struct Args {
    /// The message to send (default: one message per line of stdin).
    #[arg(long)]
    pub message: Option<String>,
    /// Parse the message as JSON (stdin: one JSON value per line, or the whole input as one value)
    /// instead of sending `{"log": text}`.
    #[arg(long)]
    pub json_input: bool,
    /// Sub-topic: the full topic is <topic_prefix>.<environment>.<modname>.<topic>.
    #[arg(long, default_value = "log")]
    pub topic: String,
    /// Module name in the topic.
    #[arg(long, default_value = "logger")]
    pub modname: String,
    /// Certificate prefix: sign as <cert-prefix>.<hostname> unless `certnames` says otherwise.
    #[arg(long, default_value = "shell")]
    pub cert_prefix: String,
    /// Sign as exactly this identity (overrides --cert-prefix).
    #[arg(long)]
    pub certname: Option<String>,
    /// Identities that must ACK each message (space- or comma-separated).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub recipients: Vec<String>,
    /// How long to wait for every ACK: 250ms, 3s, or bare seconds (0.25). Default: the config's ack_timeout.
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION")]
    pub ack_timeout: Option<Duration>,
    /// Config file (default: $GILMSG_CONFIG, then /etc/gilmsg/gilmsg.toml).
    #[arg(long, alias = "config-filename", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON line per published message with its receipt.
    #[arg(long)]
    pub print_receipt: bool,
}

/// Runs the logger.
pub fn run(args: Args) -> Result<(), Failure> {
    let mut config = common::load_config(args.config.as_deref())?;
    config.cert_prefix = args.cert_prefix.clone();
    let timeout = args.ack_timeout.unwrap_or(config.ack_timeout);
    let runtime = common::runtime()?;
    runtime.block_on(async {
        let mut builder = gilmsg::Bus::builder(&config)
            .modname(&args.modname)
            .active(true);
        if let Some(certname) = &args.certname {
            builder = builder.certname(certname);
        }
        let bus = builder.build()?;
        let result = publish_all(&bus, &args, timeout).await;
        bus.close().await;
        result
    })
}

async fn publish_all(bus: &gilmsg::Bus, args: &Args, timeout: Duration) -> Result<(), Failure> {
    if let Some(text) = &args.message {
        let msg = to_msg(text, args.json_input)
            .map_err(|e| Failure::usage(format!("error: --message: {e}")))?;
        return publish_one(bus, args, msg, timeout).await;
    }
    if args.json_input {
        // Read everything first: fedmsg-logger takes all of stdin as one JSON
        // value, and JSON lines are a natural extension; nothing is published
        // unless the whole input parses.
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .map_err(|e| Failure::usage(format!("error: reading stdin: {e}")))?;
        for msg in parse_json_input(&input).map_err(|e| Failure::usage(format!("error: {e}")))? {
            publish_one(bus, args, msg, timeout).await?;
        }
        return Ok(());
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Failure::usage(format!("error: reading stdin: {e}")))?;
        let text = line.trim();
        if !text.is_empty() {
            publish_one(bus, args, json!({ "log": text }), timeout).await?;
        }
    }
    Ok(())
}

/// `--json-input` on stdin: one JSON value per line (JSON lines), or, as
/// fedmsg-logger reads it, the whole input as one JSON value.
pub fn parse_json_input(input: &str) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    let mut first_error = None;
    for (index, line) in input.lines().enumerate() {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str(text) {
            Ok(v) => values.push(v),
            Err(e) => {
                first_error = Some(format!("stdin line {}: not valid JSON: {e}", index + 1));
                break;
            }
        }
    }
    match first_error {
        None if values.is_empty() => Err("stdin: no JSON input".into()),
        None => Ok(values),
        Some(line_error) => match serde_json::from_str::<Value>(input) {
            Ok(whole) => Ok(vec![whole]),
            Err(_) => Err(line_error),
        },
    }
}

fn to_msg(text: &str, json_input: bool) -> Result<Value, String> {
    if json_input {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        Ok(json!({ "log": text }))
    }
}

async fn publish_one(
    bus: &gilmsg::Bus,
    args: &Args,
    msg: Value,
    timeout: Duration,
) -> Result<(), Failure> {
    let receipt = bus
        .publish(&args.topic, msg, &args.recipients, timeout)
        .await?;
    if args.print_receipt {
        let acks: Vec<Value> = receipt
            .acks
            .iter()
            .map(|a| json!({"recipient": a.recipient, "after_ms": a.after.as_secs_f64() * 1000.0, "digest_checked": a.digest_checked}))
            .collect();
        println!(
            "{}",
            json!({"msg_id": receipt.msg_id, "topic": receipt.topic, "acks": acks, "sends": receipt.sends,
                   "elapsed_ms": receipt.elapsed.as_secs_f64() * 1000.0})
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_input_forms() {
        assert_eq!(
            parse_json_input("{\"a\":1}\n\n[2]\n").unwrap(),
            vec![json!({"a": 1}), json!([2])]
        );
        assert_eq!(
            parse_json_input("{\n  \"a\": 1\n}\n").unwrap(),
            vec![json!({"a": 1})]
        );
        let err = parse_json_input("{\"a\":1}\n{oops\n").unwrap_err();
        assert!(err.contains("stdin line 2"), "{err}");
        assert!(parse_json_input("  \n").is_err());
    }
}
