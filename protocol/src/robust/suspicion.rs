//! Suspicion by group testing: when only group sums are revealed, the robust rule and the anomaly
//! scores flag *groups*, and each member's suspicion is what the flags of the groups it sat in say
//! about it. Groups are redrawn every round ([`super::groups`]), so an attacker is in a flagged
//! group every round while an honest member is only when chance puts it next to an attacker.
//!
//! Each member carries the log-likelihood ratio of "attacker" against "honest" given the flags of
//! its groups, under a simple model with three genesis parameters:
//! - `prior` p: the share of members assumed to attack;
//! - `detection` d: how often a group with at least one attacker is flagged;
//! - `false_alarm` f: how often a group of honest members only is flagged.
//!
//! For a member in a group of size s, the others are all honest with probability q = (1 − p)^(s−1),
//! so P(flag | attacker) = d and P(flag | honest) = f·q + d·(1 − q). A flagged round adds
//! ln(d / (f·q + d·(1 − q))) (positive, small: a flag may be a neighbour's fault); a clean round adds
//! ln((1 − d) / (1 − f·q − d·(1 − q))) (strongly negative: an attacker is seldom in a clean group).
//! The posterior probability of "attacker" is σ(ln(p / (1 − p)) + LLR); a member whose posterior
//! reaches the genesis confidence is a suspect. [`rounds_to_suspect`] says how many flagged rounds
//! that takes, which is how long eviction takes as a function of attackers and group size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{aggregate, score, AggregateError, Input, Rule, State};

/// The group-testing model (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// Assumed share of attackers p, in (0, 1).
    pub prior: f64,
    /// P(flag | the group holds an attacker), in (0, 1).
    pub detection: f64,
    /// P(flag | the group is all honest), in [0, detection).
    pub false_alarm: f64,
    /// Posterior probability of "attacker" at which a member is a suspect, in (0, 1).
    pub confidence: f64,
}

impl Model {
    /// Log-likelihood ratio (attacker : honest) of one round in a group of `size` that was or was
    /// not flagged.
    pub fn evidence(&self, size: usize, flagged: bool) -> f64 {
        let others = size.saturating_sub(1) as i32;
        let q = (1.0 - self.prior).powi(others);
        let if_honest = self.false_alarm * q + self.detection * (1.0 - q);
        if flagged {
            (self.detection / if_honest).ln()
        } else {
            ((1.0 - self.detection) / (1.0 - if_honest)).ln()
        }
    }

    /// Log-odds a member starts with.
    pub fn prior_log_odds(&self) -> f64 {
        (self.prior / (1.0 - self.prior)).ln()
    }

    /// Log-odds at which a member is a suspect.
    pub fn threshold_log_odds(&self) -> f64 {
        (self.confidence / (1.0 - self.confidence)).ln()
    }
}

/// Flagged rounds in a row (in groups of `size`, nothing else known) after which a member is a
/// suspect; None if flags alone never make one (the model says a flag is no evidence).
pub fn rounds_to_suspect(model: &Model, size: usize) -> Option<u64> {
    let step = model.evidence(size, true);
    if step.is_nan() || step <= 0.0 {
        return None;
    }
    let need = model.threshold_log_odds() - model.prior_log_odds();
    Some((need / step).ceil().max(1.0) as u64)
}

/// What a round of group sums comes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The round's update: the rule applied to the group means.
    pub update: Vec<f32>,
    /// Each group's anomaly score against that update, in input order (`member` is the group's
    /// index).
    pub scores: Vec<score::PeerScore>,
    /// Which groups are flagged, in input order.
    pub flagged: Vec<bool>,
}

/// Combine a round's group means: `groups[j]` is group j's mean update (its `member` field the
/// group's index, its weight the group's sample count). The rule is applied to the means, each
/// mean is scored against the result, and a group whose score is over `threshold` is flagged.
/// Every member runs this on the same revealed sums and gets the same answer.
pub fn judge(
    rule: &Rule,
    groups: &[Input],
    threshold: f64,
    state: &mut State,
) -> Result<Judgement, AggregateError> {
    let combined = aggregate(rule, groups, state)?;
    let scores = score::round_scores(groups, &combined.update);
    let flagged = scores.iter().map(|s| s.score > threshold).collect();
    Ok(Judgement {
        update: combined.update,
        scores,
        flagged,
    })
}

/// One member's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Rounds in which the member sat in a group whose sum was revealed.
    pub rounds: u64,
    /// Of those, rounds in which its group was flagged.
    pub flagged: u64,
    /// Accumulated log-likelihood ratio, attacker : honest.
    pub llr: f64,
    /// The last round observed.
    pub last_round: u64,
}

/// Every member's suspicion: what a node keeps (in sled) so that a restart remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suspicion {
    pub members: BTreeMap<u32, Record>,
}

