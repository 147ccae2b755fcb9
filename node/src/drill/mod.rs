//! `fedmesh drill poisoning`: poisoning drills in one process.
//!
//! Many members train the real MLP (`crate::train`) on their MNIST shards, attackers among them
//! poison their data or updates (`crate::attack`), and every round is combined with the real
//! robust rule, scored, and voted on (`fedmesh_protocol::robust`, `::votes`): members evicted by
//! a quorum are out of the member set from the next round. Every scenario runs next to a clean
//! run with the same seed (same data, same attackers behaving honestly) and, for reference, a
//! clean run of plain FedAvg. The report (`report.md`, `report.json`, `accuracy.svg`,
//! `detection.svg`) compares them; `--matrix` runs attacks × defences × fractions and writes one
//! summary table (`matrix.md`, `matrix.json`).
//!
//! Detection is counted per round over all members of the scenario: an attacker is detected in a
//! round if its EWMA score is over the threshold or it has been evicted; an honest member is a
//! false positive on the same terms. Attackers do not vote.

mod groups;
mod sim;
mod svg;
mod sybil;

pub use groups::Mode;
pub use sim::CloneData;
pub use sybil::{sybil, Scenario, Sybil};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use fedmesh_crypto::{identity, Hash};
use fedmesh_protocol::genesis::{
    DataSource, DataSpec, ModelSpec, Partition, RobustSpec, RuleKind, TrainSpec,
};
use fedmesh_protocol::robust;

use crate::attack;
use sim::{Run, RunSpec, World};

/// The drill's flags, as parsed.
#[derive(Debug, Clone)]
pub struct Poisoning {
    pub attack: String,
    pub fraction: f64,
    pub defence: String,
    pub members: u32,
    pub rounds: u64,
    pub non_iid: Option<f64>,
    pub seed: u64,
    pub out: PathBuf,
    pub matrix: bool,
    pub attacks: Vec<String>,
    pub defences: Vec<String>,
    pub fractions: Vec<f64>,
    pub data: PathBuf,
    pub threads: usize,
    /// How sums are formed: plain, secagg or paillier (`--mode`).
    pub mode: String,
    /// Matrix: the modes side by side (`--modes`); empty = `mode` alone.
    pub modes: Vec<String>,
    /// Group size g (`--group-size`): None = 5 in secure modes, no groups in mode plain.
    pub group_size: Option<usize>,
    /// Group rounds: per member and round, the probability of dropping out.
    pub dropout: f64,
    /// Group rounds: public reference rows (`--reference-rows`, genesis
    /// `spec.robust.reference_rows`); 0 = off; None = [`DEFAULT_REFERENCE_ROWS`] when a run uses
    /// groups, else 0.
    pub reference_rows: Option<usize>,
}

/// Public reference rows of drills with groups when `--reference-rows` is not given (the shipped
/// group configs use the same).
pub const DEFAULT_REFERENCE_ROWS: usize = 500;

/// Group size of the secure modes when `--group-size` is not given.
pub const DEFAULT_GROUP_SIZE: usize = 5;

/// Attacks of `--attack`, with the settings the drill uses for each.
pub const ATTACKS: &[&str] = &[
    "label-flip",
    "sign-flip",
    "gaussian",
    "scaling",
    "alie",
    "ipm",
    "min-max",
    "min-sum",
    "backdoor",
    "free-rider",
    "on-off",
];

/// Defences of `--defence`: `none` is FedAvg without votes; a rule name is that rule with votes;
/// `fedmesh` is the recommended setting ([`recommended`]).
pub const DEFENCES: &[&str] = &[
    "none",
    "mean",
    "median",
    "trimmed-mean",
    "winsorized-mean",
    "krum",
    "multi-krum",
    "centered-clipping",
    "foolsgold",
    "fedmesh",
];

/// The attacks the issue calls naive: their detection must be near perfect.
const NAIVE: &[&str] = &["label-flip", "sign-flip", "gaussian", "scaling"];

/// The defence fedmesh recommends (and the drill measures as `fedmesh`): the coordinate-wise
/// winsorized mean (β = 0.2) with eviction votes. On non-IID MNIST it stays within a few tenths
/// of FedAvg's clean accuracy where Multi-Krum, the median and the trimmed mean lose a point or
/// more, it keeps a backdoor's trigger weights where honest members leave them (centered
/// clipping lets the backdoor through), and the votes remove what winsorizing only dampens.
pub fn recommended() -> RobustSpec {
    RobustSpec {
        rule: RuleKind::WinsorizedMean,
        votes: true,
        ..RobustSpec::default()
    }
}

/// The attack configuration behind a drill attack name.
pub fn attack_config(name: &str) -> anyhow::Result<attack::Config> {
    use attack::Kind;
    let base = attack::Config::default();
    let c = match name.replace('_', "-").as_str() {
        "none" => base,
        "label-flip" => attack::Config {
            kind: Kind::LabelFlip,
            ..base
        },
        "sign-flip" => attack::Config {
            kind: Kind::SignFlip,
            scale: 4.0,
            ..base
        },
        "gaussian" => attack::Config {
            kind: Kind::Gaussian,
            sigma: 0.05,
            ..base
        },
        "scaling" => attack::Config {
            kind: Kind::Scaling,
            scale: 10.0,
            ..base
        },
        "alie" => attack::Config {
            kind: Kind::Alie,
            ..base
        },
        "ipm" => attack::Config {
            kind: Kind::Ipm,
            epsilon: 0.5,
            ..base
        },
        "min-max" => attack::Config {
            kind: Kind::MinMax,
            ..base
        },
        "min-sum" => attack::Config {
            kind: Kind::MinSum,
            ..base
        },
        "backdoor" => attack::Config {
            kind: Kind::Backdoor,
            target: 0,
            trigger: 4,
            poison_fraction: 0.5,
            ..base
        },
        "free-rider" => attack::Config {
            kind: Kind::FreeRider,
            sigma: 1e-3,
            ..base
        },
        "on-off" => attack::Config {
            kind: Kind::SignFlip,
            scale: 4.0,
            every: 3,
            ..base
        },
        other => anyhow::bail!(
            "--attack {other:?} is not one of: none, {}",
            ATTACKS.join(", ")
        ),
    };
    Ok(c)
}

