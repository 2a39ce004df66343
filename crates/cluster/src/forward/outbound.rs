//! The sending side of one link (this node → one peer): sequence numbers, the bounded
//! backlog, batching, and resending unacknowledged QoS 1/2 messages after a reconnect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tern_broker::stats::{LatencyHistogram, LatencySnapshot};

use super::frame::{
    approx_size, ForwardAck, ForwardBatch, ForwardMessage, Forwarded, SharedTarget,
};
use crate::types::{NodeId, WireMessage};

/// Times from queueing to acknowledgement of QoS 1/2 messages (for the metrics).
#[derive(Default)]
struct AckLatency(LatencyHistogram);

impl std::fmt::Debug for AckLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AckLatency")
            .field(&self.0.snapshot())
            .finish()
    }
}

/// How much one link may hold: messages waiting to be sent plus QoS 1/2 messages waiting
/// for their ack. A peer that is down or slow must not grow a node's memory without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    pub max_backlog_messages: usize,
    /// Measured with a cheap estimate of each message's encoded size.
    pub max_backlog_bytes: usize,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            max_backlog_messages: 100_000,
            max_backlog_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a message was dropped by a full backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// An older QoS 0 message made room for a newer one.
    EvictedQos0,
    /// The backlog was full of QoS 1/2 messages: the new message was refused.
    BacklogFull,
    /// The message alone is larger than the backlog's byte limit.
    TooLarge,
}

/// Messages dropped by the backlog limits, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub evicted_qos0: u64,
    pub backlog_full: u64,
    pub too_large: u64,
}

impl DropCounts {
    pub fn total(&self) -> u64 {
        self.evicted_qos0 + self.backlog_full + self.too_large
    }

    fn count(&mut self, reason: DropReason, n: u64) {
        match reason {
            DropReason::EvictedQos0 => self.evicted_qos0 += n,
            DropReason::BacklogFull => self.backlog_full += n,
            DropReason::TooLarge => self.too_large += n,
        }
    }
}

/// What [`Outbound::push`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued under `seq`, after evicting `evicted` older QoS 0 messages to make room.
    Queued { seq: u64, evicted: usize },
    /// Not queued (counted in [`Outbound::drop_counts`]).
    Refused(DropReason),
}

/// A place in `pending`: a message, or the gap an evicted QoS 0 message left (removing it
/// from the middle of the queue would cost a shift of everything behind it).
#[derive(Debug)]
struct Slot<M> {
    seq: u64,
    entry: Option<Entry<M>>,
}

#[derive(Debug)]
struct Entry<M> {
    fwd: Forwarded<M>,
    size: usize,
    queued_at: Instant,
    /// Handed out on some link before: handing it out again is a resend.
    sent: bool,
}

/// The sending state of one link. Starts with the link down: call
/// [`on_link_up`](Self::on_link_up) once the transport has a connection.
///
/// Generic over the message it holds: a node queues the broker's `Arc<Message>` (so
/// queueing a copy for a peer is a reference count, not a conversion); the tests use
/// [`WireMessage`].
#[derive(Debug)]
pub struct Outbound<M = WireMessage> {
    origin: NodeId,
    link_epoch: u64,
    limits: OutboundLimits,
    link_up: bool,
    next_seq: u64,
    /// Highest sequence ever handed out; everything not yet handed out is above it.
    highest_sent: u64,
    /// Highest sequence the peer has processed (cumulative ack), in this epoch.
    acked_up_to: u64,
    /// To be handed out on the current link, by sequence: resends first (they have the
    /// lowest sequences), then messages never sent. Queues rather than ordered maps: a
    /// link only ever appends, takes from the front and acknowledges a prefix, and the
    /// maps' node allocations were a tenth of a node's time under QoS 1 forwarding.
    /// The front is never a gap.
    pending: VecDeque<Slot<M>>,
    /// Gaps in `pending`.
    pending_gaps: usize,
    /// Sequences of the QoS 0 messages in `pending`, oldest first: eviction candidates.
    qos0_pending: VecDeque<u64>,
    qos0_bytes: usize,
    /// QoS 1/2 messages handed out on the current link and not yet acknowledged, by
    /// sequence; all below every sequence in `pending`.
    unacked: VecDeque<Entry<M>>,
    /// Estimated bytes of `pending` and `unacked` together.
    bytes: usize,
    resent_total: u64,
    drops: DropCounts,
    ignored_acks: u64,
    ack_latency: AckLatency,
}

