//! Masks: a 32-byte seed expanded into a vector over Z_R, R = 2^bits, added to or removed from an
//! update in place.
//!
//! The PRG is ChaCha20 (RFC 8439: 20 rounds, 256-bit key, 96-bit nonce, 32-bit block counter)
//! keyed with all 256 bits of the seed; the nonce is the round and the mask's [`Purpose`], so a
//! seed reused across rounds or purposes still gives unrelated masks. With `w = ⌈bits / 8⌉`,
//! element `i` is bytes `[w·i, w·(i+1))` of the keystream, little-endian, reduced mod R — a
//! uniform element of Z_R because R divides 2^(8w). Drawing only the bytes the ring needs (5 for
//! the usual 39–42-bit rings, not the 8 of a `u64`) cuts the keystream, the whole cost, by 3/8.
//!
//! Why ChaCha20 and not ChaCha12 or ChaCha8: the masks are what hides each member's update, so
//! they get the standard, conservative round count (the same cipher as the share AEAD, checked
//! against RFC 8439's vector). With the `chacha20` crate's SIMD backends (AVX2 or SSE2, picked at
//! run time) a million `u32` elements take about 1.3 ms on two cores and 2.6 ms on one
//! (`benches/secagg.rs`), small next to training and the network; ChaCha12 would cut the
//! keystream time by about a third, ChaCha8 by about 60%.
//!
//! Speed: the vector is cut into chunks of [`CHUNK_ELEMENTS`] elements, and rayon runs the chunks
//! on all cores, each seeking its own ChaCha20 instance to the chunk's keystream offset. The mask is a
//! function of (seed, round, purpose, bits, index) only, identical whatever the thread count.

use std::fmt;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use rand::{CryptoRng, RngCore};
use rayon::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::kdf;

/// Elements per unit of parallel work: at most 32 KiB of keystream, which stays in L1/L2 cache
/// while it is added in.
pub const CHUNK_ELEMENTS: usize = 4096;

/// Keystream bytes one element takes in a ring of `2^bits`: `⌈bits / 8⌉`.
pub fn element_bytes(bits: u32) -> usize {
    bits.div_ceil(8) as usize
}

/// The longest keystream one (seed, round, purpose) gives: 2^32 ChaCha20 blocks of 64 bytes.
pub const MAX_STREAM_BYTES: u64 = 64 << 32;

/// The 256-bit seed of one mask: a member's self-mask seed `b_u` (random, Shamir-shared) or a
/// pairwise seed `s_uv` (from [`kdf::derive`] with [`kdf::Purpose::MaskSeed`]).
///
/// # Security
/// Whoever knows the seed can remove the mask, so it is zeroized on drop and never printed
/// (`Debug` shows `<redacted>`). A self-mask seed leaves its owner only as Shamir shares.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Seed([u8; 32]);

impl Seed {
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut seed = Seed([0u8; 32]);
        rng.fill_bytes(&mut seed.0);
        seed
    }

    /// A seed recovered with [`shamir::combine`](super::shamir::combine).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Seed(*bytes)
    }

    /// The bytes to hand to [`shamir::split`](super::shamir::split).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<kdf::Key> for Seed {
    fn from(key: kdf::Key) -> Self {
        Seed(*key.as_bytes())
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mask::Seed(<redacted>)")
    }
}

/// Which of a member's masks a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// `PRG(b_u)`, removed by the coordinator for members that sent input.
    SelfMask,
    /// `PRG(s_uv)`, added by `u < v` and subtracted by `u > v`, so that it cancels in the sum.
    Pairwise,
}

impl Purpose {
    fn tag(self) -> u32 {
        match self {
            Purpose::SelfMask => 0,
            Purpose::Pairwise => 1,
        }
    }
}

/// Names the keystream of a seed: ChaCha20's nonce is `round` (8 bytes) then the purpose (4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    pub round: u64,
    pub purpose: Purpose,
}

impl Stream {
    fn nonce(self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.round.to_le_bytes());
        nonce[8..].copy_from_slice(&self.purpose.tag().to_le_bytes());
        nonce
    }
}

/// Element types of a masked vector: `u32` for R ≤ 2^32, `u64` for R ≤ 2^64. Arithmetic wraps,
/// which is arithmetic mod 2^32 or 2^64, and is then reduced mod R.
pub trait Word: private::Sealed + Copy + Send + Sync + 'static {
    /// Bits of the type: the largest `bits` it holds.
    const BITS: u32;
}

