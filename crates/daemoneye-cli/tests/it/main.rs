//! The `daemoneye-cli` binary: verdicts, exit codes, output.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;
use std::time::SystemTime;

use collector_core::ProcessEvent;
use daemoneye_rules::rules;
use daemoneye_store::alert::{Alert, AlertProcess};
use daemoneye_store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_daemoneye-cli");

/// Runs the cli with `args`, then `paths`.
fn cli(args: &[&str], paths: &[&std::path::Path]) -> std::process::Output {
    Command::new(BIN).args(args).args(paths).output().unwrap()
}

/// One rule the validator accepts, in each format.
const GOOD_TOML: &str = "[[rule]]\nid = 'tmp-exec'\nname = 'tmp'\nseverity = 'high'\nsql = \"SELECT pid FROM processes WHERE exe LIKE '/tmp/%'\"\n";
const GOOD_YAML: &str = "rule:\n  - id: tmp-exec\n    name: tmp\n    severity: high\n    sql: SELECT pid FROM processes WHERE exe LIKE '/tmp/%'\n";

/// Writes `text` to the file `name` in `dir`; its path.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn validate_accepts_good_rules_and_names_rule_file_and_reason_of_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", GOOD_TOML);
    let out = cli(&["rules", "validate"], &[&good]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = write(
        &dir,
        "bad.toml",
        "[[rule]]\nid = 'wiper'\nname = 'w'\nseverity = 'low'\nsql = 'DELETE FROM processes'\n\n\
         [[rule]]\nid = 'fine'\nname = 'f'\nseverity = 'low'\nsql = 'SELECT pid FROM processes'\n",
    );
    let out = cli(&["rules", "validate"], &[&good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.toml")
            && text.contains("wiper")
            && text.contains("only reading is allowed"),
        "{text}"
    );
    assert!(
        text.contains("ok") && text.contains("fine"),
        "the good rules still pass: {text}"
    );
}

#[test]
fn validate_reads_yaml_files_and_names_them_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.yaml", GOOD_YAML);
    let out = cli(&["rules", "validate"], &[&good]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("tmp-exec"), "{text}");

    let bad = write(
        &dir,
        "bad.yml",
        "rule:\n  - id: wiper\n    name: w\n    severity: low\n    sql: DELETE FROM processes\n  - id: typo\n    name: t\n    severity: low\n    sqll: SELECT pid FROM processes\n",
    );
    let out = cli(&["rules", "validate"], &[&good, &bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.yml") && text.contains("unknown field `sqll`"),
        "{text}"
    );
}

#[test]
fn bad_flags_exit_with_2() {
    for args in [
        &["rules", "validate"][..],
        &["--format", "xml", "alerts"],
        &["--data-dir", "/nonexistent/daemoneye", "alerts"],
    ] {
        assert_eq!(cli(args, &[]).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn ledger_verifies_then_fails_after_a_row_is_edited() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let rule = &rules::builtin().unwrap()[0];
        for pid in 1..=4 {
            let process = AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None);
            store
                .record_alert(&Alert::new(rule, process, SystemTime::now()))
                .unwrap();
        }
    }
    let verify = || cli(&["ledger", "verify", "--data-dir"], &[dir.path()]);
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 entries"));

    let conn = rusqlite::Connection::open(dir.path().join("agent.db")).unwrap();
    conn.execute(
        "UPDATE ledger SET content = replace(content, 'x', 'y') WHERE seq = 3",
        [],
    )
    .unwrap();
    drop(conn);
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("entry 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = cli(
        &[
            "query",
            "SELECT count(*) AS n FROM alerts",
            "--format",
            "json",
            "--data-dir",
        ],
        &[dir.path()],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{\"n\":4}");
    let out = cli(
        &["query", "DELETE FROM alerts", "--data-dir"],
        &[dir.path()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only reading"));

    let out = cli(&["--format", "json", "alerts", "--data-dir"], &[dir.path()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}

#[test]
fn rules_list_shows_the_builtin_pack() {
    let out = cli(&["rules", "list", "--format", "json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), rules::builtin().unwrap().len());
}

#[test]
fn rules_columns_lists_the_vocabulary_the_rules_table_has() {
    let out = cli(&["rules", "columns", "--format", "json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, daemoneye_rules::engine::COLUMNS);
    let exe = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "exe")
        .unwrap();
    assert_eq!(exe["type"], "text");
    let table = cli(&["rules", "columns"], &[]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text
        .lines()
        .any(|l| l.starts_with("euid ") && l.contains("effective user id")));
}

#[test]
fn processes_lists_what_the_agent_knows_alive() {
    use collector_core::ProcessEventType::{Exec, Exit, Snapshot};

    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let ev = |pid: u32, ty: collector_core::ProcessEventType, argv: &[&str]| {
            let mut e = ProcessEvent::new(pid, argv[0]);
            // A pid alone does not name a process: the store keys by this.
            e.process_key = Some(collector_core::ProcessKey::new(
                collector_core::BootId::from_bytes([4; 16]),
                pid,
                77,
            ));
            e.event_type = ty;
            e.accessible = true;
            e.ppid = Some(1);
            e.command_line = argv.iter().map(ToString::to_string).collect();
            e
        };
        store
            .record_events(&[
                ev(40, Snapshot, &["sshd", "-D"]),
                ev(41, Exec, &["sleep", "60"]),
                ev(42, Exec, &["true"]),
                ev(42, Exit, &["true"]),
            ])
            .unwrap();
    }
    let out = cli(
        &["processes", "--format", "json", "--data-dir"],
        &[dir.path()],
    );
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pids: Vec<u64> = listed.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, [40, 41], "the exited process is gone");
    assert_eq!(listed[1]["argv"], serde_json::json!(["sleep", "60"]));
    assert_eq!(listed[1]["last_event"], "exec");
    let table = cli(&["processes", "--data-dir"], &[dir.path()]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("sshd -D") && text.contains("sleep 60"),
        "{text}"
    );
    // Lifecycle events are queryable, snapshots are not lifecycle events.
    let q = cli(
        &[
            "query",
            "SELECT count(*) AS n FROM process_events",
            "--format",
            "json",
            "--data-dir",
        ],
        &[dir.path()],
    );
    assert_eq!(String::from_utf8(q.stdout).unwrap().trim(), r#"{"n":3}"#);
}

#[test]
fn health_asks_the_agent_over_its_socket() {
    use collector_core::{CollectorIpcServer, IpcServerConfig, SourceCaps};
    use daemoneye_lib::proto::{ComponentHealth, HealthState};

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(
        HealthState::Healthy.into(),
    ));
    let s = state.clone();
    let server = rt.block_on(async {
        let mut server = CollectorIpcServer::new(
            IpcServerConfig::new(dir.path().join("agent.sock")),
            SourceCaps::empty(),
        )
        .await
        .unwrap()
        .with_health(move || {
            let state = s.load(std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                ComponentHealth {
                    name: "daemoneye-agent".into(),
                    state,
                    pid: 77,
                    counters: [("collector_restarts".to_owned(), 2)].into(),
                    components: vec![ComponentHealth {
                        name: "procmond".into(),
                        state: HealthState::Healthy.into(),
                        ..ComponentHealth::default()
                    }],
                    ..ComponentHealth::default()
                }
            })
        });
        let handle = server.handle();
        let task = tokio::spawn(async move {
            server
                .start(|t| {
                    Box::pin(async move {
                        daemoneye_lib::proto::DetectionResult::failure(&t.task_id, "no")
                    })
                })
                .await
        });
        (handle, task)
    });
    let ask = |format: &str| cli(&["health", "--format", format, "--data-dir"], &[dir.path()]);
    let out = ask("json");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "daemoneye-agent");
    assert_eq!(v["state"], "healthy");
    assert_eq!(v["counters"]["collector_restarts"], 2);
    assert_eq!(v["components"][0]["name"], "procmond");
    assert_eq!(
        v["components"][1]["name"], "ipc",
        "the server's own counters"
    );
    let table = ask("table");
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.starts_with("daemoneye-agent") && text.contains("  procmond"),
        "{text}"
    );
    // Not healthy: exit 1, and it says so.
    state.store(
        HealthState::Degraded.into(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let out = ask("table");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stdout).unwrap().contains("degraded"));
    // Nobody there: exit 1 with a reason.
    rt.block_on(async {
        server.0.shutdown();
        server.1.await.unwrap().unwrap();
    });
    let out = ask("table");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot ask"));
}
