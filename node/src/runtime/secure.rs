//! Mode `secagg` in the node: one secure-aggregation session per round attempt, driven by gossip.
//!
//! Every member plays its part ([`fedmesh_protocol::secagg::member`]); the attempt's coordinator
//! also collects each phase ([`fedmesh_protocol::secagg::coordinator`]) and closes it when every
//! expected member has answered or the phase timeout expires — the members that did not answer are
//! that phase's dropouts. All messages are gossiped, so every member keeps the session's transcript
//! and can replay the coordinator's computation to check the record it proposes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedmesh_crypto::identity;
use fedmesh_crypto::Hash;
use fedmesh_protocol::genesis::Genesis;
use fedmesh_protocol::secagg::{
    self, coordinator, graph, member, quant, ConsistencyList, KeyList, MaskedInput, Outcome,
    RoundParams, SecaggError, Shares, SharesFor, Signed, Survivors, Unmask,
};
use fedmesh_protocol::wire::SecaggMsg;

/// The parameters of session `attempt` of `round`.
pub fn params(
    genesis: &Genesis,
    genesis_hash: Hash,
    round: u64,
    attempt: u32,
    prev_hash: Hash,
    active: &[u32],
) -> RoundParams {
    let sa = &genesis.spec.secagg;
    let n = active.len();
    let q = quantizer(genesis);
    let seed = fedmesh_crypto::hash::Hasher::new("fedmesh secagg v1 graph seed")
        .chain(prev_hash.as_bytes())
        .chain(&attempt.to_le_bytes())
        .finalize();
    RoundParams {
        genesis: genesis_hash,
        round: secagg::session(round, attempt),
        members: active
            .iter()
            .filter_map(|m| genesis.member(*m))
            .map(|m| (m.index, m.public_key))
            .collect(),
        threshold: sa.threshold_for(n),
        bits: q.ring_bits().expect("validated in the genesis"),
        len: genesis.layout().param_count() + 1,
        graph: graph::Graph::new(active, sa.degree, seed.0),
    }
}

pub fn quantizer(genesis: &Genesis) -> quant::Quantizer {
    let sa = &genesis.spec.secagg;
    quant::Quantizer {
        clip: sa.clip,
        value_bits: sa.value_bits,
        max_weight: sa.max_weight,
        members: genesis.members.len(),
    }
}

enum MemberState {
    /// Not trained yet.
    Waiting(member::Start),
    Keys(member::AwaitKeys),
    Shares(member::AwaitShares),
    Survivors(member::AwaitSurvivors),
    Consistency(member::AwaitConsistency),
    Done,
}

enum CoordState {
    Keys(coordinator::CollectKeys),
    Shares(coordinator::CollectShares),
    Masked(coordinator::CollectMasked),
    Consistency(coordinator::CollectConsistency),
    Unmask(coordinator::CollectUnmask),
    Done,
}

/// One session at one member.
pub struct Session {
    pub attempt: u32,
    pub coordinator: u32,
    pub params: Arc<RoundParams>,
    me: u32,
    started: Instant,
    member: Option<MemberState>,
    input: Option<Vec<u64>>,
    // The transcript: every message seen in this session.
    pub key_list: Option<KeyList>,
    pub shares: BTreeMap<u32, Signed<Shares>>,
    pub relay: Option<Vec<SharesFor>>,
    pub masked: BTreeMap<u32, Signed<MaskedInput>>,
    pub survivors: Option<Survivors>,
    pub consistency: Option<ConsistencyList>,
    pub unmask: BTreeMap<u32, Signed<Unmask>>,
    coord: Option<(CoordState, Instant)>,
    /// Messages that arrived before this member could use them.
    pending: Vec<(u32, SecaggMsg)>,
}

/// What the session wants the node to do.
pub enum Action {
    Publish(SecaggMsg),
    /// The coordinator's sum is ready.
    Outcome(Outcome),
}

