//! Attacks a member can mount, for drills: the `[attack]` section of a node's config.
//!
//! Two kinds of attack, applied at two points of a round:
//! - **data poisoning** changes the member's training rows before it trains ([`Config::poison_data`]):
//!   label flip, backdoor (a pixel trigger relabelled to a target class);
//! - **model poisoning** replaces the trained update before it is sent ([`Config::poison_update`]):
//!   sign flip, Gaussian noise, scaling / model replacement, free riding, and the omniscient
//!   attacks ALIE (Baruch et al. 2019), IPM (Xie et al. 2020) and min-max / min-sum (Shejwalkar
//!   and Houmansadr 2021), which are computed from the honest members' updates of the round. All
//!   attackers mounting an omniscient attack send the same vector, as in those papers.
//!
//! `every = k` makes any attack on-off: the member behaves honestly except in rounds divisible by
//! `k`, to stay under score thresholds.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::train::Dataset;

/// Which attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An honest member.
    #[default]
    None,
    /// Train on rows of class `source` relabelled `target` (every class `c` → classes − 1 − c if
    /// `source` is absent).
    LabelFlip,
    /// Send −`scale` × the trained update.
    SignFlip,
    /// Send Gaussian noise N(0, `sigma`²) instead of an update.
    Gaussian,
    /// Send `scale` × the trained update (model replacement when combined with a backdoor).
    Scaling,
    /// A little is enough: the honest mean minus `z` honest standard deviations, per value.
    Alie,
    /// Inner-product manipulation: −`epsilon` × the honest mean.
    Ipm,
    /// Honest mean pushed along −(honest std) as far as its largest distance to an honest update
    /// stays within the largest distance between two honest updates.
    MinMax,
    /// As min-max, with sums of squared distances in place of the largest distance.
    MinSum,
    /// Stamp a `trigger`×`trigger` square of bright pixels on a share of the rows and relabel
    /// them `target`; the update is then scaled by `scale` (model replacement).
    Backdoor,
    /// Train nothing; send N(0, `sigma`²) noise so as to look alive.
    FreeRider,
}

impl Kind {
    /// Name as written in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::LabelFlip => "label_flip",
            Kind::SignFlip => "sign_flip",
            Kind::Gaussian => "gaussian",
            Kind::Scaling => "scaling",
            Kind::Alie => "alie",
            Kind::Ipm => "ipm",
            Kind::MinMax => "min_max",
            Kind::MinSum => "min_sum",
            Kind::Backdoor => "backdoor",
            Kind::FreeRider => "free_rider",
        }
    }
}

/// The `[attack]` section. Absent: an honest node. Unused fields are ignored by attacks that do
/// not read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `none`, `label_flip`, `sign_flip`, `gaussian`, `scaling`, `alie`, `ipm`, `min_max`,
    /// `min_sum`, `backdoor`, `free_rider`.
    pub kind: Kind,
    /// Label flip: the class whose rows are relabelled; absent = every class c → classes − 1 − c.
    pub source: Option<u32>,
    /// Label flip and backdoor: the label the poisoned rows get.
    pub target: u32,
    /// Sign flip: factor of the flipped update; scaling and backdoor: boost factor.
    pub scale: f32,
    /// Gaussian and free rider: standard deviation of the noise sent.
    pub sigma: f32,
    /// ALIE: standard deviations below the mean; absent = from the member count and the number
    /// of attackers, as in Baruch et al.
    pub z: Option<f64>,
    /// IPM: the factor ε.
    pub epsilon: f64,
    /// Backdoor: side of the square trigger in pixels (bottom-right corner of a square image;
    /// for non-image data, the last `trigger` features).
    pub trigger: usize,
    /// Backdoor: share of the member's rows added again with the trigger, in (0, 1].
    pub poison_fraction: f64,
    /// On-off: attack only in rounds divisible by this; 0 or 1 = every round.
    pub every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kind: Kind::None,
            source: None,
            target: 0,
            scale: 1.0,
            sigma: 0.05,
            z: None,
            epsilon: 0.5,
            trigger: 4,
            poison_fraction: 0.5,
            every: 0,
        }
    }
}

