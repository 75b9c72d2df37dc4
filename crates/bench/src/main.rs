//! `gilmsg-bench`: the numbers behind "close to what ZeroMQ and the crypto allow".
//!
//! One invocation on 127.0.0.1, consumers as separate processes (this
//! executable re-run in a role, like the demo):
//! 1. the floor: a raw ZeroMQ PUB -> SUB -> PUB -> SUB round trip with frames
//!    of the same size as a signed message, the same out to k echo processes
//!    for each recipient count k > 1 (the fan-out floor), and sign/verify
//!    cost per scheme;
//! 2. warm latency of acknowledged `publish` on a long-lived handle, 1/3/10
//!    recipients (p50, p90, p99, max); with 1, once more in blocks
//!    interleaved with raw round trips (a floor from the same seconds);
//! 3. throughput with many publishes in flight, and the window that did it;
//! 4. one-shot `gilmsg-logger` wall time through a running relay;
//! 5. the Python anchor (`gilmsg-logger`, `gilmsg.publish`) when the interop
//!    venv is present;
//! 6. memory: peak RSS of a consumer and of the publisher;
//!    and, in the same loop, the Python package (`gilmsg_rs`,
//!    bindings/python) when its venv is given: `bindings/python/bench.py`
//!    as a child publishing on the same direct bus to the same consumers,
//!    beside the Rust library's numbers;
//! 7. with `--soak`, a memory soak: acknowledged publishes as fast as the
//!    consumer's `dedupe_capacity` allows ([`SoakPace`]), the consumer's RSS
//!    sampled as it goes, its steady state the median of the samples once
//!    its dedupe cache is full.
//!
//! Results are ratios inside one run (the machines are shared and noisy),
//! written as JSON and Markdown plus an SVG latency plot, with the speed
//! targets evaluated against floors measured in the same run
//! (`targets.rs`). Nothing here asserts a timing: benchmarks report, tests
//! check behaviour.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use gilmsg_crypto::{Identity, TrustStore};
use gilmsg_proto::{Signer, Verifier};
use serde_json::{json, Value};

use gilmsg_cli::common::{self, Failure, EXIT_BUS};
use gilmsg_cli::procs::{field, Proc};
use gilmsg_cli::roles;
use gilmsg_testkit::fixture::ed25519_pki;
use gilmsg_testkit::memory;

mod amqp;
mod bridge;
mod cpu;
mod firehose;
mod python_anchor;
mod targets;

const READY: Duration = Duration::from_secs(30);

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-bench",
    version,
    about = "Benchmark gilmsg on 127.0.0.1: floor, latency, throughput, one-shot CLI, memory."
)]
struct Args {
    /// Smoke mode for CI: few samples, under a minute.
    #[arg(long)]
    pub short: bool,
    /// Where to write results.json, results.md and latency.svg.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Latency samples per scenario (default 2000, short: 200).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Messages per throughput run (default 20000, short: 2000).
    #[arg(long)]
    pub messages: Option<usize>,
    /// One-shot logger runs per scenario (default 20, short: 5).
    #[arg(long)]
    pub oneshot_runs: Option<usize>,
    /// Also run a memory soak of this length (e.g. 10m), after the other
    /// sections: acknowledged publishes paced to 80 % of the consumer's
    /// dedupe_capacity per second, RSS and dedupe state sampled every
    /// 10,000 messages (`--only soak` for the soak alone).
    #[arg(long, value_parser = common::parse_duration)]
    pub soak: Option<Duration>,
    /// The soak's consumer with this `dedupe_capacity` instead of the
    /// default (the RSS target is for the default).
    #[arg(long)]
    pub soak_dedupe_capacity: Option<usize>,

    /// The soak's consumer runs this `gilmsg-consumer` binary instead of the
    /// bench's own consumer role, so that its RSS is the shipped binary's
    /// (the bench's binary holds every tool and maps more of itself)
    #[arg(long, value_name = "PATH")]
    pub consumer_exe: Option<PathBuf>,
    /// Run only these sections (comma-separated; default: all, the soak
    /// only with `--soak`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Recipient counts for the latency runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3,10")]
    pub recipients: Vec<usize>,
    /// Where the publisher's socket loop runs in the latency and
    /// throughput runs, each measured in turn: `thread` (its own, the
    /// default of the library) and `runtime` (a task on the bench's
    /// current-thread runtime, `BusBuilder::run_on_current_runtime`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "thread,runtime"
    )]
    pub publisher_loops: Vec<PublisherLoop>,
    /// Skip the throughput runs.
    #[arg(long)]
    pub no_throughput: bool,
    /// In-flight windows the throughput runs try (the best one counts).
    #[arg(long, value_delimiter = ',', default_value = "32,128,512")]
    pub windows: Vec<usize>,
    /// Skip the one-shot logger runs.
    #[arg(long)]
    pub no_oneshot: bool,
    /// Python interop venv for the anchor (default: $GILMSG_PYTHON_PEERS).
    #[arg(long)]
    pub python_peers: Option<PathBuf>,
    /// Skip the AMQP and bridge runs (each starts a RabbitMQ node; see
    /// amqp.rs, bridge.rs).
    #[arg(long)]
    pub no_amqp: bool,
    /// fedora-messaging venv for the AMQP Python anchor (default:
    /// $GILMSG_FEDORA_MESSAGING).
    #[arg(long)]
    pub fedora_messaging: Option<PathBuf>,
    /// Venv holding the Python package gilmsg_rs (scripts/python-package.sh;
    /// default: $GILMSG_PYTHON_PACKAGE).
    #[arg(long)]
    pub python_package: Option<PathBuf>,
}

/// Where a direct bus's publisher runs its socket loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PublisherLoop {
    /// A thread of its own (the library's default).
    Thread,
    /// A task on the bench's current-thread runtime (its results under
    /// `latency_warm_publish_on_runtime` and `throughput_on_runtime`).
    Runtime,
}

/// A part of the run, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// The raw ZeroMQ round trip.
    Floor,
    /// Signature costs.
    Crypto,
    /// Warm latency of acknowledged publishes.
    Latency,
    /// Acknowledged messages per second.
    Throughput,
    /// One-shot gilmsg-logger through a relay.
    Oneshot,
    /// The Python anchor.
    Python,
    /// `gilmsg-firehose` forwarding to mosquitto, and its effect on bus
    /// latency (firehose.rs).
    Firehose,
    /// The memory soak (length from `--soak`, default 10 minutes).
    Soak,
    /// The AMQP runs, on a RabbitMQ node of their own (amqp.rs).
    Amqp,
    /// The Python package gilmsg_rs on the direct bus (bindings/python/bench.py).
    PythonPackage,
    /// `gilmsg-bridge` throughput and added latency, on a RabbitMQ node of
    /// their own (bridge.rs).
    Bridge,
}

impl Args {
    /// Whether `section` runs.
    fn runs(&self, section: Section) -> bool {
        if !self.only.is_empty() {
            return self.only.contains(&section);
        }
        match section {
            Section::Throughput => !self.no_throughput,
            Section::Oneshot => !self.no_oneshot,
            Section::Soak => self.soak.is_some(),
            Section::Amqp | Section::Bridge => !self.no_amqp,
            _ => true,
        }
    }
}

/// Entry point: runs the benchmark, or a role when re-executed by it.
fn main() -> std::process::ExitCode {
    if let Some(status) = roles::dispatch_reexec() {
        return status;
    }
    common::init_logging();
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|role| role == "__echo") {
        let words = argv.map(|s| s.to_string_lossy().into_owned()).collect();
        return common::report("gilmsg-bench echo", echo(words));
    }
    common::report("gilmsg-bench", run(Args::parse()))
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_BUS,
        message: format!("error: {}", message.into()),
    }
}

fn progress(text: impl AsRef<str>) {
    eprintln!("gilmsg-bench: {}", text.as_ref());
}

/// Latency summary in microseconds.
#[derive(Debug, Clone)]
struct Summary {
    samples: Vec<f64>,
}

impl Summary {
    fn new(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        Summary { samples }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.samples.len() - 1) as f64).round() as usize;
        self.samples[rank.min(self.samples.len() - 1)]
    }
    fn max(&self) -> f64 {
        self.samples.last().copied().unwrap_or(f64::NAN)
    }
    fn min(&self) -> f64 {
        self.samples.first().copied().unwrap_or(f64::NAN)
    }
    fn json(&self) -> Value {
        json!({"n": self.samples.len(), "p50_us": self.pct(50.0), "p90_us": self.pct(90.0),
               "p99_us": self.pct(99.0), "max_us": self.max()})
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A free loopback port (bound, read, released: a benchmark-only shortcut).
fn free_port() -> Result<u16, Failure> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port())
}

/// The whole run's results, keyed by section.
struct Report {
    json: BTreeMap<&'static str, Value>,
    curves: Vec<(String, Summary)>,
}

