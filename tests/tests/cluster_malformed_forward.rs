//! A peer sends a forwarded batch the node cannot decode, followed by a good one. Acking
//! the good one would release, at a real sender, the QoS 1 messages the bad one held:
//! they were never delivered, and their resend would then be dropped as a duplicate. So
//! the node must count the bad frame, close the link it came on, drop what follows on
//! that link, and take everything again, in order, from the peer's next link. A second
//! malformed frame soon after is skipped instead: closing again would loop on a frame
//! that is resent as it is, and the link carries Raft too.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tern_cluster::forward::{ForwardBatch, Forwarded};
use tern_cluster::transport::{TlsIdentity, Transport, TransportConfig};
use tern_cluster::{NodeInfo, WireMessage};
use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::{start_node, test_config};
use tern_tests::{unique_temp_dir, wait_until};

const WAIT: Duration = Duration::from_secs(10);
/// The forwarding lane and the tag of a batch on it (`node/forwarding.rs`).
const DATA_LANE: u8 = 0;
const TAG_BATCH: u8 = 0;
/// The node id the test plays.
const PEER: u64 = 5;

fn batch_frame(messages: &[(u64, &str)]) -> Bytes {
    let batch = ForwardBatch {
        origin: PEER,
        link_epoch: 1,
        messages: messages
            .iter()
            .map(|&(seq, payload)| Forwarded {
                seq,
                message: WireMessage {
                    origin_client: "peer-client".into(),
                    ..WireMessage::new("bad/t", Bytes::from(payload.to_string()), 1, false)
                },
                shared: None,
            })
            .collect(),
    };
    let mut frame = BytesMut::new();
    frame.put_u8(TAG_BATCH);
    frame.put_slice(&batch.encode().expect("encode"));
    frame.freeze()
}

/// A batch the node cannot read: a compact batch whose first topic is a zero byte. A
/// mebibyte long, so that the frame sent right after it is on its way long before the
/// node has read this one and closed the link.
fn bad_frame() -> Bytes {
    let mut bad = BytesMut::new();
    bad.put_u8(TAG_BATCH);
    bad.put_slice(&[0x93, 0x05, 0x01, 0x91, 0x95, 0x01]);
    bad.put_bytes(0, 1024 * 1024);
    bad.freeze()
}

/// The payloads `subscriber` receives before one equal to `fence`.
async fn payloads_until(subscriber: &mut RawClient, fence: &str) -> Vec<String> {
    let got = subscriber.recv_until_payload(fence).await;
    got.iter().map(|p| text(&p.payload)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_closes_its_link_and_nothing_behind_it_is_lost() {
    let certs = unique_temp_dir("tern-certs");
    tern_cluster::transport::tls::write_local_cluster_certs(&certs, &[0, PEER], true)
        .expect("certificates");
    let node = start_node(0, test_config(0, &certs, Vec::new(), 1)).await;
    let mut subscriber = RawClient::v311(node.mqtt_addr, "sub").await;
    subscriber.subscribe("bad/#", QoS::AtLeastOnce).await;

    let identity = TlsIdentity::from_files(
        &certs.join("ca.pem"),
        &certs.join(format!("node-{PEER}.pem")),
        &certs.join(format!("node-{PEER}.key")),
    )
    .expect("identity");
    let peer = Transport::bind(
        TransportConfig {
            redial_initial_backoff_ms: 20,
            ..Default::default()
        },
        &identity,
        PEER,
        "127.0.0.1:0".parse().expect("literal"),
        NodeInfo {
            cluster_addr: String::new(),
            region: "test".into(),
        },
    )
    .expect("bind");
    peer.connect(0, node.cluster.cluster_addr())
        .await
        .expect("link to node 0");
    let lane = peer.send_stream(0, DATA_LANE);

    // Sequence 1 in a batch the node cannot read, then sequence 2 in a good one, on the
    // same link, both sent before the node can have read the first.
    let (sent_bad, sent_good) = tokio::join!(
        lane.send(bad_frame()),
        lane.send(batch_frame(&[(2, "second")]))
    );
    sent_bad.expect("send bad");
    sent_good.expect("send good");

    assert!(
        wait_until(WAIT, || node.cluster.stats().malformed_forward_frames == 1).await,
        "the bad batch is counted"
    );
    assert!(
        wait_until(WAIT, || peer
            .link(0)
            .is_some_and(|l| l.links_established >= 2 && l.connected))
        .await,
        "node 0 closed the link and the peer redialled"
    );
    // What a real sender does on its next link: everything unacknowledged, in order.
    lane.send(batch_frame(&[(1, "first"), (2, "second"), (3, "fence")]))
        .await
        .expect("resend");
    let got = payloads_until(&mut subscriber, "fence").await;
    assert_eq!(got, ["first", "second"], "both, once each, in order");
    assert_eq!(node.cluster.stats().malformed_forward_frames, 1);

    // Malformed again within a minute: most likely the same frame resent, so closing the
    // link (which Raft shares) again would only loop. It is skipped and counted, and the
    // link stays up for what follows.
    let links = peer.link(0).map(|l| l.links_established);
    lane.send(bad_frame()).await.expect("send bad again");
    lane.send(batch_frame(&[(4, "after"), (5, "fence-2")]))
        .await
        .expect("send after");
    let got = payloads_until(&mut subscriber, "fence-2").await;
    assert_eq!(got, ["after"]);
    assert_eq!(node.cluster.stats().malformed_forward_frames, 2);
    assert_eq!(
        peer.link(0).map(|l| l.links_established),
        links,
        "no new link"
    );
    assert!(peer.link(0).is_some_and(|l| l.connected));

    peer.shutdown().await;
    node.cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&certs);
}
