//! One client connection: the CONNECT handshake, then a loop that reads packets, applies
//! them to the session, and writes what the session has to send.
//!
//! One task per connection owns everything about it (no lock on its own state). Writes
//! are batched: every packet produced in one turn of the loop goes into one buffer and
//! out in as few syscalls as the socket allows. When the client reads slowly, the buffer
//! stops growing past a high-water mark and messages wait in the session's bounded queue.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_codec::{
    decode, decode_connect_version, encode, ConnAck, ConnAckProperties, Connect, DecodeError,
    DecodeErrorKind, Disconnect, DisconnectProperties, Packet, ProtocolVersion, PubResponse,
    Publish, PublishProperties, QoS, ReasonCode, ReasonProperties, RetainHandling, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info};

use crate::auth::AuthOutcome;
use crate::broker::Broker;
use crate::mailbox::{mailbox, MailboxReceiver};
use crate::publish_writer::{PublishWriter, Unwritten};
use crate::registry::{ConnCommand, SessionSlot};
use crate::run::MessageRun;
use crate::session::{Resend, Session, Subscription};
use crate::stats::{DeliveryTally, DropReason};
use crate::{topic, Message};

/// Stop moving queued messages into the write buffer beyond this many bytes.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from the client while this much is waiting to be written to it.
const READ_PAUSE_AT: usize = 4 * WRITE_HIGH_WATER;
/// Reads of at most this many bytes in all since the read buffer was last empty, or a
/// write of fewer than `SMALL_WRITE` bytes, that leave their buffer empty mean a quiet
/// client (pings, acknowledgements): the buffer is freed rather than kept for the
/// connection's lifetime. (An empty `BytesMut` reads 64 bytes at first.)
const SMALL_READ: usize = 64;
const SMALL_WRITE: usize = 512;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Why the connection loop ended.
enum Exit {
    /// The client sent DISCONNECT; `keep_will` for v5 reason 0x04.
    Disconnected {
        keep_will: bool,
    },
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost,
    /// We close the connection with this reason (v5 clients get a DISCONNECT first).
    Close(ReasonCode, &'static str),
    /// Another connection took this client id.
    TakenOver {
        reply: oneshot::Sender<Session>,
        resume: bool,
    },
    Shutdown,
}

pub(crate) async fn run<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    listener: &'static str,
    conn_id: u64,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // On the heap, so that the tasks and futures that wrap this one (the listener's, the
    // broker's) stay small: nested futures each reserve room for what they await.
    Box::pin(run_boxed(broker, stream, peer, listener, conn_id, shutdown)).await
}

/// Memory per connection: everything the connection's future holds while it waits for the
/// client is with every idle client for its lifetime, so the handshake and the teardown
/// (large, short-lived futures) are boxed separately, and the read and write buffers are
/// given back when the client is idle (see docs/performance.md).
async fn run_boxed<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    listener: &'static str,
    conn_id: u64,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let Some((accepted, version, inbuf)) = Box::pin(handshake(
        &broker,
        &mut reader,
        &mut writer,
        peer,
        conn_id,
        &mut shutdown,
    ))
    .await
    else {
        return;
    };
    broker.stats.count_connect_outcome("success");
    let Accepted {
        mut conn,
        mut rx,
        connack,
    } = accepted;
    debug!(%peer, listener, client_id = %conn.client_id, version = version.label(), "client connected");

    let stats = &broker.stats;
    stats.connections_current.fetch_add(1, Ordering::Relaxed);
    stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let version_gauge = match version {
        ProtocolVersion::V311 => &stats.connections_v311,
        ProtocolVersion::V5 => &stats.connections_v5,
    };
    version_gauge.fetch_add(1, Ordering::Relaxed);

    conn.write_packet(&Packet::ConnAck(connack));
    conn.resend_inflight();
    // The handshake's 4 KiB are not kept for a client that sent nothing more. (Moved into
    // `drop`: a shadowed binding would keep it until the connection ends.)
    let inbuf = if inbuf.is_empty() {
        drop(inbuf);
        BytesMut::new()
    } else {
        inbuf
    };
    let exit = conn
        .serve(&mut reader, &mut writer, inbuf, &mut rx, &mut shutdown)
        .await;
    Box::pin(conn.finish(exit, &mut writer, &mut rx)).await;

    stats.connections_current.fetch_sub(1, Ordering::Relaxed);
    version_gauge.fetch_sub(1, Ordering::Relaxed);
}

