//! The agent with its built-in netmond, end to end, as root: `bash -i`
//! whose stdin and stdout are a TCP socket to a listener of the test (its
//! command line says nothing) raises the socket-stdio rule's alert through
//! the running agent, and the connection is stored, joinable to the
//! process that holds it. Skips (saying why) when not root.
// Blocking test around child processes: no tokio clock to pause.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use daemoneye_agent::store::AgentStore;

use crate::e2e::agent_counter as counter;
use crate::performance::{capabilities, Running};
use crate::privsep::wait_for;
use crate::Killed;

#[test]
#[allow(clippy::too_many_lines)] // one scenario, in order
fn a_shell_whose_stdin_is_a_socket_raises_the_reverse_shell_alert_end_to_end() {
    if !crate::root_or_skip("the end-to-end network test needs root (procmond and netmond)") {
        return;
    }
    // The listener first: netmond's first look has it, whatever else the
    // host has.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other @ std::net::SocketAddr::V6(_) => panic!("{other}"),
    };
    let running = Running::with_procmond_and("netmond", "");
    let data = &running.data;

    // Both collectors deliver: procmond's first snapshot and netmond's
    // first look are in.
    wait_for("both collectors delivering", || {
        (counter(data.path(), "collector.procmond.batches_received") > 0
            && counter(data.path(), "collector.netmond.batches_received") > 0)
            .then_some(())
    });
    // (Delivering, it has long exec'd: a child just forked would still
    // show the spawner's command line and capabilities.)
    let netmond = running.collectors_with("collect-network");
    assert_eq!(netmond.len(), 1, "{netmond:?}");
    let netmond = netmond[0];
    // netmond holds only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
    let two = (1 << 19) | (1 << 2);
    for set in ["CapEff:", "CapPrm:"] {
        assert_eq!(capabilities(netmond, set), Some(two), "{set} of netmond");
    }
    assert_eq!(capabilities(netmond, "CapInh:"), Some(0));
    // Health shows it, healthy, by the pid the spawner started.
    let report = crate::e2e::agent_health(data.path());
    let mine = report.components.iter().find(|c| c.pid == netmond);
    assert_eq!(
        mine.map(daemoneye_lib::proto::ComponentHealth::state),
        Some(daemoneye_lib::proto::HealthState::Healthy),
        "{report:#?}"
    );

    // The shell first, holding an unconnected socket as its stdin and
    // stdout (sock_diag does not list it yet); then the socket connected
    // through this process's descriptor of it: whenever netmond looks, the
    // shell already holds it.
    let socket: OwnedFd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    let shell = Killed(
        Command::new("bash")
            .arg("-i")
            .stdin(Stdio::from(socket.try_clone().unwrap()))
            .stdout(Stdio::from(socket.try_clone().unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let shell_pid = shell.0.id();
    // Whichever comes first to the agent, procmond's exec or netmond's look
    // at the socket, the alert follows (a connection waits for its holder).
    rustix::net::connect(&socket, &addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    drop(socket);
    // It is a shell: it runs what the listener sends.
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    server.write_all(b"echo reverse-$((6 * 7))\n").unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&said).contains("reverse-42") {
        let n = server.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the shell closed: {}",
            String::from_utf8_lossy(&said)
        );
        said.extend_from_slice(&buf[..n]);
    }

    let alert = running.alert_of("socket-stdio-shell");
    assert_eq!(alert["process"]["pid"], shell_pid, "{alert}");
    assert_eq!(alert["process"]["name"], "bash", "{alert}");
    drop(server);
    drop(shell);
    // A clean stop commits what the store was given.
    drop(running.agent);
    let store = AgentStore::open_read_only(data.path()).unwrap();
    let rows = store
        .query(&format!(
            "SELECT c.fd, c.direction, c.remote_port, p.name, c.bytes_sent, c.bytes_received \
             FROM connections c \
             JOIN process_events p ON p.pid = c.pid AND p.process_key = c.process_key \
             AND p.event_type = 'exec' \
             WHERE c.pid = {shell_pid} AND c.change = 'opened'"
        ))
        .unwrap();
    assert_eq!(rows.rows.len(), 1, "{:?}", rows.rows);
    assert_eq!(rows.rows[0][0], 0, "its stdin");
    assert_eq!(rows.rows[0][1], "outbound");
    assert_eq!(rows.rows[0][2], addr.port());
    assert_eq!(rows.rows[0][3], "bash");
    // Its bytes as the snapshot's tcp_info had them (at least the SYN).
    assert!(
        rows.rows[0][4].as_u64().is_some_and(|n| n >= 1),
        "{:?}",
        rows.rows
    );
    assert!(rows.rows[0][5].as_u64().is_some(), "{:?}", rows.rows);
    // netmond's eBPF tier saw the connect as it happened, by this process
    // (which connected the socket before the shell used it): netmond
    // loaded its program before keeping its two capabilities.
    let realtime = store
        .query(&format!(
            "SELECT c.pid, c.direction FROM connections c WHERE c.tier = 'ebpf' \
             AND c.change = 'opened' AND c.remote_port = {} AND c.direction = 'outbound'",
            addr.port()
        ))
        .unwrap();
    assert_eq!(realtime.rows.len(), 1, "{:?}", realtime.rows);
    assert_eq!(realtime.rows[0][0], std::process::id());
    // Once (the host's other shells on sockets, if any, are theirs).
    let alerted = store
        .query(&format!(
            "SELECT count(*) FROM alerts WHERE rule_id = 'socket-stdio-shell' AND pid = {shell_pid}"
        ))
        .unwrap();
    assert_eq!(alerted.rows[0][0], 1);
}
