//! Listing the sessions the broker holds (the web console's client list, `/v1/clients`): one
//! line per session, online or offline, in client id order, at most a page of them.

use super::Broker;
use crate::model::SessionOwner;

/// One session as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client id.
    pub client_id: String,
    /// A connection holds the session.
    pub online: bool,
    /// Session expiry > 0 (it outlives its connection).
    pub persistent: bool,
    /// Subscriptions it holds.
    pub subscriptions: usize,
    /// Deliveries queued for it.
    pub queued: usize,
    /// Who created it: `(unrestricted)`, `(anonymous)` or the key id.
    pub owner: Option<String>,
}

impl Broker {
    /// The first `limit` sessions in client id order, and how many sessions there are. The
    /// session table is locked only while the sessions are collected; each is then read alone.
    pub fn clients(&self, limit: usize) -> (Vec<ClientInfo>, usize) {
        let (mut sessions, total) = {
            let table = self.sessions.lock();
            (table.values().cloned().collect::<Vec<_>>(), table.len())
        };
        sessions.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
        sessions.truncate(limit);
        let items = sessions
            .iter()
            .map(|s| {
                // One lock of the session state at a time (it is not reentrant).
                let subscriptions = s.state.lock().subscriptions.len();
                ClientInfo {
                    client_id: s.client_id.to_string(),
                    online: s.is_online(),
                    persistent: s.is_persistent(),
                    subscriptions,
                    queued: s.mailbox.len(),
                    owner: s.owner().map(|o: SessionOwner| o.to_string()),
                }
            })
            .collect();
        (items, total)
    }
}
