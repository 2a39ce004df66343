//! Tern's MQTT codec: one packet model for MQTT 3.1.1 and 5.0, no I/O.
//!
//! `decode` takes bytes from a buffer and gives back whole packets or a precise
//! [`DecodeError`]; `encode` writes a packet for a given protocol version. Neither panics
//! on any input: the codec is the first thing a hostile client touches.
//!
//! Modules: `decode` frames packets (fixed header, sizes) and `read` reads their bodies;
//! `encode` frames and `write` describes bodies; `properties` handles MQTT 5 properties;
//! `primitives` holds checked reads and the length-measuring `Sink`.

mod decode;
mod encode;
mod error;
mod packet;
mod primitives;
mod properties;
mod read;
mod reason;
mod write;

pub use decode::{decode, decode_connect_version, MAX_REMAINING_LENGTH};
pub use encode::{encode, encode_publish, encoded_len, publish_encoded_len};
pub use error::{DecodeError, DecodeErrorKind, EncodeError};
pub use packet::*;
pub use reason::ReasonCode;
