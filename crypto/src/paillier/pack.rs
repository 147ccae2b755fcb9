//! Fixed-point quantization and packing of many values into one Paillier plaintext.
//!
//! A value `x` is clipped to `±clip` (counted), scaled by `(2^(b−1) − 1)/clip` and rounded
//! stochastically (up with probability equal to the fraction, so the rounding is unbiased) to an
//! integer `q` with `|q| ≤ 2^(b−1) − 1`. It is stored offset by `2^(b−1) − 1`, so that every slot
//! holds a non-negative `u < 2^b`. Each slot is `b + ⌈log₂ members⌉` bits wide: the sum of up to
//! `members` slots cannot carry into its neighbour, and the plaintext (slots × width ≤ |n| − 1 bits)
//! stays below `n`. The decrypted sum of `k` members' vectors gives back `Σ q = Σ u − k·offset`
//! per value, exactly.

use rand::{Rng, RngCore};
use rug::integer::Order;
use rug::Integer;

use super::{Plaintext, PublicKey};

/// Why values could not be quantized, packed or unpacked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error("value_bits {0} must be between 2 and 32")]
    ValueBits(u32),
    #[error("clip {0} must be a positive finite number")]
    Clip(f32),
    #[error("members {0} must be between 1 and 2^20")]
    Members(usize),
    #[error("a slot of {slot_bits} bits does not fit a {key_bits}-bit key")]
    KeyTooSmall { slot_bits: u32, key_bits: u32 },
    #[error("value {position} is not a finite number")]
    NotFinite { position: usize },
    #[error("quantized value {position} is {value}, outside ±{max}")]
    OutOfRange {
        position: usize,
        value: i64,
        max: i64,
    },
    #[error("{found} plaintexts for {values} values; expected {expected}")]
    Count {
        found: usize,
        values: usize,
        expected: usize,
    },
    #[error("a sum of {summands} vectors, more than the {members} the packing has headroom for")]
    Summands { summands: usize, members: usize },
    #[error("slot {position} holds {value}, more than {summands} members can sum to (wrong key or corrupt ciphertext)")]
    Overflow {
        position: usize,
        value: u64,
        summands: usize,
    },
}

/// Quantized values and how many were clipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantized {
    /// `|q| ≤ 2^(value_bits − 1) − 1`.
    pub values: Vec<i64>,
    /// How many inputs were outside ±clip.
    pub clipped: usize,
}

/// Quantization and packing for one key and one network size.
#[derive(Debug, Clone, PartialEq)]
pub struct Packer {
    key_bits: u32,
    value_bits: u32,
    clip: f32,
    members: usize,
    slot_bits: u32,
    slots: usize,
}

impl Packer {
    /// `value_bits` per quantized value (2..=32), clip range `±clip`, headroom for the sum of up
    /// to `members` vectors.
    pub fn new(
        pk: &PublicKey,
        value_bits: u32,
        clip: f32,
        members: usize,
    ) -> Result<Packer, PackError> {
        Self::for_key_bits(pk.bits(), value_bits, clip, members)
    }

    /// As [`new`](Self::new), from the key size alone (to plan message sizes before keys exist).
    pub fn for_key_bits(
        key_bits: u32,
        value_bits: u32,
        clip: f32,
        members: usize,
    ) -> Result<Packer, PackError> {
        if !(2..=32).contains(&value_bits) {
            return Err(PackError::ValueBits(value_bits));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return Err(PackError::Clip(clip));
        }
        if members == 0 || members > 1 << 20 {
            return Err(PackError::Members(members));
        }
        let headroom = usize::BITS - (members - 1).leading_zeros();
        let slot_bits = value_bits + headroom;
        let slots = (key_bits.saturating_sub(1) / slot_bits) as usize;
        if slots == 0 {
            return Err(PackError::KeyTooSmall {
                slot_bits,
                key_bits,
            });
        }
        Ok(Packer {
            key_bits,
            value_bits,
            clip,
            members,
            slot_bits,
            slots,
        })
    }

    /// The key size this packer was made for.
    pub fn key_bits(&self) -> u32 {
        self.key_bits
    }

    /// Values per plaintext.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Bits per slot (value bits plus headroom for the sum).
    pub fn slot_bits(&self) -> u32 {
        self.slot_bits
    }

