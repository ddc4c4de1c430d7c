//! The fast path of [`Tape::parse`](super::tape::Tape::parse): a strict scanner for the
//! common shape of device payloads (ASCII strings without escapes, plain numbers, shallow
//! nesting) that writes the tape without `serde`'s per-value visitor calls.
//!
//! It never decides anything on its own: whenever a document strays from that shape, or is
//! not JSON at all, it returns `None` and `serde_json` parses the document instead (and
//! reports the error). Every value is exactly the one `serde_json` would make (floats are
//! correctly rounded on both paths); a differential test checks the two agree.

use std::borrow::Cow;

use serde_json::Number;

use super::tape::{Slot, Slots};

/// Deepest nesting scanned (`serde_json` allows 128; deeper documents take its path).
const MAX_DEPTH: usize = 64;

/// Scans `bytes` into `slots` (empty on entry); `None` when `serde_json` must decide.
pub fn scan<'a>(bytes: &'a [u8], slots: &mut Slots<'a>) -> Option<()> {
    let mut s = Scanner { b: bytes, i: 0, slots };
    s.value(0)?;
    s.ws();
    (s.i == bytes.len()).then_some(())
}

struct Scanner<'a, 's> {
    b: &'a [u8],
    i: usize,
    slots: &'s mut Slots<'a>,
}

impl<'a> Scanner<'a, '_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
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

    /// A string of printable ASCII without escapes (the opening quote is at `self.i`).
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i + 1;
        let len = self
            .b
            .get(start..)?
            .iter()
            .position(|&c| !(b' '..=b'~').contains(&c) || c == b'"' || c == b'\\')?;
        let end = start + len;
        (self.b[end] == b'"').then_some(())?;
        self.i = end + 1;
        std::str::from_utf8(&self.b[start..end]).ok()
    }

    fn number(&mut self) -> Option<Slot<'a>> {
        let start = self.i;
        let negative = self.b[start] == b'-';
        let digits_at = start + usize::from(negative);
        let int_len = self.digits(digits_at);
        // JSON: at least one digit, and no leading zero before more digits.
        if int_len == 0 || (int_len > 1 && self.b[digits_at] == b'0') {
            return None;
        }
        self.i = digits_at + int_len;
        let mut float = false;
        if self.b.get(self.i) == Some(&b'.') {
            let frac = self.digits(self.i + 1);
            (frac > 0).then_some(())?;
            self.i += 1 + frac;
            float = true;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            let sign = usize::from(matches!(self.b.get(self.i + 1), Some(b'+' | b'-')));
            let exp = self.digits(self.i + 1 + sign);
            (exp > 0).then_some(())?;
            self.i += 1 + sign + exp;
            float = true;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if float {
            // Correctly rounded, as serde_json reads floats with its `float_roundtrip` feature
            // (on in Cargo.toml), so the value is bit for bit the one it makes. Out of range
            // (infinite) is left to serde_json, which refuses it.
            let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
            return Some(Number::from_f64(f).map_or(Slot::Null, Slot::Number));
        }
        if !negative {
            return Some(Slot::Number(text.parse::<u64>().ok()?.into()));
        }
        // `-0` is left to serde_json, whatever it makes of it.
        let n = text.parse::<i64>().ok().filter(|&n| n != 0)?;
        Some(Slot::Number(n.into()))
    }

    fn digits(&self, from: usize) -> usize {
        self.b.get(from..).map_or(0, |rest| rest.iter().take_while(|c| c.is_ascii_digit()).count())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        let at = self.open(Slot::Array { len: 0, end: 0 });
        let mut count = 0;
        if !self.eat(b']') {
            loop {
                self.value(depth)?;
                count += 1;
                if self.eat(b']') {
                    break;
                }
                self.eat(b',').then_some(())?;
            }
        }
        super::tape::close(self.slots, at, count);
        Some(())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        let at = self.open(Slot::Object { len: 0, end: 0 });
        let mut count = 0;
        if !self.eat(b'}') {
            loop {
                self.ws();
                (self.b.get(self.i) == Some(&b'"')).then_some(())?;
                let key = self.string()?;
                self.slots.push(Slot::String(Cow::Borrowed(key)));
                self.eat(b':').then_some(())?;
                self.value(depth)?;
                count += 1;
                if self.eat(b'}') {
                    break;
                }
                self.eat(b',').then_some(())?;
            }
        }
        super::tape::close(self.slots, at, count);
        // A repeated key takes serde_json's path, which reports it.
        (!super::tape::repeats_key(self.slots, at)).then_some(())
    }

    fn open(&mut self, slot: Slot<'a>) -> usize {
        self.slots.push(slot);
        self.slots.len() - 1
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

    const CORPUS: [&str; 9] = [
        r#"{"seq":12  ,"ts":1763900000000000000 ,"device":"dev-7","temp":15.00,"hum":48.25,"ok":true}"#,
        r#"[1,-2,0,-0,0.5,-1.5e3,2E-2,1e400,18446744073709551615,18446744073709551616,-9223372036854775809]"#,
        r#" { "a" : [ { } , [ ] , null , false , "x y" ] , "b" : { "c" : { "d" : "" } } } "#,
        r#"{"esc":"a\"b","uni":"é","ctl":"	"}"#,
        r#"{"a":1,"a":2}"#,
        "[01, 1., .5, 1e, -, +1, 0x1]",
        r#"{"a" 1} {"a":1,} [1,] [,1] {,} tru nul fals"#,
        "123.456e-7",
        r#""plain""#,
    ];

    #[test]
    fn takes_the_common_shape() {
        let v = scanned(CORPUS[0].as_bytes()).expect("a sensor object is scanned");
        assert_eq!(v, serde_json::from_str::<Value>(CORPUS[0]).expect("JSON"));
        for declined in [r#"{"a":1,"a":2}"#, r#"{"esc":"a\"b"}"#, "[-0]", "[01]", "[1,]", "{\"k\":\"é\"}"] {
            assert!(scanned(declined.as_bytes()).is_none(), "{declined}");
        }
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
