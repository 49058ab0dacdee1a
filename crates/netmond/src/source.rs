//! netmond as an event source: a `sock_diag` snapshot every interval,
//! diffed against the last one.
//!
//! The first look reports every live socket as
//! [`Present`](ConnectionChange::Present); each later look reports the
//! sockets that appeared ([`Opened`](ConnectionChange::Opened)) and those
//! that went ([`Closed`](ConnectionChange::Closed)), a socket named by its
//! kernel cookie. A TCP socket in `TIME_WAIT` or `CLOSE` counts as gone.
//!
//! A socket held by several processes (after a fork, or a shell given it
//! as stdin) is one event per holder, each with its pid, process key and
//! the lowest descriptor that process holds it by, all with the same
//! `connection_id` and `holders` the number of them; a socket no readable
//! process holds is one event without a pid.
//!
//! # What this tier misses
//! A connection that opens and closes between two looks (shorter than the
//! interval, 5 s by default) is never seen. This is the polling tier
//! ([`CaptureTier::Polling`] on every event); the real-time tier (eBPF on
//! `sock:inet_sock_set_state` and the BPF LSM socket hooks) is not built
//! yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Registry};
use collector_core::poll::{Poll, Polled};
use collector_core::procfs;
use collector_core::{
    BootId, CaptureTier, CollectionEvent, ConnectionChange, ConnectionState, NetworkEvent,
    NetworkProtocol, ProcessKey, SourceCaps,
};
use serde::{Deserialize, Serialize};

use crate::owners::Owner;
use crate::snapshot::{Connection, Snapshotter};

/// The source's name, in logs, metrics and health.
pub const NAME: &str = "netmond";

/// The capabilities netmond needs as root, measured (Linux 6.18): none to
/// dump every socket with `sock_diag` (TCP and UDP dumps are open to any
/// user; `CAP_NET_ADMIN` adds nothing), `CAP_DAC_READ_SEARCH` to list
/// another user's `/proc/<pid>/fd` and `CAP_SYS_PTRACE` to read its links
/// (either alone finds no holder). Sockets of other network namespaces
/// need `CAP_SYS_ADMIN` to enter them ([`crate::namespaces`]), which this
/// set leaves out: with it, they are counted unreadable, not seen.
pub const CAPABILITIES: rustix::thread::CapabilitySet =
    rustix::thread::CapabilitySet::SYS_PTRACE.union(rustix::thread::CapabilitySet::DAC_READ_SEARCH);

/// netmond's settings (`[netmond]` in its config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetmondConfig {
    /// Time between snapshots.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where procfs is mounted.
    pub proc_root: PathBuf,
}

impl Default for NetmondConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl NetmondConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), collector_core::ConfigError> {
        collector_core::poll::validate_interval(self.interval)
    }
}

/// What the differ counts beyond the looks (shared: clones see the same).
#[derive(Debug, Clone, Default)]
pub struct NetmondCounters {
    /// Sockets reported opened.
    pub opened: Counter,
    /// Sockets reported closed.
    pub closed: Counter,
    /// Walks of `/proc/*/fd` (the snapshotter's map rebuilt).
    pub proc_walks: Counter,
}

impl NetmondCounters {
    /// Registers the counters for `/metrics`.
    pub fn register_metrics(&self, registry: &Registry) {
        registry.register_by_reason(
            "daemoneye_connections_changed_total",
            "Sockets a network collector saw open or close, by change.",
            &[("source", NAME)],
            [("opened", &self.opened), ("closed", &self.closed)],
        );
        registry.register_counter(
            "daemoneye_proc_walks_total",
            "Walks of every /proc/<pid>/fd to find which process holds which socket.",
            &[("source", NAME)],
            &self.proc_walks,
        );
    }
}

/// The netmond source: [`Differ`] looked through by [`Polled`].
pub type NetmondSource = Polled<Differ>;

/// Builds the source.
///
/// # Errors
/// [`collector_core::ConfigError::Invalid`] for a bad setting.
pub fn source(
    config: &NetmondConfig,
    counters: NetmondCounters,
) -> Result<NetmondSource, collector_core::ConfigError> {
    config.validate()?;
    Ok(Polled::new(
        NAME,
        SourceCaps::NETWORK | SourceCaps::SYSTEM_WIDE,
        config.interval,
        Differ::new(&config.proc_root, counters),
    ))
}

/// Snapshots diffed against the last: see the [module docs](self).
#[derive(Debug)]
pub struct Differ {
    snapshotter: Snapshotter,
    live: HashMap<u64, Connection>,
    first: bool,
    keys: Keys,
    counters: NetmondCounters,
}

/// The process keys of the holders, read once per pid from its stat.
#[derive(Debug)]
struct Keys {
    proc_root: PathBuf,
    boot_id: Option<BootId>,
    by_pid: HashMap<u32, Option<ProcessKey>>,
    stat_buf: Vec<u8>,
}

impl Differ {
    /// A differ reading holders from `proc_root`.
    pub fn new(proc_root: &Path, counters: NetmondCounters) -> Self {
        Self {
            snapshotter: Snapshotter::new(proc_root),
            live: HashMap::new(),
            first: true,
            keys: Keys {
                proc_root: proc_root.to_owned(),
                boot_id: BootId::current().ok(),
                by_pid: HashMap::new(),
                stat_buf: Vec::with_capacity(1024),
            },
            counters,
        }
    }
}

