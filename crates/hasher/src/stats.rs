//! [`HasherStats`]: what the engine did, counted with [`Counter`]s.

use std::sync::Mutex;
use std::time::Duration;

use collector_core::lock;
use collector_core::metrics::{Counter, Gauge, Registry};

use crate::error::REASONS;
use crate::HashError;

/// A snapshot of an engine's counters since it was built (clones of an
/// engine share them). Every call to
/// [`hash_file`](crate::HashEngine::hash_file) ends as exactly one of: a
/// cache hit, a join of a running read of the same inode (`joined`), a
/// completed hash (`files_hashed`), or a refusal counted in
/// [`refused`](Self::refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HasherStats {
    /// Files read to the end and digested (including those flagged
    /// `changed_during_hash`).
    pub files_hashed: u64,
    /// Calls answered from the cache without reading.
    pub cache_hits: u64,
    /// Calls answered by the read another call was making of the same
    /// file (same device, inode, size, mtime, ctime: a hardlink, or the
    /// same path again) without opening it themselves.
    pub joined: u64,
    /// Files open for hashing now.
    pub files_open: u64,
    /// The most files that were open for hashing at once (never above
    /// `max_concurrent_hashes`).
    pub files_open_peak: u64,
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
    /// [`HashError::Busy`].
    pub busy: u64,
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
            + self.busy
    }
}

/// The live counters behind [`HasherStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) files_hashed: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) joined: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) cache_evictions: Counter,
    pub(crate) bytes_hashed: Counter,
    pub(crate) changed_during_hash: Counter,
    pub(crate) budget_waited_nanos: Counter,
    refused: [Counter; REASONS.len()],
    open: OpenFiles,
}

/// Files open for hashing, now and at most, as gauges.
#[derive(Debug, Default)]
struct OpenFiles {
    /// (now, peak); the gauges mirror it.
    level: Mutex<(i64, i64)>,
    now: Gauge,
    peak: Gauge,
}

impl OpenFiles {
    fn change(&self, by: i64) {
        // Nothing panics under the lock; recover from poisoning anyway.
        let mut level = lock(&self.level);
        level.0 += by;
        level.1 = level.1.max(level.0);
        self.now.set(level.0);
        self.peak.set(level.1);
    }
}

impl Counters {
    pub(crate) fn refused(&self, err: &HashError) {
        self.refused[err.slot()].inc();
    }

    /// A file was opened for hashing.
    pub(crate) fn opened(&self) {
        self.open.change(1);
    }

    /// A file opened for hashing was closed.
    pub(crate) fn closed(&self) {
        self.open.change(-1);
    }

    pub(crate) fn waited(&self, d: Duration) {
        self.budget_waited_nanos
            .add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Registers every counter in `registry` (stage `hasher`).
    pub(crate) fn register(&self, registry: &Registry) {
        let stage = [("stage", "hasher")];
        registry.register_counters(
            &stage,
            &[
                (
                    "daemoneye_files_hashed_total",
                    "Files read to the end and digested.",
                    &self.files_hashed,
                ),
                (
                    "daemoneye_hash_cache_hits_total",
                    "Hashes answered from the cache without reading.",
                    &self.cache_hits,
                ),
                (
                    "daemoneye_hashes_joined_total",
                    "Hashes answered by a running read of the same inode (hardlinks, repeats).",
                    &self.joined,
                ),
                (
                    "daemoneye_hash_cache_misses_total",
                    "Hash cache lookups that found nothing.",
                    &self.cache_misses,
                ),
                (
                    "daemoneye_hash_cache_evictions_total",
                    "Hash cache entries dropped to stay within capacity.",
                    &self.cache_evictions,
                ),
                (
                    "daemoneye_bytes_hashed_total",
                    "Bytes read and digested.",
                    &self.bytes_hashed,
                ),
                (
                    "daemoneye_files_changed_during_hash_total",
                    "Hashes whose file changed while read (not cached).",
                    &self.changed_during_hash,
                ),
                (
                    "daemoneye_hash_budget_waited_nanoseconds_total",
                    "Time hashes spent waiting on the bytes-per-second budget.",
                    &self.budget_waited_nanos,
                ),
            ],
        );
        registry.register_gauge(
            "daemoneye_hash_files_open",
            "Files open for hashing now.",
            &stage,
            &self.open.now,
        );
        registry.register_gauge(
            "daemoneye_hash_files_open_peak",
            "The most files open for hashing at once (bounded by max_concurrent_hashes).",
            &stage,
            &self.open.peak,
        );
        registry.register_by_reason(
            "daemoneye_hashes_refused_total",
            "Hash calls that produced no digest, by reason.",
            &stage,
            REASONS.iter().copied().zip(&self.refused),
        );
    }

    pub(crate) fn snapshot(&self) -> HasherStats {
        let r = |e: usize| self.refused[e].get();
        HasherStats {
            files_hashed: self.files_hashed.get(),
            cache_hits: self.cache_hits.get(),
            joined: self.joined.get(),
            files_open: u64::try_from(self.open.now.get()).unwrap_or(0),
            files_open_peak: u64::try_from(self.open.peak.get()).unwrap_or(0),
            cache_misses: self.cache_misses.get(),
            cache_evictions: self.cache_evictions.get(),
            bytes_hashed: self.bytes_hashed.get(),
            changed_during_hash: self.changed_during_hash.get(),
            budget_waited: Duration::from_nanos(self.budget_waited_nanos.get()),
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
                busy: r(9),
            },
        }
    }
}
