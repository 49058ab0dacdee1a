//! Small sources used across the tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use collector_core::{
    CollectionEvent, EventSource, HashAlgorithm, PerformanceEvent, ProcessEvent, SourceCaps,
};
use tokio::sync::mpsc;

pub fn perf(seq: u64) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent {
        metric_name: "test.seq".into(),
        value: seq as f64,
        unit: "count".into(),
        pid: None,
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
/// either returns (`then_wait = false`) or waits for the shutdown flag.
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
        for i in 0..self.count {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if tx.send(perf(i)).await.is_err() {
                return Ok(());
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        while self.then_wait && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Emits one event every `every` until the flag is set, counting health
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
        let mut seq = 0;
        loop {
            if !self.ignore_shutdown && stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(self.every).await;
            // A closed channel only ends a well-behaved source.
            if tx.send(perf(seq)).await.is_err() && !self.ignore_shutdown {
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

/// Emits the given events once, then waits for the flag.
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
        for e in &self.events {
            tx.send(e.clone()).await?;
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
