//! The WAL checkpointer: what the writer commits to the write-ahead log is
//! copied into the database on a thread of its own, not by the commit that
//! crosses the threshold. That copy (and the `fsync`s it ends with) can
//! wait; the event path should not pay for it. A `PASSIVE` checkpoint takes
//! no lock a writer needs, so the writer goes on committing meanwhile.
//!
//! The threshold is SQLite's own ([`THRESHOLD_PAGES`]), so a store is
//! checkpointed as often as before: SQLite reports the log's length after
//! each commit ([`on_commit`], the connection's WAL hook, which replaces
//! its automatic checkpoint). Should this thread fall behind or fail, a
//! commit that leaves the log at [`BACKSTOP_PAGES`] checkpoints it itself,
//! so the log stays bounded.
//!
//! A log is started again (written from its first frame) only by a
//! transaction that begins with all of it copied, and a writer that keeps
//! committing outruns any copy made beside it. So once the thread has
//! copied a log past [`RESTART_PAGES`], the writer copies the frames it
//! committed meanwhile itself, after its next commit: a few hundred pages
//! where the thread copied thousands, but with a checkpoint's `fsync`s, on
//! the writer's thread once per [`RESTART_PAGES`] of log (3.5 % of the
//! writer's time under the fleet bench's sustained load).

use rusqlite::{Connection, OpenFlags};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tracing::warn;

use crate::store::{StoreError, WAL_SIZE_LIMIT};
use crate::writer::WriterStats;

/// The log's length (pages) past which a checkpoint is due: SQLite's
/// default automatic checkpoint.
pub(crate) const THRESHOLD_PAGES: i32 = 1_000;

/// The log's length (pages) past which, once the thread has copied it,
/// the writer copies what it committed meanwhile, so that its next
/// transaction starts the log again (about 8 MiB of 4 KiB pages).
///
/// SQLite starts the log again only when a transaction begins with every
/// frame copied. While the writer keeps committing, the thread's copy
/// never catches up: the log used to grow to [`BACKSTOP_PAGES`] (40 MiB)
/// under a sustained load, and each page read had that much more of the
/// log's index to search.
pub(crate) const RESTART_PAGES: i32 = 2_000;

/// The log's length (pages) at which a commit checkpoints it itself: only
/// when the thread has fallen that far behind.
pub(crate) const BACKSTOP_PAGES: i32 = 10_000;

/// Notes the log's length after this thread's commit.
fn note(pages: i32) {
    LOG_PAGES.with(|p| p.set(pages));
}

