//! Admission of a new member into a running network, by its members' operators.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{bin, fedmesh, free_ports, path_str, root, Testnet};

const ROUNDS: u64 = 40;
const TIMEOUT: Duration = Duration::from_secs(420);

/// A node that is not in the genesis: its own folder under the testnet, a node.toml, and its
/// process once started.
struct Joiner {
    dir: PathBuf,
    child: Option<Child>,
}

impl Joiner {
    fn new(net: &Testnet, name: &str, port: u16) -> Joiner {
        let dir = net.net().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("node.toml"),
            format!(
                "genesis = \"../genesis.toml\"\nkey_dir = \".\"\ndata_dir = \"../data/{name}\"\n\
                 listen = [\"/ip4/127.0.0.1/tcp/{port}\"]\nrounds = {ROUNDS}\n\
                 data_path = \"{}\"\nthreads = 1\n",
                path_str(&root().join("data/mnist_5k.csv.gz"))
            ),
        )
        .unwrap();
        Joiner { dir, child: None }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .unwrap()
            .join("data")
            .join(self.dir.file_name().unwrap())
    }

    /// `fedmesh join --json`: the request's facts.
    fn join(&self) -> Value {
        let out = fedmesh(&["join", "--json", "--config", path_str(&self.config())]);
        assert!(
            out.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn start(&mut self, base_port: u16) {
        let file = |name: &str| {
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(name))
                    .unwrap(),
            )
        };
        self.child = Some(
            Command::new(bin())
                .args(["node", "--config"])
                .arg(self.config())
                .args(["--peer", &format!("/ip4/127.0.0.1/tcp/{base_port}")])
                .stdout(file("node.out"))
                .stderr(file("node.log"))
                .spawn()
                .expect("start joiner"),
        );
    }

    fn rounds(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("node.out"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "round")
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `fedmesh admit` against member `i`'s running node.
fn admit(net: &Testnet, i: usize, args: &[&str]) -> Value {
    let cfg = net.net().join(format!("member-{i}/node.toml"));
    let mut all = vec!["admit", "--json", "--config", path_str(&cfg)];
    all.extend_from_slice(args);
    let out = fedmesh(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "admit {args:?} on member {i}: not JSON ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Wait until member `i` lists the request of `peer` as pending.
fn wait_pending(net: &Testnet, i: usize, peer: &str) {
    let start = Instant::now();
    loop {
        let v = admit(net, i, &["--list"]);
        if v["pending"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["peer_id"] == peer))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "member {i} never heard of {peer}'s request: {v}\n{}",
            net.tail_logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A 5th node joins a running 4-node network: its request goes to member 0's operator, members
/// 0–2 approve it (3 of 4 is the quorum), the admission record enters the log, and the new member
/// catches up, trains in the following rounds and ends with the same verified log. A second
/// joiner that only member 0 approves is never admitted, is served nothing, and appears nowhere.
#[test]
fn a_joiner_approved_by_a_quorum_takes_part_and_an_unapproved_one_gets_nothing() {
    let mut net = Testnet::new(4, ROUNDS, 8_000);
    net.start_all();
    net.wait_round(0, 1, TIMEOUT);

    let ports = free_ports(2);
    let mut a = Joiner::new(&net, "joiner-a", ports);
    let mut b = Joiner::new(&net, "joiner-b", ports + 1);
    let req_a = a.join();
    let req_b = b.join();
    let peer_a = req_a["peer_id"].as_str().unwrap().to_string();
    let peer_b = req_b["peer_id"].as_str().unwrap().to_string();
    a.start(net.base_port);
    b.start(net.base_port);

    // Member 0's operator submits both requests (and so votes for both).
    for req in [&req_a, &req_b] {
        let v = admit(&net, 0, &["--request", req["file"].as_str().unwrap()]);
        assert_eq!(v["voted"]["fresh"], true, "{v}");
    }
    // A request that is not one is refused with a clear error.
    let junk = net.net().join("junk.hex");
    std::fs::write(&junk, "00ff").unwrap();
    let v = admit(&net, 0, &["--request", path_str(&junk)]);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a join request")),
        "{v}"
    );
    // Members 1 and 2 approve joiner A by its peer id once they have heard of it.
    for i in [1, 2] {
        wait_pending(&net, i, &peer_a);
        let v = admit(&net, i, &[&peer_a]);
        assert_eq!(v["voted"]["peer_id"], peer_a.as_str(), "{v}");
    }

    // The admission reaches the log; A is member 4 from the round after.
    let start = Instant::now();
    let admitted_in = loop {
        let found = net.rounds(0).into_iter().find_map(|r| {
            r["admitted"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| (r["round"].as_u64().unwrap(), a[0].clone()))
        });
        if let Some((round, adm)) = found {
            assert_eq!(adm["index"], 4, "{adm}");
            assert_eq!(adm["peer_id"], peer_a.as_str());
            assert!(adm["votes"].as_array().unwrap().len() >= 3, "{adm}");
            break round;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no admission in the log\n{}",
            net.tail_logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(admitted_in < ROUNDS, "admitted too late to take part");

    // Once A has trained in a round, kill it and start it again: it now starts straight as
    // member 4, from the member set it replays from its own log.
    let takes_part = |net: &Testnet| {
        net.rounds(0)
            .iter()
            .filter(|r| r["participants"].as_array().unwrap().iter().any(|p| p == 4))
            .count()
    };
    let start = Instant::now();
    while takes_part(&net) == 0 {
        assert!(
            start.elapsed() < TIMEOUT,
            "member 4 never took part\n{}",
            a.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(mut c) = a.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let before = takes_part(&net);
    a.start(net.base_port);

    net.wait_all(TIMEOUT);
    let child = a.child.as_mut().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "joiner A did not finish\n{}",
            a.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "joiner A failed\n{}", a.log_tail());

    // Member 4 trained in at least one round after its admission, and never before.
    let rounds = net.rounds(0);
    let with_a: Vec<u64> = rounds
        .iter()
        .filter(|r| r["participants"].as_array().unwrap().iter().any(|p| p == 4))
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert!(
        !with_a.is_empty(),
        "member 4 never took part: {rounds:?}\n{}",
        a.log_tail()
    );
    assert!(with_a.iter().all(|r| *r > admitted_in), "{with_a:?}");
    assert!(
        with_a.len() > before,
        "member 4 did not take part again after its restart: {with_a:?}\n{}",
        a.log_tail()
    );
    let log = std::fs::read_to_string(a.dir.join("node.log")).unwrap();
    assert_eq!(
        log.matches("waiting for the members to admit").count(),
        1,
        "the restarted member waited for admission again"
    );
    // Joiner B appears in no record: no admission, no participation.
    for r in &rounds {
        let text = r.to_string();
        assert!(!text.contains(&peer_b), "joiner B appears in {r}");
        assert!(r["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_u64() < Some(5)));
    }

    // Every log verifies and agrees, the new member's included.
    let head = net.assert_logs_agree();
    let out = fedmesh(&[
        "audit",
        "verify",
        "--json",
        "--data-dir",
        path_str(&a.data_dir()),
        "--genesis",
        path_str(&net.net().join("genesis.toml")),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success() && v["ok"] == true, "joiner's log: {v}");
    assert_eq!(v["head"].as_str(), Some(head.as_str()));
    assert!(!a.rounds().is_empty());

    // Joiner B is still waiting: the members served it nothing (its log is the genesis alone).
    assert!(
        b.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "joiner B exited"
    );
    if let Some(mut c) = b.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let out = fedmesh(&[
        "audit",
        "show",
        "--json",
        "--data-dir",
        path_str(&b.data_dir()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
