//! One drill run: many members in this process, the real training code and the real robust rules,
//! scores and votes, round after round.

use std::collections::BTreeSet;

use anyhow::Context as _;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use fedmesh_crypto::{hash::Hasher, identity, Hash};
use fedmesh_protocol::genesis::{RobustSpec, TrainSpec};
use fedmesh_protocol::model::Layout;
use fedmesh_protocol::robust::{self, score, suspicion, Input};
use fedmesh_protocol::votes::{Outcome, SignedVote, Tally, Vote};

use super::groups;
use crate::attack;
use crate::train::{self, Dataset};

/// What every run of a drill shares: the members' data, the model, and their keys.
pub struct World {
    pub layout: Layout,
    pub init: Vec<f32>,
    pub shards: Vec<Dataset>,
    pub test: Dataset,
    /// Group rounds: the public reference rows (genesis `spec.robust.reference_rows`), if any.
    pub reference: Option<robust::reference::Set>,
    pub train: TrainSpec,
    pub keys: Vec<identity::SecretKey>,
    /// Stands in for the genesis hash that votes are bound to.
    pub network: Hash,
}

impl World {
    pub fn members(&self) -> usize {
        self.shards.len()
    }
}

/// One run's settings.
pub struct RunSpec<'a> {
    pub robust: &'a RobustSpec,
    /// The attack of the scenario.
    pub attack: &'a attack::Config,
    /// The clean run: nobody attacks (the attack still says which test rows measure success).
    pub clean: bool,
    /// Attacking members (sorted); in a clean run they are honest but still tracked, so the
    /// clean run's false alarms are counted on the same honest set.
    pub attackers: &'a [u32],
    pub rounds: u64,
    pub seed: u64,
    /// Some: the attackers are clones of one attacker (FoolsGold's sybils): they train on one
    /// shared poisoned set ([`clone_set`]), every one with its own seed, so their updates are
    /// nearly alike.
    pub clones: Option<CloneData>,
    /// Colluding voters (the sybil drill's vote stuffing); None in poisoning drills.
    pub stuffing: Option<&'a Stuffing>,
    /// Some: group-wise rounds ([`super::groups`]): only group sums are revealed, the rule and
    /// scores work on group means, and votes follow group-testing suspicion.
    pub groups: Option<&'a groups::Settings>,
}

/// A group-wise round, as the drill saw it (the members' true roles are known here, not to the
/// members).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupStat {
    /// Contributors of each revealed sum.
    pub revealed: Vec<usize>,
    /// Groups (after settling) that were withheld: too few members finished.
    pub withheld: usize,
    /// Revealed groups holding an active attacker, and of those the flagged ones.
    pub with_attacker: usize,
    pub with_attacker_flagged: usize,
    /// Revealed groups of honest members only, and of those the flagged ones.
    pub clean: usize,
    pub clean_flagged: usize,
    /// Members that dropped out (before or during the protocol).
    pub dropped: usize,
    /// Groups of the draw merged into others because dropouts left them below g.
    pub merged: usize,
}

/// What clones train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneData {
    /// Only the rows a targeted label flip relabels (FoolsGold's sybils hold only the mislabelled
    /// class), pooled from every clone's shard and repeated up to one shard's size.
    Focused,
    /// The first clone's whole shard, poisoned (for 1 → 7: a tenth of its rows relabelled): a
    /// stealthier, weaker attack whose updates look honest except for being alike.
    Shard,
}

/// Vote stuffing: `voters` sign a vote against the honest member `target` every round (a new one
/// as soon as their earlier vote has expired); the votes go through the same [`Tally`] as every
/// other vote. The voters otherwise behave honestly (they train on their own data and vote on
/// suspects like everyone else).
#[derive(Debug, Clone, Serialize)]
pub struct Stuffing {
    pub voters: Vec<u32>,
    pub target: u32,
}

