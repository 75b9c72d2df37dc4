//! # gilmsg-config: what a gilmsg bus process reads at start-up
//!
//! One configuration file per process, with fedmsg's key names wherever
//! fedmsg has one, so that an existing fedmsg deployment migrates with
//! `fedmsg-config > bus.json`. Two syntaxes carry the same keys:
//!
//! - **TOML**, gilmsg's native format. Secure by default: `sign_messages`
//!   and `validate_signatures` are on unless the file turns them off.
//! - **fedmsg JSON**, as printed by Python's `fedmsg-config`. Keys the file
//!   leaves out take fedmsg's defaults where those differ from ours
//!   (signing and validation off), so the migrated bus behaves as before.
//!   `crl_location: null` turns the CRL check off, as in fedmsg. Where
//!   fedmsg would fetch Fedora's CA or CRL over HTTPS (key left out), gilmsg
//!   reads `<ssldir>/ca.crt` and `<ssldir>/crl.pem` instead.
//!
//! Unknown keys are not errors, since fedmsg configs carry many keys gilmsg
//! has no use for (`irc`, `logging`, `persistent_store`, ...); they are
//! listed in [`Config::ignored_keys`], and those that look like typos of a
//! key gilmsg reads in [`Config::unknown_keys`] with the closest known key,
//! for a CLI to warn about (an error with `strict_config = true`).
//!
//! ```
//! use gilmsg_config::Config;
//! use std::path::Path;
//!
//! let cfg = Config::from_toml_str(r#"
//!     environment = "stg"
//!     name = "bodhi.app01"
//!     [endpoints]
//!     "bodhi.app01" = "tcp://127.0.0.1:3000"
//! "#, Path::new("/etc/gilmsg/gilmsg.toml")).unwrap();
//! assert_eq!(cfg.topic_scheme().topic("bodhi", "update.request"),
//!            "org.fedoraproject.stg.bodhi.update.request");
//! assert_eq!(cfg.own_endpoints(), Some(&["tcp://127.0.0.1:3000".to_string()][..]));
//! ```
//!
//! ## Layout
//! - `config.rs`: the [`Config`] struct, its defaults, the derived values
//!   (certificate name, CA/CRL paths, topics, endpoints) and the cross-key
//!   [`Config::validate`], plus [`Config::to_toml_string`].
//! - `parse.rs`: turning a TOML or JSON document into a [`Config`], key by
//!   key, with the exact key path of anything wrong.
//! - [`check`]: the per-value rules (ZeroMQ endpoint shape, no URLs where a
//!   local path is needed, topic segments), public so a CLI can check a
//!   value given on its command line the same way.
//! - `load.rs`: files: [`Format`] choice by extension or sniffing, and the
//!   search order `explicit` -> `$GILMSG_CONFIG` -> `/etc/gilmsg/gilmsg.toml`.
//! - `schemas.rs`: [`Schemas`], the `[schemas]` table: topic patterns
//!   mapped to JSON Schema files, compiled once when the file is read.
//! - `error.rs`: [`ConfigError`], which always names the file and the key.
//! - `keys.rs`: [`UnknownKey`]: keys gilmsg does not read, matched against
//!   the ones it does (recorded by the parser) to name the likely typo.
//!
//! Test vectors (a full TOML file, a `fedmsg-config` JSON dump) live in
//! `tests/data/`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod amqp;
pub mod check;
mod config;
mod error;
mod keys;
mod load;
mod parse;
mod schemas;

pub use amqp::{AmqpConfig, AmqpTls, BindingConfig, ExchangeConfig, QueueConfig};
pub use config::{Config, Monitoring, MAX_TIMEOUT};
pub use error::ConfigError;
pub use keys::{UnknownKey, FEDMSG_ONLY};
pub use load::{Format, DEFAULT_PATH, ENV_VAR};
pub use schemas::{SchemaEntry, Schemas, TopicPattern, MAX_SCHEMA_FILE, MAX_SCHEMA_NAME};
