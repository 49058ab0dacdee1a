//! [`proptest`] strategies of the event model, for round-trip tests: the
//! wire's (`ipc::convert`) and the store's draw the same events (feature
//! `proptest`, for tests only: a dev-dependency's feature).
//!
//! ```
//! use collector_core::testing::strategy;
//! use proptest::strategy::{Strategy, ValueTree};
//! use proptest::test_runner::TestRunner;
//!
//! let mut runner = TestRunner::deterministic();
//! let event = strategy::process_event().new_tree(&mut runner).unwrap().current();
//! assert!(event.pid > 0);
//! ```

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use crate::event::{
    BootId, CaptureTier, HashAlgorithm, LifecycleDetail, ObservedBy, ProcessContext, ProcessEvent,
    ProcessEventType, ProcessField, ProcessKey, ReadDepth, StartTimeAnomaly,
};

/// Any text of up to 11 characters: every scalar value, NUL and controls
/// included.
pub fn text() -> impl Strategy<Value = String> {
    text_of(0..12)
}

fn text_of(chars: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), chars).prop_map(|c| c.into_iter().collect())
}

/// A digest and its algorithm, as the model requires them (lowercase hex
/// of the algorithm's length).
pub fn hash() -> impl Strategy<Value = (String, HashAlgorithm)> {
    pick(HashAlgorithm::ALL).prop_flat_map(|alg| {
        let digits = proptest::collection::vec(pick(b"0123456789abcdef"), alg.hex_len());
        digits.prop_map(move |d| (d.into_iter().map(char::from).collect(), alg))
    })
}

/// Any time of the `i64` nanoseconds around the epoch (1677 to 2262, the
/// store's range), to the nanosecond.
pub fn time() -> impl Strategy<Value = SystemTime> {
    any::<i64>().prop_map(|ns| {
        let abs = Duration::from_nanos(ns.unsigned_abs());
        if ns >= 0 {
            SystemTime::UNIX_EPOCH + abs
        } else {
            SystemTime::UNIX_EPOCH - abs
        }
    })
}

/// No key, or a key of process `pid` (any boot, any start).
pub fn key(pid: u32) -> impl Strategy<Value = Option<ProcessKey>> {
    proptest::option::of(any::<([u8; 16], u64)>())
        .prop_map(move |k| k.map(|(b, t)| ProcessKey::new(BootId::from_bytes(b), pid, t)))
}

/// One of `all` (such as an enum's `ALL`).
pub fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

/// Any valid process event of the model (no id: the runtime gives it),
/// every field drawn: any text, any time of the store's range.
#[allow(clippy::too_many_lines)] // every field, each drawn on its line
pub fn process_event() -> impl Strategy<Value = ProcessEvent> {
    let ids = (
        1u32..,
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<char>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u64>()),
    );
    let what = (
        text(),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..6),
        (proptest::option::of(time()), time()),
        proptest::option::of(
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(f64::abs),
        ),
        // The store saturates a resident set at `i64::MAX` bytes.
        proptest::option::of(0..=i64::MAX.unsigned_abs()),
        proptest::option::of(hash()),
        pick(ProcessEventType::ALL),
    );
    let flags = (
        any::<(bool, bool, bool)>(),
        proptest::option::of(any::<i32>()),
        pick(ReadDepth::ALL),
        proptest::collection::btree_map(text_of(1..12), text(), 0..4),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(any::<(u64, u64, u64, u64)>()),
    );
    let life = (
        proptest::option::of(pick(ObservedBy::ALL)),
        proptest::collection::vec(pick(ProcessField::ALL), 0..4),
        proptest::option::of(pick(StartTimeAnomaly::ALL)),
        proptest::option::of(any::<u64>()),
        (
            proptest::option::of(pick(CaptureTier::ALL)),
            any::<(bool, bool, bool)>(),
        ),
    );
    (ids, what, flags, life).prop_flat_map(|(ids, what, flags, life)| {
        let pid = ids.0;
        (key(pid), key(pid)).prop_map(move |(key, previous_key)| {
            let (pid, ppid, uid, euid, gid, state, threads, cpu_ticks) = ids;
            let (name, exe, argv, (start, t), cpu, rss, hash, event_type) = what.clone();
            let ((accessible, file_exists, exe_replaced), exit_code, read, meta, cg, cid, ns) =
                flags.clone();
            let (observed_by, changed, anomaly, run_time_ms, (tier, exec_flags)) = life.clone();
            let (argv_truncated, setuid, setgid) = exec_flags;
            ProcessEvent {
                id: None,
                event_type,
                pid,
                ppid,
                name,
                executable_path: exe,
                command_line: argv,
                start_time: start,
                cpu_usage: cpu,
                memory_usage: rss,
                hash_algorithm: hash.as_ref().map(|h| h.1),
                executable_hash: hash.map(|h| h.0),
                user_id: uid,
                accessible,
                file_exists,
                timestamp: t,
                platform_metadata: meta,
                process_key: key,
                // Only exits carry a wait status (the runtime's rule).
                exit_code: exit_code.filter(|_| event_type == ProcessEventType::Exit),
                euid,
                gid,
                state,
                threads,
                cpu_ticks,
                exe_replaced,
                read,
                context: ProcessContext {
                    cgroup: cg,
                    container_id: cid,
                    pid_ns: ns.map(|n| n.0),
                    mnt_ns: ns.map(|n| n.1),
                    net_ns: ns.map(|n| n.2),
                    user_ns: ns.map(|n| n.3),
                }
                .shared(),
                lifecycle: LifecycleDetail {
                    observed_by,
                    previous_key,
                    changed,
                    anomaly,
                    run_time_ms,
                    tier,
                    argv_truncated,
                    setuid,
                    setgid,
                }
                .boxed(),
            }
        })
    })
}
