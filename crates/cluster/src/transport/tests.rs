//! Transports talking to each other over 127.0.0.1. Every wait is on a condition with a
//! deadline, never a sleep for a guessed duration.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::tls::{generate_ca, issue_node_cert, CaBundle};
use super::*;
use crate::types::{NodeId, NodeInfo};

const WAIT: Duration = Duration::from_secs(10);
const ECHO: u8 = 1;
const FAIL: u8 = 2;
const STALL: u8 = 3;

fn settings() -> TransportConfig {
    TransportConfig {
        handshake_timeout_ms: 2_000,
        redial_initial_backoff_ms: 20,
        redial_max_backoff_ms: 200,
        ..Default::default()
    }
}

fn identity(ca: &CaBundle, id: NodeId) -> TlsIdentity {
    let cert = issue_node_cert(ca, id, &["localhost".into()]).expect("node cert");
    TlsIdentity::from_bundle(ca, &cert).expect("identity")
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn info(region: &str) -> NodeInfo {
    NodeInfo {
        cluster_addr: String::new(),
        region: region.into(),
    }
}

/// A node with the echo, failing and stalling handlers installed.
fn node_at(ca: &CaBundle, id: NodeId, addr: SocketAddr) -> Result<Transport, TransportError> {
    let t = Transport::bind(settings(), &identity(ca, id), id, addr, info("test"))?;
    t.set_request_handler(ECHO, move |from, body: Bytes| async move {
        let mut out = format!("{id}<-{from}:").into_bytes();
        out.extend_from_slice(&body);
        Ok(Bytes::from(out))
    });
    t.set_request_handler(FAIL, |_, _| async { Err("handler says no".to_string()) });
    t.set_request_handler(STALL, |_, _| std::future::pending());
    Ok(t)
}

fn node(ca: &CaBundle, id: NodeId) -> Transport {
    node_at(ca, id, any_port()).expect("bind")
}

fn addr(t: &Transport) -> SocketAddr {
    t.local_addr().expect("local addr")
}

async fn echo(from: &Transport, to: NodeId, body: &'static str) -> Result<String, TransportError> {
    let answer = from
        .request(to, ECHO, Bytes::from_static(body.as_bytes()), WAIT)
        .await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Polls `cond` until it holds or `WAIT` passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn recv_frames(rx: &mut mpsc::Receiver<IncomingFrame>, n: usize) -> Vec<IncomingFrame> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(f)) => out.push(f),
            Ok(None) => panic!("incoming channel closed"),
            Err(_) => panic!("got {} of {n} frames", out.len()),
        }
    }
    out
}

