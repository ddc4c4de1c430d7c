//! One test per `DecodeError` variant, from hand-written bytes, plus the few cases that look
//! wrong but are valid (v5 password without user name, empty v5 topic with an alias, ...).

use bytes::BytesMut;

use super::*;
use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Who is decoding: `Srv(v)` = server decoding a client packet (`None` = before CONNECT),
/// `Cli(v)` = client decoding a server packet.
#[derive(Clone, Copy)]
enum Mode {
    Srv(Option<ProtocolVersion>),
    Cli(ProtocolVersion),
}
use Mode::*;

fn hex(s: &str) -> BytesMut {
    let s: String = s.split_whitespace().collect();
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect::<Vec<u8>>();
    BytesMut::from(&bytes[..])
}

fn run(mode: Mode, h: &str, limits: &Limits) -> Result<Option<Packet>, DecodeError> {
    let mut b = hex(h);
    match mode {
        Srv(v) => decode(&mut b, v, limits),
        Cli(v) => decode_from_server(&mut b, v, limits),
    }
}

fn err(mode: Mode, h: &str) -> DecodeError {
    err_l(mode, h, &Limits::default())
}

fn err_l(mode: Mode, h: &str, limits: &Limits) -> DecodeError {
    match run(mode, h, limits) {
        Err(e) => e,
        other => panic!("{h}: expected an error, got {other:?}"),
    }
}

fn ok(mode: Mode, h: &str) -> Packet {
    match run(mode, h, &Limits::default()) {
        Ok(Some(p)) => p,
        other => panic!("{h}: expected a packet, got {other:?}"),
    }
}

const S4: Mode = Srv(Some(V3_1_1));
const S5: Mode = Srv(Some(V5));
const PRE: Mode = Srv(None);

#[test]
fn framing_errors() {
    use DecodeError::*;
    assert_eq!(err(S4, "30 ff ff ff ff 01"), RemainingLengthTooLong);
    assert_eq!(err(S4, "30 ff ff ff ff"), RemainingLengthTooLong);
    let small = Limits { max_packet_size: 10, ..Limits::default() };
    // Refused from the header alone, before the body arrives.
    assert_eq!(err_l(S4, "30 0a", &small), PacketTooLarge { size: 12, max: 10 });
    assert_eq!(err_l(PRE, "10 ff ff 7f", &small), PacketTooLarge { size: 2_097_155, max: 10 });
    assert_eq!(err(PRE, "c0 00"), FirstPacketNotConnect);
    assert_eq!(err(PRE, "30"), FirstPacketNotConnect);
    assert_eq!(err(S4, "10 00"), SecondConnect);
    assert_eq!(err(S4, "00 00"), ReservedPacketType(0));
    assert_eq!(err(S4, "f0 00"), ReservedPacketType(15));
    assert_eq!(err(Srv(Some(V3_1)), "f0 00"), ReservedPacketType(15));
    assert_eq!(err(S4, "80 00"), InvalidFixedHeaderFlags { packet: "SUBSCRIBE" });
    assert_eq!(err(S5, "60 02 00 01"), InvalidFixedHeaderFlags { packet: "PUBREL" });
    assert_eq!(err(S4, "c1 00"), InvalidFixedHeaderFlags { packet: "PINGREQ" });
    assert_eq!(err(S5, "20 03 00 00 00"), ServerOnlyPacket { packet: "CONNACK" });
    assert_eq!(err(S4, "d0 00"), ServerOnlyPacket { packet: "PINGRESP" });
    assert_eq!(err(Cli(V3_1_1), "c0 00"), ClientOnlyPacket { packet: "PINGREQ" });
    assert_eq!(err(S4, "40 01 00"), Truncated);
    assert_eq!(err(S4, "30 03 00 05 61"), Truncated);
    assert_eq!(err(S4, "40 03 00 01 00"), TrailingBytes);
    assert_eq!(err(S4, "c0 01 00"), TrailingBytes);
    assert_eq!(err(S4, "e0 01 00"), TrailingBytes);
    assert_eq!(err(S5, "30 08 00 01 61 ff ff ff ff 01"), VariableByteIntegerTooLong);
}