impl<M: ForwardMessage> Outbound<M> {
    /// A link from `origin` whose sequence space is `link_epoch`: a value that grows with
    /// every incarnation of this sender (see the module docs).
    pub fn new(origin: NodeId, link_epoch: u64, limits: OutboundLimits) -> Self {
        Self {
            origin,
            link_epoch,
            limits,
            link_up: false,
            next_seq: 1,
            highest_sent: 0,
            acked_up_to: 0,
            pending: VecDeque::new(),
            pending_gaps: 0,
            qos0_pending: VecDeque::new(),
            qos0_bytes: 0,
            unacked: VecDeque::new(),
            bytes: 0,
            resent_total: 0,
            drops: DropCounts::default(),
            ignored_acks: 0,
            ack_latency: AckLatency::default(),
        }
    }

    /// Queues a message for the peer and gives it the link's next sequence number. When
    /// the backlog is full, the oldest QoS 0 messages make room; if they cannot, the new
    /// message is refused. Either way the drop is counted.
    pub fn push(&mut self, message: M, shared: Option<SharedTarget>, now: Instant) -> PushOutcome {
        let size = approx_size(&message, shared.as_ref());
        if size > self.limits.max_backlog_bytes {
            return self.refuse(DropReason::TooLarge);
        }
        let need_messages =
            (self.backlog_len() + 1).saturating_sub(self.limits.max_backlog_messages);
        let need_bytes = (self.bytes + size).saturating_sub(self.limits.max_backlog_bytes);
        if self.qos0_pending.len() < need_messages || self.qos0_bytes < need_bytes {
            // Evicting every QoS 0 message would not make room: keep them.
            return self.refuse(DropReason::BacklogFull);
        }
        let mut evicted = 0;
        while self.backlog_len() + 1 > self.limits.max_backlog_messages
            || self.bytes + size > self.limits.max_backlog_bytes
        {
            let Some(seq) = self.qos0_pending.pop_front() else {
                break; // unreachable after the check above
            };
            if let Some(entry) = self.evict(seq) {
                self.forget(&entry);
                evicted += 1;
            }
        }
        self.drops.count(DropReason::EvictedQos0, evicted as u64);

        let seq = self.next_seq;
        self.next_seq += 1;
        if message.qos() == 0 {
            self.qos0_pending.push_back(seq);
            self.qos0_bytes += size;
        }
        self.bytes += size;
        let fwd = Forwarded {
            seq,
            message,
            shared,
        };
        let entry = Entry {
            fwd,
            size,
            queued_at: now,
            sent: false,
        };
        self.pending.push_back(Slot {
            seq,
            entry: Some(entry),
        });
        PushOutcome::Queued { seq, evicted }
    }

    /// Takes the pending message `seq` out, leaving a gap.
    fn evict(&mut self, seq: u64) -> Option<Entry<M>> {
        let at = self.pending.binary_search_by_key(&seq, |s| s.seq).ok()?;
        let entry = self.pending.get_mut(at)?.entry.take()?;
        self.pending_gaps += 1;
        self.trim_front();
        // A peer that stays down with a full backlog evicts on every push: squeeze the
        // gaps out once they outnumber the messages, so they cost O(1) per eviction.
        if self.pending_gaps > 32 && self.pending_gaps * 2 > self.pending.len() {
            self.pending.retain(|s| s.entry.is_some());
            self.pending_gaps = 0;
        }
        Some(entry)
    }

    /// Drops gaps from the front of `pending`, so that its front is a message.
    fn trim_front(&mut self) {
        while self.pending.front().is_some_and(|s| s.entry.is_none()) {
            self.pending.pop_front();
            self.pending_gaps -= 1;
        }
    }

    fn refuse(&mut self, reason: DropReason) -> PushOutcome {
        self.drops.count(reason, 1);
        PushOutcome::Refused(reason)
    }

    /// Removes an entry's share of the byte and QoS 0 accounting.
    fn forget(&mut self, entry: &Entry<M>) {
        self.bytes -= entry.size;
        if entry.fwd.message.qos() == 0 {
            self.qos0_bytes -= entry.size;
        }
    }

