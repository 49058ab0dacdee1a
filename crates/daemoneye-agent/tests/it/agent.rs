//! The agent as a library, without its binary: built from a config, it
//! runs one link per configured collector into one detection loop, lists
//! each in its health, and stops when told.

use std::path::Path;
use std::time::Duration;

use daemoneye_agent::agent::Agent;
use daemoneye_agent::config::{AgentConfig, RunArgs, Settings};
use daemoneye_agent::link::LinkState;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::link::{exec, Served};

/// The agent's settings from the config file text `toml` alone.
pub fn settings(toml: &str) -> Settings {
    let file = AgentConfig::from_toml_str(toml).unwrap();
    Settings::resolve(file, None, &RunArgs::default()).unwrap()
}

/// Settings for a test in `dir`: data under `dir/data`, sweeps an hour
/// apart, alerts to the pipe `fifo`; then `rest` (more keys, then tables).
pub fn test_settings(dir: &Path, fifo: &Path, rest: &str) -> Settings {
    settings(&format!(
        "data_dir = \"{}\"\nsweep_interval = \"1h\"\nsinks = {{ alerts_jsonl = \"{}\" }}\n{rest}",
        dir.join("data").display(),
        fifo.display(),
    ))
}

/// A named pipe at `path`, each alert written to it on the channel (the
/// ledger's checkpoint lines are left out).
pub fn alerts_pipe(path: &Path) -> std::sync::mpsc::Receiver<Value> {
    json_pipe(path, |v| v["kind"] != "checkpoint")
}

/// A named pipe at `path`, each JSON line written to it that `keep` picks
/// on the channel.
fn json_pipe(
    path: &Path,
    keep: impl Fn(&Value) -> bool + Send + 'static,
) -> std::sync::mpsc::Receiver<Value> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let path = path.to_owned();
    crate::read_lines(
        move || std::fs::File::open(path).unwrap(),
        move |line| {
            let value: Value = serde_json::from_str(&line).unwrap();
            keep(&value).then_some(value)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn one_loop_judges_the_events_of_every_configured_collector() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha_socket, beta_socket) = (dir.path().join("alpha.sock"), dir.path().join("beta.sock"));
    let alpha = Served::start(&alpha_socket).await;
    let beta = Served::start(&beta_socket).await;
    // The alerts file is a pipe read here: each alert is awaited, not polled.
    let fifo = dir.path().join("alerts.fifo");
    let alerts = alerts_pipe(&fifo);
    let collectors = format!(
        r#"
        [[collector]]
        name = "alpha"
        socket = "{alpha}"
        [[collector]]
        name = "beta"
        socket = "{beta}"
        # Serves processes, not the network: refused in the handshake.
        [[collector]]
        name = "gamma"
        socket = "{alpha}"
        domain = "network"
        "#,
        alpha = alpha_socket.display(),
        beta = beta_socket.display(),
    );
    let agent = Agent::build(test_settings(dir.path(), &fifo, &collectors))
        .await
        .unwrap();
    let health = agent.health();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    let [a, b, gamma] = &health.collectors[..] else {
        panic!("{:?}", health.collectors);
    };
    for c in [a, b] {
        tokio::time::timeout(
            Duration::from_secs(10),
            c.link.wait_for(|s| s.state() == LinkState::Connected),
        )
        .await
        .unwrap_or_else(|_| panic!("{} never connected: {}", c.name, c.link.last_error()));
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        gamma.link.wait_for(|s| s.restarts.get() >= 1),
    )
    .await
    .expect("the collector of the wrong domain is refused");
    assert!(
        gamma
            .link
            .last_error()
            .contains("does not serve the network domain"),
        "{}",
        gamma.link.last_error()
    );

    for (served, pid, name) in [(&alpha, 4001, "from-alpha"), (&beta, 4002, "from-beta")] {
        let mut e = exec(pid, name);
        e.executable_path = Some(format!("/dev/shm/{name}"));
        served.send(e).await;
    }
    let names = tokio::task::spawn_blocking(move || {
        let mut names = Vec::new();
        while names.len() < 2 {
            let a = alerts
                .recv_timeout(Duration::from_secs(10))
                .expect("an alert for each collector's event");
            assert_eq!(a["rule_id"], "exec-from-temp-dir", "{a}");
            names.push(a["process"]["name"].as_str().unwrap().to_owned());
        }
        names.sort();
        names
    })
    .await
    .unwrap();
    assert_eq!(names, ["from-alpha", "from-beta"]);

    // Health lists each collector, in order, with its own counters.
    let report = health.report().await;
    assert_eq!(report.components.len(), 5, "{report:#?}"); // 3 collectors, stdout, file
    assert_eq!(report.components[2].name, "gamma", "{report:#?}");
    assert_eq!(report.counters["collector.alpha.events_received"], 1);
    assert_eq!(report.counters["collector.beta.events_received"], 1);
    assert_eq!(report.counters["events_received"], 2);
    assert_eq!(report.counters["alerts"], 2);
    assert!(
        report.message.contains("collector gamma down"),
        "{}",
        report.message
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the agent stops when told")
        .unwrap();
    for c in &health.collectors {
        assert_eq!(c.link.state(), LinkState::Stopped, "{}", c.name);
    }
    alpha.stop().await;
    beta.stop().await;
}

/// SIGTERM while the agent is behind a flood: its links were waiting to hand
/// on batches the loop no longer took, and the agent never stopped. Now it
/// stops within its drain deadline, and every event received is accounted
/// for: stored, or counted dropped at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn shutdown_behind_a_flood_ends_in_time_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("alpha.sock");
    let alpha = Served::start(&socket).await;
    // Rules that each cost their whole time limit on any large batch: the
    // loop takes a batch every few seconds and falls far behind the feed.
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let mut slow = String::new();
    for i in 0..16 {
        use std::fmt::Write as _;
        let _ = write!(
            slow,
            "[[rule]]\nid = \"slow-{i}\"\nname = \"slow\"\nseverity = \"low\"\nsql = \"SELECT a.pid \
             FROM processes a, processes b, processes c \
             WHERE a.cmdline || b.cmdline || c.cmdline LIKE '%never-{i}%'\"\n"
        );
    }
    std::fs::write(rules.join("slow.toml"), slow).unwrap();
    let settings = settings(&format!(
        "data_dir = \"{}\"\nrules_dir = \"{}\"\nsweep_interval = \"1h\"\n\
         [[collector]]\nname = \"alpha\"\nsocket = \"{}\"\n",
        dir.path().join("data").display(),
        rules.display(),
        socket.display(),
    ));
    let agent = Agent::build(settings).await.unwrap();
    let health = agent.health();
    let registry = agent.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    let link = health.collectors[0].link.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(|s| s.state() == LinkState::Connected),
    )
    .await
    .unwrap_or_else(|_| panic!("never connected: {}", link.last_error()));

    let feed = alpha.feeder();
    let feeding = tokio::spawn(async move {
        for pid in 2..u32::MAX {
            let event = collector_core::CollectionEvent::Process(exec(pid, "flood"));
            if feed.send(event).await.is_err() {
                break;
            }
        }
    });
    // Behind: the link waits to hand on a batch (its count of batches stands
    // still while the feed goes on; nothing to await for that).
    let judged = || {
        registry
            .value("daemoneye_events_accepted_total", &[("stage", "store")])
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = (link.batches.get(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = link.batches.get();
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if now > 64 && last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link never waited: {} batches, {} events received, {} judged",
            link.batches.get(),
            link.events.get(),
            judged()
        );
    }
    assert!(link.events.get() > judged(), "behind the feed");
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running).await;
    assert!(
        stopped.is_ok(),
        "the agent did not stop within 30 s of its shutdown behind a flood"
    );
    stopped.unwrap().unwrap();
    feeding.abort();
    let dropped = |stage: &str| {
        let labels: &[(&str, &str)] = if stage == "link" {
            &[
                ("stage", "link"),
                ("collector", "alpha"),
                ("reason", "shutdown"),
            ]
        } else {
            &[("stage", "agent"), ("reason", "shutdown")]
        };
        registry
            .value("daemoneye_events_dropped_total", labels)
            .unwrap()
    };
    assert_eq!(
        link.events.get(),
        judged() + dropped("link") + dropped("agent"),
        "every event received is stored or counted dropped (link {}, agent {})",
        dropped("link"),
        dropped("agent")
    );
    alpha.stop().await;
}

