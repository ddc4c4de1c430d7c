//! Protocol violations found by the session layer (the codec finds the others, as
//! [`dataloom_codec::DecodeError`]): each is named, cites the rule it breaks, and knows the v5
//! reason code of the DISCONNECT and the `kind` label of `dataloom_protocol_errors_total`.

use dataloom_codec::reason;
use dataloom_codec::topic::TopicError;

use crate::metrics::reasons::SESSION_PROTOCOL_KINDS;

/// A packet that decoded but breaks a rule of the session state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// AUTH on a connection whose CONNECT had no Authentication Method (MQTT 5 §4.12).
    #[error("AUTH without an authentication method [MQTT 5 §4.12]")]
    AuthWithoutMethod,
    /// A packet type only a server sends (CONNACK, SUBACK, ...) or a second CONNECT
    /// [MQTT-3.1.0-2], MQTT 5 §2.1.2.
    #[error("packet not allowed from a client [MQTT-3.1.0-2, MQTT 5 §2.1.2]")]
    PacketNotFromClient,
    /// More unreleased QoS 2 PUBLISHes than the Receive Maximum the server sent (MQTT 5
    /// §3.3.4 Receive Maximum).
    #[error("too many unreleased QoS 2 messages [MQTT 5 §3.3.4]")]
    ReceiveMaximumExceeded,
    /// The topic name is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("topic is not UTF-8 [MQTT-1.5.4-1]")]
    TopicNotUtf8,
    /// Topic Alias 0 or above the Topic Alias Maximum the server sent [MQTT-3.3.2-8],
    /// [MQTT-3.3.2-9].
    #[error("topic alias out of range [MQTT-3.3.2-8, MQTT-3.3.2-9]")]
    TopicAliasOutOfRange,
    /// An empty topic with a Topic Alias the client never mapped (MQTT 5 §3.3.2.3.4).
    #[error("unknown topic alias [MQTT 5 §3.3.2.3.4]")]
    UnknownTopicAlias,
    /// A well-formed topic name the server does not accept (over `mqtt.max_topic_levels`, or
    /// in `$share/`) in a PUBLISH no ack can refuse: v5 QoS 0, or MQTT 3.x.
    #[error("topic name not accepted [MQTT 5 §3.3.2.1, 0x90]: {0}")]
    TopicNameNotAccepted(TopicError),
    /// A SUBSCRIBE filter that breaks the topic filter rules (the error cites the rule).
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// No Local set on a shared subscription [MQTT-3.8.3-4].
    #[error("no local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnShared,
    /// DISCONNECT sets a Session Expiry after CONNECT said 0 (MQTT 5 §3.14.2.2.2).
    #[error("session expiry set after CONNECT said 0 [MQTT 5 §3.14.2.2.2]")]
    SessionExpiryAfterZero,
}

/// The reason codes of session-level violations, index-aligned with their `kind` labels
/// ([`SESSION_PROTOCOL_KINDS`], which the metrics define).
const KIND_CODES: [u8; SESSION_PROTOCOL_KINDS.len()] = [
    reason::PROTOCOL_ERROR,
    reason::MALFORMED_PACKET,
    reason::TOPIC_NAME_INVALID,
    reason::RECEIVE_MAXIMUM_EXCEEDED,
    reason::TOPIC_ALIAS_INVALID,
];

impl Violation {
    /// The v5 reason code of the DISCONNECT.
    pub fn code(&self) -> u8 {
        match self {
            Violation::AuthWithoutMethod
            | Violation::PacketNotFromClient
            | Violation::UnknownTopicAlias
            | Violation::NoLocalOnShared
            | Violation::SessionExpiryAfterZero => reason::PROTOCOL_ERROR,
            Violation::ReceiveMaximumExceeded => reason::RECEIVE_MAXIMUM_EXCEEDED,
            Violation::TopicNotUtf8 | Violation::TopicNameNotAccepted(_) => reason::TOPIC_NAME_INVALID,
            Violation::TopicAliasOutOfRange => reason::TOPIC_ALIAS_INVALID,
            Violation::InvalidTopicFilter(_) => reason::MALFORMED_PACKET,
        }
    }

    /// The `kind` label of `dataloom_protocol_errors_total`.
    pub fn kind(&self) -> &'static str {
        let i = KIND_CODES.iter().position(|c| *c == self.code()).unwrap_or(0);
        SESSION_PROTOCOL_KINDS[i]
    }

    /// The reason string of the v5 DISCONNECT (short, without the citation).
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::AuthWithoutMethod => "AUTH without an authentication method",
            Violation::PacketNotFromClient => "packet not allowed from a client",
            Violation::ReceiveMaximumExceeded => "too many unreleased QoS 2 messages",
            Violation::TopicNotUtf8 => "topic is not UTF-8",
            Violation::TopicNameNotAccepted(_) => "topic name not accepted",
            Violation::TopicAliasOutOfRange => "topic alias out of range",
            Violation::UnknownTopicAlias => "unknown topic alias",
            Violation::InvalidTopicFilter(_) => "invalid topic filter",
            Violation::NoLocalOnShared => "no local on a shared subscription",
            Violation::SessionExpiryAfterZero => "session expiry set after CONNECT said 0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_has_a_known_kind_and_cites_a_rule() {
        let all = [
            Violation::AuthWithoutMethod,
            Violation::PacketNotFromClient,
            Violation::ReceiveMaximumExceeded,
            Violation::TopicNotUtf8,
            Violation::TopicNameNotAccepted(TopicError::SharedName),
            Violation::TopicAliasOutOfRange,
            Violation::UnknownTopicAlias,
            Violation::InvalidTopicFilter(TopicError::Empty),
            Violation::NoLocalOnShared,
            Violation::SessionExpiryAfterZero,
        ];
        for v in all {
            let i = KIND_CODES.iter().position(|c| *c == v.code()).expect("a code with a kind");
            assert_eq!(SESSION_PROTOCOL_KINDS[i], v.kind(), "{v:?}");
            assert!(v.to_string().contains("[MQTT"), "{v} cites its rule");
            assert!(v.to_string().starts_with(v.reason()));
        }
        assert_eq!(Violation::TopicAliasOutOfRange.kind(), "topic_alias_invalid");
        assert_eq!(Violation::InvalidTopicFilter(TopicError::Empty).kind(), "session_malformed_packet");
    }
}
