//! NATS messages as the broker's messages: the record of `store/record.rs` as payload, the
//! sending node in the `Dl-Node` header, the topic in the subject (checked against the record).

use bytes::Bytes;

use super::{StoreError, cluster_error, subject};
use crate::model::Message;
use crate::store::bus::StateChange;
use crate::store::record::{self, Clock};
use async_nats::jetstream;

/// Header naming the node that sent a message.
pub(super) const NODE_HEADER: &str = "Dl-Node";

/// The payload that carries `msg`: its record (as fjall stores a retained message).
pub(super) fn encode(msg: &Message) -> Bytes {
    let mut buf = Vec::with_capacity(msg.payload.len() + msg.topic.len() + 32);
    record::encode_message_into(msg, &Clock::now(), &mut buf);
    buf.into()
}

/// A stream message as a [`StateChange`] (one that cannot be read is logged and carries no
/// message).
pub(super) fn state_change(prefix: &str, m: jetstream::Message) -> Result<StateChange, StoreError> {
    let seq = m.info().map_err(|e| cluster_error("state stream message", e))?.stream_sequence;
    let m = m.message;
    let message = decode(prefix, "", &m.subject, m.headers.as_ref(), m.payload)
        .map_err(|e| tracing::warn!(seq, error = %e, "cluster: state change skipped"))
        .ok()
        .flatten();
    Ok(StateChange { seq, message })
}

/// Decodes a message record sent on `subject`; `Ok(None)` for a message of node `own`.
pub(super) fn decode(
    prefix: &str,
    own: &str,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Result<Option<Message>, StoreError> {
    let from = headers.and_then(|h| h.get(NODE_HEADER)).map(async_nats::HeaderValue::as_str);
    if !own.is_empty() && from == Some(own) {
        return Ok(None);
    }
    let topic = subject::decode(prefix, subject)
        .ok_or_else(|| StoreError::Cluster(format!("subject {subject:?} is not a topic")))?;
    let mut msg = record::decode_message(payload, &Clock::now())
        .map_err(|e| StoreError::Cluster(format!("record on {subject:?}: {e}")))?;
    if *msg.topic != *topic {
        return Err(StoreError::Cluster(format!("record of {:?} sent on {subject:?}", msg.topic)));
    }
    msg.publisher = None;
    Ok(Some(msg))
}
