//! `overhead`: what the main job costs a busy host, measured as a user
//! would: the release `daemoneye-agent run` (next to this binary, with
//! every collector it starts by default) against no agent, alternated in
//! one run. As root.
//!
//! - `overhead.spawn_slowdown`: a storm of `/bin/true` (`posix_spawn`, as
//!   Rust's `Command` spawns, `in_flight` children at a time) with the agent
//!   against without it, in percent of the rate without.
//! - `overhead.cpu_us_per_exec`: the CPU time of the agent and every process
//!   under it (its spawner and collectors, from their own `/proc`
//!   accounting), from before the storm until it has judged and stored it,
//!   divided by the execs; `overhead.cpu_us_per_exec.<role>` the same per
//!   process role (the agent's `run`, its `spawner`, each collector's
//!   subcommand), medians over the rounds.
//! - `overhead.idle_cpu_percent`, `overhead.idle_rss_bytes` and
//!   `overhead.idle_pss_bytes` (shared pages counted once): the agent and
//!   its processes over `idle_secs` with `idle_procs` extra processes
//!   present.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use collector_core::procfs;
use procmond::source::TierChoice;
use tokio::time::Instant;

use crate::{median, report, report_f};

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Execs per storm.
    #[arg(long, default_value_t = 5_000, value_parser = crate::positive::<usize>)]
    pub(crate) spawns: usize,
    /// Children in flight during a storm.
    #[arg(long, default_value_t = 16, value_parser = crate::positive::<usize>)]
    pub(crate) in_flight: usize,
    /// Storms with the agent (and as many without, alternated).
    #[arg(long, default_value_t = 5, value_parser = crate::positive::<usize>)]
    pub(crate) rounds: usize,
    /// Seconds of the idle measurement.
    #[arg(long, default_value_t = 60, value_parser = crate::positive::<u64>)]
    pub(crate) idle_secs: u64,
    /// Extra sleeping processes during the idle measurement.
    #[arg(long, default_value_t = 3_000, value_parser = crate::positive::<usize>)]
    pub(crate) idle_procs: usize,
    /// procmond's tier (`auto`: the agent's default; another: forced, the
    /// agent's other collectors as by default).
    #[arg(long, value_enum, default_value_t = TierChoice::Auto)]
    pub(crate) tier: TierChoice,
}

/// A child killed and reaped however the bench ends.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Stops `child` with SIGTERM and waits; an error when it exits unclean.
pub(crate) fn stop(child: &mut Child) -> anyhow::Result<()> {
    if let Ok(pid) = i32::try_from(child.id()) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
    }
    let stopped = child.wait()?;
    if !stopped.success() {
        bail!("{stopped}");
    }
    Ok(())
}

/// The release binary `name` next to this one.
pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p {name})",
            bin.display()
        );
    }
    Ok(bin)
}

/// `root` and every process under it, now: (pid, CPU ticks, resident pages).
fn tree(root: u32) -> anyhow::Result<Vec<(u32, u64, u64)>> {
    let proc = Path::new("/proc");
    let mut parent = HashMap::new();
    let mut usage = HashMap::new();
    for pid in procfs::pids(proc)? {
        let Ok(bytes) = std::fs::read(proc.join(format!("{pid}/stat"))) else {
            continue; // gone
        };
        let Ok(stat) = procfs::parse_pid_stat(&bytes) else {
            continue;
        };
        parent.insert(pid, stat.ppid);
        usage.insert(pid, (stat.utime + stat.stime, stat.rss_pages));
    }
    let mut ours = Vec::new();
    for (&pid, &(t, pages)) in &usage {
        let mut p = pid;
        // Up the tree to the root (or to 0/1: not ours).
        while p != root && p > 1 {
            p = parent.get(&p).copied().unwrap_or(0);
        }
        if p == root {
            ours.push((pid, t, pages));
        }
    }
    Ok(ours)
}

/// CPU ticks of `root`'s tree by role: each process's subcommand (`run`,
/// `spawner`, `collect`, `collect-network`, …; `other` without one).
fn ticks_by_role(root: u32) -> anyhow::Result<HashMap<String, u64>> {
    let mut roles = HashMap::new();
    for (pid, ticks, _) in tree(root)? {
        let role = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| {
                let arg = c.split(|b| *b == 0).nth(1)?;
                Some(String::from_utf8_lossy(arg).into_owned())
            })
            .filter(|a| !a.is_empty() && !a.starts_with('-'))
            .unwrap_or_else(|| "other".to_owned());
        *roles.entry(role).or_insert(0) += ticks;
    }
    Ok(roles)
}

