//! Keys: the public modulus, the dealer's safe-prime key generation and Shamir dealing of the
//! decryption exponent, verification keys and key shares, with their byte formats.

use std::fmt;

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rug::integer::IsPrime;
use rug::Integer;

use super::bytes::{int_from, put_int, wipe, DecodeError, Reader};
use super::{FORMAT_VERSION, MAX_KEY_BITS, MIN_KEY_BITS};

/// Most members a key can be dealt to. Δ = parties! enters every partial decryption's exponent,
/// so this also bounds that cost (512! has about 3,900 bits).
pub const MAX_PARTIES: usize = 512;

const KIND_PUBLIC: u8 = b'P';
const KIND_VERIFICATION: u8 = b'V';
const KIND_SHARE: u8 = b'S';

/// The Paillier public key: the modulus `n = pq` (with `g = n + 1` implied).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    n: Integer,
    n_squared: Integer,
    bits: u32,
}

impl PublicKey {
    fn from_modulus(n: Integer, bits: u32) -> Result<Self, DecodeError> {
        let what = "Paillier public key";
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(DecodeError::Range {
                what,
                detail: "key size must be a multiple of 8 bits between 256 and 4096",
            });
        }
        if n.significant_bits() != bits || n.is_even() {
            return Err(DecodeError::Range {
                what,
                detail: "modulus must be odd with exactly the stated bits",
            });
        }
        let n_squared = n.clone().square();
        Ok(PublicKey { n, n_squared, bits })
    }

    /// The modulus size in bits (2048 or 3072 for real networks).
    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub(crate) fn n(&self) -> &Integer {
        &self.n
    }

    pub(crate) fn n_squared(&self) -> &Integer {
        &self.n_squared
    }

    /// Bytes of one encoded ciphertext (an element of Z_{n²}).
    pub fn ciphertext_len(&self) -> usize {
        2 * self.bits as usize / 8
    }

    /// Bits a plaintext may use so that it is always below `n`.
    pub fn plaintext_bits(&self) -> u32 {
        self.bits - 1
    }

    /// Version, kind, bits (u16 LE), then `n` big-endian in `bits / 8` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION, KIND_PUBLIC];
        out.extend_from_slice(&(self.bits as u16).to_le_bytes());
        put_int(&mut out, &self.n, self.bits as usize / 8);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "Paillier public key", KIND_PUBLIC)?;
        let bits = r.u16()? as u32;
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(DecodeError::Range {
                what: "Paillier public key",
                detail: "key size must be a multiple of 8 bits between 256 and 4096",
            });
        }
        let n = int_from(r.take(bits as usize / 8)?);
        r.finish()?;
        PublicKey::from_modulus(n, bits)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = crate::Hash::of("fedmesh paillier v1 public key", &self.to_bytes());
        write!(
            f,
            "paillier::PublicKey({} bits, {})",
            self.bits,
            hash.short()
        )
    }
}

/// The public verification keys: a generator `v` of the squares of Z*_{n²} and, for each member
/// `i`, `v_i = v^{Δ s_i}`. A partial decryption is accepted only with a proof against `v_i`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationKeys {
    threshold: u32,
    v: Integer,
    keys: Vec<Integer>,
    delta: Integer,
}

impl VerificationKeys {
    fn new(threshold: u32, v: Integer, keys: Vec<Integer>) -> Self {
        let delta = Integer::from(Integer::factorial(keys.len() as u32));
        VerificationKeys {
            threshold,
            v,
            keys,
            delta,
        }
    }

    /// Valid partial decryptions needed to decrypt.
    pub fn threshold(&self) -> usize {
        self.threshold as usize
    }

    /// Members the key was dealt to.
    pub fn parties(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn v(&self) -> &Integer {
        &self.v
    }

    pub(crate) fn key(&self, index: u32) -> Option<&Integer> {
        self.keys.get(index as usize)
    }

    /// Δ = parties!.
    pub(crate) fn delta(&self) -> &Integer {
        &self.delta
    }

    /// Version, kind, threshold (u32), parties (u32), `v`, then each `v_i`, each as
    /// [`PublicKey::ciphertext_len`] big-endian bytes.
    pub fn to_bytes(&self, pk: &PublicKey) -> Vec<u8> {
        let len = pk.ciphertext_len();
        let mut out = vec![FORMAT_VERSION, KIND_VERIFICATION];
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        put_int(&mut out, &self.v, len);
        for k in &self.keys {
            put_int(&mut out, k, len);
        }
        out
    }

    /// Decode keys for `pk`: 1 ≤ threshold ≤ parties ≤ [`MAX_PARTIES`], every value in `[1, n²)`.
    pub fn from_bytes(pk: &PublicKey, bytes: &[u8]) -> Result<Self, DecodeError> {
        let what = "Paillier verification keys";
        let mut r = Reader::new(bytes, what, KIND_VERIFICATION)?;
        let threshold = r.u32()?;
        let len = pk.ciphertext_len();
        let parties = r.count(MAX_PARTIES, len)?;
        if threshold == 0 || threshold as usize > parties {
            return Err(DecodeError::Range {
                what,
                detail: "threshold must be between 1 and the number of parties",
            });
        }
        let v = r.int_below(len, pk.n_squared(), "v not in [1, n²)")?;
        let keys = (0..parties)
            .map(|_| r.int_below(len, pk.n_squared(), "verification key not in [1, n²)"))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(VerificationKeys::new(threshold, v, keys))
    }
}

impl fmt::Debug for VerificationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "paillier::VerificationKeys({} of {})",
            self.threshold,
            self.keys.len()
        )
    }
}

