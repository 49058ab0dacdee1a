//! [`HasherConfig`]: what the engine hashes, how much, and how fast.
//!
//! The serde struct is checked by [`HasherConfig::validate`] (called by
//! [`HashEngine::new`](crate::HashEngine::new)) and turned into a private
//! validated form, so a running engine never sees a bad value.
//!
//! ```
//! use daemoneye_hasher::HasherConfig;
//!
//! let config: HasherConfig = toml::from_str(
//!     r#"
//!     algorithms = ["sha256", "blake3"]
//!     bytes_per_sec = 0            # unlimited
//!     allowed_roots = ["/usr", "/opt"]
//!     "#,
//! )?;
//! config.validate()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Component, Path, PathBuf};

use collector_core::HashAlgorithm;
use serde::{Deserialize, Serialize};

/// Default largest file hashed: 256 MiB.
pub const DEFAULT_MAX_FILE_SIZE_BYTES: u64 = 256 << 20;
/// Default read budget: 64 MiB/s.
pub const DEFAULT_BYTES_PER_SEC: u64 = 64 << 20;
/// Default read size: 256 KiB.
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 256 << 10;
/// Default cache size: 16,384 files.
pub const DEFAULT_CACHE_CAPACITY_ENTRIES: usize = 16_384;
/// Smallest accepted `chunk_size_bytes`.
pub const MIN_CHUNK_SIZE_BYTES: u64 = 4 << 10;
/// Largest accepted `chunk_size_bytes`.
pub const MAX_CHUNK_SIZE_BYTES: u64 = 16 << 20;
/// Largest accepted `cache_capacity_entries` (about 100 MiB of entries).
pub const MAX_CACHE_CAPACITY_ENTRIES: usize = 1 << 20;
/// Default hashes read at once: 4, so at most 4 files open and 4 chunk
/// buffers (1 MiB at the default chunk size) for any load.
pub const DEFAULT_MAX_CONCURRENT_HASHES: usize = 4;
/// Largest accepted `max_concurrent_hashes`.
pub const MAX_CONCURRENT_HASHES: usize = 64;
/// The most `lstat`s one engine runs at once, each as a task on tokio's
/// blocking pool (besides one per reader): a request storm, or a hung
/// filesystem, keeps no more of the pool busy than that.
pub const MAX_CONCURRENT_PROBES: usize = 16;
/// Default requests that may wait for a free reader: 256.
pub const DEFAULT_MAX_QUEUED_HASHES: usize = 256;
/// Largest accepted `max_queued_hashes`.
pub const MAX_QUEUED_HASHES: usize = 65_536;

/// How the hash engine behaves; TOML/serde, validated by
/// [`validate`](Self::validate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HasherConfig {
    /// The digests computed for every file, in this order; at least one,
    /// no duplicates. Default: `["sha256"]`.
    pub algorithms: Vec<HashAlgorithm>,
    /// Files larger than this (by `fstat` of the opened file) are refused
    /// with [`HashError::TooLarge`](crate::HashError::TooLarge). Must be
    /// positive.
    pub max_file_size_bytes: u64,
    /// Read budget shared by every hash in flight on one engine, in
    /// bytes per second; `0` means unlimited. A burst of one chunk is
    /// allowed after an idle period.
    pub bytes_per_sec: u64,
    /// How much is read (and charged to the budget) at a time, between
    /// [`MIN_CHUNK_SIZE_BYTES`] and [`MAX_CHUNK_SIZE_BYTES`].
    pub chunk_size_bytes: u64,
    /// Only paths under one of these absolute directories are hashed. The
    /// check is lexical, on the path as given. Default: `["/"]`.
    pub allowed_roots: Vec<PathBuf>,
    /// How many files' digests are remembered (least recently used is
    /// evicted first); `0` turns the cache off.
    pub cache_capacity_entries: usize,
    /// How many files are read at once, between 1 and
    /// [`MAX_CONCURRENT_HASHES`]. This is the engine's bound on open files
    /// (one each) and on read buffers (`max_concurrent_hashes ×
    /// chunk_size_bytes`), whatever the number of callers: a file is
    /// opened only once a reader is free and the budget allows its first
    /// chunk. Requests for an inode already being read join that read.
    pub max_concurrent_hashes: usize,
    /// How many requests may wait for a free reader (up to
    /// [`MAX_QUEUED_HASHES`]); beyond that a request is refused at once
    /// with [`HashError::Busy`](crate::HashError::Busy), counted. Cache
    /// hits and requests joining a running read never wait here.
    pub max_queued_hashes: usize,
}

impl Default for HasherConfig {
    fn default() -> Self {
        Self {
            algorithms: vec![HashAlgorithm::Sha256],
            max_file_size_bytes: DEFAULT_MAX_FILE_SIZE_BYTES,
            bytes_per_sec: DEFAULT_BYTES_PER_SEC,
            chunk_size_bytes: DEFAULT_CHUNK_SIZE_BYTES,
            allowed_roots: vec![PathBuf::from("/")],
            cache_capacity_entries: DEFAULT_CACHE_CAPACITY_ENTRIES,
            max_concurrent_hashes: DEFAULT_MAX_CONCURRENT_HASHES,
            max_queued_hashes: DEFAULT_MAX_QUEUED_HASHES,
        }
    }
}

