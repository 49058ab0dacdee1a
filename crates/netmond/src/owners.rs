//! Which process holds which socket: `/proc/<pid>/fd/N` links that read
//! `socket:[inode]`, gathered into one inode → owners map.
//!
//! Reading another user's `/proc/<pid>/fd` needs `CAP_SYS_PTRACE` (or
//! root); what cannot be read is counted, never guessed. A process that
//! exits during the walk is skipped (its sockets are gone or are someone
//! else's by the time anyone would look).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;

use serde::{Deserialize, Serialize};

/// One holder of a socket: a process and the descriptor it holds it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The process id.
    pub pid: u32,
    /// The descriptor number.
    pub fd: u32,
}

/// The socket inodes of every process that could be read.
#[derive(Debug, Default, Clone)]
pub struct OwnerMap {
    by_inode: HashMap<u64, Vec<Owner>>,
    /// Sockets of the dump the walk was made for that no readable process
    /// held (kernel sockets, or held in another pid namespace).
    ownerless: std::collections::HashSet<u64>,
    /// Processes read.
    pub processes: usize,
    /// Processes whose descriptors could not be read (permission).
    pub unreadable: usize,
}

impl OwnerMap {
    /// Walks `proc_root` (`/proc`).
    ///
    /// Each directory is listed with `getdents64` into one reused buffer and
    /// each link read with `readlinkat` relative to its open `fd` directory,
    /// so the walk allocates only for the sockets it finds.
    ///
    /// # Errors
    /// Only when `proc_root` itself cannot be listed; a process that
    /// vanishes or cannot be read is skipped (and counted in
    /// [`OwnerMap::unreadable`] when it was a permission).
    pub fn scan(proc_root: &Path) -> io::Result<Self> {
        let mut map = Self::default();
        let root = open_dir(proc_root)?;
        let mut pids = Vec::with_capacity(1024);
        let mut dirbuf = Vec::with_capacity(64 * 1024);
        let mut listing = RawDir::new(&root, dirbuf.spare_capacity_mut());
        while let Some(entry) = listing.next() {
            let entry = entry?;
            if let Some(pid) = number(entry.file_name().to_bytes()) {
                pids.push(pid);
            }
        }
        let mut path = String::new();
        let mut link = [0u8; 64];
        for pid in pids {
            path.clear();
            let _ = write!(path, "{pid}/fd");
            match map.scan_process(&root, &path, pid, &mut dirbuf, &mut link) {
                Ok(()) => map.processes += 1,
                Err(Errno::ACCESS | Errno::PERM) => map.unreadable += 1,
                Err(_) => {} // exited during the walk
            }
        }
        for owners in map.by_inode.values_mut() {
            owners.sort_unstable_by_key(|o| (o.pid, o.fd));
        }
        Ok(map)
    }

    fn scan_process(
        &mut self,
        root: &OwnedFd,
        fd_dir: &str,
        pid: u32,
        dirbuf: &mut Vec<u8>,
        link: &mut [u8; 64],
    ) -> Result<(), Errno> {
        let dir = rustix::fs::openat(root, fd_dir, DIRECTORY, Mode::empty())?;
        let mut listing = RawDir::new(&dir, dirbuf.spare_capacity_mut());
        while let Some(entry) = listing.next() {
            let entry = entry?;
            let Some(fd) = number(entry.file_name().to_bytes()) else {
                continue;
            };
            // A link longer than the buffer is no socket's (`socket:[N]` is
            // at most 30 bytes); one closed since the listing is skipped.
            let Ok(len) = rustix::fs::readlinkat_raw(&dir, entry.file_name(), &mut link[..]) else {
                continue;
            };
            if let Some(inode) = link.get(..len).and_then(parse_socket_link) {
                self.by_inode
                    .entry(inode)
                    .or_default()
                    .push(Owner { pid, fd });
            }
        }
        Ok(())
    }

