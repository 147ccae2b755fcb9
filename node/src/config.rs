//! The node's own configuration (`node.toml`), read from TOML and merged with the command line
//! into one validated [`Node`] config. Relative paths in the file are relative to the file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// `node.toml`, field by field. `fedmesh genesis` writes one per member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct File {
    /// The network's genesis file.
    pub genesis: PathBuf,
    /// The member's private folder (`identity.key`, `bls.share`).
    pub key_dir: PathBuf,
    /// Where the node keeps its audit log, checkpoints and state.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on; default: the member's addresses from the genesis file.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to dial at start (besides the members' genesis addresses).
    pub peers: Vec<String>,
    /// Stop after the log holds this many rounds; 0 runs until Ctrl-C.
    pub rounds: u64,
    /// The MNIST file (`data/mnist_5k.csv.gz`); unused for synthetic data.
    pub data_path: PathBuf,
    /// Threads for local training and evaluation; 0 = all cores. The default model trains fastest
    /// on one thread (small matrices), and nodes that share a machine must not oversubscribe it:
    /// 8 nodes on 2 cores round 3× faster with 1 thread each than with 2 (BENCHMARKS.md).
    /// `RAYON_NUM_THREADS` in the environment takes precedence.
    #[serde(default = "one")]
    pub threads: usize,
    /// This member's own privacy budget (`[privacy]`); absent = no budget.
    pub privacy: Budget,
    /// Fault injection for tests and drills; absent in production configs.
    pub faults: Faults,
    /// What one peer or address may cost this node (connections, gossip rates).
    pub limits: Limits,
    /// Make this node an attacker, for poisoning drills (see `crate::attack`); absent = honest.
    #[serde(skip_serializing_if = "crate::attack::Config::is_honest")]
    pub attack: crate::attack::Config,
}

/// Bounds on what one IP address or one peer can make the node do. Members rarely come near
/// them; a flood of connections or messages does, and is dropped before any work is done on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Inbound connections one IP address may have in their handshake at once (a member that
    /// reconnects needs one; a local testnet puts every member on 127.0.0.1).
    pub handshakes_per_ip: usize,
    /// Inbound connections in their handshake at once, from anywhere.
    pub handshakes: u32,
    /// Established connections per peer (two members dialling each other at once make two).
    pub connections_per_peer: u32,
    /// Gossip messages and requests per second one connected peer may send us (averaged over
    /// `burst_s`).
    pub messages_per_s: f64,
    /// Gossip bytes per second one connected peer may send us (MiB/s, averaged over `burst_s`).
    pub mib_per_s: f64,
    /// Seconds of budget a peer may spend at once.
    pub burst_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshakes_per_ip: 32,
            handshakes: 128,
            connections_per_peer: 2,
            messages_per_s: 200.0,
            mib_per_s: 32.0,
            burst_s: 4.0,
        }
    }
}

impl Limits {
    pub fn validate(&self, file: &Path) -> anyhow::Result<()> {
        let bad = |field: &str, why: &str| {
            anyhow::anyhow!("{}: field `limits.{field}`: {why}", file.display())
        };
        if self.handshakes_per_ip == 0 {
            return Err(bad("handshakes_per_ip", "must be at least 1"));
        }
        if self.handshakes == 0 {
            return Err(bad("handshakes", "must be at least 1"));
        }
        if self.connections_per_peer == 0 {
            return Err(bad("connections_per_peer", "must be at least 1"));
        }
        for (field, v) in [
            ("messages_per_s", self.messages_per_s),
            ("mib_per_s", self.mib_per_s),
            ("burst_s", self.burst_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(field, &format!("must be a positive number, found {v}")));
            }
        }
        Ok(())
    }
}

