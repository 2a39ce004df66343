//! The `tern` binary's library: configuration, the command line, and a running node
//! (broker, MQTT listener, HTTP probes and metrics). End-to-end tests start nodes in-process with
//! [`node::start`].

pub mod admin_client;
pub mod cli;
pub mod cluster_cmd;
pub mod config;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod passwd;
pub mod shutdown;
pub mod status_view;
pub mod tcp_stream;

pub use config::Config;
pub use node::{start, start_on_host, RunningNode, StartError};
