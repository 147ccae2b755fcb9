//! Anomaly scores: how far each member's update stands from the round's robust aggregate and from
//! the other members, and a per-member EWMA history of that.
//!
//! Four features per member and round ([`Features`]):
//! - `distance`: ‖xᵢ − agg‖ (reported, not scored: on non-IID data it mostly tracks shard size);
//! - `cosine`: cos(xᵢ, agg), low or negative for sign flips, IPM, label flips, noise and free
//!   riders;
//! - `norm`: ‖xᵢ‖, far off for scaling, boosted backdoors and free riders;
//! - `max_similarity`: maxⱼ cos(xᵢ, xⱼ), 1 for colluding clones (ALIE, IPM, min-max all send
//!   one vector), where honest non-IID members differ.
//!
//! Each feature becomes a robust z-score over the round's members (median and 1.4826·MAD, with a
//! floor on the spread), pointing the way that is suspicious: the cosine downwards; the norm on a
//! log scale and both ways (a tenfold update and an empty one are both odd, while shard sizes
//! only move honest norms by small factors); the similarity as −ln(1 − maxcos), so that exact
//! clones stand out by orders of magnitude. The round score is the largest of those three,
//! capped at [`CAP`]. [`History`] keeps an EWMA of the round scores per member; a node votes
//! against a member whose EWMA stays over the genesis threshold.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{linalg, Input};
use crate::crypto::{hash::Hasher, Hash};

/// Largest round score: one wild round must not keep a member's EWMA high forever.
pub const CAP: f64 = 50.0;

/// 1 − cos below this counts as an exact clone (f32 updates that are equal up to rounding).
pub const CLONE_GAP: f64 = 1e-6;

/// Smallest spread of the cosines: members agreeing to within a few hundredths are not outliers.
pub const FLOOR_COSINE: f64 = 0.05;

/// Smallest spread of ln ‖xᵢ‖: a z of 1 is at least a factor e^0.5 ≈ 1.65 in norm, so a member
/// whose shard makes its update twice the usual size scores under 1.5 while a tenfold update
/// scores over 4.5.
pub const FLOOR_LOG_NORM: f64 = 0.5;

/// Smallest spread of −ln(1 − maxcos): a z of 1 is at least a factor e in 1 − maxcos.
pub const FLOOR_SIMILARITY: f64 = 1.0;

/// Fewest inputs for which scores mean anything (median and MAD of fewer say nothing).
pub const MIN_INPUTS: usize = 4;

/// Raw features of one member's update in one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// ‖xᵢ − agg‖.
    pub distance: f64,
    /// cos(xᵢ, agg); 0 if either is zero.
    pub cosine: f64,
    /// ‖xᵢ‖.
    pub norm: f64,
    /// Largest cosine similarity to another member's update.
    pub max_similarity: f64,
}

/// Robust z-scores of the features, each signed so that larger is more suspicious (the norm's is
/// of its logarithm and absolute; the similarity's is of −ln(1 − maxcos)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Deviations {
    pub distance: f64,
    pub cosine: f64,
    pub norm: f64,
    pub similarity: f64,
}

/// One member's score in one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeerScore {
    pub member: u32,
    pub features: Features,
    pub deviations: Deviations,
    /// max(0, cosine, norm, similarity deviations), capped at [`CAP`].
    pub score: f64,
}

impl PeerScore {
    /// Commitment to this score in `round`: what a vote cites as evidence.
    pub fn evidence(&self, round: u64) -> Hash {
        let mut h = Hasher::new("fedmesh score evidence v1");
        h.update(&round.to_le_bytes());
        h.update(&self.member.to_le_bytes());
        for v in [
            self.features.distance,
            self.features.cosine,
            self.features.norm,
            self.features.max_similarity,
            self.score,
        ] {
            h.update(&v.to_le_bytes());
        }
        h.finalize()
    }
}

/// Robust z-scores of `v` (median, 1.4826·MAD), with a floor on the spread so that members that
/// happen to agree closely in one round do not turn small honest differences into huge scores.
fn robust_z(v: &[f64], floor: f64) -> Vec<f64> {
    let med = linalg::median_f64(v);
    let dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let spread = (1.4826 * linalg::median_f64(&dev)).max(floor).max(1e-12);
    v.iter().map(|x| (x - med) / spread).collect()
}

