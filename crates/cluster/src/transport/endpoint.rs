//! The [`Transport`]: one quinn endpoint per node that both accepts and dials, the Hello
//! exchange that turns a QUIC connection into a link, and the dialler that keeps a link
//! to every known peer up (redialling with capped exponential backoff).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::ConnectionError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn};

use super::config::TransportConfig;
use super::envelope::{Envelope, FrameKind, Hello, MIN_COMPATIBLE_VERSION};
use super::lanes::{self, IncomingFrame};
use super::peers::{Link, LinkConnection, LinkStatus, Peer, Peers};
use super::rpc::{self, Handlers};
use super::streamio::{read_frame, write_frame};
use super::tls::{self, TlsIdentity, CLUSTER_SERVER_NAME};
use super::udp_socket;
use super::{
    TransportError, CLOSE_DUPLICATE, CLOSE_PROTOCOL, CLOSE_REFUSED, CLOSE_REMOVED, CLOSE_SHUTDOWN,
    RPC_PRIORITY,
};
use crate::types::{NodeId, NodeInfo};

/// How long [`Transport::shutdown`] waits for peers to acknowledge the close.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// State shared by the handle and the transport's tasks.
pub(crate) struct Inner {
    pub local: NodeId,
    pub settings: TransportConfig,
    pub endpoint: quinn::Endpoint,
    /// The kernel's count of datagrams dropped on the endpoint's socket.
    udp_drops: udp_socket::DropCounter,
    pub hello: Hello,
    pub peers: Peers,
    pub handlers: Handlers,
    pub incoming_tx: mpsc::Sender<IncomingFrame>,
    incoming_rx: Mutex<Option<mpsc::Receiver<IncomingFrame>>>,
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

/// Closes the endpoint when the last [`Transport`] handle is dropped: the transport's
/// own tasks hold `Inner`, so without this a forgotten handle would keep the port bound.
struct ShutdownGuard(Arc<Inner>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.begin_shutdown();
    }
}

/// A node's end of the cluster transport. Cheap to clone; the transport shuts down when
/// [`Transport::shutdown`] is called or the last clone is dropped.
///
/// Links: [`Transport::connect`] (or [`Transport::add_peer`]) makes this node keep a link
/// to a peer, redialling it after it drops. A peer that dials us gets a link too, but we
/// only redial peers whose address we were given. If both nodes dial each other, the link
/// initiated by the lower node id is kept (see `peers.rs`).
#[derive(Clone)]
pub struct Transport {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<ShutdownGuard>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local", &self.inner.local)
            .field("addr", &self.inner.endpoint.local_addr().ok())
            .finish()
    }
}

/// A random number per process start, without a dependency on `rand`.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `d` plus up to 25 %, so that peers do not redial in lockstep.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64((random_u64() % 250) as f64 / 1000.0)
}

impl Transport {
    /// Binds the node's endpoint on `listen` (port 0 picks one) and starts accepting
    /// links. Must run inside a Tokio runtime (it spawns the accept loop). `info` goes into this node's Hello; an empty `cluster_addr` advertises the
    /// bound address. The certificate in `tls` must be issued for `local`.
    pub fn bind(
        settings: TransportConfig,
        tls: &TlsIdentity,
        local: NodeId,
        listen: SocketAddr,
        info: NodeInfo,
    ) -> Result<Self, TransportError> {
        if tls.node_id() != local {
            return Err(TransportError::Config(format!(
                "the node certificate is for node {}, but this node is {local}",
                tls.node_id()
            )));
        }
        Self::bind_with(settings, tls, local, listen, info, |_| {})
    }

