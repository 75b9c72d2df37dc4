//! Which tool an executable runs, in one place.
//!
//! Each binary of `src/bin/` runs one [`Role`]. The demo and the benchmark
//! also run the relay and the consumer as separate processes by re-running
//! their own executable with a role marker first (`<exe> __relay ARGS`,
//! `<exe> __consumer ARGS`, `<exe> __bridge ARGS`, see [`dispatch_reexec`]), so one file is a whole
//! bus and nothing else needs to be installed. Either way a role starts the
//! same: its command line is parsed, logging is set up by its
//! `--log-format`, it runs, and a failure is printed as one line.
//!
//! The other side, starting those roles and waiting for their ready lines,
//! is here too: [`spawn_relay`] and [`spawn_consumer`].

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;

use crate::common;
use crate::procs::{field, Proc};

/// A tool an executable can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `gilmsg-logger`: see [`crate::logger`].
    Logger,
    /// `gilmsg-consumer`: see [`crate::consumer`].
    Consumer,
    /// `gilmsg-relay`: see [`crate::relay`].
    Relay,
    /// `gilmsg-pki`: see [`crate::pki`].
    Pki,
    /// `gilmsg-status`: see [`crate::status`].
    Status,
    /// `gilmsg-tail`: see [`crate::tail`].
    Tail,
    /// `gilmsg-firehose`: see [`crate::firehose`].
    Firehose,
    /// `gilmsg-bridge`: see [`crate::bridge`].
    Bridge,
}

impl Role {
    /// The roles another executable may be re-run in, by their markers.
    const REEXEC: [(&'static str, Role); 4] = [
        ("__relay", Role::Relay),
        ("__consumer", Role::Consumer),
        ("__bridge", Role::Bridge),
        ("__firehose", Role::Firehose),
    ];

    /// The program name its messages start with.
    pub fn program(self) -> &'static str {
        match self {
            Role::Logger => "gilmsg-logger",
            Role::Consumer => "gilmsg-consumer",
            Role::Relay => "gilmsg-relay",
            Role::Pki => "gilmsg-pki",
            Role::Status => "gilmsg-status",
            Role::Tail => "gilmsg-tail",
            Role::Firehose => "gilmsg-firehose",
            Role::Bridge => "gilmsg-bridge",
        }
    }

    /// The marker that re-runs an executable in this role, if it can be.
    pub fn marker(self) -> Option<&'static str> {
        Role::REEXEC
            .iter()
            .find(|(_, role)| *role == self)
            .map(|(marker, _)| *marker)
    }

    /// Runs the tool with `argv` (program name first, as
    /// `std::env::args_os()` gives it) and returns its exit status.
    pub fn main(self, argv: impl IntoIterator<Item = OsString>) -> ExitCode {
        let report = |result| common::report(self.program(), result);
        match self {
            Role::Logger => {
                let args = crate::logger::Args::parse_from(argv);
                common::init_logging_as(args.common.log_format);
                report(crate::logger::run(args))
            }
            Role::Consumer => {
                let args = crate::consumer::Args::parse_from(argv);
                common::init_logging_as(args.common.log_format);
                report(crate::consumer::run(args))
            }
            Role::Relay => {
                let args = crate::relay::Args::parse_from(argv);
                common::init_logging_as(args.common.log_format);
                report(crate::relay::run(args))
            }
            Role::Pki => crate::pki::main(argv),
            // Its exit statuses are nagios's, usage errors included.
            Role::Status => crate::status::main(argv),
            Role::Tail => {
                let args = crate::tail::Args::parse_from(argv);
                common::init_logging_as(args.common.log_format);
                report(crate::tail::run(args))
            }
            Role::Firehose => {
                let args = crate::firehose::Args::parse_from(argv);
                common::init_logging_as(args.common.log_format);
                report(crate::firehose::run(args))
            }
            // Its `verify` sub-command has exit statuses of its own.
            Role::Bridge => crate::bridge::main(argv),
        }
    }
}

/// When this process was started as `<exe> <marker> ARGS...` (see
/// [`Role::marker`]), runs that role with `<exe> ARGS...` and returns its
/// exit status; `None` otherwise, and the executable goes on as itself.
pub fn dispatch_reexec() -> Option<ExitCode> {
    let mut argv = std::env::args_os();
    let program = argv.next()?;
    let marker = argv.next()?;
    let (_, role) = Role::REEXEC
        .iter()
        .find(|(name, _)| marker.to_str() == Some(name))?;
    Some(role.main(std::iter::once(program).chain(argv)))
}

/// A relay started on ephemeral loopback ports, with the endpoints it bound.
#[derive(Debug)]
pub struct LoopbackRelay {
    /// The process.
    pub proc: Proc,
    /// Where publishers connect.
    pub inbound: String,
    /// Where consumers connect.
    pub outbound: String,
}

/// Runs `exe __relay` on `tcp://127.0.0.1:*` for both sockets and waits
/// for its ready line (at most `timeout`), which names the ports it bound.
pub fn spawn_relay(name: &str, exe: &Path, timeout: Duration) -> Result<LoopbackRelay, String> {
    let mut command = Command::new(exe);
    command.args([
        "__relay",
        "--inbound",
        "tcp://127.0.0.1:*",
        "--outbound",
        "tcp://127.0.0.1:*",
    ]);
    let proc = Proc::spawn(name, command).map_err(|e| format!("cannot start {name}: {e}"))?;
    let line = proc.wait_stderr(crate::relay::READY_LINE, timeout)?;
    match (field(&line, "inbound"), field(&line, "outbound")) {
        (Some(i), Some(o)) => Ok(LoopbackRelay {
            inbound: i.to_owned(),
            outbound: o.to_owned(),
            proc,
        }),
        _ => Err(format!("{name}: unexpected ready line {line:?}")),
    }
}

/// Starts `exe __consumer --config <config> --certname <certname> <args>`
/// (without `__consumer` when `exe` is `gilmsg-consumer` itself) as the
/// process `name`, without waiting: start every consumer first,
/// then [`wait_consumer_ready`] for each, so they come up side by side.
pub fn spawn_consumer(
    name: &str,
    exe: &Path,
    config: &Path,
    certname: &str,
    args: &[&str],
) -> Result<Proc, String> {
    let mut command = Command::new(exe);
    // `gilmsg-consumer` itself takes no role; any other binary of ours
    // runs its consumer role.
    if exe.file_stem() != Some(std::ffi::OsStr::new("gilmsg-consumer")) {
        command.arg("__consumer");
    }
    command
        .arg("--config")
        .arg(config)
        .args(["--certname", certname])
        .args(args);
    Proc::spawn(name, command).map_err(|e| format!("cannot start {name}: {e}"))
}

/// Waits (at most `timeout`) for a consumer's ready line, and returns it.
pub fn wait_consumer_ready(consumer: &Proc, timeout: Duration) -> Result<String, String> {
    consumer.wait_stderr(crate::consumer::READY_LINE, timeout)
}
