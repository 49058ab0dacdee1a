//! The `NETLINK_CONNECTOR` socket, through `rustix`'s safe wrappers.
//!
//! This is the only place that talks to the kernel; it holds no `unsafe`
//! (the workspace forbids it, and `rustix` covers every call needed).

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::decode::{mcast_request, CN_IDX_PROC};

/// `PROC_CN_MCAST_LISTEN`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `PROC_CN_MCAST_IGNORE`.
const PROC_CN_MCAST_IGNORE: u32 = 2;

/// A netlink socket of the connector family, bound to the process events
/// multicast group once [`Socket::bind`] succeeded.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// `socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR)`.
    pub(crate) fn new() -> Result<Self, Errno> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::CONNECTOR),
        )?;
        Ok(Self { fd })
    }

    /// `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`, ignores `rmem_max`).
    pub(crate) fn force_recv_buffer(&self, bytes: usize) -> Result<(), Errno> {
        sockopt::set_socket_recv_buffer_size_force(&self.fd, bytes)
    }

    /// `SO_RCVBUF` (capped by `net.core.rmem_max`).
    pub(crate) fn set_recv_buffer(&self, bytes: usize) -> Result<(), Errno> {
        sockopt::set_socket_recv_buffer_size(&self.fd, bytes)
    }

    /// `getsockopt(SO_RCVBUF)`: what the kernel granted (twice the request,
    /// for its bookkeeping).
    pub(crate) fn recv_buffer(&self) -> Result<usize, Errno> {
        sockopt::socket_recv_buffer_size(&self.fd)
    }

    /// `SO_RCVTIMEO`: how long a [`Socket::recv`] waits before `EAGAIN`.
    pub(crate) fn set_recv_timeout(&self, timeout: Duration) -> Result<(), Errno> {
        sockopt::set_socket_timeout(&self.fd, Timeout::Recv, Some(timeout))
    }

    /// Binds to the process events multicast group (`CN_IDX_PROC`), letting
    /// the kernel pick the port id.
    pub(crate) fn bind(&self) -> Result<(), Errno> {
        rustix::net::bind(&self.fd, &SocketAddrNetlink::new(0, CN_IDX_PROC))
    }

    /// Sends `PROC_CN_MCAST_LISTEN`; the kernel multicasts an ack whose
    /// `cn_msg.ack` is `ack + 1`.
    pub(crate) fn subscribe(&self, ack: u32) -> Result<(), Errno> {
        self.send(&mcast_request(PROC_CN_MCAST_LISTEN, 0, ack, 0))
    }

    /// Sends `PROC_CN_MCAST_IGNORE`, so the kernel can stop generating events
    /// when no one listens.
    pub(crate) fn unsubscribe(&self, ack: u32) -> Result<(), Errno> {
        self.send(&mcast_request(PROC_CN_MCAST_IGNORE, 0, ack, 0))
    }

    /// Sends one request to the kernel (port 0).
    fn send(&self, request: &[u8]) -> Result<(), Errno> {
        let sent = rustix::net::sendto(
            &self.fd,
            request,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        if sent == request.len() {
            Ok(())
        } else {
            Err(Errno::MSGSIZE)
        }
    }

    /// Receives one datagram into `buf`, returning its length. `EAGAIN` on
    /// timeout, `ENOBUFS` when the kernel dropped messages for lack of room.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        let (received, _) = rustix::net::recv(&self.fd, buf, RecvFlags::empty())?;
        Ok(received)
    }
}
