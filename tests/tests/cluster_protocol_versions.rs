//! A cluster whose nodes speak different cluster protocol versions, as during a rolling
//! upgrade: node 2 offers only version 1 (`cluster.transport.protocol_version = 1`, the
//! wire behaviour of releases before compact batches), nodes 0 and 1 offer version 2.
//! Each link must settle on the highest common version, and every QoS 1 message
//! published on any node, MQTT 5 properties included, must reach the subscribers on
//! every other node exactly once, whichever form its batches travelled in.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::QoS;
use tern_tests::clients::{publish_packet, text, RawClient};
use tern_tests::cluster::TestCluster;

const FORM: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);
const PER_NODE: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_protocol_versions_1_and_2_forward_to_each_other_exactly_once() {
    let cluster = TestCluster::start_with(3, 3, |id, c| {
        if id == 2 {
            c.transport.protocol_version = 1;
        }
    })
    .await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    let mut subscribers = Vec::new();
    for i in 0..3 {
        let mut s = RawClient::v5(cluster.node(i).mqtt_addr, &format!("sub-{i}")).await;
        s.subscribe("mix/#", QoS::AtLeastOnce).await;
        subscribers.push(s);
    }
    assert!(
        cluster
            .wait_all(SETTLE, |s| s.route_count >= 3
                && s.links.iter().filter(|l| l.connected).count() == 2)
            .await,
        "every node knows every route and is linked to both others"
    );
    // Links to node 2 speak 1, the link between 0 and 1 speaks 2.
    for i in 0..3u64 {
        let links = cluster.node(i as usize).cluster.status().await.links;
        for l in links {
            let want = if i == 2 || l.node_id == 2 { 1 } else { 2 };
            assert_eq!(
                l.protocol_version,
                Some(want),
                "link {i}->{}: {l:?}",
                l.node_id
            );
        }
    }

    for i in 0..3 {
        let mut publisher = RawClient::v5(cluster.node(i).mqtt_addr, &format!("pub-{i}")).await;
        for n in 0..PER_NODE {
            let mut p = publish_packet(
                &format!("mix/{i}/{}", n % 3),
                format!("{i}-{n}"),
                QoS::AtLeastOnce,
                false,
            );
            // Every third message carries the optional fields too.
            if n.is_multiple_of(3) {
                p.properties.content_type = Some("text/plain".into());
                p.properties.correlation_data = Some(Bytes::from(format!("c{n}")));
                p.properties
                    .user_properties
                    .push(("from".into(), format!("node-{i}")));
            }
            assert!(!publisher.publish_packet(p).await.is_error());
        }
    }

    for (i, s) in subscribers.iter_mut().enumerate() {
        let got = s.recv_publishes(3 * PER_NODE).await;
        let mut per_payload: BTreeMap<String, usize> = BTreeMap::new();
        for p in &got {
            let payload = text(&p.payload);
            *per_payload.entry(payload.clone()).or_default() += 1;
            let (node, n) = payload.split_once('-').expect("node-n payload");
            let n: usize = n.parse().expect("number");
            assert_eq!(p.topic, format!("mix/{node}/{}", n % 3), "subscriber {i}");
            if n.is_multiple_of(3) {
                let props = &p.properties;
                assert_eq!(props.content_type.as_deref(), Some("text/plain"), "{p:?}");
                assert_eq!(
                    props.correlation_data.as_deref(),
                    Some(format!("c{n}").as_bytes()),
                    "{p:?}"
                );
                assert!(
                    props
                        .user_properties
                        .contains(&("from".to_string(), format!("node-{node}"))),
                    "{p:?}"
                );
            }
        }
        assert_eq!(
            per_payload.len(),
            3 * PER_NODE,
            "subscriber {i}: every message"
        );
        assert!(
            per_payload.values().all(|&c| c == 1),
            "subscriber {i}: each message once"
        );
    }
    cluster.shutdown().await;
}
