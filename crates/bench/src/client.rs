//! The publisher and subscriber tasks: one tokio task per client.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tern_codec::{
    Packet, PubResponse, QoS, Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::sleep_until;

use crate::conn::{reason_str, ClientOpts, Conn, MAX_PACKET};
use crate::hist::Histogram;
use crate::tracker::{OrderCheck, Seen, StreamSet};
use crate::wire::{frame_header, parse_publish, PayloadHeader, PublishTemplate};
use crate::BenchError;

/// Wall-clock nanoseconds since the UNIX epoch, derived from a monotonic clock so that
/// they never go backwards within a run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            origin: Instant::now(),
            origin_unix_ns: unix.as_nanos() as u64,
        }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.at(Instant::now())
    }

    #[inline]
    pub fn at(&self, t: Instant) -> u64 {
        self.origin_unix_ns + t.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

/// What every client task shares with the coordinator.
pub struct Shared {
    pub clock: Clock,
    /// Deliveries received by all subscribers (duplicates included).
    pub received: AtomicU64,
    /// Deliveries received for the first time (what the drain waits for).
    pub unique: AtomicU64,
    /// Latency is recorded for messages sent in `[measure_start_ns, measure_end_ns)`.
    pub measure_start_ns: AtomicU64,
    pub measure_end_ns: AtomicU64,
    pub publishers: Vec<PubCounters>,
}

#[derive(Default)]
pub struct PubCounters {
    /// PUBLISH packets written by this publisher.
    pub sent: AtomicU64,
    /// Deliveries of this publisher's messages seen by subscribers (end-to-end window).
    pub delivered: AtomicU64,
    pub notify: Notify,
}

impl Shared {
    pub fn total_sent(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Run {
        start: Instant,
        deadline: Option<Instant>,
    },
    Stop,
}

/// Settings common to every client of a run.
pub struct RunCfg {
    pub opts: ClientOpts,
    pub qos: QoS,
    pub payload_size: usize,
    /// Most QoS 1/2 publishes awaiting their acknowledgement, per publisher.
    pub window: u16,
    /// Most messages a publisher may be ahead of its subscribers (0: no limit).
    pub e2e_window: u64,
    /// Messages per second per publisher; `None`: closed loop.
    pub rate: Option<f64>,
    pub count: Option<u64>,
    pub publishers: u32,
    pub stall_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a stopped publisher waits for its outstanding acknowledgements.
    pub ack_drain: Duration,
    /// Bytes of PUBLISH packets encoded per write.
    pub write_chunk: usize,
}

impl RunCfg {
    fn ping_every(&self) -> Duration {
        Duration::from_secs(u64::from(self.opts.keep_alive.max(2)) / 2)
    }
}

pub struct PubSpec {
    pub id: u32,
    pub topic: String,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    /// Deliveries each of its messages should produce.
    pub fanout: u64,
}

#[derive(Clone, Debug, Default)]
pub struct PubResult {
    pub acked: u64,
    pub rejected: u64,
    pub unacked: u64,
    pub stalls: u64,
}

pub enum Streams {
    Own(StreamSet),
    Group(Arc<Mutex<StreamSet>>),
}

pub struct SubSpec {
    pub id: u32,
    pub filter: String,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub streams: Streams,
    /// The first publisher id this subscriber expects; `streams` covers it and on.
    pub first_publisher: u32,
    pub expected_publishers: u32,
}

pub struct SubResult {
    pub id: u32,
    pub received: u64,
    pub own: Option<StreamSet>,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub hist: Histogram,
}

/// tokio's timers fire on a 1 ms grid.
const TIMER_SLACK_NS: u64 = 1_000_000;

const FREE: u8 = 0;
const AWAIT_ACK: u8 = 1;
const AWAIT_COMP: u8 = 2;

struct PubState {
    qos: QoS,
    /// Per packet id: FREE, AWAIT_ACK (PUBACK or PUBREC) or AWAIT_COMP.
    ids: Vec<u8>,
    in_flight: u32,
    next_id: u16,
    acked: u64,
    rejected: u64,
}

impl PubState {
    fn take_id(&mut self) -> u16 {
        if self.qos == QoS::AtMostOnce {
            return 0;
        }
        loop {
            // Ids cycle through 1..ids.len(), at least twice the window.
            self.next_id = if self.next_id as usize + 1 >= self.ids.len() {
                1
            } else {
                self.next_id + 1
            };
            if self.ids[self.next_id as usize] == FREE {
                self.ids[self.next_id as usize] = AWAIT_ACK;
                self.in_flight += 1;
                return self.next_id;
            }
        }
    }

    fn release(&mut self, conn: &Conn, id: u16, from: u8) -> Result<(), BenchError> {
        match self.ids.get_mut(id as usize) {
            Some(slot) if *slot == from => *slot = FREE,
            _ => {
                return Err(
                    conn.protocol(format!("acknowledgement for packet id {id} not in flight"))
                )
            }
        }
        self.in_flight -= 1;
        Ok(())
    }

    fn on_packet(&mut self, conn: &mut Conn, p: Packet) -> Result<(), BenchError> {
        match p {
            Packet::PubAck(r) if self.qos == QoS::AtLeastOnce => {
                self.release(conn, r.packet_id, AWAIT_ACK)?;
                if r.reason.is_error() {
                    self.rejected += 1;
                } else {
                    self.acked += 1;
                }
            }
            Packet::PubRec(r) if self.qos == QoS::ExactlyOnce => {
                if r.reason.is_error() {
                    self.release(conn, r.packet_id, AWAIT_ACK)?;
                    self.rejected += 1;
                } else {
                    match self.ids.get_mut(r.packet_id as usize) {
                        Some(slot) if *slot == AWAIT_ACK => *slot = AWAIT_COMP,
                        _ => {
                            return Err(conn.protocol(format!(
                                "PUBREC for packet id {} not in flight",
                                r.packet_id
                            )))
                        }
                    }
                    conn.queue(&Packet::PubRel(PubResponse::new(r.packet_id)))?;
                }
            }
            Packet::PubComp(r) if self.qos == QoS::ExactlyOnce => {
                self.release(conn, r.packet_id, AWAIT_COMP)?;
                self.acked += 1;
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                return Err(conn.protocol(format!(
                    "broker sent DISCONNECT, reason {}",
                    reason_str(d.reason)
                )))
            }
            other => {
                return Err(conn.protocol(format!("unexpected {} to a publisher", other.name())))
            }
        }
        Ok(())
    }

    /// Reads and handles whatever the broker has sent, without waiting.
    fn poll(&mut self, conn: &mut Conn) -> Result<bool, BenchError> {
        let n = conn.try_fill()?;
        while let Some(p) = conn.decode_one()? {
            self.on_packet(conn, p)?;
        }
        Ok(n > 0)
    }
}

/// Signals readiness (connected, and subscribed for subscribers) to the coordinator.
pub type Ready = mpsc::UnboundedSender<()>;

async fn wait_run(phase: &mut watch::Receiver<Phase>) -> Option<(Instant, Option<Instant>)> {
    loop {
        match *phase.borrow_and_update() {
            Phase::Run { start, deadline } => return Some((start, deadline)),
            Phase::Stop => return None,
            Phase::Setup => {}
        }
        if phase.changed().await.is_err() {
            return None;
        }
    }
}

pub async fn publisher(
    spec: PubSpec,
    cfg: Arc<RunCfg>,
    shared: Arc<Shared>,
    connect_limit: Arc<Semaphore>,
    ready: Ready,
    mut phase: watch::Receiver<Phase>,
) -> Result<PubResult, BenchError> {
    let name_id = spec.id;
    let template = PublishTemplate::new(
        &spec.topic,
        cfg.qos,
        cfg.payload_size,
        cfg.opts.version,
        spec.id,
    )
    .map_err(|e| BenchError::Encode {
        client: format!("publisher {name_id}"),
        source: e,
    })?;
    let permit = connect_limit
        .acquire()
        .await
        .expect("semaphore is never closed");
    let (mut conn, connack) = Conn::open(
        client_name("p", spec.id),
        spec.addr,
        spec.source,
        &cfg.opts,
        None,
    )
    .await?;
    drop(permit);
    let mut window = cfg.window;
    if let Some(rm) = connack.properties.receive_maximum {
        window = window.min(rm.max(1));
    }
    if let Some(max_qos) = connack.properties.maximum_qos {
        if max_qos < cfg.qos as u8 {
            return Err(conn.protocol(format!("broker allows at most QoS {max_qos}")));
        }
    }
    if let Some(max) = connack.properties.maximum_packet_size {
        if template.len() > max as usize {
            return Err(conn.protocol(format!("broker's maximum packet size is {max} bytes")));
        }
    }
    let _ = ready.send(());
    let Some((start, deadline)) = wait_run(&mut phase).await else {
        conn.close().await;
        return Ok(PubResult::default());
    };

    let counters = &shared.publishers[spec.id as usize];
    let clock = shared.clock;
    let mut st = PubState {
        qos: cfg.qos,
        ids: if cfg.qos == QoS::AtMostOnce {
            Vec::new()
        } else {
            vec![FREE; (usize::from(window) * 2).clamp(256, 65535) + 1]
        },
        in_flight: 0,
        next_id: 0,
        acked: 0,
        rejected: 0,
    };
    let batch_max = (cfg.write_chunk / template.len()).clamp(1, 4096) as u64;
    let fanout = spec.fanout.max(1);
    let e2e = if cfg.rate.is_none() {
        cfg.e2e_window
    } else {
        0
    };
    // Fixed rate: message k is due at start + offset + k / rate; publishers are spread
    // evenly over one interval so that they do not all send at the same instant.
    let rate_offset = cfg.rate.map(|r| {
        Duration::from_secs_f64(f64::from(spec.id) / f64::from(cfg.publishers.max(1)) / r)
    });
    let ping_every = cfg.ping_every();
    let mut seq: u64 = 0;
    let mut written_off: u64 = 0; // deliveries presumed lost after a stall
    let mut stalls = 0u64;
    let mut last_delivered = (u64::MAX, Instant::now());
    let mut last_write = Instant::now();
    let mut last_activity = Instant::now();

    loop {
        if st.poll(&mut conn)? {
            last_activity = Instant::now();
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || cfg.count.is_some_and(|c| seq >= c) {
            break;
        }
        let mut n = batch_max;
        if let Some(c) = cfg.count {
            n = n.min(c - seq);
        }
        // Closed loop: once a limit is reached, wait until a quarter of it is free again
        // rather than trickle out one message per acknowledgement.
        let closed = cfg.rate.is_none();
        let limit = |n: u64, room: u64, cap: u64| {
            if closed && room < n && room < (cap / 4).max(1) {
                0
            } else {
                n.min(room)
            }
        };
        if cfg.qos != QoS::AtMostOnce {
            n = limit(
                n,
                u64::from(window) - u64::from(st.in_flight),
                u64::from(window),
            );
        }
        let mut next_due = None;
        let mut e2e_blocked = false;
        if let Some(rate) = cfg.rate {
            let since = now.saturating_duration_since(start + rate_offset.unwrap_or_default());
            let due = if now < start + rate_offset.unwrap_or_default() {
                0
            } else {
                (since.as_secs_f64() * rate) as u64 + 1
            };
            n = n.min(due.saturating_sub(seq));
            if n == 0 {
                let t = (seq as f64) / rate;
                next_due =
                    Some(start + rate_offset.unwrap_or_default() + Duration::from_secs_f64(t));
            }
        } else if e2e > 0 && n > 0 {
            let delivered = counters.delivered.load(Ordering::Acquire);
            if delivered != last_delivered.0 {
                last_delivered = (delivered, now);
            }
            let outstanding = (seq * fanout).saturating_sub(delivered + written_off);
            let room = (e2e * fanout).saturating_sub(outstanding) / fanout;
            n = limit(n, room, e2e);
            e2e_blocked = n == 0;
        }
        if n > 0 {
            let sent_ns = clock.at(now);
            let per_msg_ns = cfg.rate.map(|r| 1e9 / r);
            let base_ns = clock.at(start + rate_offset.unwrap_or_default());
            for _ in 0..n {
                let id = st.take_id();
                // At a fixed rate the timestamp is the scheduled send time, so that a
                // publisher held back by flow control still counts the wait as latency.
                // Up to TIMER_SLACK of lateness is the timer's granularity, not a stall,
                // and is not counted.
                let ts = match per_msg_ns {
                    Some(p) => {
                        let due = base_ns + (seq as f64 * p) as u64;
                        due + sent_ns.saturating_sub(due).min(TIMER_SLACK_NS)
                    }
                    None => sent_ns,
                };
                template.append(&mut conn.wbuf, id, seq, ts);
                seq += 1;
            }
            conn.flush().await?;
            counters.sent.fetch_add(n, Ordering::Relaxed);
            last_write = Instant::now();
            last_activity = last_write;
            continue;
        }
        conn.flush().await?; // PUBRELs queued by acknowledgements
        let stall_at = last_delivered.1 + cfg.stall_timeout;
        let far = now + Duration::from_secs(3600);
        tokio::select! {
            r = conn.stream.readable() => r.map_err(|e| conn.io(e))?,
            _ = counters.notify.notified(), if e2e > 0 => {}
            _ = sleep_until(next_due.unwrap_or(far).into()), if next_due.is_some() => {}
            _ = sleep_until(deadline.unwrap_or(far).into()), if deadline.is_some() => {}
            _ = sleep_until(stall_at.into()), if e2e_blocked => {
                // No delivery at all for a while: presume the outstanding messages lost
                // (QoS 0 under overload) rather than wait for them forever.
                let delivered = counters.delivered.load(Ordering::Acquire);
                written_off = (seq * fanout).saturating_sub(delivered);
                last_delivered = (delivered, Instant::now());
                stalls += 1;
            }
            _ = sleep_until((last_write + ping_every).into()) => {
                conn.queue(&Packet::PingReq)?;
                conn.flush().await?;
                last_write = Instant::now();
            }
            _ = sleep_until((last_activity + cfg.idle_timeout).into()), if st.in_flight > 0 => {
                return Err(BenchError::Timeout(format!(
                    "{}: no acknowledgement from the broker for {:?} ({} in flight)",
                    conn.name, cfg.idle_timeout, st.in_flight
                )));
            }
        }
    }

    // Wait for the outstanding acknowledgements.
    let drain_until = Instant::now() + cfg.ack_drain;
    while st.in_flight > 0 && Instant::now() < drain_until {
        conn.flush().await?;
        tokio::select! {
            r = conn.stream.readable() => r.map_err(|e| conn.io(e))?,
            _ = sleep_until(drain_until.into()) => break,
        }
        st.poll(&mut conn)?;
    }
    conn.flush().await?;
    let result = PubResult {
        acked: st.acked,
        rejected: st.rejected,
        unacked: u64::from(st.in_flight),
        stalls,
    };
    conn.close().await;
    Ok(result)
}

pub fn client_name(kind: &str, id: u32) -> String {
    format!("tb-{}-{kind}{id}", run_tag())
}

/// A short tag unique to this process, so that client ids of concurrent runs differ.
pub fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        format!("{:x}{:05x}", std::process::id() & 0xffff, nanos & 0xfffff)
    })
}