/// One member's share `s_i = f(i + 1)` of the decryption exponent.
///
/// # Security
/// `threshold` shares decrypt every ciphertext under the key, so a share never leaves its
/// member's private folder (mode 0600). It is overwritten on drop (best effort, see the module
/// docs), `Debug` prints only the index, and it is used only in `mpz_powm_sec` exponentiations.
pub struct KeyShare {
    index: u32,
    threshold: u32,
    parties: u32,
    bits: u32,
    s: Integer,
}

impl KeyShare {
    /// The member index this share belongs to (its Shamir point is `index + 1`).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Valid partials needed to decrypt.
    pub fn threshold(&self) -> usize {
        self.threshold as usize
    }

    /// Members the key was dealt to.
    pub fn parties(&self) -> usize {
        self.parties as usize
    }

    pub(crate) fn secret(&self) -> &Integer {
        &self.s
    }

    /// Bits of the modulus this share belongs to.
    pub fn key_bits(&self) -> u32 {
        self.bits
    }

    /// Version, kind, bits (u16), index, threshold, parties (u32 each), `s_i` in
    /// [`PublicKey::ciphertext_len`] big-endian bytes. The result is secret: it wipes itself.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let len = 2 * self.bits as usize / 8;
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(16 + len));
        out.extend_from_slice(&[FORMAT_VERSION, KIND_SHARE]);
        out.extend_from_slice(&(self.bits as u16).to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&self.parties.to_le_bytes());
        put_int(&mut out, &self.s, len);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let what = "Paillier key share";
        let mut r = Reader::new(bytes, what, KIND_SHARE)?;
        let bits = r.u16()? as u32;
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(DecodeError::Range {
                what,
                detail: "key size must be a multiple of 8 bits between 256 and 4096",
            });
        }
        let (index, threshold, parties) = (r.u32()?, r.u32()?, r.u32()?);
        if parties as usize > MAX_PARTIES
            || threshold == 0
            || threshold > parties
            || index >= parties
        {
            return Err(DecodeError::Range {
                what,
                detail: "need 1 ≤ threshold ≤ parties ≤ 512 and index < parties",
            });
        }
        let s = int_from(r.take(2 * bits as usize / 8)?);
        r.finish()?;
        Ok(KeyShare {
            index,
            threshold,
            parties,
            bits,
            s,
        })
    }
}

impl zeroize::Zeroize for KeyShare {
    fn zeroize(&mut self) {
        wipe(&mut self.s);
    }
}

impl Drop for KeyShare {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl zeroize::ZeroizeOnDrop for KeyShare {}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paillier::KeyShare(index = {}, <redacted>)", self.index)
    }
}

/// Everything the dealer produces: the public parts for the genesis file and one share per member.
#[derive(Debug)]
pub struct Dealing {
    pub public: PublicKey,
    pub verification: VerificationKeys,
    /// `shares[i]` belongs to member `i`.
    pub shares: Vec<KeyShare>,
}

/// Why the dealer could not deal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DealError {
    #[error(
        "key size {0} bits: choose a multiple of 16 between 256 and 4096 (2048 is the default)"
    )]
    KeyBits(u32),
    #[error(
        "threshold {threshold} must be between 1 and the {parties} parties (at most {MAX_PARTIES})"
    )]
    Threshold { threshold: usize, parties: usize },
    #[error("the given primes are not two distinct safe primes of equal size: {0}")]
    Primes(&'static str),
}

