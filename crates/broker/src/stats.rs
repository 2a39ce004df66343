//! The broker's counters: plain atomics bumped on the hot path, read by `$SYS` topics and
//! by the server's metrics endpoint. Rare events keyed by a label (malformed packets by
//! kind, connect outcomes by reason) sit in small locked maps. Publish-to-delivery time
//! goes into a [`LatencyHistogram`]: a few atomic adds per delivery, no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Why a message did not reach a subscriber (or anybody).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A session's queue was full.
    QueueFull,
    /// The message expired before it could be delivered.
    Expired,
    /// The publisher was not allowed to publish to the topic.
    Acl,
    /// Larger than the receiving client's Maximum Packet Size.
    TooLarge,
    /// Nobody subscribed to the topic.
    NoSubscriber,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        Self::QueueFull,
        Self::Expired,
        Self::Acl,
        Self::TooLarge,
        Self::NoSubscriber,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Expired => "expired",
            Self::Acl => "acl",
            Self::TooLarge => "too_large",
            Self::NoSubscriber => "no_subscriber",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub connections_current: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_v311: AtomicI64,
    pub connections_v5: AtomicI64,
    pub sessions_offline: AtomicI64,
    pub subscriptions: AtomicI64,
    pub messages_received: [AtomicU64; 3],
    pub messages_sent: [AtomicU64; 3],
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    dropped: [AtomicU64; 5],
    malformed: Mutex<BTreeMap<&'static str, u64>>,
    connect_outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from a PUBLISH arriving at this node (from a client or another node) to its
    /// encoding for a subscriber.
    pub delivery_latency: LatencyHistogram,
}

impl Stats {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn count_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|&r| self.dropped(r)).sum()
    }

    pub fn count_malformed(&self, kind: &'static str) {
        *self.malformed.lock().entry(kind).or_default() += 1;
    }

    pub fn malformed(&self) -> BTreeMap<&'static str, u64> {
        self.malformed.lock().clone()
    }

    pub fn count_connect_outcome(&self, reason: &'static str) {
        *self.connect_outcomes.lock().entry(reason).or_default() += 1;
    }

    pub fn connect_outcomes(&self) -> BTreeMap<&'static str, u64> {
        self.connect_outcomes.lock().clone()
    }

    pub fn received_total(&self) -> u64 {
        self.messages_received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Adds what one connection counted while it wrote a batch of messages.
    pub fn add_deliveries(&self, tally: &DeliveryTally) {
        for (counter, &n) in self.messages_sent.iter().zip(&tally.sent) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if tally.too_large > 0 {
            self.count_dropped(DropReason::TooLarge, tally.too_large);
        }
        self.delivery_latency.add(&tally.latency);
    }

    pub fn sent_total(&self) -> u64 {
        self.messages_sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Deliveries counted by one connection over one batch, added to [`Stats`] in one go:
/// counting each delivery straight into the shared counters made every core fight over
/// their cache lines once per message.
#[derive(Default)]
pub struct DeliveryTally {
    /// Messages sent, by QoS.
    pub sent: [u64; 3],
    /// Messages not sent: larger than the client's Maximum Packet Size.
    pub too_large: u64,
    pub latency: LatencyTally,
}

/// A [`LatencyHistogram`]'s observations gathered without atomics.
#[derive(Default)]
pub struct LatencyTally {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_micros: u64,
}

impl LatencyTally {
    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }
}

/// Upper bounds, in seconds, of [`LatencyHistogram`]'s buckets (a last one, +Inf, follows).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// [`LATENCY_BUCKETS`] in microseconds, what [`LatencyHistogram::record`] compares.
const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A lock-free histogram of durations with fixed buckets ([`LATENCY_BUCKETS`]): one counter
/// per bucket (not cumulative; the last is +Inf) and the sum in microseconds. Recording is
/// two relaxed atomic adds; the count is the sum of the buckets, so a snapshot is always
/// consistent with itself.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// What [`LatencyHistogram::snapshot`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative counts, one per [`LATENCY_BUCKETS`] entry (observations <= the bound).
    pub cumulative: Vec<u64>,
    /// Observations in all, the +Inf bucket.
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Adds a tally's observations.
    pub fn add(&self, tally: &LatencyTally) {
        for (bucket, &n) in self.buckets.iter().zip(&tally.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        if tally.sum_micros > 0 {
            self.sum_micros
                .fetch_add(tally.sum_micros, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        let mut running = 0u64;
        for bucket in &self.buckets[..LATENCY_BUCKETS.len()] {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The bucket of [`LATENCY_BUCKETS_MICROS`] an observation of `micros` falls in.
fn bucket_of(micros: u64) -> usize {
    LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_up_to_the_same_histogram_as_single_records() {
        let samples = [10, 50, 51, 3_000, 60_000_000u64].map(Duration::from_micros);
        let direct = LatencyHistogram::default();
        let tallied = LatencyHistogram::default();
        let mut tally = LatencyTally::default();
        for s in samples {
            direct.record(s);
            tally.record(s);
        }
        tallied.add(&tally);
        assert_eq!(direct.snapshot(), tallied.snapshot());
    }

    #[test]
    fn bucket_bounds_agree() {
        for (secs, micros) in LATENCY_BUCKETS.iter().zip(LATENCY_BUCKETS_MICROS) {
            assert_eq!((secs * 1e6).round() as u64, micros);
        }
    }

    #[test]
    fn latency_histogram_counts_cumulatively() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(50)); // on a bound: counted in it (le)
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[5], 2); // <= 2.5 ms
        assert_eq!(s.cumulative[6], 3); // <= 5 ms
        assert_eq!(*s.cumulative.last().unwrap(), 3);
        assert!(
            (s.sum_seconds - 60.003_06).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }
}