/// Runs the benchmark.
fn run(args: Args) -> Result<(), Failure> {
    let started = Instant::now();
    let samples = args.samples.unwrap_or(if args.short { 200 } else { 2000 });
    let messages = args
        .messages
        .unwrap_or(if args.short { 2000 } else { 20_000 });
    let oneshot_runs = args.oneshot_runs.unwrap_or(if args.short { 5 } else { 20 });
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let work = tempfile::Builder::new()
        .prefix("gilmsg-bench-")
        .tempdir()
        .map_err(|e| fail(e.to_string()))?;
    let ssldir = work.path().join("pki");
    let mut names = vec!["bench-pub".to_string()];
    names.extend((0..10).map(|i| format!("consumer-{i}")));
    names.push("bridge".into());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ed25519_pki(&ssldir, "bench CA", &names).map_err(fail)?;
    let mut report = Report {
        json: BTreeMap::new(),
        curves: Vec::new(),
    };
    report.json.insert("machine", machine());

    if args.runs(Section::Floor) {
        progress("floor: raw ZeroMQ round trip");
        let body_size = signed_body_size(&ssldir)?;
        let (floor, rate) = floor_zmq(&exe, samples, messages, body_size)?;
        progress(format!(
            "floor p50 {:.1} us; pipelined {:.0} round trips/s, CPU {:.1} us each",
            floor.pct(50.0),
            get(&rate, "/msgs_per_s"),
            get(&rate, "/cpu/total_us_per_msg"),
        ));
        report.json.insert(
            "floor_zmq_rtt",
            json!({"body_bytes": body_size, "latency": floor.json(), "rate": rate}),
        );
        report
            .curves
            .push(("raw ZeroMQ round trip".into(), floor.clone()));
        let mut fanout = serde_json::Map::new();
        for &k in args.recipients.iter().filter(|&&k| k > 1) {
            progress(format!(
                "floor: raw ZeroMQ fan-out round trip, {k} echo processes"
            ));
            let (summary, cpu) = floor_fanout(&exe, k, samples, body_size)?;
            progress(format!(
                "fan-out floor, {k} echoes: p50 {:.1} us, CPU {:.1} us each",
                summary.pct(50.0),
                get(&cpu, "/total_us_per_msg"),
            ));
            fanout.insert(
                format!("{k}_echoes"),
                json!({"latency": summary.json(), "cpu": cpu}),
            );
        }
        if !fanout.is_empty() {
            report
                .json
                .insert("floor_zmq_fanout", Value::Object(fanout));
        }
    }

    if args.runs(Section::Crypto) {
        progress("crypto: sign/verify per operation");
        report.json.insert(
            "crypto",
            crypto_costs(&ssldir, if args.short { 500 } else { 5000 })?,
        );
    }

    let runtime = common::runtime()?;
    // One set of results per publisher loop.
    let mut on_thread = DirectResults::default();
    let mut on_runtime = DirectResults::default();
    let mut memory = serde_json::Map::new();
    let python_package = args
        .python_package
        .clone()
        .or_else(|| std::env::var_os("GILMSG_PYTHON_PACKAGE").map(PathBuf::from))
        .filter(|_| args.runs(Section::PythonPackage));
    let mut package = serde_json::Map::new();
    let direct =
        args.runs(Section::Latency) || args.runs(Section::Throughput) || python_package.is_some();
    for &k in args.recipients.iter().filter(|_| direct) {
        let recipients: Vec<String> = (0..k).map(|i| format!("consumer-{i}")).collect();
        for &publisher_loop in &args.publisher_loops {
            progress(format!(
                "direct topology with {k} consumer process(es), the publisher's loop on {}",
                match publisher_loop {
                    PublisherLoop::Thread => "its own thread",
                    PublisherLoop::Runtime => "the caller's current-thread runtime",
                }
            ));
            let bus = DirectBus::start_with_loop(
                &exe,
                work.path(),
                k,
                "",
                python_package.is_some() && publisher_loop == PublisherLoop::Thread,
                (publisher_loop == PublisherLoop::Runtime).then_some(&runtime),
            )?;
            let results = match publisher_loop {
                PublisherLoop::Thread => &mut on_thread,
                PublisherLoop::Runtime => &mut on_runtime,
            };
            let curve = measure_direct(
                &bus,
                &recipients,
                &runtime,
                &args,
                (samples, messages),
                (&exe, &ssldir),
                results,
            )?;
            if let Some(summary) = curve {
                let label = match publisher_loop {
                    PublisherLoop::Thread => format!("publish, {k} recipient(s)"),
                    PublisherLoop::Runtime => format!("publish, {k} recipient(s), loop on runtime"),
                };
                report.curves.push((label, summary));
            }
            if publisher_loop != PublisherLoop::Thread {
                // Its loop runs on `runtime`: closed there, not inside the
                // next measurement's `block_on`.
                runtime.block_on(bus.bus.clone().close());
                continue;
            }
            if k != 3 && args.runs(Section::Throughput) {
                let consumer_peak = bus
                    .consumers
                    .iter()
                    .filter_map(|c| memory::kib(c.pid(), "VmHWM"))
                    .max();
                memory.insert(
                    format!("after_throughput_{k}_recipients"),
                    json!({
                        "consumer_peak_rss_kib": consumer_peak,
                        "publisher_peak_rss_kib": memory::kib(std::process::id(), "VmHWM"),
                    }),
                );
            }
            if let (Some(venv), true) = (&python_package, k == 1 || k == 3) {
                let result =
                    python_package_run(venv, &bus, &runtime, &recipients, samples, messages, &args)
                        .unwrap_or_else(|f| json!({"status": format!("failed: {}", f.message)}));
                progress(format!(
                    "python package (gilmsg_rs), {k} recipient(s): {}",
                    brief_package_result(&result)
                ));
                package.insert(format!("{k}_recipients"), result);
            }
        }
    }
    if !on_runtime.latency.is_empty() {
        report.json.insert(
            "latency_warm_publish_on_runtime",
            Value::Object(on_runtime.latency),
        );
    }
    if !on_runtime.throughput.is_empty() {
        report.json.insert(
            "throughput_on_runtime",
            Value::Object(on_runtime.throughput),
        );
    }
    report
        .json
        .insert("latency_warm_publish", Value::Object(on_thread.latency));
    report
        .json
        .insert("throughput", Value::Object(on_thread.throughput));
    report.json.insert("memory", Value::Object(memory));

    if args.runs(Section::Oneshot) {
        progress("one-shot gilmsg-logger through a relay");
        report
            .json
            .insert("oneshot_logger", oneshot(&exe, work.path(), oneshot_runs)?);
    }

    let python = args
        .python_peers
        .clone()
        .or_else(|| std::env::var_os("GILMSG_PYTHON_PEERS").map(PathBuf::from));
    let anchor = match python.filter(|_| args.runs(Section::Python)) {
        Some(venv) => {
            progress(
                "Python anchor: Python gilmsg-logger and gilmsg.publish on the same scenarios",
            );
            // Python runs take ~2 s each: 3 in short mode, at most 10 otherwise.
            let runs = if args.short { 3 } else { oneshot_runs.min(10) };
            let mut anchor =
                python_anchor::anchor(&exe, work.path(), runs, &venv, args.short)
                    .unwrap_or_else(|f| json!({"venv": venv.display().to_string(), "status": format!("failed: {}", f.message)}));
            let so_far = serde_json::to_value(&report.json).unwrap_or_default();
            python_anchor::add_ratios(&mut anchor, &so_far);
            anchor
        }
        None if !args.runs(Section::Python) => json!({"status": "skipped: not asked for"}),
        None => {
            json!({"status": "skipped: no Python venv (set GILMSG_PYTHON_PEERS or --python-peers)"})
        }
    };
    report.json.insert("python_anchor", anchor);
    if python_package.is_some() {
        let so_far = serde_json::to_value(&report.json).unwrap_or_default();
        report
            .json
            .insert("python_package", python_package_ratios(package, &so_far));
    }
    if args.runs(Section::Soak) {
        let length = args.soak.unwrap_or(Duration::from_secs(600));
        report.json.insert(
            "soak",
            soak(
                args.consumer_exe.as_deref().unwrap_or(&exe),
                work.path(),
                length,
                args.soak_dedupe_capacity,
                &args.out,
            )?,
        );
    }
    if args.runs(Section::Firehose) {
        let section = firehose::section(&exe, work.path(), samples, messages);
        report.json.insert("firehose", section);
    }
    if args.runs(Section::Amqp) {
        let (message, ack) = signed_sample(&ssldir)?;
        let sample = amqp::SignedSample::new(&message, &ack)?;
        // The issue's floor is the raw round trip plus the crypto floor:
        // this run's, or measured now for a run without that section.
        let crypto = match report.json.get("crypto") {
            Some(crypto) => crypto.clone(),
            None => {
                progress("crypto: sign/verify per operation (the AMQP floor's share)");
                crypto_costs(&ssldir, if args.short { 500 } else { 5000 })?
            }
        };
        let crypto_floor = amqp::CryptoFloor {
            sign_us: get(&crypto, "/ed25519/sign_raw_us"),
            verify_us: get(&crypto, "/ed25519/verify_raw_us"),
        };
        report.json.insert(
            "amqp",
            amqp::section(
                &exe,
                work.path(),
                &sample,
                crypto_floor,
                samples,
                messages,
                &args,
            ),
        );
    }
    if args.runs(Section::Bridge) {
        report.json.insert(
            "bridge",
            bridge::section(&exe, work.path(), &ssldir, samples, messages, args.short),
        );
    }
    report
        .json
        .insert("elapsed_s", json!(started.elapsed().as_secs()));
    let targets = targets::evaluate(&serde_json::to_value(&report.json).unwrap_or_default());
    report.json.insert("targets", targets);
    write_outputs(&args.out, &report)?;
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
    });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (zmq_major, zmq_minor, zmq_patch) = zmq::version();
    // Other processes' load at the start: on a shared machine it says how
    // much the absolute numbers of this run can be trusted.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    let command: Vec<String> = std::env::args().collect();
    json!({"cpu": cpu, "cores": cores, "load_average_1m_at_start": load, "command": command.join(" "), "kernel": kernel, "libzmq": format!("{zmq_major}.{zmq_minor}.{zmq_patch}"),
           "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
           "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)})
}

/// A typical signed message of the bench (the publisher's identity, the
/// latency loop's body) and its signed ACK by `consumer-0`, so that the
/// floors move the same bytes as an acknowledged publish.
fn signed_sample(
    ssldir: &Path,
) -> Result<(gilmsg_proto::Envelope, gilmsg_proto::Envelope), Failure> {
    let load = |name: &str| Identity::load(ssldir, name).map_err(|e| fail(e.to_string()));
    let (publisher, consumer) = (load("bench-pub")?, load("consumer-0")?);
    let message = signed_message(&publisher, "org.gilmsg.bench.dev.bench.latency", 1)?;
    let body =
        gilmsg_proto::ack::AckBody::for_message(&message).map_err(|e| fail(e.to_string()))?;
    let ack = gilmsg_proto::Draft {
        topic: "org.gilmsg.bench.dev.gilmsg.ack".into(),
        msg: body.to_msg(),
        msg_id: gilmsg_proto::envelope::new_msg_id(2026),
        i: 1,
        timestamp: 0,
        username: "bench".into(),
        wants_ack: false,
    }
    .build(Some(&consumer))
    .map_err(|e| fail(e.to_string()))?;
    Ok((message, ack))
}

/// A message of the latency loop's shape (`seq`, a 64-byte payload, wants
/// ACKs), signed by `signer` for `topic`, with a fresh `msg_id`.
fn signed_message(
    signer: &Identity,
    topic: &str,
    seq: usize,
) -> Result<gilmsg_proto::Envelope, Failure> {
    gilmsg_proto::Draft {
        topic: topic.into(),
        msg: json!({"seq": seq, "payload": "x".repeat(64)}),
        msg_id: gilmsg_proto::envelope::new_msg_id(2026),
        i: 1,
        timestamp: 0,
        username: "bench".into(),
        wants_ack: true,
    }
    .build(Some(signer))
    .map_err(|e| fail(e.to_string()))
}

/// The size of a typical signed body (ZeroMQ's second frame).
fn signed_body_size(ssldir: &Path) -> Result<usize, Failure> {
    let (message, _) = signed_sample(ssldir)?;
    Ok(message.encode().map_err(|e| fail(e.to_string()))?[1].len())
}

/// The raw ZeroMQ echo role: SUB connected to `in`, XPUB bound on `out`;
/// every message is sent straight back.
fn echo(args: Vec<String>) -> Result<(), Failure> {
    let (Some(inbound), Some(outbound)) = (args.first(), args.get(1)) else {
        return Err(Failure::usage("usage: __echo IN_ENDPOINT OUT_ENDPOINT"));
    };
    let ctx = zmq::Context::new();
    let sub = floor_socket(&ctx, zmq::SUB)?;
    sub.set_subscribe(b"").map_err(|e| fail(e.to_string()))?;
    sub.connect(inbound).map_err(|e| fail(e.to_string()))?;
    let xpub = floor_socket(&ctx, zmq::XPUB)?;
    xpub.bind(outbound).map_err(|e| fail(e.to_string()))?;
    // Ready once the bench's SUB has subscribed to our output.
    xpub.recv_bytes(0).map_err(|e| fail(e.to_string()))?;
    eprintln!("gilmsg-bench echo: ready");
    loop {
        let frames = sub.recv_multipart(0).map_err(|e| fail(e.to_string()))?;
        xpub.send_multipart(frames, 0)
            .map_err(|e| fail(e.to_string()))?;
    }
}

/// The raw ZeroMQ floors, against one echo process: the round trip, one
/// message at a time (`samples`), then the rate of `messages` pipelined
/// round trips (the transport's own cost per message, no crypto, no JSON),
/// with the CPU both processes spent per message.
fn floor_zmq(
    exe: &Path,
    samples: usize,
    messages: usize,
    body_size: usize,
) -> Result<(Summary, Value), Failure> {
    let echo = RawEchoes::start(exe, 1, body_size)?;
    echo.round_trips(samples / 10)?;
    let results = echo.round_trips(samples)?;
    let processes = echo.processes();
    let before = cpu::Snapshot::take(&processes);
    let started = Instant::now();
    pipelined_round_trips(&echo, messages, FLOOR_WINDOW)?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let cpu = before.per_message(&cpu::Snapshot::take(&processes), messages);
    let rate =
        json!({"window": FLOOR_WINDOW, "messages": messages, "msgs_per_s": rate, "cpu": cpu});
    Ok((Summary::new(results), rate))
}

/// The raw fan-out round trip: one message out to `k` echo processes (as
/// a publish goes out to `k` consumers), timed until all `k` echoes are
/// back (as the publisher waits for `k` ACKs), one at a time; and the CPU
/// each round trip took in all processes. No crypto, no JSON: what ZeroMQ
/// and `k` processes on these cores cost before any work is done.
fn floor_fanout(
    exe: &Path,
    k: usize,
    samples: usize,
    body_size: usize,
) -> Result<(Summary, Value), Failure> {
    let echoes = RawEchoes::start(exe, k, body_size)?;
    let processes = echoes.processes();
    echoes.round_trips(samples / 10)?;
    let before = cpu::Snapshot::take(&processes);
    let results = echoes.round_trips(samples)?;
    let cpu = before.per_message(&cpu::Snapshot::take(&processes), samples);
    Ok((Summary::new(results), cpu))
}

/// Raw ZeroMQ echo processes (the `__echo` role) and the bench's two
/// sockets to them: an XPUB out, to which every echo's SUB connects, and a
/// SUB back, connected to every echo's XPUB. What the floors measure.
struct RawEchoes {
    out: zmq::Socket,
    back: zmq::Socket,
    echoes: Vec<Proc>,
    topic: Vec<u8>,
    body: Vec<u8>,
    /// Dropped after the sockets (fields drop in order).
    _context: zmq::Context,
}

impl RawEchoes {
    /// Starts `k` echo processes and returns once each is subscribed both
    /// ways. Messages are `[topic, body]` with a body of `body_size` bytes.
    fn start(exe: &Path, k: usize, body_size: usize) -> Result<Self, Failure> {
        let context = zmq::Context::new();
        let out = floor_socket(&context, zmq::XPUB)?;
        // Every echo's subscription is the same (""): only a verbose XPUB
        // reports each.
        out.set_xpub_verbose(true)
            .map_err(|e| fail(e.to_string()))?;
        let port_out = free_port()?;
        out.bind(&format!("tcp://127.0.0.1:{port_out}"))
            .map_err(|e| fail(e.to_string()))?;
        let back = floor_socket(&context, zmq::SUB)?;
        back.set_subscribe(b"").map_err(|e| fail(e.to_string()))?;
        // A lost echo fails the run instead of hanging it.
        back.set_rcvtimeo(10_000).map_err(|e| fail(e.to_string()))?;
        let mut echoes = Vec::with_capacity(k);
        for i in 0..k {
            let port_back = free_port()?;
            let mut cmd = Command::new(exe);
            cmd.args([
                "__echo",
                &format!("tcp://127.0.0.1:{port_out}"),
                &format!("tcp://127.0.0.1:{port_back}"),
            ]);
            let name = if k == 1 {
                "echo".to_owned()
            } else {
                format!("echo-{i}")
            };
            echoes.push(Proc::spawn(name, cmd).map_err(|e| fail(e.to_string()))?);
            back.connect(&format!("tcp://127.0.0.1:{port_back}"))
                .map_err(|e| fail(e.to_string()))?;
        }
        // An echo that dies before subscribing fails the run, not hangs it.
        out.set_rcvtimeo(i32::try_from(READY.as_millis()).unwrap_or(i32::MAX))
            .map_err(|e| fail(e.to_string()))?;
        for got in 0..k {
            out.recv_bytes(0)
                .map_err(|e| fail(format!("raw floor: subscription {got} of {k}: {e}")))?;
        }
        for echo in &echoes {
            echo.wait_stderr("ready", READY).map_err(fail)?;
        }
        Ok(RawEchoes {
            out,
            back,
            echoes,
            topic: b"org.gilmsg.bench.dev.bench.latency".to_vec(),
            body: vec![b'x'; body_size],
            _context: context,
        })
    }

    /// Sends one message.
    fn send(&self) -> Result<(), Failure> {
        self.out
            .send(&self.topic[..], zmq::SNDMORE)
            .and_then(|()| self.out.send(&self.body[..], 0))
            .map_err(|e| fail(e.to_string()))
    }

    /// Receives one echo, waiting for it (10 s at most).
    fn receive(&self, flags: i32) -> zmq::Result<Vec<Vec<u8>>> {
        self.back.recv_multipart(flags)
    }

    /// One message out, every echo of it back: how long it took, in µs.
    fn round_trip(&self) -> Result<f64, Failure> {
        let start = Instant::now();
        self.send()?;
        for got in 0..self.echoes.len() {
            self.receive(0).map_err(|e| {
                fail(format!(
                    "raw floor: echo {got} of {}: {e}",
                    self.echoes.len()
                ))
            })?;
        }
        Ok(micros(start.elapsed()))
    }

    /// `n` round trips, one after the other: how long each took, in µs.
    fn round_trips(&self, n: usize) -> Result<Vec<f64>, Failure> {
        (0..n).map(|_| self.round_trip()).collect()
    }

    /// This process and the echoes, labelled for [`cpu::Snapshot`].
    fn processes(&self) -> Vec<(String, u32)> {
        let mut processes = vec![("bench".to_owned(), std::process::id())];
        processes.extend(self.echoes.iter().map(|e| (e.name().to_owned(), e.pid())));
        processes
    }
}

/// A socket of the raw floor, with the high-water mark gilmsg's sockets
/// get by default (`high_water_mark`, 10,000). With libzmq's default
/// (1,000), the pipelined run lost 3-21 of 20,000 echoes in 4 of 5 runs
/// with only [`FLOOR_WINDOW`] in flight: as far as we can tell, a PUB
/// hears how far its peer has read only every half high-water mark, and
/// reads that news at most about once a millisecond while it sends, so at
/// ~380,000 msgs/s it counts a pipe as full long before it is, and drops.
fn floor_socket(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket, Failure> {
    let socket = ctx.socket(kind).map_err(|e| fail(e.to_string()))?;
    // Linger 0: a subscription still queued for an echo that never came up
    // must not hold the context's drop (libzmq's default is to wait forever).
    socket
        .set_sndhwm(FLOOR_HIGH_WATER_MARK)
        .and_then(|()| socket.set_rcvhwm(FLOOR_HIGH_WATER_MARK))
        .and_then(|()| socket.set_linger(0))
        .map_err(|e| fail(e.to_string()))?;
    Ok(socket)
}

/// gilmsg's default `high_water_mark`.
const FLOOR_HIGH_WATER_MARK: i32 = 10_000;

/// Round trips in flight at once in the raw rate floor: as many as the
/// acknowledged throughput run's middle window, well under the sockets'
/// high-water mark ([`floor_socket`]), so nothing is dropped.
const FLOOR_WINDOW: usize = 128;

/// Sends `messages` messages to one echo, at most `window` ahead of the
/// echoes read back; fails if an echo is missing for 10 s (a lost message
/// would otherwise hang the bench).
fn pipelined_round_trips(echo: &RawEchoes, messages: usize, window: usize) -> Result<(), Failure> {
    let (mut sent, mut echoed) = (0, 0);
    while echoed < messages {
        while sent < messages && sent - echoed < window {
            echo.send()?;
            sent += 1;
        }
        echo.receive(0)
            .map_err(|e| fail(format!("raw rate floor: echo {echoed} of {messages}: {e}")))?;
        echoed += 1;
        while echoed < sent {
            match echo.receive(zmq::DONTWAIT) {
                Ok(_) => echoed += 1,
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }
    Ok(())
}

/// Publishes before the latency samples that count (connections warm,
/// caches full).
fn latency_warmup(samples: usize) -> usize {
    (samples / 10).max(20)
}

/// What each signature operation costs: ring's Ed25519 primitives alone
/// (the floors of `targets.rs`: what any implementation must pay), and the
/// same operations as gilmsg calls them (sign: with the base64 of the
/// signature; verify: through the trust store, certificate cache warm or
/// first, so with chain validation).
fn crypto_costs(ssldir: &Path, iterations: usize) -> Result<Value, Failure> {
    use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
    let identity = Identity::load(ssldir, "bench-pub").map_err(|e| fail(e.to_string()))?;
    let store = TrustStore::load(&ssldir.join("ca.crt"), Some(&ssldir.join("crl.pem")))
        .map_err(|e| fail(e.to_string()))?;
    let canonical = br#"{"crypto":"ed25519","gilmsg_version":"gilmsg-rs/0.1.0","i":1,"msg":{"payload":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","seq":1},"msg_id":"2026-00000000-0000-4000-8000-000000000000","timestamp":0,"topic":"org.gilmsg.bench.dev.bench.latency","username":"bench"}"#;
    // The cost of one operation: the median over batches of the CPU time
    // this thread ran per operation (wall time when the kernel does not
    // say), so the floors count the work, not the moments another process
    // held the core; the median, so one interrupted batch does not decide.
    let batches = 10;
    let per_batch = (iterations / batches).max(1);
    let per_op = |f: &mut dyn FnMut() -> Result<(), Failure>| -> Result<f64, Failure> {
        let mut costs = Vec::with_capacity(batches);
        for _ in 0..batches {
            let (cpu, wall) = (cpu::thread_ns(), Instant::now());
            for _ in 0..per_batch {
                f()?;
            }
            let us = match (cpu, cpu::thread_ns()) {
                (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3,
                _ => micros(wall.elapsed()),
            };
            costs.push(us / per_batch as f64);
        }
        Ok(Summary::new(costs).pct(50.0))
    };

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| fail(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| fail(e.to_string()))?;
    let raw_signature = pair.sign(canonical);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    let sign_raw = per_op(&mut || {
        std::hint::black_box(pair.sign(std::hint::black_box(canonical)));
        Ok(())
    })?;
    // V is the verifier gilmsg uses (ed25519-dalek); ring's is kept for
    // comparison with earlier runs.
    let dalek_key = ed25519_dalek::VerifyingKey::try_from(pair.public_key().as_ref())
        .map_err(|e| fail(e.to_string()))?;
    let dalek_signature = ed25519_dalek::Signature::from_slice(raw_signature.as_ref())
        .map_err(|e| fail(e.to_string()))?;
    let verify_raw = per_op(&mut || {
        ed25519_dalek::Verifier::verify(
            &dalek_key,
            std::hint::black_box(canonical),
            &dalek_signature,
        )
        .map_err(|_| fail("ed25519-dalek refused ring's signature"))
    })?;
    let verify_raw_ring = per_op(&mut || {
        public
            .verify(std::hint::black_box(canonical), raw_signature.as_ref())
            .map_err(|_| fail("ring refused its own signature"))
    })?;

    let mut signature = String::new();
    let sign = per_op(&mut || {
        signature = identity.sign(canonical).map_err(|e| fail(e.to_string()))?;
        Ok(())
    })?;
    let mut verify_once = || {
        store
            .verify(
                identity.scheme(),
                identity.certificate(),
                &signature,
                canonical,
            )
            .map(|_| ())
            .map_err(|e| fail(e.to_string()))
    };
    // First verification validates the certificate chain; later ones hit the cache.
    let start = Instant::now();
    verify_once()?;
    let cold = micros(start.elapsed());
    let verify = per_op(&mut verify_once)?;
    // A consumer's burst: BATCH signatures through the trust store at once.
    const BATCH: usize = 16;
    let item = gilmsg_proto::SignedItem {
        scheme: identity.scheme(),
        certificate: identity.certificate(),
        signature: &signature,
        canonical,
    };
    let items = [item; BATCH];
    let verify_batch = per_op(&mut || {
        store
            .verify_many(&items)
            .into_iter()
            .try_for_each(|verdict| verdict.map(|_| ()).map_err(|e| fail(e.to_string())))
    })? / BATCH as f64;
    Ok(json!({"ed25519": {
        "sign_raw_us": sign_raw,
        "verify_raw_us": verify_raw,
        "verify_raw_ring_us": verify_raw_ring,
        "verify_batch_us": verify_batch,
        "verify_batch_size": BATCH,
        "sign_us": sign,
        "verify_us_warm": verify,
        "verify_us_first_with_chain": cold,
        "iterations": iterations,
    }}))
}

/// Publisher in-process, k consumer processes, direct topology: the publisher
/// binds its endpoint, each consumer binds its ACK endpoint.
struct DirectBus {
    bus: gilmsg::Bus,
    consumers: Vec<Proc>,
    /// The config a second publisher binding `bench-py` uses.
    py_config: PathBuf,
}

impl Drop for DirectBus {
    /// Consumers get SIGTERM (all at once) and a while to exit cleanly, so
    /// that one run under a profiler (`valgrind --trace-children=yes`)
    /// writes its profile; killed only if they do not.
    fn drop(&mut self) {
        for consumer in &self.consumers {
            let _ = consumer.signal(nix::sys::signal::Signal::SIGTERM);
        }
        for consumer in &mut self.consumers {
            consumer.terminate(Duration::from_secs(10));
        }
    }
}

impl DirectBus {
    /// The publisher (this process) and each consumer, labelled for
    /// [`cpu::Snapshot`].
    fn processes(&self) -> Vec<(String, u32)> {
        let mut processes = vec![("publisher".to_owned(), std::process::id())];
        for (i, consumer) in self.consumers.iter().enumerate() {
            processes.push((format!("consumer-{i}"), consumer.pid()));
        }
        processes
    }

    /// The config file of `name` on the bus of `k` consumers in `dir`.
    fn config_path(dir: &Path, k: usize, name: &str) -> PathBuf {
        dir.join(format!("direct-{k}-{name}.toml"))
    }

    /// `extra` goes into every config file as is (TOML lines).
    /// `with_py`: an endpoint `bench-py` for a `gilmsg_rs` publisher
    /// (bench.py), which the consumers connect to from the start.
    fn start(
        exe: &Path,
        dir: &Path,
        k: usize,
        extra: &str,
        with_py: bool,
    ) -> Result<DirectBus, Failure> {
        DirectBus::start_with_loop(exe, dir, k, extra, with_py, None)
    }

    /// [`DirectBus::start`], the publisher's socket loop a task on
    /// `on_runtime` if given (`BusBuilder::run_on_current_runtime`).
    fn start_with_loop(
        exe: &Path,
        dir: &Path,
        k: usize,
        extra: &str,
        with_py: bool,
        on_runtime: Option<&tokio::runtime::Runtime>,
    ) -> Result<DirectBus, Failure> {
        let mut endpoints = vec![(
            "bench-pub".to_string(),
            format!("tcp://127.0.0.1:{}", free_port()?),
        )];
        if with_py {
            endpoints.push((
                "bench-py".to_string(),
                format!("tcp://127.0.0.1:{}", free_port()?),
            ));
        }
        for i in 0..k {
            endpoints.push((
                format!("consumer-{i}"),
                format!("tcp://127.0.0.1:{}", free_port()?),
            ));
        }
        let write = |name: &str| -> Result<PathBuf, Failure> {
            let mut text = format!(
                "topic_prefix = \"org.gilmsg.bench\"\nenvironment = \"dev\"\nssldir = \"pki\"\nname = \"{name}\"\nack_timeout = \"10s\"\n{extra}\n[endpoints]\n"
            );
            for (n, e) in &endpoints {
                let _ = writeln!(text, "\"{n}\" = [\"{e}\"]");
            }
            let path = DirectBus::config_path(dir, k, name);
            std::fs::write(&path, text).map_err(|e| fail(e.to_string()))?;
            Ok(path)
        };
        let pub_config = write("bench-pub")?;
        let config = gilmsg::Config::from_path(&pub_config).map_err(Failure::from)?;
        let _inside = on_runtime.map(tokio::runtime::Runtime::enter);
        let bus = gilmsg::Bus::builder(&config)
            .modname("bench")
            .certname("bench-pub")
            .active(false)
            .run_on_current_runtime(on_runtime.is_some())
            .build()?;
        let mut planned = Vec::new();
        for i in 0..k {
            let name = format!("consumer-{i}");
            let path = write(&name)?;
            planned.push((name.clone(), name, path, DIRECT_CONSUMER_ARGS));
        }
        let consumers = start_consumers(planned, exe)?;
        let py_config = write("bench-py")?;
        Ok(DirectBus {
            bus,
            consumers,
            py_config,
        })
    }

    async fn latency(&self, recipients: &[String], samples: usize) -> Result<Summary, Failure> {
        publish_latency(&self.bus, "latency", recipients, samples).await
    }

    /// Tries a few in-flight windows; returns the best rate, its window,
    /// the CPU it took and what the publisher counted meanwhile (its
    /// `publish.*` and `ack.*` counters that moved: re-sends, ACKs).
    async fn throughput(
        &self,
        recipients: &[String],
        messages: usize,
        windows: &[usize],
    ) -> Result<(f64, usize, Value, Value), Failure> {
        let mut best = (0.0, 0, Value::Null, Value::Null);
        let processes = self.processes();
        for &window in windows {
            // See QUIET_BEFORE_WINDOW.
            tokio::time::sleep(QUIET_BEFORE_WINDOW).await;
            let before = cpu::Snapshot::take(&processes);
            let counted = self.bus.stats();
            let rate = self.run_window(recipients, messages, window).await?;
            let cpu = before.per_message(&cpu::Snapshot::take(&processes), messages);
            let counters: serde_json::Map<String, Value> = self
                .bus
                .stats()
                .counters
                .into_iter()
                .filter(|(name, _)| name.starts_with("publish.") || name.starts_with("ack."))
                .map(|(name, after)| {
                    let moved = after.saturating_sub(counted.get(&name));
                    (name, moved)
                })
                .filter(|(_, moved)| *moved > 0)
                .map(|(name, moved)| (name, Value::from(moved)))
                .collect();
            progress(format!(
                "  window {window}: {rate:.0} msg/s, CPU {:.1} us/msg, {} re-sent",
                get(&cpu, "/total_us_per_msg"),
                counters.get("publish.resent").unwrap_or(&Value::from(0))
            ));
            if rate > best.0 {
                best = (rate, window, cpu, Value::Object(counters));
            }
        }
        Ok(best)
    }

    /// Plain publishes (no recipients), one at a time: the caller signs,
    /// hands the message to the socket thread, which sends it and answers
    /// back. Less the signature, what is left is the two thread hand-offs
    /// an acknowledged publish adds to the raw round trip (and one send).
    async fn plain_latency(&self, samples: usize) -> Result<Summary, Failure> {
        let warmup = latency_warmup(samples);
        let mut results = Vec::with_capacity(samples);
        for i in 0..(samples + warmup) {
            let start = Instant::now();
            self.bus
                .send("plain", json!({"seq": i, "payload": "x".repeat(64)}))
                .await?;
            if i >= warmup {
                results.push(micros(start.elapsed()));
            }
        }
        Ok(Summary::new(results))
    }

    async fn run_window(
        &self,
        recipients: &[String],
        messages: usize,
        window: usize,
    ) -> Result<f64, Failure> {
        publish_window(&self.bus, "throughput", recipients, messages, window).await
    }
}

/// How the direct topology's consumers run: no output, the bench's topics.
const DIRECT_CONSUMER_ARGS: &[&str] = &["--quiet", "--topic", "org.gilmsg.bench.dev.bench."];
/// Consumers that only ACK: printing would measure the terminal.
const QUIET: &[&str] = &["--quiet"];

/// Starts consumers `(process name, certname, config, extra args)` as
/// roles of `exe`, all at once, then waits for each to be ready.
fn start_consumers<'a>(
    planned: impl IntoIterator<Item = (String, String, PathBuf, &'a [&'a str])>,
    exe: &Path,
) -> Result<Vec<Proc>, Failure> {
    let consumers = planned
        .into_iter()
        .map(|(name, certname, config, args)| {
            roles::spawn_consumer(&name, exe, &config, &certname, args)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    for consumer in &consumers {
        roles::wait_consumer_ready(consumer, READY).map_err(fail)?;
    }
    Ok(consumers)
}

/// Relay topology for the one-shot logger: a relay and `consumers` quiet
/// consumers (ACKs via the relay).
fn relay_bus(
    exe: &Path,
    dir: &Path,
    consumers: usize,
) -> Result<(Proc, Vec<Proc>, PathBuf), Failure> {
    let roles::LoopbackRelay {
        proc: relay,
        inbound,
        outbound,
    } = roles::spawn_relay("relay", exe, READY).map_err(fail)?;
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "topic_prefix = \"org.gilmsg.bench\"\nenvironment = \"dev\"\nssldir = \"pki\"\nactive = true\nrelay_inbound = [\"{inbound}\"]\nack_timeout = \"10s\"\n\n[endpoints]\nrelay_outbound = [\"{outbound}\"]\n"
        ),
    )
    .map_err(|e| fail(e.to_string()))?;
    let procs = start_consumers(
        (0..consumers).map(|i| {
            let name = format!("consumer-{i}");
            (name.clone(), name, config.clone(), QUIET)
        }),
        exe,
    )?;
    Ok((relay, procs, config))
}

fn oneshot(exe: &Path, dir: &Path, runs: usize) -> Result<Value, Failure> {
    let logger = exe
        .parent()
        .map(|p| p.join("gilmsg-logger"))
        .filter(|p| p.exists());
    let Some(logger) = logger else {
        return Ok(json!({"status": "skipped: gilmsg-logger is not built next to gilmsg-bench"}));
    };
    let (_relay, _consumers, config) = relay_bus(exe, dir, 3)?;
    let mut out = serde_json::Map::new();
    for k in [1usize, 3] {
        let recipients: Vec<String> = (0..k).map(|i| format!("consumer-{i}")).collect();
        let mut times = Vec::new();
        for _ in 0..runs + 1 {
            let start = Instant::now();
            let status = Command::new(&logger)
                .arg("--config")
                .arg(&config)
                .args([
                    "--certname",
                    "bench-pub",
                    "--message",
                    "one-shot",
                    "--ack-timeout",
                    "10s",
                    "--recipients",
                ])
                .args(&recipients)
                .status()
                .map_err(|e| fail(e.to_string()))?;
            if !status.success() {
                return Err(fail(format!("gilmsg-logger failed: {status}")));
            }
            times.push(micros(start.elapsed()));
        }
        times.remove(0); // the first run pays for page cache and relay warm-up
        let summary = Summary::new(times);
        progress(format!(
            "one-shot logger, {k} recipient(s): p50 {:.1} ms",
            summary.pct(50.0) / 1000.0
        ));
        out.insert(format!("{k}_recipients"), summary.json());
    }
    Ok(Value::Object(out))
}

/// Acknowledged messages between two samples of the soak.
const SOAK_STEP: usize = 10_000;

/// A consumer refuses the rest of a second's messages from one signer once
/// more than its `dedupe_capacity` of them are stamped within that second
/// (the replay floor: timestamps are whole seconds; `docs/security.md`).
/// The publisher then times out, by design. At the default capacity that is
/// ~32,000 msgs/s from one signer, which this machine's throughput run just
/// stays under and a faster one would not. So each throughput window (fewer
/// messages than the capacity, 20,000 by default) starts after a second
/// without publishes, when everything the consumer could evict is stamped
/// in an earlier second than anything the window sends.
const QUIET_BEFORE_WINDOW: Duration = Duration::from_millis(1100);

/// The soak's pace, whose RSS target is for the default capacity: it sends
/// in chunks of a tenth of its consumer's `dedupe_capacity`, each starting
/// no sooner than a chunk's time at 80 % of the capacity per second after
/// the one before (time lost is not made up in a burst). Any one second
/// then holds at most 90 % of the capacity (the rate, plus one chunk across
/// the second's edge), and the consumer's replay floor stays in an earlier
/// second than what it receives ([`QUIET_BEFORE_WINDOW`] says why).
struct SoakPace {
    /// When the next chunk may start.
    next: Instant,
    chunk: usize,
    /// How long a chunk takes at the pace.
    chunk_time: Duration,
}

impl SoakPace {
    fn new(dedupe_capacity: usize) -> Self {
        let capacity = dedupe_capacity.max(10);
        let chunk = (capacity / 10).min(SOAK_STEP);
        SoakPace {
            next: Instant::now(),
            chunk,
            chunk_time: Duration::from_secs_f64(chunk as f64 / (0.8 * capacity as f64)),
        }
    }

    /// Sends `n` messages through `send`, a chunk at a time, each chunk
    /// waiting for its turn.
    fn send(
        &mut self,
        n: usize,
        mut send: impl FnMut(usize) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut left = n;
        while left > 0 {
            let chunk = left.min(self.chunk);
            let now = Instant::now();
            if let Some(wait) = self.next.checked_duration_since(now) {
                std::thread::sleep(wait);
            }
            let started = self.next.max(now);
            self.next = started + self.chunk_time.mul_f64(chunk as f64 / self.chunk as f64);
            send(chunk)?;
            left -= chunk;
        }
        Ok(())
    }
}

/// The memory soak: one consumer with the default configuration,
/// acknowledged publishes (window 128, paced by [`SoakPace`]) for `length`, a
/// sample every [`SOAK_STEP`] messages. Writes `soak.json` (every sample)
/// and returns the summary: the consumer's steady state is the samples
/// after warm-up (once its dedupe cache is full, which takes its capacity
/// in messages), reported as their median (so one allocator spike does not
/// decide it) and their maximum, beside the peak (VmHWM) of the whole run.
fn soak(
    exe: &Path,
    dir: &Path,
    length: Duration,
    dedupe_capacity: Option<usize>,
    out: &Path,
) -> Result<Value, Failure> {
    progress(format!("soak: {} s, 1 consumer", length.as_secs()));
    let runtime = common::runtime()?;
    let extra = match dedupe_capacity {
        Some(n) => format!("dedupe_capacity = {n}\n"),
        None => String::new(),
    };
    let bus = DirectBus::start(exe, dir, 1, &extra, false)?;
    let recipients = vec!["consumer-0".to_string()];
    let consumer = &bus.consumers[0];
    let consumer_rss_at_start = memory::kib(consumer.pid(), "VmRSS");
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut sent = 0usize;
    let mut pace =
        SoakPace::new(dedupe_capacity.unwrap_or(gilmsg::Config::default().dedupe_capacity));
    while start.elapsed() < length {
        let step_started = Instant::now();
        pace.send(SOAK_STEP, |n| {
            runtime
                .block_on(bus.run_window(&recipients, n, 128))
                .map(|_| ())
        })?;
        let rate = SOAK_STEP as f64 / step_started.elapsed().as_secs_f64();
        sent += SOAK_STEP;
        let _ = consumer.signal(nix::sys::signal::Signal::SIGUSR1);
        let stats = consumer
            .wait_stderr("gilmsg-consumer: stats", Duration::from_secs(5))
            .unwrap_or_default();
        let row = json!({
            "t_s": start.elapsed().as_secs(),
            "sent": sent,
            "rate": rate,
            "consumer_rss_kib": memory::kib(consumer.pid(), "VmRSS"),
            // RSS split: what the consumer allocated (heap, stacks) and the
            // pages of its executable and libraries (the bench's own
            // binary, larger than `gilmsg-consumer`; with `fedmsg-x509`,
            // libssl and libcrypto too).
            "consumer_rss_anon_kib": memory::kib(consumer.pid(), "RssAnon"),
            "consumer_rss_file_kib": memory::kib(consumer.pid(), "RssFile"),
            "publisher_rss_kib": memory::kib(std::process::id(), "VmRSS"),
            "consumer_dedupe_entries": field(&stats, "dedupe.entries").and_then(|v| v.parse::<u64>().ok()),
            "consumer_dedupe_evicted": field(&stats, "dedupe.evicted").and_then(|v| v.parse::<u64>().ok()),
            "publisher_counters": bus.bus.stats().counters,
        });
        progress(format!("soak {}", row));
        rows.push(row);
    }
    std::fs::create_dir_all(out).map_err(|e| fail(e.to_string()))?;
    let path = out.join("soak.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&rows).unwrap_or_default(),
    )
    .map_err(|e| fail(e.to_string()))?;
    progress(format!("wrote {}", path.display()));
    // Warm-up ends once the dedupe cache has filled (it starts evicting):
    // from then on the consumer holds all it will hold. Without eviction
    // (a soak too short to fill the cache), the second half of the samples.
    let warm = rows
        .iter()
        .position(|r| r.get("consumer_dedupe_evicted").and_then(Value::as_u64) > Some(0))
        .unwrap_or(rows.len() / 2);
    let steady = |key: &str| {
        let values: Vec<f64> = rows[warm..]
            .iter()
            .filter_map(|r| r.get(key).and_then(Value::as_f64))
            .collect();
        Summary::new(values)
    };
    Ok(json!({
        "length_s": start.elapsed().as_secs(),
        "dedupe_capacity": dedupe_capacity,
        "consumer_exe": exe.display().to_string(),
        "messages": sent,
        "samples": rows.len(),
        "msgs_per_s": sent as f64 / start.elapsed().as_secs_f64(),
        "consumer_rss_kib_at_start": consumer_rss_at_start,
        "steady_from_s": rows.get(warm).and_then(|r| r.get("t_s")).cloned(),
        "steady_samples": rows.len().saturating_sub(warm),
        "consumer_steady_rss_kib": steady("consumer_rss_kib").pct(50.0),
        "consumer_steady_max_rss_kib": steady("consumer_rss_kib").max(),
        "consumer_steady_rss_anon_kib": steady("consumer_rss_anon_kib").pct(50.0),
        "consumer_steady_rss_file_kib": steady("consumer_rss_file_kib").pct(50.0),
        "consumer_peak_rss_kib": memory::kib(consumer.pid(), "VmHWM"),
        "publisher_steady_rss_kib": steady("publisher_rss_kib").pct(50.0),
        "consumer_dedupe_entries": rows.last().and_then(|r| r.get("consumer_dedupe_entries")).cloned(),
        "consumer_dedupe_evicted": rows.last().and_then(|r| r.get("consumer_dedupe_evicted")).cloned(),
    }))
}

fn write_outputs(out: &Path, report: &Report) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    let json_text = serde_json::to_string_pretty(&report.json).unwrap_or_default();
    std::fs::write(out.join("results.json"), &json_text).map_err(|e| fail(e.to_string()))?;
    let md = markdown(report);
    std::fs::write(out.join("results.md"), &md).map_err(|e| fail(e.to_string()))?;
    std::fs::write(out.join("latency.svg"), svg(&report.curves))
        .map_err(|e| fail(e.to_string()))?;
    println!("{md}");
    progress(format!(
        "wrote {}/results.json, results.md, latency.svg",
        out.display()
    ));
    Ok(())
}

fn get(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn markdown(report: &Report) -> String {
    let j = serde_json::to_value(&report.json).unwrap_or_default();
    let floor = get(&j, "/floor_zmq_rtt/latency/p50_us");
    let mut md = String::new();
    let machine = |key: &str| {
        j.pointer(&format!("/machine/{key}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let _ = writeln!(
        md,
        "`{}`: {} s, {} cores ({}), libzmq {}, load average {} at the start.\n",
        machine("command").as_str().unwrap_or("?"),
        j.get("elapsed_s").and_then(Value::as_u64).unwrap_or(0),
        machine("cores"),
        machine("cpu").as_str().unwrap_or("?"),
        machine("libzmq").as_str().unwrap_or("?"),
        machine("load_average_1m_at_start"),
    );
    // A run of other sections only (`--only amqp`) prints no ZeroMQ tables.
    let zeromq_ran = [
        "floor_zmq_rtt",
        "latency_warm_publish",
        "throughput",
        "crypto",
        "oneshot_logger",
        "soak",
    ]
    .iter()
    .any(|k| {
        j.get(k)
            .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
    });
    if zeromq_ran {
        zeromq_tables(&j, floor, &mut md);
        md.push_str(&targets::markdown(&j));
    }
    md.push_str(&python_anchor::markdown(&j));
    if let Some(Value::Object(package)) = j.get("python_package") {
        let _ = writeln!(
            md,
            "\n| Python package gilmsg_rs | p50 | Rust library p50 (same bus, in blocks of 50 interleaved with the Python ones) | ratio | median of the block ratios | Python gilmsg p50 / ours | asyncio msg/s |\n|---|---|---|---|---|---|---|"
        );
        for k in ["1_recipients", "3_recipients"] {
            let Some(v) = package.get(k) else { continue };
            let x = |path: &str| v.pointer(path).and_then(Value::as_f64);
            let f =
                |o: Option<f64>, digits: usize| o.map_or("–".into(), |v| format!("{v:.digits$}"));
            let _ = writeln!(
                md,
                "| {k} | {} us | {} us | {}× | {}× | {}× | {} |",
                f(x("/p50_us"), 0),
                f(x("/rust_p50_us"), 0),
                f(x("/ratio_over_rust_p50"), 2),
                f(x("/median_of_block_ratios"), 2),
                f(x("/python_gilmsg_p50_over_ours"), 0),
                f(x("/msgs_per_s"), 0),
            );
        }
    }
    if let Some(section) = j.get("firehose") {
        md.push_str(&firehose::markdown(section));
    }
    if let Some(section) = j.get("amqp") {
        md.push_str(&amqp::markdown(section));
    }
    if let Some(section) = j.get("bridge") {
        md.push_str(&bridge::markdown(section));
    }
    md
}

/// The ZeroMQ tables: latency, throughput, CPU, crypto, memory, soak.
fn zeromq_tables(j: &Value, floor: f64, md: &mut String) {
    let _ = writeln!(
        md,
        "| measure | p50 | p90 | p99 | max | vs floor (p50) |\n|---|---|---|---|---|---|"
    );
    // Sections a run left out (`--only`) print no rows.
    let row = |md: &mut String, name: &str, base: &str| {
        let p50 = get(j, &format!("{base}/p50_us"));
        if p50.is_nan() {
            return;
        }
        let _ = writeln!(
            md,
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.2}× |",
            p50,
            get(j, &format!("{base}/p90_us")),
            get(j, &format!("{base}/p99_us")),
            get(j, &format!("{base}/max_us")),
            p50 / floor
        );
    };
    row(
        md,
        "raw ZeroMQ round trip (floor)",
        "/floor_zmq_rtt/latency",
    );
    // By k: "10_echoes" sorts before "3_echoes" as text.
    let mut fanouts: Vec<(usize, &String)> = j
        .get("floor_zmq_fanout")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|o| o.keys())
        .map(|key| {
            let k = key
                .trim_end_matches("_echoes")
                .parse()
                .unwrap_or(usize::MAX);
            (k, key)
        })
        .collect();
    fanouts.sort();
    for (k, key) in fanouts {
        row(
            md,
            &format!("raw ZeroMQ fan-out round trip, {k} echo processes"),
            &format!("/floor_zmq_fanout/{key}/latency"),
        );
    }
    for k in [1, 3, 10] {
        row(
            md,
            &format!("warm publish, {k} recipient(s)"),
            &format!("/latency_warm_publish/{k}_recipients"),
        );
    }
    row(
        md,
        "plain publish, no recipients (sign, hand-off to the socket thread, send, answer back)",
        "/latency_warm_publish/plain_publish",
    );
    for k in [1, 3] {
        row(
            md,
            &format!("one-shot gilmsg-logger, {k} recipient(s)"),
            &format!("/oneshot_logger/{k}_recipients"),
        );
    }
    let _ = writeln!(
        md,
        "\n| throughput | msgs/s | window | messages | re-sent | re-sends deferred | ACK messages received |\n|---|---|---|---|---|---|---|"
    );
    for k in [1, 10] {
        let base = format!("/throughput/{k}_recipients");
        if get(j, &format!("{base}/msgs_per_s")).is_nan() {
            continue;
        }
        let counter = |name: &str| {
            j.pointer(&format!("{base}/publisher_counters"))
                .map(|c| c.get(name).and_then(Value::as_u64).unwrap_or(0))
                .map_or_else(|| "–".to_owned(), |n| n.to_string())
        };
        let _ = writeln!(
            md,
            "| {k} recipient(s) | {:.0} | {} | {} | {} | {} | {} |",
            get(j, &format!("{base}/msgs_per_s")),
            get(j, &format!("{base}/window")),
            get(j, &format!("{base}/messages")),
            counter("publish.resent"),
            counter("publish.resend_deferred"),
            counter("ack.received"),
        );
    }
    let _ = writeln!(
        md,
        "\n| CPU per acknowledged publish (µs, user + kernel, from /proc/*/task/*/schedstat; threads under 0.1 µs left out) | total | by process: thread |\n|---|---|---|"
    );
    let scenarios = [1, 3, 10]
        .map(|k| {
            (
                format!("latency run, {k} recipient(s), one in flight"),
                format!("/latency_warm_publish/{k}_recipients/cpu"),
            )
        })
        .into_iter()
        .chain([1, 10].map(|k| {
            (
                format!("throughput run, {k} recipient(s), best window"),
                format!("/throughput/{k}_recipients/cpu"),
            )
        }));
    for (label, pointer) in scenarios {
        let Some(cpu) = j.pointer(&pointer).filter(|c| !c.is_null()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {label} | {:.1} | {} |",
            get(cpu, "/total_us_per_msg"),
            cpu_by_thread(cpu)
        );
    }
    let _ = writeln!(
        md,
        "\n| crypto (Ed25519) | µs/op |\n|---|---|\n| sign, ring alone (S) | {:.1} |\n| verify, ed25519-dalek alone (V) | {:.1} |\n| verify, ring alone (before gilmsg used ed25519-dalek) | {:.1} |\n| sign, as gilmsg signs (with base64) | {:.1} |\n| verify through the trust store (warm cache) | {:.1} |\n| verify through the trust store, a batch of {} (per signature) | {:.1} |\n| verify through the trust store (first, with chain) | {:.1} |",
        get(j, "/crypto/ed25519/sign_raw_us"),
        get(j, "/crypto/ed25519/verify_raw_us"),
        get(j, "/crypto/ed25519/verify_raw_ring_us"),
        get(j, "/crypto/ed25519/sign_us"),
        get(j, "/crypto/ed25519/verify_us_warm"),
        get(j, "/crypto/ed25519/verify_batch_size"),
        get(j, "/crypto/ed25519/verify_batch_us"),
        get(j, "/crypto/ed25519/verify_us_first_with_chain")
    );
    let _ = writeln!(md, "\n| memory | peak RSS |\n|---|---|");
    for k in [1, 10] {
        let base = format!("/memory/after_throughput_{k}_recipients");
        let _ = writeln!(
            md,
            "| consumer, {k}-recipient throughput run | {:.1} MiB |\n| publisher, up to the {k}-recipient run | {:.1} MiB |",
            get(j, &format!("{base}/consumer_peak_rss_kib")) / 1024.0,
            get(j, &format!("{base}/publisher_peak_rss_kib")) / 1024.0
        );
    }
    if j.get("soak").is_some() {
        let _ = writeln!(
            md,
            "\n| soak ({:.0} s, {:.0} messages, {:.0} msgs/s) | consumer | publisher |\n|---|---|---|\n| RSS at start | {:.1} MiB | |\n| steady-state RSS (median of {:.0} samples from {:.0} s on, dedupe cache full) | {:.1} MiB | {:.1} MiB |\n| of which allocated (RssAnon) / executable and libraries (RssFile) | {:.1} / {:.1} MiB | |\n| steady-state RSS, largest sample | {:.1} MiB | |\n| peak RSS (VmHWM, whole run) | {:.1} MiB | |\n| dedupe entries at the end (evicted so far) | {:.0} ({:.0}) | |\n| the consumer's binary | `{}` | |",
            get(j, "/soak/length_s"),
            get(j, "/soak/messages"),
            get(j, "/soak/msgs_per_s"),
            get(j, "/soak/consumer_rss_kib_at_start") / 1024.0,
            get(j, "/soak/steady_samples"),
            get(j, "/soak/steady_from_s"),
            get(j, "/soak/consumer_steady_rss_kib") / 1024.0,
            get(j, "/soak/publisher_steady_rss_kib") / 1024.0,
            get(j, "/soak/consumer_steady_rss_anon_kib") / 1024.0,
            get(j, "/soak/consumer_steady_rss_file_kib") / 1024.0,
            get(j, "/soak/consumer_steady_max_rss_kib") / 1024.0,
            get(j, "/soak/consumer_peak_rss_kib") / 1024.0,
            get(j, "/soak/consumer_dedupe_entries"),
            get(j, "/soak/consumer_dedupe_evicted"),
            j.pointer("/soak/consumer_exe")
                .and_then(Value::as_str)
                .and_then(|p| Path::new(p).file_name())
                .map_or_else(|| "?".into(), |n| n.to_string_lossy()),
        );
    }
}

/// `process: thread µs, ...; ...` from a [`cpu::Snapshot::per_message`].
fn cpu_by_thread(cpu: &Value) -> String {
    let mut parts = Vec::new();
    for (process, threads) in cpu
        .get("by_thread_us_per_msg")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let list: Vec<String> = threads
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(name, us)| Some((name, us.as_f64()?)))
            .filter(|(_, us)| *us >= 0.1)
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        parts.push(format!("{process}: {}", list.join(", ")));
    }
    parts.join("; ")
}

/// A latency CDF, one curve per scenario, log-scaled x axis.
fn svg(curves: &[(String, Summary)]) -> String {
    let (w, h, left, bottom, top, right) = (760.0, 420.0, 60.0, 50.0, 20.0, 20.0);
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|(_, s)| s.samples.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(10.0)
        .log10()
        .ceil();
    let x = |v: f64| left + (v.max(1.0).log10() - lo) / (hi - lo).max(1.0) * (w - left - right);
    let y = |p: f64| top + (1.0 - p) * (h - top - bottom);
    let colors = [
        "#444", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut decade = lo;
    while decade <= hi {
        let xv = x(10f64.powf(decade));
        let _ = writeln!(s, "<line x1=\"{xv:.1}\" y1=\"{top}\" x2=\"{xv:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{xv:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} µs</text>", h - bottom, h - bottom + 16.0, 10f64.powf(decade));
        decade += 1.0;
    }
    for p in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let _ = writeln!(s, "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">p{}</text>", y(p), w - right, y(p), left - 4.0, y(p) + 4.0, (p * 100.0) as u32);
    }
    for (i, (name, summary)) in curves.iter().enumerate() {
        let n = summary.samples.len().max(1) as f64;
        let points: Vec<String> = summary
            .samples
            .iter()
            .enumerate()
            .step_by((summary.samples.len() / 400).max(1))
            .map(|(j, v)| format!("{:.1},{:.1}", x(*v), y((j + 1) as f64 / n)))
            .collect();
        let color = colors[i % colors.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{name}</text>",
            left + 10.0,
            top + 16.0 + 16.0 * i as f64
        );
    }
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency (log scale), cumulative fraction of samples</text>", w / 2.0, h - 8.0);
    s.push_str("</svg>\n");
    s
}

/// Acknowledged publishes to `recipients` one at a time on a warm handle
/// (whatever its transport), after a warm-up: their latency.
async fn publish_latency(
    bus: &gilmsg::Bus,
    topic: &str,
    recipients: &[String],
    samples: usize,
) -> Result<Summary, Failure> {
    timed_publishes(bus, topic, recipients, latency_warmup(samples)).await?;
    Ok(Summary::new(
        timed_publishes(bus, topic, recipients, samples).await?,
    ))
}

/// Publishes, then raw round trips, per block of the interleaved
/// 1-recipient latency.
const INTERLEAVE_BLOCK: usize = 50;

/// The 1-recipient latency measured in blocks of [`INTERLEAVE_BLOCK`]
/// publishes and as many raw round trips to an echo beside the bus, the
/// two in turns (which goes first alternates), after one untimed block of
/// each: the publishes and their floor from the same seconds.
/// Why: the raw floor, measured once before the latency runs, moved
/// between 72 and 115 µs from one run to the next minutes later, and the
/// ratio with it; a machine that slows down or speeds up during a run
/// moves both halves of this one alike.
fn interleaved_latency(
    runtime: &tokio::runtime::Runtime,
    bus: &gilmsg::Bus,
    echo: &RawEchoes,
    recipients: &[String],
    samples: usize,
) -> Result<(Summary, Summary), Failure> {
    let publish_block = || {
        runtime.block_on(timed_publishes(
            bus,
            "latency",
            recipients,
            INTERLEAVE_BLOCK,
        ))
    };
    let echo_block = || echo.round_trips(INTERLEAVE_BLOCK);
    // A fresh echo's connection is cold.
    publish_block()?;
    echo_block()?;
    let blocks = samples.div_ceil(INTERLEAVE_BLOCK).max(1);
    let mut publishes = Vec::with_capacity(blocks * INTERLEAVE_BLOCK);
    let mut rtts = Vec::with_capacity(blocks * INTERLEAVE_BLOCK);
    for block in 0..blocks {
        if block % 2 == 0 {
            publishes.extend(publish_block()?);
            rtts.extend(echo_block()?);
        } else {
            rtts.extend(echo_block()?);
            publishes.extend(publish_block()?);
        }
    }
    Ok((Summary::new(publishes), Summary::new(rtts)))
}

/// `n` acknowledged publishes to `recipients`, one at a time: the latency
/// of each, in µs.
async fn timed_publishes(
    bus: &gilmsg::Bus,
    topic: &str,
    recipients: &[String],
    n: usize,
) -> Result<Vec<f64>, Failure> {
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        bus.publish(
            topic,
            json!({"seq": i, "payload": "x".repeat(64)}),
            recipients,
            Duration::from_secs(10),
        )
        .await?;
        results.push(micros(start.elapsed()));
    }
    Ok(results)
}

/// Acknowledged publishes to `recipients` with at most `window` in flight
/// on one handle, whatever its transport: messages per second.
async fn publish_window(
    bus: &gilmsg::Bus,
    topic: &str,
    recipients: &[String],
    messages: usize,
    window: usize,
) -> Result<f64, Failure> {
    let recipients = std::sync::Arc::new(recipients.to_vec());
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(window));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..messages {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let bus = bus.clone();
        let recipients = recipients.clone();
        let topic = topic.to_owned();
        tasks.spawn(async move {
            let result = bus
                .publish(
                    &topic,
                    json!({"seq": i}),
                    &recipients,
                    Duration::from_secs(30),
                )
                .await;
            drop(permit);
            result
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| fail(e.to_string()))??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| fail(e.to_string()))??;
    }
    Ok(messages as f64 / start.elapsed().as_secs_f64())
}

