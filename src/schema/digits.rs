//! Decimal digit runs for the payload scanner (`scan.rs`): their length and value, eight
//! digits at a time where eight are available, and the exactly rounded fast case of a
//! decimal fraction.
//!
//! Device payloads are mostly numbers (nanosecond timestamps have 19 digits), and a digit
//! at a time makes a chain of dependent multiplications; eight ASCII digits loaded as one
//! little-endian `u64` combine in three multiply-and-shift steps instead.

/// `0x30` (`'0'`) in every byte.
const ZEROS: u64 = 0x3030_3030_3030_3030;

/// The length of the run of ASCII digits at the start of `b`, and its value (`None` when it
/// does not fit in `u64`; the length is counted all the same).
pub fn digit_run(b: &[u8]) -> (usize, Option<u64>) {
    let mut value = Some(0u64);
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8).and_then(|c| c.try_into().ok()).map(u64::from_le_bytes) {
        if !eight_digits(word) {
            break;
        }
        value = value.and_then(|v| v.checked_mul(100_000_000)?.checked_add(value_of_eight(word)));
        i += 8;
    }
    while let Some(&d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        value = value.and_then(|v| v.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        i += 1;
    }
    (i, value)
}

/// True when all eight bytes of `word` are ASCII digits: the high nibble of each is 3, and
/// adding 6 to each does not carry into the high nibble (which it does from `':'` up).
fn eight_digits(word: u64) -> bool {
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = (word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4;
    high | carried == 0x3333_3333_3333_3333
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
    let significand =
        int.checked_mul(10u64.checked_pow(u32::try_from(frac_len).ok()?)?)?.checked_add(frac)?;
    // 2^53: every integer up to it is an exact double.
    (significand <= 1 << 53).then(|| significand as f64 / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_every_length() {
        for n in ["", "0", "7", "12345678", "123456789", "1763900000000037035", "18446744073709551615"] {
            let text = format!("{n}x12");
            assert_eq!(digit_run(text.as_bytes()), (n.len(), Some(n.parse().unwrap_or(0))), "{n}");
        }
        assert_eq!(digit_run(b"18446744073709551616"), (20, None), "past u64");
        assert_eq!(digit_run(b"1234567:9"), (7, Some(1_234_567)), "':' is not a digit");
        assert_eq!(digit_run(b"12345/789"), (5, Some(12_345)), "'/' is not a digit");
        for bad in 0..=255u8 {
            let mut word = *b"12345678";
            word[3] = bad;
            assert_eq!(eight_digits(u64::from_le_bytes(word)), bad.is_ascii_digit(), "{bad}");
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
