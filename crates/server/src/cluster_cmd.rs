//! `tern cluster status|leave|remove` (through a node's HTTP API) and `tern cert`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tern_cluster::{ClusterStatus, NodeId};

use crate::admin_client::{self, Answer};
use crate::status_view;

/// Where `tern cluster ...` finds the node's HTTP API unless told.
pub const DEFAULT_HTTP: &str = "127.0.0.1:9090";
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// Leaving hands clients over and waits for Raft; removing waits for Raft.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

const RUNTIME_ERROR: u8 = 1;

/// What to ask the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Status { json: bool },
    Leave,
    Remove { id: NodeId },
}

/// Runs one `tern cluster` command against the node at `http` and prints the outcome.
pub fn run(http: &str, action: Action) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME_ERROR);
        }
    };
    let (method, path, timeout) = match &action {
        Action::Status { .. } => ("GET", "/api/v1/cluster".to_string(), STATUS_TIMEOUT),
        Action::Leave => ("POST", "/api/v1/cluster/leave".to_string(), CHANGE_TIMEOUT),
        Action::Remove { id } => (
            "POST",
            format!("/api/v1/cluster/remove/{id}"),
            CHANGE_TIMEOUT,
        ),
    };
    let answer = runtime.block_on(admin_client::request(http, method, &path, timeout));
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => match report(&action, &answer) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tern cluster: {e}");
                ExitCode::from(RUNTIME_ERROR)
            }
        },
        Ok(answer) => {
            eprintln!(
                "tern cluster: the node at {http} answered {}: {}",
                answer.status,
                answer.message()
            );
            ExitCode::from(RUNTIME_ERROR)
        }
        Err(e) => {
            eprintln!("tern cluster: {e}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

/// What to print for a successful answer.
fn report(action: &Action, answer: &Answer) -> Result<String, String> {
    match action {
        Action::Status { json } => {
            let status: ClusterStatus = serde_json::from_str(&answer.body)
                .map_err(|e| format!("the node's status is not what this tern expects: {e}"))?;
            if *json {
                let text = serde_json::to_string_pretty(&status)
                    .map_err(|e| format!("cannot render the status as JSON: {e}"))?;
                Ok(format!("{text}\n"))
            } else {
                Ok(status_view::render(&status))
            }
        }
        Action::Leave | Action::Remove { .. } => Ok(format!("{}\n", answer.message())),
    }
}

/// `tern cert`: the cluster CA and one certificate per node, in `dir`.
pub fn cert(dir: &Path, nodes: &[NodeId], force: bool) -> ExitCode {
    let mut ids = nodes.to_vec();
    ids.sort_unstable();
    ids.dedup();
    match tern_cluster::transport::tls::write_local_cluster_certs(dir, &ids, force) {
        Ok(files) => {
            print!("{}", cert_report(dir, &ids, &files));
            ExitCode::SUCCESS
        }
        Err(tern_cluster::transport::tls::TlsError::Exists { path }) => {
            eprintln!(
                "tern cert: {} already exists; nothing was written (pass --force to replace the certificates)",
                path.display()
            );
            ExitCode::from(RUNTIME_ERROR)
        }
        Err(e) => {
            eprintln!("tern cert: {e}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

/// The files written and the settings that point each node at its own.
fn cert_report(dir: &Path, ids: &[NodeId], files: &[PathBuf]) -> String {
    // Relative paths in cluster.tls.* are read under the node's data directory, so show
    // absolute ones.
    let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out = String::from("Wrote:\n");
    for file in files {
        out.push_str(&format!("  {}\n", file.display()));
    }
    out.push_str(
        "\nca.key signs node certificates: keep it off the nodes (only `tern cert` needs it).\n\
         Point each node at the CA and its own certificate and key:\n",
    );
    let ca = base.join("ca.pem");
    for id in ids {
        let cert = base.join(format!("node-{id}.pem"));
        let key = base.join(format!("node-{id}.key"));
        out.push_str(&format!(
            "\n  node {id}:\n    cluster.tls.ca_cert = {:?}\n    cluster.tls.node_cert = {:?}\n    cluster.tls.node_key = {:?}\n    e.g. tern serve --cluster --node-id {id} --set cluster.tls.ca_cert={} --set cluster.tls.node_cert={} --set cluster.tls.node_key={}\n",
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            ca.display(),
            cert.display(),
            key.display(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_need_a_status() {
        let bad = Answer {
            status: 200,
            body: "{}".into(),
        };
        assert!(report(&Action::Status { json: false }, &bad).is_err());
        let good = Answer {
            status: 200,
            body: serde_json::to_string(&ClusterStatus::default()).unwrap(),
        };
        assert!(report(&Action::Status { json: true }, &good)
            .unwrap()
            .contains("\"members\""));
        let left = Answer {
            status: 200,
            body: r#"{"error":"x","message":"left"}"#.into(),
        };
        assert!(report(&Action::Leave, &left).is_ok());
    }

    #[test]
    fn cert_report_names_every_setting() {
        let text = cert_report(
            Path::new("/tmp/c"),
            &[0, 2],
            &[PathBuf::from("/tmp/c/ca.pem")],
        );
        for want in [
            "/tmp/c/ca.pem",
            "cluster.tls.node_cert = \"/tmp/c/node-2.pem\"",
            "cluster.tls.node_key = \"/tmp/c/node-0.key\"",
            "--node-id 2",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
