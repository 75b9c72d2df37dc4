//! `gilmsg-pki` through the real binary: what an operator types, what it
//! prints, what it writes (and with which permissions), what it refuses and
//! with which exit status. `openssl verify -crl_check_all` checks the
//! result, as Python fedmsg would.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gilmsg_crypto::{pki, Identity, Signer as _, TrustStore, Verifier as _};
use gilmsg_proto::VerifyError;
use gilmsg_testkit::run_tool;
use gilmsg_testkit::{bins, guard, within, ToolOutput};

const LIMIT: Duration = Duration::from_secs(60);
/// One gilmsg-pki or openssl run (well under a second in practice).
const RUN: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);

/// A scratch directory with the PKI at `<tmp>/pki`.
struct Scratch {
    tmp: tempfile::TempDir,
    pki: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::Builder::new()
            .prefix("gilmsg-pki-test-")
            .tempdir()
            .expect("tempdir");
        let pki = tmp.path().join("pki");
        Scratch { tmp, pki }
    }

    /// `gilmsg-pki --ssldir <pki> <args>`.
    fn run(&self, args: &[&str]) -> ToolOutput {
        let mut full = vec!["--ssldir", self.pki.to_str().expect("utf-8 path")];
        full.extend(args);
        run_tool(bins!().pki, &full, "", RUN, &guard::current())
    }

    /// Runs and asserts exit 0 with nothing on stderr; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status, Some(0), "gilmsg-pki {args:?}: {out:?}");
        assert_eq!(out.stderr, "", "gilmsg-pki {args:?}: {out:?}");
        out.stdout
    }

    /// Runs and asserts exit 2 with one `gilmsg-pki: error: ` line holding
    /// each of `needles`; returns that line.
    fn refused(&self, args: &[&str], needles: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status, Some(2), "gilmsg-pki {args:?}: {out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "gilmsg-pki {args:?}: {out:?}");
        assert!(
            lines[0].starts_with("gilmsg-pki: error: "),
            "gilmsg-pki {args:?}: {out:?}"
        );
        for needle in needles {
            assert!(lines[0].contains(needle), "gilmsg-pki {args:?}: {out:?}");
        }
        lines[0].to_owned()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.pki.join(name)
    }

    /// Every file name under the scratch directory, recursively.
    fn all_files(&self) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, out);
                }
                out.insert(path);
            }
        }
        let mut out = BTreeSet::new();
        walk(self.tmp.path(), &mut out);
        out
    }

    /// `openssl verify -crl_check_all` of `<name>.crt`: Ok or its output.
    fn openssl_verify(&self, name: &str) -> Result<(), String> {
        let ca = self.file("ca.crt");
        let crl = self.file("crl.pem");
        let leaf = self.file(&format!("{name}.crt"));
        let out = run_tool(
            Path::new("openssl"),
            &[
                "verify",
                "-crl_check_all",
                "-CAfile",
                ca.to_str().expect("utf-8"),
                "-CRLfile",
                crl.to_str().expect("utf-8"),
                leaf.to_str().expect("utf-8"),
            ],
            "",
            RUN,
            &guard::current(),
        );
        if out.status == Some(0) {
            Ok(())
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// The value after `key ` in `text`, up to the next `,`, `)` or end of line.
fn after<'a>(text: &'a str, key: &str) -> &'a str {
    let start = text
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} not in {text:?}"))
        + key.len();
    let rest = &text[start..];
    let end = rest.find([',', ')', '\n']).unwrap_or(rest.len());
    rest[..end].trim()
}

fn verify(dir: &Path, name: &str) -> Result<String, VerifyError> {
    let trust = TrustStore::load(&dir.join("ca.crt"), Some(&dir.join("crl.pem"))).expect("trust");
    let id = Identity::load(dir, name).expect("identity");
    let sig = id.sign(b"{}").expect("sign");
    trust
        .verify(id.scheme(), id.certificate(), &sig, b"{}")
        .map(|s| s.name)
}

