//! Admission: how a node that is not in the genesis becomes a member.
//!
//! A joiner signs a [`JoinRequest`] with its own ed25519 identity ([`SignedJoinRequest`]): its
//! public key, libp2p peer id, listen addresses, the network's genesis hash, the time it made the
//! request and a random nonce. The signature proves it holds the key; the genesis hash binds the
//! request to one network; members vote only on requests younger than their configured maximum
//! age ([`JoinRequest::check_fresh`]), so a request cannot be replayed forever.
//!
//! Each member that approves the request (its operator said so, or the key is on its allow-list)
//! signs an [`AdmissionVote`] for the request's hash ([`SignedJoinRequest::hash`]). A [`Ballot`]
//! counts the votes of the **active** members, as [`crate::votes::Tally`] does for evictions; with
//! a quorum (the same share of active members as evictions) it produces an [`AdmissionRecord`]:
//! the request, the member index the joiner gets (the next free index) and the votes. The round's
//! coordinator puts the record into its round record; from the next round on the joiner is a
//! member ([`crate::membership::Members::apply`] replays this from the log).
//!
//! Rules the log enforces: a key or peer id that is or ever was a member (evicted ones included)
//! cannot be admitted; each admission takes the next free index in order; votes are from
//! distinct active members, signed, for this request, and valid in the record's round.
//!
//! ```
//! use fedmesh_protocol::crypto::{identity::SecretKey, Hash};
//! use fedmesh_protocol::admission::{AdmissionVote, JoinRequest, SignedAdmissionVote, SignedJoinRequest};
//! let net = Hash::of("net", b"");
//! let joiner = SecretKey::from_seed([9; 32]);
//! let request = JoinRequest {
//!     genesis: net,
//!     public_key: joiner.public(),
//!     peer_id: "12D3KooWExample".into(),
//!     addrs: vec!["/ip4/127.0.0.1/tcp/7005".into()],
//!     issued_at_ms: 1_700_000_000_000,
//!     nonce: 7,
//! };
//! let signed = SignedJoinRequest::sign(request, &joiner).unwrap();
//! signed.verify(net).unwrap();
//! let member = SecretKey::from_seed([1; 32]);
//! let vote = AdmissionVote { round: 3, voter: 0, request: signed.hash() };
//! SignedAdmissionVote::sign(net, vote, &member).verify(net, &member.public()).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::crypto::{hash::Hasher, identity, Hash};
use crate::membership::Members;
use crate::votes::needed;

/// Most listen addresses a join request may carry.
pub const MAX_ADDRS: usize = 8;
/// Longest listen address (characters).
pub const MAX_ADDR_LEN: usize = 256;
/// Longest peer id (characters); an ed25519 libp2p peer id has 52.
pub const MAX_PEER_ID_LEN: usize = 128;
/// Most admissions one round record may carry.
pub const MAX_ADMISSIONS_PER_ROUND: usize = 16;
/// Most join requests a [`Ballot`] keeps pending at once; further ones are refused until some
/// are admitted or expire.
pub const MAX_PENDING_REQUESTS: usize = 64;
/// Largest encoded join request (bounded decoding of requests from outsiders).
pub const MAX_REQUEST_BYTES: usize = 4096;

/// What a joiner asks for: to become a member of network `genesis` as this identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The genesis hash of the network it wants to join.
    pub genesis: Hash,
    /// Its ed25519 identity: signs its messages once admitted.
    pub public_key: identity::PublicKey,
    /// Its libp2p peer id (derived from `public_key`; members check the derivation).
    pub peer_id: String,
    /// Where it listens (multiaddrs).
    pub addrs: Vec<String>,
    /// When it made the request (Unix ms, its clock). Members refuse requests older than their
    /// configured maximum age.
    pub issued_at_ms: u64,
    /// Random: two requests of the same identity at the same millisecond still differ.
    pub nonce: u64,
}

