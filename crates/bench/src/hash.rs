//! `hash`: SHA-256 and BLAKE3 throughput of the `daemoneye-hasher` engine
//! (uncached, unlimited budget) against plain `std::fs` reads of the same
//! file in the same chunk size, measured interleaved in the same run; and
//! the cost of a cache hit.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use collector_core::HashAlgorithm;
use daemoneye_hasher::{HashEngine, HasherConfig};
use tokio::time::Instant;

use crate::{median, report, report_f, report_ratio};

const CHUNK: usize = 256 << 10;

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Size of the hashed file, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) size_mib: u64,
    /// Repetitions.
    #[arg(long, default_value_t = 5, value_parser = crate::positive::<usize>)]
    pub(crate) reps: usize,
    /// Cache hits timed.
    #[arg(long, default_value_t = 20_000, value_parser = crate::positive::<usize>)]
    pub(crate) hits: usize,
}

/// A temporary file removed on drop, so a failed run leaves nothing behind.
struct TempFile(PathBuf);

impl TempFile {
    fn create(name: &str, len: usize) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("daemoneye-bench-{name}-{}.bin", std::process::id()));
        let file = Self(path);
        // Not all one byte value, so nothing could shortcut it.
        let content: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        std::fs::write(&file.0, content)
            .with_context(|| format!("writing {}", file.0.display()))?;
        Ok(file)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads `path` to the end in `CHUNK`-sized reads; returns the bytes read.
fn read_all(path: &Path, buf: &mut [u8]) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut total = 0u64;
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn engine(algorithm: HashAlgorithm, cache_capacity_entries: usize) -> anyhow::Result<HashEngine> {
    Ok(HashEngine::new(HasherConfig {
        algorithms: vec![algorithm],
        bytes_per_sec: 0,
        chunk_size_bytes: CHUNK as u64,
        max_file_size_bytes: 2 << 30,
        cache_capacity_entries,
        ..HasherConfig::default()
    })?)
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let size = usize::try_from(o.size_mib << 20)?;
    let big = TempFile::create("hash", size)?;
    let small = TempFile::create("hash-hit", 4096)?;
    let rt = tokio::runtime::Runtime::new()?;
    // Uncached: every call reads the whole file.
    let sha = engine(HashAlgorithm::Sha256, 0)?;
    let b3 = engine(HashAlgorithm::Blake3, 0)?;

    let mut buf = vec![0u8; CHUNK];
    // Warm the page cache so every contender reads from memory.
    read_all(&big.0, &mut buf)?;

    let (mut read_bps, mut sha_bps, mut b3_bps) = (Vec::new(), Vec::new(), Vec::new());
    let bytes = size as f64;
    // Interleaved, so drift in the machine's load hits all three alike.
    for _ in 0..o.reps {
        let t = Instant::now();
        let n = read_all(&big.0, &mut buf)?;
        read_bps.push(bytes / t.elapsed().as_secs_f64());
        ensure!(n == size as u64, "short read: {n}");

        for (engine, out) in [(&sha, &mut sha_bps), (&b3, &mut b3_bps)] {
            let t = Instant::now();
            let outcome = rt.block_on(engine.hash_file(&big.0))?;
            out.push(bytes / t.elapsed().as_secs_f64());
            ensure!(!outcome.from_cache && outcome.bytes_read == size as u64);
        }
    }
    let (read, sha256, blake3) = (median(read_bps), median(sha_bps), median(b3_bps));
    report_f("hash.baseline_read_bytes_per_sec", read, 0, "bytes/s");
    report_f("hash.sha256_bytes_per_sec", sha256, 0, "bytes/s");
    report_f("hash.blake3_bytes_per_sec", blake3, 0, "bytes/s");
    report_ratio("hash.sha256_ratio_vs_read", sha256 / read);
    report_ratio("hash.blake3_ratio_vs_read", blake3 / read);

    let cached = engine(HashAlgorithm::Sha256, 16)?;
    let hits = rt.block_on(async {
        cached.hash_file(&small.0).await?;
        let mut ns = Vec::with_capacity(o.hits);
        for _ in 0..o.hits {
            let t = Instant::now();
            let outcome = cached.hash_file(&small.0).await?;
            ns.push(t.elapsed().as_nanos() as f64);
            ensure!(outcome.from_cache, "expected a cache hit");
        }
        Ok::<_, anyhow::Error>(ns)
    })?;
    report("hash.cache_hit_ns", format!("{:.0}", median(hits)), "ns");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn options_parse_and_reject() {
        let o =
            crate::parse_options::<Options>(&args(&["--size-mib", "2", "--reps", "3"])).unwrap();
        assert_eq!((o.size_mib, o.reps, o.hits), (2, 3, 20_000));
        for bad in [
            &["--size-mib", "0"][..],
            &["--reps", "0"],
            &["--hits", "x"],
            &["--bogus", "1"],
            &["--reps"],
        ] {
            assert!(
                crate::parse_options::<Options>(&args(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn small_run_completes() {
        let o = crate::parse_options::<Options>(&args(&[
            "--size-mib",
            "1",
            "--reps",
            "1",
            "--hits",
            "10",
        ]))
        .unwrap();
        run(&o).unwrap();
    }
}
