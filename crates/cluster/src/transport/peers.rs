//! The peer table: per peer, its current link, where to dial it, and counters.
//!
//! One link per pair of nodes. When two links to the same peer are up at once (both
//! dialled at the same moment, or a peer redialled), both sides apply the same rule and
//! so keep the same one ([`keep_new_link`]):
//! 1. a link from a newer incarnation of the peer (it restarted) replaces the old one,
//!    which would otherwise linger until its idle timeout;
//! 2. otherwise the link *initiated by the lower node id* is kept;
//! 3. between two links from the same initiator, the newer one is kept (the initiator
//!    only redials when it saw the old one die).
//!
//! The loser is closed with [`super::CLOSE_DUPLICATE`]; work in flight on it fails with
//! `ConnectionLost` and is retried by its owner (Raft, or the forwarder's resend).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::lanes::LaneSlot;
use super::{TransportError, CLOSE_DUPLICATE};
use crate::types::{NodeId, NodeInfo};

/// Traffic counters of a peer, kept across reconnects (Prometheus counters).
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn sent(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: u64) {
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.frames_received.fetch_add(1, Ordering::Relaxed);
    }
}

/// One established link: a QUIC connection whose Hello exchange succeeded.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// Unique within this transport; tells a stale link from its replacement.
    pub id: u64,
    pub conn: quinn::Connection,
    pub initiator: NodeId,
    pub incarnation: u64,
    /// The cluster protocol version both ends speak on this link.
    pub version: u16,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

/// Whether a newly established link replaces the current one (see the module docs).
pub(crate) fn keep_new_link(
    local: NodeId,
    peer: NodeId,
    current: (NodeId, u64, bool),
    new: (NodeId, u64),
) -> bool {
    let (cur_initiator, cur_incarnation, cur_alive) = current;
    let (new_initiator, new_incarnation) = new;
    if !cur_alive || cur_incarnation != new_incarnation {
        return true;
    }
    let preferred = local.min(peer);
    if cur_initiator == new_initiator {
        return true;
    }
    new_initiator == preferred
}

/// Mutable state of one peer.
#[derive(Default)]
pub(crate) struct PeerState {
    /// Where to dial the peer; `None` for a peer that only dialled us.
    pub addr: Option<SocketAddr>,
    pub link: Option<Link>,
    /// What the peer said about itself in its last Hello.
    pub info: Option<NodeInfo>,
    /// Why the last dial failed; cleared when a link is established.
    pub last_error: Option<TransportError>,
    pub failed_dials: u64,
    pub links_established: u64,
    pub dialer: Option<JoinHandle<()>>,
}

/// A peer and everything the transport keeps about it.
pub(crate) struct Peer {
    pub id: NodeId,
    pub state: Mutex<PeerState>,
    /// Bumped on every link change or dial failure; waiters watch it.
    pub changed: watch::Sender<u64>,
    /// Wakes the dialler out of its backoff (a new `connect` call).
    pub kick: Notify,
    pub counters: LinkCounters,
    /// One sending slot per lane, so that concurrent senders of a lane share its stream.
    pub lanes: Mutex<HashMap<u8, Arc<tokio::sync::Mutex<LaneSlot>>>>,
}

