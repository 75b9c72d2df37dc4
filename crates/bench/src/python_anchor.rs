//! The Python anchor of `gilmsg-bench`: the reference Python peers
//! (fedmsg 1.1.7 + gilmsg 0.1.2, the interop venv made by
//! `scripts/python-peers.sh`) measured in the same run, on the same machine,
//! in the same scenarios as ours, so the report can state ratios instead of
//! absolute numbers from another day.
//!
//! The bus: a throwaway RSA PKI made with the `openssl` CLI (fedmsg signs
//! only with RSA, "x509"), our relay (`__relay`) and three of our consumers
//! (`__consumer --quiet`, RSA identities, validating) on 127.0.0.1 ephemeral
//! ports, and a `fedmsg.d/` directory for the Python side pointing at the
//! relay (active mode, as `gilmsg-logger` always is). Our consumers accept
//! Python's messages through the `gilmsg_version` compat rule (gilmsg 0.1.2
//! adds that key after signing) and sign ACKs that Python verifies.
//!
//! Measured:
//! - Python `gilmsg-logger --recipients ...`: wall time from process start
//!   to exit, 1 and 3 recipients, with fedmsg's default settings
//!   (`post_init_sleep` 0.5 s) and with `--post-init-sleep 0.05`;
//! - Python `gilmsg.publish` in one long-lived process (a small script run
//!   with the venv's interpreter), per-publish latency, both settings;
//! - ours on the same bus with RSA identities (the one-shot logger and a
//!   warm in-process publish), so the ratio is also stated like for like,
//!   beside the main benchmark's Ed25519 numbers.
//!
//! Every process is bounded: long-lived ones are [`Proc`]s (killed by PID on
//! drop), Python scripts also arm their own SIGALRM, and each one-shot run
//! has a watchdog that kills it by PID at its limit (gilmsg-logger can hang
//! after a timeout: its ACK listener is not a daemon thread).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use serde_json::{json, Value};

use gilmsg_cli::common::{self, Failure};
use gilmsg_cli::procs::Proc;
use gilmsg_testkit::python::{self, FedmsgD};
use gilmsg_testkit::rsa_pki::RsaPki;

use crate::progress;

const READY: Duration = Duration::from_secs(30);
/// Bound of one one-shot run (Python start-up plus 3 × post_init_sleep is ~2 s).
const RUN_LIMIT: Duration = Duration::from_secs(20);
const PREFIX: &str = "org.gilmsg.bench";
const ENV: &str = "dev";
/// The identity Python's loggers sign as (`certnames["shell.<host>"]`).
const PY_PUBLISHER: &str = "py-publisher";
/// The identity our publishers sign as on this bus.
const RUST_PUBLISHER: &str = "rust-pub";
const CONSUMERS: usize = 3;

fn fail(message: impl Into<String>) -> Failure {
    crate::fail(format!("python anchor: {}", message.into()))
}

