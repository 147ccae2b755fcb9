//! Local training: each member's data shard and the candle MLP it trains.
//!
//! The protocol sees a model only as a flat `Vec<f32>` in the order of
//! [`Layout::tensors`](fedmesh_protocol::model::Layout::tensors); this module turns that vector
//! into candle tensors, runs a few epochs of minibatch training on the member's own rows and
//! flattens the result back in the same order, so that aggregation never needs to know about
//! candle.
//!
//! Everything here is deterministic: the data split depends only on the genesis `spec.data` (so
//! every member computes the same partition without talking to anyone), and [`train`] depends only
//! on its inputs and seed (so a member can re-run a round and get bit-identical parameters on the
//! same machine). Training is CPU-bound and blocking; call it from a blocking thread
//! (`tokio::task::spawn_blocking`), not from an async task.
//!
//! - [`load`]: one member's training shard and the shared test split, from MNIST or the synthetic
//!   threat-detection generator.
//! - [`train`]: minibatch SGD or Adam on a shard, flat parameters in and out.
//! - [`train_dp`]: DP-SGD with per-example clipping, Gaussian noise, Poisson or fixed-size batches,
//!   for record-level differential privacy.
//! - [`evaluate`]: accuracy and mean cross-entropy of flat parameters on a data set.

mod data;
mod dp;
mod mlp;
mod synthetic;

use std::path::Path;

use fedmesh_protocol::genesis::{DataSource, DataSpec};
use fedmesh_protocol::model::LayoutError;

pub use data::DataError;
pub use dp::train_dp;
pub use mlp::{evaluate, train};
pub use synthetic::SYNTHETIC_FEATURES;

/// Rows of features with integer class labels, row-major: row `i` is
/// `x[i * features..(i + 1) * features]` with label `y[i]`.
///
/// Kept as plain vectors (not tensors) so that shards can be built, sliced and compared without a
/// tensor backend, and so that [`train`] controls exactly how minibatches are assembled.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Values per row.
    pub features: usize,
    /// Number of classes of the data source (labels are `0..classes`), even if a shard lacks some.
    pub classes: usize,
    /// `len() * features` values, row after row.
    pub x: Vec<f32>,
    /// One label per row.
    pub y: Vec<u32>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True if there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The features of row `i`.
    fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// A new data set made of the given rows, in that order.
    fn select(&self, rows: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(rows.len() * self.features);
        let mut y = Vec::with_capacity(rows.len());
        for &i in rows {
            x.extend_from_slice(self.row(i));
            y.push(self.y[i]);
        }
        Dataset {
            features: self.features,
            classes: self.classes,
            x,
            y,
        }
    }
}

/// One member's view: its training shard and the shared test split (identical on every member, so
/// that accuracies reported by different members are comparable).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberData {
    /// This member's rows; no other member trains on them.
    pub train: Dataset,
    /// The held-out rows every member evaluates on.
    pub test: Dataset,
    /// The public reference rows (genesis `spec.robust.reference_rows`; empty when 0): the same
    /// on every member, in no member's shard and not in the test split. Group means are scored
    /// by what they do to the model on them ([`fedmesh_protocol::robust::reference`]).
    pub reference: Dataset,
}

/// Load the data for member `member` of `members`.
///
/// - [`DataSource::Mnist`]: reads `path`, a gzip CSV without header of 785 columns (784 pixels
///   0-255, then the label 0-9; a plain, uncompressed CSV is accepted too). Pixels are scaled to
///   `[0, 1]`. The shared test split is the **last rows of each class** (taken in turn from class 0
///   until `spec.test_rows` rows are held out): the last 100 images of every digit for the shipped
///   file, which is sorted by label, so that its plain last rows (all 8s and 9s) are not the test
///   set. The test split does not depend on the seed. The other rows are shuffled with a ChaCha20
///   generator seeded by `spec.seed` and split among the members:
///   - `Iid`: equal contiguous shards by member index (sizes differ by at most one row);
///   - `Dirichlet { alpha }`: for each class, member proportions are drawn from
///     Dirichlet(alpha, …, alpha) and that class's rows are cut accordingly. If a draw leaves some
///     member without any row, the whole partition is redrawn from the next ChaCha stream, up to
///     64 times; after that the error [`DataError::EmptyShard`] asks for a larger alpha. The draws
///     depend only on `spec.seed`, so every member computes the same partition.
/// - [`DataSource::Synthetic`]: no file (`path` is ignored); generated network-flow records
///   ([`SYNTHETIC_FEATURES`] standardized features) with a binary label, 0 benign or 1 threat
///   (scan, brute force, exfiltration or beaconing). `spec.synthetic_rows_per_member` training
///   rows; member `i`'s threat base rate and attack-family mix move away from the common mix (30 %
///   threats, families equally likely) by `spec.synthetic_skew` in `[0, 1]`. The test split,
///   `spec.test_rows` rows of the common mix, is shared. Everything derives from `spec.seed` (and
///   the member index for the member's own rows). About 94 % is reachable with a small MLP and
///   about 90 % with a linear model; 2 % label noise keeps anything from reaching 100 %.
///
/// `reference_rows` public reference rows (genesis `spec.robust.reference_rows`, 0 = none) are
/// set aside for every member alike ([`MemberData::reference`]):
/// - MNIST: taken out of the training pool *before* the partition — the rows just before the test
///   split in each class (the same round-robin from the end of each class, continued), so they
///   do not depend on the seed, are in nobody's shard and not in the test split. A file too small
///   for the test split, the reference rows and one row per member is an error.
/// - synthetic: `reference_rows` rows of the common mix from their own stream of `spec.seed`.
///
/// Errors name the file and line and say what to do; a bad file never panics.
pub fn load(
    spec: &DataSpec,
    path: &Path,
    member: u32,
    members: u32,
    reference_rows: usize,
) -> Result<MemberData, DataError> {
    if member >= members {
        return Err(DataError::Member { member, members });
    }
    if spec.test_rows == 0 {
        return Err(DataError::Spec {
            field: "spec.data.test_rows",
            problem: "must be greater than 0".into(),
        });
    }
    match spec.source {
        DataSource::Mnist => {
            let all = data::read_csv(path)?;
            data::split(
                &all,
                spec,
                path,
                member as usize,
                members as usize,
                reference_rows,
            )
        }
        DataSource::Synthetic => synthetic::generate(spec, member, members, reference_rows),
    }
}

