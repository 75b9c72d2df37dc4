//! Child processes that announce readiness on a line of output.
//!
//! The demo starts its relay and consumers this way (so do the benchmark
//! and the test kit, which build on this type rather than keep their own):
//! start a process, wait (bounded) for its `ready` line instead of
//! sleeping, read what it prints, and make sure it is gone afterwards, by
//! PID, even when the caller panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running child with its stdout and stderr read line by line.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stderr line so far, for failure messages.
    stderr_log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

fn pump(
    stream: impl std::io::Read + Send + 'static,
    log: Option<Arc<Mutex<Vec<String>>>>,
) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = &log {
                if let Ok(mut log) = log.lock() {
                    log.push(line.clone());
                }
            }
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never
                // blocks on a full pipe.
                continue;
            }
        }
    });
    rx
}

impl Proc {
    /// Starts `command` with piped stdout/stderr (stdin as the command says).
    pub fn spawn(name: impl Into<String>, mut command: Command) -> std::io::Result<Proc> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = pump(
            child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("no stdout pipe"))?,
            None,
        );
        let stderr = pump(
            child
                .stderr
                .take()
                .ok_or_else(|| std::io::Error::other("no stderr pipe"))?,
            Some(log.clone()),
        );
        Ok(Proc {
            name: name.into(),
            child,
            stdout,
            stderr,
            stderr_log: log,
        })
    }

    /// Its stdin, if it was started with `Stdio::piped()` and not taken yet.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        wait_line(&self.stderr, needle, timeout).map_err(|why| {
            format!(
                "{}: {why} waiting for {needle:?} on stderr; stderr so far: {:?}",
                self.name,
                self.stderr_so_far()
            )
        })
    }

    /// Waits up to `timeout` for a stdout line containing `needle`.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        wait_line(&self.stdout, needle, timeout).map_err(|why| {
            format!(
                "{}: {why} waiting for {needle:?} on stdout; stderr so far: {:?}",
                self.name,
                self.stderr_so_far()
            )
        })
    }

    /// The next stdout line, if one comes within `timeout`.
    pub fn next_stdout(&self, timeout: Duration) -> Option<String> {
        self.stdout.recv_timeout(timeout).ok()
    }

    /// Every stderr line, once the stream has closed (the process exited):
    /// reads until end of stream, for at most `timeout`.
    pub fn stderr_until_closed(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        self.stderr_so_far()
    }

    /// Stderr lines seen so far.
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = i32::try_from(self.child.id()).map_err(|_| "pid out of range".to_string())?;
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("{}: kill -{signal}: {e}", self.name))
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = self.signal(Signal::SIGTERM);
        self.wait_timeout(grace).or_else(|| {
            let _ = self.child.kill();
            self.child.wait().ok()
        })
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still
/// running then (or cannot be waited for). It is not killed.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                // Polling for exit of a child we cannot select on; this
                // paces a loop, it does not stand in for a readiness signal.
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return None,
        }
    }
}

fn wait_line(
    rx: &Receiver<String>,
    needle: &str,
    timeout: Duration,
) -> Result<String, &'static str> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => return Err("timed out"),
            Err(RecvTimeoutError::Disconnected) => return Err("stream closed"),
        }
    }
}

/// Parses `key=value` pairs out of a readiness or stats line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|part| {
        part.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// A watchdog for a server a test or the bench starts (RabbitMQ, mosquitto):
/// a shell that waits for its stdin to close (this process ended, even by
/// a panic or a kill), then sends SIGTERM to every PID listed in
/// `<dir>/pids`, SIGKILL `grace_secs` later, and removes `dir`. Keep the
/// returned pipe open as long as the server should live.
pub fn server_watchdog(
    dir: &std::path::Path,
    grace_secs: u32,
) -> Result<(Child, std::process::ChildStdin), String> {
    let script = format!(
        "read _ignored; for p in $(cat {pids} 2>/dev/null); do kill -TERM $p 2>/dev/null; done; \
         sleep {grace_secs}; for p in $(cat {pids} 2>/dev/null); do kill -KILL $p 2>/dev/null; done; \
         rm -rf -- '{dir}'",
        pids = dir.join("pids").display(),
        dir = dir.display()
    );
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("watchdog: {e}"))?;
    let pipe = watchdog.stdin.take().ok_or("watchdog: no stdin")?;
    Ok((watchdog, pipe))
}
