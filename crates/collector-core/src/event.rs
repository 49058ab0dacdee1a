//! The event model: one [`CollectionEvent`] enum over every collection domain.
//!
//! Events are plain data (serde, `Clone`), validated by the runtime before they
//! are published: a source that emits an invalid event (for example a hash
//! without its algorithm) has that event counted and rejected, and the stream
//! goes on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
            Self::Performance(e) => e.pid(),
            Self::TriggerRequest(e) => e.target_pid,
        }
    }

    /// The stable key of the process the event is about, when known.
    pub const fn process_key(&self) -> Option<ProcessKey> {
        match self {
            Self::Process(e) => e.process_key,
            Self::Network(e) => e.process_key,
            Self::Filesystem(e) => e.process_key,
            Self::Performance(e) => e.process_key(),
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
        /// Only the kernel's status line (name, parent, start, memory), or
        /// the eBPF tier's record of the fork (name, parent, start, ids): a
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
    /// For `Modified`: which of the watched fields (argv, executable, uid,
    /// name) changed; the event carries their new values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ProcessField>,
    /// For `StartTimeAnomaly`: what is impossible about the start time
    /// (before its parent's, or in the future).
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
    /// How a collector sees the kernel's events, best first. It falls back
    /// to the next tier when one cannot run.
    CaptureTier {
        /// eBPF programs on the kernel's tracepoints: for procmond every
        /// fork, exec and exit with its argv and executable, for netmond
        /// every TCP state change with the process that made it, read in
        /// the kernel; losses are counted exactly.
        Ebpf = "ebpf",
        /// The netlink process connector: every fork, exec and exit by pid;
        /// the details are read from `/proc` afterwards, so a process that
        /// exits at once may lose them; losses are known but not counted.
        Connector = "connector",
        /// Snapshots at an interval (`/proc`, `sock_diag`): processes and
        /// sockets that live shorter than the interval are missed.
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

names! {
    /// The transport protocol of a socket.
    NetworkProtocol {
        /// TCP.
        Tcp = "tcp",
        /// UDP.
        Udp = "udp",
    }
}

names! {
    /// The address family of a socket.
    AddressFamily {
        /// IPv4.
        Ipv4 = "ipv4",
        /// IPv6 (an IPv4 peer of a dual-stack socket is still reported by
        /// its IPv4 address).
        Ipv6 = "ipv6",
    }
}

names! {
    /// A socket's state, as the kernel names TCP's (`include/net/tcp_states.h`);
    /// a UDP socket is `established` when connected and `close` otherwise.
    ConnectionState {
        /// Open, carrying data.
        Established = "established",
        /// Connecting: SYN sent.
        SynSent = "syn_sent",
        /// Being accepted: SYN received.
        SynRecv = "syn_recv",
        /// Closing from this end.
        FinWait1 = "fin_wait1",
        /// Closing from this end, acknowledged.
        FinWait2 = "fin_wait2",
        /// Closed, waiting out stray packets.
        TimeWait = "time_wait",
        /// Closed (for UDP: bound, not connected).
        Close = "close",
        /// Closed by the peer, not yet here.
        CloseWait = "close_wait",
        /// Closing, last acknowledgement awaited.
        LastAck = "last_ack",
        /// Listening.
        Listen = "listen",
        /// Both ends closing at once.
        Closing = "closing",
    }
}

names! {
    /// Which way a connection goes, as seen from this host.
    ConnectionDirection {
        /// A listener (TCP `listen`, or UDP bound to no peer).
        Listen = "listen",
        /// Accepted here.
        Inbound = "inbound",
        /// Made from here.
        Outbound = "outbound",
    }
}

names! {
    /// What a [`NetworkEvent`] reports of its socket.
    ConnectionChange {
        /// Seen present (a snapshot).
        Present = "present",
        /// Opened since the last look (connected, accepted or listening).
        Opened = "opened",
        /// Gone since the last look.
        Closed = "closed",
    }
}

/// A network connection or listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkEvent {
    /// The connection's id: the kernel's socket cookie, unique per socket
    /// for the life of the boot.
    pub connection_id: u64,
    /// Local address.
    pub source_addr: Option<IpAddr>,
    /// Local port.
    pub source_port: Option<u16>,
    /// Remote address.
    pub dest_addr: Option<IpAddr>,
    /// Remote port.
    pub dest_port: Option<u16>,
    /// TCP or UDP.
    pub protocol: NetworkProtocol,
    /// IPv4 or IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<AddressFamily>,
    /// The socket's state.
    pub state: Option<ConnectionState>,
    /// Listen, inbound or outbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<ConnectionDirection>,
    /// Seen, opened or closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ConnectionChange>,
    /// Owning process, when known.
    pub pid: Option<u32>,
    /// The stable key of that process, when known; its pid is `pid`.
    #[serde(default)]
    pub process_key: Option<ProcessKey>,
    /// The descriptor the owning process holds the socket by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
    /// How many processes hold the socket (after a fork, several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<u32>,
    /// The uid that created the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The socket's inode (what `/proc/<pid>/fd/N` names `socket:[inode]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// The network namespace (the inode of `/proc/<pid>/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// Bytes sent so far, where the kernel reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    /// Bytes received so far, where the kernel reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// How the collector saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<CaptureTier>,
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
            connection_id: 0,
            source_addr: None,
            source_port: None,
            dest_addr: None,
            dest_port: None,
            protocol: NetworkProtocol::Tcp,
            family: None,
            state: None,
            direction: None,
            change: None,
            pid: None,
            process_key: None,
            fd: None,
            holders: None,
            uid: None,
            inode: None,
            netns: None,
            bytes_sent: None,
            bytes_received: None,
            tier: None,
            timestamp: SystemTime::UNIX_EPOCH,
            id: None,
        }
    }
}

