//! Alerts: what a rule match becomes (the record the store keeps and the
//! sinks deliver), its [`Severity`], and deduplication.
//!
//! The rules themselves live in `daemoneye-rules`; an alert needs of its
//! rule only what [`AlertRule`] says, so the store does not depend on the
//! rule engine.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use collector_core::ProcessEvent;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How bad a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Unusual.
    Low,
    /// Suspicious.
    Medium,
    /// Likely malicious.
    High,
    /// Act now.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        })
    }
}

/// What an alert takes from the rule that raised it
/// (`daemoneye_rules::rules::Rule` implements it).
pub trait AlertRule {
    /// The rule's stable id.
    fn id(&self) -> &str;
    /// Its short human name.
    fn name(&self) -> &str;
    /// How bad a match is.
    fn severity(&self) -> Severity;
    /// MITRE ATT&CK technique ids.
    fn mitre(&self) -> &[String];
}

/// The process an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertProcess {
    /// Stable key (`boot_id:pid:start_ticks`).
    pub process_key: Option<String>,
    /// Pid.
    pub pid: u32,
    /// Parent pid.
    pub ppid: Option<u32>,
    /// `comm`.
    pub name: String,
    /// Executable.
    pub executable_path: Option<String>,
    /// Arguments.
    pub command_line: Vec<String>,
    /// Digest of the executable, lowercase hex.
    pub executable_hash: Option<String>,
    /// The hash function of `executable_hash` (`sha256`, `blake3`).
    #[serde(default)]
    pub hash_algorithm: Option<String>,
    /// Real uid.
    pub user_id: Option<u32>,
    /// The parent's `comm`, when known.
    pub parent_name: Option<String>,
    /// The parent's executable, when known.
    #[serde(default)]
    pub parent_executable_path: Option<String>,
}

impl AlertProcess {
    /// The host as a whole (pid 0, named `host`): what an alert over a
    /// host-wide sample (a fork-rate anomaly) is about.
    pub fn host() -> Self {
        Self {
            process_key: None,
            pid: 0,
            ppid: None,
            name: "host".to_owned(),
            executable_path: None,
            command_line: Vec::new(),
            executable_hash: None,
            hash_algorithm: None,
            user_id: None,
            parent_name: None,
            parent_executable_path: None,
        }
    }

    /// A process known only by its pid (`name` `unknown`): a file event's
    /// whose process was never reported.
    pub fn unknown(pid: u32) -> Self {
        Self {
            pid,
            name: "unknown".to_owned(),
            ..Self::host()
        }
    }

    /// From the process event and what is known of its parent.
    pub fn from_event(e: &ProcessEvent, parent: Option<&ProcessEvent>) -> Self {
        Self {
            process_key: e.process_key.map(|k| k.to_string()),
            pid: e.pid,
            ppid: e.ppid,
            name: e.name.clone(),
            executable_path: e.executable_path.clone(),
            command_line: e.command_line.clone(),
            executable_hash: e.executable_hash.clone(),
            hash_algorithm: e.hash_algorithm.map(|a| a.as_str().to_owned()),
            user_id: e.user_id,
            parent_name: parent.map(|p| p.name.clone()),
            parent_executable_path: parent.and_then(|p| p.executable_path.clone()),
        }
    }
}

/// A rule matched a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Rule id.
    pub rule_id: String,
    /// Rule name.
    pub rule_name: String,
    /// Severity.
    pub severity: Severity,
    /// ATT&CK technique ids.
    pub mitre: Vec<String>,
    /// The process.
    pub process: AlertProcess,
    /// When the matching event was observed (unix ns).
    pub observed_at: i64,
    /// When the alert was raised (unix ns).
    pub raised_at: i64,
    /// Alerts with the same key within the window are one alert.
    pub dedup_key: String,
    /// The file a file rule's alert is about (the path as the watched
    /// system names it); `None` (and left out of the JSON) for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

impl Alert {
    /// The alert for `rule` matching `process` observed at `observed`.
    pub fn new(rule: &impl AlertRule, process: AlertProcess, observed: SystemTime) -> Self {
        let who = process
            .process_key
            .clone()
            .unwrap_or_else(|| format!("pid:{}", process.pid));
        Self {
            dedup_key: format!("{}:{who}", rule.id()),
            rule_id: rule.id().to_owned(),
            rule_name: rule.name().to_owned(),
            severity: rule.severity(),
            mitre: rule.mitre().to_vec(),
            process,
            observed_at: unix_ns(observed),
            raised_at: unix_ns(SystemTime::now()),
            file: None,
        }
    }
}

