//! Pure parsers of `/proc`, shared by every collector: bytes in, values out.
//!
//! Nothing here reads a file (but [`KernelUnits::current`], which asks
//! `sysconf`, and [`pids`], which lists a directory), so every parser is unit- and property-tested without
//! privileges, and none panics on any input: it returns a [`ParseError`]
//! naming the file and what was wrong.
//!
//! - [`parse_pid_stat`]: `/proc/<pid>/stat`, borrowing the command name
//!   (nothing allocated); [`PidStat::into_owned`] when it must outlive the
//!   buffer.
//! - [`parse_schedstat_runtime`]: the run time in `/proc/<pid>/schedstat`.
//! - [`raise_open_file_limit`], [`file_budget`], [`pread_whole`] and
//!   [`FULL_READ_EVERY`]: for a reader that keeps files open between passes.
//! - [`status_lines`] and [`parse_status_ids`]: `/proc/<pid>/status`.
//! - [`parse_btime`]: the boot time in `/proc/stat`; [`KernelUnits`] and
//!   [`ticks_to_duration`]: clock ticks and pages into time and bytes.
//! - [`parse_u64`]: the allocation-free decimal the parsers read with.
//! - [`pids`]: the processes present in a `/proc`; [`process_key`]: the
//!   key of one of them, from its stat.
//!
//! ```
//! use collector_core::procfs::{parse_pid_stat, ticks_to_duration};
//!
//! let stat = parse_pid_stat(b"42 (a (b) c) S 1 42 42 0 -1 0 0 0 0 0 250 50 0 0 20 0 3 0 1000 0 12")?;
//! assert_eq!((stat.pid, stat.comm, stat.state, stat.ppid), (42, &b"a (b) c"[..], 'S', 1));
//! assert_eq!(ticks_to_duration(stat.utime + stat.stime, 100).as_secs(), 3);
//! # Ok::<(), collector_core::procfs::ParseError>(())
//! ```

use std::fmt;
use std::time::Duration;

/// A parse failure: which file, and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {file}: {reason}")]
pub struct ParseError {
    /// The file, as the kernel names it (`/proc/<pid>/stat`, `cpu.stat`, ...).
    pub file: &'static str,
    /// What was wrong.
    pub reason: &'static str,
}

impl ParseError {
    /// `file` was malformed: `reason`.
    pub const fn new(file: &'static str, reason: &'static str) -> Self {
        Self { file, reason }
    }
}

const fn err(file: &'static str, reason: &'static str) -> ParseError {
    ParseError::new(file, reason)
}

/// An unsigned decimal, without allocating; `None` on anything else or on
/// overflow.
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// Whitespace-separated fields, without allocating.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

/// The fields of `/proc/<pid>/stat` collectors use. [`parse_pid_stat`]
/// borrows the command name from the bytes read (`PidStat<&[u8]>`);
/// [`into_owned`](PidStat::into_owned) gives a `PidStat<String>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStat<C = String> {
    /// Process id (field 1).
    pub pid: u32,
    /// `comm`, without its parentheses (field 2); at most 15 bytes, any of
    /// them spaces or parentheses.
    pub comm: C,
    /// State letter (`R`, `S`, `D`, `Z`, ...) (field 3).
    pub state: char,
    /// Parent pid (field 4).
    pub ppid: u32,
    /// Kernel flags of the task (field 9), `PF_*`.
    pub flags: u64,
    /// User-mode CPU time in clock ticks (field 14).
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks (field 15).
    pub stime: u64,
    /// Threads (field 20).
    pub num_threads: u64,
    /// Start time in clock ticks after boot (field 22; the process key's).
    pub starttime: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;

