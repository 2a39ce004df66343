//! A TCP accept loop: one task per connection, a cap on open connections, and an orderly
//! stop (stop accepting, let connections finish, then abort what is left). Connection
//! tasks live in the loop's own `JoinSet`, so aborting the loop's task ends them all.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;

/// Pending connections the kernel queues for us (it caps this at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// First pause after an accept error that is not about one connection (e.g. EMFILE).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "connection limit reached" warning per this interval.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long `stop_accepting` waits for the loop to confirm it closed the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Binds a listening TCP socket with a generous backlog.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    active: AtomicUsize,
}

/// A snapshot of [`ListenerStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// Connections accepted and handed to a connection task.
    pub accepted: u64,
    /// Connections closed at once because `max_connections` were open.
    pub rejected: u64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    pub accept_errors: u64,
    /// Connection tasks running now.
    pub active: usize,
}

impl ListenerStats {
    pub fn counts(&self) -> ListenerCounts {
        ListenerCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Accepting,
    /// Not accepting; connections run on.
    Draining,
    /// Abort whatever connections are left and end.
    Stopped,
}

/// A running accept loop. Dropping it aborts the loop and every connection task.
pub(crate) struct AcceptLoop {
    phase: watch::Sender<Phase>,
    closed: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
    stats: Arc<ListenerStats>,
}

impl AcceptLoop {
    /// Starts accepting on `listener`, calling `handler` for each connection (inside its
    /// own task) while fewer than `max_connections` are open. `name` labels log lines.
    pub(crate) fn spawn<H, F>(
        name: &'static str,
        listener: TcpListener,
        max_connections: usize,
        handler: H,
    ) -> Self
    where
        H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (phase_tx, phase_rx) = watch::channel(Phase::Accepting);
        let (closed_tx, closed_rx) = oneshot::channel();
        let stats = Arc::new(ListenerStats::default());
        let task = tokio::spawn(run(
            Config {
                name,
                max_connections: max_connections.max(1),
            },
            listener,
            handler,
            phase_rx,
            closed_tx,
            stats.clone(),
        ));
        Self {
            phase: phase_tx,
            closed: Some(closed_rx),
            task,
            stats,
        }
    }

    pub(crate) fn stats(&self) -> &Arc<ListenerStats> {
        &self.stats
    }

    /// Closes the listening socket; open connections carry on. Returns once the socket
    /// is closed (or after a short wait if the loop is unresponsive).
    pub(crate) async fn stop_accepting(&mut self) {
        self.phase.send_if_modified(|phase| {
            let was_accepting = *phase == Phase::Accepting;
            if was_accepting {
                *phase = Phase::Draining;
            }
            was_accepting
        });
        if let Some(closed) = self.closed.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
    }