struct SubState {
    streams: Streams,
    first: u32,
    orders: Vec<OrderCheck>,
    /// Group mode: (slot, seq) arrivals of one read, applied under one lock.
    scratch: Vec<(usize, u64)>,
    /// End-to-end window: deliveries per slot not yet published to the publishers.
    pending: Vec<u64>,
    touched: Vec<usize>,
    track_progress: bool,
    received: u64,
    /// First-time arrivals since the last flush to `Shared::unique`.
    new: u64,
    out_of_order: u64,
    unexpected: u64,
    hist: Histogram,
}

impl SubState {
    fn slot(&self, publisher: u32) -> Option<usize> {
        match &self.streams {
            Streams::Own(s) => s.slot(publisher),
            Streams::Group(_) => {
                let i = publisher.checked_sub(self.first)? as usize;
                (i < self.orders.len()).then_some(i)
            }
        }
    }

    #[inline]
    fn on_payload(&mut self, payload: &[u8], now_ns: u64, window: (u64, u64)) {
        self.received += 1;
        let Some(h) = PayloadHeader::read(payload) else {
            self.unexpected += 1;
            return;
        };
        let Some(slot) = self.slot(h.publisher) else {
            self.unexpected += 1;
            return;
        };
        let seen = match &mut self.streams {
            Streams::Own(s) => {
                let seen = s.record(slot, h.seq);
                self.new += u64::from(seen == Seen::New);
                seen
            }
            Streams::Group(_) => {
                // Counted as new when applied to the group's tracker.
                self.scratch.push((slot, h.seq));
                Seen::New
            }
        };
        if seen == Seen::New && self.orders[slot].observe(h.seq) {
            self.out_of_order += 1;
        }
        if self.track_progress {
            if self.pending[slot] == 0 {
                self.touched.push(slot);
            }
            self.pending[slot] += 1;
        }
        if h.sent_ns >= window.0 && h.sent_ns < window.1 {
            self.hist.record(now_ns.saturating_sub(h.sent_ns));
        }
    }

