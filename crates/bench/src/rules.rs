//! `rules`: 100 rules (the built-in pack's process rules, in turn, up to
//! 100) over 10,000 processes, beside a history of those processes (their
//! ancestry, images and exec events, as the detector keeps it), against the
//! same batch loaded with no rules at all (the engine's fixed cost) in the
//! same run.

use anyhow::bail;
use collector_core::{BootId, ProcessEvent, ProcessEventType, ProcessKey};
use daemoneye_rules::engine::{ProcessRow, RuleEngine, RuleKind};
use daemoneye_rules::rules;
use tokio::time::Instant;

use crate::{median, report};

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Processes in the table.
    #[arg(long, default_value_t = 10_000, value_parser = crate::positive::<usize>)]
    pub(crate) processes: usize,
    /// Repetitions.
    #[arg(long, default_value_t = 7, value_parser = crate::positive::<usize>)]
    pub(crate) reps: usize,
    /// Also time each built-in process rule alone (ten copies of it), less the load.
    #[arg(long)]
    pub(crate) per_rule: bool,
    /// Also time the process rules of this directory (ours or Sigma, as the
    /// agent loads a rules directory) over the same table, less the load,
    /// and name the five costliest.
    #[arg(long, value_name = "DIR")]
    pub(crate) rules_dir: Option<std::path::PathBuf>,
}

/// A plausible process table: daemons, shells, workers, the odd oddity.
fn table(n: usize) -> Vec<ProcessRow> {
    const PROGRAMS: &[(&str, &str, &str)] = &[
        ("sshd", "/usr/sbin/sshd", "sshd: user@pts/0"),
        ("nginx", "/usr/sbin/nginx", "nginx: worker process"),
        ("bash", "/usr/bin/bash", "-bash"),
        (
            "python3",
            "/usr/bin/python3.11",
            "python3 manage.py runserver",
        ),
        (
            "postgres",
            "/usr/lib/postgresql/15/bin/postgres",
            "postgres: checkpointer",
        ),
        ("cron", "/usr/sbin/cron", "/usr/sbin/cron -f"),
        ("sh", "/usr/bin/dash", "sh -c curl -s https://api | jq .x"),
        ("x", "/tmp/x", "./x"),
    ];
    (0..n)
        .map(|i| {
            let (name, exe, cmd) = PROGRAMS[i % PROGRAMS.len()];
            let pid = u32::try_from(i + 100).unwrap_or(u32::MAX);
            ProcessRow {
                process_key: Some(key(pid, i).to_string()),
                pid,
                ppid: Some(1),
                name: name.to_owned(),
                exe: Some(exe.to_owned()),
                argv: cmd.split(' ').map(str::to_owned).collect(),
                uid: Some(u32::try_from(i % 3).unwrap_or(0) * 1000),
                euid: Some(0),
                file_exists: true,
                accessible: true,
                exe_dir_user_writable: Some(i % 97 == 0),
                parent_name: Some(if i % 50 == 0 { "nginx" } else { "systemd" }.to_owned()),
                event_type: "snapshot".to_owned(),
                ..ProcessRow::default()
            }
        })
        .collect()
}

fn key(pid: u32, i: usize) -> ProcessKey {
    ProcessKey::new(
        BootId::from_bytes([0x5a; 16]),
        pid,
        u64::try_from(i).unwrap_or(u64::MAX),
    )
}

/// The history of `rows`, as events: an init, then each row exec'd by a
/// child of it, every 50th by a child of the table's first nginx (so its
/// shells have a web server for an ancestor).
fn history(rows: &[ProcessRow]) -> Vec<ProcessEvent> {
    let mut h = Vec::with_capacity(rows.len() + 1);
    let mut init = ProcessEvent::new(1, "systemd");
    init.event_type = ProcessEventType::Snapshot;
    init.ppid = Some(0);
    init.accessible = true;
    init.executable_path = Some("/usr/lib/systemd/systemd".to_owned());
    init.process_key = Some(key(1, usize::MAX));
    h.push(init);
    let nginx = rows.iter().find(|r| r.name == "nginx").map_or(1, |r| r.pid);
    for (i, r) in rows.iter().enumerate() {
        let mut e = ProcessEvent::new(r.pid, r.name.clone());
        e.event_type = ProcessEventType::Exec;
        e.ppid = Some(if i % 50 == 0 && r.pid != nginx {
            nginx
        } else {
            1
        });
        e.accessible = true;
        e.executable_path.clone_from(&r.exe);
        e.command_line.clone_from(&r.argv);
        e.process_key = Some(key(r.pid, i));
        h.push(e);
    }
    h
}

