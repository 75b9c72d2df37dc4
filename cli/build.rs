//! Link flags for the installed tools.
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
//! its own. The cause is not found; until it is, the flag is an experiment.
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

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GILMSG_PACKED_RELOCS");
    let target = |key: &str| env::var(key).unwrap_or_default();
    let glibc = target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu";
    let asked = env::var_os("GILMSG_PACKED_RELOCS").is_some_and(|v| !v.is_empty() && v != "0");
    if glibc && asked && linked_libc_loads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
