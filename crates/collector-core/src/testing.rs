//! A conformance check any [`EventSource`] can run.
//!
//! [`check_source`] runs a source the way the runtime does and verifies its
//! contract: it never panics (in `start`, `stop` or `health_check`), every
//! event it emits validates and belongs to a domain it declared in its
//! capabilities, and it returns from
//! [`start_with`](crate::EventSource::start_with) within a deadline after its
//! context's shutdown token is cancelled. Only the token is cancelled (the
//! flag is left to the default `start_with`, which sets it from the token),
//! so a source that implements `start_with` and does not await its token
//! fails here even if it watches the flag.
//!
//! ```
//! use std::sync::Arc;
//! use collector_core::testing::{check_source, ConformanceConfig};
//! # use collector_core::{CollectionEvent, EventSource, SourceCaps, SourceContext};
//! # use std::sync::atomic::AtomicBool;
//! # struct Quiet;
//! # #[async_trait::async_trait]
//! # impl EventSource for Quiet {
//! #     fn name(&self) -> &'static str { "quiet" }
//! #     fn capabilities(&self) -> SourceCaps { SourceCaps::PROCESS }
//! #     async fn start(&self, tx: tokio::sync::mpsc::Sender<CollectionEvent>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
//! #         self.start_with(SourceContext::from_flag(self.name(), tx, stop)).await
//! #     }
//! #     async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
//! #         ctx.shutdown().cancelled().await;
//! #         Ok(())
//! #     }
//! #     async fn stop(&self) -> anyhow::Result<()> { Ok(()) }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = check_source(Arc::new(Quiet), &ConformanceConfig::default()).await.unwrap();
//! assert!(report.stop_latency <= ConformanceConfig::default().stop_deadline);
//! # }
//! ```
//!
//! [`Replay`] is a ready-made source for tests and benches: it sends a
//! given number of events (or what a test hands it through a channel),
//! then waits for shutdown or returns.
//! [`recv_until`] skips a subscription's events up to the one a test waits
//! for. [`assert_send_sync!`](crate::assert_send_sync) checks at compile
//! time that types can cross threads. `strategy` (feature `proptest`)
//! draws arbitrary events for round-trip tests.

#[cfg(feature = "proptest")]
pub mod strategy;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::event::{
    BootId, CollectionEvent, EventKind, EventValidationError, ProcessEvent, ProcessKey,
};
use crate::source::{
    start_from_flag, EventSender, EventSource, ShutdownFlag, SourceCaps, SourceContext,
};
use crate::subscription::Subscription;

/// How [`check_source`] exercises a source.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// How long the source runs before the shutdown signal (cut short once
    /// `min_events` have arrived).
    pub run_for: Duration,
    /// The most time `start_with` may take to return after its token is
    /// cancelled.
    pub stop_deadline: Duration,
    /// Events the source must emit while running (0: none required).
    pub min_events: usize,
    /// Capacity of the channel handed to `start`.
    pub buffer: usize,
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        Self {
            run_for: Duration::from_millis(300),
            stop_deadline: Duration::from_secs(2),
            min_events: 0,
            buffer: 1024,
        }
    }
}

impl ConformanceConfig {
    /// The default check, requiring at least `min_events` within `run_for`.
    pub fn wanting(min_events: usize, run_for: Duration) -> Self {
        Self {
            run_for,
            min_events,
            ..Self::default()
        }
    }
}

/// What the check observed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConformanceReport {
    /// Events received, by kind.
    pub events_by_kind: BTreeMap<EventKind, usize>,
    /// Up to the first 1,000 events, for further assertions.
    pub sample: Vec<CollectionEvent>,
    /// Time from the token's cancellation until `start_with` returned.
    pub stop_latency: Duration,
}

impl ConformanceReport {
    /// Events received in all.
    pub fn events(&self) -> usize {
        self.events_by_kind.values().sum()
    }

    /// The kinds of the events received, in order.
    pub fn kinds(&self) -> Vec<EventKind> {
        self.events_by_kind.keys().copied().collect()
    }
}

