//! Client compatibility, proven (issue 16): the clients people use, each driven by a small
//! script in `tests/clients/` against the real binary, connect with an API key, publish
//! retained state, get the snapshot and a live update on SUBSCRIBE, and see a schema rejection
//! as their library reports it:
//! - MQTT.js (npm `mqtt`, Node 20) over TCP and WebSocket, MQTT 3.1.1 and 5.0;
//! - paho-mqtt 2.x (PyPI) over TCP, MQTT 3.1.1 and 5.0.
//!
//! MQTT 5 clients get PUBACK 0x99 with the reason string; MQTT 3.1.1 clients, which have no
//! negative ack, see the connection closed (`schemas.on_invalid = "disconnect"`, the default)
//! or, with `"drop"`, an ordinary PUBACK for a message that is neither delivered nor stored.
//! rumqttc (tests/v5.rs, tests/v311.rs, tests/schemas.rs) and mosquitto_pub/sub
//! (tests/mosquitto_cli.rs, tests/readme.rs) are covered elsewhere.
//!
//! `make test-deps` installs the clients: `npm ci` in tests/clients (MQTT.js) and a virtualenv
//! in target/venv (paho-mqtt). The key is made as the README says, with
//! `dataloom key create --print-config --secret-stdin`, and seeded through `[[auth.keys]]`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::binary::{Proc, Site};
use tokio::process::Command;

/// How long one client script may run (it gives up by itself after 10 s).
const SCRIPT: Duration = Duration::from_secs(30);

const KEY: &str = "device";
const SECRET: &str = "client-matrix-secret-of-at-least-32-characters";

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
}

/// A broker with the repository's schemas, `schemas.on_invalid`, the WebSocket listener on,
/// and the key; the config file lives in the site's directory.
async fn broker(on_invalid: &str) -> (Site, Proc) {
    let schemas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let config = format!(
        "[listeners.ws]\nbind = \"127.0.0.1:0\"\n\n[schemas]\ndir = {:?}\non_invalid = {on_invalid:?}\n\n{}",
        schemas.display().to_string(),
        common::key_block(KEY, SECRET, &["--publish", "sensors/#", "--subscribe", "sensors/#"]).await
    );
    let mut site = Site::new();
    let path = site.tmp.path().join("dataloom.toml");
    std::fs::write(&path, config).expect("write the config");
    site.args = vec!["--config".to_owned(), path.display().to_string()];
    let proc = site.start().await;
    (site, proc)
}

/// Runs `program args` in tests/clients and returns its stdout lines; fails with its output.
async fn run(what: &str, program: &std::path::Path, args: &[String]) -> Vec<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(clients_dir()).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no exit within {SCRIPT:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} exited with {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// How a client learns that its invalid value was refused.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Refused {
    /// MQTT 5: PUBACK 0x99 with the reason string.
    Nack,
    /// MQTT 3.1.1 with `schemas.on_invalid = "disconnect"`: the connection is closed.
    Closed,
    /// MQTT 3.1.1 with `schemas.on_invalid = "drop"`: acknowledged (and dropped).
    Acknowledged,
}

