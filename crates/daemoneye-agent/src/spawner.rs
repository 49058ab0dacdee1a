//! Privilege separation: only the collectors hold privileges.
//!
//! Started as root, `daemoneye-agent run` does, before any thread exists
//! ([`separate`]):
//!
//! 1. reads what only root may read and the agent needs once: the webhook
//!    headers file, the fleet's creds file, the rule files (parsed, not yet prepared: no SQL runs
//!    as root), and opens (creating) the alerts file, handing it to the
//!    agent's user;
//! 2. takes over the data directory for the agent's user (owner the user,
//!    group root, mode 0710: the collectors, root without
//!    `CAP_DAC_OVERRIDE`, may pass through it), its files too, and makes
//!    `<data-dir>/collectors` for the collectors' sockets (owner root, group
//!    the user's, setgid, mode 2750: the collectors create their sockets
//!    there, 0660, and the agent's user alone reaches them through the
//!    group);
//! 3. starts the **spawner**, `daemoneye-agent spawner`, a small privileged
//!    process that does one thing: start, stop and watch the collectors of
//!    a list fixed when it starts (each entry the program and arguments of
//!    one configured collector, on its command line: `ps` shows what it may
//!    ever run), on the agent's request over a socket pair; it keeps what
//!    the collectors of its list take permitted (none effective), and
//!    `no_new_privs` ([`capabilities_taken`]: procmond `CAP_SYS_PTRACE`,
//!    `CAP_DAC_READ_SEARCH`, `CAP_NET_ADMIN`, `CAP_BPF` and `CAP_PERFMON`;
//!    netmond `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`, with `CAP_BPF` and
//!    `CAP_PERFMON` to load its eBPF program before it drops them; fsmond `CAP_SYS_ADMIN` and `CAP_DAC_READ_SEARCH`;
//!    perfmond none);
//! 4. drops to the agent's user: uid and gid (its group alone), every
//!    capability set empty, the bounding set too, `no_new_privs`.
//!
//! Then the agent (rules engine, store, sinks, IPC with the collectors,
//! its socket) runs unprivileged, and supervises its collectors as before
//! through the spawner ([`SpawnerClient`]): a restart is a request.
//!
//! The user is the config's `user`, else `daemoneye` when that user exists,
//! else `nobody`; `user = "root"` keeps the agent root, as before this
//! separation (with only the collectors' capabilities). Not started as root,
//! nothing of this happens: the agent starts its collectors itself.
//!
//! The protocol ([`Request`], [`Report`]) is 16-byte messages, versioned,
//! naming a collector by its place in the list: the agent cannot choose a
//! program or an argument, and a place runs at most one collector (until
//! one told to stop has exited, a start is refused with `EBUSY`). A
//! message outside the protocol ends the spawner, as does the agent going
//! (its end closed, or the parent-death signal): it stops every collector
//! (SIGTERM, SIGKILL after 5 s) and exits.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collector_core::lock;
use rustix::thread::CapabilitySet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::config::{Launch, Settings};
use crate::rules::{Rule, RuleError};
use crate::sink::{WebhookError, WebhookHeader};

/// The protocol's version, the first byte of every message.
pub const PROTOCOL_VERSION: u8 = 1;
/// The length of every message.
pub const MESSAGE_LEN: usize = 16;
/// The variable that tells a collector which uid to share its socket with
/// (collector-core's `ServeArgs::ipc_peer_uid`).
pub const PEER_UID_VARIABLE: &str = "DAEMONEYE_IPC_PEER_UID";
/// The user the agent becomes when the config names none, if it exists.
pub const DEFAULT_USER: &str = "daemoneye";
/// The user it becomes otherwise.
pub const FALLBACK_USER: &str = "nobody";
/// How long a stopped collector has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the agent asks of the spawner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start the collector at this place of the list.
    Start {
        /// Its place.
        index: u16,
    },
    /// Stop it (SIGTERM, then SIGKILL after 5 s).
    Stop {
        /// Its place.
        index: u16,
    },
}

/// What the spawner tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The collector was started.
    Started {
        /// Its place.
        index: u16,
        /// Its pid.
        pid: u32,
    },
    /// It could not be started.
    Failed {
        /// Its place.
        index: u16,
        /// The OS error number (`EINVAL`: no such place, `EBUSY`: running).
        errno: i32,
    },
    /// It exited.
    Exited {
        /// Its place.
        index: u16,
        /// Its pid.
        pid: u32,
        /// Its raw wait status.
        status: i32,
    },
}

/// A message that is not one of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a spawner message (version {version}, kind {kind})")]
pub struct BadMessage {
    /// Its version byte.
    pub version: u8,
    /// Its kind byte.
    pub kind: u8,
}

fn message(kind: u8, index: u16, pid: u32, value: i32) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[0] = PROTOCOL_VERSION;
    m[1] = kind;
    m[2..4].copy_from_slice(&index.to_be_bytes());
    m[4..8].copy_from_slice(&pid.to_be_bytes());
    m[8..12].copy_from_slice(&value.to_be_bytes());
    m
}