    /// The next batch for the current link, in sequence order: at most `max_messages`
    /// messages and about `max_bytes` (always at least one message, so a large one cannot
    /// block the link). `None` while the link is down or nothing is waiting. QoS 0 messages
    /// are forgotten once handed out; QoS 1/2 ones wait for their ack.
    pub fn next_batch(&mut self, max_messages: usize, max_bytes: usize) -> Option<ForwardBatch<M>> {
        if !self.link_up || self.pending.is_empty() || max_messages == 0 {
            return None;
        }
        let mut messages = Vec::new();
        let mut batch_bytes = 0;
        while messages.len() < max_messages {
            let Some(front) = self.pending.front() else {
                break;
            };
            let Some(size) = front.entry.as_ref().map(|e| e.size) else {
                self.trim_front(); // not reached: the front is never a gap
                continue;
            };
            if !messages.is_empty() && batch_bytes + size > max_bytes {
                break;
            }
            batch_bytes += size;
            let Some(mut entry) = self.pending.pop_front().and_then(|s| s.entry) else {
                break;
            };
            self.trim_front();
            if entry.sent {
                self.resent_total += 1;
            }
            entry.sent = true;
            let seq = entry.fwd.seq;
            self.highest_sent = self.highest_sent.max(seq);
            if entry.fwd.message.qos() == 0 {
                let front = self.qos0_pending.pop_front();
                debug_assert_eq!(front, Some(seq), "QoS 0 index follows the backlog");
                self.forget(&entry);
                messages.push(entry.fwd);
            } else {
                messages.push(entry.fwd.clone());
                self.unacked.push_back(entry);
            }
        }
        Some(ForwardBatch {
            origin: self.origin,
            link_epoch: self.link_epoch,
            messages,
        })
    }

    /// The peer has processed every sequence `<= ack.up_to`: release those QoS 1/2
    /// messages, whether still awaiting the ack or already queued for a resend (an ack
    /// that arrives after the link dropped). Acks of another epoch are ignored and counted.
    pub fn on_ack(&mut self, ack: ForwardAck) {
        self.on_ack_at(ack, Instant::now());
    }

    /// [`on_ack`](Self::on_ack) at `now`: each released message's time since it was
    /// queued goes into [`ack_latency`](Self::ack_latency).
    pub fn on_ack_at(&mut self, ack: ForwardAck, now: Instant) {
        if ack.link_epoch != self.link_epoch {
            self.ignored_acks += 1;
            return;
        }
        // Nothing above `highest_sent` has been sent, so nothing above it can be acked.
        let up_to = ack.up_to.min(self.highest_sent);
        self.acked_up_to = self.acked_up_to.max(up_to);
        while self.unacked.front().is_some_and(|e| e.fwd.seq <= up_to) {
            if let Some(entry) = self.unacked.pop_front() {
                self.ack_latency
                    .0
                    .record(now.saturating_duration_since(entry.queued_at));
                self.forget(&entry);
            }
        }
        // Resends queued after the link dropped whose ack came anyway.
        while self.pending.front().is_some_and(|s| s.seq <= up_to) {
            if let Some(entry) = self.pending.pop_front().and_then(|s| s.entry) {
                self.ack_latency
                    .0
                    .record(now.saturating_duration_since(entry.queued_at));
                self.forget(&entry);
            }
            self.trim_front();
        }
    }

    /// The connection is gone: nothing is sent until [`on_link_up`](Self::on_link_up),
    /// and every unacknowledged message will be sent again.
    pub fn on_link_down(&mut self) {
        self.link_up = false;
        self.requeue_unacked();
    }

    /// A (new) connection is up: unacknowledged messages go first, in sequence order,
    /// then the rest.
    pub fn on_link_up(&mut self) {
        self.requeue_unacked();
        self.link_up = true;
    }

    /// Unacked messages have lower sequences than any unsent one, so merging them back
    /// puts them at the front, in order.
    fn requeue_unacked(&mut self) {
        while let Some(entry) = self.unacked.pop_back() {
            self.pending.push_front(Slot {
                seq: entry.fwd.seq,
                entry: Some(entry),
            });
        }
    }

    pub fn origin(&self) -> NodeId {
        self.origin
    }

    pub fn link_epoch(&self) -> u64 {
        self.link_epoch
    }

