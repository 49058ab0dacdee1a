//! One ring buffer record of `net.bpf.c` → a typed [`StateRecord`].
//!
//! Pure and total: any byte slice gives a record or a [`DecodeError`],
//! never a panic. The layout is `struct net_event` of
//! `crates/netmond/ebpf/net.bpf.c` (little endian, no padding); keep the two
//! in step.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use collector_core::{AddressFamily, ConnectionState};

use crate::diag::state_from_kernel;

/// `sizeof(struct net_event)`.
pub const RECORD_SIZE: usize = 120;
const F_TASK: u8 = 0x1;
const F_ACCEPTED: u8 = 0x2;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const COMM_LEN: usize = 16;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not the record's size.
    #[error("a record of {0} bytes (expected {RECORD_SIZE})")]
    Size(usize),
    /// A family other than IPv4 and IPv6.
    #[error("address family {0}")]
    Family(u16),
    /// A protocol other than TCP.
    #[error("protocol {0}")]
    Protocol(u16),
}

/// The task the kernel was running when the state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Real user id.
    pub uid: u32,
    /// The process's start (`start_boottime`, ns since boot): what `/proc`'s
    /// `starttime` is in ticks.
    pub start_ns: u64,
    /// Its short name.
    pub comm: String,
}

impl TaskRecord {
    /// The start time in clock ticks (`/proc/<pid>/stat`'s `starttime`).
    pub fn start_ticks(&self, ticks_per_sec: u64) -> u64 {
        collector_core::procfs::boot_ns_to_ticks(self.start_ns, ticks_per_sec)
    }
}

/// What a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A TCP state change (`sock:inet_sock_set_state`).
    StateChange,
    /// A process accepted the connection (the LSM hook `sock_graft`): the
    /// record's task is the acceptor, its states are none (`0 -> 0`), and
    /// its inode is the accepted socket's.
    Accepted,
}

/// One TCP state change, or an accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    /// A state change or an accept.
    pub kind: RecordKind,
    /// `CLOCK_MONOTONIC` time, in nanoseconds.
    pub timestamp_ns: u64,
    /// The kernel's `struct sock` address: one connection while it lives.
    pub skaddr: u64,
    /// The socket cookie (as `sock_diag` reports it).
    pub cookie: u64,
    /// The socket's inode (0: no file holds it yet, as an accepted
    /// connection not yet `accept`ed).
    pub inode: u64,
    /// The network namespace's inode.
    pub netns: u64,
    /// IPv4 or IPv6.
    pub family: AddressFamily,
    /// The state before (`None`: a number this build does not know).
    pub old_state: Option<ConnectionState>,
    /// The state after.
    pub new_state: Option<ConnectionState>,
    /// The kernel's numbers of the two states.
    pub raw_states: (u8, u8),
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// The socket's uid.
    pub socket_uid: u32,
    /// The task that changed the state, when it was a process acting on the
    /// socket (a syscall with the socket locked: connect, listen, close);
    /// `None` when the kernel did it for a packet or a timer (softirq),
    /// where the running task is not the socket's.
    pub task: Option<TaskRecord>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

