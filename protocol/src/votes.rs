//! Eviction votes: a member whose anomaly score stays over the threshold is voted out.
//!
//! A [`Vote`] names the round, the voter, the target, the target's score and a hash of the
//! evidence (see [`crate::robust::score::PeerScore::evidence`]); the voter signs it
//! ([`SignedVote`]). A [`Tally`] counts votes per target among the **active** members: votes from
//! non-members or evicted members count for nothing, a member's second vote on the same target is
//! refused (and blamed on it), and votes that have not reached a quorum within the expiry expire.
//! When the votes of a quorum (by default 2/3 of the active members, rounded up) are in, the tally
//! returns an [`EvictionRecord`] for the audit log; from the record's `effective_round` on, the
//! target is out of the member set.
//!
//! ```
//! use fedmesh_protocol::crypto::{identity::SecretKey, Hash};
//! use fedmesh_protocol::votes::{Outcome, SignedVote, Tally, Vote};
//! let keys: Vec<SecretKey> = (1..=4u8).map(|i| SecretKey::from_seed([i; 32])).collect();
//! let net = Hash::of("net", b"");
//! let mut tally = Tally::new(net, keys.iter().enumerate().map(|(i, k)| (i as u32, k.public())), 2.0 / 3.0, 3);
//! for voter in 0..3u32 {
//!     let vote = Vote { round: 5, voter, target: 3, score: 9.0, evidence: Hash::ZERO };
//!     let out = tally.add(&SignedVote::sign(net, vote, &keys[voter as usize]), 5).unwrap();
//!     if voter == 2 {
//!         assert!(matches!(out, Outcome::Evicted(ref r) if r.target == 3 && r.effective_round == 6));
//!     }
//! }
//! assert!(!tally.is_active(3));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::crypto::{hash::Hasher, identity, Hash};

/// A member's vote to evict `target`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The round whose scores motivated the vote.
    pub round: u64,
    /// Who votes.
    pub voter: u32,
    /// Who should be evicted.
    pub target: u32,
    /// The target's (EWMA) score as the voter computed it.
    pub score: f32,
    /// Hash of the evidence (the target's scored features).
    pub evidence: Hash,
}

/// A vote with the voter's ed25519 signature, bound to the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedVote {
    pub vote: Vote,
    pub signature: identity::Signature,
}

fn signing_hash(genesis: Hash, vote: &Vote) -> Hash {
    let mut h = Hasher::new("fedmesh eviction vote v1");
    h.update(genesis.as_bytes());
    h.update_field(&crate::codec::encode(vote));
    h.finalize()
}

impl SignedVote {
    /// Sign `vote` as its voter on network `genesis`.
    pub fn sign(genesis: Hash, vote: Vote, key: &identity::SecretKey) -> SignedVote {
        let signature = key.sign(signing_hash(genesis, &vote).as_bytes());
        SignedVote { vote, signature }
    }

    /// Check the signature against the voter's key.
    pub fn verify(&self, genesis: Hash, key: &identity::PublicKey) -> Result<(), VoteError> {
        key.verify(
            signing_hash(genesis, &self.vote).as_bytes(),
            &self.signature,
        )
        .map_err(|_| VoteError::Signature {
            culprit: self.vote.voter,
        })
    }
}

/// The record of an eviction, appended to the audit log: the votes that reached the quorum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvictionRecord {
    /// The evicted member.
    pub target: u32,
    /// The round in which the quorum was reached.
    pub round: u64,
    /// The first round without the target.
    pub effective_round: u64,
    /// Active members when the quorum was reached.
    pub active: u32,
    /// Votes needed out of `active`.
    pub needed: u32,
    /// The votes, sorted by voter; at least `needed`.
    pub votes: Vec<SignedVote>,
}

impl EvictionRecord {
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::codec::DecodeError> {
        crate::codec::decode(bytes, crate::codec::HARD_LIMIT)
    }

