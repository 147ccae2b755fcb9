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
    /// Where to reach some members instead of at their genesis addresses (`[[routes]]`, one per
    /// member): a member behind NAT or a relay, or a proxy in a partition test.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
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
    /// How this member votes on join requests (`[admission]`); absent = the operator approves
    /// each one with `fedmesh admit`.
    pub admission: Admission,
}

/// Who approves a join request on this member's behalf. Whatever the policy, a joiner is admitted
/// only once a quorum of the active members (the same share as evictions) has voted for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionPolicy {
    /// The operator approves each request with `fedmesh admit PEER` (`fedmesh admit --list`
    /// shows the pending ones).
    #[default]
    Operator,
    /// Requests of the keys in `allow_keys` are approved at once; others wait for the operator
    /// as with `operator`.
    AllowList,
}

/// `[admission]`: this member's policy on join requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admission {
    /// `operator` or `allow_list`.
    pub policy: AdmissionPolicy,
    /// With `allow_list`: the ed25519 public keys (64 hex characters, as in the genesis file and
    /// in the joiner's `fedmesh join` output) approved without asking the operator.
    pub allow_keys: Vec<String>,
    /// Join requests older than this (seconds, by the request's own time stamp) get no vote; the
    /// joiner must make a fresh one with `fedmesh join`.
    pub max_request_age_s: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            policy: AdmissionPolicy::Operator,
            allow_keys: Vec::new(),
            max_request_age_s: 24 * 3600,
        }
    }
}

impl Admission {
    /// The allow-listed keys, parsed; an error names the bad entry.
    pub fn validate(
        &self,
        file: &Path,
    ) -> anyhow::Result<Vec<fedmesh_crypto::identity::PublicKey>> {
        if self.policy == AdmissionPolicy::Operator && !self.allow_keys.is_empty() {
            anyhow::bail!(
                "{}: field `admission.allow_keys` is set but `admission.policy` is \"operator\"; \
                 set policy = \"allow_list\" to approve those keys automatically",
                file.display()
            );
        }
        if self.max_request_age_s == 0 {
            anyhow::bail!(
                "{}: field `admission.max_request_age_s` must be at least 1",
                file.display()
            );
        }
        self.allow_keys
            .iter()
            .map(|k| {
                let bytes: [u8; 32] = hex::decode(k.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: field `admission.allow_keys`: {k:?} is not 64 hex characters",
                            file.display()
                        )
                    })?;
                fedmesh_crypto::identity::PublicKey::from_bytes(&bytes).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: field `admission.allow_keys`: {k:?} is not an ed25519 public key",
                        file.display()
                    )
                })
            })
            .collect()
    }
}

/// One `[[routes]]` entry: the addresses this node dials to reach `member`, in place of the ones
/// the genesis lists for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// The member's index in the genesis.
    pub member: u32,
    /// Multiaddrs to dial it at (at least one).
    pub addrs: Vec<String>,
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

