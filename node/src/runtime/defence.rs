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
//!
//! Mode `secagg` with groups (`[spec.robust] group_size`): individual updates stay hidden, so a
//! member instead observes every committed round's revealed groups and their flags into a
//! [`Suspicion`] table (group testing, kept in sled like the score history) and votes against the
//! members whose posterior reaches the genesis confidence; votes and evictions then go the same way.

use std::collections::BTreeSet;

use fedmesh_protocol::audit::{self, RoundRecord};
use fedmesh_protocol::genesis::{Genesis, Mode, RobustSpec};
use fedmesh_protocol::membership::{Change, Members};
use fedmesh_protocol::robust::{self, score::History, suspicion::Suspicion};
use fedmesh_protocol::votes::{EvictionRecord, Outcome, SignedVote, Tally, Vote, VoteError};
use fedmesh_storage::Store;

use fedmesh_crypto::Hash;

/// State key of the score history in sled.
const HISTORY_KEY: &str = "robust-score-history";

/// State key of the group-testing suspicion table in sled.
const SUSPICION_KEY: &str = "robust-suspicion";

/// State key of the votes counted and not yet spent or expired.
const VOTES_KEY: &str = "robust-pending-votes";

/// What a member keeps about the others.
pub(super) struct Defence {
    spec: RobustSpec,
    /// The member set as the log has it (genesis + admissions − evictions).
    members: Members,
    history: History,
    /// Mode secagg with groups: every member's suspicion from the flags of its groups.
    suspicion: Suspicion,
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
        let (members, last_round) = replay(genesis, genesis_hash, store)?;
        let history = match store.get_state(HISTORY_KEY)? {
            Some(bytes) => History::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored score history does not decode; starting afresh");
                History::default()
            }),
            None => History::default(),
        };
        let suspicion = match store.get_state(SUSPICION_KEY)? {
            Some(bytes) => Suspicion::decode(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored suspicion table does not decode; starting afresh");
                Suspicion::default()
            }),
            None => Suspicion::default(),
        };
        let mut d = Defence {
            spec: genesis.spec.robust.clone(),
            tally: new_tally(genesis_hash, &genesis.spec.robust, &members),
            members,
            history,
            suspicion,
            votes: Vec::new(),
        };
        for m in d.members.evicted().clone() {
            d.history.remove(m);
            d.suspicion.remove(m);
        }
        d.observe_log(store)?;
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
        self.members.evicted()
    }

    /// The member set as the log has it.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The active members (genesis and admitted, not evicted), sorted.
    pub fn active(&self) -> Vec<u32> {
        self.members.active().collect()
    }

    /// Take the member set after a record: evicted members' history, their votes and the votes
    /// against them go; admitted members join the tally.
    fn set_members(&mut self, members: Members) {
        let gone: Vec<u32> = members
            .evicted()
            .difference(self.members.evicted())
            .copied()
            .collect();
        for m in gone {
            self.history.remove(m);
            self.suspicion.remove(m);
            self.tally.evict(m);
            self.votes
                .retain(|v| v.vote.voter != m && v.vote.target != m);
        }
        for m in members.active_members() {
            if !self.tally.is_active(m.index) {
                self.tally.admit(m.index, m.public_key);
            }
        }
        self.members = members;
    }

    fn store_votes(&self, store: &Store) {
        if let Err(e) = store.put_state(VOTES_KEY, &fedmesh_protocol::codec::encode(&self.votes)) {
            tracing::warn!(error = %e, "cannot store the pending votes");
        }
    }

    /// A record this member is about to approve or append: valid against the log's member set.
    pub fn check(&self, height: u64, record: &RoundRecord) -> Result<(), String> {
        let mut members = self.members.clone();
        audit::check_membership(&mut members, height, record)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A record was appended: apply its evictions and admissions. Returns what changed.
    pub fn committed(&mut self, store: &Store, height: u64, record: &RoundRecord) -> Change {
        let mut members = self.members.clone();
        let change = match audit::check_membership(&mut members, height, record) {
            Ok(c) => c,
            Err(e) => {
                // Appended entries were checked before; this would be a bug, not a peer's doing.
                tracing::error!(error = %e, "an appended record breaks the membership rules");
                return Change::default();
            }
        };
        if change != Change::default() {
            self.set_members(members);
            self.store_votes(store);
        }
        change
    }

    /// Votes are cast with `[spec.robust] votes = true` in mode plain, and in modes secagg and
    /// paillier with groups (`group_size` > 0).
    pub fn votes_on(&self, mode: Mode) -> bool {
        self.spec.votes && (mode == Mode::Plain || self.spec.group_size > 0)
    }

    /// Fold the groups of every record in the log into the suspicion table (rounds already
    /// observed count once), so that rounds appended by catching up, or before a lost table,
    /// count too. Evicted members are left out.
    fn observe_log(&mut self, store: &Store) -> anyhow::Result<()> {
        // Also without configured groups: a paillier round whose sum did not decode closes with
        // its random groups' sums and flags the group that spoiled it, and a node that appended
        // such a round by catching up must count it as one that committed it did.
        let model = self.spec.suspicion_model();
        let before = self.suspicion.clone();
        for entry in store.entries().skip(1) {
            let record = entry?.record()?;
            self.observe_record(&model, &record);
        }
        for m in self.members.evicted() {
            self.suspicion.remove(*m);
        }
        if self.suspicion != before {
            store.put_state(SUSPICION_KEY, &self.suspicion.encode())?;
        }
        Ok(())
    }

    /// Fold a record's revealed groups and their scores into the suspicion table (a flagged
    /// group counts as a flag, one just under the threshold partly: `observe_scores`), if the
    /// round was decided (an undecided round's flags are no evidence; rounds already observed
    /// count once).
    fn observe_record(&mut self, model: &robust::suspicion::Model, record: &RoundRecord) {
        let Some(summary) = record.groups.as_ref().filter(|s| s.decided) else {
            return;
        };
        let groups: Vec<Vec<u32>> = summary
            .revealed
            .iter()
            .map(|g| g.contributors.clone())
            .collect();
        let scores: Vec<f64> = summary.revealed.iter().map(|g| g.score).collect();
        self.suspicion.observe_scores(
            model,
            record.round,
            &groups,
            &scores,
            self.spec.score_threshold,
        );
    }

    /// Mode secagg with groups: fold a committed round's revealed groups and their flags into the
    /// suspicion table and store it; returns the votes this member casts now (against active
    /// suspects it has not voted against yet, after the warm-up).
    pub fn observe_groups(
        &mut self,
        genesis: &Genesis,
        store: &Store,
        me: u32,
        record: &RoundRecord,
    ) -> Vec<Vote> {
        // An undecided round's flags are no evidence (see `suspicion::Judgement::decided`).
        let Some(summary) = record.groups.as_ref().filter(|s| s.decided) else {
            return Vec::new();
        };
        let model = self.spec.suspicion_model();
        self.observe_record(&model, record);
        if let Err(e) = store.put_state(SUSPICION_KEY, &self.suspicion.encode()) {
            tracing::warn!(error = %e, "cannot store the suspicion table");
        }
        if !self.votes_on(genesis.spec.mode) || record.round <= self.spec.warmup_rounds {
            return Vec::new();
        }
        let round = record.round;
        self.expire(round);
        let evidence = Hash::of(
            "fedmesh group suspicion evidence v1",
            &fedmesh_protocol::codec::encode(summary),
        );
        self.suspicion
            .suspects(&model)
            .into_iter()
            .filter(|(m, _)| *m != me && self.tally.is_active(*m) && !self.tally.has_voted(me, *m))
            .map(|(target, posterior)| Vote {
                round,
                voter: me,
                target,
                score: posterior as f32,
                evidence,
            })
            .collect()
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

    /// `me`'s own votes still pending at round `now`, to gossip again: counted, still valid at
    /// `now` (cast no more than the expiry ago), and against a target that is still a member.
    /// A vote spent by a committed eviction is gone already (the evicted target's votes are
    /// dropped with it).
    pub fn own_votes(&self, me: u32, now: u64) -> Vec<SignedVote> {
        let expiry = self.spec.vote_expiry_rounds.max(1);
        self.votes
            .iter()
            .filter(|v| {
                v.vote.voter == me
                    && v.vote.round <= now
                    && v.vote.round + expiry > now
                    && self.tally.is_active(v.vote.target)
            })
            .cloned()
            .collect()
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
    /// the members evicted and admitted since the last replay.
    pub fn replay(
        &mut self,
        genesis: &Genesis,
        genesis_hash: Hash,
        store: &Store,
    ) -> anyhow::Result<Change> {
        self.observe_log(store)?;
        let (members, _) = replay(genesis, genesis_hash, store)?;
        let change = Change {
            evicted: members
                .evicted()
                .difference(self.members.evicted())
                .copied()
                .collect(),
            admitted: members
                .admitted()
                .map(|m| m.index)
                .filter(|i| self.members.get(*i).is_none())
                .collect(),
        };
        if change != Change::default() {
            self.set_members(members);
            self.store_votes(store);
        }
        Ok(change)
    }
}

/// The member set after the round records in `store` (each checked in order), and the last round
/// in it.
pub fn replay(
    genesis: &Genesis,
    genesis_hash: Hash,
    store: &Store,
) -> anyhow::Result<(Members, u64)> {
    let mut members = Members::new(genesis, genesis_hash);
    let mut last = 0;
    for entry in store.entries().skip(1) {
        let entry = entry?;
        let record = entry.record()?;
        audit::check_membership(&mut members, entry.height, &record)?;
        last = record.round;
    }
    Ok((members, last))
}

fn new_tally(genesis_hash: Hash, spec: &RobustSpec, members: &Members) -> Tally {
    Tally::new(
        genesis_hash,
        members.active_members().map(|m| (m.index, m.public_key)),
        spec.quorum,
        spec.vote_expiry_rounds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::audit::Entry;

    /// Group testing in the node: hand-made rounds of groups of two among six members, where
    /// member 5's group is always flagged and its partner changes. Member 0 votes against 5 in
    /// the round the posterior first reaches the confidence (as `rounds_to_suspect` predicts for
    /// flagged rounds in a row), never against an honest member, and the suspicion table it keeps
    /// in sled is the same after a restart.
    #[test]
    fn flagged_groups_make_a_suspect_and_a_vote() {
        use fedmesh_protocol::audit::{GroupSum, GroupsSummary};
        let dir = tempfile::tempdir().unwrap();
        let dealer_cfg = dir.path().join("dealer.toml");
        std::fs::write(
            &dealer_cfg,
            "[spec]\nmode = \"secagg\"\n[spec.robust]\nvotes = true\ngroup_size = 2\nwarmup_rounds = 0\n",
        )
        .unwrap();
        crate::dealer::run(&crate::dealer::Request {
            members: 6,
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
        let store = Store::open(&dir.path().join("data")).unwrap();
        store.init_genesis(&Entry::genesis(&bytes)).unwrap();
        let mut d = Defence::load(&genesis, gh, &store).unwrap();
        let record = |round: u64| {
            // Member 5 sits with a new partner every round; its group is flagged.
            let partner = (round % 5) as u32;
            let others: Vec<u32> = (0..5).filter(|m| *m != partner).collect();
            let groups = [vec![partner, 5], others[..2].to_vec(), others[2..].to_vec()];
            RoundRecord {
                groups: Some(GroupsSummary {
                    size: 2,
                    drawn: groups.to_vec(),
                    revealed: groups
                        .iter()
                        .enumerate()
                        .map(|(j, c)| GroupSum {
                            group: j as u32,
                            session: 0,
                            contributors: c.clone(),
                            unmaskers: c.clone(),
                            total_weight: 1,
                            sum_hash: Hash::ZERO,
                            score: if j == 0 { 9.0 } else { 0.1 },
                            flagged: j == 0,
                            reference: None,
                        })
                        .collect(),
                    skipped: Vec::new(),
                    decided: true,
                    usual: Default::default(),
                    reference_loss: None,
                    reference_spread: None,
                    reference_scale: None,
                    reference_best: None,
                }),
                ..RoundRecord::new(round, Mode::Secagg, Hash::ZERO, Hash::ZERO)
            }
        };
        let model = genesis.spec.robust.suspicion_model();
        let expected = robust::suspicion::rounds_to_suspect(&model, 2).unwrap();
        let mut voted_in = None;
        for round in 1..=expected + 2 {
            let votes = d.observe_groups(&genesis, &store, 0, &record(round));
            assert!(votes.iter().all(|v| v.target == 5), "{votes:?}");
            if !votes.is_empty() && voted_in.is_none() {
                voted_in = Some(round);
                // Counted, so that it is not cast again.
                let signed = SignedVote::sign(
                    gh,
                    votes[0],
                    &crate::keys::MemberKeys::load(&dir.path().join("net/member-0"), &genesis)
                        .unwrap()
                        .identity,
                );
                d.count(&store, &signed, round).unwrap();
            } else if voted_in.is_some_and(|v| round < v + genesis.spec.robust.vote_expiry_rounds) {
                assert!(votes.is_empty(), "one vote per target until it expires");
            }
        }
        // Flagged every round, member 5 is a suspect no later than `rounds_to_suspect` says;
        // explaining away (its partners are cleared by their clean rounds) can make it sooner.
        let voted_in = voted_in.expect("member 5 got a vote");
        assert!(
            voted_in <= expected,
            "voted in round {voted_in}, expected by {expected}"
        );
        let table = d.suspicion.clone();
        assert_eq!(table.members[&5].flagged, expected + 2);
        assert!(table.suspects(&model).iter().all(|(m, _)| *m == 5));
        drop(d);
        let again = Defence::load(&genesis, gh, &store).unwrap();
        assert_eq!(again.suspicion, table);
    }

    /// A four-member network with eviction votes on, dealt into `dir/net`: its genesis file's
    /// bytes, the parsed genesis, its hash and every member's identity key.
    fn voting_network(
        dir: &std::path::Path,
    ) -> (
        Vec<u8>,
        Genesis,
        Hash,
        Vec<fedmesh_crypto::identity::SecretKey>,
    ) {
        let dealer_cfg = dir.join("dealer.toml");
        std::fs::write(&dealer_cfg, "[spec.robust]\nvotes = true\n").unwrap();
        crate::dealer::run(&crate::dealer::Request {
            members: 4,
            out: dir.join("net"),
            config: Some(dealer_cfg),
            base_port: Some(7000),
            rounds: Some(0),
            data_path: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist_5k.csv.gz").into()),
            mode: None,
        })
        .unwrap();
        let bytes = std::fs::read(dir.join("net/genesis.toml")).unwrap();
        let (genesis, gh) = Genesis::parse(&bytes).unwrap();
        let keys = (0..4)
            .map(|i| {
                crate::keys::MemberKeys::load(&dir.join(format!("net/member-{i}")), &genesis)
                    .unwrap()
                    .identity
            })
            .collect();
        (bytes, genesis, gh, keys)
    }

    /// Votes counted before a restart still count after it: two of the three votes needed are in
    /// when the node stops; after it reopens its store, one more vote completes the quorum.
    #[test]
    fn pending_votes_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, genesis, gh, keys) = voting_network(dir.path());
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

    /// Regression (eviction votes lost when the round moved on): a member's own vote stays
    /// pending, to be gossiped again as each round starts, across rounds and restarts, until it
    /// expires or an eviction record for its target is committed; other members' votes are
    /// theirs to repeat.
    #[test]
    fn own_votes_stay_pending_until_spent_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, genesis, gh, keys) = voting_network(dir.path());
        let expiry = genesis.spec.robust.vote_expiry_rounds;
        let vote = |voter: u32, target: u32| {
            let v = Vote {
                round: 1,
                voter,
                target,
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
            d.count(&store, &vote(0, 3), 1).unwrap();
            d.count(&store, &vote(1, 3), 1).unwrap();
            d.count(&store, &vote(3, 2), 1).unwrap();
            assert_eq!(d.own_votes(0, 1), vec![vote(0, 3)]);
            store.flush().unwrap();
        }
        // The round moved on and the node restarted: the vote is still there to repeat, in every
        // round until it expires.
        let store = Store::open(&data).unwrap();
        let mut d = Defence::load(&genesis, gh, &store).unwrap();
        for now in 2..1 + expiry {
            assert_eq!(d.own_votes(0, now), vec![vote(0, 3)], "round {now}");
        }
        assert!(d.own_votes(0, 1 + expiry).is_empty(), "expired");
        assert_eq!(d.own_votes(3, 2), vec![vote(3, 2)]);
        // A member that missed the votes when they were cast (it was down, or gossip had no peer
        // yet) hears them repeated in a later round, the last one they are valid in, and they
        // still make the quorum there.
        let last = expiry;
        let peer_store = Store::open(&dir.path().join("peer")).unwrap();
        peer_store.init_genesis(&Entry::genesis(&bytes)).unwrap();
        let mut peer = Defence::load(&genesis, gh, &peer_store).unwrap();
        let repeated = [d.own_votes(0, last), d.own_votes(1, last), vec![vote(2, 3)]].concat();
        for v in &repeated {
            peer.count(&peer_store, v, last).unwrap();
        }
        let ready = peer.evictions(last);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].target, ready[0].votes.len()), (3, 3));
        // The third vote completes the quorum; once the eviction is committed, the votes against
        // the evicted member are spent, and its own vote against member 2 goes with it.
        d.count(&store, &vote(2, 3), 2).unwrap();
        let evictions = d.evictions(2);
        assert_eq!(evictions.len(), 1);
        let record = RoundRecord {
            evictions,
            ..RoundRecord::new(2, Mode::Plain, Hash::ZERO, Hash::ZERO)
        };
        let change = d.committed(&store, 1, &record);
        assert_eq!(change.evicted, vec![3]);
        assert!(d.own_votes(0, 3).is_empty());
        assert!(d.own_votes(1, 3).is_empty());
        assert!(d.own_votes(3, 3).is_empty(), "an evicted member's votes go");
    }
}
