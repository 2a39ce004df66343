//! The node's small HTTP/1.1 endpoint: probes, `GET /healthz` (the process is alive)
//! and `GET /readyz` (send it traffic), `GET /metrics` (Prometheus text format, see
//! [`crate::metrics`]), and the cluster API under `/api/v1/cluster` ([`cluster_api`]). One request per connection, answered with `Connection: close`.
//! Hostile input gets a 4xx and a closed socket: the request head is limited to 8 KiB and
//! must arrive within 10 s. No route takes a body; one sent anyway is read and discarded
//! (at most 64 KiB, within 1 s) after the answer.

mod cluster_api;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_cluster::ClusterNode;

use crate::metrics::{self, NodeMetrics};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long (and how much) we read and discard what the client still
/// sends, so that closing does not reset the connection before it reads the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Open HTTP connections served at once; probes and scrapes need few.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// What the probes report, the cluster membership the API acts on, and the metrics
/// `/metrics` renders; the node updates the first and sets the others at start-up.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    cluster: Option<Arc<ClusterNode>>,
    metrics: Option<Arc<NodeMetrics>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.ready)
            .field("clustered", &self.cluster.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Health {
    /// Not ready yet; `cluster` when the node is a cluster member.
    pub fn new(cluster: Option<Arc<ClusterNode>>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            cluster,
            metrics: None,
        }
    }

    /// What `/metrics` renders; without it `/metrics` answers 404.
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The node's own part of readiness: its MQTT listener is up and it is not stopping.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// What `/readyz` answers: the node's own part and, when clustered, that it has joined
    /// and caught up with the Raft log.
    pub fn is_ready(&self) -> bool {
        let cluster_ready = match &self.cluster {
            Some(cluster) => cluster.is_ready(),
            None => true,
        };
        self.ready.load(Ordering::SeqCst) && cluster_ready
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    status: u16,
    body: String,
    content_type: &'static str,
    /// Methods allowed, for a 405.
    allow: Option<&'static str>,
    /// HEAD: headers only.
    head_only: bool,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            content_type: TEXT,
            allow: None,
            head_only: false,
        }
    }

    /// A JSON body (already rendered), ending in a newline.
    fn json(status: u16, mut body: String) -> Self {
        body.push('\n');
        Self {
            content_type: JSON,
            ..Self::new(status, body)
        }
    }

    /// `{"error": message}`.
    fn json_error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into() }).to_string();
        Self::json(status, body)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str("Allow: ");
            out.push_str(allow);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Serves one HTTP connection: reads one request, answers, closes.