/// A broken contract.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// `start`, `stop` or `health_check` panicked.
    #[error("source {source_name:?} panicked in {method}: {message}")]
    Panicked {
        /// The source.
        source_name: &'static str,
        /// `start`, `stop` or `health_check`.
        method: &'static str,
        /// The panic message.
        message: String,
    },
    /// `start` returned an error.
    #[error("source {source_name:?} failed: {message}")]
    Failed {
        /// The source.
        source_name: &'static str,
        /// The error, with its chain.
        message: String,
    },
    /// `start_with` did not return within the deadline after its token was
    /// cancelled.
    #[error("source {source_name:?} did not stop within {deadline:?} of its shutdown token being cancelled")]
    DidNotStop {
        /// The source.
        source_name: &'static str,
        /// The deadline.
        deadline: Duration,
    },
    /// An emitted event failed validation.
    #[error("source {source_name:?} emitted invalid event #{index}")]
    InvalidEvent {
        /// The source.
        source_name: &'static str,
        /// Position of the event in the stream.
        index: usize,
        /// Why it is invalid.
        #[source]
        error: EventValidationError,
    },
    /// An event's domain is not among the declared capabilities.
    #[error("source {source_name:?} emitted a {kind} event without declaring that capability")]
    Undeclared {
        /// The source.
        source_name: &'static str,
        /// The kind emitted.
        kind: EventKind,
    },
    /// Fewer events than required.
    #[error("source {source_name:?} emitted {got} events, fewer than the {want} required")]
    TooFewEvents {
        /// The source.
        source_name: &'static str,
        /// Required.
        want: usize,
        /// Received.
        got: usize,
    },
}

fn required_cap(kind: EventKind) -> SourceCaps {
    match kind {
        EventKind::Process => SourceCaps::PROCESS,
        EventKind::Network => SourceCaps::NETWORK,
        EventKind::Filesystem => SourceCaps::FILESYSTEM,
        EventKind::Performance => SourceCaps::PERFORMANCE,
        // Any source may ask for analysis.
        EventKind::TriggerRequest => SourceCaps::empty(),
    }
}

fn panic_text(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(p) => crate::runtime::panic_message(&*p),
        Err(e) => e.to_string(),
    }
}

/// Validates and tallies the events a source emits.
struct Tally {
    name: &'static str,
    caps: SourceCaps,
    report: ConformanceReport,
}

impl Tally {
    fn take(&mut self, event: CollectionEvent) -> Result<(), ConformanceError> {
        let index = self.report.events();
        event
            .validate()
            .map_err(|error| ConformanceError::InvalidEvent {
                source_name: self.name,
                index,
                error,
            })?;
        let kind = event.kind();
        if !self.caps.contains(required_cap(kind)) {
            return Err(ConformanceError::Undeclared {
                source_name: self.name,
                kind,
            });
        }
        *self.report.events_by_kind.entry(kind).or_default() += 1;
        if self.report.sample.len() < 1000 {
            self.report.sample.push(event);
        }
        Ok(())
    }
}

