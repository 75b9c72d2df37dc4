//! `gilmsg-pki`: see [`gilmsg_cli::pki`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Pki.main(std::env::args_os())
}
