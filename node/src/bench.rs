//! `fedmesh bench`: reproducible micro-benchmarks of the node's own code paths, printed as a table
//! (or JSON). Timings are medians over repeated runs in one process, so ratios between lines of
//! one run are meaningful even on a noisy machine.

use std::path::Path;
use std::time::Instant;

use fedmesh_protocol::genesis::{DataSpec, Optimizer, TrainSpec};
use fedmesh_protocol::model::Layout;

use crate::train;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut()>(repeats: usize, mut f: F) -> f64 {
    f(); // warm-up
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Time local training and evaluation of the default MLP on one member's MNIST shard.
pub fn train(data_path: &Path, members: u32, repeats: usize, json: bool) -> anyhow::Result<()> {
    let spec = DataSpec::default();
    let data = train::load(&spec, data_path, 0, members)?;
    let layout = Layout::new(vec![784, 128, 10])?;
    let init = layout.init(1);
    let mut rows = Vec::new();
    for (name, optimizer, lr) in [
        ("sgd", Optimizer::Sgd, 0.1),
        ("adam", Optimizer::Adam, 1e-3),
    ] {
        let t = TrainSpec {
            optimizer,
            learning_rate: lr,
            epochs: 2,
            batch_size: 32,
        };
        let secs = time(repeats, || {
            train::train(&layout, &init, &data.train, &t, 1).expect("training");
        });
        rows.push((
            format!("train {name}, 2 epochs, {} rows", data.train.len()),
            secs,
        ));
    }
    let secs = time(repeats, || {
        train::evaluate(&layout, &init, &data.test).expect("evaluation");
    });
    rows.push((format!("evaluate, {} rows", data.test.len()), secs));
    let secs = time(repeats, || {
        std::hint::black_box(layout.hash(&init));
    });
    rows.push((
        format!("model hash, {} parameters", layout.param_count()),
        secs,
    ));
    for (what, secs) in rows {
        if json {
            println!(
                "{}",
                serde_json::json!({"bench": "train", "what": what, "median_ms": secs * 1e3, "repeats": repeats})
            );
        } else {
            println!("{what:<40} {:>9.2} ms (median of {repeats})", secs * 1e3);
        }
    }
    Ok(())
}

/// Per-phase timings of one secure-aggregation round.
#[derive(Default, Clone, serde::Serialize)]
struct PhaseTimes {
    advertise: f64,
    share_keys: f64,
    masked_input: f64,
    consistency: f64,
    unmask: f64,
}

impl PhaseTimes {
    fn total(&self) -> f64 {
        self.advertise + self.share_keys + self.masked_input + self.consistency + self.unmask
    }
}

/// What one simulated round measured.
struct SecaggRun {
    /// Mean time one member spends in each phase.
    member: PhaseTimes,
    /// Coordinator time in each phase.
    coordinator: PhaseTimes,
    /// Wall time of the whole round on this machine: in each phase all members work in parallel
    /// on the available cores, then the coordinator.
    round: f64,
    bytes_per_member: f64,
    quantize: f64,
}

/// Mean of the members' own times.
fn mean<T>(v: &[(u32, T, f64)]) -> f64 {
    v.iter().map(|x| x.2).sum::<f64>() / v.len().max(1) as f64
}

/// Run `f` for every member on all cores; returns results with each member's own time.
fn par_members<S: Send, T: Send>(
    states: Vec<(u32, S)>,
    f: impl Fn(u32, S) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<(Vec<(u32, T, f64)>, f64)> {
    use rayon::prelude::*;
    let wall = Instant::now();
    let out: anyhow::Result<Vec<_>> = states
        .into_par_iter()
        .map(|(m, s)| {
            let t = Instant::now();
            let r = f(m, s)?;
            Ok((m, r, t.elapsed().as_secs_f64()))
        })
        .collect();
    Ok((out?, wall.elapsed().as_secs_f64()))
}

/// One secure-aggregation round with `n` members and `len` parameters, of whom a fraction
/// `dropout` (chosen at random) drops after sharing keys — the costliest place, since their masks
/// must be rebuilt. Members and coordinator run in this process on the real protocol code.
fn secagg_round(
    n: u32,
    len: usize,
    dropout: f64,
    degree: usize,
    seed: u64,
) -> anyhow::Result<SecaggRun> {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use fedmesh_crypto::identity;
    use fedmesh_protocol::secagg::{coordinator, graph, member, quant, RoundParams};
    use rand::{Rng, SeedableRng};

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<_> = (0..n)
        .map(|_| identity::SecretKey::from_seed(rng.gen()))
        .collect();
    let members: BTreeMap<u32, _> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public()))
        .collect();
    let ids: Vec<u32> = members.keys().copied().collect();
    let graph = graph::Graph::new(&ids, degree, rng.gen());
    let holders = if graph.is_complete() {
        n as usize
    } else {
        graph.degree() + 1
    };
    let q = quant::Quantizer {
        clip: 1.0,
        value_bits: 16,
        max_weight: 65_535,
        members: n as usize,
    };
    let params = Arc::new(RoundParams {
        genesis: fedmesh_crypto::Hash::of("bench", b"secagg"),
        round: 1,
        members,
        threshold: holders / 2 + 1,
        bits: q.ring_bits()?,
        len: len + 1,
        graph,
    });
    let update: Vec<f32> = (0..len).map(|_| rng.gen_range(-0.05f32..0.05)).collect();
    let drop_count = (n as f64 * dropout).round() as usize;
    let dropped: Vec<u32> = rand::seq::index::sample(&mut rng, n as usize, drop_count)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let rng_of = |m: u32| rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ (u64::from(m) << 32));
    let size = |v: &dyn erased::Encode| v.encoded_len();
    let mut mt = PhaseTimes::default();
    let mut ct = PhaseTimes::default();
    let mut round = 0.0;
    let mut bytes = 0usize;

    let t = Instant::now();
    let quantized = q.encode(&update, 600)?.values;
    let quantize = t.elapsed().as_secs_f64();

    // Phase 0
    let starts: Vec<(u32, ())> = (0..n).map(|m| (m, ())).collect();
    let (adv, wall) = par_members(starts, |m, ()| {
        let mut rng = rng_of(m);
        Ok(member::Start::new(params.clone(), m)?.advertise(&keys[m as usize], &mut rng))
    })?;
    mt.advertise = mean(&adv);
    round += wall;
    let t = Instant::now();
    let mut coord = coordinator::CollectKeys::new(params.clone())?;
    let mut s0 = Vec::new();
    for (m, (next, msg), _) in adv {
        bytes += size(&msg);
        coord.add(msg)?;
        s0.push((m, next));
    }
    let (mut coord, list) = coord.finish()?;
    ct.advertise = t.elapsed().as_secs_f64();
    round += ct.advertise;

    // Phase 1
    let (shared, wall) = par_members(s0, |m, st| {
        let mut rng = rng_of(m + n);
        Ok(st.share_keys(&list, &keys[m as usize], &mut rng)?)
    })?;
    mt.share_keys = mean(&shared);
    round += wall;
    let t = Instant::now();
    let mut s1 = Vec::new();
    for (m, (next, msg), _) in shared {
        bytes += size(&msg);
        coord.add(msg)?;
        if !dropped.contains(&m) {
            s1.push((m, next));
        }
    }
    let (mut coord, relayed) = coord.finish()?;
    ct.share_keys = t.elapsed().as_secs_f64();
    round += ct.share_keys;

    // Phase 2 (the dropped members stop here)
    let (masked, wall) = par_members(s1, |m, st| {
        Ok(st.masked_input(&relayed[&m], &quantized, &keys[m as usize])?)
    })?;
    mt.masked_input = mean(&masked);
    round += wall;
    let t = Instant::now();
    let mut s2 = Vec::new();
    for (m, (next, msg), _) in masked {
        bytes += size(&msg);
        coord.add(msg)?;
        s2.push((m, next));
    }
    let (mut coord, survivors) = coord.finish()?;
    ct.masked_input = t.elapsed().as_secs_f64();
    round += ct.masked_input;

    // Phase 3
    let (checked, wall) = par_members(s2, |m, st| {
        Ok(st.consistency(&survivors, &keys[m as usize])?)
    })?;
    mt.consistency = mean(&checked);
    round += wall;
    let t = Instant::now();
    let mut s3 = Vec::new();
    for (m, (next, msg), _) in checked {
        bytes += size(&msg);
        coord.add(msg)?;
        s3.push((m, next));
    }
    let (mut coord, clist) = coord.finish()?;
    ct.consistency = t.elapsed().as_secs_f64();
    round += ct.consistency;

    // Phase 4
    let (unmasked, wall) = par_members(s3, |m, st| Ok(st.unmask(&clist, &keys[m as usize])?))?;
    mt.unmask = mean(&unmasked);
    round += wall;
    let t = Instant::now();
    for (_, msg, _) in unmasked {
        bytes += size(&msg);
        coord.add(msg)?;
    }
    let outcome = coord.finish()?;
    ct.unmask = t.elapsed().as_secs_f64();
    round += ct.unmask;

    // The secure sum must be the plain sum: n − dropped identical inputs of weight 600.
    let decoded = q.decode(&outcome.sum)?;
    anyhow::ensure!(
        decoded.total_weight == 600 * (n as u64 - drop_count as u64),
        "total weight"
    );
    let err = decoded
        .mean
        .iter()
        .zip(&update)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    anyhow::ensure!((err as f64) <= 2.0 * q.step(), "secure sum is off by {err}");
    Ok(SecaggRun {
        member: mt,
        coordinator: ct,
        round,
        bytes_per_member: bytes as f64 / n as f64,
        quantize,
    })
}

