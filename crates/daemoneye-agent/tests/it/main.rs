//! Integration tests of daemoneye-agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod agent;
mod builtin;
mod cli;
mod e2e;
mod files;
mod fleet;
mod fleet_agent;
mod link;
mod metrics;
mod nats;
mod network;
mod performance;
mod privsep;
mod served;

/// Whether the test runs as root; if not, says why it skips (`needs`).
fn root_or_skip(needs: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping: {needs}");
    }
    root
}

/// The first item `rx` gives that `wanted` picks, within `within`; `None`
/// when none came in time or the sender went.
// Blocking, around child processes: no tokio clock to pause.
#[allow(clippy::disallowed_types)]
fn first_within<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    within: std::time::Duration,
    mut wanted: impl FnMut(&T) -> bool,
) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let item = rx.recv_timeout(left).ok()?;
        if wanted(&item) {
            return Some(item);
        }
    }
}

/// Runs probe `i` (it returns the name of the process it ran) until an
/// alert of `rule` for a process of that name comes on `alerts` within
/// half a second (the agent may still be starting): at most 40 tries.
fn alert_on_probe(
    alerts: &std::sync::mpsc::Receiver<serde_json::Value>,
    rule: &str,
    mut probe: impl FnMut(usize) -> String,
) -> Option<serde_json::Value> {
    (0..40).find_map(|i| {
        let name = probe(i);
        first_within(alerts, std::time::Duration::from_millis(500), |a| {
            a["rule_id"] == rule && a["process"]["name"] == name.as_str()
        })
    })
}

/// The lines of the reader `open` gives, read on a thread of its own (so a
/// named pipe's open may wait there for its writer), each as `keep` maps
/// it, on a channel; a line `keep` maps to `None` is left out.
fn read_lines<R, T>(
    open: impl FnOnce() -> R + Send + 'static,
    keep: impl Fn(String) -> Option<T> + Send + 'static,
) -> std::sync::mpsc::Receiver<T>
where
    R: std::io::Read,
    T: Send + 'static,
{
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(open())
            .lines()
            .map_while(Result::ok)
        {
            if let Some(item) = keep(line) {
                let _ = tx.send(item);
            }
        }
    });
    rx
}

/// A line of `/proc/<pid>/status`, its value trimmed.
fn status(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
}

/// The children of `pid` that have exec'd, each with its command line
/// (NUL-separated, as `/proc/<pid>/cmdline` has it, lossy UTF-8).
fn children(pid: u32) -> Vec<(u32, String)> {
    use collector_core::procfs::{parse_pid_stat, pids};
    let proc = std::path::Path::new("/proc");
    let ppid = |child: u32| {
        let stat = std::fs::read(proc.join(format!("{child}/stat"))).ok()?;
        Some(parse_pid_stat(&stat).ok()?.ppid)
    };
    let cmdline = |pid: u32| {
        let bytes = std::fs::read(proc.join(format!("{pid}/cmdline"))).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let own = cmdline(pid);
    pids(proc)
        .unwrap()
        .into_iter()
        .filter(|&child| ppid(child) == Some(pid))
        .filter_map(|child| Some((child, cmdline(child)?)))
        // A child forked but not yet exec'd is a copy of its parent (the
        // spawner's command line names every collector).
        .filter(|(_, line)| Some(line) != own.as_ref())
        .collect()
}

/// The children of `pid` whose command line contains `needle`.
fn children_with(pid: u32, needle: &str) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter_map(|(child, cmdline)| cmdline.contains(needle).then_some(child))
        .collect()
}

/// Writes `text` to `path` and sets its permission bits to `mode`.
fn write_with_mode(path: &std::path::Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A child stopped with SIGTERM when dropped (SIGKILL after 10 s), and
/// reaped.
struct Killed(std::process::Child);

impl Killed {
    /// Sends it SIGTERM.
    fn term(&self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Drop for Killed {
    // Blocking, around a child process: no tokio clock to pause.
    #[allow(clippy::disallowed_types)]
    fn drop(&mut self) {
        self.term();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
