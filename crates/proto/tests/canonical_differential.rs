//! Differential test of `gilmsg_proto::canonical` against Python itself:
//! thousands of seeded random JSON values are encoded by our code and by
//! `json.dumps(v, sort_keys=True, separators=(',', ':'))` (fedmsg's
//! canonical form), and the bytes must be identical.
//!
//! Python's `json` is in the standard library, so this runs with the system
//! `python3` unless `GILMSG_PYTHON_PEERS` names the interop venv, whose
//! interpreter is then used. `GILMSG_DIFF_CASES` raises the number of cases
//! (default 5000); `GILMSG_DIFF_SEED` changes the seed (default fixed, so a
//! failure reproduces).
//!
//! The source text sent to Python is serde_json's serialisation of the very
//! value we encode (numbers keep their text under `arbitrary_precision`), so
//! both sides start from the same numbers.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gilmsg_proto::canonical;
use serde_json::{Map, Number, Value};

const DEFAULT_CASES: usize = 5000;
const DEFAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// Python needs well under a second for 5000 values; this bound only stops
/// a wedged interpreter from hanging the test run.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(180);

const PY_SCRIPT: &str = r#"
import json, sys
out = sys.stdout
for raw in sys.stdin.buffer:
    v = json.loads(raw.decode("utf-8"))
    out.write(json.dumps(v, sort_keys=True, separators=(",", ":")))
    out.write("\n")
out.flush()
"#;

/// xorshift64*: tiny, seedable, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn number(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(v.is_number(), "{text}");
    v
}

fn digits(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n);
    s.push(char::from(b'1' + rng.below(9) as u8));
    for _ in 1..n {
        s.push(char::from(b'0' + rng.below(10) as u8));
    }
    s
}

fn gen_integer(rng: &mut Rng) -> Value {
    let sign = if rng.chance(40) { "-" } else { "" };
    match rng.below(6) {
        0 => number(&format!("{sign}{}", rng.below(10))),
        1 => number(if rng.chance(50) { "-0" } else { "0" }),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(rng.next()),
        // Around the u64 / i64 limits.
        4 => number(rng.pick::<&str>(&[
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "9223372036854775807",
            "12345678901234567890",
        ])),
        // Far beyond u64 (Python 3.11 limits int<->str to 4300 digits).
        _ => {
            let n = 20 + rng.below(200) as usize;
            number(&format!("{sign}{}", digits(rng, n)))
        }
    }
}

/// A finite double from its bits: covers every exponent, subnormals included.
fn random_finite(rng: &mut Rng) -> f64 {
    loop {
        let x = f64::from_bits(rng.next());
        if x.is_finite() {
            return x;
        }
    }
}

fn gen_float(rng: &mut Rng) -> Value {
    let sign = if rng.chance(40) { -1.0 } else { 1.0 };
    let from_f64 = |x: f64| Value::Number(Number::from_f64(x).expect("finite"));
    match rng.below(9) {
        0 => from_f64(random_finite(rng)),
        // Subnormals: exponent bits zero.
        1 => from_f64(sign * f64::from_bits(rng.next() & 0x000F_FFFF_FFFF_FFFF)),
        // Powers of ten and neighbours, where repr switches notation.
        2 => {
            let e = rng.below(50) as i32 - 25;
            let base = 10f64.powi(e);
            let x = match rng.below(4) {
                0 => base,
                1 => f64::from_bits(base.to_bits() + 1),
                2 => f64::from_bits(base.to_bits() - 1),
                _ => base * (1.0 + rng.below(9) as f64),
            };
            from_f64(sign * x)
        }
        3 => from_f64(*rng.pick(&[
            0.0,
            -0.0,
            1e-5,
            1e-4,
            0.0001,
            0.00001,
            1e16,
            1e15,
            1e22,
            1e21,
            1e23,
            9999999999999998.0,
            0.1,
            0.2,
            0.3,
            1.5e-7,
            1e20,
            5e-324,
            2.2250738585072014e-308,
            1.7976931348623157e308,
            123456789.0,
            0.5,
            100.0,
            1e100,
        ])),
        // Whole numbers held as floats.
        4 => from_f64(sign * (rng.below(1 << 53) as f64)),
        // Short decimals, as people write them.
        5 => from_f64(sign * (rng.below(100_000) as f64) / 10f64.powi(rng.below(8) as i32)),
        // Literal number text in forms serde_json keeps verbatim.
        6 => number(rng.pick::<&str>(&[
            "1E5",
            "1e+05",
            "2.50",
            "-0.0",
            "0e0",
            "1.0E-7",
            "-1.5E+300",
            "0.000",
            "1e-400",
            "123456789012345678901234567890.0",
            "0.1e1",
            "1E16",
            "1E-5",
            "4.9406564584124654e-324",
            "2.4703282292062328e-324",
            "1.00000000000000011102230246251565404236316680908203125",
            "9007199254740993.0",
        ])),
        // Random decimal text with many digits and any exponent, finite once
        // parsed (Python would print Infinity, which we refuse by design).
        7 => loop {
            let n = 1 + rng.below(25) as usize;
            let d = digits(rng, n);
            let cut = rng.below(n as u64 + 1) as usize;
            let (int_part, frac) = d.split_at(cut);
            let int_part = if int_part.is_empty() { "0" } else { int_part };
            let e = rng.below(660) as i64 - 345;
            let text = format!(
                "{}{int_part}.{}e{e}",
                if sign < 0.0 { "-" } else { "" },
                if frac.is_empty() { "0" } else { frac }
            );
            if text.parse::<f64>().is_ok_and(f64::is_finite) {
                break number(&text);
            }
        },
        _ => from_f64(sign * rng.below(1000) as f64 * 0.001),
    }
}