/// Score every input of a round against the round's aggregate. Fewer than [`MIN_INPUTS`] inputs
/// get score 0 (nothing to compare with). Inputs must have the aggregate's length.
pub fn round_scores(inputs: &[Input], aggregate: &[f32]) -> Vec<PeerScore> {
    let n = inputs.len();
    let xs: Vec<&[f32]> = inputs.iter().map(|i| i.values).collect();
    let g = linalg::gram(&xs);
    let agg_dots: Vec<(f64, f64)> = xs
        .par_iter()
        .map(|x| (linalg::dot(x, aggregate), linalg::dist2(x, aggregate)))
        .collect();
    let agg_n2 = linalg::dot(aggregate, aggregate);
    let features: Vec<Features> = (0..n)
        .map(|i| Features {
            distance: agg_dots[i].1.sqrt(),
            cosine: linalg::cosine(agg_dots[i].0, g[i][i], agg_n2),
            norm: g[i][i].sqrt(),
            max_similarity: (0..n)
                .filter(|&j| j != i)
                .map(|j| linalg::cosine(g[i][j], g[i][i], g[j][j]))
                .fold(f64::NEG_INFINITY, f64::max)
                .max(-1.0),
        })
        .collect();
    if n < MIN_INPUTS {
        let zero = Deviations {
            distance: 0.0,
            cosine: 0.0,
            norm: 0.0,
            similarity: 0.0,
        };
        return inputs
            .iter()
            .zip(features)
            .map(|(inp, features)| PeerScore {
                member: inp.member,
                features,
                deviations: zero,
                score: 0.0,
            })
            .collect();
    }
    let col = |f: fn(&Features) -> f64| features.iter().map(f).collect::<Vec<_>>();
    let distances = col(|f| f.distance);
    let zd = robust_z(&distances, 0.05 * linalg::median_f64(&distances));
    let zc = robust_z(&col(|f| f.cosine), FLOOR_COSINE);
    let zn = robust_z(&col(|f| f.norm.max(1e-12).ln()), FLOOR_LOG_NORM);
    let zs = robust_z(
        &col(|f| -(1.0 - f.max_similarity).max(CLONE_GAP).ln()),
        FLOOR_SIMILARITY,
    );
    inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| {
            let deviations = Deviations {
                distance: zd[i],
                cosine: -zc[i],
                norm: zn[i].abs(),
                similarity: zs[i],
            };
            let score = [deviations.cosine, deviations.norm, deviations.similarity]
                .into_iter()
                .fold(0.0, f64::max)
                .min(CAP);
            PeerScore {
                member: inp.member,
                features: features[i],
                deviations,
                score,
            }
        })
        .collect()
}

/// One member's score history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Exponentially weighted moving average of the round scores.
    pub ewma: f64,
    /// The last round's score.
    pub last: f64,
    /// Rounds scored.
    pub rounds: u64,
    /// The last round scored.
    pub last_round: u64,
    /// Consecutive scored rounds in which the EWMA was over the threshold.
    pub streak: u64,
}

/// Score histories of all members: what a node keeps (in sled) so that a restart remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub peers: BTreeMap<u32, Peer>,
}

/// A stored history that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("score history does not decode: {0}")]
pub struct HistoryError(#[from] crate::codec::DecodeError);

impl History {
    /// Fold one round's scores in: `ewma ← decay·score + (1 − decay)·ewma` (starting from 0, so
    /// one bad round alone moves it only by `decay`·score), and count how many rounds in a row
    /// the EWMA has been over `threshold`. Members absent from `scores` keep their history.
    pub fn record(&mut self, round: u64, scores: &[PeerScore], decay: f64, threshold: f64) {
        let decay = decay.clamp(0.0, 1.0);
        for s in scores {
            let p = self.peers.entry(s.member).or_default();
            p.ewma = decay * s.score + (1.0 - decay) * p.ewma;
            p.last = s.score;
            p.rounds += 1;
            p.last_round = round;
            p.streak = if p.ewma > threshold { p.streak + 1 } else { 0 };
        }
    }

    /// Fold in a round in which `member` was caught misbehaving beyond doubt (it signed two
    /// different messages for one slot): its round score is [`CAP`], the worst there is.
    pub fn record_misbehaviour(&mut self, round: u64, member: u32, decay: f64, threshold: f64) {
        let decay = decay.clamp(0.0, 1.0);
        let p = self.peers.entry(member).or_default();
        p.ewma = decay * CAP + (1.0 - decay) * p.ewma;
        p.last = CAP;
        p.rounds += 1;
        p.last_round = round;
        p.streak = if p.ewma > threshold { p.streak + 1 } else { 0 };
    }

    /// Members whose EWMA has been over the threshold for at least `patience` scored rounds in a
    /// row, with their EWMA, by member.
    pub fn suspects(&self, patience: u64) -> Vec<(u32, f64)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.streak >= patience.max(1))
            .map(|(m, p)| (*m, p.ewma))
            .collect()
    }

    /// Forget a member (after its eviction).
    pub fn remove(&mut self, member: u32) {
        self.peers.remove(&member);
    }

    /// Bytes for storage.
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    /// Read stored bytes back.
    pub fn decode(bytes: &[u8]) -> Result<History, HistoryError> {
        Ok(crate::codec::decode(bytes, crate::codec::HARD_LIMIT)?)
    }
}
