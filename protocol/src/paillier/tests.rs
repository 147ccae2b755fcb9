//! Whole paillier rounds in-process on a small (512-bit) key: the decrypted sum equals the plain
//! sum of the quantized updates; a forged partial is rejected and its sender named; fewer than
//! threshold partials decrypt nothing; malformed and oversized updates are refused.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

const N: u32 = 5;
const THRESHOLD: usize = 3;
const LEN: usize = 300;

struct Net {
    params: RoundParams,
    keys: Keys,
    shares: Vec<KeyShare>,
    ids: Vec<identity::SecretKey>,
    packer: Packer,
}

fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let dealing = paillier::deal(512, THRESHOLD, N as usize, &mut rng).unwrap();
        let ids: Vec<_> = (0..N)
            .map(|i| identity::SecretKey::from_seed([i as u8 + 9; 32]))
            .collect();
        let params = RoundParams {
            genesis: Hash::of("test", b"paillier genesis"),
            round: 4,
            members: ids
                .iter()
                .enumerate()
                .map(|(i, k)| (i as u32, k.public()))
                .collect(),
            len: LEN,
            min_contributors: 2,
        };
        let packer = Packer::new(&dealing.public, 16, 0.5, N as usize).unwrap();
        Net {
            params,
            keys: Keys {
                public: dealing.public,
                verification: dealing.verification,
            },
            shares: dealing.shares,
            ids,
            packer,
        }
    })
}

/// Every member encrypts a random update; returns the messages and the plain sum of the
/// quantized values.
fn updates(net: &Net, rng: &mut ChaCha20Rng) -> (Vec<Signed<EncryptedUpdate>>, Vec<i64>) {
    let pool = Pool::new();
    pool.fill(
        &net.keys.public,
        N as usize * net.packer.plaintexts_for(LEN),
        rng,
    );
    let mut expected = vec![0i64; LEN];
    let msgs = (0..N)
        .map(|m| {
            let values: Vec<f32> = (0..LEN).map(|_| rng.gen_range(-0.6f32..0.6)).collect();
            let (msg, enc) = encrypt_update(
                &net.params,
                &net.keys,
                &net.packer,
                &pool,
                m,
                &net.ids[m as usize],
                &values,
                rng,
            )
            .unwrap();
            for (e, q) in expected.iter_mut().zip(&enc.quantized) {
                *e += q;
            }
            assert_eq!(msg.body.clipped, enc.clipped as u64);
            msg
        })
        .collect();
    (msgs, expected)
}

#[test]
fn round_decrypts_the_plain_sum_despite_a_forged_partial() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (msgs, expected) = updates(net, &mut rng);
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs {
        collect.add_update(m).unwrap();
    }
    assert!(matches!(
        collect.add_update(&msgs[2]),
        Err(PaillierError::Duplicate { culprit: 2, .. })
    ));
    let mut decrypt = collect.close().unwrap();

    // Member 1 forges: it signs a partial made for another context (a replayed proof).
    let other = net.shares[1]
        .decrypt_share(
            &net.keys.public,
            &net.keys.verification,
            decrypt.sum(),
            b"elsewhere",
            &mut rng,
        )
        .unwrap();
    let forged = Signed::sign(
        net.params.genesis,
        Partial {
            round: net.params.round,
            member: 1,
            sum_hash: decrypt.sum_hash(),
            partial: other.to_bytes(&net.keys.public),
        },
        &net.ids[1],
    );
    let err = decrypt.add_partial(&forged).unwrap_err();
    assert!(
        matches!(err, PaillierError::BadPartial { culprit: 1, .. }),
        "{err}"
    );
    assert_eq!(err.culprit(), Some(1));

    // Member 3 sends member 0's partial as its own (signed by 3).
    let p0 = decrypt
        .partial(&net.shares[0], 0, &net.ids[0], &mut rng)
        .unwrap();
    let stolen = Signed::sign(
        net.params.genesis,
        Partial {
            member: 3,
            ..p0.body.clone()
        },
        &net.ids[3],
    );
    assert!(matches!(
        decrypt.add_partial(&stolen),
        Err(PaillierError::BadPartial { culprit: 3, .. })
    ));

    assert_eq!(decrypt.add_partial(&p0).unwrap(), 1);
    let p2 = decrypt
        .partial(&net.shares[2], 2, &net.ids[2], &mut rng)
        .unwrap();
    assert_eq!(decrypt.add_partial(&p2).unwrap(), 2);
    assert!(!decrypt.ready());
    let p4 = decrypt
        .partial(&net.shares[4], 4, &net.ids[4], &mut rng)
        .unwrap();
    assert_eq!(decrypt.add_partial(&p4).unwrap(), 3);
    assert!(decrypt.ready());
    let sum_hash = decrypt.sum_hash();
    let out = decrypt.finish().unwrap();
    assert_eq!(out.sum, expected);
    let s = &out.summary;
    assert_eq!(s.decryptors, vec![0, 2, 4]);
    assert_eq!(s.rejected, vec![1, 3]);
    assert_eq!(s.sum_hash, sum_hash);
    assert_eq!(
        s.update_hashes,
        msgs.iter()
            .map(|m| (m.body.member, m.body.hash()))
            .collect::<Vec<_>>()
    );
    let means = net.packer.dequantize(&out.sum);
    assert!(means.iter().all(|v| v.abs() <= 0.5 * N as f32 + 1e-3));
}

