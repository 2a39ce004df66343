//! The broker's counters: plain atomics bumped on the hot path, read by `$SYS` topics and
//! by the server's metrics endpoint. Rare events keyed by a label (malformed packets by
//! kind, connect outcomes by reason) sit in small locked maps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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

    pub fn sent_total(&self) -> u64 {
        self.messages_sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}