/// A stored suspicion table that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("suspicion table does not decode: {0}")]
pub struct SuspicionError(#[from] crate::codec::DecodeError);

impl Suspicion {
    /// Fold in one round: `groups[j]` was flagged iff `flagged[j]`. Groups and flags must pair up
    /// (extra entries of either are ignored). A round already observed for a member is not
    /// counted twice.
    pub fn observe(&mut self, model: &Model, round: u64, groups: &[Vec<u32>], flagged: &[bool]) {
        for (group, &flag) in groups.iter().zip(flagged) {
            let evidence = model.evidence(group.len(), flag);
            for &member in group {
                let r = self.members.entry(member).or_default();
                if r.rounds > 0 && r.last_round >= round {
                    continue;
                }
                r.rounds += 1;
                r.flagged += u64::from(flag);
                r.llr += evidence;
                r.last_round = round;
            }
        }
    }

    /// Posterior probability that `member` attacks (the prior for a member never observed).
    pub fn posterior(&self, model: &Model, member: u32) -> f64 {
        let llr = self.members.get(&member).map_or(0.0, |r| r.llr);
        let odds = model.prior_log_odds() + llr;
        1.0 / (1.0 + (-odds).exp())
    }

    /// Members whose posterior has reached the model's confidence, with that posterior, by member.
    pub fn suspects(&self, model: &Model) -> Vec<(u32, f64)> {
        let bar = model.threshold_log_odds() - model.prior_log_odds();
        self.members
            .iter()
            .filter(|(_, r)| r.llr >= bar)
            .map(|(&m, _)| (m, self.posterior(model, m)))
            .collect()
    }

    /// Forget a member (after its eviction).
    pub fn remove(&mut self, member: u32) {
        self.members.remove(&member);
    }

    /// Bytes for storage.
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    /// Read stored bytes back.
    pub fn decode(bytes: &[u8]) -> Result<Suspicion, SuspicionError> {
        Ok(crate::codec::decode(bytes, crate::codec::HARD_LIMIT)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: Model = Model {
        prior: 0.2,
        detection: 0.9,
        false_alarm: 0.05,
        confidence: 0.99,
    };

    #[test]
    fn evidence_matches_the_formulas_by_hand() {
        // Groups of 5: q = 0.8⁴ = 0.4096; P(flag | honest) = 0.05·0.4096 + 0.9·0.5904 = 0.55184.
        let q: f64 = 0.4096;
        let honest_flag = 0.05 * q + 0.9 * (1.0 - q);
        assert!((honest_flag - 0.55184).abs() < 1e-12);
        assert!((MODEL.evidence(5, true) - (0.9f64 / 0.55184).ln()).abs() < 1e-12);
        assert!((MODEL.evidence(5, false) - (0.1f64 / 0.44816).ln()).abs() < 1e-12);
        // A member alone in its group: a flag is its own doing.
        assert!((MODEL.evidence(1, true) - (0.9f64 / 0.05).ln()).abs() < 1e-12);
    }

    #[test]
    fn hand_made_rounds_count_flags_and_clear_members_of_clean_groups() {
        let mut s = Suspicion::default();
        // Member 0 attacks and is in a flagged group every round; the others rotate around it.
        let rounds: [(Vec<Vec<u32>>, Vec<bool>); 3] = [
            (vec![vec![0, 1, 2], vec![3, 4, 5]], vec![true, false]),
            (vec![vec![0, 3, 4], vec![1, 2, 5]], vec![true, false]),
            (vec![vec![0, 2, 5], vec![1, 3, 4]], vec![true, false]),
        ];
        for (round, (groups, flags)) in rounds.iter().enumerate() {
            s.observe(&MODEL, round as u64 + 1, groups, flags);
        }
        let up = MODEL.evidence(3, true);
        let down = MODEL.evidence(3, false);
        let r = |m: u32| s.members[&m];
        assert_eq!((r(0).rounds, r(0).flagged), (3, 3));
        assert!((r(0).llr - 3.0 * up).abs() < 1e-12);
        // Member 2 sat next to member 0 twice (rounds 1 and 3), the others once.
        for (m, flags) in [(1u32, 1u64), (2, 2), (3, 1), (4, 1), (5, 1)] {
            assert_eq!((r(m).rounds, r(m).flagged), (3, flags), "member {m}");
            let expected = flags as f64 * up + (3 - flags) as f64 * down;
            assert!((r(m).llr - expected).abs() < 1e-12, "member {m}");
        }
        // Observing round 3 again counts nothing.
        let before = s.clone();
        s.observe(&MODEL, 3, &rounds[2].0, &rounds[2].1);
        assert_eq!(s, before);
        assert!(s.posterior(&MODEL, 0) > s.posterior(&MODEL, 1));
        assert!((s.posterior(&MODEL, 99) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn a_member_flagged_every_round_becomes_a_suspect_after_the_predicted_rounds() {
        let n = rounds_to_suspect(&MODEL, 5).unwrap();
        let mut s = Suspicion::default();
        for round in 1..=n {
            assert!(s.suspects(&MODEL).is_empty(), "too early at round {round}");
            s.observe(&MODEL, round, &[vec![7, 1, 2, 3, 4]], &[true]);
        }
        let suspects: Vec<u32> = s.suspects(&MODEL).iter().map(|(m, _)| *m).collect();
        assert_eq!(suspects, vec![1, 2, 3, 4, 7]);
        // One clean round clears all of them well below the bar.
        s.observe(&MODEL, n + 1, &[vec![7, 1, 2, 3, 4]], &[false]);
        assert!(s.suspects(&MODEL).is_empty());
        s.remove(7);
        assert!(!s.members.contains_key(&7));
        assert_eq!(Suspicion::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn larger_groups_need_more_rounds() {
        let rounds: Vec<u64> = [2, 3, 5, 8]
            .iter()
            .map(|&g| rounds_to_suspect(&MODEL, g).unwrap())
            .collect();
        assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "{rounds:?}");
        let useless = Model {
            false_alarm: 0.9,
            ..MODEL
        };
        assert_eq!(rounds_to_suspect(&useless, 1), None);
    }
}
