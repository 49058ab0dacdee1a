//! One look at every socket and who holds it.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use collector_core::{ConnectionDirection as Direction, ConnectionState, NetworkProtocol};

use crate::diag::{self, DiagError, Socket};
use crate::namespaces::Namespaces;
use crate::owners::{Owner, OwnerMap};

/// A socket, which way it goes, and the processes that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// What the kernel said of the socket.
    #[serde(flatten)]
    pub socket: Socket,
    /// Listen, inbound or outbound.
    pub direction: Direction,
    /// The processes that hold it (several after a fork; none for a
    /// `TIME_WAIT` socket or one no process could be read for).
    pub owners: Vec<Owner>,
}

/// Every socket of this network namespace and its holders.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The sockets, TCP then UDP, in the kernel's order.
    pub connections: Vec<Connection>,
    /// Processes whose descriptors could not be read (so some owners may
    /// be missing).
    pub unreadable_processes: usize,
    /// Network namespaces with processes in them that could not be entered
    /// (their sockets are missing: entering one needs `CAP_SYS_ADMIN`).
    #[serde(default)]
    pub unreadable_namespaces: usize,
    /// The network namespaces whose sockets it holds, each read whole
    /// (the inodes of their `/proc/<pid>/ns/net`; empty when not known).
    #[serde(skip)]
    pub namespaces_read: Vec<u64>,
}

/// What went wrong taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The kernel could not be asked.
    #[error(transparent)]
    Diag(#[from] DiagError),
    /// `/proc` could not be listed.
    #[error("cannot list {path}")]
    Proc {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Snapshot {
    /// Asks the kernel for every socket, then walks `proc_root` for their
    /// holders.
    ///
    /// # Errors
    /// [`SnapshotError`] when either cannot be read at all.
    pub fn take(proc_root: &Path) -> Result<Self, SnapshotError> {
        Snapshotter::new(proc_root).take()
    }

    /// Joins sockets to their holders and tells their directions.
    pub fn join(sockets: Vec<Socket>, owners: &OwnerMap) -> Self {
        let listening: HashSet<(Option<u64>, NetworkProtocol, u16)> = sockets
            .iter()
            .filter(|s| s.is_listener())
            .map(|s| (s.netns, s.protocol, s.local.port()))
            .collect();
        let connections = sockets
            .into_iter()
            .map(|socket| {
                let direction = direction(&socket, &listening);
                let owners = if socket.inode == 0 {
                    Vec::new()
                } else {
                    owners.owners(socket.inode).to_vec()
                };
                Connection {
                    socket,
                    direction,
                    owners,
                }
            })
            .collect();
        Self {
            connections,
            unreadable_processes: owners.unreadable,
            unreadable_namespaces: 0,
            namespaces_read: Vec::new(),
        }
    }
}

/// Takes snapshots one after another, keeping the socket → process map
/// between them: `/proc` is walked again only when a socket appears whose
/// holder is unknown or a holder has exited ([`OwnerMap::covers`]).
#[derive(Debug)]
pub struct Snapshotter {
    proc_root: std::path::PathBuf,
    owners: Option<OwnerMap>,
    namespaces: Namespaces,
    walks: u64,
}

impl Snapshotter {
    /// A snapshotter reading holders from `proc_root` (`/proc`).
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            owners: None,
            namespaces: Namespaces::new(proc_root),
            walks: 0,
        }
    }

    /// How many times `/proc` has been walked.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The next snapshot.
    ///
    /// # Errors
    /// [`SnapshotError`] when the kernel or `/proc` cannot be read at all.
    pub fn take(&mut self) -> Result<Snapshot, SnapshotError> {
        let (sockets, unreadable_namespaces, namespaces_read) = self.dump_every_namespace()?;
        let inodes = || sockets.iter().map(|s| s.inode);
        let current = self
            .owners
            .as_ref()
            .is_some_and(|o| o.covers(&self.proc_root, inodes()));
        let owners = match &mut self.owners {
            Some(owners) if current => owners,
            slot => {
                let mut walked =
                    OwnerMap::scan(&self.proc_root).map_err(|source| SnapshotError::Proc {
                        path: self.proc_root.display().to_string(),
                        source,
                    })?;
                walked.note_ownerless(inodes());
                self.walks += 1;
                slot.insert(walked)
            }
        };
        let mut snapshot = Snapshot::join(sockets, owners);
        snapshot.unreadable_namespaces = unreadable_namespaces;
        snapshot.namespaces_read = namespaces_read;
        Ok(snapshot)
    }

    /// The sockets of this namespace, then of every other one a process is
    /// in, each tagged with its namespace; how many namespaces could not be
    /// entered; and which were read.
    fn dump_every_namespace(&mut self) -> Result<(Vec<Socket>, usize, Vec<u64>), SnapshotError> {
        let mut sockets = diag::dump()?;
        let own = self.namespaces.own();
        for s in &mut sockets {
            s.netns = own;
        }
        let mut read: Vec<u64> = own.into_iter().collect();
        let mut unreadable = 0;
        if self.namespaces.refresh().is_err() {
            return Ok((sockets, unreadable, read));
        }
        for (ns, pid) in self.namespaces.others() {
            let dumped = self
                .namespaces
                .open(pid)
                .map_err(DiagError::Namespace)
                .and_then(|fd| diag::dump_in(std::os::fd::AsFd::as_fd(&fd)));
            match dumped {
                Ok(mut theirs) => {
                    for s in &mut theirs {
                        s.netns = Some(ns);
                    }
                    sockets.append(&mut theirs);
                    read.push(ns);
                }
                // Not allowed in (no CAP_SYS_ADMIN), or its last process
                // left: counted, the others still read.
                Err(_) => unreadable += 1,
            }
        }
        Ok((sockets, unreadable, read))
    }
}

fn direction(
    socket: &Socket,
    listening: &HashSet<(Option<u64>, NetworkProtocol, u16)>,
) -> Direction {
    if socket.is_listener() {
        Direction::Listen
    } else if socket.state == Some(ConnectionState::SynRecv)
        || listening.contains(&(socket.netns, socket.protocol, socket.local.port()))
    {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use collector_core::AddressFamily;

    fn socket(state: ConnectionState, local: &str, remote: &str, inode: u64) -> Socket {
        Socket {
            protocol: NetworkProtocol::Tcp,
            family: AddressFamily::Ipv4,
            state: Some(state),
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            inode,
            cookie: inode,
            recv_queue: 0,
            send_queue: 0,
            interface: 0,
            netns: None,
            bytes_acked: None,
            bytes_received: None,
        }
    }

    #[test]
    fn directions_follow_the_listeners() {
        let sockets = vec![
            socket(ConnectionState::Listen, "0.0.0.0:22", "0.0.0.0:0", 1),
            socket(
                ConnectionState::Established,
                "10.0.0.1:22",
                "10.0.0.9:50000",
                2,
            ),
            socket(
                ConnectionState::Established,
                "10.0.0.1:50001",
                "1.1.1.1:443",
                3,
            ),
            socket(
                ConnectionState::TimeWait,
                "10.0.0.1:50002",
                "1.1.1.1:443",
                0,
            ),
        ];
        let snap = Snapshot::join(sockets, &OwnerMap::default());
        let dirs: Vec<_> = snap.connections.iter().map(|c| c.direction).collect();
        assert_eq!(
            dirs,
            [
                Direction::Listen,
                Direction::Inbound,
                Direction::Outbound,
                Direction::Outbound
            ]
        );
        assert!(snap.connections.iter().all(|c| c.owners.is_empty()));
    }
}