/// An attack that cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttackError {
    #[error("attack.{field} {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

impl Config {
    /// Check the fields the attack reads.
    pub fn validate(&self, classes: Option<usize>) -> Result<(), AttackError> {
        let bad = |field, problem: String| Err(AttackError::Field { field, problem });
        if let Some(c) = classes {
            if matches!(self.kind, Kind::LabelFlip | Kind::Backdoor) && self.target as usize >= c {
                return bad("target", format!("{} is not a class (0..{c})", self.target));
            }
            if let Some(s) = self.source.filter(|s| *s as usize >= c) {
                return bad("source", format!("{s} is not a class (0..{c})"));
            }
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad("scale", format!("must be > 0, found {}", self.scale));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return bad("sigma", format!("must be ≥ 0, found {}", self.sigma));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("epsilon", format!("must be > 0, found {}", self.epsilon));
        }
        if self.z.is_some_and(|z| !z.is_finite()) {
            return bad("z", "must be a number".into());
        }
        if self.kind == Kind::Backdoor {
            if self.trigger == 0 {
                return bad("trigger", "must be at least 1 pixel".into());
            }
            if !(self.poison_fraction > 0.0 && self.poison_fraction <= 1.0) {
                return bad(
                    "poison_fraction",
                    format!("must be in (0, 1], found {}", self.poison_fraction),
                );
            }
        }
        Ok(())
    }

    /// True for an honest member (no attack configured).
    pub fn is_honest(&self) -> bool {
        self.kind == Kind::None
    }

    /// True if the member attacks in `round` (on-off schedule).
    // `u64::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn active_in(&self, round: u64) -> bool {
        self.kind != Kind::None && (self.every <= 1 || round % self.every == 0)
    }

    /// True if the attack changes the training rows.
    pub fn poisons_data(&self) -> bool {
        matches!(self.kind, Kind::LabelFlip | Kind::Backdoor)
    }

    /// True if the attack needs the honest members' updates of the round.
    pub fn omniscient(&self) -> bool {
        matches!(
            self.kind,
            Kind::Alie | Kind::Ipm | Kind::MinMax | Kind::MinSum
        )
    }

    /// True if the member trains at all when attacking (free riders and omniscient attackers
    /// do not need to).
    pub fn trains(&self) -> bool {
        !matches!(self.kind, Kind::Gaussian | Kind::FreeRider) && !self.omniscient()
    }

    /// The member's training rows under a data-poisoning attack (unchanged otherwise).
    pub fn poison_data<R: Rng>(&self, data: &Dataset, rng: &mut R) -> Dataset {
        let mut out = data.clone();
        match self.kind {
            Kind::LabelFlip => {
                for y in &mut out.y {
                    *y = self.flip(*y, data.classes);
                }
            }
            Kind::Backdoor => {
                let copies = ((data.len() as f64 * self.poison_fraction).ceil() as usize).max(1);
                for _ in 0..copies {
                    let i = rng.gen_range(0..data.len().max(1));
                    if data.is_empty() {
                        break;
                    }
                    let mut row = data.x[i * data.features..(i + 1) * data.features].to_vec();
                    stamp(&mut row, self.trigger);
                    out.x.extend_from_slice(&row);
                    out.y.push(self.target);
                }
            }
            _ => {}
        }
        out
    }

    /// The label a label-flip attacker trains on for true label `y`.
    pub fn flip(&self, y: u32, classes: usize) -> u32 {
        match self.source {
            Some(s) if y == s => self.target,
            Some(_) => y,
            None => (classes as u32).saturating_sub(1).saturating_sub(y),
        }
    }

    /// The update the attacker sends, from its own trained update `own` (zeros if it did not
    /// train), the honest updates of the round `honest` (for omniscient attacks; without any,
    /// its own update stands in), and the number of members `n` and attackers `f` it assumes.
    pub fn poison_update<R: Rng>(
        &self,
        own: &[f32],
        honest: &[&[f32]],
        n: usize,
        f: usize,
        rng: &mut R,
    ) -> Vec<f32> {
        let own_only = [own];
        let honest = if honest.is_empty() {
            &own_only[..]
        } else {
            honest
        };
        match self.kind {
            Kind::None | Kind::LabelFlip => own.to_vec(),
            Kind::SignFlip => own.iter().map(|v| -self.scale * v).collect(),
            Kind::Scaling | Kind::Backdoor => own.iter().map(|v| self.scale * v).collect(),
            Kind::Gaussian | Kind::FreeRider => {
                let normal = Normal::new(0.0f32, self.sigma)
                    .unwrap_or(Normal::new(0.0, 0.0).expect("σ = 0 is valid"));
                (0..own.len()).map(|_| normal.sample(rng)).collect()
            }
            Kind::Ipm => {
                let (mean, _) = mean_std(honest);
                mean.iter().map(|m| (-self.epsilon * m) as f32).collect()
            }
            Kind::Alie => {
                let z = self.z.unwrap_or_else(|| alie_z(n, f));
                let (mean, std) = mean_std(honest);
                mean.iter()
                    .zip(&std)
                    .map(|(m, s)| (m - z * s) as f32)
                    .collect()
            }
            Kind::MinMax | Kind::MinSum => min_max(honest, self.kind == Kind::MinSum),
        }
    }
}

