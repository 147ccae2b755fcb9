use super::*;

fn mnist() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/mnist_5k.csv.gz"
    ))
}

fn small(out: &std::path::Path, scenario: Scenario) -> Sybil {
    // One kernel thread per member, as the CLI does (nextest runs each test in its own process;
    // without it candle's kernels oversubscribe the cores several times over).
    crate::drill::single_threaded_kernels();
    Sybil {
        scenario,
        members: 6,
        clones: vec![3],
        clone_data: CloneData::Focused,
        rounds: 4,
        non_iid: None,
        seed: 3,
        out: out.to_path_buf(),
        data: mnist(),
        threads: 2,
    }
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn assert_files(dir: &std::path::Path, case: &str) {
    for f in ["report.md", "report.json"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.len() > 200, "{f}");
    }
    for f in ["report.md", "report.json", "accuracy.svg", "detection.svg"] {
        let path = dir.join("runs").join(case).join(f);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() > 200, "{}", path.display());
    }
}

#[test]
fn clones_are_evicted_and_flagged_by_their_similarity() {
    let dir = tempfile::tempdir().unwrap();
    sybil(&small(dir.path(), Scenario::Clones)).unwrap();
    assert_files(dir.path(), "clones-3");
    assert!(
        std::fs::read_to_string(dir.path().join("attack_success.svg"))
            .unwrap()
            .contains("clones-3")
    );
    let json = report(dir.path());
    let c = &json["cases"][0];
    assert_eq!(c["name"], "clones-3");
    assert_eq!(c["members"], 9);
    assert_eq!(c["attackers"], serde_json::json!([6, 7, 8]));
    assert_eq!(c["evicted_attackers"], 3, "{c}");
    assert!(c["honest_evicted"].as_array().unwrap().is_empty(), "{c}");
    // Every clone's similarity deviation alone was over the threshold before its eviction.
    let sims = c["similarity_rounds"].as_array().unwrap();
    assert_eq!(sims.len(), 3, "{c}");
    for s in sims {
        assert!(s[1].as_u64().unwrap() >= 1, "{c}");
    }
    // Without the defence the flip lands; with it the 1s stay 1s.
    let asr = c["attack_success"].as_f64().unwrap();
    let fedavg = c["fedavg_attack_success"].as_f64().unwrap();
    assert!(asr <= 0.05 && asr < fedavg, "{asr} vs FedAvg {fedavg}");
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| clones-3 | 9 |"), "{md}");
}

#[test]
fn single_attacker_is_held_and_the_report_is_written() {
    let dir = tempfile::tempdir().unwrap();
    sybil(&small(dir.path(), Scenario::Single)).unwrap();
    assert_files(dir.path(), "single");
    let c = &report(dir.path())["cases"][0];
    assert_eq!(c["attackers"], serde_json::json!([6]));
    assert!(c["honest_evicted"].as_array().unwrap().is_empty(), "{c}");
    assert!(c["attack_success"].as_f64().unwrap() <= 0.10, "{c}");
    assert_eq!(c["met"], true, "{c}");
}

#[test]
fn vote_stuffing_evicts_nobody_below_the_quorum_and_the_target_at_it() {
    let dir = tempfile::tempdir().unwrap();
    sybil(&small(dir.path(), Scenario::VoteStuffing)).unwrap();
    let json = report(dir.path());
    let cases = json["cases"].as_array().unwrap();
    // 6 members, quorum 2/3 = 4 votes: coalitions of 1 (a third minus one), 3, 4.
    let sizes: Vec<usize> = cases
        .iter()
        .map(|c| c["attackers"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [1, 3, 4]);
    for c in &cases[..2] {
        assert!(c["honest_evicted"].as_array().unwrap().is_empty(), "{c}");
        assert_eq!(c["met"], true, "{c}");
    }
    assert_eq!(cases[2]["honest_evicted"], serde_json::json!([5]));
    assert_eq!(cases[2]["met"], true);
    let attacked: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("runs/vote-stuffing-4/report.json")).unwrap(),
    )
    .unwrap();
    let e = &attacked["attacked"]["evictions"][0];
    assert_eq!(
        (e["member"].as_u64(), e["votes"].as_u64()),
        (Some(5), Some(4))
    );
    assert_files(dir.path(), "vote-stuffing-3");
}

/// `majority`: 90 % of 10 joiners are sybils; none is admitted, the honest joiner is, and the
/// admitted network trains like the clean one.
#[test]
fn majority_admits_no_sybil_and_bad_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = small(dir.path(), Scenario::Majority);
    s.rounds = 2;
    let case = super::majority::majority_case(&s, 10).unwrap();
    let adm = case.admission.as_ref().unwrap();
    assert_eq!((adm.honest_joiners, adm.sybils), (1, 9));
    assert!(adm.admitted_sybils.is_empty(), "{adm:?}");
    assert_eq!(adm.admitted_honest, [6]);
    assert!(adm.best_sybil_votes < adm.votes_needed);
    assert_eq!(case.members, 7);
    assert!(case.met, "{}", case.expectation);
    assert!((case.final_accuracy - case.clean_accuracy).abs() <= 0.01);
    assert!(case.open_accuracy.is_some());
    let flood = "flood".parse::<Scenario>().unwrap_err().to_string();
    assert!(flood.contains("testnet/drill.sh sybil"), "{flood}");
    assert!("wall".parse::<Scenario>().is_err());
    assert_eq!(
        "vote_stuffing".parse::<Scenario>().unwrap(),
        Scenario::VoteStuffing
    );
    let mut s = small(dir.path(), Scenario::Clones);
    s.clones = vec![];
    assert!(sybil(&s).unwrap_err().to_string().contains("--clones"));
    s.clones = vec![2];
    s.members = 2;
    assert!(sybil(&s).unwrap_err().to_string().contains("--members"));
}

#[test]
fn coalitions_straddle_the_quorum() {
    assert_eq!(
        coalitions(20, 2.0 / 3.0),
        [
            ("third-minus-one", 6),
            ("short-of-quorum", 13),
            ("quorum", 14)
        ]
    );
    let c = coalitions(30, 2.0 / 3.0);
    assert_eq!(c.iter().map(|c| c.1).collect::<Vec<_>>(), [9, 19, 20]);
}
