//! Proc connector tests against the real kernel.
//!
//! Subscribing needs root (`CAP_NET_ADMIN`): these tests skip, saying so,
//! only when not root. Any other failure fails.

use std::process::Command;
use std::time::Duration;

use procmond::connector::{
    exit_status, ConnectorConfig, ConnectorError, ConnectorMessage, ExitStatus, ProcConnector,
    ProcEvent, ReaderHandle,
};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// Generous: events arrive within milliseconds; this only bounds a failure.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

fn not_root() -> bool {
    if rustix::process::geteuid().is_root() {
        false
    } else {
        eprintln!("skipping: not root (these tests force a 32 MiB buffer and change uids)");
        true
    }
}

fn start(capacity: usize) -> (ReaderHandle, mpsc::Receiver<ConnectorMessage>) {
    let connector = ProcConnector::open(&ConnectorConfig::default()).unwrap();
    let (tx, rx) = mpsc::channel(capacity);
    (connector.spawn_reader(tx).unwrap(), rx)
}

/// Receives events until `done` holds for the events about `tgid` seen so far
/// (fails after [`EVENT_TIMEOUT`]); returns them.
async fn events_of(
    rx: &mut mpsc::Receiver<ConnectorMessage>,
    tgid: u32,
    done: impl Fn(&[ProcEvent]) -> bool,
) -> Vec<ProcEvent> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !done(&seen) {
        let message = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; events of {tgid} so far: {seen:?}"))
            .expect("reader ended");
        match message {
            ConnectorMessage::Events(events) => seen.extend(
                events
                    .into_iter()
                    .filter(|e| e.process().is_some_and(|p| p.tgid == tgid)),
            ),
            ConnectorMessage::Overrun => panic!("overrun while waiting for {tgid}"),
            other => panic!("unexpected message {other:?}"),
        }
    }
    seen
}

fn has_exit(events: &[ProcEvent]) -> bool {
    events.iter().any(|e| matches!(e, ProcEvent::Exit { .. }))
}

