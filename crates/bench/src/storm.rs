//! The connection scenarios: `connect-storm` (open N connections as fast as the
//! concurrency limit allows, measure CONNECT -> CONNACK) and `idle` (open N connections
//! and hold them, pinging at the keep-alive, for `--duration` seconds).
//!
//! Each client is one small task: the socket, a 64-byte stack buffer for PINGRESPs and a
//! timer. The CONNECT packet and the buffer that reads the CONNACK are freed once the
//! connection is up, so that the load generator itself stays small at 100,000 clients.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Serialize;
use tern_codec::{decode, encode, Connect, ConnectProperties, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::{
    human, procstat, BenchArgs, BenchError, BenchReport, BrokerUsage, Histogram, LatencyReport,
    Scenario,
};

/// What the connection scenarios measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionsReport {
    /// Clients the run tried to connect.
    pub clients: u64,
    /// Clients that received a successful CONNACK.
    pub connected: u64,
    /// Clients that could not connect (TCP error, refused, no CONNACK in time).
    pub failed: u64,
    /// Seconds from the first connection attempt to the last CONNACK or failure.
    pub connect_secs: f64,
    /// Successful CONNECT/CONNACK exchanges per second over `connect_secs`.
    pub connects_per_sec: f64,
    /// From the start of the TCP connect to the CONNACK, successful clients only.
    pub connect_latency: LatencyReport,
    /// Most connection attempts under way at once (`--connect-concurrency`).
    pub concurrency: usize,
    /// Source addresses the clients were spread over (0: chosen by the kernel).
    pub source_addrs: usize,
    /// idle: seconds the connections were held after the last one was up.
    pub held_secs: f64,
    /// Connections still open when the run ended (for connect-storm: when all were up).
    pub still_connected: u64,
    /// Connections closed by the broker or failed while held.
    pub dropped: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    /// Why connections failed or dropped: reason -> count (first 20 distinct reasons).
    pub failure_reasons: BTreeMap<String, u64>,
    /// The broker's resident memory before the first connection, with every connection
    /// up, and at the end of the hold (with `--broker-pid`).
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_connected_kib: Option<u64>,
    pub broker_rss_end_kib: Option<u64>,
    /// (RSS at the end - RSS before) / connections still open.
    pub broker_kib_per_connection: Option<f64>,
    /// The load generator's own resident memory growth per open connection.
    pub bench_kib_per_connection: Option<f64>,
}

