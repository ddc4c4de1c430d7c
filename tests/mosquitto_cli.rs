//! The broker seen by the mosquitto command-line clients (mosquitto_pub / mosquitto_sub 2.0),
//! over MQTT 3.1.1 and 5.0: retained state, QoS 1 and 2 delivery, user properties, wills.
mod common;

use std::process::Stdio;

use common::{TestBroker, WAIT, mosquitto};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const V311: &str = "mqttv311";
const V5: &str = "mqttv5";
/// `-F` format: topic, QoS, retain flag, payload.
const FMT: &str = "%t|%q|%r|%p";

/// mosquitto_pub against `b`, asserting success.
async fn publish(b: &TestBroker, version: &str, args: &[&str]) {
    let port = b.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-V", version];
    all.extend_from_slice(args);
    let (ok, out) = mosquitto("mosquitto_pub", &all).await;
    assert!(ok, "mosquitto_pub {args:?} failed: {out}");
}

/// mosquitto_sub against `b` run to completion; returns its output lines.
async fn subscribe(b: &TestBroker, version: &str, args: &[&str]) -> Vec<String> {
    let port = b.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-V", version, "-W", "5"];
    all.extend_from_slice(args);
    let (ok, out) = mosquitto("mosquitto_sub", &all).await;
    assert!(ok, "mosquitto_sub {args:?} failed (timed out?): {out}");
    out.lines().map(str::to_owned).collect()
}

