//! fedmsg's routing policy: which signers may publish on which topics.
//!
//! `routing_policy` maps a full topic to the names allowed to sign it. A
//! topic that is listed accepts only those names. A topic that is not listed
//! is accepted from any valid signer, unless `routing_nitpicky` is on, in
//! which case it is refused. Matching is on the exact topic string, as fedmsg
//! does.

use std::collections::HashMap;

/// Why the policy refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The topic is listed and the signer is not among its names.
    #[error("{signer:?} may not sign topic {topic:?}")]
    NotAllowed {
        /// The topic.
        topic: String,
        /// The signer.
        signer: String,
    },
    /// Strict mode and the topic is not listed.
    #[error("topic {0:?} is not in the routing policy (routing_nitpicky)")]
    Unlisted(String),
}

/// The topic -> allowed signers map and the strictness flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingPolicy {
    rules: HashMap<String, Vec<String>>,
    nitpicky: bool,
}

impl RoutingPolicy {
    /// A policy from `routing_policy` and `routing_nitpicky`.
    pub fn new(rules: HashMap<String, Vec<String>>, nitpicky: bool) -> Self {
        RoutingPolicy { rules, nitpicky }
    }

    /// Whether `signer` may sign `topic`.
    pub fn check(&self, topic: &str, signer: &str) -> Result<(), PolicyError> {
        match self.rules.get(topic) {
            Some(names) if names.iter().any(|n| n == signer) => Ok(()),
            Some(_) => Err(PolicyError::NotAllowed {
                topic: topic.into(),
                signer: signer.into(),
            }),
            None if self.nitpicky => Err(PolicyError::Unlisted(topic.into())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedmsg_semantics() {
        let rules = HashMap::from([("t.a".to_string(), vec!["alice".to_string()])]);
        let lax = RoutingPolicy::new(rules.clone(), false);
        assert!(lax.check("t.a", "alice").is_ok());
        assert!(matches!(
            lax.check("t.a", "bob"),
            Err(PolicyError::NotAllowed { .. })
        ));
        assert!(lax.check("t.b", "bob").is_ok());
        let strict = RoutingPolicy::new(rules, true);
        assert!(strict.check("t.a", "alice").is_ok());
        assert!(matches!(
            strict.check("t.b", "bob"),
            Err(PolicyError::Unlisted(_))
        ));
    }
}
