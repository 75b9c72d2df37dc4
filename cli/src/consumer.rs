//! `gilmsg-consumer`: the ACK-sending consumer for shell use.
//!
//! Prints each new message (human-readable, or JSON lines with `--json`),
//! or with `--exec CMD` runs `sh -c CMD` per message with the body on stdin
//! and acks only when it exits 0. A message is acked only after it was
//! printed or its command succeeded; a failure means no ACK, ever.
//!
//! Readiness and counters go to stderr: `gilmsg-consumer: ready ...` once
//! every endpoint is connected and ACKs have a path out (scripts and tests
//! wait for that line instead of sleeping), and `gilmsg-consumer: stats ...`
//! on SIGUSR1 and at exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gilmsg::proto::Envelope;
use gilmsg::Delivery;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::common::{self, Failure};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-consumer",
    version,
    about = "Receive messages from a gilmsg/fedmsg bus, validate them, and send signed ACKs once handled."
)]
pub struct Args {
    /// Config file (default: $GILMSG_CONFIG, then /etc/gilmsg/gilmsg.toml).
    #[arg(long, alias = "config-filename", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sign ACKs as this identity (default: the config's certname rules, modname "gilmsg").
    #[arg(long)]
    pub certname: Option<String>,
    /// Topic prefix to subscribe to, full (repeatable; default: <topic_prefix>.<environment>.).
    #[arg(long = "topic", value_name = "PREFIX")]
    pub topics: Vec<String>,
    /// Print one JSON object per line: {"topic", "msg_id", "signer", "body"}.
    #[arg(long)]
    pub json: bool,
    /// Run `sh -c CMD` per message, body on stdin; ACK only if it exits 0.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Do not send ACKs (a validating tail).
    #[arg(long)]
    pub no_ack: bool,
    /// Handle messages by doing nothing (ACK at once): for benchmarks.
    #[arg(long, conflicts_with_all = ["json", "exec"])]
    pub quiet: bool,
    /// Also show ACK messages sent by other consumers.
    #[arg(long)]
    pub include_acks: bool,
    /// Exit after handling this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Deliveries that may wait for the handler before new ones are dropped.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
}

/// Runs the consumer until a signal or `--count`.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = common::load_config(args.config.as_deref())?;
    let runtime = common::runtime()?;
    runtime.block_on(async move {
        let mut builder = gilmsg::Consumer::builder(&config)
            .send_acks(!args.no_ack)
            .deliver_acks(args.include_acks)
            .queue(args.queue);
        if !args.topics.is_empty() {
            builder = builder.topics(args.topics.clone());
        }
        if let Some(certname) = &args.certname {
            builder = builder.certname(certname);
        }
        // Printing and --quiet are quick: they run on the consumer's socket
        // thread (no hand-off per message). --exec runs a process, so it
        // gets deliveries through the queue on this task instead.
        let progress = Arc::new(Progress::default());
        let mut consumer = match args.exec {
            Some(_) => builder.build()?,
            None => {
                let (quiet, json_lines, progress) = (args.quiet, args.json, progress.clone());
                builder.build_inline(move |message, signer| {
                    let result = if quiet { Ok(()) } else { print(json_lines, message, signer) };
                    progress.record(&result);
                    result.map_err(|e| e.to_string())
                })?
            }
        };
        let readiness = consumer.ready().await;
        let mut signals = crate::relay::Signals::install()?;
        eprintln!(
            "gilmsg-consumer: ready certname={} endpoints={}/{}",
            consumer.signer_name().unwrap_or("-"),
            readiness.connected,
            readiness.expected
        );
        let stats = |c: &gilmsg::Consumer| eprintln!("gilmsg-consumer: stats {}", c.stats());
        let result = loop {
            if let Some(why) = progress.fatal() {
                break Err(Failure { status: common::EXIT_BUS, message: format!("error: {why}") });
            }
            if args.count.is_some_and(|n| progress.handled() >= n) {
                break Ok(());
            }
            tokio::select! {
                delivery = consumer.next(), if args.exec.is_some() => {
                    let Some(delivery) = delivery else { break Ok(()) };
                    let command = args.exec.as_deref().unwrap_or_default();
                    match run_command(command, &delivery).await {
                        Ok(()) => {
                            progress.record(&Ok(()));
                            delivery.ack()?;
                        }
                        Err(why) => {
                            eprintln!("gilmsg-consumer: handler failed for {}: {why}; not acking", delivery.msg_id());
                            delivery.fail();
                        }
                    }
                }
                _ = progress.changed.notified() => {}
                event = signals.next() => match event {
                    crate::relay::SignalEvent::Stats => stats(&consumer),
                    crate::relay::SignalEvent::Exit => break Ok(()),
                },
            }
        };
        stats(&consumer);
        consumer.close().await;
        result
    })
}

/// What the handler has done so far, shared with the socket thread when
/// the handler runs there.
#[derive(Default)]
struct Progress {
    handled: AtomicU64,
    fatal: Mutex<Option<String>>,
    changed: Notify,
}

impl Progress {
    fn record(&self, result: &Result<(), PrintError>) {
        match result {
            Ok(()) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut fatal) = self.fatal.lock() {
                    fatal.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.changed.notify_one();
    }

    fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

/// Stdout is gone: the consumer stops (and the message is not acked).
#[derive(Debug)]
struct PrintError(String);

impl std::fmt::Display for PrintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn print(json_lines: bool, message: &Envelope, signer: Option<&str>) -> Result<(), PrintError> {
    let line = if json_lines {
        json!({
            "topic": message.topic(),
            "msg_id": message.msg_id(),
            "signer": signer,
            "body": Value::Object(message.body().clone()),
        })
        .to_string()
    } else {
        format!(
            "{} {} signer={} {}",
            message.topic(),
            message.msg_id(),
            signer.unwrap_or("-"),
            message.msg()
        )
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| PrintError(format!("cannot write to stdout: {e}")))
}

async fn run_command(command: &str, delivery: &Delivery) -> Result<(), String> {
    let body = Value::Object(delivery.message().body().clone()).to_string();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("GILMSG_TOPIC", delivery.topic())
        .env("GILMSG_MSG_ID", delivery.msg_id())
        .env("GILMSG_SIGNER", delivery.signer().unwrap_or(""))
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that ignores its stdin closes the pipe early; that is
        // its business, so a write error here is not a handler failure.
        let _ = stdin.write_all(body.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}"))
    }
}
