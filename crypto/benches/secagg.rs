//! Secure-aggregation primitives: mask expansion, Shamir at n = 100, key agreement.
//!
//! `cargo bench -p fedmesh-crypto --bench secagg` (add `-- --quick` for a short run).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fedmesh_crypto::secagg::{aead, agree, kdf, mask, shamir};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn masks(c: &mut Criterion) {
    let seed = mask::Seed::from_bytes(&[7u8; 32]);
    let stream = mask::Stream {
        round: 1,
        purpose: mask::Purpose::Pairwise,
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("mask");
    for len in [100_000usize, 1_000_000] {
        group.throughput(Throughput::Elements(len as u64));
        let mut acc = vec![0u32; len];
        group.bench_with_input(BenchmarkId::new("add_u32_all_cores", len), &len, |b, _| {
            b.iter(|| mask::add_mask(black_box(&mut acc), &seed, stream, 24).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("add_u32_one_core", len), &len, |b, _| {
            b.iter(|| one_thread.install(|| mask::add_mask(black_box(&mut acc), &seed, stream, 24)))
        });
        let mut acc = vec![0u64; len];
        group.bench_with_input(BenchmarkId::new("add_u64_all_cores", len), &len, |b, _| {
            b.iter(|| mask::add_mask(black_box(&mut acc), &seed, stream, 40).unwrap())
        });
    }
    group.finish();
}

fn shamir_n100(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (n, t) = (100u32, 51usize);
    let xs: Vec<u32> = (1..=n).collect();
    let secret = [0xa5u8; 32];
    let mut group = c.benchmark_group("shamir_n100_t51");
    group.bench_function("split", |b| {
        b.iter(|| shamir::split(black_box(&secret), t, &xs, &mut rng).unwrap())
    });
    let shares = shamir::split(&secret, t, &xs, &mut rng).unwrap();
    group.bench_function("combine_51", |b| {
        b.iter(|| shamir::combine(black_box(&shares[..t]), t).unwrap())
    });
    group.bench_function("combine_100_checked", |b| {
        b.iter(|| shamir::combine(black_box(&shares), t).unwrap())
    });
    group.finish();
}

fn key_agreement(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let a = agree::KeyPair::generate(&mut rng);
    let b_pub = agree::KeyPair::generate(&mut rng).public();
    let mut group = c.benchmark_group("agree");
    group.bench_function("generate", |b| {
        b.iter(|| agree::KeyPair::generate(&mut rng))
    });
    group.bench_function("agree", |b| b.iter(|| a.agree(black_box(&b_pub)).unwrap()));
    let secret = a.agree(&b_pub).unwrap();
    group.bench_function("derive_seal_open_74B", |b| {
        let header = aead::Header {
            round: 1,
            sender: 0,
            recipient: 1,
        };
        let plaintext = [3u8; 2 * shamir::SHARE_LEN];
        b.iter(|| {
            let key = kdf::derive(&secret, kdf::Purpose::ShareKey, 1, 0, 1);
            let sealed = aead::seal(&key, &header, &plaintext, &mut rng).unwrap();
            aead::open(&key, &header, &sealed).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, masks, shamir_n100, key_agreement);
criterion_main!(benches);