/// CPU ticks (utime + stime) and resident bytes of `root` and every
/// process under it, read from `/proc` now.
pub(crate) fn tree_usage(root: u32) -> anyhow::Result<(u64, u64)> {
    let page = procfs::KernelUnits::current().page_size;
    Ok(tree(root)?
        .iter()
        .fold((0, 0), |(t, r), &(_, ticks, pages)| {
            (t + ticks, r + pages * page)
        }))
}

/// The proportional set size of `root`'s tree (`Pss` of each process's
/// `smaps_rollup`, summed): its memory with each page shared among its
/// processes (the agent's binary, mapped by all five) counted once, where
/// a sum of their RSS counts it once per process.
pub(crate) fn tree_pss(root: u32) -> anyhow::Result<u64> {
    let mut kib = 0;
    for (pid, _, _) in tree(root)? {
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue; // gone
        };
        kib += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(kib * 1024)
}

/// A running `daemoneye-agent run` on its own data directory, its stdout
/// lines (alerts, checkpoints) read on a thread with their arrival times.
pub(crate) struct Agent {
    pub(crate) child: Reaped,
    pub(crate) lines: mpsc::Receiver<(String, Instant)>,
    pub(crate) data: PathBuf,
}

/// The process name of an `exec-from-temp-dir` alert line, if it is one.
pub(crate) fn temp_dir_alert(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["rule_id"] == "exec-from-temp-dir")
        .then(|| v["process"]["name"].as_str().unwrap_or("").to_owned())
}

impl Agent {
    /// Starts `bin run ARGS --data-dir DATA`.
    pub(crate) fn spawn(bin: &Path, args: &[&str], data: PathBuf) -> anyhow::Result<Self> {
        let mut child = Reaped(
            Command::new(bin)
                .arg("run")
                .args(args)
                .arg("--data-dir")
                .arg(&data)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the agent")?,
        );
        let out = child.0.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines, data })
    }

    /// Runs `probe ARGS` (a program in `/dev/shm`) until the agent alerts
    /// on it (its collectors attached and judged by then), 20 s at most;
    /// then drops what else it said meanwhile.
    pub(crate) fn await_alert_on(&self, probe: &Path, args: &[&str]) -> anyhow::Result<()> {
        for _ in 0..100 {
            Command::new(probe).args(args).status()?;
            if let Ok((line, _)) = self.lines.recv_timeout(Duration::from_millis(200)) {
                if temp_dir_alert(&line).is_some() {
                    while self.lines.recv_timeout(Duration::from_millis(500)).is_ok() {}
                    return Ok(());
                }
            }
        }
        bail!(
            "the agent never alerted on {}; is this root?",
            probe.display()
        )
    }

    /// A fresh agent on its own data directory (in `parent`), once it
    /// alerts on `probe`.
    fn start(bin: &Path, probe: &Path, parent: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("daemoneye-overhead-")
            .tempdir_in(parent)?
            .keep();
        let args: Vec<&str> = ["--dedup-window-secs", "1"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let agent = Self::spawn(bin, &args, data)?;
        agent.await_alert_on(probe, &[])?;
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits until the agent's tree uses (almost) no CPU for a second (at
    /// most 2 ticks, 20 ms: its idle sampling): what it was given is judged
    /// and stored. At most 60 s.
    pub(crate) fn settle(&self) -> anyhow::Result<(u64, u64)> {
        let mut last = tree_usage(self.pid())?;
        for _ in 0..60 {
            pause(Duration::from_secs(1));
            let now = tree_usage(self.pid())?;
            if now.0 <= last.0 + 2 {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        stop(&mut self.child.0).context("the agent")?;
        let _ = std::fs::remove_dir_all(&self.data);
        Ok(())
    }
}

/// Spawns `/bin/true` `spawns` times, `in_flight` at once; execs per second.
fn storm(spawns: usize, in_flight: usize) -> anyhow::Result<f64> {
    let mut running = VecDeque::with_capacity(in_flight);
    let start = Instant::now();
    for _ in 0..spawns {
        if running.len() == in_flight {
            let mut oldest: Child = running.pop_front().context("in flight")?;
            oldest.wait()?;
        }
        running.push_back(
            Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    for mut c in running {
        c.wait()?;
    }
    Ok(spawns as f64 / start.elapsed().as_secs_f64())
}

/// Blocks this thread for `d` (the bench's own thread: no runtime here).
fn pause(d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::park_timeout(left);
    }
}

/// `USER_HZ`, the unit of the times in `/proc/<pid>/stat`, in microseconds.
pub(crate) fn tick_us() -> f64 {
    1e6 / procfs::KernelUnits::current().ticks_per_second as f64
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("overhead needs root: the agent's collectors read every process");
    }
    let bin = sibling("daemoneye-agent")?;
    let probe = Path::new("/dev/shm").join(format!("ovh{}", std::process::id()));
    std::fs::copy("/bin/true", &probe)?;
    let dirs = tempfile::tempdir()?;
    let result = measure(o, &bin, &probe, dirs.path());
    let _ = std::fs::remove_file(&probe);
    result
}

/// The agent's flags for `tier`: none for `auto`, else a config (in `dirs`)
/// with its three built-in collectors, procmond's tier forced.
fn tier_flags(tier: TierChoice, dirs: &Path) -> anyhow::Result<Vec<String>> {
    if tier == TierChoice::Auto {
        return Ok(Vec::new());
    }
    let tier = tier.as_str();
    let config = dirs.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[collector]]\nname = \"procmond\"\nbuiltin = \"procmond\"\ntier = \"{tier}\"\n\n\
             [[collector]]\nname = \"perfmond\"\nbuiltin = \"perfmond\"\n\n\
             [[collector]]\nname = \"netmond\"\nbuiltin = \"netmond\"\n"
        ),
    )?;
    Ok(vec!["--config".into(), config.display().to_string()])
}

