//! perfmond: the DaemonEye performance collector.
//!
//! It answers two questions a security agent has about resources: is
//! something on this host burning what it should not (a miner, a fork bomb,
//! a runaway copy), and is the host under pressure. Every interval (10 s by
//! default) it samples the host and every process from `/proc` and the
//! cgroup v2 hierarchy, emits [`PerformanceEvent`](collector_core::PerformanceEvent)s
//! (typed by collector-core's [`PerformanceMetric`](collector_core::PerformanceMetric)
//! and [`PerformanceSubject`](collector_core::PerformanceSubject)), and judges
//! four anomalies, each a sample with a
//! [`PerformanceAnomaly`](collector_core::PerformanceAnomaly) attached.
//!
//! - [`parse`]: pure parsers of the kernel's files (bytes in, values out).
//! - [`sampler`]: [`Sampler`], host samples and the [`sampler::ProcessTable`]
//!   of per-process CPU shares and RSS, kept across samples.
//! - [`anomaly`]: sustained CPU, memory growth, fork rate and pressure
//!   stalls, with [`AnomalyConfig`] thresholds: collector-core's
//!   [`anomaly`], the judge the trigger system's
//!   `ResourceAnomaly` conditions use too.
//! - [`metric`]: the one constructor of its events.
//! - [`source`]: [`PerfmondSource`], all of the above as an `EventSource`.
//! - [`cli`]: `perfmond run` (the runtime, the IPC socket, `/metrics`) and
//!   `perfmond top`.
//!
//! ```no_run
//! use collector_core::{Collector, CollectorConfig};
//! use perfmond::{PerfmondConfig, PerfmondSource};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let mut collector = Collector::new(CollectorConfig::default());
//! collector.register(Box::new(PerfmondSource::new(PerfmondConfig::default())?))?;
//! let mut events = collector.handle().subscribe();
//! tokio::spawn(collector.run());
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What polling cannot see
//! A process that starts and exits between two samples is never read: its
//! CPU shows only in the host's totals and its cgroup's. procmond, which
//! hears every fork and exit from the kernel, is the collector for those;
//! the fork-rate anomaly catches a storm of them.
//!
//! # Reading `/proc/<pid>/stat`
//! Its one parser is collector-core's
//! [`procfs::parse_pid_stat`](collector_core::procfs::parse_pid_stat), which
//! procmond uses too; it borrows the command name, so a scan of known
//! processes allocates nothing ([`parse`] re-exports it).

pub use collector_core::anomaly;
pub mod cli;
pub mod metric;
pub mod parse;
pub mod sampler;
pub mod source;

pub use anomaly::AnomalyConfig;
pub use sampler::{Sampler, SamplerConfig};
pub use source::{PerfmondConfig, PerfmondSource};
