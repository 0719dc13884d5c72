//! lib0 encoding primitives: `varUint`, `varUint8Array` and `varString`.
//!
//! A `varUint` holds 7 bits per byte, least-significant group first; the high bit of a
//! byte means "more bytes follow". Values are limited to [`MAX_VAR_UINT`] (2^53, the
//! largest integer a JavaScript peer can hold exactly); the reader refuses larger values
//! and encodings longer than 8 bytes.
//!
//! ```
//! use nimbus_proto::doc::lib0::{write_var_uint, Reader};
//!
//! let mut buf = Vec::new();
//! write_var_uint(&mut buf, 300);
//! assert_eq!(buf, [0xAC, 0x02]);
//! assert_eq!(Reader::new(&buf).read_var_uint("n").unwrap(), 300);
//! ```

use super::DecodeError;

/// The largest `varUint` value accepted on read: 2^53.
pub const MAX_VAR_UINT: u64 = 1 << 53;

/// The most bytes a `varUint` up to [`MAX_VAR_UINT`] takes (8 × 7 = 56 bits).
const MAX_VAR_UINT_LEN: usize = 8;

/// Append `value` as a `varUint` (any `u64` is written faithfully; readers refuse
/// values above [`MAX_VAR_UINT`]).
pub fn write_var_uint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// The number of bytes [`write_var_uint`] writes for `value`.
pub fn var_uint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

/// Append a `varUint8Array`: `varUint(len) ‖ bytes`.
pub fn write_var_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Append a `varString`: the UTF-8 bytes as a `varUint8Array`.
pub fn write_var_string(buf: &mut Vec<u8>, s: &str) {
    write_var_bytes(buf, s.as_bytes());
}

/// A cursor over a byte slice that reads lib0 values and reports errors with the byte
/// offset where the failing value starts (relative to the slice the reader was made with,
/// plus the base given to [`Reader::with_base`]).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader::with_base(buf, 0)
    }

    /// A reader whose reported offsets are shifted by `base` (for a slice inside a frame).
    pub fn with_base(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    /// The current position inside the slice.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The current offset as reported in errors (`base + position`).
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Read a `varUint`; `what` names the field in the error.
    pub fn read_var_uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..MAX_VAR_UINT_LEN {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated {
                    what,
                    offset: start,
                });
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if value > MAX_VAR_UINT {
                    return Err(DecodeError::VarUintTooLarge {
                        what,
                        offset: start,
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarUintTooLarge {
            what,
            offset: start,
        })
    }

    /// Read a `varUint8Array` and return the position range of its bytes in the slice
    /// (for zero-copy slicing of a [`bytes::Bytes`]).
    pub fn read_var_bytes_range(
        &mut self,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, DecodeError> {
        let start = self.offset();
        let len = self.read_var_uint(what)?;
        let available = self.buf.len().saturating_sub(self.pos);
        match usize::try_from(len) {
            Ok(len) if len <= available => {
                let range = self.pos..self.pos + len;
                self.pos += len;
                Ok(range)
            }
            _ => Err(DecodeError::Truncated {
                what,
                offset: start,
            }),
        }
    }

    /// Read a `varUint8Array`.
    pub fn read_var_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let range = self.read_var_bytes_range(what)?;
        Ok(&self.buf[range])
    }

    /// Read a `varString` (UTF-8 checked).
    pub fn read_var_string(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.offset();
        let bytes = self.read_var_bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
            what,
            offset: start,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        write_var_uint(&mut b, v);
        b
    }

    #[test]
    fn var_uint_bytes_match_lib0() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7F]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xAC, 0x02]);
        assert_eq!(enc(16384), [0x80, 0x80, 0x01]);
        assert_eq!(
            enc(MAX_VAR_UINT),
            [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]
        );
        for v in [0, 1, 127, 128, 300, 1 << 32, MAX_VAR_UINT - 1, MAX_VAR_UINT] {
            assert_eq!(var_uint_len(v), enc(v).len());
            assert_eq!(Reader::new(&enc(v)).read_var_uint("v").unwrap(), v);
        }
    }

    #[test]
    fn var_uint_refuses_too_large_and_truncated() {
        let too_big = enc(MAX_VAR_UINT + 1);
        assert_eq!(
            Reader::new(&too_big).read_var_uint("v"),
            Err(DecodeError::VarUintTooLarge {
                what: "v",
                offset: 0
            })
        );
        // Nine bytes: longer than any value up to 2^53 needs.
        let overlong = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert!(matches!(
            Reader::new(&overlong).read_var_uint("v"),
            Err(DecodeError::VarUintTooLarge { .. })
        ));
        assert_eq!(
            Reader::new(&[0x80]).read_var_uint("v"),
            Err(DecodeError::Truncated {
                what: "v",
                offset: 0
            })
        );
        assert!(Reader::new(&[]).read_var_uint("v").is_err());
        // Non-minimal but short encodings are accepted, as lib0 does.
        assert_eq!(Reader::new(&[0x80, 0x00]).read_var_uint("v").unwrap(), 0);
    }

    #[test]
    fn var_bytes_and_strings() {
        let mut b = Vec::new();
        write_var_string(&mut b, "héllo");
        write_var_bytes(&mut b, &[1, 2, 3]);
        assert_eq!(&b[..7], [6, b'h', 0xC3, 0xA9, b'l', b'l', b'o']);
        let mut r = Reader::new(&b);
        assert_eq!(r.read_var_string("s").unwrap(), "héllo");
        assert_eq!(r.read_var_bytes("b").unwrap(), [1, 2, 3]);
        assert!(r.is_empty());
        assert_eq!(
            Reader::with_base(&[5, 1, 2], 10).read_var_bytes("b"),
            Err(DecodeError::Truncated {
                what: "b",
                offset: 10
            })
        );
        assert_eq!(
            Reader::new(&[2, 0xFF, 0xFE]).read_var_string("s"),
            Err(DecodeError::InvalidUtf8 {
                what: "s",
                offset: 0
            })
        );
    }
}