impl JoinRequest {
    /// Sizes within bounds and a printable peer id and addresses.
    pub fn check_bounds(&self) -> Result<(), AdmissionError> {
        let bad = |reason: String| Err(AdmissionError::Malformed(reason));
        if self.peer_id.is_empty() || self.peer_id.len() > MAX_PEER_ID_LEN {
            return bad(format!(
                "peer id of {} characters (1 to {MAX_PEER_ID_LEN} allowed)",
                self.peer_id.len()
            ));
        }
        if !self.peer_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return bad("peer id is not base58".into());
        }
        if self.addrs.len() > MAX_ADDRS {
            return bad(format!(
                "{} addresses (at most {MAX_ADDRS})",
                self.addrs.len()
            ));
        }
        if let Some(a) = self.addrs.iter().find(|a| {
            a.is_empty() || a.len() > MAX_ADDR_LEN || !a.chars().all(|c| c.is_ascii_graphic())
        }) {
            return bad(format!(
                "address {:?} is empty, longer than {MAX_ADDR_LEN} characters or not printable",
                a.chars().take(40).collect::<String>()
            ));
        }
        Ok(())
    }

    /// Members vote only on fresh requests: made at most `max_age_ms` before `now_ms` and not
    /// more than `max_skew_ms` after it (clocks differ).
    pub fn check_fresh(
        &self,
        now_ms: u64,
        max_age_ms: u64,
        max_skew_ms: u64,
    ) -> Result<(), AdmissionError> {
        if self.issued_at_ms > now_ms.saturating_add(max_skew_ms)
            || self.issued_at_ms.saturating_add(max_age_ms) < now_ms
        {
            return Err(AdmissionError::Stale {
                issued_at_ms: self.issued_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    fn signing_hash(&self) -> Hash {
        let mut h = Hasher::new("fedmesh join request v1");
        h.update_field(&crate::codec::encode(self));
        h.finalize()
    }
}

/// A join request signed by the joiner's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJoinRequest {
    pub request: JoinRequest,
    pub signature: identity::Signature,
}

impl SignedJoinRequest {
    /// Sign `request` with the joiner's key, which must be the key the request names.
    pub fn sign(
        request: JoinRequest,
        key: &identity::SecretKey,
    ) -> Result<SignedJoinRequest, AdmissionError> {
        if key.public() != request.public_key {
            return Err(AdmissionError::Malformed(
                "the request names another key than the one signing it".into(),
            ));
        }
        request.check_bounds()?;
        let signature = key.sign(request.signing_hash().as_bytes());
        Ok(SignedJoinRequest { request, signature })
    }

    /// Bounds, network and the joiner's signature.
    pub fn verify(&self, genesis: Hash) -> Result<(), AdmissionError> {
        self.request.check_bounds()?;
        if self.request.genesis != genesis {
            return Err(AdmissionError::WrongNetwork {
                found: self.request.genesis,
                expected: genesis,
            });
        }
        self.request
            .public_key
            .verify(self.request.signing_hash().as_bytes(), &self.signature)
            .map_err(|_| AdmissionError::RequestSignature)
    }

    /// What admission votes name: the hash of the signed request.
    pub fn hash(&self) -> Hash {
        Hash::of("fedmesh signed join request v1", &self.encode())
    }

    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    /// Decode a request of at most [`MAX_REQUEST_BYTES`] (it comes from an outsider).
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::codec::DecodeError> {
        crate::codec::decode(bytes, MAX_REQUEST_BYTES)
    }
}

/// A member's vote to admit the joiner of request `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionVote {
    /// The round in which the member voted (votes expire like eviction votes).
    pub round: u64,
    /// Who votes.
    pub voter: u32,
    /// [`SignedJoinRequest::hash`] of the request voted for.
    pub request: Hash,
}

/// An admission vote with the voter's ed25519 signature, bound to the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAdmissionVote {
    pub vote: AdmissionVote,
    pub signature: identity::Signature,
}

fn vote_signing_hash(genesis: Hash, vote: &AdmissionVote) -> Hash {
    let mut h = Hasher::new("fedmesh admission vote v1");
    h.update(genesis.as_bytes());
    h.update_field(&crate::codec::encode(vote));
    h.finalize()
}

