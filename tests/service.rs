//! Running as a service (issue 16, part 5): the real binary under a stand-in service manager
//! (a `NOTIFY_SOCKET` of the test's own) sends `READY=1` only once it accepts MQTT, keeps the
//! watchdog fed, says `STOPPING=1` on SIGTERM; and the shipped `dist/` files are valid.
mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::RawClient;
use common::binary::Site;

/// The notifications received so far, each datagram one entry.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// Waits (bounded) until a datagram starting with `prefix` arrives; returns all received.
async fn wait_for(sock: &UnixDatagram, seen: &mut Vec<String>, prefix: &str) {
    for _ in 0..200 {
        seen.extend(drain(sock));
        if seen.iter().any(|m| m.starts_with(prefix)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {prefix} notification; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_listening_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_nonblocking(true).expect("nonblocking");
    let mut site = Site::new();
    site.env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    site.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    let broker = site.start().await;

    let mut seen = Vec::new();
    wait_for(&sock, &mut seen, "READY=1").await;
    // READY means serving: a client connects at once.
    let _client = RawClient::connect(broker.addr).await;
    let ready = seen.iter().find(|m| m.starts_with("READY=1")).expect("ready");
    assert!(ready.contains("STATUS=serving MQTT on 127.0.0.1:"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", broker.child.id().expect("pid"))), "{ready}");
    // Two keep-alives at half the 200 ms watchdog interval.
    for _ in 0..2 {
        let before = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
        for _ in 0..200 {
            seen.extend(drain(&sock));
            if seen.iter().filter(|m| *m == "WATCHDOG=1").count() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(seen.iter().filter(|m| *m == "WATCHDOG=1").count() > before, "watchdog fed: {seen:?}");
    }
    broker.stop().await;
    seen.extend(drain(&sock));
    let ready_at = seen.iter().position(|m| m.starts_with("READY=1")).expect("ready");
    let stopping_at = seen.iter().position(|m| m.starts_with("STOPPING=1")).expect("STOPPING=1 on SIGTERM");
    assert!(ready_at < stopping_at, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_manager_nothing_is_sent() {
    // No NOTIFY_SOCKET: the broker runs and stops as always (the harness removes none of ours).
    let broker = Site::new().start().await;
    let _client = RawClient::connect(broker.addr).await;
    broker.stop().await;
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
