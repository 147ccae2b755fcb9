//! The running RDP total over an order grid, and its conversion to (ε, δ).

use serde::{Deserialize, Serialize};

use super::{check_delta, check_noise, check_sample_rate, rdp, DpError, DEFAULT_ORDERS, MAX_ORDER};

/// How an RDP guarantee (α, ε_α) becomes an (ε, δ) guarantee. Both are valid; pick the smaller ε
/// by using [`Conversion::Improved`], the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Conversion {
    /// ε = ε_α + ln(1/δ)/(α − 1): Mironov, "Rényi Differential Privacy" (CSF 2017), Prop. 3.
    /// What TensorFlow Privacy reported until 2020 (its MNIST tutorial's ε = 2.92, for one).
    Classic,
    /// ε = ε_α + ln(1 − 1/α) − (ln δ + ln α)/(α − 1): Balle, Barthe, Gaboardi, Hsu & Sato,
    /// "Hypothesis Testing Interpretations and Rényi Differential Privacy" (AISTATS 2020),
    /// Thm. 21; also Canonne, Kamath & Steinke (2020), Prop. 12. Below `Classic` at every
    /// order, by ln(α)/(α − 1) − ln(1 − 1/α); what Opacus' `get_privacy_spent` and
    /// `dp_accounting`'s `compute_epsilon` (TensorFlow Privacy since 2020) report. Like the
    /// latter it also gives ε = 0 when δ ≥ √(1 − e^(−ε_α)): the Bretagnolle–Huber bound on total
    /// variation by the KL divergence, itself at most ε_α.
    #[default]
    Improved,
}

impl Conversion {
    /// ε for target δ from one RDP guarantee (α = `order`, ε_α = `rdp`). Never negative; +∞ if
    /// the guarantee says nothing. Expects α > 1, ε_α ≥ 0 and 0 < δ < 1, as the accountant
    /// ensures.
    pub fn epsilon(self, order: f64, rdp: f64, delta: f64) -> f64 {
        if rdp == 0.0 {
            return 0.0; // identical output distributions: (0, 0)-DP
        }
        if rdp.is_nan() || rdp == f64::INFINITY || order.is_nan() || order <= 1.0 {
            return f64::INFINITY;
        }
        let eps = match self {
            Conversion::Classic => rdp - delta.ln() / (order - 1.0),
            Conversion::Improved => {
                if delta * delta + (-rdp).exp_m1() > 0.0 {
                    0.0
                } else {
                    rdp + (-1.0 / order).ln_1p() - (delta.ln() + order.ln()) / (order - 1.0)
                }
            }
        };
        eps.max(0.0)
    }

    /// The best ε over a grid of orders, with the order that attains it (the first one on a tie).
    pub(super) fn best(self, orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
        let mut best = (f64::INFINITY, orders[0]);
        for (&order, &r) in orders.iter().zip(rdp) {
            let eps = self.epsilon(order, r, delta);
            if eps < best.0 {
                best = (eps, order);
            }
        }
        best
    }
}

/// A privacy ledger: the RDP spent so far at every order of a grid. Each noisy step, whatever its
/// sampling rate and noise, adds its RDP curve ([`Accountant::compose`]); [`Accountant::epsilon`]
/// reads off the (ε, δ) guarantee of everything composed. It serializes (serde) so that a node
/// can persist it between rounds; a loaded ledger is checked, and a damaged one is an error,
/// never a smaller ε.
///
/// ```
/// use fedmesh_protocol::dp;
/// let mut acc = dp::Accountant::new();
/// acc.compose(0.01, 1.1, 1000).unwrap(); // 10 epochs at 1 % sampling
/// acc.compose(0.02, 1.5, 500).unwrap(); // then 10 more with a larger batch and more noise
/// let (eps, order) = acc.epsilon(1e-5).unwrap();
/// assert!(eps > 0.0 && order > 1.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Ledger")]
pub struct Accountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    steps: u64,
}

/// The serialized form, checked before it becomes an [`Accountant`].
#[derive(Deserialize)]
struct Ledger {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    steps: u64,
}

impl TryFrom<Ledger> for Accountant {
    type Error = DpError;

    fn try_from(l: Ledger) -> Result<Self, DpError> {
        check_orders(&l.orders)?;
        if l.orders.len() != l.rdp.len() {
            return Err(DpError::LedgerLength {
                orders: l.orders.len(),
                rdp: l.rdp.len(),
            });
        }
        for (&order, &rdp) in l.orders.iter().zip(&l.rdp) {
            if rdp.is_nan() || rdp < 0.0 {
                return Err(DpError::LedgerValue { order, rdp });
            }
        }
        Ok(Accountant {
            orders: l.orders,
            rdp: l.rdp,
            steps: l.steps,
        })
    }
}

fn check_orders(orders: &[f64]) -> Result<(), DpError> {
    if orders.is_empty() {
        return Err(DpError::NoOrders);
    }
    for &order in orders {
        if order.is_nan() || order <= 1.0 || order > MAX_ORDER {
            return Err(DpError::Order { order });
        }
    }
    Ok(())
}

impl Default for Accountant {
    fn default() -> Self {
        Self::new()
    }
}

impl Accountant {
    /// An empty ledger over [`DEFAULT_ORDERS`].
    pub fn new() -> Self {
        Accountant {
            orders: DEFAULT_ORDERS.to_vec(),
            rdp: vec![0.0; DEFAULT_ORDERS.len()],
            steps: 0,
        }
    }

    /// An empty ledger over a grid of one's own: every order finite, > 1 and at most 10⁶ (the
    /// cost of an integer order α is α + 1 terms). More orders give a slightly smaller ε at a
    /// proportional cost.
    pub fn with_orders(orders: &[f64]) -> Result<Self, DpError> {
        check_orders(orders)?;
        Ok(Accountant {
            orders: orders.to_vec(),
            rdp: vec![0.0; orders.len()],
            steps: 0,
        })
    }

    /// Records `steps` steps of the Poisson-subsampled Gaussian mechanism with sampling rate
    /// `q` ∈ (0, 1] and noise multiplier `sigma` > 0 (noise std / clipping norm). Zero steps
    /// change nothing. On error the ledger is unchanged.
    pub fn compose(&mut self, q: f64, sigma: f64, steps: u64) -> Result<(), DpError> {
        check_sample_rate(q)?;
        check_noise(sigma)?;
        self.compose_checked(q, sigma, steps);
        Ok(())
    }

    pub(super) fn compose_checked(&mut self, q: f64, sigma: f64, steps: u64) {
        if steps == 0 {
            return;
        }
        let n = steps as f64;
        for (total, &order) in self.rdp.iter_mut().zip(&self.orders) {
            *total += n * rdp::subsampled_gaussian(q, sigma, order);
        }
        self.steps = self.steps.saturating_add(steps);
    }

    /// The (ε, δ) guarantee of everything composed, by the default conversion: ε and the order
    /// that gives it. If the order is the grid's first or last, a wider grid may give a smaller ε.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), DpError> {
        self.epsilon_with(delta, Conversion::default())
    }

    /// As [`Accountant::epsilon`], with a chosen conversion.
    pub fn epsilon_with(&self, delta: f64, conversion: Conversion) -> Result<(f64, f64), DpError> {
        check_delta(delta)?;
        Ok(conversion.best(&self.orders, &self.rdp, delta))
    }

    /// The order grid.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The RDP spent so far, order by order (ε_α for `orders()[i]` is `rdp()[i]`).
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Steps composed so far (saturating).
    pub fn steps(&self) -> u64 {
        self.steps
    }
}