impl Word for u32 {
    const BITS: u32 = u32::BITS;
}

impl Word for u64 {
    const BITS: u32 = u64::BITS;
}

mod private {
    pub trait Sealed: Sized {
        const BYTES: usize;
        /// The word whose low bytes start at `bytes[0]`; `bytes` holds at least `BYTES`.
        fn load(bytes: &[u8]) -> Self;
        fn low_bits(bits: u32) -> Self;
        fn add_masked(self, m: Self, low: Self) -> Self;
        fn sub_masked(self, m: Self, low: Self) -> Self;
        fn reduce(self, low: Self) -> Self;
    }

    macro_rules! word {
        ($t:ty) => {
            impl Sealed for $t {
                const BYTES: usize = std::mem::size_of::<$t>();
                #[inline(always)]
                fn load(bytes: &[u8]) -> Self {
                    let mut word = [0u8; std::mem::size_of::<$t>()];
                    word.copy_from_slice(&bytes[..std::mem::size_of::<$t>()]);
                    <$t>::from_le_bytes(word)
                }
                fn low_bits(bits: u32) -> Self {
                    <$t>::MAX >> (<$t>::BITS - bits)
                }
                #[inline(always)]
                fn add_masked(self, m: Self, low: Self) -> Self {
                    self.wrapping_add(m) & low
                }
                #[inline(always)]
                fn sub_masked(self, m: Self, low: Self) -> Self {
                    self.wrapping_sub(m) & low
                }
                fn reduce(self, low: Self) -> Self {
                    self & low
                }
            }
        };
    }
    word!(u32);
    word!(u64);
}

/// `acc ← (acc + mask) mod 2^bits`, element-wise, for the mask of `seed` on `stream`.
///
/// Every element comes out reduced mod R, even where `acc` was not: bits above R would carry the
/// input's overflow past the mask and leak it.
pub fn add_mask<W: Word>(
    acc: &mut [W],
    seed: &Seed,
    stream: Stream,
    bits: u32,
) -> Result<(), MaskError> {
    apply::<W, false>(acc, seed, stream, bits)
}

/// `acc ← (acc − mask) mod 2^bits`: undoes [`add_mask`] with the same arguments.
pub fn sub_mask<W: Word>(
    acc: &mut [W],
    seed: &Seed,
    stream: Stream,
    bits: u32,
) -> Result<(), MaskError> {
    apply::<W, true>(acc, seed, stream, bits)
}

/// The mask itself: `len` elements of Z_R.
pub fn expand<W: Word + Default>(
    seed: &Seed,
    stream: Stream,
    bits: u32,
    len: usize,
) -> Result<Vec<W>, MaskError> {
    let mut out = vec![W::default(); len];
    add_mask(&mut out, seed, stream, bits)?;
    Ok(out)
}

fn apply<W: Word, const SUBTRACT: bool>(
    acc: &mut [W],
    seed: &Seed,
    stream: Stream,
    bits: u32,
) -> Result<(), MaskError> {
    if bits == 0 || bits > W::BITS {
        return Err(MaskError::Bits { bits, max: W::BITS });
    }
    let width = element_bytes(bits);
    let max_len = MAX_STREAM_BYTES / width as u64;
    if acc.len() as u64 > max_len {
        return Err(MaskError::TooLong {
            len: acc.len(),
            max: max_len,
        });
    }
    let low = W::low_bits(bits);
    let nonce = stream.nonce();
    let chunk_bytes = CHUNK_ELEMENTS * width;
    acc.par_chunks_mut(CHUNK_ELEMENTS)
        .enumerate()
        .for_each_init(
            // One keystream buffer per rayon job, reused across its chunks and wiped once when the
            // job ends: wiping per chunk (volatile byte writes) cost about a sixth of the run time.
            // `W::BYTES` spare bytes at the end let every element load a whole word.
            || Zeroizing::new(vec![0u8; chunk_bytes + W::BYTES]),
            |buffer, (index, chunk)| {
                let mut cipher = ChaCha20::new(&seed.0.into(), &nonce.into());
                cipher.seek(index as u64 * chunk_bytes as u64);
                let keystream = &mut buffer[..chunk.len() * width];
                // apply_keystream XORs, so the buffer must start at zero.
                keystream.fill(0);
                cipher.apply_keystream(keystream);
                // The word loaded at element i's offset has the element's `width` bytes as its low
                // bytes; the bytes above belong to the next elements and `low` (bits ≤ 8·width)
                // drops them.
                for (i, a) in chunk.iter_mut().enumerate() {
                    let m = W::load(&buffer[i * width..]);
                    *a = if SUBTRACT {
                        a.sub_masked(m, low)
                    } else {
                        a.add_masked(m, low)
                    };
                }
            },
        );
    Ok(())
}

