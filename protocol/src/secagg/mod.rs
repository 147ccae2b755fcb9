//! Secure aggregation, mode `secagg`: Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning" (CCS 2017), the variant with signatures that is secure
//! against an active coordinator, with optional SecAgg+ neighbourhoods (Bell et al., CCS 2020).
//!
//! Each member's quantized input is hidden behind a self-mask and pairwise masks that cancel only in
//! the sum. The phases are typed values: a member goes
//! [`member::Start`] → [`member::AwaitKeys`] → [`member::AwaitShares`] → [`member::AwaitSurvivors`]
//! → [`member::AwaitConsistency`] → its [`Unmask`] message, and the coordinator
//! [`coordinator::CollectKeys`] → … → [`coordinator::CollectUnmask`] → the [`Outcome`]; each step
//! consumes the previous state, so phases cannot run out of order.
//!
//! | phase | member sends | coordinator relays |
//! |---|---|---|
//! | 0 advertise keys | two X25519 public keys, signed | the signed key list (every member checks every signature) |
//! | 1 share keys | Shamir shares of its mask key and self-mask seed, sealed per recipient | each member's sealed shares |
//! | 2 masked input | y = x + PRG(b) + Σ ±PRG(s_uv) | the survivor set U3 |
//! | 3 consistency | its signature on U3 | ≥ t signatures on the same U3 |
//! | 4 unmask | shares of b_v for v ∈ U3, of the mask key of v ∉ U3 | — (the coordinator removes the masks) |
//!
//! A member never reveals both shares of the same member, refuses to continue with fewer than
//! `threshold` members at any phase, and refuses to unmask unless `threshold` members signed the same
//! survivor set it was given — so a coordinator that shows different members different survivor
//! sets is caught. Members who drop at any phase are recovered from the shares of the others.

pub mod coordinator;
pub mod graph;
pub mod member;
mod messages;
pub mod quant;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::secagg::{aead, agree, mask, shamir};
use crate::crypto::{identity, Hash};

pub use messages::{
    Advertise, Consistency, ConsistencyList, KeyList, MaskedInput, SealedShare, Shares, SharesFor,
    Survivors, Unmask,
};

/// Everything the members of one round agree on before it starts.
#[derive(Debug, Clone)]
pub struct RoundParams {
    /// The network's genesis hash: every signature is bound to it.
    pub genesis: Hash,
    pub round: u64,
    /// Active members and their ed25519 keys.
    pub members: BTreeMap<u32, identity::PublicKey>,
    /// Shares needed to recover a member's secrets, out of its neighbours; also the fewest members
    /// any phase may continue with.
    pub threshold: usize,
    /// The ring Z_(2^bits) of the masked vectors (see [`quant::Quantizer::ring_bits`]).
    pub bits: u32,
    /// Length of every input vector.
    pub len: usize,
    /// Who shares with and masks against whom.
    pub graph: graph::Graph,
}

impl RoundParams {
    /// Check the parameters make a round that can finish and reveals nothing.
    pub fn validate(&self) -> Result<(), SecaggError> {
        let n = self.members.len();
        if self.threshold < 2 || self.threshold > n {
            return Err(SecaggError::Params(format!(
                "threshold {} must be between 2 and the member count {n}",
                self.threshold
            )));
        }
        if self.bits == 0 || self.bits > 64 {
            return Err(SecaggError::Params(format!(
                "ring bits {} must be 1..=64",
                self.bits
            )));
        }
        for m in self.members.keys() {
            // A member's secrets are held by its neighbours and itself.
            let degree = self.graph.neighbours(*m).len() + 1;
            if degree < self.threshold {
                return Err(SecaggError::Params(format!(
                    "member {m} has {} neighbours, too few for the threshold {}: raise the degree or lower the threshold",
                    degree - 1,
                    self.threshold
                )));
            }
        }
        Ok(())
    }

    fn stream(&self, purpose: mask::Purpose) -> mask::Stream {
        mask::Stream {
            round: self.round,
            purpose,
        }
    }

    fn key(&self, member: u32) -> Result<&identity::PublicKey, SecaggError> {
        self.members
            .get(&member)
            .ok_or(SecaggError::NotMember { culprit: member })
    }
}

