//! The one list of perfmond's metric names ([`Metric`]), with each metric's
//! unit, and the one constructor of its events ([`event`]).

use std::time::SystemTime;

use collector_core::{PerformanceEvent, ProcessKey};

collector_core::names! {
    /// Every metric perfmond emits, by its dotted name (the
    /// `metric_name` of its [`PerformanceEvent`]).
    ///
    /// Host metrics have the component `system` (or the CPU, disk,
    /// interface or cgroup measured); per-process metrics and anomalies
    /// carry the process's pid and key, and its command name as component.
    Metric {
        /// Busy share of all CPUs (percent, 0-100).
        CpuTotal = "cpu.total",
        /// User-mode share of all CPUs (percent).
        CpuUser = "cpu.user",
        /// Kernel-mode share of all CPUs (percent).
        CpuSystem = "cpu.system",
        /// Share of all CPUs idle waiting for I/O (percent).
        CpuIowait = "cpu.iowait",
        /// Share stolen by the hypervisor (percent).
        CpuSteal = "cpu.steal",
        /// Busy share of one CPU (percent; component `cpuN`).
        CpuCore = "cpu.core",
        /// Forks per second (from `/proc/stat` `processes`).
        ForkRate = "processes.forks_per_second",
        /// Runnable tasks.
        ProcsRunning = "processes.running",
        /// Tasks blocked on I/O.
        ProcsBlocked = "processes.blocked",
        /// Context switches per second.
        ContextSwitchRate = "processes.context_switches_per_second",
        /// `MemTotal`.
        MemoryTotal = "memory.total",
        /// `MemAvailable`.
        MemoryAvailable = "memory.available",
        /// `MemFree`.
        MemoryFree = "memory.free",
        /// Swap in use.
        SwapUsed = "memory.swap_used",
        /// Load average over 1 minute.
        LoadAvg1 = "load.avg1",
        /// Load average over 5 minutes.
        LoadAvg5 = "load.avg5",
        /// Load average over 15 minutes.
        LoadAvg15 = "load.avg15",
        /// PSI: some tasks stalled on CPU, last 10 s (percent).
        PsiCpuSomeAvg10 = "psi.cpu.some_avg10",
        /// PSI: some tasks stalled on CPU, last 60 s.
        PsiCpuSomeAvg60 = "psi.cpu.some_avg60",
        /// PSI: some tasks stalled on CPU, last 300 s.
        PsiCpuSomeAvg300 = "psi.cpu.some_avg300",
        /// PSI: some tasks stalled on CPU since boot (microseconds).
        PsiCpuSomeTotal = "psi.cpu.some_total",
        /// PSI: all tasks stalled on CPU, last 10 s.
        PsiCpuFullAvg10 = "psi.cpu.full_avg10",
        /// PSI: all tasks stalled on CPU, last 60 s.
        PsiCpuFullAvg60 = "psi.cpu.full_avg60",
        /// PSI: all tasks stalled on CPU, last 300 s.
        PsiCpuFullAvg300 = "psi.cpu.full_avg300",
        /// PSI: all tasks stalled on CPU since boot (microseconds).
        PsiCpuFullTotal = "psi.cpu.full_total",
        /// PSI: some tasks stalled on memory, last 10 s.
        PsiMemorySomeAvg10 = "psi.memory.some_avg10",
        /// PSI: some tasks stalled on memory, last 60 s.
        PsiMemorySomeAvg60 = "psi.memory.some_avg60",
        /// PSI: some tasks stalled on memory, last 300 s.
        PsiMemorySomeAvg300 = "psi.memory.some_avg300",
        /// PSI: some tasks stalled on memory since boot (microseconds).
        PsiMemorySomeTotal = "psi.memory.some_total",
        /// PSI: all tasks stalled on memory, last 10 s.
        PsiMemoryFullAvg10 = "psi.memory.full_avg10",
        /// PSI: all tasks stalled on memory, last 60 s.
        PsiMemoryFullAvg60 = "psi.memory.full_avg60",
        /// PSI: all tasks stalled on memory, last 300 s.
        PsiMemoryFullAvg300 = "psi.memory.full_avg300",
        /// PSI: all tasks stalled on memory since boot (microseconds).
        PsiMemoryFullTotal = "psi.memory.full_total",
        /// PSI: some tasks stalled on I/O, last 10 s.
        PsiIoSomeAvg10 = "psi.io.some_avg10",
        /// PSI: some tasks stalled on I/O, last 60 s.
        PsiIoSomeAvg60 = "psi.io.some_avg60",
        /// PSI: some tasks stalled on I/O, last 300 s.
        PsiIoSomeAvg300 = "psi.io.some_avg300",
        /// PSI: some tasks stalled on I/O since boot (microseconds).
        PsiIoSomeTotal = "psi.io.some_total",
        /// PSI: all tasks stalled on I/O, last 10 s.
        PsiIoFullAvg10 = "psi.io.full_avg10",
        /// PSI: all tasks stalled on I/O, last 60 s.
        PsiIoFullAvg60 = "psi.io.full_avg60",
        /// PSI: all tasks stalled on I/O, last 300 s.
        PsiIoFullAvg300 = "psi.io.full_avg300",
        /// PSI: all tasks stalled on I/O since boot (microseconds).
        PsiIoFullTotal = "psi.io.full_total",
        /// Bytes read per second (component: the device).
        DiskReadRate = "disk.read_bytes_per_second",
        /// Bytes written per second.
        DiskWriteRate = "disk.write_bytes_per_second",
        /// Reads completed per second.
        DiskReadOps = "disk.reads_per_second",
        /// Writes completed per second.
        DiskWriteOps = "disk.writes_per_second",
        /// Share of time the device had I/O in flight (percent).
        DiskBusy = "disk.busy_percent",
        /// Bytes received per second (component: the interface).
        NetRxRate = "net.rx_bytes_per_second",
        /// Bytes sent per second.
        NetTxRate = "net.tx_bytes_per_second",
        /// Packets received per second.
        NetRxPackets = "net.rx_packets_per_second",
        /// Packets sent per second.
        NetTxPackets = "net.tx_packets_per_second",
        /// Receive and send errors per second.
        NetErrors = "net.errors_per_second",
        /// Packets dropped per second.
        NetDrops = "net.drops_per_second",
        /// CPU of a cgroup's tasks (percent of one core; component: the
        /// cgroup's path below the hierarchy's root).
        CgroupCpu = "cgroup.cpu_percent",
        /// Time a cgroup was throttled, per second of wall time (percent).
        CgroupThrottled = "cgroup.throttled_percent",
        /// A cgroup's `memory.current` (bytes).
        CgroupMemory = "cgroup.memory_current",
        /// A process's CPU share between two samples (percent of one core).
        ProcessCpu = "process.cpu_percent",
        /// A process's resident set size (bytes).
        ProcessRss = "process.rss",
        /// Anomaly: a process held at least the threshold share of a core
        /// for the configured time (value: its share now).
        AnomalySustainedCpu = "anomaly.sustained_cpu",
        /// Anomaly: a process's RSS grew by more than the threshold within
        /// the window (value: the growth in bytes).
        AnomalyMemoryGrowth = "anomaly.memory_growth",
        /// Anomaly: forks per second above the threshold (value: the rate).
        AnomalyForkRate = "anomaly.fork_rate",
        /// Anomaly: a PSI `some avg10` above the threshold (value: it;
        /// component: `cpu`, `memory` or `io`).
        AnomalyPsiStall = "anomaly.psi_stall",
        /// perfmond's own cost: milliseconds one sample took.
        SampleMs = "collector.sample_ms",
        /// Processes read in one sample.
        ProcessesSampled = "collector.processes_sampled",
    }
}

