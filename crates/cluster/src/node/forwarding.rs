//! Forwarding's I/O: one sender task per peer drains that peer's `Outbound` onto an
//! ordered lane; the receiver dedups per origin, delivers locally and acknowledges.
//! Frames carry a one-byte tag: a batch on lane 0, an ack on lane 1.
//!
//! Copies, because they were most of forwarding's cost: a link queues the broker's
//! `Arc<Message>` itself; a batch is encoded once, straight into the transport frame
//! ([`LaneFrame`]) that goes to quinn; the receiver decodes it with strings and payloads
//! borrowed from the received frame and builds each broker message from there.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tern_broker::{Message, MessageRun};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::core::Inner;
use crate::forward::{
    BatchFormat, ForwardAck, ForwardBatch, FrameError, Inbound, Interner, Outbound, OutboundLimits,
    SharedTarget, COMPACT_BATCHES_SINCE,
};
use crate::transport::{IncomingFrame, LaneFrame};
use crate::types::{NodeId, WireClock};

const DATA_LANE: u8 = 0;
const ACK_LANE: u8 = 1;
const TAG_BATCH: u8 = 0;
const TAG_ACK: u8 = 1;
const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 1024 * 1024;

pub(crate) struct PeerLink {
    pub outbound: Mutex<Outbound<Arc<Message>>>,
    pub wake: Notify,
}

fn tagged(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 1);
    b.put_u8(tag);
    b.put_slice(body);
    b.freeze()
}

/// The peer's link, created (with its sender task) on first use.
pub(crate) fn peer(inner: &Arc<Inner>, node: NodeId) -> Arc<PeerLink> {
    if let Some(p) = inner.peers.lock().get(&node) {
        return p.clone();
    }
    let limits = OutboundLimits {
        max_backlog_messages: inner.config.forward_backlog_messages,
        max_backlog_bytes: inner.config.forward_backlog_bytes,
    };
    let link = Arc::new(PeerLink {
        outbound: Mutex::new(Outbound::new(inner.id, inner.link_epoch, limits)),
        wake: Notify::new(),
    });
    let mut peers = inner.peers.lock();
    let link = peers.entry(node).or_insert(link).clone();
    drop(peers);
    if let Some(info) = inner.member_info(node) {
        if let Ok(addr) = info.cluster_addr.parse() {
            if inner.transport.link(node).is_none() {
                let _ = inner.transport.add_peer(node, addr);
            }
        }
    }
    tokio::spawn(send_loop(Arc::downgrade(inner), node, link.clone()));
    link
}

/// Queues a message for `node`. Its queueing time (the start of the link's ack latency
/// and lag) is when this node took the message in, which the message carries: forwarding
/// happens as it is published, so that saves a clock read per message and peer.
pub(crate) fn push(
    inner: &Arc<Inner>,
    node: NodeId,
    message: Arc<Message>,
    shared: Option<SharedTarget>,
) {
    let link = peer(inner, node);
    queue(&mut link.outbound.lock(), node, message, shared);
    link.wake.notify_one();
}

fn queue(
    outbound: &mut Outbound<Arc<Message>>,
    node: NodeId,
    message: Arc<Message>,
    shared: Option<SharedTarget>,
) {
    let queued_at = message.received_at;
    if let crate::forward::PushOutcome::Refused(reason) = outbound.push(message, shared, queued_at)
    {
        debug!(peer = node, ?reason, "forward backlog refused a message");
    }
}

/// Queues a run of messages for `node` (see [`push`]): the link is looked up, locked and
/// woken once for the run.
pub(crate) fn push_run(inner: &Arc<Inner>, node: NodeId, run: &[Arc<Message>]) {
    let link = peer(inner, node);
    {
        let mut outbound = link.outbound.lock();
        for message in run {
            queue(&mut outbound, node, message.clone(), None);
        }
    }
    link.wake.notify_one();
}

