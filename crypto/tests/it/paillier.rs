//! Threshold Paillier end to end on small (512-bit) keys: packed sums of up to 100 members decrypt
//! to the plain sum of their quantized values; wrong partials are caught and their sender named;
//! fewer than threshold partials decrypt nothing; every byte format round-trips and rejects bad
//! input.

use std::sync::OnceLock;

use fedmesh_crypto::paillier::{
    self, pack::Packer, CombineError, Dealing, DecodeError, FixedBase, KeyShare, PartialDecryption,
    Pool, PublicKey, VerificationKeys, VerifyError,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const PARTIES: usize = 100;
const THRESHOLD: usize = 3;
const CONTEXT: &[u8] = b"test round 1";

/// One 512-bit key dealt to 100 members, 3 of them needed; generated once per test binary.
fn dealing() -> &'static Dealing {
    static D: OnceLock<Dealing> = OnceLock::new();
    D.get_or_init(|| {
        paillier::deal(
            512,
            THRESHOLD,
            PARTIES,
            &mut ChaCha20Rng::seed_from_u64(2024),
        )
        .unwrap()
    })
}

fn partials(
    d: &Dealing,
    who: &[usize],
    cts: &[paillier::Ciphertext],
    rng: &mut ChaCha20Rng,
) -> Vec<PartialDecryption> {
    who.iter()
        .map(|&i| {
            d.shares[i]
                .decrypt_share(&d.public, &d.verification, cts, CONTEXT, rng)
                .unwrap()
        })
        .collect()
}

/// The property that matters: for random vectors (negatives and clipped values included) and
/// member counts up to 100, the threshold-decrypted packed sum equals the plain sum of the
/// quantized values, whichever members decrypt.
#[test]
fn packed_sum_of_many_members_decrypts_to_plain_sum() {
    let d = dealing();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let fixed = FixedBase::new(pk, &mut rng);
    for (members, len, bits) in [
        (1usize, 5usize, 8u32),
        (2, 40, 16),
        (7, 23, 12),
        (100, 61, 16),
    ] {
        let packer = Packer::new(pk, bits, 1.0, members).unwrap();
        let pool = Pool::new();
        // Half the randomness precomputed (both kinds), the rest computed on the spot.
        let per_member = packer.plaintexts_for(len);
        pool.fill(pk, members * per_member / 4, &mut rng);
        pool.fill_short(&fixed, members * per_member / 4, &mut rng);
        let mut expected = vec![0i64; len];
        let mut vectors = Vec::new();
        let mut clipped = 0;
        for _ in 0..members {
            let values: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.2f32..1.2)).collect();
            let enc = paillier::encrypt_packed(pk, &packer, &values, &pool, &mut rng).unwrap();
            assert_eq!(enc.ciphertexts.len(), per_member);
            for (e, q) in expected.iter_mut().zip(&enc.quantized) {
                *e += q;
            }
            clipped += enc.clipped;
            vectors.push(enc.ciphertexts);
        }
        assert!(
            expected.iter().any(|&s| s < 0),
            "negative sums are exercised"
        );
        if members * len > 50 {
            assert!(clipped > 0, "values beyond ±clip are exercised and counted");
        }
        let total = paillier::sum(pk, &vectors).unwrap();
        let mut who: Vec<usize> = (0..PARTIES).collect();
        who.shuffle(&mut rng);
        let parts = partials(d, &who[..THRESHOLD], &total, &mut rng);
        for p in &parts {
            vks.verify(pk, &total, p, CONTEXT).unwrap();
        }
        let plain = paillier::combine(pk, vks, &parts).unwrap();
        assert_eq!(
            packer.unpack_sum(&plain, len, members).unwrap(),
            expected,
            "{members} members"
        );
    }
}

#[test]
fn any_threshold_subset_gives_the_same_plaintext() {
    let d = dealing();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let m = paillier::Plaintext::from_be_bytes(&[0x12, 0x34, 0x56, 0x78, 0x9a]);
    let c = vec![pk.encrypt(&m, &mut rng).unwrap()];
    for who in [[0, 1, 2], [99, 50, 3], [97, 98, 99]] {
        let parts = partials(d, &who, &c, &mut rng);
        assert_eq!(paillier::combine(pk, vks, &parts).unwrap(), vec![m.clone()]);
    }
    // More than threshold: the extra ones are ignored.
    let parts = partials(d, &[4, 5, 6, 7], &c, &mut rng);
    assert_eq!(paillier::combine(pk, vks, &parts).unwrap(), vec![m]);
}

#[test]
fn fewer_than_threshold_partials_decrypt_nothing() {
    let d = dealing();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let c = vec![pk
        .encrypt(&paillier::Plaintext::from_be_bytes(&[42]), &mut rng)
        .unwrap()];
    let parts = partials(d, &[10, 20], &c, &mut rng);
    assert_eq!(
        paillier::combine(pk, vks, &parts),
        Err(CombineError::NotEnough {
            have: 2,
            need: THRESHOLD
        })
    );
    let dup = vec![parts[0].clone(), parts[1].clone(), parts[0].clone()];
    assert_eq!(
        paillier::combine(pk, vks, &dup),
        Err(CombineError::Duplicate { index: 10 })
    );
}

