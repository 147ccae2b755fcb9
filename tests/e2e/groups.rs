//! Mode secagg with groups (`[spec.robust] group_size`): every round the active members are split
//! into random groups drawn from the chain head, each group runs its own secure aggregation, and
//! only the sums of groups of at least g are revealed; the rule and the scores work on the group
//! means, and group testing finds attackers.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{fedmesh, path_str, Testnet};

const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(420);

fn list(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// `fedmesh audit show --json` of node `i`: the round entries.
fn round_entries(net: &Testnet, i: usize) -> Vec<Value> {
    let shown = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(i)),
    ]);
    String::from_utf8_lossy(&shown.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "round")
        .collect()
}

/// Check one round record's groups: the drawn groups partition the round's members, each revealed
/// group has at least g contributors (all drawn into it) and at least g unmaskers, and the
/// participants are exactly the revealed groups' contributors.
fn check_record_groups(r: &Value, g: u64) {
    let groups = &r["groups"];
    assert_eq!(groups["size"], g, "{r}");
    let drawn: Vec<Vec<u64>> = groups["drawn"]
        .as_array()
        .unwrap()
        .iter()
        .map(list)
        .collect();
    let mut everyone: Vec<u64> = drawn.concat();
    everyone.sort_unstable();
    let mut members: Vec<u64> = list(&r["participants"]);
    members.extend(list(&r["dropouts"]));
    members.sort_unstable();
    assert_eq!(
        everyone, members,
        "the groups partition the round's members: {r}"
    );
    assert!(drawn.iter().all(|d| d.len() as u64 >= g), "{r}");
    let mut contributors = BTreeSet::new();
    let revealed = groups["revealed"].as_array().unwrap();
    assert!(!revealed.is_empty(), "{r}");
    for s in revealed {
        let c = list(&s["contributors"]);
        let group = &drawn[s["group"].as_u64().unwrap() as usize];
        assert!(
            c.len() as u64 >= g,
            "a sum of fewer than g members was revealed: {r}"
        );
        assert!(c.iter().all(|m| group.contains(m)), "{r}");
        assert!(list(&s["unmaskers"]).len() as u64 >= g, "{r}");
        contributors.extend(c);
    }
    assert_eq!(
        contributors.into_iter().collect::<Vec<_>>(),
        list(&r["participants"]),
        "{r}"
    );
}