/// Per-round figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundStat {
    pub round: u64,
    pub accuracy: f32,
    pub loss: f32,
    /// Share of triggered / flipped test rows classified as the attacker wants (None without a
    /// targeted attack).
    pub attack_success: Option<f32>,
    /// Members whose updates were aggregated.
    pub active: usize,
    /// The attack was mounted this round (on-off attacks skip rounds).
    pub attacking: bool,
    /// Attackers flagged (EWMA score over the threshold) or already evicted, out of all attackers.
    pub tpr: Option<f64>,
    /// Honest members flagged or evicted, out of all honest members.
    pub fpr: f64,
    /// Members evicted by the votes of this round (out from the next round).
    pub evicted: Vec<u32>,
    /// Highest EWMA score of an honest member this round.
    pub max_honest_score: f64,
    /// Lowest EWMA score of an active attacker this round (None if none is active); in group
    /// rounds, scores are posteriors of "attacker".
    pub min_attacker_score: Option<f64>,
    /// Group rounds: the groups' figures.
    pub groups: Option<GroupStat>,
}

/// An eviction.
#[derive(Debug, Clone, Serialize)]
pub struct Eviction {
    pub member: u32,
    /// The round whose votes reached the quorum.
    pub round: u64,
    pub attacker: bool,
    pub votes: usize,
    pub needed: usize,
    /// The score feature (cosine, norm or similarity) that was the largest deviation in most of
    /// the member's rounds over the score threshold; None if it never was over the threshold.
    pub caught_by: Option<&'static str>,
    /// Rounds in which each feature's deviation alone was over the score threshold: cosine,
    /// norm, similarity.
    pub over_threshold: [u64; 3],
    /// Rounds the member was scored in.
    pub scored_rounds: u64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rounds: Vec<RoundStat>,
    pub evictions: Vec<Eviction>,
    /// Seconds of wall time.
    pub seconds: f64,
}

impl Run {
    pub fn final_accuracy(&self) -> f32 {
        self.rounds.last().map_or(0.0, |r| r.accuracy)
    }

    /// Lowest accuracy of the last `k` rounds.
    pub fn worst_of_last(&self, k: usize) -> f32 {
        self.rounds
            .iter()
            .rev()
            .take(k)
            .map(|r| r.accuracy)
            .fold(f32::INFINITY, f32::min)
    }

    pub fn final_attack_success(&self) -> Option<f32> {
        self.rounds.last().and_then(|r| r.attack_success)
    }

    /// Smallest TPR and largest FPR over the rounds after `skip`.
    pub fn detection_after(&self, skip: u64) -> (Option<f64>, f64) {
        let later = self.rounds.iter().filter(|r| r.round > skip);
        let tpr = later.clone().filter_map(|r| r.tpr).reduce(f64::min);
        let fpr = later.map(|r| r.fpr).fold(0.0, f64::max);
        (tpr, fpr)
    }

    /// Round in which `member` was evicted.
    pub fn evicted_in(&self, member: u32) -> Option<u64> {
        self.evictions
            .iter()
            .find(|e| e.member == member)
            .map(|e| e.round)
    }

    pub fn honest_evicted(&self) -> Vec<u32> {
        self.evictions
            .iter()
            .filter(|e| !e.attacker)
            .map(|e| e.member)
            .collect()
    }
}

