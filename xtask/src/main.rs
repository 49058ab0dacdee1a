//! Routine work in one place: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs (fmt check, clippy with warnings denied, docs
//!   without broken links, tests)
//! - `lint`: fmt check, clippy and docs
//! - `test`: the whole test suite
//! - `bench`: criterion benches and `daemoneye-bench runtime`, `bus` and `triggers`
//! - `size`: builds the binaries users install in release and checks each
//!   is within the 15 MB budget
#![allow(clippy::print_stdout)]

use std::process::{Command, ExitCode};

const TASKS: &str = "tasks: ci | lint | test | bench | size";

/// The binaries users install, and the most each may weigh in release.
const BINARIES: [&str; 3] = ["daemoneye-agent", "daemoneye-cli", "procmond"];
const MAX_BINARY_BYTES: u64 = 15_000_000;

fn cargo(args: &[&str]) -> bool {
    eprintln!("+ cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    Command::new(cargo)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn lint() -> bool {
    cargo(&["fmt", "--all", "--", "--check"])
        && cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        && docs()
}

/// The docs, with broken or private intra-doc links as errors.
fn docs() -> bool {
    eprintln!("+ RUSTDOCFLAGS=-D warnings cargo doc --workspace --no-deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    Command::new(cargo)
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .status()
        .is_ok_and(|s| s.success())
}

fn test() -> bool {
    // Keep in step with the README and .ci/run.
    cargo(&["test", "--workspace"])
}

/// Builds the installed binaries in release and prints each one's size; false
/// when one is over [`MAX_BINARY_BYTES`] or missing.
fn size() -> bool {
    let mut args = vec!["build", "--release", "--locked"];
    for b in BINARIES {
        args.extend(["-p", b]);
    }
    if !cargo(&args) {
        return false;
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let mut ok = true;
    for b in BINARIES {
        let path = std::path::Path::new(&dir).join("release").join(b);
        match std::fs::metadata(&path) {
            Ok(m) => {
                let within = m.len() <= MAX_BINARY_BYTES;
                println!(
                    "{b} {} bytes ({:.1} MB){}",
                    m.len(),
                    m.len() as f64 / 1e6,
                    if within { "" } else { " OVER BUDGET" }
                );
                ok &= within;
            }
            Err(e) => {
                println!("{b}: cannot read {}: {e}", path.display());
                ok = false;
            }
        }
    }
    ok
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let ok = match task.as_deref() {
        Some("ci") => lint() && test(),
        Some("lint") => lint(),
        Some("test") => test(),
        Some("bench") => {
            cargo(&["bench", "--workspace"])
                && ["runtime", "bus", "triggers"]
                    .iter()
                    .all(|b| cargo(&["run", "--release", "-p", "daemoneye-bench", "--", b]))
        }
        Some("size") => size(),
        _ => {
            println!("usage: cargo xtask <task>\n{TASKS}");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
