//! Reading whole configuration files: the TOML and fedmsg JSON test vectors
//! in `tests/data/`, and the errors a person editing a file will meet.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gilmsg_config::{Config, ConfigError};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn full_toml_example() {
    let path = data("full.toml");
    let c = Config::from_path(&path).unwrap();
    let dir = path.parent().unwrap();

    assert_eq!(c.source(), Some(path.as_path()));
    assert_eq!(c.topic_prefix, "org.example");
    assert_eq!(c.environment, "stg");
    assert_eq!(c.name.as_deref(), Some("bodhi.app01"));
    assert_eq!(c.hostname(), "app01");
    assert!(!c.active);
    assert_eq!(
        c.relay_inbound,
        strings(&[
            "tcp://relay.example.org:2001",
            "tcp://relay.example.org:2002"
        ])
    );
    assert!(!c.sign_messages);
    assert!(c.validate_signatures);
    assert_eq!(c.ssldir, dir.join("pki"));
    assert_eq!(c.ca_cert_path(), dir.join("pki/root-ca.crt"));
    assert_eq!(
        c.crl_path(),
        Some(PathBuf::from("/var/cache/fedmsg/crl.pem"))
    );
    assert_eq!(c.cert_prefix, "bodhi");
    assert_eq!(c.certname("anything"), "bodhi-app01.example.org");
    assert_eq!(c.certnames.len(), 2);
    assert!(c.routing_nitpicky);
    assert_eq!(
        c.routing_policy["org.example.stg.bodhi.update.request"],
        strings(&["bodhi-app01.example.org"])
    );

    assert_eq!(c.ack_timeout, Duration::from_secs(3));
    assert_eq!(c.resend_initial, Duration::from_millis(100));
    assert_eq!(c.resend_min, Duration::from_millis(20));
    assert_eq!(c.resend_max, Duration::from_secs(2));
    assert_eq!(c.max_message_size, 65536);
    assert_eq!(c.dedupe_capacity, 1024);
    assert_eq!(c.max_message_age, Duration::from_secs(300));
    assert_eq!(c.clock_skew, Duration::from_secs(30));
    assert!(c.require_ack_digest);
    assert_eq!(c.high_water_mark, 1000);
    assert_eq!(c.zmq_linger, Duration::from_millis(500));
    assert_eq!(c.zmq_reconnect_ivl, Duration::from_millis(250));
    assert_eq!(c.zmq_reconnect_ivl_max, Duration::from_secs(4));
    assert!(c.zmq_tcp_keepalive);
    assert_eq!(c.post_init_sleep, Some(Duration::from_millis(500)));
    assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);

    // A single string and a list are both accepted for endpoints.
    assert_eq!(
        c.endpoints["relay_outbound"],
        strings(&["tcp://relay.example.org:4001"])
    );
    assert_eq!(
        c.own_endpoints().unwrap(),
        strings(&[
            "tcp://app01.example.org:3000",
            "tcp://app01.example.org:3001"
        ])
    );
    assert_eq!(
        c.subscribe_endpoints(),
        strings(&[
            "tcp://app01.example.org:3000",
            "tcp://app01.example.org:3001",
            "ipc:///run/gilmsg/demo.sock",
            "inproc://demo",
            "tcp://relay.example.org:4001",
        ])
    );
    assert_eq!(c.topic_scheme().ack_topic(), "org.example.stg.gilmsg.ack");
}

#[test]
fn toml_defaults_are_secure() {
    let c = Config::from_toml_str("", Path::new("/etc/gilmsg/gilmsg.toml")).unwrap();
    let d = Config::default();
    assert!(c.sign_messages && c.validate_signatures);
    assert_eq!(c.topic_prefix, "org.fedoraproject");
    assert_eq!(c.environment, "dev");
    assert_eq!(c.ssldir, PathBuf::from("/etc/pki/fedmsg"));
    assert_eq!(c.ca_cert_path(), PathBuf::from("/etc/pki/fedmsg/ca.crt"));
    assert_eq!(c.ack_timeout, Duration::from_secs(5));
    assert_eq!(c.resend_initial, Duration::from_millis(50));
    assert_eq!(c.resend_min, Duration::from_millis(25));
    assert_eq!(c.resend_max, Duration::from_secs(1));
    assert_eq!(c.max_message_size, 1_048_576);
    assert_eq!(c.dedupe_capacity, 32768);
    assert_eq!(c.zmq_linger, Duration::from_secs(1));
    assert_eq!(c.zmq_reconnect_ivl, Duration::from_millis(100));
    assert_eq!(c.zmq_reconnect_ivl_max, Duration::from_secs(2));
    assert_eq!(c.cert_prefix, "shell");
    // Only the source differs from Config::default().
    assert_eq!(c.ack_timeout, d.ack_timeout);
    assert_eq!(d.source(), None);
}

