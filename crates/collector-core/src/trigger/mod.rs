//! The trigger system: process events are evaluated against registered
//! [`TriggerCondition`]s; matches become [`TriggerRequest`]s for analysis
//! collectors, deduplicated, rate limited per collector and queued by
//! priority, then emitted (on the bus when one is attached) and tracked
//! until completed or timed out.
//!
//! # Condition types
//! - `ProcessNamePattern(p)` / `ExecutablePathPattern(p)`: a pattern with a
//!   glob metacharacter (`* ? [ {`) is a glob (`globset`) over the whole name
//!   or path (for paths `*` stays within one directory, `**` crosses them);
//!   a pattern without one matches as a case-sensitive substring, so the
//!   reference's `ProcessNamePattern("suspicious")` matches
//!   `suspicious-miner`.
//! - `MissingExecutable`: the executable no longer exists (`file_exists`
//!   false), or the event reports it deleted or replaced while running.
//! - `HashMismatch`: the executable's hash differs from every known-good
//!   hash configured for its path and algorithm ([`TriggerConfig::known_good_hashes`]).
//! - `SuspiciousParentChild`: the parent's name and the process's name form
//!   a configured pair ([`TriggerConfig::suspicious_parent_child`]; default:
//!   web servers and databases spawning shells). The parent's name comes
//!   from earlier events the
//!   manager evaluated (a bounded pid → name table).
//! - `ResourceAnomaly`: the framework's one judge of resource anomalies,
//!   [`crate::anomaly`], with the thresholds of
//!   [`TriggerConfig::resource_thresholds`]: a process event matches when its
//!   process has held at least the CPU share for the configured time, or its
//!   RSS grew by more than the threshold within the window, judged across
//!   the events of that process the manager evaluated (a bounded pid table;
//!   once per episode). A [`PerformanceEvent`] matches when it carries an
//!   anomaly (perfmond judged it with the same judge), through
//!   [`TriggerManager::evaluate_performance`].
//! - `Custom(sql)`: a SQL `WHERE` expression over the event's fields
//!   (see [`SqlCondition`]), refused at registration when it does not parse
//!   or names an unknown column.
//!
//! ```
//! use collector_core::{
//!     AnalysisType, ConditionType, ProcessEvent, TriggerCapabilities, TriggerCondition,
//!     TriggerConfig, TriggerManager, TriggerPriority, TriggerResourceLimits,
//! };
//!
//! # fn main() -> Result<(), collector_core::TriggerError> {
//! let manager = TriggerManager::new(TriggerConfig::default())?;
//! manager.register_collector_capabilities(TriggerCapabilities {
//!     collector_id: "binary-hasher".to_string(),
//!     supported_conditions: vec![ConditionType::Custom(String::new())],
//!     supported_analysis: vec![AnalysisType::BinaryHash],
//!     max_trigger_rate: 100,
//!     max_concurrent_analysis: 10,
//!     supported_priorities: vec![TriggerPriority::High],
//!     resource_limits: TriggerResourceLimits::default(),
//! })?;
//! manager.register_condition(TriggerCondition {
//!     id: "shell-from-tmp".to_string(),
//!     description: "a shell run from /tmp".to_string(),
//!     analysis_type: AnalysisType::BinaryHash,
//!     priority: TriggerPriority::High,
//!     target_collector: "binary-hasher".to_string(),
//!     condition_type: ConditionType::Custom(
//!         "exe LIKE '/tmp/%' AND name IN ('sh', 'bash')".to_string(),
//!     ),
//! })?;
//! let mut p = ProcessEvent::new(4242, "bash");
//! p.executable_path = Some("/tmp/bash".into());
//! assert_eq!(manager.evaluate(&p), 1);
//! let request = manager.next_trigger().unwrap();
//! assert_eq!(request.target_pid, Some(4242));
//! manager.complete_trigger(&request.trigger_id, true)?;
//! # Ok(())
//! # }
//! ```

mod sql;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

pub use sql::{SqlCondition, SqlError, COLUMNS as SQL_COLUMNS, MAX_SQL_LEN};

use crate::anomaly::{AnomalyConfig, ProcWatch};
use crate::bus::{new_correlation_id, BusEvent, CorrelationMetadata, EventBus, LocalEventBus};
use crate::common::{lock, read, write};
use crate::event::{
    AnalysisType, CollectionEvent, HashAlgorithm, PerformanceEvent, PerformanceSubject,
    ProcessEvent, ProcessEventType, TriggerPriority, TriggerRequest,
};
use crate::metrics::Counter;

/// The name trigger requests are published under on the bus.
pub const TRIGGER_SOURCE: &str = "trigger-manager";
/// The longest name or path pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// What a condition looks for (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConditionType {
    /// The process name matches (glob, or substring without metacharacters).
    ProcessNamePattern(String),
    /// The executable path matches (glob, or substring without metacharacters).
    ExecutablePathPattern(String),
    /// The executable was deleted or replaced while the process runs.
    MissingExecutable,
    /// The executable's hash is not a known-good one for its path.
    HashMismatch,
    /// A configured parent → child pair (a web server spawning a shell).
    SuspiciousParentChild,
    /// CPU or memory above the configured thresholds.
    ResourceAnomaly,
    /// A SQL `WHERE` expression over the event's fields.
    Custom(String),
}

