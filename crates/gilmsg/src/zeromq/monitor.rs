//! Who one socket is connected to, and what its peers subscribed to.
//!
//! [`Monitor`] binds and connects a socket and follows libzmq's socket
//! monitor for it: which connected endpoints are up, which are down
//! (refused, unreachable, disconnected), how many peers have connected to
//! its bound endpoints. That is what readiness, the logs and the counters
//! are made of. It also repairs the one case libzmq leaves broken: a
//! connection that libzmq closes for a *protocol error* (a frame over
//! `ZMQ_MAXMSGSIZE`, a peer speaking another protocol) is never
//! re-established by libzmq (`session_base.cpp`, `engine_error`: a protocol
//! error terminates the session instead of calling `reconnect`). A monitor
//! sees `DISCONNECTED` with no `CONNECT_RETRIED` after it and re-connects the
//! endpoint itself, with back-off. That is what lets every receiving socket
//! carry a frame-size cap, connecting ones included.
//!
//! [`Subscriptions`] reads what peers subscribed to on an XPUB, and tells
//! its owner when they hold more distinct prefixes than allowed, so the
//! owner can drop them all ([`Monitor::reset_peers`]): libzmq keeps every
//! subscription in its own trie before the application sees it, and
//! dropping the peer is the only way to make it forget them.
//!
//! Bound `ipc://` socket files are removed when the monitor is dropped
//! (libzmq 4.3 removes only the files of `ipc://*` wildcards).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::{self, SocketTuning};
use crate::error::{Error, Result};
use crate::stats::LinkCounters;

/// How long after a disconnection a monitor waits for libzmq's own
/// `CONNECT_RETRIED` before concluding that libzmq gave up on the endpoint.
/// libzmq schedules its reconnect within microseconds of the disconnection;
/// this is only the floor of the back-off below.
const RECHECK_FLOOR: Duration = Duration::from_millis(100);

/// How often a bind that failed after [`Monitor::reset_peers`] is retried
/// (the old listener is closed asynchronously by libzmq's I/O thread).
const REBIND_RETRY: Duration = Duration::from_millis(20);

/// Where one connected endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// `connect` was called; no verdict from libzmq yet.
    Connecting,
    /// Handshake completed.
    Up,
    /// Refused, unreachable, or disconnected; libzmq (or we) keep retrying.
    Down,
}

#[derive(Debug)]
struct Link {
    endpoint: String,
    state: LinkState,
    since: Instant,
    /// When to re-connect ourselves if libzmq has not scheduled a
    /// reconnect by then (set on `DISCONNECTED`, cleared by `CONNECT_RETRIED`).
    recheck: Option<Instant>,
    /// Consecutive re-connects we had to make, for the back-off.
    repairs: u32,
}

#[derive(Debug)]
struct Bound {
    /// As configured (`tcp://*:9940`), for the IPv6 choice.
    requested: String,
    /// As libzmq reports it (`tcp://[::]:9940`, wildcard ports resolved).
    endpoint: String,
    ipc_file: Option<IpcFile>,
}

/// A socket file we created, identified so that we never remove a file
/// another process has since bound at the same path.
#[derive(Debug)]
struct IpcFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl IpcFile {
    fn of(requested: &str, bound: &str) -> Option<IpcFile> {
        // `ipc://*` is libzmq's own temporary file, which it removes itself.
        if requested == "ipc://*" {
            return None;
        }
        let path = PathBuf::from(bound.strip_prefix("ipc://")?);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        meta.file_type().is_socket().then_some(IpcFile {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(path = %self.path.display(), "removed ipc socket file"),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "cannot remove ipc socket file: {e}")
                }
            }
        }
    }
}

/// What a socket does on the bus.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'t> {
    /// Sends messages: an XPUB, which reads its peers' subscriptions.
    Publisher,
    /// Receives the messages on these topic prefixes: a SUB.
    Subscriber(&'t [String]),
}

