//! The event model: one [`CollectionEvent`] enum over every collection domain.
//!
//! Events are plain data (serde, `Clone`), validated by the runtime before they
//! are published: a source that emits an invalid event (for example a hash
//! without its algorithm) has that event counted and rejected, and the stream
//! goes on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

pub use daemoneye_lib::models::{BootId, EventId, ProcessKey};
use serde::{Deserialize, Serialize};

/// Upper bound on the number of entries in an event's metadata map.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Upper bound on the length of any metadata key or value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 4096;

/// An event from any collection domain.
///
/// Not boxed: nearly every event a host produces is a process event, so the
/// space the smaller variants leave unused costs little, while a box would
/// cost an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "domain", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CollectionEvent {
    /// A process was seen, started, changed or exited.
    Process(ProcessEvent),
    /// A network connection or socket changed state.
    Network(NetworkEvent),
    /// A file was operated on.
    Filesystem(FilesystemEvent),
    /// A performance metric was sampled.
    Performance(PerformanceEvent),
    /// A request for an analysis collector to look at something.
    TriggerRequest(TriggerRequest),
}

names! {
    /// The kind of a [`CollectionEvent`], without its data; its name is the
    /// one used in topics, logs and JSON.
    #[derive(PartialOrd, Ord)]
    EventKind {
        /// [`CollectionEvent::Process`].
        Process = "process",
        /// [`CollectionEvent::Network`].
        Network = "network",
        /// [`CollectionEvent::Filesystem`].
        Filesystem = "filesystem",
        /// [`CollectionEvent::Performance`].
        Performance = "performance",
        /// [`CollectionEvent::TriggerRequest`].
        TriggerRequest = "trigger_request",
    }
}

impl CollectionEvent {
    /// The kind of this event.
    pub const fn kind(&self) -> EventKind {
        match self {
            Self::Process(_) => EventKind::Process,
            Self::Network(_) => EventKind::Network,
            Self::Filesystem(_) => EventKind::Filesystem,
            Self::Performance(_) => EventKind::Performance,
            Self::TriggerRequest(_) => EventKind::TriggerRequest,
        }
    }

    /// When the event was observed.
    pub const fn timestamp(&self) -> SystemTime {
        match self {
            Self::Process(e) => e.timestamp,
            Self::Network(e) => e.timestamp,
            Self::Filesystem(e) => e.timestamp,
            Self::Performance(e) => e.timestamp,
            Self::TriggerRequest(e) => e.timestamp,
        }
    }

    /// The process the event is about, when there is one.
    pub const fn pid(&self) -> Option<u32> {
        match self {
            Self::Process(e) => Some(e.pid),
            Self::Network(e) => e.pid,
            Self::Filesystem(e) => e.pid,
            Self::Performance(e) => e.pid,
            Self::TriggerRequest(e) => e.target_pid,
        }
    }

    /// The stable key of the process the event is about, when known.
    pub const fn process_key(&self) -> Option<ProcessKey> {
        match self {
            Self::Process(e) => e.process_key,
            Self::Network(e) => e.process_key,
            Self::Filesystem(e) => e.process_key,
            Self::Performance(e) => e.process_key,
            Self::TriggerRequest(_) => None,
        }
    }

    /// The event's id, once a runtime accepted it (trigger requests have
    /// their own `trigger_id` and none).
    pub const fn id(&self) -> Option<EventId> {
        match self {
            Self::Process(e) => e.id,
            Self::Network(e) => e.id,
            Self::Filesystem(e) => e.id,
            Self::Performance(e) => e.id,
            Self::TriggerRequest(_) => None,
        }
    }