    /// [`Transport::bind`] with a hook on the Hello this node sends (tests use it to play
    /// an incompatible or lying peer).
    pub(crate) fn bind_with(
        settings: TransportConfig,
        tls: &TlsIdentity,
        local: NodeId,
        listen: SocketAddr,
        info: NodeInfo,
        tweak_hello: impl FnOnce(&mut Hello),
    ) -> Result<Self, TransportError> {
        tls::install_crypto_provider();
        let transport = Arc::new(settings.to_quinn()?);
        let tls_err = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
        let server_crypto =
            QuicServerConfig::try_from(tls.server_config()?).map_err(|e| tls_err(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto =
            QuicClientConfig::try_from(tls.client_config()?).map_err(|e| tls_err(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let bind_err = |e: std::io::Error| TransportError::Bind {
            addr: listen.to_string(),
            reason: e.to_string(),
        };
        let (socket, _) =
            udp_socket::bind(listen, settings.udp_buffer_sizes()).map_err(bind_err)?;
        let udp_drops = udp_socket::DropCounter::of(&socket);
        let mut endpoint = quinn::Endpoint::new(
            settings.to_quinn_endpoint()?,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_err)?;

        let cluster_addr = if info.cluster_addr.is_empty() {
            local_addr.to_string()
        } else {
            info.cluster_addr
        };
        let mut hello = Hello {
            protocol_version: settings.protocol_version,
            min_compatible: MIN_COMPATIBLE_VERSION,
            node_id: local,
            cluster_addr,
            region: info.region,
            incarnation: random_u64(),
        };
        tweak_hello(&mut hello);

        let (incoming_tx, incoming_rx) = mpsc::channel(settings.incoming_frames_capacity);
        let inner = Arc::new(Inner {
            local,
            settings,
            endpoint,
            udp_drops,
            hello,
            peers: Peers::default(),
            handlers: Handlers::default(),
            incoming_tx,
            incoming_rx: Mutex::new(Some(incoming_rx)),
            shutdown: watch::channel(false).0,
            accept_task: Mutex::new(None),
        });
        let accept = tokio::spawn(accept_loop(inner.clone()));
        *inner.accept_task.lock() = Some(accept);
        info!(node = local, %local_addr, "cluster transport listening");
        Ok(Self {
            _guard: Arc::new(ShutdownGuard(inner.clone())),
            inner,
        })
    }

    pub fn local_id(&self) -> NodeId {
        self.inner.local
    }

    /// The bound UDP address (the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| TransportError::Bind {
                addr: "endpoint".into(),
                reason: e.to_string(),
            })
    }

    /// Keeps a link to `peer` at `addr` from now on (redialling it whenever it drops)
    /// without waiting for it. Calling it again updates the address and redials at once.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        self.inner.add_peer(peer, addr).map(|_| ())
    }