impl Metric {
    /// The unit of its values.
    pub const fn unit(self) -> &'static str {
        use Metric as M;
        match self {
            M::CpuTotal
            | M::CpuUser
            | M::CpuSystem
            | M::CpuIowait
            | M::CpuSteal
            | M::CpuCore
            | M::DiskBusy
            | M::CgroupCpu
            | M::CgroupThrottled
            | M::ProcessCpu
            | M::AnomalySustainedCpu
            | M::AnomalyPsiStall
            | M::PsiCpuSomeAvg10
            | M::PsiCpuSomeAvg60
            | M::PsiCpuSomeAvg300
            | M::PsiCpuFullAvg10
            | M::PsiCpuFullAvg60
            | M::PsiCpuFullAvg300
            | M::PsiMemorySomeAvg10
            | M::PsiMemorySomeAvg60
            | M::PsiMemorySomeAvg300
            | M::PsiMemoryFullAvg10
            | M::PsiMemoryFullAvg60
            | M::PsiMemoryFullAvg300
            | M::PsiIoSomeAvg10
            | M::PsiIoSomeAvg60
            | M::PsiIoSomeAvg300
            | M::PsiIoFullAvg10
            | M::PsiIoFullAvg60
            | M::PsiIoFullAvg300 => "percent",
            M::PsiCpuSomeTotal
            | M::PsiCpuFullTotal
            | M::PsiMemorySomeTotal
            | M::PsiMemoryFullTotal
            | M::PsiIoSomeTotal
            | M::PsiIoFullTotal => "microseconds",
            M::MemoryTotal
            | M::MemoryAvailable
            | M::MemoryFree
            | M::SwapUsed
            | M::CgroupMemory
            | M::ProcessRss
            | M::AnomalyMemoryGrowth => "bytes",
            M::DiskReadRate | M::DiskWriteRate | M::NetRxRate | M::NetTxRate => "bytes_per_second",
            M::ForkRate
            | M::ContextSwitchRate
            | M::DiskReadOps
            | M::DiskWriteOps
            | M::NetRxPackets
            | M::NetTxPackets
            | M::NetErrors
            | M::NetDrops
            | M::AnomalyForkRate => "per_second",
            M::ProcsRunning
            | M::ProcsBlocked
            | M::LoadAvg1
            | M::LoadAvg5
            | M::LoadAvg15
            | M::ProcessesSampled => "count",
            M::SampleMs => "milliseconds",
        }
    }

    /// Whether it is one of the `anomaly.*` metrics.
    pub const fn is_anomaly(self) -> bool {
        matches!(
            self,
            Self::AnomalySustainedCpu
                | Self::AnomalyMemoryGrowth
                | Self::AnomalyForkRate
                | Self::AnomalyPsiStall
        )
    }
}

