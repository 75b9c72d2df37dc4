//! `gilmsg-tail`: see [`gilmsg_cli::tail`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Tail.main(std::env::args_os())
}
