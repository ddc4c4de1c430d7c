//! Running as a service (issue 16, part 5): the real binary under a stand-in service manager
//! (a `NOTIFY_SOCKET` of the test's own) sends `READY=1` only once it accepts MQTT, keeps the
//! watchdog fed, says `STOPPING=1` on SIGTERM; and the shipped `dist/` files are valid.
mod common;

use common::RawClient;
use common::binary::Site;
use tokio::net::UnixDatagram;

/// The next notification (bounded by [`common::WAIT`]).
async fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(common::WAIT, sock.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("recv a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_listening_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut site = Site::new();
    site.env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    site.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    let broker = site.start().await;

    // The first message is READY, and it means serving: a client connects at once.
    let ready = next(&sock).await;
    assert!(ready.starts_with("READY=1\nSTATUS=serving MQTT on 127.0.0.1:"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", broker.child.id().expect("pid"))), "{ready}");
    let _client = RawClient::connect(broker.addr).await;
    // Then keep-alives at half the 200 ms watchdog interval.
    for _ in 0..2 {
        assert_eq!(next(&sock).await, "WATCHDOG=1");
    }
    // SIGTERM: STOPPING comes (keep-alives sent meanwhile are skipped).
    let stopping = tokio::spawn(async move {
        loop {
            let m = next(&sock).await;
            if m != "WATCHDOG=1" {
                return m;
            }
        }
    });
    broker.stop().await;
    let m = stopping.await.expect("reader");
    assert!(m.starts_with("STOPPING=1"), "after SIGTERM: {m}");
}

#[test]
fn the_shipped_production_config_passes_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dataloom"))
        .args(["check-config", "--config", &format!("{root}/dist/dataloom.toml")])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run check-config");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dist/dataloom.toml: {text}");
    assert!(text.contains("/var/lib/dataloom/data"), "effective config printed: {text}");
}

#[test]
fn the_unit_file_is_a_notify_service_running_the_binary() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/dataloom.service"))
        .expect("dist/dataloom.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/dataloom serve --config /etc/dataloom/dataloom.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} missing from the unit");
    }
}
