//! The agent's configuration: an optional TOML file, `DAEMONEYE_*`
//! environment variables and the flags of `daemoneye-agent run`, resolved
//! into one validated [`Settings`] before anything starts.
//!
//! Precedence, highest first: a flag, its environment variable (clap reads
//! both into [`RunArgs`]), the file ([`AgentConfig`], named by `--config` or
//! `DAEMONEYE_CONFIG`), the default. Every key of the file is optional and
//! an unknown one is refused, naming the file, the key and its line.
//! Durations are written with units (`"90s"`, `"5m"`, `"1h"`); on the
//! command line a plain number is seconds.
//!
//! | file key | flag | environment |
//! |---|---|---|
//! | | `--config` | `DAEMONEYE_CONFIG` |
//! | `data_dir` | `--data-dir` | `DAEMONEYE_DATA_DIR` |
//! | `rules_dir` | `--rules-dir` | `DAEMONEYE_RULES_DIR` |
//! | `sweep_interval` | `--sweep-interval` (`--sweep-secs`) | `DAEMONEYE_SWEEP_INTERVAL` |
//! | `dedup_window` | `--dedup-window` (`--dedup-window-secs`) | `DAEMONEYE_DEDUP_WINDOW` |
//! | `checkpoint_interval` | `--checkpoint-interval` | `DAEMONEYE_CHECKPOINT_INTERVAL` |
//! | `retention` (how long the store keeps events, alerts, snapshots; default for ever) | | |
//! | `max_store_bytes` (the store's pages in use, at least 1 MiB; default unbounded) | | |
//! | `sinks.alerts_jsonl` | `--alerts-jsonl` | `DAEMONEYE_ALERTS_JSONL` |
//! | `sinks.syslog` | `--syslog` | `DAEMONEYE_SYSLOG` |
//! | `sinks.webhook` | `--webhook` | `DAEMONEYE_WEBHOOK` |
//! | `sinks.webhook_headers` | `--webhook-header` (repeatable) | |
//! | `sinks.webhook_headers_file` | `--webhook-headers-file` | `DAEMONEYE_WEBHOOK_HEADERS_FILE` |
//! | `sinks.format` (every sink's alerts: `native`, `ecs`, `ocsf`) | `--alert-format` | `DAEMONEYE_ALERT_FORMAT` |
//! | `sinks.formats.{stdout,alerts_jsonl,syslog,webhook,fleet}` (one sink's, over `sinks.format`) | | |
//! | `fleet.url` (NATS JetStream, see [`crate::sink::nats`]) | `--nats` | `DAEMONEYE_NATS` |
//! | `fleet.host` (default: the host name) | `--fleet-host` | `DAEMONEYE_FLEET_HOST` |
//! | `fleet.subject_prefix`, `fleet.stream`, `fleet.create_stream`, `fleet.creds_file`, `fleet.nkey_file`, `fleet.tls_ca_file`, `fleet.outbox_max_items`, `fleet.max_in_flight`, `fleet.max_outbox_age`, `fleet.replicas`, `fleet.events`, `fleet.stream_max_age`, `fleet.stream_max_bytes` | | |
//! | `[[collector]]` | `--procmond`, `--collector-socket` (replace the list) | `DAEMONEYE_PROCMOND`, `DAEMONEYE_COLLECTOR_SOCKET` |
//! | `collector.interval` | `--interval` (every procmond the agent starts) | `DAEMONEYE_INTERVAL` |
//! | `collector.sustained_cpu_percent`, `collector.sustained_cpu_for` (the built-in perfmond) | | |
//! | `collector.tier` (the built-in procmond: `auto`, `ebpf`, `connector`, `polling`) | | |
//! | `collector.watch`, `collector.watch_root` (the built-in fsmond: the watched paths, and the root they are under) | | |
//!
//! Without `[[collector]]` entries (and without `--procmond` or
//! `--collector-socket`), the agent runs four built-in collectors: procmond
//! (`builtin = "procmond"`), perfmond (`builtin = "perfmond"`, sampling
//! every 10 s, its sustained-CPU anomaly at 90 % of a core for 60 s),
//! netmond (`builtin = "netmond"`, every socket every 5 s) and fsmond
//! (`builtin = "fsmond"`, the persistence paths of
//! `fsmond::FsmondConfig::default` in real time).
//! | `metrics_listen` | `--metrics-listen` (off by default) | `DAEMONEYE_METRICS_LISTEN` |
//! | `user` (as root: the agent's user, see [`crate::spawner`]) | | |
//!
//! ```
//! use daemoneye_agent::config::{AgentConfig, Launch, RunArgs, Settings};
//!
//! let file = AgentConfig::from_toml_str(
//!     r#"
//!     data_dir = "/var/lib/daemoneye"
//!     sweep_interval = "5m"
//!
//!     [[collector]]
//!     name = "procmond"
//!     builtin = "procmond"
//!     interval = "10s"
//!
//!     [[collector]]
//!     name = "remote"
//!     socket = "/run/daemoneye/remote.sock"
//!     "#,
//! )?;
//! let settings = Settings::resolve(file, None, &RunArgs::default())?;
//! assert_eq!(settings.sweep_interval.as_secs(), 300);
//! assert_eq!(settings.collectors.len(), 2);
//! assert!(matches!(settings.collectors[1].launch, Launch::Connect));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use collector_core::SourceCaps;
use daemoneye_lib::proto::{Domain, EventKind};
use serde::Deserialize;

use crate::sink::{AlertFormat, FleetConfig, SinkFormats, SyslogTarget};
use crate::sink::{WebhookHeader, WebhookUrl};

/// Seconds between a started procmond's reconciliation snapshots, unless
/// configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Time between rule sweeps over the whole process table, unless configured.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Time within which a repeated alert is suppressed, unless configured.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);
/// Time between the ledger's checkpoints sent to every sink (besides the
/// ones at start and shutdown), unless configured.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// The name of the collector the agent runs when none is configured.
pub const DEFAULT_COLLECTOR: &str = "procmond";
/// The name of the performance collector the agent runs beside it when none
/// is configured.
pub const DEFAULT_PERFORMANCE_COLLECTOR: &str = "perfmond";
/// Time between the built-in perfmond's samples, unless configured.
pub const DEFAULT_PERFORMANCE_INTERVAL: Duration = Duration::from_secs(10);
/// The name of the network collector the agent runs beside them when none
/// is configured.
pub const DEFAULT_NETWORK_COLLECTOR: &str = "netmond";
/// Time between the built-in netmond's socket snapshots, unless configured
/// (a connection shorter than this may be missed).
pub const DEFAULT_NETWORK_INTERVAL: Duration = Duration::from_secs(5);
/// The name of the file collector the agent runs beside them when none is
/// configured.
pub const DEFAULT_FILE_COLLECTOR: &str = "fsmond";

/// A configuration that cannot be used, naming where it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML of the expected shape (an unknown key,
    /// a wrong type); the source names the key and its line.
    #[error("invalid config {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// A value that parsed but cannot be used.
    #[error("invalid `{key}` in {origin}: {reason}")]
    Invalid {
        /// Where the value came from: the file, or the flags and defaults.
        origin: String,
        /// The key, such as `sweep_interval` or `collector[1].interval`.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

/// Parses a duration: a plain number is seconds, otherwise units as in
/// `90s`, `5m`, `1h 30m`, `250ms`.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (a number of seconds, or a duration such as 90s, 5m, 1h)"))
}

