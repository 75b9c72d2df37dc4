//! What every long-running command (relay, consumer, `gilmsg-logger
//! --stream`) does as a service,
//! besides its job: the monitoring endpoint (`[monitoring]`, `/live`,
//! `/ready`, `/metrics`), systemd's notify protocol (`READY=1`,
//! `STOPPING=1`, `WATCHDOG=1`) and signed heartbeats
//! (`heartbeat_interval`).
//!
//! A command builds a [`Service`] from its configuration, shows it each
//! component it runs ([`Service::watch`]), starts it ([`Service::start`])
//! before it waits for readiness, calls [`Service::ready`] at the moment it
//! prints its ready line and [`Service::stopping`] when a stop begins.
//! Everything here reads the components' [`Health`](gilmsg::health::Health)
//! and counters; nothing counts on its own.
//!
//! The watchdog pings (`WATCHDOG=1`, every half of `WatchdogSec`) come from
//! a thread of their own and only while every component's loop turns: a
//! socket thread that is stuck (a handler blocking it) or gone stops the
//! pings, and systemd restarts the service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gilmsg::health::ProcessHealth;
use gilmsg::monitoring::{ComponentMetrics, Metrics, MonitoringServer};
use gilmsg::Config;
use sd_notify::NotifyState;
use serde_json::json;

use crate::common::{self, Failure};

/// The flags a long-running command takes for being run as a service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// Serve /live, /ready and /metrics on ADDRESS:PORT (port 0 picks one;
    /// overrides the config's [monitoring] section).
    #[arg(long, value_name = "ADDRESS:PORT", value_parser = gilmsg_config::Monitoring::parse_flag)]
    pub monitoring: Option<gilmsg_config::Monitoring>,
    /// Publish a signed heartbeat this often (overrides heartbeat_interval;
    /// bare numbers are seconds).
    #[arg(long, value_name = "DURATION", value_parser = common::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
}

impl ServiceArgs {
    /// Applies the flags given to `config` (before it is validated).
    pub fn apply(&self, config: &mut Config) {
        if let Some(monitoring) = &self.monitoring {
            config.monitoring = Some(monitoring.clone());
        }
        if let Some(interval) = self.heartbeat_interval {
            config.heartbeat_interval = Some(interval);
        }
    }
}

/// The service side of one long-running command.
pub struct Service {
    program: &'static str,
    health: ProcessHealth,
    metrics: Option<Metrics>,
    bind: Option<String>,
    server: Option<MonitoringServer>,
    watchdog_stop: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// A service for `program` (`gilmsg-consumer`, ...) as `config` says.
    pub fn new(program: &'static str, config: &Config) -> Service {
        let health = ProcessHealth::new();
        Service {
            program,
            metrics: Some(Metrics::new(&health)),
            health,
            bind: config.monitoring.as_ref().map(|m| m.bind_text()),
            server: None,
            watchdog_stop: Arc::new(AtomicBool::new(false)),
            watchdog: None,
            heartbeat: None,
        }
    }

    /// Watches one component: its loop for `/live`, `/ready` and the
    /// watchdog, its counters for `/metrics`.
    pub fn watch(&mut self, name: &str, health: gilmsg::health::Health, metrics: ComponentMetrics) {
        self.health.watch(name, health);
        if let Some(all) = &mut self.metrics {
            all.add(metrics);
        }
    }

    /// Watches one more loop of a component whose counters were added
    /// already ([`Service::add_metrics`]): a component with several loops
    /// (the bridge's sockets and connections).
    pub fn watch_loop(&mut self, name: &str, health: gilmsg::health::Health) {
        self.health.watch(name, health);
    }

    /// Adds counters to `/metrics` without watching a loop: a tool's own
    /// (the firehose's) or a component's whose loops are watched one by one
    /// ([`Service::watch_loop`]).
    pub fn add_metrics(&mut self, metrics: ComponentMetrics) {
        if let Some(all) = &mut self.metrics {
            all.add(metrics);
        }
    }

