//! `gilmsg-consumer`: the ACK-sending consumer for shell use.
//!
//! Prints each new message (human-readable, or JSON lines with `--json`),
//! or with `--exec CMD` runs `sh -c CMD` per message with the whole signed
//! message on stdin and acks only when it exits 0. A message is acked only
//! after it was printed or its command succeeded; a failure means no ACK,
//! ever.
//!
//! Readiness and counters go to stderr: `gilmsg-consumer: ready ...` once
//! every endpoint is connected and ACKs have a path out (scripts and tests
//! wait for that line instead of sleeping), and `gilmsg-consumer: stats ...`
//! on SIGUSR1 and at exit. Signal handlers are installed before anything
//! else, so a signal during start-up is handled, not fatal.
//!
//! ## Stopping (SIGTERM or SIGINT)
//! 1. No new message is taken.
//! 2. A running `--exec` handler gets `--stop-grace` to finish (its result
//!    counts as usual: exit 0 is acked). A second signal ends the wait.
//! 3. Then its process group gets SIGTERM, and SIGKILL [`KILL_AFTER`]
//!    later if it is still there; that message is not acked.
//! 4. Queued ACKs are flushed (up to `zmq_linger`), the counters printed,
//!    and the consumer exits 0.
//!
//! Handler processes die with the consumer: each runs in its own process
//! group (signalled as a whole on stop) and gets SIGKILL from the kernel if
//! the consumer dies first, even by SIGKILL (`PR_SET_PDEATHSIG`).

use std::io::Write;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use gilmsg::proto::Envelope;
use gilmsg::Delivery;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, Notify};

use crate::common::{self, CommonArgs, Failure};
use crate::service::{Service, ServiceArgs};
use crate::signals::{SignalEvent, Signals};

mod handler_process;

/// After the grace period and SIGTERM, how long a handler has before SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(1);

const AFTER_HELP: &str = "\
Handlers (--exec CMD): `sh -c CMD` runs once per new message, in the consumer's working
directory. Its stdin is the whole signed message as one line of JSON (topic, msg, msg_id,
timestamp, i, username, signature, certificate, ...; the payload is under \"msg\"), and
GILMSG_TOPIC, GILMSG_MSG_ID and GILMSG_SIGNER are set. Exit 0 means handled: the ACK goes
out only then. Anything else (or being killed) means not handled: no ACK, ever.
Handlers run one at a time.

Stopping: on SIGTERM or SIGINT no new message is taken; a running handler gets --stop-grace
to finish; then its process group gets SIGTERM, and SIGKILL 1s later (not acked). A second
signal skips the rest of the grace. Queued ACKs are flushed, the counters printed, exit 0.
Handler processes get SIGKILL if the consumer dies first, even by SIGKILL.

Signals: SIGUSR1 prints the counters on stderr, at any time, even before the ready line.

Exit status: 0 after a stop or --count; 2 usage or configuration error; 3 bus error
(including stdout closed).";

/// The start of the line the consumer prints on stderr once it is ready
/// (`... certname=<name> endpoints=<connected>/<expected>[ down=...]`).
pub const READY_LINE: &str = "gilmsg-consumer: ready";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-consumer",
    version,
    about = "Receive messages from a gilmsg/fedmsg bus, validate them, and send signed ACKs once handled.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Sign ACKs as this identity (default: the config's certname rules, modname "gilmsg").
    #[arg(long)]
    pub certname: Option<String>,
    /// Topic prefix to subscribe to, full (repeatable; default: <topic_prefix>.<environment>.).
    #[arg(long = "topic", value_name = "PREFIX")]
    pub topics: Vec<String>,
    /// Print one JSON object per line: {"topic", "msg_id", "signer", "body"}.
    #[arg(long)]
    pub json: bool,
    /// Run `sh -c CMD` per message, the whole signed message on stdin; ACK only if it exits 0.
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
    /// Bind this consumer's ACK endpoint endpoints[NAME] (the direct
    /// topology) instead of sending ACKs through relay_inbound; overrides
    /// the config's name.
    #[arg(long, value_name = "NAME", conflicts_with = "active")]
    pub name: Option<String>,
    /// Send ACKs through relay_inbound even if the config names an endpoint to bind.
    #[arg(long)]
    pub active: bool,
    /// On SIGTERM/SIGINT, how long a running --exec handler may take to finish.
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration, default_value = "5s")]
    pub stop_grace: Duration,
    /// Monitoring endpoint and heartbeats.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the consumer until a signal or `--count`.
