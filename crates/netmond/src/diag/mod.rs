//! Every TCP and UDP socket of this network namespace, from netlink
//! `sock_diag` (`SOCK_DIAG_BY_FAMILY` dumps, as `ss` asks for them).
//!
//! The messages are built and parsed by `netlink-packet-sock-diag`; this
//! module turns the kernel's answers into [`Socket`]s ([`parse_datagram`] is
//! pure: bytes in, sockets out, so it is unit- and property-tested anywhere),
//! and [`dump`] asks the kernel through a netlink socket.
//!
//! Unprivileged callers see every socket too (`sock_diag` hides nothing
//! of the 5-tuple, uid and inode from them); only the owners (which process
//! holds which socket, [`crate::owners`]) need to read other users' `/proc`.

mod sys;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use collector_core::{AddressFamily, ConnectionState, NetworkProtocol};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use serde::{Deserialize, Serialize};

fn protocol_number(protocol: NetworkProtocol) -> u8 {
    match protocol {
        NetworkProtocol::Udp => IPPROTO_UDP,
        _ => IPPROTO_TCP,
    }
}

fn family_number(family: AddressFamily) -> u8 {
    match family {
        AddressFamily::Ipv6 => AF_INET6,
        _ => AF_INET,
    }
}

/// The state numbered `n` by the kernel (`include/net/tcp_states.h`);
/// `None` for a number this build does not know.
pub fn state_from_kernel(n: u8) -> Option<ConnectionState> {
    Some(match n {
        1 => ConnectionState::Established,
        2 => ConnectionState::SynSent,
        // 12 is TCP_NEW_SYN_RECV: a request socket, before the accept.
        3 | 12 => ConnectionState::SynRecv,
        4 => ConnectionState::FinWait1,
        5 => ConnectionState::FinWait2,
        6 => ConnectionState::TimeWait,
        7 => ConnectionState::Close,
        8 => ConnectionState::CloseWait,
        9 => ConnectionState::LastAck,
        10 => ConnectionState::Listen,
        11 => ConnectionState::Closing,
        _ => return None,
    })
}

/// The name `ss` prints for a state (`ESTAB`, `LISTEN`, `UNCONN` for an
/// unconnected UDP socket).
pub fn state_label(state: Option<ConnectionState>, protocol: NetworkProtocol) -> &'static str {
    let Some(state) = state else {
        return "UNKNOWN";
    };
    match state {
        ConnectionState::Established => "ESTAB",
        ConnectionState::SynSent => "SYN-SENT",
        ConnectionState::SynRecv => "SYN-RECV",
        ConnectionState::FinWait1 => "FIN-WAIT-1",
        ConnectionState::FinWait2 => "FIN-WAIT-2",
        ConnectionState::TimeWait => "TIME-WAIT",
        ConnectionState::Close if protocol == NetworkProtocol::Udp => "UNCONN",
        ConnectionState::Close => "CLOSE",
        ConnectionState::CloseWait => "CLOSE-WAIT",
        ConnectionState::LastAck => "LAST-ACK",
        ConnectionState::Listen => "LISTEN",
        ConnectionState::Closing => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// One socket the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Socket {
    /// TCP or UDP.
    pub protocol: NetworkProtocol,
    /// IPv4 or IPv6.
    pub family: AddressFamily,
    /// The kernel's state (`None`: a number this build does not know).
    pub state: Option<ConnectionState>,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified for listeners and unconnected
    /// UDP sockets).
    pub remote: SocketAddr,
    /// The uid that created the socket.
    pub uid: u32,
    /// The socket's inode (what `/proc/<pid>/fd/N` names as `socket:[inode]`);
    /// 0 for sockets no file holds (`TIME_WAIT`, requests not yet accepted).
    pub inode: u64,
    /// The kernel's socket cookie: unique per socket for the life of the
    /// boot, so a connection's id across snapshots.
    pub cookie: u64,
    /// Bytes waiting to be read (for listeners: connections waiting to be
    /// accepted).
    pub recv_queue: u32,
    /// Bytes waiting to be sent (for listeners: the backlog).
    pub send_queue: u32,
    /// The interface a socket is bound to (0: any).
    pub interface: u32,
    /// The network namespace it lives in (the inode of its
    /// `/proc/<pid>/ns/net`), when the dump says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// A TCP socket's bytes sent and acknowledged by the peer
    /// (`tcpi_bytes_acked`), from `INET_DIAG_INFO`; `None` for UDP and for
    /// sockets that have no `tcp_info` (`TIME_WAIT`, requests). As the
    /// kernel counts: the connecting side's SYN, and a FIN once
    /// acknowledged, are one byte each (`ss -i`'s `bytes_acked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_acked: Option<u64>,
    /// A TCP socket's bytes received (`tcpi_bytes_received`), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
}

