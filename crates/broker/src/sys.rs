//! `$SYS/broker/...` statistics, published as retained messages every
//! `sys_interval_secs`, with the topic names mosquitto uses so existing dashboards and
//! habits carry over. Wildcard subscriptions starting with `+` or `#` never see them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{PublishProperties, QoS};

use crate::broker::Broker;
use crate::stats::DropReason;
use crate::Message;

/// Publishes the statistics until the broker is dropped or shuts down.
pub(crate) async fn publish_periodically(broker: Weak<Broker>) {
    let Some(interval) = broker.upgrade().map(|b| b.config().sys_interval_secs) else {
        return;
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.is_shutting_down() {
            return;
        }
        publish_once(&broker);
    }
}

/// The `$SYS` topics and their current values.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = &broker.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
    let connected = s.connections_current.load(Ordering::Relaxed).max(0);
    let offline = s.sessions_offline.load(Ordering::Relaxed).max(0);
    vec![
        (
            "$SYS/broker/version",
            format!("tern {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", broker.started_at.elapsed().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/disconnected", offline.to_string()),
        (
            "$SYS/broker/clients/total",
            (connected + offline).to_string(),
        ),
        ("$SYS/broker/clients/maximum", load(&s.connections_total)),
        (
            "$SYS/broker/messages/received",
            s.received_total().to_string(),
        ),
        ("$SYS/broker/messages/sent", s.sent_total().to_string()),
        (
            "$SYS/broker/messages/dropped",
            s.dropped_total().to_string(),
        ),
        (
            "$SYS/broker/messages/dropped/queue_full",
            s.dropped(DropReason::QueueFull).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/received",
            s.received_total().to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            s.sent_total().to_string(),
        ),
        ("$SYS/broker/bytes/received", load(&s.bytes_received)),
        ("$SYS/broker/bytes/sent", load(&s.bytes_sent)),
        (
            "$SYS/broker/subscriptions/count",
            s.subscriptions.load(Ordering::Relaxed).max(0).to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained_count().to_string(),
        ),
        (
            "$SYS/broker/packets/malformed",
            s.malformed().values().sum::<u64>().to_string(),
        ),
    ]
}

fn publish_once(broker: &Arc<Broker>) {
    let now = Instant::now();
    let origin: Arc<str> = Arc::from("");
    for (topic, value) in snapshot(broker) {
        let message = Message::from_publish(
            Arc::from(topic),
            Bytes::from(value),
            QoS::AtMostOnce,
            true,
            origin.clone(),
            PublishProperties::default(),
            now,
        );
        // Local only: every node publishes its own `$SYS` tree.
        let message = Arc::new(message);
        broker.store_retained(&message);
        broker.deliver_local(&message);
    }
}
