//! Deterministic fuzz smoke test (the in-tree stand-in for `fuzz/`): ~200k pseudo-random and
//! mutated valid byte strings go through every decoder mode; decoding must never panic, and
//! every packet that decodes must survive encode -> decode unchanged.

use bytes::BytesMut;

use super::tests::{VERSIONS, decode_as, samples};
use super::*;

/// xorshift64*: tiny, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// (version, decoded by a client?, before CONNECT?)
type Mode = (ProtocolVersion, bool, bool);

const MODES: [Mode; 7] = [
    (ProtocolVersion::V5, false, true),
    (ProtocolVersion::V3_1, false, false),
    (ProtocolVersion::V3_1_1, false, false),
    (ProtocolVersion::V5, false, false),
    (ProtocolVersion::V3_1, true, false),
    (ProtocolVersion::V3_1_1, true, false),
    (ProtocolVersion::V5, true, false),
];

/// Decodes up to 4 packets from `input`; returns how many round-tripped.
fn check(input: &[u8], (v, from_server, connect): Mode) -> usize {
    let mut buf = BytesMut::from(input);
    for n in 0..4 {
        let Ok(Some(p)) = decode_as(&mut buf, v, from_server, connect) else {
            return n;
        };
        let ev = match &p {
            Packet::Connect(c) => c.protocol,
            _ => v,
        };
        let mut out = BytesMut::new();
        encode(&p, ev, &mut out);
        let again = decode_as(&mut out, ev, from_server, connect);
        assert_eq!(again, Ok(Some(p)), "round trip of {input:02x?} in {v:?}");
        assert!(out.is_empty(), "encoder wrote more than one packet for {input:02x?}");
    }
    4
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] = rng.byte();
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            2 => b.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                b.insert(i, rng.byte());
            }
            4 if len > 0 => {
                let i = rng.below(len);
                b[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            5 if len > 1 => {
                let i = rng.below(len);
                b.remove(i);
            }
            _ => {
                // Rewrite the first byte: another packet type or flags on the same body.
                if let Some(first) = b.first_mut() {
                    *first = (rng.byte() & 0xF0) | (rng.byte() & 0x0F);
                }
            }
        }
    }
    b
}

#[test]
fn fuzz_smoke() {
    let mut seeds = Vec::new();
    for v in VERSIONS {
        for (p, _) in samples(v) {
            let mut b = BytesMut::new();
            encode(&p, v, &mut b);
            seeds.push(b.to_vec());
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0usize;
    for i in 0..200_000 {
        let input = if i % 4 == 0 {
            let n = rng.below(40);
            let mut b: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            if let Some(first) = b.first_mut() {
                *first &= 0xF3; // bias towards plausible flags
            }
            b
        } else {
            let s = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, s)
        };
        for mode in MODES {
            decoded += check(&input, mode);
        }
    }
    // The mutations must still produce valid packets often enough to exercise the encoder.
    assert!(decoded > 50_000, "only {decoded} inputs decoded");
}
