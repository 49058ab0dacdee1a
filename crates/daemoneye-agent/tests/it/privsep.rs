//! Privilege separation end to end, as root: the agent runs as its user
//! with no capability at all, the spawner holds what the collectors need
//! and nothing effective, the collectors have their own, and a collector
//! killed is started again through the spawner. Skips (saying why) when not
//! root: there is nothing to separate then.
// Blocking test around a child process: no tokio clock to pause.
#![allow(clippy::disallowed_types)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Killed;

use crate::status;

const AGENT: &str = env!("CARGO_BIN_EXE_daemoneye-agent");

/// The one child of `pid` whose command line contains `needle`.
fn child_with(pid: u32, needle: &str) -> Option<u32> {
    match crate::children_with(pid, needle).as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Whether `pid` has exited (reaped, or a zombie).
fn gone(pid: u32) -> bool {
    status(pid, "State:").is_none_or(|s| s.starts_with('Z'))
}

/// Waits (30 s at most) for `f` to give something.
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// `daemoneye-agent run` as root on a data directory its user can reach,
/// once its spawner and both collectors run.
struct Separated {
    /// Holds the data directory.
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    agent: Killed,
    spawner: u32,
    procmond: u32,
    perfmond: u32,
}

fn start_separated() -> Separated {
    let dir = tempfile::tempdir().unwrap();
    // The agent's user must reach its data directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = dir.path().join("data");
    let agent = Killed(
        Command::new(AGENT)
            .args(["run", "--interval", "3600", "--sweep-secs", "3600"])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let agent_pid = agent.0.id();
    let spawner = wait_for("the spawner", || child_with(agent_pid, "spawner"));
    let procmond = wait_for("procmond", || child_with(spawner, "collect\0"));
    let perfmond = wait_for("perfmond", || child_with(spawner, "collect-performance"));
    Separated {
        _dir: dir,
        data,
        agent,
        spawner,
        procmond,
        perfmond,
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, in order
fn only_the_collectors_hold_privileges_and_a_killed_one_is_restarted_through_the_spawner() {
    if !crate::root_or_skip("privilege separation happens only when the agent starts as root") {
        return;
    }
    let Separated {
        _dir,
        data,
        agent,
        spawner,
        procmond,
        perfmond,
    } = start_separated();
    let agent_pid = agent.0.id();
    // Connected: the agent's health names procmond's pid.
    wait_for("the collector connected", || {
        let report = crate::e2e::agent_health(&data);
        (report.components.first()?.pid == procmond).then_some(())
    });

    // The agent: its user's uids, no capability in any set, no_new_privs.
    let uids = status(agent_pid, "Uid:").unwrap();
    let uids: Vec<u32> = uids
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(
        uids.len() == 4 && uids.iter().all(|u| *u != 0 && *u == uids[0]),
        "{uids:?}"
    );
    for set in ["CapEff:", "CapPrm:", "CapInh:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status(agent_pid, set).as_deref(),
            Some("0000000000000000"),
            "{set} of the agent"
        );
    }
    assert_eq!(status(agent_pid, "NoNewPrivs:").as_deref(), Some("1"));
    // Its data directory and store are its user's.
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), uids[0]);
    assert_eq!(
        std::fs::metadata(data.join("agent.db")).unwrap().uid(),
        uids[0]
    );
    // The collectors' sockets: root's, shared with the agent's group only.
    let socket = std::fs::metadata(data.join("collectors/procmond.sock")).unwrap();
    assert_eq!((socket.uid(), socket.mode() & 0o777), (0, 0o660));

    // The spawner: root, permitted what the collectors take (procmond's
    // three and BPF, PERFMON; fsmond's SYS_ADMIN), nothing effective.
    let load_ebpf = "000000c000281004";
    assert_eq!(
        status(spawner, "Uid:").unwrap().split_whitespace().next(),
        Some("0")
    );
    assert_eq!(
        status(spawner, "CapEff:").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status(spawner, "CapPrm:").as_deref(), Some(load_ebpf));
    assert_eq!(status(spawner, "CapBnd:").as_deref(), Some(load_ebpf));
    assert_eq!(status(spawner, "NoNewPrivs:").as_deref(), Some("1"));
    // procmond keeps its three; perfmond has none; netmond two.
    let caps = |pid| ["CapEff:", "CapPrm:"].map(|line| status(pid, line));
    let three = Some("0000000000081004".to_owned());
    let none = Some("0000000000000000".to_owned());
    assert_eq!(caps(procmond), [three.clone(), three]);
    assert_eq!(caps(perfmond), [none.clone(), none]);
    // netmond, started by default too, keeps CAP_SYS_PTRACE and
    // CAP_DAC_READ_SEARCH once it runs (forked, it still is the spawner).
    let netmond = wait_for("netmond", || child_with(spawner, "collect-network"));
    let two = Some("0000000000080004".to_owned());
    wait_for("netmond's two capabilities", || {
        (caps(netmond) == [two.clone(), two.clone()]).then_some(())
    });
    // fsmond, by default too: CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH.
    let fsmond = wait_for("fsmond", || child_with(spawner, "collect-files"));
    let fs_two = Some("0000000000200004".to_owned());
    wait_for("fsmond's two capabilities", || {
        (caps(fsmond) == [fs_two.clone(), fs_two.clone()]).then_some(())
    });

    // procmond killed: the spawner reports it, the agent asks for a new one,
    // and health says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(procmond).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let report = wait_for("the restarted collector in health", || {
        let report = crate::e2e::agent_health(&data);
        let pid = report.components.first()?.pid;
        (pid != procmond && pid != 0 && report.counters["collector.procmond.restarts"] == 1)
            .then_some(report)
    });
    let restarted = report.components[0].pid;
    assert_eq!(
        status(restarted, "PPid:").and_then(|p| p.parse().ok()),
        Some(spawner),
        "the new collector is the spawner's child"
    );
    assert_eq!(
        status(restarted, "CapEff:").as_deref(),
        Some("0000000000081004")
    );
    assert_eq!(
        report.counters["collector.perfmond.restarts"], 0,
        "{report:#?}"
    );

    // A clean stop: the agent exits 0, the spawner and its collectors go.
    agent.term();
    let mut agent = agent;
    let code = wait_for("the agent's exit", || agent.0.try_wait().unwrap());
    assert!(code.success(), "{code}");
    for pid in [spawner, restarted, perfmond] {
        wait_for("the spawner and its collectors gone", || {
            gone(pid).then_some(())
        });
    }
}

