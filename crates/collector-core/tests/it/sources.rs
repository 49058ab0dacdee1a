//! Small sources used across the tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
use collector_core::testing::Replay;
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, CollectorHandle, EventSource, HashAlgorithm,
    PerformanceEvent, PerformanceMetric, PerformanceSubject, ProcessEvent, SourceCaps,
    SourceContext, WhenFull,
};
use tokio::sync::mpsc;

pub fn perf(seq: u64) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent::new(
        PerformanceMetric::ProcessesSampled,
        seq as f64,
        PerformanceSubject::Collector,
        SystemTime::now(),
    ))
}

/// A collector on `config` running `source`, and its handle.
pub fn collector_of(
    config: CollectorConfig,
    source: impl EventSource + 'static,
) -> (Collector, CollectorHandle) {
    let mut c = Collector::new(config);
    c.register(Box::new(source)).unwrap();
    let handle = c.handle();
    (c, handle)
}

/// Queues of `buffer` events, batches of `batch`, `when_full` the policy.
pub fn queues(buffer: usize, batch: usize, when_full: WhenFull) -> CollectorConfig {
    CollectorConfig::new()
        .with_event_buffer_size(buffer)
        .with_max_batch_size(batch)
        .with_when_full(when_full)
}

/// Queues of `buffer` events that block a source when full.
pub fn blocking(buffer: usize) -> CollectorConfig {
    CollectorConfig::new()
        .with_event_buffer_size(buffer)
        .with_when_full(WhenFull::Block)
}

/// The value of the series `name` in `registry` with `labels`, and the
/// label `reason` when given.
pub fn metric_value(
    registry: &collector_core::Registry,
    name: &str,
    labels: &[(&str, &str)],
    reason: Option<&str>,
) -> u64 {
    let mut labels = labels.to_vec();
    labels.extend(reason.map(|r| ("reason", r)));
    registry
        .value(name, &labels)
        .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
}

pub fn seq_of(e: &CollectionEvent) -> u64 {
    match e {
        CollectionEvent::Performance(p) => p.value as u64,
        other => panic!("unexpected event {other:?}"),
    }
}

/// `count` numbered performance events as fast as the runtime takes them;
/// the source then returns.
pub fn flood(name: &'static str, count: u64) -> Replay {
    Replay::new(name, SourceCaps::PERFORMANCE, count, perf).then_end()
}

/// What ends a [`Ticker`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Heeds {
    /// Its context's token (a well-behaved source).
    Token,
    /// Only its context's flag, looked at every 10 ms (the conformance kit
    /// cancels only the token).
    FlagOnly,
    /// Nothing: it awaits a token nobody cancels.
    Nothing,
}

/// Emits one event every `every` until shutdown, counting health
/// checks and stop calls; its health check fails on the calls listed.
pub struct Ticker {
    pub name: &'static str,
    pub every: Duration,
    pub health_calls: Arc<AtomicUsize>,
    pub stop_calls: Arc<AtomicUsize>,
    pub fail_health_on: Vec<usize>,
    pub heeds: Heeds,
}

impl Ticker {
    pub fn new(name: &'static str, every: Duration) -> Self {
        Self {
            name,
            every,
            health_calls: Arc::default(),
            stop_calls: Arc::default(),
            fail_health_on: Vec::new(),
            heeds: Heeds::Token,
        }
    }
}

#[async_trait]
impl EventSource for Ticker {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE | SourceCaps::REALTIME
    }
    async fn start(&self, tx: EventSender, stop: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, stop).await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let deaf = tokio_util::sync::CancellationToken::new();
        let stopped = async {
            match self.heeds {
                Heeds::Token => ctx.shutdown().cancelled().await,
                Heeds::FlagOnly => {
                    while !ctx.shutdown_flag().load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Heeds::Nothing => deaf.cancelled().await,
            }
        };
        tokio::pin!(stopped);
        let mut seq = 0;
        loop {
            tokio::select! {
                biased;
                () = &mut stopped => return Ok(()),
                () = tokio::time::sleep(self.every) => {}
            }
            // A closed channel only ends a well-behaved source.
            if ctx.out().send(perf(seq)).await.is_err() && self.heeds == Heeds::Token {
                return Ok(());
            }
            seq += 1;
        }
    }
    async fn stop(&self) -> anyhow::Result<()> {
        self.stop_calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn health_check(&self) -> anyhow::Result<()> {
        let n = self.health_calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_health_on.contains(&n) {
            anyhow::bail!("check {n} failed on purpose");
        }
        Ok(())
    }
}

/// A source that turns unwell when told (`go`), and says so through
/// [`SourceContext::health_changed`]; each health check is signalled on
/// `checked`.
pub struct Turning {
    pub go: Arc<tokio::sync::Notify>,
    pub checked: Arc<tokio::sync::Notify>,
    unwell: AtomicBool,
}

impl Turning {
    pub fn new() -> Self {
        Self {
            go: Arc::default(),
            checked: Arc::default(),
            unwell: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl EventSource for Turning {
    fn name(&self) -> &'static str {
        "turning"
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE
    }
    async fn start(&self, tx: EventSender, stop: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, stop).await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            () = ctx.shutdown().cancelled() => return Ok(()),
            () = self.go.notified() => {}
        }
        self.unwell.store(true, Ordering::SeqCst);
        ctx.health_changed();
        ctx.shutdown().cancelled().await;
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
    async fn health_check(&self) -> anyhow::Result<()> {
        self.checked.notify_one();
        if self.unwell.load(Ordering::SeqCst) {
            anyhow::bail!("it turned");
        }
        Ok(())
    }
}

/// What a [`Reference`] source does when started.
#[derive(Clone, Copy)]
pub enum OnStart {
    /// Polls its flag every 100 ms until it is set, as the reference
    /// README's example does.
    PollFlag,
    /// Fails at once.
    Fail,
    /// Panics at once.
    Panic,
    /// Returns at once; its `stop` panics.
    PanicInStop,
}

/// A source on the reference API only (`start`, the default `start_with`).
pub struct Reference {
    pub name: &'static str,
    pub on_start: OnStart,
    pub started: Arc<AtomicBool>,
}

impl Reference {
    pub fn new(name: &'static str, on_start: OnStart) -> Self {
        Self {
            name,
            on_start,
            started: Arc::default(),
        }
    }
}

#[async_trait]
impl EventSource for Reference {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS
    }
    async fn start(
        &self,
        _tx: mpsc::Sender<CollectionEvent>,
        shutdown_signal: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.started.store(true, Ordering::SeqCst);
        match self.on_start {
            OnStart::PollFlag => {
                while !shutdown_signal.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(())
            }
            OnStart::Fail => anyhow::bail!("cannot open the kernel interface"),
            OnStart::Panic => panic!("boom from {}", self.name),
            OnStart::PanicInStop => Ok(()),
        }
    }
    async fn stop(&self) -> anyhow::Result<()> {
        assert!(
            !matches!(self.on_start, OnStart::PanicInStop),
            "stop exploded"
        );
        Ok(())
    }
}

pub fn process_with_hash_but_no_algorithm(pid: u32) -> CollectionEvent {
    let mut p = ProcessEvent::new(pid, "bad");
    p.executable_hash = Some("0".repeat(64));
    CollectionEvent::Process(p)
}

pub fn process_ok(pid: u32) -> CollectionEvent {
    let mut p = ProcessEvent::new(pid, "good");
    p.executable_hash = Some("0".repeat(64));
    p.hash_algorithm = Some(HashAlgorithm::Sha256);
    CollectionEvent::Process(p)
}
