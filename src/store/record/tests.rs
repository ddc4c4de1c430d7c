//! Tests of the record encoding: round trips, expiry across a restart, truncation, unknown
//! versions and random garbage.

use super::*;

fn clock() -> Clock {
    Clock::now()
}

fn full_message(clock: &Clock) -> Message {
    Message {
        topic: "sensors/a/temp".into(),
        topic_bytes: Bytes::from_static(b"sensors/a/temp"),
        payload: Bytes::from_static(b"{\"t\":21.5}"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: Properties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "ü".into())],
            ..Properties::default()
        },
        expires_at: Some(clock.instant + Duration::from_secs(3600)),
        publisher: Some(7),
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    }
}

fn minimal_message() -> Message {
    Message {
        topic: "t".into(),
        topic_bytes: Bytes::from_static(b"t"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        publisher: None,
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    }
}

fn assert_same(a: &Message, b: &Message, clock: &Clock) {
    assert_eq!(a.topic, b.topic);
    assert_eq!(a.topic_bytes, b.topic_bytes);
    assert_eq!(a.payload, b.payload);
    assert_eq!(a.qos, b.qos);
    assert_eq!(a.retain, b.retain);
    let p = &a.properties;
    let q = &b.properties;
    assert_eq!(p.payload_format_indicator, q.payload_format_indicator);
    assert_eq!(p.content_type, q.content_type);
    assert_eq!(p.response_topic, q.response_topic);
    assert_eq!(p.correlation_data, q.correlation_data);
    assert_eq!(p.user_properties, q.user_properties);
    match (a.expires_at, b.expires_at) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            let diff = if x > y { x - y } else { y - x };
            assert!(diff <= Duration::from_millis(2), "expiry drifted by {diff:?}");
            assert_eq!(a.remaining_expiry(clock.instant), b.remaining_expiry(clock.instant));
        }
        other => panic!("expiry mismatch: {other:?}"),
    }
}

#[test]
fn message_round_trips_with_every_property() {
    let c = clock();
    let m = full_message(&c);
    let back = decode_message(Bytes::from(encode_message(&m, &c)), &c).unwrap();
    assert_same(&m, &back, &c);
    assert_eq!(back.publisher, None);
    assert_eq!(back.properties.message_expiry_interval, Some(3600));
}

#[test]
fn retained_record_keeps_its_stamp_and_v1_records_read_with_none() {
    let c = clock();
    let mut m = full_message(&c);
    m.stamp = crate::model::Stamp { revision: 1 << 40, unix_ms: 1_790_000_000_123 };
    let record = encode_message(&m, &c);
    assert_eq!(record[0], RETAINED_V2);
    assert_eq!(decode_message(Bytes::from(record.clone()), &c).unwrap().stamp, m.stamp);
    // A v1 record is the v2 one without the two numbers (one byte each when zero).
    let unstamped = encode_message(&Message { stamp: crate::model::Stamp::default(), ..m.clone() }, &c);
    let mut v1 = vec![RECORD_V1];
    v1.extend_from_slice(&unstamped[3..]);
    let old = decode_message(Bytes::from(v1), &c).unwrap();
    assert_same(&m, &old, &c);
    assert_eq!(old.stamp, crate::model::Stamp::default());
    assert_eq!(
        decode_message(Bytes::from(record[..3].to_vec()), &c).unwrap_err(),
        RecordError::Truncated("revision")
    );
}

#[test]
fn minimal_message_round_trips_and_is_compact() {
    let c = clock();
    let m = minimal_message();
    let rec = encode_message(&m, &c);
    assert_eq!(
        rec.len(),
        1 + 2 + 1 + 2 + 1 + 1,
        "version, zero stamp, flags, topic, no user properties, payload"
    );
    let back = decode_message(Bytes::from(rec), &c).unwrap();
    assert_same(&m, &back, &c);
    assert_eq!(back.properties.message_expiry_interval, None);
}

