//! procmond: the DaemonEye process collector.
//!
//! - [`connector`]: real-time fork/exec/exit events from the kernel's netlink
//!   process connector, read by a dedicated thread.
//! - [`db`]: the SQLite audit database (snapshots, lifecycle events, last
//!   known process state) and its batching writer task.
//! - [`ipc`]: the detection tasks procmond answers over the collector IPC
//!   socket.
//! - [`lifecycle`]: start/exec/exit/modified and suspicious events from
//!   snapshots and kernel events.
//! - [`privileges`]: keeping only the capabilities collection needs.
//! - [`procfs`]: pure parsers of `/proc/<pid>/*` files.
//! - [`snapshot`]: reading one process or the whole table from `/proc`.
//! - [`source`]: [`ProcmondMonitorCollector`], all of the above as an
//!   `EventSource`.

pub mod cli;
pub mod connector;
pub mod db;
pub mod ipc;
pub mod lifecycle;
pub mod privileges;
pub mod procfs;
pub mod snapshot;
pub mod source;

pub use db::DatabaseManager;
pub use lifecycle::LifecycleTrackingConfig;
pub use source::{
    ProcessCollectionConfig, ProcmondError, ProcmondMonitorCollector, ProcmondMonitorConfig,
    ProcmondStatsHandle,
};

/// One line of `--events-jsonl`: a process event's JSON fields plus `kind`
/// (`snapshot`, `exec`, `exit`, ...); `None` for events of other domains.
///
/// # Errors
/// When the event cannot be encoded.
pub fn jsonl_line(event: &collector_core::CollectionEvent) -> serde_json::Result<Option<String>> {
    let collector_core::CollectionEvent::Process(p) = event else {
        return Ok(None);
    };
    let mut v = serde_json::to_value(p)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("kind".to_owned(), p.event_type.as_str().into());
    }
    serde_json::to_string(&v).map(Some)
}
