//! The bridge benchmark (issue 12): `gilmsg-bridge both` as a child process
//! (this executable re-run as `__bridge`) between a RabbitMQ node of its
//! own (`gilmsg_cli::rabbit`) and ZeroMQ sockets on 127.0.0.1:
//!
//! 1. throughput each way with a bounded window of messages in flight
//!    (pushed, not yet seen on the far side), pre-signed messages built
//!    once: ZeroMQ -> AMQP from a bench XPUB the bridge subscribes to,
//!    counted by a raw lapin consumer on a durable queue bound to
//!    `zmq.topic`; AMQP -> ZeroMQ raw lapin publishes with confirms to
//!    `amq.topic`, counted by a bench SUB on the bridge's socket. Beside
//!    each rate: what arrived of what was sent, and the bridge process's
//!    CPU per message, with the rate that CPU allows with the cores to
//!    itself;
//! 2. the latency the bridge adds to an acknowledged publish: a gilmsg
//!    ZeroMQ publisher -> bridge -> an AMQP `gilmsg-consumer`, its ACK back
//!    across, against AMQP alone on the same node; an AMQP publisher ->
//!    bridge -> a ZeroMQ `gilmsg-consumer`, against ZeroMQ alone (the
//!    direct topology of the latency section);
//! 3. the targets (>= 5,000 msgs/s each way, added p50 <= 1 ms),
//!    met or not. Nothing here asserts.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gilmsg_cli::common::{self, Failure};
use gilmsg_cli::procs::{field, Proc};
use gilmsg_cli::rabbit::Rabbit;
use gilmsg_crypto::Identity;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::amqp::{self, connect, lapin_fail, Rate, THROUGHPUT_WINDOWS, TOPIC_PREFIX};
use super::{
    cpu, fail, free_port, progress, publish_latency, start_consumers, DirectBus, Summary, READY,
};

/// Topics under `<prefix>.bench.`: the throughput messages, and each
/// latency scenario's.
const THROUGHPUT: &str = "bridged.throughput";
const TO_AMQP: &str = "bridged.zmq_to_amqp";
const TO_ZMQ: &str = "bridged.amqp_to_zmq";
const AMQP_ALONE: &str = "alone.amqp";
const PROBE: &str = "bridged.probe";
/// How long the far side may stay silent before the rest of a throughput
/// run counts as lost.
const STALL: Duration = Duration::from_secs(5);

fn topic(sub: &str) -> String {
    format!("{TOPIC_PREFIX}.bench.{sub}")
}

/// The `bridge` section of results.json: the benchmark, or why it did not
/// run (no `rabbitmq-server`, or a failure, said in `status`).
pub(crate) fn section(
    exe: &Path,
    dir: &Path,
    ssldir: &Path,
    samples: usize,
    messages: usize,
    short: bool,
) -> Value {
    if !gilmsg_cli::rabbit::installed() {
        return json!({"status": format!("skipped: {}", gilmsg_cli::rabbit::NOT_INSTALLED)});
    }
    // The smoke run (`--short`) tries one window: it shows the section
    // works, not which window is best.
    let windows = if short {
        &THROUGHPUT_WINDOWS[1..2]
    } else {
        &THROUGHPUT_WINDOWS[..]
    };
    bench(exe, dir, ssldir, samples, messages, windows)
        .map(|mut section| {
            add_targets(&mut section);
            section
        })
        .unwrap_or_else(|f| json!({"status": format!("failed: {}", f.message)}))
}

/// The bridge process and where it listens.
struct BridgeProc {
    proc: Proc,
    /// Its `amqp_to_zmq` socket.
    publish_endpoint: String,
}

