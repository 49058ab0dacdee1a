//! The `daemoneye-cli` binary: verdicts, exit codes, output.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod anchor;
mod fleet;
// The agent's test helpers: one real broker, one served collector.
#[allow(dead_code)]
#[path = "../../../daemoneye-agent/tests/it/fleet_agent.rs"]
mod fleet_agent;
#[allow(dead_code)]
#[path = "../../../daemoneye-agent/tests/it/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "../../../daemoneye-agent/tests/it/served.rs"]
mod served;

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

/// `rules validate` of `paths`: its report, once it exited with `code`.
fn validate(paths: &[&std::path::Path], code: i32) -> String {
    let out = cli(&["rules", "validate"], paths);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(code), "{text}");
    text
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
    validate(&[&good], 0);

    let bad = write(
        &dir,
        "bad.toml",
        "[[rule]]\nid = 'wiper'\nname = 'w'\nseverity = 'low'\nsql = 'DELETE FROM processes'\n\n\
         [[rule]]\nid = 'fine'\nname = 'f'\nseverity = 'low'\nsql = 'SELECT pid FROM processes'\n",
    );
    let text = validate(&[&good, &bad], 1);
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
    let text = validate(&[&good], 0);
    assert!(text.contains("tmp-exec"), "{text}");

    let bad = write(
        &dir,
        "bad.yml",
        "rule:\n  - id: wiper\n    name: w\n    severity: low\n    sql: DELETE FROM processes\n  - id: typo\n    name: t\n    severity: low\n    sqll: SELECT pid FROM processes\n",
    );
    let text = validate(&[&good, &bad], 1);
    assert!(
        text.contains("bad.yml") && text.contains("unknown field `sqll`"),
        "{text}"
    );
}

