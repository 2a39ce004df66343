//! Test harness: start and stop Tern nodes for end-to-end tests.
//!
//! Nodes run in-process on 127.0.0.1 with port 0, each with its own temporary data
//! directory, so many tests can run at once. A node is stopped when its [`TestNode`] is
//! dropped, so a failing test leaves nothing running. Child processes (external clients,
//! the real `tern` binary) are wrapped in [`ChildGuard`], which kills them on drop.

pub mod clients;
pub mod cluster;
pub mod external;
pub mod process;
pub mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use process::{tern_binary, ChildGuard};
use tern::config::Config;
use tern::node::RunningNode;

pub struct TestNode {
    node: Option<RunningNode>,
    data_dir: PathBuf,
}

impl TestNode {
    /// A node on embedded defaults, bound to loopback ports chosen by the kernel.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A node whose config `adjust` may change before it starts.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = unique_temp_dir("tern-node");
        let mut config = Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse().expect("literal address");
        config.http.listen = "127.0.0.1:0".parse().expect("literal address");
        config.node.data_dir = data_dir.clone();
        config.node.shutdown_grace_secs = 2;
        adjust(&mut config);
        let node = tern::node::start(config).await.expect("test node starts");
        Self {
            node: Some(node),
            data_dir,
        }
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.running().mqtt_addr()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_addr().port()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running().http_addr()
    }

    pub fn running(&self) -> &RunningNode {
        self.node.as_ref().expect("node is running until shutdown")
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Dropping the RunningNode aborts its tasks; the directory is ours alone.
        self.node.take();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A fresh directory under the system temp dir, unique across concurrent tests.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// Tests wait for conditions, never for a guessed sleep.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