impl NetworkEvent {
    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Network;
        validate_key(K, self.pid, self.process_key)?;
        if self.fd.is_some() && self.pid.is_none() {
            return Err(invalid(K, "fd", "is set without a pid"));
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

impl FileOperation {
    /// The lowercase name, as in JSON, in topics and in the store's
    /// `operation` column.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Open => "open",
            Self::Access => "access",
            Self::Modify => "modify",
            Self::CloseWrite => "close_write",
            Self::Delete => "delete",
            Self::Rename => "rename",
            Self::Attrib => "attrib",
        }
    }
}

names! {
    /// What kind of file a [`FilesystemEvent`] is about (`st_mode & S_IFMT`).
    FileType {
        /// A regular file.
        Regular = "regular",
        /// A directory.
        Directory = "directory",
        /// A symbolic link.
        Symlink = "symlink",
        /// A named pipe.
        Fifo = "fifo",
        /// A Unix socket.
        Socket = "socket",
        /// A character device.
        CharDevice = "char_device",
        /// A block device.
        BlockDevice = "block_device",
    }
}

/// An operation on a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    /// The file's path (after a [`Rename`](FileOperation::Rename), the new
    /// one), as the system it belongs to sees it: under [`root`](Self::root)
    /// when that is set.
    pub path: String,
    /// Where on this host the root directory of the system `path` belongs
    /// to is, when that is not the host's own `/` (a container's root
    /// filesystem, a chroot, a test's root): `path` and `old_path` are then
    /// under it. `None`: the host's `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// The path it had before a [`Rename`](FileOperation::Rename), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// What was done.
    pub operation: FileOperation,
    /// What kind of file it is, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<FileType>,
    /// The acting process, when known.
    pub pid: Option<u32>,
    /// The stable key of that process, when known; its pid is `pid`.
    #[serde(default)]
    pub process_key: Option<ProcessKey>,
    /// File size in bytes, when known.
    pub size: Option<u64>,
    /// Mode bits (`st_mode & 0o7777`), when known.
    pub permissions: Option<u32>,
    /// The mode bits before the operation (from the collector's baseline),
    /// when known: a mode change says what it changed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_permissions: Option<u32>,
    /// The owning user id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The owning group id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Lowercase hex digest of the content.
    pub file_hash: Option<String>,
    /// Lowercase hex digest of the content before the operation (from the
    /// collector's baseline), in the same algorithm as `file_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    /// The algorithm of `file_hash` and `previous_hash`; required when
    /// either is set.
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
    /// `operation` on `path` at `timestamp`, every other fact unknown.
    pub fn new(path: impl Into<String>, operation: FileOperation, timestamp: SystemTime) -> Self {
        Self {
            path: path.into(),
            root: None,
            old_path: None,
            operation,
            file_type: None,
            pid: None,
            process_key: None,
            size: None,
            permissions: None,
            previous_permissions: None,
            uid: None,
            gid: None,
            file_hash: None,
            previous_hash: None,
            hash_algorithm: None,
            timestamp,
            id: None,
        }
    }

    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Filesystem;
        validate_key(K, self.pid, self.process_key)?;
        if self.path.is_empty() {
            return Err(invalid(K, "path", "is empty"));
        }
        if self.permissions.is_some_and(|p| p > 0o7777) {
            return Err(invalid(K, "permissions", "has bits beyond 0o7777"));
        }
        if self.previous_permissions.is_some_and(|p| p > 0o7777) {
            return Err(invalid(K, "previous_permissions", "has bits beyond 0o7777"));
        }
        if self
            .root
            .as_deref()
            .is_some_and(|r| !r.starts_with('/') || r == "/")
        {
            return Err(invalid(K, "root", "is not an absolute path other than /"));
        }
        if self.old_path.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(K, "old_path", "is empty"));
        }
        if self.previous_hash.is_some() {
            validate_hash(K, self.previous_hash.as_deref(), self.hash_algorithm)?;
        }
        if self.file_hash.is_some() || self.previous_hash.is_none() {
            validate_hash(K, self.file_hash.as_deref(), self.hash_algorithm)?;
        }
        Ok(())
    }
}

