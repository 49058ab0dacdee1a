//! `idle`: what procmond costs on a quiet machine. Runs the release
//! `procmond` binary (next to this one) for a while and reads its CPU time
//! and RSS from /proc.

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

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let bin = crate::overhead::sibling("procmond")?;
    let dir = std::env::temp_dir().join(format!("daemoneye-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(&bin)
        .args(["run", "--database"])
        .arg(dir.join("idle.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting procmond")?;
    let mut child = Reaped(child);
    let pid = child.0.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (t1, t0, rss, elapsed) = rt.block_on(async {
        // Start-up (first snapshot, hashing every running binary once) is not idle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (t0, _) = crate::overhead::tree_usage(pid)?;
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(o.secs)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let (t1, rss) = crate::overhead::tree_usage(pid)?;
        anyhow::Ok((t1, t0, rss, elapsed))
    })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = child.0.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    let cpu = (t1 - t0) as f64 * crate::overhead::tick_us() / 1e6 / elapsed * 100.0;
    report(
        "idle.cpu_percent",
        format!("{cpu:.3}"),
        "percent_of_one_core",
    );
    report("idle.rss_bytes", rss, "bytes");
    report("idle.clean_exit", u8::from(status.success()), "bool");
    Ok(())
}
