//! The node's broker: shared state (session slots, the subscription index, retained
//! messages) and the operations connection tasks call on it: claim a client id, route a
//! publish, add and remove subscriptions, end a session.
//!
//! Locks: the registry map is locked only to find or remove a slot (connect, session end);
//! the subscription index is read-locked per publish (readers never wait for each other)
//! and write-locked per SUBSCRIBE/UNSUBSCRIBE; each slot has its own lock. No lock is held
//! while another task is awaited.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tern_codec::QoS;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch, Notify};

use crate::auth::{Acl, Authenticator};
use crate::mailbox::{MailboxReceiver, MailboxSender};
use crate::registry::{ConnCommand, SessionSlot, SlotKey, SlotState};
use crate::retained::RetainedStore;
use crate::session::{Delivery, EnqueueOutcome, Session, Subscription};
use crate::stats::{DropReason, Stats};
use crate::subscriptions::{SharedGroups, SubscriptionTree};
use crate::topic;
use crate::{AuthConfig, BrokerConfig, Cluster, Message};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid auth configuration: {0}")]
    Auth(String),
    #[error("invalid broker configuration: {0}")]
    Config(String),
}

/// A subscription's entry in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub identifier: Option<u32>,
}

/// A member of a shared subscription group. Equal (and hashed) by slot alone, so that
/// removing a member needs only its slot, while a pick hands back its options too.
#[derive(Clone, Debug)]
pub(crate) struct SharedMember {
    pub slot: SlotKey,
    pub qos: QoS,
    pub identifier: Option<u32>,
}

impl PartialEq for SharedMember {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}
impl Eq for SharedMember {}
impl std::hash::Hash for SharedMember {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.slot.hash(state)
    }
}

/// How a CONNECT's claim on a client id turned out.
pub(crate) struct Claim {
    pub slot: Arc<SessionSlot>,
    /// The session to continue, if the client asked to resume one and one existed.
    pub resumed: Option<Session>,
}

pub struct Broker {
    config: BrokerConfig,
    pub(crate) cluster: Arc<dyn Cluster>,
    pub(crate) authenticator: Authenticator,
    pub(crate) acl: Acl,
    pub stats: Stats,
    sessions: Mutex<HashMap<Arc<str>, Arc<SessionSlot>>>,
    subscriptions: RwLock<SubscriptionTree<SlotKey, IndexEntry>>,
    /// Bumped (under the index's write lock) on every change to `subscriptions`, so a
    /// [`MatchCache`] can tell that what it found still holds.
    index_generation: AtomicU64,
    shared: RwLock<SharedGroups<SharedMember>>,
    retained: RwLock<RetainedStore<Arc<Message>>>,
    shutdown: watch::Sender<bool>,
    live_connections: AtomicUsize,
    connections_done: Notify,
    next_conn_id: AtomicU64,
    pub(crate) started_at: Instant,
}

impl Broker {
    pub fn new(
        config: BrokerConfig,
        auth: AuthConfig,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Arc<Self>, BrokerError> {
        if config.maximum_qos > 2 {
            return Err(BrokerError::Config(
                "broker.maximum_qos must be 0, 1 or 2".into(),
            ));
        }
        if config.receive_maximum == 0 || config.max_inflight == 0 {
            return Err(BrokerError::Config(
                "broker.receive_maximum and broker.max_inflight must be at least 1".into(),
            ));
        }
        let authenticator =
            Authenticator::new(&auth).map_err(|e| BrokerError::Auth(e.to_string()))?;
        let acl = Acl::new(&auth).map_err(|e| BrokerError::Auth(e.to_string()))?;
        Ok(Arc::new(Self {
            config,
            cluster,
            authenticator,
            acl,
            stats: Stats::default(),
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTree::new()),
            index_generation: AtomicU64::new(0),
            shared: RwLock::new(SharedGroups::new()),
            retained: RwLock::new(RetainedStore::new()),
            shutdown: watch::channel(false).0,
            live_connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
            next_conn_id: AtomicU64::new(1),
            started_at: Instant::now(),
        }))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Starts the broker's own background work (`$SYS` statistics). Call once, inside a
    /// tokio runtime. Session expiry and will delays use per-session timers instead.
    pub fn start_background_tasks(self: &Arc<Self>) {
        if self.config.sys_interval_secs > 0 {
            tokio::spawn(crate::sys::publish_periodically(Arc::downgrade(self)));
        }
    }

    /// Serves one client connection until it closes. `listener` names the listener for
    /// metrics and logs.
    pub async fn serve_connection<S>(
        self: &Arc<Self>,
        stream: S,
        peer: SocketAddr,
        listener: &'static str,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if *self.shutdown.borrow() {
            return;
        }
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.live_connections.fetch_add(1, Ordering::AcqRel);
        let _live = LiveConnection(self);
        crate::connection::run(
            self.clone(),
            stream,
            peer,
            listener,
            conn_id,
            self.shutdown.subscribe(),
        )
        .await;
    }

