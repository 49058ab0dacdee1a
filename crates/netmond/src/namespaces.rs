//! Which network namespaces have processes in them, kept current by
//! listing `/proc` each look and reading `/proc/<pid>/ns/net` only for the
//! pids not seen before.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, RawDir};

use crate::owners::{number, open_dir, parse_link};

/// The network namespaces of the processes under a procfs root.
#[derive(Debug)]
pub struct Namespaces {
    root: PathBuf,
    own: Option<u64>,
    by_pid: HashMap<u32, u64>,
    dirbuf: Vec<u8>,
}

impl Namespaces {
    /// The namespaces under `proc_root`; this process's is read at once.
    pub fn new(proc_root: &Path) -> Self {
        let own = std::fs::read_link(proc_root.join("self/ns/net"))
            .ok()
            .and_then(|t| t.to_str().and_then(|t| parse_link(t.as_bytes(), b"net:[")));
        Self {
            root: proc_root.to_owned(),
            own,
            by_pid: HashMap::new(),
            dirbuf: Vec::with_capacity(64 * 1024),
        }
    }

    /// This process's namespace (the inode of `/proc/self/ns/net`).
    pub fn own(&self) -> Option<u64> {
        self.own
    }

    /// Lists `/proc` again: pids gone are forgotten, new pids' namespaces
    /// read (a pid that cannot be read is left out until it can).
    ///
    /// # Errors
    /// When `/proc` cannot be listed.
    pub fn refresh(&mut self) -> io::Result<()> {
        let root = open_dir(&self.root)?;
        let mut live = HashSet::with_capacity(self.by_pid.len() + 64);
        let mut listing = RawDir::new(&root, self.dirbuf.spare_capacity_mut());
        while let Some(entry) = listing.next() {
            if let Some(pid) = number(entry?.file_name().to_bytes()) {
                live.insert(pid);
            }
        }
        self.by_pid.retain(|pid, _| live.contains(pid));
        let mut path = String::new();
        let mut link = [0u8; 64];
        for pid in live {
            if self.by_pid.contains_key(&pid) {
                continue;
            }
            path.clear();
            let _ = write!(path, "{pid}/ns/net");
            let Ok(len) = rustix::fs::readlinkat_raw(&root, path.as_str(), &mut link[..]) else {
                continue; // gone, or not ours to read
            };
            if let Some(ns) = link.get(..len).and_then(|l| parse_link(l, b"net:[")) {
                self.by_pid.insert(pid, ns);
            }
        }
        Ok(())
    }

    /// Every other namespace with a process in it, with one of its pids
    /// (the lowest: the likeliest to stay), by namespace.
    pub fn others(&self) -> Vec<(u64, u32)> {
        let mut first: HashMap<u64, u32> = HashMap::new();
        for (&pid, &ns) in &self.by_pid {
            if Some(ns) != self.own {
                let e = first.entry(ns).or_insert(pid);
                *e = (*e).min(pid);
            }
        }
        let mut out: Vec<_> = first.into_iter().collect();
        out.sort_unstable();
        out
    }

    /// `/proc/<pid>/ns/net`, opened.
    ///
    /// # Errors
    /// When it cannot be opened (the process is gone).
    pub fn open(&self, pid: u32) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            self.root.join(format!("{pid}/ns/net")),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}