/// The kind, index, pid and value of `m`, when it is of this version with
/// its reserved bytes zero.
fn fields(m: &[u8; MESSAGE_LEN]) -> Result<(u8, u16, u32, i32), BadMessage> {
    let bad = BadMessage {
        version: m[0],
        kind: m[1],
    };
    if m[0] != PROTOCOL_VERSION || m[12..].iter().any(|b| *b != 0) {
        return Err(bad);
    }
    let index = u16::from_be_bytes([m[2], m[3]]);
    let pid = u32::from_be_bytes([m[4], m[5], m[6], m[7]]);
    let value = i32::from_be_bytes([m[8], m[9], m[10], m[11]]);
    Ok((m[1], index, pid, value))
}

impl Request {
    /// The message.
    pub fn encode(self) -> [u8; MESSAGE_LEN] {
        match self {
            Self::Start { index } => message(1, index, 0, 0),
            Self::Stop { index } => message(2, index, 0, 0),
        }
    }

    /// Reads a message.
    ///
    /// # Errors
    /// [`BadMessage`] for anything else than a request of this version.
    pub fn decode(m: &[u8; MESSAGE_LEN]) -> Result<Self, BadMessage> {
        match fields(m)? {
            (1, index, 0, 0) => Ok(Self::Start { index }),
            (2, index, 0, 0) => Ok(Self::Stop { index }),
            _ => Err(BadMessage {
                version: m[0],
                kind: m[1],
            }),
        }
    }
}

impl Report {
    /// The message.
    pub fn encode(self) -> [u8; MESSAGE_LEN] {
        match self {
            Self::Started { index, pid } => message(11, index, pid, 0),
            Self::Failed { index, errno } => message(12, index, 0, errno),
            Self::Exited { index, pid, status } => message(13, index, pid, status),
        }
    }

    /// Reads a message.
    ///
    /// # Errors
    /// [`BadMessage`] for anything else than a report of this version.
    pub fn decode(m: &[u8; MESSAGE_LEN]) -> Result<Self, BadMessage> {
        match fields(m)? {
            (11, index, pid, 0) => Ok(Self::Started { index, pid }),
            (12, index, 0, errno) => Ok(Self::Failed { index, errno }),
            (13, index, pid, status) => Ok(Self::Exited { index, pid, status }),
            _ => Err(BadMessage {
                version: m[0],
                kind: m[1],
            }),
        }
    }
}

/// One collector the spawner may start: `program` (this executable when
/// `None`) with `args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnEntry {
    /// The collector's name, in logs.
    pub name: String,
    /// The program; `None`: this executable (a built-in collector).
    pub program: Option<PathBuf>,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The capabilities a collector takes from whoever starts it, by how it is
/// started: each built-in collector's own (by its subcommand), and for a
/// program, procmond's (the program the agent has always run so).
pub fn capabilities_taken(builtin: bool, args: &[impl AsRef<std::ffi::OsStr>]) -> CapabilitySet {
    let subcommand = args.first().and_then(|a| a.as_ref().to_str());
    match (builtin, subcommand) {
        (true, Some("collect-performance")) => CapabilitySet::empty(),
        (true, Some("collect-network")) => netmond::source::TAKES,
        (true, Some("collect-files")) => fsmond::CAPABILITIES,
        _ => procmond::privileges::FOR_PROCMOND,
    }
}

/// What the collectors of `settings` take, together (see
/// [`capabilities_taken`]).
fn taken_by(settings: &Settings) -> CapabilitySet {
    settings
        .collectors
        .iter()
        .map(|c| match &c.launch {
            Launch::Builtin { args } => capabilities_taken(true, args),
            Launch::Program { args, .. } => capabilities_taken(false, args),
            Launch::Connect => CapabilitySet::empty(),
        })
        .fold(CapabilitySet::empty(), CapabilitySet::union)
}

/// `daemoneye-agent spawner`'s flags, written by [`separate`].
#[derive(Debug, Clone, clap::Args)]
pub struct SpawnerArgs {
    /// The uid the collectors share their sockets with (the agent's).
    #[arg(long)]
    pub peer_uid: u32,
    /// The list, as JSON: one entry (or `null`, a collector the agent
    /// connects to) per configured collector, in order.
    #[arg(long)]
    pub collectors: String,
}