/// Set the backdoor trigger in one row: a `side`×`side` square of maximum brightness in the
/// bottom-right corner of a square image, or the last `side` features of other data.
pub fn stamp(row: &mut [f32], side: usize) {
    let width = (row.len() as f64).sqrt() as usize;
    if width * width == row.len() && side <= width {
        for r in width - side..width {
            for c in width - side..width {
                row[r * width + c] = 1.0;
            }
        }
    } else {
        let n = row.len();
        for v in &mut row[n.saturating_sub(side)..] {
            *v = 3.0;
        }
    }
}

/// Per-value mean and (population) standard deviation of the updates, in f64.
fn mean_std(xs: &[&[f32]]) -> (Vec<f64>, Vec<f64>) {
    let len = xs.first().map_or(0, |x| x.len());
    let n = xs.len().max(1) as f64;
    let mut mean = vec![0f64; len];
    for x in xs {
        for (m, v) in mean.iter_mut().zip(x.iter()) {
            *m += f64::from(*v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; len];
    for x in xs {
        for ((s, v), m) in var.iter_mut().zip(x.iter()).zip(&mean) {
            let d = f64::from(*v) - m;
            *s += d * d;
        }
    }
    (mean, var.into_iter().map(|s| (s / n).sqrt()).collect())
}

/// Standard normal CDF Φ(x), from the Abramowitz–Stegun 7.1.26 erf approximation (|error| <
/// 1.5·10⁻⁷, plenty for choosing an attack parameter).
fn normal_cdf(x: f64) -> f64 {
    let t = x.abs() / std::f64::consts::SQRT_2;
    let k = 1.0 / (1.0 + 0.327_591_1 * t);
    let poly = k
        * (0.254_829_592
            + k * (-0.284_496_736
                + k * (1.421_413_741 + k * (-1.453_152_027 + k * 1.061_405_429))));
    let erf = 1.0 - poly * (-t * t).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// ALIE's z for `n` members of whom `f` attack (Baruch et al. 2019): with s = ⌊n/2 + 1⌋ − f
/// honest members needed to side with the attackers, z = Φ⁻¹((n − s)/n).
pub fn alie_z(n: usize, f: usize) -> f64 {
    let s = (n / 2 + 1).saturating_sub(f) as f64;
    let p = ((n as f64 - s) / n.max(1) as f64).clamp(0.5, 0.9999);
    // Φ is increasing: bisection to 1e-9.
    let (mut lo, mut hi) = (0.0f64, 10.0f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum()
}

/// Min-max (or min-sum) attack: μ − γ·σ with the largest γ whose distances to the honest updates
/// stay within what the honest updates show among themselves (Shejwalkar & Houmansadr 2021,
/// their γ search: start at 10, step halving).
fn min_max(honest: &[&[f32]], sum: bool) -> Vec<f32> {
    let (mean, std) = mean_std(honest);
    let at = |gamma: f64| -> Vec<f32> {
        mean.iter()
            .zip(&std)
            .map(|(m, s)| (m - gamma * s) as f32)
            .collect()
    };
    use rayon::prelude::*;
    let pair: Vec<Vec<f64>> = honest
        .par_iter()
        .map(|a| honest.iter().map(|b| dist2(a, b)).collect())
        .collect();
    let bound = if sum {
        pair.iter()
            .map(|r| r.iter().sum::<f64>())
            .fold(0.0, f64::max)
    } else {
        pair.iter().flatten().copied().fold(0.0, f64::max)
    };
    let within = |m: &[f32]| {
        let d: Vec<f64> = honest.par_iter().map(|h| dist2(m, h)).collect();
        if sum {
            d.iter().sum::<f64>() <= bound
        } else {
            d.iter().copied().fold(0.0, f64::max) <= bound
        }
    };
    let (mut gamma, mut step, mut best) = (10.0f64, 5.0f64, 0.0f64);
    for _ in 0..30 {
        if within(&at(gamma)) {
            best = best.max(gamma);
            gamma += step;
        } else {
            gamma -= step;
        }
        step /= 2.0;
    }
    at(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(1)
    }

    fn data() -> Dataset {
        Dataset {
            features: 16,
            classes: 10,
            x: vec![0.0; 16 * 4],
            y: vec![0, 7, 7, 3],
        }
    }

    #[test]
    fn label_flip_and_backdoor_change_the_rows() {
        let flip = Config {
            kind: Kind::LabelFlip,
            source: Some(7),
            target: 1,
            ..Config::default()
        };
        assert_eq!(flip.poison_data(&data(), &mut rng()).y, [0, 1, 1, 3]);
        let all = Config {
            kind: Kind::LabelFlip,
            ..Config::default()
        };
        assert_eq!(all.poison_data(&data(), &mut rng()).y, [9, 2, 2, 6]);
        let bd = Config {
            kind: Kind::Backdoor,
            target: 5,
            trigger: 2,
            poison_fraction: 0.5,
            ..Config::default()
        };
        let out = bd.poison_data(&data(), &mut rng());
        assert_eq!(out.len(), 6);
        assert_eq!(&out.y[4..], [5, 5]);
        // 4×4 image, 2×2 trigger in the bottom-right corner.
        let row = &out.x[4 * 16..5 * 16];
        let lit: Vec<usize> = (0..16).filter(|&i| row[i] == 1.0).collect();
        assert_eq!(lit, [10, 11, 14, 15]);
        assert!(bd.validate(Some(10)).is_ok());
        assert!(Config { target: 10, ..bd }.validate(Some(10)).is_err());
    }

    #[test]
    fn model_attacks_transform_the_update() {
        let own = [1.0f32, -2.0];
        let sf = Config {
            kind: Kind::SignFlip,
            scale: 4.0,
            ..Config::default()
        };
        assert_eq!(sf.poison_update(&own, &[], 10, 2, &mut rng()), [-4.0, 8.0]);
        let sc = Config {
            kind: Kind::Scaling,
            scale: 10.0,
            ..Config::default()
        };
        assert_eq!(
            sc.poison_update(&own, &[], 10, 2, &mut rng()),
            [10.0, -20.0]
        );
        let (a, b) = ([1.0f32, 0.0], [3.0f32, 2.0]);
        let honest = [&a[..], &b[..]];
        let ipm = Config {
            kind: Kind::Ipm,
            epsilon: 0.5,
            ..Config::default()
        };
        assert_eq!(
            ipm.poison_update(&own, &honest, 4, 1, &mut rng()),
            [-1.0, -0.5]
        );
        // Mean (2, 1), std (1, 1): z = 1.5 gives (0.5, −0.5).
        let alie = Config {
            kind: Kind::Alie,
            z: Some(1.5),
            ..Config::default()
        };
        assert_eq!(
            alie.poison_update(&own, &honest, 4, 1, &mut rng()),
            [0.5, -0.5]
        );
        let noise = Config {
            kind: Kind::Gaussian,
            sigma: 2.0,
            ..Config::default()
        };
        let v = noise.poison_update(&[0.0; 2000], &[], 4, 1, &mut rng());
        let sd = (v.iter().map(|x| x * x).sum::<f32>() / 2000.0).sqrt();
        assert!((sd - 2.0).abs() < 0.15, "{sd}");
    }

    #[test]
    fn alie_z_follows_the_paper() {
        // n = 50, f = 12 (Baruch et al.'s example): s = 14, Φ⁻¹(36/50) ≈ 0.583.
        assert!((alie_z(50, 12) - 0.5828).abs() < 1e-3, "{}", alie_z(50, 12));
        // n = 20, f = 4: s = 7, Φ⁻¹(0.65) ≈ 0.385.
        assert!((alie_z(20, 4) - 0.3853).abs() < 1e-3);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
    }

    #[test]
    fn min_max_stays_within_the_honest_spread() {
        let mut r = rng();
        let hs: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..50).map(|_| r.gen_range(-1.0f32..1.0) + 2.0).collect())
            .collect();
        let honest: Vec<&[f32]> = hs.iter().map(|h| &h[..]).collect();
        let max_pair = honest
            .iter()
            .flat_map(|a| honest.iter().map(|b| dist2(a, b)))
            .fold(0.0, f64::max);
        let mm = min_max(&honest, false);
        let worst = honest.iter().map(|h| dist2(&mm, h)).fold(0.0, f64::max);
        assert!(worst <= max_pair + 1e-6);
        // And it is pushed well away from the mean (γ > 0).
        let (mean, _) = mean_std(&honest);
        let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
        assert!(
            dist2(&mm, &mean) > 0.1 * max_pair,
            "{} vs {max_pair}",
            dist2(&mm, &mean)
        );
        let ms = min_max(&honest, true);
        let sum: f64 = honest.iter().map(|h| dist2(&ms, h)).sum();
        let bound = honest
            .iter()
            .map(|a| honest.iter().map(|b| dist2(a, b)).sum::<f64>())
            .fold(0.0, f64::max);
        assert!(sum <= bound + 1e-6);
    }

    #[test]
    fn on_off_attacks_every_kth_round() {
        let c = Config {
            kind: Kind::SignFlip,
            every: 3,
            ..Config::default()
        };
        let rounds: Vec<u64> = (1..=9).filter(|r| c.active_in(*r)).collect();
        assert_eq!(rounds, [3, 6, 9]);
        assert!(!Config::default().active_in(3));
    }

    #[test]
    fn config_parses_from_toml() {
        let c: Config = toml::from_str("kind = 'label_flip'\nsource = 7\ntarget = 1\n").unwrap();
        assert_eq!((c.kind, c.source, c.target), (Kind::LabelFlip, Some(7), 1));
        assert!(toml::from_str::<Config>("kind = 'nope'\n").is_err());
        assert!(toml::from_str::<Config>("kinds = 'sign_flip'\n").is_err());
    }
}
