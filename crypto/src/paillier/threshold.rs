//! Partial decryption with a proof of correctness, its verification, and combination.
//!
//! Member `i` publishes `c_j^{2Δ s_i}` for every ciphertext `c_j` of a vector. One proof covers the
//! whole vector: weights `ρ_j` (128 bits, from a hash of everything public) fold the ciphertexts
//! into `C = Π c_j^{ρ_j}` and the partials into `P = Π p_j^{ρ_j}`, and a Chaum–Pedersen proof in the
//! style of Shoup shows `log_{C⁴}(P²) = log_v(v_i)` (= Δ s_i). A partial that is wrong in any
//! position passes only if the weights happen to cancel the error, with probability about 2^-128.
//! The squares (`C⁴`, `P²`) remove the order-2 components that Z*_{n²} has besides the squares.

use std::fmt;

use rand::{CryptoRng, RngCore};
use rayon::prelude::*;
use rug::Integer;

use super::bytes::{int_from, put_int, wipe, DecodeError, Reader};
use super::keys::random_bits;
use super::multiexp;
use super::{Ciphertext, KeyShare, Plaintext, PublicKey, VerificationKeys, FORMAT_VERSION};
use crate::hash::Hasher;

const KIND_PARTIAL: u8 = b'D';
/// Statistical hiding of the secret exponent in the proof's response, in bits.
const HIDING_BITS: u32 = 128;
const CHALLENGE_BITS: u32 = 256;

/// A non-interactive proof of equality of discrete logarithms (challenge `e`, response `z`).
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    e: [u8; 32],
    z: Integer,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof(e = {})", hex::encode(&self.e[..8]))
    }
}

/// One member's partial decryption of a ciphertext vector, with its proof.
#[derive(Clone, PartialEq, Eq)]
pub struct PartialDecryption {
    index: u32,
    values: Vec<Integer>,
    proof: Proof,
}

impl fmt::Debug for PartialDecryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartialDecryption(member {}, {} values, {:?})",
            self.index(),
            self.values.len(),
            self.proof
        )
    }
}

/// Why a member could not compute its partial decryption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    #[error("the key share (member {index}, {share_bits} bits, {parties} parties) does not belong to this {key_bits}-bit key with {vk_parties} verification keys")]
    KeyMismatch {
        index: u32,
        share_bits: u32,
        key_bits: u32,
        parties: usize,
        vk_parties: usize,
    },
    #[error("ciphertext {position} is not in Z*_n²")]
    Ciphertext { position: usize },
}

/// A partial decryption that must be rejected; `culprit` is the member that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("member {culprit}'s partial decryption has a wrong proof")]
    BadProof { culprit: u32 },
    #[error("partial decryption from member {culprit}, which holds no key share")]
    UnknownMember { culprit: u32 },
    #[error("member {culprit}'s partial decryption has {found} values for {expected} ciphertexts")]
    Length {
        culprit: u32,
        found: usize,
        expected: usize,
    },
}

/// Why partials could not be combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CombineError {
    #[error("{have} partial decryptions, {need} needed: nothing can be decrypted")]
    NotEnough { have: usize, need: usize },
    #[error("two partial decryptions from member {index}")]
    Duplicate { index: u32 },
    #[error("member {index} holds no key share")]
    UnknownMember { index: u32 },
    #[error("member {index}'s partial decryption has {found} values, another has {expected}")]
    Length {
        index: u32,
        found: usize,
        expected: usize,
    },
    #[error("the partials do not combine to a valid plaintext at position {position} (was every partial verified?)")]
    Inconsistent { position: usize },
}