names! {
    /// What a [`PerformanceEvent`] measures: the one list of performance
    /// metrics, each with its [`unit`](Self::unit) and the
    /// [kind of subject](Self::subject_kind) it is measured on. The name is
    /// the one on the wire, in the store's `metric` column and in rules.
    PerformanceMetric {
        /// Busy share of all CPUs (percent, 0-100).
        CpuTotal = "cpu.total",
        /// User-mode share of all CPUs (percent).
        CpuUser = "cpu.user",
        /// Kernel-mode share of all CPUs (percent).
        CpuSystem = "cpu.system",
        /// Share of all CPUs idle waiting for I/O (percent).
        CpuIowait = "cpu.iowait",
        /// Share stolen by the hypervisor (percent).
        CpuSteal = "cpu.steal",
        /// Busy share of one CPU (percent; the subject is the core).
        CpuCore = "cpu.core",
        /// Forks per second (from `/proc/stat` `processes`).
        ForkRate = "processes.forks_per_second",
        /// Runnable tasks.
        ProcsRunning = "processes.running",
        /// Tasks blocked on I/O.
        ProcsBlocked = "processes.blocked",
        /// Context switches per second.
        ContextSwitchRate = "processes.context_switches_per_second",
        /// `MemTotal`.
        MemoryTotal = "memory.total",
        /// `MemAvailable`.
        MemoryAvailable = "memory.available",
        /// `MemFree`.
        MemoryFree = "memory.free",
        /// Swap in use.
        SwapUsed = "memory.swap_used",
        /// Load average over 1 minute.
        LoadAvg1 = "load.avg1",
        /// Load average over 5 minutes.
        LoadAvg5 = "load.avg5",
        /// Load average over 15 minutes.
        LoadAvg15 = "load.avg15",
        /// PSI: some tasks stalled on CPU, last 10 s (percent).
        PsiCpuSomeAvg10 = "psi.cpu.some_avg10",
        /// PSI: some tasks stalled on CPU, last 60 s.
        PsiCpuSomeAvg60 = "psi.cpu.some_avg60",
        /// PSI: some tasks stalled on CPU, last 300 s.
        PsiCpuSomeAvg300 = "psi.cpu.some_avg300",
        /// PSI: some tasks stalled on CPU since boot (microseconds).
        PsiCpuSomeTotal = "psi.cpu.some_total",
        /// PSI: all tasks stalled on CPU, last 10 s.
        PsiCpuFullAvg10 = "psi.cpu.full_avg10",
        /// PSI: all tasks stalled on CPU, last 60 s.
        PsiCpuFullAvg60 = "psi.cpu.full_avg60",
        /// PSI: all tasks stalled on CPU, last 300 s.
        PsiCpuFullAvg300 = "psi.cpu.full_avg300",
        /// PSI: all tasks stalled on CPU since boot (microseconds).
        PsiCpuFullTotal = "psi.cpu.full_total",
        /// PSI: some tasks stalled on memory, last 10 s.
        PsiMemorySomeAvg10 = "psi.memory.some_avg10",
        /// PSI: some tasks stalled on memory, last 60 s.
        PsiMemorySomeAvg60 = "psi.memory.some_avg60",
        /// PSI: some tasks stalled on memory, last 300 s.
        PsiMemorySomeAvg300 = "psi.memory.some_avg300",
        /// PSI: some tasks stalled on memory since boot (microseconds).
        PsiMemorySomeTotal = "psi.memory.some_total",
        /// PSI: all tasks stalled on memory, last 10 s.
        PsiMemoryFullAvg10 = "psi.memory.full_avg10",
        /// PSI: all tasks stalled on memory, last 60 s.
        PsiMemoryFullAvg60 = "psi.memory.full_avg60",
        /// PSI: all tasks stalled on memory, last 300 s.
        PsiMemoryFullAvg300 = "psi.memory.full_avg300",
        /// PSI: all tasks stalled on memory since boot (microseconds).
        PsiMemoryFullTotal = "psi.memory.full_total",
        /// PSI: some tasks stalled on I/O, last 10 s.
        PsiIoSomeAvg10 = "psi.io.some_avg10",
        /// PSI: some tasks stalled on I/O, last 60 s.
        PsiIoSomeAvg60 = "psi.io.some_avg60",
        /// PSI: some tasks stalled on I/O, last 300 s.
        PsiIoSomeAvg300 = "psi.io.some_avg300",
        /// PSI: some tasks stalled on I/O since boot (microseconds).
        PsiIoSomeTotal = "psi.io.some_total",
        /// PSI: all tasks stalled on I/O, last 10 s.
        PsiIoFullAvg10 = "psi.io.full_avg10",
        /// PSI: all tasks stalled on I/O, last 60 s.
        PsiIoFullAvg60 = "psi.io.full_avg60",
        /// PSI: all tasks stalled on I/O, last 300 s.
        PsiIoFullAvg300 = "psi.io.full_avg300",
        /// PSI: all tasks stalled on I/O since boot (microseconds).
        PsiIoFullTotal = "psi.io.full_total",
        /// Bytes read per second (the subject is the disk).
        DiskReadRate = "disk.read_bytes_per_second",
        /// Bytes written per second.
        DiskWriteRate = "disk.write_bytes_per_second",
        /// Reads completed per second.
        DiskReadOps = "disk.reads_per_second",
        /// Writes completed per second.
        DiskWriteOps = "disk.writes_per_second",
        /// Share of time the device had I/O in flight (percent).
        DiskBusy = "disk.busy_percent",
        /// Bytes received per second (the subject is the interface).
        NetRxRate = "net.rx_bytes_per_second",
        /// Bytes sent per second.
        NetTxRate = "net.tx_bytes_per_second",
        /// Packets received per second.
        NetRxPackets = "net.rx_packets_per_second",
        /// Packets sent per second.
        NetTxPackets = "net.tx_packets_per_second",
        /// Receive and send errors per second.
        NetErrors = "net.errors_per_second",
        /// Packets dropped per second.
        NetDrops = "net.drops_per_second",
        /// CPU of a cgroup's tasks (percent of one core).
        CgroupCpu = "cgroup.cpu_percent",
        /// Time a cgroup was throttled, per second of wall time (percent).
        CgroupThrottled = "cgroup.throttled_percent",
        /// A cgroup's `memory.current` (bytes).
        CgroupMemory = "cgroup.memory_current",
        /// A process's CPU share between two samples (percent of one core).
        ProcessCpu = "process.cpu_percent",
        /// A process's resident set size (bytes).
        ProcessRss = "process.rss",
        /// How much a process's RSS grew above its lowest within a window
        /// (bytes; judged by the memory-growth anomaly only).
        ProcessRssGrowth = "process.rss_growth",
        /// The collector's own cost: milliseconds one sample took.
        SampleMs = "collector.sample_ms",
        /// Processes read in one sample.
        ProcessesSampled = "collector.processes_sampled",
    }
}

