//! One ring buffer record of `process.bpf.c` → a typed [`Record`].
//!
//! Pure and total: any byte slice gives a record or a [`DecodeError`],
//! never a panic. The layout is `struct event` / `struct exec_event` of
//! `crates/procmond/ebpf/process.bpf.c` (little endian, no padding); keep the
//! two in step.

use thiserror::Error;

use crate::wire::{c_string, u32_at, u64_at};

// The record kinds (`EV_*`) and exec flags (`F_*`) of process.bpf.c.
const KIND_EXEC: u32 = 1;
const KIND_FORK: u32 = 2;
const KIND_EXIT: u32 = 3;
const F_ARGV_TRUNCATED: u32 = 0x1; // argv longer than ARGV_MAX: a prefix came
const F_FILENAME_TRUNCATED: u32 = 0x2; // the filename longer than FILENAME_MAX - 1
const F_SETUID: u32 = 0x4; // the set-user-ID bit gave the exec a new euid
const F_SETGID: u32 = 0x8; // the set-group-ID bit gave the exec a new egid
const F_ARGV_UNREADABLE: u32 = 0x10; // the kernel could not read the new argv
const F_EXE_TRUNCATED: u32 = 0x20; // exe holds only the path's last components
const F_EXE_UNLINKED: u32 = 0x40; // the executable had no name left (deleted, memfd)

/// The most argv bytes a record carries (`ARGV_MAX`).
pub const ARGV_MAX: usize = 4096;
/// The filename buffer, NUL included (`FILENAME_MAX_LEN`).
pub const FILENAME_MAX: usize = 512;
/// The resolved executable path buffer (`EXE_MAX`).
pub const EXE_MAX: usize = 1024;
/// `sizeof(struct event)`: a fork or exit record.
pub const EVENT_SIZE: usize = 72;
/// `sizeof(struct exec_event)` without its argv.
pub const EXEC_FIXED_SIZE: usize = EVENT_SIZE + 24 + FILENAME_MAX + EXE_MAX;

const COMM_LEN: usize = 16;

/// What every record says of its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// The real parent's process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective group id.
    pub egid: u32,
    /// For an exit: the raw wait status (`code << 8`, or the signal).
    pub exit_code: i32,
    /// `CLOCK_MONOTONIC` time of the event, in nanoseconds.
    pub timestamp_ns: u64,
    /// The process's start (`start_boottime`, ns since boot): what `/proc`'s
    /// `starttime` is in ticks.
    pub start_ns: u64,
    /// The task's short name (`comm`).
    pub comm: String,
}

impl TaskRecord {
    /// The start time in clock ticks, as `/proc/<pid>/stat` gives it
    /// (`nsec_to_clock_t`), hence as [`ProcessKey`](collector_core::ProcessKey)s hold it.
    pub fn start_ticks(&self, ticks_per_sec: u64) -> u64 {
        collector_core::procfs::boot_ns_to_ticks(self.start_ns, ticks_per_sec)
    }
}

/// An exec, with what the kernel knew of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // the kernel's flags, one field each
pub struct ExecRecord {
    /// The process after the exec (its main thread).
    pub task: TaskRecord,
    /// The thread id that called execve (differs from `task.pid` when a
    /// thread other than the main one exec'd).
    pub old_pid: u32,
    /// How many arguments the kernel counted.
    pub argc: u32,
    /// The filename as executed (the path given to execve, or `/dev/fd/N`
    /// for fexecve), lossily UTF-8.
    pub filename: String,
    /// The filename did not fit in [`FILENAME_MAX`] - 1 bytes: a prefix.
    pub filename_truncated: bool,
    /// The executable's path, resolved by the kernel from the opened file
    /// (symlinks followed, as `/proc/<pid>/exe` says it; `/memfd:NAME` for a
    /// memfd); empty when it could not be read.
    pub exe: String,
    /// `exe` is only the path's last components (too deep or too long).
    pub exe_truncated: bool,
    /// The executable had no name left when it ran: deleted, or a memfd.
    pub exe_unlinked: bool,
    /// The arguments, lossily UTF-8. When truncated, the last one may be cut.
    pub argv: Vec<String>,
    /// Fewer than all arguments, or a cut last one: argv was longer than
    /// [`ARGV_MAX`] bytes or could not be read.
    pub argv_truncated: bool,
    /// The set-user-ID bit took effect (a new effective uid: the file's owner).
    pub setuid: bool,
    /// The set-group-ID bit took effect.
    pub setgid: bool,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A new process (not a thread): `task` is the child.
    Fork(TaskRecord),
    /// A successful exec.
    Exec(Box<ExecRecord>),
    /// The last thread of a process left: the process ended.
    Exit(TaskRecord),
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its kind needs.
    #[error("record of kind {kind} is {len} bytes, needs {need}")]
    Short {
        /// The kind (0 when even that was missing).
        kind: u32,
        /// Its length.
        len: usize,
        /// What the kind needs.
        need: usize,
    },
    /// A kind the program does not send.
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// A length field larger than its buffer.
    #[error("record field {field} says {value}, more than fits")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// The `len` bytes at `start` of `b`, refused as [`DecodeError::BadLength`]
/// of `field` when `len` is above `max` or runs past the record.
fn bounded<'a>(
    b: &'a [u8],
    start: usize,
    len: u32,
    max: usize,
    field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= max)
        .and_then(|n| b.get(start..start + n))
        .ok_or(DecodeError::BadLength { field, value: len })
}