/// A seed for one purpose of one member in one round, derived from the drill seed.
pub fn derive(seed: u64, what: &str, round: u64, member: u32) -> u64 {
    let mut h = Hasher::new("fedmesh drill seed v1");
    h.update(&seed.to_le_bytes());
    h.update_field(what.as_bytes());
    h.update(&round.to_le_bytes());
    h.update(&member.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The test rows an attack wants classified its way, labelled with the label it wants; None for
/// untargeted attacks.
fn success_set(attack: &attack::Config, test: &Dataset) -> Option<Dataset> {
    let mut out = Dataset {
        features: test.features,
        classes: test.classes,
        x: Vec::new(),
        y: Vec::new(),
    };
    for (i, &y) in test.y.iter().enumerate() {
        let mut row = test.x[i * test.features..(i + 1) * test.features].to_vec();
        let want = match attack.kind {
            attack::Kind::Backdoor if y != attack.target => {
                attack::stamp(&mut row, attack.trigger);
                attack.target
            }
            attack::Kind::LabelFlip if attack.flip(y, test.classes) != y => {
                attack.flip(y, test.classes)
            }
            _ => continue,
        };
        out.x.extend_from_slice(&row);
        out.y.push(want);
    }
    (!out.is_empty()).then_some(out)
}

/// The one poisoned set clones train on. Focused targeted label flip (a `source` label): only the rows
/// it relabels, from every clone's shard, relabelled and repeated up to the clones' mean shard
/// size (so they take as many steps as an honest member; FoolsGold's sybils hold only the
/// mislabelled class). Otherwise: the first clone's shard, poisoned once. None without
/// attackers or without a row to relabel.
fn clone_set(
    world: &World,
    a: &attack::Config,
    spec: &RunSpec,
    data: CloneData,
) -> Option<Dataset> {
    let first = *spec.attackers.first()?;
    let source = match (a.kind, a.source, data) {
        (attack::Kind::LabelFlip, Some(s), CloneData::Focused) => s,
        _ => {
            let mut rng =
                rand_chacha::ChaCha20Rng::seed_from_u64(derive(spec.seed, "poison", 0, first));
            return Some(a.poison_data(&world.shards[first as usize], &mut rng));
        }
    };
    let f = world.test.features;
    let mut rows = Dataset {
        features: f,
        classes: world.test.classes,
        x: Vec::new(),
        y: Vec::new(),
    };
    let mut size = 0;
    for &m in spec.attackers {
        let shard = world.shards.get(m as usize)?;
        size += shard.len();
        for (i, &y) in shard.y.iter().enumerate() {
            if y == source {
                rows.x.extend_from_slice(&shard.x[i * f..(i + 1) * f]);
                rows.y.push(a.flip(y, shard.classes));
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    let want = (size / spec.attackers.len()).max(rows.len());
    let mut out = Dataset {
        features: f,
        classes: rows.classes,
        x: Vec::with_capacity(want * f),
        y: Vec::with_capacity(want),
    };
    for i in 0..want {
        let j = i % rows.len();
        out.x.extend_from_slice(&rows.x[j * f..(j + 1) * f]);
        out.y.push(rows.y[j]);
    }
    Some(out)
}

/// Run `spec.rounds` rounds.
pub fn run(world: &World, spec: &RunSpec) -> anyhow::Result<Run> {
    let started = std::time::Instant::now();
    let n = world.members();
    let attackers: BTreeSet<u32> = spec.attackers.iter().copied().collect();
    let attack = Some(spec.attack).filter(|a| !spec.clean && !a.is_honest());
    let robust = spec.robust;
    let rule = robust.rule();
    // Poisoned rows are drawn once per attacker, as a real attacker would prepare them.
    let shared = match attack {
        Some(a) if a.poisons_data() => spec.clones.and_then(|c| clone_set(world, a, spec, c)),
        _ => None,
    };
    let poisoned: Vec<Option<Dataset>> = (0..n as u32)
        .map(|m| match attack {
            Some(_) if shared.is_some() && attackers.contains(&m) => shared.clone(),
            Some(a) if a.poisons_data() && attackers.contains(&m) => {
                let mut rng =
                    rand_chacha::ChaCha20Rng::seed_from_u64(derive(spec.seed, "poison", 0, m));
                Some(a.poison_data(&world.shards[m as usize], &mut rng))
            }
            _ => None,
        })
        .collect();
    let target_set = success_set(spec.attack, &world.test);

    let mut global = world.init.clone();
    let mut active: BTreeSet<u32> = (0..n as u32).collect();
    let mut state = robust::State::default();
    let mut history = score::History::default();
    let mut tally = Tally::new(
        world.network,
        world
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, k.public())),
        robust.quorum,
        robust.vote_expiry_rounds,
    );
    let mut evicted: BTreeSet<u32> = BTreeSet::new();
    let model = robust.suspicion_model();
    let mut suspicion = suspicion::Suspicion::default();
    // Group draws chain from the previous round's result, as the node's chain head does.
    let mut head = world.network;
    // Group rounds: what the node's log would hold for the next judgement (see
    // `runtime::secure::judge_means`).
    let mut last_move: Option<Vec<f32>> = None;
    let mut usual = suspicion::Usual::default();
    // Per member: rounds over the threshold in which cosine, norm, similarity was the largest.
    let mut dominant: std::collections::BTreeMap<u32, [u64; 3]> = Default::default();
    // Per member: rounds in which each feature alone was over the threshold, and rounds scored.
    let mut over: std::collections::BTreeMap<u32, ([u64; 3], u64)> = Default::default();
    let stuffing = spec.stuffing.filter(|_| !spec.clean);
    let bad = |m: &u32| (attack.is_some() || stuffing.is_some()) && attackers.contains(m);
    let mut out = Run {
        rounds: Vec::new(),
        evictions: Vec::new(),
        seconds: 0.0,
    };
    for round in 1..=spec.rounds {
        let members: Vec<u32> = active.iter().copied().collect();
        let attacking = attack.is_some_and(|a| a.active_in(round));
        let is_attacker = |m: u32| attacking && attackers.contains(&m);
        // 1. Train, every member in parallel.
        let trained: Vec<(u32, Vec<f32>, u64)> = members
            .par_iter()
            .map(|&m| -> anyhow::Result<(u32, Vec<f32>, u64)> {
                let a = attack.filter(|_| is_attacker(m));
                let data = match (a, &poisoned[m as usize]) {
                    (Some(_), Some(p)) => p,
                    _ => &world.shards[m as usize],
                };
                let weight = world.shards[m as usize].len() as u64;
                if a.is_some_and(|a| !a.trains()) {
                    return Ok((m, vec![0.0; global.len()], weight));
                }
                let t = train::train(
                    &world.layout,
                    &global,
                    data,
                    &world.train,
                    derive(spec.seed, "train", round, m),
                )
                .with_context(|| format!("member {m}, round {round}"))?;
                let delta = t.params.iter().zip(&global).map(|(a, b)| a - b).collect();
                Ok((m, delta, weight))
            })
            .collect::<anyhow::Result<_>>()?;
        // 2. Attackers replace their updates (omniscient ones see the honest updates).
        let mut updates = trained;
        if let Some(a) = attack.filter(|_| attacking) {
            let honest: Vec<Vec<f32>> = updates
                .iter()
                .filter(|(m, _, _)| !attackers.contains(m))
                .map(|(_, d, _)| d.clone())
                .collect();
            let honest_refs: Vec<&[f32]> = honest.iter().map(|h| &h[..]).collect();
            let f = members.iter().filter(|m| attackers.contains(m)).count();
            // Omniscient attackers collude: one vector, computed once.
            let mut shared: Option<Vec<f32>> = None;
            for (m, delta, _) in updates.iter_mut() {
                if !attackers.contains(m) || matches!(a.kind, attack::Kind::LabelFlip) {
                    continue;
                }
                if a.omniscient() {
                    if shared.is_none() {
                        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(derive(
                            spec.seed, "attack", round, 0,
                        ));
                        shared =
                            Some(a.poison_update(delta, &honest_refs, members.len(), f, &mut rng));
                    }
                    *delta = shared.clone().expect("set above");
                } else {
                    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(derive(
                        spec.seed, "attack", round, *m,
                    ));
                    *delta = a.poison_update(delta, &honest_refs, members.len(), f, &mut rng);
                }
            }
        }
        // 3. Aggregate with the robust rule (on individual updates, or on group means) and apply.
        let mut group_stat = None;
        let (update, scores) = match spec.groups {
            None => {
                let inputs: Vec<Input> = updates
                    .iter()
                    .map(|(m, d, w)| Input::new(*m, d, *w))
                    .collect();
                let agg = robust::aggregate(&rule, &inputs, &mut state)
                    .with_context(|| format!("round {round}: {}", rule.name()))?;
                // 4. Score everyone against the aggregate.
                let scores = score::round_scores(&inputs, &agg.update);
                history.record(round, &scores, robust.score_decay, robust.score_threshold);
                (agg.update, scores)
            }
            Some(settings) => {
                let by_member: std::collections::BTreeMap<u32, (Vec<f32>, u64)> = updates
                    .iter()
                    .map(|(m, d, w)| (*m, (d.clone(), *w)))
                    .collect();
                let revealed =
                    groups::reveal(settings, world, spec.seed, &head, round, &by_member)?;
                let inputs: Vec<Input> = revealed
                    .sums
                    .iter()
                    .enumerate()
                    .map(|(j, g)| Input::new(j as u32, &g.mean, g.weight))
                    .collect();
                anyhow::ensure!(
                    !inputs.is_empty(),
                    "round {round}: no group sum could be revealed"
                );
                // The node's judgement: against what the log holds (the last update that moved
                // the model, as a difference of models, and the last record's usual values).
                let public = world.reference.as_ref().map(|set| suspicion::Reference {
                    layout: &world.layout,
                    model: &global,
                    set,
                });
                let (judged, after) = crate::runtime::secure::judge_means(
                    &rule,
                    robust.score_threshold,
                    &inputs,
                    &suspicion::Baseline::from_log(last_move.clone(), usual),
                    public.as_ref(),
                )
                .map_err(|e| anyhow::anyhow!("round {round}: judging group means: {e}"))?;
                usual = after.usual();
                let contributors: Vec<Vec<u32>> = revealed
                    .sums
                    .iter()
                    .map(|g| g.contributors.clone())
                    .collect();
                // 4. Group testing: every contributor of a flagged group gains suspicion (part of
                // it for a group just under the threshold: `suspicion::SOFT_FLAG_FROM`).
                if judged.decided {
                    let scores: Vec<f64> = judged.scores.iter().map(|s| s.score).collect();
                    suspicion.observe_scores(
                        &model,
                        round,
                        &contributors,
                        &scores,
                        robust.score_threshold,
                    );
                }
                let mut stat = GroupStat {
                    revealed: contributors.iter().map(Vec::len).collect(),
                    withheld: revealed.withheld.len(),
                    dropped: revealed.dropped_before.len() + revealed.dropped_during.len(),
                    merged: revealed
                        .drawn
                        .len()
                        .saturating_sub(revealed.sums.len() + revealed.withheld.len()),
                    ..GroupStat::default()
                };
                for (group, &flag) in contributors.iter().zip(&judged.flagged) {
                    if group.iter().any(|&m| is_attacker(m)) {
                        stat.with_attacker += 1;
                        stat.with_attacker_flagged += usize::from(flag);
                    } else {
                        stat.clean += 1;
                        stat.clean_flagged += usize::from(flag);
                    }
                }
                group_stat = Some(stat);
                if std::env::var_os("FEDMESH_DRILL_TRACE").is_some() {
                    if let Some(set) = &world.reference {
                        let means: Vec<&[f32]> = inputs.iter().map(|i| i.values).collect();
                        let eff = robust::reference::effects(&world.layout, &global, &means, set)?;
                        let before = robust::reference::loss(&world.layout, &global, set)?;
                        for (group, e) in contributors.iter().zip(&eff) {
                            let bad = group.iter().filter(|&&m| is_attacker(m)).count();
                            let (spread, scale, best) = judged
                                .reference
                                .as_ref()
                                .map_or((0.0, 0.0, 0.0), |r| (r.spread, r.scale, r.best));
                            eprintln!("reftrace round {round} attackers {bad} before {before:.5} effect {e:.6} spread {spread:.4} scale {scale:.5} bar {best:.5}");
                        }
                    }
                    // For offline analysis of the reference signal: with FEDMESH_DRILL_DUMP=FILE,
                    // append the reference rows' labels and the logits of the model before the
                    // round and of the model plus each group mean (with its attacker count).
                    if let (Some(set), Some(path)) =
                        (&world.reference, std::env::var_os("FEDMESH_DRILL_DUMP"))
                    {
                        use std::io::Write;
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)?;
                        let fmt = |p: &[f32]| -> anyhow::Result<String> {
                            let z = robust::reference::logits(&world.layout, p, set)?;
                            Ok(z.iter()
                                .flatten()
                                .map(|v| format!("{v:.5}"))
                                .collect::<Vec<_>>()
                                .join(" "))
                        };
                        writeln!(
                            f,
                            "labels {}",
                            set.labels()
                                .iter()
                                .map(|v| v.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        )?;
                        writeln!(f, "before {round} {}", fmt(&global)?)?;
                        for (group, i) in contributors.iter().zip(&inputs) {
                            let bad = group.iter().filter(|&&m| is_attacker(m)).count();
                            let moved: Vec<f32> =
                                global.iter().zip(i.values).map(|(a, b)| a + b).collect();
                            writeln!(f, "group {round} {bad} {}", fmt(&moved)?)?;
                        }
                    }
                    for ((group, sc), flag) in
                        contributors.iter().zip(&judged.scores).zip(&judged.flagged)
                    {
                        let bad = group.iter().filter(|&&m| is_attacker(m)).count();
                        eprintln!(
                            "trace round {round} group {group:?} attackers {bad} cos {:.3} norm {:.4} dev cos {:.2} norm {:.2} score {:.2} {}{}",
                            sc.features.cosine,
                            sc.features.norm,
                            sc.deviations.cosine,
                            sc.deviations.norm,
                            sc.score,
                            if *flag { "FLAGGED" } else { "" },
                            if judged.decided { "" } else { "undecided" }
                        );
                    }
                }
                // Each member carries its group's score (what its vote evidence cites).
                let scores: Vec<score::PeerScore> = contributors
                    .iter()
                    .zip(&judged.scores)
                    .flat_map(|(group, sc)| {
                        group
                            .iter()
                            .map(move |&m| score::PeerScore { member: m, ..*sc })
                    })
                    .collect();
                head = groups::next_head(&head, round, &judged.update);
                (judged.update, scores)
            }
        };
        let before = spec.groups.is_some().then(|| global.clone());
        for (g, d) in global.iter_mut().zip(&update) {
            *g += d;
        }
        if let Some(before) = before.filter(|b| *b != global) {
            last_move = Some(global.iter().zip(&before).map(|(a, b)| a - b).collect());
        }
        let eval = train::evaluate(&world.layout, &global, &world.test)?;
        let attack_success = match &target_set {
            Some(set) => Some(train::evaluate(&world.layout, &global, set)?.accuracy),
            None => None,
        };
        for sc in &scores {
            let d = sc.deviations;
            let e = over.entry(sc.member).or_default();
            e.1 += 1;
            for (i, v) in [d.cosine, d.norm, d.similarity].into_iter().enumerate() {
                if v > robust.score_threshold {
                    e.0[i] += 1;
                }
            }
        }
        for sc in scores.iter().filter(|s| s.score > robust.score_threshold) {
            let d = sc.deviations;
            let i = [d.cosine, d.norm, d.similarity]
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0;
            dominant.entry(sc.member).or_default()[i] += 1;
        }
        if std::env::var_os("FEDMESH_DRILL_TRACE").is_some() {
            for sc in &scores {
                let d = sc.deviations;
                eprintln!(
                    "trace round {round} member {} {} rows {} dist {:.1} cos {:.1} norm {:.1} sim {:.1} score {:.1} ewma {:.1}",
                    sc.member,
                    if is_attacker(sc.member) { "ATTACKER" } else { "honest" },
                    world.shards[sc.member as usize].len(),
                    d.distance,
                    d.cosine,
                    d.norm,
                    d.similarity,
                    sc.score,
                    history.peers.get(&sc.member).map_or(0.0, |p| p.ewma)
                );
            }
        }
        // Per member: the EWMA score, or in group rounds the posterior of "attacker".
        let level: Vec<(u32, f64)> = match spec.groups {
            None => history.peers.iter().map(|(m, p)| (*m, p.ewma)).collect(),
            Some(_) => suspicion
                .members
                .keys()
                .map(|&m| (m, suspicion.posterior(&model, m)))
                .collect(),
        };
        let bar = match spec.groups {
            None => robust.score_threshold,
            Some(_) => 0.5,
        };
        let flagged: BTreeSet<u32> = level
            .iter()
            .filter(|(m, v)| active.contains(m) && *v > bar)
            .map(|(m, _)| *m)
            .collect();
        let is_bad = |m: &u32| attack.is_some() && attackers.contains(m);
        let max_honest_score = level
            .iter()
            .filter(|(m, _)| !is_bad(m))
            .map(|(_, v)| *v)
            .fold(0.0, f64::max);
        let min_attacker_score = level
            .iter()
            .filter(|(m, _)| is_bad(m) && active.contains(m))
            .map(|(_, v)| *v)
            .reduce(f64::min);
        let mut evicted_now = Vec::new();
        if robust.votes {
            tally.expire(round);
            if round > robust.warmup_rounds {
                let suspects: Vec<(u32, f64)> = match spec.groups {
                    None => history.suspects(robust.patience),
                    Some(_) => suspicion.suspects(&model),
                }
                .into_iter()
                .filter(|(m, _)| active.contains(m))
                .collect();
                let evidence: std::collections::BTreeMap<u32, Hash> = scores
                    .iter()
                    .map(|s| (s.member, s.evidence(round)))
                    .collect();
                // Colluders stuff the ballot first: a fresh signed vote against their target
                // whenever their earlier one has expired.
                let stuffed: Vec<(u32, Vec<u32>, f64)> = stuffing
                    .map(|st| {
                        let voters = st
                            .voters
                            .iter()
                            .copied()
                            .filter(|v| active.contains(v))
                            .collect();
                        vec![(st.target, voters, robust.score_threshold * 2.0)]
                    })
                    .unwrap_or_default();
                let honest_votes = suspects.into_iter().map(|(target, ewma)| {
                    let voters = members
                        .iter()
                        .copied()
                        .filter(|m| !attackers.contains(m) || attack.is_none())
                        .collect();
                    (target, voters, ewma)
                });
                for (target, voters, ewma) in stuffed.into_iter().chain(honest_votes) {
                    // Attackers do not vote (they cannot reach a quorum without honest votes).
                    for voter in voters {
                        if voter == target
                            || !tally.is_active(voter)
                            || !tally.is_active(target)
                            || tally.has_voted(voter, target)
                        {
                            continue;
                        }
                        let vote = Vote {
                            round,
                            voter,
                            target,
                            score: ewma as f32,
                            evidence: evidence.get(&target).copied().unwrap_or(Hash::ZERO),
                        };
                        let signed =
                            SignedVote::sign(world.network, vote, &world.keys[voter as usize]);
                        if let Outcome::Evicted(rec) = tally.add(&signed, round)? {
                            evicted_now.push(rec.target);
                            out.evictions.push(Eviction {
                                member: rec.target,
                                round,
                                attacker: bad(&rec.target),
                                votes: rec.votes.len(),
                                needed: rec.needed as usize,
                                caught_by: dominant.get(&rec.target).and_then(|c| {
                                    let best = (0..3).max_by_key(|&i| (c[i], 3 - i))?;
                                    (c[best] > 0).then_some(["cosine", "norm", "similarity"][best])
                                }),
                                over_threshold: over.get(&rec.target).map_or([0; 3], |o| o.0),
                                scored_rounds: over.get(&rec.target).map_or(0, |o| o.1),
                            });
                        }
                    }
                }
            }
        }
        for m in &evicted_now {
            active.remove(m);
            evicted.insert(*m);
            history.remove(*m);
            suspicion.remove(*m);
        }
        let caught = |m: &u32| flagged.contains(m) || evicted.contains(m);
        let honest_total = n - attackers.len();
        let tpr = (attack.is_some() && !attackers.is_empty()).then(|| {
            attackers.iter().filter(|m| caught(m)).count() as f64 / attackers.len() as f64
        });
        let honest_caught = (0..n as u32)
            .filter(|m| (attack.is_none() || !attackers.contains(m)) && caught(m))
            .count();
        let honest_den = if attack.is_some() { honest_total } else { n };
        out.rounds.push(RoundStat {
            round,
            accuracy: eval.accuracy,
            loss: eval.loss,
            attack_success,
            active: members.len(),
            attacking,
            tpr,
            fpr: honest_caught as f64 / honest_den.max(1) as f64,
            evicted: evicted_now,
            max_honest_score,
            min_attacker_score,
            groups: group_stat,
        });
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}
