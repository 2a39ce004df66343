//! Helpers for tests that drive other programs (mosquitto clients, paho scripts, the Go
//! example, the `tern` binary) and raw sockets against a node.
//!
//! Every child process is killed when its handle is dropped (`kill_on_drop`), every wait
//! has a timeout, and every address is on 127.0.0.1.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The repository root (the workspace that holds `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A port free a moment ago on 127.0.0.1 for both TCP and UDP, for a server a test
/// starts on a fixed port (a child process, or a node that must come back on the same
/// port after a restart).
///
/// Drawn at random from below the kernel's ephemeral range (`ip_local_port_range`),
/// where sockets bound to port 0 never land: the many clients and QUIC endpoints of the
/// tests running at the same time cannot take it, even while a restarted node has let
/// go of it. Only another test drawing the same port at the same moment could, which is
/// about one chance in 10,000 per draw. Never the same port twice in one test process.
/// (Ports from binding port 0 were taken by other tests' port-0 sockets: a cluster node
/// then failed to start with "address in use".)
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range = fixed_port_range();
    let width = u64::from(range.1 - range.0);
    loop {
        let port = range.0 + (random_u64() % width) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            handed_out.push(port);
            return port;
        }
    }
}

/// Ports `free_port` draws from: up to 10,000 ports just below the ephemeral range, and
/// above the well-known ones.
fn fixed_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.max(2_048);
    (high.saturating_sub(10_000).max(1_024), high)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The full path of a program on PATH, or a panic that says how to install it.
pub fn require_tool(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("`{name}` is not on PATH: run ./scripts/test, which installs what the tests need");
}

/// A command for `tool` with its stdout line-buffered (coreutils' `stdbuf -oL`), for C
/// programs such as mosquitto_sub whose output a test reads while they run: a pipe would
/// otherwise hold their lines in a block buffer until they exit.
pub fn line_buffered(tool: &str) -> Command {
    let mut cmd = Command::new(require_tool("stdbuf"));
    cmd.arg("-oL").arg(require_tool(tool));
    cmd
}

