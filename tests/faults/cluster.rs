//! [`Cluster`]: a relay, a publisher and consumers, each on its own host
//! (network namespace) of one [`Net`], sharing a throwaway PKI.
//!
//! Consumers run `gilmsg-consumer --exec` with a handler that appends
//! `$GILMSG_MSG_ID` to `<dir>/<name>.handled`: that file is the ground
//! truth of what each recipient's handler accepted, against which every
//! receipt is checked ([`Tally::check`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gilmsg_testkit::bins;
use gilmsg_testkit::field;
use gilmsg_testkit::fixture::ed25519_pki;
use serde_json::Value;
use tempfile::TempDir;

use crate::net::{Host, Net, NsProc};
use crate::roles::ROLE_VAR;

/// The relay's inbound port (publishers and ACKs come in here).
pub const INBOUND: u16 = 9940;
/// The relay's outbound port (consumers and publishers' ACK listeners).
pub const OUTBOUND: u16 = 9941;
/// How long a process may take to print its ready line.
const READY: Duration = Duration::from_secs(20);
/// A publish may overrun its ACK timeout by this much and still count as
/// "on time" (scheduling, the outcome line's trip through a pipe).
pub const MARGIN_MS: f64 = 500.0;

/// Everything of one scenario. Fields drop in order: processes, then the
/// namespaces, then the directory.
pub struct Cluster {
    relay: Option<NsProc>,
    consumers: BTreeMap<String, NsProc>,
    proxy: Option<NsProc>,
    /// The relay's host.
    pub relay_host: Host,
    /// The publisher's host.
    pub pub_host: Host,
    /// Consumer hosts by certname.
    pub hosts: BTreeMap<String, Host>,
    /// The delaying proxy's host, if any.
    pub wan: Option<Host>,
    /// The switch.
    pub net: Net,
    /// Config for processes that talk to the relay directly.
    pub config: PathBuf,
    /// Config for processes that go through the proxy.
    pub proxied_config: Option<PathBuf>,
    dir: TempDir,
}

impl Cluster {
    /// A net with hosts `relay`, `pub` and one per consumer name, a PKI with
    /// `publisher` and those names, configs, and a running relay.
    pub fn new(scenario: &str, consumers: &[&str]) -> Cluster {
        let mut net = Net::new(scenario);
        let relay_host = net.host("relay");
        let pub_host = net.host("pub");
        let hosts: BTreeMap<String, Host> = consumers
            .iter()
            .map(|c| ((*c).to_owned(), net.host(c)))
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("gilmsg-faults-")
            .tempdir()
            .expect("tempdir");
        let ssldir = dir.path().join("pki");
        let identities = [&["publisher"], consumers].concat();
        ed25519_pki(&ssldir, "gilmsg-faults-ca", &identities).unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("direct.toml");
        write_config(&config, &ssldir, &relay_host.ip);
        let mut cluster = Cluster {
            relay: None,
            consumers: BTreeMap::new(),
            proxy: None,
            relay_host,
            pub_host,
            hosts,
            wan: None,
            net,
            config,
            proxied_config: None,
            dir,
        };
        cluster.start_relay();
        cluster
    }

    /// Adds a `wan` host running the delaying proxy in front of the relay
    /// (both ports), and a config that points at it.
    pub fn add_delay_proxy(&mut self, delay_ms: u64, jitter_ms: u64) {
        let wan = self.net.host("wan");
        let routes = [INBOUND, OUTBOUND]
            .map(|port| format!("{}:{port}>{}:{port}", wan.ip, self.relay_host.ip))
            .join(",");
        let exe = std::env::current_exe().expect("current_exe");
        let proxy = self.net.spawn_with(
            &wan,
            "proxy",
            &exe,
            &[],
            &[
                (ROLE_VAR, "proxy".into()),
                ("GILMSG_FAULTS_PROXY", routes),
                ("GILMSG_FAULTS_DELAY_MS", delay_ms.to_string()),
                ("GILMSG_FAULTS_JITTER_MS", jitter_ms.to_string()),
            ],
            false,
        );
        proxy.proc.expect_stderr("faults-proxy: ready", READY);
        let path = self.dir.path().join("proxied.toml");
        write_config(&path, &self.dir.path().join("pki"), &wan.ip);
        self.proxied_config = Some(path);
        self.proxy = Some(proxy);
        self.wan = Some(wan);
    }

