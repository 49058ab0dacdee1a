//! The schema, as an ordered list of migrations.
//!
//! The schema version lives in `PRAGMA user_version`. Migration `n` takes a
//! database from version `n - 1` to `n`; each runs in its own immediate
//! transaction that also sets `user_version`, so a crash leaves the database
//! at a version it really has. Migrations are append-only: a released one is
//! never edited, a change is a new entry.
//!
//! Version 1 is procmond's audit database; version 2 adds what the agent
//! stored in its own file before (alerts, the ledger, each lifecycle event's
//! ledger entry) and names the lifecycle table `process_events`. An agent
//! store from before the versioned schema (`user_version` 0 with a
//! pid-keyed `processes` table) is adopted in one transaction: its
//! `processes` is dropped (the agent clears it at every collector session
//! anyway), its alerts and ledger are kept as they are and its lifecycle
//! events are copied into `process_events`.
//!
//! Conventions the detection rules rely on: times are integer unix
//! nanoseconds (`observed_at`, `start_time`, `taken_at`, ...), `argv` is a JSON
//! array of strings, `metadata` a JSON object of strings, booleans are 0/1,
//! `process_key` is the text `boot_id:pid:start_ticks`.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError as DbError;

/// One step of the schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// The `user_version` the database has after this step.
    pub(crate) version: u32,
    /// What the step does, for logs.
    pub(crate) description: &'static str,
    /// The statements, run as one batch.
    pub(crate) sql: &'static str,
}

