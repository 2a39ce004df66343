//! One running node: the broker, its MQTT listener, its HTTP endpoint and, when
//! `cluster.enabled`, its membership of the cluster. [`start_on_host`] is what
//! `tern serve` runs; end-to-end tests call it (or [`start`]) many times in one process.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{Broker, BrokerError, Cluster};
use tern_cluster::{ClusterError, ClusterNode};

use crate::config::Config;
use crate::http::{self, Health};
use crate::listener::{self, AcceptLoop, ListenerCounts};
use crate::metrics::NodeMetrics;
use crate::tcp_stream::ClientTcpStream;

/// Longest a stopping node waits for session handovers to finish: clients it disconnected
/// reconnecting elsewhere and fetching their persistent sessions, and new nodes making
/// their routes known. A client that takes longer to come back finds its session gone.
const HANDOVER_DRAIN: Duration = Duration::from_secs(10);

/// Extra time, beyond the grace period, that shutdown waits for the broker before going on.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {} (`node.data_dir`): {error}", path.display())]
    DataDir { path: PathBuf, error: io::Error },
    #[error("cannot listen on {addr} (`{key}`): {error}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
    #[error("{0}")]
    Broker(#[from] BrokerError),
    #[error("cannot start clustering (`cluster`): {0}")]
    Cluster(#[from] ClusterError),
}

impl StartError {
    /// Whether the configuration is at fault (as opposed to the machine: ports, disks).
    pub fn is_config_error(&self) -> bool {
        matches!(self, StartError::Broker(_))
    }
}

/// A started node. Dropping it aborts its listeners and connections at once; call
/// [`RunningNode::shutdown`] to stop gracefully.
pub struct RunningNode {
    mqtt_addr: SocketAddr,
    http_addr: SocketAddr,
    broker: Arc<Broker>,
    cluster: Option<Arc<ClusterNode>>,
    leave_on_shutdown: bool,
    health: Arc<Health>,
    grace: Duration,
    mqtt: AcceptLoop,
    http: AcceptLoop,
    stopped: bool,
}

/// [`start_on_host`] without a host name: a clustered node then needs `cluster.node_id`.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    start_on_host(config, "").await
}

/// Creates the data directory, binds the MQTT and HTTP listeners, joins the cluster when
/// `cluster.enabled` (`hostname` names the node when `cluster.node_id` is not set), starts
/// the broker and begins accepting connections.
pub async fn start_on_host(config: Config, hostname: &str) -> Result<RunningNode, StartError> {
    let data_dir = config.node.data_dir.clone();
    tokio::fs::create_dir_all(&data_dir)
        .await
        .map_err(|error| StartError::DataDir {
            path: data_dir.clone(),
            error,
        })?;

    let bind = |key: &'static str, addr: SocketAddr| {
        let listener =
            listener::bind(addr).map_err(|error| StartError::Bind { key, addr, error })?;
        let local = listener
            .local_addr()
            .map_err(|error| StartError::Bind { key, addr, error })?;
        Ok::<_, StartError>((listener, local))
    };
    // Bound before the cluster starts, so a port in use fails fast and leaves no
    // half-joined node behind; nothing is accepted until the broker exists.
    let (mqtt_listener, mqtt_addr) = bind("mqtt.listen", config.mqtt.listen)?;
    let (http_listener, http_addr) = bind("http.listen", config.http.listen)?;

    let cluster = if config.cluster.enabled {
        Some(ClusterNode::start(config.cluster.clone(), &data_dir, hostname).await?)
    } else {
        None
    };
    let hooks: Arc<dyn Cluster> = match &cluster {
        Some(cluster) => cluster.hooks(),
        None => tern_cluster::single_node(),
    };
    let broker = match Broker::new(config.broker.clone(), config.auth.clone(), hooks) {
        Ok(broker) => broker,
        Err(e) => {
            if let Some(cluster) = &cluster {
                cluster.shutdown().await;
            }
            return Err(e.into());
        }
    };
    if let Some(cluster) = &cluster {
        cluster.attach_broker(&broker);
    }

    broker.start_background_tasks();

    let serving = broker.clone();
    let mqtt = AcceptLoop::spawn(
        "mqtt",
        mqtt_listener,
        config.mqtt.max_connections,
        move |stream, peer| {
            let broker = serving.clone();
            async move {
                broker
                    .serve_connection(ClientTcpStream::new(stream), peer, "tcp")
                    .await
            }
        },
    );

    // The node's own registry, read at scrape time (never the global default: many
    // nodes may share a process).
    let node_metrics = Arc::new(NodeMetrics::new(
        broker.clone(),
        cluster.clone(),
        vec![("mqtt", mqtt.stats().clone())],
    ));
    let health = Arc::new(Health::new(cluster.clone()).with_metrics(node_metrics));
    let probes = health.clone();
    let http = AcceptLoop::spawn(
        "http",
        http_listener,
        http::MAX_CONNECTIONS,
        move |stream, _peer| {
            let health = probes.clone();
            async move { http::serve_connection(stream, &health).await }
        },
    );

    // The MQTT socket is listening, so connections queue from now on; a single node
    // needs nothing else to be ready, a cluster member also has to join and catch up
    // (`Health::is_ready` asks it).
    health.set_ready(true);
    tracing::info!(
        mqtt = %mqtt_addr,
        http = %http_addr,
        data_dir = %data_dir.display(),
        max_connections = config.mqtt.max_connections,
        "listening"
    );
    if let Some(cluster) = &cluster {
        tracing::info!(
            node_id = cluster.node_id(),
            cluster = %cluster.cluster_addr(),
            seeds = ?config.cluster.seeds,
            "cluster member started; ready once joined and caught up"
        );
    }

    Ok(RunningNode {
        mqtt_addr,
        http_addr,
        broker,
        cluster,
        leave_on_shutdown: config.cluster.leave_on_shutdown,
        health,
        grace: Duration::from_secs(config.node.shutdown_grace_secs),
        mqtt,
        http,
        stopped: false,
    })
}

