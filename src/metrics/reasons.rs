//! The bounded label values of dataloom's metrics and how a connection's end maps onto them:
//! why a connection closed, why a CONNECT was rejected, which protocol rule was broken, why a
//! message was dropped, and the MQTT packet type names.
//!
//! Every set here is closed: a label value never comes from the network (no client id, no
//! topic), so the number of series stays fixed.

use crate::session::Close;
use dataloom_codec::{DecodeError, Packet, reason};

/// MQTT control packet type names by type code (0 is reserved and never counted).
pub const PACKET_TYPES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// MQTT packet type codes, the indices of [`PACKET_TYPES`] and of the per-type counters.
pub mod pt {
    pub const CONNECT: usize = 1;
    pub const CONNACK: usize = 2;
    pub const PUBLISH: usize = 3;
    pub const PUBACK: usize = 4;
    pub const PUBREC: usize = 5;
    pub const PUBREL: usize = 6;
    pub const PUBCOMP: usize = 7;
    pub const SUBSCRIBE: usize = 8;
    pub const SUBACK: usize = 9;
    pub const UNSUBSCRIBE: usize = 10;
    pub const UNSUBACK: usize = 11;
    pub const PINGREQ: usize = 12;
    pub const PINGRESP: usize = 13;
    pub const DISCONNECT: usize = 14;
    pub const AUTH: usize = 15;
}

/// Packet types a client may send (bit per type code).
pub const FROM_CLIENT: u16 = bits(&[1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15]);
/// Packet types a server sends (bit per type code).
pub const FROM_SERVER: u16 = bits(&[2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15]);

const fn bits(types: &[usize]) -> u16 {
    let mut m = 0u16;
    let mut i = 0;
    while i < types.len() {
        m |= 1 << types[i];
        i += 1;
    }
    m
}

/// The type code (1..=15) of a packet, the index into [`PACKET_TYPES`].
pub fn packet_type(p: &Packet) -> usize {
    match p {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::PubRec(_) => 5,
        Packet::PubRel(_) => 6,
        Packet::PubComp(_) => 7,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect(_) => 14,
        Packet::Auth(_) => 15,
    }
}

/// `reason` of `dataloom_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientDisconnect,
    ConnectionLost,
    ProtocolError,
    KeepAliveTimeout,
    TakenOver,
    Shutdown,
    NotAuthorized,
    SchemaInvalid,
    ServerError,
    /// Ended before a session: see `dataloom_connections_rejected_total` for why.
    Rejected,
}

/// Label values of [`CloseReason`], in declaration order.
pub const CLOSE_REASONS: [&str; 10] = [
    "client_disconnect",
    "connection_lost",
    "protocol_error",
    "keepalive_timeout",
    "taken_over",
    "shutdown",
    "not_authorized",
    "schema_invalid",
    "server_error",
    "rejected",
];

/// `reason` of `dataloom_connections_rejected_total`: why a connection got no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadCredentials,
    NotAuthorized,
    ClientIdInvalid,
    UnsupportedProtocolVersion,
    BadAuthenticationMethod,
    MalformedConnect,
    ConnectTimeout,
    ServerUnavailable,
    Other,
}

/// Label values of [`RejectReason`], in declaration order.
pub const REJECT_REASONS: [&str; 9] = [
    "bad_credentials",
    "not_authorized",
    "client_id_invalid",
    "unsupported_protocol_version",
    "bad_authentication_method",
    "malformed_connect",
    "connect_timeout",
    "server_unavailable",
    "other",
];

/// `reason` of `dataloom_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's queue held `max_queued_messages`.
    QueueFull,
    /// The message expired (v5 Message Expiry Interval) before it could be sent.
    Expired,
    /// No subscription matched (the message may still have become retained state).
    NoSubscribers,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// QoS 0 for a subscriber that is offline.
    OfflineQos0,
    /// Refused by the topic's JSON Schema.
    SchemaInvalid,
    /// The publisher may not publish to the topic.
    NotAuthorized,
}

/// Label values of [`DropReason`], in declaration order.
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "expired",
    "no_subscribers",
    "too_large",
    "offline_qos0",
    "schema_invalid",
    "not_authorized",
];

