//! The MLP in candle: flat parameters in, minibatch training or evaluation, flat parameters out.

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer as _, ParamsAdamW, SGD};
use fedmesh_protocol::genesis::{Optimizer, TrainSpec};
use fedmesh_protocol::model::Layout;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{Dataset, Evaluation, TrainError, TrainOutcome};

/// Rows per forward pass in [`evaluate`], to bound memory on large test sets.
const EVAL_CHUNK: usize = 1000;

/// Either optimizer behind one interface.
enum Opt {
    Sgd(SGD),
    Adam(AdamW),
}

impl Opt {
    fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        match self {
            Opt::Sgd(o) => o.backward_step(loss),
            Opt::Adam(o) => o.backward_step(loss),
        }
    }
}

/// Train the MLP described by `layout` (linear layers with ReLU between them and none after the
/// last), starting from the flat `params`, on `data`.
///
/// Runs `spec.epochs` epochs of minibatches of `spec.batch_size` rows (the last minibatch of an
/// epoch may be smaller), reshuffling the rows every epoch with a ChaCha20 generator seeded by
/// `seed`. The optimizer is plain SGD (no momentum) or Adam (candle's AdamW with weight decay 0, so
/// that it is exactly Adam) at `spec.learning_rate`; optimizer state starts fresh on every call,
/// because each federated round starts from a new global model. The loss is the cross-entropy of
/// the logits.
///
/// Deterministic: the same inputs and seed give bit-identical parameters on the same machine.
/// Runs on the CPU and blocks; call it from a blocking thread.
pub fn train(
    layout: &Layout,
    params: &[f32],
    data: &Dataset,
    spec: &TrainSpec,
    seed: u64,
) -> Result<TrainOutcome, TrainError> {
    check_model(layout, params)?;
    check_data(layout, data, "train on")?;
    if spec.epochs == 0 {
        return Err(spec_error("spec.train.epochs", "must be greater than 0"));
    }
    if spec.batch_size == 0 {
        return Err(spec_error(
            "spec.train.batch_size",
            "must be greater than 0",
        ));
    }
    let lr = spec.learning_rate;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(spec_error(
            "spec.train.learning_rate",
            &format!("must be a positive number, found {lr}"),
        ));
    }

    let device = Device::Cpu;
    let vars = layout
        .tensors()
        .iter()
        .map(|t| {
            Var::from_slice(
                &params[t.offset..t.offset + t.len()],
                t.shape.clone(),
                &device,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `Var::set` updates the storage in place, so these layers see every optimizer step.
    let layers: Vec<Linear> = vars
        .chunks(2)
        .map(|wb| Linear::new(wb[0].as_tensor().clone(), Some(wb[1].as_tensor().clone())))
        .collect();
    let mut opt = match spec.optimizer {
        Optimizer::Sgd => Opt::Sgd(SGD::new(vars.clone(), lr)?),
        Optimizer::Adam => Opt::Adam(AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?),
    };

    let features = data.features;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let batch = spec.batch_size.min(data.len());
    let mut xb = Vec::with_capacity(batch * features);
    let mut yb = Vec::with_capacity(batch);
    let (mut steps, mut mean_loss) = (0, 0.0);
    for epoch in 0..spec.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        for rows in order.chunks(batch) {
            xb.clear();
            yb.clear();
            for &i in rows {
                xb.extend_from_slice(data.row(i));
                yb.push(data.y[i]);
            }
            let x = Tensor::from_slice(&xb, (rows.len(), features), &device)?;
            let y = Tensor::from_slice(&yb, rows.len(), &device)?;
            let loss = candle_nn::loss::cross_entropy(&forward(&layers, &x)?, &y)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::Diverged {
                    what: format!("the loss is {value}"),
                    epoch,
                    step: steps,
                });
            }
            opt.backward_step(&loss)?;
            loss_sum += f64::from(value) * rows.len() as f64;
            steps += 1;
        }
        mean_loss = loss_sum / data.len() as f64;
    }

    let mut out = Vec::with_capacity(params.len());
    for v in &vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    outcome(out, mean_loss as f32, spec.epochs, steps)
}

