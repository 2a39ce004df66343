//! The cluster endpoint's UDP socket, with kernel buffers sized for busy links.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. quinn sends up to
//! ten datagrams in one offloaded `sendmsg`, so a few such bursts the receiving node has
//! not read yet fill it, and the kernel drops what does not fit (`RcvbufErrors` in
//! `/proc/net/snmp`). QUIC then takes the drops for congestion and shrinks its window: on
//! one machine, cross-node pairs saw over a hundred drops a second and left a sixth of the
//! CPU idle. Larger buffers absorb the bursts.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::SockRef;
use tracing::{info, warn};

/// Where the kernel counts a socket's dropped datagrams: its inode, the key of its line in
/// `/proc/self/net/udp` and `udp6`. `None` where there is no such file (not Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCounter {
    inode: Option<u64>,
}

impl DropCounter {
    #[cfg(unix)]
    pub fn of(socket: &UdpSocket) -> Self {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok();
        let inode = link.and_then(|l| socket_inode(&l.to_string_lossy()));
        Self { inode }
    }

    #[cfg(not(unix))]
    pub fn of(_socket: &UdpSocket) -> Self {
        Self { inode: None }
    }

    /// Datagrams the kernel dropped for this socket since it was opened (a full receive
    /// buffer, mostly), or `None` where the kernel does not say.
    pub fn read(&self) -> Option<u64> {
        let inode = self.inode?;
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find_map(|table| drops_in_table(&table, inode))
    }
}

/// The inode in a socket's `/proc/self/fd` link, `socket:[12345]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The `drops` column (the last) of the line for `inode` in a `/proc/net/udp` table; the
/// inode is the tenth column.
fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.last()?.parse().ok()
    })
}

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
    fn the_drops_column_is_read_from_the_line_of_the_inode() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:1F4A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:1F4B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0
";
        assert_eq!(drops_in_table(table, 4242), Some(17));
        assert_eq!(drops_in_table(table, 4343), Some(0));
        assert_eq!(drops_in_table(table, 99), None);
        assert_eq!(drops_in_table("garbage\nmore garbage", 4242), None);
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    /// A socket nobody reads, with the smallest receive buffer, loses what does not fit,
    /// and the counter sees it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_receive_buffer_shows_as_drops() {
        let (receiver, _) = bind(
            loopback(),
            BufferSizes {
                receive: 1,
                send: 0,
            },
        )
        .expect("bind");
        let counter = DropCounter::of(&receiver);
        assert_eq!(counter.read(), Some(0));
        let sender = UdpSocket::bind(loopback()).expect("bind");
        let to = receiver.local_addr().expect("addr");
        for _ in 0..200 {
            sender.send_to(&[0u8; 1000], to).expect("send");
        }
        let drops = counter.read().expect("drops");
        assert!(drops > 0 && drops <= 200, "{drops}");
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