    /// Check the record on its own against the members' keys: every vote is for the target,
    /// signed by a distinct member in `keys`, and there are at least `needed` of them, and
    /// `needed` is the quorum of `active`. Whether `active` was the real active set at that point
    /// of the log is for the caller, who knows the earlier evictions.
    pub fn verify(
        &self,
        genesis: Hash,
        keys: impl Fn(u32) -> Option<identity::PublicKey>,
        quorum: f64,
    ) -> Result<(), VoteError> {
        if self.needed as usize != needed(self.active as usize, quorum) {
            return Err(VoteError::Record(format!(
                "needs {} of {} votes, the quorum {quorum} says {}",
                self.needed,
                self.active,
                needed(self.active as usize, quorum)
            )));
        }
        let mut voters = BTreeSet::new();
        for v in &self.votes {
            if v.vote.target != self.target {
                return Err(VoteError::Record(format!(
                    "a vote by {} is against {}, not {}",
                    v.vote.voter, v.vote.target, self.target
                )));
            }
            let key = keys(v.vote.voter).ok_or(VoteError::NotMember {
                culprit: v.vote.voter,
            })?;
            v.verify(genesis, &key)?;
            if !voters.insert(v.vote.voter) {
                return Err(VoteError::Duplicate {
                    culprit: v.vote.voter,
                    target: self.target,
                });
            }
        }
        if voters.len() < self.needed as usize {
            return Err(VoteError::Record(format!(
                "{} votes, {} needed",
                voters.len(),
                self.needed
            )));
        }
        Ok(())
    }
}

/// Votes needed out of `active` members for a quorum `q` (rounded up, at least 1).
pub fn needed(active: usize, q: f64) -> usize {
    // The epsilon keeps 2/3 of 3 at 2 although 2.0/3.0·3 rounds to 2.0000000000000004.
    ((q * active as f64) - 1e-9).ceil().max(1.0) as usize
}

/// A vote the tally refuses. `culprit` is the voter to blame.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum VoteError {
    #[error("voter {culprit} is not an active member; its vote counts for nothing")]
    NotMember { culprit: u32 },
    #[error("vote of member {culprit} has a bad signature")]
    Signature { culprit: u32 },
    #[error("member {culprit} voted twice against {target}")]
    Duplicate { culprit: u32, target: u32 },
    #[error("vote of member {culprit} targets {target}, who is not an active member")]
    Target { culprit: u32, target: u32 },
    #[error(
        "vote of member {culprit} is from round {round}, expired or from the future at round {now}"
    )]
    Stale { culprit: u32, round: u64, now: u64 },
    #[error("eviction record: {0}")]
    Record(String),
}

/// What happened to an accepted vote.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Counted; `votes` of `needed` are in.
    Counted { votes: usize, needed: usize },
    /// The same signed vote again (gossip redelivery): nothing changes.
    Known,
    /// This vote completed a quorum: the target is evicted.
    Evicted(EvictionRecord),
}

/// Eviction votes of one network, by target, among the active members.
#[derive(Debug, Clone)]
pub struct Tally {
    genesis: Hash,
    active: BTreeMap<u32, identity::PublicKey>,
    quorum: f64,
    expiry: u64,
    pending: BTreeMap<u32, BTreeMap<u32, SignedVote>>,
    evicted: BTreeSet<u32>,
}

impl Tally {
    /// A tally for the `active` members (index and key), quorum `quorum` (share of active
    /// members), votes valid for `expiry` rounds from their own round.
    pub fn new(
        genesis: Hash,
        active: impl IntoIterator<Item = (u32, identity::PublicKey)>,
        quorum: f64,
        expiry: u64,
    ) -> Tally {
        Tally {
            genesis,
            active: active.into_iter().collect(),
            quorum,
            expiry: expiry.max(1),
            pending: BTreeMap::new(),
            evicted: BTreeSet::new(),
        }
    }

    /// True if `member` is active (not evicted, and a member at all).
    pub fn is_active(&self, member: u32) -> bool {
        self.active.contains_key(&member)
    }

