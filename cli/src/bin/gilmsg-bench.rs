//! `gilmsg-bench`: see [`gilmsg_cli::bench`].

fn main() -> std::process::ExitCode {
    gilmsg_cli::common::init_logging();
    gilmsg_cli::bench::main()
}
