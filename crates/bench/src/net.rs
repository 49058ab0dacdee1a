//! `net`: a netmond snapshot (every TCP and UDP socket from `sock_diag`, with
//! the processes that hold them) against `ss -tanp` in the same run, over
//! loopback connections the bench opens so the table is not trivially
//! small. Both sides are alternated, `--reps` times each. `snapshot_ms` is
//! a running collector's (the socket -> process map kept between
//! snapshots), `cold_snapshot_ms` a first look's (`/proc` walked).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use tokio::time::Instant;

use anyhow::{bail, Context as _};
use netmond::{Snapshot, Snapshotter};

use crate::{median, report, report_f, report_ratio};

options! {
    /// Sockets to open (half connections' client ends, half accepted ends).
    sockets: usize = 10_000,
    /// Repetitions of each side.
    reps: usize = 7,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
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
    Ok(())
}
