//! Runtime types to protocol messages: events to records, capabilities to
//! domains.

use daemoneye_lib::proto::{self, Domain, EventRecord, Timestamp};

use crate::event::{
    AnalysisType, CollectionEvent, FileOperation, FilesystemEvent, HashAlgorithm, NetworkEvent,
    PerformanceEvent, ProcessEvent, ProcessEventType, TriggerPriority, TriggerRequest,
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
        process_key: e.process_key.map(|k| k.to_string()).unwrap_or_default(),
        event_type: e.event_type.as_str().to_owned(),
        exit_code: e.exit_code,
    }
}

/// Why a streamed [`ProcessRecord`](proto::ProcessRecord) could not be
/// turned back into a [`ProcessEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A timestamp was out of range.
    #[error("record of pid {pid}: {source}")]
    Time {
        /// The record's pid.
        pid: u32,
        /// The timestamp error.
        #[source]
        source: proto::ProtoError,
    },
    /// A required timestamp was missing.
    #[error("record of pid {pid}: no observation time")]
    NoTimestamp {
        /// The record's pid.
        pid: u32,
    },
    /// The process key was not `boot_id:pid:start_ticks`.
    #[error("record of pid {pid}: invalid process key {key:?}")]
    ProcessKey {
        /// The record's pid.
        pid: u32,
        /// The key as received.
        key: String,
    },
    /// A name this side does not know (an event type or hash algorithm from
    /// a newer collector).
    #[error("record of pid {pid}: unknown {field} {value:?}")]
    Unknown {
        /// The record's pid.
        pid: u32,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The event the record describes is invalid.
    #[error("record of pid {pid}: {reason}")]
    Invalid {
        /// The record's pid.
        pid: u32,
        /// What is wrong.
        reason: String,
    },
}

/// The inverse of [`process_to_record`]: a received record as the event the
/// collector published, checked as the runtime checks events
/// ([`CollectionEvent::validate`]). An empty event type is a snapshot.
///
/// # Errors
/// [`RecordError`] naming the pid and the field, for a record that is out
/// of range, names an unknown event type or algorithm, or is invalid.
pub fn record_to_process(r: proto::ProcessRecord) -> Result<ProcessEvent, RecordError> {
    use std::time::SystemTime;

    let pid = r.pid;
    let time =
        |t: Timestamp| SystemTime::try_from(t).map_err(|source| RecordError::Time { pid, source });
    let event_type = match r.event_type.as_str() {
        "" => ProcessEventType::Snapshot,
        name => ProcessEventType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| RecordError::Unknown {
                pid,
                field: "event type",
                value: r.event_type.clone(),
            })?,
    };
    let hash_algorithm = match r.hash_algorithm.as_deref() {
        None => None,
        Some("sha256") => Some(HashAlgorithm::Sha256),
        Some("blake3") => Some(HashAlgorithm::Blake3),
        Some(other) => {
            return Err(RecordError::Unknown {
                pid,
                field: "hash algorithm",
                value: other.to_owned(),
            })
        }
    };
    let process_key = r
        .parsed_process_key()
        .map_err(|_| RecordError::ProcessKey {
            pid,
            key: r.process_key.clone(),
        })?;
    let event = ProcessEvent {
        event_type,
        pid,
        ppid: r.ppid,
        name: r.name,
        executable_path: r.executable_path,
        command_line: r.command_line,
        start_time: r.start_time.map(time).transpose()?,
        cpu_usage: r.cpu_usage,
        memory_usage: r.memory_usage,
        executable_hash: r.executable_hash,
        hash_algorithm,
        user_id: r.user_id,
        accessible: r.accessible,
        file_exists: r.file_exists,
        timestamp: time(r.timestamp.ok_or(RecordError::NoTimestamp { pid })?)?,
        platform_metadata: r.platform_metadata,
        process_key,
        exit_code: r.exit_code,
    };
    event.validate().map_err(|e| RecordError::Invalid {
        pid,
        reason: e.to_string(),
    })?;
    Ok(event)
}

fn network_to_record(e: &NetworkEvent) -> proto::NetworkRecord {
    proto::NetworkRecord {
        connection_id: e.connection_id.clone(),
        source_address: e.source_addr.map(|a| a.to_string()),
        source_port: e.source_port.map(u32::from),
        destination_address: e.dest_addr.map(|a| a.to_string()),
        destination_port: e.dest_port.map(u32::from),
        protocol: e.protocol.clone(),
        state: e.state.clone(),
        pid: e.pid,
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
        timestamp: Some(e.timestamp.into()),
        process_key: String::new(),
    }
}

