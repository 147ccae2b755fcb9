use std::collections::BTreeMap;

use super::*;

fn mnist() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/mnist_5k.csv.gz"
    ))
}

fn small(out: &Path) -> Poisoning {
    // One kernel thread per member, as the CLI does (nextest runs each test in its own process).
    single_threaded_kernels();
    Poisoning {
        attack: "sign-flip".into(),
        fraction: 0.2,
        defence: "krum".into(),
        members: 6,
        rounds: 4,
        non_iid: None,
        seed: 3,
        out: out.to_path_buf(),
        matrix: false,
        attacks: vec!["sign-flip".into()],
        defences: vec!["krum".into()],
        fractions: vec![0.2],
        data: mnist(),
        threads: 2,
        mode: "plain".into(),
        modes: Vec::new(),
        group_size: None,
        dropout: 0.0,
        reference_rows: Some(0),
    }
}

#[test]
fn sign_flipper_is_evicted_under_krum_and_the_report_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = small(dir.path());
    poisoning(&p).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let s = &json["summary"];
    // 20 % of 6 rounds to one attacker.
    assert_eq!(s["attackers"].as_array().unwrap().len(), 1);
    assert_eq!(s["evicted_attackers"], 1, "{s}");
    assert!(s["honest_evicted"].as_array().unwrap().is_empty(), "{s}");
    assert!(
        s["clean_honest_evicted"].as_array().unwrap().is_empty(),
        "{s}"
    );
    // Evicted members leave the member set: the last round aggregated 5 members.
    let rounds = json["attacked"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4);
    assert_eq!(rounds.last().unwrap()["active"], 5, "{rounds:?}");
    // Krum holds the model: within a few points of the clean run.
    let (fin, clean) = (
        s["final_accuracy"].as_f64().unwrap(),
        s["clean_accuracy"].as_f64().unwrap(),
    );
    assert!(fin > 0.6 && fin > clean - 0.1, "{fin} vs {clean}");
    for f in ["report.md", "accuracy.svg", "detection.svg"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(text.len() > 200, "{f}");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| final accuracy (%)"), "{md}");
}

#[test]
fn matrix_writes_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = small(dir.path());
    p.matrix = true;
    p.rounds = 2;
    p.attacks = vec!["gaussian".into(), "alie".into()];
    p.defences = vec!["none".into(), "fedmesh".into()];
    poisoning(&p).unwrap();
    let md = std::fs::read_to_string(dir.path().join("matrix.md")).unwrap();
    assert_eq!(md.matches("| gaussian |").count(), 2, "{md}");
    assert_eq!(md.matches("| alie |").count(), 2, "{md}");
    assert!(md.contains("## Targets"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("matrix.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenarios"].as_array().unwrap().len(), 4);
    assert!(dir
        .path()
        .join("runs/alie-fedmesh-20/accuracy.svg")
        .exists());
}

#[test]
fn bad_flags_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = small(dir.path());
    p.attack = "nuke".into();
    let err = poisoning(&p).unwrap_err().to_string();
    assert!(
        err.contains("--attack") && err.contains("sign-flip"),
        "{err}"
    );
    let mut p = small(dir.path());
    p.fraction = 0.7;
    assert!(poisoning(&p)
        .unwrap_err()
        .to_string()
        .contains("--fraction"));
    let mut p = small(dir.path());
    p.defence = "wall".into();
    assert!(poisoning(&p).unwrap_err().to_string().contains("--defence"));
}

#[test]
fn every_named_attack_and_defence_resolves() {
    for a in ATTACKS {
        let c = attack_config(a).unwrap();
        c.validate(Some(10)).unwrap();
        assert!(!c.is_honest(), "{a}");
    }
    for d in DEFENCES {
        defence_spec(d).unwrap().validate().unwrap();
    }
    assert_eq!(choose_attackers(20, 0.2, 1).len(), 4);
    assert_eq!(choose_attackers(20, 0.2, 1), choose_attackers(20, 0.2, 1));
    assert!(choose_attackers(20, 0.0, 1).is_empty());
}

/// Random updates of `len` values for `members`, each with weight 100 + its index.
fn random_updates(members: u32, len: usize, seed: u64) -> BTreeMap<u32, (Vec<f32>, u64)> {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..members)
        .map(|m| {
            let x = (0..len).map(|_| rng.gen_range(-0.05f32..0.05)).collect();
            (m, (x, 100 + u64::from(m)))
        })
        .collect()
}