/// The lane frame of a batch: tag and MessagePack written in place, no copy after.
fn batch_frame(batch: &ForwardBatch<Arc<Message>>, format: BatchFormat) -> Option<LaneFrame> {
    // Room for the whole batch up front (the estimate is per message content plus a
    // fixed allowance, about what the named fields take), so the buffer rarely grows.
    let estimate: usize = batch
        .messages
        .iter()
        .map(|f| crate::forward::frame::approx_size(&f.message, f.shared.as_ref()) + 64)
        .sum();
    let mut frame = LaneFrame::with_capacity(estimate + 64);
    frame.body_mut().push(TAG_BATCH);
    if format == BatchFormat::Compact {
        frame.require_version(COMPACT_BATCHES_SINCE);
    }
    batch
        .encode_into(frame.body_mut(), WireClock::now(), format)
        .ok()
        .map(|()| frame)
}

async fn send_loop(weak: Weak<Inner>, node: NodeId, link: Arc<PeerLink>) {
    let mut seen_links = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if *inner.shutdown.borrow() {
            return;
        }
        // A new link (first, or after a drop) means: resend what was not acknowledged.
        let link_now = inner.transport.link_connection(node);
        let live_version = link_now.and_then(|l| l.version);
        let connected = live_version.is_some();
        let established = link_now.map(|l| l.links_established);
        if connected && established != seen_links {
            let mut out = link.outbound.lock();
            if seen_links.is_some() || out.is_link_up() {
                out.on_link_down();
            }
            out.on_link_up();
            seen_links = established;
        } else if !connected && link.outbound.lock().is_link_up() {
            link.outbound.lock().on_link_down();
        }
        if let Some(version) = live_version {
            // Should the link change to an older peer under a compact batch, sending it
            // fails (`require_version`) and the next round resends it in the link's format.
            let format = BatchFormat::for_protocol(version);
            let sender = inner.transport.send_stream(node, DATA_LANE);
            loop {
                let batch = link.outbound.lock().next_batch(BATCH_MESSAGES, BATCH_BYTES);
                let Some(batch) = batch else { break };
                let Some(frame) = batch_frame(&batch, format) else {
                    warn!(peer = node, "forward batch not encodable");
                    continue;
                };
                if sender.send_frame(frame).await.is_err() {
                    link.outbound.lock().on_link_down();
                    seen_links = None;
                    break;
                }
            }
        }
        drop(inner);
        // Woken for new messages; the tick notices link changes and acks.
        let _ = tokio::time::timeout(Duration::from_millis(100), link.wake.notified()).await;
    }
}

/// Reads every frame other nodes send on lanes.
///
/// Acks are cumulative, so only the latest per origin matters: while more frames are
/// already waiting, the acks of the batches just delivered are held back (at most
/// [`ACK_EVERY_BATCHES`] batches) and sent together once the queue is empty. Under load
/// that is one ack for many batches instead of one each; when idle, every batch is still
/// acknowledged as soon as it is delivered.
pub(crate) fn start_receiving(inner: &Arc<Inner>) {
    let Some(mut frames) = inner.transport.take_incoming() else {
        return;
    };
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut strings = Interner::default();
        // Kept across batches: who each run's topic reached last.
        let mut delivery = MessageRun::default();
        let mut acks = PendingAcks::default();
        // Per origin, the link last closed for a malformed frame, and when. What is still
        // queued from that link is dropped unread, since acknowledging the batches behind
        // the bad one would release the QoS 1/2 messages it held without their ever being
        // delivered; the origin resends everything unacknowledged on its next link (link
        // ids are never reused). A frame malformed again soon after is most likely the
        // same one resent (a bug, not damage): closing again would only loop, and the
        // link carries Raft too. It is then skipped, its messages lost and counted, and
        // the link stays up.
        let mut closed: HashMap<NodeId, (u64, Instant)> = HashMap::new();
        while let Some(frame) = frames.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            let last_closed = closed.get(&frame.from).copied();
            let stale = last_closed.is_some_and(|(link, _)| link == frame.link);
            if !stale {
                if let Err(e) =
                    receive_frame(&inner, &frame, &mut strings, &mut delivery, &mut acks)
                {
                    inner.stats.malformed_forward_frame();
                    let now = Instant::now();
                    if last_closed.is_some_and(|(_, at)| now.duration_since(at) < RECLOSE_AFTER) {
                        warn!(
                            peer = frame.from,
                            error = %e,
                            "malformed forwarding frame again: skipped, its messages are lost"
                        );
                    } else {
                        warn!(
                            peer = frame.from,
                            error = %e,
                            "malformed forwarding frame: closing the link for a resend"
                        );
                        closed.insert(frame.from, (frame.link, now));
                        inner.transport.close_link(
                            frame.from,
                            frame.link,
                            "malformed forwarding frame",
                        );
                    }
                }
            }
            if acks.batches > 0 && (frames.is_empty() || acks.batches >= ACK_EVERY_BATCHES) {
                acks.send_all(&inner).await;
            }
        }
    });
}

