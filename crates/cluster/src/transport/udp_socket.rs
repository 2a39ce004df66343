//! The cluster endpoint's UDP socket, with kernel buffers sized for busy links.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. quinn sends up to
//! ten datagrams in one offloaded `sendmsg`, so a few such bursts fill it while the
//! receiving node's endpoint task waits for a core, and the kernel drops what does not
//! fit (`RcvbufErrors` in `/proc/net/snmp`). QUIC then takes the drops for congestion and
//! shrinks its window: on one machine, cross-node pairs saw over a hundred drops a second
//! and left a sixth of the CPU idle. Larger buffers absorb the bursts.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::SockRef;
use tracing::{info, warn};

/// Usable buffer sizes: asked for (0: the system's default), or granted by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    pub receive: usize,
    pub send: usize,
}

/// Binds `listen` and sizes its buffers. A kernel limit below the request
/// (`net.core.rmem_max`, `net.core.wmem_max`) is not an error: the socket keeps what the
/// kernel grants and a warning names the sysctl to raise.
pub fn bind(listen: SocketAddr, asked: BufferSizes) -> io::Result<(UdpSocket, BufferSizes)> {
    let socket = UdpSocket::bind(listen)?;
    let granted = size_buffers(&socket, asked)?;
    info!(
        receive_bytes = granted.receive,
        send_bytes = granted.send,
        "cluster UDP socket buffers"
    );
    Ok((socket, granted))
}

fn size_buffers(socket: &UdpSocket, asked: BufferSizes) -> io::Result<BufferSizes> {
    let sock = SockRef::from(socket);
    if asked.receive > 0 {
        sock.set_recv_buffer_size(asked.receive)?;
    }
    if asked.send > 0 {
        sock.set_send_buffer_size(asked.send)?;
    }
    let granted = BufferSizes {
        receive: usable(sock.recv_buffer_size()?),
        send: usable(sock.send_buffer_size()?),
    };
    // Less than asked means the sysctl's cap applied.
    if granted.receive < asked.receive {
        warn!(
            asked = asked.receive,
            granted = granted.receive,
            "the kernel capped the cluster UDP receive buffer; raise net.core.rmem_max"
        );
    }
    if granted.send < asked.send {
        warn!(
            asked = asked.send,
            granted = granted.send,
            "the kernel capped the cluster UDP send buffer; raise net.core.wmem_max"
        );
    }
    Ok(granted)
}

/// Linux sets, and reports, twice the size asked for (capped by the sysctl first): the
/// other half is for its own bookkeeping.
fn usable(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn asked_sizes_are_set_up_to_the_kernel_limits() {
        let small = 64 * 1024;
        let (_socket, granted) = bind(
            loopback(),
            BufferSizes {
                receive: small,
                send: small,
            },
        )
        .expect("bind");
        // 64 KiB is under every default cap, so it is granted as asked.
        assert_eq!(
            granted,
            BufferSizes {
                receive: small,
                send: small
            }
        );
    }

    #[test]
    fn zero_keeps_the_system_default() {
        let (socket, granted) = bind(
            loopback(),
            BufferSizes {
                receive: 0,
                send: 0,
            },
        )
        .expect("bind");
        let plain = UdpSocket::bind(loopback()).expect("bind");
        let sock = SockRef::from(&plain);
        assert_eq!(
            granted.receive,
            usable(sock.recv_buffer_size().expect("size"))
        );
        assert_eq!(granted.send, usable(sock.send_buffer_size().expect("size")));
        drop(socket);
    }
}
