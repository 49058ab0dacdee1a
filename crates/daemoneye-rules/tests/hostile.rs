//! Hostile rules cannot take the agent's memory: the process's peak
//! resident memory while they run stays within the engine's heap cap and
//! a margin. Alone in its test binary, so the memory measured is theirs.
#![allow(clippy::unwrap_used, missing_docs)]

use daemoneye_rules::engine::{ProcessRow, RuleEngine, ENGINE_HEAP_LIMIT};
use daemoneye_rules::rules::{self, Rule};

const HOSTILE: [&str; 7] = include!("hostile.in");

/// Resident memory now (`/proc/self/statm`, pages of 4 KiB).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The peak resident memory since the process started (`VmHWM`).
fn peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The rule `id` with `sql`, as a rule file holds it.
fn rule(id: &str, sql: &str) -> Rule {
    let text =
        format!("[[rule]]\nid = '{id}'\nname = '{id}'\nseverity = 'high'\nsql = '''{sql}'''\n");
    let (mut ok, bad) = rules::parse(&text, "hostile.toml");
    assert!(bad.is_empty(), "{bad:?}");
    ok.remove(0)
}

/// The margin over the heap cap: the process's own memory besides
/// SQLite's (the batch, the matches, allocator slack).
const MARGIN: u64 = 64 << 20;

#[test]
#[cfg(target_os = "linux")]
fn hostile_rules_stay_within_the_engine_memory_bound() {
    let batch: Vec<ProcessRow> = (1..=2000)
        .map(|pid| ProcessRow {
            pid,
            name: format!("p{pid}"),
            exe: Some(format!("/usr/bin/p{pid}")),
            argv: vec![format!("p{pid}"), "--flag".to_owned()],
            ..ProcessRow::default()
        })
        .collect();
    let mut warm = RuleEngine::new(rules::builtin().unwrap()).unwrap();
    warm.evaluate(&batch).unwrap();
    let base = resident();
    let normal = rule("normal", "SELECT pid FROM processes WHERE pid % 500 = 0");
    for sql in HOSTILE {
        let mut engine = RuleEngine::new(vec![rule("hostile", sql), normal.clone()]).unwrap();
        for _ in 0..2 {
            let found = engine.evaluate(&batch).unwrap();
            let normal: Vec<u32> = found
                .iter()
                .filter_map(|m| (m.rule_id == "normal").then_some(m.pid))
                .collect();
            assert_eq!(normal, [500, 1000, 1500, 2000], "{sql}");
        }
        let grew = peak().saturating_sub(base);
        eprintln!("after {sql:.60}: peak {} MiB over the base", grew >> 20);
    }
    let grew = peak().saturating_sub(base);
    let bound = u64::try_from(ENGINE_HEAP_LIMIT).unwrap() + MARGIN;
    assert!(
        grew < bound,
        "peak resident memory grew {} MiB (bound {} MiB)",
        grew >> 20,
        bound >> 20
    );
}
