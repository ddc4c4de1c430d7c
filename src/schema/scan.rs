//! The fast path of [`Tape::parse`](super::tape::Tape::parse): a strict scanner for the
//! common shape of device payloads (strings without escapes, plain numbers, shallow nesting)
//! that writes the tape without `serde`'s per-value visitor calls. The payload is checked
//! as UTF-8 once, up front, so strings and numbers are slices of it without further checks.
//!
//! It never decides anything on its own: whenever a document strays from that shape, or is
//! not JSON at all, it returns `None` and `serde_json` parses the document instead (and
//! reports the error). Every value is exactly the one `serde_json` would make (floats are
//! correctly rounded on both paths); a differential test checks the two agree.

use std::borrow::Cow;

use serde_json::Number;

use super::digits;
use super::tape::{self, KeyFilter, Slot, Slots};

/// Deepest nesting scanned (`serde_json` allows 128; deeper documents take its path).
const MAX_DEPTH: usize = 64;

/// Scans `bytes` into `slots` (empty on entry); `None` when `serde_json` must decide.
pub fn scan<'a>(bytes: &'a [u8], slots: &mut Slots<'a>) -> Option<()> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut s = Scanner { text, b: bytes, i: 0, slots };
    s.value(0)?;
    s.ws();
    (s.i == bytes.len()).then_some(())
}

struct Scanner<'a, 's> {
    /// The payload, known to be UTF-8.
    text: &'a str,
    /// `text`'s bytes.
    b: &'a [u8],
    i: usize,
    slots: &'s mut Slots<'a>,
}