/// Six nodes in groups of three, with the coordinate-wise median over the group means and 200
/// public reference rows: every round reveals two group sums of three, the records say so (with
/// the reference loss and every group's effect on it in decided rounds, which every member
/// recomputed before it signed), every log verifies (groups redrawn from the head, at least g
/// contributors per sum) and all heads agree, and the model learns.
#[test]
fn secagg_groups_reveal_only_sums_of_at_least_g() {
    let mut net = Testnet::with_config(
        6,
        3,
        30_000,
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 15000\n\
         [spec.robust]\nrule = \"median\"\ngroup_size = 3\nreference_rows = 200\n",
    );
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = net.rounds(0);
    assert_eq!(rounds.len(), 3, "{rounds:?}\n{}", net.tail_logs());
    let entries = round_entries(&net, 0);
    assert_eq!(entries.len(), 3);
    for r in &entries {
        assert_eq!(r["mode"], "secagg");
        check_record_groups(r, 3);
        assert_eq!(
            r["groups"]["drawn"].as_array().unwrap().len(),
            2,
            "six members, groups of at least three: {r}"
        );
        let decided = r["groups"]["decided"].as_bool().unwrap();
        assert_eq!(r["groups"]["reference_loss"].is_f64(), decided, "{r}");
        if decided {
            // The spread the round was judged with, within its bounds; the scale (the median
            // movement of the rows' margins) positive; the bar one of the groups' effects.
            let spread = r["groups"]["reference_spread"].as_f64().unwrap();
            assert!((0.06..=0.5).contains(&spread), "{r}");
            assert!(
                r["groups"]["reference_scale"].as_f64().unwrap() > 0.0,
                "{r}"
            );
            let bar = r["groups"]["reference_best"].as_f64().unwrap();
            assert!(
                r["groups"]["revealed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g["reference"].as_f64() == Some(bar)),
                "{r}"
            );
        }
        for g in r["groups"]["revealed"].as_array().unwrap() {
            assert_eq!(g["reference"].is_f64(), decided, "{r}");
        }
    }
    net.assert_logs_agree();
    let last = rounds.last().unwrap()["accuracy"].as_f64().unwrap();
    assert!(last > 0.7, "accuracy after three rounds: {last}");
}

/// Group testing evicts an attacker whose update stays hidden: eight nodes in groups of two (four
/// group sums a round), member 7 sends its update sign-flipped and scaled ×4 every round. Its
/// group is flagged every round while its partner changes, so its suspicion grows and the
/// others' does not; the honest members vote it out through the usual eviction record, nobody
/// honest is evicted, and the honest logs verify and agree.
#[test]
fn group_testing_evicts_a_hidden_attacker() {
    let rounds_total = 10;
    let mut net = Testnet::with_config(
        8,
        rounds_total,
        30_000,
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 15000\n\
         [spec.robust]\nrule = \"median\"\ngroup_size = 2\nvotes = true\nwarmup_rounds = 1\n",
    );
    net.add_node_config(7, "[attack]\nkind = \"sign_flip\"\nscale = 4.0");
    net.start_all();
    assert_eq!(
        net.wait_exit(7, RUN_TIMEOUT),
        Some(0),
        "the attacker stops once evicted\n{}",
        net.tail_logs()
    );
    net.wait_all(RUN_TIMEOUT);
    let entries = round_entries(&net, 0);
    assert_eq!(
        entries.len() as u64,
        rounds_total,
        "honest members finish every round"
    );
    let evictions: Vec<&Value> = entries
        .iter()
        .filter(|e| e["evicted"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert_eq!(evictions.len(), 1, "{entries:#?}");
    assert_eq!(
        evictions[0]["evicted"],
        serde_json::json!([7]),
        "{}",
        evictions[0]
    );
    let at = evictions[0]["round"].as_u64().unwrap();
    eprintln!("member 7 evicted in the record of round {at}");
    assert!(at <= 8, "evicted only in round {at}");
    for r in &entries {
        let round = r["round"].as_u64().unwrap();
        if round <= at {
            check_record_groups(r, 2);
            let flagged_with_7 = r["groups"]["revealed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["flagged"] == true && list(&s["contributors"]).contains(&7));
            assert!(
                flagged_with_7 || round == 1,
                "the attacker's group is flagged: {r}"
            );
        } else {
            assert!(!list(&r["participants"]).contains(&7), "{r}");
        }
    }
    let mut heads = Vec::new();
    for i in 0..7 {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}'s log does not verify: {v}");
        heads.push(v["head"].clone());
    }
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "honest heads differ: {heads:?}"
    );
}

/// A member dies mid-round: in round 2 member 5 exits right after sharing its keys. Its group of
/// three keeps two members, below g, so that group's sum is never unmasked: the record lists it
/// as skipped and its members as dropouts, and the other group's sum carries the round; so again
/// in round 3 (member 5 is dead, not evicted: it is still drawn). Every revealed sum covers at
/// least g, and the survivors' logs verify and agree.
#[test]
fn a_group_that_falls_below_g_is_skipped_not_revealed() {
    let mut net = Testnet::with_config(
        6,
        3,
        12_000,
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 4000\n\
         [spec.robust]\ngroup_size = 3\n",
    );
    net.set_fault(5, 2, "shares");
    net.start_all();
    assert_eq!(net.wait_exit(5, RUN_TIMEOUT), Some(137));
    net.wait_all(RUN_TIMEOUT);
    let entries = round_entries(&net, 0);
    assert_eq!(entries.len(), 3, "{entries:#?}\n{}", net.tail_logs());
    for r in &entries {
        check_record_groups(r, 3);
    }
    for r in &entries[1..] {
        let drawn: Vec<Vec<u64>> = r["groups"]["drawn"]
            .as_array()
            .unwrap()
            .iter()
            .map(list)
            .collect();
        let five = drawn.iter().position(|g| g.contains(&5)).unwrap();
        assert_eq!(list(&r["groups"]["skipped"]), vec![five as u64], "{r}");
        let dropouts = list(&r["dropouts"]);
        assert!(drawn[five].iter().all(|m| dropouts.contains(m)), "{r}");
        assert_eq!(list(&r["participants"]).len(), 3, "{r}");
    }
    for i in 0..5 {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}: {v}");
    }
}
