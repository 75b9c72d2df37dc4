//! Configuration parsing on arbitrary text.
//!
//! The same input is read as gilmsg TOML and as `fedmsg-config` JSON.
//! Checked, besides "never panics" (in the parsers, in the error's
//! `Display`, and in the derived values of a config that loads):
//!
//! - a config that loads passes `Config::validate` (reading runs it);
//! - `to_toml_string` reads back to an equal config, as its doc promises
//!   (`ignored_keys` and `unknown_keys` aside).
#![no_main]

use std::path::Path;

use gilmsg_config::Config;
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "/etc/gilmsg/fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let origin = Path::new(ORIGIN);
    for result in [
        Config::from_toml_str(&text, origin),
        Config::from_fedmsg_json_str(&text, origin),
    ] {
        match result {
            Ok(config) => exercise(&config),
            Err(e) => {
                let _ = (e.to_string(), e.path(), e.key());
            }
        }
    }
});

fn exercise(config: &Config) {
    config
        .validate()
        .unwrap_or_else(|e| panic!("a config that loaded does not validate: {e}"));
    let _ = (
        config.hostname(),
        config.certname("fuzz"),
        config.ca_cert_path(),
        config.crl_path(),
        config.subscribe_endpoints(),
        config.own_endpoints(),
        config.topic_scheme().ack_topic(),
        config.topic_scheme().topic("mod", "t"),
    );
    let toml = config.to_toml_string();
    let mut back = Config::from_toml_str(&toml, Path::new(ORIGIN))
        .unwrap_or_else(|e| panic!("to_toml_string output does not load ({e}):\n{toml}"));
    back.ignored_keys.clone_from(&config.ignored_keys);
    back.unknown_keys.clone_from(&config.unknown_keys);
    assert_eq!(
        &back, config,
        "to_toml_string round trip changed the config:\n{toml}"
    );
}
