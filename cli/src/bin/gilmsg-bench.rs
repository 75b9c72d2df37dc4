//! `gilmsg-bench`: see [`gilmsg_cli::bench`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gilmsg_cli::bench::main()
}
