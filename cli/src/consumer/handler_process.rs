//! The one place this crate needs `unsafe`: a hook that runs in the forked
//! handler process before `exec`, so the handler dies with the consumer.

use nix::sys::signal::Signal;

/// Makes the kernel send SIGKILL to the handler if the consumer dies
/// first, however it dies (`PR_SET_PDEATHSIG`).
///
/// The signal fires when the *thread* that forked exits: handlers are
/// spawned from the consumer's main thread (its runtime is
/// current-thread), which lives as long as the process.
#[allow(unsafe_code)]
pub(super) fn die_with_consumer(command: &mut tokio::process::Command) {
    let consumer = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes two system calls
    // (prctl, getppid) and allocates nothing, even on its error paths.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The consumer died before prctl took effect: nobody would
            // ever signal this handler, so do not start it.
            if nix::unistd::getppid() != consumer {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}
