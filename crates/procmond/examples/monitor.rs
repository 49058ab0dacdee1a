//! The reference README's "Real-World Usage" example for procmond, with the
//! imports it leaves out (`Arc`, `Mutex`, `Duration`, the config types and
//! `DatabaseManager`). It stores into /var/lib/daemoneye/audit.db, so run it
//! as root (the directory must exist):
//!
//! ```text
//! mkdir -p /var/lib/daemoneye && cargo run -p procmond --example monitor
//! ```
#![allow(missing_docs, unused_imports, clippy::needless_update)] // reference code: unused imports, a `..Default` with nothing left

use collector_core::{Collector, CollectorConfig, EventSource, MonitorCollectorConfig, SourceCaps};
use procmond::{
    DatabaseManager, LifecycleTrackingConfig, ProcessCollectionConfig, ProcmondMonitorCollector,
    ProcmondMonitorConfig,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Create database manager
    let database = Arc::new(Mutex::new(DatabaseManager::new(
        "/var/lib/daemoneye/audit.db",
    )?));

    // Configure procmond monitor collector
    let config = ProcmondMonitorConfig {
        base_config: MonitorCollectorConfig {
            collection_interval: Duration::from_secs(30),
            max_events_in_flight: 1000,
            enable_event_driven: true,
            ..Default::default()
        },
        process_config: ProcessCollectionConfig {
            collect_enhanced_metadata: true,
            compute_executable_hashes: true,
            max_processes: 10000,
            ..Default::default()
        },
        lifecycle_config: LifecycleTrackingConfig {
            track_process_lifecycle: true,
            detect_suspicious_events: true,
            ..Default::default()
        },
    };

    // Create monitor collector
    let monitor_collector = ProcmondMonitorCollector::new(database, config).await?;

    // Create main collector
    let collector_config = CollectorConfig::new()
        .with_max_event_sources(16)
        .with_event_buffer_size(2000)
        .with_shutdown_timeout(Duration::from_secs(60));

    let mut collector = Collector::new(collector_config);
    collector.register(Box::new(monitor_collector))?;

    // Run collector
    collector.run().await
}