    /// Names the event, unless it already has an id (a trigger request has
    /// no place for one). Returns whether it took `id`.
    pub fn name_once(&mut self, id: EventId) -> bool {
        let slot = match self {
            Self::Process(e) => &mut e.id,
            Self::Network(e) => &mut e.id,
            Self::Filesystem(e) => &mut e.id,
            Self::Performance(e) => &mut e.id,
            Self::TriggerRequest(_) => return false,
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(id);
        true
    }

    /// What every event has, whatever its domain.
    pub const fn header(&self) -> EventHeader {
        EventHeader {
            id: self.id(),
            kind: self.kind(),
            time: self.timestamp(),
            pid: self.pid(),
            process_key: self.process_key(),
        }
    }

    /// Checks the event's internal consistency.
    ///
    /// The runtime calls this on every event a source emits; an event that
    /// fails is counted as rejected and not published.
    ///
    /// # Errors
    /// The first inconsistency found, naming the field.
    pub fn validate(&self) -> Result<(), EventValidationError> {
        match self {
            Self::Process(e) => e.validate(),
            Self::Network(e) => e.validate(),
            Self::Filesystem(e) => e.validate(),
            Self::Performance(e) => e.validate(),
            Self::TriggerRequest(e) => e.validate(),
        }
    }
}

/// The fields every event has, whatever its domain: its id, what it is, when
/// it was observed, and which process it is about (by pid and by its stable key,
/// which names one process even after its pid is reused).
///
/// The source that produced an event travels with its batch
/// ([`EventBatch::source`](crate::EventBatch::source), the IPC record's
/// `source_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    /// The event's id, once a runtime accepted it.
    pub id: Option<EventId>,
    /// The event's domain.
    pub kind: EventKind,
    /// When it was observed.
    pub time: SystemTime,
    /// The process it is about.
    pub pid: Option<u32>,
    /// That process's stable key, when known.
    pub process_key: Option<ProcessKey>,
}

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} event: field `{field}` {reason}")]
pub struct EventValidationError {
    /// The kind of the rejected event.
    pub kind: EventKind,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn invalid(kind: EventKind, field: &'static str, reason: &'static str) -> EventValidationError {
    EventValidationError {
        kind,
        field,
        reason,
    }
}

names! {
    /// A hash function used for executables and files.
    HashAlgorithm {
        /// SHA-256 (64 hex digits).
        Sha256 = "sha256",
        /// BLAKE3 with its default 32-byte output (64 hex digits).
        Blake3 = "blake3",
    }
}

impl HashAlgorithm {
    /// The number of lowercase hex digits a digest of this algorithm has.
    pub const fn hex_len(self) -> usize {
        match self {
            Self::Sha256 | Self::Blake3 => 64,
        }
    }
}

fn validate_hash(
    kind: EventKind,
    hash: Option<&str>,
    algorithm: Option<HashAlgorithm>,
) -> Result<(), EventValidationError> {
    match (hash, algorithm) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(invalid(
            kind,
            "hash_algorithm",
            "is missing while a hash is set",
        )),
        (None, Some(_)) => Err(invalid(kind, "hash_algorithm", "is set without a hash")),
        (Some(h), Some(alg)) => {
            if h.len() == alg.hex_len() && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                Ok(())
            } else {
                Err(invalid(
                    kind,
                    "hash",
                    "is not a lowercase hex digest of the stated algorithm",
                ))
            }
        }
    }
}

/// A process key must name the event's pid.
fn validate_key(
    kind: EventKind,
    pid: Option<u32>,
    key: Option<ProcessKey>,
) -> Result<(), EventValidationError> {
    match (key, pid) {
        (Some(key), Some(pid)) if key.pid != pid => {
            Err(invalid(kind, "process_key", "names another pid"))
        }
        (Some(_), None) => Err(invalid(kind, "process_key", "is set without a pid")),
        _ => Ok(()),
    }
}

fn validate_metadata(
    kind: EventKind,
    field: &'static str,
    map: &BTreeMap<String, String>,
) -> Result<(), EventValidationError> {
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(kind, field, "has too many entries"));
    }
    if map.iter().any(|(k, v)| {
        k.is_empty() || k.len() > MAX_METADATA_VALUE_LEN || v.len() > MAX_METADATA_VALUE_LEN
    }) {
        return Err(invalid(
            kind,
            field,
            "has an empty or oversized key or value",
        ));
    }
    Ok(())
}