impl Peer {
    fn new(id: NodeId) -> Self {
        Self {
            id,
            state: Mutex::new(PeerState::default()),
            changed: watch::channel(0).0,
            kick: Notify::new(),
            counters: LinkCounters::default(),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The current link, if it is still open.
    pub(crate) fn live_link(&self) -> Option<Link> {
        self.state.lock().link.clone().filter(Link::alive)
    }

    /// Installs a freshly established link, or refuses it if the current one wins (the
    /// caller then closes it). A replaced link is closed here.
    pub(crate) fn install(&self, local: NodeId, new: Link, info: NodeInfo) -> bool {
        let replaced = {
            let mut st = self.state.lock();
            if let Some(cur) = &st.link {
                let current = (cur.initiator, cur.incarnation, cur.alive());
                if !keep_new_link(local, self.id, current, (new.initiator, new.incarnation)) {
                    return false;
                }
            }
            st.info = Some(info);
            st.last_error = None;
            st.links_established += 1;
            st.link.replace(new)
        };
        if let Some(old) = replaced {
            old.conn
                .close(CLOSE_DUPLICATE.into(), b"replaced by another link");
        }
        self.notify();
        true
    }

    /// Forgets the link `link_id` if it is still the current one (it closed).
    pub(crate) fn drop_link(&self, link_id: u64) {
        let dropped = {
            let mut st = self.state.lock();
            if st.link.as_ref().is_some_and(|l| l.id == link_id) {
                st.link = None;
                true
            } else {
                false
            }
        };
        if dropped {
            self.notify();
        }
    }

    pub(crate) fn record_dial_failure(&self, error: TransportError) {
        {
            let mut st = self.state.lock();
            st.failed_dials += 1;
            st.last_error = Some(error);
        }
        self.notify();
    }

    /// Which link is up, if one is: [`LinkStatus`]'s first facts, without its statistics
    /// (which lock the QUIC connection) and copies.
    pub(crate) fn connection(&self) -> LinkConnection {
        let st = self.state.lock();
        LinkConnection {
            links_established: st.links_established,
            version: st.link.as_ref().filter(|l| l.alive()).map(|l| l.version),
        }
    }

    pub(crate) fn status(&self, local: NodeId) -> LinkStatus {
        let st = self.state.lock();
        let link = st.link.as_ref().filter(|l| l.alive());
        let c = &self.counters;
        LinkStatus {
            node_id: self.id,
            addr: st.addr,
            info: st.info.clone(),
            connected: link.is_some(),
            initiated_locally: link.map(|l| l.initiator == local),
            rtt: link.map(|l| l.conn.rtt()),
            udp_payload: link.map(|l| l.conn.stats().path.current_mtu),
            protocol_version: link.map(|l| l.version),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            links_established: st.links_established,
            failed_dials: st.failed_dials,
            last_error: st.last_error.as_ref().map(ToString::to_string),
        }
    }
}

/// Whether a peer's link is up, and how many links to it were established so far (a new
/// count means a new link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConnection {
    pub links_established: u64,
    /// The protocol version negotiated on the live link; `None` while no link is up.
    pub version: Option<u16>,
}

/// A peer's link as `tern cluster status` and the metrics see it. Byte and frame counts
/// are of transport frames (length prefix included), cumulative over reconnects.
#[derive(Clone, Debug, Serialize)]
pub struct LinkStatus {
    pub node_id: NodeId,
    /// Where this node dials the peer; `None` if only the peer dials us.
    pub addr: Option<SocketAddr>,
    /// The peer's own cluster address and region, from its Hello.
    pub info: Option<NodeInfo>,
    pub connected: bool,
    /// Whether the current link was dialled by this node.
    pub initiated_locally: Option<bool>,
    /// Smoothed round-trip time of the current link.
    pub rtt: Option<Duration>,
    /// Largest UDP payload the current link sends, as path MTU discovery has found it.
    pub udp_payload: Option<u16>,
    /// The cluster protocol version negotiated on the current link.
    pub protocol_version: Option<u16>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub links_established: u64,
    pub failed_dials: u64,
    pub last_error: Option<String>,
}

/// All peers of a transport.
#[derive(Default)]
pub(crate) struct Peers {
    map: Mutex<HashMap<NodeId, Arc<Peer>>>,
    next_link_id: AtomicU64,
}

impl Peers {
    pub(crate) fn get(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.map.lock().get(&id).cloned()
    }

    pub(crate) fn get_or_insert(&self, id: NodeId) -> Arc<Peer> {
        self.map
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(Peer::new(id)))
            .clone()
    }

    pub(crate) fn remove(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.map.lock().remove(&id)
    }

    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        let mut peers: Vec<_> = self.map.lock().values().cloned().collect();
        peers.sort_by_key(|p| p.id);
        peers
    }

    pub(crate) fn next_link_id(&self) -> u64 {
        self.next_link_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::keep_new_link;

    #[test]
    fn both_sides_keep_the_same_duplicate() {
        // Nodes 1 and 2 dial each other at once; incarnations equal, both alive.
        for (local, peer) in [(1, 2), (2, 1)] {
            // Current link from 2, new from 1: the lower initiator (1) wins.
            assert!(keep_new_link(local, peer, (2, 7, true), (1, 7)));
            // Current link from 1, new from 2: keep the current one.
            assert!(!keep_new_link(local, peer, (1, 7, true), (2, 7)));
        }
    }

    #[test]
    fn restarts_and_dead_links_are_replaced() {
        assert!(keep_new_link(1, 2, (1, 7, true), (2, 8)), "peer restarted");
        assert!(
            keep_new_link(1, 2, (1, 7, false), (2, 7)),
            "current link closed"
        );
        assert!(
            keep_new_link(1, 2, (2, 7, true), (2, 7)),
            "same initiator redialled"
        );
    }
}
