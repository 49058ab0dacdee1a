//! `idle`: what procmond costs on a quiet machine. Runs the release
//! `procmond` binary (next to this one) for a while and reads its CPU time
//! and RSS from /proc. [`Idle::measure`] is the measurement, shared with
//! the `perf`, `net` and `fs` benches ([`Idle::collector`]: perfmond,
//! netmond and fsmond on their defaults).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::overhead::Reaped;
use crate::report;

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Seconds measured.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..))]
    pub(crate) secs: u64,
}

/// What a long-running program cost while measured.
pub(crate) struct Idle {
    /// Share of one core, in percent, of the program and its children.
    pub(crate) cpu_percent: f64,
    /// Their resident memory at the end, in bytes.
    pub(crate) rss_bytes: u64,
    /// Whether it exited with success on SIGTERM.
    pub(crate) clean_exit: bool,
}

impl Idle {
    /// The collector `name` (the release binary next to this one) measured
    /// as [`measure`](Self::measure) does: `run` serving no socket, its
    /// events written to /dev/null.
    pub(crate) fn collector(name: &str, warmup: Duration, secs: u64) -> anyhow::Result<Self> {
        Self::measure(
            &crate::overhead::sibling(name)?,
            ["run", "--no-socket", "--events-jsonl", "/dev/null"],
            warmup,
            secs,
        )
    }

    /// Starts `bin` with `args`, lets it settle for `warmup` (start-up is
    /// not idle), measures it for `secs`, then stops it with SIGTERM.
    pub(crate) fn measure<S: AsRef<OsStr>>(
        bin: &Path,
        args: impl IntoIterator<Item = S>,
        warmup: Duration,
        secs: u64,
    ) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = Reaped(child);
        let pid = child.0.id();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (t1, t0, rss_bytes, elapsed) = rt.block_on(async {
            tokio::time::sleep(warmup).await;
            let (t0, _) = crate::overhead::tree_usage(pid)?;
            let start = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let elapsed = start.elapsed().as_secs_f64();
            let (t1, rss) = crate::overhead::tree_usage(pid)?;
            anyhow::Ok((t1, t0, rss, elapsed))
        })?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = child.0.wait()?;
        let cpu_percent =
            t1.saturating_sub(t0) as f64 * crate::overhead::tick_us() / 1e6 / elapsed * 100.0;
        Ok(Self {
            cpu_percent,
            rss_bytes,
            clean_exit: status.success(),
        })
    }

    /// Prints the three figures under `prefix`.
    pub(crate) fn report(&self, prefix: &str) {
        report(
            &format!("{prefix}.cpu_percent"),
            format!("{:.3}", self.cpu_percent),
            "percent_of_one_core",
        );
        report(&format!("{prefix}.rss_bytes"), self.rss_bytes, "bytes");
        report(
            &format!("{prefix}.clean_exit"),
            u8::from(self.clean_exit),
            "bool",
        );
    }
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let bin = crate::overhead::sibling("procmond")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("idle.db");
    // Start-up (first snapshot, hashing every running binary once) is not idle.
    let idle = Idle::measure(
        &bin,
        [OsStr::new("run"), OsStr::new("--database"), db.as_os_str()],
        Duration::from_secs(3),
        o.secs,
    )?;
    idle.report("idle");
    Ok(())
}