    /// Disconnects every client (v5 clients get DISCONNECT 0x8B) and returns when all
    /// connection tasks have finished or `deadline` has passed. Wills are not published: a
    /// shutdown is not the clients' fault, and persistent sessions resume elsewhere.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.send_replace(true);
        let wait_all = async {
            loop {
                let notified = self.connections_done.notified();
                if self.live_connections.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait_all).await;
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    /// Sessions that moved to another node which has not yet confirmed its routes (see
    /// [`Broker::hand_over`]): a node must not stop while it has any.
    pub fn moved_sessions(&self) -> usize {
        let slots: Vec<Arc<SessionSlot>> = self.sessions.lock().values().cloned().collect();
        slots
            .iter()
            .filter(|s| matches!(s.inner.lock().state, SlotState::Moved { .. }))
            .count()
    }

    /// Client ids with a connection right now.
    pub fn online_client_ids(&self) -> Vec<Arc<str>> {
        let slots: Vec<Arc<SessionSlot>> = self.sessions.lock().values().cloned().collect();
        slots
            .into_iter()
            .filter(|s| s.is_online())
            .map(|s| s.client_id.clone())
            .collect()
    }

    /// Whether a session (online or offline) exists for this client id.
    pub fn has_session(&self, client_id: &str) -> bool {
        let slot = self.sessions.lock().get(client_id).cloned();
        slot.is_some_and(|s| {
            matches!(
                s.inner.lock().state,
                SlotState::Online { .. } | SlotState::Offline { .. }
            )
        })
    }

    // ---- client ids -------------------------------------------------------------------

    /// Makes `conn_id` the owner of `client_id`. An existing connection with the same id is
    /// told to disconnect and hand over its session; an offline session is taken directly.
    /// With `resume` false any old session is discarded.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        conn_id: u64,
        tx: MailboxSender,
        resume: bool,
    ) -> Claim {
        loop {
            let slot = {
                let mut sessions = self.sessions.lock();
                sessions
                    .entry(client_id.clone())
                    .or_insert_with(|| SessionSlot::new(client_id.clone(), SlotState::Ended))
                    .clone()
            };
            let previous = {
                let mut inner = slot.inner.lock();
                let online = SlotState::Online {
                    conn_id,
                    tx: tx.clone(),
                };
                if !inner.registered {
                    // Removed between our two locks: look the client id up again.
                    continue;
                }
                inner.generation += 1;
                std::mem::replace(&mut inner.state, online)
            };
            let old_session = match previous {
                SlotState::Ended => None,
                SlotState::Moved { filters, .. } => {
                    // Back on this node before the other one finished taking the session:
                    // its subscriptions here are stale.
                    for filter in &filters {
                        self.remove_subscription(&slot, filter);
                    }
                    None
                }
                SlotState::Offline {
                    session,
                    pending_will,
                } => {
                    self.stats.sessions_offline.fetch_sub(1, Ordering::Relaxed);
                    // A will still waiting out its delay is not sent: the client is back.
                    drop(pending_will);
                    Some(session)
                }
                SlotState::Online { tx: old_tx, .. } => {
                    let (reply, answer) = oneshot::channel();
                    if old_tx.send(ConnCommand::TakeOver { reply, resume }).is_ok() {
                        tokio::time::timeout(Duration::from_secs(10), answer)
                            .await
                            .ok()
                            .and_then(Result::ok)
                    } else {
                        None
                    }
                }
            };
            let want_session = resume && old_session.is_none();
            let remote = self.cluster.claim(client_id, want_session).await;
            let resumed = match (old_session, remote) {
                (Some(session), _) if resume => Some(session),
                (Some(session), _) => {
                    self.remove_session_subscriptions(&slot, &session);
                    None
                }
                (None, Some(session)) if resume => {
                    // A session that lived on another node: its subscriptions join this
                    // node's index (and so its routes).
                    for (filter, subscription) in &session.subscriptions {
                        self.add_subscription(&slot, filter, subscription);
                    }
                    Some(session)
                }
                (None, _) => None,
            };
            return Claim { slot, resumed };
        }
    }

