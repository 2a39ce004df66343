//! End-to-end runs of the load generator against a tiny in-test MQTT broker that can drop
//! or duplicate messages on purpose, to check that every scenario runs and that loss and
//! duplicates are counted exactly. (Runs against Tern itself live with the server, which
//! depends on this crate and not the other way round.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tern_bench::{BenchArgs, BenchError, BenchReport};
use tern_codec::{
    decode, encode, ConnAck, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, SubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Acknowledge but do not route every n-th publish.
    DropEvery(u64),
    /// Route every n-th publish twice.
    DuplicateEvery(u64),
}

struct Sub {
    filter: String,
    group: Option<String>,
    qos: QoS,
    tx: mpsc::UnboundedSender<(String, Bytes, QoS)>,
}

struct Broker {
    subs: Mutex<Vec<Sub>>,
    fault: Fault,
    publishes: AtomicU64,
    round_robin: AtomicU64,
}

fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (None, None) => return true,
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

impl Broker {
    fn route(&self, topic: &str, payload: &Bytes, qos: QoS) {
        let n = self.publishes.fetch_add(1, Ordering::Relaxed) + 1;
        let copies = match self.fault {
            Fault::DropEvery(k) if n.checked_rem(k) == Some(0) => 0,
            Fault::DuplicateEvery(k) if n.checked_rem(k) == Some(0) => 2,
            _ => 1,
        };
        let subs = self.subs.lock().unwrap();
        let mut groups: Vec<&str> = Vec::new();
        for s in subs.iter().filter(|s| matches(&s.filter, topic)) {
            match &s.group {
                None => {
                    for _ in 0..copies {
                        let _ =
                            s.tx.send((topic.to_owned(), payload.clone(), qos.min(s.qos)));
                    }
                }
                Some(g) if !groups.contains(&g.as_str()) => groups.push(g),
                Some(_) => {}
            }
        }
        for g in groups {
            let members: Vec<&Sub> = subs
                .iter()
                .filter(|s| s.group.as_deref() == Some(g) && matches(&s.filter, topic))
                .collect();
            let i = self.round_robin.fetch_add(1, Ordering::Relaxed) as usize % members.len();
            for _ in 0..copies {
                let s = members[i];
                let _ =
                    s.tx.send((topic.to_owned(), payload.clone(), qos.min(s.qos)));
            }
        }
    }
}

async fn connection(broker: Arc<Broker>, mut stream: TcpStream) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut rbuf = BytesMut::with_capacity(64 << 10);
    let mut wbuf = BytesMut::new();
    let mut version: Option<ProtocolVersion> = None;
    let mut next_id: u16 = 0;
    loop {
        tokio::select! {
            r = stream.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    let p = match decode(&mut rbuf, version, 1 << 20) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => panic!("fake broker: bad packet: {e}"),
                    };
                    let reply = match p {
                        Packet::Connect(c) => {
                            version = Some(c.protocol);
                            Some(Packet::ConnAck(ConnAck {
                                session_present: false,
                                reason: ReasonCode::SUCCESS,
                                properties: Default::default(),
                            }))
                        }
                        Packet::Subscribe(s) => {
                            let mut reasons = Vec::new();
                            for f in s.filters {
                                let (group, filter) = match f.filter.strip_prefix("$share/") {
                                    Some(rest) => {
                                        let (g, f) = rest.split_once('/').unwrap();
                                        (Some(g.to_owned()), f.to_owned())
                                    }
                                    None => (None, f.filter.clone()),
                                };
                                broker.subs.lock().unwrap().push(Sub {
                                    filter,
                                    group,
                                    qos: f.options.qos,
                                    tx: tx.clone(),
                                });
                                reasons.push(ReasonCode(f.options.qos as u8));
                            }
                            Some(Packet::SubAck(SubAck { packet_id: s.packet_id, reasons, properties: Default::default() }))
                        }
                        Packet::Publish(p) => {
                            broker.route(&p.topic, &p.payload, p.qos);
                            match p.qos {
                                QoS::AtMostOnce => None,
                                QoS::AtLeastOnce => Some(Packet::PubAck(PubResponse::new(p.packet_id))),
                                QoS::ExactlyOnce => Some(Packet::PubRec(PubResponse::new(p.packet_id))),
                            }
                        }
                        Packet::PubRel(r) => Some(Packet::PubComp(PubResponse::new(r.packet_id))),
                        Packet::PubRec(r) => Some(Packet::PubRel(PubResponse::new(r.packet_id))),
                        Packet::PubAck(_) | Packet::PubComp(_) => None,
                        Packet::PingReq => Some(Packet::PingResp),
                        Packet::Disconnect(_) => return,
                        other => panic!("fake broker: unexpected {}", other.name()),
                    };
                    if let Some(r) = reply {
                        encode(&r, version.unwrap_or(ProtocolVersion::V311), &mut wbuf).unwrap();
                    }
                }
            }
            Some((topic, payload, qos)) = rx.recv() => {
                let mut packet_id = 0;
                if qos != QoS::AtMostOnce {
                    next_id = next_id.wrapping_add(1).max(1);
                    packet_id = next_id;
                }
                let p = Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic,
                    packet_id,
                    payload,
                    properties: Default::default(),
                });
                encode(&p, version.unwrap_or(ProtocolVersion::V311), &mut wbuf).unwrap();
                while let Ok((topic, payload, qos)) = rx.try_recv() {
                    let mut packet_id = 0;
                    if qos != QoS::AtMostOnce {
                        next_id = next_id.wrapping_add(1).max(1);
                        packet_id = next_id;
                    }
                    let p = Packet::Publish(Publish { dup: false, qos, retain: false, topic, packet_id, payload, properties: Default::default() });
                    encode(&p, version.unwrap_or(ProtocolVersion::V311), &mut wbuf).unwrap();
                }
            }
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}

