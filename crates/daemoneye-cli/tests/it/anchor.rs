//! The ledger's head leaves the host: the agent writes a checkpoint line to
//! its file sink at start and at shutdown, and `ledger verify --anchor`
//! with that file catches what verifies without it: a cut tail, a deleted
//! ledger, a chain rebuilt by whoever can write the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::ProcessEvent;
use daemoneye_agent::agent::Agent;
use daemoneye_agent::config::{AgentConfig, RunArgs, Settings};
use daemoneye_rules::rules;
use daemoneye_store::alert::{Alert, AlertProcess};
use daemoneye_store::ledger::{self, Checkpoint};
use daemoneye_store::{Store, StoreWriter};
use tokio_util::sync::CancellationToken;

use crate::{chmod, cli, cli_unprivileged};

/// Settings with data in `data`, checkpoints and sweeps an hour apart (so
/// only the start and shutdown ones are taken), alerts to `file`, and one
/// collector whose socket nobody serves (the agent keeps trying).
fn settings(dir: &Path, data: &Path, file: &Path) -> Settings {
    let toml = format!(
        "data_dir = \"{}\"\nsweep_interval = \"1h\"\ncheckpoint_interval = \"1h\"\n\
         sinks = {{ alerts_jsonl = \"{}\" }}\n\
         [[collector]]\nname = \"absent\"\nsocket = \"{}\"\n",
        data.display(),
        file.display(),
        dir.join("absent.sock").display(),
    );
    Settings::resolve(
        AgentConfig::from_toml_str(&toml).unwrap(),
        None,
        &RunArgs::default(),
    )
    .unwrap()
}

/// Runs the agent once and stops it cleanly.
async fn run_agent(settings: Settings) {
    let agent = Agent::build(settings).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the agent stops when told")
        .unwrap();
}

/// The checkpoint lines of the file sink's output.
fn checkpoints(file: &Path) -> Vec<Checkpoint> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"checkpoint\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A copy of the data directory `data` (agent.db and what SQLite keeps
/// beside it) with the anchor file, writable; the copy's directory.
fn copy(data: &Path, file: &Path) -> (tempfile::TempDir, PathBuf) {
    let to = copy_store(data);
    let anchors = to.path().join("alerts.jsonl");
    std::fs::copy(file, &anchors).unwrap();
    (to, anchors)
}

