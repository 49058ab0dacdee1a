//! Lifecycle tracking: turns snapshots and real-time kernel events into
//! start, exec, exit and modified events, and notices the suspicious:
//! PID reuse, an executable deleted or replaced while it runs, impossible
//! start times.
//!
//! Pure logic over [`ProcessEvent`]s: no I/O, so every rule is tested with
//! made-up processes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Registry};
use collector_core::{
    ObservedBy, ProcessEvent, ProcessEventType, ProcessField, ProcessKey, StartTimeAnomaly,
};
use serde::{Deserialize, Serialize};

/// What the tracker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleTrackingConfig {
    /// Emit start, exit and modified events (otherwise only snapshots and
    /// real-time events pass through).
    pub track_process_lifecycle: bool,
    /// Emit the suspicious events.
    pub detect_suspicious_events: bool,
    /// How long an exited process's pid is remembered to recognise its reuse.
    #[serde(with = "humantime_serde")]
    pub pid_reuse_window: Duration,
    /// Tolerance for a start time ahead of the clock.
    #[serde(with = "humantime_serde")]
    pub clock_skew_tolerance: Duration,
}

impl Default for LifecycleTrackingConfig {
    fn default() -> Self {
        Self {
            track_process_lifecycle: true,
            detect_suspicious_events: true,
            pid_reuse_window: Duration::from_secs(600),
            clock_skew_tolerance: Duration::from_secs(2),
        }
    }
}

/// Counts of what the tracker has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LifecycleStats {
    /// Processes tracked now.
    pub tracked: u64,
    /// Start events (reconciled from snapshots).
    pub starts: u64,
    /// Exec events.
    pub execs: u64,
    /// Exit events.
    pub exits: u64,
    /// Exits found by a snapshot, not the kernel (missed or no connector).
    pub exits_reconciled: u64,
    /// Modified events.
    pub modified: u64,
    /// Suspicious events.
    pub suspicious: u64,
}

/// The live counters behind [`LifecycleStats`]. Clones share them, so a
/// tracker made at each start can count into counters registered once.
#[derive(Debug, Clone, Default)]
pub struct LifecycleCounters {
    starts: Counter,
    execs: Counter,
    exits: Counter,
    exits_reconciled: Counter,
    modified: Counter,
    suspicious: Counter,
}

impl LifecycleCounters {
    /// Registers the counters in `registry` (stage `lifecycle`):
    /// `daemoneye_lifecycle_events_total{kind}` and
    /// `daemoneye_exits_reconciled_total`.
    pub fn register(&self, registry: &Registry) {
        registry.register_by(
            "daemoneye_lifecycle_events_total",
            "Lifecycle events the tracker emitted, by kind.",
            &[("stage", "lifecycle")],
            "kind",
            [
                ("start", &self.starts),
                ("exec", &self.execs),
                ("exit", &self.exits),
                ("modified", &self.modified),
                ("suspicious", &self.suspicious),
            ],
        );
        registry.register_counter(
            "daemoneye_exits_reconciled_total",
            "Exits found by a snapshot, not the kernel (missed or no connector).",
            &[("stage", "lifecycle")],
            &self.exits_reconciled,
        );
    }
}

#[derive(Debug)]
struct Tracked {
    start_ticks: Option<u64>,
    last: ProcessEvent,
    /// CPU ticks and when they were read, for the usage rate.
    cpu: Option<(u64, SystemTime)>,
    reported: HashSet<ProcessEventType>,
    seen_in_pass: u64,
    first_seen: SystemTime,
}

/// The tracker. Feed it snapshots and kernel events; it returns the events
/// to publish.
#[derive(Debug)]
pub struct LifecycleTracker {
    config: LifecycleTrackingConfig,
    known: HashMap<u32, Tracked>,
    /// pid -> (key of the process that had it, when it exited).
    exited: HashMap<u32, (Option<ProcessKey>, SystemTime)>,
    pass: u64,
    ticks_per_sec: u64,
    counters: LifecycleCounters,
}

/// What one snapshot pass found ([`LifecycleTracker::snapshot_pass`]).
#[derive(Debug, Default)]
pub struct SnapshotPass {
    /// Every process read, its CPU usage filled.
    pub processes: Vec<ProcessEvent>,
    /// For each of `processes`: true when the process is in the state the
    /// tracker last held for it (every field but the event's type, time,
    /// id and detail equal), so a consumer that has seen it need not be
    /// sent it again.
    pub unchanged: Vec<bool>,
    /// The lifecycle events the pass revealed (starts, exits,
    /// modifications, suspicious findings).
    pub lifecycle: Vec<ProcessEvent>,
}

