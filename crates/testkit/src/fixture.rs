//! [`Bus`]: one throwaway bus: a PKI, a relay process, a config file.
//!
//! ```ignore
//! // In an integration test of gilmsg-cli (where `bins!` compiles):
//! let bus = gilmsg_testkit::Bus::start(gilmsg_testkit::bins!(), &["a", "b"]);
//! let consumers = bus.consumers(&["a", "b"], &[]);
//! let publisher = bus.publisher();
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use gilmsg_crypto::{pki, Identity};
use tempfile::TempDir;

use crate::child::{run_tool, run_tool_env, Running, ToolOutput};
use crate::guard::{self, Registry};
use crate::{field, Bins};
use crate::{ENVIRONMENT, MODNAME, PUBLISHER, READY_TIMEOUT, TOPIC_PREFIX};

/// A temporary bus: CA and identities in `ssldir`, a `gilmsg-relay` process
/// on ephemeral loopback ports, and `config_path` pointing at both.
pub struct Bus {
    dir: TempDir,
    /// The PKI directory (`ca.crt`, `crl.pem`, `<name>.crt`, `<name>.key`).
    pub ssldir: PathBuf,
    /// The config file every process of this bus uses.
    pub config_path: PathBuf,
    /// Where publishers connect (the relay's inbound SUB).
    pub inbound: String,
    /// Where consumers connect (the relay's outbound XPUB).
    pub outbound: String,
    relay: Running,
    registry: Registry,
    bins: Bins,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("dir", &self.dir.path())
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .finish()
    }
}

/// `<prefix>.<env>.<MODNAME>.<sub>`: the topic an in-process publisher's
/// `publish(sub, ..)` uses on every test bus (ZeroMQ [`Bus`] and
/// [`crate::amqp::AmqpBus`] alike).
pub(crate) fn publisher_topic(sub: &str) -> String {
    format!("{TOPIC_PREFIX}.{ENVIRONMENT}.{MODNAME}.{sub}")
}

/// The ACK topic of every test bus.
pub(crate) fn ack_topic() -> String {
    format!("{TOPIC_PREFIX}.{ENVIRONMENT}.gilmsg.ack")
}

/// An in-process publisher from `config`: modname [`MODNAME`], signing as
/// [`PUBLISHER`], active (it connects, as a test publisher on any bus).
pub(crate) fn build_publisher(config: &gilmsg::Config) -> gilmsg::Bus {
    publisher_builder(config)
        .build()
        .unwrap_or_else(|e| panic!("build publisher: {e}"))
}

/// The builder of the tests' in-process publisher: [`PUBLISHER`] through
/// the relay.
pub fn publisher_builder(config: &gilmsg::Config) -> gilmsg::BusBuilder {
    gilmsg::Bus::builder(config)
        .modname(MODNAME)
        .certname(PUBLISHER)
        .active(true)
}

impl Bus {
    /// A bus with identities for [`PUBLISHER`] and each of `names`, whose
    /// processes are the `bins` of this test run (`bins!()`).
    pub fn start(bins: Bins, names: &[&str]) -> Bus {
        Bus::start_with(bins, names, "")
    }

    /// Like [`Bus::start`], with extra top-level TOML lines in the config
    /// (e.g. `max_message_size = 4096`).
    pub fn start_with(bins: Bins, names: &[&str], extra_toml: &str) -> Bus {
        let registry = guard::current();
        let dir = tempfile::Builder::new()
            .prefix("gilmsg-test-")
            .tempdir()
            .expect("tempdir");
        let ssldir = dir.path().join("pki");
        let identities = [&[PUBLISHER], names].concat();
        ed25519_pki(&ssldir, "gilmsg-test-ca", &identities).unwrap_or_else(|e| panic!("{e}"));

        let mut command = Command::new(bins.relay);
        // Unlimited queues in the relay: tests that flood the bus count
        // every frame at the consumer, so the relay must not drop any.
        command.args([
            "--inbound",
            "tcp://127.0.0.1:*",
            "--outbound",
            "tcp://127.0.0.1:*",
            "--high-water-mark",
            "0",
        ]);
        let relay = Running::spawn_in(&registry, "relay", command);
        let line = relay.expect_stderr("gilmsg-relay: ready", READY_TIMEOUT);
        let inbound = field(&line, "inbound").expect("inbound=").to_owned();
        let outbound = field(&line, "outbound").expect("outbound=").to_owned();
        assert!(inbound.starts_with("tcp://127.0.0.1:"), "{line}");
        assert!(outbound.starts_with("tcp://127.0.0.1:"), "{line}");

        let config_path = dir.path().join("bus.toml");
        let bus = Bus {
            ssldir,
            config_path,
            inbound,
            outbound,
            relay,
            registry,
            bins,
            dir,
        };
        bus.write_config(
            &bus.config_path,
            extra_toml,
            &format!("[{:?}]", bus.outbound),
        );
        bus
    }