mod erased {
    /// Encoded size of a message, as sent.
    pub trait Encode {
        fn encoded_len(&self) -> usize;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encoded_len(&self) -> usize {
            fedmesh_protocol::codec::encode(self).len()
        }
    }
}

/// `fedmesh bench secagg`: one round per (members, dropout) with the real protocol code.
pub fn secagg(
    members: &[u32],
    params: usize,
    dropouts: &[f64],
    degree: usize,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        println!(
            "{:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9}",
            "members", "params", "dropout", "degree", "m.adv", "m.share", "m.mask", "m.check", "m.unmask",
            "c.mask", "c.unmask", "c.total", "round(s)", "KB/member"
        );
    }
    for &n in members {
        for &d in dropouts {
            let r = secagg_round(n, params, d, degree, 42)?;
            let k = if degree == 0 || degree as u32 >= n - 1 {
                "all".to_string()
            } else {
                degree.to_string()
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "secagg", "members": n, "params": params, "dropout": d, "degree": k,
                        "member_s": r.member, "coordinator_s": r.coordinator, "round_s": r.round,
                        "bytes_per_member": r.bytes_per_member, "quantize_s": r.quantize,
                        "plain_update_bytes": params * 4})
                );
            } else {
                let ms = |s: f64| format!("{:.1}ms", s * 1e3);
                let (m, c) = (&r.member, &r.coordinator);
                println!(
                    "{:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9.3} {:>9.0}",
                    n, params, d, k, ms(m.advertise), ms(m.share_keys), ms(m.masked_input), ms(m.consistency),
                    ms(m.unmask), ms(c.masked_input), ms(c.unmask), ms(c.total()), r.round, r.bytes_per_member / 1024.0
                );
            }
        }
    }
    Ok(())
}

