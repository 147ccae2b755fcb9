//! The model as the protocol sees it: a multilayer perceptron described by its layer widths, stored
//! as one flat `Vec<f32>` in a fixed order (for each layer: weight `[out, in]` row-major, then bias
//! `[out]`).

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::Hash;

/// Layer widths, input first: `[784, 128, 10]` is 784 inputs, one hidden layer of 128 and 10
/// outputs. Hidden layers use ReLU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub layers: Vec<usize>,
}

/// One named tensor of the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layout that cannot describe a model.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("a model needs at least an input and an output layer, found {0} layer(s)")]
    TooFewLayers(usize),
    #[error("layer {0} has width 0")]
    ZeroWidth(usize),
    #[error("the model has {0} parameters, more than the limit of 16,000,000")]
    TooLarge(usize),
}

impl Layout {
    pub fn new(layers: Vec<usize>) -> Result<Self, LayoutError> {
        let layout = Layout { layers };
        layout.validate()?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.layers.len() < 2 {
            return Err(LayoutError::TooFewLayers(self.layers.len()));
        }
        if let Some(i) = self.layers.iter().position(|w| *w == 0) {
            return Err(LayoutError::ZeroWidth(i));
        }
        let n = self.param_count();
        if n > 16_000_000 {
            return Err(LayoutError::TooLarge(n));
        }
        Ok(())
    }

    pub fn inputs(&self) -> usize {
        self.layers[0]
    }

    pub fn outputs(&self) -> usize {
        *self.layers.last().expect("validated")
    }

    /// The tensors in flat order.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        let mut offset = 0;
        for (i, w) in self.layers.windows(2).enumerate() {
            let (input, output) = (w[0], w[1]);
            out.push(Tensor {
                name: format!("linear{i}.weight"),
                shape: vec![output, input],
                offset,
            });
            offset += output * input;
            out.push(Tensor {
                name: format!("linear{i}.bias"),
                shape: vec![output],
                offset,
            });
            offset += output;
        }
        out
    }

    pub fn param_count(&self) -> usize {
        self.layers.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    /// Seeded initialisation, uniform in ±1/√fan_in for weights and biases (the usual default for
    /// linear layers). Same seed, same model, on every member.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.param_count());
        for w in self.layers.windows(2) {
            let bound = 1.0 / (w[0] as f32).sqrt();
            for _ in 0..(w[0] * w[1] + w[1]) {
                out.push(rng.gen_range(-bound..bound));
            }
        }
        out
    }

    /// The model hash: blake3 over the layout and the little-endian bytes of every parameter.
    pub fn hash(&self, params: &[f32]) -> Hash {
        let mut h = crate::crypto::hash::Hasher::new("fedmesh model v1");
        h.update(&(self.layers.len() as u64).to_le_bytes());
        for w in &self.layers {
            h.update(&(*w as u64).to_le_bytes());
        }
        h.update(&(params.len() as u64).to_le_bytes());
        let mut buf = Vec::with_capacity(4096);
        for chunk in params.chunks(1024) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            h.update(&buf);
        }
        h.finalize()
    }
}

/// `base + delta`, element by element.
pub fn apply(base: &[f32], delta: &[f32]) -> Vec<f32> {
    base.iter().zip(delta).map(|(b, d)| b + d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mlp_layout() {
        let l = Layout::new(vec![784, 128, 10]).unwrap();
        assert_eq!(l.param_count(), 784 * 128 + 128 + 128 * 10 + 10);
        let t = l.tensors();
        assert_eq!(t.len(), 4);
        assert_eq!(t[2].offset, 784 * 128 + 128);
        assert_eq!(t.iter().map(Tensor::len).sum::<usize>(), l.param_count());
    }

    #[test]
    fn init_is_seeded_and_hash_sees_every_value() {
        let l = Layout::new(vec![4, 3, 2]).unwrap();
        let a = l.init(1);
        assert_eq!(a, l.init(1));
        assert_ne!(a, l.init(2));
        let mut b = a.clone();
        let last = b.len() - 1;
        b[last] += 1e-6;
        assert_ne!(l.hash(&a), l.hash(&b));
        assert_ne!(l.hash(&a), Layout::new(vec![4, 3, 2, 1]).unwrap().hash(&a));
    }

    #[test]
    fn rejects_bad_layouts() {
        assert_eq!(Layout::new(vec![5]), Err(LayoutError::TooFewLayers(1)));
        assert_eq!(Layout::new(vec![5, 0, 2]), Err(LayoutError::ZeroWidth(1)));
    }
}
