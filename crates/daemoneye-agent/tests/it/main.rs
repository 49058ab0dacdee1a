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
mod performance;

/// Writes `text` to `path` and sets its permission bits to `mode`.
fn write_with_mode(path: &std::path::Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}
