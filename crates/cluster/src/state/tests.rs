use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use tern_broker::topic::matches;

use super::*;

fn add(filter: &str) -> RouteChange {
    RouteChange::Add {
        filter: filter.into(),
    }
}

fn remove(filter: &str) -> RouteChange {
    RouteChange::Remove {
        filter: filter.into(),
    }
}

fn shared(group: &str, filter: &str, members: u32) -> RouteChange {
    RouteChange::Shared {
        group: group.into(),
        filter: filter.into(),
        members,
    }
}

fn routes(node: NodeId, changes: Vec<RouteChange>) -> Command {
    Command::Routes { node, changes }
}

fn claim(client_id: &str, node: NodeId) -> Command {
    Command::Claim {
        client_id: client_id.into(),
        node,
    }
}

fn message(topic: &str, payload: &str) -> WireMessage {
    WireMessage {
        origin_client: "c".into(),
        ..WireMessage::new(topic, Bytes::copy_from_slice(payload.as_bytes()), 1, true)
    }
}

fn retain(topic: &str, payload: Option<&str>) -> Command {
    Command::Retain {
        topic: topic.into(),
        message: payload.map(|p| message(topic, p)),
    }
}

fn nodes(state: &ClusterState, topic: &str, exclude: NodeId) -> Vec<NodeId> {
    let route = state.topic_route(topic);
    route
        .nodes
        .iter()
        .copied()
        .filter(|&n| n != exclude)
        .collect()
}

fn groups(state: &ClusterState, topic: &str) -> BTreeMap<(String, String), Vec<(NodeId, u32)>> {
    let mut out = BTreeMap::new();
    state.shared_groups_for_topic(topic, |g, f, m| {
        out.insert((g.to_owned(), f.to_owned()), m.to_vec());
    });
    out
}

fn retained_under(state: &ClusterState, filter: &str) -> BTreeMap<String, WireMessage> {
    let mut out = BTreeMap::new();
    state.retained_matching(filter, |t, m| {
        out.insert(t.to_owned(), m.clone());
    });
    out
}

#[test]
fn routes_are_idempotent_and_counted_per_node() {
    let mut s = ClusterState::new();
    s.apply(&routes(1, vec![add("a/+"), add("a/+"), add("a/b")]));
    s.apply(&routes(2, vec![add("#")]));
    assert_eq!(s.route_count(), 3);
    assert_eq!(nodes(&s, "a/b", 0), vec![1, 2]);
    assert_eq!(nodes(&s, "a/b", 1), vec![2]);
    assert_eq!(nodes(&s, "$SYS/x", 0), Vec::<NodeId>::new());
    s.apply(&routes(1, vec![remove("a/+"), remove("a/+"), remove("zz")]));
    assert_eq!(s.route_count(), 2);
    s.apply(&routes(1, vec![remove("a/b")]));
    assert_eq!(nodes(&s, "a/b", 2), Vec::<NodeId>::new());
}

#[test]
fn only_real_changes_are_reported() {
    let mut s = ClusterState::new();
    let mut seen = Vec::new();
    s.apply_observed(&routes(1, vec![add("a")]), &mut |c| seen.push(c));
    s.apply_observed(&routes(1, vec![add("a")]), &mut |c| seen.push(c));
    s.apply_observed(&routes(1, vec![shared("g", "a", 0)]), &mut |c| seen.push(c));
    s.apply_observed(&retain("t", None), &mut |c| seen.push(c));
    assert_eq!(seen, vec![Change::Routes { node: 1 }]);
}

#[test]
fn shared_members_are_set_and_zero_removes() {
    let mut s = ClusterState::new();
    s.apply(&routes(1, vec![shared("g", "jobs/+", 2)]));
    s.apply(&routes(3, vec![shared("g", "jobs/+", 1)]));
    s.apply(&routes(3, vec![shared("h", "jobs/#", 4)]));
    let g = groups(&s, "jobs/1");
    assert_eq!(g[&("g".into(), "jobs/+".into())], vec![(1, 2), (3, 1)]);
    assert_eq!(g[&("h".into(), "jobs/#".into())], vec![(3, 4)]);
    s.apply(&routes(1, vec![shared("g", "jobs/+", 5)]));
    assert_eq!(
        groups(&s, "jobs/1")[&("g".into(), "jobs/+".into())],
        vec![(1, 5), (3, 1)]
    );
    s.apply(&routes(1, vec![shared("g", "jobs/+", 0)]));
    s.apply(&routes(3, vec![shared("g", "jobs/+", 0)]));
    assert_eq!(groups(&s, "jobs/1").len(), 1);
    assert_eq!(s.shared_count(), 1);
    // Shared routes are not plain routes.
    assert!(nodes(&s, "jobs/1", 0).is_empty());
}

