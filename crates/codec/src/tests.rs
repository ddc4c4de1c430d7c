//! Codec tests: sample packets of every type (with every property in v5), encode/decode round
//! trips for every version, and the `Ok(None)` behaviour for every prefix of a packet.

use bytes::{Bytes, BytesMut};

use super::*;

pub(crate) const VERSIONS: [ProtocolVersion; 3] =
    [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

fn up() -> Vec<(String, String)> {
    vec![("k".into(), "v".into()), ("k".into(), "v2".into())]
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// Sample packets for `v`; v5 samples carry every property their packet allows.
/// The bool says whether a server sent it (PUBLISH exists both ways).
pub(crate) fn samples(v: ProtocolVersion) -> Vec<(Packet, bool)> {
    let v5 = v.is_v5();
    let pick = |p: Properties| if v5 { p } else { Properties::default() };
    let connect_props = Properties {
        session_expiry_interval: Some(3600),
        authentication_method: s("SCRAM"),
        authentication_data: Some(Bytes::from_static(b"\x00\x01")),
        request_problem_information: Some(1),
        request_response_information: Some(0),
        receive_maximum: Some(10),
        topic_alias_maximum: Some(5),
        user_properties: up(),
        maximum_packet_size: Some(65536),
        ..Default::default()
    };
    let will_props = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: s("text/plain"),
        response_topic: s("resp/t"),
        correlation_data: Some(Bytes::from_static(b"cd")),
        will_delay_interval: Some(10),
        user_properties: up(),
        ..Default::default()
    };
    let connack_props = Properties {
        session_expiry_interval: Some(0),
        assigned_client_identifier: s("auto-1"),
        server_keep_alive: Some(30),
        authentication_method: s("SCRAM"),
        authentication_data: Some(Bytes::from_static(b"x")),
        response_information: s("ri"),
        server_reference: s("other:1883"),
        reason_string: s("ok"),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(10),
        maximum_qos: Some(1),
        retain_available: Some(1),
        user_properties: up(),
        maximum_packet_size: Some(1 << 20),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(0),
        shared_subscription_available: Some(1),
        ..Default::default()
    };
    let pub_props = Properties {
        payload_format_indicator: Some(0),
        message_expiry_interval: Some(5),
        content_type: s("application/json"),
        response_topic: s("r/1"),
        correlation_data: Some(Bytes::from_static(b"\xff")),
        topic_alias: Some(3),
        user_properties: up(),
        ..Default::default()
    };
    let server_pub_props = Properties { subscription_identifiers: vec![1, 268_435_455], ..pub_props.clone() };
    let reason_props = Properties { reason_string: s("why"), user_properties: up(), ..Default::default() };
    let ack =
        |pkid, code| Ack { pkid, code: if v5 { code } else { 0 }, properties: pick(reason_props.clone()) };
    let plain_ack = |pkid| Ack { pkid, code: 0, properties: Properties::default() };
    let sub_props =
        Properties { subscription_identifiers: vec![77], user_properties: up(), ..Default::default() };
    let filter = |f: &str, qos, rh| SubscribeFilter {
        filter: f.into(),
        qos,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 { rh } else { RetainHandling::OnSubscribe },
    };
    let mut out = vec![
        (
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start: true,
                keep_alive: 60,
                client_id: "client-ä".into(),
                will: Some(LastWill {
                    topic: Bytes::from_static(b"will/topic"),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: pick(will_props),
                }),
                username: s("user"),
                password: Some(Bytes::from_static(b"\x00pw")),
                properties: pick(connect_props),
            })),
            false,
        ),
        (
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start: false,
                keep_alive: 0,
                client_id: "c".into(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            })),
            false,
        ),
        (
            // MQTT 3.1 has no Session Present (the byte is reserved).
            Packet::ConnAck(ConnAck {
                session_present: v != ProtocolVersion::V3_1,
                code: 0,
                properties: pick(connack_props),
            }),
            true,
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: reason::NOT_AUTHORIZED,
                properties: Properties::default(),
            }),
            true,
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: Bytes::from_static(if v5 { b"" } else { b"a/b" }),
                pkid: 7,
                properties: pick(pub_props),
                payload: Bytes::from_static(b"{\"x\":1}"),
            }),
            false,
        ),
        (
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Bytes::from_static(b"s/t"),
                pkid: 0,
                properties: pick(server_pub_props),
                payload: Bytes::from(vec![0u8; 300]),
            }),
            true,
        ),
        (Packet::PubAck(ack(1, reason::NO_MATCHING_SUBSCRIBERS)), false),
        (Packet::PubAck(plain_ack(2)), true),
        (Packet::PubRec(ack(3, reason::QUOTA_EXCEEDED)), true),
        (Packet::PubRel(ack(4, reason::PACKET_IDENTIFIER_NOT_FOUND)), false),
        (Packet::PubComp(plain_ack(65535)), false),
        (
            Packet::Subscribe(Subscribe {
                pkid: 9,
                filters: vec![
                    filter("a/+/c", QoS::AtLeastOnce, RetainHandling::Never),
                    filter("$share/g/#", QoS::ExactlyOnce, RetainHandling::OnNewSubscribe),
                ],
                properties: pick(sub_props),
            }),
            false,
        ),
        (
            Packet::SubAck(SubAck {
                pkid: 9,
                codes: vec![0, 1, 2, 0x80],
                properties: pick(reason_props.clone()),
            }),
            true,
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                pkid: 10,
                filters: vec!["a/#".into(), "b".into()],
                properties: pick(Properties { user_properties: up(), ..Default::default() }),
            }),
            false,
        ),
        (
            Packet::UnsubAck(UnsubAck {
                pkid: 10,
                codes: if v5 { vec![0, 0x11] } else { vec![] },
                properties: pick(reason_props.clone()),
            }),
            true,
        ),
        (Packet::PingReq, false),
        (Packet::PingResp, true),
        (Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() }), false),
    ];
    if v5 {
        let disconnect_props =
            Properties { session_expiry_interval: Some(0), server_reference: s("x"), ..reason_props.clone() };
        let auth_props = Properties {
            authentication_method: s("SCRAM"),
            authentication_data: Some(Bytes::from_static(b"d")),
            ..reason_props.clone()
        };
        out.extend([
            (Packet::Disconnect(Disconnect { code: 0x04, properties: Properties::default() }), false),
            (Packet::Disconnect(Disconnect { code: 0x8B, properties: disconnect_props }), true),
            (Packet::Auth(Auth { code: 0, properties: Properties::default() }), false),
            (Packet::Auth(Auth { code: reason::CONTINUE_AUTHENTICATION, properties: auth_props }), true),
        ]);
    }
    out
}

