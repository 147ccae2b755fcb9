//! Differential privacy in the round: what the runtime asks of `spec.dp` and of this member's
//! budget, in one place.
//!
//! - [`train`]: local training, DP-SGD at level `record`.
//! - [`protect`]: at level `member`, clip the whole update and add this member's noise share
//!   before it leaves the member (both modes).
//! - [`decide`]: whether this member may contribute to the next round within its budget.
//! - [`summary`] / [`check`]: the privacy summary a round record must carry, recomputed from this
//!   member's own log.
//!
//! The noise and the DP-SGD sampling are seeded from the member's secret identity key and the
//! round ([`secret`]): nobody else can reproduce them, and a member that restarts mid-round
//! retrains to the same update (republishing fresh noise for the same data would spend twice).

use fedmesh_crypto::hash::Hasher;
use fedmesh_protocol::audit::{PrivacySummary, RoundRecord};
use fedmesh_protocol::dp::{self, Cost, Ledger};
use fedmesh_protocol::genesis::{DpLevel, DpMechanism, Genesis};
use fedmesh_storage::Store;
use rand::SeedableRng;

use super::Context;
use crate::train::{self, TrainError, TrainOutcome};

/// A 32-byte secret for `purpose` in `round`, derived from the member's identity seed.
pub(super) fn secret(ctx: &Context, round: u64, purpose: &str) -> [u8; 32] {
    let seed = ctx.keys.identity.seed();
    *Hasher::new("fedmesh dp secret v1")
        .chain(&seed[..])
        .chain(&round.to_le_bytes())
        .chain(purpose.as_bytes())
        .finalize()
        .as_bytes()
}

/// Local training for `round` from `global` on `rows` (the member's shard, or an attacker's
/// poisoned copy): DP-SGD at level `record`, else the genesis optimizer. Blocking.
pub(super) fn train(
    ctx: &Context,
    global: &[f32],
    rows: &crate::train::Dataset,
    round: u64,
    seed: u64,
) -> Result<TrainOutcome, TrainError> {
    let spec = &ctx.genesis.spec;
    match spec.dp.level {
        DpLevel::Record => train::train_dp(
            &ctx.layout,
            global,
            rows,
            &spec.train,
            &spec.dp,
            secret(ctx, round, "dp-sgd"),
        ),
        DpLevel::None | DpLevel::Member => {
            train::train(&ctx.layout, global, rows, &spec.train, seed)
        }
    }
}

/// What a member publishes besides its update under DP: its FedAvg weight and its training loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Disclosed {
    /// FedAvg weight: the row count, or 1 at member level (the sensitivity analysis of
    /// DP-FedAvg assumes every clipped update counts the same).
    pub weight: u64,
    /// The mean training loss; 0 under DP, where it would be an unprotected statistic of the data.
    pub train_loss: f32,
}

/// Member level: clip `delta` and add this member's share of the noise for `round` (the shares of
/// the genesis members add up to the full noise). Returns what the member then discloses.
pub(super) fn protect(
    genesis: &Genesis,
    secret: [u8; 32],
    delta: &mut [f32],
    rows: u64,
    loss: f32,
) -> Disclosed {
    let spec = &genesis.spec.dp;
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(secret);
    let expected = genesis.members.len();
    match dp::noise::protect_update(spec, delta, expected, &mut rng) {
        Some(p) => {
            tracing::info!(
                norm = p.norm,
                clipped = p.clipped,
                noise = p.noise,
                "member-level DP: update clipped and noised"
            );
            Disclosed {
                weight: 1,
                train_loss: 0.0,
            }
        }
        None => Disclosed {
            weight: rows,
            train_loss: if spec.is_none() { loss } else { 0.0 },
        },
    }
}

/// Every member's spend, from the round records in `store`.
pub(super) fn ledger(store: &Store) -> anyhow::Result<Ledger> {
    let mut l = Ledger::new();
    for entry in store.entries() {
        let entry = entry?;
        if entry.height == 0 {
            continue;
        }
        let record = entry
            .record()
            .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;
        l.add_record(&record);
    }
    Ok(l)
}

/// Whether a member contributes to the next round.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// No budget set: contribute.
    Unlimited,
    /// Within budget: ε after the next round at the budget's δ.
    Within { next: f64, target: f64 },
    /// The next round would exceed the budget: sit it out.
    Exceeded {
        spent: f64,
        next: f64,
        target: f64,
        delta: f64,
    },
}

