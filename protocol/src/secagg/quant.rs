//! Quantization: a member's f32 update as a vector over Z_R, R = 2^bits, whose sum over the
//! members decodes to their FedAvg mean.
//!
//! Secure aggregation adds vectors mod R, so an update must become integers first. Each value is
//! clipped to `[-clip, clip]` and rounded to one of `2^value_bits` levels `q`; the member sends
//! `weight · q` and, as one extra last element, `weight` itself (its sample count). The masked sum
//! then holds `Σ wᵢ·qᵢ` per coordinate and `W = Σ wᵢ` at the end, which is all FedAvg needs: the
//! weight travels inside the protected vector, so no member's sample count is revealed, only the
//! total.
//!
//! The ring is sized by [`Quantizer::ring_bits`] so that the sum of `members` such vectors can
//! never wrap around: with wrapping, a sum of large values would decode as a small one and nobody
//! could tell. Every element fits a `u64`, the word [`mask`](crate::crypto::secagg::mask) adds
//! masks to, and [`pack`] puts it on the wire in `ceil(ring_bits / 8)` bytes.
//!
//! ```
//! use fedmesh_protocol::secagg::quant::{self, Quantizer};
//! let q = Quantizer::default(); // clip 1.0, 16-bit values, weights up to 65535, 1000 members
//! let bits = q.ring_bits().unwrap();
//! assert_eq!(bits, 42);
//! let a = q.encode(&[0.5, -1.0], 30).unwrap();
//! let b = q.encode(&[-0.5, 3.0], 10).unwrap(); // 3.0 is clipped to 1.0, and counted
//! assert_eq!(b.clipped, 1);
//! let r = (1u64 << bits) - 1;
//! let sum: Vec<u64> =
//!     a.values.iter().zip(&b.values).map(|(x, y)| x.wrapping_add(*y) & r).collect();
//! let out = q.decode(&sum).unwrap();
//! assert_eq!(out.total_weight, 40);
//! assert!((out.mean[0] - 0.25).abs() as f64 <= q.step()); // (30·0.5 − 10·0.5) / 40
//! assert!((out.mean[1] + 0.5).abs() as f64 <= q.step()); // (−30 + 10) / 40
//! let wire = quant::pack(&sum, bits);
//! assert_eq!(wire.len(), 3 * 6);
//! assert_eq!(quant::unpack(&wire, bits, 3).unwrap(), sum);
//! ```

use serde::{Deserialize, Serialize};

/// How updates become ring elements. Every member of a round must use the same values: they fix
/// the ring, and decoding with other values gives a wrong mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quantizer {
    /// Values are clipped to `[-clip, clip]` before rounding. Smaller is finer (see
    /// [`Quantizer::step`]) but clips more; per-coordinate model deltas are small, so 1.0.
    pub clip: f32,
    /// Levels per value: `2^value_bits`. 16 bits give a resolution of `2·clip / 65535`.
    pub value_bits: u32,
    /// The largest sample weight a member may claim; larger weights are refused, not capped, so
    /// that a member learns its weight is out of range.
    pub max_weight: u64,
    /// The most members whose vectors are summed. Sizes the ring so that the sum cannot wrap.
    pub members: usize,
}

impl Default for Quantizer {
    /// `clip` 1.0, 16-bit values, weights up to 65535 and up to 1000 members: a 42-bit ring.
    fn default() -> Self {
        Quantizer {
            clip: 1.0,
            value_bits: 16,
            max_weight: 65535,
            members: 1000,
        }
    }
}

/// One member's quantized update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `weight · q` for each input value, then `weight`: one element longer than the input, each
    /// below `2^ring_bits`.
    pub values: Vec<u64>,
    /// How many input values lay outside `[-clip, clip]` and were clipped. Reported rather than
    /// hidden: many clipped values mean `clip` is too small for this model.
    pub clipped: usize,
}

/// What a sum of encodings says.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The weighted mean of the members' clipped values, within [`Quantizer::step`] per value
    /// (plus the f32 rounding of the result).
    pub mean: Vec<f32>,
    /// `W`, the sum of the members' weights. How many members contributed is not in the sum; the
    /// round knows it from who sent input.
    pub total_weight: u64,
}

