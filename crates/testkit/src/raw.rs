//! Raw ZeroMQ peers on a fixture bus, for what the library would never send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gilmsg_proto::Envelope;

use crate::Bus;

/// How long to wait for a ZeroMQ handshake or subscription.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// An XPUB connected to the relay's inbound: sends arbitrary frames, and
/// only once the relay's SUB has subscribed (so nothing is dropped).
pub struct RawPub {
    _context: zmq::Context,
    socket: zmq::Socket,
}

impl RawPub {
    /// Connects to `endpoint` and waits for the peer's subscription message.
    pub fn connect(endpoint: &str) -> RawPub {
        RawPub::open(endpoint, None, 1000)
    }

    /// [`RawPub::connect`] with no high-water mark, so nothing is dropped
    /// on our side however fast the test sends, and 5 s to flush at close.
    pub fn flooder(endpoint: &str) -> RawPub {
        RawPub::open(endpoint, Some(0), 5000)
    }

    fn open(endpoint: &str, sndhwm: Option<i32>, linger: i32) -> RawPub {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::XPUB).expect("xpub");
        if let Some(hwm) = sndhwm {
            socket.set_sndhwm(hwm).expect("sndhwm");
        }
        socket.set_linger(linger).expect("linger");
        socket.connect(endpoint).expect("connect xpub");
        let deadline = Instant::now() + CONNECT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no subscription from {endpoint} within {CONNECT_LIMIT:?}"
            );
            if socket
                .poll(zmq::POLLIN, left.as_millis() as i64)
                .expect("poll")
                > 0
            {
                let frame = socket.recv_bytes(0).expect("recv subscription");
                if frame.first() == Some(&1) {
                    break;
                }
            }
        }
        RawPub {
            _context: context,
            socket,
        }
    }

    /// Sends one multi-frame message.
    pub fn send<F: AsRef<[u8]>>(&self, frames: &[F]) {
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            self.socket.send(frame.as_ref(), flags).expect("send");
        }
    }
}

/// An XPUB of `context` bound on `tcp://127.0.0.1:*` (linger 0): an
/// endpoint the test plays, which consumers connect to; returns it with
/// the endpoint it bound.
pub fn bind_xpub(context: &zmq::Context) -> (zmq::Socket, String) {
    let socket = context.socket(zmq::XPUB).expect("xpub");
    socket.set_linger(0).expect("linger");
    socket.bind("tcp://127.0.0.1:*").expect("bind");
    let endpoint = socket
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8 endpoint");
    (socket, endpoint)
}

/// A SUB connected to the relay's outbound.
pub struct RawSub {
    _context: zmq::Context,
    socket: zmq::Socket,
}

impl RawSub {
    /// Connects to `endpoint` subscribed to each of `prefixes`.
    pub fn connect(endpoint: &str, prefixes: &[&str]) -> RawSub {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::SUB).expect("sub");
        socket.set_linger(0).expect("linger");
        for p in prefixes {
            socket.set_subscribe(p.as_bytes()).expect("subscribe");
        }
        socket.connect(endpoint).expect("connect sub");
        RawSub {
            _context: context,
            socket,
        }
    }

    /// The next message within `limit`.
    pub fn recv(&self, limit: Duration) -> Option<Vec<Vec<u8>>> {
        if self
            .socket
            .poll(zmq::POLLIN, limit.as_millis() as i64)
            .expect("poll")
            == 0
        {
            return None;
        }
        Some(self.socket.recv_multipart(0).expect("recv"))
    }

    /// The next message whose topic frame is `topic`, decoded, within `limit`.
    pub fn recv_envelope(&self, topic: &str, limit: Duration) -> Envelope {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frames = self
                .recv(left)
                .unwrap_or_else(|| panic!("no message on {topic} within {limit:?}"));
            if frames.first().map(Vec::as_slice) == Some(topic.as_bytes()) {
                return Envelope::decode(&frames, 1 << 20).expect("decodable message");
            }
        }
    }
}

/// A recipient played by the test: sees what the relay forwards on one
/// topic, and sends whatever ACK the test builds.
pub struct FakeRecipient {
    /// Sends into the relay.
    pub out: RawPub,
    /// Receives from the relay.
    pub sub: RawSub,
}

impl FakeRecipient {
    /// Connects to `bus` listening on `topic`; returns once a probe sent
    /// through the relay has come back, so the relay has our subscription.
    pub fn connect(bus: &Bus, topic: &str) -> FakeRecipient {
        static N: AtomicU64 = AtomicU64::new(0);
        let probe = format!(
            "gilmsg-tests-probe.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = RawPub::connect(&bus.inbound);
        let sub = RawSub::connect(&bus.outbound, &[topic, &probe]);
        let deadline = Instant::now() + CONNECT_LIMIT;
        'probing: loop {
            assert!(
                Instant::now() < deadline,
                "probe never came back through the relay"
            );
            out.send(&[probe.as_bytes(), b"probe"]);
            // A retry loop paced by the wait for the echo, not a sleep.
            while let Some(frames) = sub.recv(Duration::from_millis(50)) {
                if frames.first().map(Vec::as_slice) == Some(probe.as_bytes()) {
                    break 'probing;
                }
            }
        }
        sub.socket
            .set_unsubscribe(probe.as_bytes())
            .expect("unsubscribe probe");
        FakeRecipient { out, sub }
    }

    /// Waits for the next message on `topic`.
    pub fn receive(&self, topic: &str, limit: Duration) -> Envelope {
        self.sub.recv_envelope(topic, limit)
    }

    /// Sends raw frames into the bus.
    pub fn send<F: AsRef<[u8]>>(&self, frames: &[F]) {
        self.out.send(frames)
    }
}
