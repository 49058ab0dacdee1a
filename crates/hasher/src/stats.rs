//! [`HasherStats`]: what the engine did, counted with atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::HashError;

/// A snapshot of an engine's counters since it was built (clones of an
/// engine share them). Every call to
/// [`hash_file`](crate::HashEngine::hash_file) ends as exactly one of: a
/// cache hit, a completed hash (`files_hashed`), or a refusal counted in
/// [`refused`](Self::refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HasherStats {
    /// Files read to the end and digested (including those flagged
    /// `changed_during_hash`).
    pub files_hashed: u64,
    /// Calls answered from the cache without reading.
    pub cache_hits: u64,
    /// Lookups that found nothing (each is followed by a read or a
    /// refusal such as `too_large`).
    pub cache_misses: u64,
    /// Entries dropped to stay within `cache_capacity_entries`.
    pub cache_evictions: u64,
    /// Bytes read and digested.
    pub bytes_hashed: u64,
    /// Hashes whose file changed (size, mtime or ctime) while read; their
    /// digests were returned but not cached.
    pub changed_during_hash: u64,
    /// Total time hashes spent waiting on the `bytes_per_sec` budget.
    pub budget_waited: Duration,
    /// Calls that produced no digest, by reason.
    pub refused: RefusedStats,
}

/// Refusals by [`HashError`] variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedStats {
    /// [`HashError::NotFound`].
    pub not_found: u64,
    /// [`HashError::ProcessGone`].
    pub process_gone: u64,
    /// [`HashError::PermissionDenied`].
    pub permission_denied: u64,
    /// [`HashError::IsSymlink`].
    pub is_symlink: u64,
    /// [`HashError::NotRegularFile`].
    pub not_regular_file: u64,
    /// [`HashError::OutsideAllowedRoots`].
    pub outside_allowed_roots: u64,
    /// [`HashError::TooLarge`].
    pub too_large: u64,
    /// [`HashError::Io`].
    pub io: u64,
    /// [`HashError::TaskFailed`].
    pub task_failed: u64,
}

impl RefusedStats {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.not_found
            + self.process_gone
            + self.permission_denied
            + self.is_symlink
            + self.not_regular_file
            + self.outside_allowed_roots
            + self.too_large
            + self.io
            + self.task_failed
    }
}

/// The live counters behind [`HasherStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) files_hashed: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) cache_evictions: AtomicU64,
    pub(crate) bytes_hashed: AtomicU64,
    pub(crate) changed_during_hash: AtomicU64,
    pub(crate) budget_waited_nanos: AtomicU64,
    refused: [AtomicU64; REASONS],
}

const REASONS: usize = 9;

fn slot(err: &HashError) -> usize {
    match err {
        HashError::NotFound { .. } => 0,
        HashError::ProcessGone { .. } => 1,
        HashError::PermissionDenied { .. } => 2,
        HashError::IsSymlink { .. } => 3,
        HashError::NotRegularFile { .. } => 4,
        HashError::OutsideAllowedRoots { .. } => 5,
        HashError::TooLarge { .. } => 6,
        HashError::Io { .. } => 7,
        HashError::TaskFailed { .. } => 8,
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn refused(&self, err: &HashError) {
        add(&self.refused[slot(err)], 1);
    }

    pub(crate) fn waited(&self, d: Duration) {
        add(
            &self.budget_waited_nanos,
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    pub(crate) fn snapshot(&self) -> HasherStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let r = |e: usize| get(&self.refused[e]);
        HasherStats {
            files_hashed: get(&self.files_hashed),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
            cache_evictions: get(&self.cache_evictions),
            bytes_hashed: get(&self.bytes_hashed),
            changed_during_hash: get(&self.changed_during_hash),
            budget_waited: Duration::from_nanos(get(&self.budget_waited_nanos)),
            refused: RefusedStats {
                not_found: r(0),
                process_gone: r(1),
                permission_denied: r(2),
                is_symlink: r(3),
                not_regular_file: r(4),
                outside_allowed_roots: r(5),
                too_large: r(6),
                io: r(7),
                task_failed: r(8),
            },
        }
    }
}
