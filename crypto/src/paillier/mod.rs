//! Threshold Paillier encryption (Shoup 2000 / Damgård–Jurik 2001 with s = 1) on GMP, for
//! aggregating many members' updates so that only `threshold` members together can read the sum.
//!
//! - [`deal`]: a trusted dealer draws two safe primes `p = 2p' + 1`, `q = 2q' + 1`, sets `n = pq`,
//!   `m = p'q'` and the decryption exponent `d` (`d ≡ 0 mod m`, `d ≡ 1 mod n`), Shamir-shares `d`
//!   over Z_{nm} among `parties` members (member index `i` holds `s_i = f(i + 1)`), and publishes
//!   the [`PublicKey`] `n` and the [`VerificationKeys`] `v`, `v_i = v^{Δ s_i}` (Δ = parties!).
//! - Encryption uses `g = n + 1`, so `g^M = 1 + Mn mod n²` costs one multiplication; the only
//!   expensive part, `r^n mod n²`, comes from a [`Pool`] filled ahead of time (while the model
//!   trains), on all cores.
//! - [`KeyShare::decrypt_share`] gives `c_j^{2Δ s_i}` for every ciphertext of a vector, with one
//!   non-interactive proof ([`Proof`]) that the same `Δ s_i` is behind `v_i`;
//!   [`VerificationKeys::verify`] checks it and names the member; [`combine`] turns any
//!   `threshold` valid partials into the plaintexts.
//! - [`pack`]: fixed-point quantization with stochastic rounding and many values per plaintext,
//!   with headroom for the sum of all members; [`encrypt_packed`] and [`sum`] tie it together.
//!
//! Every type has an explicit, versioned byte format (`to_bytes` / `from_bytes`); decoding checks
//! lengths and ranges and never allocates more than the declared bounds.
//!
//! ```
//! use fedmesh_crypto::paillier::{self, pack::Packer, Pool};
//! use rand::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! // Tiny 256-bit keys for the example only; real networks use 2048 or 3072 bits.
//! let dealing = paillier::deal(256, 2, 3, &mut rng).unwrap();
//! let (pk, vks) = (&dealing.public, &dealing.verification);
//! let packer = Packer::new(pk, 8, 1.0, 2).unwrap();
//! let pool = Pool::new();
//! pool.fill(pk, 2, &mut rng);
//! let a = paillier::encrypt_packed(pk, &packer, &[0.5, -0.25], &pool, &mut rng).unwrap();
//! let b = paillier::encrypt_packed(pk, &packer, &[0.25, 1.0], &pool, &mut rng).unwrap();
//! let total = paillier::sum(pk, &[a.ciphertexts, b.ciphertexts]).unwrap();
//! let partials: Vec<_> = dealing.shares[..2].iter()
//!     .map(|s| s.decrypt_share(pk, vks, &total, b"example", &mut rng).unwrap())
//!     .collect();
//! for p in &partials { vks.verify(pk, &total, p, b"example").unwrap(); }
//! let plain = paillier::combine(pk, vks, &partials).unwrap();
//! let q = packer.unpack_sum(&plain, 2, 2).unwrap();
//! assert_eq!(q, vec![a.quantized[0] + b.quantized[0], a.quantized[1] + b.quantized[1]]);
//! ```
//!
//! # Security
//! The dealer knows the factorisation and every share: it is trusted at genesis and must forget
//! them. Secret integers are overwritten on drop as far as GMP allows (GMP's own scratch space
//! during an exponentiation is not wiped), and exponentiations with a secret exponent use GMP's
//! side-channel-resistant `mpz_powm_sec`.

mod bytes;
mod cipher;
mod keys;
mod multiexp;
pub mod pack;
mod threshold;

pub use bytes::{decode_ciphertexts, encode_ciphertexts, DecodeError};
pub use cipher::{
    encrypt_packed, sum, Ciphertext, EncryptError, Encrypted, FixedBase, Plaintext, Pool, SumError,
};
pub use keys::{
    deal, deal_from_primes, DealError, Dealing, KeyShare, PublicKey, VerificationKeys, MAX_PARTIES,
};
pub use threshold::{combine, CombineError, PartialDecryption, Proof, ShareError, VerifyError};

/// Current version of every byte format in this module (the first byte of each encoding).
pub const FORMAT_VERSION: u8 = 1;

/// Smallest and largest modulus sizes accepted, in bits. 2048 is the default for networks,
/// 3072 allowed; small keys exist for tests.
pub const MIN_KEY_BITS: u32 = 256;
/// See [`MIN_KEY_BITS`].
pub const MAX_KEY_BITS: u32 = 4096;
