//! The detection pipeline: keeps the process table the collector reports,
//! turns each batch of events into rows, runs the rules, and raises
//! deduplicated alerts.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use collector_core::{ProcessEvent, ProcessEventType};

use crate::engine::{EngineError, ProcessRow, RuleEngine};
use daemoneye_store::alert::{Alert, AlertProcess, Deduper};

/// Whether a directory can be written by someone other than root: writable
/// by group or others, or owned by a non-root user.
fn user_writable(dir: &str) -> Option<bool> {
    let m = std::fs::metadata(dir).ok()?;
    Some(m.mode() & 0o022 != 0 || m.uid() != 0)
}

/// The detection state of the agent.
#[derive(Debug)]
pub struct Detector {
    engine: RuleEngine,
    dedup: Deduper,
    /// Live processes by pid, as last reported.
    table: HashMap<u32, ProcessEvent>,
    /// Directory -> user-writable, looked up once per directory.
    dirs: HashMap<String, Option<bool>>,
}

impl Detector {
    /// A detector with these rules, suppressing repeats within `window`.
    pub fn new(engine: RuleEngine, window: Duration) -> Self {
        Self {
            engine,
            dedup: Deduper::new(window, 100_000),
            table: HashMap::new(),
            dirs: HashMap::new(),
        }
    }

    /// The engine (rules, refusals, counters).
    pub fn engine(&self) -> &RuleEngine {
        &self.engine
    }

    /// Processes known alive.
    pub fn live(&self) -> usize {
        self.table.len()
    }

    /// Forgets every known process (a new collector session: its first
    /// snapshot tells who is alive now).
    pub fn forget_processes(&mut self) {
        self.table.clear();
    }

    /// Repeats suppressed.
    pub fn suppressed(&self) -> u64 {
        self.dedup.suppressed()
    }

    fn row(&mut self, e: &ProcessEvent) -> ProcessRow {
        let writable = e.executable_path.as_deref().and_then(|p| {
            let dir = p
                .rsplit_once('/')
                .map(|(d, _)| if d.is_empty() { "/" } else { d })?;
            *self
                .dirs
                .entry(dir.to_owned())
                .or_insert_with(|| user_writable(dir))
        });
        let parent = e.ppid.and_then(|pp| self.table.get(&pp));
        ProcessRow::from_event(e, parent, writable)
    }

    /// Updates the table with `events` and judges them. Returns the new
    /// (not deduplicated away) alerts.
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn on_events(&mut self, events: &[ProcessEvent]) -> Result<Vec<Alert>, EngineError> {
        for e in events {
            match e.event_type {
                ProcessEventType::Exit => {
                    self.table.remove(&e.pid);
                }
                _ if e.accessible || !self.table.contains_key(&e.pid) => {
                    self.table.insert(e.pid, e.clone());
                }
                _ => {}
            }
        }
        // One row per process: its most complete event of the batch (the
        // last readable one), so a process that execs and exits within one
        // batch is still judged on what it ran, and each alert shows the
        // event that matched.
        let mut best: Vec<&ProcessEvent> = Vec::new();
        let mut slot: HashMap<u32, usize> = HashMap::with_capacity(events.len());
        for e in events {
            match slot.get(&e.pid).map(|&i| &mut best[i]) {
                Some(b) if e.accessible || !b.accessible => {
                    if e.event_type != ProcessEventType::Exit || !b.accessible {
                        *b = e;
                    }
                }
                Some(_) => {}
                None => {
                    slot.insert(e.pid, best.len());
                    best.push(e);
                }
            }
        }
        let rows: Vec<ProcessRow> = best.iter().map(|e| self.row(e)).collect();
        self.judge(&best, &rows)
    }

    /// Runs the rules over the whole table (the periodic sweep).
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn sweep(&mut self) -> Result<Vec<Alert>, EngineError> {
        // Owned: rows are built with `&mut self` (the directory cache).
        let events: Vec<ProcessEvent> = self.table.values().cloned().collect();
        let rows: Vec<ProcessRow> = events.iter().map(|e| self.row(e)).collect();
        self.judge(&events.iter().collect::<Vec<_>>(), &rows)
    }

