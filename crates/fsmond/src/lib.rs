//! fsmond: the DaemonEye file-integrity collector.
//!
//! What attackers write on a Linux server is well known (cron entries,
//! systemd units, `authorized_keys`, `/etc/ld.so.preload`, sudoers, replaced
//! system binaries). fsmond watches those paths in real time with
//! fanotify in FID mode (`FAN_REPORT_DFID_NAME` on `FAN_MARK_FILESYSTEM`
//! marks of the filesystems that hold them), names the process that made
//! each change, and keeps a hashed baseline so that a change says what it
//! changed from.
//!
//! - [`record`]: the pure parser of the kernel's record stream.
//! - [`sys`]: the kernel calls (the crate's only `unsafe`:
//!   `open_by_handle_at`, which neither nix nor rustix wraps).
//! - [`baseline`]: the scan of the watched paths, and the diff of two.
//! - [`source`]: [`FsmondSource`], all of the above as an `EventSource`.
//! - [`cli`]: `fsmond run` and `fsmond scan`.
//!
//! # Privileges
//! Measured on Linux 6.18 as root with every other capability dropped:
//! [`CAPABILITIES`] (see its docs).

#![deny(unsafe_code)]

pub mod baseline;
pub mod cli;
pub mod record;
pub mod source;
pub mod sys;

pub use source::{FsmondConfig, FsmondCounters, FsmondSource, NAME};

/// The capabilities fsmond needs, measured (Linux 6.18, root with its
/// bounding set cut by `setpriv`): with none, `fanotify_init` succeeds but
/// `FAN_MARK_FILESYSTEM` is refused (`EPERM`); with `CAP_SYS_ADMIN` alone
/// the marks hold but no record can be named (`open_by_handle_at` needs
/// `CAP_DAC_READ_SEARCH`: 0 events); with both, every event arrives.
/// `CAP_DAC_READ_SEARCH` also lets the baseline hash files root's DAC
/// would otherwise refuse.
pub const CAPABILITIES: rustix::thread::CapabilitySet =
    rustix::thread::CapabilitySet::SYS_ADMIN.union(rustix::thread::CapabilitySet::DAC_READ_SEARCH);