/// Counters every client task updates.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    /// Nanoseconds after the run's start of the last CONNACK or failure.
    last_done_ns: AtomicU64,
    latency: Mutex<Histogram>,
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn reason(&self, r: String) {
        let mut m = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&r) {
            *n += 1;
        } else if m.len() < 20 {
            m.insert(r, 1);
        } else {
            *m.entry("(other reasons)".to_owned()).or_default() += 1;
        }
    }

    fn done(&self, start: Instant) {
        let ns = start.elapsed().as_nanos() as u64;
        self.last_done_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

struct Plan {
    targets: Vec<SocketAddr>,
    sources: Vec<IpAddr>,
    version: ProtocolVersion,
    keep_alive: u16,
    username: Option<String>,
    password: Option<String>,
    connect_timeout: Duration,
    tag: &'static str,
}

/// Runs `connect-storm` or `idle`.
pub(crate) async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let bad = |m: &str| Err(BenchError::Args(m.to_owned()));
    let clients = u64::from(args.clients);
    if clients == 0 {
        return bad("--clients must be at least 1");
    }
    if args.scenario == Scenario::Idle && !(args.duration > 0.0 && args.duration.is_finite()) {
        return bad("--duration must be positive");
    }
    if args.count.is_some() {
        return bad("--count does not apply to connect-storm and idle (use --clients)");
    }
    if !(args.connect_timeout > 0.0 && args.connect_timeout.is_finite()) {
        return bad("--connect-timeout must be positive");
    }
    let plan = Arc::new(Plan {
        targets: crate::resolve(&args.targets).await?,
        sources: args.sources(),
        version: if args.mqtt_version == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        keep_alive: args.keep_alive,
        username: args.username.clone(),
        password: args.password.clone(),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        tag: crate::client::run_tag(),
    });
    let concurrency = args.connect_concurrency.max(1);
    let progress = |msg: String| {
        if !args.quiet {
            eprintln!("{msg}");
        }
    };
    let broker_rss = || {
        args.broker_pid
            .and_then(procstat::memory_kib)
            .map(|(rss, _)| rss)
    };
    let own_rss = || procstat::memory_kib(std::process::id()).map(|(rss, _)| rss);

    let rss_before = broker_rss();
    let own_before = own_rss();
    let broker_cpu0 = args.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p)));
    let cpu0 = procstat::cpu_seconds(None);
    progress(format!(
        "{}: connecting {} client(s) to {}, {} at a time{}",
        args.scenario.name(),
        clients,
        args.targets.join(","),
        concurrency,
        if plan.sources.is_empty() {
            String::new()
        } else {
            format!(" from {} source address(es)", plan.sources.len())
        }
    ));

    let counters = Arc::new(Counters {
        latency: Mutex::new(Histogram::new()),
        ..Default::default()
    });
    let limit = Arc::new(Semaphore::new(concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        tasks.spawn(client(
            i,
            plan.clone(),
            counters.clone(),
            limit.clone(),
            stop_rx.clone(),
            start,
        ));
    }

    // Wait until every client connected or failed.
    let done =
        || counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
    let setup_timeout =
        plan.connect_timeout * (2 + (clients / concurrency as u64).min(u32::MAX as u64) as u32);
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut errors = Vec::new();
    let mut last = (0u64, start);
    while done() < clients {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let c = counters.connected.load(Ordering::Relaxed);
                progress(format!(
                    "[{:>4.0}s] connected {c:>7}  failed {:>6}  {:>9} CONNACK/s",
                    now.duration_since(start).as_secs_f64(),
                    counters.failed.load(Ordering::Relaxed),
                    human((c - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9)),
                ));
                last = (c, now);
            }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if start.elapsed() > setup_timeout {
            errors.push(format!(
                "only {} of {clients} clients connected or failed within {setup_timeout:?}",
                done()
            ));
            break;
        }
    }
    let connected = counters.connected.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let connect_secs = (counters.last_done_ns.load(Ordering::Relaxed) as f64 / 1e9).max(1e-9);
    let connect_cpu = diff(procstat::cpu_seconds(None), cpu0);
    let connect_broker_cpu = diff(
        args.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p))),
        broker_cpu0,
    );
    let rss_connected = broker_rss();
    let own_connected = own_rss();

    // idle: hold the connections.
    let mut held_secs = 0.0;
    let (mut cpu, mut broker_cpu, mut measure_secs) =
        (connect_cpu, connect_broker_cpu, connect_secs);
    if args.scenario == Scenario::Idle {
        progress(format!(
            "idle: {connected} connection(s) up in {connect_secs:.2} s; holding them for {} s (keep-alive {} s)",
            args.duration, args.keep_alive
        ));
        let hold_start = Instant::now();
        let cpu1 = procstat::cpu_seconds(None);
        let broker_cpu1 = args.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p)));
        let hold_end = hold_start + Duration::from_secs_f64(args.duration);
        let mut tick = tokio::time::interval_at(
            (hold_start + Duration::from_secs(1)).into(),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                _ = sleep_until(hold_end.into()) => break,
                // Every connection is gone: nothing left to hold.
                _ = tokio::time::sleep(Duration::from_millis(50)),
                    if connected > 0 && counters.dropped.load(Ordering::Relaxed) >= connected => break,
                _ = tick.tick() => progress(format!(
                    "[{:>4.0}s] open {:>7}  dropped {:>6}  pings {:>8}  pongs {:>8}",
                    hold_start.elapsed().as_secs_f64(),
                    connected.saturating_sub(counters.dropped.load(Ordering::Relaxed)),
                    counters.dropped.load(Ordering::Relaxed),
                    counters.pings.load(Ordering::Relaxed),
                    counters.pongs.load(Ordering::Relaxed),
                )),
            }
        }
        held_secs = hold_start.elapsed().as_secs_f64();
        measure_secs = held_secs;
        cpu = diff(procstat::cpu_seconds(None), cpu1);
        broker_cpu = diff(
            args.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p))),
            broker_cpu1,
        );
    }
    let dropped = counters.dropped.load(Ordering::Relaxed);
    let still = connected.saturating_sub(dropped);
    let rss_end = broker_rss();
    let own_end = own_rss();
    let (broker_peak, broker_now) = args
        .broker_pid
        .and_then(procstat::memory_kib)
        .map_or((0, 0), |(rss, peak)| (peak, rss));

    // Close everything: DISCONNECT, then the socket.
    let _ = stop_tx.send(true);
    let collect_until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok(())) => {}
                Some(Err(e)) => errors.push(format!("client task failed: {e}")),
                None => break,
            },
            _ = sleep_until(collect_until) => {
                errors.push(format!("{} client(s) did not close in time", tasks.len()));
                tasks.abort_all();
                break;
            }
        }
    }

    let latency = {
        let h = counters.latency.lock().unwrap_or_else(|e| e.into_inner());
        LatencyReport::from_hist(&h)
    };
    let per_conn = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if still > 0 => Some(a.saturating_sub(b) as f64 / still as f64),
        _ => None,
    };
    let conns = ConnectionsReport {
        clients,
        connected,
        failed,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs,
        connect_latency: latency,
        concurrency,
        source_addrs: plan.sources.len(),
        held_secs,
        still_connected: still,
        dropped,
        pings_sent: counters.pings.load(Ordering::Relaxed),
        pongs_received: counters.pongs.load(Ordering::Relaxed),
        failure_reasons: counters
            .reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        broker_rss_before_kib: rss_before,
        broker_rss_connected_kib: rss_connected,
        broker_rss_end_kib: rss_end,
        broker_kib_per_connection: per_conn(rss_before, rss_end),
        bench_kib_per_connection: per_conn(own_before, own_end.max(own_connected)),
    };
    let cpu = cpu.unwrap_or(0.0);
    let report = BenchReport {
        label: args.label.clone(),
        scenario: args.scenario.name().to_owned(),
        mqtt_version: args.mqtt_version,
        targets: args.targets.clone(),
        mode: args.scenario.name().to_owned(),
        measure_secs,
        client_cpu_secs: cpu,
        client_cpu_percent: cpu / measure_secs * 100.0,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        broker: args.broker_pid.map(|pid| {
            let c = broker_cpu.unwrap_or(0.0);
            BrokerUsage {
                pid,
                cpu_secs: c,
                cpu_percent: c / measure_secs * 100.0,
                rss_kib: broker_now,
                peak_rss_kib: broker_peak,
            }
        }),
        connections: Some(conns),
        errors,
        ..Default::default()
    };
    crate::finish(&args, report)
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some((a? - b?).max(0.0))
}

