//! The fedmesh protocol: what members agree on and what they send each other. No I/O, no async,
//! no networking and no training — a model update is a flat `Vec<f32>` here — so every rule can be
//! run in-process and tested deterministically.
//!
//! - [`genesis`]: the founding file every member shares; its hash is height 0 of every log.
//! - [`model`]: the parameter layout of the MLP, its seeded initialisation and its hash.
//! - [`audit`]: audit-log entries and round records, their hash chain and their signatures.
//! - [`bulk`]: the gossip announcement of a message too large for gossip (digest and length).
//! - [`wire`]: signed envelopes and the messages of a round, with bounded decoding.
//! - [`round`]: one round of mode `plain` — updates in, a FedAvg record out, approvals to a
//!   threshold-signed entry.
//! - [`aggregate`]: FedAvg over flat updates, as the round uses it.
//! - [`robust`]: robust aggregation rules (median, trimmed mean, Krum, Multi-Krum, centered
//!   clipping, FoolsGold) and per-member anomaly scores with an EWMA history.
//! - [`evidence`]: proof that a member signed two different messages for one slot (equivocation).
//! - [`votes`]: signed eviction votes, their tally with quorum and expiry, eviction records.
//! - [`admission`]: signed join requests, admission votes and their ballot, admission records.
//! - [`membership`]: the member set as the log has it (genesis + admissions − evictions).
//! - [`secagg`]: secure aggregation (Bonawitz et al. 2017 with SecAgg+ neighbourhoods): typed member
//!   and coordinator phases, quantization into Z_(2^bits), neighbour graphs.
//! - [`paillier`]: mode `paillier` — members' encrypted packed updates, their homomorphic sum,
//!   verified partial decryptions (a bad one is rejected and its sender named) and the round summary.
//! - [`dp`]: differential-privacy accounting — ε of noisy training steps, and the noise for a
//!   target ε.
//!
//! ```
//! use fedmesh_protocol::aggregate;
//! let avg = aggregate::fedavg(&[(&[1.0f32, 0.0][..], 1), (&[3.0, 2.0][..], 3)]).unwrap();
//! assert_eq!(avg, vec![2.5, 1.5]);
//! ```
#![forbid(unsafe_code)]

pub mod admission;
pub mod aggregate;
pub mod audit;
pub mod bulk;
pub mod dp;
pub mod evidence;
pub mod genesis;
pub mod membership;
pub mod model;
pub mod paillier;
pub mod robust;
pub mod round;
pub mod secagg;
pub mod signed;
pub mod votes;
pub mod wire;

#[cfg(test)]
mod hostile_tests;

pub use fedmesh_crypto as crypto;
pub use fedmesh_crypto::Hash;

/// Binary encoding shared by every wire message and log entry: bincode 2, standard config, with a
/// hard limit so that a length prefix from a peer can never make us allocate more than this.
pub mod codec {
    use serde::{de::DeserializeOwned, Serialize};

    /// Upper bound for any single encoded object (a model update of ~16 M parameters).
    pub const HARD_LIMIT: usize = 64 << 20;

    /// Why bytes could not be decoded.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum DecodeError {
        #[error("{len} bytes exceed the limit of {limit}")]
        TooLarge { len: usize, limit: usize },
        #[error("malformed encoding: {0}")]
        Malformed(String),
        #[error("{0} trailing bytes after the object")]
        Trailing(usize),
    }

    pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .expect("encoding to a Vec cannot fail")
    }

    /// Decode exactly one object of at most `limit` bytes.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
        let limit = limit.min(HARD_LIMIT);
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let cfg = bincode::config::standard().with_limit::<HARD_LIMIT>();
        let (value, used) = bincode::serde::decode_from_slice(bytes, cfg)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - used));
        }
        Ok(value)
    }
}
