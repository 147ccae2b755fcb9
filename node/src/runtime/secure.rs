//! Mode `secagg` in the node: secure-aggregation sessions per round attempt, driven by gossip.
//!
//! Without groups an attempt has one session of all active members. With `[spec.robust]
//! group_size` g > 0 the active members are split into the random groups that
//! [`groups::draw`](fedmesh_protocol::robust::groups::draw) gives for the chain head and round, and
//! each group runs its own session ([`secagg::group_session`]: its messages, shares and masks are
//! bound to the group) with a threshold of at least g, so that a group that keeps fewer than g
//! members is never unmasked: it is skipped, and only the sums of the others are revealed.
//!
//! Every member plays its part in its own group's session ([`fedmesh_protocol::secagg::member`]);
//! the attempt's coordinator also collects each phase of every session
//! ([`fedmesh_protocol::secagg::coordinator`]) and closes it when every expected member has
//! answered or the phase timeout expires — the members that did not answer are that phase's
//! dropouts. All messages are gossiped, so every member keeps every session's transcript and can
//! replay the coordinator's computation to check the record it proposes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedmesh_crypto::identity;
use fedmesh_crypto::Hash;
use fedmesh_protocol::audit::{GroupSum, GroupsSummary};
use fedmesh_protocol::genesis::Genesis;
use fedmesh_protocol::robust::{self, groups, suspicion};
use fedmesh_protocol::secagg::{
    self, coordinator, graph, member, quant, ConsistencyList, KeyList, MaskedInput, Outcome,
    RoundParams, SecaggError, Shares, SharesFor, Signed, Survivors, Unmask,
};
use fedmesh_protocol::wire::SecaggMsg;
use fedmesh_storage::{Store, StoreError};

/// State key: the last (round, attempt) this member advertised secagg keys in.
const ADVERTISED_KEY: &str = "secagg-advertised";

/// Record durably (flushed before it returns) that this member advertises its keys in `attempt`
/// of `round`: called before the advertisement is published, so that a member restarted within
/// that attempt knows it already spoke there ([`Attempt::join`]).
pub fn remember_advertised(store: &Store, round: u64, attempt: u32) -> Result<(), StoreError> {
    store.put_state(
        ADVERTISED_KEY,
        &fedmesh_protocol::codec::encode(&(round, attempt)),
    )
}

