//! Robust aggregation: rules that combine flat updates so that a minority of poisoned ones cannot
//! steer the result, and anomaly scores that say who sent what.
//!
//! - [`aggregate`] applies a [`Rule`] to the round's [`Input`]s: FedAvg, coordinate-wise median,
//!   trimmed mean, Krum, Multi-Krum, centered clipping, or FoolsGold (which keeps a per-member
//!   history in [`State`]).
//! - [`score`] turns each input into an anomaly score against the aggregate, and keeps an EWMA
//!   history ([`score::History`]) that a node stores (serde) so a restart remembers.
//!
//! Every rule sums in f64 in a fixed order per value, so members that aggregate the same inputs in
//! the same order get bit-identical output; the heavy loops run on rayon (20 members × 100 k
//! values take milliseconds).
//!
//! ```
//! use fedmesh_protocol::robust::{aggregate, Input, Rule, State};
//! let (a, b, evil) = ([1.0f32, 1.0], [1.2f32, 0.8], [-50.0f32, 90.0]);
//! let inputs = [Input::new(0, &a, 1), Input::new(1, &b, 1), Input::new(2, &evil, 1)];
//! let out = aggregate(&Rule::Median, &inputs, &mut State::default()).unwrap();
//! assert_eq!(out.update, vec![1.0, 1.0]);
//! ```

pub mod groups;
mod linalg;
pub mod reference;
pub mod score;
pub mod suspicion;

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One member's update in a round.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The member's index.
    pub member: u32,
    /// The flat update (new − old).
    pub values: &'a [f32],
    /// FedAvg weight (training rows).
    pub weight: u64,
}

impl<'a> Input<'a> {
    /// An input of `member` with `values` and sample weight `weight`.
    pub fn new(member: u32, values: &'a [f32], weight: u64) -> Self {
        Input {
            member,
            values,
            weight,
        }
    }
}

/// How updates are combined.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// FedAvg: Σ nᵢ·xᵢ / Σ nᵢ.
    Mean,
    /// Coordinate-wise median (unweighted; the mean of the two middle values for an even count).
    Median,
    /// Coordinate-wise trimmed mean: drop the ⌊β·n⌋ smallest and largest values of every
    /// coordinate and average the rest (unweighted). β in [0, 0.5).
    TrimmedMean { beta: f64 },
    /// Coordinate-wise winsorized mean: clamp every coordinate's values to the range between its
    /// ⌊β·n⌋-th smallest and ⌊β·n⌋-th largest value, then take the sample-weighted mean. Like the
    /// trimmed mean, up to ⌊β·n⌋ extreme values per side cannot pull a coordinate beyond what the
    /// others send (a backdoor trigger's weights, which honest data never touches, stay put), but
    /// no honest value is thrown away, so on clean non-IID data it stays close to FedAvg.
    WinsorizedMean { beta: f64 },
    /// Krum (Blanchard et al. 2017): the single update whose n − f − 2 nearest neighbours are
    /// closest. `f` = assumed attackers (None: [`default_attackers`]).
    Krum { f: Option<usize> },
    /// Multi-Krum: FedAvg of the `m` updates with the best Krum scores (None: n − f).
    MultiKrum { f: Option<usize>, m: Option<usize> },
    /// Centered clipping (Karimireddy et al. 2021): start from the coordinate-wise median and
    /// `iterations` times move it by the weighted mean of the updates' differences to it, each
    /// clipped to L2 norm `radius` (0: the median of the updates' distances to the start).
    CenteredClipping { radius: f64, iterations: usize },
    /// FoolsGold (Fung et al. 2020): weight each member by how unlike the others its history of
    /// updates is, so that colluding identities pushing the same direction count as (less than)
    /// one. `confidence` is the logit's κ.
    FoolsGold { confidence: f64 },
}

impl Rule {
    /// Short name, as written in genesis and drill reports.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Mean => "mean",
            Rule::Median => "median",
            Rule::TrimmedMean { .. } => "trimmed_mean",
            Rule::WinsorizedMean { .. } => "winsorized_mean",
            Rule::Krum { .. } => "krum",
            Rule::MultiKrum { .. } => "multi_krum",
            Rule::CenteredClipping { .. } => "centered_clipping",
            Rule::FoolsGold { .. } => "foolsgold",
        }
    }
}

