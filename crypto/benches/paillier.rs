//! Threshold Paillier at 2048 bits: one encryption with fresh randomness, the randomness itself
//! (uniform r^n and the fixed-base short-exponent variant), encryption of a packed update with a
//! precomputed pool, the homomorphic sum, and a member's partial decryption, its verification and
//! the combination. The key (4 members, threshold 3) is generated once per run, which takes tens
//! of seconds; `FEDMESH_BENCH_KEY_BITS=1024` makes a quicker, smaller run.
//!
//! `cargo bench -p fedmesh-crypto --bench paillier` (add `-- --quick` for a short run).
//! `fedmesh bench paillier` measures the same paths on a 100,000-value update in one pass.

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use fedmesh_crypto::paillier::{self, pack::Packer, Dealing, FixedBase, Plaintext, Pool};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn key() -> &'static Dealing {
    static KEY: std::sync::OnceLock<Dealing> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let bits = std::env::var("FEDMESH_BENCH_KEY_BITS")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(2048);
        let t = std::time::Instant::now();
        let d = paillier::deal(bits, 3, 4, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        eprintln!(
            "dealt a {bits}-bit key in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        d
    })
}

fn encryption(c: &mut Criterion) {
    let d = key();
    let pk = &d.public;
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut group = c.benchmark_group("paillier_encrypt");
    group.sample_size(10);
    group.bench_function("one_value_fresh_randomness", |b| {
        b.iter(|| {
            pk.encrypt(black_box(&Plaintext::from_be_bytes(&[1, 2, 3])), &mut rng)
                .unwrap()
        })
    });
    group.bench_function("pool_fill_one_uniform", |b| {
        let pool = Pool::new();
        b.iter(|| pool.fill(pk, 1, &mut rng))
    });
    let base = FixedBase::new(pk, &mut rng);
    group.bench_function("pool_fill_one_short_exponent", |b| {
        let pool = Pool::new();
        b.iter(|| pool.fill_short(&base, 1, &mut rng))
    });
    let len = 10_000usize;
    let packer = Packer::new(pk, 16, 0.5, 4).unwrap();
    let values: Vec<f32> = (0..len).map(|_| rng.gen_range(-0.6f32..0.6)).collect();
    group.throughput(Throughput::Elements(len as u64));
    group.bench_with_input(BenchmarkId::new("packed_with_pool", len), &len, |b, _| {
        b.iter_batched(
            || {
                let pool = Pool::new();
                pool.fill_short(
                    &base,
                    packer.plaintexts_for(len),
                    &mut ChaCha20Rng::seed_from_u64(3),
                );
                pool
            },
            |pool| {
                paillier::encrypt_packed(
                    pk,
                    &packer,
                    black_box(&values),
                    &pool,
                    &mut ChaCha20Rng::seed_from_u64(4),
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn decryption(c: &mut Criterion) {
    let d = key();
    let (pk, vks) = (&d.public, &d.verification);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let packer = Packer::new(pk, 16, 0.5, 4).unwrap();
    let values: Vec<f32> = (0..2_000).map(|_| rng.gen_range(-0.6f32..0.6)).collect();
    let pool = Pool::new();
    let enc = paillier::encrypt_packed(pk, &packer, &values, &pool, &mut rng).unwrap();
    let n_ct = enc.ciphertexts.len();
    let mut group = c.benchmark_group("paillier_threshold");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n_ct as u64));
    group.bench_function(BenchmarkId::new("sum_of_4", n_ct), |b| {
        let vectors = vec![enc.ciphertexts.clone(); 4];
        b.iter(|| paillier::sum(pk, black_box(&vectors)).unwrap())
    });
    group.bench_function(BenchmarkId::new("partial_decrypt_with_proof", n_ct), |b| {
        b.iter(|| {
            d.shares[0]
                .decrypt_share(pk, vks, black_box(&enc.ciphertexts), b"bench", &mut rng)
                .unwrap()
        })
    });
    let partials: Vec<_> = d.shares[..3]
        .iter()
        .map(|s| {
            s.decrypt_share(pk, vks, &enc.ciphertexts, b"bench", &mut rng)
                .unwrap()
        })
        .collect();
    group.bench_function(BenchmarkId::new("verify_partial", n_ct), |b| {
        b.iter(|| {
            vks.verify(pk, &enc.ciphertexts, black_box(&partials[0]), b"bench")
                .unwrap()
        })
    });
    group.bench_function(BenchmarkId::new("combine_3", n_ct), |b| {
        b.iter(|| paillier::combine(pk, vks, black_box(&partials)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, encryption, decryption);
criterion_main!(benches);
