//! What the two test binaries (`it` and `ebpf`) share: overflowing the
//! kernel's buffers and waiting for the collector to reconcile.

use std::process::Command;
use std::time::Duration;

use procmond::ProcmondStatsHandle;
use tokio::time::Instant;

/// Starts bursts of 200 short-lived processes, each from a blocking thread so
/// the collector's tasks keep running, until `stats` counts a kernel overrun;
/// then waits for the reconciliation snapshot the collector answers it with
/// (a second collection cycle). Fails after 30 s at either step.
pub(crate) async fn overrun_and_reconcile(stats: &ProcmondStatsHandle) {
    let state = || (stats.monitor_stats(), stats.kernel_accounting());
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.monitor_stats().kernel_overruns == 0 {
        assert!(Instant::now() < deadline, "no overrun: {:?}", state());
        tokio::task::spawn_blocking(|| {
            let children: Vec<_> = (0..200)
                .filter_map(|_| Command::new("/bin/true").spawn().ok())
                .collect();
            for mut c in children {
                let _ = c.wait();
            }
        })
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.monitor_stats().collection_cycles < 2 {
        assert!(
            Instant::now() < deadline,
            "no reconciliation: {:?}",
            state()
        );
        // A counter, not an event: there is nothing to await.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