/// The endpoints of one socket and what libzmq's monitor says about them.
pub(crate) struct Monitor {
    reader: zmq::Socket,
    /// Which socket this is, for logs ("subscriber", "ACK listener", ...).
    what: &'static str,
    links: Vec<Link>,
    /// Event endpoint text -> link (libzmq reports a hostname endpoint by
    /// its resolved address once it has resolved it).
    aliases: HashMap<String, usize>,
    bound: Vec<Bound>,
    /// Bound endpoints waiting to be bound again after `reset_peers`.
    rebind: Vec<usize>,
    rebind_at: Option<Instant>,
    /// File descriptors of peers connected to our bound endpoints.
    accepted: HashSet<u32>,
    reconnect_ivl: Duration,
    reconnect_ivl_max: Duration,
    /// The socket's `ZMQ_MAXMSGSIZE`, for the log when a peer is cut off.
    frame_cap: i64,
    /// How long to wait for endpoints with no verdict before calling the
    /// socket settled anyway (a black-holed host gives no verdict for minutes).
    grace: Duration,
    started: Instant,
    counters: Arc<LinkCounters>,
}

impl Monitor {
    /// Opens a socket for `role`, with `tuning`'s options and caps (a
    /// subscriber subscribed to its topics), and its monitor, attached
    /// before anything is bound or connected. Every socket-owning thread
    /// makes its sockets this way.
    pub(crate) fn open(
        context: &zmq::Context,
        tuning: &SocketTuning,
        role: Role<'_>,
        what: &'static str,
        grace: Duration,
        counters: &Arc<LinkCounters>,
    ) -> Result<(zmq::Socket, Monitor)> {
        let socket = match role {
            Role::Publisher => tuning.publisher(context, what)?,
            Role::Subscriber(topics) => {
                let socket = tuning.subscriber(context, what)?;
                for topic in topics {
                    socket
                        .set_subscribe(topic.as_bytes())
                        .map_err(|e| Error::socket(format!("subscribe {what} to {topic:?}"), e))?;
                }
                socket
            }
        };
        let monitor = Monitor::attach(context, &socket, what, tuning, grace, counters.clone())?;
        Ok((socket, monitor))
    }

    /// Starts monitoring `socket` (call before binding or connecting it).
    pub(crate) fn attach(
        context: &zmq::Context,
        socket: &zmq::Socket,
        what: &'static str,
        tuning: &SocketTuning,
        grace: Duration,
        counters: Arc<LinkCounters>,
    ) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let address = format!(
            "inproc://gilmsg-monitor-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
            | zmq::SocketEvent::DISCONNECTED as i32
            | zmq::SocketEvent::CONNECT_RETRIED as i32
            | zmq::SocketEvent::ACCEPTED as i32;
        socket
            .monitor(&address, events)
            .map_err(|e| Error::socket(format!("monitor {what} socket"), e))?;
        let reader = context
            .socket(zmq::PAIR)
            .map_err(|e| Error::socket("create monitor socket", e))?;
        reader
            .set_linger(0)
            .map_err(|e| Error::socket("set linger on monitor socket", e))?;
        reader
            .connect(&address)
            .map_err(|e| Error::socket(format!("connect monitor of {what}"), e))?;
        let frame_cap = socket
            .get_maxmsgsize()
            .map_err(|e| Error::socket(format!("read maxmsgsize of {what}"), e))?;
        Ok(Monitor {
            reader,
            what,
            links: Vec::new(),
            aliases: HashMap::new(),
            bound: Vec::new(),
            rebind: Vec::new(),
            rebind_at: None,
            accepted: HashSet::new(),
            reconnect_ivl: tuning.reconnect_ivl,
            reconnect_ivl_max: tuning.reconnect_ivl_max,
            frame_cap,
            grace,
            started: Instant::now(),
            counters,
        })
    }

    /// The monitor's own socket, for the poll set.
    pub(crate) fn socket(&self) -> &zmq::Socket {
        &self.reader
    }