/// Decodes one packet the way its receiver would.
pub(crate) fn decode_as(
    buf: &mut BytesMut,
    v: ProtocolVersion,
    from_server: bool,
    connect: bool,
) -> Result<Option<Packet>, DecodeError> {
    let limits = Limits::default();
    if from_server {
        decode_from_server(buf, v, &limits)
    } else if connect {
        decode(buf, None, &limits)
    } else {
        decode(buf, Some(v), &limits)
    }
}

fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    encode(p, v, &mut b);
    b
}

#[test]
fn round_trip_every_packet_every_version() {
    for v in VERSIONS {
        for (p, from_server) in samples(v) {
            let mut buf = enc(&p, v);
            buf.extend_from_slice(b"\xc0"); // start of a next packet must stay in the buffer
            let connect = matches!(p, Packet::Connect(_));
            let got = decode_as(&mut buf, v, from_server, connect);
            assert_eq!(got, Ok(Some(p.clone())), "{v:?} {}", p.name());
            assert_eq!(&buf[..], b"\xc0");
        }
    }
}

/// Identifiers of the properties set in `p`.
fn set_ids(p: &Properties) -> Vec<u8> {
    let opt = [
        (p.payload_format_indicator.is_some(), 0x01),
        (p.message_expiry_interval.is_some(), 0x02),
        (p.content_type.is_some(), 0x03),
        (p.response_topic.is_some(), 0x08),
        (p.correlation_data.is_some(), 0x09),
        (!p.subscription_identifiers.is_empty(), 0x0B),
        (p.session_expiry_interval.is_some(), 0x11),
        (p.assigned_client_identifier.is_some(), 0x12),
        (p.server_keep_alive.is_some(), 0x13),
        (p.authentication_method.is_some(), 0x15),
        (p.authentication_data.is_some(), 0x16),
        (p.request_problem_information.is_some(), 0x17),
        (p.will_delay_interval.is_some(), 0x18),
        (p.request_response_information.is_some(), 0x19),
        (p.response_information.is_some(), 0x1A),
        (p.server_reference.is_some(), 0x1C),
        (p.reason_string.is_some(), 0x1F),
        (p.receive_maximum.is_some(), 0x21),
        (p.topic_alias_maximum.is_some(), 0x22),
        (p.topic_alias.is_some(), 0x23),
        (p.maximum_qos.is_some(), 0x24),
        (p.retain_available.is_some(), 0x25),
        (!p.user_properties.is_empty(), 0x26),
        (p.maximum_packet_size.is_some(), 0x27),
        (p.wildcard_subscription_available.is_some(), 0x28),
        (p.subscription_identifier_available.is_some(), 0x29),
        (p.shared_subscription_available.is_some(), 0x2A),
    ];
    opt.iter().filter(|x| x.0).map(|x| x.1).collect()
}

