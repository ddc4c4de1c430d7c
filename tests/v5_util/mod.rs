//! Helpers shared by the MQTT 5 test files (`tests/v5*.rs`): raw v5 CONNECT/SUBSCRIBE/PUBLISH
//! round trips on top of [`RawClient`], barriers and bounded negative waits.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use dataloom::codec::{
    Ack, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscribeFilter,
};

use crate::common::{RawClient, TestBroker, WAIT};

/// How long a "nothing else arrives" check listens. Only used where no event can prove absence.
pub const QUIET: Duration = Duration::from_millis(300);

/// A v5 CONNECT with clean start, keep alive 60 and no properties.
pub fn connect_packet(client_id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A will on `topic` with `payload`, QoS 0, no properties.
pub fn will(topic: &str, payload: &str) -> LastWill {
    LastWill {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

/// Connects with a CONNECT built by `edit` (which may change the protocol version) and returns
/// the client and its CONNACK.
pub async fn connect_with(
    addr: std::net::SocketAddr,
    client_id: &str,
    edit: impl FnOnce(&mut Connect),
) -> (RawClient, ConnAck) {
    let mut c = RawClient::connect(addr).await;
    let mut p = connect_packet(client_id);
    edit(&mut p);
    c.version = p.protocol;
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => (c, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects with defaults and asserts success.
pub async fn connect(b: &TestBroker, client_id: &str) -> RawClient {
    connect_ok(b, client_id, |_| {}).await
}

/// Connects with a CONNECT built by `edit` and asserts success.
pub async fn connect_ok(b: &TestBroker, client_id: &str, edit: impl FnOnce(&mut Connect)) -> RawClient {
    let (c, ack) = connect_with(b.addr, client_id, edit).await;
    assert_eq!(ack.code, 0, "CONNACK for {client_id}: {ack:?}");
    c
}

/// A subscription filter with the given options' defaults (no local off, RAP off, RH 0).
pub fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: f.to_string(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::OnSubscribe,
    }
}

/// Sends SUBSCRIBE (optionally with a subscription identifier) and returns the SUBACK.
pub async fn subscribe_many(
    c: &mut RawClient,
    pkid: u16,
    filters: Vec<SubscribeFilter>,
    sub_id: Option<u32>,
) -> SubAck {
    let mut properties = Properties::default();
    properties.subscription_identifiers.extend(sub_id);
    c.send_packet(&Packet::Subscribe(Subscribe { pkid, filters, properties })).await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(s.pkid, pkid);
            s
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Subscribes to one filter and asserts the granted QoS.
pub async fn subscribe(c: &mut RawClient, pkid: u16, f: &str, qos: QoS) {
    let ack = subscribe_many(c, pkid, vec![filter(f, qos)], None).await;
    assert_eq!(ack.codes, vec![qos as u8]);
}

/// A PUBLISH with no properties.
pub fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Sends a PUBLISH; for QoS 1 waits for the PUBACK and returns its reason code (0 for QoS 0).
/// Once a QoS 1 publish is acknowledged it has been routed to every subscriber's queue.
pub async fn send_publish(c: &mut RawClient, p: Publish) -> u8 {
    let (qos, pkid) = (p.qos, p.pkid);
    c.send_packet(&Packet::Publish(p)).await;
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => match c.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => a.code,
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        },
        QoS::ExactlyOnce => match c.recv().await {
            Some(Packet::PubRec(a)) if a.pkid == pkid => a.code,
            other => panic!("expected PUBREC {pkid}, got {other:?}"),
        },
    }
}

/// Publishes `payload` to `topic` at QoS 1 and waits for the PUBACK (the routing barrier).
pub async fn pub1(c: &mut RawClient, pkid: u16, topic: &str, payload: &[u8]) -> u8 {
    send_publish(c, publish(topic, QoS::AtLeastOnce, pkid, payload)).await
}

/// The next packet, which must be a PUBLISH.
pub async fn recv_publish(c: &mut RawClient) -> Publish {
    match c.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// The next packet, which must be a DISCONNECT; then the server must close the connection.
pub async fn recv_disconnect(c: &mut RawClient) -> Disconnect {
    let got = c.until_closed().await;
    match got.as_slice() {
        [.., Packet::Disconnect(d)] => d.clone(),
        other => panic!("expected DISCONNECT then close, got {other:?}"),
    }
}

/// Asserts the server sends nothing within [`QUIET`].
pub async fn expect_silence(c: &mut RawClient) {
    if let Ok(p) = tokio::time::timeout(QUIET, c.recv()).await {
        panic!("expected nothing, got {p:?}");
    }
}

/// Sends PINGREQ and returns every packet the server sent before the PINGRESP.
pub async fn until_pingresp(c: &mut RawClient) -> Vec<Packet> {
    c.send_packet(&Packet::PingReq).await;
    let mut got = Vec::new();
    loop {
        match c.recv().await {
            Some(Packet::PingResp) => return got,
            Some(p) => got.push(p),
            None => panic!("connection closed before PINGRESP; got {got:?}"),
        }
    }
}

/// Sends an ack packet (`Packet::PubAck`, `Packet::PubRel`, ...) with reason 0.
pub async fn send_ack(c: &mut RawClient, kind: fn(Ack) -> Packet, pkid: u16) {
    c.send_packet(&kind(Ack { pkid, code: 0, properties: Properties::default() })).await;
}

/// Sends DISCONNECT with `code` and waits until the server closes the connection.
pub async fn disconnect(mut c: RawClient, code: u8, properties: Properties) {
    c.send_packet(&Packet::Disconnect(Disconnect { code, properties })).await;
    let rest = c.until_closed().await;
    assert!(rest.is_empty(), "unexpected packets after DISCONNECT: {rest:?}");
}

/// Waits (polling, bounded by [`WAIT`]) until the broker holds `n` sessions.
pub async fn wait_sessions(b: &TestBroker, n: usize) {
    let broker = &b.running.as_ref().expect("running").broker;
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.session_count() != n {
        assert!(tokio::time::Instant::now() < deadline, "broker never reached {n} sessions");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The payload as a string, for readable assertions.
pub fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Polls a rumqttc v5 event loop until an incoming packet that `pick` maps to a value; panics
/// when none comes within [`WAIT`] (`what` names the packet).
pub async fn rumqttc_until<T>(
    ev: &mut rumqttc::v5::EventLoop,
    what: &str,
    mut pick: impl FnMut(rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::v5::Event::Incoming(p) = ev.poll().await.expect("rumqttc connection")
                && let Some(t) = pick(p)
            {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} in time"))
}

/// Polls a rumqttc v5 event loop until its CONNACK.
pub async fn rumqttc_connack(ev: &mut rumqttc::v5::EventLoop) -> rumqttc::v5::mqttbytes::v5::ConnAck {
    use rumqttc::v5::mqttbytes::v5::Packet as RPacket;
    rumqttc_until(ev, "CONNACK", |p| if let RPacket::ConnAck(a) = p { Some(a) } else { None }).await
}

/// Polls a rumqttc v5 event loop until a SUBACK.
pub async fn rumqttc_suback(ev: &mut rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet as RPacket;
    rumqttc_until(ev, "SUBACK", |p| matches!(p, RPacket::SubAck(_)).then_some(())).await;
}