impl Quantizer {
    /// Ring size in bits: the smallest `b` with `members · max_weight · (2^value_bits − 1) < 2^b`,
    /// so that the largest possible sum of `members` encodings (every member at full weight and
    /// top level) still fits. At most `value_bits + bits(max_weight) + bits(members)`, with
    /// `bits(x) = ⌈log2(x + 1)⌉`: 16 + 16 + 10 = 42 for the defaults. The weights' own sum is
    /// at most `members · max_weight`, smaller still.
    ///
    /// Errors if a parameter is out of range or the ring would exceed the 64 bits of a `u64`.
    pub fn ring_bits(&self) -> Result<u32, QuantError> {
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(QuantError::Clip { clip: self.clip });
        }
        if self.value_bits == 0 || self.value_bits > 64 {
            return Err(QuantError::ValueBits {
                value_bits: self.value_bits,
            });
        }
        if self.max_weight == 0 {
            return Err(QuantError::ZeroMaxWeight);
        }
        if self.members == 0 {
            return Err(QuantError::ZeroMembers);
        }
        let weight_bits = bit_len(u128::from(self.max_weight));
        let member_bits = bit_len(self.members as u128);
        let needed = (self.members as u128)
            .checked_mul(u128::from(self.max_weight))
            .and_then(|m| m.checked_mul(u128::from(self.levels())))
            .map(bit_len)
            // Beyond u128 only the order of magnitude matters for the message.
            .unwrap_or(self.value_bits + weight_bits + member_bits);
        if needed > 64 {
            return Err(QuantError::RingTooLarge {
                needed,
                value_bits: self.value_bits,
                weight_bits,
                member_bits,
            });
        }
        Ok(needed)
    }

    /// One member's update `x` with sample weight `weight`, as `x.len() + 1` ring elements.
    ///
    /// Each value is clipped to `[-clip, clip]` (and counted in [`Encoded::clipped`]), mapped to
    /// `q = round((x + clip) / (2·clip) · (2^value_bits − 1))`, and multiplied by `weight`; the
    /// last element is `weight`. A NaN or infinite value is an error naming its index: no finite
    /// stand-in would be right, and a silent one would skew the mean.
    pub fn encode(&self, x: &[f32], weight: u64) -> Result<Encoded, QuantError> {
        self.ring_bits()?;
        if weight == 0 {
            return Err(QuantError::ZeroWeight);
        }
        if weight > self.max_weight {
            return Err(QuantError::WeightTooLarge {
                weight,
                max_weight: self.max_weight,
            });
        }
        let levels = self.levels();
        let clip = f64::from(self.clip);
        let scale = levels as f64 / (2.0 * clip);
        let mut values = Vec::with_capacity(x.len() + 1);
        let mut clipped = 0;
        for (index, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(QuantError::NonFinite { index, value: v });
            }
            let v = f64::from(v);
            if v.abs() > clip {
                clipped += 1;
            }
            let v = v.clamp(-clip, clip);
            // `as` saturates, and `min` keeps q a level even where f64 rounding of `levels`
            // (above 2^53) lands one past the top.
            let q = (((v + clip) * scale).round() as u64).min(levels);
            // q ≤ 2^value_bits − 1 and weight ≤ max_weight: the product is below 2^ring_bits.
            values.push(q * weight);
        }
        values.push(weight);
        Ok(Encoded { values, clipped })
    }

    /// The weighted mean from a sum of encodings (taken mod `2^ring_bits`; by construction no
    /// wrap happened): `W` is the last element, and coordinate `i` is
    /// `(sumᵢ / W) / (2^value_bits − 1) · 2·clip − clip`, computed in f64.
    ///
    /// Checks what an honest sum must satisfy — `0 < W ≤ members · max_weight` and
    /// `sumᵢ ≤ W · (2^value_bits − 1)` — so that a malformed input or a mask left in the sum is an
    /// error rather than a mean outside `[-clip, clip]`. A member can still lie about its weight
    /// within `max_weight`: that is for robust aggregation, not for this codec.
    pub fn decode(&self, sum: &[u64]) -> Result<Decoded, QuantError> {
        self.ring_bits()?;
        let (&total_weight, coords) = sum.split_last().ok_or(QuantError::EmptySum)?;
        if total_weight == 0 {
            return Err(QuantError::ZeroTotalWeight);
        }
        // Both bounds are below 2^ring_bits ≤ 2^64, as ring_bits just checked.
        let max_total = self.max_weight.saturating_mul(self.members as u64);
        if total_weight > max_total {
            return Err(QuantError::TotalWeightTooLarge {
                total_weight,
                max: max_total,
            });
        }
        let levels = self.levels();
        let max = total_weight.saturating_mul(levels);
        let (w, levels, clip) = (total_weight as f64, levels as f64, f64::from(self.clip));
        let mut mean = Vec::with_capacity(coords.len());
        for (index, &s) in coords.iter().enumerate() {
            if s > max {
                return Err(QuantError::SumOutOfRange {
                    index,
                    value: s,
                    max,
                });
            }
            let m = (s as f64 / w) / levels * 2.0 * clip - clip;
            mean.push(m.clamp(-clip, clip) as f32);
        }
        Ok(Decoded { mean, total_weight })
    }

    /// The largest error of one decoded coordinate against the true weighted mean of the clipped
    /// inputs: `clip / (2^value_bits − 1)`, half of one level's width
    /// `2·clip / (2^value_bits − 1)`. Each input is off by at most that after rounding, and a
    /// weighted mean of such errors is too. The f32 result adds its own rounding, at most
    /// `clip · 2^-24`.
    pub fn step(&self) -> f64 {
        f64::from(self.clip) / self.levels() as f64
    }

    /// `2^value_bits − 1`, the top level; `value_bits` is taken as 1..=64 so that this never
    /// overflows (the other values are refused by [`Quantizer::ring_bits`]).
    fn levels(&self) -> u64 {
        u64::MAX >> (64 - self.value_bits.clamp(1, 64))
    }
}

