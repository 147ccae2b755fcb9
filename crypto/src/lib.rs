//! Cryptography for fedmesh: pure functions and types, no I/O and no async.
//!
//! - [`Hash`]: 32-byte blake3 digests with domain separation ([`hash::Hasher`]).
//! - [`identity`]: each member's ed25519 key; it signs every message and every audit record, and
//!   its public key is also the member's libp2p identity.
//! - [`bls`]: the threshold BLS key set (threshold_crypto) dealt at genesis; `t` signature shares
//!   over a round record combine into one signature that anyone checks against the genesis key.
//! - [`secagg`]: the building blocks of secure aggregation — X25519 key agreement, a blake3 KDF,
//!   ChaCha20-Poly1305 for shares, Shamir sharing of 32-byte secrets, and ChaCha20 masks over
//!   Z_(2^bits) expanded on all cores.
//! - [`paillier`]: threshold Paillier on GMP (Shoup / Damgård–Jurik, a trusted dealer): safe-prime
//!   keys, verifiable partial decryptions, packed fixed-point encoding, precomputed randomness.
//!
//! ```
//! use fedmesh_crypto::{identity, hash::Hasher};
//! let key = identity::SecretKey::from_seed([7u8; 32]);
//! let digest = Hasher::new("example").chain(b"hello").finalize();
//! let sig = key.sign(digest.as_bytes());
//! assert!(key.public().verify(digest.as_bytes(), &sig).is_ok());
//! ```
#![forbid(unsafe_code)]

pub mod bls;
pub mod hash;
pub mod identity;
pub mod paillier;
pub mod secagg;

pub use hash::Hash;

/// Encode and decode raw bytes as lowercase hex, the text form of keys and hashes in files.
pub mod hexbytes {
    pub use hex::{decode, encode, FromHexError};
}
