//! Numbers for the payload scanner (`scan.rs`): the length and value of a run of decimal
//! digits, eight at a time where eight are available, and the exactly rounded fast case of a
//! decimal fraction.
//!
//! Eight ASCII digits loaded as one little-endian `u64` are checked together and combine into
//! their value in three multiply-and-shift steps instead of a chain of eight dependent
//! multiplications (nanosecond timestamps have 19 digits). Shorter runs, and the rest of a
//! long one, go a digit at a time: measured on the bench payload, classifying a partial
//! word (or a string's bytes) as a word costs more than the byte loop it replaces.

/// `0x30` (`'0'`) in every byte.
const ZEROS: u64 = 0x3030_3030_3030_3030;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The eight bytes at `at`, little-endian (the first byte lowest).
fn word(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|c| c.try_into().ok()).map(u64::from_le_bytes)
}

/// High bit set in every byte of `word` that is not an ASCII digit: its high nibble is not
/// 3, or its low nibble plus 6 carries (above 9). Nibble sums never carry across bytes.
fn non_digits(word: u64) -> u64 {
    let high = (word & 0xF0F0_F0F0_F0F0_F0F0) ^ ZEROS;
    let over = ((word & 0x0F0F_0F0F_0F0F_0F0F) + 0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    let bad = high | over;
    // Any set bit in a byte -> its high bit.
    (((bad & !HIGH_BITS) + !HIGH_BITS) | bad) & HIGH_BITS
}

/// Digits that always fit in `u64` (`10^19 - 1 < 2^64`).
const MAX_EXACT_DIGITS: usize = 19;

/// The length of the run of ASCII digits at the start of `b`, and its value (`None` when it
/// does not fit in `u64`; the length is counted all the same).
pub fn digit_run(b: &[u8]) -> (usize, Option<u64>) {
    let mut value = 0u64;
    let mut i = 0;
    while let Some(w) = word(b, i).filter(|&w| non_digits(w) == 0) {
        value = value.wrapping_mul(100_000_000).wrapping_add(value_of_eight(w));
        i += 8;
    }
    while let Some(&d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        i += 1;
    }
    // Up to 19 digits always fit; longer runs (rare) are added up again, checked.
    if i > MAX_EXACT_DIGITS {
        let checked =
            b[..i].iter().try_fold(0u64, |v, &d| v.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        return (i, checked);
    }
    (i, Some(value))
}

/// The value of eight ASCII digits loaded little-endian (the first digit in the low byte).
fn value_of_eight(word: u64) -> u64 {
    let d = word.wrapping_sub(ZEROS);
    // Pairs: each 16-bit lane holds first * 10 + second in its low byte.
    let pairs = (d.wrapping_mul(10).wrapping_add(d >> 8)) & 0x00FF_00FF_00FF_00FF;
    // Quads: each 32-bit lane holds pair0 * 100 + pair1 in its low 16 bits.
    let quads = (pairs.wrapping_mul(100).wrapping_add(pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
    quads.wrapping_mul(10_000).wrapping_add(quads >> 32) & 0xFFFF_FFFF
}

/// Powers of ten exactly representable as `f64`.
const EXACT_POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// `int.frac` (with `frac_len` fraction digits) as the correctly rounded `f64`, when that is
/// one division: the significand and the power of ten are both exact doubles, and IEEE
/// division rounds correctly. `None` outside that case (the caller parses the text).
pub fn exact_fraction(int: u64, frac: u64, frac_len: usize) -> Option<f64> {
    let scale = EXACT_POWERS.get(frac_len)?;
    // Exact as an integer too (below 2^64, as `frac_len` is at most 19 here).
    let int_scale = (frac_len < 20).then_some(*scale as u64)?;
    let significand = int.checked_mul(int_scale)?.checked_add(frac)?;
    // 2^53: every integer up to it is an exact double.
    (significand <= 1 << 53).then(|| significand as f64 / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_every_length() {
        let all = "18446744073709551615";
        for n in (0..=all.len()).map(|k| &all[..k]).chain(["0", "1763900000000037035", "12345678"]) {
            for tail in ["", "x", "x1234567890", ",\"a\":1}"] {
                let text = format!("{n}{tail}");
                let want = (n.len(), Some(n.parse().unwrap_or(0)));
                assert_eq!(digit_run(text.as_bytes()), want, "{text}");
            }
        }
        assert_eq!(digit_run(b"18446744073709551616"), (20, None), "past u64");
        assert_eq!(digit_run(b"184467440737095516150000"), (24, None), "far past u64");
        for byte in 0..=255u8 {
            let mut text = *b"1234567812345678";
            for at in [3, 9] {
                text[at] = byte;
                let want = if byte.is_ascii_digit() { 16 } else { at };
                assert_eq!(digit_run(&text).0, want, "{byte} at {at}");
                text[at] = b'5';
            }
        }
    }

    #[test]
    fn fractions_round_like_the_parser() {
        for (int, frac, len) in
            [(18, 0, 2), (48, 25, 2), (0, 1, 1), (123, 456, 3), (9_007_199_254, 740_992, 6)]
        {
            let text = format!("{int}.{frac:0len$}");
            assert_eq!(exact_fraction(int, frac, len), Some(text.parse::<f64>().expect("float")), "{text}");
        }
        assert_eq!(exact_fraction(9_007_199_254, 740_993, 6), None, "past 2^53");
        assert_eq!(exact_fraction(1, 0, 23), None, "inexact power");
    }
}