#[test]
fn validate_takes_sigma_files_and_names_what_it_cannot_serve() {
    let sigma =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemoneye-rules/tests/sigma");
    let served = sigma.join("served.yml");
    let text = validate(&[&served], 0);
    assert_eq!(text.matches("rule sigma-0a000001-").count(), 18, "{text}");

    let refused = sigma.join("refused.yml");
    let text = validate(&[&served, &refused], 1);
    assert!(
        text.contains("refused.yml")
            && text.contains("sigma-0b000001-0000-4000-8000-000000000001")
            && text.contains("modifier `windash` is not served")
            && text.contains("ok       ")
            && text.contains("sigma-0b000001-0000-4000-8000-000000000009"),
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

/// A data directory whose store holds `alerts` alerts (each with its
/// ledger entry).
fn store_with_alerts(alerts: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let rule = &rules::builtin().unwrap()[0];
    for pid in 1..=alerts {
        let process = AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None);
        store
            .record_alert(&Alert::new(rule, process, SystemTime::now()))
            .unwrap();
    }
    dir
}

#[test]
fn ledger_verifies_then_fails_after_a_row_is_edited() {
    let dir = store_with_alerts(4);
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
fn ledger_verify_after_a_prune_starts_at_the_kept_checkpoint_and_says_so() {
    use daemoneye_store::ledger::{CheckpointEntry, Lost};
    let dir = store_with_alerts(4);
    let mut store = Store::open(dir.path()).unwrap();
    // The head before the cut: an anchor the prune leaves nothing to check.
    let conn = rusqlite::Connection::open(dir.path().join("agent.db")).unwrap();
    let hash: String = conn
        .query_row("SELECT entry_hash FROM ledger WHERE seq = 4", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(conn);
    let old_anchor = format!("4:{hash}");
    store
        .append_entry("checkpoint", |_| CheckpointEntry {
            time: 1,
            lost: Lost::default(),
        })
        .unwrap();
    let rule = &rules::builtin().unwrap()[0];
    for pid in [5, 6] {
        let process = AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None);
        store
            .record_alert(&Alert::new(rule, process, SystemTime::now()))
            .unwrap();
    }
    let keep = daemoneye_store::Retention {
        max_age: Some(std::time::Duration::from_secs(60)),
        max_bytes: None,
    };
    let pruned = store.prune(&keep, i64::MAX).unwrap().unwrap();
    assert_eq!((pruned.below, pruned.alerts), (5, 4));
    drop(store);
    let out = cli(
        &["ledger", "verify", "--anchor", &old_anchor, "--data-dir"],
        &[dir.path()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // The checkpoint, two alerts and the prune entry; the head at 8.
    assert!(stdout.contains("ledger ok: 4 entries, head 8:"), "{stdout}");
    assert!(
        stdout.contains("the chain starts at the checkpoint at seq 5"),
        "{stdout}"
    );
    let out = cli(&["--format", "json", "alerts", "--data-dir"], &[dir.path()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn rules_list_shows_the_builtin_pack() {
    let out = cli(&["rules", "list", "--format", "json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), rules::builtin().unwrap().len());
}

#[test]
fn rules_columns_lists_every_table_the_rules_read_in_the_vocabulary() {
    let out = cli(&["rules", "columns", "--format", "json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = v.as_array().unwrap();
    let of = |table: &str| -> Vec<&str> {
        all.iter()
            .filter(|c| c["table"] == table)
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of("processes"), daemoneye_rules::engine::COLUMNS);
    let names = |list: &[collector_core::vocabulary::Column]| -> Vec<&'static str> {
        list.iter().map(|c| c.name).collect()
    };
    assert_eq!(
        of("connections"),
        names(collector_core::vocabulary::NETWORK)
    );
    assert_eq!(of("file_events"), names(collector_core::vocabulary::FILE));
    assert!(!of("ancestry").is_empty() && !of("performance").is_empty());
    let exe = all
        .iter()
        .find(|c| c["table"] == "processes" && c["name"] == "exe")
        .unwrap();
    assert_eq!(exe["type"], "text");
    let table = cli(&["rules", "columns"], &[]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("processes ")
        && l.contains(" euid ")
        && l.contains("effective user id")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("file_events ") && l.contains(" setuid ")));
    // One table's alone; an unknown one is named.
    let one = cli(&["rules", "columns", "--table", "file_events"], &[]);
    let text = String::from_utf8(one.stdout).unwrap();
    assert!(text.lines().skip(1).all(|l| l.starts_with("file_events ")));
    let bad = cli(&["rules", "columns", "--table", "files"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("file_events"));
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
    // Lifecycle events are queryable, snapshots are not lifecycle events;
    // the exec and exit of 42 are one row.
    let q = cli(
        &[
            "query",
            "SELECT count(*) AS n, count(exited_at) AS exits FROM process_events",
            "--format",
            "json",
            "--data-dir",
        ],
        &[dir.path()],
    );
    assert_eq!(
        String::from_utf8(q.stdout).unwrap().trim(),
        r#"{"exits":1,"n":2}"#
    );
}

#[test]
fn query_joins_processes_and_connections_on_the_process_key() {
    let dir = tempfile::tempdir().unwrap();
    let key =
        |pid| collector_core::ProcessKey::new(collector_core::BootId::from_bytes([4; 16]), pid, 77);
    {
        let mut store = Store::open(dir.path()).unwrap();
        let mut shell = ProcessEvent::new(50, "bash");
        shell.process_key = Some(key(50));
        shell.event_type = collector_core::ProcessEventType::Exec;
        shell.accessible = true;
        shell.command_line = vec!["bash".into(), "-i".into()];
        store.record_events(&[shell]).unwrap();
        // Its stdin a socket, and another process's socket on fd 7.
        let socket =
            |pid, fd| collector_core::testing::loopback_connection(pid, key(pid), fd, 4444);
        store
            .write_timed(
                vec![socket(50, 0), socket(51, 7)],
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
    }
    let q = cli(
        &[
            "query",
            "SELECT p.pid, p.name, c.fd, c.remote_port FROM processes p \
             JOIN connections c ON c.process_key = p.process_key WHERE c.protocol = 'tcp'",
            "--format",
            "json",
            "--data-dir",
        ],
        &[dir.path()],
    );
    assert!(q.status.success(), "{q:?}");
    assert_eq!(
        String::from_utf8(q.stdout).unwrap().trim(),
        r#"{"fd":0,"name":"bash","pid":50,"remote_port":4444}"#
    );
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

/// Runs the cli as an unprivileged user when this test runs as root (so
/// file modes bind), as this user otherwise.
fn cli_unprivileged(args: &[&str], paths: &[&std::path::Path]) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(BIN);
    cmd.args(args).args(paths);
    if running_as_root() {
        cmd.uid(65534).gid(65534);
    }
    cmd.output().unwrap()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
#[cfg(target_os = "linux")]
fn ledger_verify_on_a_store_it_cannot_read_exits_2_with_the_cause_never_broken() {
    let dir = store_with_alerts(3);
    let verify_as = |dir: &std::path::Path, unprivileged: bool| {
        let args = ["ledger", "verify", "--data-dir"];
        let out = if unprivileged {
            cli_unprivileged(&args, &[dir])
        } else {
            cli(&args, &[dir])
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(!stdout.contains("BROKEN"), "{stdout}");
        (out.status.code(), stderr)
    };
    let verify = |dir: &std::path::Path| verify_as(dir, true);
    // A read-only copy: the directory and its files, no write anywhere.
    let copy = tempfile::tempdir().unwrap();
    chmod(copy.path(), 0o755);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let from = entry.unwrap().path();
        let to = copy.path().join(from.file_name().unwrap());
        std::fs::copy(&from, &to).unwrap();
        chmod(&to, 0o444);
    }
    chmod(copy.path(), 0o555);
    let (code, stderr) = verify(copy.path());
    chmod(copy.path(), 0o755);
    // Readable after all (SQLite may manage): then it verifies.
    if code != Some(0) {
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("daemoneye-cli:") && stderr.len() > 20,
            "{stderr}"
        );
    }
    // Permission denied on the database.
    let db = dir.path().join("agent.db");
    chmod(dir.path(), 0o755);
    chmod(&db, 0o000);
    let (code, stderr) = verify(dir.path());
    chmod(&db, 0o600);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.to_lowercase().contains("agent.db"), "{stderr}");
    // A page of the ledger unreadable (the copy was cut, a disk failed):
    // the store opens, but the ledger cannot be read, so nothing is known
    // of the chain.
    let cut = tempfile::tempdir().unwrap();
    chmod(cut.path(), 0o755);
    let cut_db = cut.path().join("agent.db");
    std::fs::copy(&db, &cut_db).unwrap();
    {
        let conn = rusqlite::Connection::open(&cut_db).unwrap();
        let (root, page): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT rootpage FROM sqlite_master WHERE name = 'ledger'), page_size \
                 FROM pragma_page_size",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mut bytes = std::fs::read(&cut_db).unwrap();
        let at = usize::try_from((root - 1) * page).unwrap();
        let len = usize::try_from(page).unwrap();
        bytes[at..at + len].fill(0xff);
        std::fs::write(&cut_db, bytes).unwrap();
    }
    let (code, stderr) = verify_as(cut.path(), false);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot verify the ledger") && stderr.contains("malformed"),
        "{stderr}"
    );
    // Not a database.
    let junk = tempfile::tempdir().unwrap();
    chmod(junk.path(), 0o755);
    std::fs::write(junk.path().join("agent.db"), vec![0x5a; 8192]).unwrap();
    chmod(&junk.path().join("agent.db"), 0o644);
    let (code, stderr) = verify(junk.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a database"), "{stderr}");
}

#[test]
fn query_is_bounded_like_the_rules_and_streams_its_rows() {
    let dir = store_with_alerts(2);
    let query = |sql: &str| {
        let out = cli(
            &["query", sql, "--format", "json", "--data-dir"],
            &[dir.path()],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Functions outside the allow-list, pragmas and their tables: refused.
    for sql in [
        "SELECT randomblob(900000000)",
        "SELECT zeroblob(10)",
        "PRAGMA hard_heap_limit = 1",
        "SELECT * FROM pragma_compile_options",
    ] {
        let (code, _, stderr) = query(sql);
        assert_eq!(code, Some(2), "{sql}");
        assert!(stderr.contains("refused"), "{sql}: {stderr}");
    }
    // Values past the length limit fail at once, without the memory.
    let (code, _, stderr) =
        query("SELECT length(replace(printf('%.*c', 10000000, 'x'), 'x', 'xy')) AS big");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("too big"), "{stderr}");
    // A query that never ends stops at the time limit (5 s), and says so.
    let (code, _, stderr) = query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("time limit"), "{stderr}");
    // Rows stream out: the first lines come while the query still runs
    // (here until the time limit), then the failure.
    let out = cli(
        &[
            "query",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
             SELECT i FROM n WHERE i < 4 OR i > 1000000000000",
            "--data-dir",
        ],
        &[dir.path()],
    );
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["i", "1", "2", "3"],
        "{text}"
    );
    // Good queries still work, JSON or table.
    let (code, stdout, _) = query("SELECT count(*) AS n, max(pid) AS top FROM alerts");
    assert_eq!((code, stdout.trim()), (Some(0), "{\"n\":2,\"top\":2}"));
}

#[test]
fn validate_refuses_a_pragma_without_running_it_and_rules_after_it_still_validate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("heap.toml");
    std::fs::write(
        &file,
        "[[rule]]\nid = 'heap'\nname = 'h'\nseverity = 'low'\nsql = 'PRAGMA hard_heap_limit = 1'\n\n\
         [[rule]]\nid = 'opts'\nname = 'o'\nseverity = 'low'\nsql = 'SELECT 1 AS pid FROM pragma_compile_options'\n\n\
         [[rule]]\nid = 'fine'\nname = 'f'\nseverity = 'low'\nsql = \"SELECT pid FROM processes WHERE exe LIKE '/tmp/%'\"\n",
    )
    .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[rule]]\nid = 'later'\nname = 'l'\nseverity = 'low'\nsql = 'SELECT pid, group_concat(name) FROM processes GROUP BY pid'\n",
    )
    .unwrap();
    let out = cli(&["rules", "validate", "--format", "json"], &[&file, &good]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |key: &str, field: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[field].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("accepted", "id"), ["fine", "later"]);
    assert_eq!(ids("refused", "rule"), ["heap", "opts"]);
    let reasons = ids("refused", "reason").join("\n");
    assert!(
        reasons.contains("PRAGMA hard_heap_limit") && reasons.contains("pragma_compile_options"),
        "{reasons}"
    );
    // A rule file that never ends is refused at once.
    #[cfg(unix)]
    {
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(validate(&[&zero], 1).contains("larger than"));
    }
}