names! {
    /// What a [`ProcessEvent`] reports.
    ProcessEventType {
        /// Seen in a full snapshot of the process table.
        Snapshot = "snapshot",
        /// First seen by reconciling snapshots (started between two of them).
        Start = "start",
        /// Forked (real-time).
        Fork = "fork",
        /// Executed a new program (real-time).
        Exec = "exec",
        /// Exited; `exit_code` says how when known.
        Exit = "exit",
        /// Its argv, executable, user or name changed.
        Modified = "modified",
        /// Suspicious: its pid now names another process (PID reuse).
        PidReused = "pid_reused",
        /// Suspicious: its executable was deleted while it runs.
        ExecutableDeleted = "executable_deleted",
        /// Suspicious: the file at its executable path is no longer the one it runs.
        ExecutableReplaced = "executable_replaced",
        /// Suspicious: its start time is impossible (in the future, or before its parent's).
        StartTimeAnomaly = "start_time_anomaly",
    }
}

#[allow(clippy::derivable_impls)] // the enum comes from `names!`
impl Default for ProcessEventType {
    fn default() -> Self {
        Self::Snapshot
    }
}

impl ProcessEventType {
    /// Whether this reports something suspicious rather than routine.
    pub const fn is_suspicious(self) -> bool {
        matches!(
            self,
            Self::PidReused
                | Self::ExecutableDeleted
                | Self::ExecutableReplaced
                | Self::StartTimeAnomaly
        )
    }
}

/// A process observation: from a snapshot, or a lifecycle event.
///
/// Fields the collector could not read are `None` (and `accessible` is false
/// when `/proc` refused us); they are never invented. A field missing from
/// serialized input takes its [`Default`] (older records lack the newer
/// fields); the runtime's validation still refuses what is invalid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessEvent {
    /// What this event reports (snapshot, exec, exit, ...).
    pub event_type: ProcessEventType,
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Short name (`comm`).
    pub name: String,
    /// Path of the executable, when readable.
    pub executable_path: Option<String>,
    /// Arguments, `argv[0]` first.
    pub command_line: Vec<String>,
    /// When the process started.
    #[serde(with = "opt_system_time")]
    pub start_time: Option<SystemTime>,
    /// CPU usage in percent of one core since the previous sample.
    pub cpu_usage: Option<f64>,
    /// Resident memory in bytes.
    pub memory_usage: Option<u64>,
    /// Lowercase hex digest of the executable.
    pub executable_hash: Option<String>,
    /// The algorithm of `executable_hash`; required when it is set.
    pub hash_algorithm: Option<HashAlgorithm>,
    /// Real user id.
    pub user_id: Option<u32>,
    /// Whether the collector could read the process's details.
    pub accessible: bool,
    /// Whether the executable still exists on disk (false once deleted).
    pub file_exists: bool,
    /// When the observation was made.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
    /// Platform-specific details (cgroup, namespaces, state, ...).
    pub platform_metadata: BTreeMap<String, String>,
    /// The stable identity of the process (boot id, pid, start time).
    pub process_key: Option<ProcessKey>,
    /// For `Exit`: the raw wait status the kernel reported (`code << 8`, or
    /// the terminating signal in the low 7 bits).
    pub exit_code: Option<i32>,
    /// Effective user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// Real group id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Scheduler state letter from the kernel (`R`, `S`, `D`, `Z`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<char>,
    /// Number of threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// User plus system CPU time so far, in clock ticks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ticks: Option<u64>,
    /// Whether the file now at `executable_path` is not the one the process
    /// runs (replaced on disk while it runs).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exe_replaced: bool,
    /// How much of the process could be read.
    #[serde(skip_serializing_if = "ReadDepth::is_full")]
    pub read: ReadDepth,
    /// Where the process runs: control group, container, namespaces
    /// (shared: it rarely changes while a process lives; `None` when not
    /// read). Read it with [`context`](Self::context).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Arc<ProcessContext>>,
    /// What a lifecycle event says beyond its type (`None` for none). Read
    /// it with [`lifecycle`](Self::lifecycle), set it with
    /// [`lifecycle_mut`](Self::lifecycle_mut).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Box<LifecycleDetail>>,
    /// The event's id, given by the runtime that accepted it (`None` until
    /// then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