names! {
    /// The unit of a [`PerformanceMetric`]'s values.
    PerformanceUnit {
        /// Percent (of all CPUs, of one core, or of the time).
        Percent = "percent",
        /// Microseconds.
        Microseconds = "microseconds",
        /// Milliseconds.
        Milliseconds = "milliseconds",
        /// Bytes.
        Bytes = "bytes",
        /// Bytes per second.
        BytesPerSecond = "bytes_per_second",
        /// Occurrences per second.
        PerSecond = "per_second",
        /// A count (or a load average).
        Count = "count",
    }
}

names! {
    /// What a [`PerformanceSubject`] is, without its data.
    PerformanceSubjectKind {
        /// The host as a whole.
        Host = "host",
        /// One CPU core.
        Cpu = "cpu",
        /// One process.
        Process = "process",
        /// One cgroup v2 group.
        Cgroup = "cgroup",
        /// One block device.
        Disk = "disk",
        /// One network interface.
        Interface = "interface",
        /// The collector itself.
        Collector = "collector",
    }
}

names! {
    /// A pressure resource: `/proc/pressure/<name>`.
    PsiResource {
        /// `cpu`.
        Cpu = "cpu",
        /// `memory`.
        Memory = "memory",
        /// `io`.
        Io = "io",
    }
}