/// Every migration, in order; versions are 1, 2, 3, ... without gaps.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "snapshots, process_snapshots, lifecycle_events, processes",
        sql: V1,
    },
    Migration {
        version: 2,
        description: "process_events (was lifecycle_events) with ledger_seq, alerts, ledger",
        sql: V2,
    },
    Migration {
        version: 3,
        description: "typed process facts: euid, gid, exe_replaced, container_id, cgroup, detail",
        sql: V3,
    },
    Migration {
        version: 4,
        description: "event ids: process_events.event_id, process_snapshots.event_id",
        sql: V4,
    },
    Migration {
        version: 5,
        description: "performance: samples and anomalies",
        sql: V5,
    },
    Migration {
        version: 6,
        description: "compact lifecycle events: one ledger entry per batch, no pid index",
        sql: V6,
    },
    Migration {
        version: 7,
        description: "connections: sockets and the processes that hold them",
        sql: V7,
    },
    Migration {
        version: 8,
        description: "outbox: what waits for a broker's acknowledgement",
        sql: V8,
    },
    Migration {
        version: 9,
        description: "file_events: file operations and the processes that made them",
        sql: V9,
    },
    Migration {
        version: 10,
        description: "outbox priorities (events dropped first) and the events dropped",
        sql: V10,
    },
    Migration {
        version: 11,
        description: "alerts.file: the file a file rule's alert is about",
        sql: V11,
    },
    Migration {
        version: 12,
        description: "compact process events: a short-lived process in one row, repeated text \
                      stored once (strings), processes holds the running ones",
        sql: V12,
    },
    Migration {
        version: 13,
        description: "connections.bytes_sent, bytes_received: a TCP socket's bytes from tcp_info",
        sql: V13,
    },
    Migration {
        version: 14,
        description: "outbox.items: a batch of events queued as one row",
        sql: V14,
    },
    Migration {
        version: 15,
        description: "outbox.packed: the bodies of a row of many items, LZ4-packed",
        sql: V15,
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 15;

/// The columns every process table of version 1 has alike, in this order
/// and typed the same in each: written once (the tables the migration
/// creates are the released ones; only the text is shared).
macro_rules! shared_process_columns {
    () => {
        "    pid            INTEGER NOT NULL,
    ppid           INTEGER,
    name           TEXT NOT NULL,
    exe            TEXT,
    argv           TEXT NOT NULL,
    uid            INTEGER,
    start_time     INTEGER,
    cpu_percent    REAL,
    rss_bytes      INTEGER,
    exe_hash       TEXT,
    hash_algorithm TEXT,
    accessible     INTEGER NOT NULL,
    file_exists    INTEGER NOT NULL,"
    };
}

const V1: &str = concat!(
    r"
CREATE TABLE snapshots (
    id            INTEGER PRIMARY KEY,
    taken_at      INTEGER NOT NULL,
    process_count INTEGER NOT NULL
) STRICT;
CREATE INDEX snapshots_taken_at ON snapshots (taken_at);

CREATE TABLE process_snapshots (
    snapshot_id    INTEGER NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    process_key    TEXT,
",
    shared_process_columns!(),
    r"
    metadata       TEXT NOT NULL,
    observed_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX process_snapshots_snapshot_id ON process_snapshots (snapshot_id);
CREATE INDEX process_snapshots_process_key ON process_snapshots (process_key);
CREATE INDEX process_snapshots_pid ON process_snapshots (pid);
CREATE INDEX process_snapshots_observed_at ON process_snapshots (observed_at);

CREATE TABLE lifecycle_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type     TEXT NOT NULL,
    process_key    TEXT,
",
    shared_process_columns!(),
    r"
    exit_code      INTEGER,
    metadata       TEXT NOT NULL,
    observed_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX lifecycle_events_process_key ON lifecycle_events (process_key);
CREATE INDEX lifecycle_events_pid ON lifecycle_events (pid);
CREATE INDEX lifecycle_events_observed_at ON lifecycle_events (observed_at);

CREATE TABLE processes (
    process_key     TEXT PRIMARY KEY NOT NULL,
",
    shared_process_columns!(),
    r"
    metadata        TEXT NOT NULL,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    last_event_type TEXT NOT NULL,
    exit_code       INTEGER,
    exited_at       INTEGER
) STRICT;
CREATE INDEX processes_pid ON processes (pid);
CREATE INDEX processes_last_seen ON processes (last_seen);
"
);

const V2: &str = r"
ALTER TABLE lifecycle_events RENAME TO process_events;
ALTER TABLE process_events ADD COLUMN ledger_seq INTEGER;
DROP INDEX lifecycle_events_process_key;
DROP INDEX lifecycle_events_pid;
DROP INDEX lifecycle_events_observed_at;
CREATE INDEX process_events_process_key ON process_events (process_key);
CREATE INDEX process_events_pid ON process_events (pid);
CREATE INDEX process_events_observed_at ON process_events (observed_at);

CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_key TEXT,
    dedup_key TEXT NOT NULL,
    observed_at INTEGER NOT NULL,
    raised_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
ALTER TABLE alerts ADD COLUMN ledger_seq INTEGER;
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised_at);

CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
";

/// The typed process facts every process table gains in version 3 (they
/// travelled as strings in `metadata` before): `detail` is a JSON object of
/// the rest (state, threads, `cpu_ticks`, read, namespaces, lifecycle).
macro_rules! typed_facts {
    ($($table:literal),+) => {
        concat!($(
            "ALTER TABLE ", $table, " ADD COLUMN euid INTEGER;\n",
            "ALTER TABLE ", $table, " ADD COLUMN gid INTEGER;\n",
            "ALTER TABLE ", $table, " ADD COLUMN exe_replaced INTEGER NOT NULL DEFAULT 0;\n",
            "ALTER TABLE ", $table, " ADD COLUMN container_id TEXT;\n",
            "ALTER TABLE ", $table, " ADD COLUMN cgroup TEXT;\n",
            "ALTER TABLE ", $table, " ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';\n",
        )+)
    };
}

const V3: &str = typed_facts!("process_snapshots", "process_events", "processes");

/// The id the collector runtime gave each event a row stores
/// (`collector_core::EventId` as text, `run-seq`); none on older rows.
const V4: &str = "ALTER TABLE process_events ADD COLUMN event_id TEXT;
ALTER TABLE process_snapshots ADD COLUMN event_id TEXT;";

/// Performance samples and anomalies, one row each: the columns of
/// `collector_core::vocabulary::PERFORMANCE` in its order (a test holds them
/// to it). Not on the ledger (a host samples thousands a minute); bounded by
/// the writer's `performance_retention`, pruned by `observed_at`.
const V5: &str = "CREATE TABLE performance (
    id INTEGER PRIMARY KEY,
    event_id TEXT,
    observed_at INTEGER NOT NULL,
    metric TEXT NOT NULL,
    unit TEXT NOT NULL,
    value REAL NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_name TEXT,
    pid INTEGER,
    process_key TEXT,
    anomaly TEXT,
    anomaly_threshold REAL,
    anomaly_duration_ms INTEGER
);
CREATE INDEX performance_observed ON performance (observed_at);
CREATE INDEX performance_anomalies ON performance (anomaly) WHERE anomaly IS NOT NULL;";

