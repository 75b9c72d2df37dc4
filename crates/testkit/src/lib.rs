//! # gilmsg-testkit: what the integration tests (and the benchmark) build on
//!
//! The tests in `tests/` start the real binaries (`gilmsg-relay`,
//! `gilmsg-consumer`, `gilmsg-logger`, `gilmsg-pki`) on 127.0.0.1 with
//! ephemeral ports, talk to them with the `gilmsg` library and with raw
//! ZeroMQ sockets, and stop every process they started, by PID, when the
//! fixture is dropped. They are test targets of `gilmsg-cli`, so cargo
//! builds the binaries before it runs them ([`bins!`]).
//!
//! ## Layout
//! - [`bins`]: [`Bins`], the freshly built executables, taken by [`bins!`]
//!   in the test crate.
//! - [`guard`]: the hard time limit every test body runs under
//!   ([`guard::within`], [`guard::within_async`]); on overrun the test's
//!   child processes are killed and the test fails instead of hanging CI.
//! - [`child`]: the processes a test starts: [`Running`] (registered with
//!   the guard, killed on drop, counters on demand) and [`run_tool`] (run
//!   to completion under a time limit, whole output in a [`ToolOutput`]).
//! - [`fixture`]: [`Bus`], a temporary PKI + relay process + config file,
//!   with helpers to start consumers ([`Consumer`]), run the logger and
//!   build an in-process publisher.
//! - [`raw`]: raw ZeroMQ peers: [`raw::RawPub`] (connected to the relay's
//!   inbound, sends only once the relay has subscribed), [`raw::RawSub`],
//!   and [`raw::FakeRecipient`], a hand-driven recipient that can send
//!   forged ACKs.
//! - [`forge`]: building ACKs and messages by hand, correct or not.
//! - [`rsa_pki`]: a throwaway RSA PKI by the openssl recipe Python fedmsg
//!   accepts (the interop tests and the benchmark's Python anchor).
//! - [`memory`]: a process's resident and peak memory, from `/proc`.
//! - [`amqp`]: [`amqp::AmqpBus`], a bus on a vhost of the RabbitMQ node
//!   the test binary shares, for the real binaries and the library.
//! - [`rabbit`]: a throwaway RabbitMQ node (own dirs, ports, epmd; stopped
//!   by PID through a watchdog even if the test process dies) and TLS
//!   certificates for it.
//! - [`mosquitto`]: a throwaway mosquitto broker (loopback, TCP and
//!   websockets listeners, anonymous read-only, one publishing user),
//!   stopped by PID even if the test process dies.
//! - [`browser`]: headless Debian chromium driven by chromedriver
//!   (WebDriver), for the web pages the tools serve.
//! - [`python`]: the Python peers' `fedmsg.d/` and a clean environment.
//!
//! Child processes are [`Proc`]s, the type the demo starts its roles with
//! (`gilmsg_cli::procs`), re-exported here.
//!
//! Nothing here sleeps to synchronise: readiness comes from the processes'
//! `ready` lines, from ZeroMQ subscription messages, from process exit, or
//! from counters polled in bounded loops.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod amqp;
pub mod bins;
pub mod browser;
pub mod child;
pub mod fixture;
pub mod forge;
pub mod guard;
pub mod memory;
pub mod monitoring;
pub mod mosquitto;
pub mod python;
pub mod rabbit;
pub mod raw;
pub mod rsa_pki;

pub use bins::Bins;
pub use child::{run_tool, Running, ToolOutput};
pub use fixture::{parse_stats, publisher_builder, Bus, Consumer};
pub use gilmsg_cli::procs::{field, wait_timeout, Proc};
pub use guard::{within, within_async};

use std::time::Duration;

/// How long a process may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The topic prefix every fixture bus uses.
pub const TOPIC_PREFIX: &str = "org.gilmsg.test";
/// The environment every fixture bus uses.
pub const ENVIRONMENT: &str = "dev";
/// The modname of the in-process publisher.
pub const MODNAME: &str = "test";
/// The identity the in-process publisher signs as.
pub const PUBLISHER: &str = "publisher";

/// `err` as the timeout a publish ends with when exactly `missing` did
/// not ACK and exactly `acked` did (each in the order they were named);
/// panics, saying what it got, otherwise.
pub fn timed_out<'a>(
    err: &'a gilmsg::Error,
    missing: &[&str],
    acked: &[&str],
) -> &'a gilmsg::TimeoutError {
    let timeout = err
        .as_timeout()
        .unwrap_or_else(|| panic!("not a timeout: {err}"));
    assert_eq!(timeout.missing, missing, "{err}");
    assert_eq!(timeout.acked_names(), acked, "{err}");
    timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "exceeded its hard limit")]
    fn the_guard_fails_a_body_that_never_finishes() {
        within(Duration::from_millis(200), || {
            let (keep, never) = std::sync::mpsc::channel::<()>();
            let _keep = keep;
            let _ = never.recv();
        });
    }

    #[test]
    fn stats_lines_parse() {
        let stats = parse_stats("gilmsg-consumer: stats ack.sent=3 invalid.not_json=1");
        assert_eq!(stats.get("ack.sent"), 3);
        assert_eq!(stats.sum("invalid."), 1);
        assert_eq!(parse_stats("gilmsg-relay: stats").counters.len(), 0);
    }
}
