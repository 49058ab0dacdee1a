//! daemoneye-agent: judges what the collectors see.
//!
//! - [`agent`]: the main job: [`Agent::build`](agent::Agent::build) opens
//!   what can fail early, [`Agent::run`](agent::Agent::run) runs one
//!   [`link`] per collector into one detection loop until shutdown.
//! - [`config`]: the TOML config file, `DAEMONEYE_*` variables and flags,
//!   resolved into validated [`Settings`](config::Settings) (with the
//!   collector list).
//! - [`rules`]: detection rules (TOML or YAML files and a built-in pack): id,
//!   name, severity, one read-only SQL `SELECT`, tags, ATT&CK ids; refused at
//!   load with the rule, the file and the reason when they break the rules.
//! - [`engine`]: runs every rule over a batch of processes in an in-memory
//!   SQLite database the rules can only read (on two threads), each within
//!   a time bound.
//! - [`alert`]: alerts (rule, severity, process, stable key, time, a
//!   deduplication key) and their deduplication within a window.
//! - [`detect`]: the process table, rows for each batch, rules, deduplicated
//!   alerts.
//! - [`sink`]: where alerts go: one [`AlertSink`](sink::AlertSink)
//!   contract, one bounded [`SinkWorker`](sink::SinkWorker) (queue with a
//!   when-full policy, retries with the one backoff, a close deadline, the
//!   same counters for every sink), the sinks (JSON lines on stdout or a
//!   file, syslog, an HTTP(S) webhook) and the agent's fan-out,
//!   [`SinkSet`](sink::SinkSet).
//! - [`link`]: the link to one collector over IPC: start it, check its
//!   domain, subscribe, restart it with backoff when it goes.
//! - [`store`]: the agent's store: live processes, lifecycle events and
//!   alerts, the last two recorded with their ledger entry;
//!   [`writer`] writes it from a thread of its own.
//! - [`health`]: the agent's health report, with each collector's.
//! - [`ledger`]: an append-only audit ledger whose entries are chained by
//!   BLAKE3 hashes, so an edited, deleted or reordered entry is found.
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
pub mod alert;
pub mod config;
pub mod detect;
pub mod engine;
pub mod health;
pub mod ledger;
pub mod link;
pub mod rules;
pub mod sink;
pub mod store;
pub mod writer;