/// Publishes per block of the interleaved Python/Rust latency comparison.
const PACKAGE_BLOCK: usize = 50;

/// The Python package on `bus` (bindings/python/bench.py): its warm
/// `publish` latency, timed in blocks of [`PACKAGE_BLOCK`] interleaved with
/// blocks of the Rust library's on the same bus (which goes first
/// alternates), so both are measured in the same moments: this VM's speed
/// drifts by a third within minutes, and a Rust run minutes apart (or even
/// just before and after) compared a different machine. Then, for one
/// recipient, the asyncio flood. `bench.py` runs with the venv's Python
/// and publishes to the consumers of `bus` from its own endpoint.
fn python_package_run(
    venv: &Path,
    bus: &DirectBus,
    runtime: &tokio::runtime::Runtime,
    recipients: &[String],
    samples: usize,
    messages: usize,
    args: &Args,
) -> Result<Value, Failure> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bindings/python/bench.py");
    let window = args.windows.iter().copied().max().unwrap_or(128);
    let flood = if recipients.len() == 1 { messages } else { 0 };
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(&script)
        .arg(&bus.py_config)
        .args(["bench-pub", "bench", &recipients.join(",")])
        .arg(samples.to_string())
        .arg(flood.to_string())
        .arg(window.to_string())
        .current_dir(bus.py_config.parent().unwrap_or(Path::new(".")))
        .stdin(std::process::Stdio::piped())
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH");
    let mut proc = Proc::spawn("python bench.py", command).map_err(|e| fail(e.to_string()))?;
    let mut stdin = proc
        .take_stdin()
        .ok_or_else(|| fail("bench.py: no stdin pipe"))?;
    let limit = Duration::from_secs(600);
    let failed = |proc: &Proc, e: String| {
        fail(format!(
            "bench.py: {e}; stderr: {}",
            proc.stderr_so_far().join(" | ")
        ))
    };
    let tell = |stdin: &mut std::process::ChildStdin, proc: &Proc, line: &str| {
        use std::io::Write as _;
        writeln!(stdin, "{line}")
            .map_err(|e| failed(proc, format!("cannot write to its stdin: {e}")))
    };
    proc.wait_stdout("\"ready\"", limit)
        .map_err(|e| failed(&proc, e))?;
    runtime.block_on(timed_publishes(
        &bus.bus,
        "latency",
        recipients,
        latency_warmup(samples),
    ))?;
    let (mut python, mut rust) = (Vec::new(), Vec::new());
    let mut round_ratios = Vec::new();
    let rounds = samples.div_ceil(PACKAGE_BLOCK).max(1);
    for round in 0..rounds {
        let mut python_block = || -> Result<Vec<f64>, Failure> {
            tell(&mut stdin, &proc, &format!("block {PACKAGE_BLOCK}"))?;
            let line = proc
                .wait_stdout("\"block\"", limit)
                .map_err(|e| failed(&proc, e))?;
            let parsed: Value = serde_json::from_str(&line)
                .map_err(|e| failed(&proc, format!("printed {line:?}: {e}")))?;
            parsed
                .get("block")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .ok_or_else(|| failed(&proc, format!("printed {line:?}")))
        };
        let rust_block = || {
            runtime.block_on(timed_publishes(
                &bus.bus,
                "latency",
                recipients,
                PACKAGE_BLOCK,
            ))
        };
        let (p, r) = if round % 2 == 0 {
            let p = python_block()?;
            (p, rust_block()?)
        } else {
            let r = rust_block()?;
            (python_block()?, r)
        };
        python.extend_from_slice(&p);
        rust.extend_from_slice(&r);
        round_ratios.push(Summary::new(p).pct(50.0) / Summary::new(r).pct(50.0));
    }
    tell(&mut stdin, &proc, "end")?;
    drop(stdin);
    let line = proc.wait_stdout("{", limit).map_err(|e| failed(&proc, e))?;
    let _ = proc.wait_timeout(Duration::from_secs(30));
    let mut result: Value =
        serde_json::from_str(&line).map_err(|e| failed(&proc, format!("printed {line:?}: {e}")))?;
    let (python, rust) = (Summary::new(python), Summary::new(rust));
    if let Value::Object(map) = &mut result {
        map.insert("samples".into(), json!(python.samples.len()));
        map.insert("block".into(), json!(PACKAGE_BLOCK));
        map.insert("p50_us".into(), json!(python.pct(50.0)));
        map.insert("p90_us".into(), json!(python.pct(90.0)));
        map.insert("p99_us".into(), json!(python.pct(99.0)));
        map.insert("rust_interleaved".into(), rust.json());
        map.insert(
            "median_of_block_ratios".into(),
            json!(Summary::new(round_ratios).pct(50.0)),
        );
    }
    Ok(result)
}

