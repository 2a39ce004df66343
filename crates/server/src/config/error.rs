//! Configuration errors. Each names the key at fault and where its value came from, so an
//! operator can find the line, variable or flag to fix.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The embedded defaults.
    Default,
    /// The TOML file (`--config` or `TERN_CONFIG`).
    File(PathBuf),
    /// A `TERN_...` environment variable, by name.
    Env(String),
    /// A flag, as written (`--set broker.maximum_qos=1`, `--mqtt-listen`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the embedded defaults"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (most often: it does not exist).
    #[error("cannot read config file {}: {error}", path.display())]
    ReadFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// A key that no setting has.
    #[error("unknown key `{key}` (from {origin}): {detail}")]
    UnknownKey {
        key: String,
        origin: Source,
        detail: String,
    },
    /// A value of the wrong type or out of range for its key.
    #[error("bad value for `{key}` (from {origin}): {detail}")]
    BadValue {
        key: String,
        origin: Source,
        detail: String,
    },
    /// A value of the right type that breaks a rule (e.g. `broker.maximum_qos` above 2).
    #[error("invalid `{key}` (from {origin}): {reason}")]
    Invalid {
        key: String,
        origin: Source,
        reason: String,
    },
    /// A flag or variable that cannot be read as a key and value at all.
    #[error("{origin}: {reason}")]
    Malformed { origin: Source, reason: String },
}

impl ConfigError {
    /// The key at fault, if the error concerns one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::BadValue { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
