//! `fleet alerts` and `fleet verify` against a real `nats-server`
//! (JetStream) the test starts on a loopback port, fed by real agents
//! (this crate's dev-dependency) shipping through their fleet sinks.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::fleet_agent::FleetAgent;
use crate::nats::Nats;
use crate::BIN;

impl FleetAgent {
    /// An agent shipping to a broker as `host`, data in `dir/<host>`, with
    /// one collector served here; returns once the checkpoint taken at
    /// start is shipped (so each alert is one more acknowledgement).
    async fn start(dir: &Path, url: &str, host: &str) -> Self {
        let data = dir.join(host);
        let socket = dir.join(format!("{host}.sock"));
        let top = "checkpoint_interval = \"1h\"";
        let agent = Self::launch(&data, &socket, url, host, "", top).await;
        agent
            .until("the start checkpoint", |f| f.acknowledged.get() >= 1)
            .await;
        agent
    }

    /// An exec from /dev/shm by `pid` (one alert); returns once the stream
    /// acknowledged it.
    async fn raise_shipped(&self, pid: u32) {
        let before = self.fleet.acknowledged.get();
        self.raise(pid).await;
        self.until("shipped", |f| {
            f.acknowledged.get() > before && f.outbox_depth.get() == 0
        })
        .await;
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
    a.raise_shipped(6101).await;
    b.raise_shipped(6201).await;

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
    b.raise_shipped(6202).await;
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
    a.raise_shipped(6401).await;
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
    agent.raise_shipped(2).await;
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
