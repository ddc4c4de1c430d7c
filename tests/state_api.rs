//! The HTTP/JSON state API (issue 17, item 2) against a real broker: reads in topic order with
//! a cursor, one topic, writes that are real retained publishes (subscribers get them, the
//! schema gate refuses with the 0x99 text, permissions as over MQTT), the durable revision,
//! `/v1/schemas`, `/v1/openapi.json`, and bad input answered with 4xx JSON.
mod common;
mod v5_util;

use std::net::SocketAddr;

use common::{TestBroker, http_json as http};
use dataloom::auth::KeySpec;
use dataloom::codec::QoS;
use serde_json::Value;
use v5_util::*;

fn http_addr(b: &TestBroker) -> SocketAddr {
    b.running.as_ref().expect("running").http_addr.expect("http listener")
}

async fn get(b: &TestBroker, path: &str) -> (u16, Value) {
    http(http_addr(b), "GET", path, &[], b"").await
}

async fn put(b: &TestBroker, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    http(http_addr(b), "PUT", path, headers, body).await
}

/// The topics of a list answer, in order.
fn topics(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["topic"].as_str().expect("topic").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_is_a_retained_publish_and_reads_come_back_in_topic_order() {
    let b = TestBroker::start().await;
    let mut sub = connect(&b, "api-sub").await;
    subscribe(&mut sub, 1, "site/#", QoS::AtLeastOnce).await;

    let (code, put1) =
        put(&b, "/v1/state/site/b", br#"{"on":true}"#, &[("Content-Type", "application/json")]).await;
    assert_eq!(code, 200, "{put1}");
    let live = recv_publish(&mut sub).await;
    assert_eq!((&live.topic[..], &live.payload[..]), (&b"site/b"[..], &br#"{"on":true}"#[..]));
    assert_eq!(live.qos, QoS::AtLeastOnce);
    assert_eq!(live.properties.content_type.as_deref(), Some("application/json"));

    assert_eq!(put(&b, "/v1/state/site/a", b"plain text", &[]).await.0, 200);
    let mut mqtt = connect(&b, "api-pub").await;
    let mut bin = publish("site/c", QoS::AtLeastOnce, 1, &[0xff, 0x00, 0x80]);
    bin.retain = true;
    send_publish(&mut mqtt, bin).await;

    let (code, one) = get(&b, "/v1/state/site/b").await;
    assert_eq!(code, 200);
    assert_eq!(one["value"], serde_json::json!({"on": true}));
    assert_eq!(
        (one["encoding"].as_str(), one["content_type"].as_str()),
        (Some("json"), Some("application/json"))
    );
    assert_eq!(one["revision"], put1["revision"]);
    assert!(one["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339: {one}");

    let (code, page1) = get(&b, "/v1/state?filter=site/%23&limit=2").await;
    assert_eq!(code, 200, "{page1}");
    assert_eq!(topics(&page1), ["site/a", "site/b"]);
    assert_eq!(
        (page1["items"][0]["value"].as_str(), page1["items"][0]["encoding"].as_str()),
        (Some("plain text"), Some("utf-8"))
    );
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let (_, page2) = get(&b, &format!("/v1/state?filter=site/%23&limit=2&cursor={cursor}")).await;
    assert_eq!(topics(&page2), ["site/c"]);
    assert_eq!(
        (page2["items"][0]["value"].as_str(), page2["items"][0]["encoding"].as_str()),
        (Some("/wCA"), Some("base64"))
    );
    assert!(page2["next_cursor"].is_null());
    let rev = page2["revision"].as_u64().expect("revision");
    assert!(rev >= 3 && rev > put1["revision"].as_u64().expect("put revision"));

    let (code, gone) = http(http_addr(&b), "DELETE", "/v1/state/site/a", &[], b"").await;
    assert_eq!(code, 200);
    assert!(gone["revision"].as_u64() > Some(rev), "a deletion is a state change");
    assert_eq!(get(&b, "/v1/state/site/a").await.0, 404);
    assert_eq!(topics(&get(&b, "/v1/state?filter=site/%2B").await.1), ["site/b", "site/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_gate_answers_422_with_the_0x99_text_and_schemas_are_listed() {
    let b = TestBroker::start().await;
    let mut admin = connect(&b, "api-schema").await;
    let mut reg = publish(
        "$schema/sensors/%2B/temperature",
        QoS::AtLeastOnce,
        1,
        br#"{"type":"object","properties":{"celsius":{"type":"number"}}}"#,
    );
    reg.retain = true;
    assert_eq!(send_publish(&mut admin, reg).await, 0x10, "registered (no subscribers)");

    let (code, bad) = put(&b, "/v1/state/sensors/k/temperature", br#"{"celsius":"x"}"#, &[]).await;
    assert_eq!(code, 422);
    assert_eq!(bad["detail"], r#"schema sensors/+/temperature v1: /celsius: "x" is not of type "number""#);
    assert_eq!(get(&b, "/v1/state/sensors/k/temperature").await.0, 404, "never became state");
    assert_eq!(put(&b, "/v1/state/sensors/k/temperature", br#"{"celsius":4}"#, &[]).await.0, 200);

    let (code, list) = get(&b, "/v1/schemas").await;
    assert_eq!(code, 200);
    assert_eq!(list["items"][0]["filter"], "sensors/+/temperature");
    assert_eq!(list["items"][0]["version"], 1);
    let (code, one) = get(&b, "/v1/schemas/sensors/%2B/temperature").await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["document"]["properties"]["celsius"]["type"], "number");
    assert_eq!(get(&b, "/v1/schemas/nothing/here").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_read_and_write_exactly_what_mqtt_lets_them() {
    let b = TestBroker::start().await;
    let auth = &b.running.as_ref().expect("running").auth;
    let spec = KeySpec {
        name: "reader".into(),
        subscribe: vec!["pub/#".into()],
        deny_subscribe: vec!["pub/secret/#".into()],
        publish: vec!["pub/w/#".into(), "pub/secret/#".into()],
        ..KeySpec::default()
    };
    let (info, secret) = auth.create(spec).await.expect("key");
    let bearer = format!("Bearer {}:{secret}", info.id);
    let me = [("Authorization", bearer.as_str())];
    let a = http_addr(&b);
    assert_eq!(http(a, "PUT", "/v1/state/pub/w/1", &me, b"1").await.0, 200);
    assert_eq!(http(a, "PUT", "/v1/state/pub/secret/x", &me, b"2").await.0, 200, "may publish, not read");
    let (code, denied) = http(a, "PUT", "/v1/state/pub/other", &me, b"3").await;
    assert_eq!((code, denied["error"].as_str()), (403, Some("forbidden")));

    let (code, list) = http(a, "GET", "/v1/state?filter=pub/%23", &me, b"").await;
    assert_eq!(code, 200);
    assert_eq!(topics(&list), ["pub/w/1"], "a topic the key may not read is never listed");
    assert_eq!(http(a, "GET", "/v1/state/pub/secret/x", &me, b"").await.0, 403);
    assert_eq!(http(a, "GET", "/v1/state?filter=%23", &me, b"").await.0, 403, "may not subscribe to #");

    let wrong = [("Authorization", "Bearer reader:not-the-secret")];
    assert_eq!(http(a, "GET", "/v1/state/pub/w/1", &wrong, b"").await.0, 401);
    assert_eq!(http(a, "GET", "/v1/state/pub/w/1", &[("Authorization", "Basic eDp5")], b"").await.0, 401);
    assert_eq!(get(&b, "/v1/state/pub/w/1").await.0, 401, "anonymous is not allowed once keys exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_answer_and_cross_origin_writes_are_refused() {
    let b = TestBroker::start_with(|c| {
        c.mqtt.max_packet_size = 4096;
        c.http.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let a = http_addr(&b);
    for (method, path, want) in [
        ("GET", "/v1/state?filter=a/%23/b", 400),
        ("GET", "/v1/state?filter=%24share/g/a", 400),
        ("GET", "/v1/state?limit=0", 400),
        ("GET", "/v1/state?limit=x", 400),
        ("GET", "/v1/state?cursor=%%%", 400),
        ("GET", "/v1/state?cursor=not-ours!", 400),
        ("GET", "/v1/state/a/%2B", 400),
        ("GET", "/v1/state/a/%ff", 400),
        ("GET", "/v1/schemas/a/%ff", 400),
        ("PUT", "/v1/state/a/%23", 400),
        ("GET", "/v1/nothing", 404),
        ("POST", "/v1/state", 405),
    ] {
        let (code, body) = http(a, method, path, &[], b"v").await;
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body["error"].is_string() && body.get("detail").is_some(), "{method} {path}: {body}");
    }
    let (code, body) = http(a, "PUT", "/v1/state/big", &[], &[b'x'; 5000]).await;
    assert_eq!((code, body["error"].as_str()), (413, Some("payload_too_large")));
    assert_eq!(http(a, "PUT", "/v1/state/empty", &[], b"").await.0, 400, "clearing is DELETE");

    let evil = [("Origin", "https://evil.example")];
    assert_eq!(http(a, "PUT", "/v1/state/x", &evil, b"1").await.0, 403);
    assert_eq!(http(a, "DELETE", "/v1/state/x", &evil, b"").await.0, 403);
    // A page is never trusted like a local client: without keys it is anonymous, not allowed.
    assert_eq!(http(a, "GET", "/v1/state/x", &evil, b"").await.0, 401);
    let app = [("Origin", "https://app.example")];
    assert_eq!(http(a, "PUT", "/v1/state/x", &app, b"1").await.0, 401, "listed origin passes the guard");
    assert_eq!(put(&b, "/v1/state/x", b"1", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_the_revision_are_durable_and_it_keeps_increasing_after_kill_9() {
    let site = common::binary::Site::new();
    let p = site.start().await;
    let a = p.http_addr().await;
    let (_, first) = http(a, "PUT", "/v1/state/d/1", &[], b"1").await;
    let (_, deleted) = http(a, "DELETE", "/v1/state/d/1", &[], b"").await;
    assert!(deleted["revision"].as_u64() > first["revision"].as_u64());
    let (code, kept) = http(a, "PUT", "/v1/state/d/kept", &[], b"kept").await;
    assert_eq!(code, 200, "durable before the answer");
    let last = kept["revision"].as_u64().expect("revision");
    p.kill_9().await;

    let p = site.start().await;
    let a = p.http_addr().await;
    assert_eq!(
        http(a, "GET", "/v1/state", &[], b"").await.1["revision"].as_u64(),
        Some(last),
        "the deletion's revision survived"
    );
    let (_, next) = http(a, "PUT", "/v1/state/d/2", &[], b"2").await;
    assert_eq!(next["revision"].as_u64(), Some(last + 1));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_as_kept_in_the_repository() {
    let b = TestBroker::start().await;
    let (code, doc) = get(&b, "/v1/openapi.json").await;
    assert_eq!(code, 200);
    let kept: Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json is JSON");
    assert_eq!(doc, kept);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/v1/state", "/v1/state/{topic}", "/v1/schemas", "/v1/schemas/{filter}"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}
