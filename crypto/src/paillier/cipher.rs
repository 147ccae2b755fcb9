//! Encryption with `g = n + 1`, precomputed randomness, and the homomorphic sum.
//!
//! `Enc(M) = (1 + Mn) · r^n mod n²`. The first factor is one multiplication; the second, a
//! full-size exponentiation, is the whole cost of Paillier encryption and does not depend on the
//! message — so a [`Pool`] computes it ahead of time (while the model trains), on all cores, and
//! encrypting a packed update costs one multiplication modulo n² per ciphertext.

use std::fmt;
use std::sync::Mutex;

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use rug::Integer;

use super::bytes::{int_from, put_int, wipe};
use super::keys::{random_below, random_bits};
use super::pack::{PackError, Packer};
use super::PublicKey;

/// A plaintext: an integer in `[0, n)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(pub(crate) Integer);

impl Plaintext {
    /// From big-endian bytes.
    pub fn from_be_bytes(bytes: &[u8]) -> Plaintext {
        Plaintext(int_from(bytes))
    }

    /// Minimal big-endian bytes (empty for zero).
    pub fn to_be_bytes(&self) -> Vec<u8> {
        self.0.to_digits(rug::integer::Order::Msf)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext({} bits)", self.0.significant_bits())
    }
}

/// A ciphertext: an element of Z*_{n²}.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(Integer);

impl Ciphertext {
    pub(crate) fn from_integer(x: Integer) -> Self {
        Ciphertext(x)
    }

    pub(crate) fn as_integer(&self) -> &Integer {
        &self.0
    }

    /// Exactly [`PublicKey::ciphertext_len`] big-endian bytes (see also
    /// [`encode_ciphertexts`](super::encode_ciphertexts) for vectors).
    pub fn to_bytes(&self, pk: &PublicKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(pk.ciphertext_len());
        put_int(&mut out, &self.0, pk.ciphertext_len());
        out
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = crate::Hash::of(
            "fedmesh paillier v1 debug",
            &self.0.to_digits::<u8>(rug::integer::Order::Msf),
        );
        write!(f, "Ciphertext({})", h.short())
    }
}

impl PublicKey {
    /// Encrypt `m < n` with the randomness term `rn = r^n mod n²`.
    pub(crate) fn encrypt_with(&self, m: &Plaintext, rn: &Integer) -> Ciphertext {
        let mut c = Integer::from(&m.0 * self.n());
        c += 1u32;
        c *= rn;
        c %= self.n_squared();
        Ciphertext(c)
    }

    /// `r^n mod n²` for a uniform `r` in `[1, n)`: the expensive part of an encryption.
    pub(crate) fn fresh_randomness<R: RngCore + ?Sized>(&self, rng: &mut R) -> Integer {
        let mut r = random_below(self.n(), rng);
        if r == 0 {
            r += 1u32;
        }
        r.pow_mod(self.n(), self.n_squared())
            .expect("positive exponent")
    }

    /// Encrypt one plaintext with fresh randomness (slow: one full exponentiation). Errors if
    /// `m ≥ n`.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &self,
        m: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext, EncryptError> {
        if m.0 >= *self.n() || m.0 < 0 {
            return Err(EncryptError::PlaintextRange);
        }
        Ok(self.encrypt_with(m, &self.fresh_randomness(rng)))
    }

    /// The homomorphic sum of two ciphertexts: `Enc(a) · Enc(b) = Enc(a + b mod n)`.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Ciphertext {
        Ciphertext(Integer::from(&a.0 * &b.0) % self.n_squared())
    }
}

/// Fixed-base table for the short-exponent variant: randomness `h^x mod n²` with a fixed random
/// n-th residue `h = r₀^n` and a fresh [`SHORT_EXPONENT_BITS`](Self::SHORT_EXPONENT_BITS)-bit `x`,
/// computed from a table of `h^(j·2^(8k))` in 64 multiplications instead of one 2048-bit
/// exponentiation (about 30 times faster).
///
/// # Security assumption
/// Semantic security then rests on the *short-exponent* variant of the decisional composite
/// residuosity assumption (Damgård–Jurik 2001, §4.2; Damgård–Jurik–Nielsen 2010): that `h^x` with a
/// 512-bit `x` cannot be told from a uniformly random n-th residue. It is a standard, widely used
/// assumption, but a stronger one than plain DCR; use [`Pool::fill`] (uniform `r`) where only DCR
/// is acceptable.
pub struct FixedBase {
    n: Integer,
    n_squared: Integer,
    /// `table[k][j − 1] = h^(j · 2^(8k))` for j in 1..=255.
    table: Vec<Vec<Integer>>,
}

