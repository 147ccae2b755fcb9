//! Parallel vector arithmetic over flat updates, in f64 and in a fixed order per value, so that
//! every member computes bit-identical results whatever the thread count.

use rayon::prelude::*;

/// Values per parallel work item: large enough that scheduling costs little next to the work.
pub(crate) const CHUNK: usize = 8192;

/// Dot product, summed in f64 chunk by chunk and the chunks in order (deterministic).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(u, v)| f64::from(*u) * f64::from(*v))
                .sum::<f64>()
        })
        .sum()
}

/// Squared distance ‖a − b‖², in f64.
pub(crate) fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(u, v)| {
                    let d = f64::from(*u) - f64::from(*v);
                    d * d
                })
                .sum::<f64>()
        })
        .sum()
}

/// The Gram matrix `G[i][j] = ⟨xᵢ, xⱼ⟩` of the inputs, one pair per parallel task.
pub(crate) fn gram(xs: &[&[f32]]) -> Vec<Vec<f64>> {
    let n = xs.len();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i..n).map(move |j| (i, j))).collect();
    let dots: Vec<f64> = pairs.par_iter().map(|&(i, j)| dot(xs[i], xs[j])).collect();
    let mut g = vec![vec![0.0; n]; n];
    for (&(i, j), d) in pairs.iter().zip(dots) {
        g[i][j] = d;
        g[j][i] = d;
    }
    g
}

/// Squared pairwise distances from a Gram matrix (clamped at 0 against rounding).
pub(crate) fn distances_from_gram(g: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = g.len();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        (g[i][i] + g[j][j] - 2.0 * g[i][j]).max(0.0)
                    }
                })
                .collect()
        })
        .collect()
}

/// Cosine similarity from a dot product and two squared norms; 0 if either vector is zero.
pub(crate) fn cosine(dot: f64, n2a: f64, n2b: f64) -> f64 {
    let d = (n2a * n2b).sqrt();
    if d > 0.0 {
        (dot / d).clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Σ wᵢ·xᵢ / Σ wᵢ over the inputs, value by value in parallel. `weights` must not sum to 0.
pub(crate) fn weighted_mean(xs: &[&[f32]], weights: &[f64]) -> Vec<f32> {
    let len = xs.first().map_or(0, |x| x.len());
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = c * CHUNK;
            let mut acc = vec![0f64; chunk.len()];
            for (x, w) in xs.iter().zip(weights) {
                if *w == 0.0 {
                    continue;
                }
                for (a, v) in acc.iter_mut().zip(&x[start..start + chunk.len()]) {
                    *a += w * f64::from(*v);
                }
            }
            for (o, a) in chunk.iter_mut().zip(acc) {
                *o = (a / total) as f32;
            }
        });
    out
}

/// Apply `f` to the column of input values at every coordinate (the values of all inputs at that
/// position, in input order) and collect one output per coordinate, in parallel.
pub(crate) fn per_coordinate(xs: &[&[f32]], f: impl Fn(&mut [f32]) -> f32 + Sync) -> Vec<f32> {
    let len = xs.first().map_or(0, |x| x.len());
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = c * CHUNK;
            let mut column = vec![0f32; xs.len()];
            for (k, o) in chunk.iter_mut().enumerate() {
                for (slot, x) in column.iter_mut().zip(xs) {
                    *slot = x[start + k];
                }
                *o = f(&mut column);
            }
        });
    out
}

/// Median of a slice (mean of the two middle values for an even length); reorders the slice.
pub(crate) fn median_in_place(v: &mut [f32]) -> f32 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (_, upper, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ((f64::from(lower) + f64::from(upper)) / 2.0) as f32
    }
}

/// Median of f64 values (for statistics over members; small inputs).
pub(crate) fn median_f64(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