impl<'a> Scanner<'a, '_> {
    fn ws(&mut self) {
        // Every JSON token starts above b' ': one comparison for the usual, compact case.
        while let Some(&c) = self.b.get(self.i) {
            if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.i += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) != Some(&c) {
            self.ws();
        }
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.ws();
        let slot = match *self.b.get(self.i)? {
            b'{' if depth < MAX_DEPTH => return self.object(depth + 1),
            b'[' if depth < MAX_DEPTH => return self.array(depth + 1),
            b'"' => Slot::String(Cow::Borrowed(self.string()?)),
            b't' => self.word(b"true", Slot::Bool(true))?,
            b'f' => self.word(b"false", Slot::Bool(false))?,
            b'n' => self.word(b"null", Slot::Null)?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        };
        self.slots.push(slot);
        Some(())
    }

    fn word(&mut self, w: &[u8], slot: Slot<'a>) -> Option<Slot<'a>> {
        self.b[self.i..].starts_with(w).then(|| {
            self.i += w.len();
            slot
        })
    }

    /// A string without escapes or control characters (the opening quote is at `self.i`).
    /// Both ends are ASCII quotes, so the slice is on character boundaries.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i + 1;
        let len = self.b.get(start..)?.iter().position(|&c| c < b' ' || c == b'"' || c == b'\\')?;
        let end = start + len;
        (self.b[end] == b'"').then_some(())?;
        self.i = end + 1;
        self.text.get(start..end)
    }

    fn number(&mut self) -> Option<Slot<'a>> {
        let start = self.i;
        let negative = self.b[start] == b'-';
        let digits_at = start + usize::from(negative);
        let (int_len, int) = self.digit_run(digits_at);
        // JSON: at least one digit, and no leading zero before more digits.
        if int_len == 0 || (int_len > 1 && self.b[digits_at] == b'0') {
            return None;
        }
        self.i = digits_at + int_len;
        let mut fraction = None;
        if self.b.get(self.i) == Some(&b'.') {
            let (frac_len, frac) = self.digit_run(self.i + 1);
            (frac_len > 0).then_some(())?;
            self.i += 1 + frac_len;
            fraction = Some(int.zip(frac).and_then(|(i, f)| digits::exact_fraction(i, f, frac_len)));
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            let sign = usize::from(matches!(self.b.get(self.i + 1), Some(b'+' | b'-')));
            let (exp, _) = self.digit_run(self.i + 1 + sign);
            (exp > 0).then_some(())?;
            self.i += 1 + sign + exp;
            fraction = Some(None);
        }
        if let Some(exact) = fraction {
            // Correctly rounded, as serde_json reads floats with its `float_roundtrip` feature
            // (on in Cargo.toml), so the value is bit for bit the one it makes. Out of range
            // (infinite) is left to serde_json, which refuses it.
            let f = match exact {
                Some(f) if negative => -f,
                Some(f) => f,
                None => self.text.get(start..self.i)?.parse::<f64>().ok().filter(|f| f.is_finite())?,
            };
            return Some(Number::from_f64(f).map_or(Slot::Null, Slot::Number));
        }
        // Beyond `u64` (serde_json makes a float of it) is left to serde_json.
        let magnitude = int?;
        if !negative {
            return Some(Slot::Number(magnitude.into()));
        }
        // `-0` is left to serde_json, whatever it makes of it; so is below `i64::MIN`.
        let n = 0i64.checked_sub_unsigned(magnitude).filter(|&n| n != 0)?;
        Some(Slot::Number(n.into()))
    }

    /// The digits from `from`: how many, and their value unless it overflows `u64`.
    fn digit_run(&self, from: usize) -> (usize, Option<u64>) {
        digits::digit_run(self.b.get(from..).unwrap_or_default())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        let at = tape::open(self.slots, Slot::Array { len: 0, end: 0 });
        let count = self.items(b']', |s| s.value(depth))?;
        tape::close(self.slots, at, count);
        Some(())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        let at = tape::open(self.slots, Slot::Object { len: 0, end: 0 });
        let mut names = KeyFilter::default();
        let count = self.items(b'}', |s| {
            s.ws();
            (s.b.get(s.i) == Some(&b'"')).then_some(())?;
            let key = s.string()?;
            names.add(key);
            s.slots.push(Slot::String(Cow::Borrowed(key)));
            s.eat(b':').then_some(())?;
            s.value(depth)
        })?;
        tape::close(self.slots, at, count);
        // A repeated key takes serde_json's path, which reports it.
        (!(names.maybe_repeated && tape::names_repeat(self.slots, at))).then_some(())
    }

    /// Scans the comma-separated items of a container up to `end` (its opening bracket
    /// already consumed) with `item`; returns how many there were.
    fn items(&mut self, end: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<usize> {
        if self.eat(end) {
            return Some(0);
        }
        let mut count = 0;
        loop {
            item(self)?;
            count += 1;
            if self.eat(end) {
                return Some(count);
            }
            self.eat(b',').then_some(())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::Value;

    use super::*;
    use crate::schema::tape::TapeNode;
    use jsonschema::json::Node;

    /// The scanned document as a `Value`, or `None` when the scanner declined.
    fn scanned(doc: &[u8]) -> Option<Value> {
        let mut slots = Slots::new();
        scan(doc, &mut slots)?;
        Some(TapeNode::At { slots: &slots, at: 0 }.to_value().into_owned())
    }

    const CORPUS: [&str; 10] = [
        r#"{"seq":12  ,"ts":1763900000000000000 ,"device":"dev-7","temp":15.00,"hum":48.25,"ok":true}"#,
        r#"[1,-2,0,-0,0.5,-1.5e3,2E-2,1e400,18446744073709551615,18446744073709551616,-9223372036854775809]"#,
        r#" { "a" : [ { } , [ ] , null , false , "x y" ] , "b" : { "c" : { "d" : "" } } } "#,
        r#"{"esc":"a\"b","uni":"é","ctl":"	"}"#,
        r#"{"a":1,"a":2}"#,
        "[01, 1., .5, 1e, -, +1, 0x1]",
        r#"{"a" 1} {"a":1,} [1,] [,1] {,} tru nul fals"#,
        "123.456e-7",
        "[0.1,-2.675,9007199254.740993,1.00000000000000000001,-0.0,4503599627370497.5,0.30000000000000004]",
        r#""plain""#,
    ];

    #[test]
    fn takes_the_common_shape() {
        let v = scanned(CORPUS[0].as_bytes()).expect("a sensor object is scanned");
        assert_eq!(v, serde_json::from_str::<Value>(CORPUS[0]).expect("JSON"));
        for taken in ["{\"k\":\"é\"}", "[-9223372036854775808,18446744073709551615,\"\x7f\"]"] {
            assert_eq!(scanned(taken.as_bytes()), serde_json::from_str::<Value>(taken).ok(), "{taken}");
        }
        for declined in
            [r#"{"a":1,"a":2}"#, r#"{"esc":"a\"b"}"#, "[-0]", "[01]", "[1,]", "[18446744073709551616]"]
        {
            assert!(scanned(declined.as_bytes()).is_none(), "{declined}");
        }
        assert!(scanned(b"[\"\xff\"]").is_none(), "not UTF-8");
    }

    /// Whatever the scanner accepts, serde_json accepts too, with the same value.
    #[test]
    fn agrees_with_serde_json() {
        let mut rng = StdRng::seed_from_u64(5);
        let alphabet = b" \t\n{}[]:,\"\\-+.0123456789eEtrufalsn\xc3\xa9x";
        let mut accepted = 0;
        for round in 0..60_000 {
            let mut doc = CORPUS[round % CORPUS.len()].as_bytes().to_vec();
            for _ in 0..rng.random_range(0..4) {
                let at = rng.random_range(0..=doc.len());
                let c = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..3) {
                    0 if at < doc.len() => doc[at] = c,
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => doc.insert(at, c),
                }
            }
            if let Some(v) = scanned(&doc) {
                accepted += 1;
                let want: Value = serde_json::from_slice(&doc).unwrap_or_else(|e| {
                    panic!("scanned but not JSON ({e}): {}", String::from_utf8_lossy(&doc))
                });
                assert_eq!(v, want, "{}", String::from_utf8_lossy(&doc));
            }
        }
        assert!(accepted > 5_000, "only {accepted} documents scanned");
    }
}
