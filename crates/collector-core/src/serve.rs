//! Running a collector as a program: everything a collector binary does
//! besides its own flags, source and extras (feature `serve`).
//!
//! Every collector binary (`procmond run`, `perfmond run`, the next ones)
//! runs the same way, and [`Serve`] is that way:
//!
//! - the runtime: a [`Collector`] built from the `[collector]` config
//!   ([`collector_config`]: without a config file, a 5 s shutdown deadline),
//!   the source registered in it ([`Serve::register`]);
//! - `--events-jsonl PATH|-` ([`ServeArgs::events_jsonl`]): every event as
//!   one JSON line, appended to a file or written to stdout, encoded by
//!   [`Serve::with_jsonl`];
//! - `--socket PATH | --no-socket`: the collector IPC protocol
//!   ([`CollectorIpcServer`]: a 0600 socket in a 0700 directory, peers
//!   checked by `SO_PEERCRED`) with the live event stream, health (the
//!   component named after the collector, [`Serve::with_health`]) and the
//!   tasks of [`Serve::with_tasks`]. An explicit `--socket` that cannot be
//!   served is an error; the default one
//!   ([`crate::ipc::default_socket_path`]) is only
//!   warned about, and collection goes on;
//! - `--await-subscriber`: collection starts once a client subscribed
//!   (waiting at most 30 s);
//! - `--metrics-listen ADDR`: every counter of the collector's
//!   [`Registry`](crate::Registry) at `http://ADDR/metrics`, bound before
//!   anything runs (an address that cannot be bound is bad input);
//! - SIGTERM or SIGINT: the runtime shuts down within its deadline
//!   ([`Collector::run`]), then the IPC server and the metrics endpoint
//!   stop and the JSON lines are flushed;
//! - exit codes: [`RunError::Bad`] (bad flags or config) is 2,
//!   [`RunError::Failed`] is 1 ([`exit`]); [`runtime_in_main`] builds the
//!   runtime `main` runs on.
//!
//! A collector's `run` is then its flags, its source and its extras:
//!
//! ```no_run
//! use collector_core::serve::{self, RunError, Serve, ServeArgs};
//! use collector_core::CollectorConfig;
//! # struct Quiet;
//! # #[async_trait::async_trait]
//! # impl collector_core::EventSource for Quiet {
//! #     fn name(&self) -> &'static str { "quiet" }
//! #     fn capabilities(&self) -> collector_core::SourceCaps { collector_core::SourceCaps::PERFORMANCE }
//! #     async fn start(&self, _: tokio::sync::mpsc::Sender<collector_core::CollectionEvent>,
//! #         _: std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> { Ok(()) }
//! #     async fn stop(&self) -> anyhow::Result<()> { Ok(()) }
//! # }
//!
//! #[derive(clap::Parser)]
//! struct Args {
//!     #[arg(long)]
//!     config: Option<std::path::PathBuf>,
//!     #[command(flatten)]
//!     serve: ServeArgs,
//! }
//!
//! #[derive(Default, serde::Deserialize)]
//! #[serde(deny_unknown_fields, default)]
//! struct FileConfig {
//!     collector: CollectorConfig,
//! }
//!
//! async fn run(args: Args) -> Result<(), RunError> {
//!     let file: FileConfig = serve::read_config(args.config.as_deref())?;
//!     let config = serve::collector_config(file.collector, args.config.is_some())?;
//!     let mut serve = Serve::new("quiet", config, args.serve);
//!     serve.register(Quiet)?;
//!     serve.run().await
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let args = <Args as clap::Parser>::parse();
//!     match serve::runtime_in_main("quiet") {
//!         Ok(rt) => serve::exit("quiet", rt.block_on(run(args))),
//!         Err(code) => code,
//!     }
//! }
//! ```

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use daemoneye_lib::proto::{ComponentHealth, DetectionResult, DetectionTask};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ipc::{collector_health, default_socket_path, TaskFuture};
use crate::metrics::MetricsServer;
use crate::{
    CollectionEvent, Collector, CollectorConfig, CollectorHandle, CollectorIpcServer, EventSource,
    IpcError, IpcServerConfig, IpcServerHandle,
};

