//! RabbitMQ for the tests: the node is `gilmsg_cli::rabbit` (the demo
//! starts one too; re-exported here), and [`Tls`] makes its TLS material
//! with rcgen: a CA, a server certificate for `localhost` and client
//! certificates.

use std::fs;
use std::path::{Path, PathBuf};

pub use gilmsg_cli::rabbit::{installed, Rabbit, TlsListener, NOT_INSTALLED, RABBIT_BIN};

/// TLS material for a node and its clients (PEM files in one directory).
pub struct Tls {
    /// The directory.
    pub dir: PathBuf,
}

impl Tls {
    /// A CA, `server.crt`/`server.key` for localhost and 127.0.0.1, and a
    /// client certificate per name (`<name>.crt`, `<name>.key`).
    pub fn make(dir: &Path, clients: &[&str]) -> Result<Tls, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let err = |e: rcgen::Error| e.to_string();
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gilmsg test broker CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let write = |name: &str, text: String| {
            fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        write("ca.crt", ca.pem())?;
        let issue = |cn: &str, sans: Vec<String>| -> Result<(String, String), String> {
            let key = KeyPair::generate().map_err(err)?;
            let mut params = CertificateParams::new(sans).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (crt, key) = issue("localhost", vec!["localhost".into(), "127.0.0.1".into()])?;
        write("server.crt", crt)?;
        write("server.key", key)?;
        for name in clients {
            let (crt, key) = issue(name, Vec::new())?;
            write(&format!("{name}.crt"), crt)?;
            write(&format!("{name}.key"), key)?;
        }
        Ok(Tls {
            dir: dir.to_path_buf(),
        })
    }

    /// The node's side of it: a listener requiring client certificates.
    pub fn listener(&self) -> TlsListener {
        TlsListener {
            ca_cert: self.dir.join("ca.crt"),
            cert: self.dir.join("server.crt"),
            key: self.dir.join("server.key"),
        }
    }
}
