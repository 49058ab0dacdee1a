//! procmond: the DaemonEye process collector.
//!
//! - [`connector`]: real-time fork/exec/exit events from the kernel's netlink
//!   process connector, read by a dedicated thread.
//! - [`ebpf`]: every fork, exec (with its argv and filename) and exit from
//!   eBPF programs on the scheduler's tracepoints, losses counted exactly;
//!   the first tier, before the connector.
//! - [`ipc`]: the detection tasks procmond answers over the collector IPC
//!   socket.
//! - [`lifecycle`]: start/exec/exit/modified and suspicious events from
//!   snapshots and kernel events.
//! - [`privileges`]: keeping only the capabilities collection needs.
//! - [`procfs`]: pure parsers of `/proc/<pid>/*` files.
//! - [`reader_thread`]: the kernel tiers' one reader thread and its handle.
//! - [`snapshot`]: reading one process or the whole table from `/proc`.
//! - [`source`]: [`ProcmondMonitorCollector`], all of the above as an
//!   `EventSource`.
//!
//! The audit database (`procmond run --database`) is `daemoneye-store`'s
//! [`Store`](daemoneye_store::Store), named [`DatabaseManager`] here as in
//! the reference: the same schema the agent stores into.

pub mod cli;
pub mod connector;
pub mod ebpf;
pub mod ipc;
pub mod lifecycle;
pub mod privileges;
pub mod procfs;
pub mod reader_thread;
pub mod snapshot;
pub mod source;
mod wire;

/// The audit database: [`daemoneye_store::Store`], under the reference's name.
pub use daemoneye_store::Store as DatabaseManager;
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
