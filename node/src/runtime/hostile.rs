//! Hostile behaviour on purpose, for the fault-injection tests (`[faults]` in node.toml): a
//! member that equivocates (`equivocate`: after each of its one-per-round messages of the fault
//! round — update, masked input, encrypted update — it signs and gossips a second, different
//! one for the same slot; `equivocate_late`: mode plain, it signs a second update at once but
//! gossips it only after the round has been committed) or stalls mid-phase (`stall`: in mode secagg it stops after sharing
//! its keys, in mode paillier after sending its encrypted update; it stays connected and keeps
//! following the network) or, as attempt 0's coordinator, proposes two records for its attempt
//! and approves both (`double_approve`: the double signer that could otherwise make two records
//! of one height reach the threshold) or, as attempt 1's coordinator, approves attempt 0's record
//! and then proposes and approves its own record of attempt 1 without the proof that moving was
//! allowed (`move_unproven`). Honest nodes never take these paths.

use fedmesh_protocol::wire::{
    claim_message, Approval, Envelope, PaillierMsg, Payload, Proposal, SecaggMsg,
};

use super::Runtime;

impl Runtime {
    fn fault_now(&self, round: u64, at: &str) -> bool {
        self.ctx.faults.round == round && self.ctx.faults.at == at
    }

    /// Fault `stall`: whether this member withholds `payload` in `round` (everything after its
    /// key shares in mode secagg; its partial decryption in mode paillier).
    pub(super) fn stalls(&self, round: u64, payload: &Payload) -> bool {
        if !self.fault_now(round, "stall") {
            return false;
        }
        let withheld = match payload {
            Payload::Secagg { msg, .. } => {
                !matches!(**msg, SecaggMsg::Advertise(_) | SecaggMsg::Shares(_))
            }
            Payload::Paillier { msg, .. } => matches!(
                **msg,
                PaillierMsg::Partial(_) | PaillierMsg::GroupPartial { .. }
            ),
            _ => false,
        };
        if withheld {
            tracing::warn!(
                round,
                what = payload.name(),
                "fault injection: stalling mid-phase"
            );
        }
        withheld
    }

    /// Fault `equivocate`: after `env` (this member's own message) went out, sign and gossip a
    /// second, different message for the same slot. Fault `equivocate_late`: sign the second
    /// update now, hold it until the round is over here ([`Runtime::release_late_equivocation`]).
    pub(super) async fn equivocate(&mut self, env: &Envelope) {
        let late = self.fault_now(env.round, "equivocate_late")
            && matches!(env.payload, Payload::Update(_));
        if !late && !self.fault_now(env.round, "equivocate") {
            return;
        }
        let genesis = self.ctx.genesis_hash;
        let key = &self.ctx.keys.identity;
        let payload = match &env.payload {
            Payload::Update(u) => {
                let mut other = u.clone();
                if let Some(v) = other.delta.first_mut() {
                    *v += 0.01;
                }
                Payload::Update(other)
            }
            Payload::Secagg { attempt, msg } => match &**msg {
                SecaggMsg::Masked(m) => {
                    let mut body = m.body.clone();
                    if let Some(b) = body.values.first_mut() {
                        *b ^= 1;
                    }
                    Payload::Secagg {
                        attempt: *attempt,
                        msg: Box::new(SecaggMsg::Masked(fedmesh_protocol::signed::Signed::sign(
                            genesis, body, key,
                        ))),
                    }
                }
                _ => return,
            },
            Payload::Paillier { attempt, msg } => match &**msg {
                PaillierMsg::Update(u) => {
                    let mut body = u.body.clone();
                    body.clipped += 1;
                    Payload::Paillier {
                        attempt: *attempt,
                        msg: Box::new(PaillierMsg::Update(fedmesh_protocol::signed::Signed::sign(
                            genesis, body, key,
                        ))),
                    }
                }
                _ => return,
            },
            _ => return,
        };
        tracing::warn!(
            round = env.round,
            what = payload.name(),
            "fault injection: equivocating (a second, different message for the same slot)"
        );
        let second = Envelope::seal(genesis, env.sender, env.round, payload, key);
        if late {
            self.held_equivocation = Some((env.round, second.encode()));
            return;
        }
        if let Err(e) = self.publish_or_keep(env.round, second.encode()).await {
            tracing::debug!(error = %e, "equivocation not published yet; retrying");
        }
    }

