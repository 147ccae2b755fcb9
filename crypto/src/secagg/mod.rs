//! Cryptographic building blocks of secure aggregation (Bonawitz et al., CCS 2017, the variant
//! with signatures): pure functions and types; the rounds themselves live in `fedmesh-protocol`.
//!
//! - [`agree`]: X25519 key pairs; each member advertises two per round.
//! - [`kdf`]: blake3 turns an agreed secret into a key for one purpose, round and pair.
//! - [`aead`]: ChaCha20-Poly1305 seals the shares a member sends each other member.
//! - [`shamir`]: t-of-n sharing of 32-byte secrets (the self-mask seed and the mask key) over
//!   GF(2^256 + 297), one 37-byte share per recipient, with the full 256 bits of entropy.
//! - [`mask`]: a seed expanded by ChaCha20 into a vector over Z_(2^bits), added or subtracted in
//!   place on all cores.
//!
//! Member `u`'s masked input is `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)`;
//! the pairwise masks cancel in the sum, and the survivors' shares let anyone remove the
//! self-masks of members that sent input and the pairwise masks of members that dropped.
//!
//! ```
//! use fedmesh_crypto::secagg::{agree, kdf, mask, shamir};
//! use rand::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let (round, bits) = (7, 20);
//! let (u, v) = (agree::KeyPair::generate(&mut rng), agree::KeyPair::generate(&mut rng));
//! let pair_seed = |me: &agree::KeyPair, them: &agree::KeyPair| -> mask::Seed {
//!     let secret = me.agree(&them.public()).unwrap();
//!     kdf::derive(&secret, kdf::Purpose::MaskSeed, round, 0, 1).into()
//! };
//! let stream = mask::Stream { round, purpose: mask::Purpose::Pairwise };
//! let (mut y0, mut y1) = (vec![1u32, 2, 3], vec![10u32, 20, 30]);
//! mask::add_mask(&mut y0, &pair_seed(&u, &v), stream, bits).unwrap(); // member 0 < 1 adds
//! mask::sub_mask(&mut y1, &pair_seed(&v, &u), stream, bits).unwrap(); // member 1 subtracts
//! let sum: Vec<u32> = y0.iter().zip(&y1).map(|(a, b)| (a + b) % (1 << bits)).collect();
//! assert_eq!(sum, [11, 22, 33]);
//!
//! // Member 0's mask key, shared 2-of-3, rebuilds its masks if it drops.
//! let shares = shamir::split(&u.secret_bytes(), 2, &[1, 2, 3], &mut rng).unwrap();
//! let back = shamir::combine(&shares[1..], 2).unwrap();
//! assert_eq!(agree::KeyPair::from_secret_bytes(&back).public(), u.public());
//! ```

pub mod aead;
pub mod agree;
mod encoding;
mod field;
pub mod kdf;
pub mod mask;
pub mod shamir;