    /// Plaintexts (and ciphertexts) for `len` values.
    pub fn plaintexts_for(&self, len: usize) -> usize {
        len.div_ceil(self.slots)
    }

    /// Largest |q|.
    pub fn max_level(&self) -> i64 {
        (1i64 << (self.value_bits - 1)) - 1
    }

    /// Quantization steps per unit.
    pub fn scale(&self) -> f64 {
        self.max_level() as f64 / self.clip as f64
    }

    /// Clip, scale and round stochastically (from `rng`). Non-finite values are an error.
    pub fn quantize<R: RngCore + ?Sized>(
        &self,
        values: &[f32],
        rng: &mut R,
    ) -> Result<Quantized, PackError> {
        let (scale, max) = (self.scale(), self.max_level());
        let mut clipped = 0;
        let mut out = Vec::with_capacity(values.len());
        for (position, &x) in values.iter().enumerate() {
            if !x.is_finite() {
                return Err(PackError::NotFinite { position });
            }
            if x.abs() > self.clip {
                clipped += 1;
            }
            let y = f64::from(x.clamp(-self.clip, self.clip)) * scale;
            let floor = y.floor();
            let up = rng.gen::<f64>() < y - floor;
            let q = (floor as i64 + i64::from(up)).clamp(-max, max);
            out.push(q);
        }
        Ok(Quantized {
            values: out,
            clipped,
        })
    }

    /// Sums of quantized values back to floats.
    pub fn dequantize(&self, sums: &[i64]) -> Vec<f32> {
        let scale = self.scale();
        sums.iter().map(|&s| (s as f64 / scale) as f32).collect()
    }

    /// Pack quantized values (`|q| ≤ max_level`), `slots` to a plaintext, first value in the
    /// lowest bits.
    pub fn pack(&self, values: &[i64]) -> Result<Vec<Plaintext>, PackError> {
        let max = self.max_level();
        if let Some(position) = values.iter().position(|q| q.abs() > max) {
            return Err(PackError::OutOfRange {
                position,
                value: values[position],
                max,
            });
        }
        let words = (self.slots * self.slot_bits as usize).div_ceil(64);
        Ok(values
            .chunks(self.slots)
            .map(|chunk| {
                let mut limbs = vec![0u64; words];
                for (k, &q) in chunk.iter().enumerate() {
                    write_bits(&mut limbs, k * self.slot_bits as usize, (q + max) as u64);
                }
                Plaintext(Integer::from_digits(&limbs, Order::Lsf))
            })
            .collect())
    }

    /// Unpack the decrypted sum of `summands` members' packed vectors of `len` values into the
    /// per-value sums of their quantized values.
    pub fn unpack_sum(
        &self,
        plaintexts: &[Plaintext],
        len: usize,
        summands: usize,
    ) -> Result<Vec<i64>, PackError> {
        if summands > self.members {
            return Err(PackError::Summands {
                summands,
                members: self.members,
            });
        }
        let expected = self.plaintexts_for(len);
        if plaintexts.len() != expected {
            return Err(PackError::Count {
                found: plaintexts.len(),
                values: len,
                expected,
            });
        }
        let max = self.max_level();
        let limit = summands as u64 * (2 * max as u64);
        let offset = summands as i64 * max;
        let words = (self.slots * self.slot_bits as usize).div_ceil(64);
        let mut out = Vec::with_capacity(len);
        for (i, p) in plaintexts.iter().enumerate() {
            if p.0.significant_bits() as usize > words * 64 || p.0 < 0 {
                return Err(PackError::Overflow {
                    position: i * self.slots,
                    value: u64::MAX,
                    summands,
                });
            }
            let mut limbs = vec![0u64; words];
            p.0.write_digits(&mut limbs, Order::Lsf);
            let here = (len - i * self.slots).min(self.slots);
            for k in 0..here {
                let u = read_bits(&limbs, k * self.slot_bits as usize, self.slot_bits);
                if u > limit {
                    return Err(PackError::Overflow {
                        position: i * self.slots + k,
                        value: u,
                        summands,
                    });
                }
                out.push(u as i64 - offset);
            }
        }
        Ok(out)
    }
}

/// Add `value` (< 2^63) at bit `at` of little-endian limbs; the bits there are zero.
fn write_bits(limbs: &mut [u64], at: usize, value: u64) {
    let (word, shift) = (at / 64, at % 64);
    limbs[word] |= value << shift;
    if shift != 0 && word + 1 < limbs.len() {
        limbs[word + 1] |= value >> (64 - shift);
    }
}