/// A configuration value the engine cannot run with. Each variant names
/// the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A list that needs at least one element is empty.
    #[error("{field}: must not be empty")]
    Empty {
        /// The config field.
        field: &'static str,
    },
    /// A number outside its accepted range.
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        /// The config field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// An algorithm listed more than once.
    #[error("{field}: {algorithm} is listed more than once")]
    DuplicateAlgorithm {
        /// The config field.
        field: &'static str,
        /// The repeated algorithm (`sha256`, `blake3`).
        algorithm: &'static str,
    },
    /// An algorithm this crate cannot compute (a newer `HashAlgorithm`).
    #[error("{field}: {algorithm} is not supported by this hasher")]
    UnsupportedAlgorithm {
        /// The config field.
        field: &'static str,
        /// The algorithm's name.
        algorithm: &'static str,
    },
    /// An allowed root that is relative or contains `..`, so that a
    /// lexical prefix check against it would mean nothing.
    #[error("{field}: {path} must be absolute and free of `..`", path = path.display())]
    BadRoot {
        /// The config field.
        field: &'static str,
        /// The root given.
        path: PathBuf,
    },
}

impl ConfigError {
    /// The config field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field }
            | Self::OutOfRange { field, .. }
            | Self::DuplicateAlgorithm { field, .. }
            | Self::UnsupportedAlgorithm { field, .. }
            | Self::BadRoot { field, .. } => field,
        }
    }
}

/// The checked form the engine runs with.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub(crate) algorithms: Vec<HashAlgorithm>,
    pub(crate) max_file_size_bytes: u64,
    pub(crate) bytes_per_sec: u64,
    pub(crate) chunk_size: usize,
    pub(crate) allowed_roots: Vec<PathBuf>,
    pub(crate) cache_capacity: usize,
    pub(crate) workers: usize,
    pub(crate) max_queued: usize,
}

/// Whether this crate can compute `algorithm`.
pub(crate) fn supported(algorithm: HashAlgorithm) -> bool {
    matches!(algorithm, HashAlgorithm::Sha256 | HashAlgorithm::Blake3)
}

/// A path a lexical prefix check is meaningful for: absolute, no `..`.
pub(crate) fn is_checkable(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| matches!(c, Component::ParentDir))
}

