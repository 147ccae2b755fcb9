//! A synthetic threat-detection task: network-flow-like records labelled benign (0) or threat (1).
//!
//! It exists so that a network can be exercised on a binary, tabular, non-image task with
//! controllable non-IID skew and no data file. The generator is a small story, not a lookup table:
//!
//! - **Benign** traffic is a mix of web browsing (50 %), night-time backups (12 %), interactive
//!   administration (18 %) and periodic monitoring/update checks (20 %).
//! - **Threats** come from four attack families: port **scan**, login **brute force**, data
//!   **exfiltration** and C2 **beaconing**. A threat starts from a browsing or admin profile (the
//!   camouflage) and moves towards its family's profile by an intensity drawn from `[0.25, 1]`, so
//!   low-intensity attacks overlap benign traffic.
//! - Some benign kinds resemble attacks on purpose: backups move a lot of data out at night like
//!   exfiltration (but to internal hosts), monitoring is as periodic as beaconing (but with less
//!   entropy and fewer DNS queries), administrators mistype passwords.
//! - 2 % of labels are flipped (analyst mistakes).
//!
//! So the task is learnable, needs feature interactions to do well, and no model reaches 100 %.
//!
//! Features are log-scaled where they are counts, sizes or durations, then standardized with the
//! mean and standard deviation of a fixed reference sample of the unskewed mix (drawn from
//! `spec.seed`), so every member applies the same transform.
//!
//! Per-member skew: member `i`'s threat base rate and mix of attack families are blended between
//! the unskewed mix (base rate 30 %, families equally likely) and a member-specific draw (base rate
//! uniform in 5-60 %, families ~ Dirichlet(0.5)) by `spec.synthetic_skew` in `[0, 1]`; 0 gives
//! every member the same mix. The shared test split always uses the unskewed mix.

use fedmesh_protocol::genesis::DataSpec;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::{dirichlet, rng, streams, DataError, Dataset, MemberData};

/// Features per synthetic record, in this order (each standardized):
///
/// | # | feature | # | feature |
/// |---|---------|---|---------|
/// | 0 | ln(1 + duration in s) | 10 | ln(1 + failed logins) |
/// | 1 | ln(1 + bytes out) | 11 | fraction of unanswered SYNs |
/// | 2 | ln(1 + bytes in) | 12 | payload entropy, bits per byte |
/// | 3 | ln(1 + packets out) | 13 | ln(1 + mean inter-arrival time in s) |
/// | 4 | ln(1 + packets in) | 14 | inter-arrival coefficient of variation |
/// | 5 | bytes out / (bytes in + out) | 15 | sin(hour of day) |
/// | 6 | ln(mean packet size) | 16 | cos(hour of day) |
/// | 7 | ln(1 + connections) | 17 | ln(1 + DNS queries) |
/// | 8 | ln(1 + distinct destination hosts) | 18 | fraction of external destinations |
/// | 9 | ln(1 + distinct destination ports) | 19 | fraction of well-known ports |
pub const SYNTHETIC_FEATURES: usize = 20;
/// Benign (0) or threat (1).
const SYNTHETIC_CLASSES: usize = 2;

/// Threat share of the unskewed mix.
const BASE_THREAT_RATE: f64 = 0.3;
/// Share of flipped labels.
const LABEL_NOISE: f64 = 0.02;
/// Rows of the reference sample that fixes the standardization.
const REFERENCE_ROWS: usize = 4096;
/// Upper bound of `spec.data.synthetic_rows_per_member`, to refuse absurd allocations.
const MAX_ROWS: usize = 10_000_000;

/// The parameters of one kind of traffic. Sizes and counts are medians of log-normal draws.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Weights of day-time (around 13:00), night-time (around 02:30) and any-time activity.
    hour: [f64; 3],
    duration: f64,
    conns: f64,
    /// Mean fraction of connections that go to a new host.
    host_frac: f64,
    ports: f64,
    bytes_out: f64,
    bytes_in: f64,
    packet_size: f64,
    /// Mean failed logins.
    failed: f64,
    /// Mean fraction of unanswered SYNs.
    syn: f64,
    /// Mean payload entropy in bits per byte.
    entropy: f64,
    /// Inter-arrival coefficient of variation (low: periodic).
    cv: f64,
    dns: f64,
    external: f64,
    well_known: f64,
    /// Log-normal sigma of durations, connection counts and byte counts.
    spread: f64,
}