impl KeyShare {
    /// Partially decrypt `ciphertexts` (`c_j^{2Δ s_i}` for each, in parallel) and prove it.
    /// `context` (e.g. network, round and the hash of the ciphertexts) is bound into the proof, so
    /// a proof cannot be replayed elsewhere; the verifier passes the same bytes.
    pub fn decrypt_share<R: RngCore + CryptoRng>(
        &self,
        pk: &PublicKey,
        vks: &VerificationKeys,
        ciphertexts: &[Ciphertext],
        context: &[u8],
        rng: &mut R,
    ) -> Result<PartialDecryption, ShareError> {
        let vi = vks
            .key(self.index())
            .filter(|_| self.key_bits() == pk.bits() && vks.parties() == self.parties());
        let Some(vi) = vi else {
            return Err(ShareError::KeyMismatch {
                index: self.index(),
                share_bits: self.key_bits(),
                key_bits: pk.bits(),
                parties: self.parties(),
                vk_parties: vks.parties(),
            });
        };
        let n2 = pk.n_squared();
        if let Some(position) = ciphertexts
            .iter()
            .position(|c| *c.as_integer() <= 0 || c.as_integer() >= n2)
        {
            return Err(ShareError::Ciphertext { position });
        }
        // x = Δ s_i; partials use 2x.
        let mut x = Integer::from(vks.delta() * self.secret());
        let mut two_x = Integer::from(&x << 1);
        let values: Vec<Integer> = ciphertexts
            .par_iter()
            .map(|c| {
                if two_x == 0 {
                    Integer::from(1)
                } else {
                    c.as_integer().clone().secure_pow_mod(&two_x, n2)
                }
            })
            .collect();
        wipe(&mut two_x);
        let statement = Statement::new(pk, vks, self.index(), vi, ciphertexts, &values, context);
        let r_bits = response_bits(pk, vks) - 1;
        let mut r = random_bits(r_bits, rng);
        if r == 0 {
            r += 1u32;
        }
        let a = statement.base.clone().secure_pow_mod(&r, n2);
        let b = vks.v().clone().secure_pow_mod(&r, n2);
        let e = statement.challenge(&a, &b);
        let mut z = int_from(&e) * &x;
        z += &r;
        wipe(&mut r);
        wipe(&mut x);
        Ok(PartialDecryption {
            index: self.index(),
            values,
            proof: Proof { e, z },
        })
    }
}

/// Bits of the proof's response `z = r + e·Δ·s_i`: `r` hides `e·Δ·s_i` (< 2^(|Δ| + 2|n| + 256)).
fn response_bits(pk: &PublicKey, vks: &VerificationKeys) -> u32 {
    vks.delta().significant_bits() + 2 * pk.bits() + CHALLENGE_BITS + HIDING_BITS + 1
}

/// The public statement `log_{C⁴}(P²) = log_v(v_i)` for one partial decryption.
struct Statement<'a> {
    pk: &'a PublicKey,
    /// C⁴.
    base: Integer,
    /// P².
    image: Integer,
    v: &'a Integer,
    vi: &'a Integer,
    /// Hash of everything public, the seed of the weights and of the challenge.
    seed: crate::Hash,
}

impl<'a> Statement<'a> {
    fn new(
        pk: &'a PublicKey,
        vks: &'a VerificationKeys,
        index: u32,
        vi: &'a Integer,
        ciphertexts: &[Ciphertext],
        values: &[Integer],
        context: &[u8],
    ) -> Self {
        let len = pk.ciphertext_len();
        let mut h = Hasher::new("fedmesh paillier v1 partial decryption");
        h.update_field(context);
        h.update_field(&pk.to_bytes());
        h.update(&index.to_le_bytes());
        let mut buf = Vec::with_capacity(len);
        for x in [vks.v(), vi]
            .into_iter()
            .chain(ciphertexts.iter().map(Ciphertext::as_integer))
            .chain(values)
        {
            buf.clear();
            put_int(&mut buf, x, len);
            h.update(&buf);
        }
        h.update(&(ciphertexts.len() as u64).to_le_bytes());
        let seed = h.finalize();
        let n2 = pk.n_squared();
        // One weight per position, the same for the ciphertexts and the partials; both folds are
        // products of many powers with short public exponents (the bucket method, all cores).
        let weights: Vec<Integer> = (0..ciphertexts.len() as u64)
            .into_par_iter()
            .map(|j| {
                let w = Hasher::new("fedmesh paillier v1 batch weight")
                    .chain(seed.as_bytes())
                    .chain(&j.to_le_bytes())
                    .finalize();
                int_from(&w.as_bytes()[..16]) + 1u32
            })
            .collect();
        let cts: Vec<&Integer> = ciphertexts.iter().map(Ciphertext::as_integer).collect();
        let vals: Vec<&Integer> = values.iter().collect();
        let c = multiexp::product_of_powers(&cts, &weights, n2);
        let p = multiexp::product_of_powers(&vals, &weights, n2);
        let base = c.pow_mod(&Integer::from(4), n2).expect("positive exponent");
        let image = p.square() % n2;
        Statement {
            pk,
            base,
            image,
            v: vks.v(),
            vi,
            seed,
        }
    }

