//! The IPC server and client over real sockets: handshake, tasks, live
//! events, permissions, limits, and bad input.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::Replay;
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, CollectorIpcClient, CollectorIpcServer,
    IpcClientConfig, IpcError, IpcServerConfig, IpcServerHandle, ProcessEvent, SourceCaps,
};
use daemoneye_lib::codec::{decode_payload, encode_envelope, FrameCodec, HEADER_LEN};
use daemoneye_lib::proto::{
    envelope::Payload, CapabilityRequest, DetectionResult, DetectionTask, Domain, Envelope,
    ErrorCode, EventKind, HealthState, Heartbeat, ProtoTaskType, SubscribeRequest,
    PROTOCOL_VERSION,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "collector-core-ipc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("ipc").join("test.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fast_config(path: &Path) -> IpcServerConfig {
    IpcServerConfig {
        handshake_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(2),
        handler_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(2),
        ..IpcServerConfig::new(path)
    }
}

fn client_config(path: &Path) -> IpcClientConfig {
    IpcClientConfig {
        request_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_connect_attempts: 3,
        ..IpcClientConfig::new(path)
    }
}

/// A client of the socket at `path`, connected.
async fn connect(path: &Path) -> CollectorIpcClient {
    CollectorIpcClient::connect(client_config(path))
        .await
        .unwrap()
}

/// `client`'s answer to a task `id` of type `kind`.
async fn ask(
    client: &CollectorIpcClient,
    id: impl Into<String>,
    kind: ProtoTaskType,
) -> DetectionResult {
    client
        .send_task(DetectionTask::new(id, kind))
        .await
        .unwrap()
}

/// Answers `ENUMERATE_PROCESSES` with one record, sleeps on
/// `MONITOR_PROCESS_TREE` named "slow" (to time out), panics on
/// `VERIFY_EXECUTABLE`.
fn handler(task: DetectionTask) -> collector_core::ipc::TaskFuture {
    Box::pin(async move {
        match task.task_type() {
            ProtoTaskType::EnumerateProcesses => {
                let record = daemoneye_lib::proto::ProcessRecord {
                    pid: 1,
                    name: "init".into(),
                    ..Default::default()
                };
                DetectionResult::success(&task.task_id, vec![record])
            }
            ProtoTaskType::MonitorProcessTree if task.task_id == "slow" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                DetectionResult::failure(&task.task_id, "unreachable")
            }
            ProtoTaskType::VerifyExecutable => panic!("handler bug"),
            _ => DetectionResult::failure(&task.task_id, "unsupported task type"),
        }
    })
}

struct Running {
    handle: IpcServerHandle,
    task: JoinHandle<Result<(), IpcError>>,
    path: PathBuf,
}

impl Running {
    async fn stop(self) {
        self.handle.shutdown();
        self.task.await.unwrap().unwrap();
    }

    /// Drops `client` (the server waits for its connections), then stops.
    async fn stop_after<C>(self, client: C) {
        drop(client);
        self.stop().await;
    }

