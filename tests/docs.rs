//! The documents' own command sequences, run as written.
//!
//! `README.md` and `docs/running-a-bus.md` tell an operator what to type.
//! This test extracts their fenced blocks from the Markdown (so it fails as
//! soon as a document drifts from what the tools do) and runs them, in
//! document order, against a throwaway bus in a temporary directory.
//!
//! ## The convention (stated in each document as HTML comments)
//!
//! Every fenced block whose language is `sh`, `bash` or `toml` must be
//! preceded (blank lines aside) by one marker comment:
//!
//! - `<!-- doc-test: run -->`: a shell block, run as is (after
//!   substitution) by bash with `set -euo pipefail`. All of a document's
//!   run blocks form one script, so variables, functions and background
//!   jobs carry over from block to block.
//! - `<!-- doc-test: file PATH -->`: the block's text is written to PATH
//!   (after substitution) at that point of the script.
//! - `<!-- doc-test: skip REASON -->`: not run, for a stated reason (it
//!   installs packages, builds the release profile, needs a fedmsg
//!   deployment, ...).
//!
//! A block without a marker fails the test: nothing is left unrun by
//! accident. A `json` block marked `file PATH` is written like a `toml`
//! one (the schema files of `[schemas]`); other blocks (Rust, plain text,
//! unmarked JSON) are not looked at.
//!
//! Placeholders: a document declares what may be substituted with
//! `<!-- doc-test: substitute KIND=VALUE ... -->`, and nothing else is:
//!
//! - `path=/etc/`: the absolute path prefix becomes `<tmp>/etc/`. Since
//!   the tools' built-in default `/etc/gilmsg/gilmsg.toml` is not in the
//!   text, `GILMSG_CONFIG` is set to its substituted path.
//! - `host=10.0.0.5`: becomes `127.0.0.1`.
//! - `port=9940`: becomes a free loopback port picked for this run.
//!
//! The scripts run in a fresh temporary directory holding a copy of the
//! repository's `contrib/` (the example handler scripts the documents
//! use), with the freshly built binaries first on `PATH`. Each script runs
//! in its own process group under a time limit; afterwards the whole
//! group is killed (SIGTERM, then SIGKILL), so no relay, consumer or
//! publisher a document started in the background outlives the test.

#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gilmsg_testkit::child::read_all;
use gilmsg_testkit::wait_timeout;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long one document's commands may take in all.
const DOCUMENT_LIMIT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// One marked step of a document.
#[derive(Debug)]
enum Step {
    Run {
        line: usize,
        text: String,
    },
    File {
        line: usize,
        path: String,
        text: String,
    },
}

#[derive(Debug, Default)]
struct Document {
    steps: Vec<Step>,
    substitutions: Vec<(String, String)>,
    skipped: usize,
}

const MARKER: &str = "<!-- doc-test:";

/// Splits a document into its marked steps; panics on an unmarked block.
fn parse(name: &str, markdown: &str) -> Document {
    let mut doc = Document::default();
    let mut pending: Option<(usize, String)> = None;
    let mut lines = markdown.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(MARKER) {
            let body = rest
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("{name}:{number}: marker must end on its line"))
                .trim();
            if let Some(list) = body.strip_prefix("substitute ") {
                for item in list.split_whitespace() {
                    let (kind, value) = item
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{name}:{number}: {item:?} is not KIND=VALUE"));
                    doc.substitutions.push((kind.to_owned(), value.to_owned()));
                }
            } else {
                pending = Some((number, body.to_owned()));
            }
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let lang = info.split_whitespace().next().unwrap_or("");
            let mut text = String::new();
            for (_, inner) in lines.by_ref() {
                if inner.trim_start().starts_with("```") {
                    break;
                }
                text.push_str(inner);
                text.push('\n');
            }
            if !matches!(lang, "sh" | "bash" | "toml") {
                // A data file the commands need (a JSON Schema): written
                // when marked `file`, otherwise not looked at.
                if let (Some((_, marker)), "json") = (pending.take(), lang) {
                    if let Some(path) = marker.strip_prefix("file ").map(str::trim) {
                        doc.steps.push(Step::File {
                            line: number,
                            path: path.to_owned(),
                            text,
                        });
                    }
                }
                continue;
            }
            let (_, marker) = pending.take().unwrap_or_else(|| {
                panic!(
                    "{name}:{number}: ```{lang} block without a marker: precede it with \
                     <!-- doc-test: run -->, <!-- doc-test: file PATH --> or \
                     <!-- doc-test: skip REASON -->"
                )
            });
            let (verb, arg) = marker.split_once(' ').unwrap_or((marker.as_str(), ""));
            match verb {
                "run" => doc.steps.push(Step::Run { line: number, text }),
                "file" if !arg.trim().is_empty() => doc.steps.push(Step::File {
                    line: number,
                    path: arg.trim().to_owned(),
                    text,
                }),
                "skip" if !arg.trim().is_empty() => doc.skipped += 1,
                _ => panic!("{name}:{number}: unknown or incomplete marker {marker:?}"),
            }
            continue;
        }
        if !trimmed.is_empty() {
            // A marker applies to the very next block only.
            pending = None;
        }
    }
    doc
}

/// Replaces `from` by `to` where `from` is not part of a longer number.
fn replace_token(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '.');
        out.push_str(&rest[..at]);
        if glued(before) || glued(after) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// (from, to) text pairs, or (name, value) environment variables.