/// Whether `now` says nothing about its process that `before` did not:
/// every field but the event's type, time, id and detail equal. Each field
/// is named, so a new one needs a decision here.
fn same_state(before: &ProcessEvent, now: &ProcessEvent) -> bool {
    let ProcessEvent {
        event_type: _,
        pid,
        ppid,
        name,
        executable_path,
        command_line,
        start_time,
        cpu_usage,
        memory_usage,
        executable_hash,
        hash_algorithm,
        user_id,
        accessible,
        file_exists,
        timestamp: _,
        platform_metadata,
        process_key,
        exit_code,
        euid,
        gid,
        state,
        threads,
        cpu_ticks,
        exe_replaced,
        read,
        context,
        lifecycle: _,
        id: _,
    } = now;
    before.pid == *pid
        && before.ppid == *ppid
        && before.name == *name
        && before.executable_path == *executable_path
        && before.command_line == *command_line
        && before.start_time == *start_time
        && before.cpu_usage == *cpu_usage
        && before.memory_usage == *memory_usage
        && before.executable_hash == *executable_hash
        && before.hash_algorithm == *hash_algorithm
        && before.user_id == *user_id
        && before.accessible == *accessible
        && before.file_exists == *file_exists
        && before.platform_metadata == *platform_metadata
        && before.process_key == *process_key
        && before.exit_code == *exit_code
        && before.euid == *euid
        && before.gid == *gid
        && before.state == *state
        && before.threads == *threads
        && before.cpu_ticks == *cpu_ticks
        && before.exe_replaced == *exe_replaced
        && before.read == *read
        && before.context == *context
}

/// The start time in clock ticks, from the process key.
fn start_ticks(p: &ProcessEvent) -> Option<u64> {
    p.process_key.map(|k| k.start_ticks)
}

fn with_type(p: &ProcessEvent, t: ProcessEventType, now: SystemTime) -> ProcessEvent {
    let mut e = p.clone();
    e.event_type = t;
    e.timestamp = now;
    e.exit_code = None;
    // The detail is this event's own, not the one `p` carried.
    e.lifecycle = None;
    e
}

impl LifecycleTracker {
    /// A tracker; `ticks_per_sec` converts CPU ticks into a usage rate.
    pub fn new(config: LifecycleTrackingConfig, ticks_per_sec: u64) -> Self {
        Self {
            config,
            known: HashMap::new(),
            exited: HashMap::new(),
            pass: 0,
            ticks_per_sec: ticks_per_sec.max(1),
            counters: LifecycleCounters::default(),
        }
    }