/// Why the agent could not be separated from its privileges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeparationError {
    /// The configured user does not exist.
    #[error("user {name:?} (config key `user`) does not exist")]
    NoSuchUser {
        /// The name.
        name: String,
    },
    /// The user database cannot be read.
    #[error("cannot look up user {name:?}")]
    Lookup {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The data directory cannot be created or given to the user.
    #[error("cannot create {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory is not fit to be given to the agent's user.
    #[error("{} {reason}", path.display())]
    Unfit {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The webhook headers file is unusable (read as root).
    #[error("cannot open the alert sinks")]
    Headers(#[source] WebhookError),
    /// The fleet's creds file is unusable (read as root).
    #[error("cannot open the fleet sink")]
    Creds(#[source] crate::sink::FleetError),
    /// The alerts file cannot be opened (as root).
    #[error("cannot open the alert sinks: cannot open {}", path.display())]
    AlertsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The built-in rules do not load (a bug of the build).
    #[error("cannot load the built-in rules")]
    Rules(#[source] RuleError),
    /// A collector's program or argument is not UTF-8.
    #[error(
        "collector {name:?}: its program and arguments must be UTF-8 to be handed to the spawner"
    )]
    NotUtf8 {
        /// The collector.
        name: String,
    },
    /// The spawner cannot be started.
    #[error("cannot start the spawner")]
    Spawn(#[source] std::io::Error),
    /// Privileges cannot be dropped.
    #[error(transparent)]
    Privileges(#[from] procmond::privileges::PrivilegeError),
    /// Called with threads running: they would keep root and the
    /// capabilities (both are per thread). A bug of the caller.
    #[error("privileges must be dropped before any thread starts ({threads} are running)")]
    Threads {
        /// The threads of the process.
        threads: u64,
    },
}

impl SeparationError {
    /// Whether the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::NoSuchUser { .. }
                | Self::DataDir { .. }
                | Self::Unfit { .. }
                | Self::Headers(_)
                | Self::Creds(_)
                | Self::AlertsFile { .. }
                | Self::NotUtf8 { .. }
        )
    }
}

/// The rule files as root read them, for the unprivileged agent to prepare.
#[derive(Debug)]
pub struct LoadedRules {
    /// The built-in pack and the rules directory's rules.
    pub rules: Vec<Rule>,
    /// The rules refused while loading.
    pub refused: Vec<RuleError>,
}

/// What [`separate`] hands the unprivileged agent.
#[derive(Debug)]
pub struct Separated {
    /// The rules, read as root.
    pub rules: LoadedRules,
    /// The agent's end of the spawner's socket.
    pub(crate) stream: std::os::unix::net::UnixStream,
    /// The spawner, reaped when the agent ends.
    pub(crate) child: std::process::Child,
    /// The agent's uid.
    pub uid: u32,
}

/// The agent's user.
#[derive(Debug, Clone, Copy)]
struct AgentUser {
    uid: u32,
    gid: u32,
}

fn lookup(name: &str) -> Result<Option<AgentUser>, SeparationError> {
    let user = nix::unistd::User::from_name(name).map_err(|source| SeparationError::Lookup {
        name: name.to_owned(),
        source,
    })?;
    Ok(user.map(|u| AgentUser {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }))
}

/// The configured user, or the default one, with its name.
fn agent_user(configured: Option<&str>) -> Result<(String, AgentUser), SeparationError> {
    let found = |name: &str| {
        lookup(name)?
            .map(|u| (name.to_owned(), u))
            .ok_or_else(|| SeparationError::NoSuchUser {
                name: name.to_owned(),
            })
    };
    match configured {
        Some(name) => found(name),
        None => match lookup(DEFAULT_USER)? {
            Some(user) => Ok((DEFAULT_USER.to_owned(), user)),
            None => found(FALLBACK_USER),
        },
    }
}

/// Whether `uid` (with `gid`) may search every directory from `/` to `dir`
/// (itself included); the first one that bars it when not.
fn barrier(dir: &Path, user: AgentUser) -> Option<(PathBuf, u32)> {
    dir.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|d| {
            let meta = std::fs::metadata(d).ok()?;
            let mode = meta.mode();
            let bit = if meta.uid() == user.uid {
                0o100
            } else if meta.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            (mode & bit == 0).then(|| (d.to_owned(), mode & 0o7777))
        })
}

fn unfit(path: &Path, reason: String) -> SeparationError {
    SeparationError::Unfit {
        path: path.to_owned(),
        reason,
    }
}

fn reachable(dir: &Path, user: AgentUser, name: &str) -> Result<(), SeparationError> {
    match barrier(dir, user) {
        None => Ok(()),
        Some((at, mode)) => Err(unfit(
            dir,
            format!(
                "cannot be reached by the agent's user {name} (uid {}): {} (mode {mode:o}) bars it; \
                 let others search it (chmod o+x) or choose another place",
                user.uid,
                at.display()
            ),
        )),
    }
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// What the agent keeps in its data directory: the store
/// ([`daemoneye_store::store::FILE`] and SQLite's files beside it), its
/// socket, the collectors' directory and the rules directory.
fn is_agent_file(name: &str) -> bool {
    let store = daemoneye_store::store::FILE;
    name == store
        || name
            .strip_prefix(store)
            .is_some_and(|rest| ["-wal", "-shm", "-journal"].contains(&rest))
        || ["agent.sock", "collectors", "rules"].contains(&name)
}

/// Creates the data directory if missing and gives it to `user`: owner the
/// user, group root, mode 0710; the store's files (regular files of
/// root's, not symbolic links) the user's, nothing else (a config file kept
/// there stays root's). Takes only a directory that is the agent's: owned
/// by root or the user, writable by nobody else, and private (0700) or
/// holding nothing but the agent's files: pointing `data_dir` at `/var/lib`
/// must not give `/var/lib` away.
fn take_over_data_dir(dir: &Path, user: AgentUser) -> Result<(), SeparationError> {
    let io = |source| SeparationError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(unfit(dir, "is not a directory".to_owned()));
    }
    if meta.uid() != 0 && meta.uid() != user.uid {
        return Err(unfit(
            dir,
            format!("is owned by uid {}: not the agent's", meta.uid()),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o7022 != 0 {
        return Err(unfit(
            dir,
            format!("is writable by others (mode {mode:o}): give the agent a directory of its own"),
        ));
    }
    let names = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    let foreign = names
        .iter()
        .find(|n| !n.to_str().is_some_and(is_agent_file));
    if let (true, Some(name)) = (mode & 0o067 != 0, foreign) {
        return Err(unfit(
            dir,
            format!(
                "is shared (mode {mode:o}) and holds {name:?}, not the agent's: give the agent a \
                 directory of its own, or chmod 700 it"
            ),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).map_err(io)?;
    chown(dir, Some(user.uid), Some(0)).map_err(io)?;
    for name in names.iter().filter(|n| {
        n.to_str()
            .is_some_and(|n| is_agent_file(n) && n.starts_with(daemoneye_store::store::FILE))
    }) {
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_file() && meta.uid() == 0 {
            chown(&path, Some(user.uid), Some(user.gid)).map_err(io)?;
        }
    }
    Ok(())
}

/// Refuses a config file in the data directory: the agent's user could
/// replace it there (it owns the directory), and the programs it names are
/// started as root.
fn config_outside(config: Option<&Path>, data_dir: &Path) -> Result<(), SeparationError> {
    let inside = |p: &Path| {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let d = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        p.starts_with(d)
    };
    match config {
        Some(path) if inside(path) => Err(unfit(
            path,
            "is in the data directory, which the agent's user owns: it could rewrite it, and \
             the programs it names are started as root; keep it elsewhere"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// `<data-dir>/collectors`: owner root, group the user's, mode 2750 (its
/// sockets get the user's group).
fn collectors_dir(data_dir: &Path, user: AgentUser) -> Result<PathBuf, SeparationError> {
    let dir = data_dir.join("collectors");
    let io = |source| SeparationError::DataDir {
        path: dir.clone(),
        source,
    };
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?,
        Err(e) => return Err(io(e)),
        Ok(meta) if meta.is_dir() && meta.uid() == 0 => {}
        Ok(_) => {
            return Err(unfit(
                &dir,
                "is not a directory of root's: remove it (the agent makes it)".to_owned(),
            ))
        }
    }
    chown(&dir, Some(0), Some(user.gid)).map_err(io)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)).map_err(io)?;
    Ok(dir)
}

/// The spawner's list, from the collectors the agent starts; their sockets
/// in the data directory move to `collectors` (in their arguments too).
fn spawn_list(
    settings: &mut Settings,
    collectors: &Path,
) -> Result<Vec<Option<SpawnEntry>>, SeparationError> {
    let data_dir = settings.data_dir.clone();
    let mut list = Vec::with_capacity(settings.collectors.len());
    for spec in &mut settings.collectors {
        let (program, args) = match &mut spec.launch {
            Launch::Builtin { args } => (None, args),
            Launch::Program { program, args } => (Some(program.clone()), args),
            Launch::Connect => {
                list.push(None);
                continue;
            }
        };
        if let (Some(parent), Some(file)) = (spec.socket.parent(), spec.socket.file_name()) {
            if parent == data_dir {
                let moved = collectors.join(file);
                for a in args.iter_mut().filter(|a| **a == *spec.socket) {
                    *a = moved.clone().into_os_string();
                }
                spec.socket = moved;
            }
        }
        let not_utf8 = || SeparationError::NotUtf8 {
            name: spec.name.clone(),
        };
        let args = args
            .iter()
            .map(|a| a.to_str().map(str::to_owned).ok_or_else(not_utf8))
            .collect::<Result<_, _>>()?;
        if program.as_ref().is_some_and(|p| p.to_str().is_none()) {
            return Err(not_utf8());
        }
        list.push(Some(SpawnEntry {
            name: spec.name.clone(),
            program,
            args,
        }));
    }
    Ok(list)
}

/// Opens (creating) the alerts file as root, and gives it to the user when
/// it is a regular file of root's; its directory must let the user reach it.
fn prepare_alerts_file(path: &Path, user: AgentUser, name: &str) -> Result<(), SeparationError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SeparationError::AlertsFile {
            path: path.to_owned(),
            source,
        })?;
    let meta = file
        .metadata()
        .map_err(|source| SeparationError::AlertsFile {
            path: path.to_owned(),
            source,
        })?;
    if meta.is_file() && meta.uid() == 0 {
        std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid)).map_err(|source| {
            SeparationError::AlertsFile {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => reachable(dir, user, name),
        _ => Ok(()),
    }
}

/// Separates the agent from its privileges when it runs as root (see the
/// [module](self)): returns what the unprivileged agent needs, or `None`
/// when nothing was separated (not root; `user = "root"`, where the agent
/// keeps only its collectors' capabilities, as before). Call it before any
/// thread starts.
///
/// # Errors
/// A [`SeparationError`]; [`SeparationError::is_bad_input`] tells the
/// user's mistakes from failures.
pub fn separate(
    settings: &mut Settings,
    config: Option<&Path>,
) -> Result<Option<Separated>, SeparationError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let threads = procfs_threads();
    if threads > 1 {
        return Err(SeparationError::Threads { threads });
    }
    let (name, user) = agent_user(settings.user.as_deref())?;
    if settings.user.is_none() && name == FALLBACK_USER {
        warn!(
            "no user {DEFAULT_USER:?}: the agent runs as {FALLBACK_USER:?}, and other processes \
             running as {FALLBACK_USER:?} could reach its collectors' event streams; create a \
             user of its own (useradd --system {DEFAULT_USER}) or name one (config `user`)"
        );
    }
    if user.uid == 0 {
        procmond::privileges::drop_privileges_for_supervisor(taken_by(settings))?;
        warn!("the agent runs as root (`user = \"root\"`): no privilege separation");
        return Ok(None);
    }
    // In the order the agent met them before: the data directory first,
    // then the sinks.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.data_dir)
        .map_err(|source| SeparationError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    config_outside(config, &settings.data_dir)?;
    // What only root can read, read once.
    if let Some(path) = settings.sinks.webhook_headers_file.take() {
        let headers = WebhookHeader::from_file(&path).map_err(SeparationError::Headers)?;
        settings.sinks.webhook_headers.extend(headers);
    }
    if let Some(fleet) = settings.sinks.fleet.as_mut() {
        fleet.load_creds().map_err(SeparationError::Creds)?;
    }
    if let Some(path) = &settings.sinks.alerts_jsonl {
        prepare_alerts_file(path, user, &name)?;
    }
    let (rules, refused) = crate::agent::load_rules(settings).map_err(SeparationError::Rules)?;
    if let Some(parent) = settings.data_dir.parent() {
        reachable(parent, user, &name)?;
    }
    take_over_data_dir(&settings.data_dir, user)?;
    let collectors = collectors_dir(&settings.data_dir, user)?;
    let list = spawn_list(settings, &collectors)?;
    let (stream, child) = start_spawner(&list, user.uid).map_err(SeparationError::Spawn)?;
    procmond::privileges::drop_to_user(user.uid, user.gid)?;
    info!(user = %name, uid = user.uid, spawner = child.id(), "privileges dropped; the spawner starts the collectors");
    Ok(Some(Separated {
        rules: LoadedRules { rules, refused },
        stream,
        child,
        uid: user.uid,
    }))
}

/// The threads of this process (`Threads:` of `/proc/self/status`); 1
/// when it cannot be read.
fn procfs_threads() -> u64 {
    use collector_core::procfs::{status_lines, status_number};
    std::fs::read("/proc/self/status")
        .ok()
        .and_then(|s| {
            status_lines(&s)
                .find(|(key, _)| *key == b"Threads")
                .and_then(|(_, value)| status_number(value))
        })
        .unwrap_or(1)
}

/// After the agent's run: waits (10 s at most) for the spawner to exit, which
/// it does once the agent's end of its socket is closed and its collectors
/// are stopped; past that it is left to its parent-death signal.
pub async fn reap(mut spawner: std::process::Child) {
    for _ in 0..100 {
        match spawner.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                warn!(%status, "the spawner exited with an error");
                return;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                warn!(error = %e, "cannot wait for the spawner");
                return;
            }
        }
    }
    warn!(
        pid = spawner.id(),
        "the spawner did not exit within 10 s of the agent's stop"
    );
}

/// Starts `daemoneye-agent spawner` with `list`, its stdin its end of a
/// socket pair.
fn start_spawner(
    list: &[Option<SpawnEntry>],
    peer_uid: u32,
) -> std::io::Result<(std::os::unix::net::UnixStream, std::process::Child)> {
    let json = serde_json::to_string(list).map_err(std::io::Error::other)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("spawner")
        .arg("--peer-uid")
        .arg(peer_uid.to_string())
        .arg("--collectors")
        .arg(json)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()?;
    Ok((ours, child))
}

/// The spawner's part of `daemoneye-agent spawner`: drops to what the
/// collectors of its list take (before any thread starts), then serves the
/// agent's requests on stdin (its end of the socket pair) until the agent
/// goes or SIGTERM, then stops every collector.
///
/// # Errors
/// When the list does not parse, privileges cannot be dropped or the
/// runtime cannot start.
pub fn run_spawner(args: &SpawnerArgs) -> std::io::Result<()> {
    let list: Vec<Option<SpawnEntry>> =
        serde_json::from_str(&args.collectors).map_err(std::io::Error::other)?;
    let taken = list
        .iter()
        .flatten()
        .map(|e| capabilities_taken(e.program.is_none(), &e.args))
        .fold(CapabilitySet::empty(), CapabilitySet::union);
    procmond::privileges::drop_privileges_for_spawner(taken).map_err(std::io::Error::other)?;
    let stdin = std::io::stdin().lock();
    let fd = std::os::fd::AsFd::as_fd(&stdin).try_clone_to_owned()?;
    drop(stdin);
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Spawner {
            list,
            peer_uid: args.peer_uid,
            running: HashMap::new(),
        }
        .serve(stream)
        .await
    })
}

/// Reads 16-byte messages from `rd` into `tx` until the end or a read error.
async fn read_messages(
    mut rd: tokio::net::unix::OwnedReadHalf,
    tx: mpsc::Sender<[u8; MESSAGE_LEN]>,
) {
    let mut m = [0u8; MESSAGE_LEN];
    while rd.read_exact(&mut m).await.is_ok() {
        if tx.send(m).await.is_err() {
            return;
        }
    }
}

struct Spawner {
    list: Vec<Option<SpawnEntry>>,
    peer_uid: u32,
    /// Per place: the running collector's pid and what stops it (taken
    /// when it is told to stop: it keeps its place until it has exited).
    running: HashMap<u16, (u32, Option<oneshot::Sender<()>>)>,
}

impl Spawner {
    async fn serve(mut self, stream: tokio::net::UnixStream) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let (rd, mut wr) = stream.into_split();
        let (req_tx, mut requests) = mpsc::channel(16);
        tokio::spawn(read_messages(rd, req_tx));
        let (exit_tx, mut exits) = mpsc::channel::<Report>(16);
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let report = tokio::select! {
                biased;
                _ = term.recv() => break,
                Some(report) = exits.recv() => {
                    if let Report::Exited { index, pid, .. } = report {
                        if self.running.get(&index).is_some_and(|(p, _)| *p == pid) {
                            self.running.remove(&index);
                        }
                    }
                    Some(report)
                }
                m = requests.recv() => match m.map(|m| Request::decode(&m)) {
                    // The agent is gone.
                    None => break,
                    Some(Ok(Request::Start { index })) => Some(self.start(index, &exit_tx, &tracker)),
                    Some(Ok(Request::Stop { index })) => {
                        // Dropping the sender stops it; its exit is reported.
                        if let Some((_, stop)) = self.running.get_mut(&index) {
                            stop.take();
                        }
                        None
                    }
                    // Not the agent this binary speaks with: broken or taken
                    // over. Its collectors are stopped, and the spawner ends.
                    Some(Err(e)) => {
                        error!(error = %e, "spawner: a message outside the protocol; stopping");
                        break;
                    }
                },
            };
            if let Some(report) = report {
                if wr.write_all(&report.encode()).await.is_err() {
                    break;
                }
            }
        }
        self.running.clear();
        tracker.close();
        let _ = tokio::time::timeout(STOP_GRACE * 2, tracker.wait()).await;
        Ok(())
    }

    fn start(
        &mut self,
        index: u16,
        exits: &mpsc::Sender<Report>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Report {
        let Some(Some(entry)) = self.list.get(usize::from(index)) else {
            return Report::Failed {
                index,
                errno: nix::errno::Errno::EINVAL as i32,
            };
        };
        if self.running.contains_key(&index) {
            return Report::Failed {
                index,
                errno: nix::errno::Errno::EBUSY as i32,
            };
        }
        let program = match &entry.program {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe(),
        };
        let spawned = program.and_then(|program| {
            tokio::process::Command::new(program)
                .args(&entry.args)
                .env(PEER_UID_VARIABLE, self.peer_uid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                error!(collector = %entry.name, error = %e, "spawner: cannot start the collector");
                return Report::Failed {
                    index,
                    errno: e.raw_os_error().unwrap_or(nix::errno::Errno::EIO as i32),
                };
            }
        };
        let pid = child.id().unwrap_or(0);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(index, (pid, Some(stop_tx)));
        tracker.spawn(supervise(child, index, pid, stop_rx, exits.clone()));
        Report::Started { index, pid }
    }
}

/// Waits for a collector to exit, or stops it when told (or when the
/// spawner stops); reports its exit.
async fn supervise(
    mut child: tokio::process::Child,
    index: u16,
    pid: u32,
    stop: oneshot::Receiver<()>,
    exits: mpsc::Sender<Report>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop => {
            // Not reaped yet (only this task waits for it): the pid is its.
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    };
    let status = status.map_or(-1, ExitStatus::into_raw);
    let _ = exits.send(Report::Exited { index, pid, status }).await;
}

/// Per place: what the agent waits for.
#[derive(Default)]
struct Slot {
    starting: Option<oneshot::Sender<Result<u32, i32>>>,
    /// The running collector's pid (0 until started) and its exit.
    exit: Option<(u32, watch::Sender<Option<i32>>)>,
}

type Slots = Arc<Mutex<HashMap<u16, Slot>>>;

/// The agent's end: asks the spawner to start and stop collectors and
/// learns when they exit. Cheap to clone.
#[derive(Clone)]
pub struct SpawnerClient {
    requests: mpsc::Sender<Request>,
    slots: Slots,
}

impl std::fmt::Debug for SpawnerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnerClient").finish_non_exhaustive()
    }
}