impl<C> PidStat<C> {
    /// Whether this is a kernel thread (no executable, no argv, by nature).
    pub const fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Whether the process has exited and awaits its parent (`Z`) or is
    /// being torn down (`X`): its argv and executable are gone.
    pub const fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

impl PidStat<&[u8]> {
    /// The same fields with the command name copied (lossy UTF-8).
    pub fn into_owned(self) -> PidStat<String> {
        PidStat {
            comm: String::from_utf8_lossy(self.comm).into_owned(),
            pid: self.pid,
            state: self.state,
            ppid: self.ppid,
            flags: self.flags,
            utime: self.utime,
            stime: self.stime,
            num_threads: self.num_threads,
            starttime: self.starttime,
            rss_pages: self.rss_pages,
        }
    }
}

impl<C: AsRef<[u8]>> fmt::Display for PidStat<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comm = String::from_utf8_lossy(self.comm.as_ref());
        write!(f, "{} ({comm}) {}", self.pid, self.state)
    }
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and
/// parentheses, so the fields after it are counted from the *last* `)`.
///
/// # Errors
/// When a field of [`PidStat`] is missing or malformed (a cut file among
/// them).
pub fn parse_pid_stat(bytes: &[u8]) -> Result<PidStat<&[u8]>, ParseError> {
    const F: &str = "/proc/<pid>/stat";
    let open = bytes
        .iter()
        .position(|&b| b == b'(')
        .ok_or(err(F, "no '('"))?;
    let close = bytes
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(err(F, "no ')'"))?;
    if close < open {
        return Err(err(F, "')' before '('"));
    }
    let pid = parse_u64(bytes[..open].trim_ascii())
        .and_then(|p| u32::try_from(p).ok())
        .ok_or(err(F, "bad pid"))?;
    let comm = &bytes[open + 1..close];
    // Field 3 on.
    let mut f = fields(&bytes[close + 1..]);
    let state = match f.next() {
        Some([s, ..]) => char::from(*s),
        _ => return Err(err(F, "no state")),
    };
    let mut nth =
        |skip: usize, what: &'static str| f.nth(skip).and_then(parse_u64).ok_or(err(F, what));
    let ppid = u32::try_from(nth(0, "bad ppid")?).map_err(|_| err(F, "ppid out of range"))?; // 4
    let flags = nth(4, "bad flags")?; // 9
    let utime = nth(4, "bad utime")?; // 14
    let stime = nth(0, "bad stime")?; // 15
    let num_threads = nth(4, "bad num_threads")?; // 20
    let starttime = nth(1, "bad starttime")?; // 22
    let rss_pages = nth(1, "bad rss")?; // 24
    Ok(PidStat {
        pid,
        comm,
        state,
        ppid,
        flags,
        utime,
        stime,
        num_threads,
        starttime,
        rss_pages,
    })
}

/// How often a reader that keeps `/proc` files open and trusts an unchanged
/// [`schedstat`](parse_schedstat_runtime) (the process has not run) reads
/// every `stat` whatever: every this many passes, so that what changes
/// without the process running (an RSS the kernel shrank, a new parent
/// after the old one exited) shows within that many.
pub const FULL_READ_EVERY: u64 = 10;

