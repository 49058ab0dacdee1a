//! `triggers`: the cost of evaluating one process event against 10
//! conditions, one of each type plus extra patterns and SQL, through
//! `TriggerManager::evaluate` (the matching conditions' repeats are
//! deduplicated, as they are in a real stream of one process's events).

use collector_core::testing::{ten_trigger_conditions, trigger_manager};
use collector_core::{
    BootId, HashAlgorithm, KnownGoodHash, ProcessEvent, ProcessKey, TriggerConfig, TriggerManager,
};
use tokio::time::Instant;

use crate::report;

options! {
    /// Events evaluated per repetition.
    events: u64 = 1_000_000,
    /// Repetitions.
    reps: usize = 3,
}

/// A manager with the ten conditions registered.
pub(crate) fn manager() -> anyhow::Result<TriggerManager> {
    let config = TriggerConfig {
        known_good_hashes: vec![KnownGoodHash {
            path: "/usr/sbin/nginx".into(),
            algorithm: HashAlgorithm::Sha256,
            digest: "a".repeat(64),
        }],
        ..TriggerConfig::default()
    };
    Ok(trigger_manager(config, &ten_trigger_conditions())?)
}

/// An nginx worker with a hash that is not the known-good one (so
/// `HashMismatch` matches) and a parent the manager has seen.
pub(crate) fn event() -> ProcessEvent {
    let mut p = ProcessEvent::new(4242, "nginx");
    p.ppid = Some(1);
    p.executable_path = Some("/usr/sbin/nginx".into());
    p.command_line = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    p.user_id = Some(33);
    p.cpu_usage = Some(1.5);
    p.memory_usage = Some(12 << 20);
    p.executable_hash = Some("b".repeat(64));
    p.hash_algorithm = Some(HashAlgorithm::Sha256);
    p.process_key = Some(ProcessKey::new(
        BootId::from_bytes([0x5a; 16]),
        4242,
        123_456,
    ));
    p
}

fn ns_per_event(m: &TriggerManager, e: &ProcessEvent, n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(m.evaluate(std::hint::black_box(e)));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let m = manager()?;
        let mut init = ProcessEvent::new(1, "systemd");
        init.executable_path = Some("/usr/lib/systemd/systemd".into());
        m.evaluate(&init);
        let e = event();
        let matched = m.matching_conditions(&e).len();
        let mut quiet = event();
        quiet.executable_hash = None;
        quiet.hash_algorithm = None;
        let quiet_matched = m.matching_conditions(&quiet).len();
        ns_per_event(&m, &e, o.events / 10);
        let mut matching: Vec<f64> = (0..o.reps)
            .map(|_| ns_per_event(&m, &e, o.events))
            .collect();
        matching.sort_by(f64::total_cmp);
        let mut quiet_ns: Vec<f64> = (0..o.reps)
            .map(|_| ns_per_event(&m, &quiet, o.events))
            .collect();
        quiet_ns.sort_by(f64::total_cmp);
        report("triggers.conditions", 10, "conditions");
        report(
            "triggers.conditions_matched_per_event",
            matched,
            "conditions",
        );
        report(
            "triggers.ns_per_event",
            format!("{:.0}", matching[matching.len() / 2]),
            "ns",
        );
        report(
            "triggers.ns_per_event_spread",
            format!(
                "{:.3}",
                (matching[matching.len() - 1] - matching[0]) / matching[matching.len() / 2]
            ),
            "ratio",
        );
        report(
            "triggers.ns_per_event_no_match",
            format!("{:.0}", quiet_ns[quiet_ns.len() / 2]),
            "ns",
        );
        report(
            "triggers.no_match_conditions_matched",
            quiet_matched,
            "conditions",
        );
        let s = m.statistics();
        report(
            "triggers.deduplicated_total",
            s.triggers_deduplicated,
            "triggers",
        );
        Ok(())
    })
}
