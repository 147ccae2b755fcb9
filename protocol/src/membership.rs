//! The member set as the audit log has it: the genesis members, plus the identities admitted by
//! admission records, minus the members evicted by eviction records.
//!
//! Every node derives it the same way, by replaying the round records in order from genesis
//! ([`Members::apply`]): at startup, when it catches up the log from a peer, and in
//! `fedmesh audit verify`. A record that breaks the rules (a vote from a non-member, an eviction
//! of someone who is not active, an admission of a former member, a wrong index, too few votes)
//! is refused and its height named.
//!
//! Indices are never reused: genesis members are `0..n`, admitted members get `n, n+1, …` in the
//! order the log admits them, and an evicted index stays taken.
//!
//! Admitted members have no BLS threshold share and are not Paillier key holders: the genesis
//! members remain the committee that signs log entries (and, in mode `paillier`, decrypts).

use std::collections::{BTreeMap, BTreeSet};

use crate::admission::{AdmissionError, JoinRequest, MAX_ADMISSIONS_PER_ROUND};
use crate::audit::{RoundRecord, VerifyError};
use crate::crypto::{identity, Hash};
use crate::genesis::Genesis;

/// Most members a network may ever have (genesis and admitted, evicted ones included).
pub const MAX_MEMBERS: usize = 4096;

/// One identity that is or was a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its member index.
    pub index: u32,
    /// Its ed25519 key.
    pub public_key: identity::PublicKey,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Where it listens.
    pub addrs: Vec<String>,
    /// The round from which it is a member: `None` for genesis members.
    pub admitted_from: Option<u64>,
}

/// What one round record changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Members evicted by the record.
    pub evicted: Vec<u32>,
    /// Members admitted by the record.
    pub admitted: Vec<u32>,
}

/// The member set at some height of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    genesis_hash: Hash,
    quorum: f64,
    vote_expiry: u64,
    genesis_len: u32,
    all: BTreeMap<u32, Member>,
    evicted: BTreeSet<u32>,
    /// (round, member) of the equivocation evidence in the records of the last
    /// [`crate::audit::EVIDENCE_WINDOW`] rounds: a piece may be recorded once.
    evidence: BTreeSet<(u64, u32)>,
}

impl Members {
    /// The member set at genesis.
    pub fn new(genesis: &Genesis, genesis_hash: Hash) -> Members {
        Members {
            genesis_hash,
            quorum: genesis.spec.robust.quorum,
            vote_expiry: genesis.spec.robust.vote_expiry_rounds.max(1),
            genesis_len: genesis.members.len() as u32,
            all: genesis
                .members
                .iter()
                .map(|m| {
                    (
                        m.index,
                        Member {
                            index: m.index,
                            public_key: m.public_key,
                            peer_id: m.peer_id.clone(),
                            addrs: m.addrs.clone(),
                            admitted_from: None,
                        },
                    )
                })
                .collect(),
            evicted: BTreeSet::new(),
            evidence: BTreeSet::new(),
        }
    }

    /// A member set from its parts, for simulations without a genesis file: `members` are the
    /// founding members (indices `0..n` in order), `quorum` and `vote_expiry` as in
    /// `[spec.robust]`.
    pub fn from_parts(
        genesis_hash: Hash,
        quorum: f64,
        vote_expiry: u64,
        members: impl IntoIterator<Item = (identity::PublicKey, String)>,
    ) -> Members {
        let all: BTreeMap<u32, Member> = members
            .into_iter()
            .enumerate()
            .map(|(i, (public_key, peer_id))| {
                let index = i as u32;
                (
                    index,
                    Member {
                        index,
                        public_key,
                        peer_id,
                        addrs: Vec::new(),
                        admitted_from: None,
                    },
                )
            })
            .collect();
        Members {
            genesis_hash,
            quorum,
            vote_expiry: vote_expiry.max(1),
            genesis_len: all.len() as u32,
            all,
            evicted: BTreeSet::new(),
            evidence: BTreeSet::new(),
        }
    }

    /// How many pieces of equivocation evidence the window of recent records holds.
    pub fn recorded_evidence(&self) -> usize {
        self.evidence.len()
    }

