//! The running member: Raft over the transport, joining, voter promotion, proposals
//! through the leader, readiness, and the tasks that act on applied changes.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tern_broker::session::Session;
use tern_broker::Broker;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::forwarding::PeerLink;
use super::network::{decode, encode, kind, resolve, serve_raft, Network};
use super::{ClusterConfig, ClusterError};
use crate::forward::Inbound;
use crate::handover::WireSession;
use crate::raft_types::*;
use crate::routes::RouteBatcher;
use crate::store::{self, Applied, StateHandle};
use crate::transport::{TlsIdentity, Transport};
use crate::types::{Command, CommandResponse, NodeId, NodeInfo};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct JoinRequest {
    node_id: NodeId,
    info: NodeInfo,
}

/// Where the leader is, when a request reached a follower.
#[derive(Debug, Serialize, Deserialize)]
enum LeaderAnswer<T> {
    Done(T),
    NotLeader { leader: Option<(NodeId, String)> },
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MembershipRequest {
    Remove(NodeId),
}

pub(crate) struct Inner {
    pub id: NodeId,
    pub info: NodeInfo,
    pub config: ClusterConfig,
    pub raft: Raft,
    pub state: StateHandle,
    pub transport: Transport,
    pub broker: OnceLock<Weak<Broker>>,
    pub routes: Mutex<RouteBatcher>,
    pub pending_claims: Mutex<Vec<String>>,
    /// Set on a restart with an existing log: whatever the log says this node owned
    /// (routes, claims) died with its previous run, and goes in the next proposal, ahead
    /// of anything new.
    pub purge_own_state: AtomicBool,
    /// Retained messages set or cleared here and not yet committed; the latest per topic.
    pub pending_retained:
        Mutex<std::collections::BTreeMap<String, Option<crate::types::WireMessage>>>,
    pub proposals_due: Notify,
    pub peers: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    pub inbound: Mutex<HashMap<NodeId, Inbound>>,
    /// Grows with every start of this node, so peers tell a restarted sender's fresh
    /// sequence numbers from duplicates.
    pub link_epoch: u64,
    pub ready: AtomicBool,
    /// Sessions given up to another node, waiting for it to fetch them.
    pub departing: Mutex<HashMap<String, (Session, Instant)>>,
    pub departed: Notify,
    pub shared_ticket: AtomicU64,
    pub shutdown: watch::Sender<bool>,
    pub stats: super::stats::NodeStats,
}

impl Inner {
    pub fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn member_info(&self, node: NodeId) -> Option<NodeInfo> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .cloned()
    }

    fn leader_hint(&self) -> Option<(NodeId, String)> {
        let leader = self.leader()?;
        Some((leader, self.member_info(leader)?.cluster_addr))
    }

