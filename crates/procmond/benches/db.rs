//! Write rate of the audit database: batches of 1,000 lifecycle events through
//! `DatabaseManager::write_events` (`daemoneye_store::Store`, as procmond
//! standalone stores them, and with a ledger entry each as the agent does) on a temp file (the issue asks for at least 50,000
//! events/s), and the same through the `StoreWriter` thread, against a
//! baseline measured in the same run: each event's JSON as one blob in a bare
//! table, same pragmas (the least any store of these events must do).
//!
//! Every iteration writes new events (later times, newer processes), so the
//! indexes grow as a host's would instead of re-inserting the same keys.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use daemoneye_store::bench::bench_events_from;
use daemoneye_store::{LedgerMode, StoreWriter, WriterConfig};
use procmond::DatabaseManager;

const BATCH: usize = 1_000;

/// Hands out consecutive ranges of the synthetic event sequence.
struct Sequence(usize);

impl Sequence {
    fn next(&mut self, count: usize) -> Vec<collector_core::ProcessEvent> {
        let events = bench_events_from(self.0, count);
        self.0 += count;
        events
    }
}

fn direct(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("db");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut baseline = rusqlite::Connection::open(dir.path().join("baseline.db")).unwrap();
    baseline.pragma_update(None, "journal_mode", "WAL").unwrap();
    baseline
        .pragma_update(None, "synchronous", "NORMAL")
        .unwrap();
    baseline
        .execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            [],
        )
        .unwrap();
    let mut seq = Sequence(0);
    group.bench_function("json_blob_baseline_1000", |b| {
        b.iter_batched(
            || seq.next(BATCH),
            |events| {
                let tx = baseline.transaction().unwrap();
                {
                    let mut stmt = tx
                        .prepare_cached("INSERT INTO events (body) VALUES (?1)")
                        .unwrap();
                    for e in &events {
                        stmt.execute([serde_json::to_string(e).unwrap()]).unwrap();
                    }
                }
                tx.commit().unwrap();
            },
            BatchSize::LargeInput,
        );
    });

    for (name, file, ledger) in [
        (
            "write_events_1000",
            "audit.db",
            Some(LedgerMode::AlertsOnly),
        ),
        ("write_events_ledgered_1000", "ledgered.db", None),
    ] {
        let mut db = DatabaseManager::new(dir.path().join(file)).unwrap();
        if let Some(mode) = ledger {
            db = db.with_ledger(mode);
        }
        let mut seq = Sequence(0);
        group.bench_function(name, |b| {
            b.iter_batched(
                || seq.next(BATCH),
                |events| db.write_events(&events).unwrap(),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// Through the writer thread: ten sends of 1,000 events, then one flush, so the
/// figure is throughput (thread hand-offs amortized), comparable to the above.
fn writer(c: &mut Criterion) {
    const SENDS: usize = 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("db");
    group.throughput(Throughput::Elements((BATCH * SENDS) as u64));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let db = DatabaseManager::new(dir.path().join("writer.db"))
        .unwrap()
        .with_ledger(LedgerMode::AlertsOnly);
    let handle = StoreWriter::spawn(db, WriterConfig::default()).unwrap();
    let mut seq = Sequence(0);
    group.bench_function("writer_send_10x1000_flush", |b| {
        b.iter_batched(
            || (0..SENDS).map(|_| seq.next(BATCH)).collect::<Vec<_>>(),
            |batches| {
                runtime.block_on(async {
                    for batch in batches {
                        handle.events(batch).await;
                    }
                    handle.flush().await.unwrap();
                });
            },
            BatchSize::LargeInput,
        );
    });
    let stats = runtime.block_on(handle.close());
    assert_eq!(stats.events_dropped(), 0);
    group.finish();
}

criterion_group!(benches, direct, writer);
criterion_main!(benches);