    /// Binds `socket` to each endpoint; returns the endpoints as bound (a
    /// `tcp://127.0.0.1:*` wildcard comes back with its port).
    pub(crate) fn bind(
        &mut self,
        socket: &zmq::Socket,
        endpoints: &[String],
    ) -> Result<Vec<String>> {
        let mut bound = Vec::with_capacity(endpoints.len());
        for requested in endpoints {
            let what = self.what;
            set_ipv6_for(socket, requested, what)?;
            socket
                .bind(requested)
                .map_err(|e| Error::socket(format!("bind {what} to {requested}"), e))?;
            let endpoint = socket
                .get_last_endpoint()
                .map_err(|e| Error::socket(format!("read bound endpoint of {what}"), e))?
                .unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned());
            tracing::info!(socket = what, endpoint = %endpoint, "bound");
            self.bound.push(Bound {
                ipc_file: IpcFile::of(requested, &endpoint),
                requested: requested.clone(),
                endpoint: endpoint.clone(),
            });
            bound.push(endpoint);
        }
        Ok(bound)
    }

    /// Connects `socket` to each endpoint (libzmq connects in the background).
    pub(crate) fn connect(&mut self, socket: &zmq::Socket, endpoints: &[String]) -> Result<()> {
        let now = Instant::now();
        for endpoint in endpoints {
            let what = self.what;
            set_ipv6_for(socket, endpoint, what)?;
            socket
                .connect(endpoint)
                .map_err(|e| Error::socket(format!("connect {what} to {endpoint}"), e))?;
            tracing::debug!(socket = what, endpoint = %endpoint, "connecting");
            self.aliases.insert(endpoint.clone(), self.links.len());
            self.links.push(Link {
                endpoint: endpoint.clone(),
                state: LinkState::Connecting,
                since: now,
                recheck: None,
                repairs: 0,
            });
        }
        Ok(())
    }

    /// Applies every queued monitor event; returns whether a connected
    /// endpoint or the number of peers changed.
    pub(crate) fn process(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Ok(Some(frames)) = socket::try_recv_multipart(&self.reader) {
            if frames.len() != 2 || frames[0].len() < 6 {
                continue;
            }
            let event = u16::from_le_bytes([frames[0][0], frames[0][1]]);
            let value =
                u32::from_le_bytes([frames[0][2], frames[0][3], frames[0][4], frames[0][5]]);
            let endpoint = String::from_utf8_lossy(&frames[1]);
            changed |= self.apply(event, value, &endpoint, now);
        }
        changed
    }

    fn apply(&mut self, event: u16, value: u32, endpoint: &str, now: Instant) -> bool {
        use zmq::SocketEvent as E;
        let what = self.what;
        // Peers connecting to our bound endpoints, told apart by their fd.
        if event == E::ACCEPTED as u16 {
            self.accepted.insert(value);
            tracing::debug!(
                socket = what,
                endpoint,
                peers = self.accepted.len(),
                "peer connected"
            );
            return true;
        }
        if event == E::DISCONNECTED as u16 && self.accepted.remove(&value) {
            tracing::debug!(
                socket = what,
                endpoint,
                peers = self.accepted.len(),
                "peer disconnected"
            );
            return true;
        }
        let Some(i) = self.link_index(endpoint) else {
            // A handshake with an accepted peer: counted at ACCEPTED.
            return false;
        };
        let recheck = self.recheck_delay(self.links[i].repairs);
        let settled_up_for = self.reconnect_ivl_max.max(RECHECK_FLOOR);
        let link = &mut self.links[i];
        if event == E::HANDSHAKE_SUCCEEDED as u16 {
            tracing::info!(socket = what, endpoint = %link.endpoint, "connected");
            link.state = LinkState::Up;
            link.since = now;
            link.recheck = None;
            true
        } else if event == E::DISCONNECTED as u16 {
            if link.state == LinkState::Up
                && now.saturating_duration_since(link.since) >= settled_up_for
            {
                link.repairs = 0;
            }
            tracing::info!(socket = what, endpoint = %link.endpoint, "disconnected");
            let changed = link.state != LinkState::Down;
            link.state = LinkState::Down;
            link.since = now;
            link.recheck = now.checked_add(recheck);
            changed
        } else if event == E::CONNECT_RETRIED as u16 {
            // libzmq will retry by itself: nothing for us to repair.
            link.recheck = None;
            if link.state == LinkState::Down {
                return false;
            }
            tracing::info!(socket = what, endpoint = %link.endpoint, "cannot connect; retrying in the background");
            link.state = LinkState::Down;
            link.since = now;
            true
        } else {
            false
        }
    }

    fn link_index(&mut self, endpoint: &str) -> Option<usize> {
        if let Some(&i) = self.aliases.get(endpoint) {
            return Some(i);
        }
        // A hostname endpoint shows up under its resolved address: match it
        // by port among the endpoints whose host is a name, if unambiguous.
        let (_, port) = tcp_host_port(endpoint)?;
        let mut candidates = self.links.iter().enumerate().filter(|(_, l)| {
            tcp_host_port(&l.endpoint).is_some_and(|(h, p)| p == port && !is_literal_host(h))
        });
        let (i, _) = candidates.next()?;
        if candidates.next().is_some() {
            return None;
        }
        self.aliases.insert(endpoint.to_owned(), i);
        Some(i)
    }

    fn recheck_delay(&self, repairs: u32) -> Duration {
        let floor = self.reconnect_ivl.max(RECHECK_FLOOR);
        let ceiling = self.reconnect_ivl_max.max(floor);
        floor.saturating_mul(1 << repairs.min(10)).min(ceiling)
    }

    /// Does what is due: re-connects endpoints libzmq gave up on, retries
    /// binds after [`Monitor::reset_peers`].
    pub(crate) fn tick(&mut self, socket: &zmq::Socket, now: Instant) {
        let what = self.what;
        for i in 0..self.links.len() {
            if self.links[i].recheck.is_none_or(|t| t > now) {
                continue;
            }
            let delay = self.recheck_delay(self.links[i].repairs + 1);
            let link = &mut self.links[i];
            link.recheck = None;
            link.repairs += 1;
            self.counters.protocol_error.bump();
            tracing::warn!(
                socket = what,
                endpoint = %link.endpoint,
                frame_cap = self.frame_cap,
                "libzmq dropped the connection without scheduling a reconnect (a protocol \
                 error: a frame over the cap, or a peer speaking another protocol); reconnecting"
            );
            let _ = set_ipv6_for(socket, &link.endpoint, what);
            let _ = socket.disconnect(&link.endpoint);
            match socket.connect(&link.endpoint) {
                Ok(()) => {
                    link.state = LinkState::Connecting;
                    link.since = now;
                }
                Err(e) => {
                    tracing::warn!(socket = what, endpoint = %link.endpoint, "cannot reconnect: {e}");
                    link.recheck = now.checked_add(delay);
                }
            }
        }
        if self.rebind_at.is_some_and(|t| t <= now) {
            self.rebind_at = None;
            let mut still = Vec::new();
            for i in std::mem::take(&mut self.rebind) {
                let b = &mut self.bound[i];
                let bound = set_ipv6_for(socket, &b.requested, what).and_then(|()| {
                    socket
                        .bind(&b.endpoint)
                        .map_err(|e| Error::socket("bind", e))
                });
                match bound {
                    Ok(()) => {
                        tracing::info!(socket = what, endpoint = %b.endpoint, "bound again");
                        b.ipc_file = IpcFile::of(&b.requested, &b.endpoint);
                    }
                    Err(e) => {
                        tracing::debug!(socket = what, endpoint = %b.endpoint, "bind again failed, retrying: {e}");
                        still.push(i);
                    }
                }
            }
            if !still.is_empty() {
                self.rebind = still;
                self.rebind_at = now.checked_add(REBIND_RETRY);
            }
        }
    }

    /// Drops every peer of `socket`: unbinds and binds again each bound
    /// endpoint (which ends the connections accepted on it) and re-connects
    /// each connected one. Peers that mean well reconnect and subscribe
    /// again; libzmq forgets everything the dropped connections held.
    pub(crate) fn reset_peers(&mut self, socket: &zmq::Socket, now: Instant) {
        let what = self.what;
        for (i, b) in self.bound.iter().enumerate() {
            let _ = set_ipv6_for(socket, &b.requested, what);
            if let Err(e) = socket.unbind(&b.endpoint) {
                tracing::warn!(socket = what, endpoint = %b.endpoint, "cannot unbind: {e}");
                continue;
            }
            if !self.rebind.contains(&i) {
                self.rebind.push(i);
            }
        }
        if !self.rebind.is_empty() {
            self.rebind_at = Some(now);
            // libzmq ends the accepted connections of an unbound endpoint
            // without a DISCONNECTED event for each.
            self.accepted.clear();
        }
        for link in &mut self.links {
            let _ = set_ipv6_for(socket, &link.endpoint, what);
            let _ = socket.disconnect(&link.endpoint);
            if socket.connect(&link.endpoint).is_ok() {
                link.state = LinkState::Connecting;
                link.since = now;
                link.recheck = None;
            }
        }
        self.tick(socket, now);
    }

    /// Drops every peer of the XPUB `socket` if `drained` says its peers
    /// broke the subscription bounds; counts and logs why.
    pub(crate) fn enforce(&mut self, socket: &zmq::Socket, drained: Drained, now: Instant) {
        let Some(reason) = drained.drop_peers else {
            return;
        };
        self.counters.subscriptions.bump(reason);
        tracing::warn!(
            socket = self.what,
            reason,
            "peers broke max_subscriptions / max_subscription_length: dropping every peer \
             of this socket so that libzmq forgets their subscriptions (they reconnect)"
        );
        self.reset_peers(socket, now);
    }

    /// When [`Monitor::tick`] or the settling grace next needs the thread.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let grace_end = self.started.checked_add(self.grace).filter(|&end| {
            end > now && self.links.iter().any(|l| l.state == LinkState::Connecting)
        });
        self.links
            .iter()
            .filter_map(|l| l.recheck)
            .chain(self.rebind_at)
            .chain(grace_end)
            .min()
    }

    /// Connected endpoints with a completed handshake.
    pub(crate) fn connected(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.state == LinkState::Up)
            .count()
    }

    /// How many endpoints the socket connects to.
    pub(crate) fn expected(&self) -> usize {
        self.links.len()
    }

    /// Connected endpoints that are not up now (down, or still connecting).
    pub(crate) fn missing(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| l.state != LinkState::Up)
            .map(|l| l.endpoint.clone())
            .collect()
    }

    /// Whether waiting for the connected endpoints is over: each is up or
    /// known to be down, or the grace period has passed.
    pub(crate) fn settled(&self, now: Instant) -> bool {
        self.links.iter().all(|l| l.state != LinkState::Connecting)
            || self
                .started
                .checked_add(self.grace)
                .is_none_or(|end| now >= end)
    }

    /// Peers connected to the bound endpoints now.
    pub(crate) fn peers(&self) -> usize {
        self.accepted.len()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for b in &self.bound {
            if let Some(file) = &b.ipc_file {
                file.remove();
            }
        }
    }
}

