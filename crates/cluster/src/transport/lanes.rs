//! Lanes: long-lived, ordered, unidirectional streams of frames to a peer, for published
//! messages and their acks.
//!
//! QUIC keeps order within a stream only, and MQTT needs order per topic, so the caller
//! picks a small fixed set of lanes per peer (e.g. by hash of topic) and everything on
//! one lane arrives in the order it was sent. Lanes of different peers and different lane
//! numbers never wait for each other. A lane's stream is opened lazily on the current
//! link and reopened on the next link after a reconnect; frames written to a link that
//! then broke are lost, and the sender learns of it only by missing acks. That is what
//! the forwarder's acks and resends are for: this layer never retransmits across links.
//!
//! Acks travel the same way in the other direction: the receiver sends them with its own
//! [`LaneSender`] to the origin node.

use std::sync::Arc;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tracing::debug;

use super::endpoint::{Inner, Transport};
use super::envelope::{Envelope, FrameKind, LaneFrame, LaneOpen};
use super::peers::Peer;
use super::streamio::{read_frame, write_encoded, write_frame};
use super::{TransportError, CLOSE_PROTOCOL, LANE_PRIORITY};
use crate::types::NodeId;

/// One frame received on a lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingFrame {
    pub from: NodeId,
    /// Which link of that peer it came on (see [`Transport::close_link`]).
    pub link: u64,
    pub lane: u8,
    pub frame: Bytes,
}

/// The sending end of a lane, shared by every sender of that (peer, lane).
#[derive(Default)]
pub(crate) struct LaneSlot {
    /// The link the stream belongs to; a different current link means reopen.
    link_id: Option<u64>,
    stream: Option<SendStream>,
}

/// Sends frames on one lane to one peer. Cheap to clone; clones share the lane's stream
/// (and its order).
#[derive(Clone)]
pub struct LaneSender {
    inner: Arc<Inner>,
    peer: NodeId,
    lane: u8,
}

impl std::fmt::Debug for LaneSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSender")
            .field("peer", &self.peer)
            .field("lane", &self.lane)
            .finish()
    }
}

impl Transport {
    /// The sender of `lane` to `peer`. Nothing is opened until the first frame.
    pub fn send_stream(&self, peer: NodeId, lane: u8) -> LaneSender {
        LaneSender {
            inner: self.inner.clone(),
            peer,
            lane,
        }
    }
}

impl LaneSender {
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    pub fn lane(&self) -> u8 {
        self.lane
    }

    /// Queues one frame on the lane. Returns once quinn has buffered it (waiting while
    /// the peer's flow-control window is full: that is the backpressure). Fails at once
    /// with `Unreachable` when there is no link, without queueing anything.
    pub async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        let mut built = LaneFrame::with_capacity(frame.len());
        built.body_mut().extend_from_slice(&frame);
        self.send_frame(built).await
    }

    /// [`send`](Self::send) of a frame whose body the caller encoded in place.
    pub async fn send_frame(&self, frame: LaneFrame) -> Result<(), TransportError> {
        let peer = self.peer;
        if self.inner.is_shut_down() {
            return Err(TransportError::Closed);
        }
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer,
            reason: reason.into(),
        };
        let p = self
            .inner
            .peers
            .get(peer)
            .ok_or_else(|| unreachable("unknown peer"))?;
        let link = p.live_link().ok_or_else(|| unreachable("no link"))?;
        if link.version < frame.needs_version() {
            // The link changed under the caller since it chose the encoding; written,
            // the frame would be unreadable on the other side.
            return Err(TransportError::ConnectionLost {
                peer,
                reason: format!(
                    "the link speaks protocol version {}, the frame needs {}",
                    link.version,
                    frame.needs_version()
                ),
            });
        }
        let slot = p.lanes.lock().entry(self.lane).or_default().clone();
        let mut slot = slot.lock().await;
        let max = self.inner.settings.max_frame_len;
        if slot.link_id != Some(link.id) || slot.stream.is_none() {
            slot.stream = None;
            let mut stream =
                link.conn
                    .open_uni()
                    .await
                    .map_err(|e| TransportError::ConnectionLost {
                        peer,
                        reason: e.to_string(),
                    })?;
            let _ = stream.set_priority(LANE_PRIORITY);
            let open = Envelope::of(FrameKind::LaneOpen, &LaneOpen { lane: self.lane })?;
            write_frame(&mut stream, &open, max, peer, Some(&p.counters)).await?;
            slot.stream = Some(stream);
            slot.link_id = Some(link.id);
        }
        let frame = frame.finish(max)?;
        let Some(stream) = slot.stream.as_mut() else {
            return Err(unreachable("lane stream missing"));
        };
        let result = write_encoded(stream, frame, peer, Some(&p.counters)).await;
        if matches!(result, Err(TransportError::ConnectionLost { .. })) {
            // The next frame reopens the lane on whatever link is current by then.
            slot.stream = None;
            slot.link_id = None;
        }
        result
    }
}

/// Reads one incoming lane stream and hands its frames to the consumer, in order.
pub(crate) async fn receive(inner: Arc<Inner>, peer: Arc<Peer>, link: u64, mut recv: RecvStream) {
    let max = inner.settings.max_frame_len;
    let counters = Some(&peer.counters);
    let lane = match read_frame(&mut recv, max, peer.id, counters).await {
        Ok(Some(env)) => match env.body_as::<LaneOpen>(FrameKind::LaneOpen) {
            Ok(open) => open.lane,
            Err(e) => {
                debug!(node = inner.local, peer = peer.id, "bad lane stream: {e}");
                let _ = recv.stop(CLOSE_PROTOCOL.into());
                return;
            }
        },
        Ok(None) => return,
        Err(e) => {
            debug!(
                node = inner.local,
                peer = peer.id,
                "lane stream failed: {e}"
            );
            return;
        }
    };
    loop {
        match read_frame(&mut recv, max, peer.id, counters).await {
            Ok(Some(env)) if env.kind == FrameKind::LaneData as u8 => {
                let frame = IncomingFrame {
                    from: peer.id,
                    link,
                    lane,
                    frame: env.body,
                };
                if inner.incoming_tx.send(frame).await.is_err() {
                    return;
                }
            }
            // A kind from a newer peer: skip it rather than break the lane.
            Ok(Some(env)) => {
                debug!(
                    node = inner.local,
                    peer = peer.id,
                    kind = env.kind,
                    "skipping lane frame"
                );
            }
            Ok(None) => return,
            Err(e) => {
                debug!(
                    node = inner.local,
                    peer = peer.id,
                    lane,
                    "lane stream ended: {e}"
                );
                let _ = recv.stop(CLOSE_PROTOCOL.into());
                return;
            }
        }
    }
}
