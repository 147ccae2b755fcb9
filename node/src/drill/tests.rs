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