/// How long `--await-subscriber` waits before collecting anyway.
pub const AWAIT_SUBSCRIBER_LIMIT: Duration = Duration::from_secs(30);

/// The shutdown deadline of a collector run without a config file: nothing a
/// collector does takes long to finish.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags every collector binary shares; flatten them into its own
/// (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Write every event as one JSON object a line to PATH (`-`: stdout).
    #[arg(long, value_name = "PATH|-")]
    pub events_jsonl: Option<String>,
    /// Serve detection tasks, the live event stream and health on this Unix
    /// socket (default: /run/daemoneye/NAME.sock as root, daemoneye/NAME.sock
    /// in the user's runtime directory otherwise; NAME: the collector's, such
    /// as procmond).
    #[arg(long, conflicts_with = "no_socket")]
    pub socket: Option<PathBuf>,
    /// Serve no IPC socket.
    #[arg(long)]
    pub no_socket: bool,
    /// Start collecting only once a client has subscribed to the socket's
    /// events (waiting at most 30 s), so that it sees everything from the
    /// first event on.
    #[arg(long, requires = "socket")]
    pub await_subscriber: bool,
    /// Serve Prometheus metrics (text format) over HTTP at /metrics on
    /// ADDR, for example 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// (internal) Share the socket with this uid too (the agent's, after
    /// it dropped to its user): see [`IpcServerConfig::peer_uid`].
    #[arg(long, hide = true, value_name = "UID", env = "DAEMONEYE_IPC_PEER_UID")]
    pub ipc_peer_uid: Option<u32>,
}

/// The flags of `run` for a collector that looks every interval (perfmond,
/// netmond): its config file, the interval, and the [`ServeArgs`]. They are
/// procmond's where they mean the same, so the agent starts every collector
/// program alike (`run --socket S --no-database --await-subscriber
/// --interval N`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PollingRunArgs {
    /// TOML config file (sections `[collector]` and the collector's own,
    /// named after it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds between looks (default: the collector's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,
    /// The socket, `--events-jsonl`, `--metrics-listen`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Accepted and ignored: the collector stores nothing (the agent passes
    /// it to every collector program it starts with default arguments).
    #[arg(long, hide = true)]
    pub no_database: bool,
}

impl PollingRunArgs {
    /// `--interval` as a duration.
    pub fn interval(&self) -> Option<Duration> {
        self.interval.map(Duration::from_secs)
    }
}

/// Why a collector's run failed.
#[derive(Debug)]
pub enum RunError {
    /// A usage or configuration problem (the binary exits with 2).
    Bad(anyhow::Error),
    /// A failure while starting or running (exit code 1).
    Failed(anyhow::Error),
}

impl RunError {
    /// The exit code a binary returns for it: 2 for [`Bad`](Self::Bad),
    /// 1 for [`Failed`](Self::Failed).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Bad(_) => ExitCode::from(2),
            Self::Failed(_) => ExitCode::FAILURE,
        }
    }

    /// The error, whichever kind.
    pub const fn error(&self) -> &anyhow::Error {
        match self {
            Self::Bad(e) | Self::Failed(e) => e,
        }
    }
}

/// The end of a collector's `main`: success, or the error printed as
/// `<program>: <error and its causes>` and its [exit code](RunError::exit_code).
pub fn exit(program: &str, result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {:#}", e.error());
            e.exit_code()
        }
    }
}

