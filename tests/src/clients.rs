//! Test clients for protocol conformance tests.
//!
//! - [`RawClient`]: a tiny MQTT client over a plain `TcpStream` using Tern's own codec, for
//!   the checks a real client library hides or refuses to do: a raw DUP redelivery, a second
//!   CONNECT, exceeding Receive Maximum, a topic alias of our choosing, CONNACK properties,
//!   not acknowledging a message, dropping the connection mid-flow.
//! - [`Pump`]: drives any client library's event loop (rumqttc's `EventLoop::poll`) on a
//!   task and hands its events to the test over a channel, so a test can wait for events
//!   with a timeout. It stops at the first error, so a closed connection is observable and a
//!   client never silently reconnects.
//!
//! Every wait here is bounded: a broker that never answers fails the test with a message
//! that says what was awaited, never hangs it.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    ConnAck, Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The default bound on any single wait for a packet or event.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest packet the raw client accepts from the broker.
const MAX_INCOMING: usize = tern_codec::MAX_REMAINING_LENGTH + 5;

/// What one read from the broker produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test helper; matching on `Packet` directly matters more
pub enum Recv {
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived within the timeout.
    Timeout,
}

/// A CONNECT with sensible defaults: clean start, keep alive 60 s, no will, no credentials.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A will message with default properties.
pub fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Default::default(),
    }
}

/// A PUBLISH with no properties; `packet_id` is filled in by [`RawClient::publish_packet`]
/// when left at 0 for QoS > 0.
pub fn publish_packet(topic: &str, payload: impl AsRef<[u8]>, qos: QoS, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_string(),
        packet_id: 0,
        payload: Bytes::copy_from_slice(payload.as_ref()),
        properties: PublishProperties::default(),
    }
}

