//! Pure parsers for `/proc/<pid>/*` files: bytes in, values out.
//!
//! Nothing here does I/O, so every parser is unit- and property-tested
//! without privileges; a parser never panics on any input.

use std::fmt;

/// A parse failure: which file, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed /proc/<pid>/{file}: {reason}")]
pub struct ParseError {
    /// The file name under `/proc/<pid>/`.
    pub file: &'static str,
    /// What was wrong.
    pub reason: &'static str,
}

const fn err(file: &'static str, reason: &'static str) -> ParseError {
    ParseError { file, reason }
}

/// The fields of `/proc/<pid>/stat` that procmond uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Process id (field 1).
    pub pid: u32,
    /// `comm`, without the parentheses (field 2); at most 15 bytes.
    pub comm: String,
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
    /// Start time in clock ticks after boot (field 22).
    pub starttime: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
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

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) {}", self.pid, self.comm, self.state)
    }
}

/// Parses `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so the fields after it are found from the *last* `)`.
pub fn parse_stat(bytes: &[u8]) -> Result<Stat, ParseError> {
    const F: &str = "stat";
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
    let pid = std::str::from_utf8(&bytes[..open])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(err(F, "bad pid"))?;
    let comm = String::from_utf8_lossy(&bytes[open + 1..close]).into_owned();
    let rest =
        std::str::from_utf8(&bytes[close + 1..]).map_err(|_| err(F, "not utf-8 after comm"))?;
    // rest[0] is field 3 (state).
    let mut f = rest.split_ascii_whitespace();
    let state = f
        .next()
        .and_then(|s| s.chars().next())
        .ok_or(err(F, "no state"))?;
    let mut nth = |skip: usize, what: &'static str| -> Result<u64, ParseError> {
        f.nth(skip).and_then(|s| s.parse().ok()).ok_or(err(F, what))
    };
    let ppid = u32::try_from(nth(0, "bad ppid")?).map_err(|_| err(F, "ppid out of range"))?; // field 4
    let flags = nth(4, "bad flags")?; // field 9
    let utime = nth(4, "bad utime")?; // field 14
    let stime = nth(0, "bad stime")?; // 15
    let num_threads = nth(4, "bad num_threads")?; // 20
    let starttime = nth(1, "bad starttime")?; // 22
    let rss_pages = nth(1, "bad rss")?; // 24
    Ok(Stat {
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

/// Parses the `Uid:` and `Gid:` lines of `/proc/<pid>/status`.
pub fn parse_status_ids(bytes: &[u8]) -> Result<Ids, ParseError> {
    const F: &str = "status";
    let text = std::str::from_utf8(bytes).map_err(|_| err(F, "not utf-8"))?;
    let pair = |line: &str| -> Option<(u32, u32)> {
        let mut it = line.split_ascii_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let (mut uid, mut gid) = (None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = Some(pair(v).ok_or(err(F, "bad Uid line"))?);
        } else if let Some(v) = line.strip_prefix("Gid:") {
            gid = Some(pair(v).ok_or(err(F, "bad Gid line"))?);
            break; // Gid follows Uid
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

/// Splits `/proc/<pid>/cmdline` into arguments (NUL-separated, lossy UTF-8).
///
/// Kernel threads and zombies have an empty cmdline: no arguments. A process
/// that rewrote its argv with spaces and no NULs yields one argument.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The target of `/proc/<pid>/exe`: the path, and whether the kernel marked
/// it ` (deleted)`.
pub fn parse_exe_link(target: &[u8]) -> (String, bool) {
    const DELETED: &[u8] = b" (deleted)";
    match target.strip_suffix(DELETED) {
        Some(path) => (String::from_utf8_lossy(path).into_owned(), true),
        None => (String::from_utf8_lossy(target).into_owned(), false),
    }
}

/// The cgroup v2 path (`0::/...`) from `/proc/<pid>/cgroup`, or the first
/// v1 hierarchy's path when there is no unified line.
pub fn parse_cgroup(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" {
            return Some(path.to_owned());
        }
        first.get_or_insert_with(|| path.to_owned());
    }
    first
}

/// A container id found in a cgroup path: the last 64-hex-digit token of a
/// segment (`docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`,
/// `libpod-<id>.scope`, `/kubepods/.../<id>`).
pub fn container_id(cgroup_path: &str) -> Option<&str> {
    cgroup_path.rsplit('/').find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let token = segment.rsplit(['-', ':']).next()?;
        (token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())).then_some(token)
    })
}