/// IPv6 is chosen per endpoint (libzmq reads the option at bind/connect
/// time): on for an IPv6 literal (`tcp://[::1]:9940`) and for a wildcard
/// bind (`tcp://*:9940`, which then accepts IPv4 and IPv6), off otherwise.
/// Off for host *names* on purpose: with `ZMQ_IPV6` libzmq resolves names
/// to IPv6 first and does not fall back, so `tcp://localhost:9940` would
/// try `::1` only and miss a peer bound to 127.0.0.1 (fedmsg peers bind
/// IPv4). Write an IPv6 peer as a bracketed address.
pub(crate) fn wants_ipv6(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    // `tcp://source;destination` names the source interface first.
    let host = host.rsplit_once(';').map_or(host, |(_, h)| h);
    host.starts_with('[') || host == "*"
}

fn set_ipv6_for(socket: &zmq::Socket, endpoint: &str, what: &str) -> Result<()> {
    socket
        .set_ipv6(wants_ipv6(endpoint))
        .map_err(|e| Error::socket(format!("set ipv6 on {what} socket"), e))
}

fn tcp_host_port(endpoint: &str) -> Option<(&str, &str)> {
    endpoint.strip_prefix("tcp://")?.rsplit_once(':')
}

fn is_literal_host(host: &str) -> bool {
    host.starts_with('[') || host == "*" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// What peers of an XPUB have subscribed to (distinct prefixes, as ZeroMQ
/// matches them), with a bound on how many.
///
/// libzmq tells an XPUB's owner about a prefix when the first peer
/// subscribes to it and when the last one leaves (with `ZMQ_XPUB_VERBOSE`,
/// about every subscribe too); so the set of prefixes seen is exactly the
/// set libzmq holds, whatever the mode.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    prefixes: HashSet<Vec<u8>>,
    limit: usize,
    max_length: usize,
    over_limit: bool,
}