names! {
    /// How much of a process a collector read for an event.
    ReadDepth {
        /// Everything the collector reads (some parts may still have been
        /// refused: see `accessible`).
        Full = "full",
        /// Only the kernel's status line (name, parent, start, memory): a
        /// fork, whose child usually executes at once and is read in full then.
        StatOnly = "stat_only",
        /// Nothing: the process was gone before it could be read.
        Vanished = "vanished",
        /// Nothing: reading it was refused.
        PermissionDenied = "permission_denied",
        /// Nothing: reading it failed otherwise.
        Failed = "failed",
    }
}

impl ReadDepth {
    /// Whether everything was read (the default, left out of JSON).
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if hands a reference
    pub fn is_full(&self) -> bool {
        *self == Self::Full
    }
}

#[allow(clippy::derivable_impls)] // the enum comes from `names!`
impl Default for ReadDepth {
    fn default() -> Self {
        Self::Full
    }
}

/// Where a process runs: its control group, container and namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessContext {
    /// The cgroup v2 path (`/system.slice/sshd.service`).
    pub cgroup: Option<String>,
    /// The container id the cgroup path names (docker, containerd, podman, ...).
    pub container_id: Option<String>,
    /// Inode of the PID namespace.
    pub pid_ns: Option<u64>,
    /// Inode of the mount namespace.
    pub mnt_ns: Option<u64>,
    /// Inode of the network namespace.
    pub net_ns: Option<u64>,
    /// Inode of the user namespace.
    pub user_ns: Option<u64>,
}

impl ProcessContext {
    /// This context, shared, as a [`ProcessEvent`] holds it: `None` when it
    /// is empty (an empty context is no context, on the wire and in the
    /// store alike).
    pub fn shared(self) -> Option<Arc<Self>> {
        (self != NO_CONTEXT).then(|| Arc::new(self))
    }
}

impl LifecycleDetail {
    /// This detail, boxed, as a [`ProcessEvent`] holds it: `None` when it
    /// says nothing.
    pub fn boxed(self) -> Option<Box<Self>> {
        (self != NO_LIFECYCLE).then(|| Box::new(self))
    }
}

static NO_CONTEXT: ProcessContext = ProcessContext {
    cgroup: None,
    container_id: None,
    pid_ns: None,
    mnt_ns: None,
    net_ns: None,
    user_ns: None,
};

static NO_LIFECYCLE: LifecycleDetail = LifecycleDetail {
    observed_by: None,
    previous_key: None,
    changed: Vec::new(),
    anomaly: None,
    run_time_ms: None,
    tier: None,
    argv_truncated: false,
    setuid: false,
    setgid: false,
};

/// What a lifecycle event says beyond its [`ProcessEventType`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleDetail {
    /// What revealed the event (for an exit: the kernel, or a later snapshot,
    /// exec or fork that found the pid gone or reused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_by: Option<ObservedBy>,
    /// For `PidReused`: the key of the process that had the pid before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<ProcessKey>,
    /// For `Modified`: what changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ProcessField>,
    /// For `StartTimeAnomaly`: what is impossible about the start time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<StartTimeAnomaly>,
    /// For `Exit`: how long the process ran, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_time_ms: Option<u64>,
    /// Which of the collector's capture tiers saw the event (`None` when
    /// the collector does not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<CaptureTier>,
    /// For `Exec`: the kernel's argv was longer than the collector's bound,
    /// so `command_line` holds only its first part (never a silently short
    /// one).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// For `Exec`: the program runs with another effective user id than
    /// its caller's (a set-user-id executable, or file capabilities).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub setuid: bool,
    /// For `Exec`: the program runs with another effective group id than
    /// its caller's (a set-group-id executable).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub setgid: bool,
}

