//! Compact lifecycle events (schema 12): which rows a batch of process
//! events becomes, and the texts the rows share.
//!
//! A short-lived process is forked, exec'd and gone within one batch; three
//! rows of the same facts (and three index entries of the same 52-byte
//! process key) said it before. Now an exec row also holds its process's
//! fork just before it and its exit just after it, when they came in the
//! same batch ([`rows`]): `forked_at`, `exited_at` and `exit_code`, and
//! the sequence numbers of their event ids (whose run is the exec's), so
//! nothing but the fork's and the exit's copies of the same facts is left
//! out. `process_events` (a view) shows such a row as the exec it is, with
//! `exited_at` set: `WHERE event_type = 'exit' OR exited_at IS NOT NULL`
//! finds every exit.
//!
//! The texts rows repeat (a name, an executable, its hash, a cgroup) are
//! stored once in `strings` and named by id ([`Strings`]); the view puts
//! them back, so every reader (rules, `daemoneye-cli query`, the ledger's
//! digests) sees the values, not the ids.

use std::borrow::Borrow;
use std::collections::HashMap;

use collector_core::{ProcessEvent, ProcessEventType, ProcessKey};
use rusqlite::Transaction;

use crate::store::StoreError;

/// One row of `process_event_rows`: an event, and for an exec the fork and
/// exit of its process that it took in (places in the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    /// The event the row is (its type, facts and id).
    pub(crate) event: usize,
    /// The fork just before an exec, in the same batch.
    pub(crate) fork: Option<usize>,
    /// The exit just after an exec, in the same batch.
    pub(crate) exit: Option<usize>,
}

impl Row {
    fn one(event: usize) -> Self {
        Self {
            event,
            fork: None,
            exit: None,
        }
    }
}

/// Whether `b`'s id can be stored as a sequence number of `a`'s run: both
/// have ids of one run, or neither has one.
fn same_run(a: &ProcessEvent, b: &ProcessEvent) -> bool {
    match (a.id, b.id) {
        (Some(x), Some(y)) => x.run == y.run,
        (None, None) => true,
        _ => false,
    }
}

/// The rows the events of one batch that `stored` keeps become, in order:
/// each event a row, except that a fork followed by an exec of the same
/// process (nothing of that process between them) is the exec's row, and
/// so is an exit following the exec. A row takes the place of its first
/// event, so row ids keep the order in which each process's events came.
pub(crate) fn rows<E: Borrow<ProcessEvent>>(
    events: &[E],
    stored: impl Fn(&ProcessEvent) -> bool,
) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    // Per process: the row of a fork an exec may take in, or of an exec an
    // exit may join. Any other event of the process ends either chance.
    let mut fork_row: HashMap<ProcessKey, usize> = HashMap::new();
    let mut exec_row: HashMap<ProcessKey, usize> = HashMap::new();
    let event = |i: usize| events[i].borrow();
    for (i, e) in events.iter().map(Borrow::borrow).enumerate() {
        if !stored(e) {
            continue;
        }
        let Some(key) = e.process_key else {
            out.push(Row::one(i));
            continue;
        };
        let fork = fork_row.remove(&key);
        let exec = exec_row.remove(&key);
        match e.event_type {
            ProcessEventType::Fork => {
                fork_row.insert(key, out.len());
                out.push(Row::one(i));
            }
            ProcessEventType::Exec => match fork {
                Some(r) if same_run(e, event(out[r].event)) => {
                    out[r] = Row {
                        event: i,
                        fork: Some(out[r].event),
                        exit: None,
                    };
                    exec_row.insert(key, r);
                }
                _ => {
                    exec_row.insert(key, out.len());
                    out.push(Row::one(i));
                }
            },
            ProcessEventType::Exit => match exec {
                Some(r) if same_run(event(out[r].event), e) => out[r].exit = Some(i),
                _ => out.push(Row::one(i)),
            },
            _ => out.push(Row::one(i)),
        }
    }
    out
}

/// The ids of the texts in `strings`, as far as this store has looked them
/// up: a lookup per text per row would cost more than the row. Ids found or
/// added in a transaction are remembered at once; if it does not commit
/// ([`committed`](Self::committed)), the next one's start
/// ([`begin`](Self::begin)) forgets every id, since some may name rows that
/// were rolled back.
#[derive(Debug, Default)]
pub(crate) struct Strings {
    known: HashMap<Box<str>, i64>,
    /// Ids were added since the last commit: if the transaction fails
    /// they are not in the table, and everything is forgotten (failures
    /// are rare; a second map moved into the first at every commit cost
    /// more).
    uncommitted: bool,
}

