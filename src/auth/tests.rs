//! Unit tests of authentication modes, revocation and permission compilation.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;

const LOCAL: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
const REMOTE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));

fn cred<'a>(user: Option<&'a str>, pass: Option<&'a [u8]>, peer: Option<IpAddr>) -> Cred<'a> {
    Cred { username: user, password: pass, client_id: "c1", cert_identity: false, peer, browser: false }
}

fn kill() -> Arc<Kill> {
    Arc::new(Kill::default())
}

async fn with_key(settings: Settings) -> (Auth, String) {
    let auth = Auth::new(settings, Vec::new(), &[], None).expect("auth");
    let spec = KeySpec { name: "k1".into(), publish: vec!["a/#".into()], ..KeySpec::default() };
    let (_, secret) = auth.create(spec).await.expect("create");
    (auth, secret)
}

#[test]
fn no_keys_local_is_unrestricted_remote_needs_opt_in() {
    let auth = Auth::default();
    let p = auth.authenticate(&cred(Some("whoever"), Some(b"x"), LOCAL), &kill()).expect("local");
    assert!(matches!(p, Principal::Unrestricted));
    let e = auth.authenticate(&cred(None, None, REMOTE), &kill()).expect_err("remote");
    assert_eq!(e.code, reason::NOT_AUTHORIZED);
    let open = Auth::new(Settings { allow_anonymous: true, ..Settings::default() }, vec![], &[], None)
        .expect("auth");
    assert!(matches!(open.authenticate(&cred(None, None, REMOTE), &kill()), Ok(Principal::Anonymous)));
}

#[test]
fn configured_anonymous_permissions_apply_on_loopback_while_no_key_exists() {
    let deny =
        AnonymousConfig { deny_subscribe: vec!["test/nosubscribe".into()], ..AnonymousConfig::default() };
    let auth = Auth::new(Settings { anonymous: Some(deny), ..Settings::default() }, vec![], &[], None)
        .expect("auth");
    let p = auth.authenticate(&cred(None, None, LOCAL), &kill()).expect("local is let in");
    assert!(matches!(p, Principal::Anonymous));
    let perms = auth.perms(&p, "c1");
    assert!(!perms.may_subscribe("test/nosubscribe"));
    assert!(perms.may_subscribe("test/other"));
    assert!(auth.anonymous_rule().contains("[auth.anonymous] permissions"), "{}", auth.anonymous_rule());
    assert!(Auth::default().anonymous_rule().contains("loopback clients are unrestricted"));
}

#[test]
fn a_web_page_on_loopback_is_not_trusted_as_local() {
    let page = Cred { browser: true, ..cred(None, None, LOCAL) };
    let e = Auth::default().authenticate(&page, &kill()).expect_err("a page is not the host");
    assert_eq!(e.code, reason::NOT_AUTHORIZED);
    let open = Auth::new(Settings { allow_anonymous: true, ..Settings::default() }, vec![], &[], None)
        .expect("auth");
    assert!(matches!(open.authenticate(&page, &kill()), Ok(Principal::Anonymous)), "anonymous rules apply");
}

#[tokio::test]
async fn keys_need_the_right_secret() {
    let (auth, secret) = with_key(Settings::default()).await;
    let ok = auth.authenticate(&cred(Some("k1"), Some(secret.as_bytes()), LOCAL), &kill());
    assert!(matches!(ok, Ok(Principal::Key(_))));
    let bad = auth.authenticate(&cred(Some("k1"), Some(b"nope"), LOCAL), &kill()).expect_err("bad");
    assert_eq!(bad.code, reason::BAD_USER_NAME_OR_PASSWORD);
    let unknown = auth.authenticate(&cred(Some("k9"), Some(b"x"), LOCAL), &kill()).expect_err("unknown");
    assert_eq!(unknown.code, reason::BAD_USER_NAME_OR_PASSWORD);
    assert!(unknown.delay > bad.delay, "failures from one address slow down");
    let anon = auth.authenticate(&cred(None, None, LOCAL), &kill()).expect_err("anonymous");
    assert_eq!(anon.code, reason::NOT_AUTHORIZED);
}

#[tokio::test]
async fn revoke_fires_live_connections() {
    let (auth, secret) = with_key(Settings::default()).await;
    let k = kill();
    auth.authenticate(&cred(Some("k1"), Some(secret.as_bytes()), LOCAL), &k).expect("ok");
    assert_eq!(auth.revoke("k1").await.expect("revoked"), 1);
    assert_eq!(k.reason(), Some(KillReason::Revoked));
    // (No key left: a local client would be in development mode again, so ask from afar.)
    assert!(auth.authenticate(&cred(Some("k1"), Some(secret.as_bytes()), REMOTE), &kill()).is_err());
    assert!(matches!(auth.revoke("k1").await, Err(AuthError::NotFound(_))));
}

#[tokio::test]
async fn duplicate_and_invalid_specs() {
    let (auth, _) = with_key(Settings::default()).await;
    let dup = KeySpec { name: "k1".into(), ..KeySpec::default() };
    assert!(matches!(auth.create(dup).await, Err(AuthError::Exists(_))));
    let bad = KeySpec { name: "k2".into(), secret: "short".into(), ..KeySpec::default() };
    assert!(matches!(auth.create(bad).await, Err(AuthError::Invalid(_))));
    let listed = auth.list();
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}").contains("sha256"));
}

#[tokio::test]
async fn key_perms_use_placeholders() {
    let auth = Auth::default();
    let spec = KeySpec {
        name: "dev".into(),
        publish: vec!["d/%u/%c/#".into()],
        subscribe: vec!["cmd/%c".into()],
        ..KeySpec::default()
    };
    let (_, secret) = auth.create(spec).await.expect("create");
    let p = auth.authenticate(&cred(Some("dev"), Some(secret.as_bytes()), REMOTE), &kill()).expect("ok");
    let perms = auth.perms(&p, "c1");
    assert!(perms.may_publish("d/dev/c1/x"));
    assert!(!perms.may_publish("d/dev/c2/x"));
    assert!(perms.may_subscribe("cmd/c1"));
    assert!(!perms.may_subscribe("cmd/+"));
}
