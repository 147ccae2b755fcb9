//! ChaCha20-Poly1305 (RFC 8439) for the shares one member sends another through the coordinator.
//!
//! The key comes from [`kdf::derive`](super::kdf::derive) with
//! [`Purpose::ShareKey`](super::kdf::Purpose::ShareKey), so it is fresh for every round and pair;
//! the associated data is the [`Header`] (round, sender, recipient), so a ciphertext cannot be
//! replayed into another round or passed off as coming from, or going to, anyone else — the
//! coordinator relays the ciphertexts but can neither read nor redirect them.
//!
//! Nonces are 96 random bits drawn per message and sent in front of the ciphertext. A counter
//! would need state that survives retries; a random nonce does not, and the key of a pair in a
//! round seals only a handful of messages (one per direction, plus any resends), so a repeat has
//! probability about 2^-96 per pair of messages.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::kdf::Key;

/// Bytes of the random nonce at the front of a [`Sealed`] message.
pub const NONCE_LEN: usize = 12;
/// Bytes of the Poly1305 tag at its end.
pub const TAG_LEN: usize = 16;
/// The longest plaintext [`seal`] takes. A member's shares for one recipient are about a hundred
/// bytes; the bound lets a receiver refuse a bigger ciphertext before reading it.
pub const MAX_PLAINTEXT_LEN: usize = 4096;
/// The longest [`Sealed`] message.
pub const MAX_SEALED_LEN: usize = NONCE_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;

/// Who sealed a message for whom, in which round: the associated data, authenticated but not
/// encrypted. Member indices are positions in the round's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Header {
    pub round: u64,
    pub sender: u32,
    pub recipient: u32,
}

impl Header {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.round.to_le_bytes());
        out[8..12].copy_from_slice(&self.sender.to_le_bytes());
        out[12..].copy_from_slice(&self.recipient.to_le_bytes());
        out
    }
}

/// A sealed message: nonce, ciphertext and tag, `NONCE_LEN + plaintext + TAG_LEN` bytes.
/// Text formats carry it as hex, binary formats as bytes (at most [`MAX_SEALED_LEN`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Wrap bytes received from a peer; [`open`] checks them.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Sealed(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aead::Sealed({} bytes)", self.0.len())
    }
}

impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::encoding::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = super::encoding::deserialize(d, "sealed share message", MAX_SEALED_LEN)?;
        Ok(Sealed(bytes.to_vec()))
    }
}

/// Encrypt `plaintext` for `header.recipient` under `key` (a [`ShareKey`] key for the pair and
/// round), with a fresh random nonce from `rng`.
///
/// [`ShareKey`]: super::kdf::Purpose::ShareKey
pub fn seal<R: RngCore + CryptoRng>(
    key: &Key,
    header: &Header,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Sealed, SealError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(SealError::TooLong {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = header.encode();
    let ciphertext = ChaCha20Poly1305::new(key.as_bytes().into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any plaintext below 256 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(Sealed(out))
}

/// Decrypt a message that `header.sender` sealed for `header.recipient`.
///
/// Any failure — wrong key, wrong header, a flipped bit, a truncated message — is the sender's
/// fault as far as the recipient can tell (the coordinator cannot forge under the pair's key), so
/// the error names the sender as the culprit.
pub fn open(key: &Key, header: &Header, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let forged = || OpenError::Forged {
        culprit: header.sender,
        round: header.round,
    };
    if sealed.0.len() < NONCE_LEN + TAG_LEN || sealed.0.len() > MAX_SEALED_LEN {
        return Err(forged());
    }
    let (nonce, ciphertext) = sealed.0.split_at(NONCE_LEN);
    let aad = header.encode();
    ChaCha20Poly1305::new(key.as_bytes().into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| forged())
}

/// A plaintext that [`seal`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    #[error("share message of {len} bytes is longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
}

/// A sealed message that does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Not sealed by `culprit` for us in this round under our pair key: treat `culprit` as
    /// misbehaving (it dealt us no usable share).
    #[error("encrypted shares from member {culprit} for round {round} fail authentication: member {culprit} sent a corrupt or misaddressed message")]
    Forged { culprit: u32, round: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::{agree::KeyPair, kdf};
    use rand::SeedableRng;

    fn key(round: u64) -> Key {
        let a = KeyPair::from_secret_bytes(&[1u8; 32]);
        let b = KeyPair::from_secret_bytes(&[2u8; 32]);
        kdf::derive(
            &a.agree(&b.public()).unwrap(),
            kdf::Purpose::ShareKey,
            round,
            0,
            1,
        )
    }

    const HEADER: Header = Header {
        round: 5,
        sender: 0,
        recipient: 1,
    };

    #[test]
    fn round_trip_and_fresh_nonces() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let k = key(5);
        let a = seal(&k, &HEADER, b"share bytes", &mut rng).unwrap();
        let b = seal(&k, &HEADER, b"share bytes", &mut rng).unwrap();
        assert_ne!(a, b, "two seals of one plaintext must differ (fresh nonce)");
        assert_eq!(a.as_bytes().len(), NONCE_LEN + 11 + TAG_LEN);
        assert_eq!(&open(&k, &HEADER, &a).unwrap()[..], b"share bytes");
        assert_eq!(&open(&k, &HEADER, &b).unwrap()[..], b"share bytes");
    }

    /// Guards the binding of round, sender and recipient: a relayed ciphertext cannot be
    /// replayed in another round or re-addressed, and every failure blames the sender.
    #[test]
    fn tampering_misaddressing_and_replay_blame_the_sender() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let k = key(5);
        let sealed = seal(&k, &HEADER, b"share", &mut rng).unwrap();
        let blamed = |h: Header| {
            Err(OpenError::Forged {
                culprit: h.sender,
                round: h.round,
            })
        };
        for header in [
            Header { round: 6, ..HEADER },
            Header {
                sender: 2,
                ..HEADER
            },
            Header {
                recipient: 2,
                ..HEADER
            },
        ] {
            assert_eq!(open(&k, &header, &sealed), blamed(header));
        }
        assert_eq!(open(&key(6), &HEADER, &sealed), blamed(HEADER));
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x40;
            assert_eq!(
                open(&k, &HEADER, &Sealed::from_bytes(bytes)),
                blamed(HEADER)
            );
        }
        let short = Sealed::from_bytes(sealed.as_bytes()[..NONCE_LEN + TAG_LEN - 1].to_vec());
        assert_eq!(open(&k, &HEADER, &short), blamed(HEADER));
    }

    #[test]
    fn bounds_and_serde() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let k = key(5);
        assert!(matches!(
            seal(&k, &HEADER, &[0u8; MAX_PLAINTEXT_LEN + 1], &mut rng),
            Err(SealError::TooLong { .. })
        ));
        let sealed = seal(&k, &HEADER, &[7u8; MAX_PLAINTEXT_LEN], &mut rng).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(serde_json::from_str::<Sealed>(&json).unwrap(), sealed);
        let bin = bincode::serde::encode_to_vec(&sealed, bincode::config::standard()).unwrap();
        let (back, _): (Sealed, _) =
            bincode::serde::decode_from_slice(&bin, bincode::config::standard()).unwrap();
        assert_eq!(back, sealed);
        let too_long = Sealed::from_bytes(vec![0u8; MAX_SEALED_LEN + 1]);
        let bin = bincode::serde::encode_to_vec(&too_long, bincode::config::standard()).unwrap();
        assert!(
            bincode::serde::decode_from_slice::<Sealed, _>(&bin, bincode::config::standard())
                .is_err()
        );
    }
}
