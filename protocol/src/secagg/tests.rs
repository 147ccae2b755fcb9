//! Whole rounds in-process: honest members, dropouts at every phase, a lying coordinator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::crypto::identity;

/// Who drops where.
#[derive(Debug, Clone, Default)]
pub struct Drops {
    pub before_sharing: BTreeSet<u32>,
    pub after_sharing: BTreeSet<u32>,
    pub after_input: BTreeSet<u32>,
    pub while_unmasking: BTreeSet<u32>,
}

pub fn setup(
    n: u32,
    threshold: usize,
    degree: usize,
    bits: u32,
    len: usize,
) -> (Arc<RoundParams>, Vec<identity::SecretKey>) {
    let keys: Vec<_> = (0..n)
        .map(|i| identity::SecretKey::from_seed([i as u8 + 1; 32]))
        .collect();
    let members: BTreeMap<u32, _> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public()))
        .collect();
    let ids: Vec<u32> = members.keys().copied().collect();
    let params = RoundParams {
        genesis: crate::Hash::of("test", b"genesis"),
        round: 9,
        members,
        threshold,
        bits,
        len,
        graph: graph::Graph::new(&ids, degree, [7u8; 32]),
    };
    (Arc::new(params), keys)
}

/// Run one round; returns the outcome and the inputs of the members that sent one.
pub fn run(
    params: &Arc<RoundParams>,
    keys: &[identity::SecretKey],
    inputs: &BTreeMap<u32, Vec<u64>>,
    drops: &Drops,
    rng: &mut ChaCha20Rng,
) -> Result<Outcome, SecaggError> {
    let mut coord = coordinator::CollectKeys::new(params.clone())?;
    let mut stage0 = BTreeMap::new();
    for (m, k) in keys.iter().enumerate() {
        let m = m as u32;
        let (next, msg) = member::Start::new(params.clone(), m)?.advertise(k, rng);
        coord.add(msg)?;
        stage0.insert(m, next);
    }
    let (mut coord, list) = coord.finish()?;
    let mut stage1 = BTreeMap::new();
    for (m, state) in stage0 {
        if drops.before_sharing.contains(&m) {
            continue;
        }
        let (next, msg) = state.share_keys(&list, &keys[m as usize], rng)?;
        coord.add(msg)?;
        stage1.insert(m, next);
    }
    let (mut coord, relayed) = coord.finish()?;
    let mut stage2 = BTreeMap::new();
    for (m, state) in stage1 {
        if drops.after_sharing.contains(&m) {
            continue;
        }
        let (next, msg) = state.masked_input(&relayed[&m], &inputs[&m], &keys[m as usize])?;
        coord.add(msg)?;
        stage2.insert(m, next);
    }
    let (mut coord, survivors) = coord.finish()?;
    let mut stage3 = BTreeMap::new();
    for (m, state) in stage2 {
        if drops.after_input.contains(&m) {
            continue;
        }
        let (next, msg) = state.consistency(&survivors, &keys[m as usize])?;
        coord.add(msg)?;
        stage3.insert(m, next);
    }
    let (mut coord, list) = coord.finish()?;
    for (m, state) in stage3 {
        if drops.while_unmasking.contains(&m) {
            continue;
        }
        coord.add(state.unmask(&list, &keys[m as usize])?)?;
    }
    coord.finish()
}

fn random_inputs(n: u32, len: usize, bits: u32, rng: &mut ChaCha20Rng) -> BTreeMap<u32, Vec<u64>> {
    let low = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (0..n)
        .map(|m| (m, (0..len).map(|_| rng.gen::<u64>() & low).collect()))
        .collect()
}

fn plain_sum(inputs: &BTreeMap<u32, Vec<u64>>, who: &[u32], len: usize, bits: u32) -> Vec<u64> {
    let low = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut s = vec![0u64; len];
    for m in who {
        for (a, v) in s.iter_mut().zip(&inputs[m]) {
            *a = a.wrapping_add(*v) & low;
        }
    }
    s
}

#[test]
fn dropouts_at_every_phase_still_give_the_survivors_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (params, keys) = setup(10, 5, 0, 40, 257);
    let inputs = random_inputs(10, 257, 40, &mut rng);
    let drops = Drops {
        before_sharing: [1].into(),
        after_sharing: [2, 3].into(),
        after_input: [4].into(),
        while_unmasking: [5].into(),
    };
    let out = run(&params, &keys, &inputs, &drops, &mut rng).unwrap();
    // Members 4 and 5 sent input: it counts even though they did not finish.
    assert_eq!(out.survivors, vec![0, 4, 5, 6, 7, 8, 9]);
    assert_eq!(out.sum, plain_sum(&inputs, &out.survivors, 257, 40));
    assert_eq!(out.dropped_before_sharing, vec![1]);
    assert_eq!(out.dropped_after_sharing, vec![2, 3]);
    assert_eq!(out.dropped_while_unmasking, vec![4, 5]);
}