type Pairs = Vec<(String, String)>;

/// The substitutions as (from, to) pairs, and the environment they imply.
fn substitutions(doc: &Document, work: &Path) -> (Pairs, Pairs) {
    let mut pairs = Vec::new();
    let mut env = Vec::new();
    for (kind, value) in &doc.substitutions {
        match kind.as_str() {
            "path" => {
                assert!(
                    value.starts_with('/') && value.ends_with('/'),
                    "path={value}: want /dir/"
                );
                let to = format!("{}/{}", work.display(), &value[1..]);
                if value == "/etc/" {
                    env.push((
                        "GILMSG_CONFIG".to_owned(),
                        format!("{to}gilmsg/gilmsg.toml"),
                    ));
                }
                pairs.push((value.clone(), to));
            }
            "host" => pairs.push((value.clone(), "127.0.0.1".to_owned())),
            "port" => pairs.push((value.clone(), free_port().to_string())),
            other => panic!("unknown substitution kind {other:?}"),
        }
    }
    (pairs, env)
}

fn substitute(text: &str, pairs: &[(String, String)]) -> String {
    pairs.iter().fold(text.to_owned(), |t, (from, to)| {
        if from.starts_with('/') {
            t.replace(from.as_str(), to)
        } else {
            replace_token(&t, from, to)
        }
    })
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The bash script for a document.
fn script(name: &str, doc: &Document, pairs: &[(String, String)]) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for step in &doc.steps {
        match step {
            Step::Run { line, text } => {
                s.push_str(&format!(
                    "echo {} >&2\n",
                    quote(&format!("==> {name}:{line}"))
                ));
                s.push_str(&substitute(text, pairs));
            }
            Step::File { line, path, text } => {
                let path = substitute(path, pairs);
                s.push_str(&format!(
                    "echo {} >&2\nmkdir -p \"$(dirname {p})\"\ncat > {p} <<'DOC_TEST_EOF'\n{}DOC_TEST_EOF\n",
                    quote(&format!("==> {name}:{line} (file {path})")),
                    substitute(text, pairs),
                    p = quote(&path),
                ));
            }
        }
    }
    s
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs one document's steps; panics with the output if they fail.
fn run_document(relative: &str) {
    let root = repo_root();
    let markdown = std::fs::read_to_string(root.join(relative)).expect("read document");
    let doc = parse(relative, &markdown);
    let runs = doc
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Run { .. }))
        .count();
    assert!(
        runs > 0,
        "{relative}: no <!-- doc-test: run --> block at all"
    );

    let work = tempfile::Builder::new()
        .prefix("gilmsg-docs-")
        .tempdir()
        .expect("tempdir");
    copy_dir(&root.join("contrib"), &work.path().join("contrib"));
    let (pairs, env) = substitutions(&doc, work.path());
    let text = script(relative, &doc, &pairs);
    let script_path = work.path().join("doc-test.sh");
    std::fs::write(&script_path, &text).expect("write script");

    let path = format!(
        "{}:{}",
        gilmsg_testkit::bins!().dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg(&script_path)
        .current_dir(work.path())
        .env("PATH", path)
        .env_remove("GILMSG_CONFIG")
        .env_remove("GILMSG_LOG")
        .env_remove("GILMSG_LOG_FORMAT")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: everything the document starts in the
        // background is in it, and is killed with it below.
        .process_group(0)
        .spawn()
        .expect("start bash");
    let group = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let status = wait_timeout(&mut child, DOCUMENT_LIMIT);
    // Stop everything the document left running, then make sure of it.
    let _ = killpg(group, Signal::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while killpg(group, None).is_ok() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(group, Signal::SIGKILL);
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "{relative}: the document's commands failed ({s}); the last `==>` line on stderr \
             names the block.\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- script\n{text}"
        ),
        None => panic!(
            "{relative}: the document's commands ran longer than {DOCUMENT_LIMIT:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- script\n{text}"
        ),
    }
}

#[test]
fn readme_runs_as_written() {
    run_document("README.md");
}

#[test]
fn operators_guide_runs_as_written() {
    run_document("docs/running-a-bus.md");
}

#[test]
fn markers_are_required_and_understood() {
    let doc = parse(
        "t.md",
        "<!-- doc-test: substitute host=10.0.0.5 port=9940 -->\n\
         <!-- doc-test: run -->\n\n```sh\necho hi\n```\n\
         <!-- doc-test: skip needs apt -->\n```sh\napt-get install x\n```\n\
         <!-- doc-test: file /etc/x.toml -->\n```toml\na = 1\n```\n```rust\nlet x = 1;\n```\n\
         <!-- doc-test: file s.json -->\n```json\n{}\n```\n```json\n[]\n```\n",
    );
    assert_eq!(doc.steps.len(), 3);
    assert!(
        matches!(&doc.steps[2], Step::File { path, text, .. } if path == "s.json" && text == "{}\n")
    );
    assert_eq!(doc.skipped, 1);
    assert_eq!(doc.substitutions.len(), 2);
    let unmarked = std::panic::catch_unwind(|| parse("t.md", "text\n```sh\necho hi\n```\n"));
    assert!(unmarked.is_err());
    assert_eq!(
        replace_token("tcp://10.0.0.5:9940 19940 9940.5 :9940", "9940", "1"),
        "tcp://10.0.0.5:1 19940 9940.5 :1"
    );
}