/// One line for the progress log: the package's p50 against the Rust
/// library's interleaved with it.
fn brief_package_result(result: &Value) -> String {
    if let Some(status) = result.get("status").and_then(Value::as_str) {
        return status.to_owned();
    }
    format!(
        "p50 {:.0} us, Rust interleaved {:.0} us (median of block ratios {:.2}), asyncio {:.0} msg/s",
        get(result, "/p50_us"),
        get(result, "/rust_interleaved/p50_us"),
        get(result, "/median_of_block_ratios"),
        get(result, "/msgs_per_s"),
    )
}

/// The package's numbers with their ratios: p50 over the Rust library's
/// warm p50 (same bus, same consumers), and Python gilmsg's in-process
/// p50 over ours (the anchor, default settings), when both were measured.
fn python_package_ratios(mut package: serde_json::Map<String, Value>, report: &Value) -> Value {
    for (key, value) in package.iter_mut() {
        let p50 = get(value, "/p50_us");
        // The Rust blocks interleaved with the Python ones, else the main
        // run's.
        let interleaved = get(value, "/rust_interleaved/p50_us");
        let rust = if interleaved.is_finite() {
            interleaved
        } else {
            get(report, &format!("/latency_warm_publish/{key}/p50_us"))
        };
        let anchor = get(
            report,
            &format!("/python_anchor/python_publish_in_process/default/{key}/p50_us"),
        );
        if let Value::Object(map) = value {
            map.insert("rust_p50_us".into(), json!(rust));
            map.insert(
                "ratio_over_rust_p50".into(),
                json!((rust > 0.0).then(|| p50 / rust)),
            );
            map.insert(
                "python_gilmsg_p50_over_ours".into(),
                json!((anchor > 0.0 && p50 > 0.0).then(|| anchor / p50)),
            );
        }
    }
    package.insert(
        "build".into(),
        json!("the extension as scripts/python-package.sh built it (GILMSG_PYTHON_PROFILE, default dev)"),
    );
    Value::Object(package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_sends_in_chunks_of_a_tenth_of_the_capacity_each_at_its_turn() {
        // Capacity 1,000: chunks of 100, at 800 per second.
        let started = Instant::now();
        let mut pace = SoakPace::new(1_000);
        let mut chunks = Vec::new();
        pace.send(250, |n| {
            chunks.push((n, started.elapsed()));
            Ok(())
        })
        .unwrap();
        let sizes: Vec<usize> = chunks.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        // The third chunk waited for its turn: 200 sent at 800 a second.
        // (A lower bound only: a sleep is never shorter.)
        assert!(chunks[2].1 >= Duration::from_millis(250), "{chunks:?}");
        // The pace carries over: after 250, the next chunk starts no
        // sooner than 250 / 800 s.
        let mut later = Vec::new();
        pace.send(10, |_| {
            later.push(started.elapsed());
            Ok(())
        })
        .unwrap();
        assert!(later[0] >= Duration::from_millis(312), "{later:?}");
        // Time lost is not made up in a burst: after a pause, the chunks
        // that follow are still a chunk's time apart.
        std::thread::sleep(Duration::from_millis(300));
        let mut after_pause = Vec::new();
        pace.send(200, |n| {
            after_pause.push((n, Instant::now()));
            Ok(())
        })
        .unwrap();
        assert_eq!(after_pause.len(), 2);
        assert!(after_pause[1].1 - after_pause[0].1 >= Duration::from_millis(125));
    }
}

/// What the latency and throughput runs of one publisher loop measured,
/// keyed as in results.json.
#[derive(Default)]
struct DirectResults {
    latency: serde_json::Map<String, Value>,
    throughput: serde_json::Map<String, Value>,
}

/// The latency runs (with, for 1 recipient, the plain publish and the run
/// interleaved with the raw round trip) and the throughput runs of `bus`,
/// into `results`; returns the latency run's samples (for latency.svg).
fn measure_direct(
    bus: &DirectBus,
    recipients: &[String],
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    (samples, messages): (usize, usize),
    (exe, ssldir): (&Path, &Path),
    results: &mut DirectResults,
) -> Result<Option<Summary>, Failure> {
    let k = recipients.len();
    let mut curve = None;
    if args.runs(Section::Latency) {
        // CPU per publish, by thread, while one publish at a time is in
        // flight: what the critical path computes; the rest of the wall
        // time is waiting (wake-ups, hand-offs, the other processes).
        let before = cpu::Snapshot::take(&bus.processes());
        let summary = runtime.block_on(bus.latency(recipients, samples))?;
        let publishes = samples + latency_warmup(samples);
        let cpu = before.per_message(&cpu::Snapshot::take(&bus.processes()), publishes);
        progress(format!(
            "latency {k} recipients: p50 {:.1} us p99 {:.1} us, CPU {:.1} us/publish",
            summary.pct(50.0),
            summary.pct(99.0),
            get(&cpu, "/total_us_per_msg")
        ));
        let mut json = summary.json();
        json["cpu"] = cpu;
        results.latency.insert(format!("{k}_recipients"), json);
        curve = Some(summary);
        if k == 1 {
            let plain = runtime.block_on(bus.plain_latency(samples))?;
            progress(format!(
                "plain publish (sign, hand-offs, send): p50 {:.1} us",
                plain.pct(50.0)
            ));
            results.latency.insert("plain_publish".into(), plain.json());
            let echo = RawEchoes::start(exe, 1, signed_body_size(ssldir)?)?;
            let (publishes, rtts) =
                interleaved_latency(runtime, &bus.bus, &echo, recipients, samples)?;
            progress(format!(
                "latency 1 recipient, interleaved with the raw round trip: p50 {:.1} us, RTT p50 {:.1} us",
                publishes.pct(50.0),
                rtts.pct(50.0)
            ));
            results.latency.insert(
                "1_recipient_interleaved".into(),
                json!({
                    "block": INTERLEAVE_BLOCK,
                    "publish": publishes.json(),
                    "rtt": rtts.json(),
                }),
            );
        }
    }
    if k != 3 && args.runs(Section::Throughput) {
        let (rate, window, cpu, counters) =
            runtime.block_on(bus.throughput(recipients, messages, &args.windows))?;
        progress(format!(
            "throughput {k} recipients: {rate:.0} msg/s (window {window})"
        ));
        results.throughput.insert(
            format!("{k}_recipients"),
            json!({"msgs_per_s": rate, "window": window, "messages": messages, "cpu": cpu,
                   "publisher_counters": counters}),
        );
    }
    let stats = bus.bus.stats();
    results.latency.insert(
        format!("{k}_recipients_publisher_counters"),
        json!(stats.counters),
    );
    Ok(curve)
}
