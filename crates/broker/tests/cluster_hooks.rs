//! What the broker tells the cluster about its routes: a plain filter once when its first
//! local subscriber arrives and once when its last leaves; a shared group's member count
//! on every change. Session end removes routes too.

mod common;

use std::sync::Arc;

use common::{start_in, Client};
use parking_lot::Mutex;
use tern_broker::cluster::SessionFuture;
use tern_broker::{BrokerConfig, Cluster, Message};
use tern_codec::*;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Cluster for Recorder {
    fn route_added(&self, filter: &str) {
        self.events.lock().push(format!("+{filter}"));
    }
    fn route_removed(&self, filter: &str) {
        self.events.lock().push(format!("-{filter}"));
    }
    fn shared_members(&self, group: &str, filter: &str, members: usize) {
        self.events
            .lock()
            .push(format!("{group}/{filter}={members}"));
    }
    fn forward(&self, _: &Arc<Message>) -> bool {
        false
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
    fn claim(&self, _: &str, _: bool) -> SessionFuture {
        Box::pin(std::future::ready(None))
    }
}

async fn unsubscribe(c: &mut Client, filter: &str) {
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec![filter.into()],
        user_properties: vec![],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
}

#[tokio::test]
async fn routes_are_reported_on_first_and_last_subscriber() {
    let recorder = Arc::new(Recorder::default());
    let (_broker, addr) = start_in(BrokerConfig::default(), recorder.clone()).await;
    let (mut a, _) = Client::connect(addr, ProtocolVersion::V5, "a", true, None).await;
    let (mut b, _) = Client::connect(addr, ProtocolVersion::V5, "b", true, None).await;
    a.subscribe("s/+", QoS::AtLeastOnce).await;
    b.subscribe("s/+", QoS::AtMostOnce).await;
    a.subscribe("s/+", QoS::ExactlyOnce).await; // a re-subscribe changes no route
    a.subscribe("$share/g/jobs", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/jobs", QoS::AtLeastOnce).await;
    unsubscribe(&mut a, "s/+").await;
    unsubscribe(&mut a, "$share/g/jobs").await;
    unsubscribe(&mut b, "s/+").await;
    // b's session ends with its connection (expiry 0): its last route goes.
    b.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(b.recv().await.is_none());
    let events = recorder.events.lock().clone();
    assert_eq!(
        events,
        ["+s/+", "g/jobs=1", "g/jobs=2", "g/jobs=1", "-s/+", "g/jobs=0"]
    );
}
