//! Turning a [`Config`] into the pieces the handles and their transports
//! need: this process's signing identity, the trust store and the
//! validators for what it receives, the re-send policy, the user name and
//! the clock.

use std::collections::HashMap;
use std::sync::Arc;

use gilmsg_config::Config;
use gilmsg_crypto::{Identity, TrustStore};
use gilmsg_proto::policy::RoutingPolicy;
use gilmsg_proto::retransmit::RetransmitPolicy;
use gilmsg_proto::{Signer, Validator};

use crate::error::Result;

/// The trust store from the config (CA file and CRL), loaded once per
/// handle and shared by its validator and the check of its own identity.
pub(crate) fn load_trust(config: &Config) -> Result<Arc<TrustStore>> {
    let crl = config.crl_path();
    Ok(Arc::new(TrustStore::load(
        &config.ca_cert_path(),
        crl.as_deref(),
    )?))
}

/// [`load_trust`] when nothing is verified and only the own identity would
/// be checked: a missing CA file gives `None`.
pub(crate) fn load_trust_if_any(config: &Config) -> Result<Option<Arc<TrustStore>>> {
    let ca = config.ca_cert_path();
    if !ca.exists() {
        tracing::debug!(ca = %ca.display(), "no CA file; own certificate not checked");
        return Ok(None);
    }
    load_trust(config).map(Some)
}

/// Loads the identity named `certname` from `ssldir`, and refuses it if its
/// peers would: a revoked, expired or foreign certificate (or one whose CA
/// has no CRL, when a CRL is configured) would have everything this process
/// signs dropped, so it is an error at start, naming the certificate file.
/// Without a trust store there is nothing to check against.
pub(crate) fn load_signer(
    config: &Config,
    certname: &str,
    trust: Option<&TrustStore>,
) -> Result<Arc<dyn Signer>> {
    let identity = Identity::load(&config.ssldir, certname)?;
    if let Some(store) = trust {
        let standing = store.check_identity(&identity)?;
        for warning in &standing.warnings {
            tracing::warn!(certname, "{warning}");
        }
    }
    Ok(Arc::new(identity))
}

/// The trust store alone, for ACKs: the routing policy decides who may
/// publish on a topic, while an ACK is authorised by the recipient list of
/// the publish it answers.
pub(crate) fn ack_validator(trust: Arc<TrustStore>) -> Arc<Validator> {
    Arc::new(Validator::new(trust, RoutingPolicy::default()))
}

/// The trust store and routing policy from the config.
pub(crate) fn validator(config: &Config, trust: Arc<TrustStore>) -> Arc<Validator> {
    let rules: HashMap<String, Vec<String>> = config
        .routing_policy
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let policy = RoutingPolicy::new(rules, config.routing_nitpicky);
    Arc::new(Validator::new(trust, policy))
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
