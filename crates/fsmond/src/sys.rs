//! The kernel calls: a fanotify group in FID mode (through nix), reads of
//! its raw record stream, `open_by_handle_at` (through libc: the one call
//! neither nix nor rustix wraps) and the registration of the group with
//! tokio's reactor: the only `unsafe` of the crate, each with its SAFETY.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// `FAN_RENAME` (Linux 5.17): one event with the old and the new name.
pub const FAN_RENAME: u64 = 0x1000_0000;

/// The events fsmond asks for on every filesystem it marks, but renames.
pub const BASE_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_MODIFY
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_DELETE
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;

/// What an ignored directory's mark drops: every event asked for but
/// renames, on it, its entries and subdirectories' names.
pub const IGNORED_MASK: u64 = BASE_MASK
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_EVENT_ON_CHILD
    | libc::FAN_ONDIR;

/// The largest file handle the kernel gives (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_SZ: usize = 128;

/// A fanotify group reporting directory handles and names
/// (`FAN_REPORT_DFID_NAME`), non-blocking.
#[derive(Debug)]
pub struct Group(Fanotify);

impl Group {
    /// `fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_NONBLOCK
    /// | FAN_CLOEXEC [| FAN_UNLIMITED_QUEUE])`; needs `CAP_SYS_ADMIN`.
    ///
    /// # Errors
    /// The kernel's (`EINVAL` before Linux 5.9, which lacks `DFID_NAME`; `EPERM`
    /// without the capability).
    pub fn new(unlimited_queue: bool) -> Result<Self, Errno> {
        let mut flags = InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_CLOEXEC
            | InitFlags::from_bits_retain(libc::FAN_REPORT_DFID_NAME);
        if unlimited_queue {
            flags |= InitFlags::FAN_UNLIMITED_QUEUE;
        }
        let events = EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE;
        Fanotify::init(flags, events).map(Self)
    }

    /// Marks the whole filesystem that the absolute `path` is on for `mask`
    /// (`fd`, any descriptor, is the unused `dirfd`).
    ///
    /// # Errors
    /// The kernel's: `EINVAL` for a mask it does not know (such as
    /// `FAN_RENAME` before 5.17), `ENODEV` or `EOPNOTSUPP` for a filesystem
    /// without file handles, `EXDEV` for one whose handles are not unique
    /// (some FUSE and overlay setups).
    pub fn mark_filesystem(&self, fd: BorrowedFd<'_>, path: &Path, mask: u64) -> Result<(), Errno> {
        self.0.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            MaskFlags::from_bits_retain(mask),
            fd,
            Some(path),
        )
    }

    /// Has the kernel drop, before they are queued, the events on the
    /// directory `dir` (an `O_PATH` descriptor) names, on its entries and
    /// in it, but renames (`FAN_RENAME`: a rename out of it may be into a
    /// watched path, and one ignore mask of either directory would drop
    /// it): `FAN_MARK_IGNORE` with `FAN_EVENT_ON_CHILD` and `FAN_ONDIR`,
    /// surviving modification (an inode mark, named by its
    /// `/proc/self/fd` link: `fanotify_mark` refuses `O_PATH` descriptors).
    ///
    /// # Errors
    /// The kernel's: `EINVAL` before Linux 6.0 (no `FAN_MARK_IGNORE`),
    /// `ENOSPC` past the group's marks.
    pub fn ignore_dir(&self, dir: BorrowedFd<'_>) -> Result<(), Errno> {
        let link = format!("/proc/self/fd/{}", dir.as_raw_fd());
        self.0.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::from_bits_retain(libc::FAN_MARK_IGNORE_SURV),
            MaskFlags::from_bits_retain(IGNORED_MASK),
            dir,
            Some(Path::new(&link)),
        )
    }

    /// Removes every ignore mark ([`ignore_dir`](Self::ignore_dir)): the
    /// group's only inode marks.
    ///
    /// # Errors
    /// The kernel's.
    pub fn flush_ignored(&self) -> Result<(), Errno> {
        self.0.mark::<_, Path>(
            MarkFlags::FAN_MARK_FLUSH,
            MaskFlags::empty(),
            self.0.as_fd(),
            None,
        )
    }

    /// Reads whole records into `buf` (`Ok(0)`: none queued now).
    ///
    /// # Errors
    /// The kernel's, but `EAGAIN` (nothing queued: `Ok(0)`) and `EINTR`
    /// (retried).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.0.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN) => return Ok(0),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Group {
    /// The group registered with tokio's reactor for readability.
    ///
    /// # Errors
    /// When it cannot be registered.
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: a `Group` owns its descriptor (nix's `Fanotify` holds an
        // `OwnedFd`); it stays open, and `as_raw_fd` returns that same
        // descriptor, until the group is dropped, which happens only when the
        // `AsyncFd` that now owns it is dropped or gives it back.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(Into::into)
    }
}

impl AsRawFd for Group {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Opens what a file handle names, as an `O_PATH` descriptor, on the
/// filesystem `mount` is on; needs `CAP_DAC_READ_SEARCH`.
///
/// # Errors
/// `ESTALE` for an object that is gone, `EINVAL` for a handle of more than
/// [`MAX_HANDLE_SZ`] bytes, and the kernel's others.
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> Result<OwnedFd, Errno> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(Errno::EINVAL);
    }
    // `struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }`,
    // built in u32 words so that it is aligned as the struct is (4).
    let len = u32::try_from(handle.len()).map_err(|_| Errno::EINVAL)?;
    let mut bytes = Vec::with_capacity(8 + handle.len() + 3);
    bytes.extend_from_slice(&len.to_ne_bytes());
    bytes.extend_from_slice(&handle_type.to_ne_bytes());
    bytes.extend_from_slice(handle);
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    let mut words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    // SAFETY: `words` is a live, 4-aligned buffer (the alignment of
    // `file_handle`) holding the 8-byte header and then `handle_bytes`
    // (at most MAX_HANDLE_SZ, checked above) bytes of handle, which is all
    // the kernel reads; it writes nothing into it. `mount` is a valid
    // descriptor for the duration of the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            words.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by the kernel, is open, and is owned by
    // nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path a descriptor names now (its `/proc/self/fd` link); `None` for
/// an object that was deleted (the link ends in ` (deleted)`) or a link
/// that cannot be read.
pub fn fd_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    if link.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") || !link.is_absolute() {
        return None;
    }
    Some(link)
}

/// Opens the directory `path` is (or, for a file, the one it is in)
/// read-only: the mount descriptor of [`open_by_handle`], which refuses
/// `O_PATH` ones.
///
/// # Errors
/// The kernel's.
pub fn open_mount(path: &Path) -> Result<OwnedFd, Errno> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}