/// Lifecycle events are ledgered a batch to an entry from version 6 on
/// (`ledger::EVENTS_KIND`, no JSON copy of each event); the rows and
/// entries written before stay as they are and verify as before. The pid
/// index of `process_events` goes (a pid alone names no process; the
/// process key and time indexes stay): 35 bytes a short-lived exec.
const V6: &str = "DROP INDEX IF EXISTS process_events_pid;";

/// Network connections and listening sockets, a row per holder: the columns
/// of `collector_core::vocabulary::NETWORK` in its order (a test holds them
/// to it). Not on the ledger (like performance samples); bounded by the
/// writer's `connections_retention` and the store's retention.
const V7: &str = "CREATE TABLE connections (
    id INTEGER PRIMARY KEY,
    observed_at INTEGER NOT NULL,
    connection_id INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    family TEXT,
    state TEXT,
    direction TEXT,
    change TEXT,
    local_address TEXT,
    local_port INTEGER,
    remote_address TEXT,
    remote_port INTEGER,
    pid INTEGER,
    process_key TEXT,
    fd INTEGER,
    holders INTEGER,
    uid INTEGER,
    inode INTEGER,
    netns INTEGER,
    tier TEXT,
    event_id TEXT
);
CREATE INDEX connections_observed ON connections (observed_at);
CREATE INDEX connections_process ON connections (process_key);";

/// The outbox (`crate::outbox`): items waiting for a broker's
/// acknowledgement, in order, each queued in the transaction that stores
/// what it ships; and the count of those dropped when it was full (one
/// row). Not on the ledger: what it ships is.
const V8: &str = "CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    body TEXT NOT NULL,
    queued_at INTEGER NOT NULL
) STRICT;
CREATE TABLE outbox_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    dropped INTEGER NOT NULL
) STRICT;
INSERT INTO outbox_state (id, dropped) VALUES (1, 0);";

/// File operations, a row each: the stored columns of
/// `collector_core::vocabulary::FILE` in its order (a test holds them to
/// it). Not on the ledger (like connections); bounded by the writer's
/// `file_events_retention` and the store's retention. Indexed by time (the
/// prune), process key (the join to `processes`) and path.
const V9: &str = "CREATE TABLE file_events (
    id INTEGER PRIMARY KEY,
    observed_at INTEGER NOT NULL,
    operation TEXT NOT NULL,
    path TEXT NOT NULL,
    old_path TEXT,
    root TEXT,
    file_type TEXT,
    size INTEGER,
    mode INTEGER,
    previous_mode INTEGER,
    owner_uid INTEGER,
    owner_gid INTEGER,
    hash TEXT,
    previous_hash TEXT,
    hash_algorithm TEXT,
    pid INTEGER,
    process_key TEXT,
    event_id TEXT
);
CREATE INDEX file_events_observed ON file_events (observed_at);
CREATE INDEX file_events_process ON file_events (process_key);
CREATE INDEX file_events_path ON file_events (path);";

/// The outbox's priorities (`crate::outbox`): when it is full, items are
/// dropped lowest priority first (events 0, alerts 1, checkpoints 2), the
/// oldest first within one; indexed so finding them is a lookup. And the
/// events dropped, counted apart from the alerts and checkpoints.
const V10: &str = "ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
UPDATE outbox SET priority = 2 WHERE kind = 'checkpoint';
CREATE INDEX outbox_priority ON outbox (priority, id);
ALTER TABLE outbox_state ADD COLUMN dropped_events INTEGER NOT NULL DEFAULT 0;";

