//! `gilmsg-firehose`: see [`gilmsg_cli::firehose`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Firehose.main(std::env::args_os())
}
