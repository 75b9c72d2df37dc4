//! `gilmsg-relay`: see [`gilmsg_cli::relay`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = gilmsg_cli::relay::Args::parse();
    gilmsg_cli::common::init_logging_as(args.common.log_format);
    gilmsg_cli::common::report("gilmsg-relay", gilmsg_cli::relay::run(args))
}