/// Drops repeats of an alert (same rule, same process) within a window.
/// Bounded: beyond `capacity` keys, the oldest are forgotten first. O(1)
/// per alert (amortized), also at the cap: keys are kept in the order they
/// were admitted, so the expired and the oldest are at the front.
#[derive(Debug)]
pub struct Deduper {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Instant>,
    /// The keys of `seen`, oldest first (admission times never decrease).
    order: VecDeque<(String, Instant)>,
    suppressed: u64,
}

impl Deduper {
    /// A deduper with this window, remembering at most `capacity` keys.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// Whether `alert` is new (and remembers it) or a repeat (counted).
    pub fn admit(&mut self, alert: &Alert) -> bool {
        let now = Instant::now();
        // Forget what has expired: at the front, since times never decrease.
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            self.forget_oldest();
        }
        if self.seen.contains_key(&alert.dedup_key) {
            self.suppressed += 1;
            return false;
        }
        while self.seen.len() >= self.capacity && !self.order.is_empty() {
            self.forget_oldest();
        }
        self.seen.insert(alert.dedup_key.clone(), now);
        self.order.push_back((alert.dedup_key.clone(), now));
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.seen.remove(&key);
        }
    }

    /// Repeats suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::unnecessary_literal_bound)]

    use super::*;

    /// A rule as the store sees one, for the crate's tests.
    pub(crate) struct TestRule(pub(crate) &'static str, pub(crate) Severity);

    impl AlertRule for TestRule {
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            "a test rule"
        }
        fn severity(&self) -> Severity {
            self.1
        }
        fn mitre(&self) -> &[String] {
            &[]
        }
    }

    fn alert(pid: u32) -> Alert {
        let rule = &TestRule("test-rule", Severity::High);
        let mut e = ProcessEvent::new(pid, "x");
        e.process_key = Some(collector_core::ProcessKey::new(
            collector_core::BootId::from_bytes([1; 16]),
            pid,
            5,
        ));
        Alert::new(rule, AlertProcess::from_event(&e, None), SystemTime::now())
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_the_window_are_suppressed_and_counted() {
        let mut d = Deduper::new(Duration::from_secs(60), 100);
        assert!(d.admit(&alert(1)));
        assert!(!d.admit(&alert(1)));
        assert!(d.admit(&alert(2)), "another process is another alert");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(d.admit(&alert(1)), "after the window it alerts again");
        assert_eq!(d.suppressed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let mut d = Deduper::new(Duration::from_secs(3600), 3);
        for pid in 0..10 {
            assert!(d.admit(&alert(pid)));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(d.seen.len() <= 3 && d.order.len() <= 3);
        // The oldest went first: the newest three are still remembered.
        for pid in 7..10 {
            assert!(!d.admit(&alert(pid)), "{pid} was forgotten");
        }
        assert!(d.admit(&alert(0)), "0 was the oldest");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_each_alert_costs_the_same() {
        // Full of keys still within the window: admitting one forgets one
        // (the scan of every key it replaced made each alert cost the cap).
        let mut d = Deduper::new(Duration::from_secs(3600), 50_000);
        for pid in 0..150_000 {
            assert!(d.admit(&alert(pid)));
        }
        assert_eq!((d.seen.len(), d.order.len()), (50_000, 50_000));
        assert!(!d.admit(&alert(149_999)));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(d.admit(&alert(149_999)), "expired keys alert again");
        assert_eq!(d.seen.len(), 1, "expired keys were all forgotten");
    }

    #[test]
    fn the_dedup_key_names_rule_and_process() {
        let a = alert(7);
        assert_eq!(
            a.dedup_key,
            format!("{}:{}", a.rule_id, a.process.process_key.clone().unwrap())
        );
    }

    #[test]
    fn alerts_stored_before_the_hash_algorithm_and_parent_exe_still_read() {
        let mut v = serde_json::to_value(alert(9)).unwrap();
        let p = v["process"].as_object_mut().unwrap();
        p.remove("hash_algorithm");
        p.remove("parent_executable_path");
        let back: Alert = serde_json::from_value(v).unwrap();
        assert_eq!(back.process.pid, 9);
        assert_eq!(back.process.hash_algorithm, None);
    }

    #[test]
    fn severities_are_named_in_lowercase_and_ordered() {
        assert_eq!(Severity::Critical.to_string(), "critical");
        assert_eq!(serde_json::to_string(&Severity::Info).unwrap(), "\"info\"");
        assert!(Severity::Low < Severity::High);
    }

    #[test]
    fn the_hash_says_its_algorithm() {
        let mut e = ProcessEvent::new(3, "x");
        e.executable_hash = Some("ab".repeat(32));
        e.hash_algorithm = Some(collector_core::HashAlgorithm::Blake3);
        let p = AlertProcess::from_event(&e, None);
        assert_eq!(p.hash_algorithm.as_deref(), Some("blake3"));
    }
}
