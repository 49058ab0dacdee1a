//! `fleet`: events and alerts acknowledged by NATS JetStream through the
//! agent's outbox, against a bare client, in the same run on a
//! `nats-server -js` the bench starts on a loopback port (the Debian
//! package `nats-server`).
//!
//! - `fleet.events_per_sec`: process lifecycle events given to the agent's
//!   store writer in batches of `--batch` (as a collector link hands them
//!   on; each batch stored with its rows, its ledger entry and an outbox
//!   item per event in one transaction), shipped by the fleet sink
//!   (`FleetSink`, woken by the writer's commits to the outbox as its
//!   worker in the agent is) to `<prefix>.<host>.events.process`, each
//!   acknowledged by the stream and removed from the outbox: from the
//!   first write to the last removal (the events made before, as the bare
//!   loop's bodies are).
//!   The events are execs each with a name and executable of its own (every
//!   text new to the store).
//! - `fleet.bare_events_per_sec`: the same bodies published by a bare
//!   `async-nats` JetStream loop with the sink's window (256 unacknowledged
//!   publishes, sliding) and a `Nats-Msg-Id` each; `fleet.ratio_vs_bare`,
//!   the median of each repetition's ratio (its two runs are neighbours in
//!   time, so a slow spell of the machine weighs on both sides of one).
//! - `fleet.cpu_us_per_event` and `fleet.bare_cpu_us_per_event`: the CPU
//!   time per event of this process (the store's threads, the sink, the
//!   client) and of `nats-server` together, from their threads' own
//!   accounting (`schedstat`); `fleet.cpu_ratio_vs_bare` is the bare
//!   loop's over ours, the throughput ratio two cores would give if both
//!   sides were only CPU-bound: steadier than the rates on a noisy host.
//!   `fleet.server_cpu_us_per_event` and `fleet.bare_server_cpu_us_per_event`
//!   are the server's part of each.
//! - `fleet.host_*`: the same figures for a busy host's forks, execs and exits
//!   of a few programs (the events `daemoneye-bench db` and `store` write).
//! - `fleet.alerts_per_sec`: alerts the same way, each stored, ledgered
//!   and queued (the writer commits them in batches).
//! - `fleet.drain_secs`: the outbox an outage leaves (`--outage-secs` at
//!   `--rate` events a second, 60 s at 1,000/s by default) shipped by a
//!   connected sink: the time to an empty outbox (the client's reconnect
//!   wait, set by the backoff, is not in it).
//!
//! Medians of `--reps` (5) repetitions of `--events` (100,000: a run of
//! 20,000 lasted a fifth of a second, and its start and end weighed on
//! it); every repetition ships as another
//! host (another store, other message ids). Each measure starts after a
//! `sync`, so that none pays for writing back what the one before left
//! dirty.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use collector_core::{EventId, EventKind, ProcessEvent, ProcessEventType};
use daemoneye_agent::sink::{AlertSink, Delivery, FleetConfig, FleetSink, FleetStatus};
use daemoneye_store::{Alert, AlertProcess, Severity, Store, StoreWriter};
use tokio::time::Instant;

use crate::{median, report, report_f, report_ratio};

/// CPU time (ns) that the threads of process `pid` have run, from each
/// one's `/proc/<pid>/task/<tid>/schedstat` (a thread gone meanwhile is
/// not counted; none of the bench's or the server's ends during a run).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("a schedstat without its run time")?;
    }
    Ok(ns)
}

/// One run's rate and its CPU time per item (this process's and the
/// server's).
#[derive(Debug, Clone, Copy)]
struct Run {
    per_sec: f64,
    cpu_us_per_item: f64,
    /// The server's part of it.
    server_us_per_item: f64,
}

/// A run's start: the time, and the CPU time this process and the server
/// had spent.
struct Clock {
    server: u32,
    at: Instant,
    /// This process's CPU time and the server's (ns).
    cpu_ns: (u64, u64),
}

impl Clock {
    fn cpu(server: u32) -> anyhow::Result<(u64, u64)> {
        Ok((cpu_ns(std::process::id())?, cpu_ns(server)?))
    }

