//! fsmond against the kernel: real fanotify marks on the root filesystem
//! (ext4 here) and on a tmpfs (`/dev/shm`). Root only: each test skips with
//! a printed reason otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::{check_source, poke_until, ConformanceConfig, Poked};
use collector_core::{
    CollectionEvent, EventKind, EventSource, FileOperation, FileType, FilesystemEvent,
    SourceContext,
};
use fsmond::{FsmondConfig, FsmondCounters, FsmondSource};
use tokio::sync::mpsc;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: fanotify filesystem marks need root (CAP_SYS_ADMIN)");
    false
}

fn config(dir: &Path, hash: bool) -> FsmondConfig {
    FsmondConfig {
        watch: vec![dir.to_path_buf()],
        hash,
        ..FsmondConfig::default()
    }
}

struct Started {
    rx: mpsc::Receiver<CollectionEvent>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counters: FsmondCounters,
}

/// Starts the source on `dir` and waits until it sees a probe file there.
async fn start(dir: &Path, mut config: FsmondConfig) -> Started {
    config.watch = vec![dir.to_path_buf()];
    let probe = dir.join(".probe");
    let seen = probe.to_string_lossy().into_owned();
    start_probing(config, &probe, &seen).await
}

/// Starts the source with `config` and waits until it reports `probe`
/// (written and removed here) as `seen`.
async fn start_probing(config: FsmondConfig, probe: &Path, seen: &str) -> Started {
    let counters = FsmondCounters::default();
    let source = FsmondSource::new(config, counters.clone()).unwrap();
    let (tx, mut rx) = mpsc::channel(200_000);
    let ctx = SourceContext::new("fsmond", tx);
    let stop = ctx.shutdown().clone();
    let task = tokio::spawn(async move { source.start_with(ctx).await });
    let poked = poke_until(
        &mut rx,
        100,
        Duration::from_millis(200),
        || std::fs::write(probe, b"p"),
        |e| matches!(e, CollectionEvent::Filesystem(f) if f.path == seen),
    )
    .await
    .unwrap();
    assert!(poked != Poked::Ended, "the source ended: {:?}", task.await);
    std::fs::remove_file(probe).unwrap();
    Started {
        rx,
        stop,
        task,
        counters,
    }
}

/// The next event on `path` with `op` (others are skipped), within 10 s.
async fn next(
    rx: &mut mpsc::Receiver<CollectionEvent>,
    path: impl AsRef<Path>,
    op: FileOperation,
    pid: Option<u32>,
) -> FilesystemEvent {
    let wanted = path.as_ref().to_string_lossy().into_owned();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Some(CollectionEvent::Filesystem(f))
                    if f.path == wanted && f.operation == op && (pid.is_none() || f.pid == pid) =>
                {
                    return f
                }
                Some(_) => {}
                None => panic!("the source ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {op:?} of {wanted}"))
}

