//! netmond's eBPF tier on this kernel: the program loads, a loopback TCP
//! connection that lives about a millisecond is seen with the pid of the
//! process that connected, the listener with the listener's pid, and the
//! kernel's counters balance. As root (CI runs as root); otherwise each test
//! says why it skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use collector_core::testing::{check_source, ConformanceConfig, Running};
use collector_core::{
    CaptureTier, ConnectionChange, ConnectionDirection, ConnectionState, EventKind,
};
use netmond::ebpf::{
    AcceptHook, Delivery, EbpfConfig, EbpfCounters, NetTier, RecordKind, StateRecord,
};
use netmond::source::{NetmondConfig, NetmondCounters, TierChoice};
use tokio::sync::mpsc;

/// How long a test waits for an event the kernel owes it.
const LIMIT: Duration = Duration::from_secs(30);

fn root_or_skip(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: {what} needs root (CAP_BPF and CAP_PERFMON to load the program)");
    false
}

/// Stops `reader` (it reads what the ring buffer still holds) and returns
/// its books, checked to balance: `produced = delivered + dropped`.
async fn stopped(reader: netmond::ebpf::NetReader) -> netmond::ebpf::KernelAccounting {
    let books = tokio::task::spawn_blocking(move || reader.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(books.balanced(), "{books:?}");
    books
}

/// netmond's source on the eBPF tier with `accept_hook`, started, once the
/// snapshot's first look is in (the tier is up): its stats and the runtime.
async fn started(accept_hook: AcceptHook) -> (netmond::source::NetmondStats, Running) {
    let config = NetmondConfig {
        interval: Duration::from_secs(3600),
        tier: TierChoice::Ebpf,
        accept_hook,
        ..NetmondConfig::default()
    };
    let source = netmond::source::source(&config, NetmondCounters::default()).unwrap();
    let stats = source.stats();
    let mut running = Running::start(Box::new(source)).unwrap();
    running
        .wait_for(LIMIT, |e| matches!(e, collector_core::CollectionEvent::Network(n) if n.tier == Some(CaptureTier::Polling)))
        .await
        .expect("the first snapshot");
    (stats, running)
}

/// Another process (bash) connects to `port` on loopback, writes a byte
/// and closes: a connection of about a millisecond.
fn connect_once(port: u16) -> std::process::Child {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; printf x >&3; exec 3>&-"
        ))
        .spawn()
        .unwrap()
}

/// The reader's records, one at a time.
struct Records {
    rx: mpsc::Receiver<Delivery<StateRecord>>,
    pending: std::collections::VecDeque<StateRecord>,
}

impl Records {
    /// `tier`'s reader started: its records, its counters and the reader.
    fn read(tier: NetTier) -> (Self, EbpfCounters, netmond::ebpf::NetReader) {
        let (tx, rx) = mpsc::channel(1024);
        let counters = EbpfCounters::default();
        let reader = tier.spawn_reader(tx, counters.clone()).unwrap();
        let records = Self {
            rx,
            pending: std::collections::VecDeque::new(),
        };
        (records, counters, reader)
    }
}