/// Regression guard for the batched proof: a partial that is wrong in a single position, made
/// for another context or other ciphertexts, or claimed by another member, is rejected and the
/// member it claims to come from is named.
#[test]
fn wrong_or_forged_partials_are_rejected_and_sender_named() {
    let d = dealing();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let cts: Vec<_> = (0..5u8)
        .map(|i| {
            pk.encrypt(&paillier::Plaintext::from_be_bytes(&[i, 7]), &mut rng)
                .unwrap()
        })
        .collect();
    let good = d.shares[33]
        .decrypt_share(pk, vks, &cts, CONTEXT, &mut rng)
        .unwrap();
    vks.verify(pk, &cts, &good, CONTEXT).unwrap();

    // One value changed (multiplied by 1 + n, i.e. the plaintext shifted by one), proof kept.
    let mut bytes = good.to_bytes(pk);
    let len = pk.ciphertext_len();
    let at = 10 + 2 * len; // third value
    let mut v = rug_like_add_one(&bytes[at..at + len]);
    bytes[at..at + len].swap_with_slice(&mut v);
    let forged = PartialDecryption::from_bytes(pk, vks, &bytes, 16).unwrap();
    assert_eq!(
        vks.verify(pk, &cts, &forged, CONTEXT),
        Err(VerifyError::BadProof { culprit: 33 })
    );

    // Wrong context, wrong ciphertexts.
    assert_eq!(
        vks.verify(pk, &cts, &good, b"other round"),
        Err(VerifyError::BadProof { culprit: 33 })
    );
    let mut other = cts.clone();
    other.swap(0, 1);
    assert_eq!(
        vks.verify(pk, &other, &good, CONTEXT),
        Err(VerifyError::BadProof { culprit: 33 })
    );

    // Member 34 replays 33's partial under its own index.
    let mut bytes = good.to_bytes(pk);
    bytes[2..6].copy_from_slice(&34u32.to_le_bytes());
    let replayed = PartialDecryption::from_bytes(pk, vks, &bytes, 16).unwrap();
    assert_eq!(
        vks.verify(pk, &cts, &replayed, CONTEXT),
        Err(VerifyError::BadProof { culprit: 34 })
    );

    // A member with a wrong key share (someone else's secret under its own index) cannot prove.
    let mut share_bytes = d.shares[40].to_bytes();
    share_bytes[4..8].copy_from_slice(&41u32.to_le_bytes());
    let impostor = KeyShare::from_bytes(&share_bytes).unwrap();
    let bad = impostor
        .decrypt_share(pk, vks, &cts, CONTEXT, &mut rng)
        .unwrap();
    assert_eq!(
        vks.verify(pk, &cts, &bad, CONTEXT),
        Err(VerifyError::BadProof { culprit: 41 })
    );

    // Unknown member and wrong length.
    bytes[2..6].copy_from_slice(&500u32.to_le_bytes());
    let unknown = PartialDecryption::from_bytes(pk, vks, &bytes, 16).unwrap();
    assert_eq!(
        vks.verify(pk, &cts, &unknown, CONTEXT),
        Err(VerifyError::UnknownMember { culprit: 500 })
    );
    assert_eq!(
        vks.verify(pk, &cts[..4], &good, CONTEXT),
        Err(VerifyError::Length {
            culprit: 33,
            found: 5,
            expected: 4
        })
    );
}

/// `x · (1 + n)`-like change without the key: add one to the big-endian value (stays in range
/// for these random values).
fn rug_like_add_one(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    out
}