/// The robust settings behind a drill defence name.
pub fn defence_spec(name: &str) -> anyhow::Result<RobustSpec> {
    let with = |rule| RobustSpec {
        rule,
        votes: true,
        ..RobustSpec::default()
    };
    Ok(match name.replace('_', "-").as_str() {
        "none" => RobustSpec::default(),
        "mean" => with(RuleKind::Mean),
        "median" => with(RuleKind::Median),
        "trimmed-mean" => with(RuleKind::TrimmedMean),
        "winsorized-mean" => with(RuleKind::WinsorizedMean),
        "krum" => with(RuleKind::Krum),
        "multi-krum" => with(RuleKind::MultiKrum),
        "centered-clipping" => with(RuleKind::CenteredClipping),
        "foolsgold" => with(RuleKind::Foolsgold),
        "fedmesh" | "default" => recommended(),
        other => anyhow::bail!("--defence {other:?} is not one of: {}", DEFENCES.join(", ")),
    })
}

impl Poisoning {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.members >= 4,
            "--members: at least 4 (scores compare a member with the others)"
        );
        anyhow::ensure!(self.rounds >= 1, "--rounds: at least 1");
        for f in std::iter::once(&self.fraction).chain(&self.fractions) {
            anyhow::ensure!(
                (0.0..0.5).contains(f),
                "--fraction {f}: must be in [0, 0.5)"
            );
        }
        if let Some(a) = self.non_iid {
            anyhow::ensure!(a > 0.0 && a.is_finite(), "--non-iid {a}: alpha must be > 0");
        }
        for a in std::iter::once(&self.attack).chain(&self.attacks) {
            attack_config(a)?;
        }
        for d in std::iter::once(&self.defence).chain(&self.defences) {
            defence_spec(d)?;
        }
        for m in self.mode_names() {
            Mode::parse(m)?;
        }
        if let Some(g) = self.group_size {
            anyhow::ensure!(
                g >= 2 && g <= self.members as usize,
                "--group-size {g}: must be at least 2 (a group of one reveals an update) and at most --members {}",
                self.members
            );
        }
        anyhow::ensure!(
            (0.0..=0.5).contains(&self.dropout),
            "--dropout {}: must be in [0, 0.5]",
            self.dropout
        );
        Ok(())
    }

    /// The modes this drill runs.
    fn mode_names(&self) -> Vec<&String> {
        if self.matrix && !self.modes.is_empty() {
            self.modes.iter().collect()
        } else {
            vec![&self.mode]
        }
    }

    /// How a run in `mode` forms its sums: None = individual updates in the clear.
    fn settings(
        &self,
        mode: Mode,
        paillier: Option<groups::PaillierKit>,
    ) -> Option<groups::Settings> {
        if mode == Mode::Plain && self.group_size.is_none() {
            return None;
        }
        Some(groups::Settings {
            mode,
            size: self.group_size.unwrap_or(DEFAULT_GROUP_SIZE),
            dropout: self.dropout,
            paillier,
        })
    }

    /// Every mode of the drill with its settings (the Paillier key is dealt once, here).
    fn all_settings(&self) -> anyhow::Result<Vec<(Mode, Option<groups::Settings>)>> {
        let mut out = Vec::new();
        for name in self.mode_names() {
            let mode = Mode::parse(name)?;
            let kit = match mode {
                Mode::Paillier => {
                    eprintln!(
                        "dealing a {}-bit Paillier key to {} members (threshold {})",
                        groups::PAILLIER_KEY_BITS,
                        self.members,
                        groups::PAILLIER_THRESHOLD
                    );
                    Some(groups::PaillierKit::deal(self.members as usize, self.seed)?)
                }
                _ => None,
            };
            out.push((mode, self.settings(mode, kit)));
        }
        Ok(out)
    }
}

/// Make each member train on one thread (small matrices train fastest that way) while members
/// train in parallel on the drill's pool: candle and the gemm kernels size their own parallelism
/// from these variables. Call before anything starts threads (the process environment is not
/// safe to change while other threads read it).
pub fn single_threaded_kernels() {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}

/// Run the drill: one scenario, or the matrix.
pub fn poisoning(p: &Poisoning) -> anyhow::Result<()> {
    p.check()?;
    let threads = if p.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        p.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the drill's thread pool")?;
    std::fs::create_dir_all(&p.out)
        .with_context(|| format!("cannot create {}", p.out.display()))?;
    let world = build_world(p)?;
    pool.install(|| {
        let modes = p.all_settings()?;
        if p.matrix {
            matrix(p, &world, &modes)
        } else {
            let (mode, settings) = &modes[0];
            single(p, &world, *mode, settings.as_ref())
        }
    })
}

