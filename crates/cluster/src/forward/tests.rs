//! Property tests of an [`Outbound`] and an [`Inbound`] joined by a simulated link that
//! drops, loses frames in flight and reconnects.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::types::{NodeId, WireMessage};

const ORIGIN: NodeId = 4;
const EPOCH: u64 = 1_000;

#[derive(Clone, Debug)]
enum Op {
    Push {
        qos: u8,
        padding: usize,
    },
    /// The sender hands out a batch onto the current link.
    Send {
        max_messages: usize,
    },
    /// The receiver processes up to `n` batches of the current link and acks each.
    Deliver {
        n: usize,
    },
    /// The sender processes up to `n` acks of the current link.
    Ack {
        n: usize,
    },
    /// The connection dies. Lossy: a random prefix of what was in flight is still
    /// processed later (late frames), the rest is lost. Clean: everything in flight
    /// reaches the receiver first; acks may still be lost.
    LinkDown {
        keep_batches: usize,
        keep_acks: usize,
    },
    LinkUp,
    /// The receiver processes a late batch of a dead link (its ack goes nowhere).
    DeliverLate {
        which: usize,
    },
    /// The sender processes a late ack of a dead link.
    AckLate,
    /// The sender's process restarts: its backlog and sequence counter are lost, and it
    /// comes back with a higher link epoch. Its old connection's frames may arrive late.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3, 0usize..200).prop_map(|(qos, padding)| Op::Push { qos, padding }),
        3 => (1usize..6).prop_map(|max_messages| Op::Send { max_messages }),
        3 => (1usize..4).prop_map(|n| Op::Deliver { n }),
        2 => (1usize..4).prop_map(|n| Op::Ack { n }),
        1 => (any::<usize>(), any::<usize>())
            .prop_map(|(keep_batches, keep_acks)| Op::LinkDown { keep_batches, keep_acks }),
        1 => Just(Op::LinkUp),
        1 => any::<usize>().prop_map(|which| Op::DeliverLate { which }),
        1 => Just(Op::AckLate),
    ]
}

fn op_or_restart() -> impl Strategy<Value = Op> {
    prop_oneof![30 => op(), 1 => Just(Op::Restart)]
}

/// A message whose payload starts with its push index, so deliveries can be traced back.
fn message(id: usize, qos: u8, padding: usize) -> WireMessage {
    let mut payload = BytesMut::new();
    payload.put_u64(id as u64);
    payload.put_bytes(0xab, padding);
    WireMessage {
        origin_client: "c".into(),
        ..WireMessage::new("sim/topic", payload.freeze(), qos, false)
    }
}

fn id_of(payload: &Bytes) -> usize {
    let mut id = [0; 8];
    id.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(id) as usize
}

struct Pushed {
    epoch: u64,
    qos: u8,
    outcome: PushOutcome,
}

struct Sim {
    out: Outbound,
    inbound: Inbound,
    lossy: bool,
    in_flight: VecDeque<ForwardBatch>,
    acks: VecDeque<ForwardAck>,
    late_batches: Vec<VecDeque<ForwardBatch>>,
    late_acks: VecDeque<ForwardAck>,
    pushed: Vec<Pushed>,
    /// With the epoch of the batch that carried each.
    delivered: Vec<(u64, Forwarded)>,
    limits: OutboundLimits,
    now: Instant,
}

impl Sim {
    fn new(limits: OutboundLimits, lossy: bool) -> Self {
        let mut out = Outbound::new(ORIGIN, EPOCH, limits);
        out.on_link_up();
        Self {
            out,
            inbound: Inbound::new(ORIGIN),
            lossy,
            in_flight: VecDeque::new(),
            acks: VecDeque::new(),
            late_batches: Vec::new(),
            late_acks: VecDeque::new(),
            pushed: Vec::new(),
            delivered: Vec::new(),
            limits,
            now: Instant::now(),
        }
    }

    fn receive(&mut self, batch: ForwardBatch) -> Option<ForwardAck> {
        let epoch = batch.link_epoch;
        let (delivered, ack) = self.inbound.accept(batch);
        self.delivered
            .extend(delivered.into_iter().map(|m| (epoch, m)));
        ack
    }

