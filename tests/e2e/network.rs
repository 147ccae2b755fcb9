use std::time::Duration;

use crate::harness::{fedmesh, path_str, Testnet};

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// 4 nodes, 5 rounds on IID MNIST shards: the global model reaches 85 % test accuracy, every log
/// verifies and all heads are equal. Then: a flipped byte in a stored record is found at its height,
/// and a node pointed at another network's data dir refuses with both genesis hashes.
#[test]
fn four_nodes_train_mnist_and_agree_on_one_verified_log() {
    let mut net = Testnet::new(4, 5, 20_000);
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = net.rounds(0);
    assert_eq!(rounds.len(), 5, "node 0 reports: {rounds:?}");
    let last = rounds.last().unwrap();
    let accuracy = last["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.85,
        "final accuracy {accuracy} < 0.85; rounds: {rounds:?}"
    );
    assert_eq!(last["participants"].as_array().unwrap().len(), 4);
    net.assert_logs_agree();

    // `audit show --json`: one object per entry, genesis then 5 rounds, with the round facts.
    let out = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(1)),
    ]);
    assert!(out.status.success());
    let shown: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), 6);
    assert_eq!(shown[0]["kind"], "genesis");
    for (i, r) in shown[1..].iter().enumerate() {
        assert_eq!(r["round"].as_u64(), Some(i as u64 + 1));
        assert!(r["accuracy"].is_number() && r["loss"].is_number());
        assert!(r["participants"].is_array() && r["dropouts"].is_array());
    }

    // Flip one byte of the stored record at height 3: verify fails and names height 3.
    {
        let store = fedmesh_storage::Store::open(&net.data_dir(2)).unwrap();
        let mut bytes = store.raw_entry_bytes(3).unwrap().unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        store.overwrite_raw_entry(3, &bytes).unwrap();
        store.flush().unwrap();
    }
    let (ok, v) = net.verify(2);
    assert!(!ok, "a tampered log must not verify: {v}");
    assert_eq!(v["height"].as_u64(), Some(3), "{v}");
    let human = fedmesh(&["audit", "verify", "--data-dir", path_str(&net.data_dir(2))]);
    assert_eq!(human.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&human.stdout).contains("height 3"));

    // A node of another network started on this network's data dir refuses, naming both hashes.
    let other = Testnet::new(1, 1, 5_000);
    let out = fedmesh(&[
        "node",
        "--config",
        path_str(&other.net().join("member-0/node.toml")),
        "--data-dir",
        path_str(&net.data_dir(0)),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let genesis_line = String::from_utf8_lossy(
        &fedmesh(&[
            "audit",
            "show",
            "--json",
            "--data-dir",
            path_str(&net.data_dir(0)),
        ])
        .stdout,
    )
    .lines()
    .next()
    .map(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .unwrap();
    assert!(
        err.contains(&genesis_line),
        "error must name the stored genesis {genesis_line}: {err}"
    );
    let other_genesis = fedmesh_protocol::genesis::hash_bytes(
        &std::fs::read(other.net().join("genesis.toml")).unwrap(),
    );
    assert!(
        err.contains(&other_genesis.to_string()),
        "error must name the new genesis: {err}"
    );
}

/// A node started after round 2 catches up from its peers and takes part in later rounds.
#[test]
fn late_node_catches_up_and_takes_part() {
    let mut net = Testnet::new(4, 5, 6_000);
    for i in 0..3 {
        net.start(i);
    }
    net.wait_round(0, 2, RUN_TIMEOUT);
    net.start(3);
    net.wait_all(RUN_TIMEOUT);
    let late = net.rounds(3);
    assert!(
        late.iter().any(|r| r["round"] == 1),
        "the late node reports the rounds it fetched: {late:?}"
    );
    let joined = net.rounds(0).iter().any(|r| {
        r["round"].as_u64().unwrap() > 2
            && r["participants"].as_array().unwrap().iter().any(|p| p == 3)
    });
    assert!(
        joined,
        "member 3 never participated after catching up: {:?}",
        net.rounds(0)
    );
    let early = &net.rounds(0)[0];
    assert!(
        early["dropouts"].as_array().unwrap().iter().any(|p| p == 3),
        "member 3 was a dropout in round 1"
    );
    net.assert_logs_agree();
}

/// The coordinator of round 3 dies (exits abruptly, as under SIGKILL) as the round starts: the next
/// member in the coordinator order finishes the round after the failover timeout, the dead member is
/// recorded as a dropout, and restarted it resumes from its own log and takes part again.
#[test]
fn killed_coordinator_is_replaced_and_rejoins_from_its_log() {
    let mut net = Testnet::new(4, 6, 6_000);
    let genesis_bytes = std::fs::read(net.net().join("genesis.toml")).unwrap();
    let (genesis, _) = fedmesh_protocol::genesis::Genesis::parse(&genesis_bytes).unwrap();
    for i in 0..4 {
        net.set_fault(i, 3, "coordinating");
    }
    net.start_all();
    let (victim, code) = net.wait_any_exit(RUN_TIMEOUT);
    assert_eq!(code, Some(137), "the victim died by fault injection");
    let watcher = if victim == 0 { 1 } else { 0 };
    net.wait_round(watcher, 3, RUN_TIMEOUT);
    let rounds = net.rounds(watcher);
    let r2 = rounds.iter().find(|r| r["round"] == 2).unwrap();
    let head = fedmesh_crypto::Hash::from_hex(r2["head"].as_str().unwrap()).unwrap();
    let order = fedmesh_protocol::round::coordinator_order(&genesis, head, &[0, 1, 2, 3]);
    assert_eq!(
        order[0] as usize, victim,
        "the node that died was round 3's coordinator"
    );
    let r3 = rounds.iter().find(|r| r["round"] == 3).unwrap();
    assert!(
        r3["dropouts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == victim),
        "round 3 without member {victim}: {r3}"
    );
    assert!(
        r3["attempt"].as_u64().unwrap() >= 1,
        "a failover coordinator finished round 3: {r3}"
    );
    assert_eq!(
        r3["coordinator"].as_u64(),
        Some(order[1] as u64),
        "the next in order took over: {r3}"
    );

    net.clear_fault(victim);
    net.start(victim);
    net.wait_all(RUN_TIMEOUT);
    let rejoined = net.rounds(watcher).iter().any(|r| {
        r["round"].as_u64().unwrap() > 3
            && r["participants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == victim)
    });
    assert!(
        rejoined,
        "member {victim} did not take part after restarting: {:?}",
        net.rounds(watcher)
    );
    // It resumed from its own log: rounds 1 and 2 were not appended a second time.
    let round1 = net
        .rounds(victim)
        .iter()
        .filter(|r| r["round"] == 1)
        .count();
    assert_eq!(
        round1, 1,
        "the restarted node appended round 1 again instead of resuming from its log"
    );
    net.assert_logs_agree();
}

/// Mode secagg, 5 nodes: in round 2 one member dies right after sharing its keys and another right
/// after sending its masked input. The round completes from the survivors' shares; the log records
/// the first as a dropout and the second as having dropped while unmasking (its input is in the sum).
#[test]
fn secagg_round_survives_members_dying_mid_protocol() {
    let mut net = Testnet::with_config(
        5,
        3,
        8_000,
        // A small model (25k parameters) keeps the masking quick; what is tested is the dropouts.
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 3000\n[spec.model]\nlayers = [784, 32, 10]\n",
    );
    net.set_fault(1, 2, "shares");
    net.set_fault(3, 2, "masked_input");
    net.start_all();
    assert_eq!(net.wait_exit(1, RUN_TIMEOUT), Some(137));
    assert_eq!(net.wait_exit(3, RUN_TIMEOUT), Some(137));
    net.wait_all(RUN_TIMEOUT);
    let rounds = net.rounds(0);
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    let shown = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(0)),
    ]);
    let r2: serde_json::Value = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .nth(2)
        .unwrap();
    assert_eq!(r2["mode"], "secagg");
    let list = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_u64())
            .collect()
    };
    let dropouts = list(&r2["dropouts"]);
    assert!(
        dropouts.contains(&1),
        "member 1 died after sharing its keys: a dropout: {r2}"
    );
    // Member 3 died right after sending its masked input: if that input made it into the sum it
    // is a participant recorded as having dropped while unmasking, otherwise a dropout.
    let participants = list(&r2["participants"]);
    if participants.contains(&3) {
        assert!(
            list(&r2["secure"]["dropped_while_unmasking"]).contains(&3),
            "{r2}"
        );
    } else {
        assert!(dropouts.contains(&3), "{r2}");
    }
    if r2["attempt"] == 0 {
        // The session in which member 1 shared its keys finished: its masks came off its shares.
        assert!(
            list(&r2["secure"]["dropped_after_sharing"]).contains(&1),
            "{r2}"
        );
    }
    for i in [0, 2, 4] {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}: {v}");
    }
    assert!(rounds[2]["accuracy"].as_f64().unwrap() > 0.8, "{rounds:?}");
}

