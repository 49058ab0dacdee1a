//! The reference README's "Custom Event Source Implementation", completed:
//! the reference leaves `collect_processes` undefined and omits the
//! `Duration`/`Ordering` imports and a `main`. Here `collect_processes` reads
//! pid and name of every process from /proc, and `main` prints a count per
//! sweep until Ctrl-C:
//!
//! ```text
//! cargo run -p collector-core --example custom_source
//! ```
//!
//! It polls the flag, as the reference does; `host_metrics.rs` shows the
//! awaited way (`start_with` and the context's shutdown token).
#![allow(missing_docs, clippy::print_stdout, clippy::ignored_unit_patterns)] // reference code kept as written

use async_trait::async_trait;
use collector_core::{
    procfs, CollectionEvent, Collector, CollectorConfig, EventSource, ProcessEvent, SourceCaps,
};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{atomic::AtomicBool, Arc};
use std::time::Duration;
use tokio::sync::mpsc;

struct CustomProcessCollector {
    name: String,
    collection_interval: Duration,
}

impl CustomProcessCollector {
    /// One event per process: pid and `comm`. A process that exits while we
    /// read is skipped; that is a race, not an error.
    async fn collect_processes(&self) -> anyhow::Result<Vec<ProcessEvent>> {
        let mut out = Vec::new();
        let pids = tokio::task::spawn_blocking(|| procfs::pids(Path::new("/proc"))).await??;
        for pid in pids {
            if let Ok(comm) = tokio::fs::read_to_string(format!("/proc/{pid}/comm")).await {
                let mut event = ProcessEvent::new(pid, comm.trim_end());
                event
                    .platform_metadata
                    .insert("collector".into(), self.name.clone());
                out.push(event);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl EventSource for CustomProcessCollector {
    fn name(&self) -> &'static str {
        "custom-process-collector"
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS | SourceCaps::REALTIME | SourceCaps::SYSTEM_WIDE
    }

    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown_signal: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval(self.collection_interval);

        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if shutdown_signal.load(Ordering::Relaxed) {
                        break;
                    }

                    // Collect process data
                    let processes = self.collect_processes().await?;

                    // Send events
                    for process in processes {
                        if tx.send(CollectionEvent::Process(process)).await.is_err() {
                            break;
                        }
                    }
                }
                _ = async {
                    while !shutdown_signal.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } => {
                    break;
                }
            }
        }

        Ok(())
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut collector = Collector::new(CollectorConfig::default());
    collector.register(Box::new(CustomProcessCollector {
        name: "example".into(),
        collection_interval: Duration::from_secs(2),
    }))?;
    let mut events = collector.handle().subscribe();
    tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(batch) = events.recv_batch().await {
            seen += batch.len() as u64;
            println!("{seen} process events so far");
        }
    });
    collector.run().await
}
