//! Clipping and noise: the mechanisms whose cost the accountant counts.
//!
//! Member-level DP (DP-FedAvg) in fedmesh is *distributed*: no one sees an unclipped update and
//! no single party adds the noise. Each member clips its whole update to norm C and adds its own
//! share of the noise before the update leaves it ([`protect_update`]):
//!
//! - Gaussian: a share N(0, σ²C²/n) per coordinate, n the members expected in the round. Gaussian
//!   shares add up, so the sum of n members' contributions carries exactly N(0, σ²C²), the noise
//!   the accountant assumes. If only k < n members take part, the sum carries σ²C²·k/n: the
//!   round is accounted with the effective multiplier σ·√(k/n) ([`effective_sigma`]), so the
//!   audit log never claims more privacy than the round gave.
//! - Laplace (pure ε-DP, L1 clipping): Laplace noise does not split into Laplace shares, so each
//!   member adds the full Laplace(b·C) to its own clipped update. Every contribution is then
//!   ε = 1/b private on its own (also against the other members), whoever drops out; the price is
//!   n times the noise variance in the sum.
//!
//! Noise comes from a caller-provided ChaCha generator. In the node it is seeded from the member's
//! secret key and the round, so that nobody else can reproduce (and subtract) it.

use rand::Rng;
use rand_distr::{Distribution, Exp, Normal};

use crate::genesis::{DpLevel, DpMechanism, DpSpec};

/// L2 norm of `v`, accumulated in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

/// L1 norm of `v`, accumulated in f64.
pub fn l1_norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(x.abs())).sum()
}

/// Scale `v` down so that its L2 norm is at most `clip`; returns the norm before clipping.
/// A vector already within the bound is left exactly as it was.
pub fn clip_l2(v: &mut [f32], clip: f64) -> f64 {
    let norm = l2_norm(v);
    scale_to(v, norm, clip);
    norm
}

/// Scale `v` down so that its L1 norm is at most `clip`; returns the norm before clipping.
pub fn clip_l1(v: &mut [f32], clip: f64) -> f64 {
    let norm = l1_norm(v);
    scale_to(v, norm, clip);
    norm
}

fn scale_to(v: &mut [f32], norm: f64, clip: f64) {
    if norm > clip {
        // f32 rounding can leave the scaled norm a hair above the bound: aim slightly inside.
        let f = (clip / norm * (1.0 - 1e-6)) as f32;
        v.iter_mut().for_each(|x| *x *= f);
    }
}

/// Add independent N(0, std²) noise to every coordinate. `std` must be finite and ≥ 0.
pub fn add_gaussian<R: Rng + ?Sized>(v: &mut [f32], std: f64, rng: &mut R) {
    let Ok(normal) = Normal::new(0.0f64, std) else {
        return;
    };
    for x in v {
        *x += normal.sample(rng) as f32;
    }
}

/// Add independent Laplace(0, scale) noise to every coordinate (the difference of two
/// exponentials of mean `scale`). `scale` must be finite and > 0.
pub fn add_laplace<R: Rng + ?Sized>(v: &mut [f32], scale: f64, rng: &mut R) {
    let Ok(exp) = Exp::new(1.0 / scale) else {
        return;
    };
    for x in v {
        let a: f64 = exp.sample(rng);
        let b: f64 = exp.sample(rng);
        *x += (a - b) as f32;
    }
}

/// The noise multiplier a round is accounted with at member level: σ·√(k/n) for Gaussian shares
/// when `participants` = k of `expected` = n members contributed (k ≥ n gives σ), the full
/// multiplier for Laplace (each member adds all of it).
pub fn effective_sigma(spec: &DpSpec, expected: usize, participants: usize) -> f64 {
    match (spec.level, spec.mechanism) {
        (DpLevel::Member, DpMechanism::Gaussian) if expected > 0 => {
            let share = (participants.min(expected) as f64 / expected as f64).sqrt();
            spec.noise_multiplier * share
        }
        _ => spec.noise_multiplier,
    }
}

/// Standard deviation (Gaussian) or scale (Laplace) of the noise one member adds to its own
/// clipped update at member level, when `expected` members are expected in the round.
pub fn member_share(spec: &DpSpec, expected: usize) -> f64 {
    match spec.mechanism {
        DpMechanism::Gaussian => {
            spec.noise_multiplier * spec.clip / (expected.max(1) as f64).sqrt()
        }
        DpMechanism::Laplace => spec.noise_multiplier * spec.clip,
    }
}

/// What [`protect_update`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protected {
    /// The update's norm before clipping (L2 for Gaussian, L1 for Laplace).
    pub norm: f64,
    /// Whether it was scaled down.
    pub clipped: bool,
    /// The noise's standard deviation (Gaussian) or scale (Laplace) per coordinate.
    pub noise: f64,
}

