//! `fedmesh drill sybil`: sybil drills in one process, on the poisoning drill's simulator
//! ([`super::sim`]: the real training, robust rule, scores and signed votes).
//!
//! - `clones`: `k` admitted colluding identities (2, 5 and 9 by default) next to `--members`
//!   honest ones (FoolsGold's setup: a fixed honest population plus k sybils). The clones replay
//!   one shard with every 1 relabelled 7 (label flip, source 1, target 7), each identity training
//!   on it with its own seed, so their updates are nearly alike: the clone-similarity feature of
//!   `robust::score` is what flags them, and the report names the feature that flagged each.
//! - `single`: one admitted attacker flips 1 → 7 on its own shard.
//! - `vote-stuffing`: colluding members sign a vote against one honest member every round,
//!   through the same `votes::Tally` as every other vote: with a third minus one of the members,
//!   with the largest coalition that still falls short of the quorum, and with exactly the quorum
//!   (the trust assumption's boundary: the last run does evict the honest member).
//! - `majority`: 90 % of the identities that ask to join are sybils; the real admission protocol
//!   decides who gets in (see [`majority`]), then the admitted network trains next to a clean run.
//!
//! Attack success is the share of the test set's 1s that the global model classifies as 7.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;

use fedmesh_protocol::genesis::RobustSpec;
use fedmesh_protocol::votes;

use super::sim::{self, CloneData, Run, RunSpec, Stuffing, World};
use super::{accuracy_svg, detection_svg, opt, pct, recommended, svg, write, Poisoning};
use crate::attack;

/// A scenario of `fedmesh drill sybil --scenario`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Clones,
    Single,
    VoteStuffing,
    Majority,
    /// clones, single, vote-stuffing and majority, with one summary table.
    All,
}

impl std::str::FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Scenario> {
        Ok(match s.replace('_', "-").as_str() {
            "clones" => Scenario::Clones,
            "single" => Scenario::Single,
            "vote-stuffing" => Scenario::VoteStuffing,
            "majority" => Scenario::Majority,
            "all" => Scenario::All,
            "flood" => anyhow::bail!(
                "--scenario flood runs against a live testnet: testnet/drill.sh sybil --scenario flood"
            ),
            other => anyhow::bail!(
                "--scenario {other:?} is not one of: clones, single, vote-stuffing, majority, all"
            ),
        })
    }
}

/// The sybil drill's flags, as parsed.
#[derive(Debug, Clone)]
pub struct Sybil {
    pub scenario: Scenario,
    /// Honest members (clones and the single attacker come on top; vote stuffers are among them).
    pub members: u32,
    /// Clone counts of the `clones` scenario.
    pub clones: Vec<u32>,
    /// What clones (and the single attacker) train on.
    pub clone_data: CloneData,
    pub rounds: u64,
    pub non_iid: Option<f64>,
    pub seed: u64,
    pub out: PathBuf,
    pub data: PathBuf,
    pub threads: usize,
}

/// The attack of the clones and the single attacker: label flip 1 → 7.
pub fn flip_1_to_7() -> attack::Config {
    attack::Config {
        kind: attack::Kind::LabelFlip,
        source: Some(1),
        target: 7,
        ..attack::Config::default()
    }
}

