//! Several "hosts" on one machine: network namespaces on a bridge.
//!
//! A [`Net`] is one hub namespace holding a bridge (`br0`, the "switch")
//! plus one namespace per [`Host`], each joined to the bridge by a veth pair
//! (`eth0` in the host, `h<N>` in the hub) and addressed `10.77.<net>.<N>/24`.
//! Namespace names are `gm<pid>-<scenario>-<host>`, unique per test run.
//!
//! Faults:
//! - [`Host::nft`] loads an nftables table into the host's namespace
//!   (partition, one-way drop, random loss); [`Host::heal`] deletes it;
//! - [`Net::link`] sets the host's port on the switch down or up (cable
//!   pulled).
//!
//! Everything is removed by [`Net`]'s `Drop`, also on panic: processes still
//! inside our namespaces are killed by PID (`ip netns pids`), then the
//! namespaces are deleted, which destroys their veth pairs. [`cleanup`]
//! does the same by name prefix, for the runner after a scenario overran
//! its limit, and for leftovers of earlier runs whose process is gone.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gilmsg_testkit::child::run_ok;
use gilmsg_testkit::guard::{self, Registry};
use gilmsg_testkit::Running;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long one `ip` or `nft` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Runs `ip <args>` (or any program), panicking with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    run_with_stdin(program, args, "")
}

/// Runs a command, feeding `stdin`; panics on failure.
fn run_with_stdin(program: &str, args: &[&str], stdin: &str) -> String {
    let mut command = Command::new(program);
    command.args(args);
    let mut what = format!("{program} {}", args.join(" "));
    if !stdin.is_empty() {
        what.push_str(&format!(" with input:\n{stdin}\n"));
    }
    run_ok(command, &what, stdin, COMMAND_LIMIT)
}

/// Why namespaces cannot be used here, or `None` if they can. Installs
/// `iproute2`/`nftables` first when missing and we are root with apt-get.
pub fn unavailable() -> Option<String> {
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if !have(tool) {
            install(package);
        }
        if !have(tool) {
            return Some(format!(
                "`{tool}` is not installed (apt-get install {package})"
            ));
        }
    }
    let probe = format!("gm{}-probe", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::piped())
        .output();
    match made {
        Ok(out) if out.status.success() => {
            let nft = Command::new("ip")
                .args(["netns", "exec", &probe, "nft", "list", "ruleset"])
                .output();
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            match nft {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(format!(
                    "nftables does not work in a namespace: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run nft: {e}")),
            }
        }
        Ok(out) => Some(format!(
            "cannot create a network namespace (needs root / CAP_NET_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run ip: {e}")),
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install(package: &str) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !have("apt-get") {
        return;
    }
    eprintln!("faults: installing {package}");
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get install -y -qq {package} >/dev/null 2>&1 || \
                 (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package} >/dev/null)"
            ),
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}

/// Kills every process in namespaces whose name starts with `prefix` and
/// deletes those namespaces.
pub fn cleanup(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(prefix) {
            delete_namespace(name);
        }
    }
}

/// Deletes `gm<pid>-...` namespaces left by earlier runs whose process is gone.
pub fn cleanup_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("gm")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}

fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

static NEXT_NET: AtomicU32 = AtomicU32::new(1);

/// A switch (bridge in a hub namespace) and the hosts plugged into it.
pub struct Net {
    prefix: String,
    hub: String,
    subnet: u32,
    hosts: Vec<String>,
    registry: Registry,
}

/// One machine: a namespace with `eth0` on the switch.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name (`relay`, `c1`, ...).
    pub name: String,
    /// Namespace name.
    pub ns: String,
    /// IPv4 address on the switch.
    pub ip: String,
    /// Index: the last octet, and the hub-side port `h<index>`.
    pub index: u32,
}

impl Net {
    /// A new switch for `scenario` (a short tag, part of namespace names).
    pub fn new(scenario: &str) -> Net {
        let prefix = format!("gm{}-{scenario}-", std::process::id());
        cleanup(&prefix);
        let hub = format!("{prefix}hub");
        let subnet = NEXT_NET.fetch_add(1, Ordering::Relaxed) % 250;
        let net = Net {
            prefix,
            hub: hub.clone(),
            subnet,
            hosts: Vec::new(),
            registry: guard::current(),
        };
        run("ip", &["netns", "add", &hub]);
        run("ip", &["-n", &hub, "link", "set", "lo", "up"]);
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        net
    }

