//! The AMQP benchmark (issue 11), on a throwaway RabbitMQ node it starts
//! (`gilmsg_cli::rabbit`) and stops:
//!
//! 1. the floor: a raw AMQP round trip with lapin, messages as large as a
//!    signed one, persistent, to a durable queue: publish and wait for the
//!    broker's confirm -> consume -> publish -> consume (what an
//!    acknowledged publish needs at least);
//! 2. warm latency of acknowledged `publish` on a long-lived handle to 1, 3
//!    and 10 `gilmsg-consumer` processes (p50, p90, p99, max);
//! 3. throughput to 1 recipient with many publishes in flight;
//! 4. Python fedora-messaging 3.9.1 `api.publish` (broker confirm only)
//!    latency, when its venv is there.
//!
//! It reports against the issue's targets (1 recipient p50 at most 1.5
//! times the floor, at least 5,000 acknowledged messages/s, our p50 below
//! Python's broker-only publish). Nothing here asserts: the report says met
//! or not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gilmsg_cli::common::{self, Failure};
use gilmsg_cli::rabbit::Rabbit;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

use super::{fail, micros, progress, start_consumers, Summary};

/// What to run.
pub(crate) struct Options {
    pub(crate) samples: usize,
    pub(crate) messages: usize,
    pub(crate) recipients: Vec<usize>,
    pub(crate) throughput: bool,
    /// The fedora-messaging venv (`bin/python`), if any.
    pub(crate) fedora_messaging: Option<PathBuf>,
}

/// The consumers' topic and arguments.
const TOPIC_PREFIX: &str = "org.gilmsg.bench.dev";

/// The `amqp` section of results.json: the benchmark, or why it did not
/// run (no `rabbitmq-server`, or a failure, said in `status`).
pub(crate) fn section(
    exe: &Path,
    dir: &Path,
    body_size: usize,
    samples: usize,
    messages: usize,
    args: &super::Args,
) -> Value {
    if !gilmsg_cli::rabbit::installed() {
        return json!({"status": format!("skipped: {}", gilmsg_cli::rabbit::NOT_INSTALLED)});
    }
    let options = Options {
        samples,
        messages,
        recipients: args.recipients.clone(),
        throughput: !args.no_throughput,
        fedora_messaging: args
            .fedora_messaging
            .clone()
            .or_else(|| std::env::var_os("GILMSG_FEDORA_MESSAGING").map(PathBuf::from)),
    };
    bench(exe, dir, body_size, &options)
        .unwrap_or_else(|f| json!({"status": format!("failed: {}", f.message)}))
}

