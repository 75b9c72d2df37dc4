//! File and encoding helpers shared by the PKI, identity and trust modules:
//! reading with path-naming errors, writing with the right permissions, and
//! the small PEM/X.509 conversions fedmsg's formats need.

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::x509::X509Name;

use crate::error::{Error, Result};

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

pub(crate) fn read_string(path: &Path) -> Result<String> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| Error::malformed(path, "not UTF-8 text"))
}

/// Refuses a private key that group or others may read, as ssh does: a key
/// that others could have copied no longer proves who signed.
pub(crate) fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

fn open_options(mode: u32) -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts
}

/// Creates `path`, failing if it exists. Used for keys so that two
/// concurrent `init`s or `issue`s cannot both win.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = open_options(mode)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Replaces `path` atomically (temporary file + rename), so that a running
/// `TrustStore` re-reading the CRL never sees half a file.
pub(crate) fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A stale temporary from a crashed run must not block us.
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// All PEM blocks with `label` in `text` (other blocks and text between them,
/// such as openssl's human-readable dump, are skipped).
pub(crate) fn pem_blocks(path: &Path, text: &[u8], label: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(text) {
        let block = block.map_err(|e| Error::malformed(path, format!("bad PEM: {e}")))?;
        if block.label == label {
            out.push(block.contents);
        }
    }
    Ok(out)
}

/// The certificate as canonical PEM text (64-column base64 between the
/// `-----BEGIN CERTIFICATE-----` and `-----END CERTIFICATE-----` lines, each
/// line ending in `\n`), as Python's `cryptography` writes it with
/// `public_bytes(Encoding.PEM)`: fedmsg puts base64 of exactly this text in
/// the `certificate` field.
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Base64 as Python's `base64.encodebytes` writes it, which is how fedmsg
/// fills its `signature` and `certificate` fields: lines of 76 characters,
/// each ending in `\n` (so the text always ends in `\n`; empty input gives
/// the empty string).
#[cfg_attr(not(feature = "x509-sign"), allow(dead_code))]
pub(crate) fn base64_wrapped(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(b64.len() + b64.len() / 76 + 1);
    for chunk in b64.as_bytes().chunks(76) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Serial numbers as lowercase hex without leading zeros, as `openssl x509
/// -serial` shows them (modulo case).
pub(crate) fn serial_hex(bytes: &[u8]) -> String {
    let trimmed: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::malformed(path, format!("not an X.509 certificate: {e}")))
}

/// Reads the one certificate in a PEM file, as DER.
pub(crate) fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    let text = read(path)?;
    pem_blocks(path, &text, "CERTIFICATE")?
        .into_iter()
        .next()
        .ok_or_else(|| Error::malformed(path, "no CERTIFICATE PEM block"))
}