names! {
    /// How a process collector sees the kernel's process events, best
    /// first. It falls back to the next tier when one cannot run.
    CaptureTier {
        /// eBPF programs on the scheduler's tracepoints: every fork, exec and
        /// exit with its argv and executable, read in the kernel; losses are
        /// counted exactly.
        Ebpf = "ebpf",
        /// The netlink process connector: every fork, exec and exit by pid;
        /// the details are read from `/proc` afterwards, so a process that
        /// exits at once may lose them; losses are known but not counted.
        Connector = "connector",
        /// Snapshots of `/proc` at an interval: processes that live shorter
        /// than the interval are missed.
        Polling = "polling",
    }
}

names! {
    /// What revealed a lifecycle event.
    ObservedBy {
        /// The kernel reported it as it happened.
        Kernel = "kernel",
        /// A snapshot found the process gone (or its pid reused).
        Snapshot = "snapshot",
        /// An exec under the same pid showed the process was gone.
        Exec = "exec",
        /// A fork reusing the pid showed the process was gone.
        Fork = "fork",
    }
}

names! {
    /// A field of a process whose change a `Modified` event reports.
    ProcessField {
        /// The command line.
        Argv = "argv",
        /// The executable.
        Exe = "exe",
        /// The real user id.
        Uid = "uid",
        /// The short name.
        Name = "name",
    }
}

names! {
    /// What is impossible about a process's start time.
    StartTimeAnomaly {
        /// It started before its parent did.
        StartedBeforeParent = "started_before_parent",
        /// It starts in the future.
        StartTimeInFuture = "start_time_in_future",
    }
}

impl Default for ProcessEvent {
    fn default() -> Self {
        Self {
            event_type: ProcessEventType::Snapshot,
            pid: 0,
            ppid: None,
            name: String::new(),
            executable_path: None,
            command_line: Vec::new(),
            start_time: None,
            cpu_usage: None,
            memory_usage: None,
            executable_hash: None,
            hash_algorithm: None,
            user_id: None,
            accessible: true,
            file_exists: true,
            timestamp: SystemTime::UNIX_EPOCH,
            platform_metadata: BTreeMap::new(),
            process_key: None,
            exit_code: None,
            euid: None,
            gid: None,
            state: None,
            threads: None,
            cpu_ticks: None,
            exe_replaced: false,
            read: ReadDepth::Full,
            context: None,
            lifecycle: None,
            id: None,
        }
    }
}

impl ProcessEvent {
    /// An event for `pid` named `name`, observed now; every other field empty.
    pub fn new(pid: u32, name: impl Into<String>) -> Self {
        Self {
            pid,
            name: name.into(),
            timestamp: SystemTime::now(),
            ..Self::default()
        }
    }

    /// Where the process runs (empty when not read).
    pub fn context(&self) -> &ProcessContext {
        self.context.as_deref().unwrap_or(&NO_CONTEXT)
    }

    /// What this lifecycle event says beyond its type (empty for none).
    pub fn lifecycle(&self) -> &LifecycleDetail {
        self.lifecycle.as_deref().unwrap_or(&NO_LIFECYCLE)
    }

    /// The lifecycle detail, to fill in (created empty when there was none).
    pub fn lifecycle_mut(&mut self) -> &mut LifecycleDetail {
        self.lifecycle.get_or_insert_with(Box::default)
    }