/// The flags of `daemoneye-agent run`, each also read from its `DAEMONEYE_*`
/// environment variable (a flag wins). Every one is optional: what is not
/// given comes from the config file, then from the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// A TOML config file; every key is optional (see
    /// packaging/agent.toml).
    #[arg(long, value_name = "FILE", env = "DAEMONEYE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (default: /var/lib/daemoneye as root, the user's state
    /// directory otherwise).
    #[arg(long, env = "DAEMONEYE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A directory of rule files (`*.toml`, `*.yaml`, `*.yml`) besides the built-in pack
    /// (default: `<data-dir>/rules` when it exists).
    #[arg(long, env = "DAEMONEYE_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Also append alerts as JSON lines to this file.
    #[arg(long, env = "DAEMONEYE_ALERTS_JSONL")]
    pub alerts_jsonl: Option<PathBuf>,
    /// Also send alerts to syslog (RFC 5424, facility authpriv): a datagram
    /// socket path such as /dev/log, or udp://IP:PORT.
    #[arg(long, value_name = "PATH|udp://IP:PORT", env = "DAEMONEYE_SYSLOG")]
    pub syslog: Option<SyslogTarget>,
    /// Write every sink's alerts in this format: native (the agent's own
    /// record), ecs (Elastic Common Schema) or ocsf (OCSF Process Activity).
    /// Over the file's `sinks.format` and `sinks.formats`.
    #[arg(long, value_name = "native|ecs|ocsf", env = "DAEMONEYE_ALERT_FORMAT")]
    pub alert_format: Option<AlertFormat>,
    /// Also POST alerts as JSON to this http(s) URL (queued, retried with
    /// backoff; what cannot be delivered is counted).
    #[arg(
        long,
        value_name = "URL",
        env = "DAEMONEYE_WEBHOOK",
        hide_env_values = true
    )]
    pub webhook: Option<WebhookUrl>,
    /// A header sent with every webhook request, `Name: value` (repeatable;
    /// replaces the file's `webhook_headers`).
    #[arg(long = "webhook-header", value_name = "NAME: VALUE")]
    pub webhook_headers: Vec<WebhookHeader>,
    /// Headers for webhook requests from a file only its owner can read,
    /// one `Name: value` a line (secrets such as `Authorization` belong
    /// here: local users can read the command line).
    #[arg(long, value_name = "PATH", env = "DAEMONEYE_WEBHOOK_HEADERS_FILE")]
    pub webhook_headers_file: Option<PathBuf>,
    /// Run this procmond binary as the only collector instead of the
    /// configured ones.
    #[arg(long, conflicts_with = "collector_socket", env = "DAEMONEYE_PROCMOND")]
    pub procmond: Option<PathBuf>,
    /// Start no collector: connect to the one serving this socket (for
    /// example `procmond run --socket PATH`), reconnecting when it goes;
    /// replaces the configured collectors.
    #[arg(long, env = "DAEMONEYE_COLLECTOR_SOCKET")]
    pub collector_socket: Option<PathBuf>,
    /// Time between the reconciliation snapshots of every procmond the
    /// agent starts (seconds, or with units: 30s, 1m; default 30 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "DAEMONEYE_INTERVAL")]
    pub interval: Option<Duration>,
    /// Time between rule sweeps over the whole process table (seconds, or
    /// with units; default 60 s).
    #[arg(
        long,
        visible_alias = "sweep-secs",
        value_name = "DURATION",
        value_parser = parse_duration,
        env = "DAEMONEYE_SWEEP_INTERVAL"
    )]
    pub sweep_interval: Option<Duration>,
    /// Time within which a repeated alert (same rule, same process) is
    /// suppressed (seconds, or with units; default 1 h).
    #[arg(
        long,
        visible_alias = "dedup-window-secs",
        value_name = "DURATION",
        value_parser = parse_duration,
        env = "DAEMONEYE_DEDUP_WINDOW"
    )]
    pub dedup_window: Option<Duration>,
    /// Time between the ledger's checkpoints (its head, sent to every sink;
    /// also one at start and one at shutdown) (seconds, or with units;
    /// default 5 min).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        env = "DAEMONEYE_CHECKPOINT_INTERVAL"
    )]
    pub checkpoint_interval: Option<Duration>,
    /// Serve Prometheus metrics (text format) over HTTP at /metrics on
    /// ADDR, for example 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR", env = "DAEMONEYE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Ship alerts to this NATS JetStream server (`nats://host:4222`,
    /// comma-separated for several), at least once (the fleet sink).
    #[arg(long = "nats", value_name = "URL", env = "DAEMONEYE_NATS")]
    pub nats: Option<String>,
    /// This host's name in the fleet's subjects (default: the host name).
    #[arg(long, value_name = "NAME", env = "DAEMONEYE_FLEET_HOST")]
    pub fleet_host: Option<String>,
}

/// The config file, as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The data directory: store, sockets.
    pub data_dir: Option<PathBuf>,
    /// A directory of rule files besides the built-in pack.
    pub rules_dir: Option<PathBuf>,
    /// Time between rule sweeps over the whole process table.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Option<Duration>,
    /// Time within which a repeated alert is suppressed.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Option<Duration>,
    /// Time between the ledger's checkpoints sent to every sink.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Option<Duration>,
    /// How long the store keeps lifecycle events, alerts, snapshots and
    /// exited processes (`"30days"`); for ever when absent.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// The most bytes the store's database pages may take; past it the
    /// oldest data is pruned. Unbounded when absent.
    pub max_store_bytes: Option<u64>,
    /// Where `/metrics` is served (`"127.0.0.1:9464"`); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// The user the agent runs as once started as root (see
    /// [`crate::spawner`]); default `daemoneye` if it exists, else `nobody`;
    /// `root` keeps the agent root (no separation).
    pub user: Option<String>,
    /// Where alerts go besides stdout and the store (`[sinks]`).
    pub sinks: SinksConfig,
    /// Alerts shipped to NATS JetStream (`[fleet]`).
    pub fleet: FleetFileConfig,
    /// The collectors the agent supervises (`[[collector]]`); when absent,
    /// the built-in procmond alone.
    #[serde(rename = "collector")]
    pub collectors: Option<Vec<CollectorEntryConfig>>,
}

/// The `[sinks]` section, as written. Its `Debug` shows the webhook
/// headers' names, not their values.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Append alerts as JSON lines to this file.
    pub alerts_jsonl: Option<PathBuf>,
    /// Syslog target: a datagram socket path, or `udp://IP:PORT`.
    pub syslog: Option<String>,
    /// Webhook URL (http or https).
    pub webhook: Option<String>,
    /// Webhook headers, `Name: value` each (secrets belong in
    /// `webhook_headers_file`).
    pub webhook_headers: Vec<String>,
    /// A file of webhook headers only its owner can read.
    pub webhook_headers_file: Option<PathBuf>,
    /// The format of every sink's alerts (default `native`).
    pub format: Option<AlertFormat>,
    /// One sink's format, over `format`.
    pub formats: SinkFormatsConfig,
}

/// `[fleet]`: the fleet sink, as written (on when `url` or `--nats` is
/// given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetFileConfig {
    /// The NATS server(s), `nats://host:4222`, comma-separated.
    pub url: Option<String>,
    /// This host's name in subjects and message ids.
    pub host: Option<String>,
    /// The subjects' first token (default `daemoneye`).
    pub subject_prefix: Option<String>,
    /// The JetStream stream (default `DAEMONEYE`).
    pub stream: Option<String>,
    /// Create the stream when missing (default true).
    pub create_stream: Option<bool>,
    /// A NATS credentials file.
    pub creds_file: Option<PathBuf>,
    /// A file holding a user's nkey seed (instead of a creds file).
    pub nkey_file: Option<PathBuf>,
    /// A CA file for the server's certificate (TLS required then).
    pub tls_ca_file: Option<PathBuf>,
    /// The most items the outbox holds (default 100000; past it events are
    /// dropped first, then alerts, checkpoints last, the oldest first).
    pub outbox_max_items: Option<usize>,
    /// The most unacknowledged publishes at a time (default 256).
    pub max_in_flight: Option<usize>,
    /// How long the oldest item may wait in the outbox before health says
    /// degraded (default 5m).
    #[serde(with = "humantime_serde")]
    pub max_outbox_age: Option<Duration>,
    /// The copies of a stream the sink creates (default 1; 1 to 5).
    pub replicas: Option<usize>,
    /// The event domains shipped besides alerts and checkpoints:
    /// `process`, `network`, `filesystem`, `performance` (default none).
    pub events: Option<Vec<String>>,
    /// How long a stream the agent creates keeps a message (default 30
    /// days).
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Option<Duration>,
    /// The most bytes a stream the agent creates holds, the oldest
    /// discarded past it (default 10 GiB).
    pub stream_max_bytes: Option<u64>,
}

/// `[sinks.formats]`: one sink's alert format, over `sinks.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkFormatsConfig {
    /// Stdout's.
    pub stdout: Option<AlertFormat>,
    /// The alerts file's.
    pub alerts_jsonl: Option<AlertFormat>,
    /// Syslog's message bodies.
    pub syslog: Option<AlertFormat>,
    /// The webhook's bodies.
    pub webhook: Option<AlertFormat>,
    /// The fleet's messages.
    pub fleet: Option<AlertFormat>,
}

impl std::fmt::Debug for SinksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .webhook_headers
            .iter()
            .map(|h| h.split_once(':').map_or("?", |(name, _)| name.trim()))
            .collect();
        f.debug_struct("SinksConfig")
            .field("alerts_jsonl", &self.alerts_jsonl)
            .field("syslog", &self.syslog)
            .field("webhook", &self.webhook)
            .field("webhook_headers", &names)
            .field("webhook_headers_file", &self.webhook_headers_file)
            .field("format", &self.format)
            .field("formats", &self.formats)
            .finish()
    }
}

/// The collectors built into the agent's binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuiltinCollector {
    /// procmond's process collector (`daemoneye-agent collect`).
    Procmond,
    /// perfmond's performance collector (`daemoneye-agent
    /// collect-performance`), without any privilege.
    Perfmond,
    /// netmond's network collector (`daemoneye-agent collect-network`),
    /// with `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH` only.
    Netmond,
    /// fsmond's file collector (`daemoneye-agent collect-files`), with
    /// `CAP_SYS_ADMIN` and `CAP_DAC_READ_SEARCH` only.
    Fsmond,
}

