//! Existing data directories open unchanged (issue 12): a fjall data directory written by the
//! release binary of commit `e17393d` (tests/fixtures/README.md says how) is opened by today's
//! broker, and everything in it is still there and still enforced: keys, the schema, retained
//! values with their v5 properties, and an offline session with its queued messages.
mod common;

use std::path::Path;

use common::{TestBroker, mosquitto};

const ADMIN: &str = "fixture-admin-secret-0123456789abcdef";
const READER: &str = "fixture-reader-secret-0123456789abcdef";

/// Copies the fixture into `dst`; git keeps no empty directories, so fjall's empty `tables`
/// directories are made here.
fn copy_fixture(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read fixture") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_fixture(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
    if dst.parent().and_then(Path::file_name).is_some_and(|n| n == "keyspaces") {
        std::fs::create_dir_all(dst.join("tables")).expect("mkdir tables");
    }
}

async fn open_fixture(tmp: &Path) -> TestBroker {
    let data = tmp.join("data");
    copy_fixture(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-e17393d"), &data);
    TestBroker::start_with(move |c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_written_before_the_layering_opens_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = open_fixture(tmp.path()).await;
    let port = broker.port().to_string();
    let reader = ["-p", &port, "-u", "fx-reader", "-P", READER];

    // The offline session is still there with its three queued QoS 1 messages.
    let mut args = reader.to_vec();
    args.extend(["-i", "fx-sub", "-c", "-q", "1", "-t", "fx/queue/#", "-C", "3", "-W", "5", "-v"]);
    let (ok, out) = mosquitto("mosquitto_sub", &args).await;
    assert!(ok, "queued messages delivered: {out:?}");
    assert_eq!(out, "fx/queue/1 queued-1\nfx/queue/2 queued-2\nfx/queue/3 queued-3\n");

    // Retained values, with the v5 properties they were stored with.
    let mut args = reader.to_vec();
    args.extend(["-V", "5", "-i", "fx-check", "-t", "fx/#", "-C", "3", "-W", "5", "-F", "%t|%C|%P|%p"]);
    let (ok, out) = mosquitto("mosquitto_sub", &args).await;
    assert!(ok, "retained values delivered: {out:?}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["fx/plain|||hello", "fx/temp/kitchen|||{\"celsius\":21.5}", "fx/v5|text/plain|k:v|v5-value"]
    );

    // The schema is still enforced: a bad retained value is refused, a valid one is stored.
    for (topic, value) in [("fx/temp/hall", "{\"celsius\":\"warm\"}"), ("fx/temp/attic", "{\"celsius\":19}")]
    {
        let mut args = reader.to_vec();
        args.extend(["-V", "5", "-i", "fx-pub", "-t", topic, "-r", "-q", "1", "-m", value]);
        mosquitto("mosquitto_pub", &args).await;
    }
    let mut args = reader.to_vec();
    args.extend(["-i", "fx-check", "-t", "fx/temp/#", "-C", "2", "-W", "5", "-v"]);
    let (ok, out) = mosquitto("mosquitto_sub", &args).await;
    assert!(ok, "retained temperatures: {out:?}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["fx/temp/attic {\"celsius\":19}", "fx/temp/kitchen {\"celsius\":21.5}"]);

    // Keys: the reader may not leave fx/, the admin key still reads the schema tree.
    let mut args = reader.to_vec();
    args.extend(["-i", "other", "-t", "fx/x", "-m", "1"]);
    assert!(!mosquitto("mosquitto_pub", &args).await.0, "client id outside fx-* is refused");
    let admin =
        ["-p", &port, "-u", "fx-admin", "-P", ADMIN, "-V", "5", "-t", "$schema/#", "-C", "1", "-W", "5"];
    let (ok, out) = mosquitto("mosquitto_sub", &admin).await;
    assert!(ok && out.contains("\"celsius\""), "admin reads the stored schema: {out:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_retained_values_read_as_revision_zero_and_new_changes_number_from_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = open_fixture(tmp.path()).await;
    let http = broker.running.as_ref().and_then(|r| r.http_addr).expect("http listener");
    let bearer = format!("Bearer fx-reader:{READER}");
    let me = [("Authorization", bearer.as_str())];
    let (code, old) = common::http_json(http, "GET", "/v1/state/fx/plain", &me, b"").await;
    assert_eq!(code, 200, "{old}");
    assert_eq!((old["value"].as_str(), old["revision"].as_u64()), (Some("hello"), Some(0)));
    assert!(old["updated_at"].is_null(), "a v1 record has no update time: {old}");
    let (code, new) = common::http_json(http, "PUT", "/v1/state/fx/plain", &me, b"again").await;
    assert_eq!((code, new["revision"].as_u64()), (200, Some(1)), "{new}");
    broker.stop().await;
}
