//! Equivocation at run time: every opened envelope of the current round passes a
//! [`Detector`]; a member caught signing two different messages for one slot is left out of
//! the round (mode plain: its update is not aggregated, whichever version arrived first), the
//! evidence goes into the coordinator's proposal, members check and adopt the evidence they find
//! in a proposal, and the committed evidence raises the member's anomaly score.

use fedmesh_crypto::Hash;
use fedmesh_protocol::audit::{self, RoundRecord};
use fedmesh_protocol::evidence::{Detector, Equivocation};
use fedmesh_protocol::genesis::Genesis;
use fedmesh_protocol::round::Round;
use fedmesh_protocol::wire::{Envelope, Payload, Proposal};

/// Note one opened envelope of the current round; on a contradiction, leave its sender out.
/// Returns whether the sender has been caught equivocating in this round: its contradicting
/// messages are then authentic evidence, to be passed on (gossip `Accept`), not a fault of the
/// peer that relayed them.
pub(super) fn observe(
    detector: &mut Detector,
    state: &mut Round,
    env: &Envelope,
    bytes: &[u8],
) -> bool {
    if let Some(e) = detector.observe(env, bytes) {
        if !e.proposals.is_empty() {
            // Its update (if any) was judged already; the evidence goes into the next record.
            approvals_caught(std::slice::from_ref(&e));
            return detector.caught(env.sender);
        }
        tracing::warn!(
            round = env.round,
            culprit = e.member,
            "EQUIVOCATION: member signed two different messages for one slot; leaving it out of the round and recording the evidence"
        );
        state.exclude(e.member);
    }
    detector.caught(env.sender)
}

/// Log members caught approving two records of one height against the rules (two of one
/// attempt, or of a later attempt without the proof of the move). They are not left out of the
/// round (their updates were judged before the approvals); the evidence waits for the next record
/// ([`Late::retire`]) and then counts in their anomaly scores like any other.
pub(super) fn approvals_caught(found: &[Equivocation]) {
    for e in found {
        tracing::warn!(
            round = e.round,
            culprit = e.member,
            "EQUIVOCATION: member approved two records of one height (one attempt, or a later one without the proof); recording the evidence in the next record"
        );
    }
}

/// Check the evidence in a proposal and take it in: members it proves equivocated in this round
/// are left out of this member's round too, and late evidence (of a past round) is kept until a
/// record carries it. Invalid evidence makes the whole proposal invalid, and so does a proposal
/// that leaves out evidence this member holds (of this round, or late evidence the record may
/// carry) although it would fit: an equivocating coordinator would otherwise keep its own
/// evidence out of the record; the next coordinator then takes over.
pub(super) fn adopt(
    genesis: &Genesis,
    genesis_hash: Hash,
    detector: &mut Detector,
    late: &mut Late,
    state: &mut Round,
    p: &Proposal,
) -> Result<(), String> {
    let record = &p.record;
    audit::check_evidence(genesis, genesis_hash, record)
        .map_err(|(member, reason)| format!("evidence against member {member}: {reason}"))?;
    for e in &record.evidence {
        if e.round != record.round {
            if late.adopt(e) {
                tracing::warn!(
                    round = e.round,
                    culprit = e.member,
                    approvals = !e.proposals.is_empty(),
                    "EQUIVOCATION (late): the proposal proves member equivocated in an earlier round"
                );
            }
        } else if detector.adopt(e) {
            tracing::warn!(
                round = record.round,
                culprit = e.member,
                "EQUIVOCATION: the proposal proves member signed two different messages; leaving it out"
            );
            state.exclude(e.member);
        }
    }
    let limit = genesis.spec.params.max_message_bytes;
    let mut size = proposal_size(p);
    let held: Vec<Equivocation> = detector
        .evidence()
        .into_iter()
        .chain(late.for_round(record.round).cloned())
        .collect();
    for e in held {
        if record
            .evidence
            .iter()
            .any(|x| x.member == e.member && x.round == e.round)
        {
            continue;
        }
        let extra = fedmesh_protocol::codec::encode(&e).len();
        if size + extra <= limit {
            return Err(format!(
                "the record leaves out the evidence that member {} equivocated",
                e.member
            ));
        }
        size += extra;
    }
    Ok(())
}