/// Runs `source` through its contract. See the [module docs](self).
///
/// # Errors
/// The first broken rule.
pub async fn check_source(
    source: Arc<dyn EventSource>,
    config: &ConformanceConfig,
) -> Result<ConformanceReport, ConformanceError> {
    let name = source.name();
    let panicked = |method| {
        move |e| ConformanceError::Panicked {
            source_name: name,
            method,
            message: panic_text(e),
        }
    };

    let probe = source.clone();
    // A failing health check is allowed; panicking is not.
    let _verdict = tokio::spawn(async move { probe.health_check().await })
        .await
        .map_err(panicked("health_check"))?;

    let (tx, mut rx) = mpsc::channel(config.buffer.max(1));
    let ctx = SourceContext::new(name, tx);
    let shutdown = ctx.shutdown().clone();
    let runner = source.clone();
    let mut task = tokio::spawn(async move { runner.start_with(ctx).await });
    let mut tally = Tally {
        name,
        caps: source.capabilities(),
        report: ConformanceReport {
            events_by_kind: BTreeMap::new(),
            sample: Vec::new(),
            stop_latency: Duration::ZERO,
        },
    };

    // Run phase: consume until run_for passes (or min_events arrive).
    let run_until = Instant::now() + config.run_for;
    let mut finished_early = None;
    while config.min_events == 0 || tally.report.events() < config.min_events {
        tokio::select! {
            biased;
            r = &mut task => { finished_early = Some(r); break; }
            () = tokio::time::sleep_until(run_until) => break,
            Some(event) = rx.recv() => tally.take(event)?,
        }
    }

    // Stop phase: cancel the token (only), call stop, keep draining, time
    // the return.
    shutdown.cancel();
    let signalled = Instant::now();
    let stopper = source.clone();
    let stop = tokio::spawn(async move { stopper.stop().await });
    let deadline = signalled + config.stop_deadline;
    let outcome = if let Some(r) = finished_early {
        r
    } else {
        loop {
            tokio::select! {
                biased;
                r = &mut task => break r,
                () = tokio::time::sleep_until(deadline) => {
                    task.abort();
                    return Err(ConformanceError::DidNotStop { source_name: name, deadline: config.stop_deadline });
                }
                Some(event) = rx.recv() => tally.take(event)?,
            }
        }
    };
    tally.report.stop_latency = signalled.elapsed();
    while let Ok(event) = rx.try_recv() {
        tally.take(event)?;
    }
    if let Err(err) = outcome.map_err(panicked("start"))? {
        return Err(ConformanceError::Failed {
            source_name: name,
            message: format!("{err:#}"),
        });
    }
    // stop() may fail (that is logged by the runtime); it may not panic.
    let _stopped = stop.await.map_err(panicked("stop"))?;
    let got = tally.report.events();
    if got < config.min_events {
        return Err(ConformanceError::TooFewEvents {
            source_name: name,
            want: config.min_events,
            got,
        });
    }
    Ok(tally.report)
}

/// Fails to compile unless every type named is `Send` and `Sync`.
///
/// ```
/// collector_core::assert_send_sync!(collector_core::CollectorHandle, collector_core::SourceCaps);
/// ```
///
/// ```compile_fail
/// collector_core::assert_send_sync!(std::rc::Rc<u8>);
/// ```
#[macro_export]
macro_rules! assert_send_sync {
    ($($t:ty),+ $(,)?) => {
        const _: () = {
            const fn check<T: ::core::marker::Send + ::core::marker::Sync + ?Sized>() {}
            $(check::<$t>();)+
        };
    };
}

/// Receives from `sub` until an event satisfies `want` and returns it;
/// `None` if the stream ends first. The events before it are consumed.
///
/// ```
/// use collector_core::testing::{recv_until, Replay};
/// use collector_core::{CollectionEvent, Collector, CollectorConfig, ProcessEvent, SourceCaps};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut collector = Collector::new(CollectorConfig::default());
/// collector
///     .register(Box::new(
///         Replay::new("procs", SourceCaps::PROCESS, 5, |n| {
///             CollectionEvent::Process(ProcessEvent::new(1 + n as u32, "p"))
///         })
///         .then_end(),
///     ))
///     .unwrap();
/// let mut sub = collector.handle().subscribe();
/// let run = tokio::spawn(collector.run_until(std::future::pending()));
/// let third = recv_until(&mut sub, |e| e.pid() == Some(3)).await.unwrap();
/// assert_eq!(third.pid(), Some(3));
/// assert!(recv_until(&mut sub, |e| e.pid() == Some(3)).await.is_none());
/// run.await.unwrap().unwrap();
/// # }
/// ```
pub async fn recv_until<T: Clone>(
    sub: &mut Subscription<T>,
    mut want: impl FnMut(&T) -> bool,
) -> Option<T> {
    while let Some(event) = sub.recv().await {
        if want(&event) {
            return Some(event);
        }
    }
    None
}

