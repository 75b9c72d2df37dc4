//! Link flags for the installed tools.
//!
//! ## Hot text first (on by default where the linker is Rust's own lld)
//!
//! The functions a running consumer executes are spread over its 9.8 MiB
//! of machine code, and every page of code it touches brings its
//! neighbours into its page tables too (the kernel maps up to 64 KiB
//! around a fault from what the disk's read-ahead already cached). On the
//! benchmark machine 2.3 MiB of touched code cost 6.3 MiB of resident text,
//! about 40 % of the consumer's steady-state RSS (docs/benchmarks.md, "Hot
//! text first"). `cli/text-order.txt` lists the functions a consumer
//! executes (sampled and page-touched, from `scripts/text-order.sh`), and
//! the linker puts them first (`--symbol-ordering-file`): they then share
//! their pages, and the cold code (AMQP, TLS, x509 parsing, errors) stays
//! out of memory. Only placement changes, never code; a name the build no
//! longer has is skipped, so a stale list costs memory, not correctness.
//!
//! The option is lld's. Rust >= 1.90 links x86_64 Linux executables with
//! its own lld by default, so the list is passed only there: on that
//! target, with such a rustc, when the rustc's lld says it knows the
//! option, and when nothing in the flags or the configured linker chooses
//! another linker. `GILMSG_NO_TEXT_ORDER=1` leaves it out anyway.
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
use std::path::PathBuf;
use std::process::Command;

/// The functions to place first, one mangled name a line.
const TEXT_ORDER: &str = "text-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={TEXT_ORDER}");
    println!("cargo:rerun-if-env-changed=GILMSG_PACKED_RELOCS");
    println!("cargo:rerun-if-env-changed=GILMSG_NO_TEXT_ORDER");
    let target = |key: &str| env::var(key).unwrap_or_default();
    let glibc = target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu";
    if glibc && !flag("GILMSG_NO_TEXT_ORDER") && target("CARGO_CFG_TARGET_ARCH") == "x86_64" {
        let order = PathBuf::from(target("CARGO_MANIFEST_DIR")).join(TEXT_ORDER);
        if order.is_file() && links_with_rusts_lld() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            // Names of another build's list that this build lacks (other
            // inlining, another dependency version) are expected.
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
            // For tests/layout.rs: the binaries were linked in this order.
            println!("cargo:rustc-env=GILMSG_TEXT_ORDERED=1");
        }
    }
    if glibc && flag("GILMSG_PACKED_RELOCS") && linked_libc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the environment variable `name` is set to something but `0`.
fn flag(name: &str) -> bool {
    env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether rustc will link the binaries with its own lld, and that lld
/// knows `--symbol-ordering-file`: rustc >= 1.90 does so by default on
/// x86_64-unknown-linux-gnu, unless told otherwise (a linker flavor, a
/// self-contained setting, linker features, `-fuse-ld` in the flags, or a
/// configured linker, which this cannot see through: then no).
fn links_with_rusts_lld() -> bool {
    if env::var("TARGET").ok().as_deref() != Some("x86_64-unknown-linux-gnu") {
        return false;
    }
    if env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let chooses_linker = ["linker", "link-self-contained", "fuse-ld"];
    if chooses_linker.iter().any(|word| flags.contains(word)) {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Some(version) = run(Command::new(&rustc).arg("-vV")) else {
        return false;
    };
    let release = version
        .lines()
        .find_map(|line| line.strip_prefix("release: "))
        .unwrap_or_default();
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return false;
    };
    if (major, minor) < (1, 90) {
        return false;
    }
    let Some(sysroot) = run(Command::new(&rustc).args(["--print", "sysroot"])) else {
        return false;
    };
    let lld =
        PathBuf::from(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld");
    run(Command::new(lld).args(["-flavor", "gnu", "--help"]))
        .is_some_and(|help| help.contains("--symbol-ordering-file"))
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
    let Ok(output) = Command::new(&linker)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    // Without a full path the driver did not find it: cannot tell.
    if !output.status.success() || !path.is_absolute() {
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
