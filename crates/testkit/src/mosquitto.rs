//! A throwaway mosquitto broker for the firehose tests: Debian's
//! `mosquitto` with a config of its own in a temporary directory, on
//! loopback only, on free ports: a TCP listener and a websockets listener.
//! Anonymous clients may subscribe only; the user [`FIREHOSE_USER`] alone
//! may publish, under the prefixes given to [`Mosquitto::start`] (a
//! password file made with `mosquitto_passwd`, an ACL file).
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
    /// Starts a broker where [`FIREHOSE_USER`] may publish under each of
    /// `prefixes` (`<prefix>/#`) and anyone may subscribe; waits up to
    /// `limit` for it.
    pub fn start(prefixes: &[&str], limit: Duration) -> Result<Mosquitto, String> {
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
        fs::write(d.join("acl"), acl(prefixes)).map_err(|e| e.to_string())?;
        fs::write(d.join("mosquitto.conf"), config(d, port, ws_port)).map_err(|e| e.to_string())?;
        let watchdog_script = format!(
            "read _ignored; for p in $(cat {pids} 2>/dev/null); do kill -TERM $p 2>/dev/null; done; \
             sleep 2; for p in $(cat {pids} 2>/dev/null); do kill -KILL $p 2>/dev/null; done; \
             rm -rf -- '{dir}'",
            pids = d.join("pids").display(),
            dir = d.display()
        );
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(watchdog_script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        let pipe = watchdog.stdin.take().ok_or("watchdog: no stdin")?;
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

/// The ACL: anonymous clients read everything; the firehose user writes
/// under its prefixes (and reads everything).
pub fn acl(prefixes: &[&str]) -> String {
    let mut text = String::from("# anonymous clients: subscribe only\ntopic read #\n\n");
    text.push_str(&format!("user {FIREHOSE_USER}\ntopic read #\n"));
    for prefix in prefixes {
        text.push_str(&format!("topic write {}/#\n", prefix.trim_end_matches('/')));
    }
    text
}

/// The broker's config: loopback listeners, the password and ACL files of
/// `dir`, no persistence.
pub fn config(dir: &Path, port: u16, ws_port: u16) -> String {
    format!(
        "# gilmsg test broker: loopback only\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         password_file {passwd}\n\
         acl_file {acl}\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         # as root, stay root: the files are in a private temporary directory\n\
         user root\n\
         listener {port} 127.0.0.1\n\
         protocol mqtt\n\
         listener {ws_port} 127.0.0.1\n\
         protocol websockets\n",
        passwd = dir.join("passwd").display(),
        acl = dir.join("acl").display(),
    )
}