    /// Plugs a new host into the switch.
    pub fn host(&mut self, name: &str) -> Host {
        let index = u32::try_from(self.hosts.len()).expect("few hosts") + 1;
        let ns = format!("{}{name}", self.prefix);
        let ip = format!("10.77.{}.{index}", self.subnet);
        let port = format!("h{index}");
        run("ip", &["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n", &self.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        );
        run(
            "ip",
            &["-n", &self.hub, "link", "set", &port, "master", "br0"],
        );
        run("ip", &["-n", &self.hub, "link", "set", &port, "up"]);
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        Host {
            name: name.to_owned(),
            ns,
            ip,
            index,
        }
    }

    /// Sets `host`'s port on the switch down (`false`) or up (`true`).
    pub fn link(&self, host: &Host, up: bool) {
        let port = format!("h{}", host.index);
        run(
            "ip",
            &[
                "-n",
                &self.hub,
                "link",
                "set",
                &port,
                if up { "up" } else { "down" },
            ],
        );
    }

    /// Starts `program args` inside `host`, registered with the test's
    /// guard (killed on overrun) and killed when the `Proc` is dropped.
    pub fn spawn(&self, host: &Host, name: &str, program: &Path, args: &[&str]) -> NsProc {
        self.spawn_with(host, name, program, args, &[], false)
    }

    /// [`Net::spawn`] with extra environment and, optionally, a stdin socket
    /// (returned in [`NsProc::stdin`]).
    pub fn spawn_with(
        &self,
        host: &Host,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        piped_stdin: bool,
    ) -> NsProc {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.ns])
            .arg(program)
            .args(args)
            .env("GILMSG_LOG", "warn")
            .env_remove("GILMSG_CONFIG");
        for (k, v) in env {
            command.env(k, v);
        }
        let stdin = if piped_stdin {
            // A socketpair, not std::io::pipe (MSRV 1.80): the child reads
            // one end as its stdin, we write the other.
            let (reader, writer) = UnixStream::pair().expect("socketpair");
            command.stdin(Stdio::from(OwnedFd::from(reader)));
            Some(writer)
        } else {
            command.stdin(Stdio::null());
            None
        };
        // `ip netns exec` execs the program: the PID registered with the
        // guard is the program's.
        let proc = Running::spawn_in(&self.registry, &format!("{name}@{}", host.name), command);
        NsProc { proc, stdin }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().rev() {
            delete_namespace(ns);
        }
        delete_namespace(&self.hub);
        // Anything else with our prefix (a host whose set-up panicked half-way).
        cleanup(&self.prefix);
    }
}

impl Host {
    /// Loads an nftables table named `fault` into this host's namespace,
    /// replacing any earlier one. `chains` is the body of the table.
    pub fn nft(&self, chains: &str) {
        self.heal();
        let script = format!("table inet fault {{\n{chains}\n}}\n");
        run_with_stdin(
            "ip",
            &["netns", "exec", &self.ns, "nft", "-f", "-"],
            &script,
        );
    }

    /// Deletes the `fault` table, if any.
    pub fn heal(&self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", "fault",
            ])
            .stderr(Stdio::null())
            .status();
    }

    /// Drops every packet in and out of `eth0`: the host is cut off.
    pub fn partition(&self) {
        self.nft(
            "  chain in { type filter hook input priority 0; iifname \"eth0\" drop; }\n  \
             chain out { type filter hook output priority 0; oifname \"eth0\" drop; }",
        );
    }

    /// Drops outgoing TCP to `ip:port` only (one-way failure).
    pub fn drop_egress_to(&self, ip: &str, port: u16) {
        self.nft(&format!(
            "  chain out {{ type filter hook output priority 0; ip daddr {ip} tcp dport {port} drop; }}"
        ));
    }

    /// Drops `percent`% of the packets on `eth0`, each way, at random.
    pub fn loss(&self, percent: u32) {
        self.nft(&format!(
            "  chain in {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n  \
             chain out {{ type filter hook output priority 0; oifname \"eth0\" numgen random mod 100 < {percent} drop; }}"
        ));
    }

    /// `tcp://<ip>:<port>`.
    pub fn endpoint(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.ip)
    }
}

/// A process inside a namespace.
pub struct NsProc {
    /// The process, with its output read line by line (registered with
    /// the test's guard, killed when dropped).
    pub proc: Running,
    /// Its stdin, if started with one to write to.
    pub stdin: Option<UnixStream>,
}

impl NsProc {
    /// Writes one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("started with a stdin socket");
        writeln!(stdin, "{line}").expect("write to child's stdin");
        stdin.flush().expect("flush");
    }

    /// SIGKILL now, and reap.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}