#[test]
fn samples_cover_every_property() {
    let mut ids = std::collections::BTreeSet::new();
    for (p, _) in samples(ProtocolVersion::V5) {
        let props: Vec<&Properties> = match &p {
            Packet::Connect(c) => {
                let mut v = vec![&c.properties];
                v.extend(c.will.as_ref().map(|w| &w.properties));
                v
            }
            Packet::ConnAck(c) => vec![&c.properties],
            Packet::Publish(x) => vec![&x.properties],
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                vec![&a.properties]
            }
            Packet::Subscribe(x) => vec![&x.properties],
            Packet::SubAck(x) => vec![&x.properties],
            Packet::Unsubscribe(x) => vec![&x.properties],
            Packet::UnsubAck(x) => vec![&x.properties],
            Packet::Disconnect(x) => vec![&x.properties],
            Packet::Auth(x) => vec![&x.properties],
            Packet::PingReq | Packet::PingResp => vec![],
        };
        for pr in props {
            ids.extend(set_ids(pr));
        }
    }
    assert_eq!(ids.len(), 27, "{ids:?}");
}

#[test]
fn every_prefix_needs_more_bytes() {
    for v in VERSIONS {
        for (p, from_server) in samples(v).into_iter().filter(|(p, _)| {
            matches!(p, Packet::Connect(_) | Packet::Publish(_) | Packet::Subscribe(_) | Packet::PubAck(_))
        }) {
            let full = enc(&p, v);
            let connect = matches!(p, Packet::Connect(_));
            for n in 0..full.len() {
                let mut buf = BytesMut::from(&full[..n]);
                assert_eq!(decode_as(&mut buf, v, from_server, connect), Ok(None), "{v:?} {} {n}", p.name());
                assert_eq!(&buf[..], &full[..n], "buffer must be untouched");
            }
        }
    }
}

