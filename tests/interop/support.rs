//! Support for the interoperability tests against the real Python peers
//! (fedmsg 1.1.7, gilmsg 0.1.2): finding the venv, a throwaway RSA PKI made
//! with the `openssl` CLI, a per-test directory holding `fedmsg.d/` (what the
//! Python side reads from its working directory) and the matching gilmsg TOML,
//! and starting Python and Rust processes that announce readiness on a line.
//!
//! Every process is a [`Running`]: killed by PID when dropped, and registered
//! with the test's hard-limit guard. Every Python process also arms its own
//! SIGALRM (`peers.py --limit`), so it dies even if this test process is
//! killed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gilmsg_testkit::bins;
use gilmsg_testkit::python::{self, FedmsgD};
use gilmsg_testkit::rsa_pki::RsaPki;
use gilmsg_testkit::{Proc, Running};
use serde_json::Value;

/// The environment variable naming the venv made by `scripts/python-peers.sh`.
pub const PEERS_VAR: &str = "GILMSG_PYTHON_PEERS";
/// How long a process may take to print its ready line.
pub const READY: Duration = Duration::from_secs(30);
/// Topic prefix and environment of every interop bus.
pub const PREFIX: &str = "org.example";
pub const ENV: &str = "dev";

/// The Python side: the venv and our helper script.
#[derive(Debug, Clone)]
pub struct Peers {
    pub venv: PathBuf,
    pub python: PathBuf,
    pub script: PathBuf,
}

/// The venv named by `GILMSG_PYTHON_PEERS`, or `None` after printing a SKIP
/// notice (the interop tests then pass without running; `scripts/test`
/// always sets the variable, so CI runs them).
pub fn peers(test: &str) -> Option<Peers> {
    let Some(venv) = std::env::var_os(PEERS_VAR).filter(|v| !v.is_empty()) else {
        eprintln!(
            "SKIP interop::{test}: {PEERS_VAR} is not set. Run scripts/test, or \
             `export {PEERS_VAR}=$(scripts/python-peers.sh | tail -n1)` first."
        );
        return None;
    };
    let venv = PathBuf::from(venv);
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{PEERS_VAR}={} has no bin/python: run scripts/python-peers.sh",
        venv.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/peers.py");
    Some(Peers {
        venv,
        python,
        script,
    })
}

/// A free TCP port on 127.0.0.1, chosen by the kernel. (Python's relay
/// cannot bind `:*`, so its ports are picked here; the tiny window between
/// closing this listener and the relay binding is the only race.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The RSA PKI of a test (shared recipe: `gilmsg_cli::rsa_pki`); the
/// test helpers panic on failure, as tests do.
#[derive(Debug)]
pub struct Pki(RsaPki);

