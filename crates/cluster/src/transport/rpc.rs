//! Request/response over bidirectional streams, for Raft: one stream per request, so a
//! slow snapshot never holds up a vote, and each stream gets [`RPC_PRIORITY`] so Raft
//! goes before published messages on a congested link.
//!
//! The `kind` byte picks the handler on the receiving node; the bodies are opaque here
//! (the Raft network serialises its own requests).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use quinn::{RecvStream, SendStream};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::endpoint::{Inner, Transport};
use super::envelope::{Envelope, FrameKind, Request, Response};
use super::peers::Peer;
use super::streamio::{read_frame, write_frame};
use super::{TransportError, CLOSE_PROTOCOL, RPC_PRIORITY};
use crate::types::NodeId;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = Arc<dyn Fn(NodeId, Bytes) -> BoxFuture<Result<Bytes, String>> + Send + Sync>;

/// Registered request handlers, by kind.
#[derive(Default)]
pub(crate) struct Handlers(RwLock<HashMap<u8, Handler>>);

impl Transport {
    /// Answers requests of `kind` with `handler(from, body)`. An `Err` reaches the caller
    /// as [`TransportError::Remote`]. Replaces an earlier handler of the same kind.
    /// Requests of a kind without a handler are answered with an error, not dropped.
    pub fn set_request_handler<F, Fut>(&self, kind: u8, handler: F)
    where
        F: Fn(NodeId, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |from, body| Box::pin(handler(from, body)));
        self.inner.handlers.0.write().insert(kind, handler);
    }

    pub fn remove_request_handler(&self, kind: u8) {
        self.inner.handlers.0.write().remove(&kind);
    }

    /// Sends a request of `kind` to `peer` and waits for its answer, all within
    /// `timeout`. Errors: `Unreachable` when there is no link (unknown peer, last dial
    /// failed, or none came up in time: never waits on a peer known to be down),
    /// `Timeout` when the link is up but the answer is late, `ConnectionLost` when the
    /// link broke meanwhile, `Remote` when the peer's handler failed.
    pub async fn request(
        &self,
        peer: NodeId,
        kind: u8,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let deadline = Instant::now() + timeout;
        let (p, link) = self.inner.link_for(peer, deadline).await?;
        let max = self.inner.settings.max_frame_len;
        let exchange = async {
            let (mut send, mut recv) =
                link.conn
                    .open_bi()
                    .await
                    .map_err(|e| TransportError::ConnectionLost {
                        peer,
                        reason: e.to_string(),
                    })?;
            let _ = send.set_priority(RPC_PRIORITY);
            let request = Envelope::of(FrameKind::Request, &Request { kind, body })?;
            write_frame(&mut send, &request, max, peer, Some(&p.counters)).await?;
            let _ = send.finish();
            let answer = read_frame(&mut recv, max, peer, Some(&p.counters))
                .await?
                .ok_or_else(|| TransportError::ConnectionLost {
                    peer,
                    reason: "stream ended without an answer".into(),
                })?;
            match answer.body_as::<Response>(FrameKind::Response)? {
                Response::Ok(body) => Ok(body),
                Response::Err(message) => Err(TransportError::Remote { peer, message }),
            }
        };
        timeout_at(deadline, exchange)
            .await
            .map_err(|_| TransportError::Timeout { peer })?
    }
}

/// Serves one incoming request stream. The request must arrive within the handshake
/// timeout; the handler itself is not bounded here (Raft bounds its own work).
pub(crate) async fn serve(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = inner.settings.max_frame_len;
    let deadline = Instant::now() + inner.settings.handshake_timeout();
    let request = match timeout_at(
        deadline,
        read_frame(&mut recv, max, peer.id, Some(&peer.counters)),
    )
    .await
    {
        Ok(Ok(Some(env))) => env.body_as::<Request>(FrameKind::Request),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(
                node = inner.local,
                peer = peer.id,
                "bad request stream: {e}"
            );
            let _ = recv.stop(CLOSE_PROTOCOL.into());
            return;
        }
        Err(_) => {
            debug!(
                node = inner.local,
                peer = peer.id,
                "request not received in time"
            );
            let _ = recv.stop(CLOSE_PROTOCOL.into());
            return;
        }
    };
    let _ = send.set_priority(RPC_PRIORITY);
    let response = match request {
        Ok(Request { kind, body }) => {
            let handler = inner.handlers.0.read().get(&kind).cloned();
            match handler {
                Some(handler) => match handler(peer.id, body).await {
                    Ok(b) => Response::Ok(b),
                    Err(e) => Response::Err(e),
                },
                None => Response::Err(format!("no handler for request kind {kind}")),
            }
        }
        Err(e) => Response::Err(format!("malformed request: {e}")),
    };
    let mut written = answer(&mut send, &response, max, &peer).await;
    if let Err(TransportError::Frame(e)) = &written {
        // Too large or unencodable: tell the caller rather than let it time out.
        written = answer(&mut send, &Response::Err(e.to_string()), max, &peer).await;
    }
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => debug!(
            node = inner.local,
            peer = peer.id,
            "cannot answer request: {e}"
        ),
    }
}

async fn answer(
    send: &mut SendStream,
    response: &Response,
    max: u32,
    peer: &Peer,
) -> Result<(), TransportError> {
    let env = Envelope::of(FrameKind::Response, response)?;
    write_frame(send, &env, max, peer.id, Some(&peer.counters)).await
}
