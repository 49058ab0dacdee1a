//! `fs`: what fsmond sees and costs. As root, on `--dir`'s filesystem
//! (`/var/tmp`, the root filesystem here: what `/etc` is on):
//!
//! - `fs.capture_ratio`: of `--files` files created and written in a
//!   watched tree as fast as one thread can, the share fsmond reports (by
//!   fanotify, or by the rescan after a queue overflow); `fs.overflows` and
//!   `fs.missed` say where any shortfall went. fsmond runs in this process,
//!   hashing as the agent's does.
//! - `fs.workload_slowdown_percent`: an untar of a tree of `--tree-files`
//!   small files under a watched path, with the release `fsmond run`
//!   (beside this binary) watching it against without, alternated
//!   `--reps` times in one run (medians), and fsmond's CPU an untar
//!   (`fs.fsmond_cpu_ms_per_untar`). Each untar is into a directory of
//!   its own, after a `sync`: on this disk (ext4 mounted `discard`) an
//!   untar over the blocks of a tree just deleted waits for their
//!   discards, seconds more than the untar. On a disk the untar's time
//!   follows the write-back more than anything; `--dir /dev/shm` (tmpfs)
//!   measures the CPU alone.
//! - `fs.busy_elsewhere.cpu_percent`: the release `fsmond run` watching a
//!   directory while `--busy-rate` files a second are written in another
//!   one on the same filesystem for `--busy-secs` (what a busy root
//!   filesystem costs it: its marks cover the whole filesystem).
//! - `fs.idle.*`: the release `fsmond run` on its default watch list (the
//!   host's persistence paths) for `--idle-secs`, after its baseline.

use std::collections::HashSet;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use collector_core::testing::{poke_until, Poked};
use collector_core::{CollectionEvent, EventSource, SourceContext};
use fsmond::{FsmondConfig, FsmondCounters, FsmondSource};
use tokio::time::Instant;

use crate::idle::Idle;
use crate::overhead::Reaped;
use crate::{median, report, report_f, report_ratio};

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Files created and written in the capture test.
    #[arg(long, default_value_t = 20_000, value_parser = crate::positive::<usize>)]
    pub(crate) files: usize,
    /// Files in the tree the workload test untars.
    #[arg(long, default_value_t = 20_000, value_parser = crate::positive::<usize>)]
    pub(crate) tree_files: usize,
    /// Untars of each side, alternated.
    #[arg(long, default_value_t = 5, value_parser = crate::positive::<usize>)]
    pub(crate) reps: usize,
    /// Seconds fsmond is measured idle (0: not measured).
    #[arg(long, default_value_t = 60)]
    pub(crate) idle_secs: u64,
    /// Seconds fsmond is measured with writes elsewhere (0: not measured).
    #[arg(long, default_value_t = 20)]
    pub(crate) busy_secs: u64,
    /// Files written a second elsewhere on the filesystem meanwhile.
    #[arg(long, default_value_t = 2000, value_parser = crate::positive::<u64>)]
    pub(crate) busy_rate: u64,
    /// Where the watched trees are made (its filesystem is marked).
    #[arg(long, default_value = "/var/tmp")]
    pub(crate) dir: PathBuf,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("fs needs root: fanotify filesystem marks take CAP_SYS_ADMIN");
    }
    capture(o)?;
    workload(o)?;
    if o.busy_secs > 0 {
        busy_elsewhere(o)?;
    }
    if o.idle_secs > 0 {
        // The baseline (every watched file hashed, within the hasher's
        // 64 MiB/s) is not idle.
        Idle::collector("fsmond", Duration::from_secs(20), o.idle_secs)?.report("fs.idle");
    }
    Ok(())
}