/// Runs the AMQP benchmark.
pub(crate) fn bench(
    exe: &Path,
    dir: &Path,
    body_size: usize,
    o: &Options,
) -> Result<Value, Failure> {
    progress("AMQP: starting a RabbitMQ node");
    let node = Rabbit::start(None, Duration::from_secs(120)).map_err(fail)?;
    let url = node.default_url();
    let runtime = common::runtime()?;
    let mut out = serde_json::Map::new();

    progress("AMQP floor: raw publish-confirm -> consume -> publish -> consume");
    let floor = runtime.block_on(floor_rtt(&url, o.samples, body_size))?;
    progress(format!("AMQP floor p50 {:.1} us", floor.pct(50.0)));
    out.insert(
        "floor_rtt".into(),
        json!({"body_bytes": body_size, "latency": floor.json()}),
    );

    let config_path = dir.join("amqp.toml");
    std::fs::write(
        &config_path,
        format!(
            "amqp_url = \"{url}\"\ntopic_prefix = \"{TOPIC_PREFIX}\"\nssldir = \"pki\"\n\
             ack_timeout = \"10s\"\ndedupe_capacity = 32768\n\n[qos]\nprefetch_count = 256\n"
        ),
    )
    .map_err(|e| fail(e.to_string()))?;
    let config = gilmsg::Config::from_path(&config_path).map_err(Failure::from)?;
    let mut latency = serde_json::Map::new();
    let mut throughput = serde_json::Map::new();
    for &k in &o.recipients {
        progress(format!("AMQP: {k} gilmsg-consumer process(es)"));
        // Each round its own topic: the identity queues of an earlier round
        // stay bound to theirs and get nothing of this one.
        let topic = format!("{TOPIC_PREFIX}.bench.k{k}.");
        let args: Vec<&str> = vec!["--quiet", "--topic", &topic];
        let consumers = start_consumers(
            (0..k).map(|i| {
                let name = format!("consumer-{i}");
                (name.clone(), name, config_path.clone(), args.as_slice())
            }),
            exe,
        )?;
        let recipients: Vec<String> = (0..k).map(|i| format!("consumer-{i}")).collect();
        let bus = gilmsg::Bus::builder(&config)
            .modname("bench")
            .certname("bench-pub")
            .build()?;
        let sub = format!("k{k}.latency");
        let summary = runtime.block_on(publish_latency(&bus, &sub, &recipients, o.samples))?;
        progress(format!(
            "AMQP latency {k} recipient(s): p50 {:.1} us p99 {:.1} us",
            summary.pct(50.0),
            summary.pct(99.0)
        ));
        latency.insert(format!("{k}_recipients"), summary.json());
        if k == 1 && o.throughput {
            let mut best = (0.0f64, 0usize);
            for window in [64usize, 256, 1024] {
                let sub = format!("k{k}.throughput");
                let rate = runtime.block_on(super::publish_window(
                    &bus,
                    &sub,
                    &recipients,
                    o.messages,
                    window,
                ))?;
                progress(format!("AMQP throughput window {window}: {rate:.0} msg/s"));
                if rate > best.0 {
                    best = (rate, window);
                }
            }
            throughput.insert(
                format!("{k}_recipients"),
                json!({"msgs_per_s": best.0, "window": best.1, "messages": o.messages}),
            );
        }
        latency.insert(
            format!("{k}_recipients_publisher_counters"),
            json!(bus.stats().counters),
        );
        runtime.block_on(bus.close());
        drop(consumers);
    }
    out.insert("latency_warm_publish".into(), Value::Object(latency));
    out.insert("throughput".into(), Value::Object(throughput));

    let python = match &o.fedora_messaging {
        Some(venv) => {
            progress("AMQP: Python fedora-messaging api.publish (broker confirm only)");
            runtime
                .block_on(python_publish(&url, dir, venv, o.samples.min(500)))
                .map(|s| json!({"venv": venv.display().to_string(), "latency": s.json()}))
                .unwrap_or_else(|f| json!({"status": format!("failed: {}", f.message)}))
        }
        None => {
            json!({"status": "skipped: no fedora-messaging venv (scripts/fedora-messaging-peer.sh; $GILMSG_FEDORA_MESSAGING)"})
        }
    };
    out.insert("python_fedora_messaging_publish".into(), python);
    let mut section = Value::Object(out);
    add_targets(&mut section);
    drop(node);
    Ok(section)
}

/// The issue's targets, met or not.
fn add_targets(section: &mut Value) {
    let get = |p: &str| section.pointer(p).and_then(Value::as_f64);
    let floor = get("/floor_rtt/latency/p50_us");
    let one = get("/latency_warm_publish/1_recipients/p50_us");
    let rate = get("/throughput/1_recipients/msgs_per_s");
    let python = get("/python_fedora_messaging_publish/latency/p50_us");
    let ratio = one.zip(floor).map(|(a, b)| a / b);
    let targets = json!({
        "p50_1_recipient_vs_floor": {"value": ratio, "target": "<= 1.5", "met": ratio.map(|r| r <= 1.5)},
        "acked_msgs_per_s_1_recipient": {"value": rate, "target": ">= 5000", "met": rate.map(|r| r >= 5000.0)},
        "p50_1_recipient_vs_python_publish": {
            "value": one.zip(python).map(|(a, b)| a / b),
            "target": "< 1 (our signed receipt faster than fedora-messaging's broker-only publish)",
            "met": one.zip(python).map(|(a, b)| a < b),
        },
    });
    if let Value::Object(map) = section {
        map.insert("targets".into(), targets);
    }
}

