//! The fleet sink against a real `nats-server` (JetStream), started here on
//! a free loopback port with a store directory of the test's: alerts arrive
//! in the stream with their ids, wait in the outbox while the broker is
//! away (health says so) and arrive once, nothing lost, when it is back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemoneye_lib::proto::HealthState;
use serde_json::Value;

use crate::fleet_agent::FleetAgent;
use crate::link::{exec, Served};
use crate::nats::Nats;

const HOST: &str = "test-host";
const SUBJECT: &str = "daemoneye.test-host.alerts";

/// Starts the broker, then an agent on `dir`'s store (an outbox left
/// there); waits until `n` alerts are shipped, stops the agent, and returns
/// the pids of the alerts in the stream.
async fn shipped_by_a_new_agent(dir: &Path, nats: &mut Nats, n: u64) -> Vec<u64> {
    nats.start();
    let agent = FleetAgent::start(dir, &nats.url()).await;
    agent.until_shipped(n).await;
    agent.stop().await;
    alert_pids(&nats.messages().await)
}

impl FleetAgent {
    async fn start(dir: &Path, url: &str) -> Self {
        Self::start_with(dir, url, "").await
    }

    /// Waits until the alert raised (behind the checkpoint taken at start)
    /// waits in the outbox, refused with an error that says `why`.
    async fn until_kept(&self, what: &str, why: &str) {
        self.until(what, |f| {
            f.outbox_depth.get() == 2 && f.last_error().contains(why)
        })
        .await;
    }

    /// The fleet component of health, which says degraded.
    async fn degraded_fleet(&self) -> daemoneye_lib::proto::ComponentHealth {
        let (_, fleet) = self.fleet_health().await;
        assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
        fleet
    }

    /// As [`start`](Self::start), with more `[fleet]` keys.
    async fn start_with(dir: &Path, url: &str, fleet: &str) -> Self {
        let data = dir.join("data");
        let socket = dir.join("collector.sock");
        Self::launch(&data, &socket, url, HOST, fleet, "").await
    }
}