    fn challenge(&self, a: &Integer, b: &Integer) -> [u8; 32] {
        let len = self.pk.ciphertext_len();
        let mut h = Hasher::new("fedmesh paillier v1 dleq challenge");
        h.update(self.seed.as_bytes());
        let mut buf = Vec::with_capacity(len);
        for x in [&self.base, &self.image, a, b] {
            buf.clear();
            put_int(&mut buf, x, len);
            h.update(&buf);
        }
        h.finalize().0
    }
}

impl VerificationKeys {
    /// Check `partial` against the ciphertexts it claims to decrypt and the sender's verification
    /// key; `context` must be the bytes the sender bound into its proof.
    pub fn verify(
        &self,
        pk: &PublicKey,
        ciphertexts: &[Ciphertext],
        partial: &PartialDecryption,
        context: &[u8],
    ) -> Result<(), VerifyError> {
        let culprit = partial.index;
        let vi = self
            .key(culprit)
            .ok_or(VerifyError::UnknownMember { culprit })?;
        if partial.values.len() != ciphertexts.len() {
            return Err(VerifyError::Length {
                culprit,
                found: partial.values.len(),
                expected: ciphertexts.len(),
            });
        }
        let n2 = pk.n_squared();
        let z = &partial.proof.z;
        if *z <= 0 || z.significant_bits() > response_bits(pk, self) {
            return Err(VerifyError::BadProof { culprit });
        }
        let statement =
            Statement::new(pk, self, culprit, vi, ciphertexts, &partial.values, context);
        let minus_e = -int_from(&partial.proof.e);
        // a = (C⁴)^z · (P²)^(−e), b = v^z · v_i^(−e); both inverses exist for honest values.
        let recompute = |base: &Integer, image: &Integer| -> Option<Integer> {
            let lhs = base.clone().pow_mod(z, n2).ok()?;
            let rhs = image.clone().pow_mod(&minus_e, n2).ok()?;
            Some(lhs * rhs % n2)
        };
        let a = recompute(&statement.base, &statement.image);
        let b = recompute(statement.v, statement.vi);
        match (a, b) {
            (Some(a), Some(b)) if statement.challenge(&a, &b) == partial.proof.e => Ok(()),
            _ => Err(VerifyError::BadProof { culprit }),
        }
    }
}

