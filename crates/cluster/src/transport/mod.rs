//! Node-to-node transport: one mutually authenticated QUIC connection per pair of nodes.
//!
//! - [`tls`]: the cluster PKI (CA, node certificates carrying their node id) and the
//!   rustls configs of both directions.
//! - [`envelope`]: the length-prefixed, versioned MessagePack frame and the [`Hello`]
//!   every connection starts with.
//! - [`Transport`]: one quinn endpoint, server and client at once; keeps one link per
//!   peer, redials it with backoff, and reports link state ([`LinkStatus`]).
//! - Channels on a link: request/response RPCs on bidirectional streams
//!   ([`Transport::request`], [`Transport::set_request_handler`]), prioritised above
//!   ordered unidirectional *lanes* of frames ([`Transport::send_stream`],
//!   [`Transport::take_incoming`]).
//!
//! Wire protocol of a link: the dialler opens a bidirectional stream and sends its
//! `Hello`; the acceptor checks the version range and that the `Hello`'s node id is the
//! one in the dialler's certificate, then answers with its own `Hello` (or closes the
//! connection with [`CLOSE_REFUSED`] and the reason). After that, every bidirectional
//! stream is one RPC (a `Request` frame, answered by one `Response` frame), and every
//! unidirectional stream is a lane (a `LaneOpen` frame, then `LaneData` frames).

pub mod config;
mod endpoint;
pub mod envelope;
mod lanes;
mod peers;
mod rpc;
mod streamio;
pub mod tls;
mod udp_socket;

#[cfg(test)]
mod tests;

use crate::types::NodeId;

pub use config::{Congestion, TransportConfig};
pub use endpoint::Transport;
pub use envelope::{Hello, LaneFrame, MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION};
pub use lanes::{IncomingFrame, LaneSender};
pub use peers::{LinkConnection, LinkStatus};
pub use tls::{CaBundle, NodeCert, TlsIdentity};

/// Application close codes of a link, so that the other side's log says why.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// The peer's `Hello` was refused (version range, node id, certificate).
pub const CLOSE_REFUSED: u32 = 1;
/// Another link to the same peer was kept (see [`Transport`] on duplicates).
pub const CLOSE_DUPLICATE: u32 = 2;
/// The peer broke the protocol (bad first frame).
pub const CLOSE_PROTOCOL: u32 = 3;
/// The peer was removed with [`Transport::remove_peer`].
pub const CLOSE_REMOVED: u32 = 4;

/// Stream priorities: Raft RPCs go before published messages when a link is congested.
pub const RPC_PRIORITY: i32 = 10;
pub const LANE_PRIORITY: i32 = 0;

/// Errors of the transport. [`TransportError::is_unreachable`] tells the Raft network
/// which errors are openraft's `RPCError::Unreachable` (openraft then backs off).
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransportError {
    /// No link to the peer: unknown, never reached, or the last dial failed.
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// The peer (or this node) refused the link: versions, node id or certificate.
    #[error("link with node {peer} refused: {reason}")]
    Refused { peer: NodeId, reason: String },
    /// The link was up but no answer came in time.
    #[error("request to node {peer} timed out")]
    Timeout { peer: NodeId },
    /// The link broke while a request or stream was using it.
    #[error("link to node {peer} lost: {reason}")]
    ConnectionLost { peer: NodeId, reason: String },
    /// The peer's handler answered with an error (or has no handler for the kind).
    #[error("node {peer} answered with an error: {message}")]
    Remote { peer: NodeId, message: String },
    #[error(transparent)]
    Frame(#[from] envelope::FrameError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("transport config: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("transport is shut down")]
    Closed,
}

impl TransportError {
    /// True when the peer could not be reached at all, as opposed to a slow or failing
    /// peer: map to openraft's `RPCError::Unreachable`.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Refused { .. } | Self::Closed
        )
    }
}

impl From<tls::TlsError> for TransportError {
    fn from(e: tls::TlsError) -> Self {
        Self::Tls(e.to_string())
    }
}