    /// The relay process (to pause it with SIGSTOP, say).
    pub fn relay(&self) -> &Running {
        &self.relay
    }

    /// The executables this bus runs.
    pub fn bins(&self) -> Bins {
        self.bins
    }

    /// The temporary directory holding everything of this bus.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a config for this bus at `path`, with `extra_toml` top-level
    /// lines and `relay_outbound` set to `outbound_value` (TOML syntax).
    pub fn write_config(&self, path: &Path, extra_toml: &str, outbound_value: &str) {
        let text = format!(
            r#"# Written by the gilmsg integration tests.
topic_prefix = "{TOPIC_PREFIX}"
environment = "{ENVIRONMENT}"
ssldir = {ssldir:?}
sign_messages = true
validate_signatures = true
active = true
relay_inbound = [{inbound:?}]
ack_timeout = "5s"
{extra_toml}

[endpoints]
relay_outbound = {outbound_value}
"#,
            ssldir = self.ssldir.display().to_string(),
            inbound = self.inbound,
        );
        std::fs::write(path, text).expect("write config");
    }

    /// The bus's configuration, as the library reads it.
    pub fn config(&self) -> gilmsg::Config {
        gilmsg::Config::from_path(&self.config_path).expect("fixture config loads")
    }

    /// Issues another identity from this bus's CA.
    pub fn issue(&self, name: &str) {
        self.issue_with(name, &pki::IssueOptions::default());
    }

    /// Issues an identity with explicit validity.
    pub fn issue_with(&self, name: &str, options: &pki::IssueOptions) {
        pki::issue(&self.ssldir, name, options).unwrap_or_else(|e| panic!("issue {name}: {e}"));
    }

    /// Issues an identity from this bus's CA that expired yesterday (valid
    /// from three days ago).
    pub fn issue_expired(&self, name: &str) {
        const DAY: Duration = Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        self.issue_with(
            name,
            &pki::IssueOptions {
                not_before: now - 3 * DAY,
                not_after: now - DAY,
                replace: false,
            },
        );
    }

    /// Revokes an identity (rewrites `crl.pem`).
    pub fn revoke(&self, name: &str) {
        pki::revoke(&self.ssldir, name).unwrap_or_else(|e| panic!("revoke {name}: {e}"));
    }

    /// Loads an identity of this bus's PKI, to sign with.
    pub fn identity(&self, name: &str) -> Identity {
        Identity::load(&self.ssldir, name).unwrap_or_else(|e| panic!("load {name}: {e}"))
    }

    /// The frames of the honest ACK of `message` (right msg_id and digest)
    /// signed by this bus's identity `signer`, on this bus's ACK topic.
    pub fn honest_ack(&self, message: &gilmsg_proto::Envelope, signer: &str) -> Vec<Vec<u8>> {
        crate::forge::frames(&crate::forge::honest_ack(
            &self.ack_topic(),
            message,
            &self.identity(signer),
        ))
    }

    /// `<prefix>.<env>.<MODNAME>.<sub>`: the topic `publisher().publish(sub, ..)` uses.
    pub fn topic(&self, sub: &str) -> String {
        publisher_topic(sub)
    }

