//! Messages gathered to be delivered together: consecutive messages with one topic and
//! one origin client, from one read of a client's socket or one batch from a peer.
//!
//! Each subscriber's slot and mailbox are then locked once per run rather than once per
//! message (see [`Broker::publish_run`]), and the run's subscribers are found once.

use std::sync::Arc;

use crate::broker::MatchCache;
use crate::{Broker, Message};

/// Waiting messages, and who their topic reached last (kept across runs).
#[derive(Debug, Default)]
pub struct MessageRun {
    messages: Vec<Arc<Message>>,
    cache: MatchCache,
}

impl MessageRun {
    /// At most this many messages wait.
    const MAX: usize = 64;

    /// Whether `message` may wait with the ones already here: same topic and origin
    /// client, room left, and no retained message on either side (a retained message goes
    /// alone, so that the retained store and the deliveries change in step).
    fn admits(&self, message: &Message) -> bool {
        !message.retain
            && self.messages.len() < Self::MAX
            && self.messages.first().is_none_or(|first| {
                !first.retain
                    && first.topic == message.topic
                    && first.origin_client == message.origin_client
            })
    }

    /// For a client's connection: `message` waits to be published with the rest of its
    /// run; what waits is published first if it cannot join. A retained message is
    /// published at once.
    pub(crate) fn publish(&mut self, broker: &Broker, message: Arc<Message>) {
        if !self.admits(&message) {
            self.publish_waiting(broker);
        }
        let retain = message.retain;
        self.messages.push(message);
        if retain {
            self.publish_waiting(broker);
        }
    }

    /// Publishes what waits ([`Broker::publish_run`]).
    pub(crate) fn publish_waiting(&mut self, broker: &Broker) {
        if !self.messages.is_empty() {
            broker.publish_run(&self.messages, &mut self.cache);
            self.messages.clear();
        }
    }

    /// For messages a peer forwarded: `message` waits to be delivered with the rest of its
    /// run; what waits is delivered first if it cannot join.
    pub fn deliver_forwarded(&mut self, broker: &Broker, message: Arc<Message>) {
        if !self.admits(&message) {
            self.deliver_waiting(broker);
        }
        self.messages.push(message);
    }

    /// Delivers what waits ([`Broker::deliver_forwarded_run`]).
    pub fn deliver_waiting(&mut self, broker: &Broker) {
        if !self.messages.is_empty() {
            broker.deliver_forwarded_run(&self.messages, &mut self.cache);
            self.messages.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;
    use tern_codec::QoS;

    fn message(topic: &str, origin: &str, retain: bool) -> Arc<Message> {
        Arc::new(Message::from_publish(
            topic.into(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            retain,
            origin.into(),
            Default::default(),
            Instant::now(),
        ))
    }

    #[test]
    fn a_run_holds_one_topic_and_origin_up_to_its_limit_and_no_retained_message() {
        let mut run = MessageRun::default();
        assert!(
            run.admits(&message("a", "c", false)),
            "anything joins an empty run"
        );
        assert!(
            !run.admits(&message("a", "c", true)),
            "a retained message goes alone"
        );
        run.messages.push(message("a", "c", false));
        assert!(run.admits(&message("a", "c", false)));
        assert!(!run.admits(&message("b", "c", false)), "another topic");
        assert!(!run.admits(&message("a", "d", false)), "another origin");
        while run.messages.len() < MessageRun::MAX {
            run.messages.push(message("a", "c", false));
        }
        assert!(!run.admits(&message("a", "c", false)), "full");
        run.messages.clear();
        run.messages.push(message("a", "c", true));
        assert!(
            !run.admits(&message("a", "c", false)),
            "nothing joins a retained one"
        );
    }
}