fn build_world(p: &Poisoning) -> anyhow::Result<World> {
    let grouped = p.group_size.is_some()
        || p.mode_names()
            .iter()
            .any(|m| Mode::parse(m).is_ok_and(|m| m != Mode::Plain));
    let rows = p
        .reference_rows
        .unwrap_or(if grouped { DEFAULT_REFERENCE_ROWS } else { 0 });
    world(p.members, p.non_iid, p.seed, &p.data, rows)
}

/// The drill's world: `members` MNIST shards from `data` (IID, or Dirichlet(α) non-IID), 1000
/// test rows, the default model and training, and one seeded identity key per member.
fn world(
    members: u32,
    non_iid: Option<f64>,
    seed: u64,
    data_file: &Path,
    reference_rows: usize,
) -> anyhow::Result<World> {
    let p = Poisoning {
        attack: String::new(),
        fraction: 0.0,
        defence: String::new(),
        members,
        rounds: 0,
        non_iid,
        seed,
        out: PathBuf::new(),
        matrix: false,
        attacks: Vec::new(),
        defences: Vec::new(),
        fractions: Vec::new(),
        data: data_file.to_path_buf(),
        threads: 0,
        mode: "plain".into(),
        modes: Vec::new(),
        group_size: None,
        dropout: 0.0,
        reference_rows: Some(0),
    };
    let model = ModelSpec::default();
    let layout = model.layout()?;
    let data = DataSpec {
        source: DataSource::Mnist,
        partition: match p.non_iid {
            Some(alpha) => Partition::Dirichlet { alpha },
            None => Partition::Iid,
        },
        seed: p.seed,
        test_rows: 1000,
        ..DataSpec::default()
    };
    let all = crate::train::load_all(&data, &p.data, p.members, reference_rows)
        .with_context(|| format!("loading {} for {} members", p.data.display(), p.members))?;
    let reference = (reference_rows > 0)
        .then(|| {
            robust::reference::Set::new(
                all.reference.features,
                all.reference.classes,
                all.reference.x,
                all.reference.y,
            )
        })
        .transpose()?;
    let keys = (0..p.members)
        .map(|i| {
            let seed = Hash::of(
                "fedmesh drill key",
                &[p.seed.to_le_bytes(), u64::from(i).to_le_bytes()].concat(),
            );
            identity::SecretKey::from_seed(seed.0)
        })
        .collect();
    Ok(World {
        init: layout.init(model.init_seed),
        layout,
        shards: all.shards,
        test: all.test,
        reference,
        train: TrainSpec::default(),
        keys,
        network: Hash::of("fedmesh drill network", &p.seed.to_le_bytes()),
    })
}

/// The attacking members for `fraction`: a seeded random choice.
fn choose_attackers(members: u32, fraction: f64, seed: u64) -> Vec<u32> {
    let k = (fraction * f64::from(members)).round() as usize;
    let mut all: Vec<u32> = (0..members).collect();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(sim::derive(seed, "attackers", 0, 0));
    all.shuffle(&mut rng);
    let mut chosen = all[..k.min(all.len())].to_vec();
    chosen.sort_unstable();
    chosen
}

/// One attacked scenario, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub attack: String,
    /// plain, secagg or paillier.
    pub mode: String,
    /// Group rounds: g.
    pub group_size: Option<usize>,
    /// Group rounds: share of revealed groups holding an attacker that were flagged (the
    /// measured d of the group-testing model).
    pub group_detection: Option<f64>,
    /// Group rounds: share of all-honest revealed groups that were flagged (measured f).
    pub group_false_alarm: Option<f64>,
    /// Group rounds: fewest contributors of any revealed sum.
    pub min_revealed: Option<usize>,
    pub defence: String,
    pub fraction: f64,
    pub attackers: Vec<u32>,
    pub final_accuracy: f32,
    pub clean_accuracy: f32,
    pub fedavg_clean_accuracy: f32,
    pub worst_last5: f32,
    pub clean_worst_last5: f32,
    pub attack_success: Option<f32>,
    /// Smallest per-round TPR after round 3.
    pub min_tpr: Option<f64>,
    /// Largest per-round FPR after round 3.
    pub max_fpr: f64,
    pub evicted_attackers: usize,
    /// Rounds until the last attacker was evicted (None if one was not).
    pub rounds_to_evict_all: Option<u64>,
    pub honest_evicted: Vec<u32>,
    pub clean_honest_evicted: Vec<u32>,
    pub seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    attack: &str,
    defence: &str,
    mode: (Mode, Option<usize>),
    fraction: f64,
    attackers: &[u32],
    run: &Run,
    clean: &Run,
    fedavg: &Run,
) -> Summary {
    let (min_tpr, max_fpr) = run.detection_after(3);
    let evicted: Vec<Option<u64>> = attackers.iter().map(|m| run.evicted_in(*m)).collect();
    let stats: Vec<&sim::GroupStat> = run
        .rounds
        .iter()
        .filter_map(|r| r.groups.as_ref())
        .collect();
    let rate = |hit: fn(&sim::GroupStat) -> usize, all: fn(&sim::GroupStat) -> usize| {
        let all: usize = stats.iter().map(|s| all(s)).sum();
        (all > 0).then(|| stats.iter().map(|s| hit(s)).sum::<usize>() as f64 / all as f64)
    };
    Summary {
        attack: attack.into(),
        mode: mode.0.name().into(),
        group_size: mode.1,
        group_detection: rate(|s| s.with_attacker_flagged, |s| s.with_attacker),
        group_false_alarm: rate(|s| s.clean_flagged, |s| s.clean),
        min_revealed: stats.iter().flat_map(|s| s.revealed.iter().copied()).min(),
        defence: defence.into(),
        fraction,
        attackers: attackers.to_vec(),
        final_accuracy: run.final_accuracy(),
        clean_accuracy: clean.final_accuracy(),
        fedavg_clean_accuracy: fedavg.final_accuracy(),
        worst_last5: run.worst_of_last(5),
        clean_worst_last5: clean.worst_of_last(5),
        attack_success: run.final_attack_success(),
        min_tpr,
        max_fpr,
        evicted_attackers: evicted.iter().flatten().count(),
        rounds_to_evict_all: if attackers.is_empty() {
            Some(0)
        } else {
            evicted
                .iter()
                .copied()
                .collect::<Option<Vec<u64>>>()
                .and_then(|v| v.into_iter().max())
        },
        honest_evicted: run.honest_evicted(),
        clean_honest_evicted: clean.honest_evicted(),
        seconds: run.seconds,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    p: &Poisoning,
    world: &World,
    attack: &attack::Config,
    robust: &RobustSpec,
    attackers: &[u32],
    clean: bool,
    groups: Option<&groups::Settings>,
) -> anyhow::Result<Run> {
    let mut robust = robust.clone();
    if let Some(g) = groups {
        robust.group_size = g.size;
        robust.reference_rows = world.reference.as_ref().map_or(0, |r| r.len());
    }
    let robust = &robust;
    sim::run(
        world,
        &RunSpec {
            groups,
            robust,
            attack,
            clean,
            attackers,
            rounds: p.rounds,
            seed: p.seed,
            clones: None,
            stuffing: None,
        },
    )
}

#[derive(Serialize)]
struct SingleReport<'a> {
    attack: &'a str,
    attack_config: &'a attack::Config,
    defence: &'a str,
    robust: &'a RobustSpec,
    members: u32,
    rounds: u64,
    non_iid_alpha: Option<f64>,
    seed: u64,
    summary: &'a Summary,
    attacked: &'a Run,
    clean: &'a Run,
    fedavg_clean: &'a Run,
}

