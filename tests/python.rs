//! The Python package's tests (issue 13): runs the pytest suite of
//! `bindings/python/tests` with the interpreter of the venv that
//! `scripts/python-package.sh` makes, and fails when it fails, so that
//! `cargo test` (and `scripts/test`) covers the package.
//!
//! `GILMSG_PYTHON_PACKAGE` names the venv; without it the test prints a
//! SKIP line and passes (as `tests/interop.rs` does without
//! `GILMSG_PYTHON_PEERS`), unless `GILMSG_REQUIRE_PYTHON_PACKAGE` is set.
//! The venv's package is rebuilt first (the script is idempotent: a cargo
//! freshness check when nothing changed), so no run tests a stale
//! extension. The suite starts the binaries cargo just built
//! (`GILMSG_BIN_DIR`), its own relays and RabbitMQ node, and the Python
//! gilmsg 0.1.2 consumers of `GILMSG_PYTHON_PEERS`; a peer venv that is
//! set makes its tests required (`GILMSG_REQUIRE_PYTHON_PEERS`).
//!
//! Bounded: pytest gets SIGINT at [`LIMIT`] (its fixtures then stop what
//! they started, by PID) and SIGKILL 30 s later.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gilmsg_cli::procs::wait_timeout;
use gilmsg_testkit::bins;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const VAR: &str = "GILMSG_PYTHON_PACKAGE";
const LIMIT: Duration = Duration::from_secs(900);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn pytest_suite_of_the_python_package_passes() {
    let Some(venv) = std::env::var_os(VAR).filter(|v| !v.is_empty()) else {
        let why = format!(
            "SKIP python::pytest_suite_of_the_python_package_passes: {VAR} is not set. Run \
             scripts/test, or `export {VAR}=$(scripts/python-package.sh | tail -n1)` first."
        );
        assert!(
            std::env::var_os("GILMSG_REQUIRE_PYTHON_PACKAGE").is_none(),
            "{why}"
        );
        eprintln!("{why}");
        return;
    };
    let venv = PathBuf::from(venv);
    let built = Command::new(repo().join("scripts/python-package.sh"))
        .arg(&venv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/python-package.sh");
    assert!(built.success(), "scripts/python-package.sh failed: {built}");

    let out_dir = tempfile::tempdir().expect("tempdir");
    let log = out_dir.path().join("pytest.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(venv.join("bin/python"));
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(repo().join("bindings/python"))
        .env("GILMSG_BIN_DIR", bins!().dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file);
    if std::env::var_os("GILMSG_PYTHON_PEERS").is_some_and(|v| !v.is_empty()) {
        command.env("GILMSG_REQUIRE_PYTHON_PEERS", "1");
    }
    let mut child = command.spawn().expect("start pytest");
    let status = wait_timeout(&mut child, LIMIT).or_else(|| {
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGINT);
        wait_timeout(&mut child, Duration::from_secs(30)).or_else(|| {
            let _ = child.kill();
            child.wait().ok()
        })
    });
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{output}");
    let status = status.expect("pytest exit status");
    assert!(
        status.success(),
        "the Python package's pytest suite failed ({status}); its output is above"
    );
}
