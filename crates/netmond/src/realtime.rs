//! The eBPF tier's records as [`NetworkEvent`]s: [`Tracker`] follows each
//! TCP socket from its first state change to its close and says, of each
//! connection, what a reader of connections wants to know once:
//!
//! | kernel transition | event |
//! |---|---|
//! | `CLOSE -> LISTEN` (`listen()`) | `opened`, `listen`, the listening process |
//! | `SYN_SENT -> ESTABLISHED` | `opened`, `outbound`, the process that called `connect()` (seen at `CLOSE -> SYN_SENT`) |
//! | `SYN_RECV -> ESTABLISHED`, then its accept record | `opened`, `inbound`, the process that accepted it |
//! | `* -> CLOSE` | `closed`, with the state it left (`syn_sent`: a connect that failed) and the owner named at open |
//!
//! The other transitions (`FIN_WAIT1`, `CLOSE_WAIT`, ...) only update what
//! is known of the socket. Every event is [`CaptureTier::Ebpf`] and its
//! `connection_id` is the socket cookie, the one `sock_diag` reports, so the
//! snapshot tier's events of the same socket carry the same id.
//!
//! # Who owns it
//! A state changed by a process acting on the socket (the record's task)
//! names that process. An accepted connection completes its handshake in
//! softirq, before any process holds it: its `opened` event is held until
//! the accept record ([`RecordKind::Accepted`], sent at the exit of
//! `accept()`/`accept4()` in the accepting process) names the acceptor,
//! pid and process key. When no accept comes, the event goes out named for
//! the holder of its listener (the process that called `listen()`, or for
//! listeners older than netmond the lowest pid holding it in the first
//! snapshot, [`Tracker::note_listener`]), counted
//! (`daemoneye_connections_unaccepted_total`): a connection closed before
//! any accept (at its close), one not accepted within [`ACCEPT_WAIT`] (then;
//! a later accept names the owner of its `closed` event), one whose accept
//! record the kernel dropped, one accepted by `io_uring` (no syscall
//! returns its descriptor), and every one when the tier has no accept hook
//! ([`crate::ebpf::AcceptHook::Off`]: then at once). When no listener's
//! holder is known either, the event has no pid rather than a guess.
//!
//! What is tracked is bounded ([`MAX_TRACKED`]): past it, a socket's events
//! still go out with what their records say, and the overflow is counted
//! (`daemoneye_connections_untracked_total`). A socket whose close the
//! kernel dropped (ring buffer full, counted) is forgotten when a snapshot
//! that began after its last record no longer sees it, in a network
//! namespace the snapshot read ([`Tracker::prune`], counted
//! `daemoneye_connections_pruned_total`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use collector_core::metrics::Counter;
use collector_core::procfs::KernelUnits;
use collector_core::{
    BootId, CaptureTier, ConnectionChange, ConnectionDirection, ConnectionState, NetworkEvent,
    NetworkProtocol, ProcessKey,
};

use crate::ebpf::{RecordKind, StateRecord, TaskRecord};

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
    netns: Option<u64>,
    /// The inbound `opened` event, held until the accept names its process
    /// (with when it was made, `CLOCK_MONOTONIC` ns).
    awaiting_accept: Option<(u64, NetworkEvent)>,
    /// The owner is the process that accepted the socket.
    accepted: bool,
    /// `CLOCK_MONOTONIC` ns of its last record.
    last_ns: u64,
}

impl Live {
    fn new(owner: Option<Holder>, direction: ConnectionDirection, r: &StateRecord) -> Self {
        Self {
            owner,
            direction: Some(direction),
            local: None,
            remote: None,
            inode: nonzero(r.inode),
            netns: nonzero(r.netns),
            awaiting_accept: None,
            accepted: false,
            last_ns: r.timestamp_ns,
        }
    }