impl ConditionType {
    /// One condition of every kind, arguments empty: what a collector that
    /// can evaluate them all declares in its capabilities.
    pub fn every_kind() -> Vec<Self> {
        vec![
            Self::ProcessNamePattern(String::new()),
            Self::ExecutablePathPattern(String::new()),
            Self::MissingExecutable,
            Self::HashMismatch,
            Self::SuspiciousParentChild,
            Self::ResourceAnomaly,
            Self::Custom(String::new()),
        ]
    }

    /// The variant's name, without its argument: what capabilities compare.
    pub const fn kind_name(&self) -> &'static str {
        match self {
            Self::ProcessNamePattern(_) => "process_name_pattern",
            Self::ExecutablePathPattern(_) => "executable_path_pattern",
            Self::MissingExecutable => "missing_executable",
            Self::HashMismatch => "hash_mismatch",
            Self::SuspiciousParentChild => "suspicious_parent_child",
            Self::ResourceAnomaly => "resource_anomaly",
            Self::Custom(_) => "custom",
        }
    }
}

/// Resource limits an analysis collector declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerResourceLimits {
    /// CPU the collector may use, in percent of one core.
    pub max_cpu_percent: f64,
    /// Memory the collector may use, in bytes.
    pub max_memory_bytes: u64,
    /// Longest one analysis may take.
    #[serde(with = "humantime_serde")]
    pub max_analysis_time: Duration,
}

impl Default for TriggerResourceLimits {
    fn default() -> Self {
        Self {
            max_cpu_percent: 5.0,
            max_memory_bytes: 128 << 20,
            max_analysis_time: Duration::from_secs(30),
        }
    }
}

/// What an analysis collector can be triggered for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerCapabilities {
    /// The collector's id (the `target_collector` of its conditions).
    pub collector_id: String,
    /// Condition types it accepts (compared by variant, not argument).
    pub supported_conditions: Vec<ConditionType>,
    /// Analyses it performs.
    pub supported_analysis: Vec<AnalysisType>,
    /// Triggers per second it accepts (token bucket, burst of the same size).
    pub max_trigger_rate: u32,
    /// Analyses it runs at once; more wait in the queue.
    pub max_concurrent_analysis: u32,
    /// Priorities it accepts.
    pub supported_priorities: Vec<TriggerPriority>,
    /// Its resource limits.
    pub resource_limits: TriggerResourceLimits,
}

/// A rule: which events trigger which analysis on which collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerCondition {
    /// Unique id.
    pub id: String,
    /// What it is for.
    pub description: String,
    /// The analysis requested.
    pub analysis_type: AnalysisType,
    /// The priority of the requests.
    pub priority: TriggerPriority,
    /// The collector asked.
    pub target_collector: String,
    /// What to look for.
    pub condition_type: ConditionType,
}

/// A known-good executable hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownGoodHash {
    /// The executable's path.
    pub path: String,
    /// The algorithm of `digest`.
    pub algorithm: HashAlgorithm,
    /// Lowercase hex digest.
    pub digest: String,
}

/// A parent → child name pair that is suspicious.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentChildRule {
    /// The parent's process name (exact).
    pub parent: String,
    /// The child's process name (exact).
    pub child: String,
}

fn default_pairs() -> Vec<ParentChildRule> {
    let parents = [
        "nginx",
        "apache2",
        "httpd",
        "php-fpm",
        "lighttpd",
        "caddy",
        "tomcat",
        "mysqld",
        "mariadbd",
        "postgres",
        "redis-server",
        "mongod",
    ];
    let children = [
        "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "nc", "ncat",
    ];
    parents
        .iter()
        .flat_map(|p| {
            children.iter().map(move |c| ParentChildRule {
                parent: (*p).to_owned(),
                child: (*c).to_owned(),
            })
        })
        .collect()
}

/// Configuration of a [`TriggerManager`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    /// Most conditions registered at once.
    pub max_conditions: usize,
    /// Capacity of the pending-trigger queue.
    pub max_pending_triggers: usize,
    /// Fill ratio (0..=1) above which `Low` triggers are shed on arrival.
    pub shed_low_ratio: f64,
    /// A condition matching the same process again within this window
    /// does not trigger again.
    #[serde(with = "humantime_serde")]
    pub deduplication_window: Duration,
    /// An emitted trigger not completed within this time is timed out.
    #[serde(with = "humantime_serde")]
    pub trigger_timeout: Duration,
    /// Size of the pid → name table used for parent names.
    pub max_tracked_processes: usize,
    /// Known-good hashes for `HashMismatch`.
    pub known_good_hashes: Vec<KnownGoodHash>,
    /// Pairs for `SuspiciousParentChild`.
    pub suspicious_parent_child: Vec<ParentChildRule>,
    /// Thresholds for `ResourceAnomaly`: the framework's anomaly judge's.
    pub resource_thresholds: AnomalyConfig,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        Self {
            max_conditions: 1024,
            max_pending_triggers: 1000,
            shed_low_ratio: 0.8,
            deduplication_window: Duration::from_secs(300),
            trigger_timeout: Duration::from_secs(60),
            max_tracked_processes: 65_536,
            known_good_hashes: Vec::new(),
            suspicious_parent_child: default_pairs(),
            resource_thresholds: AnomalyConfig::default(),
        }
    }
}

