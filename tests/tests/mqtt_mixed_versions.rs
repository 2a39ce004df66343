//! MQTT 3.1.1 and 5.0 clients on the same node, in both directions: QoS 0/1/2 messages,
//! retained messages and wills, with real rumqttc clients of each version.

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PublishProperties as V5PublishProperties};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet as V4Packet, QoS as V4QoS,
};
use tern_tests::clients::{text, Pump, TIMEOUT};
use tern_tests::TestNode;

type V4Pump = Pump<Event, ConnectionError>;
type V5Pump = Pump<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

async fn v4(node: &TestNode, id: &str, will: Option<LastWill>) -> (AsyncClient, V4Pump) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    if let Some(w) = will {
        opts.set_last_will(w);
    }
    let (client, eventloop) = AsyncClient::new(opts, 200);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, Event::Incoming(V4Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

async fn v5(node: &TestNode, id: &str) -> (rumqttc::v5::AsyncClient, V5Pump) {
    let opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 200);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::v5::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

async fn v4_sub(client: &AsyncClient, pump: &mut V4Pump, filter: &str) {
    client
        .subscribe(filter, V4QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::SubAck(_))).then_some(())
    })
    .await;
}

async fn v5_sub(client: &rumqttc::v5::AsyncClient, pump: &mut V5Pump, filter: &str) {
    client
        .subscribe(filter, V5QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::SubAck(_))).then_some(())
    })
    .await;
}

/// (topic, payload, qos as u8, retain) of the publishes received until every payload in
/// `fences` has arrived (fences excluded).
async fn v4_collect_all(pump: &mut V4Pump, fences: &[&str]) -> Vec<(String, String, u8, bool)> {
    let mut got = Vec::new();
    let mut left: Vec<&str> = fences.to_vec();
    pump.wait_for(&format!("fences {fences:?}"), |e| {
        if let Event::Incoming(V4Packet::Publish(p)) = e {
            let payload = text(&p.payload);
            if let Some(i) = left.iter().position(|f| *f == payload) {
                left.remove(i);
            } else {
                got.push((p.topic.clone(), payload, p.qos as u8, p.retain));
            }
        }
        left.is_empty().then_some(())
    })
    .await;
    got
}

async fn v4_collect(pump: &mut V4Pump, fence: &str) -> Vec<(String, String, u8, bool)> {
    v4_collect_all(pump, &[fence]).await
}

async fn v5_collect_all(pump: &mut V5Pump, fences: &[&str]) -> Vec<(String, String, u8, bool)> {
    let mut got = Vec::new();
    let mut left: Vec<&str> = fences.to_vec();
    pump.wait_for(&format!("fences {fences:?}"), |e| {
        if let rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) = e {
            let payload = text(&p.payload);
            if let Some(i) = left.iter().position(|f| *f == payload) {
                left.remove(i);
            } else {
                got.push((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    payload,
                    p.qos as u8,
                    p.retain,
                ));
            }
        }
        left.is_empty().then_some(())
    })
    .await;
    got
}

async fn v5_collect(pump: &mut V5Pump, fence: &str) -> Vec<(String, String, u8, bool)> {
    v5_collect_all(pump, &[fence]).await
}

fn expected(topic: &str, n: usize) -> Vec<(String, String, u8, bool)> {
    (0..n)
        .map(|i| (topic.to_string(), format!("{i}"), (i % 3) as u8, false))
        .collect()
}

fn v4_qos(i: usize) -> V4QoS {
    [V4QoS::AtMostOnce, V4QoS::AtLeastOnce, V4QoS::ExactlyOnce][i % 3]
}

