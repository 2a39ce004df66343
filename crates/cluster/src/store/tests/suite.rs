//! openraft's own storage test suite (0.9: `Suite::test_all`), each case on fresh stores
//! in a fresh temp dir. The suite runs its own runtimes, so this is a plain `#[test]`.

use openraft::testing::{StoreBuilder, Suite};

use super::TempDir;
use crate::raft_types::{StorageError, TypeConfig};
use crate::store::{open, LogStore, StateMachineStore};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new("suite");
        let (log, sm) = open(dir.path(), 0)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
