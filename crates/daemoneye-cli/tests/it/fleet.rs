//! `fleet alerts` and `fleet verify` against a real `nats-server`
//! (JetStream) the test starts on a loopback port, fed by real agents
//! (this crate's dev-dependency) shipping through their fleet sinks.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use daemoneye_agent::agent::Agent;
use daemoneye_agent::config::{AgentConfig, RunArgs, Settings};
use daemoneye_agent::link::LinkState;
use daemoneye_agent::sink::FleetStatus;
use tokio_util::sync::CancellationToken;

use crate::nats::Nats;
use crate::served::{exec, Served};
use crate::BIN;

/// An agent shipping to a broker as `host`, data in `dir/<host>`, with one
/// collector served here.
struct FleetAgent {
    fleet: Arc<FleetStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    collector: Served,
    data: PathBuf,
}

impl FleetAgent {
    async fn start(dir: &Path, url: &str, host: &str) -> Self {
        let socket = dir.join(format!("{host}.sock"));
        let collector = Served::start(&socket).await;
        let data = dir.join(host);
        let toml = format!(
            "data_dir = \"{}\"\nsweep_interval = \"1h\"\ncheckpoint_interval = \"1h\"\n\
             [[collector]]\nname = \"alpha\"\nsocket = \"{}\"\n\
             [fleet]\nurl = \"{url}\"\nhost = \"{host}\"\n",
            data.display(),
            socket.display(),
        );
        let settings = Settings::resolve(
            AgentConfig::from_toml_str(&toml).unwrap(),
            None,
            &RunArgs::default(),
        )
        .unwrap();
        let agent = Agent::build(settings).await.unwrap();
        let health = agent.health();
        let fleet = health.fleet.clone().expect("the fleet sink is configured");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        tokio::time::timeout(
            Duration::from_secs(10),
            health.collectors[0]
                .link
                .wait_for(|s| s.state() == LinkState::Connected),
        )
        .await
        .expect("the collector link connects");
        // The checkpoint taken at start is shipped (so each alert is one
        // more acknowledgement).
        tokio::time::timeout(
            Duration::from_secs(30),
            fleet.wait_for(|f| f.acknowledged.get() >= 1),
        )
        .await
        .unwrap_or_else(|_| panic!("the start checkpoint: {:?}", fleet.last_error()));
        Self {
            fleet,
            shutdown,
            task,
            collector,
            data,
        }
    }

    /// An exec from /dev/shm by `pid` (one alert); returns once the stream
    /// acknowledged it.
    async fn raise(&self, pid: u32) {
        let before = self.fleet.acknowledged.get();
        let mut e = exec(pid, &format!("p{pid}"));
        e.executable_path = Some(format!("/dev/shm/p{pid}"));
        self.collector.send(e).await;
        let fleet = &self.fleet;
        tokio::time::timeout(
            Duration::from_secs(30),
            fleet.wait_for(|f| f.acknowledged.get() > before && f.outbox_depth.get() == 0),
        )
        .await
        .unwrap_or_else(|_| panic!("not shipped: {:?}", fleet.last_error()));
    }

    async fn stop(self) -> PathBuf {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the agent stops when told")
            .unwrap();
        self.collector.stop().await;
        self.data
    }
}