/// The same config in modes plain and secagg trains to the same accuracy (within 1 point): secure
/// aggregation costs quantization error only.
#[test]
fn secagg_matches_plain_accuracy_on_the_same_seed() {
    // Generous timeouts: every member should take part, and phases close as soon as all answer.
    let mut plain = Testnet::new(4, 3, 30_000);
    plain.start_all();
    plain.wait_all(RUN_TIMEOUT);
    let mut secure = Testnet::with_config(
        4,
        3,
        30_000,
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 20000\n",
    );
    secure.start_all();
    secure.wait_all(RUN_TIMEOUT);
    let (a, b) = (plain.rounds(0), secure.rounds(0));
    assert_eq!((a.len(), b.len()), (3, 3));
    for (x, y) in a.iter().zip(&b) {
        let (ax, ay) = (
            x["accuracy"].as_f64().unwrap(),
            y["accuracy"].as_f64().unwrap(),
        );
        assert!(
            (ax - ay).abs() <= 0.01,
            "round {}: plain {ax}, secagg {ay}",
            x["round"]
        );
        assert_eq!(
            y["participants"].as_array().unwrap().len(),
            4,
            "{y}\n{}",
            secure.tail_logs()
        );
    }
    secure.assert_logs_agree();
}

/// A node SIGKILLed while the network runs is a dropout of the next round, which completes
/// without it; restarted, it resumes from its own log and takes part again.
#[test]
fn sigkilled_node_is_a_dropout_and_rejoins_from_its_log() {
    let mut net = Testnet::new(4, 6, 5_000);
    net.start_all();
    net.wait_round(0, 2, RUN_TIMEOUT);
    net.kill(3);
    let had = net.rounds(3).len();
    net.wait_round(0, had as u64 + 2, RUN_TIMEOUT);
    let without = net
        .rounds(0)
        .into_iter()
        .filter(|r| r["round"].as_u64().unwrap() > had as u64);
    assert!(
        without
            .clone()
            .any(|r| r["dropouts"].as_array().unwrap().iter().any(|p| p == 3)),
        "a round after the kill lists member 3 as a dropout: {:?}",
        without.collect::<Vec<_>>()
    );
    net.start(3);
    net.wait_all(RUN_TIMEOUT);
    let last = net.rounds(0).into_iter().last().unwrap();
    assert!(
        last["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == 3),
        "member 3 took part again: {last}"
    );
    let appended: Vec<u64> = net
        .rounds(3)
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    let mut unique = appended.clone();
    unique.dedup();
    assert_eq!(
        appended, unique,
        "the restarted node resumed from its own log (no round appended twice)"
    );
    net.assert_logs_agree();
}

/// Ctrl-C (SIGINT) on nodes that would run forever: they stop cleanly, logs flushed and valid.
/// This network trains on the synthetic threat-detection data (configs/genesis-synthetic.toml).
#[test]
fn interrupt_stops_a_node_cleanly_with_its_log_flushed() {
    let synthetic =
        std::fs::read_to_string(crate::harness::root().join("configs/genesis-synthetic.toml"))
            .unwrap();
    let mut net = Testnet::with_config(2, 0, 5_000, &synthetic);
    net.start_all();
    net.wait_round(0, 2, RUN_TIMEOUT);
    for i in 0..2 {
        let pid = net.nodes[i].as_ref().unwrap().id();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    net.wait_all(Duration::from_secs(30));
    for i in 0..2 {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}'s log after Ctrl-C: {v}");
        assert!(v["rounds"].as_u64().unwrap() >= 2, "{v}");
    }
    let accuracy = net.rounds(0).last().unwrap()["accuracy"].as_f64().unwrap();
    assert!(
        accuracy > 0.75,
        "the threat detector beats the 70 % majority baseline: {accuracy}"
    );
}

/// Outsiders get nothing: twenty non-member identities dial every member, publish signed updates
/// and announcements and send requests while a 3-node network trains. No member answers, none of
/// their messages reaches a member, the members log the connections they refused, and the rounds
/// go on with members only.
#[test]
fn sybil_flood_gets_nothing_and_rounds_go_on() {
    let mut net = Testnet::new(3, 8, 6_000);
    net.start_all();
    net.wait_round(0, 1, RUN_TIMEOUT);
    let genesis = net.net().join("genesis.toml");
    let out = fedmesh(&[
        "attack",
        "flood",
        "--genesis",
        path_str(&genesis),
        "--identities",
        "20",
        "--seconds",
        "6",
    ]);
    assert!(
        out.status.success(),
        "flood failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["dials"].as_u64().unwrap() > 100,
        "the flood dialled: {report}"
    );
    assert!(report["publish_attempts"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["published"], 0,
        "an outsider's message reached a member: {report}"
    );
    assert_eq!(
        report["responses"], 0,
        "a member answered an outsider: {report}"
    );
    assert_eq!(
        report["gossip_received"], 0,
        "a member gossiped to an outsider: {report}"
    );
    net.wait_all(RUN_TIMEOUT);
    for r in net.rounds(0) {
        assert!(
            r["participants"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p.as_u64().unwrap() < 3),
            "only members take part: {r}"
        );
    }
    let refused = (0..3)
        .filter(|i| {
            std::fs::read_to_string(net.log_path(*i))
                .unwrap()
                .contains("refused a connection")
        })
        .count();
    assert!(
        refused > 0,
        "no member logged refused connections:\n{}",
        net.tail_logs()
    );
    net.assert_logs_agree();
}

/// Votes evict an attacker over the network: five members aggregate with the coordinate-wise
/// median and score each other; member 4 sends its update sign-flipped and scaled ×4 every round.
/// The others vote it out; the eviction (with the quorum's signed votes) is in a round record,
/// member 4 takes no part afterwards and stops, and the honest logs verify and agree.
#[test]
fn votes_evict_a_poisoning_member_over_the_network() {
    let mut net = Testnet::with_config(
        5,
        8,
        6_000,
        "[spec.robust]\nrule = \"median\"\nvotes = true\nwarmup_rounds = 1\npatience = 2\n",
    );
    net.add_node_config(4, "[attack]\nkind = \"sign_flip\"\nscale = 4.0");
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = net.rounds(0);
    assert_eq!(rounds.len(), 8, "honest members finish every round");
    let shown = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(0)),
    ]);
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let eviction = entries
        .iter()
        .find(|e| e["evicted"].as_array().is_some_and(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("no eviction in the log:\n{entries:#?}\n{}", net.tail_logs()));
    assert_eq!(eviction["evicted"], serde_json::json!([4]), "{eviction}");
    let at = eviction["round"].as_u64().unwrap();
    assert!(at <= 6, "evicted only in round {at}");
    let voters = eviction["evictions"][0]["voters"].as_array().unwrap();
    assert!(
        voters.len() >= 3 && !voters.iter().any(|v| v == 4),
        "{eviction}"
    );
    for r in rounds.iter().filter(|r| r["round"].as_u64().unwrap() > at) {
        let listed = r["participants"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["dropouts"].as_array().unwrap());
        assert!(
            !listed.into_iter().any(|p| p == 4),
            "member 4 in round after eviction: {r}"
        );
    }
    let log4 = std::fs::read_to_string(net.log_path(4)).unwrap();
    assert!(
        log4.contains("this member was evicted"),
        "member 4 did not notice:\n{}",
        net.tail_logs()
    );
    let mut heads = Vec::new();
    for i in 0..4 {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}'s log does not verify: {v}");
        heads.push(v["head"].clone());
    }
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "honest heads differ: {heads:?}"
    );
    let last = rounds.last().unwrap()["accuracy"].as_f64().unwrap();
    assert!(last >= 0.8, "accuracy after the eviction: {last}");
}