impl PsiResource {
    /// Its eight metrics: some avg10, avg60, avg300, total, then full's.
    pub const fn metrics(self) -> [PerformanceMetric; 8] {
        use PerformanceMetric as M;
        match self {
            Self::Cpu => [
                M::PsiCpuSomeAvg10,
                M::PsiCpuSomeAvg60,
                M::PsiCpuSomeAvg300,
                M::PsiCpuSomeTotal,
                M::PsiCpuFullAvg10,
                M::PsiCpuFullAvg60,
                M::PsiCpuFullAvg300,
                M::PsiCpuFullTotal,
            ],
            Self::Memory => [
                M::PsiMemorySomeAvg10,
                M::PsiMemorySomeAvg60,
                M::PsiMemorySomeAvg300,
                M::PsiMemorySomeTotal,
                M::PsiMemoryFullAvg10,
                M::PsiMemoryFullAvg60,
                M::PsiMemoryFullAvg300,
                M::PsiMemoryFullTotal,
            ],
            Self::Io => [
                M::PsiIoSomeAvg10,
                M::PsiIoSomeAvg60,
                M::PsiIoSomeAvg300,
                M::PsiIoSomeTotal,
                M::PsiIoFullAvg10,
                M::PsiIoFullAvg60,
                M::PsiIoFullAvg300,
                M::PsiIoFullTotal,
            ],
        }
    }

    /// Its `some avg10` metric, the one the pressure-stall anomaly judges.
    pub const fn some_avg10(self) -> PerformanceMetric {
        self.metrics()[0]
    }
}

impl PerformanceMetric {
    /// The unit of its values.
    pub const fn unit(self) -> PerformanceUnit {
        use PerformanceMetric as M;
        use PerformanceUnit as U;
        match self {
            M::CpuTotal
            | M::CpuUser
            | M::CpuSystem
            | M::CpuIowait
            | M::CpuSteal
            | M::CpuCore
            | M::DiskBusy
            | M::CgroupCpu
            | M::CgroupThrottled
            | M::ProcessCpu
            | M::PsiCpuSomeAvg10
            | M::PsiCpuSomeAvg60
            | M::PsiCpuSomeAvg300
            | M::PsiCpuFullAvg10
            | M::PsiCpuFullAvg60
            | M::PsiCpuFullAvg300
            | M::PsiMemorySomeAvg10
            | M::PsiMemorySomeAvg60
            | M::PsiMemorySomeAvg300
            | M::PsiMemoryFullAvg10
            | M::PsiMemoryFullAvg60
            | M::PsiMemoryFullAvg300
            | M::PsiIoSomeAvg10
            | M::PsiIoSomeAvg60
            | M::PsiIoSomeAvg300
            | M::PsiIoFullAvg10
            | M::PsiIoFullAvg60
            | M::PsiIoFullAvg300 => U::Percent,
            M::PsiCpuSomeTotal
            | M::PsiCpuFullTotal
            | M::PsiMemorySomeTotal
            | M::PsiMemoryFullTotal
            | M::PsiIoSomeTotal
            | M::PsiIoFullTotal => U::Microseconds,
            M::MemoryTotal
            | M::MemoryAvailable
            | M::MemoryFree
            | M::SwapUsed
            | M::CgroupMemory
            | M::ProcessRss
            | M::ProcessRssGrowth => U::Bytes,
            M::DiskReadRate | M::DiskWriteRate | M::NetRxRate | M::NetTxRate => U::BytesPerSecond,
            M::ForkRate
            | M::ContextSwitchRate
            | M::DiskReadOps
            | M::DiskWriteOps
            | M::NetRxPackets
            | M::NetTxPackets
            | M::NetErrors
            | M::NetDrops => U::PerSecond,
            M::ProcsRunning
            | M::ProcsBlocked
            | M::LoadAvg1
            | M::LoadAvg5
            | M::LoadAvg15
            | M::ProcessesSampled => U::Count,
            M::SampleMs => U::Milliseconds,
        }
    }

    /// The kind of subject it is measured on (its event's subject must be
    /// of this kind).
    pub const fn subject_kind(self) -> PerformanceSubjectKind {
        use PerformanceMetric as M;
        use PerformanceSubjectKind as S;
        match self {
            M::CpuCore => S::Cpu,
            M::DiskReadRate | M::DiskWriteRate | M::DiskReadOps | M::DiskWriteOps | M::DiskBusy => {
                S::Disk
            }
            M::NetRxRate
            | M::NetTxRate
            | M::NetRxPackets
            | M::NetTxPackets
            | M::NetErrors
            | M::NetDrops => S::Interface,
            M::CgroupCpu | M::CgroupThrottled | M::CgroupMemory => S::Cgroup,
            M::ProcessCpu | M::ProcessRss | M::ProcessRssGrowth => S::Process,
            M::SampleMs | M::ProcessesSampled => S::Collector,
            _ => S::Host,
        }
    }