    /// Handles every whole packet in the read buffer; queues acknowledgements.
    fn process(&mut self, conn: &mut Conn, shared: &Shared) -> Result<(), BenchError> {
        let now_ns = shared.clock.now_ns();
        let window = (
            shared.measure_start_ns.load(Ordering::Relaxed),
            shared.measure_end_ns.load(Ordering::Relaxed),
        );
        let before = self.received;
        let mut off = 0;
        while let Some((first, len, body)) = frame_header(&conn.rbuf[off..]) {
            if len > MAX_PACKET {
                return Err(conn.protocol(format!("packet of {len} bytes is too large")));
            }
            if conn.rbuf.len() - off < len {
                break;
            }
            if first >> 4 == 3 {
                let pkt = &conn.rbuf[off..off + len];
                let view = parse_publish(pkt, body, conn.version)
                    .map_err(|e| conn.protocol(format!("malformed PUBLISH: {}", e.0)))?;
                let (qos, pid) = (view.qos, view.packet_id);
                self.on_payload(view.payload, now_ns, window);
                off += len;
                match qos {
                    0 => {}
                    1 => conn.queue_ack(crate::conn::PUBACK, pid),
                    _ => conn.queue_ack(crate::conn::PUBREC, pid),
                }
            } else {
                conn.consume(off);
                off = 0;
                match conn.decode_one()? {
                    Some(Packet::PubRel(r)) => conn.queue_ack(crate::conn::PUBCOMP, r.packet_id),
                    Some(Packet::PingResp) => {}
                    Some(Packet::Disconnect(d)) => {
                        return Err(conn.protocol(format!(
                            "broker sent DISCONNECT, reason {}",
                            reason_str(d.reason)
                        )))
                    }
                    Some(other) => {
                        return Err(
                            conn.protocol(format!("unexpected {} to a subscriber", other.name()))
                        )
                    }
                    None => break,
                }
            }
        }
        conn.consume(off);
        if let Streams::Group(g) = &self.streams {
            if !self.scratch.is_empty() {
                let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
                for &(slot, seq) in &self.scratch {
                    self.new += u64::from(g.record(slot, seq) == Seen::New);
                }
                self.scratch.clear();
            }
        }
        for &slot in &self.touched {
            let c = &shared.publishers[(self.first as usize) + slot];
            c.delivered.fetch_add(self.pending[slot], Ordering::Release);
            c.notify.notify_one();
            self.pending[slot] = 0;
        }
        self.touched.clear();
        shared
            .received
            .fetch_add(self.received - before, Ordering::Relaxed);
        shared
            .unique
            .fetch_add(std::mem::take(&mut self.new), Ordering::Relaxed);
        Ok(())
    }
}

