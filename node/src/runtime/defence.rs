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

/// State key of the votes counted and not yet spent or expired.
const VOTES_KEY: &str = "robust-pending-votes";

/// What a member keeps about the others.
pub(super) struct Defence {
    spec: RobustSpec,
    /// Members evicted by the log so far.
    evicted: BTreeSet<u32>,
    history: History,
    /// Votes received (and cast), among the log's active members.
    tally: Tally,
    /// The same votes as a list, stored in sled so that a restart keeps counting them.
    votes: Vec<SignedVote>,
}

impl Defence {
    /// The member set of the log in `store` (every round record replayed), and the stored score
    /// history. Fails if the stored log breaks the membership rules (it was verified on append,
    /// so only a damaged data dir does).
    pub fn load(genesis: &Genesis, genesis_hash: Hash, store: &Store) -> anyhow::Result<Defence> {
        let (evicted, last_round) = replay(genesis, store)?;
        let history = match store.get_state(HISTORY_KEY)? {
            Some(bytes) => History::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored score history does not decode; starting afresh");
                History::default()
            }),
            None => History::default(),
        };
        let mut d = Defence {
            spec: genesis.spec.robust.clone(),
            evicted: BTreeSet::new(),
            history,
            tally: new_tally(genesis, genesis_hash, &evicted),
            votes: Vec::new(),
        };
        for m in &evicted {
            d.history.remove(*m);
        }
        d.evicted = evicted;
        // Votes this member had counted before it stopped, as far as they are still valid.
        let stored: Vec<SignedVote> = match store.get_state(VOTES_KEY)? {
            Some(bytes) => {
                fedmesh_protocol::codec::decode(&bytes, fedmesh_protocol::codec::HARD_LIMIT)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        for v in stored {
            if d.tally.count(&v, last_round + 1).is_ok() {
                d.votes.push(v);
            }
        }
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

    /// Apply newly evicted members: their history, their votes and the votes against them go.
    fn set_evicted(&mut self, evicted: BTreeSet<u32>) {
        for m in evicted.difference(&self.evicted) {
            self.history.remove(*m);
            self.tally.evict(*m);
            self.votes
                .retain(|v| v.vote.voter != *m && v.vote.target != *m);
        }
        self.evicted = evicted;
    }

    fn store_votes(&self, store: &Store) {
        if let Err(e) = store.put_state(VOTES_KEY, &fedmesh_protocol::codec::encode(&self.votes)) {
            tracing::warn!(error = %e, "cannot store the pending votes");
        }
    }

    /// A record this member is about to approve or append: valid against the log's member set.
    pub fn check(
        &self,
        genesis: &Genesis,
        height: u64,
        record: &RoundRecord,
    ) -> Result<(), String> {
        let mut evicted = self.evicted.clone();
        audit::check_membership(genesis, &mut evicted, height, record).map_err(|e| e.to_string())
    }

    /// A record was appended: apply its evictions. Returns the members it evicted.
    pub fn committed(
        &mut self,
        genesis: &Genesis,
        store: &Store,
        height: u64,
        record: &RoundRecord,
    ) -> Vec<u32> {
        let mut evicted = self.evicted.clone();
        if let Err(e) = audit::check_membership(genesis, &mut evicted, height, record) {
            // Appended entries were checked before; this would be a bug, not a peer's doing.
            tracing::error!(error = %e, "an appended record breaks the membership rules");
            return Vec::new();
        }
        let out: Vec<u32> = record.evictions.iter().map(|r| r.target).collect();
        if !out.is_empty() {
            self.set_evicted(evicted);
            self.store_votes(store);
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
        self.expire(round);
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

    /// Members caught equivocating in round `round` (evidence in its committed record): each
    /// gets the highest round score ([`robust::score::CAP`]) in its history, so that it counts
    /// towards a vote like any anomalous update, and the history is stored.
    pub fn equivocated(&mut self, store: &Store, round: u64, members: &[u32]) {
        if members.is_empty() {
            return;
        }
        for &m in members {
            self.history.record_misbehaviour(
                round,
                m,
                self.spec.score_decay,
                self.spec.score_threshold,
            );
            tracing::warn!(
                round,
                member = m,
                "equivocation counted in the member's anomaly score"
            );
        }
        if let Err(e) = store.put_state(HISTORY_KEY, &self.history.encode()) {
            tracing::warn!(error = %e, "cannot store the score history");
        }
    }

    /// Count a vote (this member's own or a peer's) at round `now`; a new one is stored.
    pub fn count(
        &mut self,
        store: &Store,
        vote: &SignedVote,
        now: u64,
    ) -> Result<Outcome, VoteError> {
        let out = self.tally.count(vote, now)?;
        if matches!(out, Outcome::Counted { .. }) {
            self.votes.push(vote.clone());
            self.store_votes(store);
        }
        Ok(out)
    }

    /// Eviction records for a proposal of round `round`: every member with a quorum of valid
    /// votes.
    pub fn evictions(&mut self, round: u64) -> Vec<EvictionRecord> {
        self.expire(round);
        self.tally.ready(round)
    }

    fn expire(&mut self, round: u64) {
        let expiry = self.spec.vote_expiry_rounds.max(1);
        self.tally.expire(round);
        self.votes.retain(|v| v.vote.round + expiry > round);
    }

    /// Replay the member set from the log after entries were appended by catching up; returns
    /// the members evicted since the last replay.
    pub fn replay(&mut self, genesis: &Genesis, store: &Store) -> anyhow::Result<Vec<u32>> {
        let (evicted, _) = replay(genesis, store)?;
        let new: Vec<u32> = evicted.difference(&self.evicted).copied().collect();
        if !new.is_empty() {
            self.set_evicted(evicted);
            self.store_votes(store);
        }
        Ok(new)
    }
}

/// The members evicted by the round records in `store`, and the last round in it.
fn replay(genesis: &Genesis, store: &Store) -> anyhow::Result<(BTreeSet<u32>, u64)> {
    let mut evicted = BTreeSet::new();
    let mut last = 0;
    for entry in store.entries().skip(1) {
        let entry = entry?;
        let record = entry.record()?;
        audit::check_membership(genesis, &mut evicted, entry.height, &record)?;
        last = record.round;
    }
    Ok((evicted, last))
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

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::audit::Entry;

    /// Votes counted before a restart still count after it: two of the three votes needed are in
    /// when the node stops; after it reopens its store, one more vote completes the quorum.
    #[test]
    fn pending_votes_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let dealer_cfg = dir.path().join("dealer.toml");
        std::fs::write(&dealer_cfg, "[spec.robust]\nvotes = true\n").unwrap();
        crate::dealer::run(&crate::dealer::Request {
            members: 4,
            out: dir.path().join("net"),
            config: Some(dealer_cfg),
            base_port: Some(7000),
            rounds: Some(0),
            data_path: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist_5k.csv.gz").into()),
            mode: None,
        })
        .unwrap();
        let bytes = std::fs::read(dir.path().join("net/genesis.toml")).unwrap();
        let (genesis, gh) = Genesis::parse(&bytes).unwrap();
        let keys: Vec<_> = (0..3)
            .map(|i| {
                crate::keys::MemberKeys::load(&dir.path().join(format!("net/member-{i}")), &genesis)
                    .unwrap()
                    .identity
            })
            .collect();
        let vote = |voter: u32| {
            let v = Vote {
                round: 1,
                voter,
                target: 3,
                score: 9.0,
                evidence: Hash::ZERO,
            };
            SignedVote::sign(gh, v, &keys[voter as usize])
        };
        let data = dir.path().join("data");
        {
            let store = Store::open(&data).unwrap();
            store.init_genesis(&Entry::genesis(&bytes)).unwrap();
            let mut d = Defence::load(&genesis, gh, &store).unwrap();
            for voter in 0..2 {
                assert!(matches!(
                    d.count(&store, &vote(voter), 1),
                    Ok(Outcome::Counted { votes, needed: 3 }) if votes == voter as usize + 1
                ));
            }
            assert!(d.evictions(1).is_empty(), "2 of 4 is not a quorum");
            store.flush().unwrap();
        }
        let store = Store::open(&data).unwrap();
        let mut d = Defence::load(&genesis, gh, &store).unwrap();
        assert!(matches!(d.count(&store, &vote(0), 1), Ok(Outcome::Known)));
        d.count(&store, &vote(2), 1).unwrap();
        let ready = d.evictions(1);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].target, ready[0].votes.len()), (3, 3));
        // Expired votes are dropped rather than carried forever.
        assert!(d
            .evictions(1 + genesis.spec.robust.vote_expiry_rounds)
            .is_empty());
    }
}
