//! The firehose benchmark (issue 15): what `gilmsg-firehose` forwards and
//! what it costs the bus, on the bench's direct ZeroMQ bus, a mosquitto
//! broker of the test kit's (the deployment's config and ACL, loopback)
//! and a real firehose process (this executable re-run as
//! `gilmsg-firehose` through `roles`' `__firehose` marker):
//!
//! 1. **forwarding throughput**: a flood of pre-built signed messages on a
//!    bench XPUB the firehose subscribes to (an extra `[endpoints]` entry
//!    of its config), counted at an independent MQTT subscriber (rumqttc,
//!    anonymous, in this process) and from the firehose's own counters
//!    (its stats line at exit), with the CPU per message of the firehose
//!    and of mosquitto and the rate that CPU allows with the cores to
//!    itself;
//! 2. **effect on bus latency**: acknowledged publishes to 1 consumer in
//!    rounds without a firehose and with one subscribed to the bus
//!    (forwarding every message, ACK and receipt event to mosquitto, the
//!    subscriber reading them), alternated (without, with, with, without,
//!    ...) so that the machine's load drifting does not favour one side;
//!    the difference of the pooled percentiles is set against the spread
//!    between rounds of the same kind, the run's own noise.
//!
//! Mosquitto is up in both kinds of rounds, so the only difference is the
//! firehose. Without mosquitto the section says so in its status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gilmsg_cli::common::{self, Failure};
use gilmsg_cli::procs::Proc;
use gilmsg_crypto::Identity;
use gilmsg_testkit::mosquitto::{self, Mosquitto, FIREHOSE_USER};
use serde_json::{json, Value};

use super::{cpu, fail, get, progress, DirectBus, Summary, READY};

/// The marker that re-runs this executable as `gilmsg-firehose`.
const MARKER: &str = "__firehose";

/// The kind of each latency round in order: `true` with the firehose.
/// Without-with-with-without-without-with: a load that drifts steadily
/// over the run weighs on both kinds alike.
const ROUNDS: [bool; 6] = [false, true, true, false, false, true];

/// The topic of the flood (under the bus's root, which the firehose
/// subscribes to; the direct bus's consumers do not).
const FLOOD_TOPIC: &str = "org.gilmsg.bench.dev.firehose.flood";

/// The firehose's MQTT topic prefixes (its defaults, which the
/// deployment's ACL allows).
const MQTT_PREFIX: &str = "gilmsg/";
const RECEIPT_PREFIX: &str = "gilmsg-receipts/";

/// How long the flood may go without a message reaching the subscriber
/// before the count is taken as final (the firehose dropped the rest).
const IDLE: Duration = Duration::from_secs(10);

/// The `firehose` section of results.json, or why it did not run.
pub(crate) fn section(exe: &Path, dir: &Path, samples: usize, messages: usize) -> Value {
    if !mosquitto::installed() {
        return json!({"status": format!("skipped: {}", mosquitto::NOT_INSTALLED)});
    }
    bench(exe, dir, samples, messages)
        .unwrap_or_else(|f| json!({"status": format!("failed: {}", f.message)}))
}

fn bench(exe: &Path, dir: &Path, samples: usize, messages: usize) -> Result<Value, Failure> {
    progress("firehose: starting mosquitto and a direct bus with 1 consumer");
    let broker = Mosquitto::start(READY).map_err(fail)?;
    let bus = DirectBus::start(exe, dir, 1, "", false)?;
    let context = zmq::Context::new();
    let flood = Flood::bind(&context)?;
    let firehose_config = dir.join("firehose.toml");
    // The publisher's config (its endpoints: the publisher's and the
    // consumer's ACK endpoint) with the flood's socket added; the firehose
    // binds nothing (it never ACKs), so the `name` in it is harmless.
    let mut text = std::fs::read_to_string(DirectBus::config_path(dir, 1, "bench-pub"))
        .map_err(|e| fail(e.to_string()))?;
    let _ = writeln!(text, "\"bench-flood\" = [\"{}\"]", flood.endpoint);
    std::fs::write(&firehose_config, text).map_err(|e| fail(e.to_string()))?;
    let password = dir.join("mqtt-password");
    std::fs::write(&password, format!("{}\n", broker.password)).map_err(|e| fail(e.to_string()))?;
    let launcher = Launcher {
        exe: exe.to_owned(),
        config: firehose_config,
        password,
        port: broker.port,
    };
    let subscriber = Subscriber::connect(broker.port)?;
    let broker_pid = broker.pid();

    let mut out = serde_json::Map::new();
    out.insert(
        "latency".into(),
        latency_rounds(&bus, &launcher, &subscriber, samples)?,
    );
    out.insert(
        "throughput".into(),
        throughput(&launcher, &flood, &subscriber, broker_pid, dir, messages)?,
    );
    drop(bus);
    Ok(Value::Object(out))
}

