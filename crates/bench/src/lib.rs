//! `tern bench`: an MQTT load generator that measures a broker's throughput, latency and
//! delivery guarantees.
//!
//! It speaks MQTT itself (with `tern_codec` over tokio TCP streams), one task per client,
//! so that the load generator is not the bottleneck. Every payload starts with the
//! publisher's id, a sequence number and the send time; subscribers use them to measure
//! latency and to count lost, duplicated and reordered messages per (publisher,
//! subscriber) stream. See `docs/benchmarking.md`.

mod client;
mod conn;
mod hist;
mod procstat;
mod storm;
mod tcp;
mod tracker;
mod wire;

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_codec::{DecodeError, EncodeError, ProtocolVersion, QoS};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use client::{Phase, PubCounters, PubResult, PubSpec, RunCfg, Shared, Streams, SubResult, SubSpec};
pub use hist::Histogram;
pub use storm::ConnectionsReport;
pub use tracker::{SeqTracker, StreamOutcome};
pub use wire::HEADER_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers, each on its own topic, into subscribers of one wildcard filter
    /// (default 8 -> 1).
    FanIn,
    /// Publishers on one topic, every subscriber receives every message (default 1 -> 64).
    FanOut,
    /// N publisher/subscriber pairs, each pair on its own topic (default 100).
    Pairs,
    /// Publishers into one $share group: each message reaches exactly one member
    /// (default 8 -> 4).
    Shared,
    /// --clients connections opened as fast as --connect-concurrency allows: CONNACKs per
    /// second, connect latency, failures.
    ConnectStorm,
    /// --clients connections opened and held for --duration seconds with keep-alive pings:
    /// how many stay up, and the broker's memory per connection (with --broker-pid).
    Idle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
            Scenario::Shared => "shared",
            Scenario::ConnectStorm => "connect-storm",
            Scenario::Idle => "idle",
        }
    }

    /// connect-storm and idle: connections only, no messages.
    pub fn is_connections_only(self) -> bool {
        matches!(self, Scenario::ConnectStorm | Scenario::Idle)
    }
}

/// Options of `tern bench` / `tern-bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Brokers to connect to, host:port, comma-separated; clients are spread over them
    /// round-robin.
    #[arg(
        long,
        visible_alias = "host",
        value_delimiter = ',',
        default_value = "127.0.0.1:1883"
    )]
    pub targets: Vec<String>,

    /// MQTT protocol level: 4 (3.1.1) or 5 (5.0).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,

    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Payload bytes per message (at least 20: publisher id, sequence, send time).
    #[arg(long, default_value_t = 100)]
    pub payload_size: usize,

    /// Number of publishers (default depends on the scenario).
    #[arg(long)]
    pub publishers: Option<u32>,

    /// Number of subscribers (default depends on the scenario; pairs: same as publishers).
    #[arg(long)]
    pub subscribers: Option<u32>,

    /// Seconds of measurement (after the warm-up); idle: seconds to hold the connections.
    #[arg(long, default_value_t = 10.0, conflicts_with = "count")]
    pub duration: f64,

    /// Messages per publisher, instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,

    /// Seconds of sending before the measurement starts (duration mode only).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// Messages per second per publisher at a fixed rate; without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Most QoS 1/2 publishes awaiting acknowledgement per publisher.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub window: u16,

    /// Closed loop: most messages a publisher may be ahead of its subscribers' receipt
    /// (default: the same as --window; 0: unlimited, only TCP and --window hold
    /// publishers back).
    #[arg(long)]
    pub e2e_window: Option<u64>,

    /// Local addresses to bind client sockets to, comma-separated, each an address or an
    /// inclusive range (127.0.0.1-127.0.0.50), used round-robin: every source address has
    /// its own ~28k ephemeral ports.
    #[arg(long, value_delimiter = ',', value_parser = parse_source_addrs)]
    pub source_addrs: Vec<SourceAddrs>,

    /// connect-storm, idle: number of connections.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,

    /// Print the result as JSON on stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// No progress line and no summary on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// At most this many seconds to wait for outstanding deliveries after publishers stop.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,

    /// Seconds to wait between the last SUBACK and the first publish (default 0 for one
    /// target, 1 for several, so that subscriptions can reach every node of a cluster).
    #[arg(long)]
    pub settle: Option<f64>,

    /// fan-in/shared: all publishers use one topic instead of one topic each.
    #[arg(long)]
    pub single_topic: bool,

    /// First level of every topic; a per-run tag follows it.
    #[arg(long, default_value = "tern-bench")]
    pub topic_prefix: String,

    /// Group name for the shared scenario.
    #[arg(long, default_value = "bench")]
    pub share_group: String,

    /// MQTT keep-alive in seconds (clients ping at half of it).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(2..))]
    pub keep_alive: u16,

    /// Connections being set up at once (connect-storm: the concurrency of the storm).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Seconds to wait for each CONNACK and SUBACK.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,

    #[arg(long)]
    pub username: Option<String>,

    #[arg(long)]
    pub password: Option<String>,

    /// Report the CPU time and peak memory of this process (the broker) too.
    #[arg(long)]
    pub broker_pid: Option<u32>,

    /// Worker threads of the load generator's runtime (default: one per core). Used by
    /// `run_blocking` only.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Free text copied into the report (e.g. the broker's name).
    #[arg(long)]
    pub label: Option<String>,
}

