//! Pure parsers for the `/proc/<pid>/*` files only procmond reads (cmdline,
//! the exe and namespace links, cgroup): bytes in, values out. The files
//! every collector reads (`stat`, `schedstat`, `status`, the boot time) are parsed by
//! [`collector_core::procfs`], re-exported here under procmond's names.
//!
//! Nothing here does I/O, so every parser is unit- and property-tested
//! without privileges; a parser never panics on any input.

pub use collector_core::procfs::{
    parse_btime, parse_schedstat_runtime, parse_status_ids, Ids, ParseError, PF_KTHREAD,
};

/// The fields of `/proc/<pid>/stat` procmond keeps: collector-core's
/// [`PidStat`](collector_core::procfs::PidStat) with the command name owned
/// (procmond reads other files into the same buffer while it holds them).
pub type Stat = collector_core::procfs::PidStat<String>;

/// Parses `/proc/<pid>/stat` ([`collector_core::procfs::parse_pid_stat`]),
/// the command name copied.
///
/// # Errors
/// As [`parse_pid_stat`](collector_core::procfs::parse_pid_stat).
pub fn parse_stat(bytes: &[u8]) -> Result<Stat, ParseError> {
    collector_core::procfs::parse_pid_stat(bytes).map(collector_core::procfs::PidStat::into_owned)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

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
    fn ns_links() {
        assert_eq!(parse_ns_link(b"pid:[4026531836]"), Some(4_026_531_836));
        assert_eq!(parse_ns_link(b"pid:[]"), None);
        assert_eq!(parse_ns_link(b"]"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_cmdline(&bytes);
            let _ = parse_exe_link(&bytes);
            let _ = parse_cgroup(&bytes).as_deref().map(container_id);
            let _ = parse_ns_link(&bytes);
        }
    }
}
