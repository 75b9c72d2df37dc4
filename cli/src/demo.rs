//! `gilmsg-demo`: the whole system on loopback, with nothing installed.
//!
//! Makes a throwaway CA and five identities, starts a relay and three
//! ACK-sending consumers as separate processes (this same executable in
//! another role), publishes to the three and prints the receipt, then
//! publishes to the three plus a fourth recipient that is not running and
//! prints the timeout that names it. Every process it starts is stopped by
//! PID before it exits, and the temporary directory is removed.
//!
//! With `--transport amqp` the bus is a throwaway RabbitMQ node it starts
//! itself ([`crate::rabbit`]; Debian's `rabbitmq-server` must be installed)
//! instead of the relay: the same consumers, publisher and steps, on AMQP.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use gilmsg_crypto::pki;
use serde_json::json;

use crate::common::{self, Failure, EXIT_BUS};
use crate::roles;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CONSUMERS: [&str; 3] = ["consumer-a", "consumer-b", "consumer-c"];
const OFFLINE: &str = "consumer-d";

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-demo",
    version,
    about = "Run a self-contained gilmsg demo bus on 127.0.0.1."
)]
pub struct Args {
    /// ACK timeout for the publish that names the offline recipient.
    #[arg(long, value_parser = common::parse_duration, default_value = "1s")]
    pub offline_timeout: Duration,
    /// Keep the temporary directory (PKI, config) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// The bus: a relay (ZeroMQ) or a RabbitMQ node the demo starts (AMQP).
    #[arg(long, value_enum, default_value_t = Transport::Zeromq)]
    pub transport: Transport,
}

/// The bus the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A `gilmsg-relay` on 127.0.0.1.
    Zeromq,
    /// A RabbitMQ node on 127.0.0.1, started and stopped by the demo.
    Amqp,
}

/// What carries the demo's bus.
enum Carrier {
    Relay(crate::procs::Proc),
    Broker(crate::rabbit::Rabbit),
}

/// Entry point: runs the demo, or a role when re-executed by it.
pub fn main() -> std::process::ExitCode {
    if let Some(status) = crate::roles::dispatch_reexec() {
        return status;
    }
    common::init_logging();
    common::report("gilmsg-demo", run(Args::parse()))
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_BUS,
        message: format!("error: {}", message.into()),
    }
}

