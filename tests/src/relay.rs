//! A UDP relay that tests put between two QUIC endpoints (QUIC is UDP) to stand in for a
//! bad network, since tc/netem is not available here: pause a link, add latency as between
//! two regions, lose datagrams at random.
//!
//! The relay listens on a loopback port, takes the first address it hears from as its one
//! downstream peer, and relays datagrams between that peer and the upstream address. Each
//! direction has a timed FIFO queue: a datagram is due `delay` after it arrived and waits
//! behind those before it, so delay never reorders (changing the delay only makes later
//! datagrams wait behind earlier ones). The queues are bounded; what does not fit is
//! dropped and counted. Every drop is counted, per direction, so a test can wait for a
//! drop to have happened instead of sleeping and hoping.
//!
//! The relay's tasks stop when its [`UdpRelay`] is dropped, even if a [`RelayControl`]
//! clone lives on.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Datagrams each direction may hold while they wait out the delay.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Larger than any UDP datagram, so none is truncated.
const MAX_DATAGRAM: usize = 65_536;

/// A running relay. Dropping it stops its tasks and closes its sockets.
pub struct UdpRelay {
    local_addr: SocketAddr,
    control: RelayControl,
    tasks: Vec<JoinHandle<()>>,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub forwarded: u64,
    /// Paused, lost at random, queue full, or from an address other than the peer.
    pub dropped: u64,
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Downstream peer → upstream.
    pub to_upstream: DirectionStats,
    /// Upstream → downstream peer.
    pub to_downstream: DirectionStats,
}

/// Changes the relay's behaviour while it runs; cheap to clone.
#[derive(Clone)]
pub struct RelayControl {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

struct Shared {
    paused: AtomicBool,
    delay_micros: AtomicU64,
    /// An `f64` in [0, 1], as bits.
    drop_probability: AtomicU64,
    rng: AtomicU64,
    peer: OnceLock<SocketAddr>,
    to_upstream: Counters,
    to_downstream: Counters,
}

impl Shared {
    /// xorshift64*: plenty for simulated loss, and no dependency.
    fn next_unit(&self) -> f64 {
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or_else(|x| x);
        let out = step(prev).wrapping_mul(0x2545_f491_4f6c_dd1d);
        (out >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether a datagram arriving now is dropped on the way in.
    fn drops_now(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return true;
        }
        let p = f64::from_bits(self.drop_probability.load(Ordering::Relaxed));
        p > 0.0 && self.next_unit() < p
    }

    fn due(&self) -> Instant {
        Instant::now() + Duration::from_micros(self.delay_micros.load(Ordering::Relaxed))
    }
}

impl RelayControl {
    /// Drops everything, both directions, including datagrams already waiting in the
    /// delay queues, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// One-way latency added to each direction (a round trip gains twice this).
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_micros.store(micros, Ordering::Relaxed);
    }

    /// Probability in [0, 1] that a datagram is lost, each direction independently.
    pub fn set_drop_probability(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.shared
            .drop_probability
            .store(p.to_bits(), Ordering::Relaxed);
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_upstream: self.shared.to_upstream.snapshot(),
            to_downstream: self.shared.to_downstream.snapshot(),
        }
    }

    /// The downstream peer, once it has sent its first datagram.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.shared.peer.get().copied()
    }
}

fn loopback_only(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the test relay only uses loopback addresses, not {addr}"),
        ))
    }
}

type Queue = (
    mpsc::Sender<(Instant, Bytes)>,
    mpsc::Receiver<(Instant, Bytes)>,
);

impl UdpRelay {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and relays to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        Self::start_with_queue_capacity(listen, upstream, DEFAULT_QUEUE_CAPACITY).await
    }

    /// As [`start`](Self::start), holding at most `capacity` delayed datagrams per
    /// direction.
    pub async fn start_with_queue_capacity(
        listen: SocketAddr,
        upstream: SocketAddr,
        capacity: usize,
    ) -> io::Result<Self> {
        loopback_only(listen)?;
        loopback_only(upstream)?;
        let down = Arc::new(UdpSocket::bind(listen).await?);
        let up = Arc::new(UdpSocket::bind(SocketAddr::new(upstream.ip(), 0)).await?);
        up.connect(upstream).await?;
        let local_addr = down.local_addr()?;
        let shared = Arc::new(Shared {
            paused: AtomicBool::new(false),
            delay_micros: AtomicU64::new(0),
            drop_probability: AtomicU64::new(0f64.to_bits()),
            // Never zero, which xorshift would keep forever.
            rng: AtomicU64::new(RandomState::new().hash_one(local_addr) | 1),
            peer: OnceLock::new(),
            to_upstream: Counters::default(),
            to_downstream: Counters::default(),
        });
        let (up_tx, up_rx): Queue = mpsc::channel(capacity.max(1));
        let (down_tx, down_rx): Queue = mpsc::channel(capacity.max(1));
        let tasks = vec![
            tokio::spawn(receive_downstream(down.clone(), shared.clone(), up_tx)),
            tokio::spawn(receive_upstream(up.clone(), shared.clone(), down_tx)),
            tokio::spawn(send_upstream(up, shared.clone(), up_rx)),
            tokio::spawn(send_downstream(down, shared.clone(), down_rx)),
        ];
        Ok(Self {
            local_addr,
            control: RelayControl { shared },
            tasks,
        })
    }

    /// Where the downstream peer sends to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn control(&self) -> &RelayControl {
        &self.control
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Drops (and counts) or queues one arriving datagram.
fn admit(
    shared: &Shared,
    counters: &Counters,
    queue: &mpsc::Sender<(Instant, Bytes)>,
    data: Bytes,
) {
    if shared.drops_now() || queue.try_send((shared.due(), data)).is_err() {
        counters.drop_one();
    }
}

async fn receive_downstream(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    queue: mpsc::Sender<(Instant, Bytes)>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        // Errors on UDP (an ICMP "port unreachable" echo) concern one datagram: go on.
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let peer = *shared.peer.get_or_init(|| from);
        if from != peer {
            shared.to_upstream.drop_one();
            continue;
        }
        let data = Bytes::copy_from_slice(&buf[..len]);
        admit(&shared, &shared.to_upstream, &queue, data);
    }
}

async fn receive_upstream(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    queue: mpsc::Sender<(Instant, Bytes)>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let Ok(len) = socket.recv(&mut buf).await else {
            continue;
        };
        if shared.peer.get().is_none() {
            // Nobody to relay to yet.
            shared.to_downstream.drop_one();
            continue;
        }
        let data = Bytes::copy_from_slice(&buf[..len]);
        admit(&shared, &shared.to_downstream, &queue, data);
    }
}

/// Waits until a queued datagram is due; `None` if it must be dropped (paused meanwhile).
async fn when_due(shared: &Shared, due: Instant) -> Option<()> {
    tokio::time::sleep_until(due).await;
    (!shared.paused.load(Ordering::Relaxed)).then_some(())
}

async fn send_upstream(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<(Instant, Bytes)>,
) {
    while let Some((due, data)) = queue.recv().await {
        let counters = &shared.to_upstream;
        match when_due(&shared, due).await {
            Some(()) if socket.send(&data).await.is_ok() => {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            _ => counters.drop_one(),
        }
    }
}

async fn send_downstream(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<(Instant, Bytes)>,
) {
    while let Some((due, data)) = queue.recv().await {
        let counters = &shared.to_downstream;
        let sent = match (when_due(&shared, due).await, shared.peer.get()) {
            (Some(()), Some(&peer)) => socket.send_to(&data, peer).await.is_ok(),
            _ => false,
        };
        if sent {
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.drop_one();
        }
    }
}