pub async fn subscriber(
    spec: SubSpec,
    cfg: Arc<RunCfg>,
    shared: Arc<Shared>,
    connect_limit: Arc<Semaphore>,
    ready: Ready,
    mut phase: watch::Receiver<Phase>,
) -> Result<SubResult, BenchError> {
    let permit = connect_limit
        .acquire()
        .await
        .expect("semaphore is never closed");
    let (mut conn, _) = Conn::open(
        client_name("s", spec.id),
        spec.addr,
        spec.source,
        &cfg.opts,
        Some(u16::MAX),
    )
    .await?;
    conn.queue(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: spec.filter.clone(),
            options: SubscriptionOptions {
                qos: cfg.qos,
                ..Default::default()
            },
        }],
        properties: SubscribeProperties::default(),
    }))?;
    conn.flush().await?;
    let suback = tokio::time::timeout(cfg.opts.connect_timeout, conn.read_packet())
        .await
        .map_err(|_| {
            BenchError::Timeout(format!("{}: no SUBACK for {}", conn.name, spec.filter))
        })??;
    match suback {
        Packet::SubAck(a) if a.packet_id == 1 && a.reasons.len() == 1 => {
            let r = a.reasons[0];
            if r.is_error() {
                return Err(BenchError::SubscribeRejected {
                    client: conn.name.clone(),
                    filter: spec.filter,
                    reason: r.0,
                });
            }
            if r.0 < cfg.qos as u8 {
                return Err(conn.protocol(format!(
                    "subscription to {} granted QoS {} only",
                    spec.filter, r.0
                )));
            }
        }
        other => return Err(conn.protocol(format!("expected SUBACK, got {other:?}"))),
    }
    drop(permit);
    let _ = ready.send(());

    let n = spec.expected_publishers as usize;
    let mut st = SubState {
        streams: spec.streams,
        first: spec.first_publisher,
        orders: vec![OrderCheck::default(); n],
        scratch: Vec::new(),
        pending: vec![0; n],
        touched: Vec::new(),
        track_progress: cfg.rate.is_none() && cfg.e2e_window > 0,
        received: 0,
        new: 0,
        out_of_order: 0,
        unexpected: 0,
        hist: Histogram::new(),
    };
    let ping_every = cfg.ping_every();
    let mut last_write = Instant::now();
    loop {
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() == Phase::Stop {
                    break;
                }
            }
            r = conn.stream.readable() => {
                r.map_err(|e| conn.io(e))?;
                conn.try_fill()?;
                st.process(&mut conn, &shared)?;
                if !conn.wbuf.is_empty() {
                    conn.flush().await?;
                    last_write = Instant::now();
                }
            }
            _ = sleep_until((last_write + ping_every).into()) => {
                conn.queue(&Packet::PingReq)?;
                conn.flush().await?;
                last_write = Instant::now();
            }
        }
    }
    conn.close().await;
    Ok(SubResult {
        id: spec.id,
        received: st.received,
        own: match st.streams {
            Streams::Own(s) => Some(s),
            Streams::Group(_) => None,
        },
        out_of_order: st.out_of_order,
        unexpected: st.unexpected,
        hist: st.hist,
    })
}
