#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use super::*;
use crate::bus::{EventBusConfig, EventFilter};
use crate::event::{BootId, EventKind, ProcessKey};

const HASHER: &str = "binary-hasher";

fn caps(conditions: Vec<ConditionType>) -> TriggerCapabilities {
    TriggerCapabilities {
        collector_id: HASHER.to_string(),
        supported_conditions: conditions,
        supported_analysis: vec![AnalysisType::BinaryHash],
        max_trigger_rate: 1000,
        max_concurrent_analysis: 1000,
        supported_priorities: vec![
            TriggerPriority::Low,
            TriggerPriority::Normal,
            TriggerPriority::High,
            TriggerPriority::Critical,
        ],
        resource_limits: TriggerResourceLimits::default(),
    }
}

#[test]
fn every_kind_names_each_kind_once() {
    let kinds: Vec<&str> = ConditionType::every_kind()
        .iter()
        .map(ConditionType::kind_name)
        .collect();
    let distinct: std::collections::BTreeSet<&str> = kinds.iter().copied().collect();
    assert_eq!((kinds.len(), distinct.len()), (7, 7), "{kinds:?}");
}

fn cond(id: &str, t: ConditionType, priority: TriggerPriority) -> TriggerCondition {
    TriggerCondition {
        id: id.to_string(),
        description: String::new(),
        analysis_type: AnalysisType::BinaryHash,
        priority,
        target_collector: HASHER.to_string(),
        condition_type: t,
    }
}

fn manager_with(config: TriggerConfig, t: ConditionType) -> TriggerManager {
    manager_for(config, caps(ConditionType::every_kind()), t)
}

/// A manager with one collector of `capabilities` and one high-priority
/// condition `c` of type `t`.
fn manager_for(
    config: TriggerConfig,
    capabilities: TriggerCapabilities,
    t: ConditionType,
) -> TriggerManager {
    let m = TriggerManager::new(config).unwrap();
    m.register_collector_capabilities(capabilities).unwrap();
    m.register_condition(cond("c", t, TriggerPriority::High))
        .unwrap();
    m
}

fn manager(t: ConditionType) -> TriggerManager {
    manager_with(TriggerConfig::default(), t)
}

fn proc(pid: u32, name: &str, path: &str) -> ProcessEvent {
    let mut p = ProcessEvent::new(pid, name);
    p.executable_path = Some(path.into());
    p
}

fn hits(m: &TriggerManager, e: &ProcessEvent) -> bool {
    !m.matching_conditions(e).is_empty()
}

#[test]
fn reference_registration_refuses_undeclared_types_priorities_and_collectors() {
    let m = TriggerManager::new(TriggerConfig::default()).unwrap();
    let mut c = caps(vec![
        ConditionType::ProcessNamePattern("suspicious".into()),
        ConditionType::MissingExecutable,
    ]);
    c.supported_priorities = vec![TriggerPriority::High, TriggerPriority::Critical];
    m.register_collector_capabilities(c.clone()).unwrap();
    assert!(matches!(
        m.register_collector_capabilities(c),
        Err(TriggerError::DuplicateCollector { .. })
    ));
    // The pattern's argument differs from the declared one: accepted.
    m.register_condition(cond(
        "suspicious-process",
        ConditionType::ProcessNamePattern("malware".into()),
        TriggerPriority::High,
    ))
    .unwrap();
    let refused = [
        cond("a", ConditionType::HashMismatch, TriggerPriority::High),
        cond("b", ConditionType::MissingExecutable, TriggerPriority::Low),
        TriggerCondition {
            analysis_type: AnalysisType::MemoryAnalysis,
            ..cond("c", ConditionType::MissingExecutable, TriggerPriority::High)
        },
        TriggerCondition {
            target_collector: "nobody".into(),
            ..cond("d", ConditionType::MissingExecutable, TriggerPriority::High)
        },
        cond(
            "suspicious-process",
            ConditionType::MissingExecutable,
            TriggerPriority::High,
        ),
        cond("", ConditionType::MissingExecutable, TriggerPriority::High),
        cond(
            "e",
            ConditionType::ProcessNamePattern("[bad".into()),
            TriggerPriority::High,
        ),
        cond(
            "f",
            ConditionType::ProcessNamePattern(String::new()),
            TriggerPriority::High,
        ),
    ];
    for c in refused {
        let id = c.id.clone();
        let err = m.register_condition(c).unwrap_err();
        assert!(!err.to_string().is_empty(), "{id}");
    }
    assert_eq!(m.condition_ids(), vec!["suspicious-process".to_string()]);
}