/// Every revealed sum of the secure path covers at least g members even with members dropping
/// before and during the protocol, and it is the weighted mean of exactly its contributors.
fn check_reveal(mode: Mode, rounds: u64, dropout: f64) {
    let world = world(12, None, 3, &mnist(), 0).unwrap();
    let settings = groups::Settings {
        mode,
        size: 4,
        dropout,
        paillier: (mode == Mode::Paillier).then(|| groups::PaillierKit::deal(12, 3).unwrap()),
    };
    let mut head = world.network;
    let (mut withheld, mut dropped, mut merged) = (0, 0, 0);
    for round in 1..=rounds {
        let updates = random_updates(12, 40, round);
        let r = groups::reveal(&settings, &world, 3, &head, round, &updates).unwrap();
        dropped += r.dropped_before.len() + r.dropped_during.len();
        withheld += r.withheld.len();
        merged += usize::from(r.sums.len() + r.withheld.len() < r.drawn.len());
        for sum in &r.sums {
            assert!(
                sum.contributors.len() >= 4,
                "round {round}: {:?}",
                sum.contributors
            );
            for m in &sum.contributors {
                assert!(!r.dropped_before.contains(m) && !r.dropped_during.contains(m));
            }
            let weight: u64 = sum.contributors.iter().map(|m| updates[m].1).sum();
            let count = sum.contributors.len() as f32;
            for i in 0..40 {
                // secagg: the weighted mean; paillier: the unweighted mean (see GroupSum).
                let expected = match mode {
                    Mode::Paillier => {
                        sum.contributors
                            .iter()
                            .map(|m| updates[m].0[i])
                            .sum::<f32>()
                            / count
                    }
                    _ => {
                        sum.contributors
                            .iter()
                            .map(|m| updates[m].0[i] * updates[m].1 as f32)
                            .sum::<f32>()
                            / weight as f32
                    }
                };
                assert!(
                    (sum.mean[i] - expected).abs() < 1e-3,
                    "round {round} value {i}"
                );
            }
            if mode != Mode::Paillier {
                assert_eq!(sum.weight, weight);
            }
        }
        // Nobody is in two revealed sums, nobody dropped is in one.
        let mut all: Vec<u32> = r.sums.iter().flat_map(|s| s.contributors.clone()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        let update = r.sums.first().map_or(&[][..], |s| &s.mean[..]);
        head = groups::next_head(&head, round, update);
    }
    if dropout > 0.0 {
        assert!(
            dropped > 0 && (withheld > 0 || merged > 0),
            "the drops were exercised"
        );
    }
}

#[test]
fn secagg_group_sums_cover_at_least_g_members_despite_dropouts() {
    check_reveal(Mode::Secagg, 8, 0.25);
}

#[test]
fn paillier_group_sums_cover_at_least_g_members_despite_dropouts() {
    check_reveal(Mode::Paillier, 2, 0.25);
}

#[test]
fn a_secagg_drill_writes_its_mode_and_never_reveals_a_small_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = small(dir.path());
    p.members = 10;
    p.rounds = 3;
    p.defence = "fedmesh".into();
    p.mode = "secagg".into();
    p.group_size = Some(5);
    p.dropout = 0.1;
    poisoning(&p).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let s = &json["summary"];
    assert_eq!(s["mode"], "secagg", "{s}");
    assert_eq!(s["group_size"], 5, "{s}");
    assert!(s["min_revealed"].as_u64().unwrap() >= 5, "{s}");
    for r in json["attacked"]["rounds"].as_array().unwrap() {
        for c in r["groups"]["revealed"].as_array().unwrap() {
            assert!(c.as_u64().unwrap() >= 5, "{r}");
        }
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("--mode secagg --group-size 5"), "{md}");
    // A group size below 2 or above the members is refused, naming the flag.
    p.group_size = Some(1);
    assert!(poisoning(&p)
        .unwrap_err()
        .to_string()
        .contains("--group-size"));
    p.group_size = Some(5);
    p.mode = "onion".into();
    assert!(poisoning(&p).unwrap_err().to_string().contains("--mode"));
}

/// The Paillier path's group sum is exactly the sum of the quantized values its members
/// encrypted, and those are the members' updates rounded to the quantization grid: each
/// coordinate of the mean is within one step of the plain mean (members beyond the clip are
/// clipped first).
#[test]
fn paillier_group_sum_equals_the_plain_sum_of_quantized_updates() {
    use rand::Rng;
    use rand_chacha::ChaCha20Rng;
    use std::collections::BTreeSet;
    let world = world(6, None, 3, &mnist(), 0).unwrap();
    let kit = groups::PaillierKit::deal(6, 11).unwrap();
    let len = 60;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let updates: BTreeMap<u32, (Vec<f32>, u64)> = (0..6u32)
        .map(|m| {
            let x = (0..len)
                .map(|i| match i {
                    0 => 0.0,
                    1 => -groups::PAILLIER_CLIP,
                    2 => 3.0 * groups::PAILLIER_CLIP, // clipped to +clip
                    _ => rng.gen_range(-0.2f32..0.2),
                })
                .collect();
            (m, (x, 10 + u64::from(m)))
        })
        .collect();
    let group = [0, 2, 3, 4, 5];
    let late = BTreeSet::from([5]);
    // With member 5 late, four remain: below g = 5, nothing is revealed.
    let none = groups::paillier_sum(&kit, &world, 1, &group, &late, 5, &updates, &mut rng).unwrap();
    assert!(none.is_none());
    let got = groups::paillier_sum(&kit, &world, 1, &group, &late, 4, &updates, &mut rng)
        .unwrap()
        .expect("four of four sent");
    let members = [0u32, 2, 3, 4];
    assert_eq!(got.sum.contributors, members);
    assert_eq!(got.sum.weight, 10 + 12 + 13 + 14);
    let scale = kit.packer().scale();
    let max = kit.packer().max_level();
    for i in 0..len {
        let plain: f64 = members
            .iter()
            .map(|m| {
                f64::from(updates[m].0[i].clamp(-groups::PAILLIER_CLIP, groups::PAILLIER_CLIP))
                    * scale
            })
            .sum();
        // Stochastic rounding moves each member's value by less than one step.
        assert!(
            (got.decrypted[i] as f64 - plain).abs() < members.len() as f64,
            "value {i}: decrypted {} for {plain}",
            got.decrypted[i]
        );
        let mean = got.decrypted[i] as f64 / scale / members.len() as f64;
        assert!(
            (f64::from(got.sum.mean[i]) - mean).abs() < 1e-6,
            "value {i}"
        );
    }
    // Values on the grid need no rounding: 0 and ±clip are exact.
    assert_eq!(got.decrypted[0], 0);
    assert_eq!(got.decrypted[1], -4 * max);
    assert_eq!(got.decrypted[2], 4 * max);
}
