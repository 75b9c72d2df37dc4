//! `gilmsg-relay`: see [`gilmsg_cli::relay`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Relay.main(std::env::args_os())
}
