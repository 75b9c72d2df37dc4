//! `gilmsg-bridge verify`: is the ZeroMQ <-> AMQP bridge losing or changing
//! messages? The "small service ... that connects to fedmsg and to the AMQP
//! queues to compare messages" of the migration plan.
//!
//! It subscribes to both sides at once: the ZeroMQ endpoints
//! (`--zmq-endpoint`, else the config's `endpoints`), and the AMQP broker of
//! the config through a queue of its own (server-named, exclusive,
//! auto-delete) bound to both exchanges, the one AMQP publishers use
//! (`amq.topic`) and the one the ZeroMQ -> AMQP bridge publishes to
//! (`zmq.topic`). Every message it sees is fed to
//! [`gilmsg::proto::bridge_match::BridgeMatcher`], which pairs the two
//! sightings of one `msg_id` (on AMQP the `message_id` property) within the
//! grace window and says what went wrong: seen on one side only (missing on
//! the other), seen on both with another `msg` body (compared as canonical
//! JSON) or topic (changed), a counterpart after it was reported (late), a
//! further copy (duplicate: a loop).
//!
//! It never ACKs and never takes a message from anyone's queue: signature
//! checks are off in its own copy of the configuration (it compares what
//! the two sides carry, including what a consumer would refuse), and ACKs
//! and heartbeats (topics `*.gilmsg.ack`, `*.gilmsg.heartbeat`) are left
//! out of the comparison.
//!
//! Two ways to run: continuously, printing each finding as it is made and
//! the counters on SIGUSR1 and at exit; or `--check DURATION`, a nagios
//! plugin like `gilmsg-status`: it watches for DURATION, waits one grace
//! window for the counterparts of what it saw, prints one summary line
//! (then the findings) and exits 0 (OK), 2 (CRITICAL: something went
//! missing or changed) or 3 (UNKNOWN: bad configuration, broker or
//! endpoints unreachable).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use gilmsg::proto::bridge_match::{
    body_digest, match_id, BridgeMatcher, Finding, MatchCounters, MatchSettings, Observation,
    Observed, Side,
};
use gilmsg::{Consumer, Delivery};
use serde_json::{json, Value};

use crate::common::{self, CommonArgs, Failure, EXIT_BUS};
use crate::signals::{SignalEvent, Signals};

/// The program name its lines start with.
pub const PROGRAM: &str = "gilmsg-bridge verify";
/// The start of the line printed on stderr once both sides are subscribed.
pub const READY_LINE: &str = "gilmsg-bridge verify: ready";
/// `--check`: nothing went missing or changed.
pub const EXIT_OK: u8 = 0;
/// `--check`: something went missing or changed.
pub const EXIT_CRITICAL: u8 = 2;
/// `--check`: the check could not run (configuration, broker, endpoints).
pub const EXIT_UNKNOWN: u8 = 3;
/// The exchange the ZeroMQ -> AMQP bridge publishes to, by default.
pub const ZMQ_EXCHANGE: &str = "zmq.topic";

/// How many deliveries may wait for the matcher on each side before the
/// consumer drops (and counts, `dropped.queue_full`) new ones.
const QUEUE: usize = 10_000;
/// How long `--check` waits for both subscriptions before it gives up.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How many findings the `--check` summary names (the rest are counted).
const NAMED_IN_SUMMARY: usize = 10;
/// How many findings `--check` keeps for its long output.
const KEPT_FINDINGS: usize = 1_000;

const AFTER_HELP: &str = "\
What is compared: every message on the ZeroMQ endpoints against every message on a queue of
its own bound to both AMQP exchanges (--amqp-exchange, default the config's publish_exchange,
usually amq.topic; --zmq-exchange, default zmq.topic), paired by msg_id (AMQP: message_id).
  missing    seen on one side only for longer than --grace
  changed    seen on both sides with another msg body (canonical JSON) or topic
  late       the counterpart of an id already reported missing
  duplicate  another copy of an id already seen on that side (a loop?)
ACKs and heartbeats (*.gilmsg.ack, *.gilmsg.heartbeat) are not compared. Signatures are not
checked; nothing is ACKed; no service's queue is touched.

Counters on stderr on SIGUSR1 and at exit (with --json also as a JSON line on stdout):
seen.zmq seen.amqp matched changed missing.zmq missing.amqp late.* duplicate.* evicted
forgotten unjudged ignored pending, then each side's consumer counters (zmq.*, amqp.*).
`missing.amqp` counts messages seen on ZeroMQ only.

