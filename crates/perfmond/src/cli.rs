//! `perfmond run` and `perfmond top` as library calls.
//!
//! [`run`] loads the config and runs the [`PerfmondSource`] through
//! collector-core's [`Serve`], the run scaffold every collector binary
//! shares (the IPC socket with live events and health, as the component
//! `perfmond`, JSON lines, `--metrics-listen`, graceful shutdown after
//! SIGTERM or SIGINT). Of the detection tasks it answers
//! `COLLECT_PERFORMANCE_METRICS` ([`task_handler`]). [`top`] takes two samples a short
//! interval apart and prints the busiest processes.

use std::io::Write;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use collector_core::ipc::TaskFuture;
use collector_core::serve::{self, PollingRunArgs, Serve};
use collector_core::CollectorConfig;
use collector_core::{CollectionEvent, PerformanceEvent};
use daemoneye_lib::proto::{event_record, DetectionResult, DetectionTask, ProtoTaskType};
use serde::Deserialize;

pub use collector_core::serve::RunError;

use crate::sampler::{boot_time_now, ProcessTable};
use crate::source::{LatestSample, PerfmondConfig, PerfmondCounters, PerfmondSource, NAME};

/// The flags of `perfmond run`: those of every polling collector
/// ([`PollingRunArgs`]: `--config` with sections `[collector]` and
/// `[perfmond]`, `--interval` (default 10), the socket) and the
/// sustained-CPU anomaly's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// The flags every polling collector has.
    #[command(flatten)]
    pub common: PollingRunArgs,
    /// The sustained-CPU anomaly's threshold: percent of one core (default
    /// 90).
    #[arg(long, value_name = "PERCENT")]
    pub sustained_cpu_percent: Option<f64>,
    /// ...held for this many seconds (default 60).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub sustained_cpu_secs: Option<u64>,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    collector: CollectorConfig,
    perfmond: PerfmondConfig,
}

/// Runs the collector until SIGTERM or SIGINT ([`Serve`] does the serving).
///
/// # Errors
/// [`RunError::Bad`] for a bad config, [`RunError::Failed`] when something
/// fails while starting or running.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let file: FileConfig = serve::read_config(args.common.config.as_deref())?;
    let mut config = file.perfmond;
    if let Some(interval) = args.common.interval() {
        config.interval = interval;
    }
    if let Some(percent) = args.sustained_cpu_percent {
        config.anomalies.sustained_cpu_percent = percent;
    }
    if let Some(secs) = args.sustained_cpu_secs {
        config.anomalies.sustained_cpu_for = Duration::from_secs(secs);
    }
    // Without a config file, stop promptly: a sample takes milliseconds.
    let collector_config = serve::collector_config(file.collector, args.common.config.is_some())?;
    // Each process's `stat` stays open between samples: room for them.
    match collector_core::procfs::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "the open-file limit stays as it is"),
    }
    let source = PerfmondSource::new(config).map_err(|e| RunError::Bad(e.into()))?;
    let counters = source.counters();
    let latest = source.latest();
    let mut serve = Serve::new(NAME, collector_config, args.common.serve);
    source.register_metrics(serve.metrics());
    serve.register(source)?;
    serve
        .with_jsonl(jsonl_line)
        .with_health(move |handle| health(handle, &counters))
        .with_tasks(move |_| Ok(Box::new(task_handler(latest))))
        .run()
        .await
}

/// `--events-jsonl`: every performance event as one JSON line.
fn jsonl_line(event: &CollectionEvent) -> serde_json::Result<Option<String>> {
    match event {
        CollectionEvent::Performance(p) => serde_json::to_string(p).map(Some),
        _ => Ok(None),
    }
}

/// The task handler: `COLLECT_PERFORMANCE_METRICS` is answered from the
/// latest sample (at most one interval old), filtered by the task's
/// `PerformanceFilter` (exact metric names, subject kinds and pids; an empty
/// list selects all); every other task gets a failure result.
pub fn task_handler(latest: LatestSample) -> impl Fn(DetectionTask) -> TaskFuture + Send + Sync {
    move |task| {
        let latest = latest.clone();
        Box::pin(async move { answer(&latest, &task) })
    }
}

fn answer(latest: &LatestSample, task: &DetectionTask) -> DetectionResult {
    if task.task_type() != ProtoTaskType::CollectPerformanceMetrics {
        return DetectionResult::failure(
            &task.task_id,
            format!(
                "task type {} is not served by perfmond",
                task.task_type().as_str_name()
            ),
        );
    }
    let f = task.performance_filter.clone().unwrap_or_default();
    let wanted = |e: &PerformanceEvent| {
        (f.metric_names.is_empty() || f.metric_names.iter().any(|m| m == e.metric.as_str()))
            && (f.subject_kinds.is_empty()
                || f.subject_kinds
                    .iter()
                    .any(|k| k == e.subject.kind().as_str()))
            && (f.pids.is_empty() || e.pid().is_some_and(|p| f.pids.contains(&p)))
    };
    let performance_records = latest
        .get()
        .iter()
        .filter(|e| wanted(e))
        .filter_map(|e| {
            let event = CollectionEvent::Performance(e.clone());
            match collector_core::ipc::event_to_record(&event, NAME).event {
                Some(event_record::Event::Performance(r)) => Some(r),
                _ => None,
            }
        })
        .collect();
    DetectionResult {
        performance_records,
        ..DetectionResult::success(&task.task_id, Vec::new())
    }
}

