//! Everything written survives dropping the stores and opening the same directory again.

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{RaftLogReader, RaftSnapshotBuilder};

use super::{route_batch, TempDir};
use crate::raft_types::{Entry, EntryPayload, Membership, StoredMembership, Vote};
use crate::state::ClusterState;
use crate::store::{open, Applied};
use crate::types::{Command, CommandResponse};

fn entries() -> Vec<Entry> {
    let mut out = vec![Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], None)),
    }];
    for i in 2..=10u64 {
        let cmd = if i % 3 == 0 {
            Command::Claim {
                client_id: format!("c{}", i % 2),
                node: i % 4,
            }
        } else {
            route_batch(i % 3, i as usize * 10, 5)
        };
        out.push(Entry {
            log_id: log_id(1, 1, i),
            payload: EntryPayload::Normal(cmd),
        });
    }
    out
}

fn expected_state(entries: &[Entry]) -> ClusterState {
    let mut s = ClusterState::new();
    for e in entries {
        if let EntryPayload::Normal(cmd) = &e.payload {
            s.apply(cmd);
        }
    }
    s
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_a_restart() {
    let dir = TempDir::new("restart");
    let all = entries();
    let vote = Vote::new_committed(1, 1);
    {
        let (mut log, mut sm) = open(dir.path(), 1).expect("open");
        let mut events = sm.handle().subscribe();
        log.blocking_append(all.clone()).await.expect("append");
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(1, 1, 8)))
            .await
            .expect("commit");
        let responses = sm.apply(all[..6].to_vec()).await.expect("apply");
        assert_eq!(responses.len(), 6);
        // Entry 3 claims c1 for node 3, entry 6 claims c0 for node 2: no one lost a claim
        // of node 1, so only route events arrive.
        while let Ok(event) = events.try_recv() {
            assert!(matches!(event, Applied::RoutesChanged { .. }), "{event:?}");
        }
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 6)));
        log.purge(log_id(1, 1, 4)).await.expect("purge");
    }

    let (mut log, mut sm) = open(dir.path(), 1).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 10)));
    let read = log.try_get_log_entries(0..100).await.expect("read");
    assert_eq!(read, all[4..].to_vec());
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 1, 8))
    );

    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, 6)));
    assert_eq!(
        membership,
        StoredMembership::new(
            Some(log_id(1, 1, 1)),
            Membership::new(vec![BTreeSet::from([1])], None)
        )
    );
    assert!(*sm.handle().read() == expected_state(&all[..6]));
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 6)));

    // Replaying the rest (as openraft does up to the committed index) gives the full state.
    let responses = sm.apply(all[6..].to_vec()).await.expect("apply rest");
    assert_eq!(responses[0], CommandResponse::Done);
    assert!(*sm.handle().read() == expected_state(&all));
}

#[tokio::test]
async fn truncate_drops_the_tail() {
    let dir = TempDir::new("truncate");
    let (mut log, _sm) = open(dir.path(), 1).expect("open");
    log.blocking_append(entries()).await.expect("append");
    log.truncate(log_id(1, 1, 7)).await.expect("truncate");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 6)));
    assert_eq!(log.try_get_log_entries(5..).await.expect("read").len(), 2);
}

#[tokio::test]
async fn a_corrupt_snapshot_is_an_error_not_a_panic() {
    let dir = TempDir::new("corrupt");
    {
        let (_log, mut sm) = open(dir.path(), 1).expect("open");
        sm.apply(entries()).await.expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
    }
    let snaps = dir.path().join("snapshots");
    let file = std::fs::read_dir(&snaps)
        .expect("dir")
        .next()
        .expect("one file")
        .expect("entry")
        .path();
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 3]).expect("truncate");
    assert!(open(dir.path(), 1).is_err());
}
