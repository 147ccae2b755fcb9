//! A validation signal on public reference rows: FLTrust's "root data set", made peer to peer.
//!
//! Genesis fixes `spec.robust.reference_rows` public rows that every member holds (the node takes
//! them out of the training pool before the partition, see `fedmesh_node::train::load`). A group
//! mean is then judged by what it does to the model on those rows: [`effects`] gives, for every
//! group mean u, `loss(model + u) − loss(model)`, where the loss is the mean multi-class hinge
//! loss `max(0, 1 + max_{j≠y} z_j − z_y)` of the model's logits z. A group holding a label flipper
//! lowers the loss less (or raises it) than a clean group does.
//!
//! The coordinator proposes the judgement and every member checks it, so the value must be
//! bit-identical on every member. It is: the forward pass is our own, in f64, with every sum taken
//! in one fixed order (inputs in index order, rows in order), with only `+`, `×`, `max` and
//! comparisons — no libm transcendentals (no exp or log: that is why the loss is a hinge, not
//! cross-entropy), no threads, no SIMD reassociation (Rust never contracts `a * b + c` into an
//! FMA unless asked). The model plus a group mean is formed in f32, element by element, exactly as
//! the model update is applied. IEEE 754 makes each of these operations exact-rounded, so every
//! platform gets the same bits.

use crate::model::Layout;

/// The public reference rows, row-major: row `i` is `x[i * features..(i + 1) * features]` with
/// class `y[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    features: usize,
    classes: usize,
    x: Vec<f32>,
    y: Vec<u32>,
}

/// Reference rows or a model that cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// `x` does not hold `features` values for each of the `rows` labels.
    #[error("reference rows: {values} feature values for {rows} rows of {features} features")]
    Shape {
        values: usize,
        rows: usize,
        features: usize,
    },
    /// A label is not one of the classes.
    #[error("reference row {row} has class {label}, not one of 0..{classes}")]
    Label {
        row: usize,
        label: u32,
        classes: usize,
    },
    /// A feature value is NaN or infinite.
    #[error("reference row {row} holds a value that is not finite")]
    NotFinite { row: usize },
    /// The rows do not fit the model's input or output layer.
    #[error(
        "reference rows of {features} features and {classes} classes do not fit a model of \
         {inputs} inputs and {outputs} outputs"
    )]
    Layout {
        features: usize,
        classes: usize,
        inputs: usize,
        outputs: usize,
    },
    /// The parameters (or an update) do not have the layout's length.
    #[error("a parameter vector of {found} values for a model of {expected}")]
    Length { found: usize, expected: usize },
}