    fn ends(mut self, local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Self {
        self.local = local;
        self.remote = remote;
        self
    }
}

/// What the tracker counts.
#[derive(Debug, Clone, Default)]
pub struct TrackerCounters {
    /// Sockets not followed because [`MAX_TRACKED`] were already.
    pub untracked: Counter,
    /// Inbound connections reported without their acceptor: closed before
    /// any `accept()`, or not accepted within [`ACCEPT_WAIT`] (or their
    /// accept record dropped), so named for their listener's holder.
    pub unaccepted: Counter,
    /// Followed sockets a snapshot no longer saw, forgotten (their close
    /// record was dropped, or came before the tier could follow them).
    pub pruned: Counter,
}

/// How long an inbound connection's `opened` event waits for the process
/// that accepts it; past that it goes out named for its listener's holder.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// What a snapshot saw of TCP, for [`Tracker::prune`].
#[derive(Debug, Clone, Default)]
pub struct SeenSockets {
    /// `CLOCK_MONOTONIC` ns when the snapshot began: sockets with a record
    /// after it may be newer than the snapshot and are kept.
    pub taken_ns: u64,
    /// The network namespaces it read (sockets of others are kept).
    pub netns: std::collections::HashSet<u64>,
    /// The cookies of the TCP sockets it saw.
    pub cookies: std::collections::HashSet<u64>,
}

/// Follows sockets from their records: see the [module docs](self).
#[derive(Debug)]
pub struct Tracker {
    live: HashMap<u64, Live>,
    /// Holders of listeners by (netns, port).
    listeners: HashMap<(u64, u16), Holder>,
    /// Inbound connections awaiting their accept, oldest first: (made at,
    /// cookie).
    awaiting: VecDeque<(u64, u64)>,
    /// Whether accept records come (the tier has an accept hook): if not,
    /// inbound connections go out at once, named for their listener's
    /// holder.
    accepts_reported: bool,
    boot: Option<BootId>,
    ticks_per_second: u64,
    /// Wall-clock time minus `CLOCK_MONOTONIC`, to date the records.
    wall_offset: Duration,
    counters: TrackerCounters,
}

/// `CLOCK_MONOTONIC` now.
pub fn monotonic_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tracker {
    /// A tracker keying processes on this boot, told whether accept records
    /// come (`accepts_reported`: the tier attached an accept hook).
    pub fn new(counters: TrackerCounters, accepts_reported: bool) -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            live: HashMap::new(),
            listeners: HashMap::new(),
            awaiting: VecDeque::new(),
            accepts_reported,
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

    /// Follows `cookie`; whether it is (false: the table is full, counted).
    fn track(&mut self, cookie: u64, live: Live) -> bool {
        if self.live.len() >= MAX_TRACKED && !self.live.contains_key(&cookie) {
            self.counters.untracked.inc();
            return false;
        }
        self.live.insert(cookie, live);
        true
    }

    /// The events `r` makes, if any, into `out` (see the
    /// [module docs](self)).
    pub fn on_record(&mut self, r: &StateRecord, out: &mut Vec<NetworkEvent>) {
        use ConnectionState as S;
        if r.kind == RecordKind::Accepted {
            self.on_accepted(r, out);
            return;
        }
        let actor = r.task.as_ref().map(|t| self.holder(t));
        if let Some(live) = self.live.get_mut(&r.cookie) {
            live.last_ns = r.timestamp_ns;
        }
        match (r.old_state, r.new_state) {
            (_, Some(S::Listen)) => {
                let local = known_port(r.local);
                if let (Some(owner), Some(local)) = (actor, local) {
                    if self.listeners.len() < MAX_TRACKED {
                        self.listeners.insert((r.netns, local.port()), owner);
                    }
                }
                let live = Live::new(actor, ConnectionDirection::Listen, r).ends(local, None);
                self.track(r.cookie, live);
                out.push(self.event(r, ConnectionChange::Opened, S::Listen));
            }
            (_, Some(S::SynSent)) => {
                let live = Live::new(actor, ConnectionDirection::Outbound, r)
                    .ends(None, known_port(r.remote));
                self.track(r.cookie, live);
            }
            (Some(S::SynSent), Some(S::Established)) => {
                if let Some(live) = self.live.get_mut(&r.cookie) {
                    live.local = known_port(r.local);
                    live.remote = known_port(r.remote);
                    live.owner = live.owner.or(actor);
                } else {
                    let live = Live::new(actor, ConnectionDirection::Outbound, r)
                        .ends(known_port(r.local), known_port(r.remote));
                    self.track(r.cookie, live);
                }
                out.push(self.event(r, ConnectionChange::Opened, S::Established));
            }
            (Some(S::SynRecv), Some(S::Established)) => self.on_inbound(r, actor, out),
            (old, Some(S::Close)) => self.on_close(r, old.unwrap_or(S::Close), out),
            _ => {
                // A process acting on a socket whose owner was not known
                // (an accepted one whose listener was not) names it.
                if let (Some(live), Some(actor)) = (self.live.get_mut(&r.cookie), actor) {
                    live.owner = live.owner.or(Some(actor));
                }
            }
        }
    }

    /// The holder of the listener `r`'s connection came in on.
    fn listener_of(&self, r: &StateRecord) -> Option<Holder> {
        self.listeners
            .get(&(r.netns, r.local.port()))
            .or_else(|| self.listeners.get(&(0, r.local.port())))
            .copied()
    }

    /// `SYN_RECV -> ESTABLISHED`: an inbound connection, its `opened` event
    /// held for its acceptor unless the acceptor is known already (it took
    /// the socket first: a fast open, or the handshake finished under its
    /// lock) or no accept record will come.
    fn on_inbound(&mut self, r: &StateRecord, actor: Option<Holder>, out: &mut Vec<NetworkEvent>) {
        let (local, remote) = (known_port(r.local), known_port(r.remote));
        if let Some(live) = self.live.get_mut(&r.cookie).filter(|l| l.accepted) {
            live.local = local.or(live.local);
            live.remote = remote.or(live.remote);
            out.push(self.event(r, ConnectionChange::Opened, ConnectionState::Established));
            return;
        }
        let owner = actor.or_else(|| self.listener_of(r));
        let live = Live::new(owner, ConnectionDirection::Inbound, r).ends(local, remote);
        let tracked = self.track(r.cookie, live);
        let event = self.event(r, ConnectionChange::Opened, ConnectionState::Established);
        if !tracked || actor.is_some() || !self.accepts_reported {
            out.push(event);
            return;
        }
        if let Some(live) = self.live.get_mut(&r.cookie) {
            live.awaiting_accept = Some((r.timestamp_ns, event));
            self.awaiting.push_back((r.timestamp_ns, r.cookie));
        }
    }

    /// An accept record: the acceptor owns the socket from now on, and the
    /// held `opened` event goes out with it.
    fn on_accepted(&mut self, r: &StateRecord, out: &mut Vec<NetworkEvent>) {
        let Some(acceptor) = r.task.as_ref().map(|t| self.holder(t)) else {
            return;
        };
        // 0: a connection made before the tier was loaded (nothing made
        // its cookie); the snapshot names its holders.
        if r.cookie == 0 {
            return;
        }
        if let Some(live) = self.live.get_mut(&r.cookie) {
            live.owner = Some(acceptor);
            live.accepted = true;
            live.inode = live.inode.or(nonzero(r.inode));
            live.last_ns = r.timestamp_ns;
            if let Some((_, mut event)) = live.awaiting_accept.take() {
                event.pid = Some(acceptor.pid);
                event.process_key = acceptor.key;
                event.inode = live.inode;
                out.push(event);
            }
            return;
        }
        // Accepted before its handshake's end was seen (a fast open): the
        // `opened` event comes with it.
        let mut live = Live::new(Some(acceptor), ConnectionDirection::Inbound, r)
            .ends(known_port(r.local), known_port(r.remote));
        live.accepted = true;
        self.track(r.cookie, live);
    }

    /// `* -> CLOSE`: the `closed` event (after the held `opened` one of a
    /// connection closed before any accept).
    fn on_close(&mut self, r: &StateRecord, old: ConnectionState, out: &mut Vec<NetworkEvent>) {
        if let Some((_, opened)) = self
            .live
            .get_mut(&r.cookie)
            .and_then(|l| l.awaiting_accept.take())
        {
            self.counters.unaccepted.inc();
            out.push(opened);
        }
        out.push(self.event(r, ConnectionChange::Closed, old));
        self.forget(r.cookie, r.netns);
    }

    /// Stops following `cookie` (a listener's holder too).
    fn forget(&mut self, cookie: u64, netns: u64) {
        if let Some(live) = self.live.remove(&cookie) {
            if live.direction == Some(ConnectionDirection::Listen) {
                if let Some(local) = live.local {
                    let key = (netns, local.port());
                    if self.listeners.get(&key).copied() == live.owner {
                        self.listeners.remove(&key);
                    }
                }
            }
        }
    }

    /// The held `opened` events older than [`ACCEPT_WAIT`] at `now_ns`
    /// (`CLOCK_MONOTONIC`), into `out`, named for their listener's holder.
    pub fn flush_unaccepted(&mut self, now_ns: u64, out: &mut Vec<NetworkEvent>) {
        let wait = nanos(ACCEPT_WAIT);
        while let Some(&(since, cookie)) = self.awaiting.front() {
            if since.saturating_add(wait) > now_ns {
                break;
            }
            self.awaiting.pop_front();
            let held = self.live.get_mut(&cookie).and_then(|l| {
                let is_this = l.awaiting_accept.as_ref().is_some_and(|(s, _)| *s == since);
                if is_this {
                    l.awaiting_accept.take()
                } else {
                    None
                }
            });
            if let Some((_, event)) = held {
                self.counters.unaccepted.inc();
                out.push(event);
            }
        }
    }

    /// Forgets the followed sockets `seen` should have seen and did not:
    /// in a namespace it read, with no record since it began. Their close
    /// was lost (a full ring buffer, counted there); how many is counted
    /// (`pruned`). A held `opened` event goes out first, so nothing is
    /// left half-told.
    pub fn prune(&mut self, seen: &SeenSockets, out: &mut Vec<NetworkEvent>) {
        let gone: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter(|(cookie, l)| l.last_ns < seen.taken_ns && !seen.cookies.contains(cookie))
            .filter_map(|(cookie, l)| {
                l.netns
                    .filter(|n| seen.netns.contains(n))
                    .map(|n| (*cookie, n))
            })
            .collect();
        for (cookie, netns) in gone {
            if let Some((_, opened)) = self
                .live
                .get_mut(&cookie)
                .and_then(|l| l.awaiting_accept.take())
            {
                self.counters.unaccepted.inc();
                out.push(opened);
            }
            self.counters.pruned.inc();
            self.forget(cookie, netns);
        }
    }

    fn event(
        &self,
        r: &StateRecord,
        change: ConnectionChange,
        state: ConnectionState,
    ) -> NetworkEvent {
        let cookie = r.cookie;
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

/// `a`, unless its port is not known yet (0).
fn known_port(a: SocketAddr) -> Option<SocketAddr> {
    (a.port() != 0).then_some(a)
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

    /// The one event `r` makes, if any.
    fn one(t: &mut Tracker, r: &StateRecord) -> Option<NetworkEvent> {
        let mut out = Vec::new();
        t.on_record(r, &mut out);
        assert!(out.len() <= 1, "{out:?}");
        out.pop()
    }

    /// Every event `r` makes.
    fn all(t: &mut Tracker, r: &StateRecord) -> Vec<NetworkEvent> {
        let mut out = Vec::new();
        t.on_record(r, &mut out);
        out
    }

    fn accepted(cookie: u64, ends: (&str, &str), tgid: u32) -> StateRecord {
        let (local, remote) = (ends.0.parse().unwrap(), ends.1.parse().unwrap());
        decode(&Encoder::accepted(local, remote, tgid).cookie(cookie).bytes).unwrap()
    }

    /// A tracker that awaits accept records, with a listener of pid 9 on
    /// 8080.
    fn listening() -> Tracker {
        let mut t = Tracker::new(TrackerCounters::default(), true);
        one(
            &mut t,
            &record(10, CLOSE, LISTEN, ("0.0.0.0:8080", "0.0.0.0:0"), Some(9)),
        )
        .unwrap();
        t
    }

    const INBOUND: (&str, &str) = ("127.0.0.1:8080", "127.0.0.1:6000");

    // The kernel's numbers (include/net/tcp_states.h).
    const ESTABLISHED: u8 = 1;
    const SYN_SENT: u8 = 2;
    const SYN_RECV: u8 = 3;
    const FIN_WAIT1: u8 = 4;
    const CLOSE: u8 = 7;
    const LISTEN: u8 = 10;

    #[test]
    fn an_outbound_connection_is_opened_by_its_connecting_process_and_closed_once() {
        let mut t = Tracker::new(TrackerCounters::default(), false);
        // connect(): the port is not picked yet.
        let syn = record(
            1,
            CLOSE,
            SYN_SENT,
            ("127.0.0.1:0", "127.0.0.1:80"),
            Some(77),
        );
        assert!(one(&mut t, &syn).is_none());
        // The handshake ends in softirq: no task, the connecting one kept.
        let est = record(
            1,
            SYN_SENT,
            ESTABLISHED,
            ("127.0.0.1:5000", "127.0.0.1:80"),
            None,
        );
        let opened = one(&mut t, &est).unwrap();
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
        assert!(one(
            &mut t,
            &record(
                1,
                ESTABLISHED,
                FIN_WAIT1,
                ("127.0.0.1:5000", "127.0.0.1:80"),
                Some(77)
            )
        )
        .is_none());
        // The close, by a timer: the port is gone from the record, not from us.
        let closed = one(
            &mut t,
            &record(1, 5, CLOSE, ("127.0.0.1:0", "127.0.0.1:80"), None),
        )
        .unwrap();
        assert_eq!(closed.change, Some(ConnectionChange::Closed));
        assert_eq!((closed.pid, closed.source_port), (Some(77), Some(5000)));
        assert_eq!(closed.connection_id, opened.connection_id);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn an_accepted_connection_is_given_to_its_listeners_holder() {
        let mut t = Tracker::new(TrackerCounters::default(), false);
        let listen = one(
            &mut t,
            &record(10, CLOSE, LISTEN, ("0.0.0.0:8080", "0.0.0.0:0"), Some(9)),
        )
        .unwrap();
        assert_eq!(listen.direction, Some(ConnectionDirection::Listen));
        assert_eq!((listen.pid, listen.dest_port), (Some(9), None));
        assert!(one(
            &mut t,
            &record(
                11,
                LISTEN,
                SYN_RECV,
                ("127.0.0.1:8080", "127.0.0.1:6000"),
                None
            )
        )
        .is_none());
        let inbound = one(
            &mut t,
            &record(
                11,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:8080", "127.0.0.1:6000"),
                None,
            ),
        )
        .unwrap();
        assert_eq!(inbound.direction, Some(ConnectionDirection::Inbound));
        assert_eq!(inbound.pid, Some(9));
        // A failed connect is one event: closed, from syn_sent.
        assert!(one(
            &mut t,
            &record(12, CLOSE, SYN_SENT, ("127.0.0.1:0", "127.0.0.1:1"), Some(5))
        )
        .is_none());
        let refused = one(
            &mut t,
            &record(12, SYN_SENT, CLOSE, ("127.0.0.1:0", "127.0.0.1:1"), None),
        )
        .unwrap();
        assert_eq!(refused.state, Some(ConnectionState::SynSent));
        assert_eq!(refused.pid, Some(5));
    }

    #[test]
    fn without_a_known_listener_an_accepted_connection_has_no_pid_not_a_guess() {
        let mut t = Tracker::new(TrackerCounters::default(), false);
        let inbound = one(
            &mut t,
            &record(
                20,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:22", "127.0.0.1:6000"),
                None,
            ),
        )
        .unwrap();
        assert_eq!(inbound.pid, None);
        t.note_listener(4_026_531_840, 22, Holder { pid: 3, key: None });
        let inbound = one(
            &mut t,
            &record(
                21,
                SYN_RECV,
                ESTABLISHED,
                ("127.0.0.1:22", "127.0.0.1:6001"),
                None,
            ),
        )
        .unwrap();
        assert_eq!(inbound.pid, Some(3));
    }

    #[test]
    fn an_inbound_connection_is_named_for_the_process_that_accepted_it() {
        let mut t = listening();
        // The handshake ends in softirq: the event waits for the accept.
        assert!(one(&mut t, &record(11, SYN_RECV, ESTABLISHED, INBOUND, None)).is_none());
        let inbound = one(&mut t, &accepted(11, INBOUND, 12)).unwrap();
        assert_eq!(inbound.change, Some(ConnectionChange::Opened));
        assert_eq!(inbound.direction, Some(ConnectionDirection::Inbound));
        assert_eq!(inbound.pid, Some(12), "the acceptor, not the listener (9)");
        assert_eq!(inbound.process_key.map(|k| k.pid), t.boot.map(|_| 12));
        assert_eq!(inbound.inode, Some(99), "the accepted socket's inode");
        assert_eq!(
            (inbound.source_port, inbound.dest_port),
            (Some(8080), Some(6000))
        );
        // Its close (a peer's FIN, in softirq) still names the acceptor.
        let closed = one(&mut t, &record(11, 9, CLOSE, INBOUND, None)).unwrap();
        assert_eq!(
            (closed.change, closed.pid),
            (Some(ConnectionChange::Closed), Some(12))
        );
        assert_eq!(t.counters.unaccepted.get(), 0);
    }

    #[test]
    fn a_connection_closed_before_its_accept_keeps_the_listeners_holder_counted() {
        let mut t = listening();
        assert!(one(&mut t, &record(11, SYN_RECV, ESTABLISHED, INBOUND, None)).is_none());
        let events = all(&mut t, &record(11, ESTABLISHED, CLOSE, INBOUND, None));
        let changes: Vec<_> = events.iter().map(|e| (e.change, e.pid)).collect();
        assert_eq!(
            changes,
            [
                (Some(ConnectionChange::Opened), Some(9)),
                (Some(ConnectionChange::Closed), Some(9))
            ]
        );
        assert_eq!(t.counters.unaccepted.get(), 1);
        assert_eq!(t.tracked(), 1, "only the listener");
    }

    #[test]
    fn a_connection_not_accepted_in_time_goes_out_named_for_its_listener() {
        let mut t = listening();
        let est = record(11, SYN_RECV, ESTABLISHED, INBOUND, None);
        assert!(one(&mut t, &est).is_none());
        let wait = nanos(ACCEPT_WAIT);
        let mut out = Vec::new();
        t.flush_unaccepted(est.timestamp_ns + wait - 1, &mut out);
        assert!(out.is_empty(), "not yet: {out:?}");
        t.flush_unaccepted(est.timestamp_ns + wait, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].change, out[0].pid),
            (Some(ConnectionChange::Opened), Some(9))
        );
        assert_eq!(t.counters.unaccepted.get(), 1);
        // A late accept names the owner of what follows, with no second
        // `opened`.
        assert!(one(&mut t, &accepted(11, INBOUND, 12)).is_none());
        let closed = one(&mut t, &record(11, 9, CLOSE, INBOUND, None)).unwrap();
        assert_eq!(closed.pid, Some(12));
    }

    #[test]
    fn an_accept_before_the_handshakes_end_names_the_acceptor_at_once() {
        // A fast open: accept() takes the socket in SYN_RECV.
        let mut t = listening();
        assert!(one(&mut t, &accepted(11, INBOUND, 12)).is_none());
        let inbound = one(&mut t, &record(11, SYN_RECV, ESTABLISHED, INBOUND, None)).unwrap();
        assert_eq!(
            (inbound.change, inbound.pid),
            (Some(ConnectionChange::Opened), Some(12))
        );
        // An accept of a connection older than the tier (no cookie yet) is
        // left to the snapshot.
        assert!(one(&mut t, &accepted(0, INBOUND, 12)).is_none());
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn without_accept_records_an_inbound_connection_goes_out_at_once() {
        let mut t = Tracker::new(TrackerCounters::default(), false);
        t.note_listener(4_026_531_840, 8080, Holder { pid: 9, key: None });
        let inbound = one(&mut t, &record(11, SYN_RECV, ESTABLISHED, INBOUND, None)).unwrap();
        assert_eq!(inbound.pid, Some(9));
    }

    #[test]
    fn sockets_a_snapshot_no_longer_sees_are_pruned_and_counted() {
        let mut t = listening();
        let ns = 4_026_531_840;
        // 1: an outbound connection whose close was dropped; 2: one the
        // snapshot saw; 3: one of a namespace the snapshot could not read;
        // 4: one with a record after the snapshot began.
        for cookie in [1, 2, 3, 4] {
            let mut r = record(
                cookie,
                CLOSE,
                SYN_SENT,
                ("127.0.0.1:0", "127.0.0.1:80"),
                Some(5),
            );
            if cookie == 3 {
                r.netns = 77;
            }
            if cookie == 4 {
                r.timestamp_ns = 1_000;
            }
            assert!(one(&mut t, &r).is_none());
        }
        assert_eq!(t.tracked(), 5);
        let seen = SeenSockets {
            taken_ns: 500,
            netns: [ns].into(),
            cookies: [2, 10].into(),
        };
        let mut out = Vec::new();
        t.prune(&seen, &mut out);
        assert!(out.is_empty());
        assert_eq!(t.counters.pruned.get(), 1);
        assert_eq!(t.tracked(), 4);
        assert!(!t.live.contains_key(&1));
        // The listener itself, gone unseen, takes its holder with it.
        let seen = SeenSockets {
            taken_ns: 500,
            netns: [ns].into(),
            cookies: [2].into(),
        };
        t.prune(&seen, &mut out);
        assert_eq!(t.counters.pruned.get(), 2);
        assert!(t.listeners.is_empty());
    }
}