/// The ledger's head leaves the host on a schedule: a checkpoint at start,
/// one every `checkpoint_interval`, the last after the `stop` entry at
/// shutdown; each is a ledger entry, and counted per sink as a checkpoint
/// (not as an alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_reach_the_sinks_at_start_on_schedule_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("alerts.fifo");
    let lines = json_pipe(&fifo, |_| true);
    let settings = test_settings(
        dir.path(),
        &fifo,
        &format!(
            "checkpoint_interval = \"300ms\"\n[[collector]]\nname = \"absent\"\nsocket = \"{}\"\n",
            dir.path().join("absent.sock").display()
        ),
    );
    assert_eq!(settings.checkpoint_interval, Duration::from_millis(300));
    let agent = Agent::build(settings).await.unwrap();
    let registry = agent.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    // The start checkpoint, then two on schedule: awaited, in order.
    let seen = tokio::task::spawn_blocking(move || {
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("a checkpoint at start and every 300 ms");
            assert_eq!(line["kind"], "checkpoint", "{line}");
            assert_eq!(line["head"].as_str().unwrap().len(), 64, "{line}");
            seqs.push(line["seq"].as_i64().unwrap());
        }
        (seqs, lines)
    });
    let (seqs, lines) = seen.await.unwrap();
    // start = 1, then one entry per checkpoint.
    assert_eq!(seqs, [2, 3, 4]);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the agent stops when told")
        .unwrap();
    let store =
        daemoneye_agent::store::AgentStore::open_read_only(&dir.path().join("data")).unwrap();
    let runs = store.ledger_runs().unwrap();
    assert_eq!((runs.starts, runs.stops, runs.running), (1, 1, false));
    let stop_seq = store
        .query("SELECT seq FROM ledger WHERE kind = 'stop'")
        .unwrap()
        .rows[0][0]
        .as_i64()
        .unwrap();
    // What the sink wrote after them, up to the checkpoint after the stop
    // (the reading thread may still be on its way to it).
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest: Vec<Value> = Vec::new();
        while rest.last().and_then(|l| l["seq"].as_i64()) != Some(stop_seq + 1) {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => rest.push(line),
                Err(_) => break,
            }
        }
        rest
    })
    .await
    .unwrap();
    let last = rest.last().expect("a checkpoint at shutdown");
    assert_eq!(
        last["seq"],
        stop_seq + 1,
        "the last checkpoint follows the stop"
    );
    assert_eq!(Some(stop_seq + 1), runs.last_checkpoint);
    let file = [("sink", "file")];
    let delivered = registry
        .value("daemoneye_checkpoints_delivered_total", &file)
        .unwrap();
    assert_eq!(delivered, 4 + rest.len() as u64 - 1, "{rest:?}");
    assert_eq!(
        registry.value("daemoneye_alerts_delivered_total", &file),
        Some(0),
        "checkpoints are not counted as alerts"
    );
}
