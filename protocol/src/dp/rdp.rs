//! Rényi differential privacy of the Gaussian mechanism, with and without Poisson subsampling.
//!
//! A mechanism is (α, ε(α))-RDP if the Rényi divergence of order α between its output
//! distributions on any two neighbouring data sets is at most ε(α) (Mironov, "Rényi Differential
//! Privacy", CSF 2017). RDP composes by addition at each order, which is what makes it the
//! accountant's currency; [`super::Conversion`] turns the total into (ε, δ).

use super::special::{ln_erfc, log_add, log_sub, LN_HALF};

/// Integer orders up to this use the exact finite binomial sum, whose cost is α + 1 terms.
const MAX_INTEGER_ORDER: f64 = 1_048_576.0;

/// Terms of the fractional-order series before giving up. The series' tails decay only
/// polynomially when q is near ½ and α near 1 (about 2·10⁴ terms at q = ½, α = 1.1); an order that
/// has not converged by then is reported as +∞ and so never chosen — conservative, never wrong.
const MAX_FRACTIONAL_TERMS: usize = 200_000;

/// The fractional series stops once its terms are decreasing and below e⁻³⁰ ≈ 10⁻¹³ of the
/// running sum (as `dp_accounting` does). Past i > α the terms alternate in sign, so the tail is
/// about one term: A_α is good to ~10⁻¹³·A_α, i.e. ε(α) to ~10⁻¹³/(α − 1) per step.
const STOP_BELOW: f64 = 30.0;

/// If the signed fractional-order sum cancels more than this many nats (its positive part is
/// e¹⁰ times the result), the subtraction has lost too many digits to trust; the sum of absolute
/// values, an upper bound, is used instead.
const MAX_CANCELLATION: f64 = 10.0;

/// RDP ε(α) of the Gaussian mechanism with noise multiplier σ (noise standard deviation divided
/// by the L2 sensitivity), without subsampling: α / (2σ²).
pub fn gaussian(sigma: f64, order: f64) -> f64 {
    subsampled_gaussian(1.0, sigma, order)
}

/// RDP ε(α) of the Poisson-subsampled Gaussian mechanism: every record joins a step's batch
/// independently with probability `q`, and the batch's sum of clipped contributions (L2
/// sensitivity 1) gets N(0, σ²) noise, σ = `sigma`. Neighbouring data sets differ by adding or
/// removing one record.
///
/// For q = 1 this is the closed form α/(2σ²). For 0 < q < 1 it is ln(A_α)/(α − 1) with
/// A_α = E_{z∼N(0,σ²)}[(1 − q + q·e^((2z−1)/(2σ²)))^α], computed as in Mironov, Talwar & Zhang,
/// "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (2019, arXiv:1908.10530):
/// for integer α the finite binomial sum (their Sec. 3.2), for fractional α the two convergent
/// binomial series split at z₀ = σ²·ln(1/q − 1) + ½ (Sec. 3.3), all in log space with erfc in log
/// form, so neither σ = 0.1 nor α = 512 overflows. This is the computation behind TensorFlow
/// Privacy's and Opacus's `compute_rdp`.
///
/// The fractional series keeps the signs of the generalized binomial coefficients, so it is the
/// exact value (Opacus and TensorFlow Privacy before 2022 do the same); Google's `dp_accounting`
/// now sums their absolute values, an upper bound a little above it at orders below ~3. Should
/// the signed sum ever cancel catastrophically, this falls back to that upper bound.
///
/// # Domain
/// Returns 0 for q = 0 and +∞ for σ = 0 (or so small that 2σ² underflows) or α = +∞. Out-of-domain inputs — q outside [0, 1],
/// σ < 0, α ≤ 1 or any NaN — give NaN; [`super::Accountant`] validates before calling this.
pub fn subsampled_gaussian(q: f64, sigma: f64, order: f64) -> f64 {
    if !(0.0..=1.0).contains(&q) || sigma.is_nan() || sigma < 0.0 || order.is_nan() || order <= 1.0
    {
        return f64::NAN;
    }
    if q == 0.0 || sigma == f64::INFINITY {
        return 0.0;
    }
    // σ so small that 2σ² underflows (σ below ~10⁻¹⁵⁴) is no noise at all in f64: the same
    // answer as σ = 0, at once. (Found by the `log_entry` fuzz target: such a σ in a log
    // record made the fractional series run to its term cap at every order, minutes per member,
    // only to answer +∞.)
    if !(2.0 * sigma * sigma).is_normal() || order == f64::INFINITY {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return order / (2.0 * sigma * sigma);
    }
    let ln_a = if order.fract() == 0.0 && order <= MAX_INTEGER_ORDER {
        ln_a_integer(q, sigma, order as u64)
    } else {
        ln_a_fractional(q, sigma, order)
    };
    if ln_a.is_nan() {
        // Only reachable through overflow at absurd σ (σ² = ∞); claim nothing rather than 0.
        return f64::INFINITY;
    }
    // A_α ≥ 1 by Jensen; rounding can leave ln A a hair below 0 when q is tiny.
    ln_a.max(0.0) / (order - 1.0)
}