/// Outcome of one case (one clone count, the single attacker, one coalition size).
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub scenario: &'static str,
    pub name: String,
    /// Members at the start (honest + attackers).
    pub members: usize,
    pub attackers: Vec<u32>,
    pub final_accuracy: f32,
    /// The clean run, same defence: the honest members alone (clones, single), or the same members
    /// without stuffed votes (vote stuffing).
    pub clean_accuracy: f32,
    /// Final attack success (share of test 1s classified 7), defence `fedmesh`.
    pub attack_success: Option<f32>,
    /// Highest attack success of any round.
    pub peak_attack_success: Option<f32>,
    /// The same attack against plain FedAvg without votes.
    pub fedavg_attack_success: Option<f32>,
    pub evicted_attackers: usize,
    /// Round in which the last attacker was evicted.
    pub rounds_to_evict_all: Option<u64>,
    /// Per evicted attacker: the score feature that flagged it most often.
    pub caught_by: Vec<(u32, Option<&'static str>)>,
    /// Per evicted attacker: rounds in which the clone-similarity deviation alone was over the
    /// score threshold, and rounds it was scored in.
    pub similarity_rounds: Vec<(u32, u64, u64)>,
    pub honest_evicted: Vec<u32>,
    /// Vote stuffing: the honest member the colluders vote against, and the votes needed.
    pub stuffing_target: Option<u32>,
    pub votes_needed: Option<usize>,
    /// What the case had to show, and whether it did.
    pub expectation: String,
    pub met: bool,
    pub seconds: f64,
    /// `majority`: what admission let in and refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<majority::AdmissionSummary>,
    /// `majority`: an open network that admits every sybil, for contrast (defence `fedmesh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_accuracy: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_attack_success: Option<f32>,
}

#[derive(Serialize)]
struct CaseReport<'a> {
    case: &'a Case,
    attacked: &'a Run,
    clean: &'a Run,
    fedavg_attacked: Option<&'a Run>,
}

/// Identities that ask to join in `majority` (one honest joiner per nine sybils).
pub const MAJORITY_JOINERS: u32 = 20;

/// Run the drill.
pub fn sybil(s: &Sybil) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.members >= 4,
        "--members: at least 4 (scores compare a member with the others)"
    );
    anyhow::ensure!(s.rounds >= 1, "--rounds: at least 1");
    anyhow::ensure!(
        !s.clones.is_empty() && s.clones.iter().all(|&k| k >= 1),
        "--clones: one or more clone counts, each at least 1"
    );
    if let Some(a) = s.non_iid {
        anyhow::ensure!(a > 0.0 && a.is_finite(), "--non-iid {a}: alpha must be > 0");
    }
    let threads = if s.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        s.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the drill's thread pool")?;
    std::fs::create_dir_all(&s.out)
        .with_context(|| format!("cannot create {}", s.out.display()))?;
    let started = std::time::Instant::now();
    let mut cases = Vec::new();
    let mut flips = Vec::new();
    pool.install(|| -> anyhow::Result<()> {
        if matches!(s.scenario, Scenario::Clones | Scenario::All) {
            for &k in &s.clones {
                let (case, run) = attack_case(s, "clones", k)?;
                flips.push((case.name.clone(), run));
                cases.push(case);
            }
        }
        if matches!(s.scenario, Scenario::Single | Scenario::All) {
            let (case, run) = attack_case(s, "single", 1)?;
            flips.push((case.name.clone(), run));
            cases.push(case);
        }
        if matches!(s.scenario, Scenario::VoteStuffing | Scenario::All) {
            cases.extend(stuffing_cases(s)?);
        }
        if matches!(s.scenario, Scenario::Majority | Scenario::All) {
            cases.push(majority::majority_case(s, MAJORITY_JOINERS)?);
        }
        Ok(())
    })?;
    if !flips.is_empty() {
        write_success_chart(s, &flips)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let md = summary_markdown(s, &cases, seconds);
    write(&s.out.join("report.md"), &md)?;
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "scenario": scenario_name(s.scenario),
        "honest_members": s.members,
        "rounds": s.rounds,
        "non_iid_alpha": s.non_iid,
        "seed": s.seed,
        "seconds": seconds,
        "cases": &cases,
    }))?;
    write(&s.out.join("report.json"), &json)?;
    if s.scenario == Scenario::All {
        write(&s.out.join("matrix.md"), &md)?;
        write(&s.out.join("matrix.json"), &json)?;
    }
    let missed: Vec<&str> = cases
        .iter()
        .filter(|c| !c.met)
        .map(|c| c.name.as_str())
        .collect();
    eprintln!(
        "sybil drill done in {seconds:.0} s; {} of {} cases as required{}; report in {}",
        cases.len() - missed.len(),
        cases.len(),
        if missed.is_empty() {
            String::new()
        } else {
            format!(" (missed: {})", missed.join(", "))
        },
        s.out.join("report.md").display()
    );
    Ok(())
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Clones => "clones",
        Scenario::Single => "single",
        Scenario::VoteStuffing => "vote-stuffing",
        Scenario::Majority => "majority",
        Scenario::All => "all",
    }
}

