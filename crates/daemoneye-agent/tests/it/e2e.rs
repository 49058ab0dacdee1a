//! The agent end to end, as root: collector child, rules, alerts, restart,
//! ledger. Skips (saying why) when not root: the kernel process connector is
//! what lets it see short-lived processes.
// Blocking tests around a child process: no tokio clock to pause.
#![allow(clippy::disallowed_types)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::Killed;

const AGENT: &str = env!("CARGO_BIN_EXE_daemoneye-agent");

/// `daemoneye-agent run` on `data_dir`, with collection and sweeps an hour
/// apart: what a test sees is what it starts.
fn agent_run(data_dir: &Path) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.args(["run", "--interval", "3600", "--sweep-secs", "3600"])
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

/// A running agent, stopped when dropped (politely first, so that it stops
/// its collector).
struct Agent {
    child: Killed,
    alerts: mpsc::Receiver<Value>,
    log: mpsc::Receiver<String>,
}

impl Agent {
    fn start(
        data_dir: &Path,
        rules_dir: &Path,
        config: &Path,
        syslog: &str,
        webhook: &str,
    ) -> Self {
        let mut cmd = agent_run(data_dir);
        cmd.arg("--rules-dir")
            .arg(rules_dir)
            .args(["--syslog", syslog])
            .args(["--webhook", webhook, "--webhook-header", "X-Team: sec"])
            .arg("--webhook-headers-file")
            .arg(rules_dir.join("webhook-headers"))
            .arg("--config")
            .arg(config);
        Self::spawn(cmd)
    }

    /// Runs `cmd` (an [`agent_run`]), its alerts (stdout) and log (stderr)
    /// read as they come.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let alerts = crate::read_lines(move || out, |l| Some(serde_json::from_str(&l).unwrap()));
        let err = child.stderr.take().unwrap();
        let log = crate::read_lines(move || err, Some);
        Self {
            child: Killed(child),
            alerts,
            log,
        }
    }

    /// The first alert of `rule` for a process named `name`, within `within`.
    fn wait_alert(&self, rule: &str, name: &str, within: Duration) -> Option<Value> {
        crate::first_within(&self.alerts, within, |a| {
            a["rule_id"] == rule && a["process"]["name"] == name
        })
    }

    /// Runs probe `i` (it returns the name of the process it ran) until the
    /// agent, which may still be starting, alerts on it with `rule` within
    /// half a second: at most 40 tries.
    fn alert_on_probe(&self, rule: &str, probe: impl FnMut(usize) -> String) -> Option<Value> {
        crate::alert_on_probe(&self.alerts, rule, probe)
    }

    /// A rule refusal is logged within 30 s, naming each of `names`.
    fn assert_refused(&self, names: &[&str]) {
        let refused = self
            .wait_log("rule refused", Duration::from_secs(30))
            .expect("no refusal logged");
        assert!(names.iter().all(|n| refused.contains(n)), "{refused}");
    }

    /// The first log line containing `needle`, within `within`.
    fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        crate::first_within(&self.log, within, |line| line.contains(needle))
    }
}

/// A minimal HTTP endpoint answering 200 to every request; each request's
/// head and body arrive on the channel.
fn webhook_endpoint() -> (String, mpsc::Receiver<(String, Value)>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = text[..end].to_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body: Value = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                    buf.drain(..end + 4 + len);
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    let _ = tx.send((head, body));
                }
            });
        }
    });
    (url, rx)
}

/// The agent's health counter `key`, 0 until it has one.
pub(crate) fn agent_counter(data: &Path, key: &str) -> u64 {
    agent_health(data).counters.get(key).copied().unwrap_or(0)
}

/// The agent's health report, asked over its socket.
pub(crate) fn agent_health(data: &Path) -> daemoneye_lib::proto::ComponentHealth {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = collector_core::CollectorIpcClient::connect(
            collector_core::IpcClientConfig::new(data.join("agent.sock")),
        )
        .await
        .unwrap();
        client.health().await.unwrap()
    })
}