/// The trained parameters as an outcome, or `Diverged` naming the first non-finite one.
pub(super) fn outcome(
    params: Vec<f32>,
    mean_loss: f32,
    epochs: usize,
    steps: usize,
) -> Result<TrainOutcome, TrainError> {
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(TrainError::Diverged {
            what: format!("parameter {index} became {}", params[index]),
            epoch: epochs - 1,
            step: steps,
        });
    }
    Ok(TrainOutcome {
        params,
        mean_loss,
        steps,
    })
}

/// Accuracy and mean cross-entropy of `params` on `data`, in chunks of 1000 rows to bound memory.
/// The loss is computed in f64 from the logits (log-sum-exp), so it stays finite for confident
/// models.
pub fn evaluate(layout: &Layout, params: &[f32], data: &Dataset) -> Result<Evaluation, TrainError> {
    check_model(layout, params)?;
    check_data(layout, data, "evaluate")?;
    let device = Device::Cpu;
    let tensors = layout
        .tensors()
        .iter()
        .map(|t| {
            Tensor::from_slice(
                &params[t.offset..t.offset + t.len()],
                t.shape.clone(),
                &device,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let layers: Vec<Linear> = tensors
        .chunks(2)
        .map(|wb| Linear::new(wb[0].clone(), Some(wb[1].clone())))
        .collect();

    let features = data.features;
    let (mut correct, mut loss_sum) = (0u64, 0.0f64);
    for (chunk, labels) in data
        .x
        .chunks(EVAL_CHUNK * features)
        .zip(data.y.chunks(EVAL_CHUNK))
    {
        let x = Tensor::from_slice(chunk, (labels.len(), features), &device)?;
        let logits = forward(&layers, &x)?.to_vec2::<f32>()?;
        for (row, &label) in logits.iter().zip(labels) {
            let (best, max) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    });
            if best == label as usize {
                correct += 1;
            }
            let max = f64::from(max);
            let lse = max
                + row
                    .iter()
                    .map(|v| (f64::from(*v) - max).exp())
                    .sum::<f64>()
                    .ln();
            loss_sum += lse - f64::from(row[label as usize]);
        }
    }
    let n = data.len() as f64;
    Ok(Evaluation {
        accuracy: (correct as f64 / n) as f32,
        loss: (loss_sum / n) as f32,
        samples: data.len() as u64,
    })
}

/// Logits of `x`: every layer but the last is followed by a ReLU.
fn forward(layers: &[Linear], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (i, layer) in layers.iter().enumerate() {
        h = layer.forward(&h)?;
        if i + 1 < layers.len() {
            h = h.relu()?;
        }
    }
    Ok(h)
}

pub(super) fn spec_error(field: &'static str, problem: &str) -> TrainError {
    TrainError::Spec {
        field,
        problem: problem.into(),
    }
}

/// The layout is valid and `params` fits it with finite values.
pub(super) fn check_model(layout: &Layout, params: &[f32]) -> Result<(), TrainError> {
    layout.validate()?;
    let expected = layout.param_count();
    if params.len() != expected {
        return Err(TrainError::ParamCount {
            layers: layout.layers.clone(),
            expected,
            found: params.len(),
        });
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        let tensor = layout
            .tensors()
            .into_iter()
            .find(|t| index < t.offset + t.len())
            .map(|t| t.name)
            .unwrap_or_default();
        return Err(TrainError::NonFiniteParam {
            index,
            tensor,
            value: params[index],
        });
    }
    Ok(())
}

/// `data` is consistent, non-empty, finite and fits the layout's input and output widths.
pub(super) fn check_data(
    layout: &Layout,
    data: &Dataset,
    what: &'static str,
) -> Result<(), TrainError> {
    if data.x.len() != data.len().saturating_mul(data.features) {
        return Err(TrainError::Shape {
            rows: data.len(),
            values: data.x.len(),
            features: data.features,
        });
    }
    if data.features != layout.inputs() {
        return Err(TrainError::Features {
            expected: layout.inputs(),
            found: data.features,
        });
    }
    if data.is_empty() {
        return Err(TrainError::Empty(what));
    }
    let outputs = layout.outputs();
    if let Some(row) = data.y.iter().position(|l| *l as usize >= outputs) {
        return Err(TrainError::Label {
            row,
            label: data.y[row],
            outputs,
        });
    }
    if let Some(i) = data.x.iter().position(|v| !v.is_finite()) {
        let (row, feature) = (i / data.features, i % data.features);
        return Err(TrainError::NonFiniteFeature {
            row,
            feature,
            value: data.x[i],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use fedmesh_protocol::genesis::{DataSpec, Partition};

    use super::super::data::fixture::{mnist, mnist_path};
    use super::super::{data, MemberData};
    use super::*;

    fn mnist_layout() -> Layout {
        Layout::new(vec![784, 128, 10]).unwrap()
    }

    /// Member 0 of 4 (1000 training rows) and the 1000-row test split.
    fn member0() -> MemberData {
        let spec = DataSpec {
            partition: Partition::Iid,
            ..DataSpec::default()
        };
        data::split(mnist(), &spec, &mnist_path(), 0, 4, 0).unwrap()
    }

    fn sgd(epochs: usize) -> TrainSpec {
        TrainSpec {
            optimizer: Optimizer::Sgd,
            learning_rate: 0.1,
            epochs,
            batch_size: 32,
        }
    }

    fn tiny() -> (Layout, Dataset) {
        let layout = Layout::new(vec![3, 4, 2]).unwrap();
        let x = (0..60).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
        let y = (0..20).map(|i| (i % 2) as u32).collect();
        (
            layout,
            Dataset {
                features: 3,
                classes: 2,
                x,
                y,
            },
        )
    }

    #[test]
    fn training_is_deterministic() {
        let d = member0();
        let layout = mnist_layout();
        let init = layout.init(1);
        for spec in [
            sgd(1),
            TrainSpec {
                optimizer: Optimizer::Adam,
                learning_rate: 1e-3,
                ..sgd(1)
            },
        ] {
            let a = train(&layout, &init, &d.train, &spec, 42).unwrap();
            let b = train(&layout, &init, &d.train, &spec, 42).unwrap();
            assert_eq!(a.params.len(), layout.param_count());
            assert!(a
                .params
                .iter()
                .zip(&b.params)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            assert_eq!(a.mean_loss.to_bits(), b.mean_loss.to_bits());
            assert_eq!(a.steps, 32); // ceil(1000 / 32)
            let c = train(&layout, &init, &d.train, &spec, 43).unwrap();
            assert_ne!(a.params, c.params, "another seed shuffles differently");
            assert_ne!(a.params, init);
        }
    }

    /// Logits computed by hand from the documented flat order (weight `[out, in]` row-major, then
    /// bias, layer by layer), in f64.
    fn reference_logits(layout: &Layout, params: &[f32], row: &[f32]) -> Vec<f64> {
        let mut h: Vec<f64> = row.iter().map(|v| f64::from(*v)).collect();
        let mut offset = 0;
        let last = layout.layers.len() - 2;
        for (l, w) in layout.layers.windows(2).enumerate() {
            let (inp, out) = (w[0], w[1]);
            let bias = offset + inp * out;
            h = (0..out)
                .map(|o| {
                    let z = f64::from(params[bias + o])
                        + (0..inp)
                            .map(|i| f64::from(params[offset + o * inp + i]) * h[i])
                            .sum::<f64>();
                    if l < last {
                        z.max(0.0)
                    } else {
                        z
                    }
                })
                .collect();
            offset = bias + out;
        }
        h
    }

    #[test]
    fn evaluate_follows_the_flat_layout() {
        let layout = Layout::new(vec![3, 5, 4, 3]).unwrap();
        let params = layout.init(9);
        let x: Vec<f32> = (0..3 * 50)
            .map(|i| ((i * 37) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let y: Vec<u32> = (0..50).map(|i| (i * 7 % 3) as u32).collect();
        let data = Dataset {
            features: 3,
            classes: 3,
            x,
            y,
        };
        let (mut correct, mut loss) = (0, 0.0);
        for i in 0..data.len() {
            let z = reference_logits(&layout, &params, data.row(i));
            let best = (0..3).fold(0, |b, k| if z[k] > z[b] { k } else { b });
            correct += usize::from(best == data.y[i] as usize);
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            loss += lse - z[data.y[i] as usize];
        }
        let e = evaluate(&layout, &params, &data).unwrap();
        assert_eq!(e.samples, 50);
        assert_eq!(e.accuracy, correct as f32 / 50.0);
        assert!(
            (f64::from(e.loss) - loss / 50.0).abs() < 1e-5,
            "{} vs {}",
            e.loss,
            loss / 50.0
        );
    }

    #[test]
    fn one_sgd_step_matches_the_hand_computed_gradient() {
        // Full batch, one epoch: one step of plain gradient descent on the mean cross-entropy.
        let (layout, data) = tiny();
        let p = layout.init(2);
        let lr = 0.5;
        let spec = TrainSpec {
            learning_rate: lr,
            batch_size: data.len(),
            ..sgd(1)
        };
        let out = train(&layout, &p, &data, &spec, 0).unwrap();
        assert_eq!(out.steps, 1);

        let (inp, hid, outp) = (3, 4, 2);
        let w = |i: usize| f64::from(p[i]);
        let (b1, w2, b2) = (inp * hid, inp * hid + hid, inp * hid + hid + hid * outp);
        let mut grad = vec![0.0f64; p.len()];
        let mut loss = 0.0;
        let n = data.len() as f64;
        for r in 0..data.len() {
            let x: Vec<f64> = data.row(r).iter().map(|v| f64::from(*v)).collect();
            let z1: Vec<f64> = (0..hid)
                .map(|h| w(b1 + h) + (0..inp).map(|i| w(h * inp + i) * x[i]).sum::<f64>())
                .collect();
            let a1: Vec<f64> = z1.iter().map(|v| v.max(0.0)).collect();
            let z2: Vec<f64> = (0..outp)
                .map(|o| w(b2 + o) + (0..hid).map(|h| w(w2 + o * hid + h) * a1[h]).sum::<f64>())
                .collect();
            let lse = z2.iter().map(|v| v.exp()).sum::<f64>().ln();
            let y = data.y[r] as usize;
            loss += (lse - z2[y]) / n;
            let d2: Vec<f64> = (0..outp)
                .map(|o| ((z2[o] - lse).exp() - f64::from(u8::from(o == y))) / n)
                .collect();
            for o in 0..outp {
                grad[b2 + o] += d2[o];
                for h in 0..hid {
                    grad[w2 + o * hid + h] += d2[o] * a1[h];
                }
            }
            for h in 0..hid {
                let d1 = if z1[h] > 0.0 {
                    (0..outp).map(|o| d2[o] * w(w2 + o * hid + h)).sum::<f64>()
                } else {
                    0.0
                };
                grad[b1 + h] += d1;
                for i in 0..inp {
                    grad[h * inp + i] += d1 * x[i];
                }
            }
        }
        assert!(
            (f64::from(out.mean_loss) - loss).abs() < 1e-5,
            "{} vs {loss}",
            out.mean_loss
        );
        for (i, got) in out.params.iter().enumerate() {
            let want = w(i) - lr * grad[i];
            assert!(
                (f64::from(*got) - want).abs() < 1e-5,
                "param {i}: {got} vs {want}"
            );
        }
        assert!(
            grad.iter().any(|g| g.abs() > 1e-3),
            "the check must not be vacuous"
        );
    }

    #[test]
    fn train_reads_params_back_in_the_same_order() {
        // Steps far below f32 resolution leave every value unchanged, so any reordering between
        // the flat vector and the candle tensors would show.
        let (layout, data) = tiny();
        let init = layout.init(4);
        let spec = TrainSpec {
            learning_rate: 1e-30,
            ..sgd(2)
        };
        let out = train(&layout, &init, &data, &spec, 0).unwrap();
        assert_eq!(out.params, init);
        assert_eq!(out.steps, 2);
        assert!(out.mean_loss > 0.0);
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let (layout, data) = tiny();
        let p = layout.init(1);
        let err = train(&layout, &p[1..], &data, &sgd(1), 0).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::ParamCount {
                    expected: 26,
                    found: 25,
                    ..
                }
            ),
            "{err}"
        );
        let other = Layout::new(vec![4, 4, 2]).unwrap();
        let err = train(&other, &other.init(1), &data, &sgd(1), 0).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::Features {
                    expected: 4,
                    found: 3
                }
            ),
            "{err}"
        );
        let mut bad = data.clone();
        bad.y[5] = 2;
        let err = evaluate(&layout, &p, &bad).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::Label {
                    row: 5,
                    label: 2,
                    outputs: 2
                }
            ),
            "{err}"
        );
        let mut nan = p.clone();
        nan[20] = f32::NAN;
        let err = train(&layout, &nan, &data, &sgd(1), 0).unwrap_err();
        let tensor = match &err {
            TrainError::NonFiniteParam {
                index: 20, tensor, ..
            } => tensor.as_str(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(tensor, "linear1.weight");
        let err = train(
            &layout,
            &p,
            &data,
            &TrainSpec {
                batch_size: 0,
                ..sgd(1)
            },
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("spec.train.batch_size"), "{err}");
        let err = train(
            &layout,
            &p,
            &data,
            &TrainSpec {
                learning_rate: f64::NAN,
                ..sgd(1)
            },
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.train.learning_rate"),
            "{err}"
        );
        let mut short = data.clone();
        short.x.pop();
        assert!(matches!(
            evaluate(&layout, &p, &short),
            Err(TrainError::Shape { .. })
        ));
        let empty = Dataset {
            features: 3,
            classes: 2,
            x: vec![],
            y: vec![],
        };
        assert!(matches!(
            evaluate(&layout, &p, &empty),
            Err(TrainError::Empty(_))
        ));
        let broken = Layout { layers: vec![3] };
        assert!(matches!(
            evaluate(&broken, &p, &data),
            Err(TrainError::Layout(_))
        ));
    }

    #[test]
    fn divergence_is_an_error_not_nan_params() {
        let (_, mut data) = tiny();
        let layout = Layout::new(vec![3, 2]).unwrap();
        data.x.iter_mut().for_each(|v| *v *= 1e15);
        let spec = TrainSpec {
            learning_rate: 1e30,
            epochs: 3,
            ..sgd(1)
        };
        let err = train(&layout, &layout.init(1), &data, &spec, 0).unwrap_err();
        assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
        assert!(
            err.to_string().contains("lower spec.train.learning_rate"),
            "{err}"
        );
    }

    #[test]
    fn untrained_model_is_near_chance() {
        let d = member0();
        let e = evaluate(&mnist_layout(), &mnist_layout().init(1), &d.test).unwrap();
        eprintln!("untrained: accuracy {:.4}, loss {:.4}", e.accuracy, e.loss);
        assert_eq!(e.samples, 1000);
        assert!(e.accuracy < 0.25, "{e:?}");
        assert!((e.loss - 10f32.ln()).abs() < 0.3, "{e:?}");
    }

    #[test]
    fn sgd_learns_mnist() {
        let d = member0();
        assert_eq!(d.train.len(), 1000);
        let layout = mnist_layout();
        let init = layout.init(1);
        let start = Instant::now();
        let out = train(&layout, &init, &d.train, &sgd(3), 1).unwrap();
        let elapsed = start.elapsed();
        let e = evaluate(&layout, &out.params, &d.test).unwrap();
        eprintln!(
            "sgd lr 0.1, 3 epochs, 1000 rows: test accuracy {:.4}, loss {:.4}, \
             last-epoch train loss {:.4}, {} steps, {elapsed:?}",
            e.accuracy, e.loss, out.mean_loss, out.steps
        );
        assert_eq!(out.steps, 3 * 32);
        assert!(e.accuracy >= 0.80, "{e:?}");
        assert!(
            out.mean_loss < 1.0,
            "last-epoch training loss {}",
            out.mean_loss
        );
    }

    #[test]
    fn adam_learns_mnist() {
        let d = member0();
        let layout = mnist_layout();
        let spec = TrainSpec {
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            epochs: 3,
            batch_size: 32,
        };
        let out = train(&layout, &layout.init(1), &d.train, &spec, 1).unwrap();
        let e = evaluate(&layout, &out.params, &d.test).unwrap();
        eprintln!(
            "adam lr 1e-3, 3 epochs, 1000 rows: test accuracy {:.4}, loss {:.4}",
            e.accuracy, e.loss
        );
        assert!(e.accuracy >= 0.80, "{e:?}");
    }

    #[test]
    fn time_one_round() {
        let d = member0();
        let layout = mnist_layout();
        let init = layout.init(1);
        train(&layout, &init, &d.train, &sgd(2), 0).unwrap();
        let start = Instant::now();
        let runs = 3;
        for seed in 0..runs {
            train(&layout, &init, &d.train, &sgd(2), seed).unwrap();
        }
        let per_call = start.elapsed() / runs as u32;
        let start = Instant::now();
        evaluate(&layout, &init, &d.test).unwrap();
        let eval = start.elapsed();
        eprintln!(
            "train 1000 rows x 2 epochs on 784-128-10: {per_call:?} per call; \
             evaluate 1000 rows: {eval:?}"
        );
    }
}
