//! The agent as a library, without its binary: built from a config, it
//! runs one link per configured collector into one detection loop, lists
//! each in its health, and stops when told.

use std::io::{BufRead, BufReader};
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

/// A named pipe at `path`, each JSON line written to it on the channel.
pub fn alerts_pipe(path: &Path) -> std::sync::mpsc::Receiver<Value> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    rx
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
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the agent stops when told")
        .unwrap();
    for c in &health.collectors {
        assert_eq!(c.link.state(), LinkState::Stopped, "{}", c.name);
    }
    alpha.stop().await;
    beta.stop().await;
}
