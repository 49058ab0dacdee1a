//! Routine work in one place: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs (fmt check, clippy with warnings denied, docs
//!   without broken links, tests)
//! - `lint`: fmt check, clippy and docs
//! - `test`: the whole test suite
//! - `bench`: criterion benches and `daemoneye-bench runtime`, `bus` and `triggers`
//! - `size`: builds the binaries users install in release and checks each
//!   is within the 15 MB budget
//! - `ebpf`: rebuilds the eBPF objects (procmond's and netmond's) from their
//!   C sources and the shared headers in `crates/collector-core/ebpf` (clang,
//!   llvm-strip) and records the digests of each; `ebpf --check` rebuilds
//!   into a temporary directory and fails unless each committed object is
//!   byte for byte what the committed sources build to
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

/// One eBPF program: its directory, its C source, its object and the
/// digests file beside the object (this crate's tests check it).
struct EbpfProgram {
    dir: &'static str,
    source: &'static str,
    object: &'static str,
    record: &'static str,
}

/// The workspace's eBPF programs: procmond's (processes) and netmond's
/// (TCP state changes).
const EBPF_PROGRAMS: [EbpfProgram; 2] = [
    EbpfProgram {
        dir: "crates/procmond/ebpf",
        source: "process.bpf.c",
        object: "process.bpf.o",
        record: "process.bpf.o.sha256",
    },
    EbpfProgram {
        dir: "crates/netmond/ebpf",
        source: "net.bpf.c",
        object: "net.bpf.o",
        record: "net.bpf.o.sha256",
    },
];

/// The headers every program includes, beside collector-core's loader
/// (`collector_core::ebpf`), and the include path to them from a program's
/// directory.
const EBPF_SHARED_DIR: &str = "crates/collector-core/ebpf";
const EBPF_SHARED_HEADERS: [&str; 3] = ["helpers.h", "vmlinux.h", "accounting.h"];
const EBPF_INCLUDE: &str = "-I../../collector-core/ebpf";

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

/// Builds `program`'s object into `out` (reproducibly: no absolute paths,
/// no DWARF; BTF and its relocations stay, CO-RE needs them); returns
/// clang's version.
fn build_ebpf(
    program: &EbpfProgram,
    dir: &std::path::Path,
    out: &std::path::Path,
) -> Result<String, String> {
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
            EBPF_INCLUDE,
            &prefix_map,
            "-c",
            program.source,
            "-o",
            out_s,
        ],
        dir,
    )?;
    run("llvm-strip", &["-g", out_s], dir)?;
    let version = run("clang", &["--version"], dir)?;
    Ok(version.lines().next().unwrap_or_default().trim().to_owned())
}

/// The digests of `program`'s sources (its own and the shared headers) and
/// of `object`, as the record holds them.
fn ebpf_record(
    root: &std::path::Path,
    program: &EbpfProgram,
    object: &[u8],
    clang: &str,
) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut record = String::from(
        "# Written by `cargo xtask ebpf`: the digests of the committed sources and of\n\
         # the object built from them. xtask's tests check them without clang.\n",
    );
    let own = root.join(program.dir).join(program.source);
    let shared = EBPF_SHARED_HEADERS.map(|h| (h, root.join(EBPF_SHARED_DIR).join(h)));
    for (name, path) in std::iter::once((program.source, own)).chain(shared) {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = writeln!(record, "source {name} {}", hex_sha256(&bytes));
    }
    let _ = writeln!(record, "object {} {}", program.object, hex_sha256(object));
    let _ = writeln!(record, "clang {clang}");
    Ok(record)
}

/// Builds (or, with `check`, verifies) one program's object and record.
fn ebpf_one(
    root: &std::path::Path,
    program: &EbpfProgram,
    tmp: &std::path::Path,
    check: bool,
) -> Result<(), String> {
    let dir = root.join(program.dir);
    let built_path = tmp.join(program.object);
    let clang = build_ebpf(program, &dir, &built_path)?;
    let built = std::fs::read(&built_path).map_err(|e| format!("built object: {e}"))?;
    let record = ebpf_record(root, program, &built, &clang)?;
    let (object, record_name) = (program.object, program.record);
    let where_ = program.dir;
    if check {
        let committed =
            std::fs::read(dir.join(object)).map_err(|e| format!("{where_}/{object}: {e}"))?;
        let recorded = std::fs::read_to_string(dir.join(record_name)).unwrap_or_default();
        if committed != built {
            let was = recorded
                .lines()
                .find(|l| l.starts_with("clang "))
                .unwrap_or("");
            return Err(format!(
                "{where_}/{object} is not what the committed source builds to \
                 (rebuild with `cargo xtask ebpf` and commit; recorded {was}, here {clang})"
            ));
        }
        if recorded != record {
            return Err(format!(
                "{where_}/{record_name} is stale: run `cargo xtask ebpf`"
            ));
        }
        println!(
            "{where_}/{object}: built from the committed source ({} bytes)",
            built.len()
        );
    } else {
        std::fs::write(dir.join(object), &built).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(record_name), record).map_err(|e| e.to_string())?;
        println!(
            "wrote {where_}/{object} ({} bytes) and {record_name}",
            built.len()
        );
    }
    Ok(())
}

fn ebpf(check: bool) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let tmp = std::env::temp_dir().join(format!("xtask-ebpf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = EBPF_PROGRAMS
        .iter()
        .try_for_each(|program| ebpf_one(root, program, &tmp, check));
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

    /// Each committed eBPF object and its digests file are what `cargo
    /// xtask ebpf` wrote from the committed sources (the C, the shared
    /// headers): edit the C without rebuilding, or swap the object, and this
    /// fails. (`cargo xtask ebpf --check` rebuilds with clang; this needs
    /// none.)
    #[test]
    fn every_committed_ebpf_object_is_recorded_with_its_sources() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for program in &super::EBPF_PROGRAMS {
            let dir = root.join(program.dir);
            let recorded = std::fs::read_to_string(dir.join(program.record)).unwrap();
            let object = std::fs::read(dir.join(program.object)).unwrap();
            let clang = recorded
                .lines()
                .find_map(|l| l.strip_prefix("clang "))
                .unwrap_or_default();
            let record = super::ebpf_record(&root, program, &object, clang).unwrap();
            assert_eq!(
                recorded, record,
                "{}: changed since `cargo xtask ebpf`: rebuild and commit",
                program.object
            );
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
