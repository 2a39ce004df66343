//! Settings of the node-to-node transport. The defaults suit links across regions: a
//! keep-alive well inside the idle timeout (the lower of the two peers' idle timeouts wins,
//! and quinn sends no keep-alives by default), and flow-control windows larger than
//! quinn's LAN-sized defaults. Durations are in milliseconds so they read plainly in TOML
//! and environment variables.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};
use serde::{Deserialize, Serialize};

use super::envelope::{DEFAULT_MAX_FRAME_LEN, MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION};
use super::udp_socket;
use super::TransportError;

/// Congestion controller of every link. quinn marks BBR experimental.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    #[default]
    Cubic,
    Bbr,
    NewReno,
}

/// Default of `max_udp_payload`: fewer, larger datagrams where the path allows (each QUIC
/// packet is sealed, sent and acknowledged separately, and on one machine those costs
/// took a fifth of a node's CPU at 1,452 bytes).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 6_400;
/// Highest `max_udp_payload` accepted. quinn hands the kernel up to 10 datagrams in one
/// segmentation-offload send, and Linux refuses a send over 65,507 bytes with EMSGSIZE,
/// which quinn takes for a lost MTU probe: with larger datagrams a busy link lost every
/// full batch, silently, and stalled.
pub const MAX_UDP_PAYLOAD_LIMIT: u16 = 6_500;
/// Default of `udp_receive_buffer` and `udp_send_buffer`: 4 MiB, room for dozens of
/// offloaded bursts of ten 6,400-byte datagrams, and what the development machine's
/// `net.core.rmem_max` allows. A host with a lower cap grants less, and the node warns.
pub const DEFAULT_UDP_BUFFER: usize = 4 * 1024 * 1024;
/// Largest socket buffer accepted (the kernel takes an `int` and doubles it).
const MAX_UDP_BUFFER: usize = 1 << 30;
/// quinn's (and QUIC's) smallest datagram.
const MIN_UDP_PAYLOAD: u16 = 1_200;

/// Tuning of the QUIC links and of the transport's own timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// PING interval on an idle link; keeps NAT bindings and the idle timer alive.
    pub keep_alive_interval_ms: u64,
    /// A link with no traffic (keep-alives included) for this long is dead.
    pub max_idle_timeout_ms: u64,
    /// Bound on the QUIC handshake plus the Hello exchange of a new link.
    pub handshake_timeout_ms: u64,
    /// Per-stream receive window, bytes: bandwidth x round trip of the slowest link.
    pub stream_receive_window: u64,
    /// Per-connection receive window, bytes (all streams of a link together).
    pub receive_window: u64,
    /// Per-connection send window, bytes.
    pub send_window: u64,
    pub congestion: Congestion,
    /// Largest UDP payload a link uses and accepts, bytes. Links start at 1,200 and path
    /// MTU discovery raises them towards this where the path carries it (loopback, jumbo
    /// frames, some cloud networks); on a 1,500-byte path probes above it are lost and the
    /// link stays at what the path carries. At most [`MAX_UDP_PAYLOAD_LIMIT`].
    pub max_udp_payload: u16,
    /// Kernel receive buffer of the cluster's UDP socket, bytes (0: the system's default,
    /// about 208 KiB on Linux, which busy links overflow). Capped by `net.core.rmem_max`.
    pub udp_receive_buffer: usize,
    /// Kernel send buffer of the cluster's UDP socket, bytes (0: the system's default).
    /// Capped by `net.core.wmem_max`.
    pub udp_send_buffer: usize,
    /// Largest frame accepted or sent (length prefix excluded).
    pub max_frame_len: u32,
    /// Concurrent RPC streams a peer may open (Raft pipelines a few per peer).
    pub max_concurrent_bidi_streams: u32,
    /// Concurrent lane streams a peer may open.
    pub max_concurrent_uni_streams: u32,
    /// First redial delay after a failed dial; doubles up to `redial_max_backoff_ms`.
    pub redial_initial_backoff_ms: u64,
    pub redial_max_backoff_ms: u64,
    /// Incoming lane frames queued for the consumer before lane streams stop being read
    /// (and QUIC flow control pushes back on the senders).
    pub incoming_frames_capacity: usize,
    /// Highest cluster protocol version this node offers in its Hello; each link speaks
    /// the highest version both ends offer. From `MIN_COMPATIBLE_VERSION` to
    /// `PROTOCOL_VERSION` (the default). 1 sends forwarded batches in the named form of
    /// earlier releases instead of the compact one.
    pub protocol_version: u16,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval_ms: 5_000,
            max_idle_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            stream_receive_window: 8 * 1024 * 1024,
            receive_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            congestion: Congestion::Cubic,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            udp_receive_buffer: DEFAULT_UDP_BUFFER,
            udp_send_buffer: DEFAULT_UDP_BUFFER,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_concurrent_bidi_streams: 256,
            max_concurrent_uni_streams: 64,
            redial_initial_backoff_ms: 100,
            redial_max_backoff_ms: 10_000,
            incoming_frames_capacity: 4096,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

