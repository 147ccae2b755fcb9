//! Shamir t-of-n secret sharing of 32-byte secrets over GF(2^256 + 297).
//!
//! A member shares its self-mask seed and its mask key pair's secret this way, so that the
//! survivors can unmask an aggregate whoever drops out, as long as `threshold` of them remain.
//! Each secret becomes *one* share per recipient (37 bytes) and keeps all 256 bits of entropy:
//! the field is larger than 2^256 (see the field's docs), so the secret is the polynomial's
//! constant term as it is, with no chunking and no folding.
//!
//! Any `threshold − 1` shares are independent of the secret: for every candidate secret there is
//! exactly one polynomial through it and those shares, and it is as likely as any other.
//!
//! [`combine`] interpolates at 0 from the first `threshold` shares and checks that every further
//! share lies on the same polynomial, so more than `threshold` shares also detect a corrupt share
//! (exactly `threshold` shares cannot: any `threshold` points fit some polynomial).

use std::fmt;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::field::{self, Fe, FE_LEN};

/// Bytes of an encoded [`Share`]: the index `x` (4, little-endian) and `y` (33, little-endian).
pub const SHARE_LEN: usize = 4 + FE_LEN;

/// One recipient's share of a 32-byte secret: the secret polynomial evaluated at `x ≠ 0`.
///
/// By convention `x` is the recipient's member index plus one (0 would be the secret itself).
///
/// # Security
/// `threshold` shares reveal the secret, so a share is as sensitive as the secret to whoever can
/// gather others: it travels only inside [`aead::seal`](super::aead::seal) until the unmask
/// round reveals it on purpose. Zeroized on drop; `Debug` shows only `x`; equality is
/// constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    x: u32,
    y: Fe,
}

impl Share {
    /// The point this share was evaluated at (the recipient's member index plus one).
    pub fn x(&self) -> u32 {
        self.x
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; SHARE_LEN]> {
        let mut out = Zeroizing::new([0u8; SHARE_LEN]);
        out[..4].copy_from_slice(&self.x.to_le_bytes());
        let mut y = field::to_bytes(&self.y);
        out[4..].copy_from_slice(&y);
        y.zeroize();
        out
    }

    /// Decode [`SHARE_LEN`] bytes, rejecting `x = 0` and a `y` that is not a field element.
    pub fn from_bytes(bytes: &[u8]) -> Result<Share, ShareError> {
        let bytes: &[u8; SHARE_LEN] = bytes
            .try_into()
            .map_err(|_| ShareError::Length(bytes.len()))?;
        let x = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if x == 0 {
            return Err(ShareError::ZeroIndex);
        }
        let mut y = [0u8; FE_LEN];
        y.copy_from_slice(&bytes[4..]);
        let y_fe = field::from_bytes(&y);
        y.zeroize();
        Ok(Share {
            x,
            y: y_fe.ok_or(ShareError::NotInField)?,
        })
    }
}

impl PartialEq for Share {
    fn eq(&self, other: &Self) -> bool {
        self.x == other.x && bool::from(self.y.ct_eq(&other.y))
    }
}