impl Records {
    /// Awaits the next record `want` accepts (30 s at most), skipping the
    /// others (this host's other connections).
    async fn first(&mut self, what: &str, want: impl Fn(&StateRecord) -> bool) -> StateRecord {
        let wait = async {
            loop {
                while let Some(r) = self.pending.pop_front() {
                    if want(&r) {
                        return r;
                    }
                }
                match self.rx.recv().await.expect("the reader ended") {
                    Delivery::Records(batch) => self.pending.extend(batch),
                    Delivery::Dropped(n) => panic!("the kernel dropped {n} records"),
                }
            }
        };
        tokio::time::timeout(LIMIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} record within {LIMIT:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_connection_is_seen_with_the_connecting_pid_and_the_books_balance() {
    if !root_or_skip("the eBPF tier test") {
        return;
    }
    let tier = NetTier::load(&EbpfConfig::default()).expect("the eBPF tier loads here");
    let (mut rx, counters, reader) = Records::read(tier);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let listen = rx
        .first("listen", |r| {
            r.new_state == Some(ConnectionState::Listen) && r.local.port() == port
        })
        .await;
    assert_eq!(listen.old_state, Some(ConnectionState::Close));
    let task = listen.task.as_ref().expect("listen() runs in the listener");
    assert_eq!(task.tgid, me, "{listen:?}");
    assert_ne!(listen.cookie, 0);
    assert_ne!(listen.netns, 0);
    assert_ne!(listen.inode, 0, "a listener has its file");

    let mut child = connect_once(port);
    let connector = child.id();
    let syn = rx
        .first("SYN_SENT", |r| {
            r.new_state == Some(ConnectionState::SynSent) && r.remote.port() == port
        })
        .await;
    assert_eq!(
        syn.task.as_ref().map(|t| t.tgid),
        Some(connector),
        "connect() runs in the connecting process: {syn:?}"
    );
    // Its port is picked after SYN_SENT: the handshake's end names it.
    let established = rx
        .first("ESTABLISHED", |r| {
            r.old_state == Some(ConnectionState::SynSent) && r.cookie == syn.cookie
        })
        .await;
    assert_eq!(established.new_state, Some(ConnectionState::Established));
    assert_eq!(established.local.ip(), std::net::Ipv4Addr::LOCALHOST);
    let client_port = established.local.port();
    assert_ne!(client_port, 0);
    // The accepted end completes its handshake in softirq: no task.
    let accepted = rx
        .first("accepted", |r| {
            r.old_state == Some(ConnectionState::SynRecv)
                && r.new_state == Some(ConnectionState::Established)
                && r.local.port() == port
                && r.remote.port() == client_port
        })
        .await;
    assert!(accepted.task.is_none(), "{accepted:?}");
    // The client's end closes, by the same socket (cookie).
    let closed = rx
        .first("close", |r| {
            r.new_state == Some(ConnectionState::Close) && r.cookie == syn.cookie
        })
        .await;
    assert_eq!(closed.skaddr, syn.skaddr);
    assert!(child.wait().unwrap().success());
    drop(listener);

    let books = stopped(reader).await;
    assert!(books.produced >= 4, "{books:?}");
    assert_eq!(counters.decode_errors(), 0);
}

/// A python3 process that listens on loopback, then forks: the child
/// accepts one connection and reads a byte, the parent only waits.
/// Returns the process and (port, listener's pid, acceptor's pid), read
/// from its first line.
fn fork_after_listen() -> (std::process::Child, (u16, u32, u32)) {
    use std::io::BufRead as _;
    let script = r"
import os, socket
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(8)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, b'.')
    c, _ = s.accept()
    c.recv(1)
    c.close()
    os._exit(0)
os.read(r, 1)
print(s.getsockname()[1], os.getpid(), pid, flush=True)
os.waitpid(pid, 0)
";
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut words = line.split_whitespace().map(|w| w.parse::<u32>().unwrap());
    let (port, listener, acceptor) = (
        u16::try_from(words.next().unwrap()).unwrap(),
        words.next().unwrap(),
        words.next().unwrap(),
    );
    (child, (port, listener, acceptor))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_is_recorded_with_the_accepting_process_not_the_listeners() {
    if !root_or_skip("the accept record test") {
        return;
    }
    let tier = NetTier::load_with(&EbpfConfig::default(), AcceptHook::RawSyscalls)
        .expect("the eBPF tier loads here");
    let (mut rx, counters, reader) = Records::read(tier);

    let (mut server, (port, listener, acceptor)) = fork_after_listen();
    assert_ne!(listener, acceptor);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    std::io::Write::write_all(&mut client, b"x").unwrap();
    let established = rx
        .first("the accepted end's ESTABLISHED", |r| {
            r.kind == RecordKind::StateChange
                && r.old_state == Some(ConnectionState::SynRecv)
                && r.local.port() == port
                && r.remote.port() == client_port
        })
        .await;
    let accepted = rx
        .first("accepted", |r| {
            r.kind == RecordKind::Accepted && r.cookie == established.cookie
        })
        .await;
    let task = accepted
        .task
        .as_ref()
        .expect("accept() runs in the acceptor");
    assert_eq!(task.tgid, acceptor, "{accepted:?}");
    assert_eq!(
        (accepted.local.port(), accepted.remote.port()),
        (port, client_port)
    );
    assert_eq!((accepted.old_state, accepted.new_state), (None, None));
    assert_ne!(accepted.inode, 0, "the accepted socket has its file");
    assert!(server.wait().unwrap().success());
    drop(client);

    stopped(reader).await;
    assert_eq!(counters.decode_errors(), 0);
}

/// Set in the copy of this test binary that runs inside its own mount
/// namespace, tracefs mounted.
const IN_MOUNT_NS: &str = "NETMOND_TEST_TRACEFS_MOUNTED";

/// `accept()`'s syscall tracepoints ([`AcceptHook::Tracepoints`]) need
/// tracefs, which this test host may not mount: the test runs itself
/// again in a private mount namespace with tracefs mounted (the host's
/// mounts untouched), and there checks the accept record's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_syscall_tracepoint_hook_records_the_accepting_process() {
    if !root_or_skip("the syscall tracepoint test") {
        return;
    }
    if std::env::var_os(IN_MOUNT_NS).is_none() {
        let me = std::env::current_exe().unwrap();
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            // Mounted again only where the host has not (perf mounts it).
            .arg(
                "{ grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts \
                 || mount -t tracefs tracefs /sys/kernel/tracing; } && exec \"$0\" \"$@\"",
            )
            .arg(me)
            .args([
                "--exact",
                "the_syscall_tracepoint_hook_records_the_accepting_process",
                "--nocapture",
            ])
            .env(IN_MOUNT_NS, "1")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the test in its mount namespace: {status}"
        );
        return;
    }
    let tier = NetTier::load_with(&EbpfConfig::default(), AcceptHook::Tracepoints)
        .expect("the tier loads with the syscall tracepoints");
    assert_eq!(tier.accept_hook(), AcceptHook::Tracepoints);
    let (mut rx, _, reader) = Records::read(tier);
    let (mut server, (port, _, acceptor)) = fork_after_listen();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    std::io::Write::write_all(&mut client, b"x").unwrap();
    let accepted = rx
        .first("accepted", |r| {
            r.kind == RecordKind::Accepted && r.remote.port() == client_port
        })
        .await;
    assert_eq!(accepted.task.as_ref().map(|t| t.tgid), Some(acceptor));
    assert_ne!(accepted.cookie, 0);
    assert!(server.wait().unwrap().success());
    drop(client);
    stopped(reader).await;
}

#[test]
fn the_kernel_counters_read_and_a_bad_ring_size_is_refused() {
    if !root_or_skip("reading the kernel's counters") {
        return;
    }
    let tier = NetTier::load(&EbpfConfig::default()).unwrap();
    let (produced, dropped) = tier.kernel_counts().unwrap();
    assert!(dropped <= produced);
    let err = NetTier::load(&EbpfConfig {
        ring_buffer_bytes: 1000,
        ..EbpfConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, netmond::ebpf::EbpfError::Config { .. }),
        "{err}"
    );
}

fn network(e: &collector_core::CollectionEvent) -> Option<&collector_core::NetworkEvent> {
    match e {
        collector_core::CollectionEvent::Network(n) if n.tier == Some(CaptureTier::Ebpf) => Some(n),
        _ => None,
    }
}

/// The source on the eBPF tier, through the runtime: the listen with the
/// listener's pid, a connection of about 1 ms opened with the connecting
/// process's pid and key and closed, its other end (never accepted) named
/// for the listener's holder once `ACCEPT_WAIT` is over; the snapshot
/// beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_sees_a_one_millisecond_connection_with_its_processes() {
    if !root_or_skip("the eBPF source test") {
        return;
    }
    let (stats, mut running) = started(AcceptHook::Off).await;
    assert_eq!(stats.tier(), Some(CaptureTier::Ebpf));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let listen = running
        .wait_for(LIMIT, |e| {
            network(e).is_some_and(|n| {
                n.direction == Some(ConnectionDirection::Listen) && n.source_port == Some(port)
            })
        })
        .await
        .expect("the listen event");
    let listen = network(&listen).unwrap();
    assert_eq!(listen.pid, Some(me));
    assert_eq!(listen.process_key.map(|k| k.pid), Some(me));
    assert_eq!(listen.change, Some(ConnectionChange::Opened));

