//! Keys a file has that gilmsg does not read: which of them look like typos
//! of a key it does read, and what to say about them.
//!
//! The list of keys gilmsg reads is not written down here: the parser
//! records every key it asks for (see `parse.rs`), so a key added to the
//! parser is known here at once. What *is* listed here are the keys fedmsg
//! itself defines that gilmsg accepts and does not use ([`FEDMSG_ONLY`]):
//! a fedmsg deployment's file carries them, and they are not typos.
//!
//! A misspelt key (`topic_prefx`) would otherwise be silently ignored and
//! show up much later as a timeout with no hint, so each unknown key becomes
//! an [`UnknownKey`] naming the file, the key and the closest key gilmsg
//! knows; a CLI warns with it, and `strict_config = true` (or a CLI flag)
//! turns it into an error.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::segment;

/// Keys of fedmsg's own configuration that gilmsg accepts and ignores
/// (fedmsg's `config.py` schema and defaults). Never reported.
pub const FEDMSG_ONLY: &[&str] = &[
    "io_threads",
    "timeout",
    "print_config",
    "zmq_enabled",
    "zmq_strict",
    "zmq_tcp_keepalive_cnt",
    "zmq_tcp_keepalive_idle",
    "zmq_tcp_keepalive_intvl",
    "crypto_backend",
    "crypto_validate_backends",
    "crl_cache",
    "crl_cache_expiry",
    "ca_cert_cache",
    "ca_cert_cache_expiry",
    "irc",
    "irc_color_lookup",
    "irc_default_color",
    "irc_method",
    "persistent_store",
    "logging",
    "stomp_uri",
    "stomp_user",
    "stomp_pass",
    "stomp_ssl_crt",
    "stomp_ssl_key",
    "datagrepper_url",
    "skip_last_message",
    "srv_endpoints",
    "replay_endpoints",
    "config_filename",
];

/// A top-level key of a configuration file that gilmsg does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// The file it is in.
    pub file: Option<PathBuf>,
    /// The key as written.
    pub key: String,
    /// The known key it most likely is a misspelling of, if one is close.
    pub closest: Option<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "config {}: ", p.display())?,
            None => f.write_str("config: ")?,
        }
        write!(f, "key {}: not a gilmsg key", segment(&self.key))?;
        match &self.closest {
            Some(c) => write!(f, " (did you mean {c}?)"),
            None => Ok(()),
        }
    }
}

/// Whether a file's unknown keys are all reported, or only likely typos.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// gilmsg TOML: every unknown key is reported.
    All,
    /// fedmsg JSON dumps carry plugin keys (`datanommer.enabled`, ...):
    /// only keys close to one gilmsg reads are reported.
    LikelyTypos,
}

/// The unknown keys of a file worth reporting, in the order given.
pub(crate) fn unknown_keys(
    ignored: &[String],
    known: &BTreeSet<String>,
    file: &Path,
    report: Report,
) -> Vec<UnknownKey> {
    ignored
        .iter()
        .filter(|k| !FEDMSG_ONLY.contains(&k.as_str()))
        .filter_map(|key| {
            let closest = closest(key, known);
            let keep = report == Report::All || closest.is_some();
            keep.then(|| UnknownKey {
                file: Some(file.to_path_buf()),
                key: key.clone(),
                closest,
            })
        })
        .collect()
}

/// The known key nearest to `key` by Damerau-Levenshtein distance, if it is
/// near enough to be a typo: at most two edits, or a quarter of the key.
fn closest(key: &str, known: &BTreeSet<String>) -> Option<String> {
    let candidates = known
        .iter()
        .map(String::as_str)
        .chain(FEDMSG_ONLY.iter().copied());
    let (distance, best) = candidates
        .map(|k| (strsim::damerau_levenshtein(key, k), k))
        .min()?;
    let near = distance > 0 && (distance <= 2 || distance * 4 <= key.chars().count());
    near.then(|| best.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        [
            "topic_prefix",
            "relay_inbound",
            "ack_timeout",
            "name",
            "endpoints",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn typos_find_their_key() {
        for (typo, key) in [
            ("topic_prefx", "topic_prefix"),
            ("relay_inbond", "relay_inbound"),
            ("ack_timout", "ack_timeout"),
            ("nmae", "name"),
            ("io_thread", "io_threads"),
        ] {
            assert_eq!(closest(typo, &known()).as_deref(), Some(key), "{typo}");
        }
        assert_eq!(closest("irc_stuff_entirely", &known()), None);
    }

    #[test]
    fn fedmsg_keys_and_plugins() {
        let ignored: Vec<String> = ["irc", "datanommer.enabled", "topic_prefx", "frobnicate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let file = Path::new("/c/bus.json");
        let json = unknown_keys(&ignored, &known(), file, Report::LikelyTypos);
        assert_eq!(
            json.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["topic_prefx"]
        );
        assert_eq!(
            json[0].to_string(),
            "config /c/bus.json: key topic_prefx: not a gilmsg key (did you mean topic_prefix?)"
        );
        let toml = unknown_keys(&ignored, &known(), file, Report::All);
        assert_eq!(
            toml.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["datanommer.enabled", "topic_prefx", "frobnicate"]
        );
        assert_eq!(
            toml[0].to_string(),
            "config /c/bus.json: key \"datanommer.enabled\": not a gilmsg key"
        );
    }
}