#[test]
fn fewer_than_threshold_partials_decrypt_nothing() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (msgs, _) = updates(net, &mut rng);
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs[..3] {
        collect.add_update(m).unwrap();
    }
    assert_eq!(collect.contributors(), vec![0, 1, 2]);
    let mut decrypt = collect.close().unwrap();
    for m in [0u32, 4] {
        let p = decrypt
            .partial(&net.shares[m as usize], m, &net.ids[m as usize], &mut rng)
            .unwrap();
        decrypt.add_partial(&p).unwrap();
    }
    assert!(matches!(
        decrypt.finish(),
        Err(PaillierError::TooFewPartials { have: 2, need: 3 })
    ));
}

#[test]
fn bad_messages_are_refused_with_their_sender() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (msgs, _) = updates(net, &mut rng);
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);

    let mut long = msgs[0].body.clone();
    long.ciphertexts.extend_from_slice(&[0; 64]);
    let long = Signed::sign(net.params.genesis, long, &net.ids[0]);
    assert!(matches!(
        collect.add_update(&long),
        Err(PaillierError::Size { culprit: 0, .. })
    ));

    let mut garbage = msgs[1].body.clone();
    garbage.ciphertexts[10..20].fill(0xff);
    garbage.ciphertexts[6..6 + net.keys.public.ciphertext_len()].fill(0xff);
    let garbage = Signed::sign(net.params.genesis, garbage, &net.ids[1]);
    assert!(matches!(
        collect.add_update(&garbage),
        Err(PaillierError::Malformed { culprit: 1, .. })
    ));

    let mut unsigned = msgs[2].clone();
    unsigned.body.clipped += 1;
    assert!(matches!(
        collect.add_update(&unsigned),
        Err(PaillierError::Signature { culprit: 2, .. })
    ));

    let mut late = msgs[3].body.clone();
    late.round = 3;
    let late = Signed::sign(net.params.genesis, late, &net.ids[3]);
    assert!(matches!(
        collect.add_update(&late),
        Err(PaillierError::WrongRound { culprit: 3, .. })
    ));

    collect.add_update(&msgs[4]).unwrap();
    assert!(matches!(
        collect.close(),
        Err(PaillierError::TooFewUpdates { have: 1, need: 2 })
    ));

    // A partial over a different sum is refused, naming its sender.
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs {
        collect.add_update(m).unwrap();
    }
    let mut decrypt = collect.close().unwrap();
    let mut p = decrypt
        .partial(&net.shares[2], 2, &net.ids[2], &mut rng)
        .unwrap()
        .body;
    p.sum_hash = Hash::of("test", b"another sum");
    let p = Signed::sign(net.params.genesis, p, &net.ids[2]);
    assert!(matches!(
        decrypt.add_partial(&p),
        Err(PaillierError::WrongSum { culprit: 2, .. })
    ));
}

