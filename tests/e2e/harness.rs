//! Start real `fedmesh` node processes on 127.0.0.1 and watch them.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `fedmesh` binary, built once per test process (a no-op when it is fresh).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("FEDMESH_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "fedmesh-node", "--bin", "fedmesh"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building fedmesh failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target"));
        target.join("debug").join("fedmesh")
    })
    .clone()
}

/// `count` consecutive free TCP ports on 127.0.0.1.
pub fn free_ports(count: u16) -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut base = 20_000 + (seed.wrapping_mul(2_654_435_761) % 30_000) as u16;
    loop {
        let held: Vec<_> = (0..count)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == count as usize {
            return base;
        }
        base = 20_000 + (base - 20_000 + 97) % 30_000;
    }
}

pub fn fedmesh(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run fedmesh")
}

/// A testnet: a genesis for `n` members in a temp dir, and its node processes.
pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub n: usize,
    pub nodes: Vec<Option<Child>>,
    pub base_port: u16,
}

impl Testnet {
    /// Deal a genesis with `rounds` rounds and the given update timeout.
    pub fn new(n: usize, rounds: u64, update_timeout_ms: u64) -> Testnet {
        Testnet::with_config(n, rounds, update_timeout_ms, "")
    }

    /// As [`Testnet::new`], with more dealer config (TOML without a `[spec.params]` table).
    pub fn with_config(n: usize, rounds: u64, update_timeout_ms: u64, extra: &str) -> Testnet {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = free_ports(n as u16);
        let cfg = dir.path().join("dealer.toml");
        std::fs::write(
            &cfg,
            format!(
                "{extra}\n[spec.params]\nupdate_timeout_ms = {update_timeout_ms}\nfailover_timeout_ms = {}\nstatus_interval_ms = 1000\n",
                update_timeout_ms / 2
            ),
        )
        .unwrap();
        let out = fedmesh(&[
            "genesis",
            "--members",
            &n.to_string(),
            "--out",
            dir.path().join("net").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--rounds",
            &rounds.to_string(),
            "--base-port",
            &base_port.to_string(),
            "--data",
            root().join("data/mnist_5k.csv.gz").to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "genesis failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Testnet {
            dir,
            n,
            nodes: (0..n).map(|_| None).collect(),
            base_port,
        }
    }

    pub fn net(&self) -> PathBuf {
        self.dir.path().join("net")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.net().join(format!("data/member-{i}"))
    }

    fn out_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}.out"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}.log"))
    }

    /// Make node `i` exit abruptly at `at` in `round` (its node.toml gets a `[faults]` section).
    pub fn set_fault(&self, i: usize, round: u64, at: &str) {
        let path = self.net().join(format!("member-{i}/node.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let clean = text.split("\n[faults]").next().unwrap().to_string();
        std::fs::write(
            &path,
            format!("{clean}\n[faults]\nround = {round}\nat = \"{at}\"\n"),
        )
        .unwrap();
    }

    /// Append TOML (e.g. an `[attack]` section) to node `i`'s node.toml.
    pub fn add_node_config(&self, i: usize, toml: &str) {
        let path = self.net().join(format!("member-{i}/node.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n{toml}\n")).unwrap();
    }

    pub fn clear_fault(&self, i: usize) {
        let path = self.net().join(format!("member-{i}/node.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.split("\n[faults]").next().unwrap()).unwrap();
    }

    /// Wait until node `i` exits by itself; returns its exit code.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.nodes[i].as_mut().expect("node running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.nodes[i] = None;
                return exit_code(status);
            }
            if start.elapsed() > timeout {
                panic!(
                    "node {i} did not exit within {timeout:?}\n{}",
                    self.tail_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the first node that has exited (polling all running nodes).
    pub fn wait_any_exit(&mut self, timeout: Duration) -> (usize, Option<i32>) {
        let start = Instant::now();
        loop {
            for i in 0..self.n {
                if let Some(child) = self.nodes[i].as_mut() {
                    if let Some(status) = child.try_wait().unwrap() {
                        self.nodes[i] = None;
                        return (i, exit_code(status));
                    }
                }
            }
            if start.elapsed() > timeout {
                panic!("no node exited within {timeout:?}\n{}", self.tail_logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start node `i` (appending to its output files, so restarts keep the history).
    pub fn start(&mut self, i: usize) {
        let peer = format!("/ip4/127.0.0.1/tcp/{}", self.base_port);
        self.start_with(i, &["--peer", &peer]);
    }

    /// Start node `i` with these extra `fedmesh node` arguments (no bootstrap peer by default).
    pub fn start_with(&mut self, i: usize, extra: &[&str]) {
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        let child = Command::new(bin())
            .args(["node", "--config"])
            .arg(self.net().join(format!("member-{i}/node.toml")))
            .args(extra)
            .stdout(Stdio::from(open(self.out_path(i))))
            .stderr(Stdio::from(open(self.log_path(i))))
            .spawn()
            .expect("start node");
        self.nodes[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.n {
            self.start(i);
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The round reports node `i` printed so far.
    pub fn rounds(&self, i: usize) -> Vec<Value> {
        std::fs::read_to_string(self.out_path(i))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "round")
            .collect()
    }

    /// Wait until node `i` has reported round `round`.
    pub fn wait_round(&self, i: usize, round: u64, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self
                .rounds(i)
                .iter()
                .any(|r| r["round"].as_u64() == Some(round))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "node {i} did not reach round {round} within {timeout:?}\n{}",
            self.tail_logs()
        );
    }

    /// Wait for every running node to exit by itself; each must exit successfully.
    pub fn wait_all(&mut self, timeout: Duration) {
        let start = Instant::now();
        for i in 0..self.n {
            let Some(mut child) = self.nodes[i].take() else {
                continue;
            };
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "node {i} exited with {status}\n{}",
                        self.tail_logs()
                    );
                    break;
                }
                if start.elapsed() > timeout {
                    let _ = child.kill();
                    panic!(
                        "node {i} still running after {timeout:?}\n{}",
                        self.tail_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// `fedmesh audit verify --json` on node `i`'s data dir.
    pub fn verify(&self, i: usize) -> (bool, Value) {
        let out = fedmesh(&[
            "audit",
            "verify",
            "--json",
            "--data-dir",
            self.data_dir(i).to_str().unwrap(),
            "--genesis",
            self.net().join("genesis.toml").to_str().unwrap(),
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verify output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// Every node's log verifies and all heads are equal; returns the head.
    pub fn assert_logs_agree(&self) -> String {
        let mut heads = Vec::new();
        for i in 0..self.n {
            let (ok, v) = self.verify(i);
            assert!(ok && v["ok"] == true, "node {i}'s log does not verify: {v}");
            heads.push(v["head"].as_str().unwrap().to_string());
        }
        assert!(
            heads.windows(2).all(|w| w[0] == w[1]),
            "heads differ: {heads:?}"
        );
        heads.remove(0)
    }

    /// `fedmesh audit show --json` of node `i`: one JSON value per entry.
    pub fn audit_show(&self, i: usize) -> Vec<Value> {
        let out = fedmesh(&[
            "audit",
            "show",
            "--json",
            "--data-dir",
            path_str(&self.data_dir(i)),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every entry node `i` ever reported as committed (in any of its lives) is in its log now,
    /// at the same height with the same hash. Returns how many reports were checked.
    pub fn assert_nothing_lost(&self, i: usize) -> usize {
        let stored: std::collections::HashMap<u64, String> = self
            .audit_show(i)
            .into_iter()
            .map(|e| {
                (
                    e["height"].as_u64().unwrap(),
                    e["hash"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let reported = self.rounds(i);
        for r in &reported {
            let height = r["height"].as_u64().unwrap();
            assert_eq!(
                stored.get(&height).map(String::as_str),
                r["head"].as_str(),
                "node {i} reported height {height} committed, and its log now has something else"
            );
        }
        reported.len()
    }

    /// The member that coordinates round 1 (attempt 0): it follows from the genesis alone.
    pub fn round1_coordinator(&self) -> usize {
        let bytes = std::fs::read(self.net().join("genesis.toml")).unwrap();
        let (genesis, _) = fedmesh_protocol::genesis::Genesis::parse(&bytes).unwrap();
        let head = fedmesh_protocol::audit::Entry::genesis(&bytes).hash();
        let all: Vec<u32> = (0..self.n as u32).collect();
        fedmesh_protocol::round::coordinator_order(&genesis, head, &all)[0] as usize
    }

    pub fn tail_logs(&self) -> String {
        let mut s = String::new();
        for i in 0..self.n {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            s.push_str(&format!("--- node {i} log (last 15 lines)\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // FEDMESH_KEEP_TESTNET=1 keeps the directory (genesis, logs, data dirs) for a post-mortem.
        if std::env::var_os("FEDMESH_KEEP_TESTNET").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept testnet directory {}", dir.keep().display());
        }
    }
}

/// The exit code as a shell reports it: a process killed by signal `s` gives 128 + s (so a node
/// that fault injection killed with SIGKILL gives 137).
pub fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or(status.signal().map(|s| 128 + s))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A TCP proxy on 127.0.0.1 in front of one node's port, that can cut the link: while cut, it
/// closes every connection it carries and refuses new ones (accepts and closes them at once), as
/// a network partition does to a libp2p node; healed, it forwards again. Runs on plain threads in
/// the test process, so it needs no privileges.
pub struct Proxy {
    /// The port the proxy listens on.
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listen on a free port and forward to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, st, l) = (cut.clone(), stop.clone(), live.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                {
                    let mut live = l.lock().unwrap();
                    live.retain(|s| s.peer_addr().is_ok());
                    live.extend(inbound.try_clone().ok());
                    live.extend(outbound.try_clone().ok());
                }
                pipe(&inbound, &outbound);
                pipe(&outbound, &inbound);
            }
        });
        Proxy {
            port,
            cut,
            stop,
            live,
        }
    }

    /// Partition: close every carried connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Heal: forward new connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copy bytes from `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
