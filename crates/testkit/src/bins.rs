//! The tools under test, as cargo built them for this very test run.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only while it compiles the integration
//! tests of the package that owns the binaries, and builds those binaries
//! first; the tests in `tests/` are therefore test targets of `gilmsg-cli`
//! (see its `Cargo.toml`), and the paths are taken there, at compile time,
//! by the [`bins!`](crate::bins!) macro. No test can run a stale binary
//! left in `target/` by an older build.

use std::path::Path;
use std::process::{Command, Stdio};

/// The paths of the `gilmsg-cli` executables the tests start.
///
/// Made by [`bins!`](crate::bins!) in the test crate, and handed to the kit
/// (e.g. [`crate::Bus::start`]), which never looks for binaries itself.
#[derive(Debug, Clone, Copy)]
pub struct Bins {
    /// `gilmsg-relay`.
    pub relay: &'static Path,
    /// `gilmsg-consumer`.
    pub consumer: &'static Path,
    /// `gilmsg-logger`.
    pub logger: &'static Path,
    /// `gilmsg-pki`.
    pub pki: &'static Path,
    /// `gilmsg-status`.
    pub status: &'static Path,
    /// `gilmsg-tail`.
    pub tail: &'static Path,
    /// `gilmsg-bridge`.
    pub bridge: &'static Path,
}

impl Bins {
    /// The one called `name` (`gilmsg-relay`, ...).
    ///
    /// # Panics
    /// On a name that is not one of them: a mistake in the test.
    pub fn get(&self, name: &str) -> &'static Path {
        match name {
            "gilmsg-relay" => self.relay,
            "gilmsg-consumer" => self.consumer,
            "gilmsg-logger" => self.logger,
            "gilmsg-pki" => self.pki,
            "gilmsg-status" => self.status,
            "gilmsg-tail" => self.tail,
            "gilmsg-bridge" => self.bridge,
            other => panic!("{other}: not a gilmsg-cli tool the tests run"),
        }
    }

    /// `gilmsg-consumer --config <config> --certname <certname> <args>`,
    /// stdin from `/dev/null`, ready to be given more (`env`, `current_dir`)
    /// and started.
    pub fn consumer_command(&self, config: &Path, certname: &str, args: &[&str]) -> Command {
        let mut command = Command::new(self.consumer);
        command
            .arg("--config")
            .arg(config)
            .args(["--certname", certname])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// The directory they were built in (to put first on `PATH`): every
    /// binary of `gilmsg-cli`, all freshly built, is there.
    pub fn dir(&self) -> &'static Path {
        self.relay.parent().unwrap_or(Path::new("."))
    }
}

/// The [`Bins`] of this test run. Expands `env!("CARGO_BIN_EXE_...")` at
/// the call site, so it compiles only in an integration test of
/// `gilmsg-cli`, where cargo has just built them.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::Bins {
            relay: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-relay")),
            consumer: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-consumer")),
            logger: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-logger")),
            pki: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-pki")),
            status: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-status")),
            tail: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-tail")),
            bridge: ::std::path::Path::new(env!("CARGO_BIN_EXE_gilmsg-bridge")),
        }
    };
}
