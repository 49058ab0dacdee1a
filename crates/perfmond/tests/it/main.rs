//! Integration tests of perfmond (one binary, several modules): real
//! processes the tests start, the real `/proc`, the source in the
//! collector-core runtime, and the `perfmond` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    clippy::missing_panics_doc,
    missing_docs,
    unreachable_pub
)]

mod cli;
mod process;
mod source;

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use collector_core::lock;

/// One busy child at a time: tests run in parallel on a small machine, and
/// two spinning children on two cores would each get less than the shares
/// asserted.
static BUSY: Mutex<()> = Mutex::new(());

/// A child process the test started, killed and reaped when dropped.
pub struct Spawned {
    pub child: Child,
    _turn: Option<MutexGuard<'static, ()>>,
}

impl Spawned {
    /// `sh -c 'while :; do :; done'`: one core's worth of CPU when the
    /// machine has one to give. As root it runs at nice -19, ahead of the
    /// test's other threads; other sessions (autogroups) on a shared
    /// machine still take their share, so the tests compare perfmond's
    /// figure with what the scheduler says the child got ([`Self::cpu_ns`]).
    pub fn busy() -> Self {
        let script = "while :; do :; done";
        if nix::unistd::geteuid().is_root() {
            Self::spawn("nice", &["-n", "-19", "sh", "-c", script], true)
        } else {
            eprintln!("not root: the busy child runs at normal priority");
            Self::spawn("sh", &["-c", script], true)
        }
    }

    /// `sh -c 'while :; do /bin/true; done'`: hundreds of forks a second.
    pub fn forking() -> Self {
        Self::spawn("sh", &["-c", "while :; do /bin/true; done"], true)
    }

    /// A process that only waits.
    pub fn idle() -> Self {
        Self::spawn("sleep", &["1000"], false)
    }

    /// `program args`, holding the one busy turn when `busy`.
    fn spawn(program: &str, args: &[&str], busy: bool) -> Self {
        let turn = busy.then(|| lock(&BUSY));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Self { child, _turn: turn }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps it now: its `/proc` entry is gone when this returns.
    pub fn reap(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Nanoseconds it has run on a CPU (`/proc/<pid>/schedstat`, the
    /// scheduler's own account, independent of the tick counts perfmond
    /// reads).
    pub fn cpu_ns(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid())).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Field 22 of its `/proc/<pid>/stat`.
    pub fn start_ticks(&self) -> u64 {
        let bytes = std::fs::read(format!("/proc/{}/stat", self.pid())).unwrap();
        perfmond::parse::parse_pid_stat(&bytes).unwrap().starttime
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The share perfmond must at least report for a busy child: 50 % of a core
/// as the task asks, unless the scheduler gave the child less than 62.5 %
/// over the same time (a machine shared with other sessions); then 80 % of
/// what it got. A wrong figure (0, another process's, a wrong interval)
/// still fails.
pub fn wanted_share(scheduler_percent: f64) -> f64 {
    (0.8 * scheduler_percent).min(50.0)
}
