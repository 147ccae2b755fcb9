//! Crash and restart: nodes die by SIGKILL at named points of a round (the node's `[faults]`
//! hook sends itself SIGKILL there), are restarted at once, and must lose nothing they committed,
//! rejoin, and let the rounds go on — in modes plain, secagg and paillier. The coordinator dies
//! mid-round in each mode.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::Testnet;

const WAIT: Duration = Duration::from_secs(180);

/// A planned crash: member, round, fault point.
type Crash = (usize, u64, &'static str);

/// What happened to one planned crash.
struct Died {
    member: usize,
    round: u64,
    at: &'static str,
    /// Wall clock (ms since the epoch) when the test saw the process gone.
    at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Start the network with `crashes` planned (at most one pending per member at a time: a member's
/// next crash is armed when it restarts), restart every victim as soon as it dies, and wait until
/// every node has finished all rounds. Checks that each victim died of SIGKILL at its point.
fn run_with_crashes(net: &mut Testnet, crashes: &[Crash]) -> Vec<Died> {
    run_with_crashes_then(net, crashes, |_| Duration::ZERO)
}

/// [`run_with_crashes`], restarting each victim `hold(victim)` after it died instead of at once
/// (the other nodes run on meanwhile; a crash seen while holding is handled right after).
fn run_with_crashes_then(
    net: &mut Testnet,
    crashes: &[Crash],
    hold: impl Fn(&Died) -> Duration,
) -> Vec<Died> {
    let mut queues: Vec<Vec<Crash>> = vec![Vec::new(); net.n];
    for c in crashes.iter().rev() {
        queues[c.0].push(*c);
    }
    let mut armed: Vec<Option<Crash>> = vec![None; net.n];
    for i in 0..net.n {
        if let Some(c) = queues[i].pop() {
            net.set_fault(i, c.1, c.2);
            armed[i] = Some(c);
        }
    }
    net.start_all();
    let mut died = Vec::new();
    for _ in crashes {
        let (i, code) = net.wait_any_exit(WAIT);
        let at_ms = now_ms();
        let Some((_, round, at)) = armed[i].take() else {
            panic!(
                "node {i} exited ({code:?}) without a planned crash\n{}",
                net.tail_logs()
            );
        };
        assert_eq!(
            code,
            Some(137),
            "node {i} died of SIGKILL\n{}",
            net.tail_logs()
        );
        let log = std::fs::read_to_string(net.log_path(i)).unwrap();
        let last = log
            .lines()
            .rfind(|l| l.contains("fault injection"))
            .unwrap_or("");
        assert!(
            last.contains(at) && last.contains(&format!("round={round}")),
            "node {i} was to die at {at} in round {round}; its last fault line: {last}"
        );
        died.push(Died {
            member: i,
            round,
            at,
            at_ms,
        });
        match queues[i].pop() {
            Some(c) => {
                net.set_fault(i, c.1, c.2);
                armed[i] = Some(c);
            }
            None => net.clear_fault(i),
        }
        std::thread::sleep(hold(died.last().expect("just pushed")));
        net.start(i);
    }
    net.wait_all(WAIT);
    died
}

fn members(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_u64())
        .collect()
}

/// After the run: every node has all `rounds` rounds, every log verifies, all heads are equal,
/// no node lost an entry it had reported committed, and every victim took part in a round after
/// the one it died in (it rejoined). Returns node `watcher`'s round reports.
fn check_after(net: &Testnet, died: &[Died], rounds: u64, watcher: usize) -> Vec<Value> {
    net.assert_logs_agree();
    for i in 0..net.n {
        let (_, v) = net.verify(i);
        assert_eq!(v["rounds"].as_u64(), Some(rounds), "node {i}: {v}");
        net.assert_nothing_lost(i);
    }
    let reports = net.rounds(watcher);
    for d in died {
        let rejoined = reports.iter().any(|r| {
            r["round"].as_u64().unwrap() > d.round
                && members(&r["participants"]).contains(&(d.member as u64))
        });
        assert!(
            rejoined,
            "member {} (killed at {} in round {}) never took part again: {reports:?}",
            d.member, d.at, d.round
        );
    }
    reports
}

/// Mode plain, 5 nodes, 9 rounds. Killed with SIGKILL and restarted at once: round 1's
/// coordinator right after it gossiped its proposal; then one member in each of: local training
/// (round 2), right after sending its update (3), right after approving (4), in the middle of
/// appending the round's entry — written, not yet flushed (5) — and right after the append (6).
/// Every round completes; round 1 with the dead coordinator's own proposal (the others approve it
/// without it); no log loses a committed entry; every victim rejoins.
#[test]
fn plain_nodes_killed_at_every_point_lose_nothing_and_rejoin() {
    let rounds = 9;
    let mut net = Testnet::new(5, rounds, 6_000);
    let c1 = net.round1_coordinator();
    let others: Vec<usize> = (0..5).filter(|i| *i != c1).collect();
    let crashes = [
        (c1, 1, "proposed"),
        (others[0], 2, "training"),
        (others[1], 3, "update_sent"),
        (others[2], 4, "approved"),
        (others[3], 5, "appending"),
        (others[0], 6, "appended"),
    ];
    let died = run_with_crashes(&mut net, &crashes);
    let watcher = others[1];
    let reports = check_after(&net, &died, rounds, watcher);
    let r1 = reports.iter().find(|r| r["round"] == 1).unwrap();
    assert_eq!(
        r1["coordinator"].as_u64(),
        Some(c1 as u64),
        "round 1 committed the dead coordinator's proposal: {r1}"
    );
    // The member killed right after its append had reported round 6; restarted, it did not
    // append round 6 again.
    let appended: Vec<u64> = net
        .rounds(others[0])
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        appended.iter().filter(|r| **r == 6).count(),
        1,
        "{appended:?}"
    );
}

/// Mode secagg, 5 nodes, 6 rounds. Round 1's coordinator dies right after relaying the key
/// shares (mid-session): the next coordinator finishes round 1 within one session timeout of the
/// death. Then one member dies in each member phase — after advertising its keys (round 2), after
/// its consistency signature (3), after sending its unmasking shares (4), after sharing its keys
/// (5) — and is restarted at once. Every round completes, nothing committed is lost, every log
/// verifies with equal heads, and every victim rejoins.
///
/// Regression (a restarted secagg member recorded as equivocating): a member restarted within
/// an attempt it had advertised keys in sits that attempt out instead of advertising fresh keys
/// for the same slot, so no record names anyone as an equivocator and no node raises anyone's
/// score for it.
#[test]
fn secagg_nodes_killed_in_every_phase_and_the_coordinator_mid_round() {
    let rounds = 6;
    let (update_ms, phase_ms) = (5_000u64, 2_000u64);
    let mut net = Testnet::with_config(
        5,
        rounds,
        update_ms,
        &format!("[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = {phase_ms}\n"),
    );
    let c1 = net.round1_coordinator();
    let others: Vec<usize> = (0..5).filter(|i| *i != c1).collect();
    let crashes = [
        (c1, 1, "relay"),
        (others[0], 2, "advertise"),
        (others[1], 3, "consistency"),
        (others[2], 4, "unmask"),
        (others[3], 5, "shares"),
    ];
    let started = Instant::now();
    let died = run_with_crashes(&mut net, &crashes);
    let watcher = others[1];
    let reports = check_after(&net, &died, rounds, watcher);
    for r in net.audit_show(watcher).iter().skip(1) {
        assert!(
            members(&r["equivocators"]).is_empty(),
            "a restarted member was recorded as an equivocator: {r}"
        );
    }
    let mut sat_out = 0;
    for i in 0..net.n {
        let log = std::fs::read_to_string(net.log_path(i)).unwrap();
        assert!(
            !log.contains("EQUIVOCATION") && !log.contains("equivocation counted"),
            "node {i} caught or scored an equivocation:\n{}",
            net.tail_logs()
        );
        sat_out += log.matches("sitting it out").count();
    }
    let r1 = reports.iter().find(|r| r["round"] == 1).unwrap();
    assert!(
        r1["attempt"].as_u64().unwrap() >= 1 && r1["coordinator"].as_u64() != Some(c1 as u64),
        "a later coordinator finished round 1: {r1}"
    );
    // One session timeout: the keys phase (update timeout), five phases and the failover
    // timeout; then a fresh session among the survivors (a few seconds on a loaded machine).
    let session_limit = update_ms + 6 * phase_ms + update_ms / 2;
    let took = r1["committed_at_ms"].as_u64().unwrap() - died[0].at_ms;
    assert!(
        took <= session_limit + 8_000,
        "round 1 committed {took} ms after its coordinator died (one session timeout: {session_limit} ms)"
    );
    eprintln!(
        "secagg crash test: {} kills, {rounds} rounds in {:?}; round 1 committed {took} ms after its coordinator died; {sat_out} attempts sat out after a restart",
        died.len(),
        started.elapsed()
    );
}

/// Regression (eviction votes lost when the round moved on): five members in mode plain with
/// votes; member 4 poisons every round (sign flip, ×4). An eviction needs 4 of the 5 votes, so
/// every honest member's. Member 2 dies (SIGKILL) right after counting its vote, stored but not
/// yet gossiped, and restarts at once. Restarted, it gossips its stored vote again when its next
/// round starts, so member 4 is evicted within three rounds of that vote with member 2 among the
/// voters. Before the fix the vote died with the process (it sat in the round's publish queue
/// only), and the quorum waited until the vote expired and member 2 voted anew.
#[test]
fn a_vote_stored_but_not_gossiped_before_a_crash_still_evicts() {
    let rounds = 8;
    let mut net = Testnet::with_config(
        5,
        rounds,
        6_000,
        "[spec.robust]\nrule = \"median\"\nvotes = true\nwarmup_rounds = 1\npatience = 2\n",
    );
    net.add_node_config(4, "[attack]\nkind = \"sign_flip\"\nscale = 4.0");
    // The first round from round 1 on in which member 2 votes.
    net.set_fault(2, 1, "voted");
    net.start_all();
    let code = net.wait_exit(2, WAIT);
    assert_eq!(
        code,
        Some(137),
        "member 2 died of SIGKILL\n{}",
        net.tail_logs()
    );
    let log = std::fs::read_to_string(net.log_path(2)).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("fault injection"))
        .unwrap_or("");
    assert!(line.contains("voted"), "its last fault line: {line}");
    let voted_in: u64 = line
        .split("round=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no round in {line}"));
    net.clear_fault(2);
    net.start(2);
    net.wait_all(WAIT);
    let entries = net.audit_show(0);
    let eviction = entries
        .iter()
        .find(|e| e["evicted"].as_array().is_some_and(|a| !a.is_empty()))
        .unwrap_or_else(|| panic!("no eviction in the log:\n{}", net.tail_logs()));
    assert_eq!(eviction["evicted"], serde_json::json!([4]), "{eviction}");
    let at = eviction["round"].as_u64().unwrap();
    // Without the repeat the quorum waits for the vote to expire (`vote_expiry_rounds` = 3):
    // member 2 votes anew when it commits round voted_in + 3, an eviction in round
    // voted_in + 4 at the earliest.
    assert!(
        at <= voted_in + 3,
        "member 2 voted in round {voted_in} and died; the eviction came only in round {at}"
    );
    let voters = members(&eviction["evictions"][0]["voters"]);
    assert!(
        voters.contains(&2),
        "member 2's vote is in the eviction: {eviction}"
    );
    let mut heads = Vec::new();
    for i in 0..4 {
        let (ok, v) = net.verify(i);
        assert!(ok, "node {i}'s log does not verify: {v}");
        assert_eq!(v["rounds"].as_u64(), Some(rounds), "node {i}: {v}");
        heads.push(v["head"].clone());
    }
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "heads differ: {heads:?}"
    );
    eprintln!("vote crash test: member 2 voted in round {voted_in} and died; member 4 evicted in round {at}");
}