/// Protocol violations the session layer detects after decoding (not [`DecodeError`]s),
/// labelled by the v5 reason code the connection is closed with.
pub const SESSION_PROTOCOL_KINDS: [&str; 5] = [
    "session_protocol_error",
    "session_malformed_packet",
    "topic_name_invalid",
    "receive_maximum_exceeded",
    "topic_alias_invalid",
];

/// `reason` of `dataloom_auth_failures_total` (fed by the auth module).
/// `revoked` counts live connections closed by a revocation.
pub const AUTH_FAILURE_REASONS: [&str; 6] =
    ["unknown_key", "bad_secret", "revoked", "anonymous_not_allowed", "expired", "client_id_not_allowed"];

/// `action` of `dataloom_authorization_denials_total` (fed by the auth module).
pub const AUTHZ_ACTIONS: [&str; 2] = ["publish", "subscribe"];

/// `result` of `dataloom_schema_validations_total` (fed by the schema registry).
pub const SCHEMA_RESULTS: [&str; 3] = ["valid", "invalid", "not_json"];

/// One value of every [`DecodeError`] variant, so each `kind` has a series from the start.
pub fn decode_error_kinds() -> Vec<&'static str> {
    use DecodeError::*;
    let p = "PUBLISH";
    [
        RemainingLengthTooLong,
        VariableByteIntegerTooLong,
        PacketTooLarge { size: 0, max: 0 },
        FirstPacketNotConnect,
        SecondConnect,
        ReservedPacketType(0),
        InvalidFixedHeaderFlags { packet: p },
        ServerOnlyPacket { packet: p },
        ClientOnlyPacket { packet: p },
        Truncated,
        TrailingBytes,
        InvalidQoS,
        Qos0WithDup,
        TopicNameWildcard,
        TopicContainsNull,
        EmptyTopic,
        EmptyTopicFilter,
        TooManyTopicLevels,
        InvalidUtf8,
        NullCharacter,
        SubscribeNoFilters,
        UnsubscribeNoFilters,
        SubscribeReservedBitsSet,
        InvalidRetainHandling,
        PacketIdZero,
        InvalidProtocolName,
        UnsupportedProtocolLevel { level: 0 },
        ConnectReservedFlagSet,
        WillFlagsWithoutWill,
        WillQos3,
        PasswordWithoutUsername,
        EmptyClientIdWithoutCleanSession,
        ConnAckReservedFlagSet,
        InvalidReasonCode { code: 0, packet: p },
        DuplicateProperty { id: 0 },
        UnknownProperty { id: 0 },
        PropertyNotAllowed { id: 0, packet: p },
        InvalidPropertyValue { id: 0 },
        TopicAliasZero,
        SubscriptionIdInPublish,
        TooManyUserProperties,
    ]
    .iter()
    .map(DecodeError::kind)
    .collect()
}

/// What a finished connection counts: its close reason, the rejection (if it never got a
/// session) and the protocol error kind (if it broke a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub close: CloseReason,
    pub rejected: Option<RejectReason>,
    pub protocol_error: Option<&'static str>,
}

/// Classifies how a connection ended; `established` is false when it ended before a session.
pub fn classify(close: &Close, established: bool) -> Ending {
    let protocol_error = match close {
        Close::Decode(e) => Some(e.kind()),
        Close::Server(code, _) => session_protocol_kind(*code),
        _ => None,
    };
    if !established {
        let rejected = match close {
            Close::Refused(code) => Some(reject_for_code(*code)),
            Close::Decode(e) => Some(match e {
                DecodeError::InvalidProtocolName | DecodeError::UnsupportedProtocolLevel { .. } => {
                    RejectReason::UnsupportedProtocolVersion
                }
                DecodeError::EmptyClientIdWithoutCleanSession => RejectReason::ClientIdInvalid,
                _ => RejectReason::MalformedConnect,
            }),
            Close::Server(reason::MAXIMUM_CONNECT_TIME, _) => Some(RejectReason::ConnectTimeout),
            Close::Server(code, _) => Some(reject_for_code(*code)),
            Close::Io(_) | Close::ClientDisconnect(_) => None,
        };
        let close = if rejected.is_some() { CloseReason::Rejected } else { CloseReason::ConnectionLost };
        return Ending { close, rejected, protocol_error };
    }
    let close = match close {
        Close::ClientDisconnect(_) => CloseReason::ClientDisconnect,
        Close::Io(_) => CloseReason::ConnectionLost,
        Close::Decode(_) => CloseReason::ProtocolError,
        Close::Refused(_) => CloseReason::Rejected,
        Close::Server(code, _) => match *code {
            reason::KEEP_ALIVE_TIMEOUT => CloseReason::KeepAliveTimeout,
            reason::SESSION_TAKEN_OVER => CloseReason::TakenOver,
            reason::SERVER_SHUTTING_DOWN => CloseReason::Shutdown,
            reason::NOT_AUTHORIZED | reason::ADMINISTRATIVE_ACTION => CloseReason::NotAuthorized,
            reason::PAYLOAD_FORMAT_INVALID => CloseReason::SchemaInvalid,
            c if session_protocol_kind(c).is_some() => CloseReason::ProtocolError,
            _ => CloseReason::ServerError,
        },
    };
    Ending { close, rejected: None, protocol_error }
}

