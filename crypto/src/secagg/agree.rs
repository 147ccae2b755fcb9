//! X25519 key agreement (RFC 7748) between two members.
//!
//! Each member advertises two fresh public keys per round (round 0, signed with its identity key):
//! one whose agreed secrets key the AEAD for shares, one whose agreed secrets seed the pairwise
//! masks. Both sides of a pair get the same [`SharedSecret`], which is only ever fed to
//! [`kdf::derive`](super::kdf::derive), never used as a key itself.
//!
//! The mask key pair's secret is also Shamir-shared, so that the survivors can rebuild the masks of
//! a member that drops out: [`KeyPair::secret_bytes`] and [`KeyPair::from_secret_bytes`] carry all
//! 32 bytes (X25519 clamps the scalar when it is used, not when it is stored).

use std::fmt;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A member's X25519 key pair for one round.
///
/// # Security
/// The secret scalar is zeroized on drop and never printed: `Debug` shows only the public key.
/// A key pair is for one round: fresh keys each round keep one round's shared secrets (and the
/// mask secret revealed for a dropped member) from saying anything about another round's.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyPair {
    secret: x25519_dalek::StaticSecret,
    #[zeroize(skip)]
    public: PublicKey,
}

impl KeyPair {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_secret(x25519_dalek::StaticSecret::random_from_rng(rng))
    }

    /// Rebuild a key pair from its 32 secret bytes, e.g. a dropped member's mask key recovered
    /// with [`shamir::combine`](super::shamir::combine).
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self::from_secret(x25519_dalek::StaticSecret::from(*bytes))
    }

    fn from_secret(secret: x25519_dalek::StaticSecret) -> Self {
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        KeyPair { secret, public }
    }

    /// The 32 secret bytes, wrapped so that they are wiped when dropped: what
    /// [`shamir::split`](super::shamir::split) shares.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret shared with the owner of `their_public`.
    ///
    /// Fails if the result is all zeros, which happens exactly when `their_public` is a point of
    /// small order: such a key would make the "shared" secret public (and the same for every
    /// member), so whoever advertised it is to blame.
    pub fn agree(&self, their_public: &PublicKey) -> Result<SharedSecret, AgreeError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(their_public.0));
        if !shared.was_contributory() {
            return Err(AgreeError::LowOrder {
                public: *their_public,
            });
        }
        Ok(SharedSecret(shared))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agree::KeyPair({:?}, <redacted>)", self.public)
    }
}

/// An X25519 public key. Text formats (TOML, JSON) carry it as 64 hex characters; binary formats
/// as 32 raw bytes.
///
/// Any 32 bytes decode: a bad key (one of small order) is caught by [`KeyPair::agree`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, ParsePublicKeyError> {
        let bytes = hex::decode(s.trim()).map_err(|_| ParsePublicKeyError(s.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ParsePublicKeyError(s.to_string()))?;
        Ok(PublicKey(arr))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agree::PublicKey({})", hex::encode(&self.0[..8]))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            PublicKey::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(PublicKey(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// A string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("not a 32-byte hex X25519 public key: {0:?}")]
pub struct ParsePublicKeyError(String);

/// The raw output of X25519 between two members; input to [`kdf::derive`](super::kdf::derive) only.
///
/// # Security
/// Zeroized on drop, `Debug` prints `<redacted>`, and the bytes are not exposed outside this
/// crate: the only way to use it is through the KDF, which binds it to a round, a pair and a
/// purpose.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret(x25519_dalek::SharedSecret);

impl SharedSecret {
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("agree::SharedSecret(<redacted>)")
    }
}

/// Key agreement with a peer's public key failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgreeError {
    /// The peer advertised a key of small order; reject that peer's keys for the round (the
    /// caller knows who advertised `public` and names them as the culprit).
    #[error("X25519 public key {public} has small order: key agreement with it gives a publicly known secret")]
    LowOrder { public: PublicKey },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn both_sides_agree_and_third_parties_differ() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (a, b, c) = (
            KeyPair::generate(&mut rng),
            KeyPair::generate(&mut rng),
            KeyPair::generate(&mut rng),
        );
        let ab = a.agree(&b.public()).unwrap();
        let ba = b.agree(&a.public()).unwrap();
        let ac = a.agree(&c.public()).unwrap();
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert_ne!(ab.as_bytes(), ac.as_bytes());
    }

    /// Guards the rejection of small-order keys, with which an attacker would make a member's
    /// "shared" secret (and so its masks or share keys) public.
    #[test]
    fn rejects_small_order_public_keys() {
        let a = KeyPair::from_secret_bytes(&[7u8; 32]);
        // The identity (0), the point of order 2 (1), and a point of order 8 (RFC 7748 lists
        // these among the small-order u-coordinates).
        let mut order8 = [0u8; 32];
        hex::decode_to_slice(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            &mut order8,
        )
        .unwrap();
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one, order8] {
            assert!(matches!(
                a.agree(&PublicKey::from_bytes(bad)),
                Err(AgreeError::LowOrder { .. })
            ));
        }
    }

    #[test]
    fn secret_bytes_rebuild_the_same_key_pair() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let again = KeyPair::from_secret_bytes(&a.secret_bytes());
        assert_eq!(again.public(), a.public());
        assert_eq!(
            again.agree(&b.public()).unwrap().as_bytes(),
            b.agree(&a.public()).unwrap().as_bytes()
        );
        assert!(format!("{a:?}").contains("redacted"));
        assert!(!format!("{a:?}").contains(&hex::encode(*a.secret_bytes())));
    }

    #[test]
    fn public_key_serde_is_hex_in_text_and_32_bytes_in_binary() {
        let key = KeyPair::from_secret_bytes(&[9u8; 32]).public();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
        let bytes = bincode::serde::encode_to_vec(key, bincode::config::standard()).unwrap();
        assert_eq!(bytes.len(), 32);
        let (back, _): (PublicKey, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
    }
}
