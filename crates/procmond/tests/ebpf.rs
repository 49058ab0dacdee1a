//! The eBPF tier against the real kernel: loads the committed object,
//! attaches to the tracepoints, and checks what real processes produce.
//! Root only (`CAP_BPF`, `CAP_PERFMON`); elsewhere each test says why it skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use procmond::ebpf::{EbpfConfig, EbpfCounters, EbpfMessage, EbpfReaderHandle, EbpfTier, Record};
use procmond::snapshot::{ProcReader, ReadOptions};
use tokio::sync::mpsc;

mod support;

/// How long a test waits for an event before it fails.
const WAIT: Duration = Duration::from_secs(20);

fn privileged(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("{test}: skipped: loading eBPF programs needs root (CAP_BPF, CAP_PERFMON)");
    false
}

fn start(config: &EbpfConfig, queue: usize) -> (EbpfReaderHandle, Records) {
    let tier = EbpfTier::load(config).expect("the eBPF tier loads on this kernel");
    let (tx, rx) = mpsc::channel(queue);
    let handle = tier.spawn_reader(tx, EbpfCounters::default()).unwrap();
    (
        handle,
        Records {
            rx,
            seen: Vec::new(),
        },
    )
}

/// The reader's records, kept in order until a test picks them.
struct Records {
    rx: mpsc::Receiver<EbpfMessage>,
    seen: Vec<Record>,
}

impl Records {
    /// The first record, seen or to come, that `want` picks (taken out);
    /// fails after [`WAIT`].
    async fn find<T>(&mut self, what: &str, mut want: impl FnMut(&Record) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((i, found)) = self
                .seen
                .iter()
                .enumerate()
                .find_map(|(i, r)| want(r).map(|f| (i, f)))
            {
                self.seen.remove(i);
                return found;
            }
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
                .expect("the reader is running");
            if let EbpfMessage::Events(records) = msg {
                self.seen.extend(records);
            }
        }
    }
}

/// `path` with every symlink resolved.
fn real(path: &str) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap()
}

