//! The secure-aggregation primitives composed the way the protocol uses them, with a member that
//! drops after sharing its keys: the unmasked sum must equal the plain sum of those who sent input.

use fedmesh_crypto::secagg::{aead, agree, kdf, mask, shamir};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const N: usize = 6;
const THRESHOLD: usize = 4;
const ROUND: u64 = 11;
const BITS: u32 = 24;
const LEN: usize = 20_000;

struct Member {
    cipher_keys: agree::KeyPair,
    mask_keys: agree::KeyPair,
    self_seed: mask::Seed,
}

fn pair_stream() -> mask::Stream {
    mask::Stream {
        round: ROUND,
        purpose: mask::Purpose::Pairwise,
    }
}

fn self_stream() -> mask::Stream {
    mask::Stream {
        round: ROUND,
        purpose: mask::Purpose::SelfMask,
    }
}

fn pair_seed(mine: &agree::KeyPair, theirs: &agree::PublicKey, u: usize, v: usize) -> mask::Seed {
    let secret = mine.agree(theirs).unwrap();
    kdf::derive(&secret, kdf::Purpose::MaskSeed, ROUND, u as u32, v as u32).into()
}

fn share_key(mine: &agree::KeyPair, theirs: &agree::PublicKey, u: usize, v: usize) -> kdf::Key {
    let secret = mine.agree(theirs).unwrap();
    kdf::derive(&secret, kdf::Purpose::ShareKey, ROUND, u as u32, v as u32)
}