/// Percentiles in microseconds, the same shape as the rest of the report,
/// with the minimum too (one-shot runs vary a lot).
fn summary(samples: Vec<f64>) -> Value {
    let summary = crate::Summary::new(samples);
    let mut value = summary.json();
    value["min_us"] = json!(summary.min());
    value
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Measures the Python anchor. Returns `{"status": "skipped: ..."}` when the
/// build, the venv or the `openssl` CLI cannot run it; an `Err` only when the
/// bus itself could not be set up.
pub fn anchor(
    exe: &Path,
    dir: &Path,
    runs: usize,
    venv: &Path,
    short: bool,
) -> Result<Value, Failure> {
    let skipped = |why: String| {
        Ok(json!({"venv": venv.display().to_string(), "status": format!("skipped: {why}")}))
    };
    if !cfg!(feature = "fedmsg-x509") {
        return skipped("build with --features fedmsg-x509 (our consumers need RSA identities to sign ACKs Python can verify)".into());
    }
    let python = venv.join("bin/python");
    let py_logger = venv.join("bin/gilmsg-logger");
    if !python.is_file() || !py_logger.is_file() {
        return skipped(format!(
            "{} has no bin/python or bin/gilmsg-logger (run scripts/python-peers.sh)",
            venv.display()
        ));
    }
    let dir = dir.join("python-anchor");
    fs::create_dir_all(dir.join("home")).map_err(|e| fail(e.to_string()))?;
    let versions = match python_versions(&python, &dir) {
        Ok(v) => v,
        Err(why) => return skipped(format!("the venv's python does not run: {why}")),
    };
    if Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return skipped("no `openssl` CLI to make the RSA PKI".into());
    }

    progress("python anchor: RSA PKI with the openssl CLI");
    let pki = dir.join("pki");
    let mut names = vec![PY_PUBLISHER.to_string(), RUST_PUBLISHER.to_string()];
    names.extend((0..CONSUMERS).map(|i| format!("consumer-{i}")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    RsaPki::make(&pki, "gilmsg-bench-python-anchor-ca", &names).map_err(fail)?;
    if let Err(e) = gilmsg_crypto::Identity::load(&pki, "consumer-0") {
        let text = e.to_string();
        if text.contains("fedmsg-x509") {
            return skipped("build with --features fedmsg-x509".into());
        }
        return Err(fail(format!("cannot load an RSA identity: {text}")));
    }

    let bus = AnchorBus::start(exe, &dir, &pki)?;
    let mut out = serde_json::Map::new();
    out.insert("status".into(), json!("measured"));
    out.insert("venv".into(), json!(venv.display().to_string()));
    out.insert("versions".into(), versions);
    out.insert(
        "setup".into(),
        json!(format!(
            "our relay + {CONSUMERS} of our consumers (--quiet, validating, RSA-2048 identities) on 127.0.0.1; \
             Python publishers active (relay_inbound), signing as {PY_PUBLISHER}, validate_signatures on; \
             ack_timeout 10 s; first run of each series discarded"
        )),
    );

    // 0. Where a one-shot Python run's time goes, besides the sleeps:
    // interpreter start-up and importing fedmsg + gilmsg.
    let import = one_shot_series(runs, &dir, "py-import", || {
        let mut cmd = bus.python_cmd(&python);
        cmd.args(["-c", "import fedmsg, fedmsg.config, fedmsg.crypto, gilmsg"]);
        cmd
    })?;
    progress(format!(
        "python start-up + import fedmsg, gilmsg: p50 {}",
        fmt_us(get(&import, "/p50_us"))
    ));
    out.insert("python_startup_import".into(), import);
    out.insert(
        "python_logger_fixed_sleeps_s".into(),
        json!({"default": 1.5, "post_init_sleep_0.05": 0.15,
               "why": "fedmsg.init sleeps post_init_sleep, then gilmsg.publish gives its ACK listener a head start of 2 x post_init_sleep before sending"}),
    );

    // 1. Python gilmsg-logger, one process per message.
    let mut logger = serde_json::Map::new();
    for (label, pis) in [("default", None), ("post_init_sleep_0.05", Some("0.05"))] {
        let mut by_k = serde_json::Map::new();
        for k in [1usize, 3] {
            let recipients = recipient_names(k);
            let mut args: Vec<String> = vec!["--message".into(), "one-shot".into()];
            args.extend(["--ack-timeout".into(), "10".into()]);
            if let Some(pis) = pis {
                args.extend(["--post-init-sleep".into(), pis.into()]);
            }
            args.push("--recipients".into());
            args.extend(recipients);
            let series = one_shot_series(runs, &dir, &format!("py-logger-{label}-{k}"), || {
                let mut cmd = bus.python_cmd(&py_logger);
                cmd.args(&args);
                cmd
            })?;
            progress(format!(
                "python gilmsg-logger ({label}), {k} recipient(s): p50 {}",
                fmt_us(get(&series, "/p50_us"))
            ));
            by_k.insert(format!("{k}_recipients"), series);
        }
        logger.insert(label.into(), Value::Object(by_k));
    }
    out.insert("python_logger".into(), Value::Object(logger));

    // 2. Python gilmsg.publish in one long-lived process.
    let count = if short { 4 } else { 15 };
    let script = dir.join("inprocess.py");
    fs::write(&script, INPROCESS_PY).map_err(|e| fail(e.to_string()))?;
    let mut inprocess = serde_json::Map::new();
    for (label, pis) in [("default", None), ("post_init_sleep_0.05", Some(0.05))] {
        let mut by_k = serde_json::Map::new();
        for k in [1usize, 3] {
            let result = bus.python_inprocess(&python, &script, k, count, pis)?;
            progress(format!(
                "python gilmsg.publish in-process ({label}), {k} recipient(s): p50 {}",
                fmt_us(get(&result, "/p50_us"))
            ));
            by_k.insert(format!("{k}_recipients"), result);
        }
        inprocess.insert(label.into(), Value::Object(by_k));
    }
    out.insert("python_publish_in_process".into(), Value::Object(inprocess));
    out.insert(
        "shared_ack_list".into(),
        json!("gilmsg 0.1.2 keeps every listener's ACKs in one class-level list that is never reset, \
               so repeated publishes in one process can succeed on stale ACKs (false success) or time out \
               on extra ones; the script clears that list before each publish so each one waits for its \
               own recipients, and records the signers each publish counted (`genuine`)"),
    );

    // 3. Ours on the same bus, RSA identities: like for like.
    let logger = exe
        .parent()
        .map(|p| p.join("gilmsg-logger"))
        .filter(|p| p.exists());
    let mut ours = serde_json::Map::new();
    if let Some(logger) = logger {
        let mut by_k = serde_json::Map::new();
        for k in [1usize, 3] {
            let recipients = recipient_names(k);
            let series =
                one_shot_series(runs.max(5), &dir, &format!("rust-logger-x509-{k}"), || {
                    let mut cmd = Command::new(&logger);
                    cmd.arg("--config")
                        .arg(&bus.toml)
                        .args([
                            "--certname",
                            RUST_PUBLISHER,
                            "--message",
                            "one-shot",
                            "--ack-timeout",
                            "10s",
                            "--recipients",
                        ])
                        .args(&recipients);
                    cmd
                })?;
            progress(format!(
                "our gilmsg-logger (RSA, same bus), {k} recipient(s): p50 {}",
                fmt_us(get(&series, "/p50_us"))
            ));
            by_k.insert(format!("{k}_recipients"), series);
        }
        ours.insert("logger".into(), Value::Object(by_k));
    } else {
        ours.insert(
            "logger".into(),
            json!({"status": "skipped: gilmsg-logger is not built next to gilmsg-bench"}),
        );
    }
    ours.insert(
        "warm_publish".into(),
        bus.rust_warm_publish(if short { 50 } else { 300 })?,
    );
    out.insert("ours_x509_same_bus".into(), Value::Object(ours));
    drop(bus);
    Ok(Value::Object(out))
}

fn recipient_names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("consumer-{i}")).collect()
}