fn exit_code_of(events: &[ProcEvent]) -> u32 {
    events
        .iter()
        .find_map(|e| match e {
            ProcEvent::Exit { exit_code, .. } => Some(*exit_code),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn short_lived_child_is_seen_forking_execing_and_exiting() {
    if not_root() {
        return;
    }
    let (reader, mut rx) = start(4096);
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    // Reaped only once its exit was seen: the kernel fills the exit's parent
    // fields after waking the parent, and sends zeros there if the parent
    // has already reaped the child (`pid_alive` is false by then).
    let events = events_of(&mut rx, pid, has_exit).await;
    assert!(child.wait().unwrap().success());
    eprintln!(
        "/bin/true (pid {pid}) produced {} events: {events:?}",
        events.len()
    );

    let fork = events
        .iter()
        .find_map(|e| match e {
            ProcEvent::Fork { parent, child, .. } if child.pid == pid => Some((*parent, *child)),
            _ => None,
        })
        .expect("a fork whose child is the spawned pid");
    assert_eq!(fork.1.tgid, pid);
    assert_eq!(fork.0.tgid, std::process::id());
    assert!(events
        .iter()
        .any(|e| matches!(e, ProcEvent::Exec { process, .. } if process.pid == pid)));
    let exit = events
        .iter()
        .find(|e| matches!(e, ProcEvent::Exit { process, .. } if process.pid == pid))
        .unwrap();
    let ProcEvent::Exit {
        exit_code, parent, ..
    } = exit
    else {
        unreachable!()
    };
    assert_eq!(*exit_code, 0);
    assert_eq!(exit.exit_status(), Some(ExitStatus::Exited(0)));
    assert_eq!(parent.map(|p| p.tgid), Some(std::process::id()));

    let stats = reader.stop().unwrap();
    assert!(stats.datagrams_received >= 3, "{stats:?}");
    assert!(stats.events_decoded >= 3, "{stats:?}");
}

#[tokio::test]
async fn exit_code_is_the_raw_wait_status() {
    if not_root() {
        return;
    }
    let (reader, mut rx) = start(4096);

    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let events = events_of(&mut rx, pid, has_exit).await;
    let raw = exit_code_of(&events);
    assert_eq!(raw, 3 << 8);
    assert_eq!(exit_status(raw), ExitStatus::Exited(3));

    let mut child = Command::new("sh")
        .args(["-c", "kill -9 $$"])
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let events = events_of(&mut rx, pid, has_exit).await;
    assert_eq!(
        exit_status(exit_code_of(&events)),
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );

    reader.stop().unwrap();
}

#[tokio::test]
async fn comm_change_is_seen() {
    if not_root() {
        return;
    }
    let (reader, mut rx) = start(4096);
    // The builtin printf runs in the shell itself, so the shell is renamed.
    let mut child = Command::new("sh")
        .args(["-c", "printf renamed-child > /proc/self/comm"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let events = events_of(&mut rx, pid, has_exit).await;
    let comm = events.iter().find_map(|e| match e {
        ProcEvent::Comm { comm, .. } => Some(comm.clone()),
        _ => None,
    });
    assert_eq!(comm.as_deref(), Some("renamed-child"), "{events:?}");
    reader.stop().unwrap();
}

#[test]
fn receive_buffer_is_forced_to_at_least_32_mib() {
    if not_root() {
        return;
    }
    let connector = ProcConnector::open(&ConnectorConfig::default()).unwrap();
    let granted = connector.recv_buffer();
    eprintln!("receive buffer: {granted:?}");
    assert!(granted.forced, "{granted:?}");
    assert_eq!(granted.requested_bytes, 32 * MIB);
    assert!(granted.granted_bytes >= 32 * MIB, "{granted:?}");
}

#[tokio::test]
async fn stop_returns_within_a_second() {
    if not_root() {
        return;
    }
    let (reader, _rx) = start(16);
    let started = Instant::now();
    reader.stop().unwrap();
    let took = started.elapsed();
    eprintln!("stop took {took:?}");
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
}

#[tokio::test]
async fn stop_returns_within_a_second_while_blocked_on_a_full_channel() {
    if not_root() {
        return;
    }
    let (reader, mut rx) = start(1);
    // Fill the channel and make the reader wait for room: every spawn makes
    // at least three events, and nobody reads `rx` until after the stop.
    // One message fills the channel; once a second is decoded the reader is
    // holding it, waiting (one datagram may carry both: count events, not
    // datagrams).
    for _ in 0..3 {
        Command::new("/bin/true").status().unwrap();
    }
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while reader.stats().events_decoded < 2 {
        assert!(Instant::now() < deadline, "no events: {:?}", reader.stats());
        tokio::task::yield_now().await;
        Command::new("/bin/true").status().unwrap();
    }
    let started = Instant::now();
    let stats = reader.stop().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert!(stats.events_decoded >= 2, "{stats:?}");
    assert!(rx.recv().await.is_some());
}

#[tokio::test]
async fn reader_ends_when_the_receiver_is_dropped() {
    if not_root() {
        return;
    }
    let (reader, rx) = start(16);
    drop(rx);
    let joined = timeout(
        Duration::from_secs(1),
        tokio::task::spawn_blocking(move || reader.join()),
    )
    .await
    .expect("reader did not end within a second");
    joined.unwrap().unwrap();
}

/// Kernels before about 6.6 refuse an unprivileged subscription (`EPERM` on
/// bind or in the ack); newer ones accept it (measured on 6.18) and only
/// refuse to force the buffer. Either way the unprivileged path must be usable.
#[tokio::test]
async fn unprivileged_open_is_denied_or_gets_an_unforced_buffer() {
    if not_root() {
        return;
    }
    // Credentials are per thread in the kernel: this thread alone becomes
    // `nobody` (losing its capabilities); the rest of the test binary stays
    // root. The socket keeps what it was granted when handed back.
    let opened = std::thread::spawn(|| {
        let nobody = rustix::process::Uid::from_raw(65_534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        ProcConnector::open(&ConnectorConfig::default())
    })
    .join()
    .unwrap();
    match opened {
        Err(ConnectorError::PermissionDenied { operation }) => {
            eprintln!("unprivileged: permission denied to {operation}");
        }
        Ok(connector) => {
            let granted = connector.recv_buffer();
            eprintln!("unprivileged: subscribed with {granted:?}");
            assert!(!granted.forced, "{granted:?}");
            let (tx, mut rx) = mpsc::channel(4096);
            let reader = connector.spawn_reader(tx).unwrap();
            let mut child = Command::new("/bin/true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            let events = events_of(&mut rx, pid, has_exit).await;
            assert!(
                events.iter().any(|e| matches!(e, ProcEvent::Exec { .. })),
                "{events:?}"
            );
            reader.stop().unwrap();
        }
        Err(other) => panic!("unprivileged open: {other}"),
    }
}