fn address(b: &[u8], at: usize, family: AddressFamily) -> IpAddr {
    let mut v6 = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        v6.copy_from_slice(s);
    }
    if family == AddressFamily::Ipv4 {
        return IpAddr::V4(Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3]));
    }
    let v6 = Ipv6Addr::from(v6);
    // A dual-stack socket's IPv4 peer, by its IPv4 address (as sock_diag's
    // records are reported).
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Decodes one record.
///
/// # Errors
/// [`DecodeError`] for a record of the wrong size, family or protocol.
pub fn decode(b: &[u8]) -> Result<StateRecord, DecodeError> {
    if b.len() != RECORD_SIZE {
        return Err(DecodeError::Size(b.len()));
    }
    let family = match u16_at(b, 60) {
        AF_INET => AddressFamily::Ipv4,
        AF_INET6 => AddressFamily::Ipv6,
        other => return Err(DecodeError::Family(other)),
    };
    let protocol = u16_at(b, 62);
    if protocol != IPPROTO_TCP {
        return Err(DecodeError::Protocol(protocol));
    }
    let (old, new) = (b[68], b[69]);
    let flags = b[70];
    let comm = b.get(104..104 + COMM_LEN).unwrap_or_default();
    let comm = comm.split(|&c| c == 0).next().unwrap_or_default();
    let task = (flags & F_TASK != 0).then(|| TaskRecord {
        pid: u32_at(b, 44),
        tgid: u32_at(b, 48),
        uid: u32_at(b, 52),
        start_ns: u64_at(b, 24),
        comm: String::from_utf8_lossy(comm).into_owned(),
    });
    let kind = if flags & F_ACCEPTED == 0 {
        RecordKind::StateChange
    } else {
        RecordKind::Accepted
    };
    Ok(StateRecord {
        kind,
        timestamp_ns: u64_at(b, 0),
        skaddr: u64_at(b, 8),
        cookie: u64_at(b, 16),
        inode: u64_at(b, 32),
        netns: u64::from(u32_at(b, 40)),
        family,
        old_state: state_from_kernel(old),
        new_state: state_from_kernel(new),
        raw_states: (old, new),
        local: SocketAddr::new(address(b, 72, family), u16_at(b, 64)),
        remote: SocketAddr::new(address(b, 88, family), u16_at(b, 66)),
        socket_uid: u32_at(b, 56),
        task,
    })
}

/// A record's bytes, as `net.bpf.c` lays them out (tests and benches).
#[derive(Debug, Clone, Default)]
pub struct Encoder {
    /// The record.
    pub bytes: Vec<u8>,
}

impl Encoder {
    /// An IPv4 TCP record from `local` to `remote`, `old` -> `new` (kernel
    /// numbers), by task `tgid` when `Some`.
    pub fn tcp(old: u8, new: u8, local: SocketAddr, remote: SocketAddr, tgid: Option<u32>) -> Self {
        let mut b = vec![0u8; RECORD_SIZE];
        let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(&mut b, 0, &7u64.to_le_bytes());
        put(&mut b, 8, &0xffff_8880_0000_1000u64.to_le_bytes());
        put(&mut b, 16, &42u64.to_le_bytes());
        put(&mut b, 24, &2_500_000_000u64.to_le_bytes());
        put(&mut b, 32, &99u64.to_le_bytes());
        put(&mut b, 40, &4_026_531_840u32.to_le_bytes());
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        put(&mut b, 60, &family.to_le_bytes());
        put(&mut b, 62, &IPPROTO_TCP.to_le_bytes());
        put(&mut b, 64, &local.port().to_le_bytes());
        put(&mut b, 66, &remote.port().to_le_bytes());
        b[68] = old;
        b[69] = new;
        for (at, addr) in [(72, local.ip()), (88, remote.ip())] {
            match addr {
                IpAddr::V4(a) => put(&mut b, at, &a.octets()),
                IpAddr::V6(a) => put(&mut b, at, &a.octets()),
            }
        }
        if let Some(tgid) = tgid {
            b[70] = F_TASK;
            put(&mut b, 44, &tgid.to_le_bytes());
            put(&mut b, 48, &tgid.to_le_bytes());
            put(&mut b, 52, &1000u32.to_le_bytes());
            put(&mut b, 104, b"curl\0");
        }
        put(&mut b, 56, &1000u32.to_le_bytes());
        Self { bytes: b }
    }

    /// The record of `tgid` accepting the connection from `remote` to
    /// `local` (the `sock_graft` hook's).
    pub fn accepted(local: SocketAddr, remote: SocketAddr, tgid: u32) -> Self {
        let mut e = Self::tcp(0, 0, local, remote, Some(tgid));
        e.bytes[70] = F_TASK | F_ACCEPTED;
        e
    }

