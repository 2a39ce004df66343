//! `tern bench` itself, run as the real `tern` binary against a live in-process node: its
//! counts add up, the connection scenarios count every connection, and loss, failed and
//! dropped connections are detected and fail the run.
//!
//! Some runs go through [`Proxy`], a TCP relay written here that follows the MQTT fixed
//! headers of what the broker sends and can swallow PUBLISH packets, cut every
//! connection, and records where connections came from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tern_tests::external::{run, Output};
use tern_tests::{tern_binary, wait_until, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

const RUN_TIMEOUT: Duration = Duration::from_secs(40);

/// `tern bench ARGS --targets TARGET --json --quiet`, run to completion.
async fn bench(target: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(tern_binary());
    cmd.arg("bench")
        .args(args)
        .args(["--targets", &target.to_string(), "--json", "--quiet"]);
    for (name, _) in std::env::vars() {
        if name.starts_with("TERN_") {
            cmd.env_remove(name);
        }
    }
    run(&mut cmd, RUN_TIMEOUT).await
}

/// The JSON report on stdout.
fn report(out: &Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", out.describe()))
}

fn num(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// A TCP relay in front of the broker.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// Swallow every `drop_every`th PUBLISH the broker sends (0: none).
    drop_every: u64,
    publishes: AtomicU64,
    dropped: AtomicU64,
    connacks: AtomicU64,
    peers: Mutex<BTreeMap<IpAddr, u64>>,
}

impl Proxy {
    async fn start(broker: SocketAddr, drop_every: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            drop_every,
            ..Default::default()
        });
        let (cut, cut_rx) = watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                *st.peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(peer.ip())
                    .or_default() += 1;
                tokio::spawn(relay(client, broker, st.clone(), cut_rx.clone()));
            }
        });
        Proxy {
            addr,
            state,
            cut,
            task,
        }
    }

    fn peers(&self) -> BTreeMap<IpAddr, u64> {
        self.state
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.cut.send(true);
        self.task.abort();
    }
}

