//! The broker served over real loopback TCP, driven by a minimal client built on
//! tern-codec: exercises connection handling without the server crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{AuthConfig, Broker, BrokerConfig, SingleNode};
use tern_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(config: BrokerConfig) -> (Arc<Broker>, SocketAddr) {
    let broker = Broker::new(config, AuthConfig::default(), Arc::new(SingleNode)).expect("broker");
    broker.start_background_tasks();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let b = broker.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let b = b.clone();
            tokio::spawn(async move { b.serve_connection(stream, peer, "tcp").await });
        }
    });
    (broker, addr)
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        clean: bool,
        expiry: Option<u32>,
    ) -> (Self, ConnAck) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            version,
        };
        let properties = ConnectProperties {
            session_expiry_interval: expiry,
            ..Default::default()
        };
        c.send(Packet::Connect(Connect {
            protocol: version,
            clean_start: clean,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties,
        }))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or None if the connection closed or 5 s passed.
    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) =
                decode(&mut self.buf, Some(self.version), 1 << 20).expect("valid packet")
            {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options,
            }],
            properties: Default::default(),
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) => s,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, payload: &'static [u8], qos: QoS, packet_id: u16) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            payload: Bytes::from_static(payload),
            properties: Default::default(),
        }))
        .await;
    }
}

#[tokio::test]
async fn qos1_roundtrip_and_offline_queue() {
    let (broker, addr) = start(BrokerConfig::default()).await;
    let (mut sub, ack) = Client::connect(addr, ProtocolVersion::V5, "sub", true, Some(60)).await;
    assert!(!ack.session_present);
    assert_eq!(
        sub.subscribe("a/+", QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode(1)]
    );
    let (mut publ, _) = Client::connect(addr, ProtocolVersion::V311, "pub", true, None).await;
    publ.publish("a/b", b"one", QoS::AtLeastOnce, 7).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(r)) if r.packet_id == 7));
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"one");
            assert_eq!(p.qos, QoS::AtLeastOnce);
            sub.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                .await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // Go offline (DISCONNECT keeps the session: expiry 60 s), publish, come back.
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.recv().await.is_none());
    for i in 0..10u16 {
        publ.publish("a/c", b"queued", QoS::AtLeastOnce, 100 + i)
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut sub, ack) = Client::connect(addr, ProtocolVersion::V5, "sub", false, Some(60)).await;
    assert!(ack.session_present);
    for _ in 0..10 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"queued");
                sub.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await;
            }
            other => panic!("expected queued PUBLISH, got {other:?}"),
        }
    }
    assert!(broker.has_session("sub"));
    broker.shutdown(Duration::from_secs(2)).await;
    assert!(
        matches!(sub.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SERVER_SHUTTING_DOWN)
    );
}

#[tokio::test]
async fn takeover_disconnects_the_first_connection() {
    let (_broker, addr) = start(BrokerConfig::default()).await;
    let (mut first, _) = Client::connect(addr, ProtocolVersion::V5, "same", false, Some(60)).await;
    first.subscribe("t", QoS::AtLeastOnce).await;
    let (mut second, ack) =
        Client::connect(addr, ProtocolVersion::V5, "same", false, Some(60)).await;
    assert!(
        ack.session_present,
        "the session moved to the new connection"
    );
    assert!(
        matches!(first.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    second.publish("t", b"x", QoS::AtLeastOnce, 1).await;
    let mut got = 0;
    while let Some(p) = second.recv().await {
        match p {
            Packet::PubAck(_) => {}
            Packet::Publish(p) => {
                got += 1;
                assert_eq!(&p.payload[..], b"x");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 1, "the subscription survived the takeover");
}