impl Strings {
    /// Texts remembered at most: past it, the memory starts again (a host
    /// runs far fewer distinct programs and cgroups).
    const CAPACITY: usize = 16_384;

    /// A transaction starts: what an earlier one that did not commit added
    /// is not in the table.
    pub(crate) fn begin(&mut self) {
        if self.uncommitted {
            self.forget();
        }
        if self.known.len() > Self::CAPACITY {
            self.known.clear();
        }
    }

    /// The transaction committed: its texts are in the table for good.
    pub(crate) fn committed(&mut self) {
        self.uncommitted = false;
    }

    /// Rows of `strings` were deleted (a prune): nothing is known.
    pub(crate) fn forget(&mut self) {
        self.known.clear();
        self.uncommitted = false;
    }

    /// The texts' ids inside `tx`: its statements prepared once for all
    /// the texts of a write (a cached statement is still looked up by its
    /// SQL's text at every use).
    ///
    /// # Errors
    /// SQLite errors.
    pub(crate) fn in_tx<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
    ) -> Result<Interner<'a>, StoreError> {
        // One statement for a new text (most misses: the known ones are
        // remembered), a second for one already stored. Not `RETURNING`:
        // SQLite gathers what it returns in a temporary table, opened and
        // closed at every run (a third of the writer's time on new texts).
        Ok(Interner {
            insert: tx.prepare_cached(
                "INSERT INTO strings (value) VALUES (?1) ON CONFLICT (value) DO NOTHING",
            )?,
            select: tx.prepare_cached("SELECT id FROM strings WHERE value = ?1")?,
            tx,
            strings: self,
        })
    }

    /// The id of `value` in `strings`, added inside `tx` when missing.
    ///
    /// # Errors
    /// SQLite errors.
    #[cfg(test)]
    pub(crate) fn id(&mut self, tx: &Transaction<'_>, value: &str) -> Result<i64, StoreError> {
        self.in_tx(tx)?.id(value)
    }
}

/// [`Strings`] inside one transaction ([`Strings::in_tx`]).
pub(crate) struct Interner<'a> {
    strings: &'a mut Strings,
    tx: &'a Transaction<'a>,
    insert: rusqlite::CachedStatement<'a>,
    select: rusqlite::CachedStatement<'a>,
}

impl Interner<'_> {
    /// The id of `value` in `strings`, added when missing.
    ///
    /// # Errors
    /// SQLite errors.
    pub(crate) fn id(&mut self, value: &str) -> Result<i64, StoreError> {
        let strings = &mut *self.strings;
        if let Some(&id) = strings.known.get(value) {
            return Ok(id);
        }
        let id = if self.insert.execute([value])? == 1 {
            self.tx.last_insert_rowid()
        } else {
            self.select.query_row([value], |r| r.get(0))?
        };
        strings.known.insert(value.into(), id);
        strings.uncommitted = true;
        Ok(id)
    }

    /// [`id`](Self::id) of a text that may be absent.
    ///
    /// # Errors
    /// SQLite errors.
    pub(crate) fn id_of(&mut self, value: Option<&str>) -> Result<Option<i64>, StoreError> {
        value.map(|v| self.id(v)).transpose()
    }
}