fn read_bits(limbs: &[u64], at: usize, bits: u32) -> u64 {
    let (word, shift) = (at / 64, at % 64);
    let mut v = limbs[word] >> shift;
    if shift != 0 && word + 1 < limbs.len() {
        v |= limbs[word + 1] << (64 - shift);
    }
    v & ((1u64 << bits) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn headroom_and_slots() {
        let p = Packer::for_key_bits(2048, 16, 1.0, 100).unwrap();
        assert_eq!(p.slot_bits(), 16 + 7);
        assert_eq!(p.slots(), 2047 / 23);
        assert_eq!(
            Packer::for_key_bits(2048, 16, 1.0, 1).unwrap().slot_bits(),
            16
        );
        assert_eq!(
            Packer::for_key_bits(2048, 16, 1.0, 2).unwrap().slot_bits(),
            17
        );
        assert!(matches!(
            Packer::for_key_bits(2048, 1, 1.0, 2),
            Err(PackError::ValueBits(1))
        ));
        assert!(matches!(
            Packer::for_key_bits(2048, 8, f32::NAN, 2),
            Err(PackError::Clip(_))
        ));
        assert!(matches!(
            Packer::for_key_bits(2048, 8, 1.0, 0),
            Err(PackError::Members(0))
        ));
    }

    #[test]
    fn pack_then_unpack_single_vector_is_identity() {
        let p = Packer::for_key_bits(256, 13, 1.0, 3).unwrap();
        let qs: Vec<i64> = (0..50).map(|i| (i * 331 % 8191) - 4095).collect();
        let packed = p.pack(&qs).unwrap();
        assert_eq!(packed.len(), p.plaintexts_for(qs.len()));
        assert_eq!(p.unpack_sum(&packed, qs.len(), 1).unwrap(), qs);
    }

    #[test]
    fn stochastic_rounding_is_unbiased_and_clipping_counted() {
        let p = Packer::for_key_bits(512, 8, 1.0, 4).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let x = 0.3f32 / p.scale() as f32; // 0.3 of a step
        let q = p.quantize(&vec![x; 20_000], &mut rng).unwrap();
        let mean = q.values.iter().sum::<i64>() as f64 / 20_000.0;
        assert!((mean - 0.3).abs() < 0.02, "{mean}");
        let q = p.quantize(&[2.0, -3.0, 0.5, 1.0], &mut rng).unwrap();
        assert_eq!(q.clipped, 2);
        assert_eq!(q.values[0], p.max_level());
        assert_eq!(q.values[1], -p.max_level());
        assert!(matches!(
            p.quantize(&[0.0, f32::INFINITY], &mut rng),
            Err(PackError::NotFinite { position: 1 })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Packing is linear: the sum of up to 100 members' packed plaintexts (as integers, which
        /// is what decryption of the ciphertext product gives) unpacks to the per-value sums of
        /// their quantized values, negatives included, with no carry between slots.
        #[test]
        fn packed_sums_unpack_exactly(
            members in 1usize..=100,
            len in 1usize..200,
            value_bits in 2u32..=24,
            key_bits in proptest::sample::select(vec![256u32, 512, 2048]),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let p = Packer::for_key_bits(key_bits, value_bits, 1.0, members).unwrap();
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let max = p.max_level();
            let mut expected = vec![0i64; len];
            let mut total: Vec<Integer> = vec![Integer::new(); p.plaintexts_for(len)];
            for _ in 0..members {
                // Extremes on purpose: the all-max and all-min vectors are the carry cases.
                let qs: Vec<i64> = (0..len)
                    .map(|_| match rng.gen_range(0..4) {
                        0 => max,
                        1 => -max,
                        _ => rng.gen_range(-max..=max),
                    })
                    .collect();
                for (e, q) in expected.iter_mut().zip(&qs) {
                    *e += q;
                }
                for (t, m) in total.iter_mut().zip(p.pack(&qs).unwrap()) {
                    *t += m.0;
                }
            }
            let total: Vec<Plaintext> = total.into_iter().map(Plaintext).collect();
            proptest::prop_assert_eq!(p.unpack_sum(&total, len, members).unwrap(), expected);
        }
    }
}
