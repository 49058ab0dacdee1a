//! Routine work in one place: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs (fmt check, clippy with warnings denied, docs
//!   without broken links, tests)
//! - `lint`: fmt check, clippy and docs
//! - `test`: the whole test suite
//! - `bench`: criterion benches and `daemoneye-bench runtime`, `bus` and `triggers`
//! - `size`: builds the binaries users install in release and checks each
//!   is within the 15 MB budget
//! - `ebpf`: rebuilds procmond's eBPF object from its C source (clang,
//!   llvm-strip) and records the digests of both; `ebpf --check` rebuilds
//!   into a temporary directory and fails unless the committed object is
//!   byte for byte what the committed source builds to
#![allow(clippy::print_stdout)]

use std::process::{Command, ExitCode};

const TASKS: &str = "tasks: ci | lint | test | bench | size | ebpf [--check]";

/// The binaries users install, and the most each may weigh in release.
const BINARIES: [&str; 6] = [
    "daemoneye-agent",
    "daemoneye-cli",
    "procmond",
    "perfmond",
    "netmond",
    "fsmond",
];
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

/// procmond's eBPF program: its directory, sources and object.
const EBPF_DIR: &str = "crates/procmond/ebpf";
const EBPF_SOURCES: [&str; 3] = ["process.bpf.c", "helpers.h", "vmlinux.h"];
const EBPF_OBJECT: &str = "process.bpf.o";
/// The digests file beside the object; procmond's tests check it.
const EBPF_RECORD: &str = "process.bpf.o.sha256";

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn run(program: &str, args: &[&str], dir: &std::path::Path) -> Result<String, String> {
    eprintln!("+ {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (apt-get install -y clang llvm)"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the object into `out` (reproducibly: no absolute paths, no DWARF;
/// BTF and its relocations stay, CO-RE needs them); returns clang's version.
fn build_ebpf(dir: &std::path::Path, out: &std::path::Path) -> Result<String, String> {
    let out_s = out.to_str().ok_or("non-UTF-8 temporary path")?;
    let dir_s = dir.to_str().ok_or("non-UTF-8 source path")?;
    let prefix_map = format!("-fdebug-prefix-map={dir_s}=.");
    run(
        "clang",
        &[
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
            &prefix_map,
            "-c",
            EBPF_SOURCES[0],
            "-o",
            out_s,
        ],
        dir,
    )?;
    run("llvm-strip", &["-g", out_s], dir)?;
    let version = run("clang", &["--version"], dir)?;
    Ok(version.lines().next().unwrap_or_default().trim().to_owned())
}

/// The digests of the sources and of `object`, as the record holds them.
fn ebpf_record(dir: &std::path::Path, object: &[u8], clang: &str) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut record = String::from(
        "# Written by `cargo xtask ebpf`: the digests of the committed sources and of\n\
         # the object built from them. procmond's tests check them without clang.\n",
    );
    for name in EBPF_SOURCES {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let _ = writeln!(record, "source {name} {}", hex_sha256(&bytes));
    }
    let _ = writeln!(record, "object {EBPF_OBJECT} {}", hex_sha256(object));
    let _ = writeln!(record, "clang {clang}");
    Ok(record)
}

fn ebpf(check: bool) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let dir = root.join(EBPF_DIR);
    let tmp = std::env::temp_dir().join(format!("xtask-ebpf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let built_path = tmp.join(EBPF_OBJECT);
    let result = build_ebpf(&dir, &built_path).and_then(|clang| {
        let built = std::fs::read(&built_path).map_err(|e| format!("built object: {e}"))?;
        let record = ebpf_record(&dir, &built, &clang)?;
        if check {
            let committed =
                std::fs::read(dir.join(EBPF_OBJECT)).map_err(|e| format!("{EBPF_OBJECT}: {e}"))?;
            let recorded = std::fs::read_to_string(dir.join(EBPF_RECORD)).unwrap_or_default();
            if committed != built {
                let was = recorded
                    .lines()
                    .find(|l| l.starts_with("clang "))
                    .unwrap_or("");
                return Err(format!(
                    "{EBPF_DIR}/{EBPF_OBJECT} is not what the committed source builds to \
                     (rebuild with `cargo xtask ebpf` and commit; recorded {was}, here {clang})"
                ));
            }
            if recorded != record {
                return Err(format!(
                    "{EBPF_DIR}/{EBPF_RECORD} is stale: run `cargo xtask ebpf`"
                ));
            }
            println!(
                "{EBPF_OBJECT}: built from the committed source ({} bytes)",
                built.len()
            );
        } else {
            std::fs::write(dir.join(EBPF_OBJECT), &built).map_err(|e| e.to_string())?;
            std::fs::write(dir.join(EBPF_RECORD), record).map_err(|e| e.to_string())?;
            println!(
                "wrote {EBPF_DIR}/{EBPF_OBJECT} ({} bytes) and {EBPF_RECORD}",
                built.len()
            );
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
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
        Some("ebpf") => {
            let check = std::env::args().nth(2).as_deref() == Some("--check");
            match ebpf(check) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("xtask ebpf: {e}");
                    false
                }
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `unsafe_code` is `deny` workspace-wide: only a module named `sys`
    /// may allow it, and each of its `unsafe` blocks says why it is sound.
    #[test]
    fn unsafe_is_only_in_sys_modules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&root.join("crates"), &mut files);
        rust_files(&root.join("xtask"), &mut files);
        assert!(files.len() > 100, "{} files", files.len());
        let allow = ["allow", "(unsafe_code)"].concat();
        let block = ["unsafe", " {"].concat();
        let mut sys = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let is_sys = file.file_name().is_some_and(|n| n == "sys.rs");
            if text.contains(&allow) {
                assert!(
                    is_sys,
                    "{} allows unsafe code outside a sys module",
                    file.display()
                );
                sys += 1;
            }
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.contains(&block) && !line.trim_start().starts_with("//") {
                    let before = &lines[i.saturating_sub(8)..i];
                    assert!(
                        before.iter().any(|l| l.contains("// SAFETY:")),
                        "{}:{}: an unsafe block without a `// SAFETY:` above it",
                        file.display(),
                        i + 1
                    );
                }
            }
        }
        assert!(sys >= 1, "no sys module found: is the walk right?");
    }
}