#[test]
fn publish_errors() {
    use DecodeError::*;
    assert_eq!(err(S4, "36 05 00 01 61 00 01"), InvalidQoS);
    assert_eq!(err(S4, "38 03 00 01 61"), Qos0WithDup);
    assert_eq!(err(S4, "30 03 00 01 23"), TopicNameWildcard);
    assert_eq!(err(S4, "30 05 00 03 61 2b 62"), TopicNameWildcard);
    assert_eq!(err(S4, "30 03 00 01 00"), TopicContainsNull);
    assert_eq!(err(S4, "30 03 00 01 ff"), InvalidUtf8);
    assert_eq!(err(S4, "30 04 00 02 ed a0"), InvalidUtf8); // half of a surrogate
    assert_eq!(err(S4, "30 02 00 00"), EmptyTopic);
    assert_eq!(err(S5, "30 03 00 00 00"), EmptyTopic);
    // Levels are not the decoder's business: 200 levels decode (the session refuses them
    // with a reason code, `topic::check_publish_name`).
    // Remaining length 401 (91 03): topic length 399 (01 8f), 200 levels "a/a/.../a".
    let deep = format!("30 91 03 01 8f {}", ["61"; 200].join(" 2f "));
    assert!(matches!(ok(S4, &deep), Packet::Publish(_)));
    assert_eq!(err(S4, "32 05 00 01 61 00 00"), PacketIdZero);
    assert_eq!(err(S4, "40 02 00 00"), PacketIdZero);
    assert_eq!(err(S5, "30 07 00 01 61 03 23 00 00"), TopicAliasZero);
    assert_eq!(err(S5, "30 06 00 01 61 02 0b 01"), SubscriptionIdInPublish);
    // Server to client, subscription identifiers are fine.
    assert!(matches!(ok(Cli(V5), "30 06 00 01 61 02 0b 01"), Packet::Publish(_)));
    // Control characters are allowed in strings; an empty v5 topic with an alias is fine.
    assert!(matches!(ok(S4, "30 03 00 01 01"), Packet::Publish(_)));
    assert!(matches!(ok(S5, "30 06 00 00 03 23 00 01"), Packet::Publish(_)));
}

#[test]
fn property_errors() {
    use DecodeError::*;
    assert_eq!(err(S5, "30 08 00 01 61 04 01 00 01 00"), DuplicateProperty { id: 0x01 });
    assert_eq!(err(S5, "82 0b 00 01 04 0b 01 0b 02 00 01 61 00"), DuplicateProperty { id: 0x0B });
    assert_eq!(err(S5, "30 06 00 01 61 02 05 00"), UnknownProperty { id: 0x05 });
    assert_eq!(err(S5, "30 06 00 01 61 02 80 01"), UnknownProperty { id: 0x80 });
    assert_eq!(
        err(S5, "30 09 00 01 61 05 11 00 00 00 00"),
        PropertyNotAllowed { id: 0x11, packet: "PUBLISH" }
    );
    assert_eq!(err(S5, "30 06 00 01 61 02 01 02"), InvalidPropertyValue { id: 0x01 });
    assert_eq!(err(S5, "30 09 00 01 61 05 08 00 02 61 23"), InvalidPropertyValue { id: 0x08 });
    // CONNECT with receive maximum 0.
    assert_eq!(
        err(PRE, "10 10 00 04 4d 51 54 54 05 02 00 00 03 21 00 00 00 00"),
        InvalidPropertyValue { id: 0x21 }
    );
    // Property length runs past the packet.
    assert_eq!(err(S5, "30 05 00 01 61 05 01"), Truncated);
    let none = Limits { max_user_properties: 0, ..Limits::default() };
    assert_eq!(err_l(S5, "30 0a 00 01 61 06 26 00 01 6b 00 00", &none), TooManyUserProperties);
    assert_eq!(err(S5, "40 03 00 01 05"), InvalidReasonCode { code: 5, packet: "PUBACK" });
    assert_eq!(err(S5, "e0 01 01"), InvalidReasonCode { code: 1, packet: "DISCONNECT" });
    assert_eq!(err(S5, "f0 01 01"), InvalidReasonCode { code: 1, packet: "AUTH" });
    assert_eq!(err(Cli(V3_1_1), "20 02 00 06"), InvalidReasonCode { code: 6, packet: "CONNACK" });
    assert_eq!(err(Cli(V5), "90 04 00 01 00 03"), InvalidReasonCode { code: 3, packet: "SUBACK" });
    assert_eq!(err(Cli(V3_1_1), "20 02 02 00"), ConnAckReservedFlagSet);
    // MQTT 3.1 has no Session Present: the whole byte is reserved.
    assert_eq!(err(Cli(V3_1), "20 02 01 00"), ConnAckReservedFlagSet);
}

