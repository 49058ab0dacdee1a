//! Criterion benches of the hash engine, for regression tracking: SHA-256
//! of a 1 MiB file through the engine (uncached, unlimited budget) against
//! reading the same file with `std::fs` in the same chunk size, and a
//! cache hit. The project's own figures come from `daemoneye-bench hash`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Read as _;

use collector_core::HashAlgorithm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use daemoneye_hasher::{HashEngine, HasherConfig};

const SIZE: usize = 1 << 20;
const CHUNK: usize = 256 << 10;

fn engine(cache_capacity_entries: usize) -> HashEngine {
    HashEngine::new(HasherConfig {
        algorithms: vec![HashAlgorithm::Sha256],
        bytes_per_sec: 0,
        chunk_size_bytes: CHUNK as u64,
        cache_capacity_entries,
        ..HasherConfig::default()
    })
    .unwrap()
}

fn hashing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one_mib");
    let content: Vec<u8> = (0..SIZE).map(|i| u8::try_from(i % 251).unwrap()).collect();
    std::fs::write(&path, content).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let uncached = engine(0);
    g.bench_function("sha256_1mib_uncached", |b| {
        b.iter(|| rt.block_on(uncached.hash_file(&path)).unwrap());
    });
    g.bench_function("baseline_read_1mib", |b| {
        let mut buf = vec![0u8; CHUNK];
        b.iter(|| {
            let mut f = std::fs::File::open(&path).unwrap();
            let mut total = 0;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        });
    });
    g.finish();

    let cached = engine(16);
    rt.block_on(cached.hash_file(&path)).unwrap();
    c.bench_function("hash/cache_hit", |b| {
        b.iter(|| {
            let out = rt.block_on(cached.hash_file(&path)).unwrap();
            assert!(out.from_cache);
        });
    });
}

criterion_group!(benches, hashing);
criterion_main!(benches);
