//! The load generator's hot paths on the wire.
//!
//! Every packet is built by `tern_codec`, but a publisher's PUBLISH is encoded by the codec
//! only once, as a template: each message copies the template and patches its packet id
//! and payload header in place, so sending costs no allocation. On the receiving side a
//! PUBLISH is read in place (topic skipped, payload borrowed) for the same reason; every
//! other packet goes through `tern_codec::decode`.

use bytes::{Bytes, BytesMut};
use tern_codec::{encode, EncodeError, Packet, ProtocolVersion, Publish, PublishProperties, QoS};

/// Bytes at the front of every payload: publisher id (u32), sequence (u64), send time in
/// nanoseconds since the UNIX epoch (u64), all big-endian.
pub const HEADER_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl PayloadHeader {
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<Self> {
        if payload.len() < HEADER_LEN {
            return None;
        }
        Some(Self {
            publisher: u32::from_be_bytes(payload[0..4].try_into().ok()?),
            seq: u64::from_be_bytes(payload[4..12].try_into().ok()?),
            sent_ns: u64::from_be_bytes(payload[12..20].try_into().ok()?),
        })
    }
}

/// One publisher's PUBLISH, encoded once.
#[derive(Clone, Debug)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the packet identifier, for QoS 1 and 2.
    pid_off: Option<usize>,
    /// Offset of the payload header.
    hdr_off: usize,
}