#[tokio::test]
async fn two_nodes_exchange_requests_both_ways() {
    let ca = generate_ca().expect("ca");
    let (a, b) = (node(&ca, 1), node(&ca, 2));
    a.connect(2, addr(&b)).await.expect("connect");
    assert_eq!(echo(&a, 2, "hi").await.expect("a->b"), "2<-1:hi");
    // b never dialled a, but the link serves both directions.
    b.wait_connected(1, WAIT).await.expect("b sees the link");
    assert_eq!(echo(&b, 1, "yo").await.expect("b->a"), "1<-2:yo");

    let err = a
        .request(2, FAIL, Bytes::new(), WAIT)
        .await
        .expect_err("fails");
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message == "handler says no"),
        "{err}"
    );
    let err = a
        .request(2, 99, Bytes::new(), WAIT)
        .await
        .expect_err("no handler");
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message.contains("no handler")),
        "{err}"
    );
    let err = a
        .request(2, STALL, Bytes::new(), Duration::from_millis(200))
        .await
        .expect_err("stalls");
    assert!(matches!(err, TransportError::Timeout { peer: 2 }), "{err}");
    assert!(!err.is_unreachable());

    // Many concurrent requests share the link.
    let answers = futures_join((0..50).map(|i| {
        let a = a.clone();
        async move {
            let body = Bytes::from(format!("{i}"));
            a.request(2, ECHO, body, WAIT).await
        }
    }))
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer.expect("concurrent"),
            Bytes::from(format!("2<-1:{i}"))
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Runs futures concurrently on the current task set and returns their outputs in order.
async fn futures_join<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn lanes_keep_order_per_lane_in_both_directions() {
    let ca = generate_ca().expect("ca");
    let (a, b) = (node(&ca, 1), node(&ca, 2));
    let mut a_rx = a.take_incoming().expect("a incoming");
    let mut b_rx = b.take_incoming().expect("b incoming");
    assert!(a.take_incoming().is_none(), "taken once");
    a.connect(2, addr(&b)).await.expect("connect");
    b.wait_connected(1, WAIT).await.expect("b sees the link");

    const N: u32 = 500;
    let senders: Vec<_> = [3u8, 5, 200]
        .into_iter()
        .map(|lane| {
            let tx = a.send_stream(2, lane);
            tokio::spawn(async move {
                for i in 0..N {
                    tx.send(Bytes::from(i.to_be_bytes().to_vec()))
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    let frames = recv_frames(&mut b_rx, 3 * N as usize).await;
    for lane in [3u8, 5, 200] {
        let seq: Vec<u32> = frames
            .iter()
            .filter(|f| f.lane == lane)
            .map(|f| {
                assert_eq!(f.from, 1);
                u32::from_be_bytes(f.frame[..].try_into().expect("4 bytes"))
            })
            .collect();
        assert_eq!(seq, (0..N).collect::<Vec<_>>(), "lane {lane} in order");
    }

    // Acks go back the same way.
    let ack = b.send_stream(1, 3);
    ack.send(Bytes::from_static(b"ack 0..500"))
        .await
        .expect("ack");
    let got = recv_frames(&mut a_rx, 1).await;
    assert_eq!(
        got[0],
        IncomingFrame {
            from: 2,
            link: got[0].link,
            lane: 3,
            frame: Bytes::from_static(b"ack 0..500")
        }
    );

    // No link: the sender is told at once.
    let err = a
        .send_stream(9, 0)
        .send(Bytes::new())
        .await
        .expect_err("no peer");
    assert!(err.is_unreachable(), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn three_nodes_dialling_each_other_keep_one_link_per_pair() {
    let ca = generate_ca().expect("ca");
    let nodes = [node(&ca, 1), node(&ca, 2), node(&ca, 3)];
    let addrs: Vec<_> = nodes.iter().map(addr).collect();
    // Everyone dials everyone at once: duplicates must resolve the same way on both ends.
    let mut dials = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for (j, &peer_addr) in addrs.iter().enumerate() {
            if i != j {
                let n = n.clone();
                dials.push(tokio::spawn(async move {
                    // A dial may lose to the peer's own dial; the link still comes up.
                    let _ = n.connect(j as NodeId + 1, peer_addr).await;
                    n.wait_connected(j as NodeId + 1, WAIT).await
                }));
            }
        }
    }
    for d in dials {
        d.await.expect("task").expect("link up");
    }
    for (i, n) in nodes.iter().enumerate() {
        let me = i as NodeId + 1;
        for peer in (1..=3).filter(|&p| p != me) {
            let other = &nodes[peer as usize - 1];
            eventually("the lower id's link is kept on both ends", || {
                let mine = n.link(peer).and_then(|l| l.initiated_locally);
                let theirs = other.link(me).and_then(|l| l.initiated_locally);
                mine == Some(me < peer) && theirs == Some(peer < me)
            })
            .await;
            let expected = format!("{peer}<-{me}:x");
            assert_eq!(echo(n, peer, "x").await.expect("rpc"), expected);
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = generate_ca().expect("ca");
    let other_ca = generate_ca().expect("other ca");
    let a = node(&ca, 1);
    let stranger = node(&other_ca, 2);
    let err = a
        .connect(2, addr(&stranger))
        .await
        .expect_err("stranger's server cert");
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    let err = stranger
        .connect(1, addr(&a))
        .await
        .expect_err("stranger's client cert");
    assert!(err.is_unreachable(), "{err}");
    assert!(!a.link(2).is_some_and(|l| l.connected));

    // The accept loop survived the bad peer.
    let b = node(&ca, 3);
    b.connect(1, addr(&a))
        .await
        .expect("good peer still accepted");
    assert_eq!(echo(&b, 1, "ok").await.expect("rpc"), "1<-3:ok");
    for t in [a, stranger, b] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn an_incompatible_protocol_version_is_refused() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    let future = Transport::bind_with(
        settings(),
        &identity(&ca, 2),
        2,
        any_port(),
        info("x"),
        |h| {
            h.protocol_version = 9;
            h.min_compatible = 8;
        },
    )
    .expect("bind");
    // The future node dials: the acceptor refuses and says why.
    let err = future
        .connect(1, addr(&a))
        .await
        .expect_err("refused by acceptor");
    match &err {
        TransportError::Refused { reason, .. } => {
            assert!(reason.contains("protocol versions 8..=9"), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    // This node dials the future one: refused the other way round.
    let err = a
        .connect(2, addr(&future))
        .await
        .expect_err("refused by dialler");
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    assert!(!a.link(2).is_some_and(|l| l.connected));
    a.shutdown().await;
    future.shutdown().await;
}

#[tokio::test]
async fn a_node_id_that_does_not_match_the_certificate_is_refused() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    // Holds node 2's certificate but claims to be node 5.
    let liar = Transport::bind_with(
        settings(),
        &identity(&ca, 2),
        2,
        any_port(),
        info("x"),
        |h| {
            h.node_id = 5;
        },
    )
    .expect("bind");
    let err = liar.connect(1, addr(&a)).await.expect_err("refused");
    match &err {
        TransportError::Refused { reason, .. } => {
            assert!(reason.contains("certificate is for node 2"), "{reason}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    assert!(a.link(5).is_none() && a.link(2).is_none());

    // Dialling an address as the wrong node is refused by the dialler.
    let b = node(&ca, 2);
    let err = a
        .connect(7, addr(&b))
        .await
        .expect_err("wrong node at that address");
    assert!(
        matches!(&err, TransportError::Refused { reason, .. } if reason.contains("certificate is for node 2")),
        "{err}"
    );
    for t in [a, liar, b] {
        t.shutdown().await;
    }
}

/// Binds node `id` on `addr` again. The old socket is released once the old endpoint's
/// driver task has finished, which is soon but not synchronous with the drop.
async fn rebind(ca: &CaBundle, id: NodeId, addr: SocketAddr) -> Transport {
    let deadline = Instant::now() + WAIT;
    loop {
        match node_at(ca, id, addr) {
            Ok(t) => return t,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn dropping_the_last_handle_closes_links_and_frees_the_port() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    let a_addr = addr(&a);
    let b = node(&ca, 2);
    b.connect(1, a_addr).await.expect("connect");
    let a2 = a.clone();
    drop(a);
    assert!(
        b.link(1).is_some_and(|l| l.connected),
        "a clone keeps it open"
    );
    drop(a2);
    eventually("b sees the link close", || {
        b.link(1).is_some_and(|l| !l.connected)
    })
    .await;
    let a = rebind(&ca, 1, a_addr).await;
    b.wait_connected(1, WAIT).await.expect("b redials");
    assert_eq!(echo(&b, 1, "again").await.expect("rpc"), "1<-2:again");
    a.shutdown().await;
    b.shutdown().await;
}

/// A link settles on the highest version both ends offer, and a frame that needs more
/// than the link speaks is refused before it is written (the sender then re-encodes).
#[tokio::test]
async fn a_link_speaks_the_highest_common_version_and_refuses_frames_above_it() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    let old = TransportConfig {
        protocol_version: MIN_COMPATIBLE_VERSION,
        ..settings()
    };
    let b = Transport::bind(old, &identity(&ca, 2), 2, any_port(), info("x")).expect("bind");
    let c = node(&ca, 3);
    let mut b_rx = b.take_incoming().expect("b incoming");
    let mut c_rx = c.take_incoming().expect("c incoming");
    a.connect(2, addr(&b)).await.expect("connect b");
    a.connect(3, addr(&c)).await.expect("connect c");
    assert_eq!(a.link(2).and_then(|l| l.protocol_version), Some(1));
    assert_eq!(
        a.link(3).and_then(|l| l.protocol_version),
        Some(PROTOCOL_VERSION)
    );
    assert_eq!(a.link_connection(2).and_then(|l| l.version), Some(1));

    let frame = |body: &[u8], needs: u16| {
        let mut f = LaneFrame::with_capacity(body.len());
        f.body_mut().extend_from_slice(body);
        f.require_version(needs);
        f
    };
    let err = a
        .send_stream(2, 0)
        .send_frame(frame(b"new", PROTOCOL_VERSION))
        .await
        .expect_err("too new for b");
    assert!(err.to_string().contains("protocol version 1"), "{err}");
    a.send_stream(2, 0)
        .send_frame(frame(b"old", 1))
        .await
        .expect("b reads version 1");
    a.send_stream(3, 0)
        .send_frame(frame(b"new", PROTOCOL_VERSION))
        .await
        .expect("c reads version 2");
    assert_eq!(
        recv_frames(&mut b_rx, 1).await[0].frame,
        Bytes::from_static(b"old")
    );
    assert_eq!(
        recv_frames(&mut c_rx, 1).await[0].frame,
        Bytes::from_static(b"new")
    );
    for t in [a, b, c] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_peer_is_redialled_and_traffic_resumes() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    let b = node(&ca, 2);
    let b_addr = addr(&b);
    let mut b_rx = b.take_incoming().expect("incoming");
    a.connect(2, b_addr).await.expect("connect");
    let lane = a.send_stream(2, 1);
    lane.send(Bytes::from_static(b"before"))
        .await
        .expect("send");
    assert_eq!(
        recv_frames(&mut b_rx, 1).await[0].frame,
        Bytes::from_static(b"before")
    );

    b.shutdown().await;
    drop(b);
    eventually("a sees the link drop", || {
        a.link(2).is_some_and(|l| !l.connected)
    })
    .await;
    let err = echo(&a, 2, "gone").await.expect_err("b is down");
    assert!(err.is_unreachable(), "{err}");

    let b = rebind(&ca, 2, b_addr).await;
    let mut b_rx = b.take_incoming().expect("incoming");
    a.wait_connected(2, WAIT).await.expect("a redials");
    assert_eq!(echo(&a, 2, "back").await.expect("a->b"), "2<-1:back");
    assert_eq!(echo(&b, 1, "hello").await.expect("b->a"), "1<-2:hello");
    // The lane sender made before the restart reopens its stream on the new link.
    lane.send(Bytes::from_static(b"after")).await.expect("send");
    assert_eq!(
        recv_frames(&mut b_rx, 1).await[0].frame,
        Bytes::from_static(b"after")
    );
    assert!(a.link(2).expect("status").links_established >= 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// Several lanes of 60 KiB frames at once keep quinn's segmentation-offload batches full
/// of datagrams of the largest size allowed: every byte must arrive, in order, and path
/// MTU discovery must have raised the link above a 1,500-byte path's size (loopback
/// carries it). With datagrams over 6,550 bytes a full batch exceeded what one send may
/// carry, the kernel refused it, and this link stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_link_with_the_largest_datagrams_delivers_everything() {
    let ca = generate_ca().expect("ca");
    let big = TransportConfig {
        max_udp_payload: config::MAX_UDP_PAYLOAD_LIMIT,
        ..settings()
    };
    let bind = |id| {
        Transport::bind(big.clone(), &identity(&ca, id), id, any_port(), info("t")).expect("bind")
    };
    let (a, b) = (bind(1), bind(2));
    let mut b_rx = b.take_incoming().expect("b incoming");
    a.connect(2, addr(&b)).await.expect("connect");
    b.wait_connected(1, WAIT).await.expect("b sees the link");

    const FRAMES: u32 = 200;
    const LEN: usize = 60 * 1024;
    let lanes = [4u8, 6, 8, 10];
    let senders: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let tx = a.send_stream(2, lane);
            tokio::spawn(async move {
                for i in 0..FRAMES {
                    let mut frame = vec![lane; LEN];
                    frame[..4].copy_from_slice(&i.to_be_bytes());
                    tx.send(Bytes::from(frame)).await.expect("send");
                }
            })
        })
        .collect();
    let frames = recv_frames(&mut b_rx, lanes.len() * FRAMES as usize).await;
    for s in senders {
        s.await.expect("sender");
    }
    for lane in lanes {
        let seq: Vec<u32> = frames
            .iter()
            .filter(|f| f.lane == lane)
            .map(|f| {
                assert_eq!(f.frame.len(), LEN);
                assert!(
                    f.frame[4..].iter().all(|&x| x == lane),
                    "lane {lane} intact"
                );
                u32::from_be_bytes(f.frame[..4].try_into().expect("4 bytes"))
            })
            .collect();
        assert_eq!(seq, (0..FRAMES).collect::<Vec<_>>(), "lane {lane} in order");
    }
    let payload = a.link(2).and_then(|l| l.udp_payload).expect("link up");
    assert!(
        payload > 1_500 && payload <= config::MAX_UDP_PAYLOAD_LIMIT,
        "path MTU discovery reached {payload}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn link_state_shows_rtt_and_counters() {
    let ca = generate_ca().expect("ca");
    let (a, b) = (node(&ca, 1), node(&ca, 2));
    let b_info = NodeInfo {
        cluster_addr: String::new(),
        region: "test".into(),
    };
    a.connect(2, addr(&b)).await.expect("connect");
    for _ in 0..3 {
        echo(&a, 2, "ping").await.expect("rpc");
    }
    let status = a.link(2).expect("status");
    assert!(status.connected);
    assert_eq!(status.initiated_locally, Some(true));
    assert!(status.rtt.is_some());
    assert_eq!((status.frames_sent, status.frames_received), (3, 3));
    assert!(status.bytes_sent > 3 * 4 && status.bytes_received > 3 * 4);
    assert_eq!(status.addr, Some(addr(&b)));
    let peer_info = status.info.expect("info from Hello");
    assert_eq!(peer_info.region, b_info.region);
    assert_eq!(peer_info.cluster_addr, addr(&b).to_string());
    let on_b = b.link(1).expect("b's view");
    assert_eq!((on_b.frames_received, on_b.frames_sent), (3, 3));
    assert_eq!(on_b.addr, None, "b was never told a's address");
    assert_eq!(a.links().len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unknown_and_unreachable_peers_fail_fast() {
    let ca = generate_ca().expect("ca");
    let a = node(&ca, 1);
    let started = Instant::now();
    let err = echo(&a, 42, "anyone").await.expect_err("unknown peer");
    assert!(
        matches!(err, TransportError::Unreachable { peer: 42, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));

    // Nothing listens there: the dial gives up after the handshake timeout.
    let dead = {
        let socket = std::net::UdpSocket::bind(any_port()).expect("udp");
        socket.local_addr().expect("addr")
    };
    let started = Instant::now();
    let err = a.connect(5, dead).await.expect_err("nobody there");
    assert!(err.is_unreachable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Once a dial has failed, requests do not wait for the next attempt.
    let started = Instant::now();
    let err = echo(&a, 5, "still?").await.expect_err("down");
    assert!(
        matches!(err, TransportError::Unreachable { peer: 5, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(a.link(5).expect("status").failed_dials >= 1);

    a.remove_peer(5);
    assert!(a.link(5).is_none());
    assert!(
        a.connect(1, dead).await.is_err(),
        "a node cannot dial itself"
    );
    a.shutdown().await;
    let err = echo(&a, 2, "closed").await.expect_err("shut down");
    assert!(matches!(err, TransportError::Closed), "{err}");
}