fn assert_rejects_every_truncation<T: std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) {
    for cut in 0..bytes.len() {
        assert!(
            decode(&bytes[..cut]).is_err(),
            "a {cut}-byte prefix of {} decoded",
            bytes.len()
        );
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(matches!(
        decode(&long),
        Err(DecodeError::Trailing { extra: 1, .. })
    ));
    let mut wrong_version = bytes.to_vec();
    wrong_version[0] = 9;
    assert!(matches!(
        decode(&wrong_version),
        Err(DecodeError::Version { found: 9, .. })
    ));
}

#[test]
fn byte_formats_round_trip_and_reject_bad_input() {
    let d = dealing();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(11);

    let pk_bytes = pk.to_bytes();
    assert_eq!(&PublicKey::from_bytes(&pk_bytes).unwrap(), pk);
    assert_rejects_every_truncation(&pk_bytes, PublicKey::from_bytes);
    let mut even = pk_bytes.clone();
    *even.last_mut().unwrap() &= 0xfe;
    assert!(matches!(
        PublicKey::from_bytes(&even),
        Err(DecodeError::Range { .. })
    ));

    let vk_bytes = vks.to_bytes(pk);
    assert_eq!(&VerificationKeys::from_bytes(pk, &vk_bytes).unwrap(), vks);
    assert_rejects_every_truncation(&vk_bytes[..], |b| VerificationKeys::from_bytes(pk, b));
    let mut huge = vk_bytes.clone();
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        VerificationKeys::from_bytes(pk, &huge),
        Err(DecodeError::TooMany { .. })
    ));

    let share = &d.shares[5];
    let share_bytes = share.to_bytes();
    let back = KeyShare::from_bytes(&share_bytes).unwrap();
    assert_eq!(back.to_bytes(), share_bytes);
    assert_eq!(back.index(), 5);
    assert_rejects_every_truncation(&share_bytes, KeyShare::from_bytes);

    let cts: Vec<_> = (0..3u8)
        .map(|i| {
            pk.encrypt(&paillier::Plaintext::from_be_bytes(&[i]), &mut rng)
                .unwrap()
        })
        .collect();
    let ct_bytes = paillier::encode_ciphertexts(pk, &cts);
    assert_eq!(paillier::decode_ciphertexts(pk, &ct_bytes, 3).unwrap(), cts);
    assert_rejects_every_truncation(&ct_bytes, |b| paillier::decode_ciphertexts(pk, b, 3));
    assert!(matches!(
        paillier::decode_ciphertexts(pk, &ct_bytes, 2),
        Err(DecodeError::TooMany {
            count: 3,
            max: 2,
            ..
        })
    ));
    let mut out_of_range = ct_bytes.clone();
    out_of_range[6..6 + pk.ciphertext_len()].fill(0xff); // ≥ n²
    assert!(matches!(
        paillier::decode_ciphertexts(pk, &out_of_range, 3),
        Err(DecodeError::Range { .. })
    ));
    let mut zero = ct_bytes.clone();
    zero[6..6 + pk.ciphertext_len()].fill(0);
    assert!(matches!(
        paillier::decode_ciphertexts(pk, &zero, 3),
        Err(DecodeError::Range { .. })
    ));
    // A count that claims more ciphertexts than the bytes hold is refused before allocating.
    let mut lying = ct_bytes[..6].to_vec();
    lying[2..6].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        paillier::decode_ciphertexts(pk, &lying, usize::MAX),
        Err(DecodeError::Truncated { .. })
    ));

    let partial = d.shares[7]
        .decrypt_share(pk, vks, &cts, CONTEXT, &mut rng)
        .unwrap();
    let p_bytes = partial.to_bytes(pk);
    let back = PartialDecryption::from_bytes(pk, vks, &p_bytes, 3).unwrap();
    assert_eq!(back, partial);
    vks.verify(pk, &cts, &back, CONTEXT).unwrap();
    assert_rejects_every_truncation(&p_bytes, |b| PartialDecryption::from_bytes(pk, vks, b, 3));
    // An oversized proof response is refused.
    let z_at = 10 + 3 * pk.ciphertext_len() + 32;
    let mut long_z = p_bytes[..z_at].to_vec();
    long_z.extend_from_slice(&4000u16.to_le_bytes());
    long_z.extend(std::iter::repeat_n(1u8, 4000));
    assert!(matches!(
        PartialDecryption::from_bytes(pk, vks, &long_z, 3),
        Err(DecodeError::Range { .. })
    ));
}

#[test]
fn pool_is_bound_to_its_key_and_used_once() {
    let d = dealing();
    let pk = &d.public;
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let other = paillier::deal(256, 1, 1, &mut rng).unwrap();
    let pool = Pool::new();
    pool.fill(&other.public, 4, &mut rng);
    let packer = Packer::new(pk, 8, 1.0, 2).unwrap();
    let enc = paillier::encrypt_packed(pk, &packer, &[0.5; 10], &pool, &mut rng).unwrap();
    assert_eq!(
        enc.fresh,
        enc.ciphertexts.len(),
        "another key's randomness is never used"
    );
    pool.fill(pk, 3, &mut rng);
    assert_eq!(
        pool.len(),
        3,
        "refilling for a new key drops the old key's values"
    );
    let enc = paillier::encrypt_packed(pk, &packer, &[0.5; 10], &pool, &mut rng).unwrap();
    assert_eq!((enc.fresh, pool.len()), (0, 3 - enc.ciphertexts.len()));
    let small = Packer::new(&other.public, 8, 1.0, 2).unwrap();
    assert!(paillier::encrypt_packed(pk, &small, &[0.5], &pool, &mut rng).is_err());
}

#[test]
fn debug_output_hides_secrets() {
    let d = dealing();
    let text = format!("{:?}", d.shares[0]);
    assert!(text.contains("redacted"), "{text}");
    let pool = Pool::new();
    assert!(format!("{pool:?}").contains("redacted"));
}