const BROWSING: Profile = Profile {
    hour: [0.85, 0.0, 0.15],
    duration: 8.0,
    conns: 20.0,
    host_frac: 0.4,
    ports: 2.5,
    bytes_out: 20e3,
    bytes_in: 500e3,
    packet_size: 700.0,
    failed: 0.01,
    syn: 0.03,
    entropy: 6.5,
    cv: 1.5,
    dns: 15.0,
    external: 0.9,
    well_known: 0.95,
    spread: 1.0,
};

const BACKUP: Profile = Profile {
    hour: [0.0, 0.7, 0.3],
    duration: 600.0,
    conns: 3.0,
    host_frac: 0.3,
    ports: 1.2,
    bytes_out: 50e6,
    bytes_in: 200e3,
    packet_size: 1200.0,
    failed: 0.0,
    syn: 0.02,
    entropy: 6.8,
    cv: 0.8,
    dns: 2.0,
    external: 0.15,
    well_known: 0.7,
    spread: 1.2,
};

const ADMIN: Profile = Profile {
    hour: [0.8, 0.0, 0.2],
    duration: 900.0,
    conns: 4.0,
    host_frac: 0.5,
    ports: 1.5,
    bytes_out: 100e3,
    bytes_in: 300e3,
    packet_size: 200.0,
    failed: 0.4,
    syn: 0.05,
    entropy: 7.3,
    cv: 1.2,
    dns: 3.0,
    external: 0.3,
    well_known: 0.95,
    spread: 1.0,
};

const MONITORING: Profile = Profile {
    hour: [0.0, 0.0, 1.0],
    duration: 3600.0,
    conns: 60.0,
    host_frac: 0.05,
    ports: 1.2,
    bytes_out: 20e3,
    bytes_in: 50e3,
    packet_size: 200.0,
    failed: 0.0,
    syn: 0.05,
    entropy: 6.0,
    cv: 0.1,
    dns: 10.0,
    external: 0.6,
    well_known: 0.95,
    spread: 0.8,
};

/// Benign kinds and their shares.
const BENIGN: [(f64, Profile); 4] = [
    (0.5, BROWSING),
    (0.12, BACKUP),
    (0.18, ADMIN),
    (0.2, MONITORING),
];

const SCAN: Profile = Profile {
    hour: [0.2, 0.3, 0.5],
    duration: 1.0,
    conns: 200.0,
    host_frac: 0.5,
    ports: 100.0,
    bytes_out: 5e3,
    bytes_in: 2e3,
    packet_size: 60.0,
    failed: 0.0,
    syn: 0.7,
    entropy: 2.0,
    cv: 0.3,
    dns: 1.0,
    external: 0.2,
    well_known: 0.3,
    spread: 0.8,
};

const BRUTE_FORCE: Profile = Profile {
    hour: [0.2, 0.3, 0.5],
    duration: 120.0,
    conns: 80.0,
    host_frac: 0.02,
    ports: 1.0,
    bytes_out: 40e3,
    bytes_in: 30e3,
    packet_size: 120.0,
    failed: 40.0,
    syn: 0.1,
    entropy: 7.2,
    cv: 0.3,
    dns: 1.0,
    external: 0.5,
    well_known: 1.0,
    spread: 0.8,
};

const EXFILTRATION: Profile = Profile {
    hour: [0.1, 0.7, 0.2],
    duration: 1800.0,
    conns: 3.0,
    host_frac: 0.3,
    ports: 1.2,
    bytes_out: 200e6,
    bytes_in: 200e3,
    packet_size: 1200.0,
    failed: 0.0,
    syn: 0.03,
    entropy: 7.8,
    cv: 0.8,
    dns: 3.0,
    external: 0.97,
    well_known: 0.6,
    spread: 1.0,
};

const BEACONING: Profile = Profile {
    hour: [0.0, 0.0, 1.0],
    duration: 3600.0,
    conns: 60.0,
    host_frac: 0.02,
    ports: 1.0,
    bytes_out: 30e3,
    bytes_in: 30e3,
    packet_size: 150.0,
    failed: 0.0,
    syn: 0.05,
    entropy: 7.5,
    cv: 0.05,
    dns: 40.0,
    external: 1.0,
    well_known: 0.9,
    spread: 0.8,
};

