//! The agent with its built-in perfmond, end to end, as root: a busy
//! process started from a temporary directory raises perfmond's
//! sustained-CPU anomaly, the built-in rule judges it beside what procmond
//! saw of that process, the alert reaches stdout, and the samples are
//! stored. Skips (saying why) when not root.
// Blocking test around child processes: no tokio clock to pause.
#![allow(clippy::disallowed_types)]

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use daemoneye_agent::store::AgentStore;
use serde_json::Value;

use crate::Killed;

const AGENT: &str = env!("CARGO_BIN_EXE_daemoneye-agent");

/// The hex value of a `Cap*` line of `/proc/<pid>/status`.
pub(crate) fn capabilities(pid: u32, line: &str) -> Option<u64> {
    u64::from_str_radix(&crate::status(pid, line)?, 16).ok()
}

/// `daemoneye-agent run` with the config `toml` (in a directory of its own:
/// the data directory becomes the agent's user's) on a new data directory;
/// the JSON lines of its stdout (the alerts) come on the receiver.
pub(crate) struct Running {
    pub(crate) data: tempfile::TempDir,
    _etc: tempfile::TempDir,
    pub(crate) agent: Killed,
    pub(crate) alerts: mpsc::Receiver<Value>,
}

impl Running {
    pub(crate) fn start(toml: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let config = etc.path().join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(AGENT)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let agent = Killed(child);
        let alerts = crate::read_lines(move || out, |l| serde_json::from_str::<Value>(&l).ok());
        Self {
            data,
            _etc: etc,
            agent,
            alerts,
        }
    }

    /// [`start`](Self::start) with procmond (no snapshot for an hour: it
    /// reports what happens) and the built-in collector `builtin` looking
    /// every second, with its `settings` (TOML lines), sweeping hourly.
    pub(crate) fn with_procmond_and(builtin: &str, settings: &str) -> Self {
        Self::start(&format!(
            "sweep_interval = \"1h\"\n\n[[collector]]\nname = \"procmond\"\n\
             builtin = \"procmond\"\ninterval = \"1h\"\n\n[[collector]]\n\
             name = \"{builtin}\"\nbuiltin = \"{builtin}\"\ninterval = \"1s\"\n{settings}"
        ))
    }

    /// The collectors it runs (the spawner's children, when it dropped its
    /// privileges) whose command line contains `needle`.
    pub(crate) fn collectors_with(&self, needle: &str) -> Vec<u32> {
        let agent = self.agent.0.id();
        let parent = crate::children_with(agent, "spawner")
            .first()
            .copied()
            .unwrap_or(agent);
        crate::children_with(parent, needle)
    }

    /// Returns once procmond reports execs and the agent judges them: a
    /// program run from `/dev/shm` for 0.3 s until the built-in
    /// `exec-from-temp-dir` rule alerts on one (40 tries, half a second
    /// each); panics if none is.
    pub(crate) fn ready(&self) {
        let shm = std::path::Path::new("/dev/shm");
        let seen = crate::alert_on_probe(&self.alerts, "exec-from-temp-dir", |i| {
            let name = format!("perfprobe{i}"); // within comm's 15 bytes
            crate::e2e::run_copy("/bin/sleep", shm, &name, &["0.3"]);
            let _ = std::fs::remove_file(shm.join(&name));
            name
        });
        assert!(
            seen.is_some(),
            "no exec from /dev/shm was alerted on: procmond not reporting"
        );
    }

    /// The first alert of `rule` within 60 s.
    pub(crate) fn alert_of(&self, rule: &str) -> Value {
        crate::first_within(&self.alerts, Duration::from_secs(60), |a| {
            a["rule_id"] == rule
        })
        .unwrap_or_else(|| panic!("no {rule} alert within 60 s"))
    }

    /// The first alert of `rule` naming the process `pid` within 60 s
    /// (others may come first: a test binary run from a temporary
    /// directory, busy, is itself such a process).
    pub(crate) fn alert_for(&self, rule: &str, pid: u32) -> Value {
        crate::first_within(&self.alerts, Duration::from_secs(60), |a| {
            a["rule_id"] == rule && a["process"]["pid"] == pid
        })
        .unwrap_or_else(|| panic!("no {rule} alert for {pid} within 60 s"))
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, in order
fn a_busy_binary_from_a_temp_dir_raises_the_sustained_cpu_alert_end_to_end() {
    if !crate::root_or_skip(
        "the end-to-end performance test needs root (procmond's process connector)",
    ) {
        return;
    }
    let running = Running::with_procmond_and(
        "perfmond",
        "sustained_cpu_percent = 50\nsustained_cpu_for = \"3s\"\n",
    );

    // Both collectors connected: the agent says so in its health, but the
    // children are enough here; procmond must be up before the busy child
    // starts, or it would know it only from its next snapshot (an hour).
    let deadline = Instant::now() + Duration::from_secs(30);
    let perfmond = loop {
        let found = running.collectors_with("collect-performance");
        let procmond = running.collectors_with("collect\0");
        if let ([p], [_]) = (found.as_slice(), procmond.as_slice()) {
            break *p;
        }
        assert!(Instant::now() < deadline, "the collectors did not start");
        std::thread::park_timeout(Duration::from_millis(100));
    };
    // It holds no capability at all.
    for set in ["CapEff:", "CapPrm:", "CapInh:"] {
        assert_eq!(capabilities(perfmond, set), Some(0), "{set} of perfmond");
    }
    // procmond's subscription in place and the agent judging: a program
    // run from /dev/shm is alerted on (tried until one is).
    running.ready();

    // A copy of the shell in a temporary (and hidden: `.tmpXXXX`) directory,
    // spinning.
    let tmp = tempfile::tempdir().unwrap();
    let spin = tmp.path().join("spin");
    std::fs::copy("/bin/sh", &spin).unwrap();
    let busy = Killed(
        Command::new(&spin)
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    let busy_pid = busy.0.id();

    let alert = running.alert_for("sustained-cpu-suspicious-binary", busy_pid);
    assert_eq!(alert["process"]["name"], "spin", "{alert}");
    assert!(
        alert["process"]["executable_path"]
            .as_str()
            .is_some_and(|p| p.starts_with(tmp.path().to_str().unwrap())),
        "{alert}"
    );
    drop(busy);
    // A clean stop commits what the store was given.
    let Running { data, agent, .. } = running;
    drop(agent);
    let store = AgentStore::open_read_only(data.path()).unwrap();
    let rows = store
        .query(&format!(
            "SELECT metric, anomaly_threshold, anomaly_duration_ms FROM performance \
             WHERE anomaly = 'sustained_cpu' AND pid = {busy_pid}"
        ))
        .unwrap();
    assert!(!rows.rows.is_empty(), "the anomaly is stored");
    assert_eq!(rows.rows[0][0], "process.cpu_percent");
    assert_eq!(rows.rows[0][1], 50.0);
    assert!(
        rows.rows[0][2].as_i64().unwrap() >= 3_000,
        "{:?}",
        rows.rows
    );
    let count = |sql: &str| store.query(sql).unwrap().rows[0][0].as_i64().unwrap();
    let samples = count("SELECT count(*) FROM performance WHERE metric = 'cpu.total'");
    assert!(samples >= 2, "{samples} cpu.total samples");
    // Once for it (deduplicated), whatever else the rule saw.
    let alerted = count(&format!(
        "SELECT count(*) FROM alerts WHERE rule_id = 'sustained-cpu-suspicious-binary' \
         AND pid = {busy_pid}"
    ));
    assert_eq!(alerted, 1);
}
