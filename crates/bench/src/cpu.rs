//! Where the CPU time of a throughput run goes, by process and thread: the
//! kernel's count of nanoseconds each thread ran (`/proc/<pid>/task/<tid>/schedstat`,
//! user and kernel time together), read before and after a run. Divided by
//! the messages, it says what each thread costs per message on this
//! machine, which wall-clock rates on a shared machine cannot.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// CPU nanoseconds so far of each thread of a set of processes, keyed by
/// `(process label, tid)`, with the thread's name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: BTreeMap<(String, u32), (String, u64)>,
}

impl Snapshot {
    /// Reads every thread of `processes` (`label`, pid).
    pub fn take(processes: &[(String, u32)]) -> Snapshot {
        let mut threads = BTreeMap::new();
        for (label, pid) in processes {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<u32>().ok())
                else {
                    continue;
                };
                let dir = task.path();
                let ran = std::fs::read_to_string(dir.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
                let name = std::fs::read_to_string(dir.join("comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default();
                if let Some(ran) = ran {
                    threads.insert((label.clone(), tid), (name, ran));
                }
            }
        }
        Snapshot { threads }
    }

    /// CPU µs per message spent between `self` and `later`, by process
    /// label and thread name (threads of one name summed), and in all.
    pub fn per_message(&self, later: &Snapshot, messages: usize) -> Value {
        let mut by: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut total = 0.0;
        // Threads of one name in one process (a socket thread and the
        // libzmq threads it starts, which inherit its name) are told apart
        // by their order of creation: `name`, `name#2`, ...
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (key, (name, ran)) in &later.threads {
            let n = seen.entry((key.0.clone(), name.clone())).or_default();
            *n += 1;
            let name = if *n == 1 {
                name.clone()
            } else {
                format!("{name}#{n}")
            };
            let before = self.threads.get(key).map_or(0, |(_, r)| *r);
            let us = ran.saturating_sub(before) as f64 / 1e3 / messages.max(1) as f64;
            // Consumers are labelled `consumer-<i>`; one row for all of them.
            let process = if key.0.starts_with("consumer-") {
                "consumers".to_owned()
            } else {
                key.0.clone()
            };
            *by.entry(process).or_default().entry(name).or_default() += us;
            total += us;
        }
        json!({"total_us_per_msg": total, "by_thread_us_per_msg": by})
    }
}

/// CPU nanoseconds the calling thread has run so far
/// (`CLOCK_THREAD_CPUTIME_ID`), so that a measurement of the signature
/// costs counts the work, not the time other processes on a shared machine
/// held the core. Not `/proc/thread-self/schedstat`: for the thread that
/// reads it, the kernel reports the run time as of its last scheduler tick
/// (4 ms here), which made a batch of 500 signatures read in steps of 8 µs
/// per signature (S 25.6 in one run, 40.0 in the next, on the same code).
pub fn thread_ns() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u64::try_from(now.tv_nsec()).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}
