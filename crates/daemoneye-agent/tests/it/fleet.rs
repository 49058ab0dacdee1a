//! The fleet sink against a real `nats-server` (JetStream), started here on
//! a free loopback port with a store directory of the test's: alerts arrive
//! in the stream with their ids, wait in the outbox while the broker is
//! away (health says so) and arrive once, nothing lost, when it is back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use daemoneye_agent::agent::Agent;
use daemoneye_agent::health::AgentHealth;
use daemoneye_agent::link::LinkState;
use daemoneye_agent::sink::FleetStatus;
use daemoneye_lib::proto::HealthState;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agent::settings;
use crate::link::{exec, Served};
use crate::nats::Nats;

const HOST: &str = "test-host";
const SUBJECT: &str = "daemoneye.test-host.alerts";

/// An agent with one (served) collector, shipping to `url`.
struct Running {
    health: AgentHealth,
    metrics: collector_core::metrics::Registry,
    fleet: Arc<FleetStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    collector: Served,
    data: PathBuf,
}

/// Starts the broker, then an agent on `dir`'s store (an outbox left
/// there); waits until `n` alerts are shipped, stops the agent, and returns
/// the pids of the alerts in the stream.
async fn shipped_by_a_new_agent(dir: &Path, nats: &mut Nats, n: u64) -> Vec<u64> {
    nats.start();
    let agent = Running::start(dir, &nats.url()).await;
    agent.until_shipped(n).await;
    agent.stop().await;
    alert_pids(&nats.messages().await)
}

impl Running {
    async fn start(dir: &Path, url: &str) -> Self {
        Self::start_with(dir, url, "").await
    }

    /// As [`start`](Self::start), with more `[fleet]` keys.
    async fn start_with(dir: &Path, url: &str, fleet: &str) -> Self {
        let socket = dir.join("collector.sock");
        let collector = Served::start(&socket).await;
        let data = dir.join("data");
        let s = settings(&format!(
            "data_dir = \"{}\"\nsweep_interval = \"1h\"\n\
             [[collector]]\nname = \"alpha\"\nsocket = \"{}\"\n\
             [fleet]\nurl = \"{url}\"\nhost = \"{HOST}\"\n{fleet}\n",
            data.display(),
            socket.display(),
        ));
        let agent = Agent::build(s).await.unwrap();
        let health = agent.health();
        let metrics = agent.metrics();
        let fleet = health.fleet.clone().expect("the fleet sink is configured");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        let link = &health.collectors[0].link;
        tokio::time::timeout(
            Duration::from_secs(10),
            link.wait_for(|s| s.state() == LinkState::Connected),
        )
        .await
        .expect("the collector link connects");
        Self {
            health,
            metrics,
            fleet,
            shutdown,
            task,
            collector,
            data,
        }
    }

    /// An exec from /dev/shm by `pid`: one alert.
    async fn raise(&self, pid: u32) {
        let mut e = exec(pid, &format!("p{pid}"));
        e.executable_path = Some(format!("/dev/shm/p{pid}"));
        self.collector.send(e).await;
    }