fn v5_qos(i: usize) -> V5QoS {
    [V5QoS::AtMostOnce, V5QoS::AtLeastOnce, V5QoS::ExactlyOnce][i % 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publisher_to_v5_subscriber() {
    let node = TestNode::start().await;
    let (s, mut s_pump) = v5(&node, "mix-v5-sub").await;
    v5_sub(&s, &mut s_pump, "mix/to5").await;
    let (p, _p_pump) = v4(&node, "mix-v4-pub", None).await;
    const N: usize = 30;
    for i in 0..N {
        p.publish("mix/to5", v4_qos(i), false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    p.publish("mix/to5", V4QoS::ExactlyOnce, false, "fence")
        .await
        .expect("queue publish");
    assert_eq!(
        v5_collect(&mut s_pump, "fence").await,
        expected("mix/to5", N)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publisher_to_v311_subscriber() {
    let node = TestNode::start().await;
    let (s, mut s_pump) = v4(&node, "mix-v4-sub", None).await;
    v4_sub(&s, &mut s_pump, "mix/to4").await;
    let (p, _p_pump) = v5(&node, "mix-v5-pub").await;
    const N: usize = 30;
    for i in 0..N {
        // Every other message carries v5 properties the 3.1.1 side must not see.
        if i % 2 == 0 {
            let props = V5PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                message_expiry_interval: Some(60),
                ..Default::default()
            };
            p.publish_with_properties("mix/to4", v5_qos(i), false, format!("{i}"), props)
                .await
                .expect("queue publish");
        } else {
            p.publish("mix/to4", v5_qos(i), false, format!("{i}"))
                .await
                .expect("queue publish");
        }
    }
    p.publish("mix/to4", V5QoS::ExactlyOnce, false, "fence")
        .await
        .expect("queue publish");
    assert_eq!(
        v4_collect(&mut s_pump, "fence").await,
        expected("mix/to4", N)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_versions_subscribed_to_both_versions() {
    let node = TestNode::start().await;
    let (s4, mut s4_pump) = v4(&node, "mix-both-s4", None).await;
    v4_sub(&s4, &mut s4_pump, "both/#").await;
    let (s5, mut s5_pump) = v5(&node, "mix-both-s5").await;
    v5_sub(&s5, &mut s5_pump, "both/#").await;
    let (p4, _p4_pump) = v4(&node, "mix-both-p4", None).await;
    let (p5, _p5_pump) = v5(&node, "mix-both-p5").await;
    const N: usize = 20;
    for i in 0..N {
        p4.publish("both/from4", v4_qos(i), false, format!("{i}"))
            .await
            .expect("queue publish");
        p5.publish("both/from5", v5_qos(i), false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    p4.publish("both/from4", V4QoS::ExactlyOnce, false, "fence4")
        .await
        .expect("queue publish");
    p5.publish("both/from5", V5QoS::ExactlyOnce, false, "fence5")
        .await
        .expect("queue publish");

    let got4 = v4_collect_all(&mut s4_pump, &["fence4", "fence5"]).await;
    let got5 = v5_collect_all(&mut s5_pump, &["fence4", "fence5"]).await;
    for (who, got) in [("3.1.1 subscriber", got4), ("v5 subscriber", got5)] {
        // Messages from the two publishers interleave; per publisher they are in order.
        let from4: Vec<_> = got
            .iter()
            .filter(|m| m.0 == "both/from4")
            .cloned()
            .collect();
        let from5: Vec<_> = got
            .iter()
            .filter(|m| m.0 == "both/from5")
            .cloned()
            .collect();
        assert_eq!(
            from4,
            expected("both/from4", N),
            "{who}, from the 3.1.1 publisher"
        );
        assert_eq!(
            from5,
            expected("both/from5", N),
            "{who}, from the v5 publisher"
        );
        assert_eq!(got.len(), 2 * N, "{who}: nothing else");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_crosses_versions() {
    let node = TestNode::start().await;
    let (p5, mut p5_pump) = v5(&node, "mix-ret-p5").await;
    p5.publish("mixret/from5", V5QoS::AtLeastOnce, true, "r5")
        .await
        .expect("queue publish");
    p5_pump
        .wait_for("PUBACK", |e| {
            matches!(e, rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))).then_some(())
        })
        .await;
    let (p4, mut p4_pump) = v4(&node, "mix-ret-p4", None).await;
    p4.publish("mixret/from4", V4QoS::AtLeastOnce, true, "r4")
        .await
        .expect("queue publish");
    p4_pump
        .wait_for("PUBACK", |e| {
            matches!(e, Event::Incoming(V4Packet::PubAck(_))).then_some(())
        })
        .await;

    let (s4, mut s4_pump) = v4(&node, "mix-ret-s4", None).await;
    v4_sub(&s4, &mut s4_pump, "mixret/+").await;
    let (s5, mut s5_pump) = v5(&node, "mix-ret-s5").await;
    v5_sub(&s5, &mut s5_pump, "mixret/+").await;
    p4.publish("mixret/fence", V4QoS::AtLeastOnce, false, "fence")
        .await
        .expect("queue publish");

    let mut got4 = v4_collect(&mut s4_pump, "fence").await;
    got4.sort();
    let mut got5 = v5_collect(&mut s5_pump, "fence").await;
    got5.sort();
    let want = vec![
        ("mixret/from4".to_string(), "r4".to_string(), 1, true),
        ("mixret/from5".to_string(), "r5".to_string(), 1, true),
    ];
    assert_eq!(got4, want, "3.1.1 subscriber");
    assert_eq!(got5, want, "v5 subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_of_v311_client_reaches_v5_subscriber() {
    let node = TestNode::start().await;
    let (s5, mut s5_pump) = v5(&node, "mix-will-s5").await;
    v5_sub(&s5, &mut s5_pump, "mixwill/#").await;
    let (_c, pump) = v4(
        &node,
        "mix-will-v4",
        Some(LastWill::new(
            "mixwill/v4",
            "bye",
            V4QoS::AtLeastOnce,
            false,
        )),
    )
    .await;
    pump.kill().await;
    let got = s5_pump
        .wait_for_within(TIMEOUT, "will", |e| match e {
            rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (got.topic.as_ref(), text(&got.payload).as_str()),
        (&b"mixwill/v4"[..], "bye")
    );
}