pub fn run(args: Args) -> Result<(), Failure> {
    let runtime = common::runtime()?;
    runtime.block_on(async move {
        // Before anything else: a SIGTERM or SIGUSR1 while the config loads
        // or the sockets come up must be handled, not kill the process.
        let mut signals = Signals::install()?;
        let mut config = args.common.load()?;
        if args.active {
            config.active = true;
        } else if let Some(name) = &args.name {
            config.name = Some(name.clone());
            config.active = false;
        }
        args.service.apply(&mut config);
        config.validate()?;
        if args.common.printed_config(&config) {
            return Ok(());
        }
        let mut builder = gilmsg::Consumer::builder(&config)
            .send_acks(!args.no_ack)
            .deliver_acks(args.include_acks)
            .queue(args.queue);
        if args.active {
            builder = builder.active(true);
        }
        if !args.topics.is_empty() {
            builder = builder.topics(args.topics.clone());
        }
        if let Some(certname) = &args.certname {
            builder = builder.certname(certname);
        }
        // Printing and --quiet are quick: they run on the consumer's socket
        // thread (no hand-off per message). --exec runs a process, so it
        // gets deliveries through the queue on this task instead.
        let progress = Arc::new(Progress::new(args.count));
        let mut consumer = match args.exec {
            Some(_) => builder.build()?,
            None => {
                let (quiet, json_lines, progress) = (args.quiet, args.json, progress.clone());
                builder.build_inline(move |message, signer| {
                    let result = if quiet {
                        Ok(())
                    } else {
                        print(json_lines, message, signer)
                    };
                    tracing::debug!(
                        "handled {} on {} from {}: {}",
                        message.msg_id(),
                        message.topic(),
                        signer.unwrap_or("(unsigned)"),
                        if result.is_ok() {
                            "acking"
                        } else {
                            "stdout failed, not acking"
                        }
                    );
                    progress.record(&result);
                    result.map_err(|e| e.to_string())
                })?
            }
        };
        let mut service = Service::new("gilmsg-consumer", &config);
        service.watch("consumer", consumer.health(), consumer.metrics());
        service.start_heartbeat(&config, consumer.signer_name().or(args.certname.as_deref()))?;
        service.start()?;
        tracing::info!(
            "consumer up: signing ACKs as {}, ACKs {}, handler {}",
            consumer.signer_name().unwrap_or("(none)"),
            match (args.no_ack, consumer.bound_endpoints()) {
                (true, _) => "off".to_owned(),
                (false, []) => format!("through relay_inbound {}", config.relay_inbound.join(",")),
                (false, bound) => format!("on {} (bound)", bound.join(",")),
            },
            match &args.exec {
                Some(cmd) => format!("sh -c {cmd:?}"),
                None if args.quiet => "none (--quiet)".to_owned(),
                None => "print".to_owned(),
            }
        );

        let Some(readiness) = wait_ready(&mut consumer, &mut signals).await else {
            service.stopping();
            return finish(consumer, Ok(())).await;
        };
        // Endpoints still down when waiting settled are named on the ready
        // line itself: an operator reading only stderr sees why a publisher
        // behind one of them would time out.
        let down = if readiness.down.is_empty() {
            String::new()
        } else {
            format!(" down={}", readiness.down.join(","))
        };
        service.ready_and_say(format_args!(
            "{READY_LINE} certname={} endpoints={}/{}{down}",
            consumer.signer_name().unwrap_or("-"),
            readiness.connected,
            readiness.expected
        ));
        let result = match &args.exec {
            Some(command) => {
                let stop = StopPolicy {
                    grace: args.stop_grace,
                };
                exec_loop(
                    &mut consumer,
                    &mut signals,
                    &mut service,
                    command,
                    &progress,
                    args.count,
                    stop,
                )
                .await
            }
            None => inline_loop(&consumer, &mut signals, &mut service, &progress, args.count).await,
        };
        service.stopping();
        finish(consumer, result).await
    })
}

/// Waits for readiness, answering signals meanwhile; `None` if told to stop.
async fn wait_ready(
    consumer: &mut gilmsg::Consumer,
    signals: &mut Signals,
) -> Option<gilmsg::Readiness> {
    let now = consumer.readiness().borrow().clone();
    tracing::info!(
        "waiting for readiness: {}/{} endpoints connected, ACK path {}",
        now.connected,
        now.expected,
        if now.ack_path { "up" } else { "not up yet" }
    );
    loop {
        tokio::select! {
            readiness = consumer.ready() => {
                tracing::info!("ready: {}/{} endpoints connected", readiness.connected, readiness.expected);
                return Some(readiness);
            }
            event = signals.next() => match event {
                SignalEvent::Stats => print_stats(&consumer.stats()),
                SignalEvent::Exit => {
                    tracing::info!("stopping before ready");
                    return None;
                }
            },
        }
    }
}