/// A temporary directory and a broker prepared in it (not started);
/// `None` (saying why) without `nats-server`.
fn broker() -> Option<(tempfile::TempDir, Nats)> {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::prepare(dir.path())?;
    Some((dir, nats))
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
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.start();
    let agent = FleetAgent::start(dir.path(), &nats.url()).await;
    for pid in [5101, 5102, 5103] {
        agent.raise(pid).await;
    }
    agent.until_shipped(3).await;
    let (_, fleet) = agent.fleet_health().await;
    assert_eq!(fleet.state, i32::from(HealthState::Healthy), "{fleet:?}");
    let data = agent.stop().await;

    let messages = nats.messages().await;
    assert_eq!(alert_pids(&messages), [5101, 5102, 5103]);
    // The stream the sink made has its limits.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let config = async_nats::jetstream::new(client)
        .get_stream("DAEMONEYE")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(config.max_age, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(config.max_bytes, 10 << 30);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
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
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let agent = FleetAgent::start(dir.path(), &nats.url()).await;
    for pid in [5201, 5202, 5203] {
        agent.raise(pid).await;
    }
    agent
        // Behind the checkpoint taken at start, queued first.
        .until("the alerts wait in the outbox", |f| {
            f.outbox_depth.get() == 4 && !f.last_error().is_empty()
        })
        .await;
    let (report, fleet) = agent.fleet_health().await;
    assert_eq!(fleet.state, i32::from(HealthState::Degraded), "{fleet:?}");
    assert!(fleet.message.contains("broker unreachable"), "{fleet:?}");
    assert_eq!(fleet.counters["outbox_depth"], 4, "{fleet:?}");
    assert!(
        report.message.contains("fleet: broker unreachable"),
        "{report:?}"
    );

    nats.start();
    agent.until_shipped(3).await;
    let (_, fleet) = agent.fleet_health().await;
    assert_eq!(fleet.state, i32::from(HealthState::Healthy), "{fleet:?}");
    agent.stop().await;
    assert_eq!(alert_pids(&nats.messages().await), [5201, 5202, 5203]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_flow_loses_nothing() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.start();
    let agent = FleetAgent::start(dir.path(), &nats.url()).await;
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
    agent.degraded_fleet().await;
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
    let Some((dir, mut nats)) = broker() else {
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
    let Some((dir, mut nats)) = broker() else {
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
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let agent = FleetAgent::start_with(dir.path(), &nats.url(), "outbox_max_items = 2").await;
    agent
        .until("the first look at the outbox", |f| {
            !f.last_error().is_empty()
        })
        .await;
    for pid in 5601..=5605 {
        agent.raise(pid).await;
    }
    agent
        // Four of the five alerts, the oldest; the checkpoint taken at
        // start (queued first) is dropped last, so it stays.
        .until("four of six dropped", |f| {
            f.outbox_dropped.get() == 4 && f.dropping.get_bool()
        })
        .await;
    let fleet = agent.degraded_fleet().await;
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
    // The checkpoint and the newest alert were shipped; the store keeps
    // all five.
    let messages = nats.messages().await;
    assert_eq!(alert_pids(&messages), [5605]);
    // (and the checkpoint taken at stop).
    assert!(!on_subject(&messages, "daemoneye.test-host.ledger").is_empty());
    let store = daemoneye_agent::store::AgentStore::open_read_only(&data).unwrap();
    assert_eq!(store.recent_alerts(10).unwrap().len(), 5);
    assert_eq!(store.outbox_state().unwrap().dropped, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_in_health_and_the_alerts_wait() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.start_with(&["--user", "daemoneye", "--pass", "right-one"]);
    let url = format!("nats://daemoneye:s3cret-wrong@127.0.0.1:{}", nats.port);
    let agent = FleetAgent::start(dir.path(), &url).await;
    agent.raise(5701).await;
    agent
        .until_kept(
            "refused for its credentials, the alert kept",
            "authorization",
        )
        .await;
    let fleet = agent.degraded_fleet().await;
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

/// A broker whose JetStream store is smaller than the stream the sink
/// makes (it reserves its `max_bytes`) refuses it: health says so and names
/// the key to lower, the alert waits; with the key lowered it ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_store_smaller_than_the_stream_is_a_clear_error_and_a_smaller_stream_ships() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.max_file_store = "1GB".to_owned();
    nats.start();
    let agent = FleetAgent::start(dir.path(), &nats.url()).await;
    agent.raise(5801).await;
    agent
        .until_kept(
            "the stream refused, the alert kept",
            "fleet.stream_max_bytes",
        )
        .await;
    let fleet = agent.degraded_fleet().await;
    assert!(
        fleet.message.contains("max_file_store") && fleet.message.contains("10737418240"),
        "{fleet:?}"
    );
    agent.stop().await;

    let agent =
        FleetAgent::start_with(dir.path(), &nats.url(), "stream_max_bytes = 104857600").await;
    // The checkpoint, the alert (and a checkpoint taken at this start).
    agent.until_shipped(2).await;
    agent.stop().await;
    assert_eq!(alert_pids(&nats.messages().await), [5801]);
}

/// With the broker absent, an outbox whose oldest item waited past
/// `max_outbox_age` is in health (degraded, saying so, with its depth and
/// age) and in `/metrics` (when it was queued); once the broker is there
/// and the outbox drained, neither is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_older_than_max_outbox_age_is_in_health_and_metrics_while_the_broker_is_absent() {
    let Some((dir, mut nats)) = broker() else {
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

    let agent = FleetAgent::start_with(dir.path(), &nats.url(), "max_outbox_age = \"5m\"").await;
    // The alert, and the checkpoint taken at start behind it.
    agent
        .until("the aged outbox is looked at", |f| {
            f.outbox_depth.get() == 2 && !f.last_error().is_empty()
        })
        .await;
    let fleet = agent.degraded_fleet().await;
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
    let (_, fleet) = agent.fleet_health().await;
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
    let agent = FleetAgent::start_with(dir.path(), &urls.join(","), "replicas = 3").await;
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

/// The messages on `subject`, each message id once: their bodies.
fn on_subject<'m>(messages: &'m [(String, String, Value)], subject: &str) -> Vec<&'m Value> {
    let on: Vec<_> = messages.iter().filter(|(s, _, _)| s == subject).collect();
    let ids: BTreeSet<&str> = on.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), on.len(), "each message id once: {on:?}");
    on.into_iter().map(|(_, _, body)| body).collect()
}

/// `events = ["process"]`: every lifecycle event the collector sent goes to
/// `<prefix>.<host>.events.process` once, under its event id, beside the
/// alerts; a stream an older agent made (alerts and ledger only) gains the
/// events subjects. Connections are not asked for, so none ship.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_events_ship_once_each_to_their_domain_subject_beside_the_alerts() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.start();
    // The stream as the agent made it before events shipped.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "DAEMONEYE".to_owned(),
        subjects: vec![
            "daemoneye.*.alerts".to_owned(),
            "daemoneye.*.ledger".to_owned(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();

    let agent = FleetAgent::start_with(dir.path(), &nats.url(), "events = [\"process\"]").await;
    for pid in 6001..=6003 {
        agent.collector.send(exec(pid, "ls")).await;
    }
    agent.raise(6004).await;
    // Four events, one alert, the checkpoint taken at start.
    agent.until_shipped(6).await;
    let data = agent.stop().await;

    let subjects = js
        .get_stream("DAEMONEYE")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .subjects
        .clone();
    assert!(
        subjects.contains(&"daemoneye.*.events.*".to_owned()),
        "{subjects:?}"
    );
    let messages = nats.messages().await;
    let events = on_subject(&messages, "daemoneye.test-host.events.process");
    let mut pids: Vec<u64> = events.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    pids.sort_unstable();
    assert_eq!(pids, [6001, 6002, 6003, 6004], "{events:?}");
    assert!(
        events.iter().all(|e| e["event_type"] == "exec"),
        "{events:?}"
    );
    // Each under its event id, as the store has it.
    let store = daemoneye_agent::store::AgentStore::open_read_only(&data).unwrap();
    let want: BTreeSet<String> = store
        .query("SELECT event_id FROM process_events")
        .unwrap()
        .rows
        .iter()
        .map(|r| format!("{HOST}.event-process-{}", r[0].as_str().unwrap()))
        .collect();
    let got: BTreeSet<String> = messages
        .iter()
        .filter(|(s, _, _)| s.contains(".events."))
        .map(|(_, id, _)| id.clone())
        .collect();
    assert_eq!(got, want);
    assert_eq!(alert_pids(&messages), [6004]);
    assert_eq!(store.outbox_state().unwrap().depth, 0);
}

/// A full outbox (three items) while the broker is away drops every event
/// before any alert or checkpoint: the alerts and the checkpoint ship, no
/// event does, and the events dropped are counted apart, in health too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_events_before_any_alert_and_counts_them_apart() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let agent = FleetAgent::start_with(
        dir.path(),
        &nats.url(),
        "outbox_max_items = 3\nevents = [\"process\"]",
    )
    .await;
    // Drops the first look finds are an earlier run's: not new.
    agent
        .until("the first look at the outbox", |f| {
            !f.last_error().is_empty()
        })
        .await;
    for pid in 6101..=6104 {
        agent.collector.send(exec(pid, "ls")).await;
    }
    agent.raise(6105).await;
    agent.raise(6106).await;
    // Six events, two alerts, the checkpoint taken at start: every event
    // dropped, nothing else.
    agent
        .until("six events dropped", |f| {
            f.outbox_dropped_events.get() == 6 && f.outbox_depth.get() == 3
        })
        .await;
    let fleet = agent.degraded_fleet().await;
    assert!(
        fleet
            .message
            .contains("0 alerts and checkpoints, 6 events dropped"),
        "{fleet:?}"
    );
    assert_eq!(
        (
            fleet.counters["outbox_dropped"],
            fleet.counters["outbox_dropped_events"]
        ),
        (0, 6),
        "{fleet:?}"
    );
    assert_eq!(
        agent
            .metrics
            .value("daemoneye_fleet_outbox_dropped_events", &[]),
        Some(6)
    );
    nats.start();
    agent.until_shipped(3).await;
    agent.stop().await;
    let messages = nats.messages().await;
    assert_eq!(alert_pids(&messages), [6105, 6106]);
    assert!(
        messages.iter().all(|(s, _, _)| !s.contains(".events.")),
        "{messages:?}"
    );
}

/// The test certificate (self-signed for `localhost` and 127.0.0.1) and
/// its key, as files in `dir`.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
    std::fs::copy(data.join("localhost.pem"), &cert).unwrap();
    std::fs::copy(data.join("localhost.key"), &key).unwrap();
    (cert, key)
}