    fn start(server: u32) -> anyhow::Result<Self> {
        Ok(Self {
            server,
            cpu_ns: Self::cpu(server)?,
            at: Instant::now(),
        })
    }

    /// The run of `n` items since the start.
    fn stop(&self, n: usize) -> anyhow::Result<Run> {
        let secs = self.at.elapsed().as_secs_f64();
        let (ours, server) = Self::cpu(self.server)?;
        let us = |ns: u64| ns as f64 / 1_000.0 / n.max(1) as f64;
        let server = us(server.saturating_sub(self.cpu_ns.1));
        Ok(Run {
            per_sec: n as f64 / secs.max(1e-9),
            cpu_us_per_item: us(ours.saturating_sub(self.cpu_ns.0)) + server,
            server_us_per_item: server,
        })
    }
}

options! {
    /// Events (and alerts) shipped per repetition.
    events: usize = 100_000,
    /// Events per batch handed to the store writer.
    batch: usize = 64,
    /// Repetitions.
    reps: usize = 5,
    /// The outage's length, seconds, for `fleet.drain_secs`.
    outage_secs: usize = 60,
    /// Events a second during the outage.
    rate: usize = 1_000,
}

/// The sink's window, and the bare loop's.
const WINDOW: usize = daemoneye_agent::sink::nats::DEFAULT_WINDOW;

/// A `nats-server -js` on a loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store)?;
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nats-server (Debian: apt-get install -y nats-server)")?;
        let stderr = child.stderr.take().context("nats-server's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        rx.recv_timeout(Duration::from_secs(20))
            .context("nats-server did not say it is ready within 20 s")?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alert(n: usize) -> Alert {
    Alert {
        rule_id: "exec-from-temp-dir".into(),
        rule_name: "Execution from a temporary directory".into(),
        severity: Severity::High,
        mitre: vec!["T1059".into()],
        process: AlertProcess {
            pid: u32::try_from(n).unwrap_or(u32::MAX),
            name: format!("p{n}"),
            executable_path: Some(format!("/dev/shm/p{n}")),
            command_line: vec![format!("p{n}"), "--flag".into()],
            ..AlertProcess::host()
        },
        observed_at: 1,
        raised_at: 2,
        dedup_key: format!("exec-from-temp-dir:pid:{n}"),
        file: None,
    }
}

/// The process events a run ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Execs each with a name and executable of its own ([`event`]): every
    /// text new to the store.
    Unique,
    /// A busy host's forks, execs and exits of a few programs
    /// (`daemoneye_store::bench::bench_events`, what `daemoneye-bench db`
    /// and `store` write), named by their event ids.
    Host,
}

impl Shape {
    /// Event `n` (from 1) of a run of this shape.
    fn event(self, n: usize) -> ProcessEvent {
        match self {
            Self::Unique => event(n),
            Self::Host => {
                let mut e = daemoneye_store::bench::bench_events_from(n.saturating_sub(1), 1)
                    .pop()
                    .unwrap_or_default();
                e.id = std::num::NonZeroU64::new(n as u64).map(|seq| EventId::new(0x5eed, seq));
                e
            }
        }
    }
}

/// Event `n` of a run: an exec with its argv, named by its event id.
fn event(n: usize) -> ProcessEvent {
    let mut e = ProcessEvent::new(u32::try_from(n).unwrap_or(u32::MAX), format!("p{n}"));
    e.event_type = ProcessEventType::Exec;
    e.ppid = Some(1);
    e.executable_path = Some(format!("/usr/bin/p{n}"));
    e.command_line = vec![format!("p{n}"), "--flag".into(), "value".into()];
    e.user_id = Some(1000);
    e.id = std::num::NonZeroU64::new(n as u64).map(|seq| EventId::new(0x5eed, seq));
    e
}

