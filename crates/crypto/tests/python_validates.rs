//! Messages signed by our Rust `"x509"` code are accepted by Python fedmsg's
//! own validator, `fedmsg.crypto.validate(msg, **config)`, and Python's
//! `fedmsg.crypto.sign` produces the very same `signature` and `certificate`
//! fields for the same body.
//!
//! Needs the Python peers venv (`scripts/python-peers.sh` prints its path):
//! set `GILMSG_PYTHON_PEERS` to it. Without it the test prints a notice and
//! passes without checking anything.

// Signing with RSA identities needs the `x509-sign` feature (OpenSSL);
// `scripts/test` builds with --all-features.
#![cfg(feature = "x509-sign")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gilmsg_crypto::{Identity, Signer as _};
use gilmsg_proto::canonical;
use gilmsg_testkit::child::run_bounded;
use gilmsg_testkit::guard::Registry;
use serde_json::{json, Value};

/// How long the Python process may take (imports take ~1 s).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fedmsg")
        .join(name)
}

const SCRIPT: &str = r#"
import json, sys
import fedmsg.crypto

cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    cfg = dict(
        ca_cert_location=c["ca"],
        crl_location=c["crl"],
        crypto_backend="x509",
        crypto_validate_backends=["x509"],
        routing_policy={},
        routing_nitpicky=False,
    )
    body = c["body"]
    r = {"name": c["name"]}
    r["valid"] = bool(fedmsg.crypto.validate(body, **cfg))
    r["signed_by"] = {s: bool(fedmsg.crypto.validate_signed_by(body, s, **cfg))
                      for s in c["signers"]}
    if c.get("python_sign"):
        unsigned = {k: v for k, v in body.items()
                    if k not in ("signature", "certificate", "crypto")}
        signed = fedmsg.crypto.sign(unsigned, ssldir=c["ssldir"],
                                    certname=c["certname"], **cfg)
        r["python_signature"] = signed["signature"]
        r["python_certificate"] = signed["certificate"]
    out.append(r)
print("RESULT " + json.dumps(out))
"#;

struct Case {
    name: &'static str,
    body: Value,
    crl: Option<&'static str>,
    signers: Vec<&'static str>,
    expect_valid: bool,
    expect_signed_by: Vec<(&'static str, bool)>,
    python_sign_as: Option<&'static str>,
}

fn signed_body(id: &Identity, payload: Value, i: u64) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut body = json!({
        "crypto": id.scheme(),
        "i": i,
        "msg": payload,
        "msg_id": format!("2026-00000000-0000-4000-8000-{i:012}"),
        "timestamp": now,
        "topic": "org.example.dev.rust.test",
        "username": "rust",
    });
    let canonical = canonical::to_string(&body).unwrap();
    let signature = id.sign(canonical.as_bytes()).unwrap();
    let map = body.as_object_mut().unwrap();
    map.insert("signature".into(), signature.into());
    map.insert("certificate".into(), id.certificate().into());
    body
}

