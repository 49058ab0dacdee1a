//! The agent with its built-in fsmond, end to end, as root: fsmond watches
//! a test root (a directory standing for a host's `/`: its events name
//! `/etc/cron.d/...` as that system sees it, so the built-in rules match as
//! they would on the host itself); a shell that writes a cron entry there
//! and a `cp` that puts an `authorized_keys` in place (and exits at once)
//! each raise the persistence alert through the running agent, naming the
//! process that did it; a program run from there whose file is deleted is
//! told at once (its `executable_deleted`, the `deleted-executable` alert);
//! the events are stored, joinable to that process;
//! a second fsmond whose path no filesystem mark can hold says so, and the
//! agent's health is degraded. Skips (saying why) when not root.
// Blocking test around child processes: no tokio clock to pause.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::process::{Command, Stdio};

use daemoneye_agent::store::AgentStore;
use daemoneye_lib::proto::{ComponentHealth, HealthState};
use serde_json::Value;

use crate::e2e::agent_counter as counter;
use crate::performance::{capabilities, Running};
use crate::privsep::wait_for;
use crate::Killed;

/// The process an alert names: (pid, name).
fn who(alert: &Value) -> (u64, String) {
    (
        alert["process"]["pid"].as_u64().unwrap_or(0),
        alert["process"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, in order
fn a_persistence_write_under_a_watched_root_raises_its_alert_naming_the_writer() {
    if !crate::root_or_skip("the end-to-end file test needs root (fanotify, procmond)") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir_all(root.join("etc/cron.d")).unwrap();
    std::fs::create_dir_all(root.join("var/lib")).unwrap();
    let running = Running::start(&format!(
        "sweep_interval = \"1h\"\n\n\
         [[collector]]\nname = \"procmond\"\nbuiltin = \"procmond\"\ninterval = \"1h\"\n\n\
         [[collector]]\nname = \"fsmond\"\nbuiltin = \"fsmond\"\n\
         watch = [\"/etc\", \"/root/.ssh\"]\nwatch_root = \"{}\"\n\n\
         [[collector]]\nname = \"fsmond-proc\"\nbuiltin = \"fsmond\"\nwatch = [\"/proc/sys\"]\n",
        root.display()
    ));
    let data = &running.data;

    // fsmond delivering: a probe under the root comes through (its marks
    // and its baseline are in place by then), and procmond is connected.
    wait_for("fsmond delivering and procmond connected", || {
        std::fs::write(root.join("etc/.probe"), b"p").unwrap();
        (counter(data.path(), "collector.fsmond.batches_received") > 0
            && counter(data.path(), "collector.procmond.batches_received") > 0)
            .then_some(())
    });
    let fsmond: Vec<u32> = running
        .collectors_with("collect-files")
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/etc"))
        })
        .collect();
    assert_eq!(fsmond.len(), 1, "{fsmond:?}");
    let fsmond = fsmond[0];
    // It holds CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH only.
    let two = (1 << 21) | (1 << 2);
    for set in ["CapEff:", "CapPrm:"] {
        assert_eq!(capabilities(fsmond, set), Some(two), "{set} of fsmond");
    }
    // Health: this fsmond healthy by the pid the spawner started; the one
    // on /proc/sys (procfs gives no file handles) says its path is
    // unwatched, and the agent is degraded for it.
    let report = wait_for("the unwatched path in health", || {
        let r = crate::e2e::agent_health(data.path());
        r.message.contains("/proc/sys").then_some(r)
    });
    let state = |c: &ComponentHealth| c.state();
    let mine = report.components.iter().find(|c| c.pid == fsmond);
    assert_eq!(mine.map(state), Some(HealthState::Healthy), "{report:#?}");
    assert_eq!(report.state(), HealthState::Degraded, "{report:#?}");
    assert!(report.message.contains("unwatched"), "{}", report.message);

    // A shell writes a cron entry (with `echo`, a builtin: the shell
    // itself writes) and stays, reading its stdin.
    let mut shell = Killed(
        Command::new("sh")
            .arg("-c")
            .arg("echo '* * * * * root /var/tmp/.x' > \"$1\"; read line")
            .arg("sh")
            .arg(root.join("etc/cron.d/backdoor"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let shell_pid = u64::from(shell.0.id());
    let alert = running.alert_of("persistence-file-written");
    assert_eq!(who(&alert), (shell_pid, "sh".to_owned()), "{alert}");
    let dedup = alert["dedup_key"].as_str().unwrap_or_default();
    assert!(dedup.ends_with(":/etc/cron.d/backdoor"), "{alert}");
    assert_eq!(alert["file"], "/etc/cron.d/backdoor", "{alert}");

    // `cp` puts an authorized_keys in a /root/.ssh made after the start,
    // and exits at once: still named.
    let keys = root.join("var/lib/keys");
    std::fs::write(&keys, "ssh-ed25519 AAAAC3Nza... intruder\n").unwrap();
    std::fs::create_dir_all(root.join("root/.ssh")).unwrap();
    let mut cp = Command::new("cp")
        .arg(&keys)
        .arg(root.join("root/.ssh/authorized_keys"))
        .spawn()
        .unwrap();
    let cp_pid = u64::from(cp.id());
    assert!(cp.wait().unwrap().success());
    let alert = running.alert_of("persistence-file-written");
    assert_eq!(who(&alert), (cp_pid, "cp".to_owned()), "{alert}");
    assert!(
        alert["dedup_key"]
            .as_str()
            .is_some_and(|k| k.ends_with(":/root/.ssh/authorized_keys")),
        "{alert}"
    );

    // A program run from a watched path, then its file deleted: its
    // process's executable_deleted comes from fsmond's delete at once
    // (procmond's next snapshot is an hour away), and with it the alert.
    let exe = root.join("etc/sleepy");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let mut sleepy = Killed(Command::new(&exe).arg("600").spawn().unwrap());
    let sleepy_pid = sleepy.0.id();
    wait_for("procmond's report of the program stored", || {
        let store = AgentStore::open_read_only(data.path()).ok()?;
        let known = store
            .query(&format!(
                "SELECT count(*) FROM processes WHERE pid = {sleepy_pid}"
            ))
            .ok()?;
        (known.rows[0][0] != 0).then_some(())
    });
    std::fs::remove_file(&exe).unwrap();
    let alert = running.alert_of("deleted-executable");
    assert_eq!(
        who(&alert),
        (u64::from(sleepy_pid), "sleepy".to_owned()),
        "{alert}"
    );
    let _ = sleepy.0.kill();

    if let Some(stdin) = shell.0.stdin.as_mut() {
        let _ = stdin.write_all(b"done\n");
    }
    drop(shell);
    // A clean stop commits what the store was given.
    drop(running.agent);
    let store = AgentStore::open_read_only(data.path()).unwrap();
    let rows = store
        .query(&format!(
            "SELECT f.root, f.file_type, p.name FROM file_events f \
             JOIN process_events p ON p.pid = f.pid AND p.process_key = f.process_key \
             AND p.event_type = 'exec' \
             WHERE f.path = '/etc/cron.d/backdoor' AND f.operation = 'close_write' \
             AND f.pid = {shell_pid}"
        ))
        .unwrap();
    assert_eq!(rows.rows.len(), 1, "{:?}", rows.rows);
    assert_eq!(rows.rows[0][0], root.to_string_lossy().as_ref());
    assert_eq!(rows.rows[0][1], "regular");
    assert_eq!(rows.rows[0][2], "sh");
    // What is under the root but not watched is not stored.
    let outside = store
        .query("SELECT count(*) FROM file_events WHERE path LIKE '/var/%'")
        .unwrap();
    assert_eq!(outside.rows[0][0], 0);
    let alerted = store
        .query(&format!(
            "SELECT file FROM alerts WHERE rule_id = 'persistence-file-written' \
             AND pid IN ({shell_pid}, {cp_pid}) ORDER BY file"
        ))
        .unwrap();
    let files: Vec<&str> = alerted
        .rows
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        files,
        ["/etc/cron.d/backdoor", "/root/.ssh/authorized_keys"],
        "{:?}",
        alerted.rows
    );
}