--check DURATION (nagios plugin): watch for DURATION, wait --grace for counterparts, print one
summary line (then the findings), exit:
  0 OK        nothing went missing or changed
  2 CRITICAL  something went missing or changed (the summary names them)
  3 UNKNOWN   the check could not run (configuration error, broker or endpoints unreachable)
Without --check: 0 after SIGINT/SIGTERM; 2 usage or configuration error; 3 bus error.";

/// `gilmsg-bridge verify`'s command line.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Compare the messages on the ZeroMQ bus and on the AMQP broker: report those seen on one side only and those changed across the bridge.",
    after_help = AFTER_HELP
)]
pub struct VerifyArgs {
    /// A ZeroMQ endpoint to subscribe to (repeatable; default: every
    /// endpoint under the config's `endpoints`).
    #[arg(long = "zmq-endpoint", value_name = "ENDPOINT", value_parser = common::parse_endpoint)]
    pub zmq_endpoints: Vec<String>,
    /// A topic prefix to compare (repeatable; `#` or nothing: everything).
    #[arg(long = "topic", value_name = "PREFIX")]
    pub topics: Vec<String>,
    /// The exchange AMQP publishers use (default: the config's
    /// publish_exchange, amq.topic unless set).
    #[arg(long, value_name = "NAME")]
    pub amqp_exchange: Option<String>,
    /// The exchange the ZeroMQ -> AMQP bridge publishes to (declared, as a
    /// durable topic exchange, if the config's [exchanges] does not list it).
    #[arg(long, value_name = "NAME", default_value = ZMQ_EXCHANGE)]
    pub zmq_exchange: String,
    /// How long a message seen on one side waits for the other before it is
    /// reported missing there.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = common::parse_duration)]
    pub grace: Duration,
    /// Run as a check: watch for DURATION (then --grace), print a summary,
    /// exit 0, 2 or 3.
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub check: Option<Duration>,
    /// The most messages waiting for their counterpart (and the most
    /// settled ones remembered); past it the oldest is given up, counted
    /// `evicted`, never reported missing.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// Machine-readable output: one JSON object per finding (and the
    /// counters) on stdout; with --check one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Config file (fedora-messaging's TOML or gilmsg's, with amqp_url),
    /// fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `gilmsg-bridge verify` and returns its exit status.
pub fn run(args: VerifyArgs) -> std::process::ExitCode {
    common::init_logging_as(args.common.log_format);
    let checking = args.check.is_some();
    let result = common::runtime().and_then(|runtime| runtime.block_on(verify(&args)));
    match result {
        Ok(status) => std::process::ExitCode::from(status),
        Err(failure) if checking => {
            let message = failure.message.replace('\n', " ");
            if args.json {
                println!(
                    "{}",
                    json!({"status": "UNKNOWN", "exit": EXIT_UNKNOWN, "error": message})
                );
            } else {
                println!("GILMSG BRIDGE UNKNOWN - {message}");
            }
            std::process::ExitCode::from(EXIT_UNKNOWN)
        }
        Err(failure) => common::report(PROGRAM, Err(failure)),
    }
}

/// The two subscriptions.
struct Sides {
    zmq: Consumer,
    amqp: Consumer,
}

/// Subscribes to both sides, then compares until a signal or the end of
/// the check; returns the exit status.
async fn verify(args: &VerifyArgs) -> Result<u8, Failure> {
    let mut signals = Signals::install()?;
    let config = args.common.load()?;
    if args.common.printed_config(&config) {
        return Ok(EXIT_OK);
    }
    let file = config
        .source()
        .map_or_else(|| "(built in)".to_owned(), |p| p.display().to_string());
    if args.check.is_some_and(|d| d.is_zero()) {
        return Err(Failure::usage("error: --check must be longer than 0s"));
    }
    let mut sides = subscribe(args, &config, &file)?;
    let limit = args.check.map(|_| READY_LIMIT);
    let zmq_ready = wait_ready(&mut sides, &mut signals, limit).await?;
    if zmq_ready.connected == 0 {
        return Err(Failure {
            status: EXIT_BUS,
            message: format!(
                "error: no ZeroMQ endpoint is reachable ({})",
                zmq_ready.down.join(", ")
            ),
        });
    }
    if !zmq_ready.down.is_empty() {
        tracing::warn!(
            "ZeroMQ endpoints down (retried in the background; their messages will look missing on zmq): {}",
            zmq_ready.down.join(", ")
        );
    }
    let exchanges = exchanges(args, &config);
    let mut matcher = BridgeMatcher::new(MatchSettings {
        grace: args.grace,
        capacity: args.capacity as usize,
        remember: (args.grace.saturating_mul(10)).max(Duration::from_secs(60)),
    });
    // What arrived while subscribing is matched, never reported missing:
    // its counterpart may have come before the other side was listening.
    matcher.start_judging();
    let mut watch = Watch {
        matcher,
        args,
        prefixes: prefixes(args),
        skipped: BTreeMap::new(),
        kept: Vec::new(),
        dropped_findings: 0,
    };
    eprintln!(
        "{READY_LINE} zmq_endpoints={}/{} amqp_exchanges={} grace={}{}",
        zmq_ready.connected,
        zmq_ready.expected,
        exchanges.join(","),
        common::show_duration(args.grace),
        args.check
            .map(|d| format!(" check={}", common::show_duration(d)))
            .unwrap_or_default()
    );
    let started = tokio::time::Instant::now();
    let window_end = args.check.map(|d| started + d);
    let stop_at = args.check.map(|d| started + d.saturating_add(args.grace));
    let mut interrupted = false;
    let mut window_open = window_end.is_some();
    loop {
        let wake = watch
            .matcher
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            delivery = sides.zmq.next() => match delivery {
                Some(d) => watch.observe(Side::Zmq, d)?,
                None => return Err(Failure { status: EXIT_BUS, message: "error: the ZeroMQ subscription ended".into() }),
            },
            delivery = sides.amqp.next() => match delivery {
                Some(d) => watch.observe(Side::Amqp, d)?,
                None => return Err(Failure { status: EXIT_BUS, message: "error: the AMQP subscription ended".into() }),
            },
            () = sleep_until(wake), if wake.is_some() => {
                for finding in watch.matcher.expire(Instant::now()) {
                    watch.found(&finding)?;
                }
            }
            () = sleep_until(window_end), if window_open => {
                // The window is over: only counterparts of what was seen
                // in it count from now on.
                watch.matcher.stop_accepting();
                window_open = false;
            }
            () = sleep_until(stop_at), if stop_at.is_some() => {
                for finding in watch.matcher.expire(Instant::now()) {
                    watch.found(&finding)?;
                }
                break;
            }
            event = signals.next() => match event {
                SignalEvent::Stats => watch.print_stats(&sides),
                SignalEvent::Exit => {
                    interrupted = true;
                    break;
                }
            },
        }
    }
    watch.print_stats(&sides);
    let counters = watch.matcher.counters();
    // Exact copies never reach the matcher: each consumer's memory
    // recognises them first (`duplicate.*` of its counters).
    let copies = sides.zmq.stats().sum("duplicate.") + sides.amqp.stats().sum("duplicate.");
    sides.zmq.close().await;
    sides.amqp.close().await;
    match args.check {
        None => Ok(EXIT_OK),
        Some(_) if interrupted => Err(Failure {
            status: EXIT_BUS,
            message: "error: interrupted before the check was over".into(),
        }),
        Some(window) => Ok(watch.summary(&counters, copies, window)),
    }
}

