//! Runtime types to protocol messages: events to records, capabilities to
//! domains.

use std::net::IpAddr;
use std::time::SystemTime;

use daemoneye_lib::proto::{self, Domain, EventRecord, Timestamp};

use crate::event::{
    AddressFamily, AnalysisType, CaptureTier, CollectionEvent, ConnectionChange,
    ConnectionDirection, ConnectionState, EventId, EventKind, FileOperation, FileType,
    FilesystemEvent, HashAlgorithm, LifecycleDetail, NetworkEvent, NetworkProtocol, ObservedBy,
    PerformanceAnomaly, PerformanceAnomalyKind, PerformanceEvent, PerformanceMetric,
    PerformanceSubject, PerformanceSubjectKind, ProcessContext, ProcessEvent, ProcessEventType,
    ProcessField, ProcessKey, ReadDepth, StartTimeAnomaly, TriggerPriority, TriggerRequest,
};
use crate::source::SourceCaps;

const DOMAIN_CAPS: [(SourceCaps, Domain); 4] = [
    (SourceCaps::PROCESS, Domain::Process),
    (SourceCaps::NETWORK, Domain::Network),
    (SourceCaps::FILESYSTEM, Domain::Filesystem),
    (SourceCaps::PERFORMANCE, Domain::Performance),
];

/// The collection domains among `caps` (the other bits are not domains).
pub fn caps_to_domains(caps: SourceCaps) -> Vec<Domain> {
    DOMAIN_CAPS
        .iter()
        .filter(|(c, _)| caps.contains(*c))
        .map(|(_, d)| *d)
        .collect()
}

/// The capability bit of a domain; empty for [`Domain::Unspecified`].
pub fn domain_to_caps(domain: Domain) -> SourceCaps {
    DOMAIN_CAPS
        .iter()
        .find(|(_, d)| *d == domain)
        .map_or(SourceCaps::empty(), |(c, _)| *c)
}

/// The protocol's [`EventKind`](proto::EventKind) of a runtime
/// [`EventKind`](crate::EventKind).
pub(crate) const fn kind_to_proto(kind: crate::EventKind) -> proto::EventKind {
    match kind {
        crate::EventKind::Process => proto::EventKind::Process,
        crate::EventKind::Network => proto::EventKind::Network,
        crate::EventKind::Filesystem => proto::EventKind::Filesystem,
        crate::EventKind::Performance => proto::EventKind::Performance,
        crate::EventKind::TriggerRequest => proto::EventKind::TriggerRequest,
    }
}

/// A process event as a [`ProcessRecord`](proto::ProcessRecord), every field
/// carried (the process key as `boot_id:pid:start_ticks`).
pub fn process_to_record(e: &ProcessEvent) -> proto::ProcessRecord {
    let c = e.context();
    let l = e.lifecycle();
    proto::ProcessRecord {
        pid: e.pid,
        ppid: e.ppid,
        name: e.name.clone(),
        executable_path: e.executable_path.clone(),
        command_line: e.command_line.clone(),
        start_time: e.start_time.map(Timestamp::from),
        cpu_usage: e.cpu_usage,
        memory_usage: e.memory_usage,
        executable_hash: e.executable_hash.clone(),
        hash_algorithm: e.hash_algorithm.map(|a| a.as_str().to_owned()),
        user_id: e.user_id,
        accessible: e.accessible,
        file_exists: e.file_exists,
        timestamp: Some(e.timestamp.into()),
        platform_metadata: e.platform_metadata.clone(),
        process_key: key_text(e.process_key),
        event_type: e.event_type.as_str().to_owned(),
        exit_code: e.exit_code,
        euid: e.euid,
        gid: e.gid,
        state: e.state.map(String::from).unwrap_or_default(),
        threads: e.threads,
        cpu_ticks: e.cpu_ticks,
        exe_replaced: e.exe_replaced,
        read: match e.read {
            ReadDepth::Full => String::new(),
            other => other.as_str().to_owned(),
        },
        context: (*c != ProcessContext::default()).then(|| proto::ProcessContext {
            cgroup: c.cgroup.clone(),
            container_id: c.container_id.clone(),
            pid_ns: c.pid_ns,
            mnt_ns: c.mnt_ns,
            net_ns: c.net_ns,
            user_ns: c.user_ns,
        }),
        lifecycle: (*l != LifecycleDetail::default()).then(|| proto::LifecycleDetail {
            observed_by: l
                .observed_by
                .map(|o| o.as_str().to_owned())
                .unwrap_or_default(),
            previous_process_key: key_text(l.previous_key),
            changed: l.changed.iter().map(|f| f.as_str().to_owned()).collect(),
            anomaly: l.anomaly.map(|a| a.as_str().to_owned()).unwrap_or_default(),
            run_time_ms: l.run_time_ms,
            tier: l.tier.map(|t| t.as_str().to_owned()).unwrap_or_default(),
            argv_truncated: l.argv_truncated,
            setuid: l.setuid,
            setgid: l.setgid,
        }),
    }
}

fn key_text(key: Option<ProcessKey>) -> String {
    key.map(|k| k.to_string()).unwrap_or_default()
}

/// Why a received record could not be turned back into the event a
/// collector published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} record{}: {problem}", pid.map(|p| format!(" of pid {p}")).unwrap_or_default())]
pub struct RecordError {
    /// The record's domain.
    pub kind: EventKind,
    /// The record's pid, when it has one.
    pub pid: Option<u32>,
    /// What is wrong with it.
    pub problem: RecordProblem,
}

