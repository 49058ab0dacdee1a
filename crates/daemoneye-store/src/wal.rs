//! The WAL checkpointer: what the writer commits to the write-ahead log is
//! copied into the database on a thread of its own, not by the commit that
//! crosses SQLite's automatic threshold. That copy (and the `fsync`s it
//! ends with) can wait; the event path should not pay for it. A `PASSIVE`
//! checkpoint takes no lock a writer needs, so the writer goes on
//! committing meanwhile.
//!
//! The writer keeps an automatic checkpoint as a backstop
//! ([`BACKSTOP_PAGES`], ten times SQLite's default): should this thread
//! fall behind or fail, the log still stays bounded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::time::Instant;
use tracing::warn;

use crate::store::{StoreError, WAL_SIZE_LIMIT};
use crate::writer::WriterStats;

/// The shortest time between two checkpoints: each copies every page
/// changed since the last once, however often it changed.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// The log's length (pages) at which a commit of the writer checkpoints
/// itself: only when this thread has fallen that far behind.
pub(crate) const BACKSTOP_PAGES: i64 = 10_000;

#[derive(Debug, Default)]
struct Shared {
    /// A commit came since the last checkpoint.
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

    /// The writer committed: a checkpoint is due (within [`INTERVAL`] of
    /// the last).
    pub(crate) fn committed(&self) {
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
        let next = Instant::now() + INTERVAL;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::park_timeout(next - now);
        }
    }
}