async fn every_operation_on(base: &str) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path();
    let mut s = start(d, config(d, true)).await;
    let me = std::process::id();

    // Created by another process: its pid.
    let file = d.join("cron.conf");
    let mut touch = std::process::Command::new("touch")
        .arg(&file)
        .spawn()
        .unwrap();
    let child = touch.id();
    assert!(touch.wait().unwrap().success());
    let e = next(&mut s.rx, &file, FileOperation::Create, None).await;
    assert_eq!(e.pid, Some(child));
    assert_eq!(e.file_type, Some(FileType::Regular));

    // Written by this one: its pid and key, the new content's hash.
    std::fs::write(&file, b"abc").unwrap();
    let e = next(&mut s.rx, &file, FileOperation::CloseWrite, Some(me)).await;
    assert_eq!(e.pid, Some(me));
    assert_eq!(e.process_key.map(|k| k.pid), Some(me));
    assert_eq!(e.size, Some(3));
    assert_eq!(
        e.file_hash.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );

    // Renamed: both paths, the hash it had.
    let moved = d.join("moved.conf");
    std::fs::rename(&file, &moved).unwrap();
    let e = next(&mut s.rx, &moved, FileOperation::Rename, None).await;
    assert_eq!(e.old_path.as_deref(), Some(file.to_str().unwrap()));
    assert_eq!(e.pid, Some(me));
    assert_eq!(e.previous_hash, e.file_hash);

    // Made setuid: the new mode, and the one before.
    std::fs::set_permissions(&moved, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let e = next(&mut s.rx, &moved, FileOperation::Attrib, None).await;
    assert_eq!((e.permissions, e.pid), (Some(0o4755), Some(me)));
    assert_eq!(e.previous_permissions, Some(0o644));

    // Deleted: what it was.
    std::fs::remove_file(&moved).unwrap();
    let e = next(&mut s.rx, &moved, FileOperation::Delete, None).await;
    assert_eq!(e.pid, Some(me));
    assert_eq!(e.file_hash, None);
    assert_eq!(
        e.previous_hash.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );

    // A directory: its type.
    let sub = d.join("cron.d");
    std::fs::create_dir(&sub).unwrap();
    let e = next(&mut s.rx, &sub, FileOperation::Create, None).await;
    assert_eq!(e.file_type, Some(FileType::Directory));

    // A directory named once, then renamed: what is written in it after
    // has the new path (the paths kept of directories are let go).
    std::fs::write(sub.join("a"), b"1").unwrap();
    next(&mut s.rx, sub.join("a"), FileOperation::CloseWrite, None).await;
    let renamed = d.join("cron.daily");
    std::fs::rename(&sub, &renamed).unwrap();
    std::fs::write(renamed.join("b"), b"2").unwrap();
    // Its file known under the old path is not news under the new one.
    let (known, written) = (
        renamed.join("a").to_string_lossy().into_owned(),
        renamed.join("b").to_string_lossy().into_owned(),
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.rx.recv().await {
                Some(CollectionEvent::Filesystem(f)) => {
                    assert!(f.path != known, "{f:?}");
                    if f.path == written && f.operation == FileOperation::CloseWrite {
                        break;
                    }
                }
                Some(_) => {}
                None => panic!("the source ended"),
            }
        }
    })
    .await
    .unwrap();

    s.stop.cancel();
    s.task.await.unwrap().unwrap();
    assert_eq!(s.counters.parse_errors.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_ext4_gives_its_event_with_path_and_pid() {
    if root() {
        every_operation_on("/var/tmp").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_tmpfs_gives_its_event_with_path_and_pid() {
    if root() && Path::new("/dev/shm").is_dir() {
        every_operation_on("/dev/shm").await;
    }
}

/// A watch root (a test's, as a container's root filesystem would be):
/// events name paths as that system sees them, with the root; a watched
/// path made after the start (`/root/.ssh`) and a home's `.ssh` matched by
/// `*` are seen; what is under the root but not watched is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_watch_root_paths_are_the_watched_systems_and_later_paths_are_seen() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let r = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir_all(r.join("etc/cron.d")).unwrap();
    std::fs::create_dir_all(r.join("home")).unwrap();
    std::fs::create_dir_all(r.join("var")).unwrap();
    let config = FsmondConfig {
        watch: ["/etc", "/root/.ssh", "/home/*/.ssh"]
            .map(PathBuf::from)
            .to_vec(),
        watch_root: r.clone(),
        ..config(&r, true)
    };
    let mut s = start_probing(config, &r.join("etc/.probe"), "/etc/.probe").await;
    let root = Some(r.to_string_lossy().into_owned());

    // Under the root but not watched: nothing, before the watched write's
    // events.
    std::fs::write(r.join("var/not-watched"), b"x").unwrap();
    std::fs::write(r.join("home/notes"), b"x").unwrap();
    std::fs::write(r.join("etc/cron.d/job"), b"* * * * * root id\n").unwrap();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.rx.recv()).await {
            Ok(Some(CollectionEvent::Filesystem(f))) => {
                assert!(f.path.starts_with("/etc/"), "{f:?}");
                if f.path == "/etc/cron.d/job" && f.operation == FileOperation::CloseWrite {
                    break f;
                }
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(e.root, root);
    assert_eq!(e.pid, Some(std::process::id()));

    std::fs::create_dir_all(r.join("root/.ssh")).unwrap();
    std::fs::write(r.join("root/.ssh/authorized_keys"), b"ssh-ed25519 AAAA").unwrap();
    let e = next(
        &mut s.rx,
        "/root/.ssh/authorized_keys",
        FileOperation::CloseWrite,
        None,
    )
    .await;
    assert_eq!(e.root, root);

    std::fs::create_dir_all(r.join("home/ann/.ssh")).unwrap();
    std::fs::write(r.join("home/ann/.ssh/authorized_keys"), b"k").unwrap();
    next(
        &mut s.rx,
        "/home/ann/.ssh/authorized_keys",
        FileOperation::CloseWrite,
        None,
    )
    .await;
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

/// A busy directory outside the watched paths is dropped by the kernel
/// (an ignore mark) after its first record; a file renamed out of it into
/// a watched path is seen all the same, and so is the directory itself
/// moved into one: what it holds, and what is written in it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwatched_busy_directory_is_dropped_by_the_kernel_but_moves_out_of_it_are_seen() {
    if !root() {
        return;
    }
    // A tmpfs of its own: what other tests write elsewhere (their storms)
    // would be records too.
    let tmpfs = Tmpfs::mount();
    let base = std::fs::canonicalize(tmpfs.0.path()).unwrap();
    let (watched, hot) = (base.join("watched"), base.join("hot"));
    std::fs::create_dir(&watched).unwrap();
    std::fs::create_dir(&hot).unwrap();
    let mut s = start(&watched, config(&watched, true)).await;
    let mut probe = 0;
    let mut settle = || {
        probe += 1;
        let p = watched.join(format!("settle{probe}"));
        std::fs::write(&p, b"s").unwrap();
        p
    };
    std::fs::write(hot.join("first"), b"1").unwrap();
    let p = settle();
    next(&mut s.rx, &p, FileOperation::CloseWrite, None).await;
    assert!(
        s.counters.ignored_dirs.get() >= 1,
        "the busy directory was not ignored"
    );
    let records = s.counters.records.get();
    for i in 0..200 {
        std::fs::write(hot.join(format!("w{i}")), i.to_string()).unwrap();
    }
    let p = settle();
    next(&mut s.rx, &p, FileOperation::CloseWrite, None).await;
    let read = s.counters.records.get() - records;
    assert!(
        read <= 5,
        "{read} records read for 200 writes in an ignored directory"
    );

    // A file renamed out of it into the watched path.
    std::fs::write(hot.join("job"), b"* * * * * root id\n").unwrap();
    std::fs::rename(hot.join("job"), watched.join("job")).unwrap();
    let e = next(&mut s.rx, watched.join("job"), FileOperation::Rename, None).await;
    assert_eq!(e.old_path.as_deref(), hot.join("job").to_str());
    assert!(e.file_hash.is_some());

    // The directory itself moved in: what it holds, what is written after.
    let moved = watched.join("hot");
    std::fs::rename(&hot, &moved).unwrap();
    next(&mut s.rx, &moved, FileOperation::Rename, None).await;
    next(&mut s.rx, moved.join("first"), FileOperation::Create, None).await;
    std::fs::write(moved.join("after"), b"2").unwrap();
    let e = next(
        &mut s.rx,
        moved.join("after"),
        FileOperation::CloseWrite,
        None,
    )
    .await;
    assert_eq!(e.pid, Some(std::process::id()));
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

/// A watched directory moved out of the watched paths takes its files out
/// of the baseline: moved back in, what it holds is reported again (the
/// baseline had kept them, and their return was no news).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_out_and_back_in_is_reported_again() {
    if !root() {
        return;
    }
    let tmpfs = Tmpfs::mount();
    let base = std::fs::canonicalize(tmpfs.0.path()).unwrap();
    let (watched, outside) = (base.join("watched"), base.join("outside"));
    std::fs::create_dir_all(watched.join("cron.d")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(watched.join("cron.d/job"), b"* * * * * root id\n").unwrap();
    let mut s = start(&watched, config(&watched, true)).await;

    std::fs::rename(watched.join("cron.d"), outside.join("cron.d")).unwrap();
    let e = next(
        &mut s.rx,
        outside.join("cron.d"),
        FileOperation::Rename,
        None,
    )
    .await;
    assert_eq!(e.old_path.as_deref(), watched.join("cron.d").to_str());
    std::fs::rename(outside.join("cron.d"), watched.join("cron.d")).unwrap();
    next(
        &mut s.rx,
        watched.join("cron.d"),
        FileOperation::Rename,
        None,
    )
    .await;
    let e = next(
        &mut s.rx,
        watched.join("cron.d/job"),
        FileOperation::Create,
        None,
    )
    .await;
    assert!(e.file_hash.is_some(), "{e:?}");
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_100000_creates_arrives_whole_or_its_overflow_is_rescanned() {
    if root() {
        storm(100_000, Duration::ZERO, config(Path::new("/"), false)).await;
    }
}

/// fsmond reading its queue only 10 s after each first record, while the
/// storm goes on for 14 s at least: the queue (16,384 records) overflows
/// (unless the writer makes fewer than 1,700 files a second; on a busy
/// machine, 4 s and fewer than 4,100 a second were seen), the kernel
/// keeps later events of files whose creation it dropped, and the rescans
/// race the creates; every file must be reported created all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_that_overflows_the_queue_is_found_whole_by_the_rescans() {
    if root() {
        let overflows = storm(
            100_000,
            Duration::from_secs(14),
            FsmondConfig {
                batch_window_ms: 10_000,
                ..config(Path::new("/"), false)
            },
        )
        .await;
        assert!(overflows >= 1, "the queue did not overflow");
    }
}

/// Creates files in a watched directory as fast as one thread can (`n`,
/// and for `at_least` if that takes less) and waits for a create of each;
/// the overflows counted.
#[allow(clippy::many_single_char_names)] // n, d, s, i, m: the storm's own
async fn storm(n: usize, at_least: Duration, config: FsmondConfig) -> u64 {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path().to_path_buf();
    let mut s = start(&d, config).await;
    let storm = d.join("storm");
    std::fs::create_dir(&storm).unwrap();
    let name = |i: usize| storm.join(format!("f{i}")).to_string_lossy().into_owned();
    // How many were made, once all are (0 until then).
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (storm, made) = (storm.clone(), made.clone());
        std::thread::spawn(move || {
            let start = tokio::time::Instant::now();
            let mut i = 0;
            while i < n || start.elapsed() < at_least {
                std::fs::File::create(storm.join(format!("f{i}"))).unwrap();
                i += 1;
            }
            made.store(i, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut from_events = 0usize;
    let all = |seen: &HashSet<String>| {
        let m = made.load(std::sync::atomic::Ordering::SeqCst);
        m > 0 && seen.len() >= m && (0..m).all(|i| seen.contains(&name(i)))
    };
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while !all(&seen) {
            let tick = tokio::time::sleep(Duration::from_millis(200));
            tokio::select! {
                () = tick => {}
                e = s.rx.recv() => match e {
                    Some(CollectionEvent::Filesystem(f)) if f.operation == FileOperation::Create => {
                        let by_fanotify = f.pid.is_some();
                        if f.path.starts_with(storm.to_str().unwrap()) && f.path != storm.to_str().unwrap() && seen.insert(f.path) && by_fanotify {
                            from_events += 1;
                        }
                    }
                    Some(_) => {}
                    None => panic!("the source ended"),
                },
            }
        }
    })
    .await;
    writer.join().unwrap();
    let m = made.load(std::sync::atomic::Ordering::SeqCst);
    let overflows = s.counters.overflows.get();
    if waited.is_err() {
        let missed: Vec<String> = (0..m).map(name).filter(|p| !seen.contains(p)).collect();
        panic!(
            "{} of {m} files never reported ({overflows} overflows, {} scans): {:?}",
            missed.len(),
            s.counters.rescans.get(),
            &missed[..missed.len().min(10)]
        );
    }
    eprintln!(
        "storm: {from_events} of {m} creates from fanotify, {} from rescans or records without their creation; {overflows} overflows, {} scans",
        m - from_events,
        s.counters.rescans.get()
    );
    if from_events < m {
        assert!(overflows >= 1, "events were lost without an overflow");
        assert!(
            s.counters.rescans.get() >= 2,
            "lost events were not rescanned"
        );
    }
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
    overflows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_passes_the_conformance_kit() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path().to_path_buf();
    let source = FsmondSource::new(config(&d, true), FsmondCounters::default()).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (d, done) = (d.clone(), done.clone());
        // Load for the source to see while the kit runs it.
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::write(d.join(format!("w{}", i % 8)), i.to_ne_bytes()).unwrap();
                i += 1;
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let kit = ConformanceConfig::wanting(5, Duration::from_secs(5));
    let report = check_source(Arc::new(source), &kit).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(report.kinds(), [EventKind::Filesystem]);
}

/// A tmpfs mounted on a temporary directory for one test (nothing else
/// writes there), unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "fsmond-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success());
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Where the recorded fixture is.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fanotify-tmpfs.bin")
}

/// The operations the fixture records, in order, on a fresh tmpfs: each
/// followed by a read of what the kernel queued (so that nothing merges
/// across them). The parser's test over the fixture expects their records.
fn fixture_operations(dir: &Path, mut after_each: impl FnMut()) {
    std::fs::write(dir.join("f"), b"abc").unwrap();
    after_each();
    std::fs::rename(dir.join("f"), dir.join("g")).unwrap();
    after_each();
    std::fs::set_permissions(dir.join("g"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    after_each();
    std::fs::create_dir(dir.join("d")).unwrap();
    after_each();
    std::fs::remove_file(dir.join("g")).unwrap();
    after_each();
    std::fs::remove_dir(dir.join("d")).unwrap();
    after_each();
}

/// Records `tests/fixtures/fanotify-tmpfs.bin`: what `read(2)` of a
/// `FAN_REPORT_DFID_NAME` group gives for [`fixture_operations`] on a
/// tmpfs mounted for it (nothing else writes there), the reads one after
/// another. Run by hand, as root, when the fixture is to be made again:
/// `cargo test -p fsmond --test fanotify -- --ignored record_the_parser_fixture`.
#[test]
#[ignore = "records the parser fixture from the kernel: by hand, as root"]
fn record_the_parser_fixture() {
    use std::os::fd::AsFd as _;
    assert!(root(), "recording the fixture needs root");
    let tmpfs = Tmpfs::mount();
    let d = tmpfs.0.path();
    let group = fsmond::sys::Group::new(false).unwrap();
    let fd = fsmond::sys::open_mount(d).unwrap();
    group
        .mark_filesystem(
            fd.as_fd(),
            d,
            fsmond::sys::BASE_MASK | fsmond::sys::FAN_RENAME,
        )
        .unwrap();
    let mut recorded = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    fixture_operations(d, || {
        let n = group.read(&mut buf).unwrap();
        assert!(n > 0, "no record");
        recorded.extend_from_slice(&buf[..n]);
    });
    drop(fd);
    drop(group);
    drop(tmpfs);
    std::fs::create_dir_all(fixture().parent().unwrap()).unwrap();
    std::fs::write(fixture(), &recorded).unwrap();
    eprintln!(
        "{} bytes recorded in {}",
        recorded.len(),
        fixture().display()
    );
}

/// The recorded fixture parses to the records of [`fixture_operations`]:
/// one process, one directory (every handle the same, on one
/// filesystem), each operation's mask and names, a rename's both.
/// Recorded on `x86_64` (Linux 6.18): the records are in its byte order.
#[test]
#[cfg(target_endian = "little")]
fn the_records_recorded_from_the_kernel_parse_to_their_operations() {
    use fsmond::record::{parse_records, FidKind};
    let bytes = std::fs::read(fixture()).unwrap();
    let records = parse_records(&bytes).unwrap();
    let (create, modify, close_write, attrib, delete, ondir) =
        (0x100u64, 0x2u64, 0x8u64, 0x4u64, 0x200u64, 0x4000_0000u64);
    let rename = fsmond::sys::FAN_RENAME;
    let got: Vec<(u64, Vec<(FidKind, String)>)> = records
        .iter()
        .map(|r| {
            let names = r
                .fids
                .iter()
                .map(|f| {
                    (
                        f.kind,
                        String::from_utf8_lossy(f.name.unwrap_or(b"")).into_owned(),
                    )
                })
                .collect();
            (r.mask, names)
        })
        .collect();
    let named = |kind, name: &str| (kind, name.to_owned());
    assert_eq!(
        got,
        [
            (
                create | modify | close_write,
                vec![named(FidKind::DirName, "f")]
            ),
            (
                rename,
                vec![
                    named(FidKind::OldDirName, "f"),
                    named(FidKind::NewDirName, "g")
                ]
            ),
            (attrib, vec![named(FidKind::DirName, "g")]),
            (create | ondir, vec![named(FidKind::DirName, "d")]),
            (delete, vec![named(FidKind::DirName, "g")]),
            (delete | ondir, vec![named(FidKind::DirName, "d")]),
        ]
    );
    let pid = records[0].pid;
    assert!(
        pid > 0
            && records
                .iter()
                .all(|r| r.pid == pid && r.fd == fsmond::record::NOFD)
    );
    let fids: Vec<_> = records.iter().flat_map(|r| r.fids.iter()).collect();
    assert!(fids.iter().all(|f| (f.fsid, f.handle_type, f.handle)
        == (fids[0].fsid, fids[0].handle_type, fids[0].handle)));
    // What fsmond makes of them: each operation once, in order.
    let ops: Vec<Vec<FileOperation>> = records
        .iter()
        .map(|r| fsmond::source::operations(r.mask))
        .collect();
    assert_eq!(
        ops[0],
        [
            FileOperation::Create,
            FileOperation::Modify,
            FileOperation::CloseWrite
        ]
    );
    assert_eq!(ops[1], [FileOperation::Rename]);
    assert_eq!(ops[5], [FileOperation::Delete]);
}