    /// Starts (or restarts) the relay on its host, fixed ports.
    pub fn start_relay(&mut self) {
        let inbound = self.relay_host.endpoint(INBOUND);
        let outbound = self.relay_host.endpoint(OUTBOUND);
        let relay = self.net.spawn(
            &self.relay_host,
            "relay",
            bins!().relay,
            &["--inbound", &inbound, "--outbound", &outbound],
        );
        let line = relay.proc.expect_stderr("gilmsg-relay: ready", READY);
        assert_eq!(field(&line, "inbound"), Some(inbound.as_str()), "{line}");
        self.relay = Some(relay);
    }

    /// SIGKILLs the relay.
    pub fn kill_relay(&mut self) {
        self.relay.take().expect("relay running").kill();
    }

    /// Starts consumer `name` on its host (through the proxy if `proxied`)
    /// and waits for its ready line.
    pub fn start_consumer(&mut self, name: &str, proxied: bool) {
        self.start_consumer_with(name, proxied, "");
    }

    /// [`Cluster::start_consumer`] whose handler, after recording the
    /// msg_id, also runs `then` (e.g. `sleep 0.2`) before it exits 0.
    pub fn start_consumer_with(&mut self, name: &str, proxied: bool, then: &str) {
        let host = self.hosts[name].clone();
        let config = if proxied {
            self.proxied_config.clone().expect("add_delay_proxy first")
        } else {
            self.config.clone()
        };
        let handled = self.handled_path(name);
        let mut exec = format!("echo \"$GILMSG_MSG_ID\" >> '{}'", handled.display());
        if !then.is_empty() {
            exec = format!("{exec} && {then}");
        }
        let config = config.display().to_string();
        let consumer = self.net.spawn(
            &host,
            name,
            bins!().consumer,
            &["--config", &config, "--certname", name, "--exec", &exec],
        );
        let line = consumer.proc.expect_stderr("gilmsg-consumer: ready", READY);
        assert_eq!(field(&line, "certname"), Some(name), "{line}");
        assert_eq!(field(&line, "endpoints"), Some("1/1"), "{line}");
        self.consumers.insert(name.to_owned(), consumer);
    }

    /// Starts every consumer.
    pub fn start_consumers(&mut self, proxied: bool) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            self.start_consumer(&name, proxied);
        }
    }

    /// SIGKILLs consumer `name`.
    pub fn kill_consumer(&mut self, name: &str) {
        self.consumers
            .remove(name)
            .unwrap_or_else(|| panic!("{name} is not running"))
            .kill();
    }

    /// Consumer `name`'s counters (SIGUSR1 and its stats line).
    pub fn consumer_stats(&self, name: &str) -> gilmsg::Stats {
        let c = &self.consumers[name];
        c.proc
            .signal(nix::sys::signal::Signal::SIGUSR1)
            .unwrap_or_else(|e| panic!("{e}"));
        let line = c
            .proc
            .expect_stderr("gilmsg-consumer: stats", Duration::from_secs(5));
        gilmsg_testkit::parse_stats(&line)
    }

    /// The long-lived publisher on the `pub` host.
    pub fn publisher(&self) -> Publisher {
        let exe = std::env::current_exe().expect("current_exe");
        let proc = self.net.spawn_with(
            &self.pub_host,
            "publisher",
            &exe,
            &[],
            &[
                (ROLE_VAR, "publisher".into()),
                ("GILMSG_FAULTS_CONFIG", self.config.display().to_string()),
            ],
            true,
        );
        proc.proc
            .wait_stdout("\"ready\"", READY)
            .unwrap_or_else(|e| panic!("{e}"));
        Publisher { proc }
    }

    /// Starts `gilmsg-logger args` on the `pub` host (stdin: /dev/null).
    pub fn logger(&self, args: &[&str]) -> NsProc {
        let config = self.config.display().to_string();
        let mut all = vec!["--config", config.as_str(), "--certname", "publisher"];
        all.extend_from_slice(args);
        self.net
            .spawn(&self.pub_host, "logger", bins!().logger, &all)
    }

    /// Where consumer `name`'s handler appends the msg_ids it accepted.
    pub fn handled_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.handled"))
    }

    /// msg_id -> how many times `name`'s handler ran for it.
    pub fn handled(&self, name: &str) -> HashMap<String, u32> {
        let text = std::fs::read_to_string(self.handled_path(name)).unwrap_or_default();
        let mut counts = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            *counts.entry(line.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// [`Cluster::handled`] for every consumer.
    pub fn handled_all(&self) -> BTreeMap<String, HashMap<String, u32>> {
        self.hosts
            .keys()
            .map(|name| (name.clone(), self.handled(name)))
            .collect()
    }

    /// Waits (bounded) until every one of `names` has handled every one of
    /// `ids`; returns how long that took.
    pub fn wait_all_handled(&self, names: &[&str], ids: &[String], limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let handled = self.handled_all();
            let lacking: Vec<(&str, &String)> = names
                .iter()
                .flat_map(|n| ids.iter().map(move |id| (*n, id)))
                .filter(|(n, id)| !handled[*n].contains_key(*id))
                .collect();
            if lacking.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "never handled within {limit:?}: {lacking:?}"
            );
            // Polls files other processes append to; paces the loop only.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `name`'s handler has run `n` times in all.
    pub fn wait_handled_lines(&self, name: &str, n: u32, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let have: u32 = self.handled(name).values().sum();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: handler ran {have} times, waited for {n}"
            );
            // Polls a file another process appends to; paces the loop only.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn write_config(path: &Path, ssldir: &Path, relay_ip: &str) {
    let text = format!(
        r#"# Written by the gilmsg fault tests (tests/faults.rs).
topic_prefix = "org.gilmsg.faults"
environment = "dev"
ssldir = {ssldir:?}
sign_messages = true
validate_signatures = true
active = true
relay_inbound = ["tcp://{relay_ip}:{INBOUND}"]
ack_timeout = "3s"
resend_initial = "50ms"
resend_min = "20ms"
resend_max = "500ms"
zmq_reconnect_ivl = "50ms"
zmq_reconnect_ivl_max = "300ms"

[endpoints]
relay_outbound = "tcp://{relay_ip}:{OUTBOUND}"
"#,
        ssldir = ssldir.display().to_string(),
    );
    std::fs::write(path, text).expect("write config");
}

/// The result of one publish, as the publisher role (or a logger receipt)
/// reported it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Sequence number within the publisher process.
    pub seq: u64,
    /// `ok`, `timeout`, `error` or `killed`.
    pub kind: String,
    /// The message id (absent for `error` and `killed`).
    pub msg_id: Option<String>,
    /// Who was named.
    pub recipients: Vec<String>,
    /// Who acked.
    pub acked: Vec<String>,
    /// Who did not.
    pub missing: Vec<String>,
    /// How many times it was sent.
    pub sends: u64,
    /// From the call to its return.
    pub elapsed_ms: f64,
    /// The ACK timeout given.
    pub timeout_ms: f64,
    /// The error, for `error`.
    pub error: Option<String>,
}

