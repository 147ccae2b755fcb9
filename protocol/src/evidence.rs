//! Evidence of equivocation: a member that signs two different messages for the same slot of a
//! round (two updates, two masked inputs of one secure-aggregation session, …). Honest members
//! never do; a member that does tries to make different members see different rounds. The two
//! signed envelopes, as they were gossiped, prove it to anyone with the genesis file: they go into
//! the round record ([`crate::audit::RoundRecord::evidence`]), `fedmesh audit verify` checks them,
//! and the member's anomaly score counts them.
//!
//! A member's approvals are watched too: an honest member approves at most one record per attempt
//! of a height, and moves its approval to a later attempt only with a proof — the signed claims of
//! n − t + 1 members that approved records of later attempts ([`crate::round::Round::try_move`],
//! [`Approval::support`]). So two approvals of different records of the same attempt, or of two
//! attempts where the later approval lacks that proof, prove a double signer — the one
//! misbehaviour that can make two records of one height both reach the threshold. That evidence
//! also carries the two proposals whose entries hash to the approved signing hashes and show their
//! height, round and attempts ([`Equivocation::proposals`]).
//!
//! [`Detector`] watches a round's opened envelopes and returns the evidence the first time a
//! sender contradicts itself; [`Equivocation::verify`] checks evidence from someone else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Hash;
use crate::genesis::Genesis;
use crate::wire::{Approval, Envelope, OpenError, PaillierMsg, Payload, Proposal, SecaggMsg};

/// The place of a message in a round that one member may fill only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// Mode `plain`: the member's model update.
    Update,
    /// Mode `secagg`: the member's own message of a phase (0 advertise … 4 unmask) of one attempt.
    Secagg { attempt: u32, phase: u8 },
    /// Mode `paillier`: the member's encrypted update.
    PaillierUpdate,
    /// Mode `paillier`: the member's partial decryption of one attempt's sum.
    PaillierPartial,
    /// Mode `paillier`: the member's partial decryption of one group's sum.
    PaillierGroupPartial { group: u32 },
    /// Any mode: the member's approval of a record of one attempt. [`Slot::of`] does not give it:
    /// an approval's claimed attempt counts only once the [`Detector`] has its proposal
    /// ([`Detector::note_proposal`]), and a member may fill two attempts' slots with a proof.
    Approval { attempt: u32 },
}

impl Slot {
    /// The slot `payload` fills, if it is a member's one-per-round message. Coordinator relays,
    /// proposals, approvals, status and votes have none (they are checked elsewhere).
    pub fn of(payload: &Payload) -> Option<Slot> {
        match payload {
            Payload::Update(_) => Some(Slot::Update),
            Payload::Secagg { attempt, msg } => {
                let phase = match **msg {
                    SecaggMsg::Advertise(_) => 0,
                    SecaggMsg::Shares(_) => 1,
                    SecaggMsg::Masked(_) => 2,
                    SecaggMsg::Consistency(_) => 3,
                    SecaggMsg::Unmask(_) => 4,
                    _ => return None,
                };
                Some(Slot::Secagg {
                    attempt: *attempt,
                    phase,
                })
            }
            Payload::Paillier { msg, .. } => match **msg {
                PaillierMsg::Update(_) => Some(Slot::PaillierUpdate),
                PaillierMsg::Partial(_) => Some(Slot::PaillierPartial),
                PaillierMsg::GroupPartial { group, .. } => {
                    Some(Slot::PaillierGroupPartial { group })
                }
                PaillierMsg::Close(_) => None,
            },
            Payload::Proposal(_)
            | Payload::Approval(_)
            | Payload::Status(_)
            | Payload::Vote(_)
            | Payload::Admission { .. } => None,
        }
    }

    /// A name for logs and errors.
    pub fn name(self) -> String {
        match self {
            Slot::Update => "update".into(),
            Slot::Secagg { attempt, phase } => format!("secagg phase {phase} (attempt {attempt})"),
            Slot::PaillierUpdate => "paillier update".into(),
            Slot::PaillierPartial => "paillier partial decryption".into(),
            Slot::PaillierGroupPartial { group } => {
                format!("paillier partial decryption of group {group}")
            }
            Slot::Approval { attempt } => format!("approval (attempt {attempt})"),
        }
    }
}

/// Two envelopes signed by `member` for the same slot of `round`, with different payloads.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    pub member: u32,
    pub round: u64,
    /// The first envelope, as gossiped ([`Envelope::encode`]).
    #[serde(with = "serde_bytes")]
    pub first: Vec<u8>,
    /// The second, contradicting envelope.
    #[serde(with = "serde_bytes")]
    pub second: Vec<u8>,
    /// Evidence of two approvals only: the proposals (signed envelopes, as gossiped) of the two
    /// records the approvals sign, `first`'s then `second`'s. Empty for every other slot.
    pub proposals: Vec<serde_bytes::ByteBuf>,
}

impl std::fmt::Debug for Equivocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Equivocation(member {}, round {}, {} + {} bytes, {} proposals)",
            self.member,
            self.round,
            self.first.len(),
            self.second.len(),
            self.proposals.len()
        )
    }
}