#[test]
fn claims_count_epochs_and_name_the_previous_owner() {
    let mut s = ClusterState::new();
    let r = |epoch, previous| CommandResponse::Claimed { epoch, previous };
    assert_eq!(s.apply(&claim("c", 1)), r(1, None));
    assert_eq!(s.apply(&claim("c", 2)), r(2, Some(1)));
    // Reconnecting to the same node is that node's own business: no previous owner.
    assert_eq!(s.apply(&claim("c", 2)), r(3, None));
    assert_eq!(s.claim("c"), Some(Claim { node: 2, epoch: 3 }));
    s.apply(&Command::PurgeNode { node: 2 });
    assert_eq!(s.claim("c"), None);
    // Epochs keep growing across a purge.
    assert_eq!(s.apply(&claim("c", 1)), r(4, None));
    assert_eq!(s.claim_count(), 1);
}

#[test]
fn retained_set_and_clear() {
    let mut s = ClusterState::new();
    s.apply(&retain("a/b", Some("1")));
    s.apply(&retain("a/c", Some("2")));
    s.apply(&retain("a/b", Some("3")));
    assert_eq!(s.retained("a/b").map(|m| &m.payload[..]), Some(&b"3"[..]));
    assert_eq!(retained_under(&s, "a/+").len(), 2);
    s.apply(&retain("a/b", None));
    assert_eq!(
        retained_under(&s, "#").keys().collect::<Vec<_>>(),
        vec!["a/c"]
    );
    assert_eq!(s.retained_count(), 1);
}

#[test]
fn batches_answer_in_order() {
    let mut s = ClusterState::new();
    let resp = s.apply(&Command::Batch(vec![
        claim("x", 1),
        routes(1, vec![add("t")]),
        Command::Batch(vec![claim("x", 2)]),
    ]));
    assert_eq!(
        resp,
        CommandResponse::Batch(vec![
            CommandResponse::Claimed {
                epoch: 1,
                previous: None
            },
            CommandResponse::Done,
            CommandResponse::Batch(vec![CommandResponse::Claimed {
                epoch: 2,
                previous: Some(1)
            }]),
        ])
    );
}

#[test]
fn weighted_pick_follows_member_counts() {
    let members = [(1, 1), (2, 3)];
    let picks: Vec<_> = (0..4).map(|t| pick_weighted(&members, t)).collect();
    assert_eq!(picks, vec![Some(1), Some(2), Some(2), Some(2)]);
    assert_eq!(pick_weighted(&[], 7), None);
}

#[test]
fn bad_snapshot_bytes_are_an_error() {
    assert!(ClusterState::from_snapshot(b"\x01\x02garbage").is_err());
    #[derive(serde::Serialize)]
    struct Future {
        version: u32,
    }
    let bytes = rmp_serde::to_vec_named(&Future { version: 99 }).expect("encode");
    assert!(matches!(
        ClusterState::from_snapshot(&bytes),
        Err(SnapshotError::UnknownVersion(99))
    ));
}

// ---- properties ----

const NODES: std::ops::RangeInclusive<NodeId> = 1..=4;

fn filter() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "a/b", "a/+", "a/#", "+/b", "#", "+", "+/+", "b/#", "$SYS/#", "$SYS/+", "a/b/c",
    ])
    .prop_map(String::from)
}

fn topic() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "a/b", "a/c", "b", "b/b", "a/b/c", "$SYS/x", "$SYS",
    ])
    .prop_map(String::from)
}

fn route_change() -> impl Strategy<Value = RouteChange> {
    prop_oneof![
        filter().prop_map(|filter| RouteChange::Add { filter }),
        filter().prop_map(|filter| RouteChange::Remove { filter }),
        (prop::sample::select(vec!["g", "h"]), filter(), 0u32..3).prop_map(
            |(g, filter, members)| RouteChange::Shared {
                group: g.into(),
                filter,
                members
            }
        ),
    ]
}

fn simple_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (NODES, prop::collection::vec(route_change(), 0..6))
            .prop_map(|(node, changes)| Command::Routes { node, changes }),
        2 => (prop::sample::select(vec!["c1", "c2", "c3"]), NODES)
            .prop_map(|(c, node)| claim(c, node)),
        2 => (topic(), prop::option::of("[a-z]{0,3}"))
            .prop_map(|(t, p)| retain(&t, p.as_deref())),
        1 => NODES.prop_map(|node| Command::PurgeNode { node }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        5 => simple_command(),
        1 => prop::collection::vec(simple_command(), 0..4).prop_map(Command::Batch),
    ]
}

