//! `net`: a netmond snapshot (every TCP and UDP socket from `sock_diag`, with
//! the processes that hold them) against `ss -tanp` in the same run, over
//! loopback connections the bench opens so the table is not trivially
//! small. Both sides are alternated, `--reps` times each. `snapshot_ms` is
//! a running collector's (the socket -> process map kept between
//! snapshots), `cold_snapshot_ms` a first look's (`/proc` walked).
//!
//! `net.capture_ratio`: netmond's eBPF tier running in this process (as
//! root), `--connections` short loopback connections made one after
//! another as fast as the machine allows (connect, write a byte, close),
//! and the share of them it reported opened (outbound, by the client's
//! port), every loss counted: the kernel's ring buffer drops
//! (`net.capture_kernel_dropped`), the runtime's subscriber drops, the
//! tracker's overflow. Target 1.0000.
//!
//! `net.idle.*`, measured first (before the bench's own sockets): the
//! release `netmond run` on its defaults (the eBPF tier as root, a
//! snapshot every 5 s) for `--idle-secs`, after 5 s to start: its share
//! of a core and its RSS.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{bail, Context as _};
use collector_core::testing::{recv_until, Running};
use collector_core::{CaptureTier, CollectionEvent, ConnectionChange, ConnectionDirection};
use netmond::source::{NetmondConfig, NetmondCounters, TierChoice};
use netmond::{Snapshot, Snapshotter};

use crate::{median, report, report_f, report_ratio};

options! {
    /// Sockets to open (half connections' client ends, half accepted ends).
    sockets: usize = 10_000,
    /// Repetitions of each side.
    reps: usize = 7,
    /// Short connections made for `net.capture_ratio`.
    connections: usize = 10_000,
    /// Seconds the release `netmond run` is measured idle (`net.idle.*`).
    idle_secs: u64 = 30,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    // First, the host as it is: the sockets this bench opens (and the
    // capture's 10,000 in TIME_WAIT for a minute after) would be in every
    // snapshot. The release netmond on its defaults (eBPF tier as root, a
    // snapshot every 5 s); its start is not idle.
    crate::idle::Idle::collector("netmond", Duration::from_secs(5), o.idle_secs)?
        .report("net.idle");
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(o.sockets);
    for _ in 0..o.sockets / 2 {
        let client =
            TcpStream::connect(addr).context("connecting (is RLIMIT_NOFILE high enough?)")?;
        let (server, _) = listener.accept()?;
        held.push(client);
        held.push(server);
    }
    let (mut warm, mut cold, mut ss, mut dump, mut owners) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = 0;
    let mut snapshotter = Snapshotter::new(Path::new("/proc"));
    snapshotter.take()?;
    for _ in 0..o.reps {
        // What a running netmond pays each interval: the dump, and the
        // socket -> process map kept from the last walk.
        let start = Instant::now();
        let snapshot = snapshotter.take()?;
        warm.push(start.elapsed().as_secs_f64() * 1e3);
        seen = snapshot.connections.len();

        // What a first look pays (`netmond snapshot`): the dump and a walk.
        let start = Instant::now();
        Snapshot::take(Path::new("/proc"))?;
        cold.push(start.elapsed().as_secs_f64() * 1e3);

        // The two halves apart: the kernel's dump and the /proc walk.
        let start = Instant::now();
        netmond::diag::dump()?;
        dump.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        netmond::OwnerMap::scan(Path::new("/proc"))?;
        owners.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        let status = Command::new("ss")
            .arg("-tanp")
            .stdout(Stdio::null())
            .status()
            .context("running ss (iproute2)")?;
        ss.push(start.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            bail!("ss -tanp failed: {status}");
        }
    }
    if seen < held.len() {
        bail!(
            "the snapshot saw {seen} sockets, fewer than the {} opened",
            held.len()
        );
    }
    let (warm, cold, ss) = (median(warm), median(cold), median(ss));
    report("net.sockets", seen, "count");
    report("net.proc_walks", snapshotter.walks(), "count");
    report_f("net.snapshot_ms", warm, 2, "ms");
    report_f("net.cold_snapshot_ms", cold, 2, "ms");
    report_f("net.ss_tanp_ms", ss, 2, "ms");
    report_f("net.dump_ms", median(dump), 2, "ms");
    report_f("net.owners_ms", median(owners), 2, "ms");
    report_ratio("net.snapshot_ratio_vs_ss", warm / ss);
    report_ratio("net.cold_snapshot_ratio_vs_ss", cold / ss);
    drop(held);
    if nix::unistd::geteuid().is_root() {
        capture(o.connections)?;
    } else {
        eprintln!("note: not root: net.capture_ratio skipped (loading the eBPF tier needs CAP_BPF and CAP_PERFMON)");
    }
    Ok(())
}