impl Outcome {
    fn from_json(v: &Value) -> Outcome {
        let strings = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Outcome {
            seq: v["seq"].as_u64().unwrap_or(0),
            kind: v["outcome"].as_str().unwrap_or("?").to_owned(),
            msg_id: v["msg_id"].as_str().map(str::to_owned),
            recipients: strings("recipients"),
            acked: strings("acked"),
            missing: strings("missing"),
            sends: v["sends"].as_u64().unwrap_or(0),
            elapsed_ms: v["elapsed_ms"].as_f64().unwrap_or(0.0),
            timeout_ms: v["timeout_ms"].as_f64().unwrap_or(0.0),
            error: v["error"].as_str().map(str::to_owned),
        }
    }

    /// A receipt line of `gilmsg-logger --print-receipt`.
    pub fn from_receipt(line: &str, recipients: &[&str], timeout_ms: f64) -> Outcome {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a receipt line ({e}): {line}"));
        Outcome {
            seq: 0,
            kind: "ok".into(),
            msg_id: v["msg_id"].as_str().map(str::to_owned),
            recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
            acked: v["acks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["recipient"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            missing: Vec::new(),
            sends: v["sends"].as_u64().unwrap_or(0),
            elapsed_ms: v["elapsed_ms"].as_f64().unwrap_or(0.0),
            timeout_ms,
            error: None,
        }
    }

    /// A publisher process killed before it could report anything.
    pub fn killed(recipients: &[&str]) -> Outcome {
        Outcome {
            seq: 0,
            kind: "killed".into(),
            msg_id: None,
            recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
            acked: Vec::new(),
            missing: Vec::new(),
            sends: 0,
            elapsed_ms: 0.0,
            timeout_ms: 0.0,
            error: None,
        }
    }

    /// Whether this is a success.
    pub fn ok(&self) -> bool {
        self.kind == "ok"
    }
}

/// The publisher role on the `pub` host, driven over its stdin.
pub struct Publisher {
    proc: NsProc,
}

impl Publisher {
    /// Asks for `count` publishes to `recipients`, `interval_ms` apart.
    pub fn publish(&mut self, recipients: &[&str], timeout_ms: u64, count: u32, interval_ms: u64) {
        self.publish_window(recipients, timeout_ms, count, interval_ms, 1);
    }