/// One relayed connection: client -> broker as is; broker -> client packet by packet,
/// some PUBLISH packets swallowed. Ends when either side closes or on a cut.
async fn relay(
    client: TcpStream,
    broker: SocketAddr,
    st: Arc<ProxyState>,
    mut cut: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(broker).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    let down = async {
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = [0u8; 8192];
        loop {
            let n = match sr.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::with_capacity(buf.len());
            let mut at = 0;
            while let Some(len) = packet_len(&buf[at..]) {
                let kind = buf[at] >> 4;
                let keep = match kind {
                    2 => {
                        st.connacks.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    3 => {
                        let k = st.publishes.fetch_add(1, Ordering::Relaxed) + 1;
                        let swallow = st.drop_every > 0 && k.is_multiple_of(st.drop_every);
                        if swallow {
                            st.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        !swallow
                    }
                    _ => true,
                };
                if keep {
                    out.extend_from_slice(&buf[at..at + len]);
                }
                at += len;
            }
            buf.drain(..at);
            if !out.is_empty() && cw.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

/// Length of the whole packet at the front of `buf` (fixed header included), once all of
/// it is there.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + value;
            return (buf.len() >= total).then_some(total);
        }
    }
    // A malformed length: treat the rest as one packet so that the relay moves on.
    Some(buf.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_runs_deliver_every_message_exactly_once_and_counts_add_up() {
    let node = TestNode::start().await;

    // 4 pairs x 250 messages, spread over two source addresses (seen by the proxy).
    let proxy = Proxy::start(node.mqtt_addr(), 0).await;
    let out = bench(
        proxy.addr,
        &[
            "pairs",
            "--publishers",
            "4",
            "--qos",
            "1",
            "--count",
            "250",
            "--source-addrs",
            "127.0.0.2-127.0.0.3",
        ],
    )
    .await;
    assert!(out.success(), "{}", out.describe());
    let r = report(&out);
    assert_eq!(r["scenario"], "pairs");
    for (field, want) in [
        ("sent", 1000),
        ("expected", 1000),
        ("received", 1000),
        ("acked", 1000),
        ("lost", 0),
        ("duplicates", 0),
        ("unacked", 0),
        ("unexpected", 0),
        ("latency.samples", 1000),
    ] {
        assert_eq!(num(&r, field), want, "{field} in {r:#}");
    }
    let peers = proxy.peers();
    let want: BTreeMap<IpAddr, u64> = [
        ("127.0.0.2".parse().expect("literal"), 4),
        ("127.0.0.3".parse().expect("literal"), 4),
    ]
    .into();
    assert_eq!(peers, want, "8 clients round-robin over 2 source addresses");
    assert_eq!(proxy.state.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(proxy.state.publishes.load(Ordering::Relaxed), 1000);

    // Fan-out, MQTT 5: every subscriber gets every message of every publisher.
    let out = bench(
        node.mqtt_addr(),
        &[
            "fan-out",
            "--publishers",
            "2",
            "--subscribers",
            "3",
            "--qos",
            "1",
            "--count",
            "150",
            "--mqtt-version",
            "5",
        ],
    )
    .await;
    assert!(out.success(), "{}", out.describe());
    let r = report(&out);
    for (field, want) in [
        ("sent", 300),
        ("expected", 900),
        ("received", 900),
        ("lost", 0),
        ("duplicates", 0),
    ] {
        assert_eq!(num(&r, field), want, "{field} in {r:#}");
    }
    drop(proxy);
    node.shutdown().await;
}

/// Fan-in through a proxy that swallows every 50th PUBLISH on its way to the subscriber.
async fn run_with_swallowed_publishes(qos: &str) -> (Output, u64) {
    let node = TestNode::start().await;
    let proxy = Proxy::start(node.mqtt_addr(), 50).await;
    let out = bench(
        proxy.addr,
        &[
            "fan-in",
            "--publishers",
            "2",
            "--subscribers",
            "1",
            "--qos",
            qos,
            "--count",
            "300",
            "--drain",
            "3",
        ],
    )
    .await;
    let dropped = proxy.state.dropped.load(Ordering::Relaxed);
    drop(proxy);
    node.shutdown().await;
    (out, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_loss_is_detected_and_fails_the_run() {
    let (out, dropped) = run_with_swallowed_publishes("1").await;
    assert_eq!(dropped, 12, "600 deliveries, every 50th swallowed");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("12 QoS 1 messages lost"),
        "{}",
        out.describe()
    );
    let r = report(&out);
    assert_eq!(num(&r, "sent"), 600, "{r:#}");
    assert_eq!(num(&r, "lost"), dropped, "{r:#}");
    assert_eq!(num(&r, "received"), 600 - dropped, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_loss_is_counted_but_allowed() {
    let (out, dropped) = run_with_swallowed_publishes("0").await;
    assert_eq!(dropped, 12);
    assert!(out.success(), "{}", out.describe());
    let r = report(&out);
    assert_eq!(num(&r, "lost"), dropped, "{r:#}");
    assert_eq!(num(&r, "received"), 600 - dropped, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_counts_every_connection() {
    let node = TestNode::start().await;
    let out = bench(
        node.mqtt_addr(),
        &[
            "connect-storm",
            "--clients",
            "400",
            "--connect-concurrency",
            "32",
            "--source-addrs",
            "127.0.0.1-127.0.0.4",
        ],
    )
    .await;
    assert!(out.success(), "{}", out.describe());
    let r = report(&out);
    assert_eq!(r["scenario"], "connect-storm");
    let c = &r["connections"];
    assert_eq!(num(c, "clients"), 400, "{r:#}");
    assert_eq!(num(c, "connected"), 400, "{r:#}");
    assert_eq!(num(c, "failed"), 0, "{r:#}");
    assert_eq!(num(c, "source_addrs"), 4, "{r:#}");
    assert_eq!(num(c, "connect_latency.samples"), 400, "{r:#}");
    assert!(
        c["connects_per_sec"].as_f64().is_some_and(|v| v > 0.0),
        "{r:#}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_against_a_closed_port_fails() {
    // A port that was just free: bind, note it, release it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let out = bench(closed, &["connect-storm", "--clients", "20"]).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let r = report(&out);
    let c = &r["connections"];
    assert_eq!(num(c, "connected"), 0, "{r:#}");
    assert_eq!(num(c, "failed"), 20, "{r:#}");
    assert!(
        out.stderr.contains("20 of 20 connections failed"),
        "{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_up_with_keep_alive_pings() {
    let node = TestNode::start().await;
    // Keep-alive 2 s: the broker closes a connection that is silent for 3 s, so holding
    // 4 s only passes if the clients ping.
    let pid = std::process::id().to_string();
    let out = bench(
        node.mqtt_addr(),
        &[
            "idle",
            "--clients",
            "300",
            "--duration",
            "4",
            "--keep-alive",
            "2",
            "--broker-pid",
            &pid,
        ],
    )
    .await;
    assert!(out.success(), "{}", out.describe());
    let r = report(&out);
    assert_eq!(r["scenario"], "idle");
    let c = &r["connections"];
    assert_eq!(num(c, "connected"), 300, "{r:#}");
    assert_eq!(num(c, "still_connected"), 300, "{r:#}");
    assert_eq!(num(c, "dropped"), 0, "{r:#}");
    assert!(num(c, "pongs_received") >= 3 * 300, "{r:#}");
    assert!(num(c, "pings_sent") >= num(c, "pongs_received"), "{r:#}");
    assert!(c["held_secs"].as_f64().is_some_and(|s| s >= 4.0), "{r:#}");
    assert!(c["broker_kib_per_connection"].is_number(), "{r:#}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_connections_the_broker_side_cuts() {
    let node = TestNode::start().await;
    let proxy = Proxy::start(node.mqtt_addr(), 0).await;
    let target = proxy.addr;
    let run = tokio::spawn(async move {
        bench(
            target,
            &[
                "idle",
                "--clients",
                "40",
                "--duration",
                "8",
                "--source-addrs",
                "127.0.0.2-127.0.0.5",
            ],
        )
        .await
    });
    // Once every client has its CONNACK, cut them all.
    let st = proxy.state.clone();
    assert!(
        wait_until(Duration::from_secs(15), || st
            .connacks
            .load(Ordering::Relaxed)
            == 40)
        .await,
        "40 CONNACKs through the proxy"
    );
    let _ = proxy.cut.send(true);
    let out = run.await.expect("bench task");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let r = report(&out);
    let c = &r["connections"];
    assert_eq!(num(c, "connected"), 40, "{r:#}");
    assert_eq!(num(c, "dropped"), 40, "{r:#}");
    assert_eq!(num(c, "still_connected"), 0, "{r:#}");
    assert!(
        out.stderr.contains("40 connections dropped"),
        "{}",
        out.describe()
    );
    let peers = proxy.peers();
    assert_eq!(peers.len(), 4, "{peers:?}");
    assert!(peers.values().all(|&n| n == 10), "{peers:?}");
    drop(proxy);
    node.shutdown().await;
}
