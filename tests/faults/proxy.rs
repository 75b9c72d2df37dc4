//! A fault-injecting TCP proxy: adds delay and jitter to every byte.
//!
//! The kernel here has no `netem`, so latency is made in user space: the
//! proxy listens on one address, connects to a target per accepted
//! connection, and forwards each direction through a queue in which every
//! chunk read is held until `now + delay + random(0..jitter)`. A TCP stream
//! cannot be reordered, so release times only grow: a chunk never overtakes
//! the one before it, and jitter shows up as bursts, as on a real link.
//!
//! Plain threads, two per direction: the workspace's tokio has no `net`
//! feature, and a test proxy does not need to be fast.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How much latency to add, one way.
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    /// Added to every chunk.
    pub base: Duration,
    /// Up to this much more, uniformly at random.
    pub jitter: Duration,
}

/// Binds `listen`, then forwards every accepted connection to `target` with
/// `delay` each way, on background threads. Returns once bound.
pub fn start(listen: &str, target: &str, delay: Delay) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let target = target.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let target = target.clone();
            std::thread::spawn(move || {
                // Refused or unreachable: drop the client, as a dead link would.
                if let Ok(server) = TcpStream::connect(&target) {
                    link(client, server, delay);
                }
            });
        }
    });
    Ok(())
}

fn link(client: TcpStream, server: TcpStream, delay: Delay) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    std::thread::spawn(move || pump(c2, s2, delay, u64::from(seed) | 1));
    pump(server, client, delay, u64::from(seed).rotate_left(17) | 1);
}

/// Copies `from` to `to`, holding each chunk for the added delay.
fn pump(mut from: TcpStream, to: TcpStream, delay: Delay, mut seed: u64) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut out = match to.try_clone() {
        Ok(out) => out,
        Err(_) => return,
    };
    let writer = std::thread::spawn(move || {
        for (release, chunk) in rx {
            let now = Instant::now();
            if release > now {
                // The delay being injected, not a synchronisation sleep.
                std::thread::sleep(release - now);
            }
            if out.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = out.shutdown(Shutdown::Write);
    });
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let jitter_ns = u64::try_from(delay.jitter.as_nanos()).unwrap_or(0);
                let extra = if jitter_ns == 0 {
                    0
                } else {
                    xorshift(&mut seed) % jitter_ns
                };
                let release = (Instant::now() + delay.base + Duration::from_nanos(extra)).max(last);
                last = release;
                if tx.send((release, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
    let _ = to.shutdown(Shutdown::Both);
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
