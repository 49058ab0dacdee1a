//! Synthetic events and the write-rate measurement, shared by
//! `daemoneye-bench db` and procmond's criterion bench.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::{HashAlgorithm, ProcessContext, ProcessEvent, ProcessEventType, ProcessKey};

use crate::{LedgerMode, Store, StoreError};

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
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
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
    let mut db = Store::new(&path)?.with_ledger(ledger);
    let batch = bench_events(events);
    let start = std::time::Instant::now();
    for chunk in batch.chunks(1_000) {
        db.write_events(chunk)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(events as f64 / secs)
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

    #[test]
    fn bench_events_are_valid_events() {
        for e in bench_events(30) {
            collector_core::CollectionEvent::Process(e)
                .validate()
                .unwrap();
        }
    }
}
