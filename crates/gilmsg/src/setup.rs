//! Turning a [`Config`] into the pieces the actors need: this process's
//! signing identity and the validator for what it receives.

use std::collections::HashMap;
use std::sync::Arc;

use gilmsg_config::Config;
use gilmsg_crypto::{Identity, TrustStore};
use gilmsg_proto::policy::RoutingPolicy;
use gilmsg_proto::retransmit::RetransmitPolicy;
use gilmsg_proto::{Signer, Validator};

use crate::error::Result;

/// Loads the identity named `certname` from `ssldir`, and refuses it if its
/// peers would: a revoked, expired or foreign certificate (or one whose CA
/// has no CRL, when a CRL is configured) would have everything this process
/// signs dropped, so it is an error at start, naming the certificate file.
pub(crate) fn load_signer(config: &Config, certname: &str) -> Result<Arc<dyn Signer>> {
    let identity = Identity::load(&config.ssldir, certname)?;
    let ca = config.ca_cert_path();
    // Without a CA file there is nothing to check against; a process that
    // verifies anything fails on the missing file in `load_validator`.
    if ca.exists() {
        let crl = config.crl_path();
        let store = TrustStore::load(&ca, crl.as_deref())?;
        let standing = store.check_identity(&identity)?;
        for warning in &standing.warnings {
            tracing::warn!(certname, "{warning}");
        }
    } else {
        tracing::debug!(ca = %ca.display(), "no CA file; own certificate not checked");
    }
    Ok(Arc::new(identity))
}

/// The trust store alone, for ACKs: the routing policy decides who may
/// publish on a topic, while an ACK is authorised by the recipient list of
/// the publish it answers.
pub(crate) fn load_ack_validator(config: &Config) -> Result<Arc<Validator>> {
    let crl = config.crl_path();
    let store = TrustStore::load(&config.ca_cert_path(), crl.as_deref())?;
    Ok(Arc::new(Validator::new(
        Arc::new(store),
        RoutingPolicy::default(),
    )))
}

/// The trust store and routing policy from the config.
pub(crate) fn load_validator(config: &Config) -> Result<Arc<Validator>> {
    let crl = config.crl_path();
    let store = TrustStore::load(&config.ca_cert_path(), crl.as_deref())?;
    let rules: HashMap<String, Vec<String>> = config
        .routing_policy
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let policy = RoutingPolicy::new(rules, config.routing_nitpicky);
    Ok(Arc::new(Validator::new(Arc::new(store), policy)))
}

pub(crate) fn retransmit_policy(config: &Config) -> RetransmitPolicy {
    RetransmitPolicy {
        initial_rto: config.resend_initial,
        min_rto: config.resend_min,
        max_rto: config.resend_max,
    }
}

/// The OS user, as Python's `getpass.getuser()` finds it from the environment.
pub(crate) fn username() -> String {
    ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Seconds since the epoch and the current UTC year.
pub(crate) fn now_secs_and_year() -> (i64, i32) {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp(), now.year())
}

/// The wall clock in whole seconds since the epoch, as message timestamps
/// are written.
pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