    /// [`Publisher::publish`] with up to `window` publishes in flight.
    pub fn publish_window(
        &mut self,
        recipients: &[&str],
        timeout_ms: u64,
        count: u32,
        interval_ms: u64,
        window: u32,
    ) {
        self.proc.send_line(&format!(
            "pub {} {timeout_ms} {count} {interval_ms} {window}",
            recipients.join(",")
        ));
    }

    /// Waits for the next `start` line: the publish call is being made.
    pub fn next_start(&self, limit: Duration) -> u64 {
        loop {
            let v = self.next_json(limit);
            if v["event"] == "start" {
                return v["seq"].as_u64().unwrap_or(0);
            }
        }
    }

    /// Waits for the next outcome line.
    pub fn next_outcome(&self, limit: Duration) -> Outcome {
        loop {
            let v = self.next_json(limit);
            if v["event"] == "outcome" {
                return Outcome::from_json(&v);
            }
        }
    }

    /// One publish, waited for.
    pub fn publish_one(&mut self, recipients: &[&str], timeout_ms: u64) -> Outcome {
        self.publish(recipients, timeout_ms, 1, 0);
        self.next_outcome(Duration::from_millis(timeout_ms) + Duration::from_secs(10))
    }

    fn next_json(&self, limit: Duration) -> Value {
        loop {
            let line = self.proc.proc.next_stdout(limit).unwrap_or_else(|| {
                panic!(
                    "publisher: no output within {limit:?}; stderr: {:?}",
                    self.proc.proc.stderr_so_far()
                )
            });
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return v;
            }
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Publishes made.
    pub runs: u32,
    /// Publishes that returned a receipt.
    pub ok: u32,
    /// Publishes that timed out.
    pub timeouts: u32,
    /// Publishes that failed otherwise, or whose publisher was killed.
    pub other: u32,
    /// Receipts for which some recipient's handler did not record the msg_id.
    pub false_positives: u32,
    /// Recipients listed as acked (receipt or timeout) whose handler did not
    /// record the msg_id.
    pub false_acks: u32,
    /// Publishes that returned later than their timeout + [`MARGIN_MS`].
    pub overdue: u32,
    /// (recipient, msg_id) pairs whose handler ran more than once.
    pub handler_repeats: u32,
    /// Longest publish call.
    pub max_elapsed_ms: f64,
    /// Every outcome, in order.
    pub outcomes: Vec<Outcome>,
}

impl Tally {
    /// Records one outcome (counts only; [`Tally::check`] cross-checks).
    pub fn record(&mut self, outcome: &Outcome) {
        self.runs += 1;
        match outcome.kind.as_str() {
            "ok" => self.ok += 1,
            "timeout" => self.timeouts += 1,
            _ => self.other += 1,
        }
        if outcome.timeout_ms > 0.0 && outcome.elapsed_ms > outcome.timeout_ms + MARGIN_MS {
            self.overdue += 1;
        }
        self.max_elapsed_ms = self.max_elapsed_ms.max(outcome.elapsed_ms);
        self.outcomes.push(outcome.clone());
    }

    /// Cross-checks every recorded outcome against the handler files: a
    /// receipt for a msg_id some recipient's handler lacks is a false
    /// positive. Also counts handler repeats. Returns the problems found.
    pub fn check(&mut self, handled: &BTreeMap<String, HashMap<String, u32>>) -> Vec<String> {
        let mut problems = Vec::new();
        self.false_positives = 0;
        self.false_acks = 0;
        for o in &self.outcomes {
            let Some(id) = &o.msg_id else { continue };
            let lacking: Vec<&String> = o
                .recipients
                .iter()
                .filter(|r| !handled.get(*r).is_some_and(|h| h.contains_key(id)))
                .collect();
            if o.ok() && !lacking.is_empty() {
                self.false_positives += 1;
                problems.push(format!(
                    "FALSE POSITIVE: receipt for {id} but no handler record at {lacking:?}"
                ));
            }
            for r in &o.acked {
                if !handled.get(r).is_some_and(|h| h.contains_key(id)) {
                    self.false_acks += 1;
                    problems.push(format!("{r} listed as acked for {id} but never handled it"));
                }
            }
        }
        self.handler_repeats = handled
            .values()
            .flat_map(|h| h.values())
            .filter(|&&n| n > 1)
            .count() as u32;
        problems
    }
}