/// A secret integer that is wiped when dropped.
struct Secret(Integer);

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Deal a fresh `key_bits` key (two safe primes of `key_bits / 2` bits, drawn on two cores) so that
/// any `threshold` of `parties` members can decrypt.
pub fn deal<R: RngCore + CryptoRng>(
    key_bits: u32,
    threshold: usize,
    parties: usize,
    rng: &mut R,
) -> Result<Dealing, DealError> {
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&key_bits) || !key_bits.is_multiple_of(16) {
        return Err(DealError::KeyBits(key_bits));
    }
    check_threshold(threshold, parties)?;
    let (mut seed_p, mut seed_q) = ([0u8; 32], [0u8; 32]);
    rng.fill_bytes(&mut seed_p);
    rng.fill_bytes(&mut seed_q);
    let half = key_bits / 2;
    let (p, q) = rayon::join(
        || Secret(safe_prime(half, &mut ChaCha20Rng::from_seed(seed_p))),
        || Secret(safe_prime(half, &mut ChaCha20Rng::from_seed(seed_q))),
    );
    zeroize::Zeroize::zeroize(&mut seed_p);
    zeroize::Zeroize::zeroize(&mut seed_q);
    deal_with(&p.0, &q.0, threshold, parties, rng)
}

/// Deal from given safe primes (big-endian bytes): for test fixtures and for keys generated
/// elsewhere. Checks that both are safe primes of the same size and distinct.
pub fn deal_from_primes<R: RngCore + CryptoRng>(
    p: &[u8],
    q: &[u8],
    threshold: usize,
    parties: usize,
    rng: &mut R,
) -> Result<Dealing, DealError> {
    check_threshold(threshold, parties)?;
    let (p, q) = (Secret(int_from(p)), Secret(int_from(q)));
    for x in [&p.0, &q.0] {
        let half: Integer = Integer::from(x - 1u32) >> 1;
        if x.is_probably_prime(30) == IsPrime::No || half.is_probably_prime(30) == IsPrime::No {
            return Err(DealError::Primes("not a safe prime"));
        }
    }
    if p.0 == q.0 || p.0.significant_bits() != q.0.significant_bits() {
        return Err(DealError::Primes("equal or of different sizes"));
    }
    let bits = Integer::from(&p.0 * &q.0).significant_bits();
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) || !bits.is_multiple_of(16) {
        return Err(DealError::KeyBits(bits));
    }
    deal_with(&p.0, &q.0, threshold, parties, rng)
}

fn check_threshold(threshold: usize, parties: usize) -> Result<(), DealError> {
    if threshold == 0 || threshold > parties || parties > MAX_PARTIES {
        return Err(DealError::Threshold { threshold, parties });
    }
    Ok(())
}

fn deal_with<R: RngCore + CryptoRng>(
    p: &Integer,
    q: &Integer,
    threshold: usize,
    parties: usize,
    rng: &mut R,
) -> Result<Dealing, DealError> {
    let n = Integer::from(p * q);
    let bits = n.significant_bits();
    let public = PublicKey::from_modulus(n, bits).map_err(|_| DealError::KeyBits(bits))?;
    let n = public.n();
    // m = p'q', the order of the squares modulo n (safe primes: p = 2p' + 1).
    let m = Secret(Integer::from(p >> 1) * Integer::from(q >> 1));
    let nm = Secret(Integer::from(n * &m.0));
    // d ≡ 0 (mod m) and d ≡ 1 (mod n).
    let m_inv = Secret(
        m.0.clone()
            .invert(n)
            .map_err(|_| DealError::Primes("m is not invertible modulo n"))?,
    );
    let d = Secret(Integer::from(&m.0 * &m_inv.0) % &nm.0);
    // f(X) = d + a_1 X + … + a_{t−1} X^{t−1} over Z_{nm}.
    let mut coefficients = vec![Secret(d.0.clone())];
    for _ in 1..threshold {
        coefficients.push(Secret(random_below(&nm.0, rng)));
    }
    // v: a random square; with overwhelming probability it generates the squares of Z*_{n²}.
    let r = Secret(random_below(public.n_squared(), rng));
    let v = r.0.clone().square() % public.n_squared();
    let delta = Integer::from(Integer::factorial(parties as u32));
    let shares: Vec<KeyShare> = (0..parties as u32)
        .map(|index| {
            let x = Integer::from(index + 1);
            let mut y = Integer::new();
            for c in coefficients.iter().rev() {
                y *= &x;
                y += &c.0;
                y %= &nm.0;
            }
            KeyShare {
                index,
                threshold: threshold as u32,
                parties: parties as u32,
                bits,
                s: y,
            }
        })
        .collect();
    use rayon::prelude::*;
    let keys: Vec<Integer> = shares
        .par_iter()
        .map(|s| {
            let e = Secret(Integer::from(&delta * &s.s));
            v.clone().secure_pow_mod(&e.0, public.n_squared())
        })
        .collect();
    let verification = VerificationKeys::new(threshold as u32, v, keys);
    Ok(Dealing {
        public,
        verification,
        shares,
    })
}