/// Waits until both sides are subscribed (for at most `limit`), printing
/// the consumers' counters on SIGUSR1 meanwhile; returns the ZeroMQ
/// side's readiness (which endpoints are up).
async fn wait_ready(
    sides: &mut Sides,
    signals: &mut Signals,
    limit: Option<Duration>,
) -> Result<gilmsg::Readiness, Failure> {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut zmq_ready = None;
    let mut amqp_ready = false;
    loop {
        if amqp_ready {
            if let Some(ready) = zmq_ready.take() {
                return Ok(ready);
            }
        }
        tokio::select! {
            ready = sides.zmq.ready(), if zmq_ready.is_none() => zmq_ready = Some(ready),
            _ = sides.amqp.ready(), if !amqp_ready => amqp_ready = true,
            () = sleep_until(deadline) => {
                let missing = match (zmq_ready.is_some(), amqp_ready) {
                    (false, false) => "ZeroMQ and AMQP",
                    (false, true) => "ZeroMQ",
                    _ => "AMQP",
                };
                return Err(Failure {
                    status: EXIT_BUS,
                    message: format!(
                        "error: the {missing} subscription did not come up within {}",
                        common::show_duration(limit.unwrap_or_default())
                    ),
                });
            }
            event = signals.next() => match event {
                SignalEvent::Stats => {
                    let mut counters = BTreeMap::new();
                    add_side_stats(&mut counters, sides);
                    eprintln!("{}", common::stats_line(PROGRAM, &gilmsg::Stats { counters }));
                }
                SignalEvent::Exit => {
                    return Err(Failure {
                        status: EXIT_BUS,
                        message: "error: stopped before both sides were subscribed".into(),
                    });
                }
            },
        }
    }
}

