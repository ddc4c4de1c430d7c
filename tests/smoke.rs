//! The shortest path through the broker: raw CONNECT, SUBSCRIBE, PUBLISH and delivery.
mod common;

use common::{RawClient, TestBroker};
use dataloom::codec::Packet;

#[tokio::test]
async fn v311_connect_subscribe_publish() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.version = dataloom::codec::ProtocolVersion::V3_1_1;
    // CONNECT 3.1.1, clean session, keep alive 60, client id "a"
    c.send_hex("10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 61").await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0));
    // SUBSCRIBE pkid 1, "t" QoS 0
    c.send_hex("82 06 00 01 00 01 74 00").await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(s)) if s.codes == vec![0]));
    // PUBLISH QoS 0 "t" payload "x"
    c.send_hex("30 04 00 01 74 78").await;
    match c.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"x"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    b.stop().await;
}