/// Reads and checks the CONNECT, refusing it if need be. Returns the accepted connection,
/// its protocol version and the read buffer (which may hold the client's next packets).
async fn handshake<R, W>(
    broker: &Arc<Broker>,
    reader: &mut R,
    writer: &mut W,
    peer: SocketAddr,
    conn_id: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Accepted, ProtocolVersion, BytesMut)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut inbuf = BytesMut::with_capacity(4096);
    let max_in = broker.config().max_packet_size as usize;
    let timeout = Duration::from_secs(broker.config().connect_timeout_secs.max(1));

    let connect = tokio::select! {
        r = tokio::time::timeout(timeout, read_connect(reader, &mut inbuf, max_in)) => r,
        _ = shutdown.changed() => return None,
    };
    let connect = match connect {
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            broker.stats.count_connect_outcome("timeout");
            return None;
        }
        Ok(Err(ReadConnectError::Closed)) => return None,
        Ok(Err(ReadConnectError::Malformed(e, version))) => {
            broker.stats.count_malformed(e.kind.label());
            broker
                .stats
                .count_connect_outcome(e.kind.reason_code().name());
            info!(%peer, error = %e, "malformed CONNECT");
            // 5.0 answers every malformed CONNECT with a reason code; 3.1.1 has return codes
            // only for an unacceptable protocol version, so anything else is a plain close.
            let reason = e.kind.reason_code();
            let refuse = match version {
                Some(ProtocolVersion::V5) => Some((ProtocolVersion::V5, reason)),
                _ if reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => {
                    Some((ProtocolVersion::V311, reason))
                }
                _ => None,
            };
            if let Some((version, reason)) = refuse {
                refuse_connect(writer, version, reason).await;
            }
            return None;
        }
        Ok(Ok(connect)) => connect,
    };
    let version = connect.protocol;
    let accepted = match accept_connect(broker, connect, conn_id).await {
        Ok(accepted) => accepted,
        Err(reason) => {
            broker.stats.count_connect_outcome(reason.name());
            debug!(%peer, reason = reason.name(), "CONNECT refused");
            refuse_connect(writer, version, reason).await;
            return None;
        }
    };
    Some((accepted, version, inbuf))
}

enum ReadConnectError {
    Closed,
    Malformed(DecodeError, Option<ProtocolVersion>),
}

async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Connect, ReadConnectError> {
    loop {
        match decode(buf, None, max_packet_size) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => {
                let e = DecodeError::new(
                    DecodeErrorKind::FirstPacketNotConnect,
                    "first packet is not CONNECT",
                );
                return Err(ReadConnectError::Malformed(e, None));
            }
            Ok(None) => {}
            Err(e) => return Err(ReadConnectError::Malformed(e, decode_connect_version(buf))),
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadConnectError::Closed),
            Ok(_) => {}
        }
    }
}

async fn refuse_connect<W: AsyncWrite + Unpin>(
    writer: &mut W,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    let mut properties = ConnAckProperties::default();
    if version == ProtocolVersion::V5 {
        // CONNACK may carry a reason string whatever Request Problem Information says.
        properties.reason_string = Some(reason.name().replace('_', " "));
    }
    let connack = ConnAck {
        session_present: false,
        reason,
        properties,
    };
    let mut out = BytesMut::new();
    if encode(&Packet::ConnAck(connack), version, &mut out).is_ok() {
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            let _ = writer.write_all(&out).await;
            let _ = writer.shutdown().await;
        })
        .await;
    }
}

struct Accepted {
    conn: Connection,
    rx: MailboxReceiver,
    connack: ConnAck,
}