/// A mask that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaskError {
    #[error(
        "ring size 2^{bits} does not fit the vector's words: bits must be between 1 and {max}"
    )]
    Bits { bits: u32, max: u32 },
    #[error("vector of {len} elements is longer than one mask stream ({max} elements)")]
    TooLong { len: usize, max: u64 },
}

#[cfg(test)]
mod tests {
    use super::private::Sealed;
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    const STREAM: Stream = Stream {
        round: 3,
        purpose: Purpose::Pairwise,
    };

    /// The whole keystream in one go, without chunks or threads: what every chunking must equal.
    fn reference<W: Word>(seed: &Seed, stream: Stream, bits: u32, len: usize) -> Vec<W> {
        let width = element_bytes(bits);
        let mut bytes = vec![0u8; len * width];
        ChaCha20::new(&seed.0.into(), &stream.nonce().into()).apply_keystream(&mut bytes);
        let low = W::low_bits(bits);
        bytes
            .chunks_exact(width)
            .map(|b| {
                let mut word = vec![0u8; W::BYTES];
                word[..width].copy_from_slice(b);
                W::load(&word).reduce(low)
            })
            .collect()
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Guards determinism across machines: the mask must not depend on how rayon splits work.
    #[test]
    fn same_mask_on_one_thread_and_many_and_equal_to_the_plain_stream() {
        let seed = Seed::from_bytes(&[7u8; 32]);
        // Lengths around chunk boundaries, for both word sizes.
        for len in [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 100_000] {
            let one: Vec<u32> = in_pool(1, || expand(&seed, STREAM, 20, len).unwrap());
            let many: Vec<u32> = in_pool(4, || expand(&seed, STREAM, 20, len).unwrap());
            assert_eq!(one, many, "len {len}");
            assert_eq!(one, reference::<u32>(&seed, STREAM, 20, len), "len {len}");
            let one: Vec<u64> = in_pool(1, || expand(&seed, STREAM, 40, len).unwrap());
            let many: Vec<u64> = in_pool(3, || expand(&seed, STREAM, 40, len).unwrap());
            assert_eq!(one, many, "len {len}");
            assert_eq!(one, reference::<u64>(&seed, STREAM, 40, len), "len {len}");
        }
    }

    /// Pins the PRG to RFC 8439's ChaCha20 and our nonce layout: the keystream of section 2.4.2
    /// (key 00..1f, nonce 00:00:00:00:00:00:00:4a:00:00:00:00, block 1) is a self-mask of round
    /// 0x4a00000000000000 as seen through the chunked path.
    #[test]
    fn matches_the_rfc_8439_keystream() {
        let seed = Seed::from_bytes(&core::array::from_fn(|i| i as u8));
        let stream = Stream {
            round: 0x4a00_0000_0000_0000,
            purpose: Purpose::SelfMask,
        };
        let mask: Vec<u32> = expand(&seed, stream, 32, 20).unwrap();
        let block1: Vec<u8> = mask[16..].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(hex::encode(block1), "224f51f3401bd9e12fde276fb8631ded");
    }

    #[test]
    fn seeds_rounds_and_purposes_give_different_masks() {
        let a = Seed::from_bytes(&[1u8; 32]);
        let mut b_bytes = [1u8; 32];
        b_bytes[31] ^= 0x80; // the seed's last bit matters: all 256 bits key the stream
        let b = Seed::from_bytes(&b_bytes);
        let base: Vec<u32> = expand(&a, STREAM, 32, 64).unwrap();
        let others: [Vec<u32>; 3] = [
            expand(&b, STREAM, 32, 64).unwrap(),
            expand(&a, Stream { round: 4, ..STREAM }, 32, 64).unwrap(),
            expand(
                &a,
                Stream {
                    purpose: Purpose::SelfMask,
                    ..STREAM
                },
                32,
                64,
            )
            .unwrap(),
        ];
        for other in &others {
            let same = base.iter().zip(other).filter(|(x, y)| x == y).count();
            assert!(same <= 1, "{same} of 64 elements coincide");
        }
        // A prefix of a longer mask is the shorter mask.
        let long: Vec<u32> = expand(&a, STREAM, 32, 10_000).unwrap();
        assert_eq!(&long[..64], &base[..]);
    }

    #[test]
    fn reduces_mod_r_and_rejects_bad_arguments() {
        let seed = Seed::from_bytes(&[2u8; 32]);
        let mut acc = vec![u32::MAX; 1000];
        add_mask(&mut acc, &seed, STREAM, 12).unwrap();
        assert!(acc.iter().all(|&x| x < 1 << 12));
        assert!(acc.iter().any(|&x| x >= 1 << 11), "high bit of R is used");
        let mut acc = vec![0u32; 4];
        assert_eq!(
            add_mask(&mut acc, &seed, STREAM, 0),
            Err(MaskError::Bits { bits: 0, max: 32 })
        );
        assert_eq!(
            sub_mask(&mut acc, &seed, STREAM, 33),
            Err(MaskError::Bits { bits: 33, max: 32 })
        );
        let mut acc = vec![0u64; 4];
        assert!(add_mask(&mut acc, &seed, STREAM, 64).is_ok());
        assert!(add_mask(&mut acc, &seed, STREAM, 65).is_err());
        assert!(format!("{seed:?}").contains("redacted"));
    }

    /// Guards the protocol's core identity: with every pair's mask added by the smaller index and
    /// subtracted by the larger, and self-masks removed, the masked inputs sum to the plain sum.
    #[test]
    fn pairwise_masks_cancel_in_the_sum() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (n, len, bits) = (5, 5000, 24);
        let r_mask = (1u32 << bits) - 1;
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..len).map(|_| rng.gen::<u32>() & r_mask).collect())
            .collect();
        let pair_seeds: Vec<Vec<Seed>> = (0..n)
            .map(|_| (0..n).map(|_| Seed::random(&mut rng)).collect())
            .collect();
        let pair_seed = |u: usize, v: usize| &pair_seeds[u.min(v)][u.max(v)];
        let self_seeds: Vec<Seed> = (0..n).map(|_| Seed::random(&mut rng)).collect();
        let self_stream = Stream {
            purpose: Purpose::SelfMask,
            ..STREAM
        };
        let mut sum = vec![0u32; len];
        for u in 0..n {
            let mut y = inputs[u].clone();
            add_mask(&mut y, &self_seeds[u], self_stream, bits).unwrap();
            for v in (0..n).filter(|&v| v != u) {
                if u < v {
                    add_mask(&mut y, pair_seed(u, v), STREAM, bits).unwrap();
                } else {
                    sub_mask(&mut y, pair_seed(u, v), STREAM, bits).unwrap();
                }
            }
            assert_ne!(y, inputs[u], "member {u}'s input went out unmasked");
            for (s, yi) in sum.iter_mut().zip(&y) {
                *s = s.wrapping_add(*yi) & r_mask;
            }
        }
        for seed in &self_seeds {
            sub_mask(&mut sum, seed, self_stream, bits).unwrap();
        }
        let plain: Vec<u32> = (0..len)
            .map(|i| inputs.iter().fold(0u32, |s, x| s.wrapping_add(x[i])) & r_mask)
            .collect();
        assert_eq!(sum, plain);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_add_then_sub_restores(
            seed in any::<[u8; 32]>(),
            round in any::<u64>(),
            bits in 1u32..=32,
            values in proptest::collection::vec(any::<u32>(), 0..9000),
        ) {
            let seed = Seed::from_bytes(&seed);
            let stream = Stream { round, purpose: Purpose::SelfMask };
            let low = u32::low_bits(bits);
            let original: Vec<u32> = values.iter().map(|v| v & low).collect();
            let mut acc = original.clone();
            add_mask(&mut acc, &seed, stream, bits).unwrap();
            sub_mask(&mut acc, &seed, stream, bits).unwrap();
            prop_assert_eq!(acc, original);
        }

        #[test]
        fn prop_add_then_sub_restores_u64(
            seed in any::<[u8; 32]>(),
            bits in 1u32..=64,
            values in proptest::collection::vec(any::<u64>(), 0..5000),
        ) {
            let seed = Seed::from_bytes(&seed);
            let low = u64::low_bits(bits);
            let original: Vec<u64> = values.iter().map(|v| v & low).collect();
            let mut acc = original.clone();
            add_mask(&mut acc, &seed, STREAM, bits).unwrap();
            sub_mask(&mut acc, &seed, STREAM, bits).unwrap();
            prop_assert_eq!(acc, original);
        }
    }
}
