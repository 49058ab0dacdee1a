//! Sockets in another network namespace: a listener made by a process
//! that `unshare -n` put in a new one. Root only (entering a namespace
//! needs `CAP_SYS_ADMIN`, and so does making one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use collector_core::ConnectionDirection;
use netmond::Snapshot;

const HELPER: &str = "NETMOND_TEST_NAMESPACE_HELPER";

/// Not a test on its own: run with `HELPER` set (by the test below, inside
/// a new network namespace) it listens, prints its port and waits for its
/// stdin to close.
#[test]
fn namespace_helper() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

fn netns_of(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let text = link.to_str().unwrap();
    text.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

#[test]
fn a_listener_in_another_network_namespace_is_seen_with_its_process_and_namespace() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: making and entering a network namespace needs root");
        return;
    }
    let probe = Command::new("unshare").args(["--net", "true"]).status();
    if !probe.as_ref().is_ok_and(std::process::ExitStatus::success) {
        eprintln!("skipped: `unshare --net` cannot make a namespace here ({probe:?})");
        return;
    }
    let mut helper = Command::new("unshare")
        .arg("--net")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "namespace_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux)");
    let mut port = None;
    let mut out = BufReader::new(helper.stdout.take().unwrap());
    for line in out.by_ref().lines() {
        let line = line.unwrap();
        // libtest prints the test's name before it on the same line.
        if let Some((_, p)) = line.split_once("port ") {
            port = Some(p.trim().parse::<u16>().unwrap());
            break;
        }
    }
    let port = port.expect("the helper's port");
    // unshare execs the test binary: the helper is the child's own pid.
    let pid = helper.id();
    let theirs = netns_of(pid);
    assert_ne!(
        theirs,
        netns_of(std::process::id()),
        "a namespace of its own"
    );

    let snap = Snapshot::take(Path::new("/proc")).unwrap();
    assert_eq!(snap.unreadable_namespaces, 0);
    let found = snap
        .connections
        .iter()
        .find(|c| c.socket.local.port() == port && c.socket.netns == Some(theirs))
        .unwrap_or_else(|| panic!("no listener on {port} in namespace {theirs}"));
    assert_eq!(found.direction, ConnectionDirection::Listen);
    assert_eq!(found.owners.first().map(|o| o.pid), Some(pid));
    // And not in ours: nothing listens on that port here.
    assert!(!snap
        .connections
        .iter()
        .any(|c| c.socket.local.port() == port
            && c.socket.netns != Some(theirs)
            && c.socket.state == Some(collector_core::ConnectionState::Listen)));

    drop(helper.stdin.take());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(helper.wait().unwrap().success(), "{rest}");
}