/// Every member's data as [`load`] gives it, reading the MNIST file once, for in-process drills.
#[derive(Debug, Clone, PartialEq)]
pub struct AllData {
    /// Every member's training shard, by member index.
    pub shards: Vec<Dataset>,
    /// The shared test split.
    pub test: Dataset,
    /// The public reference rows ([`MemberData::reference`]).
    pub reference: Dataset,
}

/// Load every member's training shard (by member index), the shared test split and the public
/// reference rows, reading the MNIST file once: what [`load`] gives each member, for in-process
/// drills.
pub fn load_all(
    spec: &DataSpec,
    path: &Path,
    members: u32,
    reference_rows: usize,
) -> Result<AllData, DataError> {
    if members == 0 {
        return Err(DataError::Member {
            member: 0,
            members: 0,
        });
    }
    let all = match spec.source {
        DataSource::Mnist => Some(data::read_csv(path)?),
        DataSource::Synthetic => None,
    };
    let mut shards = Vec::with_capacity(members as usize);
    let mut shared = None;
    for m in 0..members {
        let d = match &all {
            Some(all) => data::split(
                all,
                spec,
                path,
                m as usize,
                members as usize,
                reference_rows,
            )?,
            None => load(spec, path, m, members, reference_rows)?,
        };
        shards.push(d.train);
        shared.get_or_insert((d.test, d.reference));
    }
    let (test, reference) = shared.expect("at least one member");
    Ok(AllData {
        shards,
        test,
        reference,
    })
}

