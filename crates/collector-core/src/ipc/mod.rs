//! The collector side of the DaemonEye IPC protocol: a Unix-socket server
//! that answers [`DetectionTask`](daemoneye_lib::proto::DetectionTask)s and
//! streams live events, and the client the agent and the CLI use.
//!
//! - [`CollectorIpcServer`]: binds an owner-only socket (0600 in a 0700
//!   directory), checks each peer's uid (`SO_PEERCRED`) against an
//!   allow-list, runs the capability handshake, hands tasks to a handler
//!   with a timeout, and streams the events of a running
//!   [`Collector`](crate::Collector) ([`CollectorIpcServer::with_events`])
//!   through a bounded per-connection buffer that drops and counts when the
//!   client is slow.
//! - [`CollectorIpcClient`]: connects with capped exponential backoff,
//!   performs the handshake, matches answers to requests, and receives
//!   [`EventBatch`](daemoneye_lib::proto::EventBatch)es of a subscription.
//! - [`IpcServerStats`]: what the server accepted, refused, rejected, ran and
//!   streamed, by reason.
//!
//! Frames are `u32 LE length | u32 LE CRC32C | protobuf Envelope`
//! ([`daemoneye_lib::codec`]). A framing error (bad length, bad checksum)
//! is answered with an `ErrorResponse` and closes the connection; a whole
//! frame that is not a valid envelope is answered and the connection goes
//! on (unless the handshake has not happened yet).
//!
//! ```no_run
//! use collector_core::{CollectorIpcServer, IpcServerConfig, SourceCaps};
//! use daemoneye_lib::proto::{DetectionResult, ProtoTaskType};
//!
//! # async fn demo() -> Result<(), collector_core::IpcError> {
//! let config = IpcServerConfig::new("/run/daemoneye/demo.sock");
//! let capabilities = SourceCaps::PROCESS | SourceCaps::REALTIME | SourceCaps::SYSTEM_WIDE;
//! let mut ipc_server = CollectorIpcServer::new(config, capabilities).await?;
//! ipc_server
//!     .start(|task| {
//!         Box::pin(async move {
//!             match task.task_type() {
//!                 ProtoTaskType::EnumerateProcesses => {
//!                     DetectionResult::success(&task.task_id, Vec::new())
//!                 }
//!                 _ => DetectionResult::failure(&task.task_id, "unsupported task type"),
//!             }
//!         })
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod convert;
mod error;
mod health;
mod server;
mod socket;
mod stats;
mod wire;

pub use client::{CollectorIpcClient, EventStream};
pub use config::{default_socket_path, IpcClientConfig, IpcServerConfig};
pub use convert::{
    caps_to_domains, domain_to_caps, event_to_record, process_to_record, record_to_event,
    record_to_process, RecordError, RecordProblem,
};
pub use error::IpcError;
pub use health::{collector_health, source_state, status_state, HealthFuture};
pub use server::{CollectorIpcServer, IpcServerHandle, TaskFuture};
pub use stats::IpcServerStats;
