//! The collector link against a real IPC server in this process: events
//! arrive converted, a lost collector is counted and reconnected.

use std::sync::Arc;
use std::time::Duration;

use collector_core::SourceCaps;
use daemoneye_agent::link::{self, CollectorMode, LinkConfig, LinkEvent, LinkState, LinkStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::served::{exec, Served};

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
