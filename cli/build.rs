//! Link flags for the installed tools.
//!
//! ## Hot text first (on by default where the linker is lld)
//!
//! The functions a running consumer executes are spread over its 9.8 MiB
//! of machine code, and every page of code it touches brings its
//! neighbours into its page tables too: the kernel maps up to 64 KiB
//! around a fault from what the disk's read-ahead already cached. On the
//! benchmark machine (8 MiB read-ahead) the consumer's code mapping held
//! 6.1 MiB resident for 2.3 MiB of touched pages, over a third of its
//! steady-state RSS (docs/benchmarks.md, "Hot text first").
//! `cli/text-order.txt` lists the functions a consumer executes (sampled
//! and page-touched, from `scripts/text-order.sh`), and the linker puts
//! them first (`--symbol-ordering-file`): they then share their pages, and
//! the cold code (AMQP, TLS, x509 parsing, errors) stays out of memory.
//! Only placement changes, never code; a name the build lacks is skipped,
//! so a stale list costs memory, not correctness.
//!
//! Rust symbol names carry hashes that change with the compiler, so the
//! list fits the rustc recorded in `cli/text-order.rustc`; with another,
//! the build says so (a `cargo:warning`) and most of the list is skipped.
//!
//! The option is lld's (rustup's Rust >= 1.90 links x86_64 Linux
//! executables with its own lld). Whether this build's link takes it is
//! tried, not guessed: an empty program is linked with the same rustc,
//! target, flags and configured linker plus the option, and only if that
//! succeeds are the tools linked with it. `GILMSG_NO_TEXT_ORDER=1` leaves
//! it out anyway.
//!
//! ## Packed relocations (opt-in)
//!
//! With `GILMSG_PACKED_RELOCS=1`, and where the C library they link against
//! can load them, the executables are linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR). They are
//! position-independent, so the loader rewrites every pointer in their
//! read-only data at start-up; as plain RELA entries those instructions
//! took 456 KiB of `gilmsg-consumer` (`dist` build), all of it read once
//! and then resident for the process's life, about 3 % of the consumer's
//! steady-state RSS (docs/benchmarks.md, the soak). Packed, they take
//! 12 KiB.
//!
//! Off by default: with it on, one bridge test
//! (`python_gilmsg_logger_is_acked_by_our_amqp_consumer_across_the_bridge`)
//! failed every time it ran after the abuse, ACK, adversary and AMQP test
//! files (3 runs of 3), and passed every time without it (3 of 3) or on
//! its own. On a freshly started machine (2026-12-01) the same sequence
//! and the whole suite passed with it (2 runs of 2), so the failure seems
//! to have come from that machine's state; the cause is not found, and
//! until it is, the flag is an experiment.
//!
//! A linker that knows the flag (GNU ld >= 2.38, lld) marks the executable
//! as needing the `GLIBC_ABI_DT_RELR` symbol version, which only glibc >=
//! 2.36 has: on an older glibc every tool would refuse to start. So even
//! when asked for, the flag is passed only when the `libc.so.6` the linker
//! would use defines that version (found with `<linker>
//! -print-file-name=libc.so.6`), and never when that cannot be told.