#[test]
fn keys_parse_from_genesis_hex() {
    let net = net();
    let pk = hex::encode(net.keys.public.to_bytes());
    let vk = hex::encode(net.keys.verification.to_bytes(&net.keys.public));
    let keys = Keys::from_hex(&pk, &vk).unwrap();
    assert_eq!(keys.public, net.keys.public);
    assert!(Keys::from_hex("zz", &vk).is_err());
    assert!(Keys::from_hex(&pk, &vk[..vk.len() - 2]).is_err());
}

/// Regression guard: members that hold different sets of updates still decrypt the same sum when
/// they close on the announced contributor set.
#[test]
fn closing_on_an_announced_set_gives_the_same_sum() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (msgs, _) = updates(net, &mut rng);
    let mut all = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs {
        all.add_update(m).unwrap();
    }
    let mut some = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs[1..4] {
        some.add_update(m).unwrap();
    }
    let announced = [1, 3, 2];
    let a = all.close_for(&announced).unwrap();
    let b = some.close_for(&announced).unwrap();
    assert_eq!(a.sum_hash(), b.sum_hash());
    let mut lacking = Collect::new(&net.params, &net.keys, &net.packer);
    lacking.add_update(&msgs[1]).unwrap();
    assert!(matches!(
        lacking.close_for(&announced),
        Err(PaillierError::MissingUpdate { member: 2 })
    ));
}

/// Every member's quantized values for `values` (the packing is deterministic given the rng).
fn encrypt_each(
    net: &Net,
    values: &[Vec<f32>],
    rng: &mut ChaCha20Rng,
) -> (Vec<Signed<EncryptedUpdate>>, Vec<Vec<i64>>) {
    let pool = Pool::new();
    values
        .iter()
        .enumerate()
        .map(|(m, v)| {
            let (msg, enc) = encrypt_update(
                &net.params,
                &net.keys,
                &net.packer,
                &pool,
                m as u32,
                &net.ids[m],
                v,
                rng,
            )
            .unwrap();
            (msg, enc.quantized)
        })
        .unzip()
}

/// Decrypt `d` with the first `THRESHOLD` members' partials.
fn decrypt_with_threshold<'a>(mut d: Decrypt<'a>, rng: &mut ChaCha20Rng) -> Decrypt<'a> {
    let net = net();
    for m in 0..THRESHOLD as u32 {
        let p = d
            .partial(&net.shares[m as usize], m, &net.ids[m as usize], rng)
            .unwrap();
        d.add_partial(&p).unwrap();
    }
    d
}

