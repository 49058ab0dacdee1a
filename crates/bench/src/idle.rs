//! `idle`: what procmond costs on a quiet machine. Runs the release
//! `procmond` binary (next to this one) for a while and reads its CPU time
//! and RSS from /proc.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::report;

pub(crate) struct Options {
    secs: u64,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut o = Self { secs: 60 };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--secs" => o.secs = value.parse().context("--secs")?,
                other => bail!("unknown flag {other:?}"),
            }
        }
        if o.secs < 2 {
            bail!("--secs must be at least 2");
        }
        Ok(o)
    }
}

/// utime + stime (ticks) and `VmRSS` (bytes) of `pid`.
fn usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))?;
    let stat = procmond::procfs::parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok((stat.utime + stat.stime, rss_kib * 1024))
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("procmond");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build --release -p procmond)", bin.display());
    }
    let dir = std::env::temp_dir().join(format!("daemoneye-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(&bin)
        .args(["run", "--database"])
        .arg(dir.join("idle.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting procmond")?;
    let pid = child.id();
    // Start-up (first snapshot, hashing every running binary once) is not idle.
    std::thread::park_timeout(Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let (t0, _) = usage(pid)?;
    let start = tokio::time::Instant::now();
    rt.block_on(tokio::time::sleep(Duration::from_secs(o.secs)));
    let elapsed = start.elapsed().as_secs_f64();
    let (t1, rss) = usage(pid)?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    let tps = 100.0; // USER_HZ
    let cpu = (t1 - t0) as f64 / tps / elapsed * 100.0;
    report("idle.cpu_percent", format!("{cpu:.3}"), "percent_of_one_core");
    report("idle.rss_bytes", rss, "bytes");
    report("idle.clean_exit", u8::from(status.success()), "bool");
    Ok(())
}