#![forbid(unsafe_code)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The functions to place first, one mangled name a line.
const TEXT_ORDER: &str = "text-order.txt";
/// `rustc -V` of the toolchain the list was read from: Rust symbol names
/// carry hashes that change with the compiler.
const TEXT_ORDER_RUSTC: &str = "text-order.rustc";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={TEXT_ORDER}");
    println!("cargo:rerun-if-changed={TEXT_ORDER_RUSTC}");
    for var in [
        "GILMSG_PACKED_RELOCS",
        "GILMSG_NO_TEXT_ORDER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let target = |key: &str| env::var(key).unwrap_or_default();
    let glibc = target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu";
    let manifest_dir = PathBuf::from(target("CARGO_MANIFEST_DIR"));
    let order = manifest_dir.join(TEXT_ORDER);
    if !flag("GILMSG_NO_TEXT_ORDER") && order.is_file() && links_with_ordering(&order) {
        for arg in ordering_args(&order) {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        // For tests/layout.rs: the binaries were linked in this order.
        println!("cargo:rustc-env=GILMSG_TEXT_ORDERED=1");
        warn_if_other_rustc(&manifest_dir.join(TEXT_ORDER_RUSTC));
    }
    if glibc && flag("GILMSG_PACKED_RELOCS") && linked_libc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the environment variable `name` is set to something but `0`.
fn flag(name: &str) -> bool {
    env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The linker arguments that place the functions of `order` first. As
/// `-Xlinker` pairs, not `-Wl,`, which would split a path at its commas.
/// Names of the list that a build lacks (other inlining, another
/// dependency version) are expected, so not warned about.
fn ordering_args(order: &Path) -> Vec<String> {
    vec![
        "-Xlinker".into(),
        format!("--symbol-ordering-file={}", order.display()),
        "-Xlinker".into(),
        "--no-warn-symbol-ordering".into(),
    ]
}

/// Whether the binaries' link accepts the ordering: an empty program is
/// linked with the same rustc, target, flags and configured linker, and
/// the ordering arguments. Only lld knows them (rustup's Rust >= 1.90 links
/// x86_64 Linux executables with its own); GNU ld refuses them, and then
/// the tools are linked as before.
fn links_with_ordering(order: &Path) -> bool {
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let program = out_dir.join("order_probe.rs");
    if std::fs::write(&program, "fn main() {}\n").is_err() {
        return false;
    }
    let mut command = Command::new(rustc());
    command
        .arg("--crate-name=order_probe")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out_dir.join("order_probe"))
        .arg(&program);
    if let Ok(target) = env::var("TARGET") {
        command.arg(format!("--target={target}"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    command.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("-Clinker=");
        arg.push(linker);
        command.arg(arg);
    }
    for arg in ordering_args(order) {
        command.arg(format!("-Clink-arg={arg}"));
    }
    run(&mut command).is_some()
}

/// A `cargo:warning` when this rustc is not the one the list was read
/// from: most Rust names will not match, and the code is then laid out
/// almost as without the list (the consumer's RSS with it, docs/benchmarks.md).
fn warn_if_other_rustc(stamp: &Path) {
    let Ok(expected) = std::fs::read_to_string(stamp) else {
        return;
    };
    let Some(actual) = run(Command::new(rustc()).arg("-V")) else {
        return;
    };
    let (expected, actual) = (expected.trim(), actual.trim());
    if expected != actual {
        println!(
            "cargo:warning=cli/{TEXT_ORDER} was read from a build by `{expected}`, this is \
             `{actual}`: its Rust names will mostly not match, and the consumer will hold more \
             of its code in memory; regenerate it with scripts/text-order.sh"
        );
    }
}

/// The rustc cargo builds with.
fn rustc() -> std::ffi::OsString {
    env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// What `command` printed, when it ran and succeeded.
fn run(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the `libc.so.6` the link would use defines `GLIBC_ABI_DT_RELR`.
fn linked_libc_loads_relr() -> bool {
    // Cargo passes a configured linker on; rustc's default for -gnu is `cc`.
    let linker = env::var_os("RUSTC_LINKER").unwrap_or_else(|| "cc".into());
    let Some(printed) = run(Command::new(&linker).arg("-print-file-name=libc.so.6")) else {
        return false;
    };
    let path = PathBuf::from(printed.trim());
    // Without a full path the driver did not find it: cannot tell.
    if !path.is_absolute() {
        return false;
    }
    // A glibc upgraded (or downgraded) under the target directory decides anew.
    println!("cargo:rerun-if-changed={}", path.display());
    let Ok(bytes) = std::fs::read(&path) else {
        return false;
    };
    let needle = b"GLIBC_ABI_DT_RELR";
    bytes.windows(needle.len()).any(|w| w == needle)
}