/// A store in `dir` whose alerts and process events enter the outbox, its
/// writer and a fleet sink over it as `host`, connected (the stream made)
/// before it returns.
async fn sink(
    dir: &Path,
    url: &str,
    host: &str,
    outbox: usize,
) -> anyhow::Result<(StoreWriter, FleetSink, std::sync::Arc<FleetStatus>)> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(dir)?
        .with_outbox(Some(outbox))
        .with_shipped_events(&[EventKind::Process]);
    let writer = StoreWriter::start(store, 1024)?;
    let mut config = FleetConfig::new(url, host);
    config.events = vec![EventKind::Process];
    let mut sink = FleetSink::new(config, writer.clone());
    let status = sink.status();
    delivered(sink.deliver_outbox().await)?;
    Ok((writer, sink, status))
}

fn delivered(d: Delivery) -> anyhow::Result<()> {
    match d {
        Delivery::Delivered => Ok(()),
        Delivery::Retry { cause, .. } | Delivery::Failed(cause) => {
            bail!("the fleet sink failed: {cause}")
        }
        _ => bail!("the fleet sink did not deliver"),
    }
}

/// What a run gives the store writer: events in batches, or alerts.
#[derive(Clone, Copy)]
enum Load {
    Events { batch: usize, shape: Shape },
    Alerts,
}

/// `n` items through the outbox (see the module docs), from the first
/// write to the last removal.
async fn through_outbox(
    dir: &Path,
    server: &Server,
    host: &str,
    n: usize,
    load: Load,
) -> anyhow::Result<Run> {
    let (writer, mut sink, status) = sink(dir, &server.url, host, n + 16).await?;
    let mut changes = writer.outbox_changes();
    // Made before the clock starts, as the bare loop's bodies are: the
    // agent is handed its events (and raises alerts) ready made.
    let (mut batches, mut alerts) = (Vec::new(), Vec::new());
    match load {
        Load::Events { batch, shape } => {
            let mut next = 1;
            while next <= n {
                let last = (next + batch.max(1) - 1).min(n);
                batches.push((next..=last).map(|i| shape.event(i)).collect::<Vec<_>>());
                next = last + 1;
            }
        }
        Load::Alerts => alerts = (1..=n).map(alert).collect(),
    }
    let clock = Clock::start(server.child.id())?;
    let produce = async {
        for batch in batches.drain(..) {
            writer.events(batch).await;
        }
        for alert in alerts.drain(..) {
            writer.alert(alert).await;
        }
    };
    let ship = async {
        while status.acknowledged.get() < n as u64 {
            if changes.changed().await.is_err() {
                break;
            }
            delivered(sink.deliver_outbox().await)?;
        }
        anyhow::Ok(())
    };
    let ((), shipped) = tokio::join!(produce, ship);
    shipped?;
    let run = clock.stop(n)?;
    let left = writer.outbox_state().await?.depth;
    writer.close().await;
    if left != 0 || status.acknowledged.get() != n as u64 {
        bail!(
            "{} acknowledged, {left} left in the outbox, of {n}",
            status.acknowledged.get()
        );
    }
    Ok(run)
}

/// `events` published by a bare JetStream loop (see the module docs),
/// from the first publish to the last acknowledgement.
async fn bare(server: &Server, host: &str, events: usize, shape: Shape) -> anyhow::Result<Run> {
    let client = async_nats::connect(&server.url).await?;
    let js = async_nats::jetstream::new(client);
    let subject = format!("daemoneye.{host}.events.process");
    let bodies: Vec<Vec<u8>> = (1..=events)
        .map(|n| serde_json::to_vec(&shape.event(n)))
        .collect::<Result<_, _>>()?;
    let clock = Clock::start(server.child.id())?;
    let mut pending = VecDeque::with_capacity(WINDOW);
    for (n, body) in bodies.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("{host}.event-process-{}", n + 1);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        pending.push_back(
            js.publish_with_headers(subject.clone(), headers, body.into())
                .await?,
        );
        if pending.len() >= WINDOW {
            if let Some(ack) = pending.pop_front() {
                ack.await?;
            }
        }
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
    }
    clock.stop(events)
}