/// Mode paillier (512-bit test key, 25k-parameter model), 4 nodes, threshold 3, 5 rounds. Round
/// 1's coordinator dies right after announcing the encrypted sum: the next coordinator announces
/// the same sum and finishes the round within one attempt timeout (phase + failover) plus one
/// more attempt. Then one member dies right after gossiping its encrypted update (round 2), one
/// right after its partial decryption (3) and one while training (4); each restarts at once.
/// Every round completes, nothing committed is lost, logs verify with equal heads, and every
/// victim rejoins. Guards the two restart bugs fixed in `runtime/paillier.rs` (RELIABILITY.md).
#[test]
fn paillier_nodes_killed_in_every_phase_and_the_coordinator_mid_round() {
    let rounds = 5;
    let (update_ms, phase_ms) = (8_000u64, 8_000u64);
    let mut net = Testnet::with_config(
        4,
        rounds,
        update_ms,
        &format!(
            "[spec]\nmode = \"paillier\"\n[spec.paillier]\nkey_bits = 512\nphase_timeout_ms = {phase_ms}\n[spec.model]\nlayers = [784, 32, 10]\n"
        ),
    );
    let c1 = net.round1_coordinator();
    let others: Vec<usize> = (0..4).filter(|i| *i != c1).collect();
    let crashes = [
        (c1, 1, "announce"),
        (others[0], 2, "encrypted"),
        (others[1], 3, "partial"),
        (others[2], 4, "training"),
    ];
    // Round 1's coordinator comes back only after its attempt has timed out: restarted at once,
    // it may resend its kept announcement and finish attempt 0 itself (also correct), and the
    // failover this test is about would not be exercised.
    let failover = Duration::from_millis(phase_ms + update_ms / 2);
    let died = run_with_crashes_then(&mut net, &crashes, |d| {
        if d.member == c1 && d.round == 1 {
            failover + Duration::from_secs(2)
        } else {
            Duration::ZERO
        }
    });
    let watcher = others[1];
    let reports = check_after(&net, &died, rounds, watcher);
    let r1 = reports.iter().find(|r| r["round"] == 1).unwrap();
    assert!(
        r1["attempt"].as_u64().unwrap() >= 1 && r1["coordinator"].as_u64() != Some(c1 as u64),
        "a later coordinator finished round 1: {r1}"
    );
    let took = r1["committed_at_ms"].as_u64().unwrap() - died[0].at_ms;
    // One attempt's timeout (phase + failover, from the announcement), then the next attempt:
    // announce again and collect partials (seconds on a loaded machine).
    let limit = phase_ms + update_ms / 2;
    assert!(
        took <= limit + 10_000,
        "round 1 committed {took} ms after its coordinator died (phase + failover timeout: {limit} ms)"
    );
}