    /// The connection `conn_id` has ended. Messages still in its command channel go into
    /// the session; a takeover waiting in the channel gets the session; otherwise the
    /// session stays offline (expiry > 0) or ends.
    pub(crate) fn release(
        self: &Arc<Self>,
        slot: &Arc<SessionSlot>,
        conn_id: u64,
        mut session: Session,
        rx: &mut MailboxReceiver,
        will: Option<(Arc<Message>, u32)>,
    ) {
        let mut inner = slot.inner.lock();
        let mut takeover = None;
        let mut left = VecDeque::new();
        rx.take_all(&mut left);
        for cmd in left {
            match cmd {
                ConnCommand::Deliver(d) => self.enqueue_counted(&mut session, d),
                ConnCommand::TakeOver { reply, resume } => takeover = Some((reply, resume)),
            }
        }
        if let Some((reply, resume)) = takeover {
            drop(inner);
            // The session lives on in the new connection when it resumes; only a will
            // without delay (or a session that ends now) is published.
            if let Some((will, delay)) = will {
                if delay == 0 || !resume {
                    self.publish_will(&will);
                }
            }
            if let Err(session) = reply.send(session) {
                // The new connection gave up waiting: nobody holds the session now.
                self.remove_session_subscriptions(slot, &session);
            }
            return;
        }
        let owned = matches!(inner.state, SlotState::Online { conn_id: c, .. } if c == conn_id);
        if !owned {
            return;
        }
        inner.generation += 1;
        let generation = inner.generation;
        let expiry = session.expiry_interval;
        let (will_now, will_later) = match will {
            Some((w, delay)) if delay > 0 && expiry > 0 => (None, Some((w, delay.min(expiry)))),
            Some((w, _)) => (Some(w), None),
            None => (None, None),
        };
        if expiry == 0 {
            // Subscriptions go while the slot is still locked, so that a client
            // reconnecting at this instant cannot add one that this would then remove.
            self.remove_session_subscriptions(slot, &session);
            inner.state = SlotState::Ended;
            drop(inner);
            self.unregister(slot);
        } else {
            inner.state = SlotState::Offline {
                session,
                pending_will: will_later.as_ref().map(|(w, _)| w.clone()),
            };
            drop(inner);
            self.stats.sessions_offline.fetch_add(1, Ordering::Relaxed);
            if let Some((_, delay)) = will_later {
                self.arm_timer(
                    slot,
                    generation,
                    Duration::from_secs(u64::from(delay)),
                    TimerKind::WillDelay,
                );
            }
            if expiry != u32::MAX {
                self.arm_timer(
                    slot,
                    generation,
                    Duration::from_secs(u64::from(expiry)),
                    TimerKind::SessionExpiry,
                );
            }
        }
        if let Some(w) = will_now {
            self.publish_will(&w);
        }
    }

    /// Gives up this node's session of `client_id` because its client connected to another
    /// node: an online client is disconnected (v5: 0x8E) and its session handed over,
    /// an offline session is taken as it is. The subscriptions stay in this node's index,
    /// and what they still receive is kept, until the other node calls
    /// [`Broker::finish_hand_over`] (or a minute passes): until the other node's routes
    /// are known everywhere, messages for the client may still arrive here.
    /// `None` if this node has no session for the id.
    pub async fn hand_over(self: &Arc<Self>, client_id: &str) -> Option<Session> {
        let slot = self.sessions.lock().get(client_id).cloned()?;
        let moved = SlotState::Moved {
            filters: Vec::new(),
            buffer: Vec::new(),
        };
        let (handed, generation) = {
            let mut inner = slot.inner.lock();
            inner.generation += 1;
            let handed = match std::mem::replace(&mut inner.state, moved) {
                SlotState::Online { tx, .. } => {
                    let (reply, answer) = oneshot::channel();
                    let sent = tx
                        .send(ConnCommand::TakeOver {
                            reply,
                            resume: true,
                        })
                        .is_ok();
                    Handed::Pending(sent.then_some(answer))
                }
                SlotState::Offline { session, .. } => {
                    self.stats.sessions_offline.fetch_sub(1, Ordering::Relaxed);
                    Handed::Now(session)
                }
                previous @ (SlotState::Ended | SlotState::Moved { .. }) => {
                    inner.state = previous;
                    Handed::Nothing
                }
            };
            (handed, inner.generation)
        };
        let session = match handed {
            Handed::Now(session) => Some(session),
            // Commands sent before the takeover are in the channel ahead of it, so the
            // session comes back with every message routed to it until now.
            Handed::Pending(Some(answer)) => tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .ok()
                .and_then(Result::ok),
            Handed::Pending(None) => None,
            Handed::Nothing => return None,
        };
        {
            let mut inner = slot.inner.lock();
            if let SlotState::Moved { filters, .. } = &mut inner.state {
                *filters = session
                    .as_ref()
                    .map(|s| s.subscriptions.keys().cloned().collect())
                    .unwrap_or_default();
            }
        }
        if session.is_none() {
            self.finish_hand_over(client_id);
        } else {
            self.arm_timer(
                &slot,
                generation,
                Duration::from_secs(60),
                TimerKind::HandOverExpiry,
            );
        }
        session
    }