#[test]
fn fedmsg_json_dump() {
    let path = data("fedmsg-config.json");
    let c = Config::from_path(&path).unwrap();

    assert_eq!(c.topic_prefix, "org.fedoraproject");
    assert_eq!(c.environment, "stg");
    assert!(c.sign_messages && c.validate_signatures);
    assert_eq!(c.ssldir, PathBuf::from("/etc/pki/fedmsg"));
    assert_eq!(c.ca_cert_path(), PathBuf::from("/etc/pki/fedmsg/ca.crt"));
    assert_eq!(
        c.endpoints["bodhi.app01"],
        strings(&[
            "tcp://app01.stg.phx2.fedoraproject.org:3000",
            "tcp://app01.stg.phx2.fedoraproject.org:3001"
        ])
    );
    // fedmsg allows a bare string; it becomes a one-element list.
    assert_eq!(
        c.endpoints["pkgdb.pkgdb01"],
        strings(&["tcp://pkgdb01.stg.phx2.fedoraproject.org:3002"])
    );
    assert_eq!(
        c.relay_inbound,
        strings(&["tcp://busgateway01.stg.phx2.fedoraproject.org:9941"])
    );
    assert_eq!(c.subscribe_endpoints().len(), 4);
    assert_eq!(c.certnames.len(), 2);
    assert!(!c.routing_nitpicky);
    assert_eq!(c.routing_policy.len(), 1);
    assert_eq!(c.high_water_mark, 0);
    // fedmsg writes zmq durations as integer milliseconds.
    assert_eq!(c.zmq_linger, Duration::from_secs(1));
    assert_eq!(c.zmq_reconnect_ivl, Duration::from_millis(100));
    assert_eq!(c.zmq_reconnect_ivl_max, Duration::from_secs(1));
    assert!(c.zmq_tcp_keepalive);
    assert_eq!(c.post_init_sleep, Some(Duration::from_millis(500)));
    // gilmsg keys the dump lacks keep gilmsg's defaults.
    assert_eq!(c.ack_timeout, Duration::from_secs(5));

    let expected_ignored = [
        "ca_cert_cache",
        "ca_cert_cache_expiry",
        "crl_cache",
        "crl_cache_expiry",
        "crypto_backend",
        "crypto_validate_backends",
        "fedmsg.consumers.gateway.port",
        "io_threads",
        "irc",
        "logging",
        "persistent_store",
        "timeout",
        "topic_prefix_re",
        "zmq_enabled",
        "zmq_strict",
        "zmq_tcp_keepalive_cnt",
        "zmq_tcp_keepalive_idle",
        "zmq_tcp_keepalive_intvl",
    ];
    assert_eq!(c.ignored_keys, strings(&expected_ignored));
}