/// Seconds to ship the outbox an outage of `queued` events left.
async fn drain(dir: &Path, url: &str, queued: usize, batch: usize) -> anyhow::Result<f64> {
    let (writer, mut sink, status) = sink(dir, url, "drain", queued + 16).await?;
    let mut next = 1;
    while next <= queued {
        let last = (next + batch.max(1) - 1).min(queued);
        writer.events((next..=last).map(event).collect()).await;
        next = last + 1;
    }
    // Everything is committed before the clock starts.
    let depth = writer.outbox_state().await?.depth;
    if depth != queued as u64 {
        bail!("{depth} in the outbox, not {queued}");
    }
    let start = Instant::now();
    delivered(sink.deliver_outbox().await)?;
    let secs = start.elapsed().as_secs_f64();
    let left = writer.outbox_state().await?.depth;
    writer.close().await;
    if left != 0 || status.acknowledged.get() != queued as u64 {
        bail!("{left} left in the outbox after the drain");
    }
    Ok(secs)
}

/// A figure of a run: its name, how it is read off the run, its decimals
/// and its unit.
type Figure = (&'static str, fn(&Run) -> f64, usize, &'static str);

/// One shape's runs: ours and the bare loop's, a pair a repetition.
#[derive(Default)]
struct Pairs {
    ours: Vec<Run>,
    bare: Vec<Run>,
}

impl Pairs {
    /// Prints the shape's figures, named `fleet.<prefix>…` (see the module
    /// docs): medians of the runs, and of each repetition's ratio.
    fn report(&self, prefix: &str) {
        let median_of = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
        let figures: [Figure; 3] = [
            ("events_per_sec", |r| r.per_sec, 0, "events/s"),
            ("cpu_us_per_event", |r| r.cpu_us_per_item, 2, "us"),
            ("server_cpu_us_per_event", |r| r.server_us_per_item, 2, "us"),
        ];
        for (name, f, decimals, unit) in figures {
            let (ours, bare) = (median_of(&self.ours, f), median_of(&self.bare, f));
            report_f(&format!("fleet.{prefix}{name}"), ours, decimals, unit);
            report_f(&format!("fleet.{prefix}bare_{name}"), bare, decimals, unit);
        }
        let paired = |f: fn(&Run, &Run) -> f64| {
            median(
                self.ours
                    .iter()
                    .zip(&self.bare)
                    .map(|(o, b)| f(o, b))
                    .collect(),
            )
        };
        report_ratio(
            &format!("fleet.{prefix}ratio_vs_bare"),
            paired(|o, b| o.per_sec / b.per_sec),
        );
        report_ratio(
            &format!("fleet.{prefix}cpu_ratio_vs_bare"),
            paired(|o, b| b.cpu_us_per_item / o.cpu_us_per_item.max(1e-9)),
        );
    }
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("daemoneye-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let server = Server::start(&dir)?;
        let (mut unique, mut host, mut alerts) = (Pairs::default(), Pairs::default(), Vec::new());
        for rep in 0..o.reps {
            for (shape, pairs) in [(Shape::Unique, &mut unique), (Shape::Host, &mut host)] {
                let load = Load::Events {
                    batch: o.batch,
                    shape,
                };
                let name = format!("ours{rep}{shape:?}");
                // Each side starts with nothing of the last one's left to
                // write back (its store, the stream's files).
                nix::unistd::sync();
                pairs
                    .ours
                    .push(through_outbox(&dir.join(&name), &server, &name, o.events, load).await?);
                nix::unistd::sync();
                pairs
                    .bare
                    .push(bare(&server, &format!("bare{rep}{shape:?}"), o.events, shape).await?);
            }
            let name = format!("alerts{rep}");
            nix::unistd::sync();
            alerts.push(
                through_outbox(&dir.join(&name), &server, &name, o.events, Load::Alerts)
                    .await?
                    .per_sec,
            );
        }
        let queued = o.outage_secs.saturating_mul(o.rate);
        let drained = drain(&dir.join("drain"), &server.url, queued, o.batch).await?;
        anyhow::Ok((unique, host, median(alerts), drained, queued))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (unique, host, alerts, drained, queued) = result?;
    unique.report("");
    host.report("host_");
    report_f("fleet.alerts_per_sec", alerts, 0, "alerts/s");
    report_f("fleet.drain_secs", drained, 2, "s");
    report("fleet.drain_events", queued, "events");
    Ok(())
}
