//! `gilmsg-demo`: see [`gilmsg_cli::demo`].

fn main() -> std::process::ExitCode {
    gilmsg_cli::common::init_logging();
    gilmsg_cli::demo::main()
}
