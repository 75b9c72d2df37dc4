//! A throwaway RabbitMQ node, for `gilmsg-demo --transport amqp`, the
//! tests and the bench: Debian's `rabbitmq-server` run directly (not
//! through the Debian wrapper, which drops to the `rabbitmq` user) with a
//! private HOME, data and log directories, on loopback only (the AMQP
//! listener, the Erlang distribution port and its own `epmd`), on free
//! ports.
//!
//! [`Rabbit::start`] returns once `rabbitmqctl wait <pidfile>` says the node
//! is up. The node and its epmd are stopped **by PID**, when the [`Rabbit`]
//! is dropped and also by a watchdog child that waits on a pipe from this
//! process: when this process ends, however it ends (panic, abort,
//! SIGKILL), the pipe closes and the watchdog stops them and removes the
//! node's directory.
//! [`Rabbit::restart`] kills the node (its data stays) and starts it again
//! on the same ports. [`Rabbit::vhost`] adds a vhost (one per test).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where Debian installs RabbitMQ's real scripts.
pub const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// Whether `rabbitmq-server` is installed.
pub fn installed() -> bool {
    Path::new(RABBIT_BIN).join("rabbitmq-server").exists()
}

/// What to say when it is not.
pub const NOT_INSTALLED: &str = "rabbitmq-server is not installed (Debian: apt-get install -y \
    rabbitmq-server; scripts/test installs it when run as root)";

/// The PEM files of a TLS listener that requires client certificates.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// The CA client certificates must chain to.
    pub ca_cert: PathBuf,
    /// The server's certificate (for `localhost`).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A running node.
