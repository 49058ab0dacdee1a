//! Snapshots against real sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use collector_core::{
    ConnectionDirection as Direction, ConnectionState as State, NetworkProtocol as Protocol,
};
use netmond::{Owner, Snapshot};

/// A bash that connects to `addr` on descriptor 3 and waits on its stdin.
fn client(addr: SocketAddr) -> Child {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => a.ip().to_string(),
    };
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/{host}/{}; echo connected >&3; read _",
            addr.port()
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

fn me() -> u32 {
    std::process::id()
}

fn both_ends_are_held_by_the_right_processes(bind: &str) {
    let listener = TcpListener::bind(bind).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut child = client(server_addr);
    let (accepted, peer) = listener.accept().unwrap();
    let fd = u32::try_from(accepted.as_raw_fd()).unwrap();
    let listener_fd = u32::try_from(listener.as_raw_fd()).unwrap();

    let snap = Snapshot::take(Path::new("/proc")).unwrap();
    let find = |local: SocketAddr, remote: SocketAddr| {
        snap.connections
            .iter()
            .find(|c| c.socket.local == local && c.socket.remote == remote)
            .unwrap_or_else(|| panic!("no socket {local} -> {remote} in {:#?}", snap.connections))
    };
    let server = find(server_addr, peer);
    assert_eq!(server.socket.protocol, Protocol::Tcp);
    assert_eq!(server.socket.state, Some(State::Established));
    assert_eq!(server.direction, Direction::Inbound);
    // Other tests of this binary fork children that hold every descriptor
    // of this process until they exec: the holders include this process.
    assert!(
        server.owners.contains(&Owner { pid: me(), fd }),
        "{server:?}"
    );

    let client_end = find(peer, server_addr);
    assert_eq!(client_end.direction, Direction::Outbound);
    assert_eq!(
        client_end.owners,
        [Owner {
            pid: child.id(),
            fd: 3
        }]
    );
    assert_eq!(client_end.socket.uid, my_uid());

    let listening = snap
        .connections
        .iter()
        .find(|c| c.socket.local == server_addr && c.socket.state == Some(State::Listen))
        .expect("the listener");
    assert_eq!(listening.direction, Direction::Listen);
    assert!(listening.owners.contains(&Owner {
        pid: me(),
        fd: listener_fd
    }));

    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
}

fn my_uid() -> u32 {
    // The uid of this process, which the bash child shares.
    std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    })
}

#[test]
fn a_loopback_connection_over_ipv4_has_both_ends_with_their_pids() {
    both_ends_are_held_by_the_right_processes("127.0.0.1:0");
}

#[test]
fn a_loopback_connection_over_ipv6_has_both_ends_with_their_pids() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this host");
        return;
    }
    both_ends_are_held_by_the_right_processes("[::1]:0");
}

#[test]
fn a_bound_udp_socket_is_a_listener_held_by_this_process() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let snap = Snapshot::take(Path::new("/proc")).unwrap();
    let found = snap
        .connections
        .iter()
        .find(|c| c.socket.protocol == Protocol::Udp && c.socket.local == addr)
        .expect("the UDP socket");
    assert_eq!(found.direction, Direction::Listen);
    assert!(found.owners.contains(&Owner {
        pid: me(),
        fd: u32::try_from(udp.as_raw_fd()).unwrap()
    }));
}

#[test]
fn processes_exiting_while_their_sockets_are_read_do_not_fail_the_snapshot() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Clients that connect and exit at once, while snapshots are taken.
    let churn = std::thread::spawn(move || {
        for _ in 0..40 {
            let status = Command::new("bash")
                .arg("-c")
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}", addr.port()))
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    let accept = std::thread::spawn(move || {
        for _ in 0..40 {
            drop(listener.accept().unwrap());
        }
    });
    let mut taken = 0;
    while !churn.is_finished() {
        Snapshot::take(Path::new("/proc")).expect("a snapshot during the churn");
        taken += 1;
    }
    churn.join().unwrap();
    accept.join().unwrap();
    assert!(taken > 0);
}

/// A TCP connection's bytes, from `tcp_info`: 100,000 bytes sent one way
/// and a 3-byte reply the other, as the kernel counts them. The reply carries the acknowledgement of
/// every byte before it, so once the client has read it the counts are
/// exact.
#[test]
fn a_tcp_connections_bytes_are_its_tcp_info() {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let sent = vec![7u8; 100_000];
    client.write_all(&sent).unwrap();
    let mut got = vec![0u8; sent.len()];
    server.read_exact(&mut got).unwrap();
    server.write_all(b"ok\n").unwrap();
    let mut reply = [0u8; 3];
    client.read_exact(&mut reply).unwrap();

    let snap = Snapshot::take(Path::new("/proc")).unwrap();
    let find = |local: SocketAddr, state: State| {
        snap.connections
            .iter()
            .find(|c| {
                c.socket.local == local
                    && c.socket.protocol == Protocol::Tcp
                    && c.socket.state == Some(state)
            })
            .unwrap_or_else(|| panic!("no socket at {local}"))
            .socket
            .clone()
    };
    let (c, s) = (
        find(client.local_addr().unwrap(), State::Established),
        find(server.local_addr().unwrap(), State::Established),
    );
    // The kernel counts the connecting side's SYN as one byte acked (as
    // `ss -i` shows: `bytes_acked:1` on a new connection).
    assert_eq!(c.bytes_acked, Some(100_001), "{c:?}");
    assert_eq!(c.bytes_received, Some(3), "{c:?}");
    assert_eq!(s.bytes_received, Some(100_000), "{s:?}");
    // The client's acknowledgement of the reply may be delayed.
    assert!(s.bytes_acked.is_some_and(|n| n <= 3), "{s:?}");
    let l = find(listener.local_addr().unwrap(), State::Listen);
    assert_eq!(
        l.bytes_acked,
        Some(0),
        "a listener has a tcp_info too: {l:?}"
    );
}
