//! procmond: the DaemonEye process collector.
//!
//! - [`connector`]: real-time fork/exec/exit events from the kernel's netlink
//!   process connector, read by a dedicated thread.
//! - [`procfs`]: pure parsers of `/proc/<pid>/*` files.
//! - [`snapshot`]: reading one process or the whole table from `/proc`.

pub mod connector;
pub mod procfs;
pub mod snapshot;
