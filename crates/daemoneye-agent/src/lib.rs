//! daemoneye-agent: judges what the collectors see.
//!
//! - [`agent`]: the main job: [`Agent::build`](agent::Agent::build) opens
//!   what can fail early, [`Agent::run`](agent::Agent::run) runs one
//!   [`link`] per collector into one detection loop until shutdown.
//! - [`config`]: the TOML config file, `DAEMONEYE_*` variables and flags,
//!   resolved into validated [`Settings`](config::Settings) (with the
//!   collector list).
//! - [`rules`], [`engine`], [`detect`] (from `daemoneye-rules`): detection
//!   rules (TOML or YAML files and a built-in pack), the read-only,
//!   time-bounded engine that runs them over each batch of processes, and
//!   the detector (process table, rows, deduplicated alerts).
//! - [`alert`] (from `daemoneye-store`): alerts (rule, severity, process,
//!   stable key, time, a deduplication key) and their deduplication within
//!   a window.
//! - [`sink`]: where alerts go: one [`AlertSink`](sink::AlertSink)
//!   contract, one bounded [`SinkWorker`](sink::SinkWorker) (queue with a
//!   when-full policy, retries with the one backoff, a close deadline, the
//!   same counters for every sink), the sinks (JSON lines on stdout or a
//!   file, syslog, an HTTP(S) webhook) and the agent's fan-out,
//!   [`SinkSet`](sink::SinkSet).
//! - [`link`]: the link to one collector over IPC: start it, check its
//!   domain, subscribe, restart it with backoff when it goes.
//! - [`store`], [`writer`], [`ledger`] (from `daemoneye-store`): the
//!   agent's store (`<data-dir>/agent.db`: processes, lifecycle events and
//!   alerts, the last two recorded with their ledger entry), its writer
//!   thread, and the BLAKE3-chained audit ledger.
//! - [`health`]: the agent's health report, with each collector's.
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

pub mod agent;
pub mod config;
pub mod health;
pub mod link;
pub mod sink;
pub mod spawner;

pub use daemoneye_rules::{detect, engine, rules};
pub use daemoneye_store::{alert, files, ledger, network, performance, writer};

/// The agent's store: [`daemoneye_store::store`], with the name the agent
/// has always used for it.
pub mod store {
    pub use daemoneye_store::store::*;
    pub use daemoneye_store::Store as AgentStore;
}
