//! procmond: the DaemonEye process collector.
//!
//! - [`connector`]: real-time fork/exec/exit events from the kernel's netlink
//!   process connector, read by a dedicated thread.

pub mod connector;
