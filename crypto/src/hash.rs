//! blake3 digests with domain separation.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte blake3 digest. Text formats (TOML, JSON) carry it as 64 hex characters; binary formats
/// as 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash: the `prev_hash` of height 0.
    pub const ZERO: Hash = Hash([0u8; 32]);

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes in hex, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, ParseHashError> {
        let bytes = hex::decode(s.trim()).map_err(|_| ParseHashError(s.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ParseHashError(s.to_string()))?;
        Ok(Hash(arr))
    }

    /// blake3 of `data` under a domain-separation `context` (see [`Hasher::new`]).
    pub fn of(context: &str, data: &[u8]) -> Hash {
        Hasher::new(context).chain(data).finalize()
    }
}

/// A string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("not a 32-byte hex hash: {0:?}")]
pub struct ParseHashError(String);

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Hash::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(Hash(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// An incremental blake3 hasher in key-derivation mode: the context string keeps hashes made for
/// one purpose (a model, a record, a message) from ever colliding with hashes made for another.
pub struct Hasher(blake3::Hasher);

impl Hasher {
    /// `context` names the purpose and version, e.g. `"fedmesh model v1"`.
    pub fn new(context: &str) -> Self {
        Hasher(blake3::Hasher::new_derive_key(context))
    }

    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(data);
        self
    }

    /// Length-prefixed bytes, so that consecutive fields cannot be shifted into each other.
    pub fn update_field(&mut self, data: &[u8]) -> &mut Self {
        self.0.update(&(data.len() as u64).to_le_bytes());
        self.0.update(data);
        self
    }

    pub fn chain(mut self, data: &[u8]) -> Self {
        self.0.update(data);
        self
    }

    pub fn finalize(&self) -> Hash {
        Hash(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_separate_domains() {
        assert_ne!(Hash::of("a", b"x"), Hash::of("b", b"x"));
        assert_eq!(Hash::of("a", b"x"), Hash::of("a", b"x"));
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let h = Hash::of("t", b"data");
        assert_eq!(Hash::from_hex(&h.to_string()).unwrap(), h);
        assert!(Hash::from_hex("abc").is_err());
        assert!(Hash::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn length_prefix_prevents_shifting() {
        let a = Hasher::new("t")
            .update_field(b"ab")
            .update_field(b"c")
            .finalize();
        let b = Hasher::new("t")
            .update_field(b"a")
            .update_field(b"bc")
            .finalize();
        assert_ne!(a, b);
    }
}
