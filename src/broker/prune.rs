//! History retention in the background: every [`TOUCHED_EVERY`] the topics that got entries
//! are trimmed to their `keep`, and every [`SWEEP_EVERY`] (and at start) the whole history is
//! checked against `keep` and `max_age`, which also removes the entries of topics no rule
//! governs any more. Deletions go to the store in batches of [`PRUNE_BATCH`], off the
//! publish path.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Broker;
use crate::config::HistoryRule;
use crate::store::{Op, StoreError};

/// How often topics that got entries are trimmed to their `keep`.
const TOUCHED_EVERY: Duration = Duration::from_secs(2);
/// How often the whole history is checked (`max_age`, rules that changed).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most deletions in one store submission.
const PRUNE_BATCH: usize = 10_000;

impl Broker {
    /// Turns history on for the topics of `rules` and starts pruning; nothing when `rules` is
    /// empty. Must run inside a tokio runtime, before clients connect.
    pub fn enable_history(self: &Arc<Self>, rules: &[HistoryRule]) {
        if rules.is_empty() || self.history.set(super::history::History::new(rules)).is_err() {
            return;
        }
        tokio::spawn(prune_loop(Arc::downgrade(self)));
    }

    /// True when `[[history]]` rules are configured.
    pub fn history_enabled(&self) -> bool {
        self.history.get().is_some()
    }

    /// Prunes what retention no longer keeps (of `topic` only, when given); returns how many
    /// entries went.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn prune_history(self: &Arc<Self>, topic: Option<Arc<str>>) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let (b, t) = (self.clone(), topic.clone());
            let found = tokio::task::spawn_blocking(move || {
                let Some(h) = b.history.get() else { return Ok(Vec::new()) };
                let now = super::lifecycle::unix_ms();
                b.store.history_prunable(t.as_deref(), &|name| h.retention(name, now), PRUNE_BATCH)
            })
            .await
            .unwrap_or_else(|_| Err(StoreError::Poisoned("history pruning task panicked".into())))?;
            let n = found.len();
            if n == 0 {
                return Ok(total);
            }
            let mut ops: Vec<Op> =
                found.into_iter().map(|(topic, revision)| Op::DeleteHistory { topic, revision }).collect();
            // The newest entries may go (max_age): the revision must not go back after a restart.
            ops.push(Op::Revision(self.revision()));
            self.store.submit(ops, true).wait().await?;
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }
}

async fn prune_loop(broker: Weak<Broker>) {
    let mut since_sweep = SWEEP_EVERY;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let Some(h) = b.history.get() else { return };
        let result = if since_sweep >= SWEEP_EVERY {
            since_sweep = Duration::ZERO;
            h.take_touched();
            b.prune_history(None).await.map(|_| ())
        } else {
            let mut r = Ok(());
            for t in h.take_touched() {
                r = b.prune_history(Some(t)).await.map(|_| ());
                if r.is_err() {
                    break;
                }
            }
            r
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "history pruning failed; retrying later");
        }
        drop(b);
        tokio::time::sleep(TOUCHED_EVERY).await;
        since_sweep += TOUCHED_EVERY;
    }
}