/// Why training or evaluation refused to run or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The layout itself is unusable.
    #[error("invalid model layout: {0}")]
    Layout(#[from] LayoutError),
    /// The parameter vector does not fit the layout.
    #[error(
        "the parameter vector has {found} values but layout {layers:?} needs {expected}; the model \
         and spec.model.layers disagree"
    )]
    ParamCount {
        layers: Vec<usize>,
        expected: usize,
        found: usize,
    },
    /// A parameter is NaN or infinite; training on it would only spread the damage.
    #[error(
        "parameter {index} (in {tensor}) is {value}; the model is corrupt, refusing to use it"
    )]
    NonFiniteParam {
        index: usize,
        tensor: String,
        value: f32,
    },
    /// The data set's own vectors are inconsistent.
    #[error(
        "malformed data set: {rows} labels but {values} feature values at {features} features per \
         row"
    )]
    Shape {
        rows: usize,
        values: usize,
        features: usize,
    },
    /// The data does not fit the model's input layer.
    #[error(
        "the data has {found} features per row but the model's input layer has {expected}; \
         spec.model.layers[0] must match the data source"
    )]
    Features { expected: usize, found: usize },
    /// A label the model cannot output.
    #[error(
        "row {row} has label {label} but the model has {outputs} outputs; the last entry of \
         spec.model.layers must be the number of classes"
    )]
    Label {
        row: usize,
        label: u32,
        outputs: usize,
    },
    /// A feature value is NaN or infinite.
    #[error("row {row}, feature {feature} is {value}; the data set is corrupt")]
    NonFiniteFeature {
        row: usize,
        feature: usize,
        value: f32,
    },
    /// Nothing to train or evaluate on.
    #[error("the data set is empty, nothing to {0}")]
    Empty(&'static str),
    /// A training setting that cannot work.
    #[error("{field} {problem}")]
    Spec {
        field: &'static str,
        problem: String,
    },
    /// The loss or the parameters became NaN or infinite.
    #[error(
        "training diverged: {what} at epoch {epoch}, step {step}; lower spec.train.learning_rate"
    )]
    Diverged {
        what: String,
        epoch: usize,
        step: usize,
    },
    /// The tensor library failed (out of memory, internal error).
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The result of one call to [`train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The trained parameters, flat, in the layout's order.
    pub params: Vec<f32>,
    /// Mean cross-entropy over the examples of the last epoch, each measured on its minibatch
    /// before that minibatch's step (the usual running training loss).
    pub mean_loss: f32,
    /// Optimizer steps taken over all epochs.
    pub steps: usize,
}

/// How well parameters do on a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Share of rows whose highest logit is the label (ties go to the lower class).
    pub accuracy: f32,
    /// Mean cross-entropy of the softmax of the logits.
    pub loss: f32,
    /// Rows evaluated.
    pub samples: u64,
}

/// ChaCha20 streams drawn from a seed, one per purpose, so that e.g. the number of training rows
/// never changes the test rows.
mod streams {
    /// Shuffle of the MNIST training rows.
    pub const SHUFFLE: u64 = 0;
    /// Dirichlet partition, attempt `a` uses `DIRICHLET + a`.
    pub const DIRICHLET: u64 = 1 << 8;
    /// Synthetic: the shared test split.
    pub const SYNTHETIC_TEST: u64 = 1 << 16;
    /// Synthetic: the reference sample that fixes the standardization.
    pub const SYNTHETIC_REFERENCE: u64 = (1 << 16) + 1;
    /// Synthetic: the public reference rows (genesis `spec.robust.reference_rows`).
    pub const SYNTHETIC_PUBLIC: u64 = (1 << 16) + 2;
    /// Synthetic: member `i`'s traffic mix uses `SYNTHETIC_MIX + i`.
    pub const SYNTHETIC_MIX: u64 = 1 << 32;
    /// Synthetic: member `i`'s training rows use `SYNTHETIC_ROWS + i`.
    pub const SYNTHETIC_ROWS: u64 = 2 << 32;
}

/// A ChaCha20 generator on one stream of `seed`.
fn rng(seed: u64, stream: u64) -> rand_chacha::ChaCha20Rng {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Proportions drawn from a symmetric Dirichlet(alpha) over `k` parts.
///
/// Sampled in log space (`Gamma(a) = Gamma(a + 1) · U^(1/a)`) because for small alpha the plain
/// Gamma draws underflow to zero and the proportions would be 0/0. `alpha` must be positive.
fn dirichlet<R: rand::Rng>(rng: &mut R, alpha: f64, k: usize) -> Vec<f64> {
    use rand_distr::Distribution;
    let gamma = match rand_distr::Gamma::new(alpha + 1.0, 1.0) {
        Ok(g) => g,
        // Only reachable for a non-positive or non-finite alpha, which callers reject.
        Err(_) => return vec![1.0 / k as f64; k],
    };
    let logs: Vec<f64> = (0..k)
        .map(|_| {
            let g: f64 = gamma.sample(rng);
            let u: f64 = 1.0 - rng.gen::<f64>(); // in (0, 1]
            g.ln() + u.ln() / alpha
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![1.0 / k as f64; k];
    }
    let w: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirichlet_is_a_distribution_and_small_alpha_is_skewed() {
        let mut r = rng(3, 0);
        for alpha in [1e-4, 0.1, 1.0, 100.0] {
            let p = dirichlet(&mut r, alpha, 5);
            assert_eq!(p.len(), 5);
            assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0), "{p:?}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let mean_max = |alpha: f64, r: &mut rand_chacha::ChaCha20Rng| {
            (0..200)
                .map(|_| dirichlet(r, alpha, 10).into_iter().fold(0.0, f64::max))
                .sum::<f64>()
                / 200.0
        };
        assert!(mean_max(0.05, &mut r) > 0.7);
        assert!(mean_max(100.0, &mut r) < 0.2);
    }

    #[test]
    fn load_checks_member_and_spec() {
        let spec = DataSpec {
            source: DataSource::Synthetic,
            synthetic_rows_per_member: 10,
            ..DataSpec::default()
        };
        let err = load(&spec, Path::new("unused"), 3, 3, 0).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Member {
                    member: 3,
                    members: 3
                }
            ),
            "{err}"
        );
        let bad = DataSpec {
            test_rows: 0,
            ..spec
        };
        let err = load(&bad, Path::new("unused"), 0, 1, 0).unwrap_err();
        assert!(err.to_string().contains("spec.data.test_rows"), "{err}");
    }
}
