//! procmond's task handlers and `procmond run --socket` with the agent-side
//! client, over real sockets.

use std::process::{Command, Stdio};
use std::time::Duration;

use collector_core::{
    CollectorIpcClient, CollectorIpcServer, IpcClientConfig, IpcServerConfig, SourceCaps,
};
use daemoneye_hasher::{HashEngine, HasherConfig};
use daemoneye_lib::proto::{
    event_record, DetectionTask, HashCheck, ProcessFilter, ProcessRecord, ProtoTaskType,
    SubscribeRequest,
};
use procmond::ipc::TaskHandlers;

fn client_config(path: &std::path::Path) -> IpcClientConfig {
    IpcClientConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_connect_attempts: 100,
        request_timeout: Duration::from_secs(20),
        ..IpcClientConfig::new(path)
    }
}

/// The first process record a subscriber of `pid` is sent (within 20 s).
async fn first_record_of(client: &CollectorIpcClient, pid: u32) -> ProcessRecord {
    let mut stream = client
        .subscribe(SubscribeRequest {
            pids: vec![pid],
            ..SubscribeRequest::default()
        })
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await
        .unwrap()
        .unwrap();
    match batch.events.into_iter().next().and_then(|r| r.event) {
        Some(event_record::Event::Process(p)) => p,
        other => panic!("expected a process record, got {other:?}"),
    }
}

fn with_filter(id: &str, t: ProtoTaskType, filter: ProcessFilter) -> DetectionTask {
    let mut task = DetectionTask::new(id, t);
    task.process_filter = Some(filter);
    task
}

/// `ENUMERATE_PROCESSES` of one pid.
fn enumerate_pid(pid: u32) -> DetectionTask {
    with_filter(
        "enum",
        ProtoTaskType::EnumerateProcesses,
        ProcessFilter {
            pids: vec![pid],
            ..ProcessFilter::default()
        },
    )
}

/// `client`'s answer to a task `id` of type `t` with the hash check `check`.
async fn hash_task(
    client: &CollectorIpcClient,
    id: &str,
    t: ProtoTaskType,
    check: HashCheck,
) -> daemoneye_lib::proto::DetectionResult {
    let mut task = DetectionTask::new(id, t);
    task.hash_check = Some(check);
    client.send_task(task).await.unwrap()
}

