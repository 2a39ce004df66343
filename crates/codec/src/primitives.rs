//! MQTT's primitive data types: checked reads from a frame and length-aware writes.
//!
//! Reads never panic: every read checks the bytes left and returns
//! [`DecodeErrorKind::Truncated`] when a field runs past the end of its packet (or of its
//! property block).

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, DecodeErrorKind, EncodeError};

/// The largest value a variable byte integer (four bytes) can carry.
pub(crate) const MAX_VARINT: usize = 268_435_455;

pub(crate) fn err(kind: DecodeErrorKind, detail: &'static str) -> DecodeError {
    DecodeError::new(kind, detail)
}

fn truncated(detail: &'static str) -> DecodeError {
    err(DecodeErrorKind::Truncated, detail)
}

/// Result of parsing a variable byte integer from a slice that may still be incomplete.
pub(crate) enum VarInt {
    /// The value and the number of bytes it took.
    Value(usize, usize),
    /// All bytes present so far have the continuation bit set; fewer than four of them.
    Incomplete,
    /// Four bytes with the continuation bit set.
    Malformed,
}

/// Parses a variable byte integer at the start of `bytes`. Non-minimal encodings are
/// accepted (they are harmless and some old clients produce them).
pub(crate) fn parse_varint(bytes: &[u8]) -> VarInt {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return VarInt::Value(value, i + 1);
        }
    }
    if bytes.len() >= 4 {
        VarInt::Malformed
    } else {
        VarInt::Incomplete
    }
}

/// A cursor over one packet's bytes, or over a bounded part of them (a property block).
/// Binary fields are returned as zero-copy slices of the frame.
pub(crate) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `frame[start..]`. `start` past the end yields an empty reader.
    pub(crate) fn new(frame: &'a Bytes, start: usize) -> Self {
        let end = frame.len();
        Self {
            frame,
            pos: start.min(end),
            end,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Fails with `Truncated` unless every byte has been read.
    pub(crate) fn finish(&self, detail: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(truncated(detail))
        }
    }

    fn take(&mut self, n: usize, detail: &'static str) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let stop = start
            .checked_add(n)
            .filter(|&s| s <= self.end)
            .ok_or_else(|| truncated(detail))?;
        let slice = self
            .frame
            .get(start..stop)
            .ok_or_else(|| truncated(detail))?;
        self.pos = stop;
        Ok(slice)
    }

    /// Splits off a sub-reader over the next `n` bytes (which this reader skips).
    pub(crate) fn sub(
        &mut self,
        n: usize,
        detail: &'static str,
    ) -> Result<Reader<'a>, DecodeError> {
        let start = self.pos;
        self.take(n, detail)?;
        Ok(Reader {
            frame: self.frame,
            pos: start,
            end: self.pos,
        })
    }

    pub(crate) fn u8(&mut self, detail: &'static str) -> Result<u8, DecodeError> {
        match self.take(1, detail)? {
            [b] => Ok(*b),
            _ => Err(truncated(detail)),
        }
    }

    pub(crate) fn u16(&mut self, detail: &'static str) -> Result<u16, DecodeError> {
        match self.take(2, detail)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(truncated(detail)),
        }
    }

    pub(crate) fn u32(&mut self, detail: &'static str) -> Result<u32, DecodeError> {
        match self.take(4, detail)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(truncated(detail)),
        }
    }

    /// A variable byte integer; `bad` is the error kind for one longer than four bytes.
    pub(crate) fn varint(
        &mut self,
        bad: DecodeErrorKind,
        detail: &'static str,
    ) -> Result<usize, DecodeError> {
        let rest = self.frame.get(self.pos..self.end).unwrap_or_default();
        match parse_varint(rest) {
            VarInt::Value(v, n) => {
                self.pos += n;
                Ok(v)
            }
            VarInt::Incomplete => Err(truncated(detail)),
            VarInt::Malformed => Err(err(bad, detail)),
        }
    }

    /// A two-byte length followed by that many bytes, borrowed.
    pub(crate) fn raw_field(&mut self, detail: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(detail)?;
        self.take(usize::from(len), detail)
    }

    /// A UTF-8 encoded string: valid UTF-8 with no U+0000.
    pub(crate) fn str(&mut self, detail: &'static str) -> Result<&'a str, DecodeError> {
        let raw = self.raw_field(detail)?;
        let s = std::str::from_utf8(raw).map_err(|_| err(DecodeErrorKind::Utf8, detail))?;
        if raw.contains(&0) {
            return Err(err(DecodeErrorKind::Utf8, detail));
        }
        Ok(s)
    }

    pub(crate) fn string(&mut self, detail: &'static str) -> Result<String, DecodeError> {
        self.str(detail).map(str::to_owned)
    }

    /// Binary data: a two-byte length and the bytes, as a zero-copy slice of the frame.
    pub(crate) fn binary(&mut self, detail: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(detail)?);
        self.bytes(len, detail)
    }

    /// The next `n` bytes as a zero-copy slice of the frame.
    pub(crate) fn bytes(&mut self, n: usize, detail: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, detail)?;
        Ok(self.frame.slice(start..self.pos))
    }

    /// Everything left, as a zero-copy slice of the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }
}

