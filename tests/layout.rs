//! How the tools are linked: the functions `cli/text-order.txt` lists come
//! first in their machine code (`cli/build.rs`), so that what a running
//! consumer executes shares few pages (docs/benchmarks.md, "Hot text
//! first").

use std::collections::HashSet;
use std::process::Command;

/// The consumer's functions (`nm`: code symbols), lowest address first.
fn functions_by_address(exe: &str) -> Vec<String> {
    let out = Command::new("nm")
        .args(["--numeric-sort", "--defined-only"])
        .arg(exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (binutils) on {exe}: {e}"));
    assert!(out.status.success(), "nm {exe}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "t" | "T" | "W" | "w").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn the_listed_functions_come_first_in_the_consumers_code() {
    if option_env!("GILMSG_TEXT_ORDERED").is_none() {
        eprintln!(
            "SKIP: cli/build.rs did not order the text here (not Rust's lld, or \
             GILMSG_NO_TEXT_ORDER set)"
        );
        return;
    }
    let listed: HashSet<&str> = include_str!("../cli/text-order.txt").lines().collect();
    let functions = functions_by_address(env!("CARGO_BIN_EXE_gilmsg-consumer"));
    let positions: Vec<usize> = functions
        .iter()
        .enumerate()
        .filter(|(_, name)| listed.contains(name.as_str()))
        .map(|(i, _)| i)
        .collect();
    // In a debug build our own crates' names differ from the `dist`
    // build's the list was read from (other hashes, other inlining); the
    // C and C++ functions (libzmq) and std's still match, by the hundred.
    // So this checks that the link applies the list; that the list fits
    // the toolchain is `cli/build.rs`'s warning.
    assert!(
        positions.len() >= 200,
        "only {} of {} listed functions are in the consumer: a stale list? \
         (scripts/text-order.sh)",
        positions.len(),
        listed.len()
    );
    // Placed first: before the last listed one come the listed ones and
    // only the few that share a section with one (assembly files hold
    // several functions a section). Unordered, they spread over the whole
    // of the code.
    let last = positions.last().copied().unwrap_or_default();
    assert!(
        last < 2 * positions.len(),
        "the {} listed functions end at position {last} of {}: not placed first",
        positions.len(),
        functions.len()
    );
}
