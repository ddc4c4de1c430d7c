//! `dataloom key ...` with the real binary: against a running broker (HTTP admin endpoint,
//! bootstrap of the first admin key with the token file of the data directory, admin key
//! required afterwards), against a
//! stopped broker's data directory, the startup rule for network listeners, and secrets never
//! appearing in the broker's logs.
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{WAIT, mosquitto};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_dataloom");

/// A broker process with its MQTT port and HTTP URL.
struct Broker {
    child: Child,
    mqtt_port: String,
    url: String,
}

async fn serve(dir: &Path, extra: &[&str]) -> Broker {
    let data = dir.to_str().expect("utf8");
    let mut args = vec!["serve", "--data-dir", data, "--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "debug")
        .env_remove("DATALOOM_ADMIN_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("broker starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut mqtt_port, mut url) = (None, None);
    while mqtt_port.is_none() || url.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("listening lines in time")
            .expect("read")
            .expect("broker printed its addresses");
        if let Some(a) = line.strip_prefix("dataloom listening on mqtt://") {
            mqtt_port = a.rsplit(':').next().map(str::to_owned);
        }
        if let Some(a) = line.strip_prefix("dataloom listening on http://") {
            url = Some(format!("http://{a}"));
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Broker { child, mqtt_port: mqtt_port.expect("port"), url: url.expect("url") }
}

impl Broker {
    /// SIGTERM, wait, and return everything it logged.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("pid");
        let _ = Command::new("kill").arg(pid.to_string()).status().await;
        let mut err = String::new();
        let mut stderr = self.child.stderr.take().expect("stderr");
        let _ = tokio::time::timeout(WAIT * 2, stderr.read_to_string(&mut err)).await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        err
    }
}

/// Runs `dataloom key ...`; returns (success, stdout, stderr).
async fn key(args: &[&str], admin: Option<&str>, stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("key").args(args).env_remove("DATALOOM_ADMIN_KEY").kill_on_drop(true);
    if let Some(a) = admin {
        cmd.env("DATALOOM_ADMIN_KEY", a);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("dataloom key runs");
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        input.write_all(text.as_bytes()).await.expect("stdin");
    }
    let out =
        tokio::time::timeout(WAIT * 2, child.wait_with_output()).await.expect("in time").expect("output");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), s(&out.stdout), s(&out.stderr))
}

