//! The store: migrations (a legacy agent store included), file properties,
//! round trips, the writer's durability on close and its behaviour when
//! writes fail.
#![allow(clippy::unwrap_used, clippy::unnecessary_literal_bound, missing_docs)]

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use collector_core::{BootId, ProcessEvent, ProcessEventType, ProcessKey};

use daemoneye_store::alert::{Alert, AlertProcess, AlertRule, Severity};
use daemoneye_store::{ledger, Store, StoreError, StoreWriter, WriterConfig, SCHEMA_VERSION};
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

/// A store at `audit.db` in a fresh directory holding one exec event; the
/// directory, the path and the store.
fn with_one_exec() -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = Store::new(&path).unwrap();
    db.write_events(&[rich(10, ProcessEventType::Exec)])
        .unwrap();
    (dir, path, db)
}

/// An event with every field set, including the awkward ones.
fn rich(pid: u32, event_type: ProcessEventType) -> ProcessEvent {
    let mut e = collector_core::testing::every_field_process_event();
    e.event_type = event_type;
    e.pid = pid;
    e.process_key = Some(key(pid, 4_242));
    e.lifecycle_mut().previous_key = Some(key(pid, 1));
    e.exit_code = (event_type == ProcessEventType::Exit).then_some(-9);
    "naïve-名前".clone_into(&mut e.name);
    e.executable_path = Some("/opt/ü/bin/tool (deleted)".to_owned());
    e.command_line = ["tool", "", "--flag=✓", "\"quoted\" 'single'", "😀", ""]
        .map(str::to_owned)
        .to_vec();
    e.start_time = Some(time(1_750_000_000_123_456_789));
    e.timestamp = time(1_750_000_100_000_000_001);
    e.cpu_usage = Some(12.345_678_9);
    e.accessible = false;
    e.cpu_ticks = Some(u64::MAX);
    let mut context = e.context().clone();
    context.cgroup = Some("/user.slice/ünï/☃".to_owned());
    context.mnt_ns = None;
    e.context = Some(std::sync::Arc::new(context));
    e.platform_metadata = [
        ("empty", ""),
        ("quote\"key", "line\nbreak\ttab"),
        ("ünï", "☃"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    e
}

#[test]
fn fresh_database_gets_the_latest_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let db = Store::new(&path).unwrap();
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
            "alerts",
            "connections",
            "file_events",
            "ledger",
            "outbox",
            "outbox_state",
            "performance",
            "process_event_rows",
            "process_snapshots",
            "processes",
            "snapshots",
            "strings"
        ]
    );
}

