//! The tables kept for a time, off the ledger (`performance`,
//! `connections`): one `INSERT` built from a table's vocabulary, one write
//! of a batch, and one prune by the batch's own clock.

use std::time::{Duration, SystemTime};

use collector_core::vocabulary::Column;
use rusqlite::Transaction;

use crate::store::{to_nanos, StoreError};

/// `INSERT INTO <table> (<columns>) VALUES (?1, ...)`.
pub(crate) fn insert_columns_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<_> = columns.iter().map(|c| c.name).collect();
    let marks: Vec<_> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        marks.join(", ")
    )
}

/// An event kept for a time in a table of its own, off the ledger
/// (`performance`, `connections`).
pub(crate) trait TimedEvent {
    /// Its table, and that table's vocabulary.
    const TABLE: (&'static str, &'static [Column]);
    /// Inserts its row with `insert`, the table's `INSERT`.
    fn insert(&self, insert: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<usize>;
    /// When it was observed.
    fn observed(&self) -> SystemTime;
}

/// Inserts `events` into their table within `tx`, then prunes the rows
/// older than `retention` before the newest of them (the events' own
/// clock, so a batch never prunes itself). Returns the rows pruned.
pub(crate) fn write_timed_in<E: TimedEvent>(
    tx: &Transaction<'_>,
    events: &[E],
    retention: Duration,
) -> Result<usize, StoreError> {
    let (table, columns) = E::TABLE;
    let mut insert = tx.prepare_cached(&insert_columns_sql(table, columns))?;
    for e in events {
        e.insert(&mut insert)?;
    }
    let newest = events.iter().map(TimedEvent::observed).max();
    prune_before(tx, table, newest, retention)
}

/// Deletes the rows of `table` observed more than `retention` before
/// `newest` (a batch's own clock, so a batch never prunes itself; nothing
/// without one). Returns the rows deleted.
pub(crate) fn prune_before(
    tx: &Transaction<'_>,
    table: &str,
    newest: Option<SystemTime>,
    retention: Duration,
) -> Result<usize, StoreError> {
    let Some(newest) = newest else {
        return Ok(0);
    };
    let cutoff = newest
        .checked_sub(retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(tx
        .prepare_cached(&format!("DELETE FROM {table} WHERE observed_at < ?1"))?
        .execute([to_nanos(cutoff)])?)
}
