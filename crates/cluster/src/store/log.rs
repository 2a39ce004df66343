//! The Raft log, vote, committed and last-purged log ids in one redb database.
//!
//! Each write is one redb transaction. Appends, votes, truncations and purges commit with
//! `Durability::Immediate` (an fsync) before openraft hears they are done; the committed
//! log id commits with `Durability::None` because losing it only means re-learning it
//! from the leader, and the next durable commit (the next append) persists it anyway.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::blocking;
use crate::raft_types::{
    Entry, LogFlushed, LogId, LogState, StorageError, StorageIOError, TypeConfig, Vote,
};

/// index -> MessagePack of the entry (named fields).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small values by name, MessagePack.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log on disk. Cheap to clone: clones share the database, which is how
/// openraft's log reader (replication tasks) reads while the Raft core writes.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn read_err(e: impl Into<redb::Error>) -> StorageError {
    StorageIOError::read_logs(&e.into()).into()
}

fn write_err(e: impl Into<redb::Error>) -> StorageError {
    StorageIOError::write_logs(&e.into()).into()
}

/// Runs `f` in one write transaction with `durability` and commits it.
fn write_txn(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    f(&txn)?;
    txn.commit()?;
    Ok(())
}

impl LogStore {
    /// Opens or creates `<data_dir>/raft.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StorageIOError::write_logs(&e))?;
        let db = Database::create(data_dir.join("raft.redb")).map_err(write_err)?;
        // Create the tables up front, so reads never meet a missing table.
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })
        .map_err(write_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(value) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        rmp_serde::from_slice(value.value())
            .map(Some)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| StorageIOError::write_logs(&e))?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, durability, |txn| {
                txn.open_table(META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
            .map_err(write_err)
        })
        .await
    }

    fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
        rmp_serde::from_slice(bytes)
            .map_err(|e| StorageIOError::read_log_at_index(index, &e).into())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((k, v)) => Some(Self::decode_entry(k.value(), v.value())?.log_id),
            None => None,
        };
        Ok(last)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in table.range::<u64>(bounds).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            out.push(Self::decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    /// Reports the entries flushed only after the fsync of their commit.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = rmp_serde::to_vec_named(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, Durability::Immediate, |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(write_err)
        })
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Deletes the entries from `log_id.index` on (a new leader overwrote them).
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(LOG)?
                    .retain_in::<u64, _>(log_id.index.., |_, _| false)?;
                Ok(())
            })
            .map_err(write_err)
        })
        .await
    }

    /// Deletes the entries up to `log_id.index` (they are in a snapshot) and remembers the
    /// last one, in the same transaction.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let marker =
            rmp_serde::to_vec_named(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(META)?
                    .insert(LAST_PURGED, marker.as_slice())?;
                txn.open_table(LOG)?
                    .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
                Ok(())
            })
            .map_err(write_err)
        })
        .await
    }
}
