//! `gilmsg-logger`: see [`gilmsg_cli::logger`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Logger.main(std::env::args_os())
}