/// Attack families, in the order of [`Mix::families`].
const FAMILIES: [Profile; 4] = [SCAN, BRUTE_FORCE, EXFILTRATION, BEACONING];

impl Profile {
    /// `self` moved towards `to` by `q` in `[0, 1]`: geometric for sizes and counts, linear for
    /// fractions, entropy and hour weights.
    fn towards(&self, to: &Profile, q: f64) -> Profile {
        let lin = |a: f64, b: f64| a + (b - a) * q;
        let geo = |a: f64, b: f64| (a.ln() + (b.ln() - a.ln()) * q).exp();
        Profile {
            hour: [
                lin(self.hour[0], to.hour[0]),
                lin(self.hour[1], to.hour[1]),
                lin(self.hour[2], to.hour[2]),
            ],
            duration: geo(self.duration, to.duration),
            conns: geo(self.conns, to.conns),
            host_frac: lin(self.host_frac, to.host_frac),
            ports: geo(self.ports, to.ports),
            bytes_out: geo(self.bytes_out, to.bytes_out),
            bytes_in: geo(self.bytes_in, to.bytes_in),
            packet_size: geo(self.packet_size, to.packet_size),
            failed: lin(self.failed, to.failed),
            syn: lin(self.syn, to.syn),
            entropy: lin(self.entropy, to.entropy),
            cv: geo(self.cv, to.cv),
            dns: geo(self.dns, to.dns),
            external: lin(self.external, to.external),
            well_known: lin(self.well_known, to.well_known),
            spread: lin(self.spread, to.spread),
        }
    }

    /// One record's raw (unstandardized) features.
    fn sample<R: Rng>(&self, rng: &mut R) -> [f64; SYNTHETIC_FEATURES] {
        let hour = match pick(&mut *rng, &self.hour) {
            0 => 13.0 + 3.0 * normal(rng),
            1 => 2.5 + 2.0 * normal(rng),
            _ => rng.gen_range(0.0..24.0),
        };
        let duration = log_normal(rng, self.duration, self.spread);
        let conns = log_normal(rng, self.conns, 0.8 * self.spread)
            .round()
            .max(1.0);
        let hosts = 1.0 + ((conns - 1.0) * beta(rng, self.host_frac, 10.0)).round();
        let ports = log_normal(rng, self.ports, 0.5).round().max(1.0);
        let bytes_out = log_normal(rng, self.bytes_out, self.spread);
        let bytes_in = log_normal(rng, self.bytes_in, self.spread);
        let size_out = log_normal(rng, self.packet_size, 0.3).clamp(40.0, 1500.0);
        let size_in = log_normal(rng, self.packet_size, 0.4).clamp(40.0, 1500.0);
        let packets_out = (bytes_out / size_out).ceil();
        let packets_in = (bytes_in / size_in).ceil();
        let failed = if self.failed > 1e-9 {
            rand_distr::Poisson::new(self.failed)
                .map(|p| p.sample(rng))
                .unwrap_or(0.0)
        } else {
            0.0
        };
        let syn = beta(rng, self.syn, 20.0);
        let entropy = (self.entropy + 0.6 * normal(rng)).clamp(0.0, 8.0);
        let cv = log_normal(rng, self.cv, 0.4);
        let dns = log_normal(rng, self.dns, 0.7).round();
        let external = beta(rng, self.external, 8.0);
        let well_known = beta(rng, self.well_known, 8.0);
        let angle = hour * std::f64::consts::TAU / 24.0;
        [
            duration.ln_1p(),
            bytes_out.ln_1p(),
            bytes_in.ln_1p(),
            packets_out.ln_1p(),
            packets_in.ln_1p(),
            bytes_out / (bytes_out + bytes_in),
            ((bytes_out + bytes_in) / (packets_out + packets_in)).ln(),
            conns.ln_1p(),
            hosts.ln_1p(),
            ports.ln_1p(),
            failed.ln_1p(),
            syn,
            entropy,
            (duration / conns).ln_1p(),
            cv,
            angle.sin(),
            angle.cos(),
            dns.ln_1p(),
            external,
            well_known,
        ]
    }
}