impl FixedBase {
    /// Bits of the short exponent `x`: twice a 256-bit security level.
    pub const SHORT_EXPONENT_BITS: u32 = 512;
    const WINDOW: u32 = 8;

    /// Draw `h` and build the table (256 · 64 multiplications, parallel over windows).
    pub fn new<R: RngCore + CryptoRng>(pk: &PublicKey, rng: &mut R) -> FixedBase {
        let h = pk.fresh_randomness(rng);
        let windows = Self::SHORT_EXPONENT_BITS / Self::WINDOW;
        // Bases h^(2^(8k)) by repeated squaring, then each window's powers in parallel.
        let mut bases = Vec::with_capacity(windows as usize);
        let mut b = h;
        for _ in 0..windows {
            bases.push(b.clone());
            for _ in 0..Self::WINDOW {
                b.square_mut();
                b %= pk.n_squared();
            }
        }
        let table = bases
            .into_par_iter()
            .map(|base| {
                let mut row = Vec::with_capacity(255);
                let mut acc = base.clone();
                row.push(acc.clone());
                for _ in 2..=255 {
                    acc *= &base;
                    acc %= pk.n_squared();
                    row.push(acc.clone());
                }
                row
            })
            .collect();
        FixedBase {
            n: pk.n().clone(),
            n_squared: pk.n_squared().clone(),
            table,
        }
    }

    /// `h^x mod n²` for a fresh short `x`.
    fn randomness<R: RngCore + ?Sized>(&self, rng: &mut R) -> Integer {
        let x = zeroize::Zeroizing::new({
            let x = random_bits(Self::SHORT_EXPONENT_BITS, rng);
            let mut digits = vec![0u8; (Self::SHORT_EXPONENT_BITS / 8) as usize];
            x.write_digits(&mut digits, rug::integer::Order::Lsf);
            digits
        });
        let mut acc = Integer::from(1);
        for (k, &byte) in x.iter().enumerate() {
            if byte != 0 {
                acc *= &self.table[k][byte as usize - 1];
                acc %= &self.n_squared;
            }
        }
        acc
    }
}

impl fmt::Debug for FixedBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paillier::FixedBase({} windows)", self.table.len())
    }
}

/// Precomputed encryption randomness (`r^n mod n²` values) for one public key.
///
/// Fill it while the model trains ([`fill`](Self::fill) on all cores); each encryption then takes
/// one value. Values are used once and removed. A pool is bound to the key it was first filled
/// for: values for another key are never handed out.
///
/// # Security
/// The values are as secret as the randomness of an encryption (whoever knows `r^n` for a
/// ciphertext can strip it and read the plaintext): a pool stays in its member's memory.
#[derive(Default)]
pub struct Pool {
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    n: Option<Integer>,
    values: Vec<Integer>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.values.iter_mut().for_each(wipe);
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paillier::Pool({} values, <redacted>)", self.len())
    }
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Pool {
        Pool::default()
    }

    /// Values ready.
    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        // A panic while holding the lock leaves a valid Vec behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add `count` values `r^n mod n²` with uniform `r` (plain DCR security), computed on all
    /// cores. Each value gets its own ChaCha20 stream seeded from `rng`.
    pub fn fill<R: RngCore + CryptoRng>(&self, pk: &PublicKey, count: usize, rng: &mut R) {
        let values = parallel_values(count, rng, |r| pk.fresh_randomness(r));
        self.push(pk.n(), values);
    }

    /// Add `count` values from the short-exponent fixed-base table (see [`FixedBase`] for the
    /// assumption), about 30 times faster than [`fill`](Self::fill).
    pub fn fill_short<R: RngCore + CryptoRng>(&self, base: &FixedBase, count: usize, rng: &mut R) {
        let values = parallel_values(count, rng, |r| base.randomness(r));
        self.push(&base.n, values);
    }

    fn push(&self, n: &Integer, values: Vec<Integer>) {
        let mut inner = self.lock();
        if inner.n.as_ref() != Some(n) {
            inner.values.iter_mut().for_each(wipe);
            inner.values.clear();
            inner.n = Some(n.clone());
        }
        inner.values.extend(values);
    }

    /// Up to `count` values for `pk` (fewer if the pool runs short).
    fn take(&self, pk: &PublicKey, count: usize) -> Vec<Integer> {
        let mut inner = self.lock();
        if inner.n.as_ref() != Some(pk.n()) {
            return Vec::new();
        }
        let keep = inner.values.len().saturating_sub(count);
        inner.values.split_off(keep)
    }
}