/// What is wrong with a received record (see [`RecordError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordProblem {
    /// A timestamp was out of range.
    #[error("{0}")]
    Time(#[source] proto::ProtoError),
    /// A required timestamp was missing.
    #[error("no observation time")]
    NoTimestamp,
    /// A process key was not `boot_id:pid:start_ticks`.
    #[error("invalid process key {0:?}")]
    ProcessKey(String),
    /// A name this side does not know (an event type or hash algorithm from
    /// a newer collector).
    #[error("unknown {field} {value:?}")]
    Unknown {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A value out of its field's range (a port above 65535, an address
    /// that does not parse).
    #[error("{field} {value:?} is out of range")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The record carried no event.
    #[error("no event")]
    Empty,
    /// The event the record describes is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Decodes one record's fields, naming the record in every error.
struct Decoder {
    kind: EventKind,
    pid: Option<u32>,
}

impl Decoder {
    const fn new(kind: EventKind, pid: Option<u32>) -> Self {
        Self { kind, pid }
    }

    const fn err(&self, problem: RecordProblem) -> RecordError {
        RecordError {
            kind: self.kind,
            pid: self.pid,
            problem,
        }
    }

    fn time(&self, t: Timestamp) -> Result<SystemTime, RecordError> {
        SystemTime::try_from(t).map_err(|e| self.err(RecordProblem::Time(e)))
    }

    fn required_time(&self, t: Option<Timestamp>) -> Result<SystemTime, RecordError> {
        self.time(t.ok_or_else(|| self.err(RecordProblem::NoTimestamp))?)
    }

    fn key(&self, text: &str) -> Result<Option<ProcessKey>, RecordError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| self.err(RecordProblem::ProcessKey(text.to_owned())))
    }

    /// `value` by its name; `None` for the empty name.
    fn name<T>(
        &self,
        field: &'static str,
        value: &str,
        from_name: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, RecordError> {
        if value.is_empty() {
            return Ok(None);
        }
        from_name(value).map(Some).ok_or_else(|| {
            self.err(RecordProblem::Unknown {
                field,
                value: value.to_owned(),
            })
        })
    }

    fn hash(&self, name: Option<&str>) -> Result<Option<HashAlgorithm>, RecordError> {
        self.name(
            "hash algorithm",
            name.unwrap_or_default(),
            HashAlgorithm::from_name,
        )
    }

    fn out_of_range(&self, field: &'static str, value: &dyn ToString) -> RecordError {
        self.err(RecordProblem::OutOfRange {
            field,
            value: value.to_string(),
        })
    }

    fn port(&self, field: &'static str, port: Option<u32>) -> Result<Option<u16>, RecordError> {
        port.map(|p| u16::try_from(p).map_err(|_| self.out_of_range(field, &p)))
            .transpose()
    }

    fn addr(&self, field: &'static str, addr: Option<&str>) -> Result<Option<IpAddr>, RecordError> {
        addr.map(|a| a.parse().map_err(|_| self.out_of_range(field, &a)))
            .transpose()
    }

    /// `event` checked as the runtime checks what a source emits.
    fn checked(&self, event: CollectionEvent) -> Result<CollectionEvent, RecordError> {
        event
            .validate()
            .map_err(|e| self.err(RecordProblem::Invalid(e.to_string())))?;
        Ok(event)
    }
}

/// The inverse of [`process_to_record`]: a received record as the event the
/// collector published, checked as the runtime checks events
/// ([`CollectionEvent::validate`]). An empty event type is a snapshot.
///
/// # Errors
/// [`RecordError`] naming the pid and the field, for a record that is out
/// of range, names an unknown event type or algorithm, or is invalid.
pub fn record_to_process(record: proto::ProcessRecord) -> Result<ProcessEvent, RecordError> {
    let r = record;
    let d = Decoder::new(EventKind::Process, Some(r.pid));
    let event_type = d
        .name("event type", &r.event_type, ProcessEventType::from_name)?
        .unwrap_or_default();
    let mut letters = r.state.chars();
    let (state, None) = (letters.next(), letters.next()) else {
        return Err(d.out_of_range("state", &r.state));
    };
    let context = r.context.unwrap_or_default();
    let life = r.lifecycle.unwrap_or_default();
    let changed = life
        .changed
        .iter()
        .map(|f| {
            d.name("changed field", f, ProcessField::from_name)?
                .ok_or_else(|| d.out_of_range("changed field", f))
        })
        .collect::<Result<_, _>>()?;
    let event = ProcessEvent {
        id: None,
        event_type,
        pid: r.pid,
        ppid: r.ppid,
        name: r.name,
        executable_path: r.executable_path,
        command_line: r.command_line,
        start_time: r.start_time.map(|t| d.time(t)).transpose()?,
        cpu_usage: r.cpu_usage,
        memory_usage: r.memory_usage,
        executable_hash: r.executable_hash,
        hash_algorithm: d.hash(r.hash_algorithm.as_deref())?,
        user_id: r.user_id,
        accessible: r.accessible,
        file_exists: r.file_exists,
        timestamp: d.required_time(r.timestamp)?,
        platform_metadata: r.platform_metadata,
        process_key: d.key(&r.process_key)?,
        exit_code: r.exit_code,
        euid: r.euid,
        gid: r.gid,
        state,
        threads: r.threads,
        cpu_ticks: r.cpu_ticks,
        exe_replaced: r.exe_replaced,
        read: d
            .name("read", &r.read, ReadDepth::from_name)?
            .unwrap_or_default(),
        // An empty context or detail is none at all, on the wire and here.
        context: ProcessContext {
            cgroup: context.cgroup,
            container_id: context.container_id,
            pid_ns: context.pid_ns,
            mnt_ns: context.mnt_ns,
            net_ns: context.net_ns,
            user_ns: context.user_ns,
        }
        .shared(),
        lifecycle: LifecycleDetail {
            observed_by: d.name("observed_by", &life.observed_by, ObservedBy::from_name)?,
            previous_key: d.key(&life.previous_process_key)?,
            changed,
            anomaly: d.name("anomaly", &life.anomaly, StartTimeAnomaly::from_name)?,
            run_time_ms: life.run_time_ms,
            tier: d.name("tier", &life.tier, CaptureTier::from_name)?,
            argv_truncated: life.argv_truncated,
            setuid: life.setuid,
            setgid: life.setgid,
        }
        .boxed(),
    };
    match d.checked(CollectionEvent::Process(event))? {
        CollectionEvent::Process(e) => Ok(e),
        _ => Err(d.err(RecordProblem::Empty)),
    }
}

/// A name field of a record: the value's name, or empty when unset.
fn name_of<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn network_to_record(e: &NetworkEvent) -> proto::NetworkRecord {
    proto::NetworkRecord {
        connection_id: e.connection_id,
        source_address: e.source_addr.map(|a| a.to_string()),
        source_port: e.source_port.map(u32::from),
        destination_address: e.dest_addr.map(|a| a.to_string()),
        destination_port: e.dest_port.map(u32::from),
        protocol: e.protocol.as_str().to_owned(),
        family: name_of(e.family),
        state: name_of(e.state),
        direction: name_of(e.direction),
        change: name_of(e.change),
        pid: e.pid,
        fd: e.fd,
        holders: e.holders,
        uid: e.uid,
        inode: e.inode,
        netns: e.netns,
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
        tier: name_of(e.tier),
        timestamp: Some(e.timestamp.into()),
        process_key: key_text(e.process_key),
    }
}

fn record_to_network(r: &proto::NetworkRecord) -> Result<CollectionEvent, RecordError> {
    let d = Decoder::new(EventKind::Network, r.pid);
    let protocol = d
        .name("protocol", &r.protocol, NetworkProtocol::from_name)?
        .ok_or_else(|| d.err(RecordProblem::Invalid("protocol is empty".to_owned())))?;
    d.checked(CollectionEvent::Network(NetworkEvent {
        id: None,
        connection_id: r.connection_id,
        source_addr: d.addr("source_address", r.source_address.as_deref())?,
        source_port: d.port("source_port", r.source_port)?,
        dest_addr: d.addr("destination_address", r.destination_address.as_deref())?,
        dest_port: d.port("destination_port", r.destination_port)?,
        protocol,
        family: d.name("family", &r.family, AddressFamily::from_name)?,
        state: d.name("state", &r.state, ConnectionState::from_name)?,
        direction: d.name("direction", &r.direction, ConnectionDirection::from_name)?,
        change: d.name("change", &r.change, ConnectionChange::from_name)?,
        tier: d.name("tier", &r.tier, CaptureTier::from_name)?,
        timestamp: d.required_time(r.timestamp)?,
        process_key: d.key(&r.process_key)?,
        pid: r.pid,
        fd: r.fd,
        holders: r.holders,
        uid: r.uid,
        inode: r.inode,
        netns: r.netns,
        bytes_sent: r.bytes_sent,
        bytes_received: r.bytes_received,
    }))
}

const FILE_OPERATIONS: [(FileOperation, proto::FileOperation); 8] = [
    (FileOperation::Create, proto::FileOperation::Create),
    (FileOperation::Open, proto::FileOperation::Open),
    (FileOperation::Access, proto::FileOperation::Access),
    (FileOperation::Modify, proto::FileOperation::Modify),
    (FileOperation::CloseWrite, proto::FileOperation::CloseWrite),
    (FileOperation::Delete, proto::FileOperation::Delete),
    (FileOperation::Rename, proto::FileOperation::Rename),
    (FileOperation::Attrib, proto::FileOperation::Attrib),
];

fn filesystem_to_record(e: &FilesystemEvent) -> proto::FilesystemRecord {
    let operation = FILE_OPERATIONS
        .iter()
        .find(|(op, _)| *op == e.operation)
        .map_or(proto::FileOperation::Unspecified, |(_, p)| *p);
    proto::FilesystemRecord {
        path: e.path.clone(),
        operation: operation.into(),
        pid: e.pid,
        size: e.size,
        permissions: e.permissions,
        file_hash: e.file_hash.clone(),
        hash_algorithm: e.hash_algorithm.map(|a| a.as_str().to_owned()),
        timestamp: Some(e.timestamp.into()),
        process_key: key_text(e.process_key),
        old_path: e.old_path.clone(),
        file_type: e
            .file_type
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        uid: e.uid,
        gid: e.gid,
        previous_hash: e.previous_hash.clone(),
        root: e.root.clone(),
        previous_permissions: e.previous_permissions,
    }
}

fn record_to_filesystem(r: proto::FilesystemRecord) -> Result<CollectionEvent, RecordError> {
    let d = Decoder::new(EventKind::Filesystem, r.pid);
    let operation = FILE_OPERATIONS
        .iter()
        .find(|(_, p)| i32::from(*p) == r.operation)
        .map(|(op, _)| op.clone())
        .ok_or_else(|| d.out_of_range("operation", &r.operation))?;
    // In the struct's order.
    let file_type = if r.file_type.is_empty() {
        None
    } else {
        let t = FileType::from_name(&r.file_type);
        Some(t.ok_or_else(|| d.out_of_range("file_type", &r.file_type))?)
    };
    d.checked(CollectionEvent::Filesystem(FilesystemEvent {
        path: r.path,
        root: r.root,
        old_path: r.old_path,
        operation,
        file_type,
        pid: r.pid,
        process_key: d.key(&r.process_key)?,
        size: r.size,
        permissions: r.permissions,
        previous_permissions: r.previous_permissions,
        uid: r.uid,
        gid: r.gid,
        file_hash: r.file_hash,
        previous_hash: r.previous_hash,
        hash_algorithm: d.hash(r.hash_algorithm.as_deref())?,
        timestamp: d.required_time(r.timestamp)?,
        id: None,
    }))
}

fn performance_to_record(e: &PerformanceEvent) -> proto::PerformanceRecord {
    let s = &e.subject;
    proto::PerformanceRecord {
        metric: e.metric.as_str().to_owned(),
        value: e.value,
        subject: Some(proto::PerformanceSubject {
            kind: s.kind().as_str().to_owned(),
            name: match s {
                PerformanceSubject::Cgroup { path: n }
                | PerformanceSubject::Disk { name: n }
                | PerformanceSubject::Interface { name: n } => n.clone(),
                _ => String::new(),
            },
            core: match s {
                PerformanceSubject::Cpu { core } => *core,
                _ => 0,
            },
            pid: s.pid().unwrap_or_default(),
            process_key: key_text(s.process_key()),
        }),
        timestamp: Some(e.timestamp.into()),
        anomaly: e.anomaly.as_ref().map(|a| proto::PerformanceAnomaly {
            kind: a.kind.as_str().to_owned(),
            threshold: a.threshold,
            duration_ms: u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

fn record_to_performance(r: proto::PerformanceRecord) -> Result<CollectionEvent, RecordError> {
    let s = r.subject.unwrap_or_default();
    let d = Decoder::new(EventKind::Performance, (s.pid != 0).then_some(s.pid));
    let metric = d
        .name("metric", &r.metric, PerformanceMetric::from_name)?
        .ok_or_else(|| d.out_of_range("metric", &""))?;
    let kind = d
        .name("subject kind", &s.kind, PerformanceSubjectKind::from_name)?
        .ok_or_else(|| d.out_of_range("subject kind", &""))?;
    let subject = match kind {
        PerformanceSubjectKind::Host => PerformanceSubject::Host,
        PerformanceSubjectKind::Cpu => PerformanceSubject::Cpu { core: s.core },
        PerformanceSubjectKind::Process => PerformanceSubject::Process {
            pid: s.pid,
            process_key: d.key(&s.process_key)?,
        },
        PerformanceSubjectKind::Cgroup => PerformanceSubject::Cgroup { path: s.name },
        PerformanceSubjectKind::Disk => PerformanceSubject::Disk { name: s.name },
        PerformanceSubjectKind::Interface => PerformanceSubject::Interface { name: s.name },
        PerformanceSubjectKind::Collector => PerformanceSubject::Collector,
    };
    let anomaly = r
        .anomaly
        .map(|a| {
            let kind = d
                .name("anomaly kind", &a.kind, PerformanceAnomalyKind::from_name)?
                .ok_or_else(|| d.out_of_range("anomaly kind", &""))?;
            Ok(Box::new(PerformanceAnomaly {
                kind,
                threshold: a.threshold,
                duration: std::time::Duration::from_millis(a.duration_ms),
            }))
        })
        .transpose()?;
    d.checked(CollectionEvent::Performance(PerformanceEvent {
        id: None,
        metric,
        value: r.value,
        subject,
        anomaly,
        timestamp: d.required_time(r.timestamp)?,
    }))
}

const ANALYSIS_TYPES: [(AnalysisType, &str); 5] = [
    (AnalysisType::BinaryHash, "binary_hash"),
    (AnalysisType::MemoryAnalysis, "memory_analysis"),
    (AnalysisType::NetworkAnalysis, "network_analysis"),
    (AnalysisType::FilesystemAnalysis, "filesystem_analysis"),
    (AnalysisType::BehavioralAnalysis, "behavioral_analysis"),
];

const PRIORITIES: [(TriggerPriority, &str); 4] = [
    (TriggerPriority::Low, "low"),
    (TriggerPriority::Normal, "normal"),
    (TriggerPriority::High, "high"),
    (TriggerPriority::Critical, "critical"),
];

/// The name of `value` in a table of (value, name) pairs.
fn name_in<T: PartialEq>(table: &[(T, &'static str)], value: &T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| v == value)
        .map_or("", |(_, n)| n)
}

/// The value named `name` in a table of (value, name) pairs.
fn value_in<T: Copy>(table: &[(T, &'static str)], name: &str) -> Option<T> {
    table.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

fn trigger_to_record(e: &TriggerRequest) -> proto::TriggerRequestRecord {
    proto::TriggerRequestRecord {
        trigger_id: e.trigger_id.clone(),
        target_collector: e.target_collector.clone(),
        analysis_type: name_in(&ANALYSIS_TYPES, &e.analysis_type).to_owned(),
        priority: name_in(&PRIORITIES, &e.priority).to_owned(),
        target_pid: e.target_pid,
        target_path: e.target_path.clone(),
        correlation_id: e.correlation_id.clone(),
        metadata: e.metadata.clone(),
        timestamp: Some(e.timestamp.into()),
    }
}

fn record_to_trigger(r: proto::TriggerRequestRecord) -> Result<CollectionEvent, RecordError> {
    let d = Decoder::new(EventKind::TriggerRequest, r.target_pid);
    let analysis_type = d.name("analysis type", &r.analysis_type, |n| {
        value_in(&ANALYSIS_TYPES, n)
    })?;
    let priority = d.name("priority", &r.priority, |n| value_in(&PRIORITIES, n))?;
    d.checked(CollectionEvent::TriggerRequest(TriggerRequest {
        analysis_type: analysis_type.ok_or_else(|| d.out_of_range("analysis type", &""))?,
        priority: priority.unwrap_or(TriggerPriority::Normal),
        timestamp: d.required_time(r.timestamp)?,
        trigger_id: r.trigger_id,
        target_collector: r.target_collector,
        target_pid: r.target_pid,
        target_path: r.target_path,
        correlation_id: r.correlation_id,
        metadata: r.metadata,
    }))
}

/// An event as a streamed [`EventRecord`] from the source `source`: the one
/// place where the event model becomes the wire format; [`record_to_event`]
/// is its inverse.
pub fn event_to_record(event: &CollectionEvent, source: &str) -> EventRecord {
    let id = event.id().map(|id| proto::EventId {
        run: id.run,
        seq: id.seq.get(),
    });
    let event: proto::event_record::Event = match event {
        CollectionEvent::Process(e) => process_to_record(e).into(),
        CollectionEvent::Network(e) => network_to_record(e).into(),
        CollectionEvent::Filesystem(e) => filesystem_to_record(e).into(),
        CollectionEvent::Performance(e) => performance_to_record(e).into(),
        CollectionEvent::TriggerRequest(e) => trigger_to_record(e).into(),
    };
    EventRecord {
        id,
        ..EventRecord::new(source, event)
    }
}

/// The inverse of [`event_to_record`]: a received record as the event its
/// collector published, checked as the runtime checks events.
///
/// # Errors
/// [`RecordError`] naming the domain, the pid and the field, for a record
/// that carries no event, is out of range, names what this side does not
/// know, or is invalid.
pub fn record_to_event(record: EventRecord) -> Result<CollectionEvent, RecordError> {
    use proto::event_record::Event;
    let mut event = match record.event {
        Some(Event::Process(r)) => record_to_process(r).map(CollectionEvent::Process),
        Some(Event::Network(r)) => record_to_network(&r),
        Some(Event::Filesystem(r)) => record_to_filesystem(r),
        Some(Event::Performance(r)) => record_to_performance(r),
        Some(Event::TriggerRequest(r)) => record_to_trigger(r),
        None => Err(Decoder::new(EventKind::Process, None).err(RecordProblem::Empty)),
    }?;
    if let Some(id) = record.id {
        let d = Decoder::new(event.kind(), event.pid());
        let seq = std::num::NonZeroU64::new(id.seq).ok_or_else(|| {
            d.err(RecordProblem::OutOfRange {
                field: "id",
                value: format!("{:016x}-0", id.run),
            })
        })?;
        if !event.name_once(EventId::new(id.run, seq)) {
            return Err(d.err(RecordProblem::OutOfRange {
                field: "id",
                value: "an id on a trigger request".to_owned(),
            }));
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::event::BootId;
    use crate::testing::strategy::{self, pick};

    fn full_process() -> ProcessEvent {
        crate::testing::every_field_process_event()
    }

    #[test]
    fn process_events_keep_every_field_as_a_typed_field() {
        let e = full_process();
        let r = process_to_record(&e);
        assert_eq!(r.pid, 42);
        assert_eq!(r.executable_path.as_deref(), Some("/usr/sbin/sshd"));
        assert_eq!(r.hash_algorithm.as_deref(), Some("sha256"));
        assert_eq!(r.event_type, "exit");
        assert_eq!(
            (r.euid, r.gid, r.state.as_str()),
            (Some(1000), Some(100), "Z")
        );
        assert_eq!(r.read, "stat_only");
        let c = r.context.clone().unwrap();
        assert_eq!(c.container_id.as_deref(), Some("c0ffee"));
        let l = r.lifecycle.clone().unwrap();
        assert_eq!((l.observed_by.as_str(), l.changed.len()), ("kernel", 2));
        assert_eq!(l.anomaly, "started_before_parent");
        // Typed facts are fields of their own, not strings in the map.
        assert_eq!(r.platform_metadata.len(), 1);

        // The id travels on the envelope, the rest in the process record.
        let unnamed = ProcessEvent {
            id: None,
            ..e.clone()
        };
        assert_eq!(
            record_to_process(r).unwrap(),
            unnamed,
            "the inverse gives the event back"
        );
        let rec = event_to_record(&CollectionEvent::Process(e.clone()), "procmond");
        assert_eq!(rec.kind(), proto::EventKind::Process);
        assert_eq!(rec.source_name, "procmond");
        assert_eq!(rec.id.map(|id| id.seq), Some(1));
        assert_eq!(record_to_event(rec).unwrap(), CollectionEvent::Process(e));
        // A default event sends no context or lifecycle message at all.
        let plain = process_to_record(&ProcessEvent::new(3, "x"));
        assert!(plain.context.is_none() && plain.lifecycle.is_none() && plain.read.is_empty());
    }

    #[test]
    fn domains_follow_the_capability_bits() {
        let caps = SourceCaps::PROCESS | SourceCaps::PERFORMANCE | SourceCaps::REALTIME;
        assert_eq!(
            caps_to_domains(caps),
            [Domain::Process, Domain::Performance]
        );
        assert_eq!(domain_to_caps(Domain::Network), SourceCaps::NETWORK);
        assert_eq!(domain_to_caps(Domain::Unspecified), SourceCaps::empty());
        for &kind in crate::EventKind::ALL {
            assert_eq!(
                kind_to_proto(kind).as_str_name().to_lowercase(),
                format!("event_kind_{kind}")
            );
        }
    }

    fn problem(r: proto::ProcessRecord) -> (Option<u32>, RecordProblem) {
        let e = record_to_process(r).unwrap_err();
        assert_eq!(e.kind, EventKind::Process);
        (e.pid, e.problem)
    }

    #[test]
    fn bad_records_are_refused_naming_pid_and_field() {
        let good = || process_to_record(&ProcessEvent::new(7, "x"));
        assert!(record_to_process(good()).is_ok());
        let unknown = |field: &'static str, value: &str| {
            (
                Some(7),
                RecordProblem::Unknown {
                    field,
                    value: value.to_owned(),
                },
            )
        };
        let mut r = good();
        r.event_type = "teleported".into();
        let err = record_to_process(r.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process record of pid 7: unknown event type \"teleported\""
        );
        assert_eq!(problem(r), unknown("event type", "teleported"));
        let mut r = good();
        r.hash_algorithm = Some("md5".into());
        assert_eq!(problem(r), unknown("hash algorithm", "md5"));
        let mut r = good();
        r.read = "half".into();
        assert_eq!(problem(r), unknown("read", "half"));
        let mut r = good();
        r.lifecycle = Some(proto::LifecycleDetail {
            changed: vec!["soul".into()],
            ..Default::default()
        });
        assert_eq!(problem(r), unknown("changed field", "soul"));
        let mut r = good();
        r.state = "RS".into();
        assert!(matches!(
            problem(r).1,
            RecordProblem::OutOfRange { field: "state", .. }
        ));
        let mut r = good();
        r.process_key = "nonsense".into();
        assert_eq!(
            problem(r),
            (Some(7), RecordProblem::ProcessKey("nonsense".into()))
        );
        let mut r = good();
        r.timestamp = None;
        assert_eq!(problem(r), (Some(7), RecordProblem::NoTimestamp));
        let mut r = good();
        r.start_time = Some(Timestamp {
            seconds: 1,
            nanos: -1,
        });
        assert!(matches!(problem(r).1, RecordProblem::Time(_)));
        // Decodes, but is not an event the runtime would have published.
        let mut r = good();
        r.pid = 0;
        assert!(matches!(problem(r), (Some(0), RecordProblem::Invalid(_))));
        let mut r = good();
        r.event_type = String::new();
        assert_eq!(
            record_to_process(r).unwrap().event_type,
            ProcessEventType::Snapshot
        );
        assert_eq!(
            record_to_event(EventRecord::default()).unwrap_err().problem,
            RecordProblem::Empty
        );
    }

    #[test]
    fn bad_records_of_other_domains_are_refused() {
        let net = |f: fn(&mut proto::NetworkRecord)| {
            let mut r = network_to_record(&NetworkEvent {
                connection_id: 1,
                pid: Some(9),
                ..NetworkEvent::default()
            });
            f(&mut r);
            record_to_event(EventRecord::new("netmond", r)).map_err(|e| (e.kind, e.problem))
        };
        assert!(net(|_| ()).is_ok());
        assert!(matches!(
            net(|r| r.source_port = Some(70_000)),
            Err((
                EventKind::Network,
                RecordProblem::OutOfRange {
                    field: "source_port",
                    ..
                }
            ))
        ));
        assert!(matches!(
            net(|r| r.destination_address = Some("10.0.0.300".into())),
            Err((_, RecordProblem::OutOfRange { .. }))
        ));
        // A key must name the event's own pid.
        assert!(matches!(
            net(|r| r.process_key = ProcessKey::new(BootId::from_bytes([1; 16]), 8, 1).to_string()),
            Err((_, RecordProblem::Invalid(_)))
        ));
        let mut fs = filesystem_to_record(&FilesystemEvent::new(
            "/etc/passwd",
            FileOperation::Modify,
            SystemTime::UNIX_EPOCH,
        ));
        fs.operation = 99;
        assert!(matches!(
            record_to_event(EventRecord::new("fsmond", fs))
                .unwrap_err()
                .problem,
            RecordProblem::OutOfRange {
                field: "operation",
                ..
            }
        ));
    }

    #[test]
    fn performance_records_carry_typed_fields_and_bad_ones_are_refused() {
        let key = ProcessKey::new(BootId::from_bytes([4; 16]), 12, 77);
        let e = PerformanceEvent::new(
            PerformanceMetric::ProcessCpu,
            99.5,
            PerformanceSubject::Process {
                pid: 12,
                process_key: Some(key),
            },
            SystemTime::UNIX_EPOCH,
        )
        .with_anomaly(PerformanceAnomaly {
            kind: PerformanceAnomalyKind::SustainedCpu,
            threshold: 90.0,
            duration: Duration::from_secs(60),
        });
        let r = performance_to_record(&e);
        assert_eq!(r.metric, "process.cpu_percent");
        let s = r.subject.clone().unwrap();
        assert_eq!((s.kind.as_str(), s.pid), ("process", 12));
        assert_eq!(s.process_key, key.to_string());
        let a = r.anomaly.clone().unwrap();
        assert_eq!((a.kind.as_str(), a.duration_ms), ("sustained_cpu", 60_000));
        let back = record_to_performance(r.clone()).unwrap();
        assert_eq!(back, CollectionEvent::Performance(e));
        let bad = |f: fn(&mut proto::PerformanceRecord)| {
            let mut r = r.clone();
            f(&mut r);
            record_to_performance(r).unwrap_err().problem
        };
        assert_eq!(
            bad(|r| r.metric = "cpu.magic".into()),
            RecordProblem::Unknown {
                field: "metric",
                value: "cpu.magic".into()
            }
        );
        assert!(matches!(
            bad(|r| r.metric = String::new()),
            RecordProblem::OutOfRange {
                field: "metric",
                ..
            }
        ));
        assert!(matches!(
            bad(|r| r.subject = None),
            RecordProblem::OutOfRange {
                field: "subject kind",
                ..
            }
        ));
        // A host metric on a process, an anomaly of another metric.
        assert!(matches!(
            bad(|r| r.metric = "load.avg1".into()),
            RecordProblem::Invalid(_)
        ));
        assert!(matches!(
            bad(|r| r.anomaly.as_mut().unwrap().kind = "fork_rate".into()),
            RecordProblem::Invalid(_)
        ));
        assert!(matches!(
            bad(|r| r.anomaly.as_mut().unwrap().kind = "boredom".into()),
            RecordProblem::Unknown {
                field: "anomaly kind",
                ..
            }
        ));
    }

    /// The metrics an anomaly judges.
    const JUDGED: &[PerformanceMetric] = &[
        PerformanceMetric::ProcessCpu,
        PerformanceMetric::ProcessRssGrowth,
        PerformanceMetric::ForkRate,
        PerformanceMetric::PsiCpuSomeAvg10,
        PerformanceMetric::PsiMemorySomeAvg10,
        PerformanceMetric::PsiIoSomeAvg10,
    ];

    #[allow(clippy::too_many_lines)] // one strategy per domain, side by side
    fn arb_other() -> impl Strategy<Value = CollectionEvent> {
        let ip = || {
            proptest::option::of(prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ])
        };
        let owner = proptest::option::of(1u32..).prop_flat_map(|pid| {
            (
                Just(pid),
                pid.map_or_else(|| Just(None).boxed(), |p| strategy::key(p).boxed()),
            )
        });
        let network = (
            (
                any::<u64>(),
                pick(NetworkProtocol::ALL),
                proptest::option::of(pick(AddressFamily::ALL)),
                proptest::option::of(pick(ConnectionState::ALL)),
                proptest::option::of(pick(ConnectionDirection::ALL)),
                proptest::option::of(pick(ConnectionChange::ALL)),
                proptest::option::of(pick(CaptureTier::ALL)),
            ),
            (
                ip(),
                proptest::option::of(any::<u16>()),
                ip(),
                proptest::option::of(any::<u16>()),
            ),
            owner.clone(),
            (
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
            ),
            proptest::option::of(any::<(u64, u64)>()),
            strategy::time(),
        )
            .prop_map(
                |(
                    (id, protocol, family, state, direction, change, tier),
                    (sa, sp, da, dp),
                    (pid, key),
                    (fd, holders, uid, inode, netns),
                    bytes,
                    t,
                )| {
                    CollectionEvent::Network(NetworkEvent {
                        id: None,
                        connection_id: id,
                        source_addr: sa,
                        source_port: sp,
                        dest_addr: da,
                        dest_port: dp,
                        protocol,
                        family,
                        state,
                        direction,
                        change,
                        fd: pid.and(fd),
                        holders,
                        uid,
                        inode,
                        netns,
                        tier,
                        pid,
                        process_key: key,
                        bytes_sent: bytes.map(|b| b.0),
                        bytes_received: bytes.map(|b| b.1),
                        timestamp: t,
                    })
                },
            );
        let ops = FILE_OPERATIONS.map(|(op, _)| op);
        let filesystem = (
            "/[a-z/]{1,30}",
            proptest::sample::select(ops.to_vec()),
            owner,
            proptest::option::of(any::<u64>()),
            proptest::option::of(0u32..=0o7777),
            proptest::option::of("[0-9a-f]{64}"),
            strategy::time(),
            (
                proptest::option::of("/[a-z/]{1,30}"),
                proptest::option::of(proptest::sample::select(FileType::ALL)),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of("[0-9a-f]{64}"),
                proptest::sample::select(HashAlgorithm::ALL),
            ),
            (
                proptest::option::of("/[a-z]{1,10}(/[a-z]{1,10})?"),
                proptest::option::of(0u32..=0o7777),
            ),
        )
            .prop_map(
                |(
                    path,
                    operation,
                    (pid, key),
                    size,
                    perm,
                    hash,
                    t,
                    (old_path, file_type, uid, gid, previous, algorithm),
                    (root, previous_permissions),
                )| {
                    let hashed = hash.is_some() || previous.is_some();
                    CollectionEvent::Filesystem(FilesystemEvent {
                        id: None,
                        path,
                        root,
                        old_path,
                        operation,
                        file_type,
                        pid,
                        process_key: key,
                        size,
                        permissions: perm,
                        previous_permissions,
                        uid,
                        gid,
                        hash_algorithm: hashed.then_some(algorithm),
                        file_hash: hash,
                        previous_hash: previous,
                        timestamp: t,
                    })
                },
            );
        // The judged metrics more often than their share, so that anomalies
        // of every kind are drawn.
        let performance = (
            prop_oneof![pick(PerformanceMetric::ALL), pick(JUDGED)],
            -1e9f64..1e9,
            (1u32.., any::<u32>(), "/?[a-z0-9._/-]{1,20}"),
            proptest::option::of((-1e9f64..1e9, any::<u32>())),
            strategy::time(),
        )
            .prop_flat_map(|(metric, value, (pid, core, name), anomaly, t)| {
                strategy::key(pid).prop_map(move |key| {
                    let subject = match metric.subject_kind() {
                        PerformanceSubjectKind::Cpu => PerformanceSubject::Cpu { core },
                        PerformanceSubjectKind::Process => PerformanceSubject::Process {
                            pid,
                            process_key: key,
                        },
                        PerformanceSubjectKind::Cgroup => {
                            PerformanceSubject::Cgroup { path: name.clone() }
                        }
                        PerformanceSubjectKind::Disk => {
                            PerformanceSubject::Disk { name: name.clone() }
                        }
                        PerformanceSubjectKind::Interface => {
                            PerformanceSubject::Interface { name: name.clone() }
                        }
                        PerformanceSubjectKind::Collector => PerformanceSubject::Collector,
                        _ => PerformanceSubject::Host,
                    };
                    let mut e = PerformanceEvent::new(metric, value, subject, t);
                    // Only an anomaly of a kind that judges the metric is valid.
                    let kind = PerformanceAnomalyKind::ALL
                        .iter()
                        .find(|k| k.judges(metric));
                    if let (Some(&kind), Some((threshold, ms))) = (kind, anomaly) {
                        e = e.with_anomaly(PerformanceAnomaly {
                            kind,
                            threshold,
                            duration: Duration::from_millis(u64::from(ms)),
                        });
                    }
                    CollectionEvent::Performance(e)
                })
            });
        let trigger = (
            ("[a-z0-9-]{1,12}", "[a-z]{1,10}", "[a-z0-9]{0,10}"),
            proptest::sample::select(ANALYSIS_TYPES.map(|(a, _)| a).to_vec()),
            proptest::sample::select(PRIORITIES.map(|(p, _)| p).to_vec()),
            (1u32.., proptest::option::of("/[a-z/]{1,20}")),
            proptest::collection::btree_map("[a-z]{1,6}", "[ -~]{0,8}", 0..3),
            strategy::time(),
        )
            .prop_map(
                |((id, target, corr), analysis_type, priority, (pid, path), metadata, t)| {
                    CollectionEvent::TriggerRequest(TriggerRequest {
                        trigger_id: id,
                        target_collector: target,
                        analysis_type,
                        priority,
                        target_pid: Some(pid),
                        target_path: path,
                        correlation_id: corr,
                        metadata,
                        timestamp: t,
                    })
                },
            );
        prop_oneof![network, filesystem, performance, trigger]
    }

    fn arb_id() -> impl Strategy<Value = Option<EventId>> {
        proptest::option::of(
            (any::<u64>(), 1u64..)
                .prop_map(|(run, seq)| EventId::new(run, std::num::NonZeroU64::new(seq).unwrap())),
        )
    }

    proptest! {
        #[test]
        fn process_events_survive_the_round_trip(e in strategy::process_event(), id in arb_id()) {
            // The id travels on the envelope, not in the process record.
            prop_assert_eq!(record_to_process(process_to_record(&e)).unwrap(), e.clone());
            let mut e = CollectionEvent::Process(e);
            if let Some(id) = id {
                e.name_once(id);
            }
            let record = event_to_record(&e, "p");
            prop_assert_eq!(record.id.is_some(), id.is_some());
            prop_assert_eq!(record_to_event(record).unwrap(), e);
        }

        #[test]
        fn events_of_every_domain_survive_the_round_trip(mut e in arb_other(), id in arb_id()) {
            if let Some(id) = id {
                e.name_once(id);
            }
            prop_assert_eq!(record_to_event(event_to_record(&e, "any")).unwrap(), e);
        }
    }

    #[test]
    fn an_id_of_place_zero_or_on_a_trigger_request_is_refused() {
        let mut r = event_to_record(&crate::testing::sample_process_event(), "p");
        r.id = Some(proto::EventId { run: 5, seq: 0 });
        let err = record_to_event(r).unwrap_err();
        assert!(
            matches!(err.problem, RecordProblem::OutOfRange { field: "id", .. }),
            "{err}"
        );
    }
}
