//! Pure decoding of process connector datagrams.
//!
//! One `recv` on a `NETLINK_CONNECTOR` socket returns one datagram, which
//! holds one or more netlink messages (`struct nlmsghdr`, each aligned to
//! 4 bytes). Each message from the process connector carries a `struct cn_msg`
//! (`linux/connector.h`) whose payload is a `struct proc_event`
//! (`linux/cn_proc.h`). All fields are in host byte order.
//!
//! ```text
//! nlmsghdr  (16)  len u32 | type u16 | flags u16 | seq u32 | pid u32
//! cn_msg    (20)  idx u32 | val u32 | seq u32 | ack u32 | len u16 | flags u16
//! proc_event(40)  what u32 | cpu u32 | timestamp_ns u64 | event_data (union, 24)
//! ```
//!
//! Nothing here needs privileges or a socket, so it is tested on recorded
//! bytes; [`decode`] never panics, whatever it is given.

use thiserror::Error;

use crate::wire::{c_string, u16_at, u32_at, u64_at};

/// `NLMSG_NOOP`: nothing, skipped.
const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: a `struct nlmsgerr` (errno, negated; 0 is an ack).
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the kernel's connector sends every message with this type,
/// so it carries a `cn_msg` unless it is empty.
const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
const NLMSG_OVERRUN: u16 = 4;
/// `NLMSG_MIN_TYPE`: types below it are reserved for control messages.
const NLMSG_MIN_TYPE: u16 = 0x10;