#[test]
fn reopening_is_idempotent_and_keeps_data() {
    let (_dir, path, db) = with_one_exec();
    drop(db);
    for _ in 0..3 {
        let db = Store::new(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
        assert_eq!(db.count_events().unwrap(), 1);
    }
}

#[test]
fn database_from_a_newer_build_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    drop(Store::new(&path).unwrap());
    let newer = i64::from(SCHEMA_VERSION) + 1;
    raw(&path)
        .pragma_update(None, "user_version", newer)
        .unwrap();
    match Store::new(&path) {
        Err(StoreError::NewerSchema { found, supported }) => {
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
    let (dir, path, _db) = with_one_exec();
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
    let mut db = Store::new(dir.path().join("audit.db")).unwrap();
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

    // Snapshots feed the last-known state too (a state, not an event: no id).
    let rec = db.process_by_key(&key(40, 4_242)).unwrap().unwrap();
    assert_eq!(
        rec.latest,
        ProcessEvent {
            id: None,
            ..second[1].clone()
        }
    );
    assert_eq!(rec.exited_at, None);
}

#[test]
fn lifecycle_events_round_trip_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Store::new(dir.path().join("audit.db")).unwrap();
    let events = vec![
        rich(50, ProcessEventType::Fork),
        rich(50, ProcessEventType::Exec),
        rich(51, ProcessEventType::ExecutableDeleted),
        rich(50, ProcessEventType::Exit),
        ProcessEvent::default(),
    ];
    // One batch each: in one, the fork and exit of 50 would join its exec's
    // row (see `a_short_lived_process_is_one_row_and_every_event_counts`).
    for e in &events {
        assert_eq!(db.write_events(std::slice::from_ref(e)).unwrap(), 1);
    }
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

/// A fork, exec and exit in one batch are one row: the exec's facts, the
/// exit's code, the fork's and exit's times and ids; each event counts.
#[test]
fn a_short_lived_process_is_one_row_and_every_event_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = Store::new(&path).unwrap();
    let id = |seq: u64| {
        Some(collector_core::EventId::new(
            0x1234,
            std::num::NonZeroU64::new(seq).unwrap(),
        ))
    };
    let mut fork = rich(60, ProcessEventType::Fork);
    fork.id = id(7);
    let mut exec = rich(60, ProcessEventType::Exec);
    exec.id = id(8);
    exec.timestamp = fork.timestamp + Duration::from_millis(1);
    let mut exit = rich(60, ProcessEventType::Exit);
    exit.id = id(9);
    exit.timestamp = exec.timestamp + Duration::from_millis(1);
    db.write_events(&[fork.clone(), exec.clone(), exit.clone()])
        .unwrap();
    assert_eq!(db.count_events().unwrap(), 3);
    let stored = db.recent_events(10).unwrap();
    assert_eq!(stored.len(), 1);
    let row = &stored[0];
    assert_eq!(
        row.event,
        ProcessEvent {
            exit_code: exit.exit_code,
            ..exec.clone()
        }
    );
    assert_eq!(row.forked_at, Some(fork.timestamp));
    assert_eq!(row.exited_at, Some(exit.timestamp));
    let ids = raw(&path)
        .query_row(
            "SELECT event_id, fork_event_id, exit_event_id FROM process_events",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .unwrap();
    let text = |e: &ProcessEvent| e.id.unwrap().to_string();
    assert_eq!(ids, (text(&exec), text(&fork), text(&exit)));
    // The row and its texts are on the ledger: editing a shared text or the
    // exit's time is caught.
    assert_eq!(db.verify_ledger().unwrap().entries, 1);
    drop(db);
    for edit in [
        "UPDATE strings SET value = '/tmp/x' WHERE value LIKE '/opt/%'",
        "UPDATE process_event_rows SET exited_at = exited_at + 1",
    ] {
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        raw(&copy).execute_batch(edit).unwrap();
        let err = Store::open_file_read_only(&copy)
            .unwrap()
            .verify_ledger()
            .unwrap_err();
        assert!(err.to_string().contains("edited"), "{edit}: {err}");
        std::fs::remove_file(&copy).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_sent_before_close_is_on_disk() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let config = WriterConfig {
        queue_writes: 8,
        batch_events: 300,
        ..WriterConfig::default()
    };
    let handle = StoreWriter::spawn(Store::new(&path).unwrap(), config).unwrap();
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
                handle.events(batch).await;
                pid += n;
                size = size % 97 + 13;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = handle.close().await;
    let total = u64::from(PRODUCERS * PER_PRODUCER);
    assert_eq!(stats.events_accepted.get(), total);
    assert_eq!(stats.events_written.get(), total);
    assert_eq!(stats.lifecycle_events.get(), total);
    assert_eq!(stats.events_dropped(), 0);
    assert_eq!(stats.events_queued(), 0);
    assert_eq!(stats.write_errors.get(), 0);

    // A fresh connection sees all of it, every pid once.
    let (count, distinct): (i64, i64) = raw(&path)
        .query_row(
            "SELECT count(*), count(DISTINCT pid) FROM process_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let expected = i64::try_from(total).unwrap();
    assert_eq!((count, distinct), (expected, expected));
    let db = Store::new(&path).unwrap();
    assert_eq!(db.count_events().unwrap(), total);
    // Every row is on the ledger, each batch written under one entry.
    let (ledgered, batches): (i64, i64) = raw(&path)
        .query_row(
            "SELECT count(ledger_seq), count(DISTINCT ledger_seq) FROM process_events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(ledgered, expected);
    assert_eq!(db.verify_ledger().unwrap().entries, batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_held_and_land_once_the_store_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let handle = StoreWriter::spawn(Store::new(&path).unwrap(), WriterConfig::default()).unwrap();
    handle.events(vec![rich(1, ProcessEventType::Exec)]).await;
    handle.flush().await.unwrap();

    // Pull the table out from under the writer: every write now fails.
    let create = pull_events_table(&path);
    let batch: Vec<_> = (2..=6).map(|p| rich(p, ProcessEventType::Exec)).collect();
    handle.events(batch).await;
    handle.flush().await.unwrap();
    let stats = handle.stats();
    let get = |c: &collector_core::metrics::Counter| c.get();
    assert_eq!(
        get(&stats.write_errors),
        2,
        "tried, retried once: {stats:?}"
    );
    assert_eq!(
        get(&stats.events_dropped_write_failed),
        0,
        "held, not dropped"
    );
    assert_eq!(stats.held.get(), 5);
    assert_eq!(stats.failing.get(), 1, "failing while writes are held");
    assert_eq!(get(&stats.failures), 0);
    assert_eq!(get(&stats.events_written), 1);

    // Put it back: the held writes land, in order, before the newer one.
    raw(&path).execute_batch(&create).unwrap();
    handle.events(vec![rich(7, ProcessEventType::Exit)]).await;
    let stats = handle.close().await;
    assert_eq!(get(&stats.events_written), 7);
    assert_eq!(stats.failing.get(), 0, "a commit clears it");
    assert_eq!(stats.held.get(), 0);
    assert_eq!(get(&stats.events_accepted), get(&stats.events_written));
    assert_eq!(get(&stats.gaps_recorded), 0, "nothing was lost");
    let db = Store::new(&path).unwrap();
    let pids = stored_pids(&db);
    assert_eq!(pids, [2, 3, 4, 5, 6, 7], "in the order they were sent");
    // One entry for each transaction's run of batches: the first event's,
    // then the five held with the last, or after them.
    let entries = ledger::verify(&raw(&path)).unwrap().entries;
    assert_eq!(
        u64::try_from(entries).unwrap(),
        get(&stats.transactions_committed)
    );
    assert!((2..=3).contains(&entries), "{entries}");
    // The table this test dropped took the first event's row with it (and
    // the table made again gave its id to the next row): the store's
    // verification says so, naming that entry.
    match db.verify_ledger() {
        Err(StoreError::Ledger(ledger::LedgerError::Broken { seq: 1, reason })) => {
            assert!(reason.contains("edited"), "{reason}");
        }
        other => panic!("the deleted row went unnoticed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_over_their_bound_are_dropped_counted_and_recorded_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let config = WriterConfig {
        max_held_events: 3,
        ..WriterConfig::default()
    };
    let handle = StoreWriter::spawn(Store::new(&path).unwrap(), config).unwrap();
    handle.flush().await.unwrap();
    let create = pull_events_table(&path);
    // Two batches of two: the older is dropped to keep within the bound.
    handle
        .events((1..=2).map(|p| rich(p, ProcessEventType::Exec)).collect())
        .await;
    handle
        .events((3..=4).map(|p| rich(p, ProcessEventType::Exec)).collect())
        .await;
    handle.flush().await.unwrap();
    let stats = handle.stats();
    let get = |c: &collector_core::metrics::Counter| c.get();
    assert_eq!(get(&stats.events_dropped_write_failed), 2);
    assert_eq!(get(&stats.failures), 1);
    assert_eq!(stats.held.get(), 2);

    raw(&path).execute_batch(&create).unwrap();
    let stats = handle.close().await;
    assert_eq!(get(&stats.events_written), 2);
    assert_eq!(
        get(&stats.events_accepted),
        get(&stats.events_written) + get(&stats.events_dropped_write_failed)
    );
    assert_eq!(get(&stats.gaps_recorded), 1);
    let db = Store::new(&path).unwrap();
    let gap = db
        .query("SELECT content FROM ledger WHERE kind = 'gap'")
        .unwrap();
    assert_eq!(gap.rows.len(), 1, "{gap:?}");
    let gap: daemoneye_store::Gap = serde_json::from_str(gap.rows[0][0].as_str().unwrap()).unwrap();
    assert_eq!((gap.events_lost, gap.writes_lost), (2, 1));
    assert!(gap.first_lost_at > 0 && gap.last_lost_at >= gap.first_lost_at);
    db.verify_ledger().unwrap();
}

/// A real full disk: a small tmpfs filled up. Writes are held while it is
/// full and land, all of them, once there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_writes_and_they_land_when_room_returns() {
    use std::io::Write as _;

    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs (a disk to fill) needs root");
        return;
    }
    let _unmount = Unmount(mnt.path());
    let path = mnt.path().join("audit.db");
    let handle = StoreWriter::spawn(Store::new(&path).unwrap(), WriterConfig::default()).unwrap();
    handle.events(vec![rich(1, ProcessEventType::Exec)]).await;
    handle.flush().await.unwrap();

    // Fill the disk.
    let filler = mnt.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    drop(f);

    let sent = 300u32;
    for p in 2..=sent {
        handle.events(vec![rich(p, ProcessEventType::Exec)]).await;
    }
    handle.flush().await.unwrap();
    let stats = handle.stats();
    let get = |c: &collector_core::metrics::Counter| c.get();
    assert_eq!(stats.failing.get(), 1, "a full disk is a failing store");
    assert!(stats.held.get() > 0, "{stats:?}");
    assert_eq!(get(&stats.events_dropped_write_failed), 0);

    // Room again: everything held lands without another write to prompt it.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.held.get() > 0 || stats.failing.get() == 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held writes never landed: {stats:?}"
        );
        // The writer retries on its own schedule (backoff from 100 ms).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = handle.close().await;
    assert_eq!(get(&stats.events_written), u64::from(sent));
    assert_eq!(get(&stats.gaps_recorded), 0);
    let db = Store::new(&path).unwrap();
    assert_eq!(db.count_events().unwrap(), u64::from(sent));
    db.verify_ledger().unwrap();
}

/// The pids of the (at most 10) stored lifecycle events, oldest first.
fn stored_pids(db: &Store) -> Vec<u32> {
    db.recent_events(10)
        .unwrap()
        .into_iter()
        .rev()
        .map(|e| e.event.pid)
        .collect()
}

/// Pulls `process_events` out from under a writer (every write then
/// fails); returns the SQL that puts it back.
fn pull_events_table(path: &Path) -> String {
    let create: String = raw(path)
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'process_event_rows'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    raw(path)
        .execute_batch("DROP TABLE process_event_rows")
        .unwrap();
    create
}

/// The agent's store as builds before the versioned schema wrote it.
const LEGACY_AGENT_SCHEMA: &str = "CREATE TABLE alerts (
    id INTEGER PRIMARY KEY, rule_id TEXT NOT NULL, rule_name TEXT NOT NULL,
    severity TEXT NOT NULL, pid INTEGER NOT NULL, process_key TEXT, dedup_key TEXT NOT NULL,
    observed_at INTEGER NOT NULL, raised_at INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX alerts_raised ON alerts (raised_at);
CREATE TABLE processes (
    pid INTEGER PRIMARY KEY, process_key TEXT, ppid INTEGER, name TEXT NOT NULL, exe TEXT,
    argv TEXT NOT NULL, uid INTEGER, accessible INTEGER NOT NULL, file_exists INTEGER NOT NULL,
    exe_hash TEXT, start_time INTEGER, last_event TEXT NOT NULL, last_seen INTEGER NOT NULL
);
CREATE TABLE process_events (
    id INTEGER PRIMARY KEY, event_type TEXT NOT NULL, pid INTEGER NOT NULL, ppid INTEGER,
    process_key TEXT, name TEXT NOT NULL, exe TEXT, argv TEXT NOT NULL, uid INTEGER,
    exit_code INTEGER, observed_at INTEGER NOT NULL, ledger_seq INTEGER NOT NULL
);
CREATE INDEX process_events_observed ON process_events (observed_at);
CREATE INDEX process_events_pid ON process_events (pid);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, content TEXT NOT NULL,
    prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL
)";

struct LegacyRule;

impl AlertRule for LegacyRule {
    fn id(&self) -> &str {
        "legacy-rule"
    }
    fn name(&self) -> &str {
        "a rule from before"
    }
    fn severity(&self) -> Severity {
        Severity::Critical
    }
    fn mitre(&self) -> &[String] {
        &[]
    }
}

/// Writes an agent store the way builds before the versioned schema did:
/// two lifecycle events and an alert, each with its ledger entry, and a
/// pid-keyed process.
fn write_legacy_agent_store(path: &Path) -> (Vec<ProcessEvent>, Alert) {
    let mut conn = raw(path);
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(LEGACY_AGENT_SCHEMA).unwrap();
    // Builds of then gave events no id.
    let unnamed = |t| ProcessEvent {
        id: None,
        ..rich(60, t)
    };
    let events = vec![
        unnamed(ProcessEventType::Exec),
        unnamed(ProcessEventType::Exit),
    ];
    let alert = Alert::new(
        &LegacyRule,
        AlertProcess::from_event(&events[0], None),
        events[0].timestamp,
    );
    let tx = conn.transaction().unwrap();
    for e in &events {
        let seq = ledger::append(&tx, "process_event", &serde_json::to_string(e).unwrap()).unwrap();
        tx.execute(
            "INSERT INTO process_events (event_type, pid, ppid, process_key, name, exe, argv, uid, exit_code, observed_at, ledger_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                e.event_type.as_str(),
                e.pid,
                e.ppid,
                e.process_key.map(|k| k.to_string()),
                e.name,
                e.executable_path,
                serde_json::to_string(&e.command_line).unwrap(),
                e.user_id,
                e.exit_code,
                1_750_000_100_000_000_001_i64,
                seq
            ],
        )
        .unwrap();
    }
    let body = serde_json::to_string(&alert).unwrap();
    tx.execute(
        "INSERT INTO alerts (rule_id, rule_name, severity, pid, process_key, dedup_key, observed_at, raised_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        rusqlite::params![
            alert.rule_id,
            alert.rule_name,
            alert.severity.to_string(),
            alert.process.pid,
            alert.process.process_key,
            alert.dedup_key,
            alert.observed_at,
            alert.raised_at,
            body
        ],
    )
    .unwrap();
    ledger::append(&tx, "alert", &body).unwrap();
    tx.execute(
        "INSERT INTO processes (pid, process_key, name, argv, accessible, file_exists, last_event, last_seen)
         VALUES (60, NULL, 'old', '[]', 1, 1, 'exec', 1)",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
    (events, alert)
}

#[test]
fn a_legacy_agent_store_is_adopted_with_its_alerts_events_and_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(daemoneye_store::FILE);
    let (events, alert) = write_legacy_agent_store(&path);
    let before = ledger::verify(&raw(&path)).unwrap();
    assert_eq!(before.entries, 3);

    // A reader cannot migrate: it says so instead of misreading.
    assert!(matches!(
        Store::open_read_only(dir.path()),
        Err(StoreError::OlderSchema { found: 0, .. })
    ));

    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
    // The alert and the ledger survive, and the chain still verifies to
    // the same head.
    assert_eq!(store.recent_alerts(10).unwrap(), vec![alert]);
    assert_eq!(store.verify_ledger().unwrap(), before);
    // The lifecycle events are in the one lifecycle table, the fields the
    // old table lacked recovered from their ledger entries.
    let stored: Vec<ProcessEvent> = store
        .recent_events(10)
        .unwrap()
        .into_iter()
        .rev()
        .map(|s| s.event)
        .collect();
    assert_eq!(stored.len(), 2);
    for (back, e) in stored.iter().zip(&events) {
        assert_eq!(back.event_type, e.event_type);
        assert_eq!(back.process_key, e.process_key);
        assert_eq!(back.command_line, e.command_line);
        assert_eq!(back.platform_metadata, e.platform_metadata);
        assert_eq!(back.executable_hash, e.executable_hash);
        assert_eq!(back.hash_algorithm, e.hash_algorithm);
        assert_eq!(back.accessible, e.accessible);
        assert_eq!(back.exit_code, e.exit_code);
    }
    let joined = store
        .query("SELECT count(*) FROM process_events e JOIN ledger l ON l.seq = e.ledger_seq WHERE l.kind = 'process_event'")
        .unwrap();
    assert_eq!(joined.rows[0][0], 2);
    // The pid-keyed processes table is gone; the new one starts empty and
    // is keyed by the process key.
    assert!(store.processes().unwrap().is_empty());
    store
        .write_events(&[rich(61, ProcessEventType::Exec)])
        .unwrap();
    assert_eq!(store.processes().unwrap()[0].pid, 61);
    assert_eq!(store.verify_ledger().unwrap().entries, 4);
    drop(store);
    // Reopening is a no-op; now readers may open it.
    let ro = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.recent_alerts(10).unwrap().len(), 1);
    assert_eq!(ro.verify_ledger().unwrap().entries, 4);
    // A row under an entry of the old kind (a JSON copy of its event) is
    // still checked against it.
    raw(&path)
        .execute_batch(concat!(
            "INSERT INTO strings (value) VALUES ('innocent'); UPDATE process_event_rows SET name = (SELECT id FROM strings WHERE value = 'innocent')",
            " WHERE id = 2"
        ))
        .unwrap();
    match ro.verify_ledger() {
        Err(StoreError::Ledger(ledger::LedgerError::Broken { seq: 2, reason })) => {
            assert!(reason.contains("edited"), "{reason}");
        }
        other => panic!("the edited row went unnoticed: {other:?}"),
    }
}

