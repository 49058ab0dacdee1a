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
mod link;
mod metrics;
mod network;
mod performance;
mod privsep;

/// Whether the test runs as root; if not, says why it skips (`needs`).
fn root_or_skip(needs: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping: {needs}");
    }
    root
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