/// A subscription filter with default v5 options at `qos`.
pub fn filter(topic: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: topic.to_string(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

/// The 3.1.1 CONNACK return code carried by a decoded CONNACK, whichever way the codec
/// represents it (the raw return code 0..=5, or the v5 reason code it maps to).
pub fn v311_return_code(reason: ReasonCode) -> u8 {
    if reason.0 <= 5 {
        reason.0
    } else {
        reason.to_v311_connack()
    }
}

/// The payload as text, for assertions and messages.
pub fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// (topic, payload as text) of each PUBLISH, in the order received.
pub fn topics_and_texts(publishes: &[Publish]) -> Vec<(String, String)> {
    publishes
        .iter()
        .map(|p| (p.topic.clone(), text(&p.payload)))
        .collect()
}

/// A raw MQTT client: one TCP connection, Tern's codec, explicit packets.
///
/// Packets that arrive while a helper waits for a particular packet (say, a SUBACK) are kept
/// in order and returned by the next [`RawClient::recv`], so nothing is silently lost.
pub struct RawClient {
    stream: TcpStream,
    read_buf: BytesMut,
    version: ProtocolVersion,
    pending: VecDeque<Packet>,
    next_packet_id: u16,
    closed: bool,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing yet.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect to the broker timed out")
            .expect("TCP connect to the broker");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self {
            stream,
            read_buf: BytesMut::with_capacity(8 * 1024),
            version,
            pending: VecDeque::new(),
            next_packet_id: 1,
            closed: false,
        }
    }

    /// Connects with `connect` and returns whatever CONNACK the broker sends (success or
    /// not). Panics if the broker sends anything else or nothing.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let mut client = Self::open(addr, connect.protocol).await;
        client.send(Packet::Connect(connect)).await;
        match client.recv(TIMEOUT).await {
            Recv::Packet(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with `connect` and panics unless the CONNACK says success.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let id = connect.client_id.clone();
        let (client, ack) = Self::connect_with(addr, connect).await;
        assert_eq!(
            ack.reason,
            ReasonCode::SUCCESS,
            "CONNACK for client {id:?} is not success: {ack:?}"
        );
        (client, ack)
    }

    /// A v5 client with a clean start.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> Self {
        Self::connect_ok(addr, connect_packet(ProtocolVersion::V5, client_id))
            .await
            .0
    }

    /// A 3.1.1 client with a clean session.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> Self {
        Self::connect_ok(addr, connect_packet(ProtocolVersion::V311, client_id))
            .await
            .0
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// A fresh non-zero packet identifier.
    pub fn next_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Encodes and writes one packet; panics if it cannot be written.
    pub async fn send(&mut self, packet: Packet) {
        if let Err(e) = self.try_send(packet).await {
            panic!("writing a packet to the broker failed: {e}");
        }
    }

    /// Encodes and writes one packet; an I/O error (the broker closed) is returned.
    pub async fn try_send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        tern_codec::encode(&packet, self.version, &mut buf)
            .unwrap_or_else(|e| panic!("test client cannot encode {}: {e}", packet.name()));
        self.send_bytes(&buf).await
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            ))
        })
    }

    /// The next packet from the broker, or `Closed`, or `Timeout` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Recv {
        if let Some(p) = self.pending.pop_front() {
            return Recv::Packet(p);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tern_codec::decode(&mut self.read_buf, Some(self.version), MAX_INCOMING) {
                Ok(Some(packet)) => return Recv::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!("the broker sent bytes the codec rejects: {e}"),
            }
            if self.closed {
                return Recv::Closed;
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf)).await
            {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics on timeout or close.
    pub async fn expect(&mut self, what: &str) -> Packet {
        match self.recv(TIMEOUT).await {
            Recv::Packet(p) => p,
            other => panic!("waiting for {what}: got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.expect("PUBLISH").await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Waits for the first packet `pick` accepts; packets it declines are kept, in order,
    /// for later `recv` calls. Panics on timeout or close.
    pub async fn expect_matching<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        // Look at what is already kept first.
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let p = self.pending.remove(i).expect("index in range");
            return pick(&p).expect("matched before");
        }
        let mut skipped = VecDeque::new();
        let saved = std::mem::take(&mut self.pending);
        let result = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Recv::Packet(p) => match pick(&p) {
                    Some(t) => break Ok(t),
                    None => skipped.push_back(p),
                },
                other => break Err(other),
            }
        };
        let mut pending = saved;
        pending.extend(skipped);
        self.pending = pending;
        match result {
            Ok(t) => t,
            Err(other) => panic!(
                "waiting for {what}: got {other:?}; other packets meanwhile: {:?}",
                self.pending
            ),
        }
    }

    /// Reads until the broker closes the connection and returns what arrived before the
    /// close. Panics if the connection is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Recv::Packet(p) => got.push(p),
                Recv::Closed => return got,
                Recv::Timeout => {
                    panic!("the broker did not close the connection within {timeout:?}; received {got:?}")
                }
            }
        }
    }

    /// Expects a v5 DISCONNECT (PUBLISHes before it are ignored) followed by the close,
    /// and returns it. Panics if the broker closes without one.
    pub async fn expect_disconnect(&mut self) -> Disconnect {
        let packets = self.expect_closed(TIMEOUT).await;
        let disconnects: Vec<_> = packets
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            disconnects.len(),
            1,
            "expected exactly one DISCONNECT before the close; got packets {packets:?}"
        );
        disconnects.into_iter().next().expect("one")
    }

    /// Whether the broker has closed the connection (after a read saw it).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends SUBSCRIBE (assigning a packet id if 0) and waits for its SUBACK.
    pub async fn subscribe_packet(&mut self, mut subscribe: Subscribe) -> SubAck {
        if subscribe.packet_id == 0 {
            subscribe.packet_id = self.next_id();
        }
        let id = subscribe.packet_id;
        self.send(Packet::Subscribe(subscribe)).await;
        self.expect_matching("SUBACK", |p| match p {
            Packet::SubAck(s) if s.packet_id == id => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes to several filters in one SUBSCRIBE with default options.
    pub async fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> SubAck {
        let filters = filters.iter().map(|(f, q)| filter(f, *q)).collect();
        self.subscribe_packet(Subscribe {
            packet_id: 0,
            filters,
            properties: SubscribeProperties::default(),
        })
        .await
    }

    /// Subscribes to one filter and panics unless it is granted at `qos`.
    pub async fn subscribe(&mut self, topic: &str, qos: QoS) -> SubAck {
        let ack = self.subscribe_many(&[(topic, qos)]).await;
        assert_eq!(
            ack.reasons,
            vec![ReasonCode(qos as u8)],
            "SUBSCRIBE {topic:?} at {qos:?} not granted as asked: {ack:?}"
        );
        ack
    }

    /// Sends UNSUBSCRIBE and waits for its UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> UnsubAck {
        let id = self.next_id();
        self.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            filters: filters.iter().map(|f| f.to_string()).collect(),
            user_properties: Vec::new(),
        }))
        .await;
        self.expect_matching("UNSUBACK", |p| match p {
            Packet::UnsubAck(u) if u.packet_id == id => Some(u.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and completes the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP). Returns the
    /// reason code of the PUBACK or PUBREC (SUCCESS for QoS 0).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        qos: QoS,
        retain: bool,
    ) -> ReasonCode {
        self.publish_packet(publish_packet(topic, payload, qos, retain))
            .await
    }

    /// Like [`RawClient::publish`], for a PUBLISH built by the caller.
    pub async fn publish_packet(&mut self, mut publish: Publish) -> ReasonCode {
        if publish.qos != QoS::AtMostOnce && publish.packet_id == 0 {
            publish.packet_id = self.next_id();
        }
        let id = publish.packet_id;
        let qos = publish.qos;
        self.send(Packet::Publish(publish)).await;
        match qos {
            QoS::AtMostOnce => ReasonCode::SUCCESS,
            QoS::AtLeastOnce => {
                self.expect_matching("PUBACK", |p| match p {
                    Packet::PubAck(a) if a.packet_id == id => Some(a.reason),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                let rec = self
                    .expect_matching("PUBREC", |p| match p {
                        Packet::PubRec(a) if a.packet_id == id => Some(a.reason),
                        _ => None,
                    })
                    .await;
                if rec.is_error() {
                    return rec;
                }
                self.send(Packet::PubRel(PubResponse::new(id))).await;
                self.expect_matching("PUBCOMP", |p| match p {
                    Packet::PubComp(a) if a.packet_id == id => Some(()),
                    _ => None,
                })
                .await;
                rec
            }
        }
    }

    /// Acknowledges a received PUBLISH, completing its QoS flow.
    pub async fn ack(&mut self, publish: &Publish) {
        let id = publish.packet_id;
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubResponse::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubResponse::new(id))).await;
                self.expect_matching("PUBREL", |p| match p {
                    Packet::PubRel(r) if r.packet_id == id => Some(()),
                    _ => None,
                })
                .await;
                self.send(Packet::PubComp(PubResponse::new(id))).await;
            }
        }
    }

    /// Waits for `n` PUBACKs (a publisher's QoS 1 messages sent without waiting); panics
    /// if anything else arrives first.
    pub async fn expect_pubacks(&mut self, n: usize) {
        for i in 0..n {
            match self.expect("PUBACK").await {
                Packet::PubAck(_) => {}
                other => panic!("expected PUBACK {} of {n}, got {other:?}", i + 1),
            }
        }
    }

    /// Receives `n` PUBLISHes, acknowledging each; panics if anything else arrives first.
    pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let p = match self.recv(TIMEOUT).await {
                Recv::Packet(Packet::Publish(p)) => p,
                other => panic!(
                    "waiting for PUBLISH {} of {n}: got {other:?}; received so far {got:?}",
                    got.len() + 1
                ),
            };
            self.ack(&p).await;
            got.push(p);
        }
        got
    }

    /// Receives and acknowledges PUBLISHes until one with payload `fence` arrives; returns
    /// the ones before it. Used as an event fence: anything the broker would have sent before
    /// the fence has arrived by then.
    pub async fn recv_until_payload(&mut self, fence: &str) -> Vec<Publish> {
        let mut got = Vec::new();
        loop {
            let p = match self.recv(TIMEOUT).await {
                Recv::Packet(Packet::Publish(p)) => p,
                other => {
                    panic!("waiting for fence {fence:?}: got {other:?}; received before it {got:?}")
                }
            };
            self.ack(&p).await;
            if p.payload.as_ref() == fence.as_bytes() {
                return got;
            }
            got.push(p);
        }
    }

    /// PINGREQ, then waits for PINGRESP; other packets are kept for later.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        self.expect_matching("PINGRESP", |p| matches!(p, Packet::PingResp).then_some(()))
            .await;
    }

    /// Normal DISCONNECT (reason 0), then waits until the broker has closed its side, so
    /// that the broker has finished with this connection when this returns.
    pub async fn disconnect(self) {
        self.disconnect_with(Disconnect::default()).await;
    }

    /// Sends the given DISCONNECT, half-closes and waits for the broker's close.
    pub async fn disconnect_with(mut self, disconnect: Disconnect) {
        self.send(Packet::Disconnect(disconnect)).await;
        let _ = self.stream.shutdown().await;
        let left = self.expect_closed(TIMEOUT).await;
        let unexpected: Vec<_> = left
            .iter()
            .filter(|p| !matches!(p, Packet::Publish(_)))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected packets after DISCONNECT: {unexpected:?}"
        );
    }

    /// Drops the TCP connection without DISCONNECT: a network failure as the broker sees it.
    pub fn drop_connection(self) {
        drop(self);
    }
}