impl BuiltinCollector {
    /// The domain it serves.
    pub fn domain(self) -> CollectorDomain {
        match self {
            Self::Procmond => CollectorDomain::Process,
            Self::Perfmond => CollectorDomain::Performance,
            Self::Netmond => CollectorDomain::Network,
            Self::Fsmond => CollectorDomain::Filesystem,
        }
    }

    /// Its name, as in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Procmond => "procmond",
            Self::Perfmond => "perfmond",
            Self::Netmond => "netmond",
            Self::Fsmond => "fsmond",
        }
    }

    /// Its interval unless configured, when it has its own (procmond's is
    /// the one `--interval` sets; fsmond, not polled, has none).
    fn own_interval(self) -> Option<Duration> {
        match self {
            Self::Procmond | Self::Fsmond => None,
            Self::Perfmond => Some(DEFAULT_PERFORMANCE_INTERVAL),
            Self::Netmond => Some(DEFAULT_NETWORK_INTERVAL),
        }
    }
}

/// The event domain a collector serves, checked in its handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CollectorDomain {
    /// Processes.
    #[default]
    Process,
    /// Network connections and sockets.
    Network,
    /// File operations.
    Filesystem,
    /// Performance metrics.
    Performance,
}

impl CollectorDomain {
    /// The protocol's domain.
    pub fn domain(self) -> Domain {
        match self {
            Self::Process => Domain::Process,
            Self::Network => Domain::Network,
            Self::Filesystem => Domain::Filesystem,
            Self::Performance => Domain::Performance,
        }
    }

    /// The capability its collector must report.
    pub fn capability(self) -> SourceCaps {
        match self {
            Self::Process => SourceCaps::PROCESS,
            Self::Network => SourceCaps::NETWORK,
            Self::Filesystem => SourceCaps::FILESYSTEM,
            Self::Performance => SourceCaps::PERFORMANCE,
        }
    }

    /// The event kind subscribed to.
    pub fn event_kind(self) -> EventKind {
        match self {
            Self::Process => EventKind::Process,
            Self::Network => EventKind::Network,
            Self::Filesystem => EventKind::Filesystem,
            Self::Performance => EventKind::Performance,
        }
    }

    /// The lowercase name, as in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Network => "network",
            Self::Filesystem => "filesystem",
            Self::Performance => "performance",
        }
    }
}

/// One `[[collector]]` entry, as written: a name, and either `builtin`,
/// `program` (with `args`), or only a `socket` to connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorEntryConfig {
    /// Unique; names the collector in logs and health, and its default
    /// socket `<data-dir>/<name>.sock`.
    pub name: String,
    /// Run a collector built into the agent.
    #[serde(default)]
    pub builtin: Option<BuiltinCollector>,
    /// Run this program.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// The program's arguments, `{socket}` replaced by the socket path
    /// (default: procmond's, `run --socket {socket} --no-database
    /// --await-subscriber --interval N`).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// The built-in procmond: its tier of kernel events (`auto`, the
    /// default: eBPF, else the process connector, else polling; or one
    /// forced, and then starting fails without it).
    #[serde(default)]
    pub tier: Option<procmond::source::TierChoice>,
    /// The socket the collector serves (default `<data-dir>/<name>.sock`);
    /// alone, the agent connects to it and starts nothing.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The domain it must serve (default `process`; `performance` for the
    /// built-in perfmond, `network` for the built-in netmond).
    #[serde(default)]
    pub domain: Option<CollectorDomain>,
    /// Snapshot interval of a procmond whose arguments the agent builds, the
    /// built-in perfmond's sampling interval, or the built-in netmond's
    /// time between socket snapshots (whole seconds).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// The built-in perfmond: the sustained-CPU anomaly's threshold, in
    /// percent of one core (default 90).
    #[serde(default)]
    pub sustained_cpu_percent: Option<u32>,
    /// The built-in perfmond: how long a process holds the threshold before
    /// it is an anomaly (default 60 s; whole seconds).
    #[serde(default, with = "humantime_serde")]
    pub sustained_cpu_for: Option<Duration>,
    /// The built-in fsmond: the paths it watches, each with everything
    /// under it (absolute; a component `*` matches any one name; default
    /// the persistence paths: `/etc`, `/usr/bin`, `/usr/sbin`,
    /// `/usr/local/bin`, `/usr/lib/systemd/system`, `/root/.ssh`,
    /// `/home/*/.ssh`, `/var/spool/cron`).
    #[serde(default)]
    pub watch: Option<Vec<PathBuf>>,
    /// The built-in fsmond: where the watched system's `/` is (default the
    /// host's): the watched paths are under it, and its events name paths
    /// as that system sees them (a container's root filesystem, a chroot).
    #[serde(default)]
    pub watch_root: Option<PathBuf>,
}

