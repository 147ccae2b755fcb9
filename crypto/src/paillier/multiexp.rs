//! Products of many powers, `Π x_j^{e_j} mod N`, by the bucket method (Pippenger).
//!
//! The proof of a partial decryption folds thousands of values with short public weights
//! ([`super::threshold`]); raising each value to its weight separately costs about
//! `bits + bits/5` multiplications per value. The bucket method shares the squarings among all
//! values: for each window of `c` exponent bits, each value is multiplied into the bucket of its
//! digit (one multiplication), and the buckets are combined with about `2^(c+1)` more — about
//! `⌈bits / c⌉ · (count + 2^(c+1))` multiplications in all, some 8 times fewer for 4 000 values
//! with 129-bit weights. Windows are independent and run on all cores.
//!
//! Not constant time: for public bases and exponents only.

use rayon::prelude::*;
use rug::integer::Order;
use rug::Integer;

/// `Π bases[j]^exps[j] mod modulus` (in `[0, modulus)`), for non-negative exponents and
/// `modulus > 1`. Bases and exponents are public: timing depends on them.
///
/// # Panics
/// If the slices differ in length or an exponent is negative (callers derive both from the same
/// vector and hash weights, so either is a bug here, not bad input).
pub(crate) fn product_of_powers(
    bases: &[&Integer],
    exps: &[Integer],
    modulus: &Integer,
) -> Integer {
    assert_eq!(bases.len(), exps.len(), "one exponent per base");
    assert!(exps.iter().all(|e| *e >= 0), "exponents are non-negative");
    let bits = exps
        .iter()
        .map(Integer::significant_bits)
        .max()
        .unwrap_or(0);
    if bits == 0 {
        return Integer::from(1) % modulus;
    }
    let c = window_bits(bases.len(), bits);
    let windows = bits.div_ceil(c);
    let limbs: Vec<Vec<u64>> = exps.iter().map(|e| e.to_digits(Order::Lsf)).collect();
    let per_window: Vec<Option<Integer>> = (0..windows)
        .into_par_iter()
        .map(|k| window_product(bases, &limbs, k * c, c, modulus))
        .collect();
    // acc = Π_k T_k^(2^(c·k)), Horner-style from the top window.
    let mut acc: Option<Integer> = None;
    for t in per_window.into_iter().rev() {
        if let Some(a) = acc.as_mut() {
            for _ in 0..c {
                a.square_mut();
                *a %= modulus;
            }
        }
        acc = mul_into(acc, t.as_ref(), modulus);
    }
    let mut out = acc.unwrap_or_else(|| Integer::from(1)) % modulus;
    if out < 0 {
        out += modulus;
    }
    out
}

/// The window size that minimises `⌈bits / c⌉ · (count + 2^(c+1))`.
fn window_bits(count: usize, bits: u32) -> u32 {
    (1..=16u32)
        .min_by_key(|&c| u64::from(bits.div_ceil(c)) * (count as u64 + (2u64 << c)))
        .unwrap_or(1)
}

/// The digit of `limbs` (little-endian u64 limbs) at bits `[lo, lo + c)`, `c ≤ 16`.
fn digit(limbs: &[u64], lo: u32, c: u32) -> usize {
    let word = (lo / 64) as usize;
    let shift = lo % 64;
    let mut d = limbs.get(word).map_or(0, |w| w >> shift);
    if shift + c > 64 {
        if let Some(next) = limbs.get(word + 1) {
            d |= next << (64 - shift);
        }
    }
    (d & ((1u64 << c) - 1)) as usize
}