    /// Waits (up to 30 s) until `done` holds of the fleet sink's state.
    async fn until(&self, what: &str, done: impl Fn(&FleetStatus) -> bool) {
        let fleet = &self.fleet;
        tokio::time::timeout(Duration::from_secs(30), fleet.wait_for(done))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: not within 30 s; acknowledged {}, depth {}, error {:?}",
                    fleet.acknowledged.get(),
                    fleet.outbox_depth.get(),
                    fleet.last_error()
                )
            });
    }

    /// Waits until `n` alerts were acknowledged and the outbox is empty.
    async fn until_shipped(&self, n: u64) {
        self.until(&format!("{n} alerts shipped"), |f| {
            f.acknowledged.get() >= n && f.outbox_depth.get() == 0 && f.last_error().is_empty()
        })
        .await;
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

/// The alerts' messages: each id once, on the host's subject; their pids.
fn alert_pids(messages: &[(String, String, Value)]) -> Vec<u64> {
    let alerts: Vec<_> = messages.iter().filter(|(s, _, _)| s == SUBJECT).collect();
    let ids: BTreeSet<&str> = alerts.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        alerts.len(),
        "each message id once: {messages:?}"
    );
    let mut pids: Vec<u64> = alerts
        .iter()
        .map(|(_, _, body)| body["process"]["pid"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_arrive_in_the_stream_with_their_ids_and_a_resend_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start();
    let agent = Running::start(dir.path(), &nats.url()).await;
    for pid in [5101, 5102, 5103] {
        agent.raise(pid).await;
    }
    agent.until_shipped(3).await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Healthy), "{fleet:?}");
    let data = agent.stop().await;

    let messages = nats.messages().await;
    assert_eq!(alert_pids(&messages), [5101, 5102, 5103]);
    // The id is the host and the alert's row in the store.
    let store = daemoneye_agent::store::AgentStore::open_read_only(&data).unwrap();
    let rows = store
        .query("SELECT id FROM alerts ORDER BY id")
        .unwrap()
        .rows;
    let want: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{HOST}.alert-{}", r[0]))
        .collect();
    let got: BTreeSet<String> = messages
        .iter()
        .filter(|(s, _, _)| s == SUBJECT)
        .map(|(_, id, _)| id.clone())
        .collect();
    assert_eq!(got, want);
    assert_eq!(store.outbox_state().unwrap().depth, 0);
    // Checkpoints go to the ledger subject.
    assert!(
        messages
            .iter()
            .any(|(s, id, b)| s == "daemoneye.test-host.ledger"
                && id.starts_with("test-host.checkpoint-")
                && b["kind"] == "checkpoint"),
        "{messages:?}"
    );

    // A resend under an id the stream has is dropped by the stream.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    let first = want.iter().next().unwrap().clone();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, first.as_str());
    let ack = js
        .publish_with_headers(SUBJECT, headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "{ack:?}");
    assert_eq!(nats.messages().await.len(), messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_gets_the_outbox_once_it_is_up_and_health_says_so_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    let agent = Running::start(dir.path(), &nats.url()).await;
    for pid in [5201, 5202, 5203] {
        agent.raise(pid).await;
    }
    agent
        // Behind the checkpoint taken at start, queued first.
        .until("the alerts wait in the outbox", |f| {
            f.outbox_depth.get() == 4 && !f.last_error().is_empty()
        })
        .await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    assert!(fleet.message.contains("broker unreachable"), "{fleet:?}");
    assert_eq!(fleet.counters["outbox_depth"], 4, "{fleet:?}");
    assert!(
        report.message.contains("fleet: broker unreachable"),
        "{report:?}"
    );

    nats.start();
    agent.until_shipped(3).await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Healthy), "{fleet:?}");
    agent.stop().await;
    assert_eq!(alert_pids(&nats.messages().await), [5201, 5202, 5203]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_flow_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start();
    let agent = Running::start(dir.path(), &nats.url()).await;
    for pid in 5301..=5305 {
        agent.raise(pid).await;
    }
    agent.until_shipped(5).await;
    nats.kill();
    for pid in 5306..=5310 {
        agent.raise(pid).await;
    }
    agent
        .until("the broker is seen gone", |f| {
            !f.connected.get_bool() || !f.last_error().is_empty()
        })
        .await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    nats.start();
    agent.until_shipped(10).await;
    agent.stop().await;
    let pids = alert_pids(&nats.messages().await);
    assert_eq!(pids, (5301..=5310).collect::<Vec<u64>>());
}

/// Alerts for processes `pids` named `name` (run from /dev/shm) committed
/// to the store in `data` with their outbox items, as an agent that never
/// shipped them leaves them; the outbox's depth after.
fn left_in_outbox(data: &std::path::Path, pids: &[u32], name: &str) -> u64 {
    let mut store = daemoneye_agent::store::AgentStore::open(data)
        .unwrap()
        .with_outbox(Some(100));
    for &pid in pids {
        let mut e = exec(pid, name);
        e.executable_path = Some(format!("/dev/shm/{name}"));
        let alert = daemoneye_agent::alert::Alert {
            rule_id: "exec-from-temp-dir".to_owned(),
            rule_name: "left behind".to_owned(),
            severity: daemoneye_agent::alert::Severity::High,
            mitre: vec![],
            process: daemoneye_agent::alert::AlertProcess::from_event(&e, None),
            observed_at: 1,
            raised_at: 2,
            dedup_key: format!("{name}:{pid}"),
            file: None,
        };
        store.record_alert(&alert).unwrap();
    }
    store.outbox_state().unwrap().depth
}

