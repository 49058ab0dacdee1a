//! Cached, budgeted hashing of executables (SHA-256, BLAKE3).
//!
//! - [`HasherConfig`]: which digests, the largest file hashed, a byte/s
//!   budget, allowed roots and the cache size; serde/TOML, validated into
//!   a [`HashEngine`] by [`HashEngine::new`].
//! - [`HashEngine`]: cheap to clone and share. [`HashEngine::hash_file`]
//!   `lstat`s a path without following a final symlink, refuses what is
//!   not a regular file under an allowed root or is too large, answers an
//!   unchanged file (same device, inode, size, mtime, ctime: any of its
//!   hardlinks) from a bounded LRU cache, lets a request for a file being
//!   read join that read, and otherwise waits for one of
//!   `max_concurrent_hashes` readers and the budget, opens the file and
//!   streams it in chunks on tokio's blocking pool, pacing the chunks to
//!   the budget. A file whose size or times change while it is read is
//!   flagged [`changed_during_hash`](HashOutcome::changed_during_hash) and
//!   not cached.
//!
//! # Bounds
//! For any number of callers and files, one engine holds at most
//! `max_concurrent_hashes` (default 4) files open and as many read
//! buffers of `chunk_size_bytes` (default 256 KiB: 1 MiB in all), plus the
//! cache (`cache_capacity_entries`), and runs at most that many plus 16
//! ([`config::MAX_CONCURRENT_PROBES`] `lstat`s) blocking tasks at once.
//! At most `max_queued_hashes` (default
//! 256) further requests wait for a reader; beyond that a request is
//! refused at once with [`HashError::Busy`], counted. 1,100 hardlinks of
//! one 16 MiB file asked for at once are read once, with one file open
//! (`tests/hardlink_storm.rs`).
//! - [`HashOutcome`]: the digests ([`Digest`], lowercase hex) and the
//!   identity of the file they are for.
//! - [`HashError`]: one variant per reason a file was not hashed, with
//!   vanished files and processes kept apart from real failures.
//! - With the `triggers` feature (off by default): `BinaryHasherCollector`,
//!   the analysis collector that answers `BinaryHash` trigger requests on
//!   an event bus (see the `collector` module).
//! - [`HasherStats`]: hashed, cache hits/misses/evictions, joined reads,
//!   files open (now and peak), bytes, refusals by reason, changed files,
//!   time waited on the budget.
//!
//! ```
//! use collector_core::HashAlgorithm;
//! use daemoneye_hasher::{HashEngine, HashError, HasherConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tool");
//! std::fs::write(&path, b"abc")?;
//!
//! let engine = HashEngine::new(HasherConfig {
//!     algorithms: vec![HashAlgorithm::Sha256, HashAlgorithm::Blake3],
//!     ..HasherConfig::default()
//! })?;
//! let first = engine.hash_file(&path).await?;
//! assert_eq!(
//!     first.digest(HashAlgorithm::Sha256),
//!     Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
//! );
//! assert!(!first.from_cache);
//!
//! // Unchanged: answered from the cache, nothing read.
//! let again = engine.hash_file(&path).await?;
//! assert!(again.from_cache && again.bytes_read == 0);
//!
//! // A symlink as the last component is never followed.
//! let link = dir.path().join("link");
//! std::os::unix::fs::symlink(&path, &link)?;
//! assert!(matches!(engine.hash_file(&link).await, Err(HashError::IsSymlink { .. })));
//!
//! let stats = engine.stats();
//! assert_eq!((stats.files_hashed, stats.cache_hits, stats.refused.is_symlink), (1, 1, 1));
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//! The allowed-roots check is lexical, on the path as given; a symlinked
//! directory inside a root can lead outside it. Paths like
//! `/proc/<pid>/exe` are symlinks and are refused: resolve them first.

mod budget;
mod cache;
#[cfg(feature = "triggers")]
pub mod collector;
pub mod config;
mod engine;
mod error;
mod stats;

#[cfg(feature = "triggers")]
pub use collector::{BinaryHasherCollector, BinaryHasherStats, BINARY_HASHER_ID};
pub use config::{ConfigError, HasherConfig};
pub use engine::{Digest, HashEngine, HashOutcome};
pub use error::HashError;
pub use stats::{HasherStats, RefusedStats};

#[cfg(test)]
mod tests {
    #[test]
    fn public_types_are_send_and_sync() {
        collector_core::assert_send_sync!(
            crate::HashEngine,
            crate::HashOutcome,
            crate::HashError,
            crate::HasherConfig,
            crate::ConfigError,
            crate::HasherStats
        );
    }

    #[test]
    fn hash_file_future_is_send() {
        fn check<T: Send>(_: &T) {}
        let engine = crate::HashEngine::new(crate::HasherConfig::default());
        if let Ok(engine) = engine {
            check(&engine.hash_file(std::path::Path::new("/")));
        }
    }
}
