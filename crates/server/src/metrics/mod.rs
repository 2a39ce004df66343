//! `GET /metrics`: the node's Prometheus metrics in the text format.
//!
//! Each node has its own [`Registry`] (many nodes run in one test process, so the global
//! default registry is never used). Nothing here is touched on the hot path: one custom
//! [`Collector`] reads the broker's [`Stats`](tern_broker::Stats), the listeners' counters
//! and, when clustered, a [`ClusterStatus`] and [`ClusterStats`] snapshot at scrape time
//! and turns them into metric families. The process collector adds `process_*` (memory, CPU, open files) on
//! Linux. docs/operations.md lists every metric; a test keeps the two in step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use tern_broker::stats::{DropReason, LATENCY_BUCKETS};
use tern_broker::Broker;
use tern_cluster::node::{ClusterStats, BATCH_SIZE_BUCKETS};
use tern_cluster::{ClusterNode, ClusterStatus};

use crate::listener::ListenerStats;

/// One metric family: its name, type and HELP text.
#[derive(Debug)]
pub struct Def {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
}

const fn def(name: &'static str, kind: MetricType, help: &'static str) -> Def {
    Def { name, kind, help }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const CONNECTIONS: Def = def(
    "tern_connections",
    GAUGE,
    "MQTT connections open now, by protocol version.",
);
const CONNECTIONS_TOTAL: Def = def(
    "tern_connections_total",
    COUNTER,
    "MQTT connections accepted by the broker (CONNECT succeeded) since start.",
);
const LISTENER_CONNECTIONS: Def = def(
    "tern_listener_connections",
    GAUGE,
    "Connections a listener is serving now (MQTT ones include those still before CONNECT).",
);
const LISTENER_ACCEPTED: Def = def(
    "tern_listener_accepted_total",
    COUNTER,
    "TCP connections a listener accepted and handed to a connection task.",
);
const LISTENER_REJECTED: Def = def(
    "tern_listener_rejected_total",
    COUNTER,
    "TCP connections a listener closed at once because its max_connections were open.",
);
const LISTENER_ACCEPT_ERRORS: Def = def(
    "tern_listener_accept_errors_total",
    COUNTER,
    "Failed accept calls of a listener (e.g. out of file descriptors).",
);
const CONNECT_OUTCOMES: Def = def(
    "tern_connect_outcomes_total",
    COUNTER,
    "CONNECT attempts by outcome: success, a CONNACK reason code name, or timeout.",
);
const SESSIONS: Def = def(
    "tern_sessions",
    GAUGE,
    "Sessions on this node: online (client connected) or offline (persistent, kept for a client that left).",
);
const SUBSCRIPTIONS: Def = def(
    "tern_subscriptions",
    GAUGE,
    "Subscriptions (client, filter) of this node's sessions.",
);
const MESSAGES_RECEIVED: Def = def(
    "tern_messages_received_total",
    COUNTER,
    "PUBLISH packets received from clients, by QoS.",
);
const MESSAGES_DELIVERED: Def = def(
    "tern_messages_delivered_total",
    COUNTER,
    "PUBLISH packets sent to clients (resends included), by QoS of the delivery.",
);
const MESSAGES_DROPPED: Def = def(
    "tern_messages_dropped_total",
    COUNTER,
    "Messages that did not reach a subscriber (or anybody), by reason.",
);
const BYTES_RECEIVED: Def = def(
    "tern_bytes_received_total",
    COUNTER,
    "Bytes read from MQTT client connections.",
);
const BYTES_SENT: Def = def(
    "tern_bytes_sent_total",
    COUNTER,
    "Bytes written to MQTT client connections.",
);
const RETAINED: Def = def(
    "tern_retained_messages",
    GAUGE,
    "Retained messages this node holds ($SYS topics included).",
);
const MALFORMED: Def = def(
    "tern_malformed_packets_total",
    COUNTER,
    "Packets from clients that could not be decoded, by kind of error.",
);
const DELIVERY_SECONDS: Def = def(
    "tern_publish_delivery_seconds",
    HISTOGRAM,
    "Time from a PUBLISH arriving at this node to its sending to a local subscriber (not resends or retained messages).",
);
const CLUSTER_READY: Def = def(
    "tern_cluster_ready",
    GAUGE,
    "1 when this node has joined the cluster and caught up with the Raft log, else 0.",
);
const CLUSTER_ROUTES: Def = def(
    "tern_cluster_routes",
    GAUGE,
    "(node, filter) routes in the replicated route table.",
);
const CLUSTER_SHARED_ROUTES: Def = def(
    "tern_cluster_shared_routes",
    GAUGE,
    "(group, filter, node) shared-subscription routes in the replicated route table.",
);
const CLUSTER_CLAIMS: Def = def(
    "tern_cluster_client_claims",
    GAUGE,
    "Client ids claimed by some node in the replicated state.",
);
const RAFT_TERM: Def = def("tern_raft_term", GAUGE, "Current Raft term.");
const RAFT_LEADER: Def = def(
    "tern_raft_leader",
    GAUGE,
    "1, labelled with the node id of the Raft leader as this node knows it (absent when unknown).",
);
const RAFT_IS_LEADER: Def = def(
    "tern_raft_is_leader",
    GAUGE,
    "1 when this node is the Raft leader, else 0.",
);
const RAFT_ROLE: Def = def(
    "tern_raft_role",
    GAUGE,
    "1 for this node's Raft role (leader, follower or learner), 0 for the others.",
);
const RAFT_COMMIT_INDEX: Def = def(
    "tern_raft_commit_index",
    GAUGE,
    "Index of the last entry in this node's Raft log.",
);
const RAFT_APPLIED_INDEX: Def = def(
    "tern_raft_applied_index",
    GAUGE,
    "Index of the last Raft entry applied to this node's state machine.",
);
const RAFT_MEMBERS: Def = def(
    "tern_raft_members",
    GAUGE,
    "Cluster members by Raft role (voter or learner).",
);
const RAFT_REPLICATION_LAG: Def = def(
    "tern_raft_replication_lag",
    GAUGE,
    "Raft log entries a member is behind the leader's log (reported by the leader only).",
);
const LINK_CONNECTED: Def = def(
    "tern_link_connected",
    GAUGE,
    "1 when the QUIC link to a peer node is connected, else 0.",
);
const LINK_RTT: Def = def(
    "tern_link_rtt_seconds",
    GAUGE,
    "Round-trip time of the QUIC link to a peer node (absent until measured).",
);
const LINK_SENT: Def = def(
    "tern_link_sent_bytes_total",
    COUNTER,
    "Bytes sent to a peer node over its QUIC link.",
);
const LINK_RECEIVED: Def = def(
    "tern_link_received_bytes_total",
    COUNTER,
    "Bytes received from a peer node over its QUIC link.",
);
const LINK_BACKLOG: Def = def(
    "tern_link_backlog",
    GAUGE,
    "Forwarded messages waiting for a peer node, acknowledged or not.",
);
const LINK_UNACKED: Def = def(
    "tern_link_unacked",
    GAUGE,
    "Forwarded messages sent to a peer node and not acknowledged yet.",
);
const LINK_RESENT: Def = def(
    "tern_link_resent_total",
    COUNTER,
    "Forwarded messages sent again to a peer node after its link reconnected.",
);
const LINK_OVERFLOW_DROPPED: Def = def(
    "tern_link_overflow_dropped_total",
    COUNTER,
    "Forwarded messages dropped because a peer node's backlog was full.",
);
const LINK_SENT_FRAMES: Def = def(
    "tern_link_sent_frames_total",
    COUNTER,
    "Transport frames (Raft, requests, forwarded batches, acks) sent to a peer node.",
);
const LINK_RECEIVED_FRAMES: Def = def(
    "tern_link_received_frames_total",
    COUNTER,
    "Transport frames (Raft, requests, forwarded batches, acks) received from a peer node.",
);
const FORWARD_ACK_SECONDS: Def = def(
    "tern_forward_ack_seconds",
    HISTOGRAM,
    "Time from this node receiving a QoS 1/2 message (it is queued for peer nodes as it is delivered here) to a peer node's acknowledgement, sent after the peer's local delivery (measured on this, the origin node).",
);
const RAFT_PROPOSALS: Def = def(
    "tern_raft_proposals_total",
    COUNTER,
    "Commands this node proposed to Raft (a batch counts once), directly or through the leader.",
);
const RAFT_PROPOSAL_FAILURES: Def = def(
    "tern_raft_proposal_failures_total",
    COUNTER,
    "Proposals of this node that did not commit within their 10 s deadline (route, claim and retained batches are then retried).",
);
const DEAD_MEMBERS_REMOVED: Def = def(
    "tern_cluster_dead_members_removed_total",
    COUNTER,
    "Members this node, as leader, removed from the cluster after cluster.remove_dead_after_secs without a link.",
);
const CLUSTER_UDP_RECEIVE_DROPS: Def = def(
    "tern_cluster_udp_receive_drops_total",
    COUNTER,
    "Datagrams the kernel dropped on this node's cluster UDP socket, mostly for a full receive buffer (cluster.transport.udp_receive_buffer, capped by net.core.rmem_max). Linux only.",
);
const CLUSTER_FORWARD_MALFORMED: Def = def(
    "tern_cluster_forward_malformed_frames_total",
    COUNTER,
    "Forwarded batches and acks from peers that could not be decoded. The first closes the link it came on (the peer resends what was unacknowledged on the next); another from the same peer within a minute is skipped, its messages lost.",
);
const RAFT_PROPOSAL_BATCH: Def = def(
    "tern_raft_proposal_batch_commands",
    HISTOGRAM,
    "Commands (route changes, claims, retained messages) per batched proposal of this node.",
);
const RAFT_SNAPSHOTS: Def = def(
    "tern_raft_snapshots_total",
    COUNTER,
    "Raft state-machine snapshots: built by this node (log compaction) or installed from the leader.",
);

/// Every family the Tern collector can report (process_* come from the process collector).
pub const ALL: &[&Def] = &[
    &CONNECTIONS,
    &CONNECTIONS_TOTAL,
    &LISTENER_CONNECTIONS,
    &LISTENER_ACCEPTED,
    &LISTENER_REJECTED,
    &LISTENER_ACCEPT_ERRORS,
    &CONNECT_OUTCOMES,
    &SESSIONS,
    &SUBSCRIPTIONS,
    &MESSAGES_RECEIVED,
    &MESSAGES_DELIVERED,
    &MESSAGES_DROPPED,
    &BYTES_RECEIVED,
    &BYTES_SENT,
    &RETAINED,
    &MALFORMED,
    &DELIVERY_SECONDS,
    &CLUSTER_READY,
    &CLUSTER_ROUTES,
    &CLUSTER_SHARED_ROUTES,
    &CLUSTER_CLAIMS,
    &RAFT_TERM,
    &RAFT_LEADER,
    &RAFT_IS_LEADER,
    &RAFT_ROLE,
    &RAFT_COMMIT_INDEX,
    &RAFT_APPLIED_INDEX,
    &RAFT_MEMBERS,
    &RAFT_REPLICATION_LAG,
    &LINK_CONNECTED,
    &LINK_RTT,
    &LINK_SENT,
    &LINK_RECEIVED,
    &LINK_BACKLOG,
    &LINK_UNACKED,
    &LINK_RESENT,
    &LINK_OVERFLOW_DROPPED,
    &LINK_SENT_FRAMES,
    &LINK_RECEIVED_FRAMES,
    &FORWARD_ACK_SECONDS,
    &RAFT_PROPOSALS,
    &RAFT_PROPOSAL_FAILURES,
    &DEAD_MEMBERS_REMOVED,
    &CLUSTER_UDP_RECEIVE_DROPS,
    &CLUSTER_FORWARD_MALFORMED,
    &RAFT_PROPOSAL_BATCH,
    &RAFT_SNAPSHOTS,
];

/// The content type of [`NodeMetrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A node's registry and what its collector reads.
pub struct NodeMetrics {
    registry: Registry,
    cluster: Option<Arc<ClusterNode>>,
    /// The cluster snapshot of the scrape under way; [`TernCollector`] reads it.
    status: Arc<Mutex<Option<ClusterScrape>>>,
    /// One scrape at a time, so a scrape reads its own snapshot.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("clustered", &self.cluster.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeMetrics {
    /// A registry with the Tern collector (reading `broker`, `listeners` by name and, when
    /// clustered, `cluster`) and, on Linux, the process collector.
    pub fn new(
        broker: Arc<Broker>,
        cluster: Option<Arc<ClusterNode>>,
        listeners: Vec<(&'static str, Arc<ListenerStats>)>,
    ) -> Self {
        let registry = Registry::new();
        let status = Arc::new(Mutex::new(None));
        let collector = TernCollector::new(broker, listeners, status.clone());
        registry
            .register(Box::new(collector))
            .expect("the Tern collector's families are distinct");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once per registry");
        Self {
            registry,
            cluster,
            status,
            scrape: Mutex::new(()),
        }
    }

    /// Every metric now, in the text format.
    pub async fn render(&self) -> String {
        let status = match &self.cluster {
            Some(cluster) => Some((cluster.status().await, cluster.stats())),
            None => None,
        };
        self.render_with(status)
    }

    /// Every metric with `status` as the cluster's state and counters (`None`: not
    /// clustered).
    pub fn render_with(&self, status: Option<ClusterScrape>) -> String {
        let _scrape = lock(&self.scrape);
        *lock(&self.status) = status;
        let families = self.registry.gather();
        *lock(&self.status) = None;
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What a scrape reads of the cluster: its status and the counters only metrics show.
pub type ClusterScrape = (ClusterStatus, ClusterStats);

/// Reads the node's counters at scrape time.
struct TernCollector {
    broker: Arc<Broker>,
    listeners: Vec<(&'static str, Arc<ListenerStats>)>,
    status: Arc<Mutex<Option<ClusterScrape>>>,
    descs: Vec<Desc>,
}

impl TernCollector {
    fn new(
        broker: Arc<Broker>,
        listeners: Vec<(&'static str, Arc<ListenerStats>)>,
        status: Arc<Mutex<Option<ClusterScrape>>>,
    ) -> Self {
        let descs = ALL
            .iter()
            .map(|d| {
                Desc::new(d.name.into(), d.help.into(), Vec::new(), HashMap::new())
                    .expect("valid metric name and help")
            })
            .collect();
        Self {
            broker,
            listeners,
            status,
            descs,
        }
    }
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// Builds the families of one scrape.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, def: &Def) -> &mut MetricFamily {
        if self.0.last().is_none_or(|f| f.name() != def.name) {
            let mut family = MetricFamily::default();
            family.set_name(def.name.into());
            family.set_help(def.help.into());
            family.set_field_type(def.kind);
            self.0.push(family);
        }
        self.0.last_mut().expect("just pushed")
    }

    /// One sample of a gauge or counter family.
    fn value(&mut self, def: &Def, labels: Labels<'_>, value: f64) {
        let mut metric = proto::Metric::default();
        metric.set_label(label_pairs(labels));
        match def.kind {
            MetricType::COUNTER => {
                let mut counter = proto::Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.family(def).mut_metric().push(metric);
    }

    /// One histogram: cumulative counts per bound in `bounds`, then count (+Inf) and sum.
    fn histogram(
        &mut self,
        def: &Def,
        labels: Labels<'_>,
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        histogram.set_bucket(
            bounds
                .iter()
                .zip(cumulative)
                .map(|(&bound, &n)| {
                    let mut bucket = proto::Bucket::default();
                    bucket.set_upper_bound(bound);
                    bucket.set_cumulative_count(n);
                    bucket
                })
                .collect(),
        );
        let mut metric = proto::Metric::default();
        metric.set_label(label_pairs(labels));
        metric.set_histogram(histogram);
        self.family(def).mut_metric().push(metric);
    }
}

fn label_pairs(labels: Labels<'_>) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name((*name).into());
            pair.set_value((*value).into());
            pair
        })
        .collect()
}

const QOS: [&str; 3] = ["0", "1", "2"];

impl Collector for TernCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.broker.stats;
        let mut f = Families::default();

        f.value(
            &CONNECTIONS,
            &[("version", "3.1.1")],
            stats.connections_v311.load(Relaxed).max(0) as f64,
        );
        f.value(
            &CONNECTIONS,
            &[("version", "5.0")],
            stats.connections_v5.load(Relaxed).max(0) as f64,
        );
        f.value(
            &CONNECTIONS_TOTAL,
            &[],
            stats.connections_total.load(Relaxed) as f64,
        );
        let counts: Vec<_> = self
            .listeners
            .iter()
            .map(|(name, stats)| (*name, stats.counts()))
            .collect();
        for (name, c) in &counts {
            f.value(
                &LISTENER_CONNECTIONS,
                &[("listener", name)],
                c.active as f64,
            );
        }
        for (name, c) in &counts {
            f.value(&LISTENER_ACCEPTED, &[("listener", name)], c.accepted as f64);
        }
        for (name, c) in &counts {
            f.value(&LISTENER_REJECTED, &[("listener", name)], c.rejected as f64);
        }
        for (name, c) in &counts {
            f.value(
                &LISTENER_ACCEPT_ERRORS,
                &[("listener", name)],
                c.accept_errors as f64,
            );
        }
        for (reason, n) in stats.connect_outcomes() {
            f.value(&CONNECT_OUTCOMES, &[("reason", reason)], n as f64);
        }
        let offline = stats.sessions_offline.load(Relaxed).max(0) as u64;
        let sessions = self.broker.session_count() as u64;
        f.value(
            &SESSIONS,
            &[("state", "online")],
            sessions.saturating_sub(offline) as f64,
        );
        f.value(&SESSIONS, &[("state", "offline")], offline as f64);
        f.value(
            &SUBSCRIPTIONS,
            &[],
            stats.subscriptions.load(Relaxed).max(0) as f64,
        );

        for (qos, counter) in QOS.iter().zip(&stats.messages_received) {
            f.value(
                &MESSAGES_RECEIVED,
                &[("qos", qos)],
                counter.load(Relaxed) as f64,
            );
        }
        for (qos, counter) in QOS.iter().zip(&stats.messages_sent) {
            f.value(
                &MESSAGES_DELIVERED,
                &[("qos", qos)],
                counter.load(Relaxed) as f64,
            );
        }
        for reason in DropReason::ALL {
            f.value(
                &MESSAGES_DROPPED,
                &[("reason", reason.label())],
                stats.dropped(reason) as f64,
            );
        }
        f.value(
            &BYTES_RECEIVED,
            &[],
            stats.bytes_received.load(Relaxed) as f64,
        );
        f.value(&BYTES_SENT, &[], stats.bytes_sent.load(Relaxed) as f64);
        f.value(&RETAINED, &[], self.broker.retained_count() as f64);
        for (kind, n) in stats.malformed() {
            f.value(&MALFORMED, &[("kind", kind)], n as f64);
        }
        let latency = stats.delivery_latency.snapshot();
        f.histogram(
            &DELIVERY_SECONDS,
            &[],
            &LATENCY_BUCKETS,
            &latency.cumulative,
            latency.count,
            latency.sum_seconds,
        );

        if let Some((status, stats)) = lock(&self.status).as_ref() {
            cluster_families(&mut f, status, stats);
        }
        f.0
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn cluster_families(f: &mut Families, status: &ClusterStatus, stats: &ClusterStats) {
    f.value(&CLUSTER_READY, &[], flag(status.ready));
    f.value(&CLUSTER_ROUTES, &[], status.route_count as f64);
    f.value(
        &CLUSTER_SHARED_ROUTES,
        &[],
        status.shared_route_count as f64,
    );
    f.value(&CLUSTER_CLAIMS, &[], status.claim_count as f64);
    f.value(&RAFT_TERM, &[], status.term as f64);
    if let Some(leader) = status.leader {
        f.value(&RAFT_LEADER, &[("node_id", &leader.to_string())], 1.0);
    }
    let is_leader = status.leader == Some(status.node_id);
    f.value(&RAFT_IS_LEADER, &[], flag(is_leader));
    let me = status.members.iter().find(|m| m.node_id == status.node_id);
    let role = if is_leader {
        "leader"
    } else if me.is_some_and(|m| m.role == "learner") {
        "learner"
    } else {
        "follower"
    };
    for r in ["leader", "follower", "learner"] {
        f.value(&RAFT_ROLE, &[("role", r)], flag(r == role));
    }
    f.value(
        &RAFT_COMMIT_INDEX,
        &[],
        status.commit_index.unwrap_or(0) as f64,
    );
    f.value(
        &RAFT_APPLIED_INDEX,
        &[],
        status.applied_index.unwrap_or(0) as f64,
    );
    let mut roles: BTreeMap<&str, u64> = [("learner", 0), ("voter", 0)].into();
    for m in &status.members {
        *roles.entry(m.role.as_str()).or_default() += 1;
    }
    for (role, n) in roles {
        f.value(&RAFT_MEMBERS, &[("role", role)], n as f64);
    }
    if is_leader {
        let last = status.commit_index.unwrap_or(0);
        for m in status
            .members
            .iter()
            .filter(|m| m.node_id != status.node_id)
        {
            let lag = last.saturating_sub(m.matched_index.unwrap_or(0));
            f.value(
                &RAFT_REPLICATION_LAG,
                &[("peer", &m.node_id.to_string()), ("region", &m.region)],
                lag as f64,
            );
        }
    }

    let regions: BTreeMap<_, _> = status
        .members
        .iter()
        .map(|m| (m.node_id, m.region.as_str()))
        .collect();
    let links: Vec<_> = status
        .links
        .iter()
        .map(|l| {
            let peer = l.node_id.to_string();
            let region = regions.get(&l.node_id).copied().unwrap_or("");
            (peer, region, l)
        })
        .collect();
    type Field = fn(&tern_cluster::node::LinkView) -> Option<f64>;
    let per_link: [(&Def, Field); 8] = [
        (&LINK_CONNECTED, |l| Some(flag(l.connected))),
        (&LINK_RTT, |l| l.rtt_ms.map(|ms| ms / 1000.0)),
        (&LINK_SENT, |l| Some(l.bytes_sent as f64)),
        (&LINK_RECEIVED, |l| Some(l.bytes_received as f64)),
        (&LINK_BACKLOG, |l| Some(l.backlog as f64)),
        (&LINK_UNACKED, |l| Some(l.unacked as f64)),
        (&LINK_RESENT, |l| Some(l.resent_total as f64)),
        (&LINK_OVERFLOW_DROPPED, |l| Some(l.overflow_dropped as f64)),
    ];
    for (def, field) in per_link {
        for (peer, region, link) in &links {
            if let Some(v) = field(link) {
                f.value(def, &[("peer", peer), ("region", region)], v);
            }
        }
    }

    let peers: Vec<_> = stats
        .peers
        .iter()
        .map(|p| {
            let region = regions.get(&p.node_id).copied().unwrap_or("");
            (p.node_id.to_string(), region, p)
        })
        .collect();
    for (peer, region, p) in &peers {
        let labels = [("peer", peer.as_str()), ("region", *region)];
        f.value(&LINK_SENT_FRAMES, &labels, p.frames_sent as f64);
    }
    for (peer, region, p) in &peers {
        let labels = [("peer", peer.as_str()), ("region", *region)];
        f.value(&LINK_RECEIVED_FRAMES, &labels, p.frames_received as f64);
    }
    for (peer, region, p) in &peers {
        let h = &p.forward_ack;
        f.histogram(
            &FORWARD_ACK_SECONDS,
            &[("peer", peer), ("region", region)],
            &LATENCY_BUCKETS,
            &h.cumulative,
            h.count,
            h.sum_seconds,
        );
    }

    f.value(&RAFT_PROPOSALS, &[], stats.proposals as f64);
    f.value(&RAFT_PROPOSAL_FAILURES, &[], stats.proposal_failures as f64);
    f.value(
        &DEAD_MEMBERS_REMOVED,
        &[],
        stats.dead_members_removed as f64,
    );
    if let Some(drops) = stats.udp_receive_drops {
        f.value(&CLUSTER_UDP_RECEIVE_DROPS, &[], drops as f64);
    }
    f.value(
        &CLUSTER_FORWARD_MALFORMED,
        &[],
        stats.malformed_forward_frames as f64,
    );
    let batch = &stats.proposal_batch_size;
    f.histogram(
        &RAFT_PROPOSAL_BATCH,
        &[],
        &BATCH_SIZE_BUCKETS,
        &batch.cumulative,
        batch.count,
        batch.sum,
    );
    f.value(
        &RAFT_SNAPSHOTS,
        &[("source", "built")],
        stats.snapshots_built as f64,
    );
    f.value(
        &RAFT_SNAPSHOTS,
        &[("source", "installed")],
        stats.snapshots_installed as f64,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_broker::{AuthConfig, BrokerConfig};
    use tern_cluster::node::{LinkView, MemberStatus};

    use super::*;

    fn node_metrics() -> (Arc<Broker>, NodeMetrics) {
        let broker = Broker::new(
            BrokerConfig::default(),
            AuthConfig::default(),
            tern_cluster::single_node(),
        )
        .unwrap();
        let listener = Arc::new(ListenerStats::default());
        let metrics = NodeMetrics::new(broker.clone(), None, vec![("mqtt", listener)]);
        (broker, metrics)
    }

    fn member(node_id: u64, region: &str, role: &str, matched: u64) -> MemberStatus {
        MemberStatus {
            node_id,
            cluster_addr: format!("127.0.0.1:{}", 7000 + node_id),
            region: region.into(),
            role: role.into(),
            matched_index: Some(matched),
        }
    }

    fn cluster_status() -> ClusterStatus {
        ClusterStatus {
            node_id: 1,
            region: "eu".into(),
            ready: true,
            leader: Some(1),
            term: 7,
            commit_index: Some(42),
            applied_index: Some(41),
            membership_changing: false,
            members: vec![
                member(1, "eu", "voter", 42),
                member(2, "us", "voter", 40),
                member(3, "ap", "learner", 30),
            ],
            route_count: 5,
            shared_route_count: 1,
            claim_count: 9,
            retained_count: 2,
            links: vec![
                LinkView {
                    node_id: 2,
                    connected: true,
                    rtt_ms: Some(12.5),
                    udp_payload: Some(1452),
                    protocol_version: Some(2),
                    bytes_sent: 1000,
                    bytes_received: 2000,
                    backlog: 3,
                    unacked: 1,
                    resent_total: 4,
                    overflow_dropped: 0,
                },
                LinkView {
                    node_id: 3,
                    connected: false,
                    ..LinkView::default()
                },
            ],
        }
    }

    fn cluster_stats() -> ClusterStats {
        let ack = tern_broker::stats::LatencyHistogram::default();
        ack.record(Duration::from_millis(3));
        ack.record(Duration::from_millis(30));
        ClusterStats {
            proposals: 11,
            proposal_failures: 1,
            proposal_batch_size: tern_cluster::node::HistogramSnapshot {
                cumulative: vec![1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2],
                count: 2,
                sum: 4.0,
            },
            snapshots_built: 2,
            snapshots_installed: 1,
            dead_members_removed: 0,
            udp_receive_drops: Some(5),
            malformed_forward_frames: 2,
            peers: vec![tern_cluster::node::PeerStats {
                node_id: 2,
                frames_sent: 70,
                frames_received: 80,
                forward_ack: ack.snapshot(),
            }],
        }
    }

    fn scrape() -> Option<ClusterScrape> {
        Some((cluster_status(), cluster_stats()))
    }

    /// The sample line of `name` with exactly `labels` (as rendered), and its value.
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    #[test]
    fn every_family_is_rendered_with_help_type_and_docs() {
        let (broker, metrics) = node_metrics();
        broker.stats.count_malformed("bad_utf8");
        broker.stats.count_connect_outcome("success");
        broker.stats.messages_received[1].fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        broker
            .stats
            .delivery_latency
            .record(Duration::from_micros(700));
        let text = metrics.render_with(scrape());
        let docs = include_str!("../../../../docs/operations.md");
        for def in ALL {
            let kind = match def.kind {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                other => panic!("unexpected type {other:?}"),
            };
            assert!(
                text.contains(&format!("# HELP {} {}\n", def.name, def.help)),
                "HELP of {}:\n{text}",
                def.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", def.name)),
                "TYPE of {}",
                def.name
            );
            assert!(
                docs.contains(&format!("`{}`", def.name)),
                "docs/operations.md lists {}",
                def.name
            );
            assert!(def.name.starts_with("tern_"));
            assert_eq!(
                def.kind == MetricType::COUNTER,
                def.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                def.name
            );
        }
        // Every family has HELP, and only Tern's and the process collector's are there.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                name.starts_with("tern_") || name.starts_with("process_"),
                "{line}"
            );
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
        #[cfg(target_os = "linux")]
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));

        assert_eq!(
            sample(&text, "tern_messages_received_total{qos=\"1\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "tern_malformed_packets_total{kind=\"bad_utf8\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_connect_outcomes_total{reason=\"success\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_publish_delivery_seconds_bucket{le=\"0.0005\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "tern_publish_delivery_seconds_bucket{le=\"0.001\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_publish_delivery_seconds_bucket{le=\"+Inf\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_publish_delivery_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_messages_dropped_total{reason=\"queue_full\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "tern_sessions{state=\"online\"}"), Some(0.0));
    }

    #[test]
    fn cluster_families_follow_the_status() {
        let (_broker, metrics) = node_metrics();
        let text = metrics.render_with(scrape());
        assert_eq!(sample(&text, "tern_raft_term"), Some(7.0));
        assert_eq!(sample(&text, "tern_raft_proposals_total"), Some(11.0));
        assert_eq!(
            sample(&text, "tern_raft_proposal_failures_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_proposal_batch_commands_bucket{le=\"2\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_proposal_batch_commands_count"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_snapshots_total{source=\"built\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_snapshots_total{source=\"installed\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "tern_link_sent_frames_total{peer=\"2\",region=\"us\"}"
            ),
            Some(70.0)
        );
        assert_eq!(
            sample(&text, "tern_cluster_udp_receive_drops_total"),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "tern_cluster_forward_malformed_frames_total"),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "tern_link_received_frames_total{peer=\"2\",region=\"us\"}"
            ),
            Some(80.0)
        );
        assert_eq!(
            sample(
                &text,
                "tern_forward_ack_seconds_bucket{peer=\"2\",region=\"us\",le=\"0.005\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "tern_forward_ack_seconds_count{peer=\"2\",region=\"us\"}"
            ),
            Some(2.0)
        );
        assert_eq!(sample(&text, "tern_raft_leader{node_id=\"1\"}"), Some(1.0));
        assert_eq!(sample(&text, "tern_raft_is_leader"), Some(1.0));
        assert_eq!(sample(&text, "tern_raft_role{role=\"leader\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "tern_raft_role{role=\"follower\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "tern_raft_commit_index"), Some(42.0));
        assert_eq!(sample(&text, "tern_raft_applied_index"), Some(41.0));
        assert_eq!(
            sample(&text, "tern_raft_members{role=\"voter\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_members{role=\"learner\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_raft_replication_lag{peer=\"3\",region=\"ap\"}"),
            Some(12.0)
        );
        assert_eq!(
            sample(&text, "tern_link_connected{peer=\"2\",region=\"us\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tern_link_connected{peer=\"3\",region=\"ap\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "tern_link_rtt_seconds{peer=\"2\",region=\"us\"}"),
            Some(0.0125)
        );
        assert_eq!(
            sample(&text, "tern_link_rtt_seconds{peer=\"3\",region=\"ap\"}"),
            None,
            "no RTT before it is measured"
        );
        assert_eq!(
            sample(
                &text,
                "tern_link_sent_bytes_total{peer=\"2\",region=\"us\"}"
            ),
            Some(1000.0)
        );
        assert_eq!(
            sample(&text, "tern_link_backlog{peer=\"2\",region=\"us\"}"),
            Some(3.0)
        );

        // A follower knows the leader but reports no lag; a single node no Raft at all.
        let mut follower = cluster_status();
        follower.node_id = 2;
        let text = metrics.render_with(Some((follower, cluster_stats())));
        assert_eq!(sample(&text, "tern_raft_is_leader"), Some(0.0));
        assert_eq!(
            sample(&text, "tern_raft_role{role=\"follower\"}"),
            Some(1.0)
        );
        assert!(!text.contains("tern_raft_replication_lag{"));
        let single = metrics.render_with(None);
        assert!(!single.contains("tern_raft_"));
        assert!(!single.contains("tern_link_"));
        assert!(single.contains("tern_connections_total 0\n"));
    }
}
