use super::score::{self, History};
use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn inputs<'a>(xs: &'a [Vec<f32>]) -> Vec<Input<'a>> {
    xs.iter()
        .enumerate()
        .map(|(i, x)| Input::new(i as u32, x, 1))
        .collect()
}

fn run(rule: Rule, xs: &[Vec<f32>]) -> Aggregate {
    aggregate(&rule, &inputs(xs), &mut State::default()).unwrap()
}

fn scalars(v: &[f32]) -> Vec<Vec<f32>> {
    v.iter().map(|x| vec![*x]).collect()
}

#[test]
fn mean_weights_by_samples() {
    let (a, b) = ([0.0f32, 10.0], [4.0f32, 0.0]);
    let out = aggregate(
        &Rule::Mean,
        &[Input::new(0, &a, 3), Input::new(1, &b, 1)],
        &mut State::default(),
    )
    .unwrap();
    assert_eq!(out.update, vec![1.0, 7.5]);
}

#[test]
fn median_odd_and_even() {
    assert_eq!(
        run(Rule::Median, &scalars(&[5.0, -1.0, 100.0])).update,
        [5.0]
    );
    assert_eq!(
        run(Rule::Median, &scalars(&[5.0, -1.0, 100.0, 1.0])).update,
        [3.0]
    );
    // Coordinates are independent.
    let xs = vec![vec![1.0, 9.0], vec![2.0, 8.0], vec![300.0, -70.0]];
    assert_eq!(run(Rule::Median, &xs).update, [2.0, 8.0]);
}

#[test]
fn trimmed_mean_drops_both_tails() {
    // β = 0.2 of 5: one value cut at each end of every coordinate.
    let xs = scalars(&[1.0, 2.0, 3.0, -1000.0, 1000.0]);
    assert_eq!(run(Rule::TrimmedMean { beta: 0.2 }, &xs).update, [2.0]);
    // β = 0 is the plain (unweighted) mean.
    assert_eq!(
        run(Rule::TrimmedMean { beta: 0.0 }, &scalars(&[1.0, 2.0, 6.0])).update,
        [3.0]
    );
    let err = aggregate(
        &Rule::TrimmedMean { beta: 0.5 },
        &inputs(&xs),
        &mut State::default(),
    )
    .unwrap_err();
    assert!(matches!(err, AggregateError::Parameter { .. }), "{err}");
}

