//! The drill's secure path: each round's groups (drawn from a chained head, as the node draws
//! them), and each group's sum formed by actually running the secure protocol in-process —
//! `secagg`'s member and coordinator state machines with real masks and quantization, or threshold
//! Paillier with a small key dealt once per drill — or, in mode `plain`, by adding the updates in
//! the clear (the same groups and judgement, without the cryptography: the reference column).
//!
//! What may be revealed is decided before any cryptography runs and enforced by it:
//! - members that drop before the round are left out of the draw's groups by
//!   [`groups::settle`], which merges a group that fell below g into another;
//! - members that drop *during* the protocol (after sharing keys, before sending input) leave
//!   their group with fewer contributors: secagg runs each group with threshold ≥ g, so such a
//!   group aborts with nothing revealed, and Paillier refuses to form a sum of fewer than g
//!   updates ([`paillier::RoundParams::min_contributors`]). The round goes on with the others.
//!
//! Every revealed sum therefore covers at least g members; [`GroupSum::contributors`] names them
//! and the drill's tests check it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use serde::Serialize;

use fedmesh_crypto::{paillier as crypto_paillier, Hash};
use fedmesh_protocol::paillier;
use fedmesh_protocol::robust::groups;
use fedmesh_protocol::secagg::{self, coordinator, graph, member, quant::Quantizer};

use super::sim::{derive, World};

/// How group sums are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Updates in the clear (with `--group-size`: group sums added in the clear).
    Plain,
    /// Bonawitz et al. secure aggregation per group.
    Secagg,
    /// Threshold Paillier per group.
    Paillier,
}

impl Mode {
    /// Parse `--mode`.
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        match s {
            "plain" => Ok(Mode::Plain),
            "secagg" => Ok(Mode::Secagg),
            "paillier" => Ok(Mode::Paillier),
            other => anyhow::bail!("--mode {other:?} is not one of: plain, secagg, paillier"),
        }
    }

    /// The name `--mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Secagg => "secagg",
            Mode::Paillier => "paillier",
        }
    }
}

/// Bits of the drill's Paillier key: small, so that a drill of 30 rounds × ⌊n/g⌋ groups finishes
/// in minutes (the product default is 2048; the cost per ciphertext grows roughly with the cube
/// of the key size, the number of ciphertexts shrinks linearly).
pub const PAILLIER_KEY_BITS: u32 = 512;

/// Partial decryptions needed per group sum in the drill (any 3 of the members; the product uses
/// ⌊n/2⌋ + 1). Each partial costs one exponentiation per ciphertext: the drill keeps it small,
/// which changes its cost but not what is revealed (one sum per group).
pub const PAILLIER_THRESHOLD: usize = 3;

/// Quantized bits per value in Paillier packing (as the product's default).
const PAILLIER_VALUE_BITS: u32 = 16;

/// Clip of Paillier quantization: per-coordinate model deltas are far smaller.
pub(super) const PAILLIER_CLIP: f32 = 1.0;

/// The joint Paillier key of a drill, dealt once (the dealer is the drill itself).
pub struct PaillierKit {
    keys: paillier::Keys,
    shares: Vec<crypto_paillier::KeyShare>,
    packer: crypto_paillier::pack::Packer,
    base: crypto_paillier::FixedBase,
}

impl PaillierKit {
    /// The quantization and packing every member uses.
    #[cfg(test)]
    pub(super) fn packer(&self) -> &crypto_paillier::pack::Packer {
        &self.packer
    }
}

impl PaillierKit {
    /// Deal a [`PAILLIER_KEY_BITS`] key to `members` with threshold [`PAILLIER_THRESHOLD`].
    pub fn deal(members: usize, seed: u64) -> anyhow::Result<PaillierKit> {
        let mut rng = ChaCha20Rng::seed_from_u64(derive(seed, "paillier key", 0, 0));
        let dealing = crypto_paillier::deal(
            PAILLIER_KEY_BITS,
            PAILLIER_THRESHOLD.min(members),
            members,
            &mut rng,
        )
        .context("dealing the drill's Paillier key")?;
        let packer = crypto_paillier::pack::Packer::new(
            &dealing.public,
            PAILLIER_VALUE_BITS,
            PAILLIER_CLIP,
            members,
        )?;
        let base = crypto_paillier::FixedBase::new(&dealing.public, &mut rng);
        Ok(PaillierKit {
            keys: paillier::Keys {
                public: dealing.public,
                verification: dealing.verification,
            },
            shares: dealing.shares,
            packer,
            base,
        })
    }
}