impl HasherConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first bad field, as a [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.clone().into_validated().map(drop)
    }

    pub(crate) fn into_validated(self) -> Result<Validated, ConfigError> {
        if self.algorithms.is_empty() {
            return Err(ConfigError::Empty {
                field: "algorithms",
            });
        }
        for (i, &alg) in self.algorithms.iter().enumerate() {
            if !supported(alg) {
                return Err(ConfigError::UnsupportedAlgorithm {
                    field: "algorithms",
                    algorithm: alg.as_str(),
                });
            }
            if self.algorithms[..i].contains(&alg) {
                return Err(ConfigError::DuplicateAlgorithm {
                    field: "algorithms",
                    algorithm: alg.as_str(),
                });
            }
        }
        if self.max_file_size_bytes == 0 {
            return Err(ConfigError::OutOfRange {
                field: "max_file_size_bytes",
                value: 0,
                min: 1,
                max: u64::MAX,
            });
        }
        let chunk_size = usize::try_from(self.chunk_size_bytes)
            .ok()
            .filter(|_| {
                (MIN_CHUNK_SIZE_BYTES..=MAX_CHUNK_SIZE_BYTES).contains(&self.chunk_size_bytes)
            })
            .ok_or(ConfigError::OutOfRange {
                field: "chunk_size_bytes",
                value: self.chunk_size_bytes,
                min: MIN_CHUNK_SIZE_BYTES,
                max: MAX_CHUNK_SIZE_BYTES,
            })?;
        if self.allowed_roots.is_empty() {
            return Err(ConfigError::Empty {
                field: "allowed_roots",
            });
        }
        if let Some(bad) = self.allowed_roots.iter().find(|r| !is_checkable(r)) {
            return Err(ConfigError::BadRoot {
                field: "allowed_roots",
                path: bad.clone(),
            });
        }
        if self.cache_capacity_entries > MAX_CACHE_CAPACITY_ENTRIES {
            return Err(ConfigError::OutOfRange {
                field: "cache_capacity_entries",
                value: u64::try_from(self.cache_capacity_entries).unwrap_or(u64::MAX),
                min: 0,
                max: MAX_CACHE_CAPACITY_ENTRIES as u64,
            });
        }
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if !(1..=MAX_CONCURRENT_HASHES).contains(&self.max_concurrent_hashes) {
            return Err(ConfigError::OutOfRange {
                field: "max_concurrent_hashes",
                value: as_u64(self.max_concurrent_hashes),
                min: 1,
                max: as_u64(MAX_CONCURRENT_HASHES),
            });
        }
        if self.max_queued_hashes > MAX_QUEUED_HASHES {
            return Err(ConfigError::OutOfRange {
                field: "max_queued_hashes",
                value: as_u64(self.max_queued_hashes),
                min: 0,
                max: as_u64(MAX_QUEUED_HASHES),
            });
        }
        Ok(Validated {
            algorithms: self.algorithms,
            max_file_size_bytes: self.max_file_size_bytes,
            bytes_per_sec: self.bytes_per_sec,
            chunk_size,
            allowed_roots: self.allowed_roots,
            cache_capacity: self.cache_capacity_entries,
            workers: self.max_concurrent_hashes,
            max_queued: self.max_queued_hashes,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn field_of(config: &HasherConfig) -> &'static str {
        config.validate().unwrap_err().field()
    }

    #[test]
    fn default_is_valid() {
        HasherConfig::default().validate().unwrap();
    }

    #[test]
    fn empty_algorithms_rejected() {
        let c = HasherConfig {
            algorithms: vec![],
            ..HasherConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::Empty {
                field: "algorithms"
            }
        );
    }

    #[test]
    fn duplicate_algorithm_rejected() {
        let c = HasherConfig {
            algorithms: vec![
                HashAlgorithm::Blake3,
                HashAlgorithm::Sha256,
                HashAlgorithm::Blake3,
            ],
            ..HasherConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::DuplicateAlgorithm {
                field: "algorithms",
                algorithm: "blake3"
            }
        );
        assert_eq!(
            err.to_string(),
            "algorithms: blake3 is listed more than once"
        );
    }

    #[test]
    fn zero_max_file_size_rejected() {
        let c = HasherConfig {
            max_file_size_bytes: 0,
            ..HasherConfig::default()
        };
        assert_eq!(field_of(&c), "max_file_size_bytes");
    }

    #[test]
    fn chunk_size_out_of_range_rejected() {
        for bad in [
            0,
            MIN_CHUNK_SIZE_BYTES - 1,
            MAX_CHUNK_SIZE_BYTES + 1,
            u64::MAX,
        ] {
            let c = HasherConfig {
                chunk_size_bytes: bad,
                ..HasherConfig::default()
            };
            let err = c.validate().unwrap_err();
            assert!(
                matches!(err, ConfigError::OutOfRange { field: "chunk_size_bytes", value, .. } if value == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_roots_rejected() {
        let empty = HasherConfig {
            allowed_roots: vec![],
            ..HasherConfig::default()
        };
        assert_eq!(field_of(&empty), "allowed_roots");
        for bad in ["usr/bin", "/usr/../etc", ""] {
            let c = HasherConfig {
                allowed_roots: vec!["/opt".into(), bad.into()],
                ..HasherConfig::default()
            };
            let err = c.validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadRoot { field: "allowed_roots", path } if path == Path::new(bad)),
                "{err}"
            );
        }
    }

    #[test]
    fn oversized_cache_rejected() {
        let c = HasherConfig {
            cache_capacity_entries: MAX_CACHE_CAPACITY_ENTRIES + 1,
            ..HasherConfig::default()
        };
        assert_eq!(field_of(&c), "cache_capacity_entries");
    }

    #[test]
    fn concurrency_and_queue_out_of_range_rejected() {
        for bad in [0, MAX_CONCURRENT_HASHES + 1] {
            let c = HasherConfig {
                max_concurrent_hashes: bad,
                ..HasherConfig::default()
            };
            assert_eq!(field_of(&c), "max_concurrent_hashes");
        }
        let c = HasherConfig {
            max_queued_hashes: MAX_QUEUED_HASHES + 1,
            ..HasherConfig::default()
        };
        assert_eq!(field_of(&c), "max_queued_hashes");
        HasherConfig {
            max_concurrent_hashes: MAX_CONCURRENT_HASHES,
            max_queued_hashes: 0,
            ..HasherConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn zero_budget_and_zero_cache_are_valid() {
        let c = HasherConfig {
            bytes_per_sec: 0,
            cache_capacity_entries: 0,
            ..HasherConfig::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip() {
        let c = HasherConfig {
            algorithms: vec![HashAlgorithm::Blake3, HashAlgorithm::Sha256],
            max_file_size_bytes: 1 << 30,
            bytes_per_sec: 0,
            chunk_size_bytes: 64 << 10,
            allowed_roots: vec!["/usr".into(), "/opt/app".into()],
            cache_capacity_entries: 7,
            max_concurrent_hashes: 2,
            max_queued_hashes: 9,
        };
        let text = toml::to_string(&c).unwrap();
        assert!(
            text.contains("algorithms = [\"blake3\", \"sha256\"]"),
            "{text}"
        );
        let back: HasherConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn empty_toml_is_the_default() {
        let c: HasherConfig = toml::from_str("").unwrap();
        assert_eq!(c, HasherConfig::default());
    }

    #[test]
    fn unknown_toml_field_rejected() {
        let err = toml::from_str::<HasherConfig>("max_file_size = 10\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_algorithm_rejected_by_serde() {
        assert!(toml::from_str::<HasherConfig>("algorithms = [\"md5\"]\n").is_err());
    }
}
