//! A validation signal on public reference rows: FLTrust's "root data set", made peer to peer.
//!
//! Genesis fixes `spec.robust.reference_rows` public rows that every member holds (the node takes
//! them out of the training pool before the partition, see `fedmesh_node::train::load`). A group
//! mean is then judged by what it does to the model on those rows: [`scores`] gives, for every
//! group mean u, `loss(model + u) − loss(model)`, where the loss is the mean multi-class hinge
//! loss `max(0, MARGIN + max_{j≠y} z_j − z_y)` of the model's logits z ([`MARGIN`] = 3), and how
//! far u moves the rows' margins `z_y − max_{j≠y} z_j` (the scale the judge measures loss changes
//! against). A group holding a label flipper lowers the loss less (or raises it) than a clean
//! group does.
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

/// Run the model over every reference row and hand `visit` each row's label and logits. The
/// order of every sum is fixed (see the module docs), so the logits are bit-identical on every
/// platform.
fn forward(
    layout: &Layout,
    params: &[f32],
    set: &Set,
    mut visit: impl FnMut(usize, &[f64]),
) -> Result<(), ReferenceError> {
    set.check(layout, params.len())?;
    let widest = layout.layers.iter().copied().max().unwrap_or(0);
    let mut a = vec![0.0f64; widest];
    let mut z = vec![0.0f64; widest];
    let classes = layout.outputs();
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
        visit(label as usize, &a[..classes]);
    }
    Ok(())
}

/// The margin of the reference loss: a row costs `max(0, MARGIN + max_{j≠y} z_j − z_y)`. With
/// the usual margin of 1 most rows cost nothing once the model has learned them, so a label
/// flipper that erodes the margins of rows the model gets right went unseen: in the label-flip
/// drill (20 members, groups of 5, seeds 1, 2 and 4) a group holding one flipper had a larger
/// loss change than a clean group of the same round in about half the pairs; with a margin of 3
/// it is far more often the worst (see [`Scores::movements`] for the measurement).
pub const MARGIN: f64 = 3.0;

/// The margin of one row, `z_y − max_{j≠y} z_j`; None with a single class (nothing to confuse
/// it with).
fn margin(label: usize, z: &[f64]) -> Option<f64> {
    let rival = z
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label)
        .map(|(_, &v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    rival.is_finite().then(|| z[label] - rival)
}

/// Every row's margin ([`margin`]; 0 for a model of one class), in row order.
fn margins(layout: &Layout, params: &[f32], set: &Set) -> Result<Vec<f64>, ReferenceError> {
    let mut out = Vec::with_capacity(set.len());
    forward(layout, params, set, |label, z| {
        out.push(margin(label, z).unwrap_or(f64::INFINITY))
    })?;
    Ok(out)
}

/// The loss of a row of margin `m`: `max(0, MARGIN − m)` (0 for a model of one class, whose
/// margin is infinite).
fn hinge(m: f64) -> f64 {
    (MARGIN - m).max(0.0)
}

/// The loss of a row of margin `m` with the usual margin of 1, `max(0, 1 − m)`.
fn narrow(m: f64) -> f64 {
    (1.0 - m).max(0.0)
}

/// The mean multi-class hinge loss of `params` (flat, in [`Layout::tensors`] order) on the
/// reference rows: for each row, `max(0, MARGIN + max_{j≠y} z_j − z_y)` of the logits z
/// ([`MARGIN`]). 0 for an empty set. Bit-identical on every platform (see the module docs).
pub fn loss(layout: &Layout, params: &[f32], set: &Set) -> Result<f64, ReferenceError> {
    let m = margins(layout, params, set)?;
    Ok(mean(m.iter().map(|&m| hinge(m)), m.len()))
}

fn mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let mut total = 0.0f64;
    for v in values {
        total += v;
    }
    total / n as f64
}

/// The logits of `params` on every reference row, in row order (for tracing and analysis).
pub fn logits(layout: &Layout, params: &[f32], set: &Set) -> Result<Vec<Vec<f64>>, ReferenceError> {
    let mut out = Vec::with_capacity(set.len());
    forward(layout, params, set, |_, z| out.push(z.to_vec()))?;
    Ok(out)
}

impl Set {
    /// The class of every row, in row order.
    pub fn labels(&self) -> &[u32] {
        &self.y
    }
}

/// What applying each group mean does to the model on the reference rows ([`scores`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The model's reference [`loss`] before any mean is applied.
    pub loss: f64,
    /// For every mean, `loss(model + mean) − loss(model)`: negative is an improvement.
    pub effects: Vec<f64>,
    /// For every mean, how far it moves the rows' margins: the mean over rows of
    /// `|margin(model + mean) − margin(model)|`. The judge measures a group's loss change
    /// against the round's typical movement, not against the loss: how far apart honest groups
    /// land on the rows grows with how far the round moves the rows, which the loss does not
    /// follow (late in training the loss is small but the margins still move). Measured on the
    /// label-flip drill (seeds 1, 2, 4, 534 clean and 89 one-flipper group means): with the
    /// bar set at the 98th percentile of clean groups, 58 % of the one-flipper groups were over
    /// it against the movement and 45 % against the loss (8 % with the old margin of 1 and the
    /// loss).
    pub movements: Vec<f64>,
    /// The loss before with the usual margin of 1, `max(0, 1 + max_{j≠y} z_j − z_y)`.
    pub narrow_loss: f64,
    /// For every mean, the change of that loss. Unlike the wide margin's, it punishes a step
    /// that overshoots: the judge takes it as the rows' word on whether an unusually large group
    /// mean does worse than the best one (`suspicion::REFERENCE_CONFIRMS`).
    pub narrow_effects: Vec<f64>,
}

