//! Reading a process's monitoring endpoint in tests: one HTTP GET, the
//! Prometheus text as samples, the address a process printed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.0 GET: the status and the body.
pub fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the monitoring endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the answer");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Prometheus text: every sample, keyed by `name{labels}` as written.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One sample's value as a whole number; panics naming the key when absent.
pub fn sample(all: &BTreeMap<String, f64>, key: &str) -> u64 {
    let value = all
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {all:#?}"));
    *value as u64
}

/// The `http://ADDRESS` a process printed as `<program>: monitoring on`.
pub fn monitoring_address(line: &str) -> String {
    line.rsplit("http://")
        .next()
        .expect("monitoring on http://...")
        .trim()
        .to_owned()
}