fn gen_char(rng: &mut Rng) -> char {
    let c = match rng.below(12) {
        0..=3 => 0x20 + rng.below(0x5f) as u32,
        4 => rng.below(0x20) as u32,
        5 => *rng.pick(&[
            0x7f,
            '"' as u32,
            '\\' as u32,
            '/' as u32,
            0x08,
            0x0c,
            0x0a,
            0x0d,
            0x09,
        ]),
        6 => 0x80 + rng.below(0x780) as u32,
        7 => *rng.pick(&[
            0x2028, 0x2029, 0xfeff, 0xfffd, 0xffff, 0xe000, 0xd7ff, 0x00e9, 0x0085,
        ]),
        8 => 0x800 + rng.below(0xd800 - 0x800) as u32,
        9 => 0xe000 + rng.below(0x2000) as u32,
        10 => *rng.pick(&[0x1_0000, 0x1_F600, 0x1_F4A9, 0x10_FFFF, 0x2_0000, 0xE_0001]),
        _ => 0x1_0000 + rng.below(0x10_0000) as u32,
    };
    char::from_u32(c).unwrap_or('\u{fffd}')
}

fn gen_string(rng: &mut Rng, max_len: u64) -> String {
    let n = rng.below(max_len + 1);
    (0..n).map(|_| gen_char(rng)).collect()
}

fn gen_key(rng: &mut Rng) -> String {
    if rng.chance(30) {
        // Short keys from a small alphabet collide in their prefixes, so the
        // sort order is really exercised (incl. U+FFFF vs U+10000, where
        // UTF-16 order and code point order differ).
        let alphabet = [
            'a',
            'B',
            '_',
            'é',
            '\u{ff61}',
            '\u{ffff}',
            '\u{10000}',
            '\u{1f600}',
            '0',
            ' ',
        ];
        let n = 1 + rng.below(3);
        (0..n).map(|_| *rng.pick(&alphabet)).collect()
    } else {
        gen_string(rng, 8)
    }
}

