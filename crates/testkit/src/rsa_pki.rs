//! A throwaway RSA PKI made with the `openssl` command line, by the recipe
//! Python fedmsg's x509 backend accepts: RSA-2048 leaves signed directly by
//! the CA, a CRL, PEM files `<dir>/<cn>.{key,crt}`, private keys mode 0600.
//!
//! `gilmsg-pki` makes Ed25519 identities, which Python peers cannot verify;
//! the interop tests and the benchmark's Python anchor need RSA ones, and
//! share this one recipe.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gilmsg_cli::procs::Proc;

/// How long one `openssl` invocation may take (RSA-2048 key generation is
/// well under a second; this only bounds a hung process).
const OPENSSL_LIMIT: Duration = Duration::from_secs(60);

const CA_CNF: &str = "\
[ ca ]
default_ca = gilmsg_ca
[ gilmsg_ca ]
database         = ./index.txt
new_certs_dir    = ./newcerts
serial           = ./serial
crlnumber        = ./crlnumber
certificate      = ./ca.crt
private_key      = ./ca.key
default_md       = sha256
default_days     = 3650
default_crl_days = 3650
policy           = policy_any
unique_subject   = no
copy_extensions  = none
[ policy_any ]
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints     = critical,CA:TRUE
keyUsage             = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ v3_leaf ]
basicConstraints       = CA:FALSE
keyUsage               = critical,digitalSignature
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
";

/// The PKI directory (fedmsg's `ssldir`).
#[derive(Debug)]
pub struct RsaPki {
    /// Where `ca.crt`, `crl.pem` and the identities are.
    pub dir: PathBuf,
}

impl RsaPki {
    /// Makes the CA (CN `ca_cn`), one leaf per name (CN = file stem) and a CRL.
    pub fn make(dir: &Path, ca_cn: &str, names: &[&str]) -> Result<RsaPki, String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        fs::create_dir_all(dir.join("newcerts")).map_err(io)?;
        fs::write(dir.join("ca.cnf"), CA_CNF).map_err(io)?;
        fs::write(dir.join("index.txt"), "").map_err(io)?;
        fs::write(dir.join("serial"), "1000\n").map_err(io)?;
        fs::write(dir.join("crlnumber"), "1000\n").map_err(io)?;
        let pki = RsaPki {
            dir: dir.to_path_buf(),
        };
        let subject = format!("/CN={ca_cn}");
        pki.openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            &subject,
            "-config",
            "ca.cnf",
            "-extensions",
            "v3_ca",
        ])?;
        for name in names {
            pki.issue(name)?;
        }
        pki.gencrl()?;
        Ok(pki)
    }

    /// Issues `<name>.key` (mode 0600) and `<name>.crt` with CN=name.
    pub fn issue(&self, name: &str) -> Result<(), String> {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN={name}");
        self.openssl(&[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            &subject, "-config", "ca.cnf",
        ])?;
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-extensions",
            "v3_leaf",
            "-notext",
            "-in",
            &csr,
            "-out",
            &crt,
        ])?;
        let _ = fs::remove_file(self.dir.join(&csr));
        self.private(&key)
    }

    /// Revokes `name` and rewrites the CRL.
    pub fn revoke(&self, name: &str) -> Result<(), String> {
        let crt = format!("{name}.crt");
        self.openssl(&["ca", "-batch", "-config", "ca.cnf", "-revoke", &crt])?;
        self.gencrl()
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CRL.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn gencrl(&self) -> Result<(), String> {
        self.openssl(&[
            "ca", "-batch", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem",
        ])?;
        // Our Identity refuses keys readable by others, as ssh does.
        self.private("ca.key")
    }

    fn private(&self, file: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn openssl(&self, args: &[&str]) -> Result<(), String> {
        let mut command = Command::new("openssl");
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        let what = format!("openssl {}", args.join(" "));
        let mut proc =
            Proc::spawn("openssl", command).map_err(|e| format!("{what}: cannot run: {e}"))?;
        match proc.wait_timeout(OPENSSL_LIMIT) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!(
                "{what}: {status}: {}",
                proc.stderr_so_far().join(" | ")
            )),
            None => Err(format!("{what}: no exit within {OPENSSL_LIMIT:?}")),
        }
    }
}