#[test]
fn arbitrary_events_round_trip_through_the_database() {
    let dir = tempfile::tempdir().unwrap();
    // One database for every case: opening one per case would dominate.
    let db = RefCell::new(Store::new(dir.path().join("audit.db")).unwrap());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    runner
        .run(
            &proptest::collection::vec(collector_core::testing::strategy::process_event(), 1..8),
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

/// The digest a write puts in its ledger entry (hashed from the values it
/// binds) is the one verify reads back from the rows, for any events:
/// rows of their own and a process's fork, exec and exit coalesced into
/// one (events that share the previous one's key, in one run of ids).
#[test]
fn arbitrary_writes_verify_against_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = RefCell::new(Store::new(dir.path().join("audit.db")).unwrap());
    let written = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 128,
        ..Config::default()
    });
    let event = (
        collector_core::testing::strategy::process_event(),
        any::<bool>(),
    );
    runner
        .run(&proptest::collection::vec(event, 1..8), |events| {
            let mut db = db.borrow_mut();
            let base = written.get();
            let mut batch: Vec<ProcessEvent> = Vec::new();
            for (i, (mut e, same)) in events.into_iter().enumerate() {
                if let (true, Some(last)) = (same, batch.last()) {
                    e.pid = last.pid;
                    e.process_key = last.process_key;
                }
                let seq = std::num::NonZeroU64::new(base + i as u64 + 1).unwrap();
                e.id = Some(collector_core::EventId::new(0x5eed, seq));
                batch.push(e);
            }
            written.set(base + batch.len() as u64);
            db.write_events(&batch).unwrap();
            prop_assert!(db.verify_ledger().is_ok(), "{:?}", db.verify_ledger());
            Ok(())
        })
        .unwrap();
    assert!(db.borrow().verify_ledger().unwrap().entries >= 128);
}