#[test]
fn init_issue_revoke_list_and_refresh_the_crl() {
    within(LIMIT, || {
        let s = Scratch::new();
        let out = s.ok(&["init", "--ca-name", "Test Bus CA", "--days", "30"]);
        for f in ["ca.key", "ca.crt", "crl.pem"] {
            assert!(
                out.contains(&format!("wrote {}", s.file(f).display())),
                "{out}"
            );
        }
        assert!(out.contains("next update "), "{out}");
        assert_eq!(mode(&s.pki), 0o700);
        assert_eq!(mode(&s.file("ca.key")), 0o600);
        assert_eq!(mode(&s.file("ca.crt")) & 0o600, 0o600);

        // The first CRL lives days, not the CA's 30 days.
        let crl = pki::crl_status(&s.pki).expect("crl status");
        assert_eq!(crl.crl_number, 1);
        let next = crl.next_update.expect("nextUpdate");
        let week = SystemTime::now() + 7 * DAY;
        assert!(next <= week && next > week - DAY, "{crl:?}");

        let out = s.ok(&["issue", "alice", "--days", "10"]);
        assert!(
            out.contains(&format!("wrote {}", s.file("alice.key").display())),
            "{out}"
        );
        let serial = after(&out, "(serial");
        assert!(
            serial.len() >= 16 && serial.chars().all(|c| c.is_ascii_hexdigit()),
            "{out}"
        );
        assert_eq!(mode(&s.file("alice.key")), 0o600);
        s.ok(&["issue", "bob"]);
        assert_eq!(verify(&s.pki, "alice").unwrap(), "alice");
        s.openssl_verify("alice").unwrap();

        let out = s.ok(&["list"]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(
            lines[1].starts_with("alice ") && lines[1].ends_with(" valid"),
            "{out}"
        );
        assert!(lines[1].contains(serial), "{out}");
        assert!(
            lines[2].starts_with("bob ") && lines[2].ends_with(" valid"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("CRL number 1, 0 revoked, next update "),
            "{out}"
        );

        let out = s.ok(&["revoke", "alice"]);
        assert!(
            out.contains(&format!("revoked alice (serial {serial})")),
            "{out}"
        );
        assert_eq!(after(&out, "CRL number"), "2", "{out}");
        let out = s.ok(&["revoke", "alice"]);
        assert!(out.contains("was already revoked"), "{out}");
        assert_eq!(after(&out, "CRL number"), "3", "{out}");
        assert_eq!(
            verify(&s.pki, "alice"),
            Err(VerifyError::Revoked("alice".into()))
        );
        let refused = s.openssl_verify("alice").unwrap_err();
        assert!(refused.contains("certificate revoked"), "{refused}");
        s.openssl_verify("bob").unwrap();

        let out = s.ok(&["list"]);
        assert!(
            out.lines()
                .any(|l| l.starts_with("alice ") && l.ends_with(" revoked")),
            "{out}"
        );
        assert!(out.contains("CRL number 3, 1 revoked"), "{out}");

        // Re-issuing the CRL keeps its entries, bumps the number and moves
        // nextUpdate to --crl-days from now.
        let out = s.ok(&["crl", "--crl-days", "2"]);
        assert_eq!(after(&out, "CRL number"), "4", "{out}");
        assert!(out.contains("1 revoked"), "{out}");
        let crl = pki::crl_status(&s.pki).expect("crl status");
        let next = crl.next_update.expect("nextUpdate");
        let two_days = SystemTime::now() + 2 * DAY;
        assert!(next <= two_days && next > two_days - DAY, "{crl:?}");
        let out = s.ok(&["refresh-crl"]);
        assert_eq!(after(&out, "CRL number"), "5", "{out}");
        assert_eq!(
            verify(&s.pki, "alice"),
            Err(VerifyError::Revoked("alice".into()))
        );
        assert_eq!(verify(&s.pki, "bob").unwrap(), "bob");
        s.openssl_verify("bob").unwrap();
        assert!(s.openssl_verify("alice").is_err());
    })
}

#[test]
fn bad_names_are_refused_and_nothing_is_written() {
    within(LIMIT, || {
        let s = Scratch::new();
        s.ok(&["init"]);
        let before = s.all_files();
        let long = "x".repeat(65);
        for bad in [
            "",
            "../evil",
            "../../evil",
            "a/b",
            "/tmp/evil",
            ".hidden",
            "..",
            "-rf",
            "sp ace",
            "tab\tname",
            "new\nline",
            "é",
            "semi;colon",
            "star*",
            "ca",
            "crl",
            long.as_str(),
        ] {
            for command in ["issue", "revoke"] {
                // `--` so that "-rf" is a name, as a script passing "$NAME" gets it.
                s.refused(&[command, "--", bad], &["invalid identity name"]);
            }
        }
        assert_eq!(s.all_files(), before, "a refused name wrote something");
        // 64 characters is the CN limit, and fine.
        s.ok(&["issue", &"y".repeat(64)]);
    })
}

#[test]
fn existing_files_are_never_overwritten_without_force() {
    within(LIMIT, || {
        let s = Scratch::new();
        s.ok(&["init"]);
        let ca_key = fs::read(s.file("ca.key")).expect("read");
        let ca_crt = fs::read(s.file("ca.crt")).expect("read");
        let line = s.refused(&["init"], &["already exists", "never replaces"]);
        assert!(
            line.contains(&s.file("ca.key").display().to_string()),
            "{line}"
        );
        assert_eq!(fs::read(s.file("ca.key")).expect("read"), ca_key);
        assert_eq!(fs::read(s.file("ca.crt")).expect("read"), ca_crt);

        s.ok(&["issue", "alice"]);
        let key = fs::read(s.file("alice.key")).expect("read");
        let crt = fs::read(s.file("alice.crt")).expect("read");
        let line = s.refused(&["issue", "alice"], &["already exists", "--force alice"]);
        assert!(line.contains("alice.key"), "{line}");
        assert_eq!(fs::read(s.file("alice.key")).expect("read"), key);
        assert_eq!(fs::read(s.file("alice.crt")).expect("read"), crt);

        // A stray certificate alone also blocks the name.
        fs::write(s.file("carol.crt"), "not mine").expect("write");
        s.refused(&["issue", "carol"], &["carol.crt", "already exists"]);
        assert_eq!(
            fs::read_to_string(s.file("carol.crt")).expect("read"),
            "not mine"
        );
        assert!(!s.file("carol.key").exists());

        // --force replaces, and the new pair works.
        s.ok(&["issue", "alice", "--force"]);
        assert_ne!(fs::read(s.file("alice.key")).expect("read"), key);
        assert_eq!(mode(&s.file("alice.key")), 0o600);
        assert_eq!(verify(&s.pki, "alice").unwrap(), "alice");
    })
}

#[test]
fn loose_key_permissions_are_refused() {
    within(LIMIT, || {
        let s = Scratch::new();
        s.ok(&["init"]);
        s.ok(&["issue", "alice"]);
        fs::set_permissions(s.file("ca.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
        for args in [&["issue", "bob"][..], &["revoke", "alice"], &["crl"]] {
            s.refused(args, &["ca.key", "mode 0644", "chmod 600"]);
        }
        assert!(!s.file("bob.key").exists());
        fs::set_permissions(s.file("ca.key"), fs::Permissions::from_mode(0o600)).expect("chmod");
        s.ok(&["issue", "bob"]);
    })
}

#[test]
fn missing_or_foreign_files_give_clear_errors() {
    within(LIMIT, || {
        let s = Scratch::new();
        // Nothing there yet.
        s.refused(&["issue", "alice"], &["ca.key", "not found"]);
        s.refused(&["crl"], &["ca.key", "not found"]);
        s.ok(&["init"]);
        s.refused(&["revoke", "nobody"], &["nobody.crt", "not found"]);

        // `crl` refuses to invent an empty list; `revoke` recreates a lost
        // CRL rather than block an urgent revocation.
        s.ok(&["issue", "alice"]);
        fs::remove_file(s.file("crl.pem")).expect("rm");
        s.refused(&["crl"], &["crl.pem", "not found"]);
        let out = s.ok(&["list"]);
        assert!(out.contains("no CRL: "), "{out}");
        s.ok(&["revoke", "alice"]);
        s.ok(&["crl"]);

        // A CRL signed by another CA is not re-signed (its list would be
        // blessed) and not listed.
        let other = Scratch::new();
        other.ok(&["init"]);
        fs::copy(other.file("crl.pem"), s.file("crl.pem")).expect("copy");
        s.refused(&["crl"], &["crl.pem", "not signed by a trusted CA"]);
        s.refused(
            &["revoke", "alice"],
            &["crl.pem", "not signed by a trusted CA"],
        );
        s.refused(&["list"], &["crl.pem", "not signed by a trusted CA"]);
    })
}

#[test]
fn usage_errors_exit_2() {
    within(LIMIT, || {
        let s = Scratch::new();
        for args in [
            &[][..],
            &["frobnicate"],
            &["issue"],
            &["init", "--days", "0"],
            &["crl", "--crl-days", "0"],
            &["crl", "--crl-days", "many"],
        ] {
            let out = s.run(args);
            assert_eq!(out.status, Some(2), "{args:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        }
        assert!(!s.pki.exists(), "a usage error created the directory");
        let out = s.run(&["--help"]);
        assert_eq!(out.status, Some(0), "{out:?}");
        assert!(out.stdout.contains("crl"), "{out:?}");
    })
}