/// Partition, unprivileged: every connection to and from member 3 runs through proxies in this
/// test (its peers reach it through one, it reaches each of them through one: `[[routes]]` in the
/// node configs). The proxies cut member 3 off after round 2 and heal it three rounds later. The
/// majority goes on without it (a dropout in every round of the cut); member 3 commits nothing of
/// its own while cut off — every entry it has is the majority's at that height, no fork; after
/// healing it catches up, takes part again, and all logs end equal.
#[test]
fn cut_off_member_does_not_fork_and_catches_up_after_healing() {
    cut_off_member(Testnet::new(4, 9, 4_000), 9);
}

/// The same partition in mode secagg: the three left run every session without member 3 (its
/// keys never come, so it is a dropout of each cut round), and it rejoins the sessions once healed.
#[test]
fn secagg_cut_off_member_does_not_fork_and_catches_up_after_healing() {
    let extra = "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 3000\n\
                 [spec.model]\nlayers = [784, 32, 10]\n";
    cut_off_member(Testnet::with_config(4, 9, 4_000, extra), 9);
}

/// The same partition in mode paillier (512-bit test key): the three left are enough decryptors
/// (threshold 3), the cut-off member's encrypted update never comes (a dropout), and it rejoins.
#[test]
fn paillier_cut_off_member_does_not_fork_and_catches_up_after_healing() {
    let extra = "[spec]\nmode = \"paillier\"\n[spec.paillier]\nkey_bits = 512\n\
                 phase_timeout_ms = 4000\n[spec.model]\nlayers = [784, 32, 10]\n";
    cut_off_member(Testnet::with_config(4, 9, 4_000, extra), 9);
}