#[test]
fn custom_sql_is_refused_when_it_does_not_parse_and_nothing_is_half_registered() {
    let m = manager(ConditionType::Custom("pid > 1".into()));
    for bad in ["pid >", "nosuch = 1", "name = 1", "pid; DROP TABLE x"] {
        let err = m
            .register_condition(cond(
                "bad",
                ConditionType::Custom(bad.into()),
                TriggerPriority::High,
            ))
            .unwrap_err();
        assert!(
            matches!(err, TriggerError::InvalidSql { .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(m.condition_ids(), vec!["c".to_string()]);
}

#[test]
fn process_name_pattern_substring_and_glob() {
    let m = manager(ConditionType::ProcessNamePattern("malware".into()));
    assert!(hits(&m, &proc(1, "malware", "/x")));
    assert!(hits(&m, &proc(1, "xmalware-2", "/x")));
    assert!(!hits(&m, &proc(1, "sshd", "/x")));
    let m = manager(ConditionType::ProcessNamePattern("kworker*".into()));
    assert!(hits(&m, &proc(1, "kworker/0:1", "/x")));
    assert!(!hits(&m, &proc(1, "fake-kworker", "/x")));
}

#[test]
fn executable_path_pattern_glob_respects_directories() {
    let m = manager(ConditionType::ExecutablePathPattern("/tmp/*".into()));
    assert!(hits(&m, &proc(1, "a", "/tmp/a")));
    assert!(!hits(&m, &proc(1, "a", "/tmp/sub/a")));
    assert!(!hits(&m, &proc(1, "a", "/usr/bin/a")));
    let m = manager(ConditionType::ExecutablePathPattern("/dev/shm/**".into()));
    assert!(hits(&m, &proc(1, "a", "/dev/shm/x/y")));
    let mut no_path = ProcessEvent::new(1, "a");
    no_path.executable_path = None;
    assert!(!hits(&m, &no_path));
    let m = manager(ConditionType::ExecutablePathPattern("/.cache/".into()));
    assert!(hits(&m, &proc(1, "a", "/home/u/.cache/x")));
}

#[test]
fn missing_executable_on_deleted_or_replaced_binaries() {
    let m = manager(ConditionType::MissingExecutable);
    let mut e = proc(1, "a", "/usr/bin/a");
    assert!(!hits(&m, &e));
    e.file_exists = false;
    assert!(hits(&m, &e));
    let mut r = proc(1, "a", "/usr/bin/a");
    r.event_type = ProcessEventType::ExecutableReplaced;
    assert!(hits(&m, &r));
    r.event_type = ProcessEventType::ExecutableDeleted;
    assert!(hits(&m, &r));
}

#[test]
fn hash_mismatch_against_known_good_hashes() {
    let good = "a".repeat(64);
    let config = TriggerConfig {
        known_good_hashes: vec![KnownGoodHash {
            path: "/usr/bin/ssh".into(),
            algorithm: HashAlgorithm::Sha256,
            digest: good.clone(),
        }],
        ..TriggerConfig::default()
    };
    let m = manager_with(config, ConditionType::HashMismatch);
    let mut e = proc(1, "ssh", "/usr/bin/ssh");
    assert!(!hits(&m, &e), "no hash: cannot judge");
    e.executable_hash = Some(good);
    e.hash_algorithm = Some(HashAlgorithm::Sha256);
    assert!(!hits(&m, &e));
    e.executable_hash = Some("b".repeat(64));
    assert!(hits(&m, &e));
    e.hash_algorithm = Some(HashAlgorithm::Blake3);
    assert!(!hits(&m, &e), "no known-good blake3 hash");
    let mut other = e.clone();
    other.executable_path = Some("/usr/bin/scp".into());
    assert!(!hits(&m, &other), "no known-good hash for the path");
    m.add_known_good_hash(KnownGoodHash {
        path: "/usr/bin/scp".into(),
        algorithm: HashAlgorithm::Blake3,
        digest: "c".repeat(64),
    })
    .unwrap();
    assert!(hits(&m, &other));
    assert!(m
        .add_known_good_hash(KnownGoodHash {
            path: "/x".into(),
            algorithm: HashAlgorithm::Sha256,
            digest: "xyz".into(),
        })
        .is_err());
    assert!(TriggerManager::new(TriggerConfig {
        known_good_hashes: vec![KnownGoodHash {
            path: String::new(),
            algorithm: HashAlgorithm::Sha256,
            digest: "a".repeat(64),
        }],
        ..TriggerConfig::default()
    })
    .is_err());
}

#[test]
fn suspicious_parent_child_uses_names_seen_before_and_metadata() {
    let m = manager(ConditionType::SuspiciousParentChild);
    m.evaluate(&proc(100, "nginx", "/usr/sbin/nginx"));
    m.evaluate(&proc(200, "cron", "/usr/sbin/cron"));
    let mut sh = proc(101, "sh", "/bin/sh");
    sh.ppid = Some(100);
    assert!(hits(&m, &sh));
    sh.ppid = Some(200);
    assert!(!hits(&m, &sh), "cron spawning a shell is routine");
    let mut ls = proc(102, "ls", "/bin/ls");
    ls.ppid = Some(100);
    assert!(!hits(&m, &ls));
    let mut orphan = proc(103, "bash", "/bin/bash");
    orphan.ppid = Some(999);
    assert!(!hits(&m, &orphan));
    // Its parent appears later: the table learns the name.
    m.evaluate(&proc(999, "postgres", "/usr/lib/postgresql/bin/postgres"));
    orphan.pid = 104;
    assert!(hits(&m, &orphan));
    // The parent exits: its name is forgotten.
    let mut exit = proc(100, "nginx", "/usr/sbin/nginx");
    exit.event_type = ProcessEventType::Exit;
    m.evaluate(&exit);
    sh.ppid = Some(100);
    assert!(!hits(&m, &sh));
    let custom = TriggerManager::new(TriggerConfig {
        suspicious_parent_child: vec![ParentChildRule {
            parent: "java".into(),
            child: "curl".into(),
        }],
        ..TriggerConfig::default()
    })
    .unwrap();
    custom
        .register_collector_capabilities(caps(ConditionType::every_kind()))
        .unwrap();
    custom
        .register_condition(cond(
            "pc",
            ConditionType::SuspiciousParentChild,
            TriggerPriority::High,
        ))
        .unwrap();
    custom.evaluate(&proc(4, "java", "/usr/bin/java"));
    custom.evaluate(&proc(3, "nginx", "/usr/sbin/nginx"));
    let mut curl = proc(5, "curl", "/usr/bin/curl");
    curl.ppid = Some(4);
    assert!(hits(&custom, &curl));
    curl.pid = 6;
    curl.ppid = Some(3);
    assert!(!hits(&custom, &curl));
}

/// `e` at `secs` after the epoch with this CPU share and RSS.
fn usage(e: &ProcessEvent, secs: u64, cpu: Option<f64>, rss: Option<u64>) -> ProcessEvent {
    let mut e = e.clone();
    e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    e.cpu_usage = cpu;
    e.memory_usage = rss;
    e
}

fn thresholds() -> TriggerConfig {
    TriggerConfig {
        resource_thresholds: AnomalyConfig {
            sustained_cpu_percent: 80.0,
            sustained_cpu_for: Duration::from_secs(60),
            memory_growth_bytes: 1 << 30,
            memory_growth_window: Duration::from_secs(300),
            ..AnomalyConfig::default()
        },
        // Every firing is its own request here.
        deduplication_window: Duration::ZERO,
        ..TriggerConfig::default()
    }
}

#[test]
fn resource_anomaly_is_the_anomaly_judge_across_a_processs_events() {
    let m = manager_with(thresholds(), ConditionType::ResourceAnomaly);
    let miner = proc(1, "miner", "/tmp/miner");
    assert!(!hits(&m, &miner), "unknown usage is not an anomaly");
    // One busy reading is not sustained: the judge needs 60 s of it.
    assert_eq!(m.evaluate(&usage(&miner, 0, Some(95.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&miner, 30, Some(99.0), None)), 0);
    // A peek does not feed the judge...
    assert!(hits(&m, &usage(&miner, 60, Some(99.0), None)));
    assert!(hits(&m, &usage(&miner, 60, Some(99.0), None)), "still");
    // ...evaluating does: it fires once for the episode.
    assert_eq!(m.evaluate(&usage(&miner, 60, Some(99.0), None)), 1);
    assert_eq!(m.evaluate(&usage(&miner, 70, Some(99.0), None)), 0);
    let request = m.next_trigger().unwrap();
    assert_eq!(request.target_pid, Some(1));
    assert_eq!(request.metadata["condition_type"], "resource_anomaly");
    // A dip ends it; a new one needs its own 60 s (busy since the start of
    // the interval the reading at 90 covers, 80).
    assert_eq!(m.evaluate(&usage(&miner, 80, Some(10.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&miner, 90, Some(99.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&miner, 130, Some(99.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&miner, 140, Some(99.0), None)), 1);

    // Memory: growth beyond the threshold within the window.
    let leak = proc(2, "leak", "/usr/bin/leak");
    assert_eq!(m.evaluate(&usage(&leak, 0, None, Some(1 << 20))), 0);
    assert_eq!(m.evaluate(&usage(&leak, 10, None, Some(1 << 29))), 0);
    assert_eq!(m.evaluate(&usage(&leak, 20, None, Some(2 << 30))), 1);
    // The same RSS seen only once, far from any low: not growth.
    let big = proc(3, "big", "/usr/bin/big");
    assert_eq!(m.evaluate(&usage(&big, 0, Some(1.0), Some(8 << 30))), 0);
}

#[test]
fn a_reused_pid_or_an_exit_starts_the_judge_over() {
    let m = manager_with(thresholds(), ConditionType::ResourceAnomaly);
    let mut a = proc(7, "a", "/usr/bin/a");
    a.process_key = Some(crate::ProcessKey::new(
        crate::BootId::from_bytes([1; 16]),
        7,
        100,
    ));
    assert_eq!(m.evaluate(&usage(&a, 0, Some(99.0), None)), 0);
    // Another process under the same pid: its busy time starts now.
    let mut b = a.clone();
    b.process_key = Some(crate::ProcessKey::new(
        crate::BootId::from_bytes([1; 16]),
        7,
        200,
    ));
    assert_eq!(m.evaluate(&usage(&b, 59, Some(99.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&b, 100, Some(99.0), None)), 0);
    assert_eq!(m.evaluate(&usage(&b, 119, Some(99.0), None)), 1);
    // An exit forgets it.
    let mut exit = b.clone();
    exit.event_type = ProcessEventType::Exit;
    m.evaluate(&exit);
    assert_eq!(m.evaluate(&usage(&b, 120, Some(99.0), None)), 0);
}

#[test]
fn a_performance_event_with_an_anomaly_triggers_analysis_of_its_process() {
    use crate::{
        PerformanceAnomaly, PerformanceAnomalyKind, PerformanceEvent, PerformanceMetric,
        PerformanceSubject,
    };
    let m = manager_with(thresholds(), ConditionType::ResourceAnomaly);
    m.evaluate(&proc(42, "xmrig", "/tmp/xmrig"));
    let key = crate::ProcessKey::new(crate::BootId::from_bytes([2; 16]), 42, 5);
    let sample = PerformanceEvent::new(
        PerformanceMetric::ProcessCpu,
        99.0,
        PerformanceSubject::Process {
            pid: 42,
            process_key: Some(key),
        },
        SystemTime::now(),
    );
    assert_eq!(m.evaluate_performance(&sample), 0, "an ordinary sample");
    let judged = sample.clone().with_anomaly(PerformanceAnomaly {
        kind: PerformanceAnomalyKind::SustainedCpu,
        threshold: 90.0,
        duration: Duration::from_secs(60),
    });
    assert_eq!(m.evaluate_performance(&judged), 1);
    let request = m.next_trigger().unwrap();
    assert_eq!(request.target_pid, Some(42));
    assert_eq!(request.metadata["anomaly"], "sustained_cpu");
    assert_eq!(request.metadata["process_name"], "xmrig");
    // A host-wide anomaly names no process to analyse.
    let forks = PerformanceEvent::new(
        PerformanceMetric::ForkRate,
        900.0,
        PerformanceSubject::Host,
        SystemTime::now(),
    )
    .with_anomaly(PerformanceAnomaly {
        kind: PerformanceAnomalyKind::ForkRate,
        threshold: 500.0,
        duration: Duration::ZERO,
    });
    assert_eq!(m.evaluate_performance(&forks), 0);
    // Without a ResourceAnomaly condition, nothing.
    let other = manager(ConditionType::MissingExecutable);
    assert_eq!(other.evaluate_performance(&judged), 0);
}

#[test]
fn bad_resource_thresholds_are_refused_by_name() {
    let mut config = TriggerConfig::default();
    config.resource_thresholds.sustained_cpu_percent = f64::NAN;
    let e = TriggerManager::new(config).unwrap_err().to_string();
    assert!(
        e.contains("resource_thresholds") && e.contains("sustained_cpu_percent"),
        "{e}"
    );
}

#[test]
fn custom_sql_is_evaluated_over_the_event_and_parent() {
    let m = manager(ConditionType::Custom(
        "parent_name = 'nginx' AND name IN ('sh', 'bash') AND uid BETWEEN 1 AND 999".into(),
    ));
    m.evaluate(&proc(100, "nginx", "/usr/sbin/nginx"));
    let mut sh = proc(101, "sh", "/bin/sh");
    sh.ppid = Some(100);
    sh.user_id = Some(33);
    assert!(hits(&m, &sh));
    sh.user_id = Some(0);
    assert!(!hits(&m, &sh));
}

#[tokio::test(start_paused = true)]
async fn dedup_window_suppresses_repeats_until_it_passes() {
    let config = TriggerConfig {
        deduplication_window: Duration::from_secs(10),
        ..TriggerConfig::default()
    };
    let m = manager_with(config, ConditionType::ProcessNamePattern("evil".into()));
    let e = proc(7, "evil", "/tmp/evil");
    assert_eq!(m.evaluate(&e), 1);
    assert_eq!(m.evaluate(&e), 0);
    assert_eq!(m.evaluate(&proc(8, "evil", "/tmp/evil")), 1, "another pid");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(m.evaluate(&e), 0);
    m.cleanup();
    assert_eq!(m.dedup_entries(), 2);
    tokio::time::advance(Duration::from_secs(2)).await;
    m.cleanup();
    assert_eq!(m.dedup_entries(), 0);
    assert_eq!(m.evaluate(&e), 1);
    let s = m.statistics();
    assert_eq!(
        (
            s.conditions_matched,
            s.triggers_deduplicated,
            s.triggers_queued
        ),
        (5, 2, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn per_collector_rate_limit_refills_over_time() {
    let mut c = caps(ConditionType::every_kind());
    c.max_trigger_rate = 5;
    let m = manager_for(
        TriggerConfig::default(),
        c,
        ConditionType::ProcessNamePattern("p".into()),
    );
    let queued: usize = (1..=20).map(|pid| m.evaluate(&proc(pid, "p", "/p"))).sum();
    assert_eq!(queued, 5, "burst of max_trigger_rate");
    tokio::time::advance(Duration::from_millis(400)).await;
    let queued: usize = (21..=40).map(|pid| m.evaluate(&proc(pid, "p", "/p"))).sum();
    assert_eq!(queued, 2, "5/s for 0.4 s");
    let s = m.statistics();
    assert_eq!(s.triggers_rate_limited, 33);
    assert_eq!(
        s.conditions_matched,
        s.triggers_rate_limited + s.triggers_queued + s.triggers_deduplicated
    );
}

#[test]
fn queue_sheds_low_first_and_evicts_lower_priorities_when_full() {
    let m = TriggerManager::new(TriggerConfig {
        max_pending_triggers: 10,
        shed_low_ratio: 0.5,
        ..TriggerConfig::default()
    })
    .unwrap();
    m.register_collector_capabilities(caps(ConditionType::every_kind()))
        .unwrap();
    for (id, p) in [
        ("low", TriggerPriority::Low),
        ("normal", TriggerPriority::Normal),
        ("critical", TriggerPriority::Critical),
    ] {
        m.register_condition(cond(id, ConditionType::ProcessNamePattern(id.into()), p))
            .unwrap();
    }
    let mut pid = 0;
    let mut send = |name: &str, n: usize| {
        (0..n)
            .map(|_| {
                pid += 1;
                m.evaluate(&proc(pid, name, "/x"))
            })
            .sum::<usize>()
    };
    assert_eq!(send("low", 8), 5, "low shed from half full");
    assert_eq!(send("normal", 8), 8, "the last three evict lows");
    assert_eq!(send("critical", 3), 3, "critical evicts the lowest");
    assert_eq!(send("normal", 1), 0, "full of equal or higher priorities");
    let s = m.statistics();
    assert_eq!(s.triggers_shed_low, 3);
    assert_eq!(s.triggers_shed_full, 3 + 3 + 1);
    assert_eq!(s.triggers_queued, 10);
    assert_eq!(
        s.conditions_matched,
        s.triggers_shed_low + s.triggers_shed_full + s.triggers_queued + s.triggers_emitted
    );
    // Most urgent first, FIFO within a priority.
    let order: Vec<TriggerPriority> = std::iter::from_fn(|| m.next_trigger())
        .map(|r| r.priority)
        .collect();
    assert_eq!(order.len(), 10);
    assert!(order.windows(2).all(|w| w[0] >= w[1]), "{order:?}");
    assert_eq!(order.first(), Some(&TriggerPriority::Critical));
    assert_eq!(
        order.iter().filter(|p| **p == TriggerPriority::Low).count(),
        0
    );
    assert_eq!(
        order
            .iter()
            .filter(|p| **p == TriggerPriority::Critical)
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn completion_timeout_and_concurrency_limit() {
    let mut c = caps(ConditionType::every_kind());
    c.max_concurrent_analysis = 2;
    let config = TriggerConfig {
        trigger_timeout: Duration::from_secs(30),
        ..TriggerConfig::default()
    };
    let m = manager_for(config, c, ConditionType::ProcessNamePattern("p".into()));
    for pid in 1..=3 {
        m.evaluate(&proc(pid, "p", "/p"));
    }
    let a = m.next_trigger().unwrap();
    let b = m.next_trigger().unwrap();
    assert!(m.next_trigger().is_none(), "two analyses at most at once");
    m.complete_trigger(&a.trigger_id, true).unwrap();
    assert!(matches!(
        m.complete_trigger(&a.trigger_id, true),
        Err(TriggerError::UnknownTrigger { .. })
    ));
    let c3 = m.next_trigger().unwrap();
    m.complete_trigger(&c3.trigger_id, false).unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(m.check_timeouts().is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(m.check_timeouts(), vec![b.trigger_id.clone()]);
    assert!(m.complete_trigger(&b.trigger_id, true).is_err());
    let s = m.statistics();
    assert_eq!(
        (
            s.triggers_emitted,
            s.triggers_completed,
            s.triggers_failed,
            s.triggers_timed_out
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(s.triggers_in_flight, 0);
}

#[tokio::test]
async fn requests_are_published_on_the_bus_with_correlation() {
    let bus = LocalEventBus::new(EventBusConfig::default()).await.unwrap();
    bus.start().await.unwrap();
    let mut sub = bus
        .subscribe(
            EventFilter::new()
                .with_event_type(EventKind::TriggerRequest)
                .with_target_collector(HASHER),
        )
        .await
        .unwrap();
    let m = manager(ConditionType::ProcessNamePattern("evil".into()));
    assert!(matches!(
        m.dispatch_pending().await,
        Err(TriggerError::NoBus)
    ));
    m.attach_bus(bus.clone());
    let mut e = proc(9, "evil", "/tmp/evil");
    e.process_key = Some(ProcessKey::new(BootId::from_bytes([1; 16]), 9, 5));
    assert_eq!(m.process_event(&e).await.unwrap(), 1);
    let got = sub.recv().await.unwrap();
    let CollectionEvent::TriggerRequest(r) = &got.event else {
        panic!("not a trigger request: {got:?}");
    };
    assert_eq!(got.source, TRIGGER_SOURCE);
    assert_eq!(got.correlation.correlation_id, r.correlation_id);
    assert!(got.correlation.tags.contains("trigger"));
    assert_eq!(r.target_pid, Some(9));
    assert_eq!(r.target_path.as_deref(), Some("/tmp/evil"));
    assert_eq!(
        r.metadata.get("condition_id").map(String::as_str),
        Some("c")
    );
    assert_eq!(m.statistics().triggers_in_flight, 1);
}

#[test]
fn invalid_config_is_refused() {
    for config in [
        TriggerConfig {
            max_pending_triggers: 0,
            ..TriggerConfig::default()
        },
        TriggerConfig {
            shed_low_ratio: 1.5,
            ..TriggerConfig::default()
        },
        TriggerConfig {
            trigger_timeout: Duration::ZERO,
            ..TriggerConfig::default()
        },
    ] {
        assert!(matches!(
            TriggerManager::new(config),
            Err(TriggerError::Config { .. })
        ));
    }
}

crate::assert_send_sync!(TriggerManager, TriggerError);
