//! Tests of loading, layering and validating the configuration.

use std::time::Duration;

use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().expect("defaults validate");
}

#[test]
fn file_then_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[mqtt]\nmax_packet_size = 2048\nconnect_timeout = \"3s\"\n").expect("write");
    let o = Overrides { bind: Some("127.0.0.1:0".into()), ..Overrides::default() };
    let c = Config::load(Some(&path), &o).expect("load");
    assert_eq!(c.mqtt.max_packet_size, 2048);
    assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.listeners.tcp.bind, "127.0.0.1:0");
}

#[test]
fn bad_value_names_the_key() {
    let mut c = Config::default();
    c.mqtt.max_packet_size = 1;
    let e = c.validate().expect_err("must fail").to_string();
    assert!(e.contains("mqtt.max_packet_size"), "{e}");
}

#[test]
fn unknown_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[mqtt]\nmax_pakcet_size = 2048\n").expect("write");
    let e = Config::load(Some(&path), &Overrides::default()).expect_err("must fail");
    assert!(e.to_string().contains("max_pakcet_size"), "{e}");
}

#[test]
fn anonymous_on_network_needs_opt_in() {
    let mut c = Config::default();
    c.listeners.tcp.bind = "0.0.0.0:1883".into();
    c.validate_settings().expect("checked at start, when the keys are known");
    assert!(c.validate().is_err());
    assert!(c.check_anonymous_exposure(0).is_err());
    c.check_anonymous_exposure(1).expect("keys exist");
    c.auth.allow_anonymous = true;
    c.check_anonymous_exposure(0).expect("explicit opt-in");
}

#[test]
fn browser_allow_lists_default_and_are_checked() {
    let c = Config::default();
    assert_eq!(c.http.allowed_hosts, vec!["localhost".to_string()]);
    assert!(c.http.allowed_origins.is_empty() && c.listeners.ws.allowed_origins.is_empty());
    for (edit, key) in [
        (
            (|c: &mut Config| c.http.allowed_origins = vec!["evil.example".into()]) as fn(&mut Config),
            "http.allowed_origins",
        ),
        (|c: &mut Config| c.http.allowed_hosts = vec!["http://x".into()], "http.allowed_hosts"),
        (
            |c: &mut Config| c.listeners.ws.allowed_origins = vec!["null".into()],
            "listeners.ws.allowed_origins",
        ),
        (
            |c: &mut Config| c.listeners.wss.allowed_origins = vec!["https://a/".into()],
            "listeners.wss.allowed_origins",
        ),
    ] {
        let mut c = Config::default();
        edit(&mut c);
        let e = c.validate().expect_err("must fail").to_string();
        assert!(e.contains(key), "{e}");
    }
}

#[test]
fn a_file_replaces_the_default_host_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[http]\nallowed_hosts = []\nallowed_origins = [\"https://a.example\"]\n")
        .expect("write");
    let c = Config::load(Some(&path), &Overrides::default()).expect("load");
    assert!(c.http.allowed_hosts.is_empty(), "{:?}", c.http.allowed_hosts);
    assert_eq!(c.http.allowed_origins, vec!["https://a.example".to_string()]);
}

#[test]
fn session_takeover_and_persistent_expiry_load_and_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let c = Config::load(None, &Overrides::default()).expect("defaults load");
    assert_eq!(c.auth.session_takeover, SessionTakeover::SameKey);
    assert_eq!(c.mqtt.persistent_session_expiry, None);
    std::fs::write(
        &path,
        "[auth]\nsession_takeover = \"any_key\"\n[mqtt]\npersistent_session_expiry = \"7d\"\n",
    )
    .expect("write");
    let c = Config::load(Some(&path), &Overrides::default()).expect("load");
    assert_eq!(c.auth.session_takeover, SessionTakeover::AnyKey);
    assert_eq!(c.mqtt.persistent_session_expiry, Some(Duration::from_secs(7 * 86_400)));
    std::fs::write(&path, "[auth]\nsession_takeover = \"anyone\"\n").expect("write");
    let e = Config::load(Some(&path), &Overrides::default()).expect_err("unknown mode");
    assert!(e.to_string().contains("session_takeover") || e.to_string().contains("any_key"), "{e}");
    std::fs::write(&path, "[mqtt]\npersistent_session_expiry = \"0s\"\n").expect("write");
    let e = Config::load(Some(&path), &Overrides::default()).expect_err("zero");
    assert!(e.to_string().contains("mqtt.persistent_session_expiry"), "{e}");
}

#[test]
fn cluster_is_absent_by_default_and_validated_when_present() {
    assert!(Config::default().cluster.is_none());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\n").expect("write");
    let c = Config::load(Some(&path), &Overrides::default()).expect("load");
    let cluster = c.cluster.expect("cluster section");
    assert_eq!(cluster.replicas, 3);
    assert_eq!(cluster.sync_timeout, Duration::from_secs(5));
    assert_eq!(cluster.prefix, "dataloom");
    for (text, key) in [
        ("[cluster]\n", "cluster.nats_urls"),
        ("[cluster]\nnats_urls = [\"http://x:4222\"]\n", "cluster.nats_urls"),
        ("[cluster]\nnats_urls = [\"nats://x:4222\"]\nreplicas = 7\n", "cluster.replicas"),
        ("[cluster]\nnats_urls = [\"nats://x:4222\"]\nnode_id = \"a.b\"\n", "cluster.node_id"),
        ("[cluster]\nnats_urls = [\"nats://x:4222\"]\nprefix = \"a>\"\n", "cluster.prefix"),
        ("[cluster]\nnats_urls = [\"nats://x:4222\"]\nsync_timeout = \"0s\"\n", "cluster.sync_timeout"),
        ("[cluster]\nnats_urls = [\"nats://x:4222\"]\nuser = \"u\"\n", "cluster.user"),
        (
            "[cluster]\nnats_urls = [\"nats://x:4222\"]\nca_file = \"/nonexistent/ca.pem\"\n",
            "cluster.ca_file",
        ),
    ] {
        std::fs::write(&path, text).expect("write");
        let e = Config::load(Some(&path), &Overrides::default()).expect_err(text).to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}
