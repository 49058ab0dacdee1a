//! The collector link against a real IPC server in this process: events
//! arrive converted, a lost collector is counted and reconnected.

use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::Replay;
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, CollectorIpcServer, IpcServerConfig,
    IpcServerHandle, ProcessEvent, ProcessEventType, SourceCaps,
};
use daemoneye_agent::link::{self, CollectorMode, LinkConfig, LinkEvent, LinkState, LinkStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

async fn next(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the link said nothing")
        .expect("the link ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_converted_and_a_lost_collector_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("collector.sock");
    let served = Served::start(&socket).await;

    let status = Arc::new(LinkStatus::default());
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let config = LinkConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..LinkConfig::new(CollectorMode::Connect, &socket)
    };
    let linking = tokio::spawn(link::run(config, status.clone(), tx, shutdown.clone()));

    assert!(matches!(next(&mut rx).await, LinkEvent::Connected));
    assert_eq!(status.state(), LinkState::Connected);
    assert!(status.capabilities().contains(SourceCaps::PROCESS));
    let sent = exec(4242, "curl");
    served.send(sent.clone()).await;
    let LinkEvent::Events(got) = next(&mut rx).await else {
        panic!("expected events");
    };
    // The collector's runtime named the event; the id crossed with it.
    let id = got[0]
        .id
        .expect("the collector's runtime names every event");
    let mut expected = sent;
    expected.id = Some(id);
    assert_eq!(got, vec![expected], "every field survives the socket");

    // The collector goes away: counted, then reconnected when it is back.
    served.stop().await;
    let served = Served::start(&socket).await;
    assert!(matches!(next(&mut rx).await, LinkEvent::Connected));
    assert_eq!(status.restarts.get(), 1, "{}", status.last_error());
    assert!(!status.last_error().is_empty());
    served.send(exec(7, "ls")).await;
    let LinkEvent::Events(got) = next(&mut rx).await else {
        panic!("expected events");
    };
    assert_eq!(got[0].pid, 7);
    assert_eq!(status.events.get(), 2);
    assert_eq!(status.bad_records.get(), 0);

    shutdown.cancel();
    linking.await.unwrap();
    assert_eq!(status.state(), LinkState::Stopped);
    served.stop().await;
}

#[tokio::test]
async fn a_collector_that_never_comes_up_is_retried_with_the_reason_kept() {
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(LinkStatus::default());
    let (tx, _rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let config = LinkConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(5),
        startup_timeout: Duration::from_millis(100),
        // A program that exits at once instead of serving the socket.
        ..LinkConfig::new(
            CollectorMode::Spawn {
                program: "/bin/false".into(),
                args: Vec::new(),
            },
            dir.path().join("never.sock"),
        )
    };
    let linking = tokio::spawn(link::run(config, status.clone(), tx, shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.restarts.get() >= 3),
    )
    .await
    .expect("three restarts");
    assert!(
        status.last_error().contains("collector exited"),
        "{}",
        status.last_error()
    );
    shutdown.cancel();
    linking.await.unwrap();
}
