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

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use serde::{Deserialize, Serialize};

/// The transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (`AF_INET`).
    Ipv4,
    /// IPv6 (`AF_INET6`), IPv4-mapped addresses included.
    Ipv6,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Self::Ipv4 => AF_INET,
            Self::Ipv6 => AF_INET6,
        }
    }
}

/// A socket's state as the kernel names it (`include/net/tcp_states.h`).
/// UDP sockets are `Established` when connected and `Close` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// `TCP_ESTABLISHED` (1).
    Established,
    /// `TCP_SYN_SENT` (2).
    SynSent,
    /// `TCP_SYN_RECV` (3).
    SynRecv,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7).
    Close,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11).
    Closing,
    /// `TCP_NEW_SYN_RECV` (12).
    NewSynRecv,
    /// A state this build does not know, with its number.
    Other(u8),
}

impl State {
    /// The state numbered `n` by the kernel.
    pub fn from_kernel(n: u8) -> Self {
        match n {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            n => Self::Other(n),
        }
    }

    /// The name `ss` prints (`ESTAB`, `LISTEN`, `UNCONN` for a UDP `Close`).
    pub fn label(self, protocol: Protocol) -> &'static str {
        match (self, protocol) {
            (Self::Established, _) => "ESTAB",
            (Self::SynSent, _) => "SYN-SENT",
            (Self::SynRecv | Self::NewSynRecv, _) => "SYN-RECV",
            (Self::FinWait1, _) => "FIN-WAIT-1",
            (Self::FinWait2, _) => "FIN-WAIT-2",
            (Self::TimeWait, _) => "TIME-WAIT",
            (Self::Close, Protocol::Udp) => "UNCONN",
            (Self::Close, Protocol::Tcp) => "CLOSE",
            (Self::CloseWait, _) => "CLOSE-WAIT",
            (Self::LastAck, _) => "LAST-ACK",
            (Self::Listen, _) => "LISTEN",
            (Self::Closing, _) => "CLOSING",
            (Self::Other(_), _) => "UNKNOWN",
        }
    }
}

/// One socket the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Socket {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// IPv4 or IPv6.
    pub family: Family,
    /// The kernel's state.
    pub state: State,
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
}

impl Socket {
    /// A listener: a TCP socket in `LISTEN`, or a UDP socket bound but
    /// connected to no peer.
    pub fn is_listener(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.state == State::Listen,
            Protocol::Udp => self.remote.port() == 0 && self.remote.ip().is_unspecified(),
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
        /// `tcp/ipv4`, ...
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
pub fn request(family: Family, protocol: Protocol, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = match family {
        Family::Ipv4 => SocketId::new_v4(),
        Family::Ipv6 => SocketId::new_v6(),
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: family.number(),
            protocol: protocol.number(),
            extensions: ExtensionFlags::empty(),
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
    protocol: Protocol,
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
                out.push(socket_from(protocol, &response.header)?);
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
    protocol: Protocol,
    header: &netlink_packet_sock_diag::inet::InetResponseHeader,
) -> Result<Socket, DiagError> {
    let family = match header.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
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
        state: State::from_kernel(header.state),
        local: canonical(local),
        remote: canonical(remote),
        uid: header.uid,
        inode: u64::from(header.inode),
        cookie: u64::from_ne_bytes(id.cookie),
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        interface: id.interface_id,
    })
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
    let socket = sys::DiagSocket::open(RECV_TIMEOUT)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0;
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for family in [Family::Ipv4, Family::Ipv6] {
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
        let mut h = NetlinkHeader::default();
        h.sequence_number = seq;
        let mut packet = NetlinkMessage::new(
            h,
            SockDiagMessage::InetResponse(Box::new(InetResponse {
                header,
                nlas: std::iter::empty().collect(),
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
            parse_datagram(&datagram, Protocol::Tcp, &mut out).unwrap(),
            Parsed::More
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, State::Established);
        assert_eq!(out[0].remote, "127.0.0.1:22".parse().unwrap());
        assert_eq!((out[0].uid, out[0].inode, out[0].cookie), (1000, 777, 42));
        assert!(!out[0].is_listener());
        assert_eq!(out[1].family, Family::Ipv6);
        assert!(out[1].is_listener());
        assert_eq!(
            parse_datagram(&done(), Protocol::Tcp, &mut out).unwrap(),
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
    fn parsed_one(protocol: Protocol, family: u8, state: u8, local: &str, remote: &str) -> Socket {
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

    #[test]
    fn an_ipv4_mapped_peer_is_reported_as_ipv4() {
        let s = parsed_one(
            Protocol::Tcp,
            AF_INET6,
            1,
            "[::ffff:10.0.0.1]:443",
            "[::ffff:10.0.0.2]:50000",
        );
        assert_eq!(s.local, "10.0.0.1:443".parse().unwrap());
        assert_eq!(s.family, Family::Ipv6, "the socket's family stays");
    }

    #[test]
    fn an_unconnected_udp_socket_is_a_listener_and_prints_unconn() {
        let s = parsed_one(Protocol::Udp, AF_INET, 7, "0.0.0.0:53", "0.0.0.0:0");
        assert!(s.is_listener());
        assert_eq!(s.state.label(Protocol::Udp), "UNCONN");
    }

    #[test]
    fn a_truncated_answer_is_malformed_not_a_panic() {
        let est = at(AF_INET, 1, "127.0.0.1:1", "127.0.0.1:2");
        let bytes = answer(est, 1);
        for cut in 1..bytes.len() {
            let mut out = Vec::new();
            assert!(
                parse_datagram(&bytes[..cut], Protocol::Tcp, &mut out).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_request_asks_for_a_dump_of_every_state() {
        let bytes = request(Family::Ipv6, Protocol::Udp, 9);
        // nlmsghdr, then inet_diag_req_v2.
        assert_eq!(bytes.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!(bytes[16], AF_INET6);
        assert_eq!(bytes[17], IPPROTO_UDP);
        assert_eq!(
            u32::from_ne_bytes(bytes[20..24].try_into().unwrap()),
            StateFlags::all().bits()
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = parse_datagram(&bytes, Protocol::Tcp, &mut out);
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
            parse_datagram(&answer(h, 3), Protocol::Tcp, &mut out).unwrap();
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(out[0].local, canonical(local));
            prop_assert_eq!(out[0].remote, canonical(remote));
            prop_assert_eq!(out[0].state, State::from_kernel(state));
            prop_assert_eq!((out[0].uid, out[0].inode), (uid, u64::from(inode)));
        }
    }
}