/// `fs.capture_ratio` and where a shortfall went.
fn capture(o: &Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(&o.dir)?;
    let tree = std::fs::canonicalize(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let counters = FsmondCounters::default();
        let source = FsmondSource::new(
            FsmondConfig {
                watch: vec![tree.clone()],
                ..FsmondConfig::default()
            },
            counters.clone(),
        )?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 20);
        let ctx = SourceContext::new("fsmond", tx);
        let stop = ctx.shutdown().clone();
        let task = tokio::spawn(async move { source.start_with(ctx).await });
        ready(&tree, &mut rx).await?;
        let storm = tree.join("storm");
        std::fs::create_dir(&storm)?;
        let paths: Vec<PathBuf> = (0..o.files).map(|i| storm.join(format!("f{i}"))).collect();
        let mut wanted: HashSet<String> = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let start = Instant::now();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for p in &paths {
                std::fs::write(p, b"x")?;
            }
            Ok(())
        });
        let (mut by_fanotify, mut seen) = (0usize, 0usize);
        let deadline = tokio::time::sleep(Duration::from_secs(120));
        tokio::pin!(deadline);
        while !wanted.is_empty() {
            tokio::select! {
                () = &mut deadline => break,
                e = rx.recv() => match e {
                    Some(CollectionEvent::Filesystem(f)) => {
                        if wanted.remove(&f.path) {
                            seen += 1;
                            by_fanotify += usize::from(f.pid.is_some());
                        }
                    }
                    Some(_) => {}
                    None => bail!("fsmond ended: {:?}", task.await),
                },
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = match writer.join() {
            Ok(written) => {
                written?;
                o.files as f64 / elapsed
            }
            Err(_) => bail!("the writer panicked"),
        };
        stop.cancel();
        task.await??;
        let n = o.files as f64;
        report("fs.files", o.files, "count");
        report_f(
            "fs.seen_within_files_per_second",
            rate,
            0,
            "files_per_second",
        );
        report_f("fs.capture_ratio", seen as f64 / n, 4, "ratio");
        report_f("fs.fanotify_ratio", by_fanotify as f64 / n, 4, "ratio");
        report("fs.overflows", counters.overflows.get(), "count");
        report("fs.rescans", counters.rescans.get(), "count");
        report("fs.missed", wanted.len(), "count");
        anyhow::Ok(())
    })
}

/// Writes a probe into `tree` until `rx` has an event of it.
async fn ready(
    tree: &Path,
    rx: &mut tokio::sync::mpsc::Receiver<CollectionEvent>,
) -> anyhow::Result<()> {
    let probe = tree.join(".probe");
    let seen = probe.to_string_lossy().into_owned();
    let poked = poke_until(
        rx,
        100,
        Duration::from_millis(200),
        || std::fs::write(&probe, b"p"),
        |e| matches!(e, CollectionEvent::Filesystem(f) if f.path == seen),
    )
    .await?;
    match poked {
        Poked::Seen => Ok(std::fs::remove_file(&probe)?),
        Poked::Ended => bail!("fsmond ended before it saw anything"),
        _ => bail!("fsmond saw no probe within 20 s"),
    }
}

