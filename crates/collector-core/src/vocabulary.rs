//! The one SQL vocabulary over processes, performance samples, network
//! connections and file events: the names and types of the columns a
//! process ([`PROCESS`]), a performance sample ([`PERFORMANCE`]), a
//! connection ([`NETWORK`]) and a file event ([`FILE`]) have wherever SQL
//! sees one.
//!
//! The store's process tables (`processes`, `process_events`,
//! `process_snapshots`), the agent's detection rules (the `processes` table
//! rules select from), the trigger system's custom conditions and
//! `daemoneye-cli rules columns` all take their process columns from
//! [`PROCESS`]: a column means the same and has the same name everywhere,
//! so a condition written for one is valid for the others (each uses the
//! subset it has; see [`Column::derived`]). Tests in each of those crates
//! check that every process column they offer is in this list with this
//! type.

names! {
    /// The SQL type of a column (as SQLite stores it).
    SqlType {
        /// A whole number.
        Integer = "integer",
        /// A floating-point number.
        Real = "real",
        /// UTF-8 text.
        Text = "text",
        /// 0 or 1.
        Boolean = "boolean",
        /// A JSON array of strings, as text.
        JsonArray = "json_array",
    }
}

impl SqlType {
    /// The SQLite column type that stores it.
    pub const fn sqlite(self) -> &'static str {
        match self {
            Self::Integer | Self::Boolean => "INTEGER",
            Self::Real => "REAL",
            Self::Text | Self::JsonArray => "TEXT",
        }
    }
}

/// One column of the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Column {
    /// Its name, lowercase, in every SQL over processes.
    pub name: &'static str,
    /// Its type.
    pub ty: SqlType,
    /// Whether it is computed from other facts for detection (the parent's
    /// fields, the executable's directory, ...) rather than stored: the
    /// store's tables do not have the derived columns, rules do.
    pub derived: bool,
    /// What it holds.
    pub doc: &'static str,
}

const fn stored(name: &'static str, ty: SqlType, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        derived: false,
        doc,
    }
}

const fn derived(name: &'static str, ty: SqlType, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        derived: true,
        doc,
    }
}

/// The process columns, in the order they are documented.
pub const PROCESS: &[Column] = {
    use SqlType::{Boolean, Integer, JsonArray, Real, Text};
    &[
        stored(
            "process_key",
            Text,
            "`boot_id:pid:start_ticks`: one process, even after its pid is reused",
        ),
        stored("pid", Integer, "process id"),
        stored("ppid", Integer, "parent process id"),
        stored("name", Text, "short name (`comm`)"),
        stored("exe", Text, "path of the executable"),
        derived("exe_name", Text, "file name of the executable"),
        derived("exe_dir", Text, "directory of the executable"),
        stored("argv", JsonArray, "arguments, `argv[0]` first"),
        derived("cmdline", Text, "the arguments joined by spaces"),
        stored("uid", Integer, "real user id"),
        stored("euid", Integer, "effective user id"),
        stored("gid", Integer, "real group id"),
        stored(
            "start_time",
            Integer,
            "when the process started, unix nanoseconds",
        ),
        stored(
            "observed_at",
            Integer,
            "when it was observed, unix nanoseconds",
        ),
        stored(
            "cpu_percent",
            Real,
            "CPU use since the previous sample, percent of one core",
        ),
        stored("rss_bytes", Integer, "resident memory in bytes"),
        stored("exe_hash", Text, "lowercase hex digest of the executable"),
        stored(
            "hash_algorithm",
            Text,
            "the digest's algorithm (`sha256`, `blake3`)",
        ),
        stored(
            "accessible",
            Boolean,
            "everything about the process could be read",
        ),
        stored(
            "file_exists",
            Boolean,
            "the executable still exists on disk",
        ),
        derived(
            "exe_deleted",
            Boolean,
            "the executable was deleted while it runs",
        ),
        stored(
            "exe_replaced",
            Boolean,
            "the file at the executable's path is not the one running",
        ),
        derived(
            "exe_dir_user_writable",
            Boolean,
            "a non-root user may write the executable's directory",
        ),
        derived("parent_name", Text, "the parent's `name`, when known"),
        derived("parent_exe", Text, "the parent's `exe`, when known"),
        derived("parent_cmdline", Text, "the parent's `cmdline`, when known"),
        stored(
            "event_type",
            Text,
            "what the event reports (`snapshot`, `exec`, `exit`, `pid_reused`, ...)",
        ),
        stored("exit_code", Integer, "for an exit: the raw wait status"),
        stored("container_id", Text, "the container the cgroup names"),
        stored("cgroup", Text, "the cgroup v2 path"),
        derived(
            "pipes_to_interpreter",
            Boolean,
            "the command line pipes into a shell or interpreter (`... | sh`)",
        ),
        derived(
            "argv0_name",
            Text,
            "`argv[0]`'s program name: its first word's file name, a login shell's `-` and a retitled process's `:` dropped (`[...]` kept whole)",
        ),
        derived(
            "argv0_kernel_thread",
            Boolean,
            "`argv[0]` is bracketed like a kernel thread's name (`[kworker/0:7]`) while the process runs an executable",
        ),
        derived(
            "argv0_differs",
            Boolean,
            "`argv0_name` is neither `name` (nor its first 15 bytes) nor `exe_name`, and not bracketed: `exec -a`",
        ),
        derived(
            "stdin_shell",
            Boolean,
            "a shell run with no script, `-c` or `-i` (login shells aside): it reads its program from stdin",
        ),
    ]
};