impl Pki {
    pub fn make(dir: &Path, names: &[&str]) -> Pki {
        Pki(RsaPki::make(dir, "interop-test-ca", names).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn revoke(&self, name: &str) {
        self.0.revoke(name).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.0.ca()
    }

    pub fn crl(&self) -> PathBuf {
        self.0.crl()
    }
}

/// One test's world: a temp dir with the PKI, `fedmsg.d/test.py` (for the
/// Python processes, which run in `dir`), `gilmsg.toml` (for the Rust side)
/// and the relay's two endpoints.
pub struct World {
    pub peers: Peers,
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub pki: Pki,
    pub inbound: String,
    pub outbound: String,
    pub toml: PathBuf,
}

/// Identities every world issues. `py-shell` is what Python's loggers sign
/// as (cert_prefix "shell"); `rust-pub` what Rust publishers sign as.
pub const IDENTITIES: &[&str] = &[
    "py-shell",
    "py-a",
    "py-b",
    "py-revoked",
    "rust-pub",
    "rust-consumer",
    // tests/bridge.rs: the bridge's own identity, and a consumer on AMQP.
    "bridge",
    "amqp-consumer",
];

impl World {
    /// A PKI and config files for a bus whose relay binds `inbound` and
    /// `outbound` (both on 127.0.0.1, ports chosen here).
    pub fn new(peers: &Peers) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("gilmsg-interop-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = Pki::make(&dir.join("pki"), IDENTITIES);
        let inbound = format!("tcp://127.0.0.1:{}", free_port());
        let outbound = format!("tcp://127.0.0.1:{}", free_port());
        let world = World {
            peers: peers.clone(),
            dir: dir.clone(),
            pki,
            inbound,
            outbound,
            toml: dir.join("gilmsg.toml"),
            tmp,
        };
        world.write_configs();
        world
    }

    /// Points both configs at a relay whose endpoints are only known once it
    /// has bound them (gilmsg-relay with `tcp://127.0.0.1:*`).
    pub fn set_relay(&mut self, inbound: &str, outbound: &str) {
        self.inbound = inbound.to_owned();
        self.outbound = outbound.to_owned();
        self.write_configs();
    }

    fn write_configs(&self) {
        let mut certnames = vec![("shell", "py-shell")];
        certnames.extend(IDENTITIES.iter().map(|n| (*n, *n)));
        FedmsgD {
            written_by: "tests/interop.rs: the Python peers' configuration",
            pki: self.pki.dir(),
            topic_prefix: PREFIX,
            environment: ENV,
            inbound: &self.inbound,
            outbound: &self.outbound,
            certnames: &certnames,
            extra: &[("post_init_sleep", "0.2"), ("zmq_linger", "2000")],
        }
        .write(&self.dir, "test.py")
        .unwrap();

        let mut config = gilmsg_config::Config::default();
        config.topic_prefix = PREFIX.into();
        config.environment = ENV.into();
        config
            .endpoints
            .insert("relay_outbound".into(), vec![self.outbound.clone()]);
        config.relay_inbound = vec![self.inbound.clone()];
        config.sign_messages = true;
        config.validate_signatures = true;
        config.ssldir = self.pki.dir().to_path_buf();
        config.ca_cert_location = Some(self.pki.ca());
        config.crl_location = Some(self.pki.crl());
        config.certnames = BTreeMap::new();
        fs::write(&self.toml, config.to_toml_string()).unwrap();
    }

    fn python_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = python::command(&self.peers.python, &self.dir);
        cmd.arg(&self.peers.script)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `peers.py ARGS` (its first argument is the sub-command; the
    /// `--limit` seconds are added here).
    pub fn python(&self, name: &str, sub: &str, limit: Duration, args: &[&str]) -> Running {
        let limit = format!("{}", limit.as_secs_f64());
        let mut all = vec![sub, "--limit", &limit];
        all.extend_from_slice(args);
        spawn(name, self.python_cmd(&all))
    }

    /// Starts the Python fedmsg-relay and waits for `peers: ready relay`.
    pub fn fedmsg_relay(&self) -> Running {
        let relay = self.python("fedmsg-relay", "relay", Duration::from_secs(120), &[]);
        relay
            .wait_stdout("peers: ready relay", READY)
            .unwrap_or_else(|e| panic!("{e}"));
        relay
    }

    /// Starts gilmsg-relay on ephemeral ports and points the configs at it.
    pub fn gilmsg_relay(&mut self) -> Running {
        let mut cmd = Command::new(bins!().relay);
        cmd.args([
            "--inbound",
            "tcp://127.0.0.1:*",
            "--outbound",
            "tcp://127.0.0.1:*",
        ]);
        let relay = spawn("gilmsg-relay", cmd);
        let line = relay.expect_stderr("gilmsg-relay: ready", READY);
        let inbound = field(&line, "inbound").expect("inbound= in ready line");
        let outbound = field(&line, "outbound").expect("outbound= in ready line");
        self.set_relay(&inbound, &outbound);
        relay
    }

    /// Starts gilmsg-consumer (JSON lines on stdout) signing ACKs as
    /// `certname`, with the TOML config (or `config`), and waits for ready.
    pub fn rust_consumer(&self, certname: &str, config: Option<&Path>, extra: &[&str]) -> Running {
        let mut cmd = Command::new(bins!().consumer);
        cmd.arg("--config")
            .arg(config.unwrap_or(&self.toml))
            .args(["--certname", certname, "--json"])
            .args(extra)
            .stdin(Stdio::null());
        let consumer = spawn(&format!("gilmsg-consumer {certname}"), cmd);
        consumer.expect_stderr("gilmsg-consumer: ready", READY);
        consumer
    }

    /// Starts a Python gilmsg consumer signing as `name` and waits for ready.
    pub fn python_consumer(&self, name: &str) -> Running {
        let consumer = self.python(
            &format!("python consumer {name}"),
            "consume",
            Duration::from_secs(120),
            &["--name", name],
        );
        consumer
            .wait_stdout(&format!("peers: ready consume name={name}"), READY)
            .unwrap_or_else(|e| panic!("{e}"));
        consumer
    }

    /// Runs `peers.py SUB ARGS` to completion, bounded by `limit`.
    pub fn python_once(&self, sub: &str, args: &[&str], limit: Duration) -> Outcome {
        let proc = self.python(sub, sub, limit, args);
        finish(proc, limit + Duration::from_secs(5))
    }

    /// Runs a console script of the venv (`fedmsg-logger`, `gilmsg-logger`,
    /// `fedmsg-config`) in `dir`, bounded by `limit`; returns its outcome.
    pub fn python_tool(&self, script: &str, args: &[&str], limit: Duration) -> Outcome {
        let mut all = vec![script];
        all.extend_from_slice(args);
        let proc = self.python(script, "run", limit, &all);
        finish(proc, limit + Duration::from_secs(5))
    }

    /// Runs gilmsg-logger with the TOML config (or `config`), stdin from `input`.
    pub fn rust_logger(
        &self,
        args: &[&str],
        config: Option<&Path>,
        input: Option<&str>,
    ) -> Outcome {
        let mut cmd = Command::new(bins!().logger);
        cmd.arg("--config")
            .arg(config.unwrap_or(&self.toml))
            .args(args);
        if let Some(text) = input {
            let path = self.dir.join(format!("stdin-{}.txt", free_port()));
            fs::write(&path, text).unwrap();
            cmd.stdin(fs::File::open(&path).unwrap());
        } else {
            cmd.stdin(Stdio::null());
        }
        finish(spawn("gilmsg-logger", cmd), Duration::from_secs(60))
    }
}

/// A finished process: exit code (None if killed at its time limit), output.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
    pub fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.elapsed,
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// Spawns with piped output, registered with the test's guard.
pub fn spawn(name: &str, cmd: Command) -> Running {
    Running::spawn(name, cmd)
}

/// Waits up to `limit` for exit (killing it then), collecting every line.
pub fn finish(mut proc: Running, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut stdout = Vec::new();
    let status = loop {
        while let Some(line) = proc.next_stdout(Duration::from_millis(20)) {
            stdout.push(line);
        }
        if let Some(status) = proc.wait_timeout(Duration::from_millis(1)) {
            break Some(status);
        }
        if start.elapsed() > limit {
            proc.kill();
            break None;
        }
    };
    // The pipes close at exit; drain what is left.
    while let Some(line) = proc.next_stdout(Duration::from_millis(200)) {
        stdout.push(line);
    }
    Outcome {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr: proc.stderr_so_far(),
        elapsed: start.elapsed(),
    }
}

/// `key=value` out of a ready/stats line.
pub fn field(line: &str, key: &str) -> Option<String> {
    gilmsg_testkit::field(line, key).map(str::to_owned)
}

/// Reads stdout lines until one starting with `prefix` (after `peers: got `
/// style prefixes) parses as JSON and satisfies `pred`; returns it.
pub fn wait_json(
    proc: &Proc,
    prefix: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = proc.next_stdout(left) else {
            break;
        };
        if let Some(rest) = line.strip_prefix(prefix) {
            if let Ok(v) = serde_json::from_str::<Value>(rest) {
                if pred(&v) {
                    return v;
                }
            }
        }
        seen.push(line);
    }
    panic!(
        "{}: no matching {prefix:?} line within {timeout:?}; stdout lines: {seen:#?}; stderr: {:#?}",
        proc.name(),
        proc.stderr_so_far()
    );
}
