//! The monitoring endpoint of a long-running process: `/live`, `/ready`
//! and `/metrics` over HTTP, as fedora-messaging's `[monitoring]` section
//! turns on.
//!
//! - `/live`: 200 while every component's transport loop turns (see
//!   [`crate::health`]), 503 once one is stuck or has ended.
//! - `/ready`: 200 once the process said it was ready (the moment it
//!   prints its ready line) while it is live and not stopping; 503 before,
//!   after, and whenever a loop is stuck or gone.
//! - `/metrics`: the components' counters in the Prometheus text format
//!   (version 0.0.4), encoded by `prometheus-client` from the very
//!   counters the stats lines print; each metric's help names its stats
//!   name. Names are `gilmsg_<component>_<stats name with _>`, counters
//!   end in `_total`, per-reason families have a `reason` label.
//!
//! The bodies of `/live` and `/ready` are one JSON object naming each
//! component's loop state, for a person with curl. The server is
//! `tiny_http` on its own thread: blocking, small, and independent of the
//! process's async runtime, so a stalled runtime still answers `/live`
//! with the truth.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::error::{Error, Result};
use crate::health::{LoopState, ProcessHealth};
use crate::stats::ExportAll;

/// One component's counters, for [`Metrics::add`]: from
/// [`Consumer::metrics`](crate::Consumer::metrics),
/// [`Bus::metrics`](crate::Bus::metrics) or
/// [`Relay::metrics`](crate::Relay::metrics).
#[derive(Clone)]
pub struct ComponentMetrics {
    pub(crate) component: &'static str,
    pub(crate) source: Arc<dyn ExportAll>,
}

impl fmt::Debug for ComponentMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentMetrics")
            .field("component", &self.component)
            .finish()
    }
}

impl ComponentMetrics {
    /// The same counters under another component name (`gilmsg_<name>_`):
    /// for a second component of one kind in a process, such as the
    /// heartbeat's publisher beside the application's.
    pub fn named(mut self, component: &'static str) -> Self {
        self.component = component;
        self
    }
}

