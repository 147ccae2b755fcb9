//! DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) for the MLP:
//! record-level differential privacy of a member's own shard.
//!
//! Every step draws a batch (Poisson: each row with probability q; or exactly round(q·n) rows),
//! computes each example's gradient, scales it down to L2 norm at most C, sums, adds N(0, σ²C²)
//! to every coordinate and divides by the expected batch size q·n (Poisson) or the batch size
//! (fixed); then a plain SGD step. The accountant's cost of a round is `ceil(epochs / q)` such
//! steps ([`fedmesh_protocol::dp::Cost`]).
//!
//! Per-example gradients need no loop over examples: for a linear layer z = W a + b the gradient
//! of example i is δᵢ aᵢᵀ (and δᵢ for the bias), where δᵢ = ∂loss_i/∂zᵢ, so its squared Frobenius
//! norm is ‖δᵢ‖²·(‖aᵢ‖² + 1). One forward pass keeps the activations, the deltas are
//! backpropagated by hand (softmax cross-entropy: δ = softmax(z) − onehot(y); through a ReLU:
//! δ_prev = (δ W) ⊙ [z_prev > 0]), the per-example norms come from row sums, and the clipped sum
//! is one ordinary matmul with each δᵢ scaled by its clip factor: Σᵢ fᵢ δᵢ aᵢᵀ = (f ⊙ Δ)ᵀ A.
//!
//! The sampling and the noise come from a ChaCha20 generator seeded by the caller's 32-byte
//! secret: DP holds only if nobody else can reproduce them.

use candle_core::{DType, Device, Tensor, D};
use fedmesh_protocol::genesis::{DpSpec, Optimizer, Sampling, TrainSpec};
use fedmesh_protocol::model::Layout;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::mlp::{check_data, check_model, spec_error};
use super::{Dataset, TrainError, TrainOutcome};

/// Adam's (β₁, β₂) and ε, as in candle's `ParamsAdamW::default()` used by non-private training.
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

/// One linear layer's parameters: weight `[out, in]` and bias `[out]`.
struct Layer {
    w: Tensor,
    b: Tensor,
}

/// Clipped per-example gradients of one batch, summed.
pub(crate) struct ClippedSum {
    /// Per layer: weight gradient `[out, in]` and bias gradient `[out]`.
    pub grads: Vec<(Tensor, Tensor)>,
    /// Each example's gradient norm before clipping.
    pub norms: Vec<f32>,
    /// Σ of the examples' cross-entropy losses.
    pub loss_sum: f64,
}