/// `⌈log2(x + 1)⌉`: the bits needed to write `x`.
fn bit_len(x: u128) -> u32 {
    u128::BITS - x.leading_zeros()
}

/// Bytes per packed value: the fewest whole bytes that hold `bits` bits.
fn width(bits: u32) -> usize {
    bits.div_ceil(8) as usize
}

/// Masked ring elements as bytes: each value in `ceil(bits / 8)` bytes, little-endian. This is
/// the wire format of masked inputs; at 42 bits, 6 bytes a value instead of 8.
///
/// Values must be below `2^bits`, as [`mask::add_mask`](crate::crypto::secagg::mask::add_mask)
/// leaves them; bits above the width are dropped, and [`unpack`] refuses any that were kept
/// above `bits`. `bits` is taken as 1..=64.
pub fn pack(values: &[u64], bits: u32) -> Vec<u8> {
    let width = width(bits.clamp(1, 64));
    let mut out = Vec::with_capacity(values.len() * width);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes()[..width]);
    }
    out
}

/// The inverse of [`pack`], for bytes from a peer: the length must be exactly `count` values of
/// `ceil(bits / 8)` bytes, and every value below `2^bits`. A value above would not be an element
/// of the ring, and summing it could carry into the next coordinate's worth of bits.
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Result<Vec<u64>, QuantError> {
    let (width, top) = frame(bytes, bits, count)?;
    let mut out = Vec::with_capacity(count);
    for (index, chunk) in bytes.chunks_exact(width).enumerate() {
        let v = read_le(chunk);
        if v > top {
            return Err(QuantError::PackValue { index, bits });
        }
        out.push(v);
    }
    Ok(out)
}

/// Check `bits` and that `bytes` holds exactly `count` packed values; returns the width of one
/// value in bytes and the largest value of the ring.
fn frame(bytes: &[u8], bits: u32, count: usize) -> Result<(usize, u64), QuantError> {
    if bits == 0 || bits > 64 {
        return Err(QuantError::PackBits { bits });
    }
    let width = width(bits);
    if count.checked_mul(width) != Some(bytes.len()) {
        return Err(QuantError::PackLength {
            len: bytes.len(),
            count,
            width,
        });
    }
    Ok((width, u64::MAX >> (64 - bits)))
}