    /// The node that took `client_id`'s session has its routes in place: this node's
    /// subscriptions for it go, and what they received since the handover is returned
    /// for that node to deliver.
    pub fn finish_hand_over(&self, client_id: &str) -> Vec<Delivery> {
        let Some(slot) = self.sessions.lock().get(client_id).cloned() else {
            return Vec::new();
        };
        let (filters, buffer) = {
            let mut inner = slot.inner.lock();
            if !matches!(inner.state, SlotState::Moved { .. }) {
                return Vec::new();
            }
            inner.generation += 1;
            match std::mem::replace(&mut inner.state, SlotState::Ended) {
                SlotState::Moved { filters, buffer } => (filters, buffer),
                _ => (Vec::new(), Vec::new()),
            }
        };
        tracing::info!(
            client_id,
            filters = filters.len(),
            caught = buffer.len(),
            "session handover finished here"
        );
        for filter in &filters {
            self.remove_subscription(&slot, filter);
        }
        self.unregister(&slot);
        buffer
    }

    /// Hands deliveries to `client_id`'s session on this node, if it has one.
    pub fn deliver_to_client(&self, client_id: &str, deliveries: Vec<Delivery>) {
        let slot = self.sessions.lock().get(client_id).cloned();
        if let Some(slot) = slot {
            self.deliver_run_to(&slot, deliveries.into_iter());
        }
    }

