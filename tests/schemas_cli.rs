//! `$schema/` seen from the shell: mosquitto_pub/sub over MQTT 3.1.1 and 5, schemas loaded
//! from a directory (the shipped examples, a bad file, `schemas.strict`), and the
//! `dataloom schema check` command.
mod common;

use std::path::{Path, PathBuf};

use common::{TestBroker, WAIT};
use dataloom::config::OnInvalid;

const TEMP: &str = r#"{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}"#;

/// Runs a program to completion (bounded); returns (success, exit code, stdout, stderr).
async fn run(program: &str, args: &[&str]) -> (bool, Option<i32>, String, String) {
    let child = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(WAIT * 2, child)
        .await
        .unwrap_or_else(|_| panic!("{program} finished in time"))
        .unwrap_or_else(|e| panic!("{program} runs (apt-get install mosquitto-clients): {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), out.status.code(), text(&out.stdout), text(&out.stderr))
}

async fn mpub(b: &TestBroker, version: &str, args: &[&str]) -> (bool, String) {
    let port = b.port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-V", version];
    all.extend_from_slice(args);
    let (ok, _, _, err) = run("mosquitto_pub", &all).await;
    (ok, err)
}

/// mosquitto_sub for `count` messages (retained state), printing `-F fmt`.
async fn msub(b: &TestBroker, version: &str, topic: &str, count: usize, fmt: &str) -> Vec<String> {
    let (port, count) = (b.port().to_string(), count.to_string());
    let args =
        ["-h", "127.0.0.1", "-p", &port, "-V", version, "-W", "5", "-C", &count, "-F", fmt, "-t", topic];
    let (ok, _, out, err) = run("mosquitto_sub", &args).await;
    assert!(ok, "mosquitto_sub {topic} failed: {err}");
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn stored_schemas(b: &TestBroker) -> usize {
    b.running.as_ref().expect("running").broker.retained_under("$schema/#").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_register_enforce_discover() {
    let b = TestBroker::start().await;
    let reg = ["-q", "1", "-r", "-t", "$schema/sensors/%2B/temperature", "-m", TEMP];
    assert!(mpub(&b, "mqttv311", &reg).await.0, "3.1.1 registration");
    let (ok, _) =
        mpub(&b, "mqttv311", &["-q", "1", "-r", "-t", "sensors/a/temperature", "-m", r#"{"celsius":5}"#])
            .await;
    assert!(ok, "valid publish");

    // 3.1.1 (default on_invalid = disconnect): the connection is closed at any QoS.
    for qos in ["0", "1", "2"] {
        let args = ["-q", qos, "-r", "-t", "sensors/a/temperature", "-m", r#"{"celsius":"x"}"#];
        let (ok, err) = mpub(&b, "mqttv311", &args).await;
        if qos != "0" {
            assert!(!ok, "3.1.1 QoS {qos}: connection closed before the ack: {err}");
        }
    }
    // MQTT 5: QoS 1/2 get 0x99 (QoS 0's DISCONNECT 0x99 is in tests/schemas.rs: mosquitto_pub
    // may close first).
    for qos in ["1", "2"] {
        let (_, err) = mpub(&b, "mqttv5", &["-q", qos, "-t", "sensors/a/temperature", "-m", "{}"]).await;
        assert!(err.contains("Payload format invalid"), "v5 QoS {qos}: {err}");
    }
    // A non-retained registration is refused (v5: 0x83); the schema stays.
    let (_, err) =
        mpub(&b, "mqttv5", &["-q", "1", "-t", "$schema/sensors/%2B/temperature", "-m", "{}"]).await;
    assert!(err.contains("Implementation specific error"), "{err}");

    let state = msub(&b, "mqttv311", "sensors/a/temperature", 1, "%p").await;
    assert_eq!(state, [r#"{"celsius":5}"#], "invalid publishes never became state");
    let listed = msub(&b, "mqttv5", "$schema/#", 1, "%t %P").await;
    assert_eq!(listed, ["$schema/sensors/%2B/temperature filter:sensors/+/temperature version:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v311_drop_policy_keeps_the_connection() {
    let b = TestBroker::start_with(|c| c.schemas.on_invalid = OnInvalid::Drop).await;
    let reg = ["-q", "1", "-r", "-t", "$schema/m/%2B", "-m", r#"{"type":"integer"}"#];
    assert!(mpub(&b, "mqttv311", &reg).await.0);
    let (ok, err) = mpub(&b, "mqttv311", &["-q", "1", "-r", "-t", "m/1", "-m", "1.5"]).await;
    assert!(ok, "acknowledged and dropped: {err}");
    assert!(mpub(&b, "mqttv311", &["-q", "1", "-r", "-t", "m/1", "-m", "7"]).await.0);
    assert_eq!(msub(&b, "mqttv311", "m/#", 1, "%t %p").await, ["m/1 7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_examples_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let b = TestBroker::start_with(|c| {
        c.schemas = dataloom::config::Schemas { dir, strict: true, ..c.schemas.clone() }
    })
    .await;
    assert_eq!(stored_schemas(&b), 4, "every example in schemas/ loads");
    let good = r#"{"celsius": 21.5, "ts": 1700000000000}"#;
    assert!(mpub(&b, "mqttv5", &["-q", "1", "-t", "sensors/k/temperature", "-m", good]).await.1.is_empty());
    let (_, err) =
        mpub(&b, "mqttv5", &["-q", "1", "-t", "meters/m1/power", "-m", r#"{"value":1,"unit":"W"}"#]).await;
    assert!(err.contains("Payload format invalid"), "{err}");
}

fn schema_dir(bad: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("sensors/+")).expect("mkdir");
    std::fs::write(dir.path().join("sensors/+/temperature.json"), TEMP).expect("write");
    std::fs::write(dir.path().join("sensors/%23.json"), "{}").expect("write");
    std::fs::write(dir.path().join("broken.json"), bad).expect("write");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_with_a_bad_file_still_starts() {
    let dir = schema_dir(r#"{"type": 12}"#);
    let path = dir.path().to_path_buf();
    let b = TestBroker::start_with(|c| c.schemas.dir = path).await;
    assert_eq!(stored_schemas(&b), 2, "the good files load, the bad one is skipped");
    let (_, err) = mpub(&b, "mqttv5", &["-q", "1", "-t", "sensors/x/temperature", "-m", "{}"]).await;
    assert!(err.contains("Payload format invalid"), "{err}");
    let listed = msub(&b, "mqttv5", "$schema/#", 2, "%t %P").await;
    assert_eq!(
        listed,
        [
            "$schema/sensors/%23 filter:sensors/# version:1",
            "$schema/sensors/%2B/temperature filter:sensors/+/temperature version:1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_to_start_with_exit_code_2() {
    let dir = schema_dir("{ not json");
    let cfg = dir.path().join("dataloom.toml");
    let toml = format!(
        "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"\"\n[schemas]\ndir = {:?}\nstrict = true\n",
        dir.path().display().to_string()
    );
    std::fs::write(&cfg, toml).expect("write");
    let cfg = cfg.display().to_string();
    let (ok, code, _, err) = run(env!("CARGO_BIN_EXE_dataloom"), &["serve", "-c", &cfg]).await;
    assert!(!ok && code == Some(2), "exit {code:?}: {err}");
    let line = err.lines().find(|l| l.contains("broken.json") && l.contains("not a JSON document"));
    assert!(line.is_some(), "one line names the file and what is wrong: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_check_command() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schema = root.join("schemas/sensors/+/temperature.json").display().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good.json");
    std::fs::write(&good, r#"{"celsius": 20, "ts": 1}"#).expect("write");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"celsius": 20, "ts": 1, "extra": true}"#).expect("write");
    let bin = env!("CARGO_BIN_EXE_dataloom");

    let (ok, _, out, _) = run(bin, &["schema", "check", &schema]).await;
    assert!(ok && out.contains("ok: schema sensors/+/temperature is a valid JSON Schema"), "{out}");
    let (ok, _, _, _) = run(bin, &["schema", "check", &schema, &good.display().to_string()]).await;
    assert!(ok);
    let (ok, code, _, err) = run(bin, &["schema", "check", &schema, &bad.display().to_string()]).await;
    assert!(!ok && code == Some(1));
    assert!(
        err.starts_with("schema sensors/+/temperature v1: (root): Additional properties are not allowed"),
        "{err}"
    );
    let (ok, code, _, err) =
        run(bin, &["schema", "check", &bad.display().to_string().replace("bad", "missing")]).await;
    assert!(!ok && code == Some(1) && err.contains("missing"), "{err}");
}