/// What [`Subscriptions::drain_from`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// The set of prefixes changed.
    pub changed: bool,
    /// Why every peer should be dropped now ([`Monitor::enforce`]), as a
    /// counter name: `over_limit` (more distinct prefixes than allowed) or
    /// `too_long` (a prefix longer than allowed that fitted under the frame
    /// cap's floor).
    pub drop_peers: Option<&'static str>,
}

/// Subscription messages read per call, so a flood cannot hold the thread.
const DRAIN_BATCH: usize = 4096;

impl Subscriptions {
    /// An empty set that allows `tuning.max_subscriptions` distinct
    /// prefixes of at most `tuning.max_subscription_length` bytes.
    pub(crate) fn new(tuning: &SocketTuning) -> Self {
        Subscriptions {
            prefixes: HashSet::new(),
            limit: tuning.max_subscriptions,
            max_length: tuning.max_subscription_length,
            over_limit: false,
        }
    }

    /// Applies one subscription message (`\x01prefix` or `\x00prefix`);
    /// returns whether the set changed.
    pub(crate) fn apply(&mut self, message: &[u8]) -> bool {
        let changed = match message.split_first() {
            Some((1, prefix)) => self.prefixes.insert(prefix.to_vec()),
            // libzmq reports an unsubscription only when no peer holds the
            // prefix any more.
            Some((0, prefix)) => self.prefixes.remove(prefix),
            _ => false,
        };
        if changed {
            tracing::debug!(
                subscribed = message[0] == 1,
                prefix = %String::from_utf8_lossy(&message[1..]),
                prefixes = self.prefixes.len(),
                "subscription changed"
            );
        }
        changed
    }