const fn file_operation(op: &FileOperation) -> proto::FileOperation {
    match op {
        FileOperation::Create => proto::FileOperation::Create,
        FileOperation::Open => proto::FileOperation::Open,
        FileOperation::Access => proto::FileOperation::Access,
        FileOperation::Modify => proto::FileOperation::Modify,
        FileOperation::CloseWrite => proto::FileOperation::CloseWrite,
        FileOperation::Delete => proto::FileOperation::Delete,
        FileOperation::Rename => proto::FileOperation::Rename,
        FileOperation::Attrib => proto::FileOperation::Attrib,
    }
}

fn filesystem_to_record(e: &FilesystemEvent) -> proto::FilesystemRecord {
    proto::FilesystemRecord {
        path: e.path.clone(),
        operation: file_operation(&e.operation).into(),
        pid: e.pid,
        size: e.size,
        permissions: e.permissions,
        file_hash: e.file_hash.clone(),
        hash_algorithm: e.hash_algorithm.map(|a| a.as_str().to_owned()),
        timestamp: Some(e.timestamp.into()),
        process_key: String::new(),
    }
}

fn performance_to_record(e: &PerformanceEvent) -> proto::PerformanceRecord {
    proto::PerformanceRecord {
        metric_name: e.metric_name.clone(),
        value: e.value,
        unit: e.unit.clone(),
        pid: e.pid,
        component: e.component.clone(),
        timestamp: Some(e.timestamp.into()),
    }
}

const fn analysis_name(t: AnalysisType) -> &'static str {
    match t {
        AnalysisType::BinaryHash => "binary_hash",
        AnalysisType::MemoryAnalysis => "memory_analysis",
        AnalysisType::NetworkAnalysis => "network_analysis",
        AnalysisType::FilesystemAnalysis => "filesystem_analysis",
        AnalysisType::BehavioralAnalysis => "behavioral_analysis",
    }
}

const fn priority_name(p: TriggerPriority) -> &'static str {
    match p {
        TriggerPriority::Low => "low",
        TriggerPriority::Normal => "normal",
        TriggerPriority::High => "high",
        TriggerPriority::Critical => "critical",
    }
}

fn trigger_to_record(e: &TriggerRequest) -> proto::TriggerRequestRecord {
    proto::TriggerRequestRecord {
        trigger_id: e.trigger_id.clone(),
        target_collector: e.target_collector.clone(),
        analysis_type: analysis_name(e.analysis_type).to_owned(),
        priority: priority_name(e.priority).to_owned(),
        target_pid: e.target_pid,
        target_path: e.target_path.clone(),
        correlation_id: e.correlation_id.clone(),
        metadata: e.metadata.clone(),
        timestamp: Some(e.timestamp.into()),
    }
}

