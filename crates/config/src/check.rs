//! Rules for single values: what counts as a ZeroMQ endpoint, a local path,
//! a topic prefix, an environment name.
//!
//! They are shared by the parser (which knows the exact key path of each
//! value) and by [`Config::validate`](crate::Config::validate) (which also
//! covers configurations built in code), so that both apply the same rules.
//! Each returns the reason a value is refused, for the caller to wrap with
//! the file and key.

use std::path::Path;

/// Checks that `endpoint` looks like a ZeroMQ endpoint gilmsg can use:
/// `tcp://host:port` (port a number or `*`, host may be `*` or `[v6]`),
/// `ipc://path` or `inproc://name`.
///
/// This is a shape check to catch typos at start-up rather than at the
/// first `bind`/`connect`; ZeroMQ remains the judge of the rest (whether the
/// host resolves, whether the port is free).
pub fn endpoint(endpoint: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("not a ZeroMQ endpoint: {endpoint:?} ({why})"));
    if endpoint.chars().any(char::is_whitespace) {
        return refuse("contains whitespace");
    }
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return refuse("expected tcp://host:port, ipc://path or inproc://name");
    };
    match scheme {
        "tcp" => {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return refuse("tcp endpoints need a port: tcp://host:port");
            };
            if host.is_empty() {
                return refuse("empty host");
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return refuse("port must be a number up to 65535 or *");
            }
            Ok(())
        }
        "ipc" | "inproc" if rest.is_empty() => refuse("empty path"),
        "ipc" | "inproc" => Ok(()),
        _ => refuse("gilmsg speaks tcp, ipc and inproc"),
    }
}

/// Refuses URLs where gilmsg needs a local file.
///
/// fedmsg lets `ca_cert_location` and `crl_location` be http(s) URLs that it
/// downloads and caches; gilmsg does no network I/O at configuration time
/// (a start-up that depends on a web server is a start-up that can hang), so
/// the operator downloads the file once and points the key at it.
pub fn local_path(value: &Path) -> Result<(), String> {
    let text = value.to_string_lossy();
    let looks_like_url = text
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(is_scheme_char));
    if looks_like_url {
        return Err(format!(
            "{text:?} is a URL; gilmsg only reads local files: download it \
             (e.g. `curl -o /etc/pki/fedmsg/ca.crt {text}`) and give its path"
        ));
    }
    if text.is_empty() {
        return Err("empty path".into());
    }
    Ok(())
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// `topic_prefix` is the dotted head of every topic: non-empty, and no
/// empty segment (which would produce `org..dev.x`).
pub fn topic_prefix(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.split('.').any(str::is_empty) {
        return Err(format!("{value:?} has an empty segment"));
    }
    Ok(())
}

/// `environment` is one topic segment. fedmsg only knows dev/stg/prod, but
/// any single segment keeps topics well formed, so test buses may use
/// their own names.
pub fn environment(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.contains('.') {
        return Err(format!(
            "{value:?} contains a dot; the environment is one topic segment (dev, stg, prod, ...)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for good in [
            "tcp://127.0.0.1:4001",
            "tcp://*:4001",
            "tcp://127.0.0.1:*",
            "tcp://[::1]:4001",
            "tcp://app01.phx2.fedoraproject.org:3000",
            "ipc:///var/run/fedmsg/relay.sock",
            "inproc://bus",
        ] {
            assert_eq!(endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "foo",
            "tcp://127.0.0.1",
            "tcp://:4001",
            "tcp://host:70000",
            "tcp://host:port",
            "udp://host:1",
            "ipc://",
            "inproc://",
            "tcp://host :1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_not_paths() {
        assert!(local_path(Path::new("https://example.org/ca.crt")).is_err());
        assert!(local_path(Path::new("http://example.org/crl.pem")).is_err());
        assert!(local_path(Path::new("/etc/pki/fedmsg/ca.crt")).is_ok());
        assert!(local_path(Path::new("pki/ca.crt")).is_ok());
    }

    #[test]
    fn topic_segments() {
        assert!(environment("prod").is_ok());
        assert!(environment("my-test").is_ok());
        assert!(environment("").is_err());
        assert!(environment("a.b").is_err());
        assert!(topic_prefix("org.fedoraproject").is_ok());
        assert!(topic_prefix("org..x").is_err());
        assert!(topic_prefix("").is_err());
    }
}