/// The spawner cannot be reached (it exited).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the spawner is gone")]
pub struct SpawnerGone;

impl SpawnerClient {
    /// Serves the agent's end of the spawner's socket (two tasks on the
    /// current runtime).
    ///
    /// # Errors
    /// When the socket cannot be registered with the runtime.
    pub fn start(stream: std::os::unix::net::UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let (rd, mut wr) = tokio::net::UnixStream::from_std(stream)?.into_split();
        let (requests, mut rx) = mpsc::channel::<Request>(16);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if wr.write_all(&r.encode()).await.is_err() {
                    return;
                }
            }
        });
        let slots = Slots::default();
        let (tx, mut reports) = mpsc::channel(16);
        tokio::spawn(read_messages(rd, tx));
        let dispatch = slots.clone();
        tokio::spawn(async move {
            while let Some(m) = reports.recv().await {
                match Report::decode(&m) {
                    Ok(report) => on_report(&dispatch, report),
                    Err(e) => warn!(error = %e, "a spawner report refused"),
                }
            }
            // Every waiter learns it: their senders are dropped.
            let mut slots = lock(&dispatch);
            if slots.is_empty() {
                info!("the spawner exited");
            } else {
                warn!("the spawner exited with collectors running: they cannot be started again");
            }
            slots.clear();
        });
        Ok(Self { requests, slots })
    }

    /// Starts the collector at `index` of the spawner's list.
    ///
    /// # Errors
    /// A message: the spawner refused (naming the OS error) or is gone.
    pub async fn spawn(&self, index: u16) -> Result<RemoteChild, String> {
        let (started, answer) = oneshot::channel();
        let (exit_tx, exit) = watch::channel(None);
        match lock(&self.slots).entry(index) {
            // One link per place: a second start is a bug of the caller.
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err("it is already started".to_owned())
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Slot {
                    starting: Some(started),
                    exit: Some((0, exit_tx)),
                });
            }
        }
        let gone = SpawnerGone.to_string();
        if self.requests.send(Request::Start { index }).await.is_err() {
            return Err(gone);
        }
        match answer.await.map_err(|_| gone)? {
            Ok(pid) => Ok(RemoteChild {
                client: self.clone(),
                index,
                pid,
                exit,
            }),
            Err(errno) => Err(format!(
                "the spawner could not start it: {}",
                std::io::Error::from_raw_os_error(errno)
            )),
        }
    }
}

