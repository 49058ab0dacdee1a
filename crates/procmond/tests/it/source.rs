//! The collector against the real kernel and /proc. Privileged tests skip
//! only when not root, and say so.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::{check_source, recv_until, ConformanceConfig};
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, ProcessEvent, ProcessEventType, Subscription,
};
use procmond::{ProcmondMonitorCollector, ProcmondMonitorConfig};

use crate::support::overrun_and_reconcile;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root for the kernel process connector and ns_last_pid");
            return;
        }
    };
}

fn config(interval: Duration) -> ProcmondMonitorConfig {
    let mut c = ProcmondMonitorConfig::default();
    c.base_config.collection_interval = interval;
    c
}

/// A collector running `source` in a task; its handle and a subscription.
fn run_collector(
    source: ProcmondMonitorCollector,
) -> (
    collector_core::CollectorHandle,
    Subscription,
    tokio::task::JoinHandle<()>,
) {
    let mut collector = Collector::new(CollectorConfig::default());
    collector.register(Box::new(source)).unwrap();
    let handle = collector.handle();
    let sub = handle.subscribe();
    let run =
        tokio::spawn(async move { collector.run_until(std::future::pending()).await.unwrap() });
    (handle, sub, run)
}

/// Starts a collector with procmond and returns a subscription once the
/// first snapshot has arrived (so the connector is subscribed).
async fn start(
    config: ProcmondMonitorConfig,
) -> (
    collector_core::CollectorHandle,
    Subscription,
    tokio::task::JoinHandle<()>,
) {
    let source = ProcmondMonitorCollector::without_database(config).unwrap();
    let (handle, mut sub, run) = run_collector(source);
    recv_until(&mut sub, is_snapshot)
        .await
        .expect("collector ended before its first snapshot");
    (handle, sub, run)
}

