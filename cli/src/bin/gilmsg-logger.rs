//! `gilmsg-logger`: see [`gilmsg_cli::logger`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = gilmsg_cli::logger::Args::parse();
    gilmsg_cli::common::init_logging_as(args.common.log_format);
    gilmsg_cli::common::report("gilmsg-logger", gilmsg_cli::logger::run(args))
}
