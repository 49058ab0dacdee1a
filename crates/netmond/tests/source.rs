//! netmond's source: the differ on real loopback sockets, the conformance
//! kit, and `netmond run`'s JSON lines. Alone in their binary, so that no
//! other test's sockets come and go between two looks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use collector_core::poll::Poll;
use collector_core::testing::{check_source, ConformanceConfig};
use collector_core::{
    CaptureTier, CollectionEvent, ConnectionChange, ConnectionDirection, EventKind, NetworkEvent,
};
use netmond::source::{Differ, NetmondConfig, NetmondCounters};

fn look(differ: &mut Differ) -> Vec<NetworkEvent> {
    let mut out = Vec::new();
    differ.poll(&mut out).unwrap();
    out.into_iter()
        .map(|e| match e {
            CollectionEvent::Network(n) => n,
            other => panic!("not a network event: {other:?}"),
        })
        .collect()
}

fn port_of(events: &[NetworkEvent], port: u16) -> Vec<&NetworkEvent> {
    events
        .iter()
        .filter(|e| e.source_port == Some(port) || e.dest_port == Some(port))
        .collect()
}

/// The two ends of the one connection on `port`, both reported as `change`.
fn both_ends(events: &[NetworkEvent], port: u16, change: ConnectionChange) -> Vec<&NetworkEvent> {
    let mine = port_of(events, port);
    assert_eq!(mine.len(), 2, "both ends, {change:?}: {mine:?}");
    assert!(mine.iter().all(|e| e.change == Some(change)), "{mine:?}");
    mine
}

#[test]
#[allow(clippy::too_many_lines)]
fn the_differ_reports_present_then_opened_then_closed_with_their_processes() {
    let counters = NetmondCounters::default();
    let mut differ = Differ::new(Path::new("/proc"), counters.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let first = look(&mut differ);
    let mine = port_of(&first, port);
    assert_eq!(mine.len(), 1, "{mine:?}");
    let l = mine[0];
    assert_eq!(l.change, Some(ConnectionChange::Present));
    assert_eq!(l.direction, Some(ConnectionDirection::Listen));
    assert_eq!(l.pid, Some(std::process::id()));
    assert_eq!(
        l.process_key.map(|k| k.pid),
        Some(std::process::id()),
        "the key names the holder"
    );
    assert_eq!(
        (l.dest_addr, l.dest_port),
        (None, None),
        "a listener has no peer"
    );
    assert_eq!(l.tier, Some(CaptureTier::Polling));
    assert!(l.netns.is_some() && l.inode.is_some());
    for e in &first {
        assert!(
            CollectionEvent::Network(e.clone()).validate().is_ok(),
            "{e:?}"
        );
    }

    // Nothing changed: nothing reported.
    assert!(port_of(&look(&mut differ), port).is_empty());

    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let opened = look(&mut differ);
    let mine = both_ends(&opened, port, ConnectionChange::Opened);
    let dirs: Vec<_> = mine.iter().filter_map(|e| e.direction).collect();
    assert!(dirs.contains(&ConnectionDirection::Inbound), "{dirs:?}");
    assert!(dirs.contains(&ConnectionDirection::Outbound), "{dirs:?}");
    assert!(mine.iter().all(|e| e.pid == Some(std::process::id())));
    let ids: Vec<u64> = mine.iter().map(|e| e.connection_id).collect();
    assert_ne!(ids[0], ids[1], "each end its own cookie");

    drop(client);
    drop(server);
    let closed = look(&mut differ);
    let mine = both_ends(&closed, port, ConnectionChange::Closed);
    let mut closed_ids: Vec<u64> = mine.iter().map(|e| e.connection_id).collect();
    let mut ids = ids;
    closed_ids.sort_unstable();
    ids.sort_unstable();
    assert_eq!(closed_ids, ids, "the same connections, by cookie");
    assert!(counters.opened.get() >= 2 && counters.closed.get() >= 2);
}

#[tokio::test]
async fn the_source_passes_the_conformance_kit() {
    let _listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = NetmondConfig {
        interval: Duration::from_millis(200),
        ..NetmondConfig::default()
    };
    let source = netmond::source::source(&config, NetmondCounters::default()).unwrap();
    let counters = source.counters();
    let kit = ConformanceConfig::wanting(1, Duration::from_secs(3));
    let report = check_source(Arc::new(source), &kit).await.unwrap();
    assert_eq!(report.kinds(), [EventKind::Network]);
    assert!(counters.polls.get() >= 1);
    assert_eq!(counters.polls_failed.get(), 0);
}

#[test]
fn run_writes_each_socket_as_a_json_line() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netmond"))
        .args([
            "run",
            "--no-socket",
            "--interval",
            "1",
            "--events-jsonl",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = None;
    for line in lines {
        let line = line.unwrap();
        let e: NetworkEvent = serde_json::from_str(&line).unwrap();
        if e.source_port == Some(port) {
            found = Some(e);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let e = found.expect("the listener in netmond's output");
    assert_eq!(e.direction, Some(ConnectionDirection::Listen));
    assert_eq!(e.pid, Some(std::process::id()));
    assert!(e.id.is_some(), "named by the runtime");
}

#[test]
fn a_socket_held_by_two_processes_is_one_event_each_with_its_lowest_fd() {
    let mut differ = Differ::new(Path::new("/proc"), NetmondCounters::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_server, _) = listener.accept().unwrap();
    // A child holding the client's end as its stdin and stdout (this
    // process keeps its own descriptor too).
    let as_stdin = std::os::fd::OwnedFd::from(client.try_clone().unwrap());
    let as_stdout = std::os::fd::OwnedFd::from(client.try_clone().unwrap());
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::from(as_stdin))
        .stdout(Stdio::from(as_stdout))
        .spawn()
        .unwrap();
    let child_pid = child.id();
    let local = client.local_addr().unwrap().port();
    let events = look(&mut differ);
    let _ = child.kill();
    let _ = child.wait();
    let ends: Vec<&NetworkEvent> = events
        .iter()
        .filter(|e| e.source_port == Some(local))
        .collect();
    let mut holders: Vec<(Option<u32>, Option<u32>)> = ends.iter().map(|e| (e.pid, e.fd)).collect();
    holders.sort_unstable();
    let mut want = vec![
        (
            Some(std::process::id()),
            Some(std::os::fd::AsRawFd::as_raw_fd(&client).unsigned_abs()),
        ),
        (Some(child_pid), Some(0)),
    ];
    want.sort_unstable();
    assert_eq!(holders, want, "{ends:?}");
    assert!(ends.iter().all(|e| e.holders == Some(2)), "{ends:?}");
    assert_eq!(ends[0].connection_id, ends[1].connection_id);
    assert_eq!(
        ends.iter()
            .find(|e| e.pid == Some(child_pid))
            .and_then(|e| e.process_key)
            .map(|k| k.pid),
        Some(child_pid)
    );
}
