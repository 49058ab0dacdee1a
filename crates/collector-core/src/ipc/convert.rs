//! Runtime types to protocol messages: events to records, capabilities to
//! domains.

use daemoneye_lib::proto::{self, Domain, EventRecord, Timestamp};

use crate::event::{
    AnalysisType, CollectionEvent, FileOperation, FilesystemEvent, NetworkEvent, PerformanceEvent,
    ProcessEvent, TriggerPriority, TriggerRequest,
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
}