#[test]
fn expiry_survives_as_wall_clock_and_past_expiry_decodes_expired() {
    let c = clock();
    let mut m = minimal_message();
    m.expires_at = Some(c.instant + Duration::from_secs(10));
    let rec = encode_message(&m, &c);
    // "Restart" 20 s later: the wall clock moved on, the monotonic clock restarted.
    let later = Clock { instant: Instant::now(), unix_ms: c.unix_ms + 20_000 };
    let back = decode_message(Bytes::from(rec.clone()), &later).unwrap();
    assert!(back.is_expired(later.instant));
    // 5 s later it still has about 5 s left.
    let sooner = Clock { instant: Instant::now(), unix_ms: c.unix_ms + 5_000 };
    let back = decode_message(Bytes::from(rec), &sooner).unwrap();
    assert!(!back.is_expired(sooner.instant));
    assert_eq!(back.remaining_expiry(sooner.instant), Some(5));
}

#[test]
fn delivery_and_queued_round_trip() {
    let c = clock();
    let d = Delivery {
        msg: Arc::new(full_message(&c)),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: vec![1, 268_435_455],
        seq: Some(4),
        share: None,
        snapshot: false,
    };
    let back = decode_delivery(Bytes::from(encode_delivery(&d, &c)), &c).unwrap();
    assert_same(&d.msg, &back.msg, &c);
    assert_eq!((back.qos, back.retain, back.sub_ids.clone()), (d.qos, d.retain, d.sub_ids.clone()));

    for inflight in [None, Some((1, false)), Some((65535, true))] {
        let rec = encode_queued(&d, inflight, &c);
        let (back, got) = decode_queued(Bytes::from(rec.clone()), &c).unwrap();
        assert_eq!(got, inflight);
        assert_same(&d.msg, &back.msg, &c);
        assert_eq!(back.sub_ids, d.sub_ids);
        let patched = set_queued_inflight(&rec, Some((42, true))).unwrap();
        let (_, got) = decode_queued(Bytes::from(patched), &c).unwrap();
        assert_eq!(got, Some((42, true)));
    }
}

#[test]
fn session_round_trips_every_option() {
    let mut subs = Vec::new();
    for (i, rh) in [RetainHandling::OnSubscribe, RetainHandling::OnNewSubscribe, RetainHandling::Never]
        .into_iter()
        .enumerate()
    {
        for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            subs.push((
                format!("$share/g/a/{i}/+/#"),
                SubOptions {
                    qos: q,
                    no_local: i == 1,
                    retain_as_published: i != 1,
                    retain_handling: rh,
                    sub_id: (i > 0).then_some(i as u32 * 1000),
                },
            ));
        }
    }
    let s = SessionRecord {
        client_id: "c1".into(),
        expiry: u32::MAX,
        subscriptions: subs,
        owner: Some(SessionOwner::Key("dev-key".into())),
        offline_since: Some(1_790_000_000_123),
    };
    let back = decode_session("c1".into(), Bytes::from(encode_session(&s))).unwrap();
    assert_eq!(back, s);
    let empty = SessionRecord {
        client_id: "c".into(),
        expiry: 0,
        subscriptions: vec![],
        owner: None,
        offline_since: None,
    };
    assert_eq!(decode_session("c".into(), Bytes::from(encode_session(&empty))).unwrap(), empty);
}

#[test]
fn unknown_version_and_empty_records_are_refused() {
    let c = clock();
    assert_eq!(decode_message(Bytes::new(), &c).unwrap_err(), RecordError::Empty);
    let mut rec = encode_message(&minimal_message(), &c);
    rec[0] = 9;
    assert_eq!(decode_message(Bytes::from(rec.clone()), &c).unwrap_err(), RecordError::Version(9));
    assert_eq!(set_queued_inflight(&rec, None).unwrap_err(), RecordError::Version(9));
    assert_eq!(
        set_queued_inflight(&[RECORD_V1, 0], None).unwrap_err(),
        RecordError::Truncated("in-flight state")
    );
}

