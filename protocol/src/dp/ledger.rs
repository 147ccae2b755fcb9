//! Every member's privacy spent, as the audit log records it.
//!
//! A round's cost follows from the genesis `[spec.dp]` and from who took part, both public, so
//! every member computes the same [`PrivacySummary`] for a round: the coordinator proposes it
//! in the record, every member recomputes it from its own log and refuses a record whose numbers
//! differ. A [`Ledger`] is the sum of the log's summaries; it is rebuilt from the log, never
//! trusted from elsewhere.
//!
//! Costs per participating member and round:
//! - level `record`: `ceil(epochs / q)` steps of the Poisson-subsampled Gaussian mechanism at
//!   sampling rate q and multiplier σ (DP-SGD on its shard);
//! - level `member`, Gaussian: one step of the Gaussian mechanism (q = 1) at the effective
//!   multiplier σ·√(k/n) ([`super::noise::effective_sigma`]);
//! - level `member`, Laplace: pure ε = 1/b, composed by adding up.
//!
//! Gaussian costs compose in RDP through an [`Accountant`]; a pure ε part adds to the (ε, δ)
//! result (basic composition).

use std::collections::BTreeMap;

use super::{noise, Accountant, DpError};
use crate::audit::{PrivacySummary, RoundRecord, Spend};
use crate::genesis::{DpLevel, DpMechanism, DpSpec};

/// What one round costs one participant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    /// `steps` steps of the subsampled Gaussian mechanism.
    Gaussian { q: f64, sigma: f64, steps: u64 },
    /// Pure ε-DP.
    Pure { epsilon: f64 },
}

impl Cost {
    /// The cost of a round of `spec` in which `participants` of `expected` members contributed,
    /// training `epochs` local epochs; `None` without DP.
    pub fn of_round(
        spec: &DpSpec,
        epochs: usize,
        expected: usize,
        participants: usize,
    ) -> Option<Cost> {
        match (spec.level, spec.mechanism) {
            (DpLevel::None, _) => None,
            (DpLevel::Record, _) => Some(Cost::Gaussian {
                q: spec.sample_rate,
                sigma: spec.noise_multiplier,
                steps: spec.steps_per_round(epochs),
            }),
            (DpLevel::Member, DpMechanism::Gaussian) => Some(Cost::Gaussian {
                q: 1.0,
                sigma: noise::effective_sigma(spec, expected, participants),
                steps: 1,
            }),
            (DpLevel::Member, DpMechanism::Laplace) => Some(Cost::Pure {
                epsilon: 1.0 / spec.noise_multiplier,
            }),
        }
    }

    /// The cost a round recorded with `summary` had for each of its participants.
    pub fn of_summary(summary: &PrivacySummary) -> Cost {
        match summary.mechanism {
            DpMechanism::Gaussian => Cost::Gaussian {
                q: summary.sample_rate,
                sigma: summary.noise_multiplier,
                steps: summary.steps,
            },
            DpMechanism::Laplace => Cost::Pure {
                epsilon: 1.0 / summary.noise_multiplier,
            },
        }
    }
}

/// One member's spend: its rounds and their costs (identical Gaussian costs grouped, so that a
/// long log composes in a few accountant calls).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberLedger {
    rounds: u64,
    /// (q, σ, total steps).
    gaussian: Vec<(f64, f64, u64)>,
    pure: f64,
}

impl MemberLedger {
    /// Rounds in which this member's data was used.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Add one round's cost.
    pub fn add(&mut self, cost: Cost) {
        self.rounds += 1;
        match cost {
            Cost::Gaussian { q, sigma, steps } => {
                match self.gaussian.iter_mut().find(|(gq, gs, _)| {
                    gq.to_bits() == q.to_bits() && gs.to_bits() == sigma.to_bits()
                }) {
                    Some(g) => g.2 = g.2.saturating_add(steps),
                    None => self.gaussian.push((q, sigma, steps)),
                }
            }
            Cost::Pure { epsilon } => self.pure += epsilon,
        }
    }