/// Errors of the trigger system. Nothing is half-registered: a refused
/// registration changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// The configuration is invalid.
    #[error("invalid trigger config: field `{field}` {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Capabilities are invalid.
    #[error("invalid capabilities of {collector:?}: {reason}")]
    InvalidCapabilities {
        /// The collector.
        collector: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The collector already registered its capabilities.
    #[error("collector {collector:?} is already registered")]
    DuplicateCollector {
        /// The collector.
        collector: String,
    },
    /// A condition names a collector that did not register.
    #[error("condition {condition:?} targets unknown collector {collector:?}")]
    UnknownCollector {
        /// The condition.
        condition: String,
        /// The collector.
        collector: String,
    },
    /// The collector did not declare what the condition needs.
    #[error(
        "collector {collector:?} does not support the {what} {value} of condition {condition:?}"
    )]
    Unsupported {
        /// The condition.
        condition: String,
        /// The collector.
        collector: String,
        /// `condition type`, `analysis type` or `priority`.
        what: &'static str,
        /// The refused value.
        value: String,
    },
    /// A condition with this id exists.
    #[error("condition {condition:?} is already registered")]
    DuplicateCondition {
        /// The condition.
        condition: String,
    },
    /// The condition limit is reached.
    #[error("the limit of {max} conditions is reached")]
    TooManyConditions {
        /// The limit.
        max: usize,
    },
    /// The condition itself is malformed (empty id, bad pattern).
    #[error("invalid condition {condition:?}: {reason}")]
    InvalidCondition {
        /// The condition.
        condition: String,
        /// What is wrong.
        reason: String,
    },
    /// A custom SQL condition was refused.
    #[error("invalid sql in condition {condition:?}")]
    InvalidSql {
        /// The condition.
        condition: String,
        /// Why.
        #[source]
        source: SqlError,
    },
    /// No emitted trigger with this id is pending.
    #[error("no pending trigger {trigger_id:?}")]
    UnknownTrigger {
        /// The id.
        trigger_id: String,
    },
    /// Emission needs a bus and none is attached.
    #[error("no event bus is attached")]
    NoBus,
    /// Publishing on the bus failed.
    #[error("cannot publish a trigger request")]
    Publish(#[source] crate::bus::BusError),
}

/// Counters of a [`TriggerManager`].
///
/// `conditions_matched = triggers_deduplicated + triggers_rate_limited +
/// triggers_shed_low + triggers_shed_full + triggers_emitted + triggers_queued`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TriggerStatistics {
    /// Process events evaluated.
    pub events_evaluated: u64,
    /// (event, condition) matches.
    pub conditions_matched: u64,
    /// Matches suppressed within the deduplication window.
    pub triggers_deduplicated: u64,
    /// Matches refused by a collector's rate limit.
    pub triggers_rate_limited: u64,
    /// `Low` triggers shed because the queue was nearly full.
    pub triggers_shed_low: u64,
    /// Triggers dropped or evicted because the queue was full.
    pub triggers_shed_full: u64,
    /// Triggers handed out (published or taken by `next_trigger`).
    pub triggers_emitted: u64,
    /// Triggers waiting in the queue now.
    pub triggers_queued: u64,
    /// Emitted triggers waiting for completion now.
    pub triggers_in_flight: u64,
    /// Triggers completed successfully.
    pub triggers_completed: u64,
    /// Triggers completed with a failure.
    pub triggers_failed: u64,
    /// Triggers not completed within the timeout.
    pub triggers_timed_out: u64,
    /// Processes forgotten because the pid → name table was full.
    pub processes_evicted: u64,
}

enum TextPattern {
    Substring(String),
    Glob(GlobMatcher),
}

impl TextPattern {
    fn new(pattern: &str, path: bool) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("the pattern is empty".into());
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err("the pattern is too long".into());
        }
        if !pattern.contains(['*', '?', '[', '{']) {
            return Ok(Self::Substring(pattern.to_owned()));
        }
        GlobBuilder::new(pattern)
            .literal_separator(path)
            .backslash_escape(true)
            .build()
            .map(|g| Self::Glob(g.compile_matcher()))
            .map_err(|e| format!("bad glob: {e}"))
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Substring(s) => text.contains(s.as_str()),
            Self::Glob(g) => g.is_match(text),
        }
    }
}

enum Matcher {
    Name(TextPattern),
    Path(TextPattern),
    MissingExecutable,
    HashMismatch,
    ParentChild,
    Resource,
    Sql(Box<SqlCondition>),
}