/// A broker that speaks only TLS: with `tls_ca_file` naming the CA its
/// certificate chains to, the alerts arrive; without it (the system's
/// roots do not know that CA) the connection is refused for the
/// certificate, health says so and the alert waits in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_broker_is_reached_with_its_ca_file_and_refused_without_it() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let (cert, key) = tls_files(dir.path());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    nats.start_with(&["--tls", "--tlscert", &cert_s, "--tlskey", &key_s]);
    let url = format!("tls://127.0.0.1:{}", nats.port);

    let untrusted = tempfile::tempdir().unwrap();
    let agent = FleetAgent::start(untrusted.path(), &url).await;
    agent.raise(6201).await;
    agent
        .until("refused for its certificate, the alert kept", |f| {
            f.outbox_depth.get() == 2 && !f.last_error().is_empty()
        })
        .await;
    let fleet = agent.degraded_fleet().await;
    assert!(
        fleet.message.to_lowercase().contains("certificate"),
        "{fleet:?}"
    );
    agent.stop().await;

    let agent = FleetAgent::start_with(
        dir.path(),
        &url,
        &format!("tls_ca_file = \"{}\"", cert.display()),
    )
    .await;
    agent.raise(6202).await;
    agent.raise(6203).await;
    agent.until_shipped(3).await;
    agent.stop().await;
    let reader = async_nats::ConnectOptions::new()
        .add_root_certificates(cert)
        .require_tls(true);
    assert_eq!(alert_pids(&nats.messages_with(reader).await), [6202, 6203]);
}