    fn arm_timer(
        self: &Arc<Self>,
        slot: &Arc<SessionSlot>,
        generation: u64,
        after: Duration,
        kind: TimerKind,
    ) {
        let broker = Arc::downgrade(self);
        let slot = Arc::downgrade(slot);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let (Some(broker), Some(slot)) = (broker.upgrade(), slot.upgrade()) {
                broker.on_timer(&slot, generation, kind);
            }
        });
    }

    fn on_timer(&self, slot: &Arc<SessionSlot>, generation: u64, kind: TimerKind) {
        let mut inner = slot.inner.lock();
        if inner.generation != generation {
            return;
        }
        match kind {
            TimerKind::HandOverExpiry => {
                drop(inner);
                let dropped = self.finish_hand_over(&slot.client_id).len();
                self.stats
                    .count_dropped(DropReason::QueueFull, dropped as u64);
            }
            TimerKind::WillDelay => {
                let will = match &mut inner.state {
                    SlotState::Offline { pending_will, .. } => pending_will.take(),
                    _ => None,
                };
                drop(inner);
                if let Some(w) = will {
                    self.publish_will(&w);
                }
            }
            TimerKind::SessionExpiry => {
                let SlotState::Offline {
                    session,
                    pending_will,
                } = std::mem::replace(&mut inner.state, SlotState::Ended)
                else {
                    return;
                };
                inner.generation += 1;
                self.remove_session_subscriptions(slot, &session);
                drop(inner);
                self.stats.sessions_offline.fetch_sub(1, Ordering::Relaxed);
                self.unregister(slot);
                // A will whose delay outlasts the session is sent when the session ends.
                if let Some(w) = pending_will {
                    self.publish_will(&w);
                }
            }
        }
    }

    /// Takes an ended session's slot out of the registry, unless a new connection has
    /// claimed it in the meantime. Lock order: registry, then slot.
    fn unregister(&self, slot: &Arc<SessionSlot>) {
        let mut sessions = self.sessions.lock();
        let mut inner = slot.inner.lock();
        if matches!(inner.state, SlotState::Ended) && inner.registered {
            inner.registered = false;
            if sessions
                .get(&slot.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, slot))
            {
                sessions.remove(&slot.client_id);
            }
        }
    }

    fn remove_session_subscriptions(&self, slot: &Arc<SessionSlot>, session: &Session) {
        for filter in session.subscriptions.keys() {
            self.remove_subscription(slot, filter);
        }
    }

    // ---- subscriptions ----------------------------------------------------------------

    /// Adds (or replaces) a subscription in the index. Returns true if it already existed.
    /// The filter was validated by the caller.
    pub(crate) fn add_subscription(
        &self,
        slot: &Arc<SessionSlot>,
        filter: &str,
        sub: &Subscription,
    ) -> bool {
        let key = SlotKey(slot.clone());
        match topic::parse_shared(filter) {
            Ok(Some(shared)) => {
                let member = SharedMember {
                    slot: key,
                    qos: sub.options.qos,
                    identifier: sub.identifier,
                };
                let mut groups = self.shared.write();
                // Re-adding replaces the member, so its options (QoS, identifier) update.
                let existed = groups
                    .members(shared.group, shared.filter)
                    .contains(&member);
                if existed {
                    groups.remove(shared.group, shared.filter, &member);
                }
                groups.add(shared.group, shared.filter, member);
                if !existed {
                    // Under the lock, so the cluster hears changes in the order they happen.
                    let members = groups.members(shared.group, shared.filter).len();
                    self.cluster
                        .shared_members(shared.group, shared.filter, members);
                }
                drop(groups);
                if !existed {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                existed
            }
            _ => {
                let entry = IndexEntry {
                    qos: sub.options.qos,
                    no_local: sub.options.no_local,
                    retain_as_published: sub.options.retain_as_published,
                    identifier: sub.identifier,
                };
                let mut tree = self.subscriptions.write();
                let existed = tree.insert(filter, key, entry).is_some();
                self.index_generation.fetch_add(1, Ordering::Release);
                if !existed && tree.subscriber_count(filter) == 1 {
                    // Under the lock, so the cluster hears changes in the order they happen.
                    self.cluster.route_added(filter);
                }
                drop(tree);
                if !existed {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                existed
            }
        }
    }

    /// Removes a subscription from the index. Returns true if it existed.
    pub(crate) fn remove_subscription(&self, slot: &Arc<SessionSlot>, filter: &str) -> bool {
        let key = SlotKey(slot.clone());
        let removed = match topic::parse_shared(filter) {
            Ok(Some(shared)) => {
                let member = SharedMember {
                    slot: key,
                    qos: QoS::AtMostOnce,
                    identifier: None,
                };
                let mut groups = self.shared.write();
                let existed = groups
                    .members(shared.group, shared.filter)
                    .contains(&member);
                groups.remove(shared.group, shared.filter, &member);
                if existed {
                    let members = groups.members(shared.group, shared.filter).len();
                    self.cluster
                        .shared_members(shared.group, shared.filter, members);
                }
                existed
            }
            _ => {
                let mut tree = self.subscriptions.write();
                let removed = tree.remove(filter, &key).is_some();
                if removed {
                    self.index_generation.fetch_add(1, Ordering::Release);
                }
                if removed && tree.subscriber_count(filter) == 0 {
                    self.cluster.route_removed(filter);
                }
                removed
            }
        };
        if removed {
            self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Retained messages matching a new subscription, as deliveries at
    /// min(message QoS, granted QoS) with RETAIN set.
    pub(crate) fn retained_for(
        &self,
        filter: &str,
        granted: QoS,
        identifier: Option<u32>,
        now: Instant,
    ) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.retained
            .read()
            .for_each_matching(filter, |_, message| {
                if !message.is_expired(now) {
                    out.push(Delivery {
                        message: message.clone(),
                        qos: message.qos.min(granted),
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                    });
                }
            });
        out
    }

    // ---- publishing -------------------------------------------------------------------

    /// Publishes a will, stamped with the moment it is published.
    pub(crate) fn publish_will(&self, will: &Message) -> usize {
        self.publish(Arc::new(will.published_at(Instant::now())))
    }

    /// Routes a message published by a local client (or a will, or `$SYS`): updates the
    /// retained store, delivers to local subscribers and hands it to the cluster. Returns
    /// how many local sessions it reached. It counts as dropped for want of a subscriber
    /// only if it reached nobody here and the cluster took it nowhere either.
    pub fn publish(&self, message: Arc<Message>) -> usize {
        self.keep_if_retained(&message);
        let reached = self.deliver(&message, !self.cluster.shares_across_nodes());
        let forwarded = self.cluster.forward(&message);
        if reached == 0 && !forwarded {
            self.stats.count_dropped(DropReason::NoSubscriber, 1);
        }
        reached
    }

    /// [`Broker::publish`] for a run of messages one client sent back to back on one
    /// topic, in order, with the connection's [`MatchCache`]. Each subscriber's slot and
    /// mailbox are locked once for the whole run rather than once per message: at fan-out
    /// those locks, taken on one core and the subscriber's task's on the other, were the
    /// largest cost of a delivery. A retained message must come in a run of its own, so
    /// that the retained store and the deliveries change in step.
    pub(crate) fn publish_run(&self, run: &[Arc<Message>], cache: &mut MatchCache) {
        debug_assert!(run.len() == 1 || run.iter().all(|m| !m.retain));
        for message in run {
            self.keep_if_retained(message);
        }
        let unreached = self.deliver_run(run, !self.cluster.shares_across_nodes(), cache);
        if !self.cluster.forward_run(run) && unreached > 0 {
            self.stats
                .count_dropped(DropReason::NoSubscriber, unreached as u64);
        }
    }

    /// Delivers messages forwarded from another node, a run with one topic and one origin
    /// client, in order, with the receiving side's own `cache`: to plain subscriptions
    /// only, since the origin node chose the shared-group members (see
    /// [`Broker::deliver_shared`]).
    pub(crate) fn deliver_forwarded_run(&self, run: &[Arc<Message>], cache: &mut MatchCache) {
        let unreached = self.deliver_run(run, false, cache);
        if unreached > 0 {
            self.stats
                .count_dropped(DropReason::NoSubscriber, unreached as u64);
        }
    }

    /// Delivers a run of messages that share their topic and origin client to this node's
    /// subscribers, locking each subscriber's slot once for the run. Returns how many of
    /// the messages reached nobody here (the caller decides whether that is a drop).
    fn deliver_run(
        &self,
        run: &[Arc<Message>],
        include_shared: bool,
        cache: &mut MatchCache,
    ) -> usize {
        let Some(first) = run.first() else { return 0 };
        debug_assert!(run
            .iter()
            .all(|m| m.topic == first.topic && m.origin_client == first.origin_client));
        self.refresh_match_cache(first, cache);
        for target in &cache.targets {
            self.deliver_run_to(&target.slot.0, run.iter().map(|m| target.delivery(m)));
        }
        let shared_missed = if include_shared {
            run.iter()
                .filter(|m| self.deliver_to_shared_groups(m) == 0)
                .count()
        } else {
            run.len()
        };
        let unreached = if cache.targets.is_empty() {
            shared_missed
        } else {
            0
        };
        if cache.targets.len() > MatchCache::KEPT_TARGETS {
            *cache = MatchCache::default();
        }
        unreached
    }

    /// Stores or clears the message in the retained store if it is retained, and tells
    /// the cluster.
    fn keep_if_retained(&self, message: &Arc<Message>) {
        if message.retain {
            self.store_retained(message);
            let kept = (!message.payload.is_empty()).then_some(message);
            self.cluster.retained_changed(&message.topic, kept);
        }
    }

    /// Sets or clears a retained message (an empty payload clears).
    pub fn store_retained(&self, message: &Arc<Message>) {
        let mut retained = self.retained.write();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.set(&message.topic, message.clone());
        }
    }

    /// Delivers a message published on this node to this node's subscribers only (not
    /// forwarded: `$SYS`). Shared groups are served here only when the cluster does not
    /// pick among nodes for them. Returns how many sessions it reached; none is a drop.
    pub fn deliver_local(&self, message: &Arc<Message>) -> usize {
        let reached = self.deliver(message, !self.cluster.shares_across_nodes());
        if reached == 0 {
            self.stats.count_dropped(DropReason::NoSubscriber, 1);
        }
        reached
    }

    /// Delivers to one local member of `$share/{group}/{filter}`; false if this node has
    /// none (any more).
    pub fn deliver_shared(&self, message: &Arc<Message>, group: &str, filter: &str) -> bool {
        let member = {
            let shared = self.shared.read();
            shared
                .pick(group, filter, |m: &SharedMember| m.slot.0.is_online())
                .or_else(|| shared.pick(group, filter, |_| true))
        };
        let Some(member) = member else { return false };
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(member.qos),
            retain: false,
            subscription_ids: member.identifier.into_iter().collect(),
        };
        self.deliver_to(&member.slot.0, delivery);
        true
    }

    fn deliver(&self, message: &Arc<Message>, include_shared: bool) -> usize {
        let mut matched = MATCHED.with(|m| m.take());
        self.match_subscribers(message, &mut matched);
        let reached = self.deliver_matched(message, &matched, include_shared);
        matched.clear();
        if matched.capacity() <= MatchCache::KEPT_TARGETS {
            MATCHED.with(|m| m.replace(matched));
        }
        reached
    }

    /// Makes `cache` hold the subscribers of the message's topic as the index has them now.
    fn refresh_match_cache(&self, message: &Message, cache: &mut MatchCache) {
        let generation = self.index_generation.load(Ordering::Acquire);
        // `Arc<str>`'s equality compares the pointers first.
        let fresh = cache.generation == generation
            && cache.topic.as_ref() == Some(&message.topic)
            && cache.origin.as_ref() == Some(&message.origin_client);
        if !fresh {
            cache.targets.clear();
            cache.generation = self.match_subscribers(message, &mut cache.targets);
            cache.topic = Some(message.topic.clone());
            cache.origin = Some(message.origin_client.clone());
        }
    }

    /// Delivers to `matched` and, with `include_shared`, to a member of every matching
    /// shared group; returns how many sessions it reached.
    fn deliver_matched(
        &self,
        message: &Arc<Message>,
        matched: &[MatchedSubscriber],
        include_shared: bool,
    ) -> usize {
        let mut reached = matched.len();
        for target in matched {
            self.deliver_to(&target.slot.0, target.delivery(message));
        }
        if include_shared {
            reached += self.deliver_to_shared_groups(message);
        }
        reached
    }

    /// Puts in `into` the plain (not shared) subscriptions matching the message's topic,
    /// one per client; returns the index generation they were read at.
    fn match_subscribers(&self, message: &Message, into: &mut Vec<MatchedSubscriber>) -> u64 {
        // A client has one subscription per filter, so it can only be reached twice when
        // more than one filter matched; only then are copies merged (a sort per message
        // that fan-out to one filter's many subscribers does not need).
        let mut filters_matched = 0usize;
        let mut last_filter: *const u8 = std::ptr::null();
        let tree = self.subscriptions.read();
        // Read under the lock: exactly the index the walk sees.
        let generation = self.index_generation.load(Ordering::Acquire);
        tree.for_each_match(&message.topic, |filter, key, entry| {
            if filter.as_ptr() != last_filter {
                last_filter = filter.as_ptr();
                filters_matched += 1;
            }
            if entry.no_local && *key.0.client_id == *message.origin_client {
                return;
            }
            into.push(MatchedSubscriber {
                slot: key.clone(),
                qos: entry.qos,
                retain_as_published: entry.retain_as_published,
                subscription_ids: entry.identifier.into_iter().collect(),
            });
        });
        drop(tree);
        if filters_matched > 1 && into.len() > 1 {
            merge_overlapping(into);
        }
        generation
    }

    /// Delivers to one member of every shared group whose filter matches; returns how many.
    fn deliver_to_shared_groups(&self, message: &Arc<Message>) -> usize {
        // Collected first, delivered after the groups' lock is released (a slot's lock is
        // taken before the index's elsewhere). The vector is the thread's own, kept
        // between messages.
        let mut targets = SHARED_TARGETS.with(|t| t.take());
        {
            let shared = self.shared.read();
            shared.for_each_matching_group(&message.topic, |group, filter| {
                if let Some(member) = shared
                    .pick(group, filter, |m: &SharedMember| m.slot.0.is_online())
                    .or_else(|| shared.pick(group, filter, |_| true))
                {
                    targets.push((
                        member.slot.clone(),
                        Delivery {
                            message: message.clone(),
                            qos: message.qos.min(member.qos),
                            retain: false,
                            subscription_ids: member.identifier.into_iter().collect(),
                        },
                    ));
                }
            });
        }
        let reached = targets.len();
        for (key, delivery) in targets.drain(..) {
            self.deliver_to(&key.0, delivery);
        }
        if targets.capacity() <= MatchCache::KEPT_TARGETS {
            SHARED_TARGETS.with(|t| t.replace(targets));
        }
        reached
    }

    fn deliver_to(&self, slot: &SessionSlot, delivery: Delivery) {
        self.deliver_run_to(slot, std::iter::once(delivery));
    }

    /// Hands deliveries to one session, in order, under one lock of its slot: online, to
    /// the connection's mailbox (the connection task moves the mailbox's contents into
    /// its session before it gives up the slot, so nothing sent here is lost); offline,
    /// into the session's queue.
    fn deliver_run_to(&self, slot: &SessionSlot, deliveries: impl Iterator<Item = Delivery>) {
        let mut inner = slot.inner.lock();
        match &mut inner.state {
            SlotState::Online { tx, .. } => {
                let _ = tx.send_many(deliveries.map(ConnCommand::Deliver));
            }
            SlotState::Offline { session, .. } => {
                for delivery in deliveries {
                    self.enqueue_counted(session, delivery);
                }
            }
            SlotState::Moved { buffer, .. } => {
                for delivery in deliveries {
                    if buffer.len() < self.config.max_queued_messages {
                        buffer.push(delivery);
                    } else {
                        self.stats.count_dropped(DropReason::QueueFull, 1);
                    }
                }
            }
            SlotState::Ended => {}
        }
    }

    /// Queues a delivery on a session, counting what the queue limit drops.
    pub(crate) fn enqueue_counted(&self, session: &mut Session, delivery: Delivery) {
        match session.enqueue(delivery, self.config.max_queued_messages) {
            EnqueueOutcome::Queued => {}
            EnqueueOutcome::QueuedDroppedOldestQos0 | EnqueueOutcome::Dropped => {
                self.stats.count_dropped(DropReason::QueueFull, 1)
            }
        }
    }
}