    /// [`Transport::add_peer`], then waits until the link is up, or returns the error of
    /// the first dial attempt that failed (`Unreachable`, `Refused`), or `Unreachable`
    /// after the handshake timeout. The dialler keeps trying in the background either way.
    pub async fn connect(&self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        let p = self.inner.peers.get_or_insert(peer);
        let failed_before = p.state.lock().failed_dials;
        let mut changed = p.changed.subscribe();
        self.inner.add_peer(peer, addr)?;
        let deadline = Instant::now() + self.inner.settings.handshake_timeout();
        loop {
            if p.live_link().is_some() {
                return Ok(());
            }
            {
                let st = p.state.lock();
                if st.failed_dials > failed_before {
                    return Err(st
                        .last_error
                        .clone()
                        .unwrap_or(TransportError::Unreachable {
                            peer,
                            reason: "dial failed".into(),
                        }));
                }
            }
            match timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(TransportError::Closed),
                Err(_) => {
                    return Err(TransportError::Unreachable {
                        peer,
                        reason: "no link within the handshake timeout".into(),
                    })
                }
            }
        }
    }

    /// Waits until a link to `peer` is up (whoever dials), for at most `timeout`.
    pub async fn wait_connected(
        &self,
        peer: NodeId,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let p = self.inner.peers.get_or_insert(peer);
        let mut changed = p.changed.subscribe();
        let deadline = Instant::now() + timeout;
        while p.live_link().is_none() {
            match timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(TransportError::Closed),
                Err(_) => {
                    return Err(TransportError::Unreachable {
                        peer,
                        reason: "no link within the timeout".into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Stops dialling `peer` and closes its link (it left the cluster).
    pub fn remove_peer(&self, peer: NodeId) {
        if let Some(p) = self.inner.peers.remove(peer) {
            let (dialer, link) = {
                let mut st = p.state.lock();
                (st.dialer.take(), st.link.take())
            };
            if let Some(d) = dialer {
                d.abort();
            }
            if let Some(l) = link {
                l.conn
                    .close(CLOSE_REMOVED.into(), b"removed from the cluster");
            }
            p.notify();
        }
    }

    /// The link state of every known peer, by node id.
    pub fn links(&self) -> Vec<LinkStatus> {
        let local = self.inner.local;
        self.inner
            .peers
            .all()
            .iter()
            .map(|p| p.status(local))
            .collect()
    }

    /// Datagrams the kernel dropped on this node's cluster socket since it opened, mostly
    /// for a full receive buffer (`None` where the kernel does not say).
    pub fn udp_receive_drops(&self) -> Option<u64> {
        self.inner.udp_drops.read()
    }

    /// Whether the link to `peer` is up, and which one it is: cheap enough for the
    /// forwarding send loop, which asks on every wake-up.
    pub fn link_connection(&self, peer: NodeId) -> Option<LinkConnection> {
        self.inner.peers.get(peer).map(|p| p.connection())
    }

    /// Closes link `link` to `peer` for a protocol error (`reason` goes to the peer), if
    /// it is still the current one; the peer redials and the two sides start over on a
    /// new link.
    pub fn close_link(&self, peer: NodeId, link: u64, reason: &str) {
        let Some(p) = self.inner.peers.get(peer) else {
            return;
        };
        if let Some(current) = p.live_link().filter(|l| l.id == link) {
            warn!(
                node = self.inner.local,
                peer, "closing cluster link: {reason}"
            );
            current.conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
        }
    }

    /// The link state of one peer.
    pub fn link(&self, peer: NodeId) -> Option<LinkStatus> {
        self.inner
            .peers
            .get(peer)
            .map(|p| p.status(self.inner.local))
    }

    /// Takes the receiver of frames arriving on lanes (once; later calls get `None`).
    /// Until it is taken, frames queue up to `incoming_frames_capacity`, then lane
    /// streams stop being read and QUIC flow control slows the senders.
    pub fn take_incoming(&self) -> Option<mpsc::Receiver<IncomingFrame>> {
        self.inner.incoming_rx.lock().take()
    }

    /// Closes every link and the endpoint, then waits (briefly) until peers have seen
    /// the close. The endpoint must be closed before `wait_idle`, or a kept-alive link
    /// would hold it forever.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        if tokio::time::timeout(SHUTDOWN_DRAIN, self.inner.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!(
                node = self.inner.local,
                "transport shutdown: drain timed out"
            );
        }
    }
}

impl Inner {
    fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.endpoint
            .close(CLOSE_SHUTDOWN.into(), b"node shutting down");
        if let Some(t) = self.accept_task.lock().take() {
            t.abort();
        }
        for p in self.peers.all() {
            if let Some(d) = p.state.lock().dialer.take() {
                d.abort();
            }
            p.notify();
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn add_peer(
        self: &Arc<Self>,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<Arc<Peer>, TransportError> {
        if peer == self.local {
            return Err(TransportError::Config(format!(
                "node {peer} is this node; it cannot be its own peer"
            )));
        }
        if self.is_shut_down() {
            return Err(TransportError::Closed);
        }
        let p = self.peers.get_or_insert(peer);
        {
            let mut st = p.state.lock();
            st.addr = Some(addr);
            let running = st.dialer.as_ref().is_some_and(|d| !d.is_finished());
            if !running {
                st.dialer = Some(tokio::spawn(run_dialer(self.clone(), p.clone())));
            }
        }
        p.kick.notify_one();
        Ok(p)
    }

    /// The live link to `peer`, waiting for one until `deadline` only while a dial is
    /// under way. Fails fast (`Unreachable`) for an unknown peer, a peer we cannot dial,
    /// and a peer whose last dial failed, so that Raft backs off instead of blocking.
    pub(crate) async fn link_for(
        &self,
        peer: NodeId,
        deadline: Instant,
    ) -> Result<(Arc<Peer>, Link), TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::Closed);
        }
        let unreachable = |reason: String| TransportError::Unreachable { peer, reason };
        let p = self
            .peers
            .get(peer)
            .ok_or_else(|| unreachable("unknown peer".into()))?;
        let mut changed = p.changed.subscribe();
        loop {
            if let Some(link) = p.live_link() {
                return Ok((p, link));
            }
            {
                let st = p.state.lock();
                if st.addr.is_none() {
                    return Err(unreachable("no link, and no address to dial".into()));
                }
                if let Some(e) = &st.last_error {
                    return Err(unreachable(format!("last dial failed: {e}")));
                }
            }
            match timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) if !self.is_shut_down() => {}
                Ok(_) => return Err(TransportError::Closed),
                Err(_) => return Err(unreachable("no link within the timeout".into())),
            }
        }
    }

    /// The version a link with the sender of `hello` speaks, or why the Hello is refused.
    fn check_hello(&self, hello: &Hello, cert_id: NodeId) -> Result<u16, String> {
        let Some(version) = self.hello.negotiate(hello) else {
            return Err(format!(
                "node {} speaks protocol versions {}..={}, this node {} speaks {}..={}",
                hello.node_id,
                hello.min_compatible,
                hello.protocol_version,
                self.local,
                self.hello.min_compatible,
                self.hello.protocol_version
            ));
        };
        if hello.node_id != cert_id {
            return Err(format!(
                "peer claims to be node {} but its certificate is for node {cert_id}",
                hello.node_id
            ));
        }
        if hello.node_id == self.local {
            return Err(format!("peer claims this node's own id {}", self.local));
        }
        Ok(version)
    }

    /// Refuses a link: logged here, and the reason travels in the close frame.
    fn refuse(&self, conn: &quinn::Connection, remote: SocketAddr, reason: &str) {
        warn!(node = self.local, %remote, "refusing cluster link: {reason}");
        conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
    }

    /// Makes a connection whose Hello exchange succeeded, at `version`, the peer's link,
    /// unless the current link wins (see `peers.rs`). Returns whether it was installed.
    fn establish(
        self: &Arc<Self>,
        conn: quinn::Connection,
        initiator: NodeId,
        hello: &Hello,
        version: u16,
    ) -> bool {
        if self.is_shut_down() {
            conn.close(CLOSE_SHUTDOWN.into(), b"node shutting down");
            return false;
        }
        let peer = self.peers.get_or_insert(hello.node_id);
        let link = Link {
            id: self.peers.next_link_id(),
            conn: conn.clone(),
            initiator,
            incarnation: hello.incarnation,
            version,
        };
        let info = NodeInfo {
            cluster_addr: hello.cluster_addr.clone(),
            region: hello.region.clone(),
        };
        if !peer.install(self.local, link.clone(), info) {
            debug!(
                node = self.local,
                peer = hello.node_id,
                "duplicate link closed"
            );
            conn.close(CLOSE_DUPLICATE.into(), b"another link to this node is kept");
            return false;
        }
        info!(
            node = self.local,
            peer = hello.node_id,
            remote = %conn.remote_address(),
            initiator,
            "cluster link up"
        );
        tokio::spawn(drive_link(self.clone(), peer, link));
        true
    }
}