    let mut child = connect_once(port);
    let connector = child.id();
    let outbound = running
        .wait_for(LIMIT, |e| {
            network(e).is_some_and(|n| {
                n.direction == Some(ConnectionDirection::Outbound) && n.dest_port == Some(port)
            })
        })
        .await
        .expect("the outbound connection");
    let outbound = network(&outbound).unwrap().clone();
    assert!(child.wait().unwrap().success());
    assert_eq!(outbound.pid, Some(connector), "{outbound:?}");
    let key = outbound.process_key.expect("the connecting process's key");
    assert_eq!(key.pid, connector);
    assert_eq!(outbound.change, Some(ConnectionChange::Opened));
    assert_eq!(outbound.state, Some(ConnectionState::Established));
    assert!(collector_core::CollectionEvent::Network(outbound.clone())
        .validate()
        .is_ok());
    let client_port = outbound.source_port.expect("its port");
    // The close and the other end, never accepted (named for the
    // listener's holder: at once without an accept hook, after
    // ACCEPT_WAIT with one), in whichever order they come.
    let (mut closed, mut inbound) = (None, None);
    running
        .wait_for(LIMIT, |e| {
            if let Some(n) = network(e) {
                if n.change == Some(ConnectionChange::Closed)
                    && n.connection_id == outbound.connection_id
                {
                    closed = Some(n.clone());
                }
                if n.direction == Some(ConnectionDirection::Inbound)
                    && n.dest_port == Some(client_port)
                {
                    inbound = Some(n.clone());
                }
            }
            closed.is_some() && inbound.is_some()
        })
        .await
        .expect("the close and the accepted end");
    let closed = closed.unwrap();
    assert_eq!(
        (closed.pid, closed.source_port),
        (Some(connector), Some(client_port))
    );
    assert_eq!(inbound.unwrap().pid, Some(me), "the listener's holder");
    drop(listener);
    running.stop().await.unwrap();
    assert_eq!(stats.kernel_accounting().dropped, 0);
    assert!(stats.realtime_events() >= 4);
}

