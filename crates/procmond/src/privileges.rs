//! Dropping what collection does not need.
//!
//! Started as root, procmond keeps three capabilities and gives up the rest
//! (effective, permitted, inheritable and bounding sets) and sets
//! `no_new_privs`, before any thread exists, so every thread it starts
//! inherits the reduced set:
//!
//! - `CAP_SYS_PTRACE`: read other users' `/proc/<pid>/exe`, `cmdline` and
//!   namespace links (ptrace access checks);
//! - `CAP_DAC_READ_SEARCH`: read (and hash) files of any owner;
//! - `CAP_NET_ADMIN`: subscribe to the process connector and force its
//!   receive buffer.
//!
//! It stays uid 0 so it can write its database under `/var/lib`.
//!
//! Loading the [eBPF tier](crate::ebpf)'s programs takes `CAP_BPF` and
//! `CAP_PERFMON` (measured on Linux 6.18: not `CAP_SYS_ADMIN`; with only
//! [`KEPT`] the kernel refuses with `EPERM`). They are not kept: `procmond
//! run` loads and attaches the programs first
//! ([`cli::prepare`](crate::cli::prepare)), then drops to [`KEPT`]; the
//! attached programs, the ring buffer and the counter map go on working
//! through the file descriptors already open. Without that order (a library
//! caller dropping first) the collector falls back to the process connector
//! and says so.
//!
//! The agent's built-in collectors are started by its spawner, which holds
//! what its collectors take ([`FOR_PROCMOND`] for procmond) permitted and
//! none effective ([`drop_privileges_for_spawner`]); root's exec gives a
//! collector the spawner's permitted set, `no_new_privs` no more. The agent itself leaves
//! root for good ([`drop_to_user`]).

use rustix::thread::{
    capabilities, remove_capability_from_bounding_set, set_capabilities, set_no_new_privs,
    CapabilitySet, CapabilitySets,
};

/// The capabilities collection needs.
pub const KEPT: CapabilitySet = CapabilitySet::SYS_PTRACE
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::NET_ADMIN);

/// What loading the eBPF tier's programs takes, beyond [`KEPT`].
pub const LOAD_EBPF: CapabilitySet = CapabilitySet::BPF.union(CapabilitySet::PERFMON);

/// What a procmond started as a supervisor's child takes from it: [`KEPT`]
/// and [`LOAD_EBPF`] (it loads the eBPF tier, then drops to [`KEPT`]).
pub const FOR_PROCMOND: CapabilitySet = KEPT.union(LOAD_EBPF);

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped {
    /// Not root: nothing to drop.
    NotRoot,
    /// Only [`KEPT`] (of those we had) remain.
    Reduced {
        /// The effective set now.
        kept: CapabilitySet,
    },
}

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop privileges: {operation} failed")]
pub struct PrivilegeError {
    /// The call that failed.
    pub operation: &'static str,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn fail(operation: &'static str) -> impl FnOnce(rustix::io::Errno) -> PrivilegeError {
    move |e| PrivilegeError {
        operation,
        source: e.into(),
    }
}

/// Keeps only [`KEPT`]. Call it before starting any thread: capabilities
/// belong to the calling thread and are inherited by the threads it starts.
///
/// # Errors
/// When a capability call fails; the caller should not go on privileged.
pub fn drop_privileges() -> Result<Dropped, PrivilegeError> {
    reduce_to(KEPT)
}

/// [`drop_privileges`] for a supervisor that starts collectors as its
/// children (the agent): it uses only [`KEPT`], and also holds `children`
/// (what its children take: [`FOR_PROCMOND`] for procmond), permitted but
/// never effective, so that a child can take them (with `no_new_privs` a
/// child gets no capability its parent is not permitted); each child then
/// drops to its own.
///
/// # Errors
/// As [`drop_privileges`].
pub fn drop_privileges_for_supervisor(children: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    reduce_to(KEPT.union(children))
}

/// [`drop_privileges`] for the agent's privileged spawner, which starts the
/// collectors and does nothing else: `children` (what its collectors take)
/// permitted (and bounding), for its children to take at exec (root's exec
/// gives a child its parent's permitted set, `no_new_privs` no more), none
/// effective.
///
/// # Errors
/// As [`drop_privileges`].
pub fn drop_privileges_for_spawner(children: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    reduce(children, CapabilitySet::empty())
}

