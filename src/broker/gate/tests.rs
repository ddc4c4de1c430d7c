//! The schema gate against a real in-memory broker: registration, versions, removal,
//! refusals, retained-state counting, dead letters, start-up loading.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::{Broker, BrokerLimits};
use crate::config::Schemas;
use crate::model::Message;
use crate::schema::{Memo, Registry};
use crate::store::MemoryStore;
use dataloom_codec::QoS;

const TEMP: &str = r#"{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}"#;

fn broker() -> Arc<Broker> {
    Broker::new(
        BrokerLimits {
            max_queued_messages: 10,
            max_queued_bytes: 0,
            persistent_session_expiry: None,
            max_memory: 0,
        },
        Arc::new(MemoryStore),
    )
    .expect("broker")
}

fn msg(topic: &str, payload: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        topic_bytes: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    })
}

fn registry(dead_letter: bool) -> SchemaGate {
    SchemaGate::with_registry(Registry::new(&Schemas { dead_letter, ..Schemas::default() }).unmetered())
}

fn publish(
    r: &SchemaGate,
    b: &Broker,
    topic: &str,
    payload: &str,
    retain: bool,
) -> Result<Option<String>, Refusal> {
    r.publish(b, msg(topic, payload, retain), Vec::new(), ("c1", &mut Memo::default())).map(|routed| {
        routed.published.expect("stored");
        routed.note
    })
}