/// Why evidence does not prove an equivocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error("the {which} envelope does not open: {source}")]
    Open {
        which: &'static str,
        source: OpenError,
    },
    #[error("the {which} envelope is from member {found}, the evidence names member {expected}")]
    Sender {
        which: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("the {which} envelope is for round {found}, the evidence names round {expected}")]
    Round {
        which: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("the envelopes fill different slots or none ({first} and {second})")]
    Slot { first: String, second: String },
    #[error("the two envelopes carry the same payload: no contradiction")]
    Same,
    #[error("approval evidence: {0}")]
    Approvals(String),
    #[error("{0} proposals attached to evidence that is not of two approvals")]
    StrayProposals(usize),
}

impl Equivocation {
    /// Check the evidence against the genesis: both envelopes open (network, membership, the
    /// member's signature, at most `limit` bytes), both are the named member's for the named round,
    /// they fill the same slot, and their payloads differ. For two approvals: the attached
    /// proposals open too, their entries' signing hashes are the two approved ones, they are
    /// records of the same height and round, each approval's signed claim names its record's
    /// attempt, and either the attempts are the same or the later approval's proof does not
    /// show the move allowed ([`Approval::proves_move`]).
    pub fn verify(
        &self,
        genesis: &Genesis,
        genesis_hash: Hash,
        limit: usize,
    ) -> Result<(), EvidenceError> {
        let open = |which, bytes: &[u8]| -> Result<Envelope, EvidenceError> {
            let env = Envelope::open(bytes, limit, genesis, genesis_hash, None)
                .map_err(|source| EvidenceError::Open { which, source })?;
            if env.sender != self.member {
                return Err(EvidenceError::Sender {
                    which,
                    found: env.sender,
                    expected: self.member,
                });
            }
            if env.round != self.round {
                return Err(EvidenceError::Round {
                    which,
                    found: env.round,
                    expected: self.round,
                });
            }
            Ok(env)
        };
        let a = open("first", &self.first)?;
        let b = open("second", &self.second)?;
        match (&a.payload, &b.payload) {
            (Payload::Approval(x), Payload::Approval(y)) => {
                return self.verify_approvals(x, y, genesis, genesis_hash, limit);
            }
            _ if !self.proposals.is_empty() => {
                return Err(EvidenceError::StrayProposals(self.proposals.len()));
            }
            _ => {}
        }
        let (sa, sb) = (Slot::of(&a.payload), Slot::of(&b.payload));
        if sa.is_none() || sa != sb {
            let name = |s: Option<Slot>| s.map_or_else(|| "none".to_string(), Slot::name);
            return Err(EvidenceError::Slot {
                first: name(sa),
                second: name(sb),
            });
        }
        if payload_hash(&a.payload) == payload_hash(&b.payload) {
            return Err(EvidenceError::Same);
        }
        Ok(())
    }
}

impl Equivocation {
    /// The approvals part of [`Equivocation::verify`].
    fn verify_approvals(
        &self,
        x: &Approval,
        y: &Approval,
        genesis: &Genesis,
        genesis_hash: Hash,
        limit: usize,
    ) -> Result<(), EvidenceError> {
        let bad = |reason: String| EvidenceError::Approvals(reason);
        if x.signing_hash == y.signing_hash {
            return Err(EvidenceError::Same);
        }
        let [px, py] = self.proposals.as_slice() else {
            return Err(bad(format!(
                "{} proposals attached, two are needed",
                self.proposals.len()
            )));
        };
        let open = |which: &str, bytes: &[u8], approved: Hash| -> Result<Proposal, EvidenceError> {
            let env = Envelope::open(bytes, limit, genesis, genesis_hash, None)
                .map_err(|e| bad(format!("the {which} proposal does not open: {e}")))?;
            let Payload::Proposal(p) = env.payload else {
                return Err(bad(format!(
                    "the {which} proposal envelope holds a message of kind {}",
                    env.payload.name()
                )));
            };
            if env.round != self.round || p.record.round != self.round {
                return Err(bad(format!(
                    "the {which} proposal is for round {} (record {}), the evidence names round {}",
                    env.round, p.record.round, self.round
                )));
            }
            if p.entry().signing_hash() != approved {
                return Err(bad(format!(
                    "the {which} proposal is not the record the {which} approval signs"
                )));
            }
            Ok(*p)
        };
        let p = open("first", px, x.signing_hash)?;
        let q = open("second", py, y.signing_hash)?;
        if p.height != q.height {
            return Err(bad(format!(
                "the records are of heights {} and {}: approving both is allowed",
                p.height, q.height
            )));
        }
        let keys = crate::round::signer_keys(genesis);
        for (which, a, r) in [("first", x, &p), ("second", y, &q)] {
            claim_matches(a, self.member, r, &keys)
                .map_err(|reason| bad(format!("the {which} approval's {reason}")))?;
        }
        let (early, late, r) = if x.attempt <= y.attempt {
            (x, y, &q)
        } else {
            (y, x, &p)
        };
        if early.attempt == late.attempt {
            return Ok(());
        }
        let needed = crate::round::unlock_needed(
            crate::round::record_signers(genesis.members.len(), &r.record),
            genesis.threshold(),
        );
        match late.proves_move(early.attempt, p.height, &keys, needed) {
            Ok(()) => Err(bad(format!(
                "the approval of attempt {} carries the proof that moving from attempt {} was allowed",
                late.attempt, early.attempt
            ))),
            Err(_) => Ok(()),
        }
    }
}

