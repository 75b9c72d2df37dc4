//! Re-send timing: RFC 6298's retransmission timer.
//!
//! A smoothed round-trip estimate, a timeout of `srtt + 4 * rttvar` clamped
//! to `[min_rto, max_rto]`, doubled for every further re-send of the same
//! message. That keeps re-sends rare when the bus is healthy but slow (they
//! would only add load) and fast when a message is lost to ZeroMQ's
//! slow-joiner drop. How samples are taken (from the first send, Karn's
//! rule left out) is said in [`crate::publisher`].

use std::time::Duration;

/// Bounds for the re-send timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitPolicy {
    /// Timeout before the first round-trip sample.
    pub initial_rto: Duration,
    /// Lower bound of the timeout.
    pub min_rto: Duration,
    /// Upper bound of the timeout (also caps the backoff).
    pub max_rto: Duration,
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        RetransmitPolicy {
            initial_rto: Duration::from_millis(50),
            min_rto: Duration::from_millis(25),
            max_rto: Duration::from_millis(1000),
        }
    }
}

/// Smoothed round-trip time estimator (RFC 6298 section 2).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    policy: RetransmitPolicy,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// An estimator with no samples yet.
    pub fn new(policy: RetransmitPolicy) -> Self {
        RttEstimator {
            policy,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// Feeds one round-trip sample.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed round-trip time, once sampled.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The current re-send timeout.
    pub fn rto(&self) -> Duration {
        let raw = match self.srtt {
            None => self.policy.initial_rto,
            Some(srtt) => srtt + self.rttvar * 4,
        };
        raw.clamp(self.policy.min_rto, self.policy.max_rto)
    }

    /// The timeout for the n-th re-send (n = 1 for the first), doubling.
    pub fn backoff(&self, resend: u32) -> Duration {
        let factor = 1u32 << resend.saturating_sub(1).min(16);
        self.rto().saturating_mul(factor).min(self.policy.max_rto)
    }
}