/// The median over `reps` of `engine` over `rows`, less `empty`'s.
fn net_ms(
    engine: &mut RuleEngine,
    empty: &mut RuleEngine,
    rows: &[ProcessRow],
    reps: usize,
) -> anyhow::Result<f64> {
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        engine.evaluate(rows)?;
        let with = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        empty.evaluate(rows)?;
        ms.push(with - t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ms))
}

/// `--rules-dir`: the directory's process rules, together and the five
/// costliest alone.
fn time_dir(
    dir: &std::path::Path,
    rows: &[ProcessRow],
    empty: &mut RuleEngine,
    reps: usize,
) -> anyhow::Result<()> {
    let (loaded, refused) = rules::load_dir(dir);
    let process: Vec<_> = loaded
        .into_iter()
        .filter(|r| RuleKind::of(&r.sql) == RuleKind::Process)
        .collect();
    let mut engine = RuleEngine::new(process.clone())?;
    let n = engine.rules().len();
    report("rules.dir_process_rules", n, "rules");
    report(
        "rules.dir_refused",
        refused.len() + engine.refused().len(),
        "rules",
    );
    let all = net_ms(&mut engine, empty, rows, reps)?;
    report(
        &format!("rules.dir_ms_{n}_rules_{}_processes", rows.len()),
        format!("{all:.2}"),
        "ms",
    );
    report("rules.dir_matches", engine.evaluate(rows)?.len(), "matches");
    let mut each = Vec::with_capacity(process.len());
    for r in process {
        let id = r.id.clone();
        let mut one = RuleEngine::new(vec![r])?;
        each.push((net_ms(&mut one, empty, rows, reps)?, id));
    }
    each.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ms, id) in each.iter().take(5) {
        report(&format!("rules.dir_ms.{id}"), format!("{ms:.2}"), "ms");
    }
    Ok(())
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let pack = rules::builtin()?;
    let process_rules: Vec<_> = pack
        .iter()
        .filter(|r| RuleKind::of(&r.sql) == RuleKind::Process)
        .collect();
    let hundred: Vec<_> = (0..100)
        .map(|n| {
            let mut r = process_rules[n % process_rules.len()].clone();
            r.id = format!("{}-{}", r.id, n / process_rules.len());
            r
        })
        .collect();
    let n_rules = hundred.len();
    let rows = table(o.processes);
    let mut engine = RuleEngine::new(hundred)?;
    if !engine.refused().is_empty() {
        bail!("rules refused: {:?}", engine.refused());
    }
    engine.observe(&history(&rows));
    let mut empty = RuleEngine::new(Vec::new())?;
    let (mut full, mut load, mut matches) = (Vec::new(), Vec::new(), 0);
    for _ in 0..o.reps {
        let t = Instant::now();
        matches = engine.evaluate(&rows)?.len();
        full.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        empty.evaluate(&rows)?;
        load.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (full, load) = (median(full), median(load));
    report(
        &format!("rules.ms_{n_rules}_rules_{}_processes", o.processes),
        format!("{full:.2}"),
        "ms",
    );
    report("rules.load_only_ms", format!("{load:.2}"), "ms");
    report(
        "rules.ratio_vs_load_only",
        format!("{:.2}", full / load),
        "ratio",
    );
    report("rules.matches", matches, "matches");
    if let Some(dir) = &o.rules_dir {
        time_dir(dir, &rows, &mut empty, o.reps)?;
    }
    if o.per_rule {
        let past = history(&rows);
        for r in process_rules {
            let copies = (0..10)
                .map(|copy| {
                    let mut r = r.clone();
                    r.id = format!("{}-{copy}", r.id);
                    r
                })
                .collect();
            let mut one = RuleEngine::new(copies)?;
            one.observe(&past);
            let mut ms = Vec::new();
            for _ in 0..o.reps {
                let t = Instant::now();
                one.evaluate(&rows)?;
                let with_rule = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                empty.evaluate(&rows)?;
                ms.push(with_rule - t.elapsed().as_secs_f64() * 1e3);
            }
            report(
                &format!("rules.x10_ms.{}", r.id),
                format!("{:.2}", median(ms)),
                "ms",
            );
        }
    }
    Ok(())
}