/// Who generates traffic: the threat base rate and the weights of the attack families.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mix {
    threat_rate: f64,
    families: [f64; 4],
}

impl Mix {
    const UNSKEWED: Mix = Mix {
        threat_rate: BASE_THREAT_RATE,
        families: [0.25; 4],
    };

    /// Member `member`'s mix: the unskewed mix blended with a member-specific draw by `skew`.
    fn member(seed: u64, member: u32, skew: f64) -> Mix {
        let mut r = rng(seed, streams::SYNTHETIC_MIX + u64::from(member));
        let own = dirichlet(&mut r, 0.5, 4);
        let rate: f64 = r.gen_range(0.05..0.6);
        let blend = |a: f64, b: f64| (1.0 - skew) * a + skew * b;
        Mix {
            threat_rate: blend(BASE_THREAT_RATE, rate),
            families: [0, 1, 2, 3].map(|k| blend(0.25, own[k])),
        }
    }

    /// One record (raw features) and its label.
    fn record<R: Rng>(&self, rng: &mut R) -> ([f64; SYNTHETIC_FEATURES], u32) {
        let threat = rng.gen_bool(self.threat_rate.clamp(0.0, 1.0));
        let features = if threat {
            let camouflage = if rng.gen_bool(0.5) { &BROWSING } else { &ADMIN };
            let family = &FAMILIES[pick(&mut *rng, &self.families)];
            let intensity = rng.gen_range(0.25..=1.0);
            camouflage.towards(family, intensity).sample(rng)
        } else {
            let weights = BENIGN.map(|(w, _)| w);
            BENIGN[pick(&mut *rng, &weights)].1.sample(rng)
        };
        let label = u32::from(threat ^ rng.gen_bool(LABEL_NOISE));
        (features, label)
    }

    fn rows<R: Rng>(&self, rng: &mut R, n: usize) -> Vec<([f64; SYNTHETIC_FEATURES], u32)> {
        (0..n).map(|_| self.record(rng)).collect()
    }
}

