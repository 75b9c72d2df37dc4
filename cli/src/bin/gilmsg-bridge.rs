//! `gilmsg-bridge`: the ZeroMQ <-> AMQP bridge's tools. This file holds
//! only the `verify` subcommand ([`gilmsg_cli::bridge_verify`]); the
//! bridges themselves (`zmq_to_amqp`, `amqp_to_zmq`) join it at merge.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// `gilmsg-bridge`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "gilmsg-bridge",
    version,
    about = "Bridge a fedmsg ZeroMQ bus and an AMQP broker, and check the bridges."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the messages on both sides: report those seen on one side
    /// only and those changed across the bridge.
    Verify(gilmsg_cli::bridge_verify::VerifyArgs),
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Verify(args) => gilmsg_cli::bridge_verify::run(args),
    }
}