/// Starts the firehose with the section's config and MQTT login.
struct Launcher {
    exe: PathBuf,
    config: PathBuf,
    password: PathBuf,
    port: u16,
}

impl Launcher {
    /// The firehose with `extra` flags, once subscribed to the bus and
    /// connected to the broker.
    fn start(&self, extra: &[&str]) -> Result<Proc, Failure> {
        let mut command = Command::new(&self.exe);
        command
            .arg(MARKER)
            .arg("--config")
            .arg(&self.config)
            .args(["--mqtt", &format!("127.0.0.1:{}", self.port)])
            .args(["--mqtt-username", FIREHOSE_USER, "--mqtt-password-file"])
            .arg(&self.password)
            .args(extra)
            .env("GILMSG_LOG", "warn");
        let firehose = Proc::spawn("gilmsg-firehose", command).map_err(|e| fail(e.to_string()))?;
        firehose
            .wait_stderr(gilmsg_cli::firehose::READY_LINE, READY)
            .map_err(fail)?;
        // The connection line may have come before the ready line (then
        // the wait above read past it) or comes after it.
        const CONNECTED: &str = "gilmsg-firehose: mqtt connected";
        if !firehose
            .stderr_so_far()
            .iter()
            .any(|l| l.contains(CONNECTED))
        {
            firehose.wait_stderr(CONNECTED, READY).map_err(fail)?;
        }
        Ok(firehose)
    }
}