/// Encoded size of `p` as a signed gossip message (envelope framing: genesis hash, sender,
/// round, variant tag, signature).
fn proposal_size(p: &Proposal) -> usize {
    const FRAME: usize = 160;
    fedmesh_protocol::codec::encode(&Payload::Proposal(Box::new(p.clone()))).len() + FRAME
}

/// Put the evidence this coordinator holds into its proposal — this round's first, then late
/// evidence of the rounds before that the record may still carry — as far as the signed proposal
/// stays within the gossip limit `limit` (evidence carries two whole envelopes; what does not
/// fit is left out and logged — the member is still left out of the round here, and late
/// evidence waits for the next record). Sorted by member and round, as records require.
pub(super) fn attach(p: &mut Proposal, detector: &Detector, late: &Late, limit: usize) {
    let mut size = proposal_size(p);
    let mut kept: Vec<Equivocation> = Vec::new();
    let candidates = detector
        .evidence()
        .into_iter()
        .chain(late.for_round(p.record.round).cloned());
    for e in candidates {
        let extra = fedmesh_protocol::codec::encode(&e).len();
        if size + extra > limit {
            tracing::warn!(
                round = p.record.round,
                culprit = e.member,
                evidence_round = e.round,
                "equivocation evidence does not fit in the proposal; left out of the record"
            );
            continue;
        }
        size += extra;
        kept.push(e);
    }
    kept.sort_by_key(|e| (e.member, e.round));
    p.record.evidence = kept;
}

/// Evidence in a committed record, as the members it names (for their anomaly scores): once per
/// member and record, late evidence included (it counts in the round of the record carrying it).
pub(super) fn culprits(record: &RoundRecord) -> Vec<u32> {
    let mut members: Vec<u32> = record.evidence.iter().map(|e| e.member).collect();
    members.dedup();
    members
}

/// Equivocation that surfaces after its round: the detectors of the last
/// [`audit::EVIDENCE_WINDOW`] rounds keep watching messages that arrive late, and evidence that
/// did not make it into its own round's record waits here for the next record that may carry it.
/// (Without this, a second message that reached the members only after the round's record was
/// approved was dropped as stale and the equivocation went unrecorded.)
#[derive(Default)]
pub(super) struct Late {
    /// The detectors of the last rounds, oldest first.
    past: std::collections::VecDeque<(u64, Detector)>,
    /// Evidence of past rounds not yet in a committed record, by (member, round).
    pending: std::collections::BTreeMap<(u32, u64), Equivocation>,
}

impl Late {
    /// Round `round` is over (`record`: what was committed for it, if this member committed it).
    /// Its detector keeps watching; evidence it holds that the record lacks waits for the next
    /// record.
    pub(super) fn retire(&mut self, round: u64, detector: Detector, record: Option<&RoundRecord>) {
        let recorded = |e: &Equivocation| {
            record.is_some_and(|r| {
                r.evidence
                    .iter()
                    .any(|x| x.member == e.member && x.round == e.round)
            })
        };
        for e in detector.all_evidence() {
            if !recorded(&e) {
                self.pending.insert((e.member, e.round), e);
            }
        }
        self.past.retain(|(r, _)| *r != round);
        self.past.push_back((round, detector));
        while self.past.len() > audit::EVIDENCE_WINDOW as usize {
            self.past.pop_front();
        }
    }

    /// A record was appended: drop the evidence it carries, and what no later record may carry.
    pub(super) fn committed(&mut self, record: &RoundRecord) {
        for e in &record.evidence {
            self.pending.remove(&(e.member, e.round));
        }
        let oldest = (record.round + 1).saturating_sub(audit::EVIDENCE_WINDOW);
        self.pending.retain(|&(_, r), _| r >= oldest);
        self.past.retain(|(r, _)| *r >= oldest);
    }