thread_local! {
    /// The log's length after this thread's last commit, as [`on_commit`]
    /// was told.
    static LOG_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// The WAL hook of a store whose log this module checkpoints: notes the
/// log's length for [`Checkpointer::committed`] (the commit's thread), and
/// checkpoints at [`BACKSTOP_PAGES`].
///
/// # Errors
/// None: a failed backstop checkpoint (`SQLITE_BUSY` while the thread
/// checkpoints) is left for the next commit, as SQLite's own automatic
/// checkpoint leaves it. An error from here would fail a statement whose
/// commit has happened, and the writer would write it again.
#[allow(clippy::unnecessary_wraps)] // the hook's signature
pub(crate) fn on_commit(
    wal: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    note(pages);
    if pages >= BACKSTOP_PAGES {
        let _ = wal.checkpoint();
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Shared {
    /// A checkpoint was asked for since the thread last took one.
    due: AtomicBool,
    /// The thread copied a log of at least [`RESTART_PAGES`] whole (as it
    /// was when the copy began): the writer copies the frames it committed
    /// meanwhile.
    copied: AtomicBool,
    stop: AtomicBool,
    /// Where the thread's checkpoints and the writer's are counted.
    stats: Arc<WriterStats>,
}

/// The checkpointing thread of one store; stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already opened, in WAL
    /// mode, by the writer's store) on a connection of its own, counting in
    /// `stats`.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the connection cannot be opened,
    /// [`StoreError::Spawn`] when the thread cannot be started.
    pub(crate) fn start(path: &Path, stats: Arc<WriterStats>) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(open_err)?;
        let shared = Arc::new(Shared {
            stats,
            ..Shared::default()
        });
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&conn, &shared)
            })
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// This thread committed on `conn`: a checkpoint is due once the log
    /// is past [`THRESHOLD_PAGES`]. Once the thread has copied a long log,
    /// this thread copies the frames it committed since (a few hundred
    /// pages, not the log), so that its next transaction starts the log
    /// again ([`RESTART_PAGES`]).
    pub(crate) fn committed(&self, conn: &Connection) {
        if self.shared.copied.swap(false, Ordering::AcqRel) {
            let stats = &self.shared.stats;
            // A failure (a reader still on old frames, a full disk) only
            // leaves the log to grow to the next try, as before.
            match checkpoint(conn) {
                Ok(_) => stats.wal_checkpoints.inc(),
                Err(_) => stats.wal_checkpoint_errors.inc(),
            }
            return;
        }
        if LOG_PAGES.with(Cell::get) < THRESHOLD_PAGES {
            return;
        }
        if !self.shared.due.swap(true, Ordering::AcqRel) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A passive checkpoint on `conn`: it copies what no reader still needs
/// and never waits. Returns the log's length and how much of it is copied
/// (pages).
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    // (busy, pages in the log, pages copied)
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// The thread's checkpoint: taken, counted, and the writer told to copy the
/// rest of a long log that it copied whole. `failing` is whether the last
/// one failed (a failing spell is said once: a full disk fails every try).
fn take(conn: &Connection, shared: &Shared, failing: &mut bool) {
    let stats = &shared.stats;
    match checkpoint(conn) {
        Ok((log, copied)) => {
            stats.wal_checkpoints.inc();
            if log >= i64::from(RESTART_PAGES) && copied == log {
                shared.copied.store(true, Ordering::Release);
            }
            *failing = false;
        }
        Err(e) => {
            stats.wal_checkpoint_errors.inc();
            if !std::mem::replace(failing, true) {
                warn!(error = %e, "checkpointing the store's write-ahead log failed; the writer's backstop bounds it");
            }
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    let mut failing = false;
    loop {
        while !shared.due.swap(false, Ordering::AcqRel) {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
        take(conn, shared, &mut failing);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Below the threshold a commit asks for nothing; at it, a checkpoint
    /// is due.
    #[test]
    fn a_checkpoint_is_due_only_past_the_threshold() {
        // No thread: nothing takes `due` back.
        let cp = Checkpointer {
            shared: Arc::default(),
            thread: None,
        };
        let conn = Connection::open_in_memory().unwrap();
        note(THRESHOLD_PAGES - 1);
        cp.committed(&conn);
        assert!(!cp.shared.due.load(Ordering::Acquire));
        note(THRESHOLD_PAGES);
        cp.committed(&conn);
        assert!(cp.shared.due.load(Ordering::Acquire));
    }

    /// Once the thread has copied a long log, the writer copies the frames
    /// it committed since, and its next transaction starts the log again;
    /// without that, the log only grows while the writer keeps committing.
    #[test]
    fn a_long_log_the_thread_copied_starts_again_at_the_writers_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let writer = Connection::open(&path).unwrap();
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        writer.wal_hook(Some(on_commit));
        writer.execute("CREATE TABLE t (b BLOB)", []).unwrap();
        // The thread's connection; the thread itself is not started, so
        // that its copy is taken here, between two commits.
        let other = Connection::open(&path).unwrap();
        let cp = Checkpointer {
            shared: Arc::default(),
            thread: None,
        };
        // Commits of about 256 pages each.
        let insert = "INSERT INTO t VALUES (zeroblob(1 << 20))";
        let commit = || {
            writer.execute(insert, []).unwrap();
            LOG_PAGES.with(Cell::get)
        };
        while commit() < RESTART_PAGES {}
        // The thread copies while the writer is inside a transaction,
        // which commits after the copy.
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer.execute(insert, []).unwrap();
        take(&other, &cp.shared, &mut false);
        assert!(
            cp.shared.copied.load(Ordering::Acquire),
            "the thread's copy of a long log was not noted"
        );
        writer.execute_batch("COMMIT").unwrap();
        let before = LOG_PAGES.with(Cell::get);
        cp.committed(&writer);
        let after = commit();
        assert!(
            after < before,
            "the log did not start again: {after} pages after {before}"
        );
        let stats = &cp.shared.stats;
        assert_eq!(stats.wal_checkpoints.get(), 2);
        assert_eq!(stats.wal_checkpoint_errors.get(), 0);
    }
}
