//! The audit database: migrations, file properties, round trips, the writer's
//! durability on close and its behaviour when writes fail.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use collector_core::{BootId, HashAlgorithm, ProcessEvent, ProcessEventType, ProcessKey};
use procmond::db::{DatabaseManager, DbError, DbWriter, DbWriterConfig, SCHEMA_VERSION};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn time(ns: i64) -> SystemTime {
    let abs = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + abs
    } else {
        SystemTime::UNIX_EPOCH - abs
    }
}

fn key(pid: u32, start_ticks: u64) -> ProcessKey {
    ProcessKey::new(
        "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab"
            .parse::<BootId>()
            .unwrap(),
        pid,
        start_ticks,
    )
}

/// An event with every field set, including the awkward ones.
fn rich(pid: u32, event_type: ProcessEventType) -> ProcessEvent {
    let mut metadata = BTreeMap::new();
    metadata.insert("cgroup".to_owned(), "/user.slice/ünï/☃".to_owned());
    metadata.insert("empty".to_owned(), String::new());
    metadata.insert("quote\"key".to_owned(), "line\nbreak\ttab".to_owned());
    ProcessEvent {
        event_type,
        pid,
        ppid: Some(1),
        name: "naïve-名前".to_owned(),
        executable_path: Some("/opt/ü/bin/tool (deleted)".to_owned()),
        command_line: vec![
            "tool".to_owned(),
            String::new(),
            "--flag=✓".to_owned(),
            "\"quoted\" 'single'".to_owned(),
            "😀".to_owned(),
            String::new(),
        ],
        start_time: Some(time(1_750_000_000_123_456_789)),
        cpu_usage: Some(12.345_678_9),
        memory_usage: Some(987_654_321),
        executable_hash: Some("0123456789abcdef".repeat(4)),
        hash_algorithm: Some(HashAlgorithm::Sha256),
        user_id: Some(1_000),
        accessible: false,
        file_exists: false,
        timestamp: time(1_750_000_100_000_000_001),
        platform_metadata: metadata,
        process_key: Some(key(pid, 4_242)),
        exit_code: (event_type == ProcessEventType::Exit).then_some(-9),
    }
}

#[test]
fn fresh_database_gets_the_latest_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let db = DatabaseManager::new(&path).unwrap();
    assert_eq!(db.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::from(SCHEMA_VERSION));
    let tables: Vec<String> = raw(&path)
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "lifecycle_events",
            "process_snapshots",
            "processes",
            "snapshots"
        ]
    );
}

#[test]
fn reopening_is_idempotent_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = DatabaseManager::new(&path).unwrap();
    db.write_events(&[rich(10, ProcessEventType::Exec)])
        .unwrap();
    drop(db);
    for _ in 0..3 {
        let db = DatabaseManager::new(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
        assert_eq!(db.count_events().unwrap(), 1);
    }
}

#[test]
fn database_from_a_newer_build_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    drop(DatabaseManager::new(&path).unwrap());
    let newer = i64::from(SCHEMA_VERSION) + 1;
    raw(&path)
        .pragma_update(None, "user_version", newer)
        .unwrap();
    match DatabaseManager::new(&path) {
        Err(DbError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (newer, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, newer);
}

#[test]
fn database_is_in_wal_mode_and_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = DatabaseManager::new(&path).unwrap();
    db.write_events(&[rich(10, ProcessEventType::Exec)])
        .unwrap();
    let mode: String = raw(&path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for name in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
}

#[test]
fn snapshot_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = DatabaseManager::new(dir.path().join("audit.db")).unwrap();
    let first = vec![rich(30, ProcessEventType::Snapshot)];
    let first_id = db.write_snapshot(&first).unwrap();

    let mut bare = ProcessEvent::new(20, "");
    bare.timestamp = time(-5);
    let second = vec![bare, rich(40, ProcessEventType::Snapshot)];
    let id = db.write_snapshot(&second).unwrap();
    assert!(id > first_id);

    let rows = db.latest_snapshot().unwrap();
    assert!(rows.iter().all(|r| r.snapshot_id == id));
    let back: Vec<ProcessEvent> = rows.into_iter().map(|r| r.process).collect();
    assert_eq!(back, second);

    let info = db.latest_snapshot_info().unwrap().unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.process_count, 2);
    assert_eq!(info.taken_at, second[1].timestamp);

    // Snapshots feed the last-known state too.
    let rec = db.process_by_key(&key(40, 4_242)).unwrap().unwrap();
    assert_eq!(rec.latest, second[1]);
    assert_eq!(rec.exited_at, None);
}