/// Whether `a`, by `member`, claims the attempt of the record `p` it approves, with a valid
/// signature for `p`'s height.
fn claim_matches(
    a: &Approval,
    member: u32,
    p: &Proposal,
    keys: &[crate::crypto::identity::PublicKey],
) -> Result<(), String> {
    if a.attempt != p.record.attempt {
        return Err(format!(
            "claim names attempt {}, its record is of attempt {}",
            a.attempt, p.record.attempt
        ));
    }
    let key = keys
        .get(member as usize)
        .ok_or_else(|| format!("signer {member} is not a genesis member"))?;
    if !a.claim_verifies(key, p.height) {
        return Err("claim has an invalid signature".to_string());
    }
    Ok(())
}

/// The record of a kept proposal envelope (already opened once, so it decodes).
fn proposal_record(bytes: &[u8]) -> Option<crate::audit::RoundRecord> {
    let env = crate::codec::decode::<Envelope>(bytes, bytes.len()).ok()?;
    match env.payload {
        Payload::Proposal(p) => Some(p.record),
        _ => None,
    }
}

fn payload_hash(p: &Payload) -> Hash {
    Hash::of("fedmesh equivocation payload v1", &crate::codec::encode(p))
}

/// Most senders × slots a detector remembers in one round: members × (2 + 5 per attempt) is far
/// below it for any real network; past it, new slots are not watched (nothing else breaks).
pub const MAX_WATCHED: usize = 16_384;

/// Most proposals a detector keeps for approval evidence in one round, and their bytes in all:
/// honest coordinators send one per attempt; past either cap, approvals of further records are
/// not watched.
pub const MAX_PROPOSALS: usize = 64;
pub const MAX_PROPOSAL_BYTES: usize = 32 << 20;

/// What a [`Detector`] needs to watch approvals: the round's height, the genesis members' keys
/// and the signing threshold (to check the claims and proofs of moved approvals the way
/// [`Equivocation::verify`] will).
#[derive(Debug, Clone)]
pub struct Signers {
    pub height: u64,
    pub keys: Vec<crate::crypto::identity::PublicKey>,
    pub threshold: usize,
    /// The genesis member count (which members hold signing shares).
    pub members: usize,
}

impl Signers {
    pub fn of(genesis: &Genesis, height: u64) -> Signers {
        Signers {
            height,
            keys: crate::round::signer_keys(genesis),
            threshold: genesis.threshold(),
            members: genesis.members.len(),
        }
    }
}

/// Watches one round's opened envelopes for contradictions.
#[derive(Debug, Default)]
pub struct Detector {
    seen: BTreeMap<(u32, Slot), (Hash, Vec<u8>)>,
    found: BTreeMap<u32, Equivocation>,
    /// Proposals whose frame the round checked, by their entry's signing hash: the attempt and the
    /// envelope as gossiped.
    proposals: BTreeMap<Hash, (u32, Vec<u8>)>,
    proposal_bytes: usize,
    /// Approvals seen whose claim verifies, by (member, signing hash): the approval and its
    /// envelope as gossiped.
    approvals: BTreeMap<(u32, Hash), (Approval, Vec<u8>)>,
    /// Set: approvals are watched ([`Detector::watching_approvals`]).
    signers: Option<Signers>,
}

impl Detector {
    /// A detector of contradicting messages; approvals are not watched.
    pub fn new() -> Detector {
        Detector::default()
    }

    /// A detector that watches approvals too (those of the round at `signers.height`).
    pub fn watching_approvals(signers: Signers) -> Detector {
        Detector {
            signers: Some(signers),
            ..Detector::default()
        }
    }

    /// Note an envelope (already opened, so signed by `env.sender`) and its bytes. Returns the
    /// evidence the first time its sender contradicts an earlier envelope of the same round and
    /// slot; `None` for the first message of a slot, repeats, messages without a slot, and further
    /// contradictions of a member already caught.
    pub fn observe(&mut self, env: &Envelope, bytes: &[u8]) -> Option<Equivocation> {
        if let Payload::Approval(a) = &env.payload {
            let signers = self.signers.as_ref()?;
            let key = (env.sender, a.signing_hash);
            if self.approvals.contains_key(&key) || self.approvals.len() >= MAX_WATCHED {
                return None;
            }
            // Only approvals whose claim verifies: evidence must convince anyone.
            let signed = signers
                .keys
                .get(env.sender as usize)
                .is_some_and(|k| a.claim_verifies(k, signers.height));
            if !signed {
                return None;
            }
            self.approvals.insert(key, (a.clone(), bytes.to_vec()));
            return self.approval_contradiction(env.sender, env.round, a.signing_hash);
        }
        let slot = Slot::of(&env.payload)?;
        let hash = payload_hash(&env.payload);
        let key = (env.sender, slot);
        match self.seen.get(&key) {
            None => {
                if self.seen.len() < MAX_WATCHED {
                    self.seen.insert(key, (hash, bytes.to_vec()));
                }
                None
            }
            Some((h, _)) if *h == hash => None,
            Some((_, first)) => {
                if self.found.contains_key(&env.sender) {
                    return None;
                }
                let e = Equivocation {
                    member: env.sender,
                    round: env.round,
                    first: first.clone(),
                    second: bytes.to_vec(),
                    proposals: Vec::new(),
                };
                self.found.insert(env.sender, e.clone());
                Some(e)
            }
        }
    }