    /// Whether this map still names the holders of `inodes` (the sockets
    /// of a new dump): each is known, or was already ownerless in the walk
    /// that made the map, and every process named for them is alive.
    ///
    /// This is what keeps a snapshot from walking every `/proc/<pid>/fd`
    /// each time: the walk happens only when a socket appears whose holder
    /// is unknown, or a holder has exited. What it cannot see between walks:
    /// a socket passed to another process (`SCM_RIGHTS`) or closed by one of
    /// its holders while another keeps it.
    pub fn covers(&self, root: &Path, inodes: impl IntoIterator<Item = u64>) -> bool {
        let Ok(root) = open_dir(root) else {
            return false;
        };
        let mut alive: HashMap<u32, bool> = HashMap::new();
        let mut name = String::new();
        for inode in inodes {
            if inode == 0 || self.ownerless.contains(&inode) {
                continue;
            }
            let Some(owners) = self.by_inode.get(&inode) else {
                return false;
            };
            for o in owners {
                let live = *alive.entry(o.pid).or_insert_with(|| {
                    name.clear();
                    let _ = write!(name, "{}", o.pid);
                    rustix::fs::accessat(
                        &root,
                        name.as_str(),
                        rustix::fs::Access::EXISTS,
                        rustix::fs::AtFlags::empty(),
                    )
                    .is_ok()
                });
                if !live {
                    return false;
                }
            }
        }
        true
    }

    /// Remembers which of `inodes` the walk found no holder for, so that
    /// [`OwnerMap::covers`] does not walk again for them.
    pub fn note_ownerless(&mut self, inodes: impl IntoIterator<Item = u64>) {
        self.ownerless = inodes
            .into_iter()
            .filter(|i| *i != 0 && !self.by_inode.contains_key(i))
            .collect();
    }

    /// The holders of socket `inode`, by pid then descriptor (empty when
    /// none was seen).
    pub fn owners(&self, inode: u64) -> &[Owner] {
        self.by_inode.get(&inode).map_or(&[], Vec::as_slice)
    }

    /// The sockets `pid` holds, as (descriptor, inode).
    pub fn sockets_of(&self, pid: u32) -> Vec<(u32, u64)> {
        let mut out: Vec<_> = self
            .by_inode
            .iter()
            .flat_map(|(inode, owners)| {
                owners
                    .iter()
                    .filter(move |o| o.pid == pid)
                    .map(move |o| (o.fd, *inode))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// How a directory of procfs is opened for listing.
const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// `path`, opened for listing.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, DIRECTORY, Mode::empty())?)
}

/// A directory entry's name as a pid or descriptor number.
pub(crate) fn number(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// The inode of a descriptor link that names a socket (`socket:[12345]`).
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    parse_link(target, b"socket:[")
}

/// The number of a link `<prefix>N]` (`socket:[`, `net:[`).
pub(crate) fn parse_link(target: &[u8], prefix: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(prefix)?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn socket_links_are_recognised_and_others_are_not() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12_345));
        for other in [
            &b"pipe:[12345]"[..],
            b"/dev/null",
            b"socket:[]",
            b"socket:[12a]",
            b"socket:[99999999999999999999999]",
            b"anon_inode:[eventfd]",
        ] {
            assert_eq!(parse_socket_link(other), None, "{other:?}");
        }
    }

    #[test]
    fn this_process_owns_the_socket_it_holds() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let map = OwnerMap::scan(Path::new("/proc")).unwrap();
        let me = std::process::id();
        assert_eq!(
            map.owners(inode),
            &[Owner {
                pid: me,
                fd: u32::try_from(fd).unwrap()
            }]
        );
        assert!(map
            .sockets_of(me)
            .contains(&(u32::try_from(fd).unwrap(), inode)));
        assert!(map.processes > 1);
    }

    proptest! {
        #[test]
        fn any_link_text_parses_or_not_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_socket_link(&bytes);
        }

        #[test]
        fn every_inode_round_trips(inode in any::<u64>()) {
            prop_assert_eq!(parse_socket_link(format!("socket:[{inode}]").as_bytes()), Some(inode));
        }
    }
}