#[test]
fn sparse_graph_round_sums_exactly() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let n = 40;
    let k = graph::suggested_degree(n as usize);
    let (params, keys) = setup(n, k / 2 + 1, k, 64, 100);
    assert!(!params.graph.is_complete());
    let inputs = random_inputs(n, 100, 64, &mut rng);
    let drops = Drops {
        after_sharing: [3, 17].into(),
        while_unmasking: [8].into(),
        ..Default::default()
    };
    let out = run(&params, &keys, &inputs, &drops, &mut rng).unwrap();
    assert_eq!(out.sum, plain_sum(&inputs, &out.survivors, 100, 64));
    assert_eq!(out.dropped_after_sharing, vec![3, 17]);
}

#[test]
fn too_few_survivors_abort_before_anything_is_revealed() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (params, keys) = setup(6, 4, 0, 32, 8);
    let inputs = random_inputs(6, 8, 32, &mut rng);
    let drops = Drops {
        after_sharing: [0, 1, 2].into(),
        ..Default::default()
    };
    let err = run(&params, &keys, &inputs, &drops, &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            SecaggError::TooFew {
                phase: "masked input",
                have: 3,
                need: 4
            }
        ),
        "{err}"
    );
}

#[test]
fn a_coordinator_showing_members_different_survivor_sets_is_caught() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (params, keys) = setup(5, 3, 0, 32, 4);
    let inputs = random_inputs(5, 4, 32, &mut rng);
    let mut coord = coordinator::CollectKeys::new(params.clone()).unwrap();
    let mut s0 = Vec::new();
    for m in 0..5u32 {
        let (next, msg) = member::Start::new(params.clone(), m)
            .unwrap()
            .advertise(&keys[m as usize], &mut rng);
        coord.add(msg).unwrap();
        s0.push(next);
    }
    let (mut coord, list) = coord.finish().unwrap();
    let mut s1 = Vec::new();
    for (m, st) in s0.into_iter().enumerate() {
        let (next, msg) = st.share_keys(&list, &keys[m], &mut rng).unwrap();
        coord.add(msg).unwrap();
        s1.push(next);
    }
    let (mut coord, relayed) = coord.finish().unwrap();
    let mut s2 = Vec::new();
    for (m, st) in s1.into_iter().enumerate() {
        let (next, msg) = st
            .masked_input(&relayed[&(m as u32)], &inputs[&(m as u32)], &keys[m])
            .unwrap();
        coord.add(msg).unwrap();
        s2.push(next);
    }
    // The coordinator claims member 4 dropped to members 0..=2 (so they would reveal its mask
    // key), while members 3 and 4 get the true set (so 4's self seed is revealed too).
    let truth = Survivors {
        round: params.round,
        members: vec![0, 1, 2, 3, 4],
    };
    let lie = Survivors {
        round: params.round,
        members: vec![0, 1, 2, 3],
    };
    let mut sigs = Vec::new();
    let mut s3 = Vec::new();
    for (m, st) in s2.into_iter().enumerate() {
        let shown = if m <= 2 { &lie } else { &truth };
        let (next, msg) = st.consistency(shown, &keys[m]).unwrap();
        sigs.push(msg);
        s3.push(next);
    }
    let _ = coord;
    // Whatever mix of signatures the coordinator relays, nobody who saw the lie unmasks.
    let to_liars = ConsistencyList {
        round: params.round,
        survivors: lie.members.clone(),
        signatures: sigs.clone(),
    };
    let mut s3 = s3.into_iter();
    let err = s3.next().unwrap().unmask(&to_liars, &keys[0]).unwrap_err();
    assert!(matches!(err, SecaggError::Coordinator(_)), "{err}");
    // Only the lie's own signatures (3 = threshold) would pass, but then members 3 and 4 refuse.
    let only_lie: Vec<_> = sigs[..3].to_vec();
    let to_honest = ConsistencyList {
        round: params.round,
        survivors: truth.members.clone(),
        signatures: only_lie,
    };
    let err = s3.nth(2).unwrap().unmask(&to_honest, &keys[3]).unwrap_err();
    assert!(matches!(err, SecaggError::Coordinator(_)), "{err}");
}

#[test]
fn forged_and_misrouted_messages_name_their_culprit() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (params, keys) = setup(4, 3, 0, 32, 4);
    let mut coord = coordinator::CollectKeys::new(params.clone()).unwrap();
    let (_, msg) = member::Start::new(params.clone(), 1)
        .unwrap()
        .advertise(&keys[2], &mut rng);
    assert_eq!(
        coord.add(msg).unwrap_err().culprit(),
        Some(1),
        "signed by another member's key"
    );
    let (_, msg) = member::Start::new(params.clone(), 1)
        .unwrap()
        .advertise(&keys[1], &mut rng);
    coord.add(msg.clone()).unwrap();
    assert!(matches!(
        coord.add(msg).unwrap_err(),
        SecaggError::Duplicate { culprit: 1, .. }
    ));
}