/// `VERIFY_EXECUTABLE` of `path` with `algorithm` (the default when empty),
/// against `expected` (none when empty).
async fn verify(
    client: &CollectorIpcClient,
    id: &str,
    path: &str,
    algorithm: &str,
    expected: &str,
) -> daemoneye_lib::proto::DetectionResult {
    let check = HashCheck {
        executable_path: path.to_owned(),
        hash_algorithm: algorithm.to_owned(),
        expected_hash: expected.to_owned(),
        ..HashCheck::default()
    };
    hash_task(client, id, ProtoTaskType::VerifyExecutable, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, task after task")]
async fn task_handlers_answer_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc").join("procmond.sock");
    let hasher = HashEngine::new(HasherConfig {
        algorithms: vec![
            collector_core::HashAlgorithm::Sha256,
            collector_core::HashAlgorithm::Blake3,
        ],
        bytes_per_sec: 0,
        ..HasherConfig::default()
    })
    .unwrap();
    let handlers = TaskHandlers::new(hasher).unwrap();
    let mut server = CollectorIpcServer::new(IpcServerConfig::new(&path), SourceCaps::PROCESS)
        .await
        .unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(async move { server.start(handlers.into_handler()).await });
    let client = CollectorIpcClient::connect(client_config(&path))
        .await
        .unwrap();
    let me = std::process::id();

    // Enumerate with a filter: exactly this process.
    let r = client.send_task(enumerate_pid(me)).await.unwrap();
    assert!(r.success, "{:?}", r.error_message);
    assert_eq!(r.processes.len(), 1);
    assert_eq!(r.processes[0].pid, me);
    assert!(r.processes[0].process_key.contains(&format!(":{me}:")));
    // Unfiltered: many processes, this one among them.
    let all = client
        .send_task(DetectionTask::new("all", ProtoTaskType::EnumerateProcesses))
        .await
        .unwrap();
    assert!(all.processes.len() > 1 && all.processes.iter().any(|p| p.pid == me));

    // The tree under our parent holds us.
    let parent = nix::unistd::getppid().as_raw().unsigned_abs();
    let tree = client
        .send_task(with_filter(
            "tree",
            ProtoTaskType::MonitorProcessTree,
            ProcessFilter {
                pids: vec![parent],
                ..ProcessFilter::default()
            },
        ))
        .await
        .unwrap();
    assert!(tree.success);
    assert_eq!(tree.processes[0].pid, parent);
    assert!(tree.processes.iter().any(|p| p.pid == me));

    // Verify our own executable, then the same through CHECK_PROCESS_HASH.
    let exe = std::env::current_exe().unwrap().display().to_string();
    let v = verify(&client, "verify", &exe, "sha256", "").await;
    assert!(v.success, "{:?}", v.error_message);
    let h = v.hash_result.unwrap();
    assert_eq!(h.hash_value.len(), 64);
    assert_eq!(h.matches, None);
    let c = hash_task(
        &client,
        "check",
        ProtoTaskType::CheckProcessHash,
        HashCheck {
            pid: Some(me),
            expected_hash: h.hash_value.to_uppercase(),
            ..HashCheck::default()
        },
    )
    .await;
    let ch = c.hash_result.unwrap();
    assert_eq!(ch.hash_value, h.hash_value);
    assert_eq!(ch.matches, Some(true));
    assert!(ch.success);
    let wrong = verify(&client, "wrong", &exe, "blake3", &"0".repeat(64)).await;
    let wh = wrong.hash_result.unwrap();
    assert_eq!(wh.matches, Some(false));
    assert!(!wh.success);
    assert_ne!(wh.hash_value, h.hash_value, "blake3 differs from sha256");

    // A missing file fails with a reason.
    let gone = verify(&client, "gone", "/nonexistent/binary", "", "").await;
    assert!(!gone.success);
    assert!(gone.error_message.unwrap().contains("not found"));

    drop(client);
    handle.shutdown();
    serving.await.unwrap().unwrap();
}

/// `procmond run --no-database --no-realtime --socket PATH` plus `extra`.
fn spawn_run(path: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["run", "--no-database", "--no-realtime"])
        .args(extra)
        .arg("--socket")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, and a clean exit.
async fn terminate(mut child: std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procmond_run_serves_tasks_and_streams_events_on_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("procmond.sock");
    let child = spawn_run(&path, &["--interval", "1"]);
    let client = CollectorIpcClient::connect(client_config(&path))
        .await
        .unwrap();
    let caps = client.capabilities();
    assert!(caps.capability_bits & SourceCaps::PROCESS.bits() != 0);
    assert!(!caps.sources.is_empty());

    let me = std::process::id();
    let r = client.send_task(enumerate_pid(me)).await.unwrap();
    assert!(r.success, "{:?}", r.error_message);
    assert_eq!(r.processes[0].pid, me);

    // The next snapshot (every second) reports this process.
    let p = first_record_of(&client, me).await;
    assert_eq!(p.pid, me);

    drop(client);
    terminate(child).await;
    assert!(!path.exists(), "socket removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_subscriber_holds_collection_until_someone_subscribes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("procmond.sock");
    let child = spawn_run(&path, &["--interval", "3600", "--await-subscriber"]);
    let client = CollectorIpcClient::connect(client_config(&path))
        .await
        .unwrap();
    // A whole /proc walk answered over the socket: long enough for a first
    // snapshot to have been taken, had collection started.
    let me = std::process::id();
    let r = client
        .send_task(DetectionTask::new("e", ProtoTaskType::EnumerateProcesses))
        .await
        .unwrap();
    assert!(r.processes.iter().any(|p| p.pid == me));
    let before = client.health().await.unwrap();
    assert_eq!(before.name, "procmond");
    // procmond's own counters ride on its source; snapshots only was asked
    // for, so that is no degradation.
    let source = before
        .components
        .iter()
        .find(|c| c.name == "procmond")
        .unwrap();
    assert_eq!(source.counters.get("snapshots"), Some(&0));
    assert_eq!(source.counters.get("realtime_active"), Some(&0));
    assert!(source.counters.contains_key("kernel_overruns"));
    assert_eq!(
        before.counters.get("events_received"),
        Some(&0),
        "collected before anyone subscribed: {before:?}"
    );
    // With one snapshot an hour, only the first can report this process:
    // the subscriber sees it.
    let p = first_record_of(&client, me).await;
    assert_eq!(p.pid, me);
    assert_eq!(p.event_type, "snapshot");
    drop(client);
    terminate(child).await;
}
