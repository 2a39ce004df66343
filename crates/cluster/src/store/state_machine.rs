//! openraft's state machine over [`ClusterState`]: applies committed entries in memory,
//! builds and installs snapshots (kept as files), and tells the node what changed.
//!
//! The state itself is never written to disk except as a snapshot. On restart it comes
//! back from the latest snapshot, whose metadata gives the last applied log id and the
//! membership; openraft then re-applies the committed entries after it (the log store
//! keeps the committed log id for that).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, RaftSnapshotBuilder};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::broadcast;

use super::blocking;
use super::snapshot_file::SnapshotDir;
use crate::node::stats::SnapshotCounters;
use crate::raft_types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotData, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, TypeConfig,
};
use crate::state::{Change, ClusterState};
use crate::types::{CommandResponse, NodeId, WireMessage};

/// How many [`Applied`] events a slow subscriber may fall behind before it lags.
const EVENT_CAPACITY: usize = 4096;

/// An applied change the rest of this node acts on. Events are hints in log order; the
/// state behind [`StateHandle::read`] is the truth. A subscriber that lags
/// (`RecvError::Lagged`) or sees [`Applied::Reset`] must re-read what it cares about.
/// After a restart, re-applied entries repeat their events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A client id this node owned was claimed by `node`: disconnect the local client
    /// (MQTT 5: reason 0x8E) and hand its session over.
    ClaimLost {
        client_id: String,
        node: NodeId,
        epoch: u64,
    },
    /// A retained message was set (`Some`) or cleared (`None`), by any node.
    Retained {
        topic: String,
        message: Option<WireMessage>,
    },
    /// The routes of `node` changed.
    RoutesChanged { node: NodeId },
    /// Everything `node` owned was forgotten (it left or was declared dead).
    NodePurged { node: NodeId },
    /// A snapshot from the leader replaced the whole state.
    Reset,
}

/// The last applied log id and membership, changed only while the state's write lock is
/// held, so a reader holding the state's read lock sees the matching pair.
#[derive(Clone, Debug, Default)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The replicated state as the rest of the node sees it. Cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    state: Arc<RwLock<ClusterState>>,
    events: broadcast::Sender<Applied>,
    snapshots: Arc<SnapshotCounters>,
}

impl StateHandle {
    /// Reads the state. A synchronous lock held briefly: never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read()
    }

    /// Applied changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.events.subscribe()
    }

    /// How many snapshots this state machine built and installed since the node started.
    pub(crate) fn snapshot_counters(&self) -> &SnapshotCounters {
        &self.snapshots
    }
}

struct Inner {
    local: NodeId,
    handle: StateHandle,
    meta: Mutex<AppliedMeta>,
    snapshots: SnapshotDir,
    /// The snapshot on disk and its path. Locked around every snapshot file operation.
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    /// Suffix of snapshot ids, unique enough across restarts (seeded by the clock).
    snapshot_seq: AtomicU64,
}

/// openraft's state machine. Clones share everything (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Opens the snapshots in `<data_dir>/snapshots` and loads the latest one. `local` is
    /// this node's id, to tell which lost claims are ours.
    pub fn open(data_dir: &Path, local: NodeId) -> Result<Self, StorageError> {
        let snapshots =
            SnapshotDir::open(data_dir).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let mut state = ClusterState::new();
        let mut meta = AppliedMeta::default();
        let mut current = None;
        let latest = snapshots
            .latest()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        if let Some(path) = latest {
            let (snap_meta, data) =
                SnapshotDir::read(&path).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
            state = ClusterState::from_snapshot(&data)
                .map_err(|e| StorageIOError::read_snapshot(Some(snap_meta.signature()), &e))?;
            meta.last_applied = snap_meta.last_log_id;
            meta.membership = snap_meta.last_membership.clone();
            snapshots
                .remove_others(&path)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            current = Some((snap_meta, path));
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                local,
                handle: StateHandle {
                    state: Arc::new(RwLock::new(state)),
                    events,
                    snapshots: Arc::default(),
                },
                meta: Mutex::new(meta),
                snapshots,
                current: Mutex::new(current),
                snapshot_seq: AtomicU64::new(seed << 16),
            }),
        })
    }

    /// The handle through which the node reads the state and hears about changes.
    pub fn handle(&self) -> StateHandle {
        self.inner.handle.clone()
    }

    fn local_event(&self, change: Change) -> Option<Applied> {
        match change {
            Change::Claimed {
                client_id,
                node,
                epoch,
                previous,
            } => (previous == Some(self.inner.local)).then_some(Applied::ClaimLost {
                client_id,
                node,
                epoch,
            }),
            Change::Retained { topic, message } => Some(Applied::Retained { topic, message }),
            Change::Routes { node } => Some(Applied::RoutesChanged { node }),
            Change::Purged { node } => Some(Applied::NodePurged { node }),
        }
    }

    fn send(&self, events: Vec<Applied>) {
        for event in events {
            // No subscriber is fine: nobody is listening yet.
            let _ = self.inner.handle.events.send(event);
        }
    }

    /// Writes a snapshot file and makes it current, unless a newer one already is (a
    /// build racing an install), in which case it is not written at all.
    async fn store_snapshot(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || {
            let mut current = this.inner.current.lock();
            if current
                .as_ref()
                .is_some_and(|(c, _)| c.last_log_id > meta.last_log_id)
            {
                return Ok(());
            }
            let sig = meta.signature();
            let path = this
                .inner
                .snapshots
                .write(&meta, &data)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &e))?;
            this.inner
                .snapshots
                .remove_others(&path)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e))?;
            *current = Some((meta, path));
            Ok(())
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (data, applied) = {
            let state = self.inner.handle.state.read();
            let applied = self.inner.meta.lock().clone();
            let data = state
                .to_snapshot()
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            (data, applied)
        };
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(last) => format!("{}-{}-{}", last.leader_id, last.index, seq),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        self.store_snapshot(meta.clone(), data.clone()).await?;
        let counters = &self.inner.handle.snapshots;
        counters.built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = self.inner.meta.lock();
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            // One lock per entry, so readers on the publish path wait for one entry at
            // most, not for a whole batch.
            let mut state = self.inner.handle.state.write();
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Normal(cmd) => state.apply_observed(cmd, &mut |c| {
                    events.extend(self.local_event(c));
                }),
                EntryPayload::Membership(m) => {
                    self.inner.meta.lock().membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResponse::Done
                }
            };
            self.inner.meta.lock().last_applied = Some(entry.log_id);
            drop(state);
            responses.push(response);
        }
        self.send(events);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(SnapshotData::new(Vec::new())))
    }

    /// Checks the leader's snapshot, persists it, then swaps it in.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = ClusterState::from_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(meta.clone(), data).await?;
        {
            let mut guard = self.inner.handle.state.write();
            *guard = state;
            let mut applied = self.inner.meta.lock();
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        self.send(vec![Applied::Reset]);
        let counters = &self.inner.handle.snapshots;
        counters.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let this = self.clone();
        blocking(move || {
            let current = this.inner.current.lock();
            let Some((meta, path)) = current.as_ref() else {
                return Ok(None);
            };
            let (_, data) = SnapshotDir::read(path)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
            Ok(Some(Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(SnapshotData::new(data)),
            }))
        })
        .await
    }
}
