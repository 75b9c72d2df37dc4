//! The Python peers' side of a loopback bus: the `fedmsg.d/` directory
//! fedmsg reads its configuration from (in its working directory), and a
//! clean environment to run Python in. The interop tests and the
//! benchmark's Python anchor both talk to fedmsg this way.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// What a `fedmsg.d/*.py` file says: the bus's relay, the PKI, and which
/// certificate each process signs with.
#[derive(Debug, Clone, Copy)]
pub struct FedmsgD<'a> {
    /// Who wrote the file, for its first comment line.
    pub written_by: &'a str,
    /// The PKI directory (`ca.crt`, `crl.pem`, `<name>.{crt,key}`).
    pub pki: &'a Path,
    /// fedmsg's `topic_prefix`.
    pub topic_prefix: &'a str,
    /// fedmsg's `environment`.
    pub environment: &'a str,
    /// Where publishers send (the relay's inbound).
    pub inbound: &'a str,
    /// Where subscribers connect (the relay's outbound).
    pub outbound: &'a str,
    /// `(service, certname)`: a process of that service on this host signs
    /// as `certname` (fedmsg's `certnames`, keyed `<service>.<host>`; the
    /// command-line tools are the `shell` service).
    pub certnames: &'a [(&'a str, &'a str)],
    /// More `key=value` items of the config dict, in Python syntax (e.g.
    /// `("post_init_sleep", "0.2")`); fedmsg's defaults otherwise.
    pub extra: &'a [(&'a str, &'a str)],
}

impl FedmsgD<'_> {
    /// The file's Python text.
    pub fn text(&self) -> String {
        let mut certnames = String::new();
        for (service, certname) in self.certnames {
            let _ = write!(certnames, "{service:?} + '.' + _H: {certname:?}, ");
        }
        let mut extra = String::new();
        for (key, value) in self.extra {
            let _ = writeln!(extra, "    {key}={value},");
        }
        format!(
            r#"# Written by {written_by}.
import socket as _socket
_H = _socket.gethostname().split('.')[0]
_PKI = {pki:?}
config = dict(
    topic_prefix={prefix:?},
    environment={env:?},
    zmq_enabled=True,
    endpoints={{'relay_outbound': [{outbound:?}]}},
    relay_inbound=[{inbound:?}],
    sign_messages=True,
    validate_signatures=True,
    ssldir=_PKI,
    ca_cert_location=_PKI + '/ca.crt',
    crl_location=_PKI + '/crl.pem',
    certnames={{{certnames}}},
{extra})
"#,
            written_by = self.written_by,
            pki = self.pki.display().to_string(),
            prefix = self.topic_prefix,
            env = self.environment,
            outbound = self.outbound,
            inbound = self.inbound,
        )
    }

    /// Writes `<dir>/fedmsg.d/<file>`, and makes `<dir>/home` for
    /// [`command`].
    pub fn write(&self, dir: &Path, file: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("fedmsg.d"))?;
        std::fs::create_dir_all(dir.join("home"))?;
        std::fs::write(dir.join("fedmsg.d").join(file), self.text())
    }
}

/// `program` (a Python or a console script of the venv) to run in `dir`,
/// where [`FedmsgD::write`] put the configuration: `HOME` is `<dir>/home`,
/// so nothing of the user's `~/.fedmsg.d` leaks in, output is unbuffered,
/// and no virtualenv or `PYTHONPATH` of the caller is inherited.
pub fn command(program: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH");
    command
}

/// The venv holding fedora-messaging 3.9.1 (the AMQP interop peer and the
/// bench's AMQP Python anchor): `$GILMSG_FEDORA_MESSAGING` when set (as
/// `scripts/test` sets it), else made (or found ready) by
/// `scripts/fedora-messaging-peer.sh` in this workspace's `target/`.
/// `None`, after saying SKIP, when it cannot be had (offline, no python3)
/// and `GILMSG_REQUIRE_FEDORA_MESSAGING` is not set.
///
/// # Panics
/// When it cannot be had and `GILMSG_REQUIRE_FEDORA_MESSAGING` is set.
pub fn fedora_messaging_venv() -> Option<std::path::PathBuf> {
    static VENV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        if let Some(dir) = std::env::var_os("GILMSG_FEDORA_MESSAGING") {
            return Some(dir.into());
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fedora-messaging-peer.sh");
        let made = Command::new(&script)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output();
        match made {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .map(|l| std::path::PathBuf::from(l.trim())),
            other => {
                let why = format!(
                    "SKIP: no fedora-messaging venv ({} failed: {other:?})",
                    script.display()
                );
                if std::env::var_os("GILMSG_REQUIRE_FEDORA_MESSAGING").is_some() {
                    panic!("{why}");
                }
                eprintln!("{why}");
                None
            }
        }
    })
    .clone()
}
