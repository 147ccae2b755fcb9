//! Differential privacy end to end: the privacy spent is in every round record, adds up round
//! after round exactly as the planner (`fedmesh privacy epsilon`) says, and a member whose budget
//! would be exceeded sits the round out while the others go on.

use serde_json::Value;

use crate::harness::{fedmesh, path_str, Testnet};

const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Give member `i` a privacy budget ε in its node.toml.
fn set_budget(net: &Testnet, i: usize, epsilon: f64) {
    let path = net.net().join(format!("member-{i}/node.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace(
        "[privacy]\nepsilon = 0.0",
        &format!("[privacy]\nepsilon = {epsilon}"),
    );
    assert_ne!(
        edited, text,
        "the dealer writes a [privacy] section: {text}"
    );
    std::fs::write(&path, edited).unwrap();
}

/// ε of `steps` steps by the CLI planner.
fn planned(sigma: f64, q: f64, steps: u64) -> f64 {
    let out = fedmesh(&[
        "privacy",
        "epsilon",
        "--noise",
        &sigma.to_string(),
        "--sample-rate",
        &q.to_string(),
        "--steps",
        &steps.to_string(),
        "--json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["epsilon"].as_f64().unwrap()
}

/// `fedmesh audit show --json` of node `i`: the round entries.
fn shown_rounds(net: &Testnet, i: usize) -> Vec<Value> {
    let out = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(i)),
    ]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "round")
        .collect()
}

fn spent(round: &Value, member: usize) -> (u64, f64) {
    let s = &round["privacy"]["spent"][member];
    (
        s["rounds"].as_u64().unwrap(),
        s["epsilon"].as_f64().unwrap(),
    )
}

/// Record level (DP-SGD), mode plain: 10 steps per round at σ = 1, q = 0.1. Member 2's budget
/// fits two rounds but not three, so it does not contribute to round 3; the log's ε for every
/// member is the planner's ε for its steps so far; the logs verify and agree.
#[test]
fn record_level_dp_spends_what_the_planner_says_and_a_member_stops_at_its_budget() {
    let mut net = Testnet::with_config(
        4,
        3,
        8_000,
        "[spec.train]\nepochs = 1\nlearning_rate = 1.0\n\
         [spec.dp]\nlevel = \"record\"\nnoise_multiplier = 1.0\nclip = 1.0\nsample_rate = 0.1\n",
    );
    let (two, three) = (planned(1.0, 0.1, 20), planned(1.0, 0.1, 30));
    set_budget(&net, 2, (two + three) / 2.0);
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = shown_rounds(&net, 0);
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    for (k, r) in rounds.iter().enumerate() {
        let p = &r["privacy"];
        assert_eq!(p["level"], "record", "{r}");
        assert_eq!(p["steps"], 10);
        let want = planned(1.0, 0.1, 10 * (k as u64 + 1));
        let (n, eps) = spent(r, 0);
        assert_eq!(n, k as u64 + 1);
        assert!(
            (eps - want).abs() <= 1e-9 * want,
            "round {}: {eps} vs {want}",
            k + 1
        );
    }
    assert_eq!(
        rounds[2]["dropouts"],
        serde_json::json!([2]),
        "{}",
        net.tail_logs()
    );
    assert_eq!(spent(&rounds[2], 2), spent(&rounds[1], 2));
    assert!(spent(&rounds[2], 2).1 <= (two + three) / 2.0);
    let log = std::fs::read_to_string(net.log_path(2)).unwrap();
    assert!(
        log.contains("privacy budget: not contributing to round 3"),
        "{log}"
    );
    // The model still learns under DP.
    let acc = rounds[2]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "accuracy {acc}");
    // The human view shows ε per member.
    let out = fedmesh(&["audit", "show", "--data-dir", path_str(&net.data_dir(1))]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ε(δ=1e-5) 0:"), "{text}");
    net.assert_logs_agree();
}

/// Member level, mode secagg: every member clips its update and adds its N(0, σ²C²/n) share
/// inside the masked sum; each round is one Gaussian step at σ (all took part) and the ε of
/// member 0 after two rounds is the planner's. The sum of the shares decodes and the logs agree.
#[test]
fn member_level_dp_under_secagg_records_its_cost() {
    let mut net = Testnet::with_config(
        4,
        2,
        30_000,
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 20000\nclip = 2.0\n\
         [spec.dp]\nlevel = \"member\"\nnoise_multiplier = 0.8\nclip = 1.0\n",
    );
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = shown_rounds(&net, 3);
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    for (k, r) in rounds.iter().enumerate() {
        let p = &r["privacy"];
        assert_eq!(p["level"], "member", "{r}");
        assert_eq!(r["participants"].as_array().unwrap().len(), 4, "{r}");
        assert_eq!(p["noise_multiplier"].as_f64(), Some(0.8));
        assert_eq!(
            (p["sample_rate"].as_f64(), p["steps"].as_u64()),
            (Some(1.0), Some(1))
        );
        let want = planned(0.8, 1.0, k as u64 + 1);
        let (_, eps) = spent(r, 0);
        assert!((eps - want).abs() <= 1e-9 * want, "{eps} vs {want}");
        // Member level: every member's weight is 1, so the revealed total weight is 4.
        assert_eq!(r["secure"]["total_weight"], 4, "{r}");
    }
    net.assert_logs_agree();
}

/// Member level with Laplace noise (pure ε-DP), mode plain: every member sends its L1-clipped
/// update with the full Laplace noise and weight 1, each round costs ε = 1/b, and the log's ε
/// adds up to exactly k/b with δ = 0.
#[test]
fn member_level_laplace_in_plain_mode_adds_up_pure_epsilon() {
    let mut net = Testnet::with_config(
        3,
        2,
        20_000,
        "[spec.dp]\nlevel = \"member\"\nmechanism = \"laplace\"\nnoise_multiplier = 4.0\nclip = 0.5\n",
    );
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = shown_rounds(&net, 1);
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    for (k, r) in rounds.iter().enumerate() {
        assert_eq!(r["privacy"]["mechanism"], "laplace", "{r}");
        assert_eq!(r["privacy"]["delta"].as_f64(), Some(0.0));
        // Weight 1 per member: the record's samples are the participant count.
        assert_eq!(r["samples"], 3, "{r}");
        for m in 0..3 {
            assert_eq!(spent(r, m), (k as u64 + 1, 0.25 * (k as f64 + 1.0)), "{r}");
        }
    }
    let out = fedmesh(&["audit", "show", "--data-dir", path_str(&net.data_dir(0))]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ε(pure) 0:0.500"));
    net.assert_logs_agree();
}