/// What a killed agent leaves: alerts committed with their outbox items,
/// never shipped (the store's transactions survive a SIGKILL). The next
/// agent ships them at start, before any new alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_left_by_a_killed_agent_is_shipped_when_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    assert_eq!(left_in_outbox(&data, &[5401, 5402], "left"), 2);
    assert_eq!(
        shipped_by_a_new_agent(dir.path(), &mut nats, 2).await,
        [5401, 5402]
    );
}

/// The agent's binary, killed (`SIGKILL`) while the broker is away and its outbox
/// holds two alerts: the agent started again ships them once the broker is
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sigkilled_with_alerts_in_its_outbox_ships_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    let socket = dir.path().join("killed.sock");
    let collector = Served::start(&socket).await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nuser = \"root\"\nsweep_interval = \"1h\"\n\
             [[collector]]\nname = \"alpha\"\nsocket = \"{}\"\n\
             [fleet]\nurl = \"{}\"\nhost = \"{HOST}\"\n",
            dir.path().join("data").display(),
            socket.display(),
            nats.url(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_daemoneye-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("DAEMONEYE_NATS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |lines: std::sync::mpsc::Receiver<String>, what: &'static str| {
        tokio::task::spawn_blocking(move || loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {what:?}"));
            if line.contains(what) {
                return lines;
            }
        })
    };
    let lines = wait_for(lines, "collector connected").await.unwrap();
    for pid in [5501, 5502] {
        let mut e = exec(pid, "killed");
        e.executable_path = Some("/dev/shm/killed".to_owned());
        collector.send(e).await;
    }
    // Each failed attempt reads the outbox first (committing what was
    // queued before it) and logs its depth.
    // (and the checkpoint taken at start, before them).
    let _lines = wait_for(lines, "outbox_depth=Some(3)").await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    collector.stop().await;

    assert_eq!(
        shipped_by_a_new_agent(dir.path(), &mut nats, 2).await,
        [5501, 5502]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_counts_them_and_health_says_so_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    let agent = Running::start_with(dir.path(), &nats.url(), "outbox_max_items = 2").await;
    agent
        .until("the first look at the outbox", |f| {
            !f.last_error().is_empty()
        })
        .await;
    for pid in 5601..=5605 {
        agent.raise(pid).await;
    }
    agent
        // The checkpoint taken at start (queued first) and three of the
        // five alerts.
        .until("four of six dropped", |f| {
            f.outbox_dropped.get() == 4 && f.dropping.get_bool()
        })
        .await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    assert!(fleet.message.contains("outbox full"), "{fleet:?}");
    assert_eq!(
        (
            fleet.counters["outbox_depth"],
            fleet.counters["outbox_dropped"]
        ),
        (2, 4),
        "{fleet:?}"
    );
    nats.start();
    agent.until_shipped(2).await;
    assert!(!agent.fleet.dropping.get_bool());
    let data = agent.stop().await;
    // The newest two were shipped; the store keeps all five.
    assert_eq!(alert_pids(&nats.messages().await), [5604, 5605]);
    let store = daemoneye_agent::store::AgentStore::open_read_only(&data).unwrap();
    assert_eq!(store.recent_alerts(10).unwrap().len(), 5);
    assert_eq!(store.outbox_state().unwrap().dropped, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_in_health_and_the_alerts_wait() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    nats.start_with(&["--user", "daemoneye", "--pass", "right-one"]);
    let url = format!("nats://daemoneye:s3cret-wrong@127.0.0.1:{}", nats.port);
    let agent = Running::start(dir.path(), &url).await;
    agent.raise(5701).await;
    agent
        .until("refused for its credentials, the alert kept", |f| {
            // The alert, behind the checkpoint taken at start.
            f.outbox_depth.get() == 2 && f.last_error().contains("authorization")
        })
        .await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    assert!(
        fleet
            .message
            .contains("cannot connect to nats://***@127.0.0.1"),
        "{fleet:?}"
    );
    assert!(
        !fleet.message.contains("s3cret"),
        "the password is not shown: {fleet:?}"
    );
    agent.stop().await;
}

/// With the broker absent, an outbox whose oldest item waited past
/// `max_outbox_age` is in health (degraded, saying so, with its depth and
/// age) and in `/metrics` (when it was queued); once the broker is there
/// and the outbox drained, neither is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_older_than_max_outbox_age_is_in_health_and_metrics_while_the_broker_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::prepare(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // An alert left in the outbox ten minutes ago.
    left_in_outbox(&data, &[5801], "aged");
    rusqlite::Connection::open(data.join("agent.db"))
        .unwrap()
        .execute("UPDATE outbox SET queued_at = queued_at - 600000000000", [])
        .unwrap();
    let queued_secs = daemoneye_agent::store::AgentStore::open_read_only(&data)
        .unwrap()
        .outbox_state()
        .unwrap()
        .oldest_queued_at
        .unwrap()
        / 1_000_000_000;

    let agent = Running::start_with(dir.path(), &nats.url(), "max_outbox_age = \"5m\"").await;
    // The alert, and the checkpoint taken at start behind it.
    agent
        .until("the aged outbox is looked at", |f| {
            f.outbox_depth.get() == 2 && !f.last_error().is_empty()
        })
        .await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    assert!(
        fleet
            .message
            .contains("outbox stale: its oldest item has waited")
            && fleet.message.contains("(max_outbox_age 300s)"),
        "{fleet:?}"
    );
    let age = fleet.counters["outbox_oldest_age_secs"];
    assert!((600..900).contains(&age), "{fleet:?}");
    assert_eq!(fleet.counters["outbox_depth"], 2, "{fleet:?}");
    let value = |name: &str| agent.metrics.value(name, &[]);
    assert_eq!(
        value("daemoneye_fleet_outbox_oldest_queued_timestamp_seconds"),
        Some(u64::try_from(queued_secs).unwrap())
    );
    assert_eq!(value("daemoneye_fleet_outbox_depth"), Some(2));

    nats.start();
    agent.until_shipped(2).await;
    let report = agent.health.report().await;
    let fleet = report
        .components
        .iter()
        .find(|c| c.name == "fleet")
        .unwrap();
    assert_eq!(fleet.state, i32::from(HealthState::Healthy), "{fleet:?}");
    assert_eq!(fleet.counters["outbox_oldest_age_secs"], 0, "{fleet:?}");
    assert_eq!(
        value("daemoneye_fleet_outbox_oldest_queued_timestamp_seconds"),
        Some(0)
    );
    agent.stop().await;
    assert_eq!(alert_pids(&nats.messages().await), [5801]);
}