/// The sum over the batch `x` (`[rows, in]`), `y` of each example's gradient of its own
/// cross-entropy loss, each scaled down to L2 norm at most `clip` (over all layers together).
/// `clip = f64::INFINITY` gives the plain per-example sum.
fn clipped_sum(
    layers: &[Layer],
    x: &Tensor,
    y: &[u32],
    clip: f64,
) -> candle_core::Result<ClippedSum> {
    let rows = y.len();
    // Forward, keeping each layer's input and pre-activation.
    let mut inputs = Vec::with_capacity(layers.len());
    let mut pre = Vec::with_capacity(layers.len());
    let mut h = x.clone();
    for (i, l) in layers.iter().enumerate() {
        let z = h.matmul(&l.w.t()?)?.broadcast_add(&l.b)?;
        inputs.push(h);
        h = if i + 1 < layers.len() {
            z.relu()?
        } else {
            z.clone()
        };
        pre.push(z);
    }
    let logits = pre.last().expect("at least one layer");
    let classes = logits.dim(1)?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let log_p_rows = log_p.to_vec2::<f32>()?;
    let mut onehot = vec![0f32; rows * classes];
    let mut loss_sum = 0.0f64;
    for (i, (&label, row)) in y.iter().zip(&log_p_rows).enumerate() {
        onehot[i * classes + label as usize] = 1.0;
        loss_sum -= f64::from(row[label as usize]);
    }
    let onehot = Tensor::from_vec(onehot, (rows, classes), x.device())?;
    // Backward by hand: the delta of each layer's pre-activation, last layer first.
    let mut deltas = vec![log_p.exp()?.sub(&onehot)?];
    for l in (1..layers.len()).rev() {
        let d = deltas.last().expect("pushed").matmul(&layers[l].w)?;
        let mask = pre[l - 1].gt(0f32)?.to_dtype(DType::F32)?;
        deltas.push(d.mul(&mask)?);
    }
    deltas.reverse();
    // ‖gᵢ‖² = Σ_layers ‖δᵢ‖² (‖aᵢ‖² + 1).
    let mut norm2 = Tensor::zeros(rows, DType::F32, x.device())?;
    for (d, a) in deltas.iter().zip(&inputs) {
        let dd = d.sqr()?.sum(1)?;
        let aa = (a.sqr()?.sum(1)? + 1.0)?;
        norm2 = (norm2 + dd.mul(&aa)?)?;
    }
    let norms: Vec<f32> = norm2.sqrt()?.to_vec1()?;
    let factors: Vec<f32> = norms
        .iter()
        .map(|n| {
            let f = clip / (f64::from(*n) + 1e-12);
            f.min(1.0) as f32
        })
        .collect();
    let f = Tensor::from_vec(factors, (rows, 1), x.device())?;
    let mut grads = Vec::with_capacity(layers.len());
    for (d, a) in deltas.iter().zip(&inputs) {
        let scaled = d.broadcast_mul(&f)?;
        grads.push((scaled.t()?.matmul(a)?, scaled.sum(0)?));
    }
    Ok(ClippedSum {
        grads,
        norms,
        loss_sum,
    })
}

