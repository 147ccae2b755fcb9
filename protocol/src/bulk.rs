//! Bulk announcements: what gossip carries in place of a large message.
//!
//! A message larger than [`THRESHOLD`] does not travel on gossip. Its publisher keeps the body and
//! gossips a small [`Announcement`] (the body's blake3 digest and length); every member that hears
//! it fetches the body by digest from a peer that holds it (libp2p request-response in the node)
//! and judges the body as if gossip had carried it. So gossip's per-connection buffers and message
//! caches never hold model-sized messages.
//!
//! The encoding is tagged and versioned, and it cannot be mistaken for a signed envelope: an
//! announcement is exactly [`Announcement::LEN`] bytes and starts with [`MAGIC`], while a signed
//! envelope is always longer than [`MAX_TAGGED_LEN`] (its signature alone is 64 bytes). Gossip data
//! shorter than that which starts with [`MAGIC`] is an announcement or a malformed one, never an
//! envelope.
//!
//! ```
//! use fedmesh_protocol::bulk::{self, Announcement};
//! let body = vec![7u8; 100_000];
//! let a = Announcement::of(&body);
//! let bytes = a.encode();
//! assert_eq!(bulk::classify(&bytes, 1 << 20).unwrap(), Some(a));
//! assert!(a.matches(&body));
//! ```

/// Messages longer than this go by bulk transfer; shorter ones ride on gossip. The same on every
/// member (a protocol constant, not a setting).
pub const THRESHOLD: usize = 16 * 1024;

/// The first bytes of every announcement.
pub const MAGIC: &[u8; 6] = b"fmbulk";

/// The encoding version this code writes and reads.
pub const VERSION: u8 = 1;

/// Gossip data at most this long that starts with [`MAGIC`] is read as an announcement. A signed
/// envelope is always longer (a 32-byte genesis hash and a 64-byte signature at least).
pub const MAX_TAGGED_LEN: usize = 64;

/// A large message announced on gossip: its blake3 digest and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// blake3 of the body.
    pub digest: [u8; 32],
    /// Length of the body in bytes.
    pub len: u32,
}

/// Why announcement bytes were refused. The peer that sent them is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Tagged data of the wrong length.
    #[error("bulk announcement of {len} bytes (expected {expected})")]
    Length { len: usize, expected: usize },
    /// A version this node does not read.
    #[error("bulk announcement version {0} (this node reads version {VERSION})")]
    Version(u8),
    /// The announced body is larger than any message may be.
    #[error("bulk announcement of a {len}-byte body exceeds the message limit of {limit} bytes")]
    TooLarge { len: u32, limit: usize },
    /// The announced body is small enough for gossip: a needless (non-canonical) announcement.
    #[error("bulk announcement of a {len}-byte body, which gossip carries itself (threshold {THRESHOLD})")]
    TooSmall { len: u32 },
}

impl Announcement {
    /// Encoded length: magic, version, digest, length (u32, big-endian).
    pub const LEN: usize = MAGIC.len() + 1 + 32 + 4;

    /// The announcement of `body`.
    ///
    /// # Panics
    /// If `body` is 4 GiB or longer (no message comes near; callers bound it first).
    pub fn of(body: &[u8]) -> Announcement {
        Announcement {
            digest: *blake3::hash(body).as_bytes(),
            len: u32::try_from(body.len()).expect("a message under 4 GiB"),
        }
    }

    /// Whether `body` is the announced body (length and digest).
    pub fn matches(&self, body: &[u8]) -> bool {
        body.len() == self.len as usize && blake3::hash(body).as_bytes() == &self.digest
    }