impl Keys {
    /// The key of `pid`, from its stat (`None` once it is gone).
    fn key(&mut self, pid: u32) -> Option<ProcessKey> {
        let boot = self.boot_id?;
        if let Some(key) = self.by_pid.get(&pid) {
            return *key;
        }
        let key = (|| {
            use std::io::Read as _;
            self.stat_buf.clear();
            std::fs::File::open(self.proc_root.join(format!("{pid}/stat")))
                .ok()?
                .read_to_end(&mut self.stat_buf)
                .ok()?;
            let stat = procfs::parse_pid_stat(&self.stat_buf).ok()?;
            Some(ProcessKey::new(boot, pid, stat.starttime))
        })();
        self.by_pid.insert(pid, key);
        key
    }

    /// The events of one socket: one per process that holds it, with the
    /// lowest descriptor it holds it by (a shell whose stdin is the socket
    /// says `fd` 0 whatever else it holds it by), or one without a process
    /// when none could be read.
    fn events(
        &mut self,
        c: &Connection,
        change: ConnectionChange,
        at: SystemTime,
        out: &mut Vec<CollectionEvent>,
    ) {
        // `owners` is sorted by (pid, fd): the first of each pid is its
        // lowest descriptor.
        let mut holders: Vec<Owner> = Vec::with_capacity(c.owners.len());
        for o in &c.owners {
            if holders.last().is_none_or(|h| h.pid != o.pid) {
                holders.push(*o);
            }
        }
        let count = u32::try_from(holders.len()).ok().filter(|n| *n > 0);
        if holders.is_empty() {
            out.push(CollectionEvent::Network(
                self.event(c, None, count, change, at),
            ));
        }
        for h in holders {
            let e = self.event(c, Some(h), count, change, at);
            out.push(CollectionEvent::Network(e));
        }
    }

    fn event(
        &mut self,
        c: &Connection,
        owner: Option<Owner>,
        holders: Option<u32>,
        change: ConnectionChange,
        at: SystemTime,
    ) -> NetworkEvent {
        let s = &c.socket;
        let connected = !s.is_listener();
        NetworkEvent {
            connection_id: s.cookie,
            source_addr: Some(s.local.ip()),
            source_port: Some(s.local.port()),
            dest_addr: connected.then(|| s.remote.ip()),
            dest_port: connected.then(|| s.remote.port()),
            protocol: s.protocol,
            family: Some(s.family),
            state: s.state,
            direction: Some(c.direction),
            change: Some(change),
            pid: owner.map(|o| o.pid),
            process_key: owner.and_then(|o| self.key(o.pid)),
            fd: owner.map(|o| o.fd),
            holders,
            uid: Some(s.uid),
            inode: (s.inode != 0).then_some(s.inode),
            netns: s.netns,
            bytes_sent: None,
            bytes_received: None,
            tier: Some(CaptureTier::Polling),
            timestamp: at,
            id: None,
        }
    }
}

/// A socket that still carries a connection or listens (a TCP socket in
/// `TIME_WAIT` or `CLOSE` is only the trace of one).
fn is_live(c: &Connection) -> bool {
    c.socket.protocol != NetworkProtocol::Tcp
        || !matches!(
            c.socket.state,
            Some(ConnectionState::TimeWait | ConnectionState::Close)
        )
}

impl Poll for Differ {
    fn poll(&mut self, out: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
        let walks = self.snapshotter.walks();
        let snapshot = self.snapshotter.take()?;
        self.counters
            .proc_walks
            .add(self.snapshotter.walks().saturating_sub(walks));
        let at = SystemTime::now();
        // Keys of processes that are gone are dropped with the map of the
        // last look: a pid reused later gets its own.
        let holders: std::collections::HashSet<u32> = snapshot
            .connections
            .iter()
            .flat_map(|c| c.owners.iter().map(|o| o.pid))
            .collect();
        self.keys.by_pid.retain(|pid, _| holders.contains(pid));
        let live: HashMap<u64, Connection> = snapshot
            .connections
            .into_iter()
            .filter(is_live)
            .map(|c| (c.socket.cookie, c))
            .collect();
        let change = if self.first {
            ConnectionChange::Present
        } else {
            ConnectionChange::Opened
        };
        // The new map in place, the old one owned: nothing is cloned.
        let last = std::mem::replace(&mut self.live, live);
        let mut opened: Vec<&Connection> = self
            .live
            .iter()
            .filter(|(cookie, _)| !last.contains_key(cookie))
            .map(|(_, c)| c)
            .collect();
        opened.sort_unstable_by_key(|c| c.socket.cookie);
        let mut closed: Vec<&Connection> = last
            .iter()
            .filter(|(cookie, _)| !self.live.contains_key(cookie))
            .map(|(_, c)| c)
            .collect();
        closed.sort_unstable_by_key(|c| c.socket.cookie);
        for c in &opened {
            self.keys.events(c, change, at, out);
        }
        for c in &closed {
            self.keys.events(c, ConnectionChange::Closed, at, out);
        }
        if !self.first {
            self.counters.opened.add_usize(opened.len());
            self.counters.closed.add_usize(closed.len());
        }
        self.first = false;
        Ok(())
    }
}