/// Settings of [`dp`]: the federation and its DP-SGD hyperparameters.
#[derive(Debug, Clone)]
pub struct DpBench {
    /// The MNIST file.
    pub data: std::path::PathBuf,
    /// Members (IID shards of the 4,000 training digits).
    pub members: u32,
    /// MLP layer widths, input first.
    pub layers: Vec<usize>,
    /// Federated rounds; every member takes part in every round.
    pub rounds: u64,
    /// Local epochs per round.
    pub epochs: usize,
    /// DP-SGD sampling rate q (of a member's shard).
    pub sample_rate: f64,
    /// Per-example clipping norm C.
    pub clip: f64,
    /// DP-SGD learning rate.
    pub learning_rate: f64,
    /// The optimizer the noisy gradients drive.
    pub optimizer: Optimizer,
    /// Target ε values; +∞ trains without DP (plain minibatch SGD, lr 0.1, batches of 32).
    pub epsilons: Vec<f64>,
    /// δ of every target.
    pub delta: f64,
    /// Seed of the model, the data split and every member's sampling and noise.
    pub seed: u64,
}

/// One line of the privacy–utility table.
#[derive(Debug, Clone, serde::Serialize)]
struct DpRow {
    /// Target ε (null for no DP).
    epsilon: Option<f64>,
    /// ε the accountant gives for the σ used (≤ the target).
    spent: Option<f64>,
    sigma: Option<f64>,
    /// Test accuracy after each round.
    accuracy: Vec<f32>,
    seconds: f64,
}