/// Version 11: the file a file rule's alert is about (`Alert::file`; null
/// for the others and for alerts stored before).
const V11: &str = "ALTER TABLE alerts ADD COLUMN file TEXT;";

/// Version 12: compact lifecycle events (`crate::events`).
/// - `strings`: each text that lifecycle events repeat (name, executable,
///   hash, hash algorithm, container id, cgroup) stored once; the rows hold
///   its id.
/// - `process_event_rows`: the rows, with four more columns: an exec row
///   also holds its process's fork and exit when they came in the same
///   batch (`forked_at` and `fork_seq`, `exited_at` and `exit_seq`: the
///   sequence numbers of their event ids, whose run is the row's).
/// - `process_events` is now a view of them with the texts put back, the
///   columns of version 11 in their order and values (so the digests of the
///   rows written before still hold), then `forked_at`, `fork_event_id`,
///   `exited_at`, `exit_event_id`.
/// - Indexed by pid and time: the process-key index cost 61 bytes a row (a
///   process is looked up by `pid` and `process_key` together).
/// - `processes` keeps the running processes only: an exit removes the row
///   (the exit is in `process_events`).
const V12: &str = r"
CREATE TABLE strings (
    id    INTEGER PRIMARY KEY,
    value TEXT NOT NULL UNIQUE
) STRICT;
INSERT OR IGNORE INTO strings (value)
    SELECT name FROM process_events
    UNION SELECT exe FROM process_events WHERE exe IS NOT NULL
    UNION SELECT exe_hash FROM process_events WHERE exe_hash IS NOT NULL
    UNION SELECT hash_algorithm FROM process_events WHERE hash_algorithm IS NOT NULL
    UNION SELECT container_id FROM process_events WHERE container_id IS NOT NULL
    UNION SELECT cgroup FROM process_events WHERE cgroup IS NOT NULL;

CREATE TABLE process_event_rows (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type     TEXT NOT NULL,
    process_key    TEXT,
    pid            INTEGER NOT NULL,
    ppid           INTEGER,
    name           INTEGER NOT NULL,
    exe            INTEGER,
    argv           TEXT NOT NULL,
    uid            INTEGER,
    start_time     INTEGER,
    cpu_percent    REAL,
    rss_bytes      INTEGER,
    exe_hash       INTEGER,
    hash_algorithm INTEGER,
    accessible     INTEGER NOT NULL,
    file_exists    INTEGER NOT NULL,
    exit_code      INTEGER,
    metadata       TEXT NOT NULL,
    observed_at    INTEGER NOT NULL,
    ledger_seq     INTEGER,
    euid           INTEGER,
    gid            INTEGER,
    exe_replaced   INTEGER NOT NULL DEFAULT 0,
    container_id   INTEGER,
    cgroup         INTEGER,
    detail         TEXT NOT NULL DEFAULT '{}',
    event_id       TEXT,
    forked_at      INTEGER,
    fork_seq       INTEGER,
    exited_at      INTEGER,
    exit_seq       INTEGER
) STRICT;

INSERT INTO process_event_rows (id, event_type, process_key, pid, ppid, name, exe, argv, uid,
    start_time, cpu_percent, rss_bytes, exe_hash, hash_algorithm, accessible, file_exists,
    exit_code, metadata, observed_at, ledger_seq, euid, gid, exe_replaced, container_id, cgroup,
    detail, event_id)
SELECT e.id, e.event_type, e.process_key, e.pid, e.ppid,
    (SELECT id FROM strings WHERE value = e.name),
    (SELECT id FROM strings WHERE value = e.exe),
    e.argv, e.uid, e.start_time, e.cpu_percent, e.rss_bytes,
    (SELECT id FROM strings WHERE value = e.exe_hash),
    (SELECT id FROM strings WHERE value = e.hash_algorithm),
    e.accessible, e.file_exists, e.exit_code, e.metadata, e.observed_at, e.ledger_seq, e.euid,
    e.gid, e.exe_replaced,
    (SELECT id FROM strings WHERE value = e.container_id),
    (SELECT id FROM strings WHERE value = e.cgroup),
    e.detail, e.event_id
FROM process_events e ORDER BY e.id;