/// ln A_α for integer α: ln Σₖ C(α,k) (1−q)^(α−k) qᵏ e^((k²−k)/(2σ²)).
fn ln_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let n = alpha as f64;
    let mut ln_binom = 0.0; // ln C(α, 0)
    let mut sum = f64::NEG_INFINITY;
    for k in 0..=alpha {
        let k = k as f64;
        if k > 0.0 {
            ln_binom += ((n - k + 1.0) / k).ln();
        }
        let term = ln_binom + k * ln_q + (n - k) * ln_1mq + (k * k - k) / two_var;
        sum = log_add(sum, term);
    }
    sum
}

/// ln A_α for fractional α: A_α = Σᵢ C(α,i) (S0ᵢ + S1ᵢ), where S0 integrates over z ≤ z₀ and
/// S1 over z ≥ z₀ (Mironov, Talwar & Zhang 2019, Sec. 3.3):
///   S0ᵢ = qⁱ (1−q)^(α−i) e^((i²−i)/(2σ²)) · ½ erfc((i − z₀)/(√2 σ)),
///   S1ᵢ = q^(α−i) (1−q)ⁱ e^((j²−j)/(2σ²)) · ½ erfc((z₀ − j)/(√2 σ)),   j = α − i.
/// Positive and negative terms are summed apart and subtracted once at the end.
fn ln_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let ln_q = q.ln();
    let ln_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let z0 = sigma * sigma * (ln_1mq - ln_q) + 0.5;

    let (mut pos, mut neg) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut ln_coef = 0.0; // ln |C(α, 0)|
    let mut positive = true;
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRACTIONAL_TERMS {
        let fi = i as f64;
        if i > 0 {
            // C(α, i) = C(α, i−1) · (α − i + 1) / i
            let ratio = (alpha - fi + 1.0) / fi;
            if ratio == 0.0 {
                // α was an integer after all: every later coefficient is zero.
                return signed_total(pos, neg);
            }
            ln_coef += ratio.abs().ln();
            if ratio < 0.0 {
                positive = !positive;
            }
        }
        let j = alpha - fi;
        let s0 = ln_coef
            + fi * ln_q
            + j * ln_1mq
            + (fi * fi - fi) / two_var
            + LN_HALF
            + ln_erfc((fi - z0) / sqrt2_sigma);
        let s1 = ln_coef
            + j * ln_q
            + fi * ln_1mq
            + (j * j - j) / two_var
            + LN_HALF
            + ln_erfc((z0 - j) / sqrt2_sigma);
        let term = log_add(s0, s1);
        if positive {
            pos = log_add(pos, term);
        } else {
            neg = log_add(neg, term);
        }
        if s0 < last0 && s1 < last1 && s0.max(s1) < pos - STOP_BELOW {
            return signed_total(pos, neg);
        }
        last0 = s0;
        last1 = s1;
    }
    f64::INFINITY // did not converge; see MAX_FRACTIONAL_TERMS
}

