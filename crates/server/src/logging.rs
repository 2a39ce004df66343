//! Logs go to stderr through `tracing`, as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("RUST_LOG: `{value}` is not a log filter: {reason}")]
    BadRustLog { value: String, reason: String },
    #[error("invalid `log.level` `{value}`: {reason}")]
    BadLevel { value: String, reason: String },
    #[error("a global logger is already installed")]
    AlreadySet,
}

/// Installs the process-wide subscriber. `rust_log` is the value of `RUST_LOG`, which,
/// when set and not empty, replaces `log.level`.
pub fn init(config: &LogConfig, rust_log: Option<String>) -> Result<(), LoggingError> {
    let filter = filter(config, rust_log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadySet)
}

fn filter(config: &LogConfig, rust_log: Option<String>) -> Result<EnvFilter, LoggingError> {
    match rust_log.filter(|value| !value.trim().is_empty()) {
        Some(value) => EnvFilter::try_new(&value).map_err(|e| LoggingError::BadRustLog {
            value,
            reason: e.to_string(),
        }),
        None => EnvFilter::try_new(&config.level).map_err(|e| LoggingError::BadLevel {
            value: config.level.clone(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_replaces_the_configured_level() {
        let config = LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        };
        assert_eq!(
            filter(&config, Some("debug".into())).unwrap().to_string(),
            "debug"
        );
        assert_eq!(
            filter(&config, Some(" ".into())).unwrap().to_string(),
            "info"
        );
        assert_eq!(filter(&config, None).unwrap().to_string(), "info");
    }

    #[test]
    fn bad_filters_are_errors_naming_their_source() {
        let config = LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        };
        let err = filter(&config, Some("=[".into())).unwrap_err();
        assert!(err.to_string().starts_with("RUST_LOG"), "{err}");
        let config = LogConfig {
            level: "=[".into(),
            format: LogFormat::Text,
        };
        let err = filter(&config, None).unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
    }
}