/// The credentials a URL can carry, right ones: a user and password, and a
/// token (`nats://<token>@host`), each accepted by a broker that requires
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_or_a_token_in_the_url_is_accepted() {
    for (args, userinfo, pid) in [
        (
            ["--user", "daemoneye", "--pass", "right-one"],
            "daemoneye:right-one",
            6301,
        ),
        (["--auth", "s3cret-token", "", ""], "s3cret-token", 6302),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut nats) = Nats::prepare(dir.path()) else {
            return;
        };
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        nats.start_with(&args);
        let url = format!("nats://{userinfo}@127.0.0.1:{}", nats.port);
        let agent = FleetAgent::start(dir.path(), &url).await;
        agent.raise(pid).await;
        agent.until_shipped(2).await;
        agent.stop().await;
        let reader = async_nats::ConnectOptions::new();
        let reader = match userinfo.split_once(':') {
            Some((user, pass)) => reader.user_and_password(user.to_owned(), pass.to_owned()),
            None => reader.token(userinfo.to_owned()),
        };
        assert_eq!(
            alert_pids(&nats.messages_with(reader).await),
            [u64::from(pid)]
        );
    }
}

/// A NATS JWT of `nats` claims about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: &Value) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let claims = serde_json::json!({
        "jti": format!("TEST{}", subject),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": "daemoneye-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

/// A broker in operator mode (an operator, one account with JetStream,
/// trusted from a memory resolver) and a creds file for a user of that
/// account, written in `dir`: (the server's configuration, the creds file).
fn operator_mode(dir: &Path) -> (String, PathBuf) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let op_jwt = jwt(
        &operator,
        &operator.public_key(),
        &serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        &serde_json::json!({
            "limits": unlimited,
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        &serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    // JetStream wants a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        &serde_json::json!({"type": "account", "version": 2}),
    );
    let op_file = dir.join("operator.jwt");
    std::fs::write(&op_file, &op_jwt).unwrap();
    let config = format!(
        "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
        op_file.display(),
        account.public_key(),
        sys = system.public_key(),
    );
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (config, creds)
}

/// A broker that trusts an operator: with `creds_file` naming a user of
/// one of its accounts (a file only its owner may read), the alerts arrive;
/// without it the connection is refused and the alert waits; a creds file
/// others may read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_is_used_and_without_it_the_operator_mode_broker_refuses() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let (config, creds) = operator_mode(dir.path());
    nats.config = config;
    nats.start();

    let refused = tempfile::tempdir().unwrap();
    let agent = FleetAgent::start(refused.path(), &nats.url()).await;
    agent.raise(6501).await;
    agent
        .until_kept(
            "refused without credentials, the alert kept",
            "authorization",
        )
        .await;
    agent.stop().await;

    // A creds file others may read is refused, saying so.
    let shared = tempfile::tempdir().unwrap();
    let with_creds = format!("creds_file = \"{}\"", creds.display());
    let agent = FleetAgent::start_with(shared.path(), &nats.url(), &with_creds).await;
    agent
        .until("refused for its mode", |f| {
            f.last_error().contains("chmod 600")
        })
        .await;
    agent.stop().await;

    std::fs::set_permissions(
        &creds,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let agent = FleetAgent::start_with(dir.path(), &nats.url(), &with_creds).await;
    agent.raise(6502).await;
    agent.until_shipped(2).await;
    agent.stop().await;
    let reader = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap();
    assert_eq!(alert_pids(&nats.messages_with(reader).await), [6502]);
}

/// A broker that knows a user by its public nkey (no JWT): with `nkey_file`
/// holding the user's seed (a file only its owner may read), the alerts
/// arrive; a file that holds no seed is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_file_is_used_and_a_file_that_is_no_seed_is_refused() {
    let Some((dir, mut nats)) = broker() else {
        return;
    };
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    nats.config = format!(
        "authorization: {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    );
    nats.start();
    let private = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        format!("nkey_file = \"{}\"", path.display())
    };

    let refused = tempfile::tempdir().unwrap();
    let not_a_seed = private("public.nk", &user.public_key());
    let agent = FleetAgent::start_with(refused.path(), &nats.url(), &not_a_seed).await;
    agent
        .until("refused: no seed", |f| f.last_error().contains("nkey seed"))
        .await;
    agent.stop().await;

    let with_seed = private("user.nk", &format!("{seed}\n"));
    let agent = FleetAgent::start_with(dir.path(), &nats.url(), &with_seed).await;
    agent.raise(6601).await;
    agent.until_shipped(2).await;
    agent.stop().await;
    let reader = async_nats::ConnectOptions::with_nkey(seed);
    assert_eq!(alert_pids(&nats.messages_with(reader).await), [6601]);
}

