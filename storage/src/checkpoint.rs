//! Model checkpoints as safetensors files.
//!
//! safetensors rather than a private format so that an operator can open a node's checkpoint with
//! any standard tool (`safetensors.torch.load`, candle, …). Each tensor of
//! [`Layout::tensors`] is stored under its name and shape as little-endian F32. The model hash
//! ([`Layout::hash`]) is computed over the parameters, not over these bytes, so the file's exact
//! byte layout does not matter for identity; this crate always writes the same canonical bytes.

use fedmesh_protocol::model::Layout;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CheckpointError, StoreError};

/// Encode `params` (the flat vector of `layout`) as safetensors bytes.
///
/// # Panics
///
/// If `params.len() != layout.param_count()`: that is a bug in the caller, not bad input from
/// disk or a peer. [`crate::Store::put_checkpoint`] checks the length and returns an error
/// instead; use [`check_params`] first if the length is not known to be right.
pub fn encode_checkpoint(layout: &Layout, params: &[f32]) -> Vec<u8> {
    if let Err(e) = check_params(layout, params) {
        panic!("encode_checkpoint: {e}");
    }
    let mut data = Vec::with_capacity(params.len() * 4);
    for v in params {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let views: Vec<(String, TensorView<'_>)> = layout
        .tensors()
        .into_iter()
        .map(|t| {
            let bytes = &data[t.offset * 4..(t.offset + t.len()) * 4];
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .expect("the slice has exactly shape.product() * 4 bytes");
            (t.name, view)
        })
        .collect();
    safetensors::serialize(views, None)
        .expect("tensors cut from one contiguous buffer always serialize")
}

/// Check that `params` is a complete parameter vector of a valid `layout`.
pub fn check_params(layout: &Layout, params: &[f32]) -> Result<(), CheckpointError> {
    layout.validate().map_err(CheckpointError::Layout)?;
    let expected = layout.param_count();
    if params.len() != expected {
        return Err(CheckpointError::ParamCount {
            expected,
            found: params.len(),
        });
    }
    Ok(())
}

/// Decode safetensors bytes into the flat parameter vector of `layout`.
///
/// The file must hold exactly the tensors of the layout — same names, same shapes, dtype F32 —
/// so that a checkpoint of another model can never be mistaken for this one. Bytes from disk or
/// from a peer are untrusted: anything malformed is an error, never a panic, and nothing is
/// allocated beyond the layout's own size and the header the bytes already occupy. This does not
/// check the model hash; [`crate::Store::checkpoint`] and [`crate::Store::put_checkpoint_bytes`]
/// do.
pub fn decode_checkpoint(layout: &Layout, bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    decode(layout, bytes).map_err(StoreError::from)
}

pub(crate) fn decode(layout: &Layout, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    layout.validate().map_err(CheckpointError::Layout)?;
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let tensors = layout.tensors();

    // Report the alphabetically first stranger so the error is the same on every run.
    let mut unexpected: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|name| !tensors.iter().any(|t| t.name == *name))
        .collect();
    unexpected.sort_unstable();
    if let Some(name) = unexpected.first() {
        return Err(CheckpointError::UnexpectedTensor {
            name: name.to_string(),
        });
    }

    let mut out = vec![0f32; layout.param_count()];
    for t in &tensors {
        let view = file
            .tensor(&t.name)
            .map_err(|_| CheckpointError::MissingTensor {
                name: t.name.clone(),
            })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                name: t.name.clone(),
                found: view.dtype().to_string(),
            });
        }
        if view.shape() != t.shape.as_slice() {
            return Err(CheckpointError::WrongShape {
                name: t.name.clone(),
                expected: t.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        // safetensors already checked this; checked again so a library change cannot turn into
        // a silently short model.
        if data.len() != t.len() * 4 {
            return Err(CheckpointError::Format(format!(
                "tensor `{}` holds {} bytes, expected {}",
                t.name,
                data.len(),
                t.len() * 4
            )));
        }
        let dst = out
            .get_mut(t.offset..t.offset + t.len())
            .ok_or_else(|| CheckpointError::Format("layout tensors exceed its size".into()))?;
        for (d, c) in dst.iter_mut().zip(data.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn layout() -> Layout {
        Layout::new(vec![4, 3, 2]).unwrap()
    }

    #[test]
    fn round_trip_is_bit_exact_and_canonical() {
        let l = layout();
        let mut p = l.init(3);
        p[0] = -0.0;
        p[1] = f32::MIN_POSITIVE / 2.0; // subnormal
        let bytes = encode_checkpoint(&l, &p);
        let back = decode_checkpoint(&l, &bytes).unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            p.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(l.hash(&back), l.hash(&p));
        assert_eq!(encode_checkpoint(&l, &back), bytes);
    }

    #[test]
    fn file_is_standard_safetensors_with_layout_names_and_shapes() {
        let l = layout();
        let p = l.init(1);
        let bytes = encode_checkpoint(&l, &p);
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.len(), 4);
        let w = file.tensor("linear0.weight").unwrap();
        assert_eq!(w.shape(), &[3, 4]);
        assert_eq!(w.dtype(), Dtype::F32);
        assert_eq!(&w.data()[..4], &p[0].to_le_bytes());
        assert_eq!(file.tensor("linear1.bias").unwrap().shape(), &[2]);
    }

    #[test]
    fn rejects_other_layouts() {
        let l = layout();
        let bytes = encode_checkpoint(&l, &l.init(1));

        let wider = Layout::new(vec![4, 3, 3]).unwrap();
        match decode(&wider, &bytes) {
            Err(CheckpointError::WrongShape {
                name,
                expected,
                found,
            }) => {
                assert_eq!(name, "linear1.weight");
                assert_eq!(expected, vec![3, 3]);
                assert_eq!(found, vec![2, 3]);
            }
            other => panic!("expected WrongShape, got {other:?}"),
        }

        let shallower = Layout::new(vec![4, 3]).unwrap();
        assert_eq!(
            decode(&shallower, &bytes),
            Err(CheckpointError::UnexpectedTensor {
                name: "linear1.bias".into()
            })
        );

        let deeper = Layout::new(vec![4, 3, 2, 2]).unwrap();
        assert_eq!(
            decode(&deeper, &bytes),
            Err(CheckpointError::MissingTensor {
                name: "linear2.weight".into()
            })
        );

        let invalid = Layout { layers: vec![4] };
        assert!(matches!(
            decode(&invalid, &bytes),
            Err(CheckpointError::Layout(_))
        ));
    }

    #[test]
    fn rejects_wrong_dtype() {
        let l = Layout::new(vec![1, 1]).unwrap();
        let w = [0u8; 8];
        let b = [0u8; 8];
        let views = vec![
            (
                "linear0.weight",
                TensorView::new(Dtype::F64, vec![1, 1], &w).unwrap(),
            ),
            (
                "linear0.bias",
                TensorView::new(Dtype::F64, vec![1], &b).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
        let err = decode_checkpoint(&l, &bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Checkpoint(CheckpointError::WrongDtype { found, .. }) if found == "F64"),
            "{err}"
        );
        assert!(err.to_string().contains("F32"), "{err}");
    }

    #[test]
    fn rejects_garbage_with_a_clear_message() {
        let l = layout();
        for bytes in [
            &b""[..],
            b"\x00",
            b"not a safetensors file at all",
            &[0xff; 64],
        ] {
            let err = decode_checkpoint(&l, bytes).unwrap_err();
            assert!(
                matches!(err, StoreError::Checkpoint(CheckpointError::Format(_))),
                "{err}"
            );
            assert!(err.to_string().contains("safetensors"), "{err}");
        }
    }

    #[test]
    fn check_params_reports_counts() {
        let l = layout();
        assert_eq!(
            check_params(&l, &[0.0; 5]),
            Err(CheckpointError::ParamCount {
                expected: l.param_count(),
                found: 5
            })
        );
        assert!(check_params(&l, &l.init(0)).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let l = layout();
            if let Ok(p) = decode_checkpoint(&l, &bytes) {
                prop_assert_eq!(p.len(), l.param_count());
            }
        }

        #[test]
        fn arbitrary_header_never_panics(
            header in "\\{[ -~]{0,200}\\}",
            tail in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            // Plausible-looking files: a correct length prefix and a JSON-ish header.
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&tail);
            let l = layout();
            if let Ok(p) = decode_checkpoint(&l, &bytes) {
                prop_assert_eq!(p.len(), l.param_count());
            }
        }

        #[test]
        fn a_flipped_byte_is_rejected_or_changes_at_most_one_parameter(
            seed in any::<u64>(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let l = layout();
            let p = l.init(seed);
            let mut bytes = encode_checkpoint(&l, &p);
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            // A damaged header must not shift or reinterpret the data (it is rejected, or it was
            // padding whitespace turned into other whitespace); a damaged data byte changes
            // exactly the one parameter it belongs to.
            if let Ok(q) = decode_checkpoint(&l, &bytes) {
                prop_assert_eq!(q.len(), p.len());
                let changed = q.iter().zip(&p).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                prop_assert!(changed <= 1, "{} parameters changed", changed);
            }
        }
    }
}