pub use crate::signed::{Body, Signed};
use crate::signed::{Refused, RoundKeys};

/// The signing context of this protocol's messages.
pub(crate) const DOMAIN: &str = "fedmesh secagg v1 message";

impl RoundKeys for RoundParams {
    fn genesis(&self) -> Hash {
        self.genesis
    }
    fn round(&self) -> u64 {
        self.round
    }
    fn key(&self, member: u32) -> Option<&identity::PublicKey> {
        self.members.get(&member)
    }
}

impl From<Refused> for SecaggError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::WrongRound {
                culprit,
                found,
                expected,
            } => SecaggError::WrongRound {
                culprit,
                found,
                expected,
            },
            Refused::NotMember { culprit } => SecaggError::NotMember { culprit },
            Refused::Signature { culprit, what } => SecaggError::Signature { culprit, what },
        }
    }
}

/// What the coordinator learns: the sum of the survivors' inputs, and who was dropped where.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Σ inputs of `survivors`, in Z_(2^bits).
    pub sum: Vec<u64>,
    /// U3: members whose input is in the sum.
    pub survivors: Vec<u32>,
    /// Advertised keys but did not share them (U1 \ U2).
    pub dropped_before_sharing: Vec<u32>,
    /// Shared keys but sent no masked input (U2 \ U3): their masks were removed from their shares.
    pub dropped_after_sharing: Vec<u32>,
    /// Sent input but did not take part in unmasking (U3 \ U5).
    pub dropped_while_unmasking: Vec<u32>,
}