fn gen_value(rng: &mut Rng, depth: u32) -> Value {
    let containers = if depth >= 5 { 0 } else { 3 };
    match rng.below(7 + containers) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => gen_integer(rng),
        3 | 4 => gen_float(rng),
        5 | 6 => Value::String(gen_string(rng, 24)),
        7 => {
            let n = rng.below(6);
            Value::Array((0..n).map(|_| gen_value(rng, depth + 1)).collect())
        }
        _ => {
            let n = rng.below(7);
            let mut map = Map::new();
            for _ in 0..n {
                map.insert(gen_key(rng), gen_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A top-level case: mostly objects, like message bodies.
fn gen_case(rng: &mut Rng) -> Value {
    if rng.chance(70) {
        let n = 1 + rng.below(8);
        let mut map = Map::new();
        for _ in 0..n {
            map.insert(gen_key(rng), gen_value(rng, 1));
        }
        Value::Object(map)
    } else {
        gen_value(rng, 0)
    }
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={raw:?}: {e}")))
}

fn python() -> PathBuf {
    match std::env::var_os("GILMSG_PYTHON_PEERS").filter(|v| !v.is_empty()) {
        Some(venv) => PathBuf::from(venv).join("bin/python"),
        None => PathBuf::from("python3"),
    }
}

/// Feeds `input` (JSON lines) to one Python process; returns its stdout, or
/// `None` if there is no Python to run.
fn run_python(input: String) -> Option<String> {
    let python = python();
    let mut child = match Command::new(&python)
        .args(["-c", PY_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run {}: {e}", python.display()),
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Write and read on separate threads so neither pipe can fill up and
    // deadlock; the main thread keeps the child to kill it on timeout.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let r = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((r.map(|_| out), err));
    });
    let (out, err) = match rx.recv_timeout(PYTHON_TIMEOUT) {
        Ok(v) => v,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {PYTHON_TIMEOUT:?}",
                python.display()
            );
        }
    };
    let _ = writer.join();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{} failed ({status}):\n{err}",
        python.display()
    );
    Some(out.expect("python's output is UTF-8"))
}

#[test]
fn canonical_matches_python_json_dumps() {
    let cases = env_number("GILMSG_DIFF_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    let seed = env_number("GILMSG_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let mut rng = Rng::new(seed);

    let mut sources = Vec::with_capacity(cases);
    let mut ours = Vec::with_capacity(cases);
    let mut input = String::new();
    for _ in 0..cases {
        let value = gen_case(&mut rng);
        let source = serde_json::to_string(&value).unwrap();
        debug_assert!(!source.contains('\n'));
        // serde_json's output must read back to the same value, or the two
        // sides would not be encoding the same thing.
        let reparsed: Value = serde_json::from_str(&source).unwrap();
        assert_eq!(
            canonical::to_string(&reparsed).unwrap(),
            canonical::to_string(&value).unwrap(),
            "source text does not round-trip: {source}"
        );
        ours.push(canonical::to_string(&value).unwrap());
        input.push_str(&source);
        input.push('\n');
        sources.push(source);
    }

    let Some(output) = run_python(input) else {
        eprintln!(
            "SKIPPED canonical_matches_python_json_dumps: no python3 on PATH and \
             GILMSG_PYTHON_PEERS unset"
        );
        return;
    };
    let theirs: Vec<&str> = output.lines().collect();
    assert_eq!(theirs.len(), cases, "python printed {} lines", theirs.len());

    let mismatches: Vec<usize> = (0..cases).filter(|&i| ours[i] != theirs[i]).collect();
    for &i in mismatches.iter().take(5) {
        let at = ours[i]
            .bytes()
            .zip(theirs[i].bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(ours[i].len().min(theirs[i].len()));
        eprintln!(
            "case {i}: first difference at byte {at}\n  input:  {}\n  ours:   {}\n  python: {}",
            sources[i], ours[i], theirs[i]
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {cases} cases differ from Python (seed {seed:#x}); first few above",
        mismatches.len()
    );
    eprintln!(
        "canonical_matches_python_json_dumps: {cases} cases identical to {} (seed {seed:#x})",
        python().display()
    );
}

/// The string measured from Python in the interop notes (section 2), built
/// from input with other key order, spacing and number spelling.
#[test]
fn measured_python_vector() {
    let input = r#"{"é": [], "b": [1.0, 1E20, 1.5e-7, 0.10, -0.0, 12345678901234567890, true, null],
                   "a": "/\u007f\u001f\t\n\"\\é😀", "_": 1, "A": {}}"#;
    let value: Value = serde_json::from_str(input).unwrap();
    assert_eq!(
        canonical::to_string(&value).unwrap(),
        r#"{"A":{},"_":1,"a":"/\u007f\u001f\t\n\"\\\u00e9\ud83d\ude00","b":[1.0,1e+20,1.5e-07,0.1,-0.0,12345678901234567890,true,null],"\u00e9":[]}"#
    );
}