    /// Proposes through the leader, wherever it is; waits for the entry to apply.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ClusterError> {
        self.stats.proposal();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = match self.leader() {
                Some(leader) if leader == self.id => {
                    match self.raft.client_write(command.clone()).await {
                        Ok(response) => return Ok(response.data),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Some(leader) => {
                    let body = encode(&command).map_err(ClusterError::Raft)?;
                    match self
                        .transport
                        .request(leader, kind::PROPOSE, body, RPC_TIMEOUT)
                        .await
                    {
                        Ok(answer) => match decode::<LeaderAnswer<CommandResponse>>(&answer) {
                            Ok(LeaderAnswer::Done(response)) => return Ok(response),
                            Ok(other) => Err(format!("{other:?}")),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("no leader".to_string()),
            };
            if Instant::now() >= deadline {
                self.stats.proposal_failed();
                return Err(match outcome {
                    Err(e) if e == "no leader" => ClusterError::NoLeader,
                    Err(e) => ClusterError::Raft(e),
                    Ok(()) => ClusterError::NoLeader,
                });
            }
            // The leader is changing or unknown: wait for the next one.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything a member should be linked to, from the membership.
    /// Gives the transport an address for every member it has no link to, resolving
    /// names (a StatefulSet pod's DNS name) again at most every few seconds, since a
    /// restarted pod comes back with a new IP address. Without this, two members that
    /// are not the leader never dial each other, and forwards between them would wait.
    async fn ensure_peer_addresses(&self, last_resolved: &mut HashMap<NodeId, Instant>) {
        const RESOLVE_EVERY: Duration = Duration::from_secs(3);
        let members: Vec<(NodeId, String)> = self
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .filter(|(&node, _)| node != self.id)
            .map(|(&node, info)| (node, info.cluster_addr.clone()))
            .collect();
        last_resolved.retain(|id, _| members.iter().any(|(m, _)| m == id));
        for (node, cluster_addr) in members {
            let link = self.transport.link(node);
            if link.as_ref().is_some_and(|l| l.connected) {
                continue;
            }
            let now = Instant::now();
            if link.is_some()
                && last_resolved
                    .get(&node)
                    .is_some_and(|t| now.duration_since(*t) < RESOLVE_EVERY)
            {
                continue;
            }
            last_resolved.insert(node, now);
            let Some(addr) = resolve(&cluster_addr).await else {
                debug!(node, cluster_addr, "member address does not resolve (yet)");
                continue;
            };
            if link.as_ref().and_then(|l| l.addr) != Some(addr) {
                let _ = self.transport.add_peer(node, addr);
            }
        }
    }

    fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

pub(crate) async fn start(
    config: ClusterConfig,
    data_dir: &Path,
    hostname: &str,
) -> Result<Arc<Inner>, ClusterError> {
    config.validate().map_err(ClusterError::Config)?;
    let id = config
        .resolve_node_id(hostname)
        .map_err(ClusterError::Config)?;
    let under = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    };
    let tls = TlsIdentity::from_files(
        &under(&config.tls.ca_cert),
        &under(&config.tls.node_cert),
        &under(&config.tls.node_key),
    )
    .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let raft_dir = data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir).map_err(|e| ClusterError::Storage {
        path: raft_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (log, sm) = store::open(&raft_dir, id).map_err(|e| ClusterError::Storage {
        path: raft_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let state = sm.handle();
    let advertised = NodeInfo {
        cluster_addr: config.advertise.clone(),
        region: config.region.clone(),
    };
    let transport = Transport::bind(
        config.transport.clone(),
        &tls,
        id,
        config.listen,
        advertised,
    )
    .map_err(|e| ClusterError::Transport(e.to_string()))?;
    let bound = transport
        .local_addr()
        .map_err(|e| ClusterError::Transport(e.to_string()))?;
    let info = NodeInfo {
        cluster_addr: if config.advertise.is_empty() {
            bound.to_string()
        } else {
            config.advertise.clone()
        },
        region: config.region.clone(),
    };

    let r = &config.raft;
    let raft_config = Config {
        cluster_name: "tern".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ClusterError::Config(format!("cluster.raft: {e}")))?;
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        Network {
            transport: transport.clone(),
        },
        log,
        sm,
    )
    .await
    .map_err(|e| ClusterError::Raft(e.to_string()))?;
    serve_raft(&transport, raft.clone());

    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let inner = Arc::new(Inner {
        id,
        info: info.clone(),
        config,
        raft,
        state,
        transport,
        broker: OnceLock::new(),
        routes: Mutex::new(RouteBatcher::new()),
        pending_claims: Mutex::new(Vec::new()),
        purge_own_state: AtomicBool::new(false),
        pending_retained: Mutex::new(std::collections::BTreeMap::new()),
        proposals_due: Notify::new(),
        peers: Mutex::new(HashMap::new()),
        inbound: Mutex::new(HashMap::new()),
        link_epoch: epoch,
        ready: AtomicBool::new(false),
        departing: Mutex::new(HashMap::new()),
        departed: Notify::new(),
        shared_ticket: AtomicU64::new(0),
        shutdown: watch::channel(false).0,
        stats: Default::default(),
    });
    serve_requests(&inner);

    let initialized = inner
        .raft
        .is_initialized()
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    if !initialized && inner.config.seeds.is_empty() {
        info!(node = id, addr = %info.cluster_addr, "bootstrapping a new cluster");
        let members = std::collections::BTreeMap::from([(id, info.clone())]);
        inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
    } else if !initialized {
        tokio::spawn(join(inner.clone()));
    } else {
        info!(node = id, "rejoining with the data directory's log");
        inner.purge_own_state.store(true, Ordering::Relaxed);
        inner.proposals_due.notify_one();
        // Asking to join again is a no-op for a member, and brings back a node that was
        // removed while it was down.
        if !inner.config.seeds.is_empty() {
            tokio::spawn(join(inner.clone()));
        }
    }
    tokio::spawn(reconcile_voters(Arc::downgrade(&inner)));
    tokio::spawn(watch_readiness(Arc::downgrade(&inner)));
    tokio::spawn(flush_proposals(Arc::downgrade(&inner)));
    tokio::spawn(act_on_applied(
        Arc::downgrade(&inner),
        inner.state.subscribe(),
    ));
    super::forwarding::start_receiving(&inner);
    Ok(inner)
}

/// Parses a seed: `ID@host:port`, or `name-N...:port` (a StatefulSet pod: node N).
pub(crate) fn parse_seed(seed: &str) -> Option<(NodeId, String)> {
    if let Some((id, addr)) = seed.split_once('@') {
        return Some((id.parse().ok()?, addr.to_string()));
    }
    let host = seed.rsplit_once(':').map_or(seed, |(h, _)| h);
    let short = host.split('.').next()?;
    let id = short.rsplit_once('-')?.1.parse().ok()?;
    Some((id, seed.to_string()))
}

async fn join(inner: Arc<Inner>) {
    let request = JoinRequest {
        node_id: inner.id,
        info: inner.info.clone(),
    };
    let Ok(body) = encode(&request) else { return };
    let mut targets: Vec<(NodeId, String)> = inner
        .config
        .seeds
        .iter()
        .filter_map(|s| parse_seed(s))
        .collect();
    if targets.is_empty() {
        warn!(seeds = ?inner.config.seeds, "no usable seed: write ID@host:port or a StatefulSet host name");
        return;
    }
    let mut delay = Duration::from_millis(200);
    loop {
        if inner.is_stopping() {
            return;
        }
        for (seed, addr) in targets.clone() {
            if seed == inner.id {
                continue;
            }
            let Some(sock) = resolve(&addr).await else {
                continue;
            };
            let _ = inner.transport.add_peer(seed, sock);
            match inner
                .transport
                .request(seed, kind::JOIN, body.clone(), RPC_TIMEOUT)
                .await
            {
                Ok(answer) => match decode::<LeaderAnswer<()>>(&answer) {
                    Ok(LeaderAnswer::Done(())) => {
                        info!(
                            node = inner.id,
                            via = seed,
                            "joined the cluster as a learner"
                        );
                        return;
                    }
                    Ok(LeaderAnswer::NotLeader {
                        leader: Some(leader),
                    }) => {
                        if !targets.contains(&leader) {
                            targets.insert(0, leader);
                        }
                    }
                    Ok(other) => debug!(seed, answer = ?other, "join not accepted yet"),
                    Err(e) => debug!(seed, error = %e, "bad join answer"),
                },
                Err(e) => debug!(seed, error = %e, "seed not reachable"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn serve_requests(inner: &Arc<Inner>) {
    serve_on_leader(inner, kind::JOIN, |inner, req: JoinRequest| async move {
        // A restarted member asks again: nothing to do.
        let member = inner
            .metrics()
            .membership_config
            .membership()
            .get_node(&req.node_id)
            .is_some();
        if member {
            return Ok(());
        }
        inner
            .raft
            .add_learner(req.node_id, req.info.clone(), false)
            .await
            .map_err(|e| e.to_string())?;
        info!(node = req.node_id, addr = %req.info.cluster_addr, region = %req.info.region, "added a learner");
        Ok(())
    });
    serve_on_leader(inner, kind::PROPOSE, |inner, command: Command| async move {
        inner
            .raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| e.to_string())
    });
    // The commit index, confirmed by a quorum (openraft's read index: the leader checks
    // it still leads before answering), so that `/readyz` means "caught up with what the
    // cluster had committed when I asked".
    serve_on_leader(inner, kind::LEADER_APPLIED, |inner, (): ()| async move {
        inner
            .raft
            .get_read_log_id()
            .await
            .map(|(read, _applied)| read.map(|l| l.index))
            .map_err(|e| e.to_string())
    });
    serve_on_leader(
        inner,
        kind::MEMBERSHIP,
        |inner, request: MembershipRequest| async move { apply_membership(&inner, request).await },
    );
    serve_here(
        inner,
        kind::FORWARDS_FLUSHED,
        |inner, request: FlushRequest| async move {
            Ok(forwards_flushed(&inner, request, FLUSH_WAIT).await)
        },
    );
    // Any node may hold a departing session, leader or not.
    serve_here(
        inner,
        kind::FINISH_HANDOVER,
        |inner, client_id: String| async move {
            let buffered = inner
                .broker()
                .map(|b| b.finish_hand_over(&client_id))
                .unwrap_or_default();
            Ok(buffered
                .iter()
                .map(crate::handover::WireDelivery::from_delivery)
                .collect::<Vec<_>>())
        },
    );
    serve_here(
        inner,
        kind::TAKE_SESSION,
        |inner, client_id: String| async move {
            let session = wait_departing(&inner, &client_id, Duration::from_secs(5)).await;
            Ok(session.map(|s| WireSession::from_parts(&s.into_parts())))
        },
    );
}

/// Answers `kind` requests with `handle`, on whichever node is asked.
fn serve_here<Req, Resp, F, Fut>(inner: &Arc<Inner>, kind: u8, handle: F)
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Arc<Inner>, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Resp, String>> + Send + 'static,
{
    let weak = Arc::downgrade(inner);
    inner.transport.set_request_handler(kind, move |_, body| {
        let inner = weak.upgrade();
        let handle = handle.clone();
        async move {
            let inner = inner.ok_or("node stopping")?;
            let request: Req = decode(&body)?;
            encode(&handle(inner, request).await?)
        }
    });
}

/// Answers `kind` requests with `handle` while this node leads; otherwise with where the
/// leader is, so the caller can ask it instead.
fn serve_on_leader<Req, Resp, F, Fut>(inner: &Arc<Inner>, kind: u8, handle: F)
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Arc<Inner>, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Resp, String>> + Send + 'static,
{
    serve_here(inner, kind, move |inner, request: Req| {
        let handle = handle.clone();
        async move {
            Ok(if inner.leader() == Some(inner.id) {
                match handle(inner.clone(), request).await {
                    Ok(response) => LeaderAnswer::Done(response),
                    Err(e) => LeaderAnswer::Failed(e),
                }
            } else {
                LeaderAnswer::NotLeader {
                    leader: inner.leader_hint(),
                }
            })
        }
    });
}

/// The leader's side of leave/remove: out of the membership, then its routes and claims
/// are purged so that nothing is forwarded into a void.
async fn apply_membership(inner: &Arc<Inner>, request: MembershipRequest) -> Result<(), String> {
    let MembershipRequest::Remove(node) = request;
    let m = inner.metrics();
    let membership = m.membership_config.membership().clone();
    if membership.voter_ids().any(|v| v == node) {
        let remove = BTreeSet::from([node]);
        inner
            .raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(remove), false)
            .await
            .map_err(|e| e.to_string())?;
    } else if membership.learner_ids().any(|l| l == node) {
        inner
            .raft
            .change_membership(
                openraft::ChangeMembers::RemoveNodes(BTreeSet::from([node])),
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    if node != inner.id {
        inner
            .raft
            .client_write(Command::PurgeNode { node })
            .await
            .map_err(|e| e.to_string())?;
    }
    info!(node, "removed from the cluster");
    Ok(())
}

/// Asks the leader to change the membership (this node may be the leader).
pub(crate) async fn request_membership(
    inner: &Arc<Inner>,
    request: MembershipRequest,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = encode(&request).map_err(ClusterError::Raft)?;
    loop {
        match inner.leader() {
            Some(leader) if leader == inner.id => {
                let MembershipRequest::Remove(node) = request;
                return apply_membership(inner, MembershipRequest::Remove(node))
                    .await
                    .map_err(ClusterError::Raft);
            }
            Some(leader) => {
                if let Ok(answer) = inner
                    .transport
                    .request(leader, kind::MEMBERSHIP, body.clone(), RPC_TIMEOUT)
                    .await
                {
                    match decode::<LeaderAnswer<()>>(&answer) {
                        Ok(LeaderAnswer::Done(())) => return Ok(()),
                        Ok(LeaderAnswer::Failed(e)) => return Err(ClusterError::Raft(e)),
                        _ => {}
                    }
                }
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::NoLeader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On the leader: promote learners while there are fewer voters than configured,
/// preferring learners from regions without a voter, and only learners that caught up.
async fn reconcile_voters(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut dead = DeadMembers::default();
    let mut resolved = HashMap::new();
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_stopping() {
            return;
        }
        inner.ensure_peer_addresses(&mut resolved).await;
        let m = inner.metrics();
        if m.current_leader != Some(inner.id) {
            // A new leader counts from the moment it leads.
            dead = DeadMembers::default();
            continue;
        }
        if m.membership_config.membership().get_joint_config().len() == 1 {
            if let Some(node) = dead.observe(&inner, Instant::now()) {
                warn!(
                    node,
                    after_secs = inner.config.remove_dead_after_secs,
                    "no link to this member for too long: removing it from the cluster"
                );
                match apply_membership(&inner, MembershipRequest::Remove(node)).await {
                    Ok(()) => inner.stats.dead_member_removed(),
                    Err(e) => warn!(node, error = %e, "could not remove a dead member"),
                }
                continue;
            }
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= inner.config.voters
            || m.membership_config.membership().get_joint_config().len() > 1
        {
            continue;
        }
        let region = |n: &NodeId| {
            membership
                .get_node(n)
                .map(|i| i.region.clone())
                .unwrap_or_default()
        };
        let voter_regions: BTreeSet<String> = voters.iter().map(region).collect();
        let last = m.last_log_index.unwrap_or(0);
        let caught_up = |n: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(n).cloned().flatten())
                .is_some_and(|matched| matched.index + 100 >= last)
        };
        let mut candidates: Vec<NodeId> = membership.learner_ids().filter(caught_up).collect();
        candidates.sort_by_key(|n| (voter_regions.contains(&region(n)), *n));
        let Some(&pick) = candidates.first() else {
            continue;
        };
        let mut new_voters = voters.clone();
        new_voters.insert(pick);
        match inner.raft.change_membership(new_voters, true).await {
            Ok(_) => info!(node = pick, region = %region(&pick), "promoted to voter"),
            Err(e) => debug!(node = pick, error = %e, "promotion not done yet"),
        }
    }
}

/// The leader's record of how long each member has had no link up.
#[derive(Default)]
struct DeadMembers {
    last_linked: HashMap<NodeId, Instant>,
}

impl DeadMembers {
    /// Notes which members have a link up now; returns one that has had none for
    /// `cluster.remove_dead_after_secs` (never this node; never with the setting at 0).
    fn observe(&mut self, inner: &Inner, now: Instant) -> Option<NodeId> {
        let after = Duration::from_secs(inner.config.remove_dead_after_secs);
        let m = inner.metrics();
        let members: Vec<NodeId> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(&id, _)| id)
            .filter(|&id| id != inner.id)
            .collect();
        self.last_linked.retain(|id, _| members.contains(id));
        let mut dead = None;
        for id in members {
            let linked = inner.transport.link(id).is_some_and(|l| l.connected);
            let since = self.last_linked.entry(id).or_insert(now);
            if linked {
                *since = now;
            } else if !after.is_zero() && now.duration_since(*since) >= after {
                dead = dead.or(Some(id));
            }
        }
        dead
    }
}

/// Ready: a member, and applied up to what the leader had applied when asked.
async fn watch_readiness(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_stopping() {
            inner.ready.store(false, Ordering::Relaxed);
            return;
        }
        let m = inner.metrics();
        let member = m
            .membership_config
            .membership()
            .get_node(&inner.id)
            .is_some();
        let mine = m.last_applied.map(|l| l.index);
        let ready = match m.current_leader {
            _ if !member => false,
            Some(leader) if leader == inner.id => true,
            Some(leader) => {
                match inner
                    .transport
                    .request(
                        leader,
                        kind::LEADER_APPLIED,
                        encode(&()).unwrap_or_default(),
                        RPC_TIMEOUT,
                    )
                    .await
                {
                    Ok(answer) => {
                        matches!(decode::<LeaderAnswer<Option<u64>>>(&answer), Ok(LeaderAnswer::Done(theirs)) if mine >= theirs)
                    }
                    Err(_) => false,
                }
            }
            None => false,
        };
        inner.ready.store(ready, Ordering::Relaxed);
    }
}

/// Proposes what accumulated (route changes, claims, retained messages) as one entry per
/// window; what fails is put back and proposed again, so nothing is given up while the
/// node runs (on the minority side of a cut, it waits for a leader).
async fn flush_proposals(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let window = Duration::from_millis(inner.config.route_batch_ms);
        let mut stop = inner.shutdown.subscribe();
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            () = inner.proposals_due.notified() => {}
            _ = stop.changed() => return,
        }
        drop(inner);
        tokio::time::sleep(window).await;
        let Some(inner) = weak.upgrade() else { return };
        let routes = inner.routes.lock().take_command(inner.id);
        let claims: Vec<Command> = std::mem::take(&mut *inner.pending_claims.lock())
            .into_iter()
            .map(|client_id| Command::Claim {
                client_id,
                node: inner.id,
            })
            .collect();
        let retained: Vec<Command> = std::mem::take(&mut *inner.pending_retained.lock())
            .into_iter()
            .map(|(topic, message)| Command::Retain { topic, message })
            .collect();
        let mut commands: Vec<Command> = Vec::new();
        if inner.purge_own_state.swap(false, Ordering::Relaxed) {
            commands.push(Command::PurgeNode { node: inner.id });
        }
        commands.extend(routes);
        commands.extend(claims);
        commands.extend(retained);
        if commands.is_empty() {
            continue;
        }
        inner.stats.batch(commands.len());
        let command = if commands.len() == 1 {
            commands.remove(0)
        } else {
            Command::Batch(commands)
        };
        if let Err(e) = inner.propose(command.clone()).await {
            warn!(error = %e, "route/claim proposal failed; retrying");
            restore(&inner, command);
            inner.proposals_due.notify_one();
        }
    }
}

fn restore(inner: &Inner, command: Command) {
    match command {
        Command::Routes { changes, .. } => inner.routes.lock().restore(changes),
        Command::Claim { client_id, .. } => inner.pending_claims.lock().push(client_id),
        // A newer value set since the failed proposal wins.
        Command::Retain { topic, message } => {
            inner
                .pending_retained
                .lock()
                .entry(topic)
                .or_insert(message);
        }
        Command::Batch(commands) => commands.into_iter().for_each(|c| restore(inner, c)),
        Command::PurgeNode { node } if node == inner.id => {
            inner.purge_own_state.store(true, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Acts on applied entries: a client that connected elsewhere leaves this node, and
/// retained messages set anywhere are kept here too.
async fn act_on_applied(weak: Weak<Inner>, mut events: tokio::sync::broadcast::Receiver<Applied>) {
    loop {
        let event = events.recv().await;
        let Some(inner) = weak.upgrade() else { return };
        let Some(broker) = inner.broker() else {
            if matches!(event, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                return;
            }
            continue;
        };
        match event {
            Ok(Applied::ClaimLost {
                client_id, node, ..
            }) if node != inner.id => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Some(session) = broker.hand_over(&client_id).await {
                        inner
                            .departing
                            .lock()
                            .insert(client_id.clone(), (session, Instant::now()));
                        inner.departed.notify_waiters();
                        // A client that started clean elsewhere never fetches it: then
                        // nothing needs this node's copies of its subscriptions.
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        if inner.departing.lock().remove(&client_id).is_some() {
                            broker.finish_hand_over(&client_id);
                        }
                    }
                });
            }
            Ok(Applied::Retained { topic, message }) => {
                let message = match message {
                    Some(m) => m.to_message(),
                    // An empty payload clears.
                    None => {
                        crate::types::WireMessage::new(topic, Bytes::new(), 0, true).to_message()
                    }
                };
                broker.store_retained(&Arc::new(message));
            }
            Ok(Applied::Reset) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                sync_retained(&inner, &broker);
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        // Sessions nobody fetched within a minute are dropped.
        inner
            .departing
            .lock()
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
    }
}

/// Makes the broker's retained store hold what the replicated state holds.
pub(crate) fn sync_retained(inner: &Inner, broker: &Broker) {
    let mut all = Vec::new();
    inner
        .state
        .read()
        .retained_matching("#", |_, m| all.push(m.clone()));
    for m in all {
        broker.store_retained(&Arc::new(m.to_message()));
    }
}

async fn wait_departing(inner: &Arc<Inner>, client_id: &str, timeout: Duration) -> Option<Session> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = inner.departed.notified();
        if let Some((session, _)) = inner.departing.lock().remove(client_id) {
            return Some(session);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}

/// Fetches a client's session from the node that owned it, after this node's claim has
/// been applied (so that node gives it up).
pub(crate) async fn take_session(
    inner: &Arc<Inner>,
    client_id: &str,
    from: NodeId,
) -> Option<Session> {
    let body = encode(&client_id.to_string()).ok()?;
    let answer = inner
        .transport
        .request(from, kind::TAKE_SESSION, body, Duration::from_secs(10))
        .await
        .ok()?;
    let wire: Option<WireSession> = decode(&answer).ok()?;
    wire.map(|w| Session::from_parts(w.into_parts()))
}

/// How long a member waits, per request, for its flush before answering false.
const FLUSH_WAIT: Duration = Duration::from_secs(3);

/// A [`kind::FORWARDS_FLUSHED`] request: has the asked node applied up to `applied`, and
/// has `peer` processed everything it queued for `peer` until then?
#[derive(Serialize, Deserialize)]
pub(crate) struct FlushRequest {
    applied: Option<u64>,
    peer: NodeId,
}

/// Waits (at most `wait`) until this node has applied `request.applied`, then until the
/// peer has processed every message queued for it up to that moment. `forward` queues a
/// message's copies while it holds the state's read lock, and applying a route change
/// takes the write lock, so at that moment every message routed by the old routes is in
/// the queue. The old node of a session handover must not let go of the session's
/// subscriptions before those messages reached it, or they would reach nobody.
async fn forwards_flushed(inner: &Arc<Inner>, request: FlushRequest, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while inner.metrics().last_applied.map(|l| l.index) < request.applied {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let link = inner.peers.lock().get(&request.peer).cloned();
    let Some(link) = link else {
        return true; // never forwarded anything there
    };
    let mark = link.outbound.lock().last_seq();
    loop {
        if link.outbound.lock().processed_through(mark) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        link.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After taking `client_id`'s session from `from`: once this node's replica shows routes
/// for every filter of the session (so other nodes forward here), tells `from` to drop
/// its copies of the subscriptions and delivers what they caught in between.
pub(crate) async fn finish_handover(
    inner: Arc<Inner>,
    client_id: String,
    from: NodeId,
    filters: Vec<String>,
) {
    let plain: Vec<&String> = filters
        .iter()
        .filter(|f| !f.starts_with("$share/"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut mine = std::collections::BTreeSet::new();
        inner.state.read().routes_of(inner.id, |f| {
            mine.insert(f.to_string());
        });
        if plain.iter().all(|f| mine.contains(f.as_str())) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every node must forward here before the old node lets go: each member applies as
    // far as this node had when its routes showed, and the old node processes whatever
    // that member routed to it before (see `forwards_flushed`).
    let request = FlushRequest {
        applied: inner.metrics().last_applied.map(|l| l.index),
        peer: from,
    };
    let members: Vec<NodeId> = inner
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(&id, _)| id)
        .collect();
    let Ok(probe) = encode(&request) else { return };
    for member in members.into_iter().filter(|&m| m != inner.id) {
        while Instant::now() < deadline {
            match inner
                .transport
                .request(
                    member,
                    kind::FORWARDS_FLUSHED,
                    probe.clone(),
                    FLUSH_WAIT + RPC_TIMEOUT,
                )
                .await
                .map(|answer| decode::<bool>(&answer))
            {
                Ok(Ok(true)) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                // An unreachable member forwards nothing anyway.
                Err(_) => break,
            }
        }
    }
    let Ok(body) = encode(&client_id) else { return };
    let answer = match inner
        .transport
        .request(from, kind::FINISH_HANDOVER, body, RPC_TIMEOUT)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            debug!(client_id, from, error = %e, "handover not finished; the old node gives up by itself");
            return;
        }
    };
    let Ok(wire) = decode::<Vec<crate::handover::WireDelivery>>(&answer) else {
        return;
    };
    info!(client_id, from, caught = wire.len(), "handover finished");
    if let Some(broker) = inner.broker() {
        let deliveries = wire
            .into_iter()
            .map(crate::handover::WireDelivery::into_delivery)
            .collect();
        broker.deliver_to_client(&client_id, deliveries);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_name_their_node() {
        assert_eq!(
            parse_seed("2@127.0.0.1:7000"),
            Some((2, "127.0.0.1:7000".into()))
        );
        assert_eq!(
            parse_seed("tern-0.tern-headless.ns.svc:7946"),
            Some((0, "tern-0.tern-headless.ns.svc:7946".into()))
        );
        assert_eq!(parse_seed("127.0.0.1:7000"), None);
    }
}