/// The Markdown table of the `amqp` section.
pub(crate) fn markdown(section: &Value) -> String {
    let get = |p: &str| {
        section
            .pointer(p)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let floor = get("/floor_rtt/latency/p50_us");
    let mut md = String::from("\n### AMQP (RabbitMQ on 127.0.0.1)\n\n");
    let _ = writeln!(
        md,
        "| measure | p50 | p99 | vs floor (p50) |\n|---|---|---|---|"
    );
    let mut row = |name: &str, base: &str| {
        let p50 = get(&format!("{base}/p50_us"));
        let _ = writeln!(
            md,
            "| {name} | {p50:.1} µs | {:.1} µs | {:.2}× |",
            get(&format!("{base}/p99_us")),
            p50 / floor
        );
    };
    row("raw AMQP round trip (floor)", "/floor_rtt/latency");
    for k in [1, 3, 10] {
        if section
            .pointer(&format!("/latency_warm_publish/{k}_recipients"))
            .is_some()
        {
            row(
                &format!("acknowledged publish, {k} recipient(s)"),
                &format!("/latency_warm_publish/{k}_recipients"),
            );
        }
    }
    if section
        .pointer("/python_fedora_messaging_publish/latency")
        .is_some()
    {
        row(
            "Python fedora-messaging api.publish (broker confirm only)",
            "/python_fedora_messaging_publish/latency",
        );
    }
    let _ = writeln!(
        md,
        "\nThroughput, 1 recipient: {:.0} acknowledged msgs/s (window {}).\n",
        get("/throughput/1_recipients/msgs_per_s"),
        section
            .pointer("/throughput/1_recipients/window")
            .cloned()
            .unwrap_or(Value::Null)
    );
    let _ = writeln!(md, "| target | value | met |\n|---|---|---|");
    if let Some(Value::Object(targets)) = section.get("targets") {
        for (name, t) in targets {
            let _ = writeln!(
                md,
                "| {name} ({}) | {} | {} |",
                t["target"].as_str().unwrap_or(""),
                t["value"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.2}")),
                t["met"]
            );
        }
    }
    md
}

async fn connect(url: &str) -> Result<Connection, Failure> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| fail(format!("AMQP connect: {e}")))
}

fn lapin_fail(what: &str) -> impl Fn(lapin::Error) -> Failure + '_ {
    move |e| fail(format!("{what}: {e}"))
}