/// Each side's consumer counters, under `zmq.` and `amqp.`.
fn add_side_stats(counters: &mut BTreeMap<String, u64>, sides: &Sides) {
    for (prefix, consumer) in [("zmq", &sides.zmq), ("amqp", &sides.amqp)] {
        for (k, v) in consumer.stats().counters {
            counters.insert(format!("{prefix}.{k}"), v);
        }
    }
}

/// Builds both subscriptions from the configuration.
fn subscribe(args: &VerifyArgs, config: &gilmsg::Config, file: &str) -> Result<Sides, Failure> {
    if config.amqp.is_none() {
        return Err(Failure::usage(format!(
            "error: config {file}: key amqp_url: not set; gilmsg-bridge verify reads the AMQP side from it"
        )));
    }
    let endpoints = if args.zmq_endpoints.is_empty() {
        config.subscribe_endpoints()
    } else {
        args.zmq_endpoints.clone()
    };
    if endpoints.is_empty() {
        return Err(Failure::usage(format!(
            "error: config {file}: key endpoints: lists nothing, and no --zmq-endpoint was given"
        )));
    }
    let prefixes = prefixes(args);

    // The ZeroMQ side: the same file without the broker, subscribed to
    // the endpoints alone, binding nothing, sending nothing.
    let mut zmq_config = config.clone();
    zmq_config.amqp = None;
    zmq_config.endpoints = BTreeMap::from([("zmq-endpoint".to_owned(), endpoints)]);
    zmq_config.name = None;
    zmq_config.active = false;
    zmq_config.validate_signatures = false;
    if gilmsg_config::check::topic_prefix(&zmq_config.topic_prefix).is_err() {
        // fedora-messaging's topic_prefix may be empty, which a ZeroMQ
        // config refuses; it names only the ACK topic here, and ACKs are
        // told apart by their suffix below.
        zmq_config.topic_prefix = "gilmsg".into();
    }
    let zmq = Consumer::builder(&zmq_config)
        .topics(prefixes.clone())
        .send_acks(false)
        .deliver_acks(true)
        .deliver_heartbeats(true)
        .queue(QUEUE)
        .build()
        .map_err(|e| side_failed("ZeroMQ", e))?;

    // The AMQP side: a queue of its own on both exchanges. The bridge's
    // exchange may not exist yet: declare it unless the file says how.
    let mut amqp_config = config.clone();
    amqp_config.validate_signatures = false;
    let zmq_exchange = args.zmq_exchange.clone();
    if let Some(broker) = amqp_config.amqp.as_mut() {
        broker
            .exchanges
            .entry(zmq_exchange)
            .or_insert_with(gilmsg_config::ExchangeConfig::default);
    }
    let amqp = Consumer::builder(&amqp_config)
        .topics(prefixes)
        .send_acks(false)
        .private_queue(true)
        .private_queue_exchanges(exchanges(args, config))
        .deliver_acks(true)
        .deliver_heartbeats(true)
        .queue(QUEUE)
        .build()
        .map_err(|e| side_failed("AMQP", e))?;
    Ok(Sides { zmq, amqp })
}

/// A failure to subscribe on one side, with the status it maps to.
fn side_failed(side: &str, e: gilmsg::Error) -> Failure {
    let message = format!("error: {side} side: {e}");
    Failure {
        status: Failure::from(e).status,
        message,
    }
}

/// The topic prefixes compared: everything (`""`), or those asked for
/// (`#` meaning everything). On ZeroMQ a subscription prefix, on AMQP the
/// binding keys the library derives from it.
fn prefixes(args: &VerifyArgs) -> Vec<String> {
    if args.topics.iter().any(|t| t == "#" || t.is_empty()) || args.topics.is_empty() {
        return vec![String::new()];
    }
    args.topics.clone()
}

