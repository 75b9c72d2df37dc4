//! `gilmsg-bridge`: see [`gilmsg_cli::bridge`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Bridge.main(std::env::args_os())
}
