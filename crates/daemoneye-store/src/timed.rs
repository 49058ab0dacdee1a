//! The tables kept for a time, off the ledger (`performance`,
//! `connections`, `file_events`): one `INSERT` built from a table's
//! vocabulary, one write of a batch, and one prune by the batch's own
//! clock; [`TimedBatch`], a batch of any of them as the writer queues it.

use std::time::{Duration, SystemTime};

use collector_core::vocabulary::Column;
use collector_core::{
    EventId, EventKind, FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent,
};
use rusqlite::Transaction;

use crate::store::{queue_events_in, to_nanos, Recorded, StoreError};

/// A batch of events kept for a time in a table of their own: what the
/// writer queues and a transaction writes, one kind at a time
/// ([`Store::write_timed`](crate::Store::write_timed) takes one, or a
/// `Vec` of either kind of event).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TimedBatch {
    /// Performance samples (`performance`).
    Performance(Vec<PerformanceEvent>),
    /// Connections (`connections`).
    Connections(Vec<NetworkEvent>),
    /// File events (`file_events`).
    Files(Vec<FilesystemEvent>),
}

/// How long each table kept for a time keeps its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retentions {
    pub(crate) performance: Duration,
    pub(crate) connections: Duration,
    pub(crate) files: Duration,
}

impl From<Vec<PerformanceEvent>> for TimedBatch {
    fn from(events: Vec<PerformanceEvent>) -> Self {
        Self::Performance(events)
    }
}

impl From<Vec<NetworkEvent>> for TimedBatch {
    fn from(events: Vec<NetworkEvent>) -> Self {
        Self::Connections(events)
    }
}

impl From<Vec<FilesystemEvent>> for TimedBatch {
    fn from(events: Vec<FilesystemEvent>) -> Self {
        Self::Files(events)
    }
}

impl TimedBatch {
    /// The events it holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Performance(e) => e.len(),
            Self::Connections(e) => e.len(),
            Self::Files(e) => e.len(),
        }
    }

    /// Its events' domain.
    pub(crate) fn kind(&self) -> EventKind {
        match self {
            Self::Performance(_) => EventKind::Performance,
            Self::Connections(_) => EventKind::Network,
            Self::Files(_) => EventKind::Filesystem,
        }
    }

    /// Queues its events in the outbox within `tx` (see
    /// [`queue_events_in`](crate::store::queue_events_in)).
    pub(crate) fn queue_in(
        &self,
        tx: &Transaction<'_>,
        depth: &mut u64,
    ) -> Result<bool, StoreError> {
        let kind = self.kind();
        match self {
            Self::Performance(e) => queue_events_in(tx, depth, kind, e),
            Self::Connections(e) => queue_events_in(tx, depth, kind, e),
            Self::Files(e) => queue_events_in(tx, depth, kind, e),
        }
    }

    /// Its table's retention.
    pub(crate) fn retention(&self, r: Retentions) -> Duration {
        match self {
            Self::Performance(_) => r.performance,
            Self::Connections(_) => r.connections,
            Self::Files(_) => r.files,
        }
    }

    /// Writes it within `tx`, pruning its table to `retention`, and counts
    /// the rows written and pruned into `done`.
    pub(crate) fn write_in(
        &self,
        tx: &Transaction<'_>,
        retention: Duration,
        done: &mut Recorded,
    ) -> Result<(), StoreError> {
        let n = self.len() as u64;
        match self {
            Self::Performance(e) => {
                done.performance += n;
                done.pruned += write_timed_in(tx, e, retention)? as u64;
            }
            Self::Connections(e) => {
                done.connections += n;
                done.connections_pruned += write_timed_in(tx, e, retention)? as u64;
            }
            Self::Files(e) => {
                done.file_events += n;
                done.file_events_pruned += write_timed_in(tx, e, retention)? as u64;
            }
        }
        Ok(())
    }
}

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
/// (`performance`, `connections`, `file_events`).
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

/// An event that may carry the [`EventId`] its collector's runtime gave it
/// (the stable part of its message id when it is shipped).
pub(crate) trait Identified {
    fn event_id(&self) -> Option<EventId>;
}

macro_rules! identified {
    ($($ty:ty),*) => {$(
        impl Identified for $ty {
            fn event_id(&self) -> Option<EventId> {
                self.id
            }
        }
    )*};
}
identified!(
    ProcessEvent,
    NetworkEvent,
    FilesystemEvent,
    PerformanceEvent
);
