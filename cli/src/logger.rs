//! `gilmsg-logger`: publish from a shell, optionally requiring ACKs.
//!
//! Flag-compatible with fedmsg-logger and gilmsg-logger (`--message`,
//! `--json-input`, `--topic`, `--modname`, `--cert-prefix`, `--recipients`,
//! `--ack-timeout`, and fedmsg's common flags in [`CommonArgs`]).
//!
//! Where it publishes: through the relay (`relay_inbound`, as fedmsg-logger
//! does), unless the configuration names an endpoint of its own (`name`
//! with `active = false`) or `--name` does: then it binds `endpoints[name]`
//! itself, the direct topology, and consumers connect to it.
//!
//! Messages are published one at a time, each waiting for its ACKs. By
//! default the first that fails stops the run, so a script never carries on
//! past a recipient that did not get its message; `--keep-going` reports
//! each failure and goes on, and `--stream` is the long-lived mode: one
//! publisher stays up while stdin lines arrive, each published as it comes.

use std::io::BufRead;
use std::time::{Duration, Instant};

use clap::Parser;
use gilmsg_proto::DecodeError;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{
    self, CommonArgs, Failure, EXIT_BUS, EXIT_OK, EXIT_STATUS_HELP, EXIT_TIMEOUT, EXIT_USAGE,
};
use crate::service::{Service, ServiceArgs};
use crate::signals::{SignalEvent, Signals};

const AFTER_HELP: &str = "\
Input: --message sends one message. Otherwise stdin is read: each line is one message
{\"log\": LINE}, published as the line arrives; with --json-input the whole input is read
and parsed first (one JSON value per line, or all of it as one value), and nothing is
published unless all of it parses. With --json-input --stream each line is one JSON value,
published as it arrives.

Failures: by default the first message that fails (timeout, no subscriber) ends the run and
the remaining input is NOT published. --keep-going publishes every message, reports each
failure on its own stderr line and exits with the highest status of any message, after a
summary line. --stream implies --keep-going.

Where it publishes: through relay_inbound (as fedmsg-logger does), unless --name NAME, or
the config's name with active = false, makes it bind endpoints[NAME] itself (the direct
topology: consumers connect to it; keep it running with --stream). --active forces the
relay.