    pub(crate) fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Process;
        if self.pid == 0 {
            return Err(invalid(K, "pid", "is zero"));
        }
        if let Some(cpu) = self.cpu_usage {
            if !cpu.is_finite() || cpu < 0.0 {
                return Err(invalid(K, "cpu_usage", "is negative or not finite"));
            }
        }
        if self.exit_code.is_some() && self.event_type != ProcessEventType::Exit {
            return Err(invalid(K, "exit_code", "is set on a non-exit event"));
        }
        validate_key(K, Some(self.pid), self.process_key)?;
        validate_hash(K, self.executable_hash.as_deref(), self.hash_algorithm)?;
        validate_metadata(K, "platform_metadata", &self.platform_metadata)
    }
}

/// A network connection or listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkEvent {
    /// A stable id for the connection (for example the socket inode).
    pub connection_id: String,
    /// Local address.
    pub source_addr: Option<IpAddr>,
    /// Local port.
    pub source_port: Option<u16>,
    /// Remote address.
    pub dest_addr: Option<IpAddr>,
    /// Remote port.
    pub dest_port: Option<u16>,
    /// `TCP`, `UDP`, `RAW`, ...
    pub protocol: String,
    /// Connection state (`ESTABLISHED`, `LISTEN`, ...).
    pub state: Option<String>,
    /// Owning process, when known.
    pub pid: Option<u32>,
    /// The stable key of that process, when known; its pid is `pid`.
    #[serde(default)]
    pub process_key: Option<ProcessKey>,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Bytes received so far.
    pub bytes_received: u64,
    /// When the observation was made.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
    /// The event's id, given by the runtime that accepted it (`None` until
    /// then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl Default for NetworkEvent {
    fn default() -> Self {
        Self {
            connection_id: String::new(),
            source_addr: None,
            source_port: None,
            dest_addr: None,
            dest_port: None,
            protocol: String::new(),
            state: None,
            pid: None,
            process_key: None,
            bytes_sent: 0,
            bytes_received: 0,
            timestamp: SystemTime::UNIX_EPOCH,
            id: None,
        }
    }
}

impl NetworkEvent {
    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Network;
        validate_key(K, self.pid, self.process_key)?;
        if self.connection_id.is_empty() {
            return Err(invalid(K, "connection_id", "is empty"));
        }
        if self.protocol.is_empty() {
            return Err(invalid(K, "protocol", "is empty"));
        }
        Ok(())
    }
}

/// What was done to a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FileOperation {
    /// Created.
    Create,
    /// Opened.
    Open,
    /// Read or executed.
    Access,
    /// Written.
    Modify,
    /// Closed after a write.
    CloseWrite,
    /// Deleted.
    Delete,
    /// Renamed or moved.
    Rename,
    /// Mode, owner or attributes changed.
    Attrib,
}

/// An operation on a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    /// The file's path.
    pub path: String,
    /// What was done.
    pub operation: FileOperation,
    /// The acting process, when known.
    pub pid: Option<u32>,
    /// The stable key of that process, when known; its pid is `pid`.
    #[serde(default)]
    pub process_key: Option<ProcessKey>,
    /// File size in bytes, when known.
    pub size: Option<u64>,
    /// Mode bits (`st_mode & 0o7777`), when known.
    pub permissions: Option<u32>,
    /// Lowercase hex digest of the content.
    pub file_hash: Option<String>,
    /// The algorithm of `file_hash`; required when it is set.
    pub hash_algorithm: Option<HashAlgorithm>,
    /// When the operation was observed.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
    /// The event's id, given by the runtime that accepted it (`None` until
    /// then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl FilesystemEvent {
    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Filesystem;
        validate_key(K, self.pid, self.process_key)?;
        if self.path.is_empty() {
            return Err(invalid(K, "path", "is empty"));
        }
        if self.permissions.is_some_and(|p| p > 0o7777) {
            return Err(invalid(K, "permissions", "has bits beyond 0o7777"));
        }
        validate_hash(K, self.file_hash.as_deref(), self.hash_algorithm)
    }
}