/// The multi-threaded Tokio runtime a collector binary runs on. A failure
/// is printed as `<program>: cannot start the runtime: <error>` and becomes
/// the exit code the program returns.
///
/// # Errors
/// `ExitCode::FAILURE` when the runtime cannot be built.
pub fn runtime_in_main(program: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{program}: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Reads a TOML config file into `T` (its defaults without a file).
///
/// # Errors
/// [`RunError::Bad`] naming the file when it cannot be read or is invalid
/// (an unknown key, when `T` denies them).
pub fn read_config<T>(path: Option<&Path>) -> Result<T, RunError>
where
    T: serde::de::DeserializeOwned + Default,
{
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(RunError::Bad)?;
    toml::from_str(&text)
        .with_context(|| format!("invalid config {}", path.display()))
        .map_err(RunError::Bad)
}

/// The runtime's config for a collector binary: `config` as read, with a
/// [`DEFAULT_SHUTDOWN_TIMEOUT`] when no config file was given, validated.
///
/// # Errors
/// [`RunError::Bad`] when it does not validate.
pub fn collector_config(
    config: CollectorConfig,
    from_file: bool,
) -> Result<CollectorConfig, RunError> {
    let config = if from_file {
        config
    } else {
        config.with_shutdown_timeout(DEFAULT_SHUTDOWN_TIMEOUT)
    };
    config.validate().map_err(|e| RunError::Bad(e.into()))?;
    Ok(config)
}

/// One line of `--events-jsonl` for an event, `None` to leave it out.
pub type JsonlEncoder = fn(&CollectionEvent) -> serde_json::Result<Option<String>>;

/// A task handler for the IPC server.
pub type TaskHandler = Box<dyn Fn(DetectionTask) -> TaskFuture + Send + Sync>;

type TaskSetup = Box<dyn FnOnce(&CollectorHandle) -> anyhow::Result<TaskHandler> + Send + Sync>;
type HealthFn = Box<dyn Fn(&CollectorHandle) -> ComponentHealth + Send + Sync>;
type IpcTask = JoinHandle<Result<(), IpcError>>;
type JsonlTask = JoinHandle<anyhow::Result<()>>;

/// A collector run as a program: build it ([`new`](Self::new),
/// [`register`](Self::register), the `with_*` extras), then
/// [`run`](Self::run) it. See the [module docs](self).
pub struct Serve {
    name: &'static str,
    collector: Collector,
    handle: CollectorHandle,
    args: ServeArgs,
    jsonl: JsonlEncoder,
    tasks: Option<TaskSetup>,
    health: Option<HealthFn>,
}

debug_fields!(Serve { name, args });

/// Every event as its tagged JSON (`domain` and the payload's fields).
fn whole_event(event: &CollectionEvent) -> serde_json::Result<Option<String>> {
    serde_json::to_string(event).map(Some)
}

impl Serve {
    /// The collector `name` (its socket's and health component's name) on a
    /// runtime with `config` (see [`collector_config`]), serving as `args`
    /// say.
    pub fn new(name: &'static str, config: CollectorConfig, args: ServeArgs) -> Self {
        let collector = Collector::new(config);
        Self {
            name,
            handle: collector.handle(),
            collector,
            args,
            jsonl: whole_event,
            tasks: None,
            health: None,
        }
    }

    /// The collector's one registry: register a source's counters here
    /// before [`register`](Self::register)ing it.
    pub fn metrics(&self) -> &crate::Registry {
        self.handle.metrics()
    }

    /// A handle to the collector (subscribe, stats, health, shutdown).
    pub const fn handle(&self) -> &CollectorHandle {
        &self.handle
    }

    /// Registers `source` in the runtime.
    ///
    /// # Errors
    /// [`RunError::Failed`] when the runtime refuses it (too many sources).
    pub fn register(&mut self, source: impl EventSource + 'static) -> Result<(), RunError> {
        self.collector
            .register(Box::new(source))
            .map_err(|e| RunError::Failed(e.into()))
    }

    /// How `--events-jsonl` writes an event (default: the whole event, tagged
    /// by `domain`).
    #[must_use]
    pub fn with_jsonl(mut self, encode: JsonlEncoder) -> Self {
        self.jsonl = encode;
        self
    }

    /// The IPC task handler, built once the socket is to be served; a setup
    /// that fails is handled as a socket that cannot be served. Without
    /// one, every task fails naming the collector.
    #[must_use]
    pub fn with_tasks<F>(mut self, setup: F) -> Self
    where
        F: FnOnce(&CollectorHandle) -> anyhow::Result<TaskHandler> + Send + Sync + 'static,
    {
        self.tasks = Some(Box::new(setup));
        self
    }

    /// The health the IPC server answers (default:
    /// [`collector_health`] under the collector's name); the server adds
    /// its own component `ipc`.
    #[must_use]
    pub fn with_health<F>(mut self, health: F) -> Self
    where
        F: Fn(&CollectorHandle) -> ComponentHealth + Send + Sync + 'static,
    {
        self.health = Some(Box::new(health));
        self
    }

    /// Serves and collects until SIGTERM or SIGINT, then stops everything
    /// in order (runtime, IPC server, metrics, JSON lines).
    ///
    /// # Errors
    /// [`RunError::Bad`] for a `--metrics-listen` address that cannot be
    /// bound; [`RunError::Failed`] for an `--events-jsonl` file that cannot
    /// be opened or written, an explicit `--socket` that cannot be served,
    /// or the runtime failing.
    pub async fn run(mut self) -> Result<(), RunError> {
        // Bound before anything runs: an address that cannot be served is bad input.
        let metrics = match self.args.metrics_listen {
            Some(addr) => Some(self.spawn_metrics(addr).await?),
            None => None,
        };
        let writer = self.spawn_jsonl_writer()?;
        let ipc = self.serve_ipc().await?;
        if let (true, Some((handle, _))) = (self.args.await_subscriber, &ipc) {
            if tokio::time::timeout(AWAIT_SUBSCRIBER_LIMIT, handle.subscribed())
                .await
                .is_err()
            {
                tracing::warn!(waited = ?AWAIT_SUBSCRIBER_LIMIT, "no subscriber yet; collecting anyway");
            }
        }
        self.collector.run().await.map_err(RunError::Failed)?;
        if let Some((handle, task)) = ipc {
            handle.shutdown();
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "ipc server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "ipc server task failed"),
            }
        }
        if let Some((stop, task)) = metrics {
            stop.cancel();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "metrics server task failed");
            }
        }
        if let Some(w) = writer {
            w.await
                .map_err(|e| RunError::Failed(e.into()))?
                .map_err(RunError::Failed)?;
        }
        Ok(())
    }

    async fn spawn_metrics(
        &self,
        addr: SocketAddr,
    ) -> Result<(CancellationToken, JoinHandle<()>), RunError> {
        let server = MetricsServer::bind(addr, self.metrics().clone())
            .await
            .map_err(|e| RunError::Bad(e.into()))?;
        if let Ok(bound) = server.local_addr() {
            tracing::info!(addr = %bound, "serving metrics at /metrics");
        }
        let stop = CancellationToken::new();
        Ok((stop.clone(), tokio::spawn(server.run(stop))))
    }

    /// `--events-jsonl`: every event the encoder keeps as one JSON line to a
    /// file (appended) or stdout, flushed after each batch.
    fn spawn_jsonl_writer(&self) -> Result<Option<JsonlTask>, RunError> {
        let Some(target) = self.args.events_jsonl.as_deref() else {
            return Ok(None);
        };
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .with_context(|| format!("cannot open {target}"))
                    .map_err(RunError::Failed)?,
            )
        };
        let encode = self.jsonl;
        let mut sub = self.handle().subscribe();
        Ok(Some(tokio::spawn(async move {
            let mut out = BufWriter::new(out);
            while let Some(batch) = sub.recv_batch().await {
                for event in batch.iter() {
                    if let Some(line) = encode(event)? {
                        writeln!(out, "{line}")?;
                    }
                }
                out.flush()?;
            }
            anyhow::Ok(())
        })))
    }

    /// Binds the IPC socket and serves the tasks, the event stream and
    /// health. An explicit `--socket` that cannot be served is an error; the
    /// default one is only warned about, so collection goes on.
    async fn serve_ipc(&mut self) -> Result<Option<(IpcServerHandle, IpcTask)>, RunError> {
        if self.args.no_socket {
            return Ok(None);
        }
        let name = self.name;
        let explicit = self.args.socket.is_some();
        let path = self
            .args
            .socket
            .clone()
            .unwrap_or_else(|| default_socket_path(name));
        let tasks = self.tasks.take();
        let health = self.health.take();
        let handle = self.handle().clone();
        let setup = async {
            let handler: TaskHandler = match tasks {
                Some(setup) => setup(&handle)?,
                None => Box::new(move |task: DetectionTask| {
                    let result = DetectionResult::failure(
                        &task.task_id,
                        format!("no tasks are served by {name}"),
                    );
                    Box::pin(async move { result })
                }),
            };
            let health = health
                .unwrap_or_else(|| Box::new(move |h: &CollectorHandle| collector_health(name, h)));
            let server = CollectorIpcServer::new(
                IpcServerConfig {
                    peer_uid: self.args.ipc_peer_uid,
                    ..IpcServerConfig::new(&path)
                },
                self.collector.capabilities(),
            )
            .await?
            .with_events(handle.clone())
            .with_name(name)
            .with_health({
                let handle = handle.clone();
                move || {
                    let report = health(&handle);
                    Box::pin(async move { report })
                }
            });
            anyhow::Ok((server, handler))
        };
        match setup.await {
            Ok((mut server, handler)) => {
                tracing::info!(path = %path.display(), "serving ipc");
                let ipc = server.handle();
                ipc.register_metrics(handle.metrics());
                let task = tokio::spawn(async move { server.start(handler).await });
                Ok(Some((ipc, task)))
            }
            Err(e) if explicit => Err(RunError::Failed(
                e.context(format!("cannot serve ipc on {}", path.display())),
            )),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "not serving ipc");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn exit_codes_by_kind() {
        let bad = RunError::Bad(anyhow::anyhow!("no"));
        let failed = RunError::Failed(anyhow::anyhow!("no"));
        assert_eq!(bad.exit_code(), ExitCode::from(2));
        assert_eq!(failed.exit_code(), ExitCode::FAILURE);
        assert_eq!(exit("t", Ok(())), ExitCode::SUCCESS);
        assert_eq!(exit("t", Err(bad)), ExitCode::from(2));
    }

    /// A fresh 0700 directory of this test's own.
    fn private_dir(test: &str) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("serve-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    fn runtime_config() -> CollectorConfig {
        collector_config(CollectorConfig::default(), false).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_ipc_jsonl_and_metrics_until_the_source_ends() {
        use crate::testing::Replay;
        use crate::{CollectorIpcClient, IpcClientConfig, ProcessEvent, SourceCaps};

        let dir = private_dir("run");
        let (socket, jsonl) = (dir.join("t.sock"), dir.join("events.jsonl"));
        let metrics_listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let args = ServeArgs {
            events_jsonl: Some(jsonl.to_str().unwrap().to_owned()),
            socket: Some(socket.clone()),
            metrics_listen: Some(metrics_listen),
            ..ServeArgs::default()
        };
        let (source, feed) = Replay::fed("replay", SourceCaps::PROCESS);
        let mut serve = Serve::new("testcol", runtime_config(), args);
        serve.register(source).unwrap();
        let run = tokio::spawn(serve.run());

        // The client retries with backoff until the socket is bound.
        let client = CollectorIpcClient::connect(IpcClientConfig::new(&socket))
            .await
            .unwrap();
        let health = client.health().await.unwrap();
        assert_eq!(health.name, "testcol");
        assert!(
            health.components.iter().any(|c| c.name == "ipc"),
            "{health:?}"
        );
        let task = DetectionTask {
            task_id: "t1".to_owned(),
            task_type: daemoneye_lib::proto::ProtoTaskType::EnumerateProcesses.into(),
            ..DetectionTask::default()
        };
        let result = client.send_task(task).await.unwrap();
        assert_eq!(
            result.error_message.as_deref(),
            Some("no tasks are served by testcol"),
            "{result:?}"
        );
        let reply = tokio::task::spawn_blocking(move || {
            crate::testing::scrape_metrics(metrics_listen).unwrap()
        })
        .await
        .unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        // The IPC server's counters are in the collector's registry.
        assert!(
            reply.contains("daemoneye_tasks_failed_total{stage=\"ipc\"} 1"),
            "{reply}"
        );
        drop(client);

        for pid in [7, 8] {
            let event = CollectionEvent::Process(ProcessEvent::new(pid, "ls"));
            feed.send(event).await.unwrap();
        }
        drop(feed); // the source ends, and with it the run
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let pids: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| {
                assert_eq!(v["domain"], "process", "{v}");
                v["pid"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(pids, [7, 8]);
        assert!(!socket.exists(), "the socket outlived the run");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn what_cannot_be_served_is_refused_before_collecting() {
        use crate::testing::Replay;
        use crate::SourceCaps;

        let dir = private_dir("refused");
        let serve = |args: ServeArgs| {
            let mut serve = Serve::new("testcol", runtime_config(), args);
            let (source, _feed) = Replay::fed("replay", SourceCaps::PROCESS);
            serve.register(source).unwrap();
            serve
        };
        // A metrics address in use: bad input (exit code 2).
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let args = ServeArgs {
            metrics_listen: Some(taken.local_addr().unwrap()),
            no_socket: true,
            ..ServeArgs::default()
        };
        let err = serve(args).run().await.unwrap_err();
        assert!(matches!(err, RunError::Bad(_)), "{err:?}");
        assert!(format!("{:#}", err.error()).contains("cannot listen for metrics"));

        // An explicit socket whose tasks cannot be set up: a failure naming it.
        let socket = dir.join("t.sock");
        let args = ServeArgs {
            socket: Some(socket.clone()),
            ..ServeArgs::default()
        };
        let err = serve(args)
            .with_tasks(|_| anyhow::bail!("no hasher"))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::Failed(_)), "{err:?}");
        let text = format!("{:#}", err.error());
        assert!(
            text.contains(&format!("cannot serve ipc on {}", socket.display()))
                && text.contains("no hasher"),
            "{text}"
        );

        // An explicit socket in a directory others may write to.
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let args = ServeArgs {
            socket: Some(open.join("t.sock")),
            ..ServeArgs::default()
        };
        let err = serve(args).run().await.unwrap_err();
        assert!(matches!(err, RunError::Failed(_)), "{err:?}");

        // An --events-jsonl file that cannot be opened.
        let args = ServeArgs {
            events_jsonl: Some(dir.join("missing/x.jsonl").to_str().unwrap().to_owned()),
            no_socket: true,
            ..ServeArgs::default()
        };
        let err = serve(args).run().await.unwrap_err();
        assert!(
            format!("{:#}", err.error()).contains("cannot open"),
            "{err:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct File {
        collector: CollectorConfig,
    }

    #[test]
    fn config_files_read_refused_and_defaulted() {
        let dir = std::env::temp_dir().join(format!("serve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[collector]\nshutdown_timeout = \"7s\"\n").unwrap();
        let file: File = read_config(Some(&good)).unwrap();
        let config = collector_config(file.collector, true).unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(7));

        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "colector = 1\n").unwrap();
        let err = read_config::<File>(Some(&unknown)).unwrap_err();
        assert!(matches!(err, RunError::Bad(_)));
        assert!(
            format!("{:#}", err.error()).contains("unknown.toml"),
            "{err:?}"
        );
        let missing = read_config::<File>(Some(&dir.join("missing.toml"))).unwrap_err();
        assert!(format!("{:#}", missing.error()).contains("cannot read"));

        let file: File = read_config(None).unwrap();
        let config = collector_config(file.collector, false).unwrap();
        assert_eq!(config.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        let invalid = CollectorConfig::default().with_event_buffer_size(0);
        assert!(matches!(
            collector_config(invalid, true),
            Err(RunError::Bad(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
