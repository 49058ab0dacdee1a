//! An agent with one served collector, shipping to a broker: the fleet
//! tests' agent. Shared with daemoneye-cli's tests (`#[path]`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use daemoneye_agent::agent::Agent;
use daemoneye_agent::config::{AgentConfig, RunArgs, Settings};
use daemoneye_agent::health::AgentHealth;
use daemoneye_agent::link::LinkState;
use daemoneye_agent::sink::FleetStatus;
use daemoneye_lib::proto::ComponentHealth;
use tokio_util::sync::CancellationToken;

use crate::served::{exec, Served};

/// An agent running with one collector served here, shipping to a broker.
pub struct FleetAgent {
    pub health: AgentHealth,
    pub metrics: collector_core::metrics::Registry,
    pub fleet: Arc<FleetStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub collector: Served,
    data: PathBuf,
}

impl FleetAgent {
    /// Starts an agent on the store in `data`, its collector served on
    /// `socket`, shipping to `url` as `host` with more `[fleet]` keys
    /// (`fleet`) and top-level keys (`top`); returns once the collector's
    /// link is up.
    pub async fn launch(
        data: &Path,
        socket: &Path,
        url: &str,
        host: &str,
        fleet: &str,
        top: &str,
    ) -> Self {
        let collector = Served::start(socket).await;
        let toml = format!(
            "data_dir = \"{}\"\nsweep_interval = \"1h\"\n{top}\n\
             [[collector]]\nname = \"alpha\"\nsocket = \"{}\"\n\
             [fleet]\nurl = \"{url}\"\nhost = \"{host}\"\n{fleet}\n",
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
        let metrics = agent.metrics();
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
        Self {
            health,
            metrics,
            fleet,
            shutdown,
            task,
            collector,
            data: data.to_path_buf(),
        }
    }

    /// An exec from /dev/shm by `pid`: one alert.
    pub async fn raise(&self, pid: u32) {
        let mut e = exec(pid, &format!("p{pid}"));
        e.executable_path = Some(format!("/dev/shm/p{pid}"));
        self.collector.send(e).await;
    }

    /// Waits (up to 30 s) until `done` holds of the fleet sink's state.
    pub async fn until(&self, what: &str, done: impl Fn(&FleetStatus) -> bool) {
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

    /// Waits until `n` items were acknowledged and the outbox is empty.
    pub async fn until_shipped(&self, n: u64) {
        self.until(&format!("{n} items shipped"), |f| {
            f.acknowledged.get() >= n && f.outbox_depth.get() == 0 && f.last_error().is_empty()
        })
        .await;
    }

    /// The agent's health report and its fleet component.
    pub async fn fleet_health(&self) -> (ComponentHealth, ComponentHealth) {
        let report = self.health.report().await;
        let fleet = report
            .components
            .iter()
            .find(|c| c.name == "fleet")
            .expect("a fleet component")
            .clone();
        (report, fleet)
    }

    /// Stops the agent and its collector; returns the data directory.
    pub async fn stop(self) -> PathBuf {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the agent stops when told")
            .unwrap();
        self.collector.stop().await;
        self.data
    }
}