/// Member level: clip the whole `update` to `spec.clip` (L2 for Gaussian, L1 for Laplace) and add
/// this member's share of the noise for a round of `expected` members. Does nothing unless
/// `spec.level` is `member`.
pub fn protect_update<R: Rng + ?Sized>(
    spec: &DpSpec,
    update: &mut [f32],
    expected: usize,
    rng: &mut R,
) -> Option<Protected> {
    if spec.level != DpLevel::Member {
        return None;
    }
    let noise = member_share(spec, expected);
    let norm = match spec.mechanism {
        DpMechanism::Gaussian => {
            let norm = clip_l2(update, spec.clip);
            add_gaussian(update, noise, rng);
            norm
        }
        DpMechanism::Laplace => {
            let norm = clip_l1(update, spec.clip);
            add_laplace(update, noise, rng);
            norm
        }
    };
    Some(Protected {
        norm,
        clipped: norm > spec.clip,
        noise,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn member(mechanism: DpMechanism, sigma: f64, clip: f64) -> DpSpec {
        DpSpec {
            level: DpLevel::Member,
            mechanism,
            noise_multiplier: sigma,
            clip,
            ..DpSpec::default()
        }
    }

    /// Sample variance and mean of `v`.
    fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn clipping_bounds_every_contribution() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for trial in 0..200 {
            let len = 1 + trial % 50;
            let scale = 10f32.powi(trial % 7 - 3);
            let v: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0) * scale).collect();
            for clip in [1e-3, 0.1, 1.0, 7.5] {
                let mut a = v.clone();
                let before = clip_l2(&mut a, clip);
                assert!(l2_norm(&a) <= clip, "L2 {} > {clip}", l2_norm(&a));
                if before <= clip {
                    assert_eq!(a, v, "a vector within the bound is not touched");
                } else {
                    // Same direction: a positive multiple of the original.
                    let f = a[0] / v[0];
                    assert!(a
                        .iter()
                        .zip(&v)
                        .all(|(x, y)| (x - f * y).abs() <= 1e-6 * y.abs().max(1e-30)));
                }
                let mut b = v.clone();
                clip_l1(&mut b, clip);
                assert!(l1_norm(&b) <= clip, "L1 {} > {clip}", l1_norm(&b));
            }
        }
    }

    #[test]
    fn gaussian_noise_has_the_calibrated_scale() {
        // 200k draws: the sample variance's relative standard error is √(2/n) ≈ 0.3 %, so 2 %
        // is ~6 standard errors; the mean's standard error is std/√n.
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let std = 0.37;
        let mut v = vec![0.0f32; 200_000];
        add_gaussian(&mut v, std, &mut rng);
        let (mean, var) = moments(&v);
        assert!(
            mean.abs() < 5.0 * std / (v.len() as f64).sqrt(),
            "mean {mean}"
        );
        assert!(
            (var / (std * std) - 1.0).abs() < 0.02,
            "var {var} vs {}",
            std * std
        );
        // Shape, not only scale: ~68.27 % within one std.
        let within = v.iter().filter(|x| f64::from(x.abs()) <= std).count() as f64 / v.len() as f64;
        assert!((within - 0.6827).abs() < 0.005, "{within}");
    }

    #[test]
    fn laplace_noise_has_the_calibrated_scale() {
        // Laplace(b): variance 2b², mean |x| = b, P(|x| ≤ b) = 1 − 1/e.
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let b = 0.8;
        let mut v = vec![0.0f32; 200_000];
        add_laplace(&mut v, b, &mut rng);
        let (mean, var) = moments(&v);
        assert!(mean.abs() < 5.0 * (2.0f64).sqrt() * b / (v.len() as f64).sqrt());
        assert!((var / (2.0 * b * b) - 1.0).abs() < 0.03, "var {var}");
        let mad = v.iter().map(|x| f64::from(x.abs())).sum::<f64>() / v.len() as f64;
        assert!((mad / b - 1.0).abs() < 0.01, "{mad}");
        let within = v.iter().filter(|x| f64::from(x.abs()) <= b).count() as f64 / v.len() as f64;
        assert!((within - (1.0 - (-1.0f64).exp())).abs() < 0.005, "{within}");
    }

    #[test]
    fn distributed_gaussian_shares_sum_to_the_full_noise() {
        // n members each protect a zero update (so clipping is a no-op): the sum's variance per
        // coordinate must be σ²C², the amount the accountant assumes for the round.
        let (sigma, clip, n, d) = (1.3, 0.5, 7, 60_000);
        let spec = member(DpMechanism::Gaussian, sigma, clip);
        let mut sum = vec![0.0f32; d];
        for m in 0..n {
            let mut rng = ChaCha20Rng::seed_from_u64(100 + m as u64);
            let mut u = vec![0.0f32; d];
            let p = protect_update(&spec, &mut u, n, &mut rng).unwrap();
            assert!(!p.clipped);
            assert!((p.noise - sigma * clip / (n as f64).sqrt()).abs() < 1e-12);
            sum.iter_mut().zip(&u).for_each(|(s, x)| *s += x);
        }
        let (_, var) = moments(&sum);
        let want = (sigma * clip).powi(2);
        assert!(
            (var / want - 1.0).abs() < 0.03,
            "sum variance {var} vs {want}"
        );
        // With k of n members, the sum has k/n of it: what effective_sigma accounts.
        let k = 4;
        let mut part = vec![0.0f32; d];
        for m in 0..k {
            let mut rng = ChaCha20Rng::seed_from_u64(200 + m as u64);
            let mut u = vec![0.0f32; d];
            protect_update(&spec, &mut u, n, &mut rng).unwrap();
            part.iter_mut().zip(&u).for_each(|(s, x)| *s += x);
        }
        let (_, var) = moments(&part);
        let eff = effective_sigma(&spec, n, k) * clip;
        assert!(
            (var / (eff * eff) - 1.0).abs() < 0.03,
            "{var} vs {}",
            eff * eff
        );
        assert_eq!(effective_sigma(&spec, n, n), sigma);
        assert_eq!(effective_sigma(&spec, n, n + 3), sigma);
    }

    #[test]
    fn distributed_noise_through_secagg_quantization_has_the_intended_total_variance() {
        // What mode secagg reveals: the decoded mean of the members' quantized, noised updates
        // (the masks cancel in the ring sum, as the secagg tests show). n · mean is the sum, whose
        // noise must be N(0, σ²C²) plus the quantization error (tiny at 16 bits).
        use crate::secagg::quant::Quantizer;
        let (sigma, clip, n, d) = (1.2, 0.5, 5usize, 50_000);
        let spec = member(DpMechanism::Gaussian, sigma, clip);
        let q = Quantizer {
            clip: 4.0, // ~15 shares' std: quantization never clips the noise
            value_bits: 16,
            max_weight: 1,
            members: n,
        };
        let mask = (1u128 << q.ring_bits().unwrap()) - 1;
        let mut sum = vec![0u64; d + 1];
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let signal: Vec<f32> = (0..d).map(|i| ((i % 13) as f32 - 6.0) * 1e-3).collect();
        for _ in 0..n {
            let mut u = signal.clone();
            protect_update(&spec, &mut u, n, &mut rng).unwrap();
            let e = q.encode(&u, 1).unwrap();
            assert_eq!(e.clipped, 0);
            for (s, v) in sum.iter_mut().zip(&e.values) {
                *s = ((u128::from(*s) + u128::from(*v)) & mask) as u64;
            }
        }
        let decoded = q.decode(&sum).unwrap();
        assert_eq!(decoded.total_weight, n as u64);
        // The noise in the sum: n · mean − n · signal (the signal is within the clip norm).
        let noise: Vec<f32> = decoded
            .mean
            .iter()
            .zip(&signal)
            .map(|(m, s)| (m - s) * n as f32)
            .collect();
        let (mean, var) = moments(&noise);
        let want = (sigma * clip).powi(2);
        assert!(
            mean.abs() < 5.0 * sigma * clip / (d as f64).sqrt(),
            "{mean}"
        );
        assert!(
            (var / want - 1.0).abs() < 0.03,
            "total variance {var} vs σ²C² = {want}"
        );
    }

    #[test]
    fn member_level_clips_the_whole_update() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // A tiny noise multiplier so that the clipped norm is visible through the noise.
        for mech in [DpMechanism::Gaussian, DpMechanism::Laplace] {
            let spec = member(mech, 1e-9, 2.0);
            let mut u: Vec<f32> = (0..1000).map(|i| (i as f32).sin() * 3.0).collect();
            let p = protect_update(&spec, &mut u, 4, &mut rng).unwrap();
            assert!(p.clipped && p.norm > 2.0);
            let after = match mech {
                DpMechanism::Gaussian => l2_norm(&u),
                DpMechanism::Laplace => l1_norm(&u),
            };
            assert!((after - 2.0).abs() < 1e-3, "{mech:?}: {after}");
        }
        // Not member level: untouched.
        let mut u = vec![5.0f32; 10];
        let spec = DpSpec {
            level: DpLevel::Record,
            ..DpSpec::default()
        };
        assert!(protect_update(&spec, &mut u, 4, &mut rng).is_none());
        assert_eq!(u, vec![5.0f32; 10]);
    }
}