/// Make the node die (it sends itself SIGKILL: nothing is flushed beyond what is already durable)
/// at one point of one round, or (`bad_partial`) misbehave in it. For crash tests and drills.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The round in which to fail; 0 = never.
    pub round: u64,
    /// Where; one of [`Faults::POINTS`]:
    ///
    /// - every mode: `coordinating` (at the start of the round, if this node is its first
    ///   coordinator), `training` (in the training worker, with the model trained and nothing
    ///   stored or sent), `proposed` (right after gossiping its proposal as coordinator),
    ///   `approved` (right after persisting and gossiping its approval), `appending` (inside the
    ///   append of the round's entry: written to the database but not yet flushed to disk) and
    ///   `appended` (right after the entry is durable, before the next round starts);
    /// - mode plain: `update_sent` (right after gossiping its update);
    /// - mode secagg, right after sending the phase's message: `advertise`, `shares`,
    ///   `masked_input`, `consistency`, `unmask`; as coordinator: `key_list`, `relay`,
    ///   `survivors`, `consistency_list`;
    /// - mode paillier: `encrypted` (after gossiping its encrypted update), `announce` (as
    ///   coordinator, after announcing the encrypted sum), `partial` (after gossiping its partial
    ///   decryption), or `bad_partial`: send a partial decryption that is wrong in one value,
    ///   with its proof, and keep running — the others must reject it, name this member and
    ///   finish without it; or `out_of_range`: send a well-formed, correctly signed encrypted
    ///   update whose plaintexts hold values outside the packing range (the round's sum does not
    ///   decode; the others must close the round with the sums of its groups and flag this
    ///   member's group).
    /// - any mode: `equivocate` (after each of its one-per-round messages — update, masked input,
    ///   encrypted update — sign and send a second, different one for the same slot: the others
    ///   must catch it, leave it out, record the evidence and raise its anomaly score),
    ///   `equivocate_late` (mode plain: the second update is signed at once but gossiped only
    ///   after the round was committed: the others must record the evidence in the next record)
    ///   or `stall`, or `propose_refused` (as the round's first coordinator, propose a record
    ///   with wrong metrics, which the others refuse, and approve it: its lock must move to a
    ///   later attempt's record for the round to commit when the others alone are too few),
    ///   or `double_approve` (as the round's first coordinator, propose a second record of
    ///   its attempt and approve both: the others must record the evidence in the next record),
    ///   or `move_unproven` (as the round's second coordinator, approve attempt 0's record, then
    ///   propose and approve a record of attempt 1 without the proof that moving was allowed:
    ///   the others must record the evidence in the next record);
    ///   `stall`: mode secagg: stop sending after the key shares; mode paillier: send no partial
    ///   decryption; stay connected;
    /// - with eviction votes on: `voted` (right after counting its own eviction votes, stored but
    ///   not yet gossiped — in the first round from `round` on in which it casts any, since when
    ///   a member starts to vote depends on the scores).
    pub at: String,
}

impl Faults {
    /// The points at which a node can be made to fail.
    pub const POINTS: [&'static str; 28] = [
        "coordinating",
        "training",
        "proposed",
        "approved",
        "appending",
        "appended",
        "update_sent",
        "advertise",
        "shares",
        "masked_input",
        "consistency",
        "unmask",
        "key_list",
        "relay",
        "survivors",
        "consistency_list",
        "encrypted",
        "out_of_range",
        "announce",
        "partial",
        "bad_partial",
        "equivocate",
        "equivocate_late",
        "stall",
        "propose_refused",
        "double_approve",
        "move_unproven",
        "voted",
    ];

    pub fn validate(&self, file: &Path) -> anyhow::Result<()> {
        if self.round > 0 && !Self::POINTS.contains(&self.at.as_str()) {
            anyhow::bail!(
                "{}: field `faults.at`: {:?} is not one of {}",
                file.display(),
                self.at,
                Self::POINTS.join(", ")
            );
        }
        Ok(())
    }

    /// Whether the plan says to fail at `at` in `round`.
    pub fn hits(&self, round: u64, at: &str) -> bool {
        self.round != 0 && self.round == round && self.at == at
    }