fn world(s: &Sybil, members: u32) -> anyhow::Result<World> {
    super::world(members, s.non_iid, s.seed, &s.data, 0)
        .with_context(|| format!("loading {} for {members} members", s.data.display()))
}

/// An attacked run of `s.rounds` rounds with the drill's seed; callers override the rest.
fn spec<'a>(
    s: &Sybil,
    robust: &'a RobustSpec,
    attack: &'a attack::Config,
    attackers: &'a [u32],
) -> RunSpec<'a> {
    RunSpec {
        robust,
        attack,
        clean: false,
        attackers,
        rounds: s.rounds,
        seed: s.seed,
        clones: None,
        stuffing: None,
        groups: None,
    }
}

/// `clones` with `k` clones, or `single` (`k` = 1): `--members` honest members plus `k`
/// attackers flipping 1 → 7; three runs: clean and attacked under `fedmesh`, attacked under plain
/// FedAvg.
fn attack_case(s: &Sybil, scenario: &'static str, k: u32) -> anyhow::Result<(Case, Run)> {
    let n = s.members + k;
    let name = if scenario == "clones" {
        format!("clones-{k}")
    } else {
        "single".to_string()
    };
    let world = world(s, n)?;
    let attack = flip_1_to_7();
    let robust = recommended();
    let attackers: Vec<u32> = (s.members..n).collect();
    // The single attacker is a clone set of one: it trains on its own 1s, labelled 7.
    let clones = scenario == "clones";
    let data = Some(s.clone_data);
    let t = std::time::Instant::now();
    // The clean run is the honest members alone, on the same shards: what they reach without
    // the sybils (whose shards would otherwise count as honest data in it).
    let honest_world = first_members(&world, s.members as usize);
    eprintln!(
        "[{name}] clean run, the {} honest members alone, defence fedmesh",
        s.members
    );
    let clean = sim::run(
        &honest_world,
        &RunSpec {
            clean: true,
            clones: data,
            ..spec(s, &robust, &attack, &[])
        },
    )?;
    eprintln!("[{name}] attacked, defence fedmesh");
    let attacked = sim::run(
        &world,
        &RunSpec {
            clones: data,
            ..spec(s, &robust, &attack, &attackers)
        },
    )?;
    eprintln!("[{name}] attacked, plain FedAvg without votes");
    let plain = RobustSpec::default();
    let fedavg = sim::run(
        &world,
        &RunSpec {
            clones: data,
            ..spec(s, &plain, &attack, &attackers)
        },
    )?;
    let evicted: Vec<Option<u64>> = attackers.iter().map(|m| attacked.evicted_in(*m)).collect();
    let caught_by: Vec<(u32, Option<&'static str>)> = attacked
        .evictions
        .iter()
        .filter(|e| e.attacker)
        .map(|e| (e.member, e.caught_by))
        .collect();
    let similarity_rounds: Vec<(u32, u64, u64)> = attacked
        .evictions
        .iter()
        .filter(|e| e.attacker)
        .map(|e| (e.member, e.over_threshold[2], e.scored_rounds))
        .collect();
    let asr = attacked.final_attack_success();
    let gap = (attacked.final_accuracy() - clean.final_accuracy()) * 100.0;
    let (met, expectation) = if clones {
        // The similarity score alone would make every clone a suspect: its deviation was over
        // the threshold in at least `patience` of the rounds before its eviction.
        let by_similarity = similarity_rounds.len() == attackers.len()
            && similarity_rounds
                .iter()
                .all(|&(_, sim, scored)| sim >= robust.patience.min(scored).max(1));
        let fewest = similarity_rounds.iter().map(|&(_, sim, _)| sim).min();
        (
            asr.is_some_and(|a| a <= 0.01) && gap >= -1.0 && by_similarity,
            format!(
                "attack success ≤ 1 % ({} %), accuracy within 1 point of clean ({gap:+.2}), \
                 every clone evicted with the clone-similarity deviation alone over the \
                 threshold in ≥ {} rounds: {} (fewest such rounds of a clone: {})",
                opt(asr.map(pct)),
                robust.patience,
                if by_similarity { "yes" } else { "no" },
                opt(fewest)
            ),
        )
    } else {
        (
            asr.is_some_and(|a| a <= 0.10),
            format!("attack success ≤ 10 % ({} %)", opt(asr.map(pct))),
        )
    };
    let case = Case {
        scenario,
        name: name.clone(),
        members: n as usize,
        attackers: attackers.clone(),
        final_accuracy: attacked.final_accuracy(),
        clean_accuracy: clean.final_accuracy(),
        attack_success: asr,
        peak_attack_success: attacked
            .rounds
            .iter()
            .filter_map(|r| r.attack_success)
            .reduce(f32::max),
        fedavg_attack_success: fedavg.final_attack_success(),
        evicted_attackers: evicted.iter().flatten().count(),
        rounds_to_evict_all: evicted
            .iter()
            .copied()
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().max()),
        caught_by,
        similarity_rounds,
        honest_evicted: attacked.honest_evicted(),
        stuffing_target: None,
        votes_needed: None,
        expectation,
        met,
        seconds: t.elapsed().as_secs_f64(),
        admission: None,
        open_accuracy: None,
        open_attack_success: None,
    };
    eprintln!(
        "[{name}] attack success {} % (FedAvg {} %), accuracy {} % (clean {} %), evicted {}/{} by round {}",
        opt(case.attack_success.map(pct)),
        opt(case.fedavg_attack_success.map(pct)),
        pct(case.final_accuracy),
        pct(case.clean_accuracy),
        case.evicted_attackers,
        attackers.len(),
        opt(case.rounds_to_evict_all)
    );
    write_case(s, &case, &attacked, &clean, Some(&fedavg), "label-flip 1→7")?;
    Ok((case, attacked))
}