/// Counters a tool keeps itself (the firehose's), for
/// [`ComponentMetrics::from_source`]: each one by its dotted stats name, as
/// the tool's stats line prints it.
pub trait CounterSource: Send + Sync + fmt::Debug {
    /// Every counter now: `(stats name, help, value)`.
    fn counters(&self) -> Vec<(String, &'static str, u64)>;
}

#[derive(Debug)]
struct SourceExport(Arc<dyn CounterSource>);

impl ExportAll for SourceExport {
    fn export_all(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        for (name, help, value) in self.0.counters() {
            let metric = prometheus_client::metrics::counter::ConstCounter::new(value);
            let name = name.replace(['.', '-'], "_");
            metric.encode(out.encode_descriptor(&name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

impl ComponentMetrics {
    /// A tool's own counters under `gilmsg_<component>_<stats name with _>_total`.
    pub fn from_source(component: &'static str, source: Arc<dyn CounterSource>) -> Self {
        ComponentMetrics {
            component,
            source: Arc::new(SourceExport(source)),
        }
    }
}

#[derive(Debug)]
struct ComponentCollector(Arc<dyn ExportAll>);

impl Collector for ComponentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0.export_all(&mut encoder)
    }
}

/// `gilmsg_live` and `gilmsg_ready`, 0 or 1, as the endpoints answer.
#[derive(Debug)]
struct HealthCollector(ProcessHealth);

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let live = ConstGauge::new(i64::from(self.0.is_live()));
        live.encode(encoder.encode_descriptor(
            "live",
            "1 while every transport loop turns (as /live)",
            None,
            MetricType::Gauge,
        )?)?;
        let ready = ConstGauge::new(i64::from(self.0.is_ready()));
        ready.encode(encoder.encode_descriptor(
            "ready",
            "1 while the process is ready (as /ready)",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// What a process's `/metrics` shows: its components' counters.
pub struct Metrics {
    registry: Registry,
    components: Vec<&'static str>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics of a process whose health is `health`
    /// (`gilmsg_live`, `gilmsg_ready`), and no component yet.
    pub fn new(health: &ProcessHealth) -> Metrics {
        let mut registry = Registry::with_prefix("gilmsg");
        registry.register_collector(Box::new(HealthCollector(health.clone())));
        Metrics {
            registry,
            components: Vec::new(),
        }
    }

    /// Adds one component's counters, under `gilmsg_<component>_`. Add at
    /// most one component of each kind (consumer, publisher, relay).
    /// A second component under a name already added is left out (with a
    /// warning): two sets of samples under one name are not valid
    /// Prometheus text. Rename it with [`ComponentMetrics::named`].
    pub fn add(&mut self, metrics: ComponentMetrics) {
        if self.components.contains(&metrics.component) {
            tracing::warn!(
                component = metrics.component,
                "a second component with this name is left out of /metrics"
            );
            return;
        }
        self.components.push(metrics.component);
        self.registry
            .sub_registry_with_prefix(metrics.component)
            .register_collector(Box::new(ComponentCollector(metrics.source)));
    }

    /// The Prometheus text (version 0.0.4) of every metric now.
    pub fn encode(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            .map_err(|_| Error::InvalidArgument("cannot encode the metrics".into()))?;
        Ok(text)
    }
}

/// The running HTTP endpoint; it stops when dropped.
pub struct MonitoringServer {
    server: Arc<tiny_http::Server>,
    address: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for MonitoringServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitoringServer")
            .field("address", &self.address)
            .finish()
    }
}

impl MonitoringServer {
    /// Listens on `bind` (`ADDRESS:PORT`; port 0 picks a free one) and
    /// answers on a thread of its own.
    pub fn start(bind: &str, health: ProcessHealth, metrics: Metrics) -> Result<MonitoringServer> {
        let server = tiny_http::Server::http(bind).map_err(|e| {
            Error::os(
                format!("cannot listen on {bind} for monitoring"),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let address = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::InvalidArgument(format!("{bind} is not an IP address")))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("gilmsg-monitoring".into())
            .spawn(move || serve(&serving, &health, &metrics))
            .map_err(|e| Error::os("cannot start the monitoring thread", e))?;
        Ok(MonitoringServer {
            server,
            address,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MonitoringServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, health: &ProcessHealth, metrics: &Metrics) {
    for request in server.incoming_requests() {
        let (status, content_type, body) = answer(request.method(), request.url(), health, metrics);
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = header {
            response = response.with_header(header);
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!("monitoring: cannot answer: {e}");
        }
    }
}

/// The status, content type and body for one request.
fn answer(
    method: &tiny_http::Method,
    url: &str,
    health: &ProcessHealth,
    metrics: &Metrics,
) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, "text/plain", "only GET\n".into());
    }
    let path = url.split('?').next().unwrap_or(url);
    let report = |ok: bool| {
        let components: serde_json::Map<String, serde_json::Value> = health
            .components_at(Instant::now())
            .into_iter()
            .map(|c| {
                // A turning loop without its connection is reconnecting.
                let shown = if c.state == LoopState::Running && !c.connected {
                    "reconnecting"
                } else {
                    c.state.as_str()
                };
                (c.name, json!(shown))
            })
            .collect();
        let body = json!({
            "status": if ok { "ok" } else { "unavailable" },
            "said_ready": health.said_ready(),
            "stopping": health.is_stopping(),
            "components": components,
        });
        (if ok { 200 } else { 503 }, JSON, format!("{body}\n"))
    };
    match path {
        "/live" => report(health.is_live()),
        "/ready" => report(health.is_ready()),
        "/metrics" => match metrics.encode() {
            Ok(text) => (200, prometheus_text::CONTENT_TYPE, text),
            Err(e) => (500, "text/plain", format!("{e}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found: try /live, /ready or /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ConsumerCounters, RelayCounters};
    use std::time::Duration;

    #[test]
    fn metrics_are_prometheus_text_of_the_very_counters_the_stats_print() {
        let health = ProcessHealth::new();
        let consumer = Arc::new(ConsumerCounters::default());
        consumer.received.add(3);
        consumer.rejected.bump("bad_signature");
        consumer.ack_latency.observe(Duration::from_millis(3));
        consumer.ack_latency.observe(Duration::from_secs(60));
        let relay = Arc::new(RelayCounters::default());
        relay.forwarded.add(7);
        let mut metrics = Metrics::new(&health);
        metrics.add(ComponentMetrics {
            component: "consumer",
            source: consumer.clone(),
        });
        metrics.add(ComponentMetrics {
            component: "relay",
            source: relay.clone(),
        });
        // Left out: the name is taken.
        metrics.add(ComponentMetrics {
            component: "relay",
            source: Arc::new(RelayCounters::default()),
        });
        let text = metrics.encode().unwrap();
        for line in [
            "# TYPE gilmsg_consumer_message_received_total counter",
            "gilmsg_consumer_message_received_total 3",
            "gilmsg_consumer_rejected_total{reason=\"bad_signature\"} 1",
            "gilmsg_consumer_ack_latency_seconds_bucket{le=\"0.005\"} 1",
            "gilmsg_consumer_ack_latency_seconds_bucket{le=\"10\"} 1",
            "gilmsg_consumer_ack_latency_seconds_bucket{le=\"+Inf\"} 2",
            "gilmsg_consumer_ack_latency_seconds_count 2",
            "gilmsg_relay_forwarded_total 7",
            "gilmsg_live 1",
            "gilmsg_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE gilmsg_relay_forwarded_total").count(),
            1,
            "{text}"
        );
        assert_eq!(consumer.ack_latency.count(), 2);
    }
}
