//! MQTT 5 reason codes (OASIS MQTT 5.0, section 2.4), which reason codes each packet may carry,
//! and the mapping of CONNACK reason codes to MQTT 3.1/3.1.1 return codes.

pub const SUCCESS: u8 = 0x00;
pub const NORMAL_DISCONNECTION: u8 = 0x00;
pub const GRANTED_QOS_0: u8 = 0x00;
pub const GRANTED_QOS_1: u8 = 0x01;
pub const GRANTED_QOS_2: u8 = 0x02;
pub const DISCONNECT_WITH_WILL_MESSAGE: u8 = 0x04;
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
pub const RE_AUTHENTICATE: u8 = 0x19;
pub const UNSPECIFIED_ERROR: u8 = 0x80;
pub const MALFORMED_PACKET: u8 = 0x81;
pub const PROTOCOL_ERROR: u8 = 0x82;
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const SERVER_UNAVAILABLE: u8 = 0x88;
pub const SERVER_BUSY: u8 = 0x89;
pub const BANNED: u8 = 0x8A;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub const PACKET_TOO_LARGE: u8 = 0x95;
pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
pub const QUOTA_EXCEEDED: u8 = 0x97;
pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SERVER_MOVED: u8 = 0x9D;
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// MQTT 3.1/3.1.1 CONNACK return codes.
pub mod v3 {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
    /// SUBACK failure return code (3.1.1).
    pub const SUBACK_FAILURE: u8 = 0x80;
}

/// Maps a v5 CONNACK reason code to the 3.1/3.1.1 return code; unknown failures become 3.
pub fn connack_v5_to_v3(code: u8) -> u8 {
    match code {
        SUCCESS => v3::ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => v3::UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => v3::IDENTIFIER_REJECTED,
        BAD_USER_NAME_OR_PASSWORD | BAD_AUTHENTICATION_METHOD => v3::BAD_USER_NAME_OR_PASSWORD,
        NOT_AUTHORIZED => v3::NOT_AUTHORIZED,
        _ => v3::SERVER_UNAVAILABLE,
    }
}

/// Maps a 3.1/3.1.1 CONNACK return code to its v5 reason code; `None` for codes above 5.
pub fn connack_v3_to_v5(code: u8) -> Option<u8> {
    Some(match code {
        v3::ACCEPTED => SUCCESS,
        v3::UNACCEPTABLE_PROTOCOL_VERSION => UNSUPPORTED_PROTOCOL_VERSION,
        v3::IDENTIFIER_REJECTED => CLIENT_IDENTIFIER_NOT_VALID,
        v3::SERVER_UNAVAILABLE => SERVER_UNAVAILABLE,
        v3::BAD_USER_NAME_OR_PASSWORD => BAD_USER_NAME_OR_PASSWORD,
        v3::NOT_AUTHORIZED => NOT_AUTHORIZED,
        _ => return None,
    })
}

/// Reason codes a v5 CONNACK may carry (3.2.2.2).
pub fn valid_connack(code: u8) -> bool {
    matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
}

/// Reason codes of PUBACK and PUBREC (3.4.2.1, 3.5.2.1).
pub fn valid_puback(code: u8) -> bool {
    matches!(code, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99)
}

/// Reason codes of PUBREL and PUBCOMP (3.6.2.1, 3.7.2.1).
pub fn valid_pubrel(code: u8) -> bool {
    matches!(code, 0x00 | 0x92)
}

/// Reason codes of a v5 SUBACK (3.9.3).
pub fn valid_suback(code: u8) -> bool {
    matches!(code, 0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2)
}

/// Return codes of a 3.1/3.1.1 SUBACK.
pub fn valid_suback_v3(code: u8) -> bool {
    matches!(code, 0x00..=0x02 | 0x80)
}

/// Reason codes of a v5 UNSUBACK (3.11.3).
pub fn valid_unsuback(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

/// Reason codes of DISCONNECT (3.14.2.1).
pub fn valid_disconnect(code: u8) -> bool {
    matches!(code, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2)
}

/// Reason codes of AUTH (3.15.2.1).
pub fn valid_auth(code: u8) -> bool {
    matches!(code, 0x00 | 0x18 | 0x19)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connack_mapping() {
        assert_eq!(connack_v5_to_v3(SUCCESS), 0);
        assert_eq!(connack_v5_to_v3(UNSUPPORTED_PROTOCOL_VERSION), 1);
        assert_eq!(connack_v5_to_v3(CLIENT_IDENTIFIER_NOT_VALID), 2);
        assert_eq!(connack_v5_to_v3(SERVER_BUSY), 3);
        assert_eq!(connack_v5_to_v3(BAD_USER_NAME_OR_PASSWORD), 4);
        assert_eq!(connack_v5_to_v3(NOT_AUTHORIZED), 5);
        assert_eq!(connack_v5_to_v3(QUOTA_EXCEEDED), 3);
        for rc in 0..=5 {
            assert_eq!(connack_v5_to_v3(connack_v3_to_v5(rc).unwrap()), rc);
        }
        assert_eq!(connack_v3_to_v5(6), None);
    }
}