/// Reads a `/proc` file kept open again, whole, into `buf`: one `pread` at
/// offset 0 (the kernel makes the file afresh at each read from there). A
/// read that fills the buffer may have been cut, so it is made again with
/// a buffer twice as large. A file whose process has exited answers ESRCH.
///
/// # Errors
/// The read's error.
pub fn pread_whole(fd: &std::os::fd::OwnedFd, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let cap = buf.capacity().max(1024);
    buf.resize(cap, 0);
    loop {
        match rustix::io::pread(fd, &mut buf[..], 0) {
            Ok(n) if n < buf.len() => {
                buf.truncate(n);
                return Ok(());
            }
            Ok(_) => {
                let len = buf.len() * 2;
                buf.resize(len, 0);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many processes' files a reader keeping `files_each` of them open
/// may keep: the soft open-file limit now, less `reserve` for everything
/// else the process opens, shared among them (all of it when the limit
/// cannot be read).
pub fn file_budget(reserve: u64, files_each: u64) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(limit.saturating_sub(reserve) / files_each.max(1)).unwrap_or(usize::MAX)
}

/// Lifts this process's soft limit of open files to its hard limit, for a
/// reader that keeps a file or two of every process open between passes
/// (perfmond's process table, procmond's snapshot); returns the soft limit
/// now. Not a parser: the one call here that changes the process.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// The CPU time a task has run, in nanoseconds: the first field of
/// `/proc/<pid>/schedstat` (`sum_exec_runtime wait_ns timeslices`), the
/// task's own (for a process, its main thread's). `None` when it does not
/// parse (the file is empty without `CONFIG_SCHED_INFO`). Far cheaper for
/// the kernel to write than `stat` (about 0.9 against 4.2 µs here): while
/// it has not moved, a single-threaded process has not run.
pub fn parse_schedstat_runtime(bytes: &[u8]) -> Option<u64> {
    let first = bytes.split(u8::is_ascii_whitespace).next()?;
    parse_u64(first)
}

/// The `Key:<tab>value` lines of `/proc/<pid>/status`: each key (without
/// its colon) and its value (white space trimmed). Lines without a colon
/// are passed over.
pub fn status_lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    bytes.split(|&b| b == b'\n').filter_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

/// The first number of a status value (`VmRSS:  1234 kB` gives 1234).
pub fn status_number(value: &[u8]) -> Option<u64> {
    fields(value).next().and_then(parse_u64)
}

/// User and group ids from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ids {
    /// Real uid.
    pub ruid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real gid.
    pub rgid: u32,
    /// Effective gid.
    pub egid: u32,
}

/// Parses the `Uid:` and `Gid:` lines of `/proc/<pid>/status` (the real and
/// effective ids), reading no further than `Gid:`.
///
/// # Errors
/// When either line is missing or malformed.
pub fn parse_status_ids(bytes: &[u8]) -> Result<Ids, ParseError> {
    const F: &str = "/proc/<pid>/status";
    let pair = |value: &[u8]| -> Option<(u32, u32)> {
        let mut it = fields(value).map(|v| parse_u64(v).and_then(|n| u32::try_from(n).ok()));
        Some((it.next()??, it.next()??))
    };
    let (mut uid, mut gid) = (None, None);
    for (key, value) in status_lines(bytes) {
        match key {
            b"Uid" => uid = Some(pair(value).ok_or(err(F, "bad Uid line"))?),
            b"Gid" => {
                gid = Some(pair(value).ok_or(err(F, "bad Gid line"))?);
                break; // Gid follows Uid
            }
            _ => {}
        }
    }
    let (ruid, euid) = uid.ok_or(err(F, "no Uid line"))?;
    let (rgid, egid) = gid.ok_or(err(F, "no Gid line"))?;
    Ok(Ids {
        ruid,
        euid,
        rgid,
        egid,
    })
}

/// The pids present now in the procfs at `root` (its numeric entries),
/// sorted.
///
/// # Errors
/// When `root` cannot be listed.
pub fn pids(root: &std::path::Path) -> std::io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = std::fs::read_dir(root)?
        .filter_map(|e| parse_u64(e.ok()?.file_name().as_encoded_bytes()))
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The [`ProcessKey`](crate::ProcessKey) of `pid` on boot `boot`, from
/// `<root>/<pid>/stat` (its start time); `None` once the process is gone or
/// its stat cannot be read or parsed.
pub fn process_key(
    root: &std::path::Path,
    boot: crate::BootId,
    pid: u32,
) -> Option<crate::ProcessKey> {
    let bytes = std::fs::read(root.join(pid.to_string()).join("stat")).ok()?;
    let stat = parse_pid_stat(&bytes).ok()?;
    (stat.pid == pid).then(|| crate::ProcessKey::new(boot, pid, stat.starttime))
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(bytes: &[u8]) -> Option<u64> {
    bytes
        .split(|&b| b == b'\n')
        .find_map(|l| parse_u64(l.strip_prefix(b"btime ")?.trim_ascii()))
}

/// `ticks` clock ticks as a duration, at `per_second` ticks a second (at
/// least 1), without overflow.
pub fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let tps = per_second.max(1);
    let nanos = u128::from(ticks % tps) * 1_000_000_000 / u128::from(tps);
    Duration::from_secs(ticks / tps) + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// `ns` nanoseconds since boot (a task's `start_boottime`, as eBPF reads
/// it) in clock ticks at `per_second` ticks a second, rounded down as the
/// kernel's `nsec_to_clock_t` does: `/proc/<pid>/stat`'s `starttime`, hence
/// a [`ProcessKey`](crate::ProcessKey)'s.
pub fn boot_ns_to_ticks(ns: u64, per_second: u64) -> u64 {
    let per_tick = 1_000_000_000 / per_second.clamp(1, 1_000_000_000);
    ns / per_tick
}

/// The kernel's clock tick rate and page size: the units of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelUnits {
    /// Clock ticks per second (`_SC_CLK_TCK`, `USER_HZ`: 100 on Linux).
    pub ticks_per_second: u64,
    /// Bytes per page.
    pub page_size: u64,
}

impl Default for KernelUnits {
    /// The Linux defaults: 100 ticks a second, 4 KiB pages.
    fn default() -> Self {
        Self {
            ticks_per_second: 100,
            page_size: 4096,
        }
    }
}

impl KernelUnits {
    /// Asks the kernel (`sysconf`); the [defaults](Self::default) for what
    /// it does not say.
    pub fn current() -> Self {
        use nix::unistd::{sysconf, SysconfVar};
        let get = |v, default: u64| {
            sysconf(v)
                .ok()
                .flatten()
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        let d = Self::default();
        Self {
            ticks_per_second: get(SysconfVar::CLK_TCK, d.ticks_per_second),
            page_size: get(SysconfVar::PAGE_SIZE, d.page_size),
        }
    }

    /// `ticks` clock ticks as a duration.
    pub fn ticks(&self, ticks: u64) -> Duration {
        ticks_to_duration(ticks, self.ticks_per_second)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn schedstat_gives_the_run_time() {
        assert_eq!(
            parse_schedstat_runtime(b"123456789 42 7\n"),
            Some(123_456_789)
        );
        assert_eq!(parse_schedstat_runtime(b"0 0 0"), Some(0));
        assert_eq!(parse_schedstat_runtime(b""), None);
        assert_eq!(parse_schedstat_runtime(b"x 1 2"), None);
        assert_eq!(parse_schedstat_runtime(b"-1 1 2"), None);
    }

    #[test]
    fn process_key_reads_the_start_time_of_a_live_process_only() {
        let root = std::path::Path::new("/proc");
        let boot = crate::BootId::from_bytes([7; 16]);
        let me = std::process::id();
        let bytes = std::fs::read(format!("/proc/{me}/stat")).unwrap();
        let start = parse_pid_stat(&bytes).unwrap().starttime;
        assert_eq!(
            process_key(root, boot, me),
            Some(crate::ProcessKey::new(boot, me, start))
        );
        // Above pid_max (at most 2^22): never a process.
        assert_eq!(process_key(root, boot, 1 << 23), None);
    }

    // Recorded from a real system (pid 1, kthreadd, and a process with a hostile comm).
    const STAT_INIT: &[u8] = b"1 (systemd) S 0 1 1 0 -1 4194560 53281 2380337 88 1150 92 154 3818 2094 20 0 1 0 19 22482944 3219 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
    const STAT_KTHREADD: &[u8] = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 19 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
    const STAT_ODD: &[u8] = b"4242 (a) b (c)) Z 77 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 12345 0 44 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";

    /// pid, comm, state, ppid, then flags, utime, stime, threads, start, rss.
    fn every_field<'a>(s: &PidStat<&'a [u8]>) -> (u32, &'a [u8], char, u32, [u64; 6]) {
        let n = [
            s.flags,
            s.utime,
            s.stime,
            s.num_threads,
            s.starttime,
            s.rss_pages,
        ];
        (s.pid, s.comm, s.state, s.ppid, n)
    }

    #[test]
    fn stat_fields_land_where_they_belong() {
        let s = parse_pid_stat(STAT_INIT).unwrap();
        assert_eq!(
            every_field(&s),
            (
                1,
                &b"systemd"[..],
                'S',
                0,
                [4_194_560, 92, 154, 1, 19, 3219]
            )
        );
        assert!(!s.is_kernel_thread() && !s.is_dead());
        assert!(parse_pid_stat(STAT_KTHREADD).unwrap().is_kernel_thread());
        assert_eq!(s.to_string(), "1 (systemd) S");
    }

    #[test]
    fn comm_with_spaces_and_parentheses() {
        let s = parse_pid_stat(STAT_ODD).unwrap();
        assert_eq!(
            every_field(&s),
            (
                4242,
                &b"a) b (c)"[..],
                'Z',
                77,
                [4_194_560, 5, 6, 3, 12345, 44]
            )
        );
        assert!(s.is_dead());
        let owned = s.into_owned();
        assert_eq!(owned.comm, "a) b (c)");
        assert_eq!((owned.pid, owned.starttime), (4242, 12345));
        assert_eq!(owned.to_string(), "4242 (a) b (c)) Z");
    }

    #[test]
    fn truncated_stat_is_an_error_at_every_cut() {
        // Up to the start of rss (field 24, the last one read) every cut must fail.
        let last = STAT_INIT.windows(5).position(|w| w == b" 3219").unwrap();
        for cut in 0..=last {
            assert!(
                parse_pid_stat(&STAT_INIT[..cut]).is_err(),
                "accepted a stat cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_stats_say_why() {
        let reason = |b: &[u8]| parse_pid_stat(b).unwrap_err().reason;
        assert_eq!(reason(b"1 x) S"), "no '('");
        assert_eq!(reason(b"1 (x S"), "no ')'");
        assert_eq!(reason(b"1 )x( S"), "')' before '('");
        assert_eq!(reason(b"x (y) S 0"), "bad pid");
        assert_eq!(reason(b"1 (y)"), "no state");
        assert_eq!(reason(b"1 (y) S 99999999999"), "ppid out of range");
        let e = parse_pid_stat(b"1 (x) S 0").unwrap_err();
        assert_eq!(e.to_string(), "malformed /proc/<pid>/stat: bad flags");
    }

    #[test]
    fn status_ids_and_numbers() {
        let status = b"Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nUid:\t1000\t0\t0\t0\nGid:\t100\t101\t100\t100\nFDSize:\t64\nVmHWM:\t    9000 kB\nVmRSS:\t    8000 kB\nThreads:\t3\n";
        let ids = parse_status_ids(status).unwrap();
        assert_eq!(
            ids,
            Ids {
                ruid: 1000,
                euid: 0,
                rgid: 100,
                egid: 101
            }
        );
        assert_eq!(
            parse_status_ids(b"Name:\tx\n").unwrap_err().reason,
            "no Uid line"
        );
        assert_eq!(
            parse_status_ids(b"Uid:\tx\nGid:\t1 1\n")
                .unwrap_err()
                .reason,
            "bad Uid line"
        );
        let value = |key: &[u8]| {
            status_lines(status)
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| status_number(v))
        };
        assert_eq!(
            (value(b"VmRSS"), value(b"VmHWM"), value(b"Threads")),
            (Some(8000), Some(9000), Some(3))
        );
        assert_eq!(value(b"Name"), None);
    }

    #[test]
    fn pids_are_the_numeric_entries_sorted() {
        let root = std::env::temp_dir().join(format!("procfs-pids-{}", std::process::id()));
        for name in ["12", "abc", "3", "4294967296", "self"] {
            std::fs::create_dir_all(root.join(name)).unwrap();
        }
        let listed = pids(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(listed.unwrap(), [3, 12]);
        let here = pids(std::path::Path::new("/proc")).unwrap();
        assert!(here.contains(&std::process::id()));
        assert!(pids(&root).is_err(), "a root that is gone");
    }

    #[test]
    fn btime_and_ticks() {
        assert_eq!(
            parse_btime(b"cpu  1 2 3\nbtime 1764400000\nprocesses 5\n"),
            Some(1_764_400_000)
        );
        assert_eq!(parse_btime(b"cpu 1\n"), None);
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(7, 0), Duration::from_secs(7));
        // 2.5 s since boot at 100 Hz; a part tick rounds down; 0 Hz is 1 Hz.
        assert_eq!(boot_ns_to_ticks(2_509_999_999, 100), 250);
        assert_eq!(boot_ns_to_ticks(3_000_000_000, 0), 3);
        assert_eq!(
            ticks_to_duration(u64::MAX, 3),
            Duration::new(u64::MAX / 3, 0)
        );
        let units = KernelUnits::current();
        assert!(units.ticks_per_second > 0 && units.page_size >= 4096);
        assert_eq!(units.ticks(units.ticks_per_second), Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_pid_stat(&bytes).map(PidStat::into_owned);
            let _ = parse_status_ids(&bytes);
            for (_, value) in status_lines(&bytes) {
                let _ = status_number(value);
            }
            let _ = parse_btime(&bytes);
            let _ = parse_u64(&bytes);
        }

        #[test]
        fn stat_round_trips_any_comm(comm in "[^\\x00]{0,15}", pid in 1u32.., ppid in 0u32.., start in any::<u64>()) {
            let line = format!("{pid} ({comm}) R {ppid} 1 1 0 -1 0 0 0 0 0 7 8 0 0 20 0 2 0 {start} 100 5 18446744073709551615\n");
            let s = parse_pid_stat(line.as_bytes()).unwrap().into_owned();
            prop_assert_eq!((s.pid, s.ppid, s.starttime, s.utime, s.stime, s.rss_pages, s.num_threads), (pid, ppid, start, 7, 8, 5, 2));
            prop_assert_eq!(s.comm, comm);
        }
    }
}
