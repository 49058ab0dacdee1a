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
//! The sockets of the network namespace it runs in. Sockets of other
//! namespaces (containers with their own network) are not listed yet.

pub mod cli;
pub mod diag;
pub mod owners;
pub mod snapshot;
pub mod source;

pub use diag::Socket;
pub use owners::{Owner, OwnerMap};
pub use snapshot::{Connection, Snapshot, Snapshotter};
pub use source::{NetmondConfig, NetmondCounters, NetmondSource};