/// `fs.workload_slowdown_percent`: untars with and without the release
/// fsmond watching, alternated.
fn workload(o: &Options) -> anyhow::Result<()> {
    let bin = crate::overhead::sibling("fsmond")?;
    let dir = tempfile::tempdir_in(&o.dir)?;
    let base = std::fs::canonicalize(dir.path())?;
    // The tree: 100 directories of small files (a source tree's shape).
    let src = base.join("src");
    for i in 0..o.tree_files {
        let d = src.join(format!("d{}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d)?;
        }
        std::fs::write(
            d.join(format!("f{i}.c")),
            format!("int f{i}(void) {{ return {i}; }}\n").repeat(8),
        )?;
    }
    let tar = base.join("tree.tar");
    let made = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&base)
        .arg("src")
        .status()
        .context("running tar")?;
    if !made.success() {
        bail!("tar -cf failed: {made}");
    }
    std::fs::remove_dir_all(&src)?;
    let watched = base.join("watched");
    std::fs::create_dir(&watched)?;
    let events = Path::new("/dev/shm").join(format!("daemoneye-bench-fs-{}", std::process::id()));
    let (mut with, mut without, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut lines = 0;
    let mut run = 0;
    let mut next = || {
        run += 1;
        let into = watched.join(format!("run{run}"));
        std::fs::create_dir(&into).map(|()| into)
    };
    for _ in 0..o.reps {
        without.push(untar(&tar, &next()?)?);
        let mut fsmond = start_fsmond(&bin, &watched, &events)?;
        let (t0, _) = crate::overhead::tree_usage(fsmond.0.id())?;
        with.push(untar(&tar, &next()?)?);
        // What it still has to do once the untar is done is its cost too.
        std::thread::park_timeout(Duration::from_secs(1));
        let (t1, _) = crate::overhead::tree_usage(fsmond.0.id())?;
        cpu.push(t1.saturating_sub(t0) as f64 * crate::overhead::tick_us() / 1e3);
        crate::overhead::stop(&mut fsmond.0)?;
        lines = std::fs::read_to_string(&events)?.lines().count();
    }
    let _ = std::fs::remove_file(&events);
    let (with, without, cpu) = (median(with), median(without), median(cpu));
    report("fs.tree_files", o.tree_files, "count");
    report_f("fs.untar_ms", without, 1, "ms");
    report_f("fs.untar_watched_ms", with, 1, "ms");
    report_f(
        "fs.workload_slowdown_percent",
        (with / without - 1.0) * 100.0,
        1,
        "percent",
    );
    report_ratio("fs.untar_ratio_watched", with / without);
    report("fs.events_per_untar", lines, "count");
    report_f("fs.fsmond_cpu_ms_per_untar", cpu, 0, "ms");
    Ok(())
}

/// `fs.busy_elsewhere.cpu_percent`: the release fsmond watching one
/// directory while this process writes `--busy-rate` files a second (200
/// names, round robin) in another on the same filesystem.
fn busy_elsewhere(o: &Options) -> anyhow::Result<()> {
    let bin = crate::overhead::sibling("fsmond")?;
    let dir = tempfile::tempdir_in(&o.dir)?;
    let base = std::fs::canonicalize(dir.path())?;
    let (watched, busy) = (base.join("watched"), base.join("busy"));
    std::fs::create_dir(&watched)?;
    std::fs::create_dir(&busy)?;
    let events = Path::new("/dev/shm").join(format!("daemoneye-bench-fs-{}", std::process::id()));
    let mut fsmond = start_fsmond(&bin, &watched, &events)?;
    let pid = fsmond.0.id();
    let start = Instant::now();
    let (t0, _) = crate::overhead::tree_usage(pid)?;
    let total = Duration::from_secs(o.busy_secs);
    let mut written = 0u64;
    while start.elapsed() < total {
        let due = u64::try_from(start.elapsed().as_micros() * u128::from(o.busy_rate) / 1_000_000)
            .unwrap_or(u64::MAX);
        while written < due {
            std::fs::write(busy.join(format!("b{}", written % 200)), b"x")?;
            written += 1;
        }
        std::thread::park_timeout(Duration::from_millis(2));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (t1, rss) = crate::overhead::tree_usage(pid)?;
    crate::overhead::stop(&mut fsmond.0)?;
    let _ = std::fs::remove_file(&events);
    report_f(
        "fs.busy_elsewhere.writes_per_second",
        written as f64 / elapsed,
        0,
        "writes_per_second",
    );
    report(
        "fs.busy_elsewhere.cpu_percent",
        format!(
            "{:.3}",
            t1.saturating_sub(t0) as f64 * crate::overhead::tick_us() / 1e6 / elapsed * 100.0
        ),
        "percent_of_one_core",
    );
    report("fs.busy_elsewhere.rss_bytes", rss, "bytes");
    Ok(())
}

/// Writes back what is dirty (so that the last run's writes are not in
/// this one's time), then untars `tar` into the (new, empty) `into`;
/// milliseconds.
fn untar(tar: &Path, into: &Path) -> anyhow::Result<f64> {
    nix::unistd::sync();
    let start = Instant::now();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .status()
        .context("running tar")?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("tar -xf failed: {status}");
    }
    Ok(ms)
}

/// The release fsmond watching `dir` (hashing, as the agent's), its events
/// as JSON lines in `events`, once it has reported a probe there.
fn start_fsmond(bin: &Path, dir: &Path, events: &Path) -> anyhow::Result<Reaped> {
    let _ = std::fs::remove_file(events);
    let child = Command::new(bin)
        .arg("run")
        .arg("--no-socket")
        .arg("--watch")
        .arg(dir)
        .arg("--events-jsonl")
        .arg(events)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = Reaped(child);
    let probe = dir.join(".probe");
    let name = probe.to_string_lossy().into_owned();
    for _ in 0..200 {
        std::fs::write(&probe, b"p")?;
        std::thread::park_timeout(Duration::from_millis(100));
        if let Ok(f) = std::fs::File::open(events) {
            if std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains(&name))
            {
                std::fs::remove_file(&probe)?;
                return Ok(child);
            }
        }
    }
    bail!("fsmond reported no probe within 20 s")
}