/// ln(P − N) from ln P and ln N, or ln(P + N) if the difference is not trustworthy.
fn signed_total(pos: f64, neg: f64) -> f64 {
    let exact = log_sub(pos, neg);
    if exact.is_nan() || exact < pos - MAX_CANCELLATION {
        log_add(pos, neg)
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(got: f64, want: f64) -> f64 {
        ((got - want) / want).abs()
    }

    #[test]
    fn full_batch_is_the_gaussian_closed_form() {
        // TF-Privacy rdp_accountant_test.py, test_compute_rdp_no_sampling:
        // compute_rdp(q=1, noise_multiplier=10, steps=1, orders=20) == 0.1.
        assert_eq!(subsampled_gaussian(1.0, 10.0, 20.0), 0.1);
        assert_eq!(gaussian(2.0, 3.5), 3.5 / 8.0);
    }

    #[test]
    fn degenerate_and_invalid_inputs() {
        assert_eq!(subsampled_gaussian(0.0, 1.0, 2.0), 0.0);
        assert_eq!(subsampled_gaussian(0.1, 0.0, 2.0), f64::INFINITY);
        // Regression (fuzz target `log_entry`): a σ whose square underflows is no noise, and
        // the answer comes at once instead of after the fractional series' term cap.
        let started = std::time::Instant::now();
        for order in [1.1, 2.0, 2.5, 64.0] {
            assert_eq!(subsampled_gaussian(3.05e-5, 2.6e-299, order), f64::INFINITY);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(subsampled_gaussian(3.05e-5, 1e-100, 2.5).is_finite());
        assert_eq!(subsampled_gaussian(0.1, 1.0, f64::INFINITY), f64::INFINITY);
        assert!(subsampled_gaussian(1.5, 1.0, 2.0).is_nan());
        assert!(subsampled_gaussian(0.1, -1.0, 2.0).is_nan());
        assert!(subsampled_gaussian(0.1, 1.0, 1.0).is_nan());
        assert!(subsampled_gaussian(f64::NAN, 1.0, 2.0).is_nan());
        // Overflowing intermediates never leak a NaN into a ledger.
        for (q, sigma, order) in [(0.5, 1e200, 1.5), (0.5, 1e200, 3.0), (1e-300, 1e-3, 2.5)] {
            assert!(
                !subsampled_gaussian(q, sigma, order).is_nan(),
                "q={q} σ={sigma} α={order}"
            );
        }
    }

    /// Published RDP values of the sampled Gaussian mechanism, q = 0.01, σ = 2.5, 50 steps.
    #[test]
    fn matches_published_rdp_curve() {
        let orders = [1.5, 2.5, 5.0, 50.0, 100.0];
        let got: Vec<f64> = orders
            .iter()
            .map(|&a| 50.0 * subsampled_gaussian(0.01, 2.5, a))
            .collect();
        // TensorFlow Privacy, tensorflow_privacy/privacy/analysis/rdp_accountant_test.py,
        // test_compute_rdp_sequence: compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100]) ≈
        // [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307] (asserted to ±1e-5 there).
        let tf = [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307];
        for (g, w) in got.iter().zip(tf) {
            assert!(rel(*g, w) < 1e-3, "{g} vs {w}");
        }
        // google/differential-privacy, dp_accounting/rdp/rdp_privacy_accountant_test.py,
        // test_compute_rdp_poisson_sampled_gaussian (rtol 1e-4 there): at the integer orders
        // 2.18075656e-03, 2.38460375e-02, 1.67416308e+02. At 1.5 and 2.5 it gives 6.70579741e-04
        // and 1.08548710e-03: dp_accounting sums |C(α,i)| in the fractional series, an upper
        // bound on the exact (signed) value computed here (6.5007e-4, 1.08542e-3).
        for (g, w) in got[2..]
            .iter()
            .zip([2.180_756_56e-3, 2.384_603_75e-2, 1.674_163_08e2])
        {
            assert!(rel(*g, w) < 1e-6, "{g} vs {w}");
        }
        assert!(got[0] <= 6.705_797_41e-4 && rel(got[0], 6.705_797_41e-4) < 0.035);
        assert!(got[1] <= 1.085_487_10e-3 && rel(got[1], 1.085_487_10e-3) < 1e-4);
    }

    #[test]
    fn matches_published_scalar() {
        // TF-Privacy rdp_accountant_test.py, test_compute_rdp_scalar:
        // compute_rdp(q=0.1, noise_multiplier=2, steps=10, orders=5) ≈ 0.07737 (5 places).
        let got = 10.0 * subsampled_gaussian(0.1, 2.0, 5.0);
        assert!((got - 0.07737).abs() < 5e-6, "{got}");
    }

    /// ln A_α by brute force: the trapezoid rule on the defining integral, in log space. The
    /// integrand is smooth and decays like a Gaussian, so with a step of σ/16 the rule is accurate
    /// to far below the tolerance — an independent check of both series.
    fn ln_a_by_quadrature(q: f64, sigma: f64, alpha: f64) -> f64 {
        let (ln_q, ln_1mq) = (q.ln(), (-q).ln_1p());
        let two_var = 2.0 * sigma * sigma;
        let h = sigma / 16.0;
        let (lo, hi) = (-40.0 * sigma - 2.0, alpha + 40.0 * sigma + 2.0);
        let ln_norm = -(sigma * (2.0 * std::f64::consts::PI).sqrt()).ln();
        let mut sum = f64::NEG_INFINITY;
        let mut z = lo;
        while z <= hi {
            let mix = log_add(ln_1mq, ln_q + (2.0 * z - 1.0) / two_var);
            sum = log_add(sum, ln_norm - z * z / two_var + alpha * mix);
            z += h;
        }
        sum + h.ln()
    }

    /// The (q, σ, α) cases of TF-Privacy's test_compute_log_a_equals_mp (rdp_accountant_test.py),
    /// which compares ln A_α against mpmath quadrature with rtol 1e-4; here the quadrature is ours.
    #[test]
    fn ln_a_matches_numerical_integration() {
        let cases: [(f64, f64, f64); 13] = [
            (1e-7, 0.1, 1.01),
            (1e-6, 0.1, 256.0),
            (1e-5, 0.1, 256.1),
            (1e-6, 1.0, 27.0),
            (1e-4, 1.0, 1.5),
            (1e-3, 1.0, 2.0),
            (0.01, 10.0, 20.0),
            (0.1, 100.0, 20.5),
            (0.99, 0.1, 256.0),
            (0.999, 100.0, 256.1),
            // and the regime of DP-SGD
            (0.004, 1.1, 1.1),
            (0.004, 1.1, 8.3),
            (0.5, 1.0, 1.1),
        ];
        for (q, sigma, alpha) in cases {
            let got = if alpha.fract() == 0.0 {
                ln_a_integer(q, sigma, alpha as u64)
            } else {
                ln_a_fractional(q, sigma, alpha)
            };
            let want = ln_a_by_quadrature(q, sigma, alpha);
            assert!(
                (got - want).abs() <= 1e-8 + 1e-4 * want.abs(),
                "q={q} σ={sigma} α={alpha}: {got} vs quadrature {want}"
            );
        }
    }

    /// ln Γ by the Lanczos approximation (g = 7, n = 9; ~15 digits), for the check below.
    fn ln_gamma(x: f64) -> f64 {
        const G: f64 = 7.0;
        const C: [f64; 9] = [
            0.999_999_999_999_809_9,
            676.520_368_121_885_1,
            -1_259.139_216_722_402_8,
            771.323_428_777_653_1,
            -176.615_029_162_140_6,
            12.507_343_278_686_905,
            -0.138_571_095_265_720_12,
            9.984_369_578_019_572e-6,
            1.505_632_735_149_311_6e-7,
        ];
        let x = x - 1.0;
        let mut a = C[0];
        let t = x + G + 0.5;
        for (i, c) in C.iter().enumerate().skip(1) {
            a += c / (x + i as f64);
        }
        0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
    }

    // The reference digits are quoted as computed, beyond what an f64 holds.
    #[allow(clippy::excessive_precision)]
    #[test]
    fn lanczos_matches_reference_values() {
        // mpmath.loggamma at 40 digits.
        for (x, want) in [
            (0.5, 0.572_364_942_924_700_087),
            (3.7, 1.428_072_326_665_387_922),
            (10.0, 12.801_827_480_081_469_61),
            (100.0, 359.134_205_369_575_398_8),
        ] {
            assert!(rel(ln_gamma(x), want) < 1e-13, "lnΓ({x})");
        }
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
    }

    /// The integer-order sum of Mironov, Talwar & Zhang (2019), A_α = Σ_{k=0}^{α} C(α,k)
    /// (1−q)^(α−k) q^k exp((k²−k)/(2σ²)), recomputed independently: binomials from ln Γ and a
    /// max-shifted sum instead of the running recurrence and log_add.
    #[test]
    fn integer_orders_match_an_independent_binomial_sum() {
        for (q, sigma) in [(0.01f64, 1.1), (0.004, 0.7), (0.3, 4.0), (1e-5, 0.2)] {
            for alpha in [2u64, 3, 7, 16, 63, 256] {
                let n = alpha as f64;
                let terms: Vec<f64> = (0..=alpha)
                    .map(|k| {
                        let k = k as f64;
                        ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
                            + (n - k) * (1.0 - q).ln()
                            + k * q.ln()
                            + (k * k - k) / (2.0 * sigma * sigma)
                    })
                    .collect();
                let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let want = m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln();
                let got = ln_a_integer(q, sigma, alpha);
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1e-3),
                    "q={q} σ={sigma} α={alpha}: {got} vs {want}"
                );
            }
        }
    }

    /// The fractional series, run at an integer order, must reproduce the finite sum: the two
    /// code paths agree where both apply, and the RDP curve has no jump next to integers.
    #[test]
    fn fractional_and_integer_paths_agree() {
        for (q, sigma) in [(0.01, 1.1), (0.004, 0.7), (0.3, 4.0), (0.9, 2.0)] {
            for alpha in [2u64, 3, 5, 12, 40] {
                let int = ln_a_integer(q, sigma, alpha);
                let frac = ln_a_fractional(q, sigma, alpha as f64);
                assert!(
                    (int - frac).abs() <= 1e-10 * int.abs().max(1e-6),
                    "q={q} σ={sigma} α={alpha}: {int} vs {frac}"
                );
                let a = alpha as f64;
                let at = subsampled_gaussian(q, sigma, a);
                let near = subsampled_gaussian(q, sigma, a + 1e-7);
                assert!(rel(near, at) < 1e-5, "jump at α={alpha}: {at} vs {near}");
            }
        }
    }

    #[test]
    fn monotone_in_every_argument() {
        let orders = [1.1, 1.5, 2.0, 3.3, 8.0, 20.0, 63.0];
        for w in orders.windows(2) {
            assert!(subsampled_gaussian(0.01, 1.0, w[0]) < subsampled_gaussian(0.01, 1.0, w[1]));
        }
        for (lo, hi) in [(0.5, 0.8), (0.8, 1.1), (1.1, 3.0), (3.0, 30.0)] {
            assert!(subsampled_gaussian(0.01, lo, 4.5) > subsampled_gaussian(0.01, hi, 4.5));
        }
        for (lo, hi) in [
            (1e-4, 1e-3),
            (1e-3, 0.01),
            (0.01, 0.5),
            (0.5, 0.99),
            (0.99, 1.0),
        ] {
            assert!(subsampled_gaussian(lo, 1.0, 4.5) < subsampled_gaussian(hi, 1.0, 4.5));
        }
    }
}
