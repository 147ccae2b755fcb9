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
    let data = train::load(&spec, data_path, 0, members, 0)?;
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

/// Each member's result with its own time in seconds, and the wall time of all of them.
type Timed<T> = (Vec<(u32, T, f64)>, f64);

/// Run `f` for every member on all cores; returns results with each member's own time.
fn par_members<S: Send, T: Send>(
    states: Vec<(u32, S)>,
    f: impl Fn(u32, S) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Timed<T>> {
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

/// What `fedmesh bench paillier` was asked to measure.
#[derive(Debug, Clone)]
pub struct PaillierBench {
    /// Values per update.
    pub params: usize,
    /// Modulus size.
    pub key_bits: u32,
    /// Members the key is dealt to and whose updates are summed.
    pub members: usize,
    /// Partial decryptions needed (0 = majority).
    pub threshold: usize,
    /// Quantization bits and clip.
    pub value_bits: u32,
    pub clip: f32,
    /// Textbook single-value encryptions to time (one value per ciphertext, fresh randomness).
    pub single: usize,
    /// Reuse (or create) a dealt key here instead of generating one (key generation is then
    /// reported from the file).
    pub key_cache: Option<std::path::PathBuf>,
    /// Update values as little-endian f32 (e.g. written by bench/phe_bench.py); else seeded.
    pub values: Option<std::path::PathBuf>,
    pub json: bool,
}

fn secs_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Wall time and this process's CPU time (user + system, all threads) since `start`.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: process_cpu_secs(),
        }
    }

    fn wall(&self) -> f64 {
        secs_since(self.wall)
    }

    fn cpu(&self) -> f64 {
        process_cpu_secs() - self.cpu
    }
}