    /// Counts into `counters` from now on (counters shared with an earlier
    /// tracker go on from where it left them).
    #[must_use]
    pub fn with_counters(mut self, counters: LifecycleCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Counts so far.
    pub fn stats(&self) -> LifecycleStats {
        let c = &self.counters;
        LifecycleStats {
            tracked: self.known.len() as u64,
            starts: c.starts.get(),
            execs: c.execs.get(),
            exits: c.exits.get(),
            exits_reconciled: c.exits_reconciled.get(),
            modified: c.modified.get(),
            suspicious: c.suspicious.get(),
        }
    }

    /// Snapshot passes taken so far.
    pub fn passes(&self) -> u64 {
        self.pass
    }

    /// The last known state of `pid`.
    pub fn get(&self, pid: u32) -> Option<&ProcessEvent> {
        self.known.get(&pid).map(|t| &t.last)
    }

    fn push(&mut self, out: &mut Vec<ProcessEvent>, e: ProcessEvent) {
        let t = e.event_type;
        let lifecycle = matches!(
            t,
            ProcessEventType::Start | ProcessEventType::Exit | ProcessEventType::Modified
        );
        if t.is_suspicious() && !self.config.detect_suspicious_events
            || lifecycle && !self.config.track_process_lifecycle
        {
            return;
        }
        match t {
            ProcessEventType::Start => self.counters.starts.inc(),
            ProcessEventType::Exec => self.counters.execs.inc(),
            ProcessEventType::Exit => self.counters.exits.inc(),
            ProcessEventType::Modified => self.counters.modified.inc(),
            _ if t.is_suspicious() => self.counters.suspicious.inc(),
            _ => {}
        }
        out.push(e);
    }

    /// A snapshot pass taken at `taken_at`: fills each process's CPU usage
    /// and returns the snapshot events followed by the lifecycle events it
    /// reveals (starts, exits, modifications, suspicious findings).
    pub fn on_snapshot(
        &mut self,
        processes: Vec<ProcessEvent>,
        taken_at: SystemTime,
    ) -> Vec<ProcessEvent> {
        let SnapshotPass {
            mut processes,
            lifecycle,
            ..
        } = self.snapshot_pass(processes, taken_at);
        processes.extend(lifecycle);
        processes
    }

    /// As [`on_snapshot`](Self::on_snapshot), with the snapshot events and
    /// the lifecycle events apart, and each snapshot event marked when the
    /// process is in the state the tracker last held for it (from the pass
    /// before or a kernel event since): what a consumer that has seen that
    /// state need not be sent again.
    pub fn snapshot_pass(
        &mut self,
        processes: Vec<ProcessEvent>,
        taken_at: SystemTime,
    ) -> SnapshotPass {
        self.pass += 1;
        let first = self.pass == 1;
        let now = SystemTime::now();
        let mut lifecycle = Vec::new();
        let mut snapshot = Vec::with_capacity(processes.len());
        let mut unchanged = Vec::with_capacity(processes.len());
        let start_of: HashMap<u32, u64> = processes
            .iter()
            .filter_map(|p| Some((p.pid, start_ticks(p)?)))
            .collect();

        for mut p in processes {
            let start = start_ticks(&p);
            // A process the kernel already told us has exited: stale read.
            if let Some((key, _)) = self.exited.get(&p.pid) {
                if key.is_some() && *key == p.process_key {
                    continue;
                }
            }
            let ticks = p.cpu_ticks;
            let mut is_unchanged = false;
            let same = self.known.get(&p.pid).is_some_and(|t| {
                t.start_ticks.is_none() || start.is_none() || t.start_ticks == start
            });
            if same {
                if let Some(t) = self.known.get(&p.pid) {
                    if let (Some((before, at)), Some(now_ticks)) = (t.cpu, ticks) {
                        if let Ok(dt) = p.timestamp.duration_since(at) {
                            if !dt.is_zero() && now_ticks >= before {
                                let secs = (now_ticks - before) as f64 / self.ticks_per_sec as f64;
                                p.cpu_usage = Some(100.0 * secs / dt.as_secs_f64());
                            }
                        }
                    }
                    is_unchanged = same_state(&t.last, &p);
                    if let Some(m) = Self::modification(&t.last, &p, now) {
                        self.push(&mut lifecycle, m);
                    }
                }
            } else {
                if let Some(old) = self.known.remove(&p.pid) {
                    // Its pid now names another process: the old one exited unseen.
                    let mut exit = with_type(&old.last, ProcessEventType::Exit, now);
                    exit.lifecycle_mut().observed_by = Some(ObservedBy::Snapshot);
                    self.counters.exits_reconciled.inc();
                    self.push(&mut lifecycle, exit);
                    self.exited.insert(p.pid, (old.last.process_key, now));
                }
                if !first {
                    self.push(&mut lifecycle, with_type(&p, ProcessEventType::Start, now));
                }
                self.check_reuse(&p, false, now, &mut lifecycle);
            }
            let entry = self.known.entry(p.pid).or_insert_with(|| Tracked {
                start_ticks: start,
                last: p.clone(),
                cpu: None,
                reported: HashSet::new(),
                seen_in_pass: 0,
                first_seen: taken_at,
            });
            entry.start_ticks = entry.start_ticks.or(start);
            entry.last = p.clone();
            entry.cpu = ticks.map(|t| (t, p.timestamp));
            entry.seen_in_pass = self.pass;
            let parent_start = p.ppid.and_then(|pp| start_of.get(&pp)).copied();
            self.check_suspicious(&p, parent_start, now, &mut lifecycle);
            snapshot.push(p);
            unchanged.push(is_unchanged);
        }

        // Known before this pass began, absent from it: exited unseen.
        let gone: Vec<u32> = self
            .known
            .iter()
            .filter(|(_, t)| t.seen_in_pass != self.pass && t.first_seen < taken_at)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(old) = self.known.remove(&pid) {
                let mut exit = with_type(&old.last, ProcessEventType::Exit, now);
                exit.lifecycle_mut().observed_by = Some(ObservedBy::Snapshot);
                self.counters.exits_reconciled.inc();
                self.push(&mut lifecycle, exit);
                self.exited.insert(pid, (old.last.process_key, now));
            }
        }
        let window = self.config.pid_reuse_window;
        self.exited
            .retain(|_, (_, at)| now.duration_since(*at).map_or(true, |age| age <= window));
        SnapshotPass {
            processes: snapshot,
            unchanged,
            lifecycle,
        }
    }

