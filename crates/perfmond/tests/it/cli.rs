//! The `perfmond` binary: `top` prints the busy child; `run --socket`
//! serves the collector IPC protocol as the agent expects of a collector
//! program.

use std::process::{Command, Stdio};
use std::time::Duration;

use collector_core::{CollectorIpcClient, IpcClientConfig};
use daemoneye_lib::proto::{
    event_record, DetectionTask, Domain, PerformanceFilter, ProtoTaskType, SubscribeRequest,
};

use crate::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_perfmond");

/// One `perfmond top` of 20 processes over 1.5 s: the header, and the row
/// of `pid` split in fields when it is there.
fn top_row(pid: &str) -> (Vec<String>, Option<Vec<String>>, String) {
    let out = Command::new(BIN)
        .args(["top", "-n", "20", "--interval-ms", "1500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let split = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let header = split(text.lines().next().unwrap());
    let row = text.lines().skip(1).map(split).find(|f| f[0] == pid);
    (header, row, text)
}

#[test]
fn top_prints_the_busy_child() {
    let child = Spawned::busy();
    let pid = child.pid().to_string();
    // The machine may be shared: five looks, one must see the share.
    let mut shares = Vec::new();
    for _ in 0..5 {
        let (t0, c0) = (tokio::time::Instant::now(), child.cpu_ns());
        let (header, row, text) = top_row(&pid);
        let got = (child.cpu_ns() - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
        assert_eq!(header, ["PID", "USER", "%CPU", "RSS_KB", "COMMAND"]);
        let row = row.unwrap_or_else(|| panic!("pid {pid} not in\n{text}"));
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap();
        assert_eq!(row[1], me.name);
        assert_eq!(row[4..].join(" "), "sh -c while :; do :; done");
        let cpu: f64 = row[2].parse().unwrap();
        shares.push((cpu, got));
        if cpu >= crate::wanted_share(got) {
            return;
        }
    }
    panic!("the busy child under its share in every look (perfmond, scheduler): {shares:?}");
}

#[tokio::test]
async fn run_serves_events_and_health_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("perfmond.sock");
    // The agent's default arguments for a collector program.
    let mut server = tokio::process::Command::new(BIN)
        .args(["run", "--socket"])
        .arg(&socket)
        .args(["--no-database", "--await-subscriber", "--interval", "1"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = CollectorIpcClient::connect(IpcClientConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_connect_attempts: 100,
        request_timeout: Duration::from_secs(20),
        ..IpcClientConfig::new(&socket)
    })
    .await
    .unwrap();
    let caps = client.capabilities();
    assert_eq!(caps.supported_domains, [i32::from(Domain::Performance)]);
    assert_eq!(
        caps.supported_tasks,
        [i32::from(ProtoTaskType::CollectPerformanceMetrics)]
    );
    let mut stream = client.subscribe(SubscribeRequest::default()).await.unwrap();
    let mut names = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Two samples: the second has CPU shares.
    while !names.iter().any(|n| n == "cpu.total") {
        let batch = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .expect("no cpu.total within 20 s")
            .unwrap();
        for r in batch.events {
            match r.event {
                Some(event_record::Event::Performance(p)) => names.push(p.metric),
                other => panic!("not a performance record: {other:?}"),
            }
        }
    }
    assert!(names.iter().any(|n| n == "memory.available"), "{names:?}");
    // A task is answered from the latest sample, filtered.
    let mut task = DetectionTask::new("t1", ProtoTaskType::CollectPerformanceMetrics);
    task.performance_filter = Some(PerformanceFilter {
        metric_names: vec!["memory.available".into(), "cpu.total".into()],
        ..PerformanceFilter::default()
    });
    let result = client.send_task(task).await.unwrap();
    assert!(result.success, "{result:?}");
    let mut got: Vec<&str> = result
        .performance_records
        .iter()
        .map(|r| r.metric.as_str())
        .collect();
    got.sort_unstable();
    assert_eq!(got, ["cpu.total", "memory.available"]);
    let other = client
        .send_task(DetectionTask::new("t2", ProtoTaskType::EnumerateProcesses))
        .await
        .unwrap();
    assert!(!other.success);
    let health = client.health().await.unwrap();
    let source = health
        .components
        .iter()
        .find(|c| c.name == "perfmond")
        .unwrap_or_else(|| panic!("{health:?}"));
    assert!(
        source.counters.get("samples").copied().unwrap_or(0) >= 1,
        "{source:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn metrics_listen_serves_perfmonds_counters_and_events_jsonl_its_events() {
    use std::io::BufRead;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--no-socket",
            "--interval",
            "3600",
            "--events-jsonl",
            "-",
        ])
        .args(["--metrics-listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // A line on stdout: the first sample was taken and its events delivered.
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["metric"].is_string(), "{first}");
    let reply = collector_core::testing::scrape_metrics(addr).unwrap();
    let (head, text) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<u64>()
                .ok()
        })
    };
    assert_eq!(
        value("daemoneye_collection_cycles_total{source=\"perfmond\"}"),
        Some(1),
        "{text}"
    );
    assert!(value("daemoneye_events_emitted_total{source=\"perfmond\"}").unwrap() > 0);
    assert!(text.contains("# TYPE daemoneye_pressure_files_absent gauge\n"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for _ in lines {}
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_bad_config_is_refused_with_exit_code_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, names) in [
        ("[perfmond]\nintervall = \"5s\"\n", "intervall"),
        (
            "[perfmond.anomalies]\npsi_some_avg10_percent = 400.0\n",
            "psi_some_avg10_percent",
        ),
        ("[perfmond]\ninterval = \"1ms\"\n", "interval"),
    ] {
        let path = dir.path().join("perfmond.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--no-socket", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{text}: {err}");
    }
}