/// Number of bytes the variable byte integer `v` takes (`v` at most [`MAX_VARINT`]).
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where encoders write. Implemented by [`Counter`], which only measures and validates,
/// and by `BytesMut`, which writes. Each packet is described once, generically, so the
/// measured length and the written bytes cannot disagree.
pub(crate) trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    /// A variable byte integer. A value above [`MAX_VARINT`] is an error (recorded by the
    /// counter, which always runs before anything is written).
    fn varint(&mut self, v: usize, too_big: EncodeError);
    fn slice(&mut self, v: &[u8]);
    /// A two-byte length prefix and the bytes; longer than 65535 is an error.
    fn field(&mut self, v: &[u8]);
    /// Records an error found while describing the packet.
    fn fail(&mut self, e: EncodeError);
}

/// Measures an encoding and keeps the first error.
#[derive(Default)]
pub(crate) struct Counter {
    pub(crate) len: usize,
    pub(crate) error: Option<EncodeError>,
}

impl Counter {
    pub(crate) fn finish(self) -> Result<usize, EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.len),
        }
    }
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn varint(&mut self, v: usize, too_big: EncodeError) {
        if v > MAX_VARINT {
            self.fail(too_big);
        }
        self.len += varint_len(v);
    }
    fn slice(&mut self, v: &[u8]) {
        self.len += v.len();
    }
    fn field(&mut self, v: &[u8]) {
        if v.len() > usize::from(u16::MAX) {
            self.fail(EncodeError::FieldTooLong);
        }
        self.len += 2 + v.len();
    }
    fn fail(&mut self, e: EncodeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn varint(&mut self, v: usize, _: EncodeError) {
        put_varint(self, v);
    }
    fn slice(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
    fn field(&mut self, v: &[u8]) {
        // Lengths were validated by the counter before writing began.
        self.put_u16(v.len() as u16);
        self.extend_from_slice(v);
    }
    fn fail(&mut self, _: EncodeError) {}
}

/// Writes `v` (at most [`MAX_VARINT`]) as a variable byte integer.
pub(crate) fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_lengths() {
        for v in [
            0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            match parse_varint(&b) {
                VarInt::Value(got, n) => assert_eq!((got, n), (v, b.len())),
                _ => panic!("varint {v} did not parse"),
            }
        }
        assert!(matches!(parse_varint(&[0x80, 0x80]), VarInt::Incomplete));
        assert!(matches!(
            parse_varint(&[0x80, 0x80, 0x80, 0x80]),
            VarInt::Malformed
        ));
        assert!(matches!(parse_varint(&[]), VarInt::Incomplete));
    }

    #[test]
    fn reader_checks_bounds() {
        let frame = Bytes::from_static(&[0, 3, b'a', b'b']);
        let mut r = Reader::new(&frame, 0);
        assert_eq!(r.str("s").unwrap_err().kind, DecodeErrorKind::Truncated);
        let mut r = Reader::new(&frame, 10);
        assert!(r.is_empty());
        assert_eq!(r.u8("x").unwrap_err().kind, DecodeErrorKind::Truncated);
        let frame = Bytes::from_static(&[0, 2, b'a', 0]);
        assert_eq!(
            Reader::new(&frame, 0).str("s").unwrap_err().kind,
            DecodeErrorKind::Utf8
        );
        let frame = Bytes::from_static(&[0, 2, 0xC3, 0x28]);
        assert_eq!(
            Reader::new(&frame, 0).str("s").unwrap_err().kind,
            DecodeErrorKind::Utf8
        );
    }
}