/// Whether both sides deliver `topic` for `prefixes`: a ZeroMQ prefix
/// `a.b` also matches `a.bc`, which no AMQP binding key can, so only the
/// topics an AMQP binding gets too (`a.b` itself and under `a.b.`) are
/// compared; the rest would look missing on AMQP.
fn compared(prefixes: &[String], topic: &str) -> bool {
    prefixes.iter().any(|prefix| {
        let word = prefix.trim_end_matches('.');
        if word.is_empty() {
            return true;
        }
        let under = topic
            .strip_prefix(word)
            .is_some_and(|rest| rest.starts_with('.'));
        // `a.b.` is what is under `a.b`; `a.b` is also `a.b` itself.
        under || (topic == word && !prefix.ends_with('.'))
    })
}

/// The two AMQP exchanges compared: AMQP publishers' and the bridge's.
fn exchanges(args: &VerifyArgs, config: &gilmsg::Config) -> Vec<String> {
    let amqp_exchange = args.amqp_exchange.clone().unwrap_or_else(|| {
        config
            .amqp
            .as_ref()
            .map_or_else(|| "amq.topic".to_owned(), |a| a.publish_exchange.clone())
    });
    let mut exchanges = vec![amqp_exchange];
    if !exchanges.contains(&args.zmq_exchange) {
        exchanges.push(args.zmq_exchange.clone());
    }
    exchanges
}

/// Whether a topic is bus housekeeping, not compared: an ACK (on AMQP
/// also routed as `<ack topic>.<publisher id>`) or a heartbeat. Told by
/// the reserved modname and topic, which both sides share whatever their
/// prefixes.
fn housekeeping(topic: &str) -> Option<&'static str> {
    if topic.ends_with(".gilmsg.ack") || topic.contains(".gilmsg.ack.") {
        Some("skipped.ack")
    } else if topic.ends_with(".gilmsg.heartbeat") {
        Some("skipped.heartbeat")
    } else {
        None
    }
}

/// The state of one run: the matcher, the counts it does not keep, and
/// (for `--check`) the findings to name.
struct Watch<'a> {
    matcher: BridgeMatcher,
    args: &'a VerifyArgs,
    prefixes: Vec<String>,
    skipped: BTreeMap<&'static str, u64>,
    kept: Vec<Finding>,
    dropped_findings: u64,
}