/// The world of the first `k` members only (same shards, keys, model and test set).
fn first_members(world: &World, k: usize) -> World {
    World {
        layout: world.layout.clone(),
        init: world.init.clone(),
        shards: world.shards[..k.min(world.shards.len())].to_vec(),
        test: world.test.clone(),
        reference: world.reference.clone(),
        train: world.train.clone(),
        keys: world.keys[..k.min(world.keys.len())].to_vec(),
        network: world.network,
    }
}

/// The coalition sizes of `vote-stuffing` for `n` members and quorum `q`: a third minus one,
/// the largest coalition short of the quorum, and exactly the quorum.
pub fn coalitions(n: u32, q: f64) -> Vec<(&'static str, u32)> {
    let needed = votes::needed(n as usize, q) as u32;
    let mut out = vec![
        ("third-minus-one", n.div_ceil(3).saturating_sub(1).max(1)),
        ("short-of-quorum", needed.saturating_sub(1).max(1)),
        ("quorum", needed),
    ];
    out.dedup_by_key(|c| c.1);
    out
}

/// `vote-stuffing`: `--members` members, colluders among them vote against one honest member
/// every round; one run per coalition size and a clean run for the accuracy.
fn stuffing_cases(s: &Sybil) -> anyhow::Result<Vec<Case>> {
    let n = s.members;
    let world = world(s, n)?;
    let robust = recommended();
    let none = attack::Config::default();
    eprintln!("[vote-stuffing] clean run, {n} members, defence fedmesh");
    let clean = sim::run(
        &world,
        &RunSpec {
            clean: true,
            ..spec(s, &robust, &none, &[])
        },
    )?;
    let needed = votes::needed(n as usize, robust.quorum);
    let target = n - 1;
    let mut cases = Vec::new();
    for (label, c) in coalitions(n, robust.quorum) {
        // The colluders can never include their target.
        let c = c.min(n - 1);
        let name = format!("vote-stuffing-{c}");
        let voters: Vec<u32> = (0..c).collect();
        let stuffing = Stuffing { voters, target };
        let t = std::time::Instant::now();
        eprintln!("[{name}] {c} colluders ({label}) vote against member {target}; {needed} of {n} votes evict");
        let attacked = sim::run(
            &world,
            &RunSpec {
                stuffing: Some(&stuffing),
                ..spec(s, &robust, &none, &stuffing.voters)
            },
        )?;
        let honest_evicted: Vec<u32> = attacked
            .evictions
            .iter()
            .map(|e| e.member)
            .filter(|m| !stuffing.voters.contains(m))
            .collect();
        let reaches = c as usize >= needed;
        let target_out = attacked.evicted_in(target);
        let (met, expectation) = if reaches {
            (
                target_out.is_some(),
                format!(
                    "{c} ≥ {needed} colluders reach the quorum: member {target} is evicted (round {}) — \
                     outside the trust assumption (fewer than 1/3 colluders)",
                    opt(target_out)
                ),
            )
        } else {
            (
                honest_evicted.is_empty(),
                format!(
                    "{c} < {needed} colluders ({label}): no honest member evicted ({honest_evicted:?})"
                ),
            )
        };
        let case = Case {
            scenario: "vote-stuffing",
            name: name.clone(),
            members: n as usize,
            attackers: stuffing.voters.clone(),
            final_accuracy: attacked.final_accuracy(),
            clean_accuracy: clean.final_accuracy(),
            attack_success: None,
            peak_attack_success: None,
            fedavg_attack_success: None,
            evicted_attackers: 0,
            rounds_to_evict_all: None,
            caught_by: Vec::new(),
            similarity_rounds: Vec::new(),
            honest_evicted,
            stuffing_target: Some(target),
            votes_needed: Some(needed),
            expectation,
            met,
            seconds: t.elapsed().as_secs_f64(),
            admission: None,
            open_accuracy: None,
            open_attack_success: None,
        };
        eprintln!(
            "[{name}] honest evicted {:?}; {}",
            case.honest_evicted,
            if met {
                "as required"
            } else {
                "NOT as required"
            }
        );
        write_case(s, &case, &attacked, &clean, None, "vote stuffing")?;
        cases.push(case);
    }
    Ok(cases)
}

