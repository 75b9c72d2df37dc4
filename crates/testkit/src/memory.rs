//! How much memory a process holds, as the kernel counts it in
//! `/proc/<pid>/status`: the resident size now (`VmRSS`) and its peak
//! (`VmHWM`). The memory tests and the benchmark's memory section read it
//! the same way.

use std::fmt::Display;

/// The `VmRSS`/`VmHWM`-style field `name` (without the colon) of process
/// `pid` (a number, or `"self"`), in KiB; `None` if the process is gone or
/// has no such field.
pub fn kib(pid: impl Display, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// `VmRSS` of `pid`, in bytes.
///
/// # Panics
/// When the process is gone (a test expects it alive).
pub fn resident(pid: impl Display) -> u64 {
    bytes(pid, "VmRSS")
}

/// `VmHWM` (the peak resident size) of `pid`, in bytes.
///
/// # Panics
/// When the process is gone (a test expects it alive).
pub fn peak(pid: impl Display) -> u64 {
    bytes(pid, "VmHWM")
}

fn bytes(pid: impl Display, name: &str) -> u64 {
    kib(&pid, name).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status: is it gone?")) * 1024
}

/// `bytes` as people read it: `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