impl PublishTemplate {
    pub fn new(
        topic: &str,
        qos: QoS,
        payload_size: usize,
        version: ProtocolVersion,
        publisher: u32,
    ) -> Result<Self, EncodeError> {
        assert!(payload_size >= HEADER_LEN);
        let mut payload = vec![0u8; payload_size];
        // A recognisable filler after the header, to check the offsets below.
        for (i, b) in payload.iter_mut().enumerate().skip(HEADER_LEN) {
            *b = b'a' + (i % 26) as u8;
        }
        PayloadHeader {
            publisher,
            seq: 0,
            sent_ns: 0,
        }
        .write(&mut payload);
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: Bytes::from(payload.clone()),
            properties: PublishProperties::default(),
        });
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf)?;
        let bytes = buf.to_vec();
        let (_, _, body) = frame_header(&bytes).expect("codec wrote a whole fixed header");
        let topic_len = u16::from_be_bytes([bytes[body], bytes[body + 1]]) as usize;
        let pid_off = (qos != QoS::AtMostOnce).then_some(body + 2 + topic_len);
        let hdr_off = bytes.len() - payload_size;
        assert_eq!(&bytes[hdr_off..], &payload[..], "template payload offset");
        if let Some(off) = pid_off {
            assert_eq!(&bytes[off..off + 2], &[0, 1], "template packet id offset");
        }
        Ok(Self {
            bytes,
            pid_off,
            hdr_off,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH with the given packet id (ignored for QoS 0) and header.
    #[inline]
    pub fn append(&self, buf: &mut BytesMut, packet_id: u16, seq: u64, sent_ns: u64) {
        let start = buf.len();
        buf.extend_from_slice(&self.bytes);
        let pkt = &mut buf[start..];
        if let Some(off) = self.pid_off {
            pkt[off..off + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let h = self.hdr_off;
        pkt[h + 4..h + 12].copy_from_slice(&seq.to_be_bytes());
        pkt[h + 12..h + 20].copy_from_slice(&sent_ns.to_be_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Parses the fixed header at the front of `buf`: `(first byte, whole packet length,
/// offset of the variable header)`, or `None` if more bytes are needed.
pub fn frame_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let body = 2 + i;
            return Some((first, body + len, body));
        }
    }
    // A fifth length byte: malformed; report it as an absurd length so the caller fails.
    Some((first, usize::MAX, 5))
}

/// A PUBLISH read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishView<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub payload: &'a [u8],
}

/// Reads the PUBLISH that is exactly `pkt` (fixed header included, body at `body`).
pub fn parse_publish(
    pkt: &[u8],
    body: usize,
    version: ProtocolVersion,
) -> Result<PublishView<'_>, Malformed> {
    let qos = (pkt[0] >> 1) & 0x03;
    if qos == 3 {
        return Err(Malformed("publish with QoS 3"));
    }
    let mut p = body;
    let need = |p: usize, n: usize| {
        if p + n <= pkt.len() {
            Ok(())
        } else {
            Err(Malformed("publish shorter than its fields"))
        }
    };
    need(p, 2)?;
    let topic_len = u16::from_be_bytes([pkt[p], pkt[p + 1]]) as usize;
    p += 2;
    need(p, topic_len)?;
    p += topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        need(p, 2)?;
        packet_id = u16::from_be_bytes([pkt[p], pkt[p + 1]]);
        p += 2;
    }
    if version == ProtocolVersion::V5 {
        let mut props = 0usize;
        let mut i = 0;
        loop {
            need(p, 1)?;
            let b = pkt[p];
            p += 1;
            props |= ((b & 0x7f) as usize) << (7 * i);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i == 4 {
                return Err(Malformed("publish property length"));
            }
        }
        need(p, props)?;
        p += props;
    }
    Ok(PublishView {
        qos,
        packet_id,
        payload: &pkt[p..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(version: ProtocolVersion, qos: QoS, size: usize) {
        let t = PublishTemplate::new("bench/x/in/17", qos, size, version, 17).unwrap();
        let mut buf = BytesMut::new();
        t.append(&mut buf, 4242, 99, 123_456_789);
        t.append(&mut buf, 7, 100, 123_456_999);
        assert_eq!(buf.len(), 2 * t.len());
        let mut seen = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let (first, len, body) = frame_header(&buf[off..]).unwrap();
            assert_eq!(first >> 4, 3);
            let pkt = &buf[off..off + len];
            let view = parse_publish(pkt, body, version).unwrap();
            assert_eq!(view.qos, qos as u8);
            assert_eq!(view.payload.len(), size);
            let h = PayloadHeader::read(view.payload).unwrap();
            seen.push((view.packet_id, h));
            // The codec agrees with the fast path.
            let mut one = BytesMut::from(pkt);
            match tern_codec::decode(&mut one, Some(version), 1 << 20).unwrap() {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.topic, "bench/x/in/17");
                    assert_eq!(p.qos, qos);
                    assert_eq!(p.packet_id, view.packet_id);
                    assert_eq!(&p.payload[..], view.payload);
                }
                other => panic!("codec decoded {other:?}"),
            }
            off += len;
        }
        let pid = |p: u16| if qos == QoS::AtMostOnce { 0 } else { p };
        assert_eq!(
            seen,
            vec![
                (
                    pid(4242),
                    PayloadHeader {
                        publisher: 17,
                        seq: 99,
                        sent_ns: 123_456_789
                    }
                ),
                (
                    pid(7),
                    PayloadHeader {
                        publisher: 17,
                        seq: 100,
                        sent_ns: 123_456_999
                    }
                ),
            ]
        );
    }

    #[test]
    fn template_roundtrips_through_fast_parser_and_codec() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for size in [HEADER_LEN, 100, 200, 20_000] {
                    roundtrip(version, qos, size);
                }
            }
        }
    }

    #[test]
    fn frame_header_needs_whole_length() {
        assert_eq!(frame_header(&[]), None);
        assert_eq!(frame_header(&[0x30]), None);
        assert_eq!(frame_header(&[0x30, 0x80]), None);
        assert_eq!(frame_header(&[0x30, 0x05]), Some((0x30, 7, 2)));
        assert_eq!(frame_header(&[0x30, 0x80, 0x01]), Some((0x30, 131, 3)));
        assert_eq!(
            frame_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01])
                .unwrap()
                .1,
            usize::MAX
        );
    }

    #[test]
    fn truncated_publish_is_malformed() {
        // Topic length says 10 but only 2 bytes follow.
        let pkt = [0x30, 0x04, 0x00, 0x0a, b'a', b'b'];
        assert!(parse_publish(&pkt, 2, ProtocolVersion::V311).is_err());
        let qos3 = [0x36, 0x02, 0x00, 0x00];
        assert!(parse_publish(&qos3, 2, ProtocolVersion::V311).is_err());
    }

    #[test]
    fn v5_properties_are_skipped() {
        // topic "t", qos 1, pid 5, properties: 3 bytes (message expiry is 5 bytes; use a
        // payload format indicator 0x01 0x01 plus one padding byte of a fake content).
        let mut pkt = vec![0x32, 0];
        pkt.extend_from_slice(&[0x00, 0x01, b't', 0x00, 0x05, 0x02, 0x01, 0x01]);
        pkt.extend_from_slice(b"PAYLOAD");
        pkt[1] = (pkt.len() - 2) as u8;
        let v = parse_publish(&pkt, 2, ProtocolVersion::V5).unwrap();
        assert_eq!(v.packet_id, 5);
        assert_eq!(v.payload, b"PAYLOAD");
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(PayloadHeader::read(&[0; 19]), None);
        let mut b = [0u8; 20];
        let h = PayloadHeader {
            publisher: u32::MAX,
            seq: u64::MAX - 1,
            sent_ns: 5,
        };
        h.write(&mut b);
        assert_eq!(PayloadHeader::read(&b), Some(h));
    }
}