Signals, while reading stdin: SIGTERM or SIGINT stops after the message in flight (acked or
timed out); SIGUSR1 prints the publisher's counters on stderr.";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-logger",
    version,
    about = "Publish messages on a gilmsg/fedmsg bus, optionally requiring signed ACKs from named recipients.",
    after_help = format!("{AFTER_HELP}\n\n{EXIT_STATUS_HELP}")
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
    /// Certificate prefix: sign as <cert-prefix>.<hostname> unless `certnames` says otherwise
    /// (default: the config's cert_prefix, whose default is `shell`).
    #[arg(long, value_name = "PREFIX")]
    pub cert_prefix: Option<String>,
    /// Sign as exactly this identity (overrides --cert-prefix).
    #[arg(long)]
    pub certname: Option<String>,
    /// Identities that must ACK each message (space- or comma-separated).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub recipients: Vec<String>,
    /// How long to wait for every ACK: 250ms, 3s, or bare seconds (0.25). Default: the config's ack_timeout.
    #[arg(long, value_parser = common::parse_duration, value_name = "DURATION", allow_hyphen_values = true)]
    pub ack_timeout: Option<Duration>,
    /// Print one JSON line per published message with its receipt.
    #[arg(long)]
    pub print_receipt: bool,
    /// Publish by binding endpoints[NAME] (the direct topology) instead of
    /// through the relay; overrides the config's name.
    #[arg(long, value_name = "NAME", conflicts_with = "active")]
    pub name: Option<String>,
    /// Publish through relay_inbound even if the config names an endpoint to bind.
    #[arg(long)]
    pub active: bool,
    /// Go on after a message fails: report each failure, exit with the highest status.
    #[arg(long)]
    pub keep_going: bool,
    /// Long-lived mode: keep one publisher up and publish each stdin line as
    /// it arrives (with --json-input, each line one JSON value); implies --keep-going.
    #[arg(long, conflicts_with = "message")]
    pub stream: bool,
    /// Monitoring endpoint and heartbeats (with --stream only: a one-shot
    /// run is over before anyone would look).
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the logger.
pub fn run(args: Args) -> Result<(), Failure> {
    let mut config = args.common.load()?;
    if let Some(prefix) = &args.cert_prefix {
        config.cert_prefix = prefix.clone();
    }
    // fedmsg-logger always publishes through the relay; a config (or
    // --name) that gives this process an endpoint of its own makes it bind.
    config.active = if args.active {
        true
    } else if let Some(name) = &args.name {
        config.name = Some(name.clone());
        false
    } else {
        config.name.is_none() || config.active
    };
    if args.stream {
        args.service.apply(&mut config);
    } else if args.service.monitoring.is_some() || args.service.heartbeat_interval.is_some() {
        return Err(Failure::usage(
            "error: --monitoring and --heartbeat-interval need --stream (a one-shot run is over before anyone would look)",
        ));
    } else {
        // The config's keys are for the long-running processes.
        config.monitoring = None;
        config.heartbeat_interval = None;
    }
    config.validate()?;
    if args.common.printed_config(&config) {
        return Ok(());
    }
    let ack_timeout = args.ack_timeout.unwrap_or(config.ack_timeout);
    let plain_timeout = args
        .common
        .timeout
        .or(args.ack_timeout)
        .unwrap_or(config.ack_timeout);
    let (timeout, flag) = if args.recipients.is_empty() {
        let flag = if args.common.timeout.is_some() {
            "--timeout"
        } else {
            "--ack-timeout"
        };
        (plain_timeout, flag)
    } else {
        (ack_timeout, "--ack-timeout")
    };
    if timeout > config.max_message_age {
        // The config's rule (max_message_age >= ack_timeout) for the value
        // given here: every send keeps the first one's timestamp.
        return Err(Failure::usage(format!(
            "error: {flag} {} is longer than max_message_age ({}): consumers would refuse \
             the re-sends of a message before the logger gives up; raise max_message_age \
             in the config or shorten {flag}",
            common::show_duration(timeout),
            common::show_duration(config.max_message_age)
        )));
    }
    let runtime = common::runtime()?;
    runtime.block_on(async {
        let mut builder = gilmsg::Bus::builder(&config)
            .modname(&args.modname)
            .active(config.active);
        if let Some(certname) = &args.certname {
            builder = builder.certname(certname);
        }
        let bus = builder.build()?;
        let mut service = Service::new("gilmsg-logger", &config);
        if args.stream {
            service.watch("publisher", bus.health(), bus.metrics());
            service.start_heartbeat(&config, bus.signer_name())?;
            service.start()?;
            // Bound or connected: each line is published as it comes.
            service.ready();
        }
        if config.active {
            tracing::info!(
                "publishing through relay_inbound {} as {}",
                config.relay_inbound.join(","),
                bus.signer_name().unwrap_or("(unsigned)")
            );
        } else {
            tracing::info!(
                "publishing on {} (bound as endpoints.{}) as {}",
                bus.bound_endpoints().join(","),
                config.name.as_deref().unwrap_or("?"),
                bus.signer_name().unwrap_or("(unsigned)")
            );
        }
        let mut run = Run {
            bus: &bus,
            args: &args,
            timeout,
            keep_going: args.keep_going || args.stream,
            published: 0,
            failed: 0,
            worst: EXIT_OK,
        };
        let result = run.all().await;
        service.stopping();
        let (published, failed, worst) = (run.published, run.failed, run.worst);
        tracing::debug!("closing the publisher (flushing for up to zmq_linger)");
        bus.close().await;
        result?;
        if failed == 0 {
            return Ok(());
        }
        Err(Failure {
            status: worst,
            message: format!(
                "{failed} of {} messages failed (exit status {worst}: the highest of any message)",
                published + failed
            ),
        })
    })
}