/// User + system CPU seconds of this process from /proc/self/stat (Linux; 0 elsewhere). Clock
/// ticks are taken as 100 per second, the value of every Linux configuration in practice.
fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Load a dealt key (and the time its generation took) or deal and time a fresh one.
fn bench_key(
    opts: &PaillierBench,
    threshold: usize,
) -> anyhow::Result<(fedmesh_crypto::paillier::Dealing, f64, bool)> {
    use anyhow::Context as _;
    use fedmesh_crypto::paillier::{self, KeyShare, PublicKey, VerificationKeys};
    if let Some(path) = opts.key_cache.as_ref().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines();
        let mut next = || lines.next().context("key cache file is too short");
        let keygen: f64 = next()?.parse().context("key cache: keygen seconds")?;
        let public = PublicKey::from_bytes(&hex::decode(next()?)?)?;
        let verification = VerificationKeys::from_bytes(&public, &hex::decode(next()?)?)?;
        let shares = (0..verification.parties())
            .map(|_| Ok(KeyShare::from_bytes(&hex::decode(next()?)?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            public.bits() == opts.key_bits
                && verification.parties() == opts.members
                && verification.threshold() == threshold,
            "{}: cached key is for other --key-bits/--members/--threshold; delete it",
            path.display()
        );
        return Ok((
            paillier::Dealing {
                public,
                verification,
                shares,
            },
            keygen,
            true,
        ));
    }
    let t = Instant::now();
    let dealing = paillier::deal(
        opts.key_bits,
        threshold,
        opts.members,
        &mut rand::rngs::OsRng,
    )?;
    let keygen = secs_since(t);
    if let Some(path) = &opts.key_cache {
        let mut text = format!(
            "{keygen}\n{}\n{}\n",
            hex::encode(dealing.public.to_bytes()),
            hex::encode(dealing.verification.to_bytes(&dealing.public))
        );
        for s in &dealing.shares {
            text.push_str(&hex::encode(s.to_bytes()));
            text.push('\n');
        }
        crate::keys::write_secret(path, text.trim_end())?;
    }
    Ok((dealing, keygen, false))
}

/// Threshold Paillier at `key_bits`: key generation, encryption (one value per ciphertext with
/// fresh randomness, as python-paillier does; packed without and with a precomputed pool, and
/// with the fixed-base short-exponent pool), ciphertext bytes per value, the homomorphic sum of
/// `members` updates, one member's partial decryption of the sum, its verification, and the
/// combination. Checks that the decrypted sum equals the sum of the quantized values.
pub fn paillier(opts: &PaillierBench) -> anyhow::Result<()> {
    use fedmesh_crypto::paillier::{self, pack::Packer, FixedBase, Plaintext, Pool};
    use rand::{Rng, SeedableRng};
    let threshold = if opts.threshold == 0 {
        opts.members / 2 + 1
    } else {
        opts.threshold
    };
    let mut rows: Vec<(&str, String, f64, &str)> = Vec::new();
    // Wall time and, for timed rows, the process's CPU time over the same span: on a machine
    // shared with other work the CPU time shows what the code itself costs.
    let mut row = |key: &'static str, what: String, value: f64, unit: &'static str| {
        if !opts.json {
            eprintln!("  {what:<62} {value:>12.3} {unit}");
        }
        rows.push((key, what, value, unit));
    };
    let mut cpu: Vec<(String, f64)> = Vec::new();
    let mut rng = rand_chacha::ChaCha20Rng::from_rng(rand::rngs::OsRng)?;
    let values: Vec<f32> = match &opts.values {
        Some(p) => {
            let bytes = std::fs::read(p)?;
            anyhow::ensure!(bytes.len() % 4 == 0, "{}: not f32 values", p.display());
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        }
        None => {
            let mut seeded = rand_chacha::ChaCha20Rng::seed_from_u64(1);
            (0..opts.params)
                .map(|_| seeded.gen_range(-0.6f32..0.6))
                .collect()
        }
    };
    let n_values = values.len();
    let cores = rayon::current_num_threads();
    if !opts.json {
        eprintln!(
            "threshold Paillier, {}-bit key, {n_values} values, {} members, threshold {threshold}, {cores} cores",
            opts.key_bits, opts.members
        );
    }

    let (dealing, keygen, cached) = bench_key(opts, threshold)?;
    let (pk, vks) = (&dealing.public, &dealing.verification);
    row(
        "keygen_s",
        format!(
            "key generation + dealing to {} members{}",
            opts.members,
            if cached { " (from key cache)" } else { "" }
        ),
        keygen,
        "s",
    );

    // Textbook: one value per ciphertext, fresh r^n, one core (what python-paillier does).
    let t = Clock::start();
    for i in 0..opts.single {
        std::hint::black_box(pk.encrypt(
            &Plaintext::from_be_bytes(&(i as u32 + 1).to_be_bytes()),
            &mut rng,
        )?);
    }
    let textbook = t.wall() / opts.single.max(1) as f64;
    cpu.push((
        "textbook_encrypt_s".into(),
        t.cpu() / opts.single.max(1) as f64,
    ));
    row(
        "textbook_values_per_s",
        "one value per ciphertext, fresh r^n, 1 core: values/s".into(),
        1.0 / textbook,
        "values/s",
    );

    let packer = Packer::new(pk, opts.value_bits, opts.clip, opts.members)?;
    let count = packer.plaintexts_for(n_values);
    row(
        "values_per_ciphertext",
        format!(
            "values per ciphertext ({}-bit values + {} bits headroom)",
            opts.value_bits,
            packer.slot_bits() - opts.value_bits
        ),
        packer.slots() as f64,
        "",
    );
    let packed_bytes = (count * pk.ciphertext_len()) as f64 / n_values as f64;
    row(
        "bytes_per_value_packed",
        "ciphertext bytes per value, packed".into(),
        packed_bytes,
        "B",
    );
    row(
        "bytes_per_value_single",
        "ciphertext bytes per value, one value per ciphertext".into(),
        pk.ciphertext_len() as f64,
        "B",
    );

    // Packed, no pool: r^n computed on the spot on all cores.
    let empty = Pool::new();
    let t = Clock::start();
    let fresh = paillier::encrypt_packed(pk, &packer, &values, &empty, &mut rng)?;
    let no_pool = t.wall();
    cpu.push(("encrypt_no_pool_s".into(), t.cpu()));
    row(
        "encrypt_no_pool_s",
        format!("encrypt {n_values} values, packed, r^n on the spot, {cores} cores"),
        no_pool,
        "s",
    );

    // Pool filled ahead of time (while training), then the update is encrypted.
    let pool = Pool::new();
    let t = Clock::start();
    pool.fill(pk, count, &mut rng);
    cpu.push(("pool_fill_s".into(), t.cpu()));
    row(
        "pool_fill_s",
        format!("precompute {count} r^n (uniform r) into the pool, {cores} cores"),
        t.wall(),
        "s",
    );
    let t = Clock::start();
    let enc = paillier::encrypt_packed(pk, &packer, &values, &pool, &mut rng)?;
    let with_pool = t.wall();
    cpu.push(("encrypt_pool_s".into(), t.cpu()));
    anyhow::ensure!(enc.fresh == 0, "the pool ran short");
    row(
        "encrypt_pool_s",
        format!("encrypt {n_values} values, packed, pool precomputed"),
        with_pool,
        "s",
    );

    let t = Clock::start();
    let base = FixedBase::new(pk, &mut rng);
    let table = t.wall();
    let short = Pool::new();
    let t = Clock::start();
    short.fill_short(&base, count, &mut rng);
    let short_fill = t.wall();
    cpu.push(("pool_fill_short_s".into(), t.cpu()));
    row(
        "fixed_base_table_s",
        "fixed-base table (short-exponent variant), once per key".into(),
        table,
        "s",
    );
    row(
        "pool_fill_short_s",
        format!("precompute {count} h^x (512-bit x) into the pool, {cores} cores"),
        short_fill,
        "s",
    );
    let t = Clock::start();
    std::hint::black_box(paillier::encrypt_packed(
        pk, &packer, &values, &short, &mut rng,
    )?);
    row(
        "encrypt_short_total_s",
        format!("encrypt {n_values} values, short-exponent randomness computed now"),
        short_fill + t.wall(),
        "s",
    );
    row(
        "values_per_s_pool",
        "packed + pool: values/s".into(),
        n_values as f64 / with_pool,
        "values/s",
    );
    row(
        "values_per_s_no_pool",
        "packed, no pool: values/s".into(),
        n_values as f64 / no_pool,
        "values/s",
    );

    // The sum of `members` updates (the same vector repeated: the cost is the same).
    let vectors: Vec<&[paillier::Ciphertext]> = (0..opts.members)
        .map(|i| {
            if i % 2 == 0 {
                enc.ciphertexts.as_slice()
            } else {
                fresh.ciphertexts.as_slice()
            }
        })
        .collect();
    let t = Clock::start();
    let total = paillier::sum(pk, &vectors)?;
    cpu.push(("sum_s".into(), t.cpu()));
    row(
        "sum_s",
        format!("homomorphic sum of {} updates", opts.members),
        t.wall(),
        "s",
    );
    let context = b"fedmesh bench";
    let t = Clock::start();
    let partials: Vec<_> = dealing.shares[..threshold]
        .iter()
        .map(|s| s.decrypt_share(pk, vks, &total, context, &mut rng))
        .collect::<Result<_, _>>()?;
    cpu.push(("partial_decrypt_s".into(), t.cpu() / threshold as f64));
    row(
        "partial_decrypt_s",
        format!("one member's partial decryption + proof of the {n_values}-value sum"),
        t.wall() / threshold as f64,
        "s",
    );
    let t = Clock::start();
    vks.verify(pk, &total, &partials[0], context)?;
    cpu.push(("verify_partial_s".into(), t.cpu()));
    row(
        "verify_partial_s",
        "verify one partial decryption".into(),
        t.wall(),
        "s",
    );
    row(
        "partial_bytes",
        "bytes of one partial decryption".into(),
        partials[0].to_bytes(pk).len() as f64,
        "B",
    );
    let t = Clock::start();
    let plain = paillier::combine(pk, vks, &partials)?;
    let sums = packer.unpack_sum(&plain, n_values, opts.members)?;
    cpu.push(("combine_s".into(), t.cpu()));
    row(
        "combine_s",
        format!("combine {threshold} partials + unpack"),
        t.wall(),
        "s",
    );
    let expected: Vec<i64> = enc
        .quantized
        .iter()
        .zip(&fresh.quantized)
        .map(|(a, b)| {
            let (ea, eb) = (opts.members.div_ceil(2) as i64, (opts.members / 2) as i64);
            a * ea + b * eb
        })
        .collect();
    anyhow::ensure!(sums == expected, "the decrypted sum is wrong");

    let ratio_phe_free = textbook / (with_pool / n_values as f64);
    if opts.json {
        let mut obj = serde_json::Map::new();
        obj.insert("bench".into(), "paillier".into());
        obj.insert("key_bits".into(), opts.key_bits.into());
        obj.insert("values".into(), n_values.into());
        obj.insert("members".into(), opts.members.into());
        obj.insert("threshold".into(), threshold.into());
        obj.insert("cores".into(), cores.into());
        obj.insert("keygen_cached".into(), cached.into());
        for (key, _, value, _) in &rows {
            obj.insert((*key).into(), (*value).into());
        }
        for (key, value) in &cpu {
            obj.insert(format!("cpu_{key}"), (*value).into());
        }
        println!("{}", serde_json::Value::Object(obj));
    } else {
        eprintln!("process CPU time of the timed steps (all threads):");
        for (key, value) in &cpu {
            eprintln!("  {key:<62} {value:>12.3} s");
        }
        println!(
            "packed + pool vs one value per ciphertext (this code, 1 core): {ratio_phe_free:.0}x per value; bytes per value {:.0}x fewer; decrypted sum checked",
            pk.ciphertext_len() as f64 / packed_bytes
        );
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
        .map(|m| train::load(&spec, &b.data, m, b.members, 0))
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