fn single(
    p: &Poisoning,
    world: &World,
    mode: Mode,
    settings: Option<&groups::Settings>,
) -> anyhow::Result<()> {
    let attack = attack_config(&p.attack)?;
    let robust = defence_spec(&p.defence)?;
    let attackers = choose_attackers(p.members, p.fraction, p.seed);
    let t = std::time::Instant::now();
    eprintln!("[1/3] clean run, plain FedAvg");
    let fedavg = run_one(
        p,
        world,
        &attack,
        &RobustSpec::default(),
        &attackers,
        true,
        None,
    )?;
    let how = mode_label(mode, settings);
    eprintln!("[2/3] clean run, defence {}, {how}", p.defence);
    let clean = run_one(p, world, &attack, &robust, &attackers, true, settings)?;
    eprintln!(
        "[3/3] {} by {} of {} members, defence {}, {how}",
        p.attack,
        attackers.len(),
        p.members,
        p.defence
    );
    let run = run_one(p, world, &attack, &robust, &attackers, false, settings)?;
    let summary = summarize(
        &p.attack,
        &p.defence,
        (mode, settings.map(|s| s.size)),
        p.fraction,
        &attackers,
        &run,
        &clean,
        &fedavg,
    );
    let report = SingleReport {
        attack: &p.attack,
        attack_config: &attack,
        defence: &p.defence,
        robust: &robust,
        members: p.members,
        rounds: p.rounds,
        non_iid_alpha: p.non_iid,
        seed: p.seed,
        summary: &summary,
        attacked: &run,
        clean: &clean,
        fedavg_clean: &fedavg,
    };
    write(
        &p.out.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    write(
        &p.out.join("accuracy.svg"),
        &accuracy_svg(p, &run, &clean, Some(&fedavg)),
    )?;
    write(&p.out.join("detection.svg"), &detection_svg(p, &run))?;
    write(
        &p.out.join("report.md"),
        &single_markdown(p, &summary, &run, &clean, &fedavg),
    )?;
    eprintln!(
        "final accuracy {:.4} (clean {:.4}, FedAvg clean {:.4}); attackers evicted {}/{}; {:.1} s; report in {}",
        summary.final_accuracy,
        summary.clean_accuracy,
        summary.fedavg_clean_accuracy,
        summary.evicted_attackers,
        attackers.len(),
        t.elapsed().as_secs_f64(),
        p.out.display()
    );
    Ok(())
}

/// The matrix's name of a clean run: the defence alone for individual updates in the clear (as
/// before groups existed), with the mode and g otherwise.
fn clean_key(defence: &str, mode: Mode, settings: Option<&groups::Settings>) -> String {
    match settings {
        None => defence.to_string(),
        Some(g) => format!("{defence} ({}, g = {})", mode.name(), g.size),
    }
}

/// "mode secagg, groups of 5" and the like.
fn mode_label(mode: Mode, settings: Option<&groups::Settings>) -> String {
    match settings {
        None => format!("mode {}", mode.name()),
        Some(s) => format!("mode {}, groups of {}", mode.name(), s.size),
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn accuracy_svg(p: &Poisoning, run: &Run, clean: &Run, fedavg: Option<&Run>) -> String {
    let pts = |r: &Run| {
        r.rounds
            .iter()
            .map(|s| (s.round as f64, f64::from(s.accuracy)))
            .collect::<Vec<_>>()
    };
    let mut series = vec![
        svg::Series {
            name: "clean",
            color: "#1f77b4",
            dashed: false,
            points: pts(clean),
        },
        svg::Series {
            name: "attacked",
            color: "#d62728",
            dashed: false,
            points: pts(run),
        },
    ];
    if let Some(f) = fedavg {
        series.push(svg::Series {
            name: "FedAvg, clean",
            color: "#7f7f7f",
            dashed: true,
            points: pts(f),
        });
    }
    if run.rounds.iter().any(|r| r.attack_success.is_some()) {
        series.push(svg::Series {
            name: "attack success",
            color: "#ff7f0e",
            dashed: true,
            points: run
                .rounds
                .iter()
                .filter_map(|s| s.attack_success.map(|a| (s.round as f64, f64::from(a))))
                .collect(),
        });
    }
    svg::line_chart(
        &format!(
            "{} ({:.0} %), defence {}",
            p.attack,
            p.fraction * 100.0,
            p.defence
        ),
        "round",
        "test accuracy",
        (1.0, p.rounds as f64),
        (0.0, 1.0),
        &series,
    )
}

fn detection_svg(p: &Poisoning, run: &Run) -> String {
    svg::line_chart(
        &format!(
            "detection: {} ({:.0} %), defence {}",
            p.attack,
            p.fraction * 100.0,
            p.defence
        ),
        "round",
        "rate",
        (1.0, p.rounds as f64),
        (0.0, 1.0),
        &[
            svg::Series {
                name: "TPR (attackers)",
                color: "#2ca02c",
                dashed: false,
                points: run
                    .rounds
                    .iter()
                    .filter_map(|s| s.tpr.map(|t| (s.round as f64, t)))
                    .collect(),
            },
            svg::Series {
                name: "FPR (honest)",
                color: "#d62728",
                dashed: false,
                points: run.rounds.iter().map(|s| (s.round as f64, s.fpr)).collect(),
            },
            svg::Series {
                name: "active members / N",
                color: "#7f7f7f",
                dashed: true,
                points: run
                    .rounds
                    .iter()
                    .map(|s| (s.round as f64, s.active as f64 / f64::from(p.members)))
                    .collect(),
            },
        ],
    )
}

fn pct(v: f32) -> String {
    format!("{:.2}", v * 100.0)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn single_markdown(p: &Poisoning, s: &Summary, run: &Run, clean: &Run, fedavg: &Run) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Poisoning drill: {} vs {}\n", p.attack, p.defence);
    let _ = writeln!(
        m,
        "{} members ({} attackers: {:?}), {} rounds, MNIST, {}, seed {}. Command:\n\n```\n{}\n```\n",
        p.members,
        s.attackers.len(),
        s.attackers,
        p.rounds,
        match p.non_iid {
            Some(a) => format!("Dirichlet α = {a} non-IID"),
            None => "IID".into(),
        },
        p.seed,
        command_line(p)
    );
    let _ = writeln!(
        m,
        "| | attacked | clean (same defence) | clean FedAvg |\n|---|---|---|---|"
    );
    let _ = writeln!(
        m,
        "| final accuracy (%) | {} | {} | {} |",
        pct(s.final_accuracy),
        pct(s.clean_accuracy),
        pct(s.fedavg_clean_accuracy)
    );
    let _ = writeln!(
        m,
        "| worst of last 5 rounds (%) | {} | {} | {} |",
        pct(s.worst_last5),
        pct(s.clean_worst_last5),
        pct(fedavg.worst_of_last(5))
    );
    let _ = writeln!(
        m,
        "| attack success rate (%) | {} | {} | {} |",
        opt(s.attack_success.map(pct)),
        opt(clean.final_attack_success().map(pct)),
        opt(fedavg.final_attack_success().map(pct))
    );
    let _ = writeln!(
        m,
        "| honest members evicted | {:?} | {:?} | – |\n",
        s.honest_evicted, s.clean_honest_evicted
    );
    let _ = writeln!(
        m,
        "Detection after round 3: min TPR {}, max FPR {:.3}. Attackers evicted: {}/{}.\n",
        opt(s.min_tpr.map(|t| format!("{t:.3}"))),
        s.max_fpr,
        s.evicted_attackers,
        s.attackers.len()
    );
    let _ = writeln!(m, "| attacker | evicted in round |\n|---|---|");
    for a in &s.attackers {
        let _ = writeln!(m, "| {a} | {} |", opt(run.evicted_in(*a)));
    }
    let _ = writeln!(
        m,
        "\n![accuracy](accuracy.svg)\n\n![detection](detection.svg)\n\n## Per round\n"
    );
    let _ = writeln!(
        m,
        "| round | accuracy | clean | attack success | active | attacking | TPR | FPR | evicted | max honest score | min attacker score |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (r, c) in run.rounds.iter().zip(&clean.rounds) {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:?} | {:.2} | {} |",
            r.round,
            pct(r.accuracy),
            pct(c.accuracy),
            opt(r.attack_success.map(pct)),
            r.active,
            r.attacking,
            opt(r.tpr.map(|t| format!("{t:.3}"))),
            r.fpr,
            r.evicted,
            r.max_honest_score,
            opt(r.min_attacker_score.map(|v| format!("{v:.2}")))
        );
    }
    m
}

fn command_line(p: &Poisoning) -> String {
    let mut c = format!(
        "fedmesh drill poisoning --members {} --rounds {} --seed {}",
        p.members, p.rounds, p.seed
    );
    if let Some(a) = p.non_iid {
        let _ = write!(c, " --non-iid {a}");
    }
    if p.matrix && !p.modes.is_empty() {
        let _ = write!(c, " --modes {}", p.modes.join(","));
    } else if p.mode != "plain" {
        let _ = write!(c, " --mode {}", p.mode);
    }
    if let Some(g) = p.group_size {
        let _ = write!(c, " --group-size {g}");
    }
    if p.dropout > 0.0 {
        let _ = write!(c, " --dropout {}", p.dropout);
    }
    if let Some(r) = p.reference_rows {
        let _ = write!(c, " --reference-rows {r}");
    }
    if p.matrix {
        let _ = write!(
            c,
            " --matrix --attacks {} --defences {} --fractions {}",
            p.attacks.join(","),
            p.defences.join(","),
            p.fractions
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    } else {
        let _ = write!(
            c,
            " --attack {} --fraction {} --defence {}",
            p.attack, p.fraction, p.defence
        );
    }
    c
}

#[derive(Serialize)]
struct MatrixReport<'a> {
    members: u32,
    rounds: u64,
    non_iid_alpha: Option<f64>,
    seed: u64,
    seconds: f64,
    clean: BTreeMap<String, CleanSummary>,
    scenarios: &'a [Summary],
}

#[derive(Serialize, Clone)]
struct CleanSummary {
    final_accuracy: f32,
    worst_last5: f32,
    honest_evicted: Vec<u32>,
    max_fpr: f64,
}

fn matrix(
    p: &Poisoning,
    world: &World,
    modes: &[(Mode, Option<groups::Settings>)],
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let total = 1 + modes.len() * p.defences.len() * (1 + p.attacks.len() * p.fractions.len());
    let mut done = 0;
    let mut progress = |what: &str, secs: f64| {
        done += 1;
        eprintln!(
            "[{done}/{total}] {what} ({secs:.1} s; {:.0} s elapsed)",
            started.elapsed().as_secs_f64()
        );
    };
    let none = attack::Config::default();
    let fedavg = run_one(p, world, &none, &RobustSpec::default(), &[], true, None)?;
    progress(
        &format!("clean FedAvg: {:.4}", fedavg.final_accuracy()),
        fedavg.seconds,
    );
    let mut cleans = BTreeMap::new();
    for (mode, settings) in modes {
        for d in &p.defences {
            let robust = defence_spec(d)?;
            let clean = run_one(p, world, &none, &robust, &[], true, settings.as_ref())?;
            progress(
                &format!(
                    "clean {d}, {}: {:.4}, honest evicted {:?}",
                    mode_label(*mode, settings.as_ref()),
                    clean.final_accuracy(),
                    clean.honest_evicted()
                ),
                clean.seconds,
            );
            cleans.insert(clean_key(d, *mode, settings.as_ref()), clean);
        }
    }
    let mut rows = Vec::new();
    for (mode, settings) in modes {
        let settings = settings.as_ref();
        for &fraction in &p.fractions {
            let attackers = choose_attackers(p.members, fraction, p.seed);
            for a in &p.attacks {
                let attack = attack_config(a)?;
                for d in &p.defences {
                    let robust = defence_spec(d)?;
                    let run = run_one(p, world, &attack, &robust, &attackers, false, settings)?;
                    let clean = &cleans[&clean_key(d, *mode, settings)];
                    let s = summarize(
                        a,
                        d,
                        (*mode, settings.map(|s| s.size)),
                        fraction,
                        &attackers,
                        &run,
                        clean,
                        &fedavg,
                    );
                    progress(
                        &format!(
                            "{a} {:.0} % vs {d}, {}: {:.4} (clean {:.4}), evicted {}/{} by round {}",
                            fraction * 100.0,
                            mode_label(*mode, settings),
                            s.final_accuracy,
                            s.clean_accuracy,
                            s.evicted_attackers,
                            attackers.len(),
                            opt(s.rounds_to_evict_all)
                        ),
                        run.seconds,
                    );
                    let tag = match settings {
                        None => String::new(),
                        Some(g) => format!("-{}-g{}", mode.name(), g.size),
                    };
                    let dir = p
                        .out
                        .join("runs")
                        .join(format!("{a}-{d}-{:.0}{tag}", fraction * 100.0));
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    let sub = Poisoning {
                        attack: a.clone(),
                        defence: d.clone(),
                        fraction,
                        matrix: false,
                        mode: mode.name().into(),
                        modes: Vec::new(),
                        group_size: settings.map(|g| g.size),
                        ..p.clone()
                    };
                    write(
                        &dir.join("accuracy.svg"),
                        &accuracy_svg(&sub, &run, clean, Some(&fedavg)),
                    )?;
                    write(&dir.join("detection.svg"), &detection_svg(&sub, &run))?;
                    write(
                        &dir.join("report.md"),
                        &single_markdown(&sub, &s, &run, clean, &fedavg),
                    )?;
                    rows.push(s);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let clean_summaries: BTreeMap<String, CleanSummary> =
        std::iter::once(("fedavg (none)".to_string(), &fedavg))
            .chain(cleans.iter().map(|(k, v)| (k.clone(), v)))
            .map(|(k, r)| {
                (
                    k,
                    CleanSummary {
                        final_accuracy: r.final_accuracy(),
                        worst_last5: r.worst_of_last(5),
                        honest_evicted: r.evictions.iter().map(|e| e.member).collect(),
                        max_fpr: r.detection_after(3).1,
                    },
                )
            })
            .collect();
    let report = MatrixReport {
        members: p.members,
        rounds: p.rounds,
        non_iid_alpha: p.non_iid,
        seed: p.seed,
        seconds,
        clean: clean_summaries.clone(),
        scenarios: &rows,
    };
    write(
        &p.out.join("matrix.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    let md = matrix_markdown(p, &rows, &clean_summaries, seconds);
    write(&p.out.join("matrix.md"), &md)?;
    write(&p.out.join("report.md"), &md)?;
    eprintln!(
        "matrix done in {seconds:.0} s; summary in {}",
        p.out.join("matrix.md").display()
    );
    Ok(())
}

fn matrix_markdown(
    p: &Poisoning,
    rows: &[Summary],
    cleans: &BTreeMap<String, CleanSummary>,
    seconds: f64,
) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Poisoning drill matrix\n");
    let _ = writeln!(
        m,
        "{} members, {} rounds, MNIST, {}, seed {}; {:.0} s wall time. Command:\n\n```\n{}\n```\n",
        p.members,
        p.rounds,
        match p.non_iid {
            Some(a) => format!("Dirichlet α = {a} non-IID"),
            None => "IID".into(),
        },
        p.seed,
        seconds,
        command_line(p)
    );
    let _ = writeln!(m, "## Clean runs\n\n| defence | final accuracy (%) | worst of last 5 (%) | max FPR after round 3 | evicted |\n|---|---|---|---|---|");
    for (d, c) in cleans {
        let _ = writeln!(
            m,
            "| {d} | {} | {} | {:.3} | {:?} |",
            pct(c.final_accuracy),
            pct(c.worst_last5),
            c.max_fpr,
            c.honest_evicted
        );
    }
    let _ = writeln!(m, "\n## Attacks\n\nAccuracy in %, Δ against the clean run of the same defence. TPR/FPR: worst round after round 3. Evict: attackers evicted / attackers, and the round the last one went.\n");
    let _ = writeln!(m, "Mode: how sums are formed (plain = individual updates in the clear; secagg and paillier: groups of g, only group sums revealed). Groups d / f: share of revealed groups holding an attacker that were flagged / of all-honest groups that were flagged; min sum: fewest contributors of any revealed sum.\n");
    let _ = writeln!(m, "| attack | mode | fraction | defence | final | Δ clean | worst last 5 | attack success | min TPR | max FPR | evicted | by round | honest evicted | groups d / f | min sum |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} % | {} | {} | {:+.2} | {} | {} | {} | {:.3} | {}/{} | {} | {:?} | {} | {} |",
            s.attack,
            match s.group_size {
                Some(g) => format!("{} (g = {g})", s.mode),
                None => s.mode.clone(),
            },
            s.fraction * 100.0,
            s.defence,
            pct(s.final_accuracy),
            (s.final_accuracy - s.clean_accuracy) * 100.0,
            pct(s.worst_last5),
            opt(s.attack_success.map(pct)),
            opt(s.min_tpr.map(|t| format!("{t:.2}"))),
            s.max_fpr,
            s.evicted_attackers,
            s.attackers.len(),
            opt(s.rounds_to_evict_all),
            s.honest_evicted,
            match (s.group_detection, s.group_false_alarm) {
                (None, None) => "–".to_string(),
                (d, f) => format!(
                    "{} / {}",
                    opt(d.map(|v| format!("{v:.2}"))),
                    opt(f.map(|v| format!("{v:.2}")))
                ),
            },
            opt(s.min_revealed)
        );
    }
    m.push_str(&side_by_side(rows));
    let _ = writeln!(m, "\n## Targets (defence `fedmesh`, 20 % attackers)\n");
    m.push_str(&targets(rows, cleans));
    m.push_str(&group_targets(rows, cleans));
    m
}

/// The modes side by side: per attack, fraction and defence, each mode's Δ against its own
/// clean run and the round the last attacker was evicted.
fn side_by_side(rows: &[Summary]) -> String {
    let label = |s: &Summary| match s.group_size {
        Some(g) => format!("{} (g = {g})", s.mode),
        None => s.mode.clone(),
    };
    let mut modes: Vec<String> = Vec::new();
    for s in rows {
        if !modes.contains(&label(s)) {
            modes.push(label(s));
        }
    }
    if modes.len() < 2 {
        return String::new();
    }
    let mut m = String::new();
    let _ = writeln!(m, "\n## Modes side by side\n\nPer mode: final accuracy (Δ against the clean run of the same mode) · attackers evicted by round.\n");
    let _ = write!(m, "| attack | fraction | defence |");
    for mode in &modes {
        let _ = write!(m, " {mode} |");
    }
    let _ = writeln!(m, "\n|---|---|---|{}", "---|".repeat(modes.len()));
    let mut seen: Vec<(String, u64, String)> = Vec::new();
    for s in rows {
        let key = (
            s.attack.clone(),
            (s.fraction * 1000.0).round() as u64,
            s.defence.clone(),
        );
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let _ = write!(
            m,
            "| {} | {:.0} % | {} |",
            s.attack,
            s.fraction * 100.0,
            s.defence
        );
        for mode in &modes {
            let cell = rows
                .iter()
                .find(|r| {
                    r.attack == s.attack
                        && (r.fraction - s.fraction).abs() < 1e-9
                        && r.defence == s.defence
                        && &label(r) == mode
                })
                .map_or("–".to_string(), |r| {
                    format!(
                        "{} ({:+.2}) · {}/{} by {}",
                        pct(r.final_accuracy),
                        (r.final_accuracy - r.clean_accuracy) * 100.0,
                        r.evicted_attackers,
                        r.attackers.len(),
                        opt(r.rounds_to_evict_all)
                    )
                });
            let _ = write!(m, " {cell} |");
        }
        let _ = writeln!(m);
    }
    m
}

/// Issue 8's targets for group rounds (defence `fedmesh`, 20 % attackers, each secure mode):
/// sign flip, scaling and label flip leave the final accuracy ≥ clean − 3 and are all evicted
/// within 15 rounds; no honest member is evicted in the clean run; ALIE and IPM are reported.
fn group_targets(rows: &[Summary], cleans: &BTreeMap<String, CleanSummary>) -> String {
    let mut m = String::new();
    let mut modes: Vec<(String, usize)> = rows
        .iter()
        .filter_map(|s| s.group_size.map(|g| (s.mode.clone(), g)))
        .collect();
    modes.dedup();
    for (mode, g) in modes {
        let _ = writeln!(m, "\n## Targets of group rounds: mode {mode}, groups of {g} (defence `fedmesh`, 20 % attackers)\n");
        let mut line = |ok: bool, text: String| {
            let _ = writeln!(m, "- {} {text}", if ok { "met:" } else { "MISSED:" });
        };
        if let Some(clean) = cleans.get(&format!("fedmesh ({mode}, g = {g})")) {
            line(
                clean.honest_evicted.is_empty(),
                format!(
                    "clean run: honest members evicted {:?}",
                    clean.honest_evicted
                ),
            );
        }
        let ours = |a: &str| {
            rows.iter().find(|s| {
                s.attack == a
                    && s.defence == "fedmesh"
                    && s.mode == mode
                    && s.group_size == Some(g)
                    && (s.fraction - 0.2).abs() < 1e-9
            })
        };
        for a in ["sign-flip", "scaling", "label-flip"] {
            if let Some(s) = ours(a) {
                let d = (s.final_accuracy - s.clean_accuracy) * 100.0;
                line(
                    d >= -3.0,
                    format!("{a}: final accuracy ≥ clean − 3: {d:+.2} points"),
                );
                line(
                    s.rounds_to_evict_all.is_some_and(|r| r <= 15),
                    format!(
                        "{a}: every attacker evicted within 15 rounds: {}/{} by round {}",
                        s.evicted_attackers,
                        s.attackers.len(),
                        opt(s.rounds_to_evict_all)
                    ),
                );
                line(
                    s.honest_evicted.is_empty(),
                    format!("{a}: honest members evicted {:?}", s.honest_evicted),
                );
            }
        }
        for a in ["alie", "ipm"] {
            if let Some(s) = ours(a) {
                let _ = writeln!(
                    m,
                    "- report: {a}: final accuracy {:+.2} points against clean; attackers evicted {}/{} by round {}; honest evicted {:?}",
                    (s.final_accuracy - s.clean_accuracy) * 100.0,
                    s.evicted_attackers,
                    s.attackers.len(),
                    opt(s.rounds_to_evict_all),
                    s.honest_evicted
                );
            }
        }
    }
    m
}

/// The issue's "done when" targets, checked against the matrix rows of the `fedmesh` defence at
/// 20 % attackers: met or missed, and by how much.
fn targets(rows: &[Summary], cleans: &BTreeMap<String, CleanSummary>) -> String {
    let mut m = String::new();
    let mut line = |ok: bool, text: String| {
        let _ = writeln!(m, "- {} {text}", if ok { "met:" } else { "MISSED:" });
    };
    let (Some(clean), Some(fedavg)) = (cleans.get("fedmesh"), cleans.get("fedavg (none)")) else {
        return "(the matrix did not run the `fedmesh` defence)\n".into();
    };
    line(
        clean.honest_evicted.is_empty(),
        format!(
            "clean run: honest members evicted {:?}",
            clean.honest_evicted
        ),
    );
    let gap = (clean.final_accuracy - fedavg.final_accuracy) * 100.0;
    line(
        gap.abs() <= 1.0,
        format!("clean accuracy within 1 point of FedAvg: {gap:+.2} points"),
    );
    let ours = |a: &str| {
        rows.iter().find(|s| {
            s.attack == a
                && s.defence == "fedmesh"
                && s.group_size.is_none()
                && (s.fraction - 0.2).abs() < 1e-9
        })
    };
    for a in NAIVE {
        if let Some(s) = ours(a) {
            let d = (s.final_accuracy - s.clean_accuracy) * 100.0;
            line(
                d >= -2.0,
                format!("{a}: final accuracy ≥ clean − 2: {d:+.2} points"),
            );
            line(
                s.rounds_to_evict_all.is_some_and(|r| r <= 10),
                format!(
                    "{a}: every attacker evicted within 10 rounds: {}/{} by round {}",
                    s.evicted_attackers,
                    s.attackers.len(),
                    opt(s.rounds_to_evict_all)
                ),
            );
            line(
                s.min_tpr.is_some_and(|t| t >= 0.95) && s.max_fpr <= 0.05,
                format!(
                    "{a}: detection after round 3 TPR ≥ 0.95 and FPR ≤ 0.05: min TPR {}, max FPR {:.3}",
                    opt(s.min_tpr.map(|t| format!("{t:.3}"))),
                    s.max_fpr
                ),
            );
        }
    }
    for a in ["alie", "ipm"] {
        if let Some(s) = ours(a) {
            let d = (s.final_accuracy - s.clean_accuracy) * 100.0;
            line(
                d >= -5.0,
                format!("{a}: final accuracy ≥ clean − 5: {d:+.2} points"),
            );
        }
    }
    if let Some(s) = ours("backdoor") {
        let asr = s.attack_success.unwrap_or(1.0) * 100.0;
        line(
            asr <= 5.0,
            format!("backdoor: attack success ≤ 5 %: {asr:.2} %"),
        );
    }
    m
}

#[cfg(test)]
mod tests;