/// Attackers assumed when none are configured: a fifth of the members, but no more than Krum
/// can tolerate (n − f − 2 ≥ 1).
pub fn default_attackers(n: usize) -> usize {
    (n / 5).min(n.saturating_sub(3))
}

/// State a rule carries from round to round (only FoolsGold has any): serializable so that a node
/// keeps it with its other state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// FoolsGold: the sum of every update each member has sent so far.
    pub histories: BTreeMap<u32, Vec<f32>>,
    /// Group rounds ([`suspicion::judge`]): the previous update and what accepted group means
    /// looked like against it.
    #[serde(default)]
    pub groups: suspicion::Baseline,
}

/// The result of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The combined update.
    pub update: Vec<f32>,
    /// Each input's share in the result relative to plain FedAvg, in [0, 1], in input order:
    /// 1 for every input under mean, median and trimmed mean; 1 if selected, else 0 under
    /// (Multi-)Krum; the clipping factor of the last iteration under centered clipping; the
    /// learning rate αᵢ under FoolsGold.
    pub trust: Vec<f64>,
}

/// Why updates cannot be aggregated. `culprit` names the member whose input is at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum AggregateError {
    #[error("no updates to aggregate")]
    Empty,
    #[error("update of member {culprit} has {found} values, expected {expected}")]
    Length {
        culprit: u32,
        found: usize,
        expected: usize,
    },
    #[error("update of member {culprit} holds a NaN or infinite value at {index}")]
    NonFinite { culprit: u32, index: usize },
    #[error("member {culprit} appears twice among the inputs")]
    Duplicate { culprit: u32 },
    #[error("total sample weight is zero")]
    ZeroWeight,
    #[error(
        "{rule} with {attackers} assumed attackers needs at least {need} updates, found {have}"
    )]
    TooFew {
        rule: &'static str,
        attackers: usize,
        need: usize,
        have: usize,
    },
    #[error("{rule}: {problem}")]
    Parameter { rule: &'static str, problem: String },
    #[error("reference score: {0}")]
    Reference(#[from] reference::ReferenceError),
}

/// Check the inputs: non-empty, equal lengths, finite values, distinct members.
fn check(inputs: &[Input]) -> Result<usize, AggregateError> {
    let len = inputs.first().ok_or(AggregateError::Empty)?.values.len();
    let mut seen = std::collections::BTreeSet::new();
    for inp in inputs {
        if inp.values.len() != len {
            return Err(AggregateError::Length {
                culprit: inp.member,
                found: inp.values.len(),
                expected: len,
            });
        }
        if !seen.insert(inp.member) {
            return Err(AggregateError::Duplicate {
                culprit: inp.member,
            });
        }
        if let Some(index) = inp.values.par_iter().position_first(|v| !v.is_finite()) {
            return Err(AggregateError::NonFinite {
                culprit: inp.member,
                index,
            });
        }
    }
    Ok(len)
}

/// Combine `inputs` with `rule`. `state` is read and updated by stateful rules (FoolsGold); pass
/// the same state every round. Inputs must name distinct members.
pub fn aggregate(
    rule: &Rule,
    inputs: &[Input],
    state: &mut State,
) -> Result<Aggregate, AggregateError> {
    check(inputs)?;
    let n = inputs.len();
    let xs: Vec<&[f32]> = inputs.iter().map(|i| i.values).collect();
    let weights: Vec<f64> = inputs.iter().map(|i| i.weight as f64).collect();
    let ones = vec![1.0; n];
    match rule {
        Rule::Mean => {
            if weights.iter().sum::<f64>() == 0.0 {
                return Err(AggregateError::ZeroWeight);
            }
            Ok(Aggregate {
                update: linalg::weighted_mean(&xs, &weights),
                trust: ones,
            })
        }
        Rule::Median => Ok(Aggregate {
            update: linalg::per_coordinate(&xs, linalg::median_in_place),
            trust: ones,
        }),
        Rule::TrimmedMean { beta } => {
            if !(0.0..0.5).contains(beta) {
                return Err(AggregateError::Parameter {
                    rule: rule.name(),
                    problem: format!("beta must be in [0, 0.5), found {beta}"),
                });
            }
            let k = (beta * n as f64).floor() as usize;
            Ok(Aggregate {
                update: linalg::per_coordinate(&xs, |col| {
                    col.sort_unstable_by(f32::total_cmp);
                    let kept = &col[k..col.len() - k];
                    (kept.iter().map(|v| f64::from(*v)).sum::<f64>() / kept.len() as f64) as f32
                }),
                trust: ones,
            })
        }
        Rule::WinsorizedMean { beta } => {
            if !(0.0..0.5).contains(beta) {
                return Err(AggregateError::Parameter {
                    rule: rule.name(),
                    problem: format!("beta must be in [0, 0.5), found {beta}"),
                });
            }
            if weights.iter().sum::<f64>() == 0.0 {
                return Err(AggregateError::ZeroWeight);
            }
            let k = (beta * n as f64).floor() as usize;
            Ok(Aggregate {
                update: winsorized(&xs, &weights, k),
                trust: ones,
            })
        }
        Rule::Krum { f } => {
            let f = f.unwrap_or_else(|| default_attackers(n));
            let order = krum_order(rule.name(), &xs, f)?;
            let best = order[0];
            let mut trust = vec![0.0; n];
            trust[best] = 1.0;
            Ok(Aggregate {
                update: xs[best].to_vec(),
                trust,
            })
        }
        Rule::MultiKrum { f, m } => {
            let f = f.unwrap_or_else(|| default_attackers(n));
            let m = m.unwrap_or(n.saturating_sub(f)).clamp(1, n);
            let order = krum_order(rule.name(), &xs, f)?;
            let mut trust = vec![0.0; n];
            for &i in &order[..m] {
                trust[i] = 1.0;
            }
            let w: Vec<f64> = weights.iter().zip(&trust).map(|(w, t)| w * t).collect();
            if w.iter().sum::<f64>() == 0.0 {
                return Err(AggregateError::ZeroWeight);
            }
            Ok(Aggregate {
                update: linalg::weighted_mean(&xs, &w),
                trust,
            })
        }
        Rule::CenteredClipping { radius, iterations } => {
            if !(radius.is_finite() && *radius >= 0.0) || *iterations == 0 {
                return Err(AggregateError::Parameter {
                    rule: rule.name(),
                    problem: format!(
                        "radius must be ≥ 0 and iterations ≥ 1, found {radius} and {iterations}"
                    ),
                });
            }
            if weights.iter().sum::<f64>() == 0.0 {
                return Err(AggregateError::ZeroWeight);
            }
            centered_clipping(&xs, &weights, *radius, *iterations)
        }
        Rule::FoolsGold { confidence } => {
            if !(confidence.is_finite() && *confidence > 0.0) {
                return Err(AggregateError::Parameter {
                    rule: rule.name(),
                    problem: format!("confidence must be > 0, found {confidence}"),
                });
            }
            let alpha = foolsgold_weights(inputs, state, *confidence);
            let mut w: Vec<f64> = weights.iter().zip(&alpha).map(|(w, a)| w * a).collect();
            if w.iter().sum::<f64>() == 0.0 {
                // Everyone looks like a clone of someone: nothing to prefer, fall back to FedAvg.
                w = weights.clone();
            }
            if w.iter().sum::<f64>() == 0.0 {
                return Err(AggregateError::ZeroWeight);
            }
            Ok(Aggregate {
                update: linalg::weighted_mean(&xs, &w),
                trust: alpha,
            })
        }
    }
}

/// Per coordinate: values clamped to the k-th smallest / k-th largest, then Σ wᵢ·vᵢ / Σ wᵢ.
fn winsorized(xs: &[&[f32]], weights: &[f64], k: usize) -> Vec<f32> {
    let len = xs.first().map_or(0, |x| x.len());
    let n = xs.len();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f32; len];
    out.par_chunks_mut(linalg::CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = c * linalg::CHUNK;
            let mut column = vec![0f32; n];
            let mut sorted = vec![0f32; n];
            for (j, o) in chunk.iter_mut().enumerate() {
                for (slot, x) in column.iter_mut().zip(xs) {
                    *slot = x[start + j];
                }
                sorted.copy_from_slice(&column);
                sorted.sort_unstable_by(f32::total_cmp);
                let (lo, hi) = (sorted[k], sorted[n - 1 - k]);
                let acc: f64 = column
                    .iter()
                    .zip(weights)
                    .map(|(v, w)| w * f64::from(v.clamp(lo, hi)))
                    .sum();
                *o = (acc / total) as f32;
            }
        });
    out
}

