//! Evidence of equivocation: a member that signs two different messages for the same slot of a
//! round (two updates, two masked inputs of one secure-aggregation session, …). Honest members
//! never do; a member that does tries to make different members see different rounds. The two
//! signed envelopes, as they were gossiped, prove it to anyone with the genesis file: they go into
//! the round record ([`crate::audit::RoundRecord::evidence`]), `fedmesh audit verify` checks them,
//! and the member's anomaly score counts them.
//!
//! [`Detector`] watches a round's opened envelopes and returns the evidence the first time a
//! sender contradicts itself; [`Equivocation::verify`] checks evidence from someone else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Hash;
use crate::genesis::Genesis;
use crate::wire::{Envelope, OpenError, PaillierMsg, Payload, SecaggMsg};

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
}

impl std::fmt::Debug for Equivocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Equivocation(member {}, round {}, {} + {} bytes)",
            self.member,
            self.round,
            self.first.len(),
            self.second.len()
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
}

impl Equivocation {
    /// Check the evidence against the genesis: both envelopes open (network, membership, the
    /// member's signature, at most `limit` bytes), both are the named member's for the named round,
    /// they fill the same slot, and their payloads differ.
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

fn payload_hash(p: &Payload) -> Hash {
    Hash::of("fedmesh equivocation payload v1", &crate::codec::encode(p))
}

/// Most senders × slots a detector remembers in one round: members × (2 + 5 per attempt) is far
/// below it for any real network; past it, new slots are not watched (nothing else breaks).
pub const MAX_WATCHED: usize = 16_384;

/// Watches one round's opened envelopes for contradictions.
#[derive(Debug, Default)]
pub struct Detector {
    seen: BTreeMap<(u32, Slot), (Hash, Vec<u8>)>,
    found: BTreeMap<u32, Equivocation>,
}

impl Detector {
    pub fn new() -> Detector {
        Detector::default()
    }

    /// Note an envelope (already opened, so signed by `env.sender`) and its bytes. Returns the
    /// evidence the first time its sender contradicts an earlier envelope of the same round and
    /// slot; `None` for the first message of a slot, repeats, messages without a slot, and further
    /// contradictions of a member already caught.
    pub fn observe(&mut self, env: &Envelope, bytes: &[u8]) -> Option<Equivocation> {
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
                };
                self.found.insert(env.sender, e.clone());
                Some(e)
            }
        }
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

    /// The evidence gathered, one per caught member, by member.
    pub fn evidence(&self) -> Vec<Equivocation> {
        self.found.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;
    use crate::wire::{Status, Update};

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
