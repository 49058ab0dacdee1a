//! daemoneye-agent: judges what the collectors see.
//!
//! - [`rules`], [`engine`], [`detect`] (from `daemoneye-rules`): detection
//!   rules (TOML or YAML files and a built-in pack), the read-only,
//!   time-bounded engine that runs them over each batch of processes, and
//!   the detector (process table, rows, deduplicated alerts).
//! - [`alert`] (from `daemoneye-store`): alerts (rule, severity, process,
//!   stable key, time, a deduplication key) and their deduplication within
//!   a window.
//! - [`sink`]: alert delivery to syslog (RFC 5424).
//! - [`lines`]: JSON-lines alert sinks (stdout, a file) on threads of
//!   their own behind bounded queues.
//! - [`webhook`]: alert delivery to an HTTP(S) webhook, queued, retried with
//!   backoff, every alert counted.
//! - [`link`]: the link to the process collector over IPC: start it,
//!   subscribe, restart it with backoff when it goes.
//! - [`store`], [`writer`], [`ledger`] (from `daemoneye-store`): the
//!   agent's store (`<data-dir>/agent.db`: processes, lifecycle events and
//!   alerts, the last two recorded with their ledger entry), its writer
//!   thread, and the BLAKE3-chained audit ledger.
//! - [`health`]: the agent's health report, with its collector's.
//!
//! ```
//! use daemoneye_agent::engine::{ProcessRow, RuleEngine};
//! use daemoneye_agent::rules;
//!
//! let mut engine = RuleEngine::new(rules::builtin()?)?;
//! let row = ProcessRow {
//!     pid: 4242,
//!     name: "x".into(),
//!     exe: Some("/dev/shm/x".into()),
//!     ..ProcessRow::default()
//! };
//! let matches = engine.evaluate(&[row])?;
//! assert!(matches.iter().any(|m| m.rule_id == "exec-from-temp-dir"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod health;
pub mod lines;
pub mod link;
pub mod sink;
pub mod webhook;

pub use daemoneye_rules::{detect, engine, rules};
pub use daemoneye_store::{alert, ledger, writer};

/// The agent's store: [`daemoneye_store::store`], with the name the agent
/// has always used for it.
pub mod store {
    pub use daemoneye_store::store::*;
    pub use daemoneye_store::Store as AgentStore;
}
