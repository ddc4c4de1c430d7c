//! The bounded label values of dataloom's metrics and how a connection's end maps onto them:
//! why a connection closed, why a CONNECT was rejected, which protocol rule was broken, why a
//! message was dropped, and the MQTT packet type names.
//!
//! Every set here is closed: a label value never comes from the network (no client id, no
//! topic), so the number of series stays fixed.

use dataloom_codec::{DecodeError, Packet};

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
    /// CONNECT (type code 1).
    pub const CONNECT: usize = 1;
    /// CONNACK (type code 2).
    pub const CONNACK: usize = 2;
    /// PUBLISH (type code 3).
    pub const PUBLISH: usize = 3;
    /// PUBACK (type code 4).
    pub const PUBACK: usize = 4;
    /// PUBREC (type code 5).
    pub const PUBREC: usize = 5;
    /// PUBREL (type code 6).
    pub const PUBREL: usize = 6;
    /// PUBCOMP (type code 7).
    pub const PUBCOMP: usize = 7;
    /// SUBSCRIBE (type code 8).
    pub const SUBSCRIBE: usize = 8;
    /// SUBACK (type code 9).
    pub const SUBACK: usize = 9;
    /// UNSUBSCRIBE (type code 10).
    pub const UNSUBSCRIBE: usize = 10;
    /// UNSUBACK (type code 11).
    pub const UNSUBACK: usize = 11;
    /// PINGREQ (type code 12).
    pub const PINGREQ: usize = 12;
    /// PINGRESP (type code 13).
    pub const PINGRESP: usize = 13;
    /// DISCONNECT (type code 14).
    pub const DISCONNECT: usize = 14;
    /// AUTH (type code 15).
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

/// One table per label: the enum of its values and the array of their label strings, in the
/// same order (a value's discriminant indexes the array and the pre-resolved counters).
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident, $values:ident, [$($(#[$vdoc:meta])* $variant:ident = $label:literal),+ $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        #[doc = concat!("Label values of [`", stringify!($name), "`], in declaration order.")]
        pub const $values: [&str; [$($label),+].len()] = [$($label),+];
    };
}

labels!(
    /// `reason` of `dataloom_connections_closed_total`.
    CloseReason,
    CLOSE_REASONS,
    [
        ClientDisconnect = "client_disconnect",
        ConnectionLost = "connection_lost",
        ProtocolError = "protocol_error",
        KeepAliveTimeout = "keepalive_timeout",
        TakenOver = "taken_over",
        Shutdown = "shutdown",
        NotAuthorized = "not_authorized",
        SchemaInvalid = "schema_invalid",
        ServerError = "server_error",
        /// Ended before a session: see `dataloom_connections_rejected_total` for why.
        Rejected = "rejected",
    ]
);

labels!(
    /// `reason` of `dataloom_connections_rejected_total`: why a connection got no session.
    RejectReason,
    REJECT_REASONS,
    [
        BadCredentials = "bad_credentials",
        NotAuthorized = "not_authorized",
        ClientIdInvalid = "client_id_invalid",
        UnsupportedProtocolVersion = "unsupported_protocol_version",
        BadAuthenticationMethod = "bad_authentication_method",
        MalformedConnect = "malformed_connect",
        ConnectTimeout = "connect_timeout",
        ServerUnavailable = "server_unavailable",
        /// The address held `max_connections_per_ip` connections on the listener.
        TooManyFromAddress = "too_many_from_address",
        Other = "other",
    ]
);

labels!(
    /// `reason` of `dataloom_messages_dropped_total`.
    DropReason,
    DROP_REASONS,
    [
        /// The subscriber's queue held `max_queued_messages`.
        QueueFull = "queue_full",
        /// The message expired (v5 Message Expiry Interval) before it could be sent.
        Expired = "expired",
        /// No subscription matched (the message may still have become retained state).
        NoSubscribers = "no_subscribers",
        /// Larger than the subscriber's Maximum Packet Size.
        TooLarge = "too_large",
        /// QoS 0 for a subscriber that is offline.
        OfflineQos0 = "offline_qos0",
        /// Refused by the topic's JSON Schema.
        SchemaInvalid = "schema_invalid",
        /// The publisher may not publish to the topic, or the subscriber's connection may not
        /// read it (a stored message queued before it connected is withheld instead, up to
        /// `max_queued_messages`; see docs/decisions.md).
        NotAuthorized = "not_authorized",
        /// The topic name was refused (v5 0x90): over `mqtt.max_topic_levels`, or in `$share/`.
        TopicInvalid = "topic_invalid",
        /// Shed under memory pressure (`limits.max_memory`): QoS 0 to a backlogged session.
        LoadShed = "load_shed",
    ]
);

labels!(
    /// `action` of `dataloom_load_shed_total`: what the broker refused or dropped because its
    /// memory account neared `limits.max_memory`, in the order shedding escalates.
    ShedAction,
    SHED_ACTIONS,
    [
        /// A QoS 0 delivery to a session whose client stopped draining its backlog was dropped
        /// (90 %).
        Qos0Delivery = "qos0_delivery",
        /// A QoS 1/2 PUBLISH was refused (v5 0x97, 3.1.1 connection closed) (95 %).
        PublishRefused = "publish_refused",
        /// A retained QoS 0 PUBLISH was dropped (95 %).
        RetainedDropped = "retained_dropped",
        /// A CONNECT was refused (v5 0x89 Server busy, 3.1.1 return code 3) (100 %).
        ConnectRefused = "connect_refused",
    ]
);

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
/// `revoked` counts live connections closed by a revocation; `session_owner` CONNECTs refused
/// because their client id's session belongs to another identity.
pub const AUTH_FAILURE_REASONS: [&str; 7] = [
    "unknown_key",
    "bad_secret",
    "revoked",
    "anonymous_not_allowed",
    "expired",
    "client_id_not_allowed",
    "session_owner",
];

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

impl Ending {
    /// A connection closed at accept, before any byte was read, for `why`.
    pub fn refused(why: RejectReason) -> Ending {
        Ending { close: CloseReason::Rejected, rejected: Some(why), protocol_error: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_tables_line_up() {
        assert_eq!(CLOSE_REASONS[CloseReason::Rejected as usize], "rejected");
        assert_eq!(REJECT_REASONS[RejectReason::Other as usize], "other");
        assert_eq!(DROP_REASONS[DropReason::OfflineQos0 as usize], "offline_qos0");
        assert_eq!(DROP_REASONS.len(), 9);
        assert_eq!(SHED_ACTIONS[ShedAction::ConnectRefused as usize], "connect_refused");
    }

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
}