/// Closes the consumer (flushing queued ACKs) and prints the final counters.
async fn finish(consumer: gilmsg::Consumer, result: Result<(), Failure>) -> Result<(), Failure> {
    tracing::info!("closing: flushing queued ACKs (up to zmq_linger)");
    let stats = consumer.close().await;
    print_stats(&stats);
    tracing::info!("stopped");
    result
}

fn print_stats(stats: &gilmsg::Stats) {
    eprintln!("{}", common::stats_line("gilmsg-consumer", stats));
}

/// Printing and `--quiet`: the handler runs on the socket thread; this loop
/// only watches signals, `--count` and a fatal print error.
async fn inline_loop(
    consumer: &gilmsg::Consumer,
    signals: &mut Signals,
    service: &mut Service,
    progress: &Progress,
    count: Option<u64>,
) -> Result<(), Failure> {
    loop {
        if let Some(why) = progress.fatal() {
            return Err(Failure {
                status: common::EXIT_BUS,
                message: format!("error: {why}"),
            });
        }
        if count.is_some_and(|n| progress.handled() >= n) {
            tracing::info!(
                "stopping: handled {} messages (--count)",
                progress.handled()
            );
            return Ok(());
        }
        tokio::select! {
            _ = progress.changed.notified() => {}
            event = signals.next() => match event {
                SignalEvent::Stats => print_stats(&consumer.stats()),
                SignalEvent::Exit => {
                    tracing::info!("stopping on a signal");
                    service.stopping();
                    return Ok(());
                }
            },
        }
    }
}

/// How a stop treats a running handler.
#[derive(Debug, Clone, Copy)]
struct StopPolicy {
    grace: Duration,
}

/// `--exec`: one handler process at a time, raced against signals.
async fn exec_loop(
    consumer: &mut gilmsg::Consumer,
    signals: &mut Signals,
    service: &mut Service,
    command: &str,
    progress: &Progress,
    count: Option<u64>,
    stop: StopPolicy,
) -> Result<(), Failure> {
    let mut running: Option<Handler> = None;
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        if running.is_none() {
            if stop_deadline.is_some() {
                return Ok(());
            }
            if count.is_some_and(|n| progress.handled() >= n) {
                tracing::info!(
                    "stopping: handled {} messages (--count)",
                    progress.handled()
                );
                return Ok(());
            }
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            delivery = consumer.next(), if running.is_none() && stop_deadline.is_none() => {
                let Some(delivery) = delivery else {
                    tracing::info!("the consumer's socket thread stopped");
                    return Ok(());
                };
                running = Handler::start(command, delivery);
            }
            outcome = wait_exit(&mut running), if running.is_some() => {
                if let Some(handler) = running.take() {
                    handler.settle(outcome, progress)?;
                }
            }
            event = signals.next() => match event {
                SignalEvent::Stats => print_stats(&consumer.stats()),
                SignalEvent::Exit => match (&running, stop_deadline) {
                    (None, _) => {
                        service.stopping();
                        tracing::info!("stopping on a signal");
                        return Ok(());
                    }
                    (Some(handler), None) => {
                        service.stopping();
                        tracing::info!(
                            "stopping: taking no new messages; the handler for {} has {} to finish (another signal ends it now)",
                            handler.delivery.msg_id(),
                            common::show_duration(stop.grace)
                        );
                        stop_deadline = Some(tokio::time::Instant::now() + stop.grace);
                    }
                    (Some(_), Some(_)) => {
                        tracing::info!("second stop signal: ending the handler now");
                        if let Some(handler) = running.take() {
                            handler.end().await;
                        }
                    }
                },
            },
            () = tokio::time::sleep_until(stop_deadline.unwrap_or(far)), if running.is_some() && stop_deadline.is_some() => {
                tracing::info!("stop grace of {} is over: ending the handler", common::show_duration(stop.grace));
                if let Some(handler) = running.take() {
                    handler.end().await;
                }
            }
        }
    }
}

/// The exit of the running handler (pending forever when there is none;
/// the select above only polls this when there is one).
async fn wait_exit(running: &mut Option<Handler>) -> Result<ExitStatus, String> {
    match running {
        Some(handler) => (&mut handler.exited)
            .await
            .unwrap_or_else(|_| Err("the handler's waiter vanished".to_owned())),
        None => std::future::pending().await,
    }
}

/// One `--exec` handler process and the message it handles.
struct Handler {
    delivery: Delivery,
    /// Its process group (the same number as its pid).
    group: Pid,
    started: Instant,
    exited: oneshot::Receiver<Result<ExitStatus, String>>,
}

