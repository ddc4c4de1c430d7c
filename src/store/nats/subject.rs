//! MQTT topic names as NATS subject tokens, one token per topic level, so that the mapping is
//! injective (two topics never share a subject) and every legal topic round-trips.
//!
//! A level becomes a token of `[A-Za-z0-9-]` and escapes: every other byte of the level's
//! UTF-8, `_` included, is written `_XX` (two upper-case hex digits), and an empty level is
//! the token `_`. Tokens never contain `.`, `*`, `>` or whitespace, so NATS wildcards and
//! separators cannot appear by accident: `a/b.c/+x` is `a.b_2Ec._2Bx`, `$SYS/x` is `_24SYS.x`,
//! `a//b` is `a._.b`.

/// Longest subject this node sends: nats-server refuses a protocol line longer than
/// `max_control_line` (4 KiB by default) and closes the connection that sent it.
pub const MAX_SUBJECT: usize = 3072;

/// `prefix` + `.` + the encoded levels of `topic`, or `None` when it would be longer than
/// [`MAX_SUBJECT`].
pub fn encode(prefix: &str, topic: &str) -> Option<String> {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    for level in topic.split('/') {
        out.push('.');
        if level.is_empty() {
            out.push('_');
        }
        for b in level.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' {
                out.push(char::from(b));
            } else {
                out.push('_');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
        }
        if out.len() > MAX_SUBJECT {
            return None;
        }
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The topic of a subject made by [`encode`] with `prefix`; `None` for any other subject.
pub fn decode(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "_" {
            continue;
        }
        let mut t = token.bytes();
        while let Some(b) = t.next() {
            match b {
                b'_' => {
                    let hi = hex_value(t.next()?)?;
                    let lo = hex_value(t.next()?)?;
                    let v = (hi << 4) | lo;
                    // Only the bytes `encode` escapes may come escaped: one spelling per topic.
                    if v.is_ascii_alphanumeric() || v == b'-' {
                        return None;
                    }
                    bytes.push(v);
                }
                b if b.is_ascii_alphanumeric() || b == b'-' => bytes.push(b),
                _ => return None,
            }
        }
        if token.is_empty() {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(encode("p", "a/b.c/+x").as_deref(), Some("p.a.b_2Ec._2Bx"));
        assert_eq!(encode("p", "$SYS/x").as_deref(), Some("p._24SYS.x"));
        assert_eq!(encode("p", "a//b").as_deref(), Some("p.a._.b"));
        assert_eq!(encode("p", "/").as_deref(), Some("p._._"));
        assert_eq!(encode("p", "a b/*/>").as_deref(), Some("p.a_20b._2A._3E"));
        assert_eq!(encode("p", "snake_case").as_deref(), Some("p.snake_5Fcase"));
    }

    #[test]
    fn refuses_foreign_and_non_canonical_subjects() {
        for s in ["q.a", "p", "p.", "p.a..b", "p.a_4", "p.a_zz", "p.a*", "p._41", "p.a b"] {
            assert_eq!(decode("p", s), None, "{s}");
        }
    }

    #[test]
    fn too_long_is_refused() {
        assert!(encode("p", &"a".repeat(MAX_SUBJECT)).is_none());
        assert!(encode("p", &"a".repeat(100)).is_some());
    }

    /// Random topics over an alphabet of every troublesome character round-trip, and distinct
    /// topics get distinct subjects made only of safe characters.
    #[test]
    fn round_trips_and_is_injective() {
        use rand::Rng;
        let alphabet = ['a', 'Z', '0', '/', '.', '*', '>', ' ', '_', '-', '$', '#', '+', '%', 'é', '☃', '\t'];
        let mut rng = rand::rng();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let len = rng.random_range(0..12);
            let topic: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let subject = encode("dataloom.m", &topic).expect("short topic");
            assert!(
                subject.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{topic:?} -> {subject}"
            );
            assert!(subject.split('.').all(|t| !t.is_empty()), "{subject}");
            assert_eq!(decode("dataloom.m", &subject).as_deref(), Some(topic.as_str()));
            if let Some(other) = seen.insert(subject.clone(), topic.clone()) {
                assert_eq!(other, topic, "two topics share {subject}");
            }
        }
    }
}