/// Acts on one lane frame: a batch is delivered and its ack held, an ack releases what
/// it covers. Fails only when the frame cannot be decoded.
fn receive_frame(
    inner: &Arc<Inner>,
    frame: &IncomingFrame,
    strings: &mut Interner,
    delivery: &mut MessageRun,
    acks: &mut PendingAcks,
) -> Result<(), FrameError> {
    match frame.frame.split_first() {
        None => {}
        Some((&TAG_BATCH, _)) => {
            let body = frame.frame.slice(1..);
            if let Some(ack) = receive_batch(inner, frame.from, body, strings, delivery)? {
                acks.hold(frame.from, ack);
            }
        }
        Some((&TAG_ACK, body)) => {
            let ack = ForwardAck::decode(body)?;
            if let Some(p) = inner.peers.lock().get(&frame.from) {
                p.outbound.lock().on_ack(ack);
            }
        }
        Some((&other, _)) => {
            warn!(peer = frame.from, tag = other, "unknown frame on a lane");
        }
    }
    Ok(())
}

/// After a link was closed for a malformed frame, how long another one from the same
/// origin is skipped rather than closing the link again.
const RECLOSE_AFTER: Duration = Duration::from_secs(60);

/// Most delivered batches whose acks wait for the incoming queue to empty.
const ACK_EVERY_BATCHES: usize = 16;

/// The latest ack per origin, not sent yet.
#[derive(Default)]
struct PendingAcks {
    held: HashMap<NodeId, ForwardAck>,
    batches: usize,
}

impl PendingAcks {
    /// Keeps `ack` as the latest from `from`'s batches (acks are cumulative).
    fn hold(&mut self, from: NodeId, ack: ForwardAck) {
        self.held.insert(from, ack);
        self.batches += 1;
    }

    async fn send_all(&mut self, inner: &Arc<Inner>) {
        self.batches = 0;
        for (from, ack) in self.held.drain() {
            let Ok(body) = ack.encode() else { continue };
            let sender = inner.transport.send_stream(from, ACK_LANE);
            if sender.send(tagged(TAG_ACK, &body)).await.is_err() {
                debug!(
                    peer = from,
                    "ack not sent; the peer resends after reconnecting"
                );
            }
        }
    }
}

/// Decodes, dedups and delivers one batch; returns the ack it earned, if any.
fn receive_batch(
    inner: &Arc<Inner>,
    from: NodeId,
    body: Bytes,
    strings: &mut Interner,
    delivery: &mut MessageRun,
) -> Result<Option<ForwardAck>, FrameError> {
    let batch = ForwardBatch::decode_messages(&body, WireClock::now(), strings)?;
    let (deliver, ack) = {
        let mut inbound = inner.inbound.lock();
        let origin = inbound.entry(from).or_insert_with(|| Inbound::new(from));
        origin.accept(batch)
    };
    if let Some(broker) = inner.broker() {
        for forwarded in deliver {
            let message = forwarded.message;
            match forwarded.shared {
                Some(target) => {
                    delivery.deliver_waiting(&broker);
                    broker.deliver_shared(&message, &target.group, &target.filter);
                }
                None => delivery.deliver_forwarded(&broker, message),
            }
        }
        delivery.deliver_waiting(&broker);
    }
    Ok(ack)
}