/// Decide for `member`, whose spend so far is in `ledger`, against `budget` = (ε, δ). The next
/// round is priced as if every member takes part (a member-level round with dropouts carries less
/// noise and costs more; the log records what it actually cost, and the next decision uses that).
/// A budget in a network without DP is exceeded at once: every round there costs ε = ∞.
pub(super) fn decide(
    genesis: &Genesis,
    ledger: &Ledger,
    member: u32,
    budget: Option<(f64, f64)>,
) -> Result<Decision, dp::DpError> {
    let Some((target, delta)) = budget else {
        return Ok(Decision::Unlimited);
    };
    let spec = &genesis.spec.dp;
    let n = genesis.members.len();
    let mine = ledger.member(member);
    let spent = mine.epsilon(delta)?;
    let next = match Cost::of_round(spec, genesis.spec.train.epochs, n, n) {
        Some(cost) => mine.with(cost).epsilon(delta)?,
        None => f64::INFINITY,
    };
    if next > target {
        Ok(Decision::Exceeded {
            spent,
            next,
            target,
            delta,
        })
    } else {
        Ok(Decision::Within { next, target })
    }
}

/// Whether this member's budget (`ctx.budget`) allows it to contribute to `round`, from the spend
/// its own log records; says so in the node's log either way.
pub(super) fn within_budget(ctx: &Context, store: &Store, round: u64) -> bool {
    let genesis = &ctx.genesis;
    let budget = ctx.budget.target(genesis.spec.dp.delta);
    let decision = ledger(store).and_then(|l| Ok(decide(genesis, &l, ctx.keys.index, budget)?));
    match decision {
        Ok(Decision::Unlimited) => true,
        Ok(Decision::Within { next, target }) => {
            tracing::info!(
                round,
                epsilon_after = next,
                budget = target,
                "privacy budget: contributing"
            );
            true
        }
        Ok(d) => {
            let line = refusal(round, &d, genesis.spec.dp.mechanism).unwrap_or_default();
            tracing::warn!("{line}");
            false
        }
        Err(e) => {
            tracing::error!(round, error = %e, "privacy budget: cannot account the log; not contributing");
            false
        }
    }
}

/// The privacy summary of a round in which `participants` (sorted) contributed, on top of the
/// spend recorded in `ledger`. `None` without DP.
pub(super) fn summary(
    genesis: &Genesis,
    ledger: &Ledger,
    participants: &[u32],
) -> Result<Option<PrivacySummary>, dp::DpError> {
    let members: Vec<u32> = genesis.members.iter().map(|m| m.index).collect();
    ledger.summary(
        &genesis.spec.dp,
        genesis.spec.train.epochs,
        &members,
        participants,
    )
}

/// Fill in `record.privacy` from this member's log, as the coordinator proposes it.
pub(super) fn attach(
    genesis: &Genesis,
    store: &Store,
    record: &mut RoundRecord,
) -> anyhow::Result<()> {
    let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
    record.privacy = summary(genesis, &ledger(store)?, &participants)?;
    Ok(())
}

/// Check a proposed record's privacy summary against the one this member computes from its log.
pub(super) fn check(genesis: &Genesis, store: &Store, record: &RoundRecord) -> anyhow::Result<()> {
    let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
    let expected = summary(genesis, &ledger(store)?, &participants)?;
    Ledger::check(expected.as_ref(), record.privacy.as_ref())?;
    Ok(())
}