#[test]
fn a_corrupt_unmask_share_is_detected() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let (params, keys) = setup(6, 3, 0, 32, 16);
    let inputs = random_inputs(6, 16, 32, &mut rng);
    // Run to phase 4 by hand, corrupting one share of dropped member 5's mask key.
    let mut coord = coordinator::CollectKeys::new(params.clone()).unwrap();
    let mut st0 = Vec::new();
    for m in 0..6u32 {
        let (n, msg) = member::Start::new(params.clone(), m)
            .unwrap()
            .advertise(&keys[m as usize], &mut rng);
        coord.add(msg).unwrap();
        st0.push(n);
    }
    let (mut coord, list) = coord.finish().unwrap();
    let mut st1 = Vec::new();
    for (m, s) in st0.into_iter().enumerate() {
        let (n, msg) = s.share_keys(&list, &keys[m], &mut rng).unwrap();
        coord.add(msg).unwrap();
        st1.push(n);
    }
    let (mut coord, relayed) = coord.finish().unwrap();
    let mut st2 = Vec::new();
    for (m, s) in st1.into_iter().enumerate().take(5) {
        let (n, msg) = s
            .masked_input(&relayed[&(m as u32)], &inputs[&(m as u32)], &keys[m])
            .unwrap();
        coord.add(msg).unwrap();
        st2.push(n);
    }
    let (mut coord, surv) = coord.finish().unwrap();
    let mut st3 = Vec::new();
    for (m, s) in st2.into_iter().enumerate() {
        let (n, msg) = s.consistency(&surv, &keys[m]).unwrap();
        coord.add(msg).unwrap();
        st3.push(n);
    }
    let (mut coord, clist) = coord.finish().unwrap();
    for (m, s) in st3.into_iter().enumerate() {
        let mut msg = s.unmask(&clist, &keys[m]).unwrap();
        if m == 0 {
            // Re-sign a tampered share: a malicious member 0, not a transmission error.
            let (v, share) = msg.body.mask_key_shares[0].clone();
            let mut bytes = share.to_bytes().to_vec();
            bytes[10] ^= 1;
            msg.body.mask_key_shares[0] = (
                v,
                crate::crypto::secagg::shamir::Share::from_bytes(&bytes).unwrap(),
            );
            msg = Signed::sign(params.genesis, msg.body, &keys[0]);
        }
        coord.add(msg).unwrap();
    }
    let err = coord.finish().unwrap_err();
    assert!(
        matches!(err, SecaggError::Recovery { member: 5, .. }),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random n ≤ 30, random dropouts: with enough survivors at every phase the unmasked sum is
    /// exactly the survivors' sum; otherwise the round aborts with TooFew.
    #[test]
    fn random_rounds_sum_exactly_or_abort(n in 3u32..=30, seed in any::<u64>(), sparse in any::<bool>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let degree = if sparse { graph::suggested_degree(n as usize) } else { 0 };
        let neighbours = if degree == 0 || degree >= n as usize - 1 { n as usize - 1 } else { degree };
        let threshold = (neighbours.div_ceil(2) + 1).max(2);
        let (params, keys) = setup(n, threshold, degree, 48, 12);
        let inputs = random_inputs(n, 12, 48, &mut rng);
        let mut drops = Drops::default();
        for m in 0..n {
            match rng.gen_range(0..12) {
                0 => { drops.before_sharing.insert(m); }
                1 => { drops.after_sharing.insert(m); }
                2 => { drops.after_input.insert(m); }
                3 => { drops.while_unmasking.insert(m); }
                _ => {}
            }
        }
        match run(&params, &keys, &inputs, &drops, &mut rng) {
            Ok(out) => {
                let expected: Vec<u32> = (0..n)
                    .filter(|m| !drops.before_sharing.contains(m) && !drops.after_sharing.contains(m))
                    .collect();
                prop_assert_eq!(&out.survivors, &expected);
                prop_assert_eq!(out.sum, plain_sum(&inputs, &expected, 12, 48));
            }
            Err(SecaggError::TooFew { .. }) => {
                // Some phase had fewer than `threshold` members.
                let alive = |phase: usize| (0..n).filter(|m| {
                    let gone = [&drops.before_sharing, &drops.after_sharing, &drops.after_input, &drops.while_unmasking];
                    !gone[..phase].iter().any(|d| d.contains(m))
                }).count();
                let global = (1..=4).any(|phase| alive(phase) < threshold);
                // With neighbourhoods a member may also lack enough neighbours that shared.
                let shared = |m: &u32| !drops.before_sharing.contains(m);
                let local = !params.graph.is_complete()
                    && (0..n).filter(shared).any(|m| params.graph.neighbours(m).iter().filter(|v| shared(v)).count() + 1 < threshold);
                prop_assert!(global || local, "aborted with enough members");
            }
            Err(SecaggError::Recovery { member, .. }) => {
                // Only with neighbourhoods: the member's holders (its neighbours and itself) that
                // took part in unmasking are fewer than the threshold.
                prop_assert!(!params.graph.is_complete());
                let unmasked = |m: &u32| ![&drops.before_sharing, &drops.after_sharing, &drops.after_input, &drops.while_unmasking]
                    .iter().any(|d| d.contains(m));
                let holders = params.graph.neighbours(member).iter().chain([&member]).filter(|m| unmasked(m)).count();
                prop_assert!(holders < threshold, "member {member} had {holders} holders");
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