/// A link's failure as the dialler reports it: a close carrying a reason from the peer
/// (or a TLS rejection) is a refusal; silence is unreachability.
fn connection_error(peer: NodeId, e: &ConnectionError) -> TransportError {
    match e {
        ConnectionError::ApplicationClosed(close) => TransportError::Refused {
            peer,
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::ConnectionClosed(_)
        | ConnectionError::TransportError(_)
        | ConnectionError::VersionMismatch => TransportError::Refused {
            peer,
            reason: e.to_string(),
        },
        ConnectionError::LocallyClosed => TransportError::Closed,
        _ => TransportError::Unreachable {
            peer,
            reason: e.to_string(),
        },
    }
}

/// Accepts connections until the endpoint closes; each handshake runs on its own task,
/// so one bad peer never ends the loop.
async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(reason) = accept_one(&inner, incoming).await {
                debug!(node = inner.local, %remote, "incoming cluster link failed: {reason}");
            }
        });
    }
}

async fn accept_one(inner: &Arc<Inner>, incoming: quinn::Incoming) -> Result<(), String> {
    let remote = incoming.remote_address();
    let deadline = Instant::now() + inner.settings.handshake_timeout();
    let max = inner.settings.max_frame_len;
    let conn = timeout_at(deadline, incoming)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let cert_id = match tls::peer_node_id(&conn) {
        Ok(id) => id,
        Err(e) => {
            let reason = format!("unusable peer certificate: {e}");
            inner.refuse(&conn, remote, &reason);
            return Err(reason);
        }
    };
    let hello_exchange = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let env = read_frame(&mut recv, max, cert_id, None)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("stream ended before the Hello")?;
        let hello: Hello = env.body_as(FrameKind::Hello).map_err(|e| e.to_string())?;
        Ok::<_, String>((send, hello))
    };
    let (mut send, hello) = match timeout_at(deadline, hello_exchange).await {
        Ok(Ok(v)) => v,
        Ok(Err(reason)) => {
            inner.refuse(
                &conn,
                remote,
                &format!("bad Hello from node {cert_id}: {reason}"),
            );
            return Err(reason);
        }
        Err(_) => {
            inner.refuse(&conn, remote, "no Hello within the handshake timeout");
            return Err("Hello timed out".into());
        }
    };
    let version = match inner.check_hello(&hello, cert_id) {
        Ok(version) => version,
        Err(reason) => {
            inner.refuse(&conn, remote, &reason);
            return Err(reason);
        }
    };
    let reply = Envelope::of(FrameKind::Hello, &inner.hello).map_err(|e| e.to_string())?;
    write_frame(&mut send, &reply, max, cert_id, None)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    inner.establish(conn, cert_id, &hello, version);
    Ok(())
}

