//! netmond's eBPF reader sleeps while nothing happens: only a record, its
//! stop or its receiver's end wakes it, never a timer. A test binary of its
//! own, so that the other tests' connections (which the program sees, host
//! wide) do not run beside it. As root (CI runs as root); otherwise it says
//! why it skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use tokio::time::Instant;

use netmond::ebpf::{EbpfConfig, EbpfCounters, NetTier};
use tokio::sync::mpsc;

/// The thread of this process named `name`, once it has started.
fn thread_named(name: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            if std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == name) {
                return task.file_name().unwrap().to_str().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no thread named {name}");
        std::thread::yield_now();
    }
}

/// How often thread `tid` has gone to sleep of its own accord.
fn sleeps(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idle_reader_is_woken_only_by_records_and_ends_with_its_receiver() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the eBPF tier needs root (CAP_BPF and CAP_PERFMON)");
        return;
    }
    let tier = NetTier::load(&EbpfConfig::default()).expect("the eBPF tier loads here");
    let (tx, mut rx) = mpsc::channel(1024);
    let reader = tier.spawn_reader(tx, EbpfCounters::default()).unwrap();
    let tid = thread_named("netmond-ebpf");

    // Two seconds of a quiet host: a reader on a 100 ms timer would sleep
    // and wake twenty times; this one only for what the kernel sends (a
    // wake-up, its batch window, and a wait on a full channel at most).
    let before = sleeps(tid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let woken = sleeps(tid) - before;
    let mut deliveries = 0;
    while rx.try_recv().is_ok() {
        deliveries += 1;
    }
    assert!(
        woken <= 1 + 3 * deliveries,
        "the reader slept {woken} times in 2 s for {deliveries} deliveries"
    );

    // Its receiver gone, it ends of itself.
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the reader outlived its receiver by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let books = tokio::task::spawn_blocking(move || reader.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(books.balanced(), "{books:?}");
}
