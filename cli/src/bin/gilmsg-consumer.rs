//! `gilmsg-consumer`: see [`gilmsg_cli::consumer`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = gilmsg_cli::consumer::Args::parse();
    gilmsg_cli::common::init_logging_as(args.common.log_format);
    gilmsg_cli::common::report("gilmsg-consumer", gilmsg_cli::consumer::run(args))
}