fn python_versions(python: &Path, dir: &Path) -> Result<Value, String> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import sys, importlib.metadata as m; print(sys.version.split()[0], m.version('fedmsg'), m.version('gilmsg'))",
    ])
    .current_dir(dir);
    let run = timed_run(cmd, Duration::from_secs(30), &dir.join("python-version"))
        .map_err(|e| e.message)?;
    if run.code != Some(0) {
        return Err(format!("exit {:?}: {}", run.code, tail(&run.stderr)));
    }
    let parts: Vec<&str> = run.stdout.split_whitespace().collect();
    Ok(json!({"python": parts.first(), "fedmsg": parts.get(1), "gilmsg": parts.get(2)}))
}

// ---------------------------------------------------------------------------
// One-shot runs, each bounded by a watchdog.

struct RunOutcome {
    elapsed: Duration,
    /// Exit code; `None` if killed (at the limit or by a signal).
    code: Option<i32>,
    killed_at_limit: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, stdout/stderr to `<stem>.out/.err`; a watchdog
/// kills it by PID at `limit`. The wall time is taken when the process
/// exits (waitid with WNOWAIT), before it is reaped, so the watchdog can
/// never signal a recycled PID.
fn timed_run(mut cmd: Command, limit: Duration, stem: &Path) -> Result<RunOutcome, Failure> {
    let out_path = stem.with_extension("out");
    let err_path = stem.with_extension("err");
    let stdout = fs::File::create(&out_path).map_err(|e| fail(e.to_string()))?;
    let stderr = fs::File::create(&err_path).map_err(|e| fail(e.to_string()))?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {cmd:?}: {e}")))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| fail(e.to_string()))?);
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(limit) {
            let _ = kill(pid, Signal::SIGKILL);
            true
        } else {
            false
        }
    });
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                let _ = done.send(());
                let _ = watchdog.join();
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("waitid: {e}")));
            }
        }
    }
    let elapsed = start.elapsed();
    let _ = done.send(());
    let killed_at_limit = watchdog.join().unwrap_or(false);
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    Ok(RunOutcome {
        elapsed,
        code: status.code(),
        killed_at_limit,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// `runs` + 1 bounded runs (the first discarded: page cache, relay warm-up);
/// failures are counted and kept out of the percentiles.
fn one_shot_series(
    runs: usize,
    dir: &Path,
    tag: &str,
    make: impl Fn() -> Command,
) -> Result<Value, Failure> {
    let mut times = Vec::new();
    let mut failures = 0usize;
    let mut timeouts = 0usize;
    let mut first_failure = None;
    for i in 0..runs + 1 {
        let run = timed_run(make(), RUN_LIMIT, &dir.join(format!("{tag}-{i}")))?;
        if run.code == Some(0) {
            if i > 0 {
                times.push(micros(run.elapsed));
            }
            continue;
        }
        failures += 1;
        if run.killed_at_limit {
            timeouts += 1;
        }
        if first_failure.is_none() {
            first_failure = Some(format!(
                "run {i}: exit {:?} after {:.2} s{}: {}",
                run.code,
                run.elapsed.as_secs_f64(),
                if run.killed_at_limit {
                    " (killed at its limit)"
                } else {
                    ""
                },
                tail(&run.stderr)
            ));
        }
    }
    let mut value = summary(times);
    if let Value::Object(map) = &mut value {
        map.insert("runs".into(), json!(runs + 1));
        map.insert("failed_runs".into(), json!(failures));
        map.insert("killed_at_limit".into(), json!(timeouts));
        if let Some(why) = first_failure {
            map.insert("first_failure".into(), json!(why));
        }
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// The bus: our relay and consumers, and both sides' configuration.

struct AnchorBus {
    dir: PathBuf,
    toml: PathBuf,
    // Dropped (killed by PID) with the bus; consumers first.
    _consumers: Vec<Proc>,
    _relay: Proc,
}

fn toml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

impl AnchorBus {
    fn start(exe: &Path, dir: &Path, pki: &Path) -> Result<AnchorBus, Failure> {
        let gilmsg_cli::roles::LoopbackRelay {
            proc: relay,
            inbound,
            outbound,
        } = gilmsg_cli::roles::spawn_relay("python-anchor relay", exe, READY).map_err(fail)?;

        // Our side.
        let toml = dir.join("gilmsg.toml");
        let text = format!(
            "topic_prefix = \"{PREFIX}\"\nenvironment = \"{ENV}\"\nactive = true\nrelay_inbound = [\"{inbound}\"]\n\
             sign_messages = true\nvalidate_signatures = true\nssldir = {}\nca_cert_location = {}\ncrl_location = {}\n\
             ack_timeout = \"10s\"\n\n[endpoints]\nrelay_outbound = [\"{outbound}\"]\n",
            toml_str(pki),
            toml_str(&pki.join("ca.crt")),
            toml_str(&pki.join("crl.pem")),
        );
        fs::write(&toml, text).map_err(|e| fail(e.to_string()))?;

        // The Python side: fedmsg's legacy loader reads ./fedmsg.d/*.py.
        // post_init_sleep is deliberately left at fedmsg's default (0.5 s).
        FedmsgD {
            written_by: "gilmsg-bench (the Python anchor)",
            pki,
            topic_prefix: PREFIX,
            environment: ENV,
            inbound: &inbound,
            outbound: &outbound,
            certnames: &[("shell", PY_PUBLISHER)],
            extra: &[],
        }
        .write(dir, "bench.py")
        .map_err(|e| fail(e.to_string()))?;

        let consumers = crate::start_consumers(
            (0..CONSUMERS).map(|i| {
                let name = format!("consumer-{i}");
                (
                    format!("python-anchor {name}"),
                    name,
                    toml.clone(),
                    crate::QUIET,
                )
            }),
            exe,
        )?;
        Ok(AnchorBus {
            dir: dir.to_path_buf(),
            toml,
            _consumers: consumers,
            _relay: relay,
        })
    }

    /// A Python command run in the fedmsg.d directory, with nothing of the
    /// user's fedmsg configuration (~/.fedmsg.d) leaking in.
    fn python_cmd(&self, program: &Path) -> Command {
        python::command(program, &self.dir)
    }

    /// `count` publishes (after one warm-up) from one Python process.
    fn python_inprocess(
        &self,
        python: &Path,
        script: &Path,
        k: usize,
        count: usize,
        post_init_sleep: Option<f64>,
    ) -> Result<Value, Failure> {
        let head_start = 2.0 * post_init_sleep.unwrap_or(0.5);
        let limit = 30.0 + (count as f64 + 1.0) * (head_start + 1.0) + 5.0;
        let mut cmd = self.python_cmd(python);
        cmd.arg(script)
            .args(["--limit", &format!("{limit:.0}")])
            .args(["--count", &count.to_string()])
            .args(["--ack-timeout", "5"]);
        if let Some(pis) = post_init_sleep {
            cmd.args(["--post-init-sleep", &pis.to_string()]);
        }
        cmd.arg("--recipients").args(recipient_names(k));
        cmd.stdin(Stdio::null());
        let mut proc =
            Proc::spawn("python gilmsg.publish", cmd).map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs_f64(limit + 5.0);
        let mut times = Vec::new();
        let (mut failed, mut not_genuine, mut finished) = (0usize, 0usize, false);
        let mut first_failure = None;
        while let Some(line) = proc.next_stdout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with("bench: done") {
                finished = true;
                break;
            }
            let Some(rest) = line.strip_prefix("bench: publish ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(rest) else {
                continue;
            };
            if v["warmup"] == json!(true) {
                continue;
            }
            if v["ok"] == json!(true) {
                times.push(v["seconds"].as_f64().unwrap_or(f64::NAN) * 1e6);
                if v["genuine"] != json!(true) {
                    not_genuine += 1;
                }
            } else {
                failed += 1;
                if first_failure.is_none() {
                    first_failure = Some(v["error"].clone());
                }
            }
        }
        let status = proc.wait_timeout(Duration::from_secs(2));
        proc.kill();
        let mut value = summary(times);
        if let Value::Object(map) = &mut value {
            map.insert("publishes".into(), json!(count));
            map.insert("failed".into(), json!(failed));
            map.insert("succeeded_without_all_acks".into(), json!(not_genuine));
            if let Some(why) = first_failure {
                map.insert("first_failure".into(), why);
            }
            if !finished {
                map.insert(
                    "incomplete".into(),
                    json!(format!(
                        "the script did not finish (exit {:?}); stderr: {}",
                        status.and_then(|s| s.code()),
                        tail(&proc.stderr_so_far().join("\n"))
                    )),
                );
            }
        }
        Ok(value)
    }

    /// Our warm `publish` on a long-lived handle through the same relay,
    /// signing with an RSA identity (SHA-1 PKCS#1 v1.5, as fedmsg).
    fn rust_warm_publish(&self, samples: usize) -> Result<Value, Failure> {
        let config = gilmsg::Config::from_path(&self.toml).map_err(Failure::from)?;
        let runtime = common::runtime()?;
        let mut out = serde_json::Map::new();
        runtime.block_on(async {
            let bus = gilmsg::Bus::builder(&config)
                .modname("bench")
                .certname(RUST_PUBLISHER)
                .active(true)
                .build()?;
            for k in [1usize, 3] {
                let recipients = recipient_names(k);
                let warmup = (samples / 10).max(10);
                let mut times = Vec::with_capacity(samples);
                for i in 0..samples + warmup {
                    let start = Instant::now();
                    bus.publish(
                        "latency",
                        json!({"seq": i, "payload": "x".repeat(64)}),
                        &recipients,
                        Duration::from_secs(10),
                    )
                    .await?;
                    if i >= warmup {
                        times.push(micros(start.elapsed()));
                    }
                }
                let value = summary(times);
                progress(format!(
                    "our warm publish (RSA, same bus), {k} recipient(s): p50 {}",
                    fmt_us(get(&value, "/p50_us"))
                ));
                out.insert(format!("{k}_recipients"), value);
            }
            bus.close().await;
            Ok::<(), Failure>(())
        })?;
        Ok(Value::Object(out))
    }
}

/// The in-process Python publisher: `gilmsg.publish` called repeatedly on one
/// fedmsg context, as a long-lived service would. Prints one
/// `bench: publish {json}` line per publish, then `bench: done`.
const INPROCESS_PY: &str = r#"# Written by gilmsg-bench (the Python anchor): gilmsg.publish in one process.
import argparse, json, os, signal, sys, time

p = argparse.ArgumentParser()
p.add_argument("--limit", type=float, required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--ack-timeout", type=float, required=True)
p.add_argument("--post-init-sleep", type=float, default=None)
p.add_argument("--recipients", nargs="+", required=True)
a = p.parse_args()
# Dies on its own even if the benchmark is killed; gilmsg's ACK listener is
# not a daemon thread and can block interpreter exit after a timeout.
signal.signal(signal.SIGALRM, signal.SIG_DFL)
signal.alarm(max(1, int(a.limit + 0.999)))

def say(line):
    sys.stdout.write("bench: " + line + "\n")
    sys.stdout.flush()

import fedmsg, fedmsg.config, gilmsg

overrides = dict(active=True, name="relay_inbound", cert_prefix="shell")
if a.post_init_sleep is not None:
    overrides["post_init_sleep"] = a.post_init_sleep
fedmsg.init(**overrides)
kw = dict(fedmsg.config.load_config([], None))
kw.update(overrides)
for key in ("topic", "msg", "modname", "recipients", "ack_timeout", "pre_fire_hook"):
    kw.pop(key, None)
say("ready post_init_sleep=%s" % kw["post_init_sleep"])

for n in range(a.count + 1):
    # gilmsg 0.1.2 shares one ACK list among all listeners (a class
    # attribute, never reset): clear it so this publish waits for its own.
    del gilmsg.AckListener.results[:]
    error = None
    t0 = time.perf_counter()
    try:
        gilmsg.publish(topic="inprocess", msg={"seq": n, "payload": "x" * 64},
                       modname="bench", recipients=a.recipients,
                       ack_timeout=a.ack_timeout, **kw)
    except BaseException as e:  # gilmsg.Timeout, AssertionError
        error = "%s: %s" % (type(e).__name__, e)
    dt = time.perf_counter() - t0
    counted = list(gilmsg.AckListener.results)
    say("publish " + json.dumps({
        "n": n, "warmup": n == 0, "seconds": dt, "ok": error is None, "error": error,
        "acks_counted": counted,
        "genuine": sorted(set(counted)) == sorted(set(a.recipients)),
    }))
say("done")
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"#;

// ---------------------------------------------------------------------------
// Ratios and the Markdown table.

fn get(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn ratio(a: f64, b: f64) -> Value {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        json!((a / b * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

/// (label, Python p50 pointer in the anchor, our p50 pointer in the report,
/// our RSA same-bus p50 pointer in the anchor)
fn comparisons() -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    for (setting, label) in [
        ("default", "default settings, post_init_sleep 0.5 s"),
        ("post_init_sleep_0.05", "post_init_sleep 0.05 s"),
    ] {
        for k in [1, 3] {
            rows.push((
                format!("gilmsg-logger one-shot, {k} recipient(s) ({label})"),
                format!("/python_logger/{setting}/{k}_recipients/p50_us"),
                format!("/oneshot_logger/{k}_recipients/p50_us"),
                format!("/ours_x509_same_bus/logger/{k}_recipients/p50_us"),
            ));
        }
    }
    for (setting, label) in [
        ("default", "default settings"),
        ("post_init_sleep_0.05", "post_init_sleep 0.05 s"),
    ] {
        for k in [1, 3] {
            rows.push((
                format!("gilmsg.publish in one process, {k} recipient(s) ({label})"),
                format!("/python_publish_in_process/{setting}/{k}_recipients/p50_us"),
                format!("/latency_warm_publish/{k}_recipients/p50_us"),
                format!("/ours_x509_same_bus/warm_publish/{k}_recipients/p50_us"),
            ));
        }
    }
    rows
}

/// Adds `ratios` (Python p50 / ours p50) to a measured anchor; `report` is
/// the whole report so far (for `oneshot_logger` and `latency_warm_publish`).
pub fn add_ratios(anchor: &mut Value, report: &Value) {
    if anchor.get("status") != Some(&json!("measured")) {
        return;
    }
    let mut ratios = serde_json::Map::new();
    for (_, py, ours, ours_rsa) in comparisons() {
        let p = get(anchor, &py);
        let key = py
            .trim_start_matches('/')
            .trim_end_matches("/p50_us")
            .replace('/', ".");
        ratios.insert(
            key,
            json!({"vs_ours": ratio(p, get(report, &ours)), "vs_ours_x509_same_bus": ratio(p, get(anchor, &ours_rsa))}),
        );
    }
    if let Value::Object(map) = anchor {
        map.insert("ratios_python_over_ours_p50".into(), Value::Object(ratios));
    }
}

/// The Markdown section for the anchor; `report` is the whole report JSON.
pub fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let Some(anchor) = report.get("python_anchor") else {
        return md;
    };
    let status = anchor
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    if status != "measured" {
        let _ = writeln!(md, "\nPython anchor: {status}");
        return md;
    }
    let versions = anchor.get("versions").cloned().unwrap_or_default();
    let _ = writeln!(
        md,
        "\n| Python anchor (fedmsg {}, gilmsg {}, Python {}), p50 | Python | ours | Python/ours | ours, RSA, same bus | Python/ours RSA |\n|---|---|---|---|---|---|",
        versions["fedmsg"].as_str().unwrap_or("?"),
        versions["gilmsg"].as_str().unwrap_or("?"),
        versions["python"].as_str().unwrap_or("?"),
    );
    for (label, py, ours, ours_rsa) in comparisons() {
        let (p, o, r) = (get(anchor, &py), get(report, &ours), get(anchor, &ours_rsa));
        let x = |v: Value| {
            v.as_f64().map_or("–".to_string(), |v| {
                if v < 10.0 {
                    format!("{v:.1}×")
                } else {
                    format!("{v:.0}×")
                }
            })
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            fmt_us(p),
            fmt_us(o),
            x(ratio(p, o)),
            fmt_us(r),
            x(ratio(p, r))
        );
    }
    let mut notes = Vec::new();
    for (section, what) in [
        ("python_logger", "failed_runs"),
        ("python_publish_in_process", "failed"),
    ] {
        for setting in ["default", "post_init_sleep_0.05"] {
            for k in [1, 3] {
                let base = format!("/{section}/{setting}/{k}_recipients");
                let n = get(anchor, &format!("{base}/{what}"));
                if n > 0.0 {
                    notes.push(format!(
                        "{section} {setting} {k} recipient(s): {n} failed ({})",
                        anchor
                            .pointer(&format!("{base}/first_failure"))
                            .map(Value::to_string)
                            .unwrap_or_default()
                    ));
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\n\"ours\" is the main benchmark (Ed25519: one-shot gilmsg-logger, warm publish); \"ours, RSA\" runs on the \
         anchor's bus with RSA identities like Python. In-process Python publishes clear gilmsg's shared ACK list \
         before each publish (gilmsg 0.1.2 defect: stale ACKs would count)."
    );
    let _ = writeln!(
        md,
        "Python one-shot runs include interpreter start-up and imports (p50 {}) and 3 × post_init_sleep of fixed sleeps \
         (1.5 s by default, 0.15 s at 0.05).",
        fmt_us(get(anchor, "/python_startup_import/p50_us"))
    );
    for note in notes {
        let _ = writeln!(md, "- {note}");
    }
    md
}
