//! The node's configuration: one TOML file, every key also settable by a `TERN_...`
//! environment variable and by a flag. [`load`] layers embedded defaults, the file, the
//! environment and the flags (in that order, later wins) and validates the result.
//! docs/configuration.md describes every key; a test keeps the two in step.

mod error;
mod load;
mod validate;

#[cfg(test)]
mod doc_sync;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tern_broker::{AuthConfig, BrokerConfig};
use tern_cluster::ClusterConfig;

pub use error::{ConfigError, Source};
pub use load::{env_key_path, env_var_name, load, parse_value, Overrides, CONFIG_ENV};

/// Everything one node reads at start-up.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    /// `[cluster]`: off by default (a single node).
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its state; created at start-up if missing.
    pub data_dir: PathBuf,
    /// On SIGTERM/SIGINT, how long clients get to be disconnected cleanly, in seconds.
    pub shutdown_grace_secs: u64,
    /// Threads of the async runtime; 0: one per core the process may use (CPU affinity and
    /// a cgroup CPU quota count). Several nodes sharing a host's cores want their share.
    pub worker_threads: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            shutdown_grace_secs: 10,
            worker_threads: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the MQTT (TCP) listener; port 0 lets the kernel choose.
    pub listen: SocketAddr,
    /// Open client connections allowed at once; a connection over the limit is closed
    /// right after it is accepted.
    pub max_connections: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_connections: 100_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP listener for `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive such as `info` or `info,tern_broker=debug`.
    /// `RUST_LOG`, when set, replaces it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The configuration as TOML, as `tern config show` prints it. Loading this text
    /// back gives the same configuration.
    pub fn to_toml(&self) -> String {
        // Every field is a plain value, table or array of tables, all of which TOML can
        // express, so serialization cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks constraints that types alone cannot express. The error names the key;
    /// [`load`] adds where its value came from.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate::validate(self)
    }
}
