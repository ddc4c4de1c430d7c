//! The web console (issue 16, part 2) against the real broker binary: the page and its API
//! without a browser (anonymous reads, refused anonymous writes, keyed writes, the event
//! stream's updates and rejections, a topic the caller may not read never reaching it, the
//! client list for admins only, streams ending at shutdown), the bound of a stream whose
//! reader stops reading (in-process broker), and the page itself in headless Chromium
//! (tests/console/console.js through playwright-core, Debian's /usr/bin/chromium), which
//! leaves a screenshot in target/console.png.
//!
//! The broker runs with an admin key (made with `dataloom key create --print-config`), the
//! repository's `schemas/`, and anonymous clients allowed to read everything but `secret/#`
//! and to write nothing.
mod common;
mod v5_util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::binary::{Proc, Site};
use common::{TestBroker, WAIT, http_json};
use dataloom::codec::QoS;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use v5_util::{connect, publish, send_publish};

const KEY: &str = "console-admin";
const SECRET: &str = "console-test-secret-of-at-least-32-characters";
const TOPIC: &str = "sensors/kitchen/temperature";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

async fn broker() -> (Site, Proc) {
    let config = format!(
        "[auth]\nallow_anonymous = true\n\n[auth.anonymous]\npublish = []\nsubscribe = [\"#\"]\n\
         deny_subscribe = [\"secret/#\"]\n\n[schemas]\ndir = {:?}\n\n{}",
        repo("schemas").display().to_string(),
        common::key_block(KEY, SECRET, &["--admin", "--publish", "#", "--subscribe", "#"]).await
    );
    let mut site = Site::new();
    let path = site.tmp.path().join("dataloom.toml");
    std::fs::write(&path, config).expect("write the config");
    site.args = vec!["--config".to_owned(), path.display().to_string()];
    let proc = site.start().await;
    (site, proc)
}

/// `mosquitto_pub` as the admin key; true when it exited 0.
async fn mosquitto_pub(port: u16, args: &[&str]) -> bool {
    let port = port.to_string();
    let all = [&["-p", &port, "-u", KEY, "-P", SECRET][..], args].concat();
    common::mosquitto("mosquitto_pub", &all).await.0
}

/// `mosquitto_sub -i ID -t sensors/#` as the admin key, once its session is listed.
async fn mosquitto_sub(port: u16, id: &str) -> tokio::process::Child {
    let child = Command::new("mosquitto_sub")
        .args(["-p", &port.to_string(), "-u", KEY, "-P", SECRET, "-i", id, "-t", "sensors/#", "-q", "1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
    // A retained value it receives proves it subscribed.
    let marker = format!("sensors/{id}");
    assert!(mosquitto_pub(port, &["-t", &marker, "-r", "-q", "1", "-m", "here"]).await);
    let mut child = child;
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line))
            .await
            .expect("mosquitto_sub got the marker in time")
            .expect("read mosquitto_sub");
        assert!(n > 0, "mosquitto_sub exited");
        if line.trim() == "here" {
            break;
        }
    }
    tokio::spawn(async move { tokio::io::copy(&mut out, &mut tokio::io::sink()).await });
    child
}

/// An open `/v1/events` stream read as raw HTTP/1.0 (the body is the event stream itself).
struct Events {
    stream: TcpStream,
    buf: String,
}