/// The privacy this member is willing to spend over the network's lifetime: once its next round
/// would push its ε (at its own δ, from the audit log's record of what it has spent) above
/// `epsilon`, it stops contributing updates and says so in its log. It still follows the rounds,
/// checks and approves their records, and coordinates when its turn comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Target ε; 0 = no budget (contribute in every round).
    pub epsilon: f64,
    /// δ of the target; 0 = the genesis `spec.dp.delta`.
    pub delta: f64,
}

impl Budget {
    /// The budget, if one is set: `(epsilon, delta)` with δ = `genesis_delta` when not given.
    pub fn target(&self, genesis_delta: f64) -> Option<(f64, f64)> {
        (self.epsilon > 0.0).then(|| {
            let delta = if self.delta > 0.0 {
                self.delta
            } else {
                genesis_delta
            };
            (self.epsilon, delta)
        })
    }

    fn validate(&self, file: &Path) -> anyhow::Result<()> {
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            anyhow::bail!(
                "{}: field `privacy.epsilon`: {} must be a finite number ≥ 0 (0 = no budget)",
                file.display(),
                self.epsilon
            );
        }
        if !(self.delta >= 0.0 && self.delta < 1.0) {
            anyhow::bail!(
                "{}: field `privacy.delta`: {} must be in [0, 1) (0 = the genesis spec.dp.delta)",
                file.display(),
                self.delta
            );
        }
        Ok(())
    }
}

/// Make the node exit abruptly (as if killed with SIGKILL: exit status 137, nothing flushed beyond
/// what is already durable) at one point of one round, or (`bad_partial`) misbehave in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The round in which to fail; 0 = never.
    pub round: u64,
    /// Where: `coordinating` (at the start of the round, if this node is its first coordinator),
    /// `shares` (mode secagg: right after sending its key shares), `masked_input` (mode secagg:
    /// right after sending its masked input) or `bad_partial` (mode paillier: send a partial
    /// decryption that is wrong in one value, with its proof, and keep running — the others must
    /// reject it, name this member and finish without it), `equivocate` (after each of its
    /// one-per-round messages — update, masked input, encrypted update — sign and send a second,
    /// different one for the same slot: the others must catch it, leave it out, record the
    /// evidence and raise its anomaly score) or `stall` (mode secagg: stop sending after the key
    /// shares; mode paillier: send no partial decryption; stay connected).
    pub at: String,
}

impl Faults {
    pub fn validate(&self, file: &Path) -> anyhow::Result<()> {
        const POINTS: [&str; 6] = [
            "coordinating",
            "shares",
            "masked_input",
            "bad_partial",
            "equivocate",
            "stall",
        ];
        if self.round > 0 && !POINTS.contains(&self.at.as_str()) {
            anyhow::bail!(
                "{}: field `faults.at`: {:?} is not one of {}",
                file.display(),
                self.at,
                POINTS.join(", ")
            );
        }
        Ok(())
    }
}

fn one() -> usize {
    1
}

impl Default for File {
    fn default() -> Self {
        File {
            genesis: PathBuf::new(),
            key_dir: PathBuf::new(),
            data_dir: PathBuf::new(),
            listen: Vec::new(),
            peers: Vec::new(),
            rounds: 0,
            data_path: PathBuf::new(),
            threads: 1,
            privacy: Budget::default(),
            faults: Faults::default(),
            limits: Limits::default(),
            attack: crate::attack::Config::default(),
        }
    }
}

/// Flags given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub peers: Vec<String>,
    pub listen: Vec<String>,
    pub data_dir: Option<PathBuf>,
    pub rounds: Option<u64>,
}

/// The validated node configuration.
#[derive(Debug, Clone)]
pub struct Node {
    pub genesis: PathBuf,
    pub key_dir: PathBuf,
    pub data_dir: PathBuf,
    pub listen: Vec<libp2p::Multiaddr>,
    pub peers: Vec<libp2p::Multiaddr>,
    pub rounds: Option<u64>,
    pub data_path: PathBuf,
    pub threads: usize,
    pub privacy: Budget,
    pub faults: Faults,
    pub limits: Limits,
    pub attack: crate::attack::Config,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn parse_addrs(
    field: &str,
    file: &Path,
    addrs: &[String],
) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<libp2p::Multiaddr>().map_err(|e| {
                anyhow::anyhow!("{}: field `{field}`: {a:?} is not a multiaddr ({e}); expected e.g. /ip4/127.0.0.1/tcp/7100", file.display())
            })
        })
        .collect()
}