thread_local! {
    /// [`Broker::deliver`]'s list of subscribers, reused (empty between calls).
    static MATCHED: std::cell::Cell<Vec<MatchedSubscriber>> =
        const { std::cell::Cell::new(Vec::new()) };
    /// [`Broker::deliver_to_shared_groups`]'s list of targets, reused (empty between calls).
    static SHARED_TARGETS: std::cell::Cell<Vec<(SlotKey, Delivery)>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// A subscriber a topic reaches, with its subscriptions' options merged.
#[derive(Debug)]
pub(crate) struct MatchedSubscriber {
    slot: SlotKey,
    /// The highest QoS granted among the client's matching subscriptions.
    qos: QoS,
    /// Whether any of them is Retain As Published.
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
}

impl MatchedSubscriber {
    fn delivery(&self, message: &Arc<Message>) -> Delivery {
        Delivery {
            message: message.clone(),
            qos: message.qos.min(self.qos),
            retain: message.retain && self.retain_as_published,
            subscription_ids: self.subscription_ids.clone(),
        }
    }
}

/// The subscribers of the last topic a client's connection published to (or the last a
/// peer forwarded), as the index had them at `generation`, with the publisher's No Local
/// subscriptions left out. A publisher mostly keeps to one topic, and walking the index
/// (a hash lookup per level) was the largest single cost of a message in the pairs
/// benchmark; while no subscription anywhere changes, the walk's result is reused.
#[derive(Debug, Default)]
pub(crate) struct MatchCache {
    topic: Option<Arc<str>>,
    /// The publisher's client id: whose No Local subscriptions were left out.
    origin: Option<Arc<str>>,
    generation: u64,
    targets: Vec<MatchedSubscriber>,
}

impl MatchCache {
    /// A topic reaching more subscribers than this is not kept (nor is the vector).
    const KEPT_TARGETS: usize = 4096;
}

enum Handed {
    Now(Session),
    Pending(Option<oneshot::Receiver<Session>>),
    Nothing,
}

#[derive(Clone, Copy, Debug)]
enum TimerKind {
    WillDelay,
    SessionExpiry,
    /// The node that took a session never finished the handover.
    HandOverExpiry,
}

/// One copy per client when several of its subscriptions match: the highest QoS, the
/// retain flag if any subscription keeps it, and every subscription identifier.
fn merge_overlapping(targets: &mut Vec<MatchedSubscriber>) {
    targets.sort_by_key(|t| Arc::as_ptr(&t.slot.0) as usize);
    targets.dedup_by(|later, kept| {
        if later.slot != kept.slot {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        true
    });
}

/// Counts a live connection for `shutdown` to wait on.
struct LiveConnection<'a>(&'a Broker);

impl Drop for LiveConnection<'_> {
    fn drop(&mut self) {
        if self.0.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.connections_done.notify_waiters();
        }
    }
}
