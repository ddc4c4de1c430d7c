//! What a connection may read, as the broker sees it: a topic check it can ask without
//! knowing API keys (the `auth` layer's compiled permissions implement it). The broker uses it
//! to pick, for a shared subscription, only a member that may receive the message.

use std::fmt;

/// Read permission of one connection, checked per topic name.
pub trait ReadAccess: fmt::Debug + Send + Sync {
    /// True when the connection may receive a message on topic name `topic`.
    fn may_read(&self, topic: &str) -> bool;
}