/// A little-endian value of up to 8 bytes.
#[inline(always)]
fn read_le(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// `sum ← (sum + unpack(bytes)) mod 2^bits` without materialising the unpacked vector: the
/// coordinator's running sum of masked inputs. Checks everything [`unpack`] checks, with
/// `count = sum.len()`; on an error `sum` is as it was.
pub fn add_packed(sum: &mut [u64], bytes: &[u8], bits: u32) -> Result<(), QuantError> {
    let (width, top) = frame(bytes, bits, sum.len())?;
    // One pass with the width known at compile time: adds every value and notes whether any was
    // out of range; if one was, the same pass subtracting (mod 2^bits, subtraction undoes the
    // masked addition exactly) restores `sum`, and `unpack` names the first bad index.
    let ok = match width {
        1 => add_width::<1, false>(sum, bytes, top),
        2 => add_width::<2, false>(sum, bytes, top),
        3 => add_width::<3, false>(sum, bytes, top),
        4 => add_width::<4, false>(sum, bytes, top),
        5 => add_width::<5, false>(sum, bytes, top),
        6 => add_width::<6, false>(sum, bytes, top),
        7 => add_width::<7, false>(sum, bytes, top),
        _ => add_width::<8, false>(sum, bytes, top),
    };
    if ok {
        return Ok(());
    }
    match width {
        1 => add_width::<1, true>(sum, bytes, top),
        2 => add_width::<2, true>(sum, bytes, top),
        3 => add_width::<3, true>(sum, bytes, top),
        4 => add_width::<4, true>(sum, bytes, top),
        5 => add_width::<5, true>(sum, bytes, top),
        6 => add_width::<6, true>(sum, bytes, top),
        7 => add_width::<7, true>(sum, bytes, top),
        _ => add_width::<8, true>(sum, bytes, top),
    };
    match unpack(bytes, bits, sum.len()) {
        Err(e) => Err(e),
        // Unreachable: add_width saw a value above the ring, which unpack refuses.
        Ok(_) => Err(QuantError::PackValue { index: 0, bits }),
    }
}

/// `sum ± values` mod `top + 1` for `W`-byte packed values; false if any value exceeds `top`.
#[inline(always)]
fn add_width<const W: usize, const UNDO: bool>(sum: &mut [u64], bytes: &[u8], top: u64) -> bool {
    let mut high = 0u64;
    for (s, chunk) in sum.iter_mut().zip(bytes.chunks_exact(W)) {
        // `W` known here: the copy compiles to one load.
        let mut word = [0u8; 8];
        word[..W].copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        high |= v & !top;
        *s = if UNDO {
            s.wrapping_sub(v) & top
        } else {
            s.wrapping_add(v) & top
        };
    }
    high == 0
}

/// Why an update cannot be quantized, a sum decoded, or bytes unpacked.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum QuantError {
    #[error("clip is {clip}: set it to a finite number above 0 (1.0 suits model deltas)")]
    Clip { clip: f32 },
    #[error("value_bits is {value_bits}: set it between 1 and 64 (16 is usual)")]
    ValueBits { value_bits: u32 },
    #[error("max_weight is 0: set it to the largest sample count a member may claim")]
    ZeroMaxWeight,
    #[error("members is 0: set it to the most members whose inputs are summed")]
    ZeroMembers,
    #[error(
        "the sum needs a {needed}-bit ring, more than the 64 bits of a u64: lower value_bits \
         ({value_bits} bits), max_weight ({weight_bits} bits) or members ({member_bits} bits) \
         until they add up to at most 64"
    )]
    RingTooLarge {
        needed: u32,
        value_bits: u32,
        weight_bits: u32,
        member_bits: u32,
    },
    #[error("weight is 0: a member without samples has no update; leave it out of the round")]
    ZeroWeight,
    #[error(
        "weight {weight} is above max_weight {max_weight}: cap the sample count at {max_weight} \
         or raise max_weight for every member"
    )]
    WeightTooLarge { weight: u64, max_weight: u64 },
    #[error(
        "update value {index} is {value}: fix the training step that produced a non-finite value"
    )]
    NonFinite { index: usize, value: f32 },
    #[error("the sum is empty: it must end with the total weight, as every encoding does")]
    EmptySum,
    #[error("the sum's total weight is 0: it holds no member's input")]
    ZeroTotalWeight,
    #[error(
        "the sum's total weight {total_weight} is above members × max_weight = {max}: size \
         `members` to the round, or a member sent a malformed input"
    )]
    TotalWeightTooLarge { total_weight: u64, max: u64 },
    #[error(
        "coordinate {index} of the sum is {value}, above total weight × (2^value_bits − 1) = \
         {max}: it is not a sum of encodings from this quantizer (a malformed input, or a mask \
         left in the sum)"
    )]
    SumOutOfRange { index: usize, value: u64, max: u64 },
    #[error("ring of {bits} bits cannot be unpacked: bits must be between 1 and 64")]
    PackBits { bits: u32 },
    #[error(
        "masked input is {len} bytes, expected {count} values of {width} bytes: the sender used \
         another model size or ring"
    )]
    PackLength {
        len: usize,
        count: usize,
        width: usize,
    },
    #[error(
        "packed value {index} is not below 2^{bits}: the sender did not reduce it mod 2^{bits}"
    )]
    PackValue { index: usize, bits: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Tolerance of a decoded mean: [`Quantizer::step`], the f32 rounding of the result, and a
    /// hair for f64 arithmetic.
    fn tolerance(q: &Quantizer) -> f64 {
        q.step() * (1.0 + 1e-9) + f64::from(q.clip) * f64::from(f32::EPSILON)
    }

    fn sum_mod(encodings: &[Vec<u64>], bits: u32) -> Vec<u64> {
        let r = u64::MAX >> (64 - bits);
        let mut sum = vec![0u64; encodings[0].len()];
        for e in encodings {
            for (s, v) in sum.iter_mut().zip(e) {
                *s = s.wrapping_add(*v) & r;
            }
        }
        sum
    }

    #[test]
    fn default_ring_is_42_bits_and_minimal() {
        let q = Quantizer::default();
        assert_eq!(q.ring_bits(), Ok(42));
        // 1024 members need bits(1024) = 11 by the bit-count bound, but the exact product
        // 1024 · 65535 · 65535 is still below 2^42.
        let q = Quantizer {
            members: 1024,
            ..Quantizer::default()
        };
        assert_eq!(q.ring_bits(), Ok(42));
        // One member at weight 1: the ring is exactly the value's.
        let q = Quantizer {
            value_bits: 64,
            max_weight: 1,
            members: 1,
            ..Quantizer::default()
        };
        assert_eq!(q.ring_bits(), Ok(64));
    }

    #[test]
    fn rejects_bad_parameters_and_says_which_to_lower() {
        let d = Quantizer::default();
        for clip in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let q = Quantizer { clip, ..d };
            assert!(matches!(q.ring_bits(), Err(QuantError::Clip { .. })));
            assert!(q.encode(&[0.0], 1).is_err());
            assert!(q.decode(&[0, 1]).is_err());
        }
        for value_bits in [0, 65] {
            let q = Quantizer { value_bits, ..d };
            assert_eq!(q.ring_bits(), Err(QuantError::ValueBits { value_bits }));
        }
        let q = Quantizer { max_weight: 0, ..d };
        assert_eq!(q.ring_bits(), Err(QuantError::ZeroMaxWeight));
        let q = Quantizer { members: 0, ..d };
        assert_eq!(q.ring_bits(), Err(QuantError::ZeroMembers));

        let q = Quantizer {
            value_bits: 40,
            ..d
        };
        let err = q.ring_bits().unwrap_err();
        assert_eq!(
            err,
            QuantError::RingTooLarge {
                needed: 66,
                value_bits: 40,
                weight_bits: 16,
                member_bits: 10
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("lower value_bits"), "{msg}");
        assert!(
            q.encode(&[0.0], 1).is_err(),
            "encode refuses a ring it cannot hold"
        );
        // Beyond u128: no overflow, still an error.
        let q = Quantizer {
            value_bits: 64,
            max_weight: u64::MAX,
            members: usize::MAX,
            ..d
        };
        assert!(matches!(
            q.ring_bits(),
            Err(QuantError::RingTooLarge { needed: 192, .. })
        ));
    }

    #[test]
    fn one_member_round_trips_within_a_step() {
        let q = Quantizer::default();
        let x = [0.0f32, 0.3, -0.7, 1.0, -1.0, 1e-6, 0.999_99];
        let e = q.encode(&x, 17).unwrap();
        assert_eq!(e.values.len(), x.len() + 1);
        assert_eq!(*e.values.last().unwrap(), 17);
        assert_eq!(e.clipped, 0);
        let d = q.decode(&e.values).unwrap();
        assert_eq!(d.total_weight, 17);
        for (m, x) in d.mean.iter().zip(&x) {
            assert!(f64::from((m - x).abs()) <= tolerance(&q), "{m} vs {x}");
        }
        // The ends of the range are exact levels.
        assert_eq!(d.mean[3], 1.0);
        assert_eq!(d.mean[4], -1.0);
    }

    #[test]
    fn clipping_is_counted_exactly() {
        let q = Quantizer::default();
        let x = [2.0f32, -1.5, 1.0, -1.0, 0.5, f32::MAX, -f32::MAX, 1.000_001];
        let e = q.encode(&x, 1).unwrap();
        // ±1.0 lie on the boundary and are not clipped.
        assert_eq!(e.clipped, 5);
        let d = q.decode(&e.values).unwrap();
        assert_eq!(
            d.mean,
            vec![1.0, -1.0, 1.0, -1.0, d.mean[4], 1.0, -1.0, 1.0]
        );
    }

    #[test]
    fn rejects_non_finite_values_and_bad_weights() {
        let q = Quantizer::default();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = q.encode(&[0.0, 0.1, bad, 0.2], 1).unwrap_err();
            assert!(
                matches!(err, QuantError::NonFinite { index: 2, .. }),
                "{err}"
            );
        }
        assert_eq!(q.encode(&[0.0], 0), Err(QuantError::ZeroWeight));
        assert_eq!(
            q.encode(&[0.0], 65536),
            Err(QuantError::WeightTooLarge {
                weight: 65536,
                max_weight: 65535
            })
        );
        assert!(q.encode(&[0.0], 65535).is_ok());
        // An empty update still carries its weight.
        assert_eq!(q.encode(&[], 5).unwrap().values, vec![5]);
    }

    /// Guards the no-wrap sizing at its edge: every member at full weight and the top value.
    #[test]
    fn the_largest_possible_sum_does_not_wrap() {
        let q = Quantizer::default();
        let bits = q.ring_bits().unwrap();
        let e = q.encode(&[1.0, -1.0, 0.0], q.max_weight).unwrap();
        let all = vec![e.values; q.members];
        let sum = sum_mod(&all, bits);
        let top = q.members as u64 * q.max_weight * 65535;
        assert!(u128::from(top) < 1u128 << bits);
        assert_eq!(sum[0], top, "the top sum survived mod 2^{bits}");
        let d = q.decode(&sum).unwrap();
        assert_eq!(d.total_weight, q.members as u64 * q.max_weight);
        assert_eq!(d.mean[0], 1.0);
        assert_eq!(d.mean[1], -1.0);
        assert!(f64::from(d.mean[2].abs()) <= tolerance(&q));
    }

    #[test]
    fn decode_rejects_sums_no_honest_members_make() {
        let q = Quantizer::default();
        assert_eq!(q.decode(&[]), Err(QuantError::EmptySum));
        assert_eq!(q.decode(&[3, 0]), Err(QuantError::ZeroTotalWeight));
        assert!(matches!(
            q.decode(&[0, 1000 * 65535 + 1]),
            Err(QuantError::TotalWeightTooLarge { .. })
        ));
        // Weight 2 allows at most 2 · 65535 per coordinate.
        assert!(q.decode(&[0, 131_070, 2]).is_ok());
        assert_eq!(
            q.decode(&[0, 131_071, 2]),
            Err(QuantError::SumOutOfRange {
                index: 1,
                value: 131_071,
                max: 131_070
            })
        );
        // A sum that is only its weight decodes to an empty mean.
        assert_eq!(q.decode(&[4]).unwrap().mean, Vec::<f32>::new());
    }

    #[test]
    fn unpack_rejects_bad_lengths_and_values() {
        let values = [1u64, 2, (1 << 42) - 1];
        let bytes = pack(&values, 42);
        assert_eq!(bytes.len(), 18);
        assert_eq!(unpack(&bytes, 42, 3).unwrap(), values);
        for (len, count) in [(17, 3), (18, 2), (18, 4), (0, 1)] {
            assert_eq!(
                unpack(&bytes[..len], 42, count),
                Err(QuantError::PackLength {
                    len,
                    count,
                    width: 6
                })
            );
        }
        assert!(matches!(
            unpack(&[0; 8], 64, usize::MAX),
            Err(QuantError::PackLength { .. })
        ));
        let mut bad = bytes.clone();
        bad[11] |= 0x04; // bit 42 of value 1
        assert_eq!(
            unpack(&bad, 42, 3),
            Err(QuantError::PackValue { index: 1, bits: 42 })
        );
        assert_eq!(unpack(&bytes, 0, 3), Err(QuantError::PackBits { bits: 0 }));
        assert_eq!(
            unpack(&bytes, 65, 3),
            Err(QuantError::PackBits { bits: 65 })
        );
        assert_eq!(unpack(&[], 7, 0), Ok(vec![]));
    }

    fn quantizer() -> impl Strategy<Value = Quantizer> {
        (0.01f32..10.0, 1u32..=24, 1u64..=65535, 30usize..=1000).prop_map(
            |(clip, value_bits, max_weight, members)| Quantizer {
                clip,
                value_bits,
                max_weight,
                members,
            },
        )
    }

    /// Members of one round: weights up to `max_weight`, values in ±3·clip so that some clip.
    fn round() -> impl Strategy<Value = (Quantizer, Vec<(u64, Vec<f32>)>)> {
        (quantizer(), 1usize..=30, 0usize..=16).prop_flat_map(|(q, n, len)| {
            let member = (
                1..=q.max_weight,
                prop::collection::vec(-3.0f32 * q.clip..=3.0 * q.clip, len),
            );
            (Just(q), prop::collection::vec(member, n))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Guards the whole codec: encodings summed mod 2^ring_bits decode to the FedAvg mean of
        /// the clipped inputs, with exact integer sums that never wrapped.
        #[test]
        fn prop_sum_decodes_to_the_weighted_mean((q, members) in round()) {
            let bits = q.ring_bits().unwrap();
            let top = q.members as u128 * u128::from(q.max_weight) * u128::from(q.levels());
            prop_assert!(top < 1u128 << bits, "largest possible sum fits the ring");
            prop_assert!(top >= 1u128 << (bits - 1), "the ring is no larger than it needs");

            let clip = q.clip;
            let len = members[0].1.len();
            let mut encodings = Vec::new();
            let mut exact = vec![0u128; len + 1];
            for (w, x) in &members {
                let e = q.encode(x, *w).unwrap();
                let expect_clipped = x.iter().filter(|v| v.abs() > clip).count();
                prop_assert_eq!(e.clipped, expect_clipped);
                prop_assert_eq!(e.values.len(), len + 1);
                prop_assert_eq!(e.values[len], *w);
                for (i, v) in e.values[..len].iter().enumerate() {
                    prop_assert_eq!(v % w, 0, "element {} is weight · q", i);
                    prop_assert!(v / w <= q.levels());
                }
                for (s, v) in exact.iter_mut().zip(&e.values) {
                    *s += u128::from(*v);
                }
                encodings.push(e.values);
            }
            let sum = sum_mod(&encodings, bits);
            for (s, e) in sum.iter().zip(&exact) {
                prop_assert_eq!(u128::from(*s), *e, "no wrap");
            }

            let d = q.decode(&sum).unwrap();
            let total: u64 = members.iter().map(|m| m.0).sum();
            prop_assert_eq!(d.total_weight, total);
            for i in 0..len {
                let want = members
                    .iter()
                    .map(|(w, x)| *w as f64 * f64::from(x[i].clamp(-clip, clip)))
                    .sum::<f64>()
                    / total as f64;
                let err = (f64::from(d.mean[i]) - want).abs();
                prop_assert!(err <= tolerance(&q), "coordinate {}: {} vs {}", i, d.mean[i], want);
            }
        }

        #[test]
        fn prop_pack_round_trips(
            bits in 1u32..=64,
            raw in prop::collection::vec(any::<u64>(), 0..200),
        ) {
            let values: Vec<u64> = raw.iter().map(|v| v & (u64::MAX >> (64 - bits))).collect();
            let bytes = pack(&values, bits);
            prop_assert_eq!(bytes.len(), values.len() * bits.div_ceil(8) as usize);
            prop_assert_eq!(unpack(&bytes, bits, values.len()).unwrap(), values.clone());
            // One byte more or less, or a count off by one, is refused.
            let mut longer = bytes.clone();
            longer.push(0);
            let is_length_error = matches!(
                unpack(&longer, bits, values.len()),
                Err(QuantError::PackLength { .. })
            );
            prop_assert!(is_length_error);
            if !bytes.is_empty() {
                let is_length_error = matches!(
                    unpack(&bytes[1..], bits, values.len()),
                    Err(QuantError::PackLength { .. })
                );
                prop_assert!(is_length_error);
            }
            let is_length_error = matches!(
                unpack(&bytes, bits, values.len() + 1),
                Err(QuantError::PackLength { .. })
            );
            prop_assert!(is_length_error);
        }

        /// The coordinator's running sum equals summing unpacked vectors, and a bad input
        /// (wrong length, or one value outside the ring) is refused with the sum untouched.
        #[test]
        fn prop_add_packed_is_unpack_then_add(
            bits in 1u32..=64,
            start in prop::collection::vec(any::<u64>(), 1..120),
            raw in prop::collection::vec(any::<u64>(), 120),
            bad in any::<prop::sample::Index>(),
        ) {
            let top = u64::MAX >> (64 - bits);
            let mut sum: Vec<u64> = start.iter().map(|v| v & top).collect();
            let values: Vec<u64> = raw[..sum.len()].iter().map(|v| v & top).collect();
            let want: Vec<u64> =
                sum.iter().zip(&values).map(|(s, v)| s.wrapping_add(*v) & top).collect();
            let bytes = pack(&values, bits);
            let before = sum.clone();
            let is_length_error = matches!(
                add_packed(&mut sum, &bytes[1..], bits),
                Err(QuantError::PackLength { .. })
            );
            prop_assert!(is_length_error);
            prop_assert_eq!(&sum, &before);
            if bits % 8 != 0 {
                let width = bits.div_ceil(8) as usize;
                let j = bad.index(sum.len());
                let mut corrupt = bytes.clone();
                corrupt[j * width + width - 1] |= 0x80;
                prop_assert_eq!(
                    add_packed(&mut sum, &corrupt, bits),
                    Err(QuantError::PackValue { index: j, bits })
                );
                prop_assert_eq!(&sum, &before);
            }
            add_packed(&mut sum, &bytes, bits).unwrap();
            prop_assert_eq!(sum, want);
        }

        #[test]
        fn prop_unpack_refuses_values_outside_the_ring(
            bits in (1u32..=63).prop_filter("a spare bit in the top byte", |b| b % 8 != 0),
            count in 1usize..50,
            index in any::<prop::sample::Index>(),
        ) {
            let width = bits.div_ceil(8) as usize;
            let j = index.index(count);
            let mut bytes = vec![0u8; count * width];
            bytes[j * width + width - 1] |= 0x80; // bit 8·width − 1 ≥ bits
            prop_assert_eq!(
                unpack(&bytes, bits, count),
                Err(QuantError::PackValue { index: j, bits })
            );
        }
    }
}
