//! The schema, as an ordered list of migrations.
//!
//! The schema version lives in `PRAGMA user_version`. Migration `n` takes a
//! database from version `n - 1` to `n`; each runs in its own immediate
//! transaction that also sets `user_version`, so a crash leaves the database
//! at a version it really has. Migrations are append-only: a released one is
//! never edited, a change is a new entry.
//!
//! Conventions the detection rules rely on: times are integer unix
//! nanoseconds (`observed_at`, `start_time`, `taken_at`, ...), `argv` is a JSON
//! array of strings, `metadata` a JSON object of strings, booleans are 0/1,
//! `process_key` is the text `boot_id:pid:start_ticks`.

use rusqlite::{Connection, TransactionBehavior};

use super::DbError;

/// One step of the schema.
#[derive(Debug)]
pub(super) struct Migration {
    /// The `user_version` the database has after this step.
    pub(super) version: u32,
    /// What the step does, for logs.
    pub(super) description: &'static str,
    /// The statements, run as one batch.
    pub(super) sql: &'static str,
}

/// Every migration, in order; versions are 1, 2, 3, ... without gaps.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "snapshots, process_snapshots, lifecycle_events, processes",
    sql: V1,
}];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

const V1: &str = r"
CREATE TABLE snapshots (
    id            INTEGER PRIMARY KEY,
    taken_at      INTEGER NOT NULL,
    process_count INTEGER NOT NULL
) STRICT;
CREATE INDEX snapshots_taken_at ON snapshots (taken_at);

CREATE TABLE process_snapshots (
    snapshot_id    INTEGER NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    process_key    TEXT,
    pid            INTEGER NOT NULL,
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
    file_exists    INTEGER NOT NULL,
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
    pid            INTEGER NOT NULL,
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
    file_exists    INTEGER NOT NULL,
    exit_code      INTEGER,
    metadata       TEXT NOT NULL,
    observed_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX lifecycle_events_process_key ON lifecycle_events (process_key);
CREATE INDEX lifecycle_events_pid ON lifecycle_events (pid);
CREATE INDEX lifecycle_events_observed_at ON lifecycle_events (observed_at);

CREATE TABLE processes (
    process_key     TEXT PRIMARY KEY NOT NULL,
    pid             INTEGER NOT NULL,
    ppid            INTEGER,
    name            TEXT NOT NULL,
    exe             TEXT,
    argv            TEXT NOT NULL,
    uid             INTEGER,
    start_time      INTEGER,
    cpu_percent     REAL,
    rss_bytes       INTEGER,
    exe_hash        TEXT,
    hash_algorithm  TEXT,
    accessible      INTEGER NOT NULL,
    file_exists     INTEGER NOT NULL,
    metadata        TEXT NOT NULL,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    last_event_type TEXT NOT NULL,
    exit_code       INTEGER,
    exited_at       INTEGER
) STRICT;
CREATE INDEX processes_pid ON processes (pid);
CREATE INDEX processes_last_seen ON processes (last_seen);
";

/// Brings the database to [`SCHEMA_VERSION`], one transaction per step.
///
/// Safe against a concurrent migrator: each step re-reads the version inside
/// its write-locked transaction and skips what another process already did.
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, DbError> {
    let found = user_version(conn)?;
    check_not_newer(found)?;
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

pub(super) fn user_version(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
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
