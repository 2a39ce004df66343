//! Session slots: one per client identifier that has a session, online or offline.
//!
//! A slot is where publishers find a subscriber. While its client is connected the slot
//! holds the connection task's mailbox; while it is offline it holds the
//! `Session` itself, so messages queue there. Every state change happens under the slot's
//! own lock, which is what makes delivery and takeover race-free without any global lock
//! on the publish path.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::mailbox::MailboxSender;
use crate::message::Message;
use crate::session::{Delivery, Session};

/// What other tasks ask of a connection task.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    /// A message for this client.
    Deliver(Delivery),
    /// Another connection claimed this client id: disconnect (v5 reason 0x8E) and hand
    /// over the session. `resume` says whether the new connection keeps it.
    TakeOver {
        reply: oneshot::Sender<Session>,
        resume: bool,
    },
}

pub(crate) enum SlotState {
    Online {
        conn_id: u64,
        tx: MailboxSender,
    },
    Offline {
        session: Session,
        /// A will waiting for its delay (v5 Will Delay Interval) to pass.
        pending_will: Option<Arc<Message>>,
    },
    /// The session left for another node, which has not yet confirmed that its routes
    /// are in place: messages still routed here wait in `buffer` for that node to
    /// collect (see `Broker::finish_hand_over`), and the subscriptions stay in the index.
    Moved {
        filters: Vec<String>,
        buffer: Vec<Delivery>,
    },
    /// The session is over; the slot is (being) removed from the registry.
    Ended,
}

pub(crate) struct SlotInner {
    pub state: SlotState,
    /// Bumped on every change of state, so a timer armed for an older state (will delay,
    /// session expiry) can tell that it no longer applies.
    pub generation: u64,
    /// False once the slot has left the registry; a claim that finds such a slot must
    /// look the client id up again.
    pub registered: bool,
}

pub struct SessionSlot {
    pub client_id: Arc<str>,
    pub(crate) inner: Mutex<SlotInner>,
}

impl SessionSlot {
    pub(crate) fn new(client_id: Arc<str>, state: SlotState) -> Arc<Self> {
        Arc::new(Self {
            client_id,
            inner: Mutex::new(SlotInner {
                state,
                generation: 0,
                registered: true,
            }),
        })
    }

    pub fn is_online(&self) -> bool {
        matches!(self.inner.lock().state, SlotState::Online { .. })
    }
}

/// A slot as a key in the subscription index: compared by identity, since each session
/// has exactly one slot and hashing a pointer is cheaper than hashing the client id.
#[derive(Clone)]
pub struct SlotKey(pub Arc<SessionSlot>);

impl PartialEq for SlotKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SlotKey {}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

impl std::fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotKey({})", self.0.client_id)
    }
}