    /// Note a proposal of this round whose frame is right (this height, sent by the coordinator
    /// of its attempt): `signing_hash` is its entry's, `bytes` its envelope as gossiped. Approvals
    /// of it then count for its attempt. Returns the evidence this completes: members that
    /// approved this record and, before, another record of the same attempt.
    pub fn note_proposal(
        &mut self,
        round: u64,
        signing_hash: Hash,
        attempt: u32,
        bytes: &[u8],
    ) -> Vec<Equivocation> {
        if self.proposals.contains_key(&signing_hash)
            || self.proposals.len() >= MAX_PROPOSALS
            || self.proposal_bytes + bytes.len() > MAX_PROPOSAL_BYTES
        {
            return Vec::new();
        }
        self.proposal_bytes += bytes.len();
        self.proposals
            .insert(signing_hash, (attempt, bytes.to_vec()));
        let approvers: Vec<u32> = self
            .approvals
            .keys()
            .filter(|(_, h)| *h == signing_hash)
            .map(|(m, _)| *m)
            .collect();
        approvers
            .into_iter()
            .filter_map(|m| self.approval_contradiction(m, round, signing_hash))
            .collect()
    }

    /// Evidence if `member`'s approval of `signing_hash` (held) and another approval of its
    /// (held), both proposals known and both claims naming their proposals' attempts, sign two
    /// records of the same attempt, or of two attempts without the later approval's proof of the
    /// move; the member counts as caught.
    fn approval_contradiction(
        &mut self,
        member: u32,
        round: u64,
        signing_hash: Hash,
    ) -> Option<Equivocation> {
        if self.found.contains_key(&member) {
            return None;
        }
        let signers = self.signers.as_ref()?;
        let known = |h: &Hash, a: &Approval| -> Option<u32> {
            self.proposals
                .get(h)
                .map(|(attempt, _)| *attempt)
                .filter(|attempt| *attempt == a.attempt)
        };
        let (this, _) = self.approvals.get(&(member, signing_hash))?;
        known(&signing_hash, this)?;
        let other = self
            .approvals
            .range((member, Hash::ZERO)..)
            .take_while(|((m, _), _)| *m == member)
            .find(|((_, h), (a, _))| {
                *h != signing_hash && known(h, a).is_some() && self.contradicts(signers, this, a)
            })
            .map(|((_, h), _)| *h)?;
        let proposal = |h: &Hash| serde_bytes::ByteBuf::from(self.proposals[h].1.clone());
        let e = Equivocation {
            member,
            round,
            first: self.approvals[&(member, other)].1.clone(),
            second: self.approvals[&(member, signing_hash)].1.clone(),
            proposals: vec![proposal(&other), proposal(&signing_hash)],
        };
        self.found.insert(member, e.clone());
        Some(e)
    }

    /// Whether one member's approvals `a` and `b` (claims checked against their proposals)
    /// contradict: the same attempt, or the later one without the proof of its move, judged with
    /// the signer count of the later record as [`Equivocation::verify`] does.
    fn contradicts(&self, signers: &Signers, a: &Approval, b: &Approval) -> bool {
        let (early, late) = if a.attempt <= b.attempt {
            (a, b)
        } else {
            (b, a)
        };
        if early.attempt == late.attempt {
            return true;
        }
        let Some(record) = self
            .proposals
            .get(&late.signing_hash)
            .and_then(|(_, bytes)| proposal_record(bytes))
        else {
            return false;
        };
        let needed = crate::round::unlock_needed(
            crate::round::record_signers(signers.members, &record),
            signers.threshold,
        );
        late.proves_move(early.attempt, signers.height, &signers.keys, needed)
            .is_err()
    }

    /// Take in evidence found by someone else (already verified): the member counts as caught.
    pub fn adopt(&mut self, e: &Equivocation) -> bool {
        if self.found.contains_key(&e.member) {
            return false;
        }
        self.found.insert(e.member, e.clone());
        true
    }

    /// Whether `member` has been caught equivocating in this round.
    pub fn caught(&self, member: u32) -> bool {
        self.found.contains_key(&member)
    }

    /// The evidence for this round's own record, one per caught member, by member: contradicting
    /// messages. Approval evidence is left out: it surfaces while the round's records are being
    /// approved, after they were proposed, so it waits for the next record
    /// ([`Detector::all_evidence`]).
    pub fn evidence(&self) -> Vec<Equivocation> {
        self.found
            .values()
            .filter(|e| e.proposals.is_empty())
            .cloned()
            .collect()
    }