/// Three `nats-server`s as one JetStream cluster, the stream kept on all
/// three (`replicas = 3`); the agent given the three URLs. The node leading
/// the stream is killed while alerts flow: every alert arrives exactly once
/// (the stream's duplicate window drops the resends of what was unacked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_three_node_cluster_one_node_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nodes) = Nats::cluster(dir.path(), 3) else {
        return;
    };
    for node in &mut nodes {
        node.start();
    }
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let agent = Running::start_with(dir.path(), &urls.join(","), "replicas = 3").await;
    for pid in 5901..=5910 {
        agent.raise(pid).await;
    }
    agent
        .until("a few alerts acknowledged", |f| f.acknowledged.get() >= 4)
        .await;
    // The stream's leader, as the cluster says.
    let client = async_nats::connect(urls.clone()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DAEMONEYE").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "{info:?}");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a replicated stream has a leader");
    drop(js);
    let killed = nodes.iter().position(|n| n.name == leader).unwrap();
    nodes[killed].kill();
    for pid in 5911..=5920 {
        agent.raise(pid).await;
    }
    // Twenty alerts and the checkpoint taken at start.
    agent.until_shipped(21).await;
    agent.stop().await;
    let survivor = &nodes[(killed + 1) % 3];
    let pids = alert_pids(&survivor.messages().await);
    assert_eq!(pids, (5901..=5920).collect::<Vec<u64>>());
}
