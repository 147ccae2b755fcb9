//! Arithmetic in GF(p) for p = 2^256 + 297, the field that [`shamir`](super::shamir) shares over.
//!
//! Why this prime: every 32-byte secret must be a field element as it is, so that all 2^256
//! secrets stay distinct and none loses entropy — which needs p > 2^256 (GF(2^255 − 19) would fold
//! the secrets ≥ p onto smaller ones). 2^256 + 297 is the smallest prime above 2^256 (the tests
//! check it with Miller–Rabin, and check that every odd number between 2^256 and it is composite),
//! so a share's y-value is 257 bits and takes 33 bytes.
//!
//! Elements are crypto-bigint `Residue`s: five 64-bit limbs in Montgomery form, with constant-time
//! multiplication, addition and inversion, so no secret decides a branch or a memory access.

use crypto_bigint::{impl_modulus, modular::constant_mod::Residue, Encoding, U320};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

impl_modulus!(
    Modulus,
    U320,
    // 2^256 + 297, big-endian, 80 hex digits (five limbs).
    "00000000000000010000000000000000000000000000000000000000000000000000000000000129"
);

/// An element of GF(2^256 + 297).
pub(crate) type Fe = Residue<Modulus, { U320::LIMBS }>;

/// Bytes of an encoded element: 257 bits, little-endian.
pub(crate) const FE_LEN: usize = 33;

/// The modulus as an integer.
pub(crate) fn modulus() -> U320 {
    use crypto_bigint::modular::constant_mod::ResidueParams;
    <Modulus as ResidueParams<{ U320::LIMBS }>>::MODULUS
}

/// A uniformly random element: 257 random bits, rejected until below p (about two tries).
///
/// crypto-bigint's `random_mod` draws whole bytes, 264 bits here, and so rejects 255 draws in
/// 256; masking to 257 bits keeps the distribution exact and the cost low.
pub(crate) fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Fe {
    let p = modulus();
    let mut wide = [0u8; 40];
    loop {
        rng.fill_bytes(&mut wide[..FE_LEN]);
        wide[FE_LEN - 1] &= 1;
        let mut n = U320::from_le_bytes(wide);
        let accept = n < p;
        let fe = accept.then(|| Fe::new(&n));
        n.zeroize();
        if let Some(fe) = fe {
            wide.zeroize();
            return fe;
        }
    }
}

pub(crate) fn from_u32(x: u32) -> Fe {
    Fe::new(&U320::from_u32(x))
}

/// The 32-byte secret as the integer it spells in little-endian; injective because 2^256 < p.
pub(crate) fn from_secret(secret: &[u8; 32]) -> Fe {
    let mut wide = [0u8; 40];
    wide[..32].copy_from_slice(secret);
    let mut n = U320::from_le_bytes(wide);
    let fe = Fe::new(&n);
    wide.zeroize();
    n.zeroize();
    fe
}

/// The inverse of [`from_secret`]: `None` for the 297 elements ≥ 2^256, which no secret maps to.
pub(crate) fn to_secret(fe: &Fe) -> Option<[u8; 32]> {
    let mut n = fe.retrieve();
    let mut wide = n.to_le_bytes();
    n.zeroize();
    // Bytes 33..40 are zero for every element below p; byte 32 is 1 only for [2^256, p).
    let fits = wide[32] == 0;
    let mut out = [0u8; 32];
    out.copy_from_slice(&wide[..32]);
    wide.zeroize();
    if fits {
        Some(out)
    } else {
        out.zeroize();
        None
    }
}

pub(crate) fn to_bytes(fe: &Fe) -> [u8; FE_LEN] {
    let mut n = fe.retrieve();
    let mut wide = n.to_le_bytes();
    let mut out = [0u8; FE_LEN];
    out.copy_from_slice(&wide[..FE_LEN]);
    n.zeroize();
    wide.zeroize();
    out
}

/// `None` unless `bytes` is the canonical encoding of an element (an integer below p).
pub(crate) fn from_bytes(bytes: &[u8; FE_LEN]) -> Option<Fe> {
    let mut wide = [0u8; 40];
    wide[..FE_LEN].copy_from_slice(bytes);
    let mut n = U320::from_le_bytes(wide);
    wide.zeroize();
    let fe = (n < modulus()).then(|| Fe::new(&n));
    n.zeroize();
    fe
}

