//! `db`: the store (`daemoneye-store`, procmond's audit database and the
//! agent's alike) writing lifecycle events in batches of 1,000, as procmond
//! standalone stores them (`db.events_per_sec`) and each with its ledger
//! entry as the agent does (`db.ledgered_events_per_sec`), against a
//! same-run baseline that stores each event's JSON as one
//! blob in a bare table (the least any store of these events must do).

use std::time::Duration;

use daemoneye_store::bench::{bench_events, bench_write_rate};
use daemoneye_store::LedgerMode;
use tokio::time::Instant;

use crate::{median, report_f, report_ratio};

options! {
    /// Events written per repetition.
    events: usize = 100_000,
    /// Repetitions.
    reps: usize = 3,
}

/// The same events as JSON blobs, one prepared insert each, in batches of
/// 1,000 per transaction, WAL mode: the baseline.
fn baseline(dir: &std::path::Path, events: usize) -> anyhow::Result<f64> {
    let path = dir.join("baseline.db");
    let _ = std::fs::remove_file(&path);
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        [],
    )?;
    let batch = bench_events(events);
    let start = Instant::now();
    for chunk in batch.chunks(1_000) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
            for e in chunk {
                stmt.execute([serde_json::to_string(e)?])?;
            }
        }
        tx.commit()?;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let (ours, ledgered, base) = crate::in_temp_dir("db", |dir| async move {
        let (mut ours, mut ledgered, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.reps {
            ours.push(bench_write_rate(&dir, o.events, LedgerMode::AlertsOnly)?);
            ledgered.push(bench_write_rate(&dir, o.events, LedgerMode::EveryWrite)?);
            base.push(baseline(&dir, o.events)?);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok((median(ours), median(ledgered), median(base)))
    })?;
    report_f("db.events_per_sec", ours, 0, "events/s");
    report_f("db.ledgered_events_per_sec", ledgered, 0, "events/s");
    report_f("db.baseline_json_blob_events_per_sec", base, 0, "events/s");
    report_ratio("db.ratio_vs_json_blob", ours / base);
    Ok(())
}