/// What [`poke_until`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Poked {
    /// An event the caller waited for came.
    Seen,
    /// The source ended (its channel closed) first.
    Ended,
    /// Every poke went unseen.
    Unseen,
}

/// Pokes a starting source (`poke`: writes a probe file where it watches,
/// say) and waits `every` for an event `seen` picks, `tries` times at most:
/// for a source that is ready only once its watches are in place.
///
/// # Errors
/// The first error of `poke`.
///
/// ```
/// use std::time::Duration;
/// use collector_core::testing::{poke_until, Poked};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let (tx, mut rx) = tokio::sync::mpsc::channel(8);
/// let mut n = 0;
/// let poke = || {
///     n += 1;
///     tx.try_send(n).map_err(std::io::Error::other)
/// };
/// let poked = poke_until(&mut rx, 5, Duration::from_millis(10), poke, |n| *n == 3).await?;
/// assert_eq!(poked, Poked::Seen);
/// # Ok(())
/// # }
/// ```
pub async fn poke_until<T>(
    rx: &mut mpsc::Receiver<T>,
    tries: usize,
    every: Duration,
    mut poke: impl FnMut() -> std::io::Result<()>,
    mut seen: impl FnMut(&T) -> bool,
) -> std::io::Result<Poked> {
    for _ in 0..tries {
        poke()?;
        let until = tokio::time::sleep(every);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => break,
                e = rx.recv() => match e {
                    Some(e) if seen(&e) => return Ok(Poked::Seen),
                    Some(_) => {}
                    None => return Ok(Poked::Ended),
                },
            }
        }
    }
    Ok(Poked::Unseen)
}

/// `pid`'s outbound TCP connection on loopback, from port 40000 to `port`,
/// just opened and held by its descriptor `fd`: the sample socket of the
/// tests of what comes after a network collector (store, rules, CLI).
pub fn loopback_connection(pid: u32, key: ProcessKey, fd: u32, port: u16) -> crate::NetworkEvent {
    let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    crate::NetworkEvent {
        connection_id: u64::from(pid),
        source_addr: loopback,
        source_port: Some(40_000),
        dest_addr: loopback,
        dest_port: Some(port),
        protocol: crate::NetworkProtocol::Tcp,
        direction: Some(crate::ConnectionDirection::Outbound),
        change: Some(crate::ConnectionChange::Opened),
        pid: Some(pid),
        process_key: Some(key),
        fd: Some(fd),
        timestamp: std::time::SystemTime::now(),
        ..crate::NetworkEvent::default()
    }
}

/// One source running in a collector of default settings, with a
/// subscription to its events: what a test of a source through the runtime
/// starts from.
pub struct Running {
    /// The collector's handle.
    pub handle: crate::CollectorHandle,
    /// Every event the collector accepts.
    pub events: Subscription<CollectionEvent>,
    /// The collector's run (what [`stop`](Self::stop) awaits).
    pub run: tokio::task::JoinHandle<Result<(), crate::CollectorError>>,
}

impl Running {
    /// Registers `source` and runs the collector until [`stop`](Self::stop).
    pub fn start(source: Box<dyn EventSource>) -> Result<Self, crate::CollectorError> {
        Self::start_with(source, crate::CollectorConfig::default())
    }

    /// [`start`](Self::start) in a collector of `config` (a bench's buffers
    /// sized for a flood).
    pub fn start_with(
        source: Box<dyn EventSource>,
        config: crate::CollectorConfig,
    ) -> Result<Self, crate::CollectorError> {
        let mut collector = crate::Collector::new(config);
        collector.register(source)?;
        let handle = collector.handle();
        let events = handle.subscribe();
        let run = tokio::spawn(collector.run_until(std::future::pending()));
        Ok(Self {
            handle,
            events,
            run,
        })
    }

