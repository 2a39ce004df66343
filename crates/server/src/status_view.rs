//! `tern cluster status` as a readable text: the node's view of Raft, the members and its
//! links to the other nodes.

use std::collections::BTreeMap;
use std::fmt::Write;

use tern_cluster::ClusterStatus;

/// The status as a few summary lines and two tables (members, links).
pub fn render(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let _ = writeln!(
        out,
        "Node {} (region {}): {}",
        status.node_id,
        status.region,
        if status.ready { "ready" } else { "NOT ready" }
    );
    let _ = writeln!(
        out,
        "Leader: {}   Term: {}   Commit index: {}   Applied index: {}",
        status
            .leader
            .map_or_else(|| "none".to_string(), |l| l.to_string()),
        status.term,
        opt(status.commit_index),
        opt(status.applied_index)
    );
    if status.membership_changing {
        let _ = writeln!(
            out,
            "Membership: a voter change is in progress (joint configuration)"
        );
    }
    let _ = writeln!(
        out,
        "Routes: {}   Shared routes: {}   Claims: {}   Retained: {}",
        status.route_count, status.shared_route_count, status.claim_count, status.retained_count
    );
    let mut regions: BTreeMap<&str, usize> = BTreeMap::new();
    for member in &status.members {
        *regions.entry(member.region.as_str()).or_default() += 1;
    }
    let regions: Vec<String> = regions
        .into_iter()
        .map(|(region, n)| format!("{region} ({n})"))
        .collect();
    let _ = writeln!(
        out,
        "Members: {}   Regions: {}",
        status.members.len(),
        if regions.is_empty() {
            "-".to_string()
        } else {
            regions.join(", ")
        }
    );

    out.push('\n');
    let mut members = vec![row(["NODE", "ROLE", "REGION", "ADDRESS", "MATCHED", ""])];
    for m in &status.members {
        let mut notes = Vec::new();
        if status.leader == Some(m.node_id) {
            notes.push("leader");
        }
        if m.node_id == status.node_id {
            notes.push("this node");
        }
        members.push(vec![
            m.node_id.to_string(),
            m.role.clone(),
            m.region.clone(),
            m.cluster_addr.clone(),
            opt(m.matched_index),
            notes.join(", "),
        ]);
    }
    out.push_str(&table(&members));

    out.push('\n');
    if status.links.is_empty() {
        out.push_str("No links to other nodes.\n");
        return out;
    }
    let mut links = vec![row([
        "PEER", "LINK", "PROTOCOL", "RTT", "BACKLOG", "UNACKED", "RESENT", "DROPPED", "SENT",
        "RECEIVED",
    ])];
    for l in &status.links {
        links.push(vec![
            l.node_id.to_string(),
            if l.connected { "up" } else { "DOWN" }.to_string(),
            l.protocol_version
                .map_or_else(|| "-".to_string(), |v| format!("v{v}")),
            l.rtt_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms")),
            l.backlog.to_string(),
            l.unacked.to_string(),
            l.resent_total.to_string(),
            l.overflow_dropped.to_string(),
            bytes(l.bytes_sent),
            bytes(l.bytes_received),
        ]);
    }
    out.push_str(&table(&links));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_cluster::node::{LinkView, MemberStatus};

    #[test]
    fn status_renders_members_links_and_leader() {
        let member = |id, region: &str, role: &str| MemberStatus {
            node_id: id,
            cluster_addr: format!("127.0.0.1:{}", 7000 + id),
            region: region.to_string(),
            role: role.to_string(),
            matched_index: Some(40),
        };
        let status = ClusterStatus {
            node_id: 1,
            region: "eu".into(),
            ready: true,
            leader: Some(0),
            term: 3,
            commit_index: Some(42),
            applied_index: Some(41),
            members: vec![
                member(0, "eu", "voter"),
                member(1, "eu", "voter"),
                member(2, "us", "learner"),
            ],
            membership_changing: false,
            route_count: 7,
            shared_route_count: 0,
            claim_count: 2,
            retained_count: 1,
            links: vec![LinkView {
                node_id: 0,
                connected: true,
                rtt_ms: Some(1.5),
                protocol_version: Some(1),
                bytes_sent: 2048,
                backlog: 3,
                ..Default::default()
            }],
        };
        let text = render(&status);
        for want in [
            "Node 1 (region eu): ready",
            "Leader: 0   Term: 3   Commit index: 42   Applied index: 41",
            "Routes: 7",
            "Regions: eu (2), us (1)",
            "leader",
            "this node",
            "learner",
            "127.0.0.1:7002",
            "1.5 ms",
            "v1",
            "2.0 KiB",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(!text.contains("voter change"), "{text}");
        let empty = render(&ClusterStatus::default());
        assert!(empty.contains("Leader: none"), "{empty}");
        assert!(empty.contains("No links"), "{empty}");
        let changing = render(&ClusterStatus {
            membership_changing: true,
            ..ClusterStatus::default()
        });
        assert!(
            changing.contains("a voter change is in progress"),
            "{changing}"
        );
    }
}