async fn start(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker = Arc::new(Broker {
        subs: Mutex::new(Vec::new()),
        fault,
        publishes: AtomicU64::new(0),
        round_robin: AtomicU64::new(0),
    });
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(connection(broker.clone(), s));
        }
    });
    addr
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

async fn bench(fault: Fault, args: &str) -> Result<BenchReport, BenchError> {
    let addr = start(fault).await;
    let target = addr.to_string();
    let mut argv = vec!["tern-bench"];
    argv.extend(args.split_whitespace());
    argv.extend(["--targets", &target, "--quiet", "--drain", "2"]);
    let cli = Cli::try_parse_from(argv).unwrap();
    tern_bench::run(cli.args).await
}

fn assert_clean(r: &BenchReport) {
    assert_eq!(r.received, r.expected, "{}", r.summary());
    assert_eq!(
        (r.lost, r.duplicates, r.unexpected, r.unacked),
        (0, 0, 0, 0),
        "{}",
        r.summary()
    );
    assert!(r.errors.is_empty(), "{}", r.summary());
    assert_eq!(r.latency.samples, r.expected, "{}", r.summary());
    assert!(r.latency.p50_us > 0.0 && r.latency.max_us >= r.latency.p99_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_qos1() {
    let r = bench(Fault::None, "fan-in --publishers 4 --qos 1 --count 2000")
        .await
        .unwrap();
    assert_eq!((r.sent, r.expected, r.acked), (8000, 8000, 8000));
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_qos2_v5() {
    let r = bench(
        Fault::None,
        "fan-out --subscribers 5 --qos 2 --mqtt-version 5 --count 500 --payload-size 20",
    )
    .await
    .unwrap();
    assert_eq!((r.sent, r.expected, r.acked), (500, 2500, 500));
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_qos0_single_topic_fan_in_and_rate() {
    let r = bench(
        Fault::None,
        "pairs --publishers 20 --count 300 --payload-size 1000",
    )
    .await
    .unwrap();
    assert_eq!(r.expected, 6000);
    assert_clean(&r);
    let r = bench(
        Fault::None,
        "fan-in --publishers 3 --single-topic --count 1000 --window 8",
    )
    .await
    .unwrap();
    assert_eq!(r.expected, 3000);
    assert_clean(&r);
    // A fixed rate for a short duration: about rate x duration each.
    let r = bench(
        Fault::None,
        "pairs --publishers 4 --rate 500 --duration 1 --warmup 0.2 --qos 1",
    )
    .await
    .unwrap();
    assert!(r.sent >= 4 * 450 && r.sent <= 4 * 650, "{}", r.summary());
    assert!(
        r.sent_per_sec > 1500.0 && r.sent_per_sec < 2500.0,
        "{}",
        r.summary()
    );
    assert_eq!(r.mode, "rate");
    assert_eq!(r.received, r.expected);
    assert_eq!(r.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_gets_each_message_once() {
    let r = bench(
        Fault::None,
        "shared --publishers 4 --subscribers 3 --qos 1 --count 1000",
    )
    .await
    .unwrap();
    assert_eq!(r.expected, 4000);
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_at_qos1_fails_the_run_with_the_exact_count() {
    let err = bench(
        Fault::DropEvery(100),
        "fan-out --subscribers 3 --qos 1 --count 1000",
    )
    .await
    .unwrap_err();
    let BenchError::Delivery(r) = &err else {
        panic!("expected a delivery failure, got {err}")
    };
    // 10 of 1000 publishes dropped, each worth 3 deliveries.
    assert_eq!(r.lost, 30, "{}", r.summary());
    assert_eq!(r.received, 2970);
    assert_eq!(r.duplicates, 0);
    assert!(err.to_string().contains("30 QoS 1 messages lost"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_at_qos0_is_reported_but_allowed() {
    // Closed loop at QoS 0: the lost messages never reach the subscriber, the publisher's
    // end-to-end window stalls and is written off.
    let r = bench(
        Fault::DropEvery(50),
        "fan-in --publishers 2 --count 500 --e2e-window 4",
    )
    .await
    .unwrap();
    assert_eq!(r.lost, 20, "{}", r.summary());
    assert_eq!(r.received, 980);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_fail_qos2_only() {
    let err = bench(
        Fault::DuplicateEvery(10),
        "pairs --publishers 2 --qos 2 --count 500",
    )
    .await
    .unwrap_err();
    let BenchError::Delivery(r) = &err else {
        panic!("expected a delivery failure, got {err}")
    };
    assert_eq!((r.duplicates, r.lost), (100, 0), "{}", r.summary());
    assert_eq!(r.received, 1100);

    let r = bench(
        Fault::DuplicateEvery(10),
        "pairs --publishers 2 --qos 1 --count 500",
    )
    .await
    .unwrap();
    assert_eq!((r.duplicates, r.lost), (100, 0), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_setup_error() {
    // Bind and drop a listener so the port is (almost certainly) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let target = addr.to_string();
    let cli = Cli::try_parse_from([
        "tern-bench",
        "fan-in",
        "--targets",
        &target,
        "--quiet",
        "--count",
        "1",
    ])
    .unwrap();
    let err = tern_bench::run(cli.args).await.unwrap_err();
    assert!(matches!(err, BenchError::Connect { .. }), "{err}");
    assert!(err.report().is_none());
}