    /// The pressure resource of a `psi.*` metric.
    pub fn psi_resource(self) -> Option<PsiResource> {
        PsiResource::ALL
            .iter()
            .copied()
            .find(|r| r.metrics().contains(&self))
    }
}

/// What a [`PerformanceEvent`] was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PerformanceSubject {
    /// The host as a whole.
    Host,
    /// One CPU core, by its number (`cpuN` in `/proc/stat`).
    Cpu {
        /// The core's number.
        core: u32,
    },
    /// One process.
    Process {
        /// Its pid.
        pid: u32,
        /// Its stable key, when the boot id is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process_key: Option<ProcessKey>,
    },
    /// One cgroup v2 group.
    Cgroup {
        /// Its path below the hierarchy's root (`/` for the root).
        path: String,
    },
    /// One block device.
    Disk {
        /// Its kernel name (`sda`, `nvme0n1`).
        name: String,
    },
    /// One network interface.
    Interface {
        /// Its name (`eth0`).
        name: String,
    },
    /// The collector itself (its own cost).
    Collector,
}

impl PerformanceSubject {
    /// Its kind.
    pub const fn kind(&self) -> PerformanceSubjectKind {
        match self {
            Self::Host => PerformanceSubjectKind::Host,
            Self::Cpu { .. } => PerformanceSubjectKind::Cpu,
            Self::Process { .. } => PerformanceSubjectKind::Process,
            Self::Cgroup { .. } => PerformanceSubjectKind::Cgroup,
            Self::Disk { .. } => PerformanceSubjectKind::Disk,
            Self::Interface { .. } => PerformanceSubjectKind::Interface,
            Self::Collector => PerformanceSubjectKind::Collector,
        }
    }