/// The process column named `name` (ASCII case-insensitive, as SQL is).
pub fn process_column(name: &str) -> Option<&'static Column> {
    PROCESS.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

/// The columns of a performance sample
/// ([`PerformanceEvent`](crate::PerformanceEvent)), in the order they are
/// documented: the store's `performance` table and the rules' one alike.
/// An anomaly is a sample whose `anomaly` is set.
pub const PERFORMANCE: &[Column] = {
    use SqlType::{Integer, Real, Text};
    &[
        stored(
            "event_id",
            Text,
            "the id the collector runtime gave the sample (`run-seq`)",
        ),
        stored(
            "observed_at",
            Integer,
            "when it was sampled, unix nanoseconds",
        ),
        stored(
            "metric",
            Text,
            "what was measured (`cpu.total`, `process.cpu_percent`, `psi.io.some_avg10`, ...)",
        ),
        stored(
            "unit",
            Text,
            "the value's unit (`percent`, `bytes`, `per_second`, ...)",
        ),
        stored("value", Real, "the sampled value"),
        stored(
            "subject_kind",
            Text,
            "what it was measured on (`host`, `cpu`, `process`, `cgroup`, `disk`, `interface`, `collector`)",
        ),
        stored(
            "subject_name",
            Text,
            "the cgroup's path, the disk's or interface's name, the core's number",
        ),
        stored("pid", Integer, "for a process: its pid"),
        stored(
            "process_key",
            Text,
            "for a process: `boot_id:pid:start_ticks`, to join to the process tables",
        ),
        stored(
            "anomaly",
            Text,
            "for an anomaly: its kind (`sustained_cpu`, `memory_growth`, `fork_rate`, `psi_stall`)",
        ),
        stored(
            "anomaly_threshold",
            Real,
            "for an anomaly: the threshold crossed, in the value's unit",
        ),
        stored(
            "anomaly_duration_ms",
            Integer,
            "for an anomaly: how long it held (or was measured over), milliseconds",
        ),
    ]
};

/// The performance column named `name` (ASCII case-insensitive).
pub fn performance_column(name: &str) -> Option<&'static Column> {
    PERFORMANCE
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
}

