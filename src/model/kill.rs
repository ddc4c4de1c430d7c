//! The kill switch: how the broker (takeover, shutdown, key revocation) tells a connection task
//! to close, and why.

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why the broker ends a connection from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Another connection took the client id (v5 0x8E).
    TakenOver {
        /// The new connection's Clean Start: with 0 it continues the session, unless that
        /// session ends with its connection (expiry 0).
        clean_start: bool,
    },
    /// The broker is shutting down (v5 0x8B).
    Shutdown,
    /// The connection's API key was revoked (v5 0x98 Administrative action).
    Revoked,
}

/// A one-shot signal telling a connection task to close.
#[derive(Debug, Default)]
pub struct Kill {
    notify: Notify,
    reason: Mutex<Option<KillReason>>,
}

impl Kill {
    /// Fires the switch; the first reason wins.
    pub fn fire(&self, reason: KillReason) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.notify.notify_one();
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<KillReason> {
        *self.reason.lock()
    }

    /// Resolves when fired.
    pub async fn fired(&self) -> KillReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            self.notify.notified().await;
        }
    }
}