/// A pressure resource: `/proc/pressure/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsiResource {
    /// `cpu`.
    Cpu,
    /// `memory`.
    Memory,
    /// `io`.
    Io,
}

impl PsiResource {
    /// All three, in file order.
    pub const ALL: [Self; 3] = [Self::Cpu, Self::Memory, Self::Io];

    /// The file name under `/proc/pressure/`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Io => "io",
        }
    }

    /// Its eight metrics: some avg10, avg60, avg300, total, then full's.
    pub const fn metrics(self) -> [Metric; 8] {
        use Metric as M;
        match self {
            Self::Cpu => [
                M::PsiCpuSomeAvg10,
                M::PsiCpuSomeAvg60,
                M::PsiCpuSomeAvg300,
                M::PsiCpuSomeTotal,
                M::PsiCpuFullAvg10,
                M::PsiCpuFullAvg60,
                M::PsiCpuFullAvg300,
                M::PsiCpuFullTotal,
            ],
            Self::Memory => [
                M::PsiMemorySomeAvg10,
                M::PsiMemorySomeAvg60,
                M::PsiMemorySomeAvg300,
                M::PsiMemorySomeTotal,
                M::PsiMemoryFullAvg10,
                M::PsiMemoryFullAvg60,
                M::PsiMemoryFullAvg300,
                M::PsiMemoryFullTotal,
            ],
            Self::Io => [
                M::PsiIoSomeAvg10,
                M::PsiIoSomeAvg60,
                M::PsiIoSomeAvg300,
                M::PsiIoSomeTotal,
                M::PsiIoFullAvg10,
                M::PsiIoFullAvg60,
                M::PsiIoFullAvg300,
                M::PsiIoFullTotal,
            ],
        }
    }
}

/// The process a per-process event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    /// Its pid.
    pub pid: u32,
    /// Its stable key, when the boot id is known.
    pub key: Option<ProcessKey>,
}

/// The event of one sample of `metric`. A value that is not finite (a rate
/// over no time) is not an event: `None`.
pub fn event(
    metric: Metric,
    value: f64,
    component: &str,
    subject: Option<Subject>,
    at: SystemTime,
) -> Option<PerformanceEvent> {
    value.is_finite().then(|| PerformanceEvent {
        metric_name: metric.as_str().to_owned(),
        value,
        unit: metric.unit().to_owned(),
        pid: subject.map(|s| s.pid),
        process_key: subject.and_then(|s| s.key),
        component: component.to_owned(),
        timestamp: at,
        id: None, // the runtime names it
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_dotted_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for m in Metric::ALL {
            assert!(seen.insert(m.as_str()), "{m} twice");
            assert!(m.as_str().contains('.'), "{m}");
            assert_eq!(Metric::from_name(m.as_str()), Some(*m));
            assert!(!m.unit().is_empty());
            assert_eq!(m.is_anomaly(), m.as_str().starts_with("anomaly."));
        }
        for r in PsiResource::ALL {
            for m in r.metrics() {
                assert!(m.as_str().starts_with(&format!("psi.{}.", r.name())), "{m}");
            }
        }
    }

    #[test]
    fn events_refuse_what_is_not_finite() {
        let at = SystemTime::now();
        assert!(event(Metric::CpuTotal, f64::NAN, "system", None, at).is_none());
        let e = event(
            Metric::ProcessRss,
            4096.0,
            "sh",
            Some(Subject { pid: 7, key: None }),
            at,
        )
        .unwrap_or_else(|| unreachable!());
        assert_eq!(
            (e.metric_name.as_str(), e.unit.as_str(), e.pid),
            ("process.rss", "bytes", Some(7))
        );
    }
}
