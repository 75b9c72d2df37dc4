//! `gilmsg-status`: see [`gilmsg_cli::status`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Status.main(std::env::args_os())
}
