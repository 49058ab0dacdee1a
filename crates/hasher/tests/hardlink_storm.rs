//! The hardlink storm (issue 11): 1,100 hardlinks of one 16 MiB binary,
//! all asked for at once, as procmond asks on their exec events. The
//! engine must stay within its stated fd bound, read the file once, answer
//! everyone, and still serve an unrelated file promptly afterwards.
//!
//! Alone in its own test binary: the fd and RSS figures are the process's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::HashAlgorithm;
use daemoneye_hasher::{HashEngine, HasherConfig};
use sha2::Digest as _;
use tokio::time::Instant;

const MIB: usize = 1 << 20;
const SIZE: usize = 16 * MIB;
const LINKS: usize = 1_100;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// `VmHWM` (peak resident set) in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `SIZE` bytes of a pattern one MiB at a time (no 16 MiB buffer in
/// the RSS figure) and returns its SHA-256.
fn write_binary(path: &Path) -> String {
    let mut file = std::fs::File::create(path).unwrap();
    let mut sha = sha2::Sha256::new();
    let mut chunk = vec![0u8; MIB];
    for i in 0..SIZE / MIB {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = u8::try_from((i * 7 + j * 31) % 251).unwrap();
        }
        file.write_all(&chunk).unwrap();
        sha.update(&chunk);
    }
    file.sync_all().unwrap();
    sha.finalize().iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Samples the process's open fds and threads until stopped, keeping the
/// peaks (a cross-check of the engine's own high-water mark, from outside).
#[allow(clippy::disallowed_methods)] // a sampler outside the runtime: there is no event to await
fn watcher(
    stop: Arc<AtomicBool>,
    fds: Arc<AtomicUsize>,
    tasks: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            fds.fetch_max(open_fds(), Ordering::Relaxed);
            tasks.fetch_max(threads(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlink_storm_stays_bounded_reads_once_and_answers_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("tool");
    let expected = write_binary(&original);
    let links: Vec<PathBuf> = (0..LINKS)
        .map(|i| {
            let link = dir.path().join(format!("link{i:04}"));
            std::fs::hard_link(&original, &link).unwrap();
            link
        })
        .collect();
    let unrelated = dir.path().join("unrelated");
    std::fs::write(&unrelated, b"abc").unwrap();

    // The defaults procmond runs with (64 MiB/s, 256 KiB chunks).
    let engine = HashEngine::new(HasherConfig::default()).unwrap();
    // The runtime's own fds (and the blocking pool's threads) exist before
    // the baseline is taken.
    engine.hash_file(&unrelated).await.unwrap();
    let base_fds = open_fds();
    let base_threads = threads();
    let base_hwm = vm_hwm_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(base_fds));
    let peak_threads = Arc::new(AtomicUsize::new(base_threads));
    let watcher = watcher(
        Arc::clone(&stop),
        Arc::clone(&peak),
        Arc::clone(&peak_threads),
    );

    let started = Instant::now();
    let tasks: Vec<_> = links
        .iter()
        .map(|link| {
            let (engine, link) = (engine.clone(), link.clone());
            tokio::spawn(async move { engine.hash_file(&link).await })
        })
        .collect();
    // 16 MiB at 64 MiB/s is a quarter second; reading it 1,100 times would
    // take almost five minutes.
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await;
    let storm_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let peak_fds = peak.load(Ordering::Relaxed);
    let peak_threads = peak_threads.load(Ordering::Relaxed);
    let hwm = vm_hwm_kib();
    let stats = engine.stats();
    eprintln!(
        "storm: {storm_took:?}; fds: base {base_fds}, peak {peak_fds}; threads: base \
         {base_threads}, peak {peak_threads}; VmHWM: base {base_hwm} KiB, peak {hwm} KiB; {stats:?}"
    );

    let all = all.expect("every requester is answered within 20 s");
    for (link, r) in links.iter().zip(&all) {
        let out = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert_eq!(out.path, *link);
        assert_eq!(out.digest(HashAlgorithm::Sha256), Some(expected.as_str()));
        assert!(!out.changed_during_hash);
    }
    // Read once: one file hashed, its bytes once.
    assert_eq!(
        stats.files_hashed, 2,
        "the unrelated file and the binary, once"
    );
    assert_eq!(stats.bytes_hashed, 3 + SIZE as u64);

    let bound = daemoneye_hasher::config::DEFAULT_MAX_CONCURRENT_HASHES;
    assert!(
        peak_fds <= base_fds + bound,
        "peak {peak_fds} fds, base {base_fds}, bound {bound}"
    );
    assert!(
        stats.files_open_peak <= bound as u64,
        "engine's own high-water mark: {}",
        stats.files_open_peak
    );
    // Threads: at most MAX_CONCURRENT_PROBES + bound blocking tasks run at
    // once; tokio's pool may start a few more threads than that (a task
    // spawned just before a finished thread turns idle gets a new one), far
    // from the 512 it grows to when every request runs one.
    let most = 256;
    assert!(
        peak_threads <= base_threads + most,
        "peak {peak_threads} threads, base {base_threads}, bound {most}"
    );
    // Memory: the workers' buffers (bound × chunk) and the waiting futures,
    // far from one buffer per requester (1,100 × 256 KiB = 275 MiB).
    let grew_kib = hwm.saturating_sub(base_hwm);
    assert!(grew_kib < 32 * 1024, "VmHWM grew {grew_kib} KiB");

    // A later, unrelated file is served promptly: no debt left behind.
    let other = dir.path().join("other");
    std::fs::write(&other, vec![9u8; 64 * 1024]).unwrap();
    let t0 = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(2), engine.hash_file(&other))
        .await
        .expect("an unrelated hash is not stuck behind the storm")
        .unwrap();
    assert!(!out.from_cache);
    eprintln!("unrelated hash after the storm: {:?}", t0.elapsed());
}
