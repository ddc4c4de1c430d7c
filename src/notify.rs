//! The systemd service-manager protocol (`Type=notify`, `sd_notify(3)`): `READY=1` once the
//! listeners are bound and the store is open, `STOPPING=1` when shutdown begins,
//! `RELOADING=1` around a certificate reload, `STATUS=` lines for `systemctl status`, and
//! `WATCHDOG=1` keep-alives when the unit sets `WatchdogSec=`.
//!
//! The protocol is one datagram per message to the Unix socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` in the abstract namespace). Without that variable every call does nothing,
//! so the broker runs the same outside systemd. A failed send is logged once at debug and
//! never stops the broker.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where `sd_notify` messages go, read once from the environment.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog applies only when
    /// the PID is ours or not given). Never fails: without a socket it does nothing.
    pub fn from_env() -> Notifier {
        let path = std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty());
        let socket = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog interval the unit asked for, if any (keep-alives go at half of it).
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, message: &str) {
        let Some((sock, path)) = &self.socket else { return };
        let sent = match path.strip_prefix('@') {
            Some(name) => send_abstract(sock, name, message),
            None => sock.send_to(message.as_bytes(), path).map(drop),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, socket = %path, "sd_notify message not sent");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` (with the monotonic time systemd 253 asks for).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &str, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(message.as_bytes(), &addr).map(drop)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
}

/// `CLOCK_MONOTONIC` in microseconds (what `RELOADING=1` carries).
fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().expect("socket"), path.display().to_string())),
            watchdog: None,
        };
        n.ready("serving");
        n.stopping("bye");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("ready");
        let first = std::str::from_utf8(&buf[..len]).expect("utf8").to_string();
        assert!(first.starts_with("READY=1\nSTATUS=serving\nMAINPID="), "{first}");
        let len = rx.recv(&mut buf).expect("stopping");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        let n = Notifier { socket: None, watchdog: Some(Duration::from_secs(1)) };
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.ready("nobody listens");
    }
}