/// The source names an accepted connection for the process that accepted
/// it, a child forked after `listen()`, not for the listener's creator;
/// the kernel's books balance over both record kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_names_an_inbound_connection_for_its_acceptor() {
    if !root_or_skip("the eBPF source's accept test") {
        return;
    }
    // This host mounts no tracefs: the hook that needs none.
    let (stats, mut running) = started(AcceptHook::RawSyscalls).await;

    let (mut server, (port, listener, acceptor)) = fork_after_listen();
    assert_ne!(listener, acceptor);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    std::io::Write::write_all(&mut client, b"x").unwrap();
    let inbound = running
        .wait_for(LIMIT, |e| {
            network(e).is_some_and(|n| {
                n.direction == Some(ConnectionDirection::Inbound)
                    && n.change == Some(ConnectionChange::Opened)
                    && n.dest_port == Some(client_port)
            })
        })
        .await
        .expect("the accepted end");
    let inbound = network(&inbound).unwrap().clone();
    assert_eq!(
        inbound.pid,
        Some(acceptor),
        "the acceptor (the listener is {listener}): {inbound:?}"
    );
    assert_eq!(inbound.process_key.map(|k| k.pid), Some(acceptor));
    assert!(inbound.inode.is_some(), "{inbound:?}");
    assert!(collector_core::CollectionEvent::Network(inbound.clone())
        .validate()
        .is_ok());
    assert!(server.wait().unwrap().success());
    drop(client);
    running.stop().await.unwrap();
    let books = stats.kernel_accounting();
    assert!(books.balanced(), "{books:?}");
    assert_eq!(books.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ebpf_source_passes_the_conformance_kit() {
    if !root_or_skip("the eBPF source's conformance") {
        return;
    }
    let _listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = NetmondConfig {
        interval: Duration::from_millis(200),
        tier: TierChoice::Ebpf,
        ..NetmondConfig::default()
    };
    let source = netmond::source::source(&config, NetmondCounters::default()).unwrap();
    let stats = source.stats();
    let kit = ConformanceConfig::wanting(1, Duration::from_secs(3));
    let report = check_source(Arc::new(source), &kit).await.unwrap();
    assert_eq!(report.kinds(), [EventKind::Network]);
    assert_eq!(stats.tier(), Some(CaptureTier::Ebpf));
}

/// Makes `n` loopback connections from this process, each closed at once.
fn connections(n: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    for _ in 0..n {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop((client, server));
    }
}

/// A one-page ring buffer and nobody reading it while 50 connections come
/// and go (some 500 records, room for 34): the kernel drops, counts each
/// drop, and the books still balance exactly once the reader has read what
/// was kept. Started on that tier, the source reports the loss in health
/// once, then is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_buffer_is_counted_exactly_and_degrades_health_once() {
    if !root_or_skip("the eBPF drop test") {
        return;
    }
    let small = EbpfConfig {
        ring_buffer_bytes: u32::try_from(rustix::param::page_size()).unwrap(),
        ..EbpfConfig::default()
    };
    // With an accept hook: the 50 accepts' records share the ring buffer
    // and the books with the state changes'.
    let tier = NetTier::load_with(&small, AcceptHook::RawSyscalls).unwrap();
    connections(50);
    let (tx, mut rx) = mpsc::channel(1024);
    let counters = EbpfCounters::default();
    let reader = tier.spawn_reader(tx, counters.clone()).unwrap();
    let mut dropped = 0;
    while dropped == 0 {
        match tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Delivery::Dropped(n) => dropped = n,
            Delivery::Records(_) => {}
        }
    }
    drop(rx);
    let books = stopped(reader).await;
    assert!(books.dropped >= dropped && books.delivered > 0, "{books:?}");
    // A sanity bound: each of the 50 connections makes 3 state changes of
    // the client's end, 2 of the server's and an accept at least.
    assert!(books.produced >= 50 * 6, "{books:?}");

    // The source, on a preloaded tier that overflowed before it started.
    let tier = NetTier::load(&small).unwrap();
    connections(50);
    let config = NetmondConfig {
        interval: Duration::from_secs(3600),
        tier: TierChoice::Ebpf,
        ebpf: small,
        ..NetmondConfig::default()
    };
    let source = Arc::new(
        netmond::source::source(&config, NetmondCounters::default())
            .unwrap()
            .with_ebpf_tier(tier),
    );
    let stats = source.stats();
    let (tx, mut events) = mpsc::channel(4096);
    let ctx = collector_core::SourceContext::new("netmond", tx);
    let stop = ctx.shutdown().clone();
    let run = tokio::spawn({
        let source = source.clone();
        async move { collector_core::EventSource::start_with(&*source, ctx).await }
    });
    // A counter, not an event: what the source sends meanwhile is taken.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while stats.kernel_accounting().dropped == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no loss read");
        let _ = tokio::time::timeout(Duration::from_millis(10), events.recv()).await;
    }
    let health = collector_core::EventSource::health_check(&*source).await;
    let err = health.expect_err("degraded after a loss");
    assert!(err.to_string().contains("dropped"), "{err}");
    assert!(collector_core::EventSource::health_check(&*source)
        .await
        .is_ok());
    stop.cancel();
    drop(events);
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_connection_carries_its_ipv6_addresses() {
    if !root_or_skip("the eBPF IPv6 test") {
        return;
    }
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    let tier = NetTier::load(&EbpfConfig::default()).unwrap();
    let (mut rx, _, reader) = Records::read(tier);
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let est = rx
        .first("IPv6 ESTABLISHED", |r| {
            r.old_state == Some(ConnectionState::SynSent) && r.remote.port() == port
        })
        .await;
    assert_eq!(est.family, collector_core::AddressFamily::Ipv6);
    assert_eq!(
        est.local,
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, client_port))
    );
    assert_eq!(est.remote.ip(), std::net::Ipv6Addr::LOCALHOST);
    drop((client, listener));
    drop(rx);
    stopped(reader).await;
}