#[test]
fn process_tables_speak_the_one_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    drop(Store::new(&path).unwrap());
    // What a table has of its own, beyond the process's columns.
    let own: &[&str] = &[
        "id",
        "event_id",
        "snapshot_id",
        "metadata",
        "detail",
        "ledger_seq",
        "first_seen",
        "last_seen",
        "last_event_type",
        "exited_at",
        "forked_at",
        "fork_event_id",
        "exit_event_id",
    ];
    let conn = raw(&path);
    for table in ["processes", "process_events", "process_snapshots"] {
        let columns = daemoneye_store::table_columns(&conn, table).unwrap();
        assert!(columns.len() > 20, "{table}: {columns:?}");
        for (name, ty) in columns {
            if own.contains(&name.as_str()) {
                continue;
            }
            let v = collector_core::vocabulary::process_column(&name)
                .unwrap_or_else(|| panic!("{table}.{name} is not in the vocabulary"));
            assert!(!v.derived, "{table}.{name} is derived, not stored");
            assert_eq!(ty, v.ty.sqlite(), "{table}.{name}");
        }
    }
}

/// Verify checks the rows users read, not only the ledger's own copies: an
/// edited alert, an edited event and a deleted alert are each caught,
/// naming their entry.
#[test]
fn verify_catches_edited_and_deleted_rows_not_only_entries() {
    let cases: [(&str, i64, &str); 11] = [
        ("UPDATE alerts SET severity = 'low'", 2, "edited"),
        ("UPDATE alerts SET raised_at = raised_at + 1", 2, "edited"),
        (
            "UPDATE alerts SET body = replace(body, 'before', 'after')",
            2,
            "edited",
        ),
        (
            "INSERT INTO strings (value) VALUES ('innocent'); UPDATE process_event_rows SET name = (SELECT id FROM strings WHERE value = 'innocent')",
            1,
            "edited",
        ),
        ("UPDATE process_event_rows SET event_id = NULL", 1, "edited"),
        ("UPDATE process_event_rows SET argv = '[\"sh\"]'", 1, "edited"),
        ("UPDATE process_event_rows SET exit_code = 3", 1, "edited"),
        ("DELETE FROM alerts", 2, "deleted"),
        ("DELETE FROM process_event_rows", 1, "deleted"),
        ("UPDATE process_event_rows SET ledger_seq = NULL", 1, "edited"),
        (
            "INSERT INTO process_event_rows (event_type, pid, name, argv, accessible, \
             file_exists, metadata, observed_at, ledger_seq) \
             VALUES ('exec', 1, (SELECT min(id) FROM strings), '[]', 1, 1, '{}', 0, 1)",
            1,
            "inserted",
        ),
    ];
    for (tamper, seq, what) in cases {
        let (_dir, path, mut db) = with_one_exec();
        let e = rich(10, ProcessEventType::Exec);
        db.record_alert(&Alert::new(
            &LegacyRule,
            AlertProcess::from_event(&e, None),
            e.timestamp,
        ))
        .unwrap();
        assert_eq!(
            db.verify_ledger().unwrap().entries,
            2,
            "untouched, it verifies"
        );
        raw(&path).execute_batch(tamper).unwrap();
        match db.verify_ledger() {
            Err(StoreError::Ledger(ledger::LedgerError::Broken { seq: at, reason })) => {
                assert_eq!(at, seq, "{tamper}");
                assert!(reason.contains(what), "{tamper}: {reason}");
            }
            other => panic!("{tamper} went unnoticed: {other:?}"),
        }
    }
}