impl Watch<'_> {
    fn observe(&mut self, side: Side, delivery: Delivery) -> Result<(), Failure> {
        let message = delivery.message();
        let kind = housekeeping(message.topic())
            .or_else(|| (!compared(&self.prefixes, message.topic())).then_some("skipped.topic"));
        if let Some(kind) = kind {
            *self.skipped.entry(kind).or_default() += 1;
            let _ = delivery.ack();
            return Ok(());
        }
        let body = match body_digest(message.msg()) {
            Ok(body) => body,
            Err(e) => {
                // Consumers refuse such bodies before they get here; count
                // rather than guess.
                let kind = match side {
                    Side::Zmq => "unreadable.zmq",
                    Side::Amqp => "unreadable.amqp",
                };
                *self.skipped.entry(kind).or_default() += 1;
                tracing::debug!(side = %side, msg_id = message.msg_id(), "not compared: {e}");
                let _ = delivery.ack();
                return Ok(());
            }
        };
        let outcome = self.matcher.observe(Observation {
            side,
            id: match_id(message),
            topic: message.topic(),
            body,
            at: delivery.received_at(),
        });
        // Settled as handled; with ACKs off nothing is sent.
        let _ = delivery.ack();
        if let Observed::Found(finding) = outcome {
            self.found(&finding)?;
        }
        Ok(())
    }

    /// Reports a finding: at once, or (`--check`) after the summary.
    fn found(&mut self, finding: &Finding) -> Result<(), Failure> {
        if self.args.check.is_some() {
            if self.kept.len() < KEPT_FINDINGS {
                self.kept.push(finding.clone());
            } else {
                self.dropped_findings += 1;
            }
            return Ok(());
        }
        let line = if self.args.json {
            finding_json(finding, self.args.grace).to_string()
        } else {
            finding_text(finding, self.args.grace)
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure {
                status: EXIT_BUS,
                message: format!("error: cannot write to stdout: {e}"),
            })
    }

    /// Every counter: the matcher's, what was not compared, and each
    /// side's consumer counters (`zmq.*`, `amqp.*`).
    fn stats(&self, sides: &Sides) -> gilmsg::Stats {
        let mut counters: BTreeMap<String, u64> = self
            .matcher
            .counters()
            .named()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        for (k, v) in &self.skipped {
            counters.insert((*k).to_owned(), *v);
        }
        add_side_stats(&mut counters, sides);
        gilmsg::Stats { counters }
    }

    fn print_stats(&self, sides: &Sides) {
        let stats = self.stats(sides);
        eprintln!("{}", common::stats_line(PROGRAM, &stats));
        if self.args.json && self.args.check.is_none() {
            println!("{}", json!({"event": "stats", "counters": stats.counters}));
        }
    }

    /// Prints the `--check` summary (and the findings) and returns the
    /// status.
    fn summary(&self, counters: &MatchCounters, copies: u64, window: Duration) -> u8 {
        let missing = counters.missing_zmq + counters.missing_amqp;
        let (status, word) = if missing + counters.changed > 0 {
            (EXIT_CRITICAL, "CRITICAL")
        } else {
            (EXIT_OK, "OK")
        };
        let grace = self.args.grace;
        if self.args.json {
            let mut named: BTreeMap<&str, u64> = counters.named().into_iter().collect();
            named.insert("copies", copies);
            let mut body = json!({
                "status": word,
                "exit": status,
                "window_seconds": window.as_secs_f64(),
                "grace_seconds": grace.as_secs_f64(),
                "counters": named,
                "findings": self.kept.iter().map(|f| finding_json(f, grace)).collect::<Vec<_>>(),
            });
            if self.dropped_findings > 0 {
                body["findings_not_listed"] = json!(self.dropped_findings);
            }
            println!("{body}");
            return status;
        }
        let perfdata = format!(
            "seen_zmq={} seen_amqp={} matched={} changed={} missing_zmq={} missing_amqp={} late={} duplicate={} evicted={}",
            counters.seen_zmq,
            counters.seen_amqp,
            counters.matched,
            counters.changed,
            counters.missing_zmq,
            counters.missing_amqp,
            counters.late_zmq + counters.late_amqp,
            counters.duplicate_zmq + counters.duplicate_amqp + copies,
            counters.evicted
        );
        let mut parts = Vec::new();
        for (side, count) in [
            (Side::Amqp, counters.missing_amqp),
            (Side::Zmq, counters.missing_zmq),
        ] {
            if count > 0 {
                let ids = self.named(
                    |f| matches!(f, Finding::Missing { missing_on, .. } if *missing_on == side),
                    count,
                );
                parts.push(format!("{count} missing on {side} ({ids})"));
            }
        }
        if counters.changed > 0 {
            let ids = self.named(|f| matches!(f, Finding::Changed { .. }), counters.changed);
            parts.push(format!("{} changed ({ids})", counters.changed));
        }
        let what = if parts.is_empty() {
            format!(
                "{} matched, nothing missing or changed in {} (+{} grace)",
                counters.matched,
                common::show_duration(window),
                common::show_duration(grace)
            )
        } else {
            parts.join(", ")
        };
        let mut out = format!("GILMSG BRIDGE {word} - {what} | {perfdata}");
        for finding in &self.kept {
            out.push('\n');
            out.push_str(&finding_text(finding, grace));
        }
        if self.dropped_findings > 0 {
            out.push_str(&format!(
                "\n... and {} more findings",
                self.dropped_findings
            ));
        }
        println!("{out}");
        status
    }

    /// `id topic, id topic, ... and N more` for the findings that `pick`.
    fn named(&self, pick: impl Fn(&Finding) -> bool, count: u64) -> String {
        let picked: Vec<&Finding> = self.kept.iter().filter(|f| pick(f)).collect();
        let mut names: Vec<String> = picked
            .iter()
            .take(NAMED_IN_SUMMARY)
            .map(|f| match f {
                Finding::Missing { id, topic, .. } => format!("{id} {topic}"),
                Finding::Changed { id, zmq_topic, .. } => format!("{id} {zmq_topic}"),
                other => other.id().to_owned(),
            })
            .collect();
        let shown = names.len() as u64;
        if count > shown {
            names.push(format!("and {} more", count - shown));
        }
        names.join(", ")
    }
}