/// `fedmesh audit show --json` of node `i`: one JSON value per entry.
fn audit_show(net: &Testnet, i: usize) -> Vec<serde_json::Value> {
    let shown = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&net.data_dir(i)),
    ]);
    String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Mode paillier with a small test key (512 bits: the real default is 2048).
const PAILLIER_TEST: &str =
    "[spec]\nmode = \"paillier\"\n[spec.paillier]\nkey_bits = 512\nphase_timeout_ms = 20000\n";

/// The same config in modes plain and paillier trains to the same accuracy (within 1 point):
/// threshold Paillier costs quantization error only. Every round's record holds the ciphertext
/// hashes, the sum's hash and `threshold` decryptors, and every log verifies.
#[test]
fn paillier_matches_plain_accuracy_on_the_same_seed() {
    let mut plain = Testnet::new(4, 5, 30_000);
    plain.start_all();
    plain.wait_all(RUN_TIMEOUT);
    let mut enc = Testnet::with_config(4, 5, 30_000, PAILLIER_TEST);
    enc.start_all();
    enc.wait_all(RUN_TIMEOUT);
    let (a, b) = (plain.rounds(0), enc.rounds(0));
    assert_eq!((a.len(), b.len()), (5, 5), "{}", enc.tail_logs());
    for (x, y) in a.iter().zip(&b) {
        let (ax, ay) = (
            x["accuracy"].as_f64().unwrap(),
            y["accuracy"].as_f64().unwrap(),
        );
        assert!(
            (ax - ay).abs() <= 0.01,
            "round {}: plain {ax}, paillier {ay}",
            x["round"]
        );
        assert_eq!(y["mode"], "paillier");
        assert_eq!(
            y["participants"].as_array().unwrap().len(),
            4,
            "{y}\n{}",
            enc.tail_logs()
        );
    }
    enc.assert_logs_agree();
    for r in audit_show(&enc, 1).iter().skip(1) {
        let p = &r["paillier"];
        assert_eq!(p["decryptors"].as_array().unwrap().len(), 3, "{r}");
        assert_eq!(p["update_hashes"].as_array().unwrap().len(), 4, "{r}");
        assert_eq!(p["sum_hash"].as_str().unwrap().len(), 64, "{r}");
        assert_eq!(p["rejected"].as_array().unwrap().len(), 0, "{r}");
    }
}