/// Runs the demo.
pub fn run(args: Args) -> Result<(), Failure> {
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("cannot find own executable: {e}")))?;
    let workdir = tempfile::Builder::new()
        .prefix("gilmsg-demo-")
        .tempdir()
        .map_err(|e| fail(e.to_string()))?;
    let dir = workdir.path();

    step("1. A throwaway CA and identities (gilmsg-pki init / issue)");
    let ssldir = dir.join("pki");
    pki::init(
        &ssldir,
        &pki::InitOptions {
            ca_name: "gilmsg-demo-ca".into(),
            validity: Duration::from_secs(86_400),
        },
    )
    .map_err(|e| fail(e.to_string()))?;
    for name in ["demo-publisher"]
        .iter()
        .chain(CONSUMERS.iter())
        .chain([OFFLINE].iter())
    {
        pki::issue(
            &ssldir,
            name,
            &pki::IssueOptions::valid_for(Duration::from_secs(86_400)),
        )
        .map_err(|e| fail(e.to_string()))?;
        println!("   issued {name}");
    }

    let config_path = dir.join("bus.toml");
    let carrier = match args.transport {
        Transport::Zeromq => {
            step("2. A relay on 127.0.0.1 (ephemeral ports)");
            let roles::LoopbackRelay {
                proc: relay,
                inbound,
                outbound,
            } = roles::spawn_relay("relay", &exe, READY_TIMEOUT).map_err(fail)?;
            println!(
                "   relay pid {}: publishers -> {inbound}, consumers <- {outbound}",
                relay.pid()
            );
            write_config(&config_path, &inbound, &outbound)?;
            Carrier::Relay(relay)
        }
        Transport::Amqp => {
            step("2. A RabbitMQ node on 127.0.0.1 (free ports, its own epmd)");
            let node = crate::rabbit::Rabbit::start(None, Duration::from_secs(90)).map_err(fail)?;
            println!(
                "   node {} up: amqp://127.0.0.1:{} (data in {})",
                node.node(),
                node.port,
                node.dir().display()
            );
            write_amqp_config(&config_path, &node.default_url())?;
            Carrier::Broker(node)
        }
    };

    step("3. Three ACK-sending consumers (separate processes)");
    let consumers = CONSUMERS
        .iter()
        .map(|name| roles::spawn_consumer(name, &exe, &config_path, name, &["--json"]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    for proc in &consumers {
        roles::wait_consumer_ready(proc, READY_TIMEOUT).map_err(fail)?;
        println!("   {} ready (pid {})", proc.name(), proc.pid());
    }

    let config = gilmsg::Config::from_path(&config_path).map_err(Failure::from)?;
    let runtime = common::runtime()?;
    let outcome = runtime.block_on(async {
        let bus = gilmsg::Bus::builder(&config)
            .modname("demo")
            .certname("demo-publisher")
            .active(true)
            .build()?;

        step(&format!(
            "4. Acknowledged publish to {}",
            CONSUMERS.join(", ")
        ));
        let receipt = bus
            .publish(
                "greeting",
                json!({"text": "hello from gilmsg", "n": 1}),
                &CONSUMERS,
                Duration::from_secs(5),
            )
            .await?;
        println!("   success: msg_id {} on {}", receipt.msg_id, receipt.topic);
        for ack in &receipt.acks {
            println!(
                "   acked by {:<11} after {:>7.3} ms (body digest {})",
                ack.recipient,
                ack.after.as_secs_f64() * 1000.0,
                if ack.digest_checked {
                    "matched"
                } else {
                    "not sent"
                }
            );
        }
        println!(
            "   sent {} time(s), total {:.3} ms",
            receipt.sends,
            receipt.elapsed.as_secs_f64() * 1000.0
        );
        for proc in &consumers {
            if let Some(line) = proc.next_stdout(Duration::from_secs(2)) {
                let shown: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                println!(
                    "   {} printed msg {}",
                    proc.name(),
                    shown.pointer("/body/msg").unwrap_or(&shown)
                );
            }
        }

        let mut everyone: Vec<&str> = CONSUMERS.to_vec();
        everyone.push(OFFLINE);
        step(&format!(
            "5. Acknowledged publish to {} ({OFFLINE} is not running), timeout {}",
            everyone.join(", "),
            humantime::format_duration(args.offline_timeout)
        ));
        let result = bus
            .publish(
                "greeting",
                json!({"text": "anyone there?", "n": 2}),
                &everyone,
                args.offline_timeout,
            )
            .await;
        bus.close().await;
        Ok::<_, gilmsg::Error>(result)
    });
    let second = outcome.map_err(Failure::from)?;
    let verdict = match second {
        Err(gilmsg::Error::Timeout(timeout)) => {
            println!("   timeout, as expected: {timeout}");
            println!(
                "   missing: {:?}   acked: {:?}",
                timeout.missing,
                timeout.acked_names()
            );
            if timeout.missing == [OFFLINE] {
                Ok(())
            } else {
                Err(fail(format!(
                    "the timeout named {:?}, expected only {OFFLINE}",
                    timeout.missing
                )))
            }
        }
        Ok(_) => Err(fail(
            "the publish to an offline recipient succeeded: that must never happen",
        )),
        Err(e) => Err(Failure::from(e)),
    };

    let (relay, node) = match carrier {
        Carrier::Relay(relay) => (Some(relay), None),
        Carrier::Broker(node) => (None, Some(node)),
    };
    step(if node.is_some() {
        "6. Shutting down the consumers and the RabbitMQ node"
    } else {
        "6. Shutting down the relay and consumers"
    });
    for mut proc in consumers.into_iter().chain(relay) {
        let status = proc.terminate(Duration::from_secs(5));
        let stats = proc
            .stderr_so_far()
            .into_iter()
            .rev()
            .find(|l| l.contains(": stats "));
        println!(
            "   {} (pid {}) stopped: {}",
            proc.name(),
            proc.pid(),
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "killed".into())
        );
        if let Some(stats) = stats {
            println!(
                "     {}",
                stats.split_once(": ").map(|x| x.1).unwrap_or(&stats)
            );
        }
    }
    if let Some(node) = node {
        let name = node.node().to_owned();
        drop(node);
        println!("   {name} stopped");
    }
    if args.keep {
        let kept = workdir.keep();
        println!("\nkept {}", kept.display());
    }
    verdict?;
    println!(
        "\ndemo finished: acknowledged publish succeeded, and the offline recipient was named."
    );
    Ok(())
}

fn write_config(path: &Path, inbound: &str, outbound: &str) -> Result<(), Failure> {
    let text = format!(
        r#"# Written by gilmsg-demo.
topic_prefix = "org.gilmsg.demo"
environment = "dev"
ssldir = "pki"
sign_messages = true
validate_signatures = true
active = true
relay_inbound = ["{inbound}"]
ack_timeout = "5s"

[endpoints]
relay_outbound = ["{outbound}"]
"#
    );
    std::fs::write(path, text).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

fn write_amqp_config(path: &Path, url: &str) -> Result<(), Failure> {
    let text = format!(
        r#"# Written by gilmsg-demo --transport amqp.
amqp_url = "{url}"
topic_prefix = "org.gilmsg.demo.dev"
ssldir = "pki"
sign_messages = true
validate_signatures = true
ack_timeout = "5s"
"#
    );
    std::fs::write(path, text).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}