    /// `<prefix>.<env>.`: what every consumer subscribes to by default.
    pub fn prefix(&self) -> String {
        format!("{TOPIC_PREFIX}.{ENVIRONMENT}.")
    }

    /// The ACK topic.
    pub fn ack_topic(&self) -> String {
        ack_topic()
    }

    /// An in-process publisher signing as [`PUBLISHER`], through the relay.
    pub fn publisher(&self) -> gilmsg::Bus {
        self.publisher_from(&self.config())
    }

    /// An in-process publisher built from a (modified) config.
    pub fn publisher_from(&self, config: &gilmsg::Config) -> gilmsg::Bus {
        build_publisher(config)
    }

    /// [`Bus::publisher`] with its socket loop as a task on the current
    /// tokio runtime
    /// ([`gilmsg::BusBuilder::run_on_current_runtime`]).
    pub fn publisher_on_runtime(&self) -> gilmsg::Bus {
        publisher_builder(&self.config())
            .run_on_current_runtime(true)
            .build()
            .unwrap_or_else(|e| panic!("build publisher on the runtime: {e}"))
    }

    /// Starts `gilmsg-consumer --config <bus> --certname <name> --json <args>`
    /// and waits for its ready line.
    pub fn consumer(&self, name: &str, args: &[&str]) -> Consumer {
        let consumer = self.spawn_consumer(name, args);
        consumer.wait_ready();
        consumer
    }

    /// Starts several consumers at once, then waits for each to be ready.
    pub fn consumers(&self, names: &[&str], args: &[&str]) -> Vec<Consumer> {
        let consumers: Vec<Consumer> = names.iter().map(|n| self.spawn_consumer(n, args)).collect();
        for c in &consumers {
            c.wait_ready();
        }
        consumers
    }

    /// Like [`Bus::consumer`], reading the config file `config` (e.g. one
    /// written by [`Bus::write_config`]) and logging with the `GILMSG_LOG`
    /// filter `log` (`"debug"` to see why messages are refused).
    pub fn consumer_with(&self, name: &str, config: &Path, log: &str, args: &[&str]) -> Consumer {
        let consumer = self.spawn_consumer_with(name, config, log, args);
        consumer.wait_ready();
        consumer
    }

    fn spawn_consumer(&self, name: &str, args: &[&str]) -> Consumer {
        self.spawn_consumer_with(name, &self.config_path, "warn", args)
    }

    fn spawn_consumer_with(&self, name: &str, config: &Path, log: &str, args: &[&str]) -> Consumer {
        Consumer::spawn(&self.registry, self.bins, name, config, log, args)
    }

    /// Runs `gilmsg-logger <args>` with `stdin`, bounded by `limit`.
    pub fn logger(&self, args: &[&str], stdin: &str, limit: Duration) -> ToolOutput {
        run_tool(self.bins.logger, args, stdin, limit, &self.registry)
    }

    /// Starts any command as a child of this bus's test: registered with
    /// the guard, killed when the returned handle is dropped.
    pub fn spawn(&self, name: &str, command: Command) -> Running {
        Running::spawn_in(&self.registry, name, command)
    }

    /// Runs the tool `program` (e.g. `gilmsg-logger`, see [`Bins::get`])
    /// with `args`, `stdin` and extra environment variables, bounded by
    /// `limit`.
    pub fn run_with_env(
        &self,
        program: &str,
        args: &[&str],
        stdin: &str,
        env: &[(&str, &str)],
        limit: Duration,
    ) -> ToolOutput {
        run_tool_env(
            self.bins.get(program),
            args,
            stdin,
            env,
            limit,
            &self.registry,
        )
    }

    /// The relay's counters (SIGUSR1, then its stats line).
    pub fn relay_stats(&self) -> gilmsg::Stats {
        self.relay.stats("gilmsg-relay: stats")
    }
}

/// A running `gilmsg-consumer` process.
pub struct Consumer {
    /// Its certname.
    pub name: String,
    /// Whether it sends ACKs (started without `--no-ack`).
    pub acks: bool,
    child: Running,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("pid", &self.child.pid())
            .finish()
    }
}

