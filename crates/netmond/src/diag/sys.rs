//! The `NETLINK_SOCK_DIAG` socket, through `rustix`'s safe wrappers.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::DiagError;

fn io(operation: &'static str) -> impl FnOnce(Errno) -> DiagError {
    move |e| DiagError::Io {
        operation,
        source: e.into(),
    }
}

/// A `sock_diag` socket whose `recv` gives up after a timeout.
#[derive(Debug)]
pub(super) struct DiagSocket {
    fd: OwnedFd,
    timeout: Duration,
}

impl DiagSocket {
    /// `socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)`
    /// with `SO_RCVTIMEO` set to `timeout`.
    pub(super) fn open(timeout: Duration) -> Result<Self, DiagError> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .map_err(io("socket"))?;
        sockopt::set_socket_timeout(&fd, Timeout::Recv, Some(timeout)).map_err(io("setsockopt"))?;
        Ok(Self { fd, timeout })
    }

    /// As [`open`](Self::open), in the network namespace `netns`: a socket
    /// belongs to the namespace of the thread that made it, so a scoped
    /// thread enters `netns`, opens it, and ends.
    pub(super) fn open_in(netns: BorrowedFd<'_>, timeout: Duration) -> Result<Self, DiagError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    rustix::thread::move_into_link_name_space(
                        netns,
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| DiagError::Namespace(e.into()))?;
                    Self::open(timeout)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(DiagError::Namespace(std::io::Error::other(
                        "the namespace thread panicked",
                    )))
                })
        })
    }

    /// Sends one request to the kernel.
    pub(super) fn send(&self, request: &[u8]) -> Result<(), DiagError> {
        let sent = rustix::net::sendto(
            &self.fd,
            request,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(io("send"))?;
        if sent == request.len() {
            Ok(())
        } else {
            Err(io("send")(Errno::MSGSIZE))
        }
    }

    /// Receives one datagram into `buf`, returning its length; a datagram
    /// longer than `buf` is an error, never silently cut.
    pub(super) fn recv(&self, buf: &mut [u8]) -> Result<usize, DiagError> {
        loop {
            return match rustix::net::recv(&self.fd, &mut *buf, RecvFlags::TRUNC) {
                Ok((received, length)) if length > received => Err(DiagError::Malformed {
                    reason: format!("a {length}-byte datagram for a {received}-byte buffer"),
                }),
                Ok((received, _)) => Ok(received),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => Err(DiagError::Timeout(self.timeout)),
                Err(e) => Err(io("recv")(e)),
            };
        }
    }
}