fn measure(o: &Options, bin: &Path, probe: &Path, dirs: &Path) -> anyhow::Result<()> {
    let flags = tier_flags(o.tier, dirs)?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    storm(o.spawns / 10, o.in_flight)?; // warm-up
    let (mut without, mut with, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_role: HashMap<String, Vec<f64>> = HashMap::new();
    for _ in 0..o.rounds {
        without.push(storm(o.spawns, o.in_flight)?);
        let agent = Agent::start(bin, probe, dirs, &flags)?;
        let (before, _) = agent.settle()?;
        let roles_before = ticks_by_role(agent.pid())?;
        with.push(storm(o.spawns, o.in_flight)?);
        let (after, _) = agent.settle()?;
        let roles_after = ticks_by_role(agent.pid())?;
        agent.stop()?;
        cpu.push((after - before) as f64 * tick_us() / o.spawns as f64);
        for (role, t) in roles_after {
            let t0 = roles_before.get(&role).copied().unwrap_or(0);
            let us = t.saturating_sub(t0) as f64 * tick_us() / o.spawns as f64;
            by_role.entry(role).or_default().push(us);
        }
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (hi - lo) / median(v.to_vec())
    };
    let (rate_without, rate_with) = (median(without.clone()), median(with.clone()));
    report_f("overhead.spawn_rate_without", rate_without, 0, "execs/s");
    report_f("overhead.spawn_rate_with", rate_with, 0, "execs/s");
    report_f(
        "overhead.spawn_slowdown",
        (1.0 - rate_with / rate_without) * 100.0,
        1,
        "percent",
    );
    report_f(
        "overhead.spawn_rate_spread_without",
        spread(&without),
        3,
        "ratio",
    );
    report_f("overhead.spawn_rate_spread_with", spread(&with), 3, "ratio");
    report_f("overhead.cpu_us_per_exec", median(cpu.clone()), 1, "us");
    report_f("overhead.cpu_us_per_exec_spread", spread(&cpu), 3, "ratio");
    // Where it went: the agent (`run`) and each collector by subcommand.
    let mut roles: Vec<_> = by_role.into_iter().collect();
    roles.sort_by(|a, b| a.0.cmp(&b.0));
    for (role, us) in roles {
        report_f(
            &format!("overhead.cpu_us_per_exec.{role}"),
            median(us),
            1,
            "us",
        );
    }

    // Idle, with many processes present.
    let mut sleepers = Vec::with_capacity(o.idle_procs);
    for _ in 0..o.idle_procs {
        sleepers.push(Reaped(
            Command::new("sleep")
                .arg("100000")
                .stdin(Stdio::null())
                .spawn()?,
        ));
    }
    let agent = Agent::start(bin, probe, dirs, &flags)?;
    let (t0, _) = agent.settle()?;
    let start = Instant::now();
    pause(Duration::from_secs(o.idle_secs));
    let (t1, rss) = tree_usage(agent.pid())?;
    let pss = tree_pss(agent.pid())?;
    let secs = start.elapsed().as_secs_f64();
    agent.stop()?;
    drop(sleepers);
    report_f(
        "overhead.idle_cpu_percent",
        (t1 - t0) as f64 * tick_us() / 1e6 / secs * 100.0,
        3,
        "percent_of_one_core",
    );
    report("overhead.idle_rss_bytes", rss, "bytes");
    report("overhead.idle_pss_bytes", pss, "bytes");
    report("overhead.idle_procs", o.idle_procs, "processes");
    report("overhead.tier", o.tier.as_str(), "");
    Ok(())
}
