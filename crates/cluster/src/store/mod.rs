//! Raft storage on disk (openraft 0.9, storage-v2): the log in a redb database, the state
//! machine in memory with its snapshots as files. See docs/raft-storage.md.
//!
//! ```text
//! <data_dir>/raft.redb             log entries, vote, committed and last-purged log ids
//! <data_dir>/snapshots/*.snap      the latest state-machine snapshot (one file)
//! ```
//!
//! [`open`] gives the two halves openraft wants, [`LogStore`] and [`StateMachineStore`];
//! the rest of the node reads the replicated state and hears about applied changes
//! through a [`StateHandle`] (from [`StateMachineStore::handle`]).

// openraft's traits fix the error type (`StorageError`, a large enum); boxing it only in
// our helpers would add conversions without saving anything on the paths that matter.
#![allow(clippy::result_large_err)]

mod log;
mod snapshot_file;
mod state_machine;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use log::LogStore;
pub use state_machine::{Applied, StateHandle, StateMachineStore};

use crate::raft_types::{StorageError, StorageIOError};
use crate::types::NodeId;

/// Opens (or creates) the Raft storage of node `local` in `data_dir`. The state machine
/// starts from the latest snapshot; openraft then re-applies the committed log entries
/// after it.
pub fn open(data_dir: &Path, local: NodeId) -> Result<(LogStore, StateMachineStore), StorageError> {
    let log = LogStore::open(data_dir)?;
    let sm = StateMachineStore::open(data_dir, local)?;
    Ok((log, sm))
}

/// Runs blocking disk work (fsync, file writes) off the async worker threads, so a slow
/// disk stalls only the Raft task waiting for it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(StorageIOError::write(&join).into()),
    }
}
