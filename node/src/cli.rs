//! Command-line interface: raw flags first, then one validated config per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{audit, bench, config, dealer, drill, flood, node, privacy};

/// fedmesh: a peer-to-peer federated learning node with a signed, hash-chained audit log.
#[derive(Parser, Debug)]
#[command(name = "fedmesh", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Found a network: write the public genesis file and one private folder per member.
    Genesis {
        /// Number of members.
        #[arg(long)]
        members: usize,
        /// Output directory (must be new or empty).
        #[arg(long)]
        out: PathBuf,
        /// The dealer's config (see configs/genesis.toml); defaults apply without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Member i listens on base-port + i (overrides the config's dealer.base_port).
        #[arg(long)]
        base_port: Option<u16>,
        /// Rounds written into each member's node.toml (0 = until Ctrl-C).
        #[arg(long)]
        rounds: Option<u64>,
        /// MNIST file written into each member's node.toml.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Aggregation mode (overrides the config's spec.mode): plain, secagg or paillier
        /// (paillier deals the joint key and a key share per member; the node runtime does not run
        /// paillier rounds yet).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Run a member node until its configured rounds are done or Ctrl-C.
    Node {
        /// The member's node.toml (written by `fedmesh genesis`).
        #[arg(long)]
        config: PathBuf,
        /// A peer to dial at start (multiaddr); repeatable.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Address to listen on (multiaddr); repeatable; replaces the config's `listen`.
        #[arg(long)]
        listen: Vec<String>,
        /// Where the log, checkpoints and state live; replaces the config's `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Stop once the log holds this many rounds (0 = run until Ctrl-C).
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Ask to join a running network: make this node's identity (if its key_dir has none) and a
    /// signed join request, written to DATA_DIR/join-request.hex. Hand that file to the operator
    /// of any member (`fedmesh admit --request FILE`), then start this node with `fedmesh node`:
    /// it waits until a quorum of members has admitted it.
    Join {
        /// The joiner's node.toml: genesis, key_dir, data_dir and `listen` (where members dial it).
        #[arg(long)]
        config: PathBuf,
        /// Address to listen on (multiaddr); repeatable; replaces the config's `listen`.
        #[arg(long)]
        listen: Vec<String>,
        /// Print the request as JSON (hash, peer id, key, file).
        #[arg(long)]
        json: bool,
    },
    /// Approve a joiner on behalf of this member (talks to the running node through the control
    /// socket in its data dir). `--list` shows the pending join requests; `--request FILE` submits
    /// a joiner's request (from `fedmesh join`) and votes for it; `PEER` (peer id or request hash
    /// prefix) votes for a pending one. A joiner is admitted once a quorum of members voted.
    Admit {
        /// The member's node.toml (for its data dir).
        #[arg(long)]
        config: PathBuf,
        /// The joiner's peer id, or at least 8 hex characters of its request hash.
        peer: Option<String>,
        /// Show the pending join requests instead.
        #[arg(long, conflicts_with_all = ["peer", "request"])]
        list: bool,
        /// A join request file written by `fedmesh join`.
        #[arg(long, conflicts_with = "peer")]
        request: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Plan a differential-privacy budget: epsilon for a noise level, or noise for an epsilon.
    Privacy {
        #[command(subcommand)]
        what: PrivacyWhat,
    },
    /// Micro-benchmarks of the node's own code (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Inspect, verify or export a node's audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Live attacks against a running network, for drills (`testnet/drill.sh`).
    Attack {
        #[command(subcommand)]
        what: AttackWhat,
    },
    /// Attack drills in one process: attackers among many members, the real training and the
    /// real robust rules, scores and votes, next to a clean run; writes a report with plots.
    Drill {
        #[command(subcommand)]
        what: DrillWhat,
    },
}

#[derive(Subcommand, Debug)]
enum AttackWhat {
    /// Sybil flood: many non-member identities dial every member, publish signed updates and
    /// announcements, and send requests; prints what got through (JSON).
    Flood {
        /// The network's genesis file (member addresses, topic, model size).
        #[arg(long)]
        genesis: PathBuf,
        /// Outsider identities to play.
        #[arg(long, default_value_t = 50)]
        identities: usize,
        /// How long to flood, in seconds.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Messages each identity tries to publish per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DrillWhat {
    /// Poisoning: a fraction of members poison their data or updates. Writes DIR/report.md,
    /// DIR/report.json, DIR/accuracy.svg and DIR/detection.svg (with --matrix: DIR/matrix.md,
    /// DIR/matrix.json and one folder per scenario under DIR/runs).
    Poisoning(PoisoningArgs),
    /// Sybil: colluding clones flip labels 1 → 7, a single attacker does the same, colluders stuff
    /// the ballot against an honest member, sybils are the majority of those asking to join. Writes DIR/report.md (summary table and targets),
    /// DIR/report.json, DIR/attack_success.svg and DIR/runs/<case>/ (report.md, report.json,
    /// accuracy.svg, detection.svg); with --matrix also DIR/matrix.md and DIR/matrix.json.
    /// The flood scenario runs against a live testnet (`testnet/drill.sh sybil --scenario flood`).
    Sybil(SybilArgs),
    /// Print the TOML a live testnet drill needs (`testnet/drill.sh poisoning`): the
    /// `[spec.robust]` table of a defence and the `[attack]` table of an attack, as the in-process
    /// drill defines them.
    Toml {
        /// A defence name of `drill poisoning --defence`.
        #[arg(long)]
        defence: Option<String>,
        /// An attack name of `drill poisoning --attack`.
        #[arg(long)]
        attack: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct PoisoningArgs {
    /// label-flip, sign-flip, gaussian, scaling, alie, ipm, min-max, min-sum, backdoor,
    /// free-rider, on-off (sign flip every 3rd round).
    #[arg(long, default_value = "sign-flip")]
    attack: String,
    /// Share of the members that attack, in [0, 0.5).
    #[arg(long, default_value_t = 0.2)]
    fraction: f64,
    /// none (FedAvg, no votes), mean, median, trimmed-mean, winsorized-mean, krum, multi-krum,
    /// centered-clipping, foolsgold (each with votes), or fedmesh (the recommended setting:
    /// winsorized mean with votes).
    #[arg(long, default_value = "fedmesh")]
    defence: String,
    /// Members, each with its own MNIST shard.
    #[arg(long, default_value_t = 20)]
    members: u32,
    /// Rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Split the data non-IID: per class, member shares from Dirichlet(alpha). Default: IID.
    #[arg(long, value_name = "ALPHA")]
    non_iid: Option<f64>,
    /// Seed of the data split, the attackers' choice, training and attacks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "drill-out")]
    out: PathBuf,
    /// Run every attack × defence × fraction (see --attacks, --defences, --fractions).
    #[arg(long)]
    matrix: bool,
    /// Matrix: attacks, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "label-flip,sign-flip,gaussian,scaling,alie,ipm,min-max,min-sum,backdoor,free-rider,on-off"
    )]
    attacks: Vec<String>,
    /// Matrix: defences, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,median,krum,foolsgold,fedmesh"
    )]
    defences: Vec<String>,
    /// Matrix: attacker fractions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.2")]
    fractions: Vec<f64>,
    /// The MNIST file.
    #[arg(long, default_value = "data/mnist_5k.csv.gz")]
    data: PathBuf,
    /// Worker threads (members train in parallel); 0 = all cores.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// How updates are combined: plain (in the clear), secagg or paillier (secure aggregation per
    /// random group: only group sums are revealed; the rule and scores work on group means and
    /// attackers are found by group testing).
    #[arg(long, default_value = "plain")]
    mode: String,
    /// Matrix: modes side by side, comma-separated (e.g. plain,secagg,paillier); default: --mode.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Group size g: no revealed sum covers fewer members. Default 5 in secure modes; in mode
    /// plain, groups only if given (sums added in the clear).
    #[arg(long)]
    group_size: Option<usize>,
    /// Group rounds: probability that a member drops out of a round (half before it, half after
    /// sharing its keys).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Group rounds: public reference rows set aside before the partition (genesis
    /// `spec.robust.reference_rows`); every group mean is also judged by the change of the
    /// model's hinge loss on them. 0 = off. Default: 500 when a run uses groups (every run of
    /// the drill, FedAvg and clean ones too, then trains without those rows), else 0.
    #[arg(long)]
    reference_rows: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct SybilArgs {
    /// clones (2, 5 and 9 clones flip 1 → 7), single (one attacker flips 1 → 7), vote-stuffing
    /// (colluders vote against an honest member), majority (90 % of the identities asking to join
    /// are sybils; the admission protocol decides who gets in), all (all four).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Same as --scenario all.
    #[arg(long)]
    matrix: bool,
    /// Honest members; clones and the single attacker come on top, vote stuffers are among them.
    #[arg(long, default_value_t = 20)]
    members: u32,
    /// Clone counts of the clones scenario, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,5,9")]
    clones: Vec<u32>,
    /// What clones and the single attacker train on: focused (only the 1s of their shards,
    /// labelled 7, as FoolsGold's sybils) or shard (a whole shard with its 1s labelled 7:
    /// stealthier and weaker).
    #[arg(long, default_value = "focused")]
    clone_data: String,
    /// Rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,
    /// Split the data non-IID: per class, member shares from Dirichlet(alpha). Default: IID.
    #[arg(long, value_name = "ALPHA")]
    non_iid: Option<f64>,
    /// Seed of the data split, training and keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "drill-out")]
    out: PathBuf,
    /// The MNIST file.
    #[arg(long, default_value = "data/mnist_5k.csv.gz")]
    data: PathBuf,
    /// Worker threads (members train in parallel); 0 = all cores.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Print every entry (one JSON object per line with --json).
    Show(AuditArgs),
    /// Check every hash link, every signature against the genesis keys and every model hash
    /// against its checkpoint; exits 1 naming the first bad height.
    Verify(AuditArgs),
    /// Write the full log (entries with bodies and signatures) as JSON lines, for offline checks.
    Export {
        #[command(flatten)]
        args: AuditArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PrivacyWhat {
    /// Epsilon spent by `--steps` steps of the subsampled Gaussian mechanism (Rényi accountant).
    Epsilon {
        /// Noise multiplier sigma (noise std / clipping norm).
        #[arg(long)]
        noise: f64,
        /// Poisson sampling rate q (batch size / data set size; 1 for full participation).
        #[arg(long)]
        sample_rate: f64,
        /// Number of steps (rounds × local steps for record-level DP; rounds for member-level).
        #[arg(long)]
        steps: u64,
        /// Target delta.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Use the classic RDP-to-(epsilon, delta) conversion instead of the tighter one.
        #[arg(long)]
        classic: bool,
        #[arg(long)]
        json: bool,
    },
    /// The smallest noise multiplier that stays within `--epsilon` at `--delta`.
    Noise {
        #[arg(long)]
        epsilon: f64,
        #[arg(long)]
        sample_rate: f64,
        #[arg(long)]
        steps: u64,
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// One secure-aggregation round per (members, dropout): the real protocol code with an
    /// in-memory network in one process; per-phase time for a member and for the coordinator, and
    /// bytes sent per member.
    Secagg {
        /// Member counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,20,50,100")]
        members: Vec<u32>,
        /// Parameters per update (float32 values).
        #[arg(long, default_value_t = 100_000)]
        params: usize,
        /// Fractions of members that drop after sharing keys, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.3")]
        dropout: Vec<f64>,
        /// SecAgg+ neighbours per member (0 = complete graph).
        #[arg(long, default_value_t = 0)]
        degree: usize,
        #[arg(long)]
        json: bool,
    },
    /// Threshold Paillier: key generation, encryption (one value per ciphertext vs packed, with and
    /// without precomputed randomness), bytes per value, the homomorphic sum, a member's partial
    /// decryption with proof, its verification and the combination; the decrypted sum is checked.
    Paillier {
        /// Values per update.
        #[arg(long, default_value_t = 100_000)]
        params: usize,
        /// Modulus size in bits.
        #[arg(long, default_value_t = 2048)]
        key_bits: u32,
        /// Members the key is dealt to and whose updates are summed.
        #[arg(long, default_value_t = 4)]
        members: usize,
        /// Partial decryptions needed (0 = a majority).
        #[arg(long, default_value_t = 0)]
        threshold: usize,
        /// Quantization bits per value.
        #[arg(long, default_value_t = 16)]
        value_bits: u32,
        /// Values are clipped to ±clip.
        #[arg(long, default_value_t = 0.5)]
        clip: f32,
        /// Textbook single-value encryptions to time.
        #[arg(long, default_value_t = 50)]
        single: usize,
        /// Keep the dealt key in this file (secret shares included: a bench key only) and reuse it.
        #[arg(long)]
        key_cache: Option<PathBuf>,
        /// Update values as little-endian f32 (e.g. from bench/phe_bench.py) instead of seeded ones.
        #[arg(long)]
        values: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Privacy–utility table: federated rounds with record-level DP (DP-SGD on every member) in
    /// one process, for each target ε at δ; σ comes from the accountant (`fedmesh privacy noise`).
    Dp {
        /// The MNIST file.
        #[arg(long, default_value = "data/mnist_5k.csv.gz")]
        data: PathBuf,
        /// Members (IID shards of the 4,000 training digits).
        #[arg(long, default_value_t = 4)]
        members: u32,
        /// MLP layer widths, input first, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "784,128,10")]
        layers: Vec<usize>,
        /// Federated rounds (every member takes part in every round).
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Local epochs per round.
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// DP-SGD sampling rate of a member's shard.
        #[arg(long, default_value_t = 0.1)]
        sample_rate: f64,
        /// Per-example clipping norm.
        #[arg(long, default_value_t = 1.0)]
        clip: f64,
        /// DP-SGD learning rate.
        #[arg(long, default_value_t = 1.0)]
        learning_rate: f64,
        /// What the noisy gradients drive: sgd or adam.
        #[arg(long, default_value = "sgd", value_parser = ["sgd", "adam"])]
        optimizer: String,
        /// Target ε values, comma-separated; `inf` trains without DP.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,inf")]
        epsilons: Vec<f64>,
        /// δ of every target ε.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Seed of the model, the split, the sampling and the noise.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Local training (SGD, Adam) and evaluation of the default MLP on member 0's MNIST shard.
    Train {
        /// The MNIST file.
        #[arg(long, default_value = "data/mnist_5k.csv.gz")]
        data: PathBuf,
        /// Members the training rows are split among (member 0's shard is timed).
        #[arg(long, default_value_t = 4)]
        members: u32,
        /// Timed repetitions (the median is printed).
        #[arg(long, default_value_t = 15)]
        repeats: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// The node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Expected genesis file; without it the log's own height 0 is used.
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Genesis {
            members,
            out,
            config,
            base_port,
            rounds,
            data,
            mode,
        } => {
            let req = dealer::Request {
                members,
                out: out.clone(),
                config,
                base_port,
                rounds,
                data_path: data,
                mode,
            };
            let hash = dealer::run(&req)?;
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "genesis {hash}")?;
            writeln!(
                stdout,
                "wrote {}/genesis.toml and {members} member folders",
                out.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node {
            config: path,
            peers,
            listen,
            data_dir,
            rounds,
        } => {
            let flags = config::Flags {
                peers,
                listen,
                data_dir,
                rounds,
            };
            let cfg = config::Node::load(&path, flags)?;
            node::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Join {
            config: path,
            listen,
            json,
        } => {
            let flags = config::Flags {
                listen,
                ..Default::default()
            };
            let cfg = config::Node::load(&path, flags)?;
            let (request, file) = crate::join::make_request(&cfg)?;
            let r = &request.request;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "hash": request.hash().to_string(),
                        "peer_id": r.peer_id,
                        "public_key": hex::encode(r.public_key.to_bytes()),
                        "addrs": r.addrs,
                        "file": file.display().to_string(),
                    })
                );
            } else {
                println!("join request {} for peer {}", request.hash(), r.peer_id);
                println!("public key {}", hex::encode(r.public_key.to_bytes()));
                println!("wrote {}", file.display());
                println!(
                    "next: give that file to a member's operator (`fedmesh admit --config node.toml --request FILE`), then run `fedmesh node --config {}`",
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admit {
            config: path,
            peer,
            list,
            request,
            json,
        } => {
            let cfg = config::Node::load(&path, config::Flags::default())?;
            let command = match (list, request, peer) {
                (true, _, _) => crate::control::Command::List,
                (_, Some(file), _) => crate::control::Command::Submit {
                    request: std::fs::read_to_string(&file).map_err(|e| {
                        anyhow::anyhow!("cannot read join request {}: {e}", file.display())
                    })?,
                },
                (_, None, Some(who)) => crate::control::Command::Approve { who },
                (false, None, None) => anyhow::bail!(
                    "say what to do: `--list`, `--request FILE` or the joiner's PEER id"
                ),
            };
            let reply = crate::control::call(&cfg.data_dir, &command)?;
            if json {
                println!("{}", serde_json::to_string(&reply)?);
            }
            match reply {
                crate::control::Reply::Error(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                _ if json => {}
                crate::control::Reply::Pending(list) => {
                    if list.is_empty() {
                        println!("no pending join requests");
                    }
                    for p in list {
                        println!(
                            "{}  peer {}  votes {}/{}{}  key {}  addrs {}",
                            &p.hash[..16],
                            p.peer_id,
                            p.votes,
                            p.needed,
                            if p.approved_here {
                                "  (approved here)"
                            } else {
                                ""
                            },
                            p.public_key,
                            p.addrs.join(",")
                        );
                    }
                }
                crate::control::Reply::Voted {
                    hash,
                    peer_id,
                    fresh,
                } => println!(
                    "{} admission of {peer_id} (request {})",
                    if fresh {
                        "voted for the"
                    } else {
                        "had already voted for the"
                    },
                    &hash[..16]
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Privacy {
            what:
                PrivacyWhat::Epsilon {
                    noise,
                    sample_rate,
                    steps,
                    delta,
                    classic,
                    json,
                },
        } => {
            privacy::epsilon(noise, sample_rate, steps, delta, classic, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Privacy {
            what:
                PrivacyWhat::Noise {
                    epsilon,
                    sample_rate,
                    steps,
                    delta,
                    json,
                },
        } => {
            privacy::noise(epsilon, sample_rate, steps, delta, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Secagg {
                    members,
                    params,
                    dropout,
                    degree,
                    json,
                },
        } => {
            anyhow::ensure!(
                members.iter().all(|n| *n >= 3),
                "--members: at least 3 each"
            );
            anyhow::ensure!(
                dropout.iter().all(|d| (0.0..0.5).contains(d)),
                "--dropout: fractions in [0, 0.5)"
            );
            bench::secagg(&members, params, &dropout, degree, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Paillier {
                    params,
                    key_bits,
                    members,
                    threshold,
                    value_bits,
                    clip,
                    single,
                    key_cache,
                    values,
                    json,
                },
        } => {
            anyhow::ensure!(
                params > 0 && members > 0 && single > 0,
                "--params, --members and --single must be at least 1"
            );
            bench::paillier(&bench::PaillierBench {
                params,
                key_bits,
                members,
                threshold,
                value_bits,
                clip,
                single,
                key_cache,
                values,
                json,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Train {
                    data,
                    members,
                    repeats,
                    json,
                },
        } => {
            anyhow::ensure!(
                repeats > 0 && members > 0,
                "--repeats and --members must be at least 1"
            );
            bench::train(&data, members, repeats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attack {
            what:
                AttackWhat::Flood {
                    genesis,
                    identities,
                    seconds,
                    rate,
                    seed,
                },
        } => {
            anyhow::ensure!(
                (1..=1000).contains(&identities),
                "--identities: between 1 and 1000"
            );
            anyhow::ensure!(
                seconds.is_finite() && seconds > 0.0 && rate.is_finite() && rate > 0.0,
                "--seconds and --rate: positive numbers"
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(flood::run(flood::Options {
                genesis: &genesis,
                identities,
                duration: std::time::Duration::from_secs_f64(seconds),
                rate,
                seed,
            }))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            what: DrillWhat::Toml { defence, attack },
        } => {
            anyhow::ensure!(
                defence.is_some() || attack.is_some(),
                "give --defence, --attack or both"
            );
            #[derive(serde::Serialize)]
            struct Spec {
                robust: fedmesh_protocol::genesis::RobustSpec,
            }
            #[derive(serde::Serialize)]
            struct Tables {
                #[serde(skip_serializing_if = "Option::is_none")]
                spec: Option<Spec>,
                #[serde(skip_serializing_if = "Option::is_none")]
                attack: Option<crate::attack::Config>,
            }
            let tables = Tables {
                spec: defence
                    .map(|d| drill::defence_spec(&d).map(|robust| Spec { robust }))
                    .transpose()?,
                attack: attack.map(|a| drill::attack_config(&a)).transpose()?,
            };
            print!("{}", toml::to_string(&tables)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            what: DrillWhat::Poisoning(a),
        } => {
            drill::single_threaded_kernels();
            drill::poisoning(&drill::Poisoning {
                attack: a.attack,
                fraction: a.fraction,
                defence: a.defence,
                members: a.members,
                rounds: a.rounds,
                non_iid: a.non_iid,
                seed: a.seed,
                out: a.out,
                matrix: a.matrix,
                attacks: a.attacks,
                defences: a.defences,
                fractions: a.fractions,
                data: a.data,
                threads: a.threads,
                mode: a.mode,
                modes: a.modes,
                group_size: a.group_size,
                dropout: a.dropout,
                reference_rows: a.reference_rows,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            what: DrillWhat::Sybil(a),
        } => {
            let scenario = if a.matrix {
                drill::Scenario::All
            } else {
                a.scenario.parse()?
            };
            drill::single_threaded_kernels();
            drill::sybil(&drill::Sybil {
                scenario,
                members: a.members,
                clones: a.clones,
                clone_data: match a.clone_data.as_str() {
                    "focused" => drill::CloneData::Focused,
                    "shard" => drill::CloneData::Shard,
                    other => anyhow::bail!("--clone-data {other:?} is not one of: focused, shard"),
                },
                rounds: a.rounds,
                non_iid: a.non_iid,
                seed: a.seed,
                out: a.out,
                data: a.data,
                threads: a.threads,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Dp {
                    data,
                    members,
                    layers,
                    rounds,
                    epochs,
                    sample_rate,
                    clip,
                    learning_rate,
                    optimizer,
                    epsilons,
                    delta,
                    seed,
                    json,
                },
        } => {
            anyhow::ensure!(
                members > 0 && rounds > 0 && epochs > 0,
                "--members, --rounds and --epochs must be at least 1"
            );
            anyhow::ensure!(
                epsilons.iter().all(|e| *e > 0.0),
                "--epsilons: positive values (inf for no DP)"
            );
            let b = bench::DpBench {
                data,
                members,
                layers,
                rounds,
                epochs,
                sample_rate,
                clip,
                learning_rate,
                optimizer: if optimizer == "adam" {
                    fedmesh_protocol::genesis::Optimizer::Adam
                } else {
                    fedmesh_protocol::genesis::Optimizer::Sgd
                },
                epsilons,
                delta,
                seed,
            };
            bench::dp(&b, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { action } => {
            let (args, mode) = match action {
                AuditAction::Show(a) => (a, audit::Mode::Show),
                AuditAction::Verify(a) => (a, audit::Mode::Verify),
                AuditAction::Export { args, out } => (args, audit::Mode::Export(out)),
            };
            audit::run(&args.data_dir, args.genesis.as_deref(), args.json, mode)
        }
    }
}