impl SignedAdmissionVote {
    /// Sign `vote` as its voter on network `genesis`.
    pub fn sign(
        genesis: Hash,
        vote: AdmissionVote,
        key: &identity::SecretKey,
    ) -> SignedAdmissionVote {
        let signature = key.sign(vote_signing_hash(genesis, &vote).as_bytes());
        SignedAdmissionVote { vote, signature }
    }

    /// Check the signature against the voter's key.
    pub fn verify(&self, genesis: Hash, key: &identity::PublicKey) -> Result<(), AdmissionError> {
        key.verify(
            vote_signing_hash(genesis, &self.vote).as_bytes(),
            &self.signature,
        )
        .map_err(|_| AdmissionError::VoteSignature {
            culprit: self.vote.voter,
        })
    }
}

/// The record of an admission, carried in a round record: the request, the index the joiner
/// gets, and the votes of a quorum of the members active in that round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionRecord {
    /// The joiner's signed request.
    pub request: SignedJoinRequest,
    /// The member index it gets: the next free index.
    pub index: u32,
    /// The round in which the quorum was reached (the record's round).
    pub round: u64,
    /// The first round in which it is a member.
    pub effective_round: u64,
    /// Active members when the quorum was reached.
    pub active: u32,
    /// Votes needed out of `active`.
    pub needed: u32,
    /// The votes, sorted by voter; at least `needed`.
    pub votes: Vec<SignedAdmissionVote>,
}

/// Why a join request, an admission vote or an admission record is refused. `culprit` is the
/// member to blame where there is one.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("malformed join request: {0}")]
    Malformed(String),
    #[error("join request is for network {found}, this network is {expected}")]
    WrongNetwork { found: Hash, expected: Hash },
    #[error("join request signature does not verify against the key it names")]
    RequestSignature,
    #[error(
        "join request made at {issued_at_ms} ms is too old or from the future at {now_ms} ms; \
         the joiner must send a fresh one"
    )]
    Stale { issued_at_ms: u64, now_ms: u64 },
    #[error("the joiner's key is already member {index}")]
    AlreadyMember { index: u32 },
    #[error("the joiner's key was member {index}, evicted; an evicted identity cannot rejoin")]
    Evicted { index: u32 },
    #[error("peer id {0} is already used by a member")]
    PeerIdTaken(String),
    #[error("voter {culprit} is not an active member; its admission vote counts for nothing")]
    NotMember { culprit: u32 },
    #[error("admission vote of member {culprit} has a bad signature")]
    VoteSignature { culprit: u32 },
    #[error("member {culprit} voted twice on one join request")]
    Duplicate { culprit: u32 },
    #[error("admission vote of member {culprit} names another join request")]
    OtherRequest { culprit: u32 },
    #[error("admission vote of member {culprit} is from round {round}, expired or from the future at round {now}")]
    StaleVote { culprit: u32, round: u64, now: u64 },
    #[error("{0} join requests are pending already; this one is refused until some are decided")]
    Full(usize),
    #[error("no pending join request with hash {0}")]
    UnknownRequest(Hash),
    #[error("admission record: {0}")]
    Record(String),
}

/// What happened to an accepted admission vote.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Counted; `votes` of `needed` are in.
    Counted { votes: usize, needed: usize },
    /// The same signed vote again (gossip redelivery): nothing changes.
    Known,
}

#[derive(Debug, Clone)]
struct Pending {
    request: SignedJoinRequest,
    votes: BTreeMap<u32, SignedAdmissionVote>,
}

/// Pending join requests and the admission votes for them, among the active members.
///
/// The ballot does not change the member set: a node counts votes here, the round's coordinator
/// takes [`Ballot::ready`] into its record, and once the record is in the log the node applies it
/// to its [`Members`] and calls [`Ballot::admitted`].
#[derive(Debug, Clone)]
pub struct Ballot {
    genesis: Hash,
    quorum: f64,
    expiry: u64,
    pending: BTreeMap<Hash, Pending>,
}

impl Ballot {
    /// A ballot for network `genesis`: quorum share of active members, votes valid for `expiry`
    /// rounds from their own round.
    pub fn new(genesis: Hash, quorum: f64, expiry: u64) -> Ballot {
        Ballot {
            genesis,
            quorum,
            expiry: expiry.max(1),
            pending: BTreeMap::new(),
        }
    }