/// A group-wise run's settings.
pub struct Settings {
    pub mode: Mode,
    /// g: no revealed sum covers fewer members.
    pub size: usize,
    /// Per member and round: probability of dropping out (half before the round, half during the
    /// protocol, after sharing keys).
    pub dropout: f64,
    /// Mode paillier: the key.
    pub paillier: Option<PaillierKit>,
}

/// One group's revealed result.
#[derive(Debug, Clone)]
pub struct GroupSum {
    /// The members whose updates are in the sum (at least g).
    pub contributors: Vec<u32>,
    /// The group's mean update (weighted by sample counts in modes plain and secagg, where the
    /// weight travels inside the protected vector; unweighted in mode paillier).
    pub mean: Vec<f32>,
    /// The group's total sample count.
    pub weight: u64,
}

/// A round's groups: what was drawn, what was revealed, what was withheld.
#[derive(Debug, Clone)]
pub struct Revealed {
    /// The groups of the draw.
    pub drawn: Vec<Vec<u32>>,
    /// The revealed sums (every one with ≥ g contributors).
    pub sums: Vec<GroupSum>,
    /// Groups (after settling) whose sum was not revealed: too few members finished.
    pub withheld: Vec<Vec<u32>>,
    /// Members that dropped before the round.
    pub dropped_before: Vec<u32>,
    /// Members that dropped during the protocol.
    pub dropped_during: Vec<u32>,
}