impl Eq for Share {}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shamir::Share(x = {}, <redacted>)", self.x)
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::encoding::serialize(self.to_bytes().as_slice(), s)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = super::encoding::deserialize(d, "Shamir share", SHARE_LEN)?;
        Share::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Share `secret` so that any `threshold` of the returned shares (one per entry of `xs`, in that
/// order) recover it and fewer reveal nothing about it.
///
/// `xs` are the recipients' evaluation points: distinct and non-zero (member index plus one).
pub fn split<R: RngCore + CryptoRng>(
    secret: &[u8; 32],
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>, SplitError> {
    if threshold == 0 || threshold > xs.len() {
        return Err(SplitError::Threshold {
            threshold,
            n: xs.len(),
        });
    }
    check_indices(xs.iter().copied()).map_err(|e| match e {
        IndexError::Zero => SplitError::ZeroIndex,
        IndexError::Duplicate(x) => SplitError::DuplicateIndex { x },
    })?;
    // f(X) = secret + a_1 X + … + a_{t−1} X^{t−1}, coefficients uniform in the field.
    let mut coefficients = Zeroizing::new(Vec::with_capacity(threshold));
    coefficients.push(field::from_secret(secret));
    for _ in 1..threshold {
        coefficients.push(field::random(rng));
    }
    Ok(xs
        .iter()
        .map(|&x| {
            let at = field::from_u32(x);
            // Horner's rule, highest coefficient first.
            let mut y = Fe::ZERO;
            for c in coefficients.iter().rev() {
                y = y * at + c;
            }
            Share { x, y }
        })
        .collect())
}

/// Recover the secret from at least `threshold` shares with distinct indices.
///
/// The first `threshold` shares determine the polynomial; each further share must lie on it, or
/// the result is [`CombineError::Inconsistent`]. With exactly `threshold` shares a corrupt share
/// goes unnoticed and gives a wrong secret (except in the 297-in-2^256 case where the value is no
/// 32-byte secret at all): callers that can, pass more.
pub fn combine(shares: &[Share], threshold: usize) -> Result<Zeroizing<[u8; 32]>, CombineError> {
    if threshold == 0 {
        return Err(CombineError::Threshold);
    }
    if shares.len() < threshold {
        return Err(CombineError::NotEnoughShares {
            have: shares.len(),
            need: threshold,
        });
    }
    check_indices(shares.iter().map(Share::x)).map_err(|e| match e {
        IndexError::Zero => CombineError::ZeroIndex,
        IndexError::Duplicate(x) => CombineError::DuplicateIndex { x },
    })?;
    let (basis, extra) = shares.split_at(threshold);
    let interpolation = Interpolation::new(basis);
    let mut secret = interpolation.eval(basis, Fe::ZERO);
    for share in extra {
        let mut expected = interpolation.eval(basis, field::from_u32(share.x));
        let agrees = bool::from(expected.ct_eq(&share.y));
        expected.zeroize();
        if !agrees {
            secret.zeroize();
            return Err(CombineError::Inconsistent { x: share.x });
        }
    }
    let out = field::to_secret(&secret).map(Zeroizing::new);
    secret.zeroize();
    out.ok_or(CombineError::NotASecret)
}

/// Lagrange interpolation through the basis points, in barycentric form: the weights
/// `w_i = 1 / Π_{j≠i} (x_i − x_j)` depend only on the (public) indices and are computed once,
/// after which each evaluation costs O(t).
struct Interpolation {
    xs: Vec<Fe>,
    weights: Vec<Fe>,
}

impl Interpolation {
    fn new(basis: &[Share]) -> Self {
        let xs: Vec<Fe> = basis.iter().map(|s| field::from_u32(s.x)).collect();
        let mut weights: Vec<Fe> = xs
            .iter()
            .enumerate()
            .map(|(i, xi)| {
                xs.iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .fold(Fe::ONE, |acc, (_, xj)| acc * (xi - xj))
            })
            .collect();
        field::batch_invert(&mut weights);
        Interpolation { xs, weights }
    }

    /// `f(at) = Σ_i y_i · w_i · Π_{j≠i} (at − x_j)`, the products from prefix and suffix runs.
    /// `at` must not be one of the basis indices (callers evaluate at 0 and at other shares' x).
    fn eval(&self, basis: &[Share], at: Fe) -> Fe {
        let n = self.xs.len();
        let diffs: Vec<Fe> = self.xs.iter().map(|x| at - x).collect();
        // suffix[i] = Π_{j≥i} diffs[j]
        let mut suffix = vec![Fe::ONE; n + 1];
        for i in (0..n).rev() {
            suffix[i] = suffix[i + 1] * diffs[i];
        }
        let mut prefix = Fe::ONE;
        let mut sum = Fe::ZERO;
        for i in 0..n {
            sum += basis[i].y * self.weights[i] * prefix * suffix[i + 1];
            prefix *= diffs[i];
        }
        sum
    }
}

enum IndexError {
    Zero,
    Duplicate(u32),
}

fn check_indices(xs: impl Iterator<Item = u32>) -> Result<(), IndexError> {
    let mut sorted: Vec<u32> = xs.collect();
    sorted.sort_unstable();
    if sorted.first() == Some(&0) {
        return Err(IndexError::Zero);
    }
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(IndexError::Duplicate(w[0])),
        None => Ok(()),
    }
}

/// Arguments that [`split`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SplitError {
    #[error(
        "threshold {threshold} is impossible with {n} recipients: it must be between 1 and {n}"
    )]
    Threshold { threshold: usize, n: usize },
    #[error("share index 0 would be the secret itself: use member index + 1")]
    ZeroIndex,
    #[error("share index {x} appears twice: each recipient needs its own index")]
    DuplicateIndex { x: u32 },
}