/// The collector's health with perfmond's counters on its source.
fn health(
    handle: &collector_core::CollectorHandle,
    counters: &PerfmondCounters,
) -> daemoneye_lib::proto::ComponentHealth {
    let mut report = collector_core::ipc::collector_health(NAME, handle);
    if let Some(source) = report.components.iter_mut().find(|c| c.name == NAME) {
        let s = &counters.sampler;
        source.counters.extend([
            ("samples".to_owned(), s.samples.get()),
            (
                "samples_failed".to_owned(),
                counters.poll.polls_failed.get(),
            ),
            ("anomalies".to_owned(), s.anomalies.get()),
            ("host_read_errors".to_owned(), s.read_errors.get()),
            ("processes_vanished".to_owned(), s.vanished.get()),
            ("skipped_over_limit".to_owned(), s.skipped.get()),
            (
                "pressure_files_absent".to_owned(),
                u64::try_from(s.psi_absent.get()).unwrap_or(0),
            ),
        ]);
    }
    report
}

/// One row of `perfmond top`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    /// Pid.
    pub pid: u32,
    /// The owner's user name (its uid when it has none).
    pub user: String,
    /// CPU share over the interval, percent of one core.
    pub cpu_percent: f64,
    /// RSS in KiB.
    pub rss_kib: u64,
    /// The command line, or `[comm]` without one (kernel threads, zombies).
    pub command: String,
}

/// What [`top`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct TopReport {
    /// The busiest processes, busiest first.
    pub rows: Vec<TopRow>,
    /// Processes read by the second scan.
    pub processes: usize,
    /// How long the first scan took (every process new to the table).
    pub first_scan: Duration,
    /// How long the second took (every process known: the steady state).
    pub second_scan: Duration,
}

/// The `n` busiest processes over `interval`: two scans of the process
/// table that far apart.
///
/// # Errors
/// When `/proc` cannot be listed or the clock read.
pub async fn top(n: usize, interval: Duration) -> anyhow::Result<TopReport> {
    let units = crate::sampler::KernelUnits::current();
    let proc_root = PathBuf::from("/proc");
    let mut table = ProcessTable::new(&proc_root, units, 1_000_000);
    let none = crate::anomaly::AnomalyConfig::default();
    let first = boot_time_now()?;
    let clock = || boot_time_now().unwrap_or(first);
    let timer = tokio::time::Instant::now();
    table.scan(clock, &none)?;
    let first_scan = timer.elapsed();
    tokio::time::sleep(interval).await;
    let timer = tokio::time::Instant::now();
    let stats = table.scan(clock, &none)?;
    let second_scan = timer.elapsed();
    let top = table.top(n).to_vec();
    let rows = top
        .iter()
        .map(|t| {
            let comm = table.get(t.pid).map_or("", |e| e.comm.as_str());
            TopRow {
                pid: t.pid,
                user: owner(&proc_root, t.pid),
                cpu_percent: t.cpu_percent,
                rss_kib: t.rss_bytes / 1024,
                command: command(&proc_root, t.pid, comm),
            }
        })
        .collect();
    Ok(TopReport {
        rows,
        processes: stats.processes,
        first_scan,
        second_scan,
    })
}

/// The user name (or uid) owning `/proc/<pid>`; `?` when it is gone.
fn owner(root: &Path, pid: u32) -> String {
    let Ok(meta) = std::fs::metadata(root.join(pid.to_string())) else {
        return "?".to_owned();
    };
    let uid = meta.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// `/proc/<pid>/cmdline` joined by spaces, or `[comm]`.
fn command(root: &Path, pid: u32, comm: &str) -> String {
    let raw = std::fs::read(root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
    let args: Vec<_> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    if args.is_empty() {
        format!("[{comm}]")
    } else {
        args.join(" ")
    }
}

/// Writes `rows` as a table like `top -b -n 1`'s process list.
///
/// # Errors
/// What writing to `out` returns.
pub fn write_top(out: &mut impl Write, rows: &[TopRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>7} {:<10} {:>6} {:>10}  COMMAND",
        "PID", "USER", "%CPU", "RSS_KB"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>7} {:<10} {:>6.1} {:>10}  {}",
            r.pid, r.user, r.cpu_percent, r.rss_kib, r.command
        )?;
    }
    Ok(())
}
