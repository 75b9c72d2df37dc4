//! `gilmsg-demo`: see [`gilmsg_cli::demo`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::demo::main()
}