impl Socket {
    /// A listener: a TCP socket in `LISTEN`, or a UDP socket bound but
    /// connected to no peer.
    pub fn is_listener(&self) -> bool {
        if self.protocol == NetworkProtocol::Udp {
            self.remote.port() == 0 && self.remote.ip().is_unspecified()
        } else {
            self.state == Some(ConnectionState::Listen)
        }
    }
}

/// What went wrong asking the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// A socket call failed.
    #[error("sock_diag {operation} failed")]
    Io {
        /// `socket`, `setsockopt`, `send` or `recv`.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("the kernel refused the sock_diag dump of {what}")]
    Refused {
        /// `tcp` or `udp`.
        what: &'static str,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("malformed sock_diag answer: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The network namespace could not be entered.
    #[error("cannot enter the network namespace")]
    Namespace(#[source] std::io::Error),
    /// The kernel sent nothing for too long.
    #[error("no sock_diag answer within {0:?}")]
    Timeout(Duration),
}

/// Whether a datagram finished the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was read: the dump is complete.
    Done,
}

/// The dump request for every socket of `family` and `protocol`, with
/// sequence number `seq`.
pub fn request(family: AddressFamily, protocol: NetworkProtocol, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AddressFamily::Ipv6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: family_number(family),
            protocol: protocol_number(protocol),
            // TCP's `tcp_info`, for the bytes; UDP has none.
            extensions: if protocol == NetworkProtocol::Tcp {
                ExtensionFlags::INFO
            } else {
                ExtensionFlags::empty()
            },
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Parses one datagram of a dump of `protocol` sockets into `out`.
///
/// # Errors
/// [`DiagError::Malformed`] for bytes that are not netlink messages of
/// `sock_diag` (nothing is appended then past the last good message), and
/// [`DiagError::Refused`] when the kernel answered with an error.
pub fn parse_datagram(
    mut buf: &[u8],
    protocol: NetworkProtocol,
    out: &mut Vec<Socket>,
) -> Result<Parsed, DiagError> {
    while !buf.is_empty() {
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(buf).map_err(|e| {
            DiagError::Malformed {
                reason: e.to_string(),
            }
        })?;
        let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let mut socket = socket_from(protocol, &response.header)?;
                for nla in &response.nlas {
                    if let Nla::TcpInfo(info) = nla {
                        (socket.bytes_acked, socket.bytes_received) = tcp_bytes(info);
                    }
                }
                out.push(socket);
            }
            NetlinkPayload::Done(_) => return Ok(Parsed::Done),
            NetlinkPayload::Error(e) => {
                return Err(DiagError::Refused {
                    what: protocol.as_str(),
                    source: e.to_io(),
                })
            }
            NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
            other => {
                return Err(DiagError::Malformed {
                    reason: format!("unexpected message {other:?}"),
                })
            }
        }
        // Netlink messages are 4-byte aligned within a datagram.
        let step = length.checked_add(3).map_or(usize::MAX, |l| l & !3);
        if length < 16 || step > buf.len() {
            break;
        }
        buf = &buf[step..];
    }
    Ok(Parsed::More)
}