    /// Starts publishing signed heartbeats every `heartbeat_interval` (if
    /// set) as `certname` (default: the config's certname rules), through
    /// `relay_inbound` on ZeroMQ, through the broker on AMQP; the
    /// heartbeat's publisher is watched like any component.
    pub fn start_heartbeat(
        &mut self,
        config: &Config,
        certname: Option<&str>,
    ) -> Result<(), Failure> {
        let Some(interval) = config.heartbeat_interval else {
            return Ok(());
        };
        // ZeroMQ: published through the relay. AMQP: through the broker,
        // to `config.topic_scheme()`'s heartbeat topic.
        if config.amqp.is_none() && config.relay_inbound.is_empty() {
            return Err(Failure::usage(
                "error: heartbeat_interval needs relay_inbound: heartbeats are published through the relay",
            ));
        }
        let mut builder = gilmsg::Bus::builder(config)
            .modname(HEARTBEAT_MODNAME)
            .active(true);
        if let Some(certname) = certname {
            builder = builder.certname(certname);
        }
        let bus = builder.build()?;
        let Some(name) = bus.signer_name().map(str::to_owned) else {
            return Err(Failure::usage(
                "error: heartbeats are signed, and this process has no identity to sign them with (set certname, or turn heartbeat_interval off)",
            ));
        };
        // Its own prefix (gilmsg_heartbeat_...): the process may have a
        // publisher of its own (the streaming logger).
        self.watch("heartbeat", bus.health(), bus.metrics().named("heartbeat"));
        let program = self.program;
        let pid = std::process::id();
        let started = unix_now();
        self.heartbeat = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sequence: u64 = 0;
            loop {
                ticks.tick().await;
                sequence += 1;
                let body = json!({
                    "name": name,
                    "program": program,
                    "pid": pid,
                    "interval": interval.as_secs_f64(),
                    "started": started,
                    "sequence": sequence,
                });
                // Plain (nobody ACKs a heartbeat); waits at most one
                // interval for a subscriber, so a tick never piles up.
                let no_recipients: [&str; 0] = [];
                match bus
                    .publish(HEARTBEAT_TOPIC, body, &no_recipients, interval)
                    .await
                {
                    Ok(_) => tracing::trace!(sequence, "heartbeat sent"),
                    Err(e) => tracing::debug!(sequence, "heartbeat not sent: {e}"),
                }
            }
        }));
        Ok(())
    }

    /// Starts the monitoring endpoint (if configured; its address goes on
    /// stderr as `<program>: monitoring on http://ADDRESS`) and the
    /// watchdog (if systemd asked for one). Before waiting for readiness,
    /// so `/ready` answers 503 meanwhile.
    pub fn start(&mut self) -> Result<(), Failure> {
        if let (Some(bind), Some(metrics)) = (&self.bind, self.metrics.take()) {
            // A port in use is the host's state, not a usage error: exit 3.
            let server = MonitoringServer::start(bind, self.health.clone(), metrics)?;
            eprintln!(
                "{}: monitoring on http://{}",
                self.program,
                server.local_addr()
            );
            tracing::info!("monitoring endpoint on {}", server.local_addr());
            self.server = Some(server);
        }
        if let Some(period) = sd_notify::watchdog_enabled() {
            let every = period / 2;
            tracing::info!(
                "systemd watchdog: pinging every {} while the socket threads turn",
                common::show_duration(every)
            );
            let health = self.health.clone();
            let stop = self.watchdog_stop.clone();
            let program = self.program;
            self.watchdog = std::thread::Builder::new()
                .name("gilmsg-watchdog".into())
                .spawn(move || watchdog(&health, &stop, every, program))
                .ok();
        }
        Ok(())
    }

    /// The process is ready: `/ready` turns 200, systemd gets `READY=1`.
    pub fn ready(&self) {
        self.health.mark_ready();
        notify(&[NotifyState::Ready]);
    }

    /// [`ready`](Self::ready), then `line` on stderr. In that order:
    /// whoever acts on the ready line (a supervisor, a test polling
    /// `/ready`) must find the process ready already.
    pub fn ready_and_say(&self, line: std::fmt::Arguments<'_>) {
        self.ready();
        eprintln!("{line}");
    }

    /// A stop began: `/ready` turns 503, systemd gets `STOPPING=1`, the
    /// heartbeats and the watchdog pings stop.
    pub fn stopping(&mut self) {
        if self.health.is_stopping() {
            return;
        }
        self.health.mark_stopping();
        notify(&[NotifyState::Stopping]);
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        self.watchdog_stop.store(true, Ordering::Release);
    }

    /// The process's health, as the endpoints report it.
    pub fn health(&self) -> &ProcessHealth {
        &self.health
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.watchdog_stop.store(true, Ordering::Release);
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        if let Some(thread) = self.watchdog.take() {
            let _ = thread.join();
        }
    }
}

pub use gilmsg::health::{HEARTBEAT_MODNAME, HEARTBEAT_TOPIC};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; otherwise nothing happens).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify systemd: {e}");
    }
}

/// Pings every `every` while every loop turns and the process is not
/// stopping; checks more often, so a recovered loop pings again soon.
fn watchdog(health: &ProcessHealth, stop: &AtomicBool, every: Duration, program: &str) {
    let step = every
        .min(Duration::from_millis(100))
        .max(Duration::from_millis(10));
    let mut waited = every;
    let mut was_live = true;
    while !stop.load(Ordering::Acquire) {
        if waited >= every {
            let live = health.is_live();
            if live {
                notify(&[NotifyState::Watchdog]);
                waited = Duration::ZERO;
            } else if was_live {
                tracing::error!(
                    "{program}: a socket thread is stuck or gone ({:?}); no more watchdog pings",
                    health.components_at(std::time::Instant::now())
                );
            }
            was_live = live;
        }
        std::thread::sleep(step);
        waited += step;
    }
}