/// Whether this member advertised keys, before a restart, in `attempt` of `round` or in a later
/// attempt of it (attempts only move forward, so the stored one is the last). A stored value
/// that cannot be read counts as advertised (sitting an attempt out is safe, speaking twice is
/// not); one that does not decode (a damaged data dir) does not, or the member would sit out
/// for good.
fn advertised_in(store: &Store, round: u64, attempt: u32) -> bool {
    match store.get_state(ADVERTISED_KEY) {
        Ok(None) => false,
        Ok(Some(bytes)) => match fedmesh_protocol::codec::decode::<(u64, u32)>(&bytes, 64) {
            Ok((r, a)) => r == round && attempt <= a,
            Err(e) => {
                tracing::warn!(error = %e, "the stored secagg advertisement marker does not decode; ignoring it");
                false
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the secagg advertisement marker; sitting this attempt out");
            true
        }
    }
}

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

/// The parameters of group `group` (its `members`, as drawn) in session `attempt` of `round`. The
/// group's members all hold each other's shares (groups are small: SecAgg+ neighbourhoods are for
/// large sessions), and its threshold is at least the group size g of the genesis, so that no
/// phase continues, and no sum is unmasked, with fewer than g members.
pub fn group_params(
    genesis: &Genesis,
    genesis_hash: Hash,
    round: u64,
    attempt: u32,
    group: u32,
    members: &[u32],
) -> RoundParams {
    let session = secagg::group_session(round, attempt, group);
    let seed = fedmesh_crypto::hash::Hasher::new("fedmesh secagg v1 group graph seed")
        .chain(&session.to_le_bytes())
        .finalize();
    RoundParams {
        genesis: genesis_hash,
        round: session,
        members: members
            .iter()
            .filter_map(|m| genesis.member(*m))
            .map(|m| (m.index, m.public_key))
            .collect(),
        threshold: group_threshold(genesis, members.len()),
        bits: quantizer(genesis)
            .ring_bits()
            .expect("validated in the genesis"),
        len: genesis.layout().param_count() + 1,
        graph: graph::Graph::new(members, 0, seed.0),
    }
}

/// The secagg threshold of a group of `size`: the configured one (a majority when 0), raised to
/// the group size g and capped at the group's size (which is at least g).
pub fn group_threshold(genesis: &Genesis, size: usize) -> usize {
    let sa = &genesis.spec.secagg;
    let configured = if sa.threshold == 0 {
        size / 2 + 1
    } else {
        sa.threshold
    };
    configured
        .max(genesis.spec.robust.group_size)
        .min(size)
        .max(2)
}

/// The quantizer of every member's input (and of the sums).
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

/// One session at one member: a member of the session, or (with groups) an observer that keeps
/// the transcript of another group's session, and the coordinator of it if it coordinates the
/// attempt.
pub struct Session {
    /// The group's index in the drawn groups (0 without groups).
    pub group: u32,
    pub coordinator: u32,
    pub params: Arc<RoundParams>,
    me: u32,
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
    /// Coordinator: the session's sum, once unmasked.
    pub outcome: Option<Outcome>,
    /// Messages that arrived before this member could use them.
    pending: Vec<(u32, SecaggMsg)>,
}

/// What the session wants the node to do.
pub enum Action {
    Publish(SecaggMsg),
    /// The coordinator's sum is ready.
    Outcome(Outcome),
    /// The coordinator's session ended without a sum (too few members got through).
    Failed,
}

impl Session {
    pub fn new(
        params: RoundParams,
        group: u32,
        coordinator: u32,
        me: u32,
    ) -> Result<Session, SecaggError> {
        let params = Arc::new(params);
        params.validate()?;
        // A member outside the session (another group's) only keeps its transcript.
        let member = if params.members.contains_key(&me) {
            Some(MemberState::Waiting(member::Start::new(
                params.clone(),
                me,
            )?))
        } else {
            None
        };
        let coord = if coordinator == me {
            Some((
                CoordState::Keys(coordinator::CollectKeys::new(params.clone())?),
                Instant::now(),
            ))
        } else {
            None
        };
        Ok(Session {
            group,
            coordinator,
            params,
            me,
            member,
            input: None,
            key_list: None,
            shares: BTreeMap::new(),
            relay: None,
            masked: BTreeMap::new(),
            survivors: None,
            consistency: None,
            unmask: BTreeMap::new(),
            coord,
            outcome: None,
            pending: Vec::new(),
        })
    }

    /// Coordinator: the session ended, with or without a sum.
    pub fn closed(&self) -> bool {
        matches!(self.coord, Some((CoordState::Done, _)))
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
                    _ => None,
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
                        self.outcome = Some(outcome.clone());
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
        tracing::warn!(session = self.params.round, group = self.group, error = %e, "secagg: the session cannot finish; nothing of it is revealed");
        self.coord = Some((CoordState::Done, Instant::now()));
        vec![Action::Failed]
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

/// What a member whose masked input is in `session`'s sum contributed: a commitment to its signed
/// masked input (only the total weight is revealed, so `num_samples` is 0).
pub fn contribution(session: &Session, member: u32) -> fedmesh_protocol::audit::Contribution {
    fedmesh_protocol::audit::Contribution {
        member,
        num_samples: 0,
        update_hash: session
            .masked
            .get(&member)
            .map(|msg| {
                Hash::of(
                    "fedmesh secagg masked input v1",
                    &fedmesh_protocol::codec::encode(msg),
                )
            })
            .unwrap_or(Hash::ZERO),
        train_loss: 0.0,
    }
}

/// The session number a message belongs to (`None` for an empty relay, which no coordinator sends).
fn session_of(msg: &SecaggMsg) -> Option<u64> {
    Some(match msg {
        SecaggMsg::Advertise(m) => m.body.round,
        SecaggMsg::KeyList(l) => l.round,
        SecaggMsg::Shares(m) => m.body.round,
        SecaggMsg::Relay(r) => r.first()?.round,
        SecaggMsg::Masked(m) => m.body.round,
        SecaggMsg::Survivors(s) => s.round,
        SecaggMsg::Consistency(m) => m.body.round,
        SecaggMsg::ConsistencyList(l) => l.round,
        SecaggMsg::Unmask(m) => m.body.round,
    })
}

/// One attempt of a round at one member: a single session of all active members, or (with
/// groups) one session per drawn group.
pub struct Attempt {
    /// The round this attempt belongs to.
    pub round: u64,
    /// 0 for the round's first coordinator, 1 after one failover, …
    pub attempt: u32,
    /// The groups drawn for the round; `None` without groups.
    pub drawn: Option<Vec<Vec<u32>>>,
    /// One session per group, by group index (one session without groups).
    pub sessions: Vec<Session>,
    started: Instant,
}

impl Attempt {
    /// The sessions of `attempt` of `round` among the `active` members (sorted), on top of the
    /// log head `prev_hash`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        genesis: &Genesis,
        genesis_hash: Hash,
        round: u64,
        attempt: u32,
        prev_hash: Hash,
        active: &[u32],
        coordinator: u32,
        me: u32,
    ) -> Result<Attempt, String> {
        let g = genesis.spec.robust.group_size;
        let (drawn, sessions) = if g == 0 {
            let params = params(genesis, genesis_hash, round, attempt, prev_hash, active);
            let session = Session::new(params, 0, coordinator, me).map_err(|e| e.to_string())?;
            (None, vec![session])
        } else {
            let drawn = groups::draw(&prev_hash, round, active, g).map_err(|e| {
                format!("no groups of {g} can be drawn from the active members: {e}")
            })?;
            let sessions = drawn
                .iter()
                .enumerate()
                .map(|(j, members)| {
                    let params =
                        group_params(genesis, genesis_hash, round, attempt, j as u32, members);
                    Session::new(params, j as u32, coordinator, me)
                        .map_err(|e| format!("group {j}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (Some(drawn), sessions)
        };
        Ok(Attempt {
            round,
            attempt,
            drawn,
            sessions,
            started: Instant::now(),
        })
    }

    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// This member's quantized input is ready: it joins its own group's session.
    pub fn set_input(&mut self, input: Vec<u64>, key: &identity::SecretKey) -> Vec<Action> {
        match self.sessions.iter_mut().find(|s| s.member.is_some()) {
            Some(session) => session.set_input(input, key),
            None => Vec::new(),
        }
    }

    /// This member's quantized input is ready: join this attempt ([`Attempt::set_input`]) —
    /// unless this member advertised keys in it (or a later attempt of the round) before a
    /// restart. It then sits the attempt out, a dropout like any other, and joins the next
    /// attempt or round: fresh keys in the same session would be a second, different signed
    /// message for one slot, which the others rightly record as equivocation. Resending the old
    /// advertisement is not an option: its key-agreement secrets died with the process, and
    /// nothing may be masked under keys this member no longer holds.
    pub fn join(
        &mut self,
        input: Vec<u64>,
        key: &identity::SecretKey,
        store: &Store,
    ) -> Vec<Action> {
        if advertised_in(store, self.round, self.attempt) {
            tracing::info!(
                round = self.round,
                attempt = self.attempt,
                "secagg: restarted within an attempt this member already advertised keys in; \
                 sitting it out (a dropout) until the next attempt or round"
            );
            return Vec::new();
        }
        self.set_input(input, key)
    }

    /// A message of this attempt from `sender`: to the session it names.
    pub fn on_message(
        &mut self,
        sender: u32,
        msg: SecaggMsg,
        key: &identity::SecretKey,
    ) -> Vec<Action> {
        let index = match (&self.drawn, session_of(&msg)) {
            (None, _) => 0,
            (Some(_), Some(session)) => secagg::group_of_session(session) as usize,
            (Some(_), None) => return Vec::new(),
        };
        match self.sessions.get_mut(index) {
            // A message of another attempt or round is not kept in this one's transcript.
            Some(session)
                if self.drawn.is_some() && session_of(&msg) != Some(session.params.round) =>
            {
                tracing::warn!(sender, "secagg: message for another session; ignored");
                Vec::new()
            }
            Some(session) => session.on_message(sender, msg, key),
            None => {
                tracing::warn!(
                    sender,
                    "secagg: message for a group this round does not have; ignored"
                );
                Vec::new()
            }
        }
    }

    /// Coordinator: close the phases that have waited long enough.
    pub fn close_expired(
        &mut self,
        keys_timeout: Duration,
        phase_timeout: Duration,
        key: &identity::SecretKey,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        for s in &mut self.sessions {
            if s.phase_expired(keys_timeout, phase_timeout) {
                out.extend(s.close_phase(true, key));
            }
        }
        out
    }

    /// Coordinator: every session has ended (with a sum or without).
    pub fn all_closed(&self) -> bool {
        self.sessions.iter().all(Session::closed)
    }
}

/// A revealed group sum: as the coordinator unmasked it, or as a member replayed it.
pub struct Revealed {
    /// The group's index in the drawn groups.
    pub group: u32,
    /// Its session's sum and who got through which phase.
    pub outcome: Outcome,
    /// Members whose unmasking shares were used, sorted.
    pub unmaskers: Vec<u32>,
}

/// What a round of group sums comes to.
pub struct Judged {
    /// What the round record says about the groups.
    pub summary: GroupsSummary,
    /// The round's update: the rule applied to the group means.
    pub update: Vec<f32>,
}

/// Judge a round's group means as the node does, from what the log holds: `baseline` is the
/// last update that moved the model (from the stored checkpoints) and the usual values recorded
/// by the last round with groups ([`suspicion::Baseline::from_log`]). `rule` is applied to the
/// kept means; if it cannot work on this few (Krum needs f + 3), their weighted mean is taken.
/// Returns the judgement and the baseline after the round (its usual values go into the record).
/// The in-process drill calls this too, so that its numbers describe the node.
///
/// `public`: with genesis `spec.robust.reference_rows` > 0, the model before the round and the
/// public reference rows ([`reference_set`]); every group mean is then also scored by what it
/// does to the model's loss on them ([`suspicion::judge_with`]).
pub fn judge_means(
    rule: &robust::Rule,
    threshold: f64,
    inputs: &[robust::Input],
    baseline: &suspicion::Baseline,
    public: Option<&suspicion::Reference>,
) -> Result<(suspicion::Judgement, suspicion::Baseline), String> {
    let rule = match robust::aggregate(rule, inputs, &mut robust::State::default()) {
        Err(robust::AggregateError::TooFew { .. }) => robust::Rule::Mean,
        _ => rule.clone(),
    };
    let mut state = robust::State {
        groups: baseline.clone(),
        ..robust::State::default()
    };
    let judged = suspicion::judge_with(&rule, inputs, threshold, &mut state, public)
        .map_err(|e| format!("the rule does not apply to the group means: {e}"))?;
    Ok((judged, state.groups))
}

/// Run `judge` with the public reference rows of `ctx` and the model `model` before the round
/// (None when genesis asks for no reference rows): the argument of [`judge_groups`] and the
/// paillier close.
pub fn with_reference<T>(
    ctx: &super::Context,
    model: &[f32],
    judge: impl FnOnce(Option<&suspicion::Reference>) -> Result<T, String>,
) -> Result<T, String> {
    let set = reference_set(&ctx.genesis, &ctx.data.reference)?;
    let public = set.as_ref().map(|set| suspicion::Reference {
        layout: &ctx.layout,
        model,
        set,
    });
    judge(public.as_ref())
}

/// The public reference rows genesis asks for (`spec.robust.reference_rows`), from this member's
/// data ([`crate::train::MemberData::reference`]); None when genesis asks for none. Fails if the
/// data holds another number of rows (it was loaded for another genesis).
pub fn reference_set(
    genesis: &Genesis,
    rows: &crate::train::Dataset,
) -> Result<Option<robust::reference::Set>, String> {
    let want = genesis.spec.robust.reference_rows;
    if want == 0 {
        return Ok(None);
    }
    if rows.len() != want {
        return Err(format!(
            "the genesis asks for {want} reference rows, but this member's data holds {}",
            rows.len()
        ));
    }
    robust::reference::Set::new(rows.features, rows.classes, rows.x.clone(), rows.y.clone())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Apply the genesis rule to the revealed group sums of `attempt` of `round` (the coordinator to
/// propose, every other member to check the proposal: both get the same answer from the same
/// sums and the same log), judged against `baseline` (see [`judge_means`]). A sum of fewer than
/// g contributors, or one that does not decode to the model's length, is not used (its group
/// counts as skipped). Fails if no group sum is usable.
// The round's facts come from different places (log, sessions, checkpoints, public rows); a
// struct for them would only be built to be taken apart here.
#[allow(clippy::too_many_arguments)]
pub fn judge_groups(
    genesis: &Genesis,
    round: u64,
    attempt: u32,
    drawn: &[Vec<u32>],
    revealed: &[Revealed],
    model_len: usize,
    baseline: &suspicion::Baseline,
    public: Option<&suspicion::Reference>,
) -> Result<Judged, String> {
    let r = &genesis.spec.robust;
    let g = r.group_size;
    let q = quantizer(genesis);
    let mut used: Vec<(&Revealed, quant::Decoded)> = Vec::new();
    for rev in revealed {
        if rev.outcome.survivors.len() < g || rev.group as usize >= drawn.len() {
            continue;
        }
        match q.decode(&rev.outcome.sum) {
            Ok(d) if d.mean.len() == model_len => used.push((rev, d)),
            Ok(_) => tracing::warn!(
                group = rev.group,
                "secagg: a group sum has the wrong length; skipped"
            ),
            Err(e) => {
                tracing::warn!(group = rev.group, error = %e, "secagg: a group sum does not decode; skipped")
            }
        }
    }
    used.sort_by_key(|(rev, _)| rev.group);
    used.dedup_by_key(|(rev, _)| rev.group);
    if used.is_empty() {
        return Err("no group revealed a usable sum".into());
    }
    let inputs: Vec<robust::Input> = used
        .iter()
        .map(|(rev, d)| robust::Input::new(rev.group, &d.mean, d.total_weight))
        .collect();
    let (judged, after) = judge_means(&r.rule(), r.score_threshold, &inputs, baseline, public)?;
    let effects = judged.reference.as_ref().map(|r| &r.effects);
    let revealed_sums: Vec<GroupSum> = used
        .iter()
        .zip(judged.scores.iter().zip(&judged.flagged))
        .enumerate()
        .map(|(j, ((rev, d), (score, flagged)))| GroupSum {
            group: rev.group,
            session: secagg::group_session(round, attempt, rev.group),
            contributors: rev.outcome.survivors.clone(),
            unmaskers: rev.unmaskers.clone(),
            total_weight: d.total_weight,
            sum_hash: fedmesh_protocol::audit::group_sum_hash(&rev.outcome.sum),
            score: score.score,
            flagged: *flagged,
            reference: effects.map(|e| e[j]),
        })
        .collect();
    let skipped = (0..drawn.len() as u32)
        .filter(|j| !revealed_sums.iter().any(|s| s.group == *j))
        .collect();
    Ok(Judged {
        summary: GroupsSummary {
            size: g as u32,
            drawn: drawn.to_vec(),
            revealed: revealed_sums,
            skipped,
            decided: judged.decided,
            usual: after.usual(),
            reference_loss: judged.reference.as_ref().map(|r| r.loss),
            reference_spread: judged.reference.as_ref().map(|r| r.spread),
            reference_scale: judged.reference.as_ref().map(|r| r.scale),
            reference_best: judged.reference.as_ref().map(|r| r.best),
        },
        update: judged.update,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use fedmesh_protocol::signed::Signed;

    use super::*;

    /// A six-member secagg network in groups of three (a small model, so masks are cheap).
    fn network(dir: &std::path::Path) -> (Genesis, Hash, Vec<identity::SecretKey>) {
        let cfg = dir.join("dealer.toml");
        std::fs::write(
            &cfg,
            "[spec]\nmode = \"secagg\"\n[spec.model]\nlayers = [784, 2, 10]\n\
             [spec.robust]\nrule = \"median\"\ngroup_size = 3\n",
        )
        .unwrap();
        crate::dealer::run(&crate::dealer::Request {
            members: 6,
            out: dir.join("net"),
            config: Some(cfg),
            base_port: Some(7000),
            rounds: Some(1),
            data_path: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist_5k.csv.gz").into()),
            mode: None,
        })
        .unwrap();
        let bytes = std::fs::read(dir.join("net/genesis.toml")).unwrap();
        let (genesis, gh) = Genesis::parse(&bytes).unwrap();
        let keys = (0..6)
            .map(|i| {
                crate::keys::MemberKeys::load(&dir.join(format!("net/member-{i}")), &genesis)
                    .unwrap()
                    .identity
            })
            .collect();
        (genesis, gh, keys)
    }

    /// Member m's update: every value (m + 1) / 100, weight 10.
    fn update(m: u32, len: usize) -> Vec<f32> {
        vec![(m + 1) as f32 / 100.0; len]
    }

    /// Run attempt 0 of round 1 (coordinator: member 0) over an in-memory gossip among all
    /// members but `silent` (which never trains). Returns every member's attempt.
    fn run(
        genesis: &Genesis,
        gh: Hash,
        keys: &[identity::SecretKey],
        silent: Option<u32>,
    ) -> Vec<Attempt> {
        let head = Hash::of("test head", b"1");
        let active: Vec<u32> = (0..6).collect();
        let len = genesis.layout().param_count();
        let q = quantizer(genesis);
        let mut attempts: Vec<Attempt> = (0..6)
            .map(|m| Attempt::new(genesis, gh, 1, 0, head, &active, 0, m).unwrap())
            .collect();
        let mut queue: VecDeque<(u32, SecaggMsg)> = VecDeque::new();
        let push = |queue: &mut VecDeque<(u32, SecaggMsg)>, from: u32, actions: Vec<Action>| {
            for a in actions {
                if let Action::Publish(msg) = a {
                    queue.push_back((from, msg));
                }
            }
        };
        for m in active.iter().copied().filter(|m| Some(*m) != silent) {
            let input = q.encode(&update(m, len), 10).unwrap().values;
            let actions = attempts[m as usize].set_input(input, &keys[m as usize]);
            push(&mut queue, m, actions);
        }
        for _ in 0..10 {
            while let Some((from, msg)) = queue.pop_front() {
                for to in active
                    .iter()
                    .copied()
                    .filter(|m| *m != from && Some(*m) != silent)
                {
                    let actions =
                        attempts[to as usize].on_message(from, msg.clone(), &keys[to as usize]);
                    push(&mut queue, to, actions);
                }
            }
            if attempts[0].all_closed() {
                break;
            }
            // The coordinator's phase timeouts expire: it goes on without the silent member.
            let actions = attempts[0].close_expired(Duration::ZERO, Duration::ZERO, &keys[0]);
            push(&mut queue, 0, actions);
        }
        assert!(attempts[0].all_closed(), "every session ends");
        attempts
    }

    fn revealed_by_coordinator(attempt: &Attempt) -> Vec<Revealed> {
        attempt
            .sessions
            .iter()
            .filter_map(|s| {
                let outcome = s.outcome.clone()?;
                Some(Revealed {
                    group: s.group,
                    unmaskers: s.unmask.keys().copied().collect(),
                    outcome,
                })
            })
            .collect()
    }

    /// Every group's session reveals its group's sum only; the rule works on the group means;
    /// another member replays every group's session from what it saw and gets exactly the same
    /// judgement; a group that keeps fewer than g members is skipped and nothing of it revealed.
    #[test]
    fn groups_reveal_their_sums_and_members_replay_the_judgement() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, gh, keys) = network(dir.path());
        let len = genesis.layout().param_count();
        let attempts = run(&genesis, gh, &keys, None);
        let drawn = attempts[0].drawn.clone().unwrap();
        assert_eq!(drawn.len(), 2);
        assert!(attempts.iter().all(|a| a.drawn.as_ref() == Some(&drawn)));
        let revealed = revealed_by_coordinator(&attempts[0]);
        assert_eq!(revealed.len(), 2);
        // Round 1: nothing in the log yet.
        let first = suspicion::Baseline::default();
        let judged = judge_groups(&genesis, 1, 0, &drawn, &revealed, len, &first, None).unwrap();
        let step = quantizer(&genesis).step() as f32;
        let mut means = Vec::new();
        for (s, group) in judged.summary.revealed.iter().zip(&drawn) {
            assert_eq!(&s.contributors, group);
            assert_eq!(s.total_weight, 30);
            let mean = group.iter().map(|m| (m + 1) as f32 / 100.0).sum::<f32>() / 3.0;
            means.push(mean);
        }
        // The median of two group means is their average.
        let expected = (means[0] + means[1]) / 2.0;
        assert!(judged
            .update
            .iter()
            .all(|v| (v - expected).abs() <= 2.0 * step));
        assert!(judged.summary.skipped.is_empty());

        // Member 4 replays the coordinator's sessions from its own transcripts.
        let replayed: Vec<Revealed> = judged
            .summary
            .revealed
            .iter()
            .map(|s| {
                let session = &attempts[4].sessions[s.group as usize];
                let t = session
                    .transcript(&s.unmaskers)
                    .expect("transcript complete");
                Revealed {
                    group: s.group,
                    outcome: secagg::replay(session.params.clone(), &t).unwrap(),
                    unmaskers: s.unmaskers.clone(),
                }
            })
            .collect();
        let again = judge_groups(&genesis, 1, 0, &drawn, &replayed, len, &first, None).unwrap();
        assert_eq!(again.summary, judged.summary);
        assert_eq!(again.update, judged.update);

        // The next round is judged against what the log holds: the update that moved the model
        // and the usual values of the record. Round 1 found its reference (both groups agree) and
        // recorded a usual cosine; judged from the log, the same sums are scored against the
        // update and pass, and the record's usual values move as the stateful judge's do.
        assert!(judged.summary.decided);
        let usual = judged.summary.usual;
        assert!(usual.cosine.is_some(), "{usual:?}");
        let from_log = suspicion::Baseline::from_log(Some(judged.update.clone()), usual);
        let next = judge_groups(&genesis, 2, 0, &drawn, &replayed, len, &from_log, None).unwrap();
        assert!(next.summary.decided);
        assert!(next.summary.revealed.iter().all(|s| !s.flagged));
        let mut state = robust::State {
            groups: from_log.clone(),
            ..robust::State::default()
        };
        let inputs: Vec<(Vec<f32>, u64)> = replayed
            .iter()
            .map(|r| {
                let d = quantizer(&genesis).decode(&r.outcome.sum).unwrap();
                (d.mean, d.total_weight)
            })
            .collect();
        let inputs: Vec<robust::Input> = inputs
            .iter()
            .enumerate()
            .map(|(j, (m, w))| robust::Input::new(j as u32, m, *w))
            .collect();
        let stateful = suspicion::judge(
            &genesis.spec.robust.rule(),
            &inputs,
            genesis.spec.robust.score_threshold,
            &mut state,
        )
        .unwrap();
        assert_eq!(next.update, stateful.update);
        assert_eq!(next.summary.usual, state.groups.usual());
        assert!(
            next.summary.usual.log_norm.is_some(),
            "learned against the reference"
        );
        // A member without the previous update (no checkpoints) would judge otherwise, and so
        // would not approve: the reference is part of the judgement.
        let blind = judge_groups(&genesis, 2, 0, &drawn, &replayed, len, &first, None).unwrap();
        assert_ne!(blind.summary.usual, next.summary.usual);

        // Member 5 never trains: its group keeps two members, below g = 3, and is not unmasked.
        let attempts = run(&genesis, gh, &keys, Some(5));
        let revealed = revealed_by_coordinator(&attempts[0]);
        let five = drawn.iter().position(|g| g.contains(&5)).unwrap() as u32;
        assert_eq!(revealed.len(), 1);
        assert_ne!(revealed[0].group, five);
        let judged = judge_groups(&genesis, 1, 0, &drawn, &revealed, len, &first, None).unwrap();
        assert_eq!(judged.summary.skipped, vec![five]);
        assert!(judged
            .summary
            .revealed
            .iter()
            .all(|s| s.contributors.len() >= 3));
    }

    /// A message signed for one group's session is refused by every other group's session, even
    /// between the same members: the session number (round, attempt, group) is signed.
    #[test]
    fn messages_are_bound_to_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, gh, keys) = network(dir.path());
        let members = [0u32, 1, 2];
        let group0 = group_params(&genesis, gh, 1, 0, 0, &members);
        let group1 = group_params(&genesis, gh, 1, 0, 1, &members);
        assert_eq!(group0.threshold, 3, "the threshold is at least g");
        let start = member::Start::new(Arc::new(group0.clone()), 0).unwrap();
        let (_, adv) = start.advertise(&keys[0], &mut rand::rngs::OsRng);
        adv.verify(&group0).unwrap();
        assert!(matches!(
            adv.verify(&group1),
            Err(SecaggError::WrongRound { culprit: 0, .. })
        ));
        // Relabelled for the other group, the signature no longer holds.
        let mut moved: Signed<secagg::Advertise> = adv.clone();
        moved.body.round = group1.round;
        assert!(matches!(
            moved.verify(&group1),
            Err(SecaggError::Signature { culprit: 0, .. })
        ));
    }

    /// Regression (a restarted secagg member recorded as an equivocator): with the marker of an
    /// advertisement in attempt 1 of round 1 stored, member 1 sends nothing in attempts 0 and 1
    /// of round 1, and advertises again in attempt 2 and in round 2; without a marker it
    /// advertises at once.
    #[test]
    fn a_member_sits_out_the_attempts_it_advertised_in_before_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, gh, keys) = network(dir.path());
        let store = Store::open(&dir.path().join("data")).unwrap();
        let head = Hash::of("test head", b"1");
        let active: Vec<u32> = (0..6).collect();
        let q = quantizer(&genesis);
        let input = q
            .encode(&update(1, genesis.layout().param_count()), 10)
            .unwrap()
            .values;
        let advertises = |round: u64, attempt: u32| {
            let mut a = Attempt::new(&genesis, gh, round, attempt, head, &active, 0, 1).unwrap();
            a.join(input.clone(), &keys[1], &store)
                .iter()
                .any(|x| matches!(x, Action::Publish(SecaggMsg::Advertise(_))))
        };
        assert!(advertises(1, 0), "no marker: it takes part");
        remember_advertised(&store, 1, 1).unwrap();
        assert!(!advertises(1, 0));
        assert!(!advertises(1, 1));
        assert!(advertises(1, 2), "the next attempt, with fresh keys");
        assert!(advertises(2, 0), "the next round");
    }
}
