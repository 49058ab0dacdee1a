//! Synthetic events, the write-rate measurement (shared by
//! `daemoneye-bench db` and procmond's criterion bench) and the store's
//! footprint per short-lived exec (`daemoneye-bench store`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::{
    EventId, HashAlgorithm, ProcessContext, ProcessEvent, ProcessEventType, ProcessKey,
};

use crate::{LedgerMode, Store, StoreError, StoreWriter, WriterConfig};

/// Measures the lifecycle-event write rate: writes `events` synthetic
/// events ([`bench_events`]) in batches of 1,000 through
/// [`Store::write_events`] into a fresh database in `dir`, storing as
/// `ledger` says ([`LedgerMode::AlertsOnly`] is procmond standalone,
/// [`LedgerMode::EveryWrite`] the agent), and returns events per second of
/// wall time (opening and migrating the database is not timed). The file
/// `bench-write-rate.db` is left in `dir`.
#[allow(clippy::disallowed_types)] // a wall-clock measurement, outside any runtime
pub fn bench_write_rate(dir: &Path, events: usize, ledger: LedgerMode) -> Result<f64, StoreError> {
    let path = dir.join("bench-write-rate.db");
    remove_database(&path)?;
    let mut db = Store::new(&path)?.with_ledger(ledger);
    let batch = bench_events(events);
    let start = std::time::Instant::now();
    for chunk in batch.chunks(1_000) {
        db.write_events(chunk)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(events as f64 / secs)
}

/// What [`bench_bytes_per_exec`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    /// Short-lived processes written (a fork, an exec and an exit each).
    pub execs: usize,
    /// What they added to the database file, in bytes, once the WAL is
    /// checkpointed into it (the empty store's pages taken off).
    pub bytes: u64,
    /// The pages of each table and index (SQLite's `dbstat`), in bytes,
    /// largest first.
    pub tables: Vec<(String, u64)>,
}

impl Footprint {
    /// Bytes per short-lived exec.
    pub fn bytes_per_exec(&self) -> f64 {
        self.bytes as f64 / self.execs.max(1) as f64
    }
}

/// The store's footprint per short-lived exec: `execs` fork, exec and exit
/// triples ([`bench_events`], each with an event id) sent in batches of
/// 256 events through a
/// [`StoreWriter`] with its default config into a fresh store in `dir`
/// (`bench-footprint.db`, left there), the writer closed, the WAL
/// checkpointed into the file; the file's growth over the empty store's.
///
/// # Errors
/// Opening or querying the store.
pub async fn bench_bytes_per_exec(dir: &Path, execs: usize) -> Result<Footprint, StoreError> {
    let path = dir.join("bench-footprint.db");
    remove_database(&path)?;
    let store = Store::new(&path)?;
    let empty = file_bytes(&store)?;
    let writer = StoreWriter::spawn(store, WriterConfig::default())?;
    let events = bench_events(execs.saturating_mul(3));
    // Batches of 256 events: some processes' fork, exec and exit straddle
    // two batches, as the agent's batches do.
    for chunk in events.chunks(256) {
        writer.events(chunk.to_vec()).await;
    }
    writer.close().await;
    let store = Store::new(&path)?;
    let full = file_bytes(&store)?;
    let tables = store
        .conn()
        .prepare(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC, name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Footprint {
        execs,
        bytes: full.saturating_sub(empty),
        tables,
    })
}

/// The database's size once its WAL is checkpointed into it.
fn file_bytes(store: &Store) -> Result<u64, StoreError> {
    let conn = store.conn();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
}

/// Removes the database at `path` and its `-wal` and `-shm` files.
fn remove_database(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Create {
                    path: PathBuf::from(p),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// `count` synthetic lifecycle events shaped like a busy host's: fork, exec
/// and exit of one process in turn (so `processes` sees inserts and updates),
/// with argv, executable path, hash, metadata and process keys. The same as
/// [`bench_events_from`]`(0, count)`.
pub fn bench_events(count: usize) -> Vec<ProcessEvent> {
    bench_events_from(0, count)
}

/// Events `first..first + count` of the endless sequence [`bench_events`]
/// starts: later events are later in time and name newer processes, so a
/// bench that keeps writing sees the database grow as a host's would.
pub fn bench_events_from(first: usize, count: usize) -> Vec<ProcessEvent> {
    let boot = collector_core::BootId::from_bytes([0x5a; 16]);
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    (first..first.saturating_add(count))
        .map(|i| {
            let n = i / 3;
            let pid = 10_000 + u32::try_from(n % 4_000_000).unwrap_or(0);
            let start_ticks = 1_000_000 + n as u64;
            let event_type = match i % 3 {
                0 => ProcessEventType::Fork,
                1 => ProcessEventType::Exec,
                _ => ProcessEventType::Exit,
            };
            ProcessEvent {
                event_type,
                pid,
                ppid: Some(1),
                name: "python3".to_owned(),
                executable_path: Some("/usr/bin/python3.12".to_owned()),
                command_line: vec![
                    "/usr/bin/python3".to_owned(),
                    "-m".to_owned(),
                    "worker".to_owned(),
                    format!("--job={n}"),
                ],
                start_time: Some(base + Duration::from_millis(n as u64)),
                cpu_usage: Some(1.5),
                memory_usage: Some(12_345_678),
                executable_hash: Some("ab".repeat(32)),
                hash_algorithm: Some(HashAlgorithm::Blake3),
                user_id: Some(1000),
                accessible: true,
                file_exists: true,
                timestamp: base + Duration::from_micros(i as u64),
                process_key: Some(ProcessKey::new(boot, pid, start_ticks)),
                // The id the runtime gives every event (one run, in order).
                id: std::num::NonZeroU64::new(i as u64 + 1)
                    .map(|seq| EventId::new(0x1876_5432_10fe_dcba, seq)),
                exit_code: (event_type == ProcessEventType::Exit).then_some(0),
                state: Some('R'),
                context: Some(std::sync::Arc::new(ProcessContext {
                    cgroup: Some("/system.slice/cron.service".to_owned()),
                    ..ProcessContext::default()
                })),
                ..ProcessEvent::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// 4,751 bytes before the ledger took one entry per batch (three JSON
    /// copies of 1 KB each went); 1,640 since; 277 since a short-lived
    /// process is one row and its texts are stored once (schema 12).
    #[tokio::test]
    async fn a_short_lived_exec_costs_less_than_300_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = bench_bytes_per_exec(dir.path(), 3_000).await.unwrap();
        eprintln!("{:.0} bytes per exec: {:?}", f.bytes_per_exec(), f.tables);
        assert!(f.bytes_per_exec() < 300.0, "{f:?}");
        let ledger = f.tables.iter().find(|t| t.0 == "ledger").unwrap().1;
        // One entry of about 120 bytes a batch (JSON copies were 1 KB an event).
        assert!(ledger <= 8 * 4_096, "the ledger holds copies again: {f:?}");
    }

    #[test]
    fn bench_events_are_valid_events() {
        for e in bench_events(30) {
            collector_core::CollectionEvent::Process(e)
                .validate()
                .unwrap();
        }
    }
}