impl Node {
    /// Read `path`, apply `flags`, and check every field.
    pub fn load(path: &Path, flags: Flags) -> anyhow::Result<Node> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read node config {}", path.display()))?;
        let file: File =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let require = |field: &str, p: &Path| -> anyhow::Result<()> {
            if p.as_os_str().is_empty() {
                anyhow::bail!("{}: field `{field}` is required", path.display());
            }
            Ok(())
        };
        require("genesis", &file.genesis)?;
        require("key_dir", &file.key_dir)?;
        let data_dir = match flags.data_dir {
            Some(d) => d,
            None => {
                require("data_dir", &file.data_dir)?;
                resolve(base, &file.data_dir)
            }
        };
        let listen = if flags.listen.is_empty() {
            file.listen.clone()
        } else {
            flags.listen.clone()
        };
        let rounds = flags.rounds.unwrap_or(file.rounds);
        Ok(Node {
            genesis: resolve(base, &file.genesis),
            key_dir: resolve(base, &file.key_dir),
            data_dir,
            listen: parse_addrs("listen", path, &listen)?,
            peers: parse_addrs("peers", path, &file.peers)?
                .into_iter()
                .chain(parse_addrs(
                    "--peer",
                    Path::new("command line"),
                    &flags.peers,
                )?)
                .collect(),
            rounds: (rounds > 0).then_some(rounds),
            data_path: resolve(base, &file.data_path),
            threads: file.threads,
            privacy: {
                file.privacy.validate(path)?;
                file.privacy
            },
            faults: {
                file.faults.validate(path)?;
                file.faults.clone()
            },
            limits: {
                file.limits.validate(path)?;
                file.limits.clone()
            },
            attack: {
                file.attack
                    .validate(None)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                file.attack.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\nlisten = ['not-an-addr']\n",
        )
        .unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("listen"), "{err}");

        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\nrounds = 'five'\n",
        )
        .unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("rounds"), "{err}");

        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\nlisten_on = []\n",
        )
        .unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");

        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\n[privacy]\nepsilon = -1\n",
        )
        .unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(
            err.contains("node.toml") && err.contains("privacy.epsilon"),
            "{err}"
        );

        std::fs::write(&p, "key_dir = 'k'\ndata_dir = 'd'\n").unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("genesis") && err.contains("required"), "{err}");

        let base = "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\n";
        std::fs::write(&p, format!("{base}[limits]\nmib_per_s = -1.0\n")).unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(
            err.contains("limits.mib_per_s") && err.contains("-1"),
            "{err}"
        );
        std::fs::write(&p, format!("{base}[limits]\nhandshakes_per_ip = 0\n")).unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("limits.handshakes_per_ip"), "{err}");
        std::fs::write(&p, format!("{base}[limits]\nmessages_per_s = 50.0\n")).unwrap();
        let n = Node::load(&p, Flags::default()).unwrap();
        assert_eq!(n.limits.messages_per_s, 50.0);
        assert_eq!(n.limits.burst_s, Limits::default().burst_s);
    }

    /// The documented example names every field with its default.
    #[test]
    fn the_shipped_example_parses_with_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node.toml");
        let file: File = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(file.limits, Limits::default());
        assert_eq!(file.threads, 1);
    }

    #[test]
    fn paths_are_relative_to_the_file_and_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            "genesis = '../g.toml'\nkey_dir = '.'\ndata_dir = 'd'\nrounds = 3\n",
        )
        .unwrap();
        let n = Node::load(
            &p,
            Flags {
                rounds: Some(0),
                peers: vec!["/ip4/127.0.0.1/tcp/1".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(n.genesis, dir.path().join("../g.toml"));
        assert_eq!(n.rounds, None);
        assert_eq!(n.peers.len(), 1);
        assert_eq!(n.attack.kind, crate::attack::Kind::None);
        assert_eq!(n.privacy.target(1e-5), None);
    }

    #[test]
    fn attack_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\n[attack]\nkind = 'sign_flip'\nscale = 4.0\nevery = 3\n",
        )
        .unwrap();
        let n = Node::load(&p, Flags::default()).unwrap();
        assert_eq!(n.attack.kind, crate::attack::Kind::SignFlip);
        assert_eq!((n.attack.scale, n.attack.every), (4.0, 3));
        std::fs::write(
            &p,
            "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\n[attack]\nkind = 'sign_flip'\nscale = -1.0\n",
        )
        .unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(
            err.contains("node.toml") && err.contains("attack.scale"),
            "{err}"
        );
    }

    #[test]
    fn budget_defaults_to_the_genesis_delta() {
        let b = Budget {
            epsilon: 4.0,
            delta: 0.0,
        };
        assert_eq!(b.target(1e-5), Some((4.0, 1e-5)));
        let b = Budget {
            epsilon: 4.0,
            delta: 1e-6,
        };
        assert_eq!(b.target(1e-5), Some((4.0, 1e-6)));
    }
    /// `node.toml` is read from disk by the binary crate, which cargo-fuzz cannot link (see
    /// tests/fuzz/README.md): instead, thousands of seeded mutations of the shipped example —
    /// flipped bytes, cuts, dropped lines, hostile values — go through `Node::load`, which must
    /// answer each with a config or an error naming the file, never a panic.
    #[test]
    fn mutated_node_configs_never_panic() {
        use rand::{Rng, SeedableRng};
        let example =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml")).unwrap();
        let hostile: [&[u8]; 8] = [
            b"-1",
            b"1e309",
            b"nan",
            b"18446744073709551616",
            b"\"\\u0000\"",
            b"[[x]]",
            b"'/ip4/999.1.1.1/tcp/99999'",
            b"{ a = 1 }",
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut parsed = 0;
        for i in 0..3000 {
            let mut bytes = example.clone();
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.gen_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.gen_range(0..8);
                    }
                    1 => bytes.truncate(rng.gen_range(0..=bytes.len())),
                    2 => {
                        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
                        let drop = rng.gen_range(0..lines.len());
                        bytes = lines
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != drop)
                            .map(|(_, l)| l.to_vec())
                            .collect::<Vec<_>>()
                            .join(&b'\n');
                    }
                    _ => {
                        // Replace a value (after some `= `) with a hostile one.
                        let eqs: Vec<usize> = bytes
                            .windows(3)
                            .enumerate()
                            .filter(|(_, w)| w == b" = ")
                            .map(|(j, _)| j + 3)
                            .collect();
                        if let Some(&at) = eqs.get(rng.gen_range(0..eqs.len().max(1))) {
                            let end = bytes[at..]
                                .iter()
                                .position(|b| *b == b'\n')
                                .map_or(bytes.len(), |e| at + e);
                            let v = hostile[rng.gen_range(0..hostile.len())];
                            bytes.splice(at..end, v.iter().copied());
                        }
                    }
                }
            }
            std::fs::write(&p, &bytes).unwrap();
            match std::panic::catch_unwind(|| Node::load(&p, Flags::default())) {
                Ok(Ok(_)) => parsed += 1,
                Ok(Err(e)) => assert!(e.to_string().contains("node.toml"), "{e}"),
                Err(_) => panic!(
                    "Node::load panicked on mutation {i}:\n{}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        // The mutations are mild enough that some still parse: the happy path is exercised too.
        assert!(parsed > 0);
    }
}