impl Events {
    async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Events {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("GET /v1/events HTTP/1.0\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut e = Events { stream, buf: String::new() };
        let head = e.block().await;
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        e
    }

    /// The next `\n\n`-terminated block (the response head, then one event each).
    async fn block(&mut self) -> String {
        loop {
            let sep = if self.buf.starts_with("HTTP/") { "\r\n\r\n" } else { "\n\n" };
            if let Some(end) = self.buf.find(sep) {
                let block = self.buf[..end].to_string();
                self.buf.drain(..end + sep.len());
                return block;
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("an event in time")
                .expect("read the stream");
            assert!(n > 0, "the stream ended; got so far: {}", self.buf);
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// The next event named `name` (others are skipped; keep-alive comments too), as JSON;
    /// every skipped event's data goes to `seen`.
    async fn next_named(&mut self, name: &str, seen: &mut Vec<String>) -> Value {
        loop {
            let block = self.block().await;
            let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("");
            let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            seen.push(data.clone());
            if event == name {
                return serde_json::from_str(&data).expect("event data is JSON");
            }
        }
    }

    /// The next `state` event of `topic` (bounded: the stream fails the test when none comes
    /// within [`WAIT`] of the previous event).
    async fn next_state_of(&mut self, topic: &str, seen: &mut Vec<String>) -> Value {
        loop {
            let state = self.next_named("state", seen).await;
            if state["topic"] == topic {
                return state;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_behind_the_page_reads_anonymously_writes_with_a_key_and_streams_what_the_caller_may_read() {
    let (_site, b) = broker().await;
    let http = b.http_addr().await;
    let port = b.addr.port();
    let bearer = format!("Bearer {KEY}:{SECRET}");
    let key = [("Authorization", bearer.as_str())];

    let (code, page) = common::http_get(http, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("/console/console.js") && !page.contains("http://") && !page.contains("https://"));
    assert_eq!(common::http_get(http, "/console/console.js").await.0, 200);

    let mut events = Events::open(http, &[]).await;
    let mut seen = Vec::new();
    events.next_named("ready", &mut seen).await;
    let mut watcher = mosquitto_sub(port, "api-watcher").await;

    let value = br#"{"celsius": 21.5, "ts": 1767225600000}"#;
    let (code, refused) = http_json(http, "PUT", &format!("/v1/state/{TOPIC}"), &[], value).await;
    assert_eq!((code, refused["error"].as_str()), (403, Some("forbidden")), "anonymous write: {refused}");
    let same_origin = format!("http://{http}");
    let (code, written) = http_json(
        http,
        "PUT",
        &format!("/v1/state/{TOPIC}"),
        &[key[0], ("Origin", &same_origin), ("Content-Type", "application/json")],
        value,
    )
    .await;
    assert_eq!(code, 200, "a keyed write from the console's own origin: {written}");
    let evil = [key[0], ("Origin", "http://evil.example")];
    assert_eq!(http_json(http, "PUT", "/v1/state/a", &evil, b"1").await.0, 403, "another origin");

    let state = events.next_state_of(TOPIC, &mut seen).await;
    assert_eq!((state["topic"].as_str(), state["value"]["celsius"].as_f64()), (Some(TOPIC), Some(21.5)));
    assert_eq!(state["schema"]["filter"], "sensors/+/temperature", "the badge: {state}");

    assert!(mosquitto_pub(port, &["-t", "secret/door", "-r", "-q", "1", "-m", "open"]).await);
    assert!(mosquitto_pub(port, &["-t", TOPIC, "-r", "-q", "1", "-m", r#"{"celsius": 22, "ts": 1}"#]).await);
    let state = events.next_state_of(TOPIC, &mut seen).await;
    assert_eq!(state["value"]["celsius"].as_f64(), Some(22.0), "{state}");
    let bad = r#"{"celsius": "warm", "ts": 2}"#;
    // Refused with PUBACK 0x99 (mosquitto_pub reports it; its exit status is not the point).
    mosquitto_pub(port, &["-V", "mqttv5", "-t", TOPIC, "-r", "-q", "1", "-m", bad]).await;
    let rejection = events.next_named("rejection", &mut seen).await;
    assert_eq!(
        (rejection["schema"].as_str(), rejection["pointer"].as_str(), rejection["topic"].as_str()),
        (Some("sensors/+/temperature"), Some("/celsius"), Some(TOPIC)),
        "{rejection}"
    );
    assert!(rejection["client_id"].as_str().is_some_and(|c| !c.is_empty()), "{rejection}");
    let stats = events.next_named("stats", &mut seen).await;
    assert!(
        stats["rates"]["messages_received"].is_number() && stats["schemas"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(!seen.iter().any(|d| d.contains("secret/door")), "a topic anonymous may not read was streamed");

    let (code, listed) = http_json(http, "GET", "/v1/rejections", &[], b"").await;
    assert_eq!(code, 200);
    assert_eq!(listed["items"][0]["pointer"], "/celsius", "{listed}");
    assert_eq!(http_json(http, "GET", "/v1/state/secret/door", &[], b"").await.0, 403);
    assert_eq!(http_json(http, "GET", "/v1/clients", &[], b"").await.0, 403, "clients: admins only");
    let (code, clients) = http_json(http, "GET", "/v1/clients", &key, b"").await;
    assert_eq!(code, 200, "{clients}");
    let listed = clients["items"].as_array().expect("items");
    let me = listed.iter().find(|c| c["client_id"] == "api-watcher").expect("the subscriber is listed");
    assert_eq!((me["online"].as_bool(), me["subscriptions"].as_u64()), (Some(true), Some(1)), "{clients}");
    assert_eq!(me["owner"].as_str(), Some(format!("key {KEY}").as_str()));
    // The listing left the session usable: a write routed to it is answered.
    assert_eq!(http_json(http, "PUT", "/v1/state/sensors/x", &key, b"1").await.0, 200);
    let _ = watcher.start_kill();
    let _ = watcher.wait().await;
    let (code, schemas) = http_json(http, "GET", "/v1/schemas?count_invalid=true", &[], b"").await;
    assert_eq!(code, 200);
    assert!(schemas["items"].as_array().is_some_and(|s| s.iter().all(|s| s["invalid_retained"].is_u64())));

    // The stream is still open: a graceful stop must end it rather than wait for it.
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_stops_reading_drops_and_asks_for_a_resync() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 8).await;
    let http = b.running.as_ref().expect("running").http_addr.expect("http listener");
    let mut events = Events::open(http, &[]).await;
    let mut seen = Vec::new();
    events.next_named("ready", &mut seen).await;
    // 400 values of 64 KiB: far more than the socket buffers and the 8-delivery queue hold
    // while the test does not read.
    let mut mqtt = connect(&b, "bulk").await;
    let payload = vec![b'x'; 64 * 1024];
    for i in 0..400u16 {
        let mut p = publish(&format!("bulk/{i}"), QoS::AtLeastOnce, i + 1, &payload);
        p.retain = true;
        assert_eq!(send_publish(&mut mqtt, p).await, 0);
    }
    let resync = events.next_named("resync", &mut seen).await;
    assert!(resync["lost"].as_u64().is_some_and(|n| n > 0), "{resync}");
    let broker = b.running.as_ref().expect("running").broker.clone();
    let used = broker.memory().used();
    assert!(used < 64 * 1024 * 1024, "memory in use after the flood: {used} bytes");
    println!("stalled stream: {} of 400 changes lost, {used} bytes of memory accounted", resync["lost"]);
    // A closed stream gives its subscriptions back (found at its next write, within a tick).
    assert_eq!(broker.subscription_count(), 2, "the stream's # and $schema/#");
    drop(events);
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.subscription_count() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the closed stream kept its subscriptions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_headless_chromium_follows_state_and_rejections() {
    let script = repo("tests/console/console.js");
    assert!(
        repo("tests/console/node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `make test-deps` (npm ci in tests/console)"
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium is missing: run `make test-deps`");
    let (_site, b) = broker().await;
    let http = b.http_addr().await;
    let port = b.addr.port().to_string();
    // A connected client for the page's client list.
    let mut sub = mosquitto_sub(b.addr.port(), "console-watcher").await;
    let shot = repo("target/console.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("node")
            .arg(&script)
            .args([&format!("http://{http}"), &port, KEY, SECRET, &shot.display().to_string()])
            .current_dir(repo("tests/console"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script ends in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"live"), "{stdout}");
    let badge =
        |l: &&str| l.starts_with("shows ") && l.contains("21.5") && l.contains("sensors/+/temperature v1");
    assert!(lines.iter().any(badge), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("updates ") && l.contains("22")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("rejection ") && l.contains("/celsius")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("anonymous write: ") && l.contains("API key")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("keyed write: ") && l.contains("19")), "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("schema write: revision ")
            && l.contains("schema sensors/+ v1 registered; 1 retained value does not validate")),
        "{stdout}"
    );
    assert!(lines.contains(&"schema sensors/+ rejects 1"), "{stdout}");
    assert_eq!(lines.last(), Some(&"done"), "{stdout}");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a PNG screenshot");
    let _ = sub.start_kill();
    let _ = sub.wait().await;
    b.stop().await;
}
