//! `Reader`: bounds-checked reads of MQTT data types (section 1.5) from a packet body held as
//! `Bytes`. Every read returns `Result`; running past the end is `DecodeError::Truncated`.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;

/// A cursor over the body of one packet (or of one property block).
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails with `TrailingBytes` unless everything was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }

    /// Splits off the next `n` bytes (zero-copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything that is left (zero-copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u32())
    }

    /// Variable byte integer (1.5.5), at most 4 bytes.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VariableByteIntegerTooLong)
    }

    /// Binary data (1.5.6): two-byte length then bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 string (1.5.4) as its raw, validated bytes.
    pub(crate) fn utf8_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.binary()?;
        check_utf8(&b)?;
        Ok(b)
    }

    /// UTF-8 string (1.5.4): well-formed, no U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        check_utf8(&b)?;
        // check_utf8 proved validity; this conversion cannot fail, but stay panic-free.
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }
}

/// Well-formed UTF-8 [MQTT-1.5.4-1] without U+0000 [MQTT-1.5.4-2].
pub(crate) fn check_utf8(b: &[u8]) -> Result<(), DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8)?;
    if b.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}