/// DIR/runs/<case>/{report.md, report.json, accuracy.svg, detection.svg}.
fn write_case(
    s: &Sybil,
    case: &Case,
    attacked: &Run,
    clean: &Run,
    fedavg: Option<&Run>,
    attack: &str,
) -> anyhow::Result<()> {
    let dir = s.out.join("runs").join(&case.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The plots take the poisoning drill's flags: name the case there.
    let p = Poisoning {
        attack: format!("{} ({attack})", case.name),
        fraction: case.attackers.len() as f64 / case.members as f64,
        defence: "fedmesh".into(),
        members: case.members as u32,
        rounds: s.rounds,
        non_iid: s.non_iid,
        seed: s.seed,
        out: dir.clone(),
        matrix: false,
        attacks: Vec::new(),
        defences: Vec::new(),
        fractions: Vec::new(),
        data: s.data.clone(),
        threads: s.threads,
        mode: "plain".into(),
        modes: Vec::new(),
        group_size: None,
        dropout: 0.0,
        reference_rows: Some(0),
    };
    write(
        &dir.join("accuracy.svg"),
        &accuracy_svg(&p, attacked, clean, None),
    )?;
    write(&dir.join("detection.svg"), &detection_svg(&p, attacked))?;
    write(
        &dir.join("report.json"),
        &serde_json::to_string_pretty(&CaseReport {
            case,
            attacked,
            clean,
            fedavg_attacked: fedavg,
        })?,
    )?;
    write(
        &dir.join("report.md"),
        &case_markdown(s, case, attacked, clean, fedavg),
    )?;
    Ok(())
}

fn command_line(s: &Sybil) -> String {
    let mut c = format!(
        "fedmesh drill sybil --scenario {} --members {} --rounds {} --seed {}",
        scenario_name(s.scenario),
        s.members,
        s.rounds,
        s.seed
    );
    if s.clone_data == CloneData::Shard {
        c.push_str(" --clone-data shard");
    }
    if matches!(s.scenario, Scenario::Clones | Scenario::All) {
        let ks: Vec<String> = s.clones.iter().map(|k| k.to_string()).collect();
        let _ = write!(c, " --clones {}", ks.join(","));
    }
    if let Some(a) = s.non_iid {
        let _ = write!(c, " --non-iid {a}");
    }
    c
}

fn case_markdown(s: &Sybil, c: &Case, run: &Run, clean: &Run, fedavg: Option<&Run>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Sybil drill: {}\n", c.name);
    let _ = writeln!(
        m,
        "{} members at the start (attackers / colluders: {:?}), {} rounds, defence fedmesh \
         (winsorized mean + votes), seed {}. Part of:\n\n```\n{}\n```\n",
        c.members,
        c.attackers,
        s.rounds,
        s.seed,
        command_line(s)
    );
    let _ = writeln!(
        m,
        "{}: {}\n",
        if c.met {
            "As required"
        } else {
            "NOT as required"
        },
        c.expectation
    );
    let _ = writeln!(
        m,
        "| | attacked | clean |{}\n|---|---|---|{}",
        if fedavg.is_some() {
            " attacked, plain FedAvg |"
        } else {
            ""
        },
        if fedavg.is_some() { "---|" } else { "" }
    );
    let f = |v: String| {
        if fedavg.is_some() {
            format!(" {v} |")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        m,
        "| final accuracy (%) | {} | {} |{}",
        pct(run.final_accuracy()),
        pct(clean.final_accuracy()),
        f(fedavg.map(|r| pct(r.final_accuracy())).unwrap_or_default())
    );
    let _ = writeln!(
        m,
        "| attack success (%) | {} | {} |{}",
        opt(run.final_attack_success().map(pct)),
        opt(clean.final_attack_success().map(pct)),
        f(opt(fedavg.and_then(|r| r.final_attack_success()).map(pct)))
    );
    let _ = writeln!(
        m,
        "| evicted | {:?} | {:?} |{}\n",
        run.evictions.iter().map(|e| e.member).collect::<Vec<_>>(),
        clean.evictions.iter().map(|e| e.member).collect::<Vec<_>>(),
        f(format!(
            "{:?}",
            fedavg
                .map(|r| r.evictions.iter().map(|e| e.member).collect::<Vec<_>>())
                .unwrap_or_default()
        ))
    );
    let _ = writeln!(
        m,
        "| evicted member | round | votes / needed | attacker | largest deviation | rounds over threshold: cosine / norm / similarity (of scored) |\n|---|---|---|---|---|---|"
    );
    for e in &run.evictions {
        let _ = writeln!(
            m,
            "| {} | {} | {}/{} | {} | {} | {} / {} / {} (of {}) |",
            e.member,
            e.round,
            e.votes,
            e.needed,
            e.attacker,
            e.caught_by.unwrap_or("– (votes only)"),
            e.over_threshold[0],
            e.over_threshold[1],
            e.over_threshold[2],
            e.scored_rounds
        );
    }
    let _ = writeln!(
        m,
        "\n![accuracy](accuracy.svg)\n\n![detection](detection.svg)\n\n## Per round\n"
    );
    let _ = writeln!(
        m,
        "| round | accuracy | clean | attack success | active | TPR | FPR | evicted | max honest score | min attacker score |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (r, cl) in run.rounds.iter().zip(&clean.rounds) {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:?} | {:.2} | {} |",
            r.round,
            pct(r.accuracy),
            pct(cl.accuracy),
            opt(r.attack_success.map(pct)),
            r.active,
            opt(r.tpr.map(|t| format!("{t:.3}"))),
            r.fpr,
            r.evicted,
            r.max_honest_score,
            opt(r.min_attacker_score.map(|v| format!("{v:.2}")))
        );
    }
    m
}

fn summary_markdown(s: &Sybil, cases: &[Case], seconds: f64) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Sybil drill: {}\n", scenario_name(s.scenario));
    let _ = writeln!(
        m,
        "{} honest members (clones and the single attacker come on top; vote stuffers are among \
         them), {} rounds, MNIST, {}, seed {}, defence fedmesh (winsorized mean β 0.2 + votes, \
         quorum 2/3); {seconds:.0} s wall time. Command:\n\n```\n{}\n```\n",
        s.members,
        s.rounds,
        match s.non_iid {
            Some(a) => format!("Dirichlet α = {a} non-IID"),
            None => "IID".into(),
        },
        s.seed,
        command_line(s)
    );
    let attacks: Vec<&Case> = cases
        .iter()
        .filter(|c| c.scenario != "vote-stuffing" && c.scenario != "majority")
        .collect();
    if !attacks.is_empty() {
        let _ =
            writeln!(
            m,
            "## Label flip 1 → 7\n\nAttack success: share of the test set's 1s classified as 7 \
             (final round; peak = highest of any round). {}\n",
            match s.clone_data {
                CloneData::Focused => "Clones (and the single attacker) train only on the 1s of \
                    their pooled shards, labelled 7 and repeated up to one shard's size \
                    (FoolsGold's sybils hold only the mislabelled class); each clone with its own \
                    training seed.",
                CloneData::Shard => "Clones (and the single attacker) replay the first one's \
                    whole shard with its 1s labelled 7 (a tenth of the rows); each clone with its \
                    own training seed.",
            }
        );
        let _ = writeln!(
            m,
            "| case | members | attack success (%) | peak (%) | plain FedAvg (%) | accuracy (%) | clean (%) | Δ clean | evicted | by round | largest deviation | similarity alone over threshold (fewest rounds of an attacker) | honest evicted | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for c in attacks {
            let mut by: Vec<&str> = c.caught_by.iter().map(|(_, f)| f.unwrap_or("–")).collect();
            by.dedup();
            let _ =
                writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {:+.2} | {}/{} | {} | {} | {} | {:?} | {} |",
                c.name,
                c.members,
                opt(c.attack_success.map(pct)),
                opt(c.peak_attack_success.map(pct)),
                opt(c.fedavg_attack_success.map(pct)),
                pct(c.final_accuracy),
                pct(c.clean_accuracy),
                (c.final_accuracy - c.clean_accuracy) * 100.0,
                c.evicted_attackers,
                c.attackers.len(),
                opt(c.rounds_to_evict_all),
                if by.is_empty() { "–".into() } else { by.join(", ") },
                opt(c
                    .similarity_rounds
                    .iter()
                    .map(|&(_, sim, scored)| (sim, scored))
                    .min()
                    .map(|(sim, scored)| format!("{sim} of {scored}"))),
                c.honest_evicted,
                if c.met { "met" } else { "MISSED" }
            );
        }
    }
    let stuffing: Vec<&Case> = cases
        .iter()
        .filter(|c| c.scenario == "vote-stuffing")
        .collect();
    if !stuffing.is_empty() {
        let _ = writeln!(
            m,
            "\n## Vote stuffing\n\nColluders sign a vote against one honest member every round \
             (re-voting whenever a vote expires), through the same tally as every vote. Trust \
             assumption: fewer than 1/3 of the members collude (then honest members can always \
             form the 2/3 quorum and colluders never can).\n"
        );
        let _ = writeln!(
            m,
            "| case | members | colluders | votes needed | target | honest evicted | accuracy (%) | clean (%) | as required |\n|---|---|---|---|---|---|---|---|---|"
        );
        for c in stuffing {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {:?} | {} | {} | {} |",
                c.name,
                c.members,
                c.attackers.len(),
                opt(c.votes_needed),
                opt(c.stuffing_target),
                c.honest_evicted,
                pct(c.final_accuracy),
                pct(c.clean_accuracy),
                if c.met { "yes" } else { "NO" }
            );
        }
    }
    let majority: Vec<&Case> = cases.iter().filter(|c| c.scenario == "majority").collect();
    if !majority.is_empty() {
        let _ = writeln!(
            m,
            "\n## Majority: 90 % of the joiners are sybils\n\nEvery identity sends a signed join \
             request through the real admission protocol. The members' operators approve the honest \
             joiners; one compromised member's operator approves every sybil too; the sybils vote \
             for each other, as themselves and forging members' indices. After admission the \
             network trains next to the clean run (members and honest joiners); for contrast, an \
             open network that admits every identity, its sybils flipping labels 1 → 7.\n"
        );
        let _ = writeln!(
            m,
            "| case | members after admission | joiners | sybils | admitted honest | admitted sybils | best sybil's votes / needed | sybil votes refused (non-member / forged) | accuracy (%) | clean (%) | Δ clean | open network: accuracy (%) | open network: attack success (%) | as required |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for c in majority {
            let Some(a) = &c.admission else { continue };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {:+.2} | {} | {} | {} |",
                c.name,
                c.members,
                a.honest_joiners + a.sybils,
                a.sybils,
                a.admitted_honest.len(),
                a.admitted_sybils.len(),
                a.best_sybil_votes,
                a.votes_needed,
                a.refused_not_member,
                a.refused_forged,
                pct(c.final_accuracy),
                pct(c.clean_accuracy),
                (c.final_accuracy - c.clean_accuracy) * 100.0,
                opt(c.open_accuracy.map(pct)),
                opt(c.open_attack_success.map(pct)),
                if c.met { "yes" } else { "NO" }
            );
        }
    }
    let _ = writeln!(m, "\n## Targets\n");
    for c in cases {
        let _ = writeln!(
            m,
            "- {} {}: {}",
            if c.met { "met:" } else { "MISSED:" },
            c.name,
            c.expectation
        );
    }
    let _ = writeln!(
        m,
        "\nPer case: runs/<case>/report.md with plots (accuracy.svg, detection.svg).\n"
    );
    for c in cases {
        let _ = writeln!(m, "- [{0}](runs/{0}/report.md)", c.name);
    }
    m.push_str(&success_chart_note(cases));
    m
}

fn success_chart_note(cases: &[Case]) -> String {
    if cases.iter().any(|c| c.scenario != "vote-stuffing") {
        "\n![attack success per round](attack_success.svg)\n".into()
    } else {
        String::new()
    }
}

/// DIR/attack_success.svg: attack success per round of every label-flip case.
fn write_success_chart(s: &Sybil, runs: &[(String, Run)]) -> anyhow::Result<()> {
    const COLORS: &[&str] = &[
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let series: Vec<svg::Series> = runs
        .iter()
        .enumerate()
        .map(|(i, (name, r))| svg::Series {
            name,
            color: COLORS[i % COLORS.len()],
            dashed: false,
            points: r
                .rounds
                .iter()
                .filter_map(|x| x.attack_success.map(|a| (x.round as f64, f64::from(a))))
                .collect(),
        })
        .collect();
    write(
        &s.out.join("attack_success.svg"),
        &svg::line_chart(
            "label flip 1→7: attack success, defence fedmesh",
            "round",
            "test 1s classified 7",
            (1.0, s.rounds as f64),
            (0.0, 1.0),
            &series,
        ),
    )
}

mod majority;
#[cfg(test)]
mod tests;