/// A mosquitto_sub running in the background whose output is read line by line.
struct BgSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl BgSub {
    /// Starts mosquitto_sub on `topics` plus `ready` (listed last, holding a retained message),
    /// printing with [`FMT`] and exiting after `count` messages; returns once `ready` arrived,
    /// i.e. once every subscription is in place.
    async fn start(
        b: &TestBroker,
        version: &str,
        extra: &[&str],
        topics: &[&str],
        ready: &str,
        count: usize,
    ) -> BgSub {
        let port = b.port().to_string();
        let count = (count + 1).to_string();
        let mut args =
            vec!["-h", "127.0.0.1", "-p", &port, "-V", version, "-W", "10", "-C", &count, "-F", FMT];
        args.extend_from_slice(extra);
        for t in topics.iter().chain([&ready]) {
            args.extend_from_slice(&["-t", t]);
        }
        let mut child = Command::new("mosquitto_sub")
            .args(&args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut s = BgSub { child, lines: BufReader::new(stdout).lines() };
        let first = s.line().await;
        assert!(first.starts_with(&format!("{ready}|")), "expected the ready marker first, got {first:?}");
        s
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("mosquitto_sub printed in time")
            .expect("read stdout")
            .expect("mosquitto_sub still running")
    }

    /// Waits for mosquitto_sub to exit and asserts it succeeded.
    async fn finish(mut self) {
        let status =
            tokio::time::timeout(WAIT, self.child.wait()).await.expect("exits in time").expect("wait");
        assert!(status.success(), "mosquitto_sub exited with {status}");
    }
}

/// Sets the retained ready marker `topic`.
async fn ready_marker(b: &TestBroker, topic: &str) {
    publish(b, V311, &["-t", topic, "-m", "ready", "-r", "-q", "1"]).await;
}

async fn retained_round_trip(version: &str) {
    let b = TestBroker::start().await;
    let t = format!("cli/{version}/state");
    publish(&b, version, &["-t", &t, "-m", "first", "-r", "-q", "1"]).await;
    publish(&b, version, &["-t", &t, "-m", "second", "-r", "-q", "1"]).await;
    let got = subscribe(&b, version, &["-t", &t, "-C", "1", "-q", "1", "-F", FMT]).await;
    assert_eq!(got, vec![format!("{t}|1|1|second")]);
    // Late subscribers in the other protocol version see the same state.
    let other = if version == V5 { V311 } else { V5 };
    let got = subscribe(&b, other, &["-t", "cli/+/state", "-C", "1", "-q", "2", "-F", FMT]).await;
    assert_eq!(got, vec![format!("{t}|1|1|second")]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_round_trip_v311() {
    retained_round_trip(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_round_trip_v5() {
    retained_round_trip(V5).await;
}

async fn retained_delete(version: &str) {
    let b = TestBroker::start().await;
    let t = format!("cli/{version}/gone");
    let marker = format!("cli/{version}/marker");
    ready_marker(&b, &marker).await;
    publish(&b, version, &["-t", &t, "-m", "here", "-r"]).await;
    let got = subscribe(&b, version, &["-t", &t, "-t", &marker, "-C", "2", "-F", FMT]).await;
    assert_eq!(got, vec![format!("{t}|0|1|here"), format!("{marker}|0|1|ready")]);
    publish(&b, version, &["-t", &t, "-r", "-n"]).await;
    // Retained messages for the first filter come before the marker's: only the marker is left.
    let got = subscribe(&b, version, &["-t", &t, "-t", &marker, "-C", "1", "-F", FMT]).await;
    assert_eq!(got, vec![format!("{marker}|0|1|ready")], "retained state not deleted");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_delete_with_empty_payload_v311() {
    retained_delete(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_delete_with_empty_payload_v5() {
    retained_delete(V5).await;
}

async fn qos_delivery(sub_version: &str, pub_version: &str) {
    let b = TestBroker::start().await;
    let ready = format!("cli/q/{sub_version}/{pub_version}/ready");
    ready_marker(&b, &ready).await;
    for qos in ["1", "2"] {
        let t = format!("cli/q/{sub_version}/{pub_version}/{qos}");
        let mut sub = BgSub::start(&b, sub_version, &["-q", qos], &[&t], &ready, 2).await;
        publish(&b, pub_version, &["-t", &t, "-m", "one", "-q", qos]).await;
        publish(&b, pub_version, &["-t", &t, "-m", "two", "-q", qos]).await;
        assert_eq!(sub.line().await, format!("{t}|{qos}|0|one"));
        assert_eq!(sub.line().await, format!("{t}|{qos}|0|two"));
        sub.finish().await;
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_and_qos2_delivery_v311() {
    qos_delivery(V311, V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_and_qos2_delivery_v5() {
    qos_delivery(V5, V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_and_qos2_delivery_across_versions() {
    qos_delivery(V311, V5).await;
    qos_delivery(V5, V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_pass_through() {
    let b = TestBroker::start().await;
    let ready = "cli/up/ready";
    ready_marker(&b, ready).await;
    let t = "cli/up/t";
    let mut sub = BgSub::start(&b, V5, &["-q", "1", "-F", "%t|%P"], &[t], ready, 1).await;
    #[rustfmt::skip]
    publish(&b, V5, &[
        "-t", t, "-m", "x", "-q", "1",
        "-D", "PUBLISH", "user-property", "site", "north",
        "-D", "PUBLISH", "user-property", "unit", "celsius",
    ])
    .await;
    let line = sub.line().await;
    let (topic, props) = line.split_once('|').expect("topic|properties");
    assert_eq!(topic, t);
    assert!(props.contains("site:north") && props.contains("unit:celsius"), "user properties lost: {line:?}");
    assert!(props.find("site:north") < props.find("unit:celsius"), "user property order changed: {line:?}");
    sub.finish().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_will_is_published_when_it_dies() {
    let b = TestBroker::start().await;
    let ready = "cli/will/ready";
    ready_marker(&b, ready).await;
    let mut watcher = BgSub::start(&b, V311, &["-q", "1"], &["cli/will/status"], ready, 1).await;
    let mut doomed = BgSub::start(
        &b,
        V5,
        &["--will-topic", "cli/will/status", "--will-payload", "lost", "--will-qos", "1"],
        &["cli/will/other"],
        ready,
        1,
    )
    .await;
    doomed.child.kill().await.expect("kill mosquitto_sub"); // SIGKILL: no DISCONNECT
    assert_eq!(watcher.line().await, "cli/will/status|1|0|lost");
    watcher.finish().await;
    b.stop().await;
}
