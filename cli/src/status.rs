//! `gilmsg-status`: is every expected process alive? A check in the nagios
//! plugin convention, as fedmsg's proposed `fedmsg-status`.
//!
//! Long-running gilmsg processes publish a signed heartbeat every
//! `heartbeat_interval` on `<topic_prefix>.<environment>.gilmsg.heartbeat`
//! (see [`crate::service`]). This tool listens for `--listen` (more than
//! one interval), verifies each heartbeat like any message (signature,
//! certificate, CRL, age, duplicates), and sorts every expected identity:
//!
//! - **alive**: its newest heartbeat's *signed* timestamp is at most
//!   `--late-after` old when the listening ends;
//! - **late**: heard while listening, but its newest heartbeat is older
//!   than that (it stopped, or paused, while we listened);
//! - **silent**: not heard at all while listening.
//!
//! Who a heartbeat is from is its verified signer, never its body: a
//! heartbeat signed by someone else does not count for the name it claims,
//! an unsigned or badly signed one counts for nobody, and a replayed old
//! one is judged by the time it was signed, so it never makes a dead
//! process look alive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;

use crate::common::{self, CommonArgs};
use crate::service::{HEARTBEAT_MODNAME, HEARTBEAT_TOPIC};

/// Nagios: every expected identity is alive.
pub const EXIT_OK: u8 = 0;
/// Nagios: some are late, none silent.
pub const EXIT_WARNING: u8 = 1;
/// Nagios: some are silent.
pub const EXIT_CRITICAL: u8 = 2;
/// Nagios: the check itself could not run (usage, config, bus).
pub const EXIT_UNKNOWN: u8 = 3;

const AFTER_HELP: &str = "\
States, by the newest heartbeat of each expected identity when the listening ends:
  alive   its signed timestamp is at most --late-after old
  late    heard while listening, but older than --late-after (stopped or paused meanwhile)
  silent  not heard at all while listening
Only a heartbeat that verifies (signature, certificate, CRL, max_message_age) counts, and
it counts for its signer's certificate name, whatever its body says. Replayed old heartbeats
are judged by when they were signed.

Defaults: --interval is the config's heartbeat_interval; --listen is 3 x interval;
--late-after is 2 x interval + 1s (timestamps are whole seconds).
Expected identities: --expect NAME (repeatable), else every name under [endpoints] but
relay_outbound.

Exit status (nagios plugin convention):
  0 OK        every expected identity is alive
  1 WARNING   some are late, none silent
  2 CRITICAL  some are silent
  3 UNKNOWN   the check could not run (usage or configuration error, bus error, nothing to expect)";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-status",
    version,
    about = "Check that every expected gilmsg process is alive by listening for its signed heartbeats.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// An identity (certificate name) that must be alive (repeatable).
    #[arg(long = "expect", value_name = "NAME", num_args = 1..)]
    pub expect: Vec<String>,
    /// How often the processes send heartbeats (default: heartbeat_interval).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub interval: Option<Duration>,
    /// How long to listen; more than one interval (default: 3 x interval).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub listen: Option<Duration>,
    /// A newest heartbeat older than this is late (default: 2 x interval + 1s).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub late_after: Option<Duration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Config file, fedmsg's common flags, logging.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One expected identity's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its newest heartbeat is at most `late_after` old.
    Alive,
    /// Heard, but its newest heartbeat is older than that.
    Late,
    /// Never heard.
    Silent,
}

impl State {
    /// The verdict on an identity whose newest verified heartbeat was
    /// signed at `newest` (seconds since the epoch; `None`: never heard),
    /// judged at `now`: the one rule of this check, which the firehose's
    /// web view applies too.
    pub fn judge(newest: Option<i64>, now: f64, late_after: Duration) -> State {
        match newest {
            None => State::Silent,
            Some(t) if now - t as f64 <= late_after.as_secs_f64() => State::Alive,
            Some(_) => State::Late,
        }
    }

    /// `alive`, `late` or `silent`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Late => "late",
            State::Silent => "silent",
        }
    }
}

/// What was heard from one signer.
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    /// The newest signed timestamp, seconds since the epoch.
    newest: i64,
    count: u64,
}

/// A failure of the check itself: UNKNOWN.
/// The identities whose heartbeats are expected: `--expect`, or else
/// every name of the config's `[endpoints]` but `relay_outbound` (as
/// `docs/running-a-bus.md` says); `gilmsg-firehose`'s web view uses the
/// same list.
pub(crate) fn expected_identities(expect: &[String], config: &gilmsg::Config) -> Vec<String> {
    if !expect.is_empty() {
        return expect.to_vec();
    }
    config
        .endpoints
        .keys()
        .filter(|k| k.as_str() != gilmsg::relay::RELAY_OUTBOUND)
        .cloned()
        .collect()
}

fn unknown(message: impl std::fmt::Display) -> (u8, String) {
    (EXIT_UNKNOWN, format!("GILMSG STATUS UNKNOWN - {message}"))
}

/// Runs the check and returns the exit status (nagios).
pub fn main(argv: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => {
            // --help and --version are not failures; usage errors are
            // UNKNOWN here, not clap's 2 (which would read as CRITICAL).
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() {
                EXIT_UNKNOWN
            } else {
                EXIT_OK
            });
        }
    };
    common::init_logging_as(args.common.log_format);
    let (status, text) = match run(&args) {
        Ok(done) => done,
        Err((status, message)) => {
            if args.json {
                (
                    status,
                    json!({"status": "UNKNOWN", "exit": status, "error": message}).to_string(),
                )
            } else {
                (status, message)
            }
        }
    };
    println!("{text}");
    std::process::ExitCode::from(status)
}