/// The next head: what the node would chain from the round's result.
pub fn next_head(head: &Hash, round: u64, update: &[f32]) -> Hash {
    let mut bytes = Vec::with_capacity(40 + update.len() * 4);
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(&round.to_le_bytes());
    for v in update {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Hash::of("fedmesh drill head", &bytes)
}

/// Draw the round's groups from `head`, settle them after the dropouts, and form each group's sum
/// with the mode's protocol. `updates` maps every active member to its update and sample weight.
pub fn reveal(
    settings: &Settings,
    world: &World,
    seed: u64,
    head: &Hash,
    round: u64,
    updates: &BTreeMap<u32, (Vec<f32>, u64)>,
) -> anyhow::Result<Revealed> {
    let members: Vec<u32> = updates.keys().copied().collect();
    let g = settings.size;
    let drawn = groups::draw(head, round, &members, g)
        .with_context(|| format!("round {round}: drawing groups of {g}"))?;
    let mut dropped_before = Vec::new();
    let mut dropped_during = BTreeSet::new();
    for &m in &members {
        let mut rng = ChaCha20Rng::seed_from_u64(derive(seed, "dropout", round, m));
        if rng.gen::<f64>() < settings.dropout {
            if rng.gen::<bool>() {
                dropped_before.push(m);
            } else {
                dropped_during.insert(m);
            }
        }
    }
    let live: BTreeSet<u32> = members
        .iter()
        .copied()
        .filter(|m| !dropped_before.contains(m))
        .collect();
    let settled = groups::settle(&drawn, &live, g);
    let results: Vec<anyhow::Result<Option<GroupSum>>> = settled
        .par_iter()
        .enumerate()
        .map(|(j, group)| {
            let late: BTreeSet<u32> = group
                .iter()
                .copied()
                .filter(|m| dropped_during.contains(m))
                .collect();
            let mut rng = ChaCha20Rng::seed_from_u64(derive(seed, "group", round, j as u32));
            match settings.mode {
                Mode::Plain => Ok(plain_sum(group, &late, g, updates)),
                Mode::Secagg => secagg_sum(world, round, group, &late, g, updates, &mut rng),
                Mode::Paillier => {
                    let kit = settings
                        .paillier
                        .as_ref()
                        .context("mode paillier without a key")?;
                    paillier_sum(kit, world, round, group, &late, g, updates, &mut rng)
                        .map(|r| r.map(|p| p.sum))
                }
            }
            .with_context(|| format!("round {round}, group {group:?}"))
        })
        .collect();
    let mut sums = Vec::new();
    let mut withheld = Vec::new();
    for (group, result) in settled.into_iter().zip(results) {
        match result? {
            Some(sum) => {
                anyhow::ensure!(
                    sum.contributors.len() >= g,
                    "round {round}: a sum of {} members was revealed, below g = {g}",
                    sum.contributors.len()
                );
                sums.push(sum);
            }
            None => withheld.push(group),
        }
    }
    Ok(Revealed {
        drawn,
        sums,
        withheld,
        dropped_before,
        dropped_during: dropped_during.into_iter().collect(),
    })
}

/// Mode plain: the weighted mean of the group's finishing members, if they are at least g.
fn plain_sum(
    group: &[u32],
    late: &BTreeSet<u32>,
    g: usize,
    updates: &BTreeMap<u32, (Vec<f32>, u64)>,
) -> Option<GroupSum> {
    let contributors: Vec<u32> = group
        .iter()
        .copied()
        .filter(|m| !late.contains(m))
        .collect();
    if contributors.len() < g {
        return None;
    }
    let len = updates[&contributors[0]].0.len();
    let mut acc = vec![0f64; len];
    let mut weight = 0u64;
    for m in &contributors {
        let (x, w) = &updates[m];
        weight += w;
        for (a, v) in acc.iter_mut().zip(x) {
            *a += f64::from(*v) * *w as f64;
        }
    }
    let mean = acc.iter().map(|a| (a / weight as f64) as f32).collect();
    Some(GroupSum {
        contributors,
        mean,
        weight,
    })
}

/// Mode secagg: one whole Bonawitz round among the group's members, threshold max(g, ⌊s/2⌋ + 1),
/// members in `late` dropping after they shared their keys. None if the protocol refused to
/// reveal (too few members left).
fn secagg_sum(
    world: &World,
    round: u64,
    group: &[u32],
    late: &BTreeSet<u32>,
    g: usize,
    updates: &BTreeMap<u32, (Vec<f32>, u64)>,
    rng: &mut ChaCha20Rng,
) -> anyhow::Result<Option<GroupSum>> {
    let s = group.len();
    let quantizer = Quantizer {
        members: s,
        ..Quantizer::default()
    };
    let len = updates[&group[0]].0.len();
    let params = Arc::new(secagg::RoundParams {
        genesis: world.network,
        round,
        members: group
            .iter()
            .map(|&m| (m, world.keys[m as usize].public()))
            .collect(),
        threshold: g.max(s / 2 + 1).min(s),
        bits: quantizer.ring_bits()?,
        len: len + 1,
        graph: graph::Graph::new(group, 0, rng.gen()),
    });
    params.validate()?;
    let key = |m: u32| &world.keys[m as usize];
    let mut coord = coordinator::CollectKeys::new(params.clone())?;
    let mut stage0 = Vec::with_capacity(s);
    for &m in group {
        let (next, msg) = member::Start::new(params.clone(), m)?.advertise(key(m), rng);
        coord.add(msg)?;
        stage0.push((m, next));
    }
    let (mut coord, list) = coord.finish()?;
    let mut stage1 = Vec::with_capacity(s);
    for (m, state) in stage0 {
        let (next, msg) = state.share_keys(&list, key(m), rng)?;
        coord.add(msg)?;
        stage1.push((m, next));
    }
    let (mut coord, relayed) = coord.finish()?;
    let mut stage2 = Vec::with_capacity(s);
    for (m, state) in stage1 {
        if late.contains(&m) {
            continue;
        }
        let (x, w) = &updates[&m];
        let encoded = quantizer.encode(x, *w)?;
        let shares = relayed
            .get(&m)
            .with_context(|| format!("no shares relayed to member {m}"))?;
        let (next, msg) = state.masked_input(shares, &encoded.values, key(m))?;
        coord.add(msg)?;
        stage2.push((m, next));
    }
    let (mut coord, survivors) = match coord.finish() {
        Ok(next) => next,
        // Too few sent input: the group aborts before anything is unmasked.
        Err(secagg::SecaggError::TooFew { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut stage3 = Vec::with_capacity(s);
    for (m, state) in stage2 {
        let (next, msg) = state.consistency(&survivors, key(m))?;
        coord.add(msg)?;
        stage3.push((m, next));
    }
    let (mut coord, list) = coord.finish()?;
    for (m, state) in stage3 {
        coord.add(state.unmask(&list, key(m))?)?;
    }
    let outcome = coord.finish()?;
    let decoded = quantizer.decode(&outcome.sum)?;
    Ok(Some(GroupSum {
        contributors: outcome.survivors,
        mean: decoded.mean,
        weight: decoded.total_weight,
    }))
}

/// Mode paillier: the group's members encrypt under the joint key; the product of their
/// ciphertexts (refused below g updates) is decrypted by [`PAILLIER_THRESHOLD`] of them, each
/// partial with its proof checked. None if fewer than g members sent an update.
///
/// Each partial's proof is checked once, by the drill; in the node every member checks every
/// partial it uses (the same check, repeated per member). The decrypted sum is compared with the
/// sum of the quantized values the members encrypted: a mismatch is an error, not a result.
#[allow(clippy::too_many_arguments)]
pub(super) fn paillier_sum(
    kit: &PaillierKit,
    world: &World,
    round: u64,
    group: &[u32],
    late: &BTreeSet<u32>,
    g: usize,
    updates: &BTreeMap<u32, (Vec<f32>, u64)>,
    rng: &mut ChaCha20Rng,
) -> anyhow::Result<Option<PaillierGroup>> {
    let mut clock = PhaseClock::start();
    let len = updates[&group[0]].0.len();
    let params = paillier::RoundParams {
        genesis: world.network,
        round,
        members: world
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, k.public()))
            .collect(),
        len,
        min_contributors: g,
    };
    let senders: Vec<u32> = group
        .iter()
        .copied()
        .filter(|m| !late.contains(m))
        .collect();
    let pool = crypto_paillier::Pool::new();
    pool.fill_short(
        &kit.base,
        senders.len() * kit.packer.plaintexts_for(len),
        rng,
    );
    clock.lap("randomness");
    let mut collect = paillier::Collect::new(&params, &kit.keys, &kit.packer);
    let mut weight = 0;
    let mut encrypted = vec![0i64; len];
    for &m in &senders {
        let (x, w) = &updates[&m];
        let (msg, enc) = paillier::encrypt_update(
            &params,
            &kit.keys,
            &kit.packer,
            &pool,
            m,
            &world.keys[m as usize],
            x,
            rng,
        )?;
        collect.add_update(&msg)?;
        for (acc, q) in encrypted.iter_mut().zip(&enc.quantized) {
            *acc += q;
        }
        weight += w;
    }
    clock.lap("encrypt");
    let contributors = collect.contributors();
    let mut decrypt = match collect.close() {
        Ok(d) => d,
        Err(paillier::PaillierError::TooFewUpdates { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    clock.lap("product");
    for &m in contributors.iter().take(kit.keys.verification.threshold()) {
        let partial = decrypt.partial(&kit.shares[m as usize], m, &world.keys[m as usize], rng)?;
        clock.lap("partials");
        decrypt.add_partial(&partial)?;
        clock.lap("checks");
    }
    let outcome = decrypt.finish()?;
    clock.lap("combine");
    if let Some(i) = (0..len).find(|&i| outcome.sum[i] != encrypted[i]) {
        anyhow::bail!(
            "the decrypted sum of group {contributors:?} holds {} at value {i}, its members encrypted {} in all",
            outcome.sum[i],
            encrypted[i]
        );
    }
    clock.report(round, &contributors);
    let count = contributors.len() as f32;
    let mean = kit
        .packer
        .dequantize(&outcome.sum)
        .into_iter()
        .map(|v| v / count)
        .collect();
    Ok(Some(PaillierGroup {
        sum: GroupSum {
            contributors,
            mean,
            weight,
        },
        decrypted: outcome.sum,
    }))
}

/// One group's Paillier result: the revealed sum, and the decrypted per-value sums of the
/// members' quantized values it came from.
pub(super) struct PaillierGroup {
    pub sum: GroupSum,
    /// Read by the tests (the drill itself checks it against the encrypted values and keeps
    /// only `sum`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub decrypted: Vec<i64>,
}

/// Seconds per phase of one group's Paillier sum, printed with `FEDMESH_DRILL_TRACE` set (the
/// profile of a drill round: where its time goes).
struct PhaseClock {
    on: bool,
    last: std::time::Instant,
    phases: Vec<(&'static str, f64)>,
}

impl PhaseClock {
    fn start() -> PhaseClock {
        PhaseClock {
            on: std::env::var_os("FEDMESH_DRILL_TRACE").is_some(),
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Add the time since the last lap to `phase`.
    fn lap(&mut self, phase: &'static str) {
        if !self.on {
            return;
        }
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        match self.phases.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, t)) => *t += secs,
            None => self.phases.push((phase, secs)),
        }
    }

    fn report(&self, round: u64, group: &[u32]) {
        if !self.on {
            return;
        }
        let mut line = format!("paillier trace round {round} group {group:?}:");
        let total: f64 = self.phases.iter().map(|(_, t)| t).sum();
        for (phase, t) in &self.phases {
            line.push_str(&format!(" {phase} {t:.3} s,"));
        }
        eprintln!("{line} total {total:.3} s");
    }
}