    /// Waits up to `limit` for an event `want` accepts (`None` when the
    /// events ended or the time ran out).
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        want: impl FnMut(&CollectionEvent) -> bool,
    ) -> Option<CollectionEvent> {
        tokio::time::timeout(limit, recv_until(&mut self.events, want))
            .await
            .ok()
            .flatten()
    }

    /// Shuts the collector down and waits (10 s at most) for its run to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.handle.shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .map_err(|_| anyhow::anyhow!("the collector did not stop within 10 s"))?;
        Ok(ended??)
    }
}

/// The ten conditions the trigger benches evaluate: every type once, plus
/// a second name glob, path substring and SQL expression.
#[cfg(feature = "triggers")]
pub fn ten_trigger_conditions() -> Vec<crate::ConditionType> {
    use crate::ConditionType;
    vec![
        ConditionType::ProcessNamePattern("miner".into()),
        ConditionType::ProcessNamePattern("kworker*".into()),
        ConditionType::ExecutablePathPattern("/tmp/**".into()),
        ConditionType::ExecutablePathPattern("/dev/shm/".into()),
        ConditionType::MissingExecutable,
        ConditionType::HashMismatch,
        ConditionType::SuspiciousParentChild,
        ConditionType::ResourceAnomaly,
        ConditionType::Custom("name IN ('sh', 'bash', 'nc') AND uid BETWEEN 1 AND 999".into()),
        ConditionType::Custom(
            "exe LIKE '/usr/%' AND (cpu_percent > 50 OR rss_bytes > 1024 * 1024 * 1024)".into(),
        ),
    ]
}

/// A [`TriggerManager`](crate::TriggerManager) on `config` with one analysis
/// collector (`binary-hasher`: binary hashes, high priority, every type of
/// `conditions`) and a high-priority condition `c{i}` for each of
/// `conditions`, for benches and tests.
///
/// # Errors
/// What the manager refuses: an invalid `config` or condition.
#[cfg(feature = "triggers")]
pub fn trigger_manager(
    config: crate::TriggerConfig,
    conditions: &[crate::ConditionType],
) -> Result<crate::TriggerManager, crate::TriggerError> {
    use crate::{AnalysisType, TriggerPriority};
    const COLLECTOR: &str = "binary-hasher";
    let m = crate::TriggerManager::new(config)?;
    m.register_collector_capabilities(crate::TriggerCapabilities {
        collector_id: COLLECTOR.into(),
        supported_conditions: conditions.to_vec(),
        supported_analysis: vec![AnalysisType::BinaryHash],
        max_trigger_rate: 1000,
        max_concurrent_analysis: 16,
        supported_priorities: vec![TriggerPriority::High],
        resource_limits: crate::TriggerResourceLimits::default(),
    })?;
    for (i, condition) in conditions.iter().enumerate() {
        m.register_condition(crate::TriggerCondition {
            id: format!("c{i}"),
            description: String::new(),
            analysis_type: AnalysisType::BinaryHash,
            priority: TriggerPriority::High,
            target_collector: COLLECTOR.into(),
            condition_type: condition.clone(),
        })?;
    }
    Ok(m)
}

/// A process event of realistic shape, for benches and tests: what a
/// process collector sends for a running nginx.
pub fn sample_process_event() -> CollectionEvent {
    let boot = BootId::from_bytes([0x5a; 16]);
    let mut p = ProcessEvent::new(4242, "nginx");
    p.ppid = Some(1);
    p.executable_path = Some("/usr/sbin/nginx".into());
    p.command_line = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    p.user_id = Some(33);
    p.memory_usage = Some(12 << 20);
    p.process_key = Some(ProcessKey::new(boot, 4242, 123_456));
    p.timestamp = std::time::SystemTime::now();
    CollectionEvent::Process(p)
}

