//! A tiny HTTP/1.1 client for the node's own HTTP API, as `tern cluster ...` uses it:
//! one request per connection, `Connection: close`, the answer read to the end (bounded).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read; a cluster status of many members stays far below.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node's HTTP API at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from {addr} within {} s", timeout.as_secs())]
    Timeout { addr: String, timeout: Duration },
    #[error("bad answer from {addr}: {reason}")]
    BadResponse { addr: String, reason: String },
}

/// Status code and body of an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The server's message: `error` (or `message`) of a JSON body, else the body itself.
    pub fn message(&self) -> String {
        let json = serde_json::from_str::<serde_json::Value>(&self.body).ok();
        ["error", "message"]
            .iter()
            .find_map(|field| json.as_ref()?.get(field)?.as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string())
    }
}

/// Sends `method path` (no body) to `addr` (`host:port`) and reads the answer, all within
/// `timeout`.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr));
    let mut stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        }
    };
    let exchange = async {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(ClientError::BadResponse {
                addr: addr.to_string(),
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(ClientError::Timeout {
                addr: addr.to_string(),
                timeout,
            })
        }
    };
    parse_response(&response).map_err(|reason| ClientError::BadResponse {
        addr: addr.to_string(),
        reason,
    })
}

/// Status and body of a whole `Connection: close` response.
fn parse_response(bytes: &[u8]) -> Result<Answer, String> {
    if bytes.len() > MAX_RESPONSE {
        return Err(format!("larger than {MAX_RESPONSE} bytes"));
    }
    if bytes.is_empty() {
        return Err("the connection closed without an answer".to_string());
    }
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no end of headers".to_string())?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let a = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"error\":\"no\"}\n",
        )
        .unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.message(), "no");
        let plain = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready").unwrap();
        assert_eq!((plain.status, plain.message().as_str()), (503, "not ready"));
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = request(&addr, "GET", "/", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot reach"), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