    /// This ledger with one more round.
    pub fn with(&self, cost: Cost) -> MemberLedger {
        let mut next = self.clone();
        next.add(cost);
        next
    }

    /// ε spent so far at `delta` (0 for a member that spent nothing; a pure-only ledger ignores
    /// δ but still needs a valid one).
    pub fn epsilon(&self, delta: f64) -> Result<f64, DpError> {
        let mut acc = Accountant::new();
        for &(q, sigma, steps) in &self.gaussian {
            acc.compose(q, sigma, steps)?;
        }
        let gaussian = if self.gaussian.is_empty() {
            super::check_delta(delta)?;
            0.0
        } else {
            acc.epsilon(delta)?.0
        };
        Ok(gaussian + self.pure)
    }
}

/// Every member's spend, from the privacy summaries of a log's round records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    members: BTreeMap<u32, MemberLedger>,
}

/// A proposed summary that differs from the one this member computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the record's privacy summary is wrong: {0}")]
pub struct SummaryMismatch(pub String);

impl Ledger {
    /// An empty ledger: nothing spent.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Add a committed record (one without a summary costs nothing).
    pub fn add_record(&mut self, record: &RoundRecord) {
        let Some(summary) = &record.privacy else {
            return;
        };
        let cost = Cost::of_summary(summary);
        for c in &record.participants {
            self.members.entry(c.member).or_default().add(cost);
        }
    }

