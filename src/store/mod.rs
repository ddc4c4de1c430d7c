//! Persistence behind one interface: what the broker must keep across restarts.
//!
//! The broker calls the [`Store`] for every retained-state change and reads it back at start.
//! `memory` keeps nothing (state lives only in the broker's in-memory index); the fjall backend
//! joins behind the same trait.

use std::sync::Arc;

use crate::broker::message::Message;

/// A storage failure; the message names the path or operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {message}")]
    Io { path: String, message: String },
}

/// Durable state of the broker.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Retained messages to restore at start.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    fn load_retained(&self) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Records `msg` as the retained state of its topic.
    ///
    /// # Errors
    /// [`StoreError`] when the write fails; the caller must not acknowledge the message.
    fn put_retained(&self, msg: &Arc<Message>) -> Result<(), StoreError>;

    /// Deletes the retained state of `topic`.
    ///
    /// # Errors
    /// [`StoreError`] when the write fails.
    fn delete_retained(&self, topic: &str) -> Result<(), StoreError>;
}

/// The `memory` backend: keeps nothing across restarts.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load_retained(&self) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(Vec::new())
    }

    fn put_retained(&self, _msg: &Arc<Message>) -> Result<(), StoreError> {
        Ok(())
    }

    fn delete_retained(&self, _topic: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
