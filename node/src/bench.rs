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

/// One secure-aggregation round with `n` members and `len` parameters, of whom a fraction
/// `dropout` drops after sharing keys (the costliest place: their masks must be rebuilt). All
/// members and the coordinator run in this process, one after the other, on the real protocol
/// code; returns (mean member time per phase, coordinator time per phase, bytes sent per member,
/// quantization time per member).
fn secagg_round(
    n: u32,
    len: usize,
    dropout: f64,
    degree: usize,
    seed: u64,
) -> anyhow::Result<(PhaseTimes, PhaseTimes, f64, f64)> {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use fedmesh_crypto::identity;
    use fedmesh_protocol::secagg::{coordinator, graph, member, quant, RoundParams};
    use rand::{Rng, SeedableRng};

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<_> = (0..n)
        .map(|i| {
            identity::SecretKey::from_seed(
                rand::Rng::gen::<[u8; 32]>(&mut rng).map(|b| b ^ i as u8),
            )
        })
        .collect();
    let members: BTreeMap<u32, _> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public()))
        .collect();
    let ids: Vec<u32> = members.keys().copied().collect();
    let graph = graph::Graph::new(&ids, degree, [3u8; 32]);
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
    let drop_count = (n as f64 * dropout).round() as u32;
    let dropped: Vec<u32> = (0..drop_count).map(|i| (i * 7 + 1) % n).collect();
    let mut mt = PhaseTimes::default();
    let mut ct = PhaseTimes::default();
    let mut bytes = vec![0usize; n as usize];
    let timed = |acc: &mut f64, t: Instant| *acc += t.elapsed().as_secs_f64();
    let size = |v: &dyn erased::Encode| v.encoded_len();

    let t = Instant::now();
    let mut quantized = Vec::new();
    for _ in 0..n {
        quantized.push(q.encode(&update, 600)?.values);
    }
    let quant_time = t.elapsed().as_secs_f64() / n as f64;

    let t0 = Instant::now();
    let mut coord = coordinator::CollectKeys::new(params.clone())?;
    timed(&mut ct.advertise, t0);
    let mut s0 = Vec::new();
    for m in 0..n {
        let t = Instant::now();
        let (next, msg) =
            member::Start::new(params.clone(), m)?.advertise(&keys[m as usize], &mut rng);
        timed(&mut mt.advertise, t);
        bytes[m as usize] += size(&msg);
        let t = Instant::now();
        coord.add(msg)?;
        timed(&mut ct.advertise, t);
        s0.push(next);
    }
    let t = Instant::now();
    let (mut coord, list) = coord.finish()?;
    timed(&mut ct.advertise, t);
    let mut s1 = Vec::new();
    for (m, st) in s0.into_iter().enumerate() {
        let t = Instant::now();
        let (next, msg) = st.share_keys(&list, &keys[m], &mut rng)?;
        timed(&mut mt.share_keys, t);
        bytes[m] += size(&msg);
        let t = Instant::now();
        coord.add(msg)?;
        timed(&mut ct.share_keys, t);
        s1.push(next);
    }
    let t = Instant::now();
    let (mut coord, relayed) = coord.finish()?;
    timed(&mut ct.share_keys, t);
    let mut s2 = Vec::new();
    for (m, st) in s1.into_iter().enumerate() {
        if dropped.contains(&(m as u32)) {
            continue;
        }
        let t = Instant::now();
        let (next, msg) = st.masked_input(&relayed[&(m as u32)], &quantized[m], &keys[m])?;
        timed(&mut mt.masked_input, t);
        bytes[m] += size(&msg);
        let t = Instant::now();
        coord.add(msg)?;
        timed(&mut ct.masked_input, t);
        s2.push((m, next));
    }
    let t = Instant::now();
    let (mut coord, survivors) = coord.finish()?;
    timed(&mut ct.masked_input, t);
    let mut s3 = Vec::new();
    for (m, st) in s2 {
        let t = Instant::now();
        let (next, msg) = st.consistency(&survivors, &keys[m])?;
        timed(&mut mt.consistency, t);
        bytes[m] += size(&msg);
        let t = Instant::now();
        coord.add(msg)?;
        timed(&mut ct.consistency, t);
        s3.push((m, next));
    }
    let t = Instant::now();
    let (mut coord, clist) = coord.finish()?;
    timed(&mut ct.consistency, t);
    for (m, st) in s3 {
        let t = Instant::now();
        let msg = st.unmask(&clist, &keys[m])?;
        timed(&mut mt.unmask, t);
        bytes[m] += size(&msg);
        let t = Instant::now();
        coord.add(msg)?;
        timed(&mut ct.unmask, t);
    }
    let t = Instant::now();
    let outcome = coord.finish()?;
    timed(&mut ct.unmask, t);
    let decoded = q.decode(&outcome.sum)?;
    anyhow::ensure!(decoded.mean.len() == len, "decoded length");
    let err = decoded
        .mean
        .iter()
        .zip(&update)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    anyhow::ensure!((err as f64) <= 2.0 * q.step(), "secure sum is off by {err}");
    let active = (n - drop_count) as f64;
    let scale = |p: &PhaseTimes, a: f64, b: f64, c: f64| PhaseTimes {
        advertise: p.advertise / n as f64,
        share_keys: p.share_keys / n as f64,
        masked_input: p.masked_input / a,
        consistency: p.consistency / b,
        unmask: p.unmask / c,
    };
    let mean_bytes = bytes.iter().sum::<usize>() as f64 / n as f64;
    Ok((
        scale(&mt, active, active, active),
        ct,
        mean_bytes,
        quant_time,
    ))
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
    degree: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        println!(
            "{:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} {:>9}",
            "members", "params", "dropout", "degree", "m.adv", "m.share", "m.mask", "m.check", "m.unmask",
            "c.mask", "c.unmask", "c.total", "round (s)", "KB/member"
        );
    }
    for &n in members {
        for &d in dropouts {
            let k = degree.unwrap_or(0);
            let (m, c, bytes, quant_time) = secagg_round(n, params, d, k, 42)?;
            // A full round on one machine: every member's work plus the coordinator's, in sequence.
            let active = n as f64 * (1.0 - d);
            let round = n as f64 * (m.advertise + m.share_keys)
                + active * (m.masked_input + m.consistency + m.unmask)
                + c.total();
            let k_shown = if k == 0 || k as u32 >= n - 1 {
                "all".to_string()
            } else {
                k.to_string()
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "secagg", "members": n, "params": params, "dropout": d, "degree": k_shown,
                        "member_s": m, "coordinator_s": c, "round_s": round, "bytes_per_member": bytes,
                        "quantize_s": quant_time, "plain_update_bytes": params * 4})
                );
            } else {
                let ms = |s: f64| format!("{:.1}ms", s * 1e3);
                println!(
                    "{:>7} {:>8} {:>7} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10.3} {:>9.0}",
                    n, params, d, k_shown, ms(m.advertise), ms(m.share_keys), ms(m.masked_input), ms(m.consistency),
                    ms(m.unmask), ms(c.masked_input), ms(c.unmask), ms(c.total()), round, bytes / 1024.0
                );
            }
        }
    }
    Ok(())
}
