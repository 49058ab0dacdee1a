//! netmond: the DaemonEye network collector.
//!
//! A security engineer asks "which process talks to whom": a reverse shell
//! is a shell whose stdin is a TCP socket, whatever its command line says.
//! netmond answers from two kernel interfaces:
//!
//! - [`diag`]: every TCP and UDP socket, IPv4 and IPv6, listening and
//!   connected, from netlink `sock_diag` (the interface `ss` uses), parsed
//!   by a pure function of the kernel's bytes;
//! - [`owners`]: which process holds each socket, from `/proc/<pid>/fd`;
//! - [`snapshot`]: the two joined, with each connection's direction.
//!
//! ```no_run
//! let snapshot = netmond::Snapshot::take(std::path::Path::new("/proc"))?;
//! for c in &snapshot.connections {
//!     println!("{:?} {} -> {} held by {:?}", c.direction, c.socket.local, c.socket.remote, c.owners);
//! }
//! # Ok::<(), netmond::snapshot::SnapshotError>(())
//! ```
//!
//! # What it sees
//! The sockets of every network namespace a process is in: its own, and
//! each other one ([`namespaces`], entered by a short-lived thread, which
//! needs `CAP_SYS_ADMIN`; a namespace it cannot enter is counted in
//! [`Snapshot::unreadable_namespaces`]). A namespace no process is in (kept
//! only by a bind mount) is not seen.

pub mod cli;
pub mod diag;
pub mod ebpf;
pub mod namespaces;
pub mod owners;
pub mod realtime;
pub mod snapshot;
pub mod source;

pub use diag::Socket;
pub use owners::{Owner, OwnerMap};
pub use snapshot::{Connection, Snapshot, Snapshotter};
pub use source::{NetmondConfig, NetmondCounters, NetmondSource};