    /// The ledger of a log's records, in order.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RoundRecord>) -> Ledger {
        let mut l = Ledger::new();
        for r in records {
            l.add_record(r);
        }
        l
    }

    /// One member's spend so far.
    pub fn member(&self, member: u32) -> MemberLedger {
        self.members.get(&member).cloned().unwrap_or_default()
    }

    /// The summary for a round of `spec` on top of this ledger: `participants` (sorted) of the
    /// `members` (sorted, all active members, the expected count) contributed. `None` without DP.
    pub fn summary(
        &self,
        spec: &DpSpec,
        epochs: usize,
        members: &[u32],
        participants: &[u32],
    ) -> Result<Option<PrivacySummary>, DpError> {
        let Some(cost) = Cost::of_round(spec, epochs, members.len(), participants.len()) else {
            return Ok(None);
        };
        let delta = match spec.mechanism {
            DpMechanism::Gaussian => spec.delta,
            DpMechanism::Laplace => 0.0,
        };
        // ε of a pure-only ledger does not depend on δ, but the accountant wants a valid one.
        let at = if delta > 0.0 { delta } else { 0.5 };
        let mut spent = Vec::with_capacity(members.len());
        for &m in members {
            let mut l = self.member(m);
            if participants.binary_search(&m).is_ok() {
                l.add(cost);
            }
            spent.push(Spend {
                member: m,
                rounds: l.rounds(),
                epsilon: l.epsilon(at)?,
            });
        }
        let (noise_multiplier, sample_rate, steps) = match cost {
            Cost::Gaussian { q, sigma, steps } => (sigma, q, steps),
            Cost::Pure { .. } => (spec.noise_multiplier, 1.0, 1),
        };
        Ok(Some(PrivacySummary {
            level: spec.level,
            mechanism: spec.mechanism,
            noise_multiplier,
            sample_rate,
            steps,
            delta,
            spent,
        }))
    }

    /// Check a proposed summary against the one this member computed (`expected`). Everything
    /// but ε must be equal to the bit; ε within a relative 10⁻⁹ (so that a different libm does
    /// not split the network).
    pub fn check(
        expected: Option<&PrivacySummary>,
        got: Option<&PrivacySummary>,
    ) -> Result<(), SummaryMismatch> {
        let (e, g) = match (expected, got) {
            (None, None) => return Ok(()),
            (Some(_), None) => return Err(SummaryMismatch("missing".into())),
            (None, Some(_)) => return Err(SummaryMismatch("present without spec.dp".into())),
            (Some(e), Some(g)) => (e, g),
        };
        let same = e.level == g.level
            && e.mechanism == g.mechanism
            && e.noise_multiplier.to_bits() == g.noise_multiplier.to_bits()
            && e.sample_rate.to_bits() == g.sample_rate.to_bits()
            && e.steps == g.steps
            && e.delta.to_bits() == g.delta.to_bits()
            && e.spent.len() == g.spent.len();
        if !same {
            return Err(SummaryMismatch(format!(
                "the round's cost differs: expected {e:?}, got {g:?}"
            )));
        }
        for (a, b) in e.spent.iter().zip(&g.spent) {
            let close = (a.epsilon - b.epsilon).abs() <= 1e-9 * a.epsilon.abs().max(1.0)
                || (a.epsilon.is_infinite() && a.epsilon == b.epsilon);
            if a.member != b.member || a.rounds != b.rounds || !close {
                return Err(SummaryMismatch(format!(
                    "member {}: expected {} rounds and ε = {}, got member {} with {} rounds and ε = {}",
                    a.member, a.rounds, a.epsilon, b.member, b.rounds, b.epsilon
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Contribution, Metrics};
    use crate::genesis::Mode;
    use crate::Hash;

    fn record(round: u64, participants: &[u32], privacy: Option<PrivacySummary>) -> RoundRecord {
        RoundRecord {
            participants: participants
                .iter()
                .map(|m| Contribution {
                    member: *m,
                    num_samples: 1,
                    update_hash: Hash::ZERO,
                    train_loss: 0.0,
                })
                .collect(),
            metrics: Metrics {
                accuracy: 0.0,
                loss: 0.0,
                test_samples: 1,
            },
            privacy,
            ..RoundRecord::new(round, Mode::Plain, Hash::ZERO, Hash::ZERO)
        }
    }

    fn record_spec() -> DpSpec {
        DpSpec {
            level: DpLevel::Record,
            noise_multiplier: 1.1,
            sample_rate: 0.05,
            ..DpSpec::default()
        }
    }

    /// Run `rounds` rounds through a ledger as the log would, with the given participants.
    fn run(spec: &DpSpec, rounds: &[&[u32]]) -> (Ledger, Vec<RoundRecord>) {
        let members = [0, 1, 2, 3];
        let mut ledger = Ledger::new();
        let mut log = Vec::new();
        for (i, p) in rounds.iter().enumerate() {
            let s = ledger.summary(spec, 2, &members, p).unwrap();
            let r = record(i as u64 + 1, p, s);
            ledger.add_record(&r);
            log.push(r);
        }
        (ledger, log)
    }

    #[test]
    fn epsilon_in_the_log_adds_up_round_after_round() {
        let spec = record_spec();
        let all: &[u32] = &[0, 1, 2, 3];
        let (ledger, log) = run(&spec, &[all, &[0, 1, 2], all, all, &[1, 2, 3]]);
        let steps = spec.steps_per_round(2);
        assert_eq!(steps, 40);
        // Each record's ε is exactly the accountant's ε after that member's participations so far.
        let mut count = [0u64; 4];
        let mut last = [0.0f64; 4];
        for r in &log {
            for c in &r.participants {
                count[c.member as usize] += 1;
            }
            let s = r.privacy.as_ref().unwrap();
            assert_eq!(s.steps, steps);
            for sp in &s.spent {
                let k = count[sp.member as usize];
                assert_eq!(sp.rounds, k);
                let want = if k == 0 {
                    0.0
                } else {
                    super::super::epsilon(1.1, 0.05, k * steps, 1e-5).unwrap()
                };
                assert!(
                    (sp.epsilon - want).abs() < 1e-12,
                    "{} vs {want}",
                    sp.epsilon
                );
                // Never decreases; grows exactly when the member took part.
                let took_part = r.participants.iter().any(|c| c.member == sp.member);
                assert_eq!(sp.epsilon > last[sp.member as usize], took_part);
                last[sp.member as usize] = sp.epsilon;
            }
        }
        assert_eq!(count, [4, 5, 5, 4]);
        // Rebuilding from the log gives the same totals as the last record.
        let rebuilt = Ledger::from_records(&log);
        assert_eq!(rebuilt, ledger);
        for m in 0..4 {
            let e = rebuilt.member(m).epsilon(1e-5).unwrap();
            assert!((e - last[m as usize]).abs() < 1e-12);
        }
        // RDP composition: five rounds cost less than five times one round.
        let one = super::super::epsilon(1.1, 0.05, steps, 1e-5).unwrap();
        assert!(last[1] < 5.0 * one && last[1] > one);
    }

    #[test]
    fn member_level_accounts_dropouts_with_less_noise() {
        let spec = DpSpec {
            level: DpLevel::Member,
            noise_multiplier: 2.0,
            ..DpSpec::default()
        };
        let (_, log) = run(&spec, &[&[0, 1, 2, 3], &[0, 1]]);
        let s1 = log[0].privacy.as_ref().unwrap();
        let s2 = log[1].privacy.as_ref().unwrap();
        assert_eq!(
            (s1.sample_rate, s1.steps, s1.noise_multiplier),
            (1.0, 1, 2.0)
        );
        assert!((s2.noise_multiplier - 2.0 * 0.5f64.sqrt()).abs() < 1e-12);
        // Member 0: one round at σ = 2 plus one at σ = √2, composed in RDP.
        let mut acc = Accountant::new();
        acc.compose(1.0, 2.0, 1).unwrap();
        acc.compose(1.0, s2.noise_multiplier, 1).unwrap();
        let want = acc.epsilon(1e-5).unwrap().0;
        assert!((s2.spent[0].epsilon - want).abs() < 1e-12);
        assert_eq!(s2.spent[3].rounds, 1);
        assert_eq!(s2.spent[3].epsilon, s1.spent[3].epsilon);
    }

    #[test]
    fn laplace_adds_up_exactly() {
        let spec = DpSpec {
            level: DpLevel::Member,
            mechanism: DpMechanism::Laplace,
            noise_multiplier: 4.0,
            ..DpSpec::default()
        };
        let (ledger, log) = run(&spec, &[&[0, 1, 2, 3], &[0, 1, 2], &[0]]);
        let s = log[2].privacy.as_ref().unwrap();
        assert_eq!(s.delta, 0.0);
        let eps: Vec<f64> = s.spent.iter().map(|x| x.epsilon).collect();
        assert_eq!(eps, vec![0.75, 0.5, 0.5, 0.25]);
        assert_eq!(ledger.member(0).epsilon(1e-5).unwrap(), 0.75);
    }

    #[test]
    fn a_wrong_summary_is_refused() {
        let spec = record_spec();
        let ledger = Ledger::new();
        let good = ledger.summary(&spec, 2, &[0, 1, 2], &[0, 1, 2]).unwrap();
        assert!(Ledger::check(good.as_ref(), good.as_ref()).is_ok());
        let mut bad = good.clone().unwrap();
        bad.spent[1].epsilon *= 0.9; // claims less spent than it was
        assert!(Ledger::check(good.as_ref(), Some(&bad)).is_err());
        let mut bad = good.clone().unwrap();
        bad.noise_multiplier = 5.0;
        assert!(Ledger::check(good.as_ref(), Some(&bad)).is_err());
        assert!(Ledger::check(good.as_ref(), None).is_err());
        assert!(Ledger::check(None, good.as_ref()).is_err());
        assert!(Ledger::check(None, None).is_ok());
        assert_eq!(
            Ledger::new()
                .summary(&DpSpec::default(), 2, &[0], &[0])
                .unwrap(),
            None
        );
    }
}