    /// All the evidence gathered, approvals included, one per caught member, by member.
    pub fn all_evidence(&self) -> Vec<Equivocation> {
        self.found.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;
    use crate::wire::{Claim, Status, Update};

    fn setup() -> (Genesis, Hash, Vec<crate::crypto::identity::SecretKey>) {
        let (g, keys, _) = sample(3);
        let (g, h) = Genesis::parse(g.to_toml().as_bytes()).unwrap();
        (g, h, keys)
    }

    fn update(v: f32) -> Payload {
        Payload::Update(Update {
            base_model: Hash::ZERO,
            num_samples: 5,
            train_loss: 0.3,
            delta: vec![v; 26],
        })
    }

    fn sealed(
        h: Hash,
        keys: &[crate::crypto::identity::SecretKey],
        sender: u32,
        round: u64,
        p: Payload,
    ) -> (Envelope, Vec<u8>) {
        let env = Envelope::seal(h, sender, round, p, &keys[sender as usize]);
        let bytes = env.encode();
        (env, bytes)
    }

    #[test]
    fn two_different_updates_are_caught_once_and_the_evidence_verifies() {
        let (g, h, keys) = setup();
        let mut d = Detector::new();
        let (a, ab) = sealed(h, &keys, 1, 4, update(0.1));
        let (b, bb) = sealed(h, &keys, 1, 4, update(0.2));
        assert!(d.observe(&a, &ab).is_none());
        // A repeat of the same message (gossip, a replay) is not a contradiction.
        assert!(d.observe(&a, &ab).is_none());
        let e = d.observe(&b, &bb).expect("caught");
        assert_eq!((e.member, e.round), (1, 4));
        e.verify(&g, h, 1 << 20).unwrap();
        assert!(d.caught(1) && !d.caught(0));
        // A third version does not produce more evidence for the same member.
        let (c, cb) = sealed(h, &keys, 1, 4, update(0.3));
        assert!(d.observe(&c, &cb).is_none());
        assert_eq!(d.evidence(), vec![e]);
    }

    #[test]
    fn messages_without_a_slot_or_from_others_are_not_equivocation() {
        let (_, h, keys) = setup();
        let mut d = Detector::new();
        for t in 0..3 {
            let (s, sb) = sealed(
                h,
                &keys,
                1,
                4,
                Payload::Status(Status {
                    height: 1,
                    head: Hash::ZERO,
                    sent_at_ms: t,
                }),
            );
            assert!(d.observe(&s, &sb).is_none());
        }
        let (a, ab) = sealed(h, &keys, 1, 4, update(0.1));
        let (b, bb) = sealed(h, &keys, 2, 4, update(0.2));
        assert!(d.observe(&a, &ab).is_none());
        assert!(d.observe(&b, &bb).is_none());
        assert!(d.evidence().is_empty());
    }

    /// A proposal of `round`'s record at attempt `attempt` and `height`, by `sender`; `stamp`
    /// makes records of one attempt differ. All 3 members are active (n − t + 1 = 2). Returns the
    /// entry's signing hash and the envelope.
    fn proposal(
        h: Hash,
        keys: &[crate::crypto::identity::SecretKey],
        sender: u32,
        (round, height, attempt): (u64, u64, u32),
        stamp: u64,
    ) -> (Hash, Vec<u8>) {
        let mut record = crate::audit::tests::record(round, Hash::ZERO);
        record.attempt = attempt;
        record.proposed_at_ms = stamp;
        record.dropouts = vec![0, 1, 2];
        let p = Proposal {
            height,
            prev_hash: Hash::ZERO,
            record,
        };
        let signing = p.entry().signing_hash();
        let (_, bytes) = sealed(h, keys, sender, round, Payload::Proposal(Box::new(p)));
        (signing, bytes)
    }

    /// `member`'s approval of `signing` (a record of `attempt` at `height`), with `support`.
    fn approve(
        keys: &[crate::crypto::identity::SecretKey],
        member: u32,
        (height, attempt): (u64, u32),
        signing: Hash,
        support: Vec<Claim>,
    ) -> Approval {
        let key = &keys[member as usize];
        Approval {
            signing_hash: signing,
            signature: key.sign(signing.as_bytes()),
            bls_share: Vec::new(),
            attempt,
            claim: key.sign(crate::wire::claim_message(height, signing, attempt).as_bytes()),
            support,
        }
    }

    /// `member`'s approval envelope in round 4 (height 4 unless `attempt` says otherwise).
    fn approval(
        h: Hash,
        keys: &[crate::crypto::identity::SecretKey],
        member: u32,
        at: (u64, u32),
        signing: Hash,
        support: Vec<Claim>,
    ) -> (Envelope, Vec<u8>) {
        let a = approve(keys, member, at, signing, support);
        sealed(h, keys, member, 4, Payload::Approval(a))
    }

    fn watching(g: &Genesis) -> Detector {
        Detector::watching_approvals(Signers::of(g, 4))
    }

    /// Member 2 approves records X and Y of attempt 0 and Z of attempt 1: X then Z, with the
    /// claims of members 0 and 1 (n − t + 1 = 2) that they approved Z, is a moved approval
    /// (allowed); Y as well is a double signature. Caught whichever arrives first, the approvals
    /// or the proposals; the evidence verifies and waits for the next record.
    #[test]
    fn two_approvals_of_one_attempt_are_caught_in_either_order_and_verify() {
        let (g, h, keys) = setup();
        let (x, xb) = proposal(h, &keys, 0, (4, 4, 0), 1);
        let (y, yb) = proposal(h, &keys, 0, (4, 4, 0), 2);
        let (z, zb) = proposal(h, &keys, 1, (4, 4, 1), 3);
        let proof: Vec<Claim> = [0, 1]
            .map(|m| approve(&keys, m, (4, 1), z, Vec::new()).claim_of(m))
            .to_vec();
        let (ax, axb) = approval(h, &keys, 2, (4, 0), x, Vec::new());
        let (ay, ayb) = approval(h, &keys, 2, (4, 0), y, Vec::new());
        let (az, azb) = approval(h, &keys, 2, (4, 1), z, proof.clone());

        let mut d = watching(&g);
        assert!(d.note_proposal(4, x, 0, &xb).is_empty());
        assert!(d.note_proposal(4, z, 1, &zb).is_empty());
        assert!(d.note_proposal(4, y, 0, &yb).is_empty());
        assert!(d.observe(&ax, &axb).is_none());
        assert!(d.observe(&ax, &axb).is_none(), "a repeat");
        assert!(d.observe(&az, &azb).is_none(), "a moved approval");
        assert!(!d.caught(2));
        let e = d.observe(&ay, &ayb).expect("caught");
        assert_eq!((e.member, e.round, e.proposals.len()), (2, 4, 2));
        e.verify(&g, h, 1 << 20).unwrap();
        assert!(d.caught(2));
        assert!(d.evidence().is_empty(), "not for this round's own record");
        assert_eq!(d.all_evidence(), vec![e]);

        // The approvals first, the proposals later.
        let mut d = watching(&g);
        for (env, bytes) in [(&ax, &axb), (&ay, &ayb), (&az, &azb)] {
            assert!(d.observe(env, bytes).is_none());
        }
        assert!(d.note_proposal(4, z, 1, &zb).is_empty());
        assert!(d.note_proposal(4, x, 0, &xb).is_empty());
        let found = d.note_proposal(4, y, 0, &yb);
        assert_eq!(found.len(), 1);
        found[0].verify(&g, h, 1 << 20).unwrap();
        // An honest member's approvals (one per attempt, moved with the proof) are never evidence.
        let (bx, bxb) = approval(h, &keys, 1, (4, 0), x, Vec::new());
        let (bz, bzb) = approval(h, &keys, 1, (4, 1), z, proof);
        assert!(d.observe(&bx, &bxb).is_none());
        assert!(d.observe(&bz, &bzb).is_none());
        assert!(!d.caught(1));
        // A detector that does not watch approvals finds nothing.
        let mut d = Detector::new();
        assert!(d.note_proposal(4, x, 0, &xb).is_empty());
        assert!(d.note_proposal(4, y, 0, &yb).is_empty());
        assert!(d.observe(&ax, &axb).is_none());
        assert!(d.observe(&ay, &ayb).is_none());
    }

    /// Member 2 approves X (attempt 0) and then Z (attempt 1) with a proof that is short, names
    /// a claim of attempt 0, repeats a member, or carries a forged claim: each is a double signer,
    /// caught in either order, and the evidence verifies. With a full proof it is not caught, and
    /// evidence made of it is refused.
    #[test]
    fn a_move_to_a_later_attempt_without_its_proof_is_caught_and_verifies() {
        let (g, h, keys) = setup();
        let (x, xb) = proposal(h, &keys, 0, (4, 4, 0), 1);
        let (z, zb) = proposal(h, &keys, 1, (4, 4, 1), 3);
        let claim = |m: u32, attempt: u32, signing: Hash| {
            approve(&keys, m, (4, attempt), signing, Vec::new()).claim_of(m)
        };
        let mut forged = claim(1, 1, z);
        forged.signature = claim(0, 1, z).signature;
        let proofs: Vec<(&str, Vec<Claim>)> = vec![
            ("none", Vec::new()),
            ("short", vec![claim(0, 1, z)]),
            ("of attempt 0", vec![claim(0, 1, z), claim(1, 0, x)]),
            ("a member twice", vec![claim(0, 1, z), claim(0, 1, z)]),
            ("forged", vec![claim(0, 1, z), forged]),
        ];
        let (ax, axb) = approval(h, &keys, 2, (4, 0), x, Vec::new());
        for (what, proof) in proofs {
            let (az, azb) = approval(h, &keys, 2, (4, 1), z, proof);
            for approvals_first in [true, false] {
                let mut d = watching(&g);
                let mut found = Vec::new();
                if approvals_first {
                    found.extend(d.observe(&az, &azb));
                    found.extend(d.observe(&ax, &axb));
                    found.extend(d.note_proposal(4, x, 0, &xb));
                    found.extend(d.note_proposal(4, z, 1, &zb));
                } else {
                    found.extend(d.note_proposal(4, z, 1, &zb));
                    found.extend(d.note_proposal(4, x, 0, &xb));
                    found.extend(d.observe(&ax, &axb));
                    found.extend(d.observe(&az, &azb));
                }
                assert_eq!(found.len(), 1, "proof {what}");
                found[0]
                    .verify(&g, h, 1 << 20)
                    .unwrap_or_else(|e| panic!("proof {what}: {e}"));
            }
        }
        let (az, azb) = approval(h, &keys, 2, (4, 1), z, vec![claim(0, 1, z), claim(1, 1, z)]);
        let mut d = watching(&g);
        assert!(d.note_proposal(4, x, 0, &xb).is_empty());
        assert!(d.note_proposal(4, z, 1, &zb).is_empty());
        assert!(d.observe(&ax, &axb).is_none());
        assert!(d.observe(&az, &azb).is_none(), "a move with its proof");
        let allowed = Equivocation {
            member: 2,
            round: 4,
            first: axb,
            second: azb,
            proposals: vec![
                serde_bytes::ByteBuf::from(xb),
                serde_bytes::ByteBuf::from(zb),
            ],
        };
        assert!(matches!(
            allowed.verify(&g, h, 1 << 20),
            Err(EvidenceError::Approvals(r)) if r.contains("carries the proof")
        ));
    }

    #[test]
    fn approval_evidence_must_prove_two_records_of_one_height_and_attempt() {
        let (g, h, keys) = setup();
        let (x, xb) = proposal(h, &keys, 0, (4, 4, 0), 1);
        let (y, yb) = proposal(h, &keys, 0, (4, 4, 0), 2);
        let (w, wb) = proposal(h, &keys, 0, (4, 5, 0), 4);
        let (_, ax) = approval(h, &keys, 2, (4, 0), x, Vec::new());
        let (_, ay) = approval(h, &keys, 2, (4, 0), y, Vec::new());
        let (_, aw) = approval(h, &keys, 2, (5, 0), w, Vec::new());
        let bufs = |v: &[&Vec<u8>]| {
            v.iter()
                .map(|b| serde_bytes::ByteBuf::from((*b).clone()))
                .collect::<Vec<_>>()
        };
        let good = Equivocation {
            member: 2,
            round: 4,
            first: ax.clone(),
            second: ay.clone(),
            proposals: bufs(&[&xb, &yb]),
        };
        good.verify(&g, h, 1 << 20).unwrap();
        let reason = |e: &Equivocation| match e.verify(&g, h, 1 << 20) {
            Err(EvidenceError::Approvals(r)) => r,
            other => panic!("{other:?}"),
        };
        let swapped = Equivocation {
            proposals: bufs(&[&yb, &xb]),
            ..good.clone()
        };
        assert!(reason(&swapped).contains("is not the record"));
        let one = Equivocation {
            proposals: bufs(&[&xb]),
            ..good.clone()
        };
        assert!(reason(&one).contains("two are needed"));
        // Approvals at two heights prove nothing.
        let heights = Equivocation {
            second: aw,
            proposals: bufs(&[&xb, &wb]),
            ..good.clone()
        };
        assert!(reason(&heights).contains("approving both is allowed"));
        // A claim of another attempt than the record's, or signed for another height.
        for (at, what) in [
            ((4, 1), "claim names attempt"),
            ((5, 0), "invalid signature"),
        ] {
            let (_, wrong) = approval(h, &keys, 2, at, y, Vec::new());
            let e = Equivocation {
                second: wrong,
                ..good.clone()
            };
            assert!(reason(&e).contains(what), "{}", reason(&e));
        }
        // Not a proposal where one is needed.
        let not = Equivocation {
            proposals: bufs(&[&xb, &ay]),
            ..good.clone()
        };
        assert!(reason(&not).contains("of kind approval"));
        // The same approval twice.
        let same = Equivocation {
            second: ax.clone(),
            ..good.clone()
        };
        assert!(matches!(
            same.verify(&g, h, 1 << 20),
            Err(EvidenceError::Same)
        ));
        // Proposals attached to evidence of two updates.
        let (_, a) = sealed(h, &keys, 2, 4, update(0.1));
        let (_, b) = sealed(h, &keys, 2, 4, update(0.2));
        let stray = Equivocation {
            member: 2,
            round: 4,
            first: a,
            second: b,
            proposals: bufs(&[&xb, &yb]),
        };
        assert!(matches!(
            stray.verify(&g, h, 1 << 20),
            Err(EvidenceError::StrayProposals(2))
        ));
        // Another member's approvals cannot be blamed on member 2.
        let (_, cx) = approval(h, &keys, 1, (4, 0), x, Vec::new());
        let framed = Equivocation {
            first: cx,
            ..good.clone()
        };
        assert!(matches!(
            framed.verify(&g, h, 1 << 20),
            Err(EvidenceError::Sender { .. })
        ));
    }

    #[test]
    fn forged_or_inconsistent_evidence_is_refused() {
        let (g, h, keys) = setup();
        let (_, a) = sealed(h, &keys, 1, 4, update(0.1));
        let (_, b) = sealed(h, &keys, 1, 4, update(0.2));
        let good = Equivocation {
            member: 1,
            round: 4,
            first: a.clone(),
            second: b.clone(),
            proposals: Vec::new(),
        };
        good.verify(&g, h, 1 << 20).unwrap();
        // The same message twice.
        let same = Equivocation {
            second: a.clone(),
            ..good.clone()
        };
        assert!(matches!(
            same.verify(&g, h, 1 << 20),
            Err(EvidenceError::Same)
        ));
        // Blaming another member with member 1's messages.
        let framed = Equivocation {
            member: 2,
            ..good.clone()
        };
        assert!(matches!(
            framed.verify(&g, h, 1 << 20),
            Err(EvidenceError::Sender { found: 1, .. })
        ));
        // Another round than the envelopes'.
        let moved = Equivocation {
            round: 5,
            ..good.clone()
        };
        assert!(matches!(
            moved.verify(&g, h, 1 << 20),
            Err(EvidenceError::Round { .. })
        ));
        // A message of another round is not a contradiction of this one.
        let (_, later) = sealed(h, &keys, 1, 5, update(0.2));
        let rounds = Equivocation {
            second: later,
            ..good.clone()
        };
        assert!(rounds.verify(&g, h, 1 << 20).is_err());
        // Different slots: an update and a status.
        let (_, status) = sealed(
            h,
            &keys,
            1,
            4,
            Payload::Status(Status {
                height: 1,
                head: Hash::ZERO,
                sent_at_ms: 1,
            }),
        );
        let slots = Equivocation {
            second: status,
            ..good.clone()
        };
        assert!(matches!(
            slots.verify(&g, h, 1 << 20),
            Err(EvidenceError::Slot { .. })
        ));
        // A tampered byte breaks the signature.
        let mut tampered = good.clone();
        let last = tampered.second.len() - 70;
        tampered.second[last] ^= 1;
        assert!(matches!(
            tampered.verify(&g, h, 1 << 20),
            Err(EvidenceError::Open {
                which: "second",
                ..
            })
        ));
    }
    /// `audit verify` path: a round entry that carries evidence verifies only if the evidence
    /// does; bad evidence is named with its height and member even under valid signatures.
    #[test]
    fn evidence_in_a_round_record_is_checked_by_entry_verify() {
        use crate::audit::{Entry, MemberSignature, VerifyError};
        let (g, keys, shares) = sample(4);
        let text = g.to_toml();
        let (g, gh) = Genesis::parse(text.as_bytes()).unwrap();
        let set = g.bls().unwrap();
        let e0 = Entry::genesis(text.as_bytes());
        let signed = |record: &crate::audit::RoundRecord| {
            let mut e = Entry::round(1, e0.hash(), record);
            let msg = e.signing_hash();
            let who = [0u32, 1, 3];
            let bls: Vec<_> = who
                .iter()
                .map(|i| (*i, shares[*i as usize].sign(msg.as_bytes())))
                .collect();
            e.threshold_signature = set
                .combine(bls.iter().map(|(i, s)| (*i, s)))
                .unwrap()
                .to_bytes()
                .to_vec();
            e.signatures = who
                .iter()
                .map(|i| MemberSignature {
                    member: *i,
                    signature: keys[*i as usize].sign(msg.as_bytes()),
                })
                .collect();
            e
        };
        let (_, a) = sealed(gh, &keys, 2, 1, update(0.1));
        let (_, b) = sealed(gh, &keys, 2, 1, update(0.2));
        let mut record = crate::audit::tests::record(1, g.initial_model);
        record.evidence = vec![Equivocation {
            member: 2,
            round: 1,
            first: a.clone(),
            second: b,
            proposals: Vec::new(),
        }];
        signed(&record).verify(&g, gh, &set).unwrap();

        let mut same = record.clone();
        same.evidence[0].second = a;
        assert!(matches!(
            signed(&same).verify(&g, gh, &set),
            Err(VerifyError::Evidence {
                height: 1,
                member: 2,
                ..
            })
        ));
        // Late evidence: the next round's record may carry it, a later one may not.
        let mut late = record.clone();
        late.round = 1 + crate::audit::EVIDENCE_WINDOW;
        signed(&late).verify(&g, gh, &set).unwrap();
        let mut too_late = record.clone();
        too_late.round = 2 + crate::audit::EVIDENCE_WINDOW;
        let err = signed(&too_late).verify(&g, gh, &set).unwrap_err();
        assert!(
            matches!(&err, VerifyError::Evidence { height: 1, member: 2, reason } if reason.contains("takes evidence of rounds")),
            "{err}"
        );
        // Evidence of a later round than the record's.
        let (_, c) = sealed(gh, &keys, 2, 2, update(0.1));
        let (_, d) = sealed(gh, &keys, 2, 2, update(0.2));
        let mut future = record.clone();
        future.evidence = vec![Equivocation {
            member: 2,
            round: 2,
            first: c,
            second: d,
            proposals: Vec::new(),
        }];
        assert!(matches!(
            signed(&future).verify(&g, gh, &set),
            Err(VerifyError::Evidence {
                height: 1,
                member: 2,
                ..
            })
        ));
        let mut twice = record.clone();
        twice.evidence.push(record.evidence[0].clone());
        assert!(matches!(
            signed(&twice).verify(&g, gh, &set),
            Err(VerifyError::Evidence { member: 2, .. })
        ));
    }

    /// A late piece of evidence is recorded once: a record that repeats evidence an earlier
    /// record of the window already holds breaks the log (it would count twice in the score);
    /// after the window the walker forgets it (no later record may carry it anyway).
    #[test]
    fn the_same_evidence_cannot_be_recorded_twice() {
        use crate::audit::{check_membership, VerifyError};
        use crate::membership::Members;
        let (g, h, keys) = setup();
        let (_, a) = sealed(h, &keys, 1, 1, update(0.1));
        let (_, b) = sealed(h, &keys, 1, 1, update(0.2));
        let piece = Equivocation {
            member: 1,
            round: 1,
            first: a,
            second: b,
            proposals: Vec::new(),
        };
        let mut members = Members::new(&g, h);
        let mut r1 = crate::audit::tests::record(1, g.initial_model);
        r1.evidence = vec![piece.clone()];
        check_membership(&mut members, 1, &r1).unwrap();
        let mut r2 = crate::audit::tests::record(2, r1.new_model);
        r2.evidence = vec![piece.clone()];
        let before = members.clone();
        let err = check_membership(&mut members, 2, &r2).unwrap_err();
        assert!(
            matches!(&err, VerifyError::Evidence { height: 2, member: 1, reason } if reason.contains("already")),
            "{err}"
        );
        assert_eq!(members, before, "nothing changes on error");
        // Recorded late instead (round 1's record had none): accepted once.
        let mut members = Members::new(&g, h);
        let r1 = crate::audit::tests::record(1, g.initial_model);
        check_membership(&mut members, 1, &r1).unwrap();
        check_membership(&mut members, 2, &r2).unwrap();
        let r3 = crate::audit::tests::record(3, r2.new_model);
        check_membership(&mut members, 3, &r3).unwrap();
        assert_eq!(
            members.recorded_evidence(),
            0,
            "round 1 is out of every later window"
        );
    }
}