/// The fleet sink reads the outbox on a connection of its own, and its
/// worker is woken by the writer's commits: with the store's writer held
/// up (the test holds the store it shares), a drain still ships what was
/// committed before, without waiting for the writes queued behind; once
/// the writer moves again, what it commits is shipped with nobody asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the lock is what holds the writer up
async fn a_drain_ships_what_is_committed_while_the_writer_is_held_up_and_commits_wake_it() {
    use collector_core::EventKind;
    use daemoneye_agent::sink::{AlertSink, Delivery, FleetConfig, FleetSink, SinkWorker};
    use daemoneye_store::{Store, StoreWriter, WriterConfig};
    use std::sync::{Arc, Mutex};

    let Some((dir, mut nats)) = broker() else {
        return;
    };
    nats.start();
    let store = Store::open(dir.path())
        .unwrap()
        .with_outbox(Some(1_000))
        .with_shipped_events(&[EventKind::Process]);
    let store = Arc::new(Mutex::new(store));
    let writer = StoreWriter::spawn_shared(Arc::clone(&store), WriterConfig::default()).unwrap();
    let mut config = FleetConfig::new(nats.url(), HOST);
    config.events = vec![EventKind::Process];
    let mut sink = FleetSink::new(config, writer.clone());
    let status = sink.status();
    writer
        .events((7001..=7003).map(|pid| exec(pid, "ls")).collect())
        .await;
    writer.flush().await.unwrap();

    let held = store.lock().unwrap();
    writer
        .events((7004..=7005).map(|pid| exec(pid, "ls")).collect())
        .await;
    let drained = tokio::time::timeout(Duration::from_secs(20), sink.deliver_outbox())
        .await
        .expect("the drain waited for the writer");
    assert!(matches!(drained, Delivery::Delivered), "{drained:?}");
    assert_eq!(status.acknowledged.get(), 3);
    let pids = |messages: &[(String, String, Value)]| -> Vec<u64> {
        let mut pids: Vec<u64> = on_subject(messages, "daemoneye.test-host.events.process")
            .iter()
            .map(|e| e["pid"].as_u64().unwrap())
            .collect();
        pids.sort_unstable();
        pids
    };
    assert_eq!(pids(&nats.messages().await), [7001, 7002, 7003]);

    // The writer commits the two held events: its commit wakes the worker.
    let worker = SinkWorker::start(sink, FleetSink::worker_config()).unwrap();
    drop(held);
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.acknowledged.get() >= 5),
    )
    .await
    .expect("the commit did not wake the sink");
    assert_eq!(pids(&nats.messages().await), [7001, 7002, 7003, 7004, 7005]);
    // Each once: the drain that woke read after what was shipped.
    assert_eq!(status.acknowledged.get(), 5);
    assert_eq!(status.duplicates.get(), 0);
    worker
        .close(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    writer.close().await;
    let left = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(left.outbox_state().unwrap().depth, 0);
}