/// Input indices sorted by Krum score (sum of squared distances to the n − f − 2 nearest other
/// inputs), best first; ties go to the lower index.
fn krum_order(rule: &'static str, xs: &[&[f32]], f: usize) -> Result<Vec<usize>, AggregateError> {
    let n = xs.len();
    let need = f + 3;
    if n < need {
        return Err(AggregateError::TooFew {
            rule,
            attackers: f,
            need,
            have: n,
        });
    }
    let d = linalg::distances_from_gram(&linalg::gram(xs));
    let k = n - f - 2;
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d[i][j]).collect();
            row.sort_by(f64::total_cmp);
            row[..k].iter().sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    Ok(order)
}

fn centered_clipping(
    xs: &[&[f32]],
    weights: &[f64],
    radius: f64,
    iterations: usize,
) -> Result<Aggregate, AggregateError> {
    let mut v = linalg::per_coordinate(xs, linalg::median_in_place);
    let dists = |v: &[f32]| -> Vec<f64> {
        xs.par_iter()
            .map(|x| linalg::dist2(x, v).sqrt())
            .collect::<Vec<_>>()
    };
    let tau = if radius > 0.0 {
        radius
    } else {
        linalg::median_f64(&dists(&v))
    };
    let total: f64 = weights.iter().sum();
    let mut factors = vec![1.0; xs.len()];
    for _ in 0..iterations {
        let d = dists(&v);
        factors = d
            .iter()
            .map(|&d| if d > tau { tau / d } else { 1.0 })
            .collect();
        let coef: Vec<f64> = weights
            .iter()
            .zip(&factors)
            .map(|(w, c)| w * c / total)
            .collect();
        let len = v.len();
        let mut next = vec![0f32; len];
        next.par_chunks_mut(linalg::CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let start = c * linalg::CHUNK;
                for (k, o) in chunk.iter_mut().enumerate() {
                    let center = f64::from(v[start + k]);
                    let step: f64 = xs
                        .iter()
                        .zip(&coef)
                        .map(|(x, c)| c * (f64::from(x[start + k]) - center))
                        .sum();
                    *o = (center + step) as f32;
                }
            });
        v = next;
    }
    Ok(Aggregate {
        update: v,
        trust: factors,
    })
}