/// Deletes the texts no row of `process_event_rows` names any more (after a
/// prune deleted rows). Returns how many went.
///
/// # Errors
/// SQLite errors.
pub(crate) fn prune_strings(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "DELETE FROM strings WHERE id NOT IN (
            SELECT name FROM process_event_rows
            UNION SELECT exe FROM process_event_rows WHERE exe IS NOT NULL
            UNION SELECT exe_hash FROM process_event_rows WHERE exe_hash IS NOT NULL
            UNION SELECT hash_algorithm FROM process_event_rows WHERE hash_algorithm IS NOT NULL
            UNION SELECT container_id FROM process_event_rows WHERE container_id IS NOT NULL
            UNION SELECT cgroup FROM process_event_rows WHERE cgroup IS NOT NULL)",
        [],
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroU64;

    use collector_core::{BootId, EventId};

    use super::*;

    fn ev(t: ProcessEventType, pid: u32, seq: u64) -> ProcessEvent {
        ProcessEvent {
            event_type: t,
            process_key: Some(ProcessKey::new(BootId::from_bytes([1; 16]), pid, 7)),
            id: Some(EventId::new(9, NonZeroU64::new(seq).unwrap())),
            ..ProcessEvent::new(pid, "x")
        }
    }

    /// Each row as (its event's seq, the fork's, the exit's).
    fn shape(events: &[ProcessEvent]) -> Vec<(u64, Option<u64>, Option<u64>)> {
        let seq = |i: usize| events[i].id.unwrap().seq.get();
        rows(events, |_| true)
            .iter()
            .map(|r| (seq(r.event), r.fork.map(seq), r.exit.map(seq)))
            .collect()
    }

    #[test]
    fn a_short_lived_process_is_one_row_in_its_forks_place() {
        use ProcessEventType::{Exec, Exit, Fork};
        let events = [
            ev(Fork, 10, 1),
            ev(Fork, 11, 2),
            ev(Exec, 10, 3),
            ev(Exec, 11, 4),
            ev(Exit, 11, 5),
            ev(Exit, 10, 6),
        ];
        assert_eq!(
            shape(&events),
            [(3, Some(1), Some(6)), (4, Some(2), Some(5))]
        );
    }

    #[test]
    fn only_a_fork_just_before_and_an_exit_just_after_an_exec_join_it() {
        use ProcessEventType::{Exec, Exit, Fork, Modified};
        // A fork alone; an exec without a fork; a change between exec and exit.
        let events = [
            ev(Fork, 20, 1),
            ev(Exec, 21, 2),
            ev(Modified, 21, 3),
            ev(Exit, 21, 4),
            ev(Exit, 20, 5),
        ];
        assert_eq!(
            shape(&events),
            [
                (1, None, None),
                (2, None, None),
                (3, None, None),
                (4, None, None),
                (5, None, None)
            ]
        );
        // Two execs: the fork joins the first, the exit the second.
        let events = [
            ev(Fork, 22, 1),
            ev(Exec, 22, 2),
            ev(Exec, 22, 3),
            ev(Exit, 22, 4),
        ];
        assert_eq!(shape(&events), [(2, Some(1), None), (3, None, Some(4))]);
    }

    #[test]
    fn events_of_another_run_or_without_a_key_stay_rows_of_their_own() {
        use ProcessEventType::{Exec, Exit, Fork};
        let mut fork = ev(Fork, 30, 1);
        fork.id = Some(EventId::new(8, NonZeroU64::new(1).unwrap()));
        let mut keyless = ev(Exit, 30, 3);
        keyless.process_key = None;
        let events = [fork, ev(Exec, 30, 2), keyless];
        assert_eq!(
            shape(&events),
            [(1, None, None), (2, None, None), (3, None, None)]
        );
    }
    #[test]
    fn a_text_has_one_id_whether_new_remembered_forgotten_or_rolled_back() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let mut strings = Strings::default();
        let tx = conn.transaction().unwrap();
        strings.begin();
        let a = strings.id(&tx, "/usr/bin/a").unwrap();
        let b = strings.id(&tx, "/usr/bin/b").unwrap();
        assert_ne!(a, b);
        assert_eq!(strings.id(&tx, "/usr/bin/a").unwrap(), a);
        tx.commit().unwrap();
        strings.committed();
        // Forgotten (as after a prune), stored still: found, not added.
        strings.forget();
        let tx = conn.transaction().unwrap();
        strings.begin();
        assert_eq!(strings.id(&tx, "/usr/bin/a").unwrap(), a);
        // Added in a transaction that rolls back: gone with it.
        let c = strings.id(&tx, "/usr/bin/c").unwrap();
        drop(tx);
        let tx = conn.transaction().unwrap();
        strings.begin();
        let c2 = strings.id(&tx, "/usr/bin/c").unwrap();
        let stored: i64 = tx
            .query_row(
                "SELECT id FROM strings WHERE value = '/usr/bin/c'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, c2);
        assert!(c2 >= c);
        let count: i64 = tx
            .query_row(
                "SELECT count(*) FROM strings WHERE value LIKE '/usr/bin/%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 3);
    }
}