/// Dials `peer` once: QUIC handshake, certificate check, Hello exchange, install.
async fn dial(inner: &Arc<Inner>, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
    let deadline = Instant::now() + inner.settings.handshake_timeout();
    let max = inner.settings.max_frame_len;
    let unreachable = |reason: String| TransportError::Unreachable { peer, reason };
    let connecting = inner
        .endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = timeout_at(deadline, connecting)
        .await
        .map_err(|_| unreachable(format!("no QUIC handshake with {addr} in time")))?
        .map_err(|e| connection_error(peer, &e))?;
    let refused = |reason: String| {
        inner.refuse(&conn, addr, &reason);
        TransportError::Refused { peer, reason }
    };
    let cert_id = match tls::peer_node_id(&conn) {
        Ok(id) if id == peer => id,
        Ok(id) => {
            return Err(refused(format!(
                "{addr} was dialled as node {peer} but its certificate is for node {id}"
            )))
        }
        Err(e) => return Err(refused(format!("unusable peer certificate: {e}"))),
    };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connection_error(peer, &e))?;
        let _ = send.set_priority(RPC_PRIORITY);
        let hello = Envelope::of(FrameKind::Hello, &inner.hello)?;
        write_frame(&mut send, &hello, max, peer, None).await?;
        let _ = send.finish();
        let reply = read_frame(&mut recv, max, peer, None)
            .await?
            .ok_or_else(|| TransportError::ConnectionLost {
                peer,
                reason: "stream ended before the Hello".into(),
            })?;
        Ok::<Hello, TransportError>(reply.body_as(FrameKind::Hello)?)
    };
    let hello = match timeout_at(deadline, exchange).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            // A refusal arrives as the connection's close reason.
            let e = conn
                .close_reason()
                .map_or(e, |reason| connection_error(peer, &reason));
            if let TransportError::Refused { reason, .. } = &e {
                warn!(node = inner.local, peer, %addr, "node {peer} refused the link: {reason}");
            }
            conn.close(CLOSE_REFUSED.into(), b"Hello exchange failed");
            return Err(e);
        }
        Err(_) => {
            return Err(refused(
                "no Hello answer within the handshake timeout".into(),
            ))
        }
    };
    let version = inner.check_hello(&hello, cert_id).map_err(refused)?;
    inner.establish(conn, inner.local, &hello, version);
    Ok(())
}

/// Keeps a link to `peer` up while it has an address: waits while a link is live, and
/// dials when none is, backing off exponentially (with jitter, capped) after failures.
async fn run_dialer(inner: Arc<Inner>, peer: Arc<Peer>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut changed = peer.changed.subscribe();
    let initial = inner.settings.redial_initial_backoff();
    let max = inner.settings.redial_max_backoff();
    let mut backoff = initial;
    let mut failures = 0u64;
    let mut had_link = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if peer.live_link().is_some() {
            had_link = true;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        if had_link {
            // The link just dropped: pause briefly so both ends do not redial in lockstep.
            had_link = false;
            tokio::select! {
                () = tokio::time::sleep(jittered(initial)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let Some(addr) = peer.state.lock().addr else {
            return;
        };
        match dial(&inner, peer.id, addr).await {
            Ok(()) => {
                backoff = initial;
                failures = 0;
            }
            Err(e) => {
                if *shutdown.borrow() {
                    return;
                }
                failures += 1;
                if failures == 1 {
                    warn!(node = inner.local, peer = peer.id, %addr, "cannot reach node: {e}");
                } else {
                    debug!(node = inner.local, peer = peer.id, %addr, failures, "redial failed: {e}");
                }
                peer.record_dial_failure(e);
                tokio::select! {
                    () = tokio::time::sleep(jittered(backoff)) => {}
                    () = peer.kick.notified() => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// Serves a link's incoming streams until it closes, then forgets it.
async fn drive_link(inner: Arc<Inner>, peer: Arc<Peer>, link: Link) {
    let rpcs = async {
        while let Ok((send, recv)) = link.conn.accept_bi().await {
            tokio::spawn(rpc::serve(inner.clone(), peer.clone(), send, recv));
        }
    };
    let lanes = async {
        while let Ok(recv) = link.conn.accept_uni().await {
            tokio::spawn(lanes::receive(inner.clone(), peer.clone(), link.id, recv));
        }
    };
    tokio::join!(rpcs, lanes);
    peer.drop_link(link.id);
    let reason = link
        .conn
        .close_reason()
        .map_or_else(|| "unknown".to_string(), |r| r.to_string());
    info!(
        node = inner.local,
        peer = peer.id,
        "cluster link down: {reason}"
    );
}