/// `sizeof(struct nlmsghdr)`.
pub(crate) const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct cn_msg)`.
pub(crate) const CN_MSG_LEN: usize = 20;
/// `what`, `cpu` and `timestamp_ns` of `struct proc_event`.
const PROC_EVENT_HDR_LEN: usize = 16;

/// `CN_IDX_PROC`: the connector index of the process events connector, also
/// the netlink multicast group to bind to.
pub const CN_IDX_PROC: u32 = 1;
/// `CN_VAL_PROC`.
pub const CN_VAL_PROC: u32 = 1;

// `enum what` of `struct proc_event` (linux/cn_proc.h); NONE acknowledges a
// subscribe or unsubscribe. Callers match on `ProcEvent` instead.
const PROC_EVENT_NONE: u32 = 0x0000_0000;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_GID: u32 = 0x0000_0040;
const PROC_EVENT_SID: u32 = 0x0000_0080;
const PROC_EVENT_PTRACE: u32 = 0x0000_0100;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_COREDUMP: u32 = 0x4000_0000;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Length of `comm` in `struct comm_proc_event` (`TASK_COMM_LEN`).
const COMM_LEN: usize = 16;

/// Rounds up to the netlink alignment (`NLMSG_ALIGN`).
pub(crate) const fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

/// A task as the kernel names it: `pid` is the thread id, `tgid` the process
/// id (the thread group id, what user space calls the pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    /// Thread id (`task->pid`).
    pub pid: u32,
    /// Process id (`task->tgid`); equal to `pid` for the main thread.
    pub tgid: u32,
}

impl ProcId {
    /// Whether this is the main thread of its process (`pid == tgid`).
    pub const fn is_main_thread(self) -> bool {
        self.pid == self.tgid
    }
}

/// The fields every process event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventMeta {
    /// The CPU the event was generated on (`u32::MAX` for acknowledgements).
    pub cpu: u32,
    /// `CLOCK_MONOTONIC` time of the event, in nanoseconds since boot (not
    /// counting suspend).
    pub timestamp_ns: u64,
    /// The `cn_msg` sequence number: the kernel counts messages per CPU, so a
    /// gap between two events of the same CPU means events were lost.
    pub seq: u32,
}

/// One decoded process connector event.
///
/// # Minimum kernel version
///
/// The connector and fork/exec/uid/gid/exit events exist since Linux 2.6.15,
/// `Sid` since 2.6.32, `Ptrace` and `Comm` since 3.1 (about), `Coredump` since
/// 3.10; the parent fields of `Exit` and `Coredump` since 4.18 (older kernels
/// send zeros there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProcEvent {
    /// `PROC_EVENT_NONE`: the acknowledgement of a (un)subscribe request. The
    /// kernel multicasts it, so a listener also sees the acks of others.
    Ack {
        /// Event metadata.
        meta: EventMeta,
        /// `cn_msg.ack`: the `ack` of the request plus one.
        ack: u32,
        /// The error of the request (`EPERM` when not privileged), 0 on success.
        err: u32,
    },
    /// `PROC_EVENT_FORK`: a new task (a process or a thread) was created.
    Fork {
        /// Event metadata.
        meta: EventMeta,
        /// The task that called fork/clone. For a new process its `tgid` is
        /// the parent process.
        parent: ProcId,
        /// The new task. A new process has `pid == tgid`; a new thread does not.
        child: ProcId,
    },
    /// `PROC_EVENT_EXEC`: a task called execve successfully.
    Exec {
        /// Event metadata.
        meta: EventMeta,
        /// The task that exec'd.
        process: ProcId,
    },
    /// `PROC_EVENT_UID`: real or effective user id changed.
    Uid {
        /// Event metadata.
        meta: EventMeta,
        /// The task whose credentials changed.
        process: ProcId,
        /// The new real user id.
        ruid: u32,
        /// The new effective user id.
        euid: u32,
    },
    /// `PROC_EVENT_GID`: real or effective group id changed.
    Gid {
        /// Event metadata.
        meta: EventMeta,
        /// The task whose credentials changed.
        process: ProcId,
        /// The new real group id.
        rgid: u32,
        /// The new effective group id.
        egid: u32,
    },
    /// `PROC_EVENT_SID`: the task started a new session (setsid).
    Sid {
        /// Event metadata.
        meta: EventMeta,
        /// The session leader.
        process: ProcId,
    },
    /// `PROC_EVENT_PTRACE`: a tracer attached or detached.
    Ptrace {
        /// Event metadata.
        meta: EventMeta,
        /// The traced task.
        process: ProcId,
        /// The tracer; pid and tgid 0 on detach.
        tracer: ProcId,
    },
    /// `PROC_EVENT_COMM`: the task's name (`comm`) changed.
    Comm {
        /// Event metadata.
        meta: EventMeta,
        /// The renamed task.
        process: ProcId,
        /// The new name, at most 15 bytes, NUL-trimmed, invalid UTF-8 replaced.
        comm: String,
    },
    /// `PROC_EVENT_COREDUMP`: the task is dumping core.
    Coredump {
        /// Event metadata.
        meta: EventMeta,
        /// The dumping task.
        process: ProcId,
        /// Its parent, when the message is long enough to carry it.
        parent: Option<ProcId>,
    },
    /// `PROC_EVENT_EXIT`: a task exited. Sent for every thread.
    Exit {
        /// Event metadata.
        meta: EventMeta,
        /// The task that exited.
        process: ProcId,
        /// `task->exit_code`: the raw wait status (`code << 8` for a normal
        /// exit, the signal number for a kill); see [`exit_status`].
        exit_code: u32,
        /// `task->exit_signal`: the signal sent to the parent (usually
        /// `SIGCHLD`, 17; -1 as `u32::MAX` for threads), not the one that
        /// killed the task.
        exit_signal: u32,
        /// Its parent, when the message is long enough to carry it (always on
        /// Linux ≥ 4.18; zeros on older kernels, for a thread other than
        /// the main one, whose `exit_signal` is -1, as measured on 6.18, and
        /// when the parent reaped the child before the kernel built the
        /// message: it fills these fields after waking the parent, and only
        /// while the child's pid is still attached).
        parent: Option<ProcId>,
    },
    /// A `what` this decoder does not know: counted, not an error.
    Unknown {
        /// Event metadata.
        meta: EventMeta,
        /// The raw `what`.
        what: u32,
    },
}

impl ProcEvent {
    /// The metadata common to every event.
    pub fn meta(&self) -> &EventMeta {
        match self {
            Self::Ack { meta, .. }
            | Self::Fork { meta, .. }
            | Self::Exec { meta, .. }
            | Self::Uid { meta, .. }
            | Self::Gid { meta, .. }
            | Self::Sid { meta, .. }
            | Self::Ptrace { meta, .. }
            | Self::Comm { meta, .. }
            | Self::Coredump { meta, .. }
            | Self::Exit { meta, .. }
            | Self::Unknown { meta, .. } => meta,
        }
    }

    /// The raw `what` value of this event.
    pub fn what(&self) -> u32 {
        match self {
            Self::Ack { .. } => PROC_EVENT_NONE,
            Self::Fork { .. } => PROC_EVENT_FORK,
            Self::Exec { .. } => PROC_EVENT_EXEC,
            Self::Uid { .. } => PROC_EVENT_UID,
            Self::Gid { .. } => PROC_EVENT_GID,
            Self::Sid { .. } => PROC_EVENT_SID,
            Self::Ptrace { .. } => PROC_EVENT_PTRACE,
            Self::Comm { .. } => PROC_EVENT_COMM,
            Self::Coredump { .. } => PROC_EVENT_COREDUMP,
            Self::Exit { .. } => PROC_EVENT_EXIT,
            Self::Unknown { what, .. } => *what,
        }
    }

    /// The task the event is about: the child for a fork, none for an ack or
    /// an unknown event.
    pub fn process(&self) -> Option<ProcId> {
        match self {
            Self::Fork { child, .. } => Some(*child),
            Self::Exec { process, .. }
            | Self::Uid { process, .. }
            | Self::Gid { process, .. }
            | Self::Sid { process, .. }
            | Self::Ptrace { process, .. }
            | Self::Comm { process, .. }
            | Self::Coredump { process, .. }
            | Self::Exit { process, .. } => Some(*process),
            Self::Ack { .. } | Self::Unknown { .. } => None,
        }
    }

    /// For an [`Exit`](Self::Exit), its decoded wait status.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            Self::Exit { exit_code, .. } => Some(exit_status(*exit_code)),
            _ => None,
        }
    }
}

/// A raw wait status (the `exit_code` of an exit event), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitStatus {
    /// The task called exit with this code (`WIFEXITED`, `WEXITSTATUS`).
    Exited(u8),
    /// The task was killed by this signal (`WIFSIGNALED`, `WTERMSIG`).
    Signaled {
        /// The signal number.
        signal: u8,
        /// Whether a core dump was written (`WCOREDUMP`).
        core_dumped: bool,
    },
    /// Anything else (a stop status; never expected in an exit event).
    Other(u32),
}

/// Decodes a raw wait status, the `exit_code` of a [`ProcEvent::Exit`].
///
/// `0x0300` is `Exited(3)`, `9` is `Signaled { signal: 9, core_dumped: false }`.
pub const fn exit_status(raw: u32) -> ExitStatus {
    let low = raw & 0x7f;
    if raw & !0xffff != 0 {
        ExitStatus::Other(raw)
    } else if low == 0 {
        // Masked to 8 bits, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        ExitStatus::Exited(((raw >> 8) & 0xff) as u8)
    } else if low == 0x7f {
        ExitStatus::Other(raw)
    } else {
        #[allow(clippy::cast_possible_truncation)]
        ExitStatus::Signaled {
            signal: low as u8,
            core_dumped: raw & 0x80 != 0,
        }
    }
}

/// A datagram that could not be decoded. Offsets are byte offsets of the
/// netlink message in the datagram.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes left than a netlink header; the rest of the datagram is lost.
    #[error("netlink header truncated at offset {offset}: {available} bytes left, need 16")]
    HeaderTruncated {
        /// Offset of the partial header.
        offset: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// `nlmsg_len` is shorter than its header or longer than the datagram;
    /// the rest of the datagram is lost.
    #[error("bad netlink message length {length} at offset {offset}: {available} bytes left")]
    BadMessageLength {
        /// Offset of the message.
        offset: usize,
        /// The declared `nlmsg_len`.
        length: u32,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// An `NLMSG_ERROR` with a non-zero error.
    #[error("netlink error message at offset {offset}: errno {errno}")]
    Netlink {
        /// Offset of the message.
        offset: usize,
        /// The positive errno.
        errno: i32,
    },
    /// An `NLMSG_OVERRUN`: the kernel says data were lost.
    #[error("netlink overrun message at offset {offset}")]
    Overrun {
        /// Offset of the message.
        offset: usize,
    },
    /// A reserved control message type.
    #[error("unexpected netlink message type {message_type} at offset {offset}")]
    UnexpectedMessageType {
        /// Offset of the message.
        offset: usize,
        /// The `nlmsg_type`.
        message_type: u16,
    },
    /// The payload is shorter than what its type needs (`cn_msg`, an
    /// `nlmsgerr`, or the event's part of `proc_event`).
    #[error("{what} truncated in message at offset {offset}: {available} bytes, need {needed}")]
    Truncated {
        /// Offset of the message.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `cn_msg.len` runs past the end of its netlink message.
    #[error("connector payload length {declared} at offset {offset} exceeds the {available} bytes present")]
    ConnectorLength {
        /// Offset of the message.
        offset: usize,
        /// The declared `cn_msg.len`.
        declared: u16,
        /// Bytes after the `cn_msg` header.
        available: usize,
    },
    /// A connector message that is not from the process events connector.
    #[error("unexpected connector id {idx}:{val} at offset {offset}")]
    UnexpectedConnectorId {
        /// Offset of the message.
        offset: usize,
        /// `cn_msg.id.idx`.
        idx: u32,
        /// `cn_msg.id.val`.
        val: u32,
    },
}

impl DecodeError {
    /// Whether decoding had to give up on the rest of the datagram (the
    /// netlink framing is broken), rather than on one message.
    pub fn is_framing(&self) -> bool {
        matches!(
            self,
            Self::HeaderTruncated { .. } | Self::BadMessageLength { .. }
        )
    }
}

/// Decodes every event of one datagram, failing on the first error.
///
/// Netlink no-ops, acks (`NLMSG_ERROR` with 0) and empty `NLMSG_DONE`
/// messages yield nothing. Use [`messages`] to keep the events around a bad
/// message.
///
/// # Errors
///
/// The first [`DecodeError`] met.
pub fn decode(datagram: &[u8]) -> Result<Vec<ProcEvent>, DecodeError> {
    messages(datagram).collect()
}

/// Iterates over the events of one datagram, one `Result` per event or bad
/// message. After a framing error ([`DecodeError::is_framing`]) it ends;
/// after any other error it goes on with the next message.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        datagram,
        offset: 0,
        done: false,
    }
}

/// The iterator returned by [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    datagram: &'a [u8],
    offset: usize,
    done: bool,
}

impl Iterator for Messages<'_> {
    type Item = Result<ProcEvent, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let offset = self.offset;
            let rest = self.datagram.get(offset..).unwrap_or_default();
            if rest.is_empty() {
                self.done = true;
                return None;
            }
            let Some(header) = rest.get(..NLMSG_HDR_LEN) else {
                self.done = true;
                return Some(Err(DecodeError::HeaderTruncated {
                    offset,
                    available: rest.len(),
                }));
            };
            let length = u32_at(header, 0);
            let message_type = u16_at(header, 4);
            let len = usize::try_from(length).unwrap_or(usize::MAX);
            if len < NLMSG_HDR_LEN || len > rest.len() {
                self.done = true;
                return Some(Err(DecodeError::BadMessageLength {
                    offset,
                    length,
                    available: rest.len(),
                }));
            }
            // The last message need not be padded.
            self.offset = offset.saturating_add(nlmsg_align(len).min(rest.len()));
            let payload = rest.get(NLMSG_HDR_LEN..len).unwrap_or_default();
            if let Some(item) = decode_message(offset, message_type, payload) {
                return Some(item);
            }
        }
        None
    }
}

impl std::iter::FusedIterator for Messages<'_> {}

/// Decodes one netlink message; `None` for messages that carry no event.
fn decode_message(
    offset: usize,
    message_type: u16,
    payload: &[u8],
) -> Option<Result<ProcEvent, DecodeError>> {
    match message_type {
        NLMSG_NOOP => None,
        NLMSG_ERROR => {
            let Some(errno) = payload.get(..4) else {
                return Some(Err(DecodeError::Truncated {
                    offset,
                    what: "nlmsgerr",
                    needed: 4,
                    available: payload.len(),
                }));
            };
            let error = i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
            if error == 0 {
                None
            } else {
                Some(Err(DecodeError::Netlink {
                    offset,
                    errno: error.saturating_neg(),
                }))
            }
        }
        NLMSG_DONE if payload.is_empty() => None,
        NLMSG_OVERRUN => Some(Err(DecodeError::Overrun { offset })),
        t if t != NLMSG_DONE && t < NLMSG_MIN_TYPE => {
            Some(Err(DecodeError::UnexpectedMessageType {
                offset,
                message_type: t,
            }))
        }
        _ => Some(decode_connector(offset, payload)),
    }
}

/// Decodes a `cn_msg` and the `proc_event` it carries.
fn decode_connector(offset: usize, payload: &[u8]) -> Result<ProcEvent, DecodeError> {
    let Some(cn) = payload.get(..CN_MSG_LEN) else {
        return Err(DecodeError::Truncated {
            offset,
            what: "cn_msg",
            needed: CN_MSG_LEN,
            available: payload.len(),
        });
    };
    let idx = u32_at(cn, 0);
    let val = u32_at(cn, 4);
    let seq = u32_at(cn, 8);
    let ack = u32_at(cn, 12);
    let declared = u16_at(cn, 16);
    let body = payload.get(CN_MSG_LEN..).unwrap_or_default();
    let Some(event) = body.get(..usize::from(declared)) else {
        return Err(DecodeError::ConnectorLength {
            offset,
            declared,
            available: body.len(),
        });
    };
    if idx != CN_IDX_PROC || val != CN_VAL_PROC {
        return Err(DecodeError::UnexpectedConnectorId { offset, idx, val });
    }
    decode_proc_event(offset, seq, ack, event)
}

/// Decodes a `proc_event` of `event.len()` bytes (the `cn_msg.len`).
fn decode_proc_event(
    offset: usize,
    seq: u32,
    ack: u32,
    event: &[u8],
) -> Result<ProcEvent, DecodeError> {
    let truncated = |what: &'static str, needed: usize| DecodeError::Truncated {
        offset,
        what,
        needed,
        available: event.len(),
    };
    if event.len() < PROC_EVENT_HDR_LEN {
        return Err(truncated("proc_event", PROC_EVENT_HDR_LEN));
    }
    let what = u32_at(event, 0);
    let meta = EventMeta {
        cpu: u32_at(event, 4),
        timestamp_ns: u64_at(event, 8),
        seq,
    };
    let data = event.get(PROC_EVENT_HDR_LEN..).unwrap_or_default();
    let (name, needed) = match what {
        PROC_EVENT_NONE => ("ack event", 4),
        PROC_EVENT_FORK => ("fork event", 16),
        PROC_EVENT_EXEC => ("exec event", 8),
        PROC_EVENT_UID => ("uid event", 16),
        PROC_EVENT_GID => ("gid event", 16),
        PROC_EVENT_SID => ("sid event", 8),
        PROC_EVENT_PTRACE => ("ptrace event", 16),
        PROC_EVENT_COMM => ("comm event", 8 + COMM_LEN),
        PROC_EVENT_COREDUMP => ("coredump event", 8),
        PROC_EVENT_EXIT => ("exit event", 16),
        _ => return Ok(ProcEvent::Unknown { meta, what }),
    };
    if data.len() < needed {
        return Err(truncated(name, PROC_EVENT_HDR_LEN + needed));
    }
    let u = |at: usize| u32_at(data, at);
    let id = |at: usize| ProcId {
        pid: u32_at(data, at),
        tgid: u32_at(data, at + 4),
    };
    let optional_id = |at: usize| (data.len() >= at + 8).then(|| id(at));
    Ok(match what {
        PROC_EVENT_NONE => ProcEvent::Ack {
            meta,
            ack,
            err: u(0),
        },
        PROC_EVENT_FORK => ProcEvent::Fork {
            meta,
            parent: id(0),
            child: id(8),
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            meta,
            process: id(0),
        },
        PROC_EVENT_UID => ProcEvent::Uid {
            meta,
            process: id(0),
            ruid: u(8),
            euid: u(12),
        },
        PROC_EVENT_GID => ProcEvent::Gid {
            meta,
            process: id(0),
            rgid: u(8),
            egid: u(12),
        },
        PROC_EVENT_SID => ProcEvent::Sid {
            meta,
            process: id(0),
        },
        PROC_EVENT_PTRACE => ProcEvent::Ptrace {
            meta,
            process: id(0),
            tracer: id(8),
        },
        PROC_EVENT_COMM => ProcEvent::Comm {
            meta,
            process: id(0),
            comm: c_string(data.get(8..8 + COMM_LEN).unwrap_or_default()),
        },
        PROC_EVENT_COREDUMP => ProcEvent::Coredump {
            meta,
            process: id(0),
            parent: optional_id(8),
        },
        // Only PROC_EVENT_EXIT is left: every other `what` returned above.
        _ => ProcEvent::Exit {
            meta,
            process: id(0),
            exit_code: u(8),
            exit_signal: u(12),
            parent: optional_id(16),
        },
    })
}

/// Builds the request that subscribes to (`PROC_CN_MCAST_LISTEN`, 1) or
/// unsubscribes from (`PROC_CN_MCAST_IGNORE`, 2) the process events: an
/// `nlmsghdr` of type `NLMSG_DONE`, a `cn_msg` and the 4-byte operation.
pub(crate) fn mcast_request(op: u32, seq: u32, ack: u32, port_id: u32) -> Vec<u8> {
    const LEN: usize = NLMSG_HDR_LEN + CN_MSG_LEN + 4;
    let mut out = Vec::with_capacity(LEN);
    #[allow(clippy::cast_possible_truncation)] // 40 fits every integer type
    out.extend_from_slice(&(LEN as u32).to_ne_bytes());
    out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes()); // flags
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&port_id.to_ne_bytes());
    out.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    out.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&ack.to_ne_bytes());
    out.extend_from_slice(&4u16.to_ne_bytes()); // len of the operation
    out.extend_from_slice(&0u16.to_ne_bytes()); // flags
    out.extend_from_slice(&op.to_ne_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    const META: EventMeta = EventMeta {
        cpu: 1,
        timestamp_ns: 123_456_789_012,
        seq: 42,
    };

    /// Appends one netlink message holding a `cn_msg` and a `proc_event` with
    /// `what` and the raw union `data` (padded to the kernel's 24 bytes when
    /// `pad`).
    fn push_raw(out: &mut Vec<u8>, meta: EventMeta, ack: u32, what: u32, data: &[u8], pad: bool) {
        let mut data = data.to_vec();
        if pad && data.len() < 24 {
            data.resize(24, 0);
        }
        let event_len = PROC_EVENT_HDR_LEN + data.len();
        let len = NLMSG_HDR_LEN + CN_MSG_LEN + event_len;
        let start = out.len();
        out.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        out.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&meta.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        out.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        out.extend_from_slice(&meta.seq.to_ne_bytes());
        out.extend_from_slice(&ack.to_ne_bytes());
        out.extend_from_slice(&u16::try_from(event_len).unwrap().to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&what.to_ne_bytes());
        out.extend_from_slice(&meta.cpu.to_ne_bytes());
        out.extend_from_slice(&meta.timestamp_ns.to_ne_bytes());
        out.extend_from_slice(&data);
        assert_eq!(out.len() - start, len);
        out.resize(start + nlmsg_align(len), 0);
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// The test-only encoder: the inverse of `decode` for one event.
    fn encode_into(out: &mut Vec<u8>, event: &ProcEvent) {
        let m = *event.meta();
        let id = |p: &ProcId| [p.pid, p.tgid];
        match event {
            ProcEvent::Ack { ack, err, .. } => {
                push_raw(out, m, *ack, PROC_EVENT_NONE, &words(&[*err]), true);
            }
            ProcEvent::Fork { parent, child, .. } => {
                push_raw(
                    out,
                    m,
                    0,
                    PROC_EVENT_FORK,
                    &words(&[id(parent), id(child)].concat()),
                    true,
                );
            }
            ProcEvent::Exec { process, .. } => {
                push_raw(out, m, 0, PROC_EVENT_EXEC, &words(&id(process)), true);
            }
            ProcEvent::Uid {
                process,
                ruid,
                euid,
                ..
            } => {
                push_raw(
                    out,
                    m,
                    0,
                    PROC_EVENT_UID,
                    &words(&[id(process).as_slice(), &[*ruid, *euid]].concat()),
                    true,
                );
            }
            ProcEvent::Gid {
                process,
                rgid,
                egid,
                ..
            } => {
                push_raw(
                    out,
                    m,
                    0,
                    PROC_EVENT_GID,
                    &words(&[id(process).as_slice(), &[*rgid, *egid]].concat()),
                    true,
                );
            }
            ProcEvent::Sid { process, .. } => {
                push_raw(out, m, 0, PROC_EVENT_SID, &words(&id(process)), true);
            }
            ProcEvent::Ptrace {
                process, tracer, ..
            } => {
                push_raw(
                    out,
                    m,
                    0,
                    PROC_EVENT_PTRACE,
                    &words(&[id(process), id(tracer)].concat()),
                    true,
                );
            }
            ProcEvent::Comm { process, comm, .. } => {
                let mut data = words(&id(process));
                let mut name = comm.as_bytes().to_vec();
                name.resize(COMM_LEN, 0);
                data.extend_from_slice(&name);
                push_raw(out, m, 0, PROC_EVENT_COMM, &data, true);
            }
            ProcEvent::Coredump {
                process, parent, ..
            } => {
                let mut data = words(&id(process));
                if let Some(p) = parent {
                    data.extend(words(&id(p)));
                }
                push_raw(out, m, 0, PROC_EVENT_COREDUMP, &data, parent.is_some());
            }
            ProcEvent::Exit {
                process,
                exit_code,
                exit_signal,
                parent,
                ..
            } => {
                let mut data =
                    words(&[id(process).as_slice(), &[*exit_code, *exit_signal]].concat());
                if let Some(p) = parent {
                    data.extend(words(&id(p)));
                }
                push_raw(out, m, 0, PROC_EVENT_EXIT, &data, parent.is_some());
            }
            ProcEvent::Unknown { what, .. } => push_raw(out, m, 0, *what, &[], true),
        }
    }

    fn encode(events: &[ProcEvent]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            encode_into(&mut out, e);
        }
        out
    }

    /// An exit of pid 4242 (parent 1) with status 3 << 8, as the kernel sends
    /// it on `x86_64`: 16 + 20 + 40 = 76 bytes.
    #[rustfmt::skip]
    const RECORDED_EXIT: [u8; 76] = [
        // nlmsghdr: len 76, type NLMSG_DONE, flags 0, seq 7, pid 0
        76, 0, 0, 0,  3, 0,  0, 0,  7, 0, 0, 0,  0, 0, 0, 0,
        // cn_msg: idx 1, val 1, seq 7, ack 0, len 40, flags 0
        1, 0, 0, 0,  1, 0, 0, 0,  7, 0, 0, 0,  0, 0, 0, 0,  40, 0,  0, 0,
        // proc_event: what EXIT, cpu 1, timestamp 0x0102030405060708
        0, 0, 0, 0x80,  1, 0, 0, 0,  8, 7, 6, 5, 4, 3, 2, 1,
        // exit: pid 4242, tgid 4242, exit_code 0x300, exit_signal 17, parent 1/1
        0x92, 0x10, 0, 0,  0x92, 0x10, 0, 0,  0, 3, 0, 0,  17, 0, 0, 0,  1, 0, 0, 0,  1, 0, 0, 0,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn recorded_exit_bytes_decode() {
        let events = decode(&RECORDED_EXIT).unwrap();
        assert_eq!(
            events,
            vec![ProcEvent::Exit {
                meta: EventMeta {
                    cpu: 1,
                    timestamp_ns: 0x0102_0304_0506_0708,
                    seq: 7
                },
                process: ProcId {
                    pid: 4242,
                    tgid: 4242
                },
                exit_code: 0x300,
                exit_signal: 17,
                parent: Some(ProcId { pid: 1, tgid: 1 }),
            }]
        );
        assert_eq!(events[0].exit_status(), Some(ExitStatus::Exited(3)));
    }

    #[test]
    fn kernel_message_is_76_bytes() {
        let mut out = Vec::new();
        encode_into(
            &mut out,
            &ProcEvent::Exec {
                meta: META,
                process: ProcId { pid: 5, tgid: 5 },
            },
        );
        assert_eq!(out.len(), 76);
    }

    fn pid(pid: u32, tgid: u32) -> ProcId {
        ProcId { pid, tgid }
    }

    fn every_kind() -> Vec<ProcEvent> {
        vec![
            ProcEvent::Ack {
                meta: EventMeta {
                    cpu: u32::MAX,
                    ..META
                },
                ack: 2,
                err: 0,
            },
            ProcEvent::Fork {
                meta: META,
                parent: pid(100, 100),
                child: pid(101, 101),
            },
            ProcEvent::Fork {
                meta: META,
                parent: pid(100, 100),
                child: pid(102, 100),
            },
            ProcEvent::Exec {
                meta: META,
                process: pid(101, 101),
            },
            ProcEvent::Uid {
                meta: META,
                process: pid(101, 101),
                ruid: 1000,
                euid: 0,
            },
            ProcEvent::Gid {
                meta: META,
                process: pid(101, 101),
                rgid: 100,
                egid: 0,
            },
            ProcEvent::Sid {
                meta: META,
                process: pid(101, 101),
            },
            ProcEvent::Ptrace {
                meta: META,
                process: pid(101, 101),
                tracer: pid(7, 7),
            },
            ProcEvent::Comm {
                meta: META,
                process: pid(101, 101),
                comm: "kworker/0:1".into(),
            },
            ProcEvent::Comm {
                meta: META,
                process: pid(101, 101),
                comm: "exactly15bytes!".into(),
            },
            ProcEvent::Coredump {
                meta: META,
                process: pid(101, 101),
                parent: Some(pid(100, 100)),
            },
            ProcEvent::Exit {
                meta: META,
                process: pid(101, 101),
                exit_code: 9,
                exit_signal: 17,
                parent: Some(pid(100, 100)),
            },
            ProcEvent::Unknown {
                meta: META,
                what: 0x400,
            },
        ]
    }

    #[test]
    fn each_event_type_decodes_alone() {
        for event in every_kind() {
            let bytes = encode(std::slice::from_ref(&event));
            assert_eq!(decode(&bytes).unwrap(), vec![event]);
        }
    }

    #[test]
    fn multi_message_datagram_decodes_in_order() {
        let events = every_kind();
        let bytes = encode(&events);
        assert_eq!(decode(&bytes).unwrap(), events);
    }

    #[test]
    fn last_message_may_be_unpadded() {
        let mut bytes = encode(&[ProcEvent::Exec {
            meta: META,
            process: pid(1, 1),
        }]);
        let len = bytes.len() + 1;
        bytes[..4].copy_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        bytes.push(0xee);
        assert_eq!(decode(&bytes).unwrap().len(), 1);
    }

    #[test]
    fn comm_is_nul_trimmed_lossy_and_at_most_sixteen_bytes() {
        let cases: [(&[u8], &str); 2] = [
            (b"ab\xffc\0junk\0\0\0\0\0\0\0", "ab\u{fffd}c"),
            // Without a NUL all sixteen bytes are the name.
            (b"0123456789abcdef", "0123456789abcdef"),
        ];
        for (raw, want) in cases {
            let mut data = words(&[9, 9]);
            data.extend_from_slice(raw);
            let mut bytes = Vec::new();
            push_raw(&mut bytes, META, 0, PROC_EVENT_COMM, &data, true);
            let events = decode(&bytes).unwrap();
            let ProcEvent::Comm { comm, .. } = &events[0] else {
                panic!("{events:?}")
            };
            assert_eq!(comm, want, "{raw:?}");
        }
    }

    #[test]
    fn exit_without_parent_fields_has_no_parent() {
        let mut bytes = Vec::new();
        push_raw(
            &mut bytes,
            META,
            0,
            PROC_EVENT_EXIT,
            &words(&[5, 5, 0, 17]),
            false,
        );
        let events = decode(&bytes).unwrap();
        assert!(matches!(
            events[0],
            ProcEvent::Exit {
                parent: None,
                exit_code: 0,
                ..
            }
        ));
    }

    #[test]
    fn unknown_what_is_an_event_not_an_error() {
        let mut bytes = Vec::new();
        push_raw(&mut bytes, META, 0, 0x2000_0000, &[], true);
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![ProcEvent::Unknown {
                meta: META,
                what: 0x2000_0000
            }]
        );
    }

    fn control(message_type: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        out.extend_from_slice(&message_type.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out.resize(nlmsg_align(len), 0);
        out
    }

    #[test]
    fn noop_empty_done_and_zero_error_yield_nothing() {
        let mut bytes = control(NLMSG_NOOP, &[]);
        bytes.extend(control(NLMSG_DONE, &[]));
        bytes.extend(control(NLMSG_ERROR, &[0; 20]));
        bytes.extend(encode(&[ProcEvent::Sid {
            meta: META,
            process: pid(3, 3),
        }]));
        assert_eq!(decode(&bytes).unwrap().len(), 1);
    }

    #[test]
    fn netlink_error_is_reported_and_decoding_goes_on() {
        let mut bytes = control(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        bytes.extend(encode(&[ProcEvent::Sid {
            meta: META,
            process: pid(3, 3),
        }]));
        let items: Vec<_> = messages(&bytes).collect();
        assert_eq!(
            items[0],
            Err(DecodeError::Netlink {
                offset: 0,
                errno: 1
            })
        );
        assert!(items[1].is_ok());
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Netlink {
                offset: 0,
                errno: 1
            })
        );
    }

    #[test]
    fn overrun_and_reserved_types_are_errors() {
        assert_eq!(
            decode(&control(NLMSG_OVERRUN, &[])),
            Err(DecodeError::Overrun { offset: 0 })
        );
        assert_eq!(
            decode(&control(7, &[])),
            Err(DecodeError::UnexpectedMessageType {
                offset: 0,
                message_type: 7
            })
        );
        assert!(matches!(
            decode(&control(NLMSG_ERROR, &[1, 2])),
            Err(DecodeError::Truncated {
                what: "nlmsgerr",
                ..
            })
        ));
    }

    #[test]
    fn truncated_header_is_a_framing_error() {
        let bytes = encode(&[ProcEvent::Sid {
            meta: META,
            process: pid(3, 3),
        }]);
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes[..10]);
        let items: Vec<_> = messages(&two).collect();
        assert!(items[0].is_ok());
        let err = items[1].clone().unwrap_err();
        assert_eq!(
            err,
            DecodeError::HeaderTruncated {
                offset: 76,
                available: 10
            }
        );
        assert!(err.is_framing());
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn every_truncation_of_a_datagram_is_an_error_not_a_panic() {
        let bytes = encode(&every_kind());
        for cut in 1..bytes.len() {
            let result = decode(&bytes[..cut]);
            // A cut exactly at a message boundary is a valid shorter datagram.
            if result.is_ok() {
                assert_eq!(cut % 76, 0, "cut {cut}");
            }
        }
    }

    #[test]
    fn bad_lengths_are_reported() {
        let mut bytes = encode(&[ProcEvent::Exec {
            meta: META,
            process: pid(1, 1),
        }]);
        bytes[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::BadMessageLength { length: 8, .. })
        ));
        bytes[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::BadMessageLength {
                length: 1000,
                available: 76,
                ..
            })
        ));

        let mut bytes = encode(&[ProcEvent::Exec {
            meta: META,
            process: pid(1, 1),
        }]);
        bytes[32..34].copy_from_slice(&41u16.to_ne_bytes()); // cn_msg.len
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::ConnectorLength {
                offset: 0,
                declared: 41,
                available: 40
            })
        );
        bytes[32..34].copy_from_slice(&12u16.to_ne_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Truncated {
                what: "proc_event",
                needed: 16,
                available: 12,
                ..
            })
        ));
        bytes[32..34].copy_from_slice(&20u16.to_ne_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Truncated {
                what: "exec event",
                needed: 24,
                available: 20,
                ..
            })
        ));

        let mut bytes = encode(&[ProcEvent::Exec {
            meta: META,
            process: pid(1, 1),
        }]);
        bytes[16..20].copy_from_slice(&2u32.to_ne_bytes()); // cn_msg.id.idx
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnexpectedConnectorId {
                offset: 0,
                idx: 2,
                val: 1
            })
        );

        let bytes = control(NLMSG_DONE, &[1, 2, 3]);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Truncated { what: "cn_msg", .. })
        ));
    }

    #[test]
    fn error_messages_are_lowercase() {
        let err = DecodeError::HeaderTruncated {
            offset: 3,
            available: 2,
        };
        assert_eq!(
            err.to_string(),
            "netlink header truncated at offset 3: 2 bytes left, need 16"
        );
    }

    #[test]
    fn exit_status_decodes_wait_statuses() {
        assert_eq!(exit_status(0), ExitStatus::Exited(0));
        assert_eq!(exit_status(3 << 8), ExitStatus::Exited(3));
        assert_eq!(exit_status(255 << 8), ExitStatus::Exited(255));
        assert_eq!(
            exit_status(9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            exit_status(0x80 | 0x0b),
            ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(exit_status(0x137f), ExitStatus::Other(0x137f));
        assert_eq!(exit_status(0x1_0000), ExitStatus::Other(0x1_0000));
    }

    #[test]
    fn mcast_request_decodes_as_a_connector_message() {
        let req = mcast_request(1, 5, 6, 0);
        assert_eq!(req.len(), 40);
        // Four bytes of payload are too short for a proc_event: the decoder
        // says so rather than misreading it.
        assert!(matches!(
            decode(&req),
            Err(DecodeError::Truncated {
                what: "proc_event",
                available: 4,
                ..
            })
        ));
    }

    fn arb_id() -> impl Strategy<Value = ProcId> {
        (any::<u32>(), any::<u32>()).prop_map(|(pid, tgid)| ProcId { pid, tgid })
    }

    fn arb_event() -> impl Strategy<Value = ProcEvent> {
        let meta =
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(cpu, timestamp_ns, seq)| {
                EventMeta {
                    cpu,
                    timestamp_ns,
                    seq,
                }
            });
        let known = [
            PROC_EVENT_NONE,
            PROC_EVENT_FORK,
            PROC_EVENT_EXEC,
            PROC_EVENT_UID,
            PROC_EVENT_GID,
            PROC_EVENT_SID,
            PROC_EVENT_PTRACE,
            PROC_EVENT_COMM,
            PROC_EVENT_COREDUMP,
            PROC_EVENT_EXIT,
        ];
        prop_oneof![
            (meta.clone(), any::<u32>(), any::<u32>())
                .prop_map(|(meta, ack, err)| ProcEvent::Ack { meta, ack, err }),
            (meta.clone(), arb_id(), arb_id()).prop_map(|(meta, parent, child)| ProcEvent::Fork {
                meta,
                parent,
                child
            }),
            (meta.clone(), arb_id()).prop_map(|(meta, process)| ProcEvent::Exec { meta, process }),
            (meta.clone(), arb_id(), any::<u32>(), any::<u32>()).prop_map(
                |(meta, process, ruid, euid)| ProcEvent::Uid {
                    meta,
                    process,
                    ruid,
                    euid
                }
            ),
            (meta.clone(), arb_id(), any::<u32>(), any::<u32>()).prop_map(
                |(meta, process, rgid, egid)| ProcEvent::Gid {
                    meta,
                    process,
                    rgid,
                    egid
                }
            ),
            (meta.clone(), arb_id()).prop_map(|(meta, process)| ProcEvent::Sid { meta, process }),
            (meta.clone(), arb_id(), arb_id()).prop_map(|(meta, process, tracer)| {
                ProcEvent::Ptrace {
                    meta,
                    process,
                    tracer,
                }
            }),
            (meta.clone(), arb_id(), "[a-zA-Z0-9 ._/:-]{0,15}").prop_map(
                |(meta, process, comm)| ProcEvent::Comm {
                    meta,
                    process,
                    comm
                }
            ),
            (meta.clone(), arb_id(), proptest::option::of(arb_id())).prop_map(
                |(meta, process, parent)| ProcEvent::Coredump {
                    meta,
                    process,
                    parent
                }
            ),
            (
                meta.clone(),
                arb_id(),
                any::<u32>(),
                any::<u32>(),
                proptest::option::of(arb_id())
            )
                .prop_map(|(meta, process, exit_code, exit_signal, parent)| {
                    ProcEvent::Exit {
                        meta,
                        process,
                        exit_code,
                        exit_signal,
                        parent,
                    }
                }),
            (
                meta,
                any::<u32>().prop_filter("unknown what", move |w| !known.contains(w))
            )
                .prop_map(|(meta, what)| ProcEvent::Unknown { meta, what }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = messages(&bytes).count();
        }

        #[test]
        fn decode_never_panics_on_mutated_datagrams(
            events in proptest::collection::vec(arb_event(), 1..6),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&events);
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(events in proptest::collection::vec(arb_event(), 0..8)) {
            prop_assert_eq!(decode(&encode(&events)).unwrap(), events);
        }
    }
}
