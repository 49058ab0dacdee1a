//! daemoneye-rules: DaemonEye's detection, without a network stack, so the
//! agent and the CLI judge rules alike.
//!
//! - [`rules`]: detection rules (TOML or YAML files and a built-in pack): id,
//!   name, severity, one read-only SQL `SELECT`, tags, ATT&CK ids; refused at
//!   load with the rule, the file and the reason when they break the rules.
//! - [`sigma`]: Sigma rules (`process_creation`, `network_connection`,
//!   `file_event` for Linux) converted into the same SQL at load.
//! - [`engine`]: runs every rule over a batch of processes in an in-memory
//!   SQLite database the rules can only read (on two threads), each within
//!   a time bound.
//! - [`history`]: what rules know of the past (each process's ancestry,
//!   the images it ran, recent lifecycle events), bounded.
//! - [`detect`]: the process table, rows for each batch, rules, deduplicated
//!   alerts.
//!
//! An alert ([`daemoneye_store::alert::Alert`]) is a stored record and lives
//! in the store; this crate depends on the store, never the other way.
//!
//! ```
//! use daemoneye_rules::engine::{ProcessRow, RuleEngine};
//! use daemoneye_rules::rules;
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

pub mod detect;
pub mod engine;
pub mod history;
pub mod rules;
pub mod sigma;
mod sys;
mod tables;
