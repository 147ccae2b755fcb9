//! Robustness in the networked node (mode `plain`): anomaly scores, eviction votes, and the
//! member set as the log has it.
//!
//! After every round it commits, a member scores each participant's update against the round's
//! aggregate ([`robust::score::round_scores`]) and folds the scores into an EWMA history kept in
//! sled, so that a restart remembers. A participant whose EWMA stays over the threshold for
//! `patience` rounds (after the warm-up) gets this member's signed vote, gossiped to all. Every
//! member counts the votes it receives; a round's coordinator puts an eviction record into its
//! proposal for every member with a quorum of valid votes, and the others check it
//! ([`audit::check_membership`] and the signatures) before they approve. From the next round the
//! evicted member is out: not in the coordinator order, its messages refused, its peer blocked.

use std::collections::BTreeSet;

use fedmesh_protocol::audit::{self, RoundRecord};
use fedmesh_protocol::genesis::{Genesis, Mode, RobustSpec};
use fedmesh_protocol::robust::{self, score::History};
use fedmesh_protocol::votes::{EvictionRecord, Outcome, SignedVote, Tally, Vote, VoteError};
use fedmesh_storage::Store;

use fedmesh_crypto::Hash;

/// State key of the score history in sled.
const HISTORY_KEY: &str = "robust-score-history";

/// What a member keeps about the others.
pub(super) struct Defence {
    spec: RobustSpec,
    genesis_hash: Hash,
    /// Members evicted by the log so far.
    evicted: BTreeSet<u32>,
    history: History,
    /// Votes received (and cast), among the log's active members.
    tally: Tally,
}

impl Defence {
    /// The member set of the log in `store` (every round record replayed), and the stored score
    /// history. Fails if the stored log breaks the membership rules (it was verified on append,
    /// so only a damaged data dir does).
    pub fn load(genesis: &Genesis, genesis_hash: Hash, store: &Store) -> anyhow::Result<Defence> {
        let evicted = replay(genesis, store)?;
        let history = match store.get_state(HISTORY_KEY)? {
            Some(bytes) => History::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored score history does not decode; starting afresh");
                History::default()
            }),
            None => History::default(),
        };
        let mut d = Defence {
            spec: genesis.spec.robust.clone(),
            genesis_hash,
            evicted: BTreeSet::new(),
            history,
            tally: new_tally(genesis, genesis_hash, &BTreeSet::new()),
        };
        d.set_evicted(genesis, evicted);
        Ok(d)
    }

    /// Members evicted so far.
    pub fn evicted(&self) -> &BTreeSet<u32> {
        &self.evicted
    }

    /// The active members: genesis members not evicted, sorted.
    pub fn active(&self, genesis: &Genesis) -> Vec<u32> {
        genesis
            .members
            .iter()
            .map(|m| m.index)
            .filter(|m| !self.evicted.contains(m))
            .collect()
    }

    fn set_evicted(&mut self, genesis: &Genesis, evicted: BTreeSet<u32>) {
        for m in &evicted {
            self.history.remove(*m);
        }
        self.evicted = evicted;
        self.tally = new_tally(genesis, self.genesis_hash, &self.evicted);
    }

    /// A record this member is about to approve or append: valid against the log's member set.
    pub fn check(&self, genesis: &Genesis, height: u64, record: &RoundRecord) -> Result<(), String> {
        let mut evicted = self.evicted.clone();
        audit::check_membership(genesis, &mut evicted, height, record).map_err(|e| e.to_string())
    }

    /// A record was appended: apply its evictions. Returns the members it evicted.
    pub fn committed(&mut self, genesis: &Genesis, height: u64, record: &RoundRecord) -> Vec<u32> {
        let mut evicted = self.evicted.clone();
        if let Err(e) = audit::check_membership(genesis, &mut evicted, height, record) {
            // Appended entries were checked before; this would be a bug, not a peer's doing.
            tracing::error!(error = %e, "an appended record breaks the membership rules");
            return Vec::new();
        }
        let out: Vec<u32> = record.evictions.iter().map(|r| r.target).collect();
        if !out.is_empty() {
            self.set_evicted(genesis, evicted);
        }
        out
    }

    /// Votes are cast only in mode plain with `[spec.robust] votes = true`.
    pub fn votes_on(&self, mode: Mode) -> bool {
        self.spec.votes && mode == Mode::Plain
    }

    /// Score round `round`'s participants (`inputs`, their updates) against `aggregate`, fold
    /// the scores into the history and store it; returns the votes this member casts now.
    pub fn score_round(
        &mut self,
        store: &Store,
        me: u32,
        round: u64,
        inputs: &[robust::Input],
        aggregate: &[f32],
    ) -> Vec<Vote> {
        if inputs.len() < 3 {
            return Vec::new(); // robust z-scores need a crowd to stand out from
        }
        let scores = robust::score::round_scores(inputs, aggregate);
        self.history.record(
            round,
            &scores,
            self.spec.score_decay,
            self.spec.score_threshold,
        );
        if let Err(e) = store.put_state(HISTORY_KEY, &self.history.encode()) {
            tracing::warn!(error = %e, "cannot store the score history");
        }
        if round <= self.spec.warmup_rounds {
            return Vec::new();
        }
        self.tally.expire(round);
        let by_member: std::collections::BTreeMap<u32, &robust::score::PeerScore> =
            scores.iter().map(|s| (s.member, s)).collect();
        self.history
            .suspects(self.spec.patience)
            .into_iter()
            .filter(|(m, _)| *m != me && self.tally.is_active(*m) && !self.tally.has_voted(me, *m))
            .map(|(target, ewma)| Vote {
                round,
                voter: me,
                target,
                score: ewma as f32,
                evidence: by_member
                    .get(&target)
                    .map(|s| s.evidence(round))
                    .unwrap_or(Hash::ZERO),
            })
            .collect()
    }

    /// Count a vote (this member's own or a peer's) at round `now`.
    pub fn count(&mut self, vote: &SignedVote, now: u64) -> Result<Outcome, VoteError> {
        self.tally.count(vote, now)
    }

    /// Eviction records for a proposal of round `round`: every member with a quorum of valid
    /// votes.
    pub fn evictions(&mut self, round: u64) -> Vec<EvictionRecord> {
        self.tally.expire(round);
        self.tally.ready(round)
    }

    /// Replay the member set from the log after entries were appended by catching up; returns
    /// the members evicted since the last replay.
    pub fn replay(&mut self, genesis: &Genesis, store: &Store) -> anyhow::Result<Vec<u32>> {
        let evicted = replay(genesis, store)?;
        let new: Vec<u32> = evicted.difference(&self.evicted).copied().collect();
        if !new.is_empty() {
            self.set_evicted(genesis, evicted);
        }
        Ok(new)
    }
}

/// The members evicted by the round records in `store`.
fn replay(genesis: &Genesis, store: &Store) -> anyhow::Result<BTreeSet<u32>> {
    let mut evicted = BTreeSet::new();
    for entry in store.entries().skip(1) {
        let entry = entry?;
        let record = entry.record()?;
        audit::check_membership(genesis, &mut evicted, entry.height, &record)?;
    }
    Ok(evicted)
}

fn new_tally(genesis: &Genesis, genesis_hash: Hash, evicted: &BTreeSet<u32>) -> Tally {
    let spec = &genesis.spec.robust;
    Tally::new(
        genesis_hash,
        genesis
            .members
            .iter()
            .filter(|m| !evicted.contains(&m.index))
            .map(|m| (m.index, m.public_key)),
        spec.quorum,
        spec.vote_expiry_rounds,
    )
}