/// Makes `n` short loopback connections to `listener` one after another
/// (connect, write a byte, close; a thread accepts and closes); returns how
/// many were made.
fn connect_flat_out(listener: TcpListener, n: usize) -> anyhow::Result<usize> {
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            let mut byte = [0u8; 1];
            let _ = s.read(&mut byte);
        }
        Ok(())
    });
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).context("connecting")?;
        c.write_all(b"x")?;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;
    Ok(n)
}

/// `net.capture_ratio`: see the module docs.
fn capture(n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = NetmondConfig {
            interval: Duration::from_secs(3600),
            tier: TierChoice::Ebpf,
            ..NetmondConfig::default()
        };
        let source = netmond::source::source(&config, NetmondCounters::default())?;
        let stats = source.stats();
        let Running {
            handle,
            events: mut sub,
            run,
        } = crate::capture::flooded(Box::new(source))?;
        // Ready once the first snapshot is in (the program is attached by then).
        let first = recv_until(
            &mut sub,
            |e| matches!(e, CollectionEvent::Network(n) if n.tier == Some(CaptureTier::Polling)),
        );
        if first.await.is_none() {
            bail!("netmond ended before its first snapshot");
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
        let port = listener.local_addr()?.port();
        // The connections seen, by socket cookie, published as they grow.
        let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
        let counter = tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Some(batch) = sub.recv_batch().await {
                for e in batch.iter() {
                    if let CollectionEvent::Network(c) = e {
                        if c.tier == Some(CaptureTier::Ebpf)
                            && c.change == Some(ConnectionChange::Opened)
                            && c.direction == Some(ConnectionDirection::Outbound)
                            && c.dest_port == Some(port)
                        {
                            seen.insert(c.connection_id);
                        }
                    }
                }
                seen_tx.send_replace(seen.len());
            }
            (seen.len(), sub.stats())
        });
        let start = Instant::now();
        let made = tokio::task::spawn_blocking(move || connect_flat_out(listener, n)).await??;
        let secs = start.elapsed().as_secs_f64();
        // Let netmond catch up: every connection seen, or none more for 2 s.
        while *seen_rx.borrow_and_update() < made {
            let more = tokio::time::timeout(Duration::from_secs(2), seen_rx.changed()).await;
            if !matches!(more, Ok(Ok(()))) {
                break;
            }
        }
        handle.shutdown();
        run.await??;
        let (got, sub_stats) = counter.await?;
        let books = stats.kernel_accounting();
        report("net.capture_connections", made, "connections");
        report_f(
            "net.capture_rate",
            made as f64 / secs.max(1e-9),
            0,
            "connections/s",
        );
        report("net.capture_seen", got, "connections");
        report_f(
            "net.capture_ratio",
            got as f64 / made.max(1) as f64,
            4,
            "ratio",
        );
        report("net.capture_kernel_produced", books.produced, "records");
        report("net.capture_kernel_dropped", books.dropped, "records");
        report(
            "net.capture_subscriber_dropped",
            sub_stats.events_dropped_full + sub_stats.events_dropped_closed,
            "events",
        );
        Ok(())
    })
}