impl Set {
    /// Reference rows from row-major features `x` and labels `y` (`0..classes`). Refuses a shape
    /// that does not add up, a label out of range, or a non-finite value.
    pub fn new(
        features: usize,
        classes: usize,
        x: Vec<f32>,
        y: Vec<u32>,
    ) -> Result<Set, ReferenceError> {
        if features == 0 || x.len() != y.len().saturating_mul(features) {
            return Err(ReferenceError::Shape {
                values: x.len(),
                rows: y.len(),
                features,
            });
        }
        if let Some((row, &label)) = y.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(ReferenceError::Label {
                row,
                label,
                classes,
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(ReferenceError::NotFinite { row: i / features });
        }
        Ok(Set {
            features,
            classes,
            x,
            y,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True if there are no rows (the signal is off).
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    fn check(&self, layout: &Layout, params: usize) -> Result<(), ReferenceError> {
        if self.features != layout.inputs() || self.classes != layout.outputs() {
            return Err(ReferenceError::Layout {
                features: self.features,
                classes: self.classes,
                inputs: layout.inputs(),
                outputs: layout.outputs(),
            });
        }
        let expected = layout.param_count();
        if params != expected {
            return Err(ReferenceError::Length {
                found: params,
                expected,
            });
        }
        Ok(())
    }
}

/// The mean multi-class hinge loss of `params` (flat, in [`Layout::tensors`] order) on the
/// reference rows: for each row, `max(0, 1 + max_{j≠y} z_j − z_y)` of the logits z. 0 for an
/// empty set. Bit-identical on every platform (see the module docs).
pub fn loss(layout: &Layout, params: &[f32], set: &Set) -> Result<f64, ReferenceError> {
    set.check(layout, params.len())?;
    if set.is_empty() {
        return Ok(0.0);
    }
    let widest = layout.layers.iter().copied().max().unwrap_or(0);
    let mut a = vec![0.0f64; widest];
    let mut z = vec![0.0f64; widest];
    let mut total = 0.0f64;
    for (row, &label) in set.y.iter().enumerate() {
        let input = &set.x[row * set.features..(row + 1) * set.features];
        for (slot, &v) in a.iter_mut().zip(input) {
            *slot = f64::from(v);
        }
        let mut offset = 0;
        let last = layout.layers.len() - 2;
        for (l, w) in layout.layers.windows(2).enumerate() {
            let (inputs, outputs) = (w[0], w[1]);
            let weight = &params[offset..offset + inputs * outputs];
            let bias = &params[offset + inputs * outputs..offset + inputs * outputs + outputs];
            offset += inputs * outputs + outputs;
            for o in 0..outputs {
                let mut s = f64::from(bias[o]);
                for (wv, av) in weight[o * inputs..(o + 1) * inputs]
                    .iter()
                    .zip(&a[..inputs])
                {
                    s += f64::from(*wv) * av;
                }
                z[o] = if l < last { s.max(0.0) } else { s };
            }
            a[..outputs].copy_from_slice(&z[..outputs]);
        }
        let classes = layout.outputs();
        let truth = a[label as usize];
        let rival = (0..classes)
            .filter(|&j| j != label as usize)
            .map(|j| a[j])
            .fold(f64::NEG_INFINITY, f64::max);
        // One class: nothing to confuse it with, no loss.
        if rival.is_finite() {
            total += (1.0 + rival - truth).max(0.0);
        }
    }
    Ok(total / set.len() as f64)
}

/// For every group mean (an update, as the aggregation would apply it): the change of the
/// reference loss it causes, `loss(model + mean) − loss(model)`. Negative is an improvement. The
/// sum `model + mean` is taken in f32, as the model update is applied.
pub fn effects(
    layout: &Layout,
    model: &[f32],
    means: &[&[f32]],
    set: &Set,
) -> Result<Vec<f64>, ReferenceError> {
    let before = loss(layout, model, set)?;
    means
        .iter()
        .map(|mean| {
            if mean.len() != model.len() {
                return Err(ReferenceError::Length {
                    found: mean.len(),
                    expected: model.len(),
                });
            }
            let moved: Vec<f32> = model.iter().zip(mean.iter()).map(|(m, u)| m + u).collect();
            Ok(loss(layout, &moved, set)? - before)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(layers: &[usize]) -> Layout {
        Layout::new(layers.to_vec()).unwrap()
    }

    /// Two rows of two features, classes 0 and 1.
    fn rows() -> Set {
        Set::new(2, 2, vec![2.0, 0.0, 0.0, 0.5], vec![0, 0]).unwrap()
    }

    #[test]
    fn hinge_loss_is_the_hand_computed_value() {
        // Identity weights, zero bias: logits (2, 0) → loss 0; (0, 0.5) → 1 + 0.5 − 0 = 1.5.
        let params = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(loss(&layout(&[2, 2]), &params, &rows()).unwrap(), 0.75);
        // A hidden ReLU layer: hidden = relu(W1 x + b1) with W1 = [[1, 0], [-1, 0]], b1 = 0;
        // logits = identity(hidden) + (0, 1). Row (2, 0): hidden (2, 0), z (2, 1) → 0;
        // row (0, 0.5): hidden (0, 0), z (0, 1) → 2. Mean 1.
        let deep = [1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        assert_eq!(loss(&layout(&[2, 2, 2]), &deep, &rows()).unwrap(), 1.0);
    }

    #[test]
    fn effects_are_bit_identical_and_pinned() {
        // A seeded model and update of the default layout's shape on pseudo-random rows.
        let l = layout(&[16, 8, 4]);
        let model = l.init(7);
        let update: Vec<f32> = l.init(8).iter().map(|v| v * 0.1).collect();
        let x: Vec<f32> = (0..16 * 50)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let y: Vec<u32> = (0..50).map(|i| (i * 7 % 4) as u32).collect();
        let set = Set::new(16, 4, x, y).unwrap();
        let a = effects(&l, &model, &[&update], &set).unwrap();
        let b = effects(&l, &model.clone(), &[&update.clone()], &set.clone()).unwrap();
        assert_eq!(a[0].to_bits(), b[0].to_bits());
        // Pinned: a change of summation order or precision changes these bits, and members of
        // different builds would then disagree on group proposals.
        let before = loss(&l, &model, &set).unwrap();
        assert_eq!(
            before.to_bits(),
            PINNED_LOSS,
            "{before:e} = {:#x}",
            before.to_bits()
        );
        assert_eq!(
            a[0].to_bits(),
            PINNED_EFFECT,
            "{:e} = {:#x}",
            a[0],
            a[0].to_bits()
        );
    }

    const PINNED_LOSS: u64 = 0x3ff251593ece736a;
    const PINNED_EFFECT: u64 = 0x3f8a8bc31942bd80;

    #[test]
    fn bad_rows_and_shapes_are_errors() {
        assert!(matches!(
            Set::new(2, 2, vec![0.0; 3], vec![0, 1]),
            Err(ReferenceError::Shape { .. })
        ));
        assert!(matches!(
            Set::new(2, 2, vec![0.0; 4], vec![0, 2]),
            Err(ReferenceError::Label {
                row: 1,
                label: 2,
                ..
            })
        ));
        assert!(matches!(
            Set::new(2, 2, vec![0.0, 0.0, f32::NAN, 0.0], vec![0, 1]),
            Err(ReferenceError::NotFinite { row: 1 })
        ));
        let params = [0.0f32; 6];
        assert!(matches!(
            loss(&layout(&[3, 2]), &[0.0; 8], &rows()),
            Err(ReferenceError::Layout { .. })
        ));
        assert!(matches!(
            loss(&layout(&[2, 2]), &params[..5], &rows()),
            Err(ReferenceError::Length {
                found: 5,
                expected: 6
            })
        ));
        assert!(matches!(
            effects(&layout(&[2, 2]), &params, &[&params[..4]], &rows()),
            Err(ReferenceError::Length {
                found: 4,
                expected: 6
            })
        ));
    }
}
