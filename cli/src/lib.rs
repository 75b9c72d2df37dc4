//! # gilmsg-cli: the command-line tools, as glue over the `gilmsg` library
//!
//! Each binary in `src/bin/` is a few lines that run one [`roles::Role`],
//! so the demo can start real relay and consumer processes by re-running
//! its own executable in another role.
//!
//! ## Layout
//! - [`roles`]: which tool an executable runs, re-running an executable as
//!   a relay or consumer, and starting those roles on loopback.
//! - [`common`]: exit statuses, the flags every bus command takes, config
//!   loading, duration parsing, logging, the stats line.
//! - [`signals`]: SIGINT/SIGTERM (stop) and SIGUSR1 (counters).
//! - [`procs`]: child processes with readiness lines and kill-on-drop.
//! - [`logger`]: `gilmsg-logger`, flag-compatible with fedmsg/gilmsg-logger.
//! - [`consumer`]: `gilmsg-consumer`, the ACK-sending consumer for shells.
//! - [`relay`]: `gilmsg-relay`, the forwarder.
//! - [`bridge`]: `gilmsg-bridge`, the ZeroMQ <-> AMQP migration bridges.
//! - [`pki`]: `gilmsg-pki`, the bus's CA, identities and CRL.
//! - [`demo`]: `gilmsg-demo`, the self-contained loopback demonstration.
//! - [`rabbit`]: a throwaway RabbitMQ node (the demo's `--transport amqp`,
//!   the tests, the bench).
//! - [`service`]: what the long-running tools do as services: monitoring
//!   endpoint, systemd notify and watchdog, heartbeats.
//! - [`status`]: `gilmsg-status`, the heartbeat check (nagios exit codes).
//! - [`tail`]: `gilmsg-tail`, the validating, non-ACKing tail.
//! - [`firehose`]: `gilmsg-firehose`, the bus on MQTT and a live web view.
//! - [`bridge_verify`]: `gilmsg-bridge verify`, the checker that compares
//!   the two sides of a ZeroMQ <-> AMQP bridge.
//!
//! The benchmark is the `gilmsg-bench` package (`crates/bench`); the
//! integration tests' kit is `gilmsg-testkit` (`crates/testkit`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod bridge_verify;
pub mod common;
pub mod consumer;
pub mod demo;
pub mod firehose;
pub mod logger;
pub mod pki;
pub mod procs;
pub mod rabbit;
pub mod relay;
pub mod roles;
pub mod service;
pub mod signals;
pub mod status;
pub mod tail;