    /// Take up `request` (verified, and not of a current or former member). Returns its hash.
    /// A request already pending is accepted again without change.
    pub fn propose(
        &mut self,
        members: &Members,
        request: &SignedJoinRequest,
    ) -> Result<Hash, AdmissionError> {
        let hash = request.hash();
        if self.pending.contains_key(&hash) {
            return Ok(hash);
        }
        request.verify(self.genesis)?;
        members.check_joiner(&request.request)?;
        if self.pending.len() >= MAX_PENDING_REQUESTS {
            return Err(AdmissionError::Full(self.pending.len()));
        }
        self.pending.insert(
            hash,
            Pending {
                request: request.clone(),
                votes: BTreeMap::new(),
            },
        );
        Ok(hash)
    }

    /// The pending request with this hash.
    pub fn request(&self, hash: &Hash) -> Option<&SignedJoinRequest> {
        self.pending.get(hash).map(|p| &p.request)
    }

    /// Pending requests with the number of votes each has, by hash.
    pub fn pending(&self) -> impl Iterator<Item = (Hash, &SignedJoinRequest, usize)> + '_ {
        self.pending
            .iter()
            .map(|(h, p)| (*h, &p.request, p.votes.len()))
    }

    /// The votes counted for request `hash`, by voter.
    pub fn votes(&self, hash: &Hash) -> impl Iterator<Item = &SignedAdmissionVote> + '_ {
        self.pending
            .get(hash)
            .into_iter()
            .flat_map(|p| p.votes.values())
    }

    /// Count `vote` at round `now` (a vote of round `now + 1` is kept too). Its request must have
    /// been [`Ballot::propose`]d.
    pub fn count(
        &mut self,
        members: &Members,
        vote: &SignedAdmissionVote,
        now: u64,
    ) -> Result<Outcome, AdmissionError> {
        let v = vote.vote;
        if !members.is_active(v.voter) {
            return Err(AdmissionError::NotMember { culprit: v.voter });
        }
        let key = members
            .key(v.voter)
            .ok_or(AdmissionError::NotMember { culprit: v.voter })?;
        vote.verify(self.genesis, &key)?;
        // One round ahead is kept: the voter committed the last round before this member did.
        // [`Ballot::ready`] only uses votes valid in the round it records.
        if v.round > now + 1 || v.round + self.expiry <= now {
            return Err(AdmissionError::StaleVote {
                culprit: v.voter,
                round: v.round,
                now,
            });
        }
        let need = needed(members.active_len(), self.quorum);
        let pending = self
            .pending
            .get_mut(&v.request)
            .ok_or(AdmissionError::UnknownRequest(v.request))?;
        if let Some(earlier) = pending.votes.get(&v.voter) {
            return if earlier == vote {
                Ok(Outcome::Known)
            } else {
                Err(AdmissionError::Duplicate { culprit: v.voter })
            };
        }
        pending.votes.insert(v.voter, vote.clone());
        Ok(Outcome::Counted {
            votes: pending.votes.len(),
            needed: need,
        })
    }

    /// Admission records for every request with a quorum of votes from active members still
    /// valid at round `now`, recorded in round `now` (members from `now + 1`), in order of request
    /// hash, with consecutive indices from [`Members::next_index`]; at most one per identity and
    /// at most [`MAX_ADMISSIONS_PER_ROUND`]. Nothing changes: the caller applies them once a
    /// record is in the log.
    pub fn ready(&self, members: &Members, now: u64) -> Vec<AdmissionRecord> {
        let active = members.active_len();
        let need = needed(active, self.quorum);
        let mut keys = BTreeSet::new();
        let mut out = Vec::new();
        for p in self.pending.values() {
            if out.len() >= MAX_ADMISSIONS_PER_ROUND {
                break;
            }
            let key = p.request.request.public_key.to_bytes();
            if members.check_joiner(&p.request.request).is_err() || keys.contains(&key) {
                continue;
            }
            let votes: Vec<SignedAdmissionVote> = p
                .votes
                .values()
                .filter(|v| {
                    members.is_active(v.vote.voter)
                        && v.vote.round <= now
                        && v.vote.round + self.expiry > now
                })
                .cloned()
                .collect();
            if votes.len() < need {
                continue;
            }
            keys.insert(key);
            out.push(AdmissionRecord {
                request: p.request.clone(),
                index: members.next_index() + out.len() as u32,
                round: now,
                effective_round: now + 1,
                active: active as u32,
                needed: need as u32,
                votes,
            });
        }
        out
    }

    /// A record admitting (or refusing) identities is in the log: drop every pending request of
    /// an identity that is now a member or former member, and votes of members no longer active.
    pub fn settle(&mut self, members: &Members) {
        self.pending
            .retain(|_, p| members.check_joiner(&p.request.request).is_ok());
        for p in self.pending.values_mut() {
            p.votes.retain(|voter, _| members.is_active(*voter));
        }
    }

    /// Drop votes that have run out at round `now`, and requests without any vote left that are
    /// older than `max_age_ms` at `now_ms`.
    pub fn expire(&mut self, now: u64, now_ms: u64, max_age_ms: u64) {
        let expiry = self.expiry;
        for p in self.pending.values_mut() {
            p.votes.retain(|_, v| v.vote.round + expiry > now);
        }
        self.pending.retain(|_, p| {
            !p.votes.is_empty()
                || p.request.request.issued_at_ms.saturating_add(max_age_ms) >= now_ms
        });
    }

    /// True if `voter` has a counted vote on request `hash`.
    pub fn has_voted(&self, voter: u32, hash: &Hash) -> bool {
        self.pending
            .get(hash)
            .is_some_and(|p| p.votes.contains_key(&voter))
    }
}

