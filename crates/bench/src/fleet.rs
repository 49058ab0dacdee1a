//! `fleet`: alerts acknowledged by NATS JetStream through the agent's
//! outbox, against a bare client, in the same run on a `nats-server -js`
//! the bench starts on a loopback port (the Debian package `nats-server`).
//!
//! - `fleet.events_per_sec`: alerts given to the agent's store writer (each
//!   stored with its ledger entry and outbox item in one transaction),
//!   shipped by the fleet sink (`FleetSink`, woken after each alert as the
//!   agent's sink worker wakes it, at most one wake-up waiting), each
//!   acknowledged by the stream and removed from the outbox: from the
//!   first write to the last removal.
//! - `fleet.bare_events_per_sec`: the same bodies published by a bare
//!   `async-nats` JetStream loop with the sink's window (256 unacknowledged
//!   publishes, sliding) and a `Nats-Msg-Id` each; `fleet.ratio_vs_bare`.
//! - `fleet.drain_secs`: the outbox an outage leaves (`--outage-secs` at
//!   `--rate` alerts a second, 60 s at 1,000/s by default) shipped by a
//!   connected sink: the time to an empty outbox (the client's reconnect
//!   wait, set by the backoff, is not in it).
//!
//! Medians of `--reps` repetitions; every repetition ships as another
//! host (another store, other message ids).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use daemoneye_agent::sink::{AlertSink, Delivery, FleetConfig, FleetSink, FleetStatus};
use daemoneye_store::{Alert, AlertProcess, Severity, Store, StoreWriter};
use tokio::time::Instant;

use crate::{median, report, report_f, report_ratio};

options! {
    /// Alerts shipped per repetition.
    events: usize = 20_000,
    /// Repetitions.
    reps: usize = 3,
    /// The outage's length, seconds, for `fleet.drain_secs`.
    outage_secs: usize = 60,
    /// Alerts a second during the outage.
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

/// A store in `dir` whose alerts enter the outbox, its writer and a fleet
/// sink over it as `host`, connected (the stream made) before it returns.
async fn sink(
    dir: &Path,
    url: &str,
    host: &str,
    outbox: usize,
) -> anyhow::Result<(StoreWriter, FleetSink, std::sync::Arc<FleetStatus>)> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(dir)?.with_outbox(Some(outbox));
    let writer = StoreWriter::start(store, 1024)?;
    let mut sink = FleetSink::new(FleetConfig::new(url, host), writer.clone());
    let status = sink.status();
    delivered(sink.deliver(&alert(0)).await)?;
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

/// Alerts a second through the outbox (see the module docs).
async fn through_outbox(dir: &Path, url: &str, host: &str, events: usize) -> anyhow::Result<f64> {
    let (writer, mut sink, status) = sink(dir, url, host, events + 16).await?;
    let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
    let start = Instant::now();
    let produce = async {
        for n in 1..=events {
            writer.alert(alert(n)).await;
            // At most one wake-up waits, as in the sink worker.
            let _ = wake.try_send(());
        }
    };
    let ship = async {
        while status.acknowledged.get() < events as u64 {
            if woken.recv().await.is_none() {
                break;
            }
            delivered(sink.deliver(&alert(0)).await)?;
        }
        anyhow::Ok(())
    };
    let ((), shipped) = tokio::join!(produce, ship);
    shipped?;
    let elapsed = start.elapsed();
    let left = writer.outbox_state().await?.depth;
    writer.close().await;
    if left != 0 || status.acknowledged.get() != events as u64 {
        bail!(
            "{} acknowledged, {left} left in the outbox, of {events}",
            status.acknowledged.get()
        );
    }
    Ok(events as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Alerts a second published by a bare JetStream loop (see the module
/// docs).
async fn bare(url: &str, host: &str, events: usize) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let subject = format!("daemoneye.{host}.alerts");
    let bodies: Vec<Vec<u8>> = (1..=events)
        .map(|n| serde_json::to_vec(&alert(n)))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for (n, body) in bodies.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("{host}.alert-{}", n + 1);
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
    Ok(events as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Seconds to ship the outbox an outage of `queued` alerts left.
async fn drain(dir: &Path, url: &str, queued: usize) -> anyhow::Result<f64> {
    let (writer, mut sink, status) = sink(dir, url, "drain", queued + 16).await?;
    for n in 1..=queued {
        writer.alert(alert(n)).await;
    }
    // Everything is committed before the clock starts.
    let depth = writer.outbox_state().await?.depth;
    if depth != queued as u64 {
        bail!("{depth} in the outbox, not {queued}");
    }
    let start = Instant::now();
    delivered(sink.deliver(&alert(0)).await)?;
    let secs = start.elapsed().as_secs_f64();
    let left = writer.outbox_state().await?.depth;
    writer.close().await;
    if left != 0 || status.acknowledged.get() != queued as u64 {
        bail!("{left} left in the outbox after the drain");
    }
    Ok(secs)
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("daemoneye-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let server = Server::start(&dir)?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for rep in 0..o.reps {
            ours.push(
                through_outbox(
                    &dir.join(format!("ours{rep}")),
                    &server.url,
                    &format!("ours{rep}"),
                    o.events,
                )
                .await?,
            );
            base.push(bare(&server.url, &format!("bare{rep}"), o.events).await?);
        }
        let queued = o.outage_secs.saturating_mul(o.rate);
        let drained = drain(&dir.join("drain"), &server.url, queued).await?;
        anyhow::Ok((median(ours), median(base), drained, queued))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, base, drained, queued) = result?;
    report_f("fleet.events_per_sec", ours, 0, "events/s");
    report_f("fleet.bare_events_per_sec", base, 0, "events/s");
    report_ratio("fleet.ratio_vs_bare", ours / base);
    report_f("fleet.drain_secs", drained, 2, "s");
    report("fleet.drain_events", queued, "events");
    Ok(())
}
