//! The snapshotter's socket → process map across snapshots, on real
//! sockets. Alone in its binary: another test making sockets in this
//! process would make it walk `/proc` again, rightly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use netmond::Snapshot;

/// Kills a process by pid when dropped, so a failed test leaves no
/// `sleep` behind (it holds the test's pipes).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

#[test]
fn a_snapshotter_walks_proc_again_only_for_new_sockets_or_exited_holders() {
    use netmond::Snapshotter;
    use std::io::{BufRead, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // bash connects, leaves a `sleep` holding the socket too, and waits.
    let mut bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{}; sleep 600 & echo $!; read _",
            addr.port()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(bash.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sleep: u32 = line.trim().parse().unwrap();
    let _sleep = KillOnDrop(sleep);
    let (_accepted, peer) = listener.accept().unwrap();
    let holders = |snap: &Snapshot| {
        let c = snap
            .connections
            .iter()
            .find(|c| c.socket.local == peer && c.socket.remote == addr)
            .expect("the client end");
        c.owners.iter().map(|o| o.pid).collect::<Vec<_>>()
    };

    let mut snapshotter = Snapshotter::new(Path::new("/proc"));
    let mut first = holders(&snapshotter.take().unwrap());
    first.sort_unstable();
    let mut want = vec![bash.id(), sleep];
    want.sort_unstable();
    assert_eq!(first, want);
    assert_eq!(snapshotter.walks(), 1);

    // Nothing new: the map is kept.
    assert_eq!(holders(&snapshotter.take().unwrap()).len(), 2);
    assert_eq!(snapshotter.walks(), 1, "walked again with nothing new");

    // A new socket: walked again, and its holder found.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let snap = snapshotter.take().unwrap();
    assert_eq!(snapshotter.walks(), 2);
    let found = snap
        .connections
        .iter()
        .find(|c| {
            c.socket.protocol == collector_core::NetworkProtocol::Udp
                && c.socket.local == udp.local_addr().unwrap()
        })
        .unwrap();
    assert_eq!(
        found.owners.first().map(|o| o.pid),
        Some(std::process::id()),
        "{found:?}"
    );

    // bash exits; the socket lives on in sleep: walked again, sleep alone.
    bash.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(bash.wait().unwrap().success());
    assert_eq!(holders(&snapshotter.take().unwrap()), [sleep]);
    assert_eq!(snapshotter.walks(), 3);
}
