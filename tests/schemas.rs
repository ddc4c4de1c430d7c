//! `$schema/` over MQTT 5 (raw bytes for exact reason codes and reason strings, rumqttc for a
//! real client): register, replace, remove, precedence, refused documents, enforcement at
//! QoS 0/1/2, retained state, wills, discovery and dead letters.
mod common;
mod v5_util;

use common::{TestBroker, WAIT};
use dataloom::codec::{Packet, Publish, QoS, reason};
use dataloom::config::OnInvalid;
use v5_util::*;

const TEMP: &str = r#"{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}"#;
const TEMP_TOPIC: &str = "$schema/sensors/%2B/temperature";

fn retained(topic: &str, qos: QoS, pkid: u16, payload: &str) -> Publish {
    Publish { retain: true, ..publish(topic, qos, pkid, payload.as_bytes()) }
}

/// Sends a QoS 1 PUBLISH and returns the PUBACK's code and reason string.
async fn pub_ack(c: &mut common::RawClient, p: Publish) -> (u8, Option<String>) {
    let pkid = p.pkid;
    c.send_packet(&Packet::Publish(p)).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) if a.pkid == pkid => (a.code, a.properties.reason_string),
        other => panic!("expected PUBACK {pkid}, got {other:?}"),
    }
}

fn user(p: &Publish, key: &str) -> Option<String> {
    p.properties.user_properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_replace_remove_and_discover() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-admin").await;
    let (code, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    assert_eq!((code, why.as_deref()), (0x10, Some("schema sensors/+/temperature v1 registered")));
    let (_, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 2, r#"{"type":"object"}"#)).await;
    assert_eq!(why.as_deref(), Some("schema sensors/+/temperature v2 registered"));

    // Discovery: `$schema/#` lists it with `filter` and `version`; a root `#` does not.
    let mut s = connect(&b, "sch-sub").await;
    subscribe(&mut s, 1, "#", QoS::AtLeastOnce).await;
    subscribe(&mut s, 2, "$schema/#", QoS::AtLeastOnce).await;
    let got = recv_publish(&mut s).await;
    assert_eq!(&got.topic[..], TEMP_TOPIC.as_bytes());
    assert!(got.retain);
    assert_eq!(user(&got, "filter").as_deref(), Some("sensors/+/temperature"));
    assert_eq!(user(&got, "version").as_deref(), Some("2"));
    expect_silence(&mut s).await;

    let (_, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 3, "")).await;
    assert_eq!(why.as_deref(), Some("schema sensors/+/temperature v2 removed"));
    assert_eq!(&recv_publish(&mut s).await.payload[..], b"", "removal reaches subscribers");
    assert_eq!(pub1(&mut c, 4, "sensors/x/temperature", b"not json").await, 0, "no schema any more");
    assert_eq!(text(&recv_publish(&mut s).await), "not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_keep_the_old_schema() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-bad").await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    let (code, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 2, r#"{"type":"nope"}"#)).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    let why = why.expect("reason string");
    assert!(
        why.starts_with("schema sensors/+/temperature: not a valid JSON Schema") && why.ends_with("v1 stays"),
        "{why}"
    );
    let (code, why) = pub_ack(&mut c, publish(TEMP_TOPIC, QoS::AtLeastOnce, 3, TEMP.as_bytes())).await;
    assert_eq!(code, reason::IMPLEMENTATION_SPECIFIC_ERROR);
    assert!(why.expect("reason").contains("must be a retained PUBLISH"));
    let (code, _) = pub_ack(&mut c, retained("$schema/a/%41", QoS::AtLeastOnce, 4, TEMP)).await;
    assert_eq!(code, reason::IMPLEMENTATION_SPECIFIC_ERROR);
    // v1 is still enforced and still the retained document.
    let (code, _) = pub_ack(&mut c, publish("sensors/1/temperature", QoS::AtLeastOnce, 5, b"{}")).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    subscribe(&mut c, 6, TEMP_TOPIC, QoS::AtMostOnce).await;
    let got = recv_publish(&mut c).await;
    assert_eq!((&got.payload[..], user(&got, "version").as_deref()), (TEMP.as_bytes(), Some("1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_literal_plus_hash() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-prec").await;
    let schemas = [
        ("$schema/sensors/%23", r#"{"type":"string"}"#),
        ("$schema/sensors/%2B/temperature", r#"{"type":"number"}"#),
        ("$schema/sensors/kitchen/temperature", r#"{"type":"integer","maximum":30}"#),
    ];
    for (i, (t, s)) in (1..).zip(schemas) {
        pub_ack(&mut c, retained(t, QoS::AtLeastOnce, i, s)).await;
    }
    let cases: [(&str, &str, bool); 7] = [
        ("sensors/kitchen/temperature", "25", true),
        ("sensors/kitchen/temperature", "25.5", false),
        ("sensors/hall/temperature", "25.5", true),
        ("sensors/hall/temperature", "\"warm\"", false),
        ("sensors/hall/humidity", "\"high\"", true),
        ("sensors/hall/humidity", "40", false),
        ("other/topic", "not json", true),
    ];
    for (i, (topic, payload, ok)) in (10..).zip(cases) {
        let (code, why) = pub_ack(&mut c, publish(topic, QoS::AtLeastOnce, i, payload.as_bytes())).await;
        assert_eq!(code != reason::PAYLOAD_FORMAT_INVALID, ok, "{topic} {payload}: {why:?}");
    }
    let (_, why) = pub_ack(&mut c, publish("sensors/kitchen/temperature", QoS::AtLeastOnce, 20, b"31")).await;
    assert_eq!(
        why.as_deref(),
        Some("schema sensors/kitchen/temperature v1: (root): 31 is greater than the maximum of 30")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_at_each_qos() {
    let b = TestBroker::start_with(|c| c.schemas.on_invalid = OnInvalid::Drop).await;
    let mut admin = connect(&b, "sch-q-admin").await;
    pub_ack(&mut admin, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    let mut s = connect(&b, "sch-q-sub").await;
    subscribe(&mut s, 1, "sensors/#", QoS::ExactlyOnce).await;
    let mut p = connect(&b, "sch-q-pub").await;

    // QoS 2 invalid: PUBREC 0x99 with the reason; valid: PUBREC 0.
    p.send_packet(&Packet::Publish(publish(
        "sensors/a/temperature",
        QoS::ExactlyOnce,
        7,
        b"{\"celsius\":\"x\"}",
    )))
    .await;
    match p.recv().await {
        Some(Packet::PubRec(a)) => {
            assert_eq!((a.pkid, a.code), (7, reason::PAYLOAD_FORMAT_INVALID));
            let why = a.properties.reason_string.expect("reason string");
            assert_eq!(why, r#"schema sensors/+/temperature v1: /celsius: "x" is not of type "number""#);
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // The refused id is free again for a valid message.
    assert_eq!(
        send_publish(&mut p, publish("sensors/a/temperature", QoS::ExactlyOnce, 7, b"{\"celsius\":1}")).await,
        0
    );
    send_ack(&mut p, Packet::PubRel, 7).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(a)) if a.pkid == 7));
    // QoS 0 invalid is dropped under on_invalid = "drop"; the connection stays.
    send_publish(&mut p, publish("sensors/a/temperature", QoS::AtMostOnce, 0, b"[]")).await;
    assert_eq!(pub1(&mut p, 8, "sensors/a/temperature", b"{\"celsius\":2}").await, 0);

    let got: Vec<String> =
        [recv_publish(&mut s).await, recv_publish(&mut s).await].iter().map(text).collect();
    assert_eq!(got, ["{\"celsius\":1}", "{\"celsius\":2}"], "only valid messages are delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_invalid_disconnects_with_reason() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-dc").await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    send_publish(&mut c, publish("sensors/a/temperature", QoS::AtMostOnce, 0, b"{}")).await;
    let d = recv_disconnect(&mut c).await;
    assert_eq!(d.code, reason::PAYLOAD_FORMAT_INVALID);
    assert_eq!(
        d.properties.reason_string.as_deref(),
        Some(r#"schema sensors/+/temperature v1: (root): "celsius" is a required property"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publish_leaves_retained_state() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-ret").await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    pub_ack(&mut c, retained("sensors/a/temperature", QoS::AtLeastOnce, 2, r#"{"celsius":20}"#)).await;
    let (code, _) =
        pub_ack(&mut c, retained("sensors/a/temperature", QoS::AtLeastOnce, 3, r#"{"celsius":null}"#)).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    subscribe(&mut c, 4, "sensors/a/temperature", QoS::AtMostOnce).await;
    assert_eq!(text(&recv_publish(&mut c).await), r#"{"celsius":20}"#);
    // Replacing the schema reports the retained values that no longer validate.
    let (_, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 5, r#"{"type":"string"}"#)).await;
    assert_eq!(
        why.as_deref(),
        Some("schema sensors/+/temperature v2 registered; 1 retained value does not validate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_retained_payload_deletes_governed_state() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "sch-del").await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    pub_ack(&mut c, retained("sensors/a/temperature", QoS::AtLeastOnce, 2, r#"{"celsius":20}"#)).await;
    // The delete is not a document: not validated, it removes the state.
    assert_eq!(
        pub_ack(&mut c, retained("sensors/a/temperature", QoS::AtLeastOnce, 3, "")).await,
        (0x10, None)
    );
    // A non-retained empty payload is an ordinary message: not JSON, refused.
    let (code, why) = pub_ack(&mut c, publish("sensors/a/temperature", QoS::AtLeastOnce, 4, b"")).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID, "{why:?}");
    subscribe(&mut c, 5, "sensors/#", QoS::AtMostOnce).await;
    expect_silence(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_information_zero_hides_reason_strings() {
    let b = TestBroker::start().await;
    let mut c = connect_ok(&b, "sch-rpi", |p| p.properties.request_problem_information = Some(0)).await;
    let (code, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, "{")).await;
    assert_eq!((code, why), (reason::PAYLOAD_FORMAT_INVALID, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_validated_at_connect_and_at_publication() {
    let b = TestBroker::start().await;
    let mut admin = connect(&b, "sch-w-admin").await;
    pub_ack(
        &mut admin,
        retained("$schema/devices/%2B/status", QoS::AtLeastOnce, 1, r#"{"required":["state"]}"#),
    )
    .await;

    let (_, ack) =
        connect_with(b.addr, "sch-w-bad", |p| p.will = Some(will("devices/d1/status", "{}"))).await;
    assert_eq!(ack.code, reason::PAYLOAD_FORMAT_INVALID);
    let why = ack.properties.reason_string.expect("reason string");
    assert_eq!(why, r#"will: schema devices/+/status v1: (root): "state" is a required property"#);

    subscribe(&mut admin, 2, "devices/#", QoS::AtMostOnce).await;
    let good =
        connect_ok(&b, "sch-w-good", |p| p.will = Some(will("devices/d2/status", r#"{"state":"offline"}"#)))
            .await;
    drop(good);
    assert_eq!(text(&recv_publish(&mut admin).await), r#"{"state":"offline"}"#);

    // A will that became invalid after CONNECT is not published.
    let stale =
        connect_ok(&b, "sch-w-stale", |p| p.will = Some(will("devices/d3/status", r#"{"state":1}"#))).await;
    pub_ack(
        &mut admin,
        retained(
            "$schema/devices/%2B/status",
            QoS::AtLeastOnce,
            3,
            r#"{"properties":{"state":{"type":"string"}}}"#,
        ),
    )
    .await;
    drop(stale);
    wait_sessions(&b, 1).await;
    expect_silence(&mut admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_the_reason() {
    let b = TestBroker::start_with(|c| c.schemas.dead_letter = true).await;
    let mut c = connect(&b, "sch-dead").await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, TEMP)).await;
    subscribe(&mut c, 2, "$dead/#", QoS::AtLeastOnce).await;
    let (code, _) =
        pub_ack(&mut c, publish("sensors/z/temperature", QoS::AtLeastOnce, 3, b"{\"celsius\":true}")).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    let got = recv_publish(&mut c).await;
    assert_eq!(&got.topic[..], b"$dead/sensors/z/temperature");
    assert_eq!(text(&got), "{\"celsius\":true}");
    assert_eq!(user(&got, "schema").as_deref(), Some("sensors/+/temperature"));
    assert_eq!(user(&got, "version").as_deref(), Some("1"));
    assert_eq!(user(&got, "error").as_deref(), Some("/celsius: true is not of type \"number\""));
    assert_eq!(user(&got, "client_id").as_deref(), Some("sch-dead"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_sees_reason_codes_and_strings() {
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PubAckReason};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let b = TestBroker::start().await;
    let (client, mut events) = AsyncClient::new(MqttOptions::new("sch-rumqttc", "127.0.0.1", b.port()), 10);
    client.publish(TEMP_TOPIC, RQoS::AtLeastOnce, true, TEMP).await.expect("queued");
    client
        .publish("sensors/r/temperature", RQoS::AtLeastOnce, false, r#"{"celsius":"x"}"#)
        .await
        .expect("queued");
    client
        .publish("sensors/r/temperature", RQoS::AtLeastOnce, false, r#"{"celsius":4}"#)
        .await
        .expect("queued");
    let mut acks = Vec::new();
    while acks.len() < 3 {
        let event =
            tokio::time::timeout(WAIT, events.poll()).await.expect("event in time").expect("connected");
        if let Event::Incoming(RPacket::PubAck(a)) = event {
            acks.push((a.reason, a.properties.and_then(|p| p.reason_string)));
        }
    }
    assert_eq!(acks[0].1.as_deref(), Some("schema sensors/+/temperature v1 registered"));
    assert_eq!(acks[1].0, PubAckReason::PayloadFormatInvalid);
    assert_eq!(
        acks[1].1.as_deref(),
        Some(r#"schema sensors/+/temperature v1: /celsius: "x" is not of type "number""#)
    );
    assert_eq!(acks[2].0, PubAckReason::NoMatchingSubscribers, "valid: routed, connection kept");
}

/// The real binary on fjall in `data` (SIGKILLed on drop); returns it and its MQTT address.
async fn spawn_broker(data: &std::path::Path) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let cfg = data.join("dataloom.toml");
    let toml = format!(
        "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"\"\n[storage]\nbackend = \"fjall\"\n\
         data_dir = {:?}\n[schemas]\ndir = \"\"\n",
        data.join("db").display().to_string()
    );
    std::fs::write(&cfg, toml).expect("write config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dataloom"))
        .args(["serve", "-c", &cfg.display().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(addr) = line.strip_prefix("dataloom listening on mqtt://") {
                return addr.parse().expect("address");
            }
        }
        panic!("broker exited before listening")
    })
    .await
    .expect("broker listening in time");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_schemas_and_versions() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut broker, addr) = spawn_broker(data.path()).await;
    let (mut c, _) = connect_with(addr, "sch-restart", |_| {}).await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 1, r#"{"type":"object"}"#)).await;
    pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 2, TEMP)).await;
    pub_ack(&mut c, retained("$schema/gone", QoS::AtLeastOnce, 3, "{}")).await;
    pub_ack(&mut c, retained("$schema/gone", QoS::AtLeastOnce, 4, "")).await;
    // Acknowledged registrations are durable: SIGKILL, no graceful shutdown.
    broker.kill().await.expect("kill");

    let (_broker, addr) = spawn_broker(data.path()).await;
    let (mut c, _) = connect_with(addr, "sch-restart-2", |_| {}).await;
    let (code, why) = pub_ack(&mut c, publish("sensors/1/temperature", QoS::AtLeastOnce, 1, b"{}")).await;
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    assert!(why.expect("reason").starts_with("schema sensors/+/temperature v2:"), "version kept");
    let (mut s, _) = connect_with(addr, "sch-restart-sub", |_| {}).await;
    subscribe(&mut s, 2, "$schema/#", QoS::AtMostOnce).await;
    let got = recv_publish(&mut s).await;
    let props = (user(&got, "filter"), user(&got, "version"));
    assert_eq!(props, (Some("sensors/+/temperature".into()), Some("2".into())));
    expect_silence(&mut s).await;
    // The next registration continues the numbering.
    let (_, why) = pub_ack(&mut c, retained(TEMP_TOPIC, QoS::AtLeastOnce, 3, r#"{"type":"array"}"#)).await;
    assert_eq!(why.as_deref(), Some("schema sensors/+/temperature v3 registered"));
}