fn session_protocol_kind(code: u8) -> Option<&'static str> {
    let i = match code {
        reason::PROTOCOL_ERROR => 0,
        reason::MALFORMED_PACKET => 1,
        reason::TOPIC_NAME_INVALID => 2,
        reason::RECEIVE_MAXIMUM_EXCEEDED => 3,
        reason::TOPIC_ALIAS_INVALID => 4,
        _ => return None,
    };
    Some(SESSION_PROTOCOL_KINDS[i])
}

fn reject_for_code(code: u8) -> RejectReason {
    match code {
        reason::BAD_USER_NAME_OR_PASSWORD => RejectReason::BadCredentials,
        reason::NOT_AUTHORIZED | reason::BANNED => RejectReason::NotAuthorized,
        reason::CLIENT_IDENTIFIER_NOT_VALID => RejectReason::ClientIdInvalid,
        reason::UNSUPPORTED_PROTOCOL_VERSION => RejectReason::UnsupportedProtocolVersion,
        reason::BAD_AUTHENTICATION_METHOD => RejectReason::BadAuthenticationMethod,
        reason::MALFORMED_PACKET | reason::PROTOCOL_ERROR | reason::PACKET_TOO_LARGE => {
            RejectReason::MalformedConnect
        }
        reason::SERVER_UNAVAILABLE | reason::SERVER_BUSY | reason::QUOTA_EXCEEDED => {
            RejectReason::ServerUnavailable
        }
        _ => RejectReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_directions() {
        assert_eq!(FROM_CLIENT & (1 << 2), 0, "clients never send CONNACK");
        assert_ne!(FROM_SERVER & (1 << 2), 0);
        assert_eq!(FROM_SERVER & (1 << 1), 0, "servers never send CONNECT");
    }

    #[test]
    fn decode_kinds_are_distinct_snake_case() {
        let kinds = decode_error_kinds();
        let set: std::collections::HashSet<_> = kinds.iter().collect();
        assert_eq!(set.len(), kinds.len());
        assert!(
            kinds.iter().all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        );
        assert!(SESSION_PROTOCOL_KINDS.iter().all(|k| !set.contains(k)));
    }

    #[test]
    fn refused_connect_is_a_rejection() {
        let e = classify(&Close::Refused(reason::NOT_AUTHORIZED), false);
        assert_eq!(e.close, CloseReason::Rejected);
        assert_eq!(e.rejected, Some(RejectReason::NotAuthorized));
        let e = classify(&Close::Io("gone".into()), false);
        assert_eq!((e.close, e.rejected), (CloseReason::ConnectionLost, None));
        let e = classify(&Close::Decode(DecodeError::Truncated), false);
        assert_eq!(e.rejected, Some(RejectReason::MalformedConnect));
        assert_eq!(e.protocol_error, Some("truncated"));
    }

    #[test]
    fn session_closes() {
        let e = classify(&Close::Server(reason::KEEP_ALIVE_TIMEOUT, "x"), true);
        assert_eq!(e.close, CloseReason::KeepAliveTimeout);
        let e = classify(&Close::Server(reason::TOPIC_ALIAS_INVALID, "x"), true);
        assert_eq!((e.close, e.protocol_error), (CloseReason::ProtocolError, Some("topic_alias_invalid")));
        let e = classify(&Close::ClientDisconnect(0), true);
        assert_eq!((e.close, e.protocol_error), (CloseReason::ClientDisconnect, None));
    }
}
