//! The `procmond` binary: flags, exit codes, output, shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_procmond");

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// `procmond ARGS`, run to its end.
fn procmond(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs `procmond ARGS`, checks it exits with 2 and returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = procmond(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `procmond ARGS` started with its stdout's lines to read (stderr
/// discarded).
fn spawn_with_lines(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn snapshot_json_lists_this_process() {
    let out = procmond(&["snapshot", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    let me = std::process::id();
    assert!(list.iter().any(|p| p["pid"] == me), "own pid missing");
    assert!(list
        .iter()
        .all(|p| p["process_key"].is_string() || p["process_key"].is_null()));
}

#[test]
fn bad_flags_and_bad_config_exit_with_2() {
    refused(&["run", "--interval", "0"]);
    refused(&["snapshot", "--format", "xml"]);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("procmond.toml");
    for (toml, bad_key) in [
        (
            "[monitor.base_config]\ncollection_intervall = \"5s\"\n",
            "collection_intervall",
        ),
        ("[collector]\nevent_buffer_size = 0\n", "event_buffer_size"),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let msg = refused(&["run", "--no-database", "--config", cfg.to_str().unwrap()]);
        assert!(
            msg.contains(bad_key),
            "the message names the bad key: {msg}"
        );
    }
}

#[test]
fn run_streams_jsonl_stores_events_and_stops_promptly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let (mut child, mut lines) = spawn_with_lines(&[
        "run",
        "--interval",
        "3600",
        "--events-jsonl",
        "-",
        "--database",
        db.to_str().unwrap(),
    ]);
    // The first snapshot lists the test process itself.
    let me = std::process::id();
    let mut seen_me = false;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert!(v["kind"].is_string() && v["pid"].is_u64());
        if v["pid"] == me && v["kind"] == "snapshot" {
            assert!(v["process_key"]
                .as_str()
                .unwrap()
                .contains(&format!(":{me}:")));
            seen_me = true;
            break;
        }
    }
    assert!(seen_me);
    let asked = std::time::Instant::now();
    sigterm(&child);
    // Drain stdout so the child never blocks on a full pipe.
    for _ in lines {}
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "took {:?} to stop",
        asked.elapsed()
    );
    let stored = procmond::DatabaseManager::new(&db).unwrap();
    assert!(stored
        .latest_snapshot()
        .unwrap()
        .iter()
        .any(|r| r.process.pid == me));
    // The one store's schema; procmond standalone does not ledger events.
    assert_eq!(
        stored.schema_version().unwrap(),
        i64::from(daemoneye_store::SCHEMA_VERSION)
    );
    assert_eq!(stored.verify_ledger().unwrap().entries, 0);
}

#[test]
fn as_root_run_keeps_only_the_capabilities_collection_needs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to check that procmond drops its capabilities");
        return;
    }
    // Another user's process: reading its executable needs CAP_SYS_PTRACE.
    let other = Killed({
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap()
    });
    let (child, mut lines) = spawn_with_lines(&[
        "run",
        "--no-database",
        "--interval",
        "3600",
        "--events-jsonl",
        "-",
    ]);
    let child = Killed(child);
    let seen = lines.by_ref().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        (v["pid"] == other.0.id()).then_some(v)
    });
    let seen = seen.expect("the other user's process was never reported");
    assert_eq!(seen["accessible"], true, "{seen}");
    assert!(
        seen["executable_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/sleep")),
        "{seen}"
    );
    assert_eq!(seen["user_id"], 65534);
    drop(other);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    let caps = |key: &str| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim();
        u64::from_str_radix(hex, 16).unwrap()
    };
    let kept = procmond::privileges::KEPT.bits();
    assert_eq!(caps("CapEff:"), kept, "effective set");
    assert_eq!(caps("CapPrm:"), kept, "permitted set");
    assert_eq!(caps("CapBnd:") & !kept, 0, "bounding set");
    assert!(status
        .lines()
        .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')));
    drop(lines);
}

/// A child killed and reaped however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the exposition line `series` (name and labels, as encoded).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn metrics_listen_serves_the_collector_and_procmond_counters() {
    let addr = free_port();
    let (mut child, mut lines) = spawn_with_lines(&[
        "run",
        "--no-database",
        "--no-socket",
        "--interval",
        "3600",
        "--events-jsonl",
        "-",
        "--metrics-listen",
        &addr.to_string(),
    ]);
    // A snapshot line on stdout: the first snapshot was taken, its events
    // accepted by the runtime and delivered to the JSONL writer's
    // subscription (real-time events of the eBPF tier may come before it).
    let first = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("\"kind\":\"snapshot\""))
        .unwrap();
    assert!(first.contains("\"pid\""), "{first}");

    let reply = collector_core::testing::scrape_metrics(addr).unwrap();
    let (head, text) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    // procmond's own counters...
    assert_eq!(
        sample(
            text,
            "daemoneye_collection_cycles_total{source=\"procmond\"}"
        ),
        Some(1),
        "{text}"
    );
    assert!(sample(text, "daemoneye_processes_read_total{stage=\"snapshot\"}").unwrap() > 0);
    assert!(text.contains("# TYPE daemoneye_realtime_active gauge\n"));
    assert!(text.contains("daemoneye_hashes_refused_total{reason=\"too_large\",stage=\"hasher\"}"));
    // ...and its collector's, from the same registry.
    let accepted = sample(
        text,
        "daemoneye_events_accepted_total{source=\"procmond\",stage=\"intake\"}",
    )
    .unwrap();
    assert!(accepted > 0, "{text}");
    assert!(
        sample(
            text,
            "daemoneye_events_delivered_total{stage=\"subscriber\",subscriber=\"1\"}"
        )
        .unwrap()
            > 0
    );
    assert_eq!(
        sample(
            text,
            "daemoneye_events_dropped_total{reason=\"invalid\",source=\"procmond\",stage=\"intake\"}"
        ),
        Some(0)
    );

    sigterm(&child);
    for _ in lines {}
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still serving after exit"
    );
}

#[test]
fn a_bad_metrics_address_is_refused_at_startup_with_2() {
    let run_listening_on = |addr: &str| {
        refused(&[
            "run",
            "--no-database",
            "--no-socket",
            "--metrics-listen",
            addr,
        ])
    };
    assert!(run_listening_on("localhost").contains("--metrics-listen"));

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let msg = run_listening_on(&addr.to_string());
    assert!(
        msg.contains(&format!("cannot listen for metrics on {addr}")),
        "{msg}"
    );
}