    fn judge(
        &mut self,
        events: &[&ProcessEvent],
        rows: &[ProcessRow],
    ) -> Result<Vec<Alert>, EngineError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let matches = self.engine.evaluate(rows)?;
        // Rows are one per pid (a batch is merged per process, the table is
        // keyed by pid): find a match's row without scanning.
        let row_of: HashMap<u32, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.pid, i)).collect();
        let mut alerts = Vec::new();
        for m in matches {
            let Some(&i) = row_of.get(&m.pid) else {
                continue;
            };
            if m.process_key.is_some() && rows[i].process_key != m.process_key {
                continue;
            }
            let Some(rule) = self.engine.rules().iter().find(|r| r.id == m.rule_id) else {
                continue;
            };
            let e = &events[i];
            let parent = e.ppid.and_then(|pp| self.table.get(&pp));
            let alert = Alert::new(rule, AlertProcess::from_event(e, parent), e.timestamp);
            if self.dedup.admit(&alert) {
                alerts.push(alert);
            }
        }
        Ok(alerts)
    }
}

/// When `event` was observed, for latency figures.
pub fn age(event: &ProcessEvent) -> Duration {
    SystemTime::now()
        .duration_since(event.timestamp)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rules;

    fn exec(pid: u32, ppid: u32, name: &str, exe: &str, argv: &[&str]) -> ProcessEvent {
        let mut e = ProcessEvent::new(pid, name);
        e.event_type = ProcessEventType::Exec;
        e.ppid = Some(ppid);
        e.executable_path = Some(exe.to_owned());
        e.command_line = argv.iter().map(ToString::to_string).collect();
        e
    }

    #[test]
    fn parents_are_joined_and_repeats_suppressed() {
        let mut d = Detector::new(
            RuleEngine::new(rules::builtin().unwrap()).unwrap(),
            Duration::from_secs(60),
        );
        let nginx = exec(100, 1, "nginx", "/usr/sbin/nginx", &["nginx"]);
        assert!(d.on_events(&[nginx]).unwrap().is_empty());
        let shell = exec(200, 100, "sh", "/usr/bin/dash", &["sh", "-c", "id"]);
        let alerts = d.on_events(std::slice::from_ref(&shell)).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule_id, "service-spawned-shell");
        assert_eq!(alerts[0].process.parent_name.as_deref(), Some("nginx"));
        assert_eq!(
            alerts[0].process.parent_executable_path.as_deref(),
            Some("/usr/sbin/nginx")
        );
        // The periodic sweep sees the same process: no second alert.
        assert!(d.sweep().unwrap().is_empty());
        assert_eq!(d.suppressed(), 1);
        let mut exit = shell;
        exit.event_type = ProcessEventType::Exit;
        d.on_events(&[exit]).unwrap();
        assert_eq!(d.live(), 1);
    }

    #[test]
    fn a_process_that_execs_and_exits_in_one_batch_is_still_judged() {
        let mut d = Detector::new(
            RuleEngine::new(rules::builtin().unwrap()).unwrap(),
            Duration::from_secs(60),
        );
        let mut unreadable_first = ProcessEvent::new(300, "");
        unreadable_first.accessible = false;
        unreadable_first.event_type = ProcessEventType::Fork;
        let run = exec(300, 1, "x", "/dev/shm/x", &["/dev/shm/x"]);
        let mut exit = run.clone();
        exit.event_type = ProcessEventType::Exit;
        let alerts = d.on_events(&[unreadable_first, run, exit]).unwrap();
        let temp = alerts
            .iter()
            .find(|a| a.rule_id == "exec-from-temp-dir")
            .unwrap();
        assert_eq!(
            temp.process.executable_path.as_deref(),
            Some("/dev/shm/x"),
            "the alert shows the matching event"
        );
        assert_eq!(d.live(), 0);
    }

    #[test]
    fn user_writable_dirs() {
        assert_eq!(user_writable("/tmp"), Some(true));
        assert_eq!(user_writable("/nonexistent-dir"), None);
    }
}
