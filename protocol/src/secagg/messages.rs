//! The messages of a secure-aggregation round. Members sign theirs ([`super::Signed`]); what the
//! coordinator relays is either a collection of signed messages or is checked by other means
//! (sealed shares are authenticated by their AEAD key, which only the two members of a pair hold).

use serde::{Deserialize, Serialize};

use super::{Body, Signed};
use crate::crypto::secagg::{aead, agree, shamir};
use crate::crypto::Hash;

/// Phase 0: a member's two fresh X25519 public keys for the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advertise {
    pub round: u64,
    pub member: u32,
    /// Agreed secrets with it key the AEAD of shares.
    pub enc_key: agree::PublicKey,
    /// Agreed secrets with it seed the pairwise masks; its secret is Shamir-shared.
    pub mask_key: agree::PublicKey,
}

/// Coordinator → members: every advertisement it collected (U1), each signed by its member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyList {
    pub round: u64,
    pub keys: Vec<Signed<Advertise>>,
}

impl KeyList {
    /// What members bind their shares to, so that they all work on the same key list.
    pub fn hash(&self) -> Hash {
        Hash::of("fedmesh secagg v1 key list", &crate::codec::encode(self))
    }
}

/// One sealed plaintext for one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedShare {
    pub recipient: u32,
    pub sealed: aead::Sealed,
}

/// Phase 1: a member's shares of its mask key and self-mask seed, one sealed message per neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shares {
    pub round: u64,
    pub member: u32,
    /// The key list the member worked from.
    pub key_list: Hash,
    pub shares: Vec<SealedShare>,
}

/// Coordinator → one member: the sealed shares addressed to it, by sender (U2 ∩ its neighbours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharesFor {
    pub round: u64,
    pub recipient: u32,
    pub shares: Vec<(u32, aead::Sealed)>,
}

/// Phase 2: the masked input, packed (see [`super::quant::pack`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedInput {
    pub round: u64,
    pub member: u32,
    /// Encoded as one byte string (bincode's length and bytes, the same bytes as a sequence of
    /// `u8`), which serde writes in one copy rather than element by element.
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

impl std::fmt::Debug for MaskedInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MaskedInput {{ round: {}, member: {}, {} bytes }}",
            self.round,
            self.member,
            self.values.len()
        )
    }
}

/// Coordinator → members: who sent masked input (U3), sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survivors {
    pub round: u64,
    pub members: Vec<u32>,
}

/// Phase 3: a member's signature on the survivor set it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    pub round: u64,
    pub member: u32,
    pub survivors: Vec<u32>,
}

/// Coordinator → members: at least `threshold` signatures on one survivor set (U4 signed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyList {
    pub round: u64,
    pub survivors: Vec<u32>,
    pub signatures: Vec<Signed<Consistency>>,
}

/// Phase 4: shares of the self-mask seeds of survivors and of the mask keys of members that
/// dropped after sharing — never both for one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmask {
    pub round: u64,
    pub member: u32,
    pub self_seed_shares: Vec<(u32, shamir::Share)>,
    pub mask_key_shares: Vec<(u32, shamir::Share)>,
}

macro_rules! body {
    ($t:ty, $kind:literal) => {
        impl Body for $t {
            const DOMAIN: &'static str = super::DOMAIN;
            const KIND: &'static str = $kind;
            type Params = super::RoundParams;
            type Error = super::SecaggError;
            fn sender(&self) -> u32 {
                self.member
            }
            fn round(&self) -> u64 {
                self.round
            }
        }
    };
}

body!(Advertise, "advertise");
body!(Shares, "shares");
body!(MaskedInput, "masked input");
body!(Consistency, "consistency");
body!(Unmask, "unmask");
