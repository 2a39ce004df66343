//! The cluster API: `GET /api/v1/cluster` (this node's view of the cluster, as JSON),
//! `POST /api/v1/cluster/leave` (leave gracefully) and `POST /api/v1/cluster/remove/{id}`
//! (remove another node). Errors are JSON too: `{"error": "..."}`. None takes a body.

use std::sync::Arc;
use std::time::Duration;

use tern_cluster::{ClusterError, ClusterNode, NodeId};

use super::Response;

const PREFIX: &str = "/api/v1/cluster";
const STATUS: &str = "/api/v1/cluster";
const LEAVE: &str = "/api/v1/cluster/leave";
const REMOVE: &str = "/api/v1/cluster/remove/";
/// Longest a leave or remove request waits for the cluster before answering 504 (the
/// change may still complete).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(110);

/// Whether `path` is the cluster API's.
pub(super) fn handles(path: &str) -> bool {
    path == PREFIX || path.starts_with("/api/v1/cluster/")
}

enum Route {
    Status,
    Leave,
    Remove(NodeId),
}

/// The route and method check; `Err` is the answer already.
fn route(method: &str, path: &str) -> Result<(Route, bool), Response> {
    let (route, allow) = if path == STATUS {
        (Route::Status, "GET, HEAD")
    } else if path == LEAVE {
        (Route::Leave, "POST")
    } else if let Some(id) = path.strip_prefix(REMOVE) {
        let Ok(id) = id.parse::<NodeId>() else {
            return Err(Response::json_error(
                400,
                format!("bad node id {id:?}: expected a number such as 2"),
            ));
        };
        (Route::Remove(id), "POST")
    } else {
        return Err(Response::json_error(404, format!("no such API: {path}")));
    };
    let head_only = method == "HEAD";
    let allowed = allow.split(", ").any(|m| m == method);
    if !allowed {
        return Err(Response {
            allow: Some(allow),
            ..Response::json_error(405, format!("use {allow} on {path}"))
        });
    }
    Ok((route, head_only))
}

pub(super) async fn respond(
    method: &str,
    path: &str,
    cluster: Option<&Arc<ClusterNode>>,
) -> Response {
    let (route, head_only) = match route(method, path) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(cluster) = cluster else {
        return Response::json_error(
            404,
            "clustering is not enabled on this node (cluster.enabled = false)",
        );
    };
    let mut response = match route {
        Route::Status => status(cluster).await,
        Route::Leave => leave(cluster).await,
        Route::Remove(id) => remove(cluster, id).await,
    };
    response.head_only = head_only;
    response
}

async fn status(cluster: &ClusterNode) -> Response {
    let status = cluster.status().await;
    match serde_json::to_string(&status) {
        Ok(body) => Response::json(200, body),
        Err(e) => Response::json_error(500, format!("cannot render the status: {e}")),
    }
}

async fn leave(cluster: &ClusterNode) -> Response {
    let id = cluster.node_id();
    tracing::info!(node = id, "leaving the cluster (requested over HTTP)");
    match tokio::time::timeout(CHANGE_TIMEOUT, cluster.leave()).await {
        Ok(Ok(())) => done(format!("node {id} left the cluster"), id),
        Ok(Err(e)) => failed(&e),
        Err(_) => timed_out("leaving"),
    }
}

async fn remove(cluster: &ClusterNode, id: NodeId) -> Response {
    if id == cluster.node_id() {
        return Response::json_error(
            400,
            format!("node {id} is this node; use `tern cluster leave` (POST {LEAVE}) instead"),
        );
    }
    tracing::info!(
        node = id,
        "removing a node from the cluster (requested over HTTP)"
    );
    match tokio::time::timeout(CHANGE_TIMEOUT, cluster.remove_node(id)).await {
        Ok(Ok(())) => done(format!("node {id} was removed from the cluster"), id),
        Ok(Err(e)) => failed(&e),
        Err(_) => timed_out("removing the node"),
    }
}

fn done(message: String, node_id: NodeId) -> Response {
    let body = serde_json::json!({ "message": message, "node_id": node_id }).to_string();
    Response::json(200, body)
}

fn failed(error: &ClusterError) -> Response {
    let status = match error {
        ClusterError::NoLeader => 503,
        ClusterError::Config(_) => 400,
        _ => 500,
    };
    Response::json_error(status, error.to_string())
}

fn timed_out(what: &str) -> Response {
    Response::json_error(
        504,
        format!(
            "{what} did not finish within {} s; it may still complete (check `tern cluster status`)",
            CHANGE_TIMEOUT.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn off(method: &str, path: &str) -> Response {
        respond(method, path, None).await
    }

    fn error_of(response: &Response) -> String {
        assert_eq!(response.content_type, super::super::JSON);
        let json: serde_json::Value = serde_json::from_str(&response.body).expect("JSON body");
        json["error"].as_str().expect("error field").to_string()
    }

    #[tokio::test]
    async fn without_clustering_every_route_is_a_json_404() {
        for (method, path) in [
            ("GET", "/api/v1/cluster"),
            ("HEAD", "/api/v1/cluster"),
            ("POST", "/api/v1/cluster/leave"),
            ("POST", "/api/v1/cluster/remove/3"),
        ] {
            let response = off(method, path).await;
            assert_eq!(response.status, 404, "{method} {path}");
            assert!(
                error_of(&response).contains("not enabled"),
                "{method} {path}: {}",
                response.body
            );
        }
    }

    #[tokio::test]
    async fn bad_requests_are_json_errors() {
        let bad_id = off("POST", "/api/v1/cluster/remove/abc").await;
        assert_eq!(bad_id.status, 400);
        assert!(error_of(&bad_id).contains("\"abc\""));
        let empty_id = off("POST", "/api/v1/cluster/remove/").await;
        assert_eq!(empty_id.status, 400);
        let negative = off("POST", "/api/v1/cluster/remove/-1").await;
        assert_eq!(negative.status, 400);

        let get_leave = off("GET", "/api/v1/cluster/leave").await;
        assert_eq!((get_leave.status, get_leave.allow), (405, Some("POST")));
        error_of(&get_leave);
        let post_status = off("POST", "/api/v1/cluster").await;
        assert_eq!(
            (post_status.status, post_status.allow),
            (405, Some("GET, HEAD"))
        );
        let unknown = off("GET", "/api/v1/cluster/nope").await;
        assert_eq!(unknown.status, 404);
        assert!(error_of(&unknown).contains("no such API"));
    }

    #[test]
    fn only_cluster_paths_are_handled() {
        assert!(handles("/api/v1/cluster"));
        assert!(handles("/api/v1/cluster/leave"));
        assert!(!handles("/api/v1/clusters"));
        assert!(!handles("/readyz"));
    }
}