fn user_prop(m: &Message, key: &str) -> Option<String> {
    m.properties.user_properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn register_replace_remove() {
    let (b, r) = (broker(), registry(false));
    let note = publish(&r, &b, "$schema/sensors/%2B/temperature", TEMP, true).expect("registered");
    assert_eq!(note.as_deref(), Some("schema sensors/+/temperature v1 registered"));
    let stored = b.retained_under("$schema/#");
    assert_eq!(stored.len(), 1);
    assert_eq!(user_prop(&stored[0], "filter").as_deref(), Some("sensors/+/temperature"));
    assert_eq!(user_prop(&stored[0], "version").as_deref(), Some("1"));

    let note = publish(&r, &b, "$schema/sensors/%2b/temperature", TEMP, true).expect("same again");
    assert_eq!(note.as_deref(), Some("schema sensors/+/temperature v1 registered (unchanged)"));
    publish(&r, &b, "$schema/sensors/%2B/temperature", r#"{"type":"object"}"#, true).expect("replaced");
    assert_eq!(r.get("sensors/+/temperature").map(|s| s.version), Some(2));
    assert_eq!(b.retained_under("$schema/#").len(), 1, "one canonical topic per filter");

    let note = publish(&r, &b, "$schema/sensors/%2B/temperature", "", true).expect("removed");
    assert_eq!(note.as_deref(), Some("schema sensors/+/temperature v2 removed"));
    assert!(r.is_empty() && b.retained_under("$schema/#").is_empty());
}

#[tokio::test]
async fn a_connection_memo_follows_registrations() {
    let (b, r) = (broker(), registry(false));
    let mut memo = Memo::default();
    let mut send = |topic: &str, payload: &str| {
        r.publish(&b, msg(topic, payload, false), Vec::new(), ("c1", &mut memo))
            .map(|_| ())
            .map_err(|e| e.reason)
    };
    assert!(send("t/1", "not json").is_ok(), "no schema yet");
    publish(&r, &b, "$schema/t/%2B", TEMP, true).expect("registered");
    let e = send("t/1", "not json").expect_err("registration seen");
    assert!(e.starts_with("schema t/+ v1:"), "{e}");
    assert!(send("t/1", r#"{"celsius":1}"#).is_ok());
    publish(&r, &b, "$schema/t/1", r#"{"type":"string"}"#, true).expect("more specific");
    let e = send("t/1", r#"{"celsius":1}"#).expect_err("the new filter governs");
    assert!(e.starts_with("schema t/1 v1:"), "{e}");
    assert!(send("t/2", r#"{"celsius":1}"#).is_ok(), "another topic, the old filter");
    publish(&r, &b, "$schema/t/%2B", r#"{"type":"integer"}"#, true).expect("replaced");
    let e = send("t/2", r#"{"celsius":1}"#).expect_err("replacement seen");
    assert!(e.starts_with("schema t/+ v2:"), "{e}");
    publish(&r, &b, "$schema/t/%2B", "", true).expect("removed");
    assert!(send("t/2", "not json").is_ok(), "removal seen");
}

#[tokio::test]
async fn enforces_and_keeps_state() {
    let (b, r) = (broker(), registry(false));
    publish(&r, &b, "$schema/sensors/%2B/temperature", TEMP, true).expect("registered");
    publish(&r, &b, "sensors/k/temperature", r#"{"celsius":20}"#, true).expect("valid");
    let e = publish(&r, &b, "sensors/k/temperature", r#"{"celsius":"hot"}"#, true).expect_err("invalid");
    assert_eq!(e.code, 0x99);
    assert_eq!(e.reason, r#"schema sensors/+/temperature v1: /celsius: "hot" is not of type "number""#);
    let kept = b.retained_under("sensors/k/temperature");
    assert_eq!(&kept[0].payload[..], br#"{"celsius":20}"#, "retained state unchanged");
    publish(&r, &b, "sensors/k/humidity", "not json", false).expect("not governed");
}

#[tokio::test]
async fn refusals_keep_the_old_schema() {
    let (b, r) = (broker(), registry(false));
    publish(&r, &b, "$schema/a", TEMP, true).expect("registered");
    let e = publish(&r, &b, "$schema/a", r#"{"type":"nope"}"#, true).expect_err("bad document");
    assert_eq!(e.code, 0x99);
    assert!(
        e.reason.starts_with("schema a: not a valid JSON Schema") && e.reason.ends_with("; v1 stays"),
        "{e:?}"
    );
    let e = publish(&r, &b, "$schema/a", TEMP, false).expect_err("not retained");
    assert_eq!(e.code, 0x83);
    let e = publish(&r, &b, "$schema/a/%41", TEMP, true).expect_err("bad escape");
    assert!(e.code == 0x83 && e.reason.contains("%41"), "{e:?}");
    assert_eq!(r.get("a").map(|s| s.version), Some(1));
    assert_eq!(user_prop(&b.retained_under("$schema/a")[0], "version").as_deref(), Some("1"));
}

#[tokio::test]
async fn counts_invalid_retained_values() {
    let (b, r) = (broker(), registry(false));
    for (t, p) in
        [("s/1/temperature", r#"{"celsius":1}"#), ("s/2/temperature", "{}"), ("s/3/temperature", "x")]
    {
        publish(&r, &b, t, p, true).expect("no schema yet");
    }
    let note = publish(&r, &b, "$schema/s/%2B/temperature", TEMP, true).expect("registered");
    assert_eq!(
        note.as_deref(),
        Some("schema s/+/temperature v1 registered; 2 retained values do not validate")
    );
    // A more general schema does not count values the specific one governs.
    let note = publish(&r, &b, "$schema/s/%23", r#"{"type":"string"}"#, true).expect("registered");
    assert_eq!(note.as_deref(), Some("schema s/# v1 registered"));
}

#[tokio::test]
async fn dead_letters() {
    let (b, r) = (broker(), registry(true));
    publish(&r, &b, "$schema/t", r#"{"type":"number"}"#, true).expect("registered");
    let m = Message { retain: true, ..(*msg("t", "\"x\"", true)).clone() };
    r.publish(&b, Arc::new(m), Vec::new(), ("dev-7", &mut Memo::default())).expect_err("refused");
    assert!(b.retained_under("$dead/#").is_empty(), "dead letters are not retained");
    assert!(!r.admit_will(&b, &msg("t", "nope", false), "dev-7"));
    assert!(r.admit_will(&b, &msg("t", "3", false), "dev-7"));
    assert!(r.check_will("$schema/t", b"{}").is_err());
    assert_eq!(
        r.check_will("t", b"[]").expect_err("invalid").reason,
        r#"will: schema t v1: (root): [] is not of type "number""#
    );
}

#[tokio::test]
async fn start_recovers_then_loads_dir() {
    let b = broker();
    let first = registry(false);
    publish(&first, &b, "$schema/a", TEMP, true).expect("registered");
    publish(&first, &b, "$schema/a", r#"{"type":"object"}"#, true).expect("v2");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("sensors/+")).expect("mkdir");
    std::fs::write(dir.path().join("sensors/+/temperature.json"), TEMP).expect("write");
    std::fs::write(dir.path().join("a.json"), r#"{"type":"object"}"#).expect("write");
    std::fs::write(dir.path().join("%23.json"), "{}").expect("write");
    std::fs::write(dir.path().join("broken.json"), "{").expect("write");
    std::fs::write(dir.path().join("README.md"), "not a schema").expect("write");
    let cfg = Schemas { dir: dir.path().to_path_buf(), ..Schemas::default() };
    let r = SchemaGate::start(&cfg, &b).expect("lenient");
    assert_eq!(r.get("a").map(|s| s.version), Some(2), "identical file keeps the stored version");
    assert_eq!(r.get("sensors/+/temperature").map(|s| s.version), Some(1));
    assert!(r.get("#").is_some() && r.get("broken").is_none());
    assert_eq!(r.len(), 3);
    assert_eq!(b.retained_under("$schema/#").len(), 3, "file schemas are discoverable");

    let strict = Schemas { strict: true, ..cfg };
    let e = SchemaGate::start(&strict, &b).expect_err("strict");
    assert!(e.to_string().contains("broken.json"), "{e}");
}