    /// Fault `double_approve`: after proposing and approving the round's record (attempt 0),
    /// propose a second, different record of the same attempt and approve it too, against the
    /// one-record-per-attempt rule ([`fedmesh_protocol::round::Round::approve`] would refuse, so
    /// the approval is signed here directly).
    pub(super) async fn double_approve(&mut self, round: u64) {
        if !self.fault_now(round, "double_approve") {
            return;
        }
        let Some(p) = self.current.as_ref().and_then(|c| c.state.proposal()) else {
            return;
        };
        if p.record.attempt != 0 {
            return;
        }
        let mut other = p.clone();
        other.record.proposed_at_ms += 1;
        tracing::warn!(
            round,
            "fault injection: proposing a second record of attempt 0 and approving both"
        );
        self.propose_and_approve_unchecked(round, other).await;
    }

    /// Fault `move_unproven`: as attempt 1's coordinator, right after approving attempt 0's
    /// record, propose the same round as attempt 1 and approve that too, with no proof that the
    /// first record could no longer be committed (an honest member moves only with the claims
    /// of n − t + 1 members, [`fedmesh_protocol::round::Round::try_move`]).
    pub(super) async fn move_unproven(&mut self, round: u64) {
        if !self.fault_now(round, "move_unproven") {
            return;
        }
        let me = self.me();
        let Some(cur) = self.current.as_ref() else {
            return;
        };
        let Some(p) = cur.state.proposal() else {
            return;
        };
        if p.record.attempt != 0 || cur.state.coordinator(1) != me {
            return;
        }
        let mut later = p.clone();
        later.record.attempt = 1;
        later.record.coordinator = me;
        later.record.proposed_at_ms += 1;
        tracing::warn!(
            round,
            "fault injection: approving a record of attempt 1 after attempt 0's, without the proof"
        );
        self.propose_and_approve_unchecked(round, later).await;
    }

    /// Gossip `p` as this member's proposal and an approval of it, signed here directly (the
    /// round's rules would refuse it).
    async fn propose_and_approve_unchecked(&mut self, round: u64, p: Proposal) {
        let Some(share) = self.ctx.keys.bls.as_ref() else {
            return;
        };
        let h = p.entry().signing_hash();
        let key = &self.ctx.keys.identity;
        let approval = Approval {
            signing_hash: h,
            signature: key.sign(h.as_bytes()),
            bls_share: share.sign(h.as_bytes()).to_bytes().to_vec(),
            attempt: p.record.attempt,
            claim: key.sign(claim_message(p.height, h, p.record.attempt).as_bytes()),
            support: Vec::new(),
        };
        let me = self.me();
        let genesis = self.ctx.genesis_hash;
        let proposal = Envelope::seal(genesis, me, round, Payload::Proposal(Box::new(p)), key);
        let approval = Envelope::seal(genesis, me, round, Payload::Approval(approval), key);
        for bytes in [proposal.encode(), approval.encode()] {
            if let Err(e) = self.publish_or_keep(round, bytes).await {
                tracing::debug!(error = %e, "hostile approval not published yet; retrying");
            }
        }
    }

    /// Fault `equivocate_late`: gossip the held second update once its round is over here.
    pub(super) async fn release_late_equivocation(&mut self) {
        let Some((round, _)) = &self.held_equivocation else {
            return;
        };
        if self.next_round() <= *round {
            return;
        }
        let Some((round, bytes)) = self.held_equivocation.take() else {
            return;
        };
        tracing::warn!(
            round,
            "fault injection: equivocating late (a second update for a round already committed)"
        );
        match self.net.publish(bytes.clone()).await {
            Ok(()) => {
                self.hold_update_until =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
            }
            Err(e) => {
                tracing::debug!(error = %e, "late equivocation not published yet; retrying");
                self.held_equivocation = Some((round, bytes));
            }
        }
    }
}