    /// The gossip bytes of this announcement.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// Whether `data` is tagged as an announcement (it may still be malformed).
pub fn is_tagged(data: &[u8]) -> bool {
    data.len() <= MAX_TAGGED_LEN && data.starts_with(MAGIC)
}

/// Read gossip data: `Ok(None)` for an ordinary message, `Ok(Some(_))` for a well-formed
/// announcement of a body of at most `max_message_bytes`, and an error for tagged data that is
/// not a canonical announcement (wrong length or version, a body too large, or one small enough
/// for gossip). Never panics.
pub fn classify(
    data: &[u8],
    max_message_bytes: usize,
) -> Result<Option<Announcement>, DecodeError> {
    if !is_tagged(data) {
        return Ok(None);
    }
    if data.len() != Announcement::LEN {
        return Err(DecodeError::Length {
            len: data.len(),
            expected: Announcement::LEN,
        });
    }
    let rest = &data[MAGIC.len()..];
    if rest[0] != VERSION {
        return Err(DecodeError::Version(rest[0]));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&rest[1..33]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&rest[33..37]);
    let len = u32::from_be_bytes(len);
    if len as usize > max_message_bytes {
        return Err(DecodeError::TooLarge {
            len,
            limit: max_message_bytes,
        });
    }
    if len as usize <= THRESHOLD {
        return Err(DecodeError::TooSmall { len });
    }
    Ok(Some(Announcement { digest, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 1 << 20;

    fn sample() -> Announcement {
        Announcement::of(&vec![3u8; THRESHOLD + 1])
    }

    #[test]
    fn round_trip_and_body_check() {
        let body = vec![5u8; 50_000];
        let a = Announcement::of(&body);
        let bytes = a.encode();
        assert_eq!(bytes.len(), Announcement::LEN);
        assert_eq!(classify(&bytes, LIMIT), Ok(Some(a)));
        assert!(a.matches(&body));
        let mut wrong = body.clone();
        wrong[7] ^= 1;
        assert!(!a.matches(&wrong), "a changed byte is caught");
        assert!(!a.matches(&body[1..]), "a shorter body is caught");
    }

    #[test]
    fn every_refusal() {
        let good = sample().encode();
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            classify(&long, LIMIT),
            Err(DecodeError::Length {
                len: Announcement::LEN + 1,
                expected: Announcement::LEN
            })
        );
        assert!(matches!(
            classify(&good[..Announcement::LEN - 1], LIMIT),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            classify(MAGIC, LIMIT),
            Err(DecodeError::Length { .. })
        ));
        let mut v2 = good.clone();
        v2[MAGIC.len()] = 2;
        assert_eq!(classify(&v2, LIMIT), Err(DecodeError::Version(2)));
        let big = Announcement {
            len: LIMIT as u32 + 1,
            ..sample()
        };
        assert!(matches!(
            classify(&big.encode(), LIMIT),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            classify(
                &Announcement {
                    len: u32::MAX,
                    ..sample()
                }
                .encode(),
                LIMIT
            ),
            Err(DecodeError::TooLarge {
                len: u32::MAX,
                limit: LIMIT
            })
        );
        let small = Announcement {
            len: THRESHOLD as u32,
            ..sample()
        };
        assert!(matches!(
            classify(&small.encode(), LIMIT),
            Err(DecodeError::TooSmall { .. })
        ));
    }

    #[test]
    fn ordinary_messages_are_not_announcements() {
        assert_eq!(classify(b"", LIMIT), Ok(None));
        assert_eq!(classify(b"fmbul", LIMIT), Ok(None));
        // Longer than any announcement may be: an envelope whose genesis hash happened to start
        // with the magic is still read as an envelope.
        let mut envelope_like = MAGIC.to_vec();
        envelope_like.resize(MAX_TAGGED_LEN + 1, 0);
        assert_eq!(classify(&envelope_like, LIMIT), Ok(None));
    }

    #[test]
    fn a_signed_envelope_is_never_tagged() {
        use crate::wire::{Envelope, Payload, Status};
        let key = fedmesh_crypto::identity::SecretKey::from_seed([9u8; 32]);
        let env = Envelope::seal(
            fedmesh_crypto::Hash::ZERO,
            0,
            0,
            Payload::Status(Status {
                height: 0,
                head: fedmesh_crypto::Hash::ZERO,
                sent_at_ms: 0,
            }),
            &key,
        );
        assert!(env.encode().len() > MAX_TAGGED_LEN);
    }

    proptest! {
        #[test]
        fn classify_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = classify(&data, LIMIT);
        }

        #[test]
        fn tagged_bytes_decode_only_canonically(digest in any::<[u8; 32]>(), len in any::<u32>()) {
            let a = Announcement { digest, len };
            match classify(&a.encode(), LIMIT) {
                Ok(Some(b)) => prop_assert_eq!(a, b),
                Ok(None) => prop_assert!(false, "tagged bytes read as a message"),
                Err(_) => prop_assert!(len as usize > LIMIT || len as usize <= THRESHOLD),
            }
        }
    }
}