pub struct Rabbit {
    dir: tempfile::TempDir,
    node: String,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// The AMQPS port, when started with TLS.
    pub tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    epmd: Mutex<Option<Child>>,
    server: Mutex<Option<Child>>,
    /// Keeps the watchdog's pipe open while this process lives.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Rabbit {
    /// Starts a node (with a TLS listener requiring client certificates
    /// when `tls` is given), waiting up to `limit` for it.
    pub fn start(tls: Option<&TlsListener>, limit: Duration) -> Result<Rabbit, String> {
        if !installed() {
            return Err(NOT_INSTALLED.into());
        }
        let dir = tempfile::Builder::new()
            .prefix("gilmsg-rabbit")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        fs::write(d.join("enabled_plugins"), "[].\n").map_err(|e| e.to_string())?;
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let mut conf = String::from("loopback_users = none\n");
        if let (Some(tls), Some(p)) = (tls, tls_port) {
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{p}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                tls.ca_cert.display(),
                tls.cert.display(),
                tls.key.display(),
            ));
        }
        fs::write(d.join("rabbitmq.conf"), conf).map_err(|e| e.to_string())?;
        let (watchdog, pipe) = crate::procs::server_watchdog(d, 3)?;
        let rabbit = Rabbit {
            node: format!("gilmsgtest-{}-{port}@localhost", std::process::id()),
            port,
            tls_port,
            dist_port: free_port(),
            epmd_port: free_port(),
            epmd: Mutex::new(None),
            server: Mutex::new(None),
            _watchdog: Mutex::new((watchdog, pipe)),
            dir,
        };
        rabbit.boot(limit)?;
        Ok(rabbit)
    }

    fn env(&self, command: &mut Command) {
        let d = self.dir.path();
        command
            .env("HOME", d)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    fn write_pids(&self) {
        let mut pids = Vec::new();
        if let Ok(Some(c)) = self.server.lock().map(|g| g.as_ref().map(Child::id)) {
            pids.push(c.to_string());
        }
        if let Ok(text) = fs::read_to_string(self.dir.path().join("pid")) {
            pids.push(text.trim().to_owned());
        }
        if let Ok(Some(c)) = self.epmd.lock().map(|g| g.as_ref().map(Child::id)) {
            pids.push(c.to_string());
        }
        let _ = fs::write(self.dir.path().join("pids"), pids.join(" "));
    }

    /// Starts epmd (once) and the node, and waits for it.
    fn boot(&self, limit: Duration) -> Result<(), String> {
        let mut epmd = self.epmd.lock().map_err(|_| "poisoned")?;
        if epmd.is_none() {
            let child = Command::new("epmd")
                .args([
                    "-port",
                    &self.epmd_port.to_string(),
                    "-address",
                    "127.0.0.1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("epmd: {e}"))?;
            *epmd = Some(child);
        }
        drop(epmd);
        let _ = fs::remove_file(self.dir.path().join("pid"));
        let mut server = Command::new(Path::new(RABBIT_BIN).join("rabbitmq-server"));
        self.env(&mut server);
        let log =
            fs::File::create(self.dir.path().join("server.out")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        server.stdout(log).stderr(log2).stdin(Stdio::null());
        let child = server
            .spawn()
            .map_err(|e| format!("rabbitmq-server: {e}"))?;
        *self.server.lock().map_err(|_| "poisoned")? = Some(child);
        self.write_pids();
        let started = Instant::now();
        let out = self.ctl(
            &[
                "wait",
                &self.dir.path().join("pid").to_string_lossy(),
                "--timeout",
                &limit.as_secs().max(1).to_string(),
            ],
            limit + Duration::from_secs(5),
        );
        self.write_pids();
        match out {
            Ok(_) => {
                eprintln!("rabbitmq node {} up in {:?}", self.node, started.elapsed());
                Ok(())
            }
            Err(e) => {
                let log =
                    fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
                self.kill_server();
                Err(format!("RabbitMQ did not start: {e}\n{log}"))
            }
        }
    }

    /// Runs `rabbitmqctl -n <node> args...`, killed after `limit`; its
    /// stdout, or why it failed.
    pub fn ctl(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut command = Command::new(Path::new(RABBIT_BIN).join("rabbitmqctl"));
        self.env(&mut command);
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("rabbitmqctl {}", args.join(" "));
        let mut child = command.spawn().map_err(|e| format!("{what}: {e}"))?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = crate::procs::wait_timeout(&mut child, limit);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!("{what}: {s}: {} {}", out.trim(), err.trim())),
            None => Err(format!("{what}: still running after {limit:?}")),
        }
    }

    /// A new vhost (one per test), with full permissions for `guest`;
    /// returns its `amqp://` URL.
    pub fn vhost(&self, name: &str) -> Result<String, String> {
        let limit = Duration::from_secs(30);
        self.ctl(&["add_vhost", name], limit)?;
        self.ctl(
            &["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            limit,
        )?;
        Ok(format!("amqp://guest:guest@127.0.0.1:{}/{name}", self.port))
    }

    /// The `amqps://` URL of `vhost`, for a node started with TLS.
    pub fn tls_url(&self, vhost: &str) -> Option<String> {
        self.tls_port
            .map(|p| format!("amqps://guest:guest@localhost:{p}/{vhost}"))
    }

    /// The PID of the node's Erlang VM (`beam.smp`), from its pid file,
    /// while it runs (the benchmark reads its CPU time).
    pub fn broker_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    }

    fn kill_server(&self) {
        if let Some(pid) = self.broker_pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Ok(mut guard) = self.server.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills the node (SIGKILL: a crash, nothing flushed beyond what it
    /// persisted), then starts it again on the same ports and data.
    pub fn restart(&self, limit: Duration) -> Result<(), String> {
        self.stop_node();
        self.boot(limit)
    }

    /// Kills the node, keeping its data, epmd and ports (see
    /// [`Rabbit::start_again`]).
    pub fn stop_node(&self) {
        self.kill_server();
        // Wait until the port is free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a node stopped with [`Rabbit::stop_node`] again.
    pub fn start_again(&self, limit: Duration) -> Result<(), String> {
        self.boot(limit)
    }

    /// The `amqp://` URL of the default vhost `/`.
    pub fn default_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's name (`gilmsgtest-<pid>-<port>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's data directory (logs, `server.out`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.kill_server();
        if let Ok(mut guard) = self.epmd.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Ok(mut w) = self._watchdog.lock() {
            let _ = w.1.write_all(b"\n");
        }
    }
}

/// Reads a child's pipe to the end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}