/// One sample of a performance metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceEvent {
    /// Metric name, dotted (`load.avg1`, `memory.available`).
    pub metric_name: String,
    /// The sampled value.
    pub value: f64,
    /// Unit (`bytes`, `percent`, `count`, ...).
    pub unit: String,
    /// The process measured, for per-process metrics.
    pub pid: Option<u32>,
    /// The stable key of that process, when known; its pid is `pid`.
    #[serde(default)]
    pub process_key: Option<ProcessKey>,
    /// The component measured (`system`, `cpu0`, `collector`, ...).
    pub component: String,
    /// When the sample was taken.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
    /// The event's id, given by the runtime that accepted it (`None` until
    /// then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl PerformanceEvent {
    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Performance;
        validate_key(K, self.pid, self.process_key)?;
        if self.metric_name.is_empty() {
            return Err(invalid(K, "metric_name", "is empty"));
        }
        if !self.value.is_finite() {
            return Err(invalid(K, "value", "is not finite"));
        }
        Ok(())
    }
}

/// The kind of analysis an analysis collector performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AnalysisType {
    /// Hash an executable or file.
    BinaryHash,
    /// Inspect a process's memory maps.
    MemoryAnalysis,
    /// Look at a process's network activity.
    NetworkAnalysis,
    /// Look at a process's file activity.
    FilesystemAnalysis,
    /// Walk and judge a process tree.
    BehavioralAnalysis,
}

/// The urgency of a trigger; higher sorts later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerPriority {
    /// Shed first under load.
    Low,
    /// The default.
    Normal,
    /// Suspicious.
    High,
    /// Act now.
    Critical,
}

/// A request for an analysis collector to examine a process or file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// Unique id of this request.
    pub trigger_id: String,
    /// The collector that should answer.
    pub target_collector: String,
    /// What to do.
    pub analysis_type: AnalysisType,
    /// How urgent.
    pub priority: TriggerPriority,
    /// The process concerned.
    pub target_pid: Option<u32>,
    /// The file concerned (usually the executable).
    pub target_path: Option<String>,
    /// Ties the request to the events and analyses it belongs with.
    pub correlation_id: String,
    /// Free-form context (bounded).
    pub metadata: BTreeMap<String, String>,
    /// When the request was made.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
}

impl TriggerRequest {
    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::TriggerRequest;
        if self.trigger_id.is_empty() {
            return Err(invalid(K, "trigger_id", "is empty"));
        }
        if self.target_collector.is_empty() {
            return Err(invalid(K, "target_collector", "is empty"));
        }
        if self.target_pid.is_none() && self.target_path.is_none() {
            return Err(invalid(K, "target_pid", "and target_path are both missing"));
        }
        validate_metadata(K, "metadata", &self.metadata)
    }
}

/// `SystemTime` as integer nanoseconds since the Unix epoch (JSON friendly).
mod system_time {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn to_nanos(t: SystemTime) -> i128 {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
            Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
        }
    }

    pub(super) fn from_nanos(n: i128) -> Option<SystemTime> {
        let abs = Duration::from_nanos(u64::try_from(n.unsigned_abs()).ok()?);
        if n >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(abs)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(abs)
        }
    }

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // i64 nanoseconds covers 1678..2262, plenty for observations.
        let n = i64::try_from(to_nanos(*t)).map_err(serde::ser::Error::custom)?;
        s.serialize_i64(n)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let n = i64::deserialize(d)?;
        from_nanos(i128::from(n)).ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
    }
}