pub async fn serve_connection<S>(mut stream: S, health: &Health)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Some(Response::new(408, "request timeout")),
        Ok(Err(HeadError::TooLarge)) => Some(Response::new(431, "request head too large")),
        // The client left before finishing its request: nobody to answer.
        Ok(Err(HeadError::Closed)) => None,
        Ok(Ok(head)) => Some(respond(&head, health).await),
    };
    let Some(response) = response else { return };
    let write = async {
        stream.write_all(&response.to_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(()))) {
        return;
    }
    // Read what is left of the request (a body we ignore, or the rest of an oversized
    // head) so the close is a FIN and not a reset that could destroy our answer.
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut buf = [0u8; 4096];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends the request head, at most [`MAX_HEAD`] bytes.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head[searched_from..]) {
            let end = searched_from + end;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (just past `\r\n\r\n`, or a bare `\n\n` from a lax client).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn respond(head: &[u8], health: &Health) -> Response {
    let Some((method, path)) = parse_request_line(head) else {
        return Response::new(400, "bad request");
    };
    if cluster_api::handles(path) {
        return cluster_api::respond(method, path, health.cluster()).await;
    }
    if let ("/metrics", Some(node_metrics)) = (path, &health.metrics) {
        // A HEAD gets the headers only, but of the real answer (its length included).
        let body = if matches!(method, "GET" | "HEAD") {
            node_metrics.render().await
        } else {
            String::new()
        };
        let response = Response {
            content_type: metrics::CONTENT_TYPE,
            ..Response::new(200, body)
        };
        return with_method(method, response);
    }
    let body = match path {
        "/healthz" => "ok",
        "/readyz" if health.is_ready() => "ready",
        "/readyz" => {
            return with_method(method, Response::new(503, "not ready"));
        }
        _ => return with_method(method, Response::new(404, "not found")),
    };
    with_method(method, Response::new(200, body))
}

/// GET gets the response; HEAD its headers; other methods a 405 on known paths.
fn with_method(method: &str, mut response: Response) -> Response {
    match method {
        "GET" => response,
        "HEAD" => {
            response.head_only = true;
            response
        }
        _ if response.status == 404 => response,
        _ => Response {
            allow: Some("GET, HEAD"),
            ..Response::new(405, "method not allowed")
        },
    }
}

/// Method and path (without query) of `METHOD SP TARGET SP HTTP/1.x`.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(request: &[u8], ready: bool) -> Response {
        let health = Health::default();
        health.set_ready(ready);
        respond(request, &health).await
    }

    #[tokio::test]
    async fn routes() {
        assert_eq!(
            answer(b"GET /healthz HTTP/1.1\r\n\r\n", false).await.status,
            200
        );
        assert_eq!(
            answer(b"GET /healthz?verbose=1 HTTP/1.0\r\n\r\n", false)
                .await
                .body,
            "ok"
        );
        assert_eq!(
            answer(b"GET /readyz HTTP/1.1\r\n\r\n", true).await.status,
            200
        );
        assert_eq!(
            answer(b"GET /readyz HTTP/1.1\r\n\r\n", false).await.status,
            503
        );
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\n\r\n", true).await.status,
            404
        );
        assert_eq!(answer(b"GET / HTTP/1.1\r\n\r\n", true).await.status, 404);
        let head = answer(b"HEAD /healthz HTTP/1.1\r\n\r\n", true).await;
        assert_eq!(head.status, 200);
        assert!(String::from_utf8(head.to_bytes())
            .unwrap()
            .ends_with("\r\n\r\n"));
        let api = answer(b"GET /api/v1/cluster HTTP/1.1\r\n\r\n", true).await;
        assert_eq!((api.status, api.content_type), (404, JSON));
        assert!(String::from_utf8(api.to_bytes())
            .unwrap()
            .contains("Content-Type: application/json\r\n"));
        let post = answer(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true).await;
        assert_eq!((post.status, post.allow), (405, Some("GET, HEAD")));
    }

    #[tokio::test]
    async fn metrics_are_served_when_the_node_has_them() {
        let broker = tern_broker::Broker::new(
            Default::default(),
            Default::default(),
            tern_cluster::single_node(),
        )
        .unwrap();
        let node_metrics = Arc::new(NodeMetrics::new(broker, None, Vec::new()));
        let health = Health::new(None).with_metrics(node_metrics);
        let get = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &health).await;
        assert_eq!((get.status, get.content_type), (200, metrics::CONTENT_TYPE));
        assert!(get.body.contains("# HELP tern_connections_total "));
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &health).await;
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.ends_with("\r\n\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Type: text/plain; version=0.0.4"));
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &health).await;
        assert_eq!(post.status, 405);
    }

    #[tokio::test]
    async fn malformed_request_lines_are_400() {
        for bad in [
            &b"GET /healthz\r\n\r\n"[..],
            b"GET  /healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/2.0\r\n\r\n",
            b"get /healthz HTTP/1.1\r\n\r\n",
            b"GET healthz HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(
                answer(bad, true).await.status,
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_is_found_across_reads() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn heads_are_read_in_pieces_and_limited() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_head(&mut server).await });
        for piece in [
            &b"GET /hea"[..],
            b"lthz HTTP/1.1\r",
            b"\nHost: x\r\n",
            b"\r\nrest",
        ] {
            client.write_all(piece).await.unwrap();
        }
        let head = reader.await.unwrap().unwrap();
        assert_eq!(head, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");

        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move { read_head(&mut server).await });
        client.write_all(&vec![b'a'; MAX_HEAD + 10]).await.unwrap();
        assert_eq!(reader.await.unwrap(), Err(HeadError::TooLarge));

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(read_head(&mut server).await, Err(HeadError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_gets_408() {
        let (mut client, server) = tokio::io::duplex(1024);
        let health = Health::default();
        let serve = tokio::spawn(async move { serve_connection(server, &health).await });
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        serve.await.unwrap();
    }
}
