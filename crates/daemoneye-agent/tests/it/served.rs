//! A collector served in this process on a socket, fed by the test: the
//! agent's link connects to it as to procmond. Shared with
//! daemoneye-cli's tests (`#[path]`), which run agents too.

use collector_core::testing::Replay;
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, CollectorIpcServer, IpcServerConfig,
    IpcServerHandle, ProcessEvent, ProcessEventType, SourceCaps,
};
use tokio::sync::mpsc;

/// A collector serving a socket in this process, fed by the test.
pub struct Served {
    feed: mpsc::Sender<CollectionEvent>,
    server: IpcServerHandle,
    collector: collector_core::CollectorHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served {
    pub async fn start(socket: &std::path::Path) -> Self {
        let (fed, feed) = Replay::fed("fed", SourceCaps::PROCESS | SourceCaps::REALTIME);
        let mut collector = Collector::new(CollectorConfig::default());
        collector.register(Box::new(fed)).unwrap();
        let mut server =
            CollectorIpcServer::new(IpcServerConfig::new(socket), collector.capabilities())
                .await
                .unwrap()
                .with_events(collector.handle());
        let handle = collector.handle();
        let server_handle = server.handle();
        let tasks = vec![
            tokio::spawn(async move {
                server
                    .start(|t| {
                        Box::pin(async move {
                            daemoneye_lib::proto::DetectionResult::failure(&t.task_id, "none")
                        })
                    })
                    .await
                    .unwrap();
            }),
            tokio::spawn(async move {
                collector.run_until(std::future::pending()).await.unwrap();
            }),
        ];
        Self {
            feed,
            server: server_handle,
            collector: handle,
            tasks,
        }
    }

    /// A sender into the collector's source, for a feed of its own.
    pub fn feeder(&self) -> tokio::sync::mpsc::Sender<CollectionEvent> {
        self.feed.clone()
    }

    /// Has the collector's source emit `event`.
    pub async fn send(&self, event: ProcessEvent) {
        self.feed
            .send(CollectionEvent::Process(event))
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        // The source ends when its feed does.
        drop(self.feed);
        self.server.shutdown();
        self.collector.shutdown();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

pub fn exec(pid: u32, name: &str) -> ProcessEvent {
    let mut e = ProcessEvent::new(pid, name);
    e.event_type = ProcessEventType::Exec;
    e.ppid = Some(1);
    e.executable_path = Some(format!("/usr/bin/{name}"));
    e.command_line = vec![name.to_owned(), "--flag".to_owned()];
    e.accessible = true;
    e
}