/// `Π_j bases[j]^(digit_j)` for the window at bit `lo`: each base goes into the bucket of its
/// digit; then `Π_d B_d^d` by running products. None for the empty product (1).
fn window_product(
    bases: &[&Integer],
    limbs: &[Vec<u64>],
    lo: u32,
    c: u32,
    modulus: &Integer,
) -> Option<Integer> {
    let mut buckets: Vec<Option<Integer>> = vec![None; (1usize << c) - 1];
    for (base, e) in bases.iter().zip(limbs) {
        let d = digit(e, lo, c);
        if d != 0 {
            let slot = &mut buckets[d - 1];
            *slot = mul_into(slot.take(), Some(base), modulus);
        }
    }
    // Σ_d d·B_d = Σ_d (B_d + B_{d+1} + … + B_max): a running product of the buckets from the top,
    // multiplied into the total once per digit value.
    let mut running: Option<Integer> = None;
    let mut total: Option<Integer> = None;
    for bucket in buckets.iter().rev() {
        running = mul_into(running, bucket.as_ref(), modulus);
        total = mul_into(total, running.as_ref(), modulus);
    }
    total
}

/// `acc · x mod modulus`, where None stands for 1.
fn mul_into(acc: Option<Integer>, x: Option<&Integer>, modulus: &Integer) -> Option<Integer> {
    match (acc, x) {
        (acc, None) => acc,
        (None, Some(x)) => Some(x.clone()),
        (Some(mut a), Some(x)) => {
            a *= x;
            a %= modulus;
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn naive(bases: &[&Integer], exps: &[Integer], modulus: &Integer) -> Integer {
        bases
            .iter()
            .zip(exps)
            .fold(Integer::from(1) % modulus, |acc, (b, e)| {
                let p = (*b)
                    .clone()
                    .pow_mod(e, modulus)
                    .expect("non-negative exponent");
                acc * p % modulus
            })
    }

    fn random_int(bits: u32, rng: &mut ChaCha20Rng) -> Integer {
        let bytes: Vec<u8> = (0..bits.div_ceil(8)).map(|_| rng.gen()).collect();
        Integer::from_digits(&bytes, Order::Msf) >> (bits.div_ceil(8) * 8 - bits)
    }

    #[test]
    fn equals_the_product_of_separate_powers() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        // An odd modulus (as n² is) and an even one; counts that give windows of several sizes;
        // exponents of mixed lengths, zeros and ones among them.
        for (modulus_bits, count, exp_bits) in [
            (256, 1, 129),
            (256, 5, 64),
            (512, 40, 129),
            (512, 300, 129),
            (300, 1000, 17),
            (1024, 64, 600),
        ] {
            for even in [false, true] {
                let mut modulus = random_int(modulus_bits, &mut rng) | Integer::from(1);
                modulus.set_bit(modulus_bits - 1, true);
                if even {
                    modulus -= 1u32;
                }
                let bases: Vec<Integer> = (0..count)
                    .map(|_| random_int(modulus_bits, &mut rng) % &modulus)
                    .collect();
                let exps: Vec<Integer> = (0..count)
                    .map(|j| match j % 7 {
                        0 => Integer::new(),
                        1 => Integer::from(1),
                        2 => random_int(exp_bits / 2, &mut rng),
                        _ => random_int(exp_bits, &mut rng),
                    })
                    .collect();
                let refs: Vec<&Integer> = bases.iter().collect();
                assert_eq!(
                    product_of_powers(&refs, &exps, &modulus),
                    naive(&refs, &exps, &modulus),
                    "{modulus_bits}-bit modulus, {count} bases, {exp_bits}-bit exponents"
                );
            }
        }
    }

    #[test]
    fn empty_products_are_one() {
        let modulus = Integer::from(1_000_003);
        assert_eq!(product_of_powers(&[], &[], &modulus), 1);
        let b = Integer::from(5);
        assert_eq!(product_of_powers(&[&b], &[Integer::new()], &modulus), 1);
        // A base of zero or one modulus is 0 when raised to a positive power.
        let z = Integer::from(1_000_003);
        assert_eq!(
            product_of_powers(&[&b, &z], &[Integer::from(3), Integer::from(2)], &modulus),
            0
        );
    }

    #[test]
    fn digits_cross_limb_boundaries() {
        let limbs = [0xF000_0000_0000_0000u64, 0x0000_0000_0000_0005];
        assert_eq!(digit(&limbs, 60, 8), 0x5F);
        assert_eq!(digit(&limbs, 64, 8), 0x05);
        assert_eq!(digit(&limbs, 128, 8), 0);
        assert_eq!(digit(&limbs, 0, 16), 0);
    }
}