/// Train the MLP with DP-SGD under `dp` (level `record`): `ceil(spec.epochs / dp.sample_rate)`
/// steps at `spec.learning_rate`, each on a batch drawn as `dp.sampling` says, with per-example
/// clipping to `dp.clip` and Gaussian noise of std `dp.noise_multiplier · dp.clip` on the summed
/// gradient. The noisy mean gradient then drives plain SGD or Adam (`spec.optimizer`; Adam's
/// moments see only noisy gradients, so it is post-processing and costs no privacy). `secret` seeds both the sampling and the noise: keep it secret.
///
/// `mean_loss` is the mean per-example loss over the last epoch's worth of steps (1/q steps);
/// note that it is a statistic of the data *without* noise — do not publish it under DP.
pub fn train_dp(
    layout: &Layout,
    params: &[f32],
    data: &Dataset,
    spec: &TrainSpec,
    dp: &DpSpec,
    secret: [u8; 32],
) -> Result<TrainOutcome, TrainError> {
    check_model(layout, params)?;
    check_data(layout, data, "train on")?;
    if spec.epochs == 0 {
        return Err(spec_error("spec.train.epochs", "must be greater than 0"));
    }
    let lr = spec.learning_rate;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(spec_error(
            "spec.train.learning_rate",
            &format!("must be a positive number, found {lr}"),
        ));
    }
    let q = dp.sample_rate;
    if !(q > 0.0 && q <= 1.0) {
        return Err(spec_error("spec.dp.sample_rate", "must be in (0, 1]"));
    }
    if !(dp.clip > 0.0 && dp.clip.is_finite() && dp.noise_multiplier >= 0.0) {
        return Err(spec_error(
            "spec.dp.clip",
            "and spec.dp.noise_multiplier must be positive and finite",
        ));
    }

    let device = Device::Cpu;
    let mut layers = Vec::with_capacity(layout.layers.len() - 1);
    for wb in layout.tensors().chunks(2) {
        let (w, b) = (&wb[0], &wb[1]);
        layers.push(Layer {
            w: Tensor::from_slice(
                &params[w.offset..w.offset + w.len()],
                w.shape.clone(),
                &device,
            )?,
            b: Tensor::from_slice(
                &params[b.offset..b.offset + b.len()],
                b.shape.clone(),
                &device,
            )?,
        });
    }

    let n = data.len();
    let features = data.features;
    let steps = dp.steps_per_round(spec.epochs) as usize;
    let steps_per_epoch = ((1.0 / q).ceil() as usize).clamp(1, steps);
    let fixed = ((q * n as f64).round() as usize).clamp(1, n);
    let std = dp.noise_multiplier * dp.clip;
    let normal = Normal::new(0.0f64, std)
        .map_err(|e| spec_error("spec.dp.noise_multiplier", &e.to_string()))?;
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(secret);
    // Adam's moments per tensor (weight, bias of each layer), when spec.train.optimizer is adam.
    let mut adam = match spec.optimizer {
        Optimizer::Sgd => None,
        Optimizer::Adam => Some(
            layers
                .iter()
                .flat_map(|l| [&l.w, &l.b])
                .map(|t| Ok((t.zeros_like()?, t.zeros_like()?)))
                .collect::<candle_core::Result<Vec<_>>>()?,
        ),
    };
    let mut rows: Vec<usize> = Vec::with_capacity(fixed * 2);
    let mut xb: Vec<f32> = Vec::new();
    let mut yb: Vec<u32> = Vec::new();
    let (mut tail_loss, mut tail_rows) = (0.0f64, 0usize);
    let (mut seen, mut clipped) = (0usize, 0usize);
    for step in 0..steps {
        rows.clear();
        match dp.sampling {
            Sampling::Poisson => rows.extend((0..n).filter(|_| rng.gen::<f64>() < q)),
            Sampling::Fixed => rows.extend(rand::seq::index::sample(&mut rng, n, fixed)),
        }
        let denominator = match dp.sampling {
            Sampling::Poisson => q * n as f64,
            Sampling::Fixed => fixed as f64,
        };
        xb.clear();
        yb.clear();
        for &i in &rows {
            xb.extend_from_slice(data.row(i));
            yb.push(data.y[i]);
        }
        // An empty Poisson batch still takes its (pure-noise) step: the accountant counts it.
        let sum = if rows.is_empty() {
            None
        } else {
            let x = Tensor::from_slice(&xb, (rows.len(), features), &device)?;
            Some(clipped_sum(&layers, &x, &yb, dp.clip)?)
        };
        if let Some(s) = &sum {
            if !s.loss_sum.is_finite() {
                return Err(TrainError::Diverged {
                    what: format!("the loss is {}", s.loss_sum),
                    epoch: step / steps_per_epoch,
                    step,
                });
            }
            seen += s.norms.len();
            clipped += s.norms.iter().filter(|n| f64::from(**n) > dp.clip).count();
            if step + steps_per_epoch >= steps {
                tail_loss += s.loss_sum;
                tail_rows += rows.len();
            }
        }
        let t = step as i32 + 1;
        for (i, layer) in layers.iter_mut().enumerate() {
            let (gw, gb) = match &sum {
                Some(s) => (Some(&s.grads[i].0), Some(&s.grads[i].1)),
                None => (None, None),
            };
            for (k, (param, g)) in [(&mut layer.w, gw), (&mut layer.b, gb)]
                .into_iter()
                .enumerate()
            {
                let noise: Vec<f32> = (0..param.elem_count())
                    .map(|_| normal.sample(&mut rng) as f32)
                    .collect();
                let noise = Tensor::from_vec(noise, param.shape(), &device)?;
                // The noisy mean gradient: everything after this line is post-processing.
                let g = match g {
                    Some(g) => (g + noise)?,
                    None => noise,
                };
                let g = (g / denominator)?;
                *param = match &mut adam {
                    None => (&*param - (g * lr)?)?,
                    Some(state) => {
                        let (m, v) = &mut state[2 * i + k];
                        *m = ((&*m * ADAM_BETAS.0)? + (&g * (1.0 - ADAM_BETAS.0))?)?;
                        *v = ((&*v * ADAM_BETAS.1)? + (g.sqr()? * (1.0 - ADAM_BETAS.1))?)?;
                        let m_hat = (&*m / (1.0 - ADAM_BETAS.0.powi(t)))?;
                        let v_hat = (&*v / (1.0 - ADAM_BETAS.1.powi(t)))?;
                        let step = (m_hat / (v_hat.sqrt()? + ADAM_EPS)?)?;
                        (&*param - (step * lr)?)?
                    }
                };
            }
        }
    }

    tracing::debug!(
        steps,
        examples = seen,
        clipped,
        "DP-SGD: share of per-example gradients clipped {:.3}",
        clipped as f64 / seen.max(1) as f64
    );
    let mut out = Vec::with_capacity(params.len());
    for l in &layers {
        out.extend(l.w.flatten_all()?.to_vec1::<f32>()?);
        out.extend(l.b.to_vec1::<f32>()?);
    }
    super::mlp::outcome(
        out,
        (tail_loss / tail_rows.max(1) as f64) as f32,
        spec.epochs,
        steps,
    )
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use fedmesh_protocol::genesis::{DataSpec, DpLevel, Partition};

    use super::super::data::fixture::{mnist, mnist_path};
    use super::super::{data, evaluate, train};
    use super::*;

    fn layers_of(layout: &Layout, params: &[f32]) -> Vec<Layer> {
        layout
            .tensors()
            .chunks(2)
            .map(|wb| Layer {
                w: Tensor::from_slice(
                    &params[wb[0].offset..wb[0].offset + wb[0].len()],
                    wb[0].shape.clone(),
                    &Device::Cpu,
                )
                .unwrap(),
                b: Tensor::from_slice(
                    &params[wb[1].offset..wb[1].offset + wb[1].len()],
                    wb[1].shape.clone(),
                    &Device::Cpu,
                )
                .unwrap(),
            })
            .collect()
    }

    /// The gradient of one example's cross-entropy by candle's autograd, flat in layout order.
    fn autograd(layout: &Layout, params: &[f32], x: &[f32], y: u32) -> Vec<f32> {
        let vars: Vec<Var> = layout
            .tensors()
            .iter()
            .map(|t| {
                Var::from_slice(
                    &params[t.offset..t.offset + t.len()],
                    t.shape.clone(),
                    &Device::Cpu,
                )
                .unwrap()
            })
            .collect();
        let mut h = Tensor::from_slice(x, (1, x.len()), &Device::Cpu).unwrap();
        let n = vars.len() / 2;
        for (i, wb) in vars.chunks(2).enumerate() {
            h = h
                .matmul(&wb[0].as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(wb[1].as_tensor())
                .unwrap();
            if i + 1 < n {
                h = h.relu().unwrap();
            }
        }
        let target = Tensor::new(&[y], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&h, &target).unwrap();
        let grads = loss.backward().unwrap();
        vars.iter()
            .flat_map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    fn flat(sum: &ClippedSum) -> Vec<f32> {
        sum.grads
            .iter()
            .flat_map(|(w, b)| {
                let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.extend(b.to_vec1::<f32>().unwrap());
                v
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "coordinate {i}: {x} vs {y}");
        }
    }

    /// A batch of `rows` rows of a 6-5-4-3 MLP (two hidden layers), some with dead ReLUs.
    fn batch(rows: usize) -> (Layout, Vec<f32>, Vec<f32>, Vec<u32>) {
        let layout = Layout::new(vec![6, 5, 4, 3]).unwrap();
        let params = layout.init(3);
        let x = (0..rows * 6)
            .map(|i| ((i * 37 % 23) as f32 / 7.0) - 1.5)
            .collect();
        let y = (0..rows).map(|i| (i % 3) as u32).collect();
        (layout, params, x, y)
    }

    #[test]
    fn per_example_gradients_match_autograd() {
        let (layout, params, x, y) = batch(9);
        let layers = layers_of(&layout, &params);
        let mut norms = Vec::new();
        for i in 0..y.len() {
            let row = &x[i * 6..(i + 1) * 6];
            let g = autograd(&layout, &params, row, y[i]);
            // A batch of one, unclipped: exactly the autograd gradient.
            let xt = Tensor::from_slice(row, (1, 6), &Device::Cpu).unwrap();
            let one = clipped_sum(&layers, &xt, &y[i..=i], f64::INFINITY).unwrap();
            close(&flat(&one), &g, 1e-5);
            let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!((f64::from(one.norms[0]) - norm).abs() < 1e-5 * norm.max(1.0));
            norms.push(norm);
        }
        assert!(
            norms.iter().all(|n| *n > 1e-3),
            "the check must not be vacuous"
        );
        // The whole batch: per-example norms, and the sum of the per-example gradients clipped
        // to half the smallest norm (every example is clipped, each by its own factor).
        let clip = norms.iter().cloned().fold(f64::INFINITY, f64::min) / 2.0;
        let mut want = vec![0f32; params.len()];
        for i in 0..y.len() {
            let g = autograd(&layout, &params, &x[i * 6..(i + 1) * 6], y[i]);
            for (s, v) in want.iter_mut().zip(&g) {
                *s += v * (clip / norms[i]) as f32;
            }
        }
        let xt = Tensor::from_slice(&x, (y.len(), 6), &Device::Cpu).unwrap();
        let got = clipped_sum(&layers, &xt, &y, clip).unwrap();
        for (g, w) in got.norms.iter().zip(&norms) {
            assert!((f64::from(*g) - w).abs() < 1e-4 * w.max(1.0), "{g} vs {w}");
        }
        close(&flat(&got), &want, 1e-4);
    }

    #[test]
    fn clipping_bounds_every_example() {
        // Each example's clipped contribution (a batch of one) has norm at most C, whatever the
        // input scale; the batch sum has norm at most rows × C.
        let (layout, params, mut x, y) = batch(12);
        x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v *= 10f32.powi((i % 5) as i32 - 1));
        let layers = layers_of(&layout, &params);
        for clip in [1e-3, 0.1, 1.0] {
            for i in 0..y.len() {
                let xt = Tensor::from_slice(&x[i * 6..(i + 1) * 6], (1, 6), &Device::Cpu).unwrap();
                let s = clipped_sum(&layers, &xt, &y[i..=i], clip).unwrap();
                let n = flat(&s)
                    .iter()
                    .map(|v| f64::from(*v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(n <= clip * (1.0 + 1e-5), "example {i}: {n} > {clip}");
            }
            let xt = Tensor::from_slice(&x, (y.len(), 6), &Device::Cpu).unwrap();
            let s = clipped_sum(&layers, &xt, &y, clip).unwrap();
            let n = flat(&s)
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(n <= y.len() as f64 * clip * (1.0 + 1e-5));
        }
    }

    fn dp(sigma: f64, q: f64) -> DpSpec {
        DpSpec {
            level: DpLevel::Record,
            noise_multiplier: sigma,
            clip: 1.0,
            sample_rate: q,
            ..DpSpec::default()
        }
    }

    #[test]
    fn noise_on_the_step_has_the_calibrated_scale() {
        // Learning rate 1, q = 1 (full batch, fixed sampling), one epoch: one step, and with a
        // clip far below every gradient the signal is tiny, so params_after − params_before is
        // −(noise + clipped sum)/n with noise std σC. Its spread over ~100 coordinates of
        // a 30-30-2 model must be σC/n.
        let layout = Layout::new(vec![30, 30, 2]).unwrap();
        let params = layout.init(1);
        let data = Dataset {
            features: 30,
            classes: 2,
            x: (0..40 * 30).map(|i| (i % 7) as f32 / 7.0).collect(),
            y: (0..40).map(|i| (i % 2) as u32).collect(),
        };
        let spec = TrainSpec {
            optimizer: Optimizer::Sgd,
            learning_rate: 1.0,
            epochs: 1,
            batch_size: 1,
        };
        let mut d = dp(3.0, 1.0);
        d.sampling = Sampling::Fixed;
        d.clip = 1e-6;
        let out = train_dp(&layout, &params, &data, &spec, &d, [7; 32]).unwrap();
        assert_eq!(out.steps, 1);
        let diffs: Vec<f64> = out
            .params
            .iter()
            .zip(&params)
            .map(|(a, b)| f64::from(a - b) * 40.0)
            .collect();
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let var = diffs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let want = 3.0e-6f64.powi(2);
        // 992 draws: the variance's relative standard error is √(2/n) ≈ 4.5 %.
        assert!((var / want - 1.0).abs() < 0.2, "var {var} vs {want}");
        // Another secret, other noise; the same secret, the same parameters.
        let again = train_dp(&layout, &params, &data, &spec, &d, [7; 32]).unwrap();
        assert_eq!(again.params, out.params);
        let other = train_dp(&layout, &params, &data, &spec, &d, [8; 32]).unwrap();
        assert_ne!(other.params, out.params);
    }

    /// DP-SGD with σ → 0, C → ∞ and q = 1 in fixed batches, next to `train` on the same data:
    /// (DP result, non-private result, the starting parameters).
    fn noiseless_next_to_plain(
        optimizer: Optimizer,
        learning_rate: f64,
        epochs: usize,
    ) -> (TrainOutcome, TrainOutcome, Vec<f32>) {
        let (layout, params, x, y) = batch(20);
        let data = Dataset {
            features: 6,
            classes: 3,
            x,
            y,
        };
        let spec = TrainSpec {
            optimizer,
            learning_rate,
            epochs,
            batch_size: 20,
        };
        // Noise std σ·C = 1e-24.
        let mut d = dp(1e-30, 1.0);
        d.clip = 1e6;
        d.sampling = Sampling::Fixed;
        let a = train_dp(&layout, &params, &data, &spec, &d, [1; 32]).unwrap();
        let b = train(&layout, &params, &data, &spec, 0).unwrap();
        assert_eq!(a.steps, epochs);
        (a, b, params)
    }

    #[test]
    fn without_noise_and_clipping_it_is_plain_sgd() {
        // In the limit DP-SGD is full-batch SGD on the mean loss.
        let (a, b, _) = noiseless_next_to_plain(Optimizer::Sgd, 0.3, 2);
        close(&a.params, &b.params, 1e-5);
    }

    #[test]
    fn without_noise_and_clipping_dp_adam_is_adam() {
        // The noisy gradients may drive Adam too (post-processing): in the limit it is exactly
        // the non-private full-batch Adam of `train`.
        let (a, b, params) = noiseless_next_to_plain(Optimizer::Adam, 0.01, 3);
        close(&a.params, &b.params, 1e-4);
        assert!(a
            .params
            .iter()
            .zip(&params)
            .any(|(p, q)| (p - q).abs() > 1e-3));
    }

    #[test]
    fn dp_sgd_learns_mnist_at_a_moderate_epsilon() {
        let spec = DataSpec {
            partition: Partition::Iid,
            ..DataSpec::default()
        };
        let d = data::split(mnist(), &spec, &mnist_path(), 0, 1, 0).unwrap();
        let layout = Layout::new(vec![784, 128, 10]).unwrap();
        let train_spec = TrainSpec {
            optimizer: Optimizer::Sgd,
            learning_rate: 0.5,
            epochs: 3,
            batch_size: 1,
        };
        let q = 0.02;
        let d_spec = dp(1.0, q);
        let eps = fedmesh_protocol::dp::epsilon(1.0, q, d_spec.steps_per_round(3), 1e-5).unwrap();
        let start = std::time::Instant::now();
        let out = train_dp(
            &layout,
            &layout.init(1),
            &d.train,
            &train_spec,
            &d_spec,
            [3; 32],
        )
        .unwrap();
        let e = evaluate(&layout, &out.params, &d.test).unwrap();
        eprintln!(
            "DP-SGD σ 1, q {q}, 3 epochs on 4000 rows (ε = {eps:.2}): accuracy {:.4}, {} steps, {:?}",
            e.accuracy,
            out.steps,
            start.elapsed()
        );
        assert!(e.accuracy > 0.75, "{e:?}");
    }
}
