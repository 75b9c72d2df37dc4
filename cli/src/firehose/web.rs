//! The firehose's live web view: one static page (HTML, JS and CSS built
//! into the binary, no build step) and a Server-Sent Events stream of what
//! the firehose forwards, the receipt events and the heartbeat status.
//!
//! The server is tiny_http (as the monitoring endpoint): blocking, on a
//! thread of its own. Each `/events` client gets a thread and a bounded
//! channel: [`Hub::broadcast`] never waits for a client, a slow one loses
//! events (counted, `web.dropped`), a gone one is forgotten. A client that
//! connects is first sent the recent events ([`HISTORY`]), so the page
//! shows what happened just before it was opened.
//!
//! Bus data reaches the page only as JSON in `data:` lines; the page puts it
//! in the document with `textContent` only (see `page.js`).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Counters;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// How many recent events a new client is sent first.
pub const HISTORY: usize = 500;
/// Events waiting for one client before it loses the next ones.
const CLIENT_BUFFER: usize = 1024;
/// At most this many clients at once; more get 503.
const MAX_CLIENTS: usize = 64;
/// A comment line this often keeps idle connections (and proxies) open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The clients and the recent events.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<HubInner>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct HubInner {
    clients: Vec<SyncSender<Arc<str>>>,
    history: VecDeque<Arc<str>>,
    /// The latest heartbeat status, sent to a new client after the history.
    status: Option<Arc<str>>,
}

impl Hub {
    /// An empty hub.
    pub fn new(counters: Arc<Counters>) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(HubInner::default()),
            counters,
        })
    }

    /// Sends one event (`kind` is the SSE event name) to every client.
    /// Status events replace each other instead of filling the history.
    pub fn broadcast(&self, kind: &str, data: &serde_json::Value) {
        let frame: Arc<str> = Arc::from(format!("event: {kind}\ndata: {data}\n\n"));
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if kind == "status" {
            inner.status = Some(frame.clone());
        } else {
            if inner.history.len() >= HISTORY {
                inner.history.pop_front();
            }
            inner.history.push_back(frame.clone());
        }
        let counters = &self.counters;
        inner
            .clients
            .retain(|client| match client.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    counters.web_dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// A new client: its channel, already holding the history.
    fn join(&self) -> Option<Receiver<Arc<str>>> {
        let mut inner = self.inner.lock().ok()?;
        inner.clients.retain(|c| {
            // A probe: an empty frame is never written (see `stream`).
            !matches!(
                c.try_send(Arc::from("")),
                Err(TrySendError::Disconnected(_))
            )
        });
        if inner.clients.len() >= MAX_CLIENTS {
            return None;
        }
        let (tx, rx) = sync_channel(CLIENT_BUFFER + HISTORY + 1);
        for frame in inner.history.iter().chain(inner.status.iter()) {
            let _ = tx.try_send(frame.clone());
        }
        inner.clients.push(tx);
        Some(rx)
    }
}

/// The running web server; stops when dropped.
pub struct WebServer {
    server: Arc<tiny_http::Server>,
    address: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer")
            .field("address", &self.address)
            .finish()
    }
}

impl WebServer {
    /// Listens on `bind` (`ADDRESS:PORT`, port 0 picks one).
    pub fn start(bind: &str, hub: Arc<Hub>) -> Result<WebServer, String> {
        let server = tiny_http::Server::http(bind)
            .map_err(|e| format!("cannot listen on {bind} for the web view: {e}"))?;
        let address = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{bind} is not an IP address"))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("firehose-web".into())
            .spawn(move || serve(&serving, &hub))
            .map_err(|e| format!("cannot start the web thread: {e}"))?;
        Ok(WebServer {
            server,
            address,
            thread: Some(thread),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.address
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, hub: &Arc<Hub>) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        if !matches!(request.method(), tiny_http::Method::Get) {
            respond(request, 405, "text/plain", "only GET\n");
            continue;
        }
        match path.as_str() {
            "/" | "/index.html" => respond(request, 200, "text/html; charset=utf-8", PAGE_HTML),
            "/page.js" => respond(request, 200, "text/javascript; charset=utf-8", PAGE_JS),
            "/page.css" => respond(request, 200, "text/css; charset=utf-8", PAGE_CSS),
            "/events" => match hub.join() {
                Some(events) => {
                    let spawned = std::thread::Builder::new()
                        .name("firehose-sse".into())
                        .spawn(move || stream(request, &events));
                    if let Err(e) = spawned {
                        tracing::debug!("web: cannot start a stream thread: {e}");
                    }
                }
                None => respond(request, 503, "text/plain", "too many clients\n"),
            },
            _ => respond(request, 404, "text/plain", "not found\n"),
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, content_type: &str, body: &str) {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    for (name, value) in [
        ("Content-Type", content_type),
        // Nothing on the page comes from elsewhere, and no script but ours
        // runs: a body that got into the DOM as markup still could not.
        (
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
    ] {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response = response.with_header(header);
        }
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!("web: cannot answer: {e}");
    }
}

/// Writes the event stream by hand on the raw connection: tiny_http's
/// chunked encoder buffers 8 KiB before it sends anything, which would hold
/// events back. `Connection: close` ends the body with the connection.
fn stream(request: tiny_http::Request, events: &Receiver<Arc<str>>) {
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n\r\nretry: 1000\n\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    loop {
        let frame = match events.recv_timeout(KEEPALIVE) {
            Ok(frame) if frame.is_empty() => continue,
            Ok(frame) => frame,
            Err(RecvTimeoutError::Timeout) => Arc::from(": keepalive\n\n"),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_client_gets_the_history_then_the_latest_status_and_a_slow_one_loses_events() {
        let counters = Arc::new(Counters::default());
        let hub = Hub::new(counters.clone());
        for n in 0..HISTORY + 10 {
            hub.broadcast("message", &json!({ "n": n }));
        }
        hub.broadcast("status", &json!({"identities": []}));
        hub.broadcast("status", &json!({"identities": ["newest"]}));
        let client = hub.join().expect("a client");
        let frames: Vec<Arc<str>> = client.try_iter().collect();
        assert_eq!(frames.len(), HISTORY + 1, "bounded history, one status");
        assert_eq!(&*frames[0], "event: message\ndata: {\"n\":10}\n\n");
        assert!(frames[HISTORY].contains("newest"), "{}", frames[HISTORY]);
        // A client that reads nothing: its queue fills, the rest is
        // dropped and counted, and broadcasting never waits for it.
        for n in 0..CLIENT_BUFFER + HISTORY + 50 {
            hub.broadcast("message", &json!({ "n": n }));
        }
        assert!(counters.web_dropped.load(Ordering::Relaxed) >= 49);
        drop(client);
        hub.broadcast("message", &json!({"gone": true}));
        assert_eq!(hub.inner.lock().map(|i| i.clients.len()).unwrap_or(9), 0);
    }
}