/// What a finished (or timed-out) child process left behind.
#[derive(Debug)]
pub struct Output {
    /// None when the process was killed because it ran past its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// A one-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "killed after its timeout".to_string(),
        };
        format!(
            "status: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with no stdin, capturing its output; kills it after `timeout`.
pub async fn run(cmd: &mut Command, timeout: Duration) -> Output {
    Lines::spawn(cmd).finish(timeout).await
}

/// A child process whose stdout is read line by line while it runs, so a test can wait
/// for a line (mosquitto_sub's "Subscribed" in debug mode) before going on.
pub struct Lines {
    child: Child,
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
    label: String,
}

impl Lines {
    pub fn spawn(cmd: &mut Command) -> Self {
        let label = format!("{:?}", cmd.as_std());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        Self {
            child,
            rx,
            seen: Vec::new(),
            stderr,
            label,
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for a stdout line matching `pred`; returns it, or None on timeout or end of output.
    pub async fn wait_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits for the process to exit (killing it after `timeout`) and returns everything
    /// it printed, including lines already consumed by `wait_line`.
    pub async fn finish(mut self, timeout: Duration) -> Output {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => panic!("wait for {}: {e}", self.label),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        // The pipes close when the process is gone; drain what is left.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await
        {
            self.seen.push(line);
        }
        let stderr = tokio::time::timeout(Duration::from_secs(5), &mut self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Output {
            status,
            stdout: self.seen.join("\n"),
            stderr,
        }
    }
}

/// A plain HTTP/1.0 GET; returns the status code and body, or None if nothing answered
/// within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// Hand-made MQTT packets and a raw connection that reads them back, for tests that must
/// send what no well-behaved client would, and see exactly what the node answers.
/// Deliberately independent of `tern-codec`.
pub mod raw {
    use super::*;

    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const SUBACK: u8 = 9;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;

    pub fn remaining_length(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                return out;
            }
        }
    }

    /// A packet from its first byte (type and flags) and its body.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(remaining_length(body.len()));
        out.extend_from_slice(body);
        out
    }

    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// CONNECT for 3.1.1 (level 4), clean session, no will, no credentials.
    pub fn connect_v311(client_id: &str, keep_alive: u16) -> Vec<u8> {
        let mut body = string(b"MQTT");
        body.push(4);
        body.push(0x02);
        body.extend(keep_alive.to_be_bytes());
        body.extend(string(client_id.as_bytes()));
        packet(0x10, &body)
    }

    /// CONNECT for 5.0, clean start, with the given encoded properties (without their length).
    pub fn connect_v5(client_id: &str, keep_alive: u16, props: &[u8]) -> Vec<u8> {
        let mut body = string(b"MQTT");
        body.push(5);
        body.push(0x02);
        body.extend(keep_alive.to_be_bytes());
        body.extend(remaining_length(props.len()));
        body.extend_from_slice(props);
        body.extend(string(client_id.as_bytes()));
        packet(0x10, &body)
    }

    /// PUBLISH with raw topic bytes; `props` is Some for v5 (possibly empty).
    pub fn publish(
        topic: &[u8],
        qos: u8,
        packet_id: u16,
        props: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic);
        if qos > 0 {
            body.extend(packet_id.to_be_bytes());
        }
        if let Some(props) = props {
            body.extend(remaining_length(props.len()));
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    /// SUBSCRIBE to one filter; `v5` adds an empty property section.
    pub fn subscribe(packet_id: u16, filter: &str, qos: u8, v5: bool) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if v5 {
            body.push(0);
        }
        body.extend(string(filter.as_bytes()));
        body.push(qos);
        packet(0x82, &body)
    }

    pub fn puback(packet_id: u16) -> Vec<u8> {
        packet(0x40, &packet_id.to_be_bytes())
    }

    pub fn disconnect() -> Vec<u8> {
        vec![0xE0, 0x00]
    }

    /// One packet as received: its first byte and its body.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Packet {
        pub first: u8,
        pub body: Vec<u8>,
    }

    impl Packet {
        pub fn kind(&self) -> u8 {
            self.first >> 4
        }

        /// The v5 reason code of a CONNACK or DISCONNECT (a DISCONNECT with an empty body
        /// means 0x00); for a 3.1.1 CONNACK, its return code.
        pub fn reason_code(&self) -> Option<u8> {
            match self.kind() {
                CONNACK => self.body.get(1).copied(),
                DISCONNECT => Some(self.body.first().copied().unwrap_or(0)),
                _ => None,
            }
        }
    }

    impl std::fmt::Display for Packet {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let name = match self.kind() {
                CONNACK => "CONNACK",
                PUBLISH => "PUBLISH",
                PUBACK => "PUBACK",
                SUBACK => "SUBACK",
                PINGRESP => "PINGRESP",
                DISCONNECT => "DISCONNECT",
                _ => "packet",
            };
            match self.reason_code() {
                Some(rc) => write!(f, "{name}(0x{rc:02X})"),
                None => write!(f, "{name}[{:02X}, {} bytes]", self.first, self.body.len()),
            }
        }
    }

    /// Splits whole packets off the front of `buf`; None when the next one is incomplete.
    pub fn take_packet(buf: &mut Vec<u8>) -> Option<Packet> {
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = 1;
        loop {
            let byte = *buf.get(i)?;
            len += ((byte & 0x7F) as usize) << shift;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                // Not something a node should ever send; hand it back whole.
                let body = buf.split_off(1);
                let first = buf[0];
                buf.clear();
                return Some(Packet { first, body });
            }
        }
        if buf.len() < i + len {
            return None;
        }
        let body = buf[i..i + len].to_vec();
        let first = buf[0];
        buf.drain(..i + len);
        Some(Packet { first, body })
    }

    /// How a connection ended, from the client's side.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum End {
        /// The node closed it (read returned 0).
        Closed,
        /// The connection was reset or another read error occurred.
        Error(String),
        /// Still open when the wait ended.
        StillOpen,
    }

    /// The result of waiting for one packet.
    #[derive(Debug)]
    pub enum Next {
        Packet(Packet),
        Ended(End),
        Timeout,
    }

    /// What a raw connection received before it ended.
    #[derive(Debug)]
    pub struct Closure {
        pub packets: Vec<Packet>,
        /// Trailing bytes that did not form a whole packet.
        pub leftover: Vec<u8>,
        pub end: End,
        pub after: Duration,
    }

    impl Closure {
        pub fn closed(&self) -> bool {
            self.end != End::StillOpen
        }

        pub fn describe(&self) -> String {
            let packets: Vec<String> = self.packets.iter().map(|p| p.to_string()).collect();
            format!(
                "end {:?} after {:.1?}, received [{}]{}",
                self.end,
                self.after,
                packets.join(", "),
                if self.leftover.is_empty() {
                    String::new()
                } else {
                    format!(" + {} stray bytes", self.leftover.len())
                }
            )
        }

        pub fn of_kind(&self, kind: u8) -> Vec<&Packet> {
            self.packets.iter().filter(|p| p.kind() == kind).collect()
        }
    }

    /// A raw TCP connection to a node.
    pub struct Conn {
        pub stream: TcpStream,
        buf: Vec<u8>,
        started: Instant,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
            let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            Ok(Self {
                stream,
                buf: Vec::new(),
                started: Instant::now(),
            })
        }

        /// Writes all of `bytes`; an error (the node already closed) is returned, not a panic.
        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.stream.write_all(bytes).await
        }

        /// Reads the next packet; None if the connection ended or `timeout` passed first.
        pub async fn recv(&mut self, timeout: Duration) -> Option<Packet> {
            match self.next(timeout).await {
                Next::Packet(p) => Some(p),
                Next::Ended(_) | Next::Timeout => None,
            }
        }

        /// The next packet, or how the wait for it ended.
        pub async fn next(&mut self, timeout: Duration) -> Next {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(p) = take_packet(&mut self.buf) {
                    return Next::Packet(p);
                }
                let mut chunk = [0u8; 4096];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Ok(Ok(0)) => return Next::Ended(End::Closed),
                    Ok(Err(e)) => return Next::Ended(End::Error(e.kind().to_string())),
                    Err(_) => return Next::Timeout,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// CONNECT and the CONNACK that answers it (None if none came).
        pub async fn handshake(&mut self, connect: &[u8]) -> Option<Packet> {
            self.send(connect).await.ok()?;
            let p = self.recv(Duration::from_secs(10)).await?;
            (p.kind() == CONNACK).then_some(p)
        }

        /// Reads everything until the node closes the connection or `timeout` passes.
        pub async fn read_until_closed(mut self, timeout: Duration) -> Closure {
            let deadline = tokio::time::Instant::now() + timeout;
            let end = loop {
                let mut chunk = [0u8; 16 * 1024];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Ok(Ok(0)) => break End::Closed,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) => break End::Error(e.kind().to_string()),
                    Err(_) => break End::StillOpen,
                }
            };
            let mut packets = Vec::new();
            while let Some(p) = take_packet(&mut self.buf) {
                packets.push(p);
            }
            Closure {
                packets,
                leftover: self.buf,
                end,
                after: self.started.elapsed(),
            }
        }
    }
}