    /// An opened envelope of a past round. `None`: that round is not watched any more (ignore the
    /// message). `Some(caught)`: whether its sender is now known to have equivocated in that
    /// round — its messages are then authentic evidence, to be passed on.
    pub(super) fn observe(&mut self, env: &Envelope, bytes: &[u8]) -> Option<bool> {
        let (_, detector) = self.past.iter_mut().find(|(r, _)| *r == env.round)?;
        if let Payload::Proposal(p) = &env.payload {
            // A proposal that arrives after its round: it may be what proves a member approved
            // two records of one attempt (the detector's caps bound what it keeps).
            if p.record.round == env.round {
                let found = detector.note_proposal(
                    env.round,
                    p.entry().signing_hash(),
                    p.record.attempt,
                    bytes,
                );
                approvals_caught(&found);
                for e in found {
                    self.pending.insert((e.member, e.round), e);
                }
            }
            return Some(detector.caught(env.sender));
        }
        if let Some(e) = detector.observe(env, bytes) {
            tracing::warn!(
                round = env.round,
                culprit = e.member,
                approvals = !e.proposals.is_empty(),
                "EQUIVOCATION (late): member signed two different messages for one slot of a finished round; recording the evidence in the next record"
            );
            self.pending.insert((e.member, e.round), e);
        }
        Some(detector.caught(env.sender))
    }

    /// Late evidence found in a proposal (already checked): kept until a record carries it, in
    /// case this proposal is not the one committed. Returns whether this node learns of it only
    /// now.
    pub(super) fn adopt(&mut self, e: &Equivocation) -> bool {
        let mut new = !self.pending.contains_key(&(e.member, e.round));
        if let Some((_, d)) = self.past.iter_mut().find(|(r, _)| *r == e.round) {
            new = d.adopt(e);
        }
        self.pending
            .entry((e.member, e.round))
            .or_insert_with(|| e.clone());
        new
    }