#[test]
fn v3_acks_and_short_forms() {
    let v5 = ProtocolVersion::V5;
    let a = Packet::PubAck(Ack { pkid: 5, code: 0, properties: Properties::default() });
    assert_eq!(&enc(&a, v5)[..], b"\x40\x02\x00\x05");
    assert_eq!(&enc(&a, ProtocolVersion::V3_1_1)[..], b"\x40\x02\x00\x05");
    let a = Packet::PubAck(Ack { pkid: 5, code: 0x10, properties: Properties::default() });
    assert_eq!(&enc(&a, v5)[..], b"\x40\x03\x00\x05\x10");
    let d = Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() });
    assert_eq!(&enc(&d, v5)[..], b"\xe0\x00");
    let d = Packet::Disconnect(Disconnect { code: 0x8E, properties: Properties::default() });
    assert_eq!(&enc(&d, ProtocolVersion::V3_1_1)[..], b"\xe0\x00");
    let c =
        Packet::ConnAck(ConnAck { session_present: false, code: 0x86, properties: Properties::default() });
    assert_eq!(&enc(&c, ProtocolVersion::V3_1_1)[..], b"\x20\x02\x00\x04");
    let c = Packet::ConnAck(ConnAck { session_present: true, code: 0, properties: Properties::default() });
    assert_eq!(&enc(&c, ProtocolVersion::V3_1_1)[..], b"\x20\x02\x01\x00");
    assert_eq!(
        &enc(&c, ProtocolVersion::V3_1)[..],
        b"\x20\x02\x00\x00",
        "3.1: reserved byte, no Session Present"
    );
    let s = Packet::SubAck(SubAck { pkid: 1, codes: vec![1, 0x87], properties: Properties::default() });
    assert_eq!(&enc(&s, ProtocolVersion::V3_1_1)[..], b"\x90\x04\x00\x01\x01\x80");
    // Long forms decode too: PUBACK with code 0 and empty properties, DISCONNECT/AUTH of length 0.
    let mut b = BytesMut::from(&b"\x40\x04\x00\x05\x00\x00"[..]);
    let want = Packet::PubAck(Ack { pkid: 5, code: 0, properties: Properties::default() });
    assert_eq!(decode(&mut b, Some(v5), &Limits::default()), Ok(Some(want)));
    let mut b = BytesMut::from(&b"\xf0\x00"[..]);
    let want = Packet::Auth(Auth { code: 0, properties: Properties::default() });
    assert_eq!(decode(&mut b, Some(v5), &Limits::default()), Ok(Some(want)));
}

#[test]
fn publish_payload_is_zero_copy_and_large_lengths_work() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(b"t"),
        pkid: 1,
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; 200_000]),
    };
    let mut buf = BytesMut::new();
    encode_publish(&p, ProtocolVersion::V3_1_1, &mut buf);
    assert_eq!(&buf[..4], b"\x32\xc5\x9a\x0c"); // 200_005 as a 3-byte remaining length
    let base = buf.as_ptr() as usize;
    let got = decode(&mut buf, Some(ProtocolVersion::V3_1_1), &Limits::default()).unwrap().unwrap();
    let Packet::Publish(got) = got else { panic!("not a publish") };
    assert_eq!(got.payload.as_ptr() as usize, base + 9);
    assert_eq!(got, p);
}

/// The borrowed encoder of server-sent PUBLISH writes the same bytes as encoding a `Publish`
/// whose properties were cloned and given the per-delivery ones, for 3.1.1 and 5.0, and leaves
/// out what a message's properties may not forward.
#[test]
fn outgoing_publish_encodes_like_a_cloned_publish() {
    let forwarded = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..Properties::default()
    };
    let per_delivery = Properties {
        message_expiry_interval: Some(30),
        subscription_identifiers: vec![7, 300],
        topic_alias: Some(2),
        ..forwarded.clone()
    };
    let with_extra = Properties {
        reason_string: Some("never forwarded".into()),
        subscription_identifiers: vec![99],
        ..forwarded.clone()
    };
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let cloned = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: Bytes::from_static(b"a/b"),
            pkid: 513,
            properties: per_delivery.clone(),
            payload: Bytes::from_static(b"{\"x\":1}"),
        };
        let mut want = BytesMut::new();
        encode_publish(&cloned, version, &mut want);
        let borrowed = OutgoingPublish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: b"a/b",
            pkid: 513,
            forwarded: &with_extra,
            subscription_identifiers: &[7, 300],
            message_expiry_interval: Some(30),
            topic_alias: Some(2),
            payload: b"{\"x\":1}",
        };
        let mut got = BytesMut::new();
        encode_outgoing_publish(&borrowed, version, &mut got);
        assert_eq!(got, want, "{version:?}");
    }
}
