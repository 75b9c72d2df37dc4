//! The crate's one error type.
//!
//! Every variant is something a caller can act on. [`Error::Timeout`] carries
//! the full picture of a failed acknowledged publish (who acked, who did not,
//! how often the message was sent), the way ripgrep's `Error::Partial`
//! reports partial success instead of a bare failure.

use std::fmt;
use std::time::Duration;

use gilmsg_proto::ack::AckRecord;

/// Errors from publishing, consuming and relaying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not every recipient acked before the deadline.
    #[error(transparent)]
    Timeout(Box<TimeoutError>),
    /// A plain (unacknowledged) send found no subscriber before its deadline.
    #[error("no subscriber for {topic} within {}", humanize(*waited))]
    NoSubscribers {
        /// Full topic.
        topic: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Recipients were named but the configuration lists no endpoint to
    /// hear their ACKs on.
    #[error("recipients were named but `endpoints` lists nowhere to hear ACKs from")]
    NoAckEndpoints,
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] gilmsg_config::ConfigError),
    /// Keys, certificates or the trust store could not be loaded.
    #[error(transparent)]
    Crypto(#[from] gilmsg_crypto::Error),
    /// The message could not be built (a number a double cannot hold
    /// exactly, a value with no canonical form): the caller's input.
    #[error("cannot build message: {0}")]
    Message(gilmsg_proto::envelope::BuildError),
    /// The signer failed (a key or library error at signing time): not the
    /// message's fault, so the command-line tools exit 3 for it, not 2.
    #[error(transparent)]
    Sign(gilmsg_proto::SignError),
    /// The message is one every consumer would refuse, so it was not sent
    /// (rather than re-sent until the timeout): nothing can ever ACK it.
    #[error("not sent: {0}")]
    Unsendable(Unsendable),
    /// A ZeroMQ call failed; `context` says which (e.g. the endpoint).
    #[error("{context}: {source}")]
    Socket {
        /// What was being done.
        context: String,
        /// The ZeroMQ error.
        source: zmq::Error,
    },
    /// The operating system refused a resource the library needs: a thread,
    /// the wake-up socketpair, a runtime. Not the caller's fault; the
    /// command-line tools exit 3 for it, like a socket failure.
    #[error("{context}: {source}")]
    Os {
        /// What was being done.
        context: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// AMQP: the broker returned the message (`mandatory`): no queue is
    /// bound for its topic, so no recipient would ever receive it.
    #[error(
        "no queue would receive {topic} on exchange {exchange:?}: the broker returned it ({reply})"
    )]
    Unroutable {
        /// Full topic (the routing key).
        topic: String,
        /// The exchange it was published to.
        exchange: String,
        /// The broker's reply text (`NO_ROUTE`).
        reply: String,
    },
    /// AMQP: the broker could not be reached or refused us; `context` says
    /// what was being done (with the URL, its password left out).
    #[error("{context}: {reason}")]
    Broker {
        /// What was being done.
        context: String,
        /// What went wrong.
        reason: String,
    },
    /// The handle was closed or its socket thread is gone.
    #[error("the bus handle is closed")]
    Closed,
    /// An argument was invalid (e.g. an empty recipient name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Why a message would be refused by every consumer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsendable {
    /// The encoded body is larger than `max_message_size`.
    #[error("the body is {size} bytes, over max_message_size ({limit} bytes)")]
    TooLarge {
        /// The encoded body's size.
        size: usize,
        /// `max_message_size`.
        limit: usize,
    },
    /// The body nests deeper than receivers parse.
    #[error("the body nests more than {limit} levels deep (the message envelope is one level)")]
    TooDeep {
        /// The bound ([`gilmsg_proto::canonical::MAX_DEPTH`]).
        limit: usize,
    },
    /// The topic holds a control character, which receivers refuse.
    #[error("the topic holds a control character")]
    UnsafeTopic,
    /// `msg` fails the JSON Schema the configuration gives its topic
    /// (`[schemas]`): consumers that check it would refuse it. Names the
    /// schema, the failing place (a JSON pointer into `msg`) and the keyword.
    #[error(transparent)]
    Schema(gilmsg_proto::SchemaViolation),
}

impl From<gilmsg_proto::envelope::BuildError> for Error {
    fn from(e: gilmsg_proto::envelope::BuildError) -> Self {
        use gilmsg_proto::canonical::CanonicalError;
        use gilmsg_proto::envelope::BuildError;
        match e {
            BuildError::Canonical(CanonicalError::TooDeep { limit }) => {
                Error::Unsendable(Unsendable::TooDeep { limit })
            }
            BuildError::UnsafeField("topic") => Error::Unsendable(Unsendable::UnsafeTopic),
            BuildError::Sign(e) => Error::Sign(e),
            other => Error::Message(other),
        }
    }
}

impl Error {
    /// The timeout details, if this is a timeout.
    pub fn as_timeout(&self) -> Option<&TimeoutError> {
        match self {
            Error::Timeout(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn os(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn socket(context: impl Into<String>, source: zmq::Error) -> Self {
        Error::Socket {
            context: context.into(),
            source,
        }
    }
}

/// An acknowledged publish that did not hear from every recipient in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutError {
    /// The message's id.
    pub msg_id: String,
    /// Its full topic.
    pub topic: String,
    /// Recipients that did not ACK, in the order they were named.
    pub missing: Vec<String>,
    /// Recipients that did, with when.
    pub acked: Vec<AckRecord>,
    /// How many times the message was sent (0: no subscriber ever appeared).
    pub sends: u32,
    /// The ACK timeout that expired.
    pub waited: Duration,
    /// On AMQP, whether the broker confirmed the message and routed it to
    /// a queue (where it waits for the missing recipients) or never
    /// confirmed it; `None` on ZeroMQ.
    pub broker: Option<crate::amqp::BrokerVerdict>,
}

impl TimeoutError {
    /// Names of the recipients that acked.
    pub fn acked_names(&self) -> Vec<&str> {
        self.acked.iter().map(|r| r.recipient.as_str()).collect()
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no ACK within {} from {} (acked: {}) for {} on {}",
            humanize(self.waited),
            self.missing.join(", "),
            if self.acked.is_empty() {
                "none".to_string()
            } else {
                self.acked_names().join(", ")
            },
            self.msg_id,
            self.topic,
        )?;
        if self.sends == 0 {
            write!(f, "; never sent: no subscriber appeared")?;
        }
        if let Some(broker) = self.broker {
            write!(f, "; {broker}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimeoutError {}

pub(crate) fn humanize(d: Duration) -> String {
    humantime_like(d)
}

/// `1.5s`, `250ms`: short, stable, no dependency.
fn humantime_like(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{}ms", trim(ms))
    } else {
        format!("{}s", trim(ms / 1000.0))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_failure_is_not_a_message_error() {
        use gilmsg_proto::envelope::BuildError;
        let e = Error::from(BuildError::Sign(gilmsg_proto::SignError("HSM gone".into())));
        assert!(matches!(e, Error::Sign(_)), "{e:?}");
        assert_eq!(e.to_string(), "signing failed: HSM gone");
    }

    #[test]
    fn timeout_message_names_missing_and_acked() {
        let t = TimeoutError {
            msg_id: "2026-x".into(),
            topic: "t".into(),
            missing: vec!["d".into()],
            acked: vec![AckRecord {
                recipient: "a".into(),
                after: Duration::ZERO,
                digest_checked: true,
            }],
            sends: 3,
            waited: Duration::from_millis(1500),
            broker: None,
        };
        assert_eq!(
            t.to_string(),
            "no ACK within 1.5s from d (acked: a) for 2026-x on t"
        );
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }
}