fn build(cmds: &[Command]) -> ClusterState {
    let mut s = ClusterState::new();
    for c in cmds {
        s.apply(c);
    }
    s
}

/// Route answers by scanning the canonical map with `matches`.
fn linear_nodes(s: &ClusterState, topic: &str, exclude: NodeId) -> Vec<NodeId> {
    let set: BTreeSet<NodeId> = s
        .routes
        .iter()
        .filter(|(f, _)| matches(f, topic))
        .flat_map(|(_, n)| n.iter().copied())
        .filter(|&n| n != exclude)
        .collect();
    set.into_iter().collect()
}

fn linear_groups(s: &ClusterState, topic: &str) -> BTreeMap<(String, String), Vec<(NodeId, u32)>> {
    let mut out = BTreeMap::new();
    for (g, filters) in &s.shared {
        for (f, members) in filters {
            if matches(f, topic) {
                out.insert(
                    (g.clone(), f.clone()),
                    members.iter().map(|(n, m)| (*n, *m)).collect(),
                );
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn snapshot_restores_an_equal_state(cmds in prop::collection::vec(command(), 0..40)) {
        let s = build(&cmds);
        let bytes = s.to_snapshot().expect("encode");
        let back = ClusterState::from_snapshot(&bytes).expect("decode");
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.to_snapshot().expect("encode"), bytes);
        prop_assert_eq!(back.route_count(), s.route_count());
        prop_assert_eq!(back.shared_count(), s.shared_count());
        for t in ["a", "a/b", "a/c", "b", "b/b", "a/b/c", "$SYS/x", "$SYS"] {
            for ex in 0..=4 {
                prop_assert_eq!(nodes(&back, t, ex), nodes(&s, t, ex));
            }
            prop_assert_eq!(groups(&back, t), groups(&s, t));
        }
        for f in ["#", "a/+", "$SYS/#", "+"] {
            prop_assert_eq!(retained_under(&back, f), retained_under(&s, f));
        }
        for c in ["c1", "c2", "c3"] {
            prop_assert_eq!(back.claim(c), s.claim(c));
        }
    }

    #[test]
    fn index_answers_like_a_linear_scan(cmds in prop::collection::vec(command(), 0..40)) {
        let s = build(&cmds);
        for t in ["a", "a/b", "a/c", "b", "b/b", "a/b/c", "$SYS/x", "$SYS"] {
            for ex in 0..=4 {
                prop_assert_eq!(nodes(&s, t, ex), linear_nodes(&s, t, ex));
            }
            prop_assert_eq!(groups(&s, t), linear_groups(&s, t));
        }
        // The index holds exactly the canonical routes.
        let canonical: usize = s.routes.values().map(|n| n.len()).sum();
        prop_assert_eq!(s.route_count(), canonical);
    }

    #[test]
    fn remembered_topic_routes_follow_every_change(
        cmds in prop::collection::vec(command(), 0..40),
    ) {
        // Asked between every two commands, so a remembered answer that outlived a
        // change would show.
        let mut s = ClusterState::new();
        let topics = ["a", "a/b", "a/c", "b", "b/b", "a/b/c", "$SYS/x", "$SYS"];
        for c in cmds.iter().chain([&Command::PurgeNode { node: 1 }]) {
            s.apply(c);
            for t in topics {
                let route = s.topic_route(t);
                prop_assert_eq!(route.nodes.to_vec(), linear_nodes(&s, t, 0));
                prop_assert_eq!(route.shared, !linear_groups(&s, t).is_empty());
                prop_assert_eq!(s.topic_route(t), route);
            }
        }
    }

    #[test]
    fn purge_leaves_nothing_of_the_node(
        cmds in prop::collection::vec(command(), 0..40),
        node in NODES,
    ) {
        let mut s = build(&cmds);
        let claims_before: BTreeMap<String, u64> =
            s.claims.iter().map(|(c, r)| (c.clone(), r.epoch)).collect();
        s.apply(&Command::PurgeNode { node });
        let mut left = 0;
        s.routes_of(node, |_| left += 1);
        s.shared_of(node, |_, _, _| left += 1);
        prop_assert_eq!(left, 0);
        prop_assert!(s.routes.values().all(|n| !n.is_empty() && !n.contains(&node)));
        prop_assert!(s.claims.values().all(|r| r.owner != Some(node)));
        for t in ["a", "a/b", "b/b", "$SYS/x"] {
            prop_assert!(!nodes(&s, t, 0).contains(&node));
            prop_assert!(groups(&s, t).values().all(|m| m.iter().all(|(n, _)| *n != node)));
        }
        // Epochs survive the purge.
        for (c, epoch) in claims_before {
            prop_assert_eq!(s.claims.get(&c).map(|r| r.epoch), Some(epoch));
        }
    }
}