    /// A process executed a program; `p` is what could be read of it then
    /// (`accessible = false` and empty fields when it was already gone).
    pub fn on_exec(&mut self, mut p: ProcessEvent) -> Vec<ProcessEvent> {
        let mut out = Vec::new();
        let now = p.timestamp;
        p.event_type = ProcessEventType::Exec;
        if !p.accessible {
            // Gone before it could be read: what the fork read of this very
            // process (identity, parent, start) still holds; its new argv,
            // executable and name are unknown and stay empty.
            if let Some(t) = self.known.get(&p.pid) {
                p.process_key = t.last.process_key;
                p.ppid = t.last.ppid;
                p.start_time = t.last.start_time;
            }
        }
        let start = start_ticks(&p);
        if let Some(old) = self.known.get(&p.pid) {
            if start.is_some() && old.start_ticks.is_some() && old.start_ticks != start {
                // The kernel's exit for the old process never reached us.
                if let Some(old) = self.known.remove(&p.pid) {
                    let mut exit = with_type(&old.last, ProcessEventType::Exit, now);
                    exit.lifecycle_mut().observed_by = Some(ObservedBy::Exec);
                    self.push(&mut out, exit);
                    self.exited.insert(p.pid, (old.last.process_key, now));
                }
            }
        }
        if !self.known.contains_key(&p.pid) {
            self.check_reuse(&p, false, now, &mut out);
        }
        self.push(&mut out, p.clone());
        let entry = self.known.entry(p.pid).or_insert_with(|| Tracked {
            start_ticks: start,
            last: p.clone(),
            cpu: None,
            reported: HashSet::new(),
            seen_in_pass: self.pass,
            first_seen: now,
        });
        entry.start_ticks = entry.start_ticks.or(start);
        // An unreadable exec keeps what we knew from the fork, rather than
        // forgetting it; a readable one replaces it.
        if p.accessible {
            entry.last = p.clone();
        }
        if p.accessible {
            let parent_start = p
                .ppid
                .and_then(|pp| self.known.get(&pp))
                .and_then(|t| t.start_ticks);
            self.check_suspicious(&p, parent_start, now, &mut out);
        }
        out
    }

    /// A process forked `child` (a new process, not a thread). `child_event`
    /// is what could be read of the child (at least its start time when it
    /// was still there).
    pub fn on_fork(&mut self, mut child_event: ProcessEvent) -> Vec<ProcessEvent> {
        let mut out = Vec::new();
        let now = child_event.timestamp;
        child_event.event_type = ProcessEventType::Fork;
        let pid = child_event.pid;
        let start = start_ticks(&child_event);
        if let Some(old) = self.known.remove(&pid) {
            let mut exit = with_type(&old.last, ProcessEventType::Exit, now);
            exit.lifecycle_mut().observed_by = Some(ObservedBy::Fork);
            self.push(&mut out, exit);
            self.exited.insert(pid, (old.last.process_key, now));
        }
        self.check_reuse(&child_event, true, now, &mut out);
        self.push(&mut out, child_event.clone());
        self.known.insert(
            pid,
            Tracked {
                start_ticks: start,
                last: child_event,
                cpu: None,
                reported: HashSet::new(),
                seen_in_pass: self.pass,
                first_seen: now,
            },
        );
        out
    }

    /// A process exited with the raw wait status `exit_code`.
    pub fn on_exit(&mut self, pid: u32, exit_code: i32, now: SystemTime) -> Vec<ProcessEvent> {
        let mut out = Vec::new();
        let mut e = match self.known.remove(&pid) {
            Some(t) => with_type(&t.last, ProcessEventType::Exit, now),
            None => {
                if self.exited.contains_key(&pid) {
                    // Already reported by a snapshot that raced the kernel.
                    return out;
                }
                // Never seen: say so, invent nothing.
                let mut e = ProcessEvent::new(pid, "");
                e.event_type = ProcessEventType::Exit;
                e.accessible = false;
                e.timestamp = now;
                e
            }
        };
        if let Some(run) = e.start_time.and_then(|s| now.duration_since(s).ok()) {
            e.lifecycle_mut().run_time_ms = u64::try_from(run.as_millis()).ok();
        }
        e.lifecycle_mut().observed_by = Some(ObservedBy::Kernel);
        e.exit_code = Some(exit_code);
        self.exited.insert(pid, (e.process_key, now));
        self.push(&mut out, e);
        out
    }

    /// The kernel reported a uid or comm change for `pid`.
    pub fn on_change(
        &mut self,
        pid: u32,
        uid: Option<u32>,
        comm: Option<String>,
        now: SystemTime,
    ) -> Vec<ProcessEvent> {
        let mut out = Vec::new();
        let Some(t) = self.known.get_mut(&pid) else {
            return out;
        };
        let mut changed = Vec::new();
        if let Some(uid) = uid {
            if t.last.user_id != Some(uid) {
                t.last.user_id = Some(uid);
                changed.push(ProcessField::Uid);
            }
        }
        if let Some(comm) = comm {
            if t.last.name != comm {
                t.last.name = comm;
                changed.push(ProcessField::Name);
            }
        }
        if changed.is_empty() {
            return out;
        }
        let mut e = with_type(&t.last, ProcessEventType::Modified, now);
        e.lifecycle_mut().changed = changed;
        self.push(&mut out, e);
        out
    }

