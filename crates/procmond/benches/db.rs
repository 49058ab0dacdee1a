//! Write rate of the audit database: batches of 1,000 lifecycle events through
//! `DatabaseManager::write_events` on a temp file (the issue asks for at least
//! 50,000 events/s), against a baseline measured in the same run: the same
//! number of rows inserted bare (no JSON, no upsert, one index) on the same
//! kind of file and pragmas.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use procmond::db::{bench_events, DatabaseManager, DbWriter, DbWriterConfig};

const BATCH: usize = 1_000;

fn write_events(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("db");
    group.throughput(Throughput::Elements(BATCH as u64));

    // Baseline: bare SQLite, same pragmas, one narrow table.
    let baseline = rusqlite::Connection::open(dir.path().join("baseline.db")).unwrap();
    baseline
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE t (id INTEGER PRIMARY KEY, pid INTEGER, name TEXT);
             CREATE INDEX t_pid ON t (pid);",
        )
        .unwrap();
    let mut baseline = baseline;
    group.bench_function("bare_insert_baseline", |b| {
        b.iter(|| {
            let tx = baseline.transaction().unwrap();
            {
                let mut stmt = tx
                    .prepare_cached("INSERT INTO t (pid, name) VALUES (?1, ?2)")
                    .unwrap();
                for i in 0..BATCH {
                    stmt.execute(rusqlite::params![i, "python3"]).unwrap();
                }
            }
            tx.commit().unwrap();
        });
    });

    let mut db = DatabaseManager::new(dir.path().join("audit.db")).unwrap();
    let events = bench_events(BATCH * 64);
    let mut chunks = events.chunks(BATCH).cycle();
    group.bench_function("write_events_1000", |b| {
        b.iter(|| db.write_events(chunks.next().unwrap()).unwrap());
    });

    // Through the writer task: send + flush of one batch, end to end.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let db = DatabaseManager::new(dir.path().join("writer.db")).unwrap();
    let (handle, join) = runtime.block_on(async { DbWriter::spawn(db, DbWriterConfig::default()) });
    group.bench_function("writer_send_flush_1000", |b| {
        b.iter_batched(
            || events[..BATCH].to_vec(),
            |batch| {
                runtime.block_on(async {
                    handle.send(batch).await.unwrap();
                    handle.flush().await.unwrap();
                });
            },
            BatchSize::SmallInput,
        );
    });
    let stats = runtime.block_on(handle.close()).unwrap();
    assert_eq!(stats.events_dropped(), 0);
    runtime.block_on(join).unwrap();
    group.finish();
}

criterion_group!(benches, write_events);
criterion_main!(benches);