/// An event as a streamed [`EventRecord`] from the source `source`.
pub fn event_to_record(event: &CollectionEvent, source: &str) -> EventRecord {
    let event: proto::event_record::Event = match event {
        CollectionEvent::Process(e) => process_to_record(e).into(),
        CollectionEvent::Network(e) => network_to_record(e).into(),
        CollectionEvent::Filesystem(e) => filesystem_to_record(e).into(),
        CollectionEvent::Performance(e) => performance_to_record(e).into(),
        CollectionEvent::TriggerRequest(e) => trigger_to_record(e).into(),
    };
    EventRecord::new(source, event)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::event::{BootId, HashAlgorithm, ProcessEventType, ProcessKey};

    #[test]
    fn process_events_keep_every_field() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let key = ProcessKey::new(BootId::from_bytes([7; 16]), 42, 1234);
        let e = ProcessEvent {
            event_type: ProcessEventType::Exit,
            pid: 42,
            ppid: Some(1),
            name: "sshd".into(),
            executable_path: Some("/usr/sbin/sshd".into()),
            command_line: vec!["sshd".into(), "-D".into()],
            start_time: Some(start),
            cpu_usage: Some(1.5),
            memory_usage: Some(4096),
            executable_hash: Some("ab".repeat(32)),
            hash_algorithm: Some(HashAlgorithm::Sha256),
            user_id: Some(0),
            accessible: true,
            file_exists: false,
            timestamp: start + Duration::from_millis(5),
            platform_metadata: [("cgroup".to_owned(), "/".to_owned())].into(),
            process_key: Some(key),
            exit_code: Some(256),
        };
        let r = process_to_record(&e);
        assert_eq!(r.pid, 42);
        assert_eq!(r.ppid, Some(1));
        assert_eq!(r.name, "sshd");
        assert_eq!(r.executable_path.as_deref(), Some("/usr/sbin/sshd"));
        assert_eq!(r.command_line, ["sshd", "-D"]);
        assert_eq!(SystemTime::try_from(r.start_time.unwrap()).unwrap(), start);
        assert_eq!(r.cpu_usage, Some(1.5));
        assert_eq!(r.memory_usage, Some(4096));
        assert_eq!(r.executable_hash, e.executable_hash);
        assert_eq!(r.hash_algorithm.as_deref(), Some("sha256"));
        assert_eq!(r.user_id, Some(0));
        assert!(r.accessible);
        assert!(!r.file_exists);
        assert_eq!(
            SystemTime::try_from(r.timestamp.unwrap()).unwrap(),
            e.timestamp
        );
        assert_eq!(r.platform_metadata, e.platform_metadata);
        assert_eq!(r.parsed_process_key().unwrap(), Some(key));
        assert_eq!(r.event_type, "exit");
        assert_eq!(r.exit_code, Some(256));

        assert_eq!(
            record_to_process(r).unwrap(),
            e,
            "the inverse gives the event back"
        );

        let rec = event_to_record(&CollectionEvent::Process(e), "procmond");
        assert_eq!(rec.kind(), proto::EventKind::Process);
        assert_eq!(rec.source_name, "procmond");
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
        for kind in crate::EventKind::ALL {
            assert_eq!(
                kind_to_proto(kind).as_str_name().to_lowercase(),
                format!("event_kind_{kind}")
            );
        }
    }

    #[test]
    fn bad_records_are_refused_naming_pid_and_field() {
        let good = || process_to_record(&ProcessEvent::new(7, "x"));
        assert!(record_to_process(good()).is_ok());
        let mut r = good();
        r.event_type = "teleported".into();
        let err = record_to_process(r).unwrap_err();
        assert!(
            matches!(
                &err,
                RecordError::Unknown {
                    pid: 7,
                    field: "event type",
                    ..
                }
            ),
            "{err}"
        );
        let mut r = good();
        r.hash_algorithm = Some("md5".into());
        assert!(matches!(
            record_to_process(r),
            Err(RecordError::Unknown {
                field: "hash algorithm",
                ..
            })
        ));
        let mut r = good();
        r.process_key = "nonsense".into();
        assert!(matches!(
            record_to_process(r),
            Err(RecordError::ProcessKey { pid: 7, .. })
        ));
        let mut r = good();
        r.timestamp = None;
        assert_eq!(
            record_to_process(r),
            Err(RecordError::NoTimestamp { pid: 7 })
        );
        let mut r = good();
        r.start_time = Some(Timestamp {
            seconds: 1,
            nanos: -1,
        });
        assert!(matches!(
            record_to_process(r),
            Err(RecordError::Time { pid: 7, .. })
        ));
        // Decodes, but is not an event the runtime would have published.
        let mut r = good();
        r.pid = 0;
        assert!(matches!(
            record_to_process(r),
            Err(RecordError::Invalid { pid: 0, .. })
        ));
        let mut r = good();
        r.event_type = String::new();
        assert_eq!(
            record_to_process(r).unwrap().event_type,
            ProcessEventType::Snapshot
        );
    }

    proptest::proptest! {
        #[test]
        fn process_events_survive_the_round_trip(
            pid in 1u32..,
            ppid in proptest::option::of(1u32..),
            name in "[a-z]{1,15}",
            exe in proptest::option::of("/[a-z/]{1,40}"),
            argv in proptest::collection::vec("[ -~]{0,20}", 0..6),
            secs in 0u64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            uid in proptest::option::of(0u32..70_000),
            ty in 0usize..ProcessEventType::ALL.len(),
            accessible: bool,
            file_exists: bool,
            exit_code in proptest::option::of(proptest::num::i32::ANY),
            ticks: u64,
        ) {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            let event_type = ProcessEventType::ALL[ty];
            // Only exits carry a wait status (the runtime's rule).
            let exit_code = exit_code.filter(|_| event_type == ProcessEventType::Exit);
            let e = ProcessEvent {
                event_type,
                pid,
                ppid,
                name,
                executable_path: exe,
                command_line: argv,
                start_time: Some(t),
                user_id: uid,
                accessible,
                file_exists,
                timestamp: t + Duration::from_millis(3),
                process_key: Some(ProcessKey::new(BootId::from_bytes([3; 16]), pid, ticks)),
                exit_code,
                ..ProcessEvent::default()
            };
            proptest::prop_assert_eq!(record_to_process(process_to_record(&e)).unwrap(), e);
        }
    }
}
