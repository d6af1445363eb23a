//! A bounds-checked reader of Avro's binary encoding, shared by the deserializer and resolution.
//!
//! Malformed input is an error, never a panic: every read is bounds-checked and block counts are
//! checked against the bytes left; the readers built on it limit nesting to [`MAX_DEPTH`] and
//! require the whole datum to be consumed.

use serde::de;

/// Deeper nesting than this is refused rather than risking the stack on hostile input.
pub(super) const MAX_DEPTH: usize = 128;

/// Items of zero bytes (nulls, empty records) are legal in arrays and maps, but not a billion of
/// them from a few bytes of input: a datum may claim this many items beyond one per byte left.
const ZERO_SIZE_ITEMS: u64 = 65_536;

/// Why a datum could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatumError(pub String);

impl de::Error for DatumError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DatumError(msg.to_string())
    }
}

pub(super) type Result<T> = std::result::Result<T, DatumError>;

pub(super) fn fail<T>(reason: impl Into<String>) -> Result<T> {
    Err(DatumError(reason.into()))
}

/// Reads Avro's binary encoding from a slice; every read is bounds-checked.
pub(super) struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What is left of [`ZERO_SIZE_ITEMS`].
    zero_size_items: u64,
}

impl<'a> Input<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Input {
            bytes,
            at: 0,
            zero_size_items: ZERO_SIZE_ITEMS,
        }
    }

    #[inline]
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.bytes.get(self.at..).and_then(|rest| rest.get(..n)) {
            Some(slice) => {
                self.at += n;
                Ok(slice)
            }
            None => Err(self.ends_early(n)),
        }
    }

    // Errors are built out of line, so the hot paths stay small enough to inline.
    #[cold]
    #[inline(never)]
    fn ends_early(&self, n: usize) -> DatumError {
        DatumError(format!(
            "the datum ends early: {n} bytes wanted, {} left",
            self.remaining()
        ))
    }

    #[inline]
    pub(super) fn long(&mut self) -> Result<i64> {
        // Most integers (lengths, indexes, small counts) fit one byte.
        if let Some(&byte) = self.bytes.get(self.at)
            && byte & 0x80 == 0
        {
            self.at += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
        self.long_slow()
    }

    #[inline(never)]
    fn long_slow(&mut self) -> Result<i64> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let mut value: u64 = 0;
        let mut i = 0;
        // A plain loop: `step_by` over the shifts cost twice the instructions.
        while i < 10 {
            let Some(&byte) = rest.get(i) else {
                return fail("the datum ends inside a variable-length integer");
            };
            value |= u64::from(byte & 0x7f) << (7 * i);
            i += 1;
            if byte & 0x80 == 0 {
                self.at += i;
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        fail("a variable-length integer is longer than 10 bytes")
    }

    #[inline]
    pub(super) fn int(&mut self) -> Result<i32> {
        let value = self.long()?;
        i32::try_from(value).map_or_else(|_| fail(format!("{value} does not fit an int")), Ok)
    }

    #[inline]
    pub(super) fn length(&mut self) -> Result<usize> {
        let n = self.long()?;
        usize::try_from(n).map_or_else(|_| fail(format!("negative length {n}")), Ok)
    }

    #[inline]
    pub(super) fn float(&mut self) -> Result<f32> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(super) fn double(&mut self) -> Result<f64> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    #[inline]
    pub(super) fn boolean(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => fail(format!("{other} is not a boolean (0 or 1)")),
        }
    }

    #[inline]
    pub(super) fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.length()?;
        self.take(len)
    }

    #[inline]
    pub(super) fn str(&mut self) -> Result<&'a str> {
        let bytes = self.bytes()?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. `is_ascii` looks at a word at a time, where the
            // full validation goes byte by byte over strings this short: it was a sixth of a
            // booking event's decode, most of whose strings are ids.
            #[allow(unsafe_code)]
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|e| DatumError(format!("a string {e}")))
    }

    /// The item count of the next block of an array or map; 0 ends it. A negative count is
    /// followed by the block's size in bytes, which is not needed here. Refused when the
    /// bytes left cannot hold that many items (bar the allowance for items of zero bytes).
    #[inline]
    pub(super) fn block_count(&mut self) -> Result<u64> {
        let count = self.long()?;
        let count = if count >= 0 {
            count as u64
        } else {
            self.long()?;
            count.unsigned_abs()
        };
        let left = self.remaining() as u64;
        if count > left {
            let extra = count - left;
            if extra > self.zero_size_items {
                return fail(format!(
                    "a block claims {count} items with {left} bytes left"
                ));
            }
            self.zero_size_items -= extra;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use crate::avro::program::fixtures::compiled;

    #[test]
    fn strings_are_checked_as_utf8_beyond_ascii() {
        let (text, _) = compiled(r#""string""#);
        assert_eq!(
            text.decode::<String>(&[4, b'o', b'k']).ok(),
            Some("ok".into())
        );
        assert_eq!(
            text.decode::<String>(&[4, 0xc3, 0xbc]).ok(),
            Some("ü".into())
        );
        let error = text
            .decode::<String>(&[4, 0xc3, 0x28])
            .expect_err("not UTF-8");
        assert!(error.0.contains("utf-8"), "{error}");
        assert!(text.decode::<String>(&[2, 0xff]).is_err());
    }

    #[test]
    fn block_counts_and_nesting_are_bounded() {
        let (nulls, _) = compiled(r#"{"type": "array", "items": "null"}"#);
        // A block of 10^12 nulls in 7 bytes.
        let mut huge = Vec::new();
        let mut n: u64 = 2 * 1_000_000_000_000;
        while n >= 0x80 {
            huge.push((n as u8) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        huge.push(0);
        let error = nulls.decode::<Vec<()>>(&huge).expect_err("refused");
        assert!(error.0.contains("claims 1000000000000 items"), "{error}");
        // A negative count (with a byte size) of three nulls is fine.
        let three: Vec<()> = nulls.decode(&[5, 0, 0]).expect("decodes");
        assert_eq!(three.len(), 3);

        let (list, fast) = compiled(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "next", "type": ["null", "Node"]}]}"#,
        );
        // 200 levels deep: branch 1 two hundred times, then null.
        let mut deep = vec![2u8; 200];
        deep.push(0);
        let error = list
            .decode::<serde_json::Value>(&deep)
            .expect_err("too deep");
        assert!(error.0.contains("deeper than 128"), "{error}");
        let shallow = [2u8, 2, 0];
        let ours: serde_json::Value = list.decode(&shallow).expect("decodes");
        let theirs: serde_json::Value =
            serde_avro_fast::from_datum_slice(&shallow, &fast).expect("decodes");
        assert_eq!(ours, theirs);
    }
}