    /// Stops accepting, aborts the connections still open and waits for the loop to end.
    pub(crate) async fn stop(&mut self) {
        let _ = self.phase.send(Phase::Stopped);
        let _ = (&mut self.task).await;
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Config {
    name: &'static str,
    max_connections: usize,
}

/// Holds a connection's slot under `max_connections` and its place in the active count,
/// and gives both back however the task ends (finished, panicked or aborted).
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ListenerStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run<H, F>(
    config: Config,
    listener: TcpListener,
    handler: H,
    mut phase: watch::Receiver<Phase>,
    closed: oneshot::Sender<()>,
    stats: Arc<ListenerStats>,
) where
    H: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let name = config.name;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut last_reject_log: Option<Instant> = None;
    let mut unlogged_rejects = 0u64;
    let mut pause: Option<Duration> = None;

    loop {
        tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p != Phase::Accepting) => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => report(name, done),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = MIN_BACKOFF;
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        drop(stream);
                        let total = stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                        unlogged_rejects += 1;
                        if last_reject_log.is_none_or(|at| at.elapsed() >= REJECT_LOG_INTERVAL) {
                            tracing::warn!(
                                listener = name,
                                %peer,
                                max_connections = config.max_connections,
                                rejected_since_last_warning = unlogged_rejects,
                                rejected_total = total,
                                "connection limit reached; closing new connections"
                            );
                            last_reject_log = Some(Instant::now());
                            unlogged_rejects = 0;
                        }
                        continue;
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(listener = name, %peer, %error, "cannot set TCP_NODELAY");
                    }
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    stats.active.fetch_add(1, Ordering::Relaxed);
                    let slot = Slot { _permit: permit, stats: stats.clone() };
                    let connection = handler(stream, peer);
                    connections.spawn(async move {
                        let _slot = slot;
                        connection.await;
                    });
                }
                Err(error) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if is_per_connection(&error) {
                        tracing::debug!(
                            listener = name, %error,
                            "accept failed for one connection"
                        );
                        continue;
                    }
                    tracing::error!(
                        listener = name,
                        %error,
                        backoff_ms = backoff.as_millis() as u64,
                        "accept failed; pausing before the next attempt"
                    );
                    pause = Some(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
        if let Some(pause) = pause.take() {
            tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p != Phase::Accepting) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    drop(listener);
    let _ = closed.send(());
    tracing::debug!(
        listener = name,
        open = connections.len(),
        "stopped accepting"
    );

    while !connections.is_empty() {
        tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p == Phase::Stopped) => break,
            Some(done) = connections.join_next() => report(name, done),
        }
    }
    if !connections.is_empty() {
        tracing::debug!(
            listener = name,
            open = connections.len(),
            "aborting connections still open"
        );
    }
    connections.shutdown().await;
}

/// Errors that concern one incoming connection, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::PermissionDenied
    )
}

fn report(name: &'static str, done: Result<(), JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(listener = name, %error, "connection task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A handler that keeps each connection open until the client closes it.
    async fn hold_open(mut stream: TcpStream, _peer: SocketAddr) {
        let mut buf = [0u8; 64];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    }

    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn is_closed_by_server(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_counted() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = AcceptLoop::spawn("test", listener, 2, hold_open);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        assert!(eventually(|| accept.stats().counts().active == 2).await);
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(
            is_closed_by_server(&mut c).await,
            "third connection should be closed"
        );
        let counts = accept.stats().counts();
        assert_eq!((counts.accepted, counts.rejected, counts.active), (2, 1, 2));
        // A slot frees up when a connection ends.
        drop(_a);
        assert!(eventually(|| accept.stats().counts().active == 1).await);
        let _d = TcpStream::connect(addr).await.unwrap();
        assert!(eventually(|| accept.stats().counts().accepted == 3).await);
    }

    #[tokio::test]
    async fn stop_accepting_then_stop_ends_open_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accept = AcceptLoop::spawn("test", listener, 10, hold_open);
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert!(eventually(|| accept.stats().counts().active == 1).await);
        accept.stop_accepting().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener should be closed"
        );
        assert_eq!(
            accept.stats().counts().active,
            1,
            "open connection survives draining"
        );
        accept.stop().await;
        assert!(is_closed_by_server(&mut open).await);
        assert_eq!(accept.stats().counts().active, 0);
    }

    #[tokio::test]
    async fn dropping_the_loop_closes_listener_and_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = AcceptLoop::spawn("test", listener, 10, hold_open);
        let mut open = TcpStream::connect(addr).await.unwrap();
        let stats = accept.stats().clone();
        assert!(eventually(|| stats.counts().active == 1).await);
        drop(accept);
        assert!(is_closed_by_server(&mut open).await);
        assert!(eventually(|| stats.counts().active == 0).await);
    }

    #[tokio::test]
    async fn a_panicking_connection_does_not_stop_the_loop() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = AcceptLoop::spawn("test", listener, 10, |_stream, _peer| async {
            panic!("handler bug")
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        assert!(
            eventually(
                || accept.stats().counts().accepted == 1 && accept.stats().counts().active == 0
            )
            .await
        );
        let _b = TcpStream::connect(addr).await.unwrap();
        assert!(eventually(|| accept.stats().counts().accepted == 2).await);
    }
}
