//! Which process holds which socket: `/proc/<pid>/fd/N` links that read
//! `socket:[inode]`, gathered into one inode → owners map.
//!
//! Reading another user's `/proc/<pid>/fd` needs `CAP_SYS_PTRACE` (or
//! root); what cannot be read is counted, never guessed. A process that
//! exits during the walk is skipped (its sockets are gone or are someone
//! else's by the time anyone would look).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

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
    /// Processes read.
    pub processes: usize,
    /// Processes whose descriptors could not be read (permission).
    pub unreadable: usize,
}

impl OwnerMap {
    /// Walks `proc_root` (`/proc`).
    ///
    /// # Errors
    /// Only when `proc_root` itself cannot be listed; a process that
    /// vanishes or cannot be read is skipped (and counted in
    /// [`OwnerMap::unreadable`] when it was a permission).
    pub fn scan(proc_root: &Path) -> io::Result<Self> {
        let mut map = Self::default();
        for entry in fs::read_dir(proc_root)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match map.scan_process(&entry.path(), pid) {
                Ok(()) => map.processes += 1,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => map.unreadable += 1,
                Err(_) => {} // exited during the walk
            }
        }
        for owners in map.by_inode.values_mut() {
            owners.sort_unstable_by_key(|o| (o.pid, o.fd));
        }
        Ok(map)
    }

    fn scan_process(&mut self, dir: &Path, pid: u32) -> io::Result<()> {
        for fd in fs::read_dir(dir.join("fd"))? {
            let Ok(fd) = fd else { continue };
            let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(target) = fs::read_link(fd.path()) else {
                continue; // closed since the listing
            };
            if let Some(inode) = target
                .to_str()
                .and_then(|t| parse_socket_link(t.as_bytes()))
            {
                self.by_inode
                    .entry(inode)
                    .or_default()
                    .push(Owner { pid, fd: number });
            }
        }
        Ok(())
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

/// The inode of a descriptor link that names a socket (`socket:[12345]`).
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
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
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
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