    pub fn is_link_up(&self) -> bool {
        self.link_up
    }

    /// The sequence of the last message queued (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether the peer has processed every message queued up to `seq` that it will
    /// ever get: none is waiting to be sent, and everything sent is acknowledged.
    /// (Messages the backlog limits dropped never arrive, and do not hold this up.)
    /// A session handover waits for this so that nothing routed to the old node before
    /// the new route was known arrives there after it let go.
    pub fn processed_through(&self, seq: u64) -> bool {
        let waiting = self.pending.front().is_some_and(|s| s.seq <= seq);
        !waiting && self.acked_up_to >= seq.min(self.highest_sent)
    }

    /// Messages held: waiting to be sent (or resent) plus awaiting an ack.
    pub fn backlog_len(&self) -> usize {
        self.pending_len() + self.unacked.len()
    }

    /// Estimated encoded bytes of [`backlog_len`](Self::backlog_len)'s messages.
    pub fn backlog_bytes(&self) -> usize {
        self.bytes
    }

    /// Messages waiting to be handed out on the current link (resends included).
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.pending_gaps
    }

    /// QoS 1/2 messages handed out on the current link and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Messages handed out again after a reconnect, since this link was created.
    pub fn resent_total(&self) -> u64 {
        self.resent_total
    }

    /// Messages dropped by the backlog limits, all reasons together.
    pub fn overflow_dropped(&self) -> u64 {
        self.drops.total()
    }

    pub fn drop_counts(&self) -> DropCounts {
        self.drops
    }

    /// Acks of another epoch that were ignored.
    /// Times from queueing to acknowledgement of the QoS 1/2 messages acknowledged so far
    /// (resends included: a message's time runs from its first queueing).
    pub fn ack_latency(&self) -> LatencySnapshot {
        self.ack_latency.0.snapshot()
    }

    pub fn ignored_acks(&self) -> u64 {
        self.ignored_acks
    }

    /// How long the oldest held message has waited: the link's lag.
    pub fn oldest_age(&self, now: Instant) -> Option<Duration> {
        // Unacked messages come before pending ones, and each queue is in order.
        let oldest = self
            .unacked
            .front()
            .or_else(|| self.pending.front().and_then(|s| s.entry.as_ref()))?;
        Some(now.saturating_duration_since(oldest.queued_at))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    pub(crate) fn msg(qos: u8, payload: &[u8]) -> WireMessage {
        WireMessage::new("t", Bytes::copy_from_slice(payload), qos, false)
    }

    fn seqs(batch: &ForwardBatch) -> Vec<u64> {
        batch.messages.iter().map(|m| m.seq).collect()
    }

    fn up(limits: OutboundLimits) -> Outbound {
        let mut out = Outbound::new(1, 7, limits);
        out.on_link_up();
        out
    }

    fn push_all(out: &mut Outbound, qos: &[u8]) {
        let now = Instant::now();
        for &q in qos {
            assert!(matches!(
                out.push(msg(q, b"x"), None, now),
                PushOutcome::Queued { .. }
            ));
        }
    }

    #[test]
    fn nothing_is_sent_while_the_link_is_down() {
        let mut out = Outbound::new(1, 7, OutboundLimits::default());
        push_all(&mut out, &[1]);
        assert!(out.next_batch(10, 1 << 20).is_none());
        out.on_link_up();
        let batch = out.next_batch(10, 1 << 20).expect("batch");
        assert_eq!(
            (batch.origin, batch.link_epoch, seqs(&batch)),
            (1, 7, vec![1])
        );
    }

    #[test]
    fn batches_respect_limits_but_carry_at_least_one_message() {
        let mut out = up(OutboundLimits::default());
        push_all(&mut out, &[0, 1, 2, 0, 1]);
        assert_eq!(seqs(&out.next_batch(2, 1 << 20).expect("batch")), [1, 2]);
        assert_eq!(seqs(&out.next_batch(10, 1).expect("batch")), [3]);
        assert_eq!(seqs(&out.next_batch(10, 1 << 20).expect("batch")), [4, 5]);
        assert!(out.next_batch(10, 1 << 20).is_none());
        // QoS 0 forgotten, QoS 1/2 held.
        assert_eq!((out.unacked_len(), out.backlog_len()), (3, 3));
    }

    #[test]
    fn acks_release_and_reconnects_resend_in_order() {
        let mut out = up(OutboundLimits::default());
        push_all(&mut out, &[1, 0, 1, 2, 1]);
        let _ = out.next_batch(4, 1 << 20);
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 1,
        });
        assert_eq!(out.unacked_len(), 2); // 3 and 4
        push_all(&mut out, &[0]);
        out.on_link_down();
        out.on_link_up();
        let batch = out.next_batch(10, 1 << 20).expect("batch");
        assert_eq!(seqs(&batch), [3, 4, 5, 6]);
        assert_eq!(out.resent_total(), 2);
    }

    #[test]
    fn processed_through_waits_for_sending_and_the_ack_of_everything_up_to_a_mark() {
        let mut out = Outbound::new(1, 7, OutboundLimits::default());
        assert!(out.processed_through(out.last_seq()), "nothing queued yet");
        push_all(&mut out, &[1, 0, 1]);
        let mark = out.last_seq();
        assert_eq!(mark, 3);
        assert!(
            !out.processed_through(mark),
            "queued while the link is down"
        );
        out.on_link_up();
        let _ = out.next_batch(2, 1 << 20);
        push_all(&mut out, &[0]);
        assert!(!out.processed_through(mark), "sent, not acknowledged");
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 2,
        });
        assert!(!out.processed_through(mark), "3 not yet sent");
        assert!(
            out.processed_through(2),
            "QoS 0 covered by the cumulative ack"
        );
        let _ = out.next_batch(10, 1 << 20);
        out.on_ack(ForwardAck {
            link_epoch: 8,
            up_to: 4,
        });
        assert!(
            !out.processed_through(mark),
            "an ack of another epoch says nothing"
        );
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 4,
        });
        assert!(out.processed_through(mark) && out.processed_through(4));
    }

    #[test]
    fn processed_through_skips_what_the_backlog_limits_dropped() {
        let mut out = up(OutboundLimits {
            max_backlog_messages: 2,
            max_backlog_bytes: 1 << 20,
        });
        push_all(&mut out, &[0, 0]);
        push_all(&mut out, &[0]); // evicts 1
        let _ = out.next_batch(10, 1 << 20);
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 3,
        });
        assert!(out.processed_through(3));
    }

    #[test]
    fn acks_arriving_after_the_link_dropped_still_release() {
        let mut out = up(OutboundLimits::default());
        push_all(&mut out, &[1, 1, 1]);
        let _ = out.next_batch(10, 1 << 20);
        out.on_link_down();
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 2,
        });
        out.on_link_up();
        assert_eq!(seqs(&out.next_batch(10, 1 << 20).expect("batch")), [3]);
        assert_eq!(out.resent_total(), 1);
    }

    #[test]
    fn acks_of_another_epoch_or_beyond_what_was_sent_do_not_release() {
        let mut out = up(OutboundLimits::default());
        push_all(&mut out, &[1, 1]);
        let _ = out.next_batch(1, 1 << 20);
        out.on_ack(ForwardAck {
            link_epoch: 6,
            up_to: 100,
        });
        assert_eq!((out.unacked_len(), out.ignored_acks()), (1, 1));
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: u64::MAX,
        });
        // Seq 2 was never sent, so it is still waiting.
        assert_eq!((out.unacked_len(), out.pending_len()), (0, 1));
    }

    #[test]
    fn a_full_backlog_evicts_the_oldest_qos0_then_refuses() {
        let limits = OutboundLimits {
            max_backlog_messages: 3,
            ..OutboundLimits::default()
        };
        let mut out = up(limits);
        let now = Instant::now();
        push_all(&mut out, &[1, 0, 0]);
        assert_eq!(
            out.push(msg(1, b"x"), None, now),
            PushOutcome::Queued { seq: 4, evicted: 1 }
        );
        assert_eq!(
            out.push(msg(0, b"x"), None, now),
            PushOutcome::Queued { seq: 5, evicted: 1 }
        );
        assert_eq!(
            out.push(msg(2, b"x"), None, now),
            PushOutcome::Queued { seq: 6, evicted: 1 }
        );
        // Full of QoS 1/2 messages: the new one is refused, even at QoS 0.
        assert_eq!(
            out.push(msg(0, b"x"), None, now),
            PushOutcome::Refused(DropReason::BacklogFull)
        );
        let batch = out.next_batch(10, 1 << 20).expect("batch");
        assert_eq!(seqs(&batch), [1, 4, 6]); // the oldest QoS 0 went first each time
        assert_eq!(
            out.drop_counts(),
            DropCounts {
                evicted_qos0: 3,
                backlog_full: 1,
                too_large: 0
            }
        );
        assert_eq!(out.overflow_dropped(), 4);
        assert_eq!(out.backlog_len(), 3);
    }

    /// A peer that stays down while the backlog is full: every push evicts a QoS 0
    /// message from behind the QoS 1 ones; the gaps this leaves must not pile up.
    #[test]
    fn evictions_behind_held_messages_do_not_grow_the_queue() {
        let limits = OutboundLimits {
            max_backlog_messages: 100,
            ..OutboundLimits::default()
        };
        let mut out = Outbound::new(1, 7, limits);
        let now = Instant::now();
        push_all(&mut out, &[1; 50]);
        push_all(&mut out, &[0; 50]);
        for _ in 0..10_000 {
            let outcome = out.push(msg(0, b"x"), None, now);
            assert!(matches!(outcome, PushOutcome::Queued { evicted: 1, .. }));
            assert!(out.pending.len() <= 2 * 100 + 33, "{}", out.pending.len());
        }
        assert_eq!(out.backlog_len(), 100);
        assert_eq!(out.pending_len(), 100);
        assert_eq!(out.drop_counts().evicted_qos0, 10_000);
        out.on_link_up();
        let mut sent = Vec::new();
        while let Some(batch) = out.next_batch(7, 1 << 20) {
            sent.extend(seqs(&batch));
        }
        let expected: Vec<u64> = (1..=50).chain(10_051..=10_100).collect();
        assert_eq!(sent, expected);
        assert_eq!(out.backlog_len(), 50, "the QoS 1 messages await their ack");
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 10_100,
        });
        assert_eq!((out.backlog_len(), out.backlog_bytes()), (0, 0));
    }

    #[test]
    fn byte_limit_counts_and_refuses_oversized_messages() {
        let one = approx_size(&msg(0, &[0; 100]), None);
        let limits = OutboundLimits {
            max_backlog_messages: 100,
            max_backlog_bytes: one * 2,
        };
        let mut out = up(limits);
        let now = Instant::now();
        for _ in 0..3 {
            let outcome = out.push(msg(0, &[0; 100]), None, now);
            assert!(matches!(outcome, PushOutcome::Queued { .. }));
        }
        assert_eq!((out.backlog_len(), out.backlog_bytes()), (2, one * 2));
        assert_eq!(
            out.push(msg(1, &[0; 10_000]), None, now),
            PushOutcome::Refused(DropReason::TooLarge)
        );
        // Refusing does not evict anything.
        assert_eq!(out.drop_counts().evicted_qos0, 1);
        assert_eq!(out.backlog_len(), 2);
    }

    #[test]
    fn oldest_age_follows_the_oldest_held_message() {
        let mut out = up(OutboundLimits::default());
        let t0 = Instant::now();
        assert_eq!(out.oldest_age(t0), None);
        out.push(msg(1, b"a"), None, t0);
        out.push(msg(1, b"b"), None, t0 + Duration::from_secs(1));
        let _ = out.next_batch(1, 1 << 20);
        assert_eq!(
            out.oldest_age(t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        out.on_ack(ForwardAck {
            link_epoch: 7,
            up_to: 1,
        });
        assert_eq!(
            out.oldest_age(t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(2))
        );
    }
    #[test]
    fn acks_record_the_time_since_queueing() {
        let mut out = up(OutboundLimits::default());
        let t0 = Instant::now();
        out.push(msg(1, b"a"), None, t0);
        out.push(msg(2, b"b"), None, t0 + Duration::from_millis(5));
        let _ = out.next_batch(10, 1 << 20);
        let ack = ForwardAck {
            link_epoch: 7,
            up_to: 2,
        };
        out.on_ack_at(ack, t0 + Duration::from_millis(20));
        let h = out.ack_latency();
        assert_eq!(h.count, 2);
        assert!((h.sum_seconds - 0.035).abs() < 1e-9, "{h:?}");
    }
}
