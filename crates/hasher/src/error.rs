//! [`HashError`]: why a file was not hashed.
//!
//! Executables of processes that have already exited and `/proc` races
//! are everyday events for a process monitor, so "gone", "not allowed"
//! and "refused by policy" are distinct variants rather than one I/O
//! error; [`HashError::reason`] names each for counters and logs.

use std::io;
use std::path::PathBuf;

/// Why [`HashEngine::hash_file`](crate::HashEngine::hash_file) produced
/// no digest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// No such file (`ENOENT`), or a path component is not a directory
    /// (`ENOTDIR`): typically the executable of a process that has gone.
    #[error("{path}: not found", path = path.display())]
    NotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// The process a `/proc` path refers to has exited (`ESRCH`).
    #[error("{path}: process gone", path = path.display())]
    ProcessGone {
        /// The path asked for.
        path: PathBuf,
    },
    /// The kernel refused access (`EACCES`, `EPERM`).
    #[error("{path}: permission denied", path = path.display())]
    PermissionDenied {
        /// The path asked for.
        path: PathBuf,
    },
    /// The last path component is a symbolic link; it is never followed.
    #[error("{path}: is a symbolic link", path = path.display())]
    IsSymlink {
        /// The path asked for.
        path: PathBuf,
    },
    /// The opened file is a directory, FIFO, socket or device.
    #[error("{path}: not a regular file", path = path.display())]
    NotRegularFile {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path is relative, contains `..`, or is under none of the
    /// configured allowed roots.
    #[error("{path}: outside the allowed roots", path = path.display())]
    OutsideAllowedRoots {
        /// The path asked for.
        path: PathBuf,
    },
    /// The file is larger than `max_file_size_bytes`; nothing was read.
    #[error("{path}: {size} bytes is over the {max} byte limit", path = path.display())]
    TooLarge {
        /// The path asked for.
        path: PathBuf,
        /// The file's size at open.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// Any other I/O failure while opening, inspecting or reading.
    #[error("{path}: i/o error", path = path.display())]
    Io {
        /// The path asked for.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Every reader was busy and `max_queued_hashes` requests were already
    /// waiting for one: refused at once, nothing opened. The caller goes
    /// on without the digest (and counts it); a later request may succeed.
    #[error("{path}: hasher saturated, request refused", path = path.display())]
    Busy {
        /// The path asked for.
        path: PathBuf,
    },
    /// The blocking task doing the I/O did not finish (the runtime is
    /// shutting down, or a bug made it panic).
    #[error("{path}: hashing task did not complete", path = path.display())]
    TaskFailed {
        /// The path asked for.
        path: PathBuf,
        /// What tokio reported.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Every [`HashError::reason`], in [`HashError::slot`] order.
pub(crate) const REASONS: [&str; 10] = [
    "not_found",
    "process_gone",
    "permission_denied",
    "is_symlink",
    "not_regular_file",
    "outside_allowed_roots",
    "too_large",
    "io",
    "task_failed",
    "busy",
];

impl HashError {
    /// A short stable name for the variant, for counters and log fields
    /// (`not_found`, `too_large`, ...).
    pub fn reason(&self) -> &'static str {
        REASONS[self.slot()]
    }

    /// The variant's index in [`REASONS`].
    pub(crate) const fn slot(&self) -> usize {
        match self {
            Self::NotFound { .. } => 0,
            Self::ProcessGone { .. } => 1,
            Self::PermissionDenied { .. } => 2,
            Self::IsSymlink { .. } => 3,
            Self::NotRegularFile { .. } => 4,
            Self::OutsideAllowedRoots { .. } => 5,
            Self::TooLarge { .. } => 6,
            Self::Io { .. } => 7,
            Self::TaskFailed { .. } => 8,
            Self::Busy { .. } => 9,
        }
    }

    /// The path the failed request was for.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::NotFound { path }
            | Self::ProcessGone { path }
            | Self::PermissionDenied { path }
            | Self::IsSymlink { path }
            | Self::NotRegularFile { path }
            | Self::OutsideAllowedRoots { path }
            | Self::TooLarge { path, .. }
            | Self::Io { path, .. }
            | Self::TaskFailed { path, .. }
            | Self::Busy { path } => path,
        }
    }

    /// Whether the file or its process vanished (not found, process gone):
    /// a race, not a fault.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::ProcessGone { .. })
    }

    /// Maps an `open(2)` failure. `ELOOP` with `O_NOFOLLOW` means the
    /// last component is a symlink (too many links in the middle of the
    /// path also gives `ELOOP`; the caller tells them apart with `lstat`).
    pub(crate) fn from_open(path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ELOOP) => Self::IsSymlink { path },
            // Sockets, and device nodes with no driver behind them.
            Some(libc::ENXIO | libc::ENODEV) => Self::NotRegularFile { path },
            _ => Self::from_io(path, source),
        }
    }

    /// Maps a failure of any other call (`fstat`, `read`).
    pub(crate) fn from_io(path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Self::NotFound { path },
            Some(libc::ESRCH) => Self::ProcessGone { path },
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied { path },
            _ => Self::Io { path, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_err(errno: i32) -> HashError {
        HashError::from_open("/x".into(), io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn errno_mapping() {
        let cases = [
            (libc::ENOENT, "not_found"),
            (libc::ENOTDIR, "not_found"),
            (libc::ESRCH, "process_gone"),
            (libc::EACCES, "permission_denied"),
            (libc::EPERM, "permission_denied"),
            (libc::ELOOP, "is_symlink"),
            (libc::ENXIO, "not_regular_file"),
            (libc::EIO, "io"),
            (libc::EMFILE, "io"),
        ];
        for (errno, reason) in cases {
            assert_eq!(open_err(errno).reason(), reason, "errno {errno}");
        }
        // Outside open, ELOOP is no statement about the last component.
        let read = HashError::from_io("/x".into(), io::Error::from_raw_os_error(libc::ELOOP));
        assert_eq!(read.reason(), "io");
    }

    #[test]
    fn gone_means_vanished() {
        assert!(open_err(libc::ENOENT).is_gone());
        assert!(open_err(libc::ESRCH).is_gone());
        assert!(!open_err(libc::EACCES).is_gone());
    }

    #[test]
    fn messages_are_lowercase_with_path() {
        let err = HashError::TooLarge {
            path: "/usr/bin/big".into(),
            size: 10,
            max: 5,
        };
        assert_eq!(
            err.to_string(),
            "/usr/bin/big: 10 bytes is over the 5 byte limit"
        );
        assert_eq!(err.path(), std::path::Path::new("/usr/bin/big"));
        assert_eq!(open_err(libc::EACCES).to_string(), "/x: permission denied");
    }
}
