//! Responses that wait for the store: a PUBACK, PUBREC, PUBCOMP, SUBACK or UNSUBACK is written
//! only once every durable effect of its request is on disk. Responses leave in the order
//! their requests arrived, so once one waits, every later one queues behind it. Outgoing QoS 2
//! PUBLISH and PUBREL packets of persistent sessions wait here too, for their in-flight state
//! (and the PUBLISH packets behind them, in order).

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::store::{Commit, StoreError};

/// A response held back until its commit completes.
#[derive(Debug)]
struct Deferred {
    commit: Commit,
    /// Bytes to send when the commit succeeds.
    ok: BytesMut,
    /// Bytes to send when it fails (v5 failure reason code); `None` closes the connection.
    err: Option<BytesMut>,
    /// A PUBACK: its QoS 1 PUBLISH stays unacknowledged (counted against Receive Maximum).
    puback: bool,
}

/// The ordered queue of held-back responses of one connection.
#[derive(Debug, Default)]
pub struct Pending {
    queue: VecDeque<Deferred>,
    /// Held-back PUBACKs: QoS 1 messages of the client not yet acknowledged.
    pubacks: usize,
}

impl Pending {
    /// Responses held back.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// PUBACKs held back: the client's QoS 1 messages this connection has not acknowledged yet.
    pub fn held_pubacks(&self) -> usize {
        self.pubacks
    }

    /// True when no response is held back.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes `encode(code)` into `out` now if nothing waits, or holds it back behind `commit`.
    /// `fail` is the reason code to answer with if the commit fails (`None`: close instead).
    pub fn respond(
        &mut self,
        commit: Commit,
        out: &mut BytesMut,
        code: u8,
        fail: Option<u8>,
        encode: impl Fn(u8, &mut BytesMut),
    ) {
        if commit.is_done() && self.queue.is_empty() {
            encode(code, out);
            return;
        }
        let mut ok = BytesMut::new();
        encode(code, &mut ok);
        let err = fail.map(|c| {
            let mut b = BytesMut::new();
            encode(c, &mut b);
            b
        });
        // The first byte of an encoded packet carries its type in the high nibble (PUBACK = 4).
        let puback = ok.first().is_some_and(|b| b >> 4 == 4);
        self.pubacks += usize::from(puback);
        self.queue.push_back(Deferred { commit, ok, err, puback });
    }

    /// Writes `bytes` into `out` now if `commit` is done and nothing waits, or holds them back
    /// behind it; if the commit fails the connection closes without sending them.
    pub fn hold(&mut self, commit: Commit, bytes: BytesMut, out: &mut BytesMut) {
        if commit.is_done() && self.queue.is_empty() {
            out.extend_from_slice(&bytes);
        } else {
            self.queue.push_back(Deferred { commit, ok: bytes, err: None, puback: false });
        }
    }

    /// Waits for the oldest held-back response's commit (pending forever when none waits).
    pub async fn next_ready(&mut self) -> Result<(), StoreError> {
        match self.queue.front_mut() {
            Some(d) => d.commit.wait_mut().await,
            None => std::future::pending().await,
        }
    }

    /// Writes the oldest response after [`Pending::next_ready`] gave its commit's `result`,
    /// then every later one that is complete.
    ///
    /// # Errors
    /// The store error of a failed commit whose request has no failure response.
    pub fn complete_front(
        &mut self,
        result: Result<(), StoreError>,
        out: &mut BytesMut,
    ) -> Result<(), StoreError> {
        if let Some(d) = self.pop() {
            write_outcome(d, result, out)?;
        }
        self.flush_ready(out)
    }

    /// Moves every response whose commit is complete, in order, into `out`.
    ///
    /// # Errors
    /// The store error of a failed commit whose request has no failure response.
    pub fn flush_ready(&mut self, out: &mut BytesMut) -> Result<(), StoreError> {
        while let Some(front) = self.queue.front_mut() {
            let Some(result) = front.commit.try_result() else { return Ok(()) };
            let Some(d) = self.pop() else { return Ok(()) };
            write_outcome(d, result, out)?;
        }
        Ok(())
    }
}

impl Pending {
    fn pop(&mut self) -> Option<Deferred> {
        let d = self.queue.pop_front()?;
        self.pubacks -= usize::from(d.puback);
        Some(d)
    }
}

fn write_outcome(d: Deferred, result: Result<(), StoreError>, out: &mut BytesMut) -> Result<(), StoreError> {
    match (result, d.err) {
        (Ok(()), _) => out.extend_from_slice(&d.ok),
        (Err(_), Some(err)) => out.extend_from_slice(&err),
        (Err(e), None) => return Err(e),
    }
    Ok(())
}