impl AdmissionRecord {
    /// Check the record on its own against the member set before its round: the request (network,
    /// signature, bounds, not a current or former member's key or peer id), the index (`expected`,
    /// the next free one), the round, the quorum over the active members, and every vote (a
    /// distinct active member, valid signature, this request, within the expiry window).
    pub fn verify(
        &self,
        members: &Members,
        expected_index: u32,
        round: u64,
    ) -> Result<(), AdmissionError> {
        self.request.verify(members.genesis_hash())?;
        members.check_joiner(&self.request.request)?;
        if self.index != expected_index {
            return Err(AdmissionError::Record(format!(
                "gives index {}, the next free index is {expected_index}",
                self.index
            )));
        }
        if self.round != round || self.effective_round != round + 1 {
            return Err(AdmissionError::Record(format!(
                "is for round {} (member from {}), recorded in round {round}",
                self.round, self.effective_round
            )));
        }
        let active = members.active_len();
        if self.active as usize != active {
            return Err(AdmissionError::Record(format!(
                "counts {} active members; the log says {active}",
                self.active
            )));
        }
        let need = needed(active, members.quorum());
        if self.needed as usize != need {
            return Err(AdmissionError::Record(format!(
                "needs {} of {} votes, the quorum {} says {need}",
                self.needed,
                self.active,
                members.quorum()
            )));
        }
        let hash = self.request.hash();
        let expiry = members.vote_expiry();
        let mut voters = BTreeSet::new();
        for v in &self.votes {
            let voter = v.vote.voter;
            if !members.is_active(voter) {
                return Err(AdmissionError::NotMember { culprit: voter });
            }
            let key = members
                .key(voter)
                .ok_or(AdmissionError::NotMember { culprit: voter })?;
            v.verify(members.genesis_hash(), &key)?;
            if v.vote.request != hash {
                return Err(AdmissionError::OtherRequest { culprit: voter });
            }
            if v.vote.round > round || v.vote.round + expiry <= round {
                return Err(AdmissionError::StaleVote {
                    culprit: voter,
                    round: v.vote.round,
                    now: round,
                });
            }
            if !voters.insert(voter) {
                return Err(AdmissionError::Duplicate { culprit: voter });
            }
        }
        if voters.len() < need {
            return Err(AdmissionError::Record(format!(
                "{} votes, {need} needed",
                voters.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
