//! The receiving side of one origin's link: duplicate detection by (origin, sequence) and
//! the cumulative ack. The rules, and why a single high-water mark is enough, are in the
//! module docs of [`crate::forward`].

use super::frame::{ForwardAck, ForwardBatch, Forwarded};
use crate::types::NodeId;

/// What an [`Inbound`] has dropped, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundCounters {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages whose sequence had already been delivered (resends after a lost ack).
    pub duplicates: u64,
    /// Whole batches of an older incarnation of the sender.
    pub stale_batches: u64,
    /// Whole batches that named another origin than this one.
    pub misrouted_batches: u64,
}

/// Receiving state for the messages of one origin node.
#[derive(Debug)]
pub struct Inbound {
    origin: NodeId,
    /// The sender's sequence space we follow; `None` until its first batch.
    link_epoch: Option<u64>,
    highest_delivered: u64,
    counters: InboundCounters,
}

impl Inbound {
    pub fn new(origin: NodeId) -> Self {
        Self {
            origin,
            link_epoch: None,
            highest_delivered: 0,
            counters: InboundCounters::default(),
        }
    }

    /// Takes one batch: returns the messages to deliver locally (duplicates removed, in
    /// sequence order) and the ack to send back. A batch of an older epoch or of another
    /// origin gives nothing to deliver and no ack.
    pub fn accept<M>(&mut self, batch: ForwardBatch<M>) -> (Vec<Forwarded<M>>, Option<ForwardAck>) {
        if batch.origin != self.origin {
            self.counters.misrouted_batches += 1;
            return (Vec::new(), None);
        }
        match self.link_epoch {
            Some(epoch) if batch.link_epoch < epoch => {
                self.counters.stale_batches += 1;
                return (Vec::new(), None);
            }
            Some(epoch) if batch.link_epoch == epoch => {}
            _ => {
                // First batch, or a restarted sender: a new sequence space.
                self.link_epoch = Some(batch.link_epoch);
                self.highest_delivered = 0;
            }
        }
        let mut messages = batch.messages;
        // Senders send in order; sorting only guards the high-water mark against a
        // batch assembled out of order. Stable and linear on sorted input.
        messages.sort_by_key(|m| m.seq);
        let before = messages.len();
        messages.retain(|m| {
            let fresh = m.seq > self.highest_delivered;
            if fresh {
                self.highest_delivered = m.seq;
            }
            fresh
        });
        self.counters.delivered += messages.len() as u64;
        self.counters.duplicates += (before - messages.len()) as u64;
        let ack = ForwardAck {
            link_epoch: batch.link_epoch,
            up_to: self.highest_delivered,
        };
        (messages, Some(ack))
    }

    pub fn origin(&self) -> NodeId {
        self.origin
    }

    /// Highest sequence delivered in the current epoch (0 before any).
    pub fn highest_delivered(&self) -> u64 {
        self.highest_delivered
    }

    pub fn counters(&self) -> InboundCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::types::WireMessage;

    fn fwd(seq: u64) -> Forwarded {
        Forwarded {
            seq,
            message: WireMessage::new("t", Bytes::new(), 1, false),
            shared: None,
        }
    }

    fn batch(origin: NodeId, link_epoch: u64, seqs: &[u64]) -> ForwardBatch {
        ForwardBatch {
            origin,
            link_epoch,
            messages: seqs.iter().map(|&s| fwd(s)).collect(),
        }
    }

    fn accept(inbound: &mut Inbound, b: ForwardBatch) -> (Vec<u64>, Option<u64>) {
        let (delivered, ack) = inbound.accept(b);
        (
            delivered.iter().map(|m| m.seq).collect(),
            ack.map(|a| a.up_to),
        )
    }

    #[test]
    fn gaps_are_tolerated_and_duplicates_dropped() {
        let mut inbound = Inbound::new(2);
        assert_eq!(
            accept(&mut inbound, batch(2, 5, &[1, 2, 4])),
            (vec![1, 2, 4], Some(4))
        );
        // Seq 3 (a QoS 0 message lost with a link) never comes; a resend of 4 does.
        assert_eq!(
            accept(&mut inbound, batch(2, 5, &[4, 6])),
            (vec![6], Some(6))
        );
        assert_eq!(accept(&mut inbound, batch(2, 5, &[])), (vec![], Some(6)));
        // Out of order or repeated inside one batch.
        assert_eq!(
            accept(&mut inbound, batch(2, 5, &[9, 8, 9])),
            (vec![8, 9], Some(9))
        );
        let counters = inbound.counters();
        assert_eq!((counters.delivered, counters.duplicates), (6, 2));
    }

    #[test]
    fn a_restarted_sender_starts_a_new_sequence_space() {
        let mut inbound = Inbound::new(2);
        assert_eq!(
            accept(&mut inbound, batch(2, 5, &[1, 2, 3])),
            (vec![1, 2, 3], Some(3))
        );
        assert_eq!(
            accept(&mut inbound, batch(2, 9, &[1, 2])),
            (vec![1, 2], Some(2))
        );
        // A late batch of the dead incarnation: dropped, not acked.
        assert_eq!(accept(&mut inbound, batch(2, 5, &[4])), (vec![], None));
        assert_eq!(inbound.counters().stale_batches, 1);
        let (_, ack) = inbound.accept(batch(2, 9, &[3]));
        assert_eq!(
            ack,
            Some(ForwardAck {
                link_epoch: 9,
                up_to: 3
            })
        );
    }

    #[test]
    fn batches_of_another_origin_are_refused() {
        let mut inbound = Inbound::new(2);
        assert_eq!(accept(&mut inbound, batch(3, 5, &[1])), (vec![], None));
        assert_eq!(inbound.counters().misrouted_batches, 1);
        assert_eq!(inbound.highest_delivered(), 0);
    }
}