impl BenchArgs {
    /// Every source address of --source-addrs, ranges expanded, in order.
    pub fn sources(&self) -> Vec<IpAddr> {
        self.source_addrs
            .iter()
            .flat_map(|s| s.0.iter().copied())
            .collect()
    }
}

/// One element of --source-addrs: an address, or the addresses of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceAddrs(pub Vec<IpAddr>);

/// The most addresses one range of --source-addrs may hold.
const MAX_SOURCE_RANGE: u128 = 1 << 16;

/// Parses `ADDR` or `FIRST-LAST` (both of one family, FIRST <= LAST).
pub fn parse_source_addrs(s: &str) -> Result<SourceAddrs, String> {
    let s = s.trim();
    let parse = |a: &str| -> Result<IpAddr, String> {
        a.trim()
            .parse()
            .map_err(|_| format!("'{a}' is not an IP address"))
    };
    let Some((a, b)) = s.split_once('-') else {
        return Ok(SourceAddrs(vec![parse(s)?]));
    };
    let (first, last) = (parse(a)?, parse(b)?);
    let (lo, hi, v4) = match (first, last) {
        (IpAddr::V4(x), IpAddr::V4(y)) => {
            (u128::from(u32::from(x)), u128::from(u32::from(y)), true)
        }
        (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x), u128::from(y), false),
        _ => return Err(format!("range {s} mixes IPv4 and IPv6")),
    };
    if lo > hi {
        return Err(format!("range {s} ends before it starts"));
    }
    if hi - lo >= MAX_SOURCE_RANGE {
        return Err(format!(
            "range {s} holds more than {MAX_SOURCE_RANGE} addresses"
        ));
    }
    Ok(SourceAddrs(
        (lo..=hi)
            .map(|n| {
                if v4 {
                    IpAddr::V4((n as u32).into())
                } else {
                    IpAddr::V6(n.into())
                }
            })
            .collect(),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("cannot resolve {target}: {detail}")]
    Resolve { target: String, detail: String },
    #[error("{client}: cannot connect to {addr}: {source}")]
    Connect {
        client: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{client}: {source}")]
    Io { client: String, source: io::Error },
    #[error("{client}: malformed packet from the broker: {source}")]
    Decode { client: String, source: DecodeError },
    #[error("{client}: cannot encode a packet: {source}")]
    Encode { client: String, source: EncodeError },
    #[error("{client}: {detail}")]
    Protocol { client: String, detail: String },
    #[error("{client}: the broker refused the connection (reason {reason:#04x})")]
    Refused { client: String, reason: u8 },
    #[error("{client}: subscription to {filter} rejected (reason {reason:#04x})")]
    SubscribeRejected {
        client: String,
        filter: String,
        reason: u8,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("cannot start the load generator's runtime: {0}")]
    Runtime(io::Error),
    /// The run completed but messages were lost (QoS 1/2), duplicated (QoS 2), misrouted
    /// or left unacknowledged. The report is complete.
    #[error("delivery check failed: {}", .0.failures().join(", "))]
    Delivery(Box<BenchReport>),
    /// The run completed but some clients failed on the way (see `report.errors`).
    #[error("{} client(s) failed; first: {}", .0.errors.len(), .0.errors.first().map(String::as_str).unwrap_or("?"))]
    ClientsFailed(Box<BenchReport>),
}

impl BenchError {
    /// The report of a run that completed but failed its checks.
    pub fn report(&self) -> Option<&BenchReport> {
        match self {
            BenchError::Delivery(r) | BenchError::ClientsFailed(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    /// Messages whose latency was recorded (those sent during the measurement).
    pub samples: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencyReport {
    fn from_hist(h: &Histogram) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            samples: h.count(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.quantile(0.5)),
            p90_us: us(h.quantile(0.9)),
            p99_us: us(h.quantile(0.99)),
            p999_us: us(h.quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BrokerUsage {
    pub pid: u32,
    /// CPU seconds the broker used during the measurement.
    pub cpu_secs: f64,
    /// The same as a percentage of one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    /// Peak resident memory over the broker's lifetime (VmHWM).
    pub peak_rss_kib: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub label: Option<String>,
    pub scenario: String,
    pub qos: u8,
    pub mqtt_version: u8,
    pub targets: Vec<String>,
    pub publishers: u32,
    pub subscribers: u32,
    pub payload_size: usize,
    /// "closed-loop" or "rate".
    pub mode: String,
    pub rate_per_publisher: Option<f64>,
    pub window: u16,
    pub e2e_window: u64,
    /// Seconds over which the rates below are measured.
    pub measure_secs: f64,
    /// Messages published over the whole run (warm-up included).
    pub sent: u64,
    /// Deliveries the subscribers should have received (sent x receivers per message).
    pub expected: u64,
    /// Deliveries received over the whole run (duplicates included).
    pub received: u64,
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
    pub latency: LatencyReport,
    /// Messages that never reached a subscriber that should have received them.
    pub lost: u64,
    pub duplicates: u64,
    /// Arrivals of a sequence lower than one already seen on the same stream.
    pub out_of_order: u64,
    /// Messages from an unknown publisher, on the wrong topic, or with a sequence the
    /// publisher never sent.
    pub unexpected: u64,
    /// QoS 1/2 publishes the broker acknowledged (PUBACK, or PUBCOMP for QoS 2).
    pub acked: u64,
    /// QoS 1/2 publishes never acknowledged by the broker.
    pub unacked: u64,
    /// QoS 1/2 publishes the broker acknowledged with an error reason code.
    pub rejected: u64,
    /// Times a publisher saw no delivery for a second and wrote its window off as lost.
    pub stalls: u64,
    /// CPU seconds the load generator used during the measurement.
    pub client_cpu_secs: f64,
    /// The same as a percentage of one core.
    pub client_cpu_percent: f64,
    pub cores: usize,
    pub broker: Option<BrokerUsage>,
    /// connect-storm and idle: what the connections did (absent for other scenarios).
    pub connections: Option<ConnectionsReport>,
    pub errors: Vec<String>,
}

impl BenchReport {
    /// What makes this run a failure (empty: it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.qos > 0 && self.lost > 0 {
            f.push(format!("{} QoS {} messages lost", self.lost, self.qos));
        }
        if self.qos == 2 && self.duplicates > 0 {
            f.push(format!("{} QoS 2 messages duplicated", self.duplicates));
        }
        if self.qos > 0 && self.unacked > 0 {
            f.push(format!("{} publishes never acknowledged", self.unacked));
        }
        if self.qos > 0 && self.rejected > 0 {
            f.push(format!("{} publishes rejected", self.rejected));
        }
        if self.unexpected > 0 {
            f.push(format!("{} unexpected messages", self.unexpected));
        }
        if let Some(c) = &self.connections {
            if c.failed > 0 {
                f.push(format!("{} of {} connections failed", c.failed, c.clients));
            }
            if c.dropped > 0 {
                f.push(format!("{} connections dropped while held", c.dropped));
            }
            if c.connected + c.failed < c.clients {
                f.push(format!(
                    "{} connections neither connected nor failed",
                    c.clients - c.connected - c.failed
                ));
            }
        }
        f
    }

    /// A human-readable summary, several lines.
    pub fn summary(&self) -> String {
        if let Some(c) = &self.connections {
            return self.connections_summary(c);
        }
        let mut s = String::new();
        let version = if self.mqtt_version == 5 {
            "5.0"
        } else {
            "3.1.1"
        };
        let mode = match self.rate_per_publisher {
            Some(r) => format!("fixed rate {r} msg/s per publisher"),
            None if self.e2e_window > 0 => {
                format!(
                    "closed loop (window {}, e2e window {})",
                    self.window, self.e2e_window
                )
            }
            None => format!("closed loop (window {}, no e2e window)", self.window),
        };
        let _ = writeln!(
            s,
            "{}{} QoS {} MQTT {}: {} publisher(s) -> {} subscriber(s), {} B payload, {}",
            self.label
                .as_deref()
                .map(|l| format!("[{l}] "))
                .unwrap_or_default(),
            self.scenario,
            self.qos,
            version,
            self.publishers,
            self.subscribers,
            self.payload_size,
            mode
        );
        let _ = writeln!(
            s,
            "  throughput over {:.2} s: sent {} msg/s, received {} msg/s",
            self.measure_secs,
            human(self.sent_per_sec),
            human(self.received_per_sec)
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency (us): p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}  ({} samples)",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.samples
        );
        let _ = writeln!(
            s,
            "  delivery: sent {}  expected {}  received {}  lost {}  duplicates {}  out-of-order {}  unexpected {}",
            self.sent, self.expected, self.received, self.lost, self.duplicates, self.out_of_order, self.unexpected
        );
        if self.qos > 0 || self.stalls > 0 {
            let _ = writeln!(
                s,
                "  acks: unacknowledged {}  rejected {}  stalls {}",
                self.unacked, self.rejected, self.stalls
            );
        }
        let _ = writeln!(
            s,
            "  load generator CPU: {:.2} s = {:.0}% of one core ({} cores)",
            self.client_cpu_secs, self.client_cpu_percent, self.cores
        );
        if let Some(b) = &self.broker {
            let _ = writeln!(
                s,
                "  broker (pid {}): CPU {:.2} s = {:.0}% of one core, RSS {:.1} MiB, peak {:.1} MiB",
                b.pid,
                b.cpu_secs,
                b.cpu_percent,
                b.rss_kib as f64 / 1024.0,
                b.peak_rss_kib as f64 / 1024.0
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        for f in self.failures() {
            let _ = writeln!(s, "  FAILED: {f}");
        }
        s
    }
}

impl BenchReport {
    fn connections_summary(&self, c: &ConnectionsReport) -> String {
        let mut s = String::new();
        let version = if self.mqtt_version == 5 {
            "5.0"
        } else {
            "3.1.1"
        };
        let _ = writeln!(
            s,
            "{}{} MQTT {}: {} client(s), {} at a time, {} source address(es)",
            self.label
                .as_deref()
                .map(|l| format!("[{l}] "))
                .unwrap_or_default(),
            self.scenario,
            version,
            c.clients,
            c.concurrency,
            c.source_addrs.max(1)
        );
        let _ = writeln!(
            s,
            "  connect: {} connected, {} failed in {:.2} s = {} CONNACK/s",
            c.connected,
            c.failed,
            c.connect_secs,
            human(c.connects_per_sec)
        );
        let l = &c.connect_latency;
        let _ = writeln!(
            s,
            "  connect latency (us): p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
        );
        if self.scenario == Scenario::Idle.name() {
            let _ = writeln!(
                s,
                "  held {:.1} s: {} still connected, {} dropped, {} pings, {} pongs",
                c.held_secs, c.still_connected, c.dropped, c.pings_sent, c.pongs_received
            );
        }
        for (why, n) in &c.failure_reasons {
            let _ = writeln!(s, "  {n} x {why}");
        }
        let _ = writeln!(
            s,
            "  load generator CPU: {:.2} s = {:.0}% of one core ({} cores){}",
            self.client_cpu_secs,
            self.client_cpu_percent,
            self.cores,
            c.bench_kib_per_connection
                .map(|k| format!(", {k:.1} KiB per connection"))
                .unwrap_or_default()
        );
        if let Some(b) = &self.broker {
            let _ = writeln!(
                s,
                "  broker (pid {}): CPU {:.2} s = {:.0}% of one core, RSS {} -> {} KiB{}",
                b.pid,
                b.cpu_secs,
                b.cpu_percent,
                c.broker_rss_before_kib.unwrap_or(0),
                c.broker_rss_end_kib.unwrap_or(0),
                c.broker_kib_per_connection
                    .map(|k| format!(" = {k:.2} KiB per connection"))
                    .unwrap_or_default()
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        for f in self.failures() {
            let _ = writeln!(s, "  FAILED: {f}");
        }
        s
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The shape of a run, worked out from the arguments.
struct Plan {
    scenario: Scenario,
    pubs: u32,
    subs: u32,
    base: String,
}

impl Plan {
    fn new(a: &BenchArgs) -> Result<Self, BenchError> {
        let bad = |m: String| Err(BenchError::Args(m));
        let (pubs, subs) = match a.scenario {
            Scenario::FanIn => (a.publishers.unwrap_or(8), a.subscribers.unwrap_or(1)),
            Scenario::FanOut => (a.publishers.unwrap_or(1), a.subscribers.unwrap_or(64)),
            Scenario::Shared => (a.publishers.unwrap_or(8), a.subscribers.unwrap_or(4)),
            Scenario::ConnectStorm | Scenario::Idle => {
                return bad(format!("{} has no publishers", a.scenario.name()))
            }
            Scenario::Pairs => {
                let n = a.publishers.or(a.subscribers).unwrap_or(100);
                if a.subscribers.is_some_and(|s| s != n) {
                    return bad("pairs needs as many subscribers as publishers".into());
                }
                (n, n)
            }
        };
        if pubs == 0 || subs == 0 {
            return bad("at least one publisher and one subscriber".into());
        }
        if a.payload_size < HEADER_LEN || a.payload_size > 64 << 20 {
            return bad(format!(
                "--payload-size must be between {HEADER_LEN} and 64 MiB"
            ));
        }
        if a.count.is_none() && !(a.duration > 0.0 && a.duration.is_finite()) {
            return bad("--duration must be positive".into());
        }
        if a.count == Some(0) {
            return bad("--count must be positive".into());
        }
        if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return bad("--rate must be positive".into());
        }
        for (v, name) in [
            (a.warmup, "--warmup"),
            (a.drain, "--drain"),
            (a.settle.unwrap_or(0.0), "--settle"),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} must not be negative"));
            }
        }
        if !(a.connect_timeout > 0.0 && a.connect_timeout.is_finite()) {
            return bad("--connect-timeout must be positive".into());
        }
        if a.targets.is_empty() {
            return bad("no --targets".into());
        }
        if a.topic_prefix.is_empty() || a.topic_prefix.contains(['+', '#']) {
            return bad("--topic-prefix must be a non-empty topic without wildcards".into());
        }
        if a.share_group.is_empty() || a.share_group.contains(['+', '#', '/']) {
            return bad("--share-group must be a non-empty name without '/', '+' or '#'".into());
        }
        Ok(Plan {
            scenario: a.scenario,
            pubs,
            subs,
            base: format!("{}/{}", a.topic_prefix, client::run_tag()),
        })
    }

    fn pub_topic(&self, i: u32, single: bool) -> String {
        match self.scenario {
            Scenario::FanIn if single => format!("{}/in", self.base),
            Scenario::FanIn => format!("{}/in/{i}", self.base),
            Scenario::FanOut => format!("{}/out", self.base),
            Scenario::Pairs => format!("{}/pair/{i}", self.base),
            Scenario::Shared if single => format!("{}/shared", self.base),
            Scenario::Shared => format!("{}/shared/{i}", self.base),
            Scenario::ConnectStorm | Scenario::Idle => unreachable!("Plan::new rejects them"),
        }
    }

    fn sub_filter(&self, i: u32, single: bool, group: &str) -> String {
        match self.scenario {
            Scenario::FanIn if single => format!("{}/in", self.base),
            Scenario::FanIn => format!("{}/in/+", self.base),
            Scenario::FanOut => format!("{}/out", self.base),
            Scenario::Pairs => format!("{}/pair/{i}", self.base),
            Scenario::Shared if single => format!("$share/{group}/{}/shared", self.base),
            Scenario::Shared => format!("$share/{group}/{}/shared/+", self.base),
            Scenario::ConnectStorm | Scenario::Idle => unreachable!("Plan::new rejects them"),
        }
    }

    /// Deliveries each message should produce.
    fn fanout(&self) -> u64 {
        match self.scenario {
            Scenario::FanIn | Scenario::FanOut => u64::from(self.subs),
            Scenario::Pairs | Scenario::Shared | Scenario::ConnectStorm | Scenario::Idle => 1,
        }
    }

    /// (first publisher, number of publishers) subscriber `i` hears from.
    fn sub_range(&self, i: u32) -> (u32, u32) {
        match self.scenario {
            Scenario::Pairs => (i, 1),
            _ => (0, self.pubs),
        }
    }
}

async fn resolve(targets: &[String]) -> Result<Vec<SocketAddr>, BenchError> {
    let mut out = Vec::new();
    for t in targets {
        let t = t.trim();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(t)
            .await
            .map_err(|e| BenchError::Resolve {
                target: t.to_owned(),
                detail: e.to_string(),
            })?
            .collect();
        let a = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| BenchError::Resolve {
                target: t.to_owned(),
                detail: "no address".into(),
            })?;
        out.push(a);
    }
    Ok(out)
}

/// Waits until `n` clients have signalled readiness; a client ending first is an error.
async fn wait_ready<T: 'static>(
    n: u32,
    ready: &mut mpsc::UnboundedReceiver<()>,
    set: &mut JoinSet<Result<T, BenchError>>,
    timeout: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = 0;
    while got < n {
        tokio::select! {
            r = ready.recv() => match r {
                Some(()) => got += 1,
                None => return Err(BenchError::Timeout(format!("{what}: readiness channel closed"))),
            },
            Some(res) = set.join_next() => return Err(match res {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => BenchError::Timeout(format!("{what}: a client ended during setup")),
                Err(e) => BenchError::Timeout(format!("{what}: a client task failed: {e}")),
            }),
            _ = sleep_until(deadline) => {
                return Err(BenchError::Timeout(format!("{what}: only {got} of {n} ready after {timeout:?}")));
            }
        }
    }
    Ok(())
}

struct Snap {
    at: Instant,
    sent: u64,
    received: u64,
    cpu: Option<f64>,
    broker_cpu: Option<f64>,
}

impl Snap {
    fn take(shared: &Shared, broker: Option<u32>) -> Self {
        Snap {
            at: Instant::now(),
            sent: shared.total_sent(),
            received: shared.received.load(Ordering::Relaxed),
            cpu: procstat::cpu_seconds(None),
            broker_cpu: broker.and_then(|p| procstat::cpu_seconds(Some(p))),
        }
    }
}

/// Runs `run` on a multi-thread runtime of its own (`args.threads` workers).
pub fn run_blocking(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(t) = args.threads {
        b.worker_threads(t.max(1));
    }
    b.build().map_err(BenchError::Runtime)?.block_on(run(args))
}

/// Runs one benchmark. Call it on a multi-thread tokio runtime.
///
/// Prints a progress line every second and then a summary on stderr (unless `--quiet`),
/// and the JSON report on stdout with `--json`. Returns the report, or
/// [`BenchError::Delivery`] / [`BenchError::ClientsFailed`] (carrying the report) when the
/// run completed but failed its checks, or another error when it could not run.
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    if args.scenario.is_connections_only() {
        return storm::run(args).await;
    }
    let plan = Plan::new(&args)?;
    let targets = resolve(&args.targets).await?;
    let qos = QoS::from_u8(args.qos).expect("clap checks the range");
    let version = if args.mqtt_version == 5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let clients = (plan.pubs + plan.subs) as usize;
    // Buffers: generous for few clients, smaller for thousands.
    let chunk = ((16usize << 20) / clients).clamp(8 << 10, 256 << 10);
    let count_mode = args.count.is_some();
    let cfg = Arc::new(RunCfg {
        opts: conn::ClientOpts {
            version,
            keep_alive: args.keep_alive,
            username: args.username.clone(),
            password: args.password.clone(),
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            read_chunk: chunk,
        },
        qos,
        payload_size: args.payload_size,
        window: args.window,
        e2e_window: args.e2e_window.unwrap_or(u64::from(args.window)),
        rate: args.rate,
        count: args.count,
        publishers: plan.pubs,
        stall_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        ack_drain: Duration::from_secs_f64(args.drain),
        write_chunk: chunk.min(64 << 10),
    });
    let shared = Arc::new(Shared {
        clock: client::Clock::new(),
        received: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        measure_start_ns: AtomicU64::new(0),
        measure_end_ns: AtomicU64::new(u64::MAX),
        publishers: (0..plan.pubs).map(|_| PubCounters::default()).collect(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let limit = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let setup_timeout = Duration::from_secs_f64(args.connect_timeout)
        * (1 + clients as u32 / args.connect_concurrency.max(1) as u32);
    let addr_of = |k: usize| targets[k % targets.len()];
    let sources = args.sources();
    let source_of = |k: usize| (!sources.is_empty()).then(|| sources[k % sources.len()]);
    let progress = |msg: String| {
        if !args.quiet {
            eprintln!("{msg}");
        }
    };

    // Subscribers first: all subscribed before anyone publishes.
    let group = (plan.scenario == Scenario::Shared)
        .then(|| Arc::new(Mutex::new(tracker::StreamSet::new(0, plan.pubs))));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut subs = JoinSet::new();
    for i in 0..plan.subs {
        let (first, len) = plan.sub_range(i);
        let streams = match &group {
            Some(g) => Streams::Group(g.clone()),
            None => Streams::Own(tracker::StreamSet::new(first, len)),
        };
        let spec = SubSpec {
            id: i,
            filter: plan.sub_filter(i, args.single_topic, &args.share_group),
            addr: addr_of(i as usize),
            source: source_of(i as usize),
            streams,
            first_publisher: first,
            expected_publishers: len,
        };
        subs.spawn(client::subscriber(
            spec,
            cfg.clone(),
            shared.clone(),
            limit.clone(),
            ready_tx.clone(),
            phase_rx.clone(),
        ));
    }
    progress(format!(
        "{}: connecting {} subscriber(s) and {} publisher(s) to {}",
        plan.scenario.name(),
        plan.subs,
        plan.pubs,
        args.targets.join(",")
    ));
    wait_ready(
        plan.subs,
        &mut ready_rx,
        &mut subs,
        setup_timeout,
        "subscribers",
    )
    .await?;
    let settle = args
        .settle
        .unwrap_or(if targets.len() > 1 { 1.0 } else { 0.0 });
    if settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    }
    let mut pubs = JoinSet::new();
    for i in 0..plan.pubs {
        let k = (plan.subs + i) as usize;
        let spec = PubSpec {
            id: i,
            topic: plan.pub_topic(i, args.single_topic),
            addr: addr_of(k),
            source: source_of(k),
            fanout: plan.fanout(),
        };
        pubs.spawn(client::publisher(
            spec,
            cfg.clone(),
            shared.clone(),
            limit.clone(),
            ready_tx.clone(),
            phase_rx.clone(),
        ));
    }
    drop(ready_tx);
    if let Err(e) = wait_ready(
        plan.pubs,
        &mut ready_rx,
        &mut pubs,
        setup_timeout,
        "publishers",
    )
    .await
    {
        let _ = phase_tx.send(Phase::Stop);
        return Err(e);
    }

    // Go.
    let start = Instant::now();
    let warmup = if count_mode {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(args.warmup)
    };
    let measure_start = start + warmup;
    let deadline = (!count_mode).then(|| measure_start + Duration::from_secs_f64(args.duration));
    shared
        .measure_start_ns
        .store(shared.clock.at(measure_start), Ordering::Relaxed);
    if let Some(d) = deadline {
        shared
            .measure_end_ns
            .store(shared.clock.at(d), Ordering::Relaxed);
    }
    let _ = phase_tx.send(Phase::Run { start, deadline });

    let mut errors: Vec<String> = Vec::new();
    let mut pub_results: Vec<PubResult> = Vec::new();
    let mut snap_start = (warmup.is_zero()).then(|| Snap::take(&shared, args.broker_pid));
    let mut snap_end: Option<Snap> = None;
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = (0u64, 0u64, start);
    let far = start + Duration::from_secs(1 << 30);
    // Publishers stop at the deadline and then wait at most --drain for acknowledgements;
    // writes time out after 30 s. Past this, something is stuck.
    let give_up = deadline.unwrap_or(far) + cfg.ack_drain + Duration::from_secs(40);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let (s, r) = (shared.total_sent(), shared.received.load(Ordering::Relaxed));
                let dt = now.duration_since(last.2).as_secs_f64().max(1e-9);
                progress(format!(
                    "[{:>4.0}s] sent {:>9}/s  recv {:>9}/s{}",
                    now.duration_since(start).as_secs_f64(),
                    human((s - last.0) as f64 / dt),
                    human((r - last.1) as f64 / dt),
                    if last.2 < measure_start { "  (warm-up)" } else { "" }
                ));
                last = (s, r, now);
            }
            _ = sleep_until(measure_start.into()), if snap_start.is_none() => {
                snap_start = Some(Snap::take(&shared, args.broker_pid));
            }
            _ = sleep_until(deadline.unwrap_or(far).into()), if deadline.is_some() && snap_end.is_none() => {
                snap_end = Some(Snap::take(&shared, args.broker_pid));
            }
            _ = sleep_until(give_up.into()), if deadline.is_some() => {
                errors.push(format!("{} publisher(s) did not stop in time", pubs.len()));
                pubs.abort_all();
                break;
            }
            res = pubs.join_next() => match res {
                Some(Ok(Ok(r))) => pub_results.push(r),
                Some(Ok(Err(e))) => errors.push(e.to_string()),
                Some(Err(e)) => errors.push(format!("publisher task failed: {e}")),
                None => break,
            },
        }
    }
    let pubs_done = Snap::take(&shared, args.broker_pid);
    let snap_start = snap_start.unwrap_or_else(|| Snap::take(&shared, args.broker_pid));

    // Drain: until everything expected arrived (and then 100 ms more for stray
    // duplicates), or nothing arrived for a second, or --drain seconds.
    let sent_of: Vec<u64> = shared
        .publishers
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .collect();
    let expected: u64 = sent_of.iter().sum::<u64>() * plan.fanout();
    let drain_start = Instant::now();
    let max_drain = Duration::from_secs_f64(args.drain);
    let mut last_change = (shared.received.load(Ordering::Relaxed), drain_start);
    loop {
        let r = shared.received.load(Ordering::Relaxed);
        let now = Instant::now();
        if r != last_change.0 {
            last_change = (r, now);
        }
        if shared.unique.load(Ordering::Relaxed) >= expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
            break;
        }
        if now.duration_since(last_change.1) >= Duration::from_secs(1)
            || now.duration_since(drain_start) >= max_drain
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_recv_at = last_change.1;
    let _ = phase_tx.send(Phase::Stop);

    let mut sub_results: Vec<SubResult> = Vec::new();
    let collect_until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            res = subs.join_next() => match res {
                Some(Ok(Ok(r))) => sub_results.push(r),
                Some(Ok(Err(e))) => errors.push(e.to_string()),
                Some(Err(e)) => errors.push(format!("subscriber task failed: {e}")),
                None => break,
            },
            _ = sleep_until(collect_until) => {
                errors.push(format!("{} subscriber(s) did not stop in time", subs.len()));
                subs.abort_all();
                break;
            }
        }
    }

    // Work out the report.
    let (measure_secs, sent_rate, recv_rate, cpu, broker_cpu) = if count_mode {
        let send_secs = pubs_done.at.duration_since(start).as_secs_f64().max(1e-9);
        let recv_secs = last_recv_at.duration_since(start).as_secs_f64().max(1e-9);
        let received = shared.received.load(Ordering::Relaxed);
        (
            send_secs,
            pubs_done.sent as f64 / send_secs,
            received as f64 / recv_secs,
            diff(pubs_done.cpu, snap_start.cpu),
            diff(pubs_done.broker_cpu, snap_start.broker_cpu),
        )
    } else {
        let end = snap_end.as_ref().unwrap_or(&pubs_done);
        let secs = end.at.duration_since(snap_start.at).as_secs_f64().max(1e-9);
        (
            secs,
            (end.sent - snap_start.sent) as f64 / secs,
            (end.received - snap_start.received) as f64 / secs,
            diff(end.cpu, snap_start.cpu),
            diff(end.broker_cpu, snap_start.broker_cpu),
        )
    };

    let mut hist = Histogram::new();
    let (mut lost, mut dups, mut beyond, mut ooo, mut unexpected, mut received) =
        (0, 0, 0, 0, 0, 0);
    let mut add_outcomes = |set: &tracker::StreamSet| {
        for (p, t) in set.iter() {
            let o = t.finish(sent_of[p as usize]);
            lost += o.lost;
            dups += o.duplicates;
            beyond += o.beyond;
        }
    };
    let mut heard = vec![false; plan.subs as usize];
    for r in &sub_results {
        heard[r.id as usize] = true;
        hist.merge(&r.hist);
        ooo += r.out_of_order;
        unexpected += r.unexpected;
        received += r.received;
        if let Some(set) = &r.own {
            add_outcomes(set);
        }
    }
    if let Some(g) = &group {
        add_outcomes(&g.lock().unwrap_or_else(|e| e.into_inner()));
    } else {
        // A failed subscriber received nothing we can count.
        for (i, _) in heard.iter().enumerate().filter(|(_, h)| !**h) {
            let (first, len) = plan.sub_range(i as u32);
            lost += sent_of[first as usize..(first + len) as usize]
                .iter()
                .sum::<u64>();
        }
    }
    let pr = |f: fn(&PubResult) -> u64| pub_results.iter().map(f).sum::<u64>();
    let broker = args.broker_pid.map(|pid| {
        let (rss, peak) = procstat::memory_kib(pid).unwrap_or((0, 0));
        let cpu = broker_cpu.unwrap_or(0.0);
        BrokerUsage {
            pid,
            cpu_secs: cpu,
            cpu_percent: cpu / measure_secs * 100.0,
            rss_kib: rss,
            peak_rss_kib: peak,
        }
    });
    let cpu = cpu.unwrap_or(0.0);
    let report = BenchReport {
        label: args.label.clone(),
        scenario: plan.scenario.name().to_owned(),
        qos: args.qos,
        mqtt_version: args.mqtt_version,
        targets: args.targets.clone(),
        publishers: plan.pubs,
        subscribers: plan.subs,
        payload_size: args.payload_size,
        mode: if args.rate.is_some() {
            "rate"
        } else {
            "closed-loop"
        }
        .to_owned(),
        rate_per_publisher: args.rate,
        window: args.window,
        e2e_window: if args.rate.is_some() {
            0
        } else {
            cfg.e2e_window
        },
        measure_secs,
        sent: sent_of.iter().sum(),
        expected,
        received: received.max(shared.received.load(Ordering::Relaxed)),
        sent_per_sec: sent_rate,
        received_per_sec: recv_rate,
        latency: LatencyReport::from_hist(&hist),
        lost,
        duplicates: dups,
        out_of_order: ooo,
        unexpected: unexpected + beyond,
        acked: pr(|r| r.acked),
        unacked: pr(|r| r.unacked),
        rejected: pr(|r| r.rejected),
        stalls: pr(|r| r.stalls),
        client_cpu_secs: cpu,
        client_cpu_percent: cpu / measure_secs * 100.0,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        broker,
        connections: None,
        errors,
    };
    finish(&args, report)
}

/// Prints the summary (unless --quiet) and the JSON (with --json); a report with errors
/// or failed checks becomes the matching error.
fn finish(args: &BenchArgs, report: BenchReport) -> Result<BenchReport, BenchError> {
    if !args.quiet {
        eprint!("{}", report.summary());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    }
    if !report.errors.is_empty() {
        return Err(BenchError::ClientsFailed(Box::new(report)));
    }
    if !report.failures().is_empty() {
        return Err(BenchError::Delivery(Box::new(report)));
    }
    Ok(report)
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some((a? - b?).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(a: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("tern-bench").chain(a.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults() {
        let a = parse(&["fan-in"]).unwrap();
        assert_eq!(a.scenario, Scenario::FanIn);
        assert_eq!(a.targets, vec!["127.0.0.1:1883"]);
        assert_eq!(
            (a.mqtt_version, a.qos, a.payload_size, a.window),
            (4, 0, 100, 64)
        );
        let p = Plan::new(&a).unwrap();
        assert_eq!((p.pubs, p.subs, p.fanout()), (8, 1, 1));
        let p = Plan::new(&parse(&["fan-out"]).unwrap()).unwrap();
        assert_eq!((p.pubs, p.subs, p.fanout()), (1, 64, 64));
        let p = Plan::new(&parse(&["pairs", "--publishers", "500"]).unwrap()).unwrap();
        assert_eq!(
            (p.pubs, p.subs, p.fanout(), p.sub_range(7)),
            (500, 500, 1, (7, 1))
        );
        let p = Plan::new(&parse(&["shared"]).unwrap()).unwrap();
        assert_eq!(
            (p.pubs, p.subs, p.fanout(), p.sub_range(3)),
            (8, 4, 1, (0, 8))
        );
    }

    #[test]
    fn options_parse() {
        let a = parse(&[
            "shared",
            "--host",
            "a:1,b:2",
            "--mqtt-version",
            "5",
            "--qos",
            "2",
            "--count",
            "1000",
            "--rate",
            "50.5",
            "--source-addrs",
            "127.0.0.2,127.0.0.3",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.targets, vec!["a:1", "b:2"]);
        assert_eq!(
            (a.mqtt_version, a.qos, a.count, a.rate),
            (5, 2, Some(1000), Some(50.5))
        );
        assert_eq!(a.sources().len(), 2);
        assert!(a.json);
    }

    #[test]
    fn source_addrs_take_ranges() {
        let a = parse(&[
            "idle",
            "--source-addrs",
            "127.0.0.9,127.0.0.1-127.0.0.3,::1",
            "--clients",
            "5",
        ])
        .unwrap();
        let ips: Vec<String> = a.sources().iter().map(|i| i.to_string()).collect();
        assert_eq!(
            ips,
            ["127.0.0.9", "127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]
        );
        assert_eq!((a.scenario, a.clients), (Scenario::Idle, 5));
        let r = parse_source_addrs("127.0.0.250-127.0.1.4").unwrap();
        assert_eq!(r.0.len(), 11);
        assert!(parse_source_addrs("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_source_addrs("127.0.0.1-::1").is_err());
        assert!(parse_source_addrs("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_source_addrs("localhost").is_err());
        assert!(parse(&["connect-storm", "--source-addrs", "1.2.3"]).is_err());
    }

    #[test]
    fn connection_failures_fail_the_run() {
        let mut r = BenchReport {
            scenario: "idle".into(),
            connections: Some(ConnectionsReport {
                clients: 10,
                connected: 10,
                still_connected: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(r.failures().is_empty());
        assert!(r.summary().contains("10 still connected"));
        if let Some(c) = r.connections.as_mut() {
            c.dropped = 2;
            c.connected = 9;
            c.failed = 1;
        }
        assert_eq!(r.failures().len(), 2);
        assert!(r.summary().contains("FAILED"));
    }

    #[test]
    fn bad_options_are_rejected() {
        assert!(parse(&["fan-in", "--qos", "3"]).is_err());
        assert!(parse(&["fan-in", "--mqtt-version", "3"]).is_err());
        assert!(parse(&["fan-in", "--window", "0"]).is_err());
        assert!(parse(&["fan-in", "--duration", "5", "--count", "5"]).is_err());
        assert!(parse(&["fan-sideways"]).is_err());
        let plan = |a: &[&str]| Plan::new(&parse(a).unwrap());
        assert!(plan(&["fan-in", "--payload-size", "19"]).is_err());
        assert!(plan(&["fan-in", "--payload-size", "20"]).is_ok());
        assert!(plan(&["pairs", "--publishers", "3", "--subscribers", "4"]).is_err());
        assert!(plan(&["fan-in", "--publishers", "0"]).is_err());
        assert!(plan(&["fan-in", "--rate", "0"]).is_err());
        assert!(plan(&["shared", "--share-group", "a/b"]).is_err());
    }

    #[test]
    fn topics_and_filters_match_up() {
        let p = Plan::new(&parse(&["fan-in"]).unwrap()).unwrap();
        assert!(p.pub_topic(3, false).ends_with("/in/3"));
        assert!(p.sub_filter(0, false, "g").ends_with("/in/+"));
        assert_eq!(p.pub_topic(3, true), p.sub_filter(0, true, "g"));
        let p = Plan::new(&parse(&["shared"]).unwrap()).unwrap();
        assert!(p
            .sub_filter(0, false, "g")
            .starts_with("$share/g/tern-bench/"));
        let p = Plan::new(&parse(&["pairs"]).unwrap()).unwrap();
        assert_eq!(p.pub_topic(9, false), p.sub_filter(9, false, "g"));
    }

    #[test]
    fn failures_depend_on_qos() {
        let mut r = BenchReport {
            qos: 0,
            lost: 10,
            duplicates: 3,
            ..Default::default()
        };
        assert!(r.failures().is_empty());
        r.qos = 1;
        assert_eq!(r.failures().len(), 1);
        r.qos = 2;
        assert_eq!(r.failures().len(), 2);
        r = BenchReport {
            unexpected: 1,
            ..Default::default()
        };
        assert_eq!(r.failures().len(), 1);
        assert!(r.summary().contains("FAILED"));
    }
}