/// One finding as a line of text.
fn finding_text(finding: &Finding, grace: Duration) -> String {
    match finding {
        Finding::Missing {
            missing_on,
            id,
            topic,
            ..
        } => format!(
            "missing on {missing_on}: topic={topic} msg_id={id} seen_on={} for {}",
            missing_on.other(),
            common::show_duration(grace)
        ),
        Finding::Changed {
            id,
            zmq_topic,
            amqp_topic,
            zmq_body,
            amqp_body,
        } => {
            let mut what = Vec::new();
            if zmq_body != amqp_body {
                what.push(format!("body zmq={zmq_body} amqp={amqp_body}"));
            }
            if zmq_topic != amqp_topic {
                what.push(format!("topic zmq={zmq_topic} amqp={amqp_topic}"));
            }
            format!("changed: topic={zmq_topic} msg_id={id} {}", what.join(" "))
        }
        Finding::Late {
            side,
            id,
            topic,
            after,
        } => format!(
            "late on {side}: topic={topic} msg_id={id} after={} (reported missing before)",
            common::show_duration(*after)
        ),
        Finding::Duplicate { side, id, topic } => {
            format!("duplicate on {side}: topic={topic} msg_id={id}")
        }
    }
}

/// One finding as a JSON object.
fn finding_json(finding: &Finding, grace: Duration) -> Value {
    match finding {
        Finding::Missing {
            missing_on,
            id,
            topic,
            ..
        } => json!({
            "event": "missing",
            "missing_on": missing_on.as_str(),
            "seen_on": missing_on.other().as_str(),
            "topic": topic,
            "msg_id": id,
            "grace_seconds": grace.as_secs_f64(),
        }),
        Finding::Changed {
            id,
            zmq_topic,
            amqp_topic,
            zmq_body,
            amqp_body,
        } => json!({
            "event": "changed",
            "msg_id": id,
            "body_changed": zmq_body != amqp_body,
            "topic_changed": zmq_topic != amqp_topic,
            "zmq_topic": zmq_topic,
            "amqp_topic": amqp_topic,
            "zmq_body": zmq_body.to_string(),
            "amqp_body": amqp_body.to_string(),
        }),
        Finding::Late {
            side,
            id,
            topic,
            after,
        } => json!({
            "event": "late",
            "side": side.as_str(),
            "topic": topic,
            "msg_id": id,
            "after_seconds": after.as_secs_f64(),
        }),
        Finding::Duplicate { side, id, topic } => json!({
            "event": "duplicate",
            "side": side.as_str(),
            "topic": topic,
            "msg_id": id,
        }),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_heartbeats_are_told_by_their_reserved_names_on_both_sides() {
        assert_eq!(housekeeping("org.x.dev.gilmsg.ack"), Some("skipped.ack"));
        assert_eq!(housekeeping("org.x.gilmsg.ack.3f2a"), Some("skipped.ack"));
        assert_eq!(
            housekeeping("org.x.dev.gilmsg.heartbeat"),
            Some("skipped.heartbeat")
        );
        assert_eq!(housekeeping("org.x.dev.bodhi.update"), None);
        assert_eq!(housekeeping("org.x.dev.gilmsg.acknowledged"), None);
    }

    #[test]
    fn only_topics_both_sides_deliver_are_compared() {
        let all = vec![String::new()];
        assert!(compared(&all, "anything.at.all"));
        let some = vec!["org.x.a".to_owned(), "org.y.".to_owned()];
        assert!(compared(&some, "org.x.a"));
        assert!(compared(&some, "org.x.a.b"));
        assert!(!compared(&some, "org.x.ab"), "a ZeroMQ prefix match only");
        assert!(compared(&some, "org.y.z"));
        assert!(!compared(&some, "org.yz"));
        assert!(!compared(&some, "org.y"), "not under org.y. on ZeroMQ");
    }

    #[test]
    fn findings_read_the_same_as_text_and_json() {
        let missing = Finding::Missing {
            missing_on: Side::Amqp,
            id: "2026-1".into(),
            topic: "org.x.a".into(),
            seen_at: Instant::now(),
        };
        let grace = Duration::from_secs(2);
        assert_eq!(
            finding_text(&missing, grace),
            "missing on amqp: topic=org.x.a msg_id=2026-1 seen_on=zmq for 2.00s"
        );
        let v = finding_json(&missing, grace);
        assert_eq!(
            (
                v["event"].as_str(),
                v["missing_on"].as_str(),
                v["seen_on"].as_str()
            ),
            (Some("missing"), Some("amqp"), Some("zmq"))
        );
    }
}