impl AgentConfig {
    /// Parses the file's text.
    ///
    /// # Errors
    /// The parser's error, naming an unknown key and its line.
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`], naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The agent's validated settings: what [`Agent::build`](crate::agent::Agent::build)
/// runs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Extra rules (`None`: `<data-dir>/rules` when it exists).
    pub rules_dir: Option<PathBuf>,
    /// Time between rule sweeps, never zero.
    pub sweep_interval: Duration,
    /// Deduplication window.
    pub dedup_window: Duration,
    /// Time between the ledger's checkpoints, never zero.
    pub checkpoint_interval: Duration,
    /// How long the store keeps its data (`None`: for ever), never zero.
    pub retention: Option<Duration>,
    /// The store's size bound in bytes (`None`: unbounded), at least
    /// [`MIN_MAX_BYTES`](daemoneye_store::retention::MIN_MAX_BYTES).
    pub max_store_bytes: Option<u64>,
    /// Where `/metrics` is served; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The user to run as when started as root (`None`: the default, see
    /// [`AgentConfig::user`]).
    pub user: Option<String>,
    /// The sinks: stdout always, and those the settings name besides the
    /// store.
    pub sinks: crate::sink::SinksConfig,
    /// The supervised collectors, at least one, names unique.
    pub collectors: Vec<CollectorSpec>,
}

/// One supervised collector, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectorSpec {
    /// Its unique name.
    pub name: String,
    /// The domain its handshake must report.
    pub domain: CollectorDomain,
    /// The socket it serves.
    pub socket: PathBuf,
    /// How it is started.
    pub launch: Launch,
}

/// How a collector is started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launch {
    /// This binary with these arguments (`collect ...`).
    Builtin {
        /// The arguments.
        args: Vec<OsString>,
    },
    /// A program with its arguments.
    Program {
        /// The executable.
        program: PathBuf,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// Started by someone else: connect to its socket.
    Connect,
}

/// procmond's flags when the agent runs it: serve `socket`, store
/// nothing, wait for the agent's subscription.
fn procmond_args(subcommand: &str, socket: &Path, interval: Duration) -> Vec<OsString> {
    vec![
        subcommand.into(),
        "--socket".into(),
        socket.into(),
        "--no-database".into(),
        "--await-subscriber".into(),
        "--interval".into(),
        interval.as_secs().to_string().into(),
    ]
}

/// The collectors of an agent configured with none: the built-in
/// procmond, perfmond, netmond and fsmond.
fn default_collectors() -> Vec<CollectorEntryConfig> {
    [
        (DEFAULT_COLLECTOR, BuiltinCollector::Procmond),
        (DEFAULT_PERFORMANCE_COLLECTOR, BuiltinCollector::Perfmond),
        (DEFAULT_NETWORK_COLLECTOR, BuiltinCollector::Netmond),
        (DEFAULT_FILE_COLLECTOR, BuiltinCollector::Fsmond),
    ]
    .into_iter()
    .map(|(name, builtin)| CollectorEntryConfig {
        name: name.to_owned(),
        builtin: Some(builtin),
        ..CollectorEntryConfig::default()
    })
    .collect()
}

/// Collector names become file names: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Settings {
    /// Reads the file `args.config` names (if any) and resolves it with the
    /// flags and environment in `args`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or the key.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        Self::resolve(file, args.config.as_deref(), args)
    }

    /// Merges `file` (read from `path`, used in errors) under `args`, fills
    /// in the defaults and checks every value.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and where it came from.
    pub fn resolve(
        file: AgentConfig,
        path: Option<&Path>,
        args: &RunArgs,
    ) -> Result<Self, ConfigError> {
        let origin = path.map_or_else(
            || "the flags and defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.to_owned(),
            reason,
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(daemoneye_lib::models::default_state_dir);
        let sweep_interval = args
            .sweep_interval
            .or(file.sweep_interval)
            .unwrap_or(DEFAULT_SWEEP_INTERVAL);
        if sweep_interval.is_zero() {
            return Err(invalid("sweep_interval", "must be more than 0".to_owned()));
        }
        let checkpoint_interval = args
            .checkpoint_interval
            .or(file.checkpoint_interval)
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL);
        if checkpoint_interval.is_zero() {
            return Err(invalid(
                "checkpoint_interval",
                "must be more than 0".to_owned(),
            ));
        }
        check_store_bounds(file.retention, file.max_store_bytes, &invalid)?;
        let sinks = resolve_sinks(file.sinks, file.fleet, args, &invalid)?;
        let entries = if let Some(program) = &args.procmond {
            vec![CollectorEntryConfig {
                name: DEFAULT_COLLECTOR.to_owned(),
                program: Some(program.clone()),
                ..CollectorEntryConfig::default()
            }]
        } else if let Some(socket) = &args.collector_socket {
            vec![CollectorEntryConfig {
                name: DEFAULT_COLLECTOR.to_owned(),
                socket: Some(socket.clone()),
                ..CollectorEntryConfig::default()
            }]
        } else {
            file.collectors.unwrap_or_else(default_collectors)
        };
        if entries.is_empty() {
            return Err(invalid(
                "collector",
                "at least one collector is needed".to_owned(),
            ));
        }
        let mut names = HashSet::new();
        let mut collectors = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let key = |field: &str| format!("collector[{i}].{field}");
            if !valid_name(&entry.name) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?}: 1 to 64 letters, digits, `-` or `_`", entry.name),
                ));
            }
            if !names.insert(entry.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used twice", entry.name),
                ));
            }
            collectors.push(resolve_collector(
                entry,
                &data_dir,
                args.interval,
                |f, r| invalid(&key(f), r),
            )?);
        }
        Ok(Self {
            data_dir,
            rules_dir: args.rules_dir.clone().or(file.rules_dir),
            sweep_interval,
            dedup_window: args
                .dedup_window
                .or(file.dedup_window)
                .unwrap_or(DEFAULT_DEDUP_WINDOW),
            checkpoint_interval,
            retention: file.retention,
            max_store_bytes: file.max_store_bytes,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            user: file.user,
            sinks,
            collectors,
        })
    }
}

/// `retention` and `max_store_bytes`, when given, must bound something.
fn check_store_bounds(
    retention: Option<Duration>,
    max_store_bytes: Option<u64>,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if retention.is_some_and(|r| r.is_zero()) {
        return Err(invalid("retention", "must be more than 0".to_owned()));
    }
    match max_store_bytes {
        Some(b) if b < daemoneye_store::retention::MIN_MAX_BYTES => Err(invalid(
            "max_store_bytes",
            format!("{b} is less than 1 MiB (1048576)"),
        )),
        _ => Ok(()),
    }
}

impl Settings {
    /// The store writer's config: its queue, and the store's bounds.
    pub fn writer_config(&self) -> daemoneye_store::WriterConfig {
        daemoneye_store::WriterConfig {
            queue_writes: 256,
            retention: self.retention,
            max_store_bytes: self.max_store_bytes,
            ..daemoneye_store::WriterConfig::default()
        }
    }
}

/// The sinks, the fleet's included: a flag (or its variable) over the
/// file's value.
fn resolve_sinks(
    file: SinksConfig,
    fleet: FleetFileConfig,
    args: &RunArgs,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<crate::sink::SinksConfig, ConfigError> {
    let syslog = match (&args.syslog, file.syslog) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(text)) => Some(
            text.parse()
                .map_err(|e: String| invalid("sinks.syslog", e))?,
        ),
        (None, None) => None,
    };
    let webhook = match (&args.webhook, file.webhook) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(text)) => Some(
            text.parse()
                .map_err(|e: crate::sink::WebhookError| invalid("sinks.webhook", e.to_string()))?,
        ),
        (None, None) => None,
    };
    let webhook_headers = if args.webhook_headers.is_empty() {
        file.webhook_headers
            .iter()
            .map(|h| {
                h.parse().map_err(|e: crate::sink::WebhookError| {
                    invalid("sinks.webhook_headers", e.to_string())
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        args.webhook_headers.clone()
    };
    let webhook_headers_file = args
        .webhook_headers_file
        .clone()
        .or(file.webhook_headers_file);
    if webhook.is_none() && (!webhook_headers.is_empty() || webhook_headers_file.is_some()) {
        return Err(invalid(
            "sinks.webhook",
            "webhook headers are given but no webhook".to_owned(),
        ));
    }
    // A flag for every sink, over one sink's key, over every sink's key.
    let format = |one: Option<AlertFormat>| {
        args.alert_format
            .or(one)
            .or(file.format)
            .unwrap_or_default()
    };
    let mut formats = SinkFormats::default();
    formats.stdout = format(file.formats.stdout);
    formats.alerts_jsonl = format(file.formats.alerts_jsonl);
    formats.syslog = format(file.formats.syslog);
    Ok(crate::sink::SinksConfig {
        alerts_jsonl: args.alerts_jsonl.clone().or(file.alerts_jsonl),
        syslog,
        webhook,
        webhook_headers,
        webhook_headers_file,
        formats,
        webhook_format: format(file.formats.webhook),
        fleet: resolve_fleet(fleet, args, format(file.formats.fleet), invalid)?,
        ..crate::sink::SinksConfig::default()
    })
}

/// The fleet sink, when a URL is given (`--nats` over `fleet.url`).
fn resolve_fleet(
    file: FleetFileConfig,
    args: &RunArgs,
    format: AlertFormat,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<FleetConfig>, ConfigError> {
    let Some(url) = args.nats.clone().or(file.url) else {
        return Ok(None);
    };
    if url.split(',').any(|u| u.trim().is_empty()) {
        return Err(invalid("fleet.url", format!("{url:?}: an empty server")));
    }
    let host = args
        .fleet_host
        .clone()
        .or(file.host)
        .unwrap_or_else(|| crate::sink::Host::local().hostname);
    let mut config = FleetConfig::new(url, &host);
    if let Some(prefix) = file.subject_prefix {
        let token = crate::sink::nats::subject_token(&prefix);
        if token != prefix {
            return Err(invalid(
                "fleet.subject_prefix",
                format!("{prefix:?}: one subject token (no `.`, `*`, `>` or spaces)"),
            ));
        }
        config.subject_prefix = prefix;
    }
    if let Some(stream) = file.stream {
        if stream.is_empty() || crate::sink::nats::subject_token(&stream) != stream {
            return Err(invalid(
                "fleet.stream",
                format!("{stream:?}: a stream name (no `.`, `*`, `>` or spaces)"),
            ));
        }
        config.stream = stream;
    }
    config.create_stream = file.create_stream.unwrap_or(true);
    if file.creds_file.is_some() && file.nkey_file.is_some() {
        return Err(invalid(
            "fleet.nkey_file",
            "a creds file or an nkey file, not both (a creds file holds its own nkey)".to_owned(),
        ));
    }
    config.creds_file = file.creds_file;
    config.nkey_file = file.nkey_file;
    config.tls_ca_file = file.tls_ca_file;
    config.format = format;
    for (key, value, field) in [
        (
            "fleet.outbox_max_items",
            file.outbox_max_items,
            &mut config.outbox_items,
        ),
        (
            "fleet.max_in_flight",
            file.max_in_flight,
            &mut config.window,
        ),
    ] {
        match value {
            Some(0) => return Err(invalid(key, "must be more than 0".to_owned())),
            Some(n) => *field = n,
            None => {}
        }
    }
    match file.max_outbox_age {
        Some(d) if d < Duration::from_secs(1) => {
            return Err(invalid(
                "fleet.max_outbox_age",
                "must be at least 1s".to_owned(),
            ))
        }
        Some(d) => config.max_outbox_age = d,
        None => {}
    }
    match file.replicas {
        Some(n @ 1..=5) => config.replicas = n,
        Some(n) => {
            return Err(invalid(
                "fleet.replicas",
                format!("{n}: JetStream keeps 1 to 5 copies"),
            ))
        }
        None => {}
    }
    fleet_stream_and_events(
        (file.stream_max_age, file.stream_max_bytes),
        file.events.unwrap_or_default(),
        &mut config,
        invalid,
    )?;
    Ok(Some(config))
}

/// The limits of a stream the agent creates, and the event domains shipped
/// (`fleet.stream_max_age`, `fleet.stream_max_bytes`, `fleet.events`).
fn fleet_stream_and_events(
    (max_age, max_bytes): (Option<Duration>, Option<u64>),
    events: Vec<String>,
    config: &mut FleetConfig,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    match max_age {
        Some(d) if d < Duration::from_secs(60) => {
            return Err(invalid(
                "fleet.stream_max_age",
                "must be at least 1m".to_owned(),
            ))
        }
        Some(d) => config.stream_max_age = d,
        None => {}
    }
    match max_bytes {
        Some(n) if n < 1 << 20 => {
            return Err(invalid(
                "fleet.stream_max_bytes",
                format!("{n}: at least 1048576 (1 MiB)"),
            ))
        }
        Some(n) => config.stream_max_bytes = n,
        None => {}
    }
    for name in events {
        let domain = collector_core::EventKind::from_name(&name)
            .filter(|d| daemoneye_store::outbox::SHIPPABLE.contains(d))
            .ok_or_else(|| {
                invalid(
                    "fleet.events",
                    format!("{name:?}: one of process, network, filesystem, performance"),
                )
            })?;
        if !config.events.contains(&domain) {
            config.events.push(domain);
        }
    }
    Ok(())
}

/// `d` when it is whole seconds, at least one.
fn whole_secs(
    key: &str,
    d: Duration,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err(invalid(key, format!("{d:?}: whole seconds, at least 1 s")));
    }
    Ok(d)
}

/// A built-in collector's arguments. Every one takes no `args` and serves
/// only its own domain; the polled ones take the interval (resolved first,
/// so that a bad one is the error named).
fn builtin_launch(
    entry: &CollectorEntryConfig,
    builtin: BuiltinCollector,
    domain: CollectorDomain,
    socket: &Path,
    interval: impl FnOnce() -> Result<Duration, ConfigError>,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Launch, ConfigError> {
    let interval = (builtin != BuiltinCollector::Fsmond)
        .then(interval)
        .transpose()?;
    let serves = builtin.domain();
    if entry.args.is_some() || domain != serves {
        return Err(invalid(
            if entry.args.is_some() {
                "args"
            } else {
                "domain"
            },
            format!(
                "the built-in {} takes no `args` and serves {}, not {}",
                builtin.name(),
                serves.name(),
                domain.name()
            ),
        ));
    }
    let args = match (builtin, interval) {
        (BuiltinCollector::Procmond, Some(interval)) => procmond_launch(entry, socket, interval),
        (BuiltinCollector::Perfmond, Some(interval)) => {
            perfmond_launch(entry, socket, interval, invalid)?
        }
        (BuiltinCollector::Netmond, Some(interval)) => {
            procmond_args("collect-network", socket, interval)
        }
        (BuiltinCollector::Fsmond, _) | (_, None) => fsmond_launch(entry, socket, invalid)?,
    };
    Ok(Launch::Builtin { args })
}

/// The built-in procmond's arguments: its flags, and the tier when forced.
fn procmond_launch(
    entry: &CollectorEntryConfig,
    socket: &Path,
    interval: Duration,
) -> Vec<OsString> {
    let mut args = procmond_args("collect", socket, interval);
    if let Some(tier) = entry.tier {
        args.extend(["--tier".into(), tier.as_str().into()]);
    }
    args
}

/// The built-in perfmond's arguments: procmond's flags (it ignores
/// `--no-database`) and the sustained-CPU anomaly's threshold.
fn perfmond_launch(
    entry: &CollectorEntryConfig,
    socket: &Path,
    interval: Duration,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<OsString>, ConfigError> {
    let percent = entry.sustained_cpu_percent.unwrap_or(90);
    if percent == 0 {
        return Err(invalid(
            "sustained_cpu_percent",
            "must be more than 0".to_owned(),
        ));
    }
    let held = entry.sustained_cpu_for.unwrap_or(Duration::from_secs(60));
    let held = whole_secs("sustained_cpu_for", held, invalid)?;
    let mut args = procmond_args("collect-performance", socket, interval);
    args.extend([
        "--sustained-cpu-percent".into(),
        percent.to_string().into(),
        "--sustained-cpu-secs".into(),
        held.as_secs().to_string().into(),
    ]);
    Ok(args)
}

/// The built-in fsmond's arguments: the socket, and the watched paths and
/// root when configured (checked as fsmond checks them). No interval: it is
/// not polled.
fn fsmond_launch(
    entry: &CollectorEntryConfig,
    socket: &Path,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<OsString>, ConfigError> {
    if entry.interval.is_some() {
        let why = "the built-in fsmond is not polled: it takes no `interval`";
        return Err(invalid("interval", why.to_owned()));
    }
    let mut config = fsmond::FsmondConfig::default();
    if let Some(watch) = &entry.watch {
        config.watch.clone_from(watch);
    }
    if let Some(root) = &entry.watch_root {
        config.watch_root.clone_from(root);
    }
    config.validate().map_err(|e| match e {
        collector_core::ConfigError::Invalid { field, reason } => {
            invalid(field.strip_prefix("fsmond.").unwrap_or(field), reason)
        }
        other => invalid("watch", other.to_string()),
    })?;
    let mut args: Vec<OsString> = vec![
        "collect-files".into(),
        "--socket".into(),
        socket.into(),
        "--await-subscriber".into(),
    ];
    for path in entry.watch.iter().flatten() {
        args.extend(["--watch".into(), path.into()]);
    }
    if let Some(root) = &entry.watch_root {
        args.extend(["--watch-root".into(), root.into()]);
    }
    Ok(args)
}

/// The domain of a collector, by default: a built-in one's, else processes.
fn domain_of(builtin: Option<BuiltinCollector>) -> CollectorDomain {
    builtin.map_or(CollectorDomain::Process, BuiltinCollector::domain)
}

/// One entry: which way it is started, its socket, its interval.
fn resolve_collector(
    entry: CollectorEntryConfig,
    data_dir: &Path,
    interval_flag: Option<Duration>,
    invalid: impl Fn(&str, String) -> ConfigError,
) -> Result<CollectorSpec, ConfigError> {
    let perfmond = entry.builtin == Some(BuiltinCollector::Perfmond);
    let domain = entry.domain.unwrap_or_else(|| domain_of(entry.builtin));
    if !perfmond && (entry.sustained_cpu_percent.is_some() || entry.sustained_cpu_for.is_some()) {
        let why = "the sustained-CPU keys go with `builtin = \"perfmond\"`";
        return Err(invalid("sustained_cpu_percent", why.to_owned()));
    }
    if entry.tier.is_some() && entry.builtin != Some(BuiltinCollector::Procmond) {
        let why = "`tier` goes with `builtin = \"procmond\"`";
        return Err(invalid("tier", why.to_owned()));
    }
    if (entry.watch.is_some() || entry.watch_root.is_some())
        && entry.builtin != Some(BuiltinCollector::Fsmond)
    {
        let why = "`watch` and `watch_root` go with `builtin = \"fsmond\"`";
        return Err(invalid("watch", why.to_owned()));
    }
    let socket = entry
        .socket
        .clone()
        .unwrap_or_else(|| data_dir.join(format!("{}.sock", entry.name)));
    // A procmond whose flags the agent builds takes the interval (the
    // `--interval` flag is procmond's, not perfmond's).
    let interval = || {
        let interval = match entry.builtin.and_then(BuiltinCollector::own_interval) {
            Some(default) => entry.interval.unwrap_or(default),
            None => interval_flag.or(entry.interval).unwrap_or(DEFAULT_INTERVAL),
        };
        whole_secs("interval", interval, &invalid)
    };
    let launch = match (entry.builtin, &entry.program) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "program",
                "give `builtin` or `program`, not both".to_owned(),
            ))
        }
        (Some(builtin), None) => {
            builtin_launch(&entry, builtin, domain, &socket, interval, &invalid)?
        }
        (None, Some(program)) => {
            let args = match &entry.args {
                None => procmond_args("run", &socket, interval()?),
                Some(_) if entry.interval.is_some() => {
                    return Err(invalid(
                        "interval",
                        "with `args`, pass the program its interval in them".to_owned(),
                    ))
                }
                Some(args) => args
                    .iter()
                    .map(|a| a.replace("{socket}", &socket.to_string_lossy()).into())
                    .collect(),
            };
            Launch::Program {
                program: program.clone(),
                args,
            }
        }
        (None, None) => {
            if entry.socket.is_none() {
                return Err(invalid(
                    "socket",
                    "give `builtin`, `program` or the `socket` of a running collector".to_owned(),
                ));
            }
            if entry.args.is_some() || entry.interval.is_some() {
                return Err(invalid(
                    "args",
                    "`args` and `interval` go with a collector the agent starts".to_owned(),
                ));
            }
            Launch::Connect
        }
    };
    Ok(CollectorSpec {
        name: entry.name,
        domain,
        socket,
        launch,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }

    /// Flags as given (the environment of `cargo test` sets no
    /// `DAEMONEYE_*`; the binary's tests cover the variables).
    fn flags(argv: &[&str]) -> RunArgs {
        let mut all = vec!["daemoneye-agent"];
        all.extend_from_slice(argv);
        Flags::try_parse_from(all).unwrap().run
    }

    fn resolve(toml: &str, argv: &[&str]) -> Result<Settings, ConfigError> {
        let file = AgentConfig::from_toml_str(toml).unwrap();
        Settings::resolve(file, Some(Path::new("/etc/agent.toml")), &flags(argv))
    }

    /// `toml` resolves to an error naming `key`.
    fn refused(toml: &str, key: &str) {
        let e = resolve(toml, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }

    #[test]
    fn without_file_or_flags_the_defaults_are_todays_agent() {
        let s = Settings::resolve(
            AgentConfig::default(),
            None,
            &RunArgs {
                data_dir: Some("/d".into()),
                ..RunArgs::default()
            },
        )
        .unwrap();
        assert_eq!(s.sweep_interval, DEFAULT_SWEEP_INTERVAL);
        assert_eq!(s.dedup_window, DEFAULT_DEDUP_WINDOW);
        assert_eq!(s.checkpoint_interval, Duration::from_secs(300));
        assert_eq!(s.metrics_listen, None);
        assert_eq!(s.rules_dir, None);
        assert!(s.sinks.webhook.is_none() && s.sinks.alerts_jsonl.is_none());
        let perfmond_args: Vec<OsString> = [
            "collect-performance",
            "--socket",
            "/d/perfmond.sock",
            "--no-database",
            "--await-subscriber",
            "--interval",
            "10",
            "--sustained-cpu-percent",
            "90",
            "--sustained-cpu-secs",
            "60",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(
            s.collectors,
            vec![
                CollectorSpec {
                    name: "procmond".to_owned(),
                    domain: CollectorDomain::Process,
                    socket: "/d/procmond.sock".into(),
                    launch: Launch::Builtin {
                        args: procmond_args(
                            "collect",
                            Path::new("/d/procmond.sock"),
                            DEFAULT_INTERVAL
                        ),
                    },
                },
                CollectorSpec {
                    name: "perfmond".to_owned(),
                    domain: CollectorDomain::Performance,
                    socket: "/d/perfmond.sock".into(),
                    launch: Launch::Builtin {
                        args: perfmond_args
                    },
                },
                CollectorSpec {
                    name: "netmond".to_owned(),
                    domain: CollectorDomain::Network,
                    socket: "/d/netmond.sock".into(),
                    launch: Launch::Builtin {
                        args: procmond_args(
                            "collect-network",
                            Path::new("/d/netmond.sock"),
                            DEFAULT_NETWORK_INTERVAL
                        ),
                    },
                },
                CollectorSpec {
                    name: "fsmond".to_owned(),
                    domain: CollectorDomain::Filesystem,
                    socket: "/d/fsmond.sock".into(),
                    launch: Launch::Builtin {
                        args: [
                            "collect-files",
                            "--socket",
                            "/d/fsmond.sock",
                            "--await-subscriber"
                        ]
                        .map(OsString::from)
                        .to_vec(),
                    },
                }
            ]
        );
    }

    #[test]
    fn the_builtin_procmond_takes_a_forced_tier() {
        let args = |toml: &str| {
            let s = resolve(toml, &[]).unwrap();
            let Launch::Builtin { args } = &s.collectors[0].launch else {
                panic!("{s:?}")
            };
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let entry = "[[collector]]\nname = \"p\"\nbuiltin = \"procmond\"\n";
        let forced = args(&format!("{entry}tier = \"connector\""));
        let at = forced.iter().position(|a| a == "--tier").unwrap();
        assert_eq!(forced[at + 1], "connector");
        assert!(
            !args(entry).contains(&"--tier".to_owned()),
            "auto by default"
        );
        let bad = AgentConfig::from_toml_str(&format!("{entry}tier = \"fast\"")).unwrap_err();
        assert!(bad.to_string().contains("connector"), "{bad}");
    }

    #[test]
    fn the_builtin_perfmond_takes_its_interval_and_threshold() {
        let toml = r#"
            [[collector]]
            name = "perf"
            builtin = "perfmond"
            interval = "1s"
            sustained_cpu_percent = 50
            sustained_cpu_for = "3s"
        "#;
        // `--interval` is procmond's: it leaves perfmond's alone.
        let s = resolve(toml, &["--interval", "7"]).unwrap();
        let c = &s.collectors[0];
        assert_eq!(c.domain, CollectorDomain::Performance);
        let Launch::Builtin { args } = &c.launch else {
            panic!("{c:?}")
        };
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args[0], "collect-performance");
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].to_string()
        };
        assert_eq!(
            (
                after("--interval"),
                after("--sustained-cpu-percent"),
                after("--sustained-cpu-secs")
            ),
            ("1".into(), "50".into(), "3".into())
        );
        for (bad, key) in [
            (
                "[[collector]]\nname = \"p\"\nbuiltin = \"perfmond\"\ndomain = \"process\"",
                "collector[0].domain",
            ),
            (
                "[[collector]]\nname = \"p\"\nbuiltin = \"perfmond\"\nsustained_cpu_for = \"1500ms\"",
                "collector[0].sustained_cpu_for",
            ),
            (
                "[[collector]]\nname = \"p\"\nbuiltin = \"procmond\"\nsustained_cpu_percent = 80",
                "collector[0].sustained_cpu_percent",
            ),
            (
                "[[collector]]\nname = \"p\"\nbuiltin = \"perfmond\"\ntier = \"ebpf\"",
                "collector[0].tier",
            ),
        ] {
            refused(bad, key);
        }
    }

    #[test]
    fn the_builtin_fsmond_takes_its_watched_paths_and_root_and_serves_files_only() {
        let toml = "[[collector]]\nname = \"fs\"\nbuiltin = \"fsmond\"\n\
                    watch = [\"/etc\", \"/home/*/.ssh\"]\nwatch_root = \"/srv/root\"";
        // `--interval` is procmond's: fsmond is not polled.
        let s = resolve(toml, &["--interval", "7"]).unwrap();
        let c = &s.collectors[0];
        assert_eq!(c.domain, CollectorDomain::Filesystem);
        let Launch::Builtin { args } = &c.launch else {
            panic!("{c:?}")
        };
        let socket = c.socket.to_string_lossy();
        let want: Vec<OsString> = [
            "collect-files",
            &socket,
            "--await-subscriber",
            "--watch",
            "/etc",
            "--watch",
            "/home/*/.ssh",
            "--watch-root",
            "/srv/root",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(args[0], want[0]);
        assert_eq!(args[2..], want[1..], "{args:?}");
        let entry = "[[collector]]\nname = \"f\"\nbuiltin = \"fsmond\"\n";
        for (bad, key) in [
            (format!("{entry}watch = [\"etc\"]"), "collector[0].watch"),
            (format!("{entry}watch = []"), "collector[0].watch"),
            (
                format!("{entry}watch = [\"/home/u*/.ssh\"]"),
                "collector[0].watch",
            ),
            (
                format!("{entry}watch_root = \"chroot\""),
                "collector[0].watch_root",
            ),
            (format!("{entry}interval = \"5s\""), "collector[0].interval"),
            (
                format!("{entry}domain = \"process\""),
                "collector[0].domain",
            ),
            (
                "[[collector]]\nname = \"n\"\nbuiltin = \"netmond\"\nwatch = [\"/etc\"]".to_owned(),
                "collector[0].watch",
            ),
        ] {
            let e = resolve(&bad, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn the_builtin_netmond_takes_its_interval_and_serves_network_only() {
        let toml = "[[collector]]\nname = \"net\"\nbuiltin = \"netmond\"\ninterval = \"2s\"";
        // `--interval` is procmond's: it leaves netmond's alone.
        let s = resolve(toml, &["--interval", "7"]).unwrap();
        let c = &s.collectors[0];
        assert_eq!(c.domain, CollectorDomain::Network);
        let Launch::Builtin { args } = &c.launch else {
            panic!("{c:?}")
        };
        assert_eq!(
            *args,
            procmond_args("collect-network", &c.socket, Duration::from_secs(2))
        );
        for (bad, key) in [
            (
                "[[collector]]\nname = \"n\"\nbuiltin = \"netmond\"\ndomain = \"process\"",
                "collector[0].domain",
            ),
            (
                "[[collector]]\nname = \"n\"\nbuiltin = \"netmond\"\nargs = [\"run\"]",
                "collector[0].args",
            ),
            (
                "[[collector]]\nname = \"n\"\nbuiltin = \"netmond\"\nsustained_cpu_percent = 80",
                "collector[0].sustained_cpu_percent",
            ),
        ] {
            refused(bad, key);
        }
    }

    #[test]
    fn alert_formats_resolve_per_sink_over_every_sink_and_a_flag_over_both() {
        let s = resolve("", &[]).unwrap();
        assert_eq!(s.sinks.formats, SinkFormats::default());
        assert_eq!(s.sinks.webhook_format, AlertFormat::Native);
        let toml =
            "[sinks]\nformat = \"ecs\"\n[sinks.formats]\nstdout = \"native\"\nwebhook = \"ocsf\"\n";
        let s = resolve(toml, &[]).unwrap();
        let f = s.sinks.formats;
        assert_eq!(
            (f.stdout, f.alerts_jsonl, f.syslog, s.sinks.webhook_format),
            (
                AlertFormat::Native,
                AlertFormat::Ecs,
                AlertFormat::Ecs,
                AlertFormat::Ocsf
            )
        );
        let s = resolve(toml, &["--alert-format", "ocsf"]).unwrap();
        let f = s.sinks.formats;
        assert_eq!(
            (f.stdout, f.alerts_jsonl),
            (AlertFormat::Ocsf, AlertFormat::Ocsf)
        );
        for bad in [
            "[sinks]\nformat = \"cef\"",
            "[sinks.formats]\nnats = \"ecs\"",
        ] {
            let e = AgentConfig::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains("cef") || e.contains("nats"), "{e}");
        }
    }

    /// The fleet sink `toml` configures.
    fn fleet_of(toml: &str) -> FleetConfig {
        resolve(toml, &[]).unwrap().sinks.fleet.unwrap()
    }

    #[test]
    fn an_nkey_file_is_taken_and_refused_beside_a_creds_file() {
        let f = fleet_of("[fleet]\nurl = \"nats://a\"\nnkey_file = \"/etc/n.nk\"\n");
        assert_eq!(f.nkey_file.as_deref(), Some(Path::new("/etc/n.nk")));
        assert!(
            f.creds_file.is_none() && f.nkey.is_none(),
            "read later, as root"
        );
        let both = "[fleet]\nurl = \"nats://a\"\nnkey_file = \"/n\"\ncreds_file = \"/c\"\n";
        let err = resolve(both, &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "fleet.nkey_file"),
            "{err}"
        );
    }

    #[test]
    fn fleet_events_and_stream_limits_are_opt_in_and_checked() {
        let f = fleet_of("[fleet]\nurl = \"nats://a\"\n");
        assert!(f.events.is_empty(), "events are opt-in");
        assert_eq!(
            (f.stream_max_age, f.stream_max_bytes),
            (Duration::from_secs(30 * 24 * 3600), 10 << 30)
        );
        let f = fleet_of("[fleet]\nurl = \"nats://a\"\nstream_max_age = \"7days\"\nstream_max_bytes = 1073741824\n");
        assert_eq!(
            (f.stream_max_age, f.stream_max_bytes),
            (Duration::from_secs(7 * 24 * 3600), 1 << 30)
        );
        let f = fleet_of(
            "[fleet]\nurl = \"nats://a\"\nevents = [\"process\", \"filesystem\", \"process\"]\n",
        );
        assert_eq!(
            f.events,
            [
                collector_core::EventKind::Process,
                collector_core::EventKind::Filesystem
            ]
        );
        assert_eq!(
            f.events_subject(collector_core::EventKind::Filesystem),
            format!("daemoneye.{}.events.filesystem", f.host)
        );
    }

    #[test]
    fn the_fleet_is_off_by_default_on_with_a_url_and_the_flags_override_the_file() {
        assert!(resolve("", &[]).unwrap().sinks.fleet.is_none());
        let toml = "[fleet]\nurl = \"nats://a:4222\"\nhost = \"web.1\"\nstream = \"S\"\n\
                    create_stream = false\noutbox_max_items = 10\nmax_in_flight = 2\n\
                    [sinks.formats]\nfleet = \"ecs\"\n";
        let f = resolve(toml, &[]).unwrap().sinks.fleet.unwrap();
        assert_eq!(f.url, "nats://a:4222");
        assert_eq!(f.host, "web_1");
        assert_eq!(f.alerts_subject(), "daemoneye.web_1.alerts");
        assert_eq!((f.stream.as_str(), f.create_stream), ("S", false));
        assert_eq!((f.outbox_items, f.window), (10, 2));
        assert_eq!(f.format, AlertFormat::Ecs);
        let f = resolve(toml, &["--nats", "nats://b:4222", "--fleet-host", "db"])
            .unwrap()
            .sinks
            .fleet
            .unwrap();
        assert_eq!((f.url.as_str(), f.host.as_str()), ("nats://b:4222", "db"));
        let f = resolve("", &["--nats", "nats://c:4222"])
            .unwrap()
            .sinks
            .fleet
            .unwrap();
        assert_eq!(f.stream, crate::sink::nats::DEFAULT_STREAM);
        assert!(f.create_stream);
        assert_eq!(f.max_outbox_age, crate::sink::nats::DEFAULT_MAX_OUTBOX_AGE);
        let f = resolve(
            "[fleet]\nurl = \"nats://a\"\nmax_outbox_age = \"90s\"\n",
            &[],
        )
        .unwrap()
        .sinks
        .fleet
        .unwrap();
        assert_eq!(f.max_outbox_age, Duration::from_secs(90));
        assert_eq!(f.replicas, 1);
        let f = resolve("[fleet]\nurl = \"nats://a,nats://b\"\nreplicas = 3\n", &[])
            .unwrap()
            .sinks
            .fleet
            .unwrap();
        assert_eq!(f.replicas, 3);
        for (toml, key) in [
            (
                "[fleet]\nurl = \"nats://a\"\nevents = [\"file\"]",
                "fleet.events",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nstream_max_age = \"10s\"",
                "fleet.stream_max_age",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nstream_max_bytes = 1000",
                "fleet.stream_max_bytes",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nevents = [\"trigger_request\"]",
                "fleet.events",
            ),
            ("[fleet]\nurl = \"nats://a,\"", "fleet.url"),
            (
                "[fleet]\nurl = \"nats://a\"\nsubject_prefix = \"a.b\"",
                "fleet.subject_prefix",
            ),
            ("[fleet]\nurl = \"nats://a\"\nstream = \"\"", "fleet.stream"),
            (
                "[fleet]\nurl = \"nats://a\"\noutbox_max_items = 0",
                "fleet.outbox_max_items",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nmax_outbox_age = \"0s\"",
                "fleet.max_outbox_age",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nreplicas = 0",
                "fleet.replicas",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nreplicas = 6",
                "fleet.replicas",
            ),
            (
                "[fleet]\nurl = \"nats://a\"\nmax_in_flight = 0",
                "fleet.max_in_flight",
            ),
        ] {
            refused(toml, key);
        }
    }

    #[test]
    fn the_file_overrides_the_defaults_and_a_flag_the_file() {
        let toml = r#"
            data_dir = "/file"
            rules_dir = "/file/rules"
            sweep_interval = "2m"
            dedup_window = "10m"
            checkpoint_interval = "90s"
            metrics_listen = "127.0.0.1:9464"
            [sinks]
            alerts_jsonl = "/file/alerts.jsonl"
            [[collector]]
            name = "procmond"
            builtin = "procmond"
            interval = "7s"
        "#;
        let s = resolve(toml, &[]).unwrap();
        assert_eq!(s.data_dir, Path::new("/file"));
        assert_eq!(s.rules_dir.as_deref(), Some(Path::new("/file/rules")));
        assert_eq!(s.sweep_interval, Duration::from_secs(120));
        assert_eq!(s.dedup_window, Duration::from_secs(600));
        assert_eq!(s.checkpoint_interval, Duration::from_secs(90));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            s.sinks.alerts_jsonl.as_deref(),
            Some(Path::new("/file/alerts.jsonl"))
        );
        let Launch::Builtin { args } = &s.collectors[0].launch else {
            panic!("{:?}", s.collectors[0]);
        };
        assert_eq!(args.last().unwrap(), "7");

        let s = resolve(
            toml,
            &[
                "--data-dir",
                "/flag",
                "--sweep-secs",
                "5",
                "--dedup-window",
                "1h",
                "--checkpoint-interval",
                "2m",
                "--interval",
                "9",
                "--alerts-jsonl",
                "/flag/a.jsonl",
                "--metrics-listen",
                "[::1]:9100",
            ],
        )
        .unwrap();
        assert_eq!(s.data_dir, Path::new("/flag"));
        assert_eq!(s.rules_dir.as_deref(), Some(Path::new("/file/rules")));
        assert_eq!(s.sweep_interval, Duration::from_secs(5));
        assert_eq!(s.dedup_window, Duration::from_secs(3600));
        assert_eq!(s.checkpoint_interval, Duration::from_secs(120));
        assert_eq!(s.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        assert!(AgentConfig::from_toml_str("metrics_listen = \"localhost\"").is_err());
        assert_eq!(
            s.sinks.alerts_jsonl.as_deref(),
            Some(Path::new("/flag/a.jsonl"))
        );
        let Launch::Builtin { args } = &s.collectors[0].launch else {
            panic!("{:?}", s.collectors[0]);
        };
        assert_eq!(args.last().unwrap(), "9");
        assert_eq!(args[2], "/flag/procmond.sock");
    }

    #[test]
    fn collectors_are_a_list_and_the_collector_flags_replace_it() {
        let toml = r#"
            data_dir = "/d"
            [[collector]]
            name = "procmond"
            builtin = "procmond"
            [[collector]]
            name = "netmond"
            program = "/usr/bin/netmond"
            args = ["run", "--socket", "{socket}"]
            domain = "network"
            [[collector]]
            name = "remote-procmond"
            socket = "/run/remote.sock"
            [[collector]]
            name = "old-procmond"
            program = "/usr/bin/procmond"
            interval = "5s"
        "#;
        let s = resolve(toml, &[]).unwrap();
        let names: Vec<_> = s.collectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["procmond", "netmond", "remote-procmond", "old-procmond"]
        );
        assert_eq!(s.collectors[1].domain, CollectorDomain::Network);
        assert_eq!(
            s.collectors[1].launch,
            Launch::Program {
                program: "/usr/bin/netmond".into(),
                args: vec!["run".into(), "--socket".into(), "/d/netmond.sock".into()],
            }
        );
        assert_eq!(s.collectors[2].launch, Launch::Connect);
        assert_eq!(s.collectors[2].socket, Path::new("/run/remote.sock"));
        assert_eq!(
            s.collectors[3].launch,
            Launch::Program {
                program: "/usr/bin/procmond".into(),
                args: procmond_args(
                    "run",
                    Path::new("/d/old-procmond.sock"),
                    Duration::from_secs(5)
                ),
            }
        );

        let s = resolve(toml, &["--collector-socket", "/run/x.sock"]).unwrap();
        assert_eq!(s.collectors.len(), 1);
        assert_eq!(s.collectors[0].launch, Launch::Connect);
        assert_eq!(s.collectors[0].socket, Path::new("/run/x.sock"));
        let s = resolve(toml, &["--procmond", "/opt/procmond"]).unwrap();
        assert_eq!(s.collectors.len(), 1);
        assert!(matches!(
            &s.collectors[0].launch,
            Launch::Program { program, .. } if program == Path::new("/opt/procmond")
        ));
    }

    #[test]
    fn bad_values_are_refused_naming_the_file_and_key() {
        for (toml, key) in [
            ("sweep_interval = \"0s\"", "sweep_interval"),
            ("[sinks]\nsyslog = \"tcp://x\"", "sinks.syslog"),
            ("[sinks]\nwebhook = \"ftp://x\"", "sinks.webhook"),
            ("[sinks]\nwebhook_headers = [\"X-A: b\"]", "sinks.webhook"),
            ("collector = []", "collector"),
            ("[[collector]]\nname = \"a b\"\nbuiltin = \"procmond\"", "collector[0].name"),
            (
                "[[collector]]\nname = \"a\"\nbuiltin = \"procmond\"\n[[collector]]\nname = \"a\"\nsocket = \"/s\"",
                "collector[1].name",
            ),
            ("[[collector]]\nname = \"a\"", "collector[0].socket"),
            (
                "[[collector]]\nname = \"a\"\nbuiltin = \"procmond\"\nprogram = \"/p\"",
                "collector[0].program",
            ),
            (
                "[[collector]]\nname = \"a\"\nbuiltin = \"procmond\"\ndomain = \"network\"",
                "collector[0].domain",
            ),
            (
                "[[collector]]\nname = \"a\"\nbuiltin = \"procmond\"\ninterval = \"1500ms\"",
                "collector[0].interval",
            ),
            (
                "[[collector]]\nname = \"a\"\nsocket = \"/s\"\ninterval = \"5s\"",
                "collector[0].args",
            ),
        ] {
            let err = resolve(toml, &[]).map(|_| ()).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if k == key)
                    && text.contains("/etc/agent.toml"),
                "{toml}: {text}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_key_and_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "data_dir = \"/d\"\n[sinks]\nsyslogg = \"/dev/log\"\n",
        )
        .unwrap();
        let err = AgentConfig::from_file(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            cause.contains("syslogg") && cause.contains("line 3"),
            "{cause}"
        );

        let err = AgentConfig::from_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn webhook_header_values_stay_out_of_debug_output() {
        let file = AgentConfig::from_toml_str(
            "[sinks]\nwebhook_headers = [\"Authorization: Bearer s3cret\"]",
        )
        .unwrap();
        let shown = format!("{file:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn durations_take_units_and_flags_plain_seconds() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").unwrap_err().contains("90s"));
        let file = AgentConfig::from_toml_str("dedup_window = \"1h\"").unwrap();
        assert_eq!(file.dedup_window, Some(Duration::from_secs(3600)));
        assert!(AgentConfig::from_toml_str("dedup_window = 3600").is_err());
        let file = AgentConfig::from_toml_str("checkpoint_interval = \"1h 30m\"").unwrap();
        assert_eq!(file.checkpoint_interval, Some(Duration::from_secs(5400)));
        let file = AgentConfig::from_toml_str("checkpoint_interval = \"250ms\"").unwrap();
        assert_eq!(file.checkpoint_interval, Some(Duration::from_millis(250)));
        // No units, not a duration, a misspelt key: refused.
        assert!(AgentConfig::from_toml_str("checkpoint_interval = 300").is_err());
        assert!(AgentConfig::from_toml_str("checkpoint_interval = \"soon\"").is_err());
        let err = AgentConfig::from_toml_str("checkpoint_intervall = \"5m\"").unwrap_err();
        assert!(err.to_string().contains("checkpoint_intervall"), "{err}");
        let zero = AgentConfig::from_toml_str("checkpoint_interval = \"0s\"").unwrap();
        let err = Settings::resolve(zero, None, &RunArgs::default()).unwrap_err();
        assert!(err.to_string().contains("checkpoint_interval"), "{err}");
    }

    #[test]
    fn the_store_bounds_are_read_and_checked() {
        let s = Settings::resolve(AgentConfig::default(), None, &RunArgs::default()).unwrap();
        assert_eq!((s.retention, s.max_store_bytes), (None, None));
        let file =
            AgentConfig::from_toml_str("retention = \"30days\"\nmax_store_bytes = 1073741824")
                .unwrap();
        let s = Settings::resolve(file, None, &RunArgs::default()).unwrap();
        assert_eq!(s.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(s.max_store_bytes, Some(1 << 30));
        for (text, key) in [
            ("retention = \"0s\"", "retention"),
            ("max_store_bytes = 4096", "max_store_bytes"),
        ] {
            let file = AgentConfig::from_toml_str(text).unwrap();
            let err = Settings::resolve(file, None, &RunArgs::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        assert!(AgentConfig::from_toml_str("retention = 30").is_err());
        assert!(AgentConfig::from_toml_str("max_store_bytes = -1").is_err());
    }

    #[test]
    fn the_packaged_example_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/agent.toml");
        let file = AgentConfig::from_file(&path).unwrap();
        let s = Settings::resolve(file, Some(&path), &RunArgs::default()).unwrap();
        assert_eq!(s.data_dir, Path::new("/var/lib/daemoneye"));
        assert_eq!(s.collectors[0].name, "procmond");
        assert!(matches!(s.collectors[0].launch, Launch::Builtin { .. }));
        assert_eq!(s.sweep_interval, Duration::from_secs(60));
        assert_eq!(s.dedup_window, Duration::from_secs(3600));
        assert_eq!(s.checkpoint_interval, Duration::from_secs(300));
        assert!(s.sinks.syslog.is_none() && s.sinks.webhook.is_none());
        assert!(s.sinks.fleet.is_none());

        // Its commented-out examples are valid too.
        let text = std::fs::read_to_string(&path).unwrap();
        let all: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[[collector]]")
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        let file = AgentConfig::from_toml_str(&all).unwrap();
        let s = Settings::resolve(file, Some(&path), &RunArgs::default()).unwrap();
        assert!(s.sinks.syslog.is_some() && s.sinks.webhook_headers_file.is_some());
        let fleet = s.sinks.fleet.as_ref().unwrap();
        assert_eq!(fleet.alerts_subject(), "daemoneye.web-1.alerts");
        assert!(fleet.creds_file.is_some() && fleet.tls_ca_file.is_some());
        assert_eq!(
            (fleet.max_outbox_age, fleet.replicas),
            (Duration::from_secs(300), 1)
        );
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            s.rules_dir.as_deref(),
            Some(Path::new("/etc/daemoneye/rules"))
        );
        let names: Vec<_> = s.collectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "procmond",
                "perfmond",
                "netmond",
                "fsmond",
                "netmond-program",
                "procmond-standalone"
            ]
        );
        assert_eq!(s.collectors[1].domain, CollectorDomain::Performance);
        assert_eq!(s.collectors[2].domain, CollectorDomain::Network);
        assert!(matches!(s.collectors[2].launch, Launch::Builtin { .. }));
        assert_eq!(s.collectors[3].domain, CollectorDomain::Filesystem);
        assert_eq!(s.collectors[4].domain, CollectorDomain::Network);

        // The README shows it whole.
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
                .unwrap();
        assert!(
            readme.contains(&text),
            "README.md must quote packaging/agent.toml"
        );
    }
}