fn on_report(slots: &Slots, report: Report) {
    let mut slots = lock(slots);
    match report {
        Report::Started { index, pid } => {
            if let Some(slot) = slots.get_mut(&index) {
                if let Some((p, _)) = &mut slot.exit {
                    *p = pid;
                }
                if let Some(tx) = slot.starting.take() {
                    let _ = tx.send(Ok(pid));
                }
            }
        }
        Report::Failed { index, errno } => {
            if let Some(slot) = slots.remove(&index) {
                if let Some(tx) = slot.starting {
                    let _ = tx.send(Err(errno));
                }
            }
        }
        Report::Exited { index, pid, status } => {
            let ours = slots
                .get(&index)
                .and_then(|s| s.exit.as_ref())
                .is_some_and(|(p, _)| *p == pid);
            if ours {
                if let Some((_, tx)) = slots.remove(&index).and_then(|s| s.exit) {
                    tx.send_replace(Some(status));
                }
            }
        }
    }
}

/// A collector the spawner started for the agent.
#[derive(Debug)]
pub struct RemoteChild {
    client: SpawnerClient,
    index: u16,
    pid: u32,
    exit: watch::Receiver<Option<i32>>,
}

impl RemoteChild {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for it to exit.
    ///
    /// # Errors
    /// [`SpawnerGone`] when the spawner went first.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&mut self) -> Result<ExitStatus, SpawnerGone> {
        let status = self
            .exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| SpawnerGone)?;
        Ok(ExitStatus::from_raw(status.unwrap_or(-1)))
    }

    /// Asks the spawner to stop it (SIGTERM, SIGKILL after 5 s) and waits
    /// for its exit, 10 s at most.
    pub async fn stop(&mut self) {
        if self.exit.borrow().is_some() {
            return;
        }
        let index = self.index;
        if self
            .client
            .requests
            .send(Request::Stop { index })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(STOP_GRACE * 2, self.wait()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_collector_takes_its_own_capabilities_and_the_spawner_their_union() {
        use procmond::privileges::FOR_PROCMOND;
        let taken = |builtin, args: &[&str]| capabilities_taken(builtin, args);
        assert_eq!(taken(true, &["collect", "--socket", "s"]), FOR_PROCMOND);
        assert_eq!(
            taken(true, &["collect-performance"]),
            CapabilitySet::empty()
        );
        // netmond loads its eBPF program (CAP_BPF, CAP_PERFMON), then keeps
        // only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
        assert_eq!(
            taken(true, &["collect-network"]),
            CapabilitySet::SYS_PTRACE
                | CapabilitySet::DAC_READ_SEARCH
                | CapabilitySet::BPF
                | CapabilitySet::PERFMON
        );
        assert_eq!(
            taken(true, &["collect-files"]),
            CapabilitySet::SYS_ADMIN | CapabilitySet::DAC_READ_SEARCH
        );
        // A program is taken for a procmond, as it always was.
        assert_eq!(taken(false, &["collect-files"]), FOR_PROCMOND);
        // Only fsmond's list holds CAP_SYS_ADMIN.
        let settings = |toml: &str| {
            let file = crate::config::AgentConfig::from_toml_str(toml).unwrap();
            Settings::resolve(file, None, &crate::config::RunArgs::default()).unwrap()
        };
        let defaults = taken_by(&settings(""));
        assert_eq!(defaults, FOR_PROCMOND | CapabilitySet::SYS_ADMIN);
        let without = taken_by(&settings(
            "[[collector]]\nname = \"p\"\nbuiltin = \"perfmond\"\n\
             [[collector]]\nname = \"n\"\nbuiltin = \"netmond\"",
        ));
        assert_eq!(without, netmond::source::TAKES);
    }

    #[test]
    fn messages_round_trip_and_anything_else_is_refused() {
        let requests = [Request::Start { index: 0 }, Request::Stop { index: 513 }];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
            assert!(Report::decode(&r.encode()).is_err());
        }
        let reports = [
            Report::Started {
                index: 1,
                pid: 4_000_000,
            },
            Report::Failed {
                index: 2,
                errno: 16,
            },
            Report::Exited {
                index: 3,
                pid: 77,
                status: 9,
            },
        ];
        for r in reports {
            assert_eq!(Report::decode(&r.encode()), Ok(r));
            assert!(Request::decode(&r.encode()).is_err());
        }
        let mut m = Request::Start { index: 0 }.encode();
        m[0] = 2;
        assert_eq!(
            Request::decode(&m),
            Err(BadMessage {
                version: 2,
                kind: 1
            })
        );
        // A start carries no pid; the reserved bytes are zero.
        let mut m = Request::Start { index: 0 }.encode();
        m[5] = 1;
        assert!(Request::decode(&m).is_err());
        let mut m = Request::Start { index: 0 }.encode();
        m[15] = 1;
        assert!(Request::decode(&m).is_err());
        assert!(Request::decode(&[0; MESSAGE_LEN]).is_err());
    }

    fn entry(name: &str, program: &str, args: &[&str]) -> Option<SpawnEntry> {
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let program = Some(program.into());
        (!name.is_empty()).then(|| SpawnEntry {
            name: name.to_owned(),
            program,
            args,
        })
    }

    /// A spawner serving `list` on one end of a socket pair, and the other.
    fn serving(
        list: Vec<Option<SpawnEntry>>,
    ) -> (
        tokio::task::JoinHandle<std::io::Result<()>>,
        std::os::unix::net::UnixStream,
    ) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let theirs = tokio::net::UnixStream::from_std(theirs).unwrap();
        let spawner = Spawner {
            list,
            peer_uid: 4321,
            running: HashMap::new(),
        };
        (tokio::spawn(spawner.serve(theirs)), ours)
    }

    #[tokio::test]
    async fn the_spawner_starts_only_its_list_reports_exits_and_stops_on_request() {
        let (spawner, ours) = serving(vec![
            entry("exits", "/bin/sh", &["-c", "exit 3"]),
            entry("sleeps", "/bin/sleep", &["60"]),
            None,
            entry(
                "peer",
                "/bin/sh",
                &["-c", "test \"$DAEMONEYE_IPC_PEER_UID\" = 4321"],
            ),
        ]);
        let client = SpawnerClient::start(ours).unwrap();
        // Its exit, with its code, is reported.
        let mut exits = client.spawn(0).await.unwrap();
        assert!(exits.pid() > 0);
        assert_eq!(exits.wait().await.unwrap().code(), Some(3));
        // It tells the collector whose uid to let in.
        let mut peer = client.spawn(3).await.unwrap();
        assert_eq!(peer.wait().await.unwrap().code(), Some(0));
        // Stopped on request: SIGTERM; its place can be started again.
        let mut sleeps = client.spawn(1).await.unwrap();
        assert!(client.spawn(1).await.unwrap_err().contains("already"));
        sleeps.stop().await;
        assert_eq!(sleeps.wait().await.unwrap().signal(), Some(15));
        let again = client.spawn(1).await.unwrap();
        assert_ne!(again.pid(), sleeps.pid());
        // Places that are not in the list, or only connected to.
        for index in [2, 4, 600] {
            let e = client.spawn(index).await.unwrap_err();
            assert!(e.contains("Invalid argument"), "{e}");
        }
        // The agent gone: the spawner stops what runs, and ends.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(again.pid()).unwrap());
        drop((client, again, exits, peer, sleeps));
        tokio::time::timeout(Duration::from_secs(15), spawner)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
    }

    #[tokio::test]
    async fn a_message_outside_the_protocol_ends_the_spawner() {
        let (spawner, ours) = serving(vec![entry("sleeps", "/bin/sleep", &["60"])]);
        ours.set_nonblocking(true).unwrap();
        let mut ours = tokio::net::UnixStream::from_std(ours).unwrap();
        ours.write_all(&Request::Start { index: 0 }.encode())
            .await
            .unwrap();
        let mut m = [0u8; MESSAGE_LEN];
        ours.read_exact(&mut m).await.unwrap();
        let Ok(Report::Started { pid, .. }) = Report::decode(&m) else {
            panic!("{m:?}");
        };
        let mut bad = Request::Stop { index: 0 }.encode();
        bad[1] = 99;
        ours.write_all(&bad).await.unwrap();
        tokio::time::timeout(Duration::from_secs(15), spawner)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
    }

    #[test]
    fn the_barrier_is_the_first_directory_the_user_cannot_search() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let nobody = AgentUser {
            uid: 4_000_000_000,
            gid: 4_000_000_000,
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let tmp_ok = barrier(&std::env::temp_dir(), nobody).is_none();
        if tmp_ok {
            let (at, mode) = barrier(&inner, nobody).unwrap();
            assert_eq!((at.as_path(), mode), (dir.path(), 0o700));
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        if tmp_ok {
            assert_eq!(barrier(&inner, nobody), None);
        }
    }
}
