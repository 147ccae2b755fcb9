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
        tracing::warn!(
            round = env.round,
            culprit = e.member,
            "EQUIVOCATION: member signed two different messages for one slot; leaving it out of the round and recording the evidence"
        );
        state.exclude(e.member);
    }
    detector.caught(env.sender)
}

/// Check the evidence in a proposal and take it in: members it proves equivocated are left out
/// of this member's round too. Invalid evidence makes the whole proposal invalid, and so does a
/// proposal that leaves out evidence this member holds although it would fit (an equivocating
/// coordinator would otherwise keep its own evidence out of the record; the next coordinator
/// then takes over).
pub(super) fn adopt(
    genesis: &Genesis,
    genesis_hash: Hash,
    detector: &mut Detector,
    state: &mut Round,
    p: &Proposal,
) -> Result<(), String> {
    let record = &p.record;
    audit::check_evidence(genesis, genesis_hash, record)
        .map_err(|(member, reason)| format!("evidence against member {member}: {reason}"))?;
    for e in &record.evidence {
        if detector.adopt(e) {
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
    for e in detector.evidence() {
        if record.evidence.iter().any(|x| x.member == e.member) {
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

/// Put the evidence this coordinator holds into its proposal, by member, as far as the signed
/// proposal stays within the gossip limit `limit` (evidence carries two whole envelopes; what
/// does not fit is left out and logged — the member is still left out of the round here).
pub(super) fn attach(p: &mut Proposal, detector: &Detector, limit: usize) {
    let mut size = proposal_size(p);
    let mut kept: Vec<Equivocation> = Vec::new();
    for e in detector.evidence() {
        let extra = fedmesh_protocol::codec::encode(&e).len();
        if size + extra > limit {
            tracing::warn!(
                round = p.record.round,
                culprit = e.member,
                "equivocation evidence does not fit in the proposal; left out of the record"
            );
            continue;
        }
        size += extra;
        kept.push(e);
    }
    p.record.evidence = kept;
}

/// Evidence in a committed record, as the members it names (for their anomaly scores).
pub(super) fn culprits(record: &RoundRecord) -> Vec<u32> {
    record.evidence.iter().map(|e| e.member).collect()
}