    fn modification(
        before: &ProcessEvent,
        now_p: &ProcessEvent,
        now: SystemTime,
    ) -> Option<ProcessEvent> {
        let mut changed = Vec::new();
        if before.command_line != now_p.command_line && !now_p.command_line.is_empty() {
            changed.push(ProcessField::Argv);
        }
        if before.executable_path != now_p.executable_path && now_p.executable_path.is_some() {
            changed.push(ProcessField::Exe);
        }
        if before.user_id != now_p.user_id && now_p.user_id.is_some() {
            changed.push(ProcessField::Uid);
        }
        if before.name != now_p.name {
            changed.push(ProcessField::Name);
        }
        if changed.is_empty() {
            return None;
        }
        let mut e = with_type(now_p, ProcessEventType::Modified, now);
        e.lifecycle_mut().changed = changed;
        Some(e)
    }

    /// Reports `p` as a reuse of a pid whose process exited. After a fork
    /// (`kernel_new`: the kernel made a new process with this pid) that is
    /// certain even when the keys are equal: the key's start time counts
    /// clock ticks (10 ms), and a pid handed out again within one tick gets
    /// the same key. Otherwise (an exec, a snapshot) equal keys mean the old
    /// process after all (a stale read, an exit wrongly inferred), not a new
    /// one.
    fn check_reuse(
        &mut self,
        p: &ProcessEvent,
        kernel_new: bool,
        now: SystemTime,
        out: &mut Vec<ProcessEvent>,
    ) {
        if let Some((old_key, _)) = self.exited.remove(&p.pid) {
            if kernel_new || old_key.is_none() || old_key != p.process_key {
                let mut e = with_type(p, ProcessEventType::PidReused, now);
                e.lifecycle_mut().previous_key = old_key;
                self.push(out, e);
            }
        }
    }