fn marker(test: &str) -> String {
    format!("procmond-ebpf-{test}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_millisecond_process_is_seen_with_argv_exe_and_exit_code() {
    if !privileged("short_lived") {
        return;
    }
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let mark = marker("short");
    // /bin/false: exec, exit(1) at once; gone long before /proc could be read.
    let status = Command::new("/bin/false")
        .args([mark.as_str(), "two words", ""])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let exec = rx
        .find("exec of /bin/false", |r| match r {
            Record::Exec(e) if e.argv.contains(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(exec.filename, "/bin/false");
    // The kernel's resolved path, symlinks followed, as /proc/<pid>/exe says.
    assert_eq!(std::path::Path::new(&exec.exe), real("/bin/false"));
    assert!(!exec.exe_truncated && !exec.exe_unlinked);
    assert_eq!(exec.argv, ["/bin/false", mark.as_str(), "two words", ""]);
    assert_eq!(exec.argc, 4);
    assert!(!exec.argv_truncated && !exec.setuid && !exec.setgid);
    assert_eq!(exec.task.ppid, std::process::id());
    assert_eq!(exec.task.comm, "false");
    let pid = exec.task.tgid;
    let exit = rx
        .find("exit of /bin/false", |r| match r {
            Record::Exit(t) if t.tgid == pid => Some(t.clone()),
            _ => None,
        })
        .await;
    // The raw wait status, as the connector reports it: exit(1) is 1 << 8.
    assert_eq!(exit.exit_code, 1 << 8);
    let books = handle.stop().unwrap();
    assert!(books.balanced(), "{books:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_and_exec_keys_equal_the_keys_from_proc() {
    if !privileged("keys") {
        return;
    }
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    // Found by its pid (sleep takes no marker argument: it would add it up).
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let exec = rx
        .find("exec of sleep", |r| match r {
            Record::Exec(e) if e.task.tgid == pid => Some(e.clone()),
            _ => None,
        })
        .await;
    let fork = rx
        .find("fork of sleep", |r| match r {
            Record::Fork(t) if t.tgid == pid => Some(t.clone()),
            _ => None,
        })
        .await;
    let reader = ProcReader::new(ReadOptions::default()).unwrap();
    let from_proc = reader.read_process(pid).unwrap();
    let from_bpf = exec.to_process_event(&reader);
    // The fork's event is made from its record alone, as a read of the
    // child's stat line would be, with the ids beside.
    let forked = fork.to_fork_event(&reader);
    assert_eq!(forked.read, collector_core::ReadDepth::StatOnly);
    assert_eq!(forked.process_key, from_proc.process_key);
    assert_eq!(forked.start_time, from_proc.start_time);
    assert_eq!(forked.ppid, from_proc.ppid);
    assert_eq!(
        (forked.user_id, forked.euid, forked.gid),
        (from_proc.user_id, from_proc.euid, from_proc.gid)
    );
    let early = child.try_wait().unwrap();
    assert!(early.is_none(), "sleep 30 ended early: {early:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(from_proc.process_key.is_some());
    assert_eq!(from_bpf.process_key, from_proc.process_key);
    assert_eq!(from_bpf.start_time, from_proc.start_time);
    assert_eq!(from_bpf.ppid, from_proc.ppid);
    assert_eq!(
        from_bpf.command_line, from_proc.command_line,
        "{exec:?} {from_proc:?}"
    );
    assert_eq!(exec.filename, "/bin/sleep");
    // The same executable path as the other tiers read from /proc.
    assert!(from_proc.executable_path.is_some());
    assert_eq!(from_bpf.executable_path, from_proc.executable_path);
    drop(handle);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_argv_is_truncated_and_flagged() {
    if !privileged("truncation") {
        return;
    }
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let mark = marker("many");
    // 10,000 arguments: about 20 KB of argv.
    let mut many = vec![mark.clone()];
    many.extend(std::iter::repeat_n("x".to_owned(), 10_000));
    Command::new("/bin/true").args(&many).status().unwrap();
    let exec = rx
        .find("exec with 10,000 args", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert!(exec.argv_truncated);
    assert_eq!(exec.argc, 10_002);
    let bytes: usize = exec.argv.iter().map(|a| a.len() + 1).sum();
    assert!(bytes <= 4096 + 1, "{bytes} bytes of argv");
    assert!(exec.argv.len() > 1000 && exec.argv.len() < 10_002);

    // One 64 KiB argument: cut, and flagged.
    let mark = marker("huge");
    let huge = "a".repeat(64 * 1024);
    Command::new("/bin/true")
        .args([mark.as_str(), huge.as_str()])
        .status()
        .unwrap();
    let exec = rx
        .find("exec with a 64 KiB arg", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert!(exec.argv_truncated);
    assert_eq!(exec.argc, 3);
    assert_eq!(exec.argv.len(), 3);
    let cut = &exec.argv[2];
    assert!(cut.len() < huge.len() && cut.bytes().all(|b| b == b'a'));
    drop(handle);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executable_deeper_than_the_walk_is_flagged_not_cut_silently() {
    if !privileged("deep") {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut deep = dir.path().to_path_buf();
    for _ in 0..45 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let program = deep.join("deep-true");
    std::fs::copy("/bin/true", &program).unwrap();
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let mark = marker("deep");
    Command::new(&program).arg(&mark).status().unwrap();
    let exec = rx
        .find("exec of the deep copy", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert!(exec.exe_truncated, "{exec:?}");
    assert!(exec.exe.ends_with("/d/d/deep-true"), "{exec:?}");
    // The event falls back to the whole filename as executed.
    let event = exec.to_process_event(&ProcReader::new(ReadOptions::default()).unwrap());
    assert_eq!(event.executable_path.as_deref(), program.to_str());
    drop(handle);
}

/// The verifier gives up with EAGAIN while a signal is pending on the loading
/// thread; in a process that handles SIGCHLD (tokio's child reaping) a fork
/// storm sends one per exiting child. A flood of signals aimed at the loading
/// thread must not make the tier unavailable (it did in CI).
#[test]
fn loading_goes_through_a_flood_of_signals_at_the_loading_thread() {
    use nix::sys::pthread::{pthread_kill, pthread_self};
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !privileged("signals") {
        return;
    }
    // A handler, so that SIGUSR1 is delivered (not ignored, not fatal).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _handler = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        })
        .unwrap();
    let me = pthread_self();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pthread_kill(me, Signal::SIGUSR1).unwrap();
                sent += 1;
            }
            sent
        }
    });
    let mut loads = Vec::new();
    for _ in 0..3 {
        loads.push(EbpfTier::load(&EbpfConfig::default()).map(drop));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    assert!(sent > 100, "the flood sent only {sent} signals");
    for load in loads {
        load.expect("the eBPF tier loads while signals keep arriving");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setuid_binary_run_by_nobody_is_flagged() {
    if !privileged("setuid") {
        return;
    }
    // A root-owned setuid copy of /bin/true, in a directory nobody can enter.
    let dir = tempfile::Builder::new()
        .prefix("procmond-ebpf-suid")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let suid = dir.path().join("suid-true");
    std::fs::copy("/bin/true", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let mark = marker("suid");
    let status = Command::new(&suid)
        .arg(&mark)
        .uid(65_534)
        .gid(65_534)
        .status()
        .unwrap();
    assert!(status.success());
    let exec = rx
        .find("exec of the setuid copy", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!((exec.task.uid, exec.task.euid), (65_534, 0));
    assert!(exec.setuid && !exec.setgid, "{exec:?}");
    assert_eq!(exec.filename, suid.to_str().unwrap());
    assert_eq!(
        std::path::Path::new(&exec.exe),
        real(suid.to_str().unwrap())
    );

    // The same binary without the bit: not flagged.
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = marker("nosuid");
    Command::new(&suid)
        .arg(&mark)
        .uid(65_534)
        .gid(65_534)
        .status()
        .unwrap();
    let exec = rx
        .find("exec of the plain copy", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!((exec.task.uid, exec.task.euid), (65_534, 65_534));
    assert!(!exec.setuid);
    drop(handle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_storm_into_a_tiny_ring_buffer_keeps_the_books_exact() {
    if !privileged("storm") {
        return;
    }
    // One page of ring buffer, and a reader that cannot hand anything on
    // (queue of one, never received from): records must be dropped.
    let config = EbpfConfig {
        ring_buffer_bytes: u32::try_from(rustix::param::page_size()).unwrap(),
        ..EbpfConfig::default()
    };
    let (handle, rx) = start(&config, 1);
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..300 {
        children.push(Command::new("/bin/true").spawn().unwrap());
    }
    for mut c in children {
        c.wait().unwrap();
    }
    // Every process above: a fork, an exec and an exit record at least.
    let storm = started.elapsed();
    let books = handle.stop().unwrap();
    drop(rx);
    eprintln!("storm of 300 in {storm:?}: {books:?}");
    assert!(books.produced >= 900, "{books:?}");
    assert!(
        books.dropped > 0,
        "a one-page ring buffer dropped nothing: {books:?}"
    );
    assert!(books.delivered > 0, "{books:?}");
    assert_eq!(books.produced, books.delivered + books.dropped, "{books:?}");
}

#[test]
fn a_ring_buffer_size_that_is_not_a_power_of_two_of_pages_is_refused() {
    // Checked before anything is loaded: no privilege needed.
    for bytes in [0, 4095, 3 * 4096] {
        let config = EbpfConfig {
            ring_buffer_bytes: bytes,
            ..EbpfConfig::default()
        };
        let err = EbpfTier::load(&config).unwrap_err();
        assert!(
            matches!(
                err,
                procmond::ebpf::EbpfError::Config {
                    field: "ring_buffer_bytes",
                    ..
                }
            ),
            "{bytes}: {err}"
        );
    }
}

// The collector on each tier: what reaches its subscribers.

mod collector {
    use std::process::Command;
    use std::time::Duration;

    use collector_core::testing::recv_until;
    use collector_core::CaptureTier;
    use collector_core::{CollectionEvent, ProcessEvent, ProcessEventType};
    use procmond::source::TierChoice;
    use procmond::{ProcmondMonitorCollector, ProcmondMonitorConfig, ProcmondStatsHandle};

    use super::support::overrun_and_reconcile;
    use super::{marker, privileged, WAIT};

    struct Running {
        inner: collector_core::testing::Running,
        stats: ProcmondStatsHandle,
        metrics: collector_core::metrics::Registry,
    }

    /// A collector with procmond, once its first snapshot has arrived (the
    /// tier is chosen and attached by then).
    async fn start(config: ProcmondMonitorConfig) -> Running {
        let source = ProcmondMonitorCollector::without_database(config).unwrap();
        let stats = source.stats_handle();
        let metrics = collector_core::metrics::Registry::new();
        source.register_metrics(&metrics);
        let mut inner = collector_core::testing::Running::start(Box::new(source)).unwrap();
        recv_until(&mut inner.events, |e| {
            matches!(e, CollectionEvent::Process(p) if p.event_type == ProcessEventType::Snapshot)
        })
        .await
        .expect("collector ended before its first snapshot");
        Running {
            inner,
            stats,
            metrics,
        }
    }

    impl Running {
        async fn wait_for(
            &mut self,
            what: &str,
            want: impl Fn(&ProcessEvent) -> bool,
        ) -> ProcessEvent {
            let found = self
                .inner
                .wait_for(
                    WAIT,
                    |e| matches!(e, CollectionEvent::Process(p) if want(p)),
                )
                .await;
            match found {
                Some(CollectionEvent::Process(p)) => p,
                _ => panic!("timed out waiting for {what}, or the collector ended"),
            }
        }

        async fn stop(self) {
            self.inner.stop().await.unwrap();
        }
    }

    fn config(tier: TierChoice) -> ProcmondMonitorConfig {
        let mut c = ProcmondMonitorConfig::default();
        c.base_config.collection_interval = Duration::from_secs(3600);
        c.process_config.tier = tier;
        c
    }

    /// Runs `/bin/false <marker> two words` and waits for its exec event
    /// (found by pid: on the connector tier it may carry nothing else, the
    /// process being gone before /proc was read).
    async fn short_lived_exec(running: &mut Running, test: &str) -> (String, ProcessEvent) {
        let mark = marker(test);
        let mut child = Command::new("/bin/false")
            .args([mark.as_str(), "two", "words"])
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let exec = running
            .wait_for("the exec of /bin/false", move |p| {
                p.event_type == ProcessEventType::Exec && p.pid == pid
            })
            .await;
        (mark, exec)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn by_default_the_ebpf_tier_gives_a_short_lived_exec_its_argv_and_exe() {
        if !privileged("collector_ebpf") {
            return;
        }
        let mut running = start(config(TierChoice::Auto)).await;
        assert_eq!(running.stats.tier(), Some(CaptureTier::Ebpf));
        let (mark, exec) = short_lived_exec(&mut running, "collector").await;
        // Gone within a millisecond, yet argv and executable are there: the
        // kernel's record, not /proc.
        assert_eq!(
            exec.command_line,
            ["/bin/false", mark.as_str(), "two", "words"]
        );
        let real = std::fs::canonicalize("/bin/false").unwrap();
        assert_eq!(exec.executable_path.as_deref(), real.to_str());
        assert!(exec.process_key.is_some() && exec.start_time.is_some());
        assert_eq!(exec.lifecycle().tier, Some(CaptureTier::Ebpf));
        assert!(!exec.lifecycle().argv_truncated);
        let pid = exec.pid;
        let exit = running
            .wait_for("its exit", |p| {
                p.event_type == ProcessEventType::Exit && p.pid == pid
            })
            .await;
        assert_eq!(exit.exit_code, Some(1 << 8));
        assert_eq!(exit.process_key, exec.process_key);
        assert_eq!(exit.lifecycle().tier, Some(CaptureTier::Ebpf));

        // A cut argv says so on the event.
        let mut child = Command::new("/bin/true")
            .args(std::iter::repeat_n("y", 5_000))
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let exec = running
            .wait_for("the exec with 5,000 args", |p| {
                p.event_type == ProcessEventType::Exec && p.pid == pid
            })
            .await;
        assert!(exec.lifecycle().argv_truncated);
        assert!(exec.command_line.len() < 5_001);
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connector_tier_can_be_forced() {
        if !privileged("collector_connector") {
            return;
        }
        let mut running = start(config(TierChoice::Connector)).await;
        assert_eq!(running.stats.tier(), Some(CaptureTier::Connector));
        let (_, exec) = short_lived_exec(&mut running, "connector").await;
        assert_eq!(exec.event_type, ProcessEventType::Exec);
        assert_eq!(exec.lifecycle().tier, Some(CaptureTier::Connector));
        // Nothing went through the eBPF tier.
        assert_eq!(running.stats.kernel_accounting().delivered, 0);
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_ebpf_cannot_load_auto_falls_back_to_the_connector() {
        if !privileged("collector_fallback") {
            return;
        }
        // A ring buffer the loader refuses: the eBPF tier fails to start.
        let mut c = config(TierChoice::Auto);
        c.process_config.ebpf.ring_buffer_bytes = 12_345;
        let mut running = start(c).await;
        assert_eq!(running.stats.tier(), Some(CaptureTier::Connector));
        short_lived_exec(&mut running, "fallback").await;
        running.stop().await;
    }

    #[test]
    fn refused_bpf_makes_auto_fall_back_to_the_connector() {
        if !privileged("collector_refused") {
            return;
        }
        // aya probes kernel features at the first load of the process: with
        // every capability, so the refused load below cannot skew it.
        drop(super::EbpfTier::load(&super::EbpfConfig::default()).unwrap());
        // The whole collector, all its threads, with only the three kept
        // capabilities: the kernel refuses BPF (EPERM).
        let tier = super::with_only(procmond::privileges::KEPT, || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut running = start(config(TierChoice::Auto)).await;
                let tier = running.stats.tier();
                let (_, exec) = short_lived_exec(&mut running, "refused").await;
                running.stop().await;
                (tier, exec.lifecycle().tier)
            })
        });
        assert_eq!(
            tier,
            (Some(CaptureTier::Connector), Some(CaptureTier::Connector))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polling_can_be_forced() {
        let running = start(config(TierChoice::Polling)).await;
        assert_eq!(running.stats.tier(), Some(CaptureTier::Polling));
        assert!(!running.stats.monitor_stats().realtime_active);
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kernel_drops_are_counted_and_reconciled_at_once() {
        if !privileged("collector_drops") {
            return;
        }
        // One page of ring buffer and a one-message queue: a burst drops.
        let mut c = config(TierChoice::Ebpf);
        c.process_config.ebpf.ring_buffer_bytes =
            u32::try_from(rustix::param::page_size()).unwrap();
        c.base_config.max_events_in_flight = 1;
        let Running {
            inner:
                collector_core::testing::Running {
                    handle,
                    events: mut sub,
                    run,
                },
            stats,
            metrics,
        } = start(c).await;
        let drain = tokio::spawn(async move { while sub.recv_batch().await.is_some() {} });
        // The drop is counted and answered with a reconciliation snapshot.
        overrun_and_reconcile(&stats).await;
        let books = stats.kernel_accounting();
        assert!(books.dropped > 0, "{books:?}");
        handle.shutdown();
        run.await.unwrap().unwrap();
        drain.await.unwrap();
        // Stopped: the programs are detached and the books balance.
        let books = stats.kernel_accounting();
        assert!(books.balanced(), "{books:?}");
        let kernel = [("stage", "kernel")];
        let dropped = [("stage", "kernel"), ("reason", "ringbuf_full")];
        assert_eq!(
            metrics.value("daemoneye_events_dropped_total", &dropped),
            Some(books.dropped)
        );
        assert_eq!(
            metrics.value("daemoneye_kernel_events_produced_total", &kernel),
            Some(books.produced)
        );
        assert_eq!(
            metrics.value("daemoneye_kernel_events_delivered_total", &kernel),
            Some(books.delivered)
        );
        let tier = |t| [("source", "procmond"), ("tier", t)];
        // Stopped, the collector is no longer on any tier's real-time path,
        // but the gauge still names the one it ran on.
        assert_eq!(
            metrics.value("daemoneye_capture_tier", &tier("ebpf")),
            Some(1)
        );
        assert_eq!(
            metrics.value("daemoneye_capture_tier", &tier("connector")),
            Some(0)
        );
    }
}

/// Runs `f` on a thread holding only `caps` (capabilities are per thread;
/// the threads it starts inherit them).
fn with_only<T: Send + 'static>(
    caps: rustix::thread::CapabilitySet,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: caps,
                permitted: caps,
                inheritable: rustix::thread::CapabilitySet::empty(),
            },
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn loading_needs_cap_bpf_and_cap_perfmon_and_attached_programs_run_without_them() {
    use rustix::thread::CapabilitySet;
    if !privileged("privileges") {
        return;
    }
    // aya probes the kernel's features once per process, at the first load:
    // with every capability here, as procmond does, so that the refused
    // load below cannot leave it believing the kernel lacks them.
    drop(EbpfTier::load(&EbpfConfig::default()).unwrap());
    // What the collector keeps after attaching is not enough to load.
    let err = with_only(procmond::privileges::KEPT, || {
        EbpfTier::load(&EbpfConfig::default()).map(drop)
    })
    .unwrap_err();
    assert!(
        matches!(err, procmond::ebpf::EbpfError::PermissionDenied { .. }),
        "{err}"
    );
    // Adding CAP_BPF and CAP_PERFMON is (no CAP_SYS_ADMIN) ...
    let mark = marker("caps");
    let m = mark.clone();
    let load = procmond::privileges::KEPT | CapabilitySet::BPF | CapabilitySet::PERFMON;
    let seen = with_only(load, move || {
        let tier = EbpfTier::load(&EbpfConfig::default()).unwrap();
        // ... and once attached, the programs and the reader work on with
        // only what the collector keeps.
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: procmond::privileges::KEPT,
                permitted: procmond::privileges::KEPT,
                inheritable: CapabilitySet::empty(),
            },
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let handle = tier.spawn_reader(tx, EbpfCounters::default()).unwrap();
        Command::new("/bin/true").arg(&m).status().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut records = Records {
            rx,
            seen: Vec::new(),
        };
        let seen = runtime.block_on(records.find("exec with only the kept capabilities", |r| {
            matches!(r, Record::Exec(e) if e.argv.get(1) == Some(&m)).then_some(true)
        }));
        let books = handle.stop().unwrap();
        assert!(books.balanced(), "{books:?}");
        seen
    });
    assert!(
        seen,
        "no exec of /bin/true {mark} with only the kept capabilities"
    );
}

/// Execs `/proc/self/fd/N` of `file` (read-only, so the exec is not refused
/// as busy) with `mark`, and returns the exec record.
async fn exec_through_fd(
    rx: &mut Records,
    file: &std::fs::File,
    mark: &str,
) -> procmond::ebpf::ExecRecord {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let status = Command::new(&path).arg(mark).status().unwrap();
    assert!(status.success(), "{path}: {status}");
    let found = rx
        .find("exec through a file descriptor", |r| match r {
            Record::Exec(e) if e.argv.get(1).map(String::as_str) == Some(mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(found.filename, path);
    assert!(!found.argv_truncated);
    *found
}

#[tokio::test(flavor = "multi_thread")]
async fn execs_from_a_memfd_and_from_a_deleted_file_are_seen() {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    if !privileged("memfd") {
        return;
    }
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let program = std::fs::read("/bin/true").unwrap();

    // A program that never was on disk.
    let memfd = rustix::fs::memfd_create("procmond-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut writer = std::fs::File::from(memfd);
    writer.write_all(&program).unwrap();
    let reader = std::fs::File::open(format!("/proc/self/fd/{}", writer.as_raw_fd())).unwrap();
    drop(writer);
    let mark = marker("memfd");
    let exec = exec_through_fd(&mut rx, &reader, &mark).await;
    assert!(exec.exe.starts_with("/memfd:procmond-test"), "{exec:?}");
    // Not a path of ours to hash.
    let event = exec.to_process_event(&ProcReader::new(ReadOptions::default()).unwrap());
    assert!(!event.file_exists, "{exec:?}");

    // A program deleted before it ran.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("deleted-true");
    std::fs::copy("/bin/true", &path).unwrap();
    let reader = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mark = marker("deleted");
    let exec = exec_through_fd(&mut rx, &reader, &mark).await;
    // Its path as it was, and that it was gone.
    let was = real(dir.path().to_str().unwrap()).join("deleted-true");
    assert_eq!(std::path::Path::new(&exec.exe), was);
    assert!(exec.exe_unlinked, "{exec:?}");
    drop(handle);
}

/// Not a test of its own: run by [`an_fexecve_with_an_empty_path_is_seen_with_its_executable`]
/// as a child (this test binary, this one test), it replaces itself with
/// `/bin/true` through `fexecve`, that is `execveat(fd, "", AT_EMPTY_PATH)`.
/// Run by the harness, without the variable, it does nothing.
#[test]
fn fexecve_child() {
    use std::os::fd::AsFd;
    let Ok(mark) = std::env::var("PROCMOND_FEXECVE_MARK") else {
        return;
    };
    let program = std::fs::File::open("/bin/true").unwrap();
    let argv = [c"true".to_owned(), std::ffi::CString::new(mark).unwrap()];
    let env: [std::ffi::CString; 0] = [];
    let err = nix::unistd::fexecve(program.as_fd(), &argv, &env).unwrap_err();
    panic!("fexecve failed: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_fexecve_with_an_empty_path_is_seen_with_its_executable() {
    if !privileged("fexecve") {
        return;
    }
    let (handle, mut rx) = start(&EbpfConfig::default(), 1024);
    let mark = marker("fexecve");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fexecve_child", "--test-threads", "1"])
        .env("PROCMOND_FEXECVE_MARK", &mark)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the child's fexecve of /bin/true: {status}"
    );
    let exec = rx
        .find("exec through fexecve", |r| match r {
            Record::Exec(e) if e.argv.get(1) == Some(&mark) => Some(e.clone()),
            _ => None,
        })
        .await;
    // The kernel names an empty path `/dev/fd/N`; the executable is the
    // file itself, and the event's executable is that file, not `/dev/fd/N`.
    assert!(exec.filename.starts_with("/dev/fd/"), "{exec:?}");
    assert_eq!(
        std::path::Path::new(&exec.exe),
        real("/bin/true"),
        "{exec:?}"
    );
    assert!(!exec.exe_unlinked && !exec.exe_truncated && !exec.argv_truncated);
    let event = exec.to_process_event(&ProcReader::new(ReadOptions::default()).unwrap());
    assert_eq!(
        event.executable_path.as_deref().map(std::path::Path::new),
        Some(real("/bin/true").as_path())
    );
    assert_eq!(event.command_line, ["true", mark.as_str()]);
    drop(handle);
}

/// The binary as root: it loads the programs, drops to the three kept
/// capabilities, and still reports a short-lived exec with its argv from the
/// eBPF tier.
#[test]
fn procmond_run_uses_the_ebpf_tier_after_dropping_privileges() {
    use std::io::BufRead as _;
    if !privileged("binary") {
        return;
    }
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["run", "--no-database", "--no-socket", "--interval", "3600"])
        .args(["--events-jsonl", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    let stdout = daemon.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("procmond printed no {what} within {WAIT:?}"))
    };
    // Running: the first snapshot line is out.
    next("snapshot");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap();
    // CAP_NET_ADMIN (12), CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19):
    // no CAP_BPF (39), CAP_PERFMON (38) or CAP_SYS_ADMIN (21).
    assert_eq!(
        cap_eff, "0000000000081004",
        "procmond kept more than the three"
    );
    let mark = marker("binary");
    Command::new("/bin/true").arg(&mark).status().unwrap();
    let exec = loop {
        let line = next("exec of /bin/true");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mine = v["kind"] == "exec"
            && v["command_line"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| *s == mark.as_str()));
        if mine {
            break v;
        }
    };
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    lines.join().unwrap();
    assert_eq!(exec["lifecycle"]["tier"], "ebpf", "{exec}");
    let path = real("/bin/true");
    assert_eq!(exec["executable_path"], path.to_str().unwrap(), "{exec}");
}

#[test]
fn an_unknown_tier_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["run", "--no-database", "--no-socket", "--tier", "kprobe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ebpf") && err.contains("connector") && err.contains("polling"),
        "{err}"
    );
}
