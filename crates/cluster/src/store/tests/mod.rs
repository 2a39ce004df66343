//! Store tests: openraft's storage suite, restart from disk, and a single-node Raft.

mod raft;
mod restart;
mod suite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::{Command, RouteChange};

/// A unique directory under the system temp dir, deleted on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "tern-store-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `count` route additions of `node`, filters numbered from `start`.
pub(super) fn route_batch(node: u64, start: usize, count: usize) -> Command {
    Command::Routes {
        node,
        changes: (start..start + count)
            .map(|i| RouteChange::Add {
                filter: format!("sensors/{i}/+"),
            })
            .collect(),
    }
}