fn cut_off_member(mut net: Testnet, rounds: u64) {
    use crate::harness::Proxy;
    let k = 3usize;
    let port = |i: usize| net.base_port + i as u16;
    // Others reach member k through `into_k`; member k reaches member j through `out_of_k[j]`.
    let into_k = Proxy::start(port(k));
    let out_of_k: Vec<Proxy> = (0..k).map(|j| Proxy::start(port(j))).collect();
    let route = |member: usize, proxy: u16| {
        format!("[[routes]]\nmember = {member}\naddrs = [\"/ip4/127.0.0.1/tcp/{proxy}\"]")
    };
    for (j, proxy) in out_of_k.iter().enumerate() {
        net.add_node_config(j, &route(k, into_k.port));
        net.add_node_config(k, &route(j, proxy.port));
    }
    // No bootstrap address: each node dials the members' (routed) addresses only.
    for i in 0..4 {
        net.start_with(i, &[]);
    }
    net.wait_round(0, 2, WAIT);
    into_k.cut();
    out_of_k.iter().for_each(Proxy::cut);
    let cut_at = net.rounds(0).len() as u64;
    net.wait_round(0, cut_at + 3, WAIT);

    // The majority went on without member k...
    let during: Vec<Value> = net
        .rounds(0)
        .into_iter()
        .filter(|r| r["round"].as_u64().unwrap() > cut_at + 1)
        .collect();
    assert!(during.len() >= 2, "{during:?}");
    for r in &during {
        assert!(members(&r["dropouts"]).contains(&(k as u64)), "{r}");
    }
    // ... and member k, cut off, did not fork: whatever it committed is the majority's entry.
    let majority: std::collections::HashMap<u64, String> = net
        .rounds(0)
        .iter()
        .map(|r| {
            (
                r["height"].as_u64().unwrap(),
                r["head"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let isolated = net.rounds(k);
    assert!(
        (isolated.len() as u64) <= cut_at + 1,
        "member {k} committed rounds while cut off: {isolated:?}"
    );
    for r in &isolated {
        let h = r["height"].as_u64().unwrap();
        assert_eq!(
            majority.get(&h).map(String::as_str),
            r["head"].as_str(),
            "fork at height {h}"
        );
    }

    into_k.heal();
    out_of_k.iter().for_each(Proxy::heal);
    let healed_at = net.rounds(0).len() as u64;
    net.wait_all(WAIT);
    net.assert_logs_agree();
    net.assert_nothing_lost(k);
    let back = net.rounds(0).into_iter().any(|r| {
        r["round"].as_u64().unwrap() > healed_at + 1
            && members(&r["participants"]).contains(&(k as u64))
    });
    assert!(back, "member {k} never took part after healing");
    assert_eq!(net.rounds(k).len() as u64, rounds, "member {k} caught up");
}

/// More members down at once than the signing threshold allows: 5 members (a record needs 3
/// signatures); three are killed together (SIGKILL) as soon as round 2 is committed. The two left
/// cannot commit: at most the round already in flight lands, then their log stands still while
/// they keep retrying. Restarted after the outage, the three catch up and rejoin, the rounds go
/// on to the end, every log verifies with equal heads, and nobody lost an entry it reported.
fn majority_outage(extra: &str, update_ms: u64) {
    let rounds = 6;
    let mut net = Testnet::with_config(5, rounds, update_ms, extra);
    net.start_all();
    net.wait_round(0, 2, WAIT);
    let victims = [2usize, 3, 4];
    for &v in &victims {
        net.kill(v);
    }
    let down_ms = now_ms();
    let at_kill = [net.rounds(0).len(), net.rounds(1).len()];
    // Several attempts' worth of timeouts with only 2 of 5 members up.
    let outage = Duration::from_millis((4 * update_ms).max(20_000));
    std::thread::sleep(outage);
    let during = [net.rounds(0).len(), net.rounds(1).len()];
    for s in 0..2 {
        assert!(
            during[s] <= at_kill[s] + 1,
            "member {s} committed {} rounds with 3 of 5 members down (threshold 3)\n{}",
            during[s] - at_kill[s],
            net.tail_logs()
        );
    }
    for &v in &victims {
        net.start(v);
    }
    net.wait_all(WAIT * 2);
    net.assert_logs_agree();
    for i in 0..net.n {
        let (_, v) = net.verify(i);
        assert_eq!(v["rounds"].as_u64(), Some(rounds), "node {i}: {v}");
        net.assert_nothing_lost(i);
    }
    let reports = net.rounds(0);
    for &v in &victims {
        let back = reports.iter().any(|r| {
            r["committed_at_ms"].as_u64().unwrap_or(0) > down_ms
                && members(&r["participants"]).contains(&(v as u64))
        });
        assert!(
            back,
            "member {v} never took part after the outage: {reports:?}"
        );
    }
    eprintln!(
        "majority outage: survivors at {at_kill:?} rounds when 3 of 5 died, {during:?} after {outage:?} down; all {rounds} rounds after the restart"
    );
}

#[test]
fn plain_majority_down_at_once_stalls_without_forking_and_resumes() {
    majority_outage("", 5_000);
}

#[test]
fn secagg_majority_down_at_once_stalls_without_forking_and_resumes() {
    majority_outage(
        "[spec]\nmode = \"secagg\"\n[spec.secagg]\nphase_timeout_ms = 2000\n",
        5_000,
    );
}