/// `ledger verify` on `data`, with `--anchor` for each of `anchors`: exit
/// code and stdout.
fn verify(data: &Path, anchors: &[&str]) -> (Option<i32>, String) {
    let out = verify_as(&[], data, anchors);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

/// [`verify`] with `--format json`: exit code and the report.
fn verify_json(data: &Path, anchors: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = verify_as(&["--format", "json"], data, anchors);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

fn verify_as(global: &[&str], data: &Path, anchors: &[&str]) -> std::process::Output {
    let mut args = global.to_vec();
    args.extend(["ledger", "verify"]);
    for a in anchors {
        args.extend(["--anchor", a]);
    }
    args.push("--data-dir");
    cli(&args, &[data])
}

/// A copy of the data directory `data` (agent.db and what SQLite keeps
/// beside it), writable.
pub(crate) fn copy_store(data: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(data).unwrap() {
        let from = entry.unwrap().path();
        if from.extension().is_some_and(|e| e == "sock") {
            continue;
        }
        std::fs::copy(&from, to.path().join(from.file_name().unwrap())).unwrap();
    }
    to
}

/// Rewrites pid 2 as 7 in the alerts of the store in `data`, their ledger
/// entries too, and recomputes the whole chain with the store's hashing:
/// what whoever can write the file can do, which verifies without an
/// anchor.
pub(crate) fn forge(data: &Path) {
    let conn = rusqlite::Connection::open(data.join("agent.db")).unwrap();
    conn.execute_batch(
        "UPDATE ledger SET content = replace(content, '\"pid\":2', '\"pid\":7') \
           WHERE kind = 'alert';
         UPDATE alerts SET pid = 7, body = replace(body, '\"pid\":2', '\"pid\":7') \
           WHERE pid = 2;",
    )
    .unwrap();
    let rows: Vec<(i64, String, String)> = conn
        .prepare("SELECT seq, kind, content FROM ledger ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev = ledger::to_hex(&ledger::GENESIS);
    for (seq, kind, content) in rows {
        let hash = ledger::entry_hash(seq, &kind, &content, &prev);
        conn.execute(
            "UPDATE ledger SET prev_hash = ?1, entry_hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

/// A [`copy`] of `data` with `edit` run on its store, which (the finding)
/// still verifies without an anchor.
fn tampered(data: &Path, file: &Path, edit: &str) -> (tempfile::TempDir, PathBuf) {
    let (to, anchors) = copy(data, file);
    sql(to.path(), edit);
    let (code, out) = verify(to.path(), &[]);
    assert_eq!(code, Some(0), "the finding: {edit} verifies: {out}");
    (to, anchors)
}

fn sql(data: &Path, sql: &str) {
    rusqlite::Connection::open(data.join("agent.db"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn checkpoints_leave_the_host_and_anchor_the_ledger_against_cuts_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("alerts.jsonl");

    // A clean run: start, its checkpoint; stop, the last checkpoint.
    run_agent(settings(dir.path(), &data, &file)).await;
    let first = checkpoints(&file);
    assert_eq!(
        first.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [2, 4],
        "a checkpoint at start (after the start entry) and at shutdown (after the stop)"
    );
    // Then alerts, and a run that was killed: a start and no stop.
    {
        let writer = StoreWriter::start(Store::open(&data).unwrap(), 16).unwrap();
        writer.record_start("0.0.0", 1).await.unwrap();
        let rule = &rules::builtin().unwrap()[0];
        for pid in 1..=3 {
            let process = AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None);
            writer
                .alert(Alert::new(rule, process, SystemTime::now()))
                .await;
        }
        writer.close().await;
    }
    run_agent(settings(dir.path(), &data, &file)).await;
    let all = checkpoints(&file);
    assert_eq!(
        all.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [2, 4, 10, 12]
    );
    let newest = all.last().unwrap().clone();
    assert!(
        all.iter().all(|c| c.lost.is_none() && c.time > 0),
        "{all:?}"
    );
    let file_arg = file.to_str().unwrap();

    // (a) Every checkpoint in the file holds; the unclean end is named.
    let (code, out) = verify(&data, &[file_arg]);
    assert_eq!(code, Some(0), "{out}");
    for c in &all {
        assert!(
            out.contains(&format!("anchor {}:{} held", c.seq, c.head)),
            "{out}"
        );
    }
    assert!(out.contains("ledger ok: 12 entries"), "{out}");
    assert!(
        out.contains("1 ended uncleanly (no stop before the start at seq 9)"),
        "{out}"
    );
    // The SEQ:HEX form and the JSON line alone.
    let hex = format!("{}:{}", newest.seq, newest.head);
    let line = serde_json::to_string(&newest).unwrap();
    assert_eq!(verify(&data, &[&hex]).0, Some(0));
    assert_eq!(verify(&data, &[&line]).0, Some(0));
    let (code, json) = verify_json(&data, &[&hex]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["anchors"][0]["held"], true, "{json}");
    assert_eq!(json["runs"]["unclean"], serde_json::json!([9]), "{json}");

    // (b) The tail cut: verifies without an anchor, fails against it.
    let (cut, anchors) = tampered(&data, &file, "DELETE FROM ledger WHERE seq > 10");
    let (code, out) = verify(cut.path(), &[anchors.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("chain ends at seq 10, anchor at 12"), "{out}");
    assert!(out.contains(&format!("anchor {hex} FAILED")), "{out}");
    assert!(
        out.contains(&format!("anchor 10:{} held", all[2].head)),
        "{out}"
    );
    let (code, json) = verify_json(cut.path(), &[anchors.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["ok"], false, "{json}");
    let held: Vec<bool> = json["anchors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["held"].as_bool().unwrap())
        .collect();
    assert_eq!(held, [true, true, true, false], "{json}");

    // (c) The whole ledger deleted (its rows and the alerts, or the table).
    let (gone, anchors) = tampered(&data, &file, "DELETE FROM ledger; DELETE FROM alerts;");
    let (code, out) = verify(gone.path(), &[anchors.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("chain ends at seq 0, anchor at 2"), "{out}");
    sql(gone.path(), "DROP TABLE ledger;");
    let (code, out) = verify(gone.path(), &[&hex]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("chain ends at seq 0, anchor at 12"), "{out}");

    // (d) An alert rewritten, its row too, and the whole chain recomputed
    // with the store's hashing: verifies without an anchor, not against it.
    let (forged, anchors) = copy(&data, &file);
    forge(forged.path());
    let (code, out) = verify(forged.path(), &[]);
    assert_eq!(
        code,
        Some(0),
        "the finding: a rebuilt chain verifies: {out}"
    );
    let (code, out) = verify(forged.path(), &[anchors.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("entry 10's hash differs"), "{out}");
    assert!(
        out.contains(&format!("anchor 4:{} held", all[1].head)),
        "{out}"
    );

    // (e) A read-only copy, read by an unprivileged user: 0 or 2, never 1.
    let (ro, anchors) = copy(&data, &file);
    for entry in std::fs::read_dir(ro.path()).unwrap() {
        chmod(&entry.unwrap().path(), 0o444);
    }
    chmod(ro.path(), 0o555);
    let out = cli_unprivileged(
        &[
            "ledger",
            "verify",
            "--anchor",
            anchors.to_str().unwrap(),
            "--data-dir",
        ],
        &[ro.path()],
    );
    chmod(ro.path(), 0o755);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    if out.status.code() == Some(0) {
        assert!(stdout.contains(&format!("anchor {hex} held")), "{stdout}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    // An anchor file that is not there: 2, named.
    let (code, out) = verify(&data, &["/nonexistent/alerts.jsonl"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("/nonexistent/alerts.jsonl"), "{out}");
}

#[test]
fn bad_anchors_are_named_and_exit_with_2() {
    let dir = crate::store_with_alerts(1);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"rule_id\":\"r\"}\nnot json\n").unwrap();
    let none = dir.path().join("none.jsonl");
    std::fs::write(&none, "{\"rule_id\":\"r\"}\n").unwrap();
    for (anchor, named) in [
        ("3:abc".to_owned(), "64 hex digits"),
        ("0:".to_owned() + &"a".repeat(64), "at least 1"),
        ("{\"kind\":\"checkpoint\"}".to_owned(), "not a checkpoint"),
        (bad.display().to_string(), "line 2"),
        (none.display().to_string(), "no checkpoint line"),
    ] {
        let (code, out) = verify(dir.path(), &[&anchor]);
        assert_eq!(code, Some(2), "{anchor}: {out}");
        assert!(out.contains(named), "{anchor}: {out}");
        assert!(!out.contains("BROKEN"), "{out}");
    }
}
