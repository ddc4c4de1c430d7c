//! The `memory` backend: keeps nothing across restarts; every commit is complete at once.

use super::{Commit, Op, Recovered, Store, StoreError};

/// A store that forgets everything when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }

    fn submit(&self, _ops: Vec<Op>, _durable: bool) -> Commit {
        Commit::done()
    }

    fn poisoned(&self) -> Option<StoreError> {
        None
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}
