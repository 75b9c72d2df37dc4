//! A headless browser for tests of web pages: Debian's `chromium`, driven
//! through `chromedriver` (package `chromium-driver`) with the W3C WebDriver
//! protocol (JSON over HTTP on loopback).
//!
//! Why WebDriver and not `chromium --dump-dom`: a page holding a
//! Server-Sent Events stream never goes idle, so `--virtual-time-budget`
//! never ends; WebDriver reads the live DOM whenever asked, so a test polls
//! the page until its content is there ([`Browser::wait_for`]), never on a
//! sleep. chromedriver is a child registered with the test's guard and
//! killed by PID when the [`Browser`] is dropped; each browser has a fresh
//! profile directory and the flags this machine needs (no sandbox as root,
//! no background networking: the network is closed).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::child::Running;

/// Debian's browser.
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";
/// Debian's driver for it.
pub const CHROMEDRIVER_BIN: &str = "/usr/bin/chromedriver";

/// Whether both are installed.
pub fn installed() -> bool {
    Path::new(CHROMIUM_BIN).exists() && Path::new(CHROMEDRIVER_BIN).exists()
}

/// What to say when they are not.
pub const NOT_INSTALLED: &str = "chromium or chromium-driver is not installed (Debian: apt-get \
    install -y chromium chromium-driver; scripts/test installs them when run as root)";

/// One browser session.
pub struct Browser {
    address: String,
    session: String,
    _profile: tempfile::TempDir,
    _driver: Running,
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a window of
    /// `width` x `height`.
    pub fn start(width: u32, height: u32) -> Result<Browser, String> {
        if !installed() {
            return Err(NOT_INSTALLED.into());
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(CHROMEDRIVER_BIN);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null());
        let driver = Running::spawn("chromedriver", command);
        driver
            .wait_stdout("started successfully", Duration::from_secs(20))
            .map_err(|e| format!("chromedriver: {e}"))?;
        let profile = tempfile::Builder::new()
            .prefix("gilmsg-chromium")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let address = format!("127.0.0.1:{port}");
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let answer = request(
            &address,
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM_BIN, "args": args},
            }}})),
        )?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session: {answer}"))?
            .to_owned();
        Ok(Browser {
            address,
            session,
            _profile: profile,
            _driver: driver,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let answer = request(
            &self.address,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )?;
        if answer["value"]["error"].is_string() {
            return Err(format!("webdriver {path}: {}", answer["value"]));
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` (returns once it has loaded).
    pub fn open(&self, url: &str) -> Result<(), String> {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The live document, serialised.
    pub fn html(&self) -> Result<String, String> {
        let value = self.command(
            "POST",
            "/execute/sync",
            Some(&json!({"script": "return document.documentElement.outerHTML", "args": []})),
        )?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("not a string: {value}"))
    }

    /// The document title now (a script the page should not run would
    /// change it).
    pub fn title(&self) -> Result<String, String> {
        let value = self.command("GET", "/title", None)?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Polls the document until `done` holds, for at most `limit`; returns
    /// it, or the last one in the error.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let html = self.html()?;
            if done(&html) {
                return Ok(html);
            }
            if Instant::now() >= deadline {
                return Err(format!("the page did not get there in {limit:?}:\n{html}"));
            }
            // Polling the page, not waiting for it: a WebDriver round trip
            // takes a few milliseconds anyway.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG screenshot of the window.
    pub fn screenshot(&self) -> Result<Vec<u8>, String> {
        let value = self.command("GET", "/screenshot", None)?;
        let text = value.as_str().ok_or("no screenshot")?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| e.to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes chromium; chromedriver itself is killed by PID after.
        let _ = request(
            &self.address,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// One WebDriver request (HTTP/1.1 with `Connection: close`, so the answer
/// is the rest of the stream; chromedriver refuses HTTP/1.0): its JSON
/// answer.
fn request(address: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open: the answer ends where its
    // Content-Length (or its last chunk) says.
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    let answer = loop {
        let n = stream
            .read(&mut buffer)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        bytes.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            match length {
                Some(length) if body.len() >= length => break body[..length].to_owned(),
                None if head.contains("transfer-encoding: chunked")
                    && body.ends_with("0\r\n\r\n") =>
                {
                    break unchunk(body)
                }
                _ => {}
            }
        }
        if n == 0 {
            return Err(format!("{method} {path}: the answer ended early: {text:?}"));
        }
    };
    serde_json::from_str(&answer).map_err(|e| format!("{method} {path}: {e}: {answer:?}"))
}

/// The body of a chunked answer.
fn unchunk(mut text: &str) -> String {
    let mut body = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        body.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    body
}