    /// The active members.
    pub fn active(&self) -> impl Iterator<Item = u32> + '_ {
        self.active.keys().copied()
    }

    /// Members evicted by this tally (or marked with [`Tally::evict`]).
    pub fn evicted(&self) -> &BTreeSet<u32> {
        &self.evicted
    }

    /// Votes needed now.
    pub fn needed(&self) -> usize {
        needed(self.active.len(), self.quorum)
    }

    /// Pending votes against `target`.
    pub fn votes_against(&self, target: u32) -> usize {
        self.pending.get(&target).map_or(0, |v| v.len())
    }

    /// Count `vote` at round `now`; a vote that completes a quorum evicts its target at once
    /// (what the in-process drills use; a networked node uses [`Tally::count`] and
    /// [`Tally::ready`], because its member set changes only through the log).
    pub fn add(&mut self, vote: &SignedVote, now: u64) -> Result<Outcome, VoteError> {
        let outcome = self.count(vote, now)?;
        let target = vote.vote.target;
        if !matches!(outcome, Outcome::Counted { votes, needed } if votes >= needed) {
            return Ok(outcome);
        }
        let record = self
            .ready(now)
            .into_iter()
            .find(|r| r.target == target)
            .ok_or_else(|| VoteError::Record("a quorum without a record".into()))?;
        self.evict(target);
        Ok(Outcome::Evicted(record))
    }

    /// Count `vote` at round `now` without evicting anyone: `Counted` says how many votes against
    /// the target are in and how many are needed.
    pub fn count(&mut self, vote: &SignedVote, now: u64) -> Result<Outcome, VoteError> {
        let v = vote.vote;
        let key = self
            .active
            .get(&v.voter)
            .ok_or(VoteError::NotMember { culprit: v.voter })?;
        vote.verify(self.genesis, key)?;
        if v.round > now || v.round + self.expiry <= now {
            return Err(VoteError::Stale {
                culprit: v.voter,
                round: v.round,
                now,
            });
        }
        if !self.active.contains_key(&v.target) {
            return Err(VoteError::Target {
                culprit: v.voter,
                target: v.target,
            });
        }
        let votes = self.pending.entry(v.target).or_default();
        if let Some(earlier) = votes.get(&v.voter) {
            return if earlier == vote {
                Ok(Outcome::Known)
            } else {
                Err(VoteError::Duplicate {
                    culprit: v.voter,
                    target: v.target,
                })
            };
        }
        votes.insert(v.voter, vote.clone());
        Ok(Outcome::Counted {
            votes: votes.len(),
            needed: self.needed(),
        })
    }

    /// Eviction records for every target with a quorum of votes still valid at round `now`,
    /// recorded in round `now` (out from `now + 1`), counted over the active members; sorted by
    /// target. Nothing changes: the caller evicts once a record is in the log.
    pub fn ready(&self, now: u64) -> Vec<EvictionRecord> {
        let need = self.needed();
        self.pending
            .iter()
            .filter_map(|(target, votes)| {
                let valid: Vec<SignedVote> = votes
                    .values()
                    .filter(|v| v.vote.round <= now && v.vote.round + self.expiry > now)
                    .cloned()
                    .collect();
                (valid.len() >= need).then(|| EvictionRecord {
                    target: *target,
                    round: now,
                    effective_round: now + 1,
                    active: self.active.len() as u32,
                    needed: need as u32,
                    votes: valid,
                })
            })
            .collect()
    }

    /// Add `member` to the active set (its admission is in the log): from now on it may vote and
    /// be voted against, and the quorum counts it.
    pub fn admit(&mut self, member: u32, key: identity::PublicKey) {
        if !self.evicted.contains(&member) {
            self.active.insert(member, key);
        }
    }

    /// Remove `member` from the active set (its eviction is in the log): its pending votes and the
    /// votes against it are dropped.
    pub fn evict(&mut self, member: u32) {
        self.active.remove(&member);
        self.evicted.insert(member);
        self.pending.remove(&member);
        for votes in self.pending.values_mut() {
            votes.remove(&member);
        }
    }

    /// Drop votes whose validity has run out at round `now` (cast `expiry` or more rounds ago);
    /// returns them.
    pub fn expire(&mut self, now: u64) -> Vec<SignedVote> {
        let mut gone = Vec::new();
        for votes in self.pending.values_mut() {
            let old: Vec<u32> = votes
                .iter()
                .filter(|(_, v)| v.vote.round + self.expiry <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                gone.extend(votes.remove(&k));
            }
        }
        self.pending.retain(|_, v| !v.is_empty());
        gone
    }

    /// Votes for a fresh round: after [`Tally::expire`], a voter may vote again on a target whose
    /// earlier vote expired.
    pub fn has_voted(&self, voter: u32, target: u32) -> bool {
        self.pending
            .get(&target)
            .is_some_and(|v| v.contains_key(&voter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> Vec<identity::SecretKey> {
        (1..=n)
            .map(|i| identity::SecretKey::from_seed([i; 32]))
            .collect()
    }

    fn net() -> Hash {
        Hash::of("test net", b"")
    }

    fn tally(keys: &[identity::SecretKey]) -> Tally {
        Tally::new(
            net(),
            keys.iter().enumerate().map(|(i, k)| (i as u32, k.public())),
            2.0 / 3.0,
            3,
        )
    }

    fn vote(keys: &[identity::SecretKey], round: u64, voter: u32, target: u32) -> SignedVote {
        SignedVote::sign(
            net(),
            Vote {
                round,
                voter,
                target,
                score: 7.5,
                evidence: Hash::of("evidence", &[voter as u8]),
            },
            &keys[voter as usize],
        )
    }

    #[test]
    fn quorum_is_two_thirds_rounded_up() {
        assert_eq!(needed(3, 2.0 / 3.0), 2);
        assert_eq!(needed(6, 2.0 / 3.0), 4);
        assert_eq!(needed(20, 2.0 / 3.0), 14);
        assert_eq!(needed(16, 2.0 / 3.0), 11);
        assert_eq!(needed(1, 2.0 / 3.0), 1);
        assert_eq!(needed(10, 1.0), 10);
    }

    #[test]
    fn quorum_evicts_and_the_record_verifies() {
        let k = keys(6);
        let mut t = tally(&k);
        assert_eq!(t.needed(), 4);
        for voter in 0..3 {
            assert_eq!(
                t.add(&vote(&k, 2, voter, 5), 2).unwrap(),
                Outcome::Counted {
                    votes: voter as usize + 1,
                    needed: 4
                }
            );
        }
        assert!(t.is_active(5));
        let Outcome::Evicted(rec) = t.add(&vote(&k, 3, 3, 5), 3).unwrap() else {
            panic!("no eviction")
        };
        assert_eq!((rec.target, rec.round, rec.effective_round), (5, 3, 4));
        assert_eq!((rec.active, rec.needed), (6, 4));
        assert_eq!(
            rec.votes.iter().map(|v| v.vote.voter).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(!t.is_active(5));
        assert_eq!(t.evicted().iter().copied().collect::<Vec<_>>(), [5]);
        // The evicted member can neither vote nor be voted against any more.
        assert_eq!(
            t.add(&vote(&k, 3, 5, 0), 3).unwrap_err(),
            VoteError::NotMember { culprit: 5 }
        );
        assert_eq!(
            t.add(&vote(&k, 3, 4, 5), 3).unwrap_err(),
            VoteError::Target {
                culprit: 4,
                target: 5
            }
        );
        // The quorum now counts 5 active members.
        assert_eq!(t.needed(), 4);

        let key = |i: u32| k.get(i as usize).map(|s| s.public());
        rec.verify(net(), key, 2.0 / 3.0).unwrap();
        let back = EvictionRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back, rec);
        let mut short = rec.clone();
        short.votes.pop();
        assert!(matches!(
            short.verify(net(), key, 2.0 / 3.0),
            Err(VoteError::Record(_))
        ));
        let mut forged = rec.clone();
        forged.votes[1].vote.score = 0.5;
        assert_eq!(
            forged.verify(net(), key, 2.0 / 3.0).unwrap_err(),
            VoteError::Signature { culprit: 1 }
        );
        let mut doubled = rec.clone();
        doubled.votes[3] = doubled.votes[2].clone();
        assert!(matches!(
            doubled.verify(net(), key, 2.0 / 3.0),
            Err(VoteError::Duplicate { culprit: 2, .. })
        ));
        let mut lax = rec;
        lax.needed = 1;
        lax.votes.truncate(1);
        assert!(matches!(
            lax.verify(net(), key, 2.0 / 3.0),
            Err(VoteError::Record(_))
        ));
    }

    #[test]
    fn one_vote_per_member_and_target() {
        let k = keys(6);
        let mut t = tally(&k);
        let v = vote(&k, 2, 1, 4);
        t.add(&v, 2).unwrap();
        // The same message again is harmless.
        assert_eq!(t.add(&v, 2).unwrap(), Outcome::Known);
        // A different second vote by the same member is refused and blamed.
        assert_eq!(
            t.add(&vote(&k, 3, 1, 4), 3).unwrap_err(),
            VoteError::Duplicate {
                culprit: 1,
                target: 4
            }
        );
        assert_eq!(t.votes_against(4), 1);
        // A vote against another target is separate.
        assert!(matches!(
            t.add(&vote(&k, 3, 1, 2), 3).unwrap(),
            Outcome::Counted { votes: 1, .. }
        ));
        assert!(t.has_voted(1, 2) && t.has_voted(1, 4) && !t.has_voted(2, 4));
    }

    #[test]
    fn non_members_and_forgeries_count_for_nothing() {
        let k = keys(7);
        // Member 6 exists as a key but is not in the tally's member set.
        let mut t = tally(&k[..6]);
        assert_eq!(
            t.add(&vote(&k, 2, 6, 0), 2).unwrap_err(),
            VoteError::NotMember { culprit: 6 }
        );
        // A vote claiming voter 1 but signed by member 2.
        let mut forged = vote(&k, 2, 2, 0);
        forged.vote.voter = 1;
        assert_eq!(
            t.add(&forged, 2).unwrap_err(),
            VoteError::Signature { culprit: 1 }
        );
        // Signed for another network.
        let other = SignedVote::sign(Hash::ZERO, vote(&k, 2, 1, 0).vote, &k[1]);
        assert_eq!(
            t.add(&other, 2).unwrap_err(),
            VoteError::Signature { culprit: 1 }
        );
        assert_eq!(t.votes_against(0), 0);
    }

    #[test]
    fn votes_without_quorum_expire() {
        let k = keys(6);
        let mut t = tally(&k);
        t.add(&vote(&k, 2, 0, 5), 2).unwrap();
        t.add(&vote(&k, 3, 1, 5), 3).unwrap();
        t.add(&vote(&k, 4, 2, 5), 4).unwrap();
        // Expiry 3: the round-2 vote is valid in rounds 2, 3 and 4.
        assert!(t.expire(4).is_empty());
        let gone = t.expire(5);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].vote.voter, 0);
        assert_eq!(t.votes_against(5), 2);
        // A vote older than the expiry is refused outright, as is one from the future.
        assert!(matches!(
            t.add(&vote(&k, 2, 3, 5), 5),
            Err(VoteError::Stale { culprit: 3, .. })
        ));
        assert!(matches!(
            t.add(&vote(&k, 9, 3, 5), 5),
            Err(VoteError::Stale { culprit: 3, .. })
        ));
        // Member 0 may vote again now that its vote expired; with 4 votes the quorum is reached.
        t.add(&vote(&k, 5, 0, 5), 5).unwrap();
        assert!(matches!(
            t.add(&vote(&k, 5, 3, 5), 5).unwrap(),
            Outcome::Evicted(_)
        ));
        assert!(t.expire(100).is_empty());
    }

    #[test]
    fn evicting_a_voter_drops_its_pending_votes() {
        let k = keys(6);
        let mut t = tally(&k);
        t.add(&vote(&k, 2, 5, 0), 2).unwrap();
        t.add(&vote(&k, 2, 4, 0), 2).unwrap();
        t.evict(5);
        assert_eq!(t.votes_against(0), 1);
        assert_eq!(t.active().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }
}