/// A connect made in a network namespace of its own (`unshare -n`) is seen
/// without entering it, naming that namespace and the connecting pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_in_another_network_namespace_is_seen_with_its_namespace() {
    if !root_or_skip("the eBPF namespace test") {
        return;
    }
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let tier = NetTier::load(&EbpfConfig::default()).unwrap();
    let (mut rx, _, reader) = Records::read(tier);
    // Nothing listens there: the connect is refused, after its SYN_SENT.
    let Ok(mut child) = Command::new("unshare")
        .args(["-n", "bash", "-c"])
        .arg("ip link set lo up && exec 3<>/dev/tcp/127.0.0.1/9; exit 0")
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("skipped: no unshare here");
        return;
    };
    let shell = child.id();
    let syn = rx
        .first("SYN_SENT in the namespace", |r| {
            r.new_state == Some(ConnectionState::SynSent)
                && r.remote.port() == 9
                && r.task.as_ref().is_some_and(|t| t.tgid == shell)
        })
        .await;
    assert!(child.wait().unwrap().success());
    let theirs = format!("net:[{}]", syn.netns);
    assert_ne!(std::path::PathBuf::from(theirs), own, "{syn:?}");
    drop(rx);
    stopped(reader).await;
}

/// Set in the copy of this test binary run without `CAP_BPF`,
/// `CAP_PERFMON` and `CAP_SYS_ADMIN`.
const WITHOUT_BPF: &str = "NETMOND_TEST_WITHOUT_BPF";

