//! Whether a component's transport loop is alive ([`Health`]), and whether
//! a whole process is ready ([`ProcessHealth`]): what `/live`, `/ready`
//! and the systemd watchdog report.
//!
//! Every transport loop holds a [`Pulse`] and beats it on each turn of its
//! loop; the loop turns at least every [`PULSE_EVERY`] even when nothing
//! happens (the ZeroMQ runner bounds its poll by it; an async transport
//! ticks a timer). A loop that has not beaten for [`STUCK_AFTER`] is stuck
//! (a handler blocking the socket thread, a wedged library call); one
//! whose pulse was dropped (the thread ended, even by a panic) is dead.
//! Neither kind of failure is visible from the counters alone, and both
//! are the silent failures operators of fedmsg hubs met: the process runs,
//! nothing moves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The module name heartbeats are published under.
pub const HEARTBEAT_MODNAME: &str = "gilmsg";

/// The topic heartbeats are published on, after the module name.
pub const HEARTBEAT_TOPIC: &str = "heartbeat";

/// `<topic_prefix>.<environment>.gilmsg.heartbeat`: where long-running
/// processes publish their signed heartbeats.
pub fn heartbeat_topic(config: &gilmsg_config::Config) -> String {
    config
        .topic_scheme()
        .topic(HEARTBEAT_MODNAME, HEARTBEAT_TOPIC)
}

/// How often a transport loop turns at the least, to beat its pulse.
pub const PULSE_EVERY: Duration = Duration::from_millis(500);

/// A loop whose last beat is older than this is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Beat {
    started: Instant,
    /// Milliseconds from `started` to the last beat.
    last_ms: AtomicU64,
    /// The loop's thread or task has not ended.
    running: AtomicBool,
    /// The loop holds its connection (a broker transport between a lost
    /// connection and the reconnect says false; ZeroMQ, whose library
    /// reconnects by itself, always true). Not ready while false.
    connected: AtomicBool,
}

/// The view of one component's transport loop: cloneable, cheap to read.
#[derive(Debug, Clone)]
pub struct Health {
    beat: Arc<Beat>,
}

/// The state of one transport loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopState {
    /// Turning.
    Running,
    /// Not turned for longer than [`STUCK_AFTER`].
    Stuck,
    /// Ended (the handle was closed, or the loop died).
    Ended,
}

impl LoopState {
    /// Its name in `/live` and `/ready` bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LoopState::Running => "running",
            LoopState::Stuck => "stuck",
            LoopState::Ended => "ended",
        }
    }
}

impl Health {
    /// A new pulse for a loop about to start, and its view.
    pub(crate) fn new() -> (Pulse, Health) {
        let beat = Arc::new(Beat {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            running: AtomicBool::new(true),
            connected: AtomicBool::new(true),
        });
        (Pulse { beat: beat.clone() }, Health { beat })
    }

    /// The loop's state at `now`.
    pub fn state_at(&self, now: Instant) -> LoopState {
        if !self.beat.running.load(Ordering::Acquire) {
            return LoopState::Ended;
        }
        if self.since_last_beat(now) > STUCK_AFTER {
            LoopState::Stuck
        } else {
            LoopState::Running
        }
    }

    /// The loop's state now.
    pub fn state(&self) -> LoopState {
        self.state_at(Instant::now())
    }

    /// Whether the loop holds its connection (see [`ProcessHealth::is_ready`]).
    pub fn is_connected(&self) -> bool {
        self.beat.connected.load(Ordering::Acquire)
    }

