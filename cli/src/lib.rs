//! # gilmsg-cli: the command-line tools, as glue over the `gilmsg` library
//!
//! Each binary in `src/bin/` is a few lines that call into a module here,
//! so the demo can start real relay and consumer processes by re-running
//! its own executable in another role.
//!
//! ## Layout
//! - [`bench`]: `gilmsg-bench`, the benchmark suite.
//! - [`bench_python`]: its Python anchor (fedmsg/gilmsg from the interop venv).
//! - [`common`]: exit statuses, config loading, duration parsing, logging.
//! - [`logger`]: `gilmsg-logger`, flag-compatible with fedmsg/gilmsg-logger.
//! - [`consumer`]: `gilmsg-consumer`, the ACK-sending consumer for shells.
//! - [`relay`]: `gilmsg-relay`, the forwarder.
//! - [`rsa_pki`]: a throwaway RSA PKI by the openssl recipe Python fedmsg accepts.
//! - [`procs`]: child processes with readiness lines and kill-on-drop.
//! - [`demo`]: `gilmsg-demo`, the self-contained loopback demonstration.

pub mod bench;
pub mod bench_python;
pub mod common;
pub mod consumer;
pub mod demo;
pub mod logger;
pub mod procs;
pub mod relay;
pub mod rsa_pki;