    /// Deleted or replaced executable, impossible start time: once each per
    /// process.
    fn check_suspicious(
        &mut self,
        p: &ProcessEvent,
        parent_start: Option<u64>,
        now: SystemTime,
        out: &mut Vec<ProcessEvent>,
    ) {
        let mut found = Vec::new();
        if !p.file_exists {
            found.push(ProcessEventType::ExecutableDeleted);
        }
        if p.exe_replaced {
            found.push(ProcessEventType::ExecutableReplaced);
        }
        let future = p
            .start_time
            .and_then(|s| s.duration_since(now).ok())
            .is_some_and(|ahead| ahead > self.config.clock_skew_tolerance);
        let before_parent = match (start_ticks(p), parent_start) {
            // pid 0's children (init, kthreadd) have no real parent to compare.
            (Some(child), Some(parent)) => p.ppid.is_some_and(|pp| pp != 0) && child < parent,
            _ => false,
        };
        if future || before_parent {
            found.push(ProcessEventType::StartTimeAnomaly);
        }
        for kind in found {
            let already = self
                .known
                .get(&p.pid)
                .is_some_and(|t| t.reported.contains(&kind) && t.start_ticks == start_ticks(p));
            if already {
                continue;
            }
            let mut e = with_type(p, kind, now);
            if kind == ProcessEventType::StartTimeAnomaly {
                e.lifecycle_mut().anomaly = Some(if before_parent {
                    StartTimeAnomaly::StartedBeforeParent
                } else {
                    StartTimeAnomaly::StartTimeInFuture
                });
            }
            self.push(out, e);
            if let Some(t) = self.known.get_mut(&p.pid) {
                t.reported.insert(kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use collector_core::BootId;

    use super::*;

    const BOOT: BootId = BootId::from_bytes([9; 16]);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn p(pid: u32, ppid: u32, start: u64, argv: &[&str]) -> ProcessEvent {
        let mut e = ProcessEvent::new(pid, argv.first().copied().unwrap_or("kworker"));
        e.ppid = Some(ppid);
        e.command_line = argv.iter().map(ToString::to_string).collect();
        e.executable_path = argv.first().map(|a| format!("/usr/bin/{a}"));
        e.start_time = Some(t(0) + Duration::from_millis(start * 10));
        e.process_key = Some(ProcessKey::new(BOOT, pid, start));
        e.cpu_ticks = Some(0);
        e
    }

    fn kinds(events: &[ProcessEvent]) -> Vec<(u32, ProcessEventType)> {
        events
            .iter()
            .filter(|e| e.event_type != ProcessEventType::Snapshot)
            .map(|e| (e.pid, e.event_type))
            .collect()
    }

    /// The first of `events` of type `kind`; fails the test when there is none.
    fn first_of(events: &[ProcessEvent], kind: ProcessEventType) -> &ProcessEvent {
        events
            .iter()
            .find(|e| e.event_type == kind)
            .unwrap_or_else(|| panic!("no {kind:?} in {:?}", kinds(events)))
    }

    fn tracker() -> LifecycleTracker {
        LifecycleTracker::new(LifecycleTrackingConfig::default(), 100)
    }

    #[test]
    fn snapshots_reveal_starts_and_exits() {
        let mut tr = tracker();
        let first = tr.on_snapshot(vec![p(1, 0, 1, &["init"]), p(100, 1, 50, &["sshd"])], t(1));
        assert_eq!(first.len(), 2);
        assert!(
            kinds(&first).is_empty(),
            "the first pass only reports the table"
        );
        let second = tr.on_snapshot(vec![p(1, 0, 1, &["init"]), p(200, 1, 90, &["cron"])], t(2));
        assert_eq!(
            kinds(&second),
            vec![
                (200, ProcessEventType::Start),
                (100, ProcessEventType::Exit)
            ]
        );
        let exit = first_of(&second, ProcessEventType::Exit);
        assert_eq!(exit.lifecycle().observed_by, Some(ObservedBy::Snapshot));
        assert_eq!(
            exit.exit_code, None,
            "an exit seen only by a snapshot has no code"
        );
        assert_eq!(tr.stats().exits_reconciled, 1);
    }

    #[test]
    fn shared_counters_go_on_across_trackers_and_read_the_same_by_name() {
        let counters = LifecycleCounters::default();
        let registry = Registry::new();
        counters.register(&registry);
        for round in 0..2 {
            // A tracker per start (as each `start` of the source makes one).
            let mut tr = tracker().with_counters(counters.clone());
            tr.on_snapshot(vec![p(1, 0, 1, &["init"])], t(1));
            tr.on_snapshot(vec![p(1, 0, 1, &["init"]), p(200, 1, 90, &["cron"])], t(2));
            assert_eq!(tr.stats().starts, round + 1);
        }
        let start = [("stage", "lifecycle"), ("kind", "start")];
        assert_eq!(
            registry.value("daemoneye_lifecycle_events_total", &start),
            Some(2)
        );
    }

    #[test]
    fn a_pid_naming_a_new_process_between_snapshots_is_reuse() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(100, 1, 50, &["sshd"])], t(1));
        let out = tr.on_snapshot(vec![p(100, 1, 90, &["nc", "-l"])], t(2));
        assert_eq!(
            kinds(&out),
            vec![
                (100, ProcessEventType::Exit),
                (100, ProcessEventType::Start),
                (100, ProcessEventType::PidReused)
            ]
        );
        let reuse = first_of(&out, ProcessEventType::PidReused);
        assert_eq!(
            reuse.lifecycle().previous_key,
            Some(ProcessKey::new(BOOT, 100, 50))
        );
        assert_eq!(reuse.process_key, Some(ProcessKey::new(BOOT, 100, 90)));
    }

    #[test]
    fn a_pid_reused_after_a_kernel_exit_is_reported() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(100, 1, 50, &["sshd"])], t(1));
        let exit = tr.on_exit(100, 0, t(2));
        assert_eq!(kinds(&exit), vec![(100, ProcessEventType::Exit)]);
        let fork = tr.on_fork(p(100, 1, 95, &["bash"]));
        assert_eq!(
            kinds(&fork),
            vec![
                (100, ProcessEventType::PidReused),
                (100, ProcessEventType::Fork)
            ]
        );
        // The same process seen again is not reuse.
        let exec = tr.on_exec(p(100, 1, 95, &["bash", "-c", "id"]));
        assert_eq!(kinds(&exec), vec![(100, ProcessEventType::Exec)]);
    }

    #[test]
    fn a_pid_reused_within_one_clock_tick_is_still_reported_after_a_fork() {
        // Same pid, same start tick (10 ms): the keys are equal, yet the
        // kernel forked a new process after the old one's exit.
        let mut tr = tracker();
        tr.on_fork(p(100, 1, 50, &["sleep", "30"]));
        tr.on_exit(100, 9, t(2));
        let fork = tr.on_fork(p(100, 1, 50, &["sleep", "30"]));
        assert_eq!(
            kinds(&fork),
            vec![
                (100, ProcessEventType::PidReused),
                (100, ProcessEventType::Fork)
            ]
        );
        // A snapshot's stale read of the old process is not reuse.
        let mut tr = tracker();
        tr.on_snapshot(vec![p(200, 1, 60, &["cron"])], t(1));
        tr.on_exit(200, 0, t(2));
        let stale = tr.on_snapshot(vec![p(200, 1, 60, &["cron"])], t(3));
        assert!(
            !kinds(&stale).contains(&(200, ProcessEventType::PidReused)),
            "{:?}",
            kinds(&stale)
        );
    }

    #[test]
    fn fork_exec_exit_carry_code_run_time_and_key() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(1, 0, 1, &["init"])], t(1));
        tr.on_fork(p(300, 1, 100, &["init"]));
        let exec = tr.on_exec(p(300, 1, 100, &["true"]));
        assert_eq!(exec[0].command_line, vec!["true"]);
        let exit = tr.on_exit(300, 3 << 8, t(5));
        assert_eq!(exit.len(), 1);
        let e = &exit[0];
        assert_eq!(
            (e.event_type, e.exit_code, e.name.as_str()),
            (ProcessEventType::Exit, Some(3 << 8), "true")
        );
        assert_eq!(e.process_key, Some(ProcessKey::new(BOOT, 300, 100)));
        assert!(e.lifecycle().run_time_ms.is_some());
        // A snapshot that raced the exit and still lists the process is stale.
        let out = tr.on_snapshot(vec![p(1, 0, 1, &["init"]), p(300, 1, 100, &["true"])], t(4));
        assert!(kinds(&out).is_empty(), "{:?}", kinds(&out));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_unreadable_exec_keeps_the_identity_its_fork_read() {
        let mut tr = tracker();
        tr.on_fork(p(500, 1, 77, &["bash"]));
        let mut gone = ProcessEvent::new(500, "");
        gone.accessible = false;
        let out = tr.on_exec(gone);
        let e = &out[0];
        assert_eq!(e.event_type, ProcessEventType::Exec);
        assert_eq!(e.process_key, Some(ProcessKey::new(BOOT, 500, 77)));
        assert_eq!(e.ppid, Some(1));
        assert!(e.command_line.is_empty() && e.executable_path.is_none() && e.name.is_empty());
    }

    #[test]
    fn a_process_started_during_a_pass_is_not_taken_for_dead() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(1, 0, 1, &["init"])], t(1));
        let mut late = p(400, 1, 500, &["cc"]);
        late.timestamp = t(10);
        tr.on_exec(late);
        // The pass began before the exec and did not list it.
        let out = tr.on_snapshot(vec![p(1, 0, 1, &["init"])], t(9));
        assert!(kinds(&out).is_empty(), "{:?}", kinds(&out));
        assert!(tr.get(400).is_some());
    }

    #[test]
    fn an_unknown_exit_invents_nothing() {
        let mut tr = tracker();
        let out = tr.on_exit(777, 9, t(1));
        let e = &out[0];
        assert_eq!(
            (e.name.as_str(), e.accessible, e.process_key),
            ("", false, None)
        );
        assert_eq!(e.executable_path, None);
        assert_eq!(e.exit_code, Some(9));
    }

    #[test]
    fn deleted_and_replaced_executables_are_reported_once() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(100, 1, 50, &["payload"])], t(1));
        let mut gone = p(100, 1, 50, &["payload"]);
        gone.file_exists = false;
        let out = tr.on_snapshot(vec![gone.clone()], t(2));
        assert_eq!(
            kinds(&out),
            vec![(100, ProcessEventType::ExecutableDeleted)]
        );
        assert!(kinds(&tr.on_snapshot(vec![gone], t(3))).is_empty());

        let mut swapped = p(200, 1, 60, &["sshd"]);
        swapped.exe_replaced = true;
        let out = tr.on_snapshot(vec![swapped], t(4));
        assert!(kinds(&out).contains(&(200, ProcessEventType::ExecutableReplaced)));
    }

    #[test]
    fn impossible_start_times_are_anomalies() {
        let mut tr = tracker();
        // Child started (tick 10) before its parent (tick 50).
        let out = tr.on_snapshot(
            vec![p(100, 1, 50, &["parent"]), p(101, 100, 10, &["child"])],
            t(1),
        );
        let a = first_of(&out, ProcessEventType::StartTimeAnomaly);
        assert_eq!(
            (a.pid, a.lifecycle().anomaly),
            (101, Some(StartTimeAnomaly::StartedBeforeParent))
        );
        // Start time an hour ahead of now.
        let mut future = p(102, 1, 60, &["x"]);
        future.start_time = Some(SystemTime::now() + Duration::from_secs(3600));
        let out = tr.on_snapshot(vec![future], t(2));
        assert!(kinds(&out).contains(&(102, ProcessEventType::StartTimeAnomaly)));
        // A normal child is not an anomaly.
        let out = tr.on_snapshot(
            vec![p(100, 1, 50, &["parent"]), p(103, 100, 70, &["ok"])],
            t(3),
        );
        assert!(!kinds(&out)
            .iter()
            .any(|(pid, k)| *pid == 103 && k.is_suspicious()));
    }

    #[test]
    fn argv_exe_uid_and_name_changes_are_modifications() {
        let mut tr = tracker();
        tr.on_snapshot(vec![p(100, 1, 50, &["python3", "a.py"])], t(1));
        let out = tr.on_snapshot(vec![p(100, 1, 50, &["python3", "b.py"])], t(2));
        let m = first_of(&out, ProcessEventType::Modified);
        assert_eq!(m.lifecycle().changed, [ProcessField::Argv]);
        let out = tr.on_change(100, Some(0), None, t(3));
        assert_eq!(out[0].lifecycle().changed, [ProcessField::Uid]);
        assert_eq!(out[0].user_id, Some(0));
        assert!(
            tr.on_change(100, Some(0), None, t(4)).is_empty(),
            "no change, no event"
        );
    }

    #[test]
    fn cpu_usage_is_the_tick_rate_between_passes() {
        let mut tr = tracker();
        let mut a = p(100, 1, 50, &["busy"]);
        a.timestamp = t(10);
        tr.on_snapshot(vec![a.clone()], t(10));
        a.timestamp = t(12);
        a.cpu_ticks = Some(100);
        let out = tr.on_snapshot(vec![a], t(12));
        // 100 ticks at 100/s over 2 s: half a core.
        assert_eq!(out[0].cpu_usage, Some(50.0));
    }

    #[test]
    fn disabled_detection_reports_nothing_suspicious() {
        let config = LifecycleTrackingConfig {
            detect_suspicious_events: false,
            ..LifecycleTrackingConfig::default()
        };
        let mut tr = LifecycleTracker::new(config, 100);
        tr.on_snapshot(vec![p(100, 1, 50, &["a"])], t(1));
        let out = tr.on_snapshot(vec![p(100, 1, 90, &["b"])], t(2));
        assert!(!kinds(&out).iter().any(|(_, k)| k.is_suspicious()));
    }

    /// A pass marks what the tracker already held: nothing on the first
    /// pass; on the next ones a process read as before (its CPU usage
    /// included), not one whose ticks, argv or memory moved, nor a new one.
    #[test]
    fn a_pass_marks_the_processes_that_did_not_change() {
        let mut tr = tracker();
        let at = |mut e: ProcessEvent, secs| {
            e.timestamp = t(secs);
            e
        };
        let idle = p(100, 1, 5, &["sleep", "100"]);
        let busy = p(200, 1, 6, &["yes"]);
        let renamed = p(300, 1, 7, &["worker"]);
        let pids = |pass: &SnapshotPass| -> Vec<(u32, bool)> {
            let pids = pass.processes.iter().map(|e| e.pid);
            pids.zip(pass.unchanged.iter().copied()).collect()
        };
        let first = tr.snapshot_pass(
            vec![
                at(idle.clone(), 1),
                at(busy.clone(), 1),
                at(renamed.clone(), 1),
            ],
            t(1),
        );
        assert_eq!(pids(&first), [(100, false), (200, false), (300, false)]);
        // The second read gives each a CPU usage (none before): all changed.
        let mut busy2 = at(busy.clone(), 2);
        busy2.cpu_ticks = Some(100);
        let second = tr.snapshot_pass(
            vec![at(idle.clone(), 2), busy2, at(renamed.clone(), 2)],
            t(2),
        );
        assert_eq!(pids(&second), [(100, false), (200, false), (300, false)]);
        let mut busy3 = at(busy, 3);
        busy3.cpu_ticks = Some(150);
        let mut renamed3 = at(renamed, 3);
        renamed3.command_line = vec!["worker: idle".into()];
        let mut more = at(p(301, 1, 8, &["new"]), 3);
        more.memory_usage = Some(4096);
        let third = tr.snapshot_pass(vec![at(idle.clone(), 3), busy3, renamed3, more], t(3));
        assert_eq!(
            pids(&third),
            [(100, true), (200, false), (300, false), (301, false)]
        );
        // The argv change is still reported as a modification.
        assert_eq!(
            kinds(&third.lifecycle),
            [
                (300, ProcessEventType::Modified),
                (301, ProcessEventType::Start)
            ]
        );
        // Its memory moved: changed; the sleeper, again, not.
        let mut more4 = at(p(301, 1, 8, &["new"]), 4);
        more4.memory_usage = Some(8192);
        let fourth = tr.snapshot_pass(vec![at(idle, 4), more4], t(4));
        assert_eq!(pids(&fourth), [(100, true), (301, false)]);
    }
}
