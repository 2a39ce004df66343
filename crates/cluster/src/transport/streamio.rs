//! Frames on quinn streams: the async half of [`super::envelope`]. The length prefix is
//! checked before the body is allocated, so a peer claiming a 4 GiB frame costs nothing.

use bytes::{Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream, SendStream};

use super::envelope::{self, Envelope, FrameError, LEN_PREFIX};
use super::peers::LinkCounters;
use super::TransportError;
use crate::types::NodeId;

/// Describes a stream failure as text for [`TransportError::ConnectionLost`].
fn lost(peer: NodeId, e: impl std::fmt::Display) -> TransportError {
    TransportError::ConnectionLost {
        peer,
        reason: e.to_string(),
    }
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max_len: u32,
    peer: NodeId,
    counters: Option<&LinkCounters>,
) -> Result<Option<Envelope>, TransportError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(n)) => {
            return Err(FrameError::Malformed(format!(
                "stream ended inside a length prefix ({n} bytes)"
            ))
            .into())
        }
        Err(ReadExactError::ReadError(e)) => return Err(lost(peer, e)),
    }
    let len = envelope::decode_len(prefix, max_len)? as usize;
    // Read into a buffer the envelope's body can keep pointing into (no copy of it).
    let mut payload = BytesMut::zeroed(len);
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(n)) => {
            return Err(FrameError::Malformed(format!(
                "stream ended after {n} of {len} frame bytes"
            ))
            .into())
        }
        Err(ReadExactError::ReadError(e)) => return Err(lost(peer, e)),
    }
    if let Some(c) = counters {
        c.received((LEN_PREFIX + len) as u64);
    }
    Ok(Some(envelope::decode_envelope_shared(payload.freeze())?))
}

/// Writes one frame (returns when quinn has buffered it, within flow control).
pub(crate) async fn write_frame(
    send: &mut SendStream,
    envelope: &Envelope,
    max_len: u32,
    peer: NodeId,
    counters: Option<&LinkCounters>,
) -> Result<(), TransportError> {
    let frame = envelope::encode_frame(envelope, max_len)?;
    write_encoded(send, frame, peer, counters).await
}

/// Writes one frame that is already encoded (length prefix included), e.g. a
/// [`envelope::LaneFrame`].
pub(crate) async fn write_encoded(
    send: &mut SendStream,
    frame: Bytes,
    peer: NodeId,
    counters: Option<&LinkCounters>,
) -> Result<(), TransportError> {
    let len = frame.len() as u64;
    send.write_chunk(frame).await.map_err(|e| lost(peer, e))?;
    if let Some(c) = counters {
        c.sent(len);
    }
    Ok(())
}