impl Session {
    pub fn new(
        params: RoundParams,
        attempt: u32,
        coordinator: u32,
        me: u32,
    ) -> Result<Session, SecaggError> {
        let params = Arc::new(params);
        let start = member::Start::new(params.clone(), me)?;
        let coord = if coordinator == me {
            Some((
                CoordState::Keys(coordinator::CollectKeys::new(params.clone())?),
                Instant::now(),
            ))
        } else {
            None
        };
        Ok(Session {
            attempt,
            coordinator,
            params,
            me,
            started: Instant::now(),
            member: Some(MemberState::Waiting(start)),
            input: None,
            key_list: None,
            shares: BTreeMap::new(),
            relay: None,
            masked: BTreeMap::new(),
            survivors: None,
            consistency: None,
            unmask: BTreeMap::new(),
            coord,
            pending: Vec::new(),
        })
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The member's quantized input is ready: advertise keys.
    pub fn set_input(&mut self, input: Vec<u64>, key: &identity::SecretKey) -> Vec<Action> {
        self.input = Some(input);
        let mut out = Vec::new();
        if let Some(MemberState::Waiting(start)) = self.member.take() {
            let (next, msg) = start.advertise(key, &mut rand::rngs::OsRng);
            self.member = Some(MemberState::Keys(next));
            out.push(Action::Publish(SecaggMsg::Advertise(msg.clone())));
            out.extend(self.on_message(self.me, SecaggMsg::Advertise(msg), key));
            for (sender, msg) in std::mem::take(&mut self.pending) {
                out.extend(self.on_message(sender, msg, key));
            }
        }
        out
    }

    /// A message of this session from `sender` (its envelope already verified).
    pub fn on_message(
        &mut self,
        sender: u32,
        msg: SecaggMsg,
        key: &identity::SecretKey,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let from_coordinator = sender == self.coordinator;
        match msg {
            // Members' own messages: keep for the transcript and feed the coordinator.
            SecaggMsg::Advertise(m) if m.body.member == sender => {
                if let Some((CoordState::Keys(c), _)) = self.coord.as_mut() {
                    if let Err(e) = c.add(m) {
                        tracing::warn!(culprit = sender, error = %e, "secagg: advertisement refused");
                    }
                }
            }
            SecaggMsg::Shares(m) if m.body.member == sender => {
                if let Some((CoordState::Shares(c), _)) = self.coord.as_mut() {
                    if let Err(e) = c.add(m.clone()) {
                        tracing::warn!(culprit = sender, error = %e, "secagg: shares refused");
                    }
                }
                // The first version counts, as at the coordinator: a second, different one is
                // equivocation (caught and recorded by the runtime), never a replacement.
                self.shares.entry(sender).or_insert(m);
            }
            SecaggMsg::Masked(m) if m.body.member == sender => {
                if let Some((CoordState::Masked(c), _)) = self.coord.as_mut() {
                    if let Err(e) = c.add(m.clone()) {
                        tracing::warn!(culprit = sender, error = %e, "secagg: masked input refused");
                    }
                }
                self.masked.entry(sender).or_insert(m);
            }
            SecaggMsg::Consistency(m) if m.body.member == sender => {
                if let Some((CoordState::Consistency(c), _)) = self.coord.as_mut() {
                    if let Err(e) = c.add(m) {
                        tracing::warn!(culprit = sender, error = %e, "secagg: consistency signature refused");
                    }
                }
            }
            SecaggMsg::Unmask(m) if m.body.member == sender => {
                if let Some((CoordState::Unmask(c), _)) = self.coord.as_mut() {
                    if let Err(e) = c.add(m.clone()) {
                        tracing::warn!(culprit = sender, error = %e, "secagg: unmask shares refused");
                    }
                }
                self.unmask.entry(sender).or_insert(m);
            }
            // The coordinator's relays: advance this member's phase.
            relay if from_coordinator => {
                if matches!(self.member, Some(MemberState::Waiting(_))) {
                    self.pending.push((sender, relay));
                    return out;
                }
                out.extend(self.on_relay(relay, key));
            }
            _ => tracing::warn!(
                sender,
                "secagg: message not from its claimed sender or coordinator; ignored"
            ),
        }
        out.extend(self.close_phase(false, key));
        out
    }

    fn on_relay(&mut self, relay: SecaggMsg, key: &identity::SecretKey) -> Vec<Action> {
        let mut out = Vec::new();
        let state = self.member.take();
        let next = match (state, relay) {
            (Some(MemberState::Keys(s)), SecaggMsg::KeyList(list)) => {
                let r = s.share_keys(&list, key, &mut rand::rngs::OsRng);
                self.key_list = Some(list);
                r.map(|(next, msg)| {
                    tracing::info!(session = self.params.round, "secagg: shared keys");
                    self.shares.insert(self.me, msg.clone());
                    out.push(Action::Publish(SecaggMsg::Shares(msg)));
                    MemberState::Shares(next)
                })
            }
            (Some(MemberState::Shares(s)), SecaggMsg::Relay(all)) => {
                let mine = all.iter().find(|r| r.recipient == self.me).cloned();
                self.relay = Some(all);
                match (mine, self.input.as_ref()) {
                    (Some(mine), Some(input)) => {
                        s.masked_input(&mine, input, key).map(|(next, msg)| {
                            tracing::info!(
                                session = self.params.round,
                                "secagg: sent masked input"
                            );
                            self.masked.insert(self.me, msg.clone());
                            out.push(Action::Publish(SecaggMsg::Masked(msg)));
                            MemberState::Survivors(next)
                        })
                    }
                    _ => Err(SecaggError::Coordinator(
                        "no shares were relayed to this member".into(),
                    )),
                }
            }
            (Some(MemberState::Survivors(s)), SecaggMsg::Survivors(sv)) => {
                let r = s.consistency(&sv, key);
                self.survivors = Some(sv);
                r.map(|(next, msg)| {
                    out.push(Action::Publish(SecaggMsg::Consistency(msg)));
                    MemberState::Consistency(next)
                })
            }
            (Some(MemberState::Consistency(s)), SecaggMsg::ConsistencyList(list)) => {
                let r = s.unmask(&list, key);
                self.consistency = Some(list);
                r.map(|msg| {
                    self.unmask.insert(self.me, msg.clone());
                    out.push(Action::Publish(SecaggMsg::Unmask(msg)));
                    MemberState::Done
                })
            }
            (state, relay) => {
                // Gossip can deliver the coordinator's relays out of order (through different
                // peers): a relay for a later phase waits until this member gets there.
                let expects = match &state {
                    Some(MemberState::Waiting(_)) => 0,
                    Some(MemberState::Keys(_)) => 1,
                    Some(MemberState::Shares(_)) => 2,
                    Some(MemberState::Survivors(_)) => 3,
                    Some(MemberState::Consistency(_)) => 4,
                    Some(MemberState::Done) | None => 5,
                };
                let phase = match &relay {
                    SecaggMsg::KeyList(_) => 1,
                    SecaggMsg::Relay(_) => 2,
                    SecaggMsg::Survivors(_) => 3,
                    SecaggMsg::ConsistencyList(_) => 4,
                    _ => 0,
                };
                self.member = state;
                if phase > expects && expects < 5 {
                    self.pending.push((self.coordinator, relay));
                    return out;
                }
                // A relay for a phase this member is not in (it left the session, or the message
                // is late): keep what the transcript needs.
                match relay {
                    SecaggMsg::KeyList(l) => self.key_list = Some(l),
                    SecaggMsg::Relay(r) => self.relay = Some(r),
                    SecaggMsg::Survivors(s) => self.survivors = Some(s),
                    SecaggMsg::ConsistencyList(c) => self.consistency = Some(c),
                    _ => {}
                }
                return out;
            }
        };
        match next {
            Ok(s) => self.member = Some(s),
            Err(e) => {
                tracing::warn!(session = self.params.round, error = %e, "secagg: this member leaves the session");
                self.member = Some(MemberState::Done);
            }
        }
        // Gossip does not deliver a node's own messages back: the coordinator collects its own.
        if self.coord.is_some() {
            let own: Vec<SecaggMsg> = out
                .iter()
                .filter_map(|a| match a {
                    Action::Publish(m) => Some(m.clone()),
                    Action::Outcome(_) => None,
                })
                .collect();
            for m in own {
                out.extend(self.on_message(self.me, m, key));
            }
        }
        // The phase moved on: relays that arrived early may be usable now.
        for (_, relay) in std::mem::take(&mut self.pending) {
            out.extend(self.on_relay(relay, key));
        }
        out
    }

    /// Coordinator: close the current phase when every expected member answered, or when
    /// `timeout` has passed since it opened (`force`), if enough did.
    pub fn close_phase(&mut self, force: bool, key: &identity::SecretKey) -> Vec<Action> {
        let mut out = Vec::new();
        let Some((state, opened)) = self.coord.take() else {
            return out;
        };
        let (next, msg) = match state {
            CoordState::Keys(c) if c.count() >= self.params.members.len() || force => {
                match c.finish() {
                    Ok((next, list)) => (CoordState::Shares(next), Some(SecaggMsg::KeyList(list))),
                    Err(e) => return self.coord_failed(e),
                }
            }
            CoordState::Shares(c)
                if self
                    .key_list
                    .as_ref()
                    .is_some_and(|l| c.count() >= l.keys.len())
                    || force =>
            {
                match c.finish() {
                    Ok((next, relay)) => (
                        CoordState::Masked(next),
                        Some(SecaggMsg::Relay(relay.into_values().collect())),
                    ),
                    Err(e) => return self.coord_failed(e),
                }
            }
            CoordState::Masked(c)
                if self.relay.as_ref().is_some_and(|r| c.count() >= r.len()) || force =>
            {
                match c.finish() {
                    Ok((next, survivors)) => (
                        CoordState::Consistency(next),
                        Some(SecaggMsg::Survivors(survivors)),
                    ),
                    Err(e) => return self.coord_failed(e),
                }
            }
            CoordState::Consistency(c)
                if self
                    .survivors
                    .as_ref()
                    .is_some_and(|s| c.count() >= s.members.len())
                    || force =>
            {
                match c.finish() {
                    Ok((next, list)) => (
                        CoordState::Unmask(next),
                        Some(SecaggMsg::ConsistencyList(list)),
                    ),
                    Err(e) => return self.coord_failed(e),
                }
            }
            CoordState::Unmask(c)
                if self
                    .consistency
                    .as_ref()
                    .is_some_and(|l| c.count() >= l.signatures.len())
                    || force =>
            {
                match c.finish() {
                    Ok(outcome) => {
                        self.coord = Some((CoordState::Done, Instant::now()));
                        out.push(Action::Outcome(outcome));
                        return out;
                    }
                    Err(e) => return self.coord_failed(e),
                }
            }
            other => {
                self.coord = Some((other, opened));
                return out;
            }
        };
        self.coord = Some((next, Instant::now()));
        if let Some(msg) = msg {
            out.push(Action::Publish(msg.clone()));
            // The coordinator is a member too: it reads its own relay.
            out.extend(self.on_message(self.me, msg, key));
        }
        out
    }

    fn coord_failed(&mut self, e: SecaggError) -> Vec<Action> {
        tracing::warn!(session = self.params.round, error = %e, "secagg: the session cannot finish");
        self.coord = Some((CoordState::Done, Instant::now()));
        Vec::new()
    }

    /// Coordinator: has the open phase waited long enough to close without everyone? The key
    /// phase includes the members' training (`keys_timeout`); the others get `phase_timeout`.
    pub fn phase_expired(&self, keys_timeout: Duration, phase_timeout: Duration) -> bool {
        match &self.coord {
            Some((CoordState::Done, _)) | None => false,
            Some((CoordState::Keys(_), opened)) => opened.elapsed() >= keys_timeout,
            Some((_, opened)) => opened.elapsed() >= phase_timeout,
        }
    }

    /// The transcript of what the coordinator used, for [`secagg::replay`]; `None` if this member
    /// has not seen all of it.
    pub fn transcript(&self, unmaskers: &[u32]) -> Option<secagg::Transcript<'_>> {
        let key_list = self.key_list.as_ref()?;
        let relay = self.relay.as_ref()?;
        let consistency = self.consistency.as_ref()?;
        let shares = relay
            .iter()
            .map(|r| self.shares.get(&r.recipient))
            .collect::<Option<Vec<_>>>()?;
        let masked = consistency
            .survivors
            .iter()
            .map(|m| self.masked.get(m))
            .collect::<Option<Vec<_>>>()?;
        let unmask = unmaskers
            .iter()
            .map(|m| self.unmask.get(m))
            .collect::<Option<Vec<_>>>()?;
        Some(secagg::Transcript {
            key_list,
            shares,
            masked,
            consistency,
            unmask,
        })
    }
}
