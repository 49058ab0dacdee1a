//! Small sources used across the tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use collector_core::{
    CollectionEvent, EventSource, HashAlgorithm, PerformanceEvent, ProcessEvent, SourceCaps,
    SourceContext,
};
use tokio::sync::mpsc;

pub fn perf(seq: u64) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent {
        metric_name: "test.seq".into(),
        value: seq as f64,
        unit: "count".into(),
        pid: None,
        process_key: None,
        component: "test".into(),
        timestamp: SystemTime::now(),
    })
}

pub fn seq_of(e: &CollectionEvent) -> u64 {
    match e {
        CollectionEvent::Performance(p) => p.value as u64,
        other => panic!("unexpected event {other:?}"),
    }
}

/// Sends `count` numbered events as fast as the runtime takes them, then
/// either returns (`then_wait = false`) or waits for shutdown.
pub struct Flood {
    pub name: &'static str,
    pub count: u64,
    pub then_wait: bool,
    pub sent: Arc<AtomicUsize>,
}

impl Flood {
    pub fn new(name: &'static str, count: u64, then_wait: bool) -> Self {
        Self {
            name,
            count,
            then_wait,
            sent: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[async_trait]
impl EventSource for Flood {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE
    }
    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.start_with(SourceContext::from_flag(self.name, tx, stop))
            .await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        for i in 0..self.count {
            let sent = tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => return Ok(()),
                r = ctx.out().send(perf(i)) => r,
            };
            if sent.is_err() {
                return Ok(());
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        if self.then_wait {
            ctx.shutdown().cancelled().await;
        }
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Emits one event every `every` until shutdown, counting health
/// checks and stop calls; its health check fails on the calls listed.
pub struct Ticker {
    pub name: &'static str,
    pub every: Duration,
    pub health_calls: Arc<AtomicUsize>,
    pub stop_calls: Arc<AtomicUsize>,
    pub fail_health_on: Vec<usize>,
    pub ignore_shutdown: bool,
}

impl Ticker {
    pub fn new(name: &'static str, every: Duration) -> Self {
        Self {
            name,
            every,
            health_calls: Arc::default(),
            stop_calls: Arc::default(),
            fail_health_on: Vec::new(),
            ignore_shutdown: false,
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
    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.start_with(SourceContext::from_flag(self.name, tx, stop))
            .await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        // A deaf ticker awaits a token nobody cancels.
        let shutdown = if self.ignore_shutdown {
            tokio_util::sync::CancellationToken::new()
        } else {
            ctx.shutdown().clone()
        };
        let mut seq = 0;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.every) => {}
            }
            // A closed channel only ends a well-behaved source.
            if ctx.out().send(perf(seq)).await.is_err() && !self.ignore_shutdown {
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

/// Fails or panics as soon as it starts.
pub struct Broken {
    pub name: &'static str,
    pub panic: bool,
    pub started: Arc<AtomicBool>,
}

#[async_trait]
impl EventSource for Broken {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS
    }
    async fn start(
        &self,
        _tx: mpsc::Sender<CollectionEvent>,
        _stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.started.store(true, Ordering::SeqCst);
        assert!(!self.panic, "boom from {}", self.name);
        anyhow::bail!("cannot open the kernel interface")
    }
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Emits the given events once, then waits for shutdown.
pub struct Scripted {
    pub name: &'static str,
    pub caps: SourceCaps,
    pub events: Vec<CollectionEvent>,
}

#[async_trait]
impl EventSource for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> SourceCaps {
        self.caps
    }
    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.start_with(SourceContext::from_flag(self.name, tx, stop))
            .await
    }
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        for e in &self.events {
            ctx.out().send(e.clone()).await?;
        }
        ctx.shutdown().cancelled().await;
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
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