/// The first ledger entry's sequence number and kind.
fn chain_start(path: &Path) -> (i64, String) {
    raw(path)
        .query_row(
            "SELECT seq, kind FROM ledger ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// Runs `sql` on the store at `path`; the entry verification then names,
/// and why.
fn tampered_at(db: &Store, path: &Path, sql: &str) -> (i64, &'static str) {
    raw(path).execute_batch(sql).unwrap();
    match db.verify_ledger() {
        Err(StoreError::Ledger(ledger::LedgerError::Broken { seq, reason })) => (seq, reason),
        other => panic!("{sql} went unnoticed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_pushed_past_max_store_bytes_stays_under_it_and_verifies() {
    const MAX: u64 = 2 << 20;
    // Unbounded, these 10,000 short-lived processes take about 16 MB.
    const EVENTS: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let config = WriterConfig {
        max_store_bytes: Some(MAX),
        ..WriterConfig::default()
    };
    let writer = StoreWriter::spawn(Store::new(&path).unwrap(), config).unwrap();
    let events = daemoneye_store::bench::bench_events(EVENTS);
    for chunk in events.chunks(300) {
        writer.events(chunk.to_vec()).await;
    }
    let stats = writer.close().await;
    let db = Store::new(&path).unwrap();
    let used = db.used_bytes().unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "used {used} bytes, file {file} bytes, {} prunes",
        stats.prunes.get()
    );
    // Within the bound after the last prune; the file within it and the
    // one transaction that went over it (1,000 events, about 0.65 MB here:
    // SQLite reuses the freed pages before it grows the file).
    assert!(used <= MAX, "{used} bytes in use over {MAX}");
    assert!(file <= MAX + (1 << 20), "the file grew to {file} bytes");
    assert!(stats.prunes.get() > 0, "{stats:?}");
    assert_eq!(stats.prune_errors.get(), 0);
    // Exact accounting: every event written is kept or counted as pruned.
    let kept = db.count_events().unwrap();
    assert_eq!(kept + stats.events_pruned.get(), EVENTS as u64);
    assert!(kept > 1_000, "only {kept} events kept");
    // The newest process is kept: its exec, with its exit in the row.
    let newest = db.recent_events(1).unwrap();
    assert_eq!(
        newest[0].event,
        ProcessEvent {
            exit_code: events[EVENTS - 1].exit_code,
            ..events[EVENTS - 2].clone()
        },
        "the newest event is kept"
    );
    assert_eq!(newest[0].exited_at, Some(events[EVENTS - 1].timestamp));
    // The chain starts at the kept checkpoint, verifies, and says so.
    let v = db.verify_ledger().unwrap();
    let (first, kind) = chain_start(&path);
    assert_eq!((v.first, kind.as_str()), (first, "checkpoint"));
    assert!(first > 1);
    let prunes: i64 = raw(&path)
        .query_row(
            "SELECT count(*) FROM ledger WHERE kind = 'prune'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(prunes >= 1);
    // A kept row edited, then one deleted, are still caught, naming their
    // entry.
    let (newest_id, newest_seq): (i64, i64) = raw(&path)
        .query_row(
            "SELECT id, ledger_seq FROM process_events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let edit = format!("UPDATE process_event_rows SET exit_code = 7 WHERE id = {newest_id}");
    let (seq, reason) = tampered_at(&db, &path, &edit);
    assert_eq!(seq, newest_seq);
    assert!(reason.contains("edited"), "{reason}");
    let delete = format!("DELETE FROM process_event_rows WHERE id = {newest_id}");
    let (seq, reason) = tampered_at(&db, &path, &delete);
    assert_eq!(seq, newest_seq);
    assert!(reason.contains("deleted"), "{reason}");
}

#[test]
fn an_age_retention_drops_old_rows_keeps_the_rest_verifiable_and_is_on_the_chain() {
    use daemoneye_store::ledger::{Anchor, CheckpointEntry, Head, Lost};
    use daemoneye_store::Retention;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = Store::new(&path).unwrap();
    let hour: i64 = 3_600_000_000_000;
    let now = 1_800_000_000_000_000_000_i64;
    let batch = |db: &mut Store, pids: std::ops::RangeInclusive<u32>| {
        let events: Vec<_> = pids.map(|p| rich(p, ProcessEventType::Exec)).collect();
        db.write_events(&events).unwrap();
    };
    let alert = |db: &mut Store, pid| {
        let e = rich(pid, ProcessEventType::Exec);
        db.record_alert(&Alert::new(
            &LegacyRule,
            AlertProcess::from_event(&e, None),
            e.timestamp,
        ))
        .unwrap();
    };
    let checkpoint = |db: &mut Store, time| -> Head {
        db.append_entry("checkpoint", |_| CheckpointEntry {
            time,
            lost: Lost::default(),
        })
        .unwrap()
    };
    batch(&mut db, 1..=3);
    alert(&mut db, 1);
    let old = checkpoint(&mut db, now - 3 * hour);
    batch(&mut db, 4..=6);
    let cut = checkpoint(&mut db, now - 2 * hour);
    batch(&mut db, 7..=9);
    alert(&mut db, 8);
    checkpoint(&mut db, now - hour / 2);
    let keep_90_min = Retention {
        max_age: Some(Duration::from_secs(90 * 60)),
        max_bytes: None,
    };
    let p = db.prune(&keep_90_min, now).unwrap().unwrap(); // a prune was due
    assert_eq!((p.below, p.head.as_str()), (cut.seq, cut.hash.as_str()));
    assert_eq!(
        (p.events, p.alerts, p.entries),
        (6, 1, u64::try_from(cut.seq - 1).unwrap())
    );
    let pids = stored_pids(&db);
    assert_eq!(pids, [7, 8, 9]);
    assert_eq!(db.recent_alerts(10).unwrap().len(), 1);
    let v = db.verify_ledger().unwrap();
    assert_eq!(v.first, cut.seq);
    assert_eq!(chain_start(&path), (cut.seq, "checkpoint".to_owned()));
    // The prune is on the chain, after what it kept.
    let last: (String, String) = raw(&path)
        .query_row(
            "SELECT kind, content FROM ledger ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(last.0, "prune");
    let recorded: ledger::PruneEntry = serde_json::from_str(&last.1).unwrap();
    assert_eq!(recorded, p);
    // Nothing more is due now; an anchor below the cut is passed over,
    // one at it still holds.
    assert!(db.prune(&keep_90_min, now).unwrap().is_none());
    db.verify_ledger_anchored(&[Anchor(old), Anchor(cut.clone())])
        .unwrap();
    // A kept row edited is caught, naming its entry.
    let (seq, reason) = tampered_at(
        &db,
        &path,
        "UPDATE process_event_rows SET argv = '[\"sh\"]' WHERE pid = 8",
    );
    assert!(seq > cut.seq && reason.contains("edited"), "{seq} {reason}");
    raw(&path)
        .execute_batch("DELETE FROM process_event_rows WHERE pid = 8")
        .unwrap();
    // Entries cut off the start of the chain past the kept checkpoint are
    // caught: the chain no longer starts at its first entry or at one.
    let (seq, reason) = tampered_at(
        &db,
        &path,
        &format!("DELETE FROM ledger WHERE seq <= {}", cut.seq),
    );
    assert_eq!(seq, 1);
    assert!(reason.contains("deleted"), "{reason}");
}

#[test]
fn a_chain_cut_at_a_checkpoint_without_a_prune_entry_is_caught() {
    use daemoneye_store::ledger::{CheckpointEntry, Lost};
    let (_dir, path, mut db) = with_one_exec();
    let cp = db
        .append_entry("checkpoint", |_| CheckpointEntry {
            time: 1,
            lost: Lost::default(),
        })
        .unwrap();
    db.write_events(&[rich(11, ProcessEventType::Exec)])
        .unwrap();
    raw(&path)
        .execute_batch(&format!(
            "DELETE FROM ledger WHERE seq < {0}; DELETE FROM process_event_rows WHERE ledger_seq < {0}",
            cp.seq
        ))
        .unwrap();
    match db.verify_ledger() {
        Err(StoreError::Ledger(ledger::LedgerError::Broken { seq, reason })) => {
            assert_eq!(seq, cp.seq);
            assert!(reason.contains("no prune entry"), "{reason}");
        }
        other => panic!("the cut start went unnoticed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_a_retention_prunes_what_is_older_after_its_first_write() {
    use daemoneye_store::ledger::{CheckpointEntry, Lost};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut db = Store::new(&path).unwrap();
    db.write_events(&[
        rich(1, ProcessEventType::Exec),
        rich(2, ProcessEventType::Exit),
    ])
    .unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let cut = db
        .append_entry("checkpoint", |_| CheckpointEntry {
            time: i64::try_from(
                two_hours_ago
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos(),
            )
            .unwrap(),
            lost: Lost::default(),
        })
        .unwrap();
    let config = WriterConfig {
        retention: Some(Duration::from_secs(3600)),
        ..WriterConfig::default()
    };
    let writer = StoreWriter::spawn(db, config).unwrap();
    writer.events(vec![rich(3, ProcessEventType::Exec)]).await;
    let stats = writer.close().await;
    assert_eq!(stats.prunes.get(), 1, "{stats:?}");
    assert_eq!(stats.events_pruned.get(), 2);
    let db = Store::new(&path).unwrap();
    assert_eq!(stored_pids(&db), [3]);
    assert_eq!(db.verify_ledger().unwrap().first, cut.seq);
}