#[test]
fn subscribe_errors() {
    use DecodeError::*;
    assert_eq!(err(S4, "82 02 00 01"), SubscribeNoFilters);
    assert_eq!(err(S4, "a2 02 00 01"), UnsubscribeNoFilters);
    assert_eq!(err(S4, "82 05 00 01 00 00 00"), EmptyTopicFilter);
    assert_eq!(err(S4, "82 06 00 01 00 01 00 00"), NullCharacter);
    assert_eq!(err(S4, "82 06 00 01 00 01 61 04"), SubscribeReservedBitsSet);
    assert_eq!(err(S5, "82 07 00 01 00 00 01 61 40"), SubscribeReservedBitsSet);
    assert_eq!(err(S5, "82 07 00 01 00 00 01 61 30"), InvalidRetainHandling);
    assert_eq!(err(S5, "82 07 00 01 00 00 01 61 03"), SubscribeQos3);
    assert_eq!(err(S4, "82 06 00 00 00 01 61 00"), PacketIdZero);
}

#[test]
fn connect_errors() {
    use DecodeError::*;
    // name "MQTX"
    assert_eq!(err(PRE, "10 0c 00 04 4d 51 54 58 04 02 00 3c 00 00"), InvalidProtocolName);
    assert_eq!(err(PRE, "10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00"), UnsupportedProtocolLevel { level: 6 });
    assert_eq!(err(PRE, "10 0c 00 04 4d 51 54 54 03 02 00 3c 00 00"), UnsupportedProtocolLevel { level: 3 });
    assert_eq!(
        err(PRE, "10 0e 00 06 4d 51 49 73 64 70 04 02 00 3c 00 00"),
        UnsupportedProtocolLevel { level: 4 }
    );
    // Level is reported even when the rest of the packet is garbage.
    assert_eq!(err(PRE, "10 07 00 04 4d 51 54 54 07"), UnsupportedProtocolLevel { level: 7 });
    let c = |flags: &str| format!("10 0c 00 04 4d 51 54 54 04 {flags} 00 3c 00 00");
    assert_eq!(err(PRE, &c("03")), ConnectReservedFlagSet);
    assert_eq!(err(PRE, &c("0a")), WillFlagsWithoutWill);
    assert_eq!(err(PRE, &c("22")), WillFlagsWithoutWill);
    assert_eq!(err(PRE, &c("1e")), WillQos3);
    assert_eq!(err(PRE, &c("00")), EmptyClientIdWithoutCleanSession);
    // Password flag without user name: refused in 3.1.1, allowed in v5.
    assert_eq!(err(PRE, "10 0e 00 04 4d 51 54 54 04 42 00 3c 00 00 00 00"), PasswordWithoutUsername);
    let p = ok(PRE, "10 0f 00 04 4d 51 54 54 05 42 00 3c 00 00 00 00 00");
    let Packet::Connect(c5) = p else { panic!("not CONNECT") };
    assert_eq!((c5.protocol, c5.username.clone(), c5.password.map(|p| p.len())), (V5, None, Some(0)));
    // MQTT 3.1 with a 30-character client id is accepted (lenient, like Mosquitto).
    let mut h = String::from("10 2c 00 06 4d 51 49 73 64 70 03 02 00 3c 00 1e");
    h.push_str(&" 61".repeat(30));
    let Packet::Connect(c3) = ok(PRE, &h) else { panic!("not CONNECT") };
    assert_eq!((c3.protocol, c3.client_id.len()), (V3_1, 30));
    // Will topic with a wildcard.
    assert_eq!(err(PRE, "10 11 00 04 4d 51 54 54 04 06 00 3c 00 00 00 01 23 00 00"), TopicNameWildcard);
}

#[test]
fn reason_codes_and_kinds() {
    use DecodeError::*;
    assert_eq!(RemainingLengthTooLong.reason_code(), reason::MALFORMED_PACKET);
    assert_eq!(PacketTooLarge { size: 1, max: 0 }.reason_code(), reason::PACKET_TOO_LARGE);
    assert_eq!(SecondConnect.reason_code(), reason::PROTOCOL_ERROR);
    assert_eq!(UnsupportedProtocolLevel { level: 9 }.reason_code(), 0x84);
    assert_eq!(EmptyClientIdWithoutCleanSession.reason_code(), 0x85);
    assert_eq!(TopicAliasZero.reason_code(), 0x94);
    assert_eq!(TopicNameWildcard.reason_code(), 0x90);
    assert_eq!(TopicAliasZero.kind(), "topic_alias_zero");
    assert!(RemainingLengthTooLong.to_string().contains("4 bytes"));
}