/// Why a phase failed. Where a member is to blame, `culprit` names it; [`SecaggError::Coordinator`]
/// blames the coordinator; [`SecaggError::TooFew`] aborts the round without revealing anything.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SecaggError {
    #[error("round parameters: {0}")]
    Params(String),
    #[error("member {culprit} is not a member of this round")]
    NotMember { culprit: u32 },
    #[error("message from member {culprit} is for round {found}, this is round {expected}")]
    WrongRound {
        culprit: u32,
        found: u64,
        expected: u64,
    },
    #[error("{what} message from member {culprit} has an invalid signature")]
    Signature { culprit: u32, what: &'static str },
    #[error("member {culprit} sent a second {what} message")]
    Duplicate { culprit: u32, what: &'static str },
    #[error("member {culprit}: {reason}")]
    Invalid { culprit: u32, reason: String },
    #[error("the coordinator sent an inconsistent or invalid message: {0}")]
    Coordinator(String),
    #[error("aborting the round: {phase} has {have} members, {need} needed; nothing is revealed")]
    TooFew {
        phase: &'static str,
        have: usize,
        need: usize,
    },
    #[error("cannot recover member {member}'s {what}: {reason}")]
    Recovery {
        member: u32,
        what: &'static str,
        reason: String,
    },
}

impl SecaggError {
    /// The member to blame, if one is.
    pub fn culprit(&self) -> Option<u32> {
        match self {
            SecaggError::NotMember { culprit }
            | SecaggError::WrongRound { culprit, .. }
            | SecaggError::Signature { culprit, .. }
            | SecaggError::Duplicate { culprit, .. }
            | SecaggError::Invalid { culprit, .. } => Some(*culprit),
            _ => None,
        }
    }
}

/// The plaintext a member seals for one neighbour: its shares of the sender's two secrets.
#[derive(Serialize, Deserialize)]
struct SharePlaintext {
    sender: u32,
    recipient: u32,
    mask_key: shamir::Share,
    self_seed: shamir::Share,
}

fn share_header(round: u64, sender: u32, recipient: u32) -> aead::Header {
    aead::Header {
        round,
        sender,
        recipient,
    }
}

/// Shamir evaluation point of a member (0 is the secret itself).
fn x_of(member: u32) -> u32 {
    member + 1
}

/// The pairwise mask seed of `u` and `v`, from `u`'s mask key pair and `v`'s public mask key.
fn pair_seed(
    params: &RoundParams,
    mine: &agree::KeyPair,
    u: u32,
    v: u32,
    theirs: &agree::PublicKey,
) -> Result<mask::Seed, SecaggError> {
    let secret = mine.agree(theirs).map_err(|e| SecaggError::Invalid {
        culprit: v,
        reason: e.to_string(),
    })?;
    Ok(crate::crypto::secagg::kdf::derive(
        &secret,
        crate::crypto::secagg::kdf::Purpose::MaskSeed,
        params.round,
        u,
        v,
    )
    .into())
}

/// Add (`+`) member u's pairwise mask with v into `acc` the way u does: + for v > u, − for v < u.
fn apply_pair(
    acc: &mut [u64],
    params: &RoundParams,
    seed: &mask::Seed,
    u: u32,
    v: u32,
    undo: bool,
) {
    let stream = params.stream(mask::Purpose::Pairwise);
    // bits were validated, so the mask functions cannot fail.
    let add = (v > u) != undo;
    let r = if add {
        mask::add_mask(acc, seed, stream, params.bits)
    } else {
        mask::sub_mask(acc, seed, stream, params.bits)
    };
    debug_assert!(r.is_ok());
}

/// The secure-aggregation session of `attempt` in `round`: fresh keys for every attempt, so a
/// failover never reuses a coordinator's half-finished state.
pub fn session(round: u64, attempt: u32) -> u64 {
    round * 64 + u64::from(attempt.min(63))
}

/// Groups a round may have at most (group-wise secure aggregation, `[spec.robust] group_size`):
/// the group index takes the low bits of a group's session number.
pub const MAX_GROUPS: u32 = 1 << 12;

/// The session of group `group` in `attempt` of `round`, when a round's members are split into
/// groups that each run their own session. The session number is in every signed message, in the
/// key derivation of the pairwise masks and in the headers of the sealed shares, so a message,
/// share or mask of one group is worthless in another. Distinct from every [`session`] number of a
/// network without groups only in that such a network never uses both.
pub fn group_session(round: u64, attempt: u32, group: u32) -> u64 {
    session(round, attempt) * u64::from(MAX_GROUPS) + u64::from(group.min(MAX_GROUPS - 1))
}

/// The group of a [`group_session`] number.
pub fn group_of_session(session: u64) -> u32 {
    (session % u64::from(MAX_GROUPS)) as u32
}

/// Exactly the messages a coordinator used in one session. Every member gossips its own messages
/// and sees the coordinator's relays, so any member can [`replay`] the coordinator's computation
/// and check the sum it claims.
#[derive(Debug, Clone)]
pub struct Transcript<'a> {
    pub key_list: &'a KeyList,
    /// From the members of U2 (the recipients of the relay).
    pub shares: Vec<&'a Signed<Shares>>,
    /// From the members of U3.
    pub masked: Vec<&'a Signed<MaskedInput>>,
    pub consistency: &'a ConsistencyList,
    /// From the members of U5.
    pub unmask: Vec<&'a Signed<Unmask>>,
}

/// Run the coordinator's phases on a transcript: the same checks, the same sum.
pub fn replay(
    params: std::sync::Arc<RoundParams>,
    t: &Transcript<'_>,
) -> Result<Outcome, SecaggError> {
    let mut c = coordinator::CollectKeys::new(params)?;
    for a in &t.key_list.keys {
        c.add(a.clone())?;
    }
    let (mut c, list) = c.finish()?;
    if &list != t.key_list {
        return Err(SecaggError::Coordinator(
            "the key list is not in canonical order".into(),
        ));
    }
    for s in &t.shares {
        c.add((*s).clone())?;
    }
    let (mut c, _) = c.finish()?;
    for m in &t.masked {
        c.add((*m).clone())?;
    }
    let (mut c, survivors) = c.finish()?;
    if survivors.members != t.consistency.survivors {
        return Err(SecaggError::Coordinator(
            "the survivor set does not match the masked inputs".into(),
        ));
    }
    for s in &t.consistency.signatures {
        c.add(s.clone())?;
    }
    let (mut c, _) = c.finish()?;
    for u in &t.unmask {
        c.add((*u).clone())?;
    }
    c.finish()
}
