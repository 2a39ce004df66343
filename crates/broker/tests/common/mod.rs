//! A broker served over loopback TCP and a minimal MQTT client built on tern-codec, shared
//! by the broker's end-to-end tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{AuthConfig, Broker, BrokerConfig, Cluster, SingleNode};
use tern_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn start(config: BrokerConfig) -> (Arc<Broker>, SocketAddr) {
    start_in(config, Arc::new(SingleNode)).await
}

pub async fn start_in(
    config: BrokerConfig,
    cluster: Arc<dyn Cluster>,
) -> (Arc<Broker>, SocketAddr) {
    let broker = Broker::new(config, AuthConfig::default(), cluster).expect("broker");
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

pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    pub async fn connect(
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

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or None if the connection closed or 5 s passed.
    pub async fn recv(&mut self) -> Option<Packet> {
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

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
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

    pub async fn publish(&mut self, topic: &str, payload: &'static [u8], qos: QoS, packet_id: u16) {
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
