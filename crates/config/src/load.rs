//! Finding and reading the configuration file: which file (explicit path,
//! then `$GILMSG_CONFIG`, then `/etc/gilmsg/gilmsg.toml`) and which syntax
//! (by extension, else by sniffing the first character).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::ConfigError;

/// Environment variable naming the configuration file when no path is given.
pub const ENV_VAR: &str = "GILMSG_CONFIG";

/// Where [`Config::load`] looks last.
pub const DEFAULT_PATH: &str = "/etc/gilmsg/gilmsg.toml";

/// The two syntaxes a configuration file can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// gilmsg's native TOML.
    Toml,
    /// The JSON printed by fedmsg's `fedmsg-config`.
    FedmsgJson,
}

impl Format {
    /// The format of a file: `.json` is JSON and `.toml` is TOML; any other
    /// name is JSON if its first non-blank character is `{`, else TOML
    /// (a TOML document cannot start with `{`).
    pub fn detect(path: &Path, text: &str) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Format::FedmsgJson,
            Some("toml") => Format::Toml,
            _ if text.trim_start().starts_with('{') => Format::FedmsgJson,
            _ => Format::Toml,
        }
    }
}

impl Config {
    /// Reads the file at `path`, choosing the syntax with [`Format::detect`].
    pub fn from_path(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
        match Format::detect(path, &text) {
            Format::Toml => Config::from_toml_str(&text, path),
            Format::FedmsgJson => Config::from_fedmsg_json_str(&text, path),
        }
    }

    /// Finds and reads the configuration: `explicit` if given, else the file
    /// named by `$GILMSG_CONFIG`, else `/etc/gilmsg/gilmsg.toml`.
    ///
    /// A path given explicitly or through the environment must exist; it is
    /// not silently replaced by the next candidate, since that would run the
    /// process on a configuration the operator did not choose.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        load_from(explicit, std::env::var_os(ENV_VAR), Path::new(DEFAULT_PATH))
    }
}

/// [`Config::load`] with the environment value and default path passed in,
/// so tests do not race each other over the real process environment.
pub(crate) fn load_from(
    explicit: Option<&Path>,
    env_value: Option<OsString>,
    default: &Path,
) -> Result<Config, ConfigError> {
    let chosen = explicit_or_env(explicit, env_value);
    Config::from_path(chosen.as_deref().unwrap_or(default))
}

/// The file named by the caller or the environment; an empty variable counts
/// as unset (`GILMSG_CONFIG= cmd` is how shells unset it for one command).
fn explicit_or_env(explicit: Option<&Path>, env_value: Option<OsString>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| env_value.filter(|v| !v.is_empty()).map(PathBuf::from))
}

fn read_error(path: &Path, e: io::Error) -> ConfigError {
    if e.kind() == io::ErrorKind::NotFound {
        ConfigError::NotFound {
            looked_in: vec![path.to_path_buf()],
        }
    } else {
        ConfigError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MINIMAL: &str = "environment = \"stg\"\n";

    #[test]
    fn detect_by_extension_then_sniff() {
        assert_eq!(Format::detect(Path::new("a.json"), ""), Format::FedmsgJson);
        assert_eq!(Format::detect(Path::new("a.JSON"), ""), Format::FedmsgJson);
        assert_eq!(Format::detect(Path::new("a.toml"), "{"), Format::Toml);
        assert_eq!(
            Format::detect(Path::new("bus.conf"), "\n  {\"a\": 1}"),
            Format::FedmsgJson
        );
        assert_eq!(Format::detect(Path::new("bus"), "a = 1"), Format::Toml);
    }

    #[test]
    fn explicit_wins_over_env_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.toml");
        let env = dir.path().join("env.toml");
        fs::write(&explicit, "environment = \"explicit\"").unwrap();
        fs::write(&env, "environment = \"env\"").unwrap();
        let c = load_from(Some(&explicit), Some(env.into()), Path::new("/nope")).unwrap();
        assert_eq!(c.environment, "explicit");
        assert_eq!(c.source(), Some(explicit.as_path()));
    }

    #[test]
    fn env_is_used_without_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("env.toml");
        let default = dir.path().join("default.toml");
        fs::write(&env, "environment = \"env\"").unwrap();
        fs::write(&default, MINIMAL).unwrap();
        let c = load_from(None, Some(env.clone().into()), &default).unwrap();
        assert_eq!(c.environment, "env");
        assert_eq!(c.source(), Some(env.as_path()));
    }

    #[test]
    fn default_is_used_when_env_unset_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("default.toml");
        fs::write(&default, MINIMAL).unwrap();
        for env in [None, Some(OsString::new())] {
            let c = load_from(None, env, &default).unwrap();
            assert_eq!(c.environment, "stg");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let default = dir.path().join("default.toml");
        // Exists, but must not be used in place of a missing chosen file.
        fs::write(&default, MINIMAL).unwrap();
        for (explicit, env) in [
            (Some(missing.as_path()), None),
            (None, Some(missing.clone().into_os_string())),
        ] {
            let e = load_from(explicit, env, &default).unwrap_err();
            match &e {
                ConfigError::NotFound { looked_in } => {
                    assert_eq!(looked_in, std::slice::from_ref(&missing))
                }
                other => panic!("{other:?}"),
            }
            assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        }
        let e = load_from(None, None, &missing).unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e:?}");
    }

    #[test]
    fn unreadable_is_io() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let e = Config::from_path(dir.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    }
}