/// The cli with `args`, run off the test's runtime: exit code, stdout,
/// stderr.
async fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("DAEMONEYE_NATS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `fleet alerts --format json` lines: (host, msg id, pid).
fn parsed(stdout: &str) -> Vec<(String, String, u64)> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["host"].as_str().unwrap().to_owned(),
                v["msg_id"].as_str().unwrap().to_owned(),
                v["alert"]["process"]["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The "done when": two agents, one broker, one command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fleet_alerts_prints_the_alerts_of_two_agents_each_naming_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start();
    let url = nats.url();
    let a = FleetAgent::start(dir.path(), &url, "a").await;
    let b = FleetAgent::start(dir.path(), &url, "b").await;
    a.raise(6101).await;
    b.raise(6201).await;

    let (code, out, err) = cli(&["fleet", "alerts", "--nats", &url, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut got = parsed(&out);
    got.sort();
    assert_eq!(
        got,
        [
            ("a".to_owned(), "a.alert-1".to_owned(), 6101),
            ("b".to_owned(), "b.alert-1".to_owned(), 6201)
        ],
        "{out}"
    );
    // The durable consumer acknowledged them: the next run under its name
    // has nothing new, another name everything, as a table.
    let (code, out, _) = cli(&["fleet", "alerts", "--nats", &url, "--format", "json"]).await;
    assert_eq!((code, out.as_str()), (Some(0), ""));
    let (code, out, err) = cli(&["fleet", "alerts", "--nats", &url, "--consumer", "other"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two alerts: {out}");
    assert!(lines[0].starts_with("HOST "), "{out}");
    let hosts: BTreeSet<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(hosts, BTreeSet::from(["a", "b"]), "{out}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("exec-from-temp-dir") && l.contains("high")),
        "{out}"
    );

    // --follow prints what waits, then what comes.
    let mut child = Command::new(BIN)
        .args(["fleet", "alerts", "--follow", "--consumer", "follower"])
        .args(["--format", "json", "--nats", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let lines = tokio::task::spawn_blocking(move || {
        let two: Vec<String> = (0..2)
            .map(|_| lines.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        (two, lines)
    });
    let (two, lines) = lines.await.unwrap();
    assert_eq!(parsed(&two.join("\n")).len(), 2, "{two:?}");
    b.raise(6202).await;
    let third =
        tokio::task::spawn_blocking(move || lines.recv_timeout(Duration::from_secs(30)).unwrap())
            .await
            .unwrap();
    assert_eq!(
        parsed(&third),
        [("b".to_owned(), "b.alert-2".to_owned(), 6202)]
    );
    child.kill().unwrap();
    child.wait().unwrap();
    a.stop().await;
    b.stop().await;
}

/// A broker that wants a user and password: the URL's are used (they were
/// ignored once, the connection refused), by the agent and the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_alerts_uses_the_user_and_password_of_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start_with(&["--user", "reader", "--pass", "p@ss:word"]);
    let url = format!("nats://reader:p%40ss%3Aword@127.0.0.1:{}", nats.port);
    let a = FleetAgent::start(dir.path(), &url, "a").await;
    a.raise(6401).await;
    let (code, out, err) = cli(&["fleet", "alerts", "--nats", &url, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        parsed(&out),
        [("a".to_owned(), "a.alert-1".to_owned(), 6401)],
        "{out}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_alerts_without_a_broker_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://u:s3cret@127.0.0.1:{port}");
    let (code, out, err) = cli(&["fleet", "alerts", "--nats", &url]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("cannot connect to the NATS server (nats://***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

/// The ledger's checkpoints a store's rows hold: (seq, hash), in order.
fn store_checkpoints(data: &Path) -> Vec<(i64, String)> {
    rusqlite::Connection::open(data.join("agent.db"))
        .unwrap()
        .prepare("SELECT seq, entry_hash FROM ledger WHERE kind = 'checkpoint' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The checkpoints a host shipped anchor its store: an intact one
/// verifies, a cut or a rebuilt one fails, naming where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_verify_checks_a_store_against_the_checkpoints_its_host_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start();
    let url = nats.url();
    let agent = FleetAgent::start(dir.path(), &url, "v").await;
    agent.raise(2).await;
    let fleet = Arc::clone(&agent.fleet);
    let data = agent.stop().await;
    // The checkpoints at start and at shutdown, both shipped through the
    // outbox.
    let cps = store_checkpoints(&data);
    assert_eq!(cps.len(), 2, "{cps:?}");
    assert_eq!(fleet.outbox_depth.get(), 0);
    let verify = |store: PathBuf, host: &'static str| {
        let url = url.clone();
        async move {
            let store = store.to_str().unwrap().to_owned();
            cli(&[
                "fleet", "verify", "--nats", &url, "--host", host, "--store", &store,
            ])
            .await
        }
    };

    let (code, out, err) = verify(data.clone(), "v").await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("2 checkpoints shipped by host v"), "{out}");
    for (seq, hash) in &cps {
        assert!(out.contains(&format!("anchor {seq}:{hash} held")), "{out}");
    }
    assert!(out.contains("anchored: 2 anchors held"), "{out}");

    // The tail cut below the last checkpoint.
    let cut = crate::anchor::copy_store(&data);
    let first = cps[0].0;
    rusqlite::Connection::open(cut.path().join("agent.db"))
        .unwrap()
        .execute("DELETE FROM ledger WHERE seq > ?1", [first])
        .unwrap();
    let (code, out, err) = verify(cut.path().to_owned(), "v").await;
    assert_eq!(code, Some(1), "{out}{err}");
    let (last, last_hash) = &cps[1];
    assert!(
        out.contains(&format!("chain ends at seq {first}, anchor at {last}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("anchor {last}:{last_hash} FAILED")),
        "{out}"
    );

    // The alert rewritten and the chain rebuilt: the entry is named.
    let forged = crate::anchor::copy_store(&data);
    crate::anchor::forge(forged.path());
    let (code, out, err) = verify(forged.path().to_owned(), "v").await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("ledger BROKEN"), "{out}");
    assert!(
        out.contains(&format!("entry {last}'s hash differs")),
        "{out}"
    );
    let first_hash = &cps[0].1;
    assert!(
        out.contains(&format!("anchor {first}:{first_hash} held")),
        "{out}"
    );

    // A host that shipped nothing: nothing to verify against, a failure.
    let (code, out, _) = verify(data.clone(), "nobody").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no checkpoints from host nobody"), "{out}");
}