    /// How long ago the loop last turned.
    pub fn since_last_beat(&self, now: Instant) -> Duration {
        let last =
            self.beat.started + Duration::from_millis(self.beat.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// A transport loop's side of its [`Health`]: beaten every turn, marks the
/// loop ended when dropped (its thread returned or unwound).
#[derive(Debug)]
pub(crate) struct Pulse {
    beat: Arc<Beat>,
}

impl Pulse {
    /// The loop turned.
    pub(crate) fn beat(&self) {
        let ms = self.beat.started.elapsed().as_millis();
        self.beat
            .last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether the loop holds its connection now: a process is not ready
    /// (`/ready` 503) while one of its loops has lost it, though it is
    /// live (`/live` 200: it turns, reconnecting).
    pub(crate) fn connected(&self, connected: bool) {
        self.beat.connected.store(connected, Ordering::Release);
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.beat.running.store(false, Ordering::Release);
    }
}

/// What a process is made of and whether it said it was ready: the
/// components' loops ([`Health`]) and the process's own ready flag, set
/// when it prints its ready line. Cloneable; shared by the monitoring
/// endpoint and the systemd notifier.
#[derive(Debug, Clone, Default)]
pub struct ProcessHealth {
    inner: Arc<ProcessInner>,
}

#[derive(Debug, Default)]
struct ProcessInner {
    components: Mutex<Vec<(String, Health)>>,
    ready: AtomicBool,
    stopping: AtomicBool,
}

/// One component's line in a [`ProcessHealth`] report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    /// The component's name (`consumer`, `relay`, `heartbeat`, ...).
    pub name: String,
    /// Its loop's state.
    pub state: LoopState,
    /// Whether its loop holds its connection.
    pub connected: bool,
}

impl ProcessHealth {
    /// A process with no component yet, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches one more component's loop, under `name`.
    pub fn watch(&self, name: impl Into<String>, health: Health) {
        if let Ok(mut components) = self.inner.components.lock() {
            components.push((name.into(), health));
        }
    }

    /// The process reached its ready condition (the moment it prints its
    /// ready line).
    pub fn mark_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// The process is stopping: no longer ready.
    pub fn mark_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// Every component's state at `now`.
    pub fn components_at(&self, now: Instant) -> Vec<ComponentReport> {
        match self.inner.components.lock() {
            Ok(components) => components
                .iter()
                .map(|(name, health)| ComponentReport {
                    name: name.clone(),
                    state: health.state_at(now),
                    connected: health.is_connected(),
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every component's loop is running (none stuck or ended).
    pub fn is_live(&self) -> bool {
        self.components_at(Instant::now())
            .iter()
            .all(|c| c.state == LoopState::Running)
    }

    /// Live, said it was ready, not stopping, and every loop holds its
    /// connection (ready means able to ACK: not while reconnecting).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
            && !self.inner.stopping.load(Ordering::Acquire)
            && self
                .components_at(Instant::now())
                .iter()
                .all(|c| c.state == LoopState::Running && c.connected)
    }

    /// Whether the process said it was ready (whatever its loops do now).
    pub fn said_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether the process is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_running_while_it_beats_stuck_when_it_stops_and_ended_when_dropped() {
        let (pulse, health) = Health::new();
        let process = ProcessHealth::new();
        process.watch("test", health.clone());
        pulse.beat();
        let now = Instant::now();
        assert_eq!(health.state_at(now), LoopState::Running);
        assert!(process.is_live());
        assert!(!process.is_ready(), "not ready before it says so");
        process.mark_ready();
        assert!(process.is_ready());
        assert_eq!(
            health.state_at(now + STUCK_AFTER + Duration::from_millis(100)),
            LoopState::Stuck
        );
        drop(pulse);
        assert_eq!(health.state_at(now), LoopState::Ended);
        assert!(!process.is_live());
        assert!(!process.is_ready());
    }

    #[test]
    fn a_loop_without_its_connection_is_live_but_not_ready_until_it_reconnects() {
        let (pulse, health) = Health::new();
        let process = ProcessHealth::new();
        process.watch("consumer", health);
        pulse.beat();
        process.mark_ready();
        assert!(process.is_ready());
        pulse.connected(false);
        assert!(process.is_live());
        assert!(!process.is_ready());
        pulse.connected(true);
        assert!(process.is_ready());
    }

    #[test]
    fn a_stopping_process_is_not_ready() {
        let (pulse, health) = Health::new();
        let process = ProcessHealth::new();
        process.watch("test", health);
        pulse.beat();
        process.mark_ready();
        process.mark_stopping();
        assert!(process.is_live());
        assert!(!process.is_ready());
    }
}