    /// Whether some peer would receive a message on `topic`.
    pub(crate) fn matches(&self, topic: &[u8]) -> bool {
        self.prefixes.iter().any(|p| topic.starts_with(p))
    }

    /// Whether any peer subscribed to anything.
    pub(crate) fn any(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// Distinct prefixes subscribed to now.
    pub(crate) fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Reads queued subscription messages from an XPUB. Anything else a
    /// peer sends upstream (an XSUB may send data) is counted and dropped.
    pub(crate) fn drain_from(&mut self, xpub: &zmq::Socket, counters: &LinkCounters) -> Drained {
        let mut drained = Drained::default();
        let mut message = zmq::Message::new();
        for _ in 0..DRAIN_BATCH {
            match xpub.recv(&mut message, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!("reading subscriptions failed: {e}");
                    break;
                }
            }
            if message.get_more() {
                // Subscription notifications are single frames; this is data.
                while message.get_more() && xpub.recv(&mut message, zmq::DONTWAIT).is_ok() {}
                counters.subscriptions.bump("not_a_subscription");
                continue;
            }
            match message.first() {
                Some(0 | 1) => {
                    drained.changed |= self.apply(&message);
                    if message[0] == 1 && message.len() - 1 > self.max_length {
                        drained.drop_peers = Some("too_long");
                    }
                }
                _ => counters.subscriptions.bump("not_a_subscription"),
            }
        }
        if self.prefixes.len() > self.limit {
            // Once per crossing: the peers' unsubscriptions bring it down.
            if !self.over_limit {
                drained.drop_peers = Some("over_limit");
            }
            self.over_limit = true;
        } else {
            self.over_limit = false;
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Record;

    #[test]
    fn subscriptions_track_distinct_prefixes() {
        let mut s =
            Subscriptions::new(&SocketTuning::from_config(&gilmsg_config::Config::default()));
        assert!(!s.matches(b"a.b"));
        assert!(s.apply(b"\x01a."));
        assert!(!s.apply(b"\x01a."), "verbose repeats change nothing");
        assert!(s.matches(b"a.b") && !s.matches(b"b"));
        assert!(s.apply(b"\x00a."));
        assert!(!s.any());
        s.apply(b"\x01");
        assert!(s.matches(b"anything"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn ipv6_is_chosen_per_endpoint() {
        assert!(wants_ipv6("tcp://[::1]:9940"));
        assert!(wants_ipv6("tcp://*:9940"));
        assert!(wants_ipv6("tcp://eth0;[fe80::1]:9940"));
        assert!(!wants_ipv6("tcp://127.0.0.1:9940"));
        assert!(!wants_ipv6("tcp://localhost:9940"));
        assert!(!wants_ipv6("ipc:///tmp/x"));
    }

    /// A SUB with its monitor, connected to nothing yet.
    fn subscriber() -> (zmq::Context, zmq::Socket, Monitor) {
        let context = zmq::Context::new();
        let tuning = SocketTuning::from_config(&gilmsg_config::Config::default());
        let (socket, monitor) = Monitor::open(
            &context,
            &tuning,
            Role::Subscriber(&[]),
            "test",
            Duration::from_secs(1),
            &Arc::default(),
        )
        .unwrap();
        (context, socket, monitor)
    }

    #[test]
    fn hostname_endpoints_are_matched_by_port_once_resolved() {
        let (_context, socket, mut m) = subscriber();
        let endpoints = [
            "tcp://localhost:1".to_owned(),
            "tcp://127.0.0.1:2".to_owned(),
        ];
        m.connect(&socket, &endpoints).unwrap();
        assert_eq!(m.link_index("tcp://127.0.0.1:1"), Some(0));
        assert_eq!(m.link_index("tcp://127.0.0.1:2"), Some(1));
        assert_eq!(m.link_index("tcp://127.0.0.1:3"), None);
        let now = Instant::now();
        assert!(!m.settled(now));
        m.apply(
            zmq::SocketEvent::CONNECT_RETRIED as u16,
            0,
            "tcp://localhost:1",
            now,
        );
        m.apply(
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16,
            0,
            "tcp://127.0.0.1:2",
            now,
        );
        assert!(m.settled(now));
        assert_eq!((m.connected(), m.expected()), (1, 2));
        assert_eq!(m.missing(), ["tcp://localhost:1"]);
    }

    #[test]
    fn a_disconnection_without_a_retry_is_repaired() {
        let (_context, socket, mut m) = subscriber();
        m.connect(&socket, &["tcp://127.0.0.1:9".to_owned()])
            .unwrap();
        let t0 = Instant::now();
        m.apply(
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16,
            0,
            "tcp://127.0.0.1:9",
            t0,
        );
        // An ordinary disconnection: libzmq retries, nothing to repair.
        m.apply(
            zmq::SocketEvent::DISCONNECTED as u16,
            7,
            "tcp://127.0.0.1:9",
            t0,
        );
        m.apply(
            zmq::SocketEvent::CONNECT_RETRIED as u16,
            100,
            "tcp://127.0.0.1:9",
            t0,
        );
        assert_eq!(m.next_deadline(t0), None);
        // A protocol error: DISCONNECTED and nothing after it.
        m.apply(
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16,
            0,
            "tcp://127.0.0.1:9",
            t0,
        );
        m.apply(
            zmq::SocketEvent::DISCONNECTED as u16,
            7,
            "tcp://127.0.0.1:9",
            t0,
        );
        let due = m.next_deadline(t0).expect("a recheck is scheduled");
        m.tick(&socket, due);
        assert_eq!(m.counters.snapshot().get("connection.protocol_error"), 1);
        assert_eq!(m.links[0].state, LinkState::Connecting);
    }
}