impl BridgeProc {
    /// `exe __bridge both`, subscribed to `zmq_endpoints`, its queue bound
    /// to the bench's bridged topics and the ACK topic only (so that the
    /// AMQP-alone baseline does not cross it).
    fn start(exe: &Path, config: &Path, zmq_endpoints: &[String]) -> Result<Self, Failure> {
        let mut command = Command::new(exe);
        command
            .args(["__bridge", "both", "--config"])
            .arg(config)
            .args(["--publish-endpoint", "tcp://127.0.0.1:*"])
            .args(["--certname", "bridge"])
            .args(["--binding-key", &topic("bridged.#")])
            .args(["--binding-key", &format!("{TOPIC_PREFIX}.gilmsg.ack")])
            .env("GILMSG_LOG", "warn");
        for endpoint in zmq_endpoints {
            command.args(["--zmq-endpoint", endpoint]);
        }
        let proc = Proc::spawn("bridge", command).map_err(|e| fail(e.to_string()))?;
        let line = proc
            .wait_stderr(gilmsg_cli::bridge::READY_LINE, READY)
            .map_err(fail)?;
        let publish_endpoint = field(&line, "amqp_to_zmq")
            .ok_or_else(|| fail(format!("bridge: unexpected ready line {line:?}")))?
            .to_owned();
        Ok(BridgeProc {
            proc,
            publish_endpoint,
        })
    }
}

fn loopback() -> Result<String, Failure> {
    Ok(format!("tcp://127.0.0.1:{}", free_port()?))
}

/// A ZeroMQ-side config: `name` binds its own endpoint and listens to the
/// bridge's socket.
fn zmq_config(
    dir: &Path,
    name: &str,
    own: &str,
    bridge: &str,
) -> Result<std::path::PathBuf, Failure> {
    let mut config = gilmsg::Config::default();
    config.topic_prefix = "org.gilmsg.bench".into();
    config.environment = "dev".into();
    config.ssldir = dir.join("pki");
    config.name = Some(name.into());
    config.ack_timeout = Duration::from_secs(10);
    config.endpoints.insert(name.into(), vec![own.into()]);
    config.endpoints.insert(
        gilmsg_cli::bridge::PUBLISH_ENDPOINT_KEY.into(),
        vec![bridge.into()],
    );
    let path = dir.join(format!("bridge-{name}.toml"));
    std::fs::write(&path, config.to_toml_string()).map_err(|e| fail(e.to_string()))?;
    Ok(path)
}