/// The floor: ping (persistent, to a durable queue, confirmed) -> an echo
/// task consumes it and publishes a pong -> consumed.
async fn floor_rtt(url: &str, samples: usize, body_size: usize) -> Result<Summary, Failure> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let echo_conn = connect(url).await?;
    let echo = echo_conn
        .create_channel()
        .await
        .map_err(lapin_fail("channel"))?;
    echo.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lapin_fail("confirms"))?;
    echo.queue_declare("bench.floor.ping".into(), durable, FieldTable::default())
        .await
        .map_err(lapin_fail("declare"))?;
    let mut pings = echo
        .basic_consume(
            "bench.floor.ping".into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .map_err(lapin_fail("consume"))?;
    let conn = connect(url).await?;
    let ch = conn.create_channel().await.map_err(lapin_fail("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lapin_fail("confirms"))?;
    let pong_queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(lapin_fail("declare"))?;
    let pong_name = pong_queue.name().to_string();
    let mut pongs = ch
        .basic_consume(
            pong_queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .map_err(lapin_fail("consume"))?;
    let echo_props = persistent.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(Ok(d)) = pings.next().await {
            // The pong is published at once, its confirm awaited off the
            // path (as a consumer's ACK is sent, then confirmed).
            if let Ok(confirm) = echo
                .basic_publish(
                    "".into(),
                    pong_name.as_str().into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    echo_props.clone(),
                )
                .await
            {
                tokio::spawn(confirm);
            }
        }
    });
    let body = vec![b'x'; body_size];
    let warmup = (samples / 10).max(20);
    let mut results = Vec::with_capacity(samples);
    for i in 0..samples + warmup {
        let start = Instant::now();
        let confirm = ch
            .basic_publish(
                "".into(),
                "bench.floor.ping".into(),
                BasicPublishOptions::default(),
                &body,
                persistent.clone(),
            )
            .await
            .map_err(lapin_fail("publish"))?;
        let (confirmed, pong) = tokio::join!(confirm, pongs.next());
        confirmed.map_err(lapin_fail("confirm"))?;
        match pong {
            Some(Ok(_)) => {}
            other => return Err(fail(format!("floor: no pong: {other:?}"))),
        }
        if i >= warmup {
            results.push(micros(start.elapsed()));
        }
    }
    echo_task.abort();
    let _ = conn.close(200, "bye".into()).await;
    let _ = echo_conn.close(200, "bye".into()).await;
    Ok(Summary::new(results))
}

async fn publish_latency(
    bus: &gilmsg::Bus,
    topic: &str,
    recipients: &[String],
    samples: usize,
) -> Result<Summary, Failure> {
    let warmup = (samples / 10).max(20);
    let mut results = Vec::with_capacity(samples);
    for i in 0..samples + warmup {
        let start = Instant::now();
        bus.publish(
            topic,
            json!({"seq": i, "payload": "x".repeat(64)}),
            recipients,
            Duration::from_secs(10),
        )
        .await?;
        if i >= warmup {
            results.push(micros(start.elapsed()));
        }
    }
    Ok(Summary::new(results))
}

/// fedora-messaging's `api.publish` (blocking, confirms, not mandatory)
/// timed in Python, to a topic a durable queue is bound to (so the broker
/// persists it, as it does ours).
async fn python_publish(
    url: &str,
    dir: &Path,
    venv: &Path,
    samples: usize,
) -> Result<Summary, Failure> {
    let topic = format!("{TOPIC_PREFIX}.python.latency");
    let conn = connect(url).await?;
    let ch = conn.create_channel().await.map_err(lapin_fail("channel"))?;
    ch.queue_declare(
        "bench.python".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(lapin_fail("declare"))?;
    ch.queue_bind(
        "bench.python".into(),
        "amq.topic".into(),
        topic.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .map_err(lapin_fail("bind"))?;
    let work = dir.join("fedora-messaging");
    std::fs::create_dir_all(work.join("home")).map_err(|e| fail(e.to_string()))?;
    let conf = work.join("fm.toml");
    std::fs::write(
        &conf,
        format!("amqp_url = \"{url}\"\npublish_exchange = \"amq.topic\"\ntopic_prefix = \"\"\n"),
    )
    .map_err(|e| fail(e.to_string()))?;
    let script = r#"
import json, sys, time
from fedora_messaging import api, message
n, topic = int(sys.argv[1]), sys.argv[2]
warm = max(n // 10, 20)
out = []
for i in range(n + warm):
    m = message.Message(topic=topic, body={"seq": i, "payload": "x" * 64})
    t = time.perf_counter()
    api.publish(m)
    d = time.perf_counter() - t
    if i >= warm:
        out.append(d * 1e6)
print(json.dumps(out))
"#;
    let mut command = gilmsg_testkit::python::command(&venv.join("bin/python"), &work);
    command
        .args(["-c", script, &samples.to_string(), &topic])
        .env("FEDORA_MESSAGING_CONF", &conf);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("python: {e}")))?;
    let _ = conn.close(200, "bye".into()).await;
    if !out.status.success() {
        return Err(fail(format!(
            "python fedora-messaging publish: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let samples: Vec<f64> = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| fail(format!("python printed no samples: {text}")))?;
    Ok(Summary::new(samples))
}
