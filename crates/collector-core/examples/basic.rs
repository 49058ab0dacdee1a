//! The reference README's "Basic Example", unchanged: a source that idles
//! until shutdown. Run it and press Ctrl-C:
//!
//! ```text
//! cargo run -p collector-core --example basic
//! ```
//!
//! It polls the flag, as the reference does, so it stops within its 100 ms
//! sleep (the default `start_with` sets the flag when shutdown is signalled).
//! `host_metrics.rs` shows the awaited way (`start_with` and the token).
#![allow(missing_docs, unused_variables)] // the reference code, unchanged, leaves `tx` unused

use async_trait::async_trait;
use collector_core::{CollectionEvent, Collector, CollectorConfig, EventSource, SourceCaps};
use std::sync::{atomic::AtomicBool, Arc};
use tokio::sync::mpsc;

struct MyEventSource;

#[async_trait]
impl EventSource for MyEventSource {
    fn name(&self) -> &'static str {
        "my-source"
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS | SourceCaps::REALTIME
    }

    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown_signal: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        // Implementation here - monitor shutdown signal
        while !shutdown_signal.load(std::sync::atomic::Ordering::Relaxed) {
            // Collect events and send via tx
            tokio::time::sleep(tokio::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = CollectorConfig::default();
    let mut collector = Collector::new(config);

    collector.register(Box::new(MyEventSource))?;
    collector.run().await
}