    /// The network's genesis hash (what votes and requests are bound to).
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    /// The quorum share of active members that evictions and admissions need.
    pub fn quorum(&self) -> f64 {
        self.quorum
    }

    /// How many rounds a vote stays valid.
    pub fn vote_expiry(&self) -> u64 {
        self.vote_expiry
    }

    /// Members in the genesis file (`0..n`).
    pub fn genesis_len(&self) -> u32 {
        self.genesis_len
    }

    /// The member with `index`, active or evicted.
    pub fn get(&self, index: u32) -> Option<&Member> {
        self.all.get(&index)
    }

    /// The key of member `index` (active or evicted).
    pub fn key(&self, index: u32) -> Option<identity::PublicKey> {
        self.all.get(&index).map(|m| m.public_key)
    }

    /// True if `index` is a member now (admitted or in the genesis, not evicted).
    pub fn is_active(&self, index: u32) -> bool {
        self.all.contains_key(&index) && !self.evicted.contains(&index)
    }

    /// The active members' indices, sorted.
    pub fn active(&self) -> impl Iterator<Item = u32> + '_ {
        self.all
            .keys()
            .copied()
            .filter(|i| !self.evicted.contains(i))
    }

    /// The active members, sorted by index.
    pub fn active_members(&self) -> impl Iterator<Item = &Member> + '_ {
        self.all
            .values()
            .filter(|m| !self.evicted.contains(&m.index))
    }

    /// How many members are active.
    pub fn active_len(&self) -> usize {
        self.all.len() - self.evicted.len()
    }

    /// Members evicted so far.
    pub fn evicted(&self) -> &BTreeSet<u32> {
        &self.evicted
    }

    /// Members admitted after genesis (evicted ones included), sorted by index.
    pub fn admitted(&self) -> impl Iterator<Item = &Member> + '_ {
        self.all.values().filter(|m| m.admitted_from.is_some())
    }

    /// The index the next admitted member gets.
    pub fn next_index(&self) -> u32 {
        self.all.keys().next_back().map_or(0, |i| i + 1)
    }

    /// The member (active or evicted) with this key.
    pub fn by_key(&self, key: &identity::PublicKey) -> Option<&Member> {
        self.all.values().find(|m| m.public_key == *key)
    }

    /// The member (active or evicted) with this peer id.
    pub fn by_peer(&self, peer_id: &str) -> Option<&Member> {
        self.all.values().find(|m| m.peer_id == peer_id)
    }

    /// May this identity be admitted: its key and peer id belong to no current or former member,
    /// and the network is not full.
    pub fn check_joiner(&self, request: &JoinRequest) -> Result<(), AdmissionError> {
        if let Some(m) = self.by_key(&request.public_key) {
            return Err(if self.evicted.contains(&m.index) {
                AdmissionError::Evicted { index: m.index }
            } else {
                AdmissionError::AlreadyMember { index: m.index }
            });
        }
        if self.by_peer(&request.peer_id).is_some() {
            return Err(AdmissionError::PeerIdTaken(request.peer_id.clone()));
        }
        if self.all.len() >= MAX_MEMBERS {
            return Err(AdmissionError::Record(format!(
                "the network has {MAX_MEMBERS} members, the most it may have"
            )));
        }
        Ok(())
    }

    /// Check a round record against the member set before it and, if it passes, apply its
    /// evictions and admissions (both effective from the next round). Nothing changes on error.
    ///
    /// Checked: everyone listed as participant or dropout is an active member; evictions have
    /// distinct active targets in order, belong to this round, count the quorum over the members
    /// active now, and carry valid signed votes of distinct active members within the expiry
    /// window; admissions the same (see [`crate::admission::AdmissionRecord::verify`]), with
    /// consecutive indices from [`Members::next_index`] and at most
    /// [`MAX_ADMISSIONS_PER_ROUND`] of them. Quorums count the members active before the record.
    /// Equivocation evidence already in one of the last [`crate::audit::EVIDENCE_WINDOW`]
    /// records is not recorded again (a late piece would otherwise count twice in a score).
    pub fn apply(&mut self, height: u64, record: &RoundRecord) -> Result<Change, VerifyError> {
        let fail = |reason: String| VerifyError::Membership { height, reason };
        let round = record.round;
        for e in &record.evidence {
            if self.evidence.contains(&(e.round, e.member)) {
                return Err(VerifyError::Evidence {
                    height,
                    member: e.member,
                    reason: format!(
                        "its equivocation in round {} is already in an earlier record",
                        e.round
                    ),
                });
            }
        }
        let listed = record
            .participants
            .iter()
            .map(|c| c.member)
            .chain(record.dropouts.iter().copied());
        for m in listed {
            if self.evicted.contains(&m) {
                return Err(fail(format!(
                    "member {m} appears in round {round} after its eviction"
                )));
            }
            if !self.all.contains_key(&m) {
                return Err(fail(format!(
                    "member {m} appears in round {round} but is not a member"
                )));
            }
        }
        let active = self.active_len();
        let mut last_target = None;
        for rec in &record.evictions {
            let target = rec.target;
            if last_target.is_some_and(|t| t >= target) {
                return Err(fail("evictions must have distinct targets in order".into()));
            }
            last_target = Some(target);
            if !self.is_active(target) {
                return Err(fail(format!("member {target} is not a member to evict")));
            }
            if rec.round != round || rec.effective_round != round + 1 {
                return Err(fail(format!(
                    "eviction of member {target} is for round {} (out from {}), recorded in round {round}",
                    rec.round, rec.effective_round
                )));
            }
            if rec.active as usize != active {
                return Err(fail(format!(
                    "eviction of member {target} counts {} active members; the log says {active}",
                    rec.active
                )));
            }
            for v in &rec.votes {
                if self.evicted.contains(&v.vote.voter) {
                    return Err(fail(format!(
                        "member {} votes after its own eviction",
                        v.vote.voter
                    )));
                }
                if v.vote.round > round || v.vote.round + self.vote_expiry <= round {
                    return Err(fail(format!(
                        "a vote of member {} from round {} is not valid in round {round}",
                        v.vote.voter, v.vote.round
                    )));
                }
            }
            rec.verify(self.genesis_hash, |i| self.active_key(i), self.quorum)
                .map_err(|source| VerifyError::Eviction {
                    height,
                    target,
                    source,
                })?;
        }
        if record.admissions.len() > MAX_ADMISSIONS_PER_ROUND {
            return Err(fail(format!(
                "{} admissions in one round, at most {MAX_ADMISSIONS_PER_ROUND}",
                record.admissions.len()
            )));
        }
        let mut keys = BTreeSet::new();
        let mut peers = BTreeSet::new();
        for (i, rec) in record.admissions.iter().enumerate() {
            let joiner = &rec.request.request;
            if !keys.insert(joiner.public_key.to_bytes()) || !peers.insert(joiner.peer_id.as_str())
            {
                return Err(VerifyError::Admission {
                    height,
                    index: rec.index,
                    source: AdmissionError::Record(
                        "the same identity is admitted twice in one round".into(),
                    ),
                });
            }
            rec.verify(self, self.next_index() + i as u32, round)
                .map_err(|source| VerifyError::Admission {
                    height,
                    index: rec.index,
                    source,
                })?;
        }
        // Apply: evictions, then admissions (both only count from the next round, and the checks
        // above used the set before this record).
        let evicted: Vec<u32> = record.evictions.iter().map(|r| r.target).collect();
        self.evicted.extend(evicted.iter().copied());
        self.evidence
            .extend(record.evidence.iter().map(|e| (e.round, e.member)));
        // Evidence of a round no later record may take can be forgotten.
        let oldest = (round + 1).saturating_sub(crate::audit::EVIDENCE_WINDOW);
        self.evidence.retain(|&(r, _)| r >= oldest);
        let mut admitted = Vec::with_capacity(record.admissions.len());
        for rec in &record.admissions {
            let r = &rec.request.request;
            self.all.insert(
                rec.index,
                Member {
                    index: rec.index,
                    public_key: r.public_key,
                    peer_id: r.peer_id.clone(),
                    addrs: r.addrs.clone(),
                    admitted_from: Some(rec.effective_round),
                },
            );
            admitted.push(rec.index);
        }
        Ok(Change { evicted, admitted })
    }

    fn active_key(&self, index: u32) -> Option<identity::PublicKey> {
        if self.evicted.contains(&index) {
            return None;
        }
        self.key(index)
    }
}