/// Shares that do not give a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CombineError {
    #[error("threshold must be at least 1")]
    Threshold,
    #[error("{have} shares, {need} needed to recover the secret")]
    NotEnoughShares { have: usize, need: usize },
    #[error("a share has index 0, which no valid share has")]
    ZeroIndex,
    #[error("two shares have index {x}: pass each member's share once")]
    DuplicateIndex { x: u32 },
    /// The shares do not lie on one polynomial of degree `threshold − 1`: some share is corrupt —
    /// the one at `x`, or one of the first `threshold` (this check cannot tell which).
    #[error("shares are inconsistent (first disagreement at index {x}): some share is corrupt")]
    Inconsistent { x: u32 },
    /// The interpolated value is ≥ 2^256, which no 32-byte secret gives: a share is corrupt.
    #[error("shares interpolate to a value above 2^256: some share is corrupt")]
    NotASecret,
}

/// Bytes that are not a [`Share`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareError {
    #[error("a Shamir share is {SHARE_LEN} bytes, found {0}")]
    Length(usize),
    #[error("share index 0 is invalid")]
    ZeroIndex,
    #[error("share value is not below the field modulus 2^256 + 297")]
    NotInField,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{seq::SliceRandom, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn xs(n: u32) -> Vec<u32> {
        (1..=n).collect()
    }

    #[test]
    fn any_threshold_subset_recovers_and_extra_shares_agree() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = [0xffu8; 32]; // the largest secret: needs the field to exceed 2^256
        let shares = split(&secret, 3, &xs(5), &mut rng).unwrap();
        assert_eq!(shares.len(), 5);
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let subset = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(*combine(&subset, 3).unwrap(), secret);
                }
            }
        }
        assert_eq!(*combine(&shares, 3).unwrap(), secret);
    }

    #[test]
    fn edge_thresholds() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let secret = [42u8; 32];
        let one = split(&secret, 1, &xs(3), &mut rng).unwrap();
        assert_eq!(*combine(&one[2..], 1).unwrap(), secret);
        let all = split(&secret, 4, &xs(4), &mut rng).unwrap();
        assert_eq!(*combine(&all, 4).unwrap(), secret);
        assert_eq!(
            combine(&all[..3], 4),
            Err(CombineError::NotEnoughShares { have: 3, need: 4 })
        );
    }

    #[test]
    fn refuses_bad_arguments() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let s = [1u8; 32];
        assert_eq!(
            split(&s, 0, &xs(3), &mut rng),
            Err(SplitError::Threshold { threshold: 0, n: 3 })
        );
        assert_eq!(
            split(&s, 4, &xs(3), &mut rng),
            Err(SplitError::Threshold { threshold: 4, n: 3 })
        );
        assert_eq!(split(&s, 2, &[0, 1], &mut rng), Err(SplitError::ZeroIndex));
        assert_eq!(
            split(&s, 2, &[5, 1, 5], &mut rng),
            Err(SplitError::DuplicateIndex { x: 5 })
        );
        let shares = split(&s, 2, &xs(3), &mut rng).unwrap();
        let dup = [shares[0].clone(), shares[0].clone()];
        assert_eq!(combine(&dup, 2), Err(CombineError::DuplicateIndex { x: 1 }));
        assert_eq!(combine(&shares, 0), Err(CombineError::Threshold));
    }

    /// Guards perfect secrecy: `t − 1` shares fit every secret. For any other secret we build the
    /// polynomial through it and the given shares, and its share at a fresh index, together with
    /// the original `t − 1`, combines to that other secret.
    #[test]
    fn fewer_than_threshold_shares_fit_every_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let t = 4;
        let shares = split(&[9u8; 32], t, &xs(6), &mut rng).unwrap();
        let known = &shares[..t - 1];
        for other in [[0u8; 32], [0xffu8; 32], [9u8; 32], [0x5au8; 32]] {
            // The polynomial through (0, other) and the known shares, evaluated at x = 6.
            let mut basis = vec![Share {
                x: 0,
                y: field::from_secret(&other),
            }];
            basis.extend(known.iter().cloned());
            let forged = Interpolation::new(&basis).eval(&basis, field::from_u32(6));
            let mut set = known.to_vec();
            set.push(Share { x: 6, y: forged });
            assert_eq!(*combine(&set, t).unwrap(), other);
        }
    }

    /// A statistical companion to the exact test above: below the threshold, a share's value is
    /// uniform whatever the secret (chi-squared over its low byte, for two very different secrets).
    #[test]
    fn share_values_below_threshold_look_uniform() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for secret in [[0u8; 32], [0xffu8; 32]] {
            let mut counts = [0u32; 256];
            let trials = 4096;
            for _ in 0..trials {
                let shares = split(&secret, 2, &[1, 2], &mut rng).unwrap();
                counts[shares[0].to_bytes()[4] as usize] += 1;
            }
            let expected = trials as f64 / 256.0;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            // 255 degrees of freedom: mean 255, sd ≈ 22.6; 400 is beyond 6 sd.
            assert!(chi2 < 400.0, "chi2 {chi2} for secret {:x}", secret[0]);
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_bad_bytes() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let shares = split(&[3u8; 32], 2, &[7, 300], &mut rng).unwrap();
        for s in &shares {
            assert_eq!(Share::from_bytes(&s.to_bytes()[..]).unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(serde_json::from_str::<Share>(&json).unwrap(), *s);
            let bin = bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap();
            let (back, _): (Share, _) =
                bincode::serde::decode_from_slice(&bin, bincode::config::standard()).unwrap();
            assert_eq!(back, *s);
        }
        assert!(format!("{:?}", shares[0]).contains("redacted"));
        assert_eq!(Share::from_bytes(&[1u8; 36]), Err(ShareError::Length(36)));
        let mut zero_x = *shares[0].to_bytes();
        zero_x[..4].fill(0);
        assert_eq!(Share::from_bytes(&zero_x), Err(ShareError::ZeroIndex));
        let mut big_y = *shares[0].to_bytes();
        big_y[4..].fill(0xff);
        assert_eq!(Share::from_bytes(&big_y), Err(ShareError::NotInField));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_any_threshold_subset_recovers(
            secret in any::<[u8; 32]>(),
            n in 1u32..=12,
            t_frac in 0.0f64..1.0,
            seed in any::<u64>(),
        ) {
            let t = 1 + ((n as f64 * t_frac) as usize).min(n as usize - 1);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut shares = split(&secret, t, &xs(n), &mut rng).unwrap();
            shares.shuffle(&mut rng);
            prop_assert_eq!(*combine(&shares[..t], t).unwrap(), secret);
            prop_assert_eq!(*combine(&shares, t).unwrap(), secret);
            if t > 1 {
                let too_few = combine(&shares[..t - 1], t).is_err();
                prop_assert!(too_few);
            }
        }

        /// Guards against accepting a corrupt share silently: with exactly `t` shares a flipped
        /// bit (in the value, or in the index when t ≥ 2) gives another secret or an error, with
        /// more than `t` it is always an error.
        #[test]
        fn prop_tampered_share_is_never_the_secret(
            secret in any::<[u8; 32]>(),
            t in 1usize..=6,
            victim in 0usize..7,
            bit in 0usize..SHARE_LEN * 8,
            seed in any::<u64>(),
        ) {
            // With t = 1 every share holds the secret itself, whatever its index says.
            prop_assume!(t >= 2 || bit >= 32);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let n = t + 1;
            let mut shares = split(&secret, t, &xs(n as u32), &mut rng).unwrap();
            let victim = victim % n;
            let mut bytes = *shares[victim].to_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            match Share::from_bytes(&bytes) {
                Err(_) => {} // not even a share
                Ok(bad) => {
                    shares[victim] = bad;
                    let with_extra = combine(&shares, t);
                    prop_assert!(with_extra.is_err(), "{t}+1 shares, one corrupt, accepted");
                    if victim < t {
                        let exact = combine(&shares[..t], t);
                        prop_assert!(exact.map_or(true, |s| *s != secret));
                    }
                }
            }
        }
    }
}
