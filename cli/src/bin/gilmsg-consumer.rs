//! `gilmsg-consumer`: see [`gilmsg_cli::consumer`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::roles::Role::Consumer.main(std::env::args_os())
}