/// FoolsGold learning rates αᵢ in [0, 1], after adding this round's inputs to the histories.
fn foolsgold_weights(inputs: &[Input], state: &mut State, confidence: f64) -> Vec<f64> {
    for inp in inputs {
        let h = state
            .histories
            .entry(inp.member)
            .or_insert_with(|| vec![0.0; inp.values.len()]);
        if h.len() != inp.values.len() {
            // The model changed shape: the old history says nothing about the new one.
            *h = vec![0.0; inp.values.len()];
        }
        h.par_chunks_mut(linalg::CHUNK)
            .zip(inp.values.par_chunks(linalg::CHUNK))
            .for_each(|(h, x)| h.iter_mut().zip(x).for_each(|(a, b)| *a += b));
    }
    let n = inputs.len();
    if n == 1 {
        return vec![1.0];
    }
    let hs: Vec<&[f32]> = inputs
        .iter()
        .map(|i| state.histories[&i.member].as_slice())
        .collect();
    let g = linalg::gram(&hs);
    let mut cs: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        f64::NEG_INFINITY
                    } else {
                        linalg::cosine(g[i][j], g[i][i], g[j][j])
                    }
                })
                .collect()
        })
        .collect();
    let maxcs: Vec<f64> = cs
        .iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    // Pardoning: an honest member that merely resembles a sybil is not punished as much.
    for i in 0..n {
        for j in 0..n {
            if i != j && maxcs[i] < maxcs[j] && maxcs[j] > 0.0 {
                cs[i][j] *= maxcs[i].max(0.0) / maxcs[j];
            }
        }
    }
    let mut alpha: Vec<f64> = cs
        .iter()
        .map(|r| {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (1.0 - m).clamp(0.0, 1.0)
        })
        .collect();
    let top = alpha.iter().copied().fold(0.0, f64::max);
    if top == 0.0 {
        return vec![0.0; n];
    }
    for a in &mut alpha {
        *a /= top;
        if *a >= 1.0 {
            *a = 0.99;
        }
        let logit = confidence * ((*a / (1.0 - *a)).ln() + 0.5);
        *a = if logit.is_nan() {
            0.0
        } else {
            logit.clamp(0.0, 1.0)
        };
    }
    alpha
}

#[cfg(test)]
mod tests;
