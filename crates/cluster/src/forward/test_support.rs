//! What the decoder tests of both batch forms share.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tern_broker::Message;

use super::frame::{ForwardBatch, Forwarded};
use crate::types::WireClock;

/// A clock whose wall time is fixed, so that expiry times convert the same way each run.
pub(crate) fn clock() -> WireClock {
    WireClock {
        now: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
    }
}

/// What the reference (serde-derived) decoder makes of `bytes`, as broker messages.
pub(crate) fn reference(bytes: &[u8], clock: WireClock) -> ForwardBatch<Arc<Message>> {
    let b = ForwardBatch::decode(bytes).expect("reference decode");
    ForwardBatch {
        origin: b.origin,
        link_epoch: b.link_epoch,
        messages: b
            .messages
            .into_iter()
            .map(|f| Forwarded {
                seq: f.seq,
                message: Arc::new(f.message.to_message_at(clock)),
                shared: f.shared,
            })
            .collect(),
    }
}