-- Ids are never reused: the new table counts on from where the old one was
-- (the copy made its counter the largest id copied, which is less when the
-- newest rows were pruned; no counter when nothing was copied).
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce(
        (SELECT seq FROM sqlite_sequence WHERE name = 'process_events'), 0))
    WHERE name = 'process_event_rows';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'process_event_rows', seq FROM sqlite_sequence WHERE name = 'process_events'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'process_event_rows');
DROP TABLE process_events;

CREATE INDEX process_event_rows_pid ON process_event_rows (pid);
CREATE INDEX process_event_rows_observed_at ON process_event_rows (observed_at);

CREATE VIEW process_events AS SELECT
    r.id, r.event_type, r.process_key, r.pid, r.ppid, name.value AS name, exe.value AS exe,
    r.argv, r.uid, r.start_time, r.cpu_percent, r.rss_bytes, hash.value AS exe_hash,
    algorithm.value AS hash_algorithm, r.accessible, r.file_exists, r.exit_code, r.metadata,
    r.observed_at, r.ledger_seq, r.euid, r.gid, r.exe_replaced, container.value AS container_id,
    cgroup.value AS cgroup, r.detail, r.event_id, r.forked_at,
    CASE WHEN r.fork_seq IS NOT NULL THEN substr(r.event_id, 1, 17) || r.fork_seq END
        AS fork_event_id,
    r.exited_at,
    CASE WHEN r.exit_seq IS NOT NULL THEN substr(r.event_id, 1, 17) || r.exit_seq END
        AS exit_event_id
FROM process_event_rows r
    JOIN strings name ON name.id = r.name
    LEFT JOIN strings exe ON exe.id = r.exe
    LEFT JOIN strings hash ON hash.id = r.exe_hash
    LEFT JOIN strings algorithm ON algorithm.id = r.hash_algorithm
    LEFT JOIN strings container ON container.id = r.container_id
    LEFT JOIN strings cgroup ON cgroup.id = r.cgroup;

DELETE FROM processes WHERE exited_at IS NOT NULL;
";

/// Version 13: a TCP socket's bytes where the kernel reports them
/// (`sock_diag`'s `tcp_info`: bytes acknowledged by the peer, bytes
/// received); null for UDP, for the eBPF tier's rows and for rows stored
/// before. Last in `NETWORK`, as `ALTER TABLE` appends them.
const V13: &str = "ALTER TABLE connections ADD COLUMN bytes_sent INTEGER;
ALTER TABLE connections ADD COLUMN bytes_received INTEGER;";

/// Version 14: the events one write ships are queued as one outbox row of
/// `items` items (`crate::outbox`: their message ids and bodies a line
/// each), not a row each: a row costs the writer more than its bytes.
/// Alerts and checkpoints stay a row each (`items` 1).
const V14: &str = "ALTER TABLE outbox ADD COLUMN items INTEGER NOT NULL DEFAULT 1;";

/// The bodies of an outbox row of more than one item, packed (an LZ4 block,
/// their length first), `body` left empty: to a tenth of the JSON or less,
/// each byte of which was written twice (the log, then the database) and
/// read back.
/// `NULL` for a row of one, and for rows queued before.
const V15: &str = "ALTER TABLE outbox ADD COLUMN packed BLOB;";

/// Before migration 1 of a legacy agent store: out of the way what the
/// versioned schema creates anew.
const LEGACY_BEFORE: &str = r"
DROP TABLE processes;
DROP INDEX IF EXISTS process_events_observed;
DROP INDEX IF EXISTS process_events_pid;
ALTER TABLE process_events RENAME TO legacy_process_events;
";

/// After migration 2 of a legacy agent store: its lifecycle events into
/// `process_events`, the fields it did not have as columns taken from the
/// event its ledger entry holds.
const LEGACY_AFTER: &str = r"
INSERT INTO process_events (id, event_type, process_key, pid, ppid, name, exe, argv, uid,
    exe_hash, hash_algorithm, accessible, file_exists, exit_code, metadata, observed_at,
    ledger_seq)