/// Checks a CONNECT, authenticates, claims the client id and builds the connection's
/// state. Returns the reason code to refuse with otherwise.
async fn accept_connect(
    broker: &Arc<Broker>,
    connect: Connect,
    conn_id: u64,
) -> Result<Accepted, ReasonCode> {
    let config = broker.config();
    let v5 = connect.protocol == ProtocolVersion::V5;
    if broker.is_shutting_down() {
        return Err(ReasonCode::SERVER_UNAVAILABLE);
    }
    if connect.properties.authentication_method.is_some() {
        return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
    }
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let id = format!("tern-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        Arc::from(id)
    } else if connect.client_id.len() > config.max_client_id_len {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    } else {
        Arc::from(connect.client_id.as_str())
    };

    let outcome = if connect.username.is_some() && connect.password.is_some() {
        // Password hashes are deliberately slow: keep them off the runtime's threads.
        let b = broker.clone();
        let (user, pass) = (connect.username.clone(), connect.password.clone());
        tokio::task::spawn_blocking(move || {
            b.authenticator
                .authenticate(user.as_deref(), pass.as_deref())
        })
        .await
        .unwrap_or(AuthOutcome::BadCredentials)
    } else {
        broker
            .authenticator
            .authenticate(connect.username.as_deref(), connect.password.as_deref())
    };
    match outcome {
        AuthOutcome::Allowed => {}
        AuthOutcome::BadCredentials => return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        AuthOutcome::NotAuthorized => return Err(ReasonCode::NOT_AUTHORIZED),
    }

    let will = match &connect.will {
        None => None,
        Some(w) => {
            if topic::validate_topic_name(&w.topic).is_err() {
                return Err(ReasonCode::TOPIC_NAME_INVALID);
            }
            if w.qos as u8 > config.maximum_qos {
                return Err(ReasonCode::QOS_NOT_SUPPORTED);
            }
            if w.retain && !config.retain_available {
                return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
            }
            // A will the client may not publish is never sent; the ACL does not change
            // while the client is connected, so decide now.
            broker
                .acl
                .check_publish(connect.username.as_deref(), &client_id, &w.topic)
                .then(|| {
                    let props = PublishProperties {
                        payload_format_indicator: w.properties.payload_format_indicator,
                        message_expiry_interval: w.properties.message_expiry_interval,
                        content_type: w.properties.content_type.clone(),
                        response_topic: w.properties.response_topic.clone(),
                        correlation_data: w.properties.correlation_data.clone(),
                        user_properties: w.properties.user_properties.clone(),
                        ..Default::default()
                    };
                    let message = Message::from_publish(
                        Arc::from(w.topic.as_str()),
                        w.payload.clone(),
                        w.qos,
                        w.retain,
                        client_id.clone(),
                        props,
                        Instant::now(),
                    );
                    (
                        Arc::new(message),
                        w.properties.will_delay_interval.unwrap_or(0),
                    )
                })
        }
    };

    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        config.v311_session_expiry_interval
    };
    let expiry = requested_expiry.min(config.max_session_expiry_interval);

    let (keep_alive, server_keep_alive) = if v5
        && config.max_keep_alive > 0
        && (connect.keep_alive == 0 || connect.keep_alive > config.max_keep_alive)
    {
        (config.max_keep_alive, Some(config.max_keep_alive))
    } else {
        (connect.keep_alive, None)
    };

    let (tx, rx) = mailbox();
    let claim = broker
        .claim(&client_id, conn_id, tx, !connect.clean_start)
        .await;
    let session_present = claim.resumed.is_some();
    let mut session = claim
        .resumed
        .unwrap_or_else(|| Session::new(client_id.clone(), expiry));
    session.expiry_interval = expiry;

    let problem_info = connect.properties.request_problem_information != Some(0);
    let mut properties = ConnAckProperties::default();
    if v5 {
        properties.session_expiry_interval = (expiry != requested_expiry).then_some(expiry);
        properties.receive_maximum = Some(config.receive_maximum);
        properties.maximum_qos = (config.maximum_qos < 2).then_some(config.maximum_qos);
        properties.retain_available = (!config.retain_available).then_some(0);
        properties.maximum_packet_size = Some(config.max_packet_size);
        properties.assigned_client_identifier = assigned;
        properties.topic_alias_maximum =
            (config.topic_alias_maximum > 0).then_some(config.topic_alias_maximum);
        properties.wildcard_subscription_available = (!config.wildcard_subscriptions).then_some(0);
        properties.subscription_identifiers_available =
            (!config.subscription_identifiers).then_some(0);
        properties.shared_subscription_available = (!config.shared_subscriptions).then_some(0);
        properties.server_keep_alive = server_keep_alive;
        if connect.properties.request_response_information == Some(1)
            && !config.response_information.is_empty()
        {
            properties.response_information = Some(
                config
                    .response_information
                    .replace("{client_id}", &client_id),
            );
        }
    }
    let connack = ConnAck {
        session_present,
        reason: ReasonCode::SUCCESS,
        properties,
    };

    let client_window = if v5 {
        connect.properties.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let conn = Connection {
        broker: broker.clone(),
        version: connect.protocol,
        client_id,
        username: connect.username,
        conn_id,
        slot: claim.slot,
        session,
        will,
        keep_alive: Duration::from_millis(u64::from(keep_alive) * 1500),
        window: usize::from(client_window.min(config.max_inflight)),
        publish_writer: PublishWriter::new(
            connect.protocol,
            connect
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            if v5 {
                connect.properties.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
        ),
        last_topic: None,
        run: MessageRun::default(),
        received: [0; 3],
        in_aliases: HashMap::new(),
        problem_info,
        session_expiry_at_connect: expiry,
        out: BytesMut::new(),
        read_at: Instant::now(),
    };
    Ok(Accepted { conn, rx, connack })
}

struct Connection {
    broker: Arc<Broker>,
    version: ProtocolVersion,
    client_id: Arc<str>,
    username: Option<String>,
    conn_id: u64,
    slot: Arc<SessionSlot>,
    session: Session,
    /// The will and its delay in seconds.
    will: Option<(Arc<Message>, u32)>,
    /// 1.5 times the keep alive; zero when keep alive is off.
    keep_alive: Duration,
    /// How many QoS 1/2 messages may be unacknowledged by the client.
    window: usize,
    publish_writer: PublishWriter,
    /// The topic of the last PUBLISH from the client that passed the checks.
    last_topic: Option<Arc<str>>,
    /// Messages from the client's current read that wait to be published together.
    /// Published before anything else the client sent is acted on, and before any reply
    /// reaches the socket.
    run: MessageRun,
    /// PUBLISHes received by QoS, not yet added to the broker's counters (see `pump`).
    received: [u64; 3],
    in_aliases: HashMap<u16, Arc<str>>,
    problem_info: bool,
    session_expiry_at_connect: u32,
    out: BytesMut,
    /// When the bytes being decoded were read: the receipt time of every PUBLISH in them
    /// (one clock read per read rather than per message).
    read_at: Instant,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite>(
        &mut self,
        reader: &mut ReadHalf<S>,
        writer: &mut WriteHalf<S>,
        mut inbuf: BytesMut,
        rx: &mut MailboxReceiver,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Exit {
        let max_in = self.broker.config().max_packet_size as usize;
        let keep_alive = self.keep_alive;
        let mut last_heard = tokio::time::Instant::now();
        // Bytes read since the read buffer was last empty: what the client's last packets
        // took, which decides whether the buffer is worth keeping.
        let mut since_empty = 0usize;
        let far_future = Duration::from_secs(86_400 * 365);
        let keep_alive_timer = tokio::time::sleep(if keep_alive.is_zero() {
            far_future
        } else {
            keep_alive
        });
        tokio::pin!(keep_alive_timer);
        let mut inbox = VecDeque::new();
        loop {
            self.pump();
            // An empty buffer reads 64 bytes at first (see `SMALL_READ`).
            let room = (inbuf.capacity() - inbuf.len()).max(SMALL_READ);
            tokio::select! {
                _ = shutdown.changed() => return Exit::Shutdown,
                read = reader.read_buf(&mut inbuf), if self.out.len() < READ_PAUSE_AT => {
                    let n = match read {
                        Ok(0) | Err(_) => return Exit::ConnectionLost,
                        Ok(n) => {
                            self.broker.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            last_heard = tokio::time::Instant::now();
                            self.read_at = last_heard.into_std();
                            n
                        }
                    };
                    since_empty += n;
                    // A read that filled the buffer left more behind: a busy client, even
                    // if its packets are small (a subscriber's stream of PUBACKs).
                    let filled = n >= room;
                    let exit = loop {
                        match decode(&mut inbuf, Some(self.version), max_in) {
                            Ok(Some(packet)) => {
                                if let Err(exit) = self.handle(packet) {
                                    break Some(exit);
                                }
                            }
                            Ok(None) => break None,
                            Err(e) => {
                                self.broker.stats.count_malformed(e.kind.label());
                                debug!(client_id = %self.client_id, error = %e, "malformed packet");
                                break Some(Exit::Close(e.kind.reason_code(), e.detail));
                            }
                        }
                    };
                    // What was accepted before a bad packet is still published (and its
                    // acknowledgement still sent).
                    self.run.publish_waiting(&self.broker);
                    if let Some(exit) = exit {
                        return exit;
                    }
                    if inbuf.is_empty() && since_empty <= SMALL_READ && !filled {
                        // A quiet client (pings, acknowledgements): give the buffer back;
                        // the next read starts with 64 bytes, enough for what it sent
                        // this time, and grows if it must. A client whose packets took
                        // more keeps the buffer, so that they take one read.
                        if inbuf.capacity() > 0 {
                            inbuf = BytesMut::new();
                        }
                    } else if filled || inbuf.capacity() - inbuf.len() < 1024 {
                        inbuf.reserve(4096);
                    }
                    if inbuf.is_empty() {
                        since_empty = 0;
                    }
                }
                () = rx.recv_all(&mut inbox) => {
                    while let Some(cmd) = inbox.pop_front() {
                        match cmd {
                            ConnCommand::Deliver(d) => self.broker.enqueue_counted(&mut self.session, d),
                            ConnCommand::TakeOver { reply, resume } => {
                                // Anything after it goes back: `finish` hands the session
                                // on, and `release` takes what is left in the mailbox.
                                rx.put_back(&mut inbox);
                                return Exit::TakenOver { reply, resume };
                            }
                        }
                    }
                }
                written = writer.write_buf(&mut self.out), if !self.out.is_empty() => {
                    match written {
                        Ok(0) | Err(_) => return Exit::ConnectionLost,
                        Ok(n) => {
                            self.broker.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                            if self.out.is_empty() && n < SMALL_WRITE {
                                // Idle again after a small write (CONNACK, PINGRESP, an
                                // acknowledgement): do not keep the buffer.
                                self.out = BytesMut::new();
                            }
                        }
                    }
                }
                () = &mut keep_alive_timer => {
                    let deadline = last_heard + keep_alive;
                    if tokio::time::Instant::now() >= deadline {
                        return Exit::Close(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                    }
                    keep_alive_timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Ends the connection: tells a v5 client why, flushes, and hands the session on.
    async fn finish<S: AsyncRead + AsyncWrite>(
        mut self,
        exit: Exit,
        writer: &mut WriteHalf<S>,
        rx: &mut MailboxReceiver,
    ) {
        self.run.publish_waiting(&self.broker);
        self.add_received();
        let (reason, will) = match &exit {
            Exit::Disconnected { keep_will: true } => (None, self.will.take()),
            Exit::Disconnected { keep_will: false } => (None, None),
            Exit::ConnectionLost => (None, self.will.take()),
            Exit::Close(reason, detail) => (Some((*reason, *detail)), self.will.take()),
            Exit::TakenOver { .. } => (
                Some((
                    ReasonCode::SESSION_TAKEN_OVER,
                    "another connection took over",
                )),
                None,
            ),
            Exit::Shutdown => (
                Some((ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down")),
                None,
            ),
        };
        if let Some((reason, detail)) = reason {
            debug!(client_id = %self.client_id, reason = reason.name(), detail, "closing connection");
            if self.version == ProtocolVersion::V5 {
                let properties = DisconnectProperties {
                    reason_string: self.problem_info.then(|| detail.to_string()),
                    ..Default::default()
                };
                self.write_packet(&Packet::Disconnect(Disconnect { reason, properties }));
            }
        }
        // Hand the session on before the client can see the connection close, so that a
        // client reconnecting at once finds the session already offline (or ended).
        let out = std::mem::take(&mut self.out);
        let broker = self.broker.clone();
        match exit {
            Exit::TakenOver { reply, resume } => {
                if let Some((w, delay)) = self.will.take() {
                    if delay == 0 || !resume {
                        broker.publish_will(&w);
                    }
                }
                // Anything delivered before the takeover was queued in order already.
                if let Err(session) = reply.send(self.session) {
                    broker.release(&self.slot, self.conn_id, session, rx, None);
                }
            }
            Exit::Shutdown => broker.release(&self.slot, self.conn_id, self.session, rx, None),
            _ => broker.release(&self.slot, self.conn_id, self.session, rx, will),
        }
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            if !out.is_empty() {
                let _ = writer.write_all(&out).await;
            }
            let _ = writer.shutdown().await;
        })
        .await;
    }

    // ---- incoming packets -------------------------------------------------------------

    fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        if !matches!(
            packet,
            Packet::Publish(_)
                | Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
                | Packet::PingReq
        ) {
            // A SUBSCRIBE, UNSUBSCRIBE or DISCONNECT acts after the messages sent before it.
            self.run.publish_waiting(&self.broker);
        }
        match packet {
            Packet::Publish(p) => self.handle_publish(p),
            Packet::PubAck(r) => {
                let _ = self.session.on_puback(r.packet_id);
                Ok(())
            }
            Packet::PubRec(r) => {
                let known = self
                    .session
                    .on_pubrec(r.packet_id, !r.reason.is_error())
                    .is_ok();
                if !r.reason.is_error() {
                    let reason = if known {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                    };
                    self.write_packet(&Packet::PubRel(self.response(r.packet_id, reason)));
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let reason = if self.session.on_pubrel(r.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.write_packet(&Packet::PubComp(self.response(r.packet_id, reason)));
                Ok(())
            }
            Packet::PubComp(r) => {
                let _ = self.session.on_pubcomp(r.packet_id);
                Ok(())
            }
            Packet::Subscribe(s) => self.handle_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.handle_disconnect(d),
            Packet::Connect(_) => Err(Exit::Close(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT on a connection",
            )),
            Packet::Auth(_) => Err(Exit::Close(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                debug!(client_id = %self.client_id, packet = other.name(), "server-only packet from a client");
                Err(Exit::Close(
                    ReasonCode::PROTOCOL_ERROR,
                    "packet type not accepted from a client",
                ))
            }
        }
    }

    fn handle_publish(&mut self, p: Publish) -> Result<(), Exit> {
        let topic = self.resolve_topic(&p)?;
        let config = self.broker.config();
        let checked = self
            .last_topic
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, &topic));
        if !checked {
            if topic::validate_topic_name(&topic).is_err() {
                return Err(Exit::Close(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "invalid topic name",
                ));
            }
            self.last_topic = Some(topic.clone());
        }
        if p.qos as u8 > config.maximum_qos {
            return Err(Exit::Close(
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS above the server's maximum",
            ));
        }
        if p.retain && !config.retain_available {
            return Err(Exit::Close(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            ));
        }
        let receive_maximum = usize::from(config.receive_maximum);
        if p.qos == QoS::ExactlyOnce
            && !self.session.incoming_qos2_pending(p.packet_id)
            && self.session.incoming_qos2_len() >= receive_maximum
        {
            return Err(Exit::Close(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded",
            ));
        }
        self.received[p.qos as usize] += 1;
        let stats = &self.broker.stats;

        let allowed = !topic.starts_with("$SYS")
            && self
                .broker
                .acl
                .check_publish(self.username.as_deref(), &self.client_id, &topic);
        if !allowed {
            stats.count_dropped(DropReason::Acl, 1);
            let reason = if self.version == ProtocolVersion::V5 {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.write_packet(&Packet::PubAck(self.response(p.packet_id, reason)))
                }
                QoS::ExactlyOnce => {
                    if !reason.is_error() {
                        // 3.1.1 has no way to refuse: finish the exchange, deliver nothing.
                        self.session.on_incoming_qos2(p.packet_id);
                    }
                    self.write_packet(&Packet::PubRec(self.response(p.packet_id, reason)));
                }
            }
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce && !self.session.on_incoming_qos2(p.packet_id) {
            // A resend of a message we have and not yet released: acknowledge only.
            self.write_packet(&Packet::PubRec(
                self.response(p.packet_id, ReasonCode::SUCCESS),
            ));
            return Ok(());
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        let message = Message::from_publish(
            topic,
            p.payload,
            p.qos,
            p.retain,
            self.client_id.clone(),
            p.properties,
            self.read_at,
        );
        self.run.publish(&self.broker, Arc::new(message));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.write_packet(&Packet::PubAck(PubResponse::new(packet_id))),
            QoS::ExactlyOnce => self.write_packet(&Packet::PubRec(PubResponse::new(packet_id))),
        }
        Ok(())
    }

    /// The topic of a PUBLISH, resolving (and learning) v5 topic aliases.
    fn resolve_topic(&mut self, p: &Publish) -> Result<Arc<str>, Exit> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(Exit::Close(
                    ReasonCode::PROTOCOL_ERROR,
                    "empty topic without a topic alias",
                ));
            }
            // Most publishers keep to one topic: share its name between their messages.
            if let Some(last) = &self.last_topic {
                if **last == *p.topic {
                    return Ok(last.clone());
                }
            }
            return Ok(Arc::from(p.topic.as_str()));
        };
        if alias == 0 || alias > self.broker.config().topic_alias_maximum {
            return Err(Exit::Close(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            return self.in_aliases.get(&alias).cloned().ok_or(Exit::Close(
                ReasonCode::PROTOCOL_ERROR,
                "unknown topic alias",
            ));
        }
        let topic: Arc<str> = Arc::from(p.topic.as_str());
        self.in_aliases.insert(alias, topic.clone());
        Ok(topic)
    }

    fn handle_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let config = self.broker.config();
        let v5 = self.version == ProtocolVersion::V5;
        let identifier = s.properties.subscription_identifier;
        if identifier.is_some() && !config.subscription_identifiers {
            return Err(Exit::Close(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            ));
        }
        let now = Instant::now();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for request in s.filters {
            let filter = request.filter;
            let shared = match topic::parse_shared(&filter) {
                Ok(shared) => shared.is_some(),
                Err(_) => {
                    reasons.push(if v5 {
                        ReasonCode::TOPIC_FILTER_INVALID
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            let inner = topic::parse_shared(&filter)
                .ok()
                .flatten()
                .map_or(filter.as_str(), |s| s.filter);
            if topic::validate_topic_filter(inner).is_err() {
                reasons.push(if v5 {
                    ReasonCode::TOPIC_FILTER_INVALID
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            if shared && request.options.no_local {
                return Err(Exit::Close(
                    ReasonCode::PROTOCOL_ERROR,
                    "no local on a shared subscription",
                ));
            }
            let refusal = if shared && !config.shared_subscriptions {
                Some(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else if topic::has_wildcards(inner) && !config.wildcard_subscriptions {
                Some(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else if !self.broker.acl.check_subscribe(
                self.username.as_deref(),
                &self.client_id,
                &filter,
            ) {
                // Tern answers a denied SUBSCRIBE with 0x80 on both versions (see
                // docs/architecture.md, "Decisions").
                Some(ReasonCode::UNSPECIFIED_ERROR)
            } else {
                None
            };
            if let Some(reason) = refusal {
                reasons.push(if v5 {
                    reason
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let granted = QoS::from_u8((request.options.qos as u8).min(config.maximum_qos))
                .unwrap_or(QoS::AtMostOnce);
            let mut options = request.options;
            options.qos = granted;
            let subscription = Subscription {
                options,
                identifier,
            };
            let existed = self
                .session
                .subscriptions
                .insert(filter.clone(), subscription.clone())
                .is_some();
            self.broker
                .add_subscription(&self.slot, &filter, &subscription);
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained.extend(self.broker.retained_for(inner, granted, identifier, now));
            }
            reasons.push(ReasonCode(granted as u8));
        }
        let properties = self.problem_properties(&reasons);
        let suback = SubAck {
            packet_id: s.packet_id,
            reasons,
            properties,
        };
        self.write_packet(&Packet::SubAck(suback));
        for delivery in retained {
            self.broker.enqueue_counted(&mut self.session, delivery);
        }
        Ok(())
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        let reasons = u
            .filters
            .iter()
            .map(|filter| {
                if self.session.subscriptions.remove(filter).is_some() {
                    self.broker.remove_subscription(&self.slot, filter);
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect::<Vec<_>>();
        let properties = self.problem_properties(&reasons);
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties,
        };
        self.write_packet(&Packet::UnsubAck(unsuback));
    }

    fn handle_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session_expiry_at_connect == 0 && expiry != 0 {
                return Err(Exit::Close(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after CONNECT set none",
                ));
            }
            self.session.expiry_interval =
                expiry.min(self.broker.config().max_session_expiry_interval);
        }
        Err(Exit::Disconnected {
            keep_will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
        })
    }

    // ---- outgoing packets -------------------------------------------------------------

    fn response(&self, packet_id: u16, reason: ReasonCode) -> PubResponse {
        let mut r = PubResponse::new(packet_id);
        if self.version == ProtocolVersion::V5 {
            r.reason = reason;
            if reason.is_error() && self.problem_info {
                r.properties.reason_string = Some(reason.name().replace('_', " "));
            }
        }
        r
    }

    /// A reason string naming the first error among `reasons`, for v5 clients that did not
    /// turn problem information off.
    fn problem_properties(&self, reasons: &[ReasonCode]) -> ReasonProperties {
        let mut properties = ReasonProperties::default();
        if self.version == ProtocolVersion::V5 && self.problem_info {
            if let Some(error) = reasons.iter().find(|r| r.is_error()) {
                properties.reason_string = Some(error.name().replace('_', " "));
            }
        }
        properties
    }

    fn write_packet(&mut self, packet: &Packet) {
        if let Err(e) = encode(packet, self.version, &mut self.out) {
            debug!(client_id = %self.client_id, packet = packet.name(), error = %e, "packet not encodable");
        }
    }

    /// Moves queued messages into the write buffer while the client's window and the
    /// buffer allow.
    fn pump(&mut self) {
        let now = Instant::now();
        let mut expired = 0;
        let mut tally = DeliveryTally::default();
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(next) = self.session.take_next(self.window, now, &mut expired) else {
                break;
            };
            let packet_id = next.packet_id();
            let written = self.publish_writer.write(
                &mut self.out,
                packet_id,
                next.delivery(),
                false,
                now,
                &mut tally,
            );
            if let Err(unwritten) = written {
                self.log_unwritten(unwritten);
                if packet_id != 0 {
                    self.session.abandon(packet_id);
                }
            }
        }
        self.add_received();
        let stats = &self.broker.stats;
        stats.add_deliveries(&tally);
        if expired > 0 {
            stats.count_dropped(DropReason::Expired, expired);
        }
    }

    /// Adds the PUBLISHes counted since the last call to the broker's counters: once per
    /// turn of the loop rather than once per message, which every core would fight over.
    fn add_received(&mut self) {
        let received = std::mem::take(&mut self.received);
        for (counter, n) in self.broker.stats.messages_received.iter().zip(received) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn log_unwritten(&self, unwritten: Unwritten) {
        if let Unwritten::NotEncodable(e) = unwritten {
            debug!(client_id = %self.client_id, error = %e, "PUBLISH not encodable");
        }
    }

    /// Sends what a resumed session still owes the client: unacknowledged PUBLISHes again
    /// with DUP set, and PUBRELs.
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let mut tally = DeliveryTally::default();
        for resend in self.session.resend_on_resume() {
            match resend {
                Resend::Publish(packet_id, delivery) => {
                    let written = self.publish_writer.write(
                        &mut self.out,
                        packet_id,
                        &delivery,
                        true,
                        now,
                        &mut tally,
                    );
                    if let Err(unwritten) = written {
                        self.log_unwritten(unwritten);
                    }
                }
                Resend::PubRel(packet_id) => {
                    self.write_packet(&Packet::PubRel(PubResponse::new(packet_id)));
                }
            }
        }
        self.broker.stats.add_deliveries(&tally);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection keeps its task's future for its whole life, so that future must
    /// not carry room for the handshake's or the teardown's (see docs/performance.md).
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let broker = Broker::new(
            Default::default(),
            Default::default(),
            Arc::new(crate::cluster::SingleNode),
        )
        .expect("default config");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let (stream, _other) = tokio::io::duplex(64);
        let (_tx, rx) = watch::channel(false);
        let outer = run(broker.clone(), stream, peer, "test", 1, rx);
        assert!(
            std::mem::size_of_val(&outer) <= 256,
            "{}",
            std::mem::size_of_val(&outer)
        );
        let (stream, _other) = tokio::io::duplex(64);
        let (_tx, rx) = watch::channel(false);
        let inner = run_boxed(broker, stream, peer, "test", 1, rx);
        // 1.9 KB in a release build, more in a debug build; the handshake alone is larger.
        assert!(
            std::mem::size_of_val(&inner) <= 4096,
            "{}",
            std::mem::size_of_val(&inner)
        );
    }
}