async fn mqtt_pub(port: &str, user: &str, secret: &str) -> bool {
    let args = ["-h", "127.0.0.1", "-p", port, "-u", user, "-P", secret, "-t", "dev/x", "-m", "hi"];
    mosquitto("mosquitto_pub", &args).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_via_the_running_broker_and_the_stopped_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8").to_string();
    let b = serve(dir.path(), &[]).await;
    let url = b.url.clone();

    // Bootstrap: no admin key yet; the first one needs the broker's one-time token, which the
    // CLI reads from the data directory. Without it (another directory) the broker refuses.
    let token_file = dir.path().join("bootstrap-token");
    let token = std::fs::read_to_string(&token_file).expect("bootstrap token file").trim().to_string();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let other = elsewhere.path().to_str().expect("utf8");
    let root = ["create", "--name", "root", "--admin", "--url", &url];
    let (ok, _, err) = key(&[&root[..], &["--data-dir", other]].concat(), None, None).await;
    assert!(!ok && err.contains("401") && err.contains("Bootstrap"), "{err}");
    let (ok, admin_secret, err) = key(&[&root[..], &["--data-dir", &data]].concat(), None, None).await;
    assert!(ok, "{err}");
    assert!(!token_file.exists(), "the token is consumed");
    let admin_secret = admin_secret.trim().to_string();
    assert_eq!(admin_secret.len(), 64, "256-bit secret as hex");
    let admin = format!("root:{admin_secret}");

    // From now on the admin key is required.
    let create = ["create", "--name", "dev", "--publish", "dev/#", "--subscribe", "dev/#", "--url", &url];
    let (ok, _, err) = key(&create, None, None).await;
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = key(&create, Some("root:wrong"), None).await;
    assert!(!ok && err.contains("401"), "{err}");
    // The data directory is locked by the running broker: without --url the CLI finds the
    // broker through the store lock (http.bind from config is 127.0.0.1:0 here, so pass --url).
    let (ok, dev_secret, err) = key(&create, Some(&admin), None).await;
    assert!(ok, "{err}");
    let dev_secret = dev_secret.trim().to_string();
    let imported = "i".repeat(40);
    let (ok, out, err) = key(
        &["create", "--name", "imported", "--publish", "dev/#", "--secret-stdin", "--url", &url],
        Some(&admin),
        Some(&format!("{imported}\n")),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), imported, "the imported secret is the secret");

    let (ok, list, err) = key(&["list", "--url", &url], Some(&admin), None).await;
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..2], ["ID", "ROLE"], "a table with a header: {list}");
    let row = |id: &str| rows.iter().find(|r| r[0] == id).cloned().unwrap_or_default();
    assert_eq!(row("root").get(1), Some(&"admin"), "{list}");
    assert_eq!(row("dev").get(1), Some(&"-"), "{list}");
    assert!(!row("imported").is_empty(), "{list}");
    let (ok, json, err) = key(&["list", "--json", "--url", &url], Some(&admin), None).await;
    assert!(ok, "{err}");
    let keys: serde_json::Value = serde_json::from_str(&json).expect("key list --json is JSON");
    assert_eq!(keys.as_array().map(Vec::len), Some(rows.len() - 1), "{json}");
    assert!(!list.contains(&dev_secret) && !list.contains(&admin_secret), "no secrets in list");

    assert!(mqtt_pub(&b.mqtt_port, "dev", &dev_secret).await, "key works at once");
    assert!(mqtt_pub(&b.mqtt_port, "imported", &imported).await);
    assert!(!mqtt_pub(&b.mqtt_port, "dev", "wrong-secret").await);

    let (ok, _, err) = key(&["revoke", "dev", "--url", &url], Some(&admin), None).await;
    assert!(ok && err.contains("revoked"), "{err}");
    assert!(!mqtt_pub(&b.mqtt_port, "dev", &dev_secret).await, "revoked key refused");

    let log = b.stop().await;
    assert!(log.contains("API key created"), "the broker logged the creations: {log}");
    assert!(log.contains("bootstrap-token"), "the broker named the token file: {log}");
    for secret in [&admin_secret, &dev_secret, &imported, &token] {
        assert!(!log.contains(secret.as_str()), "a secret is in the broker's log");
    }

    // Stopped broker: the CLI opens the store directly.
    let (ok, off_secret, err) =
        key(&["create", "--name", "offline", "--publish", "dev/#", "--data-dir", &data], None, None).await;
    assert!(ok, "{err}");
    let off_secret = off_secret.trim().to_string();
    let (ok, list, _) = key(&["list", "--data-dir", &data], None, None).await;
    let ids: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert!(ok && ids.contains(&"offline") && ids.contains(&"root") && !ids.contains(&"dev"), "{list}");

    std::fs::write(&token_file, "stale\n").expect("write");
    let b = serve(dir.path(), &[]).await;
    assert!(!token_file.exists(), "an admin key exists: a token file left behind is deleted at start");
    assert!(mqtt_pub(&b.mqtt_port, "offline", &off_secret).await, "keys survive restart");
    assert!(mqtt_pub(&b.mqtt_port, "imported", &imported).await);
    assert!(!mqtt_pub(&b.mqtt_port, "dev", &dev_secret).await, "revocation survives restart");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_listener_needs_keys_or_allow_anonymous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8").to_string();
    // No keys: refuses with one line and exit code 2.
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", &data, "--bind", "0.0.0.0:0", "--http-bind", ""])
        .output();
    let out = tokio::time::timeout(WAIT, out).await.expect("exits").expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners.tcp.bind") && err.contains("no API keys exist"), "{err}");
    // With a key in the store it starts (still running after 2 s).
    let (ok, _, err) =
        key(&["create", "--name", "k", "--publish", "#", "--data-dir", &data], None, None).await;
    assert!(ok, "{err}");
    let args = ["serve", "--data-dir", &data, "--bind", "0.0.0.0:0", "--http-bind", ""];
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().expect("status").is_none(), "keeps running with a key on a network listener");
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn print_config_seeds_keys_from_config() {
    let (ok, block, err) =
        key(&["create", "--name", "seeded", "--publish", "s/#", "--print-config"], None, None).await;
    assert!(ok, "{err}");
    let secret = err.rsplit(' ').next().expect("secret").trim().to_string();
    assert_eq!(secret.len(), 64, "{err}");
    assert!(
        block.contains("[[auth.keys]]") && block.contains("secret_sha256") && !block.contains(&secret),
        "{block}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, &block).expect("write");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let data = dir.path().join("data");
    let b = serve(&data, &["-c", &cfg]).await;
    assert!(mqtt_pub(&b.mqtt_port, "seeded", &secret).await, "seeded key works");
    b.stop().await;
}
