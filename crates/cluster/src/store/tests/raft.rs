//! A real single-voter `openraft::Raft` on the store: it needs no network, so the network
//! factory here refuses every dial (`Unreachable`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};

use super::{route_batch, TempDir};
use crate::raft_types::{
    AppendEntriesRequest, AppendEntriesResponse, Config, InstallSnapshotRequest,
    InstallSnapshotResponse, RPCError, Raft, TypeConfig, VoteRequest, VoteResponse,
};
use crate::state::Claim;
use crate::store::open;
use crate::types::{Command, CommandResponse, NodeId, NodeInfo};

struct NoNetwork;

fn unreachable<E: std::error::Error>() -> RPCError<E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "no network in this test",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: NodeId, _node: &NodeInfo) -> NoNetwork {
        NoNetwork
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RPCError<InstallSnapshotError>> {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError> {
        Err(unreachable())
    }
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid config"))
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Starts node 1 on `dir` and waits until it leads.
async fn start(dir: &TempDir) -> (Raft, crate::store::StateHandle) {
    let (log, sm) = open(dir.path(), 1).expect("open store");
    let handle = sm.handle();
    let raft = Raft::new(1, config(), NoNetwork, log, sm)
        .await
        .expect("raft");
    (raft, handle)
}

async fn start_leader(dir: &TempDir, initialize: bool) -> (Raft, crate::store::StateHandle) {
    let (raft, handle) = start(dir).await;
    if initialize {
        let node = NodeInfo {
            cluster_addr: "127.0.0.1:7000".into(),
            region: "test".into(),
        };
        raft.initialize(BTreeMap::from([(1, node)]))
            .await
            .expect("initialize");
    }
    raft.wait(WAIT)
        .current_leader(1, "node 1 leads")
        .await
        .expect("leader");
    (raft, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_commits_applies_and_restarts() {
    let dir = TempDir::new("raft");
    let last_applied;
    {
        let (raft, handle) = start_leader(&dir, true).await;
        let resp = raft
            .client_write(route_batch(1, 0, 10))
            .await
            .expect("write routes");
        assert_eq!(resp.data, CommandResponse::Done);
        raft.client_write(route_batch(2, 0, 3))
            .await
            .expect("write");
        let resp = raft
            .client_write(Command::Claim {
                client_id: "c".into(),
                node: 2,
            })
            .await
            .expect("claim");
        assert_eq!(
            resp.data,
            CommandResponse::Claimed {
                epoch: 1,
                previous: None
            }
        );
        {
            let state = handle.read();
            assert_eq!(state.route_count(), 13);
            assert_eq!(state.claim("c"), Some(Claim { node: 2, epoch: 1 }));
            let route = state.topic_route("sensors/1/x");
            let others: Vec<_> = route.nodes.iter().copied().filter(|&n| n != 1).collect();
            assert_eq!(others, vec![2]);
        }
        // A snapshot, then more entries after it: restart needs both.
        raft.trigger().snapshot().await.expect("trigger snapshot");
        let snap_at = resp.log_id;
        raft.wait(WAIT)
            .snapshot(snap_at, "snapshot built")
            .await
            .expect("snapshot");
        let resp = raft
            .client_write(Command::Claim {
                client_id: "c".into(),
                node: 1,
            })
            .await
            .expect("claim again");
        assert_eq!(
            resp.data,
            CommandResponse::Claimed {
                epoch: 2,
                previous: Some(2)
            }
        );
        last_applied = resp.log_id.index;
        raft.shutdown().await.expect("shutdown");
    }

    let (raft, handle) = start(&dir).await;
    raft.wait(WAIT)
        .applied_index_at_least(Some(last_applied), "replayed after restart")
        .await
        .expect("replay");
    {
        let state = handle.read();
        assert_eq!(state.route_count(), 13);
        assert_eq!(state.claim("c"), Some(Claim { node: 1, epoch: 2 }));
    }
    raft.wait(WAIT)
        .current_leader(1, "leads again")
        .await
        .expect("leader after restart");
    let resp = raft
        .client_write(Command::Claim {
            client_id: "c".into(),
            node: 3,
        })
        .await
        .expect("write after restart");
    assert_eq!(
        resp.data,
        CommandResponse::Claimed {
            epoch: 3,
            previous: Some(1)
        }
    );
    raft.shutdown().await.expect("shutdown");
}

/// Throughput and latency of the store under a single-node Raft. Slow-ish and
/// machine-dependent, so ignored by default:
/// `cargo test -p tern-cluster --release -- --ignored --nocapture measure_`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a throughput measurement, not a check: run with --release -- --ignored --nocapture measure_"]
async fn measure_commit_rate_and_latency() {
    let dir = TempDir::new("measure");
    let (raft, handle) = start_leader(&dir, true).await;

    // Latency: one entry at a time, each waits for its commit and apply.
    let n = 200;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        raft.client_write(route_batch(2, i, 1))
            .await
            .expect("write");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "single-entry latency over {n}: p50 {:?}, p99 {:?}, max {:?}",
        lat[n / 2],
        lat[n * 99 / 100],
        lat[n - 1]
    );

    // Throughput: entries of 100 route changes, 32 writers in flight.
    let (writers, per_writer, batch) = (32usize, 40usize, 100usize);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let raft = raft.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..per_writer {
                let start = 1_000_000 + (w * per_writer + j) * batch;
                raft.client_write(route_batch(3, start, batch))
                    .await
                    .expect("write");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let secs = t.elapsed().as_secs_f64();
    let entries = writers * per_writer;
    println!(
        "throughput: {entries} entries x {batch} route changes in {secs:.2}s = {:.0} entries/s, {:.0} route changes/s",
        entries as f64 / secs,
        (entries * batch) as f64 / secs
    );
    assert_eq!(handle.read().route_count(), n + entries * batch);
    raft.shutdown().await.expect("shutdown");
}
