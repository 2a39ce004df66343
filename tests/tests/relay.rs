//! The test relay itself: a plain UDP echo behind it shows that it relays both ways, that
//! pausing drops everything until resumed, that delay adds latency, and that loss and
//! queue limits drop (and count) datagrams.

use std::net::SocketAddr;
use std::time::Duration;

use tern_tests::relay::{RelayStats, UdpRelay};
use tern_tests::wait_until;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(5);

/// Answers every datagram with the same bytes.
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = socket.local_addr().expect("echo address");
        let task = tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Self { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Setup {
    _echo: Echo,
    relay: UdpRelay,
    client: UdpSocket,
}

async fn setup() -> Setup {
    let echo = Echo::start().await;
    let relay = UdpRelay::start("127.0.0.1:0".parse().expect("literal"), echo.addr)
        .await
        .expect("relay starts");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    client.connect(relay.local_addr()).await.expect("connect");
    Setup {
        _echo: echo,
        relay,
        client,
    }
}

/// Sends `payload` and waits for its echo; returns the round-trip time.
async fn round_trip(client: &UdpSocket, payload: &[u8]) -> Duration {
    let start = Instant::now();
    client.send(payload).await.expect("send");
    let mut buf = [0; 1500];
    let len = timeout(WAIT, client.recv(&mut buf))
        .await
        .expect("echo arrives in time")
        .expect("recv");
    assert_eq!(&buf[..len], payload);
    start.elapsed()
}

fn assert_nothing_arrived(client: &UdpSocket) {
    let mut buf = [0; 1500];
    let res = client.try_recv(&mut buf);
    assert!(
        matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "unexpected datagram: {res:?}"
    );
}

async fn wait_for_stats(relay: &UdpRelay, what: &str, cond: impl Fn(RelayStats) -> bool) {
    let control = relay.control();
    assert!(
        wait_until(WAIT, || cond(control.stats())).await,
        "{what}: {:?}",
        control.stats()
    );
}

#[tokio::test]
async fn relays_both_ways_from_the_first_peer_only() {
    let s = setup().await;
    for i in 0..3u8 {
        round_trip(&s.client, &[i; 100]).await;
    }
    let stats = s.relay.control().stats();
    assert_eq!(stats.to_upstream.forwarded, 3);
    assert_eq!(stats.to_downstream.forwarded, 3);
    assert_eq!(s.relay.control().peer(), s.client.local_addr().ok());

    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    stranger
        .send_to(b"not yours", s.relay.local_addr())
        .await
        .expect("send");
    wait_for_stats(&s.relay, "stranger dropped", |st| {
        st.to_upstream.dropped == 1
    })
    .await;
    assert_eq!(s.relay.control().stats().to_upstream.forwarded, 3);
}

#[tokio::test]
async fn pause_drops_everything_until_resume() {
    let s = setup().await;
    let control = s.relay.control();
    round_trip(&s.client, b"before").await;

    control.pause();
    s.client.send(b"while paused").await.expect("send");
    wait_for_stats(&s.relay, "paused upstream", |st| {
        st.to_upstream.dropped == 1
    })
    .await;
    // The echo never saw it, so nothing can be on its way back.
    assert_nothing_arrived(&s.client);

    control.resume();
    round_trip(&s.client, b"after").await;
    assert_eq!(control.stats().to_upstream.forwarded, 2);
}

#[tokio::test]
async fn pause_also_drops_what_waits_in_the_delay_queue() {
    let s = setup().await;
    let control = s.relay.control();
    round_trip(&s.client, b"learn the peer").await;
    // The echo's reply will wait 300 ms in the downstream queue; pause while it does.
    control.set_delay(Duration::from_millis(300));
    s.client.send(b"echoed then paused").await.expect("send");
    wait_for_stats(&s.relay, "reached the echo", |st| {
        st.to_upstream.forwarded == 2
    })
    .await;
    control.pause();
    wait_for_stats(&s.relay, "reply dropped", |st| {
        st.to_downstream.dropped == 1
    })
    .await;
    assert_nothing_arrived(&s.client);
    control.resume();
    control.set_delay(Duration::ZERO);
    round_trip(&s.client, b"after").await;
}

#[tokio::test]
async fn delay_adds_latency_each_way() {
    let s = setup().await;
    let control = s.relay.control();
    round_trip(&s.client, b"warm up").await;

    let delay = Duration::from_millis(80);
    control.set_delay(delay);
    for _ in 0..3 {
        let rtt = round_trip(&s.client, b"slow").await;
        assert!(
            rtt >= delay * 2,
            "round trip {rtt:?} with {delay:?} each way"
        );
    }
    control.set_delay(Duration::ZERO);
    round_trip(&s.client, b"fast again").await;
}

#[tokio::test]
async fn delay_keeps_datagrams_in_order() {
    let s = setup().await;
    let control = s.relay.control();
    round_trip(&s.client, b"learn the peer").await;
    control.set_delay(Duration::from_millis(50));
    for i in 0..20u8 {
        s.client.send(&[i]).await.expect("send");
    }
    let mut buf = [0; 16];
    for i in 0..20u8 {
        let len = timeout(WAIT, s.client.recv(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!(&buf[..len], &[i]);
    }
}

#[tokio::test]
async fn drop_probability_one_loses_everything() {
    let s = setup().await;
    let control = s.relay.control();
    round_trip(&s.client, b"before").await;

    control.set_drop_probability(1.0);
    for i in 0..50u8 {
        s.client.send(&[i]).await.expect("send");
    }
    wait_for_stats(&s.relay, "all dropped", |st| st.to_upstream.dropped == 50).await;
    assert_eq!(control.stats().to_upstream.forwarded, 1);
    assert_nothing_arrived(&s.client);

    control.set_drop_probability(0.0);
    round_trip(&s.client, b"after").await;
}

#[tokio::test]
async fn drop_probability_half_loses_some() {
    let s = setup().await;
    let control = s.relay.control();
    control.set_drop_probability(0.5);
    for i in 0..200u8 {
        s.client.send(&[i]).await.expect("send");
    }
    wait_for_stats(&s.relay, "all accounted for", |st| {
        st.to_upstream.forwarded + st.to_upstream.dropped == 200
    })
    .await;
    let up = control.stats().to_upstream;
    // Outside 20..180 has a probability far below 1e-20.
    assert!((20..=180).contains(&up.dropped), "{up:?}");
}

#[tokio::test]
async fn a_full_delay_queue_drops_and_counts() {
    let echo = Echo::start().await;
    let relay =
        UdpRelay::start_with_queue_capacity("127.0.0.1:0".parse().expect("literal"), echo.addr, 4)
            .await
            .expect("relay starts");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.connect(relay.local_addr()).await.expect("connect");
    relay.control().set_delay(Duration::from_secs(30));
    for i in 0..10u8 {
        client.send(&[i]).await.expect("send");
    }
    // One is taken off the queue by the sending task and waits there; four are queued.
    wait_for_stats(&relay, "overflow dropped", |st| st.to_upstream.dropped >= 5).await;
    assert_eq!(relay.control().stats().to_upstream.forwarded, 0);
}

#[tokio::test]
async fn only_loopback_addresses() {
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("literal");
    let res = UdpRelay::start("0.0.0.0:0".parse().expect("literal"), upstream).await;
    assert!(res.is_err());
    let res = UdpRelay::start(
        "127.0.0.1:0".parse().expect("literal"),
        "192.0.2.1:9".parse().expect("literal"),
    )
    .await;
    assert!(res.is_err());
}