fn parallel_values<R, F>(count: usize, rng: &mut R, f: F) -> Vec<Integer>
where
    R: RngCore + CryptoRng,
    F: Fn(&mut ChaCha20Rng) -> Integer + Sync,
{
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    (0..count as u64)
        .into_par_iter()
        .map(|i| {
            let mut r = ChaCha20Rng::from_seed(*seed);
            r.set_stream(i);
            f(&mut r)
        })
        .collect()
}

/// A member's encrypted update.
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// One ciphertext per packed plaintext.
    pub ciphertexts: Vec<Ciphertext>,
    /// The quantized values that were encrypted (the decrypted sum equals the sum of these).
    pub quantized: Vec<i64>,
    /// Values outside ±clip that were clipped.
    pub clipped: usize,
    /// Ciphertexts whose randomness the pool could not supply and that were computed on the spot.
    pub fresh: usize,
}

/// Why values could not be encrypted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    #[error("plaintext is not in [0, n)")]
    PlaintextRange,
    #[error("the packer was made for a {packer}-bit key, not this {key}-bit one")]
    KeyMismatch { packer: u32, key: u32 },
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// Quantize (stochastic rounding from `rng`), pack and encrypt `values`, taking randomness from
/// `pool` and computing any shortfall on the spot; all cores.
pub fn encrypt_packed<R: RngCore + CryptoRng>(
    pk: &PublicKey,
    packer: &Packer,
    values: &[f32],
    pool: &Pool,
    rng: &mut R,
) -> Result<Encrypted, EncryptError> {
    if packer.key_bits() != pk.bits() {
        return Err(EncryptError::KeyMismatch {
            packer: packer.key_bits(),
            key: pk.bits(),
        });
    }
    let quantized = packer.quantize(values, rng)?;
    let plaintexts = packer.pack(&quantized.values)?;
    let mut randomness = pool.take(pk, plaintexts.len());
    let fresh = plaintexts.len() - randomness.len();
    randomness.extend(parallel_values(fresh, rng, |r| pk.fresh_randomness(r)));
    let ciphertexts = plaintexts
        .par_iter()
        .zip(randomness.par_iter())
        .map(|(m, rn)| pk.encrypt_with(m, rn))
        .collect();
    randomness.iter_mut().for_each(wipe);
    Ok(Encrypted {
        ciphertexts,
        quantized: quantized.values,
        clipped: quantized.clipped,
        fresh,
    })
}

/// Vectors of different lengths cannot be summed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SumError {
    #[error("nothing to sum")]
    Empty,
    #[error("vector {position} has {found} ciphertexts, the first has {expected}")]
    Length {
        position: usize,
        found: usize,
        expected: usize,
    },
}

/// The element-wise homomorphic sum (product modulo n²) of several members' ciphertext vectors,
/// in parallel over positions.
pub fn sum<V: AsRef<[Ciphertext]> + Sync>(
    pk: &PublicKey,
    vectors: &[V],
) -> Result<Vec<Ciphertext>, SumError> {
    let first = vectors.first().ok_or(SumError::Empty)?.as_ref();
    for (position, v) in vectors.iter().enumerate() {
        if v.as_ref().len() != first.len() {
            return Err(SumError::Length {
                position,
                found: v.as_ref().len(),
                expected: first.len(),
            });
        }
    }
    Ok((0..first.len())
        .into_par_iter()
        .map(|j| {
            let mut acc = first[j].0.clone();
            for v in &vectors[1..] {
                acc *= &v.as_ref()[j].0;
                acc %= pk.n_squared();
            }
            Ciphertext(acc)
        })
        .collect())
}