/// An exit event of pid 42 with every field set, typed facts included:
/// for round-trip tests of whatever carries a process (wire, store, JSON).
pub fn every_field_process_event() -> ProcessEvent {
    use crate::event::{
        CaptureTier, HashAlgorithm, LifecycleDetail, ObservedBy, ProcessContext, ProcessEventType,
        ProcessField, ReadDepth, StartTimeAnomaly,
    };
    let start = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let boot = BootId::from_bytes([7; 16]);
    ProcessEvent {
        id: Some(crate::event::EventId::new(
            0x187a_3c5e_9b2d_4f10,
            std::num::NonZeroU64::MIN,
        )),
        event_type: ProcessEventType::Exit,
        pid: 42,
        ppid: Some(1),
        name: "sshd".into(),
        executable_path: Some("/usr/sbin/sshd".into()),
        command_line: vec!["sshd".into(), "-D".into()],
        start_time: Some(start),
        cpu_usage: Some(1.5),
        memory_usage: Some(4096),
        executable_hash: Some("ab".repeat(32)),
        hash_algorithm: Some(HashAlgorithm::Sha256),
        user_id: Some(0),
        accessible: true,
        file_exists: false,
        timestamp: start + Duration::from_millis(5),
        platform_metadata: [("seccomp".to_owned(), "2".to_owned())].into(),
        process_key: Some(ProcessKey::new(boot, 42, 1234)),
        exit_code: Some(256),
        euid: Some(1000),
        gid: Some(100),
        state: Some('Z'),
        threads: Some(3),
        cpu_ticks: Some(77),
        exe_replaced: true,
        read: ReadDepth::StatOnly,
        context: Some(std::sync::Arc::new(ProcessContext {
            cgroup: Some("/system.slice/ssh.service".into()),
            container_id: Some("c0ffee".into()),
            pid_ns: Some(4_026_531_836),
            mnt_ns: Some(4_026_531_841),
            net_ns: Some(4_026_531_840),
            user_ns: Some(4_026_531_837),
        })),
        lifecycle: Some(Box::new(LifecycleDetail {
            observed_by: Some(ObservedBy::Kernel),
            previous_key: Some(ProcessKey::new(boot, 42, 99)),
            changed: vec![ProcessField::Argv, ProcessField::Uid],
            anomaly: Some(StartTimeAnomaly::StartedBeforeParent),
            run_time_ms: Some(12),
            tier: Some(CaptureTier::Ebpf),
            argv_truncated: true,
            setuid: true,
            setgid: true,
        })),
    }
}

/// Makes the `n`th event a [`Replay`] sends.
type MakeEvent = Box<dyn Fn(u64) -> CollectionEvent + Send + Sync>;

/// Where a [`Replay`]'s events come from.
enum Script {
    /// `make(0)` to `make(count - 1)`.
    Made { count: u64, make: MakeEvent },
    /// What arrives on the channel, until it closes (taken on the first run).
    Fed(tokio::sync::Mutex<Option<mpsc::Receiver<CollectionEvent>>>),
}

/// A source for tests and benches: sends `count` events, the `n`th made by
/// `make(n)`, as fast as they are taken, then waits for shutdown (or, after
/// [`then_end`](Self::then_end), returns). [`Replay::fed`] sends what a
/// test hands it through a channel instead.
///
/// It stops sending the moment its token is cancelled, even while waiting
/// for room in a full channel, and returns `Ok` when its channel closes.
/// [`sent`](Self::sent) counts the events that went out.
///
/// ```
/// use std::sync::atomic::Ordering;
/// use std::sync::Arc;
/// use collector_core::testing::{check_source, ConformanceConfig, Replay};
/// use collector_core::{CollectionEvent, ProcessEvent, SourceCaps};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let source = Replay::new("procs", SourceCaps::PROCESS, 3, |n| {
///     CollectionEvent::Process(ProcessEvent::new(100 + n as u32, "p"))
/// });
/// let sent = source.sent();
/// let report = check_source(Arc::new(source), &ConformanceConfig::default()).await.unwrap();
/// assert_eq!((report.events(), sent.load(Ordering::Relaxed)), (3, 3));
///
/// let (source, feed) = Replay::fed("fed", SourceCaps::PROCESS);
/// feed.send(CollectionEvent::Process(ProcessEvent::new(7, "ls"))).await.unwrap();
/// drop(feed);
/// let report = check_source(Arc::new(source), &ConformanceConfig::default()).await.unwrap();
/// assert_eq!(report.events(), 1);
/// # }
/// ```
pub struct Replay {
    name: &'static str,
    caps: SourceCaps,
    script: Script,
    then_wait: bool,
    sent: Arc<AtomicU64>,
}