/// Inverts every element in place with one field inversion (Montgomery's trick).
///
/// Callers pass only non-zero elements (differences of distinct share indices).
pub(crate) fn batch_invert(values: &mut [Fe]) {
    let mut prefix = Vec::with_capacity(values.len());
    let mut acc = Fe::ONE;
    for v in values.iter() {
        prefix.push(acc);
        acc *= v;
    }
    let (mut inv, ok) = acc.invert();
    debug_assert!(bool::from(ok), "batch_invert got a zero element");
    for (v, before) in values.iter_mut().zip(prefix).rev() {
        let next = inv * *v;
        *v = inv * before;
        inv = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
    use crypto_bigint::{NonZero, RandomMod};
    use rand::SeedableRng;

    /// Miller–Rabin with the given bases; `n` odd and > 3.
    fn miller_rabin(n: &U320, bases: &[U320]) -> bool {
        let params = DynResidueParams::new(n);
        let n_minus_1 = n.wrapping_sub(&U320::ONE);
        let s = n_minus_1.trailing_zeros();
        let d = n_minus_1.shr_vartime(s);
        let one = DynResidue::one(params);
        let minus_one = -one;
        'bases: for a in bases {
            let mut x = DynResidue::new(a, params).pow(&d);
            if x == one || x == minus_one {
                continue;
            }
            for _ in 1..s {
                x = x.square();
                if x == minus_one {
                    continue 'bases;
                }
            }
            return false;
        }
        true
    }

    fn bases(rng: &mut rand_chacha::ChaCha20Rng, n: &U320, count: usize) -> Vec<U320> {
        // The first primes as fixed bases, then random ones in [2, n − 2].
        let mut out: Vec<U320> = [2u32, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
            .iter()
            .map(|&b| U320::from_u32(b))
            .collect();
        let range = NonZero::new(n.wrapping_sub(&U320::from_u32(3))).unwrap();
        for _ in 0..count {
            out.push(U320::random_mod(rng, &range).wrapping_add(&U320::from_u32(2)));
        }
        out
    }

    /// Guards the choice of field: if p were composite, Shamir's interpolation would break (and
    /// secrecy with it); if p were ≤ 2^256, some 32-byte secrets would collide.
    #[test]
    fn modulus_is_the_smallest_prime_above_2_pow_256() {
        let two_256 = U320::ONE.shl_vartime(256);
        assert_eq!(modulus(), two_256.wrapping_add(&U320::from_u32(297)));
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(256);
        let p = modulus();
        // 12 fixed + 52 random bases: a composite passes with probability < 4^-64.
        assert!(miller_rabin(&p, &bases(&mut rng, &p, 52)));
        for c in (1..297u32).step_by(2) {
            let n = two_256.wrapping_add(&U320::from_u32(c));
            assert!(
                !miller_rabin(&n, &bases(&mut rng, &n, 4)),
                "2^256 + {c} passed Miller-Rabin"
            );
        }
        // Negative control: the test does reject a composite and accepts a known prime.
        assert!(!miller_rabin(&U320::from_u64(561), &[U320::from_u32(2)]));
        let p25519 = U320::ONE.shl_vartime(255).wrapping_sub(&U320::from_u32(19));
        assert!(miller_rabin(&p25519, &bases(&mut rng, &p25519, 8)));
    }

    #[test]
    fn encodings_round_trip_and_reject_non_canonical() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for _ in 0..100 {
            let a = random(&mut rng);
            assert_eq!(from_bytes(&to_bytes(&a)), Some(a));
        }
        let secret = [0xffu8; 32];
        assert_eq!(to_secret(&from_secret(&secret)), Some(secret));
        // p itself and 2^257 − 1 are not canonical.
        let mut p_bytes = [0u8; FE_LEN];
        p_bytes.copy_from_slice(&modulus().to_le_bytes()[..FE_LEN]);
        assert_eq!(from_bytes(&p_bytes), None);
        assert_eq!(from_bytes(&[0xff; FE_LEN]), None);
        // p − 1 = 2^256 + 296 is an element but not a secret.
        p_bytes[0] -= 1;
        let top = from_bytes(&p_bytes).unwrap();
        assert_eq!(to_secret(&top), None);
        assert_eq!(top + Fe::ONE, Fe::ZERO);
    }

    /// Guards the sampler: every draw is a canonical element, and bit 255 is set in about half of
    /// them (a byte-wise or biased sampler would skew it).
    #[test]
    fn random_elements_cover_the_field_evenly() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut high_half = 0;
        for _ in 0..2000 {
            let bytes = to_bytes(&random(&mut rng));
            assert!(from_bytes(&bytes).is_some());
            high_half += (bytes[31] >> 7) as u32;
        }
        assert!(
            (900..1100).contains(&high_half),
            "{high_half} of 2000 in the upper half"
        );
    }

    #[test]
    fn batch_invert_matches_single_inversions() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let values: Vec<Fe> = (0..17).map(|_| random(&mut rng)).collect();
        let mut inverted = values.clone();
        batch_invert(&mut inverted);
        for (v, i) in values.iter().zip(&inverted) {
            assert_eq!(*v * i, Fe::ONE);
        }
    }
}
