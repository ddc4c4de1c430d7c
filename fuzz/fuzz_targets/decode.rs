//! cargo-fuzz target: decodes arbitrary bytes in every decoder mode (before CONNECT, server side
//! for 3.1/3.1.1/5, client side for 3.1/3.1.1/5); every packet that decodes is re-encoded and
//! must decode to the same value. Run with `cargo +nightly fuzz run decode` from the repo root.
#![no_main]

use bytes::BytesMut;
use dataloom_codec::{Limits, Packet, ProtocolVersion, decode, decode_from_server, encode};
use libfuzzer_sys::fuzz_target;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn run(data: &[u8], version: Option<ProtocolVersion>, from_server: bool) {
    let limits = Limits::default();
    let dec = |buf: &mut BytesMut, v: Option<ProtocolVersion>| match (from_server, v) {
        (true, Some(v)) => decode_from_server(buf, v, &limits),
        _ => decode(buf, v, &limits),
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = dec(&mut buf, version) {
        let ev = match (&packet, version) {
            (Packet::Connect(c), _) => c.protocol,
            (_, Some(v)) => v,
            (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
        };
        let mut out = BytesMut::new();
        encode(&packet, ev, &mut out);
        let again = dec(&mut out, version);
        assert_eq!(again, Ok(Some(packet)));
        assert!(out.is_empty());
        if version.is_none() {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    run(data, None, false);
    for v in VERSIONS {
        run(data, Some(v), false);
        run(data, Some(v), true);
    }
});