impl Replay {
    /// A source named `name`, declaring `caps`, that sends `make(0)` to
    /// `make(count - 1)` and then waits for shutdown.
    pub fn new(
        name: &'static str,
        caps: SourceCaps,
        count: u64,
        make: impl Fn(u64) -> CollectionEvent + Send + Sync + 'static,
    ) -> Self {
        let make = Box::new(make);
        Self::with_script(name, caps, Script::Made { count, make })
    }

    /// A source that sends `events`, in order, and then waits for shutdown.
    pub fn events(name: &'static str, caps: SourceCaps, events: Vec<CollectionEvent>) -> Self {
        let count = events.len() as u64;
        // `n < count`, so the index is in range.
        #[allow(clippy::cast_possible_truncation)]
        Self::new(name, caps, count, move |n| events[n as usize].clone())
    }

    /// A source that sends what arrives on the returned sender (64 events of
    /// buffer) and returns once every sender is gone and the rest is sent.
    /// It runs once: started again, it returns at once.
    pub fn fed(name: &'static str, caps: SourceCaps) -> (Self, mpsc::Sender<CollectionEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let feed = Script::Fed(tokio::sync::Mutex::new(Some(rx)));
        (Self::with_script(name, caps, feed).then_end(), tx)
    }

    fn with_script(name: &'static str, caps: SourceCaps, script: Script) -> Self {
        Self {
            name,
            caps,
            script,
            then_wait: true,
            sent: Arc::default(),
        }
    }

    /// Returns once every event is sent instead of waiting for shutdown.
    #[must_use]
    pub fn then_end(mut self) -> Self {
        self.then_wait = false;
        self
    }

    /// The count of events sent so far (shared: take it before handing the
    /// source over).
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Sends the script's events; `false` if shutdown or a closed channel
    /// cut it short.
    async fn play(&self, ctx: &SourceContext) -> bool {
        match &self.script {
            Script::Made { count, make } => {
                for n in 0..*count {
                    if !self.offer(ctx, make(n)).await {
                        return false;
                    }
                }
            }
            Script::Fed(feed) => {
                let Some(mut feed) = feed.lock().await.take() else {
                    return true;
                };
                loop {
                    let next = tokio::select! {
                        biased;
                        () = ctx.shutdown().cancelled() => return false,
                        next = feed.recv() => next,
                    };
                    let Some(event) = next else { break };
                    if !self.offer(ctx, event).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Sends `event` unless shutdown comes first, and counts it: `false`
    /// once the token is cancelled or the channel closed. Waits
    /// (cancellably) only when the channel is full.
    async fn offer(&self, ctx: &SourceContext, event: CollectionEvent) -> bool {
        if ctx.shutdown().is_cancelled() {
            return false;
        }
        let sent = match ctx.out().try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(event)) => tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => false,
                sent = ctx.out().send(event) => sent.is_ok(),
            },
        };
        if sent {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("name", &self.name)
            .field("caps", &self.caps)
            .field("then_wait", &self.then_wait)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventSource for Replay {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        self.caps
    }
    async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, flag).await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        if self.play(&ctx).await && self.then_wait {
            ctx.shutdown().cancelled().await;
        }
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One HTTP/1.1 `GET /metrics` to `addr` over a real (blocking) connection,
/// as a scraper sends it: the whole reply, head and body, once the server
/// closes the connection (waiting at most 30 s for each read). For the
/// tests of every binary that serves `--metrics-listen`.
///
/// # Errors
/// When the connection fails or a read times out.
pub fn scrape_metrics(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: collector\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