/// Federated rounds with record-level DP (DP-SGD on every member) in one process, for each
/// target ε: σ is the smallest noise for which `rounds × ceil(epochs / q)` steps at rate q stay
/// within (ε, δ) (`protocol::dp::noise_for`), members train in parallel from the global model,
/// FedAvg weighted by rows, the global model is evaluated on the shared 1,000-digit test split.
pub fn dp(b: &DpBench, json: bool) -> anyhow::Result<()> {
    use fedmesh_protocol::dp;
    use fedmesh_protocol::genesis::{DpLevel, DpSpec, Partition, Sampling};
    use rayon::prelude::*;

    let spec = DataSpec {
        partition: Partition::Iid,
        seed: b.seed,
        ..DataSpec::default()
    };
    let shards = (0..b.members)
        .map(|m| train::load(&spec, &b.data, m, b.members))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = Layout::new(b.layers.clone())?;
    let init = layout.init(b.seed);
    let dp_train = TrainSpec {
        optimizer: b.optimizer,
        learning_rate: b.learning_rate,
        epochs: b.epochs,
        batch_size: 1,
    };
    let plain_train = TrainSpec {
        optimizer: Optimizer::Sgd,
        learning_rate: 0.1,
        epochs: b.epochs,
        batch_size: 32,
    };
    let base = DpSpec {
        level: DpLevel::Record,
        clip: b.clip,
        sample_rate: b.sample_rate,
        sampling: Sampling::Poisson,
        delta: b.delta,
        ..DpSpec::default()
    };
    let total_steps = b.rounds * base.steps_per_round(b.epochs);
    if !json {
        println!(
            "record-level DP-SGD, MLP {:?}, {} members × {} rows, {} rounds × {} local epochs, q = {}, \
             C = {}, {:?} lr = {}, δ = {}, seed {} ({} steps per member)",
            b.layers,
            b.members,
            shards[0].train.len(),
            b.rounds,
            b.epochs,
            b.sample_rate,
            b.clip,
            b.optimizer,
            b.learning_rate,
            b.delta,
            b.seed,
            total_steps
        );
        println!(
            "{:>8} {:>8} {:>8} {:>10} {:>9}",
            "ε", "σ", "spent", "accuracy", "seconds"
        );
    }
    for &target in &b.epsilons {
        let start = Instant::now();
        let private = target.is_finite();
        let sigma = if private {
            Some(dp::noise_for(target, b.sample_rate, total_steps, b.delta)?)
        } else {
            None
        };
        let spent = sigma
            .map(|s| dp::epsilon(s, b.sample_rate, total_steps, b.delta))
            .transpose()?;
        let dspec = DpSpec {
            noise_multiplier: sigma.unwrap_or(1.0),
            ..base.clone()
        };
        let mut global = init.clone();
        let mut accuracy = Vec::new();
        for round in 1..=b.rounds {
            let updates = shards
                .par_iter()
                .enumerate()
                .map(|(m, shard)| {
                    let out = if private {
                        let secret = *fedmesh_crypto::hash::Hasher::new("fedmesh bench dp v1")
                            .chain(&b.seed.to_le_bytes())
                            .chain(&round.to_le_bytes())
                            .chain(&(m as u64).to_le_bytes())
                            .finalize()
                            .as_bytes();
                        train::train_dp(&layout, &global, &shard.train, &dp_train, &dspec, secret)?
                    } else {
                        train::train(
                            &layout,
                            &global,
                            &shard.train,
                            &plain_train,
                            b.seed ^ round ^ ((m as u64) << 32),
                        )?
                    };
                    let delta: Vec<f32> =
                        out.params.iter().zip(&global).map(|(n, o)| n - o).collect();
                    Ok((delta, shard.train.len() as u64))
                })
                .collect::<Result<Vec<_>, train::TrainError>>()?;
            let inputs: Vec<(&[f32], u64)> =
                updates.iter().map(|(d, w)| (d.as_slice(), *w)).collect();
            let avg = fedmesh_protocol::aggregate::fedavg(&inputs)?;
            global = fedmesh_protocol::model::apply(&global, &avg);
            accuracy.push(train::evaluate(&layout, &global, &shards[0].test)?.accuracy);
        }
        let row = DpRow {
            epsilon: private.then_some(target),
            spent,
            sigma,
            accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        let last = *row.accuracy.last().unwrap_or(&0.0);
        if json {
            println!("{}", serde_json::json!({"bench": "dp", "row": row}));
        } else {
            let f = |v: Option<f64>, p: usize| v.map_or("∞".to_string(), |x| format!("{x:.p$}"));
            println!(
                "{:>8} {:>8} {:>8} {:>10.4} {:>9.1}",
                f(row.epsilon, 0),
                sigma.map_or("-".into(), |s| format!("{s:.3}")),
                f(row.spent, 3),
                last,
                row.seconds
            );
        }
    }
    Ok(())
}