impl RunningNode {
    /// The MQTT listener's address (with the real port when configured with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The node's cluster membership, when `cluster.enabled`.
    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    /// Counters of the MQTT listener (accepted, rejected over `max_connections`, ...).
    pub fn mqtt_counts(&self) -> ListenerCounts {
        self.mqtt.stats().counts()
    }

    /// Whether `/readyz` reports ready.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// Graceful stop, as on SIGTERM: report not ready, stop accepting MQTT connections,
    /// give the broker the grace period to disconnect its clients, end whatever is left,
    /// let the sessions of clients that reconnect elsewhere move there (see
    /// `ClusterNode::drain`), leave the cluster if `cluster.leave_on_shutdown` (within the
    /// grace period), stop the cluster member, and close the HTTP endpoint last. Both
    /// ports are closed when this returns.
    pub async fn shutdown(mut self) {
        tracing::info!(grace_secs = self.grace.as_secs(), "shutting down");
        self.health.set_ready(false);
        self.mqtt.stop_accepting().await;
        // Their persistent sessions move to whichever node they reconnect to.
        let reconnecting = self.broker.online_client_ids();
        if tokio::time::timeout(
            self.grace + SHUTDOWN_SLACK,
            self.broker.shutdown(self.grace),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                "broker shutdown overran its deadline; closing the remaining connections"
            );
        }
        self.mqtt.stop().await;
        if let Some(cluster) = &self.cluster {
            cluster.drain(HANDOVER_DRAIN, &reconnecting).await;
            // Only now: a member that left is no longer asked for the sessions it held.
            if self.leave_on_shutdown {
                match tokio::time::timeout(self.grace, cluster.leave()).await {
                    Ok(Ok(())) => tracing::info!("left the cluster"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not leave the cluster"),
                    Err(_) => tracing::warn!(
                        grace_secs = self.grace.as_secs(),
                        "leaving the cluster overran the grace period; stopping anyway"
                    ),
                }
            }
            if tokio::time::timeout(SHUTDOWN_SLACK + self.grace, cluster.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("stopping the cluster member overran its deadline");
            }
        }
        self.http.stop().await;
        self.stopped = true;
        tracing::info!("stopped");
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // The accept loops abort themselves (and their connections) when dropped. Let the
        // broker stop its own background work too, if a runtime is still there to run it.
        if !self.stopped {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let broker = self.broker.clone();
                let cluster = self.cluster.clone();
                runtime.spawn(async move {
                    broker.shutdown(Duration::ZERO).await;
                    if let Some(cluster) = cluster {
                        cluster.shutdown().await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("tern-server-{tag}-{}-{n}", std::process::id()))
    }

    fn test_config(data_dir: PathBuf) -> Config {
        let mut config = Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.node.data_dir = data_dir;
        config.node.shutdown_grace_secs = 1;
        config
    }

    /// Sends `request` and returns the whole response.
    async fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response within 10 s")
            .expect("read response");
        String::from_utf8_lossy(&response).into_owned()
    }

    fn status(response: &str) -> u16 {
        response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn body(response: &str) -> &str {
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or("")
    }

    #[tokio::test]
    async fn node_serves_probes_and_refuses_bad_requests() {
        let dir = temp_dir("probes").join("nested");
        let node = start(test_config(dir.clone())).await.unwrap();
        assert!(dir.is_dir(), "data_dir is created");
        let addr = node.http_addr();
        assert_ne!(addr.port(), 0);
        assert_ne!(node.mqtt_addr().port(), 0);

        let ok = http(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((status(&ok), body(&ok)), (200, "ok"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"));
        let ready = http(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!((status(&ready), body(&ready)), (200, "ready"), "{ready}");

        assert_eq!(
            status(&http(addr, b"GET /nope HTTP/1.1\r\n\r\n").await),
            404
        );
        let metrics = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&metrics), 200, "{metrics}");
        assert!(body(&metrics).contains("# TYPE tern_connections_total counter\n"));
        let post = http(
            addr,
            b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status(&post), 405, "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"));
        assert_eq!(status(&http(addr, b"NONSENSE\r\n\r\n").await), 400);

        let mut oversized = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while oversized.len() <= http::MAX_HEAD {
            oversized
                .extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        oversized.extend_from_slice(b"\r\n");
        assert_eq!(status(&http(addr, &oversized).await), 431);
        // An endless head with no line breaks at all.
        assert_eq!(
            status(&http(addr, &vec![b'A'; 3 * http::MAX_HEAD]).await),
            431
        );

        // The MQTT port accepts TCP connections.
        TcpStream::connect(node.mqtt_addr()).await.unwrap();

        node.shutdown().await;
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[tokio::test]
    async fn shutdown_and_drop_close_both_ports() {
        let dir = temp_dir("stop");
        let node = start(test_config(dir.clone())).await.unwrap();
        let (mqtt, http_addr) = (node.mqtt_addr(), node.http_addr());
        node.shutdown().await;
        assert!(
            TcpStream::connect(mqtt).await.is_err(),
            "mqtt port closed after shutdown"
        );
        assert!(
            TcpStream::connect(http_addr).await.is_err(),
            "http port closed after shutdown"
        );

        let node = start(test_config(dir.clone())).await.unwrap();
        let (mqtt, http_addr) = (node.mqtt_addr(), node.http_addr());
        let open = TcpStream::connect(http_addr).await.unwrap();
        drop(node);
        // Aborted tasks drop their sockets on the runtime's next turn.
        let mut closed = false;
        for _ in 0..200 {
            if TcpStream::connect(mqtt).await.is_err()
                && TcpStream::connect(http_addr).await.is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "ports closed after drop");
        drop(open);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn many_nodes_run_in_one_process() {
        let dirs: Vec<_> = (0..3).map(|_| temp_dir("many")).collect();
        let mut nodes = Vec::new();
        for dir in &dirs {
            nodes.push(start(test_config(dir.clone())).await.unwrap());
        }
        for node in &nodes {
            let ok = http(node.http_addr(), b"GET /healthz HTTP/1.1\r\n\r\n").await;
            assert_eq!(status(&ok), 200);
        }
        for node in nodes {
            node.shutdown().await;
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[tokio::test]
    async fn start_errors_name_what_failed() {
        let dir = temp_dir("errors");
        let first = start(test_config(dir.clone())).await.unwrap();
        let mut config = test_config(dir.clone());
        config.mqtt.listen = first.mqtt_addr();
        let err = start(config).await.err().expect("port in use");
        assert!(err.to_string().contains("`mqtt.listen`"), "{err}");
        assert!(!err.is_config_error());

        let file = dir.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = start(test_config(file.join("sub")))
            .await
            .err()
            .expect("data dir under a file");
        assert!(err.to_string().contains("a-file"), "{err}");
        assert!(err.to_string().contains("node.data_dir"), "{err}");
        first.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_cluster_that_cannot_start_is_a_clear_error_and_frees_the_ports() {
        let dir = temp_dir("cluster-error");
        let mut config = test_config(dir.clone());
        config.cluster.enabled = true;
        config.cluster.node_id = Some(0);
        config.cluster.listen = "127.0.0.1:0".parse().unwrap();
        config.cluster.tls.ca_cert = dir.join("missing/ca.pem");
        let err = start(config.clone()).await.err().expect("no certificates");
        assert!(err.to_string().contains("`cluster`"), "{err}");
        assert!(!err.is_config_error());
        // The same settings without clustering start a node.
        config.cluster.enabled = false;
        let node = start(config)
            .await
            .expect("a single node on the same settings");
        assert!(node.cluster().is_none());
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