    /// Its name within its kind: the cgroup's path, the device's or
    /// interface's name, the core's number; `None` for the host, a process
    /// (named by its pid and key) and the collector.
    pub fn name(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Self::Cpu { core } => Some(core.to_string().into()),
            Self::Cgroup { path: n } | Self::Disk { name: n } | Self::Interface { name: n } => {
                Some(n.as_str().into())
            }
            Self::Host | Self::Process { .. } | Self::Collector => None,
        }
    }

    /// The process, for a process subject.
    pub const fn pid(&self) -> Option<u32> {
        match self {
            Self::Process { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// The process's key, for a process subject whose key is known.
    pub const fn process_key(&self) -> Option<ProcessKey> {
        match self {
            Self::Process { process_key, .. } => *process_key,
            _ => None,
        }
    }
}

names! {
    /// What a [`PerformanceAnomaly`] found.
    PerformanceAnomalyKind {
        /// A process held at least the threshold share of a core for the
        /// duration ([`PerformanceMetric::ProcessCpu`]).
        SustainedCpu = "sustained_cpu",
        /// A process's RSS grew by more than the threshold within the
        /// duration ([`PerformanceMetric::ProcessRssGrowth`]).
        MemoryGrowth = "memory_growth",
        /// Forks per second above the threshold, host-wide, over the
        /// duration ([`PerformanceMetric::ForkRate`]).
        ForkRate = "fork_rate",
        /// A pressure resource's `some avg10` above the threshold (a `psi.*.some_avg10` metric).
        PsiStall = "psi_stall",
    }
}

impl PerformanceAnomalyKind {
    /// Whether an anomaly of this kind can be about `metric`.
    pub fn judges(self, metric: PerformanceMetric) -> bool {
        match self {
            Self::SustainedCpu => metric == PerformanceMetric::ProcessCpu,
            Self::MemoryGrowth => metric == PerformanceMetric::ProcessRssGrowth,
            Self::ForkRate => metric == PerformanceMetric::ForkRate,
            Self::PsiStall => metric
                .psi_resource()
                .is_some_and(|r| r.some_avg10() == metric),
        }
    }
}

/// A judgement of one observation: the [`PerformanceEvent`] it is attached
/// to says what was observed (metric, subject, value), this says why that
/// is an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceAnomaly {
    /// What was found.
    pub kind: PerformanceAnomalyKind,
    /// The configured threshold the value crossed, in the metric's unit.
    pub threshold: f64,
    /// How long the condition held (sustained CPU), the window it happened
    /// in (memory growth), or the time the value was measured over (fork
    /// rate: the interval; pressure: 10 s).
    pub duration: Duration,
}

/// One sample of a performance metric, and when it is an anomaly, the
/// judgement ([`PerformanceEvent::anomaly`]).
///
/// ```
/// use std::time::SystemTime;
/// use collector_core::{PerformanceEvent, PerformanceMetric, PerformanceSubject, PerformanceUnit};
///
/// let e = PerformanceEvent::new(
///     PerformanceMetric::LoadAvg1,
///     0.25,
///     PerformanceSubject::Host,
///     SystemTime::now(),
/// );
/// assert_eq!(e.unit(), PerformanceUnit::Count);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceEvent {
    /// What was measured.
    pub metric: PerformanceMetric,
    /// The sampled value, in [`metric.unit()`](PerformanceMetric::unit).
    pub value: f64,
    /// What it was measured on.
    pub subject: PerformanceSubject,
    /// Set when the sample is an anomaly. Boxed: nearly every sample is an
    /// ordinary observation, which this keeps one pointer wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<Box<PerformanceAnomaly>>,
    /// When the sample was taken.
    #[serde(with = "system_time")]
    pub timestamp: SystemTime,
    /// The event's id, given by the runtime that accepted it (`None` until
    /// then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl PerformanceEvent {
    /// An observation (no anomaly, no id yet).
    pub const fn new(
        metric: PerformanceMetric,
        value: f64,
        subject: PerformanceSubject,
        timestamp: SystemTime,
    ) -> Self {
        Self {
            metric,
            value,
            subject,
            anomaly: None,
            timestamp,
            id: None,
        }
    }

    /// The same sample judged an anomaly.
    #[must_use]
    pub fn with_anomaly(mut self, anomaly: PerformanceAnomaly) -> Self {
        self.anomaly = Some(Box::new(anomaly));
        self
    }

    /// The unit of [`value`](Self::value).
    pub const fn unit(&self) -> PerformanceUnit {
        self.metric.unit()
    }

    /// The process measured, for per-process metrics.
    pub const fn pid(&self) -> Option<u32> {
        self.subject.pid()
    }

    /// That process's stable key, when known.
    pub const fn process_key(&self) -> Option<ProcessKey> {
        self.subject.process_key()
    }

    fn validate(&self) -> Result<(), EventValidationError> {
        const K: EventKind = EventKind::Performance;
        if !self.value.is_finite() {
            return Err(invalid(K, "value", "is not finite"));
        }
        if self.subject.kind() != self.metric.subject_kind() {
            return Err(invalid(K, "subject", "is not of the metric's kind"));
        }
        match &self.subject {
            PerformanceSubject::Process { pid: 0, .. } => {
                return Err(invalid(K, "subject", "names pid 0"));
            }
            PerformanceSubject::Cgroup { path: n }
            | PerformanceSubject::Disk { name: n }
            | PerformanceSubject::Interface { name: n }
                if n.is_empty() || n.len() > MAX_METADATA_VALUE_LEN =>
            {
                return Err(invalid(K, "subject", "has an empty or oversized name"));
            }
            _ => {}
        }
        validate_key(K, self.pid(), self.process_key())?;
        if let Some(a) = &self.anomaly {
            if !a.kind.judges(self.metric) {
                return Err(invalid(K, "anomaly", "is not of the metric's kind"));
            }
            if !a.threshold.is_finite() {
                return Err(invalid(K, "anomaly", "has a threshold that is not finite"));
            }
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
        let perf = PerformanceEvent::new(
            PerformanceMetric::LoadAvg1,
            f64::INFINITY,
            PerformanceSubject::Host,
            SystemTime::now(),
        );
        assert!(CollectionEvent::Performance(perf).validate().is_err());
        let net = NetworkEvent {
            connection_id: 1,
            fd: Some(3),
            ..NetworkEvent::default()
        };
        assert_eq!(
            CollectionEvent::Network(net).validate().unwrap_err().field,
            "fd"
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
            permissions: Some(0o644),
            ..FilesystemEvent::new("/etc/passwd", FileOperation::Modify, t)
        });
        assert_eq!(f.kind(), EventKind::Filesystem);
        assert_eq!(f.pid(), None);
    }

    fn perf(metric: PerformanceMetric, subject: PerformanceSubject) -> PerformanceEvent {
        PerformanceEvent::new(metric, 1.0, subject, SystemTime::UNIX_EPOCH)
    }

    fn perf_error(e: PerformanceEvent) -> Option<&'static str> {
        CollectionEvent::Performance(e)
            .validate()
            .err()
            .map(|e| e.field)
    }

    #[test]
    fn metrics_have_unique_dotted_names_a_unit_and_a_subject_kind() {
        let mut seen = std::collections::HashSet::new();
        for &m in PerformanceMetric::ALL {
            assert!(seen.insert(m.as_str()), "{m} twice");
            assert!(m.as_str().contains('.'), "{m}");
            assert_eq!(PerformanceMetric::from_name(m.as_str()), Some(m));
            let prefix = m.as_str().split('.').next().unwrap_or_default();
            let kind = m.subject_kind();
            // The prefix names the subject, except for the host's metrics.
            match prefix {
                "process" => assert_eq!(kind, PerformanceSubjectKind::Process, "{m}"),
                "disk" => assert_eq!(kind, PerformanceSubjectKind::Disk, "{m}"),
                "net" => assert_eq!(kind, PerformanceSubjectKind::Interface, "{m}"),
                "cgroup" => assert_eq!(kind, PerformanceSubjectKind::Cgroup, "{m}"),
                "collector" => assert_eq!(kind, PerformanceSubjectKind::Collector, "{m}"),
                _ if m == PerformanceMetric::CpuCore => {
                    assert_eq!(kind, PerformanceSubjectKind::Cpu);
                }
                _ => assert_eq!(kind, PerformanceSubjectKind::Host, "{m}"),
            }
        }
        for &r in PsiResource::ALL {
            for m in r.metrics() {
                assert!(m.as_str().starts_with(&format!("psi.{r}.")), "{m}");
                assert_eq!(m.psi_resource(), Some(r));
            }
            assert!(r.some_avg10().as_str().ends_with("some_avg10"));
        }
        assert_eq!(PerformanceMetric::ProcessRss.unit(), PerformanceUnit::Bytes);
        assert_eq!(
            PerformanceMetric::PsiIoSomeTotal.unit(),
            PerformanceUnit::Microseconds
        );
    }

    #[test]
    fn a_performance_event_names_its_process_through_its_subject() {
        let key = ProcessKey::new(BootId::from_bytes([2; 16]), 9, 100);
        let e = perf(
            PerformanceMetric::ProcessCpu,
            PerformanceSubject::Process {
                pid: 9,
                process_key: Some(key),
            },
        );
        let c = CollectionEvent::Performance(e.clone());
        assert_eq!((c.pid(), c.process_key()), (Some(9), Some(key)));
        c.validate().unwrap();
        assert_eq!(e.subject.kind(), PerformanceSubjectKind::Process);
        assert_eq!(e.subject.name(), None);
        assert_eq!(
            PerformanceSubject::Cpu { core: 3 }.name().as_deref(),
            Some("3")
        );
    }

    #[test]
    fn invalid_performance_events_are_refused_by_field() {
        use PerformanceMetric as M;
        use PerformanceSubject as S;
        assert_eq!(perf_error(perf(M::CpuTotal, S::Host)), None);
        assert_eq!(perf_error(perf(M::CpuTotal, S::Collector)), Some("subject"));
        assert_eq!(perf_error(perf(M::ProcessRss, S::Host)), Some("subject"));
        let nameless = S::Disk {
            name: String::new(),
        };
        assert_eq!(perf_error(perf(M::DiskBusy, nameless)), Some("subject"));
        let pid0 = S::Process {
            pid: 0,
            process_key: None,
        };
        assert_eq!(perf_error(perf(M::ProcessRss, pid0)), Some("subject"));
        let other = S::Process {
            pid: 5,
            process_key: Some(ProcessKey::new(BootId::from_bytes([1; 16]), 6, 1)),
        };
        assert_eq!(perf_error(perf(M::ProcessRss, other)), Some("process_key"));
        let anomaly = |kind, threshold| PerformanceAnomaly {
            kind,
            threshold,
            duration: Duration::from_secs(1),
        };
        let fork = perf(M::ForkRate, S::Host);
        let fine = fork
            .clone()
            .with_anomaly(anomaly(PerformanceAnomalyKind::ForkRate, 100.0));
        assert_eq!(perf_error(fine), None);
        let wrong = fork
            .clone()
            .with_anomaly(anomaly(PerformanceAnomalyKind::SustainedCpu, 90.0));
        assert_eq!(perf_error(wrong), Some("anomaly"));
        let nan = fork.with_anomaly(anomaly(PerformanceAnomalyKind::ForkRate, f64::NAN));
        assert_eq!(perf_error(nan), Some("anomaly"));
        let psi = perf(M::PsiMemorySomeAvg10, S::Host)
            .with_anomaly(anomaly(PerformanceAnomalyKind::PsiStall, 60.0));
        assert_eq!(perf_error(psi), None);
        let psi60 = perf(M::PsiMemorySomeAvg60, S::Host)
            .with_anomaly(anomaly(PerformanceAnomalyKind::PsiStall, 60.0));
        assert_eq!(perf_error(psi60), Some("anomaly"));
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
