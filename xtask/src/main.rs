//! Routine work in one place: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs (fmt check, clippy with warnings denied, docs
//!   without broken links, tests)
//! - `lint`: fmt check, clippy and docs
//! - `test`: the whole test suite
//! - `bench`: criterion benches and `daemoneye-bench runtime`, `bus` and `triggers`
#![allow(clippy::print_stdout)]

use std::process::{Command, ExitCode};

const TASKS: &str = "tasks: ci | lint | test | bench";

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