#[test]
fn lifecycle_events_round_trip_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = DatabaseManager::new(dir.path().join("audit.db")).unwrap();
    let events = vec![
        rich(50, ProcessEventType::Fork),
        rich(50, ProcessEventType::Exec),
        rich(51, ProcessEventType::ExecutableDeleted),
        rich(50, ProcessEventType::Exit),
        ProcessEvent::default(),
    ];
    assert_eq!(db.write_events(&events).unwrap(), events.len());
    assert_eq!(db.count_events().unwrap(), 5);

    let stored = db.recent_events(100).unwrap();
    assert!(stored.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let back: Vec<ProcessEvent> = stored.into_iter().rev().map(|s| s.event).collect();
    assert_eq!(back, events);
    assert_eq!(back[3].exit_code, Some(-9));

    assert_eq!(db.recent_events(2).unwrap().len(), 2);
    let rec = db.process_by_key(&key(50, 4_242)).unwrap().unwrap();
    assert_eq!(rec.latest.event_type, ProcessEventType::Exit);
    assert_eq!(rec.latest.exit_code, Some(-9));
    assert_eq!(rec.exited_at, Some(events[3].timestamp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_sent_before_close_is_on_disk() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let config = DbWriterConfig {
        queue_events: 500,
        batch_events: 300,
        ..DbWriterConfig::default()
    };
    let (handle, join) = DbWriter::spawn(DatabaseManager::new(&path).unwrap(), config);
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut pid = p * PER_PRODUCER + 1;
            let end = pid + PER_PRODUCER;
            let mut size = 1;
            while pid < end {
                let n = size.min(end - pid);
                let batch = (pid..pid + n)
                    .map(|i| rich(i, ProcessEventType::Exec))
                    .collect();
                handle.send(batch).await.unwrap();
                pid += n;
                size = size % 97 + 13;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = handle.close().await.unwrap();
    let total = u64::from(PRODUCERS * PER_PRODUCER);
    assert_eq!(stats.events_accepted, total);
    assert_eq!(stats.events_written, total);
    assert_eq!(stats.events_dropped(), 0);
    assert_eq!(stats.events_queued(), 0);
    assert_eq!(stats.write_errors, 0);
    drop(join.await.unwrap());

    // A fresh connection sees all of it, every pid once.
    let (count, distinct): (i64, i64) = raw(&path)
        .query_row(
            "SELECT count(*), count(DISTINCT pid) FROM lifecycle_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let expected = i64::try_from(total).unwrap();
    assert_eq!((count, distinct), (expected, expected));
    assert_eq!(
        DatabaseManager::new(&path).unwrap().count_events().unwrap(),
        total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_counts_failed_writes_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (handle, join) = DbWriter::spawn(
        DatabaseManager::new(&path).unwrap(),
        DbWriterConfig::default(),
    );
    handle
        .send(vec![rich(1, ProcessEventType::Exec)])
        .await
        .unwrap();
    handle.flush().await.unwrap();

    // Pull the table out from under the writer: every write now fails.
    raw(&path)
        .execute_batch("DROP TABLE lifecycle_events")
        .unwrap();
    let batch: Vec<_> = (2..=6).map(|p| rich(p, ProcessEventType::Exec)).collect();
    handle.send(batch).await.unwrap();
    handle.flush().await.unwrap();
    let stats = handle.stats();
    assert_eq!(stats.write_errors, 2, "tried, retried once: {stats:?}");
    assert_eq!(stats.events_dropped_write_failed, 5);
    assert_eq!(stats.events_written, 1);

    // Put it back: the writer is still alive and writes again.
    raw(&path)
        .execute_batch(
            "CREATE TABLE lifecycle_events (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             event_type TEXT NOT NULL, process_key TEXT, pid INTEGER NOT NULL, ppid INTEGER, \
             name TEXT NOT NULL, exe TEXT, argv TEXT NOT NULL, uid INTEGER, start_time INTEGER, \
             cpu_percent REAL, rss_bytes INTEGER, exe_hash TEXT, hash_algorithm TEXT, \
             accessible INTEGER NOT NULL, file_exists INTEGER NOT NULL, exit_code INTEGER, \
             metadata TEXT NOT NULL, observed_at INTEGER NOT NULL) STRICT",
        )
        .unwrap();
    handle
        .send(vec![rich(7, ProcessEventType::Exit)])
        .await
        .unwrap();
    let stats = handle.close().await.unwrap();
    assert_eq!(stats.events_written, 2);
    assert_eq!(
        stats.events_accepted,
        stats.events_written + stats.events_dropped_write_failed
    );
    let db = join.await.unwrap();
    assert_eq!(db.count_events().unwrap(), 1);
}

fn text() -> impl Strategy<Value = String> {
    // Every scalar value, NUL and controls included.
    proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
}

fn process_event() -> impl Strategy<Value = ProcessEvent> {
    let event_type = prop_oneof![
        Just(ProcessEventType::Snapshot),
        Just(ProcessEventType::Start),
        Just(ProcessEventType::Fork),
        Just(ProcessEventType::Exec),
        Just(ProcessEventType::Exit),
        Just(ProcessEventType::Modified),
        Just(ProcessEventType::PidReused),
        Just(ProcessEventType::ExecutableDeleted),
        Just(ProcessEventType::ExecutableReplaced),
        Just(ProcessEventType::StartTimeAnomaly),
    ];
    let algorithm = prop_oneof![Just(HashAlgorithm::Sha256), Just(HashAlgorithm::Blake3)];
    let identity = (
        event_type,
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        text(),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..6),
        proptest::option::of(any::<i64>()),
    );
    let measures = (
        proptest::option::of(any::<f64>().prop_filter("finite", |f| f.is_finite())),
        proptest::option::of(0..=i64::MAX as u64),
        proptest::option::of(text()),
        proptest::option::of(algorithm),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        any::<bool>(),
    );
    let context = (
        any::<i64>(),
        proptest::collection::btree_map(text(), text(), 0..4),
        proptest::option::of((any::<[u8; 16]>(), any::<u32>(), any::<u64>())),
        proptest::option::of(any::<i32>()),
    );
    (identity, measures, context).prop_map(
        |(
            (event_type, pid, ppid, name, exe, argv, start),
            (cpu, rss, hash, alg, uid, accessible, file_exists),
            (ts, metadata, key, exit_code),
        )| ProcessEvent {
            event_type,
            pid,
            ppid,
            name,
            executable_path: exe,
            command_line: argv,
            start_time: start.map(time),
            cpu_usage: cpu,
            memory_usage: rss,
            executable_hash: hash,
            hash_algorithm: alg,
            user_id: uid,
            accessible,
            file_exists,
            timestamp: time(ts),
            platform_metadata: metadata,
            process_key: key.map(|(b, p, s)| ProcessKey::new(BootId::from_bytes(b), p, s)),
            exit_code,
        },
    )
}

#[test]
fn arbitrary_events_round_trip_through_the_database() {
    let dir = tempfile::tempdir().unwrap();
    // One database for every case: opening one per case would dominate.
    let db = RefCell::new(DatabaseManager::new(dir.path().join("audit.db")).unwrap());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    runner
        .run(
            &proptest::collection::vec(process_event(), 1..8),
            |events| {
                let mut db = db.borrow_mut();
                db.write_events(&events).unwrap();
                let back: Vec<ProcessEvent> = db
                    .recent_events(events.len())
                    .unwrap()
                    .into_iter()
                    .rev()
                    .map(|s| s.event)
                    .collect();
                prop_assert_eq!(back, events);
                Ok(())
            },
        )
        .unwrap();
}