    /// The same with socket cookie `cookie`.
    #[must_use]
    pub fn cookie(mut self, cookie: u64) -> Self {
        if let Some(at) = self.bytes.get_mut(16..24) {
            at.copy_from_slice(&cookie.to_le_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_connect_decodes_with_its_task_and_addresses() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let r = decode(&Encoder::tcp(7, 2, local, remote, Some(1234)).bytes).unwrap();
        assert_eq!(r.old_state, Some(ConnectionState::Close));
        assert_eq!(r.new_state, Some(ConnectionState::SynSent));
        assert_eq!((r.local, r.remote), (local, remote));
        assert_eq!((r.cookie, r.inode, r.netns), (42, 99, 4_026_531_840));
        let t = r.task.unwrap();
        assert_eq!(
            (t.pid, t.tgid, t.uid, t.comm.as_str()),
            (1234, 1234, 1000, "curl")
        );
        assert_eq!(t.start_ticks(100), 250);
        assert_eq!(r.family, AddressFamily::Ipv4);
        assert_eq!(r.kind, RecordKind::StateChange);
    }

    #[test]
    fn an_accept_decodes_as_accepted_with_its_acceptor_and_no_state() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r = decode(&Encoder::accepted(local, remote, 4321).bytes).unwrap();
        assert_eq!(r.kind, RecordKind::Accepted);
        assert_eq!(
            (r.old_state, r.new_state, r.raw_states),
            (None, None, (0, 0))
        );
        assert_eq!(r.task.map(|t| t.tgid), Some(4321));
        assert_eq!((r.local, r.remote), (local, remote));
    }

    #[test]
    fn softirq_records_carry_no_task_and_ipv6_maps_back_to_ipv4() {
        let local: SocketAddr = "[::ffff:10.0.0.1]:22".parse().unwrap();
        let remote: SocketAddr = "[2001:db8::1]:50000".parse().unwrap();
        let r = decode(&Encoder::tcp(3, 1, local, remote, None).bytes).unwrap();
        assert!(r.task.is_none());
        assert_eq!(r.family, AddressFamily::Ipv6);
        assert_eq!(r.local, "10.0.0.1:22".parse().unwrap());
        assert_eq!(r.remote, remote);
        assert_eq!(r.new_state, Some(ConnectionState::Established));
    }

    #[test]
    fn wrong_sizes_families_and_protocols_are_refused() {
        let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let good = Encoder::tcp(7, 10, any, any, Some(1)).bytes;
        assert_eq!(decode(&good[..100]), Err(DecodeError::Size(100)));
        let mut bad = good.clone();
        bad[60] = 1;
        assert_eq!(decode(&bad), Err(DecodeError::Family(1)));
        let mut bad = good;
        bad[62] = 17;
        assert_eq!(decode(&bad), Err(DecodeError::Protocol(17)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_not_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_record_sized_bytes_decode_or_not_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), RECORD_SIZE..=RECORD_SIZE),
        ) {
            if let Ok(r) = decode(&bytes) {
                prop_assert_eq!(r.raw_states, (bytes[68], bytes[69]));
            }
        }

        #[test]
        fn encoded_records_round_trip(
            old in 1u8..=12, new in 1u8..=12,
            lport in any::<u16>(), rport in any::<u16>(),
            l in any::<[u8; 4]>(), r in any::<[u8; 4]>(),
            tgid in proptest::option::of(1u32..),
        ) {
            let local = SocketAddr::from((l, lport));
            let remote = SocketAddr::from((r, rport));
            let rec = decode(&Encoder::tcp(old, new, local, remote, tgid).bytes).unwrap();
            prop_assert_eq!((rec.local, rec.remote), (local, remote));
            prop_assert_eq!(rec.raw_states, (old, new));
            prop_assert_eq!(rec.task.map(|t| t.tgid), tgid);
        }
    }
}