struct Compiled {
    condition: TriggerCondition,
    matcher: Matcher,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct InFlight {
    collector: String,
    correlation_id: String,
    deadline: Instant,
}

#[derive(Clone, Copy)]
struct Watched {
    start_ticks: Option<u64>,
    seen_at: Duration,
    watch: ProcWatch,
}

#[derive(Default)]
struct State {
    capabilities: HashMap<String, TriggerCapabilities>,
    dedup: HashMap<u64, Instant>,
    buckets: HashMap<String, Bucket>,
    /// Highest priority last; within a priority, oldest last.
    queue: BTreeMap<(TriggerPriority, std::cmp::Reverse<u64>), TriggerRequest>,
    in_flight: HashMap<String, InFlight>,
    running: HashMap<String, u32>,
    names: HashMap<u32, String>,
    /// Per process, for `ResourceAnomaly`: its start (to tell a reused pid),
    /// when its last usage was seen (since the epoch) and its anomaly state.
    watches: HashMap<u32, Watched>,
    seq: u64,
}

#[derive(Default)]
struct Counters {
    evaluated: Counter,
    matched: Counter,
    deduplicated: Counter,
    rate_limited: Counter,
    shed_low: Counter,
    shed_full: Counter,
    emitted: Counter,
    completed: Counter,
    failed: Counter,
    timed_out: Counter,
    evicted: Counter,
}

/// Evaluates process events against conditions and emits trigger requests.
pub struct TriggerManager {
    config: TriggerConfig,
    known_good: RwLock<HashMap<(String, HashAlgorithm), Vec<String>>>,
    pairs: HashMap<String, Vec<String>>,
    conditions: RwLock<Vec<Compiled>>,
    state: Mutex<State>,
    counters: Counters,
    bus: RwLock<Option<LocalEventBus>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for TriggerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn valid_digest(alg: HashAlgorithm, d: &str) -> bool {
    d.len() == alg.hex_len() && d.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TriggerManager {
    /// Validates `config` and builds a manager with no collectors or
    /// conditions.
    ///
    /// # Errors
    /// [`TriggerError::Config`] naming the field.
    pub fn new(config: TriggerConfig) -> Result<Self, TriggerError> {
        let bad = |field, reason: &str| {
            Err(TriggerError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if config.max_pending_triggers == 0 {
            return bad("max_pending_triggers", "must be positive");
        }
        if !(0.0..=1.0).contains(&config.shed_low_ratio) {
            return bad("shed_low_ratio", "must be between 0 and 1");
        }
        if config.trigger_timeout.is_zero() {
            return bad("trigger_timeout", "must be positive");
        }
        if config.max_tracked_processes == 0 {
            return bad("max_tracked_processes", "must be positive");
        }
        if let Err(crate::ConfigError::Invalid { field, reason }) =
            config.resource_thresholds.validate()
        {
            return Err(TriggerError::Config {
                field: "resource_thresholds",
                reason: format!("{field} {reason}"),
            });
        }
        let mut known: HashMap<(String, HashAlgorithm), Vec<String>> = HashMap::new();
        for k in &config.known_good_hashes {
            if !valid_digest(k.algorithm, &k.digest) || k.path.is_empty() {
                return bad(
                    "known_good_hashes",
                    "has an empty path or a malformed digest",
                );
            }
            known
                .entry((k.path.clone(), k.algorithm))
                .or_default()
                .push(k.digest.to_ascii_lowercase());
        }
        let mut pairs: HashMap<String, Vec<String>> = HashMap::new();
        for r in &config.suspicious_parent_child {
            if r.parent.is_empty() || r.child.is_empty() {
                return bad("suspicious_parent_child", "has an empty name");
            }
            pairs
                .entry(r.child.clone())
                .or_default()
                .push(r.parent.clone());
        }
        Ok(Self {
            config,
            known_good: RwLock::new(known),
            pairs,
            conditions: RwLock::new(Vec::new()),
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            bus: RwLock::new(None),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    /// Emits trigger requests on `bus` from now on.
    pub fn attach_bus(&self, bus: LocalEventBus) {
        *write(&self.bus) = Some(bus);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The conditions and the state, locked in the one order every caller
    /// keeps: conditions, then state (then known-good hashes).
    fn conditions_and_state(
        &self,
    ) -> (
        std::sync::RwLockReadGuard<'_, Vec<Compiled>>,
        std::sync::MutexGuard<'_, State>,
    ) {
        let conditions = read(&self.conditions);
        (conditions, self.state())
    }

    /// Adds a known-good hash for `HashMismatch`.
    ///
    /// # Errors
    /// [`TriggerError::Config`] for an empty path or a malformed digest.
    pub fn add_known_good_hash(&self, hash: KnownGoodHash) -> Result<(), TriggerError> {
        if hash.path.is_empty() || !valid_digest(hash.algorithm, &hash.digest) {
            return Err(TriggerError::Config {
                field: "known_good_hashes",
                reason: "has an empty path or a malformed digest".into(),
            });
        }
        write(&self.known_good)
            .entry((hash.path, hash.algorithm))
            .or_default()
            .push(hash.digest.to_ascii_lowercase());
        Ok(())
    }

    /// Registers what a collector can be triggered for.
    ///
    /// # Errors
    /// [`TriggerError::InvalidCapabilities`], [`TriggerError::DuplicateCollector`].
    pub fn register_collector_capabilities(
        &self,
        capabilities: TriggerCapabilities,
    ) -> Result<(), TriggerError> {
        let invalid = |reason| {
            Err(TriggerError::InvalidCapabilities {
                collector: capabilities.collector_id.clone(),
                reason,
            })
        };
        if capabilities.collector_id.is_empty() {
            return invalid("empty collector id");
        }
        if capabilities.max_trigger_rate == 0 || capabilities.max_concurrent_analysis == 0 {
            return invalid("max_trigger_rate and max_concurrent_analysis must be positive");
        }
        if capabilities.supported_conditions.is_empty()
            || capabilities.supported_analysis.is_empty()
            || capabilities.supported_priorities.is_empty()
        {
            return invalid("it supports no condition, analysis or priority");
        }
        let mut state = self.state();
        if state.capabilities.contains_key(&capabilities.collector_id) {
            return Err(TriggerError::DuplicateCollector {
                collector: capabilities.collector_id,
            });
        }
        state
            .capabilities
            .insert(capabilities.collector_id.clone(), capabilities);
        Ok(())
    }

    /// Registers a condition after checking it against its target
    /// collector's capabilities and compiling its pattern or SQL.
    ///
    /// # Errors
    /// [`TriggerError::UnknownCollector`], [`TriggerError::Unsupported`],
    /// [`TriggerError::DuplicateCondition`], [`TriggerError::TooManyConditions`],
    /// [`TriggerError::InvalidCondition`], [`TriggerError::InvalidSql`].
    pub fn register_condition(&self, condition: TriggerCondition) -> Result<(), TriggerError> {
        let id = condition.id.clone();
        if id.is_empty() || id.len() > 256 {
            return Err(TriggerError::InvalidCondition {
                condition: id,
                reason: "the id is empty or longer than 256 bytes".into(),
            });
        }
        {
            let state = self.state();
            let caps = state
                .capabilities
                .get(&condition.target_collector)
                .ok_or_else(|| TriggerError::UnknownCollector {
                    condition: id.clone(),
                    collector: condition.target_collector.clone(),
                })?;
            let unsupported = |what, value: String| TriggerError::Unsupported {
                condition: id.clone(),
                collector: condition.target_collector.clone(),
                what,
                value,
            };
            let kind = condition.condition_type.kind_name();
            if !caps
                .supported_conditions
                .iter()
                .any(|c| c.kind_name() == kind)
            {
                return Err(unsupported("condition type", kind.to_owned()));
            }
            if !caps.supported_analysis.contains(&condition.analysis_type) {
                return Err(unsupported(
                    "analysis type",
                    crate::bus::analysis_str(condition.analysis_type).to_owned(),
                ));
            }
            if !caps.supported_priorities.contains(&condition.priority) {
                return Err(unsupported("priority", format!("{:?}", condition.priority)));
            }
        }
        let invalid = |reason: String| TriggerError::InvalidCondition {
            condition: id.clone(),
            reason,
        };
        let matcher = match &condition.condition_type {
            ConditionType::ProcessNamePattern(p) => {
                Matcher::Name(TextPattern::new(p, false).map_err(invalid)?)
            }
            ConditionType::ExecutablePathPattern(p) => {
                Matcher::Path(TextPattern::new(p, true).map_err(invalid)?)
            }
            ConditionType::MissingExecutable => Matcher::MissingExecutable,
            ConditionType::HashMismatch => Matcher::HashMismatch,
            ConditionType::SuspiciousParentChild => Matcher::ParentChild,
            ConditionType::ResourceAnomaly => Matcher::Resource,
            ConditionType::Custom(sql) => {
                Matcher::Sql(Box::new(SqlCondition::compile(sql).map_err(|source| {
                    TriggerError::InvalidSql {
                        condition: id.clone(),
                        source,
                    }
                })?))
            }
        };
        let mut conditions = write(&self.conditions);
        if conditions.iter().any(|c| c.condition.id == id) {
            return Err(TriggerError::DuplicateCondition { condition: id });
        }
        if conditions.len() >= self.config.max_conditions {
            return Err(TriggerError::TooManyConditions {
                max: self.config.max_conditions,
            });
        }
        conditions.push(Compiled { condition, matcher });
        Ok(())
    }

    /// Removes a condition. Returns whether it existed.
    pub fn unregister_condition(&self, id: &str) -> bool {
        let mut conditions = write(&self.conditions);
        let before = conditions.len();
        conditions.retain(|c| c.condition.id != id);
        before != conditions.len()
    }

    /// The ids of the registered conditions.
    pub fn condition_ids(&self) -> Vec<String> {
        read(&self.conditions)
            .iter()
            .map(|c| c.condition.id.clone())
            .collect()
    }

    /// Whether `m` matches `e`; `anomalous` is the resource judge's verdict
    /// on it ([`Self::judge_resources`]).
    fn matches(
        &self,
        m: &Matcher,
        e: &ProcessEvent,
        parent: Option<&str>,
        anomalous: bool,
    ) -> bool {
        match m {
            Matcher::Name(p) => p.matches(&e.name),
            Matcher::Path(p) => e.executable_path.as_deref().is_some_and(|x| p.matches(x)),
            Matcher::MissingExecutable => {
                (!e.file_exists && e.event_type != ProcessEventType::Exit)
                    || matches!(
                        e.event_type,
                        ProcessEventType::ExecutableDeleted | ProcessEventType::ExecutableReplaced
                    )
            }
            Matcher::HashMismatch => {
                let (Some(path), Some(hash), Some(alg)) =
                    (&e.executable_path, &e.executable_hash, e.hash_algorithm)
                else {
                    return false;
                };
                let known = read(&self.known_good);
                known
                    .get(&(path.clone(), alg))
                    .is_some_and(|good| !good.iter().any(|g| g.eq_ignore_ascii_case(hash)))
            }
            Matcher::ParentChild => parent.is_some_and(|p| {
                self.pairs
                    .get(&e.name)
                    .is_some_and(|parents| parents.iter().any(|x| x == p))
            }),
            Matcher::Resource => anomalous,
            Matcher::Sql(s) => s.matches_row(sql::Row {
                event: e,
                parent_name: parent,
            }),
        }
    }

    /// The ids of the conditions `event` matches, without side effects
    /// (no trigger is queued, nothing is counted).
    pub fn matching_conditions(&self, event: &ProcessEvent) -> Vec<String> {
        let (conditions, mut state) = self.conditions_and_state();
        let anomalous = self.judge_resources(&mut state, &conditions, event, false);
        let parent = parent_name(&state, event);
        conditions
            .iter()
            .filter(|c| self.matches(&c.matcher, event, parent, anomalous))
            .map(|c| c.condition.id.clone())
            .collect()
    }

    /// The resource judge ([`crate::anomaly`]) on `e`'s CPU share and RSS,
    /// continuing the episode of its process; the new state is kept when
    /// `feed` (evaluating), not when only looking. False without a
    /// `ResourceAnomaly` condition or without usage in the event.
    fn judge_resources(
        &self,
        state: &mut State,
        conditions: &[Compiled],
        e: &ProcessEvent,
        feed: bool,
    ) -> bool {
        if (e.cpu_usage.is_none() && e.memory_usage.is_none())
            || !conditions
                .iter()
                .any(|c| matches!(c.matcher, Matcher::Resource))
        {
            return false;
        }
        let now = e
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let start_ticks = e.process_key.map(|k| k.start_ticks);
        let mut w = match state.watches.get(&e.pid) {
            Some(w) if w.start_ticks == start_ticks => *w,
            // New, or the pid now names another process.
            _ => Watched {
                start_ticks,
                seen_at: now,
                watch: ProcWatch::default(),
            },
        };
        let fired = w.watch.observe(
            &self.config.resource_thresholds,
            w.seen_at.min(now),
            now,
            e.cpu_usage,
            e.memory_usage,
        );
        if feed {
            w.seen_at = now;
            if state.watches.len() >= self.config.max_tracked_processes
                && !state.watches.contains_key(&e.pid)
            {
                if let Some(victim) = state.watches.keys().next().copied() {
                    state.watches.remove(&victim);
                    self.counters.evicted.inc();
                }
            }
            state.watches.insert(e.pid, w);
        }
        fired.iter().any(Option::is_some)
    }

    /// Evaluates `event` against every condition; each match becomes a
    /// trigger request unless deduplicated, rate limited or shed (all
    /// counted). Returns the number of requests queued.
    pub fn evaluate(&self, event: &ProcessEvent) -> usize {
        self.counters.evaluated.inc();
        let now = Instant::now();
        let (conditions, mut state) = self.conditions_and_state();
        let mut hits: Vec<usize> = Vec::new();
        {
            let anomalous = self.judge_resources(&mut state, &conditions, event, true);
            let parent = parent_name(&state, event);
            for (i, c) in conditions.iter().enumerate() {
                if self.matches(&c.matcher, event, parent, anomalous) {
                    hits.push(i);
                }
            }
        }
        self.counters.matched.add_usize(hits.len());
        let mut queued = 0;
        for i in hits {
            if let Some(c) = conditions.get(i) {
                queued += usize::from(self.admit(&mut state, &c.condition, event, now));
            }
        }
        self.track(&mut state, event);
        queued
    }

    /// Evaluates a performance event: one that carries an anomaly (judged
    /// by [`crate::anomaly`], perfmond's judge) about one process matches
    /// every `ResourceAnomaly` condition, and each match becomes a trigger
    /// request for that process, as [`evaluate`](Self::evaluate) does for
    /// process events (deduplicated, rate limited, shed, all counted; the
    /// request's metadata names the anomaly). A host-wide anomaly (fork
    /// rate, pressure) names no process to analyse and queues nothing.
    /// Returns the number of requests queued.
    pub fn evaluate_performance(&self, event: &PerformanceEvent) -> usize {
        self.counters.evaluated.inc();
        let (Some(anomaly), PerformanceSubject::Process { pid, process_key }) =
            (&event.anomaly, &event.subject)
        else {
            return 0;
        };
        let now = Instant::now();
        let (conditions, mut state) = self.conditions_and_state();
        let mut target = ProcessEvent::new(*pid, state.names.get(pid).cloned().unwrap_or_default());
        target.process_key = *process_key;
        target.timestamp = event.timestamp;
        let mut queued = 0;
        for c in conditions
            .iter()
            .filter(|c| matches!(c.matcher, Matcher::Resource))
        {
            self.counters.matched.inc();
            let kind = ("anomaly", anomaly.kind.as_str());
            queued +=
                usize::from(self.admit_with(&mut state, &c.condition, &target, now, Some(kind)));
        }
        queued
    }

    /// Remembers the name of `event`'s process for its children.
    fn track(&self, state: &mut State, event: &ProcessEvent) {
        if event.event_type == ProcessEventType::Exit {
            state.names.remove(&event.pid);
            state.watches.remove(&event.pid);
            return;
        }
        if state
            .names
            .get(&event.pid)
            .is_some_and(|n| *n == event.name)
        {
            return;
        }
        if state.names.len() >= self.config.max_tracked_processes
            && !state.names.contains_key(&event.pid)
        {
            if let Some(victim) = state.names.keys().next().copied() {
                state.names.remove(&victim);
                self.counters.evicted.inc();
            }
        }
        state.names.insert(event.pid, event.name.clone());
    }

    fn dedup_key(&self, condition: &str, e: &ProcessEvent) -> u64 {
        let mut h = self.hasher.build_hasher();
        condition.hash(&mut h);
        e.pid.hash(&mut h);
        e.process_key.map(|k| k.start_ticks).hash(&mut h);
        e.executable_path.hash(&mut h);
        h.finish()
    }

    /// Dedup, rate limit, queue. Returns whether the trigger was queued.
    fn admit(
        &self,
        state: &mut State,
        c: &TriggerCondition,
        e: &ProcessEvent,
        now: Instant,
    ) -> bool {
        self.admit_with(state, c, e, now, None)
    }

    /// [`admit`](Self::admit), with one more metadata entry on the request.
    fn admit_with(
        &self,
        state: &mut State,
        c: &TriggerCondition,
        e: &ProcessEvent,
        now: Instant,
        extra: Option<(&str, &str)>,
    ) -> bool {
        let key = self.dedup_key(&c.id, e);
        let window = self.config.deduplication_window;
        if let Some(seen) = state.dedup.get(&key) {
            if now.saturating_duration_since(*seen) < window {
                self.counters.deduplicated.inc();
                return false;
            }
        }
        let Some(rate) = state
            .capabilities
            .get(&c.target_collector)
            .map(|caps| f64::from(caps.max_trigger_rate))
        else {
            return false;
        };
        let bucket = state
            .buckets
            .entry(c.target_collector.clone())
            .or_insert(Bucket {
                tokens: rate,
                last: now,
            });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            self.counters.rate_limited.inc();
            return false;
        }
        let cap = self.config.max_pending_triggers;
        let len = state.queue.len();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let shed_at = ((cap as f64) * self.config.shed_low_ratio).floor() as usize;
        if c.priority == TriggerPriority::Low && len >= shed_at {
            self.counters.shed_low.inc();
            return false;
        }
        if len >= cap {
            // Full: evict the lowest-priority newest entry if it ranks below.
            let lowest = state.queue.keys().next().copied();
            match lowest {
                Some(k) if k.0 < c.priority => {
                    state.queue.remove(&k);
                    self.counters.shed_full.inc();
                }
                _ => {
                    self.counters.shed_full.inc();
                    return false;
                }
            }
        }
        bucket.tokens -= 1.0;
        state.dedup.insert(key, now);
        state.seq += 1;
        let request = TriggerRequest {
            trigger_id: format!("trg-{}", new_correlation_id()),
            target_collector: c.target_collector.clone(),
            analysis_type: c.analysis_type,
            priority: c.priority,
            target_pid: Some(e.pid),
            target_path: e.executable_path.clone(),
            correlation_id: new_correlation_id(),
            metadata: BTreeMap::from([
                ("condition_id".to_owned(), c.id.clone()),
                (
                    "condition_type".to_owned(),
                    c.condition_type.kind_name().to_owned(),
                ),
                ("process_name".to_owned(), truncate(&e.name)),
                ("event_type".to_owned(), e.event_type.as_str().to_owned()),
            ]),
            timestamp: SystemTime::now(),
        };
        let mut request = request;
        if let Some((k, v)) = extra {
            request.metadata.insert(k.to_owned(), v.to_owned());
        }
        let seq = state.seq;
        state
            .queue
            .insert((c.priority, std::cmp::Reverse(seq)), request);
        true
    }

    /// Takes the most urgent queued request whose collector has a free
    /// analysis slot, and tracks it until completed or timed out.
    pub fn next_trigger(&self) -> Option<TriggerRequest> {
        let mut state = self.state();
        let State {
            queue,
            running,
            capabilities,
            ..
        } = &mut *state;
        let key = queue
            .iter()
            .rev()
            .find(|(_, r)| {
                let max = capabilities
                    .get(&r.target_collector)
                    .map_or(0, |c| c.max_concurrent_analysis);
                running.get(&r.target_collector).copied().unwrap_or(0) < max
            })
            .map(|(k, _)| *k)?;
        let request = state.queue.remove(&key)?;
        *state
            .running
            .entry(request.target_collector.clone())
            .or_insert(0) += 1;
        state.in_flight.insert(
            request.trigger_id.clone(),
            InFlight {
                collector: request.target_collector.clone(),
                correlation_id: request.correlation_id.clone(),
                deadline: Instant::now() + self.config.trigger_timeout,
            },
        );
        self.counters.emitted.inc();
        Some(request)
    }

    /// Publishes every dispatchable queued request on the attached bus.
    /// Returns how many were published.
    ///
    /// # Errors
    /// [`TriggerError::NoBus`], [`TriggerError::Publish`] (the request stays
    /// in flight and times out).
    pub async fn dispatch_pending(&self) -> Result<usize, TriggerError> {
        let bus = read(&self.bus).clone().ok_or(TriggerError::NoBus)?;
        let mut n = 0;
        while let Some(request) = self.next_trigger() {
            let correlation = CorrelationMetadata::with_id(request.correlation_id.clone())
                .with_tag("trigger")
                .with_tag(request.target_collector.clone());
            let event = BusEvent::new(TRIGGER_SOURCE, CollectionEvent::TriggerRequest(request))
                .with_correlation(correlation);
            bus.publish(event).await.map_err(TriggerError::Publish)?;
            n += 1;
        }
        Ok(n)
    }

    /// Evaluates `event` and, with a bus attached, publishes what is
    /// dispatchable. Returns the number of requests queued by this event.
    ///
    /// # Errors
    /// As [`dispatch_pending`](Self::dispatch_pending), except `NoBus`.
    pub async fn process_event(&self, event: &ProcessEvent) -> Result<usize, TriggerError> {
        let queued = self.evaluate(event);
        match self.dispatch_pending().await {
            Ok(_) | Err(TriggerError::NoBus) => Ok(queued),
            Err(e) => Err(e),
        }
    }

    /// Marks an emitted trigger done (`success` false: the analysis failed).
    ///
    /// # Errors
    /// [`TriggerError::UnknownTrigger`] if it is not in flight (never
    /// emitted, already completed, or timed out).
    pub fn complete_trigger(&self, trigger_id: &str, success: bool) -> Result<(), TriggerError> {
        let mut state = self.state();
        let Some(done) = state.in_flight.remove(trigger_id) else {
            return Err(TriggerError::UnknownTrigger {
                trigger_id: trigger_id.to_owned(),
            });
        };
        release(&mut state, &done.collector);
        if success {
            self.counters.completed.inc();
        } else {
            self.counters.failed.inc();
        }
        Ok(())
    }

    /// Marks done the in-flight trigger whose request had `correlation_id`:
    /// what an analysis result on the bus carries as its parent correlation
    /// id. Returns the trigger's id.
    ///
    /// # Errors
    /// [`TriggerError::UnknownTrigger`] if no in-flight trigger has it.
    pub fn complete_by_correlation(
        &self,
        correlation_id: &str,
        success: bool,
    ) -> Result<String, TriggerError> {
        let id = self
            .state()
            .in_flight
            .iter()
            .find(|(_, f)| f.correlation_id == correlation_id)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| TriggerError::UnknownTrigger {
                trigger_id: correlation_id.to_owned(),
            })?;
        self.complete_trigger(&id, success)?;
        Ok(id)
    }

    /// Times out in-flight triggers past their deadline; returns their ids.
    pub fn check_timeouts(&self) -> Vec<String> {
        let now = Instant::now();
        let mut state = self.state();
        let expired: Vec<String> = state
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(f) = state.in_flight.remove(id) {
                release(&mut state, &f.collector);
                warn!(trigger_id = %id, collector = %f.collector, "trigger timed out");
            }
        }
        self.counters.timed_out.add_usize(expired.len());
        expired
    }

    /// Forgets deduplication entries older than the window and idle rate
    /// buckets, and times out overdue triggers.
    pub fn cleanup(&self) {
        self.check_timeouts();
        let now = Instant::now();
        let window = self.config.deduplication_window;
        let mut state = self.state();
        let before = state.dedup.len();
        state
            .dedup
            .retain(|_, seen| now.saturating_duration_since(*seen) < window);
        state
            .buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(60));
        debug!(
            dedup_forgotten = before - state.dedup.len(),
            "trigger cleanup"
        );
    }

    /// Evaluates every process event of `subscription` (typically
    /// `bus.subscribe(EventFilter::new().with_event_type(EventKind::Process))`)
    /// until `shutdown` or the end of the stream, emitting on the attached
    /// bus; completes triggers from analysis results (bus events tagged
    /// `analysis_result`, matched by parent correlation id) if the
    /// subscription lets them through; runs [`cleanup`](Self::cleanup)
    /// every `cleanup_every`.
    ///
    /// # Errors
    /// [`TriggerError::Publish`] when the bus refuses a request.
    pub async fn run(
        &self,
        mut subscription: crate::bus::BusSubscription,
        cleanup_every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), TriggerError> {
        let mut tick = tokio::time::interval(cleanup_every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    self.cleanup();
                    continue;
                }
                next = subscription.recv() => next,
            };
            let Some(event) = next else { return Ok(()) };
            match &event.event {
                CollectionEvent::Process(p) => {
                    self.process_event(p).await?;
                }
                _ if event.correlation.tags.contains(crate::chain::RESULT_TAG) => {
                    if let Some(parent) = &event.correlation.parent_correlation_id {
                        let ok = !event.correlation.tags.contains(crate::chain::FAILED_TAG);
                        // Results of requests not ours (a chain's) are ignored.
                        let _ = self.complete_by_correlation(parent, ok);
                        // A slot may have freed up for a queued request.
                        self.process_pending().await?;
                    }
                }
                _ => {}
            }
        }
    }

    async fn process_pending(&self) -> Result<(), TriggerError> {
        match self.dispatch_pending().await {
            Ok(_) | Err(TriggerError::NoBus) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deduplication entries held now (for tests and metrics).
    pub fn dedup_entries(&self) -> usize {
        self.state().dedup.len()
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> TriggerStatistics {
        let c = &self.counters;
        let state = self.state();
        TriggerStatistics {
            events_evaluated: c.evaluated.get(),
            conditions_matched: c.matched.get(),
            triggers_deduplicated: c.deduplicated.get(),
            triggers_rate_limited: c.rate_limited.get(),
            triggers_shed_low: c.shed_low.get(),
            triggers_shed_full: c.shed_full.get(),
            triggers_emitted: c.emitted.get(),
            triggers_queued: state.queue.len() as u64,
            triggers_in_flight: state.in_flight.len() as u64,
            triggers_completed: c.completed.get(),
            triggers_failed: c.failed.get(),
            triggers_timed_out: c.timed_out.get(),
            processes_evicted: c.evicted.get(),
        }
    }
}

fn parent_name<'a>(state: &'a State, e: &'a ProcessEvent) -> Option<&'a str> {
    e.ppid.and_then(|p| state.names.get(&p)).map(String::as_str)
}

fn release(state: &mut State, collector: &str) {
    if let Some(n) = state.running.get_mut(collector) {
        *n = n.saturating_sub(1);
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(256).collect()
}

#[cfg(test)]
mod tests;