/// Stops the firehose (SIGTERM) and returns the counters of the stats line
/// it prints on the way out.
fn stop(mut firehose: Proc) -> BTreeMap<String, u64> {
    firehose.terminate(Duration::from_secs(10));
    let lines = firehose.stderr_until_closed(Duration::from_secs(5));
    lines
        .iter()
        .rev()
        .find_map(|l| l.split_once("gilmsg-firehose: stats"))
        .map(|(_, counters)| {
            counters
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Latency rounds without and with the firehose (see [`ROUNDS`]).
fn latency_rounds(
    bus: &DirectBus,
    launcher: &Launcher,
    subscriber: &Subscriber,
    samples: usize,
) -> Result<Value, Failure> {
    let runtime = common::runtime()?;
    let recipients = vec!["consumer-0".to_owned()];
    let mut rounds = Vec::new();
    let mut pooled: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for (round, &with) in ROUNDS.iter().enumerate() {
        let firehose = if with {
            Some(launcher.start(&[])?)
        } else {
            None
        };
        subscriber.drain();
        // The firehose's CPU per publish: what it takes from the cores the
        // publisher and the consumer share with it.
        let processes: Vec<(String, u32)> = firehose
            .iter()
            .map(|f| ("firehose".to_owned(), f.pid()))
            .collect();
        let before = cpu::Snapshot::take(&processes);
        let summary = runtime.block_on(bus.latency(&recipients, samples))?;
        // What reached the subscriber: the round's messages and ACKs, and
        // their receipt events (waiting, acked, complete; none without a
        // firehose), once the firehose has caught up.
        let publishes = samples + super::latency_warmup(samples);
        let seen = match firehose.is_some() {
            true => subscriber.until(IDLE, |s| {
                s.messages >= 2 * publishes && s.receipts >= 3 * publishes
            }),
            false => subscriber.drain(),
        };
        let firehose_cpu = before.per_message(&cpu::Snapshot::take(&processes), publishes);
        let counters = firehose.map(stop);
        let kind = if with { "with" } else { "without" };
        progress(format!(
            "firehose latency round {round} {kind} firehose: p50 {:.1} us p99 {:.1} us, {} MQTT messages and {} receipt events at the subscriber",
            summary.pct(50.0),
            summary.pct(99.0),
            seen.messages,
            seen.receipts
        ));
        let mut row = summary.json();
        row["firehose"] = json!(with);
        row["mqtt_messages_at_subscriber"] = json!(seen.messages);
        row["receipt_events_at_subscriber"] = json!(seen.receipts);
        row["firehose_counters"] = json!(counters);
        row["firehose_cpu_us_per_publish"] = firehose_cpu["total_us_per_msg"].clone();
        rounds.push(row);
        pooled[usize::from(with)].extend(summary.samples);
    }
    let mut out = compare_rounds(&rounds, pooled);
    out["samples_per_round"] = json!(samples);
    out["rounds"] = json!(rounds);
    Ok(out)
}

/// The pooled percentiles of each kind of round (`pooled[0]` without a
/// firehose, `[1]` with), their difference, and the run's own noise: the
/// largest spread between rounds of one kind (`firehose` false or true
/// in each of `rounds`).
fn compare_rounds(rounds: &[Value], pooled: [Vec<f64>; 2]) -> Value {
    let [without, with] = pooled.map(Summary::new);
    let spread = |pointer: &str| {
        [false, true]
            .map(|kind| {
                let (lo, hi) = rounds
                    .iter()
                    .filter(|r| r["firehose"] == json!(kind))
                    .map(|r| get(r, pointer))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                        (lo.min(x), hi.max(x))
                    });
                hi - lo
            })
            .into_iter()
            .fold(0.0, f64::max)
    };
    let compare = |p: f64, pointer: &str| {
        let difference = with.pct(p) - without.pct(p);
        let noise = spread(pointer);
        json!({
            "without_us": without.pct(p),
            "with_us": with.pct(p),
            "difference_us": difference,
            "ratio": with.pct(p) / without.pct(p),
            "spread_between_rounds_of_one_kind_us": noise,
            "within_noise": difference.abs() <= noise,
        })
    };
    json!({
        "without": without.json(),
        "with": with.json(),
        "p50": compare(50.0, "/p50_us"),
        "p99": compare(99.0, "/p99_us"),
    })
}

/// Forwarding throughput: a flood of pre-built signed messages.
fn throughput(
    launcher: &Launcher,
    flood: &Flood,
    subscriber: &Subscriber,
    broker_pid: Option<u32>,
    dir: &Path,
    messages: usize,
) -> Result<Value, Failure> {
    progress(format!(
        "firehose throughput: signing {messages} messages for the flood"
    ));
    let publisher =
        Identity::load(&dir.join("pki"), "bench-pub").map_err(|e| fail(e.to_string()))?;
    let frames = (0..messages)
        .map(|seq| {
            gilmsg_testkit::forge::message(
                FLOOD_TOPIC,
                json!({"seq": seq, "payload": "x".repeat(64)}),
                false,
                Some(&publisher as &dyn gilmsg_proto::Signer),
            )
            .encode()
            .map_err(|e| fail(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Room for the whole flood at every stage, so that what is measured is
    // the firehose's pace, not its drops.
    let room = messages.max(10_000).to_string();
    flood.forget_subscriptions()?;
    let firehose = launcher.start(&[
        "--buffer",
        &room,
        "--queue",
        &room,
        "--high-water-mark",
        "0",
    ])?;
    flood.wait_subscribed()?;
    subscriber.drain();
    let mut processes = vec![("firehose".to_owned(), firehose.pid())];
    processes.extend(broker_pid.map(|pid| ("mosquitto".to_owned(), pid)));
    let before = cpu::Snapshot::take(&processes);
    let started = Instant::now();
    for message in &frames {
        flood.send(message)?;
    }
    let sent_in = started.elapsed();
    progress(format!(
        "firehose throughput: {messages} messages on the bus in {:.2} s",
        sent_in.as_secs_f64()
    ));
    let arrived = subscriber.count_flood(messages, started, IDLE);
    let cpu = before.per_message(&cpu::Snapshot::take(&processes), messages);
    let counters = stop(firehose);
    let elapsed = arrived.last.map(|t| t.duration_since(started));
    let per_s = elapsed.map(|e| arrived.count as f64 / e.as_secs_f64());
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let firehose_us = cpu
        .pointer("/by_thread_us_per_msg/firehose")
        .and_then(Value::as_object)
        .map(|threads| {
            threads
                .values()
                .filter_map(Value::as_f64)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let firehose_total: f64 = firehose_us.iter().sum();
    let busiest = firehose_us.iter().copied().fold(0.0, f64::max);
    progress(format!(
        "firehose throughput: {} of {messages} at the subscriber ({} valid) in {:.2} s: {:.0} msgs/s; firehose CPU {firehose_total:.1} us/msg",
        arrived.count,
        arrived.valid,
        elapsed.unwrap_or_default().as_secs_f64(),
        per_s.unwrap_or(f64::NAN),
    ));
    Ok(json!({
        "messages": messages,
        "sent_in_s": sent_in.as_secs_f64(),
        "at_subscriber": arrived.count,
        "valid_at_subscriber": arrived.valid,
        "elapsed_s": elapsed.map(|e| e.as_secs_f64()),
        "msgs_per_s": per_s,
        "firehose_counters": counters,
        "cpu": cpu,
        "firehose_cpu_us_per_msg": firehose_total,
        "firehose_busiest_thread_us_per_msg": busiest,
        "cores": cores,
        // With the cores to itself and its work spread over them; and the
        // cap of its busiest thread alone, which no number of cores lifts.
        "cpu_bound_per_s": cores * 1e6 / firehose_total,
        "busiest_thread_bound_per_s": 1e6 / busiest,
    }))
}

/// The bench's XPUB the firehose subscribes to, for the flood.
struct Flood {
    socket: zmq::Socket,
    endpoint: String,
}

impl Flood {
    /// Bound on a free loopback port, no high-water mark (nothing dropped
    /// on this side however fast it sends).
    fn bind(context: &zmq::Context) -> Result<Flood, Failure> {
        let zmq_fail = |e: zmq::Error| fail(format!("flood socket: {e}"));
        let socket = context.socket(zmq::XPUB).map_err(zmq_fail)?;
        socket.set_sndhwm(0).map_err(zmq_fail)?;
        socket.set_linger(0).map_err(zmq_fail)?;
        socket.bind("tcp://127.0.0.1:*").map_err(zmq_fail)?;
        let endpoint = socket
            .get_last_endpoint()
            .map_err(zmq_fail)?
            .map_err(|_| fail("flood socket: endpoint is not UTF-8"))?;
        Ok(Flood { socket, endpoint })
    }

    /// Forgets the subscriptions of earlier firehoses (the latency
    /// rounds' ones connected here too), so that [`Flood::wait_subscribed`]
    /// waits for the next one's.
    fn forget_subscriptions(&self) -> Result<(), Failure> {
        loop {
            match self.socket.recv_bytes(zmq::DONTWAIT) {
                Ok(_) => continue,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(fail(format!("flood socket: {e}"))),
            }
        }
    }

    /// Waits for the firehose's subscription (XPUB hands it over).
    fn wait_subscribed(&self) -> Result<(), Failure> {
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail("flood socket: the firehose never subscribed"));
            }
            let ready = self
                .socket
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .map_err(|e| fail(e.to_string()))?;
            if ready > 0 {
                let frame = self.socket.recv_bytes(0).map_err(|e| fail(e.to_string()))?;
                if frame.first() == Some(&1) {
                    return Ok(());
                }
            }
        }
    }

    fn send(&self, frames: &[Vec<u8>]) -> Result<(), Failure> {
        self.socket
            .send_multipart(frames, 0)
            .map_err(|e| fail(format!("flood: {e}")))
    }
}

/// What the MQTT subscriber saw: each publish's topic, when, and whether
/// the firehose called it valid.
struct Arrival {
    topic: String,
    at: Instant,
    valid: bool,
}

/// Counts of one latency round.
struct Seen {
    messages: usize,
    receipts: usize,
}

/// The flood's count at the subscriber.
struct Flooded {
    count: usize,
    valid: usize,
    last: Option<Instant>,
}

/// An anonymous MQTT client (not the firehose) subscribed to both of the
/// firehose's prefixes; a thread of its own reads the connection.
struct Subscriber {
    client: rumqttc::Client,
    arrivals: mpsc::Receiver<Arrival>,
}

impl Subscriber {
    fn connect(port: u16) -> Result<Subscriber, Failure> {
        let mut options = rumqttc::MqttOptions::new("gilmsg-bench", "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_keep_alive(Duration::from_secs(60));
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        for prefix in [MQTT_PREFIX, RECEIPT_PREFIX] {
            client
                .subscribe(format!("{prefix}#"), rumqttc::QoS::AtMostOnce)
                .map_err(|e| fail(format!("MQTT subscribe: {e}")))?;
        }
        let (arrivals_tx, arrivals) = mpsc::channel();
        let (subscribed_tx, subscribed) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let packet = match event {
                    Ok(rumqttc::Event::Incoming(packet)) => packet,
                    Ok(rumqttc::Event::Outgoing(_)) => continue,
                    Err(_) => return,
                };
                let arrival = match packet {
                    rumqttc::Packet::SubAck(_) => {
                        let _ = subscribed_tx.send(());
                        continue;
                    }
                    rumqttc::Packet::Publish(p) => Arrival {
                        at: Instant::now(),
                        valid: serde_json::from_slice::<Value>(&p.payload)
                            .is_ok_and(|v| v["verdict"] == "valid"),
                        topic: p.topic,
                    },
                    _ => continue,
                };
                if arrivals_tx.send(arrival).is_err() {
                    return;
                }
            }
        });
        for _ in 0..2 {
            subscribed
                .recv_timeout(READY)
                .map_err(|_| fail("MQTT subscriber: no SUBACK from mosquitto"))?;
        }
        Ok(Subscriber { client, arrivals })
    }

    /// Takes what has arrived so far, counted.
    fn drain(&self) -> Seen {
        self.until(Duration::ZERO, |_| false)
    }

    /// Counts arrivals until `done` holds, or none came for `idle`.
    fn until(&self, idle: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
        let mut seen = Seen {
            messages: 0,
            receipts: 0,
        };
        while !done(&seen) {
            let Ok(arrival) = self.arrivals.recv_timeout(idle) else {
                break;
            };
            if arrival.topic.starts_with(RECEIPT_PREFIX) {
                seen.receipts += 1;
            } else {
                seen.messages += 1;
            }
        }
        seen
    }

    /// Counts the flood's messages as they arrive, until all `expected`
    /// are in or none came for `idle`.
    fn count_flood(&self, expected: usize, since: Instant, idle: Duration) -> Flooded {
        let topic = gilmsg_cli::firehose::mqtt_topic(MQTT_PREFIX, FLOOD_TOPIC);
        let mut flooded = Flooded {
            count: 0,
            valid: 0,
            last: None,
        };
        while flooded.count < expected {
            let Ok(arrival) = self.arrivals.recv_timeout(idle) else {
                break;
            };
            if arrival.topic == topic && arrival.at >= since {
                flooded.count += 1;
                flooded.valid += usize::from(arrival.valid);
                flooded.last = Some(arrival.at);
            }
        }
        flooded
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Ends the reading thread: its connection errors out.
        let _ = self.client.disconnect();
    }
}

/// The Markdown of the `firehose` section.
pub(crate) fn markdown(section: &Value) -> String {
    let mut md = String::from("\n### Firehose (gilmsg-firehose to mosquitto on 127.0.0.1)\n\n");
    if let Some(status) = section.get("status").and_then(Value::as_str) {
        let _ = writeln!(md, "{status}");
        return md;
    }
    let t = |p: &str| get(section, &format!("/throughput{p}"));
    let counter = |name: &str| {
        section
            .pointer(&format!("/throughput/firehose_counters/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let _ = writeln!(
        md,
        "| forwarding throughput ({:.0} signed messages flooded in {:.2} s) | value |\n|---|---|",
        t("/messages"),
        t("/sent_in_s"),
    );
    let rows = [
        (
            "at the independent MQTT subscriber (verdict valid)".to_owned(),
            format!(
                "{:.0} ({:.0}) in {:.2} s: **{:.0} msgs/s**",
                t("/at_subscriber"),
                t("/valid_at_subscriber"),
                t("/elapsed_s"),
                t("/msgs_per_s")
            ),
        ),
        (
            "firehose counters: received, forwarded, written to mosquitto".to_owned(),
            ["firehose.message.received", "firehose.message.forwarded", "firehose.mqtt.sent"]
                .map(counter)
                .map(|n| n.to_string())
                .join(", "),
        ),
        (
            "dropped: queue full (bus side), buffer full, client full, too large".to_owned(),
            [
                "dropped.queue_full",
                "firehose.dropped.buffer_full",
                "firehose.dropped.client_full",
                "firehose.dropped.too_large",
            ]
            .map(counter)
            .map(|n| n.to_string())
            .join(", "),
        ),
        (
            "firehose CPU per message (all threads; busiest thread)".to_owned(),
            format!(
                "{:.1} µs; {:.1} µs",
                t("/firehose_cpu_us_per_msg"),
                t("/firehose_busiest_thread_us_per_msg")
            ),
        ),
        (
            "CPU by thread, µs per message (the firehose is this executable re-run, hence its threads' names)"
                .to_owned(),
            super::cpu_by_thread(&section["throughput"]["cpu"]),
        ),
        (
            format!(
                "rate that CPU allows with the {:.0} cores to itself; its busiest thread's cap",
                t("/cores")
            ),
            format!(
                "{:.0} msgs/s; {:.0} msgs/s",
                t("/cpu_bound_per_s"),
                t("/busiest_thread_bound_per_s")
            ),
        ),
    ];
    for (label, value) in rows {
        let _ = writeln!(md, "| {label} | {value} |");
    }
    let l = |p: &str| get(section, &format!("/latency{p}"));
    let _ = writeln!(
        md,
        "\n| acknowledged publish, 1 recipient, {:.0} samples a round | p50 | p99 | MQTT messages (receipt events) at the subscriber; firehose CPU per publish |\n|---|---|---|---|",
        l("/samples_per_round"),
    );
    for (i, round) in section
        .pointer("/latency/rounds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let with = round["firehose"].as_bool().unwrap_or(false);
        let _ = writeln!(
            md,
            "| round {}, {} firehose | {:.1} µs | {:.1} µs | {} ({}); {:.0} µs |",
            i + 1,
            if with { "with" } else { "without" },
            get(round, "/p50_us"),
            get(round, "/p99_us"),
            round["mqtt_messages_at_subscriber"],
            round["receipt_events_at_subscriber"],
            get(round, "/firehose_cpu_us_per_publish"),
        );
    }
    for p in ["p50", "p99"] {
        let c = |k: &str| l(&format!("/{p}/{k}"));
        let within = section
            .pointer(&format!("/latency/{p}/within_noise"))
            .and_then(Value::as_bool);
        let _ = writeln!(
            md,
            "| **{p}, all rounds of a kind: without → with** | {:.1} → {:.1} µs | {:+.1} µs ({:.2}×) | spread between rounds of one kind {:.1} µs: {} |",
            c("without_us"),
            c("with_us"),
            c("difference_us"),
            c("ratio"),
            c("spread_between_rounds_of_one_kind_us"),
            match within {
                Some(true) => "within the run's noise",
                Some(false) => "beyond the run's noise",
                None => "?",
            },
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(with: bool, p50: f64) -> Value {
        json!({"firehose": with, "p50_us": p50, "p99_us": p50 * 2.0})
    }

    /// Rounds without at 100 and `other` µs, with at 300 and 320: the
    /// difference (about 200 µs) against the larger spread of one kind.
    #[test]
    fn a_difference_is_within_the_noise_only_when_rounds_of_one_kind_differ_as_much() {
        for (other, within) in [(110.0, false), (400.0, true)] {
            let rounds = [
                round(false, 100.0),
                round(true, 300.0),
                round(false, other),
                round(true, 320.0),
            ];
            let out = compare_rounds(&rounds, [vec![100.0, other], vec![300.0, 320.0]]);
            let spread = get(&out, "/p50/spread_between_rounds_of_one_kind_us");
            assert_eq!(spread, (other - 100.0_f64).max(20.0));
            assert_eq!(out["p50"]["within_noise"], json!(within), "{out}");
        }
    }

    #[test]
    fn a_skipped_section_says_why() {
        let md = markdown(&json!({"status": "skipped: mosquitto is not installed"}));
        assert!(md.contains("skipped: mosquitto is not installed"));
        assert!(!md.contains("msgs/s"));
    }
}