/// Mode paillier: in round 2 member 2 publishes a wrong partial decryption (with its proof). The
/// others reject it and name it in their logs; the round completes from the three good partials
/// (threshold 3 of 4) and its record names member 2 as rejected, not as a decryptor.
#[test]
fn paillier_bad_partial_is_rejected_and_named() {
    // A smaller model (25k parameters) keeps this test quick; the accuracy test uses the default.
    let cfg = format!("{PAILLIER_TEST}[spec.model]\nlayers = [784, 32, 10]\n");
    let mut net = Testnet::with_config(4, 3, 30_000, &cfg);
    net.set_fault(2, 2, "bad_partial");
    net.start_all();
    net.wait_all(RUN_TIMEOUT);
    let rounds = net.rounds(0);
    assert_eq!(rounds.len(), 3, "{}", net.tail_logs());
    net.assert_logs_agree();
    let list = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_u64())
            .collect()
    };
    let records = audit_show(&net, 0);
    let r2 = &records[2];
    assert_eq!(r2["round"], 2);
    assert_eq!(list(&r2["paillier"]["rejected"]), vec![2], "{r2}");
    assert_eq!(list(&r2["paillier"]["decryptors"]), vec![0, 1, 3], "{r2}");
    // Its update is still in the sum: only its partial decryption was wrong.
    assert_eq!(list(&r2["participants"]), vec![0, 1, 2, 3], "{r2}");
    for r in [&records[1], &records[3]] {
        assert!(list(&r["paillier"]["rejected"]).is_empty(), "{r}");
    }
    for i in [0, 1, 3] {
        let log = std::fs::read_to_string(net.log_path(i)).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("REJECTED") && l.contains("culprit=2")),
            "node {i} names member 2 in its log"
        );
    }
}