impl Handler {
    /// Starts `sh -c command` for `delivery`, with the whole signed message
    /// on its stdin; if it cannot start, the message fails (no ACK).
    fn start(command: &str, delivery: Delivery) -> Option<Handler> {
        let failed = |delivery: Delivery, why: String| {
            tracing::warn!(
                "handler failed for {}: {why}; not acking",
                delivery.msg_id()
            );
            delivery.fail();
            None
        };
        let body = Value::Object(delivery.message().body().clone()).to_string();
        let mut process = tokio::process::Command::new("sh");
        process
            .arg("-c")
            .arg(command)
            .env("GILMSG_TOPIC", delivery.topic())
            .env("GILMSG_MSG_ID", delivery.msg_id())
            .env("GILMSG_SIGNER", delivery.signer().unwrap_or(""))
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, so a stop reaches whatever it started too.
            .process_group(0);
        handler_process::die_with_consumer(&mut process);
        let mut child = match process.spawn() {
            Ok(child) => child,
            Err(e) => return failed(delivery, format!("cannot run {command:?}: {e}")),
        };
        let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()) else {
            return failed(
                delivery,
                "the handler exited before it had an id".to_owned(),
            );
        };
        tracing::debug!(
            "handler for {} ({} from {}) started: pid {group}",
            delivery.msg_id(),
            delivery.topic(),
            delivery.signer().unwrap_or("(unsigned)")
        );
        let (tx, exited) = oneshot::channel();
        let command = command.to_owned();
        tokio::spawn(async move {
            if let Some(mut stdin) = child.stdin.take() {
                // A command that ignores its stdin closes the pipe early;
                // that is its business, so a write error is not a failure.
                let _ = stdin.write_all(body.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
            }
            let status = child
                .wait()
                .await
                .map_err(|e| format!("waiting for {command:?}: {e}"));
            let _ = tx.send(status);
        });
        Some(Handler {
            delivery,
            group: Pid::from_raw(group),
            started: Instant::now(),
            exited,
        })
    }

    /// Acks or fails the message by the handler's exit status.
    fn settle(
        self,
        outcome: Result<ExitStatus, String>,
        progress: &Progress,
    ) -> Result<(), Failure> {
        let took = common::show_duration(self.started.elapsed());
        let msg_id = self.delivery.msg_id().to_owned();
        match outcome {
            Ok(status) if status.success() => {
                tracing::info!("handler for {msg_id} exited 0 after {took}: acking");
                progress.record(&Ok(()));
                self.delivery.ack()?;
            }
            Ok(status) => {
                tracing::warn!("handler failed for {msg_id}: {status} after {took}; not acking");
                self.delivery.fail();
            }
            Err(why) => {
                tracing::warn!("handler failed for {msg_id}: {why}; not acking");
                self.delivery.fail();
            }
        }
        Ok(())
    }

    /// Step 3 of the stop: SIGTERM to the handler's group, SIGKILL after
    /// [`KILL_AFTER`]; the message is not acked.
    async fn end(mut self) {
        let msg_id = self.delivery.msg_id().to_owned();
        tracing::info!(
            "sending SIGTERM to the handler for {msg_id} (process group {})",
            self.group
        );
        let _ = killpg(self.group, Signal::SIGTERM);
        if tokio::time::timeout(KILL_AFTER, &mut self.exited)
            .await
            .is_err()
        {
            tracing::info!(
                "the handler for {msg_id} is still there after {}: SIGKILL",
                common::show_duration(KILL_AFTER)
            );
            let _ = killpg(self.group, Signal::SIGKILL);
            let _ = (&mut self.exited).await;
        }
        tracing::warn!("handler for {msg_id} ended by the stop; not acking");
        self.delivery.fail();
    }
}

/// What the handler has done so far, shared with the socket thread when
/// the handler runs there.
struct Progress {
    handled: AtomicU64,
    fatal: Mutex<Option<String>>,
    /// Wakes the loop that watches `--count` and a fatal print error.
    changed: Notify,
    /// The handled count at which that loop must look (`--count`; never
    /// without). Waking it for every message cost a thread hand-off per
    /// message on the socket thread (the main thread ran 7-22 µs per
    /// message in `gilmsg-bench` for nothing).
    wake_at: u64,
}

impl Progress {
    fn new(count: Option<u64>) -> Self {
        Progress {
            handled: AtomicU64::new(0),
            fatal: Mutex::new(None),
            changed: Notify::new(),
            wake_at: count.unwrap_or(u64::MAX),
        }
    }

    fn record(&self, result: &Result<(), PrintError>) {
        match result {
            Ok(()) => {
                let handled = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
                if handled >= self.wake_at {
                    self.changed.notify_one();
                }
            }
            Err(e) => {
                if let Ok(mut fatal) = self.fatal.lock() {
                    fatal.get_or_insert_with(|| e.to_string());
                }
                self.changed.notify_one();
            }
        }
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