#[test]
fn fedmsg_json_leaves_signing_to_fedmsg_defaults() {
    let text = fs::read_to_string(data("fedmsg-config.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let obj = doc.as_object_mut().unwrap();
    obj.remove("sign_messages");
    obj.remove("validate_signatures");
    let origin = Path::new("/etc/gilmsg/bus.json");
    let c = Config::from_fedmsg_json_str(&doc.to_string(), origin).unwrap();
    assert!(!c.sign_messages, "fedmsg's default is False");
    assert!(!c.validate_signatures, "fedmsg's default is False");

    // null is fedmsg's None: left out.
    let c = Config::from_fedmsg_json_str(r#"{"sign_messages": null}"#, origin).unwrap();
    assert!(!c.sign_messages);
    // The same omission in TOML keeps gilmsg's secure defaults.
    let c = Config::from_toml_str("", Path::new("/etc/gilmsg/bus.toml")).unwrap();
    assert!(c.sign_messages && c.validate_signatures);
}

#[test]
fn json_is_sniffed_when_extension_is_neither() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.conf");
    fs::write(&path, "\n  {\"environment\": \"prod\"}\n").unwrap();
    let c = Config::from_path(&path).unwrap();
    assert_eq!(c.environment, "prod");
    assert!(!c.sign_messages, "read as fedmsg JSON, so fedmsg defaults");
}

#[test]
fn endpoints_string_or_list() {
    let origin = Path::new("/cfg/bus.toml");
    let c = Config::from_toml_str(
        r#"
        relay_inbound = "tcp://127.0.0.1:2001"
        [endpoints]
        one = "tcp://127.0.0.1:4001"
        many = ["tcp://127.0.0.1:4002", "tcp://127.0.0.1:4003"]
        "#,
        origin,
    )
    .unwrap();
    assert_eq!(c.endpoints["one"], strings(&["tcp://127.0.0.1:4001"]));
    assert_eq!(
        c.endpoints["many"],
        strings(&["tcp://127.0.0.1:4002", "tcp://127.0.0.1:4003"])
    );
    assert_eq!(c.relay_inbound, strings(&["tcp://127.0.0.1:2001"]));

    let e = Config::from_toml_str("[endpoints]\nx = 5", origin).unwrap_err();
    assert_eq!(e.key(), Some("endpoints.x"), "{e}");
}

#[test]
fn duration_forms() {
    let c = Config::from_fedmsg_json_str(
        r#"{"ack_timeout": "1m 30s", "resend_max": 1.5, "resend_initial": 1,
            "zmq_linger": 250, "zmq_reconnect_ivl": "2s"}"#,
        Path::new("/cfg/bus.json"),
    )
    .unwrap();
    assert_eq!(c.ack_timeout, Duration::from_secs(90));
    assert_eq!(c.resend_max, Duration::from_millis(1500));
    assert_eq!(c.resend_initial, Duration::from_secs(1));
    assert_eq!(c.zmq_linger, Duration::from_millis(250));
    assert_eq!(c.zmq_reconnect_ivl, Duration::from_secs(2));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("demo");
    fs::create_dir_all(sub.join("pki")).unwrap();
    fs::write(sub.join("pki/crl.pem"), "").unwrap();
    let path = sub.join("bus.toml");
    fs::write(
        &path,
        "ssldir = \"pki\"\nca_cert_location = \"../ca.pem\"\n",
    )
    .unwrap();

    let c = Config::from_path(&path).unwrap();
    assert_eq!(c.ssldir, sub.join("pki"));
    assert_eq!(c.ca_cert_path(), sub.join("../ca.pem"));
    // Default CRL is found inside the resolved ssldir.
    assert_eq!(c.crl_path(), Some(sub.join("pki/crl.pem")));

    // Absolute paths are left alone.
    let c = Config::from_toml_str("ssldir = \"/srv/pki\"", &path).unwrap();
    assert_eq!(c.ssldir, PathBuf::from("/srv/pki"));
}

#[test]
fn url_for_ca_cert_is_refused_naming_the_key() {
    let origin = Path::new("/etc/gilmsg/bus.json");
    let e = Config::from_fedmsg_json_str(
        r#"{"ca_cert_location": "https://fedoraproject.org/fedmsg/ca.crt"}"#,
        origin,
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("ca_cert_location"));
    assert_eq!(e.path(), Some(origin));
    let msg = e.to_string();
    assert!(msg.starts_with("config /etc/gilmsg/bus.json: key ca_cert_location: "));
    assert!(msg.contains("download"), "{msg}");

    let e = Config::from_toml_str(
        "crl_location = \"http://example.org/crl.pem\"",
        Path::new("/x.toml"),
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("crl_location"));
}

#[test]
fn bad_endpoint_names_its_key_path() {
    let origin = Path::new("/path/bus.toml");
    let e = Config::from_toml_str(
        "[endpoints]\nrelay_outbound = [\"tcp://127.0.0.1:4001\", \"foo\"]",
        origin,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config /path/bus.toml: key endpoints.relay_outbound[1]: not a ZeroMQ endpoint: \"foo\" \
         (expected tcp://host:port, ipc://path or inproc://name)"
    );

    // A single string is reported at the key itself.
    let e = Config::from_toml_str("relay_inbound = \"tcp://nowhere\"", origin).unwrap_err();
    assert_eq!(e.key(), Some("relay_inbound"));
    let e = Config::from_fedmsg_json_str(
        r#"{"endpoints": {"bodhi.app01": ["tcp://a:1", "tcp://b"]}}"#,
        Path::new("/x.json"),
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("endpoints.\"bodhi.app01\"[1]"));
}

#[test]
fn syntax_errors_name_file_and_line() {
    let origin = Path::new("/path/bus.toml");
    let e = Config::from_toml_str("environment = \"stg\"\n\nname = = 3\n", origin).unwrap_err();
    match &e {
        ConfigError::Syntax { path, line, .. } => {
            assert_eq!(path, origin);
            assert_eq!(*line, Some(3));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("config /path/bus.toml: syntax error at line 3, column "),
        "{e}"
    );

    let origin = Path::new("/path/bus.json");
    let e = Config::from_fedmsg_json_str("{\n  \"a\": 1,\n  \"b\" 2\n}", origin).unwrap_err();
    match &e {
        ConfigError::Syntax { path, line, .. } => {
            assert_eq!(path, origin);
            assert_eq!(*line, Some(3));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !e.to_string().contains(" at line 3 column"),
        "no duplicate: {e}"
    );

    let e = Config::from_fedmsg_json_str("[1, 2]", origin).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
}

#[test]
fn missing_explicit_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = Config::load(Some(&missing)).unwrap_err();
    match &e {
        ConfigError::NotFound { looked_in } => {
            assert_eq!(looked_in, std::slice::from_ref(&missing))
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

#[test]
fn type_errors_name_key_and_file() {
    let e = Config::from_toml_str("active = \"yes\"", Path::new("/p/bus.toml")).unwrap_err();
    assert_eq!(e.key(), Some("active"));
    assert!(
        e.to_string()
            .starts_with("config /p/bus.toml: key active: invalid type"),
        "{e}"
    );
}

#[test]
fn cross_key_rules_apply_when_reading() {
    let origin = Path::new("/p/bus.toml");
    let e = Config::from_toml_str("active = true", origin).unwrap_err();
    assert_eq!(e.key(), Some("relay_inbound"));
    assert_eq!(e.path(), Some(origin));
    let e = Config::from_toml_str("name = \"svc.host\"", origin).unwrap_err();
    assert_eq!(e.key(), Some("name"));
    let e = Config::from_toml_str("resend_min = \"1s\"", origin).unwrap_err();
    assert_eq!(e.key(), Some("resend_min"));
    let e = Config::from_toml_str("max_message_size = 0", origin).unwrap_err();
    assert_eq!(e.key(), Some("max_message_size"));
    let e = Config::from_toml_str("environment = \"a.b\"", origin).unwrap_err();
    assert_eq!(e.key(), Some("environment"));
}

#[test]
fn toml_round_trip() {
    let path = data("full.toml");
    let original = Config::from_path(&path).unwrap();
    let text = original.to_toml_string();
    // Same origin, so the source matches; paths were made absolute by the
    // first read, so nothing is re-resolved.
    let back = Config::from_toml_str(&text, &path).unwrap();
    assert_eq!(back, original, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written.toml");
    // A config built in code writes out and reads back too.
    let mut c = Config::default();
    c.name = Some("demo.localhost".into());
    c.endpoints
        .insert("demo.localhost".into(), strings(&["tcp://127.0.0.1:5555"]));
    c.resend_max = Duration::from_millis(1500);
    c.validate().unwrap();
    let back = Config::from_toml_str(&c.to_toml_string(), &path).unwrap();
    assert_eq!(back.resend_max, Duration::from_millis(1500));
    assert_eq!(back.own_endpoints(), c.own_endpoints());
}

/// The real output of `HOME=<empty> fedmsg-config` (fedmsg 1.1.7) for a
/// single `fedmsg.d/demo.py`, keys in the order Python printed them.
#[test]
fn real_fedmsg_config_output() {
    let path = data("fedmsg-config-demo.json");
    let mut c = Config::from_path(&path).unwrap();

    assert_eq!(c.topic_prefix, "org.example");
    assert_eq!(c.environment, "dev");
    assert!(c.sign_messages && c.validate_signatures);
    assert!(!c.active);
    assert_eq!(c.name, None);
    assert_eq!(c.ssldir, PathBuf::from("/tmp/gilmsg-exp/pki"));
    assert_eq!(
        c.endpoints["relay_outbound"],
        strings(&["tcp://127.0.0.1:24002"])
    );
    assert_eq!(c.relay_inbound, strings(&["tcp://127.0.0.1:24001"]));
    assert_eq!(c.post_init_sleep, Some(Duration::from_millis(500)));
    assert_eq!(c.zmq_linger, Duration::from_secs(1));
    assert_eq!(c.high_water_mark, 0);
    assert!(c.routing_policy.is_empty() && !c.routing_nitpicky);

    // The dump has no ca_cert_location / crl_location: fedmsg would fetch
    // Fedora's URLs; we use ssldir/ca.crt and ssldir/crl.pem (if present).
    assert_eq!(c.ca_cert_location, None);
    assert_eq!(c.crl_location, None);
    assert!(!c.crl_disabled);
    assert_eq!(
        c.ca_cert_path(),
        PathBuf::from("/tmp/gilmsg-exp/pki/ca.crt")
    );

    // certnames {"shell.vm": "shell-vm"} on host "vm": the loggers (cert
    // prefix "shell", active) sign as shell-vm, as fedmsg-logger did.
    c.hostname = Some("vm".into());
    assert_eq!(c.certname("logger"), "shell-vm");
    assert_eq!(c.certname_for("logger", true), "shell-vm");
    assert_eq!(c.certname_for("gilmsg", false), "shell-vm");

    assert_eq!(
        c.ignored_keys,
        strings(&[
            "io_threads",
            "logging",
            "persistent_store",
            "print_config",
            "timeout",
            "topic_prefix_re",
        ])
    );
}

/// fedmsg: `crl_location` None or "" = no CRL check; absent = a default
/// location (Fedora's URL in fedmsg, `ssldir/crl.pem` here).
#[test]
fn fedmsg_crl_location_null_means_no_crl() {
    let dir = tempfile::tempdir().unwrap();
    let ssldir = dir.path().join("pki");
    fs::create_dir(&ssldir).unwrap();
    fs::write(ssldir.join("crl.pem"), "x").unwrap();
    let origin = dir.path().join("bus.json");
    let json = |extra: &str| {
        let text = format!(r#"{{"ssldir": {:?}{extra}}}"#, ssldir.to_str().unwrap());
        Config::from_fedmsg_json_str(&text, &origin).unwrap()
    };

    let c = json(r#", "crl_location": null"#);
    assert!(c.crl_disabled);
    assert_eq!(
        c.crl_path(),
        None,
        "null must not fall back to ssldir/crl.pem"
    );
    assert!(!c.ignored_keys.contains(&"crl_location".to_string()));

    let c = json(r#", "crl_location": """#);
    assert!(c.crl_disabled);
    assert_eq!(c.crl_path(), None);

    let c = json("");
    assert!(!c.crl_disabled);
    assert_eq!(c.crl_path(), Some(ssldir.join("crl.pem")));

    let c = json(r#", "crl_location": "/etc/x/crl.pem""#);
    assert_eq!(c.crl_path(), Some(PathBuf::from("/etc/x/crl.pem")));

    // TOML has no null: an empty string says the same, and it round-trips.
    let toml_origin = dir.path().join("bus.toml");
    let text = format!(
        "ssldir = {:?}\ncrl_location = \"\"\n",
        ssldir.to_str().unwrap()
    );
    let c = Config::from_toml_str(&text, &toml_origin).unwrap();
    assert!(c.crl_disabled);
    assert_eq!(c.crl_path(), None);
    let back = Config::from_toml_str(&c.to_toml_string(), &toml_origin).unwrap();
    assert_eq!(back, c);
}

#[test]
fn empty_ca_cert_location_is_refused_naming_the_key() {
    let origin = Path::new("/etc/gilmsg/bus.json");
    let e = Config::from_fedmsg_json_str(r#"{"ca_cert_location": ""}"#, origin).unwrap_err();
    assert_eq!(e.key(), Some("ca_cert_location"));
    assert!(e.to_string().contains("ssldir"), "{e}");
    // null is fedmsg's None: left out, so ssldir/ca.crt.
    let c = Config::from_fedmsg_json_str(r#"{"ca_cert_location": null}"#, origin).unwrap();
    assert_eq!(c.ca_cert_path(), PathBuf::from("/etc/pki/fedmsg/ca.crt"));
}

/// fedmsg.publish overwrites `certname` with the certnames lookup, so a
/// fedmsg dump's `certname` must not change who we sign as; in TOML it is
/// gilmsg's explicit choice.
#[test]
fn certname_key_is_fedmsg_ignored_but_gilmsg_explicit() {
    let json = r#"{"certname": "other", "certnames": {"shell.vm": "shell-vm"}, "hostname": "vm"}"#;
    let c = Config::from_fedmsg_json_str(json, Path::new("/etc/gilmsg/bus.json")).unwrap();
    assert_eq!(c.certname, None);
    assert!(c.ignored_keys.contains(&"certname".to_string()));
    assert_eq!(c.certname("logger"), "shell-vm");

    let toml =
        "certname = \"other\"\nhostname = \"vm\"\n[certnames]\n\"shell.vm\" = \"shell-vm\"\n";
    let c = Config::from_toml_str(toml, Path::new("/etc/gilmsg/bus.toml")).unwrap();
    assert_eq!(c.certname("logger"), "other");
}

#[test]
fn misspelt_keys_name_the_closest_known_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.toml");
    fs::write(
        &path,
        "topic_prefx = \"org.x\"\nrelay_inbond = \"tcp://a:1\"\nack_timout = 3\nio_threads = 1\n",
    )
    .unwrap();
    let c = Config::from_path(&path).unwrap();
    let found: Vec<(String, Option<String>)> = c
        .unknown_keys
        .iter()
        .map(|u| (u.key.clone(), u.closest.clone()))
        .collect();
    // fedmsg's own io_threads is accepted silently.
    assert_eq!(
        found,
        [
            ("ack_timout".to_string(), Some("ack_timeout".to_string())),
            (
                "relay_inbond".to_string(),
                Some("relay_inbound".to_string())
            ),
            ("topic_prefx".to_string(), Some("topic_prefix".to_string())),
        ]
    );
    let text = c.unknown_keys[2].to_string();
    assert_eq!(
        text,
        format!(
            "config {}: key topic_prefx: not a gilmsg key (did you mean topic_prefix?)",
            path.display()
        )
    );
    // Strict: the same finding is an error naming file, key and suggestion.
    let e = c.check_strict().unwrap_err();
    assert_eq!(e.key(), Some("ack_timout"));
    assert!(e.to_string().contains("did you mean ack_timeout?"), "{e}");
    fs::write(&path, "strict_config = true\ntopic_prefx = \"org.x\"\n").unwrap();
    let e = Config::from_path(&path).unwrap_err();
    assert_eq!(e.key(), Some("topic_prefx"));
    assert_eq!(e.path(), Some(path.as_path()));
}

#[test]
fn fedmsg_json_reports_only_likely_typos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.json");
    fs::write(
        &path,
        r#"{"irc": [], "datanommer.enabled": true, "topic_prefx": "org.x", "endpoints": {}}"#,
    )
    .unwrap();
    let c = Config::from_path(&path).unwrap();
    let keys: Vec<&str> = c.unknown_keys.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, ["topic_prefx"]);
}

#[test]
fn relative_ipc_endpoints_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.toml");
    fs::write(
        &path,
        "relay_inbound = \"ipc://relay-in.sock\"\n[endpoints]\nrelay_outbound = [\"ipc://run/out.sock\", \"ipc:///abs.sock\", \"ipc://@abstract\"]\n",
    )
    .unwrap();
    let c = Config::from_path(&path).unwrap();
    assert_eq!(
        c.relay_inbound,
        [format!(
            "ipc://{}",
            dir.path().join("relay-in.sock").display()
        )]
    );
    assert_eq!(
        c.endpoints["relay_outbound"],
        [
            format!("ipc://{}", dir.path().join("run/out.sock").display()),
            "ipc:///abs.sock".to_string(),
            "ipc://@abstract".to_string(),
        ]
    );
}

#[test]
fn bad_numbers_get_one_wording() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.toml");
    let mut reasons = Vec::new();
    for value in ["0", "-1", "1.5", "\"lots\"", "true"] {
        fs::write(&path, format!("max_message_size = {value}\n")).unwrap();
        let e = Config::from_path(&path).unwrap_err();
        assert_eq!(e.key(), Some("max_message_size"), "{value}: {e}");
        let text = e.to_string();
        let reason = text
            .split(": key max_message_size: ")
            .nth(1)
            .unwrap()
            .to_owned();
        assert!(
            reason.starts_with("must be a whole number from 1 to "),
            "{value}: {reason}"
        );
        reasons.push(reason);
    }
    // The same rule from code (validate) says the same as from the file.
    let mut c = Config::default();
    c.max_message_size = 0;
    let e = c.validate().unwrap_err();
    assert!(
        e.to_string().ends_with(&reasons[0]),
        "{e} vs {}",
        reasons[0]
    );
    for value in ["-1", "\"soon\"", "\"5\"", "true"] {
        fs::write(&path, format!("ack_timeout = {value}\n")).unwrap();
        let e = Config::from_path(&path).unwrap_err();
        assert!(
            e.to_string()
                .contains("key ack_timeout: must be a duration such as"),
            "{value}: {e}"
        );
    }
}

/// fedora-messaging's own `config.toml.example`, byte for byte: it loads as
/// it is, selects AMQP, and keeps fedora-messaging's meanings and defaults.
#[test]
fn fedora_messaging_example_loads_as_it_is() {
    let path = data("fedora-messaging.toml");
    let c = Config::from_path(&path).unwrap();
    let a = c.amqp.as_ref().expect("amqp_url selects AMQP");
    assert_eq!(a.url, "amqp://");
    assert_eq!(a.publish_exchange, "amq.topic");
    assert_eq!(c.topic_prefix, "");
    assert_eq!(c.topic_scheme().topic("bodhi", "update"), "bodhi.update");
    assert_eq!(c.topic_scheme().ack_topic(), "gilmsg.ack");
    assert_eq!(
        a.tls.ca_cert.as_deref(),
        Some(Path::new("/etc/fedora-messaging/cacert.pem"))
    );
    assert_eq!(
        a.tls.certfile.as_deref(),
        Some(Path::new("/etc/fedora-messaging/fedora-cert.pem"))
    );
    assert_eq!(a.client_properties["app"], "Example Application");
    assert_eq!(a.exchanges["amq.topic"].kind, "topic");
    assert!(a.exchanges["amq.topic"].durable);
    assert!(a.queues["my_queue"].durable);
    assert!(!a.queues["my_queue"].exclusive);
    assert_eq!(a.bindings.len(), 1);
    assert_eq!(a.bindings[0].queue, "my_queue");
    assert_eq!(a.bindings[0].routing_keys, strings(&["#"]));
    assert_eq!((a.prefetch_count, a.prefetch_size), (25, 0));
    // callback, consumer_config, log_config: fedora-messaging's, not typos.
    assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    // Round trip through gilmsg TOML.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("c.toml");
    fs::write(&copy, c.to_toml_string()).unwrap();
    let back = Config::from_path(&copy).unwrap();
    assert_eq!(back.amqp, c.amqp);
    assert_eq!(back.topic_scheme(), c.topic_scheme());
}

#[test]
fn amqp_defaults_and_the_environment() {
    let origin = Path::new("/etc/gilmsg/amqp.toml");
    let c = Config::from_toml_str(
        "amqp_url = \"amqps://u:pw@broker/%2f?connection_attempts=3&retry_delay=5\"\n",
        origin,
    )
    .unwrap();
    let a = c.amqp.as_ref().unwrap();
    assert_eq!(a.prefetch_count, 10);
    assert_eq!(a.exchanges.keys().collect::<Vec<_>>(), ["amq.topic"]);
    assert!(a.queues.is_empty() && a.bindings.is_empty());
    assert!(a.uses_tls());
    // gilmsg's secure defaults stay on beside fedora-messaging's keys.
    assert!(c.sign_messages && c.validate_signatures);
    let c = Config::from_toml_str(
        "amqp_url = \"amqp://\"\ntopic_prefix = \"org.fedoraproject\"\nenvironment = \"prod\"\n",
        origin,
    )
    .unwrap();
    assert_eq!(
        c.topic_scheme().topic("bodhi", "update"),
        "org.fedoraproject.prod.bodhi.update"
    );
    let c = Config::from_toml_str(
        "amqp_url = \"amqp://\"\ntopic_prefix = \"org.fedoraproject.prod\"\n",
        origin,
    )
    .unwrap();
    assert_eq!(
        c.topic_scheme().ack_topic(),
        "org.fedoraproject.prod.gilmsg.ack"
    );
}

#[test]
fn amqp_ignores_the_zeromq_publishing_topology() {
    // `active = true` (the tools' default) publishes through relay_inbound
    // on ZeroMQ; on AMQP everything goes to the broker, so neither an
    // empty relay_inbound nor a `name` without endpoints is an error.
    let origin = Path::new("/etc/gilmsg/amqp.toml");
    let mut c = Config::from_toml_str(
        "amqp_url = \"amqp://\"\nactive = true\nname = \"svc\"\n",
        origin,
    )
    .unwrap();
    c.validate().unwrap();
    c.active = false;
    c.validate().unwrap();
    let e = Config::from_toml_str("active = true\n", origin).unwrap_err();
    assert_eq!(e.key(), Some("relay_inbound"), "{e}");
}

#[test]
fn amqp_errors_name_the_file_and_the_key() {
    let origin = Path::new("/etc/gilmsg/amqp.toml");
    let cases = [
        ("amqp_url = \"tcp://x:1\"", "amqp_url", "not an AMQP URL"),
        ("amqp_url = \"amqp://\"\n[qos]\nprefetch_count = 0", "qos.prefetch_count", "whole number from 1"),
        ("amqp_url = \"amqp://\"\n[qos]\nprefetch_count = -1", "qos.prefetch_count", "not -1"),
        ("amqp_url = \"amqp://\"\n[qos]\nprefetch_cnt = 3", "qos.prefetch_cnt", "not a qos key"),
        ("amqp_url = \"amqp://\"\n[tls]\nca_crt = \"x\"", "tls.ca_crt", "unknown field"),
        ("amqp_url = \"amqp://\"\n[tls]\nkeyfile = \"k.pem\"", "tls.certfile", "both"),
        ("amqp_url = \"amqp://\"\n[exchanges.x]\ntype = \"tpoic\"", "exchanges.x.type", "not an exchange type"),
        ("amqp_url = \"amqp://\"\n[queues.q]\ndurable = \"yes\"", "queues.q.durable", "invalid type"),
        ("amqp_url = \"amqp://\"\n[[bindings]]\nqueue = \"nope\"\nexchange = \"amq.topic\"\nrouting_keys = [\"#\"]", "bindings[0].queue", "not a key of [queues]"),
        ("amqp_url = \"amqp://\"\n[[bindings]]\nexchange = \"amq.topic\"\nrouting_keys = []", "bindings[0].routing_keys", "no routing key"),
        ("amqp_url = \"amqp://\"\nmax_redeliveries = 5000", "max_redeliveries", "to 1000"),
        ("amqp_url = \"amqp://\"\nreconnect_max = \"0s\"", "reconnect_max", "greater than 0"),
        ("amqp_url = \"amqp://\"\npublish_priority = 300", "publish_priority", "to 255"),
    ];
    for (text, key, words) in cases {
        let e = Config::from_toml_str(text, origin).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("config /etc/gilmsg/amqp.toml: "),
            "{shown}"
        );
        assert_eq!(e.key(), Some(key), "{text}: {shown}");
        assert!(shown.contains(words), "{text}: {shown}");
    }
}

// ---------------------------------------------------------------------------
// [schemas]: topic patterns mapped to JSON Schema files.

const INVOICE_SCHEMA: &str = r#"{
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "integer"}}
}"#;

/// A directory with `bus.toml` (the given text) and `schemas/`.
fn schema_dir(toml: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("schemas")).unwrap();
    for (name, text) in files {
        fs::write(dir.path().join("schemas").join(name), text).unwrap();
    }
    let path = dir.path().join("bus.toml");
    fs::write(&path, toml).unwrap();
    (dir, path)
}

#[test]
fn schemas_are_read_relative_to_the_file_and_round_trip() {
    use gilmsg_proto::schema::{SchemaCheck, SchemaVerdict};
    let (dir, path) = schema_dir(
        r#"
topic_prefix = "org.example"
[schemas]
"org.example.prod.billing.invoice.new" = "schemas/invoice.v1.json"
"org.example.prod.billing.#" = { file = "schemas/invoice.v1.json", name = "billing.v1" }
"#,
        &[("invoice.v1.json", INVOICE_SCHEMA)],
    );
    let c = Config::from_path(&path).unwrap();
    let file = dir.path().join("schemas/invoice.v1.json");
    let entries: Vec<(&str, &Path, &str)> = c
        .schemas
        .entries()
        .map(|e| (e.pattern, e.file, e.name))
        .collect();
    assert_eq!(
        entries,
        [
            (
                "org.example.prod.billing.invoice.new",
                file.as_path(),
                "invoice.v1"
            ),
            ("org.example.prod.billing.#", file.as_path(), "billing.v1"),
        ]
    );
    assert_eq!(
        c.schemas.schema_for("org.example.prod.billing.refund"),
        Some("billing.v1")
    );
    assert!(matches!(
        c.schemas.check(
            "org.example.prod.billing.invoice.new",
            &serde_json::json!({"amount": "1"})
        ),
        SchemaVerdict::Failed(_)
    ));
    assert!(!c.unknown_keys.iter().any(|k| k.key == "schemas"));
    // Written out and read back: the same table.
    let copy = dir.path().join("copy.toml");
    fs::write(&copy, c.to_toml_string()).unwrap();
    assert_eq!(Config::from_path(&copy).unwrap().schemas, c.schemas);
    // The same from fedmsg JSON, and built in code.
    let json = dir.path().join("bus.json");
    fs::write(
        &json,
        r#"{"schemas": {"org.example.prod.billing.#": {"file": "schemas/invoice.v1.json", "name": "billing.v1"}}}"#,
    )
    .unwrap();
    let from_json = Config::from_path(&json).unwrap();
    assert_eq!(
        from_json.schemas.schema_for("org.example.prod.billing.x"),
        Some("billing.v1")
    );
    let mut built = Config::default();
    built
        .add_schema("org.example.prod.billing.#", &file, Some("billing.v1"))
        .unwrap();
    assert_eq!(built.schemas, from_json.schemas);
}

/// A `[schemas]` entry, the files beside it (name, text), the key the
/// error must name and the texts it must hold.
type BadSchemaCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

#[test]
fn bad_schema_entries_name_the_file_the_key_and_the_schema_file() {
    let cases: [BadSchemaCase; 7] = [
        (
            r#""org.example.#" = "schemas/missing.json""#,
            &[],
            r#"schemas."org.example.#""#,
            &["cannot read schema file", "schemas/missing.json"],
        ),
        (
            r#""org.example.#" = "schemas/broken.json""#,
            &[("broken.json", "{\"type\": \"object\",")],
            r#"schemas."org.example.#""#,
            &["schemas/broken.json", "is not JSON", "line 1"],
        ),
        (
            r#""org.example.#" = "schemas/bad.json""#,
            &[(
                "bad.json",
                r#"{"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"amount": {"type": "integr"}}}"#,
            )],
            r#"schemas."org.example.#""#,
            &[
                "schemas/bad.json",
                "not a valid JSON Schema",
                "at \"/properties/amount/type\"",
            ],
        ),
        (
            r#""org.example." = "schemas/ok.json""#,
            &[("ok.json", "{}")],
            r#"schemas."org.example.""#,
            &["\"org.example.#\""],
        ),
        (
            // Unquoted, the dots make nested tables.
            "org.example.billing = \"schemas/ok.json\"",
            &[("ok.json", "{}")],
            "schemas.org",
            &["must be quoted"],
        ),
        (
            r#""a.#" = { file = "schemas/ok.json", name = "bad\nname" }"#,
            &[("ok.json", "{}")],
            r#"schemas."a.#""#,
            &["control character"],
        ),
        (
            r#""a.#" = { name = "n" }"#,
            &[],
            r#"schemas."a.#""#,
            &["missing field `file`"],
        ),
    ];
    for (entry, files, key, needles) in cases {
        let (_dir, path) = schema_dir(&format!("[schemas]\n{entry}\n"), files);
        let e = Config::from_path(&path).unwrap_err();
        let shown = e.to_string();
        assert_eq!(e.path(), Some(path.as_path()), "{shown}");
        assert_eq!(e.key(), Some(key), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        for needle in needles {
            assert!(shown.contains(needle), "{needle:?} not in: {shown}");
        }
        eprintln!("{shown}");
    }
}
