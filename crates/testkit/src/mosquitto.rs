//! A throwaway mosquitto broker for the firehose tests: Debian's
//! `mosquitto` running the deployment's own config and ACL
//! (`contrib/mosquitto/`, shown in `docs/firehose.md`), with its two
//! listeners (TCP and websockets) moved to loopback and free ports and its
//! files in a temporary directory. Anonymous clients may subscribe only;
//! the user [`FIREHOSE_USER`] alone may publish, under the ACL's prefixes
//! (a password file made with `mosquitto_passwd`).
//!
//! Ready when a TCP connection to its port is accepted (polled in a bounded
//! loop, never a fixed sleep). Stopped **by PID** when dropped, and by a
//! watchdog child waiting on a pipe from this process, so a panicking or
//! killed test leaves no broker behind (as [`crate::rabbit`]).
//! [`Mosquitto::stop`] and [`Mosquitto::start_again`] take it down and
//! bring it back on the same ports, for the reconnection test.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Debian's broker.
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";
/// Debian's password tool (in the mosquitto package).
pub const MOSQUITTO_PASSWD_BIN: &str = "/usr/bin/mosquitto_passwd";
/// The only user allowed to publish.
pub const FIREHOSE_USER: &str = "firehose";

/// Whether mosquitto is installed.
pub fn installed() -> bool {
    Path::new(MOSQUITTO_BIN).exists() && Path::new(MOSQUITTO_PASSWD_BIN).exists()
}

/// What to say when it is not.
pub const NOT_INSTALLED: &str = "mosquitto is not installed (Debian: apt-get install -y \
    mosquitto mosquitto-clients; scripts/test installs it when run as root)";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running broker.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    /// The MQTT (TCP) port on 127.0.0.1.
    pub port: u16,
    /// The MQTT-over-websockets port on 127.0.0.1.
    pub ws_port: u16,
    /// The firehose user's password.
    pub password: String,
    server: Mutex<Option<Child>>,
    /// Keeps the watchdog's pipe open while this process lives.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

impl Mosquitto {
    /// Starts a broker with the deployment's config and ACL
    /// (`contrib/mosquitto/`): [`FIREHOSE_USER`] may publish under
    /// [`acl_prefixes`], anyone may subscribe; waits up to `limit` for it.
    pub fn start(limit: Duration) -> Result<Mosquitto, String> {
        if !installed() {
            return Err(NOT_INSTALLED.into());
        }
        let dir = tempfile::Builder::new()
            .prefix("gilmsg-mosquitto")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let passwd = d.join("passwd");
        let status = Command::new(MOSQUITTO_PASSWD_BIN)
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([FIREHOSE_USER, &password])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("{MOSQUITTO_PASSWD_BIN}: {e}"))?;
        if !status.status.success() {
            return Err(format!(
                "mosquitto_passwd failed: {}",
                String::from_utf8_lossy(&status.stderr)
            ));
        }
        let (port, ws_port) = (free_port(), free_port());
        fs::write(d.join("acl"), CONTRIB_ACL).map_err(|e| e.to_string())?;
        fs::write(d.join("mosquitto.conf"), config(d, port, ws_port)?)
            .map_err(|e| e.to_string())?;
        let (watchdog, pipe) = gilmsg_cli::procs::server_watchdog(d, 2)?;
        let broker = Mosquitto {
            dir,
            port,
            ws_port,
            password,
            server: Mutex::new(None),
            _watchdog: Mutex::new((watchdog, pipe)),
        };
        broker.start_again(limit)?;
        Ok(broker)
    }

    /// The directory holding `mosquitto.conf`, `acl`, `passwd` and `log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the broker logs.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Starts the broker (again, on the same ports) and waits up to
    /// `limit` until its TCP port accepts a connection.
    pub fn start_again(&self, limit: Duration) -> Result<(), String> {
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(MOSQUITTO_BIN)
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{MOSQUITTO_BIN}: {e}"))?;
        let pid = child.id();
        if let Ok(mut pids) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("pids"))
        {
            let _ = writeln!(pids, "{pid}");
        }
        let mut server = self.server.lock().map_err(|_| "poisoned")?;
        *server = Some(child);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = server.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "mosquitto exited ({status}) at start: {}",
                        fs::read_to_string(d.join("log")).unwrap_or_default()
                    ));
                }
            }
            let up = [self.port, self.ws_port].iter().all(|p| {
                TcpStream::connect_timeout(&([127, 0, 0, 1], *p).into(), Duration::from_millis(200))
                    .is_ok()
            });
            if up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "mosquitto not listening on {} and {} after {limit:?}",
                    self.port, self.ws_port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running broker's process id (for a benchmark's CPU figures).
    pub fn pid(&self) -> Option<u32> {
        self.server.lock().ok()?.as_ref().map(Child::id)
    }

    /// Stops the broker by PID (SIGTERM, then SIGKILL after 5 s) and waits
    /// for it to exit.
    pub fn stop(&self) {
        let Ok(mut server) = self.server.lock() else {
            return;
        };
        if let Some(mut child) = server.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The deployment's config, as `docs/firehose.md` shows it.
pub const CONTRIB_CONFIG: &str = include_str!("../../../contrib/mosquitto/gilmsg-firehose.conf");
/// The deployment's ACL.
pub const CONTRIB_ACL: &str = include_str!("../../../contrib/mosquitto/gilmsg-firehose.acl");

/// The prefixes the ACL lets [`FIREHOSE_USER`] publish under.
pub fn acl_prefixes() -> Vec<&'static str> {
    CONTRIB_ACL
        .lines()
        .filter_map(|l| l.strip_prefix("topic write "))
        .map(|t| t.trim().trim_end_matches("/#"))
        .collect()
}

/// The deployment's config with its listeners on loopback and the given
/// ports and its files in `dir`, and the settings a test run needs
/// (log to stderr; as root, stay root: the files are in a private
/// temporary directory).
pub fn config(dir: &Path, port: u16, ws_port: u16) -> Result<String, String> {
    let mut text = String::new();
    let mut replaced = 0;
    for line in CONTRIB_CONFIG.lines() {
        let line = match line.trim() {
            "listener 1883" => format!("listener {port} 127.0.0.1"),
            "listener 9001" => format!("listener {ws_port} 127.0.0.1"),
            "password_file /etc/mosquitto/gilmsg-firehose.passwd" => {
                format!("password_file {}", dir.join("passwd").display())
            }
            "acl_file /etc/mosquitto/gilmsg-firehose.acl" => {
                format!("acl_file {}", dir.join("acl").display())
            }
            _ => {
                text.push_str(line);
                text.push('\n');
                continue;
            }
        };
        replaced += 1;
        text.push_str(&line);
        text.push('\n');
    }
    if replaced != 4 {
        return Err(format!(
            "contrib/mosquitto/gilmsg-firehose.conf: expected its two listeners and two files, replaced {replaced}"
        ));
    }
    text.push_str(
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nuser root\n",
    );
    Ok(text)
}