impl TransportConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn redial_initial_backoff(&self) -> Duration {
        Duration::from_millis(self.redial_initial_backoff_ms.max(1))
    }

    pub fn redial_max_backoff(&self) -> Duration {
        Duration::from_millis(
            self.redial_max_backoff_ms
                .max(self.redial_initial_backoff_ms)
                .max(1),
        )
    }

    pub(crate) fn udp_buffer_sizes(&self) -> udp_socket::BufferSizes {
        udp_socket::BufferSizes {
            receive: self.udp_receive_buffer,
            send: self.udp_send_buffer,
        }
    }

    /// quinn's endpoint config: datagrams up to `max_udp_payload` are accepted (and peers
    /// told so, which bounds what they send).
    pub fn to_quinn_endpoint(&self) -> Result<quinn::EndpointConfig, TransportError> {
        let mut e = quinn::EndpointConfig::default();
        e.max_udp_payload_size(self.max_udp_payload)
            .map_err(|_| TransportError::Config("max_udp_payload: out of range".into()))?;
        Ok(e)
    }

    /// quinn's transport config from these settings; an out-of-range value names its key.
    pub fn to_quinn(&self) -> Result<quinn::TransportConfig, TransportError> {
        let bad = |key: &str, why: &str| TransportError::Config(format!("{key}: {why}"));
        let varint =
            |key: &str, v: u64| VarInt::from_u64(v).map_err(|_| bad(key, "value too large"));
        if self.keep_alive_interval_ms == 0
            || self.keep_alive_interval_ms >= self.max_idle_timeout_ms
        {
            return Err(bad(
                "keep_alive_interval_ms",
                "must be above 0 and below max_idle_timeout_ms",
            ));
        }
        if !(MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD_LIMIT).contains(&self.max_udp_payload) {
            return Err(bad(
                "max_udp_payload",
                "must be from 1200 to 6500 (10 datagrams of it must fit one 64 KiB send)",
            ));
        }
        for (key, size) in [
            ("udp_receive_buffer", self.udp_receive_buffer),
            ("udp_send_buffer", self.udp_send_buffer),
        ] {
            if size > MAX_UDP_BUFFER {
                return Err(bad(key, "must be at most 1073741824 (1 GiB)"));
            }
        }
        if !(MIN_COMPATIBLE_VERSION..=PROTOCOL_VERSION).contains(&self.protocol_version) {
            return Err(bad(
                "protocol_version",
                &format!(
                    "this build speaks versions {MIN_COMPATIBLE_VERSION} to {PROTOCOL_VERSION}"
                ),
            ));
        }
        if self.max_frame_len == 0 {
            return Err(bad("max_frame_len", "must be above 0"));
        }
        if self.incoming_frames_capacity == 0 {
            return Err(bad("incoming_frames_capacity", "must be above 0"));
        }
        let idle = IdleTimeout::try_from(Duration::from_millis(self.max_idle_timeout_ms))
            .map_err(|_| bad("max_idle_timeout_ms", "value too large"))?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_interval_ms)))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(varint("stream_receive_window", self.stream_receive_window)?)
            .receive_window(varint("receive_window", self.receive_window)?)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into())
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into());
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
        };
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_and_bad_values_name_their_key() {
        TransportConfig::default().to_quinn().expect("defaults");
        for congestion in [Congestion::Cubic, Congestion::Bbr, Congestion::NewReno] {
            let c = TransportConfig {
                congestion,
                ..Default::default()
            };
            c.to_quinn().expect("congestion");
        }
        let bad = TransportConfig {
            keep_alive_interval_ms: 60_000,
            ..Default::default()
        };
        let err = bad.to_quinn().expect_err("keep-alive above idle");
        assert!(err.to_string().contains("keep_alive_interval_ms"), "{err}");
    }

    #[test]
    fn max_udp_payload_is_bounded_so_a_full_offload_send_fits_64_kib() {
        assert!(10 * u32::from(MAX_UDP_PAYLOAD_LIMIT) <= 65_507);
        for ok in [1_200, DEFAULT_MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD_LIMIT] {
            let c = TransportConfig {
                max_udp_payload: ok,
                ..Default::default()
            };
            c.to_quinn().expect("in range");
            c.to_quinn_endpoint().expect("in range");
        }
        for bad in [0, 1_199, MAX_UDP_PAYLOAD_LIMIT + 1, 9_000] {
            let c = TransportConfig {
                max_udp_payload: bad,
                ..Default::default()
            };
            let err = c.to_quinn().expect_err("out of range");
            assert!(err.to_string().contains("max_udp_payload"), "{err}");
        }
    }

    #[test]
    fn protocol_version_must_be_one_this_build_speaks() {
        for ok in MIN_COMPATIBLE_VERSION..=PROTOCOL_VERSION {
            let c = TransportConfig {
                protocol_version: ok,
                ..Default::default()
            };
            c.to_quinn().expect("spoken");
        }
        for bad in [0, PROTOCOL_VERSION + 1] {
            let c = TransportConfig {
                protocol_version: bad,
                ..Default::default()
            };
            let err = c.to_quinn().expect_err("not spoken");
            assert!(err.to_string().contains("protocol_version"), "{err}");
        }
    }

    #[test]
    fn udp_buffers_above_one_gib_are_refused() {
        for key in ["udp_receive_buffer", "udp_send_buffer"] {
            let mut c = TransportConfig::default();
            match key {
                "udp_receive_buffer" => c.udp_receive_buffer = MAX_UDP_BUFFER + 1,
                _ => c.udp_send_buffer = MAX_UDP_BUFFER + 1,
            }
            let err = c.to_quinn().expect_err("too large");
            assert!(err.to_string().contains(key), "{err}");
            c.udp_receive_buffer = 0;
            c.udp_send_buffer = MAX_UDP_BUFFER;
            c.to_quinn().expect("0 and 1 GiB are accepted");
        }
    }
}