/// What every client prints for sensor `sensor`, ending with how it saw the refusal.
fn expected(sensor: &str, refused: Refused) -> Vec<String> {
    let topic = format!("sensors/{sensor}/temperature");
    let last = match refused {
        Refused::Nack => {
            r#"rejected 0x99 schema sensors/+/temperature v1: /celsius: "warm" is not of type "number""#
                .to_owned()
        }
        Refused::Closed => "connection closed by the broker".to_owned(),
        Refused::Acknowledged => "acknowledged".to_owned(),
    };
    vec![
        "connected".to_owned(),
        format!(r#"snapshot {topic} {{"celsius": 21.5, "ts": 1767225600000}}"#),
        format!(r#"live {topic} {{"celsius": 22, "ts": 1767225660000}}"#),
        last,
    ]
}

/// The state every client left: its last valid value; the rejected one never became state.
async fn assert_state(broker: &Proc, sensors: &[&str]) {
    let port = broker.addr.port().to_string();
    let n = sensors.len().to_string();
    let args =
        ["-p", &port, "-u", KEY, "-P", SECRET, "-t", "sensors/+/temperature", "-v", "-C", &n, "-W", "10"];
    let out = Command::new("mosquitto_sub")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("mosquitto_sub runs");
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    got.sort();
    let mut want: Vec<String> = sensors
        .iter()
        .map(|s| format!(r#"sensors/{s}/temperature {{"celsius": 22, "ts": 1767225660000}}"#))
        .collect();
    want.sort();
    assert_eq!(got, want, "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_tcp_and_websocket_with_mqtt_3_1_1_and_5() {
    let node_modules = clients_dir().join("node_modules/mqtt");
    assert!(
        node_modules.exists(),
        "MQTT.js is not installed in {}: run `make test-deps`",
        node_modules.display()
    );
    let (_site, broker) = broker("disconnect").await;
    let tcp = format!("mqtt://{}", broker.addr);
    let ws = format!("ws://{}/mqtt", broker.listener_addr("ws").await);
    let mut sensors = Vec::new();
    for (url, transport) in [(&tcp, "tcp"), (&ws, "ws")] {
        for version in ["4", "5"] {
            let sensor = format!("mqttjs-{transport}-v{version}");
            let args = ["mqttjs.js", url, version, KEY, SECRET, &sensor].map(str::to_owned);
            let what = format!("MQTT.js over {transport}, protocol version {version}");
            let got = run(&what, std::path::Path::new("node"), &args).await;
            assert_eq!(
                got,
                expected(&sensor, if version == "5" { Refused::Nack } else { Refused::Closed }),
                "{what}"
            );
            sensors.push(sensor);
        }
    }
    assert_state(&broker, &sensors.iter().map(String::as_str).collect::<Vec<_>>()).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_with_mqtt_3_1_1_and_5() {
    assert!(python().exists(), "no virtualenv at {}: run `make test-deps`", python().display());
    let (_site, broker) = broker("disconnect").await;
    let (host, port) = (broker.addr.ip().to_string(), broker.addr.port().to_string());
    let mut sensors = Vec::new();
    for protocol in ["311", "5"] {
        let sensor = format!("paho-v{protocol}");
        let args = ["paho_client.py", &host, &port, protocol, KEY, SECRET, &sensor].map(str::to_owned);
        let what = format!("paho-mqtt, MQTT {protocol}");
        let got = run(&what, &python(), &args).await;
        assert_eq!(
            got,
            expected(&sensor, if protocol == "5" { Refused::Nack } else { Refused::Closed }),
            "{what}"
        );
        sensors.push(sensor);
    }
    assert_state(&broker, &sensors.iter().map(String::as_str).collect::<Vec<_>>()).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_clients_see_an_ack_when_invalid_messages_are_dropped() {
    assert!(
        clients_dir().join("node_modules/mqtt").exists(),
        "MQTT.js is not installed: run `make test-deps`"
    );
    assert!(python().exists(), "no virtualenv at {}: run `make test-deps`", python().display());
    let (_site, broker) = broker("drop").await;
    let (host, port) = (broker.addr.ip().to_string(), broker.addr.port().to_string());
    let url = format!("mqtt://{}", broker.addr);
    let js = ["mqttjs.js", &url, "4", KEY, SECRET, "mqttjs-drop"].map(str::to_owned);
    let got = run("MQTT.js 3.1.1, on_invalid = drop", std::path::Path::new("node"), &js).await;
    assert_eq!(got, expected("mqttjs-drop", Refused::Acknowledged));
    let py = ["paho_client.py", &host, &port, "311", KEY, SECRET, "paho-drop"].map(str::to_owned);
    let got = run("paho-mqtt 3.1.1, on_invalid = drop", &python(), &py).await;
    assert_eq!(got, expected("paho-drop", Refused::Acknowledged));
    // Acknowledged, but not stored: the state is still the last valid value. (A delivery to
    // the clients' own subscriptions that arrived before they ended would have added a line.)
    assert_state(&broker, &["mqttjs-drop", "paho-drop"]).await;
    broker.stop().await;
}