impl PartialDecryption {
    /// The member that made it.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Number of ciphertexts it decrypts.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Version, kind, index (u32), count (u32), each value in [`PublicKey::ciphertext_len`] bytes,
    /// the challenge (32 bytes), then the response: length (u16) and big-endian bytes.
    pub fn to_bytes(&self, pk: &PublicKey) -> Vec<u8> {
        let len = pk.ciphertext_len();
        let z = self.proof.z.to_digits::<u8>(rug::integer::Order::Msf);
        let mut out = Vec::with_capacity(48 + self.values.len() * len + z.len());
        out.extend_from_slice(&[FORMAT_VERSION, KIND_PARTIAL]);
        out.extend_from_slice(&self.index().to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for v in &self.values {
            put_int(&mut out, v, len);
        }
        out.extend_from_slice(&self.proof.e);
        out.extend_from_slice(&(z.len() as u16).to_le_bytes());
        out.extend_from_slice(&z);
        out
    }

    /// Decode a partial of at most `max` values for `pk` and `vks`: every value in `[1, n²)`, the
    /// response no longer than an honest one can be. The proof itself is checked by
    /// [`VerificationKeys::verify`].
    pub fn from_bytes(
        pk: &PublicKey,
        vks: &VerificationKeys,
        bytes: &[u8],
        max: usize,
    ) -> Result<Self, DecodeError> {
        let what = "Paillier partial decryption";
        let mut r = Reader::new(bytes, what, KIND_PARTIAL)?;
        let index = r.u32()?;
        let len = pk.ciphertext_len();
        let count = r.count(max, len)?;
        let values = (0..count)
            .map(|_| r.int_below(len, pk.n_squared(), "value not in [1, n²)"))
            .collect::<Result<Vec<_>, _>>()?;
        let e: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
        let z_len = r.u16()? as usize;
        if z_len > (response_bits(pk, vks) as usize).div_ceil(8) {
            return Err(DecodeError::Range {
                what,
                detail: "proof response longer than an honest one",
            });
        }
        let z = int_from(r.take(z_len)?);
        r.finish()?;
        Ok(PartialDecryption {
            index,
            values,
            proof: Proof { e, z },
        })
    }
}

/// Combine verified partial decryptions (any `threshold` of them; further ones are ignored) into
/// the plaintexts. Call [`VerificationKeys::verify`] on each first: combination cannot tell which
/// partial is wrong.
pub fn combine(
    pk: &PublicKey,
    vks: &VerificationKeys,
    partials: &[PartialDecryption],
) -> Result<Vec<Plaintext>, CombineError> {
    let t = vks.threshold();
    if partials.len() < t {
        return Err(CombineError::NotEnough {
            have: partials.len(),
            need: t,
        });
    }
    for (i, p) in partials.iter().enumerate() {
        if vks.key(p.index).is_none() {
            return Err(CombineError::UnknownMember { index: p.index });
        }
        if partials[..i].iter().any(|q| q.index == p.index) {
            return Err(CombineError::Duplicate { index: p.index });
        }
    }
    let chosen = &partials[..t];
    let expected = chosen[0].values.len();
    if let Some(p) = chosen.iter().find(|p| p.values.len() != expected) {
        return Err(CombineError::Length {
            index: p.index,
            found: p.values.len(),
            expected,
        });
    }
    // 2λ_i with λ_i = Δ · Π_{j≠i} x_j / (x_j − x_i), an integer because Δ = parties!.
    let xs: Vec<i64> = chosen.iter().map(|p| p.index as i64 + 1).collect();
    let exponents: Vec<Integer> = xs
        .iter()
        .map(|&xi| {
            let mut num = Integer::from(vks.delta() * 2u32);
            let mut den = Integer::from(1);
            for &xj in xs.iter().filter(|&&xj| xj != xi) {
                num *= xj;
                den *= xj - xi;
            }
            num.div_exact(&den)
        })
        .collect();
    let n = pk.n();
    let n2 = pk.n_squared();
    // (4Δ²)^(−1) mod n exists: n's prime factors are far larger than any factor of Δ.
    let four_delta_sq = Integer::from(vks.delta().square_ref()) * 4u32;
    let inv = four_delta_sq
        .invert(n)
        .map_err(|_| CombineError::Inconsistent { position: 0 })?;
    (0..expected)
        .into_par_iter()
        .map(|position| {
            let mut acc = Integer::from(1);
            for (p, e) in chosen.iter().zip(&exponents) {
                let term = p.values[position]
                    .clone()
                    .pow_mod(e, n2)
                    .map_err(|_| CombineError::Inconsistent { position })?;
                acc *= term;
                acc %= n2;
            }
            // acc = (1 + n)^(4Δ² M) = 1 + 4Δ² M n (mod n²).
            acc -= 1u32;
            if !acc.is_divisible(n) {
                return Err(CombineError::Inconsistent { position });
            }
            acc.div_exact_mut(n);
            acc *= &inv;
            acc %= n;
            Ok(Plaintext(acc))
        })
        .collect()
}
