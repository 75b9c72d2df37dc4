//! Finding the built executables.
//!
//! Integration tests run from `target/<profile>/deps/<test>-<hash>`; the
//! binaries of the `gilmsg-cli` package are in `target/<profile>/`.
//! `cargo test --workspace` builds them; `cargo test -p gilmsg-tests` alone
//! may not, hence the hint in the panic.

use std::path::PathBuf;

/// The path of a workspace binary such as `gilmsg-relay`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run cargo build --workspace first",
        path.display()
    );
    path
}