/// One run of the logger: the messages published so far and how they went.
struct Run<'a> {
    bus: &'a gilmsg::Bus,
    args: &'a Args,
    timeout: Duration,
    keep_going: bool,
    published: u64,
    failed: u64,
    worst: u8,
}

/// What one line or value of input gave.
enum Input {
    Message(Value),
    /// A line that is not a message (bad JSON), with why.
    Bad(String),
}

impl Run<'_> {
    /// Publishes every message of the input. `Err` ends the run at once
    /// (a failure without --keep-going, or one that is not per-message).
    async fn all(&mut self) -> Result<(), Failure> {
        let args = self.args;
        if let Some(text) = &args.message {
            let msg = to_msg(text, args.json_input)
                .map_err(|e| Failure::usage(format!("error: --message: {e}")))?;
            return self.one(Input::Message(msg)).await;
        }
        if args.json_input && !args.stream {
            // Read everything first: fedmsg-logger takes all of stdin as one
            // JSON value, and JSON lines are a natural extension; nothing is
            // published unless the whole input parses.
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                .map_err(|e| Failure::usage(format!("error: reading stdin: {e}")))?;
            let values =
                parse_json_input(&input).map_err(|e| Failure::usage(format!("error: {e}")))?;
            for msg in values {
                self.one(Input::Message(msg)).await?;
            }
            return Ok(());
        }
        // Only here, where the logger may run for long: SIGTERM/SIGINT stop
        // it between messages (the one in flight finishes first), SIGUSR1
        // prints its counters. Elsewhere the default actions stay.
        let mut signals = Signals::install()?;
        let mut lines = stdin_lines();
        tracing::debug!("reading stdin, one message per line");
        let mut number = 0u64;
        loop {
            let line = tokio::select! {
                line = lines.recv() => line,
                event = signals.next() => match event {
                    SignalEvent::Exit => {
                        tracing::info!("stopping on a signal after {number} lines");
                        return Ok(());
                    }
                    SignalEvent::Stats => {
                        eprintln!("{}", common::stats_line("gilmsg-logger", &self.bus.stats()));
                        continue;
                    }
                },
            };
            let Some(line) = line else { break };
            number += 1;
            let line = line.map_err(|e| Failure::usage(format!("error: reading stdin: {e}")))?;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let input = if args.json_input {
                match parse_msg(text) {
                    Ok(v) => Input::Message(v),
                    Err(e) => Input::Bad(format!("stdin line {number}: {e}")),
                }
            } else {
                Input::Message(json!({ "log": text }))
            };
            self.one(input).await?;
        }
        tracing::debug!("end of stdin after {number} lines");
        Ok(())
    }

    /// Publishes one message; records and reports a failure, and returns it
    /// as `Err` unless the run keeps going.
    async fn one(&mut self, input: Input) -> Result<(), Failure> {
        let failure = match input {
            Input::Bad(why) => Failure::usage(format!("error: {why}")),
            Input::Message(msg) => match self.publish(msg).await {
                Ok(()) => {
                    self.published += 1;
                    return Ok(());
                }
                Err(f) => f,
            },
        };
        self.failed += 1;
        self.worst = self.worst.max(failure.status);
        if !self.keep_going {
            return Err(failure);
        }
        eprintln!("gilmsg-logger: {}", failure.message.replace('\n', " "));
        Ok(())
    }

    async fn publish(&self, msg: Value) -> Result<(), Failure> {
        let args = self.args;
        let started = Instant::now();
        let result = self
            .bus
            .publish(&args.topic, msg, &args.recipients, self.timeout)
            .await;
        let elapsed = started.elapsed();
        let receipt = result.map_err(|e| publish_failure(e, elapsed))?;
        let acked: Vec<&str> = receipt.acks.iter().map(|a| a.recipient.as_str()).collect();
        tracing::info!(
            "published {} on {}: {} in {} ({} send{})",
            receipt.msg_id,
            receipt.topic,
            if acked.is_empty() {
                "sent".to_owned()
            } else {
                format!("acked by {}", acked.join(", "))
            },
            common::show_duration(elapsed),
            receipt.sends,
            if receipt.sends == 1 { "" } else { "s" }
        );
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
}