/// Index drawn with probability proportional to `weights` (non-negative, not all zero).
fn pick<R: Rng>(rng: &mut R, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

fn normal<R: Rng>(rng: &mut R) -> f64 {
    StandardNormal.sample(rng)
}

fn log_normal<R: Rng>(rng: &mut R, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// A Beta draw with the given mean and concentration.
fn beta<R: Rng>(rng: &mut R, mean: f64, concentration: f64) -> f64 {
    let m = mean.clamp(0.01, 0.99);
    rand_distr::Beta::new(m * concentration, (1.0 - m) * concentration)
        .map(|b| b.sample(rng))
        .unwrap_or(m)
}

/// Per-feature mean and standard deviation of rows.
fn moments(
    rows: &[([f64; SYNTHETIC_FEATURES], u32)],
) -> ([f64; SYNTHETIC_FEATURES], [f64; SYNTHETIC_FEATURES]) {
    let n = rows.len() as f64;
    let mut mean = [0.0; SYNTHETIC_FEATURES];
    let mut std = [0.0; SYNTHETIC_FEATURES];
    for (f, _) in rows {
        for j in 0..SYNTHETIC_FEATURES {
            mean[j] += f[j] / n;
        }
    }
    for (f, _) in rows {
        for j in 0..SYNTHETIC_FEATURES {
            std[j] += (f[j] - mean[j]).powi(2) / n;
        }
    }
    (mean, std.map(|v| v.sqrt().max(1e-6)))
}

fn standardize(
    rows: &[([f64; SYNTHETIC_FEATURES], u32)],
    (mean, std): &([f64; SYNTHETIC_FEATURES], [f64; SYNTHETIC_FEATURES]),
) -> Dataset {
    let mut x = Vec::with_capacity(rows.len() * SYNTHETIC_FEATURES);
    for (f, _) in rows {
        x.extend((0..SYNTHETIC_FEATURES).map(|j| ((f[j] - mean[j]) / std[j]) as f32));
    }
    Dataset {
        features: SYNTHETIC_FEATURES,
        classes: SYNTHETIC_CLASSES,
        x,
        y: rows.iter().map(|(_, l)| *l).collect(),
    }
}

/// Member `member`'s training rows and the shared test split.
/// `reference_rows` public reference rows of the common mix come from their own stream.
pub(super) fn generate(
    spec: &DataSpec,
    member: u32,
    members: u32,
    reference_rows: usize,
) -> Result<MemberData, DataError> {
    debug_assert!(member < members);
    let skew = spec.synthetic_skew;
    if !(0.0..=1.0).contains(&skew) {
        return Err(DataError::Spec {
            field: "spec.data.synthetic_skew",
            problem: format!("must be between 0 (identical mixes) and 1, found {skew}"),
        });
    }
    let n = spec.synthetic_rows_per_member;
    if n == 0 || n > MAX_ROWS {
        return Err(DataError::Spec {
            field: "spec.data.synthetic_rows_per_member",
            problem: format!("must be between 1 and {MAX_ROWS}, found {n}"),
        });
    }
    if spec.test_rows > MAX_ROWS {
        return Err(DataError::Spec {
            field: "spec.data.test_rows",
            problem: format!(
                "must be at most {MAX_ROWS} for synthetic data, found {}",
                spec.test_rows
            ),
        });
    }
    let unskewed = Mix::UNSKEWED;
    let reference = unskewed.rows(
        &mut rng(spec.seed, streams::SYNTHETIC_REFERENCE),
        REFERENCE_ROWS,
    );
    let scale = moments(&reference);
    let test = unskewed.rows(&mut rng(spec.seed, streams::SYNTHETIC_TEST), spec.test_rows);
    let mix = Mix::member(spec.seed, member, skew);
    let train = mix.rows(
        &mut rng(spec.seed, streams::SYNTHETIC_ROWS + u64::from(member)),
        n,
    );
    if reference_rows > MAX_ROWS {
        return Err(DataError::Spec {
            field: "spec.robust.reference_rows",
            problem: format!(
                "must be at most {MAX_ROWS} for synthetic data, found {reference_rows}"
            ),
        });
    }
    let public = unskewed.rows(
        &mut rng(spec.seed, streams::SYNTHETIC_PUBLIC),
        reference_rows,
    );
    Ok(MemberData {
        train: standardize(&train, &scale),
        test: standardize(&test, &scale),
        reference: standardize(&public, &scale),
    })
}

#[cfg(test)]
mod tests {
    use fedmesh_protocol::genesis::{DataSource, Optimizer, TrainSpec};
    use fedmesh_protocol::model::Layout;

    use super::*;

    fn spec(skew: f64) -> DataSpec {
        DataSpec {
            source: DataSource::Synthetic,
            synthetic_rows_per_member: 3000,
            test_rows: 2000,
            synthetic_skew: skew,
            ..DataSpec::default()
        }
    }

    fn threat_rate(d: &Dataset) -> f64 {
        d.y.iter().filter(|l| **l == 1).count() as f64 / d.len() as f64
    }

    #[test]
    fn shape_determinism_and_standardization() {
        let a = generate(&spec(0.5), 1, 4, 0).unwrap();
        assert_eq!(a, generate(&spec(0.5), 1, 4, 0).unwrap());
        assert!(a.reference.is_empty());
        // Public reference rows: the same for every member, not the test split, and they do not
        // change the member's own rows.
        let r1 = generate(&spec(0.5), 1, 4, 30).unwrap();
        let r3 = generate(&spec(0.5), 3, 4, 30).unwrap();
        assert_eq!(r1.reference.len(), 30);
        assert_eq!(r1.reference, r3.reference);
        assert_ne!(r1.reference.x[..], r1.test.x[..30 * SYNTHETIC_FEATURES]);
        assert_eq!((r1.train, r1.test), (a.train.clone(), a.test.clone()));
        assert_eq!((a.train.features, a.train.classes), (SYNTHETIC_FEATURES, 2));
        assert_eq!(a.train.len(), 3000);
        assert_eq!(a.train.x.len(), 3000 * SYNTHETIC_FEATURES);
        assert_eq!(a.test.len(), 2000);
        assert!(a.train.x.iter().chain(&a.test.x).all(|v| v.is_finite()));
        assert!(a.train.y.iter().all(|l| *l < 2));
        // The test split is shared: other members, other skews, same rows.
        let b = generate(&spec(1.0), 3, 4, 0).unwrap();
        assert_eq!(a.test, b.test);
        assert_ne!(a.train, b.train);
        let other_seed = generate(
            &DataSpec {
                seed: 99,
                ..spec(0.5)
            },
            1,
            4,
            0,
        )
        .unwrap();
        assert_ne!(a.test, other_seed.test);
        // Standardized with the unskewed reference: the unskewed test split is near mean 0, sd 1.
        for j in 0..SYNTHETIC_FEATURES {
            let col: Vec<f64> = a
                .test
                .x
                .iter()
                .skip(j)
                .step_by(SYNTHETIC_FEATURES)
                .map(|v| *v as f64)
                .collect();
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let sd =
                (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64).sqrt();
            assert!(
                mean.abs() < 0.1 && (sd - 1.0).abs() < 0.15,
                "feature {j}: mean {mean}, sd {sd}"
            );
        }
        let rate = threat_rate(&a.test);
        assert!((0.26..0.34).contains(&rate), "unskewed threat rate {rate}");
    }

    #[test]
    fn skew_controls_member_mixes() {
        let mixes = |skew| (0..6).map(|m| Mix::member(7, m, skew)).collect::<Vec<_>>();
        assert!(mixes(0.0).iter().all(|m| *m == Mix::UNSKEWED));
        let skewed = mixes(1.0);
        let rates: Vec<f64> = skewed.iter().map(|m| m.threat_rate).collect();
        let spread =
            rates.iter().copied().fold(0.0, f64::max) - rates.iter().copied().fold(1.0, f64::min);
        assert!(spread > 0.15, "{rates:?}");
        let dominant = skewed
            .iter()
            .map(|m| m.families.iter().copied().fold(0.0, f64::max))
            .sum::<f64>()
            / 6.0;
        assert!(dominant > 0.5, "{skewed:?}");
        for m in &skewed {
            assert!((m.families.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        // And the rows follow the mix.
        let rates: Vec<f64> = (0..4)
            .map(|m| threat_rate(&generate(&spec(1.0), m, 4, 0).unwrap().train))
            .collect();
        let spread =
            rates.iter().copied().fold(0.0, f64::max) - rates.iter().copied().fold(1.0, f64::min);
        assert!(spread > 0.1, "{rates:?}");

        let err = generate(&spec(1.5), 0, 1, 0).unwrap_err();
        assert!(
            err.to_string().contains("spec.data.synthetic_skew"),
            "{err}"
        );
        let err = generate(
            &DataSpec {
                synthetic_rows_per_member: 0,
                ..spec(0.0)
            },
            0,
            1,
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("synthetic_rows_per_member"),
            "{err}"
        );
    }

    #[test]
    fn learnable_but_not_trivial() {
        let data = generate(&spec(0.5), 0, 4, 0).unwrap();
        let majority = 1.0 - threat_rate(&data.test);
        let adam = TrainSpec {
            optimizer: Optimizer::Adam,
            learning_rate: 0.003,
            epochs: 10,
            batch_size: 32,
        };

        let mlp = Layout::new(vec![SYNTHETIC_FEATURES, 32, 2]).unwrap();
        let out = crate_train(&mlp, &data.train, &adam);
        let mlp_acc = super::super::evaluate(&mlp, &out, &data.test)
            .unwrap()
            .accuracy as f64;

        let linear = Layout::new(vec![SYNTHETIC_FEATURES, 2]).unwrap();
        let out = crate_train(&linear, &data.train, &adam);
        let linear_acc = super::super::evaluate(&linear, &out, &data.test)
            .unwrap()
            .accuracy as f64;

        eprintln!(
            "synthetic: majority {majority:.4}, linear {linear_acc:.4}, mlp 20-32-2 {mlp_acc:.4}"
        );
        assert!(
            mlp_acc > majority + 0.15,
            "mlp {mlp_acc} vs majority {majority}"
        );
        assert!(
            linear_acc > majority + 0.05,
            "linear {linear_acc} vs majority {majority}"
        );
        assert!(
            linear_acc < 0.97,
            "a linear model should not solve the task: {linear_acc}"
        );
        assert!(mlp_acc < 0.99, "label noise caps accuracy: {mlp_acc}");
    }

    fn crate_train(layout: &Layout, data: &Dataset, spec: &TrainSpec) -> Vec<f32> {
        super::super::train(layout, &layout.init(1), data, spec, 5)
            .unwrap()
            .params
    }
}