    async fn wait_idle(&self) -> collector_core::IpcServerStats {
        for _ in 0..500 {
            let s = self.handle.stats();
            if s.connections_active == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connections still active: {:?}", self.handle.stats());
    }
}

async fn serve(
    config: IpcServerConfig,
    caps: SourceCaps,
    collector: Option<&Collector>,
) -> Running {
    let mut server = CollectorIpcServer::new(config, caps).await.unwrap();
    if let Some(c) = collector {
        server = server.with_events(c.handle());
    }
    run(server)
}

/// Runs `server` with the test [`handler`] in a task.
fn run(mut server: CollectorIpcServer) -> Running {
    let path = server.socket_path().to_owned();
    let handle = server.handle();
    let task = tokio::spawn(async move { server.start(handler).await });
    Running { handle, task, path }
}

/// A server with the test config on a fresh socket named by `tag`, serving
/// `caps`, and a client connected to it.
async fn serve_one(tag: &str, caps: SourceCaps) -> (TempDir, Running, CollectorIpcClient) {
    let dir = TempDir::new(tag);
    let server = serve(fast_config(&dir.sock()), caps, None).await;
    let client = connect(&server.path).await;
    (dir, server, client)
}

fn frame(env: &Envelope) -> Vec<u8> {
    encode_envelope(env).unwrap().to_vec()
}

fn hello() -> Envelope {
    Envelope::from(CapabilityRequest {
        protocol_version: PROTOCOL_VERSION,
        client_name: "raw".into(),
        ..Default::default()
    })
    .with_request_id(1)
}

/// Reads envelopes until EOF or `limit`, with an overall timeout.
async fn read_all(stream: &mut UnixStream, limit: Duration) -> (Vec<Envelope>, bool) {
    let mut buf = bytes::BytesMut::new();
    let mut codec = FrameCodec::new();
    let mut out = Vec::new();
    let eof = tokio::time::timeout(limit, async {
        loop {
            while let Ok(Some(p)) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf) {
                out.push(decode_payload(&p).unwrap());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    (out, eof)
}

async fn read_one(stream: &mut UnixStream) -> Envelope {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await.unwrap();
    let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    decode_payload(&payload).unwrap()
}

async fn raw_handshake(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(&frame(&hello())).await.unwrap();
    let answer = read_one(&mut s).await;
    assert!(matches!(
        answer.payload,
        Some(Payload::CapabilityResponse(_))
    ));
    s
}

fn error_code(env: &Envelope) -> Option<ErrorCode> {
    match &env.payload {
        Some(Payload::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

#[test]
fn ipc_public_types_are_send_and_sync() {
    collector_core::assert_send_sync!(
        CollectorIpcServer,
        CollectorIpcClient,
        IpcServerHandle,
        IpcError,
        collector_core::ipc::EventStream,
    );
}

#[tokio::test]
async fn handshake_reports_the_real_capabilities_and_tasks_round_trip() {
    let caps = SourceCaps::PROCESS | SourceCaps::REALTIME | SourceCaps::SYSTEM_WIDE;
    let (_dir, server, client) = serve_one("handshake", caps).await;

    let c = client.capabilities();
    assert_eq!(c.protocol_version, PROTOCOL_VERSION);
    assert_eq!(c.capability_bits, caps.bits());
    assert_eq!(c.supported_domains, [i32::from(Domain::Process)]);
    assert_eq!(c.supported_tasks.len(), 4, "{:?}", c.supported_tasks);

    let result = ask(&client, "t-1", ProtoTaskType::EnumerateProcesses).await;
    assert!(result.success);
    assert_eq!(result.task_id, "t-1");
    assert_eq!(result.processes[0].name, "init");

    // Concurrent requests are matched by id.
    let client = Arc::new(client);
    let mut joins = Vec::new();
    for i in 0..20 {
        let c = client.clone();
        joins.push(tokio::spawn(async move {
            let id = format!("c-{i}");
            let r = ask(&c, id.clone(), ProtoTaskType::EnumerateProcesses).await;
            assert_eq!(r.task_id, id);
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    client.ping().await.unwrap();
    let stats = server.handle.stats();
    assert_eq!(stats.tasks_received, 21);
    assert_eq!(stats.tasks_succeeded, 21);
    server.stop_after(client).await;
}

#[tokio::test]
async fn unsupported_domain_slow_and_panicking_handlers_fail_cleanly() {
    let (_dir, server, client) = serve_one("unsupported", SourceCaps::PROCESS).await;

    let r = ask(&client, "net", ProtoTaskType::MonitorNetworkConnections).await;
    assert!(!r.success);
    let msg = r.error_message.unwrap();
    assert!(msg.contains("DOMAIN_NETWORK"), "{msg}");

    let r = ask(&client, "none", ProtoTaskType::Unspecified).await;
    assert!(!r.success);

    let r = ask(&client, "slow", ProtoTaskType::MonitorProcessTree).await;
    assert!(!r.success);
    assert!(r.error_message.unwrap().contains("timed out"));

    let r = ask(&client, "boom", ProtoTaskType::VerifyExecutable).await;
    assert!(!r.success);
    assert_eq!(r.task_id, "boom");

    // The connection survived all of it.
    assert!(
        ask(&client, "ok", ProtoTaskType::EnumerateProcesses)
            .await
            .success
    );
    let s = server.handle.stats();
    assert_eq!(s.tasks_unsupported, 2);
    assert_eq!(s.tasks_timed_out, 1);
    assert_eq!(s.tasks_panicked, 1);
    assert_eq!(s.tasks_failed, 4);
    assert_eq!(s.tasks_succeeded, 1);
    server.stop_after(client).await;
}

#[tokio::test]
async fn socket_is_private_stale_sockets_are_replaced_live_ones_refused() {
    let dir = TempDir::new("perms");
    let path = dir.sock();
    // A stale socket: bound, then its listener dropped.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let server = serve(fast_config(&path), SourceCaps::PROCESS, None).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dmeta.mode() & 0o777, 0o700);

    // A second server must not steal the live socket.
    let err = CollectorIpcServer::new(fast_config(&path), SourceCaps::PROCESS)
        .await
        .unwrap_err();
    assert!(matches!(err, IpcError::SocketInUse { .. }), "{err}");
    // The first still serves.
    let client = connect(&path).await;
    client.ping().await.unwrap();
    server.stop_after(client).await;
    assert!(!path.exists(), "socket removed on shutdown");

    // A directory writable by others is refused; so is a non-socket file.
    let open_dir = dir.0.join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = CollectorIpcServer::new(fast_config(&open_dir.join("s.sock")), SourceCaps::PROCESS)
        .await
        .unwrap_err();
    assert!(matches!(err, IpcError::UnsafeDirectory { .. }), "{err}");
    std::fs::write(&path, b"not a socket").unwrap();
    let err = CollectorIpcServer::new(fast_config(&path), SourceCaps::PROCESS)
        .await
        .unwrap_err();
    assert!(matches!(err, IpcError::NotASocket { .. }), "{err}");
}

#[tokio::test]
async fn peer_uid_not_in_the_allow_list_is_refused() {
    let dir = TempDir::new("peer");
    let config = IpcServerConfig {
        allowed_uids: vec![4_000_000_000],
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    let err = CollectorIpcClient::connect(client_config(&server.path))
        .await
        .unwrap_err();
    assert!(matches!(err, IpcError::ConnectionClosed), "{err}");
    assert_eq!(server.handle.stats().connections_refused_peer, 1);
    assert_eq!(server.handle.stats().connections_accepted, 0);
    server.stop().await;
}

#[tokio::test]
async fn idle_and_silent_clients_are_disconnected() {
    let dir = TempDir::new("idle");
    let config = IpcServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    // Never speaks: closed at the handshake timeout, without an answer.
    let mut silent = UnixStream::connect(&server.path).await.unwrap();
    let (got, eof) = read_all(&mut silent, Duration::from_secs(5)).await;
    assert!(eof && got.is_empty());
    // Shakes hands, then goes quiet: closed at the idle timeout.
    let mut idle = raw_handshake(&server.path).await;
    let (got, eof) = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(eof && got.is_empty());
    let s = server.wait_idle().await;
    assert_eq!(s.connections_closed_handshake_timeout, 1);
    assert_eq!(s.connections_closed_idle, 1);
    server.stop().await;
}

/// Sends a heartbeat on `s` and reads its echo: the connection is served.
async fn beat(s: &mut UnixStream, nonce: u64) {
    let hb = Envelope::from(Heartbeat { nonce }).with_request_id(nonce);
    s.write_all(&frame(&hb)).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), read_one(s))
        .await
        .expect("a served connection echoes a heartbeat");
    assert_eq!(echo.payload, Some(Payload::Heartbeat(Heartbeat { nonce })));
}

/// Reads `s` to its end: one `ERROR_CODE_OVERLOADED` answer, then closed
/// (refused, or evicted for a new connection).
async fn closed_overloaded(s: &mut UnixStream) {
    let (got, eof) = read_all(s, Duration::from_secs(5)).await;
    assert!(eof);
    assert_eq!(error_code(&got[0]), Some(ErrorCode::Overloaded));
}

/// Starts a task that stays in flight (the handler sleeps on "slow").
async fn start_slow_task(s: &mut UnixStream, id: u64) {
    let task = DetectionTask::new("slow", ProtoTaskType::MonitorProcessTree);
    s.write_all(&frame(&Envelope::from(task).with_request_id(id)))
        .await
        .unwrap();
}

/// Idle connections of allowed peers cannot lock others out: at
/// `max_connections` a new client evicts the connection idle longest and is
/// served at once; one with a task in flight, or that sent anything (a
/// heartbeat) within `evict_idle_after`, is kept; with none evictable the
/// new client is refused as before. Both are counted.
#[tokio::test]
async fn at_max_connections_a_new_client_evicts_the_longest_idle_one() {
    let dir = TempDir::new("evict");
    let config = IpcServerConfig {
        max_connections: 4,
        idle_timeout: Duration::from_secs(60),
        // Keeps the "slow" tasks in flight for the whole test.
        handler_timeout: Duration::from_secs(60),
        evict_idle_after: Duration::from_millis(400),
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    // Connected first, busy with a task: the oldest, but never evicted.
    let mut busy = raw_handshake(&server.path).await;
    start_slow_task(&mut busy, 2).await;
    let mut first = raw_handshake(&server.path).await;
    let mut second = raw_handshake(&server.path).await;
    let mut third = raw_handshake(&server.path).await;
    // Time passing is what is under test: all three idle past the grace.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The client that heartbeats is active again: `second` is now idle longest.
    beat(&mut first, 3).await;

    let mut newcomer = tokio::time::timeout(Duration::from_secs(2), raw_handshake(&server.path))
        .await
        .expect("the new client is served at once, not refused");
    let (got, eof) = read_all(&mut second, Duration::from_secs(5)).await;
    assert!(eof, "the longest idle connection is closed");
    assert_eq!(got.len(), 1);
    assert_eq!(error_code(&got[0]), Some(ErrorCode::Overloaded));
    for (s, nonce) in [
        (&mut busy, 4),
        (&mut first, 5),
        (&mut third, 6),
        (&mut newcomer, 7),
    ] {
        beat(s, nonce).await;
    }
    let s = server.handle.stats();
    assert_eq!(
        (
            s.connections_evicted,
            s.connections_closed_evicted,
            s.connections_refused_overloaded
        ),
        (1, 1, 0),
        "{s:?}"
    );

    // Every place busy: nothing to evict, the next client is refused.
    for (s, id) in [(&mut first, 8), (&mut third, 9), (&mut newcomer, 10)] {
        start_slow_task(s, id).await;
    }
    // The tasks are in flight once the server has read them: a heartbeat
    // sent after each is echoed after it was read.
    for (s, nonce) in [(&mut first, 11), (&mut third, 12), (&mut newcomer, 13)] {
        beat(s, nonce).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut refused = UnixStream::connect(&server.path).await.unwrap();
    closed_overloaded(&mut refused).await;
    let s = server.handle.stats();
    assert_eq!(
        (s.connections_evicted, s.connections_refused_overloaded),
        (1, 1),
        "{s:?}"
    );
    beat(&mut busy, 14).await;

    let registry = collector_core::metrics::Registry::new();
    server.handle.register_metrics(&registry);
    assert_eq!(
        registry.value("daemoneye_connections_evicted_total", &[("stage", "ipc")]),
        Some(1)
    );
    drop((busy, first, third, newcomer));
    server.stop().await;
}

/// One peer's idle connections cannot lock out a new client of the same
/// uid: at `max_connections_per_uid` (far below `max_connections`), the
/// newcomer takes the place of that uid's longest idle connection, silent
/// or shaken hands, and is served at once; with every one of them busy it
/// is refused, counted `peer_limit`, not `overloaded`.
#[tokio::test]
async fn idle_connections_of_one_uid_do_not_lock_out_a_new_client_of_it() {
    let dir = TempDir::new("per-uid");
    let config = IpcServerConfig {
        max_connections: 64,
        max_connections_per_uid: 4,
        // Long enough to hold a place for minutes: what is under test is
        // that holding it does not lock anyone out.
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        handler_timeout: Duration::from_secs(60),
        evict_idle_after: Duration::from_millis(300),
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(UnixStream::connect(&server.path).await.unwrap());
    }
    let mut quiet = Vec::new();
    for _ in 0..2 {
        quiet.push(raw_handshake(&server.path).await);
    }
    // Time passing is what is under test: all four idle past the grace.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let asked = tokio::time::Instant::now();
    let client = connect(&server.path).await;
    let answer = ask(&client, "t1", ProtoTaskType::EnumerateProcesses).await;
    assert!(answer.success, "{answer:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "served in {:?}",
        asked.elapsed()
    );
    // The first silent connection, idle longest, made room.
    closed_overloaded(&mut silent[0]).await;
    let s = server.handle.stats();
    assert_eq!(
        (
            s.connections_evicted,
            s.connections_refused_peer_limit,
            s.connections_active
        ),
        (1, 0, 4),
        "{s:?}"
    );
    drop((silent, quiet, client));
    server.wait_idle().await;

    // Four busy connections: nothing of theirs to evict, the fifth of the
    // same uid is refused although the server has room.
    let mut busy = Vec::new();
    for id in 0..4 {
        let mut s = raw_handshake(&server.path).await;
        start_slow_task(&mut s, 100 + id).await;
        beat(&mut s, 200 + id).await;
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut refused = UnixStream::connect(&server.path).await.unwrap();
    closed_overloaded(&mut refused).await;
    let s = server.handle.stats();
    assert_eq!(
        (
            s.connections_refused_peer_limit,
            s.connections_refused_overloaded
        ),
        (1, 0),
        "{s:?}"
    );
    let registry = collector_core::metrics::Registry::new();
    server.handle.register_metrics(&registry);
    assert_eq!(
        registry.value(
            "daemoneye_connections_refused_total",
            &[("stage", "ipc"), ("reason", "peer_limit")]
        ),
        Some(1)
    );
    drop(busy);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn client_gives_up_after_capped_backoff() {
    let dir = TempDir::new("backoff");
    let config = IpcClientConfig {
        max_connect_attempts: 5,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(250),
        ..IpcClientConfig::new(dir.sock())
    };
    let t0 = tokio::time::Instant::now();
    let err = CollectorIpcClient::connect(config).await.unwrap_err();
    assert!(
        matches!(err, IpcError::ConnectFailed { attempts: 5, .. }),
        "{err}"
    );
    // 100 + 200 + 250 + 250 of (paused) waiting between five attempts at
    // most, each wait jittered down by up to half.
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited <= Duration::from_millis(800),
        "{waited:?}"
    );
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts() {
    let (dir, server, client) = serve_one("restart", SourceCaps::PROCESS).await;
    client.ping().await.unwrap();
    server.stop().await;
    let server = serve(
        fast_config(&dir.sock()),
        SourceCaps::PROCESS | SourceCaps::NETWORK,
        None,
    )
    .await;
    // The first request after the restart may see the old connection
    // closing; the next one reconnects.
    let mut ok = false;
    for _ in 0..3 {
        if client.ping().await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok);
    assert_eq!(
        client.capabilities().capability_bits,
        (SourceCaps::PROCESS | SourceCaps::NETWORK).bits()
    );
    server.stop_after(client).await;
}

/// A collector with one source of `count` process events (sent as fast as
/// they are taken; it then waits), and its counter of events sent.
fn flood_collector(count: u32) -> (Collector, Arc<AtomicU64>) {
    let flood = Replay::new(
        "proc-flood",
        SourceCaps::PROCESS | SourceCaps::REALTIME,
        count.into(),
        |n| {
            let i = u32::try_from(n).unwrap();
            let mut e = ProcessEvent::new(i % 50_000 + 1, format!("p{i}"));
            e.command_line = vec!["/bin/p".into(), format!("{i}")];
            CollectionEvent::Process(e)
        },
    );
    let sent = flood.sent();
    let mut collector = Collector::new(CollectorConfig::default());
    collector.register(Box::new(flood)).unwrap();
    (collector, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_streams_filtered_events_from_a_running_collector() {
    let dir = TempDir::new("subscribe");
    let (collector, _) = flood_collector(1_000);
    let server = serve(
        fast_config(&dir.sock()),
        collector.capabilities(),
        Some(&collector),
    )
    .await;
    let client = connect(&server.path).await;
    let caps = client.capabilities();
    assert_eq!(caps.sources.len(), 1);
    assert_eq!(caps.sources[0].name, "proc-flood");

    // An invalid topic pattern is refused, naming it.
    let err = client
        .subscribe(SubscribeRequest {
            topic_patterns: vec!["events..process".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            IpcError::Server {
                code: ErrorCode::BadRequest,
                message,
            } if message.contains("events..process")
        ),
        "{err}"
    );

    let mut stream = client
        .subscribe(SubscribeRequest {
            event_kinds: vec![i32::from(EventKind::Process)],
            pids: (1..=100).collect(),
            source_names: vec!["proc-flood".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let handle = collector.handle();
    let run = tokio::spawn(collector.run_until(std::future::pending()));
    let mut got = Vec::new();
    let mut last_seq = 0;
    while got.len() < 100 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.sequence, last_seq + 1);
        last_seq = batch.sequence;
        assert_eq!(batch.subscription_id, stream.subscription_id());
        got.extend(batch.events);
    }
    assert_eq!(got.len(), 100);
    let Some(daemoneye_lib::proto::event_record::Event::Process(p)) = &got[6].event else {
        panic!("not a process record");
    };
    assert_eq!(p.pid, 7);
    assert_eq!(p.name, "p6");
    assert_eq!(p.command_line, ["/bin/p", "6"]);
    assert_eq!(p.event_type, "snapshot");
    assert_eq!(got[6].source_name, "proc-flood");
    // Tasks still work on the subscribed connection.
    assert!(
        ask(&client, "t", ProtoTaskType::EnumerateProcesses)
            .await
            .success
    );
    handle.shutdown();
    run.await.unwrap().unwrap();
    server.stop_after(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_counted_drops_and_the_server_stays_bounded() {
    const N: u64 = 100_000;
    let dir = TempDir::new("slow");
    let (collector, sent) = flood_collector(N as u32);
    let config = IpcServerConfig {
        event_queue_batches: 2,
        max_batch_size: 16,
        write_timeout: Duration::from_secs(30),
        ..fast_config(&dir.sock())
    };
    let server = serve(config, collector.capabilities(), Some(&collector)).await;
    let client = CollectorIpcClient::connect(IpcClientConfig {
        event_buffer_batches: 1,
        ..client_config(&server.path)
    })
    .await
    .unwrap();
    let mut stream = client.subscribe(SubscribeRequest::default()).await.unwrap();
    let handle = collector.handle();
    let run = tokio::spawn(collector.run_until(std::future::pending()));

    // Not reading: wait until the source has sent everything and the server
    // has accounted for every event.
    for _ in 0..3000 {
        let s = server.handle.stats();
        if sent.load(Ordering::Relaxed) == N && s.events_dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sent.load(Ordering::Relaxed), N);
    let stalled = server.handle.stats();
    assert!(stalled.events_dropped > 0, "{stalled:?}");
    // What the server holds for this client is bounded by its queue (2
    // batches of 16) plus what fits in the socket buffers and the client's
    // one-batch buffer; far below N.
    assert!(stalled.events_streamed + 32 < N / 2, "{stalled:?}");

    // Now read everything: received + reported drops add up.
    let mut received = 0u64;
    let mut reported = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.recv()).await {
            Ok(Some(b)) => {
                received += b.events.len() as u64;
                reported += b.dropped_since_last;
            }
            Ok(None) => break,
            Err(_) => {
                let s = server.handle.stats();
                if s.events_streamed + s.events_dropped == N {
                    break;
                }
            }
        }
    }
    let s = server.handle.stats();
    assert_eq!(s.events_streamed + s.events_dropped, N, "{s:?}");
    assert_eq!(received, s.events_streamed);
    assert!(reported <= s.events_dropped && reported > 0);
    handle.shutdown();
    run.await.unwrap().unwrap();
    server.stop_after(client).await;
}

#[tokio::test]
async fn bad_frames_get_an_error_or_a_closed_connection() {
    let dir = TempDir::new("bad");
    let server = serve(fast_config(&dir.sock()), SourceCaps::PROCESS, None).await;
    let path = server.path.clone();

    // Random bytes: answered with an error, then closed.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let mut rng = XorShift(0x1234_5678);
    let noise: Vec<u8> = (0..4096).map(|_| rng.byte()).collect();
    s.write_all(&noise).await.unwrap();
    let (_, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);

    // Over-long announced length: error at once, closed.
    let mut s = raw_handshake(&path).await;
    let mut bad = (2u32 << 20).to_le_bytes().to_vec();
    bad.extend_from_slice(&[0; 4]);
    s.write_all(&bad).await.unwrap();
    let (got, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);
    assert_eq!(error_code(&got[0]), Some(ErrorCode::BadRequest));

    // Bad checksum.
    let mut s = raw_handshake(&path).await;
    let mut f = frame(&Envelope::from(Heartbeat { nonce: 1 }));
    f[5] ^= 0xff;
    s.write_all(&f).await.unwrap();
    let (got, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof && error_code(&got[0]) == Some(ErrorCode::BadRequest));

    // A lying length: announces more than is sent, then waits.
    let mut s = raw_handshake(&path).await;
    let mut f = 1000u32.to_le_bytes().to_vec();
    f.extend_from_slice(&[0; 14]);
    s.write_all(&f).await.unwrap();
    let (_, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);

    // A truncated frame, then end of stream.
    let mut s = raw_handshake(&path).await;
    let f = frame(&Envelope::from(Heartbeat { nonce: 1 }));
    s.write_all(&f[..f.len() - 1]).await.unwrap();
    s.shutdown().await.unwrap();
    let (_, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);

    // Garbage protobuf and an unknown message type in whole frames: answered,
    // and the connection goes on.
    let mut s = raw_handshake(&path).await;
    let mut garbage = Vec::new();
    FrameCodec::new().encode_frame(&[0xff, 0xff, 0xff, 0xff, 0x0f], &mut garbage);
    s.write_all(&garbage).await.unwrap();
    assert_eq!(
        error_code(&read_one(&mut s).await),
        Some(ErrorCode::BadRequest)
    );
    let unknown = Envelope {
        request_id: 77,
        payload: None,
    };
    let mut f = Vec::new();
    FrameCodec::new().encode_frame(&unknown.encode_to_vec(), &mut f);
    s.write_all(&f).await.unwrap();
    let answer = read_one(&mut s).await;
    assert_eq!(answer.request_id, 77);
    assert_eq!(error_code(&answer), Some(ErrorCode::UnsupportedMessage));
    s.write_all(&frame(
        &Envelope::from(Heartbeat { nonce: 9 }).with_request_id(5),
    ))
    .await
    .unwrap();
    let echo = read_one(&mut s).await;
    assert_eq!(echo.request_id, 5);
    assert!(matches!(
        echo.payload,
        Some(Payload::Heartbeat(Heartbeat { nonce: 9 }))
    ));

    // A task before the handshake: refused and closed.
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(&frame(&Envelope::from(DetectionTask::new(
        "t",
        ProtoTaskType::EnumerateProcesses,
    ))))
    .await
    .unwrap();
    let (got, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);
    assert_eq!(error_code(&got[0]), Some(ErrorCode::HandshakeRequired));
    // A wrong protocol version: refused and closed.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let mut h = hello();
    if let Some(Payload::CapabilityRequest(r)) = &mut h.payload {
        r.protocol_version = 99;
    }
    s.write_all(&frame(&h)).await.unwrap();
    let (got, eof) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(eof);
    assert_eq!(error_code(&got[0]), Some(ErrorCode::UnsupportedVersion));

    drop(s);
    let st = server.wait_idle().await;
    assert!(st.frames_rejected["checksum_mismatch"] >= 1, "{st:?}");
    assert!(st.frames_rejected["frame_too_long"] >= 1, "{st:?}");
    assert_eq!(st.frames_rejected["invalid_envelope"], 1, "{st:?}");
    assert_eq!(st.frames_rejected["unknown_message_type"], 1, "{st:?}");
    assert_eq!(st.frames_rejected["truncated"], 1, "{st:?}");
    assert_eq!(st.connections_closed_read_timeout, 1, "{st:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_at_once_while_a_good_client_is_served() {
    let dir = TempDir::new("thousand");
    let config = IpcServerConfig {
        max_connections: 64,
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    let good = connect(&server.path).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let good_loop = {
        let (stop, served) = (stop.clone(), served.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = ask(&good, "g", ProtoTaskType::EnumerateProcesses).await;
                assert!(r.success);
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut joins = Vec::new();
    for i in 0..1000u32 {
        let path = server.path.clone();
        joins.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.unwrap();
            if i % 2 == 0 {
                // Speaks a bad first message.
                let _ = s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5]).await;
            }
            // Each gets an error answer or a closed connection.
            let (got, eof) = read_all(&mut s, Duration::from_secs(20)).await;
            assert!(eof, "client {i} was neither answered nor closed");
            got.iter().all(|e| error_code(e).is_some())
        }));
    }
    for j in joins {
        assert!(j.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    good_loop.await.unwrap();
    assert!(served.load(Ordering::Relaxed) > 0);
    let s = server.handle.stats();
    // All from one uid: refused at its own limit before the total's.
    let refused = s.connections_refused_overloaded + s.connections_refused_peer_limit;
    assert_eq!(s.connections_accepted + refused, 1001, "{s:?}");
    assert!(s.connections_refused_peer_limit > 0, "{s:?}");
    server.stop().await;
}

/// A tiny deterministic generator for the fuzz tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

trait EncodeFrame {
    fn encode_frame(&self, payload: &[u8], out: &mut Vec<u8>);
}

impl EncodeFrame for FrameCodec {
    fn encode_frame(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        out.extend_from_slice(payload);
    }
}

/// The registry reads the same counters as the stats, by name.
fn registry_agrees(
    handle: &collector_core::IpcServerHandle,
    s: &collector_core::IpcServerStats,
    framing_breaks: u64,
) {
    let registry = collector_core::metrics::Registry::new();
    handle.register_metrics(&registry);
    let metric = |name: &str, reason: Option<&str>| {
        crate::sources::metric_value(&registry, name, &[("stage", "ipc")], reason)
    };
    assert_eq!(
        metric("daemoneye_frames_received_total", None),
        s.frames_received
    );
    assert_eq!(
        metric("daemoneye_frames_received_total", None),
        metric("daemoneye_envelopes_accepted_total", None)
            + metric("daemoneye_frames_rejected_total", Some("invalid_envelope"))
            + metric(
                "daemoneye_frames_rejected_total",
                Some("unknown_message_type")
            )
    );
    assert_eq!(
        metric("daemoneye_connections_closed_total", Some("protocol_error")),
        framing_breaks
    );
    assert_eq!(
        metric("daemoneye_connections_accepted_total", None),
        s.connections_accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_a_live_server_with_100k_mutated_frames() {
    const CONNECTIONS: usize = 40;
    const PER_CONNECTION: usize = 2_500;
    let dir = TempDir::new("fuzz");
    let config = IpcServerConfig {
        max_connections: 8,
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    let seeds: Vec<Vec<u8>> = [
        Envelope::from(DetectionTask::new("fz", ProtoTaskType::EnumerateProcesses)),
        Envelope::from(Heartbeat { nonce: 3 }),
        Envelope::from(SubscribeRequest::default()),
        hello(),
    ]
    .iter()
    .map(|e| e.clone().with_request_id(42).encode_to_vec())
    .collect();

    let mut sent_frames = 0u64;
    let mut framing_breaks = 0u64;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // A few connections at a time, each: handshake, mutated payloads in
    // valid frames, and every other one ends with a frame broken at the
    // framing level (which closes it).
    for round in 0..CONNECTIONS / 4 {
        let mut joins = Vec::new();
        for c in 0..4 {
            let mut wire = frame(&hello());
            let mut frames = 1u64;
            for _ in 0..PER_CONNECTION {
                let mut p = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    match rng.below(3) {
                        0 => {
                            let i = rng.below(p.len());
                            p[i] = rng.byte();
                        }
                        1 => p.truncate(rng.below(p.len()) + 1),
                        _ => p.push(rng.byte()),
                    }
                }
                FrameCodec::new().encode_frame(&p, &mut wire);
                frames += 1;
            }
            let broken = (round * 4 + c) % 2 == 0;
            if broken {
                let mut f = Vec::new();
                FrameCodec::new().encode_frame(b"xyz", &mut f);
                f[4] ^= 1;
                wire.extend_from_slice(&f);
            }
            sent_frames += frames;
            framing_breaks += u64::from(broken);
            let path = server.path.clone();
            joins.push(tokio::spawn(async move {
                let s = UnixStream::connect(&path).await.unwrap();
                let (mut rd, mut wr) = s.into_split();
                let drain = tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = rd.read_to_end(&mut sink).await;
                });
                let _ = wr.write_all(&wire).await;
                let _ = wr.shutdown().await;
                drain.await.unwrap();
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
    }
    assert!(sent_frames >= 100_000);

    let client = connect(&server.path).await;
    assert!(
        ask(&client, "after", ProtoTaskType::EnumerateProcesses)
            .await
            .success
    );
    drop(client);
    let s = server.wait_idle().await;
    let rejected = |r: &str| s.frames_rejected.get(r).copied().unwrap_or(0);
    // Every well-framed frame was read, and is either an envelope or a
    // rejected payload; every broken one closed its connection.
    assert_eq!(s.frames_received, sent_frames + 2, "{s:?}");
    assert_eq!(
        s.frames_received,
        s.envelopes_accepted + rejected("invalid_envelope") + rejected("unknown_message_type"),
        "{s:?}"
    );
    assert_eq!(rejected("checksum_mismatch"), framing_breaks, "{s:?}");
    assert_eq!(s.connections_closed_protocol_error, framing_breaks, "{s:?}");
    assert_eq!(s.connections_accepted, s.connections_closed(), "{s:?}");
    assert!(rejected("invalid_envelope") > 1000, "{s:?}");
    registry_agrees(&server.handle, &s, framing_breaks);
    // Tasks still running when their connection closed are aborted.
    assert!(
        s.tasks_received >= s.tasks_succeeded + s.tasks_failed,
        "{s:?}"
    );
    server.stop().await;
}

/// Run by `a_peer_of_another_uid_is_refused` in a child process as
/// `nobody`: connects, says hello, and prints how many bytes came back.
#[test]
#[ignore = "helper: run as a child process by a_peer_of_another_uid_is_refused"]
fn peer_child_helper() {
    use std::io::{Read, Write};
    let Some(path) = std::env::var_os("IPC_PEER_SOCKET") else {
        return;
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    let _ = s.write_all(&frame(&hello()));
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    #[allow(clippy::print_stdout, reason = "the parent test reads it")]
    {
        println!("peer-child-bytes={}", got.len());
    }
}

/// `peer_child_helper` run as `nobody` against `path`: what it printed,
/// or `None` (said) when the test binary cannot run as nobody here.
async fn as_nobody(path: &Path) -> Option<String> {
    let exe = std::env::current_exe().unwrap();
    let path = path.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .args([
                "ipc::peer_child_helper",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("IPC_PEER_SOCKET", path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !stdout.contains("peer-child-bytes") {
        eprintln!(
            "skipping: the test binary cannot run as nobody here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(stdout)
}

/// `peer_uid`: the agent's user, after it dropped root, is served by a
/// root collector; it reaches the socket (0660) through the group of the
/// setgid directory it is in, as the agent prepares `<data-dir>/collectors`.
#[tokio::test]
async fn the_peer_uid_reaches_a_socket_shared_through_its_group() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to run a client as nobody");
        return;
    }
    let dir = TempDir::new("peer-uid");
    let sockets = dir.sock().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&sockets).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&sockets, None, Some(65534)).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let config = IpcServerConfig {
        peer_uid: Some(65534),
        ..fast_config(&dir.sock())
    };
    let server = serve(config, SourceCaps::PROCESS, None).await;
    let meta = std::fs::metadata(&server.path).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534));
    let Some(stdout) = as_nobody(&server.path).await else {
        server.stop().await;
        return;
    };
    // The handshake was answered.
    assert!(!stdout.contains("peer-child-bytes=0"), "{stdout}");
    let s = server.wait_idle().await;
    assert_eq!(
        (s.connections_accepted, s.connections_refused_peer),
        (1, 0),
        "{s:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_peer_of_another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to run a client as nobody");
        return;
    }
    let dir = TempDir::new("nobody");
    let server = serve(fast_config(&dir.sock()), SourceCaps::PROCESS, None).await;
    // Open the way to the socket so that only the peer check stands between
    // nobody and the server.
    for p in [&dir.0, &dir.sock().parent().unwrap().to_path_buf()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Some(stdout) = as_nobody(&server.path).await else {
        server.stop().await;
        return;
    };
    assert!(stdout.contains("peer-child-bytes=0"), "{stdout}");
    let s = server.handle.stats();
    assert_eq!(s.connections_refused_peer, 1, "{s:?}");
    assert_eq!(s.connections_accepted, 0, "{s:?}");
    // Our own uid is still served.
    let client = connect(&server.path).await;
    client.ping().await.unwrap();
    server.stop_after(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_collector_its_sources_and_the_server() {
    let dir = TempDir::new("health");
    let (collector, _) = flood_collector(500);
    let server = CollectorIpcServer::new(fast_config(&dir.sock()), collector.capabilities())
        .await
        .unwrap()
        .with_events(collector.handle())
        .with_name("flood-collector");
    let server = run(server);
    let server_handle = server.handle.clone();
    let client = connect(&server.path).await;
    tokio::select! {
        biased;
        () = server_handle.subscribed() => panic!("subscribed before any subscription"),
        () = std::future::ready(()) => {}
    }
    let mut stream = client.subscribe(SubscribeRequest::default()).await.unwrap();
    // Completes now, and again for a later caller.
    server_handle.subscribed().await;
    server_handle.subscribed().await;
    let handle = collector.handle();
    let run = tokio::spawn(collector.run_until(std::future::pending()));
    let mut seen = 0;
    while seen < 500 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .unwrap()
            .unwrap();
        seen += batch.events.len();
    }
    // The server counts a write once `write_all` returns, which can be after
    // this client has read it; its one writer answers the ping only after
    // that, so the health asked next has counted every event read here.
    client.ping().await.unwrap();
    let report = client.health().await.unwrap();
    assert_eq!(report.name, "flood-collector");
    assert_eq!(report.pid, std::process::id());
    assert_eq!(report.counters.get("events_accepted"), Some(&500));
    let component = |name: &str| {
        let found = report.components.iter().find(|c| c.name == name);
        found.unwrap_or_else(|| panic!("no component {name:?} in {report:?}"))
    };
    // One component per source, and the server's own counters.
    let source = component("proc-flood");
    assert_eq!(source.counters.get("events_received"), Some(&500));
    assert_ne!(source.state(), HealthState::Unhealthy, "{source:?}");
    let ipc = component("ipc");
    assert_eq!(ipc.counters.get("connections_accepted"), Some(&1));
    assert_eq!(ipc.counters.get("subscriptions_opened"), Some(&1));
    assert!(ipc
        .counters
        .get("events_streamed")
        .is_some_and(|n| *n >= 500));
    handle.shutdown();
    run.await.unwrap().unwrap();
    drop(stream);
    server.stop_after(client).await;
}

#[tokio::test]
async fn a_health_provider_answers_and_a_silent_one_is_unreachable() {
    let dir = TempDir::new("health-provider");
    let server = CollectorIpcServer::new(fast_config(&dir.sock()), SourceCaps::empty())
        .await
        .unwrap()
        .with_health(|| {
            Box::pin(async {
                daemoneye_lib::proto::ComponentHealth {
                    name: "agent".into(),
                    state: HealthState::Degraded.into(),
                    message: "collector restarting".into(),
                    ..Default::default()
                }
            })
        });
    let server = run(server);
    let client = connect(&server.path).await;
    let report = client.health().await.unwrap();
    assert_eq!(report.name, "agent");
    assert_eq!(report.state(), HealthState::Degraded);
    assert_eq!(report.message, "collector restarting");
    assert!(report.components.iter().any(|c| c.name == "ipc"));
    server.stop_after(client).await;

    let dir = TempDir::new("health-silent");
    let server = CollectorIpcServer::new(fast_config(&dir.sock()), SourceCaps::empty())
        .await
        .unwrap()
        .with_name("stuck")
        .with_health(|| Box::pin(std::future::pending()));
    let server = run(server);
    let client = connect(&server.path).await;
    let report = client.health().await.unwrap();
    assert_eq!(report.name, "stuck");
    assert_eq!(report.state(), HealthState::Unreachable);
    server.stop_after(client).await;
}

/// Execs for odd pids, exits for even ones, pids 1 to `count`, then idles.
fn execs_and_exits(count: u32) -> Replay {
    Replay::new("execs-and-exits", SourceCaps::PROCESS, count.into(), |n| {
        let pid = u32::try_from(n).unwrap() + 1;
        let mut e = ProcessEvent::new(pid, "p");
        if pid % 2 == 1 {
            e.event_type = collector_core::ProcessEventType::Exec;
        } else {
            e.event_type = collector_core::ProcessEventType::Exit;
            e.exit_code = Some(0);
        }
        CollectionEvent::Process(e)
    })
}

/// The pids streamed, up to and including `last`.
async fn drain(stream: &mut collector_core::ipc::EventStream, last: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    while pids.last() != Some(&last) {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .unwrap()
            .unwrap();
        for r in batch.events {
            let Some(daemoneye_lib::proto::event_record::Event::Process(p)) = r.event else {
                panic!("not a process record");
            };
            pids.push(p.pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_filter_by_topic_pattern_as_the_bus_does() {
    let dir = TempDir::new("topics");
    let mut collector = Collector::new(CollectorConfig::default());
    collector.register(Box::new(execs_and_exits(100))).unwrap();
    let server = serve(
        fast_config(&dir.sock()),
        collector.capabilities(),
        Some(&collector),
    )
    .await;
    let subscribe = |pattern: &'static str| {
        let path = server.path.clone();
        async move {
            let client = connect(&path).await;
            let stream = client
                .subscribe(SubscribeRequest {
                    topic_patterns: vec![pattern.into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            (client, stream)
        }
    };
    let (_c1, mut execs) = subscribe("events.process.exec").await;
    let (_c2, mut all) = subscribe("events.#").await;
    let handle = collector.handle();
    let run = tokio::spawn(collector.run_until(std::future::pending()));
    // Per-source order is kept: once the last exec (pid 99) is in, every
    // event before it has been matched or skipped.
    let got = drain(&mut execs, 99).await;
    assert_eq!(got, (1..=99).step_by(2).collect::<Vec<_>>());
    let got = drain(&mut all, 100).await;
    assert_eq!(got, (1..=100).collect::<Vec<_>>());
    handle.shutdown();
    run.await.unwrap().unwrap();
    server.stop().await;
}
