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
    stop: AtomicBool,
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
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&conn, &shared, &stats)
            })
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// This thread committed: a checkpoint is due once the log is past
    /// [`THRESHOLD_PAGES`].
    pub(crate) fn committed(&self) {
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

fn run(conn: &Connection, shared: &Shared, stats: &WriterStats) {
    // Said once a failing spell (a full disk fails every try).
    let mut failing = false;
    loop {
        while !shared.due.swap(false, Ordering::AcqRel) {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
        // (busy, pages in the log, pages copied): a passive checkpoint
        // copies what no reader still needs and never waits.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        match done {
            Ok(_) => {
                stats.wal_checkpoints.inc();
                failing = false;
            }
            Err(e) => {
                stats.wal_checkpoint_errors.inc();
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "checkpointing the store's write-ahead log failed; the writer's backstop bounds it");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        note(THRESHOLD_PAGES - 1);
        cp.committed();
        assert!(!cp.shared.due.load(Ordering::Acquire));
        note(THRESHOLD_PAGES);
        cp.committed();
        assert!(cp.shared.due.load(Ordering::Acquire));
    }
}