SELECT e.id, e.event_type, e.process_key, e.pid, e.ppid, e.name, e.exe, e.argv, e.uid,
    json_extract(l.content, '$.executable_hash'), json_extract(l.content, '$.hash_algorithm'),
    coalesce(json_extract(l.content, '$.accessible'), 1),
    coalesce(json_extract(l.content, '$.file_exists'), 1),
    e.exit_code, coalesce(json_extract(l.content, '$.platform_metadata'), '{}'),
    e.observed_at, e.ledger_seq
FROM legacy_process_events e LEFT JOIN ledger l ON l.seq = e.ledger_seq
ORDER BY e.id;
DROP TABLE legacy_process_events;
";

/// The schema version a legacy agent store is adopted at.
const LEGACY_ADOPTED_AT: u32 = 2;

/// Whether the (unversioned) database is an agent store from before the
/// versioned schema.
fn is_legacy_agent_store(conn: &Connection) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'process_events'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Adopts a legacy agent store at [`LEGACY_ADOPTED_AT`] in one transaction.
/// Returns false when there was nothing to adopt (another process did it, or
/// the database is not one).
fn adopt_legacy(conn: &mut Connection) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if now != 0 || !is_legacy_agent_store(&tx)? {
        return Ok(false);
    }
    tx.execute_batch(LEGACY_BEFORE)?;
    for m in MIGRATIONS
        .iter()
        .take_while(|m| m.version <= LEGACY_ADOPTED_AT)
    {
        tx.execute_batch(m.sql)?;
    }
    tx.execute_batch(LEGACY_AFTER)?;
    tx.pragma_update(None, "user_version", LEGACY_ADOPTED_AT)?;
    tx.commit()?;
    Ok(true)
}

/// Brings the database to [`SCHEMA_VERSION`], one transaction per step.
///
/// Safe against a concurrent migrator: each step re-reads the version inside
/// its write-locked transaction and skips what another process already did.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, DbError> {
    let found = user_version(conn)?;
    check_not_newer(found)?;
    if found == 0 && is_legacy_agent_store(conn)? {
        let adopted = adopt_legacy(conn).map_err(|source| DbError::Migration {
            version: LEGACY_ADOPTED_AT,
            source,
        })?;
        if adopted {
            tracing::info!(
                version = LEGACY_ADOPTED_AT,
                "agent store from before the versioned schema adopted"
            );
        }
    }
    for m in MIGRATIONS {
        if i64::from(m.version) <= found {
            continue;
        }
        let step = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if now >= i64::from(m.version) {
                return Ok(false);
            }
            tx.execute_batch(m.sql)?;
            tx.pragma_update(None, "user_version", m.version)?;
            tx.commit()?;
            Ok(true)
        };
        let applied = step(conn).map_err(|source| DbError::Migration {
            version: m.version,
            source,
        })?;
        if applied {
            tracing::info!(
                version = m.version,
                description = m.description,
                "database schema migrated"
            );
        }
    }
    let now = user_version(conn)?;
    check_not_newer(now)?;
    u32::try_from(now).map_err(|_| DbError::InvalidSchemaVersion { found: now })
}

pub(crate) fn user_version(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// For readers, which cannot migrate: the database must be at exactly
/// [`SCHEMA_VERSION`].
pub(crate) fn check_current(conn: &Connection) -> Result<(), DbError> {
    let found = user_version(conn)?;
    check_not_newer(found)?;
    if found < i64::from(SCHEMA_VERSION) {
        return Err(DbError::OlderSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn check_not_newer(found: i64) -> Result<(), DbError> {
    if found < 0 {
        return Err(DbError::InvalidSchemaVersion { found });
    }
    if found > i64::from(SCHEMA_VERSION) {
        return Err(DbError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The columns of `table` as SQLite declares them, `(name, type)` in
/// their order (`pragma_table_info`): what the schema and the vocabulary
/// are checked against.
///
/// # Errors
/// The query's.
pub fn table_columns(
    conn: &rusqlite::Connection,
    table: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    conn.prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn migrations_are_numbered_without_gaps_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.description);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn negative_user_version_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", -3).unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(DbError::InvalidSchemaVersion { found: -3 })
        ));
    }
}
