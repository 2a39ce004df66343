//! One MQTT client connection: a TCP stream with a read and a write buffer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tern_codec::{
    decode, encode, ConnAck, Connect, ConnectProperties, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::BenchError;

/// First byte of a PUBACK.
pub const PUBACK: u8 = 0x40;
/// First byte of a PUBREC.
pub const PUBREC: u8 = 0x50;
/// First byte of a PUBCOMP.
pub const PUBCOMP: u8 = 0x70;

/// The largest packet the load generator accepts from a broker.
pub const MAX_PACKET: usize = 16 << 20;

/// A write that makes no progress for this long means the broker is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ClientOpts {
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    /// Initial capacity of the read buffer, and the most read per wake-up.
    pub read_chunk: usize,
}

pub struct Conn {
    pub name: String,
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    read_chunk: usize,
}

impl Conn {
    /// Connects, sends CONNECT and waits for a successful CONNACK.
    pub async fn open(
        name: String,
        addr: SocketAddr,
        source: Option<IpAddr>,
        opts: &ClientOpts,
        receive_maximum: Option<u16>,
    ) -> Result<(Conn, ConnAck), BenchError> {
        let fut = Self::open_inner(name.clone(), addr, source, opts, receive_maximum);
        match tokio::time::timeout(opts.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(BenchError::Timeout(format!(
                "{name}: no CONNACK from {addr} within {:?}",
                opts.connect_timeout
            ))),
        }
    }

    async fn open_inner(
        name: String,
        addr: SocketAddr,
        source: Option<IpAddr>,
        opts: &ClientOpts,
        receive_maximum: Option<u16>,
    ) -> Result<(Conn, ConnAck), BenchError> {
        let connect_err = |source: io::Error| BenchError::Connect {
            client: name.clone(),
            addr,
            source,
        };
        let stream = crate::tcp::connect(addr, source)
            .await
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let mut conn = Conn {
            name: name.clone(),
            stream,
            version: opts.version,
            rbuf: BytesMut::with_capacity(opts.read_chunk),
            wbuf: BytesMut::with_capacity(4096),
            read_chunk: opts.read_chunk,
        };
        let connect = Packet::Connect(Connect {
            protocol: opts.version,
            clean_start: true,
            keep_alive: opts.keep_alive,
            client_id: name.clone(),
            will: None,
            username: opts.username.clone(),
            password: opts.password.clone().map(Into::into),
            properties: ConnectProperties {
                receive_maximum,
                maximum_packet_size: (opts.version == ProtocolVersion::V5)
                    .then_some(MAX_PACKET as u32),
                ..Default::default()
            },
        });
        conn.queue(&connect)?;
        conn.flush().await?;
        match conn.read_packet().await? {
            Packet::ConnAck(ack) if !ack.reason.is_error() => Ok((conn, ack)),
            Packet::ConnAck(ack) => Err(BenchError::Refused {
                client: name,
                reason: ack.reason.0,
            }),
            other => Err(conn.protocol(format!("expected CONNACK, got {}", other.name()))),
        }
    }

    pub fn protocol(&self, detail: String) -> BenchError {
        BenchError::Protocol {
            client: self.name.clone(),
            detail,
        }
    }

    pub fn io(&self, source: io::Error) -> BenchError {
        BenchError::Io {
            client: self.name.clone(),
            source,
        }
    }

    /// Encodes `packet` onto the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), BenchError> {
        encode(packet, self.version, &mut self.wbuf).map_err(|e| BenchError::Encode {
            client: self.name.clone(),
            source: e,
        })
    }

    /// Queues a successful PUBACK, PUBREC or PUBCOMP (`ack` is its first byte, e.g.
    /// [`PUBACK`]) in its four-byte form, which MQTT 3.1.1 and 5.0 share. A subscriber
    /// acknowledges every message; going through the general encoder for each cost the
    /// load generator about 5 % of its CPU at fan-out.
    pub fn queue_ack(&mut self, ack: u8, packet_id: u16) {
        let [hi, lo] = packet_id.to_be_bytes();
        self.wbuf.extend_from_slice(&[ack, 2, hi, lo]);
    }

    /// Writes out the write buffer.
    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match r {
            Ok(r) => r.map_err(|e| self.io(e)),
            Err(_) => Err(BenchError::Timeout(format!(
                "{}: the broker read nothing from this connection for {WRITE_TIMEOUT:?}",
                self.name
            ))),
        }
    }

    /// Reads until one whole packet is buffered and decodes it (setup and teardown only).
    pub async fn read_packet(&mut self) -> Result<Packet, BenchError> {
        loop {
            if let Some(p) = self.decode_one()? {
                return Ok(p);
            }
            self.stream.readable().await.map_err(|e| self.io(e))?;
            self.try_fill()?;
        }
    }

    /// Decodes one packet from the front of the read buffer with the codec.
    pub fn decode_one(&mut self) -> Result<Option<Packet>, BenchError> {
        decode(&mut self.rbuf, Some(self.version), MAX_PACKET).map_err(|e| BenchError::Decode {
            client: self.name.clone(),
            source: e,
        })
    }

    /// Reads whatever the socket has without waiting, up to about one read chunk.
    /// Returns the number of bytes read; the broker closing the connection is an error.
    pub fn try_fill(&mut self) -> Result<usize, BenchError> {
        let mut total = 0;
        while total < self.read_chunk {
            if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
                self.rbuf.reserve(self.read_chunk);
            }
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => {
                    return Err(self.io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "broker closed the connection",
                    )))
                }
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(total)
    }

    /// Drops `n` bytes from the front of the read buffer.
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }

    /// Sends DISCONNECT and closes the write side; errors are ignored (the run is over).
    pub async fn close(mut self) {
        self.wbuf.clear();
        if self.queue(&Packet::Disconnect(Default::default())).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }
}

/// A human-readable v5 reason code.
pub fn reason_str(r: ReasonCode) -> String {
    format!("{:#04x}", r.0)
}

#[cfg(test)]
mod ack_tests {
    use super::*;
    use tern_codec::{Packet, ProtocolVersion, PubResponse};

    #[test]
    fn short_acks_are_what_the_codec_encodes_in_both_versions() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for id in [1u16, 0x1234, u16::MAX] {
                for (first, packet) in [
                    (PUBACK, Packet::PubAck(PubResponse::new(id))),
                    (PUBREC, Packet::PubRec(PubResponse::new(id))),
                    (PUBCOMP, Packet::PubComp(PubResponse::new(id))),
                ] {
                    let mut want = BytesMut::new();
                    encode(&packet, version, &mut want).expect("encode");
                    let [hi, lo] = id.to_be_bytes();
                    assert_eq!(&want[..], &[first, 2, hi, lo], "{version:?} {packet:?}");
                }
            }
        }
    }
}
