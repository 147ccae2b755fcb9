//! Aggregation rules over flat updates.

/// Why updates cannot be aggregated.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum AggregateError {
    #[error("no updates to aggregate")]
    Empty,
    #[error("update {index} has {found} values, expected {expected}")]
    Length {
        index: usize,
        found: usize,
        expected: usize,
    },
    #[error("total sample weight is zero")]
    ZeroWeight,
}

/// FedAvg: the mean of the updates weighted by sample count, Σ nᵢ·xᵢ / Σ nᵢ.
///
/// Sums in f64 in the order given, so every member that aggregates the same updates in the same
/// order gets bit-identical output (and therefore the same model hash).
pub fn fedavg(updates: &[(&[f32], u64)]) -> Result<Vec<f32>, AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    let len = first.0.len();
    let mut acc = vec![0f64; len];
    let mut total = 0f64;
    for (index, (values, weight)) in updates.iter().enumerate() {
        if values.len() != len {
            return Err(AggregateError::Length {
                index,
                found: values.len(),
                expected: len,
            });
        }
        let w = *weight as f64;
        total += w;
        for (a, v) in acc.iter_mut().zip(values.iter()) {
            *a += w * f64::from(*v);
        }
    }
    if total == 0.0 {
        return Err(AggregateError::ZeroWeight);
    }
    Ok(acc.into_iter().map(|a| (a / total) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weights_by_sample_count() {
        let a = [0.0f32, 10.0];
        let b = [4.0f32, 0.0];
        assert_eq!(fedavg(&[(&a, 3), (&b, 1)]).unwrap(), vec![1.0, 7.5]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(fedavg(&[]), Err(AggregateError::Empty));
        assert!(matches!(
            fedavg(&[(&[1.0][..], 1), (&[1.0, 2.0][..], 1)]),
            Err(AggregateError::Length { .. })
        ));
        assert_eq!(fedavg(&[(&[1.0][..], 0)]), Err(AggregateError::ZeroWeight));
    }

    proptest! {
        #[test]
        fn mean_lies_within_the_inputs(xs in prop::collection::vec((-1e3f32..1e3, 1u64..100), 1..20)) {
            let ups: Vec<([f32; 1], u64)> = xs.iter().map(|(v, w)| ([*v], *w)).collect();
            let refs: Vec<(&[f32], u64)> = ups.iter().map(|(v, w)| (&v[..], *w)).collect();
            let m = fedavg(&refs).unwrap()[0];
            let lo = xs.iter().map(|x| x.0).fold(f32::INFINITY, f32::min);
            let hi = xs.iter().map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(m >= lo - 1e-3 && m <= hi + 1e-3);
        }
    }
}