/// The columns of a network connection or listening socket as one holder
/// sees it ([`NetworkEvent`](crate::NetworkEvent)), in the order they are
/// documented: the store's `connections` table and the rules' one alike.
/// A socket held by several processes is a row per holder, each with the
/// same `connection_id`; `fd` tells which descriptor (0, 1, 2: the
/// holder's stdin, stdout, stderr).
pub const NETWORK: &[Column] = {
    use SqlType::{Integer, Text};
    &[
        stored(
            "observed_at",
            Integer,
            "when it was observed, unix nanoseconds",
        ),
        stored(
            "connection_id",
            Integer,
            "the kernel's socket cookie: one socket for the life of the boot",
        ),
        stored("protocol", Text, "`tcp` or `udp`"),
        stored("family", Text, "`ipv4` or `ipv6`"),
        stored(
            "state",
            Text,
            "the socket's state (`established`, `listen`, `syn_sent`, ...)",
        ),
        stored("direction", Text, "`outbound`, `inbound` or `listen`"),
        stored(
            "change",
            Text,
            "what the observation reports: `present` (the first look), `opened`, `closed`",
        ),
        stored("local_address", Text, "the local address"),
        stored("local_port", Integer, "the local port"),
        stored(
            "remote_address",
            Text,
            "the peer's address (none for a listener)",
        ),
        stored(
            "remote_port",
            Integer,
            "the peer's port (none for a listener)",
        ),
        stored("pid", Integer, "the holder's process id, when known"),
        stored(
            "process_key",
            Text,
            "the holder's `boot_id:pid:start_ticks`, to join to the process tables",
        ),
        stored(
            "fd",
            Integer,
            "the lowest descriptor the holder holds it by (0 stdin, 1 stdout, 2 stderr)",
        ),
        stored("holders", Integer, "how many processes hold the socket"),
        stored("uid", Integer, "the uid that created the socket"),
        stored("inode", Integer, "the socket's inode (`socket:[inode]`)"),
        stored(
            "netns",
            Integer,
            "the network namespace (the inode of `/proc/<pid>/ns/net`)",
        ),
        stored(
            "tier",
            Text,
            "how the collector saw it (`polling`: a diff of snapshots; `ebpf`)",
        ),
        stored(
            "event_id",
            Text,
            "the id the collector runtime gave the event (`run-seq`)",
        ),
        stored(
            "bytes_sent",
            Integer,
            "a TCP socket's bytes sent and acknowledged by the peer so far, from the snapshot's \
             `tcp_info` (the connecting side's SYN counts one); none for UDP and the `ebpf` tier",
        ),
        stored(
            "bytes_received",
            Integer,
            "a TCP socket's bytes received so far, from the snapshot's `tcp_info`; none for UDP \
             and the `ebpf` tier",
        ),
    ]
};

/// The network column named `name` (ASCII case-insensitive).
pub fn network_column(name: &str) -> Option<&'static Column> {
    NETWORK.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

/// The columns of a file event ([`FilesystemEvent`](crate::FilesystemEvent)),
/// in the order they are documented: the store's `file_events` table has
/// the stored ones, the rules' `file_events` table every one (the derived
/// ones last). One operation is one row: a write by one process is
/// usually `create`, `modify` and `close_write` rows of one path.
pub const FILE: &[Column] = {
    use SqlType::{Boolean, Integer, Text};
    &[
        stored(
            "observed_at",
            Integer,
            "when it was observed, unix nanoseconds",
        ),
        stored(
            "operation",
            Text,
            "what was done: `create`, `modify`, `close_write`, `attrib`, `rename`, `delete`",
        ),
        stored(
            "path",
            Text,
            "the file's path (after a rename, the new one), as the system it belongs to sees it (under `root` when that is set)",
        ),
        stored("old_path", Text, "for a rename: the path it had before"),
        stored(
            "root",
            Text,
            "where that system's `/` is on this host when it is not the host's own (a container's root filesystem, a chroot, a test root); NULL for the host",
        ),
        stored(
            "file_type",
            Text,
            "`regular`, `directory`, `symlink`, `fifo`, `socket`, `char_device`, `block_device`",
        ),
        stored("size", Integer, "size in bytes after the operation"),
        stored(
            "mode",
            Integer,
            "mode bits after the operation (`st_mode & 0o7777`: setuid 2048, setgid 1024)",
        ),
        stored(
            "previous_mode",
            Integer,
            "mode bits before the operation, when the collector knew the file",
        ),
        stored("owner_uid", Integer, "the file's owner"),
        stored("owner_gid", Integer, "the file's group"),
        stored(
            "hash",
            Text,
            "lowercase hex digest of the content after the operation (regular files)",
        ),
        stored(
            "previous_hash",
            Text,
            "lowercase hex digest of the content before it, when the collector knew the file",
        ),
        stored(
            "hash_algorithm",
            Text,
            "the digests' algorithm (`sha256`, `blake3`)",
        ),
        stored(
            "pid",
            Integer,
            "the process that did it, when known (none for a change a rescan found)",
        ),
        stored(
            "process_key",
            Text,
            "that process's `boot_id:pid:start_ticks`, to join to the process tables",
        ),
        stored(
            "event_id",
            Text,
            "the id the collector runtime gave the event (`run-seq`)",
        ),
        derived("file_name", Text, "the last component of `path`"),
        derived("dir", Text, "the directory of `path`"),
        derived("setuid", Boolean, "`mode` has the setuid bit"),
        derived("setgid", Boolean, "`mode` has the setgid bit"),
    ]
};

