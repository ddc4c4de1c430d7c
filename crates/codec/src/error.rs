//! [`DecodeError`]: one variant per normative rule of MQTT 3.1/3.1.1/5.0 that the decoder
//! enforces, each knowing the MQTT 5 reason code a server answers with and a bounded metric label.
//!
//! Rule numbers in the messages are from MQTT 5.0 (OASIS) unless marked 3.1.1.

use super::reason;

/// Why a byte stream is not a valid MQTT packet. Every error is fatal for the connection.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("remaining length encoded in more than 4 bytes [MQTT-2.1.4, 1.5.5]")]
    RemainingLengthTooLong,
    #[error("variable byte integer encoded in more than 4 bytes [MQTT-1.5.5]")]
    VariableByteIntegerTooLong,
    #[error("packet of {size} bytes exceeds the maximum packet size {max} [MQTT-3.1.2-24]")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("first packet on a connection is not CONNECT [MQTT-3.1.0-1]")]
    FirstPacketNotConnect,
    #[error("second CONNECT on a connection [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("reserved control packet type {0} [MQTT-2.1.2]")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags for {packet} [MQTT-2.1.3-1]")]
    InvalidFixedHeaderFlags { packet: &'static str },
    #[error("{packet} may only be sent by a server [MQTT-3.2, 3.9, 3.11, 3.13]")]
    ServerOnlyPacket { packet: &'static str },
    #[error("{packet} may only be sent by a client")]
    ClientOnlyPacket { packet: &'static str },
    #[error("a field runs past the end of the packet (malformed) [MQTT-1.5, 2.1.4]")]
    Truncated,
    #[error("bytes left over after the last field of the packet (malformed) [MQTT-2.1.4]")]
    TrailingBytes,
    #[error("QoS value 3 is not allowed [MQTT-3.3.1-4]")]
    InvalidQoS,
    #[error("DUP flag set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    Qos0WithDup,
    #[error("topic name contains a wildcard character [MQTT-3.3.2-2]")]
    TopicNameWildcard,
    #[error("topic name contains U+0000 [MQTT-1.5.4-2]")]
    TopicContainsNull,
    #[error("topic name is empty and no topic alias is given [MQTT-4.7.3-1, 3.3.2-1]")]
    EmptyTopic,
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    EmptyTopicFilter,
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    #[error("SUBSCRIBE without any topic filter [MQTT-3.8.3-2]")]
    SubscribeNoFilters,
    #[error("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")]
    UnsubscribeNoFilters,
    #[error("reserved bits set in subscription options [MQTT-3.8.3-5]")]
    SubscribeReservedBitsSet,
    #[error("retain handling value 3 [MQTT-3.8.3-6]")]
    InvalidRetainHandling,
    #[error("subscription maximum QoS 3 [MQTT-3.8.3-4] (3.1.1: malformed)")]
    SubscribeQos3,
    #[error("packet identifier 0 [MQTT-2.2.1-3]")]
    PacketIdZero,
    #[error("protocol name is neither MQTT nor MQIsdp [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    #[error("unsupported protocol level {level} [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel { level: u8 },
    #[error("reserved CONNECT flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlagSet,
    #[error("will QoS or will retain set without the will flag [MQTT-3.1.2-11, 3.1.2-13]")]
    WillFlagsWithoutWill,
    #[error("will QoS 3 [MQTT-3.1.2-12]")]
    WillQos3,
    #[error("password flag without user name flag (3.1.1) [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("empty client identifier requires clean session (3.1.1) [MQTT-3.1.3-7, 3.1.3-8]")]
    EmptyClientIdWithoutCleanSession,
    #[error("reserved CONNACK acknowledge flag is set [MQTT-3.2.2-1]")]
    ConnAckReservedFlagSet,
    #[error("unknown reason code 0x{code:02X} in {packet}")]
    InvalidReasonCode { code: u8, packet: &'static str },
    #[error("property 0x{id:02X} appears more than once")]
    DuplicateProperty { id: u8 },
    #[error("unknown property identifier 0x{id:02X} [MQTT-2.2.2]")]
    UnknownProperty { id: u8 },
    #[error("property 0x{id:02X} is not allowed in {packet} [MQTT-2.2.2]")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("invalid value for property 0x{id:02X}")]
    InvalidPropertyValue { id: u8 },
    #[error("topic alias 0 [MQTT-3.3.2-8]")]
    TopicAliasZero,
    #[error("subscription identifier in a PUBLISH sent by a client [MQTT-3.3.4-6]")]
    SubscriptionIdInPublish,
    #[error("more user properties than the server allows")]
    TooManyUserProperties,
}

impl DecodeError {
    /// The MQTT 5 reason code to send in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> u8 {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            InvalidProtocolName | UnsupportedProtocolLevel { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            EmptyClientIdWithoutCleanSession => reason::CLIENT_IDENTIFIER_NOT_VALID,
            TopicAliasZero => reason::TOPIC_ALIAS_INVALID,
            TopicNameWildcard => reason::TOPIC_NAME_INVALID,
            EmptyTopicFilter => reason::TOPIC_FILTER_INVALID,
            TooManyUserProperties => reason::IMPLEMENTATION_SPECIFIC_ERROR,
            FirstPacketNotConnect
            | SecondConnect
            | ServerOnlyPacket { .. }
            | ClientOnlyPacket { .. }
            | EmptyTopic
            | SubscribeNoFilters
            | UnsubscribeNoFilters
            | InvalidRetainHandling
            | SubscribeQos3
            | PacketIdZero
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | SubscriptionIdInPublish => reason::PROTOCOL_ERROR,
            RemainingLengthTooLong
            | VariableByteIntegerTooLong
            | ReservedPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | Truncated
            | TrailingBytes
            | InvalidQoS
            | Qos0WithDup
            | TopicContainsNull
            | InvalidUtf8
            | NullCharacter
            | SubscribeReservedBitsSet
            | ConnectReservedFlagSet
            | WillFlagsWithoutWill
            | WillQos3
            | PasswordWithoutUsername
            | ConnAckReservedFlagSet
            | InvalidReasonCode { .. }
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. } => reason::MALFORMED_PACKET,
        }
    }

    /// Short snake_case label for metrics; the set of values is bounded (one per variant).
    pub fn kind(&self) -> &'static str {
        use DecodeError::*;
        match self {
            RemainingLengthTooLong => "remaining_length_too_long",
            VariableByteIntegerTooLong => "varint_too_long",
            PacketTooLarge { .. } => "packet_too_large",
            FirstPacketNotConnect => "first_packet_not_connect",
            SecondConnect => "second_connect",
            ReservedPacketType(_) => "reserved_packet_type",
            InvalidFixedHeaderFlags { .. } => "invalid_fixed_header_flags",
            ServerOnlyPacket { .. } => "server_only_packet",
            ClientOnlyPacket { .. } => "client_only_packet",
            Truncated => "truncated",
            TrailingBytes => "trailing_bytes",
            InvalidQoS => "invalid_qos",
            Qos0WithDup => "qos0_with_dup",
            TopicNameWildcard => "topic_name_wildcard",
            TopicContainsNull => "topic_contains_null",
            EmptyTopic => "empty_topic",
            EmptyTopicFilter => "empty_topic_filter",
            InvalidUtf8 => "invalid_utf8",
            NullCharacter => "null_character",
            SubscribeNoFilters => "subscribe_no_filters",
            UnsubscribeNoFilters => "unsubscribe_no_filters",
            SubscribeReservedBitsSet => "subscribe_reserved_bits",
            InvalidRetainHandling => "invalid_retain_handling",
            SubscribeQos3 => "subscribe_qos3",
            PacketIdZero => "packet_id_zero",
            InvalidProtocolName => "invalid_protocol_name",
            UnsupportedProtocolLevel { .. } => "unsupported_protocol_level",
            ConnectReservedFlagSet => "connect_reserved_flag",
            WillFlagsWithoutWill => "will_flags_without_will",
            WillQos3 => "will_qos3",
            PasswordWithoutUsername => "password_without_username",
            EmptyClientIdWithoutCleanSession => "empty_client_id",
            ConnAckReservedFlagSet => "connack_reserved_flag",
            InvalidReasonCode { .. } => "invalid_reason_code",
            DuplicateProperty { .. } => "duplicate_property",
            UnknownProperty { .. } => "unknown_property",
            PropertyNotAllowed { .. } => "property_not_allowed",
            InvalidPropertyValue { .. } => "invalid_property_value",
            TopicAliasZero => "topic_alias_zero",
            SubscriptionIdInPublish => "subscription_id_in_publish",
            TooManyUserProperties => "too_many_user_properties",
        }
    }
}
