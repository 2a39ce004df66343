//! A bad link between two nodes: each node advertises a `UdpRelay` in front of its QUIC
//! port, so all traffic between them crosses the relays, which the tests pause or delay.
//! QoS 1 messages published while the link is cut arrive once it is back (resent from the
//! forwarding backlog), each exactly once; with 80 ms added each way the cluster keeps
//! forwarding, and the test prints the added latency.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::{free_udp_port, TestCluster};
use tern_tests::relay::UdpRelay;

const FORM: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

/// Two nodes (node 0 the only voter) whose links run through one relay per node.
async fn relayed_pair() -> (TestCluster, [UdpRelay; 2]) {
    let ports = [free_udp_port(), free_udp_port()];
    let relays = [
        UdpRelay::start("127.0.0.1:0".parse().expect("literal"), ports[0])
            .await
            .expect("relay 0"),
        UdpRelay::start("127.0.0.1:0".parse().expect("literal"), ports[1])
            .await
            .expect("relay 1"),
    ];
    let advertised = [relays[0].local_addr(), relays[1].local_addr()];
    let cluster = TestCluster::start_with(2, 1, |id, c| {
        let i = usize::try_from(id).expect("small");
        c.listen = ports[i];
        c.advertise = advertised[i].to_string();
        if id != 0 {
            c.seeds = vec![format!("0@{}", advertised[0])];
        }
        // Notice a dead link within a second and redial quickly.
        c.transport.keep_alive_interval_ms = 200;
        c.transport.max_idle_timeout_ms = 1_000;
        c.transport.handshake_timeout_ms = 1_000;
        c.transport.redial_initial_backoff_ms = 50;
        c.transport.redial_max_backoff_ms = 300;
    })
    .await;
    assert!(cluster.wait_formed(1, FORM).await, "two nodes, one voter");
    (cluster, relays)
}

fn link_up(s: &tern_cluster::ClusterStatus, peer: u64) -> bool {
    s.links.iter().any(|l| l.node_id == peer && l.connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_published_during_a_cut_link_arrive_once_after_it_heals() {
    let (cluster, relays) = relayed_pair().await;
    let mut sub = RawClient::v5(cluster.node(1).mqtt_addr, "far-sub").await;
    sub.subscribe("lk/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_status(0, SETTLE, |s| s.route_count >= 1).await,
        "node 0 knows node 1's route"
    );
    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "near-pub").await;
    publisher
        .publish("lk/warm", "warm", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&sub.recv_publishes(1).await[0].payload), "warm");
    // Its acknowledgement travels back on its own: wait for it, or it would be counted in
    // the backlog below.
    assert!(
        cluster
            .wait_status(0, SETTLE, |s| s
                .links
                .iter()
                .any(|l| l.node_id == 1 && l.backlog == 0))
            .await,
        "node 1 acknowledged the warm-up message"
    );
    // Whichever node dialled, the link runs through a relay.
    let before: Vec<_> = relays.iter().map(|r| r.control().stats()).collect();
    assert!(
        before
            .iter()
            .any(|s| s.to_upstream.forwarded > 0 && s.to_downstream.forwarded > 0),
        "nodes 0 and 1 talk through the relays: {before:?}"
    );

    for r in &relays {
        r.control().pause();
    }
    const N: usize = 50;
    for i in 0..N {
        publisher
            .publish("lk/a", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    assert!(
        cluster.wait_status(0, SETTLE, |s| !link_up(s, 1)).await,
        "node 0 notices the cut link (idle timeout)"
    );
    let cut = cluster.node(0).cluster.status().await;
    let pending = cut
        .links
        .iter()
        .find(|l| l.node_id == 1)
        .expect("link view");
    assert_eq!(
        pending.backlog, N,
        "the {N} messages wait in the backlog: {pending:?}"
    );
    for r in &relays {
        r.control().resume();
    }
    let got = sub.recv_publishes(N).await;
    let order: Vec<usize> = got
        .iter()
        .map(|p| text(&p.payload).parse().expect("number"))
        .collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "all, once, in order");
    publisher
        .publish("lk/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(extra.is_empty(), "duplicates after the heal: {extra:?}");
    assert!(
        cluster
            .wait_status(0, SETTLE, |s| s.links.iter().any(|l| l.node_id == 1
                && l.connected
                && l.backlog == 0
                && l.unacked == 0))
            .await,
        "everything acknowledged"
    );
    let healed = cluster.node(0).cluster.status().await;
    let link = healed
        .links
        .iter()
        .find(|l| l.node_id == 1)
        .expect("link view");
    assert!(
        link.resent_total >= N as u64,
        "the unacknowledged messages were resent: {link:?}"
    );
    eprintln!(
        "link 0->1 after the heal: {:?}; relay stats {:?}",
        healed.links,
        relays
            .iter()
            .map(|r| r.control().stats())
            .collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}

/// Publishes `n` QoS 1 messages one at a time and returns each one's publish→receive time.
async fn latencies(
    publisher: &mut RawClient,
    sub: &mut RawClient,
    tag: &str,
    n: usize,
    seen: &mut BTreeSet<String>,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("{tag}-{i}");
        let start = Instant::now();
        publisher
            .publish("lat/x", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publishes(1).await.remove(0);
        out.push(start.elapsed());
        assert_eq!(text(&p.payload), payload);
        assert!(seen.insert(payload), "duplicate");
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_keeps_working_with_80ms_added_each_way() {
    let (cluster, relays) = relayed_pair().await;
    let mut sub = RawClient::v5(cluster.node(1).mqtt_addr, "lat-sub").await;
    sub.subscribe("lat/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_status(0, SETTLE, |s| s.route_count >= 1).await,
        "node 0 knows node 1's route"
    );
    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "lat-pub").await;
    let mut seen = BTreeSet::new();
    const N: usize = 20;
    let base = latencies(&mut publisher, &mut sub, "base", N, &mut seen).await;
    for r in &relays {
        r.control().set_delay(Duration::from_millis(80));
    }
    let slow = latencies(&mut publisher, &mut sub, "slow", N, &mut seen).await;
    let (b, s) = (base[N / 2], slow[N / 2]);
    eprintln!(
        "publish->receive median: {b:?} without delay, {s:?} with 80 ms each way: +{:?} \
         (min {:?} -> {:?}, max {:?} -> {:?})",
        s.saturating_sub(b),
        base[0],
        slow[0],
        base[N - 1],
        slow[N - 1]
    );
    assert!(
        s >= b + Duration::from_millis(70),
        "the forwarded path crosses the relay, one way: {b:?} -> {s:?}"
    );
    // Still working, counted: a burst under the delay.
    for i in 0..100 {
        publisher
            .publish("lat/burst", format!("burst-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let got = sub.recv_publishes(100).await;
    for p in &got {
        assert!(seen.insert(text(&p.payload)), "duplicate {p:?}");
    }
    assert_eq!(seen.len(), 2 * N + 100);
    let status = cluster.node(0).cluster.status().await;
    eprintln!("links of node 0 under delay: {:?}", status.links);
    cluster.shutdown().await;
}
