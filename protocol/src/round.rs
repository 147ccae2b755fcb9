//! One round of mode `plain`, as a state machine with no I/O.
//!
//! The node feeds it what arrives — updates, a proposal, approvals — and asks it what follows:
//! whether all updates are in, which record to propose, whether a proposal is consistent with what
//! this member saw, and, once `threshold` approvals of the same record are in, the signed entry to
//! append. Time is the node's business: it decides when to stop waiting for updates and when the
//! next coordinator takes over (`attempt`).
//!
//! Every member derives the same coordinator order from the log head: active members sorted by
//! `blake3(prev_hash ‖ peer_id)`; attempt `k` is coordinated by the `k`-th of them.

use std::collections::BTreeMap;

use crate::aggregate::{self, AggregateError};
use crate::audit::{Contribution, Entry, MemberSignature, Metrics, RoundRecord};
use crate::crypto::{bls, hash::Hasher, identity, Hash};
use crate::genesis::Genesis;
use crate::wire::{claim_message, Approval, Claim, Proposal, Update};

/// Largest FedAvg weight a member may claim; more is treated as a lie about its data.
pub const MAX_SAMPLES: u64 = 1_000_000_000;

/// Something a member sent that the round cannot accept. `culprit` is the member to blame.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RoundError {
    #[error("member {culprit} is not active in this round")]
    NotActive { culprit: u32 },
    #[error("update from member {culprit} was trained from model {found}, the round's model is {expected}")]
    WrongBase {
        culprit: u32,
        found: Hash,
        expected: Hash,
    },
    #[error("update from member {culprit} has {found} values, the model has {expected}")]
    WrongLength {
        culprit: u32,
        found: usize,
        expected: usize,
    },
    #[error("update from member {culprit} contains NaN or infinite values")]
    NonFinite { culprit: u32 },
    #[error("update from member {culprit} claims {samples} samples (must be 1..={MAX_SAMPLES})")]
    BadWeight { culprit: u32, samples: u64 },
    #[error("member {culprit} sent two different {what} messages in the same round")]
    Equivocation { culprit: u32, what: &'static str },
    #[error("proposal from member {culprit}: {reason}")]
    BadProposal { culprit: u32, reason: String },
    #[error("approval from member {culprit} has an invalid {which} signature")]
    BadApproval { culprit: u32, which: &'static str },
    #[error("cannot aggregate: {0}")]
    Aggregate(#[from] AggregateError),
    #[error("cannot aggregate with the robust rule: {0}")]
    Robust(#[from] crate::robust::AggregateError),
    #[error("this member already approved a different record for this round")]
    AlreadyApproved,
}

/// The record a member approved at this height, and the attempt that proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub signing_hash: Hash,
    pub attempt: u32,
}

/// How many members' approvals of later attempts release a lock at a height with `signers` active
/// signers and threshold `threshold`: n − t + 1. With that many, at most t − 1 members remain who
/// could ever approve the locked record, so it was not and will not be committed, and approving a
/// later one is safe.
pub fn unlock_needed(signers: usize, threshold: usize) -> usize {
    (signers + 1).saturating_sub(threshold).max(1)
}

/// The signers' public keys, by member index: what checks the claims of a moved approval.
pub fn signer_keys(genesis: &Genesis) -> Vec<identity::PublicKey> {
    genesis.members.iter().map(|m| m.public_key).collect()
}

/// The number of active signers of a record (members below `members`, the genesis member count):
/// its participants and dropouts partition the round's active members.
pub fn record_signers(members: usize, r: &crate::audit::RoundRecord) -> usize {
    r.participants
        .iter()
        .map(|c| c.member)
        .chain(r.dropouts.iter().copied())
        .filter(|m| (*m as usize) < members)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Most approvals kept per member and height: one per attempt at most for an honest member.
fn approval_cap(order_len: usize) -> usize {
    order_len.max(1)
}

/// Most distinct proposals whose attempt is remembered (honest coordinators send one each).
fn attempts_cap(order_len: usize) -> usize {
    4 * order_len.max(1)
}

/// What happened to an accepted update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    Duplicate,
}

/// State of one round at one member.
#[derive(Debug)]
pub struct Round {
    /// Round number (1 for the first round after genesis).
    pub round: u64,
    /// Height of the entry this round appends.
    pub height: u64,
    /// Hash of the log head the round builds on.
    pub prev_hash: Hash,
    /// The global model every update must be trained from.
    pub base_model: Hash,
    order: Vec<u32>,
    param_count: usize,
    threshold: usize,
    updates: BTreeMap<u32, (Update, Hash)>,
    proposal: Option<(Proposal, Hash)>,
    /// This member's lock: the record it approved (at most one per attempt, moving only to later
    /// attempts, see [`Round::try_move`]).
    approved: Option<Lock>,
    /// Every valid approval seen, by (member, signing hash): a member that moved its lock has
    /// signed two records, and both signatures count for their records.
    approvals: BTreeMap<(u32, Hash), Approval>,
    /// The attempt of every well-framed proposal seen, by signing hash: what makes an approval
    /// count as one for a later attempt.
    attempts: BTreeMap<Hash, u32>,
    /// A checked proposal of a later attempt than the adopted one: where the lock moves once the
    /// adopted record provably cannot gather the threshold.
    later: Option<(Proposal, Hash)>,
    /// Active members that hold a signing share (genesis members).
    signers: usize,
    /// How the participants' updates are combined (genesis `[spec.robust]`).
    rule: crate::robust::Rule,
    /// Members caught equivocating in this round ([`crate::evidence`]): none of their updates
    /// is aggregated.
    excluded: std::collections::BTreeSet<u32>,
}

/// The coordinator order for a round built on `prev_hash`: `active` members sorted by
/// `blake3(prev_hash ‖ peer_id)`.
pub fn coordinator_order(genesis: &Genesis, prev_hash: Hash, active: &[u32]) -> Vec<u32> {
    let mut keyed: Vec<(Hash, u32)> = active
        .iter()
        .filter_map(|i| genesis.member(*i))
        .map(|m| {
            let mut h = Hasher::new("fedmesh coordinator v1");
            h.update(prev_hash.as_bytes());
            h.update(m.peer_id.as_bytes());
            (h.finalize(), m.index)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| i).collect()
}

impl Round {
    pub fn new(
        genesis: &Genesis,
        height: u64,
        prev_hash: Hash,
        round: u64,
        base_model: Hash,
        active: &[u32],
    ) -> Round {
        Round {
            round,
            height,
            prev_hash,
            base_model,
            order: coordinator_order(genesis, prev_hash, active),
            param_count: genesis.layout().param_count(),
            threshold: genesis.threshold(),
            updates: BTreeMap::new(),
            proposal: None,
            approved: None,
            approvals: BTreeMap::new(),
            attempts: BTreeMap::new(),
            later: None,
            signers: active
                .iter()
                .filter(|m| (**m as usize) < genesis.members.len())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            rule: genesis.spec.robust.rule(),
            excluded: Default::default(),
        }
    }

    /// Active members, in coordinator order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    pub fn is_active(&self, member: u32) -> bool {
        self.order.contains(&member)
    }

    /// The coordinator of `attempt` (wrapping around the order).
    pub fn coordinator(&self, attempt: u32) -> u32 {
        self.order[attempt as usize % self.order.len()]
    }

    /// Accept `sender`'s update after checking it fits this round.
    pub fn add_update(&mut self, sender: u32, update: Update) -> Result<Added, RoundError> {
        let culprit = sender;
        if !self.is_active(sender) {
            return Err(RoundError::NotActive { culprit });
        }
        if self.excluded.contains(&sender) {
            return Err(RoundError::Equivocation {
                culprit,
                what: "update",
            });
        }
        if update.base_model != self.base_model {
            return Err(RoundError::WrongBase {
                culprit,
                found: update.base_model,
                expected: self.base_model,
            });
        }
        if update.delta.len() != self.param_count {
            return Err(RoundError::WrongLength {
                culprit,
                found: update.delta.len(),
                expected: self.param_count,
            });
        }
        if update.num_samples == 0 || update.num_samples > MAX_SAMPLES {
            return Err(RoundError::BadWeight {
                culprit,
                samples: update.num_samples,
            });
        }
        if !update.train_loss.is_finite() || update.delta.iter().any(|v| !v.is_finite()) {
            return Err(RoundError::NonFinite { culprit });
        }
        let hash = update.hash();
        if let Some((_, existing)) = self.updates.get(&sender) {
            return if *existing == hash {
                Ok(Added::Duplicate)
            } else {
                Err(RoundError::Equivocation {
                    culprit,
                    what: "update",
                })
            };
        }
        self.updates.insert(sender, (update, hash));
        Ok(Added::New)
    }

    pub fn has_update(&self, member: u32) -> bool {
        self.updates.contains_key(&member)
    }

    /// Leave `member` out of this round: it was caught signing two different updates (or other
    /// messages) for it. Its update is dropped and no other is taken; a proposal that lists it
    /// as a participant is refused. Different members may have received different versions
    /// first, so aggregating either would split them.
    pub fn exclude(&mut self, member: u32) {
        self.excluded.insert(member);
        self.updates.remove(&member);
    }

    /// Whether `member` was left out of this round for equivocating.
    pub fn is_excluded(&self, member: u32) -> bool {
        self.excluded.contains(&member)
    }

    pub fn update_count(&self) -> usize {
        self.updates.len()
    }

    /// Every active member's update is in.
    pub fn has_all_updates(&self) -> bool {
        self.order
            .iter()
            .all(|m| self.updates.contains_key(m) || self.excluded.contains(m))
    }

    /// The members whose updates are in, sorted.
    pub fn contributors(&self) -> Vec<u32> {
        self.updates.keys().copied().collect()
    }

    /// The updates of `participants` (sorted) combined with the genesis rule: FedAvg by default,
    /// or a robust rule of [`crate::robust`] (stateless ones only: every member must compute the
    /// same result from this round's updates alone).
    pub fn aggregate(&self, participants: &[u32]) -> Result<Vec<f32>, RoundError> {
        let mut updates = Vec::with_capacity(participants.len());
        for p in participants {
            let (u, _) = self.updates.get(p).ok_or_else(|| RoundError::BadProposal {
                culprit: *p,
                reason: format!("no update from member {p}"),
            })?;
            updates.push((*p, u));
        }
        if self.rule == crate::robust::Rule::Mean {
            let inputs: Vec<_> = updates
                .iter()
                .map(|(_, u)| (u.delta.as_slice(), u.num_samples))
                .collect();
            return Ok(aggregate::fedavg(&inputs)?);
        }
        let inputs: Vec<_> = updates
            .iter()
            .map(|(m, u)| crate::robust::Input::new(*m, &u.delta, u.num_samples))
            .collect();
        let mut state = crate::robust::State::default();
        Ok(crate::robust::aggregate(&self.rule, &inputs, &mut state)?.update)
    }

    /// The updates of `participants` as inputs of [`crate::robust`] (for anomaly scores).
    pub fn inputs(&self, participants: &[u32]) -> Vec<crate::robust::Input<'_>> {
        participants
            .iter()
            .filter_map(|p| self.updates.get(p).map(|(u, _)| (p, u)))
            .map(|(p, u)| crate::robust::Input::new(*p, &u.delta, u.num_samples))
            .collect()
    }

    /// The record a coordinator proposes for the updates it holds.
    // Each argument is one field of the record; a builder would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn propose(
        &self,
        attempt: u32,
        coordinator: u32,
        participants: &[u32],
        new_model: Hash,
        metrics: Metrics,
        now_ms: u64,
        evictions: Vec<crate::votes::EvictionRecord>,
    ) -> Proposal {
        let contributions = participants
            .iter()
            .filter_map(|p| self.updates.get(p).map(|(u, h)| (p, u, h)))
            .map(|(p, u, h)| Contribution {
                member: *p,
                num_samples: u.num_samples,
                update_hash: *h,
                train_loss: u.train_loss,
            })
            .collect();
        let mut dropouts: Vec<u32> = self
            .order
            .iter()
            .copied()
            .filter(|m| !participants.contains(m))
            .collect();
        dropouts.sort_unstable();
        Proposal {
            height: self.height,
            prev_hash: self.prev_hash,
            record: RoundRecord {
                evidence: Vec::new(),
                round: self.round,
                mode: crate::genesis::Mode::Plain,
                attempt,
                coordinator,
                base_model: self.base_model,
                new_model,
                participants: contributions,
                dropouts,
                metrics,
                proposed_at_ms: now_ms,
                secure: None,
                evictions,
                privacy: None,
                paillier: None,
                groups: None,
                admissions: Vec::new(),
            },
        }
    }

    /// Check a proposal against this round and this member's view. `Ok(missing)` lists the
    /// participants whose updates this member has not received yet (it can approve only once it
    /// has them and has recomputed the model). The caller still checks `new_model` and metrics.
    pub fn check_proposal(&self, sender: u32, p: &Proposal) -> Result<Vec<u32>, RoundError> {
        self.check_frame(sender, p, crate::genesis::Mode::Plain)?;
        let bad = |reason: String| RoundError::BadProposal {
            culprit: sender,
            reason,
        };
        let r = &p.record;
        let mut missing = Vec::new();
        for c in &r.participants {
            if self.excluded.contains(&c.member) {
                return Err(bad(format!(
                    "member {} equivocated in this round; its update cannot be aggregated",
                    c.member
                )));
            }
            match self.updates.get(&c.member) {
                None => missing.push(c.member),
                Some((u, h)) => {
                    if *h != c.update_hash
                        || u.num_samples != c.num_samples
                        || u.train_loss.to_bits() != c.train_loss.to_bits()
                    {
                        return Err(bad(format!(
                            "member {}'s update differs from the one received",
                            c.member
                        )));
                    }
                }
            }
        }
        Ok(missing)
    }

    /// Check a mode-`secagg` proposal's frame: height, round, coordinator, base model, and that
    /// its participants and dropouts partition the active members. The secure sum itself is checked
    /// by replaying the session ([`crate::secagg::replay`]).
    pub fn check_secure_proposal(&self, sender: u32, p: &Proposal) -> Result<(), RoundError> {
        if p.record.secure.is_none() {
            return Err(RoundError::BadProposal {
                culprit: sender,
                reason: "no secure-aggregation summary".into(),
            });
        }
        self.check_frame(sender, p, crate::genesis::Mode::Secagg)
    }

    /// Check a mode-`paillier` proposal's frame (as [`check_secure_proposal`](Self::check_secure_proposal))
    /// and its summary on its own ([`crate::audit::check_paillier`]). That the summary's sum and
    /// decryptors give the proposed model is checked by decrypting it ([`crate::paillier`]).
    pub fn check_paillier_proposal(
        &self,
        genesis: &crate::genesis::Genesis,
        sender: u32,
        p: &Proposal,
    ) -> Result<(), RoundError> {
        self.check_frame(sender, p, crate::genesis::Mode::Paillier)?;
        crate::audit::check_paillier(genesis, &p.record).map_err(|reason| RoundError::BadProposal {
            culprit: sender,
            reason,
        })
    }

    /// Whether `p` is for this height and round and `sender` coordinates its attempt.
    fn check_origin(&self, sender: u32, p: &Proposal) -> Result<(), String> {
        let r = &p.record;
        if p.height != self.height || p.prev_hash != self.prev_hash || r.round != self.round {
            return Err(format!(
                "for height {} / round {}, this round is height {} / round {}",
                p.height, r.round, self.height, self.round
            ));
        }
        if r.coordinator != sender || self.coordinator(r.attempt) != sender {
            return Err(format!(
                "member {sender} is not the coordinator of attempt {}",
                r.attempt
            ));
        }
        Ok(())
    }

    /// What every proposal must satisfy: this height, round and model, sent by the coordinator of
    /// its attempt, in this mode, with participants and dropouts that partition the active members.
    fn check_frame(
        &self,
        sender: u32,
        p: &Proposal,
        mode: crate::genesis::Mode,
    ) -> Result<(), RoundError> {
        let bad = |reason: String| RoundError::BadProposal {
            culprit: sender,
            reason,
        };
        self.check_origin(sender, p).map_err(bad)?;
        let r = &p.record;
        if r.base_model != self.base_model || r.mode != mode {
            return Err(bad(format!(
                "not a mode-{mode} record on this round's model"
            )));
        }
        let members: Vec<u32> = r.participants.iter().map(|c| c.member).collect();
        if members.is_empty()
            || members.windows(2).any(|w| w[0] >= w[1])
            || members.iter().any(|m| !self.is_active(*m))
        {
            return Err(bad(
                "participants must be distinct active members in order".into()
            ));
        }
        let mut dropouts: Vec<u32> = self
            .order
            .iter()
            .copied()
            .filter(|m| !members.contains(m))
            .collect();
        dropouts.sort_unstable();
        if dropouts != r.dropouts {
            return Err(bad(
                "dropouts are not the active members that did not participate".into(),
            ));
        }
        Ok(())
    }

    /// Remember the proposal this member is working on (the first consistent one).
    pub fn set_proposal(&mut self, p: Proposal) {
        if self.proposal.is_none() {
            let h = p.entry().signing_hash();
            self.note(&p, h);
            self.proposal = Some((p, h));
        }
    }

    pub fn proposal(&self) -> Option<&Proposal> {
        self.proposal.as_ref().map(|(p, _)| p)
    }

    /// Remember the attempt of a proposal whose frame is right (this height, sent by the
    /// coordinator of its attempt), whether or not this member will approve it: approvals of it
    /// then count as approvals of that attempt when a lock is to move.
    /// `signing_hash` is `p.entry().signing_hash()`, which the caller has at hand.
    /// Returns whether the frame is right.
    pub fn note_attempt(&mut self, sender: u32, p: &Proposal, signing_hash: Hash) -> bool {
        let framed = self.check_origin(sender, p).is_ok();
        if framed {
            self.note(p, signing_hash);
        }
        framed
    }

    fn note(&mut self, p: &Proposal, h: Hash) {
        if self.attempts.len() < attempts_cap(self.order.len()) || self.attempts.contains_key(&h) {
            self.attempts.insert(h, p.record.attempt);
        }
    }

    /// Whether a checked proposal of `attempt` could still be taken up: nothing adopted yet, or
    /// an attempt later than the adopted one (and than any later one already kept), to which
    /// this member's lock may move.
    pub fn open_to(&self, attempt: u32) -> bool {
        match &self.proposal {
            None => true,
            Some((p, _)) => {
                attempt > p.record.attempt
                    && self
                        .later
                        .as_ref()
                        .is_none_or(|(l, _)| attempt > l.record.attempt)
            }
        }
    }

    /// Keep a checked proposal of a later attempt than the adopted one, for [`Round::try_move`].
    /// Returns whether it was kept.
    pub fn offer_later(&mut self, p: Proposal) -> bool {
        if self.proposal.is_none() || !self.open_to(p.record.attempt) {
            return false;
        }
        let h = p.entry().signing_hash();
        self.note(&p, h);
        self.later = Some((p, h));
        true
    }

    /// Members whose approvals show that the locked record can no longer gather the threshold:
    /// those that approved some record of a later attempt than the lock's. Honest members
    /// approve one record per attempt and move only to later attempts, so none of them will
    /// ever approve the locked record.
    pub fn unlock_support(&self, lock: &Lock) -> std::collections::BTreeSet<u32> {
        self.support_claims(lock)
            .into_iter()
            .map(|c| c.member)
            .collect()
    }

    /// One claim per member of [`Round::unlock_support`]: the proof a moved approval carries.
    /// Only approvals whose claimed attempt is the one their proposal showed count.
    fn support_claims(&self, lock: &Lock) -> Vec<Claim> {
        let mut claims: Vec<Claim> = Vec::new();
        for ((m, h), a) in &self.approvals {
            let later = *h != lock.signing_hash
                && self
                    .attempts
                    .get(h)
                    .is_some_and(|x| *x > lock.attempt && *x == a.attempt);
            if later && claims.last().is_none_or(|c| c.member != *m) {
                claims.push(a.claim_of(*m));
            }
        }
        claims
    }

    /// How many members' approvals of later attempts release a lock: n − t + 1 of the n active
    /// signers ([`unlock_needed`]).
    pub fn unlock_needed(&self) -> usize {
        unlock_needed(self.signers, self.threshold)
    }

    /// Move this member's lock to the kept later proposal once [`Round::unlock_needed`] members
    /// approved records of later attempts than the lock's. Returns whether the kept proposal is now
    /// the current one (approve it next). A liveness fix: two attempts whose approvals split
    /// below the threshold (or a coordinator that approved its own proposal which the others
    /// refuse) would otherwise stall the height for good.
    pub fn try_move(&mut self) -> bool {
        let (Some(lock), Some((later, _))) = (self.approved, self.later.as_ref()) else {
            return false;
        };
        if later.record.attempt <= lock.attempt
            || self.unlock_support(&lock).len() < self.unlock_needed()
        {
            return false;
        }
        self.proposal = self.later.take();
        true
    }

    /// This member's approval of the current proposal. A member approves at most one record per
    /// attempt and moves its approval only to a later attempt, with the proof of
    /// [`Round::try_move`]; so two different records can never both gather the threshold.
    pub fn approve(
        &mut self,
        key: &identity::SecretKey,
        share: &bls::SecretShare,
    ) -> Result<Approval, RoundError> {
        let (p, h) = self.proposal.as_ref().ok_or(RoundError::AlreadyApproved)?;
        let lock = Lock {
            signing_hash: *h,
            attempt: p.record.attempt,
        };
        let mut support = Vec::new();
        if let Some(prev) = self.approved {
            if prev.signing_hash != lock.signing_hash {
                support = self.support_claims(&prev);
                if lock.attempt <= prev.attempt || support.len() < self.unlock_needed() {
                    return Err(RoundError::AlreadyApproved);
                }
            }
        }
        self.approved = Some(lock);
        let h = lock.signing_hash;
        Ok(Approval {
            signing_hash: h,
            signature: key.sign(h.as_bytes()),
            bls_share: share.sign(h.as_bytes()).to_bytes().to_vec(),
            attempt: lock.attempt,
            claim: key.sign(claim_message(self.height, h, lock.attempt).as_bytes()),
            support,
        })
    }

    /// Restore the approval this member gave before a restart, so that it can never approve a
    /// different record for the same height except by moving to a later attempt.
    pub fn lock_approval(&mut self, lock: Lock) {
        self.approved = Some(lock);
        if lock.attempt != u32::MAX {
            self.attempts.insert(lock.signing_hash, lock.attempt);
        }
    }

    /// This member's lock, if it approved a record at this height.
    pub fn lock(&self) -> Option<Lock> {
        self.approved
    }

    /// The update `member` sent, if it arrived.
    pub fn update(&self, member: u32) -> Option<&Update> {
        self.updates.get(&member).map(|(u, _)| u)
    }

    pub fn has_approved(&self) -> bool {
        self.approved.is_some()
    }

    /// Accept `sender`'s approval after checking both of its signatures.
    pub fn add_approval(
        &mut self,
        genesis: &Genesis,
        bls_set: &bls::PublicSet,
        sender: u32,
        a: Approval,
    ) -> Result<Added, RoundError> {
        let culprit = sender;
        let member = genesis
            .member(sender)
            .ok_or(RoundError::NotActive { culprit })?;
        if !self.is_active(sender) {
            return Err(RoundError::NotActive { culprit });
        }
        if self.approvals.contains_key(&(sender, a.signing_hash)) {
            return Ok(Added::Duplicate);
        }
        if !a.claim_verifies(&member.public_key, self.height) {
            return Err(RoundError::BadApproval {
                culprit,
                which: "attempt claim",
            });
        }
        if self
            .attempts
            .get(&a.signing_hash)
            .is_some_and(|x| *x != a.attempt)
        {
            return Err(RoundError::BadApproval {
                culprit,
                which: "attempt claim (not the proposal's attempt)",
            });
        }
        // A member may have moved its approval: one approval per attempt at most, and between
        // two attempts only with the later approval's proof (claims of n − t + 1 members).
        let held: Vec<&Approval> = self
            .approvals
            .range((sender, Hash::ZERO)..)
            .take_while(|((m, _), _)| *m == sender)
            .map(|(_, x)| x)
            .collect();
        if held.len() >= approval_cap(self.order.len()) {
            return Err(RoundError::Equivocation {
                culprit,
                what: "approval",
            });
        }
        let keys = if held.is_empty() {
            Vec::new()
        } else {
            signer_keys(genesis)
        };
        for x in &held {
            let (early, late) = if x.attempt < a.attempt {
                (*x, &a)
            } else {
                (&a, *x)
            };
            let unproven = early.attempt == late.attempt
                || late
                    .proves_move(early.attempt, self.height, &keys, self.unlock_needed())
                    .is_err();
            if unproven {
                return Err(RoundError::Equivocation {
                    culprit,
                    what: "approval",
                });
            }
        }
        member
            .public_key
            .verify(a.signing_hash.as_bytes(), &a.signature)
            .map_err(|_| RoundError::BadApproval {
                culprit,
                which: "ed25519",
            })?;
        let share =
            bls::SignatureShare::from_bytes(&a.bls_share).map_err(|_| RoundError::BadApproval {
                culprit,
                which: "BLS",
            })?;
        if !bls_set.verify_share(sender, a.signing_hash.as_bytes(), &share) {
            return Err(RoundError::BadApproval {
                culprit,
                which: "BLS",
            });
        }
        self.approvals.insert((sender, a.signing_hash), a);
        Ok(Added::New)
    }

    /// Approvals of the current proposal so far.
    pub fn approval_count(&self) -> usize {
        match &self.proposal {
            Some((_, h)) => self.approvals.keys().filter(|(_, a)| a == h).count(),
            None => 0,
        }
    }

    /// The signed entry, once `threshold` approvals of the current proposal are in.
    pub fn try_commit(&self, bls_set: &bls::PublicSet) -> Option<Entry> {
        let (p, h) = self.proposal.as_ref()?;
        let approvals: Vec<(u32, &Approval)> = self
            .approvals
            .iter()
            .filter(|((_, a), _)| a == h)
            .map(|((m, _), a)| (*m, a))
            .collect();
        if approvals.len() < self.threshold {
            return None;
        }
        let shares: Vec<(u32, bls::SignatureShare)> = approvals
            .iter()
            .filter_map(|(m, a)| {
                bls::SignatureShare::from_bytes(&a.bls_share)
                    .ok()
                    .map(|s| (*m, s))
            })
            .collect();
        let sig = bls_set.combine(shares.iter().map(|(m, s)| (*m, s))).ok()?;
        let mut entry = p.entry();
        entry.signatures = approvals
            .iter()
            .map(|(m, a)| MemberSignature {
                member: *m,
                signature: a.signature,
            })
            .collect();
        entry.threshold_signature = sig.to_bytes().to_vec();
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;
    use crate::model;

    fn upd(base: Hash, v: f32, n: u64) -> Update {
        Update {
            base_model: base,
            num_samples: n,
            train_loss: 0.5,
            delta: vec![v; 23],
        }
    }

    #[test]
    fn all_members_derive_the_same_order_and_it_moves_with_the_head() {
        let (g, _, _) = sample(5);
        let a = coordinator_order(&g, Hash::of("x", b"1"), &[0, 1, 2, 3, 4]);
        assert_eq!(
            a,
            coordinator_order(&g, Hash::of("x", b"1"), &[4, 3, 2, 1, 0])
        );
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        let others: Vec<_> = (2..20u8)
            .map(|i| coordinator_order(&g, Hash::of("x", &[i]), &[0, 1, 2, 3, 4])[0])
            .collect();
        assert!(
            others.iter().any(|c| *c != a[0]),
            "the coordinator must rotate"
        );
    }

    #[test]
    fn full_round_with_a_dropout_commits_a_verifiable_entry() {
        let (g, keys, shares) = sample(4);
        let text = g.to_toml();
        let (g, gh) = Genesis::parse(text.as_bytes()).unwrap();
        let set = g.bls().unwrap();
        let e0 = Entry::genesis(text.as_bytes());
        let base = g.initial_model;
        let mk = || Round::new(&g, 1, e0.hash(), 1, base, &[0, 1, 2, 3]);
        let mut rounds: Vec<Round> = (0..4).map(|_| mk()).collect();
        // Member 3 is silent: a dropout.
        for r in rounds.iter_mut() {
            for (m, v, n) in [(0u32, 1.0f32, 100u64), (1, 2.0, 300), (2, 0.0, 100)] {
                assert_eq!(r.add_update(m, upd(base, v, n)).unwrap(), Added::New);
            }
            assert!(!r.has_all_updates());
        }
        let coord = rounds[0].coordinator(0);
        let layout = g.layout();
        let participants = rounds[coord as usize].contributors();
        let delta = rounds[coord as usize].aggregate(&participants).unwrap();
        assert!(
            (delta[0] - 1.4).abs() < 1e-6,
            "weighted mean (100·1 + 300·2 + 100·0)/500"
        );
        let init = layout.init(g.spec.model.init_seed);
        let new_model = layout.hash(&model::apply(&init, &delta));
        let metrics = Metrics {
            accuracy: 0.9,
            loss: 0.3,
            test_samples: 10,
        };
        let p = rounds[coord as usize].propose(
            0,
            coord,
            &participants,
            new_model,
            metrics,
            0,
            Vec::new(),
        );
        assert_eq!(p.record.dropouts, vec![3]);
        let mut approvals = Vec::new();
        for (i, r) in rounds.iter_mut().enumerate().take(3) {
            assert_eq!(r.check_proposal(coord, &p).unwrap(), Vec::<u32>::new());
            r.set_proposal(p.clone());
            approvals.push((i as u32, r.approve(&keys[i], &shares[i]).unwrap()));
        }
        // The silent member never got the updates: it learns which are missing.
        let mut late = mk();
        assert_eq!(late.check_proposal(coord, &p).unwrap(), vec![0, 1, 2]);
        assert!(
            rounds[0].check_proposal((coord + 1) % 4, &p).is_err(),
            "only the coordinator proposes"
        );

        let r = &mut rounds[0];
        for (m, a) in &approvals[..2] {
            r.add_approval(&g, &set, *m, a.clone()).unwrap();
        }
        assert!(r.try_commit(&set).is_none(), "2 of 3 needed approvals");
        r.add_approval(&g, &set, 2, approvals[2].1.clone()).unwrap();
        let entry = r.try_commit(&set).unwrap();
        entry.verify(&g, gh, &set).unwrap();
        crate::audit::verify_link(&e0, &entry).unwrap();
        assert_eq!(entry.record().unwrap().participants.len(), 3);
        late.add_update(0, upd(base, 1.0, 100)).unwrap();
        assert!(
            late.add_approval(&g, &set, 3, approvals[0].1.clone())
                .is_err(),
            "approval signed by someone else"
        );
    }

    #[test]
    fn refuses_bad_updates_and_equivocation() {
        let (g, _, _) = sample(3);
        let base = g.initial_model;
        let mut r = Round::new(&g, 1, Hash::ZERO, 1, base, &[0, 1]);
        assert!(matches!(
            r.add_update(2, upd(base, 1.0, 1)),
            Err(RoundError::NotActive { culprit: 2 })
        ));
        assert!(matches!(
            r.add_update(0, upd(Hash::ZERO, 1.0, 1)),
            Err(RoundError::WrongBase { .. })
        ));
        assert!(matches!(
            r.add_update(0, upd(base, f32::NAN, 1)),
            Err(RoundError::NonFinite { .. })
        ));
        assert!(matches!(
            r.add_update(0, upd(base, 1.0, 0)),
            Err(RoundError::BadWeight { .. })
        ));
        let mut short = upd(base, 1.0, 1);
        short.delta.pop();
        assert!(matches!(
            r.add_update(0, short),
            Err(RoundError::WrongLength { .. })
        ));
        r.add_update(0, upd(base, 1.0, 1)).unwrap();
        assert_eq!(
            r.add_update(0, upd(base, 1.0, 1)).unwrap(),
            Added::Duplicate
        );
        assert!(matches!(
            r.add_update(0, upd(base, 2.0, 1)),
            Err(RoundError::Equivocation { culprit: 0, .. })
        ));
    }

    /// Members 0..n with every update in; the proposal of `attempt` (by its coordinator).
    fn split_setup(
        n: usize,
    ) -> (
        Genesis,
        bls::PublicSet,
        Vec<identity::SecretKey>,
        Vec<bls::SecretShare>,
        Vec<Round>,
    ) {
        let (g, keys, shares) = sample(n);
        let set = g.bls().unwrap();
        let base = g.initial_model;
        let active: Vec<u32> = (0..n as u32).collect();
        let rounds = (0..n)
            .map(|_| {
                let mut r = Round::new(&g, 1, Hash::of("head", b"0"), 1, base, &active);
                for m in 0..n as u32 {
                    r.add_update(m, upd(base, m as f32, 10)).unwrap();
                }
                r
            })
            .collect();
        (g, set, keys, shares, rounds)
    }

    fn proposal_of(r: &Round, attempt: u32) -> Proposal {
        let metrics = Metrics {
            accuracy: 0.5,
            loss: 1.0,
            test_samples: 10,
        };
        r.propose(
            attempt,
            r.coordinator(attempt),
            &r.contributors(),
            Hash::of("model", b"m"),
            metrics,
            0,
            Vec::new(),
        )
    }

    #[test]
    fn a_lock_moves_to_a_later_attempt_only_with_n_minus_t_plus_1_approvals_of_later_attempts() {
        // 4 members, threshold 3: member 0 approved attempt 0's record, which the others refuse
        // (say it lacks evidence they hold); members 1 and 2 approve attempt 1's record.
        let (g, set, keys, shares, mut rs) = split_setup(4);
        assert_eq!(rs[0].unlock_needed(), 2);
        let a = proposal_of(&rs[0], 0);
        let b = proposal_of(&rs[0], 1);
        let (ca, cb) = (rs[0].coordinator(0), rs[0].coordinator(1));
        rs[0].set_proposal(a.clone());
        let lock_a = rs[0].approve(&keys[0], &shares[0]).unwrap();
        assert!(
            !rs[0].offer_later(a.clone()),
            "the same attempt is no later attempt"
        );
        rs[0].note_attempt(cb, &b, b.entry().signing_hash());
        assert!(rs[0].offer_later(b.clone()));
        assert!(!rs[0].try_move(), "no approvals of the later attempt yet");
        let mut approvals_b = Vec::new();
        for m in [1usize, 2] {
            rs[m].note_attempt(ca, &a, a.entry().signing_hash());
            rs[m].set_proposal(b.clone());
            approvals_b.push((m as u32, rs[m].approve(&keys[m], &shares[m]).unwrap()));
        }
        rs[0]
            .add_approval(&g, &set, 1, approvals_b[0].1.clone())
            .unwrap();
        assert!(!rs[0].try_move(), "1 of the 2 approvals needed");
        assert!(
            matches!(rs[0].approve(&keys[0], &shares[0]), Ok(x) if x == lock_a),
            "still locked on its own record"
        );
        rs[0]
            .add_approval(&g, &set, 2, approvals_b[1].1.clone())
            .unwrap();
        assert_eq!(rs[0].unlock_support(&rs[0].lock().unwrap()).len(), 2);
        assert!(rs[0].try_move());
        let moved = rs[0].approve(&keys[0], &shares[0]).unwrap();
        assert_eq!(moved.signing_hash, b.entry().signing_hash());
        assert_eq!(rs[0].lock().unwrap().attempt, 1);
        // Member 1 takes member 0's second approval (a moved lock is no equivocation) and
        // commits attempt 1's record; member 0's first approval alone can never commit A.
        for (m, x) in &approvals_b {
            rs[1].add_approval(&g, &set, *m, x.clone()).unwrap();
        }
        rs[1].add_approval(&g, &set, 0, lock_a.clone()).unwrap();
        assert!(rs[1].try_commit(&set).is_none());
        // The moved approval carries its proof: members 1 and 2's claims of attempt 1.
        let proof: Vec<u32> = moved.support.iter().map(|c| c.member).collect();
        assert_eq!((proof, moved.attempt), (vec![1, 2], 1));
        // Without it, or with a claim of another attempt than the record's, it is refused.
        let mut bare = moved.clone();
        bare.support.truncate(1);
        assert!(matches!(
            rs[1].add_approval(&g, &set, 0, bare),
            Err(RoundError::Equivocation { culprit: 0, .. })
        ));
        let mut misclaimed = moved.clone();
        misclaimed.attempt = 0;
        assert!(matches!(
            rs[1].add_approval(&g, &set, 0, misclaimed),
            Err(RoundError::BadApproval { culprit: 0, .. })
        ));
        rs[1].add_approval(&g, &set, 0, moved.clone()).unwrap();
        let entry = rs[1].try_commit(&set).expect("3 approvals of attempt 1");
        assert_eq!(entry.record().unwrap().attempt, 1);
        // The order of arrival does not matter: the moved approval first, then the earlier one.
        rs[3].note_attempt(ca, &a, a.entry().signing_hash());
        rs[3].note_attempt(cb, &b, b.entry().signing_hash());
        let mut bare = moved.clone();
        bare.support.clear();
        rs[3].add_approval(&g, &set, 0, bare).unwrap();
        assert!(matches!(
            rs[3].add_approval(&g, &set, 0, lock_a),
            Err(RoundError::Equivocation { culprit: 0, .. })
        ));
    }

    #[test]
    fn approvals_of_earlier_attempts_or_of_unchecked_proposals_do_not_release_a_lock() {
        let (g, set, keys, shares, mut rs) = split_setup(4);
        let a = proposal_of(&rs[0], 0);
        let b = proposal_of(&rs[0], 1);
        let c = proposal_of(&rs[0], 2);
        // Member 0 is locked on attempt 1's record; the others approved attempt 0's.
        rs[0].set_proposal(b.clone());
        let b0 = rs[0].approve(&keys[0], &shares[0]).unwrap();
        assert!(!rs[0].offer_later(a.clone()), "attempt 0 is earlier");
        for m in [1usize, 2, 3] {
            rs[m].set_proposal(a.clone());
            let x = rs[m].approve(&keys[m], &shares[m]).unwrap();
            rs[0].add_approval(&g, &set, m as u32, x).unwrap();
        }
        // It never learnt attempt 2's frame from its coordinator: approvals of it do not count.
        // (Members 1 and 2 moved from attempt 0 with the claims of members 0 and 3.)
        let (_, _, _, _, mut others) = split_setup(4);
        others[3].set_proposal(c.clone());
        let c3 = others[3].approve(&keys[3], &shares[3]).unwrap();
        for m in [1usize, 2] {
            others[m].set_proposal(c.clone());
            let mut x = others[m].approve(&keys[m], &shares[m]).unwrap();
            x.support = vec![b0.claim_of(0), c3.claim_of(3)];
            rs[0].add_approval(&g, &set, m as u32, x).unwrap();
        }
        assert!(rs[0].unlock_support(&rs[0].lock().unwrap()).is_empty());
        // Once it has checked attempt 2's proposal itself, they do.
        assert!(rs[0].offer_later(c.clone()));
        assert_eq!(rs[0].unlock_support(&rs[0].lock().unwrap()).len(), 2);
        assert!(rs[0].try_move());
        // A sender cannot pile up approvals past one per attempt.
        let (_, _, _, _, mut spam) = split_setup(4);
        let mut refused = false;
        for k in 0..8u8 {
            spam[3].proposal = None;
            spam[3].approved = None;
            let mut p = a.clone();
            p.record.metrics.test_samples = 100 + k as u64;
            spam[3].set_proposal(p);
            let x = spam[3].approve(&keys[3], &shares[3]).unwrap();
            refused |= matches!(
                rs[0].add_approval(&g, &set, 3, x),
                Err(RoundError::Equivocation { culprit: 3, .. })
            );
        }
        assert!(
            refused,
            "at most one approval per attempt is kept per member"
        );
        // Two records of one attempt, both known here, signed by one member: the second is
        // refused.
        let mut a2 = a.clone();
        a2.record.metrics.test_samples += 1;
        let mut r = split_setup(4).4.remove(0);
        let c0 = r.coordinator(0);
        r.note_attempt(c0, &a, a.entry().signing_hash());
        r.note_attempt(c0, &a2, a2.entry().signing_hash());
        let mut signer = split_setup(4).4.remove(1);
        signer.set_proposal(a.clone());
        let first = signer.approve(&keys[1], &shares[1]).unwrap();
        let mut signer = split_setup(4).4.remove(1);
        signer.set_proposal(a2);
        let second = signer.approve(&keys[1], &shares[1]).unwrap();
        assert_eq!(r.add_approval(&g, &set, 1, first).unwrap(), Added::New);
        assert!(matches!(
            r.add_approval(&g, &set, 1, second),
            Err(RoundError::Equivocation { culprit: 1, .. })
        ));
    }

    /// A small deterministic generator for the simulation below.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// What the simulation delivers: proposal k, or (sender, approval).
    type Msg = Result<usize, (u32, Approval)>;

    #[test]
    fn moving_locks_never_commits_two_records_and_an_all_approving_split_always_commits() {
        // Proposals of several attempts reach the members in random orders; a member adopts the
        // first one it accepts (some refuse some proposals) and moves whenever the rule lets it.
        // Whatever the order, no two records both reach the threshold; and when every member
        // accepts every proposal, some record always does.
        let mut moves = 0;
        for (seed, n) in (1u64..=24).zip([3usize, 4, 5, 6, 7, 8].into_iter().cycle()) {
            let refusals = seed % 2 == 0;
            let (g, set, keys, shares, mut rs) = split_setup(n);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let attempts = 2 + rng.below(3) as u32;
            let proposals: Vec<Proposal> = (0..attempts).map(|k| proposal_of(&rs[0], k)).collect();
            let mut queue: Vec<(usize, Msg)> = Vec::new();
            for k in 0..proposals.len() {
                for m in 0..n {
                    queue.push((m, Ok(k)));
                }
            }
            let mut signed: BTreeMap<Hash, std::collections::BTreeSet<u32>> = BTreeMap::new();
            while !queue.is_empty() {
                let (m, msg) = queue.swap_remove(rng.below(queue.len()));
                let r = &mut rs[m];
                match msg {
                    Ok(k) => {
                        let p = &proposals[k];
                        r.note_attempt(
                            r.coordinator(p.record.attempt),
                            p,
                            p.entry().signing_hash(),
                        );
                        if refusals && rng.below(3) == 0 {
                            continue;
                        }
                        if r.proposal().is_none() {
                            r.set_proposal(p.clone());
                        } else if !r.offer_later(p.clone()) {
                            continue;
                        }
                    }
                    Err((sender, a)) => {
                        r.add_approval(&g, &set, sender, a).unwrap();
                    }
                }
                let fresh = r.proposal().is_some() && !r.has_approved();
                let moved = !fresh && r.try_move();
                moves += moved as usize;
                if fresh || moved {
                    let a = r.approve(&keys[m], &shares[m]).unwrap();
                    signed.entry(a.signing_hash).or_default().insert(m as u32);
                    for to in (0..n).filter(|to| *to != m) {
                        queue.push((to, Err((m as u32, a.clone()))));
                    }
                }
            }
            let t = g.threshold();
            let committed: Vec<_> = signed.values().filter(|s| s.len() >= t).collect();
            assert!(
                committed.len() <= 1,
                "seed {seed}, n {n}: two records reached {t}: {signed:?}"
            );
            if !refusals {
                assert_eq!(
                    committed.len(),
                    1,
                    "seed {seed}, n {n}: stalled: {signed:?}"
                );
            }
        }
        assert!(
            moves > 10,
            "the orders must make locks move ({moves} moves)"
        );
    }
}