#[test]
fn winsorized_mean_clamps_the_tails_and_keeps_weights() {
    // β = 0.2 of 5: values clamped to [2nd smallest, 2nd largest] = [1, 3].
    let xs = scalars(&[1.0, 2.0, 3.0, -1000.0, 1000.0]);
    assert_eq!(
        run(Rule::WinsorizedMean { beta: 0.2 }, &xs).update,
        [(1.0 + 2.0 + 3.0 + 1.0 + 3.0) / 5.0]
    );
    // Sample weights count: 3 rows at 0, 1 row at 4 → 1.
    let (a, b, c, d, e) = ([0.0f32], [4.0f32], [0.0f32], [0.0f32], [4.0f32]);
    let inputs = [
        Input::new(0, &a, 3),
        Input::new(1, &b, 1),
        Input::new(2, &c, 0),
        Input::new(3, &d, 0),
        Input::new(4, &e, 0),
    ];
    let out = aggregate(
        &Rule::WinsorizedMean { beta: 0.2 },
        &inputs,
        &mut State::default(),
    )
    .unwrap();
    assert_eq!(out.update, [1.0]);
    // A coordinate that every honest member leaves at 0 stays at 0 whatever a minority sends.
    let xs = scalars(&[0.0, 0.0, 0.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(run(Rule::WinsorizedMean { beta: 0.2 }, &xs).update, [0.0]);
}

#[test]
fn krum_picks_the_most_central_update() {
    // f = 1, n = 5: score = sum of the 2 smallest squared distances. Point 1.0 scores 1 + 1 = 2.
    let xs = scalars(&[0.0, 1.0, 2.0, 100.0, -100.0]);
    let out = run(Rule::Krum { f: Some(1) }, &xs);
    assert_eq!(out.update, [1.0]);
    assert_eq!(out.trust, [0.0, 1.0, 0.0, 0.0, 0.0]);
    // Multi-Krum with m = 3 averages the three best: 0, 1 and 2.
    let out = run(
        Rule::MultiKrum {
            f: Some(1),
            m: Some(3),
        },
        &xs,
    );
    assert_eq!(out.update, [1.0]);
    assert_eq!(out.trust, [1.0, 1.0, 1.0, 0.0, 0.0]);
    // Default m = n − f = 4 takes one outlier; the order puts 100 before −100 (distance to 2).
    let out = run(
        Rule::MultiKrum {
            f: Some(1),
            m: None,
        },
        &xs,
    );
    assert_eq!(out.trust, [1.0, 1.0, 1.0, 1.0, 0.0]);
    assert_eq!(out.update, [103.0 / 4.0]);
}

#[test]
fn krum_needs_enough_updates() {
    let xs = scalars(&[0.0, 1.0, 2.0]);
    let err = aggregate(
        &Rule::Krum { f: Some(1) },
        &inputs(&xs),
        &mut State::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        AggregateError::TooFew {
            rule: "krum",
            attackers: 1,
            need: 4,
            have: 3
        }
    );
}

#[test]
fn centered_clipping_bounds_an_outliers_pull() {
    // Center starts at the median 1; radius 3 clips the outlier's pull to 3, shared by 4 inputs.
    let xs = scalars(&[1.0, 1.0, 1.0, 1000.0]);
    let out = run(
        Rule::CenteredClipping {
            radius: 3.0,
            iterations: 1,
        },
        &xs,
    );
    assert_eq!(out.update, [1.75]);
    assert_eq!(out.trust, [1.0, 1.0, 1.0, 3.0 / 999.0]);
    // Second iteration: the cluster pulls back by 0.75 each, the outlier pushes 3.
    let out = run(
        Rule::CenteredClipping {
            radius: 3.0,
            iterations: 2,
        },
        &xs,
    );
    assert_eq!(out.update, [1.9375]);
    // Automatic radius: the median distance to the start is 0, so the outlier has no pull.
    let out = run(
        Rule::CenteredClipping {
            radius: 0.0,
            iterations: 3,
        },
        &xs,
    );
    assert_eq!(out.update, [1.0]);
}

#[test]
fn foolsgold_silences_clones() {
    let e = |i: usize| {
        let mut v = vec![0.0f32; 6];
        v[i] = 1.0;
        v
    };
    let clone: Vec<f32> = vec![0.0, 0.0, 0.0, 0.0, 3.0, 3.0];
    let xs = vec![e(0), e(1), e(2), clone.clone(), clone.clone(), clone];
    let mut state = State::default();
    let out = aggregate(
        &Rule::FoolsGold { confidence: 1.0 },
        &inputs(&xs),
        &mut state,
    )
    .unwrap();
    assert_eq!(out.trust, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    let third = 1.0f32 / 3.0;
    assert_eq!(out.update, [third, third, third, 0.0, 0.0, 0.0]);
    // The history is kept: the sums of what each member sent.
    assert_eq!(state.histories[&3], vec![0.0, 0.0, 0.0, 0.0, 3.0, 3.0]);
    // A second round where the clones differ slightly still sees their shared history.
    let mut xs2 = xs.clone();
    xs2[3][0] = 0.01;
    let out = aggregate(
        &Rule::FoolsGold { confidence: 1.0 },
        &inputs(&xs2),
        &mut state,
    )
    .unwrap();
    assert!(out.trust[3..].iter().all(|a| *a == 0.0), "{:?}", out.trust);
    assert!(out.trust[..3].iter().all(|a| *a == 1.0), "{:?}", out.trust);
}

#[test]
fn bad_inputs_name_the_culprit() {
    let (a, b, c) = ([1.0f32, 2.0], [1.0f32], [f32::NAN, 0.0]);
    let mut s = State::default();
    assert_eq!(
        aggregate(&Rule::Median, &[], &mut s).unwrap_err(),
        AggregateError::Empty
    );
    assert_eq!(
        aggregate(
            &Rule::Median,
            &[Input::new(4, &a, 1), Input::new(7, &b, 1)],
            &mut s
        )
        .unwrap_err(),
        AggregateError::Length {
            culprit: 7,
            found: 1,
            expected: 2
        }
    );
    assert_eq!(
        aggregate(
            &Rule::Mean,
            &[Input::new(4, &a, 1), Input::new(5, &c, 1)],
            &mut s
        )
        .unwrap_err(),
        AggregateError::NonFinite {
            culprit: 5,
            index: 0
        }
    );
    assert_eq!(
        aggregate(
            &Rule::Mean,
            &[Input::new(4, &a, 1), Input::new(4, &a, 1)],
            &mut s
        )
        .unwrap_err(),
        AggregateError::Duplicate { culprit: 4 }
    );
    assert_eq!(
        aggregate(&Rule::Mean, &[Input::new(4, &a, 0)], &mut s).unwrap_err(),
        AggregateError::ZeroWeight
    );
}

/// 16 honest updates around a common direction, 4 attackers: returns (all updates, attackers).
fn population(len: usize, attack: impl Fn(&[f32]) -> Vec<f32>) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let base: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut xs: Vec<Vec<f32>> = (0..16)
        .map(|_| {
            base.iter()
                .map(|b| b + rng.gen_range(-0.5f32..0.5))
                .collect()
        })
        .collect();
    for _ in 0..4 {
        xs.push(attack(&base));
    }
    xs
}

#[test]
fn robust_rules_resist_sign_flips_where_the_mean_does_not() {
    let len = 1000;
    let xs = population(len, |b| b.iter().map(|v| -10.0 * v).collect());
    let honest = linalg::weighted_mean(
        &xs[..16].iter().map(|x| &x[..]).collect::<Vec<_>>(),
        &[1.0; 16],
    );
    let cos = |v: &[f32]| {
        linalg::cosine(
            linalg::dot(v, &honest),
            linalg::dot(v, v),
            linalg::dot(&honest, &honest),
        )
    };
    assert!(cos(&run(Rule::Mean, &xs).update) < 0.0);
    for rule in [
        Rule::Median,
        Rule::TrimmedMean { beta: 0.25 },
        Rule::WinsorizedMean { beta: 0.25 },
        Rule::Krum { f: None },
        Rule::MultiKrum { f: None, m: None },
        Rule::CenteredClipping {
            radius: 0.0,
            iterations: 3,
        },
        Rule::FoolsGold { confidence: 1.0 },
    ] {
        let c = cos(&run(rule.clone(), &xs).update);
        assert!(c > 0.8, "{}: cosine to the honest mean {c}", rule.name());
    }
}

#[test]
fn twenty_members_of_100k_values() {
    // The size the drills run at: every rule must handle it (and quickly, see BENCHMARKS).
    let xs = population(100_000, |b| b.iter().map(|v| -v).collect());
    for rule in [
        Rule::Mean,
        Rule::Median,
        Rule::TrimmedMean { beta: 0.2 },
        Rule::WinsorizedMean { beta: 0.2 },
        Rule::Krum { f: None },
        Rule::MultiKrum { f: None, m: None },
        Rule::CenteredClipping {
            radius: 0.0,
            iterations: 3,
        },
        Rule::FoolsGold { confidence: 1.0 },
    ] {
        let out = run(rule, &xs);
        assert_eq!(out.update.len(), 100_000);
    }
    let scores = score::round_scores(&inputs(&xs), &run(Rule::Median, &xs).update);
    assert!(scores[16..].iter().all(|s| s.score > 5.0));
}

#[test]
fn scores_single_out_flips_clones_and_scaling() {
    let len = 500;
    let mut xs = population(len, |b| b.iter().map(|v| -v).collect());
    // Member 19: the honest mean scaled twentyfold instead of a flip.
    let honest: Vec<&[f32]> = xs[..16].iter().map(|x| &x[..]).collect();
    xs[19] = linalg::weighted_mean(&honest, &[1.0; 16])
        .iter()
        .map(|v| v * 20.0)
        .collect();
    let agg = run(Rule::Median, &xs).update;
    let s = score::round_scores(&inputs(&xs), &agg);
    for p in &s[..16] {
        assert!(p.score < 3.0, "honest {} scored {:?}", p.member, p);
    }
    for p in &s[16..19] {
        // Sign flipped clones: low cosine and identical to each other.
        assert!(
            p.deviations.cosine > 5.0 && p.deviations.similarity > 5.0,
            "{p:?}"
        );
    }
    assert!(
        s[19].deviations.norm > 5.0 && s[19].score > 5.0,
        "{:?}",
        s[19]
    );
    assert_ne!(s[0].evidence(3), s[0].evidence(4));
}

#[test]
fn too_few_inputs_score_zero() {
    let xs = scalars(&[1.0, -100.0, 3.0]);
    let s = score::round_scores(&inputs(&xs), &[1.0]);
    assert!(s.iter().all(|p| p.score == 0.0));
}

#[test]
fn history_is_an_ewma_with_streaks_and_survives_encoding() {
    let mut h = History::default();
    let p = |member, score| score::PeerScore {
        member,
        features: score::Features {
            distance: 0.0,
            cosine: 0.0,
            norm: 0.0,
            max_similarity: 0.0,
        },
        deviations: score::Deviations {
            distance: 0.0,
            cosine: 0.0,
            norm: 0.0,
            similarity: 0.0,
        },
        score,
    };
    h.record(1, &[p(0, 8.0), p(1, 1.0)], 0.5, 3.0);
    assert_eq!(h.peers[&0].ewma, 4.0);
    assert_eq!(h.peers[&1].ewma, 0.5);
    assert_eq!(h.suspects(1), vec![(0, 4.0)]);
    assert!(h.suspects(2).is_empty());
    h.record(2, &[p(0, 0.0), p(1, 1.0)], 0.5, 3.0);
    assert_eq!(h.peers[&0].ewma, 2.0);
    assert_eq!(h.peers[&0].streak, 0);
    assert_eq!(h.peers[&1].ewma, 0.75);
    h.record(3, &[p(0, 10.0)], 0.5, 3.0);
    h.record(4, &[p(0, 10.0)], 0.5, 3.0);
    assert_eq!(h.suspects(2), vec![(0, 8.0)]);
    assert_eq!(h.peers[&1].last_round, 2);
    let back = History::decode(&h.encode()).unwrap();
    assert_eq!(back, h);
    assert!(History::decode(&[0xff, 0xff, 0xff]).is_err());
    h.remove(0);
    assert!(h.suspects(1).is_empty());
}

proptest! {
    #[test]
    fn coordinate_rules_stay_within_the_inputs(
        cols in prop::collection::vec(prop::collection::vec(-1e3f32..1e3, 3), 5..12),
    ) {
        let lo: Vec<f32> = (0..3).map(|k| cols.iter().map(|x| x[k]).fold(f32::INFINITY, f32::min)).collect();
        let hi: Vec<f32> = (0..3).map(|k| cols.iter().map(|x| x[k]).fold(f32::NEG_INFINITY, f32::max)).collect();
        for rule in [Rule::Median, Rule::TrimmedMean { beta: 0.2 }, Rule::WinsorizedMean { beta: 0.2 }, Rule::CenteredClipping { radius: 0.0, iterations: 2 }] {
            let out = run(rule, &cols).update;
            for k in 0..3 {
                prop_assert!(out[k] >= lo[k] - 1e-3 && out[k] <= hi[k] + 1e-3);
            }
        }
        let k = run(Rule::Krum { f: Some(1) }, &cols).update;
        prop_assert!(cols.contains(&k));
    }
}
