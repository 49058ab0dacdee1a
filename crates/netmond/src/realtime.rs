//! The eBPF tier's records as [`NetworkEvent`]s: [`Tracker`] follows each
//! TCP socket from its first state change to its close and says, of each
//! connection, what a reader of connections wants to know once:
//!
//! | kernel transition | event |
//! |---|---|
//! | `CLOSE -> LISTEN` (`listen()`) | `opened`, `listen`, the listening process |
//! | `SYN_SENT -> ESTABLISHED` | `opened`, `outbound`, the process that called `connect()` (seen at `CLOSE -> SYN_SENT`) |
//! | `SYN_RECV -> ESTABLISHED` | `opened`, `inbound`, the process holding the listener it came in on |
//! | `* -> CLOSE` | `closed`, with the state it left (`syn_sent`: a connect that failed) and the owner named at open |
//!
//! The other transitions (`FIN_WAIT1`, `CLOSE_WAIT`, ...) only update what
//! is known of the socket. Every event is [`CaptureTier::Ebpf`] and its
//! `connection_id` is the socket cookie, the one `sock_diag` reports, so the
//! snapshot tier's events of the same socket carry the same id.
//!
//! # Who owns it
//! A state changed by a process acting on the socket (the record's task)
//! names that process. An accepted connection completes in softirq, before
//! any process holds it: it is given to the holder of its listener (the
//! process that will accept it; the lowest pid when several share the
//! listener), known from the listener's `listen()` or, for listeners older
//! than netmond, from the first snapshot ([`Tracker::note_listener`]). When
//! neither is known the event has no pid rather than a guess. (A hook in
//! the accepting process, an fexit program on `inet_csk_accept` or a BPF
//! LSM hook, would name the acceptor; this kernel refuses every fexit
//! program with `EPERM`, measured on 6.18.)
//!
//! What is tracked is bounded ([`MAX_TRACKED`]): past it, a socket's events
//! still go out with what their records say, and the overflow is counted
//! (`daemoneye_connections_untracked_total`). A socket whose close the
//! kernel dropped (ring buffer full, counted) stays followed: nothing says
//! it is gone until the bound is reached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use collector_core::metrics::Counter;
use collector_core::procfs::KernelUnits;
use collector_core::{
    BootId, CaptureTier, ConnectionChange, ConnectionDirection, ConnectionState, NetworkEvent,
    NetworkProtocol, ProcessKey,
};

use crate::ebpf::{StateRecord, TaskRecord};

/// The most sockets (connections in progress, listeners) followed at once.
pub const MAX_TRACKED: usize = 65_536;

/// A process named as a socket's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its key, when known.
    pub key: Option<ProcessKey>,
}

#[derive(Debug, Clone)]
struct Live {
    owner: Option<Holder>,
    direction: Option<ConnectionDirection>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    inode: Option<u64>,
}

/// What the tracker counts.
#[derive(Debug, Clone, Default)]
pub struct TrackerCounters {
    /// Sockets not followed because [`MAX_TRACKED`] were already.
    pub untracked: Counter,
}

/// Follows sockets from their records: see the [module docs](self).
#[derive(Debug)]
pub struct Tracker {
    live: HashMap<u64, Live>,
    /// Holders of listeners by (netns, port).
    listeners: HashMap<(u64, u16), Holder>,
    boot: Option<BootId>,
    ticks_per_second: u64,
    /// Wall-clock time minus `CLOCK_MONOTONIC`, to date the records.
    wall_offset: Duration,
    counters: TrackerCounters,
}

/// `CLOCK_MONOTONIC` now.
fn monotonic_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