/// For every group mean (an update, as the aggregation would apply it): the change of the
/// reference loss it causes and how far it moves the rows' margins ([`Scores`]). The sum
/// `model + mean` is taken in f32, as the model update is applied.
pub fn scores(
    layout: &Layout,
    model: &[f32],
    means: &[&[f32]],
    set: &Set,
) -> Result<Scores, ReferenceError> {
    let before = margins(layout, model, set)?;
    let loss = mean(before.iter().map(|&m| hinge(m)), before.len());
    let narrow_loss = mean(before.iter().map(|&m| narrow(m)), before.len());
    let mut narrow_effects = Vec::with_capacity(means.len());
    let mut effects = Vec::with_capacity(means.len());
    let mut movements = Vec::with_capacity(means.len());
    for m in means {
        if m.len() != model.len() {
            return Err(ReferenceError::Length {
                found: m.len(),
                expected: model.len(),
            });
        }
        let moved: Vec<f32> = model.iter().zip(m.iter()).map(|(a, u)| a + u).collect();
        let after = margins(layout, &moved, set)?;
        effects.push(mean(after.iter().map(|&m| hinge(m)), after.len()) - loss);
        narrow_effects.push(mean(after.iter().map(|&m| narrow(m)), after.len()) - narrow_loss);
        movements.push(mean(
            before.iter().zip(&after).map(|(&b, &a)| {
                // A model of one class has no margin to move.
                if b.is_finite() && a.is_finite() {
                    (a - b).abs()
                } else {
                    0.0
                }
            }),
            after.len(),
        ));
    }
    Ok(Scores {
        loss,
        effects,
        movements,
        narrow_loss,
        narrow_effects,
    })
}

/// For every group mean: the change of the reference loss it causes,
/// `loss(model + mean) − loss(model)` ([`scores`]). Negative is an improvement.
pub fn effects(
    layout: &Layout,
    model: &[f32],
    means: &[&[f32]],
    set: &Set,
) -> Result<Vec<f64>, ReferenceError> {
    Ok(scores(layout, model, means, set)?.effects)
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
        // Margin 3. Identity weights, zero bias: logits (2, 0) → 3 + 0 − 2 = 1; (0, 0.5) →
        // 3 + 0.5 − 0 = 3.5.
        let params = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(loss(&layout(&[2, 2]), &params, &rows()).unwrap(), 2.25);
        // A hidden ReLU layer: hidden = relu(W1 x + b1) with W1 = [[1, 0], [-1, 0]], b1 = 0;
        // logits = identity(hidden) + (0, 1). Row (2, 0): hidden (2, 0), z (2, 1) → 2;
        // row (0, 0.5): hidden (0, 0), z (0, 1) → 4. Mean 3.
        let deep = [1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        assert_eq!(loss(&layout(&[2, 2, 2]), &deep, &rows()).unwrap(), 3.0);
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
        let moved = scores(&l, &model, &[&update], &set).unwrap().movements[0];
        assert_eq!(
            moved.to_bits(),
            PINNED_MOVEMENT,
            "{moved:e} = {:#x}",
            moved.to_bits()
        );
    }

    /// Margins by hand: two rows of class 0 and a linear model of two classes. The loss change
    /// and the margins' movement are what the rows say, a mean of the wrong length is refused,
    /// and a model of one class has neither loss nor movement.
    #[test]
    fn scores_are_the_hand_computed_loss_change_and_movement() {
        let params = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        // Margins before: 2 and −0.5 (loss 2.25). The update adds 1 to class 0's bias: margins
        // 3 and 0.5, loss (0 + 2.5) / 2 = 1.25; each margin moved by 1.
        let up = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        // This one raises class 1's logit on the first row by 1 (margin 2 → 1, loss 1 → 2) and
        // leaves the second row alone: the loss rises by 0.5, the margins moved by 0.5 on
        // average.
        let mixed = [0.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        let s = scores(&layout(&[2, 2]), &params, &[&up, &mixed], &rows()).unwrap();
        assert_eq!(s.loss, 2.25);
        assert_eq!(s.effects, vec![-1.0, 0.5]);
        assert_eq!(s.movements, vec![1.0, 0.5]);
        assert!(matches!(
            scores(&layout(&[2, 2]), &params, &[&up[..5]], &rows()),
            Err(ReferenceError::Length { found: 5, .. })
        ));
        let one = Set::new(2, 1, vec![1.0, 0.0], vec![0]).unwrap();
        let s = scores(
            &layout(&[2, 1]),
            &[1.0, 0.0, 0.0],
            &[&[5.0, 1.0, 2.0]],
            &one,
        )
        .unwrap();
        assert_eq!(
            (s.loss, s.effects, s.movements),
            (0.0, vec![0.0], vec![0.0])
        );
    }

    const PINNED_LOSS: u64 = 0x400928ac9f6739b4;
    const PINNED_MOVEMENT: u64 = 0x3f92de5cb67438bd;
    const PINNED_EFFECT: u64 = 0x3f8a8bc31942be00;

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