/// The inode of a namespace link target such as `pid:[4026531836]`.
pub fn parse_ns_link(target: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(target).ok()?;
    let open = text.find('[')?;
    text.get(open + 1..text.len().checked_sub(1)?)?.parse().ok()
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(bytes: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(bytes)
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    // Recorded from a real system (pid 1 and a process with a hostile comm).
    const STAT_INIT: &[u8] = b"1 (systemd) S 0 1 1 0 -1 4194560 53281 2380337 88 1150 92 154 3818 2094 20 0 1 0 19 22482944 3219 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
    const STAT_ODD: &[u8] = b"4242 (a) b (c)) Z 77 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 12345 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_land_where_they_belong() {
        let s = parse_stat(STAT_INIT).unwrap();
        assert_eq!(
            (s.pid, s.comm.as_str(), s.state, s.ppid),
            (1, "systemd", 'S', 0)
        );
        assert_eq!(
            (s.utime, s.stime, s.num_threads, s.starttime, s.rss_pages),
            (92, 154, 1, 19, 3219)
        );
        assert!(!parse_stat(STAT_INIT).unwrap().is_kernel_thread());
        let kthreadd = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 19 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        assert!(parse_stat(kthreadd).unwrap().is_kernel_thread());
        let s = parse_stat(STAT_ODD).unwrap();
        assert_eq!(
            (s.pid, s.comm.as_str(), s.state, s.ppid),
            (4242, "a) b (c)", 'Z', 77)
        );
        assert_eq!(
            (s.utime, s.stime, s.num_threads, s.starttime),
            (5, 6, 3, 12345)
        );
    }

    #[test]
    fn truncated_stat_is_an_error_at_every_cut() {
        // Up to the start of rss (field 24, the last one read) every cut must fail.
        let last = STAT_INIT.windows(5).position(|w| w == b" 3219").unwrap();
        for cut in 0..=last {
            assert!(
                parse_stat(&STAT_INIT[..cut]).is_err(),
                "accepted a stat cut at {cut}"
            );
        }
    }

    #[test]
    fn status_ids() {
        let status = b"Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nUid:\t1000\t0\t0\t0\nGid:\t100\t101\t100\t100\nFDSize:\t64\n";
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
        assert!(parse_status_ids(b"Name:\tx\n").is_err());
        assert!(parse_status_ids(b"Uid:\tx\nGid:\t1 1\n").is_err());
    }

    #[test]
    fn cmdline_forms() {
        assert_eq!(
            parse_cmdline(b"/bin/sh\0-c\0echo hi\0"),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            vec!["nginx: worker process"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert_eq!(parse_cmdline(b"\xff\0"), vec!["\u{fffd}"]);
    }

    #[test]
    fn exe_link_deleted_marker() {
        assert_eq!(
            parse_exe_link(b"/usr/bin/python3.11"),
            ("/usr/bin/python3.11".into(), false)
        );
        assert_eq!(parse_exe_link(b"/tmp/x (deleted)"), ("/tmp/x".into(), true));
    }

    #[test]
    fn cgroups_and_container_ids() {
        let id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        let path = parse_cgroup(v2.as_bytes()).unwrap();
        assert_eq!(container_id(&path), Some(id));
        let v1 = format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n");
        assert_eq!(
            container_id(&parse_cgroup(v1.as_bytes()).unwrap()),
            Some(id)
        );
        let k8s = format!("0::/kubepods/burstable/pod1234/cri-containerd-{id}.scope");
        assert_eq!(container_id(&k8s), Some(id));
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(parse_cgroup(b"garbage"), None);
    }

    #[test]
    fn ns_links_and_btime() {
        assert_eq!(parse_ns_link(b"pid:[4026531836]"), Some(4_026_531_836));
        assert_eq!(parse_ns_link(b"pid:[]"), None);
        assert_eq!(parse_ns_link(b"]"), None);
        assert_eq!(
            parse_btime(b"cpu  1 2 3\nbtime 1764400000\nprocesses 5\n"),
            Some(1_764_400_000)
        );
        assert_eq!(parse_btime(b"cpu 1\n"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_stat(&bytes);
            let _ = parse_status_ids(&bytes);
            let _ = parse_cmdline(&bytes);
            let _ = parse_exe_link(&bytes);
            let _ = parse_cgroup(&bytes).as_deref().map(container_id);
            let _ = parse_ns_link(&bytes);
            let _ = parse_btime(&bytes);
        }

        #[test]
        fn stat_round_trips_any_comm(comm in "[^\\x00]{0,15}", pid in 1u32.., ppid in 0u32.., start in any::<u64>()) {
            let line = format!("{pid} ({comm}) R {ppid} 1 1 0 -1 0 0 0 0 0 7 8 0 0 20 0 2 0 {start} 100 5 18446744073709551615\n");
            let s = parse_stat(line.as_bytes()).unwrap();
            prop_assert_eq!((s.pid, s.ppid, s.starttime, s.utime, s.stime, s.rss_pages, s.num_threads), (pid, ppid, start, 7, 8, 5, 2));
            prop_assert_eq!(s.comm, comm);
        }
    }
}
