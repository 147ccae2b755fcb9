//! Byte formats: fixed-width big-endian integers, a bounds-checked reader, and the wiping of
//! secret GMP integers.

use rug::integer::Order;
use rug::{Assign, Integer};

use super::{Ciphertext, PublicKey, FORMAT_VERSION};

/// Bytes that are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{what}: truncated (needed {needed} more bytes)")]
    Truncated { what: &'static str, needed: usize },
    #[error("{what}: {extra} unexpected trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what}: format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version { what: &'static str, found: u8 },
    #[error("{what}: wrong kind tag {found:#04x}")]
    Kind { what: &'static str, found: u8 },
    #[error("{what}: {count} items exceed the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what}: value out of range ({detail})")]
    Range {
        what: &'static str,
        detail: &'static str,
    },
}

/// Append `x` as exactly `len` big-endian bytes. `x` must be non-negative and fit.
pub(crate) fn put_int(out: &mut Vec<u8>, x: &Integer, len: usize) {
    let start = out.len();
    out.resize(start + len, 0);
    let digits = x.significant_digits::<u8>();
    debug_assert!(digits <= len && *x >= 0, "integer does not fit its field");
    x.write_digits(&mut out[start + len - digits..], Order::Msf);
}

pub(crate) fn int_from(bytes: &[u8]) -> Integer {
    Integer::from_digits(bytes, Order::Msf)
}

/// Overwrite the limbs of a secret integer, then set it to zero.
///
/// GMP reuses an integer's allocation when the new value fits, so assigning an all-ones value as
/// wide as the allocation overwrites every limb in place. Best effort: copies GMP made while
/// reallocating earlier are out of reach.
pub(crate) fn wipe(x: &mut Integer) {
    let cap = x.capacity();
    if cap > 0 {
        let ones = (Integer::from(1) << cap as u32) - 1u32;
        x.assign(&ones);
    }
    x.assign(0);
}

/// A cursor over untrusted bytes; every read checks the length first.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Start reading `what`: checks the version byte and the kind tag.
    pub fn new(bytes: &'a [u8], what: &'static str, kind: u8) -> Result<Self, DecodeError> {
        let mut r = Reader { bytes, what };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version {
                what,
                found: version,
            });
        }
        let k = r.u8()?;
        if k != kind {
            return Err(DecodeError::Kind { what, found: k });
        }
        Ok(r)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: n - self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A count that must not exceed `max`, and whose items (of `item_len` bytes each) must all be
    /// present: checked before anything is allocated.
    pub fn count(&mut self, max: usize, item_len: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(DecodeError::TooMany {
                what: self.what,
                count,
                max,
            });
        }
        let needed = count.saturating_mul(item_len);
        if self.bytes.len() < needed {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: needed - self.bytes.len(),
            });
        }
        Ok(count)
    }

    /// An integer of exactly `len` bytes that must lie in `[1, bound)`.
    pub fn int_below(
        &mut self,
        len: usize,
        bound: &Integer,
        detail: &'static str,
    ) -> Result<Integer, DecodeError> {
        let x = int_from(self.take(len)?);
        if x == 0 || x >= *bound {
            return Err(DecodeError::Range {
                what: self.what,
                detail,
            });
        }
        Ok(x)
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                what: self.what,
                extra: self.bytes.len(),
            })
        }
    }
}

pub(crate) const KIND_CIPHERTEXTS: u8 = b'C';

/// Encode a vector of ciphertexts: version, kind, count (u32), then each ciphertext as
/// [`PublicKey::ciphertext_len`] big-endian bytes.
pub fn encode_ciphertexts(pk: &PublicKey, cts: &[Ciphertext]) -> Vec<u8> {
    let len = pk.ciphertext_len();
    let mut out = Vec::with_capacity(6 + cts.len() * len);
    out.extend_from_slice(&[FORMAT_VERSION, KIND_CIPHERTEXTS]);
    out.extend_from_slice(&(cts.len() as u32).to_le_bytes());
    for c in cts {
        put_int(&mut out, c.as_integer(), len);
    }
    out
}

/// Decode at most `max` ciphertexts under `pk`; every one must lie in `[1, n²)`.
pub fn decode_ciphertexts(
    pk: &PublicKey,
    bytes: &[u8],
    max: usize,
) -> Result<Vec<Ciphertext>, DecodeError> {
    let mut r = Reader::new(bytes, "ciphertexts", KIND_CIPHERTEXTS)?;
    let len = pk.ciphertext_len();
    let count = r.count(max, len)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(Ciphertext::from_integer(r.int_below(
            len,
            pk.n_squared(),
            "ciphertext not in [1, n²)",
        )?));
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_and_keeps_working() {
        let mut x = Integer::from(123456789u64) << 500;
        wipe(&mut x);
        assert_eq!(x, 0);
        x += 5;
        assert_eq!(x, 5);
    }

    #[test]
    fn put_int_pads_to_width() {
        let mut out = Vec::new();
        put_int(&mut out, &Integer::from(0x0102), 4);
        assert_eq!(out, [0, 0, 1, 2]);
        assert_eq!(int_from(&out), 0x0102);
    }
}