/// `auto` that fell back to snapshots claims no real time. As root the
/// test runs itself again with the capabilities loading takes dropped
/// (`setpriv`), so the program cannot load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_fallen_back_to_snapshots_claims_no_real_time() {
    use collector_core::{EventSource as _, SourceCaps};
    if rustix::process::geteuid().is_root() && std::env::var_os(WITHOUT_BPF).is_none() {
        let status = Command::new("setpriv")
            .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "auto_fallen_back_to_snapshots_claims_no_real_time",
                "--nocapture",
            ])
            .env(WITHOUT_BPF, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the test without CAP_BPF: {status}");
        return;
    }
    let config = NetmondConfig {
        interval: Duration::from_secs(3600),
        tier: TierChoice::Auto,
        ..NetmondConfig::default()
    };
    let source = netmond::source::source(&config, NetmondCounters::default()).unwrap();
    let stats = source.stats();
    let source = Arc::new(source);
    assert!(
        !source.capabilities().contains(SourceCaps::REALTIME),
        "auto, not started, nothing preloaded: nothing certain"
    );
    let mut running = Running::start(Box::new(ArcSource(source.clone()))).unwrap();
    running
        .wait_for(LIMIT, |e| {
            matches!(e, collector_core::CollectionEvent::Network(_))
        })
        .await
        .expect("the first snapshot");
    assert_eq!(stats.tier(), Some(CaptureTier::Polling));
    let caps = source.capabilities();
    assert!(!caps.contains(SourceCaps::REALTIME), "{caps:?}");
    assert!(!caps.contains(SourceCaps::KERNEL_LEVEL), "{caps:?}");
    assert!(caps.contains(SourceCaps::NETWORK | SourceCaps::SYSTEM_WIDE));
    running.stop().await.unwrap();
}

/// A shared source as the runtime's boxed one, so the test can ask it
/// after it started.
struct ArcSource(Arc<netmond::source::NetmondSource>);

#[async_trait::async_trait]
impl collector_core::EventSource for ArcSource {
    async fn start_with(&self, ctx: collector_core::SourceContext) -> anyhow::Result<()> {
        self.0.start_with(ctx).await
    }

    async fn start(
        &self,
        tx: collector_core::source::EventSender,
        flag: collector_core::source::ShutdownFlag,
    ) -> anyhow::Result<()> {
        self.0.start(tx, flag).await
    }

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn capabilities(&self) -> collector_core::SourceCaps {
        self.0.capabilities()
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.0.stop().await
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        self.0.health_check().await
    }
}