#[test]
fn masked_sum_with_a_dropout_equals_the_plain_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(2017);
    let members: Vec<Member> = (0..N)
        .map(|_| Member {
            cipher_keys: agree::KeyPair::generate(&mut rng),
            mask_keys: agree::KeyPair::generate(&mut rng),
            self_seed: mask::Seed::random(&mut rng),
        })
        .collect();
    let xs: Vec<u32> = (1..=N as u32).collect();

    // ShareKeys: sealed[u][v] carries u's shares of b_u and s_u for v; u keeps its own pair.
    let mut sealed = vec![vec![None; N]; N];
    let mut own: Vec<Option<(shamir::Share, shamir::Share)>> = vec![None; N];
    for (u, m) in members.iter().enumerate() {
        let b_shares = shamir::split(m.self_seed.as_bytes(), THRESHOLD, &xs, &mut rng).unwrap();
        let s_shares =
            shamir::split(&m.mask_keys.secret_bytes(), THRESHOLD, &xs, &mut rng).unwrap();
        own[u] = Some((b_shares[u].clone(), s_shares[u].clone()));
        for v in (0..N).filter(|&v| v != u) {
            let mut plaintext = b_shares[v].to_bytes().to_vec();
            plaintext.extend_from_slice(&s_shares[v].to_bytes()[..]);
            let key = share_key(&m.cipher_keys, &members[v].cipher_keys.public(), u, v);
            let header = aead::Header {
                round: ROUND,
                sender: u as u32,
                recipient: v as u32,
            };
            sealed[u][v] = Some(aead::seal(&key, &header, &plaintext, &mut rng).unwrap());
        }
    }

    // MaskedInput: member 2 drops before sending; the others mask their inputs.
    let dropped = 2;
    let senders: Vec<usize> = (0..N).filter(|&u| u != dropped).collect();
    let low = (1u32 << BITS) - 1;
    let inputs: Vec<Vec<u32>> = (0..N)
        .map(|_| (0..LEN).map(|_| rng.gen::<u32>() & low).collect())
        .collect();
    let mut sum = vec![0u32; LEN];
    for &u in &senders {
        let mut y = inputs[u].clone();
        mask::add_mask(&mut y, &members[u].self_seed, self_stream(), BITS).unwrap();
        for v in (0..N).filter(|&v| v != u) {
            let seed = pair_seed(&members[u].mask_keys, &members[v].mask_keys.public(), u, v);
            if u < v {
                mask::add_mask(&mut y, &seed, pair_stream(), BITS).unwrap();
            } else {
                mask::sub_mask(&mut y, &seed, pair_stream(), BITS).unwrap();
            }
        }
        for (s, yi) in sum.iter_mut().zip(&y) {
            *s = s.wrapping_add(*yi) & low;
        }
    }
    let plain: Vec<u32> = (0..LEN)
        .map(|i| {
            senders
                .iter()
                .fold(0u32, |s, &u| s.wrapping_add(inputs[u][i]))
                & low
        })
        .collect();
    assert_ne!(sum, plain, "masks must hide the sum until unmasking");

    // Unmask: member 5 is gone too. The threshold of members left open what they were sent and
    // reveal the b-shares of the senders and the s-shares of the member that dropped.
    let survivors: Vec<usize> = senders.iter().copied().filter(|&v| v != 5).collect();
    assert_eq!(survivors.len(), THRESHOLD);
    let mut b_revealed: Vec<Vec<shamir::Share>> = vec![Vec::new(); N];
    let mut s_revealed: Vec<shamir::Share> = Vec::new();
    for &v in &survivors {
        for u in 0..N {
            let (b, s) = if u == v {
                own[v].clone().unwrap()
            } else {
                let key = share_key(
                    &members[v].cipher_keys,
                    &members[u].cipher_keys.public(),
                    v,
                    u,
                );
                let header = aead::Header {
                    round: ROUND,
                    sender: u as u32,
                    recipient: v as u32,
                };
                let plaintext = aead::open(&key, &header, sealed[u][v].as_ref().unwrap()).unwrap();
                let (b, s) = plaintext.split_at(shamir::SHARE_LEN);
                (
                    shamir::Share::from_bytes(b).unwrap(),
                    shamir::Share::from_bytes(s).unwrap(),
                )
            };
            assert_eq!((b.x(), s.x()), (v as u32 + 1, v as u32 + 1));
            if u == dropped {
                s_revealed.push(s);
            } else if senders.contains(&u) {
                b_revealed[u].push(b);
            }
        }
    }

    // Anyone can now remove the senders' self-masks...
    for &u in &senders {
        let seed = mask::Seed::from_bytes(&shamir::combine(&b_revealed[u], THRESHOLD).unwrap());
        mask::sub_mask(&mut sum, &seed, self_stream(), BITS).unwrap();
    }
    // ...and the dropped member's pairwise masks, which the senders added (v < dropped) or
    // subtracted (v > dropped) for it and which nobody cancelled.
    let recovered =
        agree::KeyPair::from_secret_bytes(&shamir::combine(&s_revealed, THRESHOLD).unwrap());
    assert_eq!(recovered.public(), members[dropped].mask_keys.public());
    for &v in &senders {
        let seed = pair_seed(&recovered, &members[v].mask_keys.public(), dropped, v);
        if v < dropped {
            mask::sub_mask(&mut sum, &seed, pair_stream(), BITS).unwrap();
        } else {
            mask::add_mask(&mut sum, &seed, pair_stream(), BITS).unwrap();
        }
    }
    assert_eq!(sum, plain);
}

#[test]
fn a_relayed_share_cannot_be_redirected_or_altered() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let keys: Vec<agree::KeyPair> = (0..3).map(|_| agree::KeyPair::generate(&mut rng)).collect();
    let header = aead::Header {
        round: ROUND,
        sender: 0,
        recipient: 1,
    };
    let sealed = aead::seal(
        &share_key(&keys[0], &keys[1].public(), 0, 1),
        &header,
        b"s",
        &mut rng,
    )
    .unwrap();
    // Member 2 cannot read it, even under the header that names it.
    let to_2 = aead::Header {
        recipient: 2,
        ..header
    };
    let err = aead::open(
        &share_key(&keys[2], &keys[0].public(), 2, 0),
        &to_2,
        &sealed,
    )
    .unwrap_err();
    assert!(matches!(err, aead::OpenError::Forged { culprit: 0, .. }));
    assert!(err.to_string().contains("member 0"));
    let mut bytes = sealed.clone().into_bytes();
    *bytes.last_mut().unwrap() ^= 1;
    let key = share_key(&keys[1], &keys[0].public(), 1, 0);
    assert!(aead::open(&key, &header, &aead::Sealed::from_bytes(bytes)).is_err());
    assert_eq!(&aead::open(&key, &header, &sealed).unwrap()[..], b"s");
}
