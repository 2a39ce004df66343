//! A connection task's mailbox: what other tasks hand it (deliveries, a takeover), in the
//! order they were sent.
//!
//! It does what an unbounded channel would, more cheaply for a stream of deliveries: a
//! send is a push under a short lock, the receiving task is woken only when the mailbox
//! goes from empty to not empty, and it takes everything waiting in one go. A tokio
//! channel woke the receiver (several atomic operations on lines both cores touch) on
//! every message, which was most of a delivery's cost at fan-out. An empty mailbox
//! holds no buffer, where a channel kept a block of 32 slots for every idle client.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::registry::ConnCommand;

struct Shared {
    queue: Mutex<Queue>,
    /// Notified when the queue stops being empty.
    arrived: Notify,
}

struct Queue {
    commands: VecDeque<ConnCommand>,
    /// The receiver is gone: nothing more is accepted.
    closed: bool,
}

/// The sending side, held in the session's slot while its client is online.
#[derive(Clone)]
pub(crate) struct MailboxSender(Arc<Shared>);

/// The connection task's side. Dropping it closes the mailbox and drops what it held
/// (a takeover's reply among them, which tells the waiting side that nobody answers).
pub(crate) struct MailboxReceiver(Arc<Shared>);

pub(crate) fn mailbox() -> (MailboxSender, MailboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            commands: VecDeque::new(),
            closed: false,
        }),
        arrived: Notify::new(),
    });
    (MailboxSender(shared.clone()), MailboxReceiver(shared))
}

impl MailboxSender {
    /// Queues `command`; gives it back if the receiver is gone.
    pub(crate) fn send(&self, command: ConnCommand) -> Result<(), ConnCommand> {
        self.send_many(std::iter::once(command))
            .map_err(|mut refused| {
                refused
                    .next()
                    .expect("send_many gives back the untouched iterator")
            })
    }

    /// Queues every command of `commands` in order, under one lock and with at most one
    /// wake-up; gives them all back if the receiver is gone.
    pub(crate) fn send_many<I>(&self, commands: I) -> Result<(), I>
    where
        I: Iterator<Item = ConnCommand>,
    {
        let mut queue = self.0.queue.lock();
        if queue.closed {
            return Err(commands);
        }
        let was_empty = queue.commands.is_empty();
        queue.commands.extend(commands);
        let now_empty = queue.commands.is_empty();
        drop(queue);
        if was_empty && !now_empty {
            // With nobody waiting, the notification is kept for the next wait.
            self.0.arrived.notify_one();
        }
        Ok(())
    }
}

impl MailboxReceiver {
    /// Waits until something is in the mailbox, then moves all of it to the end of `into`.
    /// Cancel-safe: nothing is taken unless it completes.
    pub(crate) async fn recv_all(&mut self, into: &mut VecDeque<ConnCommand>) {
        loop {
            if self.take_all(into) > 0 {
                return;
            }
            self.0.arrived.notified().await;
        }
    }

    /// Moves whatever is in the mailbox to the end of `into`, without waiting; returns how
    /// many commands that was.
    pub(crate) fn take_all(&mut self, into: &mut VecDeque<ConnCommand>) -> usize {
        let mut queue = self.0.queue.lock();
        let n = queue.commands.len();
        if n == 0 {
            return 0;
        }
        if into.is_empty() {
            // Swapping keeps both buffers' capacity and moves nothing.
            std::mem::swap(&mut queue.commands, into);
        } else {
            into.extend(queue.commands.drain(..));
        }
        n
    }