/// One client: connect (within the concurrency limit), then hold the connection, pinging,
/// until told to stop.
async fn client(
    i: u64,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    start: Instant,
) {
    let permit = tokio::select! {
        p = limit.acquire() => p.expect("semaphore is never closed"),
        _ = stop.changed() => return,
    };
    let addr = plan.targets[(i % plan.targets.len() as u64) as usize];
    let source =
        (!plan.sources.is_empty()).then(|| plan.sources[(i % plan.sources.len() as u64) as usize]);
    let t0 = Instant::now();
    let opened = tokio::time::timeout(plan.connect_timeout, open(i, &plan, addr, source)).await;
    drop(permit);
    let mut stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(reason)) => {
            counters.reason(reason);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters.done(start);
            return;
        }
        Err(_) => {
            counters.reason(format!("no CONNACK within {:?}", plan.connect_timeout));
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters.done(start);
            return;
        }
    };
    let ns = t0.elapsed().as_nanos() as u64;
    counters
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(ns);
    counters.connected.fetch_add(1, Ordering::Relaxed);
    counters.done(start);

    // Hold: PINGREQ every keep-alive / 2, the first one spread over half an interval so
    // that clients connected together do not ping together.
    let every = Duration::from_millis(u64::from(plan.keep_alive) * 500);
    let jitter = every / 2 * ((i * 7919 % 1000) as u32) / 1000;
    let mut next_ping = tokio::time::Instant::now() + every - jitter;
    let mut parser = PacketScan::default();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = stream.read(&mut buf) => {
                let why = match r {
                    Ok(0) => "closed by the broker".to_owned(),
                    Ok(n) => match parser.feed(&buf[..n]) {
                        Ok(pongs) => {
                            counters.pongs.fetch_add(pongs, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => e,
                    },
                    Err(e) => format!("read: {e}"),
                };
                counters.reason(why);
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ = sleep_until(next_ping) => {
                next_ping += every;
                let w = tokio::time::timeout(plan.connect_timeout, stream.write_all(&[0xC0, 0])).await;
                match w {
                    Ok(Ok(())) => {
                        counters.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        counters.reason(format!("write PINGREQ: {e}"));
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        counters.reason("write PINGREQ timed out".to_owned());
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }
    // DISCONNECT, then close; errors do not matter any more.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&[0xE0, 0]).await?;
        stream.shutdown().await
    })
    .await;
}

/// TCP connect (from `source`, port chosen by the kernel), CONNECT, CONNACK. Returns the
/// reason of a failure as text (they are counted by reason).
async fn open(
    i: u64,
    plan: &Plan,
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let stream = crate::tcp::connect(addr, source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let mut stream = stream;
    let mut out = BytesMut::with_capacity(64);
    let connect = Packet::Connect(Connect {
        protocol: plan.version,
        clean_start: true,
        keep_alive: plan.keep_alive,
        client_id: format!("tb-{}-c{i}", plan.tag),
        will: None,
        username: plan.username.clone(),
        password: plan.password.clone().map(Into::into),
        properties: ConnectProperties::default(),
    });
    encode(&connect, plan.version, &mut out).map_err(|e| format!("encode CONNECT: {e}"))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    out.clear();
    loop {
        match decode(&mut out, Some(plan.version), 64 << 10) {
            Ok(Some(Packet::ConnAck(ack))) if !ack.reason.is_error() => return Ok(stream),
            Ok(Some(Packet::ConnAck(ack))) => {
                return Err(format!("refused (reason {:#04x})", ack.reason.0))
            }
            Ok(Some(other)) => return Err(format!("expected CONNACK, got {}", other.name())),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed CONNACK: {e}")),
        }
        out.reserve(64);
        match stream.read_buf(&mut out).await {
            Ok(0) => return Err("closed by the broker before CONNACK".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("read CONNACK: {e}")),
        }
    }
}

/// Follows packet boundaries in what an idle client reads, without buffering: counts
/// PINGRESPs, and fails on a DISCONNECT or anything it does not expect an idle client to
/// get (it has no subscriptions).
#[derive(Default)]
struct PacketScan {
    state: ScanState,
}

#[derive(Default, Clone, Copy)]
enum ScanState {
    #[default]
    Header,
    /// Remaining length being read: packet type, value so far, shift.
    Length(u8, u32, u32),
    /// Bytes of the current packet still to skip.
    Skip(u32),
}

impl PacketScan {
    fn feed(&mut self, mut data: &[u8]) -> Result<u64, String> {
        let mut pongs = 0;
        while let Some((&b, rest)) = data.split_first() {
            match self.state {
                ScanState::Header => {
                    self.state = ScanState::Length(b >> 4, 0, 0);
                    data = rest;
                }
                ScanState::Length(kind, value, shift) => {
                    data = rest;
                    if shift > 21 {
                        return Err("malformed remaining length from the broker".into());
                    }
                    let value = value | (u32::from(b & 0x7f) << shift);
                    if b & 0x80 != 0 {
                        self.state = ScanState::Length(kind, value, shift + 7);
                        continue;
                    }
                    match kind {
                        13 => pongs += 1,
                        14 => return Err("DISCONNECT from the broker".into()),
                        k => return Err(format!("unexpected packet type {k} from the broker")),
                    }
                    self.state = if value == 0 {
                        ScanState::Header
                    } else {
                        ScanState::Skip(value)
                    };
                }
                ScanState::Skip(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u32;
                    self.state = if left == 0 {
                        ScanState::Header
                    } else {
                        ScanState::Skip(left)
                    };
                }
            }
        }
        Ok(pongs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_pingresps_across_reads() {
        let mut s = PacketScan::default();
        assert_eq!(s.feed(&[0xD0, 0x00, 0xD0]), Ok(1));
        assert_eq!(s.feed(&[0x00]), Ok(1));
        assert_eq!(s.feed(&[]), Ok(0));
    }

    #[test]
    fn scan_reports_disconnect_and_surprises() {
        let mut s = PacketScan::default();
        assert!(s.feed(&[0xD0, 0x00, 0xE0, 0x01, 0x8B]).is_err());
        let mut s = PacketScan::default();
        assert!(s.feed(&[0x30, 0x02, 0x00, 0x00]).is_err());
        let mut s = PacketScan::default();
        assert!(s.feed(&[0xD0, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