fn run(args: &Args) -> Result<(u8, String), (u8, String)> {
    let config = args.common.load().map_err(|f| unknown(f.message))?;
    if args.common.printed_config(&config) {
        return Ok((EXIT_OK, String::new()));
    }
    if !config.validate_signatures {
        return Err(unknown(
            "validate_signatures is off: heartbeats could not be told from forgeries",
        ));
    }
    let interval = args
        .interval
        .or(config.heartbeat_interval)
        .ok_or_else(|| unknown("no --interval and no heartbeat_interval in the config"))?;
    let listen = args.listen.unwrap_or(interval * 3);
    if listen <= interval {
        return Err(unknown(format!(
            "--listen {} must be longer than the interval {}",
            common::show_duration(listen),
            common::show_duration(interval)
        )));
    }
    let late_after = args
        .late_after
        .unwrap_or(interval * 2 + Duration::from_secs(1));
    let expected = expected_identities(&args.expect, &config);
    if expected.is_empty() {
        return Err(unknown(
            "nobody to expect: give --expect NAME or list names under [endpoints]",
        ));
    }
    let topic = config
        .topic_scheme()
        .topic(HEARTBEAT_MODNAME, HEARTBEAT_TOPIC);
    let heard = listen_for(&config, &topic, listen).map_err(unknown)?;
    let now = unix_now_f64();
    let mut rows = Vec::new();
    for name in &expected {
        let seen = heard.get(name).copied();
        let state = State::judge(seen.map(|h| h.newest), now, late_after);
        rows.push((name.clone(), state, seen));
    }
    let unexpected: Vec<&String> = heard.keys().filter(|k| !expected.contains(k)).collect();
    let names_in = |state: State| -> Vec<&str> {
        rows.iter()
            .filter(|(_, s, _)| *s == state)
            .map(|(n, _, _)| n.as_str())
            .collect()
    };
    let (silent, late, alive) = (
        names_in(State::Silent),
        names_in(State::Late),
        names_in(State::Alive),
    );
    let (status, word) = if !silent.is_empty() {
        (EXIT_CRITICAL, "CRITICAL")
    } else if !late.is_empty() {
        (EXIT_WARNING, "WARNING")
    } else {
        (EXIT_OK, "OK")
    };
    let show = |names: &[&str]| {
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    };
    if args.json {
        let identities: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, state, seen)| {
                json!({
                    "name": name,
                    "state": state.as_str(),
                    "last_seen": seen.map(|h| rfc3339(h.newest)),
                    "age_seconds": seen.map(|h| (now - h.newest as f64).max(0.0)),
                    "heartbeats": seen.map_or(0, |h| h.count),
                })
            })
            .collect();
        let body = json!({
            "status": word,
            "exit": status,
            "topic": topic,
            "interval_seconds": interval.as_secs_f64(),
            "listened_seconds": listen.as_secs_f64(),
            "late_after_seconds": late_after.as_secs_f64(),
            "identities": identities,
            "unexpected": unexpected,
        });
        return Ok((status, body.to_string()));
    }
    let mut text = format!(
        "GILMSG STATUS {word} - {} silent{}, {} late{}, {} alive | alive={} late={} silent={}",
        silent.len(),
        show(&silent),
        late.len(),
        show(&late),
        alive.len(),
        alive.len(),
        late.len(),
        silent.len()
    );
    for (name, state, seen) in &rows {
        let last = match seen {
            Some(h) => format!(
                "last_seen={} age={:.1}s heartbeats={}",
                rfc3339(h.newest),
                (now - h.newest as f64).max(0.0),
                h.count
            ),
            None => "last_seen=never".to_owned(),
        };
        text.push_str(&format!("\n{name} {} {last}", state.as_str()));
    }
    for name in unexpected {
        text.push_str(&format!("\n{name} unexpected (heard, not expected)"));
    }
    Ok((status, text))
}

/// Listens on `topic` for `listen` after the subscription is up, and
/// returns what each verified signer sent.
fn listen_for(
    config: &gilmsg::Config,
    topic: &str,
    listen: Duration,
) -> Result<BTreeMap<String, Heard>, String> {
    let runtime = common::runtime().map_err(|f| f.message)?;
    runtime.block_on(async {
        let heard: Arc<Mutex<BTreeMap<String, Heard>>> = Arc::default();
        let record = heard.clone();
        let exact = topic.to_owned();
        let mut consumer = gilmsg::Consumer::builder(config)
            .topics([topic.to_owned()])
            .send_acks(false)
            // On AMQP: a queue of its own, so no heartbeat is taken from
            // another watcher's queue.
            .private_queue(true)
            .deliver_heartbeats(true)
            .build_inline(move |message, signer| {
                // The subscription is a prefix: only the very topic counts,
                // and only signed heartbeats with a timestamp.
                let (Some(signer), Some(timestamp)) = (signer, message.timestamp()) else {
                    return Ok(());
                };
                if message.topic() != exact {
                    return Ok(());
                }
                if let Ok(mut heard) = record.lock() {
                    let entry = heard.entry(signer.to_owned()).or_default();
                    entry.newest = entry.newest.max(timestamp);
                    entry.count += 1;
                }
                tracing::debug!(signer, timestamp, "heartbeat");
                Ok(())
            })
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        let ready = tokio::time::timeout(listen, consumer.ready()).await;
        if ready.is_err() {
            return Err(format!(
                "the subscription did not come up within {}",
                common::show_duration(listen)
            ));
        }
        eprintln!(
            "gilmsg-status: listening on {topic} for {}",
            common::show_duration(listen)
        );
        tokio::time::sleep(listen).await;
        consumer.close().await;
        let heard = heard.lock().map(|h| h.clone()).unwrap_or_default();
        Ok(heard)
    })
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rfc3339(seconds: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}