/// Becomes `uid` and `gid` (supplementary groups: `gid` alone) with no
/// capability in any set, the bounding set emptied and `no_new_privs`: what
/// the agent does once its spawner holds the collectors' privileges. Call it
/// as root before any thread starts (capabilities and `no_new_privs` are per
/// thread).
///
/// # Errors
/// When a call fails; the caller must not go on.
pub fn drop_to_user(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let errno = |operation: &'static str| {
        move |e: nix::Error| PrivilegeError {
            operation,
            source: std::io::Error::from(e),
        }
    };
    // While CAP_SETPCAP is still ours.
    for cap in CapabilitySet::all().iter() {
        if rustix::thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            remove_capability_from_bounding_set(cap).map_err(fail("prctl(PR_CAPBSET_DROP)"))?;
        }
    }
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[gid]).map_err(errno("setgroups"))?;
    setresgid(gid, gid, gid).map_err(errno("setresgid"))?;
    // Leaving uid 0 clears the permitted and effective sets (no
    // SECBIT_KEEP_CAPS); cleared below again, with the inheritable set.
    setresuid(uid, uid, uid).map_err(errno("setresuid"))?;
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(fail("capset"))?;
    set_no_new_privs(true).map_err(fail("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    // Cannot be undone: check it.
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError {
            operation: "setresuid (uid 0 could be regained)",
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    Ok(())
}

/// Gives up every capability (effective, permitted, inheritable, and the
/// bounding set where it may) and sets `no_new_privs`: for a collector that
/// needs none (perfmond reads only world-readable `/proc` files). It stays
/// uid 0 so it can serve its socket in its supervisor's private directory.
///
/// # Errors
/// As [`drop_privileges`].
pub fn drop_all_privileges() -> Result<Dropped, PrivilegeError> {
    reduce(CapabilitySet::empty(), CapabilitySet::empty())
}

/// Keeps only `kept` (of what we have), all of it effective, in every set
/// but the inheritable one (emptied) and sets `no_new_privs`: for a
/// collector that needs fewer than [`KEPT`] (netmond keeps
/// `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`).
///
/// # Errors
/// As [`drop_privileges`].
pub fn keep_only(kept: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    reduce(kept, kept)
}

/// Keeps `permitted` (of what we have) in the bounding and permitted sets,
/// only [`KEPT`] effective, nothing inheritable; sets `no_new_privs`.
fn reduce_to(permitted: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    reduce(permitted, KEPT)
}

/// Keeps `permitted` (of what we have) in the bounding and permitted sets,
/// `effective` of them effective, nothing inheritable; sets `no_new_privs`.
fn reduce(permitted: CapabilitySet, effective: CapabilitySet) -> Result<Dropped, PrivilegeError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let current = capabilities(None).map_err(fail("capget"))?;
    // Lowering the bounding set takes CAP_SETPCAP. A collector started by
    // its supervisor has not got it (nor can regain it): its bounding set is
    // the supervisor's, and with `no_new_privs` (inherited) no exec can give
    // more than the permitted set lowered below.
    let may_lower_bounding = current.effective.contains(CapabilitySet::SETPCAP);
    for cap in CapabilitySet::all()
        .difference(permitted)
        .iter()
        .filter(|_| may_lower_bounding)
    {
        // Absent from the bounding set already (or unknown to this kernel).
        if rustix::thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            remove_capability_from_bounding_set(cap).map_err(fail("prctl(PR_CAPBSET_DROP)"))?;
        }
    }
    let held = current.permitted.intersection(permitted);
    let kept = held.intersection(effective);
    set_capabilities(
        None,
        CapabilitySets {
            effective: kept,
            permitted: held,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(fail("capset"))?;
    set_no_new_privs(true).map_err(fail("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(Dropped::Reduced { kept })
}

/// [`drop_privileges`] at the start of a program's `main`: what was kept is
/// logged, a failure is printed as `<program>: <error>` and becomes the exit
/// code the program returns.
///
/// # Errors
/// `ExitCode::FAILURE` when privileges could not be dropped.
pub fn drop_privileges_in_main(program: &str) -> Result<(), std::process::ExitCode> {
    in_main(program, drop_privileges())
}

/// [`drop_privileges_for_supervisor`] at the start of the `main` of a
/// supervisor of procmond, as [`drop_privileges_in_main`].
///
/// # Errors
/// `ExitCode::FAILURE` when privileges could not be dropped.
pub fn drop_privileges_for_supervisor_in_main(program: &str) -> Result<(), std::process::ExitCode> {
    in_main(program, drop_privileges_for_supervisor(FOR_PROCMOND))
}

fn in_main(
    program: &str,
    dropped: Result<Dropped, PrivilegeError>,
) -> Result<(), std::process::ExitCode> {
    match dropped {
        Ok(Dropped::Reduced { kept }) => {
            tracing::info!(capabilities = ?kept, "running as root with only these capabilities");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("{program}: {e}");
            Err(std::process::ExitCode::FAILURE)
        }
    }
}