/// Drives an event loop on its own task and delivers its events to the test.
///
/// `step` takes the loop by value and gives it back with one result, so any client's
/// `poll(&mut self)` fits: `Pump::spawn(eventloop, |mut el| async move { let r = el.poll().await; (el, r) })`.
/// The task ends after the first error, which is delivered too.
pub struct Pump<E, Er> {
    rx: mpsc::UnboundedReceiver<Result<E, Er>>,
    task: Option<JoinHandle<()>>,
    ended: bool,
}

impl<E, Er> Pump<E, Er>
where
    E: Debug + Send + 'static,
    Er: Debug + Send + 'static,
{
    pub fn spawn<L, F, Fut>(mut state: L, mut step: F) -> Self
    where
        L: Send + 'static,
        F: FnMut(L) -> Fut + Send + 'static,
        Fut: Future<Output = (L, Result<E, Er>)> + Send,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let (s, result) = step(state).await;
                state = s;
                let failed = result.is_err();
                if tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        Self {
            rx,
            task: Some(task),
            ended: false,
        }
    }

    /// The next event or error, `None` after `timeout` or once the loop has ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Result<E, Er>> {
        if self.ended {
            return None;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(r)) => {
                if r.is_err() {
                    self.ended = true;
                }
                Some(r)
            }
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Waits for the first event `pick` accepts, discarding the others. Panics on an error
    /// or after [`TIMEOUT`].
    pub async fn wait_for<T>(&mut self, what: &str, pick: impl FnMut(&E) -> Option<T>) -> T {
        self.wait_for_within(TIMEOUT, what, pick).await
    }

    /// [`Pump::wait_for`] with an explicit bound.
    pub async fn wait_for_within<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(e)) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Some(Err(e)) => panic!("waiting for {what}: the client failed: {e:?}"),
                None => panic!("waiting for {what}: nothing within {timeout:?}"),
            }
        }
    }

    /// Waits until the loop fails (e.g. the broker closed the connection or refused it) and
    /// returns the error; events before it are discarded. Panics after `timeout`.
    pub async fn wait_error(&mut self, timeout: Duration) -> Er {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("the client's connection did not end within {timeout:?}"),
            }
        }
    }

    /// Stops the loop at once, dropping its connection without DISCONNECT.
    pub fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// Stops the loop and waits until its task (and so its connection) is gone.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl<E, Er> Drop for Pump<E, Er> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