    /// The late evidence a record for `round` may carry.
    pub(super) fn for_round(&self, round: u64) -> impl Iterator<Item = &Equivocation> {
        self.pending
            .values()
            .filter(move |e| e.round < round && e.round + audit::EVIDENCE_WINDOW >= round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_crypto::identity::SecretKey;
    use fedmesh_protocol::genesis::Mode;
    use fedmesh_protocol::wire::Update;

    fn sealed(round: u64, v: f32) -> (Envelope, Vec<u8>) {
        let key = SecretKey::from_seed([3; 32]);
        let p = Payload::Update(Update {
            base_model: Hash::ZERO,
            num_samples: 5,
            train_loss: 0.3,
            delta: vec![v; 8],
        });
        let env = Envelope::seal(Hash::ZERO, 3, round, p, &key);
        let bytes = env.encode();
        (env, bytes)
    }

    fn record(round: u64, evidence: Vec<Equivocation>) -> RoundRecord {
        RoundRecord {
            evidence,
            ..RoundRecord::new(round, Mode::Plain, Hash::ZERO, Hash::ZERO)
        }
    }

    /// A second update that arrives after its round is over is caught by the kept detector,
    /// offered to the next record only, and forgotten once a record carries it or its window is
    /// past; messages of rounds no longer watched are not looked at.
    #[test]
    fn late_contradictions_wait_for_the_next_record() {
        let mut late = Late::default();
        let (a, ab) = sealed(2, 0.1);
        let (b, bb) = sealed(2, 0.2);
        let mut d = Detector::new();
        assert!(d.observe(&a, &ab).is_none());
        late.retire(2, d, Some(&record(2, vec![])));
        assert_eq!(late.for_round(3).count(), 0);
        // The first message again: no contradiction, the sender is not caught.
        assert_eq!(late.observe(&a, &ab), Some(false));
        assert_eq!(late.observe(&b, &bb), Some(true));
        let pending: Vec<_> = late.for_round(3).map(|e| (e.member, e.round)).collect();
        assert_eq!(pending, vec![(3, 2)]);
        assert_eq!(
            late.for_round(2).count(),
            0,
            "not for its own round's record"
        );
        assert_eq!(
            late.for_round(3 + audit::EVIDENCE_WINDOW).count(),
            0,
            "not past the window"
        );
        // A round never watched (or no longer watched): ignored.
        let (c, cb) = sealed(1, 0.1);
        assert_eq!(late.observe(&c, &cb), None);
        // Committed in round 3's record: nothing left to offer.
        let e = late.for_round(3).next().unwrap().clone();
        late.committed(&record(3, vec![e]));
        assert_eq!(late.for_round(4).count(), 0);
    }

    /// Evidence a round's own detector found but its committed record lacks (it arrived after the
    /// approval) becomes late evidence; evidence the record has does not; unrecorded evidence
    /// expires with its window.
    #[test]
    fn a_round_ends_with_evidence_its_record_lacks() {
        let (a, ab) = sealed(5, 0.1);
        let (b, bb) = sealed(5, 0.2);
        let mut d = Detector::new();
        d.observe(&a, &ab);
        let e = d.observe(&b, &bb).expect("caught");
        let mut late = Late::default();
        late.retire(5, d, Some(&record(5, vec![e.clone()])));
        assert_eq!(late.for_round(6).count(), 0);

        let mut d = Detector::new();
        d.observe(&a, &ab);
        d.observe(&b, &bb);
        let mut late = Late::default();
        late.retire(5, d, Some(&record(5, vec![])));
        assert_eq!(late.for_round(6).count(), 1);
        late.committed(&record(6, vec![]));
        assert_eq!(late.for_round(7).count(), 0, "expired with its window");
        // A proposal's late evidence is kept until a record has it.
        let mut other = Late::default();
        assert!(other.adopt(&e), "new to this node");
        assert!(!other.adopt(&e), "the second time it is not");
        assert_eq!(other.for_round(6).count(), 1);
    }

    /// Member 3 approves two records of attempt 0 of round 4; the second proposal reaches this
    /// node only after the round is over. The kept detector completes the evidence from it, and
    /// the next record may carry it.
    #[test]
    fn a_late_proposal_completes_approval_evidence() {
        use fedmesh_protocol::evidence::Signers;
        use fedmesh_protocol::wire::{claim_message, Approval, Proposal};
        let keys: Vec<SecretKey> = (0..4u8).map(|i| SecretKey::from_seed([i; 32])).collect();
        let proposal = |stamp: u64| {
            let mut record = RoundRecord::new(4, Mode::Plain, Hash::ZERO, Hash::ZERO);
            record.proposed_at_ms = stamp;
            let p = Proposal {
                height: 4,
                prev_hash: Hash::ZERO,
                record,
            };
            let h = p.entry().signing_hash();
            let env = Envelope::seal(Hash::ZERO, 0, 4, Payload::Proposal(Box::new(p)), &keys[0]);
            let bytes = env.encode();
            (h, env, bytes)
        };
        let approval = |h: Hash| {
            let a = Approval {
                signing_hash: h,
                signature: keys[3].sign(h.as_bytes()),
                bls_share: Vec::new(),
                attempt: 0,
                claim: keys[3].sign(claim_message(4, h, 0).as_bytes()),
                support: Vec::new(),
            };
            let env = Envelope::seal(Hash::ZERO, 3, 4, Payload::Approval(a), &keys[3]);
            let bytes = env.encode();
            (env, bytes)
        };
        let (x, _, xb) = proposal(1);
        let (y, ye, yb) = proposal(2);
        let mut d = Detector::watching_approvals(Signers {
            height: 4,
            keys: keys.iter().map(|k| k.public()).collect(),
            threshold: 3,
            members: 4,
        });
        assert!(d.note_proposal(4, x, 0, &xb).is_empty());
        for (env, bytes) in [approval(x), approval(y)] {
            assert!(d.observe(&env, &bytes).is_none());
        }
        let mut late = Late::default();
        late.retire(4, d, Some(&record(4, vec![])));
        assert_eq!(late.for_round(5).count(), 0);
        assert_eq!(
            late.observe(&ye, &yb),
            Some(false),
            "the coordinator is not caught"
        );
        let pending: Vec<_> = late.for_round(5).collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (
                pending[0].member,
                pending[0].round,
                pending[0].proposals.len()
            ),
            (3, 4, 2)
        );
    }

    /// A record names a member once for its score, even with late and current evidence.
    #[test]
    fn culprits_once_per_member() {
        let (_, ab) = sealed(5, 0.1);
        let e = |round| Equivocation {
            member: 3,
            round,
            first: ab.clone(),
            second: ab.clone(),
            proposals: Vec::new(),
        };
        assert_eq!(culprits(&record(6, vec![e(5), e(6)])), vec![3]);
    }
}