impl Consumer {
    /// Starts `gilmsg-consumer --config <config> --certname <name> --json
    /// <args>` with the `GILMSG_LOG` filter `log`, registered with
    /// `registry`; not waited for (see [`Consumer::wait_ready`]).
    pub fn spawn(
        registry: &Registry,
        bins: Bins,
        name: &str,
        config: &Path,
        log: &str,
        args: &[&str],
    ) -> Consumer {
        let mut command = bins.consumer_command(config, name, &[&["--json"], args].concat());
        command.env("GILMSG_LOG", log);
        Consumer {
            name: name.to_owned(),
            acks: !args.contains(&"--no-ack"),
            child: Running::spawn_in(registry, name, command),
        }
    }

    /// Waits for its ready line (all its endpoints connected).
    pub fn wait_ready(&self) {
        let line = self
            .child
            .expect_stderr("gilmsg-consumer: ready", READY_TIMEOUT);
        let signs_as = if self.acks { self.name.as_str() } else { "-" };
        assert_eq!(field(&line, "certname"), Some(signs_as), "{line}");
        assert_eq!(field(&line, "endpoints"), Some("1/1"), "{line}");
    }

    /// Its counters now (SIGUSR1, then its stats line).
    pub fn stats(&self) -> gilmsg::Stats {
        self.child.stats("gilmsg-consumer: stats")
    }

    /// Polls its counters until `done` holds, for at most `limit`.
    pub fn wait_stats(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&gilmsg::Stats) -> bool,
    ) -> gilmsg::Stats {
        self.child
            .wait_stats("gilmsg-consumer: stats", what, limit, done)
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_stdout(&self, needle: &str, limit: Duration) -> String {
        self.child
            .wait_stdout(needle, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next stdout line within `limit`, if any.
    pub fn next_stdout(&self, limit: Duration) -> Option<String> {
        self.child.next_stdout(limit)
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.child.stderr_so_far()
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL and reap: a crash, nothing flushed.
    pub fn kill(mut self) {
        self.child.kill();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.child.terminate(Duration::from_secs(5))
    }

    /// SIGTERM, wait, and return every stderr line it wrote.
    pub fn stop_and_stderr(mut self) -> Vec<String> {
        self.child.terminate(Duration::from_secs(5));
        self.child.stderr_until_closed(Duration::from_secs(5))
    }
}

/// A throwaway Ed25519 PKI in `ssldir` (made by `gilmsg-pki`'s own code):
/// a CA called `ca_name`, valid for a day, and an identity for each of
/// `names`.
pub fn ed25519_pki(ssldir: &Path, ca_name: &str, names: &[&str]) -> Result<(), String> {
    pki::init(
        ssldir,
        &pki::InitOptions {
            ca_name: ca_name.into(),
            validity: Duration::from_secs(86_400),
        },
    )
    .map_err(|e| format!("pki init {}: {e}", ssldir.display()))?;
    for name in names {
        pki::issue(ssldir, name, &pki::IssueOptions::default())
            .map_err(|e| format!("issue {name}: {e}"))?;
    }
    Ok(())
}

/// Polls an in-process publisher's counters (paced, bounded) until `done`
/// holds; panics naming `what` and the last counters after `limit`.
pub async fn wait_publisher(
    publisher: &gilmsg::Bus,
    what: &str,
    limit: Duration,
    done: impl Fn(&gilmsg::Stats) -> bool,
) -> gilmsg::Stats {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let stats = publisher.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publisher never counted {what}: {stats}"
        );
        // Pacing of a bounded counter poll, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parses the `k=v k=v` part of a `... stats k=v ...` line.
pub fn parse_stats(line: &str) -> gilmsg::Stats {
    let rest = line
        .split_once(" stats")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("not a stats line: {line:?}"));
    let counters: BTreeMap<String, u64> = rest
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("bad stats item {kv:?} in {line:?}"));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("bad stats value {kv:?} in {line:?}"));
            (k.to_owned(), v)
        })
        .collect();
    gilmsg::Stats { counters }
}
