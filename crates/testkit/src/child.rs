//! The processes a test starts: [`Running`], a long-lived one registered
//! with the test's guard, and [`run_tool`], a command run to completion
//! under a time limit with its whole output.

use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::guard::{self, Registry};
use crate::{parse_stats, Proc};

/// A [`Proc`] registered with the guard of the test that started it (so
/// an overrunning test kills it), killed and reaped when dropped. Derefs
/// to the [`Proc`], for its lines, signals and exit.
pub struct Running {
    proc: Proc,
    registry: Registry,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.proc.name())
            .field("pid", &self.proc.pid())
            .finish()
    }
}

impl Running {
    /// Starts `command` (output piped, see [`Proc::spawn`]) as `name`,
    /// registered with the guard this thread runs under.
    pub fn spawn(name: &str, command: Command) -> Running {
        Running::spawn_in(&guard::current(), name, command)
    }

    /// [`Running::spawn`], registered with `registry`.
    pub fn spawn_in(registry: &Registry, name: &str, command: Command) -> Running {
        let proc =
            Proc::spawn(name, command).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        registry.add(proc.pid());
        Running {
            proc,
            registry: registry.clone(),
        }
    }

    /// The process, to wait for its lines, signal or stop it.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The process, mutably (to take its stdin or wait for its exit).
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Waits for a stderr line containing `needle` (e.g. a ready line) and
    /// returns it; panics with the stderr so far after `limit`.
    pub fn expect_stderr(&self, needle: &str, limit: Duration) -> String {
        self.proc
            .wait_stderr(needle, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Its counters now: SIGUSR1, then the next stderr line containing
    /// `needle` (`gilmsg-relay: stats`, ...), parsed.
    pub fn stats(&self, needle: &str) -> gilmsg::Stats {
        self.proc
            .signal(Signal::SIGUSR1)
            .unwrap_or_else(|e| panic!("{e}"));
        parse_stats(&self.expect_stderr(needle, Duration::from_secs(10)))
    }

    /// Asks for its counters ([`Running::stats`]) until `done` holds, for
    /// at most `limit`; panics naming `what` and the last counters.
    pub fn wait_stats(
        &self,
        needle: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&gilmsg::Stats) -> bool,
    ) -> gilmsg::Stats {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.stats(needle);
            if done(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "{}: gave up waiting for {what}; last stats: {stats}",
                self.proc.name()
            );
        }
    }
}

impl Deref for Running {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.proc.kill();
        self.registry.remove(self.proc.pid());
    }
}

/// What a finished command-line run produced.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit code (`None`: killed by a signal).
    pub status: Option<i32>,
    /// All of stdout.
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
}

impl ToolOutput {
    /// Stderr's non-empty lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Reads all of `stream` on a thread of its own (so a child never blocks
/// on a full pipe while the test waits for it to exit).
pub fn read_all(mut stream: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

/// Runs `program args` with `stdin`, collecting output; kills it and panics
/// if it runs longer than `limit`.
pub fn run_tool(
    program: &Path,
    args: &[&str],
    stdin: &str,
    limit: Duration,
    registry: &Registry,
) -> ToolOutput {
    run_tool_env(program, args, stdin, &[], limit, registry)
}

/// [`run_tool`] with extra environment variables (set after the defaults
/// `GILMSG_LOG=warn` and no `GILMSG_CONFIG`, so they can override them).
pub fn run_tool_env(
    program: &Path,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
    limit: Duration,
    registry: &Registry,
) -> ToolOutput {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("GILMSG_LOG", "warn")
        .env_remove("GILMSG_CONFIG")
        .envs(env.iter().copied());
    let what = format!("{} {args:?}", program.display());
    run_bounded(command, &what, stdin, limit, registry)
}

/// Runs `command` with `stdin`, collecting its output; kills it and panics
/// (naming it `what`, with its stderr) if it runs longer than `limit`.
pub fn run_bounded(
    mut command: Command,
    what: &str,
    stdin: &str,
    limit: Duration,
    registry: &Registry,
) -> ToolOutput {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    registry.add(pid);
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let status = wait_or_kill(&mut child, limit);
    registry.remove(pid);
    let Some(status) = status else {
        panic!(
            "{what} ran longer than {limit:?}; stderr: {}",
            err.join().unwrap_or_default()
        );
    };
    let _ = writer.join();
    ToolOutput {
        status: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `command` with `stdin` under `limit` ([`run_bounded`], registered
/// with this thread's guard) and returns its stdout; panics, naming it
/// `what` and quoting its stderr, if it does not exit 0.
pub fn run_ok(command: Command, what: &str, stdin: &str, limit: Duration) -> String {
    let out = run_bounded(command, what, stdin, limit, &guard::current());
    assert!(
        out.status == Some(0),
        "{what} failed ({:?}): {}",
        out.status,
        out.stderr.trim()
    );
    out.stdout
}

/// Waits up to `limit` for `child` to exit; past it, kills (SIGKILL) and
/// reaps it and returns `None`.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let status = gilmsg_cli::procs::wait_timeout(child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