impl Tracker {
    /// A tracker keying processes on this boot.
    pub fn new(counters: TrackerCounters) -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            live: HashMap::new(),
            listeners: HashMap::new(),
            boot: BootId::current().ok(),
            ticks_per_second: KernelUnits::current().ticks_per_second,
            wall_offset: wall.saturating_sub(monotonic_now()),
            counters,
        }
    }

    /// Remembers who holds the listener on `port` in `netns` (from a
    /// snapshot): inbound connections to it are given to that process.
    pub fn note_listener(&mut self, netns: u64, port: u16, holder: Holder) {
        if self.listeners.len() < MAX_TRACKED {
            self.listeners.entry((netns, port)).or_insert(holder);
        }
    }

    /// How many sockets are followed now.
    pub fn tracked(&self) -> usize {
        self.live.len()
    }

    fn holder(&self, t: &TaskRecord) -> Holder {
        let ticks = t.start_ticks(self.ticks_per_second);
        Holder {
            pid: t.tgid,
            key: self.boot.map(|b| ProcessKey::new(b, t.tgid, ticks)),
        }
    }

    fn track(&mut self, cookie: u64, live: Live) {
        if self.live.len() >= MAX_TRACKED && !self.live.contains_key(&cookie) {
            self.counters.untracked.inc();
            return;
        }
        self.live.insert(cookie, live);
    }

    /// The event `r` makes, if any (see the [module docs](self)).
    pub fn on_record(&mut self, r: &StateRecord) -> Option<NetworkEvent> {
        use ConnectionState as S;
        let actor = r.task.as_ref().map(|t| self.holder(t));
        let known_port = |a: SocketAddr| (a.port() != 0).then_some(a);
        match (r.old_state, r.new_state) {
            (_, Some(S::Listen)) => {
                let local = known_port(r.local);
                if let (Some(owner), Some(local)) = (actor, local) {
                    if self.listeners.len() < MAX_TRACKED {
                        self.listeners.insert((r.netns, local.port()), owner);
                    }
                }
                self.track(
                    r.cookie,
                    Live {
                        owner: actor,
                        direction: Some(ConnectionDirection::Listen),
                        local,
                        remote: None,
                        inode: nonzero(r.inode),
                    },
                );
                Some(self.event(r, ConnectionChange::Opened, S::Listen, r.cookie))
            }
            (_, Some(S::SynSent)) => {
                self.track(
                    r.cookie,
                    Live {
                        owner: actor,
                        direction: Some(ConnectionDirection::Outbound),
                        local: None,
                        remote: known_port(r.remote),
                        inode: nonzero(r.inode),
                    },
                );
                None
            }
            (Some(S::SynSent), Some(S::Established)) => {
                if let Some(live) = self.live.get_mut(&r.cookie) {
                    live.local = known_port(r.local);
                    live.remote = known_port(r.remote);
                    live.owner = live.owner.or(actor);
                } else {
                    self.track(
                        r.cookie,
                        Live {
                            owner: actor,
                            direction: Some(ConnectionDirection::Outbound),
                            local: known_port(r.local),
                            remote: known_port(r.remote),
                            inode: nonzero(r.inode),
                        },
                    );
                }
                Some(self.event(r, ConnectionChange::Opened, S::Established, r.cookie))
            }
            (Some(S::SynRecv), Some(S::Established)) => {
                let owner = actor.or_else(|| {
                    self.listeners
                        .get(&(r.netns, r.local.port()))
                        .copied()
                        .or_else(|| self.listeners.get(&(0, r.local.port())).copied())
                });
                self.track(
                    r.cookie,
                    Live {
                        owner,
                        direction: Some(ConnectionDirection::Inbound),
                        local: known_port(r.local),
                        remote: known_port(r.remote),
                        inode: nonzero(r.inode),
                    },
                );
                Some(self.event(r, ConnectionChange::Opened, S::Established, r.cookie))
            }
            (old, Some(S::Close)) => {
                let event = self.event(
                    r,
                    ConnectionChange::Closed,
                    old.unwrap_or(S::Close),
                    r.cookie,
                );
                if let Some(live) = self.live.remove(&r.cookie) {
                    if live.direction == Some(ConnectionDirection::Listen) {
                        if let Some(local) = live.local {
                            let key = (r.netns, local.port());
                            if self.listeners.get(&key).copied() == live.owner {
                                self.listeners.remove(&key);
                            }
                        }
                    }
                }
                Some(event)
            }
            _ => {
                // A process acting on a socket whose owner was not known
                // (an accepted one whose listener was not) names it.
                if let (Some(live), Some(actor)) = (self.live.get_mut(&r.cookie), actor) {
                    live.owner = live.owner.or(Some(actor));
                }
                None
            }
        }
    }

    fn event(
        &self,
        r: &StateRecord,
        change: ConnectionChange,
        state: ConnectionState,
        cookie: u64,
    ) -> NetworkEvent {
        let live = self.live.get(&cookie);
        let actor = r.task.as_ref().map(|t| self.holder(t));
        let owner = live.and_then(|l| l.owner).or(actor);
        let local = live
            .and_then(|l| l.local)
            .or_else(|| (r.local.port() != 0).then_some(r.local));
        let direction = live
            .and_then(|l| l.direction)
            .or((state == ConnectionState::Listen).then_some(ConnectionDirection::Listen));
        let remote = if direction == Some(ConnectionDirection::Listen) {
            None
        } else {
            live.and_then(|l| l.remote)
                .or_else(|| (r.remote.port() != 0).then_some(r.remote))
        };
        NetworkEvent {
            connection_id: cookie,
            source_addr: local.map(|a| a.ip()).or(Some(r.local.ip())),
            source_port: local.map(|a| a.port()),
            dest_addr: remote.map(|a| a.ip()),
            dest_port: remote.map(|a| a.port()),
            protocol: NetworkProtocol::Tcp,
            family: Some(r.family),
            state: Some(state),
            direction,
            change: Some(change),
            pid: owner.map(|o| o.pid),
            process_key: owner.and_then(|o| o.key),
            fd: None,
            holders: None,
            uid: Some(r.socket_uid),
            inode: live.and_then(|l| l.inode).or(nonzero(r.inode)),
            netns: nonzero(r.netns),
            bytes_sent: None,
            bytes_received: None,
            tier: Some(CaptureTier::Ebpf),
            timestamp: SystemTime::UNIX_EPOCH
                + self.wall_offset
                + Duration::from_nanos(r.timestamp_ns),
            id: None,
        }
    }
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ebpf::decode::{decode, Encoder};

    /// A record of socket `cookie`.
    fn record(cookie: u64, old: u8, new: u8, ends: (&str, &str), tgid: Option<u32>) -> StateRecord {
        let (local, remote) = (ends.0.parse().unwrap(), ends.1.parse().unwrap());
        decode(
            &Encoder::tcp(old, new, local, remote, tgid)
                .cookie(cookie)
                .bytes,
        )
        .unwrap()
    }

    // The kernel's numbers (include/net/tcp_states.h).
    const ESTABLISHED: u8 = 1;
    const SYN_SENT: u8 = 2;
    const SYN_RECV: u8 = 3;
    const FIN_WAIT1: u8 = 4;
    const CLOSE: u8 = 7;
    const LISTEN: u8 = 10;

    #[test]
    fn an_outbound_connection_is_opened_by_its_connecting_process_and_closed_once() {
        let mut t = Tracker::new(TrackerCounters::default());
        // connect(): the port is not picked yet.
        let syn = record(
            1,
            CLOSE,
            SYN_SENT,
            ("127.0.0.1:0", "127.0.0.1:80"),
            Some(77),
        );
        assert!(t.on_record(&syn).is_none());
        // The handshake ends in softirq: no task, the connecting one kept.
        let est = record(
            1,
            SYN_SENT,
            ESTABLISHED,
            ("127.0.0.1:5000", "127.0.0.1:80"),
            None,
        );
        let opened = t.on_record(&est).unwrap();
        assert_eq!(opened.change, Some(ConnectionChange::Opened));
        assert_eq!(opened.direction, Some(ConnectionDirection::Outbound));
        assert_eq!(
            (opened.pid, opened.source_port, opened.dest_port),
            (Some(77), Some(5000), Some(80))
        );
        assert_eq!(opened.process_key.map(|k| k.pid), t.boot.map(|_| 77));
        assert_eq!(opened.tier, Some(CaptureTier::Ebpf));
        assert!(collector_core::CollectionEvent::Network(opened.clone())
            .validate()
            .is_ok());
        assert!(t
            .on_record(&record(
                1,
                ESTABLISHED,
                FIN_WAIT1,
                ("127.0.0.1:5000", "127.0.0.1:80"),
                Some(77)
            ))
            .is_none());
        // The close, by a timer: the port is gone from the record, not from us.
        let closed = t
            .on_record(&record(1, 5, CLOSE, ("127.0.0.1:0", "127.0.0.1:80"), None))
            .unwrap();
        assert_eq!(closed.change, Some(ConnectionChange::Closed));
        assert_eq!((closed.pid, closed.source_port), (Some(77), Some(5000)));
        assert_eq!(closed.connection_id, opened.connection_id);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn an_accepted_connection_is_given_to_its_listeners_holder() {
        let mut t = Tracker::new(TrackerCounters::default());
        let listen = t
            .on_record(&record(
                10,
                CLOSE,
                LISTEN,
                ("0.0.0.0:8080", "0.0.0.0:0"),
                Some(9),
            ))
            .unwrap();
        assert_eq!(listen.direction, Some(ConnectionDirection::Listen));
        assert_eq!((listen.pid, listen.dest_port), (Some(9), None));
        assert!(t
            .on_record(&record(
                11,
                LISTEN,
                SYN_RECV,
                ("127.0.0.1:8080", "127.0.0.1:6000"),
                None
            ))
            .is_none());
        let inbound = t
            .on_record(&record(
                11,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:8080", "127.0.0.1:6000"),
                None,
            ))
            .unwrap();
        assert_eq!(inbound.direction, Some(ConnectionDirection::Inbound));
        assert_eq!(inbound.pid, Some(9));
        // A failed connect is one event: closed, from syn_sent.
        assert!(t
            .on_record(&record(
                12,
                CLOSE,
                SYN_SENT,
                ("127.0.0.1:0", "127.0.0.1:1"),
                Some(5)
            ))
            .is_none());
        let refused = t
            .on_record(&record(
                12,
                SYN_SENT,
                CLOSE,
                ("127.0.0.1:0", "127.0.0.1:1"),
                None,
            ))
            .unwrap();
        assert_eq!(refused.state, Some(ConnectionState::SynSent));
        assert_eq!(refused.pid, Some(5));
    }

    #[test]
    fn without_a_known_listener_an_accepted_connection_has_no_pid_not_a_guess() {
        let mut t = Tracker::new(TrackerCounters::default());
        let inbound = t
            .on_record(&record(
                20,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:22", "127.0.0.1:6000"),
                None,
            ))
            .unwrap();
        assert_eq!(inbound.pid, None);
        t.note_listener(4_026_531_840, 22, Holder { pid: 3, key: None });
        let inbound = t
            .on_record(&record(
                21,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:22", "127.0.0.1:6001"),
                None,
            ))
            .unwrap();
        assert_eq!(inbound.pid, Some(3));
    }
}