mod opt_system_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::system_time::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<i64>::deserialize(d)?
            .map(|n| {
                super::system_time::from_nanos(i128::from(n))
                    .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn process(pid: u32) -> ProcessEvent {
        ProcessEvent::new(pid, "sshd")
    }

    #[test]
    fn hash_without_algorithm_is_rejected_and_names_the_field() {
        let mut e = process(10);
        e.executable_hash = Some("ab".repeat(32));
        let err = CollectionEvent::Process(e.clone()).validate().unwrap_err();
        assert_eq!(err.field, "hash_algorithm");
        e.hash_algorithm = Some(HashAlgorithm::Sha256);
        CollectionEvent::Process(e.clone()).validate().unwrap();
        e.executable_hash = Some("AB".repeat(32));
        assert_eq!(
            CollectionEvent::Process(e).validate().unwrap_err().field,
            "hash"
        );
    }

    #[test]
    fn other_invalid_events_are_rejected() {
        assert!(CollectionEvent::Process(process(0)).validate().is_err());
        let mut p = process(5);
        p.exit_code = Some(0);
        assert_eq!(
            CollectionEvent::Process(p.clone())
                .validate()
                .unwrap_err()
                .field,
            "exit_code"
        );
        p.event_type = ProcessEventType::Exit;
        CollectionEvent::Process(p).validate().unwrap();
        let mut p = process(5);
        p.cpu_usage = Some(f64::NAN);
        assert!(CollectionEvent::Process(p).validate().is_err());
        let mut p = process(5);
        p.process_key = Some(ProcessKey::new(BootId::from_bytes([1; 16]), 6, 1));
        assert!(CollectionEvent::Process(p).validate().is_err());
        let perf = PerformanceEvent {
            id: None,
            metric_name: "load".into(),
            value: f64::INFINITY,
            unit: "count".into(),
            pid: None,
            process_key: None,
            component: "system".into(),
            timestamp: SystemTime::now(),
        };
        assert!(CollectionEvent::Performance(perf).validate().is_err());
        let net = NetworkEvent {
            connection_id: "1".into(),
            ..NetworkEvent::default()
        };
        assert_eq!(
            CollectionEvent::Network(net).validate().unwrap_err().field,
            "protocol"
        );
        let mut p = process(5);
        for i in 0..=MAX_METADATA_ENTRIES {
            p.platform_metadata.insert(i.to_string(), String::new());
        }
        assert_eq!(
            CollectionEvent::Process(p).validate().unwrap_err().field,
            "platform_metadata"
        );
    }

    #[test]
    fn helpers_report_kind_pid_and_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        let mut p = process(42);
        p.timestamp = t;
        let e = CollectionEvent::Process(p);
        assert_eq!(e.kind(), EventKind::Process);
        assert_eq!(e.pid(), Some(42));
        assert_eq!(e.timestamp(), t);
        let f = CollectionEvent::Filesystem(FilesystemEvent {
            id: None,
            path: "/etc/passwd".into(),
            operation: FileOperation::Modify,
            pid: None,
            process_key: None,
            size: None,
            permissions: Some(0o644),
            file_hash: None,
            hash_algorithm: None,
            timestamp: t,
        });
        assert_eq!(f.kind(), EventKind::Filesystem);
        assert_eq!(f.pid(), None);
    }

    fn arb_process() -> impl Strategy<Value = ProcessEvent> {
        (
            1u32..,
            proptest::option::of(any::<u32>()),
            "\\PC{0,16}",
            proptest::collection::vec("\\PC{0,12}", 0..4),
            proptest::option::of(0i64..4_000_000_000_000_000_000),
            proptest::option::of(0.0f64..1e6),
            any::<bool>(),
            -1_000_000_000_000i64..4_000_000_000_000_000_000,
        )
            .prop_map(
                |(pid, ppid, name, argv, start, cpu, accessible, ts)| ProcessEvent {
                    pid,
                    ppid,
                    name,
                    command_line: argv,
                    start_time: start.and_then(|n| system_time::from_nanos(i128::from(n))),
                    cpu_usage: cpu,
                    accessible,
                    timestamp: system_time::from_nanos(i128::from(ts)).unwrap(),
                    process_key: Some(ProcessKey::new(BootId::from_bytes([3; 16]), pid, 99)),
                    ..ProcessEvent::default()
                },
            )
    }

    proptest! {
        #[test]
        fn events_round_trip_through_json(p in arb_process()) {
            let e = CollectionEvent::Process(p);
            let json = serde_json::to_string(&e).unwrap();
            let back: CollectionEvent = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, e);
        }
    }
}