    fn deliver_current(&mut self) -> bool {
        let Some(batch) = self.in_flight.pop_front() else {
            return false;
        };
        if let Some(ack) = self.receive(batch) {
            self.acks.push_back(ack);
        }
        true
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Push { qos, padding } => {
                let id = self.pushed.len();
                let outcome = self.out.push(message(id, qos, padding), None, self.now);
                let epoch = self.out.link_epoch();
                self.pushed.push(Pushed {
                    epoch,
                    qos,
                    outcome,
                });
            }
            Op::Send { max_messages } => {
                if let Some(batch) = self.out.next_batch(max_messages, 1024) {
                    assert!(self.out.is_link_up());
                    self.in_flight.push_back(batch);
                }
            }
            Op::Deliver { n } => {
                for _ in 0..n {
                    self.deliver_current();
                }
            }
            Op::Ack { n } => {
                for ack in self.acks.drain(..n.min(self.acks.len())) {
                    self.out.on_ack(ack);
                }
            }
            Op::LinkDown {
                keep_batches,
                keep_acks,
            } => {
                if !self.out.is_link_up() {
                    return;
                }
                if self.lossy {
                    let keep = keep_batches % (self.in_flight.len() + 1);
                    self.in_flight.truncate(keep);
                    self.late_batches.push(std::mem::take(&mut self.in_flight));
                } else {
                    while self.deliver_current() {}
                }
                let keep = keep_acks % (self.acks.len() + 1);
                self.acks.truncate(keep);
                self.late_acks.extend(self.acks.drain(..));
                self.out.on_link_down();
            }
            Op::LinkUp => {
                if !self.out.is_link_up() {
                    self.out.on_link_up();
                }
            }
            Op::DeliverLate { which } => {
                let links = self.late_batches.len();
                if links > 0 {
                    if let Some(batch) = self.late_batches[which % links].pop_front() {
                        let _ack_goes_nowhere = self.receive(batch);
                    }
                }
            }
            Op::AckLate => {
                if let Some(ack) = self.late_acks.pop_front() {
                    self.out.on_ack(ack);
                }
            }
            Op::Restart => {
                self.late_batches.push(std::mem::take(&mut self.in_flight));
                self.late_acks.extend(self.acks.drain(..));
                let epoch = self.out.link_epoch() + 1;
                self.out = Outbound::new(ORIGIN, epoch, self.limits);
                self.out.on_link_up();
            }
        }
    }

    /// Lets everything settle: late frames arrive, the link comes up and stays up.
    fn drain(&mut self) {
        for link in std::mem::take(&mut self.late_batches) {
            for batch in link {
                let _ = self.receive(batch);
            }
        }
        while let Some(ack) = self.late_acks.pop_front() {
            self.out.on_ack(ack);
        }
        if !self.out.is_link_up() {
            self.out.on_link_up();
        }
        for _ in 0..100_000 {
            while self.deliver_current() {}
            for ack in std::mem::take(&mut self.acks) {
                self.out.on_ack(ack);
            }
            match self.out.next_batch(64, 1 << 20) {
                Some(batch) => self.in_flight.push_back(batch),
                None => break,
            }
        }
        assert_eq!(self.out.backlog_len(), 0, "everything acknowledged");
        assert_eq!(self.out.backlog_bytes(), 0);
    }

    /// Checks that deliveries are in strictly increasing (epoch, sequence) order and match
    /// what was pushed under that epoch and sequence; returns how often each push index
    /// was delivered.
    fn delivery_counts(&self) -> HashMap<usize, usize> {
        let mut counts = HashMap::new();
        let mut last = (0, 0);
        for (epoch, fwd) in &self.delivered {
            let this = (*epoch, fwd.seq);
            assert!(this > last, "(epoch, seq) {this:?} after {last:?}");
            last = this;
            let id = id_of(&fwd.message.payload);
            let pushed = &self.pushed[id];
            assert_eq!(pushed.epoch, *epoch);
            assert_eq!(fwd.message.qos, pushed.qos);
            assert!(
                matches!(pushed.outcome, PushOutcome::Queued { seq, .. } if seq == fwd.seq),
                "push {id} delivered as seq {} after {:?}",
                fwd.seq,
                pushed.outcome
            );
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }
}

proptest! {
    #[test]
    fn qos1_and_2_exactly_once_in_order_across_lossy_reconnects(
        ops in proptest::collection::vec(op(), 0..300)
    ) {
        let limits = OutboundLimits {
            max_backlog_messages: usize::MAX,
            max_backlog_bytes: usize::MAX,
        };
        let mut sim = Sim::new(limits, true);
        for op in ops {
            sim.apply(op);
        }
        sim.drain();
        let counts = sim.delivery_counts();
        for (id, pushed) in sim.pushed.iter().enumerate() {
            let n = counts.get(&id).copied().unwrap_or(0);
            if pushed.qos == 0 {
                prop_assert!(n <= 1, "QoS 0 push {} delivered {} times", id, n);
            } else {
                prop_assert_eq!(n, 1, "QoS {} push {}", pushed.qos, id);
            }
        }
        prop_assert_eq!(sim.out.overflow_dropped(), 0);
    }

    #[test]
    fn small_backlog_accounts_for_every_message(
        ops in proptest::collection::vec(op(), 0..300),
        max_backlog_messages in 1usize..8,
        max_backlog_bytes in 200usize..1500,
    ) {
        let limits = OutboundLimits { max_backlog_messages, max_backlog_bytes };
        let mut sim = Sim::new(limits, false);
        for op in ops {
            sim.apply(op);
            prop_assert!(sim.out.backlog_len() <= max_backlog_messages);
            prop_assert!(sim.out.backlog_bytes() <= max_backlog_bytes);
        }
        sim.drain();
        let counts = sim.delivery_counts();
        prop_assert!(counts.values().all(|&n| n == 1));
        prop_assert_eq!(
            sim.delivered.len() as u64 + sim.out.overflow_dropped(),
            sim.pushed.len() as u64
        );
        let refused = sim
            .pushed
            .iter()
            .filter(|p| matches!(p.outcome, PushOutcome::Refused(_)))
            .count() as u64;
        let drops = sim.out.drop_counts();
        prop_assert_eq!(refused, drops.backlog_full + drops.too_large);
    }

    #[test]
    fn sender_restarts_lose_its_backlog_but_never_duplicate(
        ops in proptest::collection::vec(op_or_restart(), 0..300)
    ) {
        let limits = OutboundLimits {
            max_backlog_messages: usize::MAX,
            max_backlog_bytes: usize::MAX,
        };
        let mut sim = Sim::new(limits, true);
        for op in ops {
            sim.apply(op);
        }
        sim.drain();
        let counts = sim.delivery_counts();
        let current = sim.out.link_epoch();
        for (id, pushed) in sim.pushed.iter().enumerate() {
            let n = counts.get(&id).copied().unwrap_or(0);
            if pushed.qos > 0 && pushed.epoch == current {
                prop_assert_eq!(n, 1, "QoS {} push {} of the live sender", pushed.qos, id);
            } else {
                prop_assert!(n <= 1, "push {} delivered {} times", id, n);
            }
        }
    }
}