/// A uniform integer in `[0, bound)` (statistical distance below 2^-128).
pub(crate) fn random_below<R: RngCore + ?Sized>(bound: &Integer, rng: &mut R) -> Integer {
    let mut buf = zeroize::Zeroizing::new(vec![
        0u8;
        (bound.significant_bits() as usize).div_ceil(8) + 16
    ]);
    rng.fill_bytes(&mut buf);
    int_from(&buf) % bound
}

/// A uniform integer of at most `bits` bits.
pub(crate) fn random_bits<R: RngCore + ?Sized>(bits: u32, rng: &mut R) -> Integer {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; (bits as usize).div_ceil(8)]);
    rng.fill_bytes(&mut buf);
    int_from(&buf).keep_bits(bits)
}

/// Small odd primes for the sieve.
fn small_primes() -> Vec<u32> {
    const LIMIT: usize = 1 << 15;
    let mut composite = vec![false; LIMIT];
    let mut out = Vec::new();
    for i in 3..LIMIT {
        if !composite[i] {
            out.push(i as u32);
            let mut j = i * i;
            while j < LIMIT {
                composite[j] = true;
                j += i;
            }
        }
    }
    out
}

/// A safe prime `p = 2q + 1` of exactly `bits` bits whose top two bits are set (so that the
/// product of two has exactly twice the bits).
///
/// Candidates `q ≡ 5 (mod 6)` advance by 6 from a random start; a sieve over the small primes
/// `r` rejects those where `r | q` or `r | 2q + 1` (i.e. `q ≡ (r − 1)/2 mod r`) before any
/// exponentiation; survivors face a base-2 Fermat test on `q` and `p`, then Miller–Rabin.
pub(crate) fn safe_prime<R: RngCore + ?Sized>(bits: u32, rng: &mut R) -> Integer {
    let primes = small_primes();
    loop {
        let mut q = random_bits(bits - 1, rng);
        q.set_bit(bits - 2, true);
        q.set_bit(bits - 3, true);
        let r6 = q.mod_u(6);
        q += (5 + 6 - r6) % 6;
        let mut residues: Vec<u32> = primes.iter().map(|&r| q.mod_u(r)).collect();
        let two = Integer::from(2);
        // q > every sieving prime (bits ≥ 128), so a zero residue means composite. A run of 2^20
        // steps stays far below the next bit length; start over if it finds nothing.
        for _ in 0..(1u32 << 20) {
            let sieved = primes
                .iter()
                .zip(&residues)
                .all(|(&r, &x)| x != 0 && x != (r - 1) / 2);
            if sieved {
                let p = Integer::from(&q << 1) + 1u32;
                let fermat = |x: &Integer| {
                    let e = Integer::from(x - 1u32);
                    two.clone().pow_mod(&e, x).map(|y| y == 1).unwrap_or(false)
                };
                if fermat(&q)
                    && fermat(&p)
                    && q.is_probably_prime(25) != IsPrime::No
                    && p.is_probably_prime(25) != IsPrime::No
                    && p.significant_bits() == bits
                {
                    return p;
                }
            }
            q += 6u32;
            for (x, &r) in residues.iter_mut().zip(&primes) {
                *x = (*x + 6) % r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_primes_are_safe_and_sized() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for bits in [128, 192] {
            let p = safe_prime(bits, &mut rng);
            assert_eq!(p.significant_bits(), bits);
            assert!(p.get_bit(bits - 2), "second bit set");
            assert_ne!(p.is_probably_prime(30), IsPrime::No);
            assert_ne!(Integer::from(&p >> 1).is_probably_prime(30), IsPrime::No);
        }
    }

    #[test]
    fn deal_rejects_bad_parameters() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        assert!(matches!(
            deal(100, 1, 1, &mut rng),
            Err(DealError::KeyBits(100))
        ));
        assert!(matches!(
            deal(512, 0, 3, &mut rng),
            Err(DealError::Threshold { .. })
        ));
        assert!(matches!(
            deal(512, 4, 3, &mut rng),
            Err(DealError::Threshold { .. })
        ));
        // 23 = 2·11 + 1 is safe, 29 = 2·14 + 1 is not.
        assert!(matches!(
            deal_from_primes(&[23], &[29], 1, 1, &mut rng),
            Err(DealError::Primes(_))
        ));
    }

    #[test]
    fn secrets_are_redacted() {
        let share = KeyShare {
            index: 2,
            threshold: 1,
            parties: 3,
            bits: 256,
            s: Integer::from(0xdead_beefu32),
        };
        let text = format!("{share:?}");
        assert!(
            text.contains("redacted") && !text.contains("3735928559") && !text.contains("deadbeef"),
            "{text}"
        );
    }
}
