//! Keys derived from an agreed secret, bound to a purpose, a round and a pair of members.
//!
//! blake3 in key-derivation mode: the context string `"fedmesh secagg v1 <purpose>"` separates
//! the purposes (a mask seed can never equal a share key), and the key material is the shared
//! secret followed by the round and the pair's two member indices, smaller first — so `u` and `v`
//! derive the same key from their two sides of the agreement, and a key of one round or pair says
//! nothing about another's.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::agree::SharedSecret;

/// What a derived key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// The seed of the pairwise mask `s_uv` (see [`mask`](super::mask)).
    MaskSeed,
    /// The AEAD key for the shares `u` sends `v` and `v` sends `u` (see [`aead`](super::aead)).
    ShareKey,
}

impl Purpose {
    /// The blake3 context string. Changing one is a protocol version change.
    pub fn context(self) -> &'static str {
        match self {
            Purpose::MaskSeed => "fedmesh secagg v1 pairwise mask seed",
            Purpose::ShareKey => "fedmesh secagg v1 share encryption key",
        }
    }
}

/// A 32-byte derived key.
///
/// # Security
/// Zeroized on drop; `Debug` prints `<redacted>`. Use it only for the [`Purpose`] it was derived
/// for: [`mask::Seed`](super::mask::Seed) takes a `MaskSeed` key, [`aead`](super::aead) a
/// `ShareKey` key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl Key {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("kdf::Key(<redacted>)")
    }
}

/// The key for `purpose` between members `a` and `b` in `round`; `derive(.., a, b)` equals
/// `derive(.., b, a)`.
pub fn derive(secret: &SharedSecret, purpose: Purpose, round: u64, a: u32, b: u32) -> Key {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // Fixed-width fields after a fixed-width secret: no two inputs encode alike.
    let mut material = [0u8; 32 + 8 + 4 + 4];
    material[..32].copy_from_slice(secret.as_bytes());
    material[32..40].copy_from_slice(&round.to_le_bytes());
    material[40..44].copy_from_slice(&lo.to_le_bytes());
    material[44..].copy_from_slice(&hi.to_le_bytes());
    let key = Key(blake3::derive_key(purpose.context(), &material));
    material.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::agree::KeyPair;

    fn secrets() -> (SharedSecret, SharedSecret) {
        let a = KeyPair::from_secret_bytes(&[1u8; 32]);
        let b = KeyPair::from_secret_bytes(&[2u8; 32]);
        (a.agree(&b.public()).unwrap(), b.agree(&a.public()).unwrap())
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (ab, ba) = secrets();
        for purpose in [Purpose::MaskSeed, Purpose::ShareKey] {
            assert_eq!(
                derive(&ab, purpose, 7, 3, 9).as_bytes(),
                derive(&ba, purpose, 7, 9, 3).as_bytes()
            );
        }
    }

    #[test]
    fn purpose_round_and_pair_separate_keys() {
        let (ab, _) = secrets();
        let base = derive(&ab, Purpose::MaskSeed, 7, 3, 9);
        let others = [
            derive(&ab, Purpose::ShareKey, 7, 3, 9),
            derive(&ab, Purpose::MaskSeed, 8, 3, 9),
            derive(&ab, Purpose::MaskSeed, 7, 3, 10),
            derive(&ab, Purpose::MaskSeed, 7, 4, 9),
        ];
        for other in &others {
            assert_ne!(base.as_bytes(), other.as_bytes());
        }
        assert!(format!("{base:?}").contains("redacted"));
    }
}
