//! Link flags for the installed tools.
//!
//! On glibc targets the executables are linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR). They are
//! position-independent, so the loader rewrites every pointer in their
//! read-only data at start-up; as plain RELA entries those instructions
//! took 456 KiB of `gilmsg-consumer` (`dist` build), all of it read once
//! and then resident for the process's life, 3 % of the consumer's
//! steady-state RSS (docs/benchmarks.md, the soak). Packed, they take a
//! few KiB. It needs binutils >= 2.38 to link (an older `ld` warns and
//! ignores it) and glibc >= 2.36 to run, which the loader checks by
//! symbol version (`GLIBC_ABI_DT_RELR`) and refuses cleanly below.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