/// Waits (bounded) for the first process event matching `want`.
async fn wait_for(
    sub: &mut Subscription,
    what: &str,
    want: impl Fn(&ProcessEvent) -> bool,
) -> ProcessEvent {
    let found = tokio::time::timeout(
        Duration::from_secs(20),
        recv_until(sub, |e| matches!(e, CollectionEvent::Process(p) if want(p))),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    match found {
        Some(CollectionEvent::Process(p)) => p,
        _ => panic!("stream ended while waiting for {what}"),
    }
}

fn is_snapshot(e: &CollectionEvent) -> bool {
    matches!(e, CollectionEvent::Process(p) if p.event_type == ProcessEventType::Snapshot)
}

/// Kills `child` and reaps it.
fn reap(mut child: std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_child_is_seen_with_its_exit_code() {
    require_root!();
    let (handle, mut sub, run) = start(config(Duration::from_secs(3600))).await;
    let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3));

    let exec = wait_for(&mut sub, "the exec", |p| {
        p.pid == pid && p.event_type == ProcessEventType::Exec
    })
    .await;
    let exit = wait_for(&mut sub, "the exit", |p| {
        p.pid == pid && p.event_type == ProcessEventType::Exit
    })
    .await;
    assert_eq!(exit.exit_code, Some(3 << 8), "raw wait status of exit(3)");
    if exec.accessible {
        assert_eq!(exec.command_line, vec!["sh", "-c", "exit 3"]);
        assert!(exec.process_key.is_some());
        assert_eq!(
            exit.process_key, exec.process_key,
            "exit and exec share the stable key"
        );
    } else {
        // Too quick to read: marked, not invented.
        assert!(exec.command_line.is_empty());
    }
    handle.shutdown();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_is_reported_as_such() {
    require_root!();
    let (handle, mut sub, run) = start(config(Duration::from_secs(3600))).await;
    // Make the kernel hand the same pid out twice: after the first process
    // exits, set ns_last_pid to pid - 1 and fork again. Another process may
    // grab the pid first; try a few times.
    let mut reused = None;
    for _ in 0..20 {
        let first = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = first.id();
        let first_exec = wait_for(&mut sub, "the first exec", |p| {
            p.pid == pid && p.event_type == ProcessEventType::Exec
        })
        .await;
        reap(first);
        wait_for(&mut sub, "the first exit", |p| {
            p.pid == pid && p.event_type == ProcessEventType::Exit
        })
        .await;
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let second = Command::new("sleep").arg("30").spawn().unwrap();
        let second_pid = second.id();
        if second_pid == pid {
            reused = Some((pid, second, first_exec.process_key));
            break;
        }
        reap(second);
    }
    let (pid, second, first_key) = reused.expect("the kernel never reused the pid in 20 tries");
    let event = wait_for(&mut sub, "pid_reused", |p| {
        p.pid == pid && p.event_type == ProcessEventType::PidReused
    })
    .await;
    // It names the process that had the pid before. (The new one's key is
    // usually different, but equal when both started within one clock
    // tick: the kernel's fork after the exit is what tells them apart.)
    assert_eq!(event.lifecycle().previous_key, first_key);
    reap(second);
    handle.shutdown();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_binary_that_is_deleted_is_suspicious() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("lurker");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let (handle, mut sub, run) = start(config(Duration::from_millis(500))).await;
    let child = Command::new(&exe).arg("30").spawn().unwrap();
    let pid = child.id();
    // Seen first with its file in place...
    wait_for(&mut sub, "the lurker", |p| {
        p.pid == pid && p.file_exists && p.executable_path.is_some()
    })
    .await;
    std::fs::remove_file(&exe).unwrap();
    // ...then reported once its file is gone.
    let e = wait_for(&mut sub, "executable_deleted", |p| {
        p.pid == pid && p.event_type == ProcessEventType::ExecutableDeleted
    })
    .await;
    assert!(!e.file_exists);
    assert_eq!(e.executable_path.as_deref(), exe.to_str());
    reap(child);
    handle.shutdown();
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_processes_exiting_mid_read() {
    let reader =
        procmond::snapshot::ProcReader::new(procmond::snapshot::ReadOptions::default()).unwrap();
    let churn = std::thread::spawn(|| {
        for _ in 0..300 {
            let _ = Command::new("/bin/true").status();
        }
    });
    let mut passes = 0;
    while !churn.is_finished() {
        let snap = reader.snapshot(usize::MAX).unwrap();
        assert!(snap.stats.processes > 0);
        passes += 1;
    }
    churn.join().unwrap();
    assert!(passes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procmond_passes_the_conformance_check() {
    let source =
        ProcmondMonitorCollector::without_database(config(Duration::from_secs(3600))).unwrap();
    let conformance = ConformanceConfig {
        stop_deadline: Duration::from_secs(1),
        ..ConformanceConfig::wanting(1, Duration::from_secs(10))
    };
    let report = check_source(Arc::new(source), &conformance).await.unwrap();
    assert!(report.events() >= 1);
    assert!(report.stop_latency < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_overruns_are_counted_and_reconciled_at_once() {
    require_root!();
    // A socket buffer of a few events and a one-message channel: a burst of
    // process events overflows the kernel's buffer for sure.
    let mut c = config(Duration::from_secs(3600));
    // The connector's overrun path (the eBPF tier's is in tests/ebpf.rs).
    c.process_config.tier = procmond::source::TierChoice::Connector;
    c.process_config.connector.recv_buffer_bytes = 4096;
    c.base_config.max_events_in_flight = 1;
    let source = ProcmondMonitorCollector::without_database(c).unwrap();
    let stats = source.stats_handle();
    let (handle, mut sub, run) = run_collector(source);
    let reader = tokio::spawn(async move { while sub.recv_batch().await.is_some() {} });
    // The overrun triggers a reconciliation snapshot beyond the first one.
    overrun_and_reconcile(&stats).await;
    handle.shutdown();
    run.await.unwrap();
    reader.await.unwrap();
}

/// Standalone, procmond stores through the store's one writer: snapshots
/// arrive in its database, and when writing fails its health says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_written_through_the_writer_and_failures_degrade_health() {
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let db = Arc::new(Mutex::new(procmond::DatabaseManager::new(&path).unwrap()));
    let source = ProcmondMonitorCollector::new(Arc::clone(&db), config(Duration::from_millis(200)))
        .await
        .unwrap();
    let mut collector = Collector::new(
        CollectorConfig::default().with_health_check_interval(Duration::from_millis(100)),
    );
    collector.register(Box::new(source)).unwrap();
    let handle = collector.handle();
    let run =
        tokio::spawn(async move { collector.run_until(std::future::pending()).await.unwrap() });
    // No commit to await from outside the writer: look until it is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stored = || db.lock().unwrap().latest_snapshot_info().unwrap();
    while stored().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored().unwrap().process_count > 1);

    // Pull a table out from under the writer: the next snapshots fail.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE process_snapshots")
        .unwrap();
    let degraded = loop {
        let report = handle.health();
        let procmond = report.sources.iter().find(|(n, _)| *n == "procmond");
        if let Some((_, collector_core::SourceHealth::Degraded(why))) = procmond {
            break why.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(10),
            "health never degraded: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(degraded.contains("audit database"), "{degraded}");
    handle.shutdown();
    run.await.unwrap();
}