fn task(b: &[u8]) -> TaskRecord {
    TaskRecord {
        pid: u32_at(b, 8),
        tgid: u32_at(b, 12),
        ppid: u32_at(b, 16),
        uid: u32_at(b, 20),
        euid: u32_at(b, 24),
        gid: u32_at(b, 28),
        egid: u32_at(b, 32),
        exit_code: i32::from_ne_bytes(u32_at(b, 36).to_ne_bytes()),
        timestamp_ns: u64_at(b, 40),
        start_ns: u64_at(b, 48),
        comm: c_string(b.get(56..56 + COMM_LEN).unwrap_or_default()),
    }
}

/// Splits NUL-terminated strings; whether the last one was cut (no NUL).
fn split_args(b: &[u8]) -> (Vec<String>, bool) {
    if b.is_empty() {
        return (Vec::new(), false);
    }
    let (whole, cut) = match b.split_last() {
        Some((0, init)) => (init, false),
        _ => (b, true),
    };
    let args = whole
        .split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    (args, cut)
}

/// Decodes one ring buffer record.
///
/// # Errors
/// A record too short for its kind, of an unknown kind, or whose lengths
/// exceed their buffers.
pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
    if b.len() < 4 {
        return Err(DecodeError::Short {
            kind: 0,
            len: b.len(),
            need: EVENT_SIZE,
        });
    }
    let kind = u32_at(b, 0);
    let need = match kind {
        KIND_FORK | KIND_EXIT => EVENT_SIZE,
        KIND_EXEC => EXEC_FIXED_SIZE,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if b.len() < need {
        return Err(DecodeError::Short {
            kind,
            len: b.len(),
            need,
        });
    }
    let t = task(b);
    match kind {
        KIND_FORK => return Ok(Record::Fork(t)),
        KIND_EXIT => return Ok(Record::Exit(t)),
        _ => {}
    }
    let flags = u32_at(b, 4);
    let argc = u32_at(b, EVENT_SIZE);
    let argv_len = u32_at(b, EVENT_SIZE + 4);
    let filename_len = u32_at(b, EVENT_SIZE + 8);
    let old_pid = u32_at(b, EVENT_SIZE + 12);
    let exe_len = u32_at(b, EVENT_SIZE + 16);
    let argv_bytes = bounded(b, EXEC_FIXED_SIZE, argv_len, ARGV_MAX, "argv_len")?;
    let filename_start = EVENT_SIZE + 24;
    let exe_start = filename_start + FILENAME_MAX;
    let exe = bounded(b, exe_start, exe_len, EXE_MAX, "exe_len")?;
    // Below the buffer's size: the kernel's copy ends with its NUL.
    let filename = bounded(
        b,
        filename_start,
        filename_len,
        FILENAME_MAX - 1,
        "filename_len",
    )?;
    let (argv, cut) = split_args(argv_bytes);
    let short = u32::try_from(argv.len()).map_or(true, |n| n < argc);
    Ok(Record::Exec(Box::new(ExecRecord {
        task: t,
        old_pid,
        argc,
        filename: String::from_utf8_lossy(filename).into_owned(),
        filename_truncated: flags & F_FILENAME_TRUNCATED != 0,
        exe: String::from_utf8_lossy(exe).into_owned(),
        exe_truncated: flags & F_EXE_TRUNCATED != 0,
        exe_unlinked: flags & F_EXE_UNLINKED != 0,
        argv,
        argv_truncated: cut || short || flags & (F_ARGV_TRUNCATED | F_ARGV_UNREADABLE) != 0,
        setuid: flags & F_SETUID != 0,
        setgid: flags & F_SETGID != 0,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn header(kind: u32, flags: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [kind, flags, 10, 10, 1, 1000, 0, 1000, 1000, 256] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&5_000u64.to_le_bytes());
        b.extend_from_slice(&2_500_000_000u64.to_le_bytes());
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"true");
        b.extend_from_slice(&comm);
        assert_eq!(b.len(), EVENT_SIZE);
        b
    }

    fn exec(flags: u32, argc: u32, filename: &[u8], argv: &[u8]) -> Vec<u8> {
        let exe = b"/usr/bin/true";
        let mut b = header(KIND_EXEC, flags);
        let len = |s: &[u8]| u32::try_from(s.len()).unwrap();
        for v in [argc, len(argv), len(filename), 11, len(exe), 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut name = [0u8; FILENAME_MAX];
        name[..filename.len()].copy_from_slice(filename);
        b.extend_from_slice(&name);
        let mut path = [0u8; EXE_MAX];
        path[..exe.len()].copy_from_slice(exe);
        b.extend_from_slice(&path);
        b.extend_from_slice(argv);
        b
    }

    #[test]
    fn fork_and_exit_fields_are_at_their_c_offsets() {
        let Record::Exit(t) = decode(&header(KIND_EXIT, 0)).unwrap() else {
            panic!("not an exit")
        };
        assert_eq!((t.pid, t.tgid, t.ppid, t.uid, t.euid), (10, 10, 1, 1000, 0));
        assert_eq!((t.gid, t.egid, t.exit_code), (1000, 1000, 256));
        assert_eq!(
            (t.timestamp_ns, t.start_ns, t.comm.as_str()),
            (5_000, 2_500_000_000, "true")
        );
        // 2.5 s at USER_HZ 100 is 250 ticks, as /proc says.
        assert_eq!(t.start_ticks(100), 250);
        assert!(matches!(decode(&header(KIND_FORK, 0)), Ok(Record::Fork(_))));
    }

    #[test]
    fn exec_argv_is_split_and_a_cut_or_short_argv_is_flagged() {
        let Record::Exec(e) = decode(&exec(F_SETUID, 3, b"/bin/true", b"true\0\0x y\0")).unwrap()
        else {
            panic!("not an exec")
        };
        assert_eq!(e.argv, ["true", "", "x y"]);
        assert_eq!((e.filename.as_str(), e.old_pid), ("/bin/true", 11));
        assert_eq!(e.exe, "/usr/bin/true");
        assert!(!e.exe_truncated && !e.exe_unlinked);
        assert!(!e.argv_truncated && e.setuid && !e.setgid && !e.filename_truncated);
        // No final NUL: the last argument was cut.
        let Record::Exec(e) = decode(&exec(0, 2, b"/x", b"a\0bb")).unwrap() else {
            panic!()
        };
        assert!(e.argv_truncated);
        assert_eq!(e.argv, ["a", "bb"]);
        // Fewer arguments than the kernel counted.
        let Record::Exec(e) = decode(&exec(0, 5, b"/x", b"a\0")).unwrap() else {
            panic!()
        };
        assert!(e.argv_truncated);
        // The kernel's flag alone.
        let Record::Exec(e) = decode(&exec(F_ARGV_TRUNCATED, 1, b"/x", b"a\0")).unwrap() else {
            panic!()
        };
        assert!(e.argv_truncated);
    }

    #[test]
    fn bad_lengths_and_kinds_are_errors() {
        assert!(matches!(
            decode(&[]),
            Err(DecodeError::Short { kind: 0, .. })
        ));
        assert_eq!(decode(&header(9, 0)), Err(DecodeError::UnknownKind(9)));
        let mut short = exec(0, 1, b"/x", b"a\0");
        short.truncate(EXEC_FIXED_SIZE + 1);
        assert!(matches!(
            decode(&short),
            Err(DecodeError::BadLength {
                field: "argv_len",
                ..
            })
        ));
        let mut b = exec(0, 1, b"/x", b"a\0");
        b[EVENT_SIZE + 8..EVENT_SIZE + 12].copy_from_slice(&512u32.to_le_bytes());
        assert!(matches!(
            decode(&b),
            Err(DecodeError::BadLength {
                field: "filename_len",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_err_without_panic(b in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode(&b);
        }

        #[test]
        fn any_exec_body_decodes_within_bounds(
            flags in any::<u32>(),
            argc in any::<u32>(),
            argv in proptest::collection::vec(any::<u8>(), 0..=ARGV_MAX),
            name in proptest::collection::vec(1u8..=255, 0..FILENAME_MAX),
        ) {
            let Ok(Record::Exec(e)) = decode(&exec(flags, argc, &name, &argv)) else {
                return Err(TestCaseError::fail("a well-formed exec did not decode"));
            };
            prop_assert!(e.argv.iter().map(String::len).sum::<usize>() <= 3 * ARGV_MAX);
            prop_assert_eq!(e.setuid, flags & F_SETUID != 0);
            if flags & (F_ARGV_TRUNCATED | F_ARGV_UNREADABLE) != 0 {
                prop_assert!(e.argv_truncated);
            }
        }
    }
}
