//! Browser-facing allow lists: `http.allowed_origins`, `http.allowed_hosts` and the
//! `allowed_origins` of `[listeners.ws]` and `[listeners.wss]`. Their syntax checks and the
//! pure matching rules the HTTP admin guard and the WebSocket upgrade apply (no I/O).
//!
//! - An **origin** is `scheme://host[:port]` as a browser sends it in `Origin` (no path, no
//!   trailing `/`); it matches ignoring ASCII case. `null` cannot be listed.
//! - A **host** entry is a name (`localhost`, `broker.lan`, an IP) or `name:port`. A bare name
//!   matches a `Host` header with that name and any port or none; `name:port` matches only
//!   that exact value. The bound `ip:port` always matches; a listener bound to an unspecified
//!   address (`0.0.0.0`, `[::]`) matches any IP literal with its port, as it answers on every
//!   address of the host (an IP literal cannot be a rebound DNS name).

use std::net::SocketAddr;

use super::{ConfigError, invalid};

/// Checks every entry of an `allowed_origins` list named `key`.
pub(super) fn check_origins(key: &'static str, list: &[String]) -> Result<(), ConfigError> {
    for o in list {
        let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#', ' ', '\t'])
        });
        if !ok {
            return Err(invalid(
                key,
                format!("{o:?} is not an origin: write scheme://host[:port], e.g. \"https://app.example\""),
            ));
        }
    }
    Ok(())
}

/// Checks every entry of an `allowed_hosts` list named `key`.
pub(super) fn check_hosts(key: &'static str, list: &[String]) -> Result<(), ConfigError> {
    for h in list {
        if h.is_empty() || h.contains(['/', ' ', '\t', '@']) {
            return Err(invalid(
                key,
                format!("{h:?} is not a host name: write a name or name:port, e.g. \"broker.lan\""),
            ));
        }
    }
    Ok(())
}

/// True when the `Origin` header value `origin` is in `allowed`.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin.trim()))
}

/// True when the `Host` header value `host` names the listener bound at `bound` (its
/// `ip:port` exactly) or an entry of `allowed`.
pub fn host_allowed(allowed: &[String], bound: SocketAddr, host: &str) -> bool {
    let host = host.trim();
    if host == bound.to_string() {
        return true;
    }
    if bound.ip().is_unspecified() && host.parse::<SocketAddr>().is_ok_and(|a| a.port() == bound.port()) {
        return true;
    }
    let name = host_name(host);
    allowed.iter().any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// The name part of a `Host` value: `[::1]:80` → `[::1]`, `a.b:80` → `a.b`, `a.b` → `a.b`.
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn origins_match_exactly_ignoring_case() {
        let a = list(&["https://app.example", "http://localhost:3000"]);
        assert!(origin_allowed(&a, "https://APP.example"));
        assert!(origin_allowed(&a, "http://localhost:3000"));
        assert!(!origin_allowed(&a, "http://localhost:3001"));
        assert!(!origin_allowed(&a, "https://app.example.evil"));
        assert!(!origin_allowed(&[], "null"));
    }

    #[test]
    fn hosts_match_bound_address_or_listed_names() {
        let bound: SocketAddr = "127.0.0.1:9883".parse().expect("addr");
        let a = list(&["localhost", "broker.lan:8080"]);
        assert!(host_allowed(&a, bound, "127.0.0.1:9883"));
        assert!(!host_allowed(&a, bound, "127.0.0.1:9884"));
        assert!(host_allowed(&a, bound, "localhost"));
        assert!(host_allowed(&a, bound, "LOCALHOST:9883"));
        assert!(host_allowed(&a, bound, "broker.lan:8080"));
        assert!(!host_allowed(&a, bound, "broker.lan"));
        assert!(!host_allowed(&a, bound, "evil.example"));
        assert!(!host_allowed(&a, bound, "localhost.evil.example"));
        let v6: SocketAddr = "[::1]:9883".parse().expect("addr");
        assert!(host_allowed(&[], v6, "[::1]:9883"));
        assert!(host_allowed(&list(&["[::1]"]), v6, "[::1]:1"));
        let any: SocketAddr = "0.0.0.0:9883".parse().expect("addr");
        assert!(host_allowed(&[], any, "10.0.0.5:9883") && host_allowed(&[], any, "127.0.0.1:9883"));
        assert!(!host_allowed(&[], any, "10.0.0.5:80") && !host_allowed(&[], any, "evil.example:9883"));
    }

    #[test]
    fn syntax_is_checked() {
        assert!(check_origins("k", &list(&["https://a.example:8443"])).is_ok());
        for bad in ["a.example", "https://a.example/", "null", "https://", "https://a b"] {
            assert!(check_origins("k", &list(&[bad])).is_err(), "{bad}");
        }
        assert!(check_hosts("k", &list(&["localhost", "10.0.0.5:9883"])).is_ok());
        for bad in ["", "http://a", "a/b"] {
            assert!(check_hosts("k", &list(&[bad])).is_err(), "{bad}");
        }
    }
}