/// Runs `python` on the script with a hard time limit; returns stdout.
fn run_python(python: &Path, script: &Path, input: &Path) -> String {
    let mut command = Command::new(python);
    command.arg(script).arg(input);
    let out = run_bounded(command, "python", "", PYTHON_TIMEOUT, &Registry::default());
    assert!(
        out.status == Some(0),
        "python failed ({:?}); stdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn rust_x509_signatures_validate_in_python_fedmsg() {
    let Some(venv) = std::env::var_os("GILMSG_PYTHON_PEERS").filter(|v| !v.is_empty()) else {
        eprintln!(
            "SKIPPED rust_x509_signatures_validate_in_python_fedmsg: set GILMSG_PYTHON_PEERS \
             to the venv printed by scripts/python-peers.sh to run it"
        );
        return;
    };
    let python = PathBuf::from(venv).join("bin/python");

    let tmp = tempfile::tempdir().unwrap();
    let ssldir = tmp.path().join("pki");
    fs::create_dir(&ssldir).unwrap();
    for name in ["alice", "bob"] {
        for ext in ["key", "crt"] {
            fs::copy(
                data(&format!("{name}.{ext}")),
                ssldir.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
        fs::set_permissions(
            ssldir.join(format!("{name}.key")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let alice = Identity::load(&ssldir, "alice").unwrap();
    let bob = Identity::load(&ssldir, "bob").unwrap();

    // A payload that exercises the canonical form: escapes, astral
    // characters, DEL, floats in Python repr, big and negative-zero numbers.
    let payload = json!({
        "text": "caf\u{e9} \u{1F600} \"q\" \\ \u{7f}\u{1} / \t",
        "\u{e9}key": [0.1, 1e22, 1.5e-7, -0.0, 1e16, 123.456, 5e-324],
        "big": serde_json::from_str::<Value>("123456789012345678901234567890").unwrap(),
        "nested": {"b": [], "a": {}, "A": null, "_": true},
    });
    let alice_body = signed_body(&alice, payload.clone(), 1);
    let bob_body = signed_body(&bob, json!({"log": "from bob"}), 2);
    let mut tampered = alice_body.clone();
    tampered["msg"]["text"] = json!("changed");

    let cases = [
        Case {
            name: "alice, crl.pem",
            body: alice_body.clone(),
            crl: Some("crl.pem"),
            signers: vec!["alice", "bob"],
            expect_valid: true,
            expect_signed_by: vec![("alice", true), ("bob", false)],
            python_sign_as: Some("alice"),
        },
        Case {
            name: "alice, no CRL",
            body: alice_body.clone(),
            crl: None,
            signers: vec!["alice"],
            expect_valid: true,
            expect_signed_by: vec![("alice", true)],
            python_sign_as: None,
        },
        Case {
            name: "bob, crl.pem",
            body: bob_body.clone(),
            crl: Some("crl.pem"),
            signers: vec!["bob"],
            expect_valid: true,
            expect_signed_by: vec![("bob", true)],
            python_sign_as: Some("bob"),
        },
        Case {
            name: "bob, revoked",
            body: bob_body,
            crl: Some("crl-revoked.pem"),
            signers: vec!["bob"],
            expect_valid: false,
            expect_signed_by: vec![("bob", false)],
            python_sign_as: None,
        },
        Case {
            name: "alice, revoked CRL names bob only",
            body: alice_body.clone(),
            crl: Some("crl-revoked.pem"),
            signers: vec!["alice"],
            expect_valid: true,
            expect_signed_by: vec![("alice", true)],
            python_sign_as: None,
        },
        Case {
            name: "alice, tampered",
            body: tampered,
            crl: Some("crl.pem"),
            signers: vec!["alice"],
            expect_valid: false,
            expect_signed_by: vec![("alice", false)],
            python_sign_as: None,
        },
    ];

    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "body": c.body,
                "ca": data("ca.crt"),
                "crl": c.crl.map(data),
                "signers": c.signers,
                "python_sign": c.python_sign_as.is_some(),
                "ssldir": ssldir,
                "certname": c.python_sign_as,
            })
        })
        .collect();
    let input_path = tmp.path().join("cases.json");
    fs::write(&input_path, serde_json::to_string(&input).unwrap()).unwrap();
    let script_path = tmp.path().join("validate.py");
    fs::write(&script_path, SCRIPT).unwrap();

    let stdout = run_python(&python, &script_path, &input_path);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in python's output:\n{stdout}"));
    eprintln!("python fedmsg results: {line}");
    let results: Vec<Value> = serde_json::from_str(line).unwrap();
    assert_eq!(results.len(), cases.len());

    for (case, r) in cases.iter().zip(&results) {
        assert_eq!(r["valid"], case.expect_valid, "{}: {r}", case.name);
        for (signer, expected) in &case.expect_signed_by {
            assert_eq!(
                r["signed_by"][signer], *expected,
                "{}: validate_signed_by({signer}): {r}",
                case.name
            );
        }
        if case.python_sign_as.is_some() {
            assert_eq!(
                r["python_signature"], case.body["signature"],
                "{}: Python's signature differs from ours",
                case.name
            );
            assert_eq!(
                r["python_certificate"], case.body["certificate"],
                "{}: Python's certificate field differs from ours",
                case.name
            );
        }
    }
}
