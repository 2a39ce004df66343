//! Client TCP connections, optionally from a chosen source address.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from `source` (any port), or from an address the kernel
/// picks.
pub(crate) async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => bound_to(ip)?.connect(addr).await,
    }
}

/// A socket bound to `ip`, its port left for `connect` to choose.
fn bound_to(ip: IpAddr) -> io::Result<TcpSocket> {
    let sock = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    defer_port_to_connect(&sock);
    // Ports whose earlier connections are in TIME_WAIT (ours close first) are fine for a
    // new connection to another address.
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::new(ip, 0))?;
    Ok(sock)
}

/// Lets `bind` take only the address and `connect` choose the port (Linux's
/// `IP_BIND_ADDRESS_NO_PORT`). A port chosen at bind time must not be held by any other
/// socket, TIME_WAIT ones included, and the kernel searches the whole port range for one
/// on every bind: once a run or two had left tens of thousands of TIME_WAIT sockets, a
/// storm from the same addresses spent a core in that search and slowed from about 20,000
/// to under 2,000 connections a second, some failing. At connect time a port only needs
/// a connection (address, port, peer) nobody else has. Where the option is missing the
/// bind picks the port as before.
fn defer_port_to_connect(sock: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: the descriptor is the open socket `sock` owns, and the option value is
        // a c_int of the length passed.
        let _ = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The port is chosen at connect time: after the bind the socket has none yet.
    #[cfg(target_os = "linux")]
    #[test]
    fn bind_takes_the_address_and_leaves_the_port_to_connect() {
        let sock = bound_to(IpAddr::from([127, 0, 0, 1])).expect("bind");
        let local = sock.local_addr().expect("local address");
        assert_eq!(local.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(local.port(), 0, "a port was taken at bind time");
    }

    #[tokio::test]
    async fn connects_from_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("listener address");
        let source = IpAddr::from([127, 0, 0, 2]);
        let (client, accepted) = tokio::join!(connect(addr, Some(source)), listener.accept());
        let client = client.expect("connect");
        let (_server, peer) = accepted.expect("accept");
        assert_eq!(peer.ip(), source);
        assert_ne!(client.local_addr().expect("local address").port(), 0);
    }
}