/// Copies `src` to `dir/name`, runs it with `args` to completion.
pub(crate) fn run_copy(src: &str, dir: &Path, name: &str, args: &[&str]) {
    let exe = dir.join(name);
    std::fs::copy(src, &exe).unwrap();
    // Another test's fork may still hold the copy's write descriptor for a
    // moment (until its child execs): the kernel then says "text file busy".
    let mut tries = 0;
    let status = loop {
        match Command::new(&exe).args(args).status() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::park_timeout(Duration::from_millis(5));
            }
            other => break other.unwrap(),
        }
    };
    assert!(status.success());
    std::fs::remove_file(&exe).unwrap();
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, in order
fn the_agent_detects_restarts_and_keeps_a_verifiable_ledger() {
    if !crate::root_or_skip("the end-to-end agent test needs root (kernel process connector)") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("bad.toml"),
        "[[rule]]\nid = 'wiper'\nname = 'wipe'\nseverity = 'low'\nsql = 'DELETE FROM processes'\n",
    )
    .unwrap();
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (webhook_url, webhook) = webhook_endpoint();
    // The secret header from a private file, not the command line.
    let headers = rules.path().join("webhook-headers");
    crate::write_with_mode(&headers, "X-Token: e2e\n", 0o600);
    // The webhook's bodies in ECS; every other sink native.
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("agent.toml");
    std::fs::write(&config, "[sinks.formats]\nwebhook = \"ecs\"\n").unwrap();
    let agent = Agent::start(
        data.path(),
        rules.path(),
        &config,
        &format!("udp://{}", syslog.local_addr().unwrap()),
        &webhook_url,
    );

    // (4) The write rule is refused, naming file, rule and reason.
    agent.assert_refused(&["bad.toml", "wiper", "only reading"]);

    // Ready once a probe from /dev/shm is alerted on.
    let shm = Path::new("/dev/shm");
    let probe = agent
        .alert_on_probe("exec-from-temp-dir", |i| {
            let name = format!("probe{i}");
            run_copy("/bin/sleep", shm, &name, &["0.3"]);
            name
        })
        .expect("no alert for a program run from /dev/shm");
    assert_eq!(probe["severity"], "high");
    assert!(probe["process"]["process_key"].is_string());
    // The same alert reached the webhook, with its header, as ECS.
    let posted = loop {
        let (head, body) = webhook
            .recv_timeout(Duration::from_secs(10))
            .expect("no webhook POST");
        if body["rule"]["id"] == "exec-from-temp-dir"
            && body["process"]["entity_id"] == probe["process"]["process_key"]
        {
            assert_eq!(body["event"]["kind"], "alert", "{body}");
            assert_eq!(body["process"]["pid"], probe["process"]["pid"], "{body}");
            break head;
        }
    };
    assert!(posted.starts_with("POST /hook "), "{posted}");
    assert!(
        posted.to_ascii_lowercase().contains("x-token: e2e"),
        "{posted}"
    );
    // The same alert reached the syslog collector (RFC 5424, authpriv.err).
    let mut buf = vec![0u8; 65536];
    let msg = loop {
        let n = syslog
            .recv(&mut buf)
            .expect("no syslog message for the probe");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains(" exec-from-temp-dir [") {
            break msg;
        }
    };
    assert!(msg.starts_with("<83>1 "), "{msg}");

    // (2) A shell run from /dev/shm.
    run_copy("/bin/sh", shm, "shmshell", &["-c", "sleep 0.3; true"]);
    assert!(
        agent
            .wait_alert("exec-from-temp-dir", "shmshell", Duration::from_secs(2))
            .is_some(),
        "no alert for a shell run from /dev/shm"
    );

    // (1) A system binary copied to a temp path, run, deleted: an alert within 2 s.
    let tmp = tempfile::tempdir().unwrap();
    run_copy("/bin/sleep", tmp.path(), "sleepy", &["0.2"]);
    assert!(
        agent
            .wait_alert("exec-from-temp-dir", "sleepy", Duration::from_secs(2))
            .is_some(),
        "no alert within 2 s for a binary run from a temp path"
    );

    // (3) A benign workload: coreutils and building a small program (outside
    // temporary directories) raise no alert from the built-in pack.
    // Built under /var/lib (root's, not a temporary directory: the checkout
    // itself may live under /tmp, where running a program is alerted on).
    let work = Path::new("/var/lib").join(format!("daemoneye-benign-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    for (cmd, args) in [
        ("ls", vec!["-la", "/etc"]),
        ("cat", vec!["/etc/hostname"]),
        ("sort", vec!["/etc/passwd"]),
        ("sha256sum", vec!["/etc/passwd"]),
        (
            "sh",
            vec!["-c", "cat /etc/passwd | sort | uniq -c | head -3"],
        ),
    ] {
        assert!(Command::new(cmd)
            .args(&args)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
    }
    let src = work.join("hello.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let built = Command::new("cc")
        .arg("-o")
        .arg(work.join("hello"))
        .arg(&src)
        .status();
    if built.is_ok_and(|s| s.success()) {
        assert!(Command::new(work.join("hello")).status().unwrap().success());
    }
    // A marker after the workload: everything before it has been judged.
    run_copy("/bin/sleep", shm, "marker", &["0.3"]);
    let mut benign_alerts = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("marker never alerted");
        let a = agent.alerts.recv_timeout(left).unwrap();
        if a["process"]["name"] == "marker" {
            break;
        }
        let name = a["process"]["name"].as_str().unwrap_or("").to_owned();
        if [
            "ls",
            "cat",
            "sort",
            "sha256sum",
            "sh",
            "uniq",
            "head",
            "cc",
            "cc1",
            "as",
            "ld",
            "collect2",
            "hello",
        ]
        .contains(&name.as_str())
        {
            benign_alerts.push(a);
        }
    }
    assert!(
        benign_alerts.is_empty(),
        "benign workload alerted: {benign_alerts:#?}"
    );
    let _ = std::fs::remove_dir_all(&work);

    // (5) Killing the collector with SIGKILL: it is restarted, detection resumes.
    // Its pid from health: as root it is the spawner's child, not the agent's.
    let pid = i32::try_from(agent_health(data.path()).components[0].pid).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent
        .wait_log("collector exited; restarting", Duration::from_secs(10))
        .expect("restart not logged");
    let resumed = agent.alert_on_probe("exec-from-temp-dir", |i| {
        let name = format!("after{i}");
        run_copy("/bin/sleep", shm, &name, &["0.3"]);
        name
    });
    assert!(
        resumed.is_some(),
        "detection did not resume after the collector was killed"
    );

    // Health over the agent's socket. Detection resumes with the restarted
    // collector's kernel tier, while its first snapshot may still be under
    // way: asked again until that snapshot is counted (10 s at most), then
    // read below.
    let snapshots = |r: &daemoneye_lib::proto::ComponentHealth| {
        r.components
            .first()
            .and_then(|c| c.components.iter().find(|s| s.name == "procmond"))
            .and_then(|s| s.counters.get("snapshots").copied())
            .unwrap_or(0)
    };
    let asked = std::time::Instant::now();
    let report = loop {
        let report = agent_health(data.path());
        if snapshots(&report) >= 1 || asked.elapsed() > Duration::from_secs(10) {
            break report;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    };

    // Started as root, the agent runs as its user with no capability at all
    // (see privsep.rs); its collector uses only three capabilities
    // (DAC_READ_SEARCH, NET_ADMIN, SYS_PTRACE), with no_new_privs, having
    // dropped the two it loads the eBPF tier with (BPF, PERFMON) once loaded
    // (its bounding set is the spawner's, what every collector of its list
    // takes, fsmond's SYS_ADMIN too: lowering it would take CAP_SETPCAP,
    // and no_new_privs keeps any exec within the permitted set).
    let load_ebpf = "000000c000281004";
    let none = "0000000000000000";
    for (pid, effective, permitted, bounding) in [
        (agent.child.0.id(), none, none, none),
        (
            report.components[0].pid,
            "0000000000081004",
            "0000000000081004",
            load_ebpf,
        ),
    ] {
        let field = |name: &str| crate::status(pid, name).unwrap();
        assert_eq!(field("CapEff:"), effective, "pid {pid}");
        assert_eq!(field("CapPrm:"), permitted, "pid {pid}");
        assert_eq!(field("CapBnd:"), bounding, "pid {pid}");
        assert_eq!(field("NoNewPrivs:"), "1", "pid {pid}");
    }

    // The health report: the restart is counted, the collector answers for
    // itself (as procmond, with its sources).
    assert_eq!(report.name, "daemoneye-agent");
    assert_eq!(report.counters["collector_restarts"], 1, "{report:#?}");
    assert!(report.counters["events_received"] > 0, "{report:#?}");
    let collector = &report.components[0];
    assert_eq!(collector.name, "procmond", "{report:#?}");
    assert!(
        collector
            .components
            .iter()
            .any(|c| c.name == "procmond-monitor" || c.counters.contains_key("events_received")),
        "{collector:#?}"
    );
    assert!(collector.pid > 0 && collector.pid != agent.child.0.id());
    let source = collector
        .components
        .iter()
        .find(|c| c.name == "procmond")
        .expect("procmond's source");
    assert_eq!(source.counters["realtime_active"], 1, "{source:#?}");
    assert!(source.counters["snapshots"] >= 1, "{source:#?}");
    let hook = report
        .components
        .iter()
        .find(|c| c.name == "sink:webhook")
        .expect("the webhook sink reports");
    assert!(hook.counters["delivered"] >= 1, "{hook:#?}");

    // (6) The ledger verifies, and fails after a row is edited.
    let mut agent = agent;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.child.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(agent.child.0.wait().unwrap().success());
    // Its files are its owner's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path().join("agent.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "agent.db is {mode:o}");
    let store = daemoneye_agent::store::AgentStore::open_read_only(data.path()).unwrap();
    let verified = store.verify_ledger().unwrap();
    assert!(verified.entries >= 3, "{verified:?}");
    // Lifecycle events are in the store and the ledger: the shell's exec
    // (the first probe may have run before the collector was up).
    let execs = store
        .query("SELECT e.ledger_seq, l.kind, e.event_id, json_extract(e.detail, '$.lifecycle.tier') FROM process_events e JOIN ledger l ON l.seq = e.ledger_seq WHERE e.event_type = 'exec' AND e.exe = '/dev/shm/shmshell'")
        .unwrap();
    assert!(!execs.rows.is_empty(), "no exec from /dev/shm stored");
    assert_eq!(execs.rows[0][1], "process_events", "its batch's entry");
    // The id procmond's runtime gave the event crossed the socket with it.
    let id = execs.rows[0][2].as_str().unwrap_or_default();
    assert!(
        id.parse::<collector_core::EventId>().is_ok(),
        "the stored exec has no event id: {:?}",
        execs.rows[0][2]
    );
    // The agent's built-in collector runs the eBPF tier by default: the
    // agent leaves its child the capabilities loading takes.
    assert_eq!(execs.rows[0][3], "ebpf", "the exec was not seen by eBPF");
    let alerts_ledgered = store
        .query("SELECT count(*) FROM ledger WHERE kind = 'alert'")
        .unwrap();
    assert!(alerts_ledgered.rows[0][0].as_i64().unwrap() >= 3);
    drop(store);
    let conn = rusqlite::Connection::open(data.path().join("agent.db")).unwrap();
    conn.execute(
        "UPDATE ledger SET content = content || ' ' WHERE seq = 2",
        [],
    )
    .unwrap();
    let store = daemoneye_agent::store::AgentStore::open_read_only(data.path()).unwrap();
    assert!(store.verify_ledger().is_err());
}

#[test]
fn a_stalled_stdout_does_not_hold_up_the_other_sinks() {
    if !crate::root_or_skip("the end-to-end agent test needs root (kernel process connector)") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let (webhook_url, webhook) = webhook_endpoint();
    let mut agent = agent_run(data.path())
        .args(["--webhook", &webhook_url])
        .stdout(Stdio::piped()) // and never read: the pipe fills at 64 KiB
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stalled = agent.stdout.take().unwrap();
    // Each alert is about 1 KiB on stdout: 150 of them overfill the pipe.
    let shm = Path::new("/dev/shm");
    let exe = shm.join(format!("stall{}", std::process::id()));
    // Lives long enough (20 ms) for its exec to be read in full.
    std::fs::copy("/bin/sleep", &exe).unwrap();
    // Ready once the first one is alerted on.
    let mut ready = false;
    for _ in 0..40 {
        Command::new(&exe).arg("0.02").status().unwrap();
        // An alert, not the start's checkpoint: the collector sees execs.
        if webhook
            .try_iter()
            .chain(webhook.recv_timeout(Duration::from_millis(500)))
            .any(|(_, body)| body["rule_id"] == "exec-from-temp-dir")
        {
            ready = true;
            break;
        }
    }
    assert!(ready, "no alert reached the webhook");
    let n = 150;
    for _ in 0..n {
        Command::new(&exe).arg("0.02").status().unwrap();
    }
    let mut got = 0;
    while got < n {
        match webhook.recv_timeout(Duration::from_secs(10)) {
            Ok((_, body)) if body["rule_id"] == "exec-from-temp-dir" => got += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = std::fs::remove_file(&exe);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = agent.wait().unwrap();
    assert_eq!(
        got, n,
        "the webhook got {got} of {n} alerts while stdout was stalled"
    );
    assert!(
        status.success(),
        "the agent stopped cleanly despite stdout: {status}"
    );
}

/// A directory of Sigma rules (in a subdirectory, as a checkout of `SigmaHQ`
/// has them) beside the SQL ones: its rule alerts on a real exec through
/// the running agent; the one it cannot serve is refused by name.
#[test]
fn a_sigma_rule_alerts_end_to_end_and_an_unserved_one_is_refused() {
    if !crate::root_or_skip("the end-to-end agent test needs root (kernel process connector)") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    let sub = rules.path().join("linux/process_creation");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("proc_creation_lnx_probe.yml"),
        "title: Sigma probe\n\
         id: 5e0c1d2a-0000-4000-8000-00000000e2e0\n\
         logsource:\n  category: process_creation\n  product: linux\n\
         detection:\n  selection:\n    Image|endswith: /sigma-probe\n\
         \x20   CommandLine|contains: '--SIGMA-marker'\n\
         \x20 condition: selection\n\
         level: high\ntags: [attack.execution, attack.t1059.004]\n\
         ---\n\
         title: Windows dashes\nid: 5e0c1d2a-0000-4000-8000-00000000e2e1\n\
         logsource: {category: process_creation, product: linux}\n\
         detection:\n  selection:\n    CommandLine|windash|contains: -enc\n  condition: selection\n",
    )
    .unwrap();
    let mut cmd = agent_run(data.path());
    cmd.arg("--rules-dir").arg(rules.path());
    let agent = Agent::spawn(cmd);
    agent.assert_refused(&[
        "proc_creation_lnx_probe.yml",
        "sigma-5e0c1d2a-0000-4000-8000-00000000e2e1",
        "windash",
    ]);
    // The probe (a shell named so) until the agent is up and judging.
    let dir = tempfile::tempdir_in("/var/lib").unwrap();
    let alert = agent
        .alert_on_probe("sigma-5e0c1d2a-0000-4000-8000-00000000e2e0", |_| {
            run_copy(
                "/bin/sh",
                dir.path(),
                "sigma-probe",
                &["-c", "sleep 0.2", "x", "--sigma-marker"],
            );
            "sigma-probe".to_owned()
        })
        .expect("no alert from the Sigma rule");
    assert_eq!(alert["severity"], "high", "{alert}");
    assert_eq!(alert["rule_name"], "Sigma probe", "{alert}");
    assert_eq!(alert["mitre"], serde_json::json!(["T1059.004"]), "{alert}");
    assert!(alert["process"]["process_key"].is_string(), "{alert}");
    // Without its marker the same program is not matched.
    run_copy("/bin/sh", dir.path(), "sigma-probe", &["-c", "sleep 0.2"]);
    assert!(agent
        .wait_alert(
            "sigma-5e0c1d2a-0000-4000-8000-00000000e2e0",
            "sigma-probe",
            Duration::from_secs(2),
        )
        .is_none());
}

/// The three cases the built-in pack's history rules exist for, through the
/// running agent: a web server that exec'd a shell in place, a program whose
/// argv[0] is a kernel thread's name, and a shell fed its program on stdin
/// by a pipeline that decoded it.
#[test]
fn the_built_in_pack_catches_the_history_cases_end_to_end() {
    if !crate::root_or_skip("the end-to-end agent test needs root (kernel process connector)") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(agent_run(data.path()));

    // argv[0] `[kworker/0:7]` on /usr/bin/sleep, until the agent judges.
    let masked = agent
        .alert_on_probe("kernel-thread-name-on-user-process", |_| {
            let status = Command::new("bash")
                .args(["-c", "exec -a '[kworker/0:7]' sleep 0.3"])
                .status()
                .unwrap();
            assert!(status.success());
            "sleep".to_owned()
        })
        .expect("no alert for argv[0] [kworker/0:7] on sleep");
    assert_eq!(masked["severity"], "high", "{masked}");

    // A "web server" (a shell named nginx) that exec's a shell in place:
    // the shell's parent is not the server, its own previous image is.
    let dir = tempfile::tempdir_in("/var/lib").unwrap();
    let nginx = dir.path().join("nginx");
    std::fs::copy("/bin/sh", &nginx).unwrap();
    let mut server = Command::new(&nginx)
        .args(["-c", "exec /bin/sh -c 'sleep 0.5; true'"])
        .spawn()
        .unwrap();
    let pid = server.id();
    let shell = agent
        .wait_alert(
            "shell-with-service-in-history",
            "sh",
            Duration::from_secs(5),
        )
        .expect("no alert for a shell exec'd in place by nginx");
    assert_eq!(shell["process"]["pid"], pid, "{shell}");
    assert!(server.wait().unwrap().success());

    // `... | base64 -d | sh`: the last shell's own command line is just `sh`.
    let status = Command::new("/bin/sh")
        .args(["-c", "echo c2xlZXAgMC4zCg== | base64 -d | sh"])
        .status()
        .unwrap();
    assert!(status.success());
    let fed = agent
        .wait_alert(
            "stdin-shell-fed-download-or-decode",
            "sh",
            Duration::from_secs(5),
        )
        .expect("no alert for a shell fed a decoded program on stdin");
    assert_eq!(fed["severity"], "high", "{fed}");
}