/// The file-event column named `name` (ASCII case-insensitive).
pub fn file_column(name: &str) -> Option<&'static Column> {
    FILE.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

/// The columns of the rules' `ancestry` view: each process's parent chain
/// up to the init process, one row per ancestor, parents that have exited
/// included (kept from the lifecycle events, bounded: see
/// `daemoneye_rules::history`). Depth 1 is the parent. The ancestor's
/// image is its last known one.
pub const ANCESTRY: &[Column] = {
    use SqlType::{Boolean, Integer, Text};
    &[
        derived("process_key", Text, "the descendant's `process_key`"),
        derived("depth", Integer, "1 for the parent, 2 for its parent, ..."),
        derived("ancestor_key", Text, "the ancestor's `process_key`"),
        derived("ancestor_pid", Integer, "the ancestor's pid"),
        derived(
            "ancestor_exe",
            Text,
            "the ancestor's executable (its last image)",
        ),
        derived(
            "ancestor_name",
            Text,
            "the ancestor's `comm` (its last image)",
        ),
        derived("ancestor_cmdline", Text, "the ancestor's arguments, joined"),
        derived("ancestor_exited", Boolean, "the ancestor has exited"),
    ]
};

/// The columns of the rules' `exec_lineage` table: the images one process
/// (one `process_key`, so one pid) ran in turn, the image it was first
/// seen with (after a fork: its parent's) first: `nginx` then `sh`. Only
/// processes that ran more than one image have rows.
pub const EXEC_LINEAGE: &[Column] = {
    use SqlType::{Integer, Text};
    &[
        derived("process_key", Text, "the process's `process_key`"),
        derived("seq", Integer, "0 for the first image seen, then 1, 2, ..."),
        derived("pid", Integer, "the process's pid"),
        derived("exe", Text, "the image's executable"),
        derived("name", Text, "the image's `comm`"),
        derived("cmdline", Text, "the image's arguments, joined"),
        derived(
            "observed_at",
            Integer,
            "when the image was seen, unix nanoseconds",
        ),
    ]
};

/// The columns of the rules' `lifecycle_events` table: the forks, execs and
/// exits of a recent time window (bounded in time and number), oldest
/// first by `seq`.
pub const LIFECYCLE: &[Column] = {
    use SqlType::{Integer, Text};
    &[
        derived("seq", Integer, "the event's order among those kept"),
        derived(
            "observed_at",
            Integer,
            "when it was observed, unix nanoseconds",
        ),
        derived("event_type", Text, "`fork`, `exec` or `exit`"),
        derived("process_key", Text, "the process's `process_key`"),
        derived("pid", Integer, "process id"),
        derived("ppid", Integer, "parent process id"),
        derived("name", Text, "`comm` as the event reported it"),
        derived("exe", Text, "the executable as the event reported it"),
        derived(
            "cmdline",
            Text,
            "the arguments as the event reported them, joined",
        ),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_identifiers() {
        for list in [
            PROCESS,
            PERFORMANCE,
            NETWORK,
            FILE,
            ANCESTRY,
            EXEC_LINEAGE,
            LIFECYCLE,
        ] {
            unique_lowercase(list);
        }
        assert_eq!(
            performance_column("Metric").map(|c| c.ty),
            Some(SqlType::Text)
        );
        assert_eq!(process_column("EXE").map(|c| c.ty), Some(SqlType::Text));
        assert_eq!(process_column("executable_path"), None);
        assert_eq!(network_column("FD").map(|c| c.ty), Some(SqlType::Integer));
        assert_eq!(file_column("Mode").map(|c| c.ty), Some(SqlType::Integer));
        // The derived columns come last: the store's table is a prefix.
        let first_derived = FILE.iter().position(|c| c.derived).unwrap_or(FILE.len());
        assert!(FILE[first_derived..].iter().all(|c| c.derived));
    }

    fn unique_lowercase(list: &[Column]) {
        for (i, c) in list.iter().enumerate() {
            assert!(
                c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                c.name
            );
            assert!(!c.doc.is_empty(), "{} has no doc", c.name);
            assert!(
                list[..i].iter().all(|o| o.name != c.name),
                "{} twice",
                c.name
            );
        }
    }
}