/// Group products: each group's product decrypts to the plain sum of exactly its members'
/// values; the groups partition the contributors; a product of fewer members than the group
/// size is refused; a partial of the round's sum does not count for a group's product.
#[test]
fn group_products_decrypt_to_their_members_sums_and_small_groups_are_refused() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let values: Vec<Vec<f32>> = (0..N)
        .map(|_| (0..LEN).map(|_| rng.gen_range(-0.4f32..0.4)).collect())
        .collect();
    let (msgs, quantized) = encrypt_each(net, &values, &mut rng);
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs {
        collect.add_update(m).unwrap();
    }
    let all: Vec<u32> = (0..N).collect();
    let groups = round_groups(&Hash::of("head", b"g"), net.params.round, &all, &all, 2);
    assert_eq!(groups.len(), 2, "5 members, groups of at least 2");
    let mut covered: Vec<u32> = groups.concat();
    covered.sort_unstable();
    assert_eq!(covered, all, "the groups partition the contributors");

    let whole = collect.close_for(&all).unwrap();
    for group in &groups {
        let d = collect.close_group(group, 2).unwrap();
        assert_ne!(d.sum_hash(), whole.sum_hash());
        // The round's sum's partial names another product: refused.
        let mut wrong = d.clone();
        let p = whole
            .partial(&net.shares[0], 0, &net.ids[0], &mut rng)
            .unwrap();
        assert!(matches!(
            wrong.add_partial(&p),
            Err(PaillierError::WrongSum { culprit: 0, .. })
        ));
        let sum = decrypt_with_threshold(d, &mut rng).finish().unwrap().sum;
        let expected: Vec<i64> = (0..LEN)
            .map(|i| group.iter().map(|&m| quantized[m as usize][i]).sum())
            .collect();
        assert_eq!(sum, expected, "group {group:?}");
    }
    // Fewer than the group size (or than 2): refused before anything is decrypted.
    assert!(matches!(
        collect.close_group(&[0, 1], 3),
        Err(PaillierError::TooFewUpdates { have: 2, need: 3 })
    ));
    assert!(matches!(
        collect.close_group(&[3], 0),
        Err(PaillierError::TooFewUpdates { have: 1, need: 2 })
    ));
    // Round groups need `size` contributors: fewer give no group at all.
    assert!(round_groups(&Hash::ZERO, 1, &all, &[0, 1], 3).is_empty());
    assert_eq!(group_size(0, 3), 3);
    assert_eq!(group_size(0, 11), 6);
    assert_eq!(group_size(4, 11), 4);
}

/// An update whose plaintexts are out of range (well-formed, signed, right count) spoils the
/// round's sum (`Pack` error, yet its record can still be made: who decrypted it) and the sum of
/// its own group, while the other group's sum decodes to its members' plain sum.
#[test]
fn an_out_of_range_update_spoils_only_its_group() {
    let net = net();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let values: Vec<Vec<f32>> = (0..N)
        .map(|_| (0..LEN).map(|_| rng.gen_range(-0.05f32..0.05)).collect())
        .collect();
    let (mut msgs, quantized) = encrypt_each(net, &values, &mut rng);
    // Member 4: slot 0 of every plaintext past what 5 members can sum to, without carrying.
    let max = net.packer.max_level() as u64;
    let capacity = 1u64 << net.packer.slot_bits();
    let value = (N as u64 * 2 * max + capacity) / 2 - (N as u64 - 1) * max;
    let big = paillier::Plaintext::from_be_bytes(&value.to_be_bytes());
    let count = net.packer.plaintexts_for(LEN);
    let cts: Vec<_> = (0..count)
        .map(|_| net.keys.public.encrypt(&big, &mut rng).unwrap())
        .collect();
    msgs[4] = Signed::sign(
        net.params.genesis,
        EncryptedUpdate {
            round: net.params.round,
            member: 4,
            clipped: 0,
            ciphertexts: paillier::encode_ciphertexts(&net.keys.public, &cts),
        },
        &net.ids[4],
    );
    let mut collect = Collect::new(&net.params, &net.keys, &net.packer);
    for m in &msgs {
        collect
            .add_update(m)
            .expect("it passes every check on ciphertexts");
    }
    let all: Vec<u32> = (0..N).collect();
    let whole = decrypt_with_threshold(collect.close_for(&all).unwrap(), &mut rng);
    assert!(matches!(whole.decode(), Err(PaillierError::Pack(_))));
    let summary = whole.summary().unwrap();
    assert_eq!(summary.decryptors, vec![0, 1, 2]);
    assert_eq!(summary.update_hashes.len(), N as usize);

    let groups = round_groups(&Hash::of("head", b"o"), net.params.round, &all, &all, 2);
    for group in &groups {
        let d = decrypt_with_threshold(collect.close_group(group, 2).unwrap(), &mut rng);
        if group.contains(&4) {
            assert!(
                matches!(d.decode(), Err(PaillierError::Pack(_))),
                "group {group:?} holds the out-of-range update"
            );
        } else {
            let expected: Vec<i64> = (0..LEN)
                .map(|i| group.iter().map(|&m| quantized[m as usize][i]).sum())
                .collect();
            assert_eq!(d.decode().unwrap(), expected, "group {group:?}");
        }
    }
}