/// The failure of one publish, by the rule of the exit-status table: a
/// message that was never sent because no subscriber appeared is a bus
/// error (3), with or without `--recipients`; one that was sent and not
/// acked in time is a timeout (1). The line gives the real time spent.
pub fn publish_failure(error: gilmsg::Error, elapsed: Duration) -> Failure {
    let after = common::show_duration(elapsed);
    match error {
        gilmsg::Error::Timeout(t) if t.sends == 0 => Failure {
            status: EXIT_BUS,
            message: format!(
                "error: no subscriber appeared for {}: nothing was sent (ACK expected from {}; \
                 msg_id {}); gave up after {after}",
                t.topic,
                t.missing.join(", "),
                t.msg_id
            ),
        },
        gilmsg::Error::NoSubscribers { topic, .. } => Failure {
            status: EXIT_BUS,
            message: format!(
                "error: no subscriber appeared for {topic}: nothing was sent; gave up after {after}"
            ),
        },
        gilmsg::Error::Timeout(t) => Failure {
            status: EXIT_TIMEOUT,
            message: format!("timeout: {t}"),
        },
        other => Failure::from(other),
    }
}

/// Stdin lines as they arrive, read on their own thread so the runtime
/// stays free for signals while a line is awaited. The channel holds one
/// line: the reader waits for each publish before reading on.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(1);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the stdin reader: {e}");
    }
    rx
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
        match parse_msg(text) {
            Ok(v) => values.push(v),
            Err(e) => {
                first_error = Some(format!("stdin line {}: {e}", index + 1));
                break;
            }
        }
    }
    match first_error {
        None if values.is_empty() => Err("stdin: no JSON input".into()),
        None => Ok(values),
        Some(line_error) => match parse_msg(input) {
            Ok(whole) => Ok(vec![whole]),
            Err(_) => Err(line_error),
        },
    }
}

/// One JSON value, read as consumers read bodies (nesting up to
/// `MAX_DEPTH`, beyond serde_json's default of 128).
fn parse_msg(text: &str) -> Result<Value, String> {
    gilmsg_proto::envelope::parse_json(text.as_bytes()).map_err(|e| match e {
        DecodeError::TooDeep { limit } => {
            format!("nests more than {limit} levels deep, which no receiver accepts")
        }
        DecodeError::NotJson(why) | DecodeError::NotUtf8(why) | DecodeError::LoneSurrogate(why) => {
            format!("not valid JSON: {why}")
        }
        other => format!("not valid JSON: {other}"),
    })
}

fn to_msg(text: &str, json_input: bool) -> Result<Value, String> {
    if json_input {
        parse_msg(text)
    } else {
        Ok(json!({ "log": text }))
    }
}

// EXIT_USAGE is part of the documented ordering of statuses (0 < 1 < 2 < 3).
const _: () = assert!(EXIT_OK < EXIT_TIMEOUT && EXIT_TIMEOUT < EXIT_USAGE && EXIT_USAGE < EXIT_BUS);

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

    #[test]
    fn never_sent_is_a_bus_error_either_way() {
        let timeout = gilmsg::Error::Timeout(Box::new(gilmsg::TimeoutError {
            msg_id: "m".into(),
            topic: "t".into(),
            missing: vec!["a".into()],
            acked: Vec::new(),
            sends: 0,
            waited: Duration::from_secs(3),
            broker: None,
        }));
        let plain = gilmsg::Error::NoSubscribers {
            topic: "t".into(),
            waited: Duration::from_secs(3),
        };
        let elapsed = Duration::from_millis(4050);
        for e in [timeout, plain] {
            let f = publish_failure(e, elapsed);
            assert_eq!(f.status, EXIT_BUS);
            assert!(
                f.message
                    .starts_with("error: no subscriber appeared for t: nothing was sent"),
                "{}",
                f.message
            );
            assert!(f.message.ends_with("gave up after 4.05s"), "{}", f.message);
        }
    }
}