fn bench(
    exe: &Path,
    dir: &Path,
    ssldir: &Path,
    samples: usize,
    messages: usize,
    windows: &[usize],
) -> Result<Value, Failure> {
    progress("bridge: starting a RabbitMQ node");
    let node = Rabbit::start(None, Duration::from_secs(120)).map_err(fail)?;
    let url = node.default_url();
    let runtime = common::runtime()?;
    let amqp_config = dir.join("bridge-amqp.toml");
    // The AMQP consumer takes the bridged messages from `zmq.topic` (as a
    // migrated consumer does) and the AMQP-alone ones from `amq.topic`.
    amqp::write_config(
        &amqp_config,
        &url,
        &format!(
            "\n[[bindings]]\nexchange = \"zmq.topic\"\nrouting_keys = [\"{}\"]\n",
            topic(TO_AMQP)
        ),
    )?;
    let (zmq_publisher, zmq_consumer, push) = (loopback()?, loopback()?, loopback()?);
    let bridge = BridgeProc::start(
        exe,
        &amqp_config,
        &[zmq_publisher.clone(), zmq_consumer.clone(), push.clone()],
    )?;
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let mut out = serde_json::Map::new();

    progress("bridge: signing the throughput messages");
    let publisher = Identity::load(ssldir, "bench-pub").map_err(|e| fail(e.to_string()))?;
    let signed = |sub: &str, i: usize| {
        super::signed_message(&publisher, &topic(sub), i)?
            .encode()
            .map_err(|e| fail(e.to_string()))
    };
    // One pool per direction (the bridge refuses a msg_id it carried the
    // other way), AMQP's in its AMQP form.
    let to_amqp_pool = (0..messages)
        .map(|i| signed(THROUGHPUT, i))
        .collect::<Result<Vec<_>, _>>()?;
    let to_zmq_pool = (0..messages)
        .map(|i| Ok(gilmsg_testkit::amqp::amqp_form(&signed(THROUGHPUT, i)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let probe = gilmsg_testkit::amqp::amqp_form(&signed(PROBE, 0)?);
    let mut processes = vec![
        ("bridge".to_owned(), bridge.proc.pid()),
        ("bench".to_owned(), std::process::id()),
    ];
    processes.extend(node.broker_pid().map(|pid| ("rabbitmq".to_owned(), pid)));
    let counted = |run: Result<Counted, Failure>| run.map(|c| c.json(messages, cores));
    progress("bridge throughput ZeroMQ -> AMQP");
    let zmq_to_amqp = runtime.block_on(async {
        let mut rig = ToAmqp::start(&url, &push).await?;
        best_window(&mut rig, &to_amqp_pool, windows, &processes).await
    });
    out.insert("throughput_zmq_to_amqp".into(), counted(zmq_to_amqp)?);
    progress("bridge throughput AMQP -> ZeroMQ");
    let amqp_to_zmq = runtime.block_on(async {
        let mut rig = ToZmq::start(&url, &bridge.publish_endpoint, &probe).await?;
        best_window(&mut rig, &to_zmq_pool, windows, &processes).await
    });
    out.insert("throughput_amqp_to_zmq".into(), counted(amqp_to_zmq)?);

    progress("bridge latency: consumers and publishers on both sides");
    let (amqp_name, zmq_name) = ("consumer-0".to_owned(), "consumer-1".to_owned());
    let alone_prefix = format!("{}.", topic("alone"));
    let zmq_topic = topic(TO_ZMQ);
    let consumer_config = zmq_config(dir, &zmq_name, &zmq_consumer, &bridge.publish_endpoint)?;
    let amqp_args = ["--quiet", "--topic", alone_prefix.as_str()];
    let zmq_args = ["--quiet", "--topic", zmq_topic.as_str()];
    let consumers = start_consumers(
        [
            (
                amqp_name.clone(),
                amqp_name.clone(),
                amqp_config.clone(),
                &amqp_args[..],
            ),
            (
                zmq_name.clone(),
                zmq_name.clone(),
                consumer_config,
                &zmq_args[..],
            ),
        ],
        exe,
    )?;
    let publisher_config = zmq_config(dir, "bench-pub", &zmq_publisher, &bridge.publish_endpoint)?;
    let load = |path: &Path| gilmsg::Config::from_path(path).map_err(Failure::from);
    let (zmq_config, amqp_config) = (load(&publisher_config)?, load(&amqp_config)?);
    let zmq_bus = gilmsg::Bus::builder(&zmq_config)
        .modname("bench")
        .certname("bench-pub")
        .active(false)
        .build()?;
    let amqp_bus = gilmsg::Bus::builder(&amqp_config)
        .modname("bench")
        .certname("bench-pub")
        .build()?;
    let latency = |bus: &gilmsg::Bus, sub: &str, to: &str| {
        runtime.block_on(publish_latency(bus, sub, &[to.to_owned()], samples))
    };
    // Each bridged run right before its baseline, so both see the same
    // machine.
    let to_amqp = latency(&zmq_bus, TO_AMQP, &amqp_name)?;
    let amqp_alone = latency(&amqp_bus, AMQP_ALONE, &amqp_name)?;
    out.insert(
        "latency_zmq_to_amqp".into(),
        added(&to_amqp, &amqp_alone, "ZeroMQ publisher -> bridge -> AMQP consumer, ACK back through the bridge; baseline: AMQP publisher -> AMQP consumer"),
    );
    let to_zmq = latency(&amqp_bus, TO_ZMQ, &zmq_name)?;
    out.insert(
        "bridge_counters".into(),
        json!(stats(&bridge.proc).unwrap_or_default()),
    );
    runtime.block_on(zmq_bus.close());
    runtime.block_on(amqp_bus.close());
    drop(consumers);
    let direct = DirectBus::start(exe, dir, 1, "", false)?;
    let zmq_alone = runtime.block_on(publish_latency(
        &direct.bus,
        "latency",
        &["consumer-0".to_owned()],
        samples,
    ))?;
    drop(direct);
    out.insert(
        "latency_amqp_to_zmq".into(),
        added(&to_zmq, &zmq_alone, "AMQP publisher -> bridge -> ZeroMQ consumer, ACK back through the bridge; baseline: ZeroMQ publisher -> ZeroMQ consumer (direct topology)"),
    );
    out.insert("cores".into(), json!(cores));
    drop(bridge);
    drop(node);
    Ok(Value::Object(out))
}

/// The bridge's counters (SIGUSR1): that nothing was dropped or refused.
fn stats(bridge: &Proc) -> Option<String> {
    bridge.signal(nix::sys::signal::Signal::SIGUSR1).ok()?;
    bridge.wait_stderr("gilmsg-bridge: stats", READY).ok()
}

/// A bridged latency against its baseline: the difference is what the
/// bridge adds.
fn added(bridged: &Summary, alone: &Summary, path: &str) -> Value {
    json!({
        "path": path,
        "bridged": bridged.json(),
        "alone": alone.json(),
        "added_p50_us": bridged.pct(50.0) - alone.pct(50.0),
        "added_p99_us": bridged.pct(99.0) - alone.pct(99.0),
    })
}

/// One side of a throughput run: pushes messages in, counts them out.
trait Rig {
    /// A message in the form the rig sends, built before the run.
    type Message;
    /// Sends `message` into the bridge.
    async fn push(&mut self, message: &Self::Message) -> Result<(), Failure>;
    /// Waits for what `push` left pending (the broker's confirms).
    async fn settle(&mut self) -> Result<(), Failure>;
    /// How many messages came out of the bridge so far.
    fn arrived(&mut self) -> &mut watch::Receiver<usize>;
}

/// What one window's run moved.
struct Counted {
    rate: Rate,
    sent: usize,
    arrived: usize,
    /// Every process's CPU (bridge, broker, bench) per message.
    all_cpu: Value,
}

impl Counted {
    fn json(&self, messages: usize, cores: f64) -> Value {
        let mut row = self.rate.json(messages, cores);
        // The busiest thread bounds a pipeline whatever the cores.
        let busiest = self
            .rate
            .cpu
            .pointer("/by_thread_us_per_msg/bridge")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, us)| Some((name.clone(), us.as_f64()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        row["sent"] = json!(self.sent);
        row["arrived"] = json!(self.arrived);
        row["lost"] = json!(self.sent - self.arrived);
        row["all_processes_cpu"] = self.all_cpu.clone();
        if let Some((thread, us)) = busiest {
            row["busiest_thread"] =
                json!({"name": thread, "us_per_msg": us, "bound_per_s": 1e6 / us});
        }
        row
    }
}

/// Runs `pool` through `rig` with each of `windows` (messages in flight);
/// the best rate, its CPU (the bridge's, and every process's).
async fn best_window<R: Rig>(
    rig: &mut R,
    pool: &[R::Message],
    windows: &[usize],
    processes: &[(String, u32)],
) -> Result<Counted, Failure> {
    let bridge_only = &processes[..1];
    let mut best: Option<Counted> = None;
    for &window in windows {
        let (before, before_all) = (
            cpu::Snapshot::take(bridge_only),
            cpu::Snapshot::take(processes),
        );
        let (sent, arrived, elapsed) = windowed(rig, pool, window, STALL).await?;
        let cpu = before.per_message(&cpu::Snapshot::take(bridge_only), arrived);
        let all_cpu = before_all.per_message(&cpu::Snapshot::take(processes), arrived);
        let per_s = arrived as f64 / elapsed.as_secs_f64();
        progress(format!(
            "  window {window}: {per_s:.0} msg/s, {arrived} of {sent} arrived, bridge CPU {:.1} us/msg",
            super::get(&cpu, "/total_us_per_msg")
        ));
        let this = Counted {
            rate: Rate { per_s, window, cpu },
            sent,
            arrived,
            all_cpu,
        };
        if best.as_ref().is_none_or(|b| this.rate.per_s > b.rate.per_s) {
            best = Some(this);
        }
    }
    best.ok_or_else(|| fail("no throughput window ran"))
}

/// Pushes every message of `pool` with at most `window` in flight; stops
/// early when nothing arrives for `stall` (the rest is lost). Returns
/// sent, arrived, and the time to the last arrival.
async fn windowed<R: Rig>(
    rig: &mut R,
    pool: &[R::Message],
    window: usize,
    stall: Duration,
) -> Result<(usize, usize, Duration), Failure> {
    let base = *rig.arrived().borrow_and_update();
    let (mut sent, mut arrived) = (0, 0);
    let start = Instant::now();
    let mut last = start;
    while arrived < pool.len() {
        while sent < pool.len() && sent - arrived < window {
            rig.push(&pool[sent]).await?;
            sent += 1;
        }
        match tokio::time::timeout(stall, rig.arrived().changed()).await {
            Ok(Ok(())) => {
                arrived = rig.arrived().borrow_and_update().saturating_sub(base);
                last = Instant::now();
            }
            _ => break,
        }
    }
    rig.settle().await?;
    Ok((sent, arrived, last - start))
}

/// ZeroMQ -> AMQP: a bench XPUB the bridge subscribes to; a raw lapin
/// consumer (no acks) on a durable queue bound to `zmq.topic`.
struct ToAmqp {
    xpub: zmq::Socket,
    _context: zmq::Context,
    _conn: lapin::Connection,
    arrived: watch::Receiver<usize>,
}

impl ToAmqp {
    async fn start(url: &str, endpoint: &str) -> Result<Self, Failure> {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await.map_err(lapin_fail("channel"))?;
        let queue = "bench.bridge.zmq_to_amqp";
        amqp::declare_durable(&ch, queue).await?;
        ch.queue_bind(
            queue.into(),
            gilmsg::bridge::DEFAULT_ZMQ_EXCHANGE.into(),
            topic(THROUGHPUT).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_fail("bind"))?;
        let mut deliveries = amqp::consume_no_ack(&ch, queue).await?;
        let (count, arrived) = watch::channel(0usize);
        tokio::spawn(async move {
            while let Some(Ok(_)) = deliveries.next().await {
                count.send_modify(|n| *n += 1);
            }
        });
        let context = zmq::Context::new();
        let xpub = context.socket(zmq::XPUB).map_err(|e| fail(e.to_string()))?;
        // Room for the largest window: PUB drops past its high-water mark,
        // and what the bench loses on its own side is not the bridge's.
        xpub.set_sndhwm(4 * THROUGHPUT_WINDOWS[THROUGHPUT_WINDOWS.len() - 1] as i32)
            .and_then(|()| xpub.bind(endpoint))
            .map_err(|e| fail(e.to_string()))?;
        // The bridge's subscription: from now on it gets what is sent.
        xpub.set_rcvtimeo(READY.as_millis() as i32)
            .map_err(|e| fail(e.to_string()))?;
        xpub.recv_bytes(0)
            .map_err(|e| fail(format!("no subscription from the bridge: {e}")))?;
        Ok(ToAmqp {
            xpub,
            _context: context,
            _conn: conn,
            arrived,
        })
    }
}

impl Rig for ToAmqp {
    type Message = [Vec<u8>; 2];
    async fn push(&mut self, message: &[Vec<u8>; 2]) -> Result<(), Failure> {
        self.xpub
            .send_multipart(message.iter().map(Vec::as_slice), 0)
            .map_err(|e| fail(e.to_string()))
    }
    async fn settle(&mut self) -> Result<(), Failure> {
        Ok(())
    }
    fn arrived(&mut self) -> &mut watch::Receiver<usize> {
        &mut self.arrived
    }
}

/// AMQP -> ZeroMQ: raw lapin publishes with confirms to `amq.topic`; a
/// bench SUB (its own thread) on the bridge's socket counts them.
struct ToZmq {
    ch: lapin::Channel,
    _conn: lapin::Connection,
    confirms: tokio::task::JoinSet<lapin::Result<lapin::Confirmation>>,
    arrived: watch::Receiver<usize>,
    stop: Arc<AtomicBool>,
}

impl ToZmq {
    /// Connects, and probes with `probe` (a message on another topic than
    /// the counted one) until the bridge carries one to the SUB.
    async fn start(
        url: &str,
        endpoint: &str,
        probe: &(Vec<u8>, lapin::BasicProperties),
    ) -> Result<Self, Failure> {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await.map_err(lapin_fail("channel"))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lapin_fail("confirms"))?;
        let context = zmq::Context::new();
        let sub = context.socket(zmq::SUB).map_err(|e| fail(e.to_string()))?;
        // The throughput topic is counted; the probes (any other topic
        // under it) only say the subscription is through.
        let counted = topic(THROUGHPUT).into_bytes();
        sub.set_subscribe(topic("bridged.").as_bytes())
            .and_then(|()| sub.set_rcvtimeo(100))
            .and_then(|()| sub.connect(endpoint))
            .map_err(|e| fail(e.to_string()))?;
        let (count, arrived) = watch::channel(0usize);
        let (probe_seen, mut probes) = watch::channel(0usize);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let _context = context;
            while !stopping.load(Ordering::Acquire) {
                match sub.recv_multipart(0) {
                    Ok(frames) if frames.first() == Some(&counted) => {
                        count.send_modify(|n| *n += 1)
                    }
                    Ok(_) => probe_seen.send_modify(|n| *n += 1),
                    Err(_) => {}
                }
            }
        });
        let mut rig = ToZmq {
            ch,
            _conn: conn,
            confirms: tokio::task::JoinSet::new(),
            arrived,
            stop,
        };
        // A SUB's subscription reaches the bridge's socket some time after
        // it connects: probe until one comes back.
        let deadline = Instant::now() + READY;
        loop {
            rig.publish(&topic(PROBE), probe).await?;
            if tokio::time::timeout(Duration::from_millis(200), probes.changed())
                .await
                .is_ok()
            {
                return Ok(rig);
            }
            if Instant::now() > deadline {
                return Err(fail("the bridge's socket carried no probe"));
            }
        }
    }

    async fn publish(
        &mut self,
        key: &str,
        (body, properties): &(Vec<u8>, lapin::BasicProperties),
    ) -> Result<(), Failure> {
        let confirm = self
            .ch
            .basic_publish(
                "amq.topic".into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await
            .map_err(lapin_fail("publish"))?;
        self.confirms.spawn(confirm);
        Ok(())
    }
}

impl Drop for ToZmq {
    /// Ends the counting thread (it turns every 100 ms).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Rig for ToZmq {
    type Message = (Vec<u8>, lapin::BasicProperties);
    async fn push(&mut self, message: &Self::Message) -> Result<(), Failure> {
        self.publish(&topic(THROUGHPUT), message).await
    }
    async fn settle(&mut self) -> Result<(), Failure> {
        while let Some(done) = self.confirms.join_next().await {
            let confirmation = done
                .map_err(|e| fail(e.to_string()))?
                .map_err(lapin_fail("confirm"))?;
            if confirmation.is_nack() {
                return Err(fail("the broker nacked a publish"));
            }
        }
        Ok(())
    }
    fn arrived(&mut self) -> &mut watch::Receiver<usize> {
        &mut self.arrived
    }
}

/// The targets, met or not, with the CPU-bound figure beside each
/// rate.
fn add_targets(section: &mut Value) {
    let get = |p: &str| section.pointer(p).and_then(Value::as_f64);
    let rate = |dir: &str| {
        let per_s = get(&format!("/throughput_{dir}/per_s"));
        json!({
            "value": per_s,
            "cpu_bound": get(&format!("/throughput_{dir}/cpu_bound_per_s")),
            "target": ">= 5000",
            "met": per_s.map(|r| r >= 5000.0),
        })
    };
    let added = |dir: &str| {
        let p50 = get(&format!("/latency_{dir}/added_p50_us"));
        json!({
            "value": p50,
            "target": "<= 1000 µs",
            "met": p50.map(|us| us <= 1000.0),
        })
    };
    let targets = json!({
        "msgs_per_s_zmq_to_amqp": rate("zmq_to_amqp"),
        "msgs_per_s_amqp_to_zmq": rate("amqp_to_zmq"),
        "added_p50_zmq_to_amqp": added("zmq_to_amqp"),
        "added_p50_amqp_to_zmq": added("amqp_to_zmq"),
    });
    if let Value::Object(map) = section {
        map.insert("targets".into(), targets);
    }
}

/// The Markdown tables of the `bridge` section.
pub(crate) fn markdown(section: &Value) -> String {
    let mut md = String::from("\n### Bridge (`gilmsg-bridge both`, RabbitMQ on 127.0.0.1)\n\n");
    if let Some(status) = section.get("status").and_then(Value::as_str) {
        let _ = writeln!(md, "{status}");
        return md;
    }
    let get = |p: &str| super::get(section, p);
    let met = |p: &str| match section.pointer(p).and_then(Value::as_bool) {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    let _ = writeln!(
        md,
        "The machine has {} cores, shared with RabbitMQ, the bench itself and whatever else runs: the CPU-bound rate is what the bridge's own CPU per message would allow with the cores to itself (its busiest thread bounds it too).\n",
        get("/cores")
    );
    let _ = writeln!(
        md,
        "| throughput | msgs/s (window) | arrived / sent | bridge CPU µs/msg | CPU-bound msgs/s (busiest thread's bound) | all processes' CPU µs/msg | target ≥ 5,000 |\n|---|---|---|---|---|---|---|"
    );
    let row = |md: &mut String, cells: &[String]| {
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    };
    for (label, dir) in [
        ("ZeroMQ -> AMQP", "zmq_to_amqp"),
        ("AMQP -> ZeroMQ", "amqp_to_zmq"),
    ] {
        let at = |key: &str| get(&format!("/throughput_{dir}/{key}"));
        let busiest = section
            .pointer(&format!("/throughput_{dir}/busiest_thread/name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        row(
            &mut md,
            &[
                label.to_owned(),
                format!("{:.0} ({})", at("per_s"), at("window")),
                format!("{} / {}", at("arrived"), at("sent")),
                format!("{:.1}", at("cpu/total_us_per_msg")),
                format!(
                    "{:.0} ({:.0}, {busiest})",
                    at("cpu_bound_per_s"),
                    at("busiest_thread/bound_per_s")
                ),
                format!("{:.1}", at("all_processes_cpu/total_us_per_msg")),
                met(&format!("/targets/msgs_per_s_{dir}/met")).to_owned(),
            ],
        );
    }
    let _ = writeln!(
        md,
        "\n| acknowledged publish, 1 recipient | p50 | p99 | alone p50 | alone p99 | added p50 | added p99 | target added p50 ≤ 1 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for (label, dir) in [
        (
            "ZeroMQ publisher -> bridge -> AMQP consumer (vs AMQP alone)",
            "zmq_to_amqp",
        ),
        (
            "AMQP publisher -> bridge -> ZeroMQ consumer (vs ZeroMQ alone)",
            "amqp_to_zmq",
        ),
    ] {
        let mut cells = vec![label.to_owned()];
        cells.extend(
            [
                "bridged/p50_us",
                "bridged/p99_us",
                "alone/p50_us",
                "alone/p99_us",
                "added_p50_us",
                "added_p99_us",
            ]
            .map(|key| format!("{:.0} µs", get(&format!("/latency_{dir}/{key}")))),
        );
        cells.push(met(&format!("/targets/added_p50_{dir}/met")).to_owned());
        row(&mut md, &cells);
    }
    let _ = writeln!(
        md,
        "\nAdded = bridged less alone, p50 from p50 and p99 from p99. ZeroMQ -> AMQP, against AMQP alone: two bridge transits (the message in, its ACK out) and the ZeroMQ hops to and from the bridge, in place of the AMQP publisher's own publish and ACK queue. AMQP -> ZeroMQ, against ZeroMQ alone: two bridge transits and two broker hops (the message into the bridge's queue, the ACK into the publisher's), in place of ZeroMQ's direct hops: a broker round trip as well as the bridge."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers what it is given at once, but loses the messages `false`.
    struct Lossy {
        count: watch::Sender<usize>,
        arrived: watch::Receiver<usize>,
        most_in_flight: usize,
        pushed: usize,
    }

    impl Rig for Lossy {
        type Message = bool;
        async fn push(&mut self, delivered: &bool) -> Result<(), Failure> {
            self.pushed += 1;
            let in_flight = self.pushed - *self.count.borrow();
            self.most_in_flight = self.most_in_flight.max(in_flight);
            if *delivered {
                self.count.send_modify(|n| *n += 1);
            }
            Ok(())
        }
        async fn settle(&mut self) -> Result<(), Failure> {
            Ok(())
        }
        fn arrived(&mut self) -> &mut watch::Receiver<usize> {
            &mut self.arrived
        }
    }

    fn lossy() -> Lossy {
        let (count, arrived) = watch::channel(0);
        Lossy {
            count,
            arrived,
            most_in_flight: 0,
            pushed: 0,
        }
    }

    fn run(rig: &mut Lossy, pool: &[bool], window: usize) -> (usize, usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sent, arrived, _) = runtime
            .block_on(windowed(rig, pool, window, Duration::from_millis(50)))
            .unwrap();
        (sent, arrived)
    }

    #[test]
    fn a_run_without_loss_counts_everything_within_its_window() {
        let mut rig = lossy();
        assert_eq!(run(&mut rig, &[true; 100], 8), (100, 100));
        assert!(rig.most_in_flight <= 8);
    }

    #[test]
    fn lost_messages_end_the_run_and_are_reported() {
        // Every fourth message lost: the window fills with lost ones, the
        // far side goes silent, and the run reports what it saw.
        let pool: Vec<bool> = (0..100).map(|i| i % 4 != 3).collect();
        let mut rig = lossy();
        let (sent, arrived) = run(&mut rig, &pool, 4);
        assert!(sent < 100, "a stalled run stops sending: {sent}");
        assert_eq!(sent - arrived, 4, "the lost messages fill the window");
        // A later run of the same rig counts from where it is.
        assert_eq!(run(&mut rig, &[true; 10], 4), (10, 10));
    }

    #[test]
    fn targets_say_met_or_missed_and_the_markdown_shows_them() {
        let mut section = json!({
            "cores": 2.0,
            "throughput_zmq_to_amqp": {"per_s": 6000.0, "cpu_bound_per_s": 9000.0, "window": 256, "sent": 10, "arrived": 10},
            "throughput_amqp_to_zmq": {"per_s": 4000.0, "cpu_bound_per_s": 7000.0, "window": 64, "sent": 10, "arrived": 9},
            "latency_zmq_to_amqp": {"added_p50_us": 800.0},
            "latency_amqp_to_zmq": {"added_p50_us": 1200.0},
        });
        add_targets(&mut section);
        assert_eq!(section["targets"]["msgs_per_s_zmq_to_amqp"]["met"], true);
        assert_eq!(section["targets"]["msgs_per_s_amqp_to_zmq"]["met"], false);
        assert_eq!(section["targets"]["added_p50_zmq_to_amqp"]["met"], true);
        assert_eq!(section["targets"]["added_p50_amqp_to_zmq"]["met"], false);
        let md = markdown(&section);
        assert!(
            md.contains("| ZeroMQ -> AMQP | 6000 (256) | 10 / 10 |"),
            "{md}"
        );
        assert!(
            md.contains("| 9 / 10 |") && md.contains("| missed |"),
            "{md}"
        );
        assert!(markdown(&json!({"status": "skipped: no rabbitmq"})).contains("skipped"));
    }
}