#[test]
fn every_truncation_and_trailing_garbage_is_an_error() {
    let c = clock();
    let d = Delivery {
        msg: Arc::new(full_message(&c)),
        qos: QoS::ExactlyOnce,
        retain: true,
        sub_ids: vec![5],
        seq: None,
        share: None,
        snapshot: false,
    };
    let s = SessionRecord {
        client_id: "c".into(),
        expiry: 30,
        owner: Some(SessionOwner::Key("k".into())),
        offline_since: Some(7),
        subscriptions: vec![(
            "a/#".into(),
            SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
                sub_id: Some(3),
            },
        )],
    };
    let msg = encode_message(&d.msg, &c);
    let queued = encode_queued(&d, Some((9, false)), &c);
    let session = encode_session(&s);
    for len in 0..msg.len() {
        assert!(decode_message(Bytes::copy_from_slice(&msg[..len]), &c).is_err(), "message cut at {len}");
    }
    for len in 0..queued.len() {
        assert!(decode_queued(Bytes::copy_from_slice(&queued[..len]), &c).is_err(), "queued cut at {len}");
    }
    for len in 0..session.len() {
        assert!(
            decode_session("c".into(), Bytes::copy_from_slice(&session[..len])).is_err(),
            "session cut at {len}"
        );
    }
    let mut long = msg.clone();
    long.push(0);
    assert_eq!(decode_message(Bytes::from(long), &c).unwrap_err(), RecordError::Trailing(1));
}

#[test]
fn garbage_never_panics() {
    let c = clock();
    // A small deterministic generator: no dependency, reproducible failures.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let templates = [
        encode_message(&full_message(&c), &c),
        encode_session(&SessionRecord {
            client_id: "c".into(),
            expiry: 1,
            owner: Some(SessionOwner::Anonymous),
            offline_since: None,
            subscriptions: vec![(
                "a".into(),
                SubOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnSubscribe,
                    sub_id: Some(1),
                },
            )],
        }),
    ];
    for i in 0..20_000u32 {
        let mut rec: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 64) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut t = templates[(i as usize / 2) % 2].clone();
            for _ in 0..(1 + next() % 3) {
                if !t.is_empty() {
                    let at = (next() as usize) % t.len();
                    t[at] = next() as u8;
                }
            }
            t
        };
        if i % 3 == 0 && !rec.is_empty() {
            rec[0] = RECORD_V1;
        }
        let b = Bytes::from(rec.clone());
        let _ = decode_message(b.clone(), &c);
        let _ = decode_delivery(b.clone(), &c);
        let _ = decode_queued(b.clone(), &c);
        let _ = decode_session("c".into(), b);
        let _ = set_queued_inflight(&rec, Some((1, true)));
    }
    // Huge declared lengths and counts fail without allocating them.
    let huge = [RECORD_V1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(decode_message(Bytes::copy_from_slice(&huge), &c).is_err());
    let overlong = [RECORD_V1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(decode_message(Bytes::copy_from_slice(&overlong), &c).is_err());
    let many_subs = [RECORD_V1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(decode_session("c".into(), Bytes::copy_from_slice(&many_subs)).is_err());
}

#[test]
fn a_v1_session_record_reads_without_owner_or_offline_time() {
    // v1 as written before issue 13: version, expiry, one subscription "a/#" QoS 1.
    let mut v1 = vec![RECORD_V1, 0, 0, 0, 60, 1, 3];
    v1.extend_from_slice(b"a/#");
    v1.push(1);
    let s = decode_session("old".into(), Bytes::from(v1)).unwrap();
    assert_eq!((s.expiry, s.owner, s.offline_since), (60, None, None));
    assert_eq!(s.subscriptions.len(), 1);
    assert_eq!(s.subscriptions[0].0, "a/#");
}

#[test]
fn session_owners_round_trip() {
    for owner in [
        None,
        Some(SessionOwner::Unrestricted),
        Some(SessionOwner::Anonymous),
        Some(SessionOwner::Key("k1".into())),
    ] {
        let s = SessionRecord {
            client_id: "c".into(),
            expiry: 5,
            subscriptions: vec![],
            owner,
            offline_since: None,
        };
        assert_eq!(decode_session("c".into(), Bytes::from(encode_session(&s))).unwrap(), s);
    }
    let mut bad = encode_session(&SessionRecord {
        client_id: "c".into(),
        expiry: 5,
        subscriptions: vec![],
        owner: None,
        offline_since: None,
    });
    bad[13] = 9;
    assert_eq!(
        decode_session("c".into(), Bytes::from(bad)).unwrap_err(),
        RecordError::Invalid("session owner")
    );
}
