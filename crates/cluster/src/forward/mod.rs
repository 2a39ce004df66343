//! Publish forwarding between nodes (DESIGN.md, "One message's path", steps 4-6), as pure
//! state machines: no I/O and no clock of their own, so every rule here is tested without
//! a network and the QUIC layer that drives them stays thin.
//!
//! - [`Outbound`], one per peer on the sending node: numbers messages, batches them, keeps
//!   QoS 1/2 messages until they are acknowledged and resends them after a reconnect.
//! - [`Inbound`], one per origin on the receiving node: drops duplicates by
//!   (origin, sequence) and answers each batch with a cumulative [`ForwardAck`].
//! - [`frame`]: the MessagePack frames that travel between them; `encode` and `decode`
//!   write and read a batch by hand (the hot path: straight from and into the broker's
//!   `Arc<Message>`s), to the same bytes as the serde-derived form in `frame`. Peers of
//!   protocol version 2 and later get batches in `compact` form instead (fields by
//!   position, repeated strings left out); `decode` reads both.
//!
//! # Delivery rules
//!
//! Every message pushed to an [`Outbound`] gets the next sequence number of that
//! origin → destination link, starting at 1 and never reset by a reconnect. QoS 0 messages
//! are handed out once and forgotten; QoS 1/2 messages are kept until a [`ForwardAck`]
//! covers them and are sent again, in sequence order and ahead of anything new, after the
//! link comes back.
//!
//! The receiver delivers a message only if its sequence is above the highest it has
//! delivered from that origin. That is enough, without waiting for gaps (dropped or lost
//! QoS 0 messages leave gaps that are never filled), because of what the transport
//! guarantees: the batches of one link arrive in the order they were sent, and when one is
//! lost every later batch of that link is lost too (one ordered QUIC stream per link; a
//! lost stream means a dead connection). So whatever a receiver has not delivered of a link
//! lies above everything it has delivered from it, and after a reconnect the sender resends
//! every unacknowledged QoS 1/2 message, lowest first, before any higher sequence. Late
//! batches of a dead link that are still processed after the new link's first batches do
//! no harm: they only hold sequences that are either duplicates or resent on the new link
//! in the same order.
//!
//! A batch the receiver cannot decode breaks that reasoning: the batches behind it would
//! be delivered and acknowledged, and the ack would release the unread batch's QoS 1/2
//! messages at the sender, whose resends would then be dropped as duplicates. So the
//! receiver (`node/forwarding.rs`) closes the link a malformed frame came on and drops
//! whatever else is still queued from that link; the sender resends everything
//! unacknowledged on its next link, lowest sequence first. A frame malformed again within
//! a minute is most likely the same one resent (a bug, not damage), and the link also
//! carries Raft: it is skipped instead, its messages lost and counted.
//!
//! # Sender restarts: the link epoch
//!
//! A sender that restarts loses its in-memory backlog and its sequence counter, so its
//! next message is sequence 1 again. Each [`Outbound`] therefore carries a `link_epoch`,
//! chosen by the caller when it creates it, which must grow with every new incarnation of
//! the sender (the node's start time in microseconds since the UNIX epoch works, or a
//! counter kept in its data directory). The rule on the receiver, per origin:
//!
//! - a batch with a higher epoch than seen before starts a new sequence space: the
//!   receiver forgets its highest delivered sequence and accepts the batch;
//! - a batch with a lower epoch is a late frame of a dead incarnation: dropped whole
//!   (counted) and not acknowledged, since nobody is left to act on the ack;
//! - the same epoch: dedup by sequence as above.
//!
//! Acks carry the epoch too, and an [`Outbound`] ignores (and counts) acks of another
//! epoch, so an ack about the old sequence space can never release a new message.
//! Messages a sender held when it died are lost (QoS 1/2 between nodes is at-least-once
//! only while both processes live). A restarted receiver starts with no state and accepts
//! whatever arrives, so messages delivered before its restart but not yet acknowledged may
//! be delivered again: at least once, never silently lost.

mod compact;
mod decode;
mod encode;
pub mod frame;
mod inbound;
mod outbound;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, Interner, SHARE_PAYLOAD_FROM};
pub use frame::{
    BatchFormat, ForwardAck, ForwardBatch, ForwardMessage, Forwarded, FrameError, SharedTarget,
    COMPACT_BATCHES_SINCE,
};
pub use inbound::{Inbound, InboundCounters};
pub use outbound::{DropCounts, DropReason, Outbound, OutboundLimits, PushOutcome};