fn socket_from(
    protocol: NetworkProtocol,
    header: &netlink_packet_sock_diag::inet::InetResponseHeader,
) -> Result<Socket, DiagError> {
    let family = match header.family {
        AF_INET => AddressFamily::Ipv4,
        AF_INET6 => AddressFamily::Ipv6,
        other => {
            return Err(DiagError::Malformed {
                reason: format!("address family {other} in an inet answer"),
            })
        }
    };
    let id = &header.socket_id;
    let local = SocketAddr::new(id.source_address, id.source_port);
    let remote = SocketAddr::new(id.destination_address, id.destination_port);
    Ok(Socket {
        protocol,
        family,
        state: state_from_kernel(header.state),
        local: canonical(local),
        remote: canonical(remote),
        uid: header.uid,
        inode: u64::from(header.inode),
        cookie: u64::from_ne_bytes(id.cookie),
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        interface: id.interface_id,
        netns: None,
        bytes_acked: None,
        bytes_received: None,
    })
}

/// Where `struct tcp_info` (`include/uapi/linux/tcp.h`) keeps
/// `tcpi_bytes_acked` and `tcpi_bytes_received` (u64s, since Linux 4.1).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// (`tcpi_bytes_acked`, `tcpi_bytes_received`) of a `tcp_info`, each
/// `None` when the kernel's struct is too short to have it.
fn tcp_bytes(info: &[u8]) -> (Option<u64>, Option<u64>) {
    let at = |offset: usize| {
        info.get(offset..offset + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_ne_bytes)
    };
    (at(TCPI_BYTES_ACKED), at(TCPI_BYTES_RECEIVED))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
/// reports for an IPv4 peer) as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// How long [`dump`] waits for each datagram before it gives up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Every TCP and UDP socket, IPv4 and IPv6, of this network namespace.
///
/// # Errors
/// [`DiagError`] when the socket cannot be opened or the kernel's answer is
/// refused, malformed or late.
pub fn dump() -> Result<Vec<Socket>, DiagError> {
    dump_over(&sys::DiagSocket::open(RECV_TIMEOUT)?)
}

/// Every TCP and UDP socket of the network namespace `netns` (an open
/// `/proc/<pid>/ns/net`): the netlink socket is opened from a short-lived
/// thread moved into that namespace, and keeps it.
///
/// # Errors
/// [`DiagError::Namespace`] when this process may not enter it (it needs
/// `CAP_SYS_ADMIN`), else as [`dump`].
pub fn dump_in(netns: std::os::fd::BorrowedFd<'_>) -> Result<Vec<Socket>, DiagError> {
    dump_over(&sys::DiagSocket::open_in(netns, RECV_TIMEOUT)?)
}

fn dump_over(socket: &sys::DiagSocket) -> Result<Vec<Socket>, DiagError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0;
    for protocol in [NetworkProtocol::Tcp, NetworkProtocol::Udp] {
        for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
            seq += 1;
            socket.send(&request(family, protocol, seq))?;
            loop {
                let n = socket.recv(&mut buf)?;
                let Some(datagram) = buf.get(..n) else {
                    return Err(DiagError::Malformed {
                        reason: format!("recv said {n} bytes of a {}-byte buffer", buf.len()),
                    });
                };
                if parse_datagram(datagram, protocol, &mut out)? == Parsed::Done {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    use netlink_packet_core::NLMSG_DONE;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader};
    use proptest::prelude::*;

    /// One answer as the kernel would send it.
    fn answer(header: InetResponseHeader, seq: u32) -> Vec<u8> {
        answer_with(header, seq, Vec::new())
    }

    /// One answer with attributes `nlas`.
    fn answer_with(header: InetResponseHeader, seq: u32, nlas: Vec<Nla>) -> Vec<u8> {
        let mut h = NetlinkHeader::default();
        h.sequence_number = seq;
        let mut packet = NetlinkMessage::new(
            h,
            SockDiagMessage::InetResponse(Box::new(InetResponse {
                header,
                nlas: nlas.into_iter().collect(),
            }))
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    fn done() -> Vec<u8> {
        // nlmsghdr (16 bytes) + the dump's int error code.
        let mut buf = vec![0u8; 20];
        buf[..4].copy_from_slice(&20u32.to_ne_bytes());
        buf[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf
    }

    fn header(family: u8, state: u8, local: SocketAddr, remote: SocketAddr) -> InetResponseHeader {
        InetResponseHeader {
            family,
            state,
            timer: None,
            socket_id: SocketId {
                source_port: local.port(),
                destination_port: remote.port(),
                source_address: local.ip(),
                destination_address: remote.ip(),
                interface_id: 0,
                cookie: 42u64.to_ne_bytes(),
            },
            recv_queue: 1,
            send_queue: 2,
            uid: 1000,
            inode: 777,
        }
    }

    #[test]
    fn a_datagram_of_answers_then_done_is_parsed_whole() {
        let est = at(AF_INET, 1, "127.0.0.1:40000", "127.0.0.1:22");
        let listen = at(AF_INET6, 10, "[::]:8080", "[::]:0");
        let mut datagram = answer(est, 1);
        datagram.extend(answer(listen, 1));
        let mut out = Vec::new();
        assert_eq!(
            parse_datagram(&datagram, NetworkProtocol::Tcp, &mut out).unwrap(),
            Parsed::More
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, Some(ConnectionState::Established));
        assert_eq!(out[0].remote, "127.0.0.1:22".parse().unwrap());
        assert_eq!((out[0].uid, out[0].inode, out[0].cookie), (1000, 777, 42));
        assert!(!out[0].is_listener());
        assert_eq!(out[1].family, AddressFamily::Ipv6);
        assert!(out[1].is_listener());
        assert_eq!(
            parse_datagram(&done(), NetworkProtocol::Tcp, &mut out).unwrap(),
            Parsed::Done
        );
        assert_eq!(out.len(), 2);
    }

    /// [`header`] of addresses written out.
    fn at(family: u8, state: u8, local: &str, remote: &str) -> InetResponseHeader {
        header(
            family,
            state,
            local.parse().unwrap(),
            remote.parse().unwrap(),
        )
    }

    /// The one socket parsed from an answer of `family`, `state`, `local`
    /// and `remote`.
    fn parsed_one(
        protocol: NetworkProtocol,
        family: u8,
        state: u8,
        local: &str,
        remote: &str,
    ) -> Socket {
        let h = header(
            family,
            state,
            local.parse().unwrap(),
            remote.parse().unwrap(),
        );
        let mut out = Vec::new();
        parse_datagram(&answer(h, 1), protocol, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    /// A `tcp_info` of `len` bytes with `acked` and `received` where the
    /// kernel puts them.
    fn tcp_info(len: usize, acked: u64, received: u64) -> Nla {
        let mut info = vec![0u8; len];
        for (at, v) in [(TCPI_BYTES_ACKED, acked), (TCPI_BYTES_RECEIVED, received)] {
            if let Some(b) = info.get_mut(at..at + 8) {
                b.copy_from_slice(&v.to_ne_bytes());
            }
        }
        Nla::TcpInfo(info)
    }

    #[test]
    fn a_tcp_answers_info_gives_its_bytes_and_a_short_one_none() {
        let h = || at(AF_INET, 1, "10.0.0.1:22", "10.0.0.9:50000");
        let mut out = Vec::new();
        // 232 bytes: this kernel's tcp_info (6.18).
        let datagram = answer_with(h(), 1, vec![tcp_info(232, 1_000_000, 42)]);
        parse_datagram(&datagram, NetworkProtocol::Tcp, &mut out).unwrap();
        assert_eq!(
            (out[0].bytes_acked, out[0].bytes_received),
            (Some(1_000_000), Some(42))
        );
        // A kernel before 4.1 stopped short of both.
        let datagram = answer_with(h(), 1, vec![tcp_info(104, 1, 1)]);
        parse_datagram(&datagram, NetworkProtocol::Tcp, &mut out).unwrap();
        assert_eq!((out[1].bytes_acked, out[1].bytes_received), (None, None));
        // No attribute (TIME_WAIT, requests): none.
        parse_datagram(&answer(h(), 1), NetworkProtocol::Tcp, &mut out).unwrap();
        assert_eq!((out[2].bytes_acked, out[2].bytes_received), (None, None));
    }

    #[test]
    fn an_ipv4_mapped_peer_is_reported_as_ipv4() {
        let s = parsed_one(
            NetworkProtocol::Tcp,
            AF_INET6,
            1,
            "[::ffff:10.0.0.1]:443",
            "[::ffff:10.0.0.2]:50000",
        );
        assert_eq!(s.local, "10.0.0.1:443".parse().unwrap());
        assert_eq!(s.family, AddressFamily::Ipv6, "the socket's family stays");
    }

    #[test]
    fn an_unconnected_udp_socket_is_a_listener_and_prints_unconn() {
        let s = parsed_one(NetworkProtocol::Udp, AF_INET, 7, "0.0.0.0:53", "0.0.0.0:0");
        assert!(s.is_listener());
        assert_eq!(state_label(s.state, NetworkProtocol::Udp), "UNCONN");
    }

    #[test]
    fn a_truncated_answer_is_malformed_not_a_panic() {
        let est = at(AF_INET, 1, "127.0.0.1:1", "127.0.0.1:2");
        let bytes = answer(est, 1);
        for cut in 1..bytes.len() {
            let mut out = Vec::new();
            assert!(
                parse_datagram(&bytes[..cut], NetworkProtocol::Tcp, &mut out).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_request_asks_for_a_dump_of_every_state() {
        let bytes = request(AddressFamily::Ipv6, NetworkProtocol::Udp, 9);
        // nlmsghdr, then inet_diag_req_v2.
        assert_eq!(bytes.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!(bytes[16], AF_INET6);
        assert_eq!(bytes[17], IPPROTO_UDP);
        assert_eq!(
            u32::from_ne_bytes(bytes[20..24].try_into().unwrap()),
            StateFlags::all().bits()
        );
        assert_eq!(bytes[18], 0, "UDP has no tcp_info to ask for");
        let tcp = request(AddressFamily::Ipv4, NetworkProtocol::Tcp, 1);
        assert_eq!(
            tcp[18],
            ExtensionFlags::INFO.bits(),
            "TCP asks for tcp_info"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = parse_datagram(&bytes, NetworkProtocol::Tcp, &mut out);
        }

        #[test]
        fn any_answer_round_trips(
            state in 0u8..16,
            v6 in any::<bool>(),
            a in any::<[u8; 16]>(),
            b in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            uid in any::<u32>(),
            inode in any::<u32>(),
        ) {
            let ip = |x: [u8; 16]| if v6 {
                IpAddr::from(x)
            } else {
                IpAddr::from([x[0], x[1], x[2], x[3]])
            };
            let local = SocketAddr::new(ip(a), ports.0);
            let remote = SocketAddr::new(ip(b), ports.1);
            let mut h = header(if v6 { AF_INET6 } else { AF_INET }, state, local, remote);
            h.uid = uid;
            h.inode = inode;
            let mut out = Vec::new();
            parse_datagram(&answer(h, 3), NetworkProtocol::Tcp, &mut out).unwrap();
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(out[0].local, canonical(local));
            prop_assert_eq!(out[0].remote, canonical(remote));
            prop_assert_eq!(out[0].state, state_from_kernel(state));
            prop_assert_eq!((out[0].uid, out[0].inode), (uid, u64::from(inode)));
        }
    }
}