/// One line for the log when a member sits a round out, naming the numbers.
pub(super) fn refusal(round: u64, d: &Decision, mechanism: DpMechanism) -> Option<String> {
    match d {
        Decision::Exceeded {
            spent,
            next,
            target,
            delta,
        } => Some(format!(
            "privacy budget: not contributing to round {round}: spent ε = {spent:.4}, the next \
             round would make it {next:.4} > the budget ε = {target} (δ = {}); following and \
             approving rounds only",
            match mechanism {
                DpMechanism::Gaussian => format!("{delta:e}"),
                DpMechanism::Laplace => "0, pure".into(),
            }
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fedmesh_protocol::audit::{Contribution, Metrics};
    use fedmesh_protocol::genesis::{DpSpec, Mode};
    use fedmesh_protocol::Hash;

    use super::*;

    fn genesis(dp: DpSpec) -> Genesis {
        let mut spec = fedmesh_protocol::genesis::Spec {
            dp,
            ..Default::default()
        };
        spec.train.epochs = 1;
        Genesis {
            version: fedmesh_protocol::genesis::VERSION,
            initial_model: Hash::ZERO,
            bls_public_set: String::new(),
            spec,
            paillier_public_key: None,
            paillier_verification_keys: None,
            members: (0..4)
                .map(|i| fedmesh_protocol::genesis::Member {
                    index: i,
                    public_key: fedmesh_crypto::identity::SecretKey::from_seed([i as u8 + 1; 32])
                        .public(),
                    peer_id: format!("peer{i}"),
                    addrs: vec![],
                })
                .collect(),
            admitted: Vec::new(),
        }
    }

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

    #[test]
    fn a_member_over_budget_refuses_to_contribute() {
        // Member level, σ = 2: each round costs the same; a budget that fits exactly k rounds
        // lets the member contribute k times and then refuses, while the others go on.
        let g = genesis(DpSpec {
            level: DpLevel::Member,
            noise_multiplier: 2.0,
            ..DpSpec::default()
        });
        let delta = 1e-5;
        let three = dp::epsilon(2.0, 1.0, 3, delta).unwrap();
        let four = dp::epsilon(2.0, 1.0, 4, delta).unwrap();
        let limit = (three + four) / 2.0;
        let budget = Some((limit, delta));
        let mut ledger = Ledger::new();
        let mut contributed = 0;
        for round in 1..=6 {
            let d = decide(&g, &ledger, 1, budget).unwrap();
            let mut participants = vec![0, 2, 3];
            match &d {
                Decision::Within { next, target } => {
                    assert!(next <= target);
                    participants.push(1);
                    participants.sort_unstable();
                    contributed += 1;
                }
                Decision::Exceeded { spent, next, .. } => {
                    assert!(*next > limit && *spent <= limit);
                    let line = refusal(round, &d, DpMechanism::Gaussian).unwrap();
                    assert!(line.contains("not contributing to round") && line.contains("budget"));
                }
                Decision::Unlimited => panic!("a budget is set"),
            }
            let s = summary(&g, &ledger, &participants).unwrap();
            ledger.add_record(&record(round, &participants, s));
        }
        assert_eq!(contributed, 3);
        let spent = ledger.member(1).epsilon(delta).unwrap();
        assert!((spent - three).abs() < 1e-12 && spent <= limit);
        assert_eq!(ledger.member(0).rounds(), 6);
        // No budget: always contribute. A budget without DP: never (ε = ∞).
        assert_eq!(decide(&g, &ledger, 1, None).unwrap(), Decision::Unlimited);
        let plain = genesis(DpSpec::default());
        assert!(matches!(
            decide(&plain, &Ledger::new(), 1, Some((100.0, 1e-5))).unwrap(),
            Decision::Exceeded { .. }
        ));
    }

    #[test]
    fn the_log_is_the_ledger_and_a_wrong_summary_is_caught() {
        let g = genesis(DpSpec {
            level: DpLevel::Record,
            noise_multiplier: 1.0,
            sample_rate: 0.1,
            ..DpSpec::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .init_genesis(&fedmesh_protocol::audit::Entry::genesis(b"genesis"))
            .unwrap();
        let mut prev = store.head().unwrap().unwrap();
        for round in 1..=3 {
            let l = ledger(&store).unwrap();
            let r = record(
                round,
                &[0, 1, 2, 3],
                summary(&g, &l, &[0, 1, 2, 3]).unwrap(),
            );
            check(&g, &store, &r).unwrap();
            let mut bad = r.clone();
            bad.privacy.as_mut().unwrap().spent[2].epsilon /= 2.0;
            assert!(check(&g, &store, &bad).is_err());
            let mut none = r.clone();
            none.privacy = None;
            assert!(check(&g, &store, &none).is_err());
            let e = fedmesh_protocol::audit::Entry::round(prev.height + 1, prev.hash(), &r);
            store.append(&e).unwrap();
            prev = e;
        }
        let l = ledger(&store).unwrap();
        let want = dp::epsilon(1.0, 0.1, 3 * 10, 1e-5).unwrap();
        assert!((l.member(3).epsilon(1e-5).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn member_level_protect_discloses_no_weight_or_loss() {
        let g = genesis(DpSpec {
            level: DpLevel::Member,
            noise_multiplier: 1e-9,
            clip: 0.5,
            ..DpSpec::default()
        });
        let mut delta = vec![1.0f32; 100];
        let d = protect(&g, [9; 32], &mut delta, 1000, 0.7);
        assert_eq!(
            d,
            Disclosed {
                weight: 1,
                train_loss: 0.0
            }
        );
        assert!((dp::noise::l2_norm(&delta) - 0.5).abs() < 1e-4);
        let plain = genesis(DpSpec::default());
        let mut delta = vec![1.0f32; 100];
        let d = protect(&plain, [9; 32], &mut delta, 1000, 0.7);
        assert_eq!(
            d,
            Disclosed {
                weight: 1000,
                train_loss: 0.7
            }
        );
        assert_eq!(delta, vec![1.0f32; 100]);
    }
}