    /// Whether the plan says to fail at `at` in `round` or any later round (for points whose
    /// round is not known in advance, such as `voted`).
    pub fn hits_from(&self, round: u64, at: &str) -> bool {
        self.round != 0 && round >= self.round && self.at == at
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
            routes: Vec::new(),
            rounds: 0,
            data_path: PathBuf::new(),
            threads: 1,
            privacy: Budget::default(),
            faults: Faults::default(),
            limits: Limits::default(),
            attack: crate::attack::Config::default(),
            admission: Admission::default(),
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
    /// Member index → addresses to dial it at instead of its genesis addresses.
    pub routes: Vec<(u32, Vec<libp2p::Multiaddr>)>,
    pub rounds: Option<u64>,
    pub data_path: PathBuf,
    pub threads: usize,
    pub privacy: Budget,
    pub faults: Faults,
    pub limits: Limits,
    pub attack: crate::attack::Config,
    /// The admission policy, with its allow-listed keys parsed.
    pub admission: Admission,
    pub admission_keys: Vec<fedmesh_crypto::identity::PublicKey>,
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
            routes: file
                .routes
                .iter()
                .map(|r| {
                    if r.addrs.is_empty() {
                        anyhow::bail!(
                            "{}: field `routes`: member {} has no addresses",
                            path.display(),
                            r.member
                        );
                    }
                    Ok((r.member, parse_addrs("routes.addrs", path, &r.addrs)?))
                })
                .collect::<anyhow::Result<_>>()?,
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
            admission_keys: file.admission.validate(path)?,
            admission: file.admission.clone(),
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

    /// `[[routes]]` replace a member's genesis addresses; a bad address or an empty list is an
    /// error naming the file and the field; unknown fields and bad fault points are refused.
    #[test]
    fn routes_and_fault_points_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let base = "genesis = 'g.toml'\nkey_dir = 'k'\ndata_dir = 'd'\n";
        std::fs::write(
            &p,
            format!("{base}[[routes]]\nmember = 2\naddrs = ['/ip4/10.0.0.9/tcp/7102']\n"),
        )
        .unwrap();
        let n = Node::load(&p, Flags::default()).unwrap();
        assert_eq!(
            n.routes,
            vec![(2, vec!["/ip4/10.0.0.9/tcp/7102".parse().unwrap()])]
        );
        for bad in ["addrs = ['nope']", "addrs = []"] {
            std::fs::write(&p, format!("{base}[[routes]]\nmember = 2\n{bad}\n")).unwrap();
            let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
            assert!(err.contains("node.toml") && err.contains("routes"), "{err}");
        }
        std::fs::write(&p, format!("{base}[faults]\nround = 3\nat = 'appending'\n")).unwrap();
        let n = Node::load(&p, Flags::default()).unwrap();
        assert!(n.faults.hits(3, "appending") && !n.faults.hits(2, "appending"));
        std::fs::write(&p, format!("{base}[faults]\nround = 3\nat = 'nowhere'\n")).unwrap();
        let err = Node::load(&p, Flags::default()).unwrap_err().to_string();
        assert!(
            err.contains("faults.at") && err.contains("appending"),
            "{err}"
        );
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
    fn admission_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let key = hex::encode(
            fedmesh_crypto::identity::SecretKey::from_seed([7; 32])
                .public()
                .to_bytes(),
        );
        let base = "genesis = \"g.toml\"\nkey_dir = \".\"\ndata_dir = \"d\"\n";
        std::fs::write(
            &path,
            format!("{base}[admission]\npolicy = \"allow_list\"\nallow_keys = [\"{key}\"]\n"),
        )
        .unwrap();
        let n = Node::load(&path, Flags::default()).unwrap();
        assert_eq!(n.admission.policy, AdmissionPolicy::AllowList);
        assert_eq!(hex::encode(n.admission_keys[0].to_bytes()), key);
        // Keys without the allow-list policy would be silently ignored: refused instead.
        std::fs::write(
            &path,
            format!("{base}[admission]\nallow_keys = [\"{key}\"]\n"),
        )
        .unwrap();
        let err = Node::load(&path, Flags::default()).unwrap_err().to_string();
        assert!(err.contains("admission.policy"), "{err}");
        std::fs::write(
            &path,
            format!("{base}[admission]\npolicy = \"allow_list\"\nallow_keys = [\"abc\"]\n"),
        )
        .unwrap();
        let err = Node::load(&path, Flags::default()).unwrap_err().to_string();
        assert!(
            err.contains("admission.allow_keys") && err.contains("abc"),
            "{err}"
        );
        std::fs::write(&path, format!("{base}[admission]\npolicy = \"everyone\"\n")).unwrap();
        assert!(Node::load(&path, Flags::default()).is_err());
        // Absent: the operator decides.
        std::fs::write(&path, base).unwrap();
        let n = Node::load(&path, Flags::default()).unwrap();
        assert_eq!(n.admission, Admission::default());
        assert!(n.admission_keys.is_empty());
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