    /// Returns commands taken but not handled to the front of the mailbox, ahead of
    /// anything sent since, for whoever empties it next.
    pub(crate) fn put_back(&mut self, rest: &mut VecDeque<ConnCommand>) {
        if rest.is_empty() {
            return;
        }
        let mut queue = self.0.queue.lock();
        while let Some(command) = rest.pop_back() {
            queue.commands.push_front(command);
        }
    }
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        let left = {
            let mut queue = self.0.queue.lock();
            queue.closed = true;
            std::mem::take(&mut queue.commands)
        };
        // Dropped outside the lock: a takeover's reply wakes its waiter.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn takeover() -> (ConnCommand, oneshot::Receiver<Session>) {
        let (reply, answer) = oneshot::channel();
        (
            ConnCommand::TakeOver {
                reply,
                resume: true,
            },
            answer,
        )
    }

    #[tokio::test]
    async fn commands_arrive_in_order_in_one_batch() {
        let (tx, mut rx) = mailbox();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (cmd, answer) = takeover();
            answers.push(answer);
            assert!(tx.send(cmd).is_ok());
        }
        let mut got = VecDeque::new();
        rx.recv_all(&mut got).await;
        assert_eq!(got.len(), 3);
        assert_eq!(rx.take_all(&mut got), 0);
        let (cmd, _answer) = takeover();
        assert!(tx.send(cmd).is_ok());
        let first = got.pop_front();
        rx.put_back(&mut got);
        assert!(got.is_empty());
        assert_eq!(rx.take_all(&mut got), 3, "two put back, one sent since");
        drop(first);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = mailbox();
        let waiter = tokio::spawn(async move {
            let mut got = VecDeque::new();
            rx.recv_all(&mut got).await;
            got.len()
        });
        tokio::task::yield_now().await;
        let (cmd, _answer) = takeover();
        assert!(tx.send(cmd).is_ok());
        let n = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(n, 1);
    }

    fn delivery(payload: &'static str) -> ConnCommand {
        let message = crate::Message::from_publish(
            "t".into(),
            bytes::Bytes::from_static(payload.as_bytes()),
            tern_codec::QoS::AtLeastOnce,
            false,
            "c".into(),
            Default::default(),
            std::time::Instant::now(),
        );
        ConnCommand::Deliver(crate::session::Delivery {
            message: Arc::new(message),
            qos: tern_codec::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        })
    }

    fn payloads(commands: &VecDeque<ConnCommand>) -> Vec<&[u8]> {
        commands
            .iter()
            .map(|c| match c {
                ConnCommand::Deliver(d) => d.message.payload.as_ref(),
                ConnCommand::TakeOver { .. } => b"takeover".as_slice(),
            })
            .collect()
    }

    #[tokio::test]
    async fn send_many_queues_a_run_in_order_behind_earlier_sends() {
        let (tx, mut rx) = mailbox();
        assert!(tx.send(delivery("a")).is_ok());
        let run = ["b", "c", "d"].into_iter().map(delivery);
        assert!(tx.send_many(run).is_ok());
        let mut got = VecDeque::new();
        rx.recv_all(&mut got).await;
        assert_eq!(payloads(&got), [b"a", b"b", b"c", b"d"]);
        // An empty run leaves nothing to take (and nothing to wake for).
        assert!(tx.send_many(std::iter::empty()).is_ok());
        got.clear();
        assert_eq!(rx.take_all(&mut got), 0);
    }

    #[tokio::test]
    async fn send_many_wakes_a_waiting_receiver_and_a_closed_mailbox_refuses_it() {
        let (tx, mut rx) = mailbox();
        let waiter = tokio::spawn(async move {
            let mut got = VecDeque::new();
            rx.recv_all(&mut got).await;
            (got.len(), rx)
        });
        tokio::task::yield_now().await;
        assert!(tx.send_many(["x", "y"].into_iter().map(delivery)).is_ok());
        let (n, rx) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(n, 2);
        drop(rx);
        let (cmd, answer) = takeover();
        let refused = tx.send_many(std::iter::once(cmd));
        assert!(refused.is_err());
        drop(refused);
        assert!(
            answer.await.is_err(),
            "the refused takeover's reply is dropped"
        );
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_sends_and_drops_what_it_held() {
        let (tx, rx) = mailbox();
        let (cmd, answer) = takeover();
        assert!(tx.send(cmd).is_ok());
        drop(rx);
        // The takeover's reply went with the mailbox: its waiter hears nobody answers.
        assert!(answer.await.is_err());
        let (cmd, _answer) = takeover();
        assert!(tx.send(cmd).is_err());
    }

    /// A wake-up for a send made while the receiver was not waiting is not lost.
    #[tokio::test]
    async fn a_send_between_two_waits_is_seen() {
        let (tx, mut rx) = mailbox();
        let mut got = VecDeque::new();
        for round in 1..=100 {
            let (cmd, _answer) = takeover();
            assert!(tx.send(cmd).is_ok());
            tokio::time::timeout(Duration::from_secs(5), rx.recv_all(&mut got))
                .await
                .expect("not lost");
            assert_eq!(got.len(), round);
        }
    }
}