/// What the agent refuses to give its user, or cannot become, is named and
/// exits with 2, before anything starts: a shared directory holding other
/// files than the agent's (`data_dir = "/var/lib"` must not give it away),
/// a config file inside the data directory (the user could rewrite what
/// the spawner runs as root), an unknown user.
#[test]
fn what_the_agent_may_not_take_or_become_is_refused_with_2() {
    if !crate::root_or_skip("privilege separation happens only when the agent starts as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |data: &std::path::Path, config: Option<&std::path::Path>| {
        let mut cmd = Command::new(AGENT);
        cmd.arg("run").arg("--data-dir").arg(data);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let out = cmd.env_remove("DAEMONEYE_CONFIG").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(shared.join("passwd"), "not the agent's\n").unwrap();
    let err = run(&shared, None);
    assert!(
        err.contains("\"passwd\"") && err.contains("shared"),
        "{err}"
    );
    // Not taken: still root's, its mode unchanged.
    let meta = std::fs::metadata(&shared).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755));

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let inside = data.join("agent.toml");
    std::fs::write(&inside, "sweep_interval = \"1h\"\n").unwrap();
    let err = run(&data, Some(&inside));
    assert!(
        err.contains("agent.toml") && err.contains("data directory"),
        "{err}"
    );

    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "user = \"no-such-user-daemoneye\"\n").unwrap();
    let err = run(&data, Some(&config));
    assert!(err.contains("no-such-user-daemoneye"), "{err}");
}

/// The agent killed outright (SIGKILL, no chance to stop anything): the
/// spawner gets its parent-death signal, stops the collectors and exits;
/// nothing privileged is left behind.
#[test]
fn the_agent_killed_leaves_no_spawner_or_collector_behind() {
    if !crate::root_or_skip("privilege separation happens only when the agent starts as root") {
        return;
    }
    let Separated {
        _dir,
        mut agent,
        spawner,
        procmond,
        perfmond,
        ..
    } = start_separated();
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    for pid in [spawner, procmond, perfmond] {
        wait_for("the spawner and its collectors gone", || {
            gone(pid).then_some(())
        });
    }
}
