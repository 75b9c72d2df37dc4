//! Link flags for the installed tools.
//!
//! On glibc targets the executables are linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR). They are
//! position-independent, so the loader rewrites every pointer in their
//! read-only data at start-up; as plain RELA entries those instructions
//! took 456 KiB of `gilmsg-consumer` (`dist` build), all of it read once
//! and then resident for the process's life, about 3 % of the consumer's
//! steady-state RSS (docs/benchmarks.md, the soak). Packed, they take
//! 12 KiB. Linking needs binutils >= 2.38 (an older `ld` warns and ignores
//! the flag); running needs glibc >= 2.36, which the loader checks by
//! symbol version (`GLIBC_ABI_DT_RELR`) and refuses cleanly below. To build
//! executables for an older glibc on a newer system, set
//! `GILMSG_NO_PACKED_RELOCS=1`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GILMSG_NO_PACKED_RELOCS");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let opted_out = std::env::var_os("GILMSG_NO_PACKED_RELOCS").is_some_and(|v| v != "0");
    if os == "linux" && env == "gnu" && !opted_out {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
