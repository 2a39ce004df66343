//! A node publishes the messages one read of a client's socket brings, on one topic, as a
//! run (`Broker::publish_run`). These tests send many packets in one write, so that they
//! arrive together, and check that a run changes nothing a client can see: order across
//! topics and retained messages, a SUBSCRIBE or UNSUBSCRIBE acting after the messages sent
//! before it, and messages accepted before a malformed packet still delivered and
//! acknowledged.

use bytes::BytesMut;
use tern_codec::{Packet, ProtocolVersion, Publish, QoS};
use tern_tests::clients::{publish_packet, text, topics_and_texts, RawClient, Recv};
use tern_tests::TestNode;

const V311: ProtocolVersion = ProtocolVersion::V311;

/// The bytes of `packets`, in order, for one write.
fn encoded(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        tern_codec::encode(packet, V311, &mut buf).expect("encodable test packet");
    }
    buf.to_vec()
}

fn qos1(client: &mut RawClient, topic: &str, payload: &str, retain: bool) -> Packet {
    let mut p: Publish = publish_packet(topic, payload, QoS::AtLeastOnce, retain);
    p.packet_id = client.next_id();
    Packet::Publish(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_topic_changes_and_retained_messages() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut watcher = RawClient::v311(addr, "runs-watcher").await;
    watcher.subscribe("runs/#", QoS::AtLeastOnce).await;
    let mut only_a = RawClient::v311(addr, "runs-only-a").await;
    only_a.subscribe("runs/a", QoS::AtLeastOnce).await;

    let mut publisher = RawClient::v311(addr, "runs-publisher").await;
    // Runs of different lengths on two topics, a retained message inside a run of "a".
    let plan: Vec<(&str, bool)> = [("runs/a", 5), ("runs/b", 3), ("runs/a", 1), ("runs/b", 7)]
        .into_iter()
        .flat_map(|(topic, n)| std::iter::repeat_n((topic, false), n))
        .chain([("runs/a", false), ("runs/a", true), ("runs/a", false)])
        .collect();
    let mut expected = Vec::new();
    let mut packets = Vec::new();
    for (i, &(topic, retain)) in plan.iter().enumerate() {
        let payload = format!("m{i}");
        packets.push(qos1(&mut publisher, topic, &payload, retain));
        expected.push((topic.to_string(), payload));
    }
    publisher
        .send_bytes(&encoded(&packets))
        .await
        .expect("write the batch");
    publisher.expect_pubacks(packets.len()).await;

    let got = watcher.recv_publishes(expected.len()).await;
    assert_eq!(
        topics_and_texts(&got),
        expected,
        "the wildcard subscriber sees the send order"
    );
    let expected_a: Vec<_> = expected
        .iter()
        .filter(|(t, _)| t == "runs/a")
        .cloned()
        .collect();
    let got_a = only_a.recv_publishes(expected_a.len()).await;
    assert_eq!(topics_and_texts(&got_a), expected_a);
    // The retained one was stored: a new subscriber gets it.
    let mut late = RawClient::v311(addr, "runs-late").await;
    late.subscribe("runs/a", QoS::AtLeastOnce).await;
    let retained = late.recv_publishes(1).await;
    assert!(retained[0].retain);
    assert_eq!(text(&retained[0].payload), format!("m{}", plan.len() - 2));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_acts_after_the_messages_sent_before_it() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut client = RawClient::v311(addr, "runs-self").await;
    let mut packets: Vec<Packet> = (0..20)
        .map(|i| qos1(&mut client, "runs/self", &format!("before{i}"), false))
        .collect();
    let sub_id = client.next_id();
    packets.push(Packet::Subscribe(tern_codec::Subscribe {
        packet_id: sub_id,
        filters: vec![tern_tests::clients::filter("runs/self", QoS::AtLeastOnce)],
        properties: Default::default(),
    }));
    packets.push(qos1(&mut client, "runs/self", "after", false));
    let unsub_id = client.next_id();
    packets.push(Packet::Unsubscribe(tern_codec::Unsubscribe {
        packet_id: unsub_id,
        filters: vec!["runs/self".to_string()],
        user_properties: Default::default(),
    }));
    packets.push(qos1(&mut client, "runs/self", "unsubscribed", false));
    packets.push(Packet::PingReq);
    client
        .send_bytes(&encoded(&packets))
        .await
        .expect("write the batch");

    // Up to PINGRESP: 22 PUBACKs, SUBACK, UNSUBACK. The client's own messages come from
    // its mailbox, possibly after PINGRESP; a fence it sends itself later comes after them.
    let mut own = Vec::new();
    let (mut pubacks, mut suback, mut unsuback) = (0, false, false);
    loop {
        match client.recv(tern_tests::clients::TIMEOUT).await {
            Recv::Packet(Packet::PingResp) => break,
            Recv::Packet(Packet::PubAck(_)) => pubacks += 1,
            Recv::Packet(Packet::SubAck(a)) if a.packet_id == sub_id => suback = true,
            Recv::Packet(Packet::UnsubAck(a)) if a.packet_id == unsub_id => unsuback = true,
            Recv::Packet(Packet::Publish(p)) => {
                client.ack(&p).await;
                own.push(text(&p.payload));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((pubacks, suback, unsuback), (22, true, true));
    client.subscribe("runs/fence", QoS::AtLeastOnce).await;
    client
        .publish("runs/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    own.extend(
        client
            .recv_until_payload("fence")
            .await
            .iter()
            .map(|p| text(&p.payload)),
    );
    // Of its own messages, only the one sent while it was subscribed (3.1.1 has no No
    // Local).
    assert_eq!(own, vec!["after".to_string()]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_a_malformed_packet_are_delivered_and_acknowledged() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut subscriber = RawClient::v311(addr, "runs-sub").await;
    subscriber.subscribe("runs/bad", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v311(addr, "runs-bad-pub").await;
    let packets: Vec<Packet> = (0..10)
        .map(|i| qos1(&mut publisher, "runs/bad", &format!("ok{i}"), false))
        .collect();
    let mut bytes = encoded(&packets);
    // Packet type 0 is reserved: a malformed packet that closes the connection.
    bytes.extend_from_slice(&[0x00, 0x00]);
    publisher.send_bytes(&bytes).await.expect("write the batch");

    let before_close = publisher.expect_closed(tern_tests::clients::TIMEOUT).await;
    let pubacks = before_close
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count();
    assert_eq!(
        pubacks, 10,
        "every accepted message acknowledged: {before_close:?}"
    );
    let got = subscriber.recv_publishes(10).await;
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("ok{i}")).collect();
    assert_eq!(payloads, expected);
    node.shutdown().await;
}
